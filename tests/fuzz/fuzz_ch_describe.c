/* tests/fuzz/fuzz_ch_describe.c: ch_table_from_describe on arbitrary
 * DESCRIBE TABLE output (TabSeparated). Property: success yields exactly
 * CH_COL_COUNT columns, each column id once, types terminated. */
#include "fuzz_common.h"
#include "clickhouse/clickhouse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ch_table t;
    ch_error err;
    memset(&t, 0, sizeof(t));
    if (ch_table_from_describe((const char *)data, size, &t, &err) != 0) {
        FUZZ_CHECK(memchr(err.msg, '\0', sizeof(err.msg)) != NULL, "err.msg not terminated");
        return 0;
    }
    FUZZ_CHECK(t.ncols == CH_COL_COUNT, "ncols %zu", t.ncols);
    int seen[CH_COL_COUNT] = {0};
    for (size_t i = 0; i < t.ncols; i++) {
        FUZZ_CHECK((unsigned)t.cols[i].id < CH_COL_COUNT, "bad column id");
        FUZZ_CHECK(!seen[t.cols[i].id]++, "column %s twice", ch_column_name(t.cols[i].id));
        FUZZ_CHECK(memchr(t.cols[i].type, '\0', sizeof(t.cols[i].type)) != NULL, "type not terminated");
    }
    return 0;
}
