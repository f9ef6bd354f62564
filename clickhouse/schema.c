/* clickhouse/schema.c: the telemetry table as each server version can hold it.
 *
 * Owns: the CREATE TABLE statement per server version (CONTRACT §4 on
 * >= 20.1, the closest legacy variant before), reading DESCRIBE TABLE into
 * the column kinds the encoder writes, and retention for tables without TTL.
 * Does not own: sending requests (client.c) or encoding rows (encode.c).
 *
 * Why versions differ (ClickHouse changelogs): DateTime64 arrived in 20.1;
 * LowCardinality needs allow_experimental_low_cardinality_type=1 on 18.x; the
 * legacy table keeps DateTime('UTC') so text forms and toYYYYMM() partitions
 * are UTC whatever the server's time zone, and it has no TTL, so the worker
 * drops expired months and deletes expired rows itself (DESIGN §4). */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "clickhouse/ch_internal.h"

/* Raw events are kept this long (CONTRACT §4). */
#define CH_RETENTION_DAYS_CONTRACT 180
/* Inserted blocks whose hash (or insert_deduplication_token) a non-replicated
 * MergeTree remembers. Its default is 0, which makes the drain's dedup token
 * a no-op (checked on 26.5 by test_chdb); 10000 matches the default of
 * replicated_deduplication_window on current servers. */
#define CH_DEDUP_WINDOW_BLOCKS 10000

static const char *const column_names[CH_COL_COUNT] = {
    "org_id_hash", "event_id", "name", "schema_version", "session_id",
    "anonymous_user_id", "route_pattern", "payload_json", "occurred_at",
    "ingested_at", "source",
};

const char *ch_column_name(ch_column_id id)
{
    return (unsigned)id < CH_COL_COUNT ? column_names[id] : "?";
}

/* ---- DDL ------------------------------------------------------------------------ */

static int server_has_datetime64(int major, int minor)
{
    (void)minor;
    return major >= 20;   /* 20.1 */
}

/* insert_deduplication_token arrived in 22.2 (encode.c sends it from there
 * on); non_replicated_deduplication_window exists since 20.x, so the table
 * setting is safe wherever the token is used. */
static int server_has_dedup_token(int major, int minor)
{
    return major > 22 || (major == 22 && minor >= 2);
}

void ch_schema_ddl(int major, int minor, const char *table, buf *out)
{
    int modern = server_has_datetime64(major, minor);
    const char *time_type = modern ? "DateTime64(3, 'UTC')" : "DateTime('UTC')";
    buf_printf(out,
        "CREATE TABLE IF NOT EXISTS %s (\n"
        "    org_id_hash String DEFAULT '', event_id String, name LowCardinality(String),\n"
        "    schema_version String, session_id String, anonymous_user_id String,\n"
        "    route_pattern Nullable(String), payload_json String,\n"
        "    occurred_at %s, ingested_at %s,\n"
        "    source LowCardinality(String)\n"
        ") ENGINE = ReplacingMergeTree(ingested_at)\n"
        "PARTITION BY toYYYYMM(occurred_at)\n"
        "ORDER BY (org_id_hash, name, occurred_at, event_id)",
        table, time_type, time_type);
    if (modern)
        buf_printf(out, "\nTTL toDateTime(occurred_at) + INTERVAL %d DAY DELETE",
                   CH_RETENTION_DAYS_CONTRACT);
    if (server_has_dedup_token(major, minor))
        buf_printf(out, "\nSETTINGS non_replicated_deduplication_window = %d",
                   CH_DEDUP_WINDOW_BLOCKS);
}

static int check_table_name(const char *table, const char *what, ch_error *err)
{
    if (ch_ident_valid(table)) return 0;
    ch_error_set(err, 0, 0, 0, "ClickHouse %s: '%.64s' is not a valid table name", what,
                 table ? table : "(null)");
    return -1;
}

