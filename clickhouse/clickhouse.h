/* clickhouse/clickhouse.h: the ClickHouse client's public face.
 *
 * Three concerns, one header (DESIGN §4):
 *  - transport (client.c): one libcurl easy handle per client, keep-alive,
 *    timeouts, auth headers, gzip request bodies, and every failure turned
 *    into a ch_error that says whether retrying can help (transient) or not;
 *  - schema (schema.c): the table DDL per server version, DESCRIBE TABLE
 *    mapped to encoder column kinds, and retention for servers without TTL;
 *  - encoding (encode.c): event_rows encoded for the column types the server
 *    really has, in RowBinary or JSONEachRow, and inserted whole or by slice.
 *
 * What it does not do: validation of events (tasks/), retries and back-off
 * (the drain decides from ch_error.transient), dead-lettering (dlq/).
 *
 * Conventions: functions that can fail return 0 on success and -1 on failure
 * with *err filled (err may be NULL where noted). Credentials never appear in
 * a log line or in ch_error.msg. A ch_client is not thread-safe: use one per
 * worker slot. */
#ifndef PTEL_CLICKHOUSE_H
#define PTEL_CLICKHOUSE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "clickhouse/event_row.h"

/* ---- Limits and defaults ------------------------------------------------ */

/* Bodies at least this large are sent with Content-Encoding: gzip when the
 * server is remote. Below it the deflate CPU costs more than the bytes it
 * saves on a LAN. A loopback server (localhost, 127.0.0.0/8, [::1]) gets no
 * gzip by default: there the bytes cost nothing and deflate was the largest
 * CPU cost of the drain (~35% of its samples, BENCHMARKS.md, issue #6). */
#define CH_GZIP_THRESHOLD_DEFAULT (64 * 1024)
#define CH_CONNECT_TIMEOUT_MS_DEFAULT 5000L
#define CH_TOTAL_TIMEOUT_MS_DEFAULT   60000L
/* A response (SELECT result or error text) larger than this is cut off and
 * reported as an error: the worker only reads small answers. */
#define CH_RESPONSE_MAX_BYTES (64u * 1024 * 1024)
/* Table identifiers: [A-Za-z_][A-Za-z0-9_]*, optionally "db.table". */
#define CH_IDENT_MAX 128

/* ---- Errors --------------------------------------------------------------- */

typedef struct ch_error {
    int code;          /* ClickHouse exception code ("Code: 62, ..." in the body or the
                        * X-ClickHouse-Exception-Code header); 0 when none (curl errors) */
    long http_status;  /* 0 when no HTTP response arrived */
    int transient;     /* 1: retrying later may succeed (network, overload, 5xx) */
    char msg[512];     /* operator-readable; never holds credentials */
} ch_error;

/* Well-known codes the worker reasons about (ClickHouse src/Common/ErrorCodes.cpp). */
#define CH_ERR_CANNOT_PARSE_TEXT        6
#define CH_ERR_NO_SUCH_COLUMN_IN_TABLE 16
#define CH_ERR_CANNOT_READ_ALL_DATA    33
#define CH_ERR_CANNOT_PARSE_DATETIME   41
#define CH_ERR_TYPE_MISMATCH           53
#define CH_ERR_UNKNOWN_TABLE           60
#define CH_ERR_SYNTAX_ERROR            62
#define CH_ERR_TIMEOUT_EXCEEDED       159
#define CH_ERR_WRONG_PASSWORD         193
#define CH_ERR_SOCKET_TIMEOUT         209
#define CH_ERR_NETWORK_ERROR          210
#define CH_ERR_QUERY_ID_RUNNING       216   /* QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING: HTTP 500 */
#define CH_ERR_MEMORY_LIMIT_EXCEEDED  241
#define CH_ERR_TABLE_IS_READ_ONLY     242
#define CH_ERR_NOT_ENOUGH_SPACE       243
#define CH_ERR_TOO_MANY_PARTS         252
#define CH_ERR_AUTHENTICATION_FAILED  516

/* 1 when ClickHouse refused the data itself (a parse, type or size error in
 * the rows), so splitting the batch can isolate the bad row; 0 for everything
 * else (transient, or a permanent error about the query, table or login, where
 * splitting cannot help and every row would fail the same way). */
