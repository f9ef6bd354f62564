/* worker/main.c: the ptel-worker binary's entry point: one subcommand per
 * job (DESIGN §5), each in its own file. */
#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <msgpack.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "worker/commands.h"
#include "worker/report.h"
#include "worker/send.h"
#include "worker/worker.h"

static void usage(FILE *out)
{
    fprintf(out,
"usage: ptel-worker COMMAND [options]    (ptel-worker COMMAND --help for details)\n"
"\n"
"A Celery-compatible worker that drains product telemetry from Redis Streams\n"
"into ClickHouse.\n"
"\n"
"commands:\n"
"  worker    consume Celery tasks from Redis (like `celery worker`)\n"
"  drain     run the telemetry drain once, without a broker message\n"
"  dlq       list, show, replay or purge dead-lettered telemetry\n"
"  schema    apply or show the ClickHouse table DDL\n"
"  report    print the telemetry dashboard's numbers from ClickHouse\n"
"  send      enqueue a Celery task (like `celery call`), optionally wait for it\n"
"  version   print versions of ptel-worker and its libraries\n");
}

static int version_main(void)
{
    curl_version_info_data *curl = curl_version_info(CURLVERSION_NOW);
    printf("ptel-worker %s\n", PTEL_VERSION);
    printf("  hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    printf("  msgpack-c %s\n", msgpack_version());
    printf("  cJSON %s\n", cJSON_Version());
    printf("  libcurl %s\n", curl->version);
    printf("  zlib %s\n", zlibVersion());
    printf("  speaks Celery protocol v1/v2 as celery 5.2 / kombu 5.2 on Redis\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version") || !strcmp(cmd, "-V"))
        return version_main();
    if (!strcmp(cmd, "worker")) return worker_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "send")) return send_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "drain")) return drain_command(argc - 1, argv + 1);
    if (!strcmp(cmd, "dlq")) return dlq_command(argc - 1, argv + 1);
    if (!strcmp(cmd, "schema")) return schema_command(argc - 1, argv + 1);
    if (!strcmp(cmd, "report")) return report_command(argc - 1, argv + 1);
    fprintf(stderr, "error: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
