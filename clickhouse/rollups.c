/* clickhouse/rollups.c: daily aggregate rollups of the telemetry table, for
 * trends older than the raw rows' 180-day TTL (issue #7 part 6).
 *
 * Owns: the rollup tables and the materialized views that feed them, per
 * server version (DDL, apply, one-time backfill from the raw table), the
 * month-partition retention of rollups on servers without TTL, and the SQL
 * that answers the seven dashboard sections (CONTRACT §6) from rollups.
 * Does not own: the raw table (schema.c), the report's flags, window and
 * rendering (worker/report.c), or sending requests (client.c).
 *
 * Layout: one AggregatingMergeTree per dashboard need, keyed by
 * (org_id_hash, day, <the section's grouping keys>), every metric an
 * AggregateFunction state so rows merge across parts, days and orgs:
 *   <t>_rollup_events    name, route      count, users, sessions  (daily users, top routes)
 *   <t>_rollup_features  feature, surface count, users
 *   <t>_rollup_filters   view, filter_key count, avg(valueCount)
 *   <t>_rollup_charts    chart, action, surface  count, sessions
 *   <t>_rollup_errors    route, boundary, error_class  count, users
 *   <t>_rollup_sessions  (none)           quantiles(durationMs), avg(pagesViewed), avg(interactions)
 * each fed by <table>_mv (CREATE MATERIALIZED VIEW ... TO <table>).
 *
 * Why these choices:
 *  - uniqExact states, not uniq: the dashboard counts users and sessions
 *    with uniqExact, and merged uniqExact states give exactly its numbers
 *    for any window and org set. uniq keeps at most 65536 32-bit hashes, so
 *    it is approximate both above that size and (through hash collisions)
 *    below it; the price of exactness is 16 bytes per distinct id per
 *    rollup row, which daily per-org cardinalities make small.
 *  - quantilesState(0.5, 0.75, 0.9, 0.95): the dashboard's own reservoir
 *    sampler (8192 samples). Merging states that hold fewer samples than
 *    that keeps every value, so the merged answer equals the raw query's;
 *    above it both are samples.
 *  - A route is stored as (route_null UInt8, route String): the dashboard
 *    groups NULL and '' apart (both print as ""), and a Nullable sort key
 *    needs allow_nullable_key on current servers.
 *  - name is String, not LowCardinality: 18.16 takes LowCardinality only as
 *    an experimental setting, and rollup tables are small.
 *  - TTL (day + N days, telemetry_rollup_ttl_days) needs ClickHouse 19.6.
 *    Older servers get no TTL; ch_rollup_retention_enforce drops whole
 *    months older than N days instead.
 *  - Rollups count every row inserted into the raw table: a duplicate the
 *    ReplacingMergeTree collapses later stays counted. On >= 22.2 the
 *    drain's insert_deduplication_token drops a retried block before the
 *    views see it (ClickHouse skips dependent views for a deduplicated
 *    block); on older servers avoid re-inserting.
 *
 * Backfill: a materialized view sees only rows inserted after it exists.
 * With backfill, the views created by this apply get the older rows by
 * INSERT ... SELECT from the raw table, bounded by ingested_at < T, T the
 * first whole server second after the views exist: a row is counted once
 * by the view or once by the backfill. That is exact when no drain inserts
 * during the apply; a batch in flight across T may be counted twice or
 * missed (ingested_at is the drain's clock). A view that already existed is
 * never backfilled again (it would count the raw rows twice): to rebuild,
 * drop the rollup tables and views and apply with backfill. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/timeutil.h"
#include "clickhouse/ch_internal.h"

/* How long apply waits for the server clock to pass the backfill bound. */
#define ROLLUP_CUTOFF_WAIT_MS 5000

/* ---- The rollups ---------------------------------------------------------------- */

/* One rollup. In `select`, {S} and {I} stand for the dialect's string and
 * int payload extractors; its aliases are `names`, in `columns` order. The
 * statements always add org_id_hash and day in front. */
