/* worker/test_config.c: Check tests for worker/config.c.
 *
 * Expected values come from Python where Python has an answer: the
 * celeryconfig.sample and literals.py fixtures are compared with what
 * /usr/bin/python3's runpy builds (tests/data/config/gen_expected.py), and
 * the conf redaction with what Celery 5.2.6's app.conf.table() prints.
 * Error texts are ours and checked exactly, file:line included. */
#include "worker/config.h"

#include "common/buf.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/pyjson.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FILE_NAME "celeryconfig.py"

static char err[512];

/* ---- Fixtures ------------------------------------------------------------- */

static const char *source_root(void)
{
    const char *root = getenv("PTEL_SOURCE_ROOT");
    return root ? root : ".";
}

static char *source_path(const char *rel)
{
    buf b = BUF_INIT;
    buf_printf(&b, "%s/%s", source_root(), rel);
    return buf_detach(&b);
}

static pj_value *read_json(const char *rel)
{
    char *path = source_path(rel);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    buf b = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(&b, chunk, n);
    fclose(f);
    pj_error perr;
    pj_value *v = pj_parse(b.data, b.len, &perr);
    ck_assert_msg(v != NULL, "%s: %s", path, perr.msg);
    buf_free(&b);
    free(path);
    return v;
}

/* Loads text as FILE_NAME into a fresh defaults config. */
static int load(ptel_config *cfg, const char *text)
{
    config_init_defaults(cfg);
    err[0] = '\0';
    return config_load_string(cfg, FILE_NAME, text, strlen(text), err, sizeof err);
}

/* Log capture: log_setup into a memstream, read back after the call. */
static char *log_text;
static size_t log_len;
static FILE *log_stream;

static void capture_start(void)
{
    log_stream = open_memstream(&log_text, &log_len);
    log_setup(LOG_WARNING, LOG_FORMAT_TEXT, log_stream);
}

static char *capture_end(void)
{
    log_setup(LOG_WARNING, LOG_FORMAT_TEXT, NULL);
    fclose(log_stream);
    return log_text;     /* caller frees */
}

static char *dump(const pj_value *v)
{
    buf b = BUF_INIT;
    pj_dump(&b, v, PJ_DUMP_SORT_KEYS);
    return buf_detach(&b);
}

static void assert_same(const pj_value *want, const pj_value *have, const char *what)
{
    char *w = dump(want), *h = dump(have);
    ck_assert_msg(have && pj_equal(want, have), "%s: want %s, have %s", what, w, h);
    free(w);
    free(h);
}

static int run_python(const char *args)
{
    buf cmd = BUF_INIT;
    buf_printf(&cmd, "cd '%s' && /usr/bin/python3 %s", source_root(), args);
    int rc = system(cmd.data);
    buf_free(&cmd);
    return rc;
}

/* ---- Defaults -------------------------------------------------------------- */

START_TEST(test_defaults_are_celerys_and_ours)
{
    ptel_config cfg;
    config_init_defaults(&cfg);
    ck_assert_str_eq(cfg.broker_url, "redis://localhost:6379/0");
    ck_assert_str_eq(cfg.result_backend, "redis://localhost:6379/0");
    ck_assert_str_eq(cfg.telemetry_redis_url, "redis://localhost:6379/0");
    ck_assert_str_eq(cfg.task_default_queue, "ingest");
    ck_assert_uint_eq(cfg.task_queues.count, 1);
    ck_assert_str_eq(cfg.task_queues.items[0], "ingest");
    ck_assert_int_eq(cfg.worker_concurrency, 2);
    ck_assert_int_eq(cfg.worker_prefetch_multiplier, 4);
    ck_assert_int_eq(cfg.task_acks_late, 0);
    ck_assert_int_eq(cfg.task_acks_on_failure_or_timeout, 1);
    ck_assert(cfg.task_time_limit < 0 && cfg.task_soft_time_limit < 0);
    ck_assert_int_eq(cfg.result_expires, 86400);
    ck_assert_uint_eq(cfg.accept_content.count, 2);
    ck_assert_str_eq(cfg.accept_content.items[1], "msgpack");
    ck_assert_double_eq(cfg.visibility_timeout, 3600);
    ck_assert_uint_eq(cfg.priority_steps_count, 4);
    ck_assert_int_eq(cfg.priority_steps[3], 9);
    ck_assert_str_eq(cfg.transport_sep, "\x06\x16");
    ck_assert_int_eq(cfg.unacked_mutex_expire, 300);
    ck_assert_int_eq(cfg.worker_unknown_task, UNKNOWN_TASK_REQUEUE);
    ck_assert_int_eq(cfg.worker_max_message_bytes, 8 * 1024 * 1024);
    ck_assert_int_eq(cfg.has_worker_control_allow, 0);
    ck_assert_ptr_null(cfg.worker_statedb);
    ck_assert_int_eq(cfg.worker_metrics_port, 0);
    ck_assert_str_eq(cfg.clickhouse_url, "http://localhost:8123/default");
    ck_assert_int_eq(cfg.clickhouse_insert_format, CH_INSERT_AUTO);
    ck_assert_int_eq(cfg.clickhouse_gzip_min_bytes, -1);   /* None: by host */
    ck_assert_str_eq(cfg.telemetry_consumer_group, "product-telemetry-consumers");
    ck_assert_int_eq(cfg.telemetry_batch_max_bytes, 4 * 1024 * 1024);
    ck_assert_int_eq(cfg.telemetry_retention_days, 180);
    ck_assert_ptr_null(config_task_overrides(&cfg, "any"));
    pj_value *conf = config_render_conf(&cfg, 0, 1);
    ck_assert_uint_eq(conf->u.object.len, 0);   /* nothing set explicitly */
    pj_free(conf);
    config_free(&cfg);
}
END_TEST

