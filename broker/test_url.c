/* broker/test_url.c: tests for Redis URL parsing, redaction and connecting
 * (url.c). Parsing tests always run. The connect tests need a redis-server
 * binary and run only when PTEL_TEST_REDIS_URL is set; they then start their
 * own private server (port 7000-7099, temp dir, --requirepass, an ACL user,
 * a unix socket) and stop it at the end. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "broker/url.h"

/* ---- Parsing ---------------------------------------------------------------- */

typedef struct good_case {
    const char *url;
    redis_url_kind kind;
    const char *host, *path, *user, *pass;
    int port, db;
    const char *redacted;
} good_case;

static const good_case good[] = {
    {"redis://localhost:6379/0", REDIS_URL_TCP, "localhost", NULL, NULL, NULL, 6379, 0, "redis://localhost:6379/0"},
    {"redis://127.0.0.1", REDIS_URL_TCP, "127.0.0.1", NULL, NULL, NULL, 6379, 0, "redis://127.0.0.1:6379/0"},
    {"redis://", REDIS_URL_TCP, "localhost", NULL, NULL, NULL, 6379, 0, "redis://localhost:6379/0"},
    {"redis://h:7001/3", REDIS_URL_TCP, "h", NULL, NULL, NULL, 7001, 3, "redis://h:7001/3"},
    {"redis://h/", REDIS_URL_TCP, "h", NULL, NULL, NULL, 6379, 0, "redis://h:6379/0"},
    {"redis://:s3cret@h:6380/1", REDIS_URL_TCP, "h", NULL, NULL, "s3cret", 6380, 1, "redis://:***@h:6380/1"},
    {"redis://alice:p%40ss%3Aw0rd@h/2", REDIS_URL_TCP, "h", NULL, "alice", "p@ss:w0rd", 6379, 2,
     "redis://alice:***@h:6379/2"},
    {"redis://us%20er:pw@h", REDIS_URL_TCP, "h", NULL, "us er", "pw", 6379, 0, "redis://us%20er:***@h:6379/0"},
    {"redis://bob@h", REDIS_URL_TCP, "h", NULL, "bob", NULL, 6379, 0, "redis://bob@h:6379/0"},
    {"redis://a:b@c@h:1/0", REDIS_URL_TCP, "h", NULL, "a", "b@c", 1, 0, "redis://a:***@h:1/0"},
    {"redis://[::1]:7000/4", REDIS_URL_TCP, "::1", NULL, NULL, NULL, 7000, 4, "redis://[::1]:7000/4"},
    {"redis://[::1]", REDIS_URL_TCP, "::1", NULL, NULL, NULL, 6379, 0, "redis://[::1]:6379/0"},
    {"REDIS://h:1", REDIS_URL_TCP, "h", NULL, NULL, NULL, 1, 0, "redis://h:1/0"},
    {"redis://h/1?db=5", REDIS_URL_TCP, "h", NULL, NULL, NULL, 6379, 5, "redis://h:6379/5"},
    {"redis://h?password=x%2By+z", REDIS_URL_TCP, "h", NULL, NULL, "x+y z", 6379, 0, "redis://:***@h:6379/0"},
    {"redis://h?socket_timeout=5&db=2", REDIS_URL_TCP, "h", NULL, NULL, NULL, 6379, 2, "redis://h:6379/2"},
    {"unix:///run/redis.sock", REDIS_URL_UNIX, NULL, "/run/redis.sock", NULL, NULL, 0, 0,
     "unix:///run/redis.sock?db=0"},
    {"unix:///tmp/r.sock?db=3&password=pw", REDIS_URL_UNIX, NULL, "/tmp/r.sock", NULL, "pw", 0, 3,
     "unix://:***@/tmp/r.sock?db=3"},
    {"unix://u:pw@/tmp/r.sock", REDIS_URL_UNIX, NULL, "/tmp/r.sock", "u", "pw", 0, 0, "unix://u:***@/tmp/r.sock?db=0"},
    {"redis+socket:///var/run/redis/redis.sock?db=7", REDIS_URL_UNIX, NULL, "/var/run/redis/redis.sock", NULL, NULL,
     0, 7, "unix:///var/run/redis/redis.sock?db=7"},
    {"socket:///a%20b.sock?virtual_host=2", REDIS_URL_UNIX, NULL, "/a b.sock", NULL, NULL, 0, 2,
     "unix:///a b.sock?db=2"},
};

