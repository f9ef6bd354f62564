/* broker/test_support.h: fixtures shared by the broker tests (transport,
 * backend, events, control); not part of the library.
 *
 * - A real redis-server from PTEL_TEST_REDIS_URL (redis://host:port[/db]);
 *   without it the tests exit 77 (meson: skipped). Each test program uses
 *   its own db index, whatever the URL says, and FLUSHDBs it, so programs
 *   running in parallel never see each other's keys.
 * - The real Python side: /usr/bin/python3 tests/data/broker/celery_peer.py
 *   (celery 5.2.6, kombu 5.2.4), found through PTEL_SOURCE_ROOT. */
#ifndef PTEL_BROKER_TEST_SUPPORT_H
#define PTEL_BROKER_TEST_SUPPORT_H

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "common/buf.h"
#include "common/mem.h"

#define TS_PYTHON "/usr/bin/python3"

/* ---- The captured golden samples ------------------------------------------------ */

/* protocol/captures/golden_samples.json under PTEL_SHARED_DIR (meson sets it:
 * the shared docs, or the repository's copy), parsed once per program.
 * static inline: a test program that doesn't read samples gets no warning. */
static cJSON *ts_golden_doc;

static inline cJSON *ts_golden(void)
{
    if (ts_golden_doc) return ts_golden_doc;
    const char *dir = getenv("PTEL_SHARED_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/protocol/captures/golden_samples.json", dir ? dir : "../shared");
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "open %s", path);
    buf b = BUF_INIT;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(&b, chunk, n);
    fclose(f);
    ts_golden_doc = cJSON_Parse(buf_cstr(&b));
    buf_free(&b);
    ck_assert_ptr_nonnull(ts_golden_doc);
    return ts_golden_doc;
}

/* The exact wire string of one named sample. */
static inline const char *ts_golden_raw(const char *name)
{
    cJSON *s = cJSON_GetObjectItemCaseSensitive(ts_golden(), name);
    ck_assert_msg(s != NULL, "no sample %s", name);
    return cJSON_GetObjectItemCaseSensitive(s, "raw")->valuestring;
}
/* ts_peer_finish's status for a peer that died of a signal (SIGKILL). */
#define TS_KILLED (-1)

static char ts_host[256];
static int ts_port;
static int ts_db;

/* Parse PTEL_TEST_REDIS_URL; exit 77 when unset. */
static void ts_setup_or_skip(int db)
{
    const char *url = getenv("PTEL_TEST_REDIS_URL");
    if (!url || !*url) {
        fprintf(stderr, "PTEL_TEST_REDIS_URL not set: skipping redis tests\n");
        exit(77);
    }
    if (sscanf(url, "redis://%255[^:/]:%d", ts_host, &ts_port) != 2) {
        fprintf(stderr, "PTEL_TEST_REDIS_URL must look like redis://host:port/db: %s\n", url);
        exit(1);
    }
    ts_db = db;
}

/* "redis://host:port/db" for the Python side. Static storage. */
static const char *ts_url(void)
{
    static char url[320];
    snprintf(url, sizeof url, "redis://%s:%d/%d", ts_host, ts_port, ts_db);
    return url;
}

static redisContext *ts_connect(void)
{
    redisContext *c = redisConnect(ts_host, ts_port);
    ck_assert_msg(c && !c->err, "connect %s:%d: %s", ts_host, ts_port, c ? c->errstr : "oom");
    redisReply *r = redisCommand(c, "SELECT %d", ts_db);
    ck_assert_ptr_nonnull(r);
    freeReplyObject(r);
    return c;
}

/* A fresh connection on an empty db. */
static redisContext *ts_fresh(void)
{
    redisContext *c = ts_connect();
    redisReply *r = redisCommand(c, "FLUSHDB");
    ck_assert_ptr_nonnull(r);
    freeReplyObject(r);
    return c;
}

/* Run a command and return its reply (never an error reply). */
static redisReply *ts_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "redis: %s", c->errstr);
    ck_assert_msg(r->type != REDIS_REPLY_ERROR, "redis %s: %s", fmt, r->str);
    return r;
}

static long long ts_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER, "%s: not an integer reply", fmt);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* A bulk string reply as a heap copy, or NULL for nil. */
static char *ts_str(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "redis: %s", c->errstr);
    ck_assert_msg(r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_NIL, "%s: bad reply", fmt);
    char *s = r->type == REDIS_REPLY_STRING ? xstrndup(r->str, r->len) : NULL;
    freeReplyObject(r);
    return s;
}

static const char *ts_peer(void)
{
    static char path[4096];
    const char *root = getenv("PTEL_SOURCE_ROOT");
    snprintf(path, sizeof path, "%s/tests/data/broker/celery_peer.py", root ? root : ".");
    return path;
}

/* Start the Python peer with `args` (already shell-safe); read its stdout
 * with ts_peer_finish. */
static FILE *ts_peer_start(const char *args)
{
    buf cmdline = BUF_INIT;
    /* exec: the shell steps aside, so a signal death is seen as such. */
    buf_printf(&cmdline, "exec %s %s %s", TS_PYTHON, ts_peer(), args);
    FILE *f = popen(cmdline.data, "r");
    ck_assert_msg(f != NULL, "popen %s", cmdline.data);
    buf_free(&cmdline);
    return f;
}

/* All of the peer's stdout (caller frees); *status = its exit status
 * (-1 when it died of a signal). */
static char *ts_peer_finish(FILE *f, int *status)
{
    buf out = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(&out, chunk, n);
    int st = pclose(f);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    buf_putc(&out, '\0');
    return buf_detach(&out);
}

/* Run the peer to completion and require exit 0 (or `want_status`). */
static char *ts_peer_run(int want_status, const char *fmt, ...)
{
    buf args = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&args, fmt, ap);
    va_end(ap);
    int st;
    char *out = ts_peer_finish(ts_peer_start(args.data), &st);
    ck_assert_msg(st == want_status, "peer %s exited %d (want %d): %s", args.data, st, want_status, out);
    buf_free(&args);
    return out;
}

#endif
