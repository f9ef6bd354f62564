/* worker/pool.c: the slots that run tasks, and the time limits on them.
 *
 * A slot is a thread with its own broker/backend connections. It takes the
 * oldest reserved job, acks it early unless acks_late (Celery acks when the
 * pool accepts the job, PROTOCOL §4.2), stores STARTED when tracked, runs the
 * task, stores the outcome, and acks late jobs after their result. When
 * broker and backend are one connection, the ack rides in the same round
 * trip as the STARTED store (early ack) or the outcome store (acks_late).
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

/* ---- Pipelined store + ack ---------------------------------------------------- */

/* A store and an ack can share one round trip when broker and backend are
 * the same live connection. */
static int can_pipeline(const slot *s, const job *j)
{
    return s->broker && s->broker == s->backend && !s->broker->err && !j->acked;
}

/* Store r, then ack j, in one round trip (PROTOCOL §4.2, §11.1): both are
 * queued, then both replies read. The store is queued first, so an
 * acks_late ack still lands after its result. Returns what backend_store
 * returns; the ack's status goes to *ack_rc (reason in ack_err), for
 * job_ack_settled. */
static int store_then_ack(slot *s, job *j, const backend_result *r, char *err, size_t errlen,
                          int *ack_rc, char *ack_err, size_t ack_errlen)
{
    worker *w = s->w;
    redisContext *ctx = s->broker;
    const char *tags[1] = {j->msg.delivery_tag};
    if (backend_store_append(ctx, r, w->cfg->result_expires, err, errlen) < 0) {
        *ack_rc = transport_ack(ctx, &w->topts, tags, 1, ack_err, ack_errlen);
        return -1;
    }
    transport_ack_append(ctx, &w->topts, tags, 1);
    int rc = backend_store_finish(ctx, r->task_id, err, errlen);
    *ack_rc = transport_ack_finish(ctx, 1, ack_err, ack_errlen);
    /* The server lost the script (restart, SCRIPT FLUSH) and wrote nothing:
     * store now. Only then does the ack land first, by microseconds. */
    if (rc == BACKEND_STORE_AGAIN) rc = backend_store(ctx, r, w->cfg->result_expires, err, errlen);
    return rc;
}

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

/* Store the outcome, emit its event, and ack j when `ack` (acks_late:
 * after the result is stored, PROTOCOL §4.2). */
static void store_outcome(slot *s, job *j, task_outcome *out, double runtime, int ack)
{
    worker *w = s->w;
    char err[256];
    backend_result r = {.task_id = j->msg.id, .parent_id = j->msg.parent_id,
                        .group_id = j->msg.group, .date_done_us = time_now_us()};
    buf line = BUF_INIT;
    char *traceback = NULL;
    pj_value *children = NULL;

    switch (out->status) {
    case TASK_SUCCESS:
        r.status = BACKEND_SUCCESS;
        r.result = out->result;
        pj_repr(&line, out->result);
        log_info("Task %s[%s] succeeded in %.6fs: %s", j->msg.task, j->msg.id, runtime,
                 buf_cstr(&line));
        break;
    case TASK_FAILURE:
        r.status = BACKEND_FAILURE;
        traceback = make_traceback(j, out);
        exception_repr(&line, out);
        log_error("Task %s[%s] raised unexpected: %s", j->msg.task, j->msg.id, buf_cstr(&line));
        break;
    case TASK_RETRY: {
        r.status = BACKEND_RETRY;
        traceback = make_traceback(j, out);
        /* Republish first (same id, retries + 1, eta), as Celery's
         * Task.retry does (PROTOCOL §12.3), then store RETRY. */
        buf msg = BUF_INIT;
        int64_t eta = time_now_us() + (int64_t)(out->retry_countdown * USEC_PER_SEC);
        buf origin = BUF_INIT;
        buf_printf(&origin, "gen%d@%s", (int)getpid(),
                   strchr(w->hostname, '@') ? strchr(w->hostname, '@') + 1 : w->hostname);
        const char *queue = j->msg.routing_key ? j->msg.routing_key : w->cfg->task_default_queue;
        if (message_build_retry(&j->msg, eta, buf_cstr(&origin), &msg) != 0 ||
            publish_retrying(s, queue, j->msg.priority, msg.data, msg.len, err, sizeof err) != 0) {
            log_error("Task %s[%s] asked to retry but the retry could not be published (%s); "
                      "storing FAILURE", j->msg.task, j->msg.id, err);
            r.status = BACKEND_FAILURE;
        } else {
            exception_repr(&line, out);
            log_info("Task %s[%s] retry: %s", j->msg.task, j->msg.id, buf_cstr(&line));
            children = pj_new_array();
            pj_value *tuple = pj_new_array(), *pair = pj_new_array();
            pj_array_append(pair, pj_new_string(j->msg.id));
            pj_array_append(pair, pj_new_null());
            pj_array_append(tuple, pair);
            pj_array_append(tuple, pj_new_null());
            pj_array_append(children, tuple);
            r.children = children;
            r.date_done_us = 0;
        }
        buf_free(&msg);
        buf_free(&origin);
        break;
    }
    }
    if (out->status != TASK_SUCCESS) {
        r.exc_type = out->exc_type;
        r.exc_module = out->exc_module;
        r.exc_args = out->exc_args;
        r.traceback = traceback;
    }
    task_metric(j->msg.task, "ptel_tasks_total", backend_status_name(r.status), 1);
    task_metric(j->msg.task, "ptel_task_runtime_seconds", NULL, runtime);
    int ack_sent = 0;
    if (!j->settings.ignore_result) {
        int rc;
        if (ack && can_pipeline(s, j)) {
            char ack_err[256];
            int ack_rc;
            rc = store_then_ack(s, j, &r, err, sizeof err, &ack_rc, ack_err, sizeof ack_err);
            if (rc < 0 && s->broker->err) {
                /* Lost connection: retry the store on a fresh one; the ack
                 * follows the events, as without pipelining. */
                rc = store_retrying(s, &r, err, sizeof err);
            } else {
                job_ack_settled(j, ack_rc, ack_err);
                ack_sent = 1;
            }
        } else {
            rc = store_retrying(s, &r, err, sizeof err);
        }
        if (rc < 0)
            log_error("Could not store %s for %s[%s]: %s", backend_status_name(r.status),
                      j->msg.task, j->msg.id, err);
    }
    /* Events after the result is stored, as Celery's on_success/on_failure. */
    if (r.status != BACKEND_SUCCESS && !line.len) exception_repr(&line, out);
    if (r.status == BACKEND_SUCCESS)
        remote_task_succeeded(w->remote, j, buf_cstr(&line), runtime);
    else if (r.status == BACKEND_RETRY)
        remote_task_retried(w->remote, j, buf_cstr(&line), traceback);
    else
        remote_task_failed(w->remote, j, buf_cstr(&line), traceback);
    if (ack && !ack_sent) job_ack(s->broker, w, j);
    pj_free(children);
    free(traceback);
    buf_free(&line);
}

