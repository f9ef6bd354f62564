/* broker/url.c: parsing Redis URLs and opening hiredis connections from them.
 *
 * The accepted grammar is documented in url.h. Parsing is strict: anything
 * we do not understand is an error with a reason an operator can act on,
 * because a silently misread URL (wrong db, no password) shows up much later
 * as "the worker consumes nothing". The password is never copied into any
 * error text or log line; redis_url_redacted() is the only way a URL is
 * turned back into text.
 *
 * Not here: TLS (rediss://), Sentinel, connection pooling, reconnect policy
 * (the transport owns reconnects). */
#include "broker/url.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "common/errbuf.h"
#include "common/buf.h"
#include "common/mem.h"

/* redis-py connection options that may appear in a URL query. They tune
 * timeouts and pools that this worker sets from its own config, so they are
 * accepted and ignored rather than refused. */
static const char *const ignored_query_params[] = {
    "socket_timeout", "socket_connect_timeout", "socket_keepalive",
    "retry_on_timeout", "health_check_interval", "max_connections",
    "client_name", NULL,
};

/* ---- Small helpers ------------------------------------------------------ */

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a new string. plus_is_space follows
 * urllib.parse.parse_qsl for query values. NULL on a malformed escape. */
static char *pct_decode(const char *s, size_t n, int plus_is_space) {
    buf b = BUF_INIT;
    buf_reserve(&b, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                buf_free(&b);
                return NULL;
            }
            buf_putc(&b, (char)(hi * 16 + lo));
            i += 2;
        } else if (s[i] == '+' && plus_is_space) {
            buf_putc(&b, ' ');
        } else {
            buf_putc(&b, s[i]);
        }
    }
    buf_append(&b, "", 0);   /* NUL-terminated even when empty */
    return buf_detach(&b);
}

/* Decimal digits only, no sign, value <= max. */
static int parse_uint(const char *s, size_t n, long max, long *out) {
    if (n == 0 || n > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

static void set_str(char **dst, char *value) {
    free(*dst);
    *dst = value;
}

/* ---- Parsing ------------------------------------------------------------ */

/* "user:password" (either part may be empty). Empty parts mean absent, as
 * redis-py's from_url treats them. */
static int parse_userinfo(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    const char *colon = memchr(s, ':', n);
    size_t ulen = colon ? (size_t)(colon - s) : n;
    if (ulen) {
        char *user = pct_decode(s, ulen, 0);
        if (!user) return errbuf_set(err, errlen, "bad percent-encoding in the user name");
        set_str(&u->username, user);
    }
    if (colon && n - ulen - 1 > 0) {
        char *pass = pct_decode(colon + 1, n - ulen - 1, 0);
        if (!pass) return errbuf_set(err, errlen, "bad percent-encoding in the password");
        set_str(&u->password, pass);
    }
    return 0;
}

static int parse_port(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    long port;
    if (parse_uint(s, n, 65535, &port) != 0 || port == 0)
        return errbuf_set(err, errlen, "bad port '%.*s' (expected 1-65535)", (int)(n > 16 ? 16 : n), s);
    u->port = (int)port;
    return 0;
}

/* host, host:port, [v6], [v6]:port; empty host means localhost. */
static int parse_hostport(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    const char *host = s;
    size_t hlen = n;
    const char *port = NULL;
    size_t plen = 0;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) return errbuf_set(err, errlen, "unterminated IPv6 address in host");
        host = s + 1;
        hlen = (size_t)(close - s) - 1;
        const char *after = close + 1;
        size_t rest = n - (size_t)(after - s);
        if (rest) {
            if (*after != ':') return errbuf_set(err, errlen, "unexpected text after IPv6 address");
            port = after + 1;
            plen = rest - 1;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon) {
            hlen = (size_t)(colon - s);
            port = colon + 1;
            plen = n - hlen - 1;
            if (memchr(port, ':', plen))
                return errbuf_set(err, errlen, "bad host (an IPv6 address needs [brackets])");
        }
    }
    u->host = hlen ? xstrndup(host, hlen) : xstrdup("localhost");
    u->port = REDIS_URL_DEFAULT_PORT;
    if (port) return parse_port(port, plen, u, err, errlen);
    return 0;
}

