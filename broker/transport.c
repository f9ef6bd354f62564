/* broker/transport.c: kombu's Redis transport semantics (see transport.h).
 *
 * Sections: options and queue sets; command building and Lua script calls;
 * fetch; ack; restore (requeue, warm shutdown, visibility timeout);
 * bindings and publish; idle backoff.
 *
 * Everything here writes the keys and values kombu 5.2.4 writes, so Python
 * workers sharing the broker restore our messages and we restore theirs.
 * Where we differ on purpose it is said at the spot (fetch atomicity). */
#include "broker/transport.h"
#include "broker/script.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uuid/uuid.h>

#include "common/errbuf.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/pyjson.h"

/* A restore retries its compare-and-swap this many times when the unacked
 * value changed between our HGET and the script (another worker touched
 * the same tag); after that the tag is left in unacked for a later pass. */
#define RESTORE_CAS_ATTEMPTS 3


/* ---- Options and queue sets ---- */

void transport_options_init(transport_options *o)
{
    static const int steps[] = {0, 3, 6, 9};
    memset(o, 0, sizeof *o);
    o->sep = TRANSPORT_SEP;
    memcpy(o->priority_steps, steps, sizeof steps);
    o->n_priority_steps = 4;
    o->visibility_timeout = 3600;
    o->unacked_key = "unacked";
    o->unacked_index_key = "unacked_index";
    o->unacked_mutex_key = "unacked_mutex";
    o->unacked_mutex_expire = 300;
    o->restore_visible_batch = TRANSPORT_RESTORE_VISIBLE_BATCH;
    o->global_keyprefix = "";
}

void transport_queues_init(transport_queues *q)
{
    q->names = NULL;
    q->n = q->cap = 0;
}

void transport_queues_deinit(transport_queues *q)
{
    for (size_t i = 0; i < q->n; i++) free(q->names[i]);
    free(q->names);
    transport_queues_init(q);
}

static ssize_t queues_find(const transport_queues *q, const char *name)
{
    for (size_t i = 0; i < q->n; i++)
        if (strcmp(q->names[i], name) == 0) return (ssize_t)i;
    return -1;
}

int transport_queues_add(transport_queues *q, const char *name)
{
    if (queues_find(q, name) >= 0) return 1;
    if (q->n >= TRANSPORT_MAX_QUEUES) return -1;
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 4;
        q->names = xrealloc(q->names, q->cap * sizeof *q->names);
    }
    q->names[q->n++] = xstrdup(name);
    return 0;
}

int transport_queues_remove(transport_queues *q, const char *name)
{
    ssize_t i = queues_find(q, name);
    if (i < 0) return -1;
    free(q->names[i]);
    memmove(&q->names[i], &q->names[i + 1], (q->n - (size_t)i - 1) * sizeof *q->names);
    q->n--;
    return 0;
}

/* kombu's round-robin cycle: the queue just served goes to the end
 * (kombu.utils.scheduling.round_robin_cycle.rotate; PROTOCOL §2.2). */
void transport_queues_rotate(transport_queues *q, const char *name)
{
    ssize_t i = queues_find(q, name);
    if (i < 0) return;
    char *moved = q->names[i];
    memmove(&q->names[i], &q->names[i + 1], (q->n - (size_t)i - 1) * sizeof *q->names);
    q->names[q->n - 1] = moved;
}

/* ---- Command building and Lua script calls ---- */

/* An argv for redisCommandArgv. Arguments are either borrowed (must outlive
 * the call) or owned copies freed by cmd_free. */
typedef struct cmd {
    const char **argv;
    size_t *lens;
    char **owned;
    size_t n, cap, n_owned;
} cmd;

static void cmd_init(cmd *c)
{
    memset(c, 0, sizeof *c);
}

static void cmd_free(cmd *c)
{
    for (size_t i = 0; i < c->n_owned; i++) free(c->owned[i]);
    free(c->owned);
    free(c->argv);
    free(c->lens);
    cmd_init(c);
}

static void cmd_add(cmd *c, const char *p, size_t len)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->argv = xrealloc(c->argv, c->cap * sizeof *c->argv);
        c->lens = xrealloc(c->lens, c->cap * sizeof *c->lens);
        c->owned = xrealloc(c->owned, c->cap * sizeof *c->owned);
    }
    c->argv[c->n] = p;
    c->lens[c->n] = len;
    c->n++;
}

static void cmd_adds(cmd *c, const char *s)
{
    cmd_add(c, s, strlen(s));
}

/* Takes ownership of s (a NUL-terminated heap string of length len). */
static void cmd_add_owned(cmd *c, char *s, size_t len)
{
    cmd_add(c, s, len);
    c->owned[c->n_owned++] = s;
}

