/* worker/remote.c: events, remote control handlers, mingle and the revoked
 * set (see remote.h for what this file owns and the hook contract).
 *
 * Reply values copy Celery 5.2.6's shapes (PROTOCOL §8.3 and the captures in
 * inspect/): key order, the strings in {"ok": ...}, Python reprs in
 * {"error": ...}. The wire (envelopes, delivery, filtering) is
 * broker/control.c's; the event bytes are broker/events.c's. */
#include "worker/remote.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "broker/control.h"
#include "broker/events.h"
#include "common/log.h"
#include "common/mem.h"

/* Hash buckets of the revoked set (a power of two, about the set's bound). */
#define REVOKED_BUCKETS 65536
/* Celery's timer priority shown by `inspect scheduled` (PROTOCOL §8.3). */
#define SCHEDULED_PRIORITY 6
/* `heartbeat` control command: the one-off heartbeat announces this freq. */
#define HEARTBEAT_COMMAND_FREQ 5
/* Terminated ids remembered until their task-revoked is sent (signum). */
#define REMOTE_TERMINATED_MAX 1024
/* Redis commands issued by handlers (add_consumer's binding) time out. */
#define REMOTE_REDIS_TIMEOUT_S 10.0

/* ---- Revoked set: Celery's LimitedSet ---------------------------------------- */

typedef struct revoked_entry {
    char *id;
    double ts;                       /* time_monotonic() when revoked (Celery's
                                        value; shared by all processes of a host) */
    struct revoked_entry *hnext;     /* bucket chain */
    struct revoked_entry *prev, *next;   /* insertion order */
} revoked_entry;

typedef struct revoked_set {
    revoked_entry **buckets;
    revoked_entry *head, *tail;
    size_t n;
} revoked_set;

static unsigned long hash_id(const char *s)
{
    unsigned long h = 1469598103934665603UL;   /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211UL;
    return h & (REVOKED_BUCKETS - 1);
}

static revoked_entry *rs_find(const revoked_set *s, const char *id)
{
    for (revoked_entry *e = s->buckets[hash_id(id)]; e; e = e->hnext)
        if (strcmp(e->id, id) == 0) return e;
    return NULL;
}

static void rs_unlink(revoked_set *s, revoked_entry *e)
{
    revoked_entry **p = &s->buckets[hash_id(e->id)];
    while (*p != e) p = &(*p)->hnext;
    *p = e->hnext;
    if (e->prev) e->prev->next = e->next;
    else s->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else s->tail = e->prev;
    s->n--;
    free(e->id);
    free(e);
}

/* Add or refresh; the oldest entry goes when the set is full. Returns 1 when
 * the id is new. */
static int rs_add(revoked_set *s, const char *id, double ts)
{
    revoked_entry *e = rs_find(s, id);
    if (e) {
        e->ts = ts;
        return 0;
    }
    if (s->n >= REMOTE_REVOKED_MAX) rs_unlink(s, s->head);
    e = xcalloc(1, sizeof *e);
    e->id = xstrdup(id);
    e->ts = ts;
    unsigned long h = hash_id(id);
    e->hnext = s->buckets[h];
    s->buckets[h] = e;
    e->prev = s->tail;
    if (s->tail) s->tail->next = e;
    else s->head = e;
    s->tail = e;
    s->n++;
    return 1;
}

static void rs_purge(revoked_set *s, double now_mono)
{
    for (revoked_entry *e = s->head, *next; e; e = next) {
        next = e->next;
        if (now_mono - e->ts > REMOTE_REVOKED_EXPIRES_S) rs_unlink(s, e);
    }
}

static void rs_init(revoked_set *s)
{
    memset(s, 0, sizeof *s);
    s->buckets = xcalloc(REVOKED_BUCKETS, sizeof *s->buckets);
}

static void rs_free(revoked_set *s)
{
    while (s->head) rs_unlink(s, s->head);
    free(s->buckets);
    s->buckets = NULL;
}

/* {id: [ts, id], ...}: LimitedSet._data as mingle sends it (PROTOCOL §9). */
static pj_value *rs_to_json(const revoked_set *s)
{
    pj_value *o = pj_new_object();
    for (const revoked_entry *e = s->head; e; e = e->next) {
        pj_value *pair = pj_new_array();
        pj_array_append(pair, pj_new_float(e->ts));
        pj_array_append(pair, pj_new_string(e->id));
        pj_object_set(o, e->id, pair);
    }
    return o;
}

/* Python's str() of a JSON-decoded value, for error messages. */
static void py_str(buf *out, const pj_value *v)
{
    if (v->type == PJ_STRING) buf_append(out, v->u.string.ptr, v->u.string.len);
    else pj_repr(out, v);
}

static const char *py_type_name(const pj_value *v)
{
    switch (v->type) {
    case PJ_NULL: return "NoneType";
    case PJ_BOOL: return "bool";
    case PJ_INT: return "int";
    case PJ_FLOAT: return "float";
    case PJ_STRING: return "str";
    case PJ_ARRAY: return "list";
    default: return "dict";
    }
}

/* LimitedSet.update(dict or list). Entries before a bad one stay added, as
 * in Python. Returns 0, or -1 with Python's ValueError text in *error. */
static int rs_update(revoked_set *s, const pj_value *other, double now_mono, buf *error)
{
    if (other->type == PJ_ARRAY) {
        for (size_t i = 0; i < other->u.array.len; i++)
            if (other->u.array.items[i]->type == PJ_STRING)
                rs_add(s, other->u.array.items[i]->u.string.ptr, now_mono);
        return 0;
    }
    if (other->type != PJ_OBJECT) return 0;
    for (size_t i = 0; i < other->u.object.len; i++) {
        const pj_member *m = &other->u.object.members[i];
        const pj_value *ts = m->value;
        if (ts->type == PJ_ARRAY && ts->u.array.len) ts = ts->u.array.items[0];
        if (ts->type != PJ_FLOAT) {
            buf msg = BUF_INIT;
            buf_printf(&msg, "Expecting float timestamp, got type <class '%s'> with value: ",
                       py_type_name(ts));
            py_str(&msg, ts);
            buf_puts(error, "ValueError(");
            pj_value *text = pj_new_string(buf_cstr(&msg));
            pj_repr(error, text);
            pj_free(text);
            buf_putc(error, ')');
            buf_free(&msg);
            return -1;
        }
        rs_add(s, m->key.ptr, ts->u.number);
    }
    return 0;
}

/* ---- State ------------------------------------------------------------------- */

typedef struct name_count {
    char *name;
    long long count;
} name_count;

typedef struct rate_entry {
    char *task;
    int overridden;             /* set by `rate_limit` (wins over the config) */
    char *limit;                /* overridden text, NULL = disabled */
    double per_s;               /* overridden rate, 0 = none */
    double bucket_per_s;        /* the rate next_free_us was computed with */
    int64_t next_free_us;       /* token bucket of capacity 1 (Celery's TokenBucket) */
} rate_entry;

typedef struct time_entry {
    char *task;
    double soft, hard;          /* < 0 = None */
} time_entry;

typedef struct queue_entry {
    char *queue, *exchange, *exchange_type, *routing_key;
} queue_entry;

typedef struct term_entry {
    char *id;
    int signum;
} term_entry;

struct remote_state {
    worker *w;
    lamport_clock app_clock, mailbox_clock;
    event_publisher *events;
    control_node *node;
    int events_all;             /* -E or worker_send_task_events: the switch is fixed */
    int offline_sent;
    int64_t next_heartbeat_us, next_purge_us, next_save_us;
    atomic_int shutdown_requested;
    atomic_int pool_delta;
    redisContext *ctl;          /* handlers' connection (control thread only) */

    pthread_mutex_t lock;       /* everything below */
    revoked_set revoked;
    int revoked_dirty;
    name_count *totals;
    size_t n_totals;
    long long processed;
    long long *slot_writes;     /* tasks started per slot index (stats pool.writes) */
    int n_slot_writes;
    rate_entry *rates;
    size_t n_rates;
    time_entry *times;
    size_t n_times;
    queue_entry *queues;        /* queues added by add_consumer, with their exchange */
    size_t n_queues;
    term_entry *terms;          /* ids terminated by revoke, with the signal asked */
    size_t n_terms;
};

/* ---- Small helpers ------------------------------------------------------------ */

static pj_value *ok(const char *text)
{
    pj_value *v = pj_new_object();
    pj_object_set(v, "ok", pj_new_string(text));
    return v;
}

static pj_value *nok(const char *text)
{
    pj_value *v = pj_new_object();
    pj_object_set(v, "error", pj_new_string(text));
    return v;
}

