/* worker/report.c: `ptel-worker report`: the seven sections of the admin
 * dashboard (CONTRACT §6) over a half-open UTC window, as aligned text
 * tables or as one JSON object.
 *
 * Owns: the flags, the window and org scope, the section queries in both
 * SQL dialects, reading their TabSeparated answers, and the two renderings.
 * Does not own: the HTTP transport (clickhouse/), the table's DDL (`schema
 * apply`), or anything the worker writes.
 *
 * --rollups (or a window older than the raw retention, when they exist)
 * reads the daily rollups instead: clickhouse/rollups.c builds those
 * sections' SQL, with the same columns, from a `day` window.
 *
 * The queries are the platform's dashboard queries (dev_health_ops
 * product-telemetry dashboard, Python) with two deliberate additions: a
 * tie-breaking ORDER BY on the grouping keys, so equal counts always come
 * out in the same order (the dashboard's LIMIT 25 on routes cuts ties
 * arbitrarily), and `quantiles(0.5, 0.75, 0.9, 0.95)` in one call instead of
 * four `quantile(level)` calls, which is the same reservoir sampler and the
 * same numbers. Field names and value shapes in --json follow the
 * dashboard's response: NULL route patterns read as "", percentiles are
 * truncated to integers, and a NaN average or percentile (no rows) is null.
 *
 * client_error groups by the route_pattern COLUMN (the event's top-level
 * routePattern, CONTRACT §3), as the dashboard does; a `routePattern` key
 * inside a payload is kept byte-exact for other readers but is not the
 * error's route here.
 *
 * Dialect (CONTRACT §6): servers >= 20 get JSONExtractString/JSONExtractInt;
 * older ones (the Debian 18.16 of the tests) visitParamExtractString/
 * visitParamExtractInt, which read the same flat payloads (our payload_json
 * is flat and key-sorted, so the first "key": match is the key). */
#include "worker/report.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clickhouse/clickhouse.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/pyjson.h"
#include "common/timeutil.h"
#include "worker/config.h"
#include "worker/sha256.h"
#include "worker/worker.h"

/* The dashboard's window when none is given: 30 days ending tomorrow
 * 00:00 UTC, so today is included. */
#define REPORT_DEFAULT_DAYS 30
/* The dashboard lists this many route patterns (TOP_ROUTES_SQL LIMIT 25). */
#define REPORT_TOP_ROUTES 25
#define SEC_PER_DAY 86400LL

