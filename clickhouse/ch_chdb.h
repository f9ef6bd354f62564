/* clickhouse/ch_chdb.h: the chdb:// backend (chdb.c), private to clickhouse/.
 *
 * client.c hands a "chdb://" URL to ch_chdb_open and then routes every
 * ch_request of that client to ch_chdb_request, so schema.c and encode.c
 * (DDL, DESCRIBE, RowBinary/JSONEachRow bodies, dedup tokens) run unchanged
 * against ClickHouse-as-a-library. */
#ifndef PTEL_CH_CHDB_H
#define PTEL_CH_CHDB_H

#include <stddef.h>

#include "clickhouse/clickhouse.h"

/* Environment variable naming libchdb.so; the defaults follow it. */
#define CH_CHDB_LIB_ENV "PTEL_CHDB_LIB"
/* Where libchdb.so is looked for when PTEL_CHDB_LIB is unset, in order:
 * tests/chdb/fetch.sh's default install (relative to the working directory),
 * the usual manual install, then the dynamic linker's own search path. */
#define CH_CHDB_LIB_DEFAULTS {"./var/chdb/libchdb.so", "/usr/local/lib/libchdb.so", "libchdb.so"}

typedef struct ch_chdb ch_chdb;

/* Load libchdb.so once per process (never unloaded: the engine's global
 * state outlives every session). 0, or -1 with a permanent err that says how
 * to install it. Cheap after the first success. */
int ch_chdb_load(ch_error *err);

/* url: chdb://PATH[?database=NAME]. PATH is the data directory (created by
 * the engine; "chdb:///abs/dir" or "chdb://rel/dir"). Loads the library and
 * opens a session on PATH. The engine holds one data path per process:
 * sessions on the same PATH may coexist, a second PATH fails while the first
 * is open. NULL + err on failure. */
ch_chdb *ch_chdb_open(const char *url, ch_error *err);
void ch_chdb_close(ch_chdb *db);

/* The client's total timeout, as the session's max_execution_time (a
 * statement running longer fails with TIMEOUT_EXCEEDED, code 159, transient).
 * There is no connect phase, so the connect timeout has no equivalent. */
void ch_chdb_set_timeout(ch_chdb *db, long total_ms);

/* The ?database= of the URL, or NULL. */
const char *ch_chdb_database(const ch_chdb *db);

/* ch_request's contract (see ch_internal.h) on the session: `query` (may be
 * NULL) is the statement and `body` its inline data (INSERT ... FORMAT X);
 * without a query the body is the statement. `params` are settings
 * ("name=value&...", percent-encoded), set for this statement only. */
int ch_chdb_request(ch_chdb *db, int flags, const char *query, const char *params,
                    const char *body, size_t body_len, buf *out, ch_error *err);

#endif
