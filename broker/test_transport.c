/* broker/test_transport.c: the kombu Redis transport against a real
 * redis-server (PTEL_TEST_REDIS_URL, db 7) and the real Python kombu/Celery
 * (tests/data/broker/celery_peer.py). Messages are produced by Celery's own
 * send_task so the bytes are exactly a Python producer's. Pure helpers
 * (queue sets, priority keys, backoff) are tested without Redis first. */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/test_support.h"
#include "broker/transport.h"
#include "common/pyjson.h"
#include "common/timeutil.h"

#define TEST_DB 7
#define SEP TRANSPORT_SEP

/* ---- fixtures ---- */

/* Send with Celery; ids[i] gets the id of specs[i] ("queue:prio"). */
static void send_tasks(const char *specs, char ids[][37], size_t n)
{
    char *out = ts_peer_run(0, "send %s %s", ts_url(), specs);
    char *save = NULL, *line = strtok_r(out, "\n", &save);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(line != NULL, "peer printed %zu ids, want %zu", i, n);
        ck_assert_uint_eq(strlen(line), 36);
        memcpy(ids[i], line, 37);
        line = strtok_r(NULL, "\n", &save);
    }
    free(out);
}

static char *task_id_of(const char *payload)
{
    pj_value *env = pj_parse(payload, strlen(payload), NULL);
    ck_assert_ptr_nonnull(env);
    const char *id = pj_get_string(pj_object_get(env, "headers"), "id");
    ck_assert_ptr_nonnull(id);
    char *copy = xstrdup(id);
    pj_free(env);
    return copy;
}

static fetched_message *fetch_n(redisContext *c, const transport_options *o, transport_queues *q,
                                int max, size_t want)
{
    char err[256] = "";
    fetched_message *m;
    size_t n;
    ck_assert_msg(transport_fetch(c, o, q, max, &m, &n, err, sizeof err) == 0, "fetch: %s", err);
    ck_assert_uint_eq(n, want);
    return m;
}

static void queues_of(transport_queues *q, const char *a, const char *b, const char *c)
{
    transport_queues_init(q);
    if (a) transport_queues_add(q, a);
    if (b) transport_queues_add(q, b);
    if (c) transport_queues_add(q, c);
}

static int has_redelivered_flags(const char *payload)
{
    pj_value *env = pj_parse(payload, strlen(payload), NULL);
    if (!env) return 0;
    pj_value *h = pj_object_get(pj_object_get(env, "headers"), "redelivered");
    pj_value *d = pj_object_get(pj_object_get(pj_object_get(env, "properties"), "delivery_info"),
                                "redelivered");
    int ok = h && h->type == PJ_BOOL && h->u.boolean && d && d->type == PJ_BOOL && d->u.boolean;
    pj_free(env);
    return ok;
}

/* ---- pure helpers ---- */

START_TEST(test_queue_set_add_remove_rotate)
{
    transport_queues q;
    queues_of(&q, "alpha", "beta", "ingest");
    ck_assert_int_eq(transport_queues_add(&q, "beta"), 1);
    transport_queues_rotate(&q, "alpha");
    ck_assert_str_eq(q.names[0], "beta");
    ck_assert_str_eq(q.names[2], "alpha");
    transport_queues_rotate(&q, "nosuch");
    ck_assert_str_eq(q.names[0], "beta");
    ck_assert_int_eq(transport_queues_remove(&q, "ingest"), 0);
    ck_assert_int_eq(transport_queues_remove(&q, "ingest"), -1);
    ck_assert_uint_eq(q.n, 2);
    ck_assert_str_eq(q.names[1], "alpha");
    ck_assert_int_eq(transport_queues_add(&q, "gamma"), 0);
    ck_assert_str_eq(q.names[2], "gamma");
    transport_queues_deinit(&q);
}
END_TEST

START_TEST(test_queue_set_refuses_beyond_limit)
{
    transport_queues q;
    transport_queues_init(&q);
    char name[32];
    for (int i = 0; i < TRANSPORT_MAX_QUEUES; i++) {
        snprintf(name, sizeof name, "q%d", i);
        ck_assert_int_eq(transport_queues_add(&q, name), 0);
    }
    ck_assert_int_eq(transport_queues_add(&q, "one-too-many"), -1);
    transport_queues_deinit(&q);
}
END_TEST

START_TEST(test_priority_key_matches_kombu_steps)
{
    transport_options o;
    transport_options_init(&o);
    /* PROTOCOL §2.3: 0-2 base, 3-5 SEP3, 6-8 SEP6, 9 SEP9; clamped to 0..9. */
    const char *want[] = {"q", "q", "q", "q" SEP "3", "q" SEP "3", "q" SEP "3",
                          "q" SEP "6", "q" SEP "6", "q" SEP "6", "q" SEP "9"};
    for (int p = 0; p <= 9; p++) {
        char *k = transport_priority_key(&o, "q", p);
        ck_assert_str_eq(k, want[p]);
        free(k);
    }
    char *k = transport_priority_key(&o, "q", -5);
    ck_assert_str_eq(k, "q");
    free(k);
    k = transport_priority_key(&o, "q", 42);
    ck_assert_str_eq(k, "q" SEP "9");
    free(k);
    /* Custom steps: below the first step wraps to the last (kombu's steps[-1]). */
    o.priority_steps[0] = 2;
    o.priority_steps[1] = 5;
    o.n_priority_steps = 2;
    k = transport_priority_key(&o, "q", 1);
    ck_assert_str_eq(k, "q" SEP "5");
    free(k);
    k = transport_priority_key(&o, "q", 4);
    ck_assert_str_eq(k, "q" SEP "2");
    free(k);
}
END_TEST

