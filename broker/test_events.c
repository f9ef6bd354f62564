/* broker/test_events.c: celeryev events: the Lamport clock, the exact bytes
 * of captured events rebuilt from their fields (golden_samples.json), and the
 * publisher against a real redis-server (batching, the task group switch). */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "broker/events.h"
#include "broker/test_support.h"
#include "common/base64.h"
#include "common/buf.h"
#include "common/mem.h"

#define TEST_DB 11

/* ---- Fixtures ---------------------------------------------------------------- */


/* The decoded body of an envelope (pyjson, so floats keep their repr). */
static pj_value *envelope_body(const char *raw, pj_value **env_out)
{
    pj_value *env = pj_parse(raw, strlen(raw), NULL);
    ck_assert_ptr_nonnull(env);
    const pj_value *b = pj_object_get(env, "body");
    buf json = BUF_INIT;
    ck_assert_int_eq(base64_decode(&json, b->u.string.ptr, b->u.string.len), 0);
    pj_value *body = pj_parse(json.data, json.len, NULL);
    ck_assert_ptr_nonnull(body);
    buf_free(&json);
    *env_out = env;
    return body;
}

static int is_common(const char *key)
{
    static const char *const common[] = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type"};
    for (size_t i = 0; i < sizeof common / sizeof *common; i++)
        if (strcmp(key, common[i]) == 0) return 1;
    return 0;
}

/* Rebuild one captured event from its own fields with events_build. */
static pj_value *rebuild_event(const pj_value *e)
{
    long long pid, clock, utcoffset;
    double ts;
    ck_assert_int_eq(pj_int_value(pj_object_get(e, "pid"), &pid), 0);
    ck_assert_int_eq(pj_int_value(pj_object_get(e, "clock"), &clock), 0);
    ck_assert_int_eq(pj_int_value(pj_object_get(e, "utcoffset"), &utcoffset), 0);
    ck_assert_int_eq(pj_number_value(pj_object_get(e, "timestamp"), &ts), 0);
    event_identity id = {pj_get_string(e, "hostname"), (int)utcoffset, (int)pid};
    pj_value *fields = pj_new_object();
    for (size_t i = 0; i < e->u.object.len; i++) {
        const pj_member *m = &e->u.object.members[i];
        if (!is_common(m->key.ptr)) pj_object_set(fields, m->key.ptr, pj_clone(m->value));
    }
    return events_build(&id, pj_get_string(e, "type"), (unsigned long long)clock, fields, ts);
}

static void check_golden_event(const char *name)
{
    const char *raw = ts_golden_raw(name);
    pj_value *env;
    pj_value *body = envelope_body(raw, &env);
    pj_value *rebuilt;
    if (body->type == PJ_ARRAY) {
        rebuilt = pj_new_array();
        for (size_t i = 0; i < body->u.array.len; i++)
            pj_array_append(rebuilt, rebuild_event(body->u.array.items[i]));
    } else {
        rebuilt = rebuild_event(body);
    }
    const pj_value *props = pj_object_get(env, "properties");
    const pj_value *di = pj_object_get(props, "delivery_info");
    buf out = BUF_INIT;
    events_envelope(&out, rebuilt, pj_get_string(pj_object_get(env, "headers"), "hostname"),
                    pj_get_string(di, "routing_key"), pj_get_string(props, "delivery_tag"));
    ck_assert_str_eq(buf_cstr(&out), raw);
    buf_free(&out);
    pj_free(rebuilt);
    pj_free(body);
    pj_free(env);
}

/* ---- Pure ------------------------------------------------------------------ */

START_TEST(test_lamport_forward_and_adjust)
{
    lamport_clock c;
    lamport_init(&c, 0);
    ck_assert_uint_eq(lamport_forward(&c), 1);
    ck_assert_uint_eq(lamport_forward(&c), 2);
    /* Receiving a larger clock jumps past it; a smaller one still ticks. */
    ck_assert_uint_eq(lamport_adjust(&c, 365), 366);
    ck_assert_uint_eq(lamport_adjust(&c, 3), 367);
    ck_assert_uint_eq(lamport_value(&c), 367);
}
END_TEST

START_TEST(test_routing_key_and_channel)
{
    buf rk = BUF_INIT, ch = BUF_INIT;
    events_routing_key(&rk, "worker-heartbeat");
    ck_assert_str_eq(buf_cstr(&rk), "worker.heartbeat");
    events_channel(&ch, "", 0, "task.multi");
    ck_assert_str_eq(buf_cstr(&ch), "/0.celeryev/task.multi");
    buf_reset(&ch);
    events_channel(&ch, "pfx:", 3, "worker.online");
    ck_assert_str_eq(buf_cstr(&ch), "pfx:/3.celeryev/worker.online");
    buf_free(&rk);
    buf_free(&ch);
}
END_TEST

