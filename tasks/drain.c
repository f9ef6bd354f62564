/* tasks/drain.c: the drain engine (DESIGN §3): one run = iterations of
 * "read across all streams, validate, batch", with batches flushed as ONE
 * ClickHouse insert each, then dead-letter, then XACK. The Redis side
 * (discovery, groups, reads, reclaim, acks) is in streams.c; validation is
 * telemetry.c's; the DLQ record shape is dlq/'s.
 *
 * An entry is acked only once every valid event of it is stored and every
 * invalid one is in the DLQ (DLQ XADD first, then XACK). Until then it sits
 * in this consumer's pending list, and the next run reads it back first.
 *
 * Failure classes:
 *  - ClickHouse refuses the rows (ch_error_blames_rows: parse/type errors):
 *    the batch is split in halves (ch_insert_range, no re-encoding) until the
 *    refused rows are single; they go to the DLQ as "persistence" with
 *    ClickHouse's code and message, their neighbours are stored.
 *  - Anything else (server down, timeouts, 5xx, TOO_MANY_PARTS, memory, and
 *    also permanent errors about the query or table, where splitting cannot
 *    help and dead-lettering would throw away good data): nothing is acked or
 *    dead-lettered; the same batch is retried with exponential back-off until
 *    the run's budget (soft deadline, cancel flag, max_attempts) ends, and
 *    the entries stay pending for the next run. While ClickHouse is known to
 *    be down, a run probes it before reading, so an outage does not push the
 *    entries' delivery counts towards max_deliveries.
 *  - An entry delivered more than max_deliveries times is dead-lettered whole
 *    ("max_deliveries") without an insert: it is what keeps a poison entry
 *    from crashing every worker forever.
 *
 * No duplicates after a crash between INSERT and XACK (the dashboard does not
 * use FINAL, CONTRACT §4):
 *  (a) every insert carries insert_deduplication_token = a hash of the
 *      (stream, entry id, event index) of exactly its rows, so a retry of the
 *      same rows is dropped by servers >= 22.2 (ch_insert ignores it on older
 *      ones). The event index is in the hash because a retried batch may
 *      hold fewer rows (see b): the same token must never name other rows.
 *  (b) on every server, 18.16 included: rows of entries that are
 *      redeliveries (read from our own pending list, reclaimed, delivery
 *      count > 1, a stream whose group was recreated, or a batch whose insert
 *      answer was lost) are looked up first, one
 *      SELECT org_id_hash, event_id ... WHERE (org_id_hash, event_id) IN (...)
 *      per batch, and rows already present are skipped (counted as
 *      processed). A first delivery cannot have been inserted before, so the
 *      common path costs no query.
 *  (c) the dedup check must not run while an insert of the same rows is
 *      still on its way: one whose answer we gave up on (a frozen server runs
 *      it when it thaws), or the previous owner's of reclaimed entries. Every
 *      insert is sent with query_id = its token; after either event the check
 *      first waits until system.processes shows no such insert started before
 *      it (fence), and after an unanswered insert its SELECTs carry that
 *      insert's query_id, so a late copy and the check cannot overlap (the
 *      server refuses a second query with a running id: code 216, retried).
 *  (d) two consumers must never both insert one entry: a held batch is
 *      re-checked before each insert and kept fresh during back-off
 *      (hold_batch: an atomic owner check + XCLAIM JUSTID per entry), so no
 *      XAUTOCLAIM takes it while we retry, and entries another consumer did
 *      take over are dropped from the batch, not inserted or acked. */
#include "tasks/drain.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "tasks/drain_internal.h"

/* ---- The batch ------------------------------------------------------------------------ */

enum { ROW_PENDING = 0, ROW_STORED, ROW_FAILED };

typedef struct batch_entry {
    char *stream;
    char id[DRAIN_ID_MAX];
    long deliveries;
    int check_dups;            /* a redelivery: its rows may already be stored */
    char *poison;              /* non-NULL: dead-letter whole as max_deliveries, no insert */
    int trimmed;               /* the entry was gone when read: nothing to store */
    telemetry_entry t;
    char *events;              /* the entry's `events` field, for DLQ records: taken over
                                  from the read reply (take_events), freed with free_events */
    size_t events_len;
    int *event_index;          /* per row: its index in the entry's events */
    unsigned char *state;      /* per row: ROW_* */
    char **fail_reason;        /* per row, for ROW_FAILED */
    int dlq_written;
    int acked;
    int lost;                  /* another consumer took it over: neither stored nor acked here */
    uint64_t key_hash[2];      /* (stream, id) hashed once for dedup_token */
} batch_entry;

struct drain_batch {
    batch_entry *e;
    size_t n, cap;
    size_t rows, bytes;
    double started;            /* monotonic time of the first entry */
    size_t *ref_entry, *ref_row;   /* encoded row i -> (entry, row) */
    size_t nref, capref;
};

/* An entry keeps its `events` string for DLQ records. Copying it out of
 * every read reply was ~3% of the drain's CPU plus the page faults of the
 * copies (perf, issue #6); holding whole replies instead would keep up to
 * read_count entries per stream alive per batch (+13 MB peak RSS in the
 * bench). So the string is taken over from the reply: hiredis allocated it
 * and freeReplyObject skips a NULL str. Freed as hiredis frees it. */
#if HIREDIS_MAJOR >= 1
#define free_events(p) hi_free(p)
#else
#define free_events(p) free(p)   /* hiredis 0.14: freeReplyObject uses free() */
#endif

static void entry_clear(batch_entry *be)
{
    for (size_t r = 0; r < be->t.n_rows; r++) free(be->fail_reason[r]);
    telemetry_entry_free(&be->t);
    free(be->stream);
    free(be->poison);
    free_events(be->events);
    free(be->event_index);
    free(be->state);
    free(be->fail_reason);
}

static void batch_clear(drain_batch *b)
{
    for (size_t i = 0; i < b->n; i++) entry_clear(&b->e[i]);
    b->n = b->rows = b->bytes = b->nref = 0;
}

static void batch_free(drain_batch *b)
{
    if (!b) return;
    batch_clear(b);
    free(b->e);
    free(b->ref_entry);
    free(b->ref_row);
    free(b);
}

static size_t row_bytes(const event_row *r)
{
    size_t n = 64;   /* times, lengths, framing */
    if (r->has_len)
        return n + r->len.org_id_hash + r->len.event_id + r->len.name + r->len.schema_version +
               r->len.session_id + r->len.anonymous_user_id + r->len.route_pattern +
               r->len.payload_json + r->len.source;
    const char *s[] = {r->org_id_hash, r->event_id, r->name, r->schema_version, r->session_id,
                       r->anonymous_user_id, r->route_pattern, r->payload_json, r->source};
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) n += s[i] ? strlen(s[i]) : 0;
    return n;
}

/* Rows come in entry order and rejections carry their index, so the
 * index of each row is the next index no rejection took. */
static void assign_event_indexes(batch_entry *be)
{
    size_t rj = 0;
    int idx = 0;
    for (size_t k = 0; k < be->t.n_rows; k++, idx++) {
        while (rj < be->t.n_rejections && be->t.rejections[rj].event_index == idx) rj++, idx++;
        be->event_index[k] = idx;
    }
}

