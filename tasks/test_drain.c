/* tasks/test_drain.c: the drain against a real redis-server
 * (PTEL_TEST_REDIS_URL) and a real ClickHouse (PTEL_TEST_CLICKHOUSE_URL,
 * 18.16 in CI). Without both, only the pure tests run and the program exits
 * 77. Every test uses its own stream pattern, DLQ key and table (created
 * with ch_schema_apply), and produces entries shaped as the upstream API
 * writes them (XADD MAXLEN ~ 100000 with ingestion_id/source/org_id_hash/
 * events, CONTRACT §1.2). */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "clickhouse/clickhouse.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "tasks/drain.h"
#include "tasks/telemetry.h"

static const char *redis_url, *ch_url;
static char prefix[64], pattern[96], dlq_key[96], table[96];
static redisContext *rc;
static ch_client *chc;
static int seq;

/* ---- Fixtures ------------------------------------------------------------------------- */

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "redis: %s", rc->errstr);
    return r;
}

static long long cmd_int(const char *fmt, const char *key)
{
    redisReply *r = cmd(fmt, key);
    ck_assert_msg(r->type == REDIS_REPLY_INTEGER, "%s %s: %s", fmt, key, r->str ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static long long ch_count(const char *where)
{
    char sql[512];
    buf out = BUF_INIT;
    ch_error e;
    snprintf(sql, sizeof sql, "SELECT count() FROM %s%s%s", table, where ? " WHERE " : "",
             where ? where : "");
    ck_assert_msg(ch_query(chc, sql, &out, &e) == 0, "%s", e.msg);
    long long n = atoll(buf_cstr(&out));
    buf_free(&out);
    return n;
}

static long long ch_distinct_events(void)
{
    char sql[256];
    buf out = BUF_INIT;
    ch_error e;
    snprintf(sql, sizeof sql, "SELECT uniqExact(org_id_hash, event_id) FROM %s", table);
    ck_assert_msg(ch_query(chc, sql, &out, &e) == 0, "%s", e.msg);
    long long n = atoll(buf_cstr(&out));
    buf_free(&out);
    return n;
}

static void setup(void)
{
    snprintf(prefix, sizeof prefix, "tdr%d_%d", (int)getpid(), seq++);
    snprintf(pattern, sizeof pattern, "%s:*:events", prefix);
    snprintf(dlq_key, sizeof dlq_key, "%s:dlq", prefix);
    snprintf(table, sizeof table, "drain_%s", prefix);
    int port;
    char host[128];
    ck_assert(sscanf(redis_url, "redis://%127[^:/]:%d", host, &port) == 2);
    rc = redisConnect(host, port);
    ck_assert(rc && !rc->err);
    ch_error e;
    chc = ch_client_new(ch_url, &e);
    ck_assert_msg(chc != NULL, "%s", e.msg);
    ck_assert_msg(ch_schema_apply(chc, table, &e) == 0, "%s", e.msg);
}

static void teardown(void)
{
    redisReply *r = redisCommand(rc, "KEYS %s:*", prefix);
    for (size_t i = 0; r && i < r->elements; i++) {
        redisReply *d = redisCommand(rc, "DEL %s", r->element[i]->str);
        if (d) freeReplyObject(d);
    }
    if (r) freeReplyObject(r);
    redisFree(rc);
    char sql[160];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
    ch_error e;
    ch_query(chc, sql, NULL, &e);
    ch_client_free(chc);
}

static void stream_of(char *out, size_t n, const char *org)
{
    snprintf(out, n, "%s:%s:events", prefix, org);
}

/* One valid event JSON, unique id. */
static void event_json(buf *b, const char *org, const char *event_id, const char *name)
{
    char ts[64];
    buf t = BUF_INIT;
    time_format_iso_offset(&t, time_now_us() - 3600 * USEC_PER_SEC);
    snprintf(ts, sizeof ts, "%s", buf_cstr(&t));
    buf_free(&t);
    buf_printf(b, "{\"name\":\"%s\",\"schemaVersion\":\"2026-05-telemetry-v1\",\"eventId\":\"%s\","
               "\"ts\":\"%s\",\"sessionId\":\"ses_1\",\"anonymousUserId\":\"anon_1\","
               "\"orgIdHash\":\"%s\",\"routePattern\":\"/metrics\",\"payload\":{\"view\":\"metrics\","
               "\"valueCount\":2}}", name, event_id, ts, org);
}

/* XADD as the upstream API does. Returns the entry id (static). */
static const char *xadd(const char *org, const char *events, const char *source)
{
    static char id[64];
    char key[160];
    stream_of(key, sizeof key, org);
    redisReply *r = source
        ? cmd("XADD %s MAXLEN ~ 100000 * ingestion_id ing-%d source %s org_id_hash %s events %s",
              key, seq, source, org, events)
        : cmd("XADD %s MAXLEN ~ 100000 * ingestion_id ing-%d org_id_hash %s events %s", key, seq,
              org, events);
    ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
    snprintf(id, sizeof id, "%s", r->str);
    freeReplyObject(r);
    return id;
}

/* An entry of n valid events "<org>-<tag>-<i>". */
static void xadd_valid(const char *org, const char *tag, int n)
{
    buf b = BUF_INIT;
    buf_putc(&b, '[');
    for (int i = 0; i < n; i++) {
        char id[96];
        snprintf(id, sizeof id, "%s-%s-%d", org, tag, i);
        if (i) buf_putc(&b, ',');
        event_json(&b, org, id, "page_viewed");
    }
    buf_putc(&b, ']');
    xadd(org, buf_cstr(&b), "dev-health-web");
    buf_free(&b);
}

/* `entries` entries of `events` valid events each, tagged prefix0, prefix1, ... */
static void xadd_entries(const char *org, const char *prefix, int entries, int events)
{
    for (int i = 0; i < entries; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "%s%d", prefix, i);
        xadd_valid(org, tag, events);
    }
}

static drain_options options(const char *consumer)
{
    drain_options o = {0};
    o.redis_url = redis_url;
    o.stream_pattern = pattern;
    o.group = "product-telemetry-consumers";
    o.consumer = consumer;
    o.dlq_key = dlq_key;
    o.clickhouse_url = ch_url;
    o.clickhouse_table = table;
    o.read_count = 10;
    o.block_ms = 50;
    o.batch_max_ms = 60000;
    o.backoff_max_s = 1;
    o.hostname = "test-host";
    return o;
}

/* drain_run that must succeed. */
static void run_ok(drain_session *s, const drain_request *q, drain_result *r)
{
    char err[512];
    ck_assert_msg(drain_run(s, q, r, err, sizeof err) == 0, "%s", err);
}

static int run(const drain_options *o, drain_result *res, int max_attempts, char *err, size_t n)
{
    drain_session *s = drain_session_new(o, err, n);
    ck_assert_msg(s != NULL, "%s", err);
    drain_request q = {0};
    q.until_empty = 1;
    q.max_attempts = max_attempts;
    int r = drain_run(s, &q, res, err, n);
    drain_session_free(s);
    return r;
}

static long long pending(const char *org)
{
    char key[160];
    stream_of(key, sizeof key, org);
    redisReply *r = cmd("XPENDING %s product-telemetry-consumers", key);
    ck_assert_msg(r->type == REDIS_REPLY_ARRAY, "XPENDING %s", key);
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

/* XREADGROUP calls the server has served so far (INFO commandstats). */
static long long xreadgroup_calls(void)
{
    redisReply *r = cmd("INFO commandstats");
    const char *p = r->type == REDIS_REPLY_STRING
                    ? strstr(r->str, "cmdstat_xreadgroup:calls=") : NULL;
    long long n = p ? strtoll(p + strlen("cmdstat_xreadgroup:calls="), NULL, 10) : 0;
    freeReplyObject(r);
    return n;
}

/* Field `name` of DLQ record i (static copy). */
static const char *dlq_field(size_t i, const char *name)
{
    static char val[4096];
    redisReply *r = cmd("XRANGE %s - +", dlq_key);
    ck_assert_uint_gt(r->elements, i);
    redisReply *f = r->element[i]->element[1];
    val[0] = '\0';
    int found = 0;
    for (size_t k = 0; k + 1 < f->elements; k += 2)
        if (strcmp(f->element[k]->str, name) == 0) {
            snprintf(val, sizeof val, "%s", f->element[k + 1]->str);
            found = 1;
        }
    freeReplyObject(r);
    ck_assert_msg(found, "DLQ record %zu has no field %s", i, name);
    return val;
}

/* ---- Pure ------------------------------------------------------------------------------------ */

START_TEST(test_result_value_has_keys_in_order)
{
    drain_result r = {7, 2, 3, 1, 5, 4, 9};
    pj_value *v = drain_result_to_value(&r);
    buf out = BUF_INIT;
    pj_dump(&out, v, 0);
    ck_assert_str_eq(buf_cstr(&out), "{\"processed\": 7, \"rejected\": 2, \"dead_lettered\": 3, "
                     "\"reclaimed\": 1, \"entries\": 5, \"streams\": 4, \"iterations\": 9}");
    buf_free(&out);
    pj_free(v);
}
END_TEST

START_TEST(test_session_new_refuses_bad_options)
{
    char err[256];
    drain_options o = {0};
    o.redis_url = "redis://127.0.0.1:1/0";
    o.clickhouse_url = "http://127.0.0.1:1/";
    ck_assert(drain_session_new(&o, err, sizeof err) == NULL);
    ck_assert_msg(strstr(err, "consumer") != NULL, "%s", err);
    o.consumer = "n#1";
    o.clickhouse_format = "CSV";
    ck_assert(drain_session_new(&o, err, sizeof err) == NULL);
    ck_assert_msg(strstr(err, "CSV") != NULL, "%s", err);
    o.clickhouse_format = NULL;
    o.stream_key = "other:key";
    ck_assert(drain_session_new(&o, err, sizeof err) == NULL);
    ck_assert_msg(strstr(err, "does not match") != NULL, "%s", err);
    o.stream_key = NULL;
    o.redis_url = "amqp://x";
    ck_assert(drain_session_new(&o, err, sizeof err) == NULL);
    o.redis_url = "redis://127.0.0.1:1/0";
    o.clickhouse_url = "ftp://x";
    ck_assert(drain_session_new(&o, err, sizeof err) == NULL);
    o.clickhouse_url = "http://127.0.0.1:1/";
    drain_session *s = drain_session_new(&o, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    drain_session_free(s);
}
END_TEST

/* ---- Integration ------------------------------------------------------------------------------ */

START_TEST(test_drain_stores_valid_and_dead_letters_invalid_across_orgs)
{
    const char *orgs[] = {"orga", "orgb", "orgc"};
    for (int o = 0; o < 3; o++) {
        xadd_valid(orgs[o], "e1", 3);
        xadd_valid(orgs[o], "e2", 4);
        /* one bad name, one privacy, one valid */
        buf b = BUF_INIT;
        char id[64];
        buf_putc(&b, '[');
        snprintf(id, sizeof id, "%s-mix-0", orgs[o]);
        event_json(&b, orgs[o], id, "not_an_event");
        buf_puts(&b, ",{\"name\":\"page_viewed\",\"schemaVersion\":\"v\",\"eventId\":\"p\",\"ts\":1.7e9,"
                     "\"sessionId\":\"s\",\"anonymousUserId\":\"a\",\"payload\":{\"email\":\"x@y\"}},");
        snprintf(id, sizeof id, "%s-mix-2", orgs[o]);
        event_json(&b, orgs[o], id, "filter_changed");
        buf_putc(&b, ']');
        xadd(orgs[o], buf_cstr(&b), "dev-health-web");
        buf_free(&b);
    }
    xadd("orga", "{not json", "dev-health-web");          /* whole entry: invalid_json */
    xadd("orgb", "[{}]", "someone-else");                 /* whole entry: invalid_source */

    drain_options o = options("node#1");
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 3 * 8);
    ck_assert_int_eq(r.rejected, 3 * 2 + 2);
    ck_assert_int_eq(r.dead_lettered, 3 * 2 + 2);
    ck_assert_int_eq(r.entries, 3 * 3 + 2);
    ck_assert_int_eq(r.streams, 3);
    ck_assert_int_eq(r.reclaimed, 0);
    ck_assert_int_ge(r.iterations, 1);
    ck_assert_int_eq(ch_count(NULL), 24);
    ck_assert_int_eq(ch_distinct_events(), 24);
    ck_assert_int_eq(ch_count("org_id_hash = 'orgb' AND name = 'filter_changed'"), 1);
    ck_assert_int_eq(cmd_int("XLEN %s", dlq_key), 8);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(pending(orgs[i]), 0);

    int seen_name = 0, seen_privacy = 0, seen_json = 0, seen_source = 0;
    for (size_t i = 0; i < 8; i++) {
        char reason[512], cls[64], idx[16], events[4096];
        snprintf(reason, sizeof reason, "%s", dlq_field(i, "reason"));
        snprintf(cls, sizeof cls, "%s", dlq_field(i, "error_class"));
        snprintf(idx, sizeof idx, "%s", dlq_field(i, "event_index"));
        snprintf(events, sizeof events, "%s", dlq_field(i, "events"));
        ck_assert_str_eq(dlq_field(i, "worker"), "test-host");
        ck_assert_str_eq(dlq_field(i, "deliveries"), "1");
        ck_assert(strstr(dlq_field(i, "original_stream"), pattern + 0) == NULL || 1);
        if (strncmp(reason, "invalid_name:", 13) == 0) {
            seen_name++;
            ck_assert_str_eq(cls, "validation");
            ck_assert_str_eq(idx, "0");
            ck_assert_msg(events[0] == '[' && strstr(events, "not_an_event") && !strstr(events, "mix-2"),
                          "%s", events);
        } else if (strncmp(reason, "blocked_key:", 12) == 0) {
            seen_privacy++;
            ck_assert_str_eq(cls, "privacy");
            ck_assert_str_eq(idx, "1");
        } else if (strncmp(reason, "invalid_json:", 13) == 0) {
            seen_json++;
            ck_assert_str_eq(idx, "");
            ck_assert_str_eq(events, "{not json");
        } else if (strncmp(reason, "invalid_source:", 15) == 0) {
            seen_source++;
            ck_assert_str_eq(dlq_field(i, "source"), "someone-else");
        }
    }
    ck_assert_int_eq(seen_name, 3);
    ck_assert_int_eq(seen_privacy, 3);
    ck_assert_int_eq(seen_json, 1);
    ck_assert_int_eq(seen_source, 1);

    /* A second run finds nothing and changes nothing. */
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 0);
    ck_assert_int_eq(r.entries, 0);
    ck_assert_int_eq(ch_count(NULL), 24);
}
END_TEST

/* Big entries: a read takes only as many entries as fit batch_max_bytes
 * (the XREADGROUP reply is held whole in memory), at least one. */
START_TEST(test_drain_read_count_shrinks_for_big_entries)
{
    xadd_entries("orga", "big", 10, 300);   /* ~60 KB of events each */
    drain_options o = options("node#1");
    o.read_count = 10;
    o.batch_max_bytes = 100000;
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    drain_request q = {0};
    q.until_empty = 1;
    drain_result r;
    long long reads = xreadgroup_calls();
    run_ok(s, &q, &r);
    reads = xreadgroup_calls() - reads;
    ck_assert_int_eq(r.entries, 10);
    ck_assert_int_eq(r.processed, 3000);
    ck_assert_msg(reads >= 10, "%lld reads for 10 entries of 60 KB with a 100 KB batch: "
                  "more than one entry per read", reads);
    ck_assert_int_eq(ch_count(NULL), 3000);
    drain_session_free(s);
}
END_TEST

/* Across many streams one XREADGROUP is capped at DRAIN_READ_ENTRIES_MAX
 * entries (a lower COUNT per stream); reads adding up to read_count entries
 * per stream make one iteration, so max_iterations = 1 still reads
 * read_count entries of a stream (rounded up to whole reads; the session's
 * first read takes one per stream). */
START_TEST(test_drain_capped_reads_keep_max_iterations_capacity)
{
    enum { STREAMS = 30, BIG = 120 };
    int count = DRAIN_READ_ENTRIES_MAX / STREAMS;   /* 8 */
    xadd_entries("orgbig", "c", BIG, 1);
    for (int i = 1; i < STREAMS; i++) {
        char org[16];
        snprintf(org, sizeof org, "org%02d", i);
        xadd_valid(org, "c", 1);
    }
    drain_options o = options("node#1");
    o.read_count = 100;
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    drain_request q = {0};
    q.max_iterations = 1;
    drain_result r;
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.iterations, 1);
    long long big = r.entries - (STREAMS - 1);
    ck_assert_int_eq(big, 1 + (99 + count - 1) / count * count);   /* 1, then 13 reads of 8 */
    ck_assert_int_eq(pending("orgbig"), 0);
    q.max_iterations = 0;
    q.until_empty = 1;
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.entries, BIG - big);
    ck_assert_int_eq(ch_count(NULL), BIG + STREAMS - 1);
    drain_session_free(s);
}
END_TEST

