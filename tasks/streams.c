/* tasks/streams.c: the Redis side of the drain. Owns the telemetry Redis
 * connection of a drain session (connect, loss, reconnect; an outage is
 * logged once when it starts and once when it ends), stream discovery (SCAN
 * ... TYPE stream, cached, refreshed), consumer groups (created at 0 with
 * MKSTREAM as upstream does, CONTRACT §1.3), the per-iteration XREADGROUP
 * over all streams, delivery counts (XPENDING), reclaiming idle entries
 * (XAUTOCLAIM) and XACK. It never touches a key that does not match the
 * stream pattern (or equal the configured single stream key). Batching,
 * ClickHouse and the DLQ are drain.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "tasks/drain_internal.h"

/* ---- Connection ------------------------------------------------------------------------ */

void streams_redis_lost(drain_session *s, const char *what)
{
    if (!s->redis_down) {
        log_error("telemetry Redis %s: %s failed: %s; reconnecting with back-off (up to %d s "
                  "between tries), unacked entries stay pending", s->redis_redacted, what,
                  s->redis && s->redis->errstr[0] ? s->redis->errstr : "connection lost",
                  s->o.backoff_max_s);
        s->redis_down = 1;
        s->redis_down_since = time_monotonic();
    }
    if (s->redis) redisFree(s->redis);
    s->redis = NULL;
}

void streams_redis_back(drain_session *s)
{
    if (s->redis_down)
        log_info("telemetry Redis %s reachable again after %.1f s; draining resumes",
                 s->redis_redacted, time_monotonic() - s->redis_down_since);
    s->redis_down = 0;
}

/* 0 with s->redis usable; -1 when connecting failed (logged once per outage). */
int streams_redis_ready(drain_session *s, char *err, size_t errlen)
{
    if (s->redis && !s->redis->err) return 0;
    if (s->redis) streams_redis_lost(s, "a command");
    char why[256];
    s->redis = redis_url_connect(&s->rurl, DRAIN_REDIS_TIMEOUT_S, why, sizeof why);
    if (s->redis == NULL) {
        if (!s->redis_down) {
            log_error("telemetry Redis %s unreachable: %s; retrying with back-off (up to %d s), "
                      "unacked entries stay pending", s->redis_redacted, why, s->o.backoff_max_s);
            s->redis_down = 1;
            s->redis_down_since = time_monotonic();
        }
        snprintf(err, errlen, "telemetry Redis %s unreachable: %s", s->redis_redacted, why);
        return -1;
    }
    streams_redis_back(s);
    /* A new connection: every group may have changed while we were away. */
    for (size_t i = 0; i < s->n_streams; i++) s->streams[i].group_ready = 0;
    return 0;
}

/* One command. NULL on a connection failure (the connection is dropped and
 * err filled); otherwise the reply, which may be an error reply. */
static redisReply *command(drain_session *s, int argc, const char **argv, const size_t *lens,
                           char *err, size_t errlen)
{
    if (streams_redis_ready(s, err, errlen) != 0) return NULL;
    redisReply *r = redisCommandArgv(s->redis, argc, argv, lens);
    if (r == NULL) {
        snprintf(err, errlen, "telemetry Redis %s: %s failed: %s", s->redis_redacted, argv[0],
                 s->redis->errstr);
        streams_redis_lost(s, argv[0]);
    }
    return r;
}

static int is_error(const redisReply *r, const char *prefix)
{
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* ---- Stream list --------------------------------------------------------------------------- */

static int find_stream(drain_session *s, const char *key, size_t *pos)
{
    size_t lo = 0, hi = s->n_streams;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->streams[mid].key, key);
        if (c == 0) { *pos = mid; return 1; }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    *pos = lo;
    return 0;
}