static void cmd_addf(cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void cmd_addf(cmd *c, const char *fmt, ...)
{
    buf b = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    size_t len = b.len;
    cmd_add_owned(c, buf_detach(&b), len);
}

/* A key with global_keyprefix in front: kombu's PrefixedStrictRedis
 * prefixes every key of every command it sends (PROTOCOL §2.4). */
static void cmd_add_key(cmd *c, const transport_options *o, const char *name)
{
    cmd_addf(c, "%s%s", o->global_keyprefix, name);
}

static redisReply *cmd_run(redisContext *ctx, const cmd *c, char *err, size_t errlen)
{
    redisReply *r = redisCommandArgv(ctx, (int)c->n, c->argv, c->lens);
    if (!r) {
        errbuf_set(err, errlen, "redis: %s", ctx->errstr[0] ? ctx->errstr : "connection lost");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        errbuf_set(err, errlen, "redis %.*s: %s", (int)c->lens[0], c->argv[0], r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Run a script with c holding [placeholder, placeholder, numkeys, keys...,
 * args...] (broker/script.h fills the placeholders). */
static redisReply *cmd_script_run(redisContext *ctx, lua_script *s, cmd *c, char *err,
                                  size_t errlen)
{
    return script_run(ctx, s, (int)c->n, c->argv, c->lens, err, errlen);
}

static void script_cmd_init(cmd *c, size_t numkeys)
{
    cmd_init(c);
    cmd_add(c, "", 0);   /* EVALSHA / EVAL, filled by script_run */
    cmd_add(c, "", 0);   /* sha / body */
    cmd_addf(c, "%zu", numkeys);
}

/* ---- Fetch ----
 *
 * kombu pops with BRPOP and then, in a second round trip, writes the unacked
 * bookkeeping (PROTOCOL §4.1). A kill -9 (or a lost connection) between the
 * two loses the message: it is in no list and in no unacked entry. We do
 * both in one Lua script, which Redis runs atomically: after the script
 * every popped message is in `unacked`/`unacked_index`, before it every
 * message is still in its list. A crash at any instant therefore loses
 * nothing, and restore_visible (ours or a Python worker's) brings it back.
 *
 * The price: a script cannot block, so the call returns at once when all
 * queues are empty and an idle worker polls with transport_backoff.
 *
 * KEYS: unacked_index, unacked, then one list per (step, queue) with steps
 * as the outer loop and queues in their current order (kombu's BRPOP key
 * order, PROTOCOL §2.2). ARGV: max, n_queues, n_steps, queue names (base
 * names, the routing key fallback). The script keeps its own queue order
 * and rotates the served queue to the end, so several messages in one call
 * follow kombu's round robin. Reply: per message {key index (0-based),
 * payload, tag or false}.
 *
 * The unacked value is '[<payload verbatim>, "<exchange>", "<routing_key>"]'
 * with json.dumps separators and string escaping (ensure_ascii), the shape
 * kombu writes (golden_samples "unacked_hash_entry"). cjson.encode is not
 * used for the strings because it escapes '/' and keeps non-ASCII raw, which
 * Python does not. pystr's first line is the fast path for the usual
 * exchange and routing key: printable ASCII without a quote or backslash
 * (bytes 32-126 except 34 and 92: the set json.dumps leaves as is) is
 * quoted unchanged after one pattern search instead of a byte loop in Lua
 * (measured: 16 -> 13 us of Redis CPU per fetched message).
 * A payload that is not a JSON object with a string
 * properties.delivery_tag (or whose exchange/routing key is not valid
 * UTF-8) is returned untagged and not registered: Celery acks undecodable
 * messages and drops them (§4.5). A missing exchange reads as "" and a
 * missing routing key as the queue it came from (kombu would raise). */
static lua_script fetch_script = {"fetch", "\
local function pystr(s)\n\
  if not string.find(s, '[^ !#-Z%[%]^-~]') then return '\"' .. s .. '\"' end\n\
  local out = {'\"'}\n\
  local i, n = 1, #s\n\
  while i <= n do\n\
    local c = s:byte(i)\n\
    local cp, len = nil, 1\n\
    if c == 34 then out[#out+1] = '\\\\\"'\n\
    elseif c == 92 then out[#out+1] = '\\\\\\\\'\n\
    elseif c == 10 then out[#out+1] = '\\\\n'\n\
    elseif c == 13 then out[#out+1] = '\\\\r'\n\
    elseif c == 9 then out[#out+1] = '\\\\t'\n\
    elseif c == 8 then out[#out+1] = '\\\\b'\n\
    elseif c == 12 then out[#out+1] = '\\\\f'\n\
    elseif c >= 32 and c < 127 then out[#out+1] = string.char(c)\n\
    elseif c < 128 then cp = c\n\
    elseif c >= 0xC2 and c <= 0xDF then cp, len = c - 0xC0, 2\n\
    elseif c >= 0xE0 and c <= 0xEF then cp, len = c - 0xE0, 3\n\
    elseif c >= 0xF0 and c <= 0xF4 then cp, len = c - 0xF0, 4\n\
    else return nil end\n\
    if len > 1 then\n\
      for k = 1, len - 1 do\n\
        local cc = s:byte(i + k)\n\
        if not cc or cc < 0x80 or cc > 0xBF then return nil end\n\
        cp = cp * 64 + (cc - 0x80)\n\
      end\n\
      if (len == 3 and (cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF)))\n\
         or (len == 4 and (cp < 0x10000 or cp > 0x10FFFF)) then return nil end\n\
    end\n\
    if cp then\n\
      if cp >= 0x10000 then\n\
        local v = cp - 0x10000\n\
        out[#out+1] = string.format('\\\\u%04x\\\\u%04x', 0xD800 + math.floor(v / 1024), 0xDC00 + v % 1024)\n\
      else\n\
        out[#out+1] = string.format('\\\\u%04x', cp)\n\
      end\n\
    end\n\
    i = i + len\n\
  end\n\
  out[#out+1] = '\"'\n\
  return table.concat(out)\n\
end\n\
local function envelope_fields(payload, queue)\n\
  local ok, env = pcall(cjson.decode, payload)\n\
  if not ok or type(env) ~= 'table' then return nil end\n\
  local props = env['properties']\n\
  if type(props) ~= 'table' or type(props['delivery_tag']) ~= 'string' then return nil end\n\
  local ex, rk = '', queue\n\
  local di = props['delivery_info']\n\
  if type(di) == 'table' then\n\
    if type(di['exchange']) == 'string' then ex = di['exchange'] end\n\
    if type(di['routing_key']) == 'string' then rk = di['routing_key'] end\n\
  end\n\
  local exj, rkj = pystr(ex), pystr(rk)\n\
  if not exj or not rkj then return nil end\n\
  return props['delivery_tag'], exj, rkj\n\
end\n\
local max, nq, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n\
local order = {}\n\
for q = 1, nq do order[q] = q end\n\
local t = redis.call('TIME')\n\
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n\
local out = {}\n\
local bad = nil\n\
for m = 1, max do\n\
  local got = false\n\
  for s = 0, ns - 1 do\n\
    for pos = 1, nq do\n\
      local q = order[pos]\n\
      local ki = s * nq + q\n\
      local payload = redis.pcall('RPOP', KEYS[2 + ki])\n\
      if type(payload) == 'table' then bad = bad or (2 + ki); payload = false end\n\
      if payload then\n\
        table.remove(order, pos)\n\
        order[nq] = q\n\
        local tag, exj, rkj = envelope_fields(payload, ARGV[3 + q])\n\
        if tag then\n\
          redis.call('ZADD', KEYS[1], now, tag)\n\
          redis.call('HSET', KEYS[2], tag, '[' .. payload .. ', ' .. exj .. ', ' .. rkj .. ']')\n\
        end\n\
        out[#out+1] = ki - 1\n\
        out[#out+1] = payload\n\
        out[#out+1] = tag or false\n\
        got = true\n\
        break\n\
      end\n\
    end\n\
    if got then break end\n\
  end\n\
  if not got then break end\n\
end\n\
if #out == 0 and bad then\n\
  return redis.error_reply('WRONGTYPE queue key ' .. KEYS[bad] .. ' does not hold a list: skipped')\n\
end\n\
return out\n", "", 0};

/* The list for one (queue, step) pair: step 0 is the bare name, others are
 * queue SEP digit (kombu _q_for_pri). */
static char *step_key(const transport_options *opts, const char *queue, int step)
{
    buf b = BUF_INIT;
    if (step)
        buf_printf(&b, "%s%s%d", queue, opts->sep, step);
    else
        buf_puts(&b, queue);
    return buf_detach(&b);
}

char *transport_priority_key(const transport_options *opts, const char *queue, int priority)
{
    /* kombu clamps to 0..9, then takes steps[bisect_right(steps, p) - 1];
     * a priority below the first step wraps to the last step, which is
     * Python's steps[-1] (kombu/transport/redis.py priority()). */
    if (priority < 0) priority = 0;
    if (priority > 9) priority = 9;
    size_t idx = 0;
    while (idx < opts->n_priority_steps && opts->priority_steps[idx] <= priority) idx++;
    return step_key(opts, queue, opts->priority_steps[idx ? idx - 1 : opts->n_priority_steps - 1]);
}

/* kombu: dest.rsplit(sep, 1)[0]. */
static char *split_last_sep(const char *key, const char *sep)
{
    size_t klen = strlen(key), slen = strlen(sep);
    if (slen == 0 || slen > klen) return xstrdup(key);
    for (size_t i = klen - slen + 1; i-- > 0;)
        if (memcmp(key + i, sep, slen) == 0) return xstrndup(key, i);
    return xstrdup(key);
}

void transport_messages_free(fetched_message *msgs, size_t n)
{
    if (!msgs) return;
    for (size_t i = 0; i < n; i++) {
        free(msgs[i].key);
        free(msgs[i].queue);
        free(msgs[i].payload);
        free(msgs[i].tag);
    }
    free(msgs);
}

/* Hand out the script's reply. keys/names: the key list and the queue
 * names in the order the script was given them (the order may have moved
 * since, e.g. another thread's fetch rotated it); each served queue is
 * rotated to the end of `queues` by name. */
static int fetch_reply_parse(const redisReply *r, const char *sep, char **keys, size_t nkeys,
                             char **names, size_t nq, transport_queues *queues,
                             fetched_message **out, size_t *n, char *err, size_t errlen)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 3 != 0) {
        errbuf_set(err, errlen, "script fetch: unexpected reply");
        return -1;
    }
    size_t m = r->elements / 3;
    fetched_message *msgs = m ? xcalloc(m, sizeof *msgs) : NULL;
    int rc = 0;
    for (size_t i = 0; i < m; i++) {
        const redisReply *ki = r->element[3 * i], *pl = r->element[3 * i + 1], *tg = r->element[3 * i + 2];
        if (ki->type != REDIS_REPLY_INTEGER || ki->integer < 0 || (size_t)ki->integer >= nkeys
            || pl->type != REDIS_REPLY_STRING
            || (tg->type != REDIS_REPLY_STRING && tg->type != REDIS_REPLY_NIL)) {
            errbuf_set(err, errlen, "script fetch: malformed reply entry %zu", i);
            rc = -1;
            break;
        }
        size_t k = (size_t)ki->integer;
        msgs[i].key = xstrdup(keys[k]);
        msgs[i].payload = xstrndup(pl->str, pl->len);
        msgs[i].payload_len = pl->len;
        msgs[i].tag = tg->type == REDIS_REPLY_STRING ? xstrndup(tg->str, tg->len) : NULL;
        msgs[i].queue = split_last_sep(keys[k], sep);
        transport_queues_rotate(queues, names[k % nq]);
    }
    if (rc < 0) {
        /* The messages are registered in unacked (or were untagged); the
         * caller's restore_visible recovers them. Nothing is handed out. */
        transport_messages_free(msgs, m);
        return -1;
    }
    *out = msgs;
    *n = m;
    return 0;
}

/* Check max and the queue set, and build the key list (steps outer,
 * queues in their current order) and the script's argument list. */
static int fetch_build(const transport_options *opts, const transport_queues *queues, int max,
                       transport_fetch_call *call, cmd *c, char *err, size_t errlen)
{
    if (max < 1 || max > TRANSPORT_MAX_FETCH) {
        errbuf_set(err, errlen, "fetch: max %d outside 1..%d", max, TRANSPORT_MAX_FETCH);
        return -1;
    }
    if (queues->n == 0) {
        errbuf_set(err, errlen, "fetch: no queues to consume");
        return -1;
    }
    size_t nq = queues->n, ns = opts->n_priority_steps, nkeys = nq * ns;
    char **keys = xmalloc(nkeys * sizeof *keys);
    for (size_t s = 0; s < ns; s++)
        for (size_t q = 0; q < nq; q++)
            keys[s * nq + q] = step_key(opts, queues->names[q], opts->priority_steps[s]);

    script_cmd_init(c, 2 + nkeys);
    cmd_add_key(c, opts, opts->unacked_index_key);
    cmd_add_key(c, opts, opts->unacked_key);
    for (size_t k = 0; k < nkeys; k++) cmd_add_key(c, opts, keys[k]);
    cmd_addf(c, "%d", max);
    cmd_addf(c, "%zu", nq);
    cmd_addf(c, "%zu", ns);
    char **names = xmalloc(nq * sizeof *names);
    for (size_t q = 0; q < nq; q++) {
        names[q] = xstrdup(queues->names[q]);
        cmd_adds(c, names[q]);
    }
    call->keys = keys;
    call->nkeys = nkeys;
    call->names = names;
    call->nq = nq;
    return 0;
}

static void fetch_call_free(transport_fetch_call *call)
{
    for (size_t k = 0; call->keys && k < call->nkeys; k++) free(call->keys[k]);
    free(call->keys);
    for (size_t q = 0; call->names && q < call->nq; q++) free(call->names[q]);
    free(call->names);
    memset(call, 0, sizeof *call);
}

int transport_fetch(redisContext *ctx, const transport_options *opts, transport_queues *queues,
                    int max, fetched_message **out, size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    transport_fetch_call call;
    cmd c;
    if (fetch_build(opts, queues, max, &call, &c, err, errlen) < 0) return -1;
    int rc = -1;
    redisReply *r = cmd_script_run(ctx, &fetch_script, &c, err, errlen);
    if (r) {
        rc = fetch_reply_parse(r, opts->sep, call.keys, call.nkeys, call.names, call.nq, queues,
                               out, n, err, errlen);
        freeReplyObject(r);
    }
    cmd_free(&c);
    fetch_call_free(&call);
    return rc;
}

int transport_fetch_prepare(redisContext *ctx, char *err, size_t errlen)
{
    return script_prepare(ctx, &fetch_script, err, errlen);
}

int transport_fetch_append(redisContext *ctx, const transport_options *opts,
                           const transport_queues *queues, int max, transport_fetch_call *call,
                           char *err, size_t errlen)
{
    memset(call, 0, sizeof *call);
    cmd c;
    if (fetch_build(opts, queues, max, call, &c, err, errlen) < 0) return -1;
    int rc = script_append(ctx, &fetch_script, (int)c.n, c.argv, c.lens, err, errlen);
    cmd_free(&c);
    if (rc < 0) fetch_call_free(call);
    return rc;
}

int transport_fetch_finish(redisContext *ctx, const transport_options *opts,
                           transport_queues *queues, pthread_mutex_t *queues_lock,
                           transport_fetch_call *call, fetched_message **out, size_t *n,
                           char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    int noscript, rc = -1;
    redisReply *r = script_read(ctx, &noscript, err, errlen);
    if (r && noscript) {
        /* Nothing ran, nothing was popped: load the script for next time
         * (nothing else is pending, the fetch was queued last). */
        rc = script_reload(ctx, &fetch_script, err, errlen);
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        errbuf_set(err, errlen, "script fetch: %s", r->str);
    } else if (r) {
        if (queues_lock) pthread_mutex_lock(queues_lock);
        rc = fetch_reply_parse(r, opts->sep, call->keys, call->nkeys, call->names, call->nq,
                               queues, out, n, err, errlen);
        if (queues_lock) pthread_mutex_unlock(queues_lock);
    }
    if (r) freeReplyObject(r);
    fetch_call_free(call);
    return rc;
}

/* ---- Ack ---- */

/* The error text of a reply in a MULTI/EXEC exchange, or NULL. Errors such
 * as WRONGTYPE surface inside EXEC's array, not when the command is queued. */
static const char *exec_error(const redisReply *r, int is_exec)
{
    if (r->type == REDIS_REPLY_ERROR) return r->str;
    if (!is_exec) return NULL;
    if (r->type != REDIS_REPLY_ARRAY) return "transaction aborted";
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_ERROR) return r->element[i]->str;
    return NULL;
}

/* One MULTI with a variadic ZREM and HDEL: the same effect as kombu's
 * per-tag ZREM+HDEL (PROTOCOL §4.2), in one round trip for any n. */
void transport_ack_append(redisContext *ctx, const transport_options *opts,
                          const char *const *tags, size_t n)
{
    if (n == 0) return;
    cmd z, h;
    cmd_init(&z);
    cmd_init(&h);
    cmd_adds(&z, "ZREM");
    cmd_add_key(&z, opts, opts->unacked_index_key);
    cmd_adds(&h, "HDEL");
    cmd_add_key(&h, opts, opts->unacked_key);
    for (size_t i = 0; i < n; i++) {
        cmd_adds(&z, tags[i]);
        cmd_adds(&h, tags[i]);
    }
    redisAppendCommand(ctx, "MULTI");
    redisAppendCommandArgv(ctx, (int)z.n, z.argv, z.lens);
    redisAppendCommandArgv(ctx, (int)h.n, h.argv, h.lens);
    redisAppendCommand(ctx, "EXEC");
    cmd_free(&z);
    cmd_free(&h);
}

int transport_ack_finish(redisContext *ctx, size_t n, char *err, size_t errlen)
{
    if (n == 0) return 0;
    int rc = 0;
    for (int i = 0; i < 4; i++) {
        redisReply *r = NULL;
        if (redisGetReply(ctx, (void **)&r) != REDIS_OK || !r) {
            errbuf_set(err, errlen, "redis: %s", ctx->errstr[0] ? ctx->errstr : "connection lost");
            return -1;   /* the connection is unusable; the caller reconnects */
        }
        const char *why = exec_error(r, i == 3);
        if (rc == 0 && why) {
            errbuf_set(err, errlen, "ack: %s", why);
            rc = -1;
        }
        freeReplyObject(r);
    }
    return rc;
}

int transport_ack(redisContext *ctx, const transport_options *opts,
                  const char *const *tags, size_t n, char *err, size_t errlen)
{
    transport_ack_append(ctx, opts, tags, n);
    return transport_ack_finish(ctx, n, err, errlen);
}

/* ---- Restore (requeue, warm shutdown, visibility timeout) ----
 *
 * kombu restores a tag with WATCH unacked / HGET / MULTI / ZREM / HDEL /
 * push / EXEC, re-serialising the envelope after setting
 * headers.redelivered and properties.delivery_info.redelivered (PROTOCOL
 * §4.3/§4.4). We HGET, rewrite the envelope here with pyjson (so the bytes
 * are exactly json.dumps', which Lua's cjson cannot give: it reorders keys
 * and rounds big numbers), then run a compare-and-swap script: if the
 * stored value is still the one we read, ZREM + HDEL + push happen in one
 * atomic step; if it changed, we retry. */
static lua_script restore_script = {"restore", "\
local cur = redis.call('HGET', KEYS[2], ARGV[1])\n\
if cur and cur ~= ARGV[2] then return -1 end\n\
redis.call('ZREM', KEYS[1], ARGV[1])\n\
redis.call('HDEL', KEYS[2], ARGV[1])\n\
if not cur then return 0 end\n\
local push = (ARGV[4] == 'L') and 'LPUSH' or 'RPUSH'\n\
for i = 3, #KEYS do redis.call(push, KEYS[i], ARGV[3]) end\n\
return 1\n", "", 0};

/* Set both flags as kombu's _do_restore_message does: headers first, and a
 * missing headers/properties/delivery_info stops there (its KeyError). */
static void mark_redelivered(pj_value *env)
{
    pj_value *headers = pj_object_get(env, "headers");
    if (!headers || headers->type != PJ_OBJECT) return;
    pj_object_set(headers, "redelivered", pj_new_bool(1));
    pj_value *di = pj_object_get(pj_object_get(env, "properties"), "delivery_info");
    if (!di || di->type != PJ_OBJECT) return;
    pj_object_set(di, "redelivered", pj_new_bool(1));
}

/* Targets for (exchange, routing_key), kombu's Channel._lookup: the
 * anonymous exchange routes to the queue named by the routing key; a named
 * exchange is looked up in its binding set. We cannot know the exchange
 * type (kombu keeps it in process memory), so bindings match as a direct
 * exchange does: members whose routing key equals ours. Appends unprefixed
 * queue names to q. */
static int lookup_queues(redisContext *ctx, const transport_options *opts, const char *exchange,
                         const char *routing_key, transport_queues *q, char *err, size_t errlen)
{
    if (!exchange[0]) {
        transport_queues_add(q, routing_key);
        return 0;
    }
    cmd c;
    cmd_init(&c);
    cmd_adds(&c, "SMEMBERS");
    cmd_addf(&c, "%s_kombu.binding.%s", opts->global_keyprefix, exchange);
    redisReply *r = cmd_run(ctx, &c, err, errlen);
    cmd_free(&c);
    if (!r) return -1;
    size_t slen = strlen(opts->sep);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *m = r->element[i];
        if (m->type != REDIS_REPLY_STRING) continue;
        /* member = rk SEP pattern SEP queue */
        const char *s1 = memmem(m->str, m->len, opts->sep, slen);
        if (!s1) continue;
        const char *rest = s1 + slen;
        size_t restlen = m->len - (size_t)(rest - m->str);
        const char *s2 = memmem(rest, restlen, opts->sep, slen);
        if (!s2) continue;
        size_t rklen = (size_t)(s1 - m->str);
        if (rklen != strlen(routing_key) || memcmp(m->str, routing_key, rklen) != 0) continue;
        char *queue = xstrndup(s2 + slen, restlen - (size_t)(s2 + slen - rest));
        transport_queues_add(q, queue);
        free(queue);
    }
    freeReplyObject(r);
    return 0;
}

