/* tasks/test_telemetry.c: tests for tasks/telemetry.c (the data contract).
 *
 * Two halves. The fixture tests/data/telemetry/cases.jsonl is written by
 * gen_cases.py, a Python model of CONTRACT §1-§3 built on json.loads/dumps,
 * so every payload_json, timestamp and verdict there is Python's, not ours;
 * test_fixture_cases_match_python_model replays each case and compares every
 * column and every rejection exactly. The hand-written tests below pin what a
 * fixture cannot express: exact reason texts, byte-level inputs (invalid
 * UTF-8, NULs, field name lengths), the 500-event limit, ownership. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/mem.h"
#include "common/pyjson.h"
#include "tasks/telemetry.h"

/* ---- Helpers ---- */

static telemetry_field fld(const char *name, const char *value)
{
    telemetry_field f = {name, strlen(name), value, strlen(value)};
    return f;
}

#define EVENT_OK                                                                   \
    "{\"name\":\"page_viewed\",\"schemaVersion\":\"v1\",\"eventId\":\"e1\","       \
    "\"ts\":\"2026-05-25T12:00:00.123456Z\",\"sessionId\":\"s1\","                 \
    "\"anonymousUserId\":\"a1\",\"routePattern\":\"/m\",\"payload\":{\"b\":1,\"a\":0.1}}"

/* One entry with source and org set and the given events text. */
static void parse_events(const char *events, telemetry_entry *out)
{
    telemetry_field f[] = {fld("ingestion_id", "id-1"), fld("source", TELEMETRY_SOURCE),
                           fld("org_id_hash", "org1"), fld("events", events)};
    telemetry_parse_entry(f, 4, out);
}

static const telemetry_rejection *only_rejection(const telemetry_entry *e)
{
    ck_assert_uint_eq(e->n_rows, 0);
    ck_assert_uint_eq(e->n_rejections, 1);
    return &e->rejections[0];
}

/* The reason parse_events gives for a one-event entry `events`. */
static void assert_reason(const char *events, const char *reason)
{
    telemetry_entry e;
    parse_events(events, &e);
    ck_assert_str_eq(only_rejection(&e)->reason, reason);
    telemetry_entry_free(&e);
}

/* ---- Fixture replay ---- */

static char *read_fixture(size_t *len)
{
    const char *root = getenv("PTEL_SOURCE_ROOT");
    ck_assert_msg(root != NULL, "PTEL_SOURCE_ROOT not set (run through meson test)");
    buf path = BUF_INIT, text = BUF_INIT;
    buf_printf(&path, "%s/tests/data/telemetry/cases.jsonl", root);
    FILE *fp = fopen(path.data, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path.data);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0) buf_append(&text, chunk, n);
    fclose(fp);
    buf_free(&path);
    *len = text.len;
    return buf_detach(&text);
}

/* Compare a C string (or NULL) with a fixture value (string or null). */
static int same_str(const char *got, const pj_value *want)
{
    if (want->type == PJ_NULL) return got == NULL;
    return got && want->type == PJ_STRING && strlen(got) == want->u.string.len &&
           memcmp(got, want->u.string.ptr, want->u.string.len) == 0;
}

static int check_row(const char *name, size_t i, const event_row *r, const pj_value *w)
{
    static const char *const cols[] = {"org_id_hash", "event_id", "name", "schema_version",
                                       "session_id", "anonymous_user_id", "route_pattern",
                                       "payload_json", "source"};
    const char *got[] = {r->org_id_hash, r->event_id, r->name, r->schema_version,
                         r->session_id, r->anonymous_user_id, r->route_pattern,
                         r->payload_json, r->source};
    /* The lengths the row carries for the encoder (event_row.h). */
    const uint32_t lens[] = {r->len.org_id_hash, r->len.event_id, r->len.name,
                             r->len.schema_version, r->len.session_id, r->len.anonymous_user_id,
                             r->len.route_pattern, r->len.payload_json, r->len.source};
    int bad = 0;
    if (!r->has_len) {
        fprintf(stderr, "%s: row %zu carries no lengths\n", name, i);
        bad = 1;
    }
    for (size_t c = 0; c < sizeof cols / sizeof *cols; c++) {
        size_t want_len = got[c] ? strlen(got[c]) : 0;
        if (lens[c] != want_len) {
            fprintf(stderr, "%s: row %zu %s: length %u, strlen %zu\n", name, i, cols[c],
                    (unsigned)lens[c], want_len);
            bad = 1;
        }
    }
    for (size_t c = 0; c < sizeof cols / sizeof *cols; c++) {
        const pj_value *want = pj_object_get(w, cols[c]);
        if (!want || !same_str(got[c], want)) {
            buf wj = BUF_INIT;
            if (want) pj_dump(&wj, want, 0);
            fprintf(stderr, "%s: row %zu %s: got %s, want %s\n", name, i, cols[c],
                    got[c] ? got[c] : "NULL", buf_cstr(&wj));
            buf_free(&wj);
            bad = 1;
        }
    }
    long long us;
    if (pj_int_value(pj_object_get(w, "occurred_at_us"), &us) != 0 || us != r->occurred_at_us) {
        fprintf(stderr, "%s: row %zu occurred_at_us: got %lld\n", name, i,
                (long long)r->occurred_at_us);
        bad = 1;
    }
    return bad;
}