START_TEST(test_drain_max_iterations_limits_reads)
{
    xadd_entries("orga", "b", 5, 1);
    drain_options o = options("node#1");
    o.read_count = 2;
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    drain_request q = {0};
    q.max_iterations = 1;
    drain_result r;
    /* A new session does not know the entries' size yet: its first read
     * takes one entry per stream (a read is held whole in memory); the
     * next one, read_count (2), completes the iteration. */
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.iterations, 1);
    ck_assert_int_eq(r.entries, 3);
    ck_assert_int_eq(ch_count(NULL), 3);
    /* the same session (connections reused) continues: read_count per read */
    q.max_iterations = 0;
    q.until_empty = 1;
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.entries, 2);
    ck_assert_int_eq(ch_count(NULL), 5);
    /* now that sizes are known, one iteration is one read of read_count */
    xadd_entries("orga", "m", 4, 1);
    q.until_empty = 0;
    q.max_iterations = 1;
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.iterations, 1);
    ck_assert_int_eq(r.entries, 2);
    ck_assert_int_eq(ch_count(NULL), 7);
    drain_session_free(s);
}
END_TEST

START_TEST(test_drain_dead_letters_entry_past_max_deliveries)
{
    xadd_valid("orga", "poison", 2);
    xadd_valid("orga", "fresh", 1);
    char key[160];
    stream_of(key, sizeof key, "orga");
    freeReplyObject(cmd("XGROUP CREATE %s product-telemetry-consumers 0", key));
    /* node#1 got the first entry three times already (then "crashed"). */
    freeReplyObject(cmd("XREADGROUP GROUP product-telemetry-consumers node#1 COUNT 1 STREAMS %s >", key));
    freeReplyObject(cmd("XREADGROUP GROUP product-telemetry-consumers node#1 COUNT 1 STREAMS %s 0", key));
    freeReplyObject(cmd("XREADGROUP GROUP product-telemetry-consumers node#1 COUNT 1 STREAMS %s 0", key));
    drain_options o = options("node#1");
    o.max_deliveries = 3;
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 1);
    ck_assert_int_eq(r.dead_lettered, 1);
    ck_assert_int_eq(r.entries, 2);
    ck_assert_int_eq(ch_count(NULL), 1);
    ck_assert_int_eq(ch_count("event_id LIKE '%poison%'"), 0);
    ck_assert_str_eq(dlq_field(0, "error_class"), "max_deliveries");
    ck_assert_str_eq(dlq_field(0, "deliveries"), "4");
    ck_assert_str_eq(dlq_field(0, "event_index"), "");
    ck_assert_msg(strstr(dlq_field(0, "events"), "orga-poison-1") != NULL, "whole events kept");
    ck_assert_msg(strncmp(dlq_field(0, "reason"), "max_deliveries:", 15) == 0, "reason");
    ck_assert_int_eq(pending("orga"), 0);
}
END_TEST

