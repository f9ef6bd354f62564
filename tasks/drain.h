/* tasks/drain.h: the drain engine behind run_product_telemetry_consumer
 * (DESIGN §3): telemetry streams -> validation -> one ClickHouse insert per
 * batch -> XACK, with bad events and poison entries moved to the DLQ.
 *
 * A drain_session owns one Redis connection (the telemetry Redis) and one
 * ClickHouse client and is meant to live as long as its worker slot: the
 * Celery task calls drain_run on it once per task. A session is not
 * thread-safe; use one per slot, each with its own stable consumer name.
 * The Celery glue (drain_task.c) and the `ptel-worker drain` command
 * (drain_cli_main) are its only callers. */
#ifndef PTEL_DRAIN_H
#define PTEL_DRAIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pyjson.h"

/* ---- Defaults (used for a zero/NULL option) -------------------------------------- */

#define DRAIN_STREAM_PATTERN_DEFAULT "product-telemetry:*:events"   /* CONTRACT §1.3 */
#define DRAIN_GROUP_DEFAULT "product-telemetry-consumers"
#define DRAIN_TABLE_DEFAULT "product_telemetry_events"
#define DRAIN_READ_COUNT_DEFAULT 100        /* entries per stream per XREADGROUP */
/* Entries one XREADGROUP may return across all streams: the COUNT per stream
 * is read_count, lowered to this / (streams read), at least 1. With 20
 * streams at COUNT 100 a reply was ~20 MB: parsed long after it arrived (out
 * of cache) and most of the peak RSS. Bench (200k events, 20 streams): COUNT
 * 100 -> 1.02 us/event, 55 MB; COUNT 5-20 -> 0.90-0.92 us/event, 37-40 MB.
 * ceil(read_count / COUNT) such reads make one iteration, so max_iterations
 * still lets a run read max_iterations x read_count entries per stream
 * (drain_run). */
#define DRAIN_READ_ENTRIES_MAX 256
#define DRAIN_BLOCK_MS_DEFAULT 1000         /* BLOCK when nothing is pending or new */
#define DRAIN_BATCH_MAX_ROWS_DEFAULT 10000  /* rows per INSERT */
#define DRAIN_BATCH_MAX_BYTES_DEFAULT (4u * 1024 * 1024)  /* ~ encoded bytes per INSERT */
#define DRAIN_BATCH_MAX_MS_DEFAULT 1000     /* oldest row waits at most this long */
#define DRAIN_RECLAIM_IDLE_MS_DEFAULT 300000 /* XAUTOCLAIM entries idle 5 min */
#define DRAIN_MAX_DELIVERIES_DEFAULT 5
#define DRAIN_STREAM_REFRESH_S_DEFAULT 30
#define DRAIN_BACKOFF_MAX_S_DEFAULT 30
#define DRAIN_RETENTION_DAYS_DEFAULT 180    /* CONTRACT §4 */
/* Without a soft deadline, a batch ClickHouse keeps refusing as transient is
 * tried this many times per run before the run gives up (entries stay pending
 * for the next run). With a deadline the deadline is the budget. */
#define DRAIN_ATTEMPTS_NO_DEADLINE 6

/* Plain fields; strings are borrowed for the session's lifetime. Zero or
 * NULL means the default above. */
