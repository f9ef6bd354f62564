/* broker/test_backend.c: the Redis result backend. Value bytes are checked
 * against the captured Celery values (golden_samples.json, re-dumped by
 * Python's json.dumps); stores run against a real redis-server
 * (PTEL_TEST_REDIS_URL, db 8) and are read back by the real Celery client
 * (AsyncResult.get via tests/data/broker/celery_peer.py). */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/backend.h"
#include "broker/test_support.h"
#include "common/pyjson.h"
#include "common/timeutil.h"

#define TEST_DB 8

static pj_value *parse(const char *json)
{
    pj_error e;
    pj_value *v = pj_parse(json, strlen(json), &e);
    ck_assert_msg(v != NULL, "parse %s: %s", json, e.msg);
    return v;
}

static backend_status status_of(const char *s)
{
    static const char *names[] = {"STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) return (backend_status)i;
    ck_abort_msg("unknown status %s", s);
    return BACKEND_STARTED;
}

static char *encode(const backend_result *r)
{
    buf b = BUF_INIT;
    backend_encode(&b, r);
    return buf_detach(&b);
}

/* ---- encoding (no Redis) ---- */

/* Rebuild each captured value from its fields and compare the bytes. */
START_TEST(test_encode_matches_captured_values_by_state)
{
    const char *shared = getenv("PTEL_SHARED_DIR");
    ck_assert_msg(shared != NULL, "PTEL_SHARED_DIR not set");
    char *out = ts_peer_run(0, "golden_results %s/protocol/captures/golden_samples.json", shared);
    int checked = 0;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *tab = strchr(line, '\t');
        ck_assert_ptr_nonnull(tab);
        *tab = '\0';
        const char *want = tab + 1;
        pj_value *v = parse(want);
        backend_result r = {0};
        r.status = status_of(pj_get_string(v, "status"));
        r.task_id = pj_get_string(v, "task_id");
        r.traceback = pj_get_string(v, "traceback");
        pj_value *res = pj_object_get(v, "result");
        if (r.status == BACKEND_SUCCESS) {
            r.result = res;
        } else if (r.status == BACKEND_STARTED) {
            long long pid;
            ck_assert_int_eq(pj_int_value(pj_object_get(res, "pid"), &pid), 0);
            r.pid = pid;
            r.hostname = pj_get_string(res, "hostname");
        } else {
            r.exc_type = pj_get_string(res, "exc_type");
            r.exc_module = pj_get_string(res, "exc_module");
            r.exc_args = pj_object_get(res, "exc_message");
        }
        const char *dd = pj_get_string(v, "date_done");
        if (dd) ck_assert_int_eq(time_parse_iso8601(dd, strlen(dd), &r.date_done_us), 0);
        else r.date_done_us = time_now_us();   /* must be ignored: not a ready state */
        /* children left NULL: [] by default, [[[id, null], null]] for RETRY. */
        char *got = encode(&r);
        ck_assert_msg(strcmp(got, want) == 0, "%s:\n got %s\nwant %s", line, got, want);
        free(got);
        pj_free(v);
        checked++;
    }
    ck_assert_int_ge(checked, 8);   /* every captured state, RETRY included */
    free(out);
}
END_TEST

START_TEST(test_encode_group_and_parent_go_just_before_task_id)
{
    pj_value *res = parse("3");
    pj_value *children = parse("[[[\"c1\", null], null]]");
    backend_result r = {.task_id = "t", .status = BACKEND_SUCCESS, .result = res,
                        .children = children, .group_id = "g", .parent_id = "p",
                        .date_done_us = 1795817419092333LL};
    char *got = encode(&r);
    ck_assert_str_eq(got, "{\"status\": \"SUCCESS\", \"result\": 3, \"traceback\": null, "
                          "\"children\": [[[\"c1\", null], null]], "
                          "\"date_done\": \"2026-11-27T22:10:19.092333\", \"group_id\": \"g\", "
                          "\"parent_id\": \"p\", \"task_id\": \"t\"}");
    free(got);
    r.parent_id = NULL;
    r.result = NULL;            /* a task returning None */
    r.date_done_us = 1795817419000000LL;   /* whole second: no microseconds */
    got = encode(&r);
    ck_assert_str_eq(got, "{\"status\": \"SUCCESS\", \"result\": null, \"traceback\": null, "
                          "\"children\": [[[\"c1\", null], null]], "
                          "\"date_done\": \"2026-11-27T22:10:19\", \"group_id\": \"g\", "
                          "\"task_id\": \"t\"}");
    free(got);
    pj_free(res);
    pj_free(children);
}
END_TEST