/* ---- Flags -------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
"usage: ptel-worker report [--org-id ID | --org-hash HASH] [--from YYYY-MM-DD]\n"
"                          [--to YYYY-MM-DD] [--json] [--rollups] [--config FILE]\n"
"\n"
"Print the product-telemetry dashboard's sections from ClickHouse: daily active\n"
"anonymous users, top route patterns, feature views, filter changes, chart\n"
"interactions, client errors and session summary.\n"
"\n"
"options:\n"
"  --org-id ID        one org, named by its id (hashed with sha256, as the platform does)\n"
"  --org-hash HASH    one org, named by its 64-hex org_id_hash ('' = anonymous events)\n"
"                     (neither: every org together)\n"
"  --from DATE        first day of the window, inclusive (default: --to minus 30 days)\n"
"  --to DATE          end of the window, exclusive (default: tomorrow, so today counts)\n"
"  --json             one JSON object with a key per section instead of tables\n"
"  --rollups          read the daily rollups (`schema apply --rollups`) instead of the\n"
"                     raw rows; done anyway, when they exist, for a window starting\n"
"                     before the raw retention (telemetry_retention_days)\n"
"  --config FILE      celeryconfig file (clickhouse_url, clickhouse_table)\n"
"  -h, --help         this help\n"
"\n"
"Dates are UTC days: the window is [from 00:00, to 00:00). CLICKHOUSE_URL\n"
"overrides the file. Exit status: 0 ok, 1 ClickHouse or config error, 2 usage.\n");
}

typedef struct report_args {
    const char *config;
    const char *org_id;
    const char *org_hash;
    const char *from, *to;
    int json;
    int rollups;
} report_args;

/* 0 ok, 1 --help printed, -1 usage error (message printed). */
static int parse_args(int argc, char **argv, report_args *a)
{
    enum { OPT_CONFIG = 256, OPT_ORG_ID, OPT_ORG_HASH, OPT_FROM, OPT_TO, OPT_JSON, OPT_ROLLUPS };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, OPT_CONFIG},
        {"org-id", required_argument, NULL, OPT_ORG_ID},
        {"org-hash", required_argument, NULL, OPT_ORG_HASH},
        {"from", required_argument, NULL, OPT_FROM},
        {"to", required_argument, NULL, OPT_TO},
        {"json", no_argument, NULL, OPT_JSON},
        {"rollups", no_argument, NULL, OPT_ROLLUPS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG: a->config = optarg; break;
        case OPT_ORG_ID: a->org_id = optarg; break;
        case OPT_ORG_HASH: a->org_hash = optarg; break;
        case OPT_FROM: a->from = optarg; break;
        case OPT_TO: a->to = optarg; break;
        case OPT_JSON: a->json = 1; break;
        case OPT_ROLLUPS: a->rollups = 1; break;
        case 'h': usage(stdout); return 1;
        case ':':
            fprintf(stderr, "error: %s needs a value\n", argv[optind - 1]);
            usage(stderr);
            return -1;
        default:
            fprintf(stderr, "error: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "error: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    if (a->org_id && a->org_hash) {
        fprintf(stderr, "error: --org-id and --org-hash both name the org: give one\n");
        return -1;
    }
    return 0;
}

/* ---- Scope: window and org ------------------------------------------------------- */

typedef struct report_scope {
    char from[11], to[11];                 /* "YYYY-MM-DD" */
    int has_org;
    char org_hash[SHA256_HEX_LEN + 1];     /* lowercase hex, or "" for anonymous */
} report_scope;

/* "YYYY-MM-DD" (a real calendar day) -> epoch seconds of its 00:00 UTC. */
static int parse_day(const char *s, int64_t *out_s)
{
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-') return -1;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9')) return -1;
    char iso[32];
    snprintf(iso, sizeof iso, "%sT00:00:00Z", s);
    int64_t us;
    if (time_parse_iso8601(iso, strlen(iso), &us) != 0) return -1;
    /* time_parse_iso8601 may normalise (Feb 30); a real day prints back as given. */
    buf back = BUF_INIT;
    time_format_clickhouse(&back, us, 0);
    int same = back.len >= 10 && memcmp(back.data, s, 10) == 0;
    buf_free(&back);
    if (!same) return -1;
    *out_s = us / USEC_PER_SEC;
    return 0;
}

static void format_day(int64_t secs, char out[11])
{
    buf b = BUF_INIT;
    time_format_clickhouse(&b, secs * USEC_PER_SEC, 0);
    memcpy(out, b.data, 10);
    out[10] = '\0';
    buf_free(&b);
}

/* 0 ok, -1 usage error (printed). */
static int build_scope(const report_args *a, report_scope *s)
{
    memset(s, 0, sizeof *s);
    int64_t from_s, to_s;
    if (a->to) {
        if (parse_day(a->to, &to_s) != 0) {
            fprintf(stderr, "error: --to '%s' is not a date (YYYY-MM-DD)\n", a->to);
            return -1;
        }
    } else {
        int64_t now = time_now_us() / USEC_PER_SEC;
        to_s = (now - now % SEC_PER_DAY) + SEC_PER_DAY;
    }
    if (a->from) {
        if (parse_day(a->from, &from_s) != 0) {
            fprintf(stderr, "error: --from '%s' is not a date (YYYY-MM-DD)\n", a->from);
            return -1;
        }
    } else {
        from_s = to_s - REPORT_DEFAULT_DAYS * SEC_PER_DAY;
    }
    if (from_s > to_s) {
        fprintf(stderr, "error: the window is [from, to): --from must not be after --to\n");
        return -1;
    }
    format_day(from_s, s->from);
    format_day(to_s, s->to);

    if (a->org_id) {
        s->has_org = 1;
        sha256_hex(a->org_id, strlen(a->org_id), s->org_hash);
    } else if (a->org_hash) {
        size_t n = strlen(a->org_hash);
        if (n != 0 && n != SHA256_HEX_LEN) goto bad_hash;
        for (size_t i = 0; i < n; i++) {
            char ch = a->org_hash[i];
            if (ch >= 'A' && ch <= 'F') ch = (char)(ch - 'A' + 'a');
            if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) goto bad_hash;
            s->org_hash[i] = ch;   /* the platform writes lowercase hexdigest() */
        }
        s->org_hash[n] = '\0';
        s->has_org = 1;
    }
    return 0;
