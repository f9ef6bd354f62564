/* tasks/task.h: what a task is, seen from the worker.
 *
 * A task is a C function that gets a context (who it is, its arguments, its
 * deadlines, a cancellation flag) and fills an outcome (a return value, a
 * failure, or a request to be retried). Tasks never see broker internals:
 * the worker turns outcomes into Celery result states, events and acks. */
#ifndef PTEL_TASK_H
#define PTEL_TASK_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/pyjson.h"

struct ptel_config;
struct drain_options;

/* Why a running task is asked to stop (values of task_context.cancel). */
typedef enum {
    TASK_RUN = 0,
    TASK_CANCEL_SOFT_LIMIT,   /* soft time limit: finish cleanly, now */
    TASK_CANCEL_REVOKED,      /* revoke --terminate */
    TASK_CANCEL_SHUTDOWN,     /* cold shutdown */
    TASK_CANCEL_HARD_LIMIT,   /* hard time limit: the worker has already failed it */
} task_cancel_reason;

typedef struct task_context {
    const char *id;
    const char *name;
    const pj_value *args;          /* borrowed: a PJ_ARRAY */
    const pj_value *kwargs;        /* borrowed: a PJ_OBJECT */
    int retries;
    int64_t soft_deadline_us;      /* 0 = none */
    int64_t hard_deadline_us;      /* 0 = none */
    atomic_int *cancel;            /* task_cancel_reason; poll it at safe points */
    const struct ptel_config *config;
    const char *hostname;          /* worker node name, e.g. celery@host */
    int slot;                      /* 0-based pool slot running the task */
    const struct drain_options *drain; /* the drain's settings, built by the worker
                                      from its configuration (consumer name unset) */
    void **slot_state;             /* per-slot cache owned by tasks/ (e.g. the drain's
                                      connections), kept across task runs; released
                                      by task_slot_state_free() when the slot stops */
} task_context;

typedef enum { TASK_SUCCESS, TASK_FAILURE, TASK_RETRY } task_status;

typedef struct task_outcome {
    task_status status;
    pj_value *result;          /* SUCCESS: the return value (owned) */
    char *exc_type;            /* FAILURE/RETRY: e.g. "ValueError" */
    char *exc_module;          /* e.g. "builtins" */
    pj_value *exc_args;        /* the exception's args list (owned), Celery's exc_message */
    char *traceback;           /* text or NULL */
    double retry_countdown;    /* RETRY: seconds until the retried message is due */
} task_outcome;

typedef void (*task_fn)(task_context *ctx, task_outcome *out);

typedef struct task_def {
    const char *name;
    task_fn run;
} task_def;

/* The registry of every task this worker can run, sorted by name. */
const task_def *task_find(const char *name);
const task_def *task_all(int *count);

/* Outcome helpers: each takes ownership of the pj_value it is given. */
void task_succeed(task_outcome *out, pj_value *result);
void task_fail(task_outcome *out, const char *exc_type, const char *exc_module,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void task_retry(task_outcome *out, double countdown, const char *exc_type,
                const char *exc_module, const char *message);
void task_outcome_free(task_outcome *out);

/* Release what tasks cached in a slot (see task_context.slot_state). */
void task_slot_state_free(void **slot_state);

/* Argument access in Python's calling convention: positional index first,
 * then keyword. Borrowed; NULL when absent. */
const pj_value *task_arg(const task_context *ctx, int index, const char *keyword);

/* Sleep up to `seconds`, waking early on cancellation. Returns the cancel
 * reason (TASK_RUN if the full time elapsed). */
int task_sleep(task_context *ctx, double seconds);

#endif
