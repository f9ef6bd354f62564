/* broker/test_control.c: the pidbox wire format against the captures
 * (golden_samples.json: command, reply, mingle hello and its reply, byte for
 * byte), destination/pattern filtering, malformed input, and against a real
 * redis-server: reply delivery through the binding, the node binding, and a
 * node thread answering a broadcast call. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "broker/control.h"
#include "broker/test_support.h"
#include "broker/transport.h"
#include "common/base64.h"
#include "common/buf.h"
#include "common/mem.h"

#define TEST_DB 12

/* ---- Fixtures ---------------------------------------------------------------- */


typedef struct sample {
    pj_value *env, *body;
    const char *tag;
} sample;

static sample load_sample(const char *name)
{
    const char *raw = ts_golden_raw(name);
    sample s;
    s.env = pj_parse(raw, strlen(raw), NULL);
    ck_assert_ptr_nonnull(s.env);
    const pj_value *b = pj_object_get(s.env, "body");
    buf json = BUF_INIT;
    ck_assert_int_eq(base64_decode(&json, b->u.string.ptr, b->u.string.len), 0);
    s.body = pj_parse(json.data, json.len, NULL);
    ck_assert_ptr_nonnull(s.body);
    buf_free(&json);
    s.tag = pj_get_string(pj_object_get(s.env, "properties"), "delivery_tag");
    return s;
}

static void free_sample(sample *s)
{
    pj_free(s->env);
    pj_free(s->body);
}

static long long header_int(const sample *s, const char *key)
{
    long long v;
    ck_assert_int_eq(pj_int_value(pj_object_get(pj_object_get(s->env, "headers"), key), &v), 0);
    return v;
}

/* ---- Parsing ----------------------------------------------------------------- */

START_TEST(test_parse_captured_ping)
{
    const char *raw = ts_golden_raw("pidbox_command_ping");
    control_command c;
    char err[256];
    ck_assert_int_eq(control_parse(raw, strlen(raw), &c, err, sizeof err), 0);
    ck_assert_str_eq(c.method, "ping");
    ck_assert_uint_eq(c.arguments->u.object.len, 0);
    ck_assert_ptr_null(c.destination);
    ck_assert_ptr_null(c.pattern);
    ck_assert_str_eq(c.ticket, "2c236dbf-df88-41d4-9784-2df5156e427e");
    ck_assert_str_eq(c.reply_exchange, "reply.celery.pidbox");
    ck_assert_str_eq(c.reply_routing_key, "4fe6b9bd-bbf3-3681-a1e6-01ac149705f8");
    ck_assert_uint_eq(c.clock, 1);
    ck_assert(control_matches(&c, "anyone@host"));
    control_command_free(&c);
}
END_TEST

static void parse_body(const char *body_json, control_command *c)
{
    buf b64 = BUF_INIT, env = BUF_INIT;
    base64_encode(&b64, body_json, strlen(body_json));
    buf_printf(&env, "{\"body\": \"%s\", \"content-type\": \"application/json\", "
                     "\"properties\": {\"body_encoding\": \"base64\"}}", buf_cstr(&b64));
    char err[256];
    ck_assert_msg(control_parse(env.data, env.len, c, err, sizeof err) == 0, "%s", err);
    buf_free(&b64);
    buf_free(&env);
}