bad_hash:
    fprintf(stderr, "error: --org-hash must be 64 hex digits (sha256 of the org id) or ''\n");
    return -1;
}

/* ---- Sections ------------------------------------------------------------------ */

typedef struct sql_ctx {
    const char *table;
    const char *where;     /* "org_id_hash = '..' AND occurred_at >= .. AND occurred_at < .." */
    const char *xs, *xi;   /* the dialect's string / int payload extractors */
} sql_ctx;

typedef enum {
    F_DATE,     /* "YYYY-MM-DD" */
    F_STR,      /* string; NULL reads as "" (the dashboard's `or ""`) */
    F_COUNT,    /* UInt64 */
    F_AVG,      /* Float64; non-finite -> null */
    F_PCT,      /* Float64 truncated to an integer; non-finite -> null */
} field_kind;

typedef struct field_spec {
    const char *key;       /* JSON key (the dashboard's field name) */
    const char *header;    /* text table heading */
    field_kind kind;
} field_spec;

typedef struct section_spec {
    const char *key;
    const char *title;
    int single;            /* one row rendered as an object (session_summary) */
    void (*sql)(buf *out, const sql_ctx *q);
    const field_spec *fields;
    size_t nfields;
} section_spec;

static void sql_daily(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT toDate(occurred_at) AS day, uniqExact(anonymous_user_id) AS active_anonymous_users\n"
        "FROM %s WHERE %s\nGROUP BY day ORDER BY day", q->table, q->where);
}

static void sql_routes(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT route_pattern, count() AS events, uniqExact(session_id) AS sessions,\n"
        "       uniqExact(anonymous_user_id) AS anonymous_users\n"
        "FROM %s WHERE %s AND name = 'page_viewed'\n"
        "GROUP BY route_pattern ORDER BY events DESC, route_pattern LIMIT %d",
        q->table, q->where, REPORT_TOP_ROUTES);
}

static void sql_features(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT %s(payload_json, 'feature') AS feature, %s(payload_json, 'surface') AS surface,\n"
        "       count() AS views, uniqExact(anonymous_user_id) AS anonymous_users\n"
        "FROM %s WHERE %s AND name = 'feature_viewed'\n"
        "GROUP BY feature, surface ORDER BY views DESC, feature, surface",
        q->xs, q->xs, q->table, q->where);
}

static void sql_filters(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT %s(payload_json, 'view') AS view, %s(payload_json, 'filterKey') AS filter_key,\n"
        "       count() AS changes, avg(%s(payload_json, 'valueCount')) AS avg_value_count\n"
        "FROM %s WHERE %s AND name = 'filter_changed'\n"
        "GROUP BY view, filter_key ORDER BY changes DESC, view, filter_key",
        q->xs, q->xs, q->xi, q->table, q->where);
}

static void sql_charts(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT %s(payload_json, 'chart') AS chart, %s(payload_json, 'action') AS action,\n"
        "       %s(payload_json, 'surface') AS surface, count() AS interactions,\n"
        "       uniqExact(session_id) AS sessions\n"
        "FROM %s WHERE %s AND name = 'chart_interacted'\n"
        "GROUP BY chart, action, surface ORDER BY interactions DESC, chart, action, surface",
        q->xs, q->xs, q->xs, q->table, q->where);
}

static void sql_errors(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT route_pattern, %s(payload_json, 'boundary') AS boundary,\n"
        "       %s(payload_json, 'errorClass') AS error_class, count() AS errors,\n"
        "       uniqExact(anonymous_user_id) AS affected_anonymous_users\n"
        "FROM %s WHERE %s AND name = 'client_error'\n"
        "GROUP BY route_pattern, boundary, error_class\n"
        "ORDER BY errors DESC, route_pattern, boundary, error_class",
        q->xs, q->xs, q->table, q->where);
}