static drain_stream *add_stream(drain_session *s, const char *key)
{
    size_t pos;
    if (find_stream(s, key, &pos)) return &s->streams[pos];
    if (s->n_streams >= DRAIN_MAX_STREAMS) {
        if (!s->streams_warned_limit)
            log_warning("more than %d streams match %s: stream %s and any further ones are not "
                        "drained by this worker", DRAIN_MAX_STREAMS, s->o.stream_pattern, key);
        s->streams_warned_limit = 1;
        return NULL;
    }
    if (s->n_streams == s->cap_streams) {
        s->cap_streams = s->cap_streams ? s->cap_streams * 2 : 16;
        s->streams = xrealloc(s->streams, s->cap_streams * sizeof(*s->streams));
    }
    memmove(&s->streams[pos + 1], &s->streams[pos], (s->n_streams - pos) * sizeof(*s->streams));
    drain_stream *st = &s->streams[pos];
    memset(st, 0, sizeof(*st));
    st->key = xstrdup(key);
    strcpy(st->pending_cursor, "0");
    strcpy(st->claim_cursor, "0-0");
    s->n_streams++;
    return st;
}

static void drop_stream(drain_session *s, size_t pos)
{
    free(s->streams[pos].key);
    memmove(&s->streams[pos], &s->streams[pos + 1], (s->n_streams - pos - 1) * sizeof(*s->streams));
    s->n_streams--;
}

void streams_free(drain_session *s)
{
    for (size_t i = 0; i < s->n_streams; i++) free(s->streams[i].key);
    free(s->streams);
    s->streams = NULL;
    s->n_streams = s->cap_streams = 0;
}

void streams_reset_run(drain_session *s)
{
    for (size_t i = 0; i < s->n_streams; i++) {
        s->streams[i].pending_done = 0;
        strcpy(s->streams[i].pending_cursor, "0");
    }
}

/* ---- Groups ---------------------------------------------------------------------------------- */

/* XGROUP CREATE key group 0 MKSTREAM. 1 created, 0 existed, -1 Redis down,
 * -2 the key is not a stream (caller drops it). */
static int ensure_group(drain_session *s, drain_stream *st, char *err, size_t errlen)
{
    const char *argv[] = {"XGROUP", "CREATE", st->key, s->o.group, "0", "MKSTREAM"};
    redisReply *r = command(s, 6, argv, NULL, err, errlen);
    if (!r) return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_STATUS) rc = 1;
    else if (is_error(r, "BUSYGROUP")) rc = 0;
    else {
        log_warning("stream %s: XGROUP CREATE %s refused (%s): key skipped", st->key, s->o.group,
                    r->str ? r->str : "?");
        rc = -2;
    }
    freeReplyObject(r);
    if (rc == 1 && st->had_group) {
        /* The group was there before and is gone (deleted by an operator):
         * recreated at 0, the whole stream is delivered again, so every
         * entry of it gets the dedup check from now on. */
        log_warning("stream %s: consumer group %s was missing (deleted?): recreated at id 0; "
                    "entries already in ClickHouse will be recognised and skipped",
                    st->key, s->o.group);
        st->dedup_all = 1;
        st->pending_done = 0;
        strcpy(st->pending_cursor, "0");
    }
    if (rc >= 0) st->group_ready = st->had_group = 1;
    return rc;
}

/* ---- Discovery --------------------------------------------------------------------------------- */

static int key_type(drain_session *s, const char *key, char *type, size_t typelen,
                    char *err, size_t errlen)
{
    const char *argv[] = {"TYPE", key};
    redisReply *r = command(s, 2, argv, NULL, err, errlen);
    if (!r) return -1;
    snprintf(type, typelen, "%s", r->type == REDIS_REPLY_STATUS ? r->str : "?");
    freeReplyObject(r);
    return 0;
}

static int refresh_single(drain_session *s, char *err, size_t errlen)
{
    char type[32];
    if (s->n_streams > 0) return 0;
    if (key_type(s, s->o.stream_key, type, sizeof type, err, errlen) != 0) return -1;
    if (strcmp(type, "stream") != 0 && strcmp(type, "none") != 0) {
        if (s->last_refresh == 0)
            log_warning("key %s is a %s, not a stream: nothing to drain", s->o.stream_key, type);
        return 0;
    }
    add_stream(s, s->o.stream_key);
    return 0;
}

