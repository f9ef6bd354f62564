/* broker/test_message.c: tests for the Celery message codec (message.c).
 *
 * Expected values come from real Python: the golden samples captured from
 * Celery 5.2.6 (PTEL_SHARED_DIR/protocol/captures/golden_samples.json) and
 * fixtures published by Celery/kombu and popped from a private Redis
 * (tests/data/broker_codec/fixtures.json, made by gen_fixtures.py there).
 * Built envelopes are checked byte for byte by check_built.py, which
 * re-creates them with Celery's own send_task. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/message.h"
#include "common/buf.h"
#include "common/mem.h"
#include "common/pyjson.h"
#include "common/timeutil.h"

/* ---- Fixture helpers -------------------------------------------------------- */

static pj_value *load_json(const char *env_var, const char *rel) {
    const char *root = getenv(env_var);
    ck_assert_msg(root != NULL, "%s is not set (run through meson test)", env_var);
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    buf b = BUF_INIT;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) buf_append(&b, chunk, n);
    fclose(f);
    pj_error err;
    pj_value *v = pj_parse(b.data, b.len, &err);
    ck_assert_msg(v != NULL, "%s: %s", path, err.msg);
    buf_free(&b);
    return v;
}

static pj_value *golden(void) { return load_json("PTEL_SHARED_DIR", "protocol/captures/golden_samples.json"); }
static pj_value *fixtures(void) { return load_json("PTEL_SOURCE_ROOT", "tests/data/broker_codec/fixtures.json"); }

static const pj_value *case_of(const pj_value *all, const char *name) {
    const pj_value *c = pj_object_get(all, name);
    ck_assert_msg(c != NULL, "fixture %s missing", name);
    return c;
}

static const char *raw_of(const pj_value *all, const char *name) {
    const char *raw = pj_get_string(case_of(all, name), "raw");
    ck_assert_msg(raw != NULL, "fixture %s has no raw", name);
    return raw;
}

static int decode(const char *raw, task_message *m, message_error *e) {
    return message_decode(raw, strlen(raw), NULL, m, e);
}

static void assert_str_eq_or_null(const char *got, const pj_value *want, const char *what) {
    if (!want || want->type == PJ_NULL) {
        ck_assert_msg(got == NULL, "%s: expected null, got '%s'", what, got);
    } else {
        ck_assert_msg(want->type == PJ_STRING, "%s: fixture not a string", what);
        ck_assert_msg(got && strcmp(got, want->u.string.ptr) == 0, "%s: got '%s' want '%s'", what,
                      got ? got : "(null)", want->u.string.ptr);
    }
}

static void assert_pj_eq(const pj_value *got, const pj_value *want, const char *what) {
    if (pj_equal(got, want)) return;
    buf a = BUF_INIT, b = BUF_INIT;
    pj_dump(&a, got, 0);
    pj_dump(&b, want, 0);
    ck_abort_msg("%s differs:\n got  %s\n want %s", what, buf_cstr(&a), buf_cstr(&b));
}

/* ---- Golden samples (captured from Celery 5.2.6) ------------------------------ */

