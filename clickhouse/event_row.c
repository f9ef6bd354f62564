/* clickhouse/event_row.c: releasing an event_row (event_row.h).
 *
 * The row owns its strings; the struct itself belongs to whoever holds it
 * (rows usually live in an array the drain reuses). */
#include <stdlib.h>
#include <string.h>

#include "clickhouse/event_row.h"

void event_row_free(event_row *row)
{
    if (row == NULL) return;
    free(row->org_id_hash);
    free(row->event_id);
    free(row->name);
    free(row->schema_version);
    free(row->session_id);
    free(row->anonymous_user_id);
    free(row->route_pattern);
    free(row->payload_json);
    free(row->source);
    memset(row, 0, sizeof(*row));
}