static redisReply *entry_value(redisReply *fields, const char *name)
{
    redisReply *v = NULL;
    for (size_t i = 0; fields && i + 1 < fields->elements; i += 2)   /* last one wins */
        if (fields->element[i]->type == REDIS_REPLY_STRING && strcmp(fields->element[i]->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            v = fields->element[i + 1];
    return v;
}

static const char *entry_field(redisReply *fields, const char *name, size_t *len)
{
    redisReply *v = entry_value(fields, name);
    if (v) *len = v->len;
    return v ? v->str : NULL;
}

/* The entry's `events` value becomes the batch entry's (see free_events);
 * called once nothing reads it through the reply any more. */
static void take_events(batch_entry *be, const drain_read_entry *re)
{
    redisReply *v = entry_value(re->fields, "events");
    if (v == NULL || v->str == NULL) return;
    be->events = v->str;
    be->events_len = v->len;
    v->str = NULL;
    v->len = 0;
}

/* The (stream, entry id) part of dedup_token, once per entry: two 64-bit
 * FNV-1a hashes (different offset bases), the NUL separating the parts. */
static void entry_key_hash(batch_entry *be)
{
    uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x84222325cbf29ce4ULL;
    const uint64_t prime = 0x100000001b3ULL;
    const char *parts[] = {be->stream, be->id};
    for (int p = 0; p < 2; p++) {
        for (const unsigned char *c = (const unsigned char *)parts[p];; c++) {
            h1 = (h1 ^ *c) * prime;
            h2 = (h2 ^ *c) * prime;
            if (*c == 0) break;
        }
    }
    be->key_hash[0] = h1;
    be->key_hash[1] = h2;
}

/* Turn one read entry into a batch entry (validated, rows ready). read_at:
 * when the read that delivered it was sent, i.e. no later than Redis reset
 * its idle time. */
static void batch_add(drain_session *s, const drain_read_entry *re, double read_at)
{
    drain_batch *b = s->batch;
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->e = xrealloc(b->e, b->cap * sizeof(*b->e));
    }
    /* Reading an entry (new or from our pending list) makes it ours with a
     * fresh idle time: the batch is held as of its OLDEST read, not as of
     * when the entry joins it. The two differ when a read's entries fill
     * more than one batch and an earlier batch took long to store (an
     * outage): the entries left over have been idle all that time, another
     * consumer may have reclaimed them, and the hold check before the
     * insert must run (it drops them if so). */
    if (b->n == 0) {
        b->started = time_monotonic();
        s->held_at = read_at;
    } else if (read_at < s->held_at) {
        s->held_at = read_at;
    }
    batch_entry *be = &b->e[b->n++];
    memset(be, 0, sizeof(*be));
    be->stream = xstrdup(re->stream->key);
    snprintf(be->id, sizeof be->id, "%s", re->id);
    be->deliveries = re->deliveries;
    be->check_dups = re->history || re->deliveries > 1 || re->stream->dedup_all;
    entry_key_hash(be);
    size_t elen = 0, mlen = 0;
    /* Entries `dlq replay` wrote (dlq_cli.c marks them): a replay run again
     * after an interruption re-sends events that may already be stored. */
    if (entry_field(re->fields, "replayed_from", &mlen)) be->check_dups = 1;
    entry_field(re->fields, "events", &elen);   /* its length: a poison entry's batch bytes */
    if (!re->fields) {
        be->trimmed = 1;
        return;
    }
    if (re->deliveries > s->o.max_deliveries) {
        buf why = BUF_INIT;
        buf_printf(&why, "max_deliveries: delivered %ld times, more than the limit of %d",
                   re->deliveries, s->o.max_deliveries);
        be->poison = buf_detach(&why);
        size_t len = 0;
        const char *v;
        if ((v = entry_field(re->fields, "ingestion_id", &len))) be->t.ingestion_id = xstrndup(v, len);
        if ((v = entry_field(re->fields, "source", &len))) be->t.source = xstrndup(v, len);
        if ((v = entry_field(re->fields, "org_id_hash", &len))) be->t.org_id_hash = xstrndup(v, len);
        b->bytes += elen;
        take_events(be, re);
        return;
    }
    size_t nf = re->fields->elements / 2;
    telemetry_field *f = xcalloc(nf ? nf : 1, sizeof(*f));
    for (size_t i = 0; i < nf; i++) {
        redisReply *n = re->fields->element[2 * i], *v = re->fields->element[2 * i + 1];
        f[i].name = n->str ? n->str : "";
        f[i].name_len = n->str ? n->len : 0;
        f[i].value = v->str ? v->str : "";
        f[i].value_len = v->str ? v->len : 0;
    }
    telemetry_parse_entry(f, nf, &be->t);
    free(f);
    take_events(be, re);
    size_t nr = be->t.n_rows;
    be->event_index = xcalloc(nr ? nr : 1, sizeof(int));
    be->state = xcalloc(nr ? nr : 1, 1);
    be->fail_reason = xcalloc(nr ? nr : 1, sizeof(char *));
    assign_event_indexes(be);
    b->rows += nr;
    for (size_t r = 0; r < nr; r++) b->bytes += row_bytes(&be->t.rows[r]);
}

static int batch_full(const drain_session *s)
{
    const drain_batch *b = s->batch;
    if (b->n == 0) return 0;
    return b->rows >= (size_t)s->o.batch_max_rows || b->bytes >= s->o.batch_max_bytes ||
           (time_monotonic() - b->started) * 1000 >= s->o.batch_max_ms;
}

/* ---- Holding the batch -------------------------------------------------------------------- */

/* A batch is held while its entries are pending for this consumer with an
 * idle time below reclaim_idle_ms: until then no other consumer's XAUTOCLAIM
 * can take them. An insert starts only within hold_slack of the last check
 * (hold_batch), so it reaches ClickHouse while the entries are surely ours,
 * and at least 3/4 of reclaim_idle_ms before anyone can reclaim them (whose
 * dedup check then waits for that insert: fence). */
static double hold_slack(const drain_session *s) { return s->o.reclaim_idle_ms / 4000.0; }

static int hold_fresh(const drain_session *s)
{
    return time_monotonic() - s->held_at < hold_slack(s);
}

/* Check (atomically, streams_hold) that every entry of the batch is still
 * this consumer's, resetting its idle time; entries another consumer took
 * over (it reclaimed them while ClickHouse kept failing here, or after a
 * Redis outage) are dropped: not inserted, not dead-lettered, not acked,
 * since the new owner handles them. -1 (err filled) when Redis failed; 1
 * when an entry is no longer pending at all and now needs the dedup check. */
static int hold_batch(drain_session *s, char *err, size_t errlen)
{
    drain_batch *b = s->batch;
    const char **keys = xmalloc((b->n ? b->n : 1) * sizeof(*keys));
    const char **ids = xmalloc((b->n ? b->n : 1) * sizeof(*ids));
    size_t *at = xmalloc((b->n ? b->n : 1) * sizeof(*at));
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (b->e[i].acked) continue;
        keys[n] = b->e[i].stream;
        ids[n] = b->e[i].id;
        at[n++] = i;
    }
    unsigned char *lost = xcalloc(n ? n : 1, 1);
    double now = time_monotonic();
    int rc = streams_hold(s, keys, ids, n, lost, err, errlen);
    if (rc >= 0) {
        size_t nlost = 0, first = 0;
        for (size_t k = 0; k < n; k++) {
            if (lost[k] == HOLD_GONE) {
                /* Acked elsewhere, or trimmed from the stream: no one can
                 * take it any more; store it unless its rows are there. The
                 * check runs again even when the entry was checked before:
                 * the consumer that acked it may have stored its rows since. */
                rc = 1;
                b->e[at[k]].check_dups = 1;
                if (s->fence_since <= 0) s->fence_since = now;
            }
            if (lost[k] != HOLD_LOST) continue;
            batch_entry *be = &b->e[at[k]];
            if (nlost++ == 0) first = at[k];
            be->lost = be->acked = 1;
        }
        if (nlost)
            log_warning("%zu entr%s of the batch being stored (first: stream %s entry %s) now "
                        "belong%s to another consumer, which took %s over after %d ms idle; left "
                        "to it: not inserted or acked here", nlost, nlost == 1 ? "y" : "ies",
                        b->e[first].stream, b->e[first].id, nlost == 1 ? "s" : "", nlost == 1
                        ? "it" : "them", s->o.reclaim_idle_ms);
        s->held_at = now;
    }
    free(keys);
    free(ids);
    free(at);
    free(lost);
    return rc;
}

/* ---- Budget and back-off ------------------------------------------------------------------- */

typedef struct retry_state {
    int attempts;
    long delay_ms;
} retry_state;

static int stop_requested(const drain_session *s)
{
    const drain_request *q = s->req;
    if (q->cancel && atomic_load(q->cancel)) return 1;
    return q->soft_deadline_us > 0 && time_now_us() >= q->soft_deadline_us;
}

/* Sleep before the next try. -1 when the run's budget is spent (cancel,
 * deadline, attempts): the caller gives up and leaves entries pending. */
