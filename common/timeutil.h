/* common/timeutil.h: clocks and the ISO-8601 forms Celery and the telemetry
 * contract use. Times are int64 microseconds since the Unix epoch (UTC): a
 * double cannot hold a 2026 timestamp to the microsecond exactly. */
#ifndef PTEL_TIMEUTIL_H
#define PTEL_TIMEUTIL_H

#include <stdint.h>
#include <stddef.h>

#include "common/buf.h"

#define USEC_PER_SEC 1000000LL

int64_t time_now_us(void);        /* wall clock, UTC */
double time_now(void);            /* wall clock as Python's time.time() float */
double time_monotonic(void);      /* seconds, CLOCK_MONOTONIC (Python's time.monotonic()) */

/* Parse "YYYY-MM-DDTHH:MM:SS[.ffffff][Z|+hh:mm|-hh:mm|+hhmm|-hhmm]" (a space may stand for
 * 'T'; 1..9 fraction digits, truncated to microseconds; no offset = UTC, as
 * Celery and the telemetry contract both read naive times; ":SS" may be
 * omitted, as datetime.fromisoformat allows). Returns 0 and
 * sets *out_us, or -1 for anything else (including out-of-range fields). */
int time_parse_iso8601(const char *s, size_t len, int64_t *out_us);

/* Celery's `date_done`: naive UTC isoformat, "2026-11-27T22:10:19.092333",
 * microseconds omitted when zero (Python datetime.isoformat()). */
void time_format_date_done(buf *out, int64_t us);
/* Celery's eta/expires headers: "2026-11-27T22:10:23.105973+00:00". */
void time_format_iso_offset(buf *out, int64_t us);
/* ClickHouse DateTime64(3) / DateTime text: "2026-11-27 22:10:19.092" / "2026-11-27 22:10:19". */
void time_format_clickhouse(buf *out, int64_t us, int with_millis);

#endif