static int parse_db(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    long db;
    if (parse_uint(s, n, REDIS_URL_MAX_DB, &db) != 0)
        return errbuf_set(err, errlen, "db '%.*s' is not a number (expected /0, /1, ...)",
                    (int)(n > 32 ? 32 : n), s);
    u->db = (int)db;
    return 0;
}

/* The path of a redis:// URL: "", "/" or "/<db>". */
static int parse_tcp_path(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    if (n == 0 || (n == 1 && s[0] == '/')) return 0;
    return parse_db(s + 1, n - 1, u, err, errlen);
}

static int is_ignored_param(const char *key, size_t n) {
    for (size_t i = 0; ignored_query_params[i]; i++)
        if (strlen(ignored_query_params[i]) == n && memcmp(ignored_query_params[i], key, n) == 0)
            return 1;
    return 0;
}

static int parse_query_param(const char *key, size_t klen, const char *val, size_t vlen,
                             redis_url *u, char *err, size_t errlen) {
#define KEY_IS(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)
    if (KEY_IS("db") || KEY_IS("virtual_host")) return parse_db(val, vlen, u, err, errlen);
    if (KEY_IS("password") || KEY_IS("username")) {
        char *v = pct_decode(val, vlen, 1);
        if (!v) return errbuf_set(err, errlen, "bad percent-encoding in the %.*s parameter", (int)klen, key);
        if (*v == '\0') {
            free(v);
            v = NULL;
        }
        set_str(KEY_IS("password") ? &u->password : &u->username, v);
        return 0;
    }
    if (is_ignored_param(key, klen)) return 0;
    return errbuf_set(err, errlen, "unknown query parameter '%.*s' (supported: db, password, username)",
                (int)(klen > 40 ? 40 : klen), key);
#undef KEY_IS
}

static int parse_query(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    size_t i = 0;
    while (i < n) {
        const char *amp = memchr(s + i, '&', n - i);
        size_t end = amp ? (size_t)(amp - s) : n;
        const char *item = s + i;
        size_t ilen = end - i;
        if (ilen) {
            const char *eq = memchr(item, '=', ilen);
            size_t klen = eq ? (size_t)(eq - item) : ilen;
            const char *val = eq ? eq + 1 : item + ilen;
            size_t vlen = eq ? ilen - klen - 1 : 0;
            if (parse_query_param(item, klen, val, vlen, u, err, errlen) != 0) return -1;
        }
        i = end + 1;
    }
    return 0;
}

/* Everything between "scheme://" and "?" for redis://. */
static int parse_tcp(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    const char *at = NULL;
    for (size_t i = alen; i > 0; i--)       /* the last '@' ends the userinfo */
        if (s[i - 1] == '@') { at = s + i - 1; break; }
    const char *hp = s;
    size_t hplen = alen;
    if (at) {
        if (parse_userinfo(s, (size_t)(at - s), u, err, errlen) != 0) return -1;
        hp = at + 1;
        hplen = alen - (size_t)(hp - s);
    }
    u->kind = REDIS_URL_TCP;
    if (parse_hostport(hp, hplen, u, err, errlen) != 0) return -1;
    return parse_tcp_path(s + alen, n - alen, u, err, errlen);
}

/* unix:///path or unix://user:pass@/path. */
static int parse_unix(const char *s, size_t n, redis_url *u, char *err, size_t errlen) {
    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    if (alen) {
        if (s[alen - 1] != '@')
            return errbuf_set(err, errlen, "a unix socket URL has no host: use unix:///path/to/redis.sock");
        if (parse_userinfo(s, alen - 1, u, err, errlen) != 0) return -1;
    }
    if (!slash || n - alen <= 1) return errbuf_set(err, errlen, "missing socket path (use unix:///path/to/redis.sock)");
    char *path = pct_decode(s + alen, n - alen, 0);
    if (!path) return errbuf_set(err, errlen, "bad percent-encoding in the socket path");
    u->kind = REDIS_URL_UNIX;
    u->path = path;
    return 0;
}

