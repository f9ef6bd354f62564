/* common/log.h: operator-facing log lines.
 *
 * The default format is Celery's, so existing log tooling keeps working:
 *   [2026-11-27 22:10:16,836: INFO/MainProcess] Connected to redis://127.0.0.1:6379/0
 * `--log-format json` switches to one JSON object per line with the same
 * fields. Each thread names itself (MainProcess, Slot-1, ...) once; lines are
 * written whole under a lock so threads never interleave. */
#ifndef PTEL_LOG_H
#define PTEL_LOG_H

#include <stdio.h>

typedef enum {
    LOG_DEBUG = 10,
    LOG_INFO = 20,
    LOG_WARNING = 30,
    LOG_ERROR = 40,
    LOG_CRITICAL = 50,
} log_level;

typedef enum { LOG_FORMAT_TEXT, LOG_FORMAT_JSON } log_format;

/* Configure before any thread starts. out == NULL means stderr. */
void log_setup(log_level min_level, log_format format, FILE *out);
/* "debug", "INFO", "warning", "error", "critical" (any case) -> 0, else -1. */
int log_level_parse(const char *name, log_level *out);
int log_enabled(log_level level);
/* Name shown after the level ("MainProcess", "Slot-2"); copied, thread-local. */
void log_set_thread_name(const char *name);

void log_write(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...)    log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)     log_write(LOG_INFO, __VA_ARGS__)
#define log_warning(...)  log_write(LOG_WARNING, __VA_ARGS__)
#define log_error(...)    log_write(LOG_ERROR, __VA_ARGS__)
#define log_critical(...) log_write(LOG_CRITICAL, __VA_ARGS__)

#endif
