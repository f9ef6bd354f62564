/* clickhouse/client.c: the HTTP transport to ClickHouse and its error model.
 *
 * Owns: URL parsing and redaction, the one libcurl easy handle per client
 * (kept alive between requests), auth headers, timeouts, gzip request
 * bodies (above a threshold; off by default for a loopback host), and
 * turning every failure (curl error, HTTP status, ClickHouse exception)
 * into a ch_error with a transient/permanent verdict.
 * Does not own: SQL (schema.c) or row bodies (encode.c).
 *
 * Credentials travel only in the X-ClickHouse-User / X-ClickHouse-Key
 * headers, never in the request URL, so no curl message, server log line or
 * error text can echo them; ch_client_redacted_url() is the form to log. */
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <zlib.h>

#include "common/mem.h"
#include "clickhouse/ch_chdb.h"
#include "clickhouse/ch_internal.h"

/* zlib level for request bodies: level 1 shrinks bench_insert's rows 7.5x
 * (146 MB -> 19 MB RowBinary) at no measurable cost in rows/s on loopback;
 * higher levels only add CPU for a few more percent. */
#define CH_GZIP_LEVEL 1

struct ch_client {
    ch_chdb *chdb;                    /* chdb:// URL: every request goes there (chdb.c) */
    CURL *curl;
    struct curl_slist *headers;       /* auth + "Expect:" */
    struct curl_slist *headers_gzip;  /* the same + Content-Encoding: gzip */
    char *endpoint;                   /* "http://host:port/" */
    char *base_params;                /* "database=x&setting=1" or "" */
    char *database;                   /* NULL when the URL names none */
    char *password;                   /* kept only to scrub it from messages */
    char *redacted;
    long connect_ms, total_ms;
    size_t gzip_threshold;
    int version_major, version_minor; /* -1 until asked */
    buf url;                          /* scratch: the request URL */
    buf gz;                           /* scratch: the gzipped body */
    buf resp;                         /* scratch: the response body */
    int resp_overflow;
    int exception_code;               /* from the response header, 0 if none */
    char curl_err[CURL_ERROR_SIZE];
    ch_client_stats stats;
    char *next_query_id;              /* ch_client_set_query_id: the next request only */
};

/* ---- Errors ------------------------------------------------------------------ */

void ch_error_set(ch_error *err, int code, long http_status, int transient,
                  const char *fmt, ...)
{
    if (err == NULL) return;
    err->code = code;
    err->http_status = http_status;
    err->transient = transient;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}

/* Codes where waiting helps: overload, limits that lift, network trouble
 * between servers, replicas catching up. */
static const int transient_codes[] = {
    23, 24, 95, 96,          /* CANNOT_READ_FROM_ISTREAM ... CANNOT_WRITE_TO_SOCKET */
    159, 160, 173,           /* TIMEOUT_EXCEEDED, TOO_SLOW, CANNOT_ALLOCATE_MEMORY */
    198, 201, 202, 203,      /* DNS_ERROR, QUOTA_EXPIRED, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION */
    209, 210, 225, 236,      /* SOCKET_TIMEOUT, NETWORK_ERROR, NO_ZOOKEEPER, ABORTED */
    241, 242, 243, 252,      /* MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, NOT_ENOUGH_SPACE, TOO_MANY_PARTS */
    279, 285, 286, 319,      /* ALL_CONNECTION_TRIES_FAILED, TOO_FEW_LIVE_REPLICAS, quorum, UNKNOWN_STATUS_OF_INSERT */
    364, 394, 425, 999,      /* TOO_MANY_REQUESTS, QUERY_WAS_CANCELLED, SYSTEM_ERROR, KEEPER_EXCEPTION */
};

/* Codes where the same request will fail the same way forever. */
static const int permanent_codes[] = {
    6, 7, 8, 16, 17, 19, 20, 21, 22, 25, 26, 27, 32, 33, 36, 38, 41, 43, 44, 46,
    47, 48, 50, 53, 57, 60, 62, 69, 70, 72, 73, 80, 81, 108, 115, 117, 131, 164,
    192, 193, 194, 195, 291, 321, 349, 376, 395, 441, 497, 516,
};

