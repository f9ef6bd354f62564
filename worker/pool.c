/* worker/pool.c: the slots that run tasks, and the time limits on them.
 *
 * A slot is a thread with its own broker/backend connections. It takes the
 * oldest reserved job, acks it early unless acks_late (Celery acks when the
 * pool accepts the job, PROTOCOL §4.2), stores STARTED when tracked, runs the
 * task, stores the outcome, and acks late jobs after their result. When
 * broker and backend are one connection, a busy slot does all of that for
 * one task in one round trip: the last task's outcome, the next task's
 * start and a fetch refilling the prefetch room travel together (see
 * "Round trips").
 *
 * Time limits: the main thread calls pool_check_limits() every tick. At the
 * soft limit the task's cancel flag asks it to finish now. At the hard limit
 * the main thread settles the job itself (FAILURE TimeLimitExceeded, ack),
 * exactly when Celery's pool would kill the child, and marks the slot
 * abandoned so the task's late outcome is discarded. A task that has not
 * returned WORKER_ABANDON_GRACE_US later is left behind: a fresh slot takes
 * its place so the pool keeps its size, and the old thread frees its slot if
 * it ever returns. */
#include "worker/remote.h"
#include "worker/state.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/backend.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

static void *slot_main(void *arg);

/* ---- Connections ---------------------------------------------------------- */

static int slot_connect(slot *s)
{
    worker *w = s->w;
    if (s->broker && s->broker->err) {
        if (s->backend == s->broker) s->backend = NULL;
        redisFree(s->broker);
        s->broker = NULL;
    }
    if (s->backend && s->backend->err) {
        redisFree(s->backend);
        s->backend = NULL;
    }
    if (!s->broker && !(s->broker = worker_connect(&w->broker_url, "broker"))) return -1;
    if (w->backend_same_as_broker) s->backend = s->broker;
    else if (!s->backend && !(s->backend = worker_connect(&w->backend_url, "result backend")))
        return -1;
    return 0;
}

static slot *slot_new(worker *w, int index)
{
    slot *s = xcalloc(1, sizeof *s);
    s->w = w;
    s->index = index;
    atomic_init(&s->cancel, TASK_RUN);
    return s;
}

static void slot_free(slot *s)
{
    task_slot_state_free(&s->task_state);
    if (s->backend && s->backend != s->broker) redisFree(s->backend);
    if (s->broker) redisFree(s->broker);
    free(s);
}

/* ---- Outcomes -------------------------------------------------------------- */

/* The retry republish, on a fresh connection if the slot's one was lost
 * (same policy as store_retrying below: a retry must not turn into FAILURE
 * because Redis restarted while the task ran). */
static int publish_retrying(slot *s, const char *queue, int priority, const char *data,
                            size_t len, char *err, size_t errlen)
{
    worker *w = s->w;
    for (int attempt = 0;; attempt++) {
        if (s->broker && transport_publish(s->broker, &w->topts, queue, priority, data, len,
                                           err, errlen) == 0)
            return 0;
        if (s->broker && !s->broker->err) return -1;
        if (attempt >= 20 || atomic_load(&w->stopping) == 2) return -1;
        if (attempt > 0) {
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
        }
        slot_connect(s);
    }
}

/* A result store that hit a lost connection (Redis restarted while the task
 * ran) is retried on a fresh connection, as Celery's Redis backend does with
 * its retry_policy (20 tries, about 1 s apart): otherwise the result of an
 * early-ack task would be lost for good. Errors other than a lost connection
 * are not retried. */
#define STORE_RETRIES 20

static int store_retrying(slot *s, const backend_result *r, char *err, size_t errlen)
{
    worker *w = s->w;
    for (int attempt = 0;; attempt++) {
        if (s->backend && backend_store(s->backend, r, w->cfg->result_expires, err, errlen) >= 0)
            return 0;
        if (s->backend && !s->backend->err) return -1;
        if (attempt >= STORE_RETRIES || atomic_load(&w->stopping) == 2) return -1;
        if (attempt > 0) {
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
        }
        slot_connect(s);
    }
}

/* ---- Outcomes ready to write ------------------------------------------------- */

/* A finished task's outcome, decided (logged, retry republished) but not yet
 * stored: it rides in the slot's next round trip (see "Round trips"). Owns
 * what r points at, except the job's own fields; the job is the slot's
 * until outcome_release. */
typedef struct pending_outcome {
    job *j;
    task_outcome out;         /* the task's result / exception (owned) */
    backend_result r;
    buf line;                 /* repr of the result or exception (log, events) */
    char *traceback;
    pj_value *children;       /* RETRY: [[[id, null], null]] */
    double runtime;
    int ack;                  /* acks_late: ack right after the store (PROTOCOL §4.2) */
} pending_outcome;