START_TEST(test_utcoffset_is_hours_west)
{
    char *saved = getenv("TZ") ? xstrdup(getenv("TZ")) : NULL;
    setenv("TZ", "UTC", 1);
    tzset();
    ck_assert_int_eq(events_utcoffset(), 0);
    setenv("TZ", "XXX-2", 1);           /* POSIX: 2 hours east of UTC */
    tzset();
    ck_assert_int_eq(events_utcoffset(), -2);
    setenv("TZ", "XXX+5", 1);           /* 5 hours west */
    tzset();
    ck_assert_int_eq(events_utcoffset(), 5);
    setenv("TZ", "XXX-5:30", 1);        /* India: Python's -19800 // 3600 == -6 */
    tzset();
    ck_assert_int_eq(events_utcoffset(), -6);
    if (saved) setenv("TZ", saved, 1);
    else unsetenv("TZ");
    tzset();
    free(saved);
}
END_TEST

START_TEST(test_build_orders_fields_like_celery)
{
    event_identity id = {"w1@vm", 0, 7310};
    pj_value *f = pj_new_object();
    pj_object_set(f, "uuid", pj_new_string("abc"));
    pj_value *e = events_build(&id, "task-started", 27, f, 1795817419.5);
    buf out = BUF_INIT;
    pj_dump(&out, e, 0);
    ck_assert_str_eq(buf_cstr(&out), "{\"hostname\": \"w1@vm\", \"utcoffset\": 0, \"pid\": 7310, "
                     "\"clock\": 27, \"uuid\": \"abc\", \"timestamp\": 1795817419.5, "
                     "\"type\": \"task-started\"}");
    buf_free(&out);
    pj_free(e);
}
END_TEST

START_TEST(test_golden_worker_online)    { check_golden_event("event_worker_online"); }
END_TEST
START_TEST(test_golden_worker_offline)   { check_golden_event("event_worker_offline"); }
END_TEST
START_TEST(test_golden_worker_heartbeat) { check_golden_event("event_worker_heartbeat"); }
END_TEST
START_TEST(test_golden_task_multi)       { check_golden_event("event_task_multi_received"); }
END_TEST
START_TEST(test_golden_task_sent)        { check_golden_event("event_task_sent_from_client"); }
END_TEST

/* ---- Publisher against redis-server ------------------------------------------ */

typedef struct sub_fixture {
    redisContext *sub;
    redis_url url;
    lamport_clock clock;
    event_publisher *ev;
} sub_fixture;

static void sub_open(sub_fixture *f)
{
    f->sub = ts_connect();
    char pattern[64];
    snprintf(pattern, sizeof pattern, "/%d.celeryev/*", TEST_DB);
    freeReplyObject(ts_cmd(f->sub, "PSUBSCRIBE %s", pattern));
    char err[256];
    ck_assert_int_eq(redis_url_parse(ts_url(), &f->url, err, sizeof err), 0);
    lamport_init(&f->clock, 0);
    f->ev = events_publisher_new(&f->url, "", "c@test", &f->clock);
}

static void sub_close(sub_fixture *f)
{
    events_publisher_free(f->ev);
    redis_url_free(&f->url);
    redisFree(f->sub);
}

/* Next pmessage: its channel and decoded body. */
static pj_value *next_event(sub_fixture *f, char **channel)
{
    redisReply *r = NULL;
    ck_assert_int_eq(redisGetReply(f->sub, (void **)&r), REDIS_OK);
    ck_assert_int_eq((int)r->elements, 4);
    *channel = xstrdup(r->element[2]->str);
    pj_value *env;
    pj_value *body = envelope_body(r->element[3]->str, &env);
    pj_free(env);
    freeReplyObject(r);
    return body;
}

START_TEST(test_worker_events_publish_now_with_clock)
{
    sub_fixture f;
    sub_open(&f);
    pj_value *fields = pj_new_object();
    pj_object_set(fields, "freq", pj_new_float(2.0));
    ck_assert_int_eq(events_send(f.ev, "worker-online", fields), 0);
    char *ch;
    pj_value *e = next_event(&f, &ch);
    char want[64];
    snprintf(want, sizeof want, "/%d.celeryev/worker.online", TEST_DB);
    ck_assert_str_eq(ch, want);
    ck_assert_str_eq(pj_get_string(e, "type"), "worker-online");
    ck_assert_str_eq(pj_get_string(e, "hostname"), "c@test");
    long long clock;
    ck_assert_int_eq(pj_int_value(pj_object_get(e, "clock"), &clock), 0);
    ck_assert_int_eq(clock, 1);
    free(ch);
    pj_free(e);
    sub_close(&f);
}
END_TEST