static void assert_opt_str(const char *got, const char *want, const char *what, const char *url) {
    if (!want) ck_assert_msg(got == NULL, "%s: %s should be absent, got '%s'", url, what, got);
    else ck_assert_msg(got && strcmp(got, want) == 0, "%s: %s '%s' want '%s'", url, what, got ? got : "(null)", want);
}

START_TEST(test_url_parse_accepts_supported_forms)
{
    const good_case *c = &good[_i];
    redis_url u;
    char err[256] = "";
    ck_assert_msg(redis_url_parse(c->url, &u, err, sizeof(err)) == 0, "%s: %s", c->url, err);
    ck_assert_int_eq(u.kind, c->kind);
    assert_opt_str(u.host, c->host, "host", c->url);
    assert_opt_str(u.path, c->path, "path", c->url);
    assert_opt_str(u.username, c->user, "username", c->url);
    assert_opt_str(u.password, c->pass, "password", c->url);
    if (c->kind == REDIS_URL_TCP) ck_assert_int_eq(u.port, c->port);
    ck_assert_int_eq(u.db, c->db);
    char *red = redis_url_redacted(&u);
    ck_assert_str_eq(red, c->redacted);
    free(red);
    redis_url_free(&u);
    ck_assert_ptr_null(u.password);
}
END_TEST

typedef struct bad_case {
    const char *url;
    const char *msg_part;
} bad_case;

static const bad_case bad[] = {
    {"", "empty"},
    {"localhost:6379", "not a URL"},
    {"amqp://guest:hunter2@rabbit//", "unsupported scheme 'amqp'"},
    {"rediss://:hunter2@h:6380/0", "TLS (rediss://) is not supported"},
    {"sentinel://h:26379", "unsupported scheme 'sentinel'"},
    {"redis://:hunter2@h:0/0", "bad port '0'"},
    {"redis://:hunter2@h:65536/0", "bad port"},
    {"redis://:hunter2@h:abc/0", "bad port 'abc'"},
    {"redis://:hunter2@h:/0", "bad port"},
    {"redis://:hunter2@h:-1/0", "bad port"},
    {"redis://:hunter2@h/x", "db 'x' is not a number"},
    {"redis://:hunter2@h/-1", "is not a number"},
    {"redis://:hunter2@h/1/2", "is not a number"},
    {"redis://:hunter2@h/99999999", "is not a number"},
    {"redis://:hunter2@h?db=two", "db 'two' is not a number"},
    {"redis://:hunter2@h?bd=3", "unknown query parameter 'bd'"},
    {"redis://:hunter2%zz@h", "bad percent-encoding in the password"},
    {"redis://us%4@h", "bad percent-encoding in the user name"},
    {"redis://:hunter2@::1:6379", "IPv6 address needs [brackets]"},
    {"redis://:hunter2@[::1:6379", "unterminated IPv6"},
    {"redis://:hunter2@[::1]x", "unexpected text after IPv6"},
    {"redis://:hunter2@h#frag", "fragments"},
    {"unix://host/tmp/r.sock", "has no host"},
    {"unix://", "missing socket path"},
    {"unix:///", "missing socket path"},
    {"unix:///tmp/r%g.sock", "bad percent-encoding in the socket path"},
    {"unix:///tmp/r.sock?password=hunter2%", "bad percent-encoding in the password parameter"},
};