int redis_url_parse(const char *url, redis_url *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    if (!url || !*url) return errbuf_set(err, errlen, "empty Redis URL");
    size_t len = strlen(url);
    if (len > REDIS_URL_MAX_LEN) return errbuf_set(err, errlen, "Redis URL longer than %d bytes", REDIS_URL_MAX_LEN);
    const char *sep = strstr(url, "://");
    if (!sep) return errbuf_set(err, errlen, "not a URL (expected redis://host:port/db)");
    size_t slen = (size_t)(sep - url);
    const char *rest = sep + 3;
    const char *q = strchr(rest, '?');
    size_t rlen = q ? (size_t)(q - rest) : strlen(rest);
    if (memchr(rest, '#', rlen)) return errbuf_set(err, errlen, "URL fragments ('#') are not supported; percent-encode '#' as %%23");

    int rc;
    if (slen == 5 && strncasecmp(url, "redis", 5) == 0) {
        rc = parse_tcp(rest, rlen, out, err, errlen);
    } else if ((slen == 4 && strncasecmp(url, "unix", 4) == 0) ||
               (slen == 6 && strncasecmp(url, "socket", 6) == 0) ||
               (slen == 12 && strncasecmp(url, "redis+socket", 12) == 0)) {
        rc = parse_unix(rest, rlen, out, err, errlen);
    } else if (slen == 6 && strncasecmp(url, "rediss", 6) == 0) {
        rc = errbuf_set(err, errlen, "TLS (rediss://) is not supported");
    } else {
        rc = errbuf_set(err, errlen, "unsupported scheme '%.*s' (expected redis://, unix:// or redis+socket://)",
                  (int)(slen > 20 ? 20 : slen), url);
    }
    if (rc == 0 && q) rc = parse_query(q + 1, strlen(q + 1), out, err, errlen);
    if (rc != 0) redis_url_free(out);
    return rc;
}

void redis_url_free(redis_url *u) {
    if (!u) return;
    free(u->host);
    free(u->path);
    free(u->username);
    if (u->password) {
        /* don't leave the secret lying around in freed heap memory */
        memset(u->password, 0, strlen(u->password));
        free(u->password);
    }
    memset(u, 0, sizeof(*u));
}

/* ---- Redaction ---------------------------------------------------------- */

/* Percent-encode what would break re-parsing the user name. */
static void put_user(buf *b, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || strchr("-._~", c)) buf_putc(b, (char)c);
        else buf_printf(b, "%%%02X", c);
    }
}

char *redis_url_redacted(const redis_url *u) {
    buf b = BUF_INIT;
    buf_puts(&b, u->kind == REDIS_URL_UNIX ? "unix://" : "redis://");
    if (u->username || u->password) {
        if (u->username) put_user(&b, u->username);
        if (u->password) buf_puts(&b, ":***");
        buf_putc(&b, '@');
    }
    if (u->kind == REDIS_URL_UNIX) {
        buf_printf(&b, "%s?db=%d", u->path ? u->path : "", u->db);
    } else {
        const char *h = u->host ? u->host : "localhost";
        if (strchr(h, ':')) buf_printf(&b, "[%s]:%d/%d", h, u->port, u->db);
        else buf_printf(&b, "%s:%d/%d", h, u->port, u->db);
    }
    return buf_detach(&b);
}

/* ---- Connecting --------------------------------------------------------- */

/* "127.0.0.1:6379" or "/run/redis.sock": where, for error text. */
static void endpoint_text(const redis_url *u, char *out, size_t n) {
    if (u->kind == REDIS_URL_UNIX) snprintf(out, n, "%s", u->path ? u->path : "?");
    else if (u->host && strchr(u->host, ':')) snprintf(out, n, "[%s]:%d", u->host, u->port);
    else snprintf(out, n, "%s:%d", u->host ? u->host : "localhost", u->port);
}

