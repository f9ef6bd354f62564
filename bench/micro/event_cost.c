/* bench/micro/event_cost.c: CPU cost per telemetry event of the worker's
 * in-process stages, without Redis or ClickHouse.
 *
 * Generates N upstream-shaped stream entries in memory (the shape of
 * bench/gen_events.py: 5..50 camelCase events per entry, json.dumps default
 * separators, the dashboard's payload keys, ~1% invalid events) and measures
 * these stages, each over the same entries:
 *   parse   pj_parse + pj_free of the `events` field (the general API)
 *   doc     pj_doc_parse + pj_doc_free (the arena parse the drain uses)
 *   entry   telemetry_parse_entry + telemetry_entry_free (parse, validate, map)
 *   encode  entry + ch_batch_add (RowBinary, the legacy DateTime table) of
 *           every row, the batch reset every ~10k rows as the drain does
 * and prints CPU ns/event (thread CPU time, best of R rounds: on a shared
 * machine wall time mostly measures the neighbours) and, where the kernel
 * allows perf_event_open, instructions/event. For repeatable instruction counts use
 * callgrind; bench/micro/run.sh does both:
 *   bench/micro/run.sh [entries]
 * Each stage is one noinline function (stage_parse, stage_doc, stage_entry,
 * stage_encode), so `valgrind --tool=callgrind --toggle-collect=stage_parse
 * ./event_cost --only parse --rounds 1` counts that stage alone.
 *
 * Build by hand (from the repository root):
 *   cc -O2 -DNDEBUG -D_GNU_SOURCE -I. -o /tmp/event_cost bench/micro/event_cost.c \
 *      common/pyjson.c common/buf.c common/mem.c common/log.c common/timeutil.c \
 *      tasks/telemetry.c clickhouse/encode.c clickhouse/event_row.c \
 *      clickhouse/schema.c clickhouse/client.c clickhouse/chdb.c -lcurl -lz -lm -ldl -lpthread
 */
#include <errno.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clickhouse/clickhouse.h"
#include "common/buf.h"
#include "common/pyjson.h"
#include "tasks/telemetry.h"

/* ---- Deterministic generator (xorshift64*, not Python's Mersenne Twister:
 * the bytes differ from gen_events.py, the shape does not) ---- */

static uint64_t rng_state = 42;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static unsigned rnd_below(unsigned n) { return (unsigned)(rnd() % n); }
static double rnd_unit(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static const char *const NAMES[] = {
    "page_viewed", "feature_viewed", "filter_changed", "chart_interacted",
    "navigation_interacted", "guide_opened", "session_started", "session_ended",
    "client_error"};
static const char *const ROUTES[] = {
    "/metrics", "/dora", "/work-items", "/settings/teams", "/", "/guides/{slug}",
    "/teams/{teamId}/metrics", "/admin/telemetry"};
#define PICK(a) (a[rnd_below(sizeof(a) / sizeof(a[0]))])

#define N_ORGS 20
static char orgs[N_ORGS][65];

static void hex_id(char *out, int digits)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < digits; i++) out[i] = hx[rnd() >> 60];
    out[digits] = '\0';
}

/* The payloads of gen_events.py, key order as the dashboard writes them. */
static void put_payload(buf *b, const char *name)
{
    if (!strcmp(name, "page_viewed"))
        buf_printf(b, "{\"page\": \"%s\", \"referrerRoutePattern\": \"%s\"}", PICK(ROUTES), PICK(ROUTES));
    else if (!strcmp(name, "feature_viewed")) {
        static const char *const f[] = {"dora", "cycle_time", "wip"};
        buf_printf(b, "{\"feature\": \"%s\", \"surface\": \"card\"}", PICK(f));
    } else if (!strcmp(name, "filter_changed")) {
        static const char *const k[] = {"date", "team", "repo"};
        buf_printf(b, "{\"view\": \"metrics\", \"filterKey\": \"%s\", \"valueCount\": %u, "
                   "\"isCustomDateRange\": %s}", PICK(k), rnd_below(10),
                   rnd_unit() < 0.2 ? "true" : "false");
    } else if (!strcmp(name, "chart_interacted")) {
        static const char *const a[] = {"hover", "zoom", "click"};
        buf_printf(b, "{\"chart\": \"throughput\", \"action\": \"%s\", \"surface\": \"panel\"}", PICK(a));
    } else if (!strcmp(name, "navigation_interacted"))
        buf_printf(b, "{\"item\": \"%s\", \"group\": \"sidebar\"}", PICK(ROUTES));
    else if (!strcmp(name, "guide_opened"))
        buf_puts(b, "{\"guide\": \"getting-started\", \"scope\": \"org\"}");
    else if (!strcmp(name, "session_started"))
        buf_printf(b, "{\"entryRoutePattern\": \"%s\"}", PICK(ROUTES));
    else if (!strcmp(name, "session_ended"))
        buf_printf(b, "{\"durationMs\": %u, \"pagesViewed\": %u, \"interactions\": %u, \"digest\": %s}",
                   1000 + rnd_below(3599001), 1 + rnd_below(40), rnd_below(201),
                   rnd_unit() < 0.5 ? "true" : "false");
    else
        buf_printf(b, "{\"boundary\": \"page\", \"errorClass\": \"TypeError\", \"routePattern\": \"%s\"}",
                   PICK(ROUTES));
}