/* Python clients show the traceback text; ours names the task and the error. */
static char *make_traceback(const job *j, const task_outcome *out)
{
    buf tb = BUF_INIT;
    buf args = BUF_INIT;
    if (out->exc_args) pj_repr(&args, out->exc_args);
    buf_printf(&tb, "Traceback (most recent call last):\n  File \"ptel-worker\", in task %s\n"
                    "%s: %s\n", j->msg.task, out->exc_type, buf_cstr(&args));
    buf_free(&args);
    return buf_detach(&tb);
}

/* "RuntimeError('boom')" as Python's repr of the exception. */
static void exception_repr(buf *out, const task_outcome *o)
{
    buf_puts(out, o->exc_type);
    buf_putc(out, '(');
    if (o->exc_args && o->exc_args->type == PJ_ARRAY) {
        for (size_t i = 0; i < o->exc_args->u.array.len; i++) {
            if (i) buf_puts(out, ", ");
            pj_repr(out, o->exc_args->u.array.items[i]);
        }
    }
    buf_putc(out, ')');
}

/* Decide what to store for j's outcome: log it, republish a retry, count
 * it. Takes ownership of *out (left zeroed). The result is written by the
 * next round trip (outcome_write or round_trip). */
static pending_outcome *outcome_prepare(slot *s, job *j, task_outcome *out, double runtime,
                                        int ack)
{
    worker *w = s->w;
    pending_outcome *po = xcalloc(1, sizeof *po);
    po->j = j;
    po->out = *out;
    memset(out, 0, sizeof *out);
    po->runtime = runtime;
    po->ack = ack;
    buf_init(&po->line);
    out = &po->out;
    char err[256];
    backend_result *r = &po->r;
    *r = (backend_result){.task_id = j->msg.id, .parent_id = j->msg.parent_id,
                          .group_id = j->msg.group, .date_done_us = time_now_us()};

    switch (out->status) {
    case TASK_SUCCESS:
        r->status = BACKEND_SUCCESS;
        r->result = out->result;
        pj_repr(&po->line, out->result);
        log_info("Task %s[%s] succeeded in %.6fs: %s", j->msg.task, j->msg.id, runtime,
                 buf_cstr(&po->line));
        break;
    case TASK_FAILURE:
        r->status = BACKEND_FAILURE;
        po->traceback = make_traceback(j, out);
        exception_repr(&po->line, out);
        log_error("Task %s[%s] raised unexpected: %s", j->msg.task, j->msg.id,
                  buf_cstr(&po->line));
        break;
    case TASK_RETRY: {
        r->status = BACKEND_RETRY;
        po->traceback = make_traceback(j, out);
        /* Republish first (same id, retries + 1, eta), as Celery's
         * Task.retry does (PROTOCOL §12.3), then store RETRY. */
        buf msg = BUF_INIT;
        int64_t eta = time_now_us() + (int64_t)(out->retry_countdown * USEC_PER_SEC);
        buf origin = BUF_INIT;
        buf_printf(&origin, "gen%d@%s", (int)w->pid,
                   strchr(w->hostname, '@') ? strchr(w->hostname, '@') + 1 : w->hostname);
        const char *queue = j->msg.routing_key ? j->msg.routing_key : w->cfg->task_default_queue;
        if (message_build_retry(&j->msg, eta, buf_cstr(&origin), &msg) != 0 ||
            publish_retrying(s, queue, j->msg.priority, msg.data, msg.len, err, sizeof err) != 0) {
            log_error("Task %s[%s] asked to retry but the retry could not be published (%s); "
                      "storing FAILURE", j->msg.task, j->msg.id, err);
            r->status = BACKEND_FAILURE;
        } else {
            exception_repr(&po->line, out);
            log_info("Task %s[%s] retry: %s", j->msg.task, j->msg.id, buf_cstr(&po->line));
            pj_value *children = pj_new_array();
            pj_value *tuple = pj_new_array(), *pair = pj_new_array();
            pj_array_append(pair, pj_new_string(j->msg.id));
            pj_array_append(pair, pj_new_null());
            pj_array_append(tuple, pair);
            pj_array_append(tuple, pj_new_null());
            pj_array_append(children, tuple);
            po->children = children;
            r->children = children;
            r->date_done_us = 0;
        }
        buf_free(&msg);
        buf_free(&origin);
        break;
    }
    }
    if (out->status != TASK_SUCCESS) {
        r->exc_type = out->exc_type;
        r->exc_module = out->exc_module;
        r->exc_args = out->exc_args;
        r->traceback = po->traceback;
    }
    if (r->status != BACKEND_SUCCESS && !po->line.len) exception_repr(&po->line, out);
    task_metric(j->msg.task, "ptel_tasks_total", backend_status_name(r->status), 1);
    task_metric(j->msg.task, "ptel_task_runtime_seconds", NULL, runtime);
    return po;
}

