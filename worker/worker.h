/* worker/worker.h: the `ptel-worker worker` subcommand: a Celery worker
 * process consuming task queues on Redis. */
#ifndef PTEL_WORKER_H
#define PTEL_WORKER_H

/* Runs until shutdown. Returns the process exit code (0 after a warm or cold
 * shutdown, 1 on a start-up error, 2 on a usage error). */
int worker_main(int argc, char **argv);

/* Shared by subcommands: load --config FILE (may be NULL), then the
 * environment. Prints "error: ..." and returns -1 on failure. */
struct ptel_config;
int worker_load_config(struct ptel_config *cfg, const char *path);

/* Expand Celery's %h (host), %n (name before the first dot), %d (domain)
 * in a node name, and prefix "celery@" when there is no '@'. Caller frees. */
char *worker_expand_hostname(const char *pattern);

#endif