START_TEST(test_encode_escapes_strings_as_json_dumps)
{
    pj_value *args = parse("[\"caf\\u00e9 \\\"q\\\"\", 1.5, null]");
    backend_result r = {.task_id = "t", .status = BACKEND_FAILURE, .exc_type = "KeyError",
                        .exc_module = "builtins", .exc_args = args,
                        .traceback = "Traceback\n\t\"x\" \xc3\xa9\n", .date_done_us = 0};
    char *got = encode(&r);
    ck_assert_str_eq(got, "{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"KeyError\", "
                          "\"exc_message\": [\"caf\\u00e9 \\\"q\\\"\", 1.5, null], "
                          "\"exc_module\": \"builtins\"}, "
                          "\"traceback\": \"Traceback\\n\\t\\\"x\\\" \\u00e9\\n\", \"children\": [], "
                          "\"date_done\": \"1970-01-01T00:00:00\", \"task_id\": \"t\"}");
    free(got);
    pj_free(args);
}
END_TEST

/* ---- stores ---- */

START_TEST(test_store_setex_and_publish_same_bytes)
{
    redisContext *c = ts_fresh();
    redisContext *sub = ts_connect();
    struct timeval tv = {5, 0};   /* a missing PUBLISH fails here, not at the test timeout */
    redisSetTimeout(sub, tv);
    freeReplyObject(ts_cmd(sub, "SUBSCRIBE celery-task-meta-abc"));
    pj_value *res = parse("{\"processed\": 3}");
    backend_result r = {.task_id = "abc", .status = BACKEND_SUCCESS, .result = res,
                        .date_done_us = time_now_us()};
    char err[256] = "";
    ck_assert_msg(backend_store(c, &r, BACKEND_DEFAULT_EXPIRES_S, err, sizeof err) == 1, "%s", err);
    char *stored = ts_str(c, "GET celery-task-meta-abc");
    char *want = encode(&r);
    ck_assert_str_eq(stored, want);
    long long ttl = ts_int(c, "TTL celery-task-meta-abc");
    ck_assert(ttl > 86000 && ttl <= 86400);
    redisReply *msg;
    ck_assert_msg(redisGetReply(sub, (void **)&msg) == REDIS_OK, "no PUBLISH: %s", sub->errstr);
    ck_assert_int_eq(msg->type, REDIS_REPLY_ARRAY);
    ck_assert_str_eq(msg->element[0]->str, "message");
    ck_assert_str_eq(msg->element[1]->str, "celery-task-meta-abc");   /* no /{db}. prefix */
    ck_assert_str_eq(msg->element[2]->str, want);
    freeReplyObject(msg);
    free(want);
    free(stored);
    pj_free(res);
    redisFree(sub);
    redisFree(c);
}
END_TEST

START_TEST(test_store_without_expiry_uses_plain_set)
{
    redisContext *c = ts_fresh();
    backend_result r = {.task_id = "n1", .status = BACKEND_STARTED, .pid = 7, .hostname = "w@h"};
    char err[256] = "";
    ck_assert_int_eq(backend_store(c, &r, -1, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "TTL celery-task-meta-n1"), -1);
    r.task_id = "n0";   /* 0 is falsy for Celery too: SET, not SETEX 0 */
    ck_assert_int_eq(backend_store(c, &r, 0, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "TTL celery-task-meta-n0"), -1);
    redisFree(c);
}
END_TEST

START_TEST(test_store_never_overwrites_success)
{
    redisContext *c = ts_fresh();
    char err[256] = "";
    backend_result started = {.task_id = "s", .status = BACKEND_STARTED, .pid = 1, .hostname = "h"};
    ck_assert_int_eq(backend_store(c, &started, 60, err, sizeof err), 1);
    backend_result ok = {.task_id = "s", .status = BACKEND_SUCCESS, .date_done_us = 1};
    ck_assert_int_eq(backend_store(c, &ok, 60, err, sizeof err), 1);   /* STARTED is overwritten */
    char *before = ts_str(c, "GET celery-task-meta-s");
    pj_value *args = parse("[2]");
    backend_result late = {.task_id = "s", .status = BACKEND_FAILURE, .exc_type = "TimeLimitExceeded",
                           .exc_module = "billiard.exceptions", .exc_args = args, .date_done_us = 2};
    ck_assert_int_eq(backend_store(c, &late, 60, err, sizeof err), 0);
    char *after = ts_str(c, "GET celery-task-meta-s");
    ck_assert_str_eq(after, before);
    /* SUCCESS spelled with a JSON escape is still SUCCESS. */
    freeReplyObject(ts_cmd(c, "SET celery-task-meta-s %s", "{\"status\": \"\\u0053UCCESS\"}"));
    ck_assert_int_eq(backend_store(c, &late, 60, err, sizeof err), 0);
    /* An unparseable stored value is not SUCCESS: it is overwritten. */
    freeReplyObject(ts_cmd(c, "SET celery-task-meta-s garbage"));
    ck_assert_int_eq(backend_store(c, &late, 60, err, sizeof err), 1);
    free(before);
    free(after);
    pj_free(args);
    redisFree(c);
}
END_TEST

