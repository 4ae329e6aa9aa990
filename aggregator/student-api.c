/* SPDX-License-Identifier: MIT */
/* GET /v1/student: the published student's description; GET /v1/student/model: its weights
 * (ETag, Range, like a version). Device credentials required, as for the teacher. */
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#include "macros.h"
#include "server-internal.h"
#include "store.h"
#include "student.h"

enum MHD_Result agg_api_student(agg_request *rq, const char *rest) {
        _cleanup_free_ char *path = NULL;
        const char *dir = agg_store_dir(rq->srv->store);
        agg_student st;
        int r;

        if (!agg_authenticate(rq))
                return MHD_YES;
        if (*rest && strcmp(rest, "/model"))
                return agg_respond_error(rq, MHD_HTTP_NOT_FOUND, "not-found", "no such resource");
        r = agg_student_read(dir, &st);
        if (r == -ENOENT)
                return agg_respond_error(rq, MHD_HTTP_NOT_FOUND, "not-found",
                                         "no student is published");
        if (r < 0)
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage",
                                         "the student's description is not readable");
        if (!*rest)
                return agg_respond_json(
                        rq, MHD_HTTP_OK,
                        json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "model", st.config,
                                  "model_sha256", st.sha, "model_bytes", (json_int_t) st.bytes,
                                  "n_params", (json_int_t) st.n_params, "teacher_version",
                                  (json_int_t) st.teacher_version, "published",
                                  (json_int_t) st.published));
        if (agg_student_blob_path(dir, st.sha, &path) < 0)
                return MHD_NO;
        return agg_serve_blob(rq, path, st.sha, "the student's weights are missing");
}