/* {"error": "<Type>('<text>')"} with Python's quoting of the text. */
static pj_value *py_exception(const char *type, const char *text)
{
    buf b = BUF_INIT;
    buf_printf(&b, "%s(", type);
    pj_value *s = pj_new_string(text);
    pj_repr(&b, s);
    pj_free(s);
    buf_putc(&b, ')');
    pj_value *v = nok(buf_cstr(&b));
    buf_free(&b);
    return v;
}

/* Python's TypeError for a handler called without a required argument. */
static pj_value *missing_argument(const char *method, const char *arg)
{
    buf b = BUF_INIT;
    buf_printf(&b, "%s() missing 1 required positional argument: '%s'", method, arg);
    pj_value *v = py_exception("TypeError", buf_cstr(&b));
    buf_free(&b);
    return v;
}

static int arg_bool(const pj_value *args, const char *key, int dflt)
{
    const pj_value *v = pj_object_get(args, key);
    if (!v || v->type == PJ_NULL) return dflt;
    if (v->type == PJ_BOOL) return v->u.boolean;
    if (v->type == PJ_STRING)   /* celery.utils.serialization.strtobool */
        return strcasecmp(v->u.string.ptr, "true") == 0 || strcasecmp(v->u.string.ptr, "yes") == 0 ||
               strcasecmp(v->u.string.ptr, "on") == 0 || strcmp(v->u.string.ptr, "1") == 0;
    double d;
    return pj_number_value(v, &d) == 0 ? d != 0 : dflt;
}

static long long arg_int(const pj_value *args, const char *key, long long dflt)
{
    const pj_value *v = pj_object_get(args, key);
    double d;
    if (v && v->type == PJ_STRING) return strtoll(v->u.string.ptr, NULL, 10);
    if (v && pj_number_value(v, &d) == 0) return (long long)d;
    return dflt;
}

/* Number or numeric string -> seconds; null/absent -> -1 (None). */
static double arg_seconds(const pj_value *args, const char *key)
{
    const pj_value *v = pj_object_get(args, key);
    double d;
    if (v && v->type == PJ_STRING) return strtod(v->u.string.ptr, NULL);
    if (v && pj_number_value(v, &d) == 0) return d;
    return -1;
}

/* celery.utils.functional.maybe_list: a string or a list of strings. */
static pj_value *arg_id_list(const pj_value *args, const char *key)
{
    const pj_value *v = pj_object_get(args, key);
    pj_value *out = pj_new_array();
    if (!v) return out;
    if (v->type == PJ_STRING) {
        pj_array_append(out, pj_clone(v));
    } else if (v->type == PJ_ARRAY) {
        for (size_t i = 0; i < v->u.array.len; i++)
            if (v->u.array.items[i]->type == PJ_STRING)
                pj_array_append(out, pj_clone(v->u.array.items[i]));
    }
    return out;
}

static name_count *find_count(name_count **arr, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*arr)[i].name, name) == 0) return &(*arr)[i];
    *arr = xrealloc(*arr, (*n + 1) * sizeof **arr);
    (*arr)[*n] = (name_count){xstrdup(name), 0};
    return &(*arr)[(*n)++];
}

/* lock held. */
static rate_entry *find_rate(remote_state *r, const char *task, int create)
{
    for (size_t i = 0; i < r->n_rates; i++)
        if (strcmp(r->rates[i].task, task) == 0) return &r->rates[i];
    if (!create) return NULL;
    r->rates = xrealloc(r->rates, (r->n_rates + 1) * sizeof *r->rates);
    r->rates[r->n_rates] = (rate_entry){.task = xstrdup(task)};
    return &r->rates[r->n_rates++];
}

/* lock held. */
static time_entry *find_time(remote_state *r, const char *task)
{
    for (size_t i = 0; i < r->n_times; i++)
        if (strcmp(r->times[i].task, task) == 0) return &r->times[i];
    return NULL;
}

/* Python's repr(tuple(args)): "()", "(1,)", "(1, 'a')". */
static void tuple_repr(buf *out, const pj_value *args)
{
    buf_putc(out, '(');
    size_t n = args && args->type == PJ_ARRAY ? args->u.array.len : 0;
    for (size_t i = 0; i < n; i++) {
        if (i) buf_puts(out, ", ");
        pj_repr(out, args->u.array.items[i]);
    }
    if (n == 1) buf_putc(out, ',');
    buf_putc(out, ')');
}

static pj_value *str_or_null(const char *s)
{
    return s ? pj_new_string(s) : pj_new_null();
}

static double us_to_s(int64_t us)
{
    return (double)us / (double)USEC_PER_SEC;
}

/* ---- Events --------------------------------------------------------------------- */

static pj_value *uuid_fields(const job *j)
{
    pj_value *f = pj_new_object();
    pj_object_set(f, "uuid", pj_new_string(j->msg.id ? j->msg.id : ""));
    return f;
}

/* Celery's load_average(): each value rounded *up* to 2 decimals. */
static pj_value *loadavg(void)
{
    double l[3] = {0, 0, 0};
    if (getloadavg(l, 3) != 3) l[0] = l[1] = l[2] = 0;
    pj_value *a = pj_new_array();
    for (int i = 0; i < 3; i++) pj_array_append(a, pj_new_float(ceil(l[i] * 100.0) / 100.0));
    return a;
}

static void add_software_info(pj_value *f)
{
    pj_object_set(f, "sw_ident", pj_new_string(EVENTS_SW_IDENT));
    pj_object_set(f, "sw_ver", pj_new_string(EVENTS_SW_VER));
    pj_object_set(f, "sw_sys", pj_new_string(EVENTS_SW_SYS));
}

static long long processed_count(remote_state *r)
{
    pthread_mutex_lock(&r->lock);
    long long n = r->processed;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* worker-online / worker-heartbeat / worker-offline (PROTOCOL §7.2). */
static void send_worker_event(remote_state *r, const char *type)
{
    pj_value *f = pj_new_object();
    pj_object_set(f, "freq", pj_new_float(EVENTS_HEARTBEAT_FREQ));
    pj_object_set(f, "active", pj_new_int(pool_active(r->w)));
    pj_object_set(f, "processed", pj_new_int(processed_count(r)));
    pj_object_set(f, "loadavg", loadavg());
    add_software_info(f);
    events_send(r->events, type, f);
}

/* ---- Request info (inspect active/reserved/scheduled/query_task) ---------------- */

/* Celery's Request.info(). time_start < 0 = null; worker_pid 0 = null. */
static pj_value *request_info(const worker *w, const job *j, double time_start, int acknowledged,
                              int worker_pid, int safe)
{
    const task_message *m = &j->msg;
    pj_value *o = pj_new_object();
    pj_object_set(o, "id", str_or_null(m->id));
    pj_object_set(o, "name", str_or_null(m->task));
    if (safe) {
        buf a = BUF_INIT;
        if (m->argsrepr) buf_puts(&a, m->argsrepr);
        else tuple_repr(&a, m->args);
        pj_object_set(o, "args", pj_new_string(buf_cstr(&a)));
        buf_reset(&a);
        if (m->kwargsrepr) buf_puts(&a, m->kwargsrepr);
        else if (m->kwargs) pj_repr(&a, m->kwargs);
        else buf_puts(&a, "{}");
        pj_object_set(o, "kwargs", pj_new_string(buf_cstr(&a)));
        buf_free(&a);
    } else {
        pj_object_set(o, "args", m->args ? pj_clone(m->args) : pj_new_array());
        pj_object_set(o, "kwargs", m->kwargs ? pj_clone(m->kwargs) : pj_new_object());
    }
    pj_object_set(o, "type", str_or_null(m->task));
    pj_object_set(o, "hostname", pj_new_string(w->hostname));
    pj_object_set(o, "time_start", time_start < 0 ? pj_new_null() : pj_new_float(time_start));
    pj_object_set(o, "acknowledged", pj_new_bool(acknowledged));
    pj_value *di = pj_new_object();
    pj_object_set(di, "exchange", pj_new_string(m->exchange ? m->exchange : ""));
    pj_object_set(di, "routing_key", str_or_null(m->routing_key));
    pj_object_set(di, "priority", pj_new_int(m->priority));
    pj_object_set(di, "redelivered", m->redelivered ? pj_new_bool(1) : pj_new_null());
    pj_object_set(o, "delivery_info", di);
    pj_object_set(o, "worker_pid", worker_pid ? pj_new_int(worker_pid) : pj_new_null());
    return o;
}

/* w->lock held. */
static int slot_is_active(const slot *s)
{
    return s->status == SLOT_RUNNING && s->current && !s->abandoned;
}

static pj_value *active_info(const worker *w, const slot *s, int safe)
{
    return request_info(w, s->current, us_to_s(s->started_us), s->current->acked, (int)getpid(),
                        safe);
}

/* ---- Inspect commands ------------------------------------------------------------ */

typedef pj_value *(*handler_fn)(remote_state *r, const pj_value *args, int *no_reply);

static pj_value *h_ping(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)r, (void)args, (void)no_reply;
    return ok("pong");
}

