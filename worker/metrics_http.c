/* worker/metrics_http.c: /metrics and /healthz.
 *
 * One thread owns the listening socket and serves one request at a time
 * (scrapes are rare and tiny). At each scrape it adds the live gauges the
 * registry cannot know by itself: slots busy, reserved and ETA-held messages,
 * and, from the telemetry Redis, each stream's pending count and lag for the
 * consumer group (XINFO GROUPS) and the DLQ length, cached for
 * METRICS_REDIS_CACHE_US so scrapes never load Redis.
 *
 * Health: /healthz answers 200 only while the consumer's broker connection
 * works and ClickHouse answered the last probe (every HEALTH_PROBE_US); 503
 * with the reason otherwise. */
#include "worker/metrics_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clickhouse/clickhouse.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "worker/state.h"

#define HEALTH_PROBE_US (2 * USEC_PER_SEC)
#define METRICS_REDIS_CACHE_US (5 * USEC_PER_SEC)
#define METRICS_MAX_STREAMS 1000      /* streams reported per scrape */
#define REQUEST_MAX 4096

static const double insert_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

void worker_metrics_register(void)
{
    metrics_register("ptel_tasks_total", METRIC_COUNTER,
                     "Tasks finished, by task name and final state.", NULL, 0);
    metrics_register("ptel_tasks_received_total", METRIC_COUNTER,
                     "Task messages received, by task name.", NULL, 0);
    metrics_register("ptel_task_runtime_seconds", METRIC_HISTOGRAM,
                     "Task run time, by task name.", NULL, 0);
    metrics_register("ptel_events_stored_total", METRIC_COUNTER,
                     "Telemetry events stored in ClickHouse.", NULL, 0);
    metrics_register("ptel_events_rejected_total", METRIC_COUNTER,
                     "Telemetry events that failed validation.", NULL, 0);
    metrics_register("ptel_events_dead_lettered_total", METRIC_COUNTER,
                     "Telemetry events moved to the dead-letter stream.", NULL, 0);
    metrics_register("ptel_entries_reclaimed_total", METRIC_COUNTER,
                     "Stream entries reclaimed from idle consumers.", NULL, 0);
    metrics_register("ptel_clickhouse_insert_seconds", METRIC_HISTOGRAM,
                     "ClickHouse INSERT latency.", insert_buckets,
                     sizeof insert_buckets / sizeof insert_buckets[0]);
    metrics_register("ptel_clickhouse_insert_rows_total", METRIC_COUNTER,
                     "Rows sent in successful ClickHouse INSERTs.", NULL, 0);
    metrics_register("ptel_clickhouse_errors_total", METRIC_COUNTER,
                     "ClickHouse request failures, by class (transient/permanent).", NULL, 0);
    metrics_register("ptel_redis_errors_total", METRIC_COUNTER,
                     "Redis command failures, by role (broker/telemetry).", NULL, 0);
    metrics_register("ptel_redis_reconnects_total", METRIC_COUNTER,
                     "Redis reconnections, by role.", NULL, 0);
    metrics_register("ptel_worker_active_tasks", METRIC_GAUGE, "Tasks running now.", NULL, 0);
    metrics_register("ptel_worker_reserved_messages", METRIC_GAUGE,
                     "Messages prefetched and waiting for a slot.", NULL, 0);
    metrics_register("ptel_worker_eta_messages", METRIC_GAUGE,
                     "Messages held until their ETA.", NULL, 0);
    metrics_register("ptel_worker_prefetch_limit", METRIC_GAUGE,
                     "Most messages held unacked (concurrency x prefetch multiplier).", NULL, 0);
    metrics_register("ptel_stream_pending", METRIC_GAUGE,
                     "Entries delivered to the consumer group and not yet acked, by stream.", NULL, 0);
    metrics_register("ptel_stream_lag", METRIC_GAUGE,
                     "Entries not yet delivered to the consumer group, by stream.", NULL, 0);
    metrics_register("ptel_dlq_length", METRIC_GAUGE, "Records in the dead-letter stream.", NULL, 0);
    metrics_register("ptel_up", METRIC_GAUGE,
                     "1 while the component answered its last check (broker, clickhouse).", NULL, 0);
}

/* ---- Live values ----------------------------------------------------------- */