/* ---- The sample ------------------------------------------------------------ */

START_TEST(test_sample_is_valid_python)
{
    ck_assert_int_eq(run_python("-W error::SyntaxWarning -c 'import runpy; runpy.run_path(\"celeryconfig.sample\")'"), 0);
}
END_TEST

START_TEST(test_expected_json_is_fresh)
{
    ck_assert_int_eq(run_python("tests/data/config/gen_expected.py --check"), 0);
}
END_TEST

START_TEST(test_sample_loads_without_warnings_and_matches_python)
{
    ptel_config cfg;
    char *path = source_path("celeryconfig.sample");
    config_init_defaults(&cfg);
    capture_start();
    int rc = config_load_file(&cfg, path, err, sizeof err);
    char *log = capture_end();
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_msg(log_len == 0, "unexpected log: %s", log);
    free(log);

    pj_value *want = read_json("tests/data/config/celeryconfig.sample.expected.json");
    pj_value *have = config_render_conf(&cfg, 0, 0);
    ck_assert_uint_eq(have->u.object.len, want->u.object.len);
    for (size_t i = 0; i < want->u.object.len; i++) {
        const pj_member *m = &want->u.object.members[i];
        assert_same(m->value, pj_object_get(have, m->key.ptr), m->key.ptr);
    }
    /* The upstream values the sample carries (CONTRACT §1). */
    ck_assert_int_eq(cfg.task_track_started, 1);
    ck_assert_double_eq(cfg.task_time_limit, 3600);
    ck_assert_double_eq(cfg.task_soft_time_limit, 3300);
    ck_assert_int_eq(cfg.worker_prefetch_multiplier, 1);
    pj_free(want);
    pj_free(have);
    free(path);
    config_free(&cfg);
}
END_TEST

/* Every setting of the table is documented in the sample (set or shown). */
START_TEST(test_sample_documents_every_setting)
{
    ptel_config cfg;
    char *path = source_path("celeryconfig.sample");
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    buf text = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(&text, chunk, n);
    fclose(f);
    config_init_defaults(&cfg);
    pj_value *all = config_render_conf(&cfg, 1, 0);
    for (size_t i = 0; i < all->u.object.len; i++) {
        buf line = BUF_INIT;
        buf_printf(&line, "\n%s = ", all->u.object.members[i].key.ptr);
        buf commented = BUF_INIT;
        buf_printf(&commented, "\n# %s = ", all->u.object.members[i].key.ptr);
        ck_assert_msg(strstr(text.data, line.data) || strstr(text.data, commented.data),
                      "%s missing from celeryconfig.sample", all->u.object.members[i].key.ptr);
        buf_free(&line);
        buf_free(&commented);
    }
    pj_free(all);
    buf_free(&text);
    free(path);
    config_free(&cfg);
}
END_TEST

/* ---- The literal reader ------------------------------------------------------ */

START_TEST(test_every_literal_form_matches_python)
{
    char *path = source_path("tests/data/config/literals.py");
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    buf text = BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(&text, chunk, n);
    fclose(f);
    pj_value *have = NULL;
    ck_assert_msg(config_read_literals("literals.py", text.data, text.len, &have, err, sizeof err) == 0,
                  "%s", err);
    pj_value *want = read_json("tests/data/config/literals.expected.json");
    ck_assert_uint_eq(have->u.object.len, want->u.object.len);
    for (size_t i = 0; i < want->u.object.len; i++) {
        const pj_member *m = &want->u.object.members[i];
        ck_assert_str_eq(have->u.object.members[i].key.ptr, m->key.ptr);   /* same order */
        assert_same(m->value, have->u.object.members[i].value, m->key.ptr);
    }
    pj_free(want);
    pj_free(have);
    buf_free(&text);
    free(path);
}
END_TEST

START_TEST(test_multiline_values_comments_and_blank_lines)
{
    ptel_config cfg;
    const char *text =
        "# leading comment\n"
        "\n"
        "task_queues = [\n"
        "    'ingest',  # the upstream queue\n"
        "\n"
        "    'celery',\n"
        "]\n"
        "   # an indented comment line is fine\n"
        "broker_transport_options = {\n"
        "    'visibility_timeout': 7200.5,\n"
        "    'priority_steps': (0, 9),\n"
        "    'queue_order_strategy': 'priority',\n"
        "}\n"
        "worker_concurrency = \\\n"
        "    8\n"
        "worker_control_allow = ('ping', 'inspect_conf')  # trailing comment\n";
    ck_assert_msg(load(&cfg, text) == 0, "%s", err);
    ck_assert_uint_eq(cfg.task_queues.count, 2);
    ck_assert_str_eq(cfg.task_queues.items[1], "celery");
    ck_assert_double_eq(cfg.visibility_timeout, 7200.5);
    ck_assert_uint_eq(cfg.priority_steps_count, 2);
    ck_assert_int_eq(cfg.priority_steps[1], 9);
    ck_assert_int_eq(cfg.queue_order_strategy, QUEUE_ORDER_PRIORITY);
    ck_assert_int_eq(cfg.unacked_mutex_expire, 300);   /* keys left out: defaults */
    ck_assert_int_eq(cfg.worker_concurrency, 8);
    ck_assert_int_eq(cfg.has_worker_control_allow, 1);
    ck_assert_str_eq(cfg.worker_control_allow.items[1], "inspect_conf");
    config_free(&cfg);
}
END_TEST