/* The subset of permanent codes that blame the rows, not the query. */
static const int row_codes[] = {
    6, 7, 17, 19, 20, 21, 22, 25, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117,
    131, 321, 349, 376, 441,
};

static int code_in(int code, const int *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == code) return 1;
    return 0;
}

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

int ch_classify(int code, long http_status)
{
    if (code > 0) {
        if (code_in(code, transient_codes, COUNT_OF(transient_codes))) return 1;
        if (code_in(code, permanent_codes, COUNT_OF(permanent_codes))) return 0;
    }
    /* Unknown code: 5xx means the server (or a proxy in front of it) failed,
     * 408/429 mean "later"; other 4xx are about the request itself. */
    if (http_status >= 500 || http_status == 408 || http_status == 429) return 1;
    return 0;
}

int ch_error_blames_rows(const ch_error *err)
{
    if (err == NULL || err->transient) return 0;
    return code_in(err->code, row_codes, COUNT_OF(row_codes));
}

/* "Code: 62, e.displayText() = DB::Exception: ..." (<= 21.x) or
 * "Code: 62. DB::Exception: ... (SYNTAX_ERROR) (version 23.8)" (newer). */
static int parse_code(const char *body, size_t len)
{
    static const char tag[] = "Code: ";
    size_t tl = sizeof(tag) - 1;
    for (size_t i = 0; i + tl < len; i++) {
        if (memcmp(body + i, tag, tl) != 0) continue;
        int code = 0;
        size_t j = i + tl, digits = 0;
        while (j < len && isdigit((unsigned char)body[j]) && digits < 6) {
            code = code * 10 + (body[j] - '0');
            j++, digits++;
        }
        if (digits > 0) return code;
    }
    return 0;
}

/* The readable part of an exception body: from after "DB::Exception: " to
 * before ", e.what()", whitespace-trimmed; control bytes become spaces. */
static void exception_text(const char *body, size_t len, char *out, size_t outsz)
{
    const char *p = body, *end = body + len;
    static const char exc[] = "DB::Exception: ";
    const char *hit = memmem(body, len, exc, sizeof(exc) - 1);
    if (hit != NULL) p = hit + sizeof(exc) - 1;
    const char *what = memmem(p, (size_t)(end - p), ", e.what() = ", 13);
    if (what != NULL) end = what;
    while (p < end && isspace((unsigned char)*p)) p++;
    while (end > p && isspace((unsigned char)end[-1])) end--;
    size_t n = 0;
    for (; p < end && n + 1 < outsz; p++)
        out[n++] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? ' ' : *p;
    out[n] = '\0';
}

void ch_error_from_response(ch_error *err, long http_status, int header_code,
                            const char *body, size_t len)
{
    if (err == NULL) return;
    int code = header_code > 0 ? header_code : parse_code(body, len);
    char text[400];
    exception_text(body, len, text, sizeof(text));
    if (text[0] == '\0') snprintf(text, sizeof(text), "(empty response body)");
    int transient = ch_classify(code, http_status);
    ch_error_set(err, code, http_status, transient,
                 "ClickHouse %s error (HTTP %ld, code %d): %s",
                 transient ? "transient" : "permanent", http_status, code, text);
}

void ch_error_from_exception(ch_error *err, const char *origin, const char *text, size_t len)
{
    if (err == NULL) return;
    int code = parse_code(text, len);
    char msg[400];
    exception_text(text, len, msg, sizeof(msg));
    int transient = ch_classify(code, 0);
    ch_error_set(err, code, 0, transient, "%s %s error (code %d): %s", origin,
                 transient ? "transient" : "permanent", code, msg[0] ? msg : "(no message)");
}

/* Replace every occurrence of the password in msg by "***". Credentials are
 * never sent in the URL, so this is a second line of defence only. */
void ch_scrub_secret(char *msg, size_t cap, const char *secret)
{
    if (secret == NULL || secret[0] == '\0') return;
    size_t sl = strlen(secret);
    char *from = msg, *hit;
    while ((hit = strstr(from, secret)) != NULL) {
        size_t used = strlen(msg), tail = strlen(hit + sl);
        if (used - sl + 3 >= cap) {   /* no room to widen: cut the message here */
            *hit = '\0';
            return;
        }
        memmove(hit + 3, hit + sl, tail + 1);
        memcpy(hit, "***", 3);
        from = hit + 3;               /* never rescan the mask (a secret may be "*") */
    }
}