START_TEST(test_backoff_doubles_to_cap_and_resets)
{
    transport_backoff b;
    transport_backoff_reset(&b);
    int64_t want[] = {1000, 2000, 4000, 8000, 16000, 32000, 64000, 64000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_int_eq(transport_backoff_next(&b), want[i]);
    transport_backoff_reset(&b);
    ck_assert_int_eq(transport_backoff_next(&b), TRANSPORT_BACKOFF_MIN_US);
    transport_backoff b2 = {0};   /* zeroed struct behaves as reset */
    ck_assert_int_eq(transport_backoff_next(&b2), TRANSPORT_BACKOFF_MIN_US);
}
END_TEST

/* ---- fetch ---- */

START_TEST(test_fetch_serves_priorities_in_kombu_order)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    /* PROTOCOL §2.3: sent p9, p5, p0, none, p3 -> served p0, none, p5, p3, p9. */
    char ids[5][37];
    send_tasks("ingest:9 ingest:5 ingest:0 ingest:none ingest:3", ids, 5);
    int order[] = {2, 3, 1, 4, 0};
    const char *keys[] = {"ingest", "ingest", "ingest" SEP "3", "ingest" SEP "3", "ingest" SEP "9"};
    for (int i = 0; i < 5; i++) {
        fetched_message *m = fetch_n(c, &o, &q, 1, 1);
        char *id = task_id_of(m[0].payload);
        ck_assert_str_eq(id, ids[order[i]]);
        ck_assert_str_eq(m[0].key, keys[i]);
        ck_assert_str_eq(m[0].queue, "ingest");
        ck_assert_ptr_nonnull(m[0].tag);
        free(id);
        transport_messages_free(m, 1);
    }
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 5);
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 5);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_round_robin_rotates_served_queue_to_end)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "alpha", "beta", "ingest");
    /* Step 0 everywhere, plus a p3 on alpha that must wait for all step-0s. */
    char ids[7][37];
    send_tasks("alpha:3 ingest:0 beta:0 alpha:0 ingest:0 beta:0 alpha:0", ids, 7);
    /* PROTOCOL §2.2: (alpha,beta,ingest) -> after alpha (beta,ingest,alpha) ... */
    int want[] = {3, 2, 1, 6, 5, 4, 0};
    const char *after[][3] = {
        {"beta", "ingest", "alpha"}, {"ingest", "alpha", "beta"}, {"alpha", "beta", "ingest"},
        {"beta", "ingest", "alpha"}, {"ingest", "alpha", "beta"}, {"alpha", "beta", "ingest"},
        {"beta", "ingest", "alpha"}};
    for (int i = 0; i < 7; i++) {
        fetched_message *m = fetch_n(c, &o, &q, 1, 1);
        char *id = task_id_of(m[0].payload);
        ck_assert_msg(strcmp(id, ids[want[i]]) == 0, "fetch %d got %s want %s", i, id, ids[want[i]]);
        for (int k = 0; k < 3; k++) ck_assert_str_eq(q.names[k], after[i][k]);
        free(id);
        transport_messages_free(m, 1);
    }
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_many_in_one_call_keeps_round_robin)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "alpha", "beta", "ingest");
    char ids[5][37];
    send_tasks("alpha:0 alpha:0 beta:0 ingest:9 ingest:0", ids, 5);
    fetched_message *m = fetch_n(c, &o, &q, 10, 5);
    int want[] = {0, 2, 4, 1, 3};
    for (int i = 0; i < 5; i++) {
        char *id = task_id_of(m[i].payload);
        ck_assert_str_eq(id, ids[want[i]]);
        free(id);
    }
    ck_assert_str_eq(m[4].key, "ingest" SEP "9");
    /* Last served ingest (p9), before that alpha: order is beta, alpha, ingest. */
    ck_assert_str_eq(q.names[0], "beta");
    ck_assert_str_eq(q.names[1], "alpha");
    ck_assert_str_eq(q.names[2], "ingest");
    transport_messages_free(m, 5);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_empty_queues_returns_zero_at_once)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", "alpha", NULL);
    double t0 = time_monotonic();
    fetched_message *m = fetch_n(c, &o, &q, 4, 0);
    ck_assert_ptr_null(m);
    ck_assert_msg(time_monotonic() - t0 < 0.5, "fetch blocked on empty queues");
    ck_assert_str_eq(q.names[0], "ingest");
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_rejects_bad_arguments)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, NULL, NULL, NULL);
    char err[256] = "";
    fetched_message *m;
    size_t n;
    ck_assert_int_eq(transport_fetch(c, &o, &q, 1, &m, &n, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no queues"));
    transport_queues_add(&q, "ingest");
    ck_assert_int_eq(transport_fetch(c, &o, &q, 0, &m, &n, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "max 0"));
    ck_assert_int_eq(transport_fetch(c, &o, &q, TRANSPORT_MAX_FETCH + 1, &m, &n, err, sizeof err), -1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_on_dead_connection_reports_error)
{
    redisContext *c = redisConnect("127.0.0.1", 1);   /* nothing listens on port 1 */
    ck_assert_ptr_nonnull(c);
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char err[256] = "";
    fetched_message *m;
    size_t n;
    ck_assert_int_eq(transport_fetch(c, &o, &q, 1, &m, &n, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "redis"));
    const char *tags[] = {"x"};
    ck_assert_int_eq(transport_ack(c, &o, tags, 1, err, sizeof err), -1);
    ck_assert_int_eq(transport_requeue(c, &o, "x", err, sizeof err), -1);
    ck_assert_int_eq(transport_restore_visible(c, &o, time_now_us(), err, sizeof err), -1);
    ck_assert_int_eq(transport_publish(c, &o, "ingest", 0, "{}", 2, err, sizeof err), -1);
    ck_assert_int_eq(transport_declare_queue(c, &o, "ingest", "ingest", NULL, err, sizeof err), -1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_survives_script_flush)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    fetched_message *m = fetch_n(c, &o, &q, 1, 0);   /* loads the script */
    freeReplyObject(ts_cmd(c, "SCRIPT FLUSH"));
    freeReplyObject(ts_cmd(c, "LPUSH ingest %s",
                           "{\"properties\": {\"delivery_tag\": \"t1\", \"delivery_info\": "
                           "{\"exchange\": \"\", \"routing_key\": \"ingest\"}}}"));
    m = fetch_n(c, &o, &q, 1, 1);   /* NOSCRIPT -> EVAL */
    ck_assert_str_eq(m[0].tag, "t1");
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_unacked_value_byte_equal_to_kombu)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[1][37];
    send_tasks("ingest:0", ids, 1);
    char *payload = ts_str(c, "LINDEX ingest 0");
    /* Real kombu consumer registers it, then dies without acking. */
    char *out = ts_peer_run(TS_KILLED, "get_and_die %s ingest", ts_url());
    out[strcspn(out, "\n")] = '\0';
    char *kombu_value = ts_str(c, "HGET unacked %s", out);
    ck_assert_ptr_nonnull(kombu_value);
    freeReplyObject(ts_cmd(c, "DEL unacked unacked_index"));
    freeReplyObject(ts_cmd(c, "LPUSH ingest %s", payload));

    double before = time_now();
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);
    ck_assert_str_eq(m[0].tag, out);
    ck_assert_str_eq(m[0].payload, payload);
    char *ours = ts_str(c, "HGET unacked %s", out);
    ck_assert_str_eq(ours, kombu_value);
    char *score = ts_str(c, "ZSCORE unacked_index %s", out);
    double s = atof(score);
    ck_assert_msg(s >= before - 1 && s <= time_now() + 1, "score %s not the delivery time", score);
    ck_assert_ptr_nonnull(strchr(score, '.'));   /* a float time, like kombu's */
    free(score);
    free(ours);
    free(kombu_value);
    free(out);
    free(payload);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

/* Fetch one message carrying delivery_tag "t"; its unacked value must be
 * [payload, <exchange and routing key as json.dumps quotes them>]. */
static void check_unacked_value(const char *payload, const char *quoted_exchange_and_key)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    freeReplyObject(ts_cmd(c, "LPUSH ingest %s", payload));
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);
    char *v = ts_str(c, "HGET unacked t");
    buf want = BUF_INIT;
    buf_printf(&want, "[%s, %s]", payload, quoted_exchange_and_key);
    ck_assert_str_eq(v, want.data);
    buf_free(&want);
    free(v);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}