/* outcome_complete's store_rc when the store did not happen (or a lost
 * connection left it unconfirmed): it is written there, with retries. */
#define STORE_NOT_WRITTEN (-2)

/* The job is done with: count it, free room for the consumer, free it. If
 * it is still the slot's current job, the slot goes idle first, so nobody
 * (inspect active, revoke --terminate) sees it freed. */
static void job_finished(slot *s, job *j)
{
    worker *w = s->w;
    pthread_mutex_lock(&w->lock);
    if (s->current == j) {
        s->current = NULL;
        s->status = SLOT_IDLE;
    }
    w->stats.processed++;
    if (j->settings.acks_late) {   /* only a late job still held room */
        w->n_late_active--;
        consumer_room_signal_locked(w);
    }
    pthread_mutex_unlock(&w->lock);
    job_free(j);
}

/* After the store: log a failed one (retrying it on a fresh connection
 * first when the connection was lost, or once more when the server had lost
 * the script), send the task's event (after the result is stored, as
 * Celery's on_success/on_failure), ack an acks_late job that the round trip
 * did not ack, and release the outcome and its job. store_rc: what
 * backend_store_finish returned, or STORE_NOT_WRITTEN. */
static void outcome_complete(slot *s, pending_outcome *po, int store_rc, char *err,
                             size_t errlen)
{
    worker *w = s->w;
    job *j = po->j;
    if (!j->settings.ignore_result) {
        if (store_rc == BACKEND_STORE_AGAIN && s->backend)
            store_rc = backend_store(s->backend, &po->r, w->cfg->result_expires, err, errlen);
        if (store_rc == STORE_NOT_WRITTEN || (store_rc < 0 && (!s->backend || s->backend->err)))
            store_rc = store_retrying(s, &po->r, err, errlen);
        if (store_rc < 0)
            log_error("Could not store %s for %s[%s]: %s", backend_status_name(po->r.status),
                      j->msg.task, j->msg.id, err);
    }
    if (po->r.status == BACKEND_SUCCESS)
        remote_task_succeeded(w->remote, j, buf_cstr(&po->line), po->runtime);
    else if (po->r.status == BACKEND_RETRY)
        remote_task_retried(w->remote, j, buf_cstr(&po->line), po->traceback);
    else
        remote_task_failed(w->remote, j, buf_cstr(&po->line), po->traceback);
    if (po->ack && s->broker) job_ack(s->broker, w, j);
    pj_free(po->children);
    free(po->traceback);
    buf_free(&po->line);
    task_outcome_free(&po->out);
    free(po);
    job_finished(s, j);
}

/* ---- Round trips -------------------------------------------------------------
 *
 * Redis spends most of its CPU per task on round trips, not on commands:
 * perf on redis-server under ptel.ping shows ~60% in the kernel (the reply
 * write, the wakeup of the reader, epoll_wait), and each round trip wakes
 * a slot thread too. So one round trip carries what the slot's last task
 * ends and what its next task begins, queued and read in this order:
 *
 *   1. the previous task's result (the store script: GET guard, SETEX, PUBLISH)
 *   2. its ack, when acks_late (after its result, PROTOCOL §4.2)
 *   3. the next task's STARTED, when tracked
 *   4. the next task's early ack (Celery acks when the pool accepts the job;
 *      the ack and the child's STARTED come from two processes, in either
 *      order, §4.2)
 *   5. a fetch refilling the prefetch room the next task freed (the same
 *      script and reservation as the consumer's fetch, consumer.c), so a
 *      busy worker needs no separate fetch round trip
 *
 * Redis runs them in that order, so every ordering the protocol promises
 * holds: a result before its late ack, STARTED before the task runs (the
 * replies are read before it starts) and before its SUCCESS. A result waits
 * for this only while the slot takes its next job from the ready queue
 * (no I/O); with no job ready it is written at once (outcome_write).
 *
 * Pipelining needs broker and backend on one live connection. Otherwise,
 * and for whatever a lost connection left unconfirmed, the same steps run
 * one by one. Nothing is ever left queued on a connection between calls. */

static backend_result started_result(const worker *w, const job *j)
{
    return (backend_result){.task_id = j->msg.id, .status = BACKEND_STARTED,
                            .pid = w->pid, .hostname = w->hostname,
                            .parent_id = j->msg.parent_id, .group_id = j->msg.group};
}

/* The next job's start, one step at a time (no pipelining possible). */
static void start_unpipelined(slot *s, job *j, int started, int ack)
{
    worker *w = s->w;
    if (ack && s->broker) job_ack(s->broker, w, j);
    if (started) {
        char err[256] = "no connection to the result backend";
        backend_result r = started_result(w, j);
        if (!s->backend || backend_store(s->backend, &r, w->cfg->result_expires, err,
                                         sizeof err) < 0)
            log_error("Could not store STARTED for %s[%s]: %s", j->msg.task, j->msg.id, err);
    }
}

