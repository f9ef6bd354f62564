/* bench/baselines/redis_serve.c: how fast this Redis can serve the telemetry
 * entries to a consumer group, with no processing at all (the "machine
 * limit" on the Redis side of the drain).
 *
 * Discovers product-telemetry:*:events streams (SCAN ... TYPE stream), makes
 * sure the consumer group exists, then loops: XREADGROUP GROUP g c COUNT n
 * STREAMS s1..sN > .. > (no BLOCK), and for every stream in the reply one
 * pipelined XACK of the ids it returned; stops at the first empty read.
 * The reply is parsed by hiredis (so the bytes cross the socket and are
 * framed) but the events are never looked at.
 *
 *   redis_serve HOST PORT [COUNT=500] [GROUP=product-telemetry-consumers]
 *
 * Prints one JSON line: {"entries", "bytes", "seconds", "entries_per_s"}.
 * Built by bench/run with: cc -O2 redis_serve.c -lhiredis. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_STREAMS 4096

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, redisContext *c)
{
    fprintf(stderr, "redis_serve: %s: %s\n", what, c ? c->errstr : "");
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: redis_serve HOST PORT [COUNT] [GROUP]\n");
        return 2;
    }
    const char *count = argc > 3 ? argv[3] : "500";
    const char *group = argc > 4 ? argv[4] : "product-telemetry-consumers";
    redisContext *c = redisConnect(argv[1], atoi(argv[2]));
    if (!c || c->err) die("connect", c);

    static char *streams[MAX_STREAMS];
    int nstreams = 0;
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(c, "SCAN %s MATCH product-telemetry:*:events COUNT 1000 TYPE stream",
                                     cursor);
        if (!r || r->type != REDIS_REPLY_ARRAY) die("SCAN", c);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements && nstreams < MAX_STREAMS; i++)
            streams[nstreams++] = strdup(r->element[1]->element[i]->str);
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    for (int i = 0; i < nstreams; i++) {
        redisReply *r = redisCommand(c, "XGROUP CREATE %s %s 0 MKSTREAM", streams[i], group);
        if (r) freeReplyObject(r);   /* BUSYGROUP is fine */
    }

    /* argv for XREADGROUP: fixed part + N keys + N ">" */
    int xargc = 7 + 2 * nstreams;
    const char **xargv = calloc(xargc, sizeof *xargv);
    xargv[0] = "XREADGROUP"; xargv[1] = "GROUP"; xargv[2] = group; xargv[3] = "bench-serve";
    xargv[4] = "COUNT"; xargv[5] = count; xargv[6] = "STREAMS";
    for (int i = 0; i < nstreams; i++) {
        xargv[7 + i] = streams[i];
        xargv[7 + nstreams + i] = ">";
    }

    long long entries = 0, bytes = 0;
    double t0 = now_s(), t_last = t0;
    const char **ack = NULL;
    size_t ack_cap = 0;
    for (;;) {
        redisReply *r = redisCommandArgv(c, xargc, xargv, NULL);
        if (!r) die("XREADGROUP", c);
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            freeReplyObject(r);
            break;
        }
        int pipelined = 0;
        for (size_t s = 0; s < r->elements; s++) {
            redisReply *sr = r->element[s];
            redisReply *items = sr->element[1];
            if (items->elements == 0) continue;
            if (ack_cap < items->elements + 3) {
                ack_cap = items->elements + 3;
                ack = realloc(ack, ack_cap * sizeof *ack);
            }
            ack[0] = "XACK"; ack[1] = sr->element[0]->str; ack[2] = group;
            for (size_t i = 0; i < items->elements; i++) {
                redisReply *e = items->element[i];
                ack[3 + i] = e->element[0]->str;
                redisReply *f = e->element[1];
                for (size_t k = 0; k < f->elements; k++) bytes += (long long)f->element[k]->len;
            }
            entries += (long long)items->elements;
            redisAppendCommandArgv(c, (int)items->elements + 3, ack, NULL);
            pipelined++;
        }
        for (int i = 0; i < pipelined; i++) {
            redisReply *a;
            if (redisGetReply(c, (void **)&a) != REDIS_OK) die("XACK", c);
            freeReplyObject(a);
        }
        freeReplyObject(r);
        t_last = now_s();
    }
    double secs = t_last - t0;
    printf("{\"entries\": %lld, \"bytes\": %lld, \"streams\": %d, \"seconds\": %.4f, "
           "\"entries_per_s\": %.1f}\n", entries, bytes, nstreams, secs,
           secs > 0 ? entries / secs : 0.0);
    redisFree(c);
    return 0;
}