typedef struct metrics_server {
    worker *w;
    int fd;
    pthread_t thread;
    atomic_int stop;
    ch_client *ch;
    int64_t next_probe_us;
    int clickhouse_ok;
    char clickhouse_error[sizeof(((ch_error *)0)->msg)];
    redisContext *redis;
    int64_t next_redis_us;
} metrics_server;

static void probe_clickhouse(metrics_server *m, int64_t now)
{
    if (now < m->next_probe_us) return;
    m->next_probe_us = now + HEALTH_PROBE_US;
    ch_error err;
    memset(&err, 0, sizeof err);
    if (!m->ch) m->ch = ch_client_new(m->w->cfg->clickhouse_url, &err);
    if (m->ch) {
        ch_client_set_timeouts(m->ch, 1000, 2000);
        if (ch_query(m->ch, "SELECT 1", NULL, &err) == 0) {
            m->clickhouse_ok = 1;
            metrics_set("ptel_up", "component=\"clickhouse\"", 1);
            return;
        }
    }
    m->clickhouse_ok = 0;
    snprintf(m->clickhouse_error, sizeof m->clickhouse_error, "%s", err.msg);
    metrics_set("ptel_up", "component=\"clickhouse\"", 0);
}

static void stream_gauges(metrics_server *m, int64_t now)
{
    if (now < m->next_redis_us) return;
    m->next_redis_us = now + METRICS_REDIS_CACHE_US;
    const ptel_config *cfg = m->w->cfg;
    if (!m->redis || m->redis->err) {
        if (m->redis) redisFree(m->redis);
        redis_url u;
        char err[256];
        m->redis = NULL;
        if (redis_url_parse(cfg->telemetry_redis_url, &u, err, sizeof err) == 0) {
            m->redis = redis_url_connect(&u, 2.0, err, sizeof err);
            redis_url_free(&u);
        }
        if (!m->redis) return;
    }
    redisReply *r = redisCommand(m->redis, "XLEN %s", cfg->telemetry_dlq_stream);
    if (r && r->type == REDIS_REPLY_INTEGER) metrics_set("ptel_dlq_length", "", (double)r->integer);
    if (r) freeReplyObject(r);

    char cursor[32] = "0";
    int reported = 0, rounds = 0;
    do {
        r = redisCommand(m->redis, "SCAN %s MATCH %s COUNT 1000 TYPE stream", cursor,
                         cfg->telemetry_stream_pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r) freeReplyObject(r);
            return;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements && reported < METRICS_MAX_STREAMS; i++) {
            const char *key = r->element[1]->element[i]->str;
            redisReply *g = redisCommand(m->redis, "XINFO GROUPS %s", key);
            for (size_t k = 0; g && g->type == REDIS_REPLY_ARRAY && k < g->elements; k++) {
                redisReply *grp = g->element[k];
                long long pending = -1, lag = -1;
                int ours = 0;
                for (size_t f = 0; grp->type == REDIS_REPLY_ARRAY && f + 1 < grp->elements; f += 2) {
                    const char *name = grp->element[f]->str;
                    redisReply *v = grp->element[f + 1];
                    if (!strcmp(name, "name") && v->str && !strcmp(v->str, cfg->telemetry_consumer_group)) ours = 1;
                    else if (!strcmp(name, "pending") && v->type == REDIS_REPLY_INTEGER) pending = v->integer;
                    else if (!strcmp(name, "lag") && v->type == REDIS_REPLY_INTEGER) lag = v->integer;
                }
                if (!ours) continue;
                buf labels = BUF_INIT;
                buf_puts(&labels, "stream=\"");
                metrics_label_escape(&labels, key);
                buf_putc(&labels, '"');
                if (pending >= 0) metrics_set("ptel_stream_pending", buf_cstr(&labels), (double)pending);
                if (lag >= 0) metrics_set("ptel_stream_lag", buf_cstr(&labels), (double)lag);
                buf_free(&labels);
                reported++;
            }
            if (g) freeReplyObject(g);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0 && ++rounds < 100 && reported < METRICS_MAX_STREAMS);
}

