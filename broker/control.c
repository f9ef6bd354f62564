/* broker/control.c: kombu's pidbox on Redis (see control.h).
 *
 * Envelopes are written with pyjson in json.dumps() form, so a reply rebuilt
 * from a captured one is byte-identical (broker/test_control.c). Commands are
 * read with pyjson too: it keeps ints and floats apart, which `hello` needs
 * ("Expecting float timestamp", PROTOCOL §8.3). */
#include "broker/control.h"

#include <errno.h>
#include <fnmatch.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uuid/uuid.h>

#include "broker/message.h"
#include "broker/transport.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Command timeout of the node's reply connection and of control_call. */
#define CONTROL_REDIS_TIMEOUT_S 10.0

static void new_uuid(char out[37])
{
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

static char *opt_string(const pj_value *obj, const char *key)
{
    const char *s = pj_get_string(obj, key);
    return s ? xstrdup(s) : NULL;
}

/* ---- Parsing ------------------------------------------------------------- */

void control_command_free(control_command *c)
{
    free(c->method);
    pj_free(c->arguments);
    pj_free(c->destination);
    free(c->pattern);
    free(c->matcher);
    free(c->ticket);
    free(c->reply_exchange);
    free(c->reply_routing_key);
    memset(c, 0, sizeof *c);
}

/* The JSON body of a kombu envelope, decoded. NULL with err. */
static pj_value *envelope_body(const pj_value *env, char *err, size_t errlen)
{
    const char *ctype = pj_get_string(env, "content-type");
    if (ctype && strcmp(ctype, "application/json") != 0) {
        snprintf(err, errlen, "content-type %s is not supported for control messages "
                 "(application/json only)", ctype);
        return NULL;
    }
    const pj_value *body = pj_object_get(env, "body");
    if (!body || body->type != PJ_STRING) {
        snprintf(err, errlen, "envelope has no string body");
        return NULL;
    }
    const pj_value *props = pj_object_get(env, "properties");
    const char *enc = props ? pj_get_string(props, "body_encoding") : NULL;
    buf raw = BUF_INIT;
    if (enc && strcmp(enc, "base64") == 0) {
        if (base64_decode(&raw, body->u.string.ptr, body->u.string.len) != 0) {
            snprintf(err, errlen, "body is not valid base64");
            buf_free(&raw);
            return NULL;
        }
    } else {
        buf_append(&raw, body->u.string.ptr, body->u.string.len);
    }
    pj_error perr;
    pj_value *v = pj_parse(raw.data ? raw.data : "", raw.len, &perr);
    if (!v) snprintf(err, errlen, "body is not JSON: %s", perr.msg);
    buf_free(&raw);
    return v;
}

static pj_value *parse_envelope(const char *payload, size_t len, char *err, size_t errlen)
{
    if (len > CONTROL_MAX_MESSAGE_BYTES) {
        snprintf(err, errlen, "message of %zu bytes is over the %u byte limit", len,
                 CONTROL_MAX_MESSAGE_BYTES);
        return NULL;
    }
    pj_error perr;
    pj_value *env = pj_parse(payload, len, &perr);
    if (!env) {
        snprintf(err, errlen, "envelope is not JSON: %s", perr.msg);
        return NULL;
    }
    if (env->type != PJ_OBJECT) {
        snprintf(err, errlen, "envelope is not a JSON object");
        pj_free(env);
        return NULL;
    }
    return env;
}

static int fill_command(const pj_value *body, control_command *out, char *err, size_t errlen)
{
    if (body->type != PJ_OBJECT) {
        snprintf(err, errlen, "body is not an object");
        return -1;
    }
    const char *method = pj_get_string(body, "method");
    if (!method) {
        snprintf(err, errlen, "body has no method");
        return -1;
    }
    out->method = xstrdup(method);
    const pj_value *args = pj_object_get(body, "arguments");
    out->arguments = args && args->type == PJ_OBJECT ? pj_clone(args) : pj_new_object();
    const pj_value *dest = pj_object_get(body, "destination");
    if (dest && dest->type == PJ_ARRAY) out->destination = pj_clone(dest);
    out->pattern = opt_string(body, "pattern");
    out->matcher = opt_string(body, "matcher");
    out->ticket = opt_string(body, "ticket");
    const pj_value *reply_to = pj_object_get(body, "reply_to");
    if (reply_to && reply_to->type == PJ_OBJECT) {
        out->reply_exchange = opt_string(reply_to, "exchange");
        out->reply_routing_key = opt_string(reply_to, "routing_key");
    }
    return 0;
}

int control_parse(const char *payload, size_t len, control_command *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    pj_value *env = parse_envelope(payload, len, err, errlen);
    if (!env) return -1;
    pj_value *body = envelope_body(env, err, errlen);
    int rc = body ? fill_command(body, out, err, errlen) : -1;
    if (rc == 0) {
        const pj_value *headers = pj_object_get(env, "headers");
        const pj_value *clock = headers ? pj_object_get(headers, "clock") : NULL;
        long long c;
        if (clock && pj_int_value(clock, &c) == 0 && c > 0) out->clock = (unsigned long long)c;
    } else {
        control_command_free(out);
    }
    pj_free(body);
    pj_free(env);
    return rc;
}

/* Python's re.match: a match anchored at the start, not necessarily the end. */
static int pcre_match(const char *pattern, const char *s)
{
    regex_t re;
    if (regcomp(&re, pattern, REG_EXTENDED) != 0) return 0;
    regmatch_t m;
    int ok = regexec(&re, s, 1, &m, 0) == 0 && m.rm_so == 0;
    regfree(&re);
    return ok;
}

int control_matches(const control_command *c, const char *hostname)
{
    if (c->destination && c->destination->u.array.len) {
        for (size_t i = 0; i < c->destination->u.array.len; i++) {
            const pj_value *d = c->destination->u.array.items[i];
            if (d->type == PJ_STRING && strcmp(d->u.string.ptr, hostname) == 0) return 1;
        }
        return 0;
    }
    if (c->pattern && c->matcher) {
        if (strcmp(c->matcher, "glob") == 0) return fnmatch(c->pattern, hostname, 0) == 0;
        if (strcmp(c->matcher, "pcre") == 0) return pcre_match(c->pattern, hostname);
        return 0;   /* kombu raises MatcherNotInstalled: no reply */
    }
    return 1;
}

/* ---- Envelopes ------------------------------------------------------------ */

static pj_value *properties(int delivery_mode, const char *exchange, const char *routing_key,
                            const char *delivery_tag)
{
    char tag[37];
    if (!delivery_tag) {
        new_uuid(tag);
        delivery_tag = tag;
    }
    pj_value *props = pj_new_object();
    pj_object_set(props, "delivery_mode", pj_new_int(delivery_mode));
    pj_value *di = pj_new_object();
    pj_object_set(di, "exchange", pj_new_string(exchange));
    pj_object_set(di, "routing_key", pj_new_string(routing_key));
    pj_object_set(props, "delivery_info", di);
    pj_object_set(props, "priority", pj_new_int(0));
    pj_object_set(props, "body_encoding", pj_new_string("base64"));
    pj_object_set(props, "delivery_tag", pj_new_string(delivery_tag));
    return props;
}

/* body, content-encoding, content-type, headers, properties: kombu's order.
 * Takes ownership of headers and props. */
static void write_envelope(buf *out, const pj_value *body, pj_value *headers, pj_value *props)
{
    buf json = BUF_INIT, b64 = BUF_INIT;
    pj_dump(&json, body, 0);
    base64_encode(&b64, json.data, json.len);
    message_envelope_json(pj_new_stringn(b64.data, b64.len), headers, props, out);
    buf_free(&json);
    buf_free(&b64);
}

void control_reply_envelope(buf *out, const char *hostname, const pj_value *value,
                            const char *ticket, unsigned long long clock,
                            const char *exchange, const char *routing_key,
                            const char *delivery_tag)
{
    pj_value *body = pj_new_object();
    pj_object_set(body, hostname, value ? pj_clone(value) : pj_new_null());
    pj_value *headers = pj_new_object();
    pj_object_set(headers, "ticket", pj_new_string(ticket));
    pj_object_set(headers, "clock", pj_new_int((long long)clock));
    write_envelope(out, body, headers, properties(1, exchange, routing_key, delivery_tag));
    pj_free(body);
}

void control_command_envelope(buf *out, const char *method, const pj_value *arguments,
                              const char *ticket, const char *reply_routing_key,
                              unsigned long long clock, double expires,
                              const char *delivery_tag)
{
    pj_value *body = pj_new_object();
    pj_object_set(body, "method", pj_new_string(method));
    pj_object_set(body, "arguments", arguments ? pj_clone(arguments) : pj_new_object());
    pj_object_set(body, "destination", pj_new_null());
    pj_object_set(body, "pattern", pj_new_null());
    pj_object_set(body, "matcher", pj_new_null());
    pj_object_set(body, "ticket", pj_new_string(ticket));
    pj_value *reply_to = pj_new_object();
    pj_object_set(reply_to, "exchange", pj_new_string(CONTROL_REPLY_EXCHANGE));
    pj_object_set(reply_to, "routing_key", pj_new_string(reply_routing_key));
    pj_object_set(body, "reply_to", reply_to);

    pj_value *headers = pj_new_object();
    pj_object_set(headers, "clock", pj_new_int((long long)clock));
    pj_object_set(headers, "expires", expires > 0 ? pj_new_float(expires) : pj_new_int(0));
    write_envelope(out, body, headers, properties(2, CONTROL_EXCHANGE, "", delivery_tag));
    pj_free(body);
}

void control_channel(buf *out, const char *prefix, int db)
{
    buf_printf(out, "%s/%d.%s", prefix ? prefix : "", db, CONTROL_EXCHANGE);
}

/* ---- Redis side -------------------------------------------------------------- */

static int reply_error(redisContext *ctx, redisReply *r, const char *what, char *err, size_t errlen)
{
    if (r && r->type != REDIS_REPLY_ERROR) return 0;
    snprintf(err, errlen, "%s: %s", what, r ? r->str : ctx->errstr);
    return -1;
}

/* One binding member "<routing_key>SEP<pattern>SEP<queue>": the queue when
 * the routing key is `routing_key` (direct exchange), else NULL. */
static char *bound_queue(const char *member, size_t len, const char *routing_key)
{
    const char *sep = TRANSPORT_SEP;
    size_t seplen = strlen(sep);
    const char *end = member + len;
    const char *a = memmem(member, len, sep, seplen);
    if (!a) return NULL;
    const char *b = memmem(a + seplen, (size_t)(end - a - seplen), sep, seplen);
    if (!b) return NULL;
    if ((size_t)(a - member) != strlen(routing_key) ||
        memcmp(member, routing_key, (size_t)(a - member)) != 0)
        return NULL;
    return xstrndup(b + seplen, (size_t)(end - b - seplen));
}

int control_deliver(redisContext *ctx, const char *prefix, const char *exchange,
                    const char *routing_key, const char *envelope, size_t len,
                    char *err, size_t errlen)
{
    redisReply *r = redisCommand(ctx, "SMEMBERS %s_kombu.binding.%s", prefix, exchange);
    if (reply_error(ctx, r, "SMEMBERS", err, errlen) != 0) {
        if (r) freeReplyObject(r);
        return -1;
    }
    int delivered = 0, rc = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *m = r->element[i];
        if (m->type != REDIS_REPLY_STRING) continue;
        char *queue = bound_queue(m->str, m->len, routing_key);
        if (!queue) continue;
        redisReply *p = redisCommand(ctx, "LPUSH %s%s %b", prefix, queue, envelope, len);
        if (reply_error(ctx, p, "LPUSH", err, errlen) == 0) delivered++;
        else rc = -1;
        if (p) freeReplyObject(p);
        free(queue);
    }
    freeReplyObject(r);
    return rc < 0 && !delivered ? -1 : delivered;
}