static void sql_sessions(buf *o, const sql_ctx *q)
{
    buf_printf(o,
        "SELECT q[1], q[2], q[3], q[4], pages, interactions FROM (\n"
        "  SELECT quantiles(0.5, 0.75, 0.9, 0.95)(%s(payload_json, 'durationMs')) AS q,\n"
        "         avg(%s(payload_json, 'pagesViewed')) AS pages,\n"
        "         avg(%s(payload_json, 'interactions')) AS interactions\n"
        "  FROM %s WHERE %s AND name = 'session_ended')",
        q->xi, q->xi, q->xi, q->table, q->where);
}

static const field_spec daily_fields[] = {
    {"day", "day", F_DATE}, {"active_anonymous_users", "users", F_COUNT},
};
static const field_spec route_fields[] = {
    {"route_pattern", "route", F_STR}, {"events", "events", F_COUNT},
    {"sessions", "sessions", F_COUNT}, {"anonymous_users", "users", F_COUNT},
};
static const field_spec feature_fields[] = {
    {"feature", "feature", F_STR}, {"surface", "surface", F_STR},
    {"views", "views", F_COUNT}, {"anonymous_users", "users", F_COUNT},
};
static const field_spec filter_fields[] = {
    {"view", "view", F_STR}, {"filter_key", "filter key", F_STR},
    {"changes", "changes", F_COUNT}, {"avg_value_count", "avg values", F_AVG},
};
static const field_spec chart_fields[] = {
    {"chart", "chart", F_STR}, {"action", "action", F_STR}, {"surface", "surface", F_STR},
    {"interactions", "interactions", F_COUNT}, {"sessions", "sessions", F_COUNT},
};
static const field_spec error_fields[] = {
    {"route_pattern", "route", F_STR}, {"boundary", "boundary", F_STR},
    {"error_class", "error class", F_STR}, {"errors", "errors", F_COUNT},
    {"affected_anonymous_users", "users", F_COUNT},
};
static const field_spec session_fields[] = {
    {"p50_duration_ms", "duration p50 (ms)", F_PCT},
    {"p75_duration_ms", "duration p75 (ms)", F_PCT},
    {"p90_duration_ms", "duration p90 (ms)", F_PCT},
    {"p95_duration_ms", "duration p95 (ms)", F_PCT},
    {"avg_pages_viewed", "avg pages viewed", F_AVG},
    {"avg_interactions", "avg interactions", F_AVG},
};

#define FIELDS(a) a, sizeof a / sizeof a[0]
static const section_spec sections[] = {
    {"daily_active_users", "Daily active anonymous users", 0, sql_daily, FIELDS(daily_fields)},
    {"top_routes", "Top route patterns (page_viewed)", 0, sql_routes, FIELDS(route_fields)},
    {"feature_views", "Feature views (feature_viewed)", 0, sql_features, FIELDS(feature_fields)},
    {"filter_changes", "Filter changes (filter_changed)", 0, sql_filters, FIELDS(filter_fields)},
    {"chart_interactions", "Chart interactions (chart_interacted)", 0, sql_charts,
     FIELDS(chart_fields)},
    {"client_errors", "Client errors (client_error)", 0, sql_errors, FIELDS(error_fields)},
    {"session_summary", "Sessions (session_ended)", 1, sql_sessions, FIELDS(session_fields)},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

/* ---- Reading TabSeparated ------------------------------------------------------------ */

/* One cell: the unescaped text, or NULL for \N. */
typedef struct cell { char *text; } cell;

typedef struct result {
    cell *cells;           /* rows * ncols */
    size_t rows, ncols;
} result;

static void result_free(result *r)
{
    for (size_t i = 0; i < r->rows * r->ncols; i++) free(r->cells[i].text);
    free(r->cells);
    memset(r, 0, sizeof *r);
}

/* Undo ClickHouse's TabSeparated escaping of s[0..n); \N alone is NULL. */
static char *tsv_field(const char *s, size_t n)
{
    if (n == 2 && s[0] == '\\' && s[1] == 'N') return NULL;
    buf b = BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '\\' && i + 1 < n) {
            switch (s[++i]) {
            case 't': ch = '\t'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case '0': ch = '\0'; break;
            default: ch = s[i];   /* \\ \' and the rest: the character itself */
            }
        }
        buf_putc(&b, ch);
    }
    return buf_detach(&b);   /* "" when the field was empty */
}