typedef struct rollup_spec {
    const char *suffix;
    const char *columns;   /* DDL after "org_id_hash String, day Date, " */
    const char *key;       /* ORDER BY after "org_id_hash, day" ("" for none) */
    const char *names;     /* the columns after org_id_hash, day */
    const char *select;    /* the select list after org_id_hash, day */
    const char *event;     /* WHERE name = event, or NULL for every event */
} rollup_spec;

static const rollup_spec rollups[] = {
    {"_rollup_events",
     "name String, route_null UInt8, route String, events_state AggregateFunction(count), "
     "users_state AggregateFunction(uniqExact, String), "
     "sessions_state AggregateFunction(uniqExact, String)",
     "name, route_null, route",
     "name, route_null, route, events_state, users_state, sessions_state",
     "CAST(name AS String) AS name, isNull(route_pattern) AS route_null, "
     "ifNull(route_pattern, '') AS route, countState() AS events_state, "
     "uniqExactState(anonymous_user_id) AS users_state, uniqExactState(session_id) AS sessions_state",
     NULL},
    {"_rollup_features",
     "feature String, surface String, views_state AggregateFunction(count), "
     "users_state AggregateFunction(uniqExact, String)",
     "feature, surface",
     "feature, surface, views_state, users_state",
     "{S}(payload_json, 'feature') AS feature, {S}(payload_json, 'surface') AS surface, "
     "countState() AS views_state, uniqExactState(anonymous_user_id) AS users_state",
     "feature_viewed"},
    {"_rollup_filters",
     "view String, filter_key String, changes_state AggregateFunction(count), "
     "value_count_state AggregateFunction(avg, Int64)",
     "view, filter_key",
     "view, filter_key, changes_state, value_count_state",
     "{S}(payload_json, 'view') AS view, {S}(payload_json, 'filterKey') AS filter_key, "
     "countState() AS changes_state, avgState({I}(payload_json, 'valueCount')) AS value_count_state",
     "filter_changed"},
    {"_rollup_charts",
     "chart String, action String, surface String, interactions_state AggregateFunction(count), "
     "sessions_state AggregateFunction(uniqExact, String)",
     "chart, action, surface",
     "chart, action, surface, interactions_state, sessions_state",
     "{S}(payload_json, 'chart') AS chart, {S}(payload_json, 'action') AS action, "
     "{S}(payload_json, 'surface') AS surface, countState() AS interactions_state, "
     "uniqExactState(session_id) AS sessions_state",
     "chart_interacted"},
    {"_rollup_errors",
     "route_null UInt8, route String, boundary String, error_class String, "
     "errors_state AggregateFunction(count), users_state AggregateFunction(uniqExact, String)",
     "route_null, route, boundary, error_class",
     "route_null, route, boundary, error_class, errors_state, users_state",
     "isNull(route_pattern) AS route_null, ifNull(route_pattern, '') AS route, "
     "{S}(payload_json, 'boundary') AS boundary, {S}(payload_json, 'errorClass') AS error_class, "
     "countState() AS errors_state, uniqExactState(anonymous_user_id) AS users_state",
     "client_error"},
    {"_rollup_sessions",
     "duration_state AggregateFunction(quantiles(0.5, 0.75, 0.9, 0.95), Int64), "
     "pages_state AggregateFunction(avg, Int64), interactions_state AggregateFunction(avg, Int64)",
     "",
     "duration_state, pages_state, interactions_state",
     "quantilesState(0.5, 0.75, 0.9, 0.95)({I}(payload_json, 'durationMs')) AS duration_state, "
     "avgState({I}(payload_json, 'pagesViewed')) AS pages_state, "
     "avgState({I}(payload_json, 'interactions')) AS interactions_state",
     "session_ended"},
};
#define NROLLUPS (sizeof rollups / sizeof rollups[0])

static int server_modern(int major) { return major >= 20; }   /* JSONExtract*, DateTime64 */

/* TTL on MergeTree tables arrived in 19.6 (ClickHouse changelog). */
static int server_has_ttl(int major, int minor)
{
    return major > 19 || (major == 19 && minor >= 6);
}