/* round_trip's settling of the next job's early ack and STARTED. */
static void round_trip_started(slot *s, job *next, int next_ack, int nack_rc,
                               const char *nack_err, int lost, const backend_result *sr, int src,
                               char *serr, size_t serrlen)
{
    worker *w = s->w;
    if (next_ack) {
        if (nack_rc == 0 || !lost) job_ack_settled(next, nack_rc, nack_err);
        else if (s->broker) job_ack(s->broker, w, next);
    }
    if (sr) {
        if (src == BACKEND_STORE_AGAIN || src == STORE_NOT_WRITTEN) {
            src = s->backend ? backend_store(s->backend, sr, w->cfg->result_expires, serr,
                                             serrlen) : -1;
            if (!s->backend) snprintf(serr, serrlen, "no connection to the result backend");
        }
        if (src < 0)
            log_error("Could not store STARTED for %s[%s]: %s", next->msg.task, next->msg.id, serr);
    }
}

/* Write prev's outcome (may be NULL) and start next (may be NULL): STARTED
 * when `started`, early ack when `ack`; fetch up to `fetch` messages (the
 * room the caller reserved, consumer_reserve_fetch_locked; 0 = none).
 * Releases prev and the reservation. */
static void round_trip(slot *s, pending_outcome *prev, job *next, int started, int ack,
                       int fetch)
{
    worker *w = s->w;
    int prev_store = prev && !prev->j->settings.ignore_result;
    int prev_ack = prev && prev->ack && !prev->j->acked;
    int next_ack = next && ack && !next->acked;
    int next_started = next && started;
    char perr[256] = "", serr[256] = "", pack_err[256] = "", nack_err[256] = "";
    int prc = STORE_NOT_WRITTEN, src = STORE_NOT_WRITTEN, pack_rc = -1, nack_rc = -1;
    int piped = 0, lost = 0, fetch_queued = 0;
    char ferr[256] = "";
    transport_fetch_call fc;
    fetched_message *msgs = NULL;
    size_t n_msgs = 0;
    redisContext *ctx = s->broker;
    backend_result sr;
    if (next_started) sr = started_result(w, next);

    if (ctx && ctx == s->backend && !ctx->err
        && (prev_store || prev_ack || next_started || next_ack || fetch > 0)
        && backend_store_prepare(ctx, perr, sizeof perr) == 0
        && (fetch <= 0 || transport_fetch_prepare(ctx, ferr, sizeof ferr) == 0)) {
        /* Queue all, then read all: the first read sends the lot. With the
         * script loaded (prepare), queueing does no I/O and fails only on
         * out-of-memory, which hiredis reports in ctx->err. */
        int64_t ex = w->cfg->result_expires;
        if (prev_store) backend_store_append(ctx, &prev->r, ex, perr, sizeof perr);
        if (prev_ack)
            transport_ack_append(ctx, &w->topts, (const char *[]){prev->j->msg.delivery_tag}, 1);
        if (next_started) backend_store_append(ctx, &sr, ex, serr, sizeof serr);
        if (next_ack)
            transport_ack_append(ctx, &w->topts, (const char *[]){next->msg.delivery_tag}, 1);
        if (fetch > 0 && !ctx->err) {
            /* Queued last (transport.h). */
            pthread_mutex_lock(&w->queues_lock);
            fetch_queued = w->queues.n > 0 && transport_fetch_append(ctx, &w->topts, &w->queues,
                                                                     fetch, &fc, ferr,
                                                                     sizeof ferr) == 0;
            pthread_mutex_unlock(&w->queues_lock);
        }
        if (!ctx->err) {
            piped = 1;
            if (prev_store) prc = backend_store_finish(ctx, prev->r.task_id, perr, sizeof perr);
            if (prev_ack && !ctx->err)
                pack_rc = transport_ack_finish(ctx, 1, pack_err, sizeof pack_err);
            if (next_started && !ctx->err)
                src = backend_store_finish(ctx, next->msg.id, serr, sizeof serr);
            if (next_ack && !ctx->err)
                nack_rc = transport_ack_finish(ctx, 1, nack_err, sizeof nack_err);
        }
        if (fetch_queued) {
            /* A failed fetch hands its room back to the consumer, whose own
             * fetch meets the same error and reports it (at most once a
             * minute, e.g. a queue key holding a non-list). On a lost
             * connection, popped messages whose reply is lost are in
             * unacked (restore_visible). */
            transport_fetch_finish(ctx, &w->topts, &w->queues, &w->queues_lock, &fc, &msgs,
                                   &n_msgs, ferr, sizeof ferr);
        }
    }
    if (ctx && ctx->err) {
        /* Lost mid-way: whatever has no reply is redone, one step at a
         * time, on a fresh connection (all of it is idempotent). */
        lost = 1;
        if (prc == -1) prc = STORE_NOT_WRITTEN;
        if (src == -1) src = STORE_NOT_WRITTEN;
        slot_connect(s);
    }

    if (prev) {
        if (piped && prev_ack && pack_rc == 0) job_ack_settled(prev->j, 0, "");
        else if (piped && prev_ack && !lost) job_ack_settled(prev->j, pack_rc, pack_err);
        /* An unconfirmed store is written (and retried) in outcome_complete,
         * and an unconfirmed late ack follows the events there. */
        outcome_complete(s, prev, prc, perr, sizeof perr);
    }
    if (next && !piped) start_unpipelined(s, next, next_started, next_ack);
    if (next && piped) round_trip_started(s, next, next_ack, nack_rc, nack_err, lost,
                                          next_started ? &sr : NULL, src, serr, sizeof serr);
    /* The fetched messages go where the consumer's go; no fetch, no
     * messages: the reservation returns to the consumer. */
    if (fetch > 0) consumer_fetched(w, s->broker, fetch, msgs, n_msgs);
}

