/* worker/config.c: settings from a celeryconfig, the environment and the CLI
 * (see config.h for the layers and the file format).
 *
 * Three parts, top-down:
 *   - the settings table: one row per setting, naming its parser (pj_value
 *     -> typed field, with the validation and the error text) and its
 *     renderer (typed field -> pj_value, for `inspect conf`);
 *   - the loaders: file, environment, CLI text;
 *   - the literal reader: a tokenizer and recursive-descent parser for the
 *     Python subset, building pj_value trees and remembering each value's
 *     line so that errors point at the line that holds the bad value.
 * It owns no I/O besides reading the config file and no global state. */
#include "worker/config.h"

#include "common/buf.h"
#include "common/log.h"
#include "common/mem.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Where a value came from; decides the prefix of messages. */
typedef enum { SRC_FILE, SRC_ENV, SRC_CLI } src_kind;

/* pj_value -> line it started on, for the values of one statement. Config
 * values are small, so a linear list is the right tool. */
typedef struct line_note { const pj_value *v; int line; } line_note;

typedef struct load_ctx {
    src_kind kind;
    const char *where;        /* file name, or environment variable name */
    int line;                 /* the statement's line (fallback) */
    line_note *notes;
    size_t nnotes, capnotes;
    char *err;
    size_t errlen;
} load_ctx;

typedef struct setting setting;
typedef int (*parse_fn)(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c);
typedef pj_value *(*render_fn)(const ptel_config *cfg, const setting *s);

/* How config_set turns CLI text into a value for the parser. */
typedef enum { TXT_STRING, TXT_STRING_OR_NONE, TXT_LITERAL, TXT_BOOL, TXT_LIST } text_kind;

struct setting {
    const char *name;
    parse_fn parse;
    render_fn render;
    text_kind text;
    size_t off;                       /* offsetof the typed field */
    long long lo, hi;                 /* integer bounds, inclusive */
    const char *const *choices;       /* enum names; index = enum value */
};

#define SUBSET "a celeryconfig for ptel-worker may contain only `name = literal` lines " \
               "(strings, numbers, True/False/None, lists, tuples and dicts of those)"

static pj_value *parse_literal_text(const char *text, char *err, size_t errlen);
static int load_text(ptel_config *cfg, const char *filename, const char *text, size_t len,
                     char *err, size_t errlen);

/* ---- Messages ------------------------------------------------------------- */

static int line_of(const load_ctx *c, const pj_value *v)
{
    /* Newest first: a freed dict key's address may be reused by a later value. */
    for (size_t i = c->nnotes; i > 0; i--)
        if (c->notes[i - 1].v == v) return c->notes[i - 1].line;
    return c->line;
}

static void prefix(buf *b, const load_ctx *c, const pj_value *v)
{
    if (c->kind == SRC_FILE) buf_printf(b, "%s:%d: ", c->where, line_of(c, v));
    else if (c->kind == SRC_ENV) buf_printf(b, "%s: ", c->where);
}

/* "where: " + the formatted message, into b. */
static void vmessage(buf *b, load_ctx *c, const pj_value *v, const char *fmt, va_list ap)
{
    prefix(b, c, v);
    buf_vprintf(b, fmt, ap);
}

