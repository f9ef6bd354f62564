/* worker/config.h: the worker's settings, loaded from a celeryconfig file,
 * the environment and the command line (DESIGN §5).
 *
 * Layers, applied by the caller in this order, later ones winning:
 *   config_init_defaults()            Celery's defaults, plus ours
 *   config_load_file()                a celeryconfig in our Python subset
 *   config_apply_env()                CELERY_BROKER_URL, CELERY_RESULT_BACKEND,
 *                                     REDIS_URL, CLICKHOUSE_URL
 *   config_set() per CLI flag         textual values ("4", "a,b", "true")
 *
 * The file format is the subset of Python that is nothing but assignments of
 * literals: `name = value` lines where value is a string ('..' or "..", with
 * Python's escapes, r'' raw and ''' triple quotes), an int, a float,
 * True/False/None, or a list, tuple or dict of those; `#` comments; values
 * may span lines inside brackets. Imports, expressions and calls are refused
 * with an error naming the subset, so a file we accept means the same thing
 * to Python (tests/data/config checks the sample against runpy).
 *
 * Errors: every function returning int returns 0 or -1 and fills err with
 * "FILE:LINE: reason" (file), "NAME: reason" (environment) or "reason"
 * (config_set; the CLI knows which flag). Unknown settings and unknown keys
 * inside broker_transport_options / task_annotations only log a warning.
 *
 * Ownership: a ptel_config owns every string and array in it; config_free()
 * releases them. Derived defaults stay derived: result_backend and
 * telemetry_redis_url follow broker_url, and task_queues follows
 * task_default_queue, until a layer sets them explicitly. */
#ifndef PTEL_WORKER_CONFIG_H
#define PTEL_WORKER_CONFIG_H

#include <stddef.h>

#include "common/log.h"
#include "common/pyjson.h"

/* ---- Limits (checked; an over-limit value is an error, never truncated) --- */
#define CONFIG_MAX_FILE_BYTES    (1024 * 1024)  /* a celeryconfig is a few KiB */
#define CONFIG_MAX_NESTING       32             /* bracket depth in one value */
#define CONFIG_MAX_CONCURRENCY   1024           /* worker_concurrency upper bound */
#define CONFIG_MAX_PRIORITY_STEPS 10            /* kombu's Redis priorities are 0..9 */
#define CONFIG_MAX_MESSAGE_BYTES (1024LL * 1024 * 1024) /* worker_max_message_bytes cap */
/* What Celery's `inspect conf` shows instead of a secret (celery.app.utils
 * filter_hidden_settings uses '*' * 8). */
#define CONFIG_REDACT_MASK       "********"

/* ---- Types ---------------------------------------------------------------- */

typedef struct config_strlist {
    char **items;        /* owned, each owned */
    size_t count;
} config_strlist;

typedef enum { QUEUE_ORDER_ROUND_ROBIN, QUEUE_ORDER_SORTED, QUEUE_ORDER_PRIORITY } config_queue_order;
typedef enum { UNKNOWN_TASK_REQUEUE, UNKNOWN_TASK_REJECT } config_unknown_task;
typedef enum { CH_INSERT_AUTO, CH_INSERT_ROWBINARY, CH_INSERT_JSONEACHROW } config_insert_format;

/* One task_annotations entry after merging with '*' (the specific name wins
 * key by key). "Not set" means: use the global setting. */
typedef struct task_overrides {
    int acks_late;                 /* -1 not set, else 0/1 */
    int reject_on_worker_lost;     /* -1 not set, else 0/1 */
    int ignore_result;             /* -1 not set, else 0/1 */
    int has_time_limit;            /* 1 = time_limit below applies */
    double time_limit;             /* seconds; < 0 means None (no limit) */
    int has_soft_time_limit;
    double soft_time_limit;        /* seconds; < 0 means None */
    int has_rate_limit;
    char *rate_limit;              /* owned; "10/m" as written, NULL = None */
    double rate_limit_per_s;       /* parsed rate_limit in tasks/second, 0 = none */
} task_overrides;

typedef struct config_annotation {
    char *task_name;               /* owned; "*" for every task */
    task_overrides o;
} config_annotation;

/* What a task actually runs with: globals, then its annotations. */
typedef struct task_settings {
    int acks_late, reject_on_worker_lost, ignore_result;
    double time_limit, soft_time_limit;   /* seconds, < 0 = no limit */
    const char *rate_limit;               /* borrowed from the config; NULL = none */
    double rate_limit_per_s;              /* 0 = none */
} task_settings;