static int backoff(drain_session *s, retry_state *rs)
{
    const drain_request *q = s->req;
    int limit = q->max_attempts > 0 ? q->max_attempts
                                    : q->soft_deadline_us > 0 ? 0 : DRAIN_ATTEMPTS_NO_DEADLINE;
    if (++rs->attempts >= limit && limit > 0) return -1;
    if (rs->delay_ms <= 0) rs->delay_ms = DRAIN_BACKOFF_FIRST_MS;
    long left = rs->delay_ms;
    double tried = 0;
    while (left > 0) {
        if (stop_requested(s)) return -1;
        /* Waiting with a batch: keep its entries from going idle, so no
         * other worker reclaims them while we wait for ClickHouse. */
        if (s->batch->n > 0 && !hold_fresh(s) && time_monotonic() - tried >= hold_slack(s)) {
            char herr[256];
            tried = time_monotonic();
            hold_batch(s, herr, sizeof herr);   /* a Redis failure is logged by streams.c */
        }
        long step = left < 50 ? left : 50;
        struct timespec ts = {0, step * 1000000L};
        nanosleep(&ts, NULL);
        left -= step;
    }
    if (stop_requested(s)) return -1;
    rs->delay_ms = rs->delay_ms * 2 > s->o.backoff_max_s * 1000L ? s->o.backoff_max_s * 1000L
                                                                  : rs->delay_ms * 2;
    return 0;
}

/* ---- ClickHouse health ------------------------------------------------------------------ */

static void ch_failed(drain_session *s, const ch_error *e)
{
    if (s->ch_down) return;
    s->ch_down = 1;
    s->ch_down_since = time_monotonic();
    log_error("ClickHouse %s: %s (code %d, HTTP %ld, %s); nothing is acked or dead-lettered, the "
              "batch is retried with back-off (up to %d s) and stays pending if the run ends first",
              ch_client_redacted_url(s->ch), e->msg, e->code, e->http_status,
              e->transient ? "transient" : "not fixed by splitting the batch", s->o.backoff_max_s);
}

static void ch_ok(drain_session *s)
{
    if (s->ch_down)
        log_info("ClickHouse %s works again after %.1f s; draining resumes",
                 ch_client_redacted_url(s->ch), time_monotonic() - s->ch_down_since);
    s->ch_down = 0;
}

static int ensure_table(drain_session *s, ch_error *e)
{
    if (s->have_table) return 0;
    if (ch_table_describe(s->ch, s->o.clickhouse_table, &s->table, e) != 0) return -1;
    ch_batch_free(s->chb);
    s->chb = ch_batch_new(&s->table, s->format);
    /* No insert is in flight here (ensure_table runs on this thread only
     * after finish_insert joined it). */
    ch_batch_free(s->chb_inflight);
    s->chb_inflight = s->ch_async ? ch_batch_new(&s->table, s->format) : NULL;
    s->have_table = 1;
    return 0;
}

/* Legacy servers (< 20.1) have no TTL: enforce retention ourselves, hourly. */
static void maybe_retention(drain_session *s)
{
    int64_t now = time_now_us();
    if (s->o.retention_days < 0 || s->ch_down ||
        now - s->last_retention_us < DRAIN_RETENTION_EVERY_S * USEC_PER_SEC) return;
    s->last_retention_us = now;
    int major, minor;
    ch_error e;
    if (ch_server_version(s->ch, &major, &minor, &e) != 0) return;
    if (major > 20 || (major == 20 && minor >= 1)) return;
    ch_retention_report rep;
    if (ch_retention_enforce(s->ch, s->o.clickhouse_table, s->o.retention_days, now, &rep, &e) != 0) {
        log_warning("retention on %s (%d days): %s; tried again in an hour", s->o.clickhouse_table,
                    s->o.retention_days, e.msg);
        return;
    }
    if (!rep.ttl_managed && (rep.partitions_dropped || rep.rows_deleted))
        log_info("retention on %s: events older than %d days removed: %zu partition(s) dropped "
                 "(%llu rows), %llu row(s) deleted", s->o.clickhouse_table, s->o.retention_days,
                 rep.partitions_dropped, (unsigned long long)rep.rows_dropped,
                 (unsigned long long)rep.rows_deleted);
}

/* ---- Dedup of redelivered rows ---------------------------------------------------------------- */

static void sql_quote(buf *out, const char *s)
{
    buf_putc(out, '\'');
    for (; *s; s++) {
        if (*s == '\\' || *s == '\'') buf_putc(out, '\\');
        buf_putc(out, *s);
    }
    buf_putc(out, '\'');
}

/* Undo TabSeparated escaping of s[0..n) into out. */
static void tsv_unescape(buf *out, const char *s, size_t n)
{
    buf_reset(out);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            switch (c) {
            case 't': c = '\t'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case '0': c = '\0'; break;
            default: break;
            }
        }
        buf_putc(out, c);
    }
    buf_cstr(out);
}

/* Mark pending rows [from, to) of the candidate list that the result names. */
static void mark_found(drain_session *s, const size_t *ce, const size_t *cr, size_t from, size_t to,
                       const buf *result, size_t *found)
{
    buf org = BUF_INIT, eid = BUF_INIT;
    const char *p = result->data, *end = result->data + result->len;
    while (p && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *tab = memchr(p, '\t', (size_t)(le - p));
        if (tab) {
            tsv_unescape(&org, p, (size_t)(tab - p));
            tsv_unescape(&eid, tab + 1, (size_t)(le - tab - 1));
            for (size_t i = from; i < to; i++) {
                batch_entry *be = &s->batch->e[ce[i]];
                const event_row *r = &be->t.rows[cr[i]];
                if (be->state[cr[i]] == ROW_PENDING && strcmp(r->event_id, eid.data) == 0 &&
                    strcmp(r->org_id_hash, org.data) == 0) {
                    be->state[cr[i]] = ROW_STORED;
                    (*found)++;
                }
            }
        }
        p = nl ? nl + 1 : NULL;
    }
    buf_free(&org);
    buf_free(&eid);
}

/* The same event twice among the rows to check (a `dlq replay` run again
 * after an interruption re-sends events whose first copy may still be in
 * this very batch): the first copy is inserted, later ones count as stored. */
typedef struct dup_key {
    const char *org, *id;
    size_t k;
} dup_key;

static int dup_key_cmp(const void *x, const void *y)
{
    const dup_key *a = x, *b = y;
    int d = strcmp(a->org, b->org);
    if (d == 0) d = strcmp(a->id, b->id);
    return d ? d : (a->k > b->k) - (a->k < b->k);
}

static size_t mark_batch_dups(drain_batch *b, const size_t *ce, const size_t *cr, size_t n)
{
    dup_key *keys = xmalloc((n ? n : 1) * sizeof(*keys));
    for (size_t k = 0; k < n; k++) {
        const event_row *r = &b->e[ce[k]].t.rows[cr[k]];
        keys[k] = (dup_key){r->org_id_hash, r->event_id, k};
    }
    qsort(keys, n, sizeof(*keys), dup_key_cmp);
    size_t dups = 0;
    for (size_t k = 1; k < n; k++) {
        if (strcmp(keys[k].org, keys[k - 1].org) != 0 || strcmp(keys[k].id, keys[k - 1].id) != 0)
            continue;
        b->e[ce[keys[k].k]].state[cr[keys[k].k]] = ROW_STORED;
        dups++;
    }
    free(keys);
    return dups;
}