START_TEST(test_fetch_unacked_strings_escaped_as_python)
{
    /* '/' stays raw, non-ASCII becomes \u escapes (surrogate pair above the
     * BMP), controls get short or \u00XX escapes: json.dumps(["x/\u00e9\U0001f600\n\x01\"\\"]). */
    check_unacked_value("{\"properties\": {\"delivery_tag\": \"t\", \"delivery_info\": "
                        "{\"exchange\": \"x/\xc3\xa9\xf0\x9f\x98\x80\\n\\u0001\\\"\\\\\", "
                        "\"routing_key\": \"\x7f\"}}}",
                        "\"x/\\u00e9\\ud83d\\ude00\\n\\u0001\\\"\\\\\", \"\\u007f\"");
}
END_TEST

/* The fast path of the script's string quoting: every byte json.dumps keeps
 * as is (32-126 but '"' and '\\') is copied; one byte outside that set
 * sends the whole string through the escaping loop. */
START_TEST(test_fetch_unacked_printable_ascii_kept_as_python)
{
    /* json.dumps([" !#Z[]^~/", "a]b\t"]) == '[" !#Z[]^~/", "a]b\\t"]' */
    check_unacked_value("{\"properties\": {\"delivery_tag\": \"t\", \"delivery_info\": "
                        "{\"exchange\": \" !#Z[]^~/\", \"routing_key\": \"a]b\\t\"}}}",
                        "\" !#Z[]^~/\", \"a]b\\t\"");
}
END_TEST