START_TEST(test_every_value_type_reaches_its_field)
{
    ptel_config cfg;
    const char *text =
        "task_acks_late = True\n"
        "task_time_limit = 10\n"
        "task_soft_time_limit = 7.5\n"
        "result_expires = None\n"
        "worker_statedb = '/var/lib/ptel/state'\n"
        "worker_metrics_port = 9808\n"
        "worker_log_format = \"json\"\n"
        "worker_unknown_task = 'reject'\n"
        "clickhouse_insert_format = 'JSONEachRow'\n"
        "clickhouse_gzip_min_bytes = 65536\n"
        "accept_content = ('application/json',)\n"
        "telemetry_backoff_max_s = 0.5\n"
        "task_default_queue = 'q'\n";
    ck_assert_msg(load(&cfg, text) == 0, "%s", err);
    ck_assert_int_eq(cfg.task_acks_late, 1);
    ck_assert_double_eq(cfg.task_time_limit, 10);
    ck_assert_double_eq(cfg.task_soft_time_limit, 7.5);
    ck_assert_int_eq(cfg.result_expires, -1);
    ck_assert_str_eq(cfg.worker_statedb, "/var/lib/ptel/state");
    ck_assert_int_eq(cfg.worker_metrics_port, 9808);
    ck_assert_int_eq(cfg.worker_log_format, LOG_FORMAT_JSON);
    ck_assert_int_eq(cfg.worker_unknown_task, UNKNOWN_TASK_REJECT);
    ck_assert_int_eq(cfg.clickhouse_insert_format, CH_INSERT_JSONEACHROW);
    ck_assert_int_eq(cfg.clickhouse_gzip_min_bytes, 65536);
    ck_assert_str_eq(cfg.accept_content.items[0], "application/json");
    ck_assert_double_eq(cfg.telemetry_backoff_max_s, 0.5);
    ck_assert_str_eq(cfg.task_queues.items[0], "q");   /* follows task_default_queue */
    config_free(&cfg);
}
END_TEST

/* ---- Errors ------------------------------------------------------------------ */

#define SUB "a celeryconfig for ptel-worker may contain only `name = literal` lines " \
            "(strings, numbers, True/False/None, lists, tuples and dicts of those)"