/* Parse a stored unacked value [envelope, exchange, routing_key] and build
 * the redelivered envelope. 0 ok; -1 malformed. */
static int unacked_value_decode(const char *v, size_t len, buf *newpayload, char **exchange,
                                char **routing_key, char *err, size_t errlen)
{
    pj_error perr;
    pj_value *arr = pj_parse(v, len, &perr);
    if (!arr) {
        errbuf_set(err, errlen, "unacked value is not JSON: %s", perr.msg);
        return -1;
    }
    int rc = -1;
    if (arr->type != PJ_ARRAY || arr->u.array.len != 3 || arr->u.array.items[0]->type != PJ_OBJECT
        || (arr->u.array.items[1]->type != PJ_STRING && arr->u.array.items[1]->type != PJ_NULL)
        || arr->u.array.items[2]->type != PJ_STRING) {
        errbuf_set(err, errlen, "unacked value is not [envelope, exchange, routing_key]");
    } else {
        pj_value *env = arr->u.array.items[0];
        mark_redelivered(env);
        pj_dump(newpayload, env, 0);
        const pj_value *ex = arr->u.array.items[1];
        /* A null exchange is anonymous too (kombu: `if not exchange`). */
        *exchange = xstrdup(ex->type == PJ_STRING ? ex->u.string.ptr : "");
        *routing_key = xstrdup(arr->u.array.items[2]->u.string.ptr);
        rc = 0;
    }
    pj_free(arr);
    return rc;
}

