/* SPDX-License-Identifier: MIT */
/* daemon-state.json: daemon_state_load from a memfd. What it accepts must be what the
 * daemon relies on: no negative figures, and save-then-load gives the same state. */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "daemon-state.h"
#include "fuzz-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64], saved[96];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        fuzz_quiet();
        snprintf(dir, sizeof(dir), "%s", fuzz_tmpdir("state"));
        snprintf(saved, sizeof(saved), "%s/daemon-state.json", dir);
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        daemon_state s, s2;
        char path[32];
        int fd, r;

        if (size > 1024 * 1024 + 16)
                return -1;
        fd = fuzz_memfd(data, size, path);
        r = daemon_state_load(path, &s);
        close(fd);
        if (r < 0)
                return 0;
        if (s.pause_until < 0 || !(s.core_seconds_total >= 0) || !(s.core_seconds_today >= 0))
                abort();
        /* Round trip through the real writer (in our /tmp directory). */
        if (daemon_state_save(saved, &s) < 0)
                return 0;
        if (daemon_state_load(saved, &s2) < 0 || s2.pause_until != s.pause_until ||
            s2.pause_indefinite != s.pause_indefinite || s2.tokens_total != s.tokens_total ||
            s2.today != s.today || s2.core_seconds_total != s.core_seconds_total ||
            s2.core_seconds_today != s.core_seconds_today)
                abort();
        daemon_state_add_harvest(&s, 20250101, 1.5);
        return 0;
}
