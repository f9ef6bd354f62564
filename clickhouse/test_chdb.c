/* clickhouse/test_chdb.c: the client against a modern ClickHouse (chDB 26.x
 * in-process, the chdb:// backend), for what the Debian 18.16 server of the
 * other tests cannot show: the production DDL (DateTime64(3, 'UTC'),
 * LowCardinality, TTL), millisecond round trips, insert_deduplication_token,
 * and the dashboard's modern SQL (tests/chdb/dashboard.sql).
 *
 * Needs libchdb.so (tests/chdb/fetch.sh): PTEL_CHDB_LIB, else
 * $PTEL_SOURCE_ROOT/var/chdb/libchdb.so, else chdb.c's defaults. Without it
 * the program exits 77 (skipped), or fails when PTEL_REQUIRE_CHDB=1.
 *
 * The engine holds one data directory per process, and Check runs each test
 * in a forked child: the parent never loads the library (a probe child does),
 * all tests share one temporary directory, and each uses its own tables. */
#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clickhouse/ch_chdb.h"
#include "clickhouse/ch_internal.h"

static char data_dir[256];
static char url[320];
static int table_seq;

/* ---- Fixtures --------------------------------------------------------------------- */

static void must(int rc, const ch_error *err)
{
    ck_assert_msg(rc == 0, "%s", err->msg);
}

static ch_client *client_for(const char *u)
{
    ch_error err;
    ch_client *c = ch_client_new(u, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    return c;
}

static char *new_table(ch_client *c, ch_table *described)
{
    char name[64];
    snprintf(name, sizeof(name), "ptel_chdb_%d_%d", (int)getpid(), ++table_seq);
    ch_error err;
    must(ch_schema_apply(c, name, &err), &err);
    if (described) must(ch_table_describe(c, name, described, &err), &err);
    return strdup(name);
}

static void drop_table(ch_client *c, char *name)
{
    buf sql = BUF_INIT;
    buf_printf(&sql, "DROP TABLE IF EXISTS %s", name);
    ch_error err;
    must(ch_query(c, buf_cstr(&sql), NULL, &err), &err);
    buf_free(&sql);
    free(name);
}

/* The one-line answer of a query, without its newline. */
static char *query1(ch_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *query1(ch_client *c, const char *fmt, ...)
{
    buf sql = BUF_INIT, out = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&sql, fmt, ap);
    va_end(ap);
    ch_error err;
    must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
    buf_free(&sql);
    if (out.len > 0 && out.data[out.len - 1] == '\n') out.data[--out.len] = '\0';
    char *s = strdup(buf_cstr(&out));
    buf_free(&out);
    return s;
}

static long long count_of(ch_client *c, const char *table)
{
    char *s = query1(c, "SELECT count() FROM %s", table);
    long long n = atoll(s);
    free(s);
    return n;
}

/* Midnight UTC 30 days ago: the dashboard window starts here. Rows are
 * dated from it, not from a fixed date, because the production table's TTL
 * (180 days) makes the engine delete older rows in background merges. */
#define DAY_S 86400LL
static int64_t T0_S;

/* "YYYY-MM-DD" (len 10) or "YYYY-MM-DD hh:mm:ss" of epoch seconds, UTC. */
static void utc_text(int64_t s, int with_time, char *out, size_t n)
{
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, with_time ? "%Y-%m-%d %H:%M:%S" : "%Y-%m-%d", &tm);
}

static event_row simple_row(const char *event_id, int64_t occurred_at_us)
{
    event_row r = {.org_id_hash = "org", .event_id = (char *)event_id, .name = "page_viewed",
                   .schema_version = "1", .session_id = "s", .anonymous_user_id = "u",
                   .route_pattern = "/r", .payload_json = "{}",
                   .occurred_at_us = occurred_at_us, .source = "dev-health-web"};
    return r;
}

/* ---- Loading and basics ---------------------------------------------------------- */

