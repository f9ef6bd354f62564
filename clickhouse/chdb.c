/* clickhouse/chdb.c: the chdb:// backend, ClickHouse as a library (chDB).
 *
 * Owns: loading libchdb.so at run time (dlopen: the worker neither links nor
 * needs it unless a chdb:// URL is used), one chDB session per client on a
 * data directory, and running ch_request's statements on it: SQL, INSERT
 * bodies inline after "FORMAT X", per-statement settings, and chDB's
 * exception text turned into a ch_error with ClickHouse's code.
 * Does not own: SQL, DDL or row bodies (schema.c, encode.c produce exactly
 * what they send over HTTP), error classification (client.c's ch_classify).
 *
 * Why it exists: the Debian ClickHouse used by the other tests is 18.16, so
 * the production DDL (DateTime64, TTL), insert_deduplication_token and the
 * modern dashboard dialect would otherwise never meet a server. chDB 26.x
 * runs them in-process with no server to start (tests/chdb/fetch.sh).
 *
 * The C API is declared here, not included: the npm package that ships
 * libchdb.so (@chdb/lib-linux-x64-gnu) has no header. The declarations
 * follow chdb-io/chdb programs/local/chdb.h (the chdb_connection API, stable
 * since chDB 3.x); only functions exported by 26.5 are used. */
#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/mem.h"
#include "clickhouse/ch_chdb.h"
#include "clickhouse/ch_internal.h"

/* ---- The C API (chdb.h) --------------------------------------------------------- */

typedef struct chdb_result_ { void *internal_data; } chdb_result;
typedef struct chdb_connection_ { void *internal_data; } *chdb_connection;

static struct {
    void *handle;
    char path[512];
    chdb_connection *(*connect)(int argc, char **argv);
    void (*close_conn)(chdb_connection *conn);
    chdb_result *(*query_n)(chdb_connection conn, const char *query, size_t query_len,
                            const char *format, size_t format_len);
    char *(*result_buffer)(chdb_result *r);
    size_t (*result_length)(chdb_result *r);
    const char *(*result_error)(chdb_result *r);
    void (*destroy_result)(chdb_result *r);
    void (*set_signal_handlers_enabled)(int enabled);   /* optional */
} api;
static pthread_mutex_t api_lock = PTHREAD_MUTEX_INITIALIZER;

/* The output format of every statement without a FORMAT clause: the HTTP
 * interface's default, so callers parse the same text from both backends. */
static const char out_format[] = "TabSeparated";

/* ---- Loading -------------------------------------------------------------------- */

static const char install_hint[] =
    "install it with tests/chdb/fetch.sh [DIR] (npm package @chdb/lib-linux-x64-gnu) and set "
    CH_CHDB_LIB_ENV "=DIR/libchdb.so";

static int bind_symbols(void *h, const char *path, ch_error *err)
{
    static const char *const names[] = {
        "chdb_connect", "chdb_close_conn", "chdb_query_n", "chdb_result_buffer",
        "chdb_result_length", "chdb_result_error", "chdb_destroy_query_result",
    };
    void *sym[sizeof(names) / sizeof(names[0])];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        sym[i] = dlsym(h, names[i]);
        if (sym[i] == NULL) {
            ch_error_set(err, 0, 0, 0, "chDB library %s lacks %s (too old a chDB?): %s", path,
                         names[i], install_hint);
            return -1;
        }
    }
    /* Function pointers from dlsym: POSIX guarantees the conversion. */
    *(void **)&api.connect = sym[0];
    *(void **)&api.close_conn = sym[1];
    *(void **)&api.query_n = sym[2];
    *(void **)&api.result_buffer = sym[3];
    *(void **)&api.result_length = sym[4];
    *(void **)&api.result_error = sym[5];
    *(void **)&api.destroy_result = sym[6];
    *(void **)&api.set_signal_handlers_enabled = dlsym(h, "chdb_set_signal_handlers_enabled");
    return 0;
}