/* Up to DRAIN_SCAN_MAX_CALLS SCAN calls; an unfinished cursor carries over
 * to the next refresh, which is then due at once. */
static int refresh_scan(drain_session *s, char *err, size_t errlen)
{
    for (int call = 0; call < DRAIN_SCAN_MAX_CALLS; call++) {
        const char *argv[] = {"SCAN", s->scan_cursor, "MATCH", s->o.stream_pattern,
                              "COUNT", DRAIN_SCAN_COUNT, "TYPE", "stream"};
        redisReply *r = command(s, 8, argv, NULL, err, errlen);
        if (!r) return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            snprintf(err, errlen, "SCAN MATCH %s: %s", s->o.stream_pattern,
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            return -1;
        }
        snprintf(s->scan_cursor, sizeof s->scan_cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str;
            /* A pattern broad enough to match the DLQ must not drain it. */
            if (k && strcmp(k, s->dlq.dlq_key) != 0) add_stream(s, k);
        }
        freeReplyObject(r);
        if (strcmp(s->scan_cursor, "0") == 0) return 0;
    }
    return 1;   /* more to scan */
}

/* Refresh the stream list when due, then make sure every stream has its group. */
int streams_refresh(drain_session *s, char *err, size_t errlen)
{
    double now = time_monotonic();
    int unfinished = strcmp(s->scan_cursor, "0") != 0;
    if (s->last_refresh == 0 || unfinished || now - s->last_refresh >= s->o.stream_refresh_s) {
        int rc = s->o.stream_key ? refresh_single(s, err, errlen) : refresh_scan(s, err, errlen);
        if (rc < 0) return -1;
        s->last_refresh = now;
    }
    for (size_t i = 0; i < s->n_streams;) {
        if (s->streams[i].group_ready) { i++; continue; }
        int rc = ensure_group(s, &s->streams[i], err, errlen);
        if (rc == -1) return -1;
        if (rc == -2) drop_stream(s, i);
        else i++;
    }
    return 0;
}

/* After NOGROUP or WRONGTYPE mid-drain: look at every stream again. Gone
 * keys are dropped, keys now of another type are dropped with a warning,
 * and a missing group is recreated (see ensure_group). */
int streams_revalidate(drain_session *s, char *err, size_t errlen)
{
    for (size_t i = 0; i < s->n_streams;) {
        drain_stream *st = &s->streams[i];
        char type[32];
        if (key_type(s, st->key, type, sizeof type, err, errlen) != 0) return -1;
        if (strcmp(type, "stream") != 0) {
            if (strcmp(type, "none") == 0)
                log_info("stream %s no longer exists: no longer drained", st->key);
            else
                log_warning("key %s matches %s but is now a %s, not a stream: skipped", st->key,
                            s->o.stream_pattern, type);
            drop_stream(s, i);
            continue;
        }
        if (ensure_group(s, st, err, errlen) == -1) return -1;
        i++;
    }
    return 0;
}

/* ---- Reading ---------------------------------------------------------------------------------- */

/* COUNT for the next read: one entry per stream until a size is known, then
 * telemetry_read_count entries per stream, fewer when the entries seen so
 * far are big, so that one read of every stream stays near batch_max_bytes
 * (an XREADGROUP reply is held whole in memory: 100 entries of 500
 * one-megabyte events would be 50 GB). At least 1. streams_read also caps
 * a read at DRAIN_READ_ENTRIES_MAX entries across all streams. */
static int read_count_now(const drain_session *s, size_t streams)
{
    if (streams == 0) return s->o.read_count;
    if (s->entry_bytes_avg <= 0) return 1;   /* sizes unknown yet: one per stream first */
    double fit = (double)s->o.batch_max_bytes / (s->entry_bytes_avg * (double)streams);
    if (fit >= s->o.read_count) return s->o.read_count;
    return fit < 1 ? 1 : (int)fit;
}

