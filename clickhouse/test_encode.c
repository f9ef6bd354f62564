/* clickhouse/test_encode.c: row encoding, DESCRIBE mapping and DDL text,
 * byte for byte, without a server.
 *
 * Expected RowBinary bytes are written out by hand from the format's rules
 * (LEB128 length + bytes for String, 1 flag byte for Nullable, UInt32 LE
 * seconds for DateTime, Int64 LE milliseconds for DateTime64(3)); the time
 * used everywhere is 2026-01-01 00:00:00.123456 UTC = 1767225600 s
 * (0x6955B900, LE 00 b9 55 69) = 1767225600123 ms (LE 7b a8 da 76 9b 01 00 00). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "clickhouse/ch_internal.h"

#define T0_US 1767225600123456LL  /* 2026-01-01 00:00:00.123456 UTC */
#define T1_US 1767225601999999LL  /* 2026-01-01 00:00:01.999999 UTC */

/* DESCRIBE TABLE output of the legacy (18.16) table, as the server prints it. */
static const char legacy_describe[] =
    "org_id_hash\tString\tDEFAULT\t\\'\\'\t\n"
    "event_id\tString\t\t\t\n"
    "name\tLowCardinality(String)\t\t\t\n"
    "schema_version\tString\t\t\t\n"
    "session_id\tString\t\t\t\n"
    "anonymous_user_id\tString\t\t\t\n"
    "route_pattern\tNullable(String)\t\t\t\n"
    "payload_json\tString\t\t\t\n"
    "occurred_at\tDateTime(\\'UTC\\')\t\t\t\n"
    "ingested_at\tDateTime(\\'UTC\\')\t\t\t\n"
    "source\tLowCardinality(String)\t\t\t\n";

/* The production (>= 20.1) table. */
static const char modern_describe[] =
    "org_id_hash\tString\tDEFAULT\t\\'\\'\t\t\t\n"
    "event_id\tString\t\t\t\t\t\n"
    "name\tLowCardinality(String)\t\t\t\t\t\n"
    "schema_version\tString\t\t\t\t\t\n"
    "session_id\tString\t\t\t\t\t\n"
    "anonymous_user_id\tString\t\t\t\t\t\n"
    "route_pattern\tNullable(String)\t\t\t\t\t\n"
    "payload_json\tString\t\t\t\t\t\n"
    "occurred_at\tDateTime64(3, \\'UTC\\')\t\t\t\t\t\n"
    "ingested_at\tDateTime64(3, \\'UTC\\')\t\t\t\t\t\n"
    "source\tLowCardinality(String)\t\t\t\t\t\n";

static void table_of(const char *tsv, ch_table *t)
{
    ch_error err;
    ck_assert_msg(ch_table_from_describe(tsv, strlen(tsv), t, &err) == 0, "%s", err.msg);
}

static event_row small_row(void)
{
    event_row r = {
        .org_id_hash = "o", .event_id = "e1", .name = "page_viewed", .schema_version = "v1",
        .session_id = "s", .anonymous_user_id = "a", .route_pattern = NULL,
        .payload_json = "{}", .occurred_at_us = T0_US, .source = "dev-health-web",
    };
    return r;
}

static void assert_bytes(const char *got, size_t got_len, const unsigned char *want, size_t want_len)
{
    ck_assert_uint_eq(got_len, want_len);
    for (size_t i = 0; i < want_len; i++)
        ck_assert_msg((unsigned char)got[i] == want[i], "byte %zu: got %02x want %02x", i,
                      (unsigned char)got[i], want[i]);
}

/* ---- RowBinary ----------------------------------------------------------------- */