/* Copy tmpl to out with {S}/{I} replaced by the extractors. */
static void expand(buf *out, const char *tmpl, int modern)
{
    const char *xs = modern ? "JSONExtractString" : "visitParamExtractString";
    const char *xi = modern ? "JSONExtractInt" : "visitParamExtractInt";
    for (const char *p = tmpl; *p; p++) {
        if (p[0] == '{' && (p[1] == 'S' || p[1] == 'I') && p[2] == '}') {
            buf_puts(out, p[1] == 'S' ? xs : xi);
            p += 2;
        } else {
            buf_putc(out, *p);
        }
    }
}

static void create_table_sql(buf *o, const rollup_spec *r, const char *table, int major,
                             int minor, int ttl_days)
{
    buf_printf(o,
        "CREATE TABLE IF NOT EXISTS %s%s (\n"
        "    org_id_hash String, day Date, %s\n"
        ") ENGINE = AggregatingMergeTree()\n"
        "PARTITION BY toYYYYMM(day)\n"
        "ORDER BY (org_id_hash, day%s%s)",
        table, r->suffix, r->columns, r->key[0] ? ", " : "", r->key);
    if (server_has_ttl(major, minor))
        buf_printf(o, "\nTTL day + INTERVAL %d DAY", ttl_days);
}

/* "SELECT ... FROM raw [WHERE ...] GROUP BY ...": shared by the view and
 * the backfill; `bound` (may be NULL) is an extra condition. */
static void select_sql(buf *o, const rollup_spec *r, const char *table, int modern,
                       const char *bound)
{
    buf_puts(o, "SELECT org_id_hash, toDate(occurred_at) AS day, ");
    expand(o, r->select, modern);
    buf_printf(o, "\nFROM %s", table);
    if (r->event || bound) buf_puts(o, " WHERE ");
    if (r->event) buf_printf(o, "name = '%s'", r->event);
    if (r->event && bound) buf_puts(o, " AND ");
    if (bound) buf_puts(o, bound);
    buf_printf(o, "\nGROUP BY org_id_hash, day%s%s", r->key[0] ? ", " : "", r->key);
}

static void create_view_sql(buf *o, const rollup_spec *r, const char *table, int modern)
{
    buf_printf(o, "CREATE MATERIALIZED VIEW IF NOT EXISTS %s%s_mv TO %s%s AS\n", table, r->suffix,
               table, r->suffix);
    select_sql(o, r, table, modern, NULL);
}

static void backfill_sql(buf *o, const rollup_spec *r, const char *table, int modern,
                         int64_t cutoff_s)
{
    char bound[96];
    if (cutoff_s < 0)   /* for display: the bound is only known at apply time */
        snprintf(bound, sizeof bound, "ingested_at < T");
    else if (modern)
        snprintf(bound, sizeof bound, "ingested_at < toDateTime64(%" PRId64 ", 3, 'UTC')", cutoff_s);
    else
        snprintf(bound, sizeof bound, "ingested_at < toDateTime(%" PRId64 ", 'UTC')", cutoff_s);
    buf_printf(o, "INSERT INTO %s%s (org_id_hash, day, %s)\n", table, r->suffix, r->names);
    select_sql(o, r, table, modern, bound);
}

void ch_rollups_ddl(int major, int minor, const char *table, int ttl_days, buf *out)
{
    int modern = server_modern(major);
    for (size_t i = 0; i < NROLLUPS; i++) {
        create_table_sql(out, &rollups[i], table, major, minor, ttl_days);
        buf_puts(out, ";\n\n");
        create_view_sql(out, &rollups[i], table, modern);
        buf_puts(out, ";\n\n");
    }
}

void ch_rollups_backfill_sql(int major, const char *table, int64_t cutoff_s, buf *out)
{
    for (size_t i = 0; i < NROLLUPS; i++) {
        backfill_sql(out, &rollups[i], table, server_modern(major), cutoff_s);
        buf_puts(out, ";\n\n");
    }
}

/* ---- Apply ------------------------------------------------------------------------ */