static const struct { const char *text, *error; } bad[] = {
    /* values */
    {"# 1\n# 2\n# 3\n# 4\n# 5\n# 6\n# 7\n# 8\n# 9\n# 10\n# 11\nworker_concurrency = 'two'\n",
     "celeryconfig.py:12: worker_concurrency must be a positive integer, got 'two'"},
    {"worker_concurrency = 0", "celeryconfig.py:1: worker_concurrency must be a positive integer, got 0"},
    {"worker_concurrency = 5000", "celeryconfig.py:1: worker_concurrency must be at most 1024, got 5000"},
    {"worker_concurrency = 2.0", "celeryconfig.py:1: worker_concurrency must be a positive integer, got 2.0"},
    {"worker_prefetch_multiplier = -1",
     "celeryconfig.py:1: worker_prefetch_multiplier must be a non-negative integer, got -1"},
    {"task_acks_late = 1", "celeryconfig.py:1: task_acks_late must be True or False, got 1"},
    {"broker_url = 'amqp://guest@localhost//'",
     "celeryconfig.py:1: broker_url must be a redis://, unix:// or redis+socket:// URL, got 'amqp://guest@localhost//'"},
    {"result_backend = None",
     "celeryconfig.py:1: result_backend must be a redis://, unix:// or redis+socket:// URL, got None"},
    {"clickhouse_url = 'tcp://ch:9000'",
     "celeryconfig.py:1: clickhouse_url must be an http://, https:// or chdb:// URL, got 'tcp://ch:9000'"},
    {"clickhouse_table = 'events; DROP TABLE x'",
     "celeryconfig.py:1: clickhouse_table must be a table name of letters, digits, '_' and '.', got 'events; DROP TABLE x'"},
    {"task_default_queue = ''", "celeryconfig.py:1: task_default_queue must be a non-empty string, got ''"},
    {"telemetry_dlq_stream = 'a\\x00b'",
     "celeryconfig.py:1: telemetry_dlq_stream must be a non-empty string, got 'a\\x00b'"},
    {"worker_unknown_task = 'drop'",
     "celeryconfig.py:1: worker_unknown_task must be one of 'requeue', 'reject', got 'drop'"},
    {"clickhouse_insert_format = 'rowbinary'",
     "celeryconfig.py:1: clickhouse_insert_format must be one of 'auto', 'RowBinary', 'JSONEachRow', got 'rowbinary'"},
    {"accept_content = ['json',\n  'pickle']",
     "celeryconfig.py:2: accept_content: 'pickle' is refused: ptel-worker never deserialises pickle or yaml "
     "(it runs no Python, and both can execute code); use 'json' or 'msgpack'"},
    {"accept_content = ['xml']",
     "celeryconfig.py:1: accept_content must be one of 'json', 'msgpack', 'application/json', 'application/x-msgpack', got 'xml'"},
    {"accept_content = []", "celeryconfig.py:1: accept_content must list at least one content type"},
    {"accept_content = 'json'", "celeryconfig.py:1: accept_content must be a list of strings, got 'json'"},
    {"task_serializer = 'yaml'",
     "celeryconfig.py:1: task_serializer: 'yaml' is refused: ptel-worker never deserialises pickle or yaml "
     "(it runs no Python, and both can execute code); use 'json' or 'msgpack'"},
    {"task_time_limit = -5",
     "celeryconfig.py:1: task_time_limit must be a positive number of seconds or None, got -5"},
    {"worker_shutdown_grace = True",
     "celeryconfig.py:1: worker_shutdown_grace must be a non-negative number of seconds, got True"},
    {"clickhouse_timeout = 0", "celeryconfig.py:1: clickhouse_timeout must be a positive number of seconds, got 0"},
    {"result_expires = -1", "celeryconfig.py:1: result_expires must be a non-negative integer, got -1"},
    {"result_expires = 1.5",
     "celeryconfig.py:1: result_expires must be a non-negative integer (seconds) or None, got 1.5"},
    {"clickhouse_gzip_min_bytes = -1",
     "celeryconfig.py:1: clickhouse_gzip_min_bytes must be a non-negative integer, got -1"},
    {"\n\nclickhouse_gzip_min_bytes = '64k'",
     "celeryconfig.py:3: clickhouse_gzip_min_bytes must be a non-negative integer (bytes) or None, "
     "got '64k'"},
    {"worker_metrics_port = 70000",
     "celeryconfig.py:1: worker_metrics_port must be a TCP port (1-65535) or None, got 70000"},
    {"worker_statedb = 5", "celeryconfig.py:1: worker_statedb must be a non-empty string or None, got 5"},
    {"task_queues = []", "celeryconfig.py:1: task_queues must name at least one queue (or be None)"},
    {"task_queues = ['a',\n    3]", "celeryconfig.py:2: task_queues items must be non-empty strings, got 3"},
    {"worker_control_allow = 'ping'",
     "celeryconfig.py:1: worker_control_allow must be a list of strings, got 'ping'"},
    {"telemetry_retention_days = 40000",
     "celeryconfig.py:1: telemetry_retention_days must be at most 36500, got 40000"},
    {"enable_utc = 'yes'", "celeryconfig.py:1: enable_utc must be True or False, got 'yes'"},
    {"broker_transport_options = {\n    'visibility_timeout': 10,\n    'queue_order_strategy': 'fifo',\n}",
     "celeryconfig.py:3: broker_transport_options['queue_order_strategy'] must be one of 'round_robin', "
     "'sorted', 'priority', got 'fifo'"},
    {"broker_transport_options = {'priority_steps': [0, 5, 3]}",
     "celeryconfig.py:1: broker_transport_options['priority_steps'] must be increasing integers from 0 to 9, "
     "got [0, 5, 3]"},
    {"broker_transport_options = {'priority_steps': []}",
     "celeryconfig.py:1: broker_transport_options['priority_steps'] must be a list of 1 to 10 priorities, got []"},
    {"broker_transport_options = {'visibility_timeout': 'long'}",
     "celeryconfig.py:1: broker_transport_options['visibility_timeout'] must be a positive number of seconds, got 'long'"},
    {"broker_transport_options = {'unacked_mutex_expire': 0}",
     "celeryconfig.py:1: broker_transport_options['unacked_mutex_expire'] must be a positive integer, got 0"},
    {"broker_transport_options = {'sep': ''}",
     "celeryconfig.py:1: broker_transport_options['sep'] must be a non-empty string, got ''"},
    {"broker_transport_options = {'global_keyprefix': None}",
     "celeryconfig.py:1: broker_transport_options['global_keyprefix'] must be a string, got None"},
    {"broker_transport_options = [('visibility_timeout', 1)]",
     "celeryconfig.py:1: broker_transport_options must be a dict, got [['visibility_timeout', 1]]"},
    {"task_annotations = ['t']",
     "celeryconfig.py:1: task_annotations must be a dict of task name -> dict of attributes, or None, got ['t']"},
    {"task_annotations = {'t': 5}",
     "celeryconfig.py:1: task_annotations['t'] must be a dict of task attributes, got 5"},
    {"task_annotations = {'': {}}", "celeryconfig.py:1: task_annotations keys must be task names or '*', got ''"},
    {"task_annotations = {\n  't': {\n    'rate_limit': '10/d'}}",
     "celeryconfig.py:3: task_annotations['t']['rate_limit'] must be a rate like '10/s', '10/m' or '10/h', "
     "a number or None, got '10/d'"},
    {"task_annotations = {'t': {'acks_late': 'yes'}}",
     "celeryconfig.py:1: task_annotations['t']['acks_late'] must be True or False, got 'yes'"},
    {"task_annotations = {'*': {'time_limit': 0}}",
     "celeryconfig.py:1: task_annotations['*']['time_limit'] must be a positive number of seconds or None, got 0"},
    /* syntax and the subset */
    {"import os", "celeryconfig.py:1: import statements are not supported; " SUB},
    {"\nfrom kombu import Queue", "celeryconfig.py:2: import statements are not supported; " SUB},
    {"def f():\n    pass", "celeryconfig.py:1: 'def' statements are not supported; " SUB},
    {"worker_concurrency = 2 * 4", "celeryconfig.py:1: expressions (operator '*') are not supported; " SUB},
    {"worker_concurrency = int('4')",
     "celeryconfig.py:1: 'int' is not a literal: names, calls and expressions are not supported; " SUB},
    {"broker_url = os.environ['BROKER']",
     "celeryconfig.py:1: 'os' is not a literal: names, calls and expressions are not supported; " SUB},
    {"print('hi')", "celeryconfig.py:1: function calls are not supported; " SUB},
    {"app.conf = 1", "celeryconfig.py:1: attribute access is not supported; " SUB},
    {"x: int = 1", "celeryconfig.py:1: annotated assignments are not supported; " SUB},
    {"a, b = 1, 2", "celeryconfig.py:1: unpacking assignments are not supported; " SUB},
    {"worker_concurrency += 1", "celeryconfig.py:1: augmented assignment '+=' is not supported; " SUB},
    {"worker_concurrency 2", "celeryconfig.py:1: expected '=' after the setting name; " SUB},
    {"worker_concurrency = 2 = 3", "celeryconfig.py:1: chained assignments are not supported; " SUB},
    {"worker_concurrency = 2; task_acks_late = True",
     "celeryconfig.py:1: ';' between statements is not supported; put each setting on its own line"},
    {"worker_concurrency = -True", "celeryconfig.py:1: expressions (unary operator) are not supported; " SUB},
    {"task_queues = ['a' for q in 'ab']", "celeryconfig.py:1: comprehensions are not supported; " SUB},
    {"worker_concurrency =", "celeryconfig.py:1: unexpected end of file, expected a value"},
    {"worker_concurrency =\nx = 1", "celeryconfig.py:1: unexpected end of line, expected a value"},
    {"task_queues = ['a' 'b' 1]", "celeryconfig.py:1: unexpected '1', expected ',' or ']'"},
    {"worker_concurrency = 2)", "celeryconfig.py:1: unmatched ')'"},
    {"broker_url = 'redis://x", "celeryconfig.py:1: unterminated string literal"},
    {"\nbroker_url = '''redis://x\n\n", "celeryconfig.py:2: unterminated triple-quoted string literal"},
    {"task_queues = ['a',\n  'b'\n", "celeryconfig.py:1: '[' was never closed"},
    {"x = (1,\n", "celeryconfig.py:1: '(' was never closed"},
    {"x = {\n'a': 1,\n", "celeryconfig.py:1: '{' was never closed"},
    {"  worker_concurrency = 2", "celeryconfig.py:1: unexpected indent"},
    {"worker_concurrency = 012",
     "celeryconfig.py:1: leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers"},
    {"worker_concurrency = 1__0", "celeryconfig.py:1: invalid decimal literal"},
    {"worker_concurrency = 2abc", "celeryconfig.py:1: invalid decimal literal"},
    {"worker_concurrency = 0x", "celeryconfig.py:1: invalid base-16 integer literal"},
    {"worker_concurrency = 0x1FFFFFFFFFFFFFFFF",
     "celeryconfig.py:1: integer literal too large (hex, octal and binary literals are limited to 64 bits)"},
    {"worker_concurrency = 2j", "celeryconfig.py:1: complex numbers are not supported; " SUB},
    {"x = {'a', 'b'}", "celeryconfig.py:1: set literals are not supported; " SUB},
    {"x = {1: 'a'}", "celeryconfig.py:1: dict keys must be strings, got 1"},
    {"x = {'a' 1}", "celeryconfig.py:1: unexpected '1', expected ':'"},
    {"broker_url = b'redis://'", "celeryconfig.py:1: bytes literals are not supported; use a str"},
    {"broker_url = f'redis://{h}'", "celeryconfig.py:1: f-strings are not supported; " SUB},
    {"x = '\\N{EM DASH}'", "celeryconfig.py:1: \\N{...} escapes are not supported; write the character itself"},
    {"x = '\\x4'", "celeryconfig.py:1: truncated \\x escape in a string"},
    {"x = '\\U00110000'", "celeryconfig.py:1: illegal Unicode character in \\U escape"},
    {"x = 1 \\ 2", "celeryconfig.py:1: unexpected character after line continuation character"},
    {"True = 1", "celeryconfig.py:1: expected a setting name; " SUB},
    {"[1, 2]", "celeryconfig.py:1: expected a setting name; " SUB},
    {"x = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
     "celeryconfig.py:1: values nested deeper than 32 brackets are not supported"},
    {"x = 1 if True else 2", "celeryconfig.py:1: unexpected 'if', expected the end of the line"},
    {"# ok\nx = '\xff'", "celeryconfig.py:2: invalid UTF-8 in the config file"},
    {"x = '\xed\xa0\x80'", "celeryconfig.py:1: invalid UTF-8 in the config file"},
};

