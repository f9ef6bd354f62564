/* tasks/drain_cli.c: `ptel-worker drain`, one drain run without a broker
 * message (DESIGN §5): for operators catching up a backlog and for tests.
 * Prints the result object on stdout; on a TTY, progress on stderr. The
 * engine is drain.c's; this file only parses flags and prints. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/timeutil.h"
#include "tasks/drain.h"

static const char usage[] =
    "usage: drain [--max-iterations N] [--until-empty] [--stream KEY] [--json]\n"
    "  Run the telemetry drain once: read the streams, store valid events in\n"
    "  ClickHouse, dead-letter invalid ones, ack what is done.\n"
    "  --max-iterations N  stop after N reads across all streams (default 100)\n"
    "  --until-empty       keep going until a read finds nothing (no limit)\n"
    "  --stream KEY        drain only this stream (must match the pattern)\n"
    "  --json              print only the result object (no summary line)\n"
    "  Ctrl-C stops after the current batch.\n";

static atomic_int cli_cancel;

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&cli_cancel, 1);
}

typedef struct progress_state {
    double started;
} progress_state;

static void progress(const drain_result *r, void *arg)
{
    progress_state *p = arg;
    double secs = time_monotonic() - p->started;
    fprintf(stderr, "\r%lld events stored, %lld rejected, %lld entries, %.0f events/s   ",
            r->processed, r->rejected, r->entries, secs > 0 ? r->processed / secs : 0.0);
    fflush(stderr);
}

int drain_cli_main(int argc, char **argv, const drain_options *defaults)
{
    static const struct option opts[] = {
        {"max-iterations", required_argument, 0, 'm'}, {"until-empty", no_argument, 0, 'u'},
        {"stream", required_argument, 0, 's'}, {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    drain_options o = *defaults;
    drain_request req = {0};
    req.max_iterations = 100;   /* the upstream task's default (CONTRACT §1.5) */
    int json = 0, ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v <= 0) {
                fprintf(stderr, "drain: --max-iterations wants a positive number, got '%s'\n", optarg);
                return 2;
            }
            req.max_iterations = v;
            break;
        }
        case 'u': req.until_empty = 1; break;
        case 's': o.stream_key = optarg; break;
        case 'j': json = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "drain: unexpected argument '%s'\n%s", argv[optind], usage);
        return 2;
    }
    char err[512];
    drain_session *s = drain_session_new(&o, err, sizeof err);
    if (!s) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    progress_state ps = {time_monotonic()};
    int tty = isatty(STDERR_FILENO);
    if (tty) {
        req.progress = progress;
        req.progress_arg = &ps;
    }
    atomic_store(&cli_cancel, 0);
    req.cancel = &cli_cancel;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);

    drain_result r;
    int rc = drain_run(s, &req, &r, err, sizeof err);
    sigaction(SIGINT, &old, NULL);
    if (tty) fputc('\n', stderr);
    pj_value *v = drain_result_to_value(&r);
    buf out = BUF_INIT;
    pj_dump(&out, v, 0);
    printf("%s\n", buf_cstr(&out));
    buf_free(&out);
    pj_free(v);
    if (!json)
        fprintf(stderr, "drain: %lld events stored, %lld rejected, %lld dead-lettered, %lld entries "
                "acked from %lld stream(s) in %lld read(s), %.1f s\n", r.processed, r.rejected,
                r.dead_lettered, r.entries, r.streams, r.iterations, time_monotonic() - ps.started);
    if (rc != 0) fprintf(stderr, "drain: stopped early: %s\n", err);
    drain_session_free(s);
    return rc != 0 ? 1 : 0;
}
