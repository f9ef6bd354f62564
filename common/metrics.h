/* common/metrics.h: process-wide counters, gauges and histograms in
 * Prometheus' data model, rendered in its text exposition format.
 *
 * Any module may count (the cost is one mutex and a hash lookup); only the
 * worker's metrics endpoint renders. A series is a metric name plus a label
 * string already in exposition form, e.g. `task="ptel.ping",state="SUCCESS"`
 * (use metrics_label_escape for values that come from outside). Names are
 * registered once with their type and help text; an unregistered name is
 * rendered as untyped. Limits are named below; past them new series are
 * dropped (and counted in ptel_metrics_dropped_series_total), never a crash. */
#ifndef PTEL_METRICS_H
#define PTEL_METRICS_H

#include <stddef.h>

#include "common/buf.h"

#define METRICS_MAX_SERIES 4096
#define METRICS_MAX_LABELS_LEN 512

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type;

/* Register a metric family (idempotent). For histograms, buckets are the
 * upper bounds in ascending order (+Inf is implied); NULL = default latency
 * buckets in seconds (1 ms .. 60 s). */
void metrics_register(const char *name, metric_type type, const char *help,
                      const double *buckets, size_t n_buckets);

void metrics_add(const char *name, const char *labels, double v);      /* counter += v */
void metrics_set(const char *name, const char *labels, double v);      /* gauge = v */
void metrics_observe(const char *name, const char *labels, double v);  /* histogram */

/* Append `value` escaped for a label value (\\, \", \n). */
void metrics_label_escape(buf *out, const char *value);

/* The whole registry in the Prometheus text format (version 0.0.4). */
void metrics_render(buf *out);

/* Drop every series and family (tests). */
void metrics_reset(void);

#endif
