/* broker/backend.c: Celery's Redis result backend (see backend.h).
 *
 * Sections: value encoding; the store script; single and pipelined stores.
 * The value is composed here piece by piece in Celery's key order
 * (celery/backends/base.py _get_result_meta + _store_result: status,
 * result, traceback, children, date_done, [group_id], [parent_id], task_id)
 * with json.dumps' separators; every JSON scalar and sub-value goes through
 * pj_dump so strings are escaped exactly as Python does. */
#include "broker/backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/script.h"
#include "common/errbuf.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Celery's key prefix for task results (PROTOCOL §11.1). */
#define BACKEND_KEY_PREFIX "celery-task-meta-"


/* ---- Value encoding ---- */

const char *backend_status_name(backend_status s)
{
    switch (s) {
    case BACKEND_STARTED: return "STARTED";
    case BACKEND_SUCCESS: return "SUCCESS";
    case BACKEND_FAILURE: return "FAILURE";
    case BACKEND_RETRY:   return "RETRY";
    case BACKEND_REVOKED: return "REVOKED";
    }
    return "UNKNOWN";
}

/* Celery's READY_STATES: only these get a date_done (PROTOCOL §11.2). */
static int status_is_ready(backend_status s)
{
    return s == BACKEND_SUCCESS || s == BACKEND_FAILURE || s == BACKEND_REVOKED;
}

/* A JSON string (or null for NULL) exactly as json.dumps writes it. */
static void put_str(buf *out, const char *s)
{
    if (!s) {
        buf_puts(out, "null");
        return;
    }
    pj_value *v = pj_new_string(s);
    pj_dump(out, v, 0);
    pj_free(v);
}

static void put_value_or(buf *out, const pj_value *v, const char *fallback)
{
    if (v) pj_dump(out, v, 0);
    else buf_puts(out, fallback);
}

/* Celery's prepare_exception for json: {exc_type, exc_message, exc_module},
 * exc_message being the exception's args list. */
static void put_exception(buf *out, const backend_result *r)
{
    buf_puts(out, "{\"exc_type\": ");
    put_str(out, r->exc_type ? r->exc_type : "Exception");
    buf_puts(out, ", \"exc_message\": ");
    put_value_or(out, r->exc_args, "[]");
    buf_puts(out, ", \"exc_module\": ");
    put_str(out, r->exc_module ? r->exc_module : "builtins");
    buf_putc(out, '}');
}

static void put_result(buf *out, const backend_result *r)
{
    switch (r->status) {
    case BACKEND_STARTED:
        /* Celery stores {"pid": <pool child pid>, "hostname": <node>}. */
        buf_printf(out, "{\"pid\": %lld, \"hostname\": ", r->pid);
        put_str(out, r->hostname);
        buf_putc(out, '}');
        break;
    case BACKEND_SUCCESS:
        put_value_or(out, r->result, "null");
        break;
    case BACKEND_FAILURE:
    case BACKEND_RETRY:
    case BACKEND_REVOKED:
        put_exception(out, r);
        break;
    }
}

/* The retry republish is a child carrying the task's own id, so RETRY
 * lists [[[<own id>, null], null]] (PROTOCOL §11.2). */
static void put_children(buf *out, const backend_result *r)
{
    if (r->children) {
        pj_dump(out, r->children, 0);
    } else if (r->status == BACKEND_RETRY) {
        buf_puts(out, "[[[");
        put_str(out, r->task_id);
        buf_puts(out, ", null], null]]");
    } else {
        buf_puts(out, "[]");
    }
}