int control_declare_node(redisContext *ctx, const char *prefix, const char *hostname,
                         char *err, size_t errlen)
{
    redisReply *r = redisCommand(ctx, "SADD %s_kombu.binding.%s %s%s%s.%s", prefix,
                                 CONTROL_EXCHANGE, TRANSPORT_SEP, TRANSPORT_SEP, hostname,
                                 CONTROL_EXCHANGE);
    int rc = reply_error(ctx, r, "SADD pidbox binding", err, errlen);
    if (r) freeReplyObject(r);
    return rc;
}

int control_forget_node(redisContext *ctx, const char *prefix, const char *hostname,
                        char *err, size_t errlen)
{
    redisReply *r = redisCommand(ctx, "SREM %s_kombu.binding.%s %s%s%s.%s", prefix,
                                 CONTROL_EXCHANGE, TRANSPORT_SEP, TRANSPORT_SEP, hostname,
                                 CONTROL_EXCHANGE);
    int rc = reply_error(ctx, r, "SREM pidbox binding", err, errlen);
    if (r) freeReplyObject(r);
    if (rc != 0) return rc;
    /* kombu deletes the auto-delete queue's 4 priority lists. */
    r = redisCommand(ctx, "DEL %s%s.%s %s%s.%s%s3 %s%s.%s%s6 %s%s.%s%s9",
                     prefix, hostname, CONTROL_EXCHANGE,
                     prefix, hostname, CONTROL_EXCHANGE, TRANSPORT_SEP,
                     prefix, hostname, CONTROL_EXCHANGE, TRANSPORT_SEP,
                     prefix, hostname, CONTROL_EXCHANGE, TRANSPORT_SEP);
    rc = reply_error(ctx, r, "DEL pidbox lists", err, errlen);
    if (r) freeReplyObject(r);
    return rc;
}

