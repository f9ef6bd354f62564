/* worker/remote.h: what the worker shows to Flower, `celery inspect` and
 * `celery control`, and what it takes from them (PROTOCOL §7-§9, §12.1).
 *
 * Owns: the monitoring events the worker sends (worker-online/heartbeat/
 * offline, task-* when enabled), the Lamport clocks, the remote control
 * command handlers (ping ... pool_shrink), mingle at start-up, the revoked
 * set (REMOTE_REVOKED_MAX ids, REMOTE_REVOKED_EXPIRES_S each, saved to
 * worker_statedb when set), and the runtime overrides set by control
 * commands: rate limits (a token bucket per task name), time limits, task
 * event switch, extra queues.
 *
 * Does not own: running, acking or storing tasks, the pool or the main loop.
 * The worker calls the hooks below at fixed points; every hook accepts a
 * NULL remote_state (remote control off or not started) and is then a no-op
 * (remote_is_revoked says 0, the rate limit delay is 0, limits unchanged).
 * Requests that change the worker's shape (warm shutdown, pool size) are
 * not done here: the main loop collects them with remote_take_requests() so
 * they happen on the thread that owns the pool.
 *
 * Threads: task hooks may be called from any thread (slots, consumer, main);
 * the command handlers run on the control node's own thread ("Pidbox") and
 * read worker state under worker.lock / worker.queues_lock. */
#ifndef PTEL_WORKER_REMOTE_H
#define PTEL_WORKER_REMOTE_H

#include <stdint.h>

#include "common/timeutil.h"
#include "worker/state.h"

/* Celery's revoked LimitedSet: at most this many ids, each kept this long
 * (celery/worker/state.py REVOKES_MAX, REVOKE_EXPIRES). */
#define REMOTE_REVOKED_MAX 50000
#define REMOTE_REVOKED_EXPIRES_S 10800.0
/* Mingle waits this long for other workers' hello replies (PROTOCOL §9). */
#define REMOTE_MINGLE_TIMEOUT_S 1.0
/* worker_statedb is rewritten at most this often while the revoked set
 * changes, and always at shutdown. */
#define REMOTE_STATEDB_SAVE_EVERY_US (60 * USEC_PER_SEC)
/* Expired revoked ids are dropped this often. */
#define REMOTE_PURGE_EVERY_US (10 * USEC_PER_SEC)

typedef struct remote_state remote_state;

/* ---- Lifecycle (main thread) --------------------------------------------- */

/* After the queues are declared and before the consumer starts: load the
 * statedb, mingle (uses w->main_broker), declare the pidbox binding and start
 * the control thread, send worker-online. Never fails: without Redis pieces
 * it logs and goes on with what works. */
remote_state *remote_start(worker *w);
/* Each main-loop tick: heartbeat every EVENTS_HEARTBEAT_FREQ s, flush
 * buffered task events, purge expired revoked ids, save the statedb. */
void remote_tick(remote_state *r, int64_t now_us);
/* What control commands asked of the main loop since the last call. */
typedef struct remote_requests {
    int shutdown;      /* `shutdown` received: start a warm shutdown */
    int pool_delta;    /* pool_grow (+n) / pool_shrink (-n), summed */
} remote_requests;
void remote_take_requests(remote_state *r, remote_requests *out);
/* At the start of any shutdown (PROTOCOL §12.6): stop taking commands,
 * remove the pidbox binding, send worker-offline. Idempotent. */
void remote_shutdown_begins(remote_state *r);
/* After the pool and consumer are joined: flush task events, save the
 * statedb, free. */
void remote_stop(remote_state *r);

/* ---- Task hooks (any thread) -------------------------------------------- */

/* On arrival and just before execution: a revoked id is never run. */
int remote_is_revoked(remote_state *r, const char *task_id);
/* task-received: the message was accepted (ready queue or ETA-held). */
void remote_task_received(remote_state *r, const job *j);
/* task-started: a slot starts running j (counts toward stats.total). */
void remote_task_started(remote_state *r, const job *j);
void remote_task_succeeded(remote_state *r, const job *j, const char *result_repr, double runtime);
/* traceback NULL: the event carries only uuid and exception (unknown task). */
void remote_task_failed(remote_state *r, const job *j, const char *exception_repr,
                        const char *traceback);
void remote_task_retried(remote_state *r, const job *j, const char *exception_repr,
                         const char *traceback);
void remote_task_rejected(remote_state *r, const job *j, int requeue);
/* task-revoked. expired also adds the id to the revoked set, as Celery does;
 * terminated reports the signal the revoke asked for (SIGTERM by default). */
void remote_task_revoked(remote_state *r, const job *j, int terminated, int expired);

/* Rate limit (control `rate_limit`, else task_annotations): reserves the
 * task's next turn in its token bucket and returns how many microseconds to
 * wait before starting it; 0 = start now. Call once per execution. */
int64_t remote_rate_limit_delay(remote_state *r, const char *task_name);
/* Time limits set by control `time_limit` for task_name replace *soft and
 * *hard (seconds, < 0 = none); untouched when none were set. */
void remote_time_limits(remote_state *r, const char *task_name, double *soft, double *hard);

#endif