static int fail(load_ctx *c, const pj_value *v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(load_ctx *c, const pj_value *v, const char *fmt, ...)
{
    buf b = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    vmessage(&b, c, v, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s", buf_cstr(&b));
    buf_free(&b);
    return -1;
}

static void warn(load_ctx *c, const pj_value *v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn(load_ctx *c, const pj_value *v, const char *fmt, ...)
{
    buf b = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    vmessage(&b, c, v, fmt, ap);
    va_end(ap);
    log_warning("%s", buf_cstr(&b));
    buf_free(&b);
}

/* Python repr() of a value for "got ...", cut to keep messages one line. */
#define GOT_MAX 80
static const char *got(const pj_value *v, char *out, size_t outlen)
{
    buf b = BUF_INIT;
    pj_repr(&b, v);
    if (b.len > GOT_MAX) snprintf(out, outlen, "%.*s...", GOT_MAX, b.data);
    else snprintf(out, outlen, "%s", buf_cstr(&b));
    buf_free(&b);
    return out;
}

static int fail_want(load_ctx *c, const setting *s, const pj_value *v, const char *want)
{
    char g[GOT_MAX + 8];
    return fail(c, v, "%s must be %s, got %s", s->name, want, got(v, g, sizeof g));
}

/* ---- Value helpers -------------------------------------------------------- */

#define FIELD(cfg, s, type) ((type *)((char *)(cfg) + (s)->off))
#define CFIELD(cfg, s, type) ((const type *)((const char *)(cfg) + (s)->off))

static int is_str(const pj_value *v)
{
    /* A NUL inside would silently cut the C string short. */
    return v && v->type == PJ_STRING && strlen(v->u.string.ptr) == v->u.string.len;
}

static int is_seq(const pj_value *v) { return v && v->type == PJ_ARRAY; }

static int as_number(const pj_value *v, double *out)
{
    if (!v || (v->type != PJ_INT && v->type != PJ_FLOAT)) return -1;
    if (pj_number_value(v, out) != 0 || !isfinite(*out)) return -1;
    return 0;
}

static void set_str(char **field, const char *value)
{
    free(*field);
    *field = value ? xstrdup(value) : NULL;
}

static void strlist_free(config_strlist *l)
{
    for (size_t i = 0; i < l->count; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static void strlist_push(config_strlist *l, const char *s)
{
    l->items = xrealloc(l->items, (l->count + 1) * sizeof *l->items);
    l->items[l->count++] = xstrdup(s);
}

static pj_value *render_strlist(const config_strlist *l)
{
    pj_value *a = pj_new_array();
    for (size_t i = 0; i < l->count; i++) pj_array_append(a, pj_new_string(l->items[i]));
    return a;
}

/* Seconds print as Python would hold them if written as an int. */
static pj_value *render_seconds(double d)
{
    if (d == floor(d) && fabs(d) < 9e15) return pj_new_int((long long)d);
    return pj_new_float(d);
}

/* ---- URLs ----------------------------------------------------------------- */

static const char *const redis_schemes[] = {"redis://", "unix://", "redis+socket://", NULL};
static const char *const clickhouse_schemes[] = {"http://", "https://", "chdb://", NULL};

static int has_scheme(const char *url, const char *const *schemes)
{
    for (size_t i = 0; schemes[i]; i++)
        if (strncasecmp(url, schemes[i], strlen(schemes[i])) == 0) return 1;
    return 0;
}

/* Replaces the password of scheme://user:password@host with the mask, the
 * way urllib.parse splits a netloc (it ends at the first '/', '?' or '#';
 * userinfo ends at the last '@'); Celery's sanitize_url does the same. */
static char *redact_url(const char *url)
{
    const char *auth = strstr(url, "://");
    if (!auth) return xstrdup(url);
    auth += 3;
    size_t netlen = strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < auth + netlen; p++)
        if (*p == '@') at = p;
    if (!at) return xstrdup(url);
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    if (!colon || colon + 1 == at) return xstrdup(url);
    buf b = BUF_INIT;
    buf_append(&b, url, (size_t)(colon + 1 - url));
    buf_puts(&b, CONFIG_REDACT_MASK);
    buf_puts(&b, at);
    return buf_detach(&b);
}

/* ---- Parsers: scalars ----------------------------------------------------- */

static int parse_string(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    if (!is_str(v) || v->u.string.len == 0) return fail_want(c, s, v, "a non-empty string");
    set_str(FIELD(cfg, s, char *), v->u.string.ptr);
    return 0;
}

static int parse_string_or_none(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    if (v->type == PJ_NULL) {
        set_str(FIELD(cfg, s, char *), NULL);
        return 0;
    }
    if (!is_str(v) || v->u.string.len == 0) return fail_want(c, s, v, "a non-empty string or None");
    set_str(FIELD(cfg, s, char *), v->u.string.ptr);
    return 0;
}

static int parse_url(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c,
                     const char *const *schemes, const char *want)
{
    if (!is_str(v) || !has_scheme(v->u.string.ptr, schemes)) return fail_want(c, s, v, want);
    set_str(FIELD(cfg, s, char *), v->u.string.ptr);
    return 0;
}

static int parse_redis_url(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    return parse_url(cfg, s, v, c, redis_schemes, "a redis://, unix:// or redis+socket:// URL");
}

static int parse_clickhouse_url(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    return parse_url(cfg, s, v, c, clickhouse_schemes, "an http://, https:// or chdb:// URL");
}

/* A table name goes into SQL text, so only [A-Za-z0-9_.] is accepted. */
static int parse_table_name(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    const char *want = "a table name of letters, digits, '_' and '.'";
    if (!is_str(v) || v->u.string.len == 0) return fail_want(c, s, v, want);
    for (const char *p = v->u.string.ptr; *p; p++)
        if (!(*p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
              ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')))
            return fail_want(c, s, v, want);
    set_str(FIELD(cfg, s, char *), v->u.string.ptr);
    return 0;
}

static int enum_index(const char *const *choices, const pj_value *v)
{
    if (!is_str(v)) return -1;
    for (int i = 0; choices[i]; i++)
        if (strcmp(choices[i], v->u.string.ptr) == 0) return i;
    return -1;
}

static int fail_choices(load_ctx *c, const char *name, const char *const *choices, const pj_value *v)
{
    buf b = BUF_INIT;
    char g[GOT_MAX + 8];
    for (int i = 0; choices[i]; i++) buf_printf(&b, "%s'%s'", i ? ", " : "", choices[i]);
    fail(c, v, "%s must be one of %s, got %s", name, buf_cstr(&b), got(v, g, sizeof g));
    buf_free(&b);
    return -1;
}

static int parse_enum(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    int i = enum_index(s->choices, v);
    if (i < 0) return fail_choices(c, s->name, s->choices, v);
    *FIELD(cfg, s, int) = i;
    return 0;
}

static int parse_bool(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    if (v->type != PJ_BOOL) return fail_want(c, s, v, "True or False");
    *FIELD(cfg, s, int) = v->u.boolean;
    return 0;
}

/* Shared by settings and dict keys: an int within [lo, hi]. */
static int check_int(load_ctx *c, const char *name, const pj_value *v, long long lo, long long hi,
                     long long *out)
{
    char g[GOT_MAX + 8];
    const char *want = lo == 1 ? "a positive integer" : lo == 0 ? "a non-negative integer" : "an integer";
    if (v->type != PJ_INT) return fail(c, v, "%s must be %s, got %s", name, want, got(v, g, sizeof g));
    if (pj_int_value(v, out) != 0 || *out < lo)
        return fail(c, v, "%s must be %s, got %s", name, want, got(v, g, sizeof g));
    if (*out > hi) return fail(c, v, "%s must be at most %lld, got %s", name, hi, got(v, g, sizeof g));
    return 0;
}

static int parse_int(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    long long n;
    if (check_int(c, s->name, v, s->lo, s->hi, &n) != 0) return -1;
    *FIELD(cfg, s, long long) = n;
    return 0;
}

/* result_expires: seconds, or None for never (stored as -1). */
/* None is stored as -1; `want` names the unit in the error. */
static int int_or_none(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c,
                       const char *want)
{
    long long n;
    if (v->type == PJ_NULL) {
        *FIELD(cfg, s, long long) = -1;
        return 0;
    }
    if (v->type != PJ_INT) return fail_want(c, s, v, want);
    if (check_int(c, s->name, v, s->lo, s->hi, &n) != 0) return -1;
    *FIELD(cfg, s, long long) = n;
    return 0;
}

static int parse_int_or_none(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    return int_or_none(cfg, s, v, c, "a non-negative integer (seconds) or None");
}

static int parse_bytes_or_none(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    return int_or_none(cfg, s, v, c, "a non-negative integer (bytes) or None");
}

static int parse_port(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    long long n;
    if (v->type == PJ_NULL) {
        *FIELD(cfg, s, int) = 0;
        return 0;
    }
    if (v->type != PJ_INT || pj_int_value(v, &n) != 0 || n < 1 || n > 65535)
        return fail_want(c, s, v, "a TCP port (1-65535) or None");
    *FIELD(cfg, s, int) = (int)n;
    return 0;
}

/* Seconds as int or float; lo = 0 allows zero, lo = 1 wants > 0. */
static int check_seconds(load_ctx *c, const char *name, const pj_value *v, int allow_zero,
                         int allow_none, double *out)
{
    char g[GOT_MAX + 8];
    if (allow_none && v->type == PJ_NULL) {
        *out = -1;
        return 0;
    }
    if (v->type == PJ_BOOL || as_number(v, out) != 0 || *out < 0 || (*out == 0 && !allow_zero))
        return fail(c, v, "%s must be a %s number of seconds%s, got %s", name,
                    allow_zero ? "non-negative" : "positive", allow_none ? " or None" : "",
                    got(v, g, sizeof g));
    return 0;
}

static int parse_seconds(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    return check_seconds(c, s->name, v, s->lo == 0, 0, FIELD(cfg, s, double));
}

static int parse_seconds_or_none(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    return check_seconds(c, s->name, v, 0, 1, FIELD(cfg, s, double));
}

/* timezone / enable_utc: Celery's, meaningless for a worker that keeps UTC. */
static int parse_ignored(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    if (strcmp(s->name, "enable_utc") == 0) {
        if (parse_bool(cfg, s, v, c) != 0) return -1;
    } else if (parse_string_or_none(cfg, s, v, c) != 0) {
        return -1;
    }
    log_debug("%s is accepted and ignored: ptel-worker keeps every time in UTC", s->name);
    return 0;
}

/* ---- Parsers: lists ------------------------------------------------------- */

/* A list or tuple of non-empty strings into a fresh strlist. */
static int string_items(load_ctx *c, const char *name, const pj_value *v, config_strlist *out)
{
    char g[GOT_MAX + 8];
    if (!is_seq(v)) return fail(c, v, "%s must be a list of strings, got %s", name, got(v, g, sizeof g));
    for (size_t i = 0; i < v->u.array.len; i++) {
        const pj_value *item = v->u.array.items[i];
        if (!is_str(item) || item->u.string.len == 0) {
            strlist_free(out);
            return fail(c, item, "%s items must be non-empty strings, got %s", name,
                        got(item, g, sizeof g));
        }
        strlist_push(out, item->u.string.ptr);
    }
    return 0;
}

static int parse_queues(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    config_strlist l = {NULL, 0};
    if (v->type == PJ_NULL) {
        strlist_free(&cfg->task_queues);   /* derive_defaults refills it */
        return 0;
    }
    if (string_items(c, s->name, v, &l) != 0) return -1;
    if (l.count == 0) return fail(c, v, "%s must name at least one queue (or be None)", s->name);
    strlist_free(&cfg->task_queues);
    cfg->task_queues = l;
    return 0;
}

static int parse_control_allow(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    config_strlist l = {NULL, 0};
    if (v->type != PJ_NULL && string_items(c, s->name, v, &l) != 0) return -1;
    strlist_free(&cfg->worker_control_allow);
    cfg->worker_control_allow = l;
    cfg->has_worker_control_allow = v->type != PJ_NULL;
    return 0;
}

/* The worker runs no Python, so pickle/yaml bodies are never deserialised;
 * saying so beats "unsupported". */
static const char *const unsafe_content[] = {
    "pickle", "yaml", "application/x-python-serialize", "application/x-yaml", NULL};
static const char *const safe_content[] = {
    "json", "msgpack", "application/json", "application/x-msgpack", NULL};

static int check_content_type(load_ctx *c, const char *name, const pj_value *v)
{
    char g[GOT_MAX + 8];
    if (enum_index(unsafe_content, v) >= 0)
        return fail(c, v, "%s: %s is refused: ptel-worker never deserialises pickle or yaml "
                    "(it runs no Python, and both can execute code); use 'json' or 'msgpack'",
                    name, got(v, g, sizeof g));
    if (enum_index(safe_content, v) < 0) return fail_choices(c, name, safe_content, v);
    return 0;
}

static int parse_accept_content(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    config_strlist l = {NULL, 0};
    if (string_items(c, s->name, v, &l) != 0) return -1;
    for (size_t i = 0; i < v->u.array.len; i++) {
        if (check_content_type(c, s->name, v->u.array.items[i]) != 0) {
            strlist_free(&l);
            return -1;
        }
    }
    if (l.count == 0) return fail(c, v, "%s must list at least one content type", s->name);
    strlist_free(&cfg->accept_content);
    cfg->accept_content = l;
    return 0;
}

static int parse_serializer(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    if (check_content_type(c, s->name, v) != 0) return -1;
    set_str(FIELD(cfg, s, char *), v->u.string.ptr);
    return 0;
}

/* ---- Parsers: broker_transport_options ------------------------------------ */

static const char *const queue_orders[] = {"round_robin", "sorted", "priority", NULL};

static int transport_steps(ptel_config *t, const pj_value *v, load_ctx *c)
{
    const char *name = "broker_transport_options['priority_steps']";
    char g[GOT_MAX + 8];
    if (!is_seq(v) || v->u.array.len == 0 || v->u.array.len > CONFIG_MAX_PRIORITY_STEPS)
        return fail(c, v, "%s must be a list of 1 to %d priorities, got %s", name,
                    CONFIG_MAX_PRIORITY_STEPS, got(v, g, sizeof g));
    for (size_t i = 0; i < v->u.array.len; i++) {
        long long n;
        const pj_value *item = v->u.array.items[i];
        if (item->type != PJ_INT || pj_int_value(item, &n) != 0 || n < 0 || n > 9 ||
            (i > 0 && n <= t->priority_steps[i - 1]))
            return fail(c, item, "%s must be increasing integers from 0 to 9, got %s", name,
                        got(v, g, sizeof g));
        t->priority_steps[i] = (int)n;
    }
    t->priority_steps_count = v->u.array.len;
    return 0;
}

static int transport_key(ptel_config *t, const char *key, const pj_value *v, load_ctx *c)
{
    char name[96], g[GOT_MAX + 8];
    snprintf(name, sizeof name, "broker_transport_options['%s']", key);
    if (strcmp(key, "visibility_timeout") == 0)
        return check_seconds(c, name, v, 0, 0, &t->visibility_timeout);
    if (strcmp(key, "priority_steps") == 0) return transport_steps(t, v, c);
    if (strcmp(key, "unacked_mutex_expire") == 0)
        return check_int(c, name, v, 1, 86400LL * 365, &t->unacked_mutex_expire);
    if (strcmp(key, "queue_order_strategy") == 0) {
        int i = enum_index(queue_orders, v);
        if (i < 0) return fail_choices(c, name, queue_orders, v);
        t->queue_order_strategy = (config_queue_order)i;
        return 0;
    }
    if (strcmp(key, "sep") == 0 || strcmp(key, "global_keyprefix") == 0) {
        int is_sep = key[0] == 's';
        if (!is_str(v) || (is_sep && v->u.string.len == 0))
            return fail(c, v, "%s must be a %sstring, got %s", name, is_sep ? "non-empty " : "",
                        got(v, g, sizeof g));
        set_str(is_sep ? &t->transport_sep : &t->global_keyprefix, v->u.string.ptr);
        return 0;
    }
    warn(c, v, "unknown broker_transport_options key '%s' ignored", key);
    return 0;
}

/* The dict replaces the whole option set, as in Celery: keys left out go
 * back to their defaults. Parsed into a scratch config, committed at the end. */
static int parse_transport(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    ptel_config t;
    config_init_defaults(&t);
    if (v->type != PJ_NULL && v->type != PJ_OBJECT) {
        config_free(&t);
        return fail_want(c, s, v, "a dict");
    }
    for (size_t i = 0; v->type == PJ_OBJECT && i < v->u.object.len; i++) {
        const pj_member *m = &v->u.object.members[i];
        if (transport_key(&t, m->key.ptr, m->value, c) != 0) {
            config_free(&t);
            return -1;
        }
    }
    cfg->visibility_timeout = t.visibility_timeout;
    memcpy(cfg->priority_steps, t.priority_steps, sizeof t.priority_steps);
    cfg->priority_steps_count = t.priority_steps_count;
    cfg->queue_order_strategy = t.queue_order_strategy;
    cfg->unacked_mutex_expire = t.unacked_mutex_expire;
    set_str(&cfg->transport_sep, t.transport_sep);
    set_str(&cfg->global_keyprefix, t.global_keyprefix);
    pj_free(cfg->transport_options_raw);
    cfg->transport_options_raw = v->type == PJ_NULL ? NULL : pj_clone(v);
    config_free(&t);
    return 0;
}

/* ---- Parsers: task_annotations -------------------------------------------- */

static void overrides_init(task_overrides *o)
{
    memset(o, 0, sizeof *o);
    o->acks_late = o->reject_on_worker_lost = o->ignore_result = -1;
}

static void annotations_free(config_annotation *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].task_name);
        free(a[i].o.rate_limit);
    }
    free(a);
}

/* Celery's rate(): "N", "N/s", "N/m", "N/h" (celery.utils.time.rate). */
static int parse_rate(const char *text, double *per_s)
{
    const char *slash = strchr(text, '/');
    size_t n = slash ? (size_t)(slash - text) : strlen(text);
    char num[64], *end;
    if (n == 0 || n >= sizeof num) return -1;
    memcpy(num, text, n);
    num[n] = '\0';
    errno = 0;
    double d = strtod(num, &end);
    if (*end || errno || !isfinite(d) || d < 0) return -1;
    if (!slash || strcmp(slash, "/s") == 0) *per_s = d;
    else if (strcmp(slash, "/m") == 0) *per_s = d / 60;
    else if (strcmp(slash, "/h") == 0) *per_s = d / 3600;
    else return -1;
    return 0;
}

static int annotation_rate(task_overrides *o, const char *name, const pj_value *v, load_ctx *c)
{
    char g[GOT_MAX + 8];
    buf b = BUF_INIT;
    double per_s = 0;
    if (v->type == PJ_STRING && is_str(v)) buf_puts(&b, v->u.string.ptr);
    else if (v->type == PJ_INT || v->type == PJ_FLOAT) pj_repr(&b, v);
    if (v->type != PJ_NULL && (b.len == 0 || parse_rate(buf_cstr(&b), &per_s) != 0)) {
        buf_free(&b);
        return fail(c, v, "%s must be a rate like '10/s', '10/m' or '10/h', a number or None, got %s",
                    name, got(v, g, sizeof g));
    }
    o->has_rate_limit = 1;
    free(o->rate_limit);
    o->rate_limit = v->type == PJ_NULL ? NULL : buf_detach(&b);
    o->rate_limit_per_s = per_s;
    buf_free(&b);
    return 0;
}

static int annotation_key(task_overrides *o, const char *task, const char *key, const pj_value *v,
                          load_ctx *c)
{
    static const char *const bools[] = {"acks_late", "reject_on_worker_lost", "ignore_result", NULL};
    char name[256], g[GOT_MAX + 8];
    snprintf(name, sizeof name, "task_annotations['%s']['%s']", task, key);
    for (int i = 0; bools[i]; i++) {
        if (strcmp(key, bools[i]) != 0) continue;
        if (v->type != PJ_BOOL) return fail(c, v, "%s must be True or False, got %s", name, got(v, g, sizeof g));
        int *field = i == 0 ? &o->acks_late : i == 1 ? &o->reject_on_worker_lost : &o->ignore_result;
        *field = v->u.boolean;
        return 0;
    }
    if (strcmp(key, "time_limit") == 0) {
        o->has_time_limit = 1;
        return check_seconds(c, name, v, 0, 1, &o->time_limit);
    }
    if (strcmp(key, "soft_time_limit") == 0) {
        o->has_soft_time_limit = 1;
        return check_seconds(c, name, v, 0, 1, &o->soft_time_limit);
    }
    if (strcmp(key, "rate_limit") == 0) return annotation_rate(o, name, v, c);
    warn(c, v, "unknown task_annotations attribute '%s' for '%s' ignored", key, task);
    return 0;
}

/* Fills in from `from` what `into` did not set: the specific entry wins. */
static void overrides_inherit(task_overrides *into, const task_overrides *from)
{
    if (into->acks_late < 0) into->acks_late = from->acks_late;
    if (into->reject_on_worker_lost < 0) into->reject_on_worker_lost = from->reject_on_worker_lost;
    if (into->ignore_result < 0) into->ignore_result = from->ignore_result;
    if (!into->has_time_limit) {
        into->has_time_limit = from->has_time_limit;
        into->time_limit = from->time_limit;
    }
    if (!into->has_soft_time_limit) {
        into->has_soft_time_limit = from->has_soft_time_limit;
        into->soft_time_limit = from->soft_time_limit;
    }
    if (!into->has_rate_limit && from->has_rate_limit) {
        into->has_rate_limit = 1;
        into->rate_limit = from->rate_limit ? xstrdup(from->rate_limit) : NULL;
        into->rate_limit_per_s = from->rate_limit_per_s;
    }
}

static int annotation_entry(config_annotation *a, const pj_member *m, load_ctx *c)
{
    char g[GOT_MAX + 8];
    a->task_name = xstrdup(m->key.ptr);
    overrides_init(&a->o);
    if (m->key.len == 0 || strlen(m->key.ptr) != m->key.len) {
        pj_value *key = pj_new_stringn(m->key.ptr, m->key.len);
        fail(c, m->value, "task_annotations keys must be task names or '*', got %s",
             got(key, g, sizeof g));
        pj_free(key);
        return -1;
    }
    if (m->value->type != PJ_OBJECT)
        return fail(c, m->value, "task_annotations['%s'] must be a dict of task attributes, got %s",
                    m->key.ptr, got(m->value, g, sizeof g));
    for (size_t i = 0; i < m->value->u.object.len; i++) {
        const pj_member *k = &m->value->u.object.members[i];
        if (annotation_key(&a->o, m->key.ptr, k->key.ptr, k->value, c) != 0) return -1;
    }
    return 0;
}

static int parse_annotations(ptel_config *cfg, const setting *s, const pj_value *v, load_ctx *c)
{
    config_annotation *list = NULL, *star = NULL;
    size_t n = 0;
    if (v->type != PJ_NULL && v->type != PJ_OBJECT)
        return fail_want(c, s, v, "a dict of task name -> dict of attributes, or None");
    if (v->type == PJ_OBJECT && v->u.object.len > 0) {
        list = xcalloc(v->u.object.len, sizeof *list);
        for (; n < v->u.object.len; n++) {
            if (annotation_entry(&list[n], &v->u.object.members[n], c) != 0) {
                annotations_free(list, n + 1);
                return -1;
            }
            if (strcmp(list[n].task_name, "*") == 0) star = &list[n];
        }
    }
    for (size_t i = 0; star && i < n; i++)
        if (&list[i] != star) overrides_inherit(&list[i].o, &star->o);
    annotations_free(cfg->annotations, cfg->annotations_count);
    cfg->annotations = list;
    cfg->annotations_count = n;
    pj_free(cfg->task_annotations_raw);
    cfg->task_annotations_raw = v->type == PJ_NULL ? NULL : pj_clone(v);
    return 0;
}

/* ---- Renderers (typed field -> pj_value, for `inspect conf`) ------------- */

static pj_value *render_string(const ptel_config *cfg, const setting *s)
{
    const char *v = *CFIELD(cfg, s, char *);
    return v ? pj_new_string(v) : pj_new_null();
}

static pj_value *render_enum(const ptel_config *cfg, const setting *s)
{
    return pj_new_string(s->choices[*CFIELD(cfg, s, int)]);
}

static pj_value *render_bool(const ptel_config *cfg, const setting *s)
{
    return pj_new_bool(*CFIELD(cfg, s, int));
}

static pj_value *render_int(const ptel_config *cfg, const setting *s)
{
    return pj_new_int(*CFIELD(cfg, s, long long));
}

static pj_value *render_int_or_none(const ptel_config *cfg, const setting *s)
{
    long long n = *CFIELD(cfg, s, long long);
    return n < 0 ? pj_new_null() : pj_new_int(n);
}

static pj_value *render_port(const ptel_config *cfg, const setting *s)
{
    int n = *CFIELD(cfg, s, int);
    return n == 0 ? pj_new_null() : pj_new_int(n);
}

static pj_value *render_secs(const ptel_config *cfg, const setting *s)
{
    double d = *CFIELD(cfg, s, double);
    return d < 0 ? pj_new_null() : render_seconds(d);
}

static pj_value *render_list(const ptel_config *cfg, const setting *s)
{
    return render_strlist(CFIELD(cfg, s, config_strlist));
}

static pj_value *render_control_allow(const ptel_config *cfg, const setting *s)
{
    (void)s;
    if (!cfg->has_worker_control_allow) return pj_new_null();
    return render_strlist(&cfg->worker_control_allow);
}

static pj_value *render_transport(const ptel_config *cfg, const setting *s)
{
    (void)s;
    if (cfg->transport_options_raw) return pj_clone(cfg->transport_options_raw);
    pj_value *o = pj_new_object(), *steps = pj_new_array();
    for (size_t i = 0; i < cfg->priority_steps_count; i++)
        pj_array_append(steps, pj_new_int(cfg->priority_steps[i]));
    pj_object_set(o, "visibility_timeout", render_seconds(cfg->visibility_timeout));
    pj_object_set(o, "priority_steps", steps);
    pj_object_set(o, "sep", pj_new_string(cfg->transport_sep));
    pj_object_set(o, "queue_order_strategy", pj_new_string(queue_orders[cfg->queue_order_strategy]));
    pj_object_set(o, "global_keyprefix", pj_new_string(cfg->global_keyprefix));
    pj_object_set(o, "unacked_mutex_expire", pj_new_int(cfg->unacked_mutex_expire));
    return o;
}

static pj_value *render_annotations(const ptel_config *cfg, const setting *s)
{
    (void)s;
    return cfg->task_annotations_raw ? pj_clone(cfg->task_annotations_raw) : pj_new_null();
}

/* ---- The settings table ---------------------------------------------------- */

static const char *const unknown_task_names[] = {"requeue", "reject", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};
static const char *const insert_format_names[] = {"auto", "RowBinary", "JSONEachRow", NULL};

#define INT32_CAP 2147483647LL
#define ROW(n, p, r, t, lo, hi, ch) {#n, p, r, t, offsetof(ptel_config, n), lo, hi, ch}
#define STR(n)        ROW(n, parse_string, render_string, TXT_STRING, 0, 0, NULL)
#define REDIS_URL(n)  ROW(n, parse_redis_url, render_string, TXT_STRING, 0, 0, NULL)
#define BOOL(n)       ROW(n, parse_bool, render_bool, TXT_BOOL, 0, 0, NULL)
#define INT(n, lo, hi) ROW(n, parse_int, render_int, TXT_LITERAL, lo, hi, NULL)
#define SECS(n, lo)   ROW(n, parse_seconds, render_secs, TXT_LITERAL, lo, 0, NULL)
#define SECS_NONE(n)  ROW(n, parse_seconds_or_none, render_secs, TXT_LITERAL, 0, 0, NULL)
#define ENUM(n, ch)   ROW(n, parse_enum, render_enum, TXT_STRING, 0, 0, ch)

static const setting settings[] = {
    /* broker & queues */
    REDIS_URL(broker_url),
    STR(task_default_queue),
    ROW(task_queues, parse_queues, render_list, TXT_LIST, 0, 0, NULL),
    INT(worker_prefetch_multiplier, 0, INT32_CAP),
    {"broker_transport_options", parse_transport, render_transport, TXT_LITERAL, 0, 0, 0, NULL},
    /* execution */
    INT(worker_concurrency, 1, CONFIG_MAX_CONCURRENCY),
    BOOL(task_acks_late),
    BOOL(task_reject_on_worker_lost),
    BOOL(task_acks_on_failure_or_timeout),
    SECS_NONE(task_time_limit),
    SECS_NONE(task_soft_time_limit),
    ROW(accept_content, parse_accept_content, render_list, TXT_LIST, 0, 0, NULL),
    ROW(task_serializer, parse_serializer, render_string, TXT_STRING, 0, 0, NULL),
    {"task_annotations", parse_annotations, render_annotations, TXT_LITERAL, 0, 0, 0, NULL},
    ENUM(worker_unknown_task, unknown_task_names),
    SECS(worker_shutdown_grace, 0),
    INT(worker_max_message_bytes, 1, CONFIG_MAX_MESSAGE_BYTES),
    INT(worker_max_eta_messages, 0, INT32_CAP),
    /* results */
    REDIS_URL(result_backend),
    BOOL(task_track_started),
    BOOL(task_ignore_result),
    ROW(result_expires, parse_int_or_none, render_int_or_none, TXT_LITERAL, 0, INT32_CAP, NULL),
    /* events / control / process */
    BOOL(worker_send_task_events),
    ROW(worker_control_allow, parse_control_allow, render_control_allow, TXT_LIST, 0, 0, NULL),
    ROW(worker_statedb, parse_string_or_none, render_string, TXT_STRING_OR_NONE, 0, 0, NULL),
    ENUM(worker_log_format, log_format_names),
    ROW(worker_metrics_port, parse_port, render_port, TXT_LITERAL, 0, 0, NULL),
    ROW(timezone, parse_ignored, render_string, TXT_STRING_OR_NONE, 0, 0, NULL),
    ROW(enable_utc, parse_ignored, render_bool, TXT_BOOL, 0, 0, NULL),
    /* ClickHouse */
    ROW(clickhouse_url, parse_clickhouse_url, render_string, TXT_STRING, 0, 0, NULL),
    ROW(clickhouse_table, parse_table_name, render_string, TXT_STRING, 0, 0, NULL),
    SECS(clickhouse_connect_timeout, 1),
    SECS(clickhouse_timeout, 1),
    ENUM(clickhouse_insert_format, insert_format_names),
    ROW(clickhouse_gzip_min_bytes, parse_bytes_or_none, render_int_or_none, TXT_LITERAL, 0,
        INT32_CAP, NULL),
    /* telemetry drain */
    REDIS_URL(telemetry_redis_url),
    STR(telemetry_stream_pattern),
    STR(telemetry_consumer_group),
    STR(telemetry_dlq_stream),
    INT(telemetry_dlq_maxlen, 1, INT32_CAP),
    INT(telemetry_read_count, 1, INT32_CAP),
    INT(telemetry_block_ms, 0, INT32_CAP),
    INT(telemetry_batch_max_rows, 1, INT32_CAP),
    INT(telemetry_batch_max_bytes, 1, CONFIG_MAX_MESSAGE_BYTES),
    INT(telemetry_batch_max_ms, 1, INT32_CAP),
    INT(telemetry_reclaim_idle_ms, 1, INT32_CAP),
    INT(telemetry_max_deliveries, 1, INT32_CAP),
    INT(telemetry_stream_refresh_s, 1, INT32_CAP),
    INT(telemetry_retention_days, 1, 36500),
    INT(telemetry_rollup_ttl_days, 1, 36500),
    SECS(telemetry_backoff_max_s, 1),
};
#define NSETTINGS (sizeof settings / sizeof settings[0])
/* Enum fields are read and written through int pointers (parse_enum). */
_Static_assert(sizeof(config_unknown_task) == sizeof(int) && sizeof(log_format) == sizeof(int) &&
               sizeof(config_insert_format) == sizeof(int), "enum fields must be int-sized");
_Static_assert(NSETTINGS <= sizeof(((ptel_config *)0)->explicit_set), "explicit_set too small");

static int setting_index(const char *name)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].name, name) == 0) return (int)i;
    return -1;
}