/* ---- Identifiers and gzip ------------------------------------------------------ */

static int ident_part_valid(const char *s, size_t n)
{
    if (n == 0) return 0;
    if (!(isalpha((unsigned char)s[0]) || s[0] == '_')) return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return 0;
    return 1;
}

int ch_ident_valid(const char *s)
{
    if (s == NULL) return 0;
    size_t n = strlen(s);
    if (n == 0 || n > CH_IDENT_MAX) return 0;
    const char *dot = memchr(s, '.', n);
    if (dot == NULL) return ident_part_valid(s, n);
    return ident_part_valid(s, (size_t)(dot - s)) &&
           ident_part_valid(dot + 1, n - (size_t)(dot - s) - 1);
}

int ch_gzip(const char *data, size_t len, buf *out)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    /* windowBits 15 + 16: a gzip wrapper, which Content-Encoding: gzip means. */
    if (deflateInit2(&zs, CH_GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    size_t bound = deflateBound(&zs, (uLong)len) + 32;
    buf_reserve(out, bound);
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)out->data + out->len;
    zs.avail_out = (uInt)bound;
    int rc = deflate(&zs, Z_FINISH);
    size_t produced = bound - zs.avail_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) return -1;
    out->len += produced;
    out->data[out->len] = '\0';
    return 0;
}

/* ---- URL parsing ---------------------------------------------------------------- */

/* Only literal forms: a name that resolves to 127.0.0.1 through DNS or
 * /etc/hosts (other than "localhost") is treated as remote, which merely
 * keeps gzip on. */
int ch_host_is_loopback(const char *hostport)
{
    if (hostport == NULL) return 0;
    size_t n = strcspn(hostport, "]");
    if (hostport[0] == '[') return n == 4 && memcmp(hostport, "[::1", 4) == 0 && hostport[4] == ']';
    n = strcspn(hostport, ":");
    if (n == 9 && strncasecmp(hostport, "localhost", 9) == 0) return 1;
    if (n < 7 || strncmp(hostport, "127.", 4) != 0) return 0;
    int dots = 0, digits = 0;
    for (size_t i = 0; i < n; i++) {
        if (hostport[i] == '.') {
            if (digits == 0 || digits > 3) return 0;
            dots++, digits = 0;
        } else if (isdigit((unsigned char)hostport[i])) {
            digits++;
        } else {
            return 0;
        }
    }
    return dots == 3 && digits > 0 && digits <= 3;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_global_setup(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a new string; NULL on a bad escape, a NUL, or
 * CR/LF (which would break the header the value goes into). */
static char *pct_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n) { free(out); return NULL; }
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) { free(out); return NULL; }
            c = h * 16 + l;
            i += 2;
        }
        if (c == 0 || c == '\r' || c == '\n') { free(out); return NULL; }
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return out;
}

typedef struct parsed_url {
    int https;
    char *user, *password;   /* decoded; NULL when absent */
    char *hostport;          /* "host:port" or "[v6]:port" */
    char *database;          /* NULL when absent */
    buf params;              /* settings without database=, "a=1&b=2" */
} parsed_url;

static void parsed_url_free(parsed_url *p)
{
    free(p->user);
    free(p->password);
    free(p->hostport);
    free(p->database);
    buf_free(&p->params);
}

static int settings_valid_char(int c)
{
    return isalnum(c) || strchr("_-.%=+,:'()*~", c) != NULL;
}

/* Split the query part into settings, taking database= out. */
static int parse_settings(const char *q, parsed_url *p, ch_error *err)
{
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        if (n > 0) {
            const char *eq = memchr(q, '=', n);
            if (eq == NULL || eq == q) {
                ch_error_set(err, 0, 0, 0, "ClickHouse URL: setting '%.*s' is not name=value",
                             (int)(n > 64 ? 64 : n), q);
                return -1;
            }
            for (size_t i = 0; i < n; i++) {
                if (!settings_valid_char((unsigned char)q[i])) {
                    ch_error_set(err, 0, 0, 0, "ClickHouse URL: setting '%.*s' has a character "
                                 "that must be percent-encoded", (int)(n > 64 ? 64 : n), q);
                    return -1;
                }
            }
            size_t klen = (size_t)(eq - q);
            if (klen == 8 && memcmp(q, "database", 8) == 0) {
                free(p->database);
                p->database = xstrndup(eq + 1, n - klen - 1);
            } else {
                if (p->params.len > 0) buf_putc(&p->params, '&');
                buf_append(&p->params, q, n);
            }
        }
        q += n;
        if (*q == '&') q++;
    }
    return 0;
}

