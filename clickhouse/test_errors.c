/* clickhouse/test_errors.c: the client's pure parts, without a server: URL
 * parsing and redaction, exception parsing, transient/permanent verdicts,
 * gzip bodies, identifier checks. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "clickhouse/ch_internal.h"

/* ---- URLs ------------------------------------------------------------------------ */

START_TEST(test_url_full_form_is_redacted)
{
    ch_error err;
    ch_client *c = ch_client_new("http://ptel:s3cret@127.0.0.1:18204/telemetry?max_insert_block_size=100", &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(ch_client_redacted_url(c), "http://ptel:***@127.0.0.1:18204/telemetry?max_insert_block_size=100");
    ck_assert_str_eq(ch_client_database(c), "telemetry");
    ch_client_free(c);
}
END_TEST

START_TEST(test_url_defaults_port_and_database)
{
    ch_error err;
    ch_client *c = ch_client_new("https://example.org", &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(ch_client_redacted_url(c), "https://example.org:8443/");
    ck_assert_ptr_null(ch_client_database(c));
    ch_client_free(c);
    c = ch_client_new("HTTP://h/", &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(ch_client_redacted_url(c), "http://h:8123/");
    ch_client_free(c);
}
END_TEST

START_TEST(test_url_database_parameter_and_percent_encoded_password)
{
    ch_error err;
    ch_client *c = ch_client_new("http://u:p%40ss%3Aword@[::1]:9/?database=db1&async_insert=0", &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(ch_client_database(c), "db1");
    ck_assert_str_eq(ch_client_redacted_url(c), "http://u:***@[::1]:9/db1?async_insert=0");
    ch_client_free(c);
}
END_TEST

START_TEST(test_url_user_without_password)
{
    ch_error err;
    ch_client *c = ch_client_new("http://reader@h:1", &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(ch_client_redacted_url(c), "http://reader@h:1/");
    ch_client_free(c);
}
END_TEST

static void url_refused(const char *url, const char *want)
{
    ch_error err;
    memset(&err, 0, sizeof(err));
    ck_assert_ptr_null(ch_client_new(url, &err));
    ck_assert_str_eq(err.msg, want);
    ck_assert_int_eq(err.transient, 0);
}

START_TEST(test_url_refusals_say_why)
{
    url_refused(NULL, "ClickHouse URL: missing");
    url_refused("ftp://h", "ClickHouse URL: scheme must be http:// or https://");
    url_refused("http://", "ClickHouse URL: no host");
    url_refused("http://h:0", "ClickHouse URL: port out of range");
    url_refused("http://h:99999", "ClickHouse URL: port out of range");
    url_refused("http://h:9999999999", "ClickHouse URL: bad port");
    url_refused("http://h:12x", "ClickHouse URL: bad port");
    url_refused("http://h:", "ClickHouse URL: bad port");
    url_refused("http://[::1", "ClickHouse URL: unterminated [IPv6] host");
    url_refused("http://h/db/x", "ClickHouse URL: path must be at most /database");
    url_refused("http://h/db-1", "ClickHouse URL: database 'db-1' is not a plain identifier");
    url_refused("http://h/?flag", "ClickHouse URL: setting 'flag' is not name=value");
    url_refused("http://h/?a=b c", "ClickHouse URL: setting 'a=b c' has a character that must be percent-encoded");
    url_refused("http://h/#x", "ClickHouse URL: fragments are not allowed");
    url_refused("http://h/?a=1#x", "ClickHouse URL: fragments are not allowed");
    url_refused("http://h o", "ClickHouse URL: bad character in host");
}
END_TEST

START_TEST(test_url_bad_password_escape_does_not_echo_it)
{
    ch_error err;
    ck_assert_ptr_null(ch_client_new("http://u:hunter%2@h", &err));
    ck_assert_ptr_null(strstr(err.msg, "hunter"));
    ck_assert_str_eq(err.msg, "ClickHouse URL: user or password has a bad percent-escape or a control character");
    ck_assert_ptr_null(ch_client_new("http://u:a%0Ab@h", &err));   /* LF would split the header */
    ck_assert_ptr_null(strstr(err.msg, "a\nb"));
}
END_TEST

START_TEST(test_set_timeouts_and_threshold_accept_values)
{
    ch_error err;
    ch_client *c = ch_client_new("http://h:1", &err);
    ch_client_set_timeouts(c, 0, -5);          /* ignored: keeps defaults */
    ch_client_set_timeouts(c, 100, 200);
    ch_client_set_gzip_threshold(c, 0);
    ch_client_free(c);
    ch_client_free(NULL);
}
END_TEST

/* ---- Exceptions and classification ---------------------------------------------- */

START_TEST(test_exception_body_1816_is_parsed)
{
    static const char body[] = "Code: 62, e.displayText() = DB::Exception: Syntax error: failed at "
                               "position 1: SELEC 1., e.what() = DB::Exception\n";
    ch_error err;
    ch_error_from_response(&err, 400, 0, body, strlen(body));
    ck_assert_int_eq(err.code, 62);
    ck_assert_int_eq(err.http_status, 400);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_str_eq(err.msg, "ClickHouse permanent error (HTTP 400, code 62): Syntax error: failed "
                              "at position 1: SELEC 1.");
}
END_TEST

START_TEST(test_exception_body_modern_is_parsed)
{
    static const char body[] = "Code: 252. DB::Exception: Too many parts (300).\nMerges are "
                               "processing significantly slower. (TOO_MANY_PARTS) (version 23.8.1)\n";
    ch_error err;
    ch_error_from_response(&err, 500, 0, body, strlen(body));
    ck_assert_int_eq(err.code, 252);
    ck_assert_int_eq(err.transient, 1);
    ck_assert_str_eq(err.msg, "ClickHouse transient error (HTTP 500, code 252): Too many parts (300). "
                              "Merges are processing significantly slower. (TOO_MANY_PARTS) (version 23.8.1)");
}
END_TEST

START_TEST(test_exception_header_code_wins)
{
    static const char body[] = "Code: 1, something";
    ch_error err;
    ch_error_from_response(&err, 500, 241, body, strlen(body));
    ck_assert_int_eq(err.code, 241);
    ck_assert_int_eq(err.transient, 1);
}
END_TEST

START_TEST(test_exception_without_code_uses_status)
{
    ch_error err;
    ch_error_from_response(&err, 502, 0, "", 0);
    ck_assert_int_eq(err.code, 0);
    ck_assert_int_eq(err.transient, 1);
    ck_assert_str_eq(err.msg, "ClickHouse transient error (HTTP 502, code 0): (empty response body)");
    ch_error_from_response(&err, 403, 0, "<html>forbidden</html>", 22);
    ck_assert_int_eq(err.transient, 0);
    ck_assert_str_eq(err.msg, "ClickHouse permanent error (HTTP 403, code 0): <html>forbidden</html>");
}
END_TEST

START_TEST(test_exception_message_is_truncated_and_cleaned)
{
    buf body = BUF_INIT;
    buf_puts(&body, "Code: 27, e.displayText() = DB::Exception: bad\x01value ");
    for (int i = 0; i < 2000; i++) buf_putc(&body, 'z');
    ch_error err;
    ch_error_from_response(&err, 400, 0, body.data, body.len);
    ck_assert_int_eq(err.code, 27);
    ck_assert_uint_lt(strlen(err.msg), sizeof(err.msg));
    ck_assert_ptr_nonnull(strstr(err.msg, "bad value z"));
    buf_free(&body);
}
END_TEST

START_TEST(test_classification_table)
{
    /* Transient: overload and network (brief §1). */
    int transient[] = {252, 241, 159, 243, 242, 209, 210, 202};
    for (size_t i = 0; i < sizeof(transient) / sizeof(*transient); i++)
        ck_assert_msg(ch_classify(transient[i], 500) == 1, "code %d", transient[i]);
    /* Permanent even when the status is 5xx (18.16 answers 500 for code 33). */
    int permanent[] = {62, 6, 25, 26, 27, 38, 41, 53, 60, 16, 193, 516, 33, 81};
    for (size_t i = 0; i < sizeof(permanent) / sizeof(*permanent); i++)
        ck_assert_msg(ch_classify(permanent[i], 500) == 0, "code %d", permanent[i]);
    /* Unknown codes: by status. */
    ck_assert_int_eq(ch_classify(12345, 503), 1);
    ck_assert_int_eq(ch_classify(12345, 400), 0);
    ck_assert_int_eq(ch_classify(0, 429), 1);
    ck_assert_int_eq(ch_classify(0, 408), 1);
    ck_assert_int_eq(ch_classify(0, 404), 0);
}
END_TEST

START_TEST(test_blames_rows_only_for_data_errors)
{
    ch_error err = {.code = 27, .http_status = 400, .transient = 0};
    ck_assert_int_eq(ch_error_blames_rows(&err), 1);
    err.code = 33;
    ck_assert_int_eq(ch_error_blames_rows(&err), 1);
    err.code = 62;   /* the query, not the rows */
    ck_assert_int_eq(ch_error_blames_rows(&err), 0);
    err.code = 60;
    ck_assert_int_eq(ch_error_blames_rows(&err), 0);
    err.code = 27;
    err.transient = 1;
    ck_assert_int_eq(ch_error_blames_rows(&err), 0);
    ck_assert_int_eq(ch_error_blames_rows(NULL), 0);
}
END_TEST

START_TEST(test_error_set_truncates)
{
    ch_error err;
    char big[2000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ch_error_set(&err, 7, 400, 0, "%s", big);
    ck_assert_uint_eq(strlen(err.msg), sizeof(err.msg) - 1);
    ch_error_set(NULL, 1, 2, 3, "ignored");
}
END_TEST

START_TEST(test_scrub_secret_masks_every_occurrence)
{
    char msg[64] = "user p4ss said p4ss";
    ch_scrub_secret(msg, sizeof(msg), "p4ss");
    ck_assert_str_eq(msg, "user *** said ***");
    char star[64] = "a*b*";
    ch_scrub_secret(star, sizeof(star), "*");   /* the mask contains the secret */
    ck_assert_str_eq(star, "a***b***");
    char tight[7] = "x:ab:y";
    ch_scrub_secret(tight, sizeof(tight), "ab");  /* "x:***:y" needs 8 bytes with its NUL */
    ck_assert_str_eq(tight, "x:");
    char none[16] = "nothing";
    ch_scrub_secret(none, sizeof(none), "");
    ch_scrub_secret(none, sizeof(none), NULL);
    ck_assert_str_eq(none, "nothing");
}
END_TEST

/* ---- gzip and identifiers ----------------------------------------------------------- */

START_TEST(test_gzip_round_trips_with_gzip_header)
{
    buf in = BUF_INIT, out = BUF_INIT;
    for (int i = 0; i < 100000; i++) buf_printf(&in, "row %d\n", i % 97);
    buf_puts(&out, "prefix");
    ck_assert_int_eq(ch_gzip(in.data, in.len, &out), 0);
    ck_assert_uint_lt(out.len, in.len / 4);
    ck_assert_mem_eq(out.data, "prefix", 6);
    ck_assert_uint_eq((unsigned char)out.data[6], 0x1f);   /* gzip magic */
    ck_assert_uint_eq((unsigned char)out.data[7], 0x8b);
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    ck_assert_int_eq(inflateInit2(&zs, 15 + 16), Z_OK);
    char *back = malloc(in.len + 16);
    zs.next_in = (Bytef *)out.data + 6;
    zs.avail_in = (uInt)(out.len - 6);
    zs.next_out = (Bytef *)back;
    zs.avail_out = (uInt)(in.len + 16);
    ck_assert_int_eq(inflate(&zs, Z_FINISH), Z_STREAM_END);
    ck_assert_uint_eq(zs.total_out, in.len);
    ck_assert_mem_eq(back, in.data, in.len);
    inflateEnd(&zs);
    free(back);
    buf_free(&in);
    buf_free(&out);
}
END_TEST

START_TEST(test_gzip_of_empty_body)
{
    buf out = BUF_INIT;
    ck_assert_int_eq(ch_gzip("", 0, &out), 0);
    ck_assert_uint_eq(out.len, 20);   /* 10-byte header, 2-byte empty block, 8-byte trailer */
    buf_free(&out);
}
END_TEST

START_TEST(test_loopback_hosts)
{
    ck_assert_int_eq(ch_host_is_loopback("127.0.0.1:8123"), 1);
    ck_assert_int_eq(ch_host_is_loopback("127.1.2.254:18600"), 1);
    ck_assert_int_eq(ch_host_is_loopback("localhost:8123"), 1);
    ck_assert_int_eq(ch_host_is_loopback("LocalHost:8123"), 1);
    ck_assert_int_eq(ch_host_is_loopback("[::1]:8123"), 1);
    ck_assert_int_eq(ch_host_is_loopback("127.0.0.1"), 1);
    ck_assert_int_eq(ch_host_is_loopback("128.0.0.1:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("127.0.0:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("127.0.0.1.example.org:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("127.0.0.1234:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("localhost.example.org:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("[::12]:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("[::1:2]:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback("clickhouse:8123"), 0);
    ck_assert_int_eq(ch_host_is_loopback(""), 0);
    ck_assert_int_eq(ch_host_is_loopback(NULL), 0);
}
END_TEST

/* Deflate buys nothing on loopback (and was the drain's largest CPU cost):
 * off there unless asked for; on above 64 KiB for any other host. */
START_TEST(test_gzip_default_depends_on_host)
{
    ch_error err;
    const char *local[] = {"http://127.0.0.1:18600/db", "http://localhost:8123",
                           "http://u:p@[::1]:8123/"};
    for (size_t i = 0; i < sizeof local / sizeof *local; i++) {
        ch_client *c = ch_client_new(local[i], &err);
        ck_assert_ptr_nonnull(c);
        ck_assert_uint_eq(ch_client_gzip_threshold(c), 0);
        ch_client_set_gzip_threshold(c, 1000);
        ck_assert_uint_eq(ch_client_gzip_threshold(c), 1000);
        ch_client_free(c);
    }
    ch_client *c = ch_client_new("https://clickhouse.example.org/telemetry", &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(ch_client_gzip_threshold(c), CH_GZIP_THRESHOLD_DEFAULT);
    ch_client_free(c);
}
END_TEST

START_TEST(test_identifiers)
{
    ck_assert_int_eq(ch_ident_valid("product_telemetry_events"), 1);
    ck_assert_int_eq(ch_ident_valid("db1.t_2"), 1);
    ck_assert_int_eq(ch_ident_valid("_x"), 1);
    ck_assert_int_eq(ch_ident_valid(""), 0);
    ck_assert_int_eq(ch_ident_valid(NULL), 0);
    ck_assert_int_eq(ch_ident_valid("1t"), 0);
    ck_assert_int_eq(ch_ident_valid("t; DROP TABLE x"), 0);
    ck_assert_int_eq(ch_ident_valid("a.b.c"), 0);
    ck_assert_int_eq(ch_ident_valid(".t"), 0);
    ck_assert_int_eq(ch_ident_valid("t."), 0);
    char long_name[CH_IDENT_MAX + 2];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    ck_assert_int_eq(ch_ident_valid(long_name), 0);
    long_name[CH_IDENT_MAX] = '\0';
    ck_assert_int_eq(ch_ident_valid(long_name), 1);
}
END_TEST

START_TEST(test_insert_refuses_bad_table_and_range_without_io)
{
    /* Port 1 is never contacted: both refusals happen before any request. */
    ch_error err;
    ch_client *c = ch_client_new("http://127.0.0.1:1", &err);
    ch_table t;
    memset(&t, 0, sizeof(t));
    ch_batch *b = ch_batch_new(&t, CH_FORMAT_ROWBINARY);
    ck_assert_int_eq(ch_insert(c, "x; DROP", b, NULL, &err), -1);
    ck_assert_str_eq(err.msg, "ClickHouse insert: 'x; DROP' is not a valid table name");
    ck_assert_int_eq(ch_insert_range(c, "t", b, 0, 1, NULL, &err), -1);
    ck_assert_str_eq(err.msg, "ClickHouse insert: rows [0, +1) outside a batch of 0");
    ck_assert_int_eq(ch_insert(c, "t", b, NULL, &err), 0);   /* empty: no request */
    ch_batch_free(b);
    ch_client_free(c);
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *s = suite_create("clickhouse_errors");
    TCase *tc = tcase_create("pure");
    tcase_add_test(tc, test_url_full_form_is_redacted);
    tcase_add_test(tc, test_url_defaults_port_and_database);
    tcase_add_test(tc, test_url_database_parameter_and_percent_encoded_password);
    tcase_add_test(tc, test_url_user_without_password);
    tcase_add_test(tc, test_url_refusals_say_why);
    tcase_add_test(tc, test_url_bad_password_escape_does_not_echo_it);
    tcase_add_test(tc, test_set_timeouts_and_threshold_accept_values);
    tcase_add_test(tc, test_exception_body_1816_is_parsed);
    tcase_add_test(tc, test_exception_body_modern_is_parsed);
    tcase_add_test(tc, test_exception_header_code_wins);
    tcase_add_test(tc, test_exception_without_code_uses_status);
    tcase_add_test(tc, test_exception_message_is_truncated_and_cleaned);
    tcase_add_test(tc, test_classification_table);
    tcase_add_test(tc, test_blames_rows_only_for_data_errors);
    tcase_add_test(tc, test_error_set_truncates);
    tcase_add_test(tc, test_scrub_secret_masks_every_occurrence);
    tcase_add_test(tc, test_gzip_round_trips_with_gzip_header);
    tcase_add_test(tc, test_gzip_of_empty_body);
    tcase_add_test(tc, test_loopback_hosts);
    tcase_add_test(tc, test_gzip_default_depends_on_host);
    tcase_add_test(tc, test_identifiers);
    tcase_add_test(tc, test_insert_refuses_bad_table_and_range_without_io);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(errors_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
