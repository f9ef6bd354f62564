/* tasks/telemetry.c: validation and row mapping of one telemetry stream entry
 * (CONTRACT §1-§3; rules, codes and decisions are listed in telemetry.h).
 *
 * Owns: reading the entry's fields, parsing `events` once (common/pyjson),
 * checking every event, and building event_row / telemetry_rejection values.
 * Does not own: JSON itself (pyjson), ISO-8601 parsing (timeutil), encoding
 * rows for ClickHouse (clickhouse/) or writing DLQ records (dlq/, drain.c).
 *
 * Hot path (every valid event): one pass over the event's members classifies
 * keys with a length switch; the name and blocked-key checks are switch +
 * memcmp tables; the payload is dumped once into a reused buffer. No malloc
 * per event: the parsed tree lives in one arena (pj_doc_parse) freed once
 * per entry, and the row's strings are copied into the entry's storage
 * blocks (telemetry.h). Before, the tree cost ~40 mallocs and the row 9 per
 * event, over half of the per-event instructions (bench/micro/event_cost.c).
 * Rejections are rare and may take their time. */
#include "tasks/telemetry.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/mem.h"
#include "common/pyjson.h"
#include "common/timeutil.h"

/* ---- Event member classification ---- */

/* The string fields that have a camelCase and a snake_case spelling. */
enum { F_SCHEMA, F_EVENT_ID, F_SESSION, F_ANON, F_ORG, F_ROUTE, F_COUNT };

static const char *const camel_names[F_COUNT] = {
    "schemaVersion", "eventId", "sessionId", "anonymousUserId", "orgIdHash", "routePattern"};

/* Slots a member of an event can land in; K_NONE = unknown key, ignored. */
enum {
    K_NONE = -1,
    K_CAMEL = 0,                  /* K_CAMEL + F_x */
    K_SNAKE = F_COUNT,            /* K_SNAKE + F_x */
    K_NAME = 2 * F_COUNT, K_TS, K_PAYLOAD, K_COUNT
};

typedef struct event_view {
    const pj_value *slot[K_COUNT];  /* borrowed from the event object; NULL when absent */
} event_view;

#define KEY_IS(lit) (memcmp(k, lit, sizeof(lit) - 1) == 0)

static int classify_key(const char *k, size_t len)
{
    switch (len) {
    case 2:  return KEY_IS("ts") ? K_TS : K_NONE;
    case 4:  return KEY_IS("name") ? K_NAME : K_NONE;
    case 7:  return KEY_IS("payload") ? K_PAYLOAD
                  : KEY_IS("eventId") ? K_CAMEL + F_EVENT_ID : K_NONE;
    case 8:  return KEY_IS("event_id") ? K_SNAKE + F_EVENT_ID : K_NONE;
    case 9:  return KEY_IS("sessionId") ? K_CAMEL + F_SESSION
                  : KEY_IS("orgIdHash") ? K_CAMEL + F_ORG : K_NONE;
    case 10: return KEY_IS("session_id") ? K_SNAKE + F_SESSION : K_NONE;
    case 11: return KEY_IS("org_id_hash") ? K_SNAKE + F_ORG : K_NONE;
    case 12: return KEY_IS("routePattern") ? K_CAMEL + F_ROUTE : K_NONE;
    case 13: return KEY_IS("schemaVersion") ? K_CAMEL + F_SCHEMA
                  : KEY_IS("route_pattern") ? K_SNAKE + F_ROUTE : K_NONE;
    case 14: return KEY_IS("schema_version") ? K_SNAKE + F_SCHEMA : K_NONE;
    case 15: return KEY_IS("anonymousUserId") ? K_CAMEL + F_ANON : K_NONE;
    case 17: return KEY_IS("anonymous_user_id") ? K_SNAKE + F_ANON : K_NONE;
    }
    return K_NONE;
}

/* CONTRACT §2: the nine event names the dashboard knows. */
static int allowed_name(const char *k, size_t len)
{
    switch (len) {
    case 11: return KEY_IS("page_viewed");
    case 12: return KEY_IS("guide_opened") || KEY_IS("client_error");
    case 13: return KEY_IS("session_ended");
    case 14: return KEY_IS("feature_viewed") || KEY_IS("filter_changed");
    case 15: return KEY_IS("session_started");
    case 16: return KEY_IS("chart_interacted");
    case 21: return KEY_IS("navigation_interacted");
    }
    return 0;
}