START_TEST(test_fetch_malformed_payload_is_returned_but_not_registered)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    const char *bad[] = {
        "not json at all",
        "[1, 2, 3]",
        "{\"properties\": {}}",
        "{\"properties\": {\"delivery_tag\": 42}}",
        "{\"properties\": {\"delivery_tag\": \"t\", \"delivery_info\": {\"exchange\": \"\xff\"}}}",
    };
    size_t nbad = sizeof bad / sizeof bad[0];
    for (size_t i = 0; i < nbad; i++) freeReplyObject(ts_cmd(c, "LPUSH ingest %s", bad[i]));
    freeReplyObject(ts_cmd(c, "LPUSH ingest %s", "{\"properties\": {\"delivery_tag\": \"good\"}}"));
    fetched_message *m = fetch_n(c, &o, &q, 10, nbad + 1);
    for (size_t i = 0; i < nbad; i++) {
        ck_assert_str_eq(m[i].payload, bad[i]);
        ck_assert_ptr_null(m[i].tag);
    }
    /* No delivery_info: exchange "" and the queue as routing key. */
    ck_assert_str_eq(m[nbad].tag, "good");
    char *v = ts_str(c, "HGET unacked good");
    ck_assert_str_eq(v, "[{\"properties\": {\"delivery_tag\": \"good\"}}, \"\", \"ingest\"]");
    free(v);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 1);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 0);
    transport_messages_free(m, nbad + 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_fetch_kill9_right_after_pop_loses_nothing)
{
    redisContext *c = ts_fresh();
    char ids[1][37];
    send_tasks("ingest:0", ids, 1);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        redisContext *cc = redisConnect(ts_host, ts_port);
        redisReply *r = redisCommand(cc, "SELECT %d", TEST_DB);
        freeReplyObject(r);
        transport_options o;
        transport_options_init(&o);
        transport_queues q;
        queues_of(&q, "ingest", NULL, NULL);
        fetched_message *m;
        size_t n;
        char err[256];
        transport_fetch(cc, &o, &q, 1, &m, &n, err, sizeof err);
        raise(SIGKILL);   /* a worker killed the instant the pop returned */
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 0);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 1);
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 1);
    redisReply *r = ts_cmd(c, "HKEYS unacked");
    char *v = ts_str(c, "HGET unacked %s", r->element[0]->str);
    ck_assert_ptr_nonnull(strstr(v, ids[0]));
    free(v);
    freeReplyObject(r);
    /* ...and a restore brings it back. */
    transport_options o;
    transport_options_init(&o);
    char err[256] = "";
    int n = transport_restore_visible(c, &o, time_now_us() + 3601 * USEC_PER_SEC, err, sizeof err);
    ck_assert_msg(n == 1, "restore_visible: %d %s", n, err);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 1);
    redisFree(c);
}
END_TEST

/* ---- ack ---- */

START_TEST(test_ack_removes_only_given_tags)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[3][37];
    send_tasks("ingest:0 ingest:0 ingest:0", ids, 3);
    fetched_message *m = fetch_n(c, &o, &q, 3, 3);
    const char *tags[] = {m[0].tag, m[2].tag, "unknown-tag"};
    char err[256] = "";
    ck_assert_msg(transport_ack(c, &o, tags, 3, err, sizeof err) == 0, "ack: %s", err);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 1);
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 1);
    ck_assert_int_eq(ts_int(c, "HEXISTS unacked %s", m[1].tag), 1);
    ck_assert_int_eq(transport_ack(c, &o, tags, 0, err, sizeof err), 0);
    transport_messages_free(m, 3);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_ack_reports_wrong_type_error)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    freeReplyObject(ts_cmd(c, "SET unacked_index notazset"));
    const char *tags[] = {"t"};
    char err[256] = "";
    ck_assert_int_eq(transport_ack(c, &o, tags, 1, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "WRONGTYPE"));
    /* The connection stays usable afterwards. */
    ck_assert_int_eq(ts_int(c, "EXISTS unacked_index"), 1);
    redisFree(c);
}
END_TEST

/* ---- requeue and restore ---- */