START_TEST(test_url_parse_refuses_with_reason)
{
    const bad_case *c = &bad[_i];
    redis_url u;
    char err[256] = "";
    ck_assert_msg(redis_url_parse(c->url, &u, err, sizeof(err)) == -1, "%s parsed", c->url);
    ck_assert_msg(strstr(err, c->msg_part) != NULL, "%s: error '%s' lacks '%s'", c->url, err, c->msg_part);
    ck_assert_msg(strstr(err, "hunter2") == NULL, "%s: password leaked into '%s'", c->url, err);
    ck_assert_ptr_null(u.host);
    ck_assert_ptr_null(u.password);
}
END_TEST

START_TEST(test_url_parse_refuses_overlong_url)
{
    char *big = malloc(REDIS_URL_MAX_LEN + 20);
    strcpy(big, "redis://h/");
    memset(big + 10, '1', REDIS_URL_MAX_LEN);
    big[REDIS_URL_MAX_LEN + 10] = '\0';
    redis_url u;
    char err[128];
    ck_assert_int_eq(redis_url_parse(big, &u, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "longer than"));
    ck_assert_int_eq(redis_url_parse(NULL, &u, err, sizeof(err)), -1);
    free(big);
}
END_TEST

/* ---- Connecting (real redis-server) --------------------------------------------- */

static int srv_port;
static char srv_dir[64];
static char srv_sock[128];

static int port_free(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static redisContext *connect_url(const char *url, char *err, size_t n) {
    redis_url u;
    if (redis_url_parse(url, &u, err, n) != 0) return NULL;
    redisContext *c = redis_url_connect(&u, 2.0, err, n);
    redis_url_free(&u);
    return c;
}

static void server_start(void) {
    strcpy(srv_dir, "/tmp/ptel-url-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(srv_dir));
    snprintf(srv_sock, sizeof(srv_sock), "%s/redis.sock", srv_dir);
    srv_port = 0;
    for (int p = 7000 + (getpid() % 50); p < 7100; p++)
        if (port_free(p)) { srv_port = p; break; }
    ck_assert_int_ne(srv_port, 0);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir %s "
             "--pidfile %s/redis.pid --unixsocket %s --requirepass 'pw s3cret' >/dev/null",
             srv_port, srv_dir, srv_dir, srv_sock);
    ck_assert_int_eq(system(cmd), 0);
    char err[256], url[128];
    snprintf(url, sizeof(url), "redis://:pw%%20s3cret@127.0.0.1:%d/0", srv_port);
    redisContext *c = NULL;
    for (int i = 0; i < 50 && !c; i++) {
        c = connect_url(url, err, sizeof(err));
        if (!c) usleep(100000);
    }
    ck_assert_msg(c != NULL, "redis-server did not come up: %s", err);
    redisReply *r = redisCommand(c, "ACL SETUSER alice on >alice-pw ~* &* +@all");
    ck_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(c);
}

static void server_stop(void) {
    char path[128];
    snprintf(path, sizeof(path), "%s/redis.pid", srv_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        long pid = 0;
        if (fscanf(f, "%ld", &pid) == 1 && pid > 1) kill((pid_t)pid, SIGTERM);
        fclose(f);
    }
    usleep(200000);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", srv_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", srv_dir);
}

static long long client_db(redisContext *c) {
    redisReply *r = redisCommand(c, "CLIENT INFO");
    ck_assert(r && r->type == REDIS_REPLY_STRING);
    const char *db = strstr(r->str, " db=");
    ck_assert_ptr_nonnull(db);
    long long v = atoll(db + 4);
    freeReplyObject(r);
    return v;
}

