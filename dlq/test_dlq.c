/* dlq/test_dlq.c: tests for DLQ records (dlq.c) and the operator tools
 * (dlq_cli.c). The glob tests always run; the rest need a real redis-server
 * from PTEL_TEST_REDIS_URL (else exit 77 after the pure tests) and use keys
 * unique to this process. The CLI runs in a forked child with stdout and
 * stderr captured, so its real output and exit codes are checked. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/pyjson.h"
#include "common/timeutil.h"
#include "dlq/dlq.h"

static const char *redis_url;
static char dlq_name[96], pattern[96], stream[96];
static dlq_options opts;
static redisContext *rc;

/* ---- Fixtures --------------------------------------------------------------------- */

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "redis: %s", rc->errstr);
    return r;
}

static long long cmd_int(const char *fmt, const char *key)
{
    redisReply *r = cmd(fmt, key);
    ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void setup(void)
{
    static int n;
    snprintf(pattern, sizeof pattern, "tdlq%d_%d:*:events", (int)getpid(), n);
    snprintf(stream, sizeof stream, "tdlq%d_%d:org1:events", (int)getpid(), n);
    snprintf(dlq_name, sizeof dlq_name, "tdlq%d_%d:dlq", (int)getpid(), n++);
    opts = (dlq_options){redis_url, dlq_name, 1000, pattern};
    int port;
    char host[128];
    ck_assert(sscanf(redis_url, "redis://%127[^:/]:%d", host, &port) == 2);
    rc = redisConnect(host, port);
    ck_assert(rc && !rc->err);
}

static void teardown(void)
{
    redisReply *r = redisCommand(rc, "DEL %s %s", dlq_name, stream);
    if (r) freeReplyObject(r);
    redisFree(rc);
}

/* Run dlq_cli_main in a child; capture stdout and stderr. */
static int run_cli(buf *out, buf *errout, const dlq_options *o, int argc, const char **argv)
{
    FILE *fo = tmpfile(), *fe = tmpfile();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fileno(fo), 1);
        dup2(fileno(fe), 2);
        int code = dlq_cli_main(argc, (char **)argv, o);
        fflush(stdout);
        fflush(stderr);
        _exit(code);
    }
    int status;
    waitpid(pid, &status, 0);
    FILE *fs[2] = {fo, fe};
    buf *bs[2] = {out, errout};
    for (int i = 0; i < 2; i++) {
        buf_reset(bs[i]);
        rewind(fs[i]);
        char chunk[4096];
        size_t got;
        while ((got = fread(chunk, 1, sizeof chunk, fs[i])) > 0) buf_append(bs[i], chunk, got);
        buf_cstr(bs[i]);
        fclose(fs[i]);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define CLI(out, err, ...) \
    run_cli(out, err, &opts, (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *)), \
            (const char *[]){__VA_ARGS__})

static void write_record(const char *reason, const char *cls, int index, const char *events)
{
    dlq_record r = {.original_stream = stream, .entry_id = "1700000000000-0", .reason = reason,
                    .ingestion_id = "ing-1", .source = "dev-health-web", .org_id_hash = "org1",
                    .events = events, .event_index = index, .error_class = cls, .deliveries = 1,
                    .worker = "host-a"};
    char err[256];
    ck_assert_msg(dlq_write(rc, &opts, &r, err, sizeof err) == 0, "%s", err);
}

/* The id of the n-th record (0-based). Caller frees. */
static char *record_id(size_t n)
{
    redisReply *r = cmd("XRANGE %s - +", dlq_name);
    ck_assert_uint_gt(r->elements, n);
    char *id = strdup(r->element[n]->element[0]->str);
    freeReplyObject(r);
    return id;
}

/* ---- Glob (pure) ------------------------------------------------------------------------- */

