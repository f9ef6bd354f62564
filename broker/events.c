/* broker/events.c: celeryev events on Redis pub/sub (see events.h).
 *
 * Bytes match Python's: the body and the envelope are written with pyjson's
 * json.dumps() form, so a captured event rebuilt from its fields comes out
 * identical (broker/test_events.c checks the golden samples). */
#include "broker/events.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uuid/uuid.h>

#include "common/base64.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Events are small; a broker that takes longer than this is treated as gone. */
#define EVENTS_CONNECT_TIMEOUT_S 5.0

/* ---- Lamport clock -------------------------------------------------------- */

void lamport_init(lamport_clock *c, unsigned long long start)
{
    atomic_init(&c->value, start);
}

unsigned long long lamport_forward(lamport_clock *c)
{
    return atomic_fetch_add(&c->value, 1) + 1;
}

unsigned long long lamport_adjust(lamport_clock *c, unsigned long long other)
{
    unsigned long long cur = atomic_load(&c->value), next;
    do {
        next = (cur > other ? cur : other) + 1;
    } while (!atomic_compare_exchange_weak(&c->value, &cur, next));
    return next;
}

unsigned long long lamport_value(lamport_clock *c)
{
    return atomic_load(&c->value);
}

/* ---- Wire format ------------------------------------------------------------ */

int events_utcoffset(void)
{
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    long west = -tm.tm_gmtoff;
    /* Python's floor division: -7200 // 3600 == -2, -1800 // 3600 == -1. */
    long q = west / 3600;
    if (west % 3600 != 0 && west < 0) q--;
    return (int)q;
}

void events_routing_key(buf *out, const char *type)
{
    for (const char *p = type; *p; p++) buf_putc(out, *p == '-' ? '.' : *p);
}

void events_channel(buf *out, const char *prefix, int db, const char *routing_key)
{
    buf_printf(out, "%s/%d.celeryev/%s", prefix ? prefix : "", db, routing_key);
}

pj_value *events_build(const event_identity *id, const char *type, unsigned long long clock,
                       pj_value *fields, double timestamp)
{
    pj_value *e = pj_new_object();
    pj_object_set(e, "hostname", pj_new_string(id->hostname));
    pj_object_set(e, "utcoffset", pj_new_int(id->utcoffset));
    pj_object_set(e, "pid", pj_new_int(id->pid));
    pj_object_set(e, "clock", pj_new_int((long long)clock));
    if (fields && fields->type == PJ_OBJECT) {
        for (size_t i = 0; i < fields->u.object.len; i++) {
            pj_member *m = &fields->u.object.members[i];
            pj_object_setn(e, m->key.ptr, m->key.len, m->value);
            m->value = NULL;   /* moved; pj_free skips NULL and frees the key */
        }
    }
    pj_free(fields);
    pj_object_set(e, "timestamp", pj_new_float(timestamp));
    pj_object_set(e, "type", pj_new_string(type));
    return e;
}

