/* tests/fuzz/fuzz_message.h: the checks both message harnesses run on one
 * envelope. Included by fuzz_message_envelope.c and fuzz_message_body.c. */
#ifndef PTEL_FUZZ_MESSAGE_H
#define PTEL_FUZZ_MESSAGE_H

#include "fuzz_common.h"
#include "broker/message.h"
#include "common/buf.h"

/* Small inflation cap: a bomb is found as fast, and RSS stays low. */
static const message_limits fuzz_limits = {0, 1u << 20};

/* Decode; on success check the shape the header promises and that the
 * retry republish we would send decodes again to the same task. */
static void fuzz_decode_envelope(const char *raw, size_t len)
{
    task_message m;
    message_error err;
    memset(&m, 0, sizeof(m));
    memset(&err, 0, sizeof(err));
    if (message_decode(raw, len, &fuzz_limits, &m, &err) != 0) {
        FUZZ_CHECK(err.kind != MESSAGE_OK, "failure with MESSAGE_OK");
        FUZZ_CHECK(memchr(err.msg, '\0', sizeof(err.msg)) && memchr(err.exc_type, '\0', sizeof(err.exc_type)),
                   "error text not terminated");
        message_error_free(&err);
        return;
    }
    FUZZ_CHECK(m.id && m.task, "decoded without id/task");
    FUZZ_CHECK(m.args && m.args->type == PJ_ARRAY, "args not a list");
    FUZZ_CHECK(m.kwargs && m.kwargs->type == PJ_OBJECT, "kwargs not a dict");
    FUZZ_CHECK(m.protocol == 1 || m.protocol == 2, "protocol %d", m.protocol);

    buf out = BUF_INIT;
    if (message_build_retry(&m, 1795817419000000LL, "fuzz@host", &out) == 0) {
        task_message r;
        message_error rerr;
        memset(&r, 0, sizeof(r));
        memset(&rerr, 0, sizeof(rerr));
        int rc = message_decode(out.data, out.len, NULL, &r, &rerr);
        FUZZ_CHECK(rc == 0, "our retry republish does not decode: %s (%s): %.400s", rerr.msg,
                   rerr.exc_type, buf_cstr(&out));
        FUZZ_CHECK(strcmp(r.id, m.id) == 0 && strcmp(r.task, m.task) == 0, "retry changed id/task");
        FUZZ_CHECK(r.retries == m.retries + 1, "retry retries %d, original %d", r.retries, m.retries);
        message_free(&r);
    }
    buf_free(&out);
    message_free(&m);
}

#endif