START_TEST(test_glob_matches_like_redis)
{
    ck_assert(dlq_key_matches("product-telemetry:*:events", "product-telemetry:abc:events"));
    ck_assert(dlq_key_matches("product-telemetry:*:events", "product-telemetry::events"));
    ck_assert(!dlq_key_matches("product-telemetry:*:events", "product-telemetry:dlq"));
    ck_assert(!dlq_key_matches("product-telemetry:*:events", "product-telemetry:a:events:x"));
    ck_assert(dlq_key_matches("a?c", "abc"));
    ck_assert(!dlq_key_matches("a?c", "ac"));
    ck_assert(dlq_key_matches("a[bx]c", "axc"));
    ck_assert(!dlq_key_matches("a[^bx]c", "abc"));
    ck_assert(dlq_key_matches("a[a-c]d", "abd"));
    ck_assert(dlq_key_matches("a\\*b", "a*b"));
    ck_assert(!dlq_key_matches("a\\*b", "axb"));
    ck_assert(dlq_key_matches("*", ""));
    ck_assert(dlq_key_matches("**x*", "aaxbb"));
    ck_assert(!dlq_key_matches("", "a"));
}
END_TEST

/* ---- dlq_write -------------------------------------------------------------------------------- */

START_TEST(test_write_record_has_contract_fields_in_order)
{
    dlq_record r = {.original_stream = stream, .entry_id = "1-0", .reason = "invalid_name: event 2",
                    .moved_at = 1795817419.0804741, .ingestion_id = "ing", .source = "dev-health-web",
                    .org_id_hash = NULL, .events = "[{\"name\":\"x\"}]", .event_index = 2,
                    .error_class = "validation", .deliveries = 3, .worker = "w1"};
    char err[256];
    ck_assert_int_eq(dlq_write(rc, &opts, &r, err, sizeof err), 0);
    redisReply *x = cmd("XRANGE %s - +", dlq_name);
    ck_assert_uint_eq(x->elements, 1);
    redisReply *f = x->element[0]->element[1];
    const char *want[] = {"original_stream", stream, "entry_id", "1-0", "reason",
                          "invalid_name: event 2", "moved_at", "1795817419.0804741", "ingestion_id",
                          "ing", "source", "dev-health-web", "org_id_hash", "", "events",
                          "[{\"name\":\"x\"}]", "event_index", "2", "error_class", "validation",
                          "deliveries", "3", "worker", "w1"};
    ck_assert_uint_eq(f->elements, sizeof want / sizeof *want);
    for (size_t i = 0; i < f->elements; i++) ck_assert_str_eq(f->element[i]->str, want[i]);
    freeReplyObject(x);
}
END_TEST

START_TEST(test_write_whole_entry_has_empty_event_index_and_now_moved_at)
{
    double before = time_now();
    write_record("invalid_json: not JSON", "validation", -1, "{not json");
    redisReply *x = cmd("XRANGE %s - +", dlq_name);
    redisReply *f = x->element[0]->element[1];
    ck_assert_str_eq(f->element[17]->str, "");            /* event_index */
    ck_assert_str_eq(f->element[15]->str, "{not json");   /* events, raw */
    double moved = atof(f->element[7]->str);
    ck_assert(moved >= before - 0.001 && moved <= time_now() + 0.001);
    freeReplyObject(x);
}
END_TEST

START_TEST(test_write_uses_events_len_not_strlen)
{
    dlq_record r = {.original_stream = stream, .entry_id = "1-0", .reason = "r",
                    .events = "[1][2]", .events_len = 3, .event_index = -1};
    char err[256];
    ck_assert_int_eq(dlq_write(rc, &opts, &r, err, sizeof err), 0);
    redisReply *x = cmd("XRANGE %s - +", dlq_name);
    ck_assert_str_eq(x->element[0]->element[1]->element[15]->str, "[1]");
    freeReplyObject(x);
}
END_TEST

/* dlq_append queues without a round trip; the replies come back in append
 * order, and a refused record does not stop the ones after it. */