static pj_value *h_clock(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    pj_value *v = pj_new_object();
    pj_object_set(v, "clock", pj_new_int((long long)lamport_value(&r->app_clock)));
    return v;
}

static pj_value *h_active(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    worker *w = r->w;
    int safe = arg_bool(args, "safe", 0);
    pj_value *list = pj_new_array();
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n_slots; i++)
        if (slot_is_active(w->slots[i])) pj_array_append(list, active_info(w, w->slots[i], safe));
    pthread_mutex_unlock(&w->lock);
    return list;
}

static pj_value *h_reserved(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    worker *w = r->w;
    pj_value *list = pj_new_array();
    pthread_mutex_lock(&w->lock);
    for (const job *j = w->ready_head; j; j = j->next)
        pj_array_append(list, request_info(w, j, -1, 0, 0, 0));
    pthread_mutex_unlock(&w->lock);
    return list;
}

static pj_value *h_scheduled(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    worker *w = r->w;
    pj_value *list = pj_new_array();
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < w->n_eta; i++) {
        const job *j = w->eta[i];
        pj_value *o = pj_new_object();
        buf eta = BUF_INIT;
        time_format_iso_offset(&eta, j->msg.eta_us);
        pj_object_set(o, "eta", pj_new_string(buf_cstr(&eta)));
        pj_object_set(o, "priority", pj_new_int(SCHEDULED_PRIORITY));
        pj_object_set(o, "request", request_info(w, j, -1, 0, 0, 0));
        pj_array_append(list, o);
        buf_free(&eta);
    }
    pthread_mutex_unlock(&w->lock);
    return list;
}

static pj_value *h_query_task(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    if (!pj_object_get(args, "ids")) return missing_argument("query_task", "ids");
    worker *w = r->w;
    pj_value *ids = arg_id_list(args, "ids");
    pj_value *out = pj_new_object();
    pthread_mutex_lock(&w->lock);
    for (size_t k = 0; k < ids->u.array.len; k++) {
        const char *id = ids->u.array.items[k]->u.string.ptr;
        pj_value *info = NULL;
        const char *state = NULL;
        for (int i = 0; i < w->n_slots && !info; i++) {
            slot *s = w->slots[i];
            if (slot_is_active(s) && s->current->msg.id && strcmp(s->current->msg.id, id) == 0) {
                info = active_info(w, s, 0);
                state = "active";
            }
        }
        for (const job *j = w->ready_head; j && !info; j = j->next) {
            if (j->msg.id && strcmp(j->msg.id, id) == 0) {
                info = request_info(w, j, -1, 0, 0, 0);
                state = "reserved";
            }
        }
        if (!info) continue;
        pj_value *pair = pj_new_array();
        pj_array_append(pair, pj_new_string(state));
        pj_array_append(pair, info);
        pj_object_set(out, id, pair);
    }
    pthread_mutex_unlock(&w->lock);
    pj_free(ids);
    return out;
}

static pj_value *h_revoked(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    pj_value *list = pj_new_array();
    pthread_mutex_lock(&r->lock);
    rs_purge(&r->revoked, time_monotonic());
    for (const revoked_entry *e = r->revoked.head; e; e = e->next)
        pj_array_append(list, pj_new_string(e->id));
    pthread_mutex_unlock(&r->lock);
    return list;
}

/* One "name [k=v ...]" line of `registered` (celery/worker/control.py). */
static pj_value *registered_entry(remote_state *r, const char *name, const pj_value *items)
{
    task_settings ts;
    config_task_settings(r->w->cfg, name, &ts);
    double soft = ts.soft_time_limit, hard = ts.time_limit;
    pthread_mutex_lock(&r->lock);
    const rate_entry *re = find_rate(r, name, 0);
    char *rate = re && re->overridden ? (re->limit ? xstrdup(re->limit) : NULL)
                                      : (ts.rate_limit ? xstrdup(ts.rate_limit) : NULL);
    const time_entry *te = find_time(r, name);
    if (te) soft = te->soft, hard = te->hard;
    pthread_mutex_unlock(&r->lock);

    buf line = BUF_INIT, info = BUF_INIT;
    for (size_t i = 0; i < items->u.array.len; i++) {
        const pj_value *it = items->u.array.items[i];
        if (it->type != PJ_STRING) continue;
        const char *k = it->u.string.ptr;
        size_t before = info.len;
        if (info.len) buf_putc(&info, ' ');
        if (strcmp(k, "rate_limit") == 0 && rate) buf_printf(&info, "rate_limit=%s", rate);
        else if (strcmp(k, "time_limit") == 0 && hard >= 0) {
            buf_puts(&info, "time_limit=");
            pj_float_repr(&info, hard);
        } else if (strcmp(k, "soft_time_limit") == 0 && soft >= 0) {
            buf_puts(&info, "soft_time_limit=");
            pj_float_repr(&info, soft);
        } else if (strcmp(k, "acks_late") == 0)
            buf_printf(&info, "acks_late=%s", ts.acks_late ? "True" : "False");
        else if (strcmp(k, "ignore_result") == 0)
            buf_printf(&info, "ignore_result=%s", ts.ignore_result ? "True" : "False");
        else {
            info.len = before;   /* None: not shown */
            if (info.data) info.data[info.len] = '\0';
        }
    }
    if (info.len) buf_printf(&line, "%s [%s]", name, buf_cstr(&info));
    else buf_puts(&line, name);
    pj_value *v = pj_new_string(buf_cstr(&line));
    buf_free(&line);
    buf_free(&info);
    free(rate);
    return v;
}

static pj_value *h_registered(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    pj_value *items = arg_id_list(args, "taskinfoitems");
    if (!items->u.array.len) {   /* DEFAULT_TASK_INFO_ITEMS */
        pj_array_append(items, pj_new_string("exchange"));
        pj_array_append(items, pj_new_string("routing_key"));
        pj_array_append(items, pj_new_string("rate_limit"));
    }
    int n;
    const task_def *defs = task_all(&n);   /* sorted by name */
    pj_value *list = pj_new_array();
    for (int i = 0; i < n; i++)
        if (strncmp(defs[i].name, "celery.", 7) != 0)
            pj_array_append(list, registered_entry(r, defs[i].name, items));
    pj_free(items);
    return list;
}

/* kombu Queue.as_dict(recurse=True). */
static pj_value *queue_dict(const char *name, const char *exchange, const char *type,
                            const char *routing_key)
{
    pj_value *ex = pj_new_object();
    pj_object_set(ex, "name", pj_new_string(exchange));
    pj_object_set(ex, "type", pj_new_string(type));
    pj_object_set(ex, "arguments", pj_new_null());
    pj_object_set(ex, "durable", pj_new_bool(1));
    pj_object_set(ex, "passive", pj_new_bool(0));
    pj_object_set(ex, "auto_delete", pj_new_bool(0));
    pj_object_set(ex, "delivery_mode", pj_new_null());
    pj_object_set(ex, "no_declare", pj_new_bool(0));
    pj_value *q = pj_new_object();
    pj_object_set(q, "name", pj_new_string(name));
    pj_object_set(q, "exchange", ex);
    pj_object_set(q, "routing_key", pj_new_string(routing_key));
    static const char *const nulls1[] = {"queue_arguments", "binding_arguments", "consumer_arguments"};
    for (size_t i = 0; i < 3; i++) pj_object_set(q, nulls1[i], pj_new_null());
    pj_object_set(q, "durable", pj_new_bool(1));
    pj_object_set(q, "exclusive", pj_new_bool(0));
    pj_object_set(q, "auto_delete", pj_new_bool(0));
    pj_object_set(q, "no_ack", pj_new_bool(0));
    pj_object_set(q, "alias", pj_new_null());
    pj_object_set(q, "bindings", pj_new_array());
    static const char *const nulls2[] = {"no_declare", "expires", "message_ttl", "max_length",
                                         "max_length_bytes", "max_priority"};
    for (size_t i = 0; i < 6; i++) pj_object_set(q, nulls2[i], pj_new_null());
    return q;
}

static pj_value *h_active_queues(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    worker *w = r->w;
    const char *dflt = w->cfg->task_default_queue;
    pj_value *list = pj_new_array();
    pthread_mutex_lock(&w->queues_lock);
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < w->queues.n; i++) {
        const char *name = w->queues.names[i];
        const queue_entry *qe = NULL;
        for (size_t k = 0; k < r->n_queues && !qe; k++)
            if (strcmp(r->queues[k].queue, name) == 0) qe = &r->queues[k];
        /* Configured queues are bound to the default exchange (PROTOCOL §5). */
        pj_array_append(list, qe ? queue_dict(name, qe->exchange, qe->exchange_type, qe->routing_key)
                                 : queue_dict(name, dflt, "direct", dflt));
    }
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_unlock(&w->queues_lock);
    return list;
}

