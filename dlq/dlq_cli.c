/* dlq/dlq_cli.c: `ptel-worker dlq list|show|replay|purge`, the operator tools
 * for the dead-letter stream (DESIGN §5). Reads the records dlq.c writes and
 * upstream's four-field records alike; replays a record by appending its
 * events as a new entry to the original stream and only then deleting the
 * record, so an interrupted replay can simply be run again. Writes only the
 * DLQ key and streams matching the telemetry pattern. */
#include "dlq/dlq.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/url.h"
#include "common/buf.h"
#include "common/pyjson.h"
#include "common/timeutil.h"

#define DLQ_CLI_TIMEOUT_S 5.0
#define DLQ_CLI_PAGE 500          /* records per XRANGE while filtering */
#define DLQ_CLI_LIST_LIMIT 100    /* default --limit */

enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2 };

/* ---- Records ---------------------------------------------------------------------- */

/* A DLQ record as XRANGE returned it: borrowed pointers into the reply. */
typedef struct record {
    const char *id;
    redisReply *fields;     /* flat array name, value, ... */
} record;

static const char *field(const record *r, const char *name, size_t *len)
{
    for (size_t i = 0; r->fields && i + 1 < r->fields->elements; i += 2) {
        redisReply *n = r->fields->element[i], *v = r->fields->element[i + 1];
        if (n->type == REDIS_REPLY_STRING && strcmp(n->str, name) == 0 &&
            v->type == REDIS_REPLY_STRING) {
            if (len) *len = v->len;
            return v->str;
        }
    }
    if (len) *len = 0;
    return NULL;
}

static const char *field_or(const record *r, const char *name, const char *dflt)
{
    const char *v = field(r, name, NULL);
    return v ? v : dflt;
}

/* --reason R selects records whose reason starts with R (the reason code) or
 * whose error_class is R. */
static int matches(const record *r, const char *reason, const char *stream)
{
    if (reason) {
        const char *rs = field_or(r, "reason", ""), *cls = field_or(r, "error_class", "");
        if (strncmp(rs, reason, strlen(reason)) != 0 && strcmp(cls, reason) != 0) return 0;
    }
    if (stream && strcmp(field_or(r, "original_stream", ""), stream) != 0) return 0;
    return 1;
}

static void record_to_json(const record *r, buf *out)
{
    pj_value *o = pj_new_object();
    pj_object_set(o, "id", pj_new_string(r->id));
    for (size_t i = 0; r->fields && i + 1 < r->fields->elements; i += 2) {
        redisReply *n = r->fields->element[i], *v = r->fields->element[i + 1];
        if (n->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING)
            pj_object_setn(o, n->str, n->len, pj_new_stringn(v->str, v->len));
    }
    pj_dump(out, o, 0);
    pj_free(o);
}

static int entry_to_record(redisReply *e, record *out)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING) return -1;
    out->id = e->element[0]->str;
    out->fields = e->element[1]->type == REDIS_REPLY_ARRAY ? e->element[1] : NULL;
    return 0;
}

/* ---- Connection and paging ------------------------------------------------------------ */

static redisContext *connect_or_complain(const dlq_options *o)
{
    redis_url u;
    char err[256];
    if (!o->redis_url || redis_url_parse(o->redis_url, &u, err, sizeof err) != 0) {
        fprintf(stderr, "dlq: bad Redis URL: %s\n", o->redis_url ? err : "none configured");
        return NULL;
    }
    redisContext *c = redis_url_connect(&u, DLQ_CLI_TIMEOUT_S, err, sizeof err);
    if (!c) fprintf(stderr, "dlq: cannot connect to Redis: %s\n", err);
    redis_url_free(&u);
    return c;
}