static redisReply *hget_unacked(redisContext *ctx, const transport_options *opts, const char *tag,
                                char *err, size_t errlen)
{
    cmd c;
    cmd_init(&c);
    cmd_adds(&c, "HGET");
    cmd_add_key(&c, opts, opts->unacked_key);
    cmd_adds(&c, tag);
    redisReply *r = cmd_run(ctx, &c, err, errlen);
    cmd_free(&c);
    return r;
}

/* One CAS attempt. 1 restored, 0 tag was not in unacked, 2 value changed
 * under us (retry), -1 error. */
static int restore_attempt(redisContext *ctx, const transport_options *opts, const char *tag,
                           int leftmost, char *err, size_t errlen)
{
    redisReply *cur = hget_unacked(ctx, opts, tag, err, errlen);
    if (!cur) return -1;
    buf payload = BUF_INIT;
    char *exchange = NULL, *rk = NULL;
    transport_queues targets;
    transport_queues_init(&targets);
    int rc = -1;
    if (cur->type == REDIS_REPLY_STRING) {
        if (unacked_value_decode(cur->str, cur->len, &payload, &exchange, &rk, err, errlen) < 0)
            goto out;
        if (lookup_queues(ctx, opts, exchange, rk, &targets, err, errlen) < 0) goto out;
        if (targets.n == 0)
            log_warning("Message %s routed to exchange '%s' key '%s' matches no binding; "
                        "dropped as kombu does", tag, exchange, rk);
    }
    cmd c;
    script_cmd_init(&c, 2 + targets.n);
    cmd_add_key(&c, opts, opts->unacked_index_key);
    cmd_add_key(&c, opts, opts->unacked_key);
    for (size_t i = 0; i < targets.n; i++) cmd_add_key(&c, opts, targets.names[i]);
    cmd_adds(&c, tag);
    if (cur->type == REDIS_REPLY_STRING) cmd_add(&c, cur->str, cur->len);
    else cmd_add(&c, "", 0);
    cmd_add(&c, payload.len ? payload.data : "", payload.len);
    cmd_adds(&c, leftmost ? "L" : "R");
    redisReply *r = cmd_script_run(ctx, &restore_script, &c, err, errlen);
    cmd_free(&c);
    if (r) {
        rc = r->type != REDIS_REPLY_INTEGER ? -1 : r->integer < 0 ? 2 : (int)r->integer;
        if (rc < 0) errbuf_set(err, errlen, "script restore: unexpected reply");
        freeReplyObject(r);
    }
out:
    freeReplyObject(cur);
    buf_free(&payload);
    free(exchange);
    free(rk);
    transport_queues_deinit(&targets);
    return rc;
}