START_TEST(test_requeue_lpushes_to_back_with_flags)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[2][37];
    send_tasks("ingest:9 ingest:0", ids, 2);
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);   /* the p0 one */
    char err[256] = "";
    ck_assert_msg(transport_requeue(c, &o, m[0].tag, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 0);
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 0);
    /* Back on the base queue (not SEP9), at the back of the line. */
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 1);
    char *back = ts_str(c, "LINDEX ingest 0");
    ck_assert(has_redelivered_flags(back));
    char *id = task_id_of(back);
    ck_assert_str_eq(id, ids[1]);
    free(id);
    free(back);
    /* Unknown tag: nothing pushed, not an error (kombu only cleans the index). */
    freeReplyObject(ts_cmd(c, "ZADD unacked_index 1 ghost"));
    ck_assert_int_eq(transport_requeue(c, &o, "ghost", err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 0);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 1);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_restore_rpushes_in_order_so_next_worker_sees_reverse)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[4][37];
    send_tasks("ingest:0 ingest:0 ingest:9 ingest:0", ids, 4);
    fetched_message *m = fetch_n(c, &o, &q, 3, 3);   /* ids 0, 1, 3 */
    const char *tags[] = {m[0].tag, m[1].tag, m[2].tag};
    char err[256] = "";
    ck_assert_int_eq(transport_restore(c, &o, tags, 3, err, sizeof err), 3);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 0);
    /* PROTOCOL §4.4: last restored is first popped, and before the p9. */
    fetched_message *r = fetch_n(c, &o, &q, 4, 4);
    int want[] = {3, 1, 0, 2};
    for (int i = 0; i < 4; i++) {
        char *id = task_id_of(r[i].payload);
        ck_assert_str_eq(id, ids[want[i]]);
        free(id);
        ck_assert_int_eq(has_redelivered_flags(r[i].payload), i < 3);
    }
    /* Same delivery tags come back (kombu keeps them). */
    ck_assert_str_eq(r[0].tag, m[2].tag);
    transport_messages_free(r, 4);
    transport_messages_free(m, 3);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_restore_priority9_goes_back_to_base_queue)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[1][37];
    send_tasks("ingest:9", ids, 1);
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);
    const char *tags[] = {m[0].tag};
    char err[256] = "";
    ck_assert_int_eq(transport_restore(c, &o, tags, 1, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 1);
    ck_assert_int_eq(ts_int(c, "LLEN ingest" SEP "9"), 0);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_restore_named_exchange_follows_binding)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    char err[256] = "";
    ck_assert_int_eq(transport_declare_queue(c, &o, "target", "ex", "rk", err, sizeof err), 0);
    ck_assert_int_eq(transport_declare_queue(c, &o, "other", "ex", "nope", err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "SISMEMBER _kombu.binding.ex %b", "rk" SEP SEP "target",
                            strlen("rk" SEP SEP "target")), 1);
    const char *v = "[{\"headers\": {}, \"properties\": {\"delivery_info\": {}}}, \"ex\", \"rk\"]";
    freeReplyObject(ts_cmd(c, "HSET unacked t1 %s", v));
    freeReplyObject(ts_cmd(c, "ZADD unacked_index 1 t1"));
    const char *tags[] = {"t1"};
    ck_assert_int_eq(transport_restore(c, &o, tags, 1, err, sizeof err), 1);
    char *got = ts_str(c, "LINDEX target 0");
    ck_assert_str_eq(got, "{\"headers\": {\"redelivered\": true}, \"properties\": "
                          "{\"delivery_info\": {\"redelivered\": true}}}");
    free(got);
    ck_assert_int_eq(ts_int(c, "LLEN other"), 0);
    /* No matching binding: dropped, as kombu does without a deadletter queue. */
    freeReplyObject(ts_cmd(c, "HSET unacked t2 %s",
                           "[{\"headers\": {}}, \"unbound\", \"rk\"]"));
    tags[0] = "t2";
    ck_assert_int_eq(transport_restore(c, &o, tags, 1, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 0);
    redisFree(c);
}
END_TEST

START_TEST(test_restore_sets_flags_like_kombu_key_errors)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    char err[256] = "";
    /* No headers: neither flag (kombu's KeyError on the first assignment). */
    freeReplyObject(ts_cmd(c, "HSET unacked a %s",
                           "[{\"properties\": {\"delivery_info\": {}}}, \"\", \"qa\"]"));
    /* Headers but no delivery_info: only the header flag. */
    freeReplyObject(ts_cmd(c, "HSET unacked b %s", "[{\"headers\": {\"x\": 1}}, null, \"qb\"]"));
    const char *tags[] = {"a", "b"};
    ck_assert_int_eq(transport_restore(c, &o, tags, 2, err, sizeof err), 2);
    char *a = ts_str(c, "LINDEX qa 0"), *b = ts_str(c, "LINDEX qb 0");
    ck_assert_str_eq(a, "{\"properties\": {\"delivery_info\": {}}}");
    ck_assert_str_eq(b, "{\"headers\": {\"x\": 1, \"redelivered\": true}}");
    free(a);
    free(b);
    redisFree(c);
}
END_TEST

START_TEST(test_restore_corrupt_unacked_value_is_kept)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    char err[256] = "";
    freeReplyObject(ts_cmd(c, "HSET unacked bad1 %s", "not json"));
    freeReplyObject(ts_cmd(c, "HSET unacked bad2 %s", "[1, 2]"));
    freeReplyObject(ts_cmd(c, "HSET unacked good %s", "[{}, \"\", \"q\"]"));
    const char *tags[] = {"bad1", "bad2", "good"};
    ck_assert_int_eq(transport_restore(c, &o, tags, 3, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "not JSON"));
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 2);    /* the bad ones stay */
    ck_assert_int_eq(ts_int(c, "LLEN q"), 1);          /* the good one went */
    ck_assert_int_eq(transport_requeue(c, &o, "bad2", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "[envelope, exchange, routing_key]"));
    redisFree(c);
}
END_TEST

