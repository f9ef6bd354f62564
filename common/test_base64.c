/* common/test_base64.c: unit tests for base64.c. Expected values come from
 * /usr/bin/python3 (3.11): base64.b64encode(v) and
 * base64.b64decode(s, validate=True), whose error names are quoted beside
 * each rejected input. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"

typedef struct b64_vector {
    const char *raw;
    size_t raw_len;
    const char *text;
} b64_vector;

static const b64_vector vectors[] = {
    {"", 0, ""},
    {"f", 1, "Zg=="},
    {"fo", 2, "Zm8="},
    {"foo", 3, "Zm9v"},
    {"foob", 4, "Zm9vYg=="},
    {"fooba", 5, "Zm9vYmE="},
    {"foobar", 6, "Zm9vYmFy"},
    {"\x00", 1, "AA=="},
    {"\x00\x00", 2, "AAA="},
    {"\xff\xfe\xfd", 3, "//79"},
    {"\xfb\xff", 2, "+/8="},
    {"\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13", 20,
     "AAECAwQFBgcICQoLDA0ODxAREhM="},
};
#define N_VECTORS (sizeof vectors / sizeof vectors[0])

START_TEST(test_base64_encode_matches_python)
{
    const b64_vector *v = &vectors[_i];
    buf out = BUF_INIT;
    base64_encode(&out, v->raw, v->raw_len);
    ck_assert_str_eq(buf_cstr(&out), v->text);
    ck_assert_ptr_nonnull(out.data);
    buf_free(&out);
}
END_TEST

START_TEST(test_base64_decode_matches_python)
{
    const b64_vector *v = &vectors[_i];
    buf out = BUF_INIT;
    ck_assert_int_eq(base64_decode(&out, v->text, strlen(v->text)), 0);
    ck_assert_uint_eq(out.len, v->raw_len);
    ck_assert_ptr_nonnull(out.data);
    ck_assert_int_eq(memcmp(out.data, v->raw, v->raw_len), 0);
    buf_free(&out);
}
END_TEST

START_TEST(test_base64_round_trips_every_byte_value_and_length)
{
    unsigned char raw[256];
    for (int i = 0; i < 256; i++) raw[i] = (unsigned char)(255 - i);
    for (size_t n = 0; n <= sizeof raw; n++) {
        buf text = BUF_INIT, back = BUF_INIT;
        base64_encode(&text, raw, n);
        ck_assert_uint_eq(text.len, (n + 2) / 3 * 4);
        ck_assert_int_eq(base64_decode(&back, text.data, text.len), 0);
        ck_assert_uint_eq(back.len, n);
        ck_assert_int_eq(memcmp(back.data, raw, n), 0);
        buf_free(&text);
        buf_free(&back);
    }
}
END_TEST

START_TEST(test_base64_encode_and_decode_append_to_existing_content)
{
    buf out = BUF_INIT;
    buf_puts(&out, "x=");
    base64_encode(&out, "foo", 3);
    ck_assert_str_eq(buf_cstr(&out), "x=Zm9v");
    ck_assert_int_eq(base64_decode(&out, "Zm8=", 4), 0);
    ck_assert_str_eq(buf_cstr(&out), "x=Zm9vfo");
    buf_free(&out);
}
END_TEST

/* Python accepts non-zero bits in the padding quantum; so do we. */
START_TEST(test_base64_decode_accepts_nonzero_pad_bits_like_python)
{
    buf out = BUF_INIT;
    ck_assert_int_eq(base64_decode(&out, "AF==", 4), 0);
    ck_assert_uint_eq(out.len, 1);
    ck_assert_int_eq(out.data[0], 0);
    buf_reset(&out);
    ck_assert_int_eq(base64_decode(&out, "ABD=", 4), 0);
    ck_assert_uint_eq(out.len, 2);
    ck_assert_int_eq(memcmp(out.data, "\x00\x10", 2), 0);
    buf_free(&out);
}
END_TEST

/* Each rejected by b64decode(validate=True); Python's reason on the right. */
static const char *const malformed[] = {
    "Zg",         /* Incorrect padding */
    "Zg=",        /* Incorrect padding */
    "Zg===",      /* Excess data after padding */
    "Z===",       /* number of data characters (1) cannot be 1 more than a multiple of 4 */
    "====",       /* Leading padding not allowed */
    "Zm9v\n",     /* Only base64 data is allowed */
    "Zm 9",       /* Only base64 data is allowed */
    "Zm9v!A==",   /* Only base64 data is allowed */
    "Zg==Zg==",   /* Excess data after padding */
    "Zm=v",       /* Discontinuous padding not allowed */
    "Zg=a",       /* Discontinuous padding not allowed */
    "-_8=",       /* Only base64 data is allowed (urlsafe alphabet) */
    "\xff\xff\xff\xff", /* string argument should contain only ASCII characters */
    "A",          /* Incorrect padding */
    "Zm9vY===",   /* number of data characters (5) cannot be 1 more than a multiple of 4 */
};
#define N_MALFORMED (sizeof malformed / sizeof malformed[0])

START_TEST(test_base64_decode_rejects_malformed_and_leaves_output_untouched)
{
    buf out = BUF_INIT;
    buf_puts(&out, "keep");
    ck_assert_int_eq(base64_decode(&out, malformed[_i], strlen(malformed[_i])), -1);
    ck_assert_str_eq(buf_cstr(&out), "keep");
    buf_free(&out);
}
END_TEST

START_TEST(test_base64_decode_rejects_embedded_nul)
{
    buf out = BUF_INIT;
    ck_assert_int_eq(base64_decode(&out, "Zm\0v", 4), -1);
    ck_assert_uint_eq(out.len, 0);
    buf_free(&out);
}
END_TEST

static Suite *base64_suite(void)
{
    Suite *s = suite_create("base64");
    TCase *tc = tcase_create("codec");
    tcase_add_loop_test(tc, test_base64_encode_matches_python, 0, N_VECTORS);
    tcase_add_loop_test(tc, test_base64_decode_matches_python, 0, N_VECTORS);
    tcase_add_test(tc, test_base64_round_trips_every_byte_value_and_length);
    tcase_add_test(tc, test_base64_encode_and_decode_append_to_existing_content);
    tcase_add_test(tc, test_base64_decode_accepts_nonzero_pad_bits_like_python);
    tcase_add_loop_test(tc, test_base64_decode_rejects_malformed_and_leaves_output_untouched,
                        0, N_MALFORMED);
    tcase_add_test(tc, test_base64_decode_rejects_embedded_nul);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(base64_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