static int restore_tag(redisContext *ctx, const transport_options *opts, const char *tag,
                       int leftmost, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < RESTORE_CAS_ATTEMPTS; attempt++) {
        int rc = restore_attempt(ctx, opts, tag, leftmost, err, errlen);
        if (rc != 2) return rc;
    }
    errbuf_set(err, errlen, "restore %s: unacked value kept changing; left in unacked", tag);
    return -1;
}

int transport_requeue(redisContext *ctx, const transport_options *opts,
                      const char *tag, char *err, size_t errlen)
{
    /* kombu's reject(requeue=True) is restore_by_tag(leftmost=True): LPUSH,
     * the back of the line (PROTOCOL §4.3). */
    return restore_tag(ctx, opts, tag, 1, err, errlen) < 0 ? -1 : 0;
}

int transport_restore(redisContext *ctx, const transport_options *opts,
                      const char *const *tags, size_t n, char *err, size_t errlen)
{
    /* RPUSH in delivery order, as kombu's restore_unacked walks _delivered
     * (PROTOCOL §4.4 #1): the last restored is the next popped. */
    int restored = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        char e[256];
        int rc = restore_tag(ctx, opts, tags[i], 0, e, sizeof e);
        if (rc < 0) {
            if (!failed) errbuf_set(err, errlen, "%s", e);
            failed++;
            log_error("Could not restore message %s: %s", tags[i], e);
        } else {
            restored += rc;
        }
    }
    return failed ? -1 : restored;
}