static void put_event(buf *b, const char *org, long long ts_ms, double invalid)
{
    int bad = rnd_unit() < invalid ? (int)rnd_below(5) : -1;
    const char *name = PICK(NAMES);
    char id[17], ses[17], ts[32];
    hex_id(id, 16);
    hex_id(ses, 16);
    time_t s = (time_t)(ts_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    buf_printf(b, "{\"name\": \"%s\", \"schemaVersion\": \"2026-05-telemetry-v1\"",
               bad == 0 ? "page_viewd" : name);
    if (bad != 3) buf_printf(b, ", \"eventId\": \"evt_%s\"", id);
    buf_printf(b, ", \"ts\": \"%s.%03lldZ\", \"sessionId\": \"ses_%s\", \"anonymousUserId\": \"anon_%04u\"",
               ts, ts_ms % 1000, ses, rnd_below(2000));
    if (bad == 4) buf_printf(b, ", \"orgIdHash\": \"%064d\"", 7);     /* org_mismatch */
    else if (rnd_unit() < 0.7) buf_printf(b, ", \"orgIdHash\": \"%s\"", org);
    if (rnd_unit() < 0.9) buf_printf(b, ", \"routePattern\": \"%s\"", PICK(ROUTES));
    else buf_puts(b, ", \"routePattern\": null");
    buf_puts(b, ", \"payload\": ");
    if (bad == 1 || bad == 2) {
        buf tmp = BUF_INIT;
        put_payload(&tmp, name);
        tmp.data[--tmp.len] = '\0';                      /* drop the '}' */
        buf_append(b, tmp.data, tmp.len);
        buf_puts(b, bad == 1 ? ", \"email\": \"someone@example.com\"}" : ", \"nested\": {\"a\": 1}}");
        buf_free(&tmp);
    } else {
        put_payload(b, name);
    }
    buf_putc(b, '}');
}

typedef struct entry {
    telemetry_field f[4];
    char ingestion_id[37];
    char *events;
    size_t n_events;
} entry;

static void gen_entry(entry *e, double invalid)
{
    const char *org = orgs[rnd_below(N_ORGS)];
    long long ts_ms = 1779667200000LL + (long long)rnd_below(3600 * 1000);
    size_t n = 5 + rnd_below(46);
    buf b = BUF_INIT;
    buf_putc(&b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i) buf_puts(&b, ", ");
        put_event(&b, org, ts_ms + (long long)i, invalid);
    }
    buf_putc(&b, ']');
    hex_id(e->ingestion_id, 36);
    e->n_events = n;
    e->events = buf_detach(&b);
    telemetry_field f[4] = {
        {"ingestion_id", 12, e->ingestion_id, 36},
        {"source", 6, "dev-health-web", 14},
        {"org_id_hash", 11, org, 64},
        {"events", 6, e->events, strlen(e->events)}};
    memcpy(e->f, f, sizeof f);
}

/* ---- Stages ---- */

static const char legacy_describe[] =
    "org_id_hash\tString\tDEFAULT\t\\'\\'\t\n"
    "event_id\tString\t\t\t\n"
    "name\tLowCardinality(String)\t\t\t\n"
    "schema_version\tString\t\t\t\n"
    "session_id\tString\t\t\t\n"
    "anonymous_user_id\tString\t\t\t\n"
    "route_pattern\tNullable(String)\t\t\t\n"
    "payload_json\tString\t\t\t\n"
    "occurred_at\tDateTime(\\'UTC\\')\t\t\t\n"
    "ingested_at\tDateTime(\\'UTC\\')\t\t\t\n"
    "source\tLowCardinality(String)\t\t\t\n";

#define BATCH_RESET_ROWS 10000
static volatile size_t sink;

__attribute__((noinline)) static void stage_parse(const entry *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        pj_error err;
        pj_value *v = pj_parse(es[i].events, es[i].f[3].value_len, &err);
        if (!v) { fprintf(stderr, "parse failed: %s\n", err.msg); exit(1); }
        sink += v->u.array.len;
        pj_free(v);
    }
}