/* CONTRACT §2 privacy: payload keys that could carry personal data. */
static int blocked_key(const char *k, size_t len)
{
    switch (len) {
    case 3: return KEY_IS("url");
    case 4: return KEY_IS("name") || KEY_IS("body");
    case 5: return KEY_IS("email") || KEY_IS("orgId") || KEY_IS("query") ||
                   KEY_IS("stack") || KEY_IS("title");
    case 6: return KEY_IS("userId") || KEY_IS("search");
    case 7: return KEY_IS("message");
    }
    return 0;
}

#undef KEY_IS

/* One pass over the members; pyjson already resolved duplicate keys. */
static void scan_event(const pj_value *ev, event_view *v)
{
    memset(v, 0, sizeof *v);
    for (size_t i = 0; i < ev->u.object.len; i++) {
        const pj_member *m = &ev->u.object.members[i];
        int k = classify_key(m->key.ptr, m->key.len);
        if (k != K_NONE) v->slot[k] = m->value;
    }
}

/* camelCase wins whenever present, whatever its value (telemetry.h). */
static const pj_value *field(const event_view *v, int f, const char **spelling)
{
    if (v->slot[K_CAMEL + f]) {
        if (spelling) *spelling = camel_names[f];
        return v->slot[K_CAMEL + f];
    }
    if (spelling) *spelling = NULL;   /* snake spelling: caller names it */
    return v->slot[K_SNAKE + f];
}

/* ---- Small value helpers ---- */

static const char *type_name(const pj_value *v)
{
    switch (v->type) {
    case PJ_NULL: return "null";
    case PJ_BOOL: return "boolean";
    case PJ_INT: return "integer";
    case PJ_FLOAT: return "float";
    case PJ_STRING: return "string";
    case PJ_ARRAY: return "array";
    case PJ_OBJECT: return "object";
    }
    return "?";
}

static int is_nonempty_string(const pj_value *v)
{
    return v && v->type == PJ_STRING && v->u.string.len > 0;
}

static int has_nul(const pj_value *s)
{
    return memchr(s->u.string.ptr, '\0', s->u.string.len) != NULL;
}

/* ---- Row storage ----
 * Blocks owned by the entry that hold every string of its rows, freed all at
 * once by telemetry_entry_free. Strings are NUL-terminated and unaligned. */

struct telemetry_storage {
    struct telemetry_storage *next;   /* older block */
    size_t used, cap;
    char data[];
};

/* A row's strings are values from its event's text, plus the entry's org and
 * source (80 bytes) and 9 NULs: one block of this size holds all the rows
 * unless payload escapes grow (ensure_ascii can triple non-ASCII text). */
#define STORAGE_FIRST_BLOCK(events_len, n_events) ((events_len) + (n_events) * 96 + 256)

static void storage_add_block(telemetry_entry *e, size_t cap)
{
    struct telemetry_storage *b = xmalloc(sizeof *b + cap);
    b->next = e->storage;
    b->used = 0;
    b->cap = cap;
    e->storage = b;
}

/* A NUL-terminated copy of s[0..n) in the entry's storage; *len = n. */
static char *store(telemetry_entry *e, const char *s, size_t n, uint32_t *len)
{
    *len = (uint32_t)n;
    struct telemetry_storage *b = e->storage;
    if (b->cap - b->used < n + 1) {
        storage_add_block(e, b->cap * 2 > n + 1 ? b->cap * 2 : n + 1);
        b = e->storage;
    }
    char *p = b->data + b->used;
    memcpy(p, s, n);
    p[n] = '\0';
    b->used += n + 1;
    return p;
}

static char *store_string(telemetry_entry *e, const pj_value *s, uint32_t *len)
{
    return store(e, s->u.string.ptr, s->u.string.len, len);
}

static void storage_free(telemetry_entry *e)
{
    while (e->storage) {
        struct telemetry_storage *older = e->storage->next;
        free(e->storage);
        e->storage = older;
    }
}

/* Quote an offending value in a reason, compact JSON, at most
 * TELEMETRY_REASON_VALUE_MAX bytes (pj_dump escapes to ASCII, so cutting
 * anywhere cannot split a character). */
