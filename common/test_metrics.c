/* common/test_metrics.c: the registry renders Prometheus' text format
 * exactly (families grouped under HELP/TYPE, histogram buckets cumulative,
 * label values escaped) and drops series past its limit instead of growing. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

START_TEST(test_counter_and_gauge_render_exactly)
{
    metrics_reset();
    metrics_register("t_tasks_total", METRIC_COUNTER, "Tasks by state.", NULL, 0);
    metrics_register("t_reserved", METRIC_GAUGE, "Reserved messages.", NULL, 0);
    metrics_add("t_tasks_total", "state=\"SUCCESS\"", 2);
    metrics_add("t_tasks_total", "state=\"FAILURE\"", 1);
    metrics_add("t_tasks_total", "state=\"SUCCESS\"", 1);
    metrics_set("t_reserved", "", 7);
    metrics_set("t_reserved", "", 5);
    buf out = BUF_INIT;
    metrics_render(&out);
    ck_assert_str_eq(buf_cstr(&out),
        "# HELP t_tasks_total Tasks by state.\n"
        "# TYPE t_tasks_total counter\n"
        "t_tasks_total{state=\"FAILURE\"} 1\n"
        "t_tasks_total{state=\"SUCCESS\"} 3\n"
        "# HELP t_reserved Reserved messages.\n"
        "# TYPE t_reserved gauge\n"
        "t_reserved 5\n"
        "# HELP ptel_metrics_dropped_series_total Series not recorded because the registry was full.\n"
        "# TYPE ptel_metrics_dropped_series_total counter\n"
        "ptel_metrics_dropped_series_total 0\n");
    buf_free(&out);
    metrics_reset();
}
END_TEST

START_TEST(test_histogram_buckets_are_cumulative)
{
    metrics_reset();
    static const double b[] = {0.1, 1};
    metrics_register("t_seconds", METRIC_HISTOGRAM, "Latency.", b, 2);
    metrics_observe("t_seconds", "op=\"x\"", 0.05);
    metrics_observe("t_seconds", "op=\"x\"", 0.5);
    metrics_observe("t_seconds", "op=\"x\"", 5);
    buf out = BUF_INIT;
    metrics_render(&out);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out),
        "# TYPE t_seconds histogram\n"
        "t_seconds_bucket{op=\"x\",le=\"0.1\"} 1\n"
        "t_seconds_bucket{op=\"x\",le=\"1\"} 2\n"
        "t_seconds_bucket{op=\"x\",le=\"+Inf\"} 3\n"
        "t_seconds_sum{op=\"x\"} 5.55\n"
        "t_seconds_count{op=\"x\"} 3\n"));
    buf_free(&out);
    metrics_reset();
}
END_TEST

START_TEST(test_label_values_are_escaped)
{
    buf out = BUF_INIT;
    metrics_label_escape(&out, "a\"b\\c\nd");
    ck_assert_str_eq(buf_cstr(&out), "a\\\"b\\\\c\\nd");
    buf_free(&out);
}
END_TEST

START_TEST(test_series_past_the_limit_are_dropped_and_counted)
{
    metrics_reset();
    char labels[64];
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(labels, sizeof labels, "i=\"%d\"", i);
        metrics_add("t_many", labels, 1);
    }
    buf out = BUF_INIT;
    metrics_render(&out);
    ck_assert_ptr_nonnull(strstr(buf_cstr(&out), "ptel_metrics_dropped_series_total 10\n"));
    buf_free(&out);
    metrics_reset();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_counter_and_gauge_render_exactly);
    tcase_add_test(tc, test_histogram_buckets_are_cumulative);
    tcase_add_test(tc, test_label_values_are_escaped);
    tcase_add_test(tc, test_series_past_the_limit_are_dropped_and_counted);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
