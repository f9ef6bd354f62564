/* broker/script.c: EVALSHA with the NOSCRIPT fallback (see script.h).
 *
 * Sections: the shared sha cache; blocking runs; pipelined runs. */
#include "broker/script.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/errbuf.h"


static void set_conn_err(redisContext *ctx, char *err, size_t errlen)
{
    errbuf_set(err, errlen, "redis: %s", ctx->errstr[0] ? ctx->errstr : "connection lost");
}

/* ---- The shared sha cache ----
 *
 * A script's sha never changes once known (it is the SHA1 of the body), so
 * after the first load readers need no lock: `loaded` (per script) is set
 * with release order after sha is written, and read with acquire order.
 * script_lock serialises the writers (loads and reloads). */

static pthread_mutex_t script_lock = PTHREAD_MUTEX_INITIALIZER;

/* SCRIPT LOAD s on ctx's server and remember its sha in s. */
static int script_load(redisContext *ctx, lua_script *s, char sha[41], char *err, size_t errlen)
{
    redisReply *r = redisCommand(ctx, "SCRIPT LOAD %s", s->body);
    if (!r) {
        set_conn_err(ctx, err, errlen);
        return -1;
    }
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        errbuf_set(err, errlen, "SCRIPT LOAD %s: %s", s->name,
                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        return -1;
    }
    pthread_mutex_lock(&script_lock);
    if (!atomic_load_explicit(&s->loaded, memory_order_acquire)) {
        memcpy(s->sha, r->str, 40);
        s->sha[40] = '\0';
        atomic_store_explicit(&s->loaded, 1, memory_order_release);
    }
    memcpy(sha, s->sha, 41);
    pthread_mutex_unlock(&script_lock);
    freeReplyObject(r);
    return 0;
}

/* The script's SHA1 as the server computes it (SCRIPT LOAD once per
 * process; the sha is the same on every server, so threads share it). */
static int script_sha(redisContext *ctx, lua_script *s, char sha[41], char *err, size_t errlen)
{
    if (atomic_load_explicit(&s->loaded, memory_order_acquire)) {
        memcpy(sha, s->sha, 41);
        return 0;
    }
    return script_load(ctx, s, sha, err, errlen);
}

int script_prepare(redisContext *ctx, lua_script *s, char *err, size_t errlen)
{
    char sha[41];
    return script_sha(ctx, s, sha, err, errlen);
}

int script_reload(redisContext *ctx, lua_script *s, char *err, size_t errlen)
{
    char sha[41];
    return script_load(ctx, s, sha, err, errlen);
}

static int is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* ---- Blocking runs ---- */

redisReply *script_run(redisContext *ctx, lua_script *s, int argc, const char **argv,
                       size_t *lens, char *err, size_t errlen)
{
    char sha[41];
    if (script_sha(ctx, s, sha, err, errlen) < 0) return NULL;
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = sha;
    lens[1] = 40;
    redisReply *r = redisCommandArgv(ctx, argc, argv, lens);
    if (is_noscript(r)) {
        freeReplyObject(r);
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = s->body;
        lens[1] = strlen(s->body);
        r = redisCommandArgv(ctx, argc, argv, lens);
    }
    if (!r) {
        set_conn_err(ctx, err, errlen);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        errbuf_set(err, errlen, "script %s: %s", s->name, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* ---- Pipelined runs ---- */

int script_append(redisContext *ctx, lua_script *s, int argc, const char **argv,
                  size_t *lens, char *err, size_t errlen)
{
    char sha[41];
    if (script_sha(ctx, s, sha, err, errlen) < 0) return -1;
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = sha;   /* copied into the output buffer by the append */
    lens[1] = 40;
    int rc = redisAppendCommandArgv(ctx, argc, argv, lens);
    argv[1] = "";   /* sha is about to go out of scope */
    lens[1] = 0;
    if (rc != REDIS_OK) {
        set_conn_err(ctx, err, errlen);
        return -1;
    }
    return 0;
}

redisReply *script_read(redisContext *ctx, int *noscript, char *err, size_t errlen)
{
    redisReply *r = NULL;
    *noscript = 0;
    if (redisGetReply(ctx, (void **)&r) != REDIS_OK || !r) {
        set_conn_err(ctx, err, errlen);
        return NULL;
    }
    *noscript = is_noscript(r);
    return r;
}

