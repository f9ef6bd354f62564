/* worker/metrics_http.h: the opt-in observability endpoint of a worker
 * process (DESIGN §6): Prometheus text at /metrics and a health check at
 * /healthz, served by one thread on worker_metrics_port / --metrics-port. */
#ifndef PTEL_METRICS_HTTP_H
#define PTEL_METRICS_HTTP_H

#include <stddef.h>

struct worker;

/* Register every metric family the worker reports (call before any thread
 * counts anything, even when no port is configured). */
void worker_metrics_register(void);

/* Start the endpoint on `port` (all interfaces). 0 ok, -1 with err set. */
int metrics_http_start(struct worker *w, int port, char *err, size_t errlen);
/* Stop the thread and close the socket (no-op when never started). */
void metrics_http_stop(struct worker *w);

#endif
