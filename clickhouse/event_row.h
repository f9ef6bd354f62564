/* clickhouse/event_row.h: one row of product_telemetry_events (CONTRACT §3).
 *
 * This is the hand-off between tasks/ (which validates events and fills rows)
 * and clickhouse/ (which encodes rows for the column types the server really
 * has). Plain data: every string is NUL-terminated UTF-8, optionally with
 * its length alongside (len, has_len). Who owns the
 * strings depends on who made the row: a row built by hand owns them and is
 * released with event_row_free(); rows inside a telemetry_entry point into
 * the entry's storage and are released only by telemetry_entry_free(). */
#ifndef PTEL_EVENT_ROW_H
#define PTEL_EVENT_ROW_H

#include <stdint.h>

typedef struct event_row {
    char *org_id_hash;        /* '' when neither event nor entry names one */
    char *event_id;
    char *name;
    char *schema_version;
    char *session_id;
    char *anonymous_user_id;
    char *route_pattern;      /* NULL means SQL NULL */
    char *payload_json;       /* json.dumps(payload, sort_keys=True, separators=(",", ":")) */
    int64_t occurred_at_us;   /* UTC microseconds; stored with millisecond precision */
    char *source;             /* entry's source, default "dev-health-web" */
    /* The strings' lengths, when the maker knows them (has_len = 1: telemetry
     * rows do); otherwise the encoder measures them with strlen, which was
     * ~5% of the drain's CPU (perf, issue #6). route_pattern's is 0 when NULL. */
    struct {
        uint32_t org_id_hash, event_id, name, schema_version, session_id,
            anonymous_user_id, route_pattern, payload_json, source;
    } len;
    int has_len;
} event_row;

void event_row_free(event_row *row);   /* frees the strings, not the struct */

#endif