START_TEST(test_decode_every_golden_task_sample)
{
    pj_value *g = golden();
    int seen = 0;
    for (size_t i = 0; i < g->u.object.len; i++) {
        const pj_member *mb = &g->u.object.members[i];
        if (strncmp(mb->key.ptr, "task_", 5) != 0) continue;
        const char *raw = pj_get_string(mb->value, "raw");
        const pj_value *body = pj_object_get(mb->value, "body_decoded");
        pj_value *env = pj_parse(raw, strlen(raw), NULL);
        const pj_value *h = pj_object_get(env, "headers");
        const pj_value *p = pj_object_get(env, "properties");
        const pj_value *di = pj_object_get(p, "delivery_info");
        int v1 = strncmp(mb->key.ptr, "task_v1", 7) == 0;
        const pj_value *src = v1 ? body : h;   /* where the task fields live */

        task_message m;
        message_error e;
        ck_assert_msg(decode(raw, &m, &e) == 0, "%s: %s", mb->key.ptr, e.msg);
        ck_assert_int_eq(m.protocol, v1 ? 1 : 2);
        assert_str_eq_or_null(m.id, pj_object_get(src, "id"), "id");
        assert_str_eq_or_null(m.task, pj_object_get(src, "task"), "task");
        assert_str_eq_or_null(m.delivery_tag, pj_object_get(p, "delivery_tag"), "delivery_tag");
        assert_str_eq_or_null(m.correlation_id, pj_object_get(p, "correlation_id"), "correlation_id");
        assert_str_eq_or_null(m.reply_to, pj_object_get(p, "reply_to"), "reply_to");
        assert_str_eq_or_null(m.exchange, pj_object_get(di, "exchange"), "exchange");
        assert_str_eq_or_null(m.routing_key, pj_object_get(di, "routing_key"), "routing_key");
        assert_str_eq_or_null(m.content_type, pj_object_get(env, "content-type"), "content-type");
        assert_str_eq_or_null(m.content_encoding, pj_object_get(env, "content-encoding"), "content-encoding");
        assert_str_eq_or_null(m.eta_text, pj_object_get(src, "eta"), "eta");
        assert_str_eq_or_null(m.expires_text, pj_object_get(src, "expires"), "expires");
        assert_str_eq_or_null(m.group, pj_object_get(src, "group"), "group");
        long long prio, retries;
        ck_assert_int_eq(pj_int_value(pj_object_get(p, "priority"), &prio), 0);
        ck_assert_int_eq(m.priority, prio);
        ck_assert_int_eq(pj_int_value(pj_object_get(src, "retries"), &retries), 0);
        ck_assert_int_eq(m.retries, retries);
        ck_assert_int_eq(m.redelivered, 0);
        if (v1) {
            assert_pj_eq(m.args, pj_object_get(body, "args"), "v1 args");
            assert_pj_eq(m.kwargs, pj_object_get(body, "kwargs"), "v1 kwargs");
            ck_assert_str_eq(m.root_id, m.id);
        } else {
            assert_pj_eq(m.args, body->u.array.items[0], "args");
            assert_pj_eq(m.kwargs, body->u.array.items[1], "kwargs");
            assert_pj_eq(m.embed, body->u.array.items[2], "embed");
            assert_str_eq_or_null(m.root_id, pj_object_get(h, "root_id"), "root_id");
            assert_str_eq_or_null(m.parent_id, pj_object_get(h, "parent_id"), "parent_id");
            assert_str_eq_or_null(m.origin, pj_object_get(h, "origin"), "origin");
            assert_str_eq_or_null(m.argsrepr, pj_object_get(h, "argsrepr"), "argsrepr");
            assert_str_eq_or_null(m.kwargsrepr, pj_object_get(h, "kwargsrepr"), "kwargsrepr");
            ck_assert_int_eq(m.ignore_result, pj_object_get(h, "ignore_result")->u.boolean);
        }
        ck_assert_uint_eq(m.raw_len, strlen(raw));
        ck_assert(memcmp(m.raw, raw, m.raw_len) == 0);
        ck_assert(cJSON_IsObject(m.envelope));
        message_free(&m);
        pj_free(env);
        seen++;
    }
    ck_assert_int_eq(seen, 17);
    pj_free(g);
}
END_TEST

START_TEST(test_decode_golden_times_and_limits)
{
    pj_value *g = golden();
    task_message m;
    message_error e;
    ck_assert_int_eq(decode(raw_of(g, "task_v2_countdown3"), &m, &e), 0);
    ck_assert_int_eq(m.eta_us, 1795817423105973LL);   /* 2026-11-27T22:10:23.105973+00:00 */
    ck_assert_int_eq(m.expires_us, 0);
    ck_assert(m.time_limit_hard == 0 && m.time_limit_soft == 0);
    message_free(&m);
    ck_assert_int_eq(decode(raw_of(g, "task_v2_time_limit20_soft10"), &m, &e), 0);
    ck_assert(m.time_limit_hard == 20.0 && m.time_limit_soft == 10.0);   /* [hard, soft] */
    message_free(&m);
    ck_assert_int_eq(decode(raw_of(g, "task_v2_expires60"), &m, &e), 0);
    ck_assert_int_gt(m.expires_us, 1795817000000000LL);
    ck_assert_int_eq(m.eta_us, 0);
    message_free(&m);
    ck_assert_int_eq(decode(raw_of(g, "task_v2_ignore_result"), &m, &e), 0);
    ck_assert_int_eq(m.ignore_result, 1);
    message_free(&m);
    ck_assert_int_eq(decode(raw_of(g, "task_v2_priority7_goes_to_sub_queue_6"), &m, &e), 0);
    ck_assert_int_eq(m.priority, 7);
    message_free(&m);
    ck_assert_int_eq(decode(raw_of(g, "task_v1_countdown_expires"), &m, &e), 0);
    ck_assert_str_eq(m.eta_text, "2026-11-27T22:13:58.346173+00:00");
    ck_assert_int_eq(m.expires_us - m.eta_us, 59000000LL);
    ck_assert_str_eq(m.argsrepr, "()");
    ck_assert_str_eq(m.kwargsrepr, "{'max_iterations': 22}");
    message_free(&m);
    pj_free(g);
}
END_TEST

