/* tasks/drain_task.c: the Celery task run_product_telemetry_consumer on top
 * of the drain engine (tasks/drain.h).
 *
 * Each pool slot keeps one drain session (its Redis and ClickHouse
 * connections) across task runs, under a stable consumer name
 * "<node>#<slot>", so a slot's own pending entries are found again by the
 * same slot after a crash or a retry (DESIGN §3). */
#include "tasks/drain_task.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "tasks/drain.h"

typedef struct drain_slot {
    drain_session *session;
    char *consumer;
} drain_slot;

static drain_slot *slot_session(task_context *ctx, char *err, size_t errlen)
{
    drain_slot *ds = *ctx->slot_state;
    if (ds) return ds;
    if (!ctx->drain) {
        snprintf(err, errlen, "the worker passed no drain settings");
        return NULL;
    }
    buf name = BUF_INIT;
    buf_printf(&name, "%s#%d", ctx->hostname, ctx->slot + 1);
    drain_options opts = *ctx->drain;
    opts.consumer = buf_cstr(&name);
    drain_session *session = drain_session_new(&opts, err, errlen);
    if (!session) {
        buf_free(&name);
        return NULL;
    }
    ds = xcalloc(1, sizeof *ds);
    ds->session = session;
    ds->consumer = buf_detach(&name);
    *ctx->slot_state = ds;
    return ds;
}

/* Count what each flushed batch added, so /metrics moves during a long
 * drain and not only when the task ends. */
static void count_progress(const drain_result *so_far, void *arg)
{
    drain_result *seen = arg;
    metrics_add("ptel_events_stored_total", "", (double)(so_far->processed - seen->processed));
    metrics_add("ptel_events_rejected_total", "", (double)(so_far->rejected - seen->rejected));
    metrics_add("ptel_events_dead_lettered_total", "",
                (double)(so_far->dead_lettered - seen->dead_lettered));
    metrics_add("ptel_entries_reclaimed_total", "", (double)(so_far->reclaimed - seen->reclaimed));
    *seen = *so_far;
}

void drain_task_run(task_context *ctx, int max_iterations, task_outcome *out)
{
    char err[512] = "";
    drain_slot *ds = slot_session(ctx, err, sizeof err);
    if (!ds) {
        task_fail(out, "ValueError", "builtins", "cannot start the drain: %s", err);
        return;
    }
    drain_request req = {
        .max_iterations = max_iterations,
        .cancel = ctx->cancel,
        .soft_deadline_us = ctx->soft_deadline_us,
        .progress = count_progress,
    };
    drain_result seen = {0};
    req.progress_arg = &seen;
    drain_result result;
    int rc = drain_run(ds->session, &req, &result, err, sizeof err);
    count_progress(&result, &seen);
    if (rc != 0) {
        /* Nothing unstored was acked: the entries stay pending for the next
         * run. Failing the task makes the outage visible in Flower. */
        task_fail(out, "ConnectionError", "builtins",
                  "drain stopped with %lld event(s) stored: %s; unstored entries stay pending "
                  "and are retried by the next run", result.processed, err);
        return;
    }
    task_succeed(out, drain_result_to_value(&result));
}

void drain_task_slot_free(void **slot_state)
{
    drain_slot *ds = *slot_state;
    if (!ds) return;
    drain_session_free(ds->session);
    free(ds->consumer);
    free(ds);
    *slot_state = NULL;
}