static int parse_authority(const char *a, size_t n, int https, parsed_url *p, ch_error *err)
{
    const char *at = NULL;
    for (size_t i = 0; i < n; i++)
        if (a[i] == '@') at = a + i;       /* the last '@' ends the userinfo */
    if (at != NULL) {
        const char *ui = a;
        size_t uilen = (size_t)(at - a);
        const char *colon = memchr(ui, ':', uilen);
        size_t ulen = colon ? (size_t)(colon - ui) : uilen;
        p->user = pct_decode(ui, ulen);
        if (colon) p->password = pct_decode(colon + 1, uilen - ulen - 1);
        if (p->user == NULL || (colon && p->password == NULL)) {
            /* Say which part, never echo it. */
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: user or password has a bad percent-escape "
                         "or a control character");
            return -1;
        }
        n -= (size_t)(at + 1 - a);
        a = at + 1;
    }
    if (n == 0) {
        ch_error_set(err, 0, 0, 0, "ClickHouse URL: no host");
        return -1;
    }
    const char *host_end = a + n;
    if (a[0] == '[') {
        host_end = memchr(a, ']', n);
        if (host_end == NULL) {
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: unterminated [IPv6] host");
            return -1;
        }
        host_end++;
    } else {
        const char *colon = memchr(a, ':', n);
        if (colon) host_end = colon;
    }
    for (const char *s = a; s < host_end; s++) {
        if (!(isalnum((unsigned char)*s) || strchr("-._[]:", *s))) {
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: bad character in host");
            return -1;
        }
    }
    long port = https ? 8443 : 8123;
    if (host_end < a + n) {
        if (*host_end != ':' || host_end + 1 == a + n) {
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: bad port");
            return -1;
        }
        port = 0;
        for (const char *s = host_end + 1; s < a + n; s++) {
            if (!isdigit((unsigned char)*s) || port > 65535) {
                ch_error_set(err, 0, 0, 0, "ClickHouse URL: bad port");
                return -1;
            }
            port = port * 10 + (*s - '0');
        }
        if (port < 1 || port > 65535) {
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: port out of range");
            return -1;
        }
    }
    buf hp = BUF_INIT;
    buf_printf(&hp, "%.*s:%ld", (int)(host_end - a), a, port);
    p->hostport = buf_detach(&hp);
    return 0;
}

static int parse_url(const char *url, parsed_url *p, ch_error *err)
{
    memset(p, 0, sizeof(*p));
    buf_init(&p->params);
    if (url == NULL) {
        ch_error_set(err, 0, 0, 0, "ClickHouse URL: missing");
        return -1;
    }
    const char *rest;
    if (strncasecmp(url, "http://", 7) == 0) {
        rest = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p->https = 1;
        rest = url + 8;
    } else {
        ch_error_set(err, 0, 0, 0, "ClickHouse URL: scheme must be http:// or https://");
        return -1;
    }
    size_t alen = strcspn(rest, "/?#");
    if (parse_authority(rest, alen, p->https, p, err) != 0) return -1;
    const char *s = rest + alen;
    if (*s == '/') {
        s++;
        size_t dlen = strcspn(s, "?#/");
        if (s[dlen] == '/' && s[dlen + 1] != '\0' && s[dlen + 1] != '?') {
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: path must be at most /database");
            return -1;
        }
        if (dlen > 0) p->database = xstrndup(s, dlen);
        s += dlen;
        if (*s == '/') s++;
    }
    if (*s == '#') {
        ch_error_set(err, 0, 0, 0, "ClickHouse URL: fragments are not allowed");
        return -1;
    }
    if (*s == '?') {
        if (strchr(s, '#') != NULL) {
            ch_error_set(err, 0, 0, 0, "ClickHouse URL: fragments are not allowed");
            return -1;
        }
        if (parse_settings(s + 1, p, err) != 0) return -1;
    }
    if (p->database != NULL && (!ident_part_valid(p->database, strlen(p->database)))) {
        ch_error_set(err, 0, 0, 0, "ClickHouse URL: database '%.64s' is not a plain identifier",
                     p->database);
        return -1;
    }
    return 0;
}