static void put_value(buf *out, const pj_value *v)
{
    buf tmp = BUF_INIT;
    pj_dump(&tmp, v, PJ_DUMP_COMPACT);
    if (tmp.len > TELEMETRY_REASON_VALUE_MAX) {
        buf_append(out, tmp.data, TELEMETRY_REASON_VALUE_MAX);
        buf_puts(out, "...");
    } else {
        buf_append(out, tmp.data, tmp.len);
    }
    buf_free(&tmp);
}

/* ---- Timestamps ---- */

static int ts_in_range(int64_t us)
{
    return us >= TELEMETRY_TS_MIN_US && us <= TELEMETRY_TS_MAX_US;
}

static int ts_from_int(long long i, int64_t *out)
{
    if (i > (long long)TELEMETRY_MS_THRESHOLD) {          /* milliseconds */
        if (i > TELEMETRY_TS_MAX_US / 1000) return -1;
        *out = (int64_t)i * 1000;
    } else {                                              /* seconds */
        if (i < TELEMETRY_TS_MIN_US / USEC_PER_SEC) return -1;
        *out = (int64_t)i * USEC_PER_SEC;
    }
    return ts_in_range(*out) ? 0 : -1;
}

/* Python: round(d * 1000) or round(d * 1e6): both IEEE products, then
 * half-to-even, which is nearbyint() in the default rounding mode. */
static int ts_from_float(double d, int64_t *out)
{
    if (!isfinite(d)) return -1;
    double x = d > TELEMETRY_MS_THRESHOLD ? nearbyint(d * 1e3) : nearbyint(d * 1e6);
    if (!(x > -1e18 && x < 1e18)) return -1;
    *out = (int64_t)x;
    return ts_in_range(*out) ? 0 : -1;
}

/* Booleans are not numbers here (Python's bool is an int; the contract's is not). */
static int ts_to_us(const pj_value *v, int64_t *out)
{
    long long i;
    switch (v->type) {
    case PJ_STRING:
        if (time_parse_iso8601(v->u.string.ptr, v->u.string.len, out) != 0) return -1;
        return ts_in_range(*out) ? 0 : -1;
    case PJ_INT:
        return pj_int_value(v, &i) == 0 ? ts_from_int(i, out) : -1;
    case PJ_FLOAT:
        return ts_from_float(v->u.number, out);
    default:
        return -1;
    }
}

/* ---- Rejections ---- */

typedef struct parse_ctx {
    telemetry_entry *out;
    buf payload;                  /* payload_json is dumped here, then stored */
    size_t rej_cap;
    const char *entry_org;        /* entry's org_id_hash, NULL when absent */
    size_t entry_org_len;
    const telemetry_field *source; /* NULL when absent */
} parse_ctx;

static telemetry_rejection *new_rejection(parse_ctx *c)
{
    telemetry_entry *e = c->out;
    if (e->n_rejections == c->rej_cap) {
        c->rej_cap = c->rej_cap ? c->rej_cap * 2 : 4;
        e->rejections = xrealloc(e->rejections, c->rej_cap * sizeof *e->rejections);
    }
    telemetry_rejection *r = &e->rejections[e->n_rejections++];
    memset(r, 0, sizeof *r);
    return r;
}