static pj_value *uuid_fields(int i)
{
    char id[32];
    snprintf(id, sizeof id, "task-%d", i);
    pj_value *f = pj_new_object();
    pj_object_set(f, "uuid", pj_new_string(id));
    return f;
}

START_TEST(test_task_events_batch_on_task_multi)
{
    sub_fixture f;
    sub_open(&f);
    /* Off: dropped without advancing the clock. */
    ck_assert_int_eq(events_send(f.ev, "task-received", uuid_fields(0)), 1);
    ck_assert_uint_eq(lamport_value(&f.clock), 0);
    events_set_task_group(f.ev, 1);
    for (int i = 0; i < EVENTS_BATCH_MAX + 2; i++)
        ck_assert_int_eq(events_send(f.ev, "task-started", uuid_fields(i)), 0);
    char *ch;
    pj_value *batch = next_event(&f, &ch);   /* published at the 24th */
    ck_assert(strstr(ch, ".celeryev/task.multi") != NULL);
    ck_assert_int_eq(batch->type, PJ_ARRAY);
    ck_assert_uint_eq(batch->u.array.len, EVENTS_BATCH_MAX);
    ck_assert_str_eq(pj_get_string(batch->u.array.items[0], "uuid"), "task-0");
    free(ch);
    pj_free(batch);
    ck_assert_int_eq(events_flush(f.ev), 0);
    batch = next_event(&f, &ch);
    ck_assert_uint_eq(batch->u.array.len, 2);
    long long clock;
    ck_assert_int_eq(pj_int_value(pj_object_get(batch->u.array.items[1], "clock"), &clock), 0);
    ck_assert_int_eq(clock, EVENTS_BATCH_MAX + 2);
    free(ch);
    pj_free(batch);
    /* Nothing buffered: a flush publishes nothing. */
    ck_assert_int_eq(events_flush(f.ev), 0);
    sub_close(&f);
}
END_TEST

START_TEST(test_unreachable_broker_drops_without_blocking)
{
    redis_url url;
    char err[256];
    ck_assert_int_eq(redis_url_parse("redis://127.0.0.1:1/0", &url, err, sizeof err), 0);
    lamport_clock c;
    lamport_init(&c, 0);
    event_publisher *ev = events_publisher_new(&url, "", "c@test", &c);
    ck_assert_int_eq(events_send(ev, "worker-heartbeat", NULL), -1);
    /* Within the reconnect pause no new connection is even tried. */
    ck_assert_int_eq(events_send(ev, "worker-heartbeat", NULL), -1);
    events_publisher_free(ev);
    redis_url_free(&url);
}
END_TEST

static Suite *events_suite(void)
{
    Suite *s = suite_create("events");
    TCase *p = tcase_create("pure");
    tcase_add_test(p, test_lamport_forward_and_adjust);
    tcase_add_test(p, test_routing_key_and_channel);
    tcase_add_test(p, test_utcoffset_is_hours_west);
    tcase_add_test(p, test_build_orders_fields_like_celery);
    tcase_add_test(p, test_golden_worker_online);
    tcase_add_test(p, test_golden_worker_offline);
    tcase_add_test(p, test_golden_worker_heartbeat);
    tcase_add_test(p, test_golden_task_multi);
    tcase_add_test(p, test_golden_task_sent);
    tcase_add_test(p, test_unreachable_broker_drops_without_blocking);
    suite_add_tcase(s, p);
    TCase *r = tcase_create("redis");
    tcase_set_timeout(r, 30);
    tcase_add_test(r, test_worker_events_publish_now_with_clock);
    tcase_add_test(r, test_task_events_batch_on_task_multi);
    suite_add_tcase(s, r);
    return s;
}

int main(void)
{
    (void)ts_peer_run; (void)ts_str; (void)ts_int; (void)ts_fresh;   /* shared fixtures unused here */
    const char *url = getenv("PTEL_TEST_REDIS_URL");
    int have_redis = url && *url;
    if (have_redis) ts_setup_or_skip(TEST_DB);
    else setenv("CK_RUN_CASE", "pure", 1);
    SRunner *sr = srunner_create(events_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    cJSON_Delete(ts_golden_doc);
    return failed ? 1 : have_redis ? 0 : 77;
}