/* Release the mutex only if it still holds our token (redis-py Lock's
 * release script, which kombu's Mutex uses). */
static lua_script unlock_script = {"unlock", "\
local token = redis.call('GET', KEYS[1])\n\
if not token or token ~= ARGV[1] then return 0 end\n\
redis.call('DEL', KEYS[1])\n\
return 1\n", "", 0};

static void mutex_release(redisContext *ctx, const transport_options *opts, const char *token)
{
    char e[256];
    cmd c;
    script_cmd_init(&c, 1);
    cmd_add_key(&c, opts, opts->unacked_mutex_key);
    cmd_adds(&c, token);
    redisReply *r = cmd_script_run(ctx, &unlock_script, &c, e, sizeof e);
    cmd_free(&c);
    if (r) freeReplyObject(r);
    else log_warning("Could not release %s (it expires by itself): %s", opts->unacked_mutex_key, e);
}

/* 1 acquired, 0 held by someone else, -1 error. Token: uuid1().hex as
 * redis-py's Lock uses. */
static int mutex_acquire(redisContext *ctx, const transport_options *opts, char token[33],
                         char *err, size_t errlen)
{
    uuid_t u;
    char s[37];
    uuid_generate_time(u);
    uuid_unparse_lower(u, s);
    size_t j = 0;
    for (size_t i = 0; s[i]; i++)
        if (s[i] != '-') token[j++] = s[i];
    token[j] = '\0';
    cmd c;
    cmd_init(&c);
    cmd_adds(&c, "SET");
    cmd_add_key(&c, opts, opts->unacked_mutex_key);
    cmd_adds(&c, token);
    cmd_adds(&c, "PX");
    cmd_addf(&c, "%lld", (long long)opts->unacked_mutex_expire * 1000);
    cmd_adds(&c, "NX");
    redisReply *r = cmd_run(ctx, &c, err, errlen);
    cmd_free(&c);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_STATUS ? 1 : 0;
    freeReplyObject(r);
    return rc;
}