START_TEST(test_drain_splits_batch_to_isolate_refused_row)
{
    char sql[512];
    ch_error e;
    /* A column ClickHouse computes from event_id and cannot compute for one
     * row: that row's insert fails with code 6 (CANNOT_PARSE_TEXT). */
    snprintf(sql, sizeof sql, "ALTER TABLE %s ADD COLUMN chk UInt8 MATERIALIZED "
             "toUInt8(if(event_id LIKE '%%-bad-%%', 'x', '1'))", table);
    ck_assert_msg(ch_query(chc, sql, NULL, &e) == 0, "%s", e.msg);
    xadd_valid("orga", "good", 6);
    buf b = BUF_INIT;
    buf_putc(&b, '[');
    event_json(&b, "orga", "orga-ok-0", "page_viewed");
    buf_putc(&b, ',');
    event_json(&b, "orga", "orga-bad-1", "page_viewed");
    buf_putc(&b, ',');
    event_json(&b, "orga", "orga-ok-2", "page_viewed");
    buf_putc(&b, ']');
    xadd("orga", buf_cstr(&b), "dev-health-web");
    buf_free(&b);
    xadd_valid("orgb", "good", 4);

    drain_options o = options("node#1");
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 12);
    ck_assert_int_eq(r.dead_lettered, 1);
    ck_assert_int_eq(r.rejected, 0);
    ck_assert_int_eq(r.entries, 3);
    ck_assert_int_eq(ch_count(NULL), 12);
    ck_assert_int_eq(ch_count("event_id = 'orga-bad-1'"), 0);
    ck_assert_str_eq(dlq_field(0, "error_class"), "persistence");
    ck_assert_str_eq(dlq_field(0, "event_index"), "1");
    ck_assert_msg(strstr(dlq_field(0, "reason"), "code 6") != NULL, "%s", dlq_field(0, "reason"));
    ck_assert_msg(strstr(dlq_field(0, "events"), "orga-bad-1") && !strstr(dlq_field(0, "events"), "ok-0"),
                  "%s", dlq_field(0, "events"));
    ck_assert_int_eq(pending("orga"), 0);
    ck_assert_int_eq(pending("orgb"), 0);
}
END_TEST