int ch_schema_apply(ch_client *c, const char *table, ch_error *err)
{
    if (check_table_name(table, "schema apply", err) != 0) return -1;
    int major, minor;
    if (ch_server_version(c, &major, &minor, err) != 0) return -1;

    buf sql = BUF_INIT;
    const char *db = ch_client_database(c);
    const char *dot = strchr(table, '.');
    if (dot != NULL || db != NULL) {
        if (dot != NULL) buf_printf(&sql, "CREATE DATABASE IF NOT EXISTS %.*s", (int)(dot - table), table);
        else buf_printf(&sql, "CREATE DATABASE IF NOT EXISTS %s", db);
        if (ch_request(c, CH_REQ_NO_DATABASE, NULL, NULL, sql.data, sql.len, NULL, err) != 0) {
            buf_free(&sql);
            return -1;
        }
        buf_reset(&sql);
    }
    ch_schema_ddl(major, minor, table, &sql);
    const char *settings = server_has_datetime64(major, minor)
                               ? NULL : "allow_experimental_low_cardinality_type=1";
    int rc = ch_request(c, 0, NULL, settings, sql.data, sql.len, NULL, err);
    if (rc == 0)
        log_info("ClickHouse schema: table %s ready on %s (server %d.%d, %s DDL)", table,
                 ch_client_redacted_url(c), major, minor,
                 server_has_datetime64(major, minor) ? "production" : "legacy");
    buf_free(&sql);
    return rc;
}

/* ---- DESCRIBE ---------------------------------------------------------------------- */

/* Undo TabSeparated escaping of one field s[0..n) into out. */
static void tsv_unescape(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outsz; i++) {
        char ch = s[i];
        if (ch == '\\' && i + 1 < n) {
            char e = s[++i];
            switch (e) {
            case 't': ch = '\t'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case '0': ch = '\0'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            default: ch = e;   /* \\ \' and anything else: the character itself */
            }
        }
        out[o++] = ch;
    }
    out[o] = '\0';
}

/* Strip "Wrapper(" ... ")" in place; 1 when it was there. */
static int unwrap(char *t, const char *wrapper)
{
    size_t wl = strlen(wrapper), tl = strlen(t);
    if (tl < wl + 2 || strncmp(t, wrapper, wl) != 0 || t[wl] != '(' || t[tl - 1] != ')')
        return 0;
    memmove(t, t + wl + 1, tl - wl - 2);
    t[tl - wl - 2] = '\0';
    return 1;
}

/* "DateTime", "DateTime('tz')", "DateTime64(3)", "DateTime64(3, 'tz')". */
static int time_kind(const char *t, ch_kind *kind)
{
    if (strcmp(t, "DateTime") == 0 || strncmp(t, "DateTime('", 10) == 0) {
        *kind = CH_KIND_DATETIME;
        return 1;
    }
    if (strcmp(t, "DateTime64(3)") == 0 || strncmp(t, "DateTime64(3, '", 15) == 0 ||
        strncmp(t, "DateTime64(3,'", 14) == 0) {
        *kind = CH_KIND_DATETIME64_3;
        return 1;
    }
    return 0;
}

static int map_type(ch_column_id id, const char *type, ch_kind *kind)
{
    char t[64];
    snprintf(t, sizeof(t), "%s", type);
    unwrap(t, "LowCardinality");
    int nullable = unwrap(t, "Nullable");
    if (id == CH_COL_OCCURRED_AT || id == CH_COL_INGESTED_AT)
        return !nullable && time_kind(t, kind);
    if (strcmp(t, "String") != 0) return 0;
    /* route_pattern carries NULLs (CONTRACT §3): a plain String would have to
     * invent a value for them, so it is refused rather than silently ''. */
    if (id == CH_COL_ROUTE_PATTERN && !nullable) return 0;
    *kind = nullable ? CH_KIND_NULLABLE_STRING : CH_KIND_STRING;
    return 1;
}

static int column_id(const char *name)
{
    for (int i = 0; i < CH_COL_COUNT; i++)
        if (strcmp(name, column_names[i]) == 0) return i;
    return -1;
}