START_TEST(test_invalid_input_fails_with_file_line_reason)
{
    ptel_config cfg;
    capture_start();
    int rc = load(&cfg, bad[_i].text);
    free(capture_end());
    ck_assert_msg(rc == -1, "accepted: %s", bad[_i].text);
    ck_assert_str_eq(err, bad[_i].error);
    config_free(&cfg);
}
END_TEST

START_TEST(test_nul_byte_in_source_is_an_error)
{
    ptel_config cfg;
    config_init_defaults(&cfg);
    static const char text[] = "x = 1\ny = '\0'\n";
    ck_assert_int_eq(config_load_string(&cfg, FILE_NAME, text, sizeof text - 1, err, sizeof err), -1);
    ck_assert_str_eq(err, "celeryconfig.py:2: source code cannot contain null bytes");
    config_free(&cfg);
}
END_TEST

START_TEST(test_missing_file_is_a_clear_error)
{
    ptel_config cfg;
    config_init_defaults(&cfg);
    ck_assert_int_eq(config_load_file(&cfg, "/nonexistent/celeryconfig.py", err, sizeof err), -1);
    ck_assert_str_eq(err, "/nonexistent/celeryconfig.py: cannot read config file: No such file or directory");
    config_free(&cfg);
}
END_TEST

START_TEST(test_file_over_the_size_limit_is_refused)
{
    ptel_config cfg;
    char path[] = "/tmp/ptel-config-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i <= CONFIG_MAX_FILE_BYTES / 8; i++) fputs("# 34567\n", f);
    fclose(f);
    config_init_defaults(&cfg);
    int rc = config_load_file(&cfg, path, err, sizeof err);
    unlink(path);
    ck_assert_int_eq(rc, -1);
    ck_assert_ptr_nonnull(strstr(err, ": config file is larger than 1048576 bytes"));
    config_free(&cfg);
}
END_TEST