START_TEST(test_url_connect_auth_and_select)
{
    char url[256], err[256];
    /* password only -> AUTH pass; db 5 -> SELECT 5 */
    snprintf(url, sizeof(url), "redis://:pw%%20s3cret@127.0.0.1:%d/5", srv_port);
    redisContext *c = connect_url(url, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_int_eq(client_db(c), 5);
    redisFree(c);
    /* ACL user -> AUTH user pass */
    snprintf(url, sizeof(url), "redis://alice:alice-pw@127.0.0.1:%d", srv_port);
    c = connect_url(url, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    redisReply *r = redisCommand(c, "ACL WHOAMI");
    ck_assert_str_eq(r->str, "alice");
    freeReplyObject(r);
    ck_assert_int_eq(client_db(c), 0);
    redisFree(c);
    /* unix socket with password in the query */
    snprintf(url, sizeof(url), "unix://%s?db=2&password=pw+s3cret", srv_sock);
    c = connect_url(url, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_int_eq(client_db(c), 2);
    redisFree(c);
}
END_TEST

START_TEST(test_url_connect_errors_never_show_password)
{
    char url[256], err[256];
    snprintf(url, sizeof(url), "redis://:wrong-hunter2@127.0.0.1:%d/0", srv_port);
    ck_assert_ptr_null(connect_url(url, err, sizeof(err)));
    ck_assert_msg(strstr(err, "authentication at 127.0.0.1:") && strstr(err, "WRONGPASS"), "'%s'", err);
    ck_assert_ptr_null(strstr(err, "hunter2"));

    snprintf(url, sizeof(url), "redis://alice:hunter2@127.0.0.1:%d/0", srv_port);
    ck_assert_ptr_null(connect_url(url, err, sizeof(err)));
    ck_assert_msg(strstr(err, "user 'alice'"), "'%s'", err);
    ck_assert_ptr_null(strstr(err, "hunter2"));

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/1", srv_port);   /* no AUTH: SELECT is refused */
    ck_assert_ptr_null(connect_url(url, err, sizeof(err)));
    ck_assert_msg(strstr(err, "SELECT 1") && strstr(err, "NOAUTH"), "'%s'", err);

    snprintf(url, sizeof(url), "redis://:pw%%20s3cret@127.0.0.1:%d/999", srv_port);
    ck_assert_ptr_null(connect_url(url, err, sizeof(err)));
    ck_assert_msg(strstr(err, "SELECT 999"), "'%s'", err);

    int dead = srv_port + 1;
    while (!port_free(dead)) dead++;
    snprintf(url, sizeof(url), "redis://:hunter2@127.0.0.1:%d/0", dead);
    ck_assert_ptr_null(connect_url(url, err, sizeof(err)));
    ck_assert_msg(strstr(err, "cannot connect to Redis at 127.0.0.1:"), "'%s'", err);
    ck_assert_ptr_null(strstr(err, "hunter2"));

    ck_assert_ptr_null(connect_url("unix:///nonexistent/ptel.sock?password=hunter2", err, sizeof(err)));
    ck_assert_msg(strstr(err, "/nonexistent/ptel.sock"), "'%s'", err);
    ck_assert_ptr_null(strstr(err, "hunter2"));
}
END_TEST

static Suite *url_suite(int with_server) {
    Suite *s = suite_create("url");
    TCase *tc = tcase_create("parse");
    tcase_add_loop_test(tc, test_url_parse_accepts_supported_forms, 0, (int)(sizeof(good) / sizeof(good[0])));
    tcase_add_loop_test(tc, test_url_parse_refuses_with_reason, 0, (int)(sizeof(bad) / sizeof(bad[0])));
    tcase_add_test(tc, test_url_parse_refuses_overlong_url);
    suite_add_tcase(s, tc);
    if (with_server) {
        tc = tcase_create("connect");
        tcase_add_unchecked_fixture(tc, server_start, server_stop);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_url_connect_auth_and_select);
        tcase_add_test(tc, test_url_connect_errors_never_show_password);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void) {
    int with_server = getenv("PTEL_TEST_REDIS_URL") != NULL;
    if (!with_server) fprintf(stderr, "PTEL_TEST_REDIS_URL unset: skipping the connect tests\n");
    SRunner *sr = srunner_create(url_suite(with_server));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