void backend_encode(buf *out, const backend_result *r)
{
    buf_puts(out, "{\"status\": ");
    put_str(out, backend_status_name(r->status));
    buf_puts(out, ", \"result\": ");
    put_result(out, r);
    buf_puts(out, ", \"traceback\": ");
    put_str(out, r->traceback);
    buf_puts(out, ", \"children\": ");
    put_children(out, r);
    buf_puts(out, ", \"date_done\": ");
    if (status_is_ready(r->status)) {
        buf_putc(out, '"');
        time_format_date_done(out, r->date_done_us);   /* digits and '-', ':', '.', 'T' only */
        buf_putc(out, '"');
    } else {
        buf_puts(out, "null");
    }
    if (r->group_id) {
        buf_puts(out, ", \"group_id\": ");
        put_str(out, r->group_id);
    }
    if (r->parent_id) {
        buf_puts(out, ", \"parent_id\": ");
        put_str(out, r->parent_id);
    }
    buf_puts(out, ", \"task_id\": ");
    put_str(out, r->task_id);
    buf_putc(out, '}');
}

/* ---- The store script ----
 *
 * PROTOCOL §11.1's GET guard, write and PUBLISH in one script: Celery sends
 * GET, then MULTI/SETEX/PUBLISH/EXEC (two round trips); the script runs the
 * same commands on the same key with the same bytes in one, and atomically
 * (no writer can slip in between the guard and the write).
 *
 * The guard: Celery re-reads the stored meta before every write and leaves
 * a SUCCESS alone (base.py _store_result: lost-worker duplicates must not
 * overwrite a success). A value that is not JSON, or not an object, counts
 * as not SUCCESS. cjson.decode runs only when the bytes could hold SUCCESS
 * (the word itself, or a \u escape spelling it): the STARTED value every
 * tracked task overwrites is not decoded.
 *
 * KEYS[1] = key (it is also the channel, no /{db}. prefix);
 * ARGV[1] = value, ARGV[2] = TTL in seconds, "0" for a plain SET.
 * Returns 1 written, 0 skipped; errors are "GET <key>: <error>" (nothing
 * written) or "store: <error>" (the write failed, nothing published). */
static lua_script store_script = LUA_SCRIPT("store", "\
local cur = redis.pcall('GET', KEYS[1])\n\
if type(cur) == 'table' then\n\
  return redis.error_reply('GET ' .. KEYS[1] .. ': ' .. tostring(cur.err))\n\
end\n\
if cur and (string.find(cur, 'SUCCESS', 1, true) or string.find(cur, '\\\\u', 1, true)) then\n\
  local ok, v = pcall(cjson.decode, cur)\n\
  if ok and type(v) == 'table' and v.status == 'SUCCESS' then return 0 end\n\
end\n\
local w\n\
if ARGV[2] ~= '0' then\n\
  w = redis.pcall('SETEX', KEYS[1], ARGV[2], ARGV[1])\n\
else\n\
  w = redis.pcall('SET', KEYS[1], ARGV[1])\n\
end\n\
if type(w) == 'table' and w.err then return redis.error_reply('store: ' .. w.err) end\n\
redis.call('PUBLISH', KEYS[1], ARGV[1])\n\
return 1\n");

/* ---- Stores ---- */

int backend_store_append(redisContext *ctx, const backend_result *r, int64_t result_expires_s,
                         char *err, size_t errlen)
{
    buf key = BUF_INIT, value = BUF_INIT;
    char ttl[24];
    buf_printf(&key, BACKEND_KEY_PREFIX "%s", r->task_id);
    backend_encode(&value, r);
    snprintf(ttl, sizeof ttl, "%lld", result_expires_s > 0 ? (long long)result_expires_s : 0LL);
    const char *argv[] = {"", "", "1", key.data, value.data, ttl};
    size_t lens[] = {0, 0, 1, key.len, value.len, strlen(ttl)};
    int rc = script_append(ctx, &store_script, 6, argv, lens, err, errlen);
    buf_free(&key);
    buf_free(&value);
    return rc;
}

int backend_store_prepare(redisContext *ctx, char *err, size_t errlen)
{
    return script_prepare(ctx, &store_script, err, errlen);
}

