/* worker/worker.c: the worker process: flags, start-up, the main loop of
 * timers and signals, and shutdown.
 *
 * Start-up follows a Python worker's order where it is visible on the wire
 * (PROTOCOL §9.5): connect, restore_visible, declare the queues' bindings,
 * then consume. Shutdown (PROTOCOL §12.6): a warm shutdown (SIGTERM, SIGINT)
 * stops fetching, lets running tasks finish within worker_shutdown_grace,
 * then hands every reserved and ETA-held message back to its queue; a cold
 * shutdown (SIGQUIT, a second SIGINT/SIGTERM, or the grace running out) asks
 * running tasks to stop and hands back everything still unacked. SIGUSR1
 * logs what every slot is doing. */
#include "worker/worker.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "worker/drain_options.h"
#include "worker/metrics_http.h"
#include "worker/remote.h"
#include "worker/state.h"

/* ---- Flags ------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(out,
"usage: ptel-worker worker [options]\n"
"\n"
"Consume Celery tasks from Redis and run them (run_product_telemetry_consumer and\n"
"the ptel.* diagnostic tasks), as `celery worker` would.\n"
"\n"
"options:\n"
"  --config FILE               celeryconfig file (Python-literal subset, see celeryconfig.sample)\n"
"  -Q, --queues Q1,Q2          queues to consume (default: task_queues, i.e. ingest)\n"
"  -c, --concurrency N         pool slots running tasks in parallel (default 2)\n"
"  -n, --hostname NAME         node name; %%h host, %%n name, %%d domain (default celery@%%h)\n"
"  -l, --loglevel LEVEL        debug, info, warning, error, critical (default info)\n"
"  -E, --task-events           send task events (Flower, celery events)\n"
"      --without-mingle        don't sync revoked ids with other workers at start-up\n"
"                              (saves mingle's 1 s wait, as with celery worker)\n"
"  -S, --statedb FILE          keep the revoked task ids in FILE across restarts\n"
"      --prefetch-multiplier N messages reserved per slot (default 4; 0 = unlimited)\n"
"      --log-format text|json  log line format (default text, Celery's)\n"
"      --metrics-port N        serve Prometheus /metrics and /healthz on port N\n"
"  -h, --help                  this help\n"
"\n"
"environment: CELERY_BROKER_URL, CELERY_RESULT_BACKEND, REDIS_URL, CLICKHOUSE_URL\n"
"override the file; flags override both.\n");
}

char *worker_expand_hostname(const char *pattern)
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    const char *dot = strchr(host, '.');
    size_t name_len = dot ? (size_t)(dot - host) : strlen(host);
    const char *domain = dot ? dot + 1 : "";
    buf out = BUF_INIT;
    if (!strchr(pattern, '@')) buf_puts(&out, "celery@");
    for (const char *p = pattern; *p; p++) {
        if (p[0] == '%' && p[1]) {
            p++;
            if (*p == 'h') buf_puts(&out, host);
            else if (*p == 'n') buf_append(&out, host, name_len);
            else if (*p == 'd') buf_puts(&out, domain);
            else if (*p == '%') buf_putc(&out, '%');
            else { buf_putc(&out, '%'); buf_putc(&out, *p); }
        } else {
            buf_putc(&out, *p);
        }
    }
    return buf_detach(&out);
}

int worker_load_config(ptel_config *cfg, const char *path)
{
    char err[512];
    config_init_defaults(cfg);
    if (path && config_load_file(cfg, path, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    if (config_apply_env(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    return 0;
}

typedef struct worker_flags {
    const char *config, *queues, *concurrency, *hostname, *loglevel, *prefetch, *log_format;
    const char *metrics_port;
    const char *statedb;
    int events;
    int without_mingle;
} worker_flags;

static int parse_flags(int argc, char **argv, worker_flags *f)
{
    enum { OPT_CONFIG = 256, OPT_PREFETCH, OPT_LOG_FORMAT, OPT_METRICS_PORT, OPT_WITHOUT_MINGLE };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, OPT_CONFIG},
        {"queues", required_argument, NULL, 'Q'},
        {"concurrency", required_argument, NULL, 'c'},
        {"hostname", required_argument, NULL, 'n'},
        {"loglevel", required_argument, NULL, 'l'},
        {"task-events", no_argument, NULL, 'E'},
        {"events", no_argument, NULL, 'E'},
        {"statedb", required_argument, NULL, 'S'},
        {"prefetch-multiplier", required_argument, NULL, OPT_PREFETCH},
        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
        {"metrics-port", required_argument, NULL, OPT_METRICS_PORT},
        {"without-mingle", no_argument, NULL, OPT_WITHOUT_MINGLE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(f, 0, sizeof *f);
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "Q:c:n:l:ES:h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG: f->config = optarg; break;
        case 'Q': f->queues = optarg; break;
        case 'c': f->concurrency = optarg; break;
        case 'n': f->hostname = optarg; break;
        case 'l': f->loglevel = optarg; break;
        case 'E': f->events = 1; break;
        case 'S': f->statedb = optarg; break;
        case OPT_PREFETCH: f->prefetch = optarg; break;
        case OPT_LOG_FORMAT: f->log_format = optarg; break;
        case OPT_METRICS_PORT: f->metrics_port = optarg; break;
        case OPT_WITHOUT_MINGLE: f->without_mingle = 1; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "error: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    return 0;
}

static int apply_flag(ptel_config *cfg, const char *flag, const char *name, const char *value)
{
    char err[512];
    if (!value) return 0;
    if (config_set(cfg, name, value, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s: %s\n", flag, err);
        return -1;
    }
    return 0;
}

/* ---- Start-up ---------------------------------------------------------------- */