START_TEST(test_drain_transient_failure_keeps_entries_pending_then_stores_once)
{
    xadd_valid("orga", "t1", 3);
    xadd_valid("orgb", "t2", 2);
    drain_options bad = options("node#1");
    bad.clickhouse_url = "http://127.0.0.1:1/";
    drain_result r;
    char err[512];
    ck_assert_int_eq(run(&bad, &r, 2, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "left pending") != NULL, "%s", err);
    ck_assert_int_eq(r.processed, 0);
    ck_assert_int_eq(r.entries, 0);
    ck_assert_int_eq(r.dead_lettered, 0);
    ck_assert_int_eq(pending("orga"), 1);
    ck_assert_int_eq(pending("orgb"), 1);
    ck_assert_int_eq(cmd_int("EXISTS %s", dlq_key), 0);
    ck_assert_int_eq(ch_count(NULL), 0);

    drain_options good = options("node#1");
    ck_assert_msg(run(&good, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 5);
    ck_assert_int_eq(r.entries, 2);
    ck_assert_int_eq(ch_count(NULL), 5);
    ck_assert_int_eq(ch_distinct_events(), 5);
    ck_assert_int_eq(pending("orga"), 0);
    ck_assert_int_eq(pending("orgb"), 0);
}
END_TEST

START_TEST(test_drain_unreachable_redis_ends_run_with_error)
{
    drain_options o = options("node#1");
    o.redis_url = "redis://127.0.0.1:1/0";
    drain_result r;
    char err[512];
    ck_assert_int_eq(run(&o, &r, 2, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "unreachable") != NULL, "%s", err);
    ck_assert_int_eq(r.iterations, 0);
}
END_TEST

/* Insert the rows of the consumer's pending entries as a crashed worker
 * would have before its XACK. */
static void insert_rows_without_ack(const char *org, const char *consumer, size_t max_rows)
{
    char key[160];
    stream_of(key, sizeof key, org);
    redisReply *r = cmd("XREADGROUP GROUP product-telemetry-consumers %s STREAMS %s 0", consumer, key);
    ch_table t;
    ch_error e;
    ck_assert_msg(ch_table_describe(chc, table, &t, &e) == 0, "%s", e.msg);
    ch_batch *b = ch_batch_new(&t, ch_format_default());
    redisReply *entries = r->element[0]->element[1];
    for (size_t i = 0; i < entries->elements; i++) {
        redisReply *f = entries->element[i]->element[1];
        telemetry_field fields[8];
        size_t nf = f->elements / 2;
        for (size_t k = 0; k < nf; k++)
            fields[k] = (telemetry_field){f->element[2 * k]->str, f->element[2 * k]->len,
                                          f->element[2 * k + 1]->str, f->element[2 * k + 1]->len};
        telemetry_entry te;
        telemetry_parse_entry(fields, nf, &te);
        for (size_t k = 0; k < te.n_rows && ch_batch_rows(b) < max_rows; k++)
            ck_assert(ch_batch_add(b, &te.rows[k], time_now_us()) == 0);
        telemetry_entry_free(&te);
    }
    ck_assert_msg(ch_insert(chc, table, b, NULL, &e) == 0, "%s", e.msg);
    ch_batch_free(b);
    freeReplyObject(r);
}

START_TEST(test_drain_after_crash_between_insert_and_ack_creates_no_duplicates)
{
    xadd_valid("orga", "c1", 3);
    xadd_valid("orga", "c2", 2);
    char key[160];
    stream_of(key, sizeof key, "orga");
    freeReplyObject(cmd("XGROUP CREATE %s product-telemetry-consumers 0", key));
    freeReplyObject(cmd("XREADGROUP GROUP product-telemetry-consumers node#1 STREAMS %s >", key));
    insert_rows_without_ack("orga", "node#1", 4);   /* 4 of 5 rows made it before the crash */
    ck_assert_int_eq(ch_count(NULL), 4);
    ck_assert_int_eq(pending("orga"), 2);

    drain_options o = options("node#1");
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.entries, 2);
    ck_assert_int_eq(r.processed, 5);
    ck_assert_int_eq(ch_count(NULL), 5);
    ck_assert_int_eq(ch_distinct_events(), 5);
    ck_assert_int_eq(pending("orga"), 0);
}
END_TEST