int backend_store_finish(redisContext *ctx, const char *task_id, char *err, size_t errlen)
{
    int noscript, rc = -1;
    redisReply *r = script_read(ctx, &noscript, err, errlen);
    if (!r) return -1;
    if (noscript) {
        rc = BACKEND_STORE_AGAIN;
    } else if (r->type == REDIS_REPLY_INTEGER && (r->integer == 0 || r->integer == 1)) {
        rc = (int)r->integer;
    } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "GET ", 4) == 0) {
        /* e.g. WRONGTYPE: Celery would raise; we do not write over it. */
        errbuf_set(err, errlen, "%s", r->str);
    } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "store: ", 7) == 0) {
        errbuf_set(err, errlen, "store result %s: %s", task_id, r->str + 7);
    } else {
        errbuf_set(err, errlen, "store result %s: %s", task_id,
                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected script reply");
    }
    freeReplyObject(r);
    return rc;
}

int backend_store(redisContext *ctx, const backend_result *r, int64_t result_expires_s,
                  char *err, size_t errlen)
{
    return backend_store_many(ctx, r, 1, result_expires_s, err, errlen);
}

/* One pipelined pass over rs. Results the server could not run because it
 * had lost the script are flagged in again[] (nothing was written for
 * them). Returns how many were written, -1 on error (the first reason in
 * err); *fatal is set when the connection failed. */
static int store_pass(redisContext *ctx, const backend_result *rs, size_t n,
                      int64_t result_expires_s, int *again, int *fatal, char *err, size_t errlen)
{
    size_t queued = 0;
    int failed = 0, written = 0;
    while (queued < n &&
           backend_store_append(ctx, &rs[queued], result_expires_s, err, errlen) == 0)
        queued++;
    if (queued < n) failed = 1;   /* err says why; the queued ones are still read */
    for (size_t i = 0; i < queued; i++) {
        char e[256];
        int rc = backend_store_finish(ctx, rs[i].task_id, e, sizeof e);
        if (rc == BACKEND_STORE_AGAIN) {
            again[i] = 1;
            continue;
        }
        if (rc < 0) {
            if (!failed) errbuf_set(err, errlen, "%s", e);
            failed = 1;
            if (ctx->err) {
                *fatal = 1;
                break;
            }
            continue;
        }
        written += rc;
    }
    return failed ? -1 : written;
}

int backend_store_many(redisContext *ctx, const backend_result *rs, size_t n,
                       int64_t result_expires_s, char *err, size_t errlen)
{
    if (n > BACKEND_MAX_BATCH) {
        errbuf_set(err, errlen, "store: %zu results exceed the batch limit %d", n, BACKEND_MAX_BATCH);
        return -1;
    }
    if (n == 0) return 0;
    int *again = xcalloc(n, sizeof *again);
    int fatal = 0;
    int rc = store_pass(ctx, rs, n, result_expires_s, again, &fatal, err, errlen);
    size_t n_again = 0;
    for (size_t i = 0; i < n; i++) n_again += again[i] != 0;
    if (n_again && !fatal) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): load it
         * again and redo just those, once. */
        backend_result *redo = xmalloc(n_again * sizeof *redo);
        int *again2 = xcalloc(n_again, sizeof *again2);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (again[i]) redo[k++] = rs[i];
        char e[256] = "";
        int rc2 = script_reload(ctx, &store_script, e, sizeof e) < 0 ? -1
                  : store_pass(ctx, redo, n_again, result_expires_s, again2, &fatal, e, sizeof e);
        for (size_t i = 0; rc2 >= 0 && i < n_again; i++)
            if (again2[i]) {
                errbuf_set(e, sizeof e, "store result %s: NOSCRIPT after SCRIPT LOAD",
                        redo[i].task_id);
                rc2 = -1;
            }
        if (rc2 < 0 && rc >= 0) errbuf_set(err, errlen, "%s", e);
        rc = (rc < 0 || rc2 < 0) ? -1 : rc + rc2;
        free(redo);
        free(again2);
    }
    free(again);
    return rc;
}