static redisReply *command_ok(redisContext *c, int argc, const char **argv)
{
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    if (r == NULL) {
        fprintf(stderr, "dlq: %s failed: %s\n", argv[0], c->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "dlq: %s %s refused: %s\n", argv[0], argc > 1 ? argv[1] : "", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Calls fn for each record from oldest to newest until fn returns nonzero
 * (1 = stop, -1 = error). Returns -1 on a Redis error or fn's -1. */
typedef int (*record_fn)(redisContext *c, const dlq_options *o, const record *r, void *arg);

static int each_record(redisContext *c, const dlq_options *o, record_fn fn, void *arg)
{
    char start[64] = "-", count[16];
    snprintf(count, sizeof count, "%d", DLQ_CLI_PAGE);
    for (;;) {
        const char *argv[] = {"XRANGE", dlq_key(o), start, "+", "COUNT", count};
        redisReply *page = command_ok(c, 6, argv);
        if (!page) return -1;
        size_t n = page->type == REDIS_REPLY_ARRAY ? page->elements : 0;
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            record r;
            if (entry_to_record(page->element[i], &r) != 0) continue;
            rc = fn(c, o, &r, arg);
        }
        if (n > 0 && rc == 0) {   /* exclusive start: "(" + last id */
            redisReply *last = page->element[n - 1];
            if (last->type == REDIS_REPLY_ARRAY && last->elements == 2)
                snprintf(start, sizeof start, "(%s", last->element[0]->str);
        }
        freeReplyObject(page);
        if (rc != 0) return rc < 0 ? -1 : 0;
        if (n < DLQ_CLI_PAGE) return 0;
    }
}

/* ---- list ------------------------------------------------------------------------------ */

typedef struct list_state {
    const char *reason, *stream;
    long limit, shown;
    int json;
    buf out;
} list_state;

static void print_record_line(const record *r)
{
    buf when = BUF_INIT;
    double moved = atof(field_or(r, "moved_at", "0"));
    if (moved > 0) time_format_clickhouse(&when, (int64_t)(moved * 1e6), 0);
    else buf_puts(&when, "-");
    const char *idx = field_or(r, "event_index", "");
    printf("%s  %s  %-14s  %s  %s  %s%s  %s\n", r->id, buf_cstr(&when),
           field_or(r, "error_class", "-"), field_or(r, "original_stream", "-"),
           field_or(r, "entry_id", "-"), idx[0] ? "event " : "entry", idx,
           field_or(r, "reason", ""));
    buf_free(&when);
}

static int list_one(redisContext *c, const dlq_options *o, const record *r, void *arg)
{
    (void)c, (void)o;
    list_state *st = arg;
    if (!matches(r, st->reason, st->stream)) return 0;
    if (st->json) {
        buf_puts(&st->out, st->shown ? ",\n " : "[");
        record_to_json(r, &st->out);
    } else {
        print_record_line(r);
    }
    return ++st->shown >= st->limit ? 1 : 0;
}

static const char list_usage[] =
    "usage: dlq list [--reason R] [--stream S] [--limit N] [--json]\n"
    "  List dead-letter records, oldest first.\n"
    "  --reason R   only records whose reason starts with R (e.g. invalid_name)\n"
    "               or whose error_class is R (validation, privacy, persistence,\n"
    "               max_deliveries)\n"
    "  --stream S   only records from stream S\n"
    "  --limit N    at most N records (default 100)\n"
    "  --json       a JSON array of records (all fields) instead of a table\n";

static int parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0) return -1;
    *out = v;
    return 0;
}