/* One DESCRIBE line: name \t type \t default_kind \t ... */
static int describe_line(const char *line, size_t n, ch_table *out, unsigned *seen, ch_error *err)
{
    char name[128], type[64], dkind[32] = "";
    const char *tab1 = memchr(line, '\t', n);
    if (tab1 == NULL) {
        /* The line is not NUL-terminated (tsv, len): bound by n, not by %.60s. */
        ch_error_set(err, 0, 200, 0, "DESCRIBE TABLE: unreadable line '%.*s'",
                     (int)(n < 60 ? n : 60), line);
        return -1;
    }
    const char *rest = tab1 + 1, *end = line + n;
    const char *tab2 = memchr(rest, '\t', (size_t)(end - rest));
    tsv_unescape(line, (size_t)(tab1 - line), name, sizeof(name));
    tsv_unescape(rest, (size_t)((tab2 ? tab2 : end) - rest), type, sizeof(type));
    if (tab2 != NULL) {
        const char *tab3 = memchr(tab2 + 1, '\t', (size_t)(end - tab2 - 1));
        tsv_unescape(tab2 + 1, (size_t)((tab3 ? tab3 : end) - tab2 - 1), dkind, sizeof(dkind));
    }
    int id = column_id(name);
    if (id < 0) {
        /* Columns the server computes itself are never inserted: harmless. */
        if (strcmp(dkind, "MATERIALIZED") == 0 || strcmp(dkind, "ALIAS") == 0) return 0;
        ch_error_set(err, 0, 200, 0, "table has unexpected column %s %s: the encoder writes "
                     "exactly the 11 columns of the telemetry contract", name, type);
        return -1;
    }
    if (*seen & (1u << id)) {
        ch_error_set(err, 0, 200, 0, "DESCRIBE TABLE lists column %s twice", name);
        return -1;
    }
    ch_column *col = &out->cols[out->ncols];
    col->id = (ch_column_id)id;
    snprintf(col->type, sizeof(col->type), "%s", type);
    if (!map_type(col->id, type, &col->kind)) {
        ch_error_set(err, 0, 200, 0, "column %s has type %s, which the encoder cannot write "
                     "(expected %s)", name, type,
                     id == CH_COL_OCCURRED_AT || id == CH_COL_INGESTED_AT
                         ? "DateTime or DateTime64(3)"
                         : id == CH_COL_ROUTE_PATTERN ? "Nullable(String)" : "String");
        return -1;
    }
    *seen |= 1u << id;
    out->ncols++;
    return 0;
}

int ch_table_from_describe(const char *tsv, size_t len, ch_table *out, ch_error *err)
{
    memset(out, 0, sizeof(*out));
    unsigned seen = 0;
    const char *p = tsv, *end = tsv + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        if (n > 0 && describe_line(p, n, out, &seen, err) != 0) return -1;
        p += n + 1;
    }
    for (int i = 0; i < CH_COL_COUNT; i++) {
        if (!(seen & (1u << i))) {
            ch_error_set(err, CH_ERR_NO_SUCH_COLUMN_IN_TABLE, 200, 0,
                         "table lacks column %s (telemetry contract §3)", column_names[i]);
            return -1;
        }
    }
    return 0;
}

int ch_table_describe(ch_client *c, const char *table, ch_table *out, ch_error *err)
{
    if (check_table_name(table, "describe", err) != 0) return -1;
    buf sql = BUF_INIT, resp = BUF_INIT;
    buf_printf(&sql, "DESCRIBE TABLE %s FORMAT TabSeparated", table);
    int rc = ch_query(c, buf_cstr(&sql), &resp, err);
    if (rc == 0) {
        rc = ch_table_from_describe(resp.data ? resp.data : "", resp.len, out, err);
        if (rc != 0 && err != NULL) {
            /* Say which table. */
            char inner[sizeof(err->msg)];
            snprintf(inner, sizeof(inner), "%s", err->msg);
            ch_error_set(err, err->code, err->http_status, 0, "ClickHouse table %s: %s", table, inner);
        }
    }
    buf_free(&sql);
    buf_free(&resp);
    return rc;
}

/* ---- Retention --------------------------------------------------------------------- */

/* Run a query whose TSV answer is one unsigned number. */
static int query_u64(ch_client *c, const char *sql, uint64_t *v, ch_error *err)
{
    buf out = BUF_INIT;
    int rc = ch_query(c, sql, &out, err);
    if (rc == 0) {
        char *endp;
        *v = strtoull(buf_cstr(&out), &endp, 10);
        if (endp == buf_cstr(&out)) {
            ch_error_set(err, 0, 200, 0, "ClickHouse answered '%.40s' where a count was expected",
                         buf_cstr(&out));
            rc = -1;
        }
    }
    buf_free(&out);
    return rc;
}

/* "database = 'db' AND name = 't'" for system.tables. */
static void table_filter(const char *table, buf *out)
{
    const char *dot = strchr(table, '.');
    if (dot) buf_printf(out, "database = '%.*s' AND name = '%s'", (int)(dot - table), table, dot + 1);
    else buf_printf(out, "database = currentDatabase() AND name = '%s'", table);
}

/* engine_full (which holds PARTITION BY ... TTL ...) of the table. */
static int table_engine(ch_client *c, const char *table, buf *engine, ch_error *err)
{
    buf sql = BUF_INIT;
    buf_puts(&sql, "SELECT engine_full FROM system.tables WHERE ");
    table_filter(table, &sql);
    buf_puts(&sql, " FORMAT TabSeparated");
    int rc = ch_query(c, buf_cstr(&sql), engine, err);
    buf_free(&sql);
    if (rc == 0 && engine->len == 0) {
        ch_error_set(err, CH_ERR_UNKNOWN_TABLE, 200, 0, "ClickHouse retention: table %s does not exist",
                     table);
        rc = -1;
    }
    return rc;
}