START_TEST(test_destination_and_patterns)
{
    control_command c;
    parse_body("{\"method\": \"ping\", \"destination\": [\"w1@vm\", \"w2@vm\"]}", &c);
    ck_assert(control_matches(&c, "w2@vm"));
    ck_assert(!control_matches(&c, "w3@vm"));
    ck_assert_ptr_null(c.ticket);   /* a cast */
    control_command_free(&c);

    parse_body("{\"method\": \"ping\", \"destination\": null, \"pattern\": \"w1@*\", "
               "\"matcher\": \"glob\"}", &c);
    ck_assert(control_matches(&c, "w1@vm"));
    ck_assert(!control_matches(&c, "w2@vm"));
    control_command_free(&c);

    /* pcre is Python's re.match: anchored at the start only. */
    parse_body("{\"method\": \"ping\", \"pattern\": \"w[0-9]+@\", \"matcher\": \"pcre\"}", &c);
    ck_assert(control_matches(&c, "w12@vm"));
    ck_assert(!control_matches(&c, "xw12@vm"));
    control_command_free(&c);

    parse_body("{\"method\": \"ping\", \"pattern\": \"w1@*\", \"matcher\": \"nope\"}", &c);
    ck_assert(!control_matches(&c, "w1@vm"));
    control_command_free(&c);

    /* An empty destination list means everybody (kombu tests truthiness). */
    parse_body("{\"method\": \"ping\", \"destination\": []}", &c);
    ck_assert(control_matches(&c, "w1@vm"));
    control_command_free(&c);

    /* A pattern without a matcher is ignored. */
    parse_body("{\"method\": \"ping\", \"pattern\": \"zzz\"}", &c);
    ck_assert(control_matches(&c, "w1@vm"));
    control_command_free(&c);
}
END_TEST

START_TEST(test_malformed_messages_are_refused)
{
    static const char *const bad[] = {
        "not json",
        "[1, 2]",
        "{\"body\": 3}",
        "{\"body\": \"!!!\", \"properties\": {\"body_encoding\": \"base64\"}}",
        "{\"body\": \"bm90IGpzb24=\", \"properties\": {\"body_encoding\": \"base64\"}}",
        "{\"body\": \"e30=\", \"properties\": {\"body_encoding\": \"base64\"}}",   /* {} */
        "{\"body\": \"e30=\", \"content-type\": \"application/x-python-serialize\"}",
        "{\"body\": \"WzFd\", \"properties\": {\"body_encoding\": \"base64\"}}",   /* [1] */
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        control_command c;
        char err[256] = "";
        ck_assert_msg(control_parse(bad[i], strlen(bad[i]), &c, err, sizeof err) == -1,
                      "accepted %s", bad[i]);
        ck_assert_msg(err[0] != '\0', "no reason for %s", bad[i]);
        ck_assert_ptr_null(c.method);
    }
}
END_TEST

START_TEST(test_arguments_keep_int_and_float_apart)
{
    control_command c;
    parse_body("{\"method\": \"hello\", \"arguments\": {\"from_node\": \"w2@vm\", "
               "\"revoked\": {\"a\": [403.19798738, \"a\"], \"b\": 1}}}", &c);
    const pj_value *rev = pj_object_get(c.arguments, "revoked");
    ck_assert_int_eq(pj_object_get(rev, "a")->u.array.items[0]->type, PJ_FLOAT);
    ck_assert_int_eq(pj_object_get(rev, "b")->type, PJ_INT);
    control_command_free(&c);
}
END_TEST

/* ---- Envelopes, byte for byte ------------------------------------------------- */

START_TEST(test_reply_envelope_matches_capture)
{
    sample s = load_sample("pidbox_reply_ping");
    const pj_value *di = pj_object_get(pj_object_get(s.env, "properties"), "delivery_info");
    buf out = BUF_INIT;
    control_reply_envelope(&out, "w1@vm", pj_object_get(s.body, "w1@vm"),
                           pj_get_string(pj_object_get(s.env, "headers"), "ticket"),
                           (unsigned long long)header_int(&s, "clock"),
                           pj_get_string(di, "exchange"), pj_get_string(di, "routing_key"), s.tag);
    ck_assert_str_eq(buf_cstr(&out), ts_golden_raw("pidbox_reply_ping"));
    buf_free(&out);
    free_sample(&s);
}
END_TEST

START_TEST(test_hello_reply_matches_capture)
{
    sample s = load_sample("mingle_hello_reply");
    const pj_value *di = pj_object_get(pj_object_get(s.env, "properties"), "delivery_info");
    buf out = BUF_INIT;
    control_reply_envelope(&out, "w1@vm", pj_object_get(s.body, "w1@vm"),
                           pj_get_string(pj_object_get(s.env, "headers"), "ticket"),
                           (unsigned long long)header_int(&s, "clock"),
                           pj_get_string(di, "exchange"), pj_get_string(di, "routing_key"), s.tag);
    ck_assert_str_eq(buf_cstr(&out), ts_golden_raw("mingle_hello_reply"));
    buf_free(&out);
    free_sample(&s);
}
END_TEST