/* ---- Client call (mingle) ------------------------------------------------------ */

/* One reply envelope: call on_reply for each node in its body when the
 * ticket is ours. Returns the number of nodes reported. */
static int take_reply(const char *payload, size_t len, const char *ticket,
                      control_reply_fn on_reply, void *ud)
{
    char err[256];
    pj_value *env = parse_envelope(payload, len, err, sizeof err);
    if (!env) {
        log_warning("control: ignoring a malformed reply (%s)", err);
        return 0;
    }
    const pj_value *headers = pj_object_get(env, "headers");
    const char *t = headers ? pj_get_string(headers, "ticket") : NULL;
    int n = 0;
    if (t && strcmp(t, ticket) == 0) {
        pj_value *body = envelope_body(env, err, sizeof err);
        if (!body || body->type != PJ_OBJECT) {
            log_warning("control: ignoring a reply with a bad body (%s)",
                        body ? "not an object" : err);
        } else {
            for (size_t i = 0; i < body->u.object.len; i++, n++)
                on_reply(ud, body->u.object.members[i].key.ptr, body->u.object.members[i].value);
        }
        pj_free(body);
    }
    pj_free(env);
    return n;
}

int control_call(redisContext *ctx, const char *prefix, int db, lamport_clock *mailbox_clock,
                 const char *method, const pj_value *arguments, double timeout_s,
                 control_reply_fn on_reply, void *ud, char *err, size_t errlen)
{
    char oid[37], ticket[37];
    new_uuid(oid);
    new_uuid(ticket);
    buf queue = BUF_INIT, channel = BUF_INIT, env = BUF_INIT;
    buf_printf(&queue, "%s.%s", oid, CONTROL_REPLY_EXCHANGE);
    control_channel(&channel, prefix, db);
    control_command_envelope(&env, method, arguments, ticket, oid, lamport_forward(mailbox_clock),
                             time_now() + timeout_s, NULL);
    int replies = -1;
    redisReply *r = redisCommand(ctx, "SADD %s_kombu.binding.%s %s%s%s%s", prefix,
                                 CONTROL_REPLY_EXCHANGE, oid, TRANSPORT_SEP, TRANSPORT_SEP,
                                 buf_cstr(&queue));
    if (reply_error(ctx, r, "SADD reply binding", err, errlen) != 0) goto out;
    freeReplyObject(r);
    r = redisCommand(ctx, "PUBLISH %b %b", channel.data, channel.len, env.data, env.len);
    if (reply_error(ctx, r, "PUBLISH", err, errlen) != 0) goto cleanup;
    replies = 0;
    double deadline = time_monotonic() + timeout_s;
    for (double left; (left = deadline - time_monotonic()) > 0.001;) {
        freeReplyObject(r);
        r = redisCommand(ctx, "BRPOP %s%s %.3f", prefix, buf_cstr(&queue), left);
        if (reply_error(ctx, r, "BRPOP", err, errlen) != 0) break;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
            replies += take_reply(r->element[1]->str, r->element[1]->len, ticket, on_reply, ud);
    }
cleanup:
    if (r) freeReplyObject(r);
    r = NULL;
    if (!ctx->err) {
        freeReplyObject(redisCommand(ctx, "SREM %s_kombu.binding.%s %s%s%s%s", prefix,
                                     CONTROL_REPLY_EXCHANGE, oid, TRANSPORT_SEP, TRANSPORT_SEP,
                                     buf_cstr(&queue)));
        freeReplyObject(redisCommand(ctx, "DEL %s%s", prefix, buf_cstr(&queue)));
    }
out:
    if (r) freeReplyObject(r);
    buf_free(&queue);
    buf_free(&channel);
    buf_free(&env);
    return replies;
}