static void set_transport_options(worker *w)
{
    const ptel_config *cfg = w->cfg;
    transport_options_init(&w->topts);
    w->topts.sep = cfg->transport_sep;
    w->topts.visibility_timeout = cfg->visibility_timeout;
    w->topts.unacked_mutex_expire = (int)cfg->unacked_mutex_expire;
    w->topts.global_keyprefix = cfg->global_keyprefix;
    w->topts.n_priority_steps = cfg->priority_steps_count;
    for (size_t i = 0; i < cfg->priority_steps_count; i++)
        w->topts.priority_steps[i] = cfg->priority_steps[i];
}

/* Celery-style banner, so operators see at a glance what this process is. */
static void print_banner(worker *w)
{
    struct utsname u;
    uname(&u);
    char *broker = redis_url_redacted(&w->broker_url);
    char *backend = redis_url_redacted(&w->backend_url);
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(now, sizeof now, "%Y-%m-%d %H:%M:%S", &tm);
    buf b = BUF_INIT;
    buf_printf(&b, "\n -------------- %s v%s (ptel-worker)\n", w->hostname, PTEL_VERSION);
    buf_printf(&b, "--- ***** ----- \n-- ******* ---- %s-%s %s %s\n", u.sysname, u.release,
               u.machine, now);
    buf_printf(&b, "- *** --- * --- \n- ** ---------- [config]\n");
    buf_printf(&b, "- ** ---------- .> app:         ptel-worker (C)\n");
    buf_printf(&b, "- ** ---------- .> transport:   %s\n", broker);
    buf_printf(&b, "- ** ---------- .> results:     %s\n", backend);
    buf_printf(&b, "- *** --- * --- .> concurrency: %d (threads)\n", w->n_slots);
    buf_printf(&b, "-- ******* ---- .> task events: %s\n",
               (w->cfg->worker_send_task_events || w->send_events_flag) ? "ON" : "OFF (enable -E to monitor tasks in this worker)");
    buf_printf(&b, "--- ***** ----- \n -------------- [queues]\n");
    for (size_t i = 0; i < w->queues.n; i++)
        buf_printf(&b, "                .> %-16s exchange=%s(direct) key=%s\n", w->queues.names[i],
                   w->cfg->task_default_queue, w->cfg->task_default_queue);
    buf_puts(&b, "\n[tasks]\n");
    int n;
    const task_def *defs = task_all(&n);
    for (int i = 0; i < n; i++) buf_printf(&b, "  . %s\n", defs[i].name);
    fprintf(stderr, "%s\n", buf_cstr(&b));
    buf_free(&b);
    free(broker);
    free(backend);
}