/* GCC defines this under -fsanitize=address (clang: __has_feature). */
#if defined(__SANITIZE_ADDRESS__)
#define CH_CHDB_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CH_CHDB_UNDER_ASAN 1
#endif
#endif

static int load_locked(ch_error *err)
{
    if (api.handle != NULL) return 0;
#ifdef CH_CHDB_UNDER_ASAN
    /* Measured with chDB 26.5.3, GCC 12, glibc 2.36: dlopen dies in the
     * library's initializers (its __pthread_mutex_lock calls reach libasan's
     * interceptor, whose real function is NULL on glibc >= 2.34), and with
     * that worked around the two allocators mix and abort. Refuse cleanly. */
    ch_error_set(err, 0, 0, 0, "chDB cannot run in this AddressSanitizer build (libchdb.so "
                 "crashes when loaded under ASan): use a build configured without "
                 "-Db_sanitize=address for chdb:// URLs");
    return -1;
#endif
    const char *env = getenv(CH_CHDB_LIB_ENV);
    static const char *const defaults[] = CH_CHDB_LIB_DEFAULTS;
    const char *const *cand = defaults;
    size_t ncand = sizeof(defaults) / sizeof(defaults[0]);
    if (env != NULL && env[0] != '\0') {
        cand = &env;
        ncand = 1;
    }
    char first_err[200] = "";
    for (size_t i = 0; i < ncand; i++) {
        /* RTLD_LOCAL: the engine's ~50 exported symbols stay out of the
         * worker's namespace. RTLD_NOW: a broken library fails here, not in
         * the middle of an insert. */
        void *h = dlopen(cand[i], RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            const char *why = dlerror();
            /* Keep the most useful reason: a file that exists but fails to
             * load beats "no such file". */
            if (first_err[0] == '\0' || (why && !strstr(why, "No such file")))
                snprintf(first_err, sizeof(first_err), "%s", why ? why : "dlopen failed");
            continue;
        }
        if (bind_symbols(h, cand[i], err) != 0) {
            dlclose(h);
            return -1;
        }
        api.handle = h;
        snprintf(api.path, sizeof(api.path), "%s", cand[i]);
        /* The worker owns SIGTERM/SIGINT (warm shutdown) and its crash
         * reporting; chDB would otherwise install process-wide handlers on
         * the first connect. */
        if (api.set_signal_handlers_enabled != NULL) api.set_signal_handlers_enabled(0);
        log_info("chDB: loaded %s", api.path);
        return 0;
    }
    if (env != NULL && env[0] != '\0')
        ch_error_set(err, 0, 0, 0, "chDB library not loadable from %s=%s (%s): %s",
                     CH_CHDB_LIB_ENV, env, first_err, install_hint);
    else
        ch_error_set(err, 0, 0, 0, "chDB library libchdb.so not found (tried ./var/chdb, "
                     "/usr/local/lib and the linker path; %s): %s", first_err, install_hint);
    return -1;
}

int ch_chdb_load(ch_error *err)
{
    pthread_mutex_lock(&api_lock);
    int rc = load_locked(err);
    pthread_mutex_unlock(&api_lock);
    return rc;
}

/* ---- Sessions ------------------------------------------------------------------- */

struct ch_chdb {
    chdb_connection *conn;
    char *path;
    char *database;          /* ?database=, or NULL */
    int database_selected;   /* USE database done on this session */
    int broken;              /* a per-statement setting could not be reset */
    buf stmt;                /* scratch: statement + inline data */
    buf set;                 /* scratch: SET statements */
};

static int ident_ok(const char *s, size_t n)
{
    if (n == 0 || n > CH_IDENT_MAX || !(isalpha((unsigned char)s[0]) || s[0] == '_')) return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return 0;
    return 1;
}