START_TEST(test_decode_restored_and_requeued_are_redelivered)
{
    pj_value *g = golden();
    const char *names[] = {"restored_message_on_warm_shutdown_RPUSH", "requeued_by_reject_LPUSH"};
    for (int i = 0; i < 2; i++) {
        task_message m;
        message_error e;
        ck_assert_msg(decode(raw_of(g, names[i]), &m, &e) == 0, "%s: %s", names[i], e.msg);
        ck_assert_int_eq(m.redelivered, 1);
        message_free(&m);
    }
    pj_free(g);
}
END_TEST

/* ---- Fixtures published by real Celery/kombu ----------------------------------- */

static void check_rich_fixture(const char *name) {
    pj_value *fx = fixtures();
    const pj_value *c = case_of(fx, name);
    task_message m;
    message_error e;
    ck_assert_msg(decode(raw_of(fx, name), &m, &e) == 0, "%s: %s", name, e.msg);
    long long proto;
    pj_int_value(pj_object_get(c, "protocol"), &proto);
    ck_assert_int_eq(m.protocol, proto);
    ck_assert_str_eq(m.task, "proto.add");
    assert_pj_eq(m.args, pj_object_get(c, "args"), "args");
    assert_pj_eq(m.kwargs, pj_object_get(c, "kwargs"), "kwargs");
    ck_assert_str_eq(m.eta_text, pj_get_string(c, "eta"));
    ck_assert_str_eq(m.expires_text, pj_get_string(c, "expires"));
    int64_t eta, expires;
    ck_assert_int_eq(time_parse_iso8601(m.eta_text, strlen(m.eta_text), &eta), 0);
    ck_assert_int_eq(time_parse_iso8601(m.expires_text, strlen(m.expires_text), &expires), 0);
    ck_assert_int_eq(m.eta_us, eta);
    ck_assert_int_eq(m.expires_us - m.eta_us, 60 * USEC_PER_SEC);
    ck_assert(m.time_limit_hard == 20.0 && m.time_limit_soft == 10.5);
    ck_assert_int_eq(m.retries, 3);
    ck_assert_int_eq(m.priority, 2);
    ck_assert_str_eq(m.id, m.correlation_id);
    if (proto == 1) {
        /* v1 carries no repr; we render what a v2 sender's saferepr(tuple) gives */
        ck_assert_str_eq(m.argsrepr, pj_get_string(c, "argsrepr"));
        ck_assert_str_eq(m.kwargsrepr, pj_get_string(c, "kwargsrepr"));
        ck_assert(m.embed && pj_object_get(m.embed, "callbacks"));
    }
    message_free(&m);
    pj_free(fx);
}

START_TEST(test_decode_v2_json_bigint_nonascii) { check_rich_fixture("v2_json_bigint_nonascii"); }
END_TEST
START_TEST(test_decode_v2_msgpack_body) { check_rich_fixture("v2_msgpack_bigint_nonascii"); }
END_TEST
START_TEST(test_decode_v1_json_body) { check_rich_fixture("v1_json_bigint_nonascii"); }
END_TEST
START_TEST(test_decode_v1_msgpack_body) { check_rich_fixture("v1_msgpack_bigint_nonascii"); }
END_TEST

static void check_simple_fixture(const char *name) {
    pj_value *fx = fixtures();
    const pj_value *c = case_of(fx, name);
    task_message m;
    message_error e;
    ck_assert_msg(decode(raw_of(fx, name), &m, &e) == 0, "%s: %s", name, e.msg);
    assert_pj_eq(m.args, pj_object_get(c, "args"), "args");
    assert_pj_eq(m.kwargs, pj_object_get(c, "kwargs"), "kwargs");
    message_free(&m);
    pj_free(fx);
}

START_TEST(test_decode_zlib_compressed_body) { check_simple_fixture("v2_zlib_compressed"); }
END_TEST
START_TEST(test_decode_bz2_compressed_body) { check_simple_fixture("v2_bz2_compressed"); }
END_TEST
START_TEST(test_decode_msgpack_bin_as_utf8_string) { check_simple_fixture("v2_msgpack_bin_utf8"); }
END_TEST

