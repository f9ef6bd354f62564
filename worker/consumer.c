/* worker/consumer.c: the consumer thread: fetch, classify, dispatch.
 *
 * Fetching follows kombu's QoS (PROTOCOL §4.6): at most
 * concurrency x prefetch_multiplier messages are held unacked (reserved,
 * plus acks_late tasks running); ETA-held messages do not count, as each one
 * raises kombu's limit by one. transport_fetch never blocks, so an idle
 * consumer polls with a doubling backoff capped at TRANSPORT_BACKOFF_MAX_US.
 *
 * Fetches happen here and, to save a round trip per task, inside a busy
 * slot's round trip (pool.c). Either kind reserves its prefetch room under
 * w->lock before sending (consumer_reserve_fetch_locked, counted in
 * n_fetching), so together they never exceed the limit, and every fetched
 * message goes through the same dispatch (consumer_fetched).
 *
 * Every fetched message ends in exactly one place: the ready queue, the ETA
 * list, back on the broker (unknown task, requeue policy), or settled here
 * (acked after logging, with FAILURE/REVOKED stored where Celery stores it). */
#include "worker/remote.h"
#include "worker/state.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/backend.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Shown messages are cut to this many bytes in logs. */
#define LOG_PAYLOAD_MAX 512
/* A queue holding unknown tasks and no worker for them would log a line per
 * hand-back; after the first, say it at most this often, with a count. */
#define UNKNOWN_LOG_EVERY_US (60 * USEC_PER_SEC)

/* Consumer-thread-only state. */
typedef struct consumer_state {
    int64_t fetch_error_log_next_us;
} consumer_state;

/* The unknown-task log limiter, shared by every thread that dispatches
 * (the consumer and the slots): owned by this file, guarded by unknown_lock. */
static pthread_mutex_t unknown_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t unknown_log_next_us;
static long long unknown_suppressed;

size_t worker_prefetch_limit(const worker *w)
{
    long long m = w->cfg->worker_prefetch_multiplier;
    long long limit = m <= 0 ? TRANSPORT_MAX_FETCH : m * (long long)w->n_slots;
    if (limit > TRANSPORT_MAX_FETCH) limit = TRANSPORT_MAX_FETCH;
    return (size_t)limit;
}

/* Messages held unacked that count against prefetch, and room reserved by
 * fetches in flight (lock held). */
static size_t held_locked(const worker *w)
{
    return w->n_ready + w->n_late_active + w->n_fetching;
}

int consumer_reserve_fetch_locked(worker *w)
{
    size_t limit = worker_prefetch_limit(w), held = held_locked(w);
    if (atomic_load(&w->stopping) || held >= limit) return 0;
    w->n_fetching += limit - held;
    return (int)(limit - held);
}

void consumer_room_signal_locked(worker *w)
{
    if (held_locked(w) < worker_prefetch_limit(w)) pthread_cond_signal(&w->room);
}

void consumer_release_fetch(worker *w, int reserved)
{
    if (reserved <= 0) return;
    pthread_mutex_lock(&w->lock);
    w->n_fetching -= (size_t)reserved;
    consumer_room_signal_locked(w);
    pthread_mutex_unlock(&w->lock);
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / USEC_PER_SEC), (long)(us % USEC_PER_SEC) * 1000};
    nanosleep(&ts, NULL);
}

/* Count under the task's name, escaped: names come from the wire. */
void task_metric(const char *task, const char *metric, const char *state, double v)
{
    buf labels = BUF_INIT;
    buf_puts(&labels, "task=\"");
    metrics_label_escape(&labels, task ? task : "");
    buf_putc(&labels, '"');
    if (state) buf_printf(&labels, ",state=\"%s\"", state);
    if (strcmp(metric, "ptel_task_runtime_seconds") == 0)
        metrics_observe(metric, buf_cstr(&labels), v);
    else
        metrics_add(metric, buf_cstr(&labels), v);
    buf_free(&labels);
}

/* ---- Dispatch -------------------------------------------------------------- */

static void queue_ready_locked(worker *w, job *j)
{
    j->next = NULL;
    if (w->ready_tail) w->ready_tail->next = j;
    else w->ready_head = j;
    w->ready_tail = j;
    w->n_ready++;
    pthread_cond_signal(&w->work_ready);
}