static void worker_gauges(metrics_server *m)
{
    worker *w = m->w;
    pthread_mutex_lock(&w->lock);
    int active = 0;
    for (int i = 0; i < w->n_slots; i++)
        if (w->slots[i] && w->slots[i]->status == SLOT_RUNNING) active++;
    metrics_set("ptel_worker_active_tasks", "", active);
    metrics_set("ptel_worker_reserved_messages", "", (double)w->n_ready);
    metrics_set("ptel_worker_eta_messages", "", (double)w->n_eta);
    metrics_set("ptel_worker_prefetch_limit", "", (double)worker_prefetch_limit(w));
    pthread_mutex_unlock(&w->lock);
    metrics_set("ptel_up", "component=\"broker\"", atomic_load(&w->broker_ok) ? 1 : 0);
}

/* ---- HTTP ------------------------------------------------------------------ */

static void respond(int fd, int status, const char *reason, const char *type, const buf *body)
{
    buf out = BUF_INIT;
    buf_printf(&out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n", status, reason, type, body->len);
    buf_append(&out, body->data ? body->data : "", body->len);
    size_t off = 0;
    while (off < out.len) {
        ssize_t n = send(fd, out.data + off, out.len - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += (size_t)n;
    }
    buf_free(&out);
}

static void serve(metrics_server *m, int fd)
{
    char req[REQUEST_MAX + 1];
    size_t len = 0;
    struct pollfd p = {fd, POLLIN, 0};
    while (len < REQUEST_MAX && poll(&p, 1, 2000) > 0) {
        ssize_t n = recv(fd, req + len, REQUEST_MAX - len, 0);
        if (n <= 0) break;
        len += (size_t)n;
        req[len] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
    }
    req[len] = '\0';
    int64_t now = time_now_us();
    buf body = BUF_INIT;
    if (!strncmp(req, "GET /metrics", 12)) {
        worker_gauges(m);
        probe_clickhouse(m, now);
        stream_gauges(m, now);
        metrics_render(&body);
        respond(fd, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", &body);
    } else if (!strncmp(req, "GET /healthz", 12)) {
        probe_clickhouse(m, now);
        int broker_ok = atomic_load(&m->w->broker_ok);
        if (broker_ok && m->clickhouse_ok) {
            buf_puts(&body, "ok\n");
            respond(fd, 200, "OK", "text/plain", &body);
        } else {
            if (!broker_ok) buf_puts(&body, "broker: unreachable\n");
            if (!m->clickhouse_ok) buf_printf(&body, "clickhouse: %s\n", m->clickhouse_error);
            respond(fd, 503, "Service Unavailable", "text/plain", &body);
        }
    } else {
        buf_puts(&body, "not found: try /metrics or /healthz\n");
        respond(fd, 404, "Not Found", "text/plain", &body);
    }
    buf_free(&body);
}

static void *metrics_main(void *arg)
{
    metrics_server *m = arg;
    log_set_thread_name("Metrics");
    while (!atomic_load(&m->stop)) {
        struct pollfd p = {m->fd, POLLIN, 0};
        int64_t now = time_now_us();
        probe_clickhouse(m, now);   /* keeps /healthz fresh between scrapes */
        if (poll(&p, 1, 200) <= 0) continue;
        int fd = accept(m->fd, NULL, NULL);
        if (fd < 0) continue;
        serve(m, fd);
        close(fd);
    }
    return NULL;
}

int metrics_http_start(worker *w, int port, char *err, size_t errlen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 16) != 0) {
        snprintf(err, errlen, "cannot listen on port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    metrics_server *m = calloc(1, sizeof *m);
    m->w = w;
    m->fd = fd;
    atomic_init(&m->stop, 0);
    if (pthread_create(&m->thread, NULL, metrics_main, m) != 0) {
        snprintf(err, errlen, "cannot start the metrics thread");
        close(fd);
        free(m);
        return -1;
    }
    w->metrics = m;
    log_info("Metrics on http://0.0.0.0:%d/metrics, health on /healthz", port);
    return 0;
}

void metrics_http_stop(worker *w)
{
    metrics_server *m = w->metrics;
    if (!m) return;
    atomic_store(&m->stop, 1);
    pthread_join(m->thread, NULL);
    close(m->fd);
    ch_client_free(m->ch);
    if (m->redis) redisFree(m->redis);
    free(m);
    w->metrics = NULL;
}
