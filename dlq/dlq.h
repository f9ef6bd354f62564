/* dlq/dlq.h: the dead-letter stream (CONTRACT §5) and its operator tools.
 *
 * Owns the shape of one DLQ record and the functions that write it
 * (dlq_write, or dlq_append + dlq_read_reply pipelined), the stream-key glob the drain and the replay tool both use to
 * stay inside the telemetry streams (dlq_key_matches), and the `dlq` CLI
 * (dlq_cli.c: list, show, replay, purge). It does not decide what is
 * dead-lettered: the drain (tasks/drain.c) does.
 *
 * Record fields, in order (all strings, as XADD stores them):
 *   original_stream, entry_id, reason, moved_at    upstream's four fields, kept
 *                                                  so existing tooling reads them
 *   ingestion_id, source, org_id_hash              copied from the original entry
 *   events          JSON array of only the rejected event(s), or the entry's
 *                   raw `events` field when the whole entry was rejected
 *   event_index     the event's index in the entry, "" for the whole entry
 *   error_class     validation | privacy | persistence | max_deliveries
 *   deliveries      how many times the entry had been delivered
 *   worker          hostname of the worker that wrote the record
 * moved_at is Python's str(time.time()) ("1795817419.0804741"), as upstream. */
#ifndef PTEL_DLQ_H
#define PTEL_DLQ_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#define DLQ_KEY_DEFAULT "product-telemetry:dlq"
#define DLQ_STREAM_PATTERN_DEFAULT "product-telemetry:*:events"
/* MAXLEN ~ bound of the DLQ stream: enough for days of bad input, small
 * enough that a flood of bad events cannot fill Redis' memory. */
#define DLQ_MAXLEN_DEFAULT 100000L
/* Replayed entries are appended with the same bound upstream uses (CONTRACT §1.2). */
#define DLQ_REPLAY_MAXLEN 100000L

#define DLQ_CLASS_VALIDATION "validation"
#define DLQ_CLASS_PRIVACY "privacy"
#define DLQ_CLASS_PERSISTENCE "persistence"
#define DLQ_CLASS_MAX_DELIVERIES "max_deliveries"

typedef struct dlq_options {
    const char *redis_url;       /* the telemetry Redis (REDIS_URL) */
    const char *dlq_key;         /* NULL: DLQ_KEY_DEFAULT */
    long maxlen;                 /* <= 0: DLQ_MAXLEN_DEFAULT */
    const char *stream_pattern;  /* replay writes only keys matching it; NULL: default */
} dlq_options;

/* One record to write. Strings are borrowed; NULL is written as "". */
typedef struct dlq_record {
    const char *original_stream;
    const char *entry_id;
    const char *reason;
    double moved_at;             /* epoch seconds; 0: now */
    const char *ingestion_id;
    const char *source;
    const char *org_id_hash;
    const char *events;          /* JSON text (see above) */
    size_t events_len;           /* 0: strlen(events) */
    int event_index;             /* -1: the whole entry */
    const char *error_class;
    long deliveries;
    const char *worker;
} dlq_record;

/* XADD <dlq> MAXLEN ~ <maxlen> * <fields above>. 0 on success; -1 with the
 * reason in err (a Redis error reply, or the connection's error: the caller
 * decides whether to reconnect, c->err tells it). */
int dlq_write(redisContext *c, const dlq_options *o, const dlq_record *r, char *err, size_t errlen);

/* The same XADD pipelined: dlq_append queues it in c's output buffer (sent
 * by the next read), dlq_read_reply reads the reply of the oldest one still
 * unanswered; replies come in append order. Each 0, or -1 with err filled
 * (c->err set: the connection is broken and no further reply will come). */
int dlq_append(redisContext *c, const dlq_options *o, const dlq_record *r, char *err, size_t errlen);
int dlq_read_reply(redisContext *c, const dlq_options *o, char *err, size_t errlen);

/* Redis' glob (KEYS/SCAN MATCH): * ? [abc] [^a-z] and \ escapes. 1 on match. */
int dlq_key_matches(const char *pattern, const char *key);

/* The resolved defaults of o (key, maxlen, pattern), never NULL/0. */
const char *dlq_key(const dlq_options *o);
long dlq_maxlen(const dlq_options *o);
const char *dlq_pattern(const dlq_options *o);

/* `ptel-worker dlq list|show|replay|purge ...`: argv[0] is "dlq".
 * Output on stdout, errors on stderr. Returns the exit code: 0 ok, 1 error
 * (Redis unreachable, a record that could not be replayed), 2 usage. */
int dlq_cli_main(int argc, char **argv, const dlq_options *o);

#endif