START_TEST(test_rowbinary_datetime_table_with_null_route)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    static const unsigned char want[] = {
        0x01, 'o',
        0x02, 'e', '1',
        0x0b, 'p', 'a', 'g', 'e', '_', 'v', 'i', 'e', 'w', 'e', 'd',
        0x02, 'v', '1',
        0x01, 's',
        0x01, 'a',
        0x01,                                   /* route_pattern: NULL flag, no value */
        0x02, '{', '}',
        0x00, 0xb9, 0x55, 0x69,                 /* occurred_at 1767225600 s */
        0x01, 0xb9, 0x55, 0x69,                 /* ingested_at 1767225601 s (.999999 floored) */
        0x0e, 'd', 'e', 'v', '-', 'h', 'e', 'a', 'l', 't', 'h', '-', 'w', 'e', 'b',
    };
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    assert_bytes(p, len, want, sizeof(want));
    ck_assert_uint_eq(ch_batch_rows(b), 1);
    ck_assert_uint_eq(ch_batch_bytes(b), sizeof(want));
    ch_batch_free(b);
}
END_TEST

START_TEST(test_rowbinary_datetime64_table_with_route)
{
    ch_table t;
    table_of(modern_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    r.route_pattern = "/m";
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    static const unsigned char want[] = {
        0x01, 'o',
        0x02, 'e', '1',
        0x0b, 'p', 'a', 'g', 'e', '_', 'v', 'i', 'e', 'w', 'e', 'd',
        0x02, 'v', '1',
        0x01, 's',
        0x01, 'a',
        0x00, 0x02, '/', 'm',                   /* route_pattern: not NULL, then the String */
        0x02, '{', '}',
        0x7b, 0xa8, 0xda, 0x76, 0x9b, 0x01, 0x00, 0x00,   /* 1767225600123 ms */
        0xcf, 0xaf, 0xda, 0x76, 0x9b, 0x01, 0x00, 0x00,   /* 1767225601999 ms */
        0x0e, 'd', 'e', 'v', '-', 'h', 'e', 'a', 'l', 't', 'h', '-', 'w', 'e', 'b',
    };
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    assert_bytes(p, len, want, sizeof(want));
    ch_batch_free(b);
}
END_TEST

/* A row that carries its lengths (telemetry rows do) encodes to the same
 * bytes as one measured with strlen. */
START_TEST(test_rowbinary_row_with_lengths_encodes_the_same)
{
    ch_table t;
    table_of(modern_describe, &t);
    ch_batch *a = ch_batch_new(&t, CH_FORMAT_ROWBINARY), *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    r.route_pattern = "/m";
    ck_assert_int_eq(ch_batch_add(a, &r, T1_US), 0);
    r.len.org_id_hash = 1, r.len.event_id = 2, r.len.name = 11, r.len.schema_version = 2;
    r.len.session_id = 1, r.len.anonymous_user_id = 1, r.len.route_pattern = 2;
    r.len.payload_json = 2, r.len.source = 14;
    r.has_len = 1;
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    r.route_pattern = NULL;   /* NULL: flag only, whatever the length says */
    r.len.route_pattern = 0;
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t la, lb;
    const char *pa = ch_batch_slice(a, 0, 1, &la), *pb = ch_batch_slice(b, 0, 1, &lb);
    assert_bytes(pb, lb, (const unsigned char *)pa, la);
    pb = ch_batch_slice(b, 1, 1, &lb);
    ck_assert_uint_eq(lb, la - 3);   /* 0x00 0x02 "/m" became 0x01 */
    ch_batch_free(a);
    ch_batch_free(b);
}
END_TEST

START_TEST(test_rowbinary_long_string_uses_two_byte_varint)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    char payload[301];
    memset(payload, 'x', 300);
    payload[300] = '\0';
    event_row r = small_row();
    r.payload_json = payload;
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    /* 300 = 0b10_0101100 -> 0xac 0x02, right after the NULL route flag at 24. */
    ck_assert_uint_eq((unsigned char)p[24], 0x01);
    ck_assert_uint_eq((unsigned char)p[25], 0xac);
    ck_assert_uint_eq((unsigned char)p[26], 0x02);
    ck_assert_int_eq(p[27], 'x');
    ck_assert_int_eq(p[27 + 299], 'x');
    ck_assert_uint_eq((unsigned char)p[27 + 300], 0x00);   /* occurred_at starts */
    ch_batch_free(b);
}
END_TEST