static int parse_url(const char *url, char **path, char **database, ch_error *err)
{
    const char *p = url + 7;   /* after "chdb://" */
    size_t plen = strcspn(p, "?#");
    if (p[plen] == '#') {
        ch_error_set(err, 0, 0, 0, "chDB URL: fragments are not allowed");
        return -1;
    }
    if (plen == 0) {
        ch_error_set(err, 0, 0, 0, "chDB URL: no data directory (chdb:///path/to/dir)");
        return -1;
    }
    *path = xstrndup(p, plen);
    *database = NULL;
    if (p[plen] == '?') {
        const char *q = p + plen + 1;
        if (strncmp(q, "database=", 9) != 0 || !ident_ok(q + 9, strlen(q + 9))) {
            ch_error_set(err, 0, 0, 0, "chDB URL: the only setting is ?database=NAME (a plain "
                         "identifier), not '%.64s'", q);
            free(*path);
            return -1;
        }
        *database = xstrdup(q + 9);
    }
    return 0;
}

ch_chdb *ch_chdb_open(const char *url, ch_error *err)
{
    char *path, *database;
    if (parse_url(url, &path, &database, err) != 0) return NULL;
    if (ch_chdb_load(err) != 0) {
        free(path);
        free(database);
        return NULL;
    }
    buf arg = BUF_INIT;
    buf_printf(&arg, "--path=%s", path);
    char arg0[] = "clickhouse";
    char *argv[] = {arg0, arg.data};
    chdb_connection *conn = api.connect(2, argv);
    buf_free(&arg);
    if (conn == NULL) {
        /* The API gives no reason; the usual ones are below. */
        ch_error_set(err, 0, 0, 0, "chDB: cannot open a session on %s (unwritable directory, or "
                     "it is held by another process, or this process has a session on another "
                     "path: one process per data directory)", path);
        free(path);
        free(database);
        return NULL;
    }
    ch_chdb *db = xcalloc(1, sizeof(*db));
    db->conn = conn;
    db->path = path;
    db->database = database;
    buf_init(&db->stmt);
    buf_init(&db->set);
    return db;
}

void ch_chdb_close(ch_chdb *db)
{
    if (db == NULL) return;
    api.close_conn(db->conn);
    free(db->path);
    free(db->database);
    buf_free(&db->stmt);
    buf_free(&db->set);
    free(db);
}

const char *ch_chdb_database(const ch_chdb *db) { return db->database; }

static int run(ch_chdb *db, const char *sql, size_t len, buf *out, ch_error *err);

void ch_chdb_set_timeout(ch_chdb *db, long total_ms)
{
    char sql[80];
    int n = snprintf(sql, sizeof(sql), "SET max_execution_time = %.3f", (double)total_ms / 1000);
    ch_error err;
    if (run(db, sql, (size_t)n, NULL, &err) != 0)
        log_warning("chDB session on %s: cannot set the %ld ms timeout (%s); statements run "
                    "without one", db->path, total_ms, err.msg);
}

/* ---- Statements ----------------------------------------------------------------- */

/* Run one statement; its output is appended to out (may be NULL). */
static int run(ch_chdb *db, const char *sql, size_t len, buf *out, ch_error *err)
{
    chdb_result *r = api.query_n(*db->conn, sql, len, out_format, sizeof(out_format) - 1);
    if (r == NULL) {
        ch_error_set(err, 0, 0, 0, "chDB on %s returned no result", db->path);
        return -1;
    }
    int rc = 0;
    const char *e = api.result_error(r);
    if (e != NULL) {
        /* "Code: 60. DB::Exception: ... (UNKNOWN_TABLE)": the text the HTTP
         * interface sends, so the code and its verdict come out the same. */
        ch_error_from_exception(err, "chDB", e, strlen(e));
        rc = -1;
    } else {
        size_t n = api.result_length(r);
        const char *data = api.result_buffer(r);
        if (n > CH_RESPONSE_MAX_BYTES) {
            ch_error_set(err, 0, 0, 0, "chDB result on %s exceeds %u bytes", db->path,
                         (unsigned)CH_RESPONSE_MAX_BYTES);
            rc = -1;
        } else if (out != NULL && n > 0 && data != NULL) {
            buf_append(out, data, n);
        }
    }
    api.destroy_result(r);
    return rc;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Append s[0..n) percent-decoded as a quoted SQL string literal. */
static int put_quoted_value(buf *out, const char *s, size_t n)
{
    buf_putc(out, '\'');
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (c == '\'' || c == '\\') buf_putc(out, '\\');
        buf_putc(out, (char)c);
    }
    buf_putc(out, '\'');
    return 0;
}

