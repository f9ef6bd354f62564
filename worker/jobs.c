/* worker/jobs.c: settling a job: acks, the result states the worker stores
 * itself (FAILURE for undecodable or unknown messages, REVOKED, time limits),
 * and opening the worker's Redis connections. Shared by the consumer, the
 * pool and the main thread, each passing its own connection. */
#include "worker/state.h"

#include <stdlib.h>
#include <string.h>

#include "broker/backend.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Commands on the broker and backend connections time out after this: a
 * Redis that stops answering must not hang a slot forever. */
#define WORKER_REDIS_TIMEOUT_S 10.0

redisContext *worker_connect(const redis_url *url, const char *what)
{
    char err[256];
    redisContext *ctx = redis_url_connect(url, WORKER_REDIS_TIMEOUT_S, err, sizeof err);
    if (!ctx) {
        char *shown = redis_url_redacted(url);
        log_error("Cannot connect to %s %s: %s", what, shown, err);
        free(shown);
    }
    return ctx;
}

void job_free(job *j)
{
    if (!j) return;
    message_free(&j->msg);
    free(j);
}

void job_ack_settled(job *j, int ack_rc, const char *err)
{
    if (ack_rc == 0) {
        j->acked = 1;
        return;
    }
    log_error("Could not ack %s[%s] (tag %s): %s; it stays in unacked and will be "
              "restored after the visibility timeout", j->msg.task, j->msg.id,
              j->msg.delivery_tag, err);
}

int job_ack(redisContext *ctx, worker *w, job *j)
{
    if (j->acked) return 0;
    char err[256];
    const char *tags[1] = {j->msg.delivery_tag};
    int rc = transport_ack(ctx, &w->topts, tags, 1, err, sizeof err) != 0 ? -1 : 0;
    job_ack_settled(j, rc, err);
    return rc;
}

static void store(redisContext *ctx, worker *w, const backend_result *r)
{
    char err[256];
    if (backend_store(ctx, r, w->cfg->result_expires, err, sizeof err) < 0)
        log_error("Could not store %s for task %s: %s", backend_status_name(r->status),
                  r->task_id, err);
}

void job_store_failure(redisContext *ctx, worker *w, const char *task_id,
                       const char *exc_type, const char *exc_module, const char *message,
                       const char *traceback)
{
    if (!task_id) return;
    pj_value *args = pj_new_array();
    pj_array_append(args, pj_new_string(message));
    backend_result r = {
        .task_id = task_id, .status = BACKEND_FAILURE, .exc_type = exc_type,
        .exc_module = exc_module, .exc_args = args, .traceback = traceback,
        .date_done_us = time_now_us(),
    };
    store(ctx, w, &r);
    pj_free(args);
}

/* REVOKED with TaskRevokedError(why): "revoked", "expired" or "terminated"
 * (PROTOCOL §11.2, §12.1). */
void job_store_revoked(redisContext *ctx, worker *w, job *j, const char *why)
{
    if (j->settings.ignore_result) return;
    pj_value *args = pj_new_array();
    pj_array_append(args, pj_new_string(why));
    backend_result r = {
        .task_id = j->msg.id, .status = BACKEND_REVOKED, .exc_type = "TaskRevokedError",
        .exc_module = "celery.exceptions", .exc_args = args,
        .parent_id = j->msg.parent_id, .group_id = j->msg.group,
        .date_done_us = time_now_us(),
    };
    store(ctx, w, &r);
    pj_free(args);
}