START_TEST(test_rowbinary_negative_time_floors_toward_past)
{
    ch_table t;
    table_of(modern_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    r.occurred_at_us = -1;   /* 1969-12-31 23:59:59.999999 -> -1 ms */
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    static const unsigned char minus_one[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    ck_assert_mem_eq(p + 28, minus_one, 8);
    ch_batch_free(b);
}
END_TEST

START_TEST(test_rowbinary_follows_table_column_order)
{
    /* Same columns, source first: the bytes must follow the table. */
    const char *last = strstr(legacy_describe, "source\t");
    buf tsv = BUF_INIT;
    buf_puts(&tsv, last);
    buf_append(&tsv, legacy_describe, (size_t)(last - legacy_describe));
    ch_table t;
    table_of(buf_cstr(&tsv), &t);
    ck_assert_int_eq(t.cols[0].id, CH_COL_SOURCE);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    ck_assert_mem_eq(p, "\x0e" "dev-health-web" "\x01o", 17);
    ch_batch_free(b);
    buf_free(&tsv);
}
END_TEST

/* ---- JSONEachRow ----------------------------------------------------------------- */

START_TEST(test_json_datetime_table_exact_text)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_JSONEACHROW);
    event_row r = small_row();
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    const char *want =
        "{\"org_id_hash\":\"o\",\"event_id\":\"e1\",\"name\":\"page_viewed\","
        "\"schema_version\":\"v1\",\"session_id\":\"s\",\"anonymous_user_id\":\"a\","
        "\"route_pattern\":null,\"payload_json\":\"{}\",\"occurred_at\":1767225600,"
        "\"ingested_at\":1767225601,\"source\":\"dev-health-web\"}\n";
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_mem_eq(p, want, len);
    ch_batch_free(b);
}
END_TEST

START_TEST(test_json_datetime64_table_exact_text)
{
    ch_table t;
    table_of(modern_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_JSONEACHROW);
    event_row r = small_row();
    r.route_pattern = "/m";
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    const char *want =
        "{\"org_id_hash\":\"o\",\"event_id\":\"e1\",\"name\":\"page_viewed\","
        "\"schema_version\":\"v1\",\"session_id\":\"s\",\"anonymous_user_id\":\"a\","
        "\"route_pattern\":\"/m\",\"payload_json\":\"{}\","
        "\"occurred_at\":\"2026-01-01 00:00:00.123\","
        "\"ingested_at\":\"2026-01-01 00:00:01.999\",\"source\":\"dev-health-web\"}\n";
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    ck_assert_str_eq(p, want);
    ck_assert_uint_eq(len, strlen(want));
    ch_batch_free(b);
}
END_TEST

START_TEST(test_json_escapes_quotes_backslashes_controls_keeps_utf8)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_JSONEACHROW);
    event_row r = small_row();
    /* payload: {"q":"a\"b"} as json.dumps writes it, then tab, newline, CR,
     * \b, \f, 0x01, 0x1f, DEL, U+00E9 and an emoji (raw UTF-8). */
    r.payload_json = "{\"q\":\"a\\\"b\\u0000\"}\t\n\r\b\f\x01\x1f\x7f\xc3\xa9\xf0\x9f\x98\x80";
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t len;
    const char *p = ch_batch_slice(b, 0, 1, &len);
    const char *want_field =
        "\"payload_json\":\"{\\\"q\\\":\\\"a\\\\\\\"b\\\\u0000\\\"}"
        "\\t\\n\\r\\b\\f\\u0001\\u001f\x7f\xc3\xa9\xf0\x9f\x98\x80\",";
    ck_assert_msg(strstr(p, want_field) != NULL, "got %s", p);
    ch_batch_free(b);
}
END_TEST

/* ---- Batch behaviour ---------------------------------------------------------------- */

