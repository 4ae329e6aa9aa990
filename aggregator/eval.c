/* SPDX-License-Identifier: MIT */
#include "eval.h"

#include <errno.h>
#include <stdlib.h>

#include "fileio.h"
#include "log.h"
#include "macros.h"

int agg_eval_loss(model *m, const uint8_t *text, size_t size, double *ret_loss) {
        int T = m->layout.cfg.block_size;
        double sum = 0;

        if (size < 2)
                return -ENODATA;
        if ((size_t) T + 1 > size)
                T = (int) size - 1;
        size_t span = size - (size_t) T - 1;
        for (size_t i = 0; i < AGG_EVAL_WINDOWS; i++) {
                size_t off = span * i / (AGG_EVAL_WINDOWS - 1);
                float loss;
                int r = model_forward(m, text + off, text + off + 1, 1, T, &loss);
                if (r < 0)
                        return r;
                sum += loss;
        }
        *ret_loss = sum / AGG_EVAL_WINDOWS;
        return 0;
}

int agg_eval_file(model *m, const char *path, double *ret_loss) {
        _cleanup_free_ void *buf = NULL;
        size_t size;
        int r;

        r = read_full_file(path, AGG_EVAL_MAX_BYTES, &buf, &size);
        if (r == -EFBIG)
                return log_error_errno(r, "%s: ValidationFile larger than %u MiB", path,
                                       AGG_EVAL_MAX_BYTES >> 20);
        if (r < 0)
                return log_error_errno(r, "%s: cannot read ValidationFile: %m", path);
        r = agg_eval_loss(m, buf, size, ret_loss);
        if (r == -ENODATA)
                return log_error_errno(r, "%s: ValidationFile holds fewer than 2 bytes", path);
        return r;
}