/* Drop every month partition with no row at or after the cutoff. Only when
 * the table is partitioned by toYYYYMM(occurred_at), so a partition is a month. */
static int drop_expired_partitions(ch_client *c, const char *table, int64_t cutoff_s,
                                   ch_retention_report *rep, ch_error *err)
{
    buf sql = BUF_INIT, out = BUF_INIT;
    /* +1 month of slack: the column's time zone may shift the boundary month. */
    buf_printf(&sql, "SELECT toYYYYMM(occurred_at) AS p, count(), "
               "countIf(occurred_at >= toDateTime(%" PRId64 ")) FROM %s "
               "WHERE toYYYYMM(occurred_at) <= toYYYYMM(toDateTime(%" PRId64 ")) + 1 "
               "GROUP BY p ORDER BY p FORMAT TabSeparated", cutoff_s, table, cutoff_s);
    int rc = ch_query(c, buf_cstr(&sql), &out, err);
    const char *line = buf_cstr(&out);
    while (rc == 0 && *line) {
        unsigned long long month, total, keep;
        if (sscanf(line, "%llu\t%llu\t%llu", &month, &total, &keep) != 3) {
            ch_error_set(err, 0, 200, 0, "ClickHouse retention: unreadable partition line '%.40s'", line);
            rc = -1;
            break;
        }
        if (keep == 0) {
            buf_reset(&sql);
            buf_printf(&sql, "ALTER TABLE %s DROP PARTITION %llu", table, month);
            rc = ch_query(c, buf_cstr(&sql), NULL, err);
            if (rc == 0) {
                rep->partitions_dropped++;
                rep->rows_dropped += total;
                log_info("ClickHouse retention: dropped partition %llu of %s (%llu rows, all older "
                         "than the cutoff)", month, table, total);
            }
        }
        const char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : line + strlen(line);
    }
    buf_free(&sql);
    buf_free(&out);
    return rc;
}

static int delete_expired_rows(ch_client *c, const char *table, int64_t cutoff_s,
                               ch_retention_report *rep, ch_error *err)
{
    buf sql = BUF_INIT;
    buf_printf(&sql, "SELECT count() FROM %s WHERE occurred_at < toDateTime(%" PRId64 ")",
               table, cutoff_s);
    uint64_t n = 0;
    int rc = query_u64(c, buf_cstr(&sql), &n, err);
    if (rc == 0 && n > 0) {
        buf_reset(&sql);
        buf_printf(&sql, "ALTER TABLE %s DELETE WHERE occurred_at < toDateTime(%" PRId64 ")",
                   table, cutoff_s);
        rc = ch_query(c, buf_cstr(&sql), NULL, err);
        if (rc == 0) {
            rep->rows_deleted = n;
            log_info("ClickHouse retention: deleting %llu expired rows of %s (mutation queued)",
                     (unsigned long long)n, table);
        }
    }
    buf_free(&sql);
    return rc;
}

int ch_retention_enforce(ch_client *c, const char *table, int days, int64_t now_us,
                         ch_retention_report *out, ch_error *err)
{
    memset(out, 0, sizeof(*out));
    if (check_table_name(table, "retention", err) != 0) return -1;
    if (days <= 0) {
        ch_error_set(err, 0, 0, 0, "ClickHouse retention: days must be positive, not %d", days);
        return -1;
    }
    int64_t cutoff_us = now_us - (int64_t)days * 86400 * USEC_PER_SEC;
    out->cutoff_s = cutoff_us / USEC_PER_SEC - (cutoff_us % USEC_PER_SEC < 0 ? 1 : 0);

    buf engine = BUF_INIT;
    if (table_engine(c, table, &engine, err) != 0) {
        buf_free(&engine);
        return -1;
    }
    if (strstr(buf_cstr(&engine), " TTL ") != NULL) {
        out->ttl_managed = 1;
        buf_free(&engine);
        return 0;
    }
    int by_month = strstr(buf_cstr(&engine), "PARTITION BY toYYYYMM(occurred_at)") != NULL;
    buf_free(&engine);
    if (by_month && drop_expired_partitions(c, table, out->cutoff_s, out, err) != 0) return -1;
    return delete_expired_rows(c, table, out->cutoff_s, out, err);
}