static int check_rejection(const char *name, size_t i, const telemetry_rejection *r,
                           const pj_value *w)
{
    long long index;
    const char *cls = pj_get_string(w, "class"), *code = pj_get_string(w, "code");
    int bad = 0;
    buf prefix = BUF_INIT;

    pj_int_value(pj_object_get(w, "index"), &index);
    if (r->event_index != index || strcmp(r->error_class, cls) != 0 ||
        strcmp(r->code, code) != 0) {
        fprintf(stderr, "%s: rejection %zu: got (%d, %s, %s), want (%lld, %s, %s): %s\n",
                name, i, r->event_index, r->error_class, r->code, index, cls, code, r->reason);
        bad = 1;
    }
    if (index < 0) buf_printf(&prefix, "%s: ", code);
    else buf_printf(&prefix, "%s: event %lld: ", code, index);
    if (strncmp(r->reason, prefix.data, prefix.len) != 0) {
        fprintf(stderr, "%s: rejection %zu reason '%s' lacks prefix '%s'\n", name, i,
                r->reason, prefix.data);
        bad = 1;
    }
    if (!same_str(r->event_json, pj_object_get(w, "event_json"))) {
        fprintf(stderr, "%s: rejection %zu event_json: got %s\n", name, i,
                r->event_json ? r->event_json : "NULL");
        bad = 1;
    }
    buf_free(&prefix);
    return bad;
}

static int run_case(const pj_value *c)
{
    const char *name = pj_get_string(c, "name");
    const pj_value *fields = pj_object_get(c, "fields");
    const pj_value *rows = pj_object_get(c, "expected_rows");
    const pj_value *rejs = pj_object_get(c, "expected_rejections");
    size_t n = fields->u.array.len;
    telemetry_field *f = xcalloc(n ? n : 1, sizeof *f);
    telemetry_entry e;
    int bad = 0;

    for (size_t i = 0; i < n; i++) {
        const pj_value *pair = fields->u.array.items[i];
        const pj_str *k = &pair->u.array.items[0]->u.string, *v = &pair->u.array.items[1]->u.string;
        f[i] = (telemetry_field){k->ptr, k->len, v->ptr, v->len};
    }
    telemetry_parse_entry(f, n, &e);
    if (e.n_rows != rows->u.array.len || e.n_rejections != rejs->u.array.len) {
        fprintf(stderr, "%s: got %zu rows / %zu rejections, want %zu / %zu\n", name, e.n_rows,
                e.n_rejections, rows->u.array.len, rejs->u.array.len);
        for (size_t i = 0; i < e.n_rejections; i++)
            fprintf(stderr, "  %s\n", e.rejections[i].reason);
        bad = 1;
    } else {
        for (size_t i = 0; i < e.n_rows; i++)
            bad |= check_row(name, i, &e.rows[i], rows->u.array.items[i]);
        for (size_t i = 0; i < e.n_rejections; i++)
            bad |= check_rejection(name, i, &e.rejections[i], rejs->u.array.items[i]);
    }
    telemetry_entry_free(&e);
    free(f);
    return bad;
}