static int dedup_rows(drain_session *s, ch_error *e)
{
    drain_batch *b = s->batch;
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].check_dups) n += b->e[i].t.n_rows;
    if (n == 0) return 0;
    size_t *ce = xmalloc(n * sizeof(size_t)), *cr = xmalloc(n * sizeof(size_t));
    n = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (!b->e[i].check_dups || b->e[i].lost) continue;
        for (size_t r = 0; r < b->e[i].t.n_rows; r++)
            if (b->e[i].state[r] == ROW_PENDING) ce[n] = i, cr[n++] = r;
    }
    size_t found = mark_batch_dups(b, ce, cr, n), start = 0;
    int rc = 0;
    buf sql = BUF_INIT, result = BUF_INIT;
    while (start < n && rc == 0) {
        buf_reset(&sql);
        buf_printf(&sql, "SELECT org_id_hash, event_id FROM %s WHERE (org_id_hash, event_id) IN (",
                   s->o.clickhouse_table);
        size_t i = start;
        for (; i < n && (i == start || sql.len < DRAIN_DEDUP_QUERY_MAX); i++) {
            const event_row *r = &b->e[ce[i]].t.rows[cr[i]];
            buf_puts(&sql, i == start ? "(" : ", (");
            sql_quote(&sql, r->org_id_hash);
            buf_puts(&sql, ", ");
            sql_quote(&sql, r->event_id);
            buf_putc(&sql, ')');
        }
        buf_puts(&sql, ") FORMAT TabSeparated");
        buf_reset(&result);
        /* Under the id of an insert that failed without an answer: should
         * that insert still reach the server (a thawed SIGSTOP) while this
         * SELECT runs, one of the two is refused (code 216), instead of the
         * SELECT missing rows that land just after it. */
        ch_client_set_query_id(s->ch, s->uncertain_qid);
        rc = ch_query(s->ch, buf_cstr(&sql), &result, e);
        if (rc == 0) mark_found(s, ce, cr, start, i, &result, &found);
        start = i;
    }
    if (rc == 0 && found > 0)
        log_info("%zu event(s) of redelivered entries were already in %s: skipped, so no row is "
                 "stored twice", found, s->o.clickhouse_table);
    buf_free(&sql);
    buf_free(&result);
    free(ce);
    free(cr);
    return rc;
}

/* ---- Fence: inserts still running ------------------------------------------------------------- */

/* An insert the client gave up on (timeout, connection lost) may still be
 * executed by the server afterwards: a frozen server (SIGSTOP, a stall)
 * runs it when it thaws. So may the insert of a consumer whose entries we
 * just reclaimed. A dedup SELECT that runs before such an insert finishes
 * finds nothing and the rows are stored twice. Every drain insert carries
 * query_id = its dedup token ("ptel-..."), so before the dedup check that
 * follows such an event (s->fence_since: a failed insert, a reclaim, a new
 * session), wait until system.processes lists no "ptel-" query that started
 * before it (inserts, and the odd dedup SELECT sent under an insert's id,
 * which is short). -1 with a transient error while some still run (the caller
 * backs off and asks again, within the run's budget). */
static int fence(drain_session *s, ch_error *e)
{
    if (s->fence_since <= 0 || s->fence_unsupported) return 0;
    double age = time_monotonic() - s->fence_since;
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count() FROM system.processes WHERE query_id LIKE 'ptel-%%' "
             "AND elapsed >= %.3f", age > 0.001 ? age - 0.001 : 0.0);
    buf out = BUF_INIT;
    int rc = ch_query(s->ch, sql, &out, e);
    long running = rc == 0 ? strtol(buf_cstr(&out), NULL, 10) : 0;
    buf_free(&out);
    if (rc != 0 && !e->transient) {
        log_warning("ClickHouse %s: cannot read system.processes (%s): redelivered rows are "
                    "checked without waiting for inserts that may still be running there",
                    ch_client_redacted_url(s->ch), e->msg);
        s->fence_unsupported = 1;
        return 0;
    }
    if (rc != 0) return -1;
    s->fence_running = running;
    if (running > 0) {
        e->code = 0;
        e->http_status = 0;
        e->transient = 1;
        snprintf(e->msg, sizeof e->msg, "%ld insert(s) sent before an unanswered insert or a "
                 "takeover are still running on the server; waiting for them before checking "
                 "which rows are already stored", running);
        return -1;
    }
    s->fence_since = 0;
    return 0;
}

/* ---- Insert with split ----------------------------------------------------------------------- */

/* splitmix64's finaliser: every input bit reaches every output bit. */
static uint64_t mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Deterministic token for encoded rows [first, first+count): two 64-bit
 * lanes, each folding in every row's (stream, entry id) hash and event
 * index in order. Per row this is a few multiplies on words; hashing the
 * ~100 bytes of stream key and id per row byte by byte (the earlier form)
 * was 5-8% of the drain's CPU (perf, issue #6). */
static void dedup_token(const drain_session *s, size_t first, size_t count, char *out, size_t outlen)
{
    uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x84222325cbf29ce4ULL;
    for (size_t i = first; i < first + count; i++) {
        const batch_entry *be = &s->batch->e[s->batch->ref_entry[i]];
        uint64_t idx = (uint64_t)(uint32_t)be->event_index[s->batch->ref_row[i]];
        h1 = mix64(h1 ^ be->key_hash[0]) + idx;
        h2 = mix64(h2 ^ be->key_hash[1]) ^ (idx << 32);
        h1 = mix64(h1);
        h2 = mix64(h2 + 0x9e3779b97f4a7c15ULL);
    }
    snprintf(out, outlen, "ptel-%016llx%016llx", (unsigned long long)h1, (unsigned long long)h2);
}

static void mark_range(drain_session *s, size_t first, size_t count, int state, const char *why)
{
    for (size_t i = first; i < first + count; i++) {
        batch_entry *be = &s->batch->e[s->batch->ref_entry[i]];
        size_t r = s->batch->ref_row[i];
        be->state[r] = (unsigned char)state;
        if (why) be->fail_reason[r] = xstrdup(why);
    }
}

#define INSERT_UNHELD (-2)   /* insert_split: the hold is stale, check ownership again */

/* Insert rows [first, first+count); when ClickHouse blames the rows, split
 * until the refused ones stand alone. -1 only for errors splitting cannot
 * fix (e filled): nothing of that range is marked. INSERT_UNHELD before a
 * split's request when the batch was last held too long ago (the caller
 * holds it right before the first request). */
static int insert_split(drain_session *s, size_t first, size_t count, int split, ch_error *e)
{
    if (split && !hold_fresh(s)) return INSERT_UNHELD;
    char token[64];
    dedup_token(s, first, count, token, sizeof token);
    double t0 = time_monotonic();
    /* query_id = the token: the fence and the dedup SELECT find this insert
     * by it if the server still runs it after we stopped waiting. */
    ch_client_set_query_id(s->ch, token);
    int rc = ch_insert_range(s->ch, s->o.clickhouse_table, s->chb, first, count, token, e);
    if (rc == 0) {
        metrics_observe("ptel_clickhouse_insert_seconds", "", time_monotonic() - t0);
        metrics_add("ptel_clickhouse_insert_rows_total", "", (double)count);
        mark_range(s, first, count, ROW_STORED, NULL);
        return 0;
    }
    metrics_add("ptel_clickhouse_errors_total",
                e->transient ? "class=\"transient\"" : "class=\"permanent\"", 1);
    if (!ch_error_blames_rows(e)) {
        /* No answer, or one that does not say the rows were refused: the
         * server may still run (or be running) this insert. */
        snprintf(s->uncertain_qid, sizeof s->uncertain_qid, "%s", token);
        s->fence_since = time_monotonic();
        return -1;
    }
    if (count == 1) {
        batch_entry *be = &s->batch->e[s->batch->ref_entry[first]];
        size_t r = s->batch->ref_row[first];
        buf why = BUF_INIT;
        buf_printf(&why, "persistence: ClickHouse refused the row: code %d: %s", e->code, e->msg);
        log_warning("stream %s entry %s event %d (event_id %s): ClickHouse refused the row "
                    "(code %d); it goes to the DLQ, the rest of the batch is stored", be->stream,
                    be->id, be->event_index[r], be->t.rows[r].event_id, e->code);
        mark_range(s, first, 1, ROW_FAILED, buf_cstr(&why));
        buf_free(&why);
        return 0;
    }
    log_warning("ClickHouse refused a batch of %zu rows (code %d: %.200s): splitting it to isolate "
                "the bad row(s)", count, e->code, e->msg);
    size_t half = count / 2;
    int hrc = insert_split(s, first, half, 1, e);
    if (hrc != 0) return hrc;
    return insert_split(s, first + half, count - half, 1, e);
}