START_TEST(test_pipelined_replies_in_order_and_refusal_reported)
{
    char err[256];
    dlq_record r = {.original_stream = stream, .entry_id = "1-0", .reason = "first",
                    .events = "[1]", .event_index = 0};
    ck_assert_int_eq(dlq_append(rc, &opts, &r, err, sizeof err), 0);
    ck_assert_int_eq(dlq_read_reply(rc, &opts, err, sizeof err), 0);
    /* Queue three: the second goes to a key of the wrong type. */
    char bad_key[160];
    snprintf(bad_key, sizeof bad_key, "%s-not-a-stream", dlq_name);
    dlq_options bad = opts;
    bad.dlq_key = bad_key;
    freeReplyObject(cmd("SET %s x", bad_key));
    const char *reasons[] = {"second", "refused", "third"};
    for (int i = 0; i < 3; i++) {
        r.reason = reasons[i];
        ck_assert_int_eq(dlq_append(rc, i == 1 ? &bad : &opts, &r, err, sizeof err), 0);
    }
    ck_assert_int_eq(dlq_read_reply(rc, &opts, err, sizeof err), 0);
    err[0] = '\0';
    ck_assert_int_eq(dlq_read_reply(rc, &bad, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "WRONGTYPE") != NULL, "%s", err);
    ck_assert_int_eq(rc->err, 0);   /* a refusal, not a broken connection */
    ck_assert_int_eq(dlq_read_reply(rc, &opts, err, sizeof err), 0);
    redisReply *x = cmd("XRANGE %s - +", dlq_name);
    ck_assert_uint_eq(x->elements, 3);
    ck_assert_str_eq(x->element[0]->element[1]->element[5]->str, "first");
    ck_assert_str_eq(x->element[1]->element[1]->element[5]->str, "second");
    ck_assert_str_eq(x->element[2]->element[1]->element[5]->str, "third");
    freeReplyObject(x);
    freeReplyObject(cmd("DEL %s", bad_key));
}
END_TEST

START_TEST(test_write_to_key_of_wrong_type_fails_with_reason)
{
    freeReplyObject(cmd("SET %s x", dlq_name));
    dlq_record r = {.original_stream = stream, .entry_id = "1-0", .reason = "r", .event_index = -1};
    char err[256] = "";
    ck_assert_int_eq(dlq_write(rc, &opts, &r, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "WRONGTYPE") != NULL, "%s", err);
}
END_TEST

/* ---- CLI: list / show ------------------------------------------------------------------------- */

START_TEST(test_cli_list_filters_by_reason_stream_and_limit)
{
    buf out = BUF_INIT, err = BUF_INIT;
    write_record("invalid_name: event 0: \"x\"", "validation", 0, "[{}]");
    write_record("blocked_key: event 1: email", "privacy", 1, "[{}]");
    write_record("invalid_name: event 2: \"y\"", "validation", 2, "[{}]");
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list"), 0);
    ck_assert_msg(strstr(out.data, "3 record(s)") != NULL, "%s", out.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--reason", "invalid_name"), 0);
    ck_assert_msg(strstr(out.data, "2 record(s)") && !strstr(out.data, "blocked_key"), "%s", out.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--reason", "privacy"), 0);
    ck_assert_msg(strstr(out.data, "1 record(s)") && strstr(out.data, "blocked_key"), "%s", out.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--stream", "nope"), 0);
    ck_assert_msg(strstr(out.data, "0 record(s)") != NULL, "%s", out.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--limit", "1"), 0);
    ck_assert_msg(strstr(out.data, "1 record(s)") && strstr(out.data, "limit reached"), "%s", out.data);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

START_TEST(test_cli_list_json_is_an_array_of_records)
{
    buf out = BUF_INIT, err = BUF_INIT;
    write_record("invalid_name: a", "validation", 0, "[{\"a\":1}]");
    write_record("invalid_name: b", "validation", 1, "[{\"b\":2}]");
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--json"), 0);
    pj_value *v = pj_parse(out.data, out.len, NULL);
    ck_assert_msg(v && v->type == PJ_ARRAY && v->u.array.len == 2, "%s", out.data);
    ck_assert_str_eq(pj_get_string(v->u.array.items[1], "reason"), "invalid_name: b");
    ck_assert_str_eq(pj_get_string(v->u.array.items[1], "events"), "[{\"b\":2}]");
    ck_assert(pj_get_string(v->u.array.items[0], "id") != NULL);
    pj_free(v);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--json", "--stream", "none"), 0);
    ck_assert_str_eq(out.data, "[]\n");
    buf_free(&out);
    buf_free(&err);
}
END_TEST

START_TEST(test_cli_show_prints_fields_and_fails_for_unknown_id)
{
    buf out = BUF_INIT, err = BUF_INIT;
    write_record("invalid_ts: event 0", "validation", 0, "[{\"ts\":1}]");
    char *id = record_id(0);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "show", id), 0);
    ck_assert_msg(strstr(out.data, "reason: invalid_ts: event 0") && strstr(out.data, "events: [{\"ts\":1}]"),
                  "%s", out.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "show", id, "--json"), 0);
    ck_assert_msg(strstr(out.data, "\"error_class\": \"validation\"") != NULL, "%s", out.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "show", "1-1"), 1);
    ck_assert_msg(strstr(err.data, "no record 1-1") != NULL, "%s", err.data);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "show"), 2);
    free(id);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