START_TEST(test_fixture_cases_match_python_model)
{
    size_t len, cases = 0, failed = 0;
    char *text = read_fixture(&len);
    for (char *line = text, *nl; line < text + len; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(text + len - line));
        if (!nl) nl = text + len;
        if (nl == line) continue;
        pj_error err;
        pj_value *c = pj_parse(line, (size_t)(nl - line), &err);
        ck_assert_msg(c != NULL, "fixture line %zu: %s", cases + 1, err.msg);
        failed += (size_t)run_case(c);
        cases++;
        pj_free(c);
    }
    free(text);
    ck_assert_uint_ge(cases, 200);   /* an empty or truncated fixture must not pass */
    ck_assert_msg(failed == 0, "%zu of %zu fixture cases differ (details on stderr)",
                  failed, cases);
}
END_TEST

/* ---- Rows ---- */

START_TEST(test_valid_event_maps_every_column)
{
    telemetry_entry e;
    parse_events("[" EVENT_OK "]", &e);
    ck_assert_uint_eq(e.n_rows, 1);
    ck_assert_uint_eq(e.n_rejections, 0);
    const event_row *r = &e.rows[0];
    ck_assert_str_eq(r->org_id_hash, "org1");
    ck_assert_str_eq(r->event_id, "e1");
    ck_assert_str_eq(r->name, "page_viewed");
    ck_assert_str_eq(r->schema_version, "v1");
    ck_assert_str_eq(r->session_id, "s1");
    ck_assert_str_eq(r->anonymous_user_id, "a1");
    ck_assert_str_eq(r->route_pattern, "/m");
    ck_assert_str_eq(r->payload_json, "{\"a\":0.1,\"b\":1}");
    ck_assert_int_eq(r->occurred_at_us, 1779710400123456LL);
    ck_assert_str_eq(r->source, "dev-health-web");
    ck_assert_str_eq(e.ingestion_id, "id-1");
    ck_assert_str_eq(e.source, "dev-health-web");
    ck_assert_str_eq(e.org_id_hash, "org1");
    ck_assert_ptr_null(e.events_raw);
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_entry_of_500_events_is_accepted)
{
    buf ev = BUF_INIT;
    buf_putc(&ev, '[');
    for (int i = 0; i < TELEMETRY_MAX_EVENTS; i++)
        buf_printf(&ev, "%s{\"name\":\"session_started\",\"schemaVersion\":\"v\","
                        "\"eventId\":\"e%d\",\"ts\":%d,\"sessionId\":\"s\","
                        "\"anonymousUserId\":\"a\"}", i ? "," : "", i, 1779710400 + i);
    buf_putc(&ev, ']');
    telemetry_entry e;
    parse_events(ev.data, &e);
    ck_assert_uint_eq(e.n_rows, TELEMETRY_MAX_EVENTS);
    ck_assert_uint_eq(e.n_rejections, 0);
    ck_assert_str_eq(e.rows[499].event_id, "e499");
    ck_assert_int_eq(e.rows[499].occurred_at_us, (1779710400LL + 499) * 1000000LL);
    ck_assert_str_eq(e.rows[499].payload_json, "{}");
    ck_assert_ptr_null(e.rows[499].route_pattern);
    telemetry_entry_free(&e);
    buf_free(&ev);
}
END_TEST

/* ---- Reasons ---- */

START_TEST(test_event_reasons_are_code_index_details)
{
    assert_reason("[{\"name\":\"foo\"}]",
                  "invalid_name: event 0: \"foo\" is not an allowed event name");
    assert_reason("[{\"name\":\"page_viewed\",\"schemaVersion\":\"v\"}]",
                  "missing_field: event 0: 'eventId' is missing");
    assert_reason("[{\"name\":\"page_viewed\",\"schemaVersion\":\"v\",\"event_id\":\"\"}]",
                  "missing_field: event 0: 'event_id' must be a non-empty string, "
                  "got an empty string");
    assert_reason("[{\"name\":\"page_viewed\",\"schema_version\":7}]",
                  "missing_field: event 0: 'schema_version' must be a non-empty string, "
                  "got integer");
    assert_reason("[{\"payload\":{\"a\":1,\"email\":\"x\",\"url\":\"u\"}}]",
                  "blocked_key: event 0: payload key 'email' is not allowed (privacy)");
    assert_reason("[2]",
                  "event_not_object: event 0: expected an object, got integer");
}
END_TEST