START_TEST(test_store_many_pipelines_and_skips_success)
{
    redisContext *c = ts_fresh();
    char err[256] = "";
    backend_result rs[3] = {
        {.task_id = "m1", .status = BACKEND_SUCCESS, .date_done_us = 1},
        {.task_id = "m2", .status = BACKEND_REVOKED, .exc_type = "TaskRevokedError",
         .exc_module = "celery.exceptions", .date_done_us = 1},
        {.task_id = "m3", .status = BACKEND_RETRY, .exc_type = "RuntimeError"},
    };
    ck_assert_int_eq(backend_store(c, &rs[0], 60, err, sizeof err), 1);
    ck_assert_int_eq(backend_store_many(c, rs, 3, 60, err, sizeof err), 2);
    for (int i = 0; i < 3; i++) {
        char *v = ts_str(c, "GET celery-task-meta-%s", rs[i].task_id);
        char *want = encode(&rs[i]);
        ck_assert_str_eq(v, want);
        free(v);
        free(want);
    }
    ck_assert_int_eq(backend_store_many(c, rs, 0, 60, err, sizeof err), 0);
    redisFree(c);
}
END_TEST

START_TEST(test_store_errors_are_reported)
{
    redisContext *c = ts_fresh();
    char err[256] = "";
    /* A key of the wrong type: GET fails, nothing is written over it. */
    freeReplyObject(ts_cmd(c, "LPUSH celery-task-meta-w x"));
    backend_result r = {.task_id = "w", .status = BACKEND_SUCCESS, .date_done_us = 1};
    ck_assert_int_eq(backend_store(c, &r, 60, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "WRONGTYPE"));
    ck_assert_int_eq(ts_int(c, "LLEN celery-task-meta-w"), 1);
    /* The batch bound. */
    ck_assert_int_eq(backend_store_many(c, &r, BACKEND_MAX_BATCH + 1, 60, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "batch limit"));
    /* SETEX refusing the TTL surfaces from inside EXEC. */
    r.task_id = "big";
    ck_assert_int_eq(backend_store(c, &r, (int64_t)1 << 62, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "store result big"));
    redisFree(c);
    /* A dead connection. */
    redisContext *dead = redisConnect("127.0.0.1", 1);
    ck_assert_int_eq(backend_store(dead, &r, 60, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "redis"));
    redisFree(dead);
}
END_TEST

/* Read a pipelined PING's reply. */
static void assert_pong(redisContext *c)
{
    redisReply *r = NULL;
    ck_assert_int_eq(redisGetReply(c, (void **)&r), REDIS_OK);
    ck_assert_int_eq(r->type, REDIS_REPLY_STATUS);
    ck_assert_str_eq(r->str, "PONG");
    freeReplyObject(r);
}

/* The store is one script; a server that lost it (restart, SCRIPT FLUSH)
 * still gets every result, blocking or pipelined. */
START_TEST(test_store_survives_script_flush)
{
    redisContext *c = ts_fresh();
    char err[256] = "";
    backend_result r = {.task_id = "f1", .status = BACKEND_STARTED, .pid = 1, .hostname = "h"};
    ck_assert_int_eq(backend_store(c, &r, 60, err, sizeof err), 1);
    freeReplyObject(ts_cmd(c, "SCRIPT FLUSH"));
    r.task_id = "f2";
    ck_assert_msg(backend_store(c, &r, 60, err, sizeof err) == 1, "%s", err);
    freeReplyObject(ts_cmd(c, "SCRIPT FLUSH"));
    r.task_id = "f3";
    ck_assert_int_eq(backend_store_append(c, &r, 60, err, sizeof err), 0);
    redisAppendCommand(c, "PING");
    ck_assert_int_eq(backend_store_finish(c, r.task_id, err, sizeof err), BACKEND_STORE_AGAIN);
    assert_pong(c);
    ck_assert_int_eq(ts_int(c, "EXISTS celery-task-meta-f3"), 0);
    ck_assert_int_eq(backend_store(c, &r, 60, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "EXISTS celery-task-meta-f3"), 1);
    redisFree(c);
}
END_TEST