static pj_value *h_conf(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    return config_render_conf(r->w->cfg, arg_bool(args, "with_defaults", 0), 1);
}

static pj_value *h_report(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    struct utsname u;
    uname(&u);
    char *backend = redis_url_redacted(&r->w->backend_url);
    buf b = BUF_INIT;
    buf_printf(&b, "\nsoftware -> ptel-worker:%s (celery-compatible %s) kombu:5.2.4 py:n/a\n"
                   "            billiard:n/a redis:hiredis\n"
                   "platform -> system:%s arch:%s\n            kernel version:%s imp:C\n"
                   "loader   -> ptel-worker (C, no Python app)\n"
                   "settings -> transport:redis results:%s\n\n",
               PTEL_VERSION, EVENTS_SW_VER, u.sysname, u.machine, u.release, backend);
    pj_value *conf = config_render_conf(r->w->cfg, 0, 1);
    for (size_t i = 0; i < conf->u.object.len; i++) {
        buf_printf(&b, "%s: ", conf->u.object.members[i].key.ptr);
        pj_repr(&b, conf->u.object.members[i].value);
        buf_putc(&b, '\n');
    }
    pj_free(conf);
    free(backend);
    pj_value *v = ok(buf_cstr(&b));
    buf_free(&b);
    return v;
}

static pj_value *rusage_dict(void)
{
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    getrusage(RUSAGE_SELF, &ru);
    pj_value *o = pj_new_object();
    pj_object_set(o, "utime", pj_new_float(ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6));
    pj_object_set(o, "stime", pj_new_float(ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6));
    const struct { const char *k; long v; } f[] = {
        {"maxrss", ru.ru_maxrss}, {"ixrss", ru.ru_ixrss}, {"idrss", ru.ru_idrss},
        {"isrss", ru.ru_isrss}, {"minflt", ru.ru_minflt}, {"majflt", ru.ru_majflt},
        {"nswap", ru.ru_nswap}, {"inblock", ru.ru_inblock}, {"oublock", ru.ru_oublock},
        {"msgsnd", ru.ru_msgsnd}, {"msgrcv", ru.ru_msgrcv}, {"nsignals", ru.ru_nsignals},
        {"nvcsw", ru.ru_nvcsw}, {"nivcsw", ru.ru_nivcsw},
    };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) pj_object_set(o, f[i].k, pj_new_int(f[i].v));
    return o;
}

static pj_value *broker_dict(const worker *w)
{
    const redis_url *u = &w->broker_url;
    pj_value *o = pj_new_object();
    pj_object_set(o, "hostname", pj_new_string(u->kind == REDIS_URL_TCP ? u->host : u->path));
    pj_object_set(o, "userid", str_or_null(u->username));
    char db[16];
    snprintf(db, sizeof db, "%d", u->db);
    pj_object_set(o, "virtual_host", pj_new_string(db));
    pj_object_set(o, "port", u->kind == REDIS_URL_TCP ? pj_new_int(u->port) : pj_new_null());
    pj_object_set(o, "insist", pj_new_bool(0));
    pj_object_set(o, "ssl", pj_new_bool(0));
    pj_object_set(o, "transport", pj_new_string(u->kind == REDIS_URL_TCP ? "redis" : "redis+socket"));
    pj_object_set(o, "connect_timeout", pj_new_int(4));
    pj_object_set(o, "transport_options", w->cfg->transport_options_raw
                  ? pj_clone(w->cfg->transport_options_raw) : pj_new_object());
    pj_object_set(o, "login_method", pj_new_null());
    pj_object_set(o, "uri_prefix", pj_new_null());
    pj_object_set(o, "heartbeat", pj_new_float(120.0));
    pj_object_set(o, "failover_strategy", pj_new_string("round-robin"));
    pj_object_set(o, "alternates", pj_new_array());
    return o;
}

/* "0.50" as celery's asynpool human_write_stats prints a share. */
static void share(buf *b, long long v, long long total)
{
    buf_printf(b, "%.2f", v && total ? (double)v / (double)total : 0.0);
}

/* The prefork pool's info (celery/concurrency/prefork.py + asynpool.py);
 * our slots are threads of this process, so every "process" is our pid. */
static pj_value *pool_dict(remote_state *r)
{
    worker *w = r->w;
    pthread_mutex_lock(&w->lock);
    int n = w->n_slots;
    int active = 0;
    for (int i = 0; i < n; i++) active += slot_is_active(w->slots[i]);
    pthread_mutex_unlock(&w->lock);
    pj_value *o = pj_new_object();
    pj_object_set(o, "max-concurrency", pj_new_int(n));
    pj_value *procs = pj_new_array();
    for (int i = 0; i < n; i++) pj_array_append(procs, pj_new_int((long long)getpid()));
    pj_object_set(o, "processes", procs);
    pj_object_set(o, "max-tasks-per-child", pj_new_string("N/A"));
    pj_object_set(o, "put-guarded-by-semaphore", pj_new_bool(0));
    pj_value *timeouts = pj_new_array();
    double soft = w->cfg->task_soft_time_limit, hard = w->cfg->task_time_limit;
    pj_array_append(timeouts, soft > 0 ? pj_new_float(soft) : pj_new_int(0));
    pj_array_append(timeouts, hard > 0 ? pj_new_float(hard) : pj_new_int(0));
    pj_object_set(o, "timeouts", timeouts);

    buf all = BUF_INIT, raw = BUF_INIT, avg = BUF_INIT;
    pthread_mutex_lock(&r->lock);
    long long total = 0;
    for (int i = 0; i < n; i++) total += i < r->n_slot_writes ? r->slot_writes[i] : 0;
    for (int i = 0; i < n; i++) {
        long long v = i < r->n_slot_writes ? r->slot_writes[i] : 0;
        if (i) {
            buf_puts(&all, ", ");
            buf_puts(&raw, ", ");
        }
        share(&all, v, total);
        buf_printf(&raw, "%lld", v);
    }
    pthread_mutex_unlock(&r->lock);
    buf_printf(&avg, "%.2f", total && n ? ((double)total / n) / (double)total : 0.0);
    pj_value *writes = pj_new_object();
    pj_object_set(writes, "total", pj_new_int(total));
    pj_object_set(writes, "avg", pj_new_string(buf_cstr(&avg)));
    pj_object_set(writes, "all", pj_new_string(buf_cstr(&all)));
    pj_object_set(writes, "raw", pj_new_string(buf_cstr(&raw)));
    pj_object_set(writes, "strategy", pj_new_string("fair"));
    pj_value *inq = pj_new_object();
    pj_object_set(inq, "total", pj_new_int(n));
    pj_object_set(inq, "active", pj_new_int(active));
    pj_object_set(writes, "inqueues", inq);
    pj_object_set(o, "writes", writes);
    buf_free(&all);
    buf_free(&raw);
    buf_free(&avg);
    return o;
}

static pj_value *h_stats(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    worker *w = r->w;
    pj_value *o = pj_new_object();
    pj_value *total = pj_new_object();
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n_totals; i++)
        pj_object_set(total, r->totals[i].name, pj_new_int(r->totals[i].count));
    pthread_mutex_unlock(&r->lock);
    pj_object_set(o, "total", total);
    pj_object_set(o, "pid", pj_new_int((long long)getpid()));
    char clock[32];
    snprintf(clock, sizeof clock, "%llu", lamport_value(&r->app_clock));
    pj_object_set(o, "clock", pj_new_string(clock));   /* a string, as Celery sends it */
    pj_object_set(o, "uptime", pj_new_int((time_now_us() - w->started_us) / USEC_PER_SEC));
    pj_object_set(o, "pool", pool_dict(r));
    pj_object_set(o, "broker", broker_dict(w));
    pthread_mutex_lock(&w->lock);
    long long prefetch = w->cfg->worker_prefetch_multiplier <= 0 ? 0
                         : (long long)worker_prefetch_limit(w);
    pthread_mutex_unlock(&w->lock);
    pj_object_set(o, "prefetch_count", pj_new_int(prefetch));
    pj_object_set(o, "rusage", rusage_dict());
    return o;
}

static pj_value *h_memsample(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)r, (void)args, (void)no_reply;
    return NULL;   /* Python without psutil answers None */
}

/* ---- Mingle, both sides ------------------------------------------------------------- */