START_TEST(test_reasons_name_the_offending_rule_detail)
{
    telemetry_entry e;
    parse_events("[" EVENT_OK ",{\"name\":\"page_viewed\",\"schemaVersion\":\"v\","
                 "\"eventId\":\"e\",\"sessionId\":\"s\",\"anonymousUserId\":\"a\","
                 "\"ts\":true}," EVENT_OK ",{\"name\":\"page_viewed\",\"schemaVersion\":\"v\","
                 "\"eventId\":\"e\",\"sessionId\":\"s\",\"anonymousUserId\":\"a\","
                 "\"ts\":0,\"orgIdHash\":\"org2\"},"
                 "{\"name\":\"page_viewed\",\"schemaVersion\":\"v\",\"eventId\":\"e\","
                 "\"sessionId\":\"s\",\"anonymousUserId\":\"a\",\"ts\":0,"
                 "\"payload\":{\"ok\":1,\"deep\":[1]}}]", &e);
    ck_assert_uint_eq(e.n_rows, 2);
    ck_assert_uint_eq(e.n_rejections, 3);
    ck_assert_str_eq(e.rejections[0].reason,
                     "invalid_ts: event 1: true is neither an ISO-8601 date-time nor "
                     "epoch seconds/milliseconds in range");
    ck_assert_str_eq(e.rejections[1].reason,
                     "org_mismatch: event 3: orgIdHash \"org2\" differs from the entry's "
                     "org_id_hash");
    ck_assert_str_eq(e.rejections[2].reason,
                     "nested_payload: event 4: payload key \"deep\" holds an array; "
                     "values must be flat");
    ck_assert_str_eq(e.rejections[2].event_json,
                     "{\"name\":\"page_viewed\",\"schemaVersion\":\"v\",\"eventId\":\"e\","
                     "\"sessionId\":\"s\",\"anonymousUserId\":\"a\",\"ts\":0,"
                     "\"payload\":{\"ok\":1,\"deep\":[1]}}");
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_entry_reasons_are_code_details)
{
    assert_reason("{}", "events_not_array: 'events' is a JSON object, not an array");
    assert_reason("[]", "empty_events: 'events' is an empty array");
    telemetry_entry e;
    parse_events("[1", &e);
    const telemetry_rejection *r = only_rejection(&e);
    ck_assert_str_eq(r->code, "invalid_json");
    ck_assert_msg(strncmp(r->reason, "invalid_json: 'events' is not valid JSON: ", 42) == 0 &&
                  strlen(r->reason) > 42, "%s", r->reason);
    ck_assert_int_eq(r->event_index, -1);
    ck_assert_str_eq(r->error_class, "validation");
    ck_assert_ptr_null(r->event_json);
    telemetry_entry_free(&e);

    buf ev = BUF_INIT;
    buf_putc(&ev, '[');
    for (int i = 0; i <= TELEMETRY_MAX_EVENTS; i++) buf_puts(&ev, i ? ",{}" : "{}");
    buf_putc(&ev, ']');
    assert_reason(ev.data, "too_many_events: 'events' has 501 items, more than 500");
    buf_free(&ev);
}
END_TEST

START_TEST(test_long_value_is_cut_in_reason)
{
    buf ev = BUF_INIT;
    buf_puts(&ev, "[{\"name\":\"");
    for (int i = 0; i < 1000; i++) buf_putc(&ev, 'x');
    buf_puts(&ev, "\"}]");
    telemetry_entry e;
    parse_events(ev.data, &e);
    const char *reason = only_rejection(&e)->reason;
    /* "invalid_name: event 0: " + 64 bytes of "\"xxx..." + "..." + tail */
    ck_assert_uint_eq(strlen(reason), strlen("invalid_name: event 0: ") +
                      TELEMETRY_REASON_VALUE_MAX + 3 + strlen(" is not an allowed event name"));
    ck_assert_ptr_nonnull(strstr(reason, "xxx... is not an allowed event name"));
    ck_assert_uint_eq(strlen(e.rejections[0].event_json), 1000 + strlen("{\"name\":\"\"}"));
    telemetry_entry_free(&e);
    buf_free(&ev);
}
END_TEST

/* ---- Byte-level entry handling ---- */