/* ---- Running one job ---------------------------------------------------- */

/* Rate limit (control `rate_limit` or task_annotations): wait for the task's
 * turn. A shutdown during the wait hands the message back unstarted and
 * returns -1. */
static int wait_rate_limit(slot *s, job *j)
{
    worker *w = s->w;
    int64_t wait = remote_rate_limit_delay(w->remote, j->msg.task);
    if (wait <= 0) return 0;
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

static void run_job(slot *s, job *j)
{
    worker *w = s->w;
    if (slot_connect(s) != 0) {
        /* Without a broker connection nothing can be acked or stored: hand
         * the job back through the unacked bookkeeping (restore_visible). */
        log_error("Slot-%d has no Redis connection; %s[%s] stays unacked and will be "
                  "restored after the visibility timeout", s->index + 1, j->msg.task, j->msg.id);
        return;
    }
    if (j->msg.expires_us && j->msg.expires_us <= time_now_us()) {
        log_info("Discarding expired task %s[%s]", j->msg.task, j->msg.id);
        job_store_revoked(s->broker == s->backend ? s->broker : s->backend, w, j, "expired");
        remote_task_revoked(w->remote, j, 0, 1);
        job_ack(s->broker, w, j);
        return;
    }
    /* Revoked while reserved or ETA-held: checked again before execution
     * (PROTOCOL §12.1). */
    if (remote_is_revoked(w->remote, j->msg.id)) {
        log_info("Discarding revoked task: %s[%s]", j->msg.task, j->msg.id);
        job_store_revoked(s->backend, w, j, "revoked");
        remote_task_revoked(w->remote, j, 0, 0);
        job_ack(s->broker, w, j);
        return;
    }
    if (wait_rate_limit(s, j) != 0) return;
    int ack_early = !j->settings.acks_late;
    if (w->cfg->task_track_started && !j->settings.ignore_result) {
        backend_result r = {.task_id = j->msg.id, .status = BACKEND_STARTED,
                            .pid = getpid(), .hostname = w->hostname,
                            .parent_id = j->msg.parent_id, .group_id = j->msg.group};
        char err[256];
        int rc;
        if (ack_early && can_pipeline(s, j)) {
            /* Early ack and STARTED in one round trip. Celery sends them
             * from two processes, in either order (PROTOCOL §4.2). */
            char ack_err[256];
            int ack_rc;
            rc = store_then_ack(s, j, &r, err, sizeof err, &ack_rc, ack_err, sizeof ack_err);
            job_ack_settled(j, ack_rc, ack_err);
        } else {
            if (ack_early) job_ack(s->broker, w, j);
            rc = backend_store(s->backend, &r, w->cfg->result_expires, err, sizeof err);
        }
        if (rc < 0)
            log_error("Could not store STARTED for %s[%s]: %s", j->msg.task, j->msg.id, err);
    } else if (ack_early) {
        job_ack(s->broker, w, j);
    }

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
        store_outcome(s, j, &out, runtime, j->settings.acks_late);
    } else {
        log_warning("Task %s[%s] returned %.1fs after its hard time limit; its outcome is "
                    "discarded (FAILURE TimeLimitExceeded was already stored)",
                    j->msg.task, j->msg.id, (double)(time_now_us() - abandoned_us) / USEC_PER_SEC);
    }
    task_outcome_free(&out);
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

static void *slot_main(void *arg)
{
    slot *s = arg;
    worker *w = s->w;
    char name[32];
    snprintf(name, sizeof name, "Slot-%d", s->index + 1);
    log_set_thread_name(name);
    slot_connect(s);

    pthread_mutex_lock(&w->lock);
    for (;;) {
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
        pthread_cond_signal(&w->room);
        pthread_mutex_unlock(&w->lock);

        run_job(s, j);

        pthread_mutex_lock(&w->lock);
        if (s->zombie) {
            /* Replaced while stuck: the pool no longer counts this slot. */
            pthread_mutex_unlock(&w->lock);
            job_free(j);
            slot_free(s);
            return NULL;
        }
        if (j->settings.acks_late) w->n_late_active--;
        w->stats.processed++;
        s->current = NULL;
        s->status = SLOT_IDLE;
        pthread_cond_signal(&w->room);
        job_free(j);
    }
    s->exited = 1;   /* reaped by the main thread when retired (pool_resize) */
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- Pool -------------------------------------------------------------------- */

int pool_start(worker *w, char *err, size_t errlen)
{
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