static int is_explicit(const ptel_config *cfg, const char *name)
{
    return cfg->explicit_set[setting_index(name)];
}

/* result_backend and telemetry_redis_url follow broker_url, task_queues
 * follows task_default_queue, until a layer sets them. */
static void derive_defaults(ptel_config *cfg)
{
    if (!is_explicit(cfg, "result_backend")) set_str(&cfg->result_backend, cfg->broker_url);
    if (!is_explicit(cfg, "telemetry_redis_url")) set_str(&cfg->telemetry_redis_url, cfg->broker_url);
    if (!is_explicit(cfg, "task_queues")) {
        strlist_free(&cfg->task_queues);
        strlist_push(&cfg->task_queues, cfg->task_default_queue);
    }
}

static int apply_setting(ptel_config *cfg, int idx, const pj_value *v, load_ctx *c)
{
    const setting *s = &settings[idx];
    if (s->parse(cfg, s, v, c) != 0) return -1;
    cfg->explicit_set[idx] = !(v->type == PJ_NULL && s->parse == parse_queues);
    derive_defaults(cfg);
    return 0;
}

/* ---- Lifecycle ------------------------------------------------------------ */

void config_init_defaults(ptel_config *cfg)
{
    static const int steps[] = {0, 3, 6, 9};
    memset(cfg, 0, sizeof *cfg);
    cfg->broker_url = xstrdup("redis://localhost:6379/0");
    cfg->task_default_queue = xstrdup("ingest");
    cfg->worker_prefetch_multiplier = 4;
    cfg->visibility_timeout = 3600;
    memcpy(cfg->priority_steps, steps, sizeof steps);
    cfg->priority_steps_count = sizeof steps / sizeof steps[0];
    cfg->transport_sep = xstrdup("\x06\x16");     /* kombu's redis PRIORITY_SEP default */
    cfg->queue_order_strategy = QUEUE_ORDER_ROUND_ROBIN;
    cfg->global_keyprefix = xstrdup("");
    cfg->unacked_mutex_expire = 300;

    cfg->worker_concurrency = 2;
    cfg->task_acks_on_failure_or_timeout = 1;
    cfg->task_time_limit = -1;
    cfg->task_soft_time_limit = -1;
    strlist_push(&cfg->accept_content, "json");
    strlist_push(&cfg->accept_content, "msgpack");
    cfg->task_serializer = xstrdup("json");
    cfg->worker_unknown_task = UNKNOWN_TASK_REQUEUE;
    cfg->worker_shutdown_grace = 30;
    cfg->worker_max_message_bytes = 8LL * 1024 * 1024;
    cfg->worker_max_eta_messages = 10000;

    cfg->result_expires = 86400;
    cfg->worker_log_format = LOG_FORMAT_TEXT;
    cfg->enable_utc = 1;

    cfg->clickhouse_url = xstrdup("http://localhost:8123/default");
    cfg->clickhouse_table = xstrdup("product_telemetry_events");
    cfg->clickhouse_connect_timeout = 5;
    cfg->clickhouse_timeout = 60;
    cfg->clickhouse_insert_format = CH_INSERT_AUTO;
    cfg->clickhouse_gzip_min_bytes = -1;   /* None: the client decides by host */

    cfg->telemetry_stream_pattern = xstrdup("product-telemetry:*:events");
    cfg->telemetry_consumer_group = xstrdup("product-telemetry-consumers");
    cfg->telemetry_dlq_stream = xstrdup("product-telemetry:dlq");
    cfg->telemetry_dlq_maxlen = 100000;
    cfg->telemetry_read_count = 100;   /* bounds the read reply in memory */
    cfg->telemetry_block_ms = 1000;
    cfg->telemetry_batch_max_rows = 10000;   /* two batches in memory: drain.c overlap */
    cfg->telemetry_batch_max_bytes = 4LL * 1024 * 1024;
    cfg->telemetry_batch_max_ms = 1000;
    cfg->telemetry_reclaim_idle_ms = 60000;
    cfg->telemetry_max_deliveries = 5;
    cfg->telemetry_stream_refresh_s = 30;
    cfg->telemetry_retention_days = 180;
    cfg->telemetry_rollup_ttl_days = 730;   /* CH_ROLLUP_TTL_DAYS_DEFAULT */
    cfg->telemetry_backoff_max_s = 30;
    derive_defaults(cfg);
}

