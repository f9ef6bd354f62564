/* broker/script.h: running our server-side Lua scripts on Redis.
 *
 * Owns: the one mechanism every broker module uses to call a script:
 * EVALSHA with the script's SHA1 (SCRIPT LOAD once per process; the sha is
 * the same on every server, so all threads share it), falling back to EVAL
 * with the body when the server answers NOSCRIPT (restart, SCRIPT FLUSH,
 * or a second server that never saw the script). Blocking and pipelined
 * (append, then read) forms.
 *
 * Does not own: the scripts themselves (each module defines its own
 * lua_script), the connection (the caller's redisContext*), or building
 * the argument list.
 *
 * Argument lists: argv[0] and argv[1] are placeholders filled here with
 * EVALSHA/EVAL and the sha/body; argv[2] is numkeys, then keys and args.
 * The caller keeps argv/lens alive for the call. */
#ifndef PTEL_BROKER_SCRIPT_H
#define PTEL_BROKER_SCRIPT_H

#include <stdatomic.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

typedef struct lua_script {
    const char *name;   /* for error messages */
    const char *body;
    char sha[41];       /* "" until loaded; written once, under a lock in script.c */
    atomic_int loaded;  /* sha is valid (release/acquire; see script.c) */
} lua_script;

/* A static script: static lua_script s = LUA_SCRIPT("fetch", "...body..."); */
#define LUA_SCRIPT(name, body) {name, body, "", 0}

/* Run s and wait for its reply (the EVAL fallback included). Returns the
 * reply (the caller frees it), or NULL with err set on a connection failure
 * or an error reply ("script <name>: <error>"). */
redisReply *script_run(redisContext *ctx, lua_script *s, int argc, const char **argv,
                       size_t *lens, char *err, size_t errlen);

/* Pipelining: queue EVALSHA s on ctx without sending it. The first call in
 * a process may run SCRIPT LOAD, which waits for a reply: queue scripts
 * before any other command of the same pipeline. 0 queued, -1 not (err). */
int script_append(redisContext *ctx, lua_script *s, int argc, const char **argv,
                  size_t *lens, char *err, size_t errlen);

/* Make sure s's sha is known, loading it on ctx's server if needed (waits
 * for a reply: nothing may be queued on ctx). After it, script_append of s
 * does no I/O, so a pipeline may queue s after other commands. 0, or -1
 * (err). */
int script_prepare(redisContext *ctx, lua_script *s, char *err, size_t errlen);

/* Read the reply of one script_append. Returns it (the caller frees it,
 * error replies included), or NULL on a connection failure (err set).
 * *noscript is set when the server had lost the script: nothing ran, and
 * the caller runs it again with script_run once the pipeline's remaining
 * replies are read (EVAL cannot be slipped in ahead of them), or calls
 * script_reload and queues it again. */
redisReply *script_read(redisContext *ctx, int *noscript, char *err, size_t errlen);

/* SCRIPT LOAD s on ctx's server again, after script_read saw NOSCRIPT
 * (nothing may be pending on ctx). 0 loaded, -1 not (err). */
int script_reload(redisContext *ctx, lua_script *s, char *err, size_t errlen);

#endif