static pj_value *h_hello(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    const char *from = pj_get_string(args, "from_node");
    if (!pj_object_get(args, "from_node")) return missing_argument("hello", "from_node");
    if (from && strcmp(from, r->w->hostname) == 0) return NULL;
    log_info("sync with %s", from ? from : "?");
    const pj_value *revoked = pj_object_get(args, "revoked");
    buf error = BUF_INIT;
    pj_value *reply = NULL;
    pthread_mutex_lock(&r->lock);
    double now = time_monotonic();
    if (revoked && rs_update(&r->revoked, revoked, now, &error) != 0) {
        reply = nok(buf_cstr(&error));
    } else {
        r->revoked_dirty = 1;
        rs_purge(&r->revoked, now);   /* do not send expired ids to the other worker */
        reply = pj_new_object();
        pj_object_set(reply, "revoked", rs_to_json(&r->revoked));
    }
    pthread_mutex_unlock(&r->lock);
    if (reply->type == PJ_OBJECT && !pj_object_get(reply, "error"))
        pj_object_set(reply, "clock", pj_new_int((long long)lamport_forward(&r->app_clock)));
    buf_free(&error);
    return reply;
}

typedef struct mingle_ctx {
    remote_state *r;
    int nodes;
} mingle_ctx;

static void on_hello_reply(void *ud, const char *node, const pj_value *value)
{
    mingle_ctx *m = ud;
    remote_state *r = m->r;
    if (strcmp(node, r->w->hostname) == 0 || !value || value->type != PJ_OBJECT) return;
    if (pj_object_get(value, "error")) {
        log_warning("mingle: sync with %s failed: %s", node, pj_get_string(value, "error"));
        return;
    }
    m->nodes++;
    log_debug("mingle: processing reply from %s", node);
    long long clock;
    const pj_value *c = pj_object_get(value, "clock");
    if (c && pj_int_value(c, &clock) == 0 && clock > 0) lamport_adjust(&r->app_clock, (unsigned long long)clock);
    else lamport_forward(&r->app_clock);
    const pj_value *revoked = pj_object_get(value, "revoked");
    if (!revoked) return;
    buf error = BUF_INIT;
    pthread_mutex_lock(&r->lock);
    if (rs_update(&r->revoked, revoked, time_monotonic(), &error) != 0)
        log_warning("mingle: sync with %s failed: %s", node, buf_cstr(&error));
    r->revoked_dirty = 1;
    pthread_mutex_unlock(&r->lock);
    buf_free(&error);
}

/* PROTOCOL §9: hello to everybody, 1 s of replies, merge clocks and revoked. */
static void mingle(remote_state *r)
{
    worker *w = r->w;
    if (!w->main_broker) return;
    log_info("mingle: searching for neighbors");
    pj_value *args = pj_new_object();
    pj_object_set(args, "from_node", pj_new_string(w->hostname));
    pthread_mutex_lock(&r->lock);
    pj_object_set(args, "revoked", rs_to_json(&r->revoked));
    pthread_mutex_unlock(&r->lock);
    mingle_ctx m = {r, 0};
    char err[256];
    int rc = control_call(w->main_broker, w->topts.global_keyprefix, w->broker_url.db,
                          &r->mailbox_clock, "hello", args, REMOTE_MINGLE_TIMEOUT_S,
                          on_hello_reply, &m, err, sizeof err);
    pj_free(args);
    if (rc < 0) log_warning("mingle: could not ask the other workers (%s); going on alone", err);
    else if (m.nodes) log_info("mingle: sync with %d nodes", m.nodes);
    else log_info("mingle: all alone");
}

/* ---- Control commands ------------------------------------------------------------------ */

static pj_value *h_enable_events(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    if (r->events_all || events_task_group(r->events)) return ok("task events already enabled");
    events_set_task_group(r->events, 1);
    log_info("Events of group {task} enabled by remote.");
    return ok("task events enabled");
}

/* With -E Celery's dispatcher has no group filter, so disabling finds no
 * "task" group and changes nothing (PROTOCOL §8.3). */
static pj_value *h_disable_events(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    if (r->events_all || !events_task_group(r->events)) return ok("task events already disabled");
    events_set_task_group(r->events, 0);
    log_info("Events of group {task} disabled by remote.");
    return ok("task events disabled");
}

static pj_value *h_heartbeat(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)args, (void)no_reply;
    log_debug("Heartbeat requested by remote.");
    pj_value *f = pj_new_object();
    pj_object_set(f, "freq", pj_new_int(HEARTBEAT_COMMAND_FREQ));
    add_software_info(f);
    events_send(r->events, "worker-heartbeat", f);
    return NULL;
}

/* celery.platforms.signals.signum: "TERM", "SIGKILL", 9 ... */
static int signum_of(const pj_value *v)
{
    long long n;
    if (v && pj_int_value(v, &n) == 0) return (int)n;
    if (!v || v->type != PJ_STRING) return SIGTERM;
    const char *s = v->u.string.ptr;
    if (strncasecmp(s, "SIG", 3) == 0) s += 3;
    static const struct { const char *name; int num; } sigs[] = {
        {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT}, {"QUIT", SIGQUIT},
        {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    };
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        if (strcasecmp(s, sigs[i].name) == 0) return sigs[i].num;
    return SIGTERM;
}

/* w->lock held: ask the slot running `id` to stop. 1 when the worker knows
 * the id (running or reserved), as Celery's request lookup. */
static int terminate_locked(worker *w, const char *id)
{
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = w->slots[i];
        if (slot_is_active(s) && s->current->msg.id && strcmp(s->current->msg.id, id) == 0) {
            atomic_store(&s->cancel, TASK_CANCEL_REVOKED);
            return 1;
        }
    }
    for (const job *j = w->ready_head; j; j = j->next)
        if (j->msg.id && strcmp(j->msg.id, id) == 0) return 1;   /* never starts: revoked */
    return 0;
}

/* Celery puts the ids in a set: a repeated id is reported once. */
static int seen_before(const pj_value *ids, size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (strcmp(ids->u.array.items[k]->u.string.ptr, ids->u.array.items[i]->u.string.ptr) == 0)
            return 1;
    return 0;
}

static pj_value *revoke_ids(remote_state *r, const pj_value *ids, int terminate, int signum)
{
    worker *w = r->w;
    buf list = BUF_INIT, terminated = BUF_INIT;
    pthread_mutex_lock(&r->lock);
    double now = time_monotonic();
    for (size_t i = 0; i < ids->u.array.len; i++) {
        const char *id = ids->u.array.items[i]->u.string.ptr;
        rs_add(&r->revoked, id, now);
        if (seen_before(ids, i)) continue;
        if (list.len) buf_puts(&list, ", ");
        buf_puts(&list, id);
    }
    r->revoked_dirty = 1;
    pthread_mutex_unlock(&r->lock);
    if (!terminate) {
        log_info("Tasks flagged as revoked: %s", buf_cstr(&list));
        buf msg = BUF_INIT;
        buf_printf(&msg, "tasks %s flagged as revoked", buf_cstr(&list));
        pj_value *v = ok(buf_cstr(&msg));
        buf_free(&msg);
        buf_free(&list);
        return v;
    }
    for (size_t i = 0; i < ids->u.array.len; i++) {
        const char *id = ids->u.array.items[i]->u.string.ptr;
        pthread_mutex_lock(&w->lock);
        int known = terminate_locked(w, id);
        pthread_mutex_unlock(&w->lock);
        if (!known || seen_before(ids, i)) continue;
        log_info("Terminating %s (%d)", id, signum);
        pthread_mutex_lock(&r->lock);
        if (r->n_terms >= REMOTE_TERMINATED_MAX) {   /* never reported back: forget the oldest */
            free(r->terms[0].id);
            memmove(r->terms, r->terms + 1, (r->n_terms - 1) * sizeof *r->terms);
            r->n_terms--;
        }
        r->terms = xrealloc(r->terms, (r->n_terms + 1) * sizeof *r->terms);
        r->terms[r->n_terms++] = (term_entry){xstrdup(id), signum};
        pthread_mutex_unlock(&r->lock);
        if (terminated.len) buf_puts(&terminated, ", ");
        buf_puts(&terminated, id);
    }
    buf msg = BUF_INIT;
    if (terminated.len) buf_printf(&msg, "terminate: %s", buf_cstr(&terminated));
    else buf_puts(&msg, "terminate: tasks unknown");
    pj_value *v = ok(buf_cstr(&msg));
    buf_free(&msg);
    buf_free(&list);
    buf_free(&terminated);
    return v;
}

static pj_value *h_revoke(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    if (!pj_object_get(args, "task_id")) return missing_argument("revoke", "task_id");
    pj_value *ids = arg_id_list(args, "task_id");
    pj_value *v = revoke_ids(r, ids, arg_bool(args, "terminate", 0),
                             signum_of(pj_object_get(args, "signal")));
    pj_free(ids);
    return v;
}