START_TEST(test_restore_visible_honours_timeout)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[2][37];
    send_tasks("ingest:0 ingest:0", ids, 2);
    fetched_message *m = fetch_n(c, &o, &q, 2, 2);
    int64_t now = time_now_us();
    /* m[0] was delivered two hours ago; m[1] just now. */
    freeReplyObject(ts_cmd(c, "ZADD unacked_index %f %s", (double)now / 1e6 - 7200, m[0].tag));
    char err[256] = "";
    ck_assert_int_eq(transport_restore_visible(c, &o, now, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "HEXISTS unacked %s", m[0].tag), 0);
    ck_assert_int_eq(ts_int(c, "HEXISTS unacked %s", m[1].tag), 1);
    ck_assert_int_eq(ts_int(c, "EXISTS unacked_mutex"), 0);   /* released */
    /* The batch limit bounds one pass (kombu's num=10). */
    o.visibility_timeout = 0;
    o.restore_visible_batch = 0;
    ck_assert_int_eq(transport_restore_visible(c, &o, now + USEC_PER_SEC, err, sizeof err), 0);
    o.restore_visible_batch = 1;
    ck_assert_int_eq(transport_restore_visible(c, &o, now + USEC_PER_SEC, err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 2);
    transport_messages_free(m, 2);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_restore_visible_skips_when_mutex_held)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    freeReplyObject(ts_cmd(c, "HSET unacked t %s", "[{}, \"\", \"q\"]"));
    freeReplyObject(ts_cmd(c, "ZADD unacked_index 1 t"));
    freeReplyObject(ts_cmd(c, "SET unacked_mutex someone-else PX 300000"));
    char err[256] = "";
    ck_assert_int_eq(transport_restore_visible(c, &o, time_now_us(), err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 1);
    char *holder = ts_str(c, "GET unacked_mutex");
    ck_assert_str_eq(holder, "someone-else");   /* not released by us */
    free(holder);
    freeReplyObject(ts_cmd(c, "DEL unacked_mutex"));
    ck_assert_int_eq(transport_restore_visible(c, &o, time_now_us(), err, sizeof err), 1);
    redisFree(c);
}
END_TEST

START_TEST(test_global_keyprefix_applies_to_every_key)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    o.global_keyprefix = "pfx:";
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char err[256] = "";
    const char *env = "{\"properties\": {\"delivery_tag\": \"t\", \"delivery_info\": "
                      "{\"exchange\": \"\", \"routing_key\": \"ingest\"}}}";
    ck_assert_int_eq(transport_publish(c, &o, "ingest", 4, env, strlen(env), err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "LLEN pfx:ingest" SEP "3"), 1);
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);
    ck_assert_str_eq(m[0].key, "ingest" SEP "3");
    ck_assert_int_eq(ts_int(c, "HLEN pfx:unacked"), 1);
    ck_assert_int_eq(ts_int(c, "ZCARD pfx:unacked_index"), 1);
    ck_assert_int_eq(transport_restore_visible(c, &o, time_now_us() + 3601 * USEC_PER_SEC,
                                               err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "LLEN pfx:ingest"), 1);
    ck_assert_int_eq(transport_declare_queue(c, &o, "ingest", "ingest", NULL, err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "EXISTS pfx:_kombu.binding.ingest"), 1);
    ck_assert_int_eq(ts_int(c, "DBSIZE"), 2);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

/* ---- interop with real kombu ---- */