int ch_error_blames_rows(const ch_error *err);

/* ---- Client (client.c) ------------------------------------------------------ */

typedef struct ch_client ch_client;

/* url: http[s]://[user[:password]@]host[:port][/database][?setting=value&...]
 * user/password may be percent-encoded; settings are passed on every request
 * as URL parameters. No I/O happens here. NULL + err on a malformed URL.
 * Or chdb://PATH[?database=NAME]: ClickHouse in-process (chDB, chdb.c),
 * libchdb.so loaded from $PTEL_CHDB_LIB or ./var/chdb (tests/chdb/fetch.sh)
 * and a session opened on the data directory PATH here, so this form does
 * I/O and fails when the library is missing. The total timeout becomes the
 * session's max_execution_time; the connect timeout and gzip do not apply. */
ch_client *ch_client_new(const char *url, ch_error *err);
void ch_client_free(ch_client *c);

/* The URL with the password replaced by "***": the only form to log. */
const char *ch_client_redacted_url(const ch_client *c);
/* The database named by the URL path or ?database=, or NULL. */
const char *ch_client_database(const ch_client *c);
/* Milliseconds; <= 0 keeps the current value. */
void ch_client_set_timeouts(ch_client *c, long connect_ms, long total_ms);
/* Bodies of at least `bytes` are gzipped; 0 disables compression. The
 * default is CH_GZIP_THRESHOLD_DEFAULT, or 0 for a loopback host. */
void ch_client_set_gzip_threshold(ch_client *c, size_t bytes);
size_t ch_client_gzip_threshold(const ch_client *c);
/* Send the NEXT request (only that one: ch_query, ch_insert, ...) with
 * ?query_id=<query_id>; NULL or "" sends none. The server lists a running
 * query under this id in system.processes and refuses a second query with an
 * id that is still running (code 216, CH_ERR_QUERY_ID_RUNNING), which lets a
 * caller tell whether a request it gave up on (a timeout) is still executing
 * there. Copied. Ignored by chdb:// clients. */
void ch_client_set_query_id(ch_client *c, const char *query_id);

/* Counters since ch_client_new, for metrics and tests. */
typedef struct ch_client_stats {
    uint64_t requests;        /* HTTP requests attempted */
    uint64_t failures;        /* of which failed (any ch_error) */
    uint64_t gzip_requests;   /* of which had a gzipped body */
    uint64_t body_bytes;      /* request bodies before compression */
    uint64_t wire_bytes;      /* request bodies as sent */
} ch_client_stats;
void ch_client_stats_get(const ch_client *c, ch_client_stats *out);

/* Run one statement (SELECT, DDL, ALTER, ...); the response text is appended
 * to out (may be NULL). Sent with wait_end_of_query=1 so a failure half-way
 * through a result still yields an error status instead of a 200. */
int ch_query(ch_client *c, const char *sql, buf *out, ch_error *err);

/* "18.16.1" -> 18, 16. Asked once per client, then cached. */
int ch_server_version(ch_client *c, int *major, int *minor, ch_error *err);

/* ---- Schema (schema.c) ------------------------------------------------------ */

/* The CREATE TABLE IF NOT EXISTS statement for `table` on a server of this
 * version, appended to out. >= 20.1: CONTRACT §4 exactly (DateTime64(3,'UTC'),
 * LowCardinality, TTL 180 days); >= 22.2 adds SETTINGS
 * non_replicated_deduplication_window, without which a MergeTree ignores
 * insert_deduplication_token. Older: DateTime('UTC') columns, no TTL (the
 * worker enforces retention with ch_retention_enforce), and LowCardinality,
 * which those servers accept only with allow_experimental_low_cardinality_type=1
 * (ch_schema_apply sends that setting). */
void ch_schema_ddl(int major, int minor, const char *table, buf *out);

/* CREATE DATABASE IF NOT EXISTS (when the URL names a database), then the
 * DDL above for the server's version. Idempotent. */
int ch_schema_apply(ch_client *c, const char *table, ch_error *err);