/* ---- Refusals and errors ---------------------------------------------------------- */

typedef struct error_case {
    const char *fixture;
    message_error_kind kind;
    const char *exc_type;
    const char *msg_part;
    int knows_id;      /* err.task_id must be the fixture's task id */
} error_case;

static const error_case error_cases[] = {
    {"err_pickle", MESSAGE_ERR_CONTENT_DISALLOWED, "ContentDisallowed",
     "Refusing to deserialize untrusted content of type pickle (application/x-python-serialize)", 1},
    {"err_yaml", MESSAGE_ERR_CONTENT_DISALLOWED, "ContentDisallowed",
     "Refusing to deserialize untrusted content of type yaml (application/x-yaml)", 1},
    {"err_unknown_type", MESSAGE_ERR_CONTENT_DISALLOWED, "ContentDisallowed", "type text/plain (text/plain)", 1},
    {"err_bad_base64", MESSAGE_ERR_DECODE_BODY, "DecodeError", "not valid base64", 1},
    {"err_invalid_json_body", MESSAGE_ERR_DECODE_BODY, "DecodeError", "not valid JSON", 1},
    {"err_envelope_not_json", MESSAGE_ERR_MALFORMED_ENVELOPE, "DecodeError", "envelope is not valid JSON", 0},
    {"err_missing_id", MESSAGE_ERR_MISSING_FIELD, "InvalidTaskError", "no headers.id", 1},
    {"err_missing_task_v1", MESSAGE_ERR_MISSING_FIELD, "InvalidTaskError", "no task name", 1},
    {"err_truncated_zlib", MESSAGE_ERR_DECODE_BODY, "DecodeError", "corrupt zlib", 1},
    {"err_truncated_bz2", MESSAGE_ERR_DECODE_BODY, "DecodeError", "corrupt bzip2", 1},
    {"err_unknown_compression", MESSAGE_ERR_DECODE_BODY, "DecodeError", "unsupported compression", 1},
    {"err_msgpack_ext", MESSAGE_ERR_DECODE_BODY, "DecodeError", "extension", 1},
    {"err_msgpack_bin_not_utf8", MESSAGE_ERR_DECODE_BODY, "DecodeError", "bin is not valid UTF-8", 1},
    {"err_msgpack_int_key", MESSAGE_ERR_DECODE_BODY, "DecodeError", "key is not a string", 1},
    {"err_msgpack_extra_data", MESSAGE_ERR_DECODE_BODY, "DecodeError", "extra data", 1},
    {"err_body_not_task_shape", MESSAGE_ERR_MISSING_FIELD, "InvalidTaskError", "v2 body is not", 1},
};

START_TEST(test_decode_refuses_bad_messages)
{
    pj_value *fx = fixtures();
    const error_case *ec = &error_cases[_i];
    const char *raw = raw_of(fx, ec->fixture);
    task_message m;
    message_error e;
    ck_assert_msg(decode(raw, &m, &e) == -1, "%s decoded", ec->fixture);
    ck_assert_msg(e.kind == ec->kind, "%s: kind %d want %d (%s)", ec->fixture, e.kind, ec->kind, e.msg);
    ck_assert_str_eq(e.exc_type, ec->exc_type);
    ck_assert_str_eq(e.exc_module, ec->kind == MESSAGE_ERR_MISSING_FIELD ? "celery.exceptions" : "kombu.exceptions");
    ck_assert_msg(strstr(e.msg, ec->msg_part) != NULL, "%s: msg '%s' lacks '%s'", ec->fixture, e.msg, ec->msg_part);
    ck_assert_ptr_null(m.raw);
    ck_assert_ptr_null(m.envelope);
    if (ec->knows_id) {
        ck_assert_msg(e.task_id != NULL, "%s: no task id", ec->fixture);
        ck_assert_int_eq(strlen(e.task_id), 36);
    }
    message_error_free(&e);
    pj_free(fx);
}
END_TEST

