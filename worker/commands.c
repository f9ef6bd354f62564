/* worker/commands.c: see commands.h. */
#include "worker/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clickhouse/clickhouse.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "worker/config.h"
#include "worker/drain_options.h"
#include "worker/worker.h"

/* Take "--config FILE" (or --config=FILE) out of argv, so the module's own
 * parser sees only its flags. Returns the new argc. */
static int take_config_flag(int argc, char **argv, const char **path)
{
    int out = 0;
    *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            *path = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            *path = argv[i] + 9;
        } else {
            argv[out++] = argv[i];
        }
    }
    argv[out] = NULL;
    return out;
}

/* The prologue every wrapping subcommand shares: take --config out of argv,
 * load the configuration (file, then environment) and set up logging.
 * Returns 0, or -1 after printing the error (cfg is then already freed). */
static int load_command_config(int *argc, char **argv, ptel_config *cfg)
{
    const char *path;
    *argc = take_config_flag(*argc, argv, &path);
    if (worker_load_config(cfg, path) != 0) {
        config_free(cfg);
        return -1;
    }
    log_setup(LOG_INFO, cfg->worker_log_format, NULL);
    return 0;
}

int drain_command(int argc, char **argv)
{
    ptel_config cfg;
    if (load_command_config(&argc, argv, &cfg) != 0) return 1;
    char *hostname = worker_expand_hostname("ptel-drain@%h");
    drain_options opts;
    worker_drain_options(&cfg, hostname, &opts);
    /* One consumer name per process, "ptel-drain@<host>#pid<pid>": two
     * drains at once on a box must not share a pending list, or the second
     * reads the first one's unflushed entries as its own redeliveries and
     * stores them again. What an interrupted drain leaves pending is taken
     * over by the XAUTOCLAIM reclaim of idle entries (with the dedup check
     * of redeliveries); leave_on_exit makes a clean exit delete the consumer
     * from the groups when it holds nothing (XGROUP DELCONSUMER), so
     * per-process names do not pile up, and mark what it still holds idle,
     * so the next drain takes it over at once (drain_session_free). */
    char consumer[512];
    snprintf(consumer, sizeof consumer, "%s#pid%ld", hostname, (long)getpid());
    opts.consumer = consumer;
    opts.leave_on_exit = 1;
    int rc = drain_cli_main(argc, argv, &opts);
    free(hostname);
    config_free(&cfg);
    return rc;
}

int dlq_command(int argc, char **argv)
{
    ptel_config cfg;
    if (load_command_config(&argc, argv, &cfg) != 0) return 1;
    dlq_options opts;
    worker_dlq_options(&cfg, &opts);
    int rc = dlq_cli_main(argc, argv, &opts);
    config_free(&cfg);
    return rc;
}

/* ---- schema ------------------------------------------------------------------- */

static void schema_usage(FILE *out)
{
    fprintf(out,
"usage: ptel-worker schema apply|show [--rollups [--backfill]] [--config FILE]\n"
"\n"
"  apply   create the telemetry table (and its database) if missing: the\n"
"          production DDL on ClickHouse >= 20.1, the closest legacy variant on\n"
"          older servers (DateTime, no TTL; the worker then enforces retention)\n"
"  show    print the DDL this server would get, without changing anything\n"
"\n"
"  --rollups   also the daily rollup tables <table>_rollup_* and the materialized\n"
"              views feeding them from the telemetry table (for `report --rollups`);\n"
"              TTL telemetry_rollup_ttl_days (default 730) on ClickHouse >= 19.6,\n"
"              none before (apply then drops rollup months older than that)\n"
"  --backfill  with apply --rollups: views only see rows inserted after they\n"
"              exist, so fill the new rollups from the rows already in the table\n"
"              (exact when no drain runs meanwhile; skipped when the views existed)\n"
"\n"
"The server is clickhouse_url from the config (or CLICKHOUSE_URL).\n");
}