/* Encode the pending rows of the entries not lost; the number of rows. */
static size_t encode_rows(drain_session *s)
{
    drain_batch *b = s->batch;
    ch_batch_reset(s->chb);
    b->nref = 0;
    int64_t now = time_now_us();
    for (size_t i = 0; i < b->n; i++) {
        batch_entry *be = &b->e[i];
        if (be->lost) continue;
        for (size_t r = 0; r < be->t.n_rows; r++) {
            if (be->state[r] != ROW_PENDING) continue;
            if (ch_batch_add(s->chb, &be->t.rows[r], now) != 0) {
                buf why = BUF_INIT;
                buf_printf(&why, "persistence: cannot encode for %s: %s", s->o.clickhouse_table,
                           ch_batch_error(s->chb));
                be->state[r] = ROW_FAILED;
                be->fail_reason[r] = buf_detach(&why);
                continue;
            }
            if (b->nref == b->capref) {
                b->capref = b->capref ? b->capref * 2 : 256;
                b->ref_entry = xrealloc(b->ref_entry, b->capref * sizeof(size_t));
                b->ref_row = xrealloc(b->ref_row, b->capref * sizeof(size_t));
            }
            b->ref_entry[b->nref] = i;
            b->ref_row[b->nref++] = r;
        }
    }
    return b->nref;
}

static size_t count_lost(const drain_batch *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++) n += b->e[i].lost;
    return n;
}

static int any_row_pending(const drain_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        if (b->e[i].lost) continue;
        for (size_t r = 0; r < b->e[i].t.n_rows; r++)
            if (b->e[i].state[r] == ROW_PENDING) return 1;
    }
    return 0;
}

/* Everything before the insert request: the table known, older inserts
 * fenced, redelivered rows looked up, the pending rows of the entries still
 * held encoded (s->chb) and the batch held. 0: b->nref rows are ready (0:
 * nothing left to insert). -1: ClickHouse failed (e filled). -2: Redis failed
 * while checking ownership (err filled). */
static int prepare_insert(drain_session *s, ch_error *e, char *err, size_t errlen)
{
    drain_batch *b = s->batch;
    b->nref = 0;
    if (!any_row_pending(b)) return 0;
    if (ensure_table(s, e) != 0) return -1;
    /* Asked (and cached) now, so the version query ch_insert_range makes
     * once cannot take the query_id meant for the insert. */
    if (ch_server_version(s->ch, NULL, NULL, e) != 0) return -1;
    if (fence(s, e) != 0) return -1;
    if (dedup_rows(s, e) != 0) return -1;
    for (;;) {
        if (encode_rows(s) == 0) return 0;
        /* Held right before the request (encoding may take a while). */
        if (hold_fresh(s)) return 0;
        size_t lost = count_lost(b);
        int h = hold_batch(s, err, errlen);
        if (h < 0) return -2;
        if (h > 0 && (fence(s, e) != 0 || dedup_rows(s, e) != 0)) return -1;
        if (h == 0 && count_lost(b) == lost) return 0;
        /* entries were lost or must be looked up: re-encode what is left */
    }
}

/* Encode every pending row of the entries still held and insert them.
 * 0: every such row is stored or failed. -1: ClickHouse failed (e filled).
 * -2: Redis failed while checking ownership (err filled): nothing inserted. */
static int store_rows(drain_session *s, ch_error *e, char *err, size_t errlen)
{
    for (;;) {
        int rc = prepare_insert(s, e, err, errlen);
        if (rc != 0 || s->batch->nref == 0) return rc;
        rc = insert_split(s, 0, s->batch->nref, 0, e);
        if (rc != INSERT_UNHELD) return rc;
    }
}

/* ---- Dead-letter and ack ---------------------------------------------------------------------- */

/* Queue one DLQ record on the Redis connection (sent with the batch's
 * others when the replies are read: dlq_replies). */
static int queue_dlq(drain_session *s, const batch_entry *be, const char *reason, const char *cls,
                     int index, const char *events, size_t events_len, char *err, size_t errlen)
{
    dlq_record rec = {
        .original_stream = be->stream, .entry_id = be->id, .reason = reason,
        .ingestion_id = be->t.ingestion_id, .source = be->t.source,
        .org_id_hash = be->t.org_id_hash, .events = events ? events : "",
        .events_len = events ? events_len : 0, .event_index = index, .error_class = cls,
        .deliveries = be->deliveries, .worker = s->o.hostname,
    };
    return dlq_append(s->redis, &s->dlq, &rec, err, errlen);
}

/* The event at `index` of the entry's events array, as a one-item array. */
static char *one_event_array(const batch_entry *be, int index)
{
    buf out = BUF_INIT;
    pj_value *all = be->events ? pj_parse(be->events, be->events_len, NULL) : NULL;
    buf_putc(&out, '[');
    if (all && all->type == PJ_ARRAY && (size_t)index < all->u.array.len)
        pj_dump(&out, all->u.array.items[index], PJ_DUMP_COMPACT);
    buf_putc(&out, ']');
    pj_free(all);
    return buf_detach(&out);
}

/* Queue every DLQ record the entry needs: the whole entry (poison), else one
 * per rejection and one per row ClickHouse refused. The number queued, or
 * -1 (err filled) when hiredis could not queue one. */
static long queue_entry_records(drain_session *s, batch_entry *be, char *err, size_t errlen)
{
    if (be->poison)
        return queue_dlq(s, be, be->poison, DLQ_CLASS_MAX_DELIVERIES, -1, be->events,
                         be->events_len, err, errlen) == 0 ? 1 : -1;
    long queued = 0;
    for (size_t j = 0; j < be->t.n_rejections; j++) {
        const telemetry_rejection *rj = &be->t.rejections[j];
        int rc;
        if (rj->event_index < 0) {
            const char *raw = be->t.events_raw ? be->t.events_raw : be->events;
            rc = queue_dlq(s, be, rj->reason, rj->error_class, -1, raw, raw ? strlen(raw) : 0,
                           err, errlen);
        } else {
            buf one = BUF_INIT;
            buf_printf(&one, "[%s]", rj->event_json ? rj->event_json : "null");
            rc = queue_dlq(s, be, rj->reason, rj->error_class, rj->event_index, one.data, one.len,
                           err, errlen);
            buf_free(&one);
        }
        if (rc != 0) return -1;
        queued++;
    }
    for (size_t r = 0; r < be->t.n_rows; r++) {
        if (be->state[r] != ROW_FAILED) continue;
        char *one = one_event_array(be, be->event_index[r]);
        int rc = queue_dlq(s, be, be->fail_reason[r], DLQ_CLASS_PERSISTENCE, be->event_index[r],
                           one, strlen(one), err, errlen);
        free(one);
        if (rc != 0) return -1;
        queued++;
    }
    return queued;
}

static int entry_needs_dlq(const batch_entry *be)
{
    if (be->poison || be->t.n_rejections) return 1;
    for (size_t r = 0; r < be->t.n_rows; r++)
        if (be->state[r] == ROW_FAILED) return 1;
    return 0;
}

/* Read the replies of an entry's n queued records. 0 when all were stored;
 * -1 when Redis refused one (the others are still read, keeping the
 * pipeline in step); -2 when the connection broke (no more replies come). */
static int dlq_replies(drain_session *s, const batch_entry *be, long n, char *err, size_t errlen)
{
    int rc = 0;
    for (long k = 0; k < n; k++) {
        char why[512];
        if (dlq_read_reply(s->redis, &s->dlq, why, sizeof why) == 0) {
            s->res->dead_lettered++;
            continue;
        }
        if (s->redis->err) {
            snprintf(err, errlen, "%s", why);
            streams_redis_lost(s, "XADD to the DLQ");
            return -2;
        }
        if (rc == 0) {
            snprintf(err, errlen, "%s", why);
            log_error("DLQ %s: %s; entry %s of %s stays pending", s->dlq.dlq_key, why, be->id,
                      be->stream);
        }
        rc = -1;
    }
    return rc;
}

/* Every DLQ record of the entry is stored: say so, count it. */
static void entry_dead_lettered(drain_session *s, batch_entry *be)
{
    if (be->poison)
        log_warning("stream %s entry %s: delivered %ld times (limit %d): moved to %s whole, not "
                    "inserted", be->stream, be->id, be->deliveries, s->o.max_deliveries, s->dlq.dlq_key);
    else if (be->t.n_rejections)
        log_warning("stream %s entry %s: %zu event(s) failed validation (first: %.200s); moved to %s",
                    be->stream, be->id, be->t.n_rejections, be->t.rejections[0].reason, s->dlq.dlq_key);
    if (!be->poison) s->res->rejected += (long long)be->t.n_rejections;
    be->dlq_written = 1;
}