START_TEST(test_kombu_restore_visible_restores_our_message_byte_equal)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char ids[1][37];
    send_tasks("ingest:0", ids, 1);
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);
    char *value = ts_str(c, "HGET unacked %s", m[0].tag);
    usleep(1200 * 1000);   /* older than kombu's visibility_timeout=1 */
    free(ts_peer_run(0, "restore_visible %s 1", ts_url()));
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 0);
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 0);
    char *kombu_bytes = ts_str(c, "RPOP ingest");
    ck_assert_ptr_nonnull(kombu_bytes);
    ck_assert(has_redelivered_flags(kombu_bytes));
    /* Put the same entry back and restore it ourselves: same bytes. */
    freeReplyObject(ts_cmd(c, "HSET unacked %s %s", m[0].tag, value));
    freeReplyObject(ts_cmd(c, "ZADD unacked_index 1 %s", m[0].tag));
    const char *tags[] = {m[0].tag};
    char err[256] = "";
    ck_assert_int_eq(transport_restore(c, &o, tags, 1, err, sizeof err), 1);
    char *our_bytes = ts_str(c, "RPOP ingest");
    ck_assert_str_eq(our_bytes, kombu_bytes);
    free(our_bytes);
    free(kombu_bytes);
    free(value);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_we_restore_what_killed_kombu_consumer_left)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    char ids[1][37];
    send_tasks("alpha:0", ids, 1);
    char *tag = ts_peer_run(TS_KILLED, "get_and_die %s alpha", ts_url());
    tag[strcspn(tag, "\n")] = '\0';
    ck_assert_int_eq(ts_int(c, "HEXISTS unacked %s", tag), 1);
    ck_assert_int_eq(ts_int(c, "LLEN alpha"), 0);
    char err[256] = "";
    /* Not yet timed out: nothing happens. */
    ck_assert_int_eq(transport_restore_visible(c, &o, time_now_us(), err, sizeof err), 0);
    ck_assert_int_eq(transport_restore_visible(c, &o, time_now_us() + 3601 * USEC_PER_SEC,
                                               err, sizeof err), 1);
    ck_assert_int_eq(ts_int(c, "HLEN unacked"), 0);
    transport_queues q;
    queues_of(&q, "alpha", NULL, NULL);
    fetched_message *m = fetch_n(c, &o, &q, 1, 1);
    ck_assert_str_eq(m[0].tag, tag);
    ck_assert(has_redelivered_flags(m[0].payload));
    char *id = task_id_of(m[0].payload);
    ck_assert_str_eq(id, ids[0]);
    free(id);
    free(tag);
    transport_messages_free(m, 1);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

START_TEST(test_publish_lands_on_priority_subqueue)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    char err[256] = "";
    ck_assert_int_eq(transport_publish(c, &o, "ingest", 7, "a", 1, err, sizeof err), 0);
    ck_assert_int_eq(transport_publish(c, &o, "ingest", 2, "b", 1, err, sizeof err), 0);
    ck_assert_int_eq(transport_publish(c, &o, "ingest", 2, "c", 1, err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "LLEN ingest" SEP "6"), 1);
    char *first = ts_str(c, "LINDEX ingest 0");   /* LPUSH: newest at the left */
    ck_assert_str_eq(first, "c");
    free(first);
    freeReplyObject(ts_cmd(c, "SET wrongtype x"));
    ck_assert_int_eq(transport_publish(c, &o, "wrongtype", 0, "d", 1, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "WRONGTYPE"));
    redisFree(c);
}
END_TEST

/* transport_fetch_append/_finish queued after other commands: the same
 * messages, rotation and unacked bytes as the blocking fetch. */
START_TEST(test_fetch_pipelined_after_other_commands_matches_blocking_fetch)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "alpha", "beta", "ingest");
    char ids[5][37];
    send_tasks("alpha:0 alpha:0 beta:0 ingest:9 ingest:0", ids, 5);
    char *first = ts_str(c, "LINDEX alpha -1");
    char err[256] = "";
    ck_assert_msg(transport_fetch_prepare(c, err, sizeof err) == 0, "prepare: %s", err);
    /* An ack of an unknown tag and a PING go first, as in a slot's round trip. */
    const char *none[1] = {"no-such-tag"};
    transport_ack_append(c, &o, none, 1);
    ck_assert_int_eq(redisAppendCommand(c, "PING"), REDIS_OK);
    transport_fetch_call fc;
    ck_assert_msg(transport_fetch_append(c, &o, &q, 10, &fc, err, sizeof err) == 0, "append: %s", err);
    ck_assert_int_eq(transport_ack_finish(c, 1, err, sizeof err), 0);
    redisReply *pong = NULL;
    ck_assert_int_eq(redisGetReply(c, (void **)&pong), REDIS_OK);
    ck_assert_str_eq(pong->str, "PONG");
    freeReplyObject(pong);
    fetched_message *m;
    size_t n;
    ck_assert_msg(transport_fetch_finish(c, &o, &q, NULL, &fc, &m, &n, err, sizeof err) == 0,
                  "finish: %s", err);
    ck_assert_uint_eq(n, 5);
    int want[] = {0, 2, 4, 1, 3};
    for (int i = 0; i < 5; i++) {
        char *id = task_id_of(m[i].payload);
        ck_assert_str_eq(id, ids[want[i]]);
        free(id);
    }
    ck_assert_str_eq(m[0].payload, first);
    ck_assert_str_eq(m[0].queue, "alpha");
    ck_assert_str_eq(m[4].key, "ingest" SEP "9");
    ck_assert_str_eq(m[4].queue, "ingest");
    ck_assert_str_eq(q.names[0], "beta");
    ck_assert_str_eq(q.names[1], "alpha");
    ck_assert_str_eq(q.names[2], "ingest");
    /* The unacked value: exactly kombu's '[<payload>, "", "alpha"]'. */
    char *stored = ts_str(c, "HGET unacked %s", m[0].tag);
    buf want_value = BUF_INIT;
    buf_printf(&want_value, "[%s, \"\", \"alpha\"]", first);
    ck_assert_str_eq(stored, buf_cstr(&want_value));
    ck_assert_int_eq(ts_int(c, "ZCARD unacked_index"), 5);
    buf_free(&want_value);
    free(stored);
    free(first);
    transport_messages_free(m, n);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