/* ---- Client lifecycle ------------------------------------------------------------ */

static struct curl_slist *header_list(const parsed_url *p, int gzip)
{
    struct curl_slist *h = NULL;
    buf line = BUF_INIT;
    if (p->user != NULL && p->user[0] != '\0') {
        buf_printf(&line, "X-ClickHouse-User: %s", p->user);
        h = curl_slist_append(h, buf_cstr(&line));
        buf_reset(&line);
    }
    if (p->password != NULL && p->password[0] != '\0') {
        buf_printf(&line, "X-ClickHouse-Key: %s", p->password);
        h = curl_slist_append(h, buf_cstr(&line));
        /* Wipe the copy: the slist keeps its own. */
        memset(line.data, 0, line.len);
    }
    buf_free(&line);
    /* No "Expect: 100-continue" round trip before large bodies. */
    h = curl_slist_append(h, "Expect:");
    if (gzip) h = curl_slist_append(h, "Content-Encoding: gzip");
    return h;
}

static char *redact(const parsed_url *p)
{
    buf r = BUF_INIT;
    buf_puts(&r, p->https ? "https://" : "http://");
    if (p->user != NULL) {
        buf_puts(&r, p->user);
        if (p->password != NULL) buf_puts(&r, ":***");
        buf_putc(&r, '@');
    }
    buf_puts(&r, p->hostport);
    buf_putc(&r, '/');
    if (p->database) buf_puts(&r, p->database);
    if (p->params.len > 0) {
        buf_putc(&r, '?');
        buf_append(&r, p->params.data, p->params.len);
    }
    return buf_detach(&r);
}

/* chdb://PATH: no curl, no URL settings; the session lives in chdb.c. */
static ch_client *chdb_client_new(const char *url, ch_error *err)
{
    ch_chdb *db = ch_chdb_open(url, err);
    if (db == NULL) return NULL;
    ch_client *c = xcalloc(1, sizeof(*c));
    c->chdb = db;
    c->redacted = xstrdup(url);   /* a path, no credentials */
    c->database = ch_chdb_database(db) ? xstrdup(ch_chdb_database(db)) : NULL;
    c->version_major = c->version_minor = -1;
    ch_chdb_set_timeout(db, CH_TOTAL_TIMEOUT_MS_DEFAULT);
    return c;
}

ch_client *ch_client_new(const char *url, ch_error *err)
{
    if (url != NULL && strncasecmp(url, "chdb://", 7) == 0) return chdb_client_new(url, err);
    parsed_url p;
    if (parse_url(url, &p, err) != 0) {
        parsed_url_free(&p);
        return NULL;
    }
    pthread_once(&curl_once, curl_global_setup);
    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        ch_error_set(err, 0, 0, 1, "ClickHouse client: curl_easy_init failed");
        parsed_url_free(&p);
        return NULL;
    }
    ch_client *c = xcalloc(1, sizeof(*c));
    c->curl = curl;
    c->headers = header_list(&p, 0);
    c->headers_gzip = header_list(&p, 1);
    buf e = BUF_INIT;
    buf_printf(&e, "%s://%s/", p.https ? "https" : "http", p.hostport);
    c->endpoint = buf_detach(&e);
    buf bp = BUF_INIT;
    if (p.database) buf_printf(&bp, "database=%s", p.database);
    if (p.params.len > 0) {
        if (bp.len > 0) buf_putc(&bp, '&');
        buf_append(&bp, p.params.data, p.params.len);
    }
    c->base_params = bp.len > 0 ? buf_detach(&bp) : xstrdup("");
    buf_free(&bp);
    c->database = p.database ? xstrdup(p.database) : NULL;
    c->password = p.password ? xstrdup(p.password) : NULL;
    c->redacted = redact(&p);
    c->connect_ms = CH_CONNECT_TIMEOUT_MS_DEFAULT;
    c->total_ms = CH_TOTAL_TIMEOUT_MS_DEFAULT;
    c->gzip_threshold = ch_host_is_loopback(p.hostport) ? 0 : CH_GZIP_THRESHOLD_DEFAULT;
    c->version_major = c->version_minor = -1;
    buf_init(&c->url);
    buf_init(&c->gz);
    buf_init(&c->resp);
    if (p.password) memset(p.password, 0, strlen(p.password));
    parsed_url_free(&p);
    return c;
}

