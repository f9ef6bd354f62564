/* bench/micro/doc_equiv.c: pj_doc_parse must answer exactly as pj_parse.
 *
 * test_pyjson checks pj_parse against CPython on the 11.5k-case corpus;
 * this checks the arena parse (pj_doc_parse, the telemetry hot path)
 * against pj_parse on the same corpus and on mutations of it (deletions,
 * insertions, replacements, as fuzz_diff.py makes them): same success or
 * failure, same error text and offset, same dumps (default, compact+sorted)
 * and repr. Run it under ASan, which also checks that a doc never reads or
 * frees outside its arena:
 *   cc -O1 -g -fsanitize=address,undefined -D_GNU_SOURCE -I. -o /tmp/doc_equiv \
 *      bench/micro/doc_equiv.c common/pyjson.c common/buf.c common/mem.c common/log.c \
 *      -lcjson -lm && /tmp/doc_equiv tests/data/pyjson/cases.jsonl [mutations per case]
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/pyjson.h"

static uint64_t rng_state = 7;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* Everything observable about a parse, as one string. */
static void answer(buf *out, const pj_value *v, const pj_error *err)
{
    buf_reset(out);
    if (!v) {
        buf_printf(out, "E %zu %s", err->offset, err->msg);
        return;
    }
    buf_puts(out, "O ");
    pj_dump(out, v, 0);
    buf_putc(out, '\t');
    pj_dump(out, v, PJ_DUMP_COMPACT | PJ_DUMP_SORT_KEYS);
    buf_putc(out, '\t');
    pj_dump(out, v, PJ_DUMP_COMPACT);
    buf_putc(out, '\t');
    pj_repr(out, v);
}

static int check(const char *text, size_t len, buf *a, buf *b)
{
    pj_error e1, e2;
    memset(&e1, 0, sizeof e1);
    memset(&e2, 0, sizeof e2);
    pj_value *v = pj_parse(text, len, &e1);
    answer(a, v, &e1);
    pj_free(v);
    pj_doc *d = pj_doc_parse(text, len, &e2);
    answer(b, d ? pj_doc_root(d) : NULL, &e2);
    pj_doc_free(d);
    if (a->len == b->len && memcmp(a->data, b->data, a->len) == 0) return 0;
    fprintf(stderr, "MISMATCH on %.*s\n  pj_parse:     %s\n  pj_doc_parse: %s\n",
            (int)(len > 200 ? 200 : len), text, a->data, b->data);
    return 1;
}

static const char *const alphabet[] = {
    "{", "}", "[", "]", ",", ":", "\"", "\\", " ", "-", "+", ".", "0", "1", "9", "e", "E",
    "t", "r", "u", "f", "a", "l", "s", "n", "I", "N", "y", "\n", "\t", "\r",
    "\xc3\xa9", "\xf0\x9f\x98\x80", "\x00", "\x1f", "\xe2\x80\xa8", "\xff", "\\u", "\\ud800"};

static void mutate(buf *m, const char *s, size_t len)
{
    buf_reset(m);
    buf_append(m, s, len > 300 ? 300 : len);
    int k = (int)(rnd() % 5);
    for (int j = 0; j < k; j++) {
        size_t p = m->len ? rnd() % (m->len + 1) : 0;
        const char *ins = alphabet[rnd() % (sizeof alphabet / sizeof *alphabet)];
        size_t n = ins[0] ? strlen(ins) : 1;
        int r = (int)(rnd() % 10);
        if (r < 3 && m->len) {                      /* delete one byte */
            if (p >= m->len) p = m->len - 1;
            memmove(m->data + p, m->data + p + 1, m->len - p - 1);
            m->len--;
        } else {                                    /* insert (or replace) */
            if (r >= 7 && m->len && p < m->len) {
                memmove(m->data + p, m->data + p + 1, m->len - p - 1);
                m->len--;
            }
            buf_reserve(m, n);
            memmove(m->data + p + n, m->data + p, m->len - p);
            memcpy(m->data + p, ins, n);
            m->len += n;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s cases.jsonl [mutations per case]\n", argv[0]);
        return 2;
    }
    int mutations = argc > 2 ? atoi(argv[2]) : 5;
    FILE *f = fopen(argv[1], "r");
    if (!f) { perror(argv[1]); return 2; }
    buf a = BUF_INIT, b = BUF_INIT, m = BUF_INIT;
    char *line = NULL;
    size_t cap = 0, cases = 0, checked = 0, bad = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *c = cJSON_Parse(line);
        cJSON *in = cJSON_GetObjectItem(c, "input");
        if (cJSON_IsString(in)) {
            const char *s = in->valuestring;
            size_t len = strlen(s);
            cases++;
            bad += check(s, len, &a, &b);
            checked++;
            for (int i = 0; i < mutations; i++) {
                mutate(&m, s, len);
                bad += check(m.data ? m.data : "", m.len, &a, &b);
                checked++;
            }
        }
        cJSON_Delete(c);
    }
    /* Deep nesting: the depth limit and the parser's stacks spilling. */
    buf deep = BUF_INIT;
    for (int depth = 890; depth <= 910; depth += 10) {
        buf_reset(&deep);
        for (int i = 0; i < depth; i++) buf_puts(&deep, i % 2 ? "{\"k\":" : "[1,");
        buf_puts(&deep, "0");
        for (int i = depth - 1; i >= 0; i--) buf_puts(&deep, i % 2 ? "}" : "]");
        bad += check(deep.data, deep.len, &a, &b);
        checked++;
    }
    buf_reset(&deep);                                /* wide: index and stack growth */
    buf_putc(&deep, '{');
    for (int i = 0; i < 300; i++) buf_printf(&deep, "%s\"k%d\":[%d,\"v\\n%d\"]", i ? "," : "", i % 250, i, i);
    buf_putc(&deep, '}');
    bad += check(deep.data, deep.len, &a, &b);
    checked++;
    printf("%zu corpus cases, %zu inputs checked, %zu mismatches\n", cases, checked, bad);
    free(line);
    fclose(f);
    buf_free(&a);
    buf_free(&b);
    buf_free(&m);
    buf_free(&deep);
    return bad ? 1 : 0;
}