/* A server that lost the script answers NOSCRIPT to the queued EVALSHA:
 * nothing popped, 0 messages, and the next pipelined fetch works. */
START_TEST(test_fetch_pipelined_after_script_flush_pops_nothing_then_works)
{
    redisContext *c = ts_fresh();
    transport_options o;
    transport_options_init(&o);
    transport_queues q;
    queues_of(&q, "ingest", NULL, NULL);
    char err[256] = "";
    ck_assert_int_eq(transport_fetch_prepare(c, err, sizeof err), 0);
    freeReplyObject(ts_cmd(c, "SCRIPT FLUSH"));
    freeReplyObject(ts_cmd(c, "LPUSH ingest %s",
                           "{\"properties\": {\"delivery_tag\": \"t1\", \"delivery_info\": "
                           "{\"exchange\": \"\", \"routing_key\": \"ingest\"}}}"));
    transport_fetch_call fc;
    fetched_message *m;
    size_t n;
    ck_assert_int_eq(transport_fetch_append(c, &o, &q, 1, &fc, err, sizeof err), 0);
    ck_assert_msg(transport_fetch_finish(c, &o, &q, NULL, &fc, &m, &n, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(ts_int(c, "LLEN ingest"), 1);
    ck_assert_int_eq(transport_fetch_append(c, &o, &q, 1, &fc, err, sizeof err), 0);
    ck_assert_msg(transport_fetch_finish(c, &o, &q, NULL, &fc, &m, &n, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(m[0].tag, "t1");
    ck_assert_int_eq(ts_int(c, "HEXISTS unacked t1"), 1);
    transport_messages_free(m, n);
    transport_queues_deinit(&q);
    redisFree(c);
}
END_TEST

static Suite *transport_suite(void)
{
    Suite *s = suite_create("transport");
    TCase *pure = tcase_create("pure");
    tcase_add_test(pure, test_queue_set_add_remove_rotate);
    tcase_add_test(pure, test_queue_set_refuses_beyond_limit);
    tcase_add_test(pure, test_priority_key_matches_kombu_steps);
    tcase_add_test(pure, test_backoff_doubles_to_cap_and_resets);
    suite_add_tcase(s, pure);

    TCase *r = tcase_create("redis");
    tcase_set_timeout(r, 60);
    tcase_add_test(r, test_fetch_serves_priorities_in_kombu_order);
    tcase_add_test(r, test_fetch_round_robin_rotates_served_queue_to_end);
    tcase_add_test(r, test_fetch_many_in_one_call_keeps_round_robin);
    tcase_add_test(r, test_fetch_empty_queues_returns_zero_at_once);
    tcase_add_test(r, test_fetch_rejects_bad_arguments);
    tcase_add_test(r, test_fetch_on_dead_connection_reports_error);
    tcase_add_test(r, test_fetch_survives_script_flush);
    tcase_add_test(r, test_fetch_unacked_value_byte_equal_to_kombu);
    tcase_add_test(r, test_fetch_unacked_strings_escaped_as_python);
    tcase_add_test(r, test_fetch_unacked_printable_ascii_kept_as_python);
    tcase_add_test(r, test_fetch_malformed_payload_is_returned_but_not_registered);
    tcase_add_test(r, test_fetch_kill9_right_after_pop_loses_nothing);
    tcase_add_test(r, test_fetch_pipelined_after_other_commands_matches_blocking_fetch);
    tcase_add_test(r, test_fetch_pipelined_after_script_flush_pops_nothing_then_works);
    tcase_add_test(r, test_ack_removes_only_given_tags);
    tcase_add_test(r, test_ack_reports_wrong_type_error);
    tcase_add_test(r, test_requeue_lpushes_to_back_with_flags);
    tcase_add_test(r, test_restore_rpushes_in_order_so_next_worker_sees_reverse);
    tcase_add_test(r, test_restore_priority9_goes_back_to_base_queue);
    tcase_add_test(r, test_restore_named_exchange_follows_binding);
    tcase_add_test(r, test_restore_sets_flags_like_kombu_key_errors);
    tcase_add_test(r, test_restore_corrupt_unacked_value_is_kept);
    tcase_add_test(r, test_restore_visible_honours_timeout);
    tcase_add_test(r, test_restore_visible_skips_when_mutex_held);
    tcase_add_test(r, test_global_keyprefix_applies_to_every_key);
    tcase_add_test(r, test_kombu_restore_visible_restores_our_message_byte_equal);
    tcase_add_test(r, test_we_restore_what_killed_kombu_consumer_left);
    tcase_add_test(r, test_publish_lands_on_priority_subqueue);
    suite_add_tcase(s, r);
    return s;
}

int main(void)
{
    /* Without a redis-server only the pure helpers run, and the program
     * reports "skipped" (77) unless one of them failed. */
    const char *url = getenv("PTEL_TEST_REDIS_URL");
    int have_redis = url && *url;
    if (have_redis) ts_setup_or_skip(TEST_DB);
    else setenv("CK_RUN_CASE", "pure", 1);
    SRunner *sr = srunner_create(transport_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : have_redis ? 0 : 77;
}