/* 0 ok; -1 when a row has the wrong number of columns. */
static int parse_tsv(const char *text, size_t len, size_t ncols, result *r)
{
    memset(r, 0, sizeof *r);
    r->ncols = ncols;
    size_t cap = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        if (r->rows + 1 > cap) {
            cap = cap ? cap * 2 : 16;
            r->cells = xrealloc(r->cells, cap * ncols * sizeof(cell));
        }
        size_t col = 0;
        const char *f = p;
        for (;;) {
            const char *tab = memchr(f, '\t', (size_t)(eol - f));
            const char *fend = tab ? tab : eol;
            if (col < ncols) r->cells[r->rows * ncols + col].text = tsv_field(f, (size_t)(fend - f));
            col++;
            if (!tab) break;
            f = tab + 1;
        }
        for (size_t c = col; c < ncols; c++) r->cells[r->rows * ncols + c].text = NULL;
        r->rows++;
        if (col != ncols) return -1;
        p = eol + 1;
    }
    return 0;
}

/* ---- Values ------------------------------------------------------------------ */

/* A cell as the dashboard's response holds it. */
static pj_value *cell_value(const cell *c, field_kind kind)
{
    const char *t = c->text;
    switch (kind) {
    case F_DATE:
    case F_STR:
        return pj_new_string(t ? t : "");
    case F_COUNT:
        return pj_new_int(t ? strtoll(t, NULL, 10) : 0);
    case F_AVG:
    case F_PCT: {
        if (!t) return pj_new_null();
        double d = strtod(t, NULL);
        if (!isfinite(d)) return pj_new_null();
        /* Python's int(float): truncation toward zero. */
        if (kind == F_PCT && fabs(d) < 9.2e18) return pj_new_int((long long)d);
        return pj_new_float(d);
    }
    }
    return pj_new_null();
}

static pj_value *section_json(const section_spec *s, const result *r)
{
    if (s->single) {
        pj_value *obj = pj_new_object();
        for (size_t f = 0; f < s->nfields; f++) {
            cell none = {NULL};
            const cell *c = r->rows ? &r->cells[f] : &none;
            pj_object_set(obj, s->fields[f].key, cell_value(c, s->fields[f].kind));
        }
        return obj;
    }
    pj_value *arr = pj_new_array();
    for (size_t i = 0; i < r->rows; i++) {
        pj_value *row = pj_new_object();
        for (size_t f = 0; f < s->nfields; f++)
            pj_object_set(row, s->fields[f].key,
                          cell_value(&r->cells[i * r->ncols + f], s->fields[f].kind));
        pj_array_append(arr, row);
    }
    return arr;
}

/* ---- Text rendering ------------------------------------------------------------- */

/* The text a table cell shows: strings with control characters made
 * visible (a tab or newline in a payload value must not break the columns),
 * averages with two decimals, "-" for null, "(none)" for an empty name. */
static char *cell_text(const pj_value *v)
{
    buf b = BUF_INIT;
    switch (v->type) {
    case PJ_NULL: buf_puts(&b, "-"); break;
    case PJ_INT: buf_puts(&b, v->u.int_text); break;
    case PJ_FLOAT: buf_printf(&b, "%.2f", v->u.number); break;
    case PJ_STRING:
        if (v->u.string.len == 0) buf_puts(&b, "(none)");
        for (size_t i = 0; i < v->u.string.len; i++) {
            unsigned char ch = (unsigned char)v->u.string.ptr[i];
            if (ch < 0x20 || ch == 0x7f) buf_printf(&b, "\\x%02x", ch);
            else buf_putc(&b, (char)ch);
        }
        break;
    default: buf_puts(&b, "?"); break;
    }
    return buf_detach(&b);
}

/* Columns on a terminal: UTF-8 code points (continuation bytes do not count). */
static size_t display_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) w++;
    return w;
}

static void put_padded(buf *o, const char *s, size_t width, int right)
{
    size_t w = display_width(s);
    if (right)
        for (size_t i = w; i < width; i++) buf_putc(o, ' ');
    buf_puts(o, s);
    if (!right)
        for (size_t i = w; i < width; i++) buf_putc(o, ' ');
}

