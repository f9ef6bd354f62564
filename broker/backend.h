/* broker/backend.h: Celery's Redis result backend, as a worker writes it.
 *
 * Owns: the `celery-task-meta-<id>` value (PROTOCOL §11.2: Celery's key
 * order, json.dumps bytes) and the write pattern of §11.1: GET guard (a
 * stored SUCCESS is never overwritten), then SETEX (or SET) and PUBLISH of
 * the same bytes on the channel of the same name. The PUBLISH is what wakes
 * a waiting AsyncResult.get() (§11.4). We run these commands in one Lua
 * script (one round trip and atomic, where Celery needs two: GET, then
 * MULTI/EXEC); keys, values and channel are the same.
 *
 * Does not own: chords (§11.3), result_extended, reading results for
 * clients, or the connection (the caller's redisContext*). */
#ifndef PTEL_BROKER_BACKEND_H
#define PTEL_BROKER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "common/buf.h"
#include "common/pyjson.h"

/* Celery's default result_expires: one day (PROTOCOL §11.1). */
#define BACKEND_DEFAULT_EXPIRES_S 86400
/* Most results one backend_store_many call writes (bounds the pipeline). */
#define BACKEND_MAX_BATCH 1000

typedef enum {
    BACKEND_STARTED,
    BACKEND_SUCCESS,
    BACKEND_FAILURE,
    BACKEND_RETRY,
    BACKEND_REVOKED,
} backend_status;

/* One state change. Everything is borrowed. */
typedef struct backend_result {
    const char *task_id;
    backend_status status;
    const pj_value *result;      /* SUCCESS: the return value (NULL = null) */
    long long pid;               /* STARTED: pool slot's pid */
    const char *hostname;        /* STARTED: node name "w1@vm" */
    const char *exc_type;        /* FAILURE/RETRY/REVOKED: "ValueError" */
    const char *exc_module;      /* "builtins", "celery.exceptions", ... */
    const pj_value *exc_args;    /* the args list (NULL = []) */
    const char *traceback;       /* NULL = null */
    const pj_value *children;    /* NULL = [] ([[[task_id, null], null]] for RETRY) */
    const char *group_id;        /* NULL = key omitted */
    const char *parent_id;       /* NULL = key omitted */
    int64_t date_done_us;        /* used for SUCCESS/FAILURE/REVOKED only */
} backend_result;

/* "SUCCESS", "FAILURE", ... */
const char *backend_status_name(backend_status s);

/* Append the exact value Celery stores for r to out. */
void backend_encode(buf *out, const backend_result *r);

/* Store one result. result_expires_s > 0: SETEX with that TTL; <= 0: plain
 * SET (Celery writes SET when result_expires is None or 0, since it tests
 * `if self.expires`). Returns 1 written, 0 skipped because SUCCESS was
 * already stored, -1 on error (reason in err). */
int backend_store(redisContext *ctx, const backend_result *r, int64_t result_expires_s,
                  char *err, size_t errlen);

/* Store n results in one round trip (the store script pipelined n times).
 * Returns how many were written (those already SUCCESS are skipped), -1 on
 * error (the others are still written). */
int backend_store_many(redisContext *ctx, const backend_result *rs, size_t n,
                       int64_t result_expires_s, char *err, size_t errlen);

/* backend_store_finish's value when the server had lost the store script (restart,
 * SCRIPT FLUSH): nothing was written; call backend_store once the other
 * replies of the pipeline are read. */
#define BACKEND_STORE_AGAIN 2

/* backend_store in two halves, to share a round trip with other commands
 * (pipelining). _append queues the store without sending it; it must be
 * queued before any other command of the pipeline (the first call in a
 * process loads the script and waits for that). 0 queued, -1 not (err).
 * _finish reads its reply, in queue order with the pipeline's others:
 * 1 written, 0 skipped (SUCCESS stored), -1 error (err),
 * BACKEND_STORE_AGAIN. */
int backend_store_append(redisContext *ctx, const backend_result *r, int64_t result_expires_s,
                         char *err, size_t errlen);
/* Load the store script now (nothing queued on ctx yet), so that
 * backend_store_append may then be queued after other commands of a
 * pipeline. 0, or -1 (err). */
int backend_store_prepare(redisContext *ctx, char *err, size_t errlen);
int backend_store_finish(redisContext *ctx, const char *task_id, char *err, size_t errlen);

#endif
