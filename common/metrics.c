/* common/metrics.c: the registry behind metrics.h.
 *
 * Global state: `registry` is the process's one metrics registry. It is owned
 * by this file and every access holds `registry.lock`; modules touch it only
 * through the functions in metrics.h. Series live in an open-addressing hash
 * (FNV-1a of name + labels) sized for METRICS_MAX_SERIES, and rendering sorts
 * them by family so the output groups each family under its HELP/TYPE. */
#include "common/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"
#include "common/pyjson.h"

#define TABLE_SIZE (METRICS_MAX_SERIES * 2)   /* load factor <= 0.5 */
#define MAX_FAMILIES 256
#define MAX_BUCKETS 32

static const double default_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

typedef struct family {
    char *name;
    char *help;
    metric_type type;
    double buckets[MAX_BUCKETS];
    size_t n_buckets;
} family;

typedef struct series {
    char *name;            /* NULL = empty slot */
    char *labels;
    double value;          /* counter/gauge; histogram sum */
    uint64_t count;        /* histogram observations */
    uint64_t *bucket_counts;
    const family *fam;     /* NULL: untyped (or registered later) */
} series;

static struct {
    pthread_mutex_t lock;
    series slots[TABLE_SIZE];
    size_t n_series;
    family families[MAX_FAMILIES];
    size_t n_families;
    double dropped;
} registry = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t hash_key(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = labels; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static family *find_family(const char *name)
{
    for (size_t i = 0; i < registry.n_families; i++)
        if (strcmp(registry.families[i].name, name) == 0) return &registry.families[i];
    return NULL;
}

void metrics_register(const char *name, metric_type type, const char *help,
                      const double *buckets, size_t n_buckets)
{
    pthread_mutex_lock(&registry.lock);
    if (!find_family(name) && registry.n_families < MAX_FAMILIES) {
        family *f = &registry.families[registry.n_families++];
        f->name = xstrdup(name);
        f->help = xstrdup(help);
        f->type = type;
        if (!buckets) {
            buckets = default_buckets;
            n_buckets = sizeof default_buckets / sizeof default_buckets[0];
        }
        if (n_buckets > MAX_BUCKETS) n_buckets = MAX_BUCKETS;
        memcpy(f->buckets, buckets, n_buckets * sizeof *buckets);
        f->n_buckets = n_buckets;
    }
    pthread_mutex_unlock(&registry.lock);
}

/* Lock held. NULL when the table is full. */
static series *lookup(const char *name, const char *labels)
{
    if (!labels) labels = "";
    uint64_t h = hash_key(name, labels);
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        series *s = &registry.slots[(h + i) % TABLE_SIZE];
        if (!s->name) {
            if (registry.n_series >= METRICS_MAX_SERIES ||
                strlen(labels) > METRICS_MAX_LABELS_LEN) {
                registry.dropped++;
                return NULL;
            }
            s->name = xstrdup(name);
            s->labels = xstrdup(labels);
            s->fam = find_family(name);
            if (s->fam && s->fam->type == METRIC_HISTOGRAM)
                s->bucket_counts = xcalloc(s->fam->n_buckets, sizeof *s->bucket_counts);
            registry.n_series++;
            return s;
        }
        if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0) return s;
    }
    return NULL;
}

void metrics_add(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&registry.lock);
    series *s = lookup(name, labels);
    if (s) s->value += v;
    pthread_mutex_unlock(&registry.lock);
}

void metrics_set(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&registry.lock);
    series *s = lookup(name, labels);
    if (s) s->value = v;
    pthread_mutex_unlock(&registry.lock);
}

void metrics_observe(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&registry.lock);
    series *s = lookup(name, labels);
    if (s) {
        s->value += v;
        s->count++;
        if (s->bucket_counts)
            for (size_t i = 0; i < s->fam->n_buckets; i++)
                if (v <= s->fam->buckets[i]) s->bucket_counts[i]++;
    }
    pthread_mutex_unlock(&registry.lock);
}