/* append/finish share a round trip with other commands, replies in order. */
START_TEST(test_store_append_finish_pipelines)
{
    redisContext *c = ts_fresh();
    char err[256] = "";
    backend_result ok = {.task_id = "p1", .status = BACKEND_SUCCESS, .date_done_us = 1};
    ck_assert_int_eq(backend_store_append(c, &ok, 60, err, sizeof err), 0);
    redisAppendCommand(c, "PING");
    ck_assert_int_eq(backend_store_append(c, &ok, 60, err, sizeof err), 0);
    ck_assert_int_eq(backend_store_finish(c, ok.task_id, err, sizeof err), 1);
    assert_pong(c);
    ck_assert_int_eq(backend_store_finish(c, ok.task_id, err, sizeof err), 0);  /* SUCCESS kept */
    freeReplyObject(ts_cmd(c, "LPUSH celery-task-meta-p2 x"));
    ok.task_id = "p2";
    ck_assert_int_eq(backend_store_append(c, &ok, 60, err, sizeof err), 0);
    ck_assert_int_eq(backend_store_finish(c, ok.task_id, err, sizeof err), -1);
    ck_assert_str_eq(err, "GET celery-task-meta-p2: WRONGTYPE Operation against a key holding "
                          "the wrong kind of value");
    redisFree(c);
}
END_TEST

/* ---- interop: the real Celery client waits, we store ---- */

/* Start AsyncResult(id).get(timeout=5) in Python, wait until it has
 * subscribed to the result channel, store r, return the client's JSON. */
static pj_value *python_get_while_storing(redisContext *c, const backend_result *r)
{
    FILE *peer;
    {
        buf args = BUF_INIT;
        buf_printf(&args, "result_get %s %s 5", ts_url(), r->task_id);
        peer = ts_peer_start(args.data);
        buf_free(&args);
    }
    int subscribed = 0;
    for (int i = 0; i < 1000 && !subscribed; i++) {
        redisReply *n = ts_cmd(c, "PUBSUB NUMSUB celery-task-meta-%s", r->task_id);
        subscribed = n->elements == 2 && n->element[1]->integer > 0;
        freeReplyObject(n);
        if (!subscribed) usleep(10 * 1000);
    }
    ck_assert_msg(subscribed, "the Python client never subscribed");
    char err[256] = "";
    ck_assert_msg(backend_store(c, r, BACKEND_DEFAULT_EXPIRES_S, err, sizeof err) == 1, "%s", err);
    int st;
    char *out = ts_peer_finish(peer, &st);
    ck_assert_msg(st == 0, "peer exited %d: %s", st, out);
    pj_value *v = parse(out);
    free(out);
    double elapsed;
    ck_assert_int_eq(pj_number_value(pj_object_get(v, "elapsed"), &elapsed), 0);
    /* Woken by the PUBLISH, not by its 5 s timeout. */
    ck_assert_msg(elapsed < 2.0, "get() took %.2f s", elapsed);
    return v;
}

static void assert_raised(pj_value *v, const char *type, const char *module, const char *args_json)
{
    ck_assert_str_eq(pj_get_string(v, "exc_type"), type);
    ck_assert_str_eq(pj_get_string(v, "exc_module"), module);
    pj_value *want = parse(args_json);
    ck_assert_msg(pj_equal(pj_object_get(v, "args"), want), "args differ from %s", args_json);
    pj_free(want);
}

START_TEST(test_python_get_receives_success)
{
    redisContext *c = ts_fresh();
    pj_value *res = parse("{\"processed\": 3, \"big\": 123456789012345678901234567890, "
                          "\"f\": 0.1, \"s\": \"\\u00e9\"}");
    backend_result r = {.task_id = "py-ok", .status = BACKEND_SUCCESS, .result = res,
                        .date_done_us = time_now_us()};
    pj_value *v = python_get_while_storing(c, &r);
    ck_assert(pj_equal(pj_object_get(v, "value"), res));
    ck_assert_str_eq(pj_get_string(v, "state"), "SUCCESS");
    pj_free(v);
    pj_free(res);
    redisFree(c);
}
END_TEST