/* The DLQ records of every entry not yet dead-lettered, pipelined: all
 * XADDs are queued, then their replies read in order, one round trip per
 * batch instead of one per record (the per-record round trips were ~9% of
 * the drain's CPU at 1% invalid events, issue #6). An entry counts as
 * dead-lettered only when all its records were stored. -1 (err filled)
 * when any failed: nothing may be acked yet. */
static int dead_letter_batch(drain_session *s, char *err, size_t errlen)
{
    drain_batch *b = s->batch;
    long *queued = xcalloc(b->n ? b->n : 1, sizeof(*queued));
    int rc = 0;
    for (size_t i = 0; i < b->n && rc == 0; i++) {
        batch_entry *be = &b->e[i];
        if (be->acked || be->dlq_written) continue;
        if (be->trimmed) {
            log_warning("stream %s entry %s was deleted (trimmed by MAXLEN?) before it was stored: "
                        "its events are lost upstream; acking it", be->stream, be->id);
            be->dlq_written = 1;
            continue;
        }
        if (!entry_needs_dlq(be)) continue;
        if (streams_redis_ready(s, err, errlen) != 0) rc = -1;
        else if ((queued[i] = queue_entry_records(s, be, err, errlen)) < 0) {
            /* Part of the entry's records may be queued: drop the
             * connection rather than leave unread replies on it. */
            streams_redis_lost(s, "queueing an XADD to the DLQ");
            rc = -1;
        }
    }
    /* The replies, in queueing order (entries without records are done
     * at once). Nothing was queued when rc is already -1. */
    int refused = 0;
    for (size_t i = 0; i < b->n && rc == 0; i++) {
        batch_entry *be = &b->e[i];
        if (be->acked || be->dlq_written) continue;
        int r = queued[i] ? dlq_replies(s, be, queued[i], err, errlen) : 0;
        if (r == 0) entry_dead_lettered(s, be);
        else if (r == -1) refused = 1;   /* read on: the others may be stored */
        else rc = -1;                    /* the connection is gone */
    }
    free(queued);
    return rc == 0 && refused ? -1 : rc;
}

static void entry_done(drain_session *s, batch_entry *be)
{
    be->acked = 1;
    s->res->entries++;
    for (size_t r = 0; r < be->t.n_rows; r++) s->res->processed += be->state[r] == ROW_STORED;
}

/* DLQ records first, then one XACK per stream for its finished entries. */
static int dead_letter_and_ack(drain_session *s, char *err, size_t errlen)
{
    drain_batch *b = s->batch;
    if (dead_letter_batch(s, err, errlen) != 0) return -1;
    const char **ids = xmalloc((b->n ? b->n : 1) * sizeof(*ids));
    for (size_t i = 0; i < b->n; i++) {
        if (b->e[i].acked) continue;
        size_t n = 0;
        for (size_t j = i; j < b->n; j++)
            if (!b->e[j].acked && strcmp(b->e[j].stream, b->e[i].stream) == 0) ids[n++] = b->e[j].id;
        const char *key = b->e[i].stream;
        if (streams_ack(s, key, ids, n, err, errlen) != 0) {
            free(ids);
            return -1;
        }
        for (size_t j = i; j < b->n; j++)
            if (!b->e[j].acked && strcmp(b->e[j].stream, key) == 0) entry_done(s, &b->e[j]);
    }
    free(ids);
    return 0;
}

/* ---- Flush -------------------------------------------------------------------------------- */

static void report_progress(drain_session *s)
{
    s->res->streams = (long long)s->n_streams;
    if (s->req->progress) s->req->progress(s->res, s->req->progress_arg);
}

/* Store, dead-letter and ack everything in the batch, retrying failures
 * with back-off. -1 (err filled) when the budget ended first: the entries
 * that were not acked stay pending. The batch is empty afterwards. */
static int flush(drain_session *s, char *err, size_t errlen)
{
    drain_batch *b = s->batch;
    if (b->n == 0) return 0;
    retry_state rs = {0, 0};
    int rc = 0, fence_logged = 0;
    for (;;) {
        size_t held = 0;
        s->fence_running = 0;
        for (size_t i = 0; i < b->n; i++) held += !b->e[i].lost;
        if (held == 0) break;   /* all taken over while we waited: nothing left to do */
        ch_error e;
        int src = store_rows(s, &e, err, errlen);
        if (src == 0) {
            ch_ok(s);
            s->uncertain_qid[0] = '\0';
            break;
        }
        if (src == -2) {
            /* Redis down: whether the entries are still ours is unknown, so
             * nothing is inserted (streams.c logs the outage once). */
            if (backoff(s, &rs) != 0) {
                size_t used = strlen(err);
                snprintf(err + used, errlen - used, "; %zu entr%s left pending for the next run",
                         b->n, b->n == 1 ? "y" : "ies");
                rc = -1;
                break;
            }
            continue;
        }
        if (s->fence_running > 0) {
            /* Not a failure: older inserts still run on the server. */
            if (!fence_logged++)
                log_info("ClickHouse %s: %s", ch_client_redacted_url(s->ch), e.msg);
        } else {
            ch_failed(s, &e);
        }
        if (!e.transient) s->have_table = 0;   /* the table may be recreated meanwhile */
        /* The answer may have been lost after the server stored the rows. */
        for (size_t i = 0; i < b->n; i++) b->e[i].check_dups = 1;
        if (backoff(s, &rs) != 0) {
            snprintf(err, errlen, "ClickHouse %s: %s; %zu entr%s left pending for the next run",
                     ch_client_redacted_url(s->ch), e.msg, b->n, b->n == 1 ? "y" : "ies");
            rc = -1;
            break;
        }
    }
    while (rc == 0 && dead_letter_and_ack(s, err, errlen) != 0) {
        if (backoff(s, &rs) != 0) {
            size_t left = 0;
            for (size_t i = 0; i < b->n; i++) left += !b->e[i].acked;
            size_t used = strlen(err);
            snprintf(err + used, errlen - used, "; %zu entr%s left pending for the next run", left,
                     left == 1 ? "y" : "ies");
            rc = -1;
        }
    }
    batch_clear(b);
    s->held_at = 0;
    report_progress(s);
    return rc;
}

/* ---- Overlapped insert ---------------------------------------------------------------------- */

/* One insert request takes as long as ClickHouse needs to parse and write
 * the batch; this thread would otherwise sit idle all that time. So a full
 * batch is prepared here (fence, lookup, encode, hold: prepare_insert),
 * then its insert request goes out on insert_thread over s->ch_async while
 * this thread reads and validates the next batch. Before the next batch is
 * sent, before a reclaim or a blocking read, and at the end of the run,
 * finish_insert joins the thread and completes the batch exactly as flush()
 * would: a failed or refused insert falls back to flush()'s retries and
 * splits, then dead-lettering and acks. At most one batch is in flight, so
 * memory is at most two batches. */

static void *insert_main(void *arg)
{
    drain_session *s = arg;
    double t0 = time_monotonic();
    s->inflight_rc = ch_insert_range(s->ch_async, s->o.clickhouse_table, s->chb_inflight, 0,
                                     s->inflight->nref, s->inflight_token, &s->inflight_err);
    s->inflight_seconds = time_monotonic() - t0;
    return NULL;
}

static void swap_batches(drain_batch **a, drain_batch **b)
{
    drain_batch *t = *a;
    *a = *b;
    *b = t;
}

/* Join the in-flight insert and complete its batch (store what is left,
 * dead-letter, ack); the batch being filled is untouched. -1 (err filled)
 * when the run's budget ended first. */