static void hold_eta_locked(worker *w, job *j)
{
    if (w->n_eta == w->cap_eta) {
        w->cap_eta = w->cap_eta ? w->cap_eta * 2 : 16;
        w->eta = xrealloc(w->eta, w->cap_eta * sizeof *w->eta);
    }
    size_t i = w->n_eta;
    while (i > 0 && w->eta[i - 1]->msg.eta_us > j->msg.eta_us) {
        w->eta[i] = w->eta[i - 1];
        i--;
    }
    w->eta[i] = j;
    w->n_eta++;
}

/* An undecodable or refused message: log, store FAILURE when the id is
 * known, ack (Celery rejects without requeue, which kombu does as an ack). */
static void settle_bad_message(worker *w, redisContext *ctx, const fetched_message *m,
                               const message_error *err)
{
    log_error("Rejecting message from queue '%s' (tag %s): %s [%s]%s%s", m->queue, m->tag,
              err->msg, err->exc_type, err->task_id ? "; task id " : "",
              err->task_id ? err->task_id : "");
    if (err->task_id)
        job_store_failure(ctx, w, err->task_id, err->exc_type, err->exc_module, err->msg, NULL);
    char aerr[256];
    const char *tags[1] = {m->tag};
    if (transport_ack(ctx, &w->topts, tags, 1, aerr, sizeof aerr) != 0)
        log_error("Could not ack rejected message %s: %s", m->tag, aerr);
}

/* Returns 1 when the message was an unknown task handed back to the queue. */
static int dispatch(worker *w, redisContext *ctx, fetched_message *m)
{
    if (!m->tag) {
        int n = m->payload_len < LOG_PAYLOAD_MAX ? (int)m->payload_len : LOG_PAYLOAD_MAX;
        log_error("Discarding undecodable message from queue '%s' (not JSON or no "
                  "delivery_tag; it was never registered in unacked): %.*s", m->queue, n,
                  m->payload);
        return 0;
    }

    job *j = xcalloc(1, sizeof *j);
    message_limits limits = {.max_bytes = (size_t)w->cfg->worker_max_message_bytes};
    message_error err;
    memset(&err, 0, sizeof err);
    /* message_decode copies the payload it keeps. */
    if (message_decode(m->payload, m->payload_len, &limits, &j->msg, &err) != 0) {
        settle_bad_message(w, ctx, m, &err);
        message_error_free(&err);
        free(j);
        return 0;
    }
    j->received_us = time_now_us();
    j->def = task_find(j->msg.task);
    config_task_settings(w->cfg, j->msg.task, &j->settings);
    if (j->msg.ignore_result) j->settings.ignore_result = 1;
    /* control `time_limit` overrides the config; the message's own
     * timelimit header still wins, as in Celery. */
    remote_time_limits(w->remote, j->msg.task, &j->settings.soft_time_limit,
                       &j->settings.time_limit);
    if (j->msg.time_limit_hard > 0) j->settings.time_limit = j->msg.time_limit_hard;
    if (j->msg.time_limit_soft > 0) j->settings.soft_time_limit = j->msg.time_limit_soft;

    if (!j->def) {
        if (w->cfg->worker_unknown_task == UNKNOWN_TASK_REQUEUE) {
            char rerr[256];
            int64_t now = time_now_us();
            pthread_mutex_lock(&unknown_lock);
            if (now >= unknown_log_next_us) {
                log_warning("Received task of unregistered type '%s' [%s]: handed back to queue "
                            "'%s' for a worker that knows it (worker_unknown_task='requeue'; "
                            "%lld more hand-backs since the last such line)", j->msg.task,
                            j->msg.id, m->queue, unknown_suppressed);
                unknown_log_next_us = now + UNKNOWN_LOG_EVERY_US;
                unknown_suppressed = 0;
            } else {
                unknown_suppressed++;
            }
            pthread_mutex_unlock(&unknown_lock);
            if (transport_requeue(ctx, &w->topts, m->tag, rerr, sizeof rerr) != 0)
                log_error("Could not hand back %s[%s]: %s; it stays in unacked and will be "
                          "restored after the visibility timeout", j->msg.task, j->msg.id, rerr);
            else
                remote_task_rejected(w->remote, j, 1);   /* a reject with requeue */
            job_free(j);
            return 1;
        }
        /* Celery's behaviour (PROTOCOL §12.5). */
        log_error("Received unregistered task of type '%s'.\nThe message has been ignored and "
                  "discarded.\nThe full contents of the message body was: %s [id %s]",
                  j->msg.task, j->msg.argsrepr ? j->msg.argsrepr : "", j->msg.id);
        job_store_failure(ctx, w, j->msg.id, "NotRegistered", "celery.exceptions",
                          j->msg.task, NULL);
        buf exc = BUF_INIT;
        pj_value *name = pj_new_string(j->msg.task);
        buf_puts(&exc, "NotRegistered(");
        pj_repr(&exc, name);
        buf_putc(&exc, ')');
        remote_task_failed(w->remote, j, buf_cstr(&exc), NULL);
        pj_free(name);
        buf_free(&exc);
        job_ack(ctx, w, j);
        job_free(j);
        return 0;
    }

    /* Revoked before it arrived: discarded with no task-received
     * (PROTOCOL §12.1). */
    if (remote_is_revoked(w->remote, j->msg.id)) {
        log_info("Discarding revoked task: %s[%s]", j->msg.task, j->msg.id);
        job_store_revoked(ctx, w, j, "revoked");
        remote_task_revoked(w->remote, j, 0, 0);
        job_ack(ctx, w, j);
        job_free(j);
        return 0;
    }

    int64_t now = time_now_us();
    if (j->msg.expires_us && j->msg.expires_us <= now) {
        log_info("Discarding expired task %s[%s] (expired at %s)", j->msg.task, j->msg.id,
                 j->msg.expires_text ? j->msg.expires_text : "?");
        job_store_revoked(ctx, w, j, "expired");
        remote_task_revoked(w->remote, j, 0, 1);
        job_ack(ctx, w, j);
        job_free(j);
        return 0;
    }

    log_info("Task %s[%s] received", j->msg.task, j->msg.id);
    remote_task_received(w->remote, j);
    task_metric(j->msg.task, "ptel_tasks_received_total", NULL, 1);
    pthread_mutex_lock(&w->lock);
    w->stats.received++;
    if (j->msg.eta_us > now) {
        if ((long long)w->n_eta >= w->cfg->worker_max_eta_messages) {
            pthread_mutex_unlock(&w->lock);
            char rerr[256];
            log_warning("ETA cap reached (%lld held, worker_max_eta_messages): handing %s[%s] "
                        "back to queue '%s'", w->cfg->worker_max_eta_messages, j->msg.task,
                        j->msg.id, m->queue);
            if (transport_requeue(ctx, &w->topts, m->tag, rerr, sizeof rerr) != 0)
                log_error("Could not hand back %s[%s]: %s", j->msg.task, j->msg.id, rerr);
            job_free(j);
            return 1;
        }
        hold_eta_locked(w, j);
    } else {
        queue_ready_locked(w, j);
    }
    pthread_mutex_unlock(&w->lock);
    return 0;
}

