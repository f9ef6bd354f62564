/* worker/send.c: `ptel-worker send`: enqueue a Celery task exactly as the
 * Python client's apply_async does (protocol v2, json, anonymous exchange,
 * priority sub-queue; PROTOCOL §2.1, §3), and optionally wait for its result
 * the way AsyncResult.get() does: subscribe to celery-task-meta-<id> before
 * publishing, then read the stored value (PROTOCOL §11.4). */
#include "worker/send.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/message.h"
#include "broker/transport.h"
#include "broker/url.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/pyjson.h"
#include "common/timeutil.h"
#include "worker/config.h"
#include "worker/worker.h"

static void usage(FILE *out)
{
    fprintf(out,
"usage: ptel-worker send TASK [--args JSON] [--kwargs JSON] [-Q QUEUE] [--countdown S]\n"
"                        [--expires S] [--priority N] [--wait [--timeout S]] [--config FILE]\n"
"\n"
"Enqueue a Celery task as `celery call` / apply_async would and print its id.\n"
"With --wait, print the result (exit 0) or the failure (exit 1) once it is stored.\n"
"\n"
"example: ptel-worker send dev_health_ops.workers.tasks.run_product_telemetry_consumer \\\n"
"             --kwargs '{\"max_iterations\": 50}' --wait\n");
}

static pj_value *parse_json_flag(const char *flag, const char *text, pj_type want)
{
    pj_error e;
    pj_value *v = pj_parse(text, strlen(text), &e);
    if (!v) {
        fprintf(stderr, "error: %s: invalid JSON: %s\n", flag, e.msg);
        return NULL;
    }
    if (v->type != want) {
        fprintf(stderr, "error: %s must be a JSON %s\n", flag, want == PJ_ARRAY ? "array" : "object");
        pj_free(v);
        return NULL;
    }
    return v;
}

/* Wait for a ready state on the already-subscribed connection `sub`, then
 * print it. Returns the exit code: 0 SUCCESS, 1 FAILURE/REVOKED, 3 timeout. */
static int wait_result(redisContext *sub, redisContext *ctx, const char *id, double timeout)
{
    char key[128];
    snprintf(key, sizeof key, "celery-task-meta-%s", id);
    int64_t deadline = time_now_us() + (int64_t)(timeout * USEC_PER_SEC);
    struct timeval tv = {0, 200 * 1000};
    redisSetTimeout(sub, tv);
    for (;;) {
        redisReply *r = redisCommand(ctx, "GET %s", key);
        if (r && r->type == REDIS_REPLY_STRING) {
            pj_value *v = pj_parse(r->str, r->len, NULL);
            const char *status = v ? pj_get_string(v, "status") : NULL;
            if (status && (!strcmp(status, "SUCCESS") || !strcmp(status, "FAILURE") ||
                           !strcmp(status, "REVOKED"))) {
                buf out = BUF_INIT;
                pj_dump(&out, pj_object_get(v, "result"), 0);
                printf("%s %s\n", status, buf_cstr(&out));
                buf_free(&out);
                int rc = strcmp(status, "SUCCESS") ? 1 : 0;
                pj_free(v);
                freeReplyObject(r);
                return rc;
            }
            pj_free(v);
        }
        if (r) freeReplyObject(r);
        if (time_now_us() >= deadline) {
            fprintf(stderr, "error: no result for %s within %gs\n", id, timeout);
            return 3;
        }
        /* Block on the subscription until a PUBLISH arrives or 200 ms pass. */
        void *msg = NULL;
        if (redisGetReply(sub, &msg) == REDIS_OK && msg) freeReplyObject(msg);
        else if (sub->err) { sub->err = 0; sub->errstr[0] = '\0'; }
    }
}

