/* tests/fuzz/fuzz_control.c: control_parse (a pidbox envelope PUBLISHed on
 * /{db}.celery.pidbox) and control_matches on the result.
 * Properties: failure leaves *out empty and err terminated; success gives
 * a method and an arguments object; matching does not crash for a few
 * node names, including glob metacharacters. */
#include "fuzz_common.h"
#include "broker/control.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    control_command c;
    char err[256];
    memset(err, 'x', sizeof(err));
    memset(&c, 0xA5, sizeof(c));
    if (control_parse((const char *)data, size, &c, err, sizeof(err)) != 0) {
        FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "err not terminated");
        return 0;
    }
    FUZZ_CHECK(c.method != NULL, "parsed command without a method");
    FUZZ_CHECK(c.arguments != NULL && c.arguments->type == PJ_OBJECT, "arguments not an object");
    static const char *const hosts[] = {"w1@vm", "celery@host", "", "a*b?[c]@x"};
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) (void)control_matches(&c, hosts[i]);
    control_command_free(&c);
    return 0;
}
