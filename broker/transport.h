/* broker/transport.h: kombu's Redis transport, as a worker consumes it.
 *
 * Owns: fetching task envelopes from the queue lists in kombu's key order
 * and round robin (PROTOCOL §2.2/§2.3), the ack emulation bookkeeping
 * (`unacked` hash + `unacked_index` zset, §4), ack, reject-with-requeue,
 * warm-shutdown restore, visibility-timeout restore (with kombu's mutex),
 * queue bindings (§5) and publishing an envelope onto a priority sub-queue.
 *
 * Does not own: connections (every call takes a redisContext* owned by the
 * caller; each worker thread has its own), decoding envelopes (message.h),
 * prefetch accounting, or deciding when to ack (the worker does).
 *
 * One improvement over kombu: the pop and the unacked bookkeeping happen in
 * one server-side Lua script, so a kill -9 at any instant loses no message
 * (see transport.c, "Fetch"). Python kombu workers sharing the queues see
 * exactly the keys and values they write themselves.
 *
 * Errors: functions return 0 (or a count) on success and -1 on failure with
 * a reason in err[errlen]. Connection-level failures leave ctx->err set; the
 * caller reconnects. */
#ifndef PTEL_BROKER_TRANSPORT_H
#define PTEL_BROKER_TRANSPORT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

/* kombu's default separator between a queue name and its priority step. */
#define TRANSPORT_SEP "\x06\x16"
/* Most priority steps accepted in transport_options.priority_steps. */
#define TRANSPORT_MAX_PRIORITY_STEPS 10
/* Most messages one transport_fetch call may pop (bounds the script's work
 * per call so it never blocks the Redis server for long). */
#define TRANSPORT_MAX_FETCH 1000
/* Most queues a worker may consume at once (bounds the key list). */
#define TRANSPORT_MAX_QUEUES 1000
/* How many visibility-timed-out messages one restore_visible restores:
 * kombu's restore_visible(num=10) (kombu/transport/redis.py, 5.2.4). */
#define TRANSPORT_RESTORE_VISIBLE_BATCH 10
/* Idle polling backoff: first wait and cap (see transport_backoff). The cap
 * bounds the idle-to-busy latency a new message can see. */
#define TRANSPORT_BACKOFF_MIN_US 1000
#define TRANSPORT_BACKOFF_MAX_US 64000

/* broker_transport_options a Python deployment may set (PROTOCOL §2.4).
 * Strings are borrowed; they must outlive every call using the options. */
typedef struct transport_options {
    const char *sep;                 /* TRANSPORT_SEP */
    int priority_steps[TRANSPORT_MAX_PRIORITY_STEPS];  /* ascending; {0,3,6,9} */
    size_t n_priority_steps;
    double visibility_timeout;       /* seconds; 3600 */
    const char *unacked_key;         /* "unacked" */
    const char *unacked_index_key;   /* "unacked_index" */
    const char *unacked_mutex_key;   /* "unacked_mutex" */
    int unacked_mutex_expire;        /* seconds; 300 */
    int restore_visible_batch;       /* TRANSPORT_RESTORE_VISIBLE_BATCH */
    const char *global_keyprefix;    /* ""; prefixed to every key we touch */
} transport_options;

/* Fill *o with kombu 5.2.4's defaults. */
void transport_options_init(transport_options *o);

/* The consumed queues in their current round-robin order. Owns its names. */
typedef struct transport_queues {
    char **names;
    size_t n, cap;
} transport_queues;

void transport_queues_init(transport_queues *q);
void transport_queues_deinit(transport_queues *q);
/* Append at the end (add_consumer). 0 added, 1 already present, -1 full. */
int transport_queues_add(transport_queues *q, const char *name);
/* Remove (cancel_consumer). 0 removed, -1 not present. */
int transport_queues_remove(transport_queues *q, const char *name);
/* Move `name` to the end, as kombu's round-robin cycle does after serving it. */
void transport_queues_rotate(transport_queues *q, const char *name);

/* One popped envelope. All fields owned by the message. */
typedef struct fetched_message {
    char *key;          /* the list it was popped from, without global_keyprefix */
    char *queue;        /* key split on the LAST sep, as kombu does */
    char *payload;      /* envelope bytes, verbatim, NUL-terminated */
    size_t payload_len;
    char *tag;          /* properties.delivery_tag; NULL when the payload is not
                         * JSON or has no string tag: then it was NOT registered
                         * in unacked and the caller logs and drops it */
} fetched_message;

void transport_messages_free(fetched_message *msgs, size_t n);

/* Pop up to max (1..TRANSPORT_MAX_FETCH) envelopes from `queues` in kombu's
 * order, registering each in unacked in the same atomic step, and rotate
 * `queues` as kombu would. Never blocks: with every queue empty it returns
 * 0 with *n = 0. On success *out is an array of *n messages the caller frees
 * with transport_messages_free (NULL when *n = 0). */
int transport_fetch(redisContext *ctx, const transport_options *opts, transport_queues *queues,
                    int max, fetched_message **out, size_t *n, char *err, size_t errlen);

