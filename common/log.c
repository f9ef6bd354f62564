/* common/log.c: Celery-style and JSON log lines (see log.h).
 *
 * Global state: the configuration below is written once by log_setup() from
 * the main thread before any other thread exists, and only read afterwards;
 * `log_lock` serialises the writes of lines too long to be written
 * atomically (see log_write). */
#include "common/log.h"
#include "common/buf.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#include <limits.h>

static log_level log_min_level = LOG_INFO;
static log_format log_fmt = LOG_FORMAT_TEXT;
static FILE *log_out = NULL;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local char thread_name[32] = "MainProcess";

void log_setup(log_level min_level, log_format format, FILE *out)
{
    log_min_level = min_level;
    log_fmt = format;
    log_out = out;
}

int log_level_parse(const char *name, log_level *out)
{
    static const struct { const char *name; log_level level; } names[] = {
        {"debug", LOG_DEBUG}, {"info", LOG_INFO}, {"warning", LOG_WARNING},
        {"warn", LOG_WARNING}, {"error", LOG_ERROR}, {"critical", LOG_CRITICAL},
        {"fatal", LOG_CRITICAL},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

int log_enabled(log_level level)
{
    return level >= log_min_level;
}

void log_set_thread_name(const char *name)
{
    snprintf(thread_name, sizeof thread_name, "%s", name);
}

static const char *level_name(log_level level)
{
    switch (level) {
    case LOG_DEBUG: return "DEBUG";
    case LOG_INFO: return "INFO";
    case LOG_WARNING: return "WARNING";
    case LOG_ERROR: return "ERROR";
    default: return "CRITICAL";
    }
}

/* JSON string escaping for the json format; the message is ours, UTF-8. */
static void json_escape(buf *b, const char *s, size_t n)
{
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)c);
        } else if (c == '\n') {
            buf_puts(b, "\\n");
        } else if (c < 0x20) {
            buf_printf(b, "\\u%04x", c);
        } else {
            buf_putc(b, (char)c);
        }
    }
    buf_putc(b, '"');
}

void log_write(log_level level, const char *fmt, ...)
{
    if (level < log_min_level) return;

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);

    buf msg = BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);

    buf line = BUF_INIT;
    if (log_fmt == LOG_FORMAT_JSON) {
        buf_printf(&line, "{\"time\": \"%s.%03ld\", \"level\": \"%s\", \"process\": ",
                   stamp, (long)(tv.tv_usec / 1000), level_name(level));
        json_escape(&line, thread_name, strlen(thread_name));
        buf_puts(&line, ", \"message\": ");
        json_escape(&line, buf_cstr(&msg), msg.len);
        buf_puts(&line, "}\n");
    } else {
        buf_printf(&line, "[%s,%03ld: %s/%s] %s\n", stamp, (long)(tv.tv_usec / 1000),
                   level_name(level), thread_name, buf_cstr(&msg));
    }

    /* One write(2) per line, straight to the descriptor (every line goes
     * through here and is flushed, so the FILE buffer is always empty). A
     * line of at most PIPE_BUF bytes is written atomically to a pipe, and
     * Linux serialises writes to one open file, so threads need no lock
     * for it: a lock here made the pool's threads queue behind each
     * other's write syscalls (a futex round per task line under load).
     * Longer lines, and streams without a descriptor (a memstream in
     * tests), take the lock and stdio. */
    FILE *out = log_out ? log_out : stderr;
    int fd = fileno(out);
    if (fd >= 0 && line.len <= PIPE_BUF) {
        for (size_t off = 0; off < line.len;) {
            ssize_t n = write(fd, line.data + off, line.len - off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            off += (size_t)n;
        }
    } else {
        pthread_mutex_lock(&log_lock);
        fwrite(line.data, 1, line.len, out);
        fflush(out);
        pthread_mutex_unlock(&log_lock);
    }

    buf_free(&msg);
    buf_free(&line);
}