static int numeric(field_kind k) { return k == F_COUNT || k == F_AVG || k == F_PCT; }

/* A grid of texts [rows+1][ncols] (row 0: headings), aligned, indented. */
static void render_grid(buf *o, char **grid, size_t rows, size_t ncols, const int *right)
{
    size_t *width = xcalloc(ncols, sizeof *width);
    for (size_t r = 0; r <= rows; r++)
        for (size_t c = 0; c < ncols; c++) {
            size_t w = display_width(grid[r * ncols + c]);
            if (w > width[c]) width[c] = w;
        }
    for (size_t r = 0; r <= rows; r++) {
        buf_puts(o, "  ");
        for (size_t c = 0; c < ncols; c++) {
            if (c) buf_puts(o, "  ");
            /* the last column is not padded on the right: no trailing blanks */
            if (c + 1 == ncols && !right[c]) buf_puts(o, grid[r * ncols + c]);
            else put_padded(o, grid[r * ncols + c], width[c], right[c]);
        }
        buf_putc(o, '\n');
        if (r == 0) {
            buf_puts(o, "  ");
            for (size_t c = 0; c < ncols; c++) {
                if (c) buf_puts(o, "  ");
                for (size_t i = 0; i < width[c]; i++) buf_putc(o, '-');
            }
            buf_putc(o, '\n');
        }
    }
    free(width);
}

static void section_text(buf *o, const section_spec *s, const pj_value *v)
{
    buf_printf(o, "\n%s\n", s->title);
    if (s->single) {
        /* one row: a two-column list, metric and value */
        size_t n = s->nfields;
        char **grid = xcalloc((n + 1) * 2, sizeof *grid);
        int right[2] = {0, 1};
        grid[0] = xstrdup("metric");
        grid[1] = xstrdup("value");
        for (size_t f = 0; f < n; f++) {
            grid[(f + 1) * 2] = xstrdup(s->fields[f].header);
            grid[(f + 1) * 2 + 1] = cell_text(pj_object_get(v, s->fields[f].key));
        }
        render_grid(o, grid, n, 2, right);
        for (size_t i = 0; i < (n + 1) * 2; i++) free(grid[i]);
        free(grid);
        return;
    }
    size_t rows = v->u.array.len, nc = s->nfields;
    if (rows == 0) {
        buf_puts(o, "  (no events in the window)\n");
        return;
    }
    char **grid = xcalloc((rows + 1) * nc, sizeof *grid);
    int *right = xcalloc(nc, sizeof *right);
    for (size_t c = 0; c < nc; c++) {
        grid[c] = xstrdup(s->fields[c].header);
        right[c] = numeric(s->fields[c].kind);
    }
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < nc; c++)
            grid[(r + 1) * nc + c] =
                cell_text(pj_object_get(v->u.array.items[r], s->fields[c].key));
    render_grid(o, grid, rows, nc, right);
    for (size_t i = 0; i < (rows + 1) * nc; i++) free(grid[i]);
    free(grid);
    free(right);
}

/* ---- Running ------------------------------------------------------------------- */

/* Say what went wrong in operator terms; the table-missing case names the fix. */
static void report_error(ch_client *ch, const char *table, const char *config,
                         const char *what, const ch_error *err)
{
    const char *url = ch ? ch_client_redacted_url(ch) : "(no URL)";
    if (err->code == CH_ERR_UNKNOWN_TABLE || err->code == 81 /* UNKNOWN_DATABASE */) {
        fprintf(stderr,
                "error: table %s does not exist on ClickHouse at %s; create it with "
                "`ptel-worker schema apply%s%s`\n  (%s)\n",
                table, url, config ? " --config " : "", config ? config : "", err->msg);
    } else if (err->http_status == 0 && err->code == 0) {   /* no answer at all */
        fprintf(stderr, "error: cannot reach ClickHouse at %s: %s\n", url, err->msg);
    } else {
        fprintf(stderr, "error: %s failed on ClickHouse at %s: %s\n", what, url, err->msg);
    }
}