static void new_uuid(char out[37])
{
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

void events_envelope(buf *out, const pj_value *body, const char *hostname,
                     const char *routing_key, const char *delivery_tag)
{
    buf json = BUF_INIT, b64 = BUF_INIT;
    pj_dump(&json, body, 0);
    base64_encode(&b64, json.data, json.len);
    char tag[37];
    if (!delivery_tag) {
        new_uuid(tag);
        delivery_tag = tag;
    }
    pj_value *env = pj_new_object();
    pj_object_set(env, "body", pj_new_stringn(b64.data, b64.len));
    pj_object_set(env, "content-encoding", pj_new_string("utf-8"));
    pj_object_set(env, "content-type", pj_new_string("application/json"));
    pj_value *headers = pj_new_object();
    pj_object_set(headers, "hostname", pj_new_string(hostname));
    pj_object_set(env, "headers", headers);
    pj_value *props = pj_new_object();
    pj_object_set(props, "delivery_mode", pj_new_int(1));
    pj_value *di = pj_new_object();
    pj_object_set(di, "exchange", pj_new_string("celeryev"));
    pj_object_set(di, "routing_key", pj_new_string(routing_key));
    pj_object_set(props, "delivery_info", di);
    pj_object_set(props, "priority", pj_new_int(0));
    pj_object_set(props, "body_encoding", pj_new_string("base64"));
    pj_object_set(props, "delivery_tag", pj_new_string(delivery_tag));
    pj_object_set(env, "properties", props);
    pj_dump(out, env, 0);
    pj_free(env);
    buf_free(&json);
    buf_free(&b64);
}

/* ---- Publisher -------------------------------------------------------------- */

struct event_publisher {
    const redis_url *url;
    char *prefix;
    char *hostname;
    lamport_clock *clock;
    event_identity id;

    pthread_mutex_t lock;         /* buffer, task_group */
    pj_value *buffer;             /* PJ_ARRAY of task events waiting for a flush */
    int task_group;

    pthread_mutex_t conn_lock;    /* ctx, next_connect_us, outage_logged; taken
                                     before `lock` when both are needed */
    redisContext *ctx;
    int64_t next_connect_us;
    int outage_logged;
};

event_publisher *events_publisher_new(const redis_url *url, const char *prefix,
                                      const char *hostname, lamport_clock *clock)
{
    event_publisher *ev = xcalloc(1, sizeof *ev);
    ev->url = url;
    ev->prefix = xstrdup(prefix ? prefix : "");
    ev->hostname = xstrdup(hostname);
    ev->clock = clock;
    ev->id.hostname = ev->hostname;
    ev->id.pid = (int)getpid();
    ev->id.utcoffset = events_utcoffset();
    ev->buffer = pj_new_array();
    pthread_mutex_init(&ev->lock, NULL);
    pthread_mutex_init(&ev->conn_lock, NULL);
    return ev;
}

void events_publisher_free(event_publisher *ev)
{
    if (!ev) return;
    if (ev->ctx) redisFree(ev->ctx);
    pj_free(ev->buffer);
    pthread_mutex_destroy(&ev->lock);
    pthread_mutex_destroy(&ev->conn_lock);
    free(ev->prefix);
    free(ev->hostname);
    free(ev);
}

void events_set_task_group(event_publisher *ev, int enabled)
{
    pthread_mutex_lock(&ev->lock);
    ev->task_group = enabled;
    pthread_mutex_unlock(&ev->lock);
}

int events_task_group(event_publisher *ev)
{
    pthread_mutex_lock(&ev->lock);
    int on = ev->task_group;
    pthread_mutex_unlock(&ev->lock);
    return on;
}

/* conn_lock held. */
static int ensure_connected(event_publisher *ev)
{
    if (ev->ctx && !ev->ctx->err) return 0;
    if (ev->ctx) {
        redisFree(ev->ctx);
        ev->ctx = NULL;
    }
    int64_t now = time_now_us();
    if (now < ev->next_connect_us) return -1;
    char err[256];
    ev->ctx = redis_url_connect(ev->url, EVENTS_CONNECT_TIMEOUT_S, err, sizeof err);
    if (!ev->ctx) {
        ev->next_connect_us = now + EVENTS_RECONNECT_US;
        if (!ev->outage_logged)
            log_warning("events: cannot connect to the broker (%s); events are dropped "
                        "until it is back", err);
        ev->outage_logged = 1;
        return -1;
    }
    if (ev->outage_logged) log_info("events: broker connection restored; sending events again");
    ev->outage_logged = 0;
    return 0;
}

/* conn_lock held. */
static int publish_locked(event_publisher *ev, const pj_value *body, const char *type)
{
    if (ensure_connected(ev) != 0) return -1;
    buf rk = BUF_INIT, channel = BUF_INIT, env = BUF_INIT;
    events_routing_key(&rk, type);
    events_channel(&channel, ev->prefix, ev->url->db, buf_cstr(&rk));
    events_envelope(&env, body, ev->hostname, buf_cstr(&rk), NULL);
    redisReply *r = redisCommand(ev->ctx, "PUBLISH %b %b", channel.data, channel.len,
                                 env.data, env.len);
    int rc = 0;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (!ev->outage_logged)
            log_warning("events: PUBLISH %s failed (%s); events are dropped until the broker "
                        "answers again", buf_cstr(&channel),
                        r ? r->str : ev->ctx->errstr);
        ev->outage_logged = 1;
        rc = -1;
    }
    if (r) freeReplyObject(r);
    buf_free(&rk);
    buf_free(&channel);
    buf_free(&env);
    return rc;
}

int events_flush(event_publisher *ev)
{
    pthread_mutex_lock(&ev->conn_lock);
    pthread_mutex_lock(&ev->lock);
    pj_value *batch = ev->buffer;
    ev->buffer = pj_new_array();
    pthread_mutex_unlock(&ev->lock);
    int rc = 0;
    if (batch->u.array.len) rc = publish_locked(ev, batch, "task-multi");
    pthread_mutex_unlock(&ev->conn_lock);
    pj_free(batch);
    return rc;
}

static int is_task_event(const char *type)
{
    return strncmp(type, "task-", 5) == 0;
}

int events_send(event_publisher *ev, const char *type, pj_value *fields)
{
    int task = is_task_event(type);
    if (task && !events_task_group(ev)) {
        pj_free(fields);
        return 1;
    }
    /* The clock is read as late as possible so events carry increasing
     * values in the order they are queued. */
    if (task) {
        pthread_mutex_lock(&ev->lock);
        pj_value *e = events_build(&ev->id, type, lamport_forward(ev->clock), fields, time_now());
        pj_array_append(ev->buffer, e);
        size_t n = ev->buffer->u.array.len;
        pthread_mutex_unlock(&ev->lock);
        return n >= EVENTS_BATCH_MAX ? events_flush(ev) : 0;
    }
    pthread_mutex_lock(&ev->conn_lock);
    pj_value *e = events_build(&ev->id, type, lamport_forward(ev->clock), fields, time_now());
    int rc = publish_locked(ev, e, type);
    pthread_mutex_unlock(&ev->conn_lock);
    pj_free(e);
    return rc;
}
