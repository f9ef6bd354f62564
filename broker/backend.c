/* broker/backend.c: Celery's Redis result backend (see backend.h).
 *
 * Sections: value encoding; the GET guard; single and pipelined stores.
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

#include "common/mem.h"
#include "common/timeutil.h"

/* Celery's key prefix for task results (PROTOCOL §11.1). */
#define BACKEND_KEY_PREFIX "celery-task-meta-"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

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

/* ---- The GET guard ---- */

/* Celery re-reads the stored meta before every write and leaves a SUCCESS
 * alone (base.py _store_result: lost-worker duplicates must not overwrite
 * a success). A value we cannot parse counts as not SUCCESS. */
static int stored_is_success(const redisReply *r)
{
    if (r->type != REDIS_REPLY_STRING) return 0;
    pj_value *v = pj_parse(r->str, r->len, NULL);
    if (!v) return 0;
    const char *status = pj_get_string(v, "status");
    int yes = status && strcmp(status, "SUCCESS") == 0;
    pj_free(v);
    return yes;
}

/* ---- Stores ---- */

static char *meta_key(const char *task_id)
{
    buf k = BUF_INIT;
    buf_printf(&k, BACKEND_KEY_PREFIX "%s", task_id);
    return buf_detach(&k);
}

static void append_get(redisContext *ctx, const char *key)
{
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, strlen(key)};
    redisAppendCommandArgv(ctx, 2, argv, lens);
}

/* Queue MULTI; SETEX|SET; PUBLISH; EXEC (4 replies). */
static void append_write(redisContext *ctx, const char *key, const buf *value, int64_t expires_s)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)expires_s);
    redisAppendCommand(ctx, "MULTI");
    if (expires_s > 0) {
        const char *argv[] = {"SETEX", key, ttl, value->data};
        size_t lens[] = {5, strlen(key), strlen(ttl), value->len};
        redisAppendCommandArgv(ctx, 4, argv, lens);
    } else {
        const char *argv[] = {"SET", key, value->data};
        size_t lens[] = {3, strlen(key), value->len};
        redisAppendCommandArgv(ctx, 3, argv, lens);
    }
    const char *argv[] = {"PUBLISH", key, value->data};
    size_t lens[] = {7, strlen(key), value->len};
    redisAppendCommandArgv(ctx, 3, argv, lens);
    redisAppendCommand(ctx, "EXEC");
}

/* Read one pipelined reply. -1 when the connection failed (fatal, err set);
 * otherwise 0 and *out holds the reply (the caller frees it). */
static int read_reply(redisContext *ctx, redisReply **out, char *err, size_t errlen)
{
    *out = NULL;
    if (redisGetReply(ctx, (void **)out) != REDIS_OK || !*out) {
        set_err(err, errlen, "redis: %s", ctx->errstr[0] ? ctx->errstr : "connection lost");
        return -1;
    }
    return 0;
}

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

/* Read the 4 replies of append_write. 0 written; 1 refused by the server
 * (err set unless *failed already was); -1 connection failed. */
static int read_write_replies(redisContext *ctx, const char *task_id, int *failed,
                              char *err, size_t errlen)
{
    int refused = 0;
    for (int i = 0; i < 4; i++) {
        redisReply *r;
        if (read_reply(ctx, &r, err, errlen) < 0) return -1;
        const char *why = exec_error(r, i == 3);
        if (why && !refused) {
            if (!*failed) set_err(err, errlen, "store result %s: %s", task_id, why);
            *failed = refused = 1;
        }
        freeReplyObject(r);
    }
    return refused;
}

int backend_store(redisContext *ctx, const backend_result *r, int64_t result_expires_s,
                  char *err, size_t errlen)
{
    return backend_store_many(ctx, r, 1, result_expires_s, err, errlen);
}

int backend_store_many(redisContext *ctx, const backend_result *rs, size_t n,
                       int64_t result_expires_s, char *err, size_t errlen)
{
    if (n > BACKEND_MAX_BATCH) {
        set_err(err, errlen, "store: %zu results exceed the batch limit %d", n, BACKEND_MAX_BATCH);
        return -1;
    }
    if (n == 0) return 0;
    char **keys = xmalloc(n * sizeof *keys);
    int *skip = xcalloc(n, sizeof *skip);
    for (size_t i = 0; i < n; i++) {
        keys[i] = meta_key(rs[i].task_id);
        append_get(ctx, keys[i]);
    }
    int failed = 0, written = 0, fatal = 0;
    for (size_t i = 0; i < n && !fatal; i++) {
        redisReply *g;
        if (read_reply(ctx, &g, err, errlen) < 0) {
            fatal = 1;
            break;
        }
        if (g->type == REDIS_REPLY_ERROR) {
            /* e.g. WRONGTYPE: Celery would raise; we do not write over it. */
            if (!failed) set_err(err, errlen, "GET %s: %s", keys[i], g->str);
            failed = 1;
            skip[i] = 1;
        } else if (stored_is_success(g)) {
            skip[i] = 1;
        }
        freeReplyObject(g);
    }
    if (!fatal) {
        buf value = BUF_INIT;
        for (size_t i = 0; i < n; i++) {
            if (skip[i]) continue;
            buf_reset(&value);
            backend_encode(&value, &rs[i]);
            append_write(ctx, keys[i], &value, result_expires_s);
        }
        buf_free(&value);
        for (size_t i = 0; i < n && !fatal; i++) {
            if (skip[i]) continue;
            int rc = read_write_replies(ctx, rs[i].task_id, &failed, err, errlen);
            if (rc < 0) fatal = 1;
            else if (rc == 0) written++;
        }
    }
    for (size_t i = 0; i < n; i++) free(keys[i]);
    free(keys);
    free(skip);
    return (fatal || failed) ? -1 : written;
}