/* One XREADGROUP over every ready stream: the history cursor for streams
 * whose own pending entries are not exhausted, ">" for the others. 0 with
 * *reply (NULL when nothing came back), -1 Redis down, -2 the streams
 * changed under us (NOGROUP, WRONGTYPE): the caller revalidates. */
int streams_read(drain_session *s, int block_ms, redisReply **reply, char *err, size_t errlen)
{
    *reply = NULL;
    size_t n = 0;
    for (size_t i = 0; i < s->n_streams; i++) n += s->streams[i].group_ready;
    s->read_count_used = s->o.read_count;
    if (n == 0) return 0;
    const char **argv = xmalloc((9 + 2 * n) * sizeof(*argv));
    char count[16], block[16];
    s->read_count_used = read_count_now(s, n);
    if ((size_t)s->read_count_used * n > DRAIN_READ_ENTRIES_MAX)
        s->read_count_used = n < DRAIN_READ_ENTRIES_MAX ? (int)(DRAIN_READ_ENTRIES_MAX / n) : 1;
    snprintf(count, sizeof count, "%d", s->read_count_used);
    snprintf(block, sizeof block, "%d", block_ms);
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = s->o.group;
    argv[argc++] = s->o.consumer;
    argv[argc++] = "COUNT";
    argv[argc++] = count;
    if (block_ms > 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
    }
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < s->n_streams; i++)
        if (s->streams[i].group_ready) argv[argc++] = s->streams[i].key;
    for (size_t i = 0; i < s->n_streams; i++) {
        drain_stream *st = &s->streams[i];
        if (!st->group_ready) continue;
        st->read_history = !st->pending_done;
        argv[argc++] = st->read_history ? st->pending_cursor : ">";
    }
    if (block_ms > 0 && s->redis) {
        struct timeval tv = {(long)DRAIN_REDIS_TIMEOUT_S + block_ms / 1000, (block_ms % 1000) * 1000};
        redisSetTimeout(s->redis, tv);
    }
    redisReply *r = command(s, argc, argv, NULL, err, errlen);
    free(argv);
    if (block_ms > 0 && s->redis) {
        struct timeval tv = {(long)DRAIN_REDIS_TIMEOUT_S, 0};
        redisSetTimeout(s->redis, tv);
    }
    if (!r) return -1;
    if (r->type == REDIS_REPLY_ERROR) {
        int changed = is_error(r, "NOGROUP") || is_error(r, "WRONGTYPE");
        snprintf(err, errlen, "XREADGROUP: %s", r->str);
        freeReplyObject(r);
        return changed ? -2 : -1;
    }
    if (r->type == REDIS_REPLY_ARRAY) *reply = r;
    else freeReplyObject(r);
    return 0;
}

static drain_stream *stream_by_key(drain_session *s, const char *key)
{
    size_t pos;
    return find_stream(s, key, &pos) ? &s->streams[pos] : NULL;
}

/* Flatten an XREADGROUP reply into entries (pointers into the reply) and
 * advance the history cursors: a history read that returned fewer entries
 * than COUNT has exhausted this consumer's pending list for that stream. */
