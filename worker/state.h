/* worker/state.h: the worker process's shared state, private to worker/.
 *
 * Threads (why threads, not processes: every task is our own C code, written
 * to poll its cancellation flag, so a slot never needs SIGKILL to be stopped;
 * threads keep the footprint at a few MB and hand-offs at a mutex, not a
 * pipe. A task that ignores its hard time limit is abandoned, not waited on:
 * see pool.c):
 *   - main:      signals, timers (ETA, time limits, restore_visible), shutdown.
 *   - consumer:  fetches messages (transport_fetch), decides what each is, and
 *                queues jobs for the pool or holds them until their ETA.
 *   - slot 0..N: run jobs, store results, ack; a busy slot also fetches
 *                (in its round trip, pool.c) and dispatches what it got.
 * Every field below marked "lock" is guarded by worker.lock. */
#ifndef PTEL_WORKER_STATE_H
#define PTEL_WORKER_STATE_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "broker/message.h"
#include "broker/transport.h"
#include "broker/url.h"
#include "tasks/drain.h"
#include "tasks/task.h"
#include "worker/config.h"

/* How long the main loop sleeps between timer checks; bounds how late a time
 * limit or an ETA can fire. */
#define WORKER_TICK_MS 20
/* A slot whose task ignored its hard time limit this long is replaced. */
#define WORKER_ABANDON_GRACE_US (2 * USEC_PER_SEC)
/* restore_visible cadence: kombu runs it at start and then about every 100 s
 * (a 10 s timer, every 10th tick; PROTOCOL §4.4). */
#define WORKER_RESTORE_VISIBLE_EVERY_US (100 * USEC_PER_SEC)
/* Unknown tasks handed back for a Python worker: at most this often per
 * consumer poll once only such messages are seen, so a queue holding nothing
 * else costs no CPU (issue: no busy loop when no Python worker exists). */
#define WORKER_UNKNOWN_BACKOFF_MAX_US (500 * 1000)

typedef struct job {
    task_message msg;             /* decoded message (owns the raw envelope) */
    const task_def *def;
    task_settings settings;       /* effective acks_late, limits, ... */
    int64_t received_us;
    int acked;                    /* early ack done (or message settled) */
    struct job *next;             /* lock: ready queue link */
} job;

typedef enum { SLOT_IDLE, SLOT_RUNNING } slot_status;

typedef struct slot {
    struct worker *w;
    int index;
    pthread_t thread;
    redisContext *broker;         /* owned by the slot thread */
    redisContext *backend;        /* == broker when the URLs are equal */
    void *task_state;             /* task_context.slot_state */
    /* lock: */
    slot_status status;
    job *current;
    int64_t started_us;
    int64_t soft_deadline_us, hard_deadline_us;   /* 0 = none */
    int soft_fired;
    int finishing;                /* the task returned; its outcome is being stored */
    int abandoned;                /* hard limit hit: the main thread settled the job */
    int64_t abandoned_us;
    int retire;                   /* pool_shrink: leave after the current job */
    int exited;                   /* a retired slot's thread has returned */
    int zombie;                   /* replaced after ignoring its hard limit: the
                                     thread frees this slot if it ever returns */
    atomic_int cancel;            /* task_cancel_reason */
} slot;

typedef struct worker_stats {     /* lock */
    long long processed;          /* tasks finished (any outcome) */
    long long received;
} worker_stats;

struct remote_state;              /* worker/remote.h */

typedef struct worker {
    ptel_config *cfg;
    char *hostname;               /* node name, e.g. celery@host */
    int send_events_flag;         /* -E given */
    int without_mingle;           /* --without-mingle given (Celery's flag) */
    transport_options topts;
    drain_options drain_opts;     /* for run_product_telemetry_consumer; borrows cfg */
    redis_url broker_url, backend_url;
    int backend_same_as_broker;

    pthread_mutex_t lock;
    pthread_cond_t work_ready;    /* signalled when a job is queued or on stop */
    pthread_cond_t room;          /* signalled when prefetch room frees up */

    pthread_mutex_t queues_lock;  /* guards `queues` only, so a fetch round trip
                                     never holds `lock` */
    transport_queues queues;      /* queues_lock */
    job *ready_head, *ready_tail; /* lock: reserved jobs, FIFO */
    size_t n_ready;               /* lock */
    job **eta;                    /* lock: ETA-held jobs, sorted by eta */
    size_t n_eta, cap_eta;        /* lock */
    size_t n_late_active;         /* lock: acks_late jobs running (still unacked) */
    size_t n_fetching;            /* lock: prefetch room reserved by fetches in flight */
    slot **slots;                 /* lock */
    int n_slots;
    worker_stats stats;

    atomic_int stopping;          /* 0 running, 1 warm shutdown, 2 cold shutdown */
    atomic_int broker_ok;         /* the consumer's last broker call worked (/healthz) */
    struct metrics_server *metrics; /* NULL unless --metrics-port (metrics_http.c) */
    atomic_int consumer_done;
    pthread_t consumer_thread;
    redisContext *main_broker;    /* main thread's connection (timers, shutdown) */
    redisContext *main_backend;
    int64_t started_us;
    long long pid;                /* getpid() once at pool_start: STARTED's pid, retry origins
                                     (a syscall per task otherwise); read-only after */
    struct remote_state *remote;  /* events, remote control, revoked set; NULL = off */
} worker;

/* consumer.c */
void *consumer_main(void *arg);
void consumer_release_due(worker *w, int64_t now_us);
/* metrics: metric += v (or observe, for the runtime histogram) labelled
 * task="<task>"[,state="<state>"]. */
void task_metric(const char *task, const char *metric, const char *state, double v);
size_t worker_prefetch_limit(const worker *w);
/* Reserve all free prefetch room for a fetch about to be sent (w->lock
 * held; 0 when none, or when stopping). Every reservation ends in
 * consumer_fetched or consumer_release_fetch. */
int consumer_reserve_fetch_locked(worker *w);
void consumer_release_fetch(worker *w, int reserved);
/* Wake the consumer if there is prefetch room (lock held). Only call it
 * where room may have opened: a wake per task costs a futex round. */
void consumer_room_signal_locked(worker *w);
/* Dispatch n fetched messages (ready queue, ETA list, or settled on ctx),
 * free them, and release the reservation. Returns how many were unknown
 * tasks handed back. */
int consumer_fetched(worker *w, redisContext *ctx, int reserved, fetched_message *msgs, size_t n);

/* pool.c */
int pool_start(worker *w, char *err, size_t errlen);
void pool_check_limits(worker *w, int64_t now_us);
int pool_active(worker *w);
void pool_cancel_all(worker *w, int reason);
void pool_join(worker *w);
void pool_log_slots(worker *w);
void pool_free(worker *w);
/* pool_grow / pool_shrink: run n_slots slots (at least 1). Extra slots
 * retire after their current job. Main thread. */
void pool_resize(worker *w, int n_slots);

/* jobs.c: result storing and acking shared by consumer, pool and main. */
void job_free(job *j);
int job_ack(redisContext *ctx, worker *w, job *j);
/* Record the result of an ack sent some other way (pipelined): acked on 0,
 * else the operator line job_ack writes; the job stays unacked. */
void job_ack_settled(job *j, int ack_rc, const char *err);
void job_store_failure(redisContext *ctx, worker *w, const char *task_id,
                       const char *exc_type, const char *exc_module, const char *message,
                       const char *traceback);
void job_store_revoked(redisContext *ctx, worker *w, job *j, const char *why);
redisContext *worker_connect(const redis_url *url, const char *what);

#endif