typedef struct ptel_config {
    /* broker & queues */
    char *broker_url;
    char *task_default_queue;
    config_strlist task_queues;              /* never empty */
    long long worker_prefetch_multiplier;    /* 0 = unlimited (Celery) */
    /* broker_transport_options */
    double visibility_timeout;               /* seconds */
    int priority_steps[CONFIG_MAX_PRIORITY_STEPS];
    size_t priority_steps_count;             /* >= 1, strictly increasing */
    char *transport_sep;                     /* kombu's priority queue separator */
    config_queue_order queue_order_strategy;
    char *global_keyprefix;                  /* "" = none */
    long long unacked_mutex_expire;          /* seconds */

    /* execution */
    long long worker_concurrency;
    int task_acks_late;
    int task_reject_on_worker_lost;
    int task_acks_on_failure_or_timeout;
    double task_time_limit;                  /* seconds, < 0 = None */
    double task_soft_time_limit;             /* seconds, < 0 = None */
    config_strlist accept_content;
    char *task_serializer;
    config_annotation *annotations;          /* task_annotations, in file order */
    size_t annotations_count;
    config_unknown_task worker_unknown_task;
    double worker_shutdown_grace;            /* seconds */
    long long worker_max_message_bytes;
    long long worker_max_eta_messages;

    /* results */
    char *result_backend;
    int task_track_started;
    int task_ignore_result;
    long long result_expires;                /* seconds; -1 = None (never), 0 = never too */

    /* events / control / process */
    int worker_send_task_events;
    int has_worker_control_allow;            /* 0 = None: every command allowed */
    config_strlist worker_control_allow;
    char *worker_statedb;                    /* NULL = None */
    log_format worker_log_format;
    int worker_metrics_port;                 /* 0 = None (no metrics listener) */
    char *timezone;                          /* accepted and ignored: we run in UTC */
    int enable_utc;                          /* accepted and ignored */

    /* ClickHouse */
    char *clickhouse_url;
    char *clickhouse_table;                  /* [A-Za-z0-9_.]+ */
    double clickhouse_connect_timeout;       /* seconds */
    double clickhouse_timeout;               /* seconds */
    config_insert_format clickhouse_insert_format;
    long long clickhouse_gzip_min_bytes;     /* gzip bodies of at least this; 0 = never;
                                                -1 = None: off for a loopback server,
                                                CH_GZIP_THRESHOLD_DEFAULT otherwise */

    /* telemetry drain */
    char *telemetry_redis_url;
    char *telemetry_stream_pattern;
    char *telemetry_consumer_group;
    char *telemetry_dlq_stream;
    long long telemetry_dlq_maxlen;
    long long telemetry_read_count;
    long long telemetry_block_ms;
    long long telemetry_batch_max_rows;
    long long telemetry_batch_max_bytes;
    long long telemetry_batch_max_ms;
    long long telemetry_reclaim_idle_ms;
    long long telemetry_max_deliveries;
    long long telemetry_stream_refresh_s;
    long long telemetry_retention_days;
    long long telemetry_rollup_ttl_days;   /* schema apply --rollups */
    double telemetry_backoff_max_s;

    /* the dicts as written, for `inspect conf` (owned, NULL = not set) */
    pj_value *transport_options_raw;
    pj_value *task_annotations_raw;

    /* bookkeeping: which settings a layer set explicitly (index into the
     * settings table in config.c); drives derived defaults and `inspect conf`. */
    unsigned char explicit_set[64];
} ptel_config;

/* ---- Lifecycle ------------------------------------------------------------ */

void config_init_defaults(ptel_config *cfg);
void config_free(ptel_config *cfg);      /* leaves cfg zeroed; init again to reuse */

/* ---- Layers --------------------------------------------------------------- */

/* Reads and applies a celeryconfig. On error cfg may hold some of the file's
 * settings (those before the bad line); callers exit anyway. */
int config_load_file(ptel_config *cfg, const char *path, char *err, size_t errlen);
/* Same, from memory; `filename` only names the source in messages. */
int config_load_string(ptel_config *cfg, const char *filename, const char *text,
                       size_t len, char *err, size_t errlen);
/* Empty or unset variables are skipped (Celery reads them with `or`). */
int config_apply_env(ptel_config *cfg, char *err, size_t errlen);
/* One setting from text, as a CLI flag gives it: strings as is, numbers as
 * Python literals, booleans as true/false/yes/no/on/off/1/0, lists as
 * comma-separated items ("ingest,celery"), "None" for None where allowed,
 * dicts as a Python dict literal. Unknown names are an error here. */
int config_set(ptel_config *cfg, const char *name, const char *value_text,
               char *err, size_t errlen);

/* ---- Queries -------------------------------------------------------------- */

/* task_annotations for task_name (already merged with '*'), else the '*'
 * entry, else NULL. Borrowed. */
const task_overrides *config_task_overrides(const ptel_config *cfg, const char *task_name);
/* Globals with task_name's annotations applied. */
void config_task_settings(const ptel_config *cfg, const char *task_name, task_settings *out);
/* The reply body of Celery's `inspect conf` (app.conf.table()): an object of
 * the settings a layer set explicitly (Celery lists only those unless
 * with_defaults), in table order. censored = 1 masks as Celery does: keys
 * matching API|TOKEN|KEY|SECRET|PASS|SIGNATURE|DATABASE (at any depth, so
 * broker_transport_options' global_keyprefix too) and URL passwords of
 * broker_url, *backend* and our *_url settings become CONFIG_REDACT_MASK.
 * Caller owns the result. */
pj_value *config_render_conf(const ptel_config *cfg, int with_defaults, int censored);

/* The file format's reader without the settings: every `name = literal` of
 * the text, in order, as one object (later assignments win, as in Python).
 * Used by tests to compare with what Python's runpy sees. */
int config_read_literals(const char *filename, const char *text, size_t len, pj_value **out,
                         char *err, size_t errlen);

#endif