/* params "a=1&b=x%20y" -> "SET a = '1'" or "SET a = DEFAULT" per setting.
 * The HTTP interface scopes URL settings to one request; a session keeps
 * SET values, so every one is reset after the statement. */
static int apply_settings(ch_chdb *db, const char *params, int reset, ch_error *err)
{
    const char *p = params;
    while (*p) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        if (eq == NULL || !ident_ok(p, (size_t)(eq - p))) {
            ch_error_set(err, 0, 0, 0, "chDB: setting '%.*s' is not name=value", (int)(n > 64 ? 64 : n), p);
            return -1;
        }
        buf_reset(&db->set);
        buf_printf(&db->set, "SET %.*s = ", (int)(eq - p), p);
        if (reset) {
            buf_puts(&db->set, "DEFAULT");
        } else if (put_quoted_value(&db->set, eq + 1, n - (size_t)(eq + 1 - p)) != 0) {
            ch_error_set(err, 0, 0, 0, "chDB: setting %.*s has a bad percent-escape",
                         (int)(eq - p), p);
            return -1;
        }
        if (run(db, db->set.data, db->set.len, NULL, err) != 0) return -1;
        p += n;
        if (*p == '&') p++;
    }
    return 0;
}

int ch_chdb_request(ch_chdb *db, int flags, const char *query, const char *params,
                    const char *body, size_t body_len, buf *out, ch_error *err)
{
    if (db->broken) {
        ch_error_set(err, 0, 0, 0, "chDB session on %s is unusable: a per-statement setting could "
                     "not be reset (reopen the client)", db->path);
        return -1;
    }
    /* The HTTP client sends ?database= on each request; here the session's
     * current database is switched once, the first time it is needed (it
     * may not exist before ch_schema_apply, which asks CH_REQ_NO_DATABASE). */
    if (db->database != NULL && !(flags & CH_REQ_NO_DATABASE) && !db->database_selected) {
        buf use = BUF_INIT;
        buf_printf(&use, "USE %s", db->database);
        int rc = run(db, use.data, use.len, NULL, err);
        buf_free(&use);
        if (rc != 0) return -1;
        db->database_selected = 1;
    }
    const char *sql = body ? body : "";
    size_t len = body ? body_len : 0;
    if (query != NULL) {
        /* INSERT ... FORMAT X, then the data inline: the parser reads the
         * body from after the newline, binary-safe (chdb_query_n takes a
         * length, so RowBinary's NUL bytes pass). */
        buf_reset(&db->stmt);
        buf_puts(&db->stmt, query);
        buf_putc(&db->stmt, '\n');
        if (len > 0) buf_append(&db->stmt, sql, len);
        sql = db->stmt.data;
        len = db->stmt.len;
    }
    int has_params = params != NULL && params[0] != '\0';
    if (has_params && apply_settings(db, params, 0, err) != 0) {
        ch_error rerr;
        if (apply_settings(db, params, 1, &rerr) != 0) db->broken = 1;
        return -1;
    }
    int rc = run(db, sql, len, out, err);
    if (has_params) {
        ch_error rerr;
        if (apply_settings(db, params, 1, &rerr) != 0) {
            /* A stale insert_deduplication_token would make the next, different
             * rows look like duplicates and be dropped: never run on with it. */
            db->broken = 1;
            log_error("chDB session on %s: resetting settings after a statement failed (%s); "
                      "the session refuses further statements", db->path, rerr.msg);
            if (rc == 0) {
                if (err) *err = rerr;
                rc = -1;
            }
        }
    }
    if (query != NULL && db->stmt.cap > 4 * 1024 * 1024 && db->stmt.len < db->stmt.cap / 4)
        buf_free(&db->stmt);   /* do not pin the largest batch ever seen */
    return rc;
}