/* The 11 columns of CONTRACT §3, in the order of event_row. */
typedef enum {
    CH_COL_ORG_ID_HASH, CH_COL_EVENT_ID, CH_COL_NAME, CH_COL_SCHEMA_VERSION,
    CH_COL_SESSION_ID, CH_COL_ANONYMOUS_USER_ID, CH_COL_ROUTE_PATTERN,
    CH_COL_PAYLOAD_JSON, CH_COL_OCCURRED_AT, CH_COL_INGESTED_AT, CH_COL_SOURCE,
    CH_COL_COUNT
} ch_column_id;

/* How a column's value goes on the wire. */
typedef enum {
    CH_KIND_STRING,           /* String, LowCardinality(String) */
    CH_KIND_NULLABLE_STRING,  /* Nullable(String), LowCardinality(Nullable(String)) */
    CH_KIND_DATETIME,         /* DateTime, DateTime('tz'): UInt32 seconds */
    CH_KIND_DATETIME64_3,     /* DateTime64(3[, 'tz']): Int64 milliseconds */
} ch_kind;

typedef struct ch_column {
    ch_column_id id;
    ch_kind kind;
    char type[64];            /* the type as DESCRIBE printed it, for messages */
} ch_column;

/* A described table: columns in the table's order (RowBinary follows it). */
typedef struct ch_table {
    size_t ncols;             /* always CH_COL_COUNT once described */
    ch_column cols[CH_COL_COUNT];
} ch_table;

/* Name of a column ("org_id_hash", ...). */
const char *ch_column_name(ch_column_id id);

/* Map DESCRIBE output (TabSeparated: name, type, default kind, default
 * expression, ...) to a ch_table. Pure; ch_table_describe uses it. A missing,
 * duplicated or unexpected column, or a type the encoder cannot write, is a
 * permanent error naming the column. */
int ch_table_from_describe(const char *tsv, size_t len, ch_table *out, ch_error *err);
int ch_table_describe(ch_client *c, const char *table, ch_table *out, ch_error *err);

typedef struct ch_retention_report {
    int ttl_managed;          /* 1: the table has a TTL, nothing was done */
    int64_t cutoff_s;         /* rows with occurred_at < this (epoch s) are expired */
    size_t partitions_dropped;
    uint64_t rows_dropped;    /* rows in the dropped partitions, counted before */
    uint64_t rows_deleted;    /* rows handed to ALTER TABLE ... DELETE, counted before */
} ch_retention_report;

/* For tables without TTL: drop month partitions entirely older than
 * now - days, then ALTER TABLE ... DELETE the expired rows left in the
 * boundary month. The DELETE is a mutation the server applies
 * asynchronously; the report counts the rows it will remove. On a table
 * with TTL it does nothing and sets ttl_managed. */
int ch_retention_enforce(ch_client *c, const char *table, int days, int64_t now_us,
                         ch_retention_report *out, ch_error *err);

/* ---- Rollups (rollups.c) ------------------------------------------------------ */

/* Daily aggregate rollups of `table` for trends past the raw TTL: tables
 * <table>_rollup_{events,features,filters,charts,errors,sessions}
 * (AggregatingMergeTree, uniqExact/quantiles/avg/count states) fed by
 * materialized views <...>_mv. rollups.c's top comment has the layout. */
#define CH_ROLLUP_TTL_DAYS_DEFAULT 730
#define CH_ROLLUP_TOP_ROUTES 25     /* the dashboard's LIMIT on routes */

/* Every CREATE TABLE / CREATE MATERIALIZED VIEW IF NOT EXISTS statement for
 * a server of this version, each followed by ";\n\n". TTL (day + ttl_days)
 * on >= 19.6 only. ch_rollups_backfill_sql: the backfill INSERT ... SELECT
 * statements for rows with ingested_at < cutoff_s (< 0: the letter T). */
void ch_rollups_ddl(int major, int minor, const char *table, int ttl_days, buf *out);
void ch_rollups_backfill_sql(int major, const char *table, int64_t cutoff_s, buf *out);