START_TEST(test_batch_slices_are_row_aligned)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *one = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    ch_batch *three = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    const char *ids[3] = {"a", "bb", "ccc"};
    for (int i = 0; i < 3; i++) {
        event_row r = small_row();
        r.event_id = (char *)ids[i];
        ck_assert_int_eq(ch_batch_add(three, &r, T1_US), 0);
        if (i == 1) ck_assert_int_eq(ch_batch_add(one, &r, T1_US), 0);
    }
    size_t len1, len_mid, len_tail, len_all;
    const char *p1 = ch_batch_slice(one, 0, 1, &len1);
    const char *mid = ch_batch_slice(three, 1, 1, &len_mid);
    ck_assert_uint_eq(len1, len_mid);
    ck_assert_mem_eq(p1, mid, len1);
    ch_batch_slice(three, 1, 2, &len_tail);
    ch_batch_slice(three, 0, 3, &len_all);
    ck_assert_uint_eq(len_all, ch_batch_bytes(three));
    ck_assert_uint_eq(len_tail, len_all - (len_mid - 1));   /* row 0 is 1 byte shorter than row 1 */
    ck_assert_ptr_nonnull(ch_batch_slice(three, 3, 0, &len_all));
    ck_assert_uint_eq(len_all, 0);
    ck_assert_ptr_null(ch_batch_slice(three, 2, 2, &len_all));
    ck_assert_ptr_null(ch_batch_slice(three, 4, 0, &len_all));
    ch_batch_reset(three);
    ck_assert_uint_eq(ch_batch_rows(three), 0);
    ck_assert_uint_eq(ch_batch_bytes(three), 0);
    ch_batch_free(one);
    ch_batch_free(three);
}
END_TEST

START_TEST(test_batch_grows_past_initial_offsets)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_JSONEACHROW);
    event_row r = small_row();
    for (int i = 0; i < 1000; i++) ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t len;
    const char *p = ch_batch_slice(b, 999, 1, &len);
    ck_assert_int_eq(p[0], '{');
    ck_assert_int_eq(p[len - 1], '\n');
    ck_assert_uint_eq(len * 1000, ch_batch_bytes(b));
    ch_batch_free(b);
}
END_TEST

START_TEST(test_batch_refuses_null_in_non_nullable_column)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    size_t before = ch_batch_bytes(b);
    r.session_id = NULL;
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), -1);
    ck_assert_str_eq(ch_batch_error(b), "column session_id (String) cannot hold NULL");
    ck_assert_uint_eq(ch_batch_rows(b), 1);
    ck_assert_uint_eq(ch_batch_bytes(b), before);
    ch_batch_free(b);
}
END_TEST

START_TEST(test_batch_refuses_time_outside_datetime_range)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    event_row r = small_row();
    r.occurred_at_us = -1000000LL;
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), -1);
    ck_assert_str_eq(ch_batch_error(b), "column occurred_at (DateTime('UTC')) cannot hold -1 s "
                     "since epoch (range 1970..2106)");
    r.occurred_at_us = (4294967295LL + 1) * 1000000LL;
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), -1);
    r.occurred_at_us = 4294967295LL * 1000000LL;   /* the last second DateTime holds */
    ck_assert_int_eq(ch_batch_add(b, &r, T1_US), 0);
    ck_assert_uint_eq(ch_batch_rows(b), 1);
    ch_batch_free(b);
}
END_TEST

START_TEST(test_format_default_and_names)
{
    ck_assert_int_eq(ch_format_default(), CH_FORMAT_ROWBINARY);
    ck_assert_str_eq(ch_format_name(CH_FORMAT_ROWBINARY), "RowBinary");
    ck_assert_str_eq(ch_format_name(CH_FORMAT_JSONEACHROW), "JSONEachRow");
}
END_TEST

/* ---- DESCRIBE mapping ----------------------------------------------------------------- */

START_TEST(test_describe_maps_types_to_kinds)
{
    ch_table t;
    table_of(legacy_describe, &t);
    ck_assert_uint_eq(t.ncols, CH_COL_COUNT);
    ck_assert_int_eq(t.cols[CH_COL_NAME].kind, CH_KIND_STRING);
    ck_assert_str_eq(t.cols[CH_COL_NAME].type, "LowCardinality(String)");
    ck_assert_int_eq(t.cols[CH_COL_ROUTE_PATTERN].kind, CH_KIND_NULLABLE_STRING);
    ck_assert_int_eq(t.cols[CH_COL_OCCURRED_AT].kind, CH_KIND_DATETIME);
    ck_assert_str_eq(t.cols[CH_COL_OCCURRED_AT].type, "DateTime('UTC')");
    table_of(modern_describe, &t);
    ck_assert_int_eq(t.cols[CH_COL_INGESTED_AT].kind, CH_KIND_DATETIME64_3);
}
END_TEST