START_TEST(test_decode_pickle_never_touches_body)
{
    /* A body that is not even base64 is refused as ContentDisallowed, not
     * DecodeError: the content-type gate runs before any decoding. */
    const char *raw = "{\"body\": \"!!not base64!!\", \"content-type\": \"application/x-python-serialize\", "
                      "\"content-encoding\": \"binary\", \"headers\": {\"task\": \"t\", \"id\": \"i\"}, "
                      "\"properties\": {\"delivery_tag\": \"d\", \"body_encoding\": \"base64\"}}";
    task_message m;
    message_error e;
    ck_assert_int_eq(decode(raw, &m, &e), -1);
    ck_assert_int_eq(e.kind, MESSAGE_ERR_CONTENT_DISALLOWED);
    ck_assert_str_eq(e.task_id, "i");
    ck_assert_str_eq(e.task_name, "t");
    message_error_free(&e);
}
END_TEST

START_TEST(test_decode_envelope_shape_errors)
{
    const char *cases[][2] = {
        {"[1, 2]", "not a JSON object"},
        {"{\"body\": \"\", \"headers\": 5, \"properties\": {}}", "headers is not an object"},
        {"{\"body\": \"\", \"headers\": {}}", "no properties object"},
        {"{\"body\": \"\", \"headers\": {}, \"properties\": {}}", "no properties.delivery_tag"},
        {"{\"headers\": {}, \"content-type\": \"application/json\", \"properties\": {\"delivery_tag\": \"d\"}}",
         "no string \"body\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        task_message m;
        message_error e;
        ck_assert_int_eq(decode(cases[i][0], &m, &e), -1);
        ck_assert_int_eq(e.kind, MESSAGE_ERR_MALFORMED_ENVELOPE);
        ck_assert_msg(strstr(e.msg, cases[i][1]), "case %zu: '%s'", i, e.msg);
        message_error_free(&e);
    }
    task_message m;
    message_error e;
    ck_assert_int_eq(decode("{\"body\": \"\", \"headers\": {}, \"properties\": {\"delivery_tag\": \"d\"}}", &m, &e), -1);
    ck_assert_int_eq(e.kind, MESSAGE_ERR_CONTENT_DISALLOWED);
    message_error_free(&e);
}
END_TEST

START_TEST(test_decode_bad_eta_and_timelimit_are_invalid_task)
{
    pj_value *g = golden();
    const char *raw = raw_of(g, "task_v2_plain_args");
    const char *subs[][3] = {
        {"\"eta\": null", "\"eta\": \"tomorrow\"", "invalid eta"},
        {"\"timelimit\": [null, null]", "\"timelimit\": [\"x\", null]", "timelimit"},
        {"\"retries\": 0", "\"retries\": -1", "retries"},
    };
    for (size_t i = 0; i < 3; i++) {
        buf b = BUF_INIT;
        const char *at = strstr(raw, subs[i][0]);
        ck_assert_ptr_nonnull(at);
        buf_append(&b, raw, (size_t)(at - raw));
        buf_puts(&b, subs[i][1]);
        buf_puts(&b, at + strlen(subs[i][0]));
        task_message m;
        message_error e;
        ck_assert_int_eq(message_decode(b.data, b.len, NULL, &m, &e), -1);
        ck_assert_int_eq(e.kind, MESSAGE_ERR_MISSING_FIELD);
        ck_assert_msg(strstr(e.msg, subs[i][2]), "'%s'", e.msg);
        ck_assert_str_eq(e.task_name, "proto.add");
        message_error_free(&e);
        buf_free(&b);
    }
    pj_free(g);
}
END_TEST

START_TEST(test_decode_refuses_message_over_size_limit)
{
    pj_value *g = golden();
    const char *raw = raw_of(g, "task_v2_plain_args");
    message_limits lim = {strlen(raw) - 1, 0};
    task_message m;
    message_error e;
    ck_assert_int_eq(message_decode(raw, strlen(raw), &lim, &m, &e), -1);
    ck_assert_int_eq(e.kind, MESSAGE_ERR_TOO_LARGE);
    ck_assert_ptr_nonnull(strstr(e.msg, "exceeds"));
    message_error_free(&e);
    lim.max_bytes = strlen(raw);   /* exactly at the limit is fine */
    ck_assert_int_eq(message_decode(raw, strlen(raw), &lim, &m, &e), 0);
    message_free(&m);
    pj_free(g);
}
END_TEST

START_TEST(test_decode_stops_decompression_bomb)
{
    pj_value *fx = fixtures();
    const char *raw = raw_of(fx, "err_decompression_bomb");
    message_limits lim = {0, 1024 * 1024};
    task_message m;
    message_error e;
    ck_assert_int_eq(message_decode(raw, strlen(raw), &lim, &m, &e), -1);
    ck_assert_int_eq(e.kind, MESSAGE_ERR_TOO_LARGE);
    ck_assert_msg(strstr(e.msg, "inflates beyond the 1048576-byte limit"), "'%s'", e.msg);
    ck_assert_ptr_nonnull(e.task_id);
    message_error_free(&e);
    pj_free(fx);
}
END_TEST

/* ---- Building: retry republish --------------------------------------------------- */

START_TEST(test_build_retry_matches_golden_republish)
{
    pj_value *fx = fixtures(), *g = golden();
    task_message orig;
    message_error e;
    ck_assert_int_eq(decode(raw_of(fx, "retry_original"), &orig, &e), 0);
    buf out = BUF_INIT;
    ck_assert_int_eq(message_build_retry(&orig, 1795817434798944LL, "gen7314@vm", &out), 0);

    pj_value *mine = pj_parse(out.data, out.len, NULL);
    const char *want_raw = raw_of(g, "task_v2_retry_republished_retries1");
    pj_value *want = pj_parse(want_raw, strlen(want_raw), NULL);
    ck_assert_ptr_nonnull(mine);
    /* the delivery tag is a fresh uuid4: different from the original's */
    const char *tag = pj_get_string(pj_object_get(mine, "properties"), "delivery_tag");
    ck_assert_int_eq(strlen(tag), 36);
    ck_assert_str_ne(tag, orig.delivery_tag);
    ck_assert_int_eq(tag[14], '4');
    pj_object_set(pj_object_get(want, "properties"), "delivery_tag", pj_new_string(tag));
    buf want_text = BUF_INIT;
    pj_dump(&want_text, want, 0);
    ck_assert_str_eq(out.data, want_text.data);   /* byte for byte, key order included */

    buf_free(&want_text);
    buf_free(&out);
    pj_free(mine);
    pj_free(want);
    message_free(&orig);
    pj_free(fx);
    pj_free(g);
}
END_TEST

START_TEST(test_build_retry_keeps_custom_headers_drops_redelivered)
{
    pj_value *g = golden();
    const char *names[] = {"task_v2_custom_header", "restored_message_on_warm_shutdown_RPUSH",
                           "task_v2_msgpack", "task_v1_countdown_expires", "task_v2_zlib_compressed"};
    for (int i = 0; i < 5; i++) {
        task_message orig, again;
        message_error e;
        ck_assert_int_eq(decode(raw_of(g, names[i]), &orig, &e), 0);
        buf out = BUF_INIT;
        ck_assert_int_eq(message_build_retry(&orig, 0, "gen1@host", &out), 0);
        ck_assert_msg(message_decode(out.data, out.len, NULL, &again, &e) == 0, "%s: %s", names[i], e.msg);
        ck_assert_int_eq(again.protocol, 2);
        ck_assert_str_eq(again.id, orig.id);
        ck_assert_str_eq(again.task, orig.task);
        ck_assert_str_eq(again.parent_id, orig.id);
        ck_assert_str_eq(again.origin, "gen1@host");
        ck_assert_int_eq(again.retries, orig.retries + 1);
        ck_assert_int_eq(again.redelivered, 0);
        ck_assert_ptr_null(again.eta_text);
        ck_assert_str_eq(again.content_type, "application/json");
        assert_pj_eq(again.args, orig.args, "args");
        assert_pj_eq(again.kwargs, orig.kwargs, "kwargs");
        ck_assert_str_eq(again.routing_key, orig.routing_key);
        ck_assert_str_eq(again.argsrepr, orig.argsrepr);
        if (orig.expires_text) ck_assert_str_eq(again.expires_text, orig.expires_text);
        pj_value *env = pj_parse(out.data, out.len, NULL);
        const pj_value *h = pj_object_get(env, "headers");
        const pj_value *p = pj_object_get(env, "properties");
        ck_assert_ptr_null(pj_object_get(h, "redelivered"));
        ck_assert_ptr_null(pj_object_get(h, "compression"));
        ck_assert_ptr_null(pj_object_get(pj_object_get(p, "delivery_info"), "redelivered"));
        ck_assert_ptr_nonnull(pj_object_get(p, "replaced_task_nesting"));
        if (i == 0) ck_assert_str_eq(pj_get_string(h, "x_custom"), "v1");
        if (orig.expires_text) ck_assert_str_eq(pj_get_string(p, "expiration"), "0"); /* long past */
        pj_free(env);
        message_free(&again);
        message_free(&orig);
        buf_free(&out);
    }
    pj_free(g);
}
END_TEST

START_TEST(test_build_retry_refuses_incomplete_message)
{
    task_message empty;
    memset(&empty, 0, sizeof(empty));
    buf out = BUF_INIT;
    ck_assert_int_eq(message_build_retry(&empty, 0, "x", &out), -1);
    ck_assert_uint_eq(out.len, 0);
}
END_TEST

/* ---- Building: fresh tasks ------------------------------------------------------- */

#define NOW_US 1795817433792752LL

static pj_value *parse_lit(const char *s) { return pj_parse(s, strlen(s), NULL); }

/* Builds three specs, checks they decode with our own decoder, and writes
 * them with their spec for check_built.py. */
START_TEST(test_build_task_is_byte_identical_to_celery_send_task)
{
    pj_value *args1 = parse_lit("[2, 3]");
    pj_value *args2 = parse_lit("[1180591620717411303424, \"h\\u00e9llo \\u2603\", 1.5, null, [true]]");
    pj_value *kw2 = parse_lit("{\"k\\u00fc\": -12345678901234567890, \"f\": 0.1}");
    message_new_task specs[3];
    memset(specs, 0, sizeof(specs));
    specs[0] = (message_new_task){.task = "proto.add", .queue = "ingest", .args = args1,
                                  .id = "11111111-2222-4333-8444-555555555555", .reply_to = "r-1",
                                  .now_us = NOW_US};
    specs[1] = (message_new_task){.task = "proto.big", .queue = "alpha", .args = args2, .kwargs = kw2,
                                  .id = "21111111-2222-4333-8444-555555555555", .reply_to = "r-2",
                                  .now_us = NOW_US, .eta_us = NOW_US + 5000001, .expires_us = NOW_US + 90000000,
                                  .time_limit_hard = 20, .time_limit_soft = 10.5, .priority = 7,
                                  .parent_id = "p-1", .root_id = "root-1", .group = "g-1", .ignore_result = 1,
                                  .retries = 2};
    specs[2] = (message_new_task){.task = "proto.later", .queue = "ingest",
                                  .id = "31111111-2222-4333-8444-555555555555",
                                  .now_us = NOW_US, .countdown = 3, .expires_in = 60};
    const char *spec_json[3] = {
        "{\"task\": \"proto.add\", \"queue\": \"ingest\", \"args\": [2, 3], \"id\": "
        "\"11111111-2222-4333-8444-555555555555\", \"reply_to\": \"r-1\", \"now_us\": 1795817433792752}",
        "{\"task\": \"proto.big\", \"queue\": \"alpha\", \"args\": [1180591620717411303424, \"h\\u00e9llo \\u2603\", "
        "1.5, null, [true]], \"kwargs\": {\"k\\u00fc\": -12345678901234567890, \"f\": 0.1}, \"id\": "
        "\"21111111-2222-4333-8444-555555555555\", \"reply_to\": \"r-2\", \"now_us\": 1795817433792752, "
        "\"eta_us\": 1795817438792753, \"expires_us\": 1795817523792752, \"time_limit\": 20, "
        "\"soft_time_limit\": 10.5, \"priority\": 7, \"parent_id\": \"p-1\", \"root_id\": \"root-1\", "
        "\"group\": \"g-1\", \"ignore_result\": true, \"retries\": 2}",
        "{\"task\": \"proto.later\", \"queue\": \"ingest\", \"id\": \"31111111-2222-4333-8444-555555555555\", "
        "\"now_us\": 1795817433792752, \"countdown\": 3, \"expires_in\": 60}",
    };
    pj_value *list = pj_new_array();
    for (int i = 0; i < 3; i++) {
        buf out = BUF_INIT;
        ck_assert_int_eq(message_build_task(&specs[i], &out), 0);
        task_message m;
        message_error e;
        ck_assert_msg(message_decode(out.data, out.len, NULL, &m, &e) == 0, "%s", e.msg);
        ck_assert_str_eq(m.task, specs[i].task);
        ck_assert_str_eq(m.id, specs[i].id);
        ck_assert_str_eq(m.routing_key, specs[i].queue);
        message_free(&m);
        pj_value *entry = pj_new_object();
        pj_object_set(entry, "spec", parse_lit(spec_json[i]));
        pj_object_set(entry, "envelope", pj_new_stringn(out.data, out.len));
        pj_array_append(list, entry);
        buf_free(&out);
    }
    char path[] = "/tmp/ptel-built-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    buf text = BUF_INIT;
    pj_dump(&text, list, 0);
    ck_assert_int_eq(write(fd, text.data, text.len), (ssize_t)text.len);
    close(fd);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/tests/data/broker_codec/check_built.py %s",
             getenv("PTEL_SOURCE_ROOT"), path);
    int rc = system(cmd);
    unlink(path);
    ck_assert_msg(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0,
                  "check_built.py found differences with Celery (status %d)", rc);
    buf_free(&text);
    pj_free(list);
    pj_free(args1);
    pj_free(args2);
    pj_free(kw2);
}
END_TEST

