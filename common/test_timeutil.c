/* common/test_timeutil.c: unit tests for timeutil.c. Every expected value was
 * computed by /usr/bin/python3 (3.11):
 *   parse:  (datetime.fromisoformat(s.replace('Z', '+00:00'))  [naive -> UTC]
 *            - datetime(1970,1,1,tzinfo=utc)) // timedelta(microseconds=1)
 *   format: dt.replace(tzinfo=None).isoformat(), dt.isoformat(),
 *           dt.isoformat(sep=' ', timespec='milliseconds' or 'seconds')
 * Fractions longer than 6 digits were truncated before asking Python.
 * Besides these hand-picked cases, the corpus tests/data/timeutil/cases.txt
 * (random dates, zones and fractions; generator beside it) is replayed. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/timeutil.h"

/* ---- Parsing ---- */

typedef struct iso_case {
    const char *text;
    int64_t us;
} iso_case;

static const iso_case valid[] = {
    {"2026-05-25T12:00:00.123Z", 1779710400123000LL},
    {"2026-05-25T12:00:00Z", 1779710400000000LL},
    {"2026-05-25 12:00:00", 1779710400000000LL},
    {"2026-11-27T22:10:23.105973+00:00", 1795817423105973LL},
    {"2026-11-27T22:10:23.105973+05:30", 1795797623105973LL},
    {"2026-11-27T22:10:23.105973-0800", 1795846223105973LL},
    {"2024-02-29T23:59:59.999999Z", 1709251199999999LL},
    {"1970-01-01T00:00:00", 0},
    {"1969-12-31T23:59:59.5Z", -500000LL},
    {"0001-01-01T00:00:00", -62135596800000000LL},
    {"9999-12-31T23:59:59.999999", 253402300799999999LL},
    {"2026-05-25T12:30", 1779712200000000LL},
    {"2026-05-25T12:30Z", 1779712200000000LL},
    {"2026-05-25T00:00:00.1+23:59", 1779580860100000LL},
    {"2026-05-25T00:00:00-23:59", 1779753540000000LL},
    {"2000-02-29T12:00:00.000001", 951825600000001LL},
    {"2026-05-25T12:00:00.1234567Z", 1779710400123456LL},
    {"2026-05-25T12:00:00.123456789Z", 1779710400123456LL},
};
#define N_VALID (sizeof valid / sizeof valid[0])

START_TEST(test_time_parse_iso8601_matches_python_microseconds)
{
    const iso_case *c = &valid[_i];
    int64_t us = 42;
    ck_assert_msg(time_parse_iso8601(c->text, strlen(c->text), &us) == 0, "%s", c->text);
    ck_assert_msg(us == c->us, "%s: got %" PRId64 " want %" PRId64, c->text, us, c->us);
}
END_TEST

/* Rejected: out-of-range fields (Python rejects them too), and shapes the
 * header does not promise (Python 3.11 takes some of those: noted). */
