/* tests/fuzz/fuzz_ch_url.c: ClickHouse URL parsing through ch_client_new.
 * ch_client_new does no I/O (clickhouse.h; client.c: parse_url, then
 * curl_easy_init and header lists only), so the constructor itself is the
 * harness. Properties: failure fills a terminated message; on success, when
 * the input reads scheme://user:PW@... with PW of 6+ alphanumerics found
 * nowhere else in the input, the redacted URL does not contain PW.
 * chdb:// URLs are skipped: they open (dlopen + a session on a directory),
 * which is I/O, and their "parsing" is taking the path as is. */
#include <strings.h>

#include "fuzz_common.h"
#include "clickhouse/clickhouse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = fuzz_cstr(data, size);
    if (strncasecmp(url, "chdb://", 7) == 0) {
        free(url);
        return 0;
    }
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
    const char *sep = strstr(url, "://");
    if (sep) {
        const char *user_end = sep + 3 + strcspn(sep + 3, ":/?#@");
        if (*user_end == ':') {
            const char *pw = user_end + 1;
            size_t n = 0;
            while ((pw[n] >= 'a' && pw[n] <= 'z') || (pw[n] >= 'A' && pw[n] <= 'Z') ||
                   (pw[n] >= '0' && pw[n] <= '9'))
                n++;
            if (n >= 6 && pw[n] == '@') {
                char secret[64];
                if (n < sizeof(secret)) {
                    memcpy(secret, pw, n);
                    secret[n] = '\0';
                    if (strstr(pw + n, secret) == NULL && strstr(url, secret) == pw)
                        FUZZ_CHECK(strstr(red, secret) == NULL, "password %s in redacted URL %s", secret, red);
                }
            }
        }
    }
    ch_client_free(c);
    free(url);
    return 0;
}