/* ---- The node --------------------------------------------------------------- */

struct control_node {
    const redis_url *url;
    char *prefix;
    char *hostname;
    lamport_clock *app_clock, *mailbox_clock;
    control_handler_fn handler;
    void *ud;
    pthread_t thread;
    atomic_int stop;
    redisContext *sub;      /* PSUBSCRIBEd; node thread only */
    redisContext *cmd;      /* replies, bindings; node thread only until joined */
};

static redisContext *node_connect(control_node *n, char *err, size_t errlen)
{
    return redis_url_connect(n->url, CONTROL_REDIS_TIMEOUT_S, err, errlen);
}

static int node_subscribe(control_node *n, char *err, size_t errlen)
{
    if (n->sub) redisFree(n->sub);
    n->sub = node_connect(n, err, errlen);
    if (!n->sub) return -1;
    buf channel = BUF_INIT;
    control_channel(&channel, n->prefix, n->url->db);
    redisReply *r = redisCommand(n->sub, "PSUBSCRIBE %s", buf_cstr(&channel));
    buf_free(&channel);
    int rc = reply_error(n->sub, r, "PSUBSCRIBE", err, errlen);
    if (r) freeReplyObject(r);
    if (rc != 0) {
        redisFree(n->sub);
        n->sub = NULL;
    }
    return rc;
}