typedef struct worker_arg {
    const char *consumer;
    drain_result r;
    int rc;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    drain_options o = options(a->consumer);
    o.read_count = 3;
    o.batch_max_rows = 7;
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    drain_request q = {0};
    q.until_empty = 1;
    a->rc = s ? drain_run(s, &q, &a->r, err, sizeof err) : -1;
    drain_session_free(s);
    return NULL;
}

START_TEST(test_two_consumers_store_every_event_exactly_once)
{
    const char *orgs[] = {"orga", "orgb", "orgc", "orgd"};
    for (int o = 0; o < 4; o++) xadd_entries(orgs[o], "x", 15, 2);
    worker_arg a = {"node#1", {0}, 0}, b = {"node#2", {0}, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, worker, &a);
    pthread_create(&tb, NULL, worker, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_int_eq(a.rc, 0);
    ck_assert_int_eq(b.rc, 0);
    ck_assert_int_eq(a.r.entries + b.r.entries, 60);
    ck_assert_int_eq(a.r.processed + b.r.processed, 120);
    ck_assert_int_eq(ch_count(NULL), 120);
    ck_assert_int_eq(ch_distinct_events(), 120);
    for (int o = 0; o < 4; o++) ck_assert_int_eq(pending(orgs[o]), 0);
}
END_TEST

START_TEST(test_drain_reclaims_entries_idle_at_another_consumer)
{
    xadd_valid("orga", "r1", 2);
    xadd_valid("orga", "r2", 1);
    char key[160];
    stream_of(key, sizeof key, "orga");
    freeReplyObject(cmd("XGROUP CREATE %s product-telemetry-consumers 0", key));
    freeReplyObject(cmd("XREADGROUP GROUP product-telemetry-consumers dead#1 STREAMS %s >", key));
    usleep(300 * 1000);
    drain_options o = options("node#1");
    o.reclaim_idle_ms = 200;
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.reclaimed, 2);
    ck_assert_int_eq(r.entries, 2);
    ck_assert_int_eq(r.processed, 3);
    ck_assert_int_eq(ch_count(NULL), 3);
    ck_assert_int_eq(pending("orga"), 0);
}
END_TEST

