/* tests/fuzz/fuzz_timeutil.c: time_parse_iso8601 on arbitrary bytes.
 * Properties, for every accepted input: the value formats back (isoformat
 * with +00:00, Celery's date_done, ClickHouse text) into strings that parse
 * to the same microsecond (ClickHouse: to the millisecond, rounded down). */
#include "fuzz_common.h"
#include "common/buf.h"
#include "common/timeutil.h"

#define MIN_US (-62135596800000000LL)  /* 0001-01-01T00:00:00Z */
#define MAX_US 253402300799999999LL     /* 9999-12-31T23:59:59.999999Z */

static void round_trip(int64_t us, int kind)
{
    buf b = BUF_INIT;
    int64_t back = 0, want = us;
    if (kind == 0) time_format_iso_offset(&b, us);
    else if (kind == 1) time_format_date_done(&b, us);
    else {
        time_format_clickhouse(&b, us, 1);
        want = us - (((us % 1000) + 1000) % 1000);   /* floor to the millisecond */
    }
    FUZZ_CHECK(time_parse_iso8601(b.data, b.len, &back) == 0, "own format %d refused: %s (us=%lld)",
               kind, buf_cstr(&b), (long long)us);
    FUZZ_CHECK(back == want, "format %d round trip: %s -> %lld, want %lld", kind, buf_cstr(&b),
               (long long)back, (long long)want);
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t us = 0;
    if (time_parse_iso8601((const char *)data, size, &us) != 0) return 0;
    /* An offset can carry 0001-01-01 or 9999-12-31 outside datetime's range
     * once converted to UTC; Python cannot format those either. */
    if (us < MIN_US || us > MAX_US) return 0;
    for (int k = 0; k < 3; k++) round_trip(us, k);
    return 0;
}