void config_free(ptel_config *cfg)
{
    char **strings[] = {
        &cfg->broker_url, &cfg->task_default_queue, &cfg->transport_sep, &cfg->global_keyprefix,
        &cfg->task_serializer, &cfg->result_backend, &cfg->worker_statedb, &cfg->timezone,
        &cfg->clickhouse_url, &cfg->clickhouse_table, &cfg->telemetry_redis_url,
        &cfg->telemetry_stream_pattern, &cfg->telemetry_consumer_group, &cfg->telemetry_dlq_stream,
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) free(*strings[i]);
    strlist_free(&cfg->task_queues);
    strlist_free(&cfg->accept_content);
    strlist_free(&cfg->worker_control_allow);
    annotations_free(cfg->annotations, cfg->annotations_count);
    pj_free(cfg->transport_options_raw);
    pj_free(cfg->task_annotations_raw);
    memset(cfg, 0, sizeof *cfg);
}

/* ---- Loaders -------------------------------------------------------------- */

int config_load_file(ptel_config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read config file: %s", path, strerror(errno));
        return -1;
    }
    char *text = xmalloc(CONFIG_MAX_FILE_BYTES + 1);
    size_t n = fread(text, 1, CONFIG_MAX_FILE_BYTES + 1, f);
    int rerr = ferror(f);
    fclose(f);
    int rc = -1;
    if (rerr) snprintf(err, errlen, "%s: cannot read config file: read error", path);
    else if (n > CONFIG_MAX_FILE_BYTES)
        snprintf(err, errlen, "%s: config file is larger than %d bytes", path, CONFIG_MAX_FILE_BYTES);
    else rc = load_text(cfg, path, text, n, err, errlen);
    free(text);
    return rc;
}