/* Connect the main thread's broker connection, retrying like Celery does
 * ("Trying again in N seconds") until connected or a signal asks to stop. */
static int connect_main(worker *w, sigset_t *sigs)
{
    double wait = 1.0;
    for (int attempt = 1;; attempt++) {
        char err[256];
        w->main_broker = redis_url_connect(&w->broker_url, 10.0, err, sizeof err);
        if (w->main_broker) break;
        char *shown = redis_url_redacted(&w->broker_url);
        log_error("consumer: Cannot connect to %s: %s.\nTrying again in %.2f seconds... (%d)",
                  shown, err, wait, attempt);
        free(shown);
        struct timespec ts = {(time_t)wait, 0};
        if (sigtimedwait(sigs, NULL, &ts) > 0) return -1;
        if (wait < 32) wait *= 2;
    }
    if (w->backend_same_as_broker) {
        w->main_backend = w->main_broker;
    } else {
        w->main_backend = worker_connect(&w->backend_url, "result backend");
        if (!w->main_backend) return -1;
    }
    return 0;
}

static void declare_queues(worker *w)
{
    char err[256];
    for (size_t i = 0; i < w->queues.n; i++) {
        /* Queues are bound to Celery's default exchange, named after
         * task_default_queue (PROTOCOL §5). */
        if (transport_declare_queue(w->main_broker, &w->topts, w->queues.names[i],
                                    w->cfg->task_default_queue, w->cfg->task_default_queue,
                                    err, sizeof err) != 0)
            log_warning("Could not declare the binding of queue '%s': %s", w->queues.names[i], err);
    }
}

static void restore_visible(worker *w)
{
    char err[256];
    int n = transport_restore_visible(w->main_broker, &w->topts, time_now_us(), err, sizeof err);
    if (n < 0) log_warning("restore_visible failed: %s", err);
    else if (n > 0) log_info("Restored %d message(s) whose visibility timeout had passed", n);
}

/* ---- Shutdown ------------------------------------------------------------------ */

static void reconnect_main_if_broken(worker *w)
{
    if (w->main_broker && !w->main_broker->err) return;
    if (w->main_backend && w->main_backend != w->main_broker) redisFree(w->main_backend);
    if (w->main_broker) redisFree(w->main_broker);
    w->main_broker = worker_connect(&w->broker_url, "broker");
    w->main_backend = w->backend_same_as_broker ? w->main_broker
                                                : worker_connect(&w->backend_url, "result backend");
}

/* Hand back every reserved and ETA-held message, in delivery order, as
 * kombu does at shutdown (PROTOCOL §4.4 #1). Running acks_late tasks stopped
 * by a cold shutdown hand their own message back (pool.c). */
static void restore_held(worker *w)
{
    size_t cap = w->n_ready + w->n_eta;
    const char **tags = xcalloc(cap ? cap : 1, sizeof *tags);
    size_t n = 0;
    for (job *j = w->ready_head; j; j = j->next) tags[n++] = j->msg.delivery_tag;
    for (size_t i = 0; i < w->n_eta; i++) tags[n++] = w->eta[i]->msg.delivery_tag;
    if (n) {
        log_warning("Restoring %zu unacknowledged message(s)", n);
        reconnect_main_if_broken(w);
        char err[256];
        if (!w->main_broker ||
            transport_restore(w->main_broker, &w->topts, tags, n, err, sizeof err) < 0)
            log_error("Could not restore every message (%s); the rest stay in unacked and "
                      "come back after the visibility timeout", w->main_broker ? err : "no broker");
    }
    free(tags);
}

static void free_held(worker *w)
{
    while (w->ready_head) {
        job *j = w->ready_head;
        w->ready_head = j->next;
        job_free(j);
    }
    w->ready_tail = NULL;
    w->n_ready = 0;
    for (size_t i = 0; i < w->n_eta; i++) job_free(w->eta[i]);
    free(w->eta);
    w->eta = NULL;
    w->n_eta = 0;
}