/* ---- Warnings ---------------------------------------------------------------- */

START_TEST(test_unknown_setting_warns_and_is_ignored)
{
    ptel_config cfg;
    capture_start();
    int rc = load(&cfg, "worker_concurrency = 3\n\nworker_max_tasks_per_child = 100\n");
    char *log = capture_end();
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(cfg.worker_concurrency, 3);
    ck_assert_msg(strstr(log, "WARNING/MainProcess] celeryconfig.py:3: unknown setting "
                              "'worker_max_tasks_per_child' ignored\n") != NULL, "log: %s", log);
    free(log);
    config_free(&cfg);
}
END_TEST

START_TEST(test_unknown_nested_keys_warn_with_their_line)
{
    ptel_config cfg;
    capture_start();
    int rc = load(&cfg, "broker_transport_options = {\n  'visibility_timeout': 5,\n  'max_connections': 20,\n}\n"
                        "task_annotations = {'t': {'max_retries': 3}}\n");
    char *log = capture_end();
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_ptr_nonnull(strstr(log, "celeryconfig.py:3: unknown broker_transport_options key 'max_connections' ignored"));
    ck_assert_ptr_nonnull(strstr(log, "celeryconfig.py:5: unknown task_annotations attribute 'max_retries' for 't' ignored"));
    ck_assert_double_eq(cfg.visibility_timeout, 5);
    free(log);
    config_free(&cfg);
}
END_TEST

/* ---- Layers: environment and CLI ----------------------------------------------- */

static void clear_env(void)
{
    unsetenv("CELERY_BROKER_URL");
    unsetenv("CELERY_RESULT_BACKEND");
    unsetenv("REDIS_URL");
    unsetenv("CLICKHOUSE_URL");
}

