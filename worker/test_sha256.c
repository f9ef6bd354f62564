/* worker/test_sha256.c: Check tests for worker/sha256.c.
 *
 * Expected digests: FIPS 180-4 examples ("abc", the 448-bit message, a
 * million 'a') and /usr/bin/python3's hashlib.sha256(...).hexdigest() for
 * the padding edges (lengths around 56 and 64 bytes) and an org id. */
#include "worker/sha256.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static void hex_of(const unsigned char *d, char out[SHA256_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < SHA256_DIGEST_LEN; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[SHA256_HEX_LEN] = '\0';
}

START_TEST(test_sha256_fips_examples)
{
    char out[SHA256_HEX_LEN + 1];
    sha256_hex("", 0, out);
    ck_assert_str_eq(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, out);
    ck_assert_str_eq(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m, strlen(m), out);
    ck_assert_str_eq(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}
END_TEST

START_TEST(test_sha256_million_a_in_uneven_chunks)
{
    char chunk[997];
    memset(chunk, 'a', sizeof chunk);
    sha256_ctx c;
    sha256_init(&c);
    size_t left = 1000000;
    while (left) {
        size_t n = left < sizeof chunk ? left : sizeof chunk;
        sha256_update(&c, chunk, n);
        left -= n;
    }
    unsigned char d[SHA256_DIGEST_LEN];
    char out[SHA256_HEX_LEN + 1];
    sha256_final(&c, d);
    hex_of(d, out);
    ck_assert_str_eq(out, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
END_TEST

/* hashlib.sha256(bytes(i % 251 for i in range(n))).hexdigest() */
static const struct { size_t len; const char *hex; } edges[] = {
    {55, "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59"},
    {56, "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562"},
    {63, "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488"},
    {64, "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108"},
    {65, "4bfd2c8b6f1eec7a2afeb48b934ee4b2694182027e6d0fc075074f2fabb31781"},
    {119, "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6"},
    {120, "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c"},
    {128, "471fb943aa23c511f6f72f8d1652d9c880cfa392ad80503120547703e56a2be5"},
};

START_TEST(test_sha256_padding_edges_one_shot_and_bytewise)
{
    unsigned char msg[128];
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (unsigned char)(i % 251);
    char out[SHA256_HEX_LEN + 1];
    sha256_hex(msg, edges[_i].len, out);
    ck_assert_str_eq(out, edges[_i].hex);

    sha256_ctx c;
    sha256_init(&c);
    for (size_t i = 0; i < edges[_i].len; i++) sha256_update(&c, msg + i, 1);
    unsigned char d[SHA256_DIGEST_LEN];
    sha256_final(&c, d);
    hex_of(d, out);
    ck_assert_str_eq(out, edges[_i].hex);
}
END_TEST

START_TEST(test_sha256_org_id_matches_the_platform_hash)
{
    /* The platform's OrgHash("org-1") (hashlib.sha256(b"org-1").hexdigest()). */
    char out[SHA256_HEX_LEN + 1];
    sha256_hex("org-1", 5, out);
    ck_assert_str_eq(out, "c24787a75cb363e4bc33871cff23a407c2dc0db631898c35b4604a833bfab5f8");
}
END_TEST

static Suite *sha256_suite(void)
{
    Suite *s = suite_create("sha256");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_sha256_fips_examples);
    tcase_add_test(tc, test_sha256_million_a_in_uneven_chunks);
    tcase_add_loop_test(tc, test_sha256_padding_edges_one_shot_and_bytewise, 0,
                        (int)(sizeof edges / sizeof edges[0]));
    tcase_add_test(tc, test_sha256_org_id_matches_the_platform_hash);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sha256_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