static int check_names(const char *table, const char *what, ch_error *err)
{
    char longest[CH_IDENT_MAX + 64];
    snprintf(longest, sizeof longest, "%s_rollup_features_mv", table ? table : "");
    if (table && ch_ident_valid(table) && ch_ident_valid(longest)) return 0;
    ch_error_set(err, 0, 0, 0, "ClickHouse %s: '%.64s' is not a valid table name (or too long "
                 "for its rollup names)", what, table ? table : "(null)");
    return -1;
}

/* "database = 'db' AND name IN (" or the current database. */
static void tables_where(buf *o, const char *table, const char *db)
{
    const char *dot = strchr(table, '.');
    if (dot) buf_printf(o, "database = '%.*s'", (int)(dot - table), table);
    else if (db) buf_printf(o, "database = '%s'", db);
    else buf_puts(o, "database = currentDatabase()");
}

static const char *bare(const char *table)
{
    const char *dot = strchr(table, '.');
    return dot ? dot + 1 : table;
}

/* Which of the rollup tables or views exist: bit i set for rollups[i]. */
static int existing(ch_client *c, const char *table, int views, unsigned *mask, ch_error *err)
{
    buf sql = BUF_INIT, out = BUF_INIT;
    buf_puts(&sql, "SELECT name FROM system.tables WHERE ");
    tables_where(&sql, table, ch_client_database(c));
    buf_puts(&sql, " AND name IN (");
    for (size_t i = 0; i < NROLLUPS; i++)
        buf_printf(&sql, "%s'%s%s%s'", i ? ", " : "", bare(table), rollups[i].suffix,
                   views ? "_mv" : "");
    buf_puts(&sql, ") FORMAT TabSeparated");
    int rc = ch_query(c, buf_cstr(&sql), &out, err);
    *mask = 0;
    for (const char *line = buf_cstr(&out); rc == 0 && *line;) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        for (size_t i = 0; i < NROLLUPS; i++) {
            char want[CH_IDENT_MAX + 64];
            snprintf(want, sizeof want, "%s%s%s", bare(table), rollups[i].suffix, views ? "_mv" : "");
            if (strlen(want) == n && memcmp(want, line, n) == 0) *mask |= 1u << i;
        }
        line += n + (nl ? 1 : 0);
    }
    buf_free(&sql);
    buf_free(&out);
    return rc;
}

int ch_rollups_exist(ch_client *c, const char *table, int *all, ch_error *err)
{
    if (check_names(table, "rollups", err) != 0) return -1;
    unsigned tables;
    if (existing(c, table, 0, &tables, err) != 0) return -1;
    *all = tables == (1u << NROLLUPS) - 1;
    return 0;
}

static int server_now(ch_client *c, int64_t *now_s, ch_error *err)
{
    buf out = BUF_INIT;
    int rc = ch_query(c, "SELECT toUnixTimestamp(now())", &out, err);
    if (rc == 0) {
        char *end;
        *now_s = strtoll(buf_cstr(&out), &end, 10);
        if (end == buf_cstr(&out)) {
            ch_error_set(err, 0, 200, 0, "ClickHouse answered '%.40s' for now()", buf_cstr(&out));
            rc = -1;
        }
    }
    buf_free(&out);
    return rc;
}

/* The backfill bound: the first whole server second after the views exist,
 * waited for, so every row a view missed has ingested_at below it. */
static int backfill_cutoff(ch_client *c, int64_t *cutoff_s, ch_error *err)
{
    int64_t now_s;
    if (server_now(c, &now_s, err) != 0) return -1;
    *cutoff_s = now_s + 1;
    for (int waited = 0; now_s < *cutoff_s && waited < ROLLUP_CUTOFF_WAIT_MS; waited += 100) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (server_now(c, &now_s, err) != 0) return -1;
    }
    return 0;
}

static int run(ch_client *c, buf *sql, ch_error *err)
{
    int rc = ch_query(c, buf_cstr(sql), NULL, err);
    buf_reset(sql);
    return rc;
}