int consumer_fetched(worker *w, redisContext *ctx, int reserved, fetched_message *msgs, size_t n)
{
    /* Test hook: a kill -9 right after the pop must lose nothing. */
    const char *crash_hook = getenv("PTEL_TEST_CRASH_AFTER_POP");
    if (n && crash_hook && strcmp(crash_hook, "1") == 0) {
        log_warning("PTEL_TEST_CRASH_AFTER_POP: exiting right after the pop (test hook)");
        _exit(137);
    }
    int unknown = 0;
    for (size_t i = 0; i < n; i++) unknown += dispatch(w, ctx, &msgs[i]);
    transport_messages_free(msgs, n);
    consumer_release_fetch(w, reserved);
    return unknown;
}

/* Move ETA jobs that are due to the ready queue (called by the main loop). */
void consumer_release_due(worker *w, int64_t now_us)
{
    pthread_mutex_lock(&w->lock);
    size_t due = 0;
    while (due < w->n_eta && w->eta[due]->msg.eta_us <= now_us) {
        queue_ready_locked(w, w->eta[due]);
        due++;
    }
    if (due) {
        memmove(w->eta, w->eta + due, (w->n_eta - due) * sizeof *w->eta);
        w->n_eta -= due;
    }
    pthread_mutex_unlock(&w->lock);
}

/* ---- The loop ------------------------------------------------------------- */

/* The broker answered a fetch: the end of an outage, if one was logged. */
static void broker_answers(worker *w, int *outage_logged)
{
    if (*outage_logged) {
        log_info("Broker connection restored; consuming again");
        metrics_add("ptel_redis_reconnects_total", "role=\"broker\"", 1);
        *outage_logged = 0;
    }
    atomic_store(&w->broker_ok, 1);
}