int send_main(int argc, char **argv)
{
    enum { OPT_ARGS = 256, OPT_KWARGS, OPT_COUNTDOWN, OPT_EXPIRES, OPT_PRIORITY, OPT_WAIT,
           OPT_TIMEOUT, OPT_CONFIG };
    static const struct option longopts[] = {
        {"args", required_argument, NULL, OPT_ARGS},
        {"kwargs", required_argument, NULL, OPT_KWARGS},
        {"queue", required_argument, NULL, 'Q'},
        {"countdown", required_argument, NULL, OPT_COUNTDOWN},
        {"expires", required_argument, NULL, OPT_EXPIRES},
        {"priority", required_argument, NULL, OPT_PRIORITY},
        {"wait", no_argument, NULL, OPT_WAIT},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *args_text = "[]", *kwargs_text = "{}", *queue = NULL, *config = NULL;
    double countdown = 0, expires = 0, timeout = 30;
    int priority = 0, wait = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "Q:h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_ARGS: args_text = optarg; break;
        case OPT_KWARGS: kwargs_text = optarg; break;
        case 'Q': queue = optarg; break;
        case OPT_COUNTDOWN: countdown = atof(optarg); break;
        case OPT_EXPIRES: expires = atof(optarg); break;
        case OPT_PRIORITY: priority = atoi(optarg); break;
        case OPT_WAIT: wait = 1; break;
        case OPT_TIMEOUT: timeout = atof(optarg); break;
        case OPT_CONFIG: config = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *task = argv[optind];
    if (priority < 0 || priority > 9) {
        fprintf(stderr, "error: --priority must be 0..9\n");
        return 2;
    }

    ptel_config cfg;
    int rc = 1;
    pj_value *args = NULL, *kwargs = NULL;
    redisContext *ctx = NULL, *sub = NULL, *backend = NULL;
    redis_url url, backend_url;
    memset(&url, 0, sizeof url);
    memset(&backend_url, 0, sizeof backend_url);
    buf envelope = BUF_INIT;
    char err[512];
    if (worker_load_config(&cfg, config) != 0) goto out;
    if (!(args = parse_json_flag("--args", args_text, PJ_ARRAY)) ||
        !(kwargs = parse_json_flag("--kwargs", kwargs_text, PJ_OBJECT))) {
        rc = 2;
        goto out;
    }
    if (redis_url_parse(cfg.broker_url, &url, err, sizeof err) != 0 ||
        redis_url_parse(cfg.result_backend, &backend_url, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        goto out;
    }
    if (!(ctx = redis_url_connect(&url, 10.0, err, sizeof err)) ||
        (wait && !(backend = redis_url_connect(&backend_url, 10.0, err, sizeof err))) ||
        (wait && !(sub = redis_url_connect(&backend_url, 10.0, err, sizeof err)))) {
        fprintf(stderr, "error: cannot connect: %s\n", err);
        goto out;
    }
    if (!queue) queue = cfg.task_default_queue;
    message_new_task spec = {.task = task, .queue = queue, .args = args, .kwargs = kwargs,
                             .priority = priority, .countdown = countdown, .expires_in = expires};
    if (message_build_task(&spec, &envelope) != 0) {
        fprintf(stderr, "error: cannot build the message\n");
        goto out;
    }
    pj_value *parsed = pj_parse(envelope.data, envelope.len, NULL);
    const char *id = parsed ? pj_get_string(pj_object_get(parsed, "headers"), "id") : NULL;
    char *task_id = xstrdup(id ? id : "");
    pj_free(parsed);
    if (wait) {
        /* Subscribe before publishing, as apply_async does, so no PUBLISH is missed. */
        redisReply *r = redisCommand(sub, "SUBSCRIBE celery-task-meta-%s", task_id);
        if (r) freeReplyObject(r);
    }
    transport_options topts;
    transport_options_init(&topts);
    topts.sep = cfg.transport_sep;
    topts.global_keyprefix = cfg.global_keyprefix;
    topts.n_priority_steps = cfg.priority_steps_count;
    for (size_t i = 0; i < cfg.priority_steps_count; i++) topts.priority_steps[i] = cfg.priority_steps[i];
    if (transport_declare_queue(ctx, &topts, queue, cfg.task_default_queue, cfg.task_default_queue,
                                err, sizeof err) != 0 ||
        transport_publish(ctx, &topts, queue, priority, envelope.data, envelope.len, err,
                          sizeof err) != 0) {
        fprintf(stderr, "error: cannot publish: %s\n", err);
        free(task_id);
        goto out;
    }
    printf("%s\n", task_id);
    fflush(stdout);
    rc = wait ? wait_result(sub, backend, task_id, timeout) : 0;
    free(task_id);
out:
    buf_free(&envelope);
    pj_free(args);
    pj_free(kwargs);
    if (sub) redisFree(sub);
    if (backend) redisFree(backend);
    if (ctx) redisFree(ctx);
    redis_url_free(&url);
    redis_url_free(&backend_url);
    config_free(&cfg);
    return rc;
}