int config_load_string(ptel_config *cfg, const char *filename, const char *text, size_t len,
                       char *err, size_t errlen)
{
    return load_text(cfg, filename, text, len, err, errlen);
}

int config_apply_env(ptel_config *cfg, char *err, size_t errlen)
{
    static const struct { const char *var, *setting; } env[] = {
        {"CELERY_BROKER_URL", "broker_url"},
        {"CELERY_RESULT_BACKEND", "result_backend"},
        {"REDIS_URL", "telemetry_redis_url"},
        {"CLICKHOUSE_URL", "clickhouse_url"},
    };
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) {
        const char *text = getenv(env[i].var);
        if (!text || !*text) continue;
        load_ctx c = {SRC_ENV, env[i].var, 0, NULL, 0, 0, err, errlen};
        pj_value *v = pj_new_string(text);
        int rc = apply_setting(cfg, setting_index(env[i].setting), v, &c);
        pj_free(v);
        if (rc != 0) return -1;
    }
    return 0;
}

static pj_value *text_bool(const char *t)
{
    static const char *const yes[] = {"true", "yes", "on", "1", NULL};
    static const char *const no[] = {"false", "no", "off", "0", NULL};
    for (int i = 0; yes[i]; i++) {
        if (strcasecmp(t, yes[i]) == 0) return pj_new_bool(1);
        if (strcasecmp(t, no[i]) == 0) return pj_new_bool(0);
    }
    return pj_new_string(t);
}

/* "a, b,,c" -> ['a', 'b', 'c'], as celery's -Q splits. */
static pj_value *text_list(const char *t)
{
    if (strcmp(t, "None") == 0) return pj_new_null();
    pj_value *a = pj_new_array();
    while (*t) {
        size_t n = strcspn(t, ",");
        const char *s = t, *e = t + n;
        while (s < e && (*s == ' ' || *s == '\t')) s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e > s) pj_array_append(a, pj_new_stringn(s, (size_t)(e - s)));
        t += n + (t[n] == ',');
    }
    return a;
}

static pj_value *text_value(const setting *s, const char *t)
{
    char scratch[8];
    pj_value *v;
    switch (s->text) {
    case TXT_STRING: return pj_new_string(t);
    case TXT_STRING_OR_NONE:
        return (!*t || strcmp(t, "None") == 0) ? pj_new_null() : pj_new_string(t);
    case TXT_BOOL: return text_bool(t);
    case TXT_LIST: return text_list(t);
    case TXT_LITERAL:
        /* Not a literal: hand over the text so the message says "got 'two'". */
        v = parse_literal_text(t, scratch, sizeof scratch);
        return v ? v : pj_new_string(t);
    }
    return pj_new_string(t);
}

int config_set(ptel_config *cfg, const char *name, const char *value_text, char *err, size_t errlen)
{
    int idx = setting_index(name);
    if (idx < 0) {
        snprintf(err, errlen, "unknown setting '%s'", name);
        return -1;
    }
    load_ctx c = {SRC_CLI, NULL, 0, NULL, 0, 0, err, errlen};
    pj_value *v = text_value(&settings[idx], value_text);
    int rc = apply_setting(cfg, idx, v, &c);
    pj_free(v);
    return rc;
}

/* ---- Queries -------------------------------------------------------------- */

const task_overrides *config_task_overrides(const ptel_config *cfg, const char *task_name)
{
    const task_overrides *star = NULL;
    for (size_t i = 0; i < cfg->annotations_count; i++) {
        const config_annotation *a = &cfg->annotations[i];
        if (strcmp(a->task_name, "*") == 0) star = &a->o;
        else if (strcmp(a->task_name, task_name) == 0) return &a->o;
    }
    return star;
}

void config_task_settings(const ptel_config *cfg, const char *task_name, task_settings *out)
{
    const task_overrides *o = config_task_overrides(cfg, task_name);
    out->acks_late = cfg->task_acks_late;
    out->reject_on_worker_lost = cfg->task_reject_on_worker_lost;
    out->ignore_result = cfg->task_ignore_result;
    out->time_limit = cfg->task_time_limit;
    out->soft_time_limit = cfg->task_soft_time_limit;
    out->rate_limit = NULL;
    out->rate_limit_per_s = 0;
    if (!o) return;
    if (o->acks_late >= 0) out->acks_late = o->acks_late;
    if (o->reject_on_worker_lost >= 0) out->reject_on_worker_lost = o->reject_on_worker_lost;
    if (o->ignore_result >= 0) out->ignore_result = o->ignore_result;
    if (o->has_time_limit) out->time_limit = o->time_limit;
    if (o->has_soft_time_limit) out->soft_time_limit = o->soft_time_limit;
    if (o->has_rate_limit) {
        out->rate_limit = o->rate_limit;
        out->rate_limit_per_s = o->rate_limit_per_s;
    }
}

/* Celery's filter_hidden_settings (celery/app/utils.py), recursively: keys
 * matching its HIDDEN_SETTINGS pattern are masked, URL passwords masked for
 * broker_url / *backend* keys; we also mask them in our own *_url settings. */
static int hidden_key(const char *key)
{
    static const char *const words[] = {"API", "TOKEN", "KEY", "SECRET", "PASS",
                                        "PROFANITIES_LIST", "SIGNATURE", "DATABASE", NULL};
    for (int i = 0; words[i]; i++)
        if (strcasestr(key, words[i])) return 1;
    return 0;
}

static int url_key(const char *key)
{
    size_t n = strlen(key);
    return strcasestr(key, "backend") || (n >= 4 && strcasecmp(key + n - 4, "_url") == 0);
}

static void censor(pj_value *obj)
{
    for (size_t i = 0; i < obj->u.object.len; i++) {
        pj_member *m = &obj->u.object.members[i];
        pj_value *repl = NULL;
        if (m->value->type == PJ_OBJECT) censor(m->value);
        else if (hidden_key(m->key.ptr)) repl = pj_new_string(CONFIG_REDACT_MASK);
        else if (url_key(m->key.ptr) && is_str(m->value)) {
            char *r = redact_url(m->value->u.string.ptr);
            repl = pj_new_string(r);
            free(r);
        }
        if (repl) {
            pj_free(m->value);
            m->value = repl;
        }
    }
}

pj_value *config_render_conf(const ptel_config *cfg, int with_defaults, int censored)
{
    pj_value *o = pj_new_object();
    for (size_t i = 0; i < NSETTINGS; i++)
        if (with_defaults || cfg->explicit_set[i])
            pj_object_set(o, settings[i].name, settings[i].render(cfg, &settings[i]));
    if (censored) censor(o);
    return o;
}

/* ---- The literal reader: tokens ------------------------------------------- */

/* Python's tokenizer, cut down to what literals need: newlines inside
 * brackets and after a backslash join lines, `#` starts a comment, blank and
 * comment-only lines are skipped, and an indented statement is an error. */
