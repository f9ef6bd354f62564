/* tasks/drain_internal.h: what drain.c (the run loop, batching, insert, ack)
 * and streams.c (the Redis side: connection, discovery, groups, reads,
 * reclaim, acks) share. Not a public header: only tasks/drain*.c and
 * tasks/streams.c include it. */
#ifndef PTEL_DRAIN_INTERNAL_H
#define PTEL_DRAIN_INTERNAL_H

#include <hiredis/hiredis.h>
#include <pthread.h>

#include "broker/url.h"
#include "clickhouse/clickhouse.h"
#include "dlq/dlq.h"
#include "tasks/drain.h"
#include "tasks/telemetry.h"

/* ---- Limits ------------------------------------------------------------------------ */

#define DRAIN_REDIS_TIMEOUT_S 10.0   /* connect and per-command timeout (BLOCK adds to it) */
#define DRAIN_SCAN_COUNT "1000"      /* SCAN ... COUNT hint */
#define DRAIN_SCAN_MAX_CALLS 100     /* SCAN calls per refresh; the cursor carries over */
#define DRAIN_MAX_STREAMS 10000      /* streams one session drains; more are ignored (warned) */
#define DRAIN_ID_MAX 48              /* "18446744073709551615-18446744073709551615" fits */
#define DRAIN_BACKOFF_FIRST_MS 500   /* first back-off step, doubled up to backoff_max_s */
#define DRAIN_DEDUP_QUERY_MAX 200000 /* bytes of one dedup SELECT (18.16 max_query_size is 256 KiB) */
#define DRAIN_RETENTION_EVERY_S 3600 /* legacy retention at most hourly per session */

/* ---- Streams ------------------------------------------------------------------------- */

typedef struct drain_stream {
    char *key;
    int group_ready;              /* XGROUP CREATE done (or BUSYGROUP) */
    int had_group;                /* the group existed once in this session */
    int dedup_all;                /* group was recreated: every entry may already be stored */
    int pending_done;             /* own pending entries all read in this run */
    char pending_cursor[DRAIN_ID_MAX];   /* history read position in this run */
    char claim_cursor[DRAIN_ID_MAX];     /* XAUTOCLAIM start */
    int read_history;             /* scratch: this read used the history cursor */
} drain_stream;

/* One entry as read, before it joins the batch. Borrowed from the reply. */
typedef struct drain_read_entry {
    drain_stream *stream;
    const char *id;
    redisReply *fields;           /* NULL: the entry was trimmed/deleted before we got it */
    int history;                  /* came from the pending list (a redelivery) */
    long deliveries;
} drain_read_entry;

/* ---- Session ------------------------------------------------------------------------- */

typedef struct drain_batch drain_batch;

struct drain_session {
    drain_options o;              /* defaults resolved; strings owned (copied) */
    char *redis_redacted;
    redis_url rurl;
    redisContext *redis;
    int redis_down;               /* an outage is being logged as one */
    double redis_down_since;
    dlq_options dlq;

    ch_client *ch;
    ch_format format;
    int have_table;
    ch_table table;
    ch_batch *chb;
    /* The overlapped insert (drain.c launch_insert): a full batch's insert
     * request runs on insert_thread over its own connection while this
     * thread reads and validates the next batch. Only the first request
     * of a batch is overlapped; retries, splits, dead-lettering and acks
     * run here, after the join (finish_insert). */
    ch_client *ch_async;          /* NULL: no overlap (chdb://) */
    drain_batch *inflight;        /* the batch being inserted; NULL none */
    drain_batch *spare;           /* an empty batch to swap in */
    ch_batch *chb_inflight;       /* the in-flight batch's encoded rows */
    pthread_t insert_thread;
    char inflight_token[64];
    double inflight_held_at;
    int inflight_rc;              /* written by insert_thread, read after the join */
    ch_error inflight_err;
    double inflight_seconds;
    int ch_down;
    double ch_down_since;
    int64_t last_retention_us;

    drain_stream *streams;
    size_t n_streams, cap_streams;
    char scan_cursor[32];
    int read_count_used;          /* COUNT of the last XREADGROUP (streams_read) */
    double last_refresh;          /* monotonic; 0 = never */
    int streams_warned_limit;
    double last_reclaim;
    double entry_bytes_avg;       /* running mean of the entries read (field bytes): sizes the
                                     next read's COUNT (streams.c read_count_now) */
    double fence_since;           /* monotonic; 0 none: before the next dedup check, wait for
                                     drain inserts started before this (drain.c fence) */
    double held_at;               /* monotonic time the batch's ownership was last checked */
    char uncertain_qid[64];       /* query_id of an insert that failed without an answer (it
                                     may still run there); "" none */
    long fence_running;           /* the last fence found this many older inserts running: a
                                   * wait, not a ClickHouse failure (logged once per wait) */
    int fence_unsupported;        /* system.processes not readable: no fence (warned once) */

    drain_batch *batch;
    const drain_request *req;     /* the run in progress */
    drain_result *res;
};

/* streams.c */
int streams_redis_ready(drain_session *s, char *err, size_t errlen);
void streams_redis_lost(drain_session *s, const char *what);
void streams_redis_back(drain_session *s);
int streams_refresh(drain_session *s, char *err, size_t errlen);
int streams_revalidate(drain_session *s, char *err, size_t errlen);
void streams_reset_run(drain_session *s);
int streams_read(drain_session *s, int block_ms, redisReply **reply, char *err, size_t errlen);
size_t streams_collect(drain_session *s, redisReply *reply, drain_read_entry **out);
int streams_delivery_counts(drain_session *s, drain_read_entry *e, size_t n, char *err, size_t errlen);
int streams_reclaim(drain_session *s, long long *claimed, char *err, size_t errlen);
int streams_ack(drain_session *s, const char *key, const char **ids, size_t n, char *err, size_t errlen);
/* For each (keys[i], ids[i]) still pending for this consumer: reset its idle
 * time (lost[i] stays 0); HOLD_LOST where another consumer holds it,
 * HOLD_GONE where it is not pending at all (acked elsewhere, or its stream
 * entry was deleted). Atomic per entry against XAUTOCLAIM. -1 (err filled)
 * when Redis failed: ownership unknown. */
enum { HOLD_LOST = 1, HOLD_GONE = 2 };
int streams_hold(drain_session *s, const char **keys, const char **ids, size_t n,
                 unsigned char *lost, char *err, size_t errlen);
/* leave_on_exit: delete this consumer where it holds nothing, release the rest. */
void streams_leave(drain_session *s);
void streams_free(drain_session *s);

#endif