START_TEST(test_missing_library_names_the_fetch_script)
{
    const char *fork_mode = getenv("CK_FORK");
    if (fork_mode && strcmp(fork_mode, "no") == 0) return;   /* loaded once per process */
    setenv(CH_CHDB_LIB_ENV, "/nonexistent/libchdb.so", 1);
    ch_error err;
    ch_client *c = ch_client_new(url, &err);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_msg(strstr(err.msg, "tests/chdb/fetch.sh") != NULL, "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "/nonexistent/libchdb.so") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_url_forms)
{
    ch_error err;
    ck_assert_ptr_null(ch_client_new("chdb://", &err));
    ck_assert_msg(strstr(err.msg, "data directory") != NULL, "%s", err.msg);
    ck_assert_ptr_null(ch_client_new("chdb:///tmp/x?max_threads=2", &err));
    ck_assert_msg(strstr(err.msg, "database=") != NULL, "%s", err.msg);
    ck_assert_ptr_null(ch_client_new("chdb:///tmp/x?database=a-b", &err));
}
END_TEST

START_TEST(test_version_is_modern_and_query_answers_tsv)
{
    ch_client *c = client_for(url);
    int major = -1, minor = -1;
    ch_error err;
    must(ch_server_version(c, &major, &minor, &err), &err);
    ck_assert_int_ge(major, 23);
    buf out = BUF_INIT;
    must(ch_query(c, "SELECT 1 + 1, 'a\\tb'", &out, &err), &err);
    ck_assert_str_eq(buf_cstr(&out), "2\ta\\tb\n");
    buf_free(&out);
    ck_assert_str_eq(ch_client_redacted_url(c), url);
    ch_client_stats st;
    ch_client_stats_get(c, &st);
    ck_assert_uint_eq(st.requests, 2);
    ck_assert_uint_eq(st.failures, 0);
    ch_client_free(c);
}
END_TEST

START_TEST(test_total_timeout_is_a_transient_159)
{
    ch_client *c = client_for(url);
    ch_client_set_timeouts(c, 0, 300);
    ch_error err;
    ck_assert_int_eq(ch_query(c, "SELECT sleep(2)", NULL, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_TIMEOUT_EXCEEDED);
    ck_assert_int_eq(err.transient, 1);
    ch_client_set_timeouts(c, 0, 60000);
    buf out = BUF_INIT;
    must(ch_query(c, "SELECT sleep(0.5)", &out, &err), &err);
    buf_free(&out);
    ch_client_free(c);
}
END_TEST

/* ---- Errors -------------------------------------------------------------------------- */

START_TEST(test_errors_carry_clickhouse_codes_and_verdicts)
{
    ch_client *c = client_for(url);
    ch_error err;
    ck_assert_int_eq(ch_query(c, "SELECT * FROM no_such_table_here", NULL, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_UNKNOWN_TABLE);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_int_eq(ch_error_blames_rows(&err), 0);
    ck_assert_msg(strncmp(err.msg, "chDB permanent error (code 60): ", 32) == 0, "%s", err.msg);

    ck_assert_int_eq(ch_query(c, "SELEC 1", NULL, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_SYNTAX_ERROR);

    /* A RowBinary body cut inside a value: the rows are to blame. */
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_batch *b = ch_batch_new(&tab, CH_FORMAT_ROWBINARY);
    event_row r = simple_row("e1", T0_S * 1000000);
    ck_assert_int_eq(ch_batch_add(b, &r, T0_S * 1000000), 0);
    size_t len;
    const char *body = ch_batch_slice(b, 0, 1, &len);
    buf sql = BUF_INIT;
    buf_printf(&sql, "INSERT INTO %s FORMAT RowBinary", t);
    ck_assert_int_eq(ch_request(c, 0, buf_cstr(&sql), NULL, body, len - 3, NULL, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_CANNOT_READ_ALL_DATA);
    ck_assert_int_eq(ch_error_blames_rows(&err), 1);

    /* A JSONEachRow time the column cannot parse: the rows again. */
    buf_reset(&sql);
    buf_printf(&sql, "INSERT INTO %s (event_id, occurred_at) FORMAT JSONEachRow", t);
    static const char bad[] = "{\"event_id\":\"x\",\"occurred_at\":\"not a time\"}\n";
    ck_assert_int_eq(ch_request(c, 0, buf_cstr(&sql), NULL, bad, sizeof(bad) - 1, NULL, &err), -1);
    ck_assert_msg(ch_error_blames_rows(&err), "code %d: %s", err.code, err.msg);
    ck_assert_int_eq(count_of(c, t), 0);

    ch_client_stats st;
    ch_client_stats_get(c, &st);
    ck_assert_uint_eq(st.failures, 4);
    buf_free(&sql);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

/* ---- Schema ------------------------------------------------------------------------ */

START_TEST(test_ddl_settings_only_where_the_token_exists)
{
    buf out = BUF_INIT;
    ch_schema_ddl(20, 1, "t", &out);
    ck_assert_ptr_null(strstr(buf_cstr(&out), "SETTINGS"));
    buf_reset(&out);
    ch_schema_ddl(22, 1, "t", &out);
    ck_assert_ptr_null(strstr(buf_cstr(&out), "SETTINGS"));
    buf_reset(&out);
    ch_schema_ddl(22, 2, "t", &out);
    ck_assert_msg(strstr(buf_cstr(&out), "DELETE\nSETTINGS non_replicated_deduplication_window = ")
                  != NULL, "%s", buf_cstr(&out));
    buf_free(&out);
}
END_TEST

START_TEST(test_production_ddl_applied)
{
    ch_client *c = client_for(url);
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_error err;
    must(ch_schema_apply(c, t, &err), &err);   /* idempotent */
    char *ddl = query1(c, "SHOW CREATE TABLE %s FORMAT TabSeparatedRaw", t);
    static const char *const want[] = {
        "`occurred_at` DateTime64(3, 'UTC')", "`ingested_at` DateTime64(3, 'UTC')",
        "`name` LowCardinality(String)", "`source` LowCardinality(String)",
        "`route_pattern` Nullable(String)", "ENGINE = ReplacingMergeTree(ingested_at)",
        "PARTITION BY toYYYYMM(occurred_at)",
        "ORDER BY (org_id_hash, name, occurred_at, event_id)",
        "TTL toDateTime(occurred_at) + toIntervalDay(180)",
        "non_replicated_deduplication_window = 10000",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_msg(strstr(ddl, want[i]) != NULL, "no '%s' in:\n%s", want[i], ddl);
    free(ddl);
    ck_assert_int_eq(tab.cols[CH_COL_OCCURRED_AT].kind, CH_KIND_DATETIME64_3);
    ck_assert_int_eq(tab.cols[CH_COL_INGESTED_AT].kind, CH_KIND_DATETIME64_3);
    ck_assert_int_eq(tab.cols[CH_COL_ROUTE_PATTERN].kind, CH_KIND_NULLABLE_STRING);
    /* The retention job leaves TTL tables to the server. */
    ch_retention_report rep;
    must(ch_retention_enforce(c, t, 180, (T0_S + 400 * DAY_S) * 1000000, &rep, &err), &err);
    ck_assert_int_eq(rep.ttl_managed, 1);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

START_TEST(test_database_from_url_is_created_and_used)
{
    char u[400];
    snprintf(u, sizeof(u), "%s?database=ptel_db_%d", url, (int)getpid());
    ch_client *c = client_for(u);
    ck_assert_ptr_nonnull(ch_client_database(c));
    char *t = new_table(c, NULL);
    char *db = query1(c, "SELECT database FROM system.tables WHERE name = '%s'", t);
    ck_assert_str_eq(db, ch_client_database(c));
    free(db);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

/* ---- Inserts --------------------------------------------------------------------------- */

static void roundtrip_ms(ch_format format)
{
    ch_client *c = client_for(url);
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_batch *b = ch_batch_new(&tab, format);
    /* .123456 s: stored as .123 (truncated toward the past, CONTRACT §3). */
    int64_t occurred = (T0_S + 3723) * 1000000 + 123456;
    int64_t ingested = (T0_S + 7200) * 1000000 + 999999;
    event_row r = simple_row("ms", occurred);
    r.route_pattern = NULL;
    ck_assert_int_eq(ch_batch_add(b, &r, ingested), 0);
    ch_error err;
    must(ch_insert(c, t, b, NULL, &err), &err);
    char *got = query1(c, "SELECT occurred_at, toUnixTimestamp64Milli(occurred_at), ingested_at, "
                       "route_pattern IS NULL FROM %s WHERE event_id = 'ms'", t);
    char t1[32], t2[32], want[128];
    utc_text(T0_S + 3723, 1, t1, sizeof(t1));
    utc_text(T0_S + 7200, 1, t2, sizeof(t2));
    snprintf(want, sizeof(want), "%s.123\t%lld\t%s.999\t1", t1, (long long)(T0_S + 3723) * 1000 + 123, t2);
    ck_assert_str_eq(got, want);
    free(got);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}

START_TEST(test_datetime64_millisecond_roundtrip_rowbinary) { roundtrip_ms(CH_FORMAT_ROWBINARY); }
END_TEST

START_TEST(test_datetime64_millisecond_roundtrip_jsoneachrow) { roundtrip_ms(CH_FORMAT_JSONEACHROW); }
END_TEST

START_TEST(test_binary_and_unicode_strings_roundtrip)
{
    ch_client *c = client_for(url);
    ch_table tab;
    char *t = new_table(c, &tab);
    static const char payload[] = "{\"k\":\"tab\\t nl\\n quote\\\" \\u00e9 \xc3\xa9 \xf0\x9f\x98\x80\"}";
    for (int f = 0; f < 2; f++) {
        ch_batch *b = ch_batch_new(&tab, f ? CH_FORMAT_JSONEACHROW : CH_FORMAT_ROWBINARY);
        event_row r = simple_row(f ? "json" : "rb", T0_S * 1000000);
        r.payload_json = (char *)payload;
        r.session_id = "\x01\x7f'\\";
        ck_assert_int_eq(ch_batch_add(b, &r, T0_S * 1000000), 0);
        ch_error err;
        must(ch_insert(c, t, b, NULL, &err), &err);
        ch_batch_free(b);
    }
    char *got = query1(c, "SELECT countIf(payload_json = '%s' AND session_id = '\\x01\\x7f\\'\\\\') "
                       "FROM %s", "{\"k\":\"tab\\\\t nl\\\\n quote\\\\\" \\\\u00e9 \xc3\xa9 \xf0\x9f\x98\x80\"}", t);
    ck_assert_str_eq(got, "2");
    free(got);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

static void insert_n(ch_client *c, const char *t, const ch_table *tab, int n, const char *token)
{
    ch_batch *b = ch_batch_new(tab, ch_format_default());
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "ev-%d", i);
        event_row r = simple_row(id, (T0_S + i) * 1000000);
        ck_assert_int_eq(ch_batch_add(b, &r, (T0_S + 100) * 1000000), 0);
    }
    ch_error err;
    must(ch_insert(c, t, b, token, &err), &err);
    ch_batch_free(b);
}

START_TEST(test_dedup_token_drops_a_retried_batch)
{
    ch_client *c = client_for(url);
    ch_table tab;
    char *t = new_table(c, &tab);
    insert_n(c, t, &tab, 50, "ptel-token-a");
    insert_n(c, t, &tab, 50, "ptel-token-a");        /* the retry: dropped */
    ck_assert_int_eq(count_of(c, t), 50);           /* without FINAL */
    insert_n(c, t, &tab, 50, "ptel-token-b");        /* same rows, new token: stored */
    ck_assert_int_eq(count_of(c, t), 100);
    /* The token is per statement: the session does not keep it. */
    char *tok = query1(c, "SELECT getSetting('insert_deduplication_token')");
    ck_assert_str_eq(tok, "");
    free(tok);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

/* Why the DDL carries the window: without it the same retry is stored twice. */
START_TEST(test_dedup_token_needs_the_table_setting)
{
    ch_client *c = client_for(url);
    buf ddl = BUF_INIT;
    char name[64];
    snprintf(name, sizeof(name), "ptel_chdb_nowin_%d", (int)getpid());
    ch_schema_ddl(20, 1, name, &ddl);                /* the DDL without SETTINGS */
    ch_error err;
    must(ch_query(c, buf_cstr(&ddl), NULL, &err), &err);
    buf_free(&ddl);
    ch_table tab;
    must(ch_table_describe(c, name, &tab, &err), &err);
    insert_n(c, name, &tab, 10, "ptel-token-a");
    insert_n(c, name, &tab, 10, "ptel-token-a");
    ck_assert_int_eq(count_of(c, name), 20);
    drop_table(c, strdup(name));
    ch_client_free(c);
}
END_TEST

START_TEST(test_insert_range_inserts_only_the_slice)
{
    ch_client *c = client_for(url);
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_batch *b = ch_batch_new(&tab, CH_FORMAT_ROWBINARY);
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof(id), "r%d", i);
        event_row r = simple_row(id, (T0_S + i) * 1000000);
        ck_assert_int_eq(ch_batch_add(b, &r, T0_S * 1000000), 0);
    }
    ch_error err;
    must(ch_insert_range(c, t, b, 3, 4, "slice-1", &err), &err);
    char *got = query1(c, "SELECT arrayStringConcat(groupArray(event_id), ',') FROM "
                       "(SELECT event_id FROM %s ORDER BY event_id)", t);
    ck_assert_str_eq(got, "r3,r4,r5,r6");
    free(got);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

/* ---- Dashboard ------------------------------------------------------------------------- */

/* Rows spread over orgs, names, days (one before the window, one at its
 * exclusive end), users, sessions, routes (NULL included) and payload values;
 * the expected answers are computed here from the same generator. */
#define DASH_ROWS 1200
#define DASH_USERS 23       /* < 32: distinct sets fit a bitmask */
#define DASH_SESSIONS 31
#define DASH_MAX_LINES 64
#define DASH_MAX_VALUES 8

static const char dash_org[] = "8d969eef6ecad3c29a3a629280e686cf0c3f5d5a86aff3ca12020c923adc6c92";
static const char dash_other_org[] = "0000000000000000000000000000000000000000000000000000000000000000";
static const char *const dash_names[] = {"page_viewed", "feature_viewed", "filter_changed",
                                         "chart_interacted", "client_error", "session_ended"};

typedef struct dash_gen {
    int other_org, name, day, user, session, route;   /* route < 0: NULL */
    int a, b, v, interactions, duration;
    int64_t t_us;
} dash_gen;

static dash_gen dash_row(int i)
{
    uint32_t h = (uint32_t)i * 2654435761u;
    dash_gen g = {
        .other_org = (h >> 28) % 7 == 0, .name = i % 6, .day = (i / 6) % 32 - 1,
        .user = (int)((h >> 20) % DASH_USERS), .session = (int)((h >> 3) % DASH_SESSIONS),
        .route = (h >> 24) % 5 == 4 ? -1 : (int)((h >> 24) % 5), .a = (int)((h >> 8) % 3),
        .b = (int)((h >> 12) % 2), .v = (int)((h >> 16) % 4), .interactions = (int)((h >> 13) % 5),
        .duration = (int)((h >> 5) % 200) * 50,
    };
    g.t_us = ((T0_S + g.day * DAY_S + (int64_t)(h % 86400)) * 1000 + i % 1000) * 1000;
    return g;
}

static int dash_in_window(const dash_gen *g)
{
    return !g->other_org && g->day >= 0 && g->day < 30;
}

static void dash_payload(const dash_gen *g, char *out, size_t n)
{
    switch (g->name) {
    case 1: snprintf(out, n, "{\"feature\":\"f%d\",\"surface\":\"s%d\"}", g->a, g->b); break;
    case 2: snprintf(out, n, "{\"filterKey\":\"k%d\",\"valueCount\":%d,\"view\":\"v%d\"}", g->b,
                     g->v, g->a); break;
    case 3: snprintf(out, n, "{\"action\":\"a%d\",\"chart\":\"c%d\",\"surface\":\"s%d\"}", g->b,
                     g->a, g->v % 2); break;
    case 4: snprintf(out, n, "{\"boundary\":\"b%d\",\"errorClass\":\"E%d\"}", g->b, g->a); break;
    case 5: snprintf(out, n, "{\"durationMs\":%d,\"interactions\":%d,\"pagesViewed\":%d}",
                     g->duration, g->interactions, g->v); break;
    default: snprintf(out, n, "{\"page\":\"p%d\"}", g->a);
    }
}

/* One expected answer line: key fields (text, as TSV prints them) and values. */
typedef struct dash_line {
    char key[3][16];
    int nkey;
    long n;
    double sum;
    uint32_t users, sessions;
    double values[DASH_MAX_VALUES];
    int nvalues;
    int seen;
} dash_line;

typedef struct dash_expect {
    dash_line lines[DASH_MAX_LINES];
    size_t n;
} dash_expect;

static dash_line *dash_group(dash_expect *e, int nkey, const char *k0, const char *k1, const char *k2)
{
    const char *k[3] = {k0, k1, k2};
    for (size_t i = 0; i < e->n; i++) {
        int same = 1;
        for (int j = 0; j < nkey; j++) same &= strcmp(e->lines[i].key[j], k[j]) == 0;
        if (same) return &e->lines[i];
    }
    ck_assert_uint_lt(e->n, DASH_MAX_LINES);
    dash_line *l = &e->lines[e->n++];
    memset(l, 0, sizeof(*l));
    l->nkey = nkey;
    for (int j = 0; j < nkey; j++) snprintf(l->key[j], sizeof(l->key[j]), "%s", k[j]);
    return l;
}

static void dash_route(const dash_gen *g, char *out, size_t n)
{
    if (g->route < 0) snprintf(out, n, "\\N");
    else snprintf(out, n, "/r%d", g->route);
}

/* ClickHouse's quantile (reservoir sampler, exact below 8192 values):
 * linear interpolation at level * (n - 1) over the sorted values. */
static int cmp_int(const void *a, const void *b)
{
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

static double quantile_of(const int *sorted, size_t n, double level)
{
    double index = level * (double)(n - 1);
    size_t left = (size_t)index;
    if (left + 1 >= n) return sorted[n - 1];
    double frac = index - (double)left;
    return sorted[left] * (1 - frac) + sorted[left + 1] * frac;
}

static void dash_expected(const char *section, dash_expect *e)
{
    memset(e, 0, sizeof(*e));
    int durations[DASH_ROWS];
    size_t nd = 0;
    double pages = 0, inter = 0;
    for (int i = 0; i < DASH_ROWS; i++) {
        dash_gen g = dash_row(i);
        if (!dash_in_window(&g)) continue;
        char k0[16], k1[16], k2[16];
        dash_line *l = NULL;
        if (strcmp(section, "daily_active_users") == 0) {
            utc_text(T0_S + g.day * DAY_S, 0, k0, sizeof(k0));
            l = dash_group(e, 1, k0, NULL, NULL);
        } else if (strcmp(section, "top_routes") == 0 && g.name == 0) {
            dash_route(&g, k0, sizeof(k0));
            l = dash_group(e, 1, k0, NULL, NULL);
        } else if (strcmp(section, "features") == 0 && g.name == 1) {
            snprintf(k0, sizeof(k0), "f%d", g.a);
            snprintf(k1, sizeof(k1), "s%d", g.b);
            l = dash_group(e, 2, k0, k1, NULL);
        } else if (strcmp(section, "filters") == 0 && g.name == 2) {
            snprintf(k0, sizeof(k0), "v%d", g.a);
            snprintf(k1, sizeof(k1), "k%d", g.b);
            l = dash_group(e, 2, k0, k1, NULL);
            l->sum += g.v;
        } else if (strcmp(section, "charts") == 0 && g.name == 3) {
            snprintf(k0, sizeof(k0), "c%d", g.a);
            snprintf(k1, sizeof(k1), "a%d", g.b);
            snprintf(k2, sizeof(k2), "s%d", g.v % 2);
            l = dash_group(e, 3, k0, k1, k2);
        } else if (strcmp(section, "client_errors") == 0 && g.name == 4) {
            dash_route(&g, k0, sizeof(k0));
            snprintf(k1, sizeof(k1), "b%d", g.b);
            snprintf(k2, sizeof(k2), "E%d", g.a);
            l = dash_group(e, 3, k0, k1, k2);
        } else if (strcmp(section, "session_summary") == 0 && g.name == 5) {
            durations[nd++] = g.duration;
            pages += g.v;
            inter += g.interactions;
        }
        if (l == NULL) continue;
        l->n++;
        l->users |= 1u << g.user;
        l->sessions |= 1u << g.session;
    }
    for (size_t i = 0; i < e->n; i++) {
        dash_line *l = &e->lines[i];
        double users = __builtin_popcount(l->users), sessions = __builtin_popcount(l->sessions);
        double n = (double)l->n;
        if (strcmp(section, "daily_active_users") == 0) {
            l->values[0] = users, l->nvalues = 1;
        } else if (strcmp(section, "top_routes") == 0) {
            l->values[0] = n, l->values[1] = sessions, l->values[2] = users, l->nvalues = 3;
        } else if (strcmp(section, "filters") == 0) {
            l->values[0] = n, l->values[1] = l->sum / n, l->nvalues = 2;
        } else if (strcmp(section, "charts") == 0) {
            l->values[0] = n, l->values[1] = sessions, l->nvalues = 2;
        } else {   /* features, client_errors */
            l->values[0] = n, l->values[1] = users, l->nvalues = 2;
        }
    }
    if (strcmp(section, "session_summary") == 0) {
        ck_assert_uint_gt(nd, 20);
        qsort(durations, nd, sizeof(int), cmp_int);
        dash_line *l = &e->lines[e->n++];
        static const double levels[] = {0.5, 0.75, 0.9, 0.95};
        for (int q = 0; q < 4; q++) l->values[q] = quantile_of(durations, nd, levels[q]);
        l->values[4] = pages / (double)nd;
        l->values[5] = inter / (double)nd;
        l->nvalues = 6;
    }
}

/* Every answer line must be one expected line, and every expected line answered. */
static void dash_check(const char *section, const char *answer, dash_expect *e)
{
    size_t lines = 0;
    const char *p = answer;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        ck_assert_uint_lt(n, sizeof(line));
        memcpy(line, p, n);
        line[n] = '\0';
        p += n + (nl != NULL);
        lines++;
        char *f[16];
        int nf = 0;
        for (char *s = line, *tab;; s = tab + 1) {
            ck_assert_int_lt(nf, 16);
            f[nf++] = s;
            if ((tab = strchr(s, '\t')) == NULL) break;
            *tab = '\0';
        }
        dash_line *hit = NULL;
        for (size_t i = 0; i < e->n && hit == NULL; i++) {
            dash_line *l = &e->lines[i];
            if (l->nkey + l->nvalues != nf) continue;
            int same = 1;
            for (int k = 0; k < l->nkey; k++) same &= strcmp(l->key[k], f[k]) == 0;
            if (same) hit = l;
        }
        ck_assert_msg(hit != NULL, "%s: unexpected line '%s'", section, f[0]);
        ck_assert_msg(!hit->seen, "%s: line '%s' twice", section, f[0]);
        hit->seen = 1;
        for (int v = 0; v < hit->nvalues; v++) {
            double got = strtod(f[hit->nkey + v], NULL), want = hit->values[v];
            ck_assert_msg(fabs(got - want) <= 1e-9 * fmax(1, fabs(want)),
                          "%s: line '%s' value %d: got %s, want %.17g", section, f[0], v,
                          f[hit->nkey + v], want);
        }
    }
    ck_assert_msg(lines == e->n, "%s: %zu lines, want %zu", section, lines, e->n);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    buf b = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) buf_append(&b, chunk, n);
    fclose(f);
    return buf_detach(&b);
}

/* s with every occurrence of from replaced by to. */
static void replace_all(buf *out, const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from);
    const char *hit;
    while ((hit = strstr(s, from)) != NULL) {
        buf_append(out, s, (size_t)(hit - s));
        buf_puts(out, to);
        s = hit + fl;
    }
    buf_puts(out, s);
}

START_TEST(test_dashboard_queries_match_generated_rows)
{
    char u[400];
    snprintf(u, sizeof(u), "%s?database=ptel_dash_%d", url, (int)getpid());
    ch_client *c = client_for(u);
    ch_error err;
    must(ch_schema_apply(c, "product_telemetry_events", &err), &err);
    ch_table tab;
    must(ch_table_describe(c, "product_telemetry_events", &tab, &err), &err);
    ch_batch *b = ch_batch_new(&tab, ch_format_default());
    for (int i = 0; i < DASH_ROWS; i++) {
        dash_gen g = dash_row(i);
        char id[32], sess[16], user[16], route[16], payload[160];
        snprintf(id, sizeof(id), "ev-%d", i);
        snprintf(sess, sizeof(sess), "sess-%d", g.session);
        snprintf(user, sizeof(user), "anon-%d", g.user);
        snprintf(route, sizeof(route), "/r%d", g.route);
        dash_payload(&g, payload, sizeof(payload));
        event_row r = {.org_id_hash = (char *)(g.other_org ? dash_other_org : dash_org),
                       .event_id = id, .name = (char *)dash_names[g.name], .schema_version = "1",
                       .session_id = sess, .anonymous_user_id = user,
                       .route_pattern = g.route < 0 ? NULL : route, .payload_json = payload,
                       .occurred_at_us = g.t_us, .source = "dev-health-web"};
        ck_assert_int_eq(ch_batch_add(b, &r, (T0_S + 40 * DAY_S) * 1000000), 0);
    }
    must(ch_insert(c, "product_telemetry_events", b, "dash-batch", &err), &err);
    ch_batch_free(b);
    ck_assert_int_eq(count_of(c, "product_telemetry_events"), DASH_ROWS);

    char path[512];
    const char *root = getenv("PTEL_SOURCE_ROOT");
    snprintf(path, sizeof(path), "%s/tests/chdb/dashboard.sql", root ? root : ".");
    char *file = read_file(path);
    char org_lit[80];
    snprintf(org_lit, sizeof(org_lit), "'%s'", dash_org);
    char start_lit[16], end_lit[16];
    utc_text(T0_S, 0, start_lit + 1, sizeof(start_lit) - 2);
    utc_text(T0_S + 30 * DAY_S, 0, end_lit + 1, sizeof(end_lit) - 2);
    start_lit[0] = end_lit[0] = '\'';
    strcat(start_lit, "'");
    strcat(end_lit, "'");
    static const char *const sections[] = {"daily_active_users", "top_routes", "features",
                                           "filters", "charts", "client_errors", "session_summary"};
    size_t found = 0;
    for (char *stmt = file, *end; stmt != NULL && *stmt; stmt = end) {
        end = strstr(stmt, ";\n");
        if (end != NULL) *end = '\0', end += 2;
        /* The statement's name: the last "-- word" line before its SQL. */
        char name[64] = "";
        for (const char *l = stmt; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
            if (strncmp(l, "--", 2) != 0 && l[0] != '\n') break;
            if (sscanf(l, "-- %63[a-z_]\n", name) != 1) name[0] = '\0';
        }
        size_t s = 0;
        while (s < 7 && strcmp(sections[s], name) != 0) s++;
        if (s == 7) continue;   /* not a query (trailing comments) */
        found++;
        buf a = BUF_INIT, b2 = BUF_INIT, sql = BUF_INIT, out = BUF_INIT;
        replace_all(&a, stmt, "{org_id_hash:String}", org_lit);
        replace_all(&b2, buf_cstr(&a), "{start_date:String}", start_lit);
        replace_all(&sql, buf_cstr(&b2), "{end_date:String}", end_lit);
        buf_puts(&sql, "\nFORMAT TabSeparated");
        must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
        dash_expect e;
        dash_expected(name, &e);
        ck_assert_uint_gt(e.n, 0);
        dash_check(name, buf_cstr(&out), &e);
        buf_free(&a);
        buf_free(&b2);
        buf_free(&sql);
        buf_free(&out);
    }
    ck_assert_uint_eq(found, 7);
    free(file);
    ch_client_free(c);
}
END_TEST

/* ---- Rollups (rollups.c) on the modern engine ------------------------------------------ */

/* Rows [from, to) of the dashboard generator, inserted with ingested_at now. */
static void dash_insert(ch_client *c, const char *t, int from, int to)
{
    ch_error err;
    ch_table tab;
    must(ch_table_describe(c, t, &tab, &err), &err);
    ch_batch *b = ch_batch_new(&tab, ch_format_default());
    for (int i = from; i < to; i++) {
        dash_gen g = dash_row(i);
        char id[32], sess[16], user[16], route[16], payload[160];
        snprintf(id, sizeof(id), "ev-%d", i);
        snprintf(sess, sizeof(sess), "sess-%d", g.session);
        snprintf(user, sizeof(user), "anon-%d", g.user);
        snprintf(route, sizeof(route), "/r%d", g.route);
        dash_payload(&g, payload, sizeof(payload));
        event_row r = {.org_id_hash = (char *)(g.other_org ? dash_other_org : dash_org),
                       .event_id = id, .name = (char *)dash_names[g.name], .schema_version = "1",
                       .session_id = sess, .anonymous_user_id = user,
                       .route_pattern = g.route < 0 ? NULL : route, .payload_json = payload,
                       .occurred_at_us = g.t_us, .source = "dev-health-web"};
        ck_assert_int_eq(ch_batch_add(b, &r, (int64_t)time(NULL) * 1000000), 0);
    }
    must(ch_insert(c, t, b, NULL, &err), &err);
    ch_batch_free(b);
}

/* Every dashboard section from the rollups equals the generator's answer. */
static void rollups_check(ch_client *c, const char *t)
{
    static const char *const keys[] = {"daily_active_users", "top_routes", "feature_views",
                                       "filter_changes", "chart_interactions", "client_errors",
                                       "session_summary"};
    static const char *const names[] = {"daily_active_users", "top_routes", "features",
                                        "filters", "charts", "client_errors", "session_summary"};
    char from[16], to[16], where[256];
    utc_text(T0_S, 0, from, sizeof(from));
    utc_text(T0_S + 30 * DAY_S, 0, to, sizeof(to));
    snprintf(where, sizeof(where), "org_id_hash = '%s' AND day >= toDate('%s') AND day < toDate('%s')",
             dash_org, from, to);
    for (size_t s = 0; s < 7; s++) {
        buf sql = BUF_INIT, out = BUF_INIT;
        ck_assert_int_eq(ch_rollup_section_sql(keys[s], t, where, &sql), 0);
        buf_puts(&sql, "\nFORMAT TabSeparated");
        ch_error err;
        must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
        dash_expect e;
        dash_expected(names[s], &e);
        dash_check(names[s], buf_cstr(&out), &e);
        buf_free(&sql);
        buf_free(&out);
    }
}

START_TEST(test_rollups_ttl_backfill_and_views_match_generated_rows)
{
    char u[400];
    snprintf(u, sizeof(u), "%s?database=ptel_rollups_%d", url, (int)getpid());
    ch_client *c = client_for(u);
    const char *t = "product_telemetry_events";
    ch_error err;
    must(ch_schema_apply(c, t, &err), &err);
    dash_insert(c, t, 0, DASH_ROWS / 2);            /* before the views: backfill */
    ch_rollup_result res;
    must(ch_rollups_apply(c, t, 730, 1, &res, &err), &err);
    ck_assert_int_eq(res.ttl, 1);
    ck_assert_uint_eq(res.created, 6);
    ck_assert_uint_eq(res.backfilled, 6);
    ck_assert_uint_eq(res.backfill_rows, DASH_ROWS / 2);
    dash_insert(c, t, DASH_ROWS / 2, DASH_ROWS);    /* after: the views */

    char *engine = query1(c, "SELECT engine_full FROM system.tables WHERE database = "
                             "currentDatabase() AND name = '%s_rollup_sessions'", t);
    ck_assert_msg(strstr(engine, "AggregatingMergeTree") && strstr(engine, "TTL day + toIntervalDay(730)"),
                  "%s", engine);
    free(engine);
    rollups_check(c, t);

    /* Re-apply: nothing created, nothing counted twice; merged parts answer alike. */
    must(ch_rollups_apply(c, t, 730, 1, &res, &err), &err);
    ck_assert_uint_eq(res.created, 0);
    ck_assert_int_eq(res.backfill_skipped, 1);
    char *n = query1(c, "SELECT countMerge(events_state) FROM %s_rollup_events", t);
    ck_assert_str_eq(n, "1200");
    free(n);
    static const char *const all[] = {"events", "features", "filters", "charts", "errors", "sessions"};
    for (size_t i = 0; i < 6; i++) free(query1(c, "OPTIMIZE TABLE %s_rollup_%s FINAL", t, all[i]));
    rollups_check(c, t);
    size_t dropped = 9;
    must(ch_rollup_retention_enforce(c, t, 730, (int64_t)time(NULL) * 1000000, &dropped, &err), &err);
    ck_assert_uint_eq(dropped, 0);                   /* TTL does it here */
    ch_client_free(c);
}
END_TEST

START_TEST(test_rollup_ddl_has_ttl_only_from_19_6)
{
    buf a = BUF_INIT, b = BUF_INIT;
    ch_rollups_ddl(18, 16, "t", 730, &a);
    ch_rollups_ddl(26, 5, "t", 100, &b);
    ck_assert_ptr_null(strstr(buf_cstr(&a), "TTL"));
    ck_assert_ptr_nonnull(strstr(buf_cstr(&a), "visitParamExtractString(payload_json, 'feature')"));
    ck_assert_ptr_nonnull(strstr(buf_cstr(&b), "TTL day + INTERVAL 100 DAY"));
    ck_assert_ptr_nonnull(strstr(buf_cstr(&b), "JSONExtractString(payload_json, 'feature')"));
    buf_free(&a);
    buf_free(&b);
    ch_error err;
    ch_rollup_result res;
    ck_assert_int_eq(ch_rollups_apply(NULL, "bad name", 730, 0, &res, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a valid table name"));
}
END_TEST

static Suite *chdb_suite(void)
{
    Suite *s = suite_create("clickhouse_chdb");
    TCase *tc = tcase_create("chdb");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_missing_library_names_the_fetch_script);
    tcase_add_test(tc, test_url_forms);
    tcase_add_test(tc, test_version_is_modern_and_query_answers_tsv);
    tcase_add_test(tc, test_total_timeout_is_a_transient_159);
    tcase_add_test(tc, test_errors_carry_clickhouse_codes_and_verdicts);
    tcase_add_test(tc, test_ddl_settings_only_where_the_token_exists);
    tcase_add_test(tc, test_production_ddl_applied);
    tcase_add_test(tc, test_database_from_url_is_created_and_used);
    tcase_add_test(tc, test_datetime64_millisecond_roundtrip_rowbinary);
    tcase_add_test(tc, test_datetime64_millisecond_roundtrip_jsoneachrow);
    tcase_add_test(tc, test_binary_and_unicode_strings_roundtrip);
    tcase_add_test(tc, test_dedup_token_drops_a_retried_batch);
    tcase_add_test(tc, test_dedup_token_needs_the_table_setting);
    tcase_add_test(tc, test_insert_range_inserts_only_the_slice);
    tcase_add_test(tc, test_dashboard_queries_match_generated_rows);
    tcase_add_test(tc, test_rollups_ttl_backfill_and_views_match_generated_rows);
    tcase_add_test(tc, test_rollup_ddl_has_ttl_only_from_19_6);
    suite_add_tcase(s, tc);
    return s;
}

/* ---- Main ------------------------------------------------------------------------------ */

/* Default the library path to the fetch script's install in the source tree. */
static void default_library_path(void)
{
    const char *env = getenv(CH_CHDB_LIB_ENV), *root = getenv("PTEL_SOURCE_ROOT");
    if ((env != NULL && env[0] != '\0') || root == NULL) return;
    char path[512];
    snprintf(path, sizeof(path), "%s/var/chdb/libchdb.so", root);
    if (access(path, R_OK) == 0) setenv(CH_CHDB_LIB_ENV, path, 1);
}

/* Load the library in a child, so this process stays free of engine threads
 * before Check forks the tests. 1 when it loads. */
static int library_loads(void)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        ch_error err;
        if (ch_chdb_load(&err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            _exit(1);
        }
        _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return 0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(void)
{
    default_library_path();
    if (!library_loads()) {
        const char *req = getenv("PTEL_REQUIRE_CHDB");
        if (req != NULL && req[0] != '\0' && strcmp(req, "0") != 0) {
            fprintf(stderr, "PTEL_REQUIRE_CHDB is set and libchdb.so does not load: failing\n");
            return 1;
        }
        fprintf(stderr, "libchdb.so not available (run tests/chdb/fetch.sh): skipping\n");
        return 77;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(data_dir, sizeof(data_dir), "%s/ptel-chdb-test.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(data_dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(url, sizeof(url), "chdb://%s", data_dir);
    T0_S = ((int64_t)time(NULL) / DAY_S - 30) * DAY_S;
    SRunner *sr = srunner_create(chdb_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(data_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? 0 : 1;
}