START_TEST(test_python_get_raises_value_error)
{
    redisContext *c = ts_fresh();
    pj_value *args = parse("[\"bad\", 42]");
    backend_result r = {.task_id = "py-fail", .status = BACKEND_FAILURE, .exc_type = "ValueError",
                        .exc_module = "builtins", .exc_args = args, .traceback = "Traceback ...\n",
                        .date_done_us = time_now_us()};
    pj_value *v = python_get_while_storing(c, &r);
    assert_raised(v, "ValueError", "builtins", "[\"bad\", 42]");
    ck_assert_str_eq(pj_get_string(v, "state"), "FAILURE");
    pj_free(v);
    pj_free(args);
    redisFree(c);
}
END_TEST

START_TEST(test_python_get_raises_time_limit_exceeded)
{
    redisContext *c = ts_fresh();
    pj_value *args = parse("[2]");
    backend_result r = {.task_id = "py-tle", .status = BACKEND_FAILURE,
                        .exc_type = "TimeLimitExceeded", .exc_module = "billiard.exceptions",
                        .exc_args = args, .date_done_us = time_now_us()};
    pj_value *v = python_get_while_storing(c, &r);
    assert_raised(v, "TimeLimitExceeded", "billiard.exceptions", "[2]");
    pj_free(v);
    pj_free(args);
    redisFree(c);
}
END_TEST

START_TEST(test_python_get_raises_not_registered)
{
    redisContext *c = ts_fresh();
    pj_value *args = parse("[\"no.such.task\"]");
    backend_result r = {.task_id = "py-nr", .status = BACKEND_FAILURE, .exc_type = "NotRegistered",
                        .exc_module = "celery.exceptions", .exc_args = args,
                        .date_done_us = time_now_us()};
    pj_value *v = python_get_while_storing(c, &r);
    assert_raised(v, "NotRegistered", "celery.exceptions", "[\"no.such.task\"]");
    pj_free(v);
    pj_free(args);
    redisFree(c);
}
END_TEST

START_TEST(test_python_get_raises_task_revoked)
{
    redisContext *c = ts_fresh();
    pj_value *args = parse("[\"revoked\"]");
    backend_result r = {.task_id = "py-rev", .status = BACKEND_REVOKED,
                        .exc_type = "TaskRevokedError", .exc_module = "celery.exceptions",
                        .exc_args = args, .date_done_us = time_now_us()};
    pj_value *v = python_get_while_storing(c, &r);
    ck_assert_str_eq(pj_get_string(v, "exc_type"), "TaskRevokedError");
    ck_assert_str_eq(pj_get_string(v, "exc_module"), "celery.exceptions");
    ck_assert_str_eq(pj_get_string(v, "state"), "REVOKED");
    pj_free(v);
    pj_free(args);
    redisFree(c);
}
END_TEST

static Suite *backend_suite(void)
{
    Suite *s = suite_create("backend");
    TCase *pure = tcase_create("pure");
    tcase_add_test(pure, test_encode_matches_captured_values_by_state);
    tcase_add_test(pure, test_encode_group_and_parent_go_just_before_task_id);
    tcase_add_test(pure, test_encode_escapes_strings_as_json_dumps);
    suite_add_tcase(s, pure);
    TCase *r = tcase_create("redis");
    tcase_set_timeout(r, 60);
    tcase_add_test(r, test_store_setex_and_publish_same_bytes);
    tcase_add_test(r, test_store_without_expiry_uses_plain_set);
    tcase_add_test(r, test_store_never_overwrites_success);
    tcase_add_test(r, test_store_many_pipelines_and_skips_success);
    tcase_add_test(r, test_store_errors_are_reported);
    tcase_add_test(r, test_store_survives_script_flush);
    tcase_add_test(r, test_store_append_finish_pipelines);
    tcase_add_test(r, test_python_get_receives_success);
    tcase_add_test(r, test_python_get_raises_value_error);
    tcase_add_test(r, test_python_get_raises_time_limit_exceeded);
    tcase_add_test(r, test_python_get_raises_not_registered);
    tcase_add_test(r, test_python_get_raises_task_revoked);
    suite_add_tcase(s, r);
    return s;
}

int main(void)
{
    /* Without a redis-server only the encoding tests run, and the program
     * reports "skipped" (77) unless one of them failed. */
    const char *url = getenv("PTEL_TEST_REDIS_URL");
    int have_redis = url && *url;
    if (have_redis) ts_setup_or_skip(TEST_DB);
    else setenv("CK_RUN_CASE", "pure", 1);
    SRunner *sr = srunner_create(backend_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : have_redis ? 0 : 77;
}
