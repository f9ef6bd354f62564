/* clickhouse/ch_internal.h: what the files of clickhouse/ share with each
 * other and with their tests, but not with the rest of the worker.
 *
 * client.c owns the request and the error model; schema.c and encode.c build
 * SQL and bodies and hand them to ch_request(). */
#ifndef PTEL_CH_INTERNAL_H
#define PTEL_CH_INTERNAL_H

#include <stddef.h>

#include "clickhouse/clickhouse.h"

/* ch_request flags. */
#define CH_REQ_NO_DATABASE 1   /* omit ?database= (CREATE DATABASE must run before it exists) */
#define CH_REQ_WAIT_END    2   /* wait_end_of_query=1: errors mid-result keep their status */

/* One HTTP POST. `query` (may be NULL) goes into the URL as ?query=, the
 * body as the request body (gzipped above the client's threshold); `params`
 * (may be NULL) are extra URL parameters "name=value&name=value", already
 * URL-safe. The response body is appended to out (may be NULL). */
int ch_request(ch_client *c, int flags, const char *query, const char *params,
               const char *body, size_t body_len, buf *out, ch_error *err);

/* Fill err; msg is printf-formatted and truncated to fit. */
void ch_error_set(ch_error *err, int code, long http_status, int transient,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Classification of a server-side failure (CONTRACT-free, DESIGN §3):
 * 1 transient, 0 permanent. Known codes decide; an unknown code (or none)
 * falls back to the HTTP status: 5xx transient, anything else permanent. */
int ch_classify(int code, long http_status);

/* Build the error for a non-200 response. header_code is the
 * X-ClickHouse-Exception-Code header (0 when absent); otherwise the code is
 * parsed from "Code: N" in the body. */
void ch_error_from_response(ch_error *err, long http_status, int header_code,
                            const char *body, size_t len);

/* The same for an exception text that came without HTTP (the chdb://
 * backend): the code is parsed from "Code: N", an unknown code is permanent,
 * and msg starts with origin ("chDB"). */
void ch_error_from_exception(ch_error *err, const char *origin, const char *text, size_t len);

/* Replace every occurrence of secret in msg (capacity cap) by "***",
 * cutting the message where there is no room to widen it. */
void ch_scrub_secret(char *msg, size_t cap, const char *secret);

/* 1 when s is a safe table identifier: [A-Za-z_][A-Za-z0-9_]*, optionally
 * with one "db." prefix, at most CH_IDENT_MAX bytes. */
int ch_ident_valid(const char *s);

/* 1 when a URL's "host:port" (or "[v6]:port") names this machine:
 * "localhost", 127.0.0.0/8 in dotted quad form, or [::1]. */
int ch_host_is_loopback(const char *hostport);

/* gzip (RFC 1952) of data into out (appended). 0, or -1 on a zlib failure. */
int ch_gzip(const char *data, size_t len, buf *out);

#endif