static void check_command_capture(const char *name)
{
    sample s = load_sample(name);
    double expires;
    ck_assert_int_eq(pj_number_value(pj_object_get(pj_object_get(s.env, "headers"), "expires"),
                                     &expires), 0);
    buf out = BUF_INIT;
    control_command_envelope(&out, pj_get_string(s.body, "method"),
                             pj_object_get(s.body, "arguments"), pj_get_string(s.body, "ticket"),
                             pj_get_string(pj_object_get(s.body, "reply_to"), "routing_key"),
                             (unsigned long long)header_int(&s, "clock"), expires, s.tag);
    ck_assert_str_eq(buf_cstr(&out), ts_golden_raw(name));
    buf_free(&out);
    free_sample(&s);
}

START_TEST(test_hello_command_matches_capture) { check_command_capture("mingle_hello_command"); }
END_TEST
START_TEST(test_ping_command_matches_capture)  { check_command_capture("pidbox_command_ping"); }
END_TEST

START_TEST(test_channel_names)
{
    buf b = BUF_INIT;
    control_channel(&b, "", 0);
    ck_assert_str_eq(buf_cstr(&b), "/0.celery.pidbox");
    buf_reset(&b);
    control_channel(&b, "p:", 5);
    ck_assert_str_eq(buf_cstr(&b), "p:/5.celery.pidbox");
    buf_free(&b);
}
END_TEST

/* ---- Redis ------------------------------------------------------------------- */

START_TEST(test_deliver_follows_binding_or_drops)
{
    redisContext *c = ts_fresh();
    char err[256];
    /* No binding: dropped silently, as kombu does. */
    ck_assert_int_eq(control_deliver(c, "", "reply.celery.pidbox", "oid1", "x", 1, err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "EXISTS oid1.reply.celery.pidbox"), 0);
    freeReplyObject(ts_cmd(c, "SADD _kombu.binding.reply.celery.pidbox %s",
                           "oid1" TRANSPORT_SEP TRANSPORT_SEP "oid1.reply.celery.pidbox"));
    freeReplyObject(ts_cmd(c, "SADD _kombu.binding.reply.celery.pidbox %s",
                           "oid2" TRANSPORT_SEP TRANSPORT_SEP "oid2.reply.celery.pidbox"));
    ck_assert_int_eq(control_deliver(c, "", "reply.celery.pidbox", "oid1", "hello", 5, err, sizeof err), 1);
    char *v = ts_str(c, "RPOP oid1.reply.celery.pidbox");
    ck_assert_str_eq(v, "hello");
    free(v);
    ck_assert_int_eq(ts_int(c, "EXISTS oid2.reply.celery.pidbox"), 0);
    redisFree(c);
}
END_TEST

START_TEST(test_node_binding_declare_and_forget)
{
    redisContext *c = ts_fresh();
    char err[256];
    ck_assert_int_eq(control_declare_node(c, "", "w1@vm", err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "SISMEMBER _kombu.binding.celery.pidbox %s",
                            TRANSPORT_SEP TRANSPORT_SEP "w1@vm.celery.pidbox"), 1);
    ck_assert_int_eq(control_forget_node(c, "", "w1@vm", err, sizeof err), 0);
    ck_assert_int_eq(ts_int(c, "EXISTS _kombu.binding.celery.pidbox"), 0);
    redisFree(c);
}
END_TEST

static pj_value *echo_handler(void *ud, const control_command *cmd, int *no_reply)
{
    int *calls = ud;
    (*calls)++;
    if (strcmp(cmd->method, "quiet") == 0) {
        *no_reply = 1;
        return NULL;
    }
    pj_value *v = pj_new_object();
    pj_object_set(v, "ok", pj_new_string(cmd->method));
    return v;
}

typedef struct collected {
    int n;
    char node[64];
    char ok[64];
} collected;