static void describe_fails(const char *from, const char *to, const char *want_msg)
{
    buf tsv = BUF_INIT;
    const char *hit = strstr(legacy_describe, from);
    ck_assert_ptr_nonnull(hit);
    buf_append(&tsv, legacy_describe, (size_t)(hit - legacy_describe));
    buf_puts(&tsv, to);
    buf_puts(&tsv, hit + strlen(from));
    ch_table t;
    ch_error err;
    ck_assert_int_eq(ch_table_from_describe(tsv.data, tsv.len, &t, &err), -1);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_str_eq(err.msg, want_msg);
    buf_free(&tsv);
}

START_TEST(test_describe_refuses_missing_column)
{
    describe_fails("session_id\tString\t\t\t\n", "", "table lacks column session_id (telemetry contract §3)");
}
END_TEST

START_TEST(test_describe_refuses_unexpected_column)
{
    describe_fails("source\t", "extra\tUInt8\t\t\t\nsource\t",
                   "table has unexpected column extra UInt8: the encoder writes exactly the 11 "
                   "columns of the telemetry contract");
}
END_TEST

START_TEST(test_describe_tolerates_materialized_column)
{
    buf tsv = BUF_INIT;
    buf_puts(&tsv, legacy_describe);
    buf_puts(&tsv, "day\tDate\tMATERIALIZED\ttoDate(occurred_at)\t\n");
    ch_table t;
    ch_error err;
    ck_assert_int_eq(ch_table_from_describe(tsv.data, tsv.len, &t, &err), 0);
    ck_assert_uint_eq(t.ncols, CH_COL_COUNT);
    buf_free(&tsv);
}
END_TEST

START_TEST(test_describe_refuses_duplicate_column)
{
    describe_fails("source\t", "name\tString\t\t\t\nsource\t", "DESCRIBE TABLE lists column name twice");
}
END_TEST

START_TEST(test_describe_refuses_non_nullable_route)
{
    describe_fails("route_pattern\tNullable(String)", "route_pattern\tString",
                   "column route_pattern has type String, which the encoder cannot write "
                   "(expected Nullable(String))");
}
END_TEST

START_TEST(test_describe_refuses_other_precision_and_types)
{
    describe_fails("occurred_at\tDateTime(\\'UTC\\')", "occurred_at\tDateTime64(6, \\'UTC\\')",
                   "column occurred_at has type DateTime64(6, 'UTC'), which the encoder cannot "
                   "write (expected DateTime or DateTime64(3))");
    describe_fails("event_id\tString", "event_id\tUUID",
                   "column event_id has type UUID, which the encoder cannot write (expected String)");
}
END_TEST

START_TEST(test_describe_accepts_lowcardinality_nullable_route)
{
    buf tsv = BUF_INIT;
    const char *hit = strstr(legacy_describe, "Nullable(String)");
    buf_append(&tsv, legacy_describe, (size_t)(hit - legacy_describe));
    buf_puts(&tsv, "LowCardinality(Nullable(String))");
    buf_puts(&tsv, hit + strlen("Nullable(String)"));
    ch_table t;
    ch_error err;
    ck_assert_int_eq(ch_table_from_describe(tsv.data, tsv.len, &t, &err), 0);
    ck_assert_int_eq(t.cols[CH_COL_ROUTE_PATTERN].kind, CH_KIND_NULLABLE_STRING);
    buf_free(&tsv);
}
END_TEST

/* ---- DDL ------------------------------------------------------------------------------- */