/* ---- CLI: replay -------------------------------------------------------------------------------- */

START_TEST(test_cli_replay_id_appends_entry_then_deletes_record)
{
    buf out = BUF_INIT, err = BUF_INIT;
    write_record("invalid_name: e", "validation", 0, "[{\"name\":\"page_viewed\"}]");
    write_record("invalid_name: f", "validation", 1, "[{\"name\":\"other\"}]");
    char *id = record_id(0);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay", id), 0);
    ck_assert_msg(strstr(out.data, "1 record(s) replayed, 0 failed") != NULL, "%s", out.data);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_name), 1);
    redisReply *x = cmd("XRANGE %s - +", stream);
    ck_assert_uint_eq(x->elements, 1);
    redisReply *f = x->element[0]->element[1];
    /* replayed_from (the record id) marks the entry for the drain's dedup. */
    const char *want[] = {"ingestion_id", "ing-1", "source", "dev-health-web", "replayed_from", id,
                          "org_id_hash", "org1", "events", "[{\"name\":\"page_viewed\"}]"};
    ck_assert_uint_eq(f->elements, 10);
    for (size_t i = 0; i < 10; i++) ck_assert_str_eq(f->element[i]->str, want[i]);
    freeReplyObject(x);
    /* Re-running for a record already replayed fails cleanly, changes nothing. */
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay", id), 1);
    ck_assert_int_eq(cmd_int("XLEN %s", stream), 1);
    free(id);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

START_TEST(test_cli_replay_all_and_by_reason)
{
    buf out = BUF_INIT, err = BUF_INIT;
    write_record("invalid_name: a", "validation", 0, "[{}]");
    write_record("blocked_key: b", "privacy", 0, "[{}]");
    write_record("invalid_ts: c", "validation", 0, "[{}]");
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay", "--reason", "privacy"), 0);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_name), 2);
    ck_assert_int_eq(cmd_int("XLEN %s", stream), 1);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay", "--all"), 0);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_name), 0);
    ck_assert_int_eq(cmd_int("XLEN %s", stream), 3);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay"), 2);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay", "--all", "1-1"), 2);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

START_TEST(test_cli_replay_refuses_stream_outside_pattern_and_upstream_records)
{
    buf out = BUF_INIT, err = BUF_INIT;
    dlq_record r = {.original_stream = "other:key", .entry_id = "1-0", .reason = "x",
                    .events = "[{}]", .event_index = 0, .error_class = "validation"};
    char e[256];
    ck_assert_int_eq(dlq_write(rc, &opts, &r, e, sizeof e), 0);
    /* upstream's four-field record: no events to replay */
    freeReplyObject(cmd("XADD %s * original_stream %s entry_id 1-0 reason bad moved_at 1.5",
                        dlq_name, stream));
    ck_assert_int_eq(CLI(&out, &err, "dlq", "replay", "--all"), 1);
    ck_assert_msg(strstr(err.data, "does not match") && strstr(err.data, "has no events"), "%s", err.data);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_name), 2);
    ck_assert_int_eq(cmd_int("EXISTS %s", "other:key"), 0);
    ck_assert_int_eq(cmd_int("EXISTS %s", stream), 0);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