static void build_where(buf *w, const report_scope *s, int modern)
{
    if (s->has_org) buf_printf(w, "org_id_hash = '%s' AND ", s->org_hash);
    /* Literal instants in UTC of the column's own type: a bare string would
     * be read in the server's time zone on old servers. */
    if (modern)
        buf_printf(w, "occurred_at >= toDateTime64('%s 00:00:00', 3, 'UTC') AND "
                      "occurred_at < toDateTime64('%s 00:00:00', 3, 'UTC')", s->from, s->to);
    else
        buf_printf(w, "occurred_at >= toDateTime('%s 00:00:00', 'UTC') AND "
                      "occurred_at < toDateTime('%s 00:00:00', 'UTC')", s->from, s->to);
}

/* ---- Rollups (clickhouse/rollups.c) --------------------------------------------------- */

/* The rollups are keyed by UTC day, and the window is whole UTC days, so
 * [from, to) on `day` is the raw window exactly. */
static void build_rollup_where(buf *w, const report_scope *s)
{
    if (s->has_org) buf_printf(w, "org_id_hash = '%s' AND ", s->org_hash);
    buf_printf(w, "day >= toDate('%s') AND day < toDate('%s')", s->from, s->to);
}

/* Decide the source: rollups when asked (they must exist), or when the
 * window starts before the raw retention and they exist. 0 ok, -1 error
 * (printed). */
static int use_rollups(ch_client *ch, const ptel_config *cfg, const report_args *a,
                       const report_scope *s, int *rollups)
{
    int64_t from_s = 0, now = time_now_us() / USEC_PER_SEC;
    int64_t raw_from = now - now % SEC_PER_DAY - cfg->telemetry_retention_days * SEC_PER_DAY;
    int old = parse_day(s->from, &from_s) == 0 && from_s < raw_from;
    *rollups = 0;
    if (!a->rollups && !old) return 0;
    int exist = 0;
    ch_error err;
    memset(&err, 0, sizeof err);
    if (ch_rollups_exist(ch, cfg->clickhouse_table, &exist, &err) != 0) {
        report_error(ch, cfg->clickhouse_table, a->config, "the rollup lookup", &err);
        return -1;
    }
    if (exist) {
        *rollups = 1;
    } else if (a->rollups) {
        fprintf(stderr, "error: the rollups of %s (%s_rollup_*) do not exist on ClickHouse at %s; "
                "create them with `ptel-worker schema apply --rollups --backfill%s%s`\n",
                cfg->clickhouse_table, cfg->clickhouse_table, ch_client_redacted_url(ch),
                a->config ? " --config " : "", a->config ? a->config : "");
        return -1;
    } else {
        fprintf(stderr, "warning: the window starts before the raw retention (%lld days), so raw "
                "rows are missing from it; `ptel-worker schema apply --rollups` keeps daily "
                "rollups for longer\n", cfg->telemetry_retention_days);
    }
    return 0;
}

static void print_text(const report_scope *s, const report_args *a, ch_client *ch,
                       const char *table, int major, int minor, pj_value *const *vals)
{
    buf o = BUF_INIT;
    buf_puts(&o, "Product telemetry report\n");
    if (!s->has_org) buf_puts(&o, "  org:     all orgs\n");
    else if (a->org_id) buf_printf(&o, "  org:     %s (sha256 of org id '%s')\n", s->org_hash, a->org_id);
    else if (s->org_hash[0]) buf_printf(&o, "  org:     %s\n", s->org_hash);
    else buf_puts(&o, "  org:     '' (events without an org)\n");
    buf_printf(&o, "  window:  %s 00:00 UTC to %s 00:00 UTC (end exclusive)\n", s->from, s->to);
    buf_printf(&o, "  source:  table %s on ClickHouse %d.%d at %s\n", table, major, minor,
               ch_client_redacted_url(ch));
    for (size_t i = 0; i < NSECTIONS; i++) section_text(&o, &sections[i], vals[i]);
    fwrite(o.data, 1, o.len, stdout);
    buf_free(&o);
}