size_t streams_collect(drain_session *s, redisReply *reply, drain_read_entry **out)
{
    *out = NULL;
    if (!reply) return 0;
    size_t total = 0, n = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *sr = reply->element[i];
        if (sr->type == REDIS_REPLY_ARRAY && sr->elements == 2 &&
            sr->element[1]->type == REDIS_REPLY_ARRAY)
            total += sr->element[1]->elements;
    }
    if (total) *out = xcalloc(total, sizeof(**out));
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *sr = reply->element[i];
        if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 ||
            sr->element[0]->type != REDIS_REPLY_STRING || sr->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        drain_stream *st = stream_by_key(s, sr->element[0]->str);
        if (!st) continue;
        redisReply *entries = sr->element[1];
        for (size_t j = 0; j < entries->elements; j++) {
            redisReply *e = entries->element[j];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING) continue;
            drain_read_entry *d = &(*out)[n++];
            d->stream = st;
            d->id = e->element[0]->str;
            d->fields = e->element[1]->type == REDIS_REPLY_ARRAY ? e->element[1] : NULL;
            d->history = st->read_history;
            d->deliveries = 1;
            size_t bytes = 0;
            for (size_t f = 0; d->fields && f < d->fields->elements; f++)
                bytes += d->fields->element[f]->len;
            /* A running mean that follows a change of entry sizes within
             * a few dozen entries. */
            s->entry_bytes_avg = s->entry_bytes_avg <= 0 ? (double)bytes
                                 : s->entry_bytes_avg + ((double)bytes - s->entry_bytes_avg) / 16;
            if (st->read_history) snprintf(st->pending_cursor, DRAIN_ID_MAX, "%s", d->id);
        }
        if (st->read_history && entries->elements < (size_t)s->read_count_used) st->pending_done = 1;
    }
    /* Streams read from history that sent nothing are omitted only when
     * empty arrays are; treat any history stream absent from the reply as done. */
    for (size_t i = 0; i < s->n_streams; i++) {
        drain_stream *st = &s->streams[i];
        if (!st->read_history || st->pending_done) continue;
        int seen = 0;
        for (size_t j = 0; j < n && !seen; j++) seen = (*out)[j].stream == st;
        if (!seen) st->pending_done = 1;
    }
    return n;
}

/* ---- Delivery counts ------------------------------------------------------------------------ */

/* Fill e[i].deliveries for history entries from XPENDING's extended form,
 * one pipelined call per stream (entries of a stream are contiguous). */
int streams_delivery_counts(drain_session *s, drain_read_entry *e, size_t n, char *err, size_t errlen)
{
    if (streams_redis_ready(s, err, errlen) != 0) return -1;
    size_t calls = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && e[j].stream == e[i].stream) j++;
        if (e[i].history) {
            char count[16];
            snprintf(count, sizeof count, "%zu", j - i);
            const char *argv[] = {"XPENDING", e[i].stream->key, s->o.group, e[i].id, e[j - 1].id,
                                  count, s->o.consumer};
            redisAppendCommandArgv(s->redis, 7, argv, NULL);
            calls++;
        }
        i = j;
    }
    size_t i = 0;
    for (size_t c = 0; c < calls; c++) {
        while (!e[i].history) i++;
        size_t j = i;
        while (j < n && e[j].stream == e[i].stream) j++;
        void *rv = NULL;
        if (redisGetReply(s->redis, &rv) != REDIS_OK) {
            snprintf(err, errlen, "XPENDING: %s", s->redis->errstr);
            streams_redis_lost(s, "XPENDING");
            return -1;
        }
        redisReply *r = rv;
        for (size_t k = i; k < j; k++) e[k].deliveries = 2;   /* at least: it is a redelivery */
        if (r->type == REDIS_REPLY_ARRAY) {
            size_t k = i;
            for (size_t p = 0; p < r->elements; p++) {
                redisReply *row = r->element[p];
                if (row->type != REDIS_REPLY_ARRAY || row->elements < 4) continue;
                while (k < j && strcmp(e[k].id, row->element[0]->str) != 0) k++;
                if (k < j) e[k].deliveries = (long)row->element[3]->integer;
            }
        }
        freeReplyObject(r);
        i = j;
    }
    return 0;
}

/* ---- Reclaim ------------------------------------------------------------------------------------ */

/* XAUTOCLAIM ... JUSTID on every stream: idle entries of other consumers
 * become ours without being read (JUSTID leaves the delivery count alone);
 * the history read that follows delivers them, counting the delivery. The
 * caller has flushed its batch, so restarting the history cursor at 0
 * cannot hand us an entry that is already in the batch. */