static int cmd_list(int argc, char **argv, const dlq_options *o)
{
    static const struct option opts[] = {
        {"reason", required_argument, 0, 'r'}, {"stream", required_argument, 0, 's'},
        {"limit", required_argument, 0, 'n'}, {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    list_state st = {NULL, NULL, DLQ_CLI_LIST_LIMIT, 0, 0, BUF_INIT};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'r': st.reason = optarg; break;
        case 's': st.stream = optarg; break;
        case 'j': st.json = 1; break;
        case 'n':
            if (parse_long(optarg, &st.limit) != 0 || st.limit == 0) {
                fprintf(stderr, "dlq list: --limit wants a positive number, got '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'h': fputs(list_usage, stdout); return EXIT_OK;
        default: fputs(list_usage, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dlq list: unexpected argument '%s'\n%s", argv[optind], list_usage);
        return EXIT_USAGE;
    }
    redisContext *c = connect_or_complain(o);
    if (!c) return EXIT_ERR;
    int rc = each_record(c, o, list_one, &st);
    redisFree(c);
    if (rc != 0) {
        buf_free(&st.out);
        return EXIT_ERR;
    }
    if (st.json) {
        printf("%s]\n", st.shown ? buf_cstr(&st.out) : "[");
    } else {
        printf("%ld record(s) in %s%s\n", st.shown, dlq_key(o),
               st.shown >= st.limit ? " (limit reached; use --limit)" : "");
    }
    buf_free(&st.out);
    return EXIT_OK;
}

/* ---- show --------------------------------------------------------------------------------- */

static const char show_usage[] =
    "usage: dlq show ID [--json]\n"
    "  Print every field of one dead-letter record.\n";

static int cmd_show(int argc, char **argv, const dlq_options *o)
{
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int json = 0, ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'j') json = 1;
        else if (ch == 'h') { fputs(show_usage, stdout); return EXIT_OK; }
        else { fputs(show_usage, stderr); return EXIT_USAGE; }
    }
    if (argc - optind != 1) {
        fputs(show_usage, stderr);
        return EXIT_USAGE;
    }
    const char *id = argv[optind];
    redisContext *c = connect_or_complain(o);
    if (!c) return EXIT_ERR;
    const char *cmd[] = {"XRANGE", dlq_key(o), id, id};
    redisReply *r = command_ok(c, 4, cmd);
    int rc = EXIT_ERR;
    record rec;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        entry_to_record(r->element[0], &rec) == 0) {
        if (json) {
            buf out = BUF_INIT;
            record_to_json(&rec, &out);
            printf("%s\n", buf_cstr(&out));
            buf_free(&out);
        } else {
            printf("id: %s\n", rec.id);
            for (size_t i = 0; rec.fields && i + 1 < rec.fields->elements; i += 2)
                printf("%s: %.*s\n", rec.fields->element[i]->str,
                       (int)rec.fields->element[i + 1]->len, rec.fields->element[i + 1]->str);
        }
        rc = EXIT_OK;
    } else if (r) {
        fprintf(stderr, "dlq show: no record %s in %s\n", id, dlq_key(o));
    }
    if (r) freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* ---- replay ----------------------------------------------------------------------------- */

typedef struct replay_state {
    const char *reason;
    int all;
    long replayed, failed;
} replay_state;

/* XADD the record's events to its original stream, then XDEL the record.
 * The XDEL comes second on purpose: a crash in between leaves the record in
 * the DLQ, and replaying it again at worst re-sends events the drain's
 * dedup then recognises (same event ids), instead of losing them. */
static int replay_record(redisContext *c, const dlq_options *o, const record *r)
{
    size_t events_len;
    const char *stream = field(r, "original_stream", NULL);
    const char *events = field(r, "events", &events_len);
    if (!stream || !stream[0]) {
        fprintf(stderr, "dlq replay: %s has no original_stream: skipped\n", r->id);
        return -1;
    }
    if (!events || events_len == 0) {
        fprintf(stderr, "dlq replay: %s has no events (an upstream record, which does not keep "
                "them): skipped\n", r->id);
        return -1;
    }
    if (!dlq_key_matches(dlq_pattern(o), stream)) {
        fprintf(stderr, "dlq replay: %s: stream %s does not match %s: refusing to write it\n",
                r->id, stream, dlq_pattern(o));
        return -1;
    }
    char maxlen[32];
    snprintf(maxlen, sizeof maxlen, "%ld", (long)DLQ_REPLAY_MAXLEN);
    const char *argv[16] = {"XADD", stream, "MAXLEN", "~", maxlen, "*"};
    size_t lens[16];
    int argc = 6;
    /* ingestion_id and source only when known: an empty source would be
     * rejected as invalid_source on the way back in. */
    const char *ing = field(r, "ingestion_id", NULL), *src = field(r, "source", NULL);
    if (ing && ing[0]) argv[argc++] = "ingestion_id", argv[argc++] = ing;
    if (src && src[0]) argv[argc++] = "source", argv[argc++] = src;
    /* The marker makes the drain look the events up before inserting them
     * (tasks/drain.c batch_add): what a re-run replay re-sends is not stored twice. */
    argv[argc++] = "replayed_from", argv[argc++] = r->id;
    argv[argc++] = "org_id_hash", argv[argc++] = field_or(r, "org_id_hash", "");
    argv[argc++] = "events", argv[argc++] = events;
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    lens[argc - 1] = events_len;
    redisReply *added = redisCommandArgv(c, argc, argv, lens);
    if (!added || added->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "dlq replay: %s: XADD %s failed: %s; the record stays in the DLQ\n",
                r->id, stream, added ? (added->str ? added->str : "unexpected reply") : c->errstr);
        if (added) freeReplyObject(added);
        return -1;
    }
    const char *del[] = {"XDEL", dlq_key(o), r->id};
    redisReply *d = command_ok(c, 3, del);
    printf("replayed %s -> %s %s%s\n", r->id, stream, added->str,
           d ? "" : " (record NOT deleted: delete it by hand or replay will re-send it)");
    freeReplyObject(added);
    if (!d) return -1;
    freeReplyObject(d);
    return 0;
}

static int replay_one(redisContext *c, const dlq_options *o, const record *r, void *arg)
{
    replay_state *st = arg;
    if (!st->all && !matches(r, st->reason, NULL)) return 0;
    if (replay_record(c, o, r) == 0) st->replayed++;
    else st->failed++;
    return c->err ? -1 : 0;
}

static const char replay_usage[] =
    "usage: dlq replay ID... | --all | --reason R\n"
    "  Append each record's events as a new entry to its original stream (with\n"
    "  the original ingestion_id, source and org_id_hash), then delete the\n"
    "  record. Safe to re-run: a record is deleted only after its events were\n"
    "  appended. Only streams matching the telemetry pattern are written.\n"
    "  --all        every record\n"
    "  --reason R   records whose reason starts with R or whose error_class is R\n";

static int cmd_replay(int argc, char **argv, const dlq_options *o)
{
    static const struct option opts[] = {
        {"all", no_argument, 0, 'a'}, {"reason", required_argument, 0, 'r'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    replay_state st = {NULL, 0, 0, 0};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'a') st.all = 1;
        else if (ch == 'r') st.reason = optarg;
        else if (ch == 'h') { fputs(replay_usage, stdout); return EXIT_OK; }
        else { fputs(replay_usage, stderr); return EXIT_USAGE; }
    }
    int ids = argc - optind;
    if ((ids > 0) + st.all + (st.reason != NULL) != 1) {
        fprintf(stderr, "dlq replay: give record IDs, --all or --reason (exactly one)\n%s",
                replay_usage);
        return EXIT_USAGE;
    }
    redisContext *c = connect_or_complain(o);
    if (!c) return EXIT_ERR;
    int rc = 0;
    for (int i = optind; i < argc && !c->err; i++) {
        const char *cmd[] = {"XRANGE", dlq_key(o), argv[i], argv[i]};
        redisReply *r = command_ok(c, 4, cmd);
        record rec;
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
            entry_to_record(r->element[0], &rec) == 0) {
            if (replay_record(c, o, &rec) == 0) st.replayed++;
            else st.failed++;
        } else {
            if (r) fprintf(stderr, "dlq replay: no record %s in %s\n", argv[i], dlq_key(o));
            st.failed++;
        }
        if (r) freeReplyObject(r);
    }
    if (ids == 0) rc = each_record(c, o, replay_one, &st);
    redisFree(c);
    printf("%ld record(s) replayed, %ld failed\n", st.replayed, st.failed);
    return rc != 0 || st.failed ? EXIT_ERR : EXIT_OK;
}