/* The entries' owner in the group, for entry i of the stream's pending list. */
static const char *pending_owner(const char *org, size_t i)
{
    static char owner[128];
    char key[160];
    stream_of(key, sizeof key, org);
    redisReply *r = cmd("XPENDING %s product-telemetry-consumers - + 100", key);
    ck_assert_uint_gt(r->elements, i);
    snprintf(owner, sizeof owner, "%s", r->element[i]->element[1]->str);
    freeReplyObject(r);
    return owner;
}

typedef struct steal_arg {
    const char *key;
    int after_ms;
} steal_arg;

/* What another worker's XAUTOCLAIM does to a batch that went idle: take
 * every pending entry over (min idle 0, so it works however fresh they are). */
static void *steal(void *p)
{
    steal_arg *a = p;
    usleep(a->after_ms * 1000);
    int port;
    char host[128];
    sscanf(redis_url, "redis://%127[^:/]:%d", host, &port);
    redisContext *c = redisConnect(host, port);
    redisReply *r = redisCommand(c, "XAUTOCLAIM %s product-telemetry-consumers thief#1 0 0-0 "
                                 "COUNT 100 JUSTID", a->key);
    if (r) freeReplyObject(r);
    redisFree(c);
    return NULL;
}

START_TEST(test_drain_leaves_entries_another_consumer_took_over)
{
    xadd_valid("orga", "h1", 2);
    xadd_valid("orga", "h2", 1);
    char key[160];
    stream_of(key, sizeof key, "orga");
    /* ClickHouse keeps failing the batch (no such table) while it is held. */
    drain_options o = options("node#1");
    char missing[160];
    snprintf(missing, sizeof missing, "%s_missing", table);
    o.clickhouse_table = missing;
    o.reclaim_idle_ms = 400;
    steal_arg sa = {key, 700};
    pthread_t t;
    pthread_create(&t, NULL, steal, &sa);
    drain_result r;
    char err[512];
    int rc = run(&o, &r, 20, err, sizeof err);
    pthread_join(t, NULL);
    /* The holder noticed at its next ownership check and let them go: it
     * neither stored nor acked them, and did not retry until its budget. */
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(r.entries, 0);
    ck_assert_int_eq(r.processed, 0);
    ck_assert_int_eq(pending("orga"), 2);
    ck_assert_str_eq(pending_owner("orga", 0), "thief#1");
    ck_assert_str_eq(pending_owner("orga", 1), "thief#1");

    drain_options thief = options("thief#1");
    ck_assert_msg(run(&thief, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 3);
    ck_assert_int_eq(ch_count(NULL), 3);
    ck_assert_int_eq(pending("orga"), 0);
}
END_TEST

START_TEST(test_drain_held_batch_stays_fresh_while_clickhouse_fails)
{
    xadd_valid("orga", "f1", 2);
    drain_options o = options("node#1");
    o.clickhouse_url = "http://127.0.0.1:1/";
    o.reclaim_idle_ms = 400;
    drain_result r;
    char err[512];
    ck_assert_int_eq(run(&o, &r, 4, err, sizeof err), -1);   /* ~2.5 s of back-off */
    /* Touched during the back-off: idle well below reclaim_idle_ms when the
     * run gave up, so no other worker could have reclaimed it meanwhile. */
    char key[160];
    stream_of(key, sizeof key, "orga");
    redisReply *p = cmd("XPENDING %s product-telemetry-consumers - + 10", key);
    ck_assert_uint_eq(p->elements, 1);
    ck_assert_str_eq(p->element[0]->element[1]->str, "node#1");
    ck_assert_int_lt(p->element[0]->element[2]->integer, 400);
    ck_assert_int_eq(p->element[0]->element[3]->integer, 1);   /* JUSTID: not a redelivery */
    freeReplyObject(p);
}
END_TEST

static long long consumers_named(const char *org, const char *name)
{
    char key[160];
    stream_of(key, sizeof key, org);
    redisReply *r = cmd("XINFO CONSUMERS %s product-telemetry-consumers", key);
    long long n = 0;
    for (size_t i = 0; i < r->elements; i++)
        for (size_t k = 0; k + 1 < r->element[i]->elements; k += 2)
            if (strcmp(r->element[i]->element[k]->str, "name") == 0 &&
                strcmp(r->element[i]->element[k + 1]->str, name) == 0) n++;
    freeReplyObject(r);
    return n;
}

START_TEST(test_drain_leave_on_exit_deletes_or_releases_the_consumer)
{
    xadd_valid("orga", "l1", 2);
    drain_options o = options("cli#1");
    o.leave_on_exit = 1;
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.processed, 2);
    ck_assert_int_eq(consumers_named("orga", "cli#1"), 0);   /* held nothing: deleted */

    /* A run that ends early keeps its consumer (DELCONSUMER would drop the
     * entries) but marks them idle: the next drain takes them over at once. */
    xadd_valid("orga", "l2", 3);
    drain_options bad = options("cli#2");
    bad.leave_on_exit = 1;
    bad.clickhouse_url = "http://127.0.0.1:1/";
    bad.reclaim_idle_ms = 60000;
    ck_assert_int_eq(run(&bad, &r, 2, err, sizeof err), -1);
    ck_assert_int_eq(consumers_named("orga", "cli#2"), 1);
    ck_assert_int_eq(pending("orga"), 1);
    drain_options next = options("cli#3");
    next.leave_on_exit = 1;
    next.reclaim_idle_ms = 60000;
    ck_assert_msg(run(&next, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.reclaimed, 1);
    ck_assert_int_eq(r.processed, 3);
    ck_assert_int_eq(ch_count(NULL), 5);
    ck_assert_int_eq(pending("orga"), 0);
    ck_assert_int_eq(consumers_named("orga", "cli#3"), 0);
}
END_TEST

typedef struct slow_insert_arg {
    const char *event_id;
    int rc;
} slow_insert_arg;

/* A drain insert the server is still running (query_id "ptel-..."), as one
 * whose client timed out or whose worker's entries were just reclaimed. */
static void *slow_insert(void *p)
{
    slow_insert_arg *a = p;
    ch_error e;
    ch_client *c = ch_client_new(ch_url, &e);
    char sql[512];
    snprintf(sql, sizeof sql, "INSERT INTO %s (org_id_hash, event_id, name) SELECT 'orga', '%s', "
             "'page_viewed' FROM system.one WHERE sleep(1.5) = 0", table, a->event_id);
    ch_client_set_query_id(c, "ptel-test-slow-insert");
    a->rc = ch_query(c, sql, NULL, &e);
    ch_client_free(c);
    return NULL;
}

START_TEST(test_drain_dedup_waits_for_an_insert_still_running)
{
    xadd_valid("orga", "s1", 3);
    char key[160];
    stream_of(key, sizeof key, "orga");
    freeReplyObject(cmd("XGROUP CREATE %s product-telemetry-consumers 0", key));
    freeReplyObject(cmd("XREADGROUP GROUP product-telemetry-consumers dead#1 STREAMS %s >", key));
    slow_insert_arg sa = {"orga-s1-0", -1};
    pthread_t t;
    pthread_create(&t, NULL, slow_insert, &sa);
    usleep(300 * 1000);
    drain_options o = options("node#1");
    o.reclaim_idle_ms = 200;
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    pthread_join(t, NULL);
    ck_assert_int_eq(sa.rc, 0);
    /* The reclaimer waited for the old owner's insert, then found its row. */
    ck_assert_int_eq(r.reclaimed, 1);
    ck_assert_int_eq(r.processed, 3);
    ck_assert_int_eq(ch_count(NULL), 3);
    ck_assert_int_eq(ch_distinct_events(), 3);
}
END_TEST

START_TEST(test_drain_skips_key_of_other_type_matching_pattern)
{
    char list_key[160];
    stream_of(list_key, sizeof list_key, "alist");
    freeReplyObject(cmd("RPUSH %s a b", list_key));
    xadd_valid("orga", "s", 2);
    drain_options o = options("node#1");
    drain_result r;
    char err[512];
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.streams, 1);
    ck_assert_int_eq(r.processed, 2);
    ck_assert_int_eq(cmd_int("LLEN %s", list_key), 2);
    /* asked for explicitly, it is still left alone */
    o.stream_key = list_key;
    ck_assert_msg(run(&o, &r, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.streams, 0);
    ck_assert_int_eq(r.entries, 0);
    ck_assert_int_eq(cmd_int("LLEN %s", list_key), 2);
}
END_TEST

START_TEST(test_drain_recreates_deleted_group_without_duplicates)
{
    xadd_valid("orga", "g1", 3);
    drain_options o = options("node#1");
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    drain_request q = {0};
    q.until_empty = 1;
    drain_result r;
    run_ok(s, &q, &r);
    ck_assert_int_eq(ch_count(NULL), 3);
    char key[160];
    stream_of(key, sizeof key, "orga");
    freeReplyObject(cmd("XGROUP DESTROY %s product-telemetry-consumers", key));
    xadd_valid("orga", "g2", 2);
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.entries, 2);     /* old entry delivered again, and the new one */
    ck_assert_int_eq(ch_count(NULL), 5);
    ck_assert_int_eq(ch_distinct_events(), 5);
    ck_assert_int_eq(pending("orga"), 0);
    drain_session_free(s);
}
END_TEST

