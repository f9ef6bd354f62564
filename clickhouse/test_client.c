/* clickhouse/test_client.c: the client against a real ClickHouse.
 *
 * Needs PTEL_TEST_CLICKHOUSE_URL (e.g. http://127.0.0.1:18204/); without it
 * the program exits 77, which meson reports as skipped. The auth case also
 * needs PTEL_TEST_CLICKHOUSE_AUTH_URL, a URL with a user and the right
 * password (http://ptel:s3cret@127.0.0.1:18204/), and is skipped with a note
 * otherwise. Every test makes its own table (ptel_t_<pid>_<n>) and drops it. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clickhouse/ch_internal.h"

static const char *server_url;
static int table_seq;

/* ---- Fixtures ------------------------------------------------------------------ */

static ch_client *client(void)
{
    ch_error err;
    ch_client *c = ch_client_new(server_url, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    return c;
}

static void must(int rc, const ch_error *err)
{
    ck_assert_msg(rc == 0, "%s", err->msg);
}

static char *new_table(ch_client *c, ch_table *described)
{
    char name[64];
    snprintf(name, sizeof(name), "ptel_t_%d_%d", (int)getpid(), ++table_seq);
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

static uint64_t count_rows(ch_client *c, const char *table, const char *where)
{
    buf sql = BUF_INIT, out = BUF_INIT;
    buf_printf(&sql, "SELECT count() FROM %s%s%s", table, where ? " WHERE " : "", where ? where : "");
    ch_error err;
    must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
    uint64_t n = strtoull(buf_cstr(&out), NULL, 10);
    buf_free(&sql);
    buf_free(&out);
    return n;
}

static int server_is_legacy(ch_client *c)
{
    int major, minor;
    ch_error err;
    must(ch_server_version(c, &major, &minor, &err), &err);
    return major < 20;
}

/* A port nothing listens on: bind an ephemeral port, then close it. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void hex_of(buf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        buf_putc(out, hex[*p >> 4]);
        buf_putc(out, hex[*p & 15]);
    }
}

/* ---- Basics ------------------------------------------------------------------------ */

START_TEST(test_version_and_select)
{
    ch_client *c = client();
    int major = -1, minor = -1;
    ch_error err;
    must(ch_server_version(c, &major, &minor, &err), &err);
    ck_assert_int_gt(major, 0);
    ck_assert_int_ge(minor, 0);
    buf out = BUF_INIT;
    must(ch_query(c, "SELECT 1 + 1", &out, &err), &err);
    ck_assert_str_eq(buf_cstr(&out), "2\n");
    buf_free(&out);
    ch_client_free(c);
}
END_TEST

START_TEST(test_schema_apply_picks_ddl_for_version)
{
    ch_client *c = client();
    char *t = new_table(c, NULL);
    ch_error err;
    must(ch_schema_apply(c, t, &err), &err);   /* idempotent */
    buf sql = BUF_INIT, out = BUF_INIT;
    buf_printf(&sql, "SHOW CREATE TABLE %s FORMAT TabSeparatedRaw", t);
    int rc = ch_query(c, buf_cstr(&sql), &out, &err);
    if (rc != 0) {   /* 18.16 has no TabSeparatedRaw */
        buf_reset(&sql);
        buf_printf(&sql, "SHOW CREATE TABLE %s", t);
        must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
    }
    if (server_is_legacy(c)) {
        ck_assert_msg(strstr(buf_cstr(&out), "occurred_at DateTime(") != NULL, "%s", buf_cstr(&out));
        ck_assert_ptr_null(strstr(buf_cstr(&out), "TTL"));
        ck_assert_ptr_null(strstr(buf_cstr(&out), "DateTime64"));
    } else {
        ck_assert_msg(strstr(buf_cstr(&out), "DateTime64(3") != NULL, "%s", buf_cstr(&out));
        ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "TTL"));
    }
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "LowCardinality(String)"));
    buf_free(&sql);
    buf_free(&out);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