static int finish_insert(drain_session *s, char *err, size_t errlen)
{
    if (!s->inflight) return 0;
    pthread_join(s->insert_thread, NULL);
    double filling_held_at = s->held_at;
    swap_batches(&s->batch, &s->inflight);   /* s->inflight: the batch being filled */
    drain_batch *b = s->batch;
    s->held_at = s->inflight_held_at;
    if (s->inflight_rc == 0) {
        metrics_observe("ptel_clickhouse_insert_seconds", "", s->inflight_seconds);
        metrics_add("ptel_clickhouse_insert_rows_total", "", (double)b->nref);
        mark_range(s, 0, b->nref, ROW_STORED, NULL);
    } else {
        const ch_error *e = &s->inflight_err;
        metrics_add("ptel_clickhouse_errors_total",
                    e->transient ? "class=\"transient\"" : "class=\"permanent\"", 1);
        if (!ch_error_blames_rows(e)) {
            /* As insert_split: the server may still run it. */
            snprintf(s->uncertain_qid, sizeof s->uncertain_qid, "%s", s->inflight_token);
            s->fence_since = time_monotonic();
            for (size_t i = 0; i < b->n; i++) b->e[i].check_dups = 1;
        }
        /* flush() below tries again (logging the failure if it persists),
         * splitting a refused batch. */
    }
    int rc = flush(s, err, errlen);
    swap_batches(&s->batch, &s->inflight);
    s->spare = s->inflight;                  /* emptied by flush() */
    s->inflight = NULL;
    s->held_at = filling_held_at;
    return rc;
}

/* Flush a full batch, overlapping its insert with what follows when it can.
 * -1 (err filled) when the budget ended first. */
static int flush_overlapped(drain_session *s, char *err, size_t errlen)
{
    if (finish_insert(s, err, errlen) != 0) return -1;
    drain_batch *b = s->batch;
    if (!s->ch_async || b->n == 0) return flush(s, err, errlen);
    ch_error e;
    s->fence_running = 0;
    /* Anything out of the ordinary (ClickHouse or Redis failing, nothing
     * left to insert) takes the synchronous path, which retries and logs. */
    if (prepare_insert(s, &e, err, errlen) != 0 || b->nref == 0 ||
        ch_server_version(s->ch_async, NULL, NULL, &e) != 0)
        return flush(s, err, errlen);
    dedup_token(s, 0, b->nref, s->inflight_token, sizeof s->inflight_token);
    /* query_id = the token, as insert_split does. */
    ch_client_set_query_id(s->ch_async, s->inflight_token);
    ch_batch *t = s->chb;
    s->chb = s->chb_inflight;
    s->chb_inflight = t;
    s->inflight = b;
    s->inflight_held_at = s->held_at;
    s->batch = s->spare;
    s->spare = NULL;
    s->held_at = 0;
    if (pthread_create(&s->insert_thread, NULL, insert_main, s) != 0) {
        /* No thread: put everything back and store it here. */
        s->spare = s->batch;
        s->batch = s->inflight;
        s->inflight = NULL;
        s->chb_inflight = s->chb;
        s->chb = t;
        s->held_at = s->inflight_held_at;
        return flush(s, err, errlen);
    }
    return 0;
}

/* Flush everything: the batch in flight, then the one being filled. */
static int flush_all(drain_session *s, char *err, size_t errlen)
{
    int rc = finish_insert(s, err, errlen);
    if (flush(s, err, errlen) != 0) rc = -1;
    return rc;
}

/* ---- The run ------------------------------------------------------------------------------- */

/* Redis connected, streams known and grouped, ClickHouse answering when it
 * was down. -1 when the budget ended first. */
static int ensure_services(drain_session *s, char *err, size_t errlen)
{
    retry_state rs = {0, 0};
    for (;;) {
        int ok = streams_redis_ready(s, err, errlen) == 0 && streams_refresh(s, err, errlen) == 0;
        if (ok && s->ch_down) {
            ch_error e;
            if (ch_query(s->ch, "SELECT 1", NULL, &e) == 0) ch_ok(s);
            else {
                snprintf(err, errlen, "ClickHouse %s: %s", ch_client_redacted_url(s->ch), e.msg);
                ok = 0;
            }
        }
        if (ok) return 0;
        if (backoff(s, &rs) != 0) return -1;
    }
}

static int ms_to_deadline(const drain_session *s, int want)
{
    if (s->req->soft_deadline_us <= 0) return want;
    int64_t left = (s->req->soft_deadline_us - time_now_us()) / 1000;
    return left <= 0 ? 0 : left < want ? (int)left : want;
}

static int all_pending_done(const drain_session *s)
{
    for (size_t i = 0; i < s->n_streams; i++)
        if (s->streams[i].group_ready && !s->streams[i].pending_done) return 0;
    return 1;
}

/* Take a read's entries into the batch, flushing whenever it is full. */
static int take_entries(drain_session *s, drain_read_entry *re, size_t n, double read_at,
                        char *err, size_t errlen)
{
    int any_history = 0;
    for (size_t i = 0; i < n; i++) any_history |= re[i].history;
    if (any_history && streams_delivery_counts(s, re, n, err, errlen) != 0) return -2;
    for (size_t i = 0; i < n; i++) {
        batch_add(s, &re[i], read_at);
        if (batch_full(s) && flush_overlapped(s, err, errlen) != 0) return -1;
    }
    return 0;
}

/* One iteration: one read across all streams (re-read at once when only
 * exhausted history cursors answered; BLOCK only when nothing at all is
 * pending or new). Returns entries read, -1 budget over, -2 Redis lost. */
static long iteration(drain_session *s, char *err, size_t errlen)
{
    int block = 0, changed = 0;
    for (;;) {
        int had_history = !all_pending_done(s);
        redisReply *reply = NULL;
        double read_at = time_monotonic();
        int rc = streams_read(s, block, &reply, err, errlen);
        if (rc == -2 && changed++ < 2) {
            if (flush_all(s, err, errlen) != 0) return -1;
            if (streams_revalidate(s, err, errlen) != 0) return -2;
            continue;
        }
        if (rc != 0) {
            if (s->redis) log_error("%s; retrying with back-off", err);
            return -2;
        }
        drain_read_entry *re = NULL;
        size_t n = streams_collect(s, reply, &re);
        if (n > 0) {
            int trc = take_entries(s, re, n, read_at, err, errlen);
            free(re);
            freeReplyObject(reply);
            return trc < 0 ? trc : (long)n;
        }
        if (reply) freeReplyObject(reply);
        if (had_history) continue;              /* history exhausted: now read new ones */
        if (block > 0 || s->req->until_empty) return 0;
        if (flush_all(s, err, errlen) != 0) return -1;   /* don't hold rows while blocking */
        block = ms_to_deadline(s, s->o.block_ms);
        if (block <= 0 || stop_requested(s)) return 0;
    }
}

static int reclaim_due(const drain_session *s)
{
    double every = s->o.reclaim_idle_ms / 2000.0;
    if (every < 1) every = 1;
    return s->last_reclaim == 0 || time_monotonic() - s->last_reclaim >= every;
}

int drain_run(drain_session *s, const drain_request *req, drain_result *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    s->req = req;
    s->res = out;
    s->last_reclaim = 0;
    streams_reset_run(s);
    int rc = 0;
    retry_state redis_rs = {0, 0};
    long credit = 0;    /* entries per stream read so far in the iteration under way */
    err[0] = '\0';
    while (!stop_requested(s)) {
        if (!req->until_empty && req->max_iterations > 0 && out->iterations >= req->max_iterations)
            break;
        if (ensure_services(s, err, errlen) != 0) { rc = -1; break; }
        maybe_retention(s);
        if (reclaim_due(s)) {
            long long claimed = 0;
            if (flush_all(s, err, errlen) != 0) { rc = -1; break; }
            if (streams_reclaim(s, &claimed, err, errlen) == 0) {
                out->reclaimed += claimed;
                s->last_reclaim = time_monotonic();
            }
            streams_reset_run(s);   /* batch is empty: re-reading our pending list is safe */
        }
        long n = iteration(s, err, errlen);
        if (n == -1) { rc = -1; break; }
        if (n == -2) {
            if (backoff(s, &redis_rs) != 0) { rc = -1; break; }
            continue;
        }
        redis_rs.attempts = 0;
        redis_rs.delay_ms = 0;
        /* A read of fewer than read_count entries per stream (capped by
         * DRAIN_READ_ENTRIES_MAX, or sized down for big entries) is part of
         * an iteration: reads adding up to read_count per stream make one,
         * so max_iterations bounds a run's entries as upstream's does. */
        credit += s->read_count_used;
        if (credit >= s->o.read_count || n == 0) {
            out->iterations++;
            credit = 0;
        }
        if (n == 0) break;
        if (batch_full(s) && flush_overlapped(s, err, errlen) != 0) { rc = -1; break; }
    }
    if (credit > 0) out->iterations++;   /* the part of an iteration done */
    if (flush_all(s, err, errlen) != 0) rc = -1;
    batch_clear(s->batch);
    out->streams = (long long)s->n_streams;
    s->req = NULL;
    s->res = NULL;
    return rc;
}

