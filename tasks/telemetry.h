/* tasks/telemetry.h: the telemetry data contract (CONTRACT §1-§3) as code.
 *
 * Takes one stream entry (its field/value pairs as Redis returned them) and
 * splits it into rows for ClickHouse and rejections for the DLQ. Pure: no I/O,
 * no clock, no globals, so every rule is unit-testable and the function is
 * thread-safe. It does not know about streams, acks or the DLQ record shape
 * (drain.c and dlq/ own those).
 *
 * Reason codes. Every rejection's `reason` starts with one of these stable
 * codes, then ": ", then details for a human ("invalid_name: event 3: "foo"
 * is not an allowed event name"); the code alone is also in `code`.
 *   Whole entry (event_index -1, class "validation"):
 *     invalid_source        `source` present and not "dev-health-web"
 *     missing_events        no `events` field
 *     invalid_json          `events` is not JSON (or not UTF-8)
 *     events_not_array      `events` is JSON but not an array
 *     empty_events          `events` is []
 *     too_many_events       more than TELEMETRY_MAX_EVENTS items
 *   One event (event_index i, class "validation" unless noted):
 *     event_not_object      the item is not a JSON object
 *     blocked_key           payload holds a privacy-blocked key (class "privacy")
 *     missing_field         name/schemaVersion/eventId/sessionId/anonymousUserId/ts
 *                           absent, or (all but name and ts) not a non-empty string
 *     invalid_name          name present but not one of the allowed names
 *     invalid_ts            ts neither an ISO-8601 string nor epoch number in range
 *     invalid_org_id_hash   orgIdHash neither string nor null
 *     invalid_route_pattern routePattern neither string nor null
 *     invalid_payload       payload present and not an object (null included)
 *     nested_payload        a payload value is an object or array
 *     nul_character         a string that becomes a column holds U+0000 (the
 *                           row hand-off is C strings, it would be cut short)
 *     org_mismatch          orgIdHash set and != the entry's non-empty org_id_hash
 *
 * Rule order inside one event (only the first failure is reported):
 * event_not_object, blocked_key, name, the four ids, ts, orgIdHash,
 * routePattern, payload, org_mismatch. blocked_key goes first on purpose: an
 * event carrying personal data is classed "privacy" whatever else is wrong
 * with it, so DLQ tooling can treat it as such. Entry rules run in the order
 * listed above (source first: it needs no parsing).
 *
 * Decisions where the contract is silent (mirrored by tests/data/telemetry/gen_cases.py):
 *  - camelCase wins: when the camelCase key is present (any value, null too)
 *    the snake_case spelling is ignored (pydantic's alias priority).
 *  - An empty-string orgIdHash counts as unset (Python truthiness): it neither
 *    mismatches nor overrides the entry's org.
 *  - payload absent = {}; payload null = invalid_payload.
 *  - ts numbers: > 2e10 = milliseconds, else seconds; floats rounded to the
 *    microsecond half-to-even (Python's round); the result must lie within
 *    Python's datetime range (years 1..9999), TELEMETRY_TS_MIN_US..MAX_US.
 *  - A field repeated in the stream entry: the last value wins (redis-py dict).
 *  - Entry `ingestion_id` and `org_id_hash` are copied as given, not validated. */
#ifndef PTEL_TELEMETRY_H
#define PTEL_TELEMETRY_H

#include <stddef.h>
#include <stdint.h>

#include "clickhouse/event_row.h"

#define TELEMETRY_MAX_EVENTS 500         /* CONTRACT §1.2: 1..500 items per entry */
#define TELEMETRY_SOURCE "dev-health-web"
#define TELEMETRY_MS_THRESHOLD 2e10      /* epoch numbers above this are ms (CONTRACT §2) */
#define TELEMETRY_TS_MIN_US (-62135596800000000LL)  /* 0001-01-01T00:00:00Z */
#define TELEMETRY_TS_MAX_US 253402300799999999LL    /* 9999-12-31T23:59:59.999999Z */
#define TELEMETRY_REASON_VALUE_MAX 64    /* bytes of an offending value quoted in a reason */

#define TELEMETRY_CLASS_VALIDATION "validation"
#define TELEMETRY_CLASS_PRIVACY "privacy"

typedef struct telemetry_field {      /* one field of an XREADGROUP entry */
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} telemetry_field;

typedef struct telemetry_rejection {
    int event_index;          /* -1: the whole entry was rejected */
    const char *error_class;  /* "validation" or "privacy" (static string) */
    const char *code;         /* reason code above (static string) */
    char *reason;             /* e.g. "invalid_name: event 3: \"foo\" is not an allowed event name" */
    char *event_json;         /* the rejected event, json.dumps(ev, separators=(",", ":"));
                                 NULL for a whole entry */
} telemetry_rejection;

typedef struct telemetry_entry {
    /* copied from the entry's fields; NULL when absent */
    char *ingestion_id;
    char *source;
    char *org_id_hash;
    char *events_raw;         /* the `events` field as received, set ONLY when the
                                 entry was rejected as a whole (else NULL: the
                                 caller still has the fields it passed in) */
    event_row *rows;          /* valid events, in entry order. Their strings live in
                                 `storage`, owned by the entry: read them until
                                 telemetry_entry_free, copy what must outlive it,
                                 and never event_row_free a row of an entry */
    size_t n_rows;
    telemetry_rejection *rejections;   /* in entry order */
    size_t n_rejections;
    struct telemetry_storage *storage; /* private: the rows' strings, a few blocks
                                 per entry instead of 9 mallocs per row (measured:
                                 ~20% of the per-event cost, bench/micro/event_cost.c) */
} telemetry_entry;

/* Validate and map one entry. Always succeeds in the sense that every event
 * ends up in exactly one of rows/rejections (or the entry as a whole is one
 * rejection). `out` is overwritten (not freed first) and must be freed with
 * telemetry_entry_free. The fields are only read, never kept. */
void telemetry_parse_entry(const telemetry_field *fields, size_t n_fields, telemetry_entry *out);
void telemetry_entry_free(telemetry_entry *entry);

#endif
