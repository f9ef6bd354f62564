/* tasks/telemetry.h: the telemetry data contract (CONTRACT §1-§3) as code.
 *
 * Takes one stream entry (its field/value pairs as Redis returned them) and
 * splits it into rows for ClickHouse and rejections for the DLQ. Pure: no I/O,
 * no clock except what the caller passes, so every rule is unit-testable. */
#ifndef PTEL_TELEMETRY_H
#define PTEL_TELEMETRY_H

#include <stddef.h>

#include "clickhouse/event_row.h"

#define TELEMETRY_MAX_EVENTS 500
#define TELEMETRY_SOURCE "dev-health-web"

typedef struct telemetry_field {      /* one field of an XREADGROUP entry */
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} telemetry_field;

typedef struct telemetry_rejection {
    int event_index;          /* -1: the whole entry was rejected */
    const char *error_class;  /* "validation" or "privacy" (static string) */
    char *reason;             /* e.g. "event 3: name 'foo' is not an allowed event name" */
    char *event_json;         /* the rejected event re-serialised compactly; NULL for a whole entry */
} telemetry_rejection;

typedef struct telemetry_entry {
    /* copied from the entry's fields; NULL when absent */
    char *ingestion_id;
    char *source;
    char *org_id_hash;
    char *events_raw;         /* the `events` field as received (for whole-entry DLQ records) */
    event_row *rows;
    size_t n_rows;
    telemetry_rejection *rejections;
    size_t n_rejections;
} telemetry_entry;

/* Validate and map one entry. Always succeeds in the sense that every event
 * ends up in exactly one of rows/rejections (or the entry as a whole is one
 * rejection). `out` must be freed with telemetry_entry_free. */
void telemetry_parse_entry(const telemetry_field *fields, size_t n_fields, telemetry_entry *out);
void telemetry_entry_free(telemetry_entry *entry);

#endif