int streams_reclaim(drain_session *s, long long *claimed, char *err, size_t errlen)
{
    *claimed = 0;
    if (streams_redis_ready(s, err, errlen) != 0) return -1;
    char idle[24], count[16];
    snprintf(idle, sizeof idle, "%d", s->o.reclaim_idle_ms);
    snprintf(count, sizeof count, "%d", s->o.read_count);
    size_t calls = 0;
    for (size_t i = 0; i < s->n_streams; i++) {
        drain_stream *st = &s->streams[i];
        if (!st->group_ready) continue;
        const char *argv[] = {"XAUTOCLAIM", st->key, s->o.group, s->o.consumer, idle,
                              st->claim_cursor, "COUNT", count, "JUSTID"};
        redisAppendCommandArgv(s->redis, 9, argv, NULL);
        calls++;
    }
    size_t i = 0;
    for (size_t c = 0; c < calls; c++, i++) {
        while (!s->streams[i].group_ready) i++;
        drain_stream *st = &s->streams[i];
        void *rv = NULL;
        if (redisGetReply(s->redis, &rv) != REDIS_OK) {
            snprintf(err, errlen, "XAUTOCLAIM: %s", s->redis->errstr);
            streams_redis_lost(s, "XAUTOCLAIM");
            return -1;
        }
        redisReply *r = rv;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
            r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_ARRAY) {
            snprintf(st->claim_cursor, DRAIN_ID_MAX, "%s", r->element[0]->str);
            size_t got = r->element[1]->elements;
            if (got > 0) {
                log_info("stream %s: took over %zu entr%s idle for more than %d ms from other "
                         "consumers", st->key, got, got == 1 ? "y" : "ies", s->o.reclaim_idle_ms);
                /* The old owner may have an insert of them still running in
                 * ClickHouse: the dedup check waits for it (drain.c fence). */
                s->fence_since = time_monotonic();
                *claimed += (long long)got;
                st->pending_done = 0;
                strcpy(st->pending_cursor, "0");
            }
        } else if (r->type == REDIS_REPLY_ERROR) {
            /* NOGROUP: the read that follows finds out too and recreates it. */
            log_warning("stream %s: XAUTOCLAIM failed (%s): idle entries are not reclaimed this "
                        "round", st->key, r->str);
        }
        freeReplyObject(r);
    }
    return 0;
}

/* ---- Holding a batch ------------------------------------------------------------------------- */

/* KEYS[1] stream, ARGV group, consumer, ids...: for each id still pending
 * for this consumer, XCLAIM it to itself (JUSTID: the delivery count stays,
 * the idle time restarts at 0); return {ids pending for another consumer,
 * ids no longer pending at all}. The second kind was acked by a consumer
 * that took it over and is done, or its stream entry was deleted (MAXLEN
 * trim: Redis 7 then drops it from the PEL on XCLAIM): no one else can take
 * it any more, so the caller keeps it with the dedup check rather than lose
 * its events. A script runs atomically, so no XAUTOCLAIM
 * can move an entry between the XPENDING check and the XCLAIM: either the
 * reclaimer took it first and we learn we lost it, or we reset its idle time
 * first and the reclaimer (min idle reclaim_idle_ms) does not take it. */