__attribute__((noinline)) static void stage_doc(const entry *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        pj_error err;
        pj_doc *d = pj_doc_parse(es[i].events, es[i].f[3].value_len, &err);
        if (!d) { fprintf(stderr, "parse failed: %s\n", err.msg); exit(1); }
        sink += pj_doc_root(d)->u.array.len;
        pj_doc_free(d);
    }
}

__attribute__((noinline)) static void stage_entry(const entry *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        telemetry_entry t;
        telemetry_parse_entry(es[i].f, 4, &t);
        sink += t.n_rows;
        telemetry_entry_free(&t);
    }
}

__attribute__((noinline)) static void stage_encode(const entry *es, size_t n, ch_batch *b)
{
    for (size_t i = 0; i < n; i++) {
        telemetry_entry t;
        telemetry_parse_entry(es[i].f, 4, &t);
        for (size_t r = 0; r < t.n_rows; r++)
            if (ch_batch_add(b, &t.rows[r], 1779670000000000LL) != 0) {
                fprintf(stderr, "encode failed: %s\n", ch_batch_error(b));
                exit(1);
            }
        if (ch_batch_rows(b) >= BATCH_RESET_ROWS) ch_batch_reset(b);
        telemetry_entry_free(&t);
    }
}

/* ---- Measurement ---- */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int perf_fd = -1;

static void perf_open(void)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.type = PERF_TYPE_HARDWARE;
    a.size = sizeof a;
    a.config = PERF_COUNT_HW_INSTRUCTIONS;
    a.disabled = 1;
    a.exclude_kernel = 1;
    a.exclude_hv = 1;
    perf_fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

static long long perf_read(void)
{
    long long v = -1;
    if (perf_fd < 0 || read(perf_fd, &v, sizeof v) != sizeof v) return -1;
    return v;
}

enum { S_PARSE, S_DOC, S_ENTRY, S_ENCODE, S_COUNT };
static const char *const stage_names[] = {"parse", "doc", "entry", "encode"};

static void run_stage(int s, const entry *es, size_t n, ch_batch *b)
{
    if (s == S_PARSE) stage_parse(es, n);
    else if (s == S_DOC) stage_doc(es, n);
    else if (s == S_ENTRY) stage_entry(es, n);
    else stage_encode(es, n, b);
}

int main(int argc, char **argv)
{
    size_t n = 2000;
    int rounds = 5, only = -1;
    double invalid = 0.01;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--entries") && i + 1 < argc) n = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--invalid") && i + 1 < argc) invalid = atof(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            const char *o = argv[++i];
            for (int s = 0; s < S_COUNT; s++) if (!strcmp(o, stage_names[s])) only = s;
            if (only < 0) { fprintf(stderr, "--only parse|doc|entry|encode\n"); return 2; }
        } else {
            fprintf(stderr, "usage: %s [--entries N] [--rounds R] [--invalid P] "
                    "[--only parse|doc|entry|encode]\n", argv[0]);
            return 2;
        }
    }
    for (int i = 0; i < N_ORGS; i++) hex_id(orgs[i], 64);
    entry *es = calloc(n, sizeof *es);
    size_t events = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        gen_entry(&es[i], invalid);
        events += es[i].n_events;
        bytes += es[i].f[3].value_len;
    }
    ch_table table;
    ch_error err;
    if (ch_table_from_describe(legacy_describe, strlen(legacy_describe), &table, &err) != 0) {
        fprintf(stderr, "describe: %s\n", err.msg);
        return 1;
    }
    ch_batch *b = ch_batch_new(&table, CH_FORMAT_ROWBINARY);
    perf_open();
    printf("%zu entries, %zu events, %.0f bytes/event of `events` JSON\n",
           n, events, (double)bytes / (double)events);
    for (int s = 0; s < S_COUNT; s++) {
        if (only >= 0 && s != only) continue;
        double best = 1e300;
        long long best_ins = -1;
        for (int r = 0; r < rounds; r++) {
            ch_batch_reset(b);
            if (perf_fd >= 0) { ioctl(perf_fd, PERF_EVENT_IOC_RESET, 0); ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0); }
            double t0 = now_ns();
            run_stage(s, es, n, b);
            double t = now_ns() - t0;
            if (perf_fd >= 0) ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0);
            long long ins = perf_read();
            if (t < best) best = t;
            if (ins >= 0 && (best_ins < 0 || ins < best_ins)) best_ins = ins;
        }
        printf("%-7s %7.1f CPU ns/event", stage_names[s], best / (double)events);
        if (best_ins >= 0) printf("  %8.0f instructions/event", (double)best_ins / (double)events);
        printf("\n");
    }
    ch_batch_free(b);
    for (size_t i = 0; i < n; i++) free(es[i].events);
    free(es);
    return 0;
}