static const char *const invalid[] = {
    "2026-13-01T00:00:00",             /* month must be in 1..12 */
    "2026-00-10T00:00:00",             /* month must be in 1..12 */
    "2026-02-30T00:00:00",             /* day is out of range for month */
    "2025-02-29T00:00:00",             /* not a leap year */
    "1900-02-29T00:00:00",             /* century, not a leap year */
    "2026-05-00T00:00:00",             /* day is out of range */
    "2026-04-31T00:00:00",             /* day is out of range */
    "2026-05-25T24:00:00",             /* hour must be in 0..23 */
    "2026-05-25T12:60:00",             /* minute must be in 0..59 */
    "2026-05-25T12:00:60",             /* second must be in 0..59 */
    "2026-05-25T12:00:00+24:00",       /* offset strictly inside +-24h */
    "2026-05-25T12:00:00+01:60",       /* offset minutes (Python accepts; we don't) */
    "0000-01-01T00:00:00",             /* year 0 is out of range */
    "2026-05-25T12:00:00.",            /* empty fraction */
    "2026-05-25T12:00:00.1234567891Z", /* more than 9 fraction digits */
    "2026-05-25T12:00:00 ",            /* trailing garbage */
    " 2026-05-25T12:00:00",            /* leading garbage */
    "2026-5-25T12:00:00",              /* short month */
    "2026-05-25T12:00:00z",            /* lower-case zone (Python rejects) */
    "2026-05-25T12:00:00Z+01:00",      /* two zones */
    "2026-05-25T12:00:00+1:00",        /* short offset hour */
    "2026-05-25T12:00:00+01:0",        /* short offset minute */
    "2026-05-25T12:00:00+",            /* sign only */
    "2026-05-25T12:00:00+01:00:30",    /* offset seconds (Python accepts; header doesn't) */
    "2026-05-25T12",                   /* hour only (Python accepts; header doesn't) */
    "2026-05-25",                      /* date only (Python accepts; not a date-time) */
    "2026-05-25t12:00:00",             /* lower-case separator (Python accepts) */
    "2026-05-25T12:00:00,5",           /* comma fraction (Python accepts) */
    "20260525T120000",                 /* basic format (Python accepts) */
    "2026-05-25T12:00:0",              /* short seconds */
    "2026-05-25T12:00:",               /* missing seconds */
    "2026-05-25T1a:00:00",             /* non-digit */
    "",
};
#define N_INVALID (sizeof invalid / sizeof invalid[0])

START_TEST(test_time_parse_iso8601_rejects_malformed_and_out_of_range)
{
    int64_t us = 42;
    ck_assert_msg(time_parse_iso8601(invalid[_i], strlen(invalid[_i]), &us) == -1, "%s",
                  invalid[_i]);
    ck_assert_int_eq(us, 42);   /* untouched on error */
}
END_TEST

START_TEST(test_time_parse_iso8601_honours_len_not_nul)
{
    const char *s = "2026-05-25T12:00:00Zjunk";
    int64_t us = 0;
    ck_assert_int_eq(time_parse_iso8601(s, 20, &us), 0);
    ck_assert_int_eq(us, 1779710400000000LL);
    ck_assert_int_eq(time_parse_iso8601(s, 19, &us), 0);   /* naive */
    ck_assert_int_eq(time_parse_iso8601(s, 18, &us), -1);  /* "...12:00:0" */
    ck_assert_int_eq(time_parse_iso8601("2026-05-25T12:00:00\0", 20, &us), -1);
}
END_TEST

/* ---- Formatting ---- */

typedef struct format_case {
    int64_t us;
    const char *date_done, *iso_offset, *ch_millis, *ch_seconds;
} format_case;