typedef enum { T_EOF, T_NEWLINE, T_NAME, T_VALUE, T_OP } tok_type;

typedef struct token {
    tok_type type;
    int line;
    const char *text;         /* source text of NAME / OP */
    size_t len;
    pj_value *value;          /* T_VALUE: owned until the parser takes it */
    int is_string;            /* T_VALUE came from a string literal */
} token;

typedef struct reader {
    const char *p, *end;
    int line;
    int depth;                /* open brackets; newlines inside are joined */
    int at_line_start;
    token tok;                /* the current token */
    load_ctx *c;
} reader;

static int rfail(reader *r, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int rfail(reader *r, int line, const char *fmt, ...)
{
    buf b = BUF_INIT;
    va_list ap;
    if (r->c->kind == SRC_FILE) buf_printf(&b, "%s:%d: ", r->c->where, line);
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    snprintf(r->c->err, r->c->errlen, "%s", buf_cstr(&b));
    buf_free(&b);
    return -1;
}

static void note_line(load_ctx *c, const pj_value *v, int line)
{
    if (c->nnotes == c->capnotes) {
        c->capnotes = c->capnotes ? c->capnotes * 2 : 16;
        c->notes = xrealloc(c->notes, c->capnotes * sizeof *c->notes);
    }
    c->notes[c->nnotes].v = v;
    c->notes[c->nnotes++].line = line;
}

static int is_ident_start(unsigned char ch)
{
    return ch == '_' || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') || ch >= 0x80;
}

static int is_ident_char(unsigned char ch)
{
    return is_ident_start(ch) || (ch >= '0' && ch <= '9');
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f') return (ch | 0x20) - 'a' + 10;
    return -1;
}

/* Code point -> UTF-8; surrogates keep their 3-byte form (pyjson.h's WTF-8). */
static void put_codepoint(buf *b, unsigned long cp)
{
    if (cp < 0x80) {
        buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        buf_putc(b, (char)(0xC0 | (cp >> 6)));
        buf_putc(b, (char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        buf_putc(b, (char)(0xE0 | (cp >> 12)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
        buf_putc(b, (char)(0x80 | (cp & 0x3F)));
    } else {
        buf_putc(b, (char)(0xF0 | (cp >> 18)));
        buf_putc(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
        buf_putc(b, (char)(0x80 | (cp & 0x3F)));
    }
}

/* After the backslash of a non-raw string: one escape (Python's table). */
static int lex_escape(reader *r, buf *out)
{
    char e = *r->p++;
    int digits = 0;
    switch (e) {
    case '\n': r->line++; return 0;            /* backslash-newline joins */
    case '\\': case '\'': case '"': buf_putc(out, e); return 0;
    case 'a': buf_putc(out, '\a'); return 0;
    case 'b': buf_putc(out, '\b'); return 0;
    case 'f': buf_putc(out, '\f'); return 0;
    case 'n': buf_putc(out, '\n'); return 0;
    case 'r': buf_putc(out, '\r'); return 0;
    case 't': buf_putc(out, '\t'); return 0;
    case 'v': buf_putc(out, '\v'); return 0;
    case 'x': digits = 2; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    case 'N': return rfail(r, r->line, "\\N{...} escapes are not supported; write the character itself");
    default:
        if (e >= '0' && e <= '7') {
            unsigned long v = (unsigned long)(e - '0');
            for (int i = 0; i < 2 && r->p < r->end && *r->p >= '0' && *r->p <= '7'; i++)
                v = v * 8 + (unsigned long)(*r->p++ - '0');
            put_codepoint(out, v);
            return 0;
        }
        /* Python keeps an unknown escape as is (with a SyntaxWarning). */
        buf_putc(out, '\\');
        buf_putc(out, e);
        if (e == '\r' || e == '\n') r->line++;
        return 0;
    }
    unsigned long cp = 0;
    for (int i = 0; i < digits; i++) {
        int h = r->p < r->end ? hexval(*r->p) : -1;
        if (h < 0) return rfail(r, r->line, "truncated \\%c escape in a string", e);
        cp = cp * 16 + (unsigned long)h;
        r->p++;
    }
    if (cp > 0x10FFFF) return rfail(r, r->line, "illegal Unicode character in \\U escape");
    put_codepoint(out, cp);
    return 0;
}

/* r->p is at the opening quote. */
static int lex_string(reader *r, int raw)
{
    char q = *r->p;
    int triple = r->end - r->p >= 3 && r->p[1] == q && r->p[2] == q;
    int start_line = r->line;
    buf out = BUF_INIT;
    r->p += triple ? 3 : 1;
    for (;;) {
        if (r->p >= r->end) {
            buf_free(&out);
            return rfail(r, start_line, "unterminated %sstring literal", triple ? "triple-quoted " : "");
        }
        char ch = *r->p;
        if (ch == q && (!triple || (r->end - r->p >= 3 && r->p[1] == q && r->p[2] == q))) {
            r->p += triple ? 3 : 1;
            break;
        }
        if (ch == '\n' && !triple) {
            buf_free(&out);
            return rfail(r, start_line, "unterminated string literal");
        }
        if (ch == '\\' && r->p + 1 < r->end) {
            r->p++;
            if (raw) {
                buf_putc(&out, '\\');
                if (*r->p == '\n') r->line++;
                buf_putc(&out, *r->p++);
            } else if (lex_escape(r, &out) != 0) {
                buf_free(&out);
                return -1;
            }
            continue;
        }
        if (ch == '\n') r->line++;
        buf_putc(&out, ch);
        r->p++;
    }
    r->tok.type = T_VALUE;
    r->tok.is_string = 1;
    r->tok.value = pj_new_stringn(out.data ? out.data : "", out.len);
    buf_free(&out);
    return 0;
}

/* Digits of one base with single underscores between them, as Python wants. */
static int scan_digits(reader *r, int base, buf *out)
{
    int n = 0, last_us = 0;
    while (r->p < r->end) {
        char ch = *r->p;
        int d = hexval(ch);
        if (ch == '_' && n > 0 && !last_us) {
            last_us = 1;
        } else if (d >= 0 && d < base) {
            buf_putc(out, ch);
            last_us = 0;
            n++;
        } else {
            break;
        }
        r->p++;
    }
    return last_us ? -1 : n;
}

static int lex_based_int(reader *r, int base)
{
    buf digits = BUF_INIT;
    unsigned long long v = 0;
    r->p += 2;
    if (r->p < r->end && *r->p == '_') r->p++;  /* 0x_ff is valid Python */
    int n = scan_digits(r, base, &digits);
    int bad = n <= 0 || (r->p < r->end && is_ident_char((unsigned char)*r->p));
    for (size_t i = 0; !bad && i < digits.len; i++) {
        unsigned long long d = (unsigned long long)hexval(digits.data[i]);
        if (v > (~0ULL - d) / (unsigned long long)base) {
            buf_free(&digits);
            return rfail(r, r->line, "integer literal too large (hex, octal and binary literals are limited to 64 bits)");
        }
        v = v * (unsigned long long)base + d;
    }
    buf_free(&digits);
    if (bad) return rfail(r, r->line, "invalid base-%d integer literal", base);
    char text[32];
    snprintf(text, sizeof text, "%llu", v);
    r->tok.type = T_VALUE;
    r->tok.value = pj_new_int_text(text);
    return 0;
}

static int lex_number(reader *r)
{
    if (*r->p == '0' && r->end - r->p > 1) {
        char b = (char)(r->p[1] | 0x20);
        if (b == 'x') return lex_based_int(r, 16);
        if (b == 'o') return lex_based_int(r, 8);
        if (b == 'b') return lex_based_int(r, 2);
    }
    buf t = BUF_INIT;
    int is_float = 0, bad = 0;
    int n = scan_digits(r, 10, &t);
    if (n < 0) bad = 1;
    if (r->p < r->end && *r->p == '.') {
        is_float = 1;
        buf_putc(&t, *r->p++);
        if (r->p < r->end && *r->p >= '0' && *r->p <= '9' && scan_digits(r, 10, &t) < 0) bad = 1;
    }
    if (r->p < r->end && (*r->p | 0x20) == 'e') {
        is_float = 1;
        buf_putc(&t, *r->p++);
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) buf_putc(&t, *r->p++);
        if (scan_digits(r, 10, &t) <= 0) bad = 1;
    }
    if (r->p < r->end && (*r->p | 0x20) == 'j') {
        buf_free(&t);
        return rfail(r, r->line, "complex numbers are not supported; %s", SUBSET);
    }
    if (bad || (r->p < r->end && is_ident_char((unsigned char)*r->p))) {
        buf_free(&t);
        return rfail(r, r->line, "invalid decimal literal");
    }
    const char *s = buf_cstr(&t);
    if (is_float) {
        r->tok.value = pj_new_float(strtod(s, NULL));
    } else {
        while (s[0] == '0' && s[1]) {
            if (s[1] != '0') {
                buf_free(&t);
                return rfail(r, r->line, "leading zeros in decimal integer literals are not permitted; "
                                         "use an 0o prefix for octal integers");
            }
            s++;
        }
        r->tok.value = pj_new_int_text(s);
    }
    r->tok.type = T_VALUE;
    buf_free(&t);
    return 0;
}

/* String prefixes Python allows before a quote; only r and u are ours. */
static int lex_prefixed(reader *r, const char *start, size_t n)
{
    int raw = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = (char)(start[i] | 0x20);
        if (ch == 'r') raw = 1;
        else if (ch == 'b') return rfail(r, r->line, "bytes literals are not supported; use a str");
        else if (ch == 'f') return rfail(r, r->line, "f-strings are not supported; %s", SUBSET);
    }
    return lex_string(r, raw);
}

static int is_string_prefix(const char *s, size_t n)
{
    static const char *const prefixes[] = {"r", "u", "b", "f", "br", "rb", "fr", "rf", NULL};
    for (int i = 0; prefixes[i]; i++)
        if (strlen(prefixes[i]) == n && strncasecmp(s, prefixes[i], n) == 0) return 1;
    return 0;
}

static void token_clear(token *t)
{
    pj_free(t->value);
    memset(t, 0, sizeof *t);
}

/* Skips blank and comment-only lines at the start of a logical line; an
 * indented statement is Python's "unexpected indent". */
static int skip_blank_lines(reader *r)
{
    while (r->at_line_start && r->depth == 0) {
        const char *q = r->p;
        while (q < r->end && (*q == ' ' || *q == '\t' || *q == '\f')) q++;
        if (q < r->end && *q == '#') while (q < r->end && *q != '\n') q++;
        if (q < r->end && *q == '\r') q++;
        if (q < r->end && *q == '\n') {
            r->p = q + 1;
            r->line++;
            continue;
        }
        if (q > r->p && q < r->end) return rfail(r, r->line, "unexpected indent");
        r->p = q;
        r->at_line_start = 0;
    }
    return 0;
}

static int next_token(reader *r)
{
    token_clear(&r->tok);
    if (skip_blank_lines(r) != 0) return -1;
    for (;;) {
        while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\f' || *r->p == '\r')) r->p++;
        if (r->p < r->end && *r->p == '#') while (r->p < r->end && *r->p != '\n') r->p++;
        if (r->end - r->p >= 2 && r->p[0] == '\\' && r->p[1] == '\n') {
            r->p += 2;
            r->line++;
            continue;
        }
        if (r->p < r->end && *r->p == '\n' && r->depth > 0) {
            r->p++;
            r->line++;
            continue;
        }
        break;
    }
    r->tok.line = r->line;
    r->tok.text = r->p;
    if (r->p >= r->end) {
        r->tok.type = T_EOF;
        return 0;
    }
    unsigned char ch = (unsigned char)*r->p;
    if (ch == '\n') {
        r->p++;
        r->line++;
        r->at_line_start = 1;
        r->tok.type = T_NEWLINE;
        return 0;
    }
    if (is_ident_start(ch)) {
        const char *s = r->p;
        while (r->p < r->end && is_ident_char((unsigned char)*r->p)) r->p++;
        size_t n = (size_t)(r->p - s);
        if (r->p < r->end && (*r->p == '\'' || *r->p == '"') && is_string_prefix(s, n))
            return lex_prefixed(r, s, n);
        r->tok.type = T_NAME;
        r->tok.len = n;
        return 0;
    }
    if ((ch >= '0' && ch <= '9') || (ch == '.' && r->end - r->p > 1 && r->p[1] >= '0' && r->p[1] <= '9'))
        return lex_number(r);
    if (ch == '\'' || ch == '"') return lex_string(r, 0);
    if (ch == '\\') return rfail(r, r->line, "unexpected character after line continuation character");
    /* An operator: one character, or two when Python has that operator. */
    static const char *const two[] = {"==", "!=", "<=", ">=", "**", "//", "<<", ">>", "->", ":=",
                                      "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", NULL};
    r->tok.type = T_OP;
    r->tok.len = 1;
    for (int i = 0; two[i] && r->end - r->p >= 2; i++)
        if (r->p[0] == two[i][0] && r->p[1] == two[i][1]) r->tok.len = 2;
    if (r->tok.len == 1 && strchr("([{", ch)) r->depth++;
    if (r->tok.len == 1 && strchr(")]}", ch) && r->depth > 0) r->depth--;
    r->p += r->tok.len;
    return 0;
}

/* ---- The literal reader: values ------------------------------------------- */

static int tok_is(const reader *r, const char *op)
{
    return r->tok.type == T_OP && r->tok.len == strlen(op) && strncmp(r->tok.text, op, r->tok.len) == 0;
}

static int name_is(const reader *r, const char *name)
{
    return r->tok.type == T_NAME && r->tok.len == strlen(name) && strncmp(r->tok.text, name, r->tok.len) == 0;
}

static pj_value *take(reader *r)
{
    pj_value *v = r->tok.value;
    r->tok.value = NULL;
    return v;
}

/* The message for a token that cannot start or continue a value. */
static int unexpected(reader *r, const char *expected)
{
    if (r->tok.type == T_EOF) return rfail(r, r->tok.line, "unexpected end of file, expected %s", expected);
    if (r->tok.type == T_NEWLINE) return rfail(r, r->tok.line, "unexpected end of line, expected %s", expected);
    if (name_is(r, "for")) return rfail(r, r->tok.line, "comprehensions are not supported; %s", SUBSET);
    if (r->tok.type == T_OP && strchr("([", r->tok.text[0]) && r->tok.len == 1)
        return rfail(r, r->tok.line, "function calls and subscripts are not supported; %s", SUBSET);
    if (r->tok.type == T_OP && !strchr(",:)]}", r->tok.text[0]))
        return rfail(r, r->tok.line, "expressions (operator '%.*s') are not supported; %s",
                     (int)r->tok.len, r->tok.text, SUBSET);
    return rfail(r, r->tok.line, "unexpected '%.*s', expected %s", (int)(r->tok.len ? r->tok.len : 1),
                 r->tok.text, expected);
}

static pj_value *parse_value(reader *r, int depth);

/* Items up to the closing bracket; r->tok is the first token after the
 * opener. Used for lists, tuples (after their first item) and dicts. */
static pj_value *parse_items(reader *r, pj_value *into, char close, int depth, int open_line, int is_dict)
{
    char want[64];
    snprintf(want, sizeof want, "',' or '%c'", close);
    while (!(r->tok.type == T_OP && r->tok.len == 1 && r->tok.text[0] == close)) {
        if (r->tok.type == T_EOF) {
            rfail(r, open_line, "'%c' was never closed", close == ']' ? '[' : close == ')' ? '(' : '{');
            goto fail;
        }
        int key_line = r->tok.line;
        pj_value *item = parse_value(r, depth + 1);
        if (!item) goto fail;
        if (is_dict) {
            if (!tok_is(r, ":")) {
                pj_free(item);
                if (tok_is(r, ",") || tok_is(r, "}"))
                    rfail(r, key_line, "set literals are not supported; %s", SUBSET);
                else unexpected(r, "':'");
                goto fail;
            }
            if (!is_str(item)) {
                char g[GOT_MAX + 8];
                rfail(r, key_line, "dict keys must be strings, got %s", got(item, g, sizeof g));
                pj_free(item);
                goto fail;
            }
            if (next_token(r) != 0) { pj_free(item); goto fail; }
            pj_value *val = parse_value(r, depth + 1);
            if (!val) { pj_free(item); goto fail; }
            pj_object_set(into, item->u.string.ptr, val);
            pj_free(item);
        } else {
            pj_array_append(into, item);
        }
        if (tok_is(r, ",")) {
            if (next_token(r) != 0) goto fail;
        } else if (!(r->tok.type == T_OP && r->tok.len == 1 && r->tok.text[0] == close)) {
            if (r->tok.type == T_EOF) continue;   /* reported as never closed */
            unexpected(r, want);
            goto fail;
        }
    }
    if (next_token(r) != 0) goto fail;
    return into;
fail:
    pj_free(into);
    return NULL;
}

/* '(' seen: (), (x) and tuples. */
static pj_value *parse_paren(reader *r, int depth, int open_line)
{
    if (tok_is(r, ")")) {
        if (next_token(r) != 0) return NULL;
        return pj_new_array();
    }
    pj_value *first = parse_value(r, depth + 1);
    if (!first) return NULL;
    if (tok_is(r, ")")) {
        if (next_token(r) != 0) { pj_free(first); return NULL; }
        return first;
    }
    if (!tok_is(r, ",")) {
        pj_free(first);
        if (r->tok.type == T_EOF) rfail(r, open_line, "'(' was never closed");
        else unexpected(r, "',' or ')'");
        return NULL;
    }
    pj_value *tuple = pj_new_array();
    pj_array_append(tuple, first);
    if (next_token(r) != 0) { pj_free(tuple); return NULL; }
    return parse_items(r, tuple, ')', depth, open_line, 0);
}

/* -5, +5, --5: Python folds unary signs on number literals. */
static pj_value *parse_signed(reader *r)
{
    int neg = 0, line = r->tok.line;
    while (tok_is(r, "-") || tok_is(r, "+")) {
        neg ^= r->tok.text[0] == '-';
        if (next_token(r) != 0) return NULL;
    }
    if (r->tok.type != T_VALUE || r->tok.is_string) {
        rfail(r, line, "expressions (unary operator) are not supported; %s", SUBSET);
        return NULL;
    }
    pj_value *v = take(r);
    if (neg && v->type == PJ_FLOAT) v->u.number = -v->u.number;
    if (neg && v->type == PJ_INT && strcmp(v->u.int_text, "0") != 0) {
        buf b = BUF_INIT;
        buf_printf(&b, "-%s", v->u.int_text);
        pj_free(v);
        v = pj_new_int_text(buf_cstr(&b));
        buf_free(&b);
    }
    if (next_token(r) != 0) { pj_free(v); return NULL; }
    return v;
}

/* Adjacent string literals concatenate, as in Python. */
static pj_value *parse_strings(reader *r)
{
    buf b = BUF_INIT;
    while (r->tok.type == T_VALUE && r->tok.is_string) {
        buf_append(&b, r->tok.value->u.string.ptr, r->tok.value->u.string.len);
        if (next_token(r) != 0) { buf_free(&b); return NULL; }
    }
    pj_value *v = pj_new_stringn(b.data ? b.data : "", b.len);
    buf_free(&b);
    return v;
}

static pj_value *parse_name_value(reader *r)
{
    pj_value *v = NULL;
    if (name_is(r, "True")) v = pj_new_bool(1);
    else if (name_is(r, "False")) v = pj_new_bool(0);
    else if (name_is(r, "None")) v = pj_new_null();
    if (v) {
        if (next_token(r) != 0) { pj_free(v); return NULL; }
        return v;
    }
    rfail(r, r->tok.line, "'%.*s' is not a literal: names, calls and expressions are not supported; %s",
          (int)r->tok.len, r->tok.text, SUBSET);
    return NULL;
}

static pj_value *parse_value(reader *r, int depth)
{
    int line = r->tok.line;
    pj_value *v = NULL;
    if (depth > CONFIG_MAX_NESTING) {
        rfail(r, line, "values nested deeper than %d brackets are not supported", CONFIG_MAX_NESTING);
        return NULL;
    }
    if (r->tok.type == T_VALUE && r->tok.is_string) {
        v = parse_strings(r);
    } else if (r->tok.type == T_VALUE) {
        v = take(r);
        if (next_token(r) != 0) { pj_free(v); return NULL; }
    } else if (tok_is(r, "-") || tok_is(r, "+")) {
        v = parse_signed(r);
    } else if (r->tok.type == T_NAME) {
        v = parse_name_value(r);
    } else if (tok_is(r, "[") || tok_is(r, "{") || tok_is(r, "(")) {
        char open = r->tok.text[0];
        if (next_token(r) != 0) return NULL;
        if (open == '(') v = parse_paren(r, depth, line);
        else v = parse_items(r, open == '[' ? pj_new_array() : pj_new_object(),
                             open == '[' ? ']' : '}', depth, line, open == '{');
    } else {
        unexpected(r, "a value");
        return NULL;
    }
    if (v) note_line(r->c, v, line);
    return v;
}

/* ---- The literal reader: statements --------------------------------------- */

static int is_keyword(const reader *r)
{
    static const char *const kw[] = {"and", "as", "assert", "async", "await", "break", "class",
        "continue", "def", "del", "elif", "else", "except", "finally", "for", "from", "global",
        "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return",
        "try", "while", "with", "yield", NULL};
    for (int i = 0; kw[i]; i++)
        if (name_is(r, kw[i])) return 1;
    return 0;
}

/* After `name`: why this is not `name = literal`. */
static int not_an_assignment(reader *r, int name_line)
{
    if (tok_is(r, "(")) return rfail(r, name_line, "function calls are not supported; %s", SUBSET);
    if (tok_is(r, ".")) return rfail(r, name_line, "attribute access is not supported; %s", SUBSET);
    if (tok_is(r, ":")) return rfail(r, name_line, "annotated assignments are not supported; %s", SUBSET);
    if (tok_is(r, ",")) return rfail(r, name_line, "unpacking assignments are not supported; %s", SUBSET);
    if (r->tok.type == T_OP && r->tok.len == 2 && r->tok.text[1] == '=' && r->tok.text[0] != '=')
        return rfail(r, name_line, "augmented assignment '%.*s' is not supported; %s",
                     (int)r->tok.len, r->tok.text, SUBSET);
    return rfail(r, name_line, "expected '=' after the setting name; %s", SUBSET);
}

/* name = value[, value...]  (a bare tuple is valid Python too) */
static pj_value *parse_rhs(reader *r)
{
    int line = r->tok.line;
    pj_value *v = parse_value(r, 0);
    if (!v || !tok_is(r, ",")) return v;
    pj_value *tuple = pj_new_array();
    pj_array_append(tuple, v);
    while (tok_is(r, ",")) {
        if (next_token(r) != 0) goto fail;
        if (r->tok.type == T_NEWLINE || r->tok.type == T_EOF) break;
        if (!(v = parse_value(r, 0))) goto fail;
        pj_array_append(tuple, v);
    }
    note_line(r->c, tuple, line);
    return tuple;
fail:
    pj_free(tuple);
    return NULL;
}

static int end_of_statement(reader *r)
{
    if (r->tok.type == T_NEWLINE || r->tok.type == T_EOF) return 0;
    if (tok_is(r, ";")) return rfail(r, r->tok.line, "';' between statements is not supported; put each setting on its own line");
    if (tok_is(r, "=")) return rfail(r, r->tok.line, "chained assignments are not supported; %s", SUBSET);
    if (tok_is(r, ")") || tok_is(r, "]") || tok_is(r, "}"))
        return rfail(r, r->tok.line, "unmatched '%c'", r->tok.text[0]);
    return unexpected(r, "the end of the line");
}

/* What to do with each `name = value`: apply it to a config, or collect it. */
typedef int (*statement_fn)(void *arg, reader *r, const char *name, pj_value *v);

static int apply_statement(void *arg, reader *r, const char *name, pj_value *v)
{
    int idx = setting_index(name);
    if (idx < 0) {
        log_warning("%s:%d: unknown setting '%s' ignored", r->c->where, r->c->line, name);
        return 0;
    }
    return apply_setting(arg, idx, v, r->c);
}

static int collect_statement(void *arg, reader *r, const char *name, pj_value *v)
{
    (void)r;
    pj_object_set(arg, name, pj_clone(v));
    return 0;
}

static int parse_statement(reader *r, statement_fn fn, void *arg)
{
    char name[128];
    int line = r->tok.line, rc = -1;
    if (name_is(r, "import") || name_is(r, "from"))
        return rfail(r, line, "import statements are not supported; %s", SUBSET);
    if (is_keyword(r))
        return rfail(r, line, "'%.*s' statements are not supported; %s", (int)r->tok.len, r->tok.text, SUBSET);
    if (r->tok.len >= sizeof name) return rfail(r, line, "setting name too long");
    snprintf(name, sizeof name, "%.*s", (int)r->tok.len, r->tok.text);
    if (next_token(r) != 0) return -1;
    if (!tok_is(r, "=")) return not_an_assignment(r, line);
    if (next_token(r) != 0) return -1;
    r->c->line = line;
    r->c->nnotes = 0;
    pj_value *v = parse_rhs(r);
    if (v && end_of_statement(r) == 0) rc = fn(arg, r, name, v);
    pj_free(v);
    return rc;
}

/* Python reads source as UTF-8 and refuses NUL bytes. */
static int check_source(reader *r)
{
    int line = 1;
    const unsigned char *p = (const unsigned char *)r->p, *end = (const unsigned char *)r->end;
    while (p < end) {
        size_t n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        if (*p == 0) return rfail(r, line, "source code cannot contain null bytes");
        if (*p == '\n') line++;
        int ok = n > 0 && (size_t)(end - p) >= n && !(n == 2 && *p < 0xC2);
        for (size_t i = 1; ok && i < n; i++) ok = (p[i] & 0xC0) == 0x80;
        if (ok && n == 3) {
            unsigned cp = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6);
            ok = cp >= 0x800 && !(cp >= 0xD800 && cp <= 0xDFFF);
        }
        if (ok && n == 4) {
            unsigned cp = ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12);
            ok = cp >= 0x10000 && cp <= 0x10FFFF;
        }
        if (!ok) return rfail(r, line, "invalid UTF-8 in the config file");
        p += n;
    }
    return 0;
}

static int read_statements(const char *filename, const char *text, size_t len, statement_fn fn,
                           void *arg, char *err, size_t errlen)
{
    load_ctx c = {SRC_FILE, filename, 1, NULL, 0, 0, err, errlen};
    reader r;
    memset(&r, 0, sizeof r);
    r.p = text;
    r.end = text + len;
    r.line = 1;
    r.at_line_start = 1;
    r.c = &c;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) r.p += 3;   /* UTF-8 BOM */
    int rc = check_source(&r);
    if (rc == 0) rc = next_token(&r);
    while (rc == 0 && r.tok.type != T_EOF) {
        if (r.tok.type == T_NEWLINE) {
            rc = next_token(&r);
        } else if (r.tok.type == T_NAME && !name_is(&r, "True") && !name_is(&r, "False") && !name_is(&r, "None")) {
            rc = parse_statement(&r, fn, arg);
        } else if (r.tok.type == T_VALUE && r.tok.is_string) {
            /* A docstring: a bare string statement is valid Python and does nothing. */
            pj_value *doc = parse_strings(&r);
            rc = doc ? end_of_statement(&r) : -1;
            pj_free(doc);
        } else {
            rc = rfail(&r, r.tok.line, "expected a setting name; %s", SUBSET);
        }
    }
    token_clear(&r.tok);
    free(c.notes);
    return rc;
}

static int load_text(ptel_config *cfg, const char *filename, const char *text, size_t len,
                     char *err, size_t errlen)
{
    return read_statements(filename, text, len, apply_statement, cfg, err, errlen);
}

int config_read_literals(const char *filename, const char *text, size_t len, pj_value **out,
                         char *err, size_t errlen)
{
    *out = pj_new_object();
    if (read_statements(filename, text, len, collect_statement, *out, err, errlen) == 0) return 0;
    pj_free(*out);
    *out = NULL;
    return -1;
}

/* One literal from CLI text ("4", "{'a': 1}"); NULL if it is not one. */
static pj_value *parse_literal_text(const char *text, char *err, size_t errlen)
{
    load_ctx c = {SRC_CLI, NULL, 1, NULL, 0, 0, err, errlen};
    reader r;
    memset(&r, 0, sizeof r);
    r.p = text;
    r.end = text + strlen(text);
    r.line = 1;
    r.c = &c;
    pj_value *v = NULL;
    if (next_token(&r) == 0 && (v = parse_value(&r, 0)) && r.tok.type != T_EOF) {
        pj_free(v);
        v = NULL;
    }
    token_clear(&r.tok);
    free(c.notes);
    return v;
}