void *consumer_main(void *arg)
{
    worker *w = arg;
    log_set_thread_name("Consumer");
    redisContext *ctx = NULL;
    transport_backoff idle;
    transport_backoff_reset(&idle);
    int64_t reconnect_wait = 100 * 1000;
    int outage_logged = 0;
    int64_t unknown_wait = 0;
    consumer_state cs = {0};

    while (!atomic_load(&w->stopping)) {
        if (!ctx) {
            ctx = redis_url_connect(&w->broker_url, 10.0, (char[256]){0}, 256);
            if (!ctx) {
                atomic_store(&w->broker_ok, 0);
                if (!outage_logged) {
                    char *shown = redis_url_redacted(&w->broker_url);
                    log_error("Broker %s unreachable; retrying with backoff (up to 5 s)", shown);
                    free(shown);
                    outage_logged = 1;
                }
                sleep_us(reconnect_wait);
                if (reconnect_wait < 5 * USEC_PER_SEC) reconnect_wait *= 2;
                continue;
            }
            /* "restored" is logged after the first fetch that works: a
             * restarted Redis accepts connections while it still loads its
             * dataset (LOADING), and that is the same outage. */
            reconnect_wait = 100 * 1000;
        }

        pthread_mutex_lock(&w->lock);
        int room = consumer_reserve_fetch_locked(w);
        if (room == 0) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 100 * 1000 * 1000;
            if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
            pthread_cond_timedwait(&w->room, &w->lock, &until);
            pthread_mutex_unlock(&w->lock);
            continue;
        }
        pthread_mutex_unlock(&w->lock);
        fetched_message *msgs = NULL;
        size_t n = 0;
        char err[256];
        pthread_mutex_lock(&w->queues_lock);
        int rc = transport_fetch(ctx, &w->topts, &w->queues, room, &msgs, &n, err, sizeof err);
        pthread_mutex_unlock(&w->queues_lock);
        if (rc != 0) consumer_release_fetch(w, room);
        if (rc != 0 && ctx->err == 0 && strstr(err, "LOADING") != NULL) {
            /* Redis is up again but still loading its dataset. */
            atomic_store(&w->broker_ok, 0);
            if (!outage_logged) {
                log_error("Broker is loading its dataset (%s); waiting", err);
                outage_logged = 1;
            }
            sleep_us(100 * 1000);
            continue;
        }
        if (rc != 0 && ctx->err == 0) {
            /* The server answered with an error, e.g. a queue key holding a
             * non-list (the fetch script skips such keys and only errors
             * when nothing else was popped): the connection is fine, so
             * don't reconnect or spin; log once a minute, poll every second. */
            broker_answers(w, &outage_logged);
            int64_t now = time_now_us();
            if (now >= cs.fetch_error_log_next_us) {
                log_error("Fetching from the broker failed: %s; other queues are still consumed, "
                          "retrying every second (logged once a minute)", err);
                cs.fetch_error_log_next_us = now + 60 * USEC_PER_SEC;
            }
            sleep_us(USEC_PER_SEC);
            continue;
        }
        if (rc != 0) {
            atomic_store(&w->broker_ok, 0);
            metrics_add("ptel_redis_errors_total", "role=\"broker\"", 1);
            log_error("Fetching from the broker failed: %s; reconnecting", err);
            redisFree(ctx);
            ctx = NULL;
            outage_logged = 1;
            continue;
        }
        broker_answers(w, &outage_logged);
        int unknown = consumer_fetched(w, ctx, room, msgs, n);

        if (n == 0) {
            transport_backoff_sleep(&idle);
        } else if ((size_t)unknown == n) {
            /* Only tasks we handed back: don't spin on them (see state.h). */
            unknown_wait = unknown_wait ? unknown_wait * 2 : 10 * 1000;
            if (unknown_wait > WORKER_UNKNOWN_BACKOFF_MAX_US) unknown_wait = WORKER_UNKNOWN_BACKOFF_MAX_US;
            sleep_us(unknown_wait);
        } else {
            transport_backoff_reset(&idle);
            unknown_wait = 0;
        }
    }
    if (ctx) redisFree(ctx);
    atomic_store(&w->consumer_done, 1);
    return NULL;
}
