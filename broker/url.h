/* broker/url.h: Redis URLs for the broker, the result backend and the
 * telemetry streams, and opening a hiredis connection from one.
 *
 * Accepted forms (the subset redis-py / kombu / Celery accept that a worker
 * can honour without TLS):
 *   redis://[user:password@]host[:port][/db][?db=N&password=...]
 *   redis://:password@host            (password only: AUTH password)
 *   unix:///path/to/redis.sock?db=N   (also ?password=..., ?username=...)
 *   redis+socket:///path/to/redis.sock?db=N
 *   socket:///path/to/redis.sock?db=N (kombu's own spelling)
 * Defaults: host localhost, port 6379, db 0. User and password are
 * percent-decoded. A `db` in the query wins over the path, as in redis-py.
 * Anything else is refused with an operator-readable reason: other schemes
 * ("unsupported scheme 'amqp'"), rediss:// ("TLS (rediss://) is not
 * supported"), a bad port, a db that is not a number, unknown query
 * parameters (a typo such as ?bd=3 must not silently mean db 0).
 *
 * Credentials never appear in error text or in redis_url_redacted(). */
#ifndef PTEL_BROKER_URL_H
#define PTEL_BROKER_URL_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#define REDIS_URL_DEFAULT_PORT 6379
/* Highest db index accepted; Redis' default `databases` is 16, but servers
 * can be configured higher, so only a sanity bound is applied here. */
#define REDIS_URL_MAX_DB 1000000
/* URLs longer than this are refused (they come from config files and env). */
#define REDIS_URL_MAX_LEN 4096

typedef enum { REDIS_URL_TCP, REDIS_URL_UNIX } redis_url_kind;

typedef struct redis_url {
    redis_url_kind kind;
    char *host;       /* TCP: hostname or IP literal (no brackets); NULL for unix */
    int port;         /* TCP only */
    char *path;       /* unix: socket path; NULL for TCP */
    char *username;   /* NULL when absent (AUTH with one argument) */
    char *password;   /* NULL when absent (no AUTH) */
    int db;           /* 0 = no SELECT */
} redis_url;

/* Parse `url` into *out (zeroed first). 0 on success; -1 with a reason in
 * err (never containing the password) and *out left empty. */
int redis_url_parse(const char *url, redis_url *out, char *err, size_t errlen);
void redis_url_free(redis_url *u);

/* The URL in canonical form with the password shown as "***", for logs:
 * "redis://:***@127.0.0.1:6379/0", "unix:///run/redis.sock?db=2".
 * The caller owns the result (free()). */
char *redis_url_redacted(const redis_url *u);

/* Connect (TCP or unix socket) within timeout_s seconds, then use the same
 * timeout for every command, enable TCP keepalive, AUTH when a password or
 * user is set (AUTH user pass / AUTH pass, as redis-py does) and SELECT db
 * when db != 0. Returns a ready context, or NULL with the reason in err
 * (the reason names host/port or path, never the password). */
redisContext *redis_url_connect(const redis_url *u, double timeout_s, char *err, size_t errlen);

#endif
