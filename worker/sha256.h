/* worker/sha256.h: SHA-256 (FIPS 180-4), for org scoping only.
 *
 * The platform names an org in telemetry by sha256(org id) as lowercase hex
 * (CONTRACT §6), and `ptel-worker report --org-id` must compute the same
 * hash. OpenSSL is not in our library list and this is the only hash we
 * need, so a compact implementation lives here (worker/test_sha256.c checks
 * it against FIPS and hashlib vectors). Not for secrets: nothing here is
 * constant-time or wiped after use. */
#ifndef PTEL_SHA256_H
#define PTEL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32
#define SHA256_HEX_LEN    64      /* without the terminating NUL */

typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t total;               /* bytes hashed so far */
    unsigned char block[64];
    size_t used;                  /* bytes waiting in block */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t len);
/* Writes the digest; c must be initialised again before reuse. */
void sha256_final(sha256_ctx *c, unsigned char out[SHA256_DIGEST_LEN]);

/* One shot: lowercase hex of sha256(data), NUL-terminated (hashlib's hexdigest()). */
void sha256_hex(const void *data, size_t len, char out[SHA256_HEX_LEN + 1]);

#endif