static const char hold_script[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local lost, gone = {}, {}\n"
    "for i = 3, #ARGV do\n"
    "    local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)\n"
    "    if #p == 0 then\n"
    "        gone[#gone + 1] = ARGV[i]\n"
    "    elseif p[1][2] ~= ARGV[2] then\n"
    "        lost[#lost + 1] = ARGV[i]\n"
    "    else\n"
    "        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')\n"
    "    end\n"
    "end\n"
    "return {lost, gone}\n";

#define HOLD_IDS_PER_CALL 500   /* ids per script call: keeps each call well under a millisecond */

typedef struct hold_ref {
    const char *key;
    size_t i;
} hold_ref;

static int hold_ref_cmp(const void *x, const void *y)
{
    const hold_ref *a = x, *b = y;
    int d = strcmp(a->key, b->key);
    return d ? d : (a->i > b->i) - (a->i < b->i);
}

int streams_hold(drain_session *s, const char **keys, const char **ids, size_t n,
                 unsigned char *lost, char *err, size_t errlen)
{
    if (n == 0) return 0;
    if (streams_redis_ready(s, err, errlen) != 0) return -1;
    hold_ref *ref = xmalloc(n * sizeof(*ref));
    for (size_t i = 0; i < n; i++) ref[i] = (hold_ref){keys[i], i};
    qsort(ref, n, sizeof(*ref), hold_ref_cmp);
    const char **argv = xmalloc((6 + HOLD_IDS_PER_CALL) * sizeof(*argv));
    size_t calls = 0;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && b - a < HOLD_IDS_PER_CALL && strcmp(ref[b].key, ref[a].key) == 0) b++;
        int argc = 0;
        argv[argc++] = "EVAL";
        argv[argc++] = hold_script;
        argv[argc++] = "1";
        argv[argc++] = ref[a].key;
        argv[argc++] = s->o.group;
        argv[argc++] = s->o.consumer;
        for (size_t k = a; k < b; k++) argv[argc++] = ids[ref[k].i];
        redisAppendCommandArgv(s->redis, argc, argv, NULL);
        calls++;
        a = b;
    }
    free(argv);
    int rc = 0;
    size_t a = 0;
    for (size_t c = 0; c < calls; c++) {
        size_t b = a;
        while (b < n && b - a < HOLD_IDS_PER_CALL && strcmp(ref[b].key, ref[a].key) == 0) b++;
        void *rv = NULL;
        if (redisGetReply(s->redis, &rv) != REDIS_OK) {
            snprintf(err, errlen, "telemetry Redis %s: EVAL (batch ownership check) failed: %s",
                     s->redis_redacted, s->redis->errstr);
            streams_redis_lost(s, "EVAL");
            rc = -1;
            break;
        }
        redisReply *r = rv;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            for (int kind = 0; kind < 2; kind++) {
                const redisReply *list = r->element[kind];
                size_t k = a;
                for (size_t j = 0; list->type == REDIS_REPLY_ARRAY && j < list->elements; j++) {
                    const redisReply *id = list->element[j];
                    if (id->type != REDIS_REPLY_STRING) continue;
                    while (k < b && strcmp(ids[ref[k].i], id->str) != 0) k++;
                    if (k < b) lost[ref[k].i] = kind == 0 ? HOLD_LOST : HOLD_GONE;
                }
            }
        } else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "NOGROUP")) {
            /* The group is gone, and with it every pending entry: none of
             * these is ours any more; the recreated group delivers them
             * again, with the dedup check (ensure_group). */
            for (size_t k = a; k < b; k++) lost[ref[k].i] = HOLD_LOST;
        } else if (rc == 0) {
            snprintf(err, errlen, "telemetry Redis %s: batch ownership check on %s: %s",
                     s->redis_redacted, ref[a].key,
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            rc = -1;   /* keep reading the pipelined replies */
        }
        freeReplyObject(r);
        a = b;
    }
    free(ref);
    return rc;
}

/* ---- Leaving ------------------------------------------------------------------------------------ */

/* Entries of this consumer in the stream, up to `count` after `after`
 * (exclusive; "-" for the start). NULL on an error or a lost connection. */
static redisReply *own_pending(drain_session *s, const char *key, const char *after, int count)
{
    char start[DRAIN_ID_MAX + 2], cnt[16];
    if (strcmp(after, "-") == 0) snprintf(start, sizeof start, "-");
    else snprintf(start, sizeof start, "(%s", after);
    snprintf(cnt, sizeof cnt, "%d", count);
    const char *argv[] = {"XPENDING", key, s->o.group, start, "+", cnt, s->o.consumer};
    char err[256];
    redisReply *r = command(s, 7, argv, NULL, err, sizeof err);
    if (r && r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        r = NULL;
    }
    return r;
}