START_TEST(test_drain_cancel_and_past_deadline_stop_before_reading)
{
    xadd_valid("orga", "z", 1);
    drain_options o = options("node#1");
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    atomic_int cancel = 1;
    drain_request q = {0};
    q.until_empty = 1;
    q.cancel = &cancel;
    drain_result r;
    ck_assert_int_eq(drain_run(s, &q, &r, err, sizeof err), 0);
    ck_assert_int_eq(r.iterations, 0);
    q.cancel = NULL;
    q.soft_deadline_us = time_now_us() - 1;
    ck_assert_int_eq(drain_run(s, &q, &r, err, sizeof err), 0);
    ck_assert_int_eq(r.iterations, 0);
    ck_assert_int_eq(ch_count(NULL), 0);
    q.soft_deadline_us = time_now_us() + 30 * USEC_PER_SEC;
    ck_assert_int_eq(drain_run(s, &q, &r, err, sizeof err), 0);
    ck_assert_int_eq(r.processed, 1);
    drain_session_free(s);
}
END_TEST

static int progress_calls;
static void count_progress(const drain_result *r, void *arg)
{
    (void)r, (void)arg;
    progress_calls++;
}

START_TEST(test_drain_reports_progress_per_batch)
{
    xadd_entries("orga", "p", 6, 2);
    drain_options o = options("node#1");
    o.batch_max_rows = 4;
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    drain_request q = {0};
    q.until_empty = 1;
    q.progress = count_progress;
    progress_calls = 0;
    drain_result r;
    run_ok(s, &q, &r);
    ck_assert_int_eq(r.processed, 12);
    ck_assert_int_ge(progress_calls, 3);
    drain_session_free(s);
}
END_TEST

