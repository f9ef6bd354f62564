/* bench/baselines/redis_replay.c: how fast this Redis serves a recorded
 * command stream on its own (the "machine limit" on the Redis side of the
 * Celery path): the commands the C worker sent per ptel.ping task, captured
 * with MONITOR by bench/celery_mix.py, sent back from one connection in
 * pipelines, with no processing and no waiting between them.
 *
 * Reads the replay file (per command "*<argc>\n", then per argument
 * "<len>\n<bytes>\n") into memory, then: INFO cpu, the timed loop (append
 * PIPELINE commands with redisAppendCommandArgv, read their replies), INFO
 * cpu. Replies are parsed by hiredis and only classified.
 *
 *   redis_replay HOST PORT FILE [PIPELINE=1000] [KINDS_OUT]
 *
 * KINDS_OUT, if given, gets one line per command: "a<n>" (array of n;
 * "a<n>:<sum>" if all n are integers, e.g. an EXEC of ZREM+HDEL), "n" (nil),
 * "i", "s", "t" (status), "e" (error). Prints one JSON line:
 * {"commands", "seconds", "errors", "first_error", "redis_cpu_s",
 * "client_cpu_s", "commands_per_s"}.
 * Built by bench/run with: cc -O2 redis_replay.c -lhiredis. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    int argc;
    const char **argv;
    size_t *lens;
} command;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "redis_replay: %s: %s\n", what, detail ? detail : "");
    exit(1);
}

/* The whole file in memory; commands point into it. */
static command *load(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) die("open", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) die("read", path);
    fclose(f);
    buf[size] = '\0';
    size_t cap = 1024, count = 0;
    command *cmds = malloc(cap * sizeof *cmds);
    char *p = buf, *end = buf + size;
    while (p < end) {
        if (*p != '*') die("format", "expected '*'");
        int argc = (int)strtol(p + 1, &p, 10);
        if (*p++ != '\n' || argc < 1) die("format", "bad argc");
        if (count == cap) cmds = realloc(cmds, (cap *= 2) * sizeof *cmds);
        command *c = &cmds[count++];
        c->argc = argc;
        c->argv = malloc(argc * sizeof *c->argv);
        c->lens = malloc(argc * sizeof *c->lens);
        for (int i = 0; i < argc; i++) {
            size_t len = strtoul(p, &p, 10);
            if (*p++ != '\n' || p + len >= end || p[len] != '\n') die("format", "bad argument");
            c->argv[i] = p;
            c->lens[i] = len;
            p += len + 1;
        }
    }
    *n = count;
    return cmds;
}

/* used_cpu_sys + used_cpu_user of the server. */
static double server_cpu_s(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    if (!r || r->type != REDIS_REPLY_STRING) die("INFO cpu", c->errstr);
    double total = 0;
    const char *keys[] = {"used_cpu_sys:", "used_cpu_user:"};
    for (int k = 0; k < 2; k++) {
        const char *at = strstr(r->str, keys[k]);
        if (at) total += atof(at + strlen(keys[k]));
    }
    freeReplyObject(r);
    return total;
}

static char kind_of(const redisReply *r)
{
    switch (r->type) {
    case REDIS_REPLY_ARRAY: return 'a';
    case REDIS_REPLY_NIL: return 'n';
    case REDIS_REPLY_INTEGER: return 'i';
    case REDIS_REPLY_STATUS: return 't';
    case REDIS_REPLY_ERROR: return 'e';
    default: return 's';
    }
}

/* Sum of an array reply's elements if they are all integers, else -1. */
static long long int_sum(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY) return -1;
    long long sum = 0;
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return -1;
        sum += r->element[i]->integer;
    }
    return sum;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: redis_replay HOST PORT FILE [PIPELINE] [KINDS_OUT]\n");
        return 2;
    }
    size_t n;
    command *cmds = load(argv[3], &n);
    size_t pipeline = argc > 4 ? strtoul(argv[4], NULL, 10) : 1000;
    if (pipeline < 1) pipeline = 1;
    char *kinds = calloc(n ? n : 1, 1);
    size_t *sizes = calloc(n ? n : 1, sizeof *sizes);
    long long *sums = calloc(n ? n : 1, sizeof *sums);   /* -1: not all integers */
    redisContext *c = redisConnect(argv[1], atoi(argv[2]));
    if (!c || c->err) die("connect", c ? c->errstr : "");

    long long errors = 0;
    char first_error[160] = "";
    double cpu0 = server_cpu_s(c), self0 = self_cpu_s(), t0 = now_s();
    for (size_t at = 0; at < n; at += pipeline) {
        size_t m = n - at < pipeline ? n - at : pipeline;
        for (size_t i = 0; i < m; i++) {
            command *k = &cmds[at + i];
            if (redisAppendCommandArgv(c, k->argc, k->argv, k->lens) != REDIS_OK)
                die("append", c->errstr);
        }
        for (size_t i = 0; i < m; i++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) die("reply", c->errstr);
            kinds[at + i] = kind_of(r);
            sizes[at + i] = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
            sums[at + i] = int_sum(r);
            if (r->type == REDIS_REPLY_ERROR && errors++ == 0)
                snprintf(first_error, sizeof first_error, "#%zu: %.120s", at + i, r->str);
            freeReplyObject(r);
        }
    }
    double secs = now_s() - t0, self_cpu = self_cpu_s() - self0;
    double redis_cpu = server_cpu_s(c) - cpu0;

    if (argc > 5) {
        FILE *f = fopen(argv[5], "w");
        if (!f) die("open", argv[5]);
        for (size_t i = 0; i < n; i++) {
            if (kinds[i] == 'a' && sizes[i] && sums[i] >= 0)
                fprintf(f, "a%zu:%lld\n", sizes[i], sums[i]);
            else if (kinds[i] == 'a') fprintf(f, "a%zu\n", sizes[i]);
            else fprintf(f, "%c\n", kinds[i]);
        }
        fclose(f);
    }
    for (char *q = first_error; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 32) *q = ' ';
    printf("{\"commands\": %zu, \"pipeline\": %zu, \"seconds\": %.6f, \"errors\": %lld, "
           "\"first_error\": \"%s\", \"redis_cpu_s\": %.6f, \"client_cpu_s\": %.6f, "
           "\"commands_per_s\": %.1f}\n", n, pipeline, secs, errors, first_error, redis_cpu,
           self_cpu, secs > 0 ? n / secs : 0.0);
    redisFree(c);
    return 0;
}