/* ---- Main loop ------------------------------------------------------------------- */

/* Stop fetching and let running tasks finish within the grace (SIGTERM,
 * SIGINT, remote `shutdown`). worker-offline goes out first (PROTOCOL §12.6). */
static int64_t begin_warm_shutdown(worker *w, const char *why)
{
    log_warning("Warm shutdown (%s): no new tasks; waiting up to %gs for %d running "
                "task(s)", why, w->cfg->worker_shutdown_grace, pool_active(w));
    atomic_store(&w->stopping, 1);
    remote_shutdown_begins(w->remote);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->work_ready);
    pthread_mutex_unlock(&w->lock);
    return time_now_us() + (int64_t)(w->cfg->worker_shutdown_grace * USEC_PER_SEC);
}

static int run(worker *w, sigset_t *sigs)
{
    int64_t next_restore = time_now_us() + WORKER_RESTORE_VISIBLE_EVERY_US;
    int64_t grace_deadline = 0;
    for (;;) {
        struct timespec tick = {0, WORKER_TICK_MS * 1000000L};
        int sig = sigtimedwait(sigs, NULL, &tick);
        int stopping = atomic_load(&w->stopping);
        if (sig == SIGUSR1) {
            pool_log_slots(w);
        } else if (sig == SIGQUIT || ((sig == SIGINT || sig == SIGTERM) && stopping)) {
            log_warning("Cold shutdown (%s): stopping running tasks now", strsignal(sig));
            atomic_store(&w->stopping, 2);
            remote_shutdown_begins(w->remote);
            pool_cancel_all(w, TASK_CANCEL_SHUTDOWN);
        } else if (sig == SIGINT || sig == SIGTERM) {
            grace_deadline = begin_warm_shutdown(w, strsignal(sig));
        }
        remote_requests rq;
        remote_take_requests(w->remote, &rq);
        if (rq.shutdown && !atomic_load(&w->stopping))
            grace_deadline = begin_warm_shutdown(w, "remote control");
        if (rq.pool_delta && !atomic_load(&w->stopping))
            pool_resize(w, w->n_slots + rq.pool_delta);

        int64_t now = time_now_us();
        reconnect_main_if_broken(w);
        stopping = atomic_load(&w->stopping);
        if (!stopping) consumer_release_due(w, now);
        pool_check_limits(w, now);
        remote_tick(w->remote, now);
        if (!stopping && now >= next_restore && w->main_broker) {
            restore_visible(w);
            next_restore = now + WORKER_RESTORE_VISIBLE_EVERY_US;
        }
        if (stopping) {
            if (stopping == 1 && now >= grace_deadline && pool_active(w) > 0) {
                log_warning("Shutdown grace of %gs is over with %d task(s) still running: "
                            "cold shutdown", w->cfg->worker_shutdown_grace, pool_active(w));
                atomic_store(&w->stopping, 2);
                pool_cancel_all(w, TASK_CANCEL_SHUTDOWN);
            }
            if (pool_active(w) == 0 && atomic_load(&w->consumer_done)) break;
        }
    }
    return atomic_load(&w->stopping);
}

static int start(worker *w, const worker_flags *f)
{
    ptel_config *cfg = w->cfg;
    char err[512];
    w->n_slots = (int)cfg->worker_concurrency;
    w->send_events_flag = f->events;
    w->without_mingle = f->without_mingle;
    w->hostname = worker_expand_hostname(f->hostname ? f->hostname : "celery@%h");

    if (redis_url_parse(cfg->broker_url, &w->broker_url, err, sizeof err) != 0) {
        fprintf(stderr, "error: broker_url: %s\n", err);
        return -1;
    }
    if (redis_url_parse(cfg->result_backend, &w->backend_url, err, sizeof err) != 0) {
        fprintf(stderr, "error: result_backend: %s\n", err);
        return -1;
    }
    w->backend_same_as_broker = strcmp(cfg->broker_url, cfg->result_backend) == 0;
    set_transport_options(w);
    worker_drain_options(cfg, w->hostname, &w->drain_opts);
    transport_queues_init(&w->queues);
    for (size_t i = 0; i < cfg->task_queues.count; i++)
        transport_queues_add(&w->queues, cfg->task_queues.items[i]);
    return 0;
}

