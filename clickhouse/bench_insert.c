/* clickhouse/bench_insert.c: how the default insert format was chosen.
 *
 * Inserts N realistic telemetry rows in batches, once per format, into a
 * fresh table on a real server, and prints rows/s end to end (encode + gzip +
 * HTTP + server parse + write) and the encode share. Not a test: run by hand.
 *
 *   bench_insert URL [rows=500000] [batch=50000] [gzip_threshold=65536]
 *
 * The rows mimic CONTRACT §2/§3: 64-hex org hash, evt_/ses_/anon_ ids, the
 * nine event names, a route, and a ~100-byte sorted-keys payload. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/timeutil.h"
#include "clickhouse/clickhouse.h"

static const char *const names[] = {
    "page_viewed", "feature_viewed", "filter_changed", "chart_interacted",
    "navigation_interacted", "guide_opened", "session_started", "session_ended", "client_error",
};
static const char *const routes[] = {"/metrics", "/dora", "/work-items", "/settings/teams", "/"};

typedef struct bench_rows {
    event_row *rows;
    size_t n;
} bench_rows;

static char *fmt_dup(const char *fmt, unsigned long long a, unsigned long long b)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), fmt, a, b);
    return strdup(tmp);
}

static void make_rows(bench_rows *br, size_t n)
{
    br->rows = calloc(n, sizeof(event_row));
    br->n = n;
    unsigned long long x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;   /* xorshift: reproducible */
        event_row *r = &br->rows[i];
        r->org_id_hash = fmt_dup("%016llx%016llx1f2e3d4c5b6a79880123456789abcdef0011223344556677",
                                 x % 4, 0);
        r->org_id_hash[64] = '\0';
        r->event_id = fmt_dup("evt_%016llx%llu", x, i);
        r->name = strdup(names[x % 9]);
        r->schema_version = strdup("2026-05-telemetry-v1");
        r->session_id = fmt_dup("ses_%012llx%llu", x >> 20, i / 20);
        r->anonymous_user_id = fmt_dup("anon_%04llu%llu", x % 5000, 0);
        r->route_pattern = (x % 7 == 0) ? NULL : strdup(routes[x % 5]);
        r->payload_json = fmt_dup("{\"filterKey\":\"date\",\"isCustomDateRange\":false,\"surface\":"
                                  "\"header\",\"valueCount\":%llu,\"view\":\"metrics-%llu\"}", x % 50, x % 9);
        r->occurred_at_us = 1767225600000000LL + (int64_t)(x % (86400ULL * 1000000ULL * 30));
        r->source = strdup("dev-health-web");
    }
}

static void free_rows(bench_rows *br)
{
    for (size_t i = 0; i < br->n; i++) event_row_free(&br->rows[i]);
    free(br->rows);
}

static int run(ch_client *c, ch_format fmt, const bench_rows *br, size_t batch_rows)
{
    char table[64];
    snprintf(table, sizeof(table), "ptel_bench_%d_%s", (int)getpid(), ch_format_name(fmt));
    ch_error err;
    ch_table tab;
    if (ch_schema_apply(c, table, &err) != 0 || ch_table_describe(c, table, &tab, &err) != 0) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return -1;
    }
    ch_batch *b = ch_batch_new(&tab, fmt);
    double encode_s = 0, t0 = time_monotonic();
    size_t body = 0;
    ch_client_stats before, after;
    ch_client_stats_get(c, &before);
    for (size_t i = 0; i < br->n; i += batch_rows) {
        double e0 = time_monotonic();
        ch_batch_reset(b);
        for (size_t j = i; j < i + batch_rows && j < br->n; j++)
            ch_batch_add(b, &br->rows[j], 1767225600000000LL);
        encode_s += time_monotonic() - e0;
        body += ch_batch_bytes(b);
        if (ch_insert(c, table, b, NULL, &err) != 0) {
            fprintf(stderr, "bench: insert failed: %s\n", err.msg);
            ch_batch_free(b);
            return -1;
        }
    }
    double total = time_monotonic() - t0;
    ch_client_stats_get(c, &after);
    buf sql = BUF_INIT, out = BUF_INIT;
    buf_printf(&sql, "SELECT count() FROM %s", table);
    ch_query(c, buf_cstr(&sql), &out, &err);
    printf("%-12s rows=%zu batch=%zu  %9.0f rows/s  total %.2f s (encode %.2f s)  body %.1f MB  "
           "wire %.1f MB  stored=%s", ch_format_name(fmt), br->n, batch_rows, br->n / total, total,
           encode_s, body / 1e6, (after.wire_bytes - before.wire_bytes) / 1e6, buf_cstr(&out));
    buf_reset(&sql);
    buf_printf(&sql, "DROP TABLE %s", table);
    ch_query(c, buf_cstr(&sql), NULL, &err);
    buf_free(&sql);
    buf_free(&out);
    ch_batch_free(b);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [rows=500000] [batch=50000] [gzip_threshold=65536]\n", argv[0]);
        return 2;
    }
    size_t rows = argc > 2 ? strtoul(argv[2], NULL, 10) : 500000;
    size_t batch = argc > 3 ? strtoul(argv[3], NULL, 10) : 50000;
    ch_error err;
    ch_client *c = ch_client_new(argv[1], &err);
    if (c == NULL) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 2;
    }
    if (argc > 4) ch_client_set_gzip_threshold(c, strtoul(argv[4], NULL, 10));
    bench_rows br;
    make_rows(&br, rows);
    int rc = 0;
    /* Twice each, alternating, so neither format profits from a warm server. */
    for (int round = 0; round < 2 && rc == 0; round++) {
        rc |= run(c, CH_FORMAT_JSONEACHROW, &br, batch);
        rc |= run(c, CH_FORMAT_ROWBINARY, &br, batch);
    }
    free_rows(&br);
    ch_client_free(c);
    return rc == 0 ? 0 : 1;
}