int transport_restore_visible(redisContext *ctx, const transport_options *opts,
                              int64_t now_us, char *err, size_t errlen)
{
    char token[33];
    int got = mutex_acquire(ctx, opts, token, err, errlen);
    if (got <= 0) return got;

    cmd c;
    cmd_init(&c);
    cmd_adds(&c, "ZREVRANGEBYSCORE");
    cmd_add_key(&c, opts, opts->unacked_index_key);
    cmd_addf(&c, "%.17g", (double)now_us / 1e6 - opts->visibility_timeout);
    cmd_adds(&c, "0");
    cmd_adds(&c, "WITHSCORES");
    cmd_adds(&c, "LIMIT");
    cmd_adds(&c, "0");
    cmd_addf(&c, "%d", opts->restore_visible_batch);
    redisReply *r = cmd_run(ctx, &c, err, errlen);
    cmd_free(&c);
    int restored = -1;
    if (r) {
        restored = 0;
        /* Newest first, each RPUSHed: the oldest ends at the front. */
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
            const redisReply *tag = r->element[i];
            if (tag->type != REDIS_REPLY_STRING) continue;
            char e[256];
            int rc = restore_tag(ctx, opts, tag->str, 0, e, sizeof e);
            if (rc < 0)
                log_error("Could not restore message %s: %s; it stays in %s", tag->str, e,
                          opts->unacked_key);
            else
                restored += rc;
        }
        freeReplyObject(r);
    }
    mutex_release(ctx, opts, token);
    return restored;
}