START_TEST(test_ddl_production_on_20_1)
{
    buf out = BUF_INIT;
    ch_schema_ddl(20, 1, "product_telemetry_events", &out);
    ck_assert_str_eq(buf_cstr(&out),
        "CREATE TABLE IF NOT EXISTS product_telemetry_events (\n"
        "    org_id_hash String DEFAULT '', event_id String, name LowCardinality(String),\n"
        "    schema_version String, session_id String, anonymous_user_id String,\n"
        "    route_pattern Nullable(String), payload_json String,\n"
        "    occurred_at DateTime64(3, 'UTC'), ingested_at DateTime64(3, 'UTC'),\n"
        "    source LowCardinality(String)\n"
        ") ENGINE = ReplacingMergeTree(ingested_at)\n"
        "PARTITION BY toYYYYMM(occurred_at)\n"
        "ORDER BY (org_id_hash, name, occurred_at, event_id)\n"
        "TTL toDateTime(occurred_at) + INTERVAL 180 DAY DELETE");
    buf_free(&out);
}
END_TEST

START_TEST(test_ddl_legacy_on_18_16)
{
    buf out = BUF_INIT;
    ch_schema_ddl(18, 16, "t", &out);
    ck_assert_str_eq(buf_cstr(&out),
        "CREATE TABLE IF NOT EXISTS t (\n"
        "    org_id_hash String DEFAULT '', event_id String, name LowCardinality(String),\n"
        "    schema_version String, session_id String, anonymous_user_id String,\n"
        "    route_pattern Nullable(String), payload_json String,\n"
        "    occurred_at DateTime('UTC'), ingested_at DateTime('UTC'),\n"
        "    source LowCardinality(String)\n"
        ") ENGINE = ReplacingMergeTree(ingested_at)\n"
        "PARTITION BY toYYYYMM(occurred_at)\n"
        "ORDER BY (org_id_hash, name, occurred_at, event_id)");
    buf_reset(&out);
    ch_schema_ddl(19, 17, "t", &out);
    ck_assert_ptr_null(strstr(buf_cstr(&out), "TTL"));
    buf_free(&out);
}
END_TEST

static Suite *encode_suite(void)
{
    Suite *s = suite_create("clickhouse_encode");
    TCase *tc = tcase_create("encode");
    tcase_add_test(tc, test_rowbinary_datetime_table_with_null_route);
    tcase_add_test(tc, test_rowbinary_datetime64_table_with_route);
    tcase_add_test(tc, test_rowbinary_row_with_lengths_encodes_the_same);
    tcase_add_test(tc, test_rowbinary_long_string_uses_two_byte_varint);
    tcase_add_test(tc, test_rowbinary_negative_time_floors_toward_past);
    tcase_add_test(tc, test_rowbinary_follows_table_column_order);
    tcase_add_test(tc, test_json_datetime_table_exact_text);
    tcase_add_test(tc, test_json_datetime64_table_exact_text);
    tcase_add_test(tc, test_json_escapes_quotes_backslashes_controls_keeps_utf8);
    tcase_add_test(tc, test_batch_slices_are_row_aligned);
    tcase_add_test(tc, test_batch_grows_past_initial_offsets);
    tcase_add_test(tc, test_batch_refuses_null_in_non_nullable_column);
    tcase_add_test(tc, test_batch_refuses_time_outside_datetime_range);
    tcase_add_test(tc, test_format_default_and_names);
    tcase_add_test(tc, test_describe_maps_types_to_kinds);
    tcase_add_test(tc, test_describe_refuses_missing_column);
    tcase_add_test(tc, test_describe_refuses_unexpected_column);
    tcase_add_test(tc, test_describe_tolerates_materialized_column);
    tcase_add_test(tc, test_describe_refuses_duplicate_column);
    tcase_add_test(tc, test_describe_refuses_non_nullable_route);
    tcase_add_test(tc, test_describe_refuses_other_precision_and_types);
    tcase_add_test(tc, test_describe_accepts_lowcardinality_nullable_route);
    tcase_add_test(tc, test_ddl_production_on_20_1);
    tcase_add_test(tc, test_ddl_legacy_on_18_16);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(encode_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