/* Write an outcome now, alone (no next job to carry it). */
static void outcome_write(slot *s, pending_outcome **po)
{
    if (!*po) return;
    round_trip(s, *po, NULL, 0, 0, 0);
    *po = NULL;
}

/* ---- Running one job ---------------------------------------------------- */

/* Rate limit (control `rate_limit` or task_annotations): wait for the task's
 * turn. *prev (the last task's outcome) is written first and the fetch
 * reservation *fetch released: a wait must hold back neither a result nor
 * the consumer. A shutdown during the wait hands the message back
 * unstarted and returns -1. */
static int wait_rate_limit(slot *s, job *j, pending_outcome **prev, int *fetch)
{
    worker *w = s->w;
    int64_t wait = remote_rate_limit_delay(w->remote, j->msg.task);
    if (wait <= 0) return 0;
    consumer_release_fetch(w, *fetch);
    *fetch = 0;
    outcome_write(s, prev);
    int64_t until = time_now_us() + wait;
    while (!atomic_load(&w->stopping)) {
        int64_t left = until - time_now_us();
        if (left <= 0) return 0;
        if (left > 100000) left = 100000;
        struct timespec ts = {0, (long)left * 1000};
        nanosleep(&ts, NULL);
    }
    char err[256];
    const char *tags[1] = {j->msg.delivery_tag};
    if (transport_restore(s->broker, &w->topts, tags, 1, err, sizeof err) < 0)
        log_error("Could not hand back rate-limited %s[%s]: %s; it comes back after the "
                  "visibility timeout", j->msg.task, j->msg.id, err);
    j->acked = 1;
    return -1;
}

/* Run j. prev, the slot's last outcome not yet written (or NULL), is
 * written in j's first round trip, or first thing when j does not start;
 * so is the fetch of the `fetch` messages of prefetch room reserved for it
 * (released unused when j does not start). Returns j's outcome for the next
 * round trip, or NULL when j was settled here (discarded, handed back,
 * terminated, abandoned). */