static void print_json(const report_scope *s, int major, int minor, const char *table,
                       pj_value **vals)
{
    pj_value *root = pj_new_object();
    pj_object_set(root, "org_id_hash", s->has_org ? pj_new_string(s->org_hash) : pj_new_null());
    pj_object_set(root, "start_date", pj_new_string(s->from));
    pj_object_set(root, "end_date", pj_new_string(s->to));
    buf ver = BUF_INIT;
    buf_printf(&ver, "%d.%d", major, minor);
    pj_object_set(root, "clickhouse_version", pj_new_string(buf_cstr(&ver)));
    buf_free(&ver);
    pj_object_set(root, "table", pj_new_string(table));
    for (size_t i = 0; i < NSECTIONS; i++) {
        pj_object_set(root, sections[i].key, vals[i]);
        vals[i] = NULL;   /* owned by root now */
    }
    buf o = BUF_INIT;
    pj_dump(&o, root, 0);
    buf_putc(&o, '\n');
    fwrite(o.data, 1, o.len, stdout);
    buf_free(&o);
    pj_free(root);
}

int report_command(int argc, char **argv)
{
    report_args a;
    int prc = parse_args(argc, argv, &a);
    if (prc != 0) return prc > 0 ? 0 : 2;
    report_scope scope;
    if (build_scope(&a, &scope) != 0) return 2;

    ptel_config cfg;
    if (worker_load_config(&cfg, a.config) != 0) {
        config_free(&cfg);
        return 1;
    }
    log_setup(LOG_WARNING, cfg.worker_log_format, NULL);
    int rc = 1;
    pj_value *vals[NSECTIONS] = {0};
    buf where = BUF_INIT, sql = BUF_INIT, answer = BUF_INIT;
    buf shown = BUF_INIT;   /* the table(s) the output names as its source */
    ch_error err;
    memset(&err, 0, sizeof err);
    ch_client *ch = ch_client_new(cfg.clickhouse_url, &err);
    if (!ch) {
        fprintf(stderr, "error: clickhouse_url: %s\n", err.msg);
        goto out;
    }
    ch_client_set_timeouts(ch, (long)(cfg.clickhouse_connect_timeout * 1000),
                           (long)(cfg.clickhouse_timeout * 1000));
    int major = 0, minor = 0;
    if (ch_server_version(ch, &major, &minor, &err) != 0) {
        report_error(ch, cfg.clickhouse_table, a.config, "version()", &err);
        goto out;
    }
    int modern = major >= 20;
    int rollups = 0;
    if (use_rollups(ch, &cfg, &a, &scope, &rollups) != 0) goto out;
    if (rollups) build_rollup_where(&where, &scope);
    else build_where(&where, &scope, modern);
    buf_printf(&shown, rollups ? "%s_rollup_*" : "%s", cfg.clickhouse_table);
    sql_ctx q = {
        .table = cfg.clickhouse_table,
        .where = buf_cstr(&where),
        .xs = modern ? "JSONExtractString" : "visitParamExtractString",
        .xi = modern ? "JSONExtractInt" : "visitParamExtractInt",
    };
    for (size_t i = 0; i < NSECTIONS; i++) {
        const section_spec *s = &sections[i];
        buf_reset(&sql);
        buf_reset(&answer);
        if (rollups) ch_rollup_section_sql(s->key, cfg.clickhouse_table, q.where, &sql);
        else s->sql(&sql, &q);
        buf_puts(&sql, "\nFORMAT TabSeparated");
        if (ch_query(ch, buf_cstr(&sql), &answer, &err) != 0) {
            char what[96];
            snprintf(what, sizeof what, "the %s query", s->key);
            report_error(ch, cfg.clickhouse_table, a.config, what, &err);
            goto out;
        }
        result r;
        if (parse_tsv(answer.data ? answer.data : "", answer.len, s->nfields, &r) != 0) {
            fprintf(stderr, "error: the %s query answered rows of an unexpected shape\n", s->key);
            result_free(&r);
            goto out;
        }
        vals[i] = section_json(s, &r);
        result_free(&r);
    }
    if (a.json) print_json(&scope, major, minor, buf_cstr(&shown), vals);
    else print_text(&scope, &a, ch, buf_cstr(&shown), major, minor, vals);
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    buf_free(&shown);
    for (size_t i = 0; i < NSECTIONS; i++) pj_free(vals[i]);
    buf_free(&where);
    buf_free(&sql);
    buf_free(&answer);
    ch_client_free(ch);
    config_free(&cfg);
    return rc;
}