static pj_value *h_terminate(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    if (!pj_object_get(args, "signal")) return missing_argument("terminate", "signal");
    if (!pj_object_get(args, "task_id")) return missing_argument("terminate", "task_id");
    pj_value *ids = arg_id_list(args, "task_id");
    pj_value *v = revoke_ids(r, ids, 1, signum_of(pj_object_get(args, "signal")));
    pj_free(ids);
    return v;
}

/* celery.utils.time.rate: "10/m" -> per second; "" / None / 0 -> 0.
 * Returns 0, or -1 with the {"error": ...} reply in *reply. */
static int parse_rate(const pj_value *v, double *per_s, pj_value **reply)
{
    *per_s = 0;
    if (!v || v->type == PJ_NULL) return 0;
    if (v->type != PJ_STRING) {
        if (pj_number_value(v, per_s) != 0) *per_s = 0;
        return 0;
    }
    const char *s = v->u.string.ptr;
    if (!*s) return 0;
    const char *slash = strchr(s, '/');
    char *ops = slash ? xstrndup(s, (size_t)(slash - s)) : xstrdup(s);
    const char *mod = slash ? slash + 1 : "s";
    double div = !*mod || strcmp(mod, "s") == 0 ? 1 : strcmp(mod, "m") == 0 ? 60
               : strcmp(mod, "h") == 0 ? 3600 : 0;
    int rc = 0;
    char *end;
    errno = 0;
    double n = strtod(ops, &end);
    while (end && (*end == ' ' || *end == '\t' || *end == '\n')) end++;
    if (end == ops || *end || errno) {
        buf msg = BUF_INIT, inner = BUF_INIT;
        buf_puts(&inner, "could not convert string to float: ");
        pj_value *o = pj_new_string(ops);
        pj_repr(&inner, o);
        pj_free(o);
        pj_value *t = pj_new_string(buf_cstr(&inner));
        buf_puts(&msg, "Invalid rate limit string: ValueError(");
        pj_repr(&msg, t);
        buf_putc(&msg, ')');
        pj_free(t);
        *reply = nok(buf_cstr(&msg));
        buf_free(&msg);
        buf_free(&inner);
        rc = -1;
    } else if (!div) {
        *reply = py_exception("KeyError", mod);   /* RATE_MODIFIER_MAP[modifier] */
        rc = -1;
    } else {
        *per_s = n / div;
    }
    free(ops);
    return rc;
}

static pj_value *h_rate_limit(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    const pj_value *name_v = pj_object_get(args, "task_name");
    const pj_value *limit_v = pj_object_get(args, "rate_limit");
    if (!name_v) return missing_argument("rate_limit", "task_name");
    if (!limit_v) return missing_argument("rate_limit", "rate_limit");
    double per_s;
    pj_value *err = NULL;
    if (parse_rate(limit_v, &per_s, &err) != 0) return err;
    const char *name = name_v->type == PJ_STRING ? name_v->u.string.ptr : "";
    if (!task_find(name)) {
        log_error("Rate limit attempt for unknown task %s", name);
        return nok("unknown task");
    }
    buf text = BUF_INIT;
    if (limit_v->type == PJ_STRING) buf_puts(&text, limit_v->u.string.ptr);
    else if (limit_v->type != PJ_NULL) pj_repr(&text, limit_v);
    pthread_mutex_lock(&r->lock);
    rate_entry *e = find_rate(r, name, 1);
    free(e->limit);
    e->overridden = 1;
    e->limit = per_s > 0 ? xstrdup(buf_cstr(&text)) : NULL;
    e->per_s = per_s;
    e->next_free_us = 0;   /* consumer.reset_rate_limits() */
    pthread_mutex_unlock(&r->lock);
    pj_value *v;
    if (per_s <= 0) {
        log_info("Rate limits disabled for tasks of type %s", name);
        v = ok("rate limit disabled successfully");
    } else {
        log_info("New rate limit for tasks of type %s: %s.", name, buf_cstr(&text));
        v = ok("new rate limit set successfully");
    }
    buf_free(&text);
    return v;
}

static pj_value *h_time_limit(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    const char *name = pj_get_string(args, "task_name");
    if (!name || !task_find(name)) {
        log_error("Change time limit attempt for unknown task %s", name ? name : "None");
        return nok("unknown task");
    }
    double soft = arg_seconds(args, "soft"), hard = arg_seconds(args, "hard");
    pthread_mutex_lock(&r->lock);
    time_entry *e = find_time(r, name);
    if (!e) {
        r->times = xrealloc(r->times, (r->n_times + 1) * sizeof *r->times);
        e = &r->times[r->n_times++];
        e->task = xstrdup(name);
    }
    e->soft = soft;
    e->hard = hard;
    pthread_mutex_unlock(&r->lock);
    log_info("New time limits for tasks of type %s: soft=%g hard=%g", name, soft, hard);
    return ok("time limits set successfully");
}

static pj_value *h_shutdown(remote_state *r, const pj_value *args, int *no_reply)
{
    const char *msg = pj_get_string(args, "msg");
    log_warning("%s", msg ? msg : "Got shutdown from remote");
    atomic_store(&r->shutdown_requested, 1);
    *no_reply = 1;   /* Celery raises WorkerShutdown before replying */
    return NULL;
}

static redisContext *handler_conn(remote_state *r, char *err, size_t errlen)
{
    if (r->ctl && r->ctl->err) {
        redisFree(r->ctl);
        r->ctl = NULL;
    }
    if (!r->ctl) r->ctl = redis_url_connect(&r->w->broker_url, REMOTE_REDIS_TIMEOUT_S, err, errlen);
    return r->ctl;
}

static pj_value *h_add_consumer(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    worker *w = r->w;
    const char *queue = pj_get_string(args, "queue");
    if (!queue) return missing_argument("add_consumer", "queue");
    const char *exchange = pj_get_string(args, "exchange");
    const char *type = pj_get_string(args, "exchange_type");
    const char *rk = pj_get_string(args, "routing_key");
    if (!exchange || !*exchange) exchange = queue;   /* kombu Queue(name) defaults */
    if (!type || !*type) type = "direct";
    if (!rk || !*rk) rk = queue;
    char err[256];
    redisContext *c = handler_conn(r, err, sizeof err);
    if (!c || transport_declare_queue(c, &w->topts, queue, exchange, rk, err, sizeof err) != 0)
        log_warning("add_consumer: could not declare the binding of queue '%s': %s", queue, err);
    pthread_mutex_lock(&w->queues_lock);
    int added = transport_queues_add(&w->queues, queue);
    pthread_mutex_unlock(&w->queues_lock);
    if (added == 0) {
        pthread_mutex_lock(&r->lock);
        r->queues = xrealloc(r->queues, (r->n_queues + 1) * sizeof *r->queues);
        r->queues[r->n_queues++] = (queue_entry){xstrdup(queue), xstrdup(exchange), xstrdup(type),
                                                 xstrdup(rk)};
        pthread_mutex_unlock(&r->lock);
        log_info("Started consuming from %s", queue);
    } else if (added < 0) {
        log_error("add_consumer: cannot consume from '%s': already at %d queues", queue,
                  TRANSPORT_MAX_QUEUES);
    }
    buf msg = BUF_INIT;
    buf_printf(&msg, "add consumer %s", queue);
    pj_value *v = ok(buf_cstr(&msg));
    buf_free(&msg);
    return v;
}

static pj_value *h_cancel_consumer(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    worker *w = r->w;
    const char *queue = pj_get_string(args, "queue");
    if (!queue) return missing_argument("cancel_consumer", "queue");
    pthread_mutex_lock(&w->queues_lock);
    int removed = transport_queues_remove(&w->queues, queue) == 0;
    pthread_mutex_unlock(&w->queues_lock);
    if (removed) log_info("Canceling queue %s", queue);
    buf msg = BUF_INIT;
    buf_printf(&msg, "no longer consuming from %s", queue);
    pj_value *v = ok(buf_cstr(&msg));
    buf_free(&msg);
    return v;
}

static pj_value *h_pool_grow(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    atomic_fetch_add(&r->pool_delta, (int)arg_int(args, "n", 1));
    return ok("pool will grow");
}

static pj_value *h_pool_shrink(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)no_reply;
    atomic_fetch_sub(&r->pool_delta, (int)arg_int(args, "n", 1));
    return ok("pool will shrink");
}

static pj_value *h_autoscale(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)r, (void)args, (void)no_reply;
    return py_exception("ValueError", "Autoscale not enabled");
}

static pj_value *h_pool_restart(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)r, (void)args, (void)no_reply;
    return py_exception("ValueError", "Pool restarts not enabled");
}