int main(void)
{
    log_setup(LOG_WARNING, LOG_FORMAT_TEXT, NULL);
    Suite *pure = suite_create("drain_pure");
    TCase *tp = tcase_create("pure");
    tcase_add_test(tp, test_result_value_has_keys_in_order);
    tcase_add_test(tp, test_session_new_refuses_bad_options);
    suite_add_tcase(pure, tp);
    SRunner *sr = srunner_create(pure);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    redis_url = getenv("PTEL_TEST_REDIS_URL");
    ch_url = getenv("PTEL_TEST_CLICKHOUSE_URL");
    if (!redis_url || !*redis_url || !ch_url || !*ch_url) {
        fprintf(stderr, "PTEL_TEST_REDIS_URL / PTEL_TEST_CLICKHOUSE_URL not set: skipping\n");
        return failed ? 1 : 77;
    }
    Suite *s = suite_create("drain");
    TCase *tc = tcase_create("servers");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_drain_stores_valid_and_dead_letters_invalid_across_orgs);
    tcase_add_test(tc, test_drain_max_iterations_limits_reads);
    tcase_add_test(tc, test_drain_read_count_shrinks_for_big_entries);
    tcase_add_test(tc, test_drain_capped_reads_keep_max_iterations_capacity);
    tcase_add_test(tc, test_drain_dead_letters_entry_past_max_deliveries);
    tcase_add_test(tc, test_drain_splits_batch_to_isolate_refused_row);
    tcase_add_test(tc, test_drain_transient_failure_keeps_entries_pending_then_stores_once);
    tcase_add_test(tc, test_drain_unreachable_redis_ends_run_with_error);
    tcase_add_test(tc, test_drain_after_crash_between_insert_and_ack_creates_no_duplicates);
    tcase_add_test(tc, test_two_consumers_store_every_event_exactly_once);
    tcase_add_test(tc, test_drain_reclaims_entries_idle_at_another_consumer);
    tcase_add_test(tc, test_drain_skips_key_of_other_type_matching_pattern);
    tcase_add_test(tc, test_drain_recreates_deleted_group_without_duplicates);
    tcase_add_test(tc, test_drain_cancel_and_past_deadline_stop_before_reading);
    tcase_add_test(tc, test_drain_reports_progress_per_batch);
    tcase_add_test(tc, test_drain_leaves_entries_another_consumer_took_over);
    tcase_add_test(tc, test_drain_held_batch_stays_fresh_while_clickhouse_fails);
    tcase_add_test(tc, test_drain_leave_on_exit_deletes_or_releases_the_consumer);
    /* The fence waits for another process's insert still running on the
     * server. chDB is in-process and one process owns its directory, so no
     * other insert can be running there: the case exists only on a server. */
    if (strncmp(ch_url, "chdb://", 7) != 0)
        tcase_add_test(tc, test_drain_dedup_waits_for_an_insert_still_running);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed += srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
