/* worker/drain_options.c: see drain_options.h. */
#include "worker/drain_options.h"

#include <string.h>

static const char *insert_format(config_insert_format f)
{
    switch (f) {
    case CH_INSERT_ROWBINARY: return "RowBinary";
    case CH_INSERT_JSONEACHROW: return "JSONEachRow";
    default: return NULL;   /* the client's measured default */
    }
}

void worker_drain_options(const ptel_config *cfg, const char *hostname, drain_options *out)
{
    memset(out, 0, sizeof *out);
    out->redis_url = cfg->telemetry_redis_url;
    out->stream_pattern = cfg->telemetry_stream_pattern;
    out->group = cfg->telemetry_consumer_group;
    out->dlq_key = cfg->telemetry_dlq_stream;
    out->dlq_maxlen = (long)cfg->telemetry_dlq_maxlen;
    out->clickhouse_url = cfg->clickhouse_url;
    out->clickhouse_table = cfg->clickhouse_table;
    out->clickhouse_format = insert_format(cfg->clickhouse_insert_format);
    out->clickhouse_connect_ms = (long)(cfg->clickhouse_connect_timeout * 1000);
    out->clickhouse_timeout_ms = (long)(cfg->clickhouse_timeout * 1000);
    /* Config: None = client default, 0 = never; options: 0 = default, < 0 = never. */
    out->clickhouse_gzip_min_bytes = cfg->clickhouse_gzip_min_bytes < 0 ? 0
                                     : cfg->clickhouse_gzip_min_bytes == 0 ? -1
                                     : (long)cfg->clickhouse_gzip_min_bytes;
    out->read_count = (int)cfg->telemetry_read_count;
    out->block_ms = (int)cfg->telemetry_block_ms;
    out->batch_max_rows = (int)cfg->telemetry_batch_max_rows;
    out->batch_max_bytes = (size_t)cfg->telemetry_batch_max_bytes;
    out->batch_max_ms = (int)cfg->telemetry_batch_max_ms;
    out->reclaim_idle_ms = (int)cfg->telemetry_reclaim_idle_ms;
    out->max_deliveries = (int)cfg->telemetry_max_deliveries;
    out->stream_refresh_s = (int)cfg->telemetry_stream_refresh_s;
    out->backoff_max_s = (int)cfg->telemetry_backoff_max_s;
    out->retention_days = (int)cfg->telemetry_retention_days;
    out->hostname = hostname;
}

void worker_dlq_options(const ptel_config *cfg, dlq_options *out)
{
    memset(out, 0, sizeof *out);
    out->redis_url = cfg->telemetry_redis_url;
    out->dlq_key = cfg->telemetry_dlq_stream;
    out->maxlen = (long)cfg->telemetry_dlq_maxlen;
    out->stream_pattern = cfg->telemetry_stream_pattern;
}