static pj_value *h_election(remote_state *r, const pj_value *args, int *no_reply)
{
    (void)r, (void)args, (void)no_reply;
    return NULL;   /* no gossip (PROTOCOL §10) */
}

/* ---- Dispatch ------------------------------------------------------------------------- */

static const struct {
    const char *name;
    handler_fn fn;
} HANDLERS[] = {
    {"ping", h_ping}, {"stats", h_stats}, {"active", h_active}, {"dump_active", h_active},
    {"reserved", h_reserved}, {"dump_reserved", h_reserved}, {"scheduled", h_scheduled},
    {"dump_schedule", h_scheduled}, {"revoked", h_revoked}, {"dump_revoked", h_revoked},
    {"registered", h_registered}, {"dump_tasks", h_registered}, {"active_queues", h_active_queues},
    {"conf", h_conf}, {"dump_conf", h_conf}, {"report", h_report}, {"query_task", h_query_task},
    {"clock", h_clock}, {"hello", h_hello}, {"memsample", h_memsample},
    {"enable_events", h_enable_events}, {"disable_events", h_disable_events},
    {"heartbeat", h_heartbeat}, {"revoke", h_revoke}, {"terminate", h_terminate},
    {"rate_limit", h_rate_limit}, {"time_limit", h_time_limit}, {"shutdown", h_shutdown},
    {"add_consumer", h_add_consumer}, {"cancel_consumer", h_cancel_consumer},
    {"pool_grow", h_pool_grow}, {"pool_shrink", h_pool_shrink}, {"autoscale", h_autoscale},
    {"pool_restart", h_pool_restart}, {"election", h_election},
};

static int allowed(const ptel_config *cfg, const char *method)
{
    if (!cfg->has_worker_control_allow) return 1;
    for (size_t i = 0; i < cfg->worker_control_allow.count; i++)
        if (strcmp(cfg->worker_control_allow.items[i], method) == 0) return 1;
    return 0;
}

static pj_value *dispatch(void *ud, const control_command *cmd, int *no_reply)
{
    remote_state *r = ud;
    if (!allowed(r->w->cfg, cmd->method)) {
        log_warning("Refused remote control command '%s' (not in worker_control_allow)",
                    cmd->method);
        buf msg = BUF_INIT;
        buf_printf(&msg, "command '%s' is not allowed on this worker (worker_control_allow)",
                   cmd->method);
        pj_value *v = nok(buf_cstr(&msg));
        buf_free(&msg);
        return v;
    }
    for (size_t i = 0; i < sizeof HANDLERS / sizeof *HANDLERS; i++)
        if (strcmp(HANDLERS[i].name, cmd->method) == 0)
            return HANDLERS[i].fn(r, cmd->arguments, no_reply);
    log_error("No such control command: %s", cmd->method);
    return py_exception("KeyError", cmd->method);
}

/* ---- worker_statedb ---------------------------------------------------------------------- */

/* Our own JSON format (Python's statedb is a pickle shelve, which we never
 * read): {"revoked": {id: unix_time_revoked}, "clock": N}. Wall-clock times
 * survive a reboot; they are turned back into monotonic ones on load. */
static void statedb_load(remote_state *r)
{
    const char *path = r->w->cfg->worker_statedb;
    if (!path) return;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT) log_warning("statedb %s: cannot read (%s); starting empty", path, strerror(errno));
        return;
    }
    buf b = BUF_INIT;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(&b, chunk, n);
    fclose(f);
    pj_error perr;
    pj_value *v = pj_parse(b.data ? b.data : "", b.len, &perr);
    buf_free(&b);
    if (!v || v->type != PJ_OBJECT) {
        log_warning("statedb %s: not ours or corrupt (%s); starting empty", path, v ? "not an object" : perr.msg);
        pj_free(v);
        return;
    }
    const pj_value *rev = pj_object_get(v, "revoked");
    double now_wall = time_now(), now_mono = time_monotonic();
    size_t loaded = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; rev && rev->type == PJ_OBJECT && i < rev->u.object.len; i++) {
        double at;
        if (pj_number_value(rev->u.object.members[i].value, &at) != 0) continue;
        rs_add(&r->revoked, rev->u.object.members[i].key.ptr, now_mono - (now_wall - at));
        loaded++;
    }
    rs_purge(&r->revoked, now_mono);
    pthread_mutex_unlock(&r->lock);
    long long clock;
    const pj_value *c = pj_object_get(v, "clock");
    if (c && pj_int_value(c, &clock) == 0 && clock > 0) lamport_adjust(&r->app_clock, (unsigned long long)clock);
    log_info("statedb %s: %zu revoked id(s) loaded", path, loaded);
    pj_free(v);
}

static void statedb_save(remote_state *r)
{
    const char *path = r->w->cfg->worker_statedb;
    if (!path) return;
    pj_value *rev = pj_new_object();
    double now_wall = time_now(), now_mono = time_monotonic();
    pthread_mutex_lock(&r->lock);
    for (const revoked_entry *e = r->revoked.head; e; e = e->next)
        pj_object_set(rev, e->id, pj_new_float(now_wall - (now_mono - e->ts)));
    r->revoked_dirty = 0;
    pthread_mutex_unlock(&r->lock);
    pj_value *doc = pj_new_object();
    pj_object_set(doc, "revoked", rev);
    pj_object_set(doc, "clock", pj_new_int((long long)lamport_value(&r->app_clock)));
    buf out = BUF_INIT, tmp = BUF_INIT;
    pj_dump(&out, doc, PJ_DUMP_COMPACT);
    pj_free(doc);
    buf_printf(&tmp, "%s.tmp", path);
    FILE *f = fopen(buf_cstr(&tmp), "wb");
    int ok_write = f && fwrite(out.data, 1, out.len, f) == out.len;
    if (f && fclose(f) != 0) ok_write = 0;
    if (!ok_write || rename(buf_cstr(&tmp), path) != 0)
        log_error("statedb %s: cannot save the revoked ids (%s); they live in memory only",
                  path, strerror(errno));
    buf_free(&out);
    buf_free(&tmp);
}

/* ---- Lifecycle -------------------------------------------------------------------------- */

remote_state *remote_start(worker *w)
{
    remote_state *r = xcalloc(1, sizeof *r);
    r->w = w;
    lamport_init(&r->app_clock, 0);
    lamport_init(&r->mailbox_clock, 0);
    pthread_mutex_init(&r->lock, NULL);
    rs_init(&r->revoked);
    atomic_init(&r->shutdown_requested, 0);
    atomic_init(&r->pool_delta, 0);
    r->events_all = w->cfg->worker_send_task_events || w->send_events_flag;
    r->events = events_publisher_new(&w->broker_url, w->topts.global_keyprefix, w->hostname,
                                     &r->app_clock);
    events_set_task_group(r->events, r->events_all);
    statedb_load(r);
    /* Mingle waits a full second for replies before consuming starts, as
     * Celery's does; --without-mingle skips it, as Celery's flag does. */
    if (w->without_mingle) log_info("mingle: disabled (--without-mingle)");
    else mingle(r);

    control_node_options o = {
        .url = &w->broker_url, .prefix = w->topts.global_keyprefix, .hostname = w->hostname,
        .app_clock = &r->app_clock, .mailbox_clock = &r->mailbox_clock,
        .handler = dispatch, .ud = r,
    };
    char err[256];
    r->node = control_node_start(&o, err, sizeof err);
    if (!r->node)
        log_error("Remote control is off: %s (inspect/control commands will get no reply)", err);
    send_worker_event(r, "worker-online");
    int64_t now = time_now_us();
    r->next_heartbeat_us = now + (int64_t)(EVENTS_HEARTBEAT_FREQ * USEC_PER_SEC);
    r->next_purge_us = now + REMOTE_PURGE_EVERY_US;
    r->next_save_us = now + REMOTE_STATEDB_SAVE_EVERY_US;
    return r;
}

void remote_tick(remote_state *r, int64_t now_us)
{
    if (!r) return;
    events_flush(r->events);
    if (!r->offline_sent && now_us >= r->next_heartbeat_us) {
        send_worker_event(r, "worker-heartbeat");
        r->next_heartbeat_us = now_us + (int64_t)(EVENTS_HEARTBEAT_FREQ * USEC_PER_SEC);
    }
    if (now_us >= r->next_purge_us) {
        pthread_mutex_lock(&r->lock);
        rs_purge(&r->revoked, time_monotonic());
        pthread_mutex_unlock(&r->lock);
        r->next_purge_us = now_us + REMOTE_PURGE_EVERY_US;
    }
    if (now_us >= r->next_save_us) {
        pthread_mutex_lock(&r->lock);
        int dirty = r->revoked_dirty;
        pthread_mutex_unlock(&r->lock);
        if (dirty) statedb_save(r);
        r->next_save_us = now_us + REMOTE_STATEDB_SAVE_EVERY_US;
    }
}