/* A consumer name used by one process only (leave_on_exit) goes away with
 * it: where it holds nothing, XGROUP DELCONSUMER (DELCONSUMER would drop
 * pending entries, hence the check first; no one else reads under this name,
 * so nothing can join the list in between); where the run ended early and it
 * still holds entries, they are marked idle for reclaim_idle_ms (XCLAIM to
 * itself with IDLE, JUSTID: delivery counts unchanged), so the next drain's
 * XAUTOCLAIM takes them over at once, with the dedup check, instead of
 * reclaim_idle_ms later. Best effort: with Redis gone the consumer stays and
 * its entries are reclaimed once idle. */
void streams_leave(drain_session *s)
{
    if (!s->redis || s->redis->err) return;
    char idle[24];
    snprintf(idle, sizeof idle, "%d", s->o.reclaim_idle_ms);
    for (size_t i = 0; i < s->n_streams && s->redis; i++) {
        const char *key = s->streams[i].key;
        char after[DRAIN_ID_MAX] = "-";
        size_t released = 0;
        int listed = 0;   /* the pending list was read to its end */
        redisReply *r;
        while ((r = own_pending(s, key, after, 1000)) != NULL) {
            size_t n = r->elements;
            if (n == 0) {
                freeReplyObject(r);
                listed = 1;
                break;
            }
            const char **argv = xmalloc((n + 8) * sizeof(*argv));
            int argc = 0;
            argv[argc++] = "XCLAIM";
            argv[argc++] = key;
            argv[argc++] = s->o.group;
            argv[argc++] = s->o.consumer;
            argv[argc++] = "0";
            for (size_t j = 0; j < n; j++) argv[argc++] = r->element[j]->element[0]->str;
            argv[argc++] = "IDLE";
            argv[argc++] = idle;
            argv[argc++] = "JUSTID";
            char err[256];
            redisReply *c = command(s, argc, argv, NULL, err, sizeof err);
            free(argv);
            snprintf(after, sizeof after, "%s", r->element[n - 1]->element[0]->str);
            freeReplyObject(r);
            if (!c) break;
            freeReplyObject(c);
            released += n;
        }
        if (released > 0) {
            log_info("stream %s: %zu unstored entr%s of consumer %s left for the next drain to "
                     "take over at once (marked idle)", key, released, released == 1 ? "y" : "ies",
                     s->o.consumer);
        } else if (listed) {
            const char *argv[] = {"XGROUP", "DELCONSUMER", key, s->o.group, s->o.consumer};
            char err[256];
            redisReply *d = command(s, 5, argv, NULL, err, sizeof err);
            if (d) freeReplyObject(d);
        }
    }
}

/* ---- Ack -------------------------------------------------------------------------------------- */

int streams_ack(drain_session *s, const char *key, const char **ids, size_t n, char *err, size_t errlen)
{
    if (n == 0) return 0;
    const char **argv = xmalloc((3 + n) * sizeof(*argv));
    argv[0] = "XACK";
    argv[1] = key;
    argv[2] = s->o.group;
    memcpy(argv + 3, ids, n * sizeof(*ids));
    redisReply *r = command(s, (int)(3 + n), argv, NULL, err, errlen);
    free(argv);
    if (!r) return -1;
    if (r->type == REDIS_REPLY_ERROR) {
        /* NOGROUP: the group was deleted, so nothing is pending any more;
         * the next read recreates it. */
        log_warning("stream %s: XACK of %zu entr%s refused (%s); the next read rechecks the "
                    "stream", key, n, n == 1 ? "y" : "ies", r->str);
        for (size_t i = 0; i < s->n_streams; i++)
            if (strcmp(s->streams[i].key, key) == 0) s->streams[i].group_ready = 0;
    }
    freeReplyObject(r);
    return 0;
}