typedef struct drain_options {
    const char *redis_url;           /* telemetry Redis (REDIS_URL); required */
    const char *stream_pattern;      /* SCAN MATCH pattern */
    const char *group;               /* consumer group */
    const char *consumer;            /* stable per worker slot, "<node>#<slot>"; per process
                                        for `ptel-worker drain`; required */
    const char *dlq_key;             /* default product-telemetry:dlq */
    long dlq_maxlen;
    const char *clickhouse_url;      /* required */
    const char *clickhouse_table;
    const char *clickhouse_format;   /* "RowBinary" / "JSONEachRow"; NULL: ch_format_default() */
    long clickhouse_connect_ms;      /* clickhouse_connect_timeout; <= 0: client default */
    long clickhouse_timeout_ms;      /* clickhouse_timeout (one request); <= 0: client default */
    long clickhouse_gzip_min_bytes;  /* gzip insert bodies of at least this many bytes; 0: client
                                        default (off for a loopback server); < 0: never */
    int read_count;
    int block_ms;
    int batch_max_rows;
    size_t batch_max_bytes;
    int batch_max_ms;
    int reclaim_idle_ms;
    int max_deliveries;
    int stream_refresh_s;
    int backoff_max_s;
    int retention_days;              /* legacy servers only (no TTL); < 0 disables */
    const char *hostname;            /* `worker` field of DLQ records */
    const char *stream_key;          /* optional: drain only this key (must match the pattern) */
    int leave_on_exit;               /* the consumer name is this process's own (`ptel-worker
                                        drain`): drain_session_free deletes it from the groups
                                        it holds nothing in, and marks what it still holds
                                        idle so another consumer reclaims it at once */
} drain_options;

typedef struct drain_result {
    long long processed;      /* events stored in ClickHouse (or found already stored) */
    long long rejected;       /* events (or whole entries) refused by validation */
    long long dead_lettered;  /* DLQ records written (validation, persistence, max_deliveries) */
    long long reclaimed;      /* entries taken over from idle consumers (XAUTOCLAIM) */
    long long entries;        /* stream entries acked */
    long long streams;        /* streams known when the run ended */
    long long iterations;     /* reads performed (reads capped by DRAIN_READ_ENTRIES_MAX:
                                 ceil(read_count / their COUNT) of them make one) */
} drain_result;

typedef void (*drain_progress_fn)(const drain_result *so_far, void *arg);

typedef struct drain_request {
    long max_iterations;      /* reads; <= 0: unlimited */
    int until_empty;          /* ignore max_iterations; stop at the first empty read
                                 without blocking */
    atomic_int *cancel;       /* may be NULL; nonzero: stop after the current batch */
    int64_t soft_deadline_us; /* wall clock (time_now_us()); 0: none */
    int max_attempts;         /* tries of one batch against a failing ClickHouse per run;
                                 0: until the deadline, or DRAIN_ATTEMPTS_NO_DEADLINE */
    drain_progress_fn progress;   /* may be NULL; called after every flushed batch */
    void *progress_arg;
} drain_request;

/* Validates the options and prepares the connections (no I/O: Redis and
 * ClickHouse are connected on first use, and reconnected by drain_run as
 * needed). NULL with a reason in err when an option is unusable.
 * drain_session_free does Redis I/O when leave_on_exit is set (see there). */
typedef struct drain_session drain_session;
drain_session *drain_session_new(const drain_options *o, char *err, size_t errlen);
void drain_session_free(drain_session *s);

/* One run (see drain.c for the loop). *out is always filled with what was
 * done. 0: the run ended normally (limit, drained, deadline or cancel).
 * -1: it ended because Redis or ClickHouse stayed unavailable for the whole
 * budget; err says which, and unstored entries are left pending (they are
 * re-read as this consumer's own pending entries by the next run, or, with
 * leave_on_exit, reclaimed by the next drain). */
int drain_run(drain_session *s, const drain_request *req, drain_result *out,
              char *err, size_t errlen);

/* {"processed": N, "rejected": n, "dead_lettered": n, "reclaimed": n,
 *  "entries": n, "streams": n, "iterations": n}, in that order. */
pj_value *drain_result_to_value(const drain_result *r);

/* `ptel-worker drain [--max-iterations N] [--until-empty] [--stream KEY] [--json]`:
 * argv[0] is "drain". Prints the result object on stdout (and, on a TTY,
 * progress with events/s on stderr). Exit code 0 ok, 1 error, 2 usage. */
int drain_cli_main(int argc, char **argv, const drain_options *defaults);

#endif
