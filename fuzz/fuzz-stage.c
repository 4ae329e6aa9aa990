/* SPDX-License-Identifier: MIT */
/* Stage messages (collaborative inference) as a stage server handles them: the first byte
 * picks the span of a 3-layer model the request is for (and whether the device is paused);
 * the rest is the body, decoded and, when valid, run through the stage with a session table
 * that persists across inputs, as a long-running server's does. Every reply must be a
 * well-formed status: 200 with a body the decoder accepts, or an error with a reason. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-util.h"
#include "stage-host.h"
#include "stage-wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static const model_config cfg = { "custom", 16, 16, 3, 2 };
static model *m;
static stage_host *host;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        stage_host_limits lim = { .max_bytes = 4 << 20, .idle_timeout_s = 1e9, .max_sessions = 8 };

        fuzz_quiet();
        if (model_new(&cfg, 1, 1, &m) < 0)
                abort();
        model_init_params(m, 1);
        if (stage_host_new(&cfg, &m->p, 1, 0, &lim, &host) < 0)
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const int spans[4][2] = { { 0, 2 }, { 0, 0 }, { 1, 2 }, { 2, 2 } };
        stage_reply rep;

        if (size < 1 || size > 64 * 1024)
                return -1;
        int k = data[0] & 3;
        bool paused = data[0] & 4;
        stage_host_handle(host, 1, spans[k][0], spans[k][1], data + 1, size - 1, !paused, 0, &rep);
        if (rep.status == 200) {
                stage_wire_header h;
                float *out = NULL;
                const char *why;
                if (stage_wire_decode(rep.body, rep.size, &h, &out, &why) < 0)
                        abort(); /* the server must never send what a client refuses */
                free(out);
                free(rep.body);
        } else if (rep.status < 400 || rep.status > 599 || !rep.reason || !rep.detail)
                abort();
        return 0;
}