START_TEST(test_build_task_defaults_ids_and_origin)
{
    message_new_task spec;
    memset(&spec, 0, sizeof(spec));
    spec.task = "proto.add";
    spec.queue = "ingest";
    buf out = BUF_INIT;
    ck_assert_int_eq(message_build_task(&spec, &out), 0);
    task_message m;
    message_error e;
    ck_assert_int_eq(message_decode(out.data, out.len, NULL, &m, &e), 0);
    ck_assert_int_eq(strlen(m.id), 36);
    ck_assert_str_eq(m.root_id, m.id);
    ck_assert_str_eq(m.correlation_id, m.id);
    ck_assert_str_ne(m.delivery_tag, m.id);
    ck_assert_str_eq(m.reply_to, "");
    ck_assert(strncmp(m.origin, "gen", 3) == 0 && strchr(m.origin, '@'));
    ck_assert_str_eq(m.argsrepr, "()");
    ck_assert_str_eq(m.kwargsrepr, "{}");
    ck_assert_int_eq(m.args->u.array.len, 0);
    message_free(&m);
    buf_free(&out);
}
END_TEST

START_TEST(test_build_task_rejects_bad_spec)
{
    pj_value *obj = pj_new_object(), *arr = pj_new_array();
    message_new_task spec;
    buf out = BUF_INIT;
    memset(&spec, 0, sizeof(spec));
    spec.queue = "ingest";
    ck_assert_int_eq(message_build_task(&spec, &out), -1);          /* no task */
    spec.task = "t";
    spec.queue = NULL;
    ck_assert_int_eq(message_build_task(&spec, &out), -1);          /* no queue */
    spec.queue = "q";
    spec.args = obj;
    ck_assert_int_eq(message_build_task(&spec, &out), -1);          /* args not a list */
    spec.args = NULL;
    spec.kwargs = arr;
    ck_assert_int_eq(message_build_task(&spec, &out), -1);          /* kwargs not a dict */
    ck_assert_int_eq(message_build_task(NULL, &out), -1);
    ck_assert_uint_eq(out.len, 0);
    pj_free(obj);
    pj_free(arr);
}
END_TEST