static void collect(void *ud, const char *node, const pj_value *value)
{
    collected *c = ud;
    c->n++;
    snprintf(c->node, sizeof c->node, "%s", node);
    const char *ok = value ? pj_get_string(value, "ok") : NULL;
    snprintf(c->ok, sizeof c->ok, "%s", ok ? ok : "");
}

START_TEST(test_node_answers_a_broadcast_call)
{
    redisContext *c = ts_fresh();
    redis_url url;
    char err[256];
    ck_assert_int_eq(redis_url_parse(ts_url(), &url, err, sizeof err), 0);
    lamport_clock app, mbox, client;
    lamport_init(&app, 0);
    lamport_init(&mbox, 0);
    lamport_init(&client, 10);
    int calls = 0;
    control_node_options o = {&url, "", "n1@test", &app, &mbox, echo_handler, &calls};
    control_node *n = control_node_start(&o, err, sizeof err);
    ck_assert_msg(n != NULL, "%s", err);

    collected got = {0, "", ""};
    int replies = control_call(c, "", TEST_DB, &client, "ping", NULL, 1.0, collect, &got,
                               err, sizeof err);
    ck_assert_msg(replies == 1, "replies %d: %s", replies, err);
    ck_assert_str_eq(got.node, "n1@test");
    ck_assert_str_eq(got.ok, "ping");
    /* The mailbox clock followed the command's (11) and stamped the reply. */
    ck_assert_uint_ge(lamport_value(&mbox), 13);
    ck_assert_uint_eq(lamport_value(&app), 1);
    /* The client's binding and list are gone afterwards. */
    ck_assert_int_eq(ts_int(c, "EXISTS _kombu.binding.reply.celery.pidbox"), 0);

    /* No reply when the handler says so; a malformed message is survived. */
    collected none = {0, "", ""};
    char channel[64];
    snprintf(channel, sizeof channel, "/%d.celery.pidbox", TEST_DB);
    freeReplyObject(ts_cmd(c, "PUBLISH %s %s", channel, "{garbage"));
    ck_assert_int_eq(control_call(c, "", TEST_DB, &client, "quiet", NULL, 0.5, collect, &none,
                                  err, sizeof err), 0);
    ck_assert_int_eq(none.n, 0);
    ck_assert_int_eq(calls, 2);

    control_node_stop(n);
    ck_assert_int_eq(ts_int(c, "EXISTS _kombu.binding.celery.pidbox"), 0);
    redis_url_free(&url);
    redisFree(c);
}
END_TEST

static Suite *control_suite(void)
{
    Suite *s = suite_create("control");
    TCase *p = tcase_create("pure");
    tcase_add_test(p, test_parse_captured_ping);
    tcase_add_test(p, test_destination_and_patterns);
    tcase_add_test(p, test_malformed_messages_are_refused);
    tcase_add_test(p, test_arguments_keep_int_and_float_apart);
    tcase_add_test(p, test_reply_envelope_matches_capture);
    tcase_add_test(p, test_hello_reply_matches_capture);
    tcase_add_test(p, test_hello_command_matches_capture);
    tcase_add_test(p, test_ping_command_matches_capture);
    tcase_add_test(p, test_channel_names);
    suite_add_tcase(s, p);
    TCase *r = tcase_create("redis");
    tcase_set_timeout(r, 30);
    tcase_add_test(r, test_deliver_follows_binding_or_drops);
    tcase_add_test(r, test_node_binding_declare_and_forget);
    tcase_add_test(r, test_node_answers_a_broadcast_call);
    suite_add_tcase(s, r);
    return s;
}

int main(void)
{
    (void)ts_peer_run;   /* shared fixture unused here */
    const char *url = getenv("PTEL_TEST_REDIS_URL");
    int have_redis = url && *url;
    if (have_redis) ts_setup_or_skip(TEST_DB);
    else setenv("CK_RUN_CASE", "pure", 1);
    SRunner *sr = srunner_create(control_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    cJSON_Delete(ts_golden_doc);
    return failed ? 1 : have_redis ? 0 : 77;
}
