/* tests/fuzz/fuzz_common.h: helpers shared by the libFuzzer harnesses.
 *
 * Every harness is one file, fuzz_<name>.c, defining LLVMFuzzerTestOneInput
 * (and maybe LLVMFuzzerInitialize). A property violation calls FUZZ_CHECK,
 * which prints what was violated and aborts, so libFuzzer saves the input
 * as a crash like any sanitizer report. Built by tests/fuzz/build.sh. */
#ifndef PTEL_FUZZ_COMMON_H
#define PTEL_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define FUZZ_CHECK(cond, ...) do {                                            \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: ", __FILE__,     \
                    __LINE__, #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* A NUL-terminated copy of the input (C-string APIs see up to the first NUL). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Keep the project's logger quiet: warnings for every bad input would drown
 * libFuzzer's output and slow it down. */
static inline void fuzz_quiet_logs(void)
{
    log_setup(LOG_CRITICAL, LOG_FORMAT_TEXT, stderr);
}

#endif
