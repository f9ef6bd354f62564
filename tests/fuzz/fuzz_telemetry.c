/* tests/fuzz/fuzz_telemetry.c: telemetry_parse_entry on arbitrary entries.
 *
 * Input format (first byte picks the mode):
 *  - even: the rest is the `events` field; the other fields are fixed
 *    (ingestion_id, source "dev-health-web", an org_id_hash chosen by
 *    byte0 >> 1 among: absent, "", a 64-hex value, "org\0nul").
 *  - odd: the rest is name \xff value \xff name \xff value ... (0xFF never
 *    occurs in UTF-8, so JSON seeds survive as values); a trailing name
 *    without a value gets an empty value. Fields may repeat, hold NULs.
 * Properties: every row's payload_json is canonical (parses, and dumping it
 * compact+sorted gives the same bytes); required row strings are non-NULL;
 * every rejection has a code, a reason starting with that code, and an
 * event_json that parses (per-event) or none (whole entry); the number of
 * rows + per-event rejections equals the number of events when the entry
 * as a whole was accepted. */
#include "fuzz_common.h"
#include "common/buf.h"
#include "common/pyjson.h"
#include "tasks/telemetry.h"

#define MAX_FIELDS 64

static void check_entry(const telemetry_entry *e, const char *events, size_t events_len, int have_events)
{
    int whole = 0;
    for (size_t i = 0; i < e->n_rejections; i++) {
        const telemetry_rejection *r = &e->rejections[i];
        FUZZ_CHECK(r->code && r->reason && r->error_class, "rejection %zu incomplete", i);
        FUZZ_CHECK(strncmp(r->reason, r->code, strlen(r->code)) == 0,
                   "reason '%s' does not start with code '%s'", r->reason, r->code);
        if (r->event_index < 0) {
            whole = 1;
            FUZZ_CHECK(r->event_json == NULL, "whole-entry rejection with event_json");
        } else {
            FUZZ_CHECK(r->event_json != NULL, "event rejection without event_json");
            pj_value *v = pj_parse(r->event_json, strlen(r->event_json), NULL);
            FUZZ_CHECK(v != NULL, "event_json does not parse: %.300s", r->event_json);
            pj_free(v);
        }
    }
    if (whole) {
        FUZZ_CHECK(e->n_rejections == 1 && e->n_rows == 0, "whole rejection plus %zu rows, %zu rejections",
                   e->n_rows, e->n_rejections);
    }
    for (size_t i = 0; i < e->n_rows; i++) {
        const event_row *row = &e->rows[i];
        FUZZ_CHECK(row->org_id_hash && row->event_id && row->name && row->schema_version &&
                   row->session_id && row->anonymous_user_id && row->payload_json && row->source,
                   "row %zu has a NULL required column", i);
        pj_error err;
        pj_value *p = pj_parse(row->payload_json, strlen(row->payload_json), &err);
        FUZZ_CHECK(p != NULL && p->type == PJ_OBJECT, "payload_json not an object: %.300s",
                   row->payload_json);
        buf b = BUF_INIT;
        pj_dump(&b, p, PJ_DUMP_COMPACT | PJ_DUMP_SORT_KEYS);
        FUZZ_CHECK(b.len == strlen(row->payload_json) && memcmp(b.data, row->payload_json, b.len) == 0,
                   "payload_json not canonical: %.300s vs %.300s", row->payload_json, buf_cstr(&b));
        buf_free(&b);
        pj_free(p);
    }
    if (!whole && have_events) {
        pj_value *ev = pj_parse(events, events_len, NULL);
        FUZZ_CHECK(ev && ev->type == PJ_ARRAY, "entry accepted but events is not an array");
        FUZZ_CHECK(e->n_rows + e->n_rejections == ev->u.array.len,
                   "%zu rows + %zu rejections != %zu events", e->n_rows, e->n_rejections,
                   ev->u.array.len);
        pj_free(ev);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    telemetry_field f[MAX_FIELDS];
    size_t n = 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    const char *events = NULL;
    size_t events_len = 0;

    if ((data[0] & 1) == 0) {
        static const char *const orgs[] = {NULL, "",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "org\0nul"};
        const char *org = orgs[(data[0] >> 1) & 3];
        f[n++] = (telemetry_field){"ingestion_id", 12, "6f1c2e9a-1b7d-4e0f-9a51-3c2d8b7e6f10", 36};
        f[n++] = (telemetry_field){"source", 6, "dev-health-web", 14};
        if (org) f[n++] = (telemetry_field){"org_id_hash", 11, org, org[0] == 'o' ? 7 : strlen(org)};
        f[n++] = (telemetry_field){"events", 6, in, len};
        events = in;
        events_len = len;
    } else {
        const char *p = in, *end = in + len;
        while (p <= end && n < MAX_FIELDS) {
            const char *sep = memchr(p, 0xff, (size_t)(end - p));
            const char *name = p;
            size_t name_len = (size_t)((sep ? sep : end) - p);
            const char *value = "";
            size_t value_len = 0;
            if (sep) {
                p = sep + 1;
                const char *sep2 = memchr(p, 0xff, (size_t)(end - p));
                value = p;
                value_len = (size_t)((sep2 ? sep2 : end) - p);
                p = sep2 ? sep2 + 1 : end + 1;
            } else {
                p = end + 1;
            }
            f[n++] = (telemetry_field){name, name_len, value, value_len};
        }
        /* The last `events` field wins, as in the parser (redis-py dict). */
        for (size_t i = 0; i < n; i++)
            if (f[i].name_len == 6 && memcmp(f[i].name, "events", 6) == 0) {
                events = f[i].value;
                events_len = f[i].value_len;
            }
    }
    telemetry_entry e;
    telemetry_parse_entry(f, n, &e);
    check_entry(&e, events, events_len, events != NULL);
    telemetry_entry_free(&e);
    return 0;
}
