/* broker/events.h: Celery monitoring events (`celeryev`) on Redis pub/sub,
 * and the Lamport clock they carry.
 *
 * Owns: the event body (hostname, utcoffset, pid, clock, fields...,
 * timestamp, type: Celery's field order, PROTOCOL §7.2), the kombu envelope
 * it travels in (§7.1), the channel `/{db}.celeryev/<routing key>` (§6), the
 * batching of task events into `task.multi` lists (flushed by the caller's
 * loop and at EVENTS_BATCH_MAX entries, §7.1), the "task" group switch
 * (enable_events / disable_events) and one publishing connection.
 *
 * Does not own: what the events mean or when they are sent (worker/remote.c),
 * nor heartbeat timing. Any thread may call events_send: building an event is
 * done outside the locks, the buffer has its own mutex, and the connection
 * is used under a second mutex so batches leave in the order they were made.
 *
 * Errors: a publish that fails drops the event (as a Python worker does with
 * events while the broker is away), logs once per outage, and reconnects at
 * most every EVENTS_RECONNECT_US; events never block or fail a task. */
#ifndef PTEL_BROKER_EVENTS_H
#define PTEL_BROKER_EVENTS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/url.h"
#include "common/buf.h"
#include "common/pyjson.h"

/* Celery flushes a group buffer when it holds this many events (celery/events/
 * dispatcher.py, buffer_limit=24). */
#define EVENTS_BATCH_MAX 24
/* worker-heartbeat cadence and the `freq` field it announces (PROTOCOL §7.3). */
#define EVENTS_HEARTBEAT_FREQ 2.0
/* While Redis is unreachable, try to reconnect at most this often. */
#define EVENTS_RECONNECT_US (1000 * 1000)
/* Software fields of worker-* events: what Flower shows for the worker. */
#define EVENTS_SW_IDENT "py-celery"
#define EVENTS_SW_VER "5.2.6"
#define EVENTS_SW_SYS "Linux"

/* ---- Lamport clock (PROTOCOL §7.3) ---------------------------------------- */

typedef struct lamport_clock {
    _Atomic unsigned long long value;
} lamport_clock;

void lamport_init(lamport_clock *c, unsigned long long start);
/* value += 1; returns the new value (sending an event or a message). */
unsigned long long lamport_forward(lamport_clock *c);
/* value = max(value, other) + 1; returns the new value (receiving one). */
unsigned long long lamport_adjust(lamport_clock *c, unsigned long long other);
unsigned long long lamport_value(lamport_clock *c);

/* ---- Wire format (pure; used by the publisher and by tests) --------------- */

/* Hours west of UTC, as Celery's utcoffset(): 0 for UTC, -2 for UTC+2. */
int events_utcoffset(void);
/* "worker-heartbeat" -> "worker.heartbeat"; appended to out. */
void events_routing_key(buf *out, const char *type);
/* "<prefix>/<db>.celeryev/<routing_key>" appended to out. */
void events_channel(buf *out, const char *prefix, int db, const char *routing_key);

typedef struct event_identity {
    const char *hostname;   /* node name, e.g. celery@host */
    int utcoffset;
    int pid;
} event_identity;

/* The event object in Celery's field order: identity, clock, then the members
 * of `fields` (owned, an object or NULL), then timestamp and type. */
pj_value *events_build(const event_identity *id, const char *type, unsigned long long clock,
                       pj_value *fields, double timestamp);
/* The kombu envelope for one event or a list of them, as JSON appended to
 * out. delivery_tag NULL = a new uuid4. */
void events_envelope(buf *out, const pj_value *body, const char *hostname,
                     const char *routing_key, const char *delivery_tag);

/* ---- Publisher -------------------------------------------------------------- */

typedef struct event_publisher event_publisher;

/* url and clock are borrowed and must outlive the publisher; hostname and
 * prefix (global_keyprefix, "" for none) are copied. Connects lazily. */
event_publisher *events_publisher_new(const redis_url *url, const char *prefix,
                                      const char *hostname, lamport_clock *clock);
void events_publisher_free(event_publisher *ev);

/* The "task" group: off = task-* events are dropped without touching the clock. */
void events_set_task_group(event_publisher *ev, int enabled);
int events_task_group(event_publisher *ev);

/* Send an event of `type` with `fields` (owned, object or NULL). task-* events
 * are buffered for the next events_flush (or published at EVENTS_BATCH_MAX);
 * everything else is published now. Returns 0 sent or buffered, 1 dropped
 * because its group is off, -1 when the publish failed. */
int events_send(event_publisher *ev, const char *type, pj_value *fields);
/* Publish buffered task events as one task.multi list. 0, or -1 on failure. */
int events_flush(event_publisher *ev);

#endif
