/* worker/drain_options.h: the drain's and the DLQ tools' settings, taken from
 * the worker configuration (the only place tasks/ and dlq/ get them from). */
#ifndef PTEL_WORKER_DRAIN_OPTIONS_H
#define PTEL_WORKER_DRAIN_OPTIONS_H

#include "dlq/dlq.h"
#include "tasks/drain.h"
#include "worker/config.h"

/* Strings in *out are borrowed from cfg and hostname. consumer stays NULL. */
void worker_drain_options(const ptel_config *cfg, const char *hostname, drain_options *out);
void worker_dlq_options(const ptel_config *cfg, dlq_options *out);

#endif
