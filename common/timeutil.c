/* common/timeutil.c: clocks, the ISO-8601 parser used for Celery eta/expires
 * and telemetry `ts`, and the three text forms the worker writes (see
 * timeutil.h). Owns no state.
 *
 * Calendar arithmetic is proleptic Gregorian (Python's datetime) on int64
 * microseconds, using the days-from-civil algorithm, never struct tm or the
 * process time zone: every time we read or write is UTC or carries its own
 * offset. Years are limited to 1..9999 on input, as Python's datetime is. */
#include "common/timeutil.h"

#include <time.h>

#define SEC_PER_DAY 86400

/* ---- Clocks ---- */

int64_t time_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * USEC_PER_SEC + ts.tv_nsec / 1000;
}

/* Same arithmetic as CPython's _PyTime_AsSecondsDouble for time.time(). */
double time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double time_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- Calendar arithmetic ---- */

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Days since 1970-01-01 for a valid civil date (Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The inverse of days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* ---- Parsing ---- */

/* Fraction digits accepted: nanosecond precision (what JavaScript, Go and
 * Java emit). Digits past the sixth are truncated, as Python does. */
#define ISO_MAX_FRACTION_DIGITS 9

typedef struct iso_cursor {
    const char *s;
    size_t len, pos;
} iso_cursor;

/* Reads exactly n ASCII digits into *out; -1 if they are not there. */
static int read_digits(iso_cursor *c, int n, int *out)
{
    if (c->len - c->pos < (size_t)n) return -1;
    int v = 0;
    for (int i = 0; i < n; i++) {
        char ch = c->s[c->pos + (size_t)i];
        if (ch < '0' || ch > '9') return -1;
        v = v * 10 + (ch - '0');
    }
    c->pos += (size_t)n;
    *out = v;
    return 0;
}

static int expect_char(iso_cursor *c, char ch)
{
    if (c->pos >= c->len || c->s[c->pos] != ch) return -1;
    c->pos++;
    return 0;
}

/* ".f" to ".fffffffff" -> microseconds (truncated); absent -> 0. */
static int parse_fraction(iso_cursor *c, int *usec)
{
    *usec = 0;
    if (c->pos == c->len || c->s[c->pos] != '.') return 0;
    c->pos++;
    int ndigits = 0;
    while (c->pos < c->len && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
        if (++ndigits > ISO_MAX_FRACTION_DIGITS) return -1;
        if (ndigits <= 6) *usec = *usec * 10 + (c->s[c->pos] - '0');
        c->pos++;
    }
    if (ndigits == 0) return -1;
    for (int i = ndigits; i < 6; i++) *usec *= 10;
    return 0;
}

/* Zone designator: "Z", "+hh:mm", "-hh:mm", "+hhmm", "-hhmm", with
 * |offset| < 24h as Python's timezone() requires. Nothing means UTC. The
 * offset is what the local time is ahead of UTC. */
static int parse_offset(iso_cursor *c, int64_t *offset_us)
{
    *offset_us = 0;
    if (c->pos == c->len) return 0;
    char sign = c->s[c->pos++];
    if (sign == 'Z') return 0;
    if (sign != '+' && sign != '-') return -1;
    int hh, mm;
    if (read_digits(c, 2, &hh) < 0) return -1;
    if (c->pos < c->len && c->s[c->pos] == ':') c->pos++;
    if (read_digits(c, 2, &mm) < 0) return -1;
    if (hh > 23 || mm > 59) return -1;
    int64_t off = ((int64_t)hh * 3600 + (int64_t)mm * 60) * USEC_PER_SEC;
    *offset_us = sign == '-' ? -off : off;
    return 0;
}

/* Besides the header's form, seconds may be omitted ("12:30"), as
 * datetime.fromisoformat allows: a browser's toISOString never does this,
 * but a hand-written eta might. */
int time_parse_iso8601(const char *s, size_t len, int64_t *out_us)
{
    iso_cursor c = {s, len, 0};
    int year, mon, day, hh, mi, ss = 0, usec = 0;
    if (read_digits(&c, 4, &year) < 0 || expect_char(&c, '-') < 0 ||
        read_digits(&c, 2, &mon) < 0 || expect_char(&c, '-') < 0 ||
        read_digits(&c, 2, &day) < 0)
        return -1;
    if (c.pos >= c.len || (s[c.pos] != 'T' && s[c.pos] != ' ')) return -1;
    c.pos++;
    if (read_digits(&c, 2, &hh) < 0 || expect_char(&c, ':') < 0 ||
        read_digits(&c, 2, &mi) < 0)
        return -1;
    if (c.pos < c.len && s[c.pos] == ':') {
        c.pos++;
        if (read_digits(&c, 2, &ss) < 0 || parse_fraction(&c, &usec) < 0) return -1;
    }
    int64_t offset_us;
    if (parse_offset(&c, &offset_us) < 0 || c.pos != c.len) return -1;
    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) ||
        hh > 23 || mi > 59 || ss > 59)
        return -1;
    int64_t secs = days_from_civil(year, mon, day) * SEC_PER_DAY + hh * 3600 + mi * 60 + ss;
    *out_us = secs * USEC_PER_SEC + usec - offset_us;
    return 0;
}

/* ---- Formatting ---- */

typedef struct civil_time {
    int64_t year;
    int mon, day, hh, mi, ss, usec;
} civil_time;

/* Floor division throughout, so times before 1970 format correctly. */
static civil_time civil_from_us(int64_t us)
{
    civil_time t;
    int64_t secs = us / USEC_PER_SEC, rem = us % USEC_PER_SEC;
    if (rem < 0) {
        rem += USEC_PER_SEC;
        secs--;
    }
    int64_t days = secs / SEC_PER_DAY, sod = secs % SEC_PER_DAY;
    if (sod < 0) {
        sod += SEC_PER_DAY;
        days--;
    }
    civil_from_days(days, &t.year, &t.mon, &t.day);
    t.hh = (int)(sod / 3600);
    t.mi = (int)(sod / 60 % 60);
    t.ss = (int)(sod % 60);
    t.usec = (int)rem;
    return t;
}

static void put_date_time(buf *out, const civil_time *t, char sep)
{
    buf_printf(out, "%04lld-%02d-%02d%c%02d:%02d:%02d", (long long)t->year, t->mon,
               t->day, sep, t->hh, t->mi, t->ss);
}

void time_format_date_done(buf *out, int64_t us)
{
    civil_time t = civil_from_us(us);
    put_date_time(out, &t, 'T');
    if (t.usec) buf_printf(out, ".%06d", t.usec);   /* isoformat() omits zero */
}

void time_format_iso_offset(buf *out, int64_t us)
{
    time_format_date_done(out, us);
    buf_puts(out, "+00:00");
}

/* Milliseconds are truncated, not rounded: rounding 23:59:59.9996 up would
 * carry into the next second, minute and day (and isoformat(timespec=
 * 'milliseconds') truncates too). */
void time_format_clickhouse(buf *out, int64_t us, int with_millis)
{
    civil_time t = civil_from_us(us);
    put_date_time(out, &t, ' ');
    if (with_millis) buf_printf(out, ".%03d", t.usec / 1000);
}