/* schema apply|show --rollups: 0 ok, 1 ClickHouse error (printed). */
static int schema_rollups(ch_client *ch, const ptel_config *cfg, const char *action, int major,
                          int minor, int backfill)
{
    const char *table = cfg->clickhouse_table;
    int ttl = (int)cfg->telemetry_rollup_ttl_days;
    ch_error err;
    memset(&err, 0, sizeof err);
    if (!strcmp(action, "show")) {
        buf ddl = BUF_INIT;
        ch_rollups_ddl(major, minor, table, ttl, &ddl);
        printf("-- ClickHouse %d.%d at %s: daily rollups of %s\n%s", major, minor,
               ch_client_redacted_url(ch), table, buf_cstr(&ddl));
        buf_reset(&ddl);
        ch_rollups_backfill_sql(major, table, -1, &ddl);
        printf("-- apply --backfill then runs, with T the first second after the views exist:\n");
        for (char *line = strtok(ddl.data, "\n"); line; line = strtok(NULL, "\n"))
            printf("-- %s\n", line);
        buf_free(&ddl);
        return 0;
    }
    ch_rollup_result res;
    if (ch_rollups_apply(ch, table, ttl, backfill, &res, &err) != 0) {
        fprintf(stderr, "error: schema apply --rollups on %s failed: %s\n",
                ch_client_redacted_url(ch), err.msg);
        return 1;
    }
    size_t dropped = 0;
    if (!res.ttl && ch_rollup_retention_enforce(ch, table, ttl, time_now_us(), &dropped, &err) != 0) {
        fprintf(stderr, "error: rollup retention on %s failed: %s\n", ch_client_redacted_url(ch),
                err.msg);
        return 1;
    }
    printf("rollups applied: %s_rollup_* on ClickHouse %d.%d at %s, %zu view(s) created, ", table,
           major, minor, ch_client_redacted_url(ch), res.created);
    if (res.ttl) printf("TTL %d days\n", ttl);
    else printf("no TTL on this server: %zu month partition(s) older than %d days dropped\n",
                dropped, ttl);
    if (res.backfill_skipped)
        printf("backfill skipped: the views already existed and have counted every row since; "
               "to rebuild, drop the %s_rollup_* tables and views and apply again\n", table);
    else if (backfill)
        printf("backfilled %zu rollup(s) from %llu row(s) ingested before %lld (unix time)\n",
               res.backfilled, (unsigned long long)res.backfill_rows,
               (long long)res.backfill_cutoff_s);
    else if (res.created)
        printf("note: the views count rows inserted from now on; rows already in %s are not in "
               "the rollups (use --backfill when creating them)\n", table);
    return 0;
}

int schema_command(int argc, char **argv)
{
    const char *config = NULL, *action = NULL;
    int rollups = 0, backfill = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rollups")) {
            rollups = 1;
        } else if (!strcmp(argv[i], "--backfill")) {
            backfill = 1;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            schema_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            config = argv[++i];
        } else if (!action && (!strcmp(argv[i], "apply") || !strcmp(argv[i], "show"))) {
            action = argv[i];
        } else {
            fprintf(stderr, "error: unexpected argument '%s'\n", argv[i]);
            schema_usage(stderr);
            return 2;
        }
    }
    if (!action) {
        schema_usage(stderr);
        return 2;
    }
    if (backfill && (!rollups || strcmp(action, "apply") != 0)) {
        fprintf(stderr, "error: --backfill goes with `schema apply --rollups`\n");
        return 2;
    }
    ptel_config cfg;
    if (worker_load_config(&cfg, config) != 0) {
        config_free(&cfg);
        return 1;
    }
    int rc = 1;
    ch_error err;
    memset(&err, 0, sizeof err);
    ch_client *ch = ch_client_new(cfg.clickhouse_url, &err);
    int major = 0, minor = 0;
    if (!ch || ch_server_version(ch, &major, &minor, &err) != 0) {
        fprintf(stderr, "error: ClickHouse %s: %s\n", ch ? ch_client_redacted_url(ch) : "", err.msg);
        goto out;
    }
    if (rollups) {
        rc = schema_rollups(ch, &cfg, action, major, minor, backfill);
    } else if (!strcmp(action, "show")) {
        buf ddl = BUF_INIT;
        ch_schema_ddl(major, minor, cfg.clickhouse_table, &ddl);
        printf("-- ClickHouse %d.%d at %s\n%s\n", major, minor, ch_client_redacted_url(ch),
               buf_cstr(&ddl));
        buf_free(&ddl);
        rc = 0;
    } else if (ch_schema_apply(ch, cfg.clickhouse_table, &err) != 0) {
        fprintf(stderr, "error: schema apply on %s failed: %s\n", ch_client_redacted_url(ch),
                err.msg);
    } else {
        printf("schema applied: table %s on ClickHouse %d.%d (%s) at %s\n", cfg.clickhouse_table,
               major, minor, major > 20 || (major == 20 && minor >= 1)
                   ? "production DDL with TTL" : "legacy DDL; retention enforced by the worker",
               ch_client_redacted_url(ch));
        rc = 0;
    }
out:
    ch_client_free(ch);
    config_free(&cfg);
    return rc;
}