START_TEST(test_env_overrides_the_file)
{
    ptel_config cfg;
    ck_assert_int_eq(load(&cfg, "broker_url = 'redis://file:6379/0'\nclickhouse_url = 'http://file:8123/db'\n"), 0);
    ck_assert_str_eq(cfg.result_backend, "redis://file:6379/0");   /* follows broker_url */
    clear_env();
    setenv("CELERY_BROKER_URL", "redis://env:6379/1", 1);
    setenv("CLICKHOUSE_URL", "https://ch.example:8443/telemetry", 1);
    setenv("REDIS_URL", "", 1);                                      /* empty: ignored */
    ck_assert_msg(config_apply_env(&cfg, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(cfg.broker_url, "redis://env:6379/1");
    ck_assert_str_eq(cfg.result_backend, "redis://env:6379/1");
    ck_assert_str_eq(cfg.telemetry_redis_url, "redis://env:6379/1");
    ck_assert_str_eq(cfg.clickhouse_url, "https://ch.example:8443/telemetry");
    setenv("CELERY_RESULT_BACKEND", "redis://results:6379/2", 1);
    setenv("REDIS_URL", "unix:///run/redis.sock", 1);
    ck_assert_int_eq(config_apply_env(&cfg, err, sizeof err), 0);
    ck_assert_str_eq(cfg.result_backend, "redis://results:6379/2");
    ck_assert_str_eq(cfg.telemetry_redis_url, "unix:///run/redis.sock");
    clear_env();
    config_free(&cfg);
}
END_TEST

START_TEST(test_env_with_a_bad_url_names_the_variable)
{
    ptel_config cfg;
    config_init_defaults(&cfg);
    clear_env();
    setenv("CELERY_BROKER_URL", "amqp://guest@rabbit//", 1);
    ck_assert_int_eq(config_apply_env(&cfg, err, sizeof err), -1);
    ck_assert_str_eq(err, "CELERY_BROKER_URL: broker_url must be a redis://, unix:// or redis+socket:// URL, "
                          "got 'amqp://guest@rabbit//'");
    clear_env();
    config_free(&cfg);
}
END_TEST

START_TEST(test_config_set_takes_cli_text)
{
    ptel_config cfg;
    ck_assert_int_eq(load(&cfg, "worker_concurrency = 3\ntask_queues = ['file']\n"), 0);
    ck_assert_int_eq(config_set(&cfg, "worker_concurrency", "4", err, sizeof err), 0);
    ck_assert_int_eq(cfg.worker_concurrency, 4);
    ck_assert_int_eq(config_set(&cfg, "task_queues", " ingest, celery ,,", err, sizeof err), 0);
    ck_assert_uint_eq(cfg.task_queues.count, 2);
    ck_assert_str_eq(cfg.task_queues.items[0], "ingest");
    ck_assert_str_eq(cfg.task_queues.items[1], "celery");
    ck_assert_int_eq(config_set(&cfg, "worker_send_task_events", "true", err, sizeof err), 0);
    ck_assert_int_eq(cfg.worker_send_task_events, 1);
    ck_assert_int_eq(config_set(&cfg, "worker_send_task_events", "OFF", err, sizeof err), 0);
    ck_assert_int_eq(cfg.worker_send_task_events, 0);
    ck_assert_int_eq(config_set(&cfg, "task_time_limit", "90.5", err, sizeof err), 0);
    ck_assert_double_eq(cfg.task_time_limit, 90.5);
    ck_assert_int_eq(config_set(&cfg, "task_time_limit", "None", err, sizeof err), 0);
    ck_assert(cfg.task_time_limit < 0);
    ck_assert_int_eq(config_set(&cfg, "worker_statedb", "/tmp/w.state", err, sizeof err), 0);
    ck_assert_str_eq(cfg.worker_statedb, "/tmp/w.state");
    ck_assert_int_eq(config_set(&cfg, "worker_statedb", "None", err, sizeof err), 0);
    ck_assert_ptr_null(cfg.worker_statedb);
    ck_assert_int_eq(config_set(&cfg, "worker_log_format", "json", err, sizeof err), 0);
    ck_assert_int_eq(config_set(&cfg, "task_annotations", "{'t': {'rate_limit': '6/m'}}", err, sizeof err), 0);
    ck_assert_double_eq(config_task_overrides(&cfg, "t")->rate_limit_per_s, 0.1);
    ck_assert_int_eq(config_set(&cfg, "task_queues", "None", err, sizeof err), 0);
    ck_assert_str_eq(cfg.task_queues.items[0], "ingest");    /* back to [task_default_queue] */

    ck_assert_int_eq(config_set(&cfg, "worker_concurrency", "two", err, sizeof err), -1);
    ck_assert_str_eq(err, "worker_concurrency must be a positive integer, got 'two'");
    ck_assert_int_eq(cfg.worker_concurrency, 4);             /* unchanged on error */
    ck_assert_int_eq(config_set(&cfg, "task_acks_late", "maybe", err, sizeof err), -1);
    ck_assert_str_eq(err, "task_acks_late must be True or False, got 'maybe'");
    ck_assert_int_eq(config_set(&cfg, "concurrency", "4", err, sizeof err), -1);
    ck_assert_str_eq(err, "unknown setting 'concurrency'");
    config_free(&cfg);
}
END_TEST

START_TEST(test_derived_defaults_follow_until_set)
{
    ptel_config cfg;
    ck_assert_int_eq(load(&cfg, "result_backend = 'redis://results/1'\nbroker_url = 'redis://b/0'\n"
                                "task_default_queue = 'work'\n"), 0);
    ck_assert_str_eq(cfg.result_backend, "redis://results/1");    /* explicit: stays */
    ck_assert_str_eq(cfg.telemetry_redis_url, "redis://b/0");     /* derived: follows */
    ck_assert_str_eq(cfg.task_queues.items[0], "work");
    config_free(&cfg);
}
END_TEST

/* ---- `inspect conf` --------------------------------------------------------- */

/* Expected values: Celery 5.2.6 app.conf.table() for the same settings
 * ('redis://:s3cret@h:6379/0' -> 'redis://:********@h:6379/0', the backend
 * keeps its user, global_keyprefix is masked for the 'KEY' in its name). */
START_TEST(test_conf_lists_set_settings_with_secrets_masked)
{
    ptel_config cfg;
    ck_assert_int_eq(load(&cfg,
        "broker_url = 'redis://:s3cret@h:6379/0'\n"
        "result_backend = 'redis://u:pw@h/1'\n"
        "broker_transport_options = {'global_keyprefix': 'x', 'visibility_timeout': 10}\n"
        "clickhouse_url = 'http://u:p@ch:8123/db?x=@'\n"
        "telemetry_redis_url = 'redis://user@h:6379/0'\n"
        "worker_concurrency = 2\n"), 0);
    pj_value *conf = config_render_conf(&cfg, 0, 1);
    buf b = BUF_INIT;
    pj_dump(&b, conf, 0);
    ck_assert_str_eq(b.data,
        "{\"broker_url\": \"redis://:********@h:6379/0\", "
        "\"broker_transport_options\": {\"global_keyprefix\": \"********\", \"visibility_timeout\": 10}, "
        "\"worker_concurrency\": 2, "
        "\"result_backend\": \"redis://u:********@h/1\", "
        "\"clickhouse_url\": \"http://u:********@ch:8123/db?x=@\", "
        "\"telemetry_redis_url\": \"redis://user@h:6379/0\"}");
    buf_free(&b);
    pj_free(conf);
    conf = config_render_conf(&cfg, 0, 0);
    ck_assert_str_eq(pj_get_string(conf, "broker_url"), "redis://:s3cret@h:6379/0");
    pj_free(conf);
    config_free(&cfg);
}
END_TEST

/* ---- task_annotations ---------------------------------------------------------- */

START_TEST(test_annotations_specific_name_wins_over_star)
{
    ptel_config cfg;
    ck_assert_msg(load(&cfg,
        "task_time_limit = 3600\n"
        "task_annotations = {\n"
        "    '*': {'rate_limit': '10/m', 'time_limit': 100, 'acks_late': True},\n"
        "    'tasks.slow': {'time_limit': None, 'soft_time_limit': 5, 'reject_on_worker_lost': True},\n"
        "    'tasks.fast': {'rate_limit': 2, 'acks_late': False, 'ignore_result': True},\n"
        "}\n") == 0, "%s", err);
    const task_overrides *slow = config_task_overrides(&cfg, "tasks.slow");
    ck_assert_ptr_nonnull(slow);
    ck_assert_int_eq(slow->has_time_limit, 1);
    ck_assert(slow->time_limit < 0);                     /* its own None beats '*' */
    ck_assert_double_eq(slow->soft_time_limit, 5);
    ck_assert_int_eq(slow->reject_on_worker_lost, 1);
    ck_assert_int_eq(slow->acks_late, 1);                /* inherited from '*' */
    ck_assert_str_eq(slow->rate_limit, "10/m");
    ck_assert_int_eq(slow->ignore_result, -1);

    task_settings ts;
    config_task_settings(&cfg, "tasks.fast", &ts);
    ck_assert_int_eq(ts.acks_late, 0);
    ck_assert_int_eq(ts.ignore_result, 1);
    ck_assert_str_eq(ts.rate_limit, "2");
    ck_assert_double_eq(ts.rate_limit_per_s, 2);
    ck_assert_double_eq(ts.time_limit, 100);

    config_task_settings(&cfg, "tasks.other", &ts);      /* only '*' applies */
    ck_assert_int_eq(ts.acks_late, 1);
    ck_assert_double_eq(ts.time_limit, 100);
    ck_assert_double_eq(ts.rate_limit_per_s, 10.0 / 60);
    ck_assert_ptr_eq(config_task_overrides(&cfg, "tasks.other"), config_task_overrides(&cfg, "*"));

    ck_assert_int_eq(config_set(&cfg, "task_annotations", "None", err, sizeof err), 0);
    ck_assert_ptr_null(config_task_overrides(&cfg, "tasks.slow"));
    config_task_settings(&cfg, "tasks.slow", &ts);
    ck_assert_double_eq(ts.time_limit, 3600);
    ck_assert_ptr_null(ts.rate_limit);
    config_free(&cfg);
}
END_TEST

/* ---- Suite ------------------------------------------------------------------ */

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults_are_celerys_and_ours);
    tcase_add_test(tc, test_sample_is_valid_python);
    tcase_add_test(tc, test_expected_json_is_fresh);
    tcase_add_test(tc, test_sample_loads_without_warnings_and_matches_python);
    tcase_add_test(tc, test_sample_documents_every_setting);
    tcase_add_test(tc, test_every_literal_form_matches_python);
    tcase_add_test(tc, test_multiline_values_comments_and_blank_lines);
    tcase_add_test(tc, test_every_value_type_reaches_its_field);
    tcase_add_loop_test(tc, test_invalid_input_fails_with_file_line_reason, 0,
                        (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, test_nul_byte_in_source_is_an_error);
    tcase_add_test(tc, test_missing_file_is_a_clear_error);
    tcase_add_test(tc, test_file_over_the_size_limit_is_refused);
    tcase_add_test(tc, test_unknown_setting_warns_and_is_ignored);
    tcase_add_test(tc, test_unknown_nested_keys_warn_with_their_line);
    tcase_add_test(tc, test_env_overrides_the_file);
    tcase_add_test(tc, test_env_with_a_bad_url_names_the_variable);
    tcase_add_test(tc, test_config_set_takes_cli_text);
    tcase_add_test(tc, test_derived_defaults_follow_until_set);
    tcase_add_test(tc, test_conf_lists_set_settings_with_secrets_masked);
    tcase_add_test(tc, test_annotations_specific_name_wins_over_star);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