void metrics_label_escape(buf *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\') buf_puts(out, "\\\\");
        else if (*p == '"') buf_puts(out, "\\\"");
        else if (*p == '\n') buf_puts(out, "\\n");
        else buf_putc(out, *p);
    }
}

/* ---- Rendering ----------------------------------------------------------- */

static void put_number(buf *out, double v)
{
    if (isinf(v)) buf_puts(out, v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v)) buf_puts(out, "NaN");
    else if (v == (double)(long long)v && fabs(v) < 1e15) buf_printf(out, "%lld", (long long)v);
    else pj_float_repr(out, v);   /* shortest round-trip digits */
}

static void put_series_line(buf *out, const char *name, const char *suffix, const char *labels,
                            const char *extra_label, double v)
{
    buf_printf(out, "%s%s", name, suffix);
    if (labels[0] || extra_label) {
        buf_putc(out, '{');
        buf_puts(out, labels);
        if (extra_label) {
            if (labels[0]) buf_putc(out, ',');
            buf_puts(out, extra_label);
        }
        buf_putc(out, '}');
    }
    buf_putc(out, ' ');
    put_number(out, v);
    buf_putc(out, '\n');
}

static void render_series(buf *out, const series *s)
{
    if (!s->bucket_counts) {
        put_series_line(out, s->name, "", s->labels, NULL, s->value);
        return;
    }
    char le[64];
    for (size_t i = 0; i < s->fam->n_buckets; i++) {
        buf b = BUF_INIT;
        put_number(&b, s->fam->buckets[i]);
        snprintf(le, sizeof le, "le=\"%s\"", buf_cstr(&b));
        buf_free(&b);
        put_series_line(out, s->name, "_bucket", s->labels, le, (double)s->bucket_counts[i]);
    }
    put_series_line(out, s->name, "_bucket", s->labels, "le=\"+Inf\"", (double)s->count);
    put_series_line(out, s->name, "_sum", s->labels, NULL, s->value);
    put_series_line(out, s->name, "_count", s->labels, NULL, (double)s->count);
}

static int compare_series(const void *a, const void *b)
{
    const series *x = *(const series *const *)a, *y = *(const series *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->labels, y->labels);
}

static const char *type_name(metric_type t)
{
    return t == METRIC_COUNTER ? "counter" : t == METRIC_GAUGE ? "gauge" : "histogram";
}

void metrics_render(buf *out)
{
    pthread_mutex_lock(&registry.lock);
    const series **sorted = xcalloc(registry.n_series + 1, sizeof *sorted);
    size_t n = 0;
    for (size_t i = 0; i < TABLE_SIZE; i++)
        if (registry.slots[i].name) sorted[n++] = &registry.slots[i];
    qsort(sorted, n, sizeof *sorted, compare_series);
    /* Families with no series yet still show HELP/TYPE, so dashboards and
     * alerts see every metric from the first scrape. */
    for (size_t f = 0; f < registry.n_families; f++) {
        const family *fam = &registry.families[f];
        buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help, fam->name,
                   type_name(fam->type));
        for (size_t i = 0; i < n; i++)
            if (strcmp(sorted[i]->name, fam->name) == 0) render_series(out, sorted[i]);
    }
    for (size_t i = 0; i < n; i++)
        if (!find_family(sorted[i]->name)) render_series(out, sorted[i]);
    buf_puts(out, "# HELP ptel_metrics_dropped_series_total Series not recorded because the "
                  "registry was full.\n# TYPE ptel_metrics_dropped_series_total counter\n");
    put_series_line(out, "ptel_metrics_dropped_series_total", "", "", NULL, registry.dropped);
    free(sorted);
    pthread_mutex_unlock(&registry.lock);
}

void metrics_reset(void)
{
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        series *s = &registry.slots[i];
        free(s->name);
        free(s->labels);
        free(s->bucket_counts);
        memset(s, 0, sizeof *s);
    }
    for (size_t i = 0; i < registry.n_families; i++) {
        free(registry.families[i].name);
        free(registry.families[i].help);
    }
    registry.n_series = 0;
    registry.n_families = 0;
    registry.dropped = 0;
    pthread_mutex_unlock(&registry.lock);
}