static int backfill(ch_client *c, const char *table, int major, unsigned fill,
                    ch_rollup_result *out, ch_error *err)
{
    int64_t cutoff_s;
    if (backfill_cutoff(c, &cutoff_s, err) != 0) return -1;
    out->backfill_cutoff_s = cutoff_s;
    buf sql = BUF_INIT, ans = BUF_INIT;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < NROLLUPS; i++) {
        if (!(fill & (1u << i))) continue;
        backfill_sql(&sql, &rollups[i], table, server_modern(major), cutoff_s);
        if ((rc = run(c, &sql, err)) == 0) out->backfilled++;
    }
    if (rc == 0) {
        buf_printf(&sql, "SELECT count() FROM %s WHERE ingested_at < toDateTime(%" PRId64 ", 'UTC')",
                   table, cutoff_s);
        rc = ch_query(c, buf_cstr(&sql), &ans, err);
        if (rc == 0) out->backfill_rows = strtoull(buf_cstr(&ans), NULL, 10);
    }
    buf_free(&sql);
    buf_free(&ans);
    return rc;
}

int ch_rollups_apply(ch_client *c, const char *table, int ttl_days, int want_backfill,
                     ch_rollup_result *out, ch_error *err)
{
    memset(out, 0, sizeof *out);
    if (check_names(table, "rollups", err) != 0) return -1;
    if (ttl_days <= 0) {
        ch_error_set(err, 0, 0, 0, "ClickHouse rollups: TTL days must be positive, not %d", ttl_days);
        return -1;
    }
    int major, minor;
    if (ch_server_version(c, &major, &minor, err) != 0) return -1;
    out->ttl = server_has_ttl(major, minor);
    /* The views read the raw table: make sure it (and its database) exists. */
    if (ch_schema_apply(c, table, err) != 0) return -1;

    unsigned views_before;
    if (existing(c, table, 1, &views_before, err) != 0) return -1;
    buf sql = BUF_INIT;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < NROLLUPS; i++) {
        create_table_sql(&sql, &rollups[i], table, major, minor, ttl_days);
        if ((rc = run(c, &sql, err)) != 0) break;
        create_view_sql(&sql, &rollups[i], table, server_modern(major));
        rc = run(c, &sql, err);
    }
    buf_free(&sql);
    if (rc != 0) return -1;
    out->created = NROLLUPS - (size_t)__builtin_popcount(views_before);

    unsigned fill = ~views_before & ((1u << NROLLUPS) - 1);
    if (want_backfill && fill == 0) {
        out->backfill_skipped = 1;
        log_info("ClickHouse rollups of %s: views already existed, backfill skipped (it would "
                 "count the raw rows twice)", table);
    } else if (want_backfill && backfill(c, table, major, fill, out, err) != 0) {
        return -1;
    }
    log_info("ClickHouse rollups of %s ready on %s (server %d.%d): %zu view(s) created, %s, "
             "%zu rollup(s) backfilled", table, ch_client_redacted_url(c), major, minor,
             out->created, out->ttl ? "TTL set" : "no TTL (retention by month partitions)",
             out->backfilled);
    return 0;
}

/* ---- Retention without TTL ---------------------------------------------------------- */

int ch_rollup_retention_enforce(ch_client *c, const char *table, int days, int64_t now_us,
                                size_t *partitions_dropped, ch_error *err)
{
    *partitions_dropped = 0;
    if (check_names(table, "rollup retention", err) != 0) return -1;
    if (days <= 0) {
        ch_error_set(err, 0, 0, 0, "ClickHouse rollup retention: days must be positive, not %d", days);
        return -1;
    }
    int major, minor;
    if (ch_server_version(c, &major, &minor, err) != 0) return -1;
    if (server_has_ttl(major, minor)) return 0;   /* the tables' TTL does it */
    int64_t cutoff_s = now_us / USEC_PER_SEC - (int64_t)days * 86400;
    buf sql = BUF_INIT, out = BUF_INIT;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < NROLLUPS; i++) {
        /* Whole months only: a month before the cutoff's month holds no day
         * newer than the cutoff. The boundary month stays until it is whole. */
        buf_printf(&sql, "SELECT DISTINCT toYYYYMM(day) AS p FROM %s%s WHERE p < "
                   "toYYYYMM(toDate(toDateTime(%" PRId64 ", 'UTC'))) ORDER BY p FORMAT TabSeparated",
                   table, rollups[i].suffix, cutoff_s);
        buf_reset(&out);
        rc = ch_query(c, buf_cstr(&sql), &out, err);
        buf_reset(&sql);
        for (const char *p = buf_cstr(&out); rc == 0 && *p;) {
            unsigned long month = strtoul(p, (char **)&p, 10);
            if (*p == '\n') p++;
            buf_printf(&sql, "ALTER TABLE %s%s DROP PARTITION %lu", table, rollups[i].suffix, month);
            if ((rc = run(c, &sql, err)) == 0) {
                (*partitions_dropped)++;
                log_info("ClickHouse rollup retention: dropped month %lu of %s%s (older than %d "
                         "days)", month, table, rollups[i].suffix, days);
            }
        }
    }
    buf_free(&sql);
    buf_free(&out);
    return rc;
}