/* 1 with *out set, 0 on timeout, -1 when the connection broke. */
static int sub_read(redisContext *c, int timeout_ms, redisReply **out)
{
    void *r = NULL;
    *out = NULL;
    if (redisGetReplyFromReader(c, &r) != REDIS_OK) return -1;
    if (!r) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int ready = poll(&p, 1, timeout_ms);
        if (ready < 0) return errno == EINTR ? 0 : -1;
        if (ready == 0) return 0;
        if (redisBufferRead(c) != REDIS_OK) return -1;
        if (redisGetReplyFromReader(c, &r) != REDIS_OK) return -1;
    }
    *out = r;
    return r ? 1 : 0;
}

static void send_reply(control_node *n, const control_command *c, const pj_value *value)
{
    char err[256];
    if ((!n->cmd || n->cmd->err) && n->cmd) {
        redisFree(n->cmd);
        n->cmd = NULL;
    }
    if (!n->cmd && !(n->cmd = node_connect(n, err, sizeof err))) {
        log_error("control: cannot reply to %s (%s): %s", c->method, c->reply_routing_key, err);
        return;
    }
    buf env = BUF_INIT;
    control_reply_envelope(&env, n->hostname, value, c->ticket, lamport_forward(n->mailbox_clock),
                           c->reply_exchange, c->reply_routing_key, NULL);
    int rc = control_deliver(n->cmd, n->prefix, c->reply_exchange, c->reply_routing_key,
                             env.data, env.len, err, sizeof err);
    if (rc < 0)
        log_error("control: reply to %s could not be delivered: %s", c->method, err);
    else if (rc == 0)
        log_debug("control: reply to %s dropped: the client's reply queue %s is gone",
                  c->method, c->reply_routing_key);
    buf_free(&env);
}

static void handle_message(control_node *n, const char *payload, size_t len)
{
    control_command c;
    char err[256];
    /* celery/worker/pidbox.py: the app clock moves once per command. */
    lamport_forward(n->app_clock);
    if (control_parse(payload, len, &c, err, sizeof err) != 0) {
        log_warning("control: discarding a malformed control message: %s", err);
        return;
    }
    lamport_adjust(n->mailbox_clock, c.clock);
    if (control_matches(&c, n->hostname)) {
        int no_reply = 0;
        pj_value *value = n->handler(n->ud, &c, &no_reply);
        if (!no_reply && c.ticket && c.reply_exchange && c.reply_routing_key)
            send_reply(n, &c, value);
        pj_free(value);
    }
    control_command_free(&c);
}