static pending_outcome *run_job(slot *s, job *j, pending_outcome *prev, int fetch)
{
    worker *w = s->w;
    if (slot_connect(s) != 0) {
        consumer_release_fetch(w, fetch);
        /* Without a broker connection nothing can be acked or stored: hand
         * the job back through the unacked bookkeeping (restore_visible). */
        outcome_write(s, &prev);
        log_error("Slot-%d has no Redis connection; %s[%s] stays unacked and will be "
                  "restored after the visibility timeout", s->index + 1, j->msg.task, j->msg.id);
        return NULL;
    }
    if (j->msg.expires_us && j->msg.expires_us <= time_now_us()) {
        consumer_release_fetch(w, fetch);
        outcome_write(s, &prev);
        log_info("Discarding expired task %s[%s]", j->msg.task, j->msg.id);
        job_store_revoked(s->broker == s->backend ? s->broker : s->backend, w, j, "expired");
        remote_task_revoked(w->remote, j, 0, 1);
        job_ack(s->broker, w, j);
        return NULL;
    }
    /* Revoked while reserved or ETA-held: checked again before execution
     * (PROTOCOL §12.1). */
    if (remote_is_revoked(w->remote, j->msg.id)) {
        consumer_release_fetch(w, fetch);
        outcome_write(s, &prev);
        log_info("Discarding revoked task: %s[%s]", j->msg.task, j->msg.id);
        job_store_revoked(s->backend, w, j, "revoked");
        remote_task_revoked(w->remote, j, 0, 0);
        job_ack(s->broker, w, j);
        return NULL;
    }
    if (wait_rate_limit(s, j, &prev, &fetch) != 0) return NULL;
    /* prev's result, j's STARTED and early ack, the refill: one round trip. */
    round_trip(s, prev, j, w->cfg->task_track_started && !j->settings.ignore_result,
               !j->settings.acks_late, fetch);

    task_context ctx = {
        .id = j->msg.id, .name = j->msg.task, .args = j->msg.args, .kwargs = j->msg.kwargs,
        .retries = j->msg.retries, .cancel = &s->cancel, .config = (const struct ptel_config *)w->cfg,
        .hostname = w->hostname, .slot = s->index, .slot_state = &s->task_state,
        .drain = &w->drain_opts,
    };
    pthread_mutex_lock(&w->lock);
    ctx.soft_deadline_us = s->soft_deadline_us;
    ctx.hard_deadline_us = s->hard_deadline_us;
    pthread_mutex_unlock(&w->lock);

    remote_task_started(w->remote, j);
    task_outcome out;
    memset(&out, 0, sizeof out);
    double t0 = time_monotonic();
    j->def->run(&ctx, &out);
    double runtime = time_monotonic() - t0;

    pthread_mutex_lock(&w->lock);
    int abandoned = s->abandoned;
    int64_t abandoned_us = s->abandoned_us;
    if (!abandoned) s->finishing = 1;
    pthread_mutex_unlock(&w->lock);
    pending_outcome *po = NULL;
    if (!abandoned && atomic_load(&s->cancel) == TASK_CANCEL_SHUTDOWN && j->settings.acks_late) {
        /* Cold shutdown stopped an acks_late task: its message was never
         * acked, so hand it back for another worker instead of failing it. */
        char err[256];
        const char *tags[1] = {j->msg.delivery_tag};
        if (transport_restore(s->broker, &w->topts, tags, 1, err, sizeof err) < 0)
            log_error("Could not hand back %s[%s]: %s; it comes back after the visibility "
                      "timeout", j->msg.task, j->msg.id, err);
        else
            log_warning("Task %s[%s] stopped by cold shutdown; message handed back to its queue",
                        j->msg.task, j->msg.id);
        j->acked = 1;
    } else if (!abandoned && atomic_load(&s->cancel) == TASK_CANCEL_REVOKED) {
        /* revoke --terminate: REVOKED ["terminated"], whatever the task
         * returned on its way out (PROTOCOL §12.1). */
        log_warning("Task %s[%s] terminated by remote control", j->msg.task, j->msg.id);
        job_store_revoked(s->backend, w, j, "terminated");
        remote_task_revoked(w->remote, j, 1, 0);
        job_ack(s->broker, w, j);
    } else if (!abandoned) {
        po = outcome_prepare(s, j, &out, runtime, j->settings.acks_late);
    } else {
        log_warning("Task %s[%s] returned %.1fs after its hard time limit; its outcome is "
                    "discarded (FAILURE TimeLimitExceeded was already stored)",
                    j->msg.task, j->msg.id, (double)(time_now_us() - abandoned_us) / USEC_PER_SEC);
    }
    task_outcome_free(&out);
    return po;
}

/* ---- Slot thread ------------------------------------------------------------ */

static job *take_job_locked(worker *w)
{
    job *j = w->ready_head;
    w->ready_head = j->next;
    if (!w->ready_head) w->ready_tail = NULL;
    w->n_ready--;
    return j;
}

/* The loop: take a job, run it, and keep its outcome for the round trip
 * that starts the next job (see "Round trips"). When no job is ready, or
 * the slot stops, the outcome is written before the slot waits or leaves,
 * so a result never waits on an idle queue. */