/* ---- Dashboard sections from rollups -------------------------------------------------- */

/* Each answers with the columns, order and types of the raw-table query of
 * the same section in worker/report.c, so the report reads both alike. */
int ch_rollup_section_sql(const char *section, const char *table, const char *where, buf *o)
{
    if (!strcmp(section, "daily_active_users")) {
        buf_printf(o,
            "SELECT day, uniqExactMerge(users_state) AS active_anonymous_users\n"
            "FROM %s_rollup_events WHERE %s\nGROUP BY day ORDER BY day", table, where);
    } else if (!strcmp(section, "top_routes")) {
        buf_printf(o,
            "SELECT if(route_null, NULL, route) AS route_pattern, countMerge(events_state) AS events,\n"
            "       uniqExactMerge(sessions_state) AS sessions,\n"
            "       uniqExactMerge(users_state) AS anonymous_users\n"
            "FROM %s_rollup_events WHERE %s AND name = 'page_viewed'\n"
            "GROUP BY route_null, route ORDER BY events DESC, route_null, route LIMIT %d",
            table, where, CH_ROLLUP_TOP_ROUTES);
    } else if (!strcmp(section, "feature_views")) {
        buf_printf(o,
            "SELECT feature, surface, countMerge(views_state) AS views,\n"
            "       uniqExactMerge(users_state) AS anonymous_users\n"
            "FROM %s_rollup_features WHERE %s\n"
            "GROUP BY feature, surface ORDER BY views DESC, feature, surface", table, where);
    } else if (!strcmp(section, "filter_changes")) {
        buf_printf(o,
            "SELECT view, filter_key, countMerge(changes_state) AS changes,\n"
            "       avgMerge(value_count_state) AS avg_value_count\n"
            "FROM %s_rollup_filters WHERE %s\n"
            "GROUP BY view, filter_key ORDER BY changes DESC, view, filter_key", table, where);
    } else if (!strcmp(section, "chart_interactions")) {
        buf_printf(o,
            "SELECT chart, action, surface, countMerge(interactions_state) AS interactions,\n"
            "       uniqExactMerge(sessions_state) AS sessions\n"
            "FROM %s_rollup_charts WHERE %s\n"
            "GROUP BY chart, action, surface ORDER BY interactions DESC, chart, action, surface",
            table, where);
    } else if (!strcmp(section, "client_errors")) {
        buf_printf(o,
            "SELECT if(route_null, NULL, route) AS route_pattern, boundary, error_class,\n"
            "       countMerge(errors_state) AS errors,\n"
            "       uniqExactMerge(users_state) AS affected_anonymous_users\n"
            "FROM %s_rollup_errors WHERE %s\n"
            "GROUP BY route_null, route, boundary, error_class\n"
            "ORDER BY errors DESC, route_null, route, boundary, error_class", table, where);
    } else if (!strcmp(section, "session_summary")) {
        buf_printf(o,
            "SELECT q[1], q[2], q[3], q[4], pages, interactions FROM (\n"
            "  SELECT quantilesMerge(0.5, 0.75, 0.9, 0.95)(duration_state) AS q,\n"
            "         avgMerge(pages_state) AS pages, avgMerge(interactions_state) AS interactions\n"
            "  FROM %s_rollup_sessions WHERE %s)", table, where);
    } else {
        return -1;
    }
    return 0;
}