/* ---- Bindings and publish ---- */

int transport_declare_queue(redisContext *ctx, const transport_options *opts,
                            const char *queue, const char *exchange, const char *routing_key,
                            char *err, size_t errlen)
{
    cmd c;
    cmd_init(&c);
    cmd_adds(&c, "SADD");
    cmd_addf(&c, "%s_kombu.binding.%s", opts->global_keyprefix, exchange);
    /* rk SEP pattern SEP queue, pattern empty for direct (PROTOCOL §5). */
    cmd_addf(&c, "%s%s%s%s", routing_key ? routing_key : queue, opts->sep, opts->sep, queue);
    redisReply *r = cmd_run(ctx, &c, err, errlen);
    cmd_free(&c);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

int transport_publish(redisContext *ctx, const transport_options *opts, const char *queue,
                      int priority, const char *envelope, size_t len, char *err, size_t errlen)
{
    char *key = transport_priority_key(opts, queue, priority);
    cmd c;
    cmd_init(&c);
    cmd_adds(&c, "LPUSH");
    cmd_add_key(&c, opts, key);
    cmd_add(&c, envelope, len);
    redisReply *r = cmd_run(ctx, &c, err, errlen);
    cmd_free(&c);
    free(key);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

/* ---- Idle backoff ---- */

void transport_backoff_reset(transport_backoff *b)
{
    b->next_us = TRANSPORT_BACKOFF_MIN_US;
}

int64_t transport_backoff_next(transport_backoff *b)
{
    if (b->next_us < TRANSPORT_BACKOFF_MIN_US) b->next_us = TRANSPORT_BACKOFF_MIN_US;
    int64_t wait = b->next_us;
    b->next_us = wait * 2 > TRANSPORT_BACKOFF_MAX_US ? TRANSPORT_BACKOFF_MAX_US : wait * 2;
    return wait;
}

void transport_backoff_sleep(transport_backoff *b)
{
    int64_t us = transport_backoff_next(b);
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}