typedef struct ch_rollup_result {
    size_t created;            /* views created now (0: all existed) */
    int ttl;                   /* 1: tables have a TTL; 0: use ch_rollup_retention_enforce */
    int backfill_skipped;      /* backfill asked, but every view already existed */
    size_t backfilled;         /* rollups filled from the raw table */
    int64_t backfill_cutoff_s; /* raw rows with ingested_at before this were backfilled */
    uint64_t backfill_rows;    /* raw rows below the cutoff */
} ch_rollup_result;

/* The raw table (ch_schema_apply), then the rollup tables and views.
 * Idempotent. With backfill, the views this call created are filled from the
 * raw rows inserted before them (exact when no drain inserts meanwhile);
 * views that existed before are never backfilled again. */
int ch_rollups_apply(ch_client *c, const char *table, int ttl_days, int backfill,
                     ch_rollup_result *out, ch_error *err);
/* *all = 1 when every rollup table exists. */
int ch_rollups_exist(ch_client *c, const char *table, int *all, ch_error *err);
/* Servers without TTL: drop the rollups' month partitions wholly older than
 * now - days. Does nothing where the tables have a TTL. */
int ch_rollup_retention_enforce(ch_client *c, const char *table, int days, int64_t now_us,
                                size_t *partitions_dropped, ch_error *err);
/* The SELECT for one dashboard section ("daily_active_users", "top_routes",
 * "feature_views", "filter_changes", "chart_interactions", "client_errors",
 * "session_summary") from the rollups, with the same columns as the raw
 * query; `where` filters on org_id_hash and day. -1 for an unknown section. */
int ch_rollup_section_sql(const char *section, const char *table, const char *where, buf *out);

/* ---- Encoding and insert (encode.c) ----------------------------------------- */

typedef enum { CH_FORMAT_ROWBINARY, CH_FORMAT_JSONEACHROW } ch_format;

/* The format the insert path uses: chosen by bench_insert (RowBinary: see
 * encode.c for the numbers). */
ch_format ch_format_default(void);
const char *ch_format_name(ch_format f);   /* "RowBinary", "JSONEachRow" */

typedef struct ch_batch ch_batch;

/* A batch bound to a described table (copied). */
ch_batch *ch_batch_new(const ch_table *table, ch_format format);
void ch_batch_free(ch_batch *b);
void ch_batch_reset(ch_batch *b);          /* drop all rows, keep memory */

/* Encode one row; ingested_at_us is the insert time (CONTRACT §3). Times are
 * truncated to milliseconds (DateTime64(3)) or seconds (DateTime), rounding
 * toward the past. -1 (row not added, batch unchanged) when a value cannot
 * be represented by its column: a time outside 1970..2106 for DateTime, or a
 * NULL string for a non-Nullable column; ch_batch_error() says which. */
int ch_batch_add(ch_batch *b, const event_row *row, int64_t ingested_at_us);
const char *ch_batch_error(const ch_batch *b);

size_t ch_batch_rows(const ch_batch *b);
size_t ch_batch_bytes(const ch_batch *b);  /* encoded body size */
ch_format ch_batch_format(const ch_batch *b);
/* The encoded bytes of rows [first, first+count): a pointer into the batch,
 * valid until the next add/reset/free. NULL when the range is out of bounds. */
const char *ch_batch_slice(const ch_batch *b, size_t first, size_t count, size_t *len);

/* INSERT INTO table (columns) FORMAT <fmt> with all rows as the body.
 * dedup_token (may be NULL) is sent as insert_deduplication_token on servers
 * >= 22.2, so a retry of the same rows with the same token is dropped by the
 * server instead of duplicated (on MergeTree tables this needs
 * non_replicated_deduplication_window > 0; Replicated tables always dedup).
 * Older servers have no such setting and the token is ignored: there the
 * ReplacingMergeTree key collapses duplicates at merge time only. An empty
 * batch succeeds without a request. */
int ch_insert(ch_client *c, const char *table, ch_batch *b, const char *dedup_token,
              ch_error *err);
/* The same for rows [first, first+count) only, without re-encoding: used to
 * split a refused batch. Give each slice its own token. */
int ch_insert_range(ch_client *c, const char *table, ch_batch *b, size_t first,
                    size_t count, const char *dedup_token, ch_error *err);

#endif