void remote_take_requests(remote_state *r, remote_requests *out)
{
    memset(out, 0, sizeof *out);
    if (!r) return;
    out->shutdown = atomic_exchange(&r->shutdown_requested, 0);
    out->pool_delta = atomic_exchange(&r->pool_delta, 0);
}

void remote_shutdown_begins(remote_state *r)
{
    if (!r || r->offline_sent) return;
    control_node_stop(r->node);
    r->node = NULL;
    send_worker_event(r, "worker-offline");
    r->offline_sent = 1;
}

void remote_stop(remote_state *r)
{
    if (!r) return;
    remote_shutdown_begins(r);
    events_flush(r->events);
    statedb_save(r);
    events_publisher_free(r->events);
    if (r->ctl) redisFree(r->ctl);
    rs_free(&r->revoked);
    for (size_t i = 0; i < r->n_totals; i++) free(r->totals[i].name);
    free(r->totals);
    free(r->slot_writes);
    for (size_t i = 0; i < r->n_rates; i++) {
        free(r->rates[i].task);
        free(r->rates[i].limit);
    }
    free(r->rates);
    for (size_t i = 0; i < r->n_times; i++) free(r->times[i].task);
    free(r->times);
    for (size_t i = 0; i < r->n_queues; i++) {
        free(r->queues[i].queue);
        free(r->queues[i].exchange);
        free(r->queues[i].exchange_type);
        free(r->queues[i].routing_key);
    }
    free(r->queues);
    for (size_t i = 0; i < r->n_terms; i++) free(r->terms[i].id);
    free(r->terms);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* ---- Task hooks --------------------------------------------------------------------------- */

int remote_is_revoked(remote_state *r, const char *task_id)
{
    if (!r || !task_id) return 0;
    pthread_mutex_lock(&r->lock);
    int found = rs_find(&r->revoked, task_id) != NULL;
    pthread_mutex_unlock(&r->lock);
    return found;
}

/* task-* events are sent only while the task group is on (-E, config, or
 * enable_events); their fields are built only then: building them for
 * every task to have events_send drop them cost ~3% of a busy worker's CPU. */
static int task_events_on(remote_state *r)
{
    return r && events_task_group(r->events);
}

void remote_task_received(remote_state *r, const job *j)
{
    if (!task_events_on(r)) return;
    const task_message *m = &j->msg;
    pj_value *f = uuid_fields(j);
    pj_object_set(f, "name", str_or_null(m->task));
    buf a = BUF_INIT;
    if (m->argsrepr) buf_puts(&a, m->argsrepr);
    else tuple_repr(&a, m->args);
    pj_object_set(f, "args", pj_new_string(buf_cstr(&a)));
    buf_reset(&a);
    if (m->kwargsrepr) buf_puts(&a, m->kwargsrepr);
    else if (m->kwargs) pj_repr(&a, m->kwargs);
    else buf_puts(&a, "{}");
    pj_object_set(f, "kwargs", pj_new_string(buf_cstr(&a)));
    buf_free(&a);
    pj_object_set(f, "root_id", str_or_null(m->root_id));
    pj_object_set(f, "parent_id", str_or_null(m->parent_id));
    pj_object_set(f, "retries", pj_new_int(m->retries));
    pj_object_set(f, "eta", str_or_null(m->eta_text));
    pj_object_set(f, "expires", str_or_null(m->expires_text));
    events_send(r->events, "task-received", f);
}

/* The slot index running j, or -1 (w->lock is taken here). */
static int slot_of(worker *w, const job *j)
{
    int found = -1;
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n_slots && found < 0; i++)
        if (w->slots[i] && w->slots[i]->current == j) found = w->slots[i]->index;
    pthread_mutex_unlock(&w->lock);
    return found;
}

void remote_task_started(remote_state *r, const job *j)
{
    if (!r) return;
    int idx = slot_of(r->w, j);
    pthread_mutex_lock(&r->lock);
    find_count(&r->totals, &r->n_totals, j->msg.task ? j->msg.task : "?")->count++;
    r->processed++;
    if (idx >= 0) {
        if (idx >= r->n_slot_writes) {
            r->slot_writes = xrealloc(r->slot_writes, (size_t)(idx + 1) * sizeof *r->slot_writes);
            for (int i = r->n_slot_writes; i <= idx; i++) r->slot_writes[i] = 0;
            r->n_slot_writes = idx + 1;
        }
        r->slot_writes[idx]++;
    }
    pthread_mutex_unlock(&r->lock);
    if (task_events_on(r)) events_send(r->events, "task-started", uuid_fields(j));
}

void remote_task_succeeded(remote_state *r, const job *j, const char *result_repr, double runtime)
{
    if (!task_events_on(r)) return;
    pj_value *f = uuid_fields(j);
    pj_object_set(f, "result", pj_new_string(result_repr ? result_repr : "None"));
    pj_object_set(f, "runtime", pj_new_float(runtime));
    events_send(r->events, "task-succeeded", f);
}

static void send_exception_event(remote_state *r, const char *type, const job *j,
                                 const char *exception_repr, const char *traceback, int always_tb)
{
    pj_value *f = uuid_fields(j);
    pj_object_set(f, "exception", pj_new_string(exception_repr ? exception_repr : "Exception()"));
    if (traceback) pj_object_set(f, "traceback", pj_new_string(traceback));
    else if (always_tb) pj_object_set(f, "traceback", pj_new_null());
    events_send(r->events, type, f);
}

void remote_task_failed(remote_state *r, const job *j, const char *exception_repr,
                        const char *traceback)
{
    if (task_events_on(r)) send_exception_event(r, "task-failed", j, exception_repr, traceback, 0);
}

void remote_task_retried(remote_state *r, const job *j, const char *exception_repr,
                         const char *traceback)
{
    if (task_events_on(r)) send_exception_event(r, "task-retried", j, exception_repr, traceback, 1);
}

void remote_task_rejected(remote_state *r, const job *j, int requeue)
{
    if (!task_events_on(r)) return;
    pj_value *f = uuid_fields(j);
    pj_object_set(f, "requeue", pj_new_bool(requeue));
    events_send(r->events, "task-rejected", f);
}

void remote_task_revoked(remote_state *r, const job *j, int terminated, int expired)
{
    if (!r) return;
    int signum = 0;
    pthread_mutex_lock(&r->lock);
    if (expired && j->msg.id) {
        rs_add(&r->revoked, j->msg.id, time_monotonic());
        r->revoked_dirty = 1;
    }
    for (size_t i = 0; terminated && i < r->n_terms; i++) {
        if (strcmp(r->terms[i].id, j->msg.id ? j->msg.id : "") != 0) continue;
        signum = r->terms[i].signum;
        free(r->terms[i].id);
        r->terms[i] = r->terms[--r->n_terms];
        break;
    }
    pthread_mutex_unlock(&r->lock);
    if (terminated && !signum) signum = SIGTERM;
    pj_value *f = uuid_fields(j);
    pj_object_set(f, "terminated", pj_new_bool(terminated));
    pj_object_set(f, "signum", terminated ? pj_new_int(signum) : pj_new_null());
    pj_object_set(f, "expired", pj_new_bool(expired));
    events_send(r->events, "task-revoked", f);
}

int64_t remote_rate_limit_delay(remote_state *r, const char *task_name)
{
    if (!r || !task_name) return 0;
    task_settings ts;
    config_task_settings(r->w->cfg, task_name, &ts);
    int64_t now = time_now_us(), wait = 0;
    pthread_mutex_lock(&r->lock);
    rate_entry *e = find_rate(r, task_name, 0);
    double per_s = e && e->overridden ? e->per_s : ts.rate_limit_per_s;
    if (per_s > 0) {
        if (!e) e = find_rate(r, task_name, 1);
        if (e->bucket_per_s != per_s) {   /* a new limit starts a fresh bucket */
            e->bucket_per_s = per_s;
            e->next_free_us = 0;
        }
        /* Capacity 1, refilled at per_s: each start takes the next free turn. */
        int64_t interval = (int64_t)((double)USEC_PER_SEC / per_s);
        int64_t turn = e->next_free_us > now ? e->next_free_us : now;
        wait = turn - now;
        e->next_free_us = turn + interval;
    }
    pthread_mutex_unlock(&r->lock);
    return wait;
}

void remote_time_limits(remote_state *r, const char *task_name, double *soft, double *hard)
{
    if (!r || !task_name) return;
    pthread_mutex_lock(&r->lock);
    const time_entry *e = find_time(r, task_name);
    if (e) {
        *soft = e->soft;
        *hard = e->hard;
    }
    pthread_mutex_unlock(&r->lock);
}