/* ---- CLI: purge, usage, errors ---------------------------------------------------------------- */

START_TEST(test_cli_purge_older_than_keeps_recent_records)
{
    buf out = BUF_INIT, err = BUF_INIT;
    long long old_ms = time_now_us() / 1000 - 3LL * 86400 * 1000;
    freeReplyObject(cmd("XADD %s %lld-0 reason old", dlq_name, old_ms));
    write_record("recent", "validation", 0, "[{}]");
    ck_assert_int_eq(CLI(&out, &err, "dlq", "purge", "--older-than", "2d"), 0);
    ck_assert_msg(strstr(out.data, "purged 1 record(s)") != NULL, "%s", out.data);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_name), 1);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "purge", "--all"), 0);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_name), 0);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "purge"), 2);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "purge", "--older-than", "7x"), 2);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "purge", "--older-than", "1d", "--all"), 2);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

START_TEST(test_cli_usage_help_and_unknown_command)
{
    buf out = BUF_INIT, err = BUF_INIT;
    ck_assert_int_eq(CLI(&out, &err, "dlq"), 2);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "frobnicate"), 2);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "--help"), 0);
    const char *subs[] = {"list", "show", "replay", "purge"};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(CLI(&out, &err, "dlq", subs[i], "--help"), 0);
        ck_assert_msg(strstr(out.data, "usage: dlq") != NULL, "%s", out.data);
    }
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--limit", "0"), 2);
    ck_assert_int_eq(CLI(&out, &err, "dlq", "list", "--bogus"), 2);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

START_TEST(test_cli_unreachable_redis_exits_1)
{
    buf out = BUF_INIT, err = BUF_INIT;
    dlq_options bad = {"redis://127.0.0.1:1/0", dlq_name, 0, NULL};
    const char *argv[] = {"dlq", "list"};
    ck_assert_int_eq(run_cli(&out, &err, &bad, 2, argv), 1);
    ck_assert_msg(strstr(err.data, "cannot connect") != NULL, "%s", err.data);
    dlq_options worse = {"amqp://x", dlq_name, 0, NULL};
    ck_assert_int_eq(run_cli(&out, &err, &worse, 2, argv), 1);
    buf_free(&out);
    buf_free(&err);
}
END_TEST

int main(void)
{
    Suite *pure = suite_create("dlq_pure");
    TCase *tp = tcase_create("glob");
    tcase_add_test(tp, test_glob_matches_like_redis);
    suite_add_tcase(pure, tp);
    SRunner *sr = srunner_create(pure);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    redis_url = getenv("PTEL_TEST_REDIS_URL");
    if (!redis_url || !*redis_url) {
        fprintf(stderr, "PTEL_TEST_REDIS_URL not set: skipping the Redis tests\n");
        return failed ? 1 : 77;
    }
    Suite *s = suite_create("dlq");
    TCase *tc = tcase_create("redis");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_write_record_has_contract_fields_in_order);
    tcase_add_test(tc, test_write_whole_entry_has_empty_event_index_and_now_moved_at);
    tcase_add_test(tc, test_write_uses_events_len_not_strlen);
    tcase_add_test(tc, test_pipelined_replies_in_order_and_refusal_reported);
    tcase_add_test(tc, test_write_to_key_of_wrong_type_fails_with_reason);
    tcase_add_test(tc, test_cli_list_filters_by_reason_stream_and_limit);
    tcase_add_test(tc, test_cli_list_json_is_an_array_of_records);
    tcase_add_test(tc, test_cli_show_prints_fields_and_fails_for_unknown_id);
    tcase_add_test(tc, test_cli_replay_id_appends_entry_then_deletes_record);
    tcase_add_test(tc, test_cli_replay_all_and_by_reason);
    tcase_add_test(tc, test_cli_replay_refuses_stream_outside_pattern_and_upstream_records);
    tcase_add_test(tc, test_cli_purge_older_than_keeps_recent_records);
    tcase_add_test(tc, test_cli_usage_help_and_unknown_command);
    tcase_add_test(tc, test_cli_unreachable_redis_exits_1);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed += srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