static Suite *message_suite(void) {
    Suite *s = suite_create("message");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_decode_every_golden_task_sample);
    tcase_add_test(tc, test_decode_golden_times_and_limits);
    tcase_add_test(tc, test_decode_restored_and_requeued_are_redelivered);
    tcase_add_test(tc, test_decode_v2_json_bigint_nonascii);
    tcase_add_test(tc, test_decode_v2_msgpack_body);
    tcase_add_test(tc, test_decode_v1_json_body);
    tcase_add_test(tc, test_decode_v1_msgpack_body);
    tcase_add_test(tc, test_decode_zlib_compressed_body);
    tcase_add_test(tc, test_decode_bz2_compressed_body);
    tcase_add_test(tc, test_decode_msgpack_bin_as_utf8_string);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_decode_refuses_bad_messages, 0,
                        (int)(sizeof(error_cases) / sizeof(error_cases[0])));
    tcase_add_test(tc, test_decode_pickle_never_touches_body);
    tcase_add_test(tc, test_decode_envelope_shape_errors);
    tcase_add_test(tc, test_decode_bad_eta_and_timelimit_are_invalid_task);
    tcase_add_test(tc, test_decode_refuses_message_over_size_limit);
    tcase_add_test(tc, test_decode_stops_decompression_bomb);
    suite_add_tcase(s, tc);
    tc = tcase_create("build");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_build_retry_matches_golden_republish);
    tcase_add_test(tc, test_build_retry_keeps_custom_headers_drops_redelivered);
    tcase_add_test(tc, test_build_retry_refuses_incomplete_message);
    tcase_add_test(tc, test_build_task_is_byte_identical_to_celery_send_task);
    tcase_add_test(tc, test_build_task_defaults_ids_and_origin);
    tcase_add_test(tc, test_build_task_rejects_bad_spec);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(message_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