int worker_main(int argc, char **argv)
{
    worker_flags f;
    if (parse_flags(argc, argv, &f) != 0) return 2;

    ptel_config cfg;
    if (worker_load_config(&cfg, f.config) != 0) { config_free(&cfg); return 1; }
    if (apply_flag(&cfg, "--queues", "task_queues", f.queues) ||
        apply_flag(&cfg, "--concurrency", "worker_concurrency", f.concurrency) ||
        apply_flag(&cfg, "--prefetch-multiplier", "worker_prefetch_multiplier", f.prefetch) ||
        apply_flag(&cfg, "--log-format", "worker_log_format", f.log_format) ||
        apply_flag(&cfg, "--statedb", "worker_statedb", f.statedb) ||
        apply_flag(&cfg, "--metrics-port", "worker_metrics_port", f.metrics_port)) {
        config_free(&cfg);
        return 2;
    }
    log_level level = LOG_INFO;
    if (f.loglevel && log_level_parse(f.loglevel, &level) != 0) {
        fprintf(stderr, "error: --loglevel: unknown level '%s' (debug, info, warning, error, "
                        "critical)\n", f.loglevel);
        config_free(&cfg);
        return 2;
    }
    log_setup(level, cfg.worker_log_format, NULL);

    /* Signals are taken synchronously by the main loop: block them here,
     * before any thread starts, so every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGQUIT);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    worker w;
    memset(&w, 0, sizeof w);
    w.cfg = &cfg;
    w.started_us = time_now_us();
    atomic_init(&w.broker_ok, 0);
    worker_metrics_register();
    pthread_mutex_init(&w.lock, NULL);
    pthread_mutex_init(&w.queues_lock, NULL);
    pthread_cond_init(&w.work_ready, NULL);
    pthread_cond_init(&w.room, NULL);

    int rc = 1;
    if (start(&w, &f) != 0) goto out;
    print_banner(&w);
    if (connect_main(&w, &sigs) != 0) goto out;
    char *shown = redis_url_redacted(&w.broker_url);
    log_info("Connected to %s", shown);
    free(shown);
    restore_visible(&w);
    declare_queues(&w);
    char err[256];
    if (cfg.worker_metrics_port > 0 &&
        metrics_http_start(&w, cfg.worker_metrics_port, err, sizeof err) != 0) {
        log_critical("metrics endpoint: %s", err);
        goto out;
    }
    if (pool_start(&w, err, sizeof err) != 0) {
        log_critical("%s", err);
        goto out;
    }
    /* Mingle and the pidbox come after the pool (handlers read the slots)
     * and before the consumer (PROTOCOL §9.5). */
    w.remote = remote_start(&w);
    if (pthread_create(&w.consumer_thread, NULL, consumer_main, &w) != 0) {
        log_critical("cannot start the consumer thread");
        atomic_store(&w.stopping, 2);
        pool_join(&w);
        goto out;
    }
    log_info("%s ready.", w.hostname);

    int how = run(&w, &sigs);
    pthread_join(w.consumer_thread, NULL);
    pool_join(&w);
    restore_held(&w);
    remote_stop(w.remote);
    w.remote = NULL;
    log_info("%s: %s shutdown complete", w.hostname, how == 2 ? "cold" : "warm");
    rc = 0;

out:
    remote_stop(w.remote);
    metrics_http_stop(&w);
    free_held(&w);
    pool_free(&w);
    transport_queues_deinit(&w.queues);
    if (w.main_backend && w.main_backend != w.main_broker) redisFree(w.main_backend);
    if (w.main_broker) redisFree(w.main_broker);
    redis_url_free(&w.broker_url);
    redis_url_free(&w.backend_url);
    free(w.hostname);
    config_free(&cfg);
    return rc;
}