static void reject_entry(parse_ctx *c, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reject_entry(parse_ctx *c, const char *code, const char *fmt, ...)
{
    telemetry_rejection *r = new_rejection(c);
    buf why = BUF_INIT;
    va_list ap;
    buf_printf(&why, "%s: ", code);
    va_start(ap, fmt);
    buf_vprintf(&why, fmt, ap);
    va_end(ap);
    r->event_index = -1;
    r->error_class = TELEMETRY_CLASS_VALIDATION;
    r->code = code;
    r->reason = buf_detach(&why);
}

/* The verdict on one event: code NULL = valid. `why` holds the details. */
typedef struct verdict {
    const char *code;
    const char *error_class;
    buf why;
} verdict;

static int fail(verdict *vd, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_code(verdict *vd, const char *code)
{
    vd->code = code;
    vd->error_class = TELEMETRY_CLASS_VALIDATION;
    return -1;
}

static int fail(verdict *vd, const char *code, const char *fmt, ...)
{
    va_list ap;
    fail_code(vd, code);
    va_start(ap, fmt);
    buf_vprintf(&vd->why, fmt, ap);
    va_end(ap);
    return -1;
}

static void reject_event(parse_ctx *c, int index, const pj_value *ev, verdict *vd)
{
    telemetry_rejection *r = new_rejection(c);
    buf why = BUF_INIT, js = BUF_INIT;
    buf_printf(&why, "%s: event %d: %s", vd->code, index, buf_cstr(&vd->why));
    pj_dump(&js, ev, PJ_DUMP_COMPACT);
    r->event_index = index;
    r->error_class = vd->error_class;
    r->code = vd->code;
    r->reason = buf_detach(&why);
    r->event_json = buf_detach(&js);
}

/* ---- Event rules (order documented in telemetry.h) ---- */

static int check_privacy(const pj_value *payload, verdict *vd)
{
    if (!payload || payload->type != PJ_OBJECT) return 0;
    for (size_t i = 0; i < payload->u.object.len; i++) {
        const pj_str *k = &payload->u.object.members[i].key;
        if (blocked_key(k->ptr, k->len)) {
            fail(vd, "blocked_key", "payload key '%s' is not allowed (privacy)", k->ptr);
            vd->error_class = TELEMETRY_CLASS_PRIVACY;
            return -1;
        }
    }
    return 0;
}

static int check_name(const pj_value *name, verdict *vd)
{
    if (!name) return fail(vd, "missing_field", "'name' is missing");
    if (name->type == PJ_STRING && allowed_name(name->u.string.ptr, name->u.string.len))
        return 0;
    fail_code(vd, "invalid_name");
    put_value(&vd->why, name);
    buf_puts(&vd->why, " is not an allowed event name");
    return -1;
}

/* schemaVersion, eventId, sessionId, anonymousUserId. */
static int check_ids(const event_view *v, verdict *vd)
{
    static const char *const snake[] = {"schema_version", "event_id", "session_id",
                                        "anonymous_user_id"};
    for (int f = F_SCHEMA; f <= F_ANON; f++) {
        const char *spelling;
        const pj_value *s = field(v, f, &spelling);
        if (!spelling) spelling = s ? snake[f] : camel_names[f];
        if (!s)
            return fail(vd, "missing_field", "'%s' is missing", spelling);
        if (!is_nonempty_string(s))
            return fail(vd, "missing_field", "'%s' must be a non-empty string, got %s%s",
                        spelling, s->type == PJ_STRING ? "an empty " : "",
                        type_name(s));
        if (has_nul(s))
            return fail(vd, "nul_character", "'%s' contains U+0000", spelling);
    }
    return 0;
}

static int check_ts(const pj_value *ts, int64_t *us, verdict *vd)
{
    if (!ts) return fail(vd, "missing_field", "'ts' is missing");
    if (ts_to_us(ts, us) == 0) return 0;
    fail_code(vd, "invalid_ts");
    put_value(&vd->why, ts);
    buf_puts(&vd->why, " is neither an ISO-8601 date-time nor epoch seconds/milliseconds in range");
    return -1;
}

/* orgIdHash / routePattern: string or null/absent. */
static int check_optional_string(const event_view *v, int f, const char *code, verdict *vd)
{
    const char *spelling;
    const pj_value *s = field(v, f, &spelling);
    if (!spelling) spelling = f == F_ORG ? "org_id_hash" : "route_pattern";
    if (!s || s->type == PJ_NULL) return 0;
    if (s->type != PJ_STRING)
        return fail(vd, code, "'%s' must be a string or null, got %s", spelling, type_name(s));
    if (has_nul(s))
        return fail(vd, "nul_character", "'%s' contains U+0000", spelling);
    return 0;
}

static int check_payload(const pj_value *payload, verdict *vd)
{
    if (!payload) return 0;
    if (payload->type != PJ_OBJECT)
        return fail(vd, "invalid_payload", "'payload' must be an object, got %s",
                    type_name(payload));
    for (size_t i = 0; i < payload->u.object.len; i++) {
        const pj_member *m = &payload->u.object.members[i];
        if (m->value->type == PJ_OBJECT || m->value->type == PJ_ARRAY) {
            fail(vd, "nested_payload", "payload key ");
            pj_value key = {.type = PJ_STRING, .u.string = m->key};
            put_value(&vd->why, &key);
            buf_printf(&vd->why, " holds an %s; values must be flat", type_name(m->value));
            return -1;
        }
    }
    return 0;
}

/* The event's org, when "set": a non-empty string (telemetry.h). */
static const pj_value *event_org(const event_view *v)
{
    const pj_value *o = field(v, F_ORG, NULL);
    return is_nonempty_string(o) ? o : NULL;
}

static int check_org(const parse_ctx *c, const pj_value *org, verdict *vd)
{
    if (!org || !c->entry_org_len) return 0;
    if (org->u.string.len == c->entry_org_len &&
        memcmp(org->u.string.ptr, c->entry_org, c->entry_org_len) == 0)
        return 0;
    fail(vd, "org_mismatch", "orgIdHash ");
    put_value(&vd->why, org);
    buf_puts(&vd->why, " differs from the entry's org_id_hash");
    return -1;
}

static int check_event(const parse_ctx *c, const event_view *v, int64_t *us, verdict *vd)
{
    if (check_privacy(v->slot[K_PAYLOAD], vd) ||
        check_name(v->slot[K_NAME], vd) ||
        check_ids(v, vd) ||
        check_ts(v->slot[K_TS], us, vd) ||
        check_optional_string(v, F_ORG, "invalid_org_id_hash", vd) ||
        check_optional_string(v, F_ROUTE, "invalid_route_pattern", vd) ||
        check_payload(v->slot[K_PAYLOAD], vd) ||
        check_org(c, event_org(v), vd))
        return -1;
    return 0;
}

/* ---- Rows ---- */

/* Only called for a valid event: every string it copies was checked. */
static void emit_row(parse_ctx *c, const event_view *v, int64_t us)
{
    telemetry_entry *e = c->out;
    event_row *r = &e->rows[e->n_rows++];
    const pj_value *payload = v->slot[K_PAYLOAD];
    const pj_value *org = event_org(v), *route = field(v, F_ROUTE, NULL);

    if (payload) {
        buf_reset(&c->payload);
        pj_dump(&c->payload, payload, PJ_DUMP_COMPACT | PJ_DUMP_SORT_KEYS);
        r->payload_json = store(e, c->payload.data, c->payload.len, &r->len.payload_json);
    } else {
        r->payload_json = store(e, "{}", 2, &r->len.payload_json);
    }
    if (org) r->org_id_hash = store_string(e, org, &r->len.org_id_hash);
    else if (c->entry_org) r->org_id_hash = store(e, c->entry_org, c->entry_org_len, &r->len.org_id_hash);
    else r->org_id_hash = store(e, "", 0, &r->len.org_id_hash);
    r->name = store_string(e, v->slot[K_NAME], &r->len.name);
    r->schema_version = store_string(e, field(v, F_SCHEMA, NULL), &r->len.schema_version);
    r->event_id = store_string(e, field(v, F_EVENT_ID, NULL), &r->len.event_id);
    r->session_id = store_string(e, field(v, F_SESSION, NULL), &r->len.session_id);
    r->anonymous_user_id = store_string(e, field(v, F_ANON, NULL), &r->len.anonymous_user_id);
    r->len.route_pattern = 0;
    r->route_pattern = route && route->type == PJ_STRING
                       ? store_string(e, route, &r->len.route_pattern) : NULL;
    r->occurred_at_us = us;
    const char *source = e->source ? e->source : TELEMETRY_SOURCE;
    /* A present source passed the byte-exact check (parse_events). */
    size_t source_len = e->source ? c->source->value_len : sizeof TELEMETRY_SOURCE - 1;
    r->source = store(e, source, source_len, &r->len.source);
    r->has_len = 1;
}

static void process_event(parse_ctx *c, int index, const pj_value *ev)
{
    verdict vd = {NULL, NULL, BUF_INIT};
    int64_t us = 0;

    if (ev->type != PJ_OBJECT) {
        fail(&vd, "event_not_object", "expected an object, got %s", type_name(ev));
    } else {
        event_view v;
        scan_event(ev, &v);
        if (check_event(c, &v, &us, &vd) == 0) {
            emit_row(c, &v, us);
            return;
        }
    }
    reject_event(c, index, ev, &vd);
    buf_free(&vd.why);
}

/* ---- Entry ---- */

static int field_is(const telemetry_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->name_len == n && memcmp(f->name, name, n) == 0;
}

/* Byte-exact: a value with an embedded NUL is not the string before it. */
static int field_value_is(const telemetry_field *f, const char *value)
{
    size_t n = strlen(value);
    return f->value_len == n && memcmp(f->value, value, n) == 0;
}

/* Last occurrence wins (telemetry.h). */
static const telemetry_field *find_field(const telemetry_field *fields, size_t n,
                                         const char *name)
{
    const telemetry_field *found = NULL;
    for (size_t i = 0; i < n; i++)
        if (field_is(&fields[i], name)) found = &fields[i];
    return found;
}

static char *copy_field(const telemetry_field *f)
{
    return f ? xstrndup(f->value, f->value_len) : NULL;
}

/* Parse `events` and apply the whole-entry rules; NULL when the entry was
 * rejected. The events array is pj_doc_root() of the result. */
static pj_doc *parse_events(parse_ctx *c, const telemetry_field *events)
{
    telemetry_entry *e = c->out;
    pj_error err;
    pj_doc *doc = NULL;
    const pj_value *arr;

    if (c->source && !field_value_is(c->source, TELEMETRY_SOURCE)) {
        reject_entry(c, "invalid_source", "source '%.*s' is not '%s'",
                     TELEMETRY_REASON_VALUE_MAX, e->source, TELEMETRY_SOURCE);
    } else if (!events) {
        reject_entry(c, "missing_events", "the entry has no 'events' field");
    } else if (!(doc = pj_doc_parse(events->value, events->value_len, &err))) {
        reject_entry(c, "invalid_json", "'events' is not valid JSON: %s", err.msg);
    } else if ((arr = pj_doc_root(doc))->type != PJ_ARRAY) {
        reject_entry(c, "events_not_array", "'events' is a JSON %s, not an array",
                     type_name(arr));
    } else if (arr->u.array.len == 0) {
        reject_entry(c, "empty_events", "'events' is an empty array");
    } else if (arr->u.array.len > TELEMETRY_MAX_EVENTS) {
        reject_entry(c, "too_many_events", "'events' has %zu items, more than %d",
                     arr->u.array.len, TELEMETRY_MAX_EVENTS);
    } else {
        return doc;
    }
    pj_doc_free(doc);
    e->events_raw = copy_field(events);
    return NULL;
}

void telemetry_parse_entry(const telemetry_field *fields, size_t n_fields, telemetry_entry *out)
{
    parse_ctx c = {out, BUF_INIT, 0, NULL, 0, find_field(fields, n_fields, "source")};
    const telemetry_field *org = find_field(fields, n_fields, "org_id_hash");

    memset(out, 0, sizeof *out);
    out->ingestion_id = copy_field(find_field(fields, n_fields, "ingestion_id"));
    out->source = copy_field(c.source);
    out->org_id_hash = copy_field(org);
    if (org) {
        c.entry_org = out->org_id_hash;
        c.entry_org_len = org->value_len;
    }

    const telemetry_field *events = find_field(fields, n_fields, "events");
    pj_doc *doc = parse_events(&c, events);
    if (!doc) return;
    const pj_value *arr = pj_doc_root(doc);
    out->rows = xmalloc(arr->u.array.len * sizeof *out->rows);
    storage_add_block(out, STORAGE_FIRST_BLOCK(events->value_len, arr->u.array.len));
    for (size_t i = 0; i < arr->u.array.len; i++)
        process_event(&c, (int)i, arr->u.array.items[i]);
    pj_doc_free(doc);
    buf_free(&c.payload);
}

void telemetry_entry_free(telemetry_entry *e)
{
    storage_free(e);              /* the rows' strings */
    for (size_t i = 0; i < e->n_rejections; i++) {
        free(e->rejections[i].reason);
        free(e->rejections[i].event_json);
    }
    free(e->rows);
    free(e->rejections);
    free(e->ingestion_id);
    free(e->source);
    free(e->org_id_hash);
    free(e->events_raw);
    memset(e, 0, sizeof *e);
}
