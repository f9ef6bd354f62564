/* tasks/builtin.c: the diagnostic tasks (ptel.*) and the Celery entry point of
 * the telemetry drain.
 *
 * Diagnostic tasks behave like small Python tasks would: wrong arguments fail
 * with TypeError, a soft time limit fails with SoftTimeLimitExceeded, and
 * ptel.flaky retries the way `self.retry(countdown=1)` does. */
#include "tasks/builtin.h"

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/mem.h"
#include "tasks/drain_task.h"

const pj_value *task_arg(const task_context *ctx, int index, const char *keyword)
{
    if (ctx->args && ctx->args->type == PJ_ARRAY && (size_t)index < ctx->args->u.array.len)
        return ctx->args->u.array.items[index];
    if (ctx->kwargs && ctx->kwargs->type == PJ_OBJECT && keyword)
        return pj_object_get(ctx->kwargs, keyword);
    return NULL;
}

/* Python would raise TypeError for too many positional arguments. */
static int check_arity(task_context *ctx, task_outcome *out, size_t max_positional)
{
    size_t given = ctx->args && ctx->args->type == PJ_ARRAY ? ctx->args->u.array.len : 0;
    if (given <= max_positional) return 0;
    task_fail(out, "TypeError", "builtins", "%s() takes %zu positional argument%s but %zu were given",
              ctx->name, max_positional, max_positional == 1 ? "" : "s", given);
    return -1;
}

/* A soft time limit raises SoftTimeLimitExceeded inside a Python task; a
 * revoke --terminate or hard limit never reaches the stored result (the
 * worker stores REVOKED / TimeLimitExceeded itself), so any outcome will do. */
static void fail_cancelled(task_context *ctx, task_outcome *out, int reason)
{
    if (reason == TASK_CANCEL_SOFT_LIMIT)
        task_fail(out, "SoftTimeLimitExceeded", "billiard.exceptions", "SoftTimeLimitExceeded()");
    else
        task_fail(out, "WorkerLostError", "billiard.exceptions", "%s stopped by the worker", ctx->name);
}

void task_ping(task_context *ctx, task_outcome *out)
{
    if (check_arity(ctx, out, 0)) return;
    task_succeed(out, pj_new_string("pong"));
}

/* Returns exactly what it received: {"args": [...], "kwargs": {...}}. */
void task_echo(task_context *ctx, task_outcome *out)
{
    pj_value *result = pj_new_object();
    pj_object_set(result, "args", ctx->args ? pj_clone(ctx->args) : pj_new_array());
    pj_object_set(result, "kwargs", ctx->kwargs ? pj_clone(ctx->kwargs) : pj_new_object());
    task_succeed(out, result);
}

void task_sleep_task(task_context *ctx, task_outcome *out)
{
    if (check_arity(ctx, out, 1)) return;
    const pj_value *arg = task_arg(ctx, 0, "seconds");
    double seconds;
    if (!arg) {
        task_fail(out, "TypeError", "builtins",
                  "ptel.sleep() missing 1 required positional argument: 'seconds'");
        return;
    }
    if (pj_number_value(arg, &seconds) != 0 || seconds < 0) {
        task_fail(out, "ValueError", "builtins", "seconds must be a non-negative number");
        return;
    }
    int reason = task_sleep(ctx, seconds);
    if (reason != TASK_RUN) {
        fail_cancelled(ctx, out, reason);
        return;
    }
    task_succeed(out, pj_new_float(seconds));
}

void task_fail_task(task_context *ctx, task_outcome *out)
{
    if (check_arity(ctx, out, 1)) return;
    const pj_value *arg = task_arg(ctx, 0, "message");
    const char *message = arg && arg->type == PJ_STRING ? arg->u.string.ptr : "ptel.fail called";
    task_fail(out, "RuntimeError", "builtins", "%s", message);
}

/* Retries with a 1 s countdown until its retry count reaches `times`, then
 * returns the count: exercises Celery's retry republish end to end. */
void task_flaky(task_context *ctx, task_outcome *out)
{
    if (check_arity(ctx, out, 1)) return;
    const pj_value *arg = task_arg(ctx, 0, "times");
    long long times;
    if (!arg || pj_int_value(arg, &times) != 0 || times < 0) {
        task_fail(out, "TypeError", "builtins", "ptel.flaky() needs an integer 'times' >= 0");
        return;
    }
    if (ctx->retries < times) {
        buf msg = BUF_INIT;
        buf_printf(&msg, "Retry in 1s: flaky attempt %d of %lld", ctx->retries + 1, times + 1);
        task_retry(out, 1.0, "Retry", "celery.exceptions", buf_cstr(&msg));
        buf_free(&msg);
        return;
    }
    task_succeed(out, pj_new_int(ctx->retries));
}

void task_run_product_telemetry_consumer(task_context *ctx, task_outcome *out)
{
    if (check_arity(ctx, out, 1)) return;
    const pj_value *arg = task_arg(ctx, 0, "max_iterations");
    long long max_iterations = 100;
    if (arg && arg->type != PJ_NULL && (pj_int_value(arg, &max_iterations) != 0 || max_iterations < 1)) {
        task_fail(out, "ValueError", "builtins", "max_iterations must be a positive integer");
        return;
    }
    drain_task_run(ctx, (int)max_iterations, out);
}

void task_slot_state_free(void **slot_state)
{
    drain_task_slot_free(slot_state);
}