static void *slot_main(void *arg)
{
    slot *s = arg;
    worker *w = s->w;
    char name[32];
    snprintf(name, sizeof name, "Slot-%d", s->index + 1);
    log_set_thread_name(name);
    slot_connect(s);
    pending_outcome *prev = NULL;   /* the current job's outcome, unwritten */

    pthread_mutex_lock(&w->lock);
    for (;;) {
        if (prev && (!w->ready_head || atomic_load(&w->stopping) || s->retire)) {
            pthread_mutex_unlock(&w->lock);
            outcome_write(s, &prev);   /* the slot goes idle (job_finished) */
            pthread_mutex_lock(&w->lock);
            continue;
        }
        while (!w->ready_head && !atomic_load(&w->stopping) && !s->retire)
            pthread_cond_wait(&w->work_ready, &w->lock);
        /* Warm shutdown starts nothing new: reserved jobs are handed back. */
        if (atomic_load(&w->stopping) || s->retire) break;
        job *j = take_job_locked(w);
        int64_t now = time_now_us();
        s->current = j;
        s->status = SLOT_RUNNING;
        s->started_us = now;
        s->soft_deadline_us = j->settings.soft_time_limit > 0
            ? now + (int64_t)(j->settings.soft_time_limit * USEC_PER_SEC) : 0;
        s->hard_deadline_us = j->settings.time_limit > 0
            ? now + (int64_t)(j->settings.time_limit * USEC_PER_SEC) : 0;
        s->soft_fired = 0;
        s->finishing = 0;
        s->abandoned = 0;
        atomic_store(&s->cancel, TASK_RUN);
        if (j->settings.acks_late) w->n_late_active++;
        /* The room this take freed is refilled by j's round trip: reserved
         * now, under the lock, so the consumer does not race for it. */
        int fetch = consumer_reserve_fetch_locked(w);
        pthread_mutex_unlock(&w->lock);

        prev = run_job(s, j, prev, fetch);

        pthread_mutex_lock(&w->lock);
        if (s->zombie) {
            /* Replaced while stuck: the pool no longer counts this slot
             * (an abandoned job has no outcome to write). */
            pthread_mutex_unlock(&w->lock);
            job_free(j);
            slot_free(s);
            return NULL;
        }
        if (prev) continue;   /* j stays current, finishing, until its outcome is written */
        s->current = NULL;
        s->status = SLOT_IDLE;
        w->stats.processed++;
        if (j->settings.acks_late) {
            w->n_late_active--;
            consumer_room_signal_locked(w);
        }
        job_free(j);
    }
    s->exited = 1;   /* reaped by the main thread when retired (pool_resize) */
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- Pool -------------------------------------------------------------------- */

int pool_start(worker *w, char *err, size_t errlen)
{
    w->pid = getpid();
    w->slots = xcalloc((size_t)w->n_slots, sizeof *w->slots);
    for (int i = 0; i < w->n_slots; i++) {
        w->slots[i] = slot_new(w, i);
        if (pthread_create(&w->slots[i]->thread, NULL, slot_main, w->slots[i]) != 0) {
            snprintf(err, errlen, "cannot start pool thread %d", i + 1);
            return -1;
        }
    }
    return 0;
}

/* Settle a job whose hard limit passed (lock held; uses the main thread's
 * connections, reconnecting when needed). */
static void settle_hard_limit_locked(worker *w, slot *s, int64_t now_us)
{
    job *j = s->current;
    atomic_store(&s->cancel, TASK_CANCEL_HARD_LIMIT);
    s->abandoned = 1;
    s->abandoned_us = now_us;
    double limit = j->settings.time_limit;
    log_error("Hard time limit (%gs) exceeded for %s[%s]", limit, j->msg.task, j->msg.id);
    task_metric(j->msg.task, "ptel_tasks_total", "FAILURE", 1);
    if (!j->settings.ignore_result && j->msg.id) {
        pj_value *args = pj_new_array();
        if (limit == (double)(long long)limit) pj_array_append(args, pj_new_int((long long)limit));
        else pj_array_append(args, pj_new_float(limit));
        backend_result r = {.task_id = j->msg.id, .status = BACKEND_FAILURE,
                            .exc_type = "TimeLimitExceeded", .exc_module = "billiard.exceptions",
                            .exc_args = args, .parent_id = j->msg.parent_id,
                            .group_id = j->msg.group, .date_done_us = now_us};
        char err[256];
        if (w->main_backend && backend_store(w->main_backend, &r, w->cfg->result_expires, err,
                                             sizeof err) < 0)
            log_error("Could not store TimeLimitExceeded for %s: %s", j->msg.id, err);
        pj_free(args);
    }
    buf exc = BUF_INIT;
    buf_puts(&exc, "TimeLimitExceeded(");
    if (limit == (double)(long long)limit) buf_printf(&exc, "%lld", (long long)limit);
    else pj_float_repr(&exc, limit);
    buf_putc(&exc, ')');
    remote_task_failed(w->remote, j, buf_cstr(&exc), "Traceback (most recent call last):\n"
                       "billiard.exceptions.TimeLimitExceeded: hard time limit\n");
    buf_free(&exc);
    /* acks_late and early-ack alike end acked on a timeout
     * (task_acks_on_failure_or_timeout, PROTOCOL §4.2). */
    if (w->main_broker) job_ack(w->main_broker, w, j);
}

/* Join and free slots retired by pool_shrink once their thread is gone
 * (lock held; they never take the lock after setting `exited`). */
static void reap_retired_locked(worker *w)
{
    int kept = 0;
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = w->slots[i];
        if (s->retire && s->exited) {
            pthread_join(s->thread, NULL);
            slot_free(s);
            continue;
        }
        w->slots[kept++] = s;
    }
    w->n_slots = kept;
}

