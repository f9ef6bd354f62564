/* broker/message.h: Celery task messages as they sit in a kombu Redis list.
 *
 * Decoding turns one envelope (PROTOCOL §3.1: JSON with a base64 body) into
 * a plain task_message: envelope -> base64 -> optional decompression ->
 * json or msgpack -> protocol v2 (headers.task present) or v1 (body object).
 * Content types a worker must never deserialize (pickle, yaml, anything
 * unknown) are refused before the body is even base64-decoded.
 *
 * Building goes the other way: the retry republish a Python worker sends
 * (PROTOCOL §12.3) and a fresh v2 message shaped like apply_async's.
 *
 * This module does not talk to Redis and does not decide what to do with a
 * bad message; message_error says what was wrong in Celery's terms so the
 * worker can log, ack and store FAILURE as Celery would (§4.5). */
#ifndef PTEL_BROKER_MESSAGE_H
#define PTEL_BROKER_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "common/buf.h"
#include "common/pyjson.h"

/* Envelopes bigger than this are refused unparsed (a Python worker has no
 * limit; we bound memory per prefetched message). */
#define MESSAGE_MAX_BYTES (8u * 1024u * 1024u)
/* An over-limit envelope up to this size is still parsed once, only to
 * learn its task id so a FAILURE can be stored for it (then freed). */
#define MESSAGE_IDENTITY_PARSE_MAX (256u * 1024u * 1024u)
/* A compressed body may inflate to at most this many bytes (bomb guard). */
#define MESSAGE_MAX_DECOMPRESSED_BYTES (64u * 1024u * 1024u)

typedef struct message_limits {
    size_t max_bytes;              /* envelope bytes; 0 = MESSAGE_MAX_BYTES */
    size_t max_decompressed_bytes; /* body after inflation; 0 = MESSAGE_MAX_DECOMPRESSED_BYTES */
} message_limits;

typedef enum {
    MESSAGE_OK = 0,
    MESSAGE_ERR_MALFORMED_ENVELOPE,  /* not JSON / not an object / no base64 body */
    MESSAGE_ERR_CONTENT_DISALLOWED,  /* pickle, yaml, unknown or missing content-type */
    MESSAGE_ERR_DECODE_BODY,         /* bad base64, unknown/corrupt compression, bad json/msgpack */
    MESSAGE_ERR_MISSING_FIELD,       /* no task id / task name / args shape wrong */
    MESSAGE_ERR_TOO_LARGE,           /* envelope or inflated body over the limit */
} message_error_kind;

typedef struct message_error {
    message_error_kind kind;
    char *task_id;         /* owned; when known, so the worker can store FAILURE */
    char *task_name;       /* owned; when known */
    char exc_type[64];     /* "ContentDisallowed", "DecodeError", "InvalidTaskError", ... */
    char exc_module[64];   /* "kombu.exceptions" or "celery.exceptions" */
    char msg[256];         /* operator text, no body bytes */
} message_error;

void message_error_free(message_error *err);

typedef struct task_message {
    char *raw;              /* envelope bytes, owned, NUL-terminated */
    size_t raw_len;
    /* properties / envelope */
    char *delivery_tag, *exchange, *routing_key, *content_type, *content_encoding;
    char *reply_to, *correlation_id;
    int priority;
    int redelivered;        /* headers.redelivered or delivery_info.redelivered */
    int protocol;           /* 1 or 2 */
    /* task fields (from headers for v2, from the body for v1); NULL = absent/null */
    char *id, *task, *root_id, *parent_id, *group, *origin, *argsrepr, *kwargsrepr;
    char *eta_text, *expires_text;
    int64_t eta_us, expires_us;            /* 0 = none */
    int retries;
    double time_limit_hard, time_limit_soft; /* 0 = none; headers.timelimit is [hard, soft] */
    int ignore_result;
    pj_value *args;         /* PJ_ARRAY, owned */
    pj_value *kwargs;       /* PJ_OBJECT, owned */
    pj_value *embed;        /* v2 embed object, or for v1 {callbacks, errbacks, chain, chord}; owned */
    cJSON *envelope;        /* the parsed envelope, kept for republish; owned */
} task_message;

/* Decode raw[0..len). limits may be NULL (defaults). On success returns 0
 * and fills *out (message_free it). On failure returns -1, *out is left
 * empty (nothing to free) and *err is filled (message_error_free it). */
int message_decode(const char *raw, size_t len, const message_limits *limits,
                   task_message *out, message_error *err);
void message_free(task_message *m);

/* The message Celery republishes when this task retries (PROTOCOL §12.3):
 * same id/task/root/args/kwargs/body/queue/priority, retries + 1, eta as
 * ISO "+00:00" (eta_us = 0: no eta), parent_id = its own id,
 * headers.origin = origin_node, a new delivery_tag, properties
 * "replaced_task_nesting": 0 and "origin" (the retried message's origin),
 * custom headers kept, redelivered flags dropped. Appends the envelope
 * JSON to *out. 0 on success, -1 when orig lacks what is needed (v1
 * messages are republished as v2, as Celery 5 does). */
int message_build_retry(const task_message *orig, int64_t eta_us, const char *origin_node, buf *out);

/* A fresh protocol-v2 JSON message, byte-shaped like Python's apply_async. */
typedef struct message_new_task {
    const char *task;          /* required: registered task name */
    const char *queue;         /* required: routing key (anonymous exchange) */
    const pj_value *args;      /* borrowed PJ_ARRAY; NULL = [] */
    const pj_value *kwargs;    /* borrowed PJ_OBJECT; NULL = {} */
    const char *id;            /* NULL = new uuid4 */
    const char *root_id;       /* NULL = id */
    const char *parent_id;     /* NULL = null */
    const char *group;         /* NULL = null */
    const char *origin;        /* NULL = "gen<pid>@<hostname>" */
    const char *reply_to;      /* NULL = "" (Python writes reply_to or '') */
    const char *delivery_tag;  /* NULL = new uuid4 (tests pin it) */
    int priority;              /* 0..9; Python writes 0 when not given */
    int64_t now_us;            /* 0 = time_now_us(); base for countdown/expires_in */
    double countdown;          /* > 0: eta = now + countdown */
    int64_t eta_us;            /* absolute eta; used when countdown == 0; 0 = none */
    double expires_in;         /* > 0: expires = now + expires_in seconds */
    int64_t expires_us;        /* absolute expires when expires_in == 0; 0 = none */
    double time_limit_hard, time_limit_soft; /* 0 = null */
    int retries;
    int ignore_result;
} message_new_task;

/* Appends the envelope JSON to *out. 0, or -1 when task/queue is missing or
 * args/kwargs have the wrong type. */
int message_build_task(const message_new_task *spec, buf *out);

/* Appends kombu's envelope around an already base64-encoded JSON body:
 * {"body", "content-encoding": "utf-8", "content-type": "application/json",
 * "headers", "properties"}. Takes ownership of the three values. */
void message_envelope_json(pj_value *body_b64, pj_value *headers, pj_value *props, buf *out);

#endif
