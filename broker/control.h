/* broker/control.h: kombu's pidbox (Celery remote control) on Redis.
 *
 * Owns the wire side of `celery inspect` / `celery control` (PROTOCOL §8):
 * parsing a command envelope PUBLISHed on `/{db}.celery.pidbox`, deciding
 * whether it is for this node (destination list, or pattern with the glob or
 * pcre matcher), the reply envelope (headers {ticket, clock}, body
 * {node: value}) and its delivery: SMEMBERS the reply exchange's binding set,
 * LPUSH to the bound queue, or drop silently when the client's queue is gone
 * (§5, §8.2). Also the node's own binding (`_kombu.binding.celery.pidbox`),
 * the subscriber thread that runs a handler per command, and the client side
 * of a broadcast call with replies (mingle's `hello`, §9).
 *
 * Does not own what commands do: the handler (worker/remote.c) gets the
 * parsed command and returns the reply value. Malformed messages are logged
 * and skipped; a lost connection is re-established with backoff.
 *
 * Two Lamport clocks are involved (PROTOCOL §7.3): the mailbox clock stamps
 * commands and replies; the app clock is advanced once per command received. */
#ifndef PTEL_BROKER_CONTROL_H
#define PTEL_BROKER_CONTROL_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "broker/events.h"
#include "broker/url.h"
#include "common/buf.h"
#include "common/pyjson.h"

/* Envelopes larger than this are refused unparsed (a command is a few
 * hundred bytes; a hello with 50,000 revoked ids is about 5 MB). */
#define CONTROL_MAX_MESSAGE_BYTES (16u * 1024u * 1024u)
/* How often the subscriber thread looks at its stop flag. */
#define CONTROL_POLL_MS 200
/* Reconnect backoff of the subscriber: first wait and cap. */
#define CONTROL_RECONNECT_MIN_MS 100
#define CONTROL_RECONNECT_MAX_MS 5000

/* kombu's names for the control exchanges (Mailbox 'celery'). */
#define CONTROL_EXCHANGE "celery.pidbox"
#define CONTROL_REPLY_EXCHANGE "reply.celery.pidbox"

/* ---- Commands ------------------------------------------------------------ */

typedef struct control_command {
    char *method;
    pj_value *arguments;          /* PJ_OBJECT, never NULL ({} when absent) */
    pj_value *destination;        /* PJ_ARRAY of node names, or NULL */
    char *pattern, *matcher;      /* NULL when absent */
    char *ticket;                 /* NULL for a cast (no reply wanted) */
    char *reply_exchange;         /* reply_to.exchange; NULL for a cast */
    char *reply_routing_key;      /* reply_to.routing_key */
    unsigned long long clock;     /* headers.clock, 0 when absent */
} control_command;

/* Parse one PUBLISHed pidbox envelope (JSON, base64 JSON body). 0, or -1 with
 * a reason in err; *out is then empty (nothing to free). */
int control_parse(const char *payload, size_t len, control_command *out, char *err, size_t errlen);
void control_command_free(control_command *c);
/* kombu Node.handle_message: 1 when the command is for `hostname`. */
int control_matches(const control_command *c, const char *hostname);

/* ---- Envelopes (pure) -------------------------------------------------- */

/* Reply envelope: body {hostname: value}. delivery_tag NULL = new uuid4. */
void control_reply_envelope(buf *out, const char *hostname, const pj_value *value,
                            const char *ticket, unsigned long long clock,
                            const char *exchange, const char *routing_key,
                            const char *delivery_tag);
/* Broadcast call envelope as a Python client sends it (destination, pattern
 * and matcher null). expires: unix time, 0 = none. */
void control_command_envelope(buf *out, const char *method, const pj_value *arguments,
                              const char *ticket, const char *reply_routing_key,
                              unsigned long long clock, double expires,
                              const char *delivery_tag);

/* "<prefix>/<db>.celery.pidbox" appended to out. */
void control_channel(buf *out, const char *prefix, int db);

/* ---- Redis side ---------------------------------------------------------- */

/* Deliver a reply through the exchange's binding set (kombu's direct
 * exchange routing). Returns the number of queues it was pushed to: 0 means
 * the client's binding is gone and the reply was dropped, as kombu does.
 * -1 on a Redis error. */
int control_deliver(redisContext *ctx, const char *prefix, const char *exchange,
                    const char *routing_key, const char *envelope, size_t len,
                    char *err, size_t errlen);

/* SADD / SREM `_kombu.binding.celery.pidbox` "SEPSEP<node>.celery.pidbox";
 * forgetting also DELs the node's 4 pidbox lists (PROTOCOL §12.6). */
int control_declare_node(redisContext *ctx, const char *prefix, const char *hostname,
                         char *err, size_t errlen);
int control_forget_node(redisContext *ctx, const char *prefix, const char *hostname,
                        char *err, size_t errlen);

/* Client side: broadcast `method` with a reply queue, collect replies for
 * timeout_s, then remove the reply binding and lists. on_reply gets each
 * node's value (borrowed) from replies carrying our ticket. Returns the
 * number of replies, or -1 with err. */
typedef void (*control_reply_fn)(void *ud, const char *node, const pj_value *value);
int control_call(redisContext *ctx, const char *prefix, int db, lamport_clock *mailbox_clock,
                 const char *method, const pj_value *arguments, double timeout_s,
                 control_reply_fn on_reply, void *ud, char *err, size_t errlen);

/* ---- The node (subscriber thread) ----------------------------------------- */

/* Runs on the node's thread. Returns the reply value (owned; NULL means JSON
 * null). Set *no_reply to send nothing even for a call (shutdown). */
typedef pj_value *(*control_handler_fn)(void *ud, const control_command *cmd, int *no_reply);

typedef struct control_node_options {
    const redis_url *url;          /* borrowed; outlives the node */
    const char *prefix;            /* global_keyprefix ("" none); copied */
    const char *hostname;          /* copied */
    lamport_clock *app_clock;      /* borrowed: forwarded once per command */
    lamport_clock *mailbox_clock;  /* borrowed: adjusted by commands, stamps replies */
    control_handler_fn handler;
    void *ud;
} control_node_options;

typedef struct control_node control_node;

/* Declare the node binding, PSUBSCRIBE and start the thread. NULL with err
 * when the first connection fails (the caller decides whether to go on). */
control_node *control_node_start(const control_node_options *o, char *err, size_t errlen);
/* Stop and join the thread, remove the node binding, free. NULL is fine. */
void control_node_stop(control_node *n);

#endif