void ch_client_free(ch_client *c)
{
    if (c == NULL) return;
    ch_chdb_close(c->chdb);
    curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    curl_slist_free_all(c->headers_gzip);
    free(c->endpoint);
    free(c->base_params);
    free(c->database);
    if (c->password) memset(c->password, 0, strlen(c->password));
    free(c->password);
    free(c->redacted);
    buf_free(&c->url);
    buf_free(&c->gz);
    buf_free(&c->resp);
    free(c->next_query_id);
    free(c);
}

const char *ch_client_redacted_url(const ch_client *c) { return c->redacted; }
const char *ch_client_database(const ch_client *c) { return c->database; }

void ch_client_set_timeouts(ch_client *c, long connect_ms, long total_ms)
{
    if (connect_ms > 0) c->connect_ms = connect_ms;
    if (total_ms > 0) c->total_ms = total_ms;
    if (total_ms > 0 && c->chdb != NULL) ch_chdb_set_timeout(c->chdb, total_ms);
}

void ch_client_set_gzip_threshold(ch_client *c, size_t bytes) { c->gzip_threshold = bytes; }
size_t ch_client_gzip_threshold(const ch_client *c) { return c->gzip_threshold; }

void ch_client_stats_get(const ch_client *c, ch_client_stats *out) { *out = c->stats; }

/* ---- Requests -------------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    ch_client *c = ud;
    size_t n = size * nmemb;
    if (c->resp.len + n > CH_RESPONSE_MAX_BYTES) {
        c->resp_overflow = 1;
        return 0;   /* makes curl fail with CURLE_WRITE_ERROR */
    }
    buf_append(&c->resp, ptr, n);
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    ch_client *c = ud;
    size_t n = size * nmemb;
    static const char name[] = "X-ClickHouse-Exception-Code:";
    size_t nl = sizeof(name) - 1;
    if (n > nl && strncasecmp(ptr, name, nl) == 0) {
        int code = 0;
        for (size_t i = nl; i < n && code < 100000; i++) {
            if (isdigit((unsigned char)ptr[i])) code = code * 10 + (ptr[i] - '0');
            else if (ptr[i] != ' ') break;
        }
        c->exception_code = code;
    }
    return n;
}

static void build_url(ch_client *c, int flags, const char *query, const char *params)
{
    buf_reset(&c->url);
    buf_puts(&c->url, c->endpoint);
    char sep = '?';
    const char *base = c->base_params;
    if (flags & CH_REQ_NO_DATABASE) {
        /* base_params starts with database=... when the URL named one. */
        if (c->database != NULL) {
            base = strchr(base, '&');
            base = base ? base + 1 : "";
        }
    }
    const char *parts[3] = {base, params, (flags & CH_REQ_WAIT_END) ? "wait_end_of_query=1" : NULL};
    for (size_t i = 0; i < 3; i++) {
        if (parts[i] == NULL || parts[i][0] == '\0') continue;
        buf_putc(&c->url, sep);
        buf_puts(&c->url, parts[i]);
        sep = '&';
    }
    if (c->next_query_id != NULL) {
        char *q = curl_easy_escape(c->curl, c->next_query_id, 0);
        buf_putc(&c->url, sep);
        buf_puts(&c->url, "query_id=");
        buf_puts(&c->url, q);
        curl_free(q);
        sep = '&';
    }
    if (query != NULL) {
        char *q = curl_easy_escape(c->curl, query, 0);
        buf_putc(&c->url, sep);
        buf_puts(&c->url, "query=");
        buf_puts(&c->url, q);
        curl_free(q);
    }
}

/* Everything curl says is about reaching the server, so retrying may help,
 * except a URL it cannot use at all. */
static int curl_transient(CURLcode rc)
{
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
        return 0;
    default:
        return 1;
    }
}

void ch_client_set_query_id(ch_client *c, const char *query_id)
{
    free(c->next_query_id);
    c->next_query_id = query_id && query_id[0] ? xstrdup(query_id) : NULL;
}

