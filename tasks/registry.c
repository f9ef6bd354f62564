/* tasks/registry.c: the table of tasks this worker runs, and the small
 * helpers tasks use to report outcomes and to wait cancellably.
 *
 * The table is static and sorted by name so lookup is a binary search and
 * `inspect registered` can list it in Celery's (sorted) order. Adding a task
 * means adding one line here. */
#include "tasks/task.h"
#include "tasks/builtin.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Sorted by strcmp order; test_registry checks that it stays sorted. */
static const task_def registry[] = {
    {"dev_health_ops.workers.tasks.run_product_telemetry_consumer", task_run_product_telemetry_consumer},
    {"ptel.echo", task_echo},
    {"ptel.fail", task_fail_task},
    {"ptel.flaky", task_flaky},
    {"ptel.ping", task_ping},
    {"ptel.sleep", task_sleep_task},
};

static int compare_name(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const task_def *)elem)->name);
}

const task_def *task_find(const char *name)
{
    if (!name) return NULL;
    return bsearch(name, registry, sizeof registry / sizeof registry[0],
                   sizeof registry[0], compare_name);
}

const task_def *task_all(int *count)
{
    *count = (int)(sizeof registry / sizeof registry[0]);
    return registry;
}

/* ---- Outcomes ------------------------------------------------------------ */

void task_succeed(task_outcome *out, pj_value *result)
{
    out->status = TASK_SUCCESS;
    out->result = result ? result : pj_new_null();
}

static void set_exception(task_outcome *out, const char *exc_type, const char *exc_module,
                          const char *message)
{
    out->exc_type = xstrdup(exc_type);
    out->exc_module = xstrdup(exc_module);
    out->exc_args = pj_new_array();
    pj_array_append(out->exc_args, pj_new_string(message));
}

void task_fail(task_outcome *out, const char *exc_type, const char *exc_module,
               const char *fmt, ...)
{
    buf msg = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    out->status = TASK_FAILURE;
    set_exception(out, exc_type, exc_module, buf_cstr(&msg));
    buf_free(&msg);
}

void task_retry(task_outcome *out, double countdown, const char *exc_type,
                const char *exc_module, const char *message)
{
    out->status = TASK_RETRY;
    out->retry_countdown = countdown;
    set_exception(out, exc_type, exc_module, message);
}

void task_outcome_free(task_outcome *out)
{
    pj_free(out->result);
    pj_free(out->exc_args);
    free(out->exc_type);
    free(out->exc_module);
    free(out->traceback);
    memset(out, 0, sizeof *out);
}

/* ---- Cancellable sleep ----------------------------------------------------- */

/* Polls the cancel flag every 10 ms: revoke --terminate and time limits must
 * stop a sleeping task within a fraction of a second, and 100 wake-ups a
 * second of one thread cost nothing measurable. */
#define TASK_SLEEP_POLL_MS 10

int task_sleep(task_context *ctx, double seconds)
{
    int64_t end = time_now_us() + (int64_t)(seconds * USEC_PER_SEC);
    for (;;) {
        int reason = atomic_load(ctx->cancel);
        if (reason != TASK_RUN) return reason;
        int64_t left = end - time_now_us();
        if (left <= 0) return TASK_RUN;
        int64_t step = left < TASK_SLEEP_POLL_MS * 1000 ? left : TASK_SLEEP_POLL_MS * 1000;
        struct timespec ts = {(time_t)(step / USEC_PER_SEC), (long)(step % USEC_PER_SEC) * 1000};
        nanosleep(&ts, NULL);
    }
}