static const format_case formats[] = {
    {0, "1970-01-01T00:00:00", "1970-01-01T00:00:00+00:00",
     "1970-01-01 00:00:00.000", "1970-01-01 00:00:00"},
    {1, "1970-01-01T00:00:00.000001", "1970-01-01T00:00:00.000001+00:00",
     "1970-01-01 00:00:00.000", "1970-01-01 00:00:00"},
    {1764281419092333LL, "2025-11-27T22:10:19.092333", "2025-11-27T22:10:19.092333+00:00",
     "2025-11-27 22:10:19.092", "2025-11-27 22:10:19"},
    {1764281419000000LL, "2025-11-27T22:10:19", "2025-11-27T22:10:19+00:00",
     "2025-11-27 22:10:19.000", "2025-11-27 22:10:19"},
    {-1, "1969-12-31T23:59:59.999999", "1969-12-31T23:59:59.999999+00:00",
     "1969-12-31 23:59:59.999", "1969-12-31 23:59:59"},
    {1764281423105973LL, "2025-11-27T22:10:23.105973", "2025-11-27T22:10:23.105973+00:00",
     "2025-11-27 22:10:23.105", "2025-11-27 22:10:23"},
    {253402300799999999LL, "9999-12-31T23:59:59.999999", "9999-12-31T23:59:59.999999+00:00",
     "9999-12-31 23:59:59.999", "9999-12-31 23:59:59"},
    {-62135596800000000LL, "0001-01-01T00:00:00", "0001-01-01T00:00:00+00:00",
     "0001-01-01 00:00:00.000", "0001-01-01 00:00:00"},
    {951825600000001LL, "2000-02-29T12:00:00.000001", "2000-02-29T12:00:00.000001+00:00",
     "2000-02-29 12:00:00.000", "2000-02-29 12:00:00"},
    {1764281419999999LL, "2025-11-27T22:10:19.999999", "2025-11-27T22:10:19.999999+00:00",
     "2025-11-27 22:10:19.999", "2025-11-27 22:10:19"},
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

START_TEST(test_time_format_matches_python)
{
    const format_case *c = &formats[_i];
    buf b = BUF_INIT;
    time_format_date_done(&b, c->us);
    ck_assert_str_eq(buf_cstr(&b), c->date_done);
    buf_reset(&b);
    time_format_iso_offset(&b, c->us);
    ck_assert_str_eq(buf_cstr(&b), c->iso_offset);
    buf_reset(&b);
    time_format_clickhouse(&b, c->us, 1);
    ck_assert_str_eq(buf_cstr(&b), c->ch_millis);
    buf_reset(&b);
    time_format_clickhouse(&b, c->us, 0);
    ck_assert_str_eq(buf_cstr(&b), c->ch_seconds);
    buf_free(&b);
}
END_TEST

START_TEST(test_time_format_appends_to_existing_content)
{
    buf b = BUF_INIT;
    buf_puts(&b, "eta=");
    time_format_iso_offset(&b, 1764281423105973LL);
    ck_assert_str_eq(buf_cstr(&b), "eta=2025-11-27T22:10:23.105973+00:00");
    buf_free(&b);
}
END_TEST

START_TEST(test_time_format_then_parse_round_trips)
{
    /* Every 7th day over two 400-year Gregorian cycles around 1970, with jitter. */
    for (int64_t day = -146097; day <= 146097; day += 7) {
        int64_t us = day * 86400 * USEC_PER_SEC + (day & 0xffff) * 977 * 1000 + day % 1000;
        buf b = BUF_INIT;
        time_format_iso_offset(&b, us);
        int64_t back = 0;
        ck_assert_msg(time_parse_iso8601(b.data, b.len, &back) == 0, "%s", b.data);
        ck_assert_int_eq(back, us);
        buf_free(&b);
    }
}
END_TEST

/* Outside datetime's years 1..9999 there is no Python answer; the formatters
 * must still produce well-formed text and no undefined behaviour (UBSan). */
START_TEST(test_time_format_extreme_values_stay_defined)
{
    buf b = BUF_INIT;
    time_format_iso_offset(&b, INT64_MAX);
    ck_assert_str_eq(buf_cstr(&b), "294247-01-10T04:00:54.775807+00:00");
    buf_reset(&b);
    time_format_clickhouse(&b, INT64_MIN, 1);
    ck_assert_str_eq(buf_cstr(&b), "-290308-12-21 19:59:05.224");
    buf_free(&b);
}
END_TEST

/* ---- Python-generated corpus ---- */

/* Longest line in cases.txt, with room to spare. */
#define CORPUS_MAX_LINE 512

static FILE *open_corpus(void)
{
    const char *root = getenv("PTEL_SOURCE_ROOT");
    ck_assert_msg(root != NULL, "PTEL_SOURCE_ROOT is not set (run through meson test)");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/data/timeutil/cases.txt", root);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    return f;
}

/* Splits line in place at tabs; returns the field count (at most max). */
static int split_tabs(char *line, char **fields, int max)
{
    int n = 0;
    line[strcspn(line, "\n")] = '\0';
    for (char *p = line; n < max;) {
        fields[n++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = '\0';
        p = tab + 1;
    }
    return n;
}

static void check_format_line(char **f)
{
    int64_t us = strtoll(f[1], NULL, 10);
    buf b = BUF_INIT;
    time_format_date_done(&b, us);
    ck_assert_str_eq(buf_cstr(&b), f[2]);
    buf_reset(&b);
    time_format_iso_offset(&b, us);
    ck_assert_str_eq(buf_cstr(&b), f[3]);
    buf_reset(&b);
    time_format_clickhouse(&b, us, 1);
    ck_assert_str_eq(buf_cstr(&b), f[4]);
    buf_reset(&b);
    time_format_clickhouse(&b, us, 0);
    ck_assert_str_eq(buf_cstr(&b), f[5]);
    buf_free(&b);
}

/* counts[]: parse, reject, format lines seen. */
static void check_corpus_line(char **f, int n, int *counts)
{
    if (strcmp(f[0], "parse") == 0) {
        ck_assert_int_eq(n, 3);
        int64_t us = 0, want = strtoll(f[2], NULL, 10);
        ck_assert_msg(time_parse_iso8601(f[1], strlen(f[1]), &us) == 0, "rejected %s", f[1]);
        ck_assert_msg(us == want, "%s: got %" PRId64 " want %" PRId64, f[1], us, want);
        counts[0]++;
    } else if (strcmp(f[0], "reject") == 0) {
        ck_assert_int_eq(n, 2);
        int64_t us;
        ck_assert_msg(time_parse_iso8601(f[1], strlen(f[1]), &us) == -1, "accepted %s", f[1]);
        counts[1]++;
    } else {
        ck_assert_str_eq(f[0], "format");
        ck_assert_int_eq(n, 6);
        check_format_line(f);
        counts[2]++;
    }
}

START_TEST(test_time_corpus_matches_python_datetime)
{
    FILE *f = open_corpus();
    char line[CORPUS_MAX_LINE];
    int counts[3] = {0, 0, 0};
    while (fgets(line, sizeof line, f)) {
        char *fields[6];
        int n = split_tabs(line, fields, 6);
        check_corpus_line(fields, n, counts);
    }
    fclose(f);
    /* A truncated or missing corpus must fail, not pass vacuously. */
    ck_assert_int_ge(counts[0], 2000);
    ck_assert_int_ge(counts[1], 50);
    ck_assert_int_ge(counts[2], 2000);
}
END_TEST

/* ---- Clocks ---- */

START_TEST(test_time_now_clocks_agree_and_monotonic_does_not_go_back)
{
    int64_t us = time_now_us();
    double now = time_now();
    ck_assert(us > 1700000000LL * USEC_PER_SEC);       /* after Nov 2023 */
    ck_assert(now - (double)us / 1e6 < 1.0);
    ck_assert(now - (double)us / 1e6 > -1.0);
    double m1 = time_monotonic(), m2 = time_monotonic();
    ck_assert(m1 > 0.0);
    ck_assert(m2 >= m1);
}
END_TEST

static Suite *timeutil_suite(void)
{
    Suite *s = suite_create("timeutil");
    TCase *parse = tcase_create("parse");
    tcase_add_loop_test(parse, test_time_parse_iso8601_matches_python_microseconds, 0, N_VALID);
    tcase_add_loop_test(parse, test_time_parse_iso8601_rejects_malformed_and_out_of_range, 0,
                        N_INVALID);
    tcase_add_test(parse, test_time_parse_iso8601_honours_len_not_nul);
    suite_add_tcase(s, parse);
    TCase *fmt = tcase_create("format");
    tcase_add_loop_test(fmt, test_time_format_matches_python, 0, N_FORMATS);
    tcase_add_test(fmt, test_time_format_appends_to_existing_content);
    tcase_add_test(fmt, test_time_format_then_parse_round_trips);
    tcase_add_test(fmt, test_time_format_extreme_values_stay_defined);
    suite_add_tcase(s, fmt);
    TCase *corpus = tcase_create("corpus");
    tcase_add_test(corpus, test_time_corpus_matches_python_datetime);
    suite_add_tcase(s, corpus);
    TCase *clk = tcase_create("clock");
    tcase_add_test(clk, test_time_now_clocks_agree_and_monotonic_does_not_go_back);
    suite_add_tcase(s, clk);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(timeutil_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
