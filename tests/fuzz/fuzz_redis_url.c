/* tests/fuzz/fuzz_redis_url.c: redis_url_parse + redis_url_redacted.
 * Properties: on failure *out is empty and err is a terminated string that
 * never quotes a password-looking part of the input; on success the
 * redacted form re-parses to the same kind/host/port/path/db, and does not
 * change when the password does (so it cannot show it). */
#include "fuzz_common.h"
#include "broker/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = fuzz_cstr(data, size);
    redis_url u;
    char err[256];
    memset(err, 'x', sizeof(err));
    if (redis_url_parse(url, &u, err, sizeof(err)) != 0) {
        FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "err not terminated");
        FUZZ_CHECK(u.host == NULL && u.path == NULL && u.password == NULL && u.username == NULL,
                   "out not empty after failure");
        free(url);
        return 0;
    }
    FUZZ_CHECK((u.kind == REDIS_URL_TCP) == (u.host != NULL), "kind/host mismatch");
    FUZZ_CHECK((u.kind == REDIS_URL_UNIX) == (u.path != NULL), "kind/path mismatch");
    char *red = redis_url_redacted(&u);
    FUZZ_CHECK(red != NULL, "redacted NULL");
    if (u.password) {
        /* The redacted form must not depend on the password at all. */
        char *saved = u.password;
        u.password = (char *)"a-different-secret";
        char *red2 = redis_url_redacted(&u);
        u.password = saved;
        FUZZ_CHECK(strcmp(red, red2) == 0, "redacted URL depends on the password: %s vs %s", red, red2);
        free(red2);
    }
    redis_url v;
    char err2[256];
    /* The redacted form is for logs: a unix path is printed as is, not
     * percent-encoded, so only paths without URL metacharacters re-parse. */
    int plain_path = u.path == NULL || strpbrk(u.path, "%?#&+") == NULL;
    if (plain_path && redis_url_parse(red, &v, err2, sizeof(err2)) == 0) {
        FUZZ_CHECK(v.kind == u.kind && v.db == u.db, "redacted re-parse: kind/db differ (%s)", red);
        if (u.kind == REDIS_URL_TCP)
            FUZZ_CHECK(v.port == u.port && strcmp(v.host, u.host) == 0,
                       "redacted re-parse: host/port differ: '%s':%d vs '%s':%d (%s)", u.host, u.port,
                       v.host, v.port, red);
        else
            FUZZ_CHECK(strcmp(v.path, u.path) == 0, "redacted re-parse: path differs (%s)", red);
        redis_url_free(&v);
    }
    free(red);
    redis_url_free(&u);
    free(url);
    return 0;
}
