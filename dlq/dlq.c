/* dlq/dlq.c: writing dead-letter records (CONTRACT §5), one at a time or
 * pipelined, and the stream-key glob shared by the drain and the replay
 * tool. The record layout is documented in dlq.h; the operator tools are in
 * dlq_cli.c. */
#include "dlq/dlq.h"

#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "common/pyjson.h"
#include "common/timeutil.h"

/* ---- Options ------------------------------------------------------------------- */

const char *dlq_key(const dlq_options *o)
{
    return o && o->dlq_key && o->dlq_key[0] ? o->dlq_key : DLQ_KEY_DEFAULT;
}

long dlq_maxlen(const dlq_options *o)
{
    return o && o->maxlen > 0 ? o->maxlen : DLQ_MAXLEN_DEFAULT;
}

const char *dlq_pattern(const dlq_options *o)
{
    return o && o->stream_pattern && o->stream_pattern[0] ? o->stream_pattern
                                                          : DLQ_STREAM_PATTERN_DEFAULT;
}

/* ---- Writing a record ------------------------------------------------------------ */

#define DLQ_ARGC 30
#define DLQ_EVENTS_ARG 21   /* argv index of the events value */

static const char *or_empty(const char *s) { return s ? s : ""; }

int dlq_append(redisContext *c, const dlq_options *o, const dlq_record *r, char *err, size_t errlen)
{
    char maxlen[32], index[32], deliveries[32];
    buf moved = BUF_INIT;
    /* Python's str(time.time()) is repr(float): shortest round-trip digits. */
    pj_float_repr(&moved, r->moved_at > 0 ? r->moved_at : time_now());
    snprintf(maxlen, sizeof maxlen, "%ld", dlq_maxlen(o));
    if (r->event_index >= 0) snprintf(index, sizeof index, "%d", r->event_index);
    else index[0] = '\0';
    snprintf(deliveries, sizeof deliveries, "%ld", r->deliveries);

    const char *events = or_empty(r->events);
    size_t events_len = r->events_len ? r->events_len : strlen(events);
    const char *argv[DLQ_ARGC] = {
        "XADD", dlq_key(o), "MAXLEN", "~", maxlen, "*",
        "original_stream", or_empty(r->original_stream),
        "entry_id", or_empty(r->entry_id),
        "reason", or_empty(r->reason),
        "moved_at", buf_cstr(&moved),
        "ingestion_id", or_empty(r->ingestion_id),
        "source", or_empty(r->source),
        "org_id_hash", or_empty(r->org_id_hash),
        "events", events,
        "event_index", index,
        "error_class", or_empty(r->error_class),
        "deliveries", deliveries,
        "worker", or_empty(r->worker),
    };
    size_t lens[DLQ_ARGC];
    for (int i = 0; i < DLQ_ARGC; i++) lens[i] = strlen(argv[i]);
    lens[DLQ_EVENTS_ARG] = events_len;   /* may hold more than its C string view */

    int rc = redisAppendCommandArgv(c, DLQ_ARGC, argv, lens) == REDIS_OK ? 0 : -1;
    buf_free(&moved);
    if (rc != 0)
        snprintf(err, errlen, "XADD %s failed: %s", dlq_key(o), c->errstr[0] ? c->errstr : "out of memory");
    return rc;
}

int dlq_read_reply(redisContext *c, const dlq_options *o, char *err, size_t errlen)
{
    redisReply *reply = NULL;
    if (redisGetReply(c, (void **)&reply) != REDIS_OK || reply == NULL) {
        snprintf(err, errlen, "XADD %s failed: %s", dlq_key(o), c->errstr[0] ? c->errstr : "no reply");
        return -1;
    }
    int rc = 0;
    if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "XADD %s refused: %s", dlq_key(o), reply->str);
        rc = -1;
    }
    freeReplyObject(reply);
    return rc;
}

int dlq_write(redisContext *c, const dlq_options *o, const dlq_record *r, char *err, size_t errlen)
{
    if (dlq_append(c, o, r, err, errlen) != 0) return -1;
    return dlq_read_reply(c, o, err, errlen);
}

/* ---- Glob ------------------------------------------------------------------------ */

/* Does the class starting after '[' at p match ch? *end is set past ']'. */
static int class_matches(const char *p, char ch, const char **end)
{
    int negate = 0, hit = 0;
    if (*p == '^') { negate = 1; p++; }
    while (*p && *p != ']') {
        char lo = *p;
        if (lo == '\\' && p[1]) lo = *++p;
        if (p[1] == '-' && p[2] && p[2] != ']') {
            char hi = p[2];
            if (hi == '\\' && p[3]) { hi = p[3]; p++; }
            if (lo > hi) { char t = lo; lo = hi; hi = t; }
            if (ch >= lo && ch <= hi) hit = 1;
            p += 3;
        } else {
            if (ch == lo) hit = 1;
            p++;
        }
    }
    *end = *p == ']' ? p + 1 : p;
    return negate ? !hit : hit;
}

/* Iterative glob with one backtrack point per '*' (linear-ish, no recursion). */
int dlq_key_matches(const char *pattern, const char *key)
{
    const char *p = pattern, *k = key, *star_p = NULL, *star_k = NULL;
    while (*k) {
        const char *next = NULL;
        int ok = 0;
        if (*p == '*') {
            while (*p == '*') p++;
            if (*p == '\0') return 1;
            star_p = p;
            star_k = k;
            continue;
        } else if (*p == '?') {
            ok = 1, next = p + 1;
        } else if (*p == '[') {
            ok = class_matches(p + 1, *k, &next);
        } else if (*p == '\\' && p[1]) {
            ok = p[1] == *k, next = p + 2;
        } else if (*p) {
            ok = *p == *k, next = p + 1;
        }
        if (ok) {
            p = next;
            k++;
        } else if (star_p) {
            p = star_p;
            k = ++star_k;
        } else {
            return 0;
        }
    }
    while (*p == '*') p++;
    return *p == '\0';
}