/* A pub/sub push: ["pmessage", pattern, channel, payload]. */
static void handle_push(control_node *n, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4) return;
    const redisReply *kind = r->element[0], *payload = r->element[3];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "pmessage") != 0) return;
    if (payload->type != REDIS_REPLY_STRING) return;
    handle_message(n, payload->str, payload->len);
}

static void sleep_interruptible(control_node *n, int ms)
{
    for (int waited = 0; waited < ms && !atomic_load(&n->stop); waited += CONTROL_POLL_MS) {
        struct timespec ts = {0, CONTROL_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void *node_main(void *arg)
{
    control_node *n = arg;
    log_set_thread_name("Pidbox");
    int backoff = CONTROL_RECONNECT_MIN_MS;
    int outage = 0;   /* an outage is logged once when it starts, once when it ends */
    while (!atomic_load(&n->stop)) {
        if (!n->sub) {
            char err[256];
            if (node_subscribe(n, err, sizeof err) != 0) {
                if (!outage)
                    log_error("control: cannot subscribe to remote control (%s); retrying with "
                              "back-off (up to %d ms)", err, CONTROL_RECONNECT_MAX_MS);
                outage = 1;
                sleep_interruptible(n, backoff);
                if (backoff < CONTROL_RECONNECT_MAX_MS) backoff *= 2;
                continue;
            }
            if (outage) log_info("control: subscribed to remote control again");
            outage = 0;
            backoff = CONTROL_RECONNECT_MIN_MS;
        }
        redisReply *r;
        int got = sub_read(n->sub, CONTROL_POLL_MS, &r);
        if (got < 0) {
            outage = 1;
            log_error("control: remote control connection lost (%s); reconnecting with back-off "
                      "(up to %d ms)", n->sub->errstr[0] ? n->sub->errstr : "read failed",
                      CONTROL_RECONNECT_MAX_MS);
            redisFree(n->sub);
            n->sub = NULL;
            continue;
        }
        if (got) {
            handle_push(n, r);
            freeReplyObject(r);
        }
    }
    return NULL;
}

control_node *control_node_start(const control_node_options *o, char *err, size_t errlen)
{
    control_node *n = xcalloc(1, sizeof *n);
    n->url = o->url;
    n->prefix = xstrdup(o->prefix ? o->prefix : "");
    n->hostname = xstrdup(o->hostname);
    n->app_clock = o->app_clock;
    n->mailbox_clock = o->mailbox_clock;
    n->handler = o->handler;
    n->ud = o->ud;
    atomic_init(&n->stop, 0);
    if (!(n->cmd = node_connect(n, err, errlen)) ||
        control_declare_node(n->cmd, n->prefix, n->hostname, err, errlen) != 0 ||
        node_subscribe(n, err, errlen) != 0 ||
        pthread_create(&n->thread, NULL, node_main, n) != 0) {
        if (n->sub) redisFree(n->sub);
        if (n->cmd) redisFree(n->cmd);
        free(n->prefix);
        free(n->hostname);
        free(n);
        return NULL;
    }
    return n;
}

void control_node_stop(control_node *n)
{
    if (!n) return;
    atomic_store(&n->stop, 1);
    pthread_join(n->thread, NULL);
    char err[256];
    if (n->cmd && n->cmd->err) {
        redisFree(n->cmd);
        n->cmd = NULL;
    }
    if (!n->cmd) n->cmd = node_connect(n, err, sizeof err);
    if (!n->cmd || control_forget_node(n->cmd, n->prefix, n->hostname, err, sizeof err) != 0)
        log_warning("control: could not remove the pidbox binding of %s: %s", n->hostname,
                    n->cmd ? err : "no broker connection");
    if (n->sub) redisFree(n->sub);
    if (n->cmd) redisFree(n->cmd);
    free(n->prefix);
    free(n->hostname);
    free(n);
}