void pool_resize(worker *w, int target)
{
    if (target < 1) target = 1;
    if (target > CONFIG_MAX_CONCURRENCY) target = CONFIG_MAX_CONCURRENCY;
    pthread_mutex_lock(&w->lock);
    reap_retired_locked(w);
    int live = 0, next_index = 0;
    for (int i = 0; i < w->n_slots; i++) {
        if (!w->slots[i]->retire) live++;
        if (w->slots[i]->index >= next_index) next_index = w->slots[i]->index + 1;
    }
    int from = live;
    if (target > live) {
        w->slots = xrealloc(w->slots, (size_t)(w->n_slots + target - live) * sizeof *w->slots);
        for (; live < target; live++) {
            slot *s = slot_new(w, next_index++);
            if (pthread_create(&s->thread, NULL, slot_main, s) != 0) {
                log_error("pool_grow: cannot start another slot thread");
                slot_free(s);
                break;
            }
            w->slots[w->n_slots++] = s;
        }
    } else {
        for (int i = w->n_slots - 1; i >= 0 && live > target; i--) {
            if (w->slots[i]->retire) continue;
            w->slots[i]->retire = 1;
            live--;
        }
        pthread_cond_broadcast(&w->work_ready);
    }
    pthread_cond_broadcast(&w->room);   /* the prefetch limit follows the pool size */
    pthread_mutex_unlock(&w->lock);
    log_info("Pool resized by remote control: %d -> %d slot(s)", from, live);
}

void pool_check_limits(worker *w, int64_t now_us)
{
    pthread_mutex_lock(&w->lock);
    reap_retired_locked(w);
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = w->slots[i];
        if (s->status != SLOT_RUNNING || s->finishing) continue;
        if (s->abandoned) {
            if (now_us - s->abandoned_us < WORKER_ABANDON_GRACE_US) continue;
            log_warning("Slot-%d ignored its hard time limit for %.1fs; replacing it "
                        "(the stuck thread is left to finish on its own)", s->index + 1,
                        (double)(now_us - s->abandoned_us) / USEC_PER_SEC);
            s->zombie = 1;
            if (s->current->settings.acks_late) w->n_late_active--;
            pthread_detach(s->thread);
            slot *fresh = slot_new(w, s->index);
            w->slots[i] = fresh;
            if (pthread_create(&fresh->thread, NULL, slot_main, fresh) != 0)
                log_critical("Cannot start a replacement for Slot-%d", s->index + 1);
            continue;
        }
        if (s->hard_deadline_us && now_us >= s->hard_deadline_us) {
            settle_hard_limit_locked(w, s, now_us);
        } else if (s->soft_deadline_us && !s->soft_fired && now_us >= s->soft_deadline_us) {
            s->soft_fired = 1;
            atomic_store(&s->cancel, TASK_CANCEL_SOFT_LIMIT);
            log_warning("Soft time limit (%gs) exceeded for %s[%s]",
                        s->current->settings.soft_time_limit, s->current->msg.task,
                        s->current->msg.id);
        }
    }
    pthread_mutex_unlock(&w->lock);
}

int pool_active(worker *w)
{
    int n = 0;
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n_slots; i++)
        if (w->slots[i]->status == SLOT_RUNNING && !w->slots[i]->abandoned) n++;
    pthread_mutex_unlock(&w->lock);
    return n;
}

void pool_cancel_all(worker *w, int reason)
{
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n_slots; i++)
        if (w->slots[i]->status == SLOT_RUNNING) atomic_store(&w->slots[i]->cancel, reason);
    pthread_mutex_unlock(&w->lock);
}

void pool_log_slots(worker *w)
{
    pthread_mutex_lock(&w->lock);
    int64_t now = time_now_us();
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = w->slots[i];
        if (s->status == SLOT_RUNNING)
            log_info("Slot-%d: running %s[%s] for %.1fs%s", i + 1, s->current->msg.task,
                     s->current->msg.id, (double)(now - s->started_us) / USEC_PER_SEC,
                     s->abandoned ? " (abandoned after its hard time limit)" : "");
        else
            log_info("Slot-%d: idle", i + 1);
    }
    log_info("Reserved: %zu, ETA-held: %zu", w->n_ready, w->n_eta);
    pthread_mutex_unlock(&w->lock);
}

/* Wake every slot so it sees `stopping`, then wait for the threads. Slots
 * still running an abandoned task are detached instead of joined. */
void pool_join(worker *w)
{
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->work_ready);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = w->slots[i];
        pthread_mutex_lock(&w->lock);
        int stuck = s->abandoned && s->status == SLOT_RUNNING;
        if (stuck) s->zombie = 1;
        pthread_mutex_unlock(&w->lock);
        if (stuck) {
            pthread_detach(s->thread);
            w->slots[i] = NULL;
        } else {
            pthread_join(s->thread, NULL);
        }
    }
}

void pool_free(worker *w)
{
    /* w->slots is NULL when start-up stopped before pool_start (e.g. SIGTERM
     * while the broker was still unreachable), though n_slots is set. */
    for (int i = 0; w->slots && i < w->n_slots; i++)
        if (w->slots[i]) slot_free(w->slots[i]);
    free(w->slots);
    w->slots = NULL;
}