/* Server error text, with the password masked should a server ever echo it. */
static void scrub_secret(char *text, const char *secret) {
    if (!secret || !*secret) return;
    size_t n = strlen(secret);
    char *p;
    while ((p = strstr(text, secret)) != NULL) memset(p, '*', n);
}

static int send_auth(redisContext *c, const redis_url *u, const char *where, char *err, size_t errlen) {
    /* redis-py: AUTH user pass when a user is given (pass may be ""), else AUTH pass. */
    const char *argv[3];
    size_t argvlen[3];
    int argc = 0;
    argv[argc] = "AUTH";
    argvlen[argc++] = 4;
    if (u->username) {
        argv[argc] = u->username;
        argvlen[argc++] = strlen(u->username);
    }
    const char *pass = u->password ? u->password : "";
    argv[argc] = pass;
    argvlen[argc++] = strlen(pass);
    redisReply *r = redisCommandArgv(c, argc, argv, argvlen);
    if (!r) return errbuf_set(err, errlen, "AUTH to %s failed: %s", where, c->errstr);
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        char text[200];
        snprintf(text, sizeof(text), "%s", r->str ? r->str : "error");
        scrub_secret(text, u->password);
        if (u->username)
            rc = errbuf_set(err, errlen, "authentication as user '%s' at %s failed: %s", u->username, where, text);
        else
            rc = errbuf_set(err, errlen, "authentication at %s failed: %s", where, text);
    }
    freeReplyObject(r);
    return rc;
}

static int send_select(redisContext *c, int db, const char *where, char *err, size_t errlen) {
    redisReply *r = redisCommand(c, "SELECT %d", db);
    if (!r) return errbuf_set(err, errlen, "SELECT %d on %s failed: %s", db, where, c->errstr);
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR)
        rc = errbuf_set(err, errlen, "SELECT %d on %s failed: %s", db, where, r->str ? r->str : "error");
    freeReplyObject(r);
    return rc;
}

redisContext *redis_url_connect(const redis_url *u, double timeout_s, char *err, size_t errlen) {
    char where[300];
    endpoint_text(u, where, sizeof(where));
    struct timeval tv = {0, 0};
    if (timeout_s > 0) {
        tv.tv_sec = (time_t)timeout_s;
        tv.tv_usec = (suseconds_t)((timeout_s - (double)tv.tv_sec) * 1e6);
    }
    redisContext *c;
    if (u->kind == REDIS_URL_UNIX)
        c = timeout_s > 0 ? redisConnectUnixWithTimeout(u->path, tv) : redisConnectUnix(u->path);
    else
        c = timeout_s > 0 ? redisConnectWithTimeout(u->host, u->port, tv) : redisConnect(u->host, u->port);
    if (!c) {
        errbuf_set(err, errlen, "cannot connect to Redis at %s: out of memory", where);
        return NULL;
    }
    if (c->err) {
        errbuf_set(err, errlen, "cannot connect to Redis at %s: %s", where, c->errstr);
        redisFree(c);
        return NULL;
    }
    if (timeout_s > 0 && redisSetTimeout(c, tv) != REDIS_OK) {
        errbuf_set(err, errlen, "cannot set the command timeout on %s: %s", where, c->errstr);
        redisFree(c);
        return NULL;
    }
    if (u->kind == REDIS_URL_TCP && redisEnableKeepAlive(c) != REDIS_OK) {
        errbuf_set(err, errlen, "cannot enable TCP keepalive on %s: %s", where, c->errstr);
        redisFree(c);
        return NULL;
    }
    if ((u->password || u->username) && send_auth(c, u, where, err, errlen) != 0) {
        redisFree(c);
        return NULL;
    }
    if (u->db != 0 && send_select(c, u->db, where, err, errlen) != 0) {
        redisFree(c);
        return NULL;
    }
    return c;
}
