/* tests/fuzz/fuzz_config.c: config_load_string (the celeryconfig reader and
 * every setting's validation) and config_read_literals on arbitrary text.
 * After a successful load the harness renders `inspect conf` (censored and
 * not, with and without defaults) and looks up task settings, so the
 * annotation merge runs on fuzzed dicts too.
 * Property: text that config_load_string accepts is also accepted by
 * config_read_literals (the loader is the reader plus validation), and
 * rendered conf dumps to JSON that re-parses. */
#include "fuzz_common.h"
#include "common/buf.h"
#include "common/pyjson.h"
#include "worker/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static void render(const ptel_config *cfg, int with_defaults, int censored)
{
    pj_value *v = config_render_conf(cfg, with_defaults, censored);
    if (!v) return;
    buf b = BUF_INIT;
    pj_dump(&b, v, 0);
    pj_value *w = pj_parse(b.data ? b.data : "", b.len, NULL);
    FUZZ_CHECK(w != NULL, "rendered conf does not re-parse: %.300s", buf_cstr(&b));
    pj_free(w);
    buf_free(&b);
    pj_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ptel_config cfg;
    char err[512];
    config_init_defaults(&cfg);
    int rc = config_load_string(&cfg, "fuzz.py", (const char *)data, size, err, sizeof(err));
    if (rc == 0) {
        for (int d = 0; d < 2; d++)
            for (int c = 0; c < 2; c++) render(&cfg, d, c);
        task_settings ts;
        config_task_settings(&cfg, "proto.add", &ts);
        config_task_settings(&cfg, "*", &ts);
        (void)config_task_overrides(&cfg, "tasks.add");
    } else {
        FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "err not terminated");
    }
    config_free(&cfg);

    pj_value *lits = NULL;
    char err2[512];
    int rc2 = config_read_literals("fuzz.py", (const char *)data, size, &lits, err2, sizeof(err2));
    if (rc == 0) FUZZ_CHECK(rc2 == 0, "loader accepted what the literal reader refuses: %s", err2);
    if (rc2 == 0) {
        buf b = BUF_INIT;
        pj_dump(&b, lits, PJ_DUMP_SORT_KEYS);
        buf_free(&b);
        pj_free(lits);
    }
    return 0;
}