/* transport_fetch in two halves, to share a round trip with other commands
 * (pipelining). _prepare loads the fetch script (nothing may be queued on
 * ctx yet) so that _append does no I/O and may follow other queued
 * commands; queue the fetch LAST in its pipeline (_finish may reload the
 * script after a NOSCRIPT). _append reads `queues` (hold its lock around
 * the call) and remembers the key list and queue order it sent, so the
 * queues need not stay locked while the round trip is in flight: another
 * fetch may rotate them meanwhile (two fetches in flight behave like two
 * kombu consumers). _finish rotates each served queue to the end of
 * `queues` by name, under queues_lock when not NULL, and frees the call.
 * It returns 0 with *n = 0 when the server had lost the script. */
typedef struct transport_fetch_call {
    char **keys;        /* the key list the script was given (owned) */
    size_t nkeys;
    char **names;       /* the queue order it was given (owned) */
    size_t nq;
} transport_fetch_call;

int transport_fetch_prepare(redisContext *ctx, char *err, size_t errlen);
int transport_fetch_append(redisContext *ctx, const transport_options *opts,
                           const transport_queues *queues, int max, transport_fetch_call *call,
                           char *err, size_t errlen);
int transport_fetch_finish(redisContext *ctx, const transport_options *opts,
                           transport_queues *queues, pthread_mutex_t *queues_lock,
                           transport_fetch_call *call, fetched_message **out, size_t *n,
                           char *err, size_t errlen);

/* Ack n tags: ZREM unacked_index + HDEL unacked per tag in one MULTI/EXEC. */
int transport_ack(redisContext *ctx, const transport_options *opts,
                  const char *const *tags, size_t n, char *err, size_t errlen);

/* transport_ack in two halves, to share a round trip with other commands
 * (pipelining): _append queues the MULTI/EXEC without sending it, _finish
 * (same n) reads its replies. Between them the caller may queue and read
 * other commands, reading replies in the order the commands were queued. */
void transport_ack_append(redisContext *ctx, const transport_options *opts,
                          const char *const *tags, size_t n);
int transport_ack_finish(redisContext *ctx, size_t n, char *err, size_t errlen);

/* Reject with requeue (PROTOCOL §4.3): LPUSH the message back (back of the
 * line) with both redelivered flags set and remove it from unacked,
 * atomically. An unknown tag is only removed from the index (as kombu). */
int transport_requeue(redisContext *ctx, const transport_options *opts,
                      const char *tag, char *err, size_t errlen);

/* Warm-shutdown hand-back (PROTOCOL §4.4 #1): RPUSH each held message onto
 * its base queue (front of the line), flags set, removed from unacked;
 * atomically per tag, in the order given (pass delivery order, as kombu).
 * Returns how many tags were restored, or -1 if any failed (the rest are
 * still attempted; failed ones stay in unacked for restore_visible). */
int transport_restore(redisContext *ctx, const transport_options *opts,
                      const char *const *tags, size_t n, char *err, size_t errlen);

/* Visibility-timeout restore (PROTOCOL §4.4 #2) under kombu's unacked_mutex.
 * now_us is the caller's wall clock. Returns how many messages were
 * restored (0 also when another worker holds the mutex), -1 on error. */
int transport_restore_visible(redisContext *ctx, const transport_options *opts,
                              int64_t now_us, char *err, size_t errlen);

/* SADD _kombu.binding.<exchange> "<routing_key>SEPSEP<queue>" (PROTOCOL §5).
 * routing_key NULL means the queue name. */
int transport_declare_queue(redisContext *ctx, const transport_options *opts,
                            const char *queue, const char *exchange, const char *routing_key,
                            char *err, size_t errlen);

/* The list a message of `priority` goes to (PROTOCOL §2.3), without the
 * global prefix: "q", "q" SEP "3", ... The caller frees the result. */
char *transport_priority_key(const transport_options *opts, const char *queue, int priority);

/* LPUSH an envelope onto the priority sub-queue of `queue` (retry republish,
 * `ptel-worker send`). */
int transport_publish(redisContext *ctx, const transport_options *opts, const char *queue,
                      int priority, const char *envelope, size_t len, char *err, size_t errlen);

/* ---- Idle polling ---- */

/* transport_fetch never blocks, so an idle worker polls. The wait starts at
 * TRANSPORT_BACKOFF_MIN_US and doubles up to TRANSPORT_BACKOFF_MAX_US; any
 * fetched message resets it. Usage:
 *     if (n == 0) transport_backoff_sleep(&b); else transport_backoff_reset(&b); */
typedef struct transport_backoff {
    int64_t next_us;
} transport_backoff;

void transport_backoff_reset(transport_backoff *b);
/* The wait to use now (and advance the doubling). */
int64_t transport_backoff_next(transport_backoff *b);
/* nanosleep(transport_backoff_next(b)). */
void transport_backoff_sleep(transport_backoff *b);

#endif