/* ---- Session ------------------------------------------------------------------------------ */

static const char *dflt(const char *v, const char *d) { return v && v[0] ? v : d; }

/* A ClickHouse client with the drain's timeouts and gzip setting; NULL
 * (err filled) for a bad URL. */
static ch_client *drain_ch_client(const drain_options *o, char *err, size_t errlen)
{
    ch_error e;
    ch_client *c = ch_client_new(o->clickhouse_url, &e);
    if (!c) {
        snprintf(err, errlen, "drain: ClickHouse URL: %s", e.msg);
        return NULL;
    }
    /* clickhouse_timeout bounds how long a frozen server (SIGSTOP, a hung
     * merge) can hold a batch before it counts as an outage. */
    ch_client_set_timeouts(c, o->clickhouse_connect_ms, o->clickhouse_timeout_ms);
    if (o->clickhouse_gzip_min_bytes != 0)
        ch_client_set_gzip_threshold(c, o->clickhouse_gzip_min_bytes < 0
                                     ? 0 : (size_t)o->clickhouse_gzip_min_bytes);
    return c;
}

drain_session *drain_session_new(const drain_options *o, char *err, size_t errlen)
{
    if (!o->redis_url || !o->clickhouse_url || !o->consumer || !o->consumer[0]) {
        snprintf(err, errlen, "drain: %s is required", !o->redis_url ? "the telemetry Redis URL"
                 : !o->clickhouse_url ? "the ClickHouse URL" : "a consumer name");
        return NULL;
    }
    drain_session *s = xcalloc(1, sizeof(*s));
    s->o = *o;
    s->o.stream_pattern = xstrdup(dflt(o->stream_pattern, DRAIN_STREAM_PATTERN_DEFAULT));
    s->o.group = xstrdup(dflt(o->group, DRAIN_GROUP_DEFAULT));
    s->o.consumer = xstrdup(o->consumer);
    s->o.dlq_key = xstrdup(dflt(o->dlq_key, DLQ_KEY_DEFAULT));
    s->o.clickhouse_table = xstrdup(dflt(o->clickhouse_table, DRAIN_TABLE_DEFAULT));
    s->o.hostname = xstrdup(dflt(o->hostname, "unknown"));
    s->o.redis_url = xstrdup(o->redis_url);
    s->o.clickhouse_url = NULL;   /* the client keeps its own copy */
    s->o.clickhouse_format = NULL;
    s->o.stream_key = o->stream_key && o->stream_key[0] ? xstrdup(o->stream_key) : NULL;
#define DEFAULT(f, d) if (s->o.f <= 0) s->o.f = (d)
    DEFAULT(dlq_maxlen, DLQ_MAXLEN_DEFAULT);
    DEFAULT(read_count, DRAIN_READ_COUNT_DEFAULT);
    DEFAULT(block_ms, DRAIN_BLOCK_MS_DEFAULT);
    DEFAULT(batch_max_rows, DRAIN_BATCH_MAX_ROWS_DEFAULT);
    DEFAULT(batch_max_bytes, DRAIN_BATCH_MAX_BYTES_DEFAULT);
    DEFAULT(batch_max_ms, DRAIN_BATCH_MAX_MS_DEFAULT);
    DEFAULT(reclaim_idle_ms, DRAIN_RECLAIM_IDLE_MS_DEFAULT);
    DEFAULT(max_deliveries, DRAIN_MAX_DELIVERIES_DEFAULT);
    DEFAULT(stream_refresh_s, DRAIN_STREAM_REFRESH_S_DEFAULT);
    DEFAULT(backoff_max_s, DRAIN_BACKOFF_MAX_S_DEFAULT);
#undef DEFAULT
    if (o->retention_days == 0) s->o.retention_days = DRAIN_RETENTION_DAYS_DEFAULT;
    s->dlq.redis_url = s->o.redis_url;
    s->dlq.dlq_key = s->o.dlq_key;
    s->dlq.maxlen = s->o.dlq_maxlen;
    s->dlq.stream_pattern = s->o.stream_pattern;
    strcpy(s->scan_cursor, "0");
    s->batch = xcalloc(1, sizeof(*s->batch));
    s->spare = xcalloc(1, sizeof(*s->spare));
    /* An earlier process under this consumer name (a restarted slot) may
     * have left an insert running: the first dedup check waits for it. */
    s->fence_since = time_monotonic();

    const char *fmt = o->clickhouse_format;
    s->format = ch_format_default();
    if (fmt && fmt[0]) {
        if (strcmp(fmt, ch_format_name(CH_FORMAT_ROWBINARY)) == 0) s->format = CH_FORMAT_ROWBINARY;
        else if (strcmp(fmt, ch_format_name(CH_FORMAT_JSONEACHROW)) == 0) s->format = CH_FORMAT_JSONEACHROW;
        else {
            snprintf(err, errlen, "drain: unknown ClickHouse insert format '%s' (RowBinary or "
                     "JSONEachRow)", fmt);
            goto fail;
        }
    }
    if (s->o.stream_key && !dlq_key_matches(s->o.stream_pattern, s->o.stream_key)) {
        snprintf(err, errlen, "drain: stream %s does not match the telemetry pattern %s",
                 s->o.stream_key, s->o.stream_pattern);
        goto fail;
    }
    char why[256];
    if (redis_url_parse(s->o.redis_url, &s->rurl, why, sizeof why) != 0) {
        snprintf(err, errlen, "drain: telemetry Redis URL: %s", why);
        goto fail;
    }
    s->redis_redacted = redis_url_redacted(&s->rurl);
    s->ch = drain_ch_client(o, err, errlen);
    if (!s->ch) goto fail;
    /* The overlapped insert's own connection (an embedded chdb:// server is
     * one in-process session: no overlap there). */
    if (strncasecmp(o->clickhouse_url, "chdb://", 7) != 0) {
        s->ch_async = drain_ch_client(o, err, errlen);
        if (!s->ch_async) goto fail;
    }
    return s;
fail:
    drain_session_free(s);
    return NULL;
}

/* With leave_on_exit, the consumer leaves its groups here (streams_leave):
 * the session's Redis I/O ends with it. */
void drain_session_free(drain_session *s)
{
    if (!s) return;
    if (s->inflight) {   /* a run always finishes its insert; this is the safety net */
        pthread_join(s->insert_thread, NULL);
        batch_free(s->inflight);
    }
    if (s->o.leave_on_exit) streams_leave(s);
    batch_free(s->batch);
    batch_free(s->spare);
    streams_free(s);
    if (s->redis) redisFree(s->redis);
    redis_url_free(&s->rurl);
    free(s->redis_redacted);
    ch_batch_free(s->chb);
    ch_batch_free(s->chb_inflight);
    ch_client_free(s->ch);
    ch_client_free(s->ch_async);
    free((char *)s->o.stream_pattern);
    free((char *)s->o.group);
    free((char *)s->o.consumer);
    free((char *)s->o.dlq_key);
    free((char *)s->o.clickhouse_table);
    free((char *)s->o.hostname);
    free((char *)s->o.redis_url);
    free((char *)s->o.stream_key);
    free(s);
}

pj_value *drain_result_to_value(const drain_result *r)
{
    pj_value *o = pj_new_object();
    pj_object_set(o, "processed", pj_new_int(r->processed));
    pj_object_set(o, "rejected", pj_new_int(r->rejected));
    pj_object_set(o, "dead_lettered", pj_new_int(r->dead_lettered));
    pj_object_set(o, "reclaimed", pj_new_int(r->reclaimed));
    pj_object_set(o, "entries", pj_new_int(r->entries));
    pj_object_set(o, "streams", pj_new_int(r->streams));
    pj_object_set(o, "iterations", pj_new_int(r->iterations));
    return o;
}