/* ---- purge -------------------------------------------------------------------------------- */

/* "7d", "12h", "30m", "45s" -> milliseconds; -1 when malformed. */
static long long parse_duration_ms(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0 || end[0] == '\0' || end[1] != '\0') return -1;
    long long unit;
    switch (*end) {
    case 's': unit = 1000LL; break;
    case 'm': unit = 60 * 1000LL; break;
    case 'h': unit = 3600 * 1000LL; break;
    case 'd': unit = 86400 * 1000LL; break;
    default: return -1;
    }
    if (v > (long long)1e12 / unit) return -1;
    return v * unit;
}

static const char purge_usage[] =
    "usage: dlq purge --older-than DURATION | --all\n"
    "  Delete dead-letter records for good.\n"
    "  --older-than D   records written more than D ago (7d, 12h, 30m, 45s)\n"
    "  --all            every record\n";

static int cmd_purge(int argc, char **argv, const dlq_options *o)
{
    static const struct option opts[] = {
        {"older-than", required_argument, 0, 'o'}, {"all", no_argument, 0, 'a'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    long long older_ms = -1;
    int all = 0, ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'a') all = 1;
        else if (ch == 'h') { fputs(purge_usage, stdout); return EXIT_OK; }
        else if (ch == 'o') {
            if ((older_ms = parse_duration_ms(optarg)) < 0) {
                fprintf(stderr, "dlq purge: bad duration '%s' (use e.g. 7d, 12h, 30m)\n", optarg);
                return EXIT_USAGE;
            }
        } else { fputs(purge_usage, stderr); return EXIT_USAGE; }
    }
    if (optind < argc || all == (older_ms >= 0)) {
        fprintf(stderr, "dlq purge: give exactly one of --older-than or --all\n%s", purge_usage);
        return EXIT_USAGE;
    }
    redisContext *c = connect_or_complain(o);
    if (!c) return EXIT_ERR;
    /* Record ids are their XADD time in ms, so MINID trims by age exactly. */
    char minid[32];
    snprintf(minid, sizeof minid, "%lld", (long long)(time_now_us() / 1000) - (all ? 0 : older_ms));
    const char *trim_all[] = {"XTRIM", dlq_key(o), "MAXLEN", "0"};
    const char *trim_old[] = {"XTRIM", dlq_key(o), "MINID", minid};
    redisReply *r = command_ok(c, 4, all ? trim_all : trim_old);
    redisFree(c);
    if (!r) return EXIT_ERR;
    printf("purged %lld record(s) from %s\n", r->type == REDIS_REPLY_INTEGER ? r->integer : 0,
           dlq_key(o));
    freeReplyObject(r);
    return EXIT_OK;
}

/* ---- Entry point -------------------------------------------------------------------------- */

static const char main_usage[] =
    "usage: dlq list|show|replay|purge [options]   (dlq COMMAND --help for details)\n"
    "  list     list dead-letter records\n"
    "  show     print one record\n"
    "  replay   send records' events back to their streams\n"
    "  purge    delete records\n";

int dlq_cli_main(int argc, char **argv, const dlq_options *o)
{
    if (argc < 2) {
        fputs(main_usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(main_usage, stdout);
        return EXIT_OK;
    }
    optind = 0;     /* reset getopt: argv[1] is the subcommand, options follow */
    opterr = 1;
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    if (strcmp(cmd, "list") == 0) return cmd_list(sub_argc, sub_argv, o);
    if (strcmp(cmd, "show") == 0) return cmd_show(sub_argc, sub_argv, o);
    if (strcmp(cmd, "replay") == 0) return cmd_replay(sub_argc, sub_argv, o);
    if (strcmp(cmd, "purge") == 0) return cmd_purge(sub_argc, sub_argv, o);
    fprintf(stderr, "dlq: unknown command '%s'\n%s", cmd, main_usage);
    return EXIT_USAGE;
}