START_TEST(test_invalid_utf8_events_is_invalid_json)
{
    telemetry_entry e;
    parse_events("[{\"name\":\"\xff\"}]", &e);
    ck_assert_str_eq(only_rejection(&e)->code, "invalid_json");
    ck_assert_str_eq(e.events_raw, "[{\"name\":\"\xff\"}]");
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_source_with_embedded_nul_is_rejected)
{
    telemetry_field f[] = {fld("source", TELEMETRY_SOURCE), fld("events", "[" EVENT_OK "]")};
    f[0].value_len++;   /* "dev-health-web\0": equal as a C string, not as bytes */
    telemetry_entry e;
    telemetry_parse_entry(f, 2, &e);
    ck_assert_str_eq(only_rejection(&e)->code, "invalid_source");
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_field_names_compare_by_length)
{
    /* "eventsX" cut to 6 bytes is "events"; "source" cut to 5 is unknown. */
    telemetry_field f[] = {{"eventsX", 6, "[" EVENT_OK "]", strlen("[" EVENT_OK "]")},
                           {"source", 5, "bad", 3}};
    telemetry_entry e;
    telemetry_parse_entry(f, 2, &e);
    ck_assert_uint_eq(e.n_rows, 1);
    ck_assert_ptr_null(e.source);
    ck_assert_str_eq(e.rows[0].source, TELEMETRY_SOURCE);
    ck_assert_str_eq(e.rows[0].org_id_hash, "");
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_no_fields_is_missing_events)
{
    telemetry_entry e;
    telemetry_parse_entry(NULL, 0, &e);
    const telemetry_rejection *r = only_rejection(&e);
    ck_assert_str_eq(r->reason, "missing_events: the entry has no 'events' field");
    ck_assert_ptr_null(e.events_raw);
    ck_assert_ptr_null(e.ingestion_id);
    ck_assert_ptr_null(e.source);
    ck_assert_ptr_null(e.org_id_hash);
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_events_raw_kept_only_for_whole_entry_rejection)
{
    telemetry_entry e;
    parse_events(" [] ", &e);
    ck_assert_str_eq(e.events_raw, " [] ");
    telemetry_entry_free(&e);
    parse_events("[5]", &e);   /* one event rejected, not the entry */
    ck_assert_ptr_null(e.events_raw);
    ck_assert_str_eq(e.rejections[0].event_json, "5");
    telemetry_entry_free(&e);
}
END_TEST

/* ---- Classes and ownership ---- */

START_TEST(test_only_blocked_key_is_privacy)
{
    telemetry_entry e;
    parse_events("[{\"payload\":{\"message\":1}},{\"payload\":{\"Message\":1}},"
                 "{\"payload\":{\"a\":{\"message\":1}}}]", &e);
    ck_assert_uint_eq(e.n_rejections, 3);
    ck_assert_str_eq(e.rejections[0].error_class, "privacy");
    ck_assert_str_eq(e.rejections[0].code, "blocked_key");
    ck_assert_str_eq(e.rejections[1].error_class, "validation");
    ck_assert_str_eq(e.rejections[1].code, "missing_field");   /* no name */
    ck_assert_str_eq(e.rejections[2].error_class, "validation"); /* nested keys are not scanned */
    telemetry_entry_free(&e);
}
END_TEST

START_TEST(test_entry_free_resets_and_can_repeat)
{
    telemetry_entry e;
    parse_events("[" EVENT_OK ",5]", &e);
    telemetry_entry_free(&e);
    ck_assert_ptr_null(e.rows);
    ck_assert_ptr_null(e.rejections);
    ck_assert_uint_eq(e.n_rows, 0);
    ck_assert_uint_eq(e.n_rejections, 0);
    ck_assert_ptr_null(e.ingestion_id);
    telemetry_entry_free(&e);   /* harmless on an emptied entry */
}
END_TEST

static Suite *telemetry_suite(void)
{
    Suite *s = suite_create("telemetry");
    TCase *tc = tcase_create("contract");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fixture_cases_match_python_model);
    tcase_add_test(tc, test_valid_event_maps_every_column);
    tcase_add_test(tc, test_entry_of_500_events_is_accepted);
    tcase_add_test(tc, test_event_reasons_are_code_index_details);
    tcase_add_test(tc, test_reasons_name_the_offending_rule_detail);
    tcase_add_test(tc, test_entry_reasons_are_code_details);
    tcase_add_test(tc, test_long_value_is_cut_in_reason);
    tcase_add_test(tc, test_invalid_utf8_events_is_invalid_json);
    tcase_add_test(tc, test_source_with_embedded_nul_is_rejected);
    tcase_add_test(tc, test_field_names_compare_by_length);
    tcase_add_test(tc, test_no_fields_is_missing_events);
    tcase_add_test(tc, test_events_raw_kept_only_for_whole_entry_rejection);
    tcase_add_test(tc, test_only_blocked_key_is_privacy);
    tcase_add_test(tc, test_entry_free_resets_and_can_repeat);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(telemetry_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