static int ch_request_once(ch_client *c, int flags, const char *query, const char *params,
                           const char *body, size_t body_len, buf *out, ch_error *err)
{
    if (c->chdb != NULL) {
        c->stats.requests++;
        c->stats.body_bytes += body_len;
        c->stats.wire_bytes += body_len;
        int rc = ch_chdb_request(c->chdb, flags, query, params, body, body_len, out, err);
        c->stats.failures += rc != 0;
        return rc;
    }
    build_url(c, flags, query, params);
    int gzip = c->gzip_threshold > 0 && body_len >= c->gzip_threshold;
    const char *send = body ? body : "";
    size_t send_len = body ? body_len : 0;
    if (gzip) {
        buf_reset(&c->gz);
        if (ch_gzip(send, send_len, &c->gz) != 0) {
            ch_error_set(err, 0, 0, 0, "ClickHouse client: gzip of a %zu-byte body failed", body_len);
            c->stats.failures++;
            return -1;
        }
        send = c->gz.data;
        send_len = c->gz.len;
    }
    c->stats.requests++;
    c->stats.gzip_requests += gzip;
    c->stats.body_bytes += body_len;
    c->stats.wire_bytes += send_len;
    buf_reset(&c->resp);
    c->resp_overflow = 0;
    c->exception_code = 0;
    c->curl_err[0] = '\0';

    CURL *h = c->curl;
    curl_easy_setopt(h, CURLOPT_URL, buf_cstr(&c->url));
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, send);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)send_len);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, gzip ? c->headers_gzip : c->headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->total_ms);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");

    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK) {
        if (c->resp_overflow) {
            ch_error_set(err, 0, status, 0, "ClickHouse response from %s exceeds %u bytes",
                         c->redacted, (unsigned)CH_RESPONSE_MAX_BYTES);
        } else {
            ch_error_set(err, 0, status, curl_transient(rc), "ClickHouse at %s unreachable: %s",
                         c->redacted, c->curl_err[0] ? c->curl_err : curl_easy_strerror(rc));
        }
        if (err) ch_scrub_secret(err->msg, sizeof(err->msg), c->password);
        c->stats.failures++;
        return -1;
    }
    if (status != 200) {
        ch_error_from_response(err, status, c->exception_code, c->resp.data ? c->resp.data : "",
                               c->resp.len);
        if (err) ch_scrub_secret(err->msg, sizeof(err->msg), c->password);
        c->stats.failures++;
        return -1;
    }
    if (out != NULL && c->resp.len > 0) buf_append(out, c->resp.data, c->resp.len);
    return 0;
}

int ch_request(ch_client *c, int flags, const char *query, const char *params,
               const char *body, size_t body_len, buf *out, ch_error *err)
{
    int rc = ch_request_once(c, flags, query, params, body, body_len, out, err);
    ch_client_set_query_id(c, NULL);   /* it named this request only */
    return rc;
}

int ch_query(ch_client *c, const char *sql, buf *out, ch_error *err)
{
    return ch_request(c, CH_REQ_WAIT_END, NULL, NULL, sql, strlen(sql), out, err);
}

int ch_server_version(ch_client *c, int *major, int *minor, ch_error *err)
{
    if (c->version_major < 0) {
        buf out = BUF_INIT;
        /* Without ?database=: asked before CREATE DATABASE too. */
        static const char sql[] = "SELECT version()";
        if (ch_request(c, CH_REQ_NO_DATABASE | CH_REQ_WAIT_END, NULL, NULL, sql, sizeof(sql) - 1,
                       &out, err) != 0) {
            buf_free(&out);
            return -1;
        }
        int ma = -1, mi = -1;
        if (sscanf(buf_cstr(&out), "%d.%d", &ma, &mi) != 2 || ma < 0 || mi < 0) {
            ch_error_set(err, 0, 200, 0, "ClickHouse version() answered '%.40s', not N.N...",
                         buf_cstr(&out));
            buf_free(&out);
            return -1;
        }
        buf_free(&out);
        c->version_major = ma;
        c->version_minor = mi;
    }
    if (major) *major = c->version_major;
    if (minor) *minor = c->version_minor;
    return 0;
}
