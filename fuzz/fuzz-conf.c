/* SPDX-License-Identifier: MIT */
/* Configuration text: the INI splitter, every key's value checker, ActiveHours (and that
 * its canonical text reads back to the same windows), and a whole conf_load with the input
 * as the config file and its [Fleet] lines as fleet policy. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "fuzz-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char root[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        fuzz_quiet();
        /* An empty root: no packaged or drop-in layers, no overrides.conf. */
        snprintf(root, sizeof(root), "%s", fuzz_tmpdir("conf"));
        return 0;
}

static void check_active_hours(const char *s) {
        active_window w[ACTIVE_WINDOWS_MAX], w2[ACTIVE_WINDOWS_MAX];
        char reason[128], text[1024];
        int n, n2;

        if (conf_parse_active_hours(s, w, &n, reason, sizeof(reason)) < 0)
                return;
        if (n < 0 || n > ACTIVE_WINDOWS_MAX)
                abort();
        /* The documented round trip: format, parse again, same windows. */
        if (conf_format_active_hours(w, n, text, sizeof(text)) < 0)
                return;
        if (conf_parse_active_hours(text, w2, &n2, reason, sizeof(reason)) < 0 || n2 != n)
                abort();
        /* field by field: the struct has a padding byte */
        for (int i = 0; i < n; i++)
                if (w[i].days != w2[i].days || w[i].start_min != w2[i].start_min ||
                    w[i].end_min != w2[i].end_min)
                        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *text = NULL;
        conf_ini ini = {};
        conf_pair fleet[16];
        size_t n_fleet = 0;
        char reason[256], path[32];
        conf c = {};

        if (size > 64 * 1024)
                return -1;
        text = fuzz_strndup(data, size);

        if (conf_ini_parse(text, &ini) < 0)
                return 0;
        for (size_t i = 0; i < ini.n; i++) {
                const conf_line *l = &ini.lines[i];

                if (l->kind != CONF_LINE_ASSIGN)
                        continue;
                /* Every value against every key: a value meant for one key is a fine
                 * malformed value for the others. */
                for (conf_key k = 0; k < _CONF_KEY_MAX; k++)
                        (void) conf_check_value(k, l->value, reason, sizeof(reason));
                check_active_hours(l->value);
                (void) conf_key_from_string(l->key);
                if (l->section && strcmp(l->section, "Fleet") == 0 && n_fleet < 16)
                        fleet[n_fleet++] = (conf_pair) { l->key, l->value };
        }
        check_active_hours(text);

        int fd = fuzz_memfd(data, size, path);
        conf_load_options o = {
                .root = root,
                .config_file = path,
                .state_dir = root,
                .fleet = fleet,
                .n_fleet = n_fleet,
        };
        if (conf_load(&o, &c) >= 0) {
                _cleanup_free_ char *show = NULL;
                char v[512];

                for (conf_key k = 0; k < _CONF_KEY_MAX; k++)
                        conf_format_value(&c, k, v, sizeof(v));
                (void) conf_format_show(&c, &show);
        }
        conf_done(&c);
        close(fd);
        conf_ini_done(&ini);
        return 0;
}