START_TEST(test_describe_matches_applied_schema)
{
    ch_client *c = client();
    ch_table tab;
    char *t = new_table(c, &tab);
    ck_assert_uint_eq(tab.ncols, CH_COL_COUNT);
    for (size_t i = 0; i < tab.ncols; i++) ck_assert_int_eq(tab.cols[i].id, (int)i);
    ck_assert_int_eq(tab.cols[CH_COL_ROUTE_PATTERN].kind, CH_KIND_NULLABLE_STRING);
    ck_assert_int_eq(tab.cols[CH_COL_OCCURRED_AT].kind,
                     server_is_legacy(c) ? CH_KIND_DATETIME : CH_KIND_DATETIME64_3);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

START_TEST(test_describe_unknown_table_is_permanent_60)
{
    ch_client *c = client();
    ch_table tab;
    ch_error err;
    ck_assert_int_eq(ch_table_describe(c, "ptel_no_such_table", &tab, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_UNKNOWN_TABLE);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_int_eq(ch_table_describe(c, "bad name", &tab, &err), -1);
    ck_assert_str_eq(err.msg, "ClickHouse describe: 'bad name' is not a valid table name");
    ch_client_free(c);
}
END_TEST

START_TEST(test_describe_foreign_table_is_clear_permanent_error)
{
    ch_client *c = client();
    char name[64];
    snprintf(name, sizeof(name), "ptel_t_%d_%d", (int)getpid(), ++table_seq);
    buf sql = BUF_INIT;
    buf_printf(&sql, "CREATE TABLE %s (event_id String, n UInt8) ENGINE = Memory", name);
    ch_error err;
    must(ch_query(c, buf_cstr(&sql), NULL, &err), &err);
    ch_table tab;
    ck_assert_int_eq(ch_table_describe(c, name, &tab, &err), -1);
    ck_assert_int_eq(err.transient, 0);
    char want[200];
    snprintf(want, sizeof(want), "ClickHouse table %s: table has unexpected column n UInt8", name);
    ck_assert_msg(strncmp(err.msg, want, strlen(want)) == 0, "%s", err.msg);
    buf_free(&sql);
    drop_table(c, strdup(name));
    ch_client_free(c);
}
END_TEST

/* ---- Round trips ---------------------------------------------------------------------- */

#define TRICKY_ROWS 6

static void tricky_rows(event_row *rows, char *big)
{
    memset(big, 'p', 64 * 1024);
    memcpy(big, "{\"k\":\"", 6);
    memcpy(big + 64 * 1024 - 2, "\"}", 2);
    big[64 * 1024] = '\0';
    static char *strings[TRICKY_ROWS] = {
        "quotes \" and ' and `",
        "back\\slash\\\\ and \\n literal",
        "tab\there\nnewline\rcr",
        "{\"nul\":\"\\u0000\",\"ctl\":\"\x01\x1f\x7f\"}",
        "emoji \xf0\x9f\x98\x80 \xc3\xa9 and invalid \xff byte",
        NULL,   /* the 64 KiB payload */
    };
    for (int i = 0; i < TRICKY_ROWS; i++) {
        char *s = strings[i] ? strings[i] : big;
        static char ids[TRICKY_ROWS][8];
        snprintf(ids[i], sizeof(ids[i]), "e%d", i);
        event_row r = {
            .org_id_hash = i == 1 ? "" : s, .event_id = ids[i], .name = "page_viewed",
            .schema_version = s, .session_id = "ses", .anonymous_user_id = s,
            /* NULL, '' and a value must stay distinct. */
            .route_pattern = i == 0 ? NULL : i == 2 ? "" : s,
            .payload_json = s, .occurred_at_us = 1767225600123456LL + i * 1000000LL,
            .source = "dev-health-web",
        };
        rows[i] = r;
    }
}

static void round_trip(ch_format fmt)
{
    ch_client *c = client();
    /* The server is on loopback, where gzip is off by default: turn it on
     * so the round trip covers gzipped bodies too. */
    ch_client_set_gzip_threshold(c, CH_GZIP_THRESHOLD_DEFAULT);
    ch_table tab;
    char *t = new_table(c, &tab);
    char *big = malloc(64 * 1024 + 1);
    event_row rows[TRICKY_ROWS];
    tricky_rows(rows, big);
    ch_batch *b = ch_batch_new(&tab, fmt);
    int64_t ingested = 1767225700000000LL;
    for (int i = 0; i < TRICKY_ROWS; i++) ck_assert_int_eq(ch_batch_add(b, &rows[i], ingested), 0);
    ch_error err;
    must(ch_insert(c, t, b, "token-1", &err), &err);

    int dt64 = tab.cols[CH_COL_OCCURRED_AT].kind == CH_KIND_DATETIME64_3;
    buf sql = BUF_INIT, out = BUF_INIT, want = BUF_INIT;
    buf_printf(&sql, "SELECT event_id, hex(org_id_hash), hex(schema_version), hex(anonymous_user_id), "
               "isNull(route_pattern), hex(ifNull(route_pattern, '')), hex(payload_json), %s, %s, source "
               "FROM %s ORDER BY event_id FORMAT TabSeparated",
               dt64 ? "toUnixTimestamp64Milli(occurred_at)" : "toUnixTimestamp(occurred_at)",
               dt64 ? "toUnixTimestamp64Milli(ingested_at)" : "toUnixTimestamp(ingested_at)", t);
    must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
    for (int i = 0; i < TRICKY_ROWS; i++) {
        event_row *r = &rows[i];
        buf_printf(&want, "%s\t", r->event_id);
        hex_of(&want, r->org_id_hash);
        buf_putc(&want, '\t');
        hex_of(&want, r->schema_version);
        buf_putc(&want, '\t');
        hex_of(&want, r->anonymous_user_id);
        buf_printf(&want, "\t%d\t", r->route_pattern == NULL);
        hex_of(&want, r->route_pattern ? r->route_pattern : "");
        buf_putc(&want, '\t');
        hex_of(&want, r->payload_json);
        if (dt64) buf_printf(&want, "\t%lld\t%lld", (long long)(r->occurred_at_us / 1000),
                             (long long)(ingested / 1000));
        else buf_printf(&want, "\t%lld\t%lld", (long long)(r->occurred_at_us / 1000000),
                        (long long)(ingested / 1000000));
        buf_printf(&want, "\t%s\n", r->source);
    }
    ck_assert_uint_eq(out.len, want.len);
    ck_assert_msg(memcmp(out.data, want.data, want.len) == 0, "round trip differs (%s)",
                  ch_format_name(fmt));
    /* The batch was > 64 KiB, so it went gzipped. */
    ch_client_stats st;
    ch_client_stats_get(c, &st);
    ck_assert_uint_ge(st.gzip_requests, 1);
    buf_free(&sql);
    buf_free(&out);
    buf_free(&want);
    ch_batch_free(b);
    free(big);
    drop_table(c, t);
    ch_client_free(c);
}

START_TEST(test_round_trip_tricky_strings_rowbinary) { round_trip(CH_FORMAT_ROWBINARY); }
END_TEST

START_TEST(test_round_trip_tricky_strings_jsoneachrow) { round_trip(CH_FORMAT_JSONEACHROW); }
END_TEST

START_TEST(test_gzip_large_body_and_plain_small_body)
{
    ch_client *c = client();
    ch_client_set_gzip_threshold(c, CH_GZIP_THRESHOLD_DEFAULT);   /* loopback: off by default */
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_batch *b = ch_batch_new(&tab, ch_format_default());
    char id[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof(id), "evt_%08d", i);
        event_row r = {.org_id_hash = "org", .event_id = id, .name = "page_viewed",
                       .schema_version = "2026-05-telemetry-v1", .session_id = "ses_1",
                       .anonymous_user_id = "anon_0003", .route_pattern = "/metrics",
                       .payload_json = "{\"view\":\"metrics\"}", .occurred_at_us = 1767225600000000LL,
                       .source = "dev-health-web"};
        ck_assert_int_eq(ch_batch_add(b, &r, 1767225600000000LL), 0);
    }
    ck_assert_uint_gt(ch_batch_bytes(b), CH_GZIP_THRESHOLD_DEFAULT);
    ch_error err;
    ch_client_stats before, after;
    ch_client_stats_get(c, &before);
    must(ch_insert(c, t, b, NULL, &err), &err);
    ch_client_stats_get(c, &after);
    ck_assert_uint_eq(after.gzip_requests, before.gzip_requests + 1);
    ck_assert_uint_lt(after.wire_bytes - before.wire_bytes, (after.body_bytes - before.body_bytes) / 4);
    /* A one-row slice is small: sent plain. */
    must(ch_insert_range(c, t, b, 5, 1, NULL, &err), &err);
    ch_client_stats_get(c, &before);
    ck_assert_uint_eq(before.gzip_requests, after.gzip_requests);
    ck_assert_uint_eq(count_rows(c, t, NULL), 20001);
    /* Compression off: the same batch still goes through. */
    ch_client_set_gzip_threshold(c, 0);
    must(ch_insert(c, t, b, NULL, &err), &err);
    ch_client_stats_get(c, &after);
    ck_assert_uint_eq(after.gzip_requests, before.gzip_requests);
    ck_assert_uint_eq(count_rows(c, t, NULL), 40001);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

START_TEST(test_insert_range_sends_only_the_slice)
{
    ch_client *c = client();
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_batch *b = ch_batch_new(&tab, CH_FORMAT_JSONEACHROW);
    const char *ids[4] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        event_row r = {.org_id_hash = "", .event_id = (char *)ids[i], .name = "page_viewed",
                       .schema_version = "v", .session_id = "s", .anonymous_user_id = "u",
                       .payload_json = "{}", .occurred_at_us = 1767225600000000LL, .source = "x"};
        ck_assert_int_eq(ch_batch_add(b, &r, 1767225600000000LL), 0);
    }
    ch_error err;
    must(ch_insert_range(c, t, b, 1, 2, "slice-1-2", &err), &err);
    buf sql = BUF_INIT, out = BUF_INIT;
    buf_printf(&sql, "SELECT event_id FROM %s ORDER BY event_id FORMAT TabSeparated", t);
    must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
    ck_assert_str_eq(buf_cstr(&out), "b\nc\n");
    buf_free(&sql);
    buf_free(&out);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

START_TEST(test_dedup_token_accepted_by_this_server)
{
    /* On servers before 22.2 the token must not be sent (the setting would
     * be refused as unknown, code 115); on newer ones it is sent. Either way
     * the insert succeeds. */
    ch_client *c = client();
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_batch *b = ch_batch_new(&tab, ch_format_default());
    event_row r = {.org_id_hash = "", .event_id = "x", .name = "page_viewed", .schema_version = "v",
                   .session_id = "s", .anonymous_user_id = "u", .payload_json = "{}",
                   .occurred_at_us = 1767225600000000LL, .source = "x"};
    ck_assert_int_eq(ch_batch_add(b, &r, 1767225600000000LL), 0);
    ch_error err;
    must(ch_insert(c, t, b, "batch:stream:1-0 & ?=/", &err), &err);
    ck_assert_uint_eq(count_rows(c, t, NULL), 1);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

/* ---- Errors ----------------------------------------------------------------------------- */

START_TEST(test_bad_sql_is_permanent_62)
{
    ch_client *c = client();
    ch_error err;
    ck_assert_int_eq(ch_query(c, "SELEC 1", NULL, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_SYNTAX_ERROR);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_int_eq(err.http_status, 400);
    ck_assert_ptr_nonnull(strstr(err.msg, "Syntax error"));
    ck_assert_int_eq(ch_error_blames_rows(&err), 0);
    /* The handle is still usable after an error. */
    must(ch_query(c, "SELECT 1", NULL, &err), &err);
    ch_client_free(c);
}
END_TEST

START_TEST(test_unknown_table_is_permanent_60)
{
    ch_client *c = client();
    ch_error err;
    ck_assert_int_eq(ch_query(c, "SELECT * FROM ptel_no_such_table", NULL, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_UNKNOWN_TABLE);
    ck_assert_int_eq(err.transient, 0);
    ch_table tab;
    memset(&tab, 0, sizeof(tab));
    ch_batch *b = ch_batch_new(&tab, CH_FORMAT_ROWBINARY);
    ck_assert_int_eq(ch_insert_range(c, "ptel_no_such_table", b, 0, 0, NULL, &err), 0);
    ch_batch_free(b);
    ch_client_free(c);
}
END_TEST

START_TEST(test_closed_port_is_transient)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", closed_port());
    ch_error err;
    ch_client *c = ch_client_new(url, &err);
    ck_assert_int_eq(ch_query(c, "SELECT 1", NULL, &err), -1);
    ck_assert_int_eq(err.transient, 1);
    ck_assert_int_eq(err.code, 0);
    ck_assert_int_eq(err.http_status, 0);
    ck_assert_msg(strstr(err.msg, "unreachable") != NULL, "%s", err.msg);
    int major;
    ck_assert_int_eq(ch_server_version(c, &major, NULL, &err), -1);
    ck_assert_int_eq(err.transient, 1);
    ch_client_free(c);
}
END_TEST

START_TEST(test_timeout_is_transient)
{
    ch_client *c = client();
    ch_client_set_timeouts(c, 1000, 300);
    ch_error err;
    ck_assert_int_eq(ch_query(c, "SELECT sleep(2)", NULL, &err), -1);
    ck_assert_int_eq(err.transient, 1);
    ck_assert_msg(strstr(err.msg, "unreachable") != NULL, "%s", err.msg);
    ch_client_free(c);
}
END_TEST

START_TEST(test_oversized_response_is_refused)
{
    /* ~79 MB of text against a 64 MiB cap. */
    ch_client *c = client();
    buf out = BUF_INIT;
    ch_error err;
    ck_assert_int_eq(ch_query(c, "SELECT toString(number) FROM system.numbers LIMIT 10000000",
                              &out, &err), -1);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_msg(strstr(err.msg, "exceeds 67108864 bytes") != NULL, "%s", err.msg);
    ck_assert_uint_eq(out.len, 0);
    must(ch_query(c, "SELECT 1", NULL, &err), &err);   /* the handle recovers */
    buf_free(&out);
    ch_client_free(c);
}
END_TEST

START_TEST(test_refused_value_is_permanent)
{
    ch_client *c = client();
    ch_table tab;
    char *t = new_table(c, &tab);
    buf sql = BUF_INIT;
    buf_printf(&sql, "INSERT INTO %s (occurred_at) VALUES ('not a date')", t);
    ch_error err;
    ck_assert_int_eq(ch_query(c, buf_cstr(&sql), NULL, &err), -1);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_int_ne(err.code, 0);
    ck_assert_int_eq(ch_error_blames_rows(&err), 1);
    /* A RowBinary body cut inside a row: the server reads past the end. */
    buf_reset(&sql);
    buf_printf(&sql, "INSERT INTO %s (event_id) FORMAT RowBinary", t);
    ck_assert_int_eq(ch_request(c, 0, buf_cstr(&sql), NULL, "\x05" "ab", 3, NULL, &err), -1);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_int_eq(ch_error_blames_rows(&err), 1);
    ck_assert_uint_eq(count_rows(c, t, NULL), 0);
    buf_free(&sql);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

START_TEST(test_database_from_url_is_created_and_used)
{
    /* scheme://authority of the server URL + "/ptel_db_<pid>". */
    const char *after = strstr(server_url, "://") + 3;
    size_t auth_len = strcspn(after, "/?");
    char url[256], db[32];
    snprintf(db, sizeof(db), "ptel_db_%d", (int)getpid());
    snprintf(url, sizeof(url), "%.*s/%s", (int)(after - server_url + auth_len), server_url, db);
    ch_error err;
    ch_client *c = ch_client_new(url, &err);
    ck_assert_ptr_nonnull(c);
    must(ch_schema_apply(c, "events", &err), &err);
    ch_table tab;
    must(ch_table_describe(c, "events", &tab, &err), &err);
    buf out = BUF_INIT;
    must(ch_query(c, "SELECT currentDatabase()", &out, &err), &err);
    char want[40];
    snprintf(want, sizeof(want), "%s\n", db);
    ck_assert_str_eq(buf_cstr(&out), want);
    buf_reset(&out);
    buf_printf(&out, "DROP DATABASE %s", db);
    must(ch_query(c, buf_cstr(&out), NULL, &err), &err);
    buf_free(&out);
    ch_client_free(c);
}
END_TEST

/* ---- Retention --------------------------------------------------------------------------- */

static void add_at(ch_batch *b, const char *id, int64_t at_us)
{
    event_row r = {.org_id_hash = "", .event_id = (char *)id, .name = "page_viewed",
                   .schema_version = "v", .session_id = "s", .anonymous_user_id = "u",
                   .payload_json = "{}", .occurred_at_us = at_us, .source = "x"};
    ck_assert_int_eq(ch_batch_add(b, &r, at_us), 0);
}

START_TEST(test_retention_removes_only_expired_rows)
{
    ch_client *c = client();
    ch_table tab;
    char *t = new_table(c, &tab);
    ch_error err;
    ch_retention_report rep;
    if (!server_is_legacy(c)) {
        must(ch_retention_enforce(c, t, 180, 1784548800000000LL, &rep, &err), &err);
        ck_assert_int_eq(rep.ttl_managed, 1);
        drop_table(c, t);
        ch_client_free(c);
        return;
    }
    const int64_t day = 86400LL * 1000000LL;
    const int64_t now = 1783684800000000LL;   /* 2026-07-10 12:00:00 UTC; cutoff 2026-01-11 12:00 */
    ch_batch *b = ch_batch_new(&tab, ch_format_default());
    add_at(b, "old_200d", now - 200 * day);          /* 2025-12-22: its month is all expired */
    add_at(b, "new_10d", now - 10 * day);            /* kept */
    add_at(b, "jan_05", 1767614400000000LL);         /* 2026-01-05 12:00: expired, month mixed */
    add_at(b, "jan_20", 1768910400000000LL);         /* 2026-01-20 12:00: kept */
    /* One insert per row so each month is its own part. */
    for (size_t i = 0; i < 4; i++) must(ch_insert_range(c, t, b, i, 1, NULL, &err), &err);
    must(ch_retention_enforce(c, t, 180, now, &rep, &err), &err);
    ck_assert_int_eq(rep.ttl_managed, 0);
    ck_assert_int_eq(rep.cutoff_s, 1783684800LL - 180 * 86400LL);
    ck_assert_uint_eq(rep.partitions_dropped, 1);
    ck_assert_uint_eq(rep.rows_dropped, 1);
    ck_assert_uint_eq(rep.rows_deleted, 1);
    /* The DELETE is a mutation: wait for it (bounded). */
    for (int i = 0; i < 100 && count_rows(c, t, NULL) != 2; i++) usleep(100 * 1000);
    buf sql = BUF_INIT, out = BUF_INIT;
    buf_printf(&sql, "SELECT event_id FROM %s ORDER BY event_id FORMAT TabSeparated", t);
    must(ch_query(c, buf_cstr(&sql), &out, &err), &err);
    ck_assert_str_eq(buf_cstr(&out), "jan_20\nnew_10d\n");
    /* Nothing left to do. */
    must(ch_retention_enforce(c, t, 180, now, &rep, &err), &err);
    ck_assert_uint_eq(rep.partitions_dropped + rep.rows_deleted, 0);
    ck_assert_int_eq(ch_retention_enforce(c, t, 0, now, &rep, &err), -1);
    ck_assert_str_eq(err.msg, "ClickHouse retention: days must be positive, not 0");
    ck_assert_int_eq(ch_retention_enforce(c, "ptel_no_such_table", 180, now, &rep, &err), -1);
    ck_assert_int_eq(err.code, CH_ERR_UNKNOWN_TABLE);
    buf_free(&sql);
    buf_free(&out);
    ch_batch_free(b);
    drop_table(c, t);
    ch_client_free(c);
}
END_TEST

/* ---- Auth -------------------------------------------------------------------------------- */

START_TEST(test_auth_user_password_and_wrong_password)
{
    const char *good = getenv("PTEL_TEST_CLICKHOUSE_AUTH_URL");
    if (good == NULL || good[0] == '\0') {
        printf("note: PTEL_TEST_CLICKHOUSE_AUTH_URL unset; auth case skipped\n");
        return;
    }
    ch_error err;
    ch_client *c = ch_client_new(good, &err);
    ck_assert_ptr_nonnull(c);
    buf out = BUF_INIT;
    must(ch_query(c, "SELECT 7", &out, &err), &err);
    ck_assert_str_eq(buf_cstr(&out), "7\n");
    ch_client_free(c);

    /* Same URL with the password replaced. */
    const char *scheme_end = strstr(good, "://") + 3;
    const char *at = strchr(scheme_end, '@');
    const char *colon = memchr(scheme_end, ':', (size_t)(at - scheme_end));
    ck_assert_msg(at && colon, "auth URL needs user:password@");
    char real[128];
    snprintf(real, sizeof(real), "%.*s", (int)(at - colon - 1), colon + 1);
    buf bad = BUF_INIT;
    buf_append(&bad, good, (size_t)(colon + 1 - good));
    buf_puts(&bad, "Wr0ngPassw0rd");
    buf_puts(&bad, at);
    c = ch_client_new(buf_cstr(&bad), &err);
    ck_assert_int_eq(ch_query(c, "SELECT 1", NULL, &err), -1);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_msg(err.code == CH_ERR_WRONG_PASSWORD || err.code == CH_ERR_AUTHENTICATION_FAILED,
                  "code %d: %s", err.code, err.msg);
    ck_assert_ptr_null(strstr(err.msg, "Wr0ngPassw0rd"));
    ck_assert_ptr_null(strstr(err.msg, real));
    ck_assert_ptr_null(strstr(ch_client_redacted_url(c), "Wr0ngPassw0rd"));
    ch_client_free(c);
    buf_free(&bad);
    buf_free(&out);
}
END_TEST

static Suite *client_suite(void)
{
    Suite *s = suite_create("clickhouse_client");
    TCase *tc = tcase_create("server");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_version_and_select);
    tcase_add_test(tc, test_schema_apply_picks_ddl_for_version);
    tcase_add_test(tc, test_describe_matches_applied_schema);
    tcase_add_test(tc, test_describe_unknown_table_is_permanent_60);
    tcase_add_test(tc, test_describe_foreign_table_is_clear_permanent_error);
    tcase_add_test(tc, test_round_trip_tricky_strings_rowbinary);
    tcase_add_test(tc, test_round_trip_tricky_strings_jsoneachrow);
    tcase_add_test(tc, test_gzip_large_body_and_plain_small_body);
    tcase_add_test(tc, test_insert_range_sends_only_the_slice);
    tcase_add_test(tc, test_dedup_token_accepted_by_this_server);
    tcase_add_test(tc, test_bad_sql_is_permanent_62);
    tcase_add_test(tc, test_unknown_table_is_permanent_60);
    tcase_add_test(tc, test_closed_port_is_transient);
    tcase_add_test(tc, test_timeout_is_transient);
    tcase_add_test(tc, test_refused_value_is_permanent);
    tcase_add_test(tc, test_oversized_response_is_refused);
    tcase_add_test(tc, test_database_from_url_is_created_and_used);
    tcase_add_test(tc, test_retention_removes_only_expired_rows);
    tcase_add_test(tc, test_auth_user_password_and_wrong_password);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    server_url = getenv("PTEL_TEST_CLICKHOUSE_URL");
    if (server_url == NULL || server_url[0] == '\0') {
        printf("PTEL_TEST_CLICKHOUSE_URL unset: skipping the ClickHouse server tests\n");
        return 77;
    }
    SRunner *sr = srunner_create(client_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
