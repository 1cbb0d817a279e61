/*
 * test_proto.c — router/proto.c, the wire-protocol codec: buffer growth and
 * compaction, every builder checked byte for byte against messages written
 * out by hand here, the reader's bounds, framing with pgs_msg_peek, the set
 * of frontend message types, the startup packet in all its kinds and
 * malformations, ErrorResponse parsing, and the readers of Parse, Bind,
 * Describe, Close and Execute: well-formed messages from the builders,
 * every truncation and a byte too many (each read from a heap block of its
 * exact size, so the sanitizer build catches a read outside it), counts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/proto.h"

#include "messages.h"

/* A string literal with embedded NULs, and its length without the NUL the
 * compiler adds. */
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1)

/* The message at BUF->data + *OFFSET must be TYPE with exactly BODY; moves
 * *OFFSET past it. The length field is checked against BODY's size, which is
 * counted here, not taken from the code under test. */
static void expect_message(const pgs_buf_t *buf, size_t *offset, char type, const uint8_t *body,
                           size_t body_len) {
  assert_true(buf->len >= *offset + 5 + body_len);
  const uint8_t *m = buf->data + *offset;
  assert_int_equal(m[0], (uint8_t)type);
  assert_int_equal(pgs_get_u32(m + 1), body_len + 4);
  assert_memory_equal(m + 5, body, body_len);
  *offset += 5 + body_len;
}

/* BUF must hold exactly one message: TYPE with BODY. */
static void expect_only_message(const pgs_buf_t *buf, char type, const uint8_t *body,
                                size_t body_len) {
  size_t offset = 0;
  expect_message(buf, &offset, type, body, body_len);
  assert_int_equal(buf->len, offset);
}

/* ---- pgs_buf_t ---- */

static void test_buf_growth(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  assert_null(buf.data);
  assert_int_equal(buf.len, 0);
  assert_int_equal(buf.cap, 0);

  /* Nothing to add allocates nothing. */
  pgs_buf_put(&buf, "x", 0);
  pgs_buf_reserve(&buf, 0);
  assert_null(buf.data);

  /* The first allocation is 256 bytes, then the capacity doubles. */
  pgs_buf_put_u8(&buf, 0xab);
  assert_int_equal(buf.len, 1);
  assert_int_equal(buf.cap, 256);
  uint8_t block[1000];
  for (size_t i = 0; i < sizeof(block); i++) block[i] = (uint8_t)(i * 7);
  pgs_buf_put(&buf, block, sizeof(block));
  assert_int_equal(buf.len, 1001);
  assert_int_equal(buf.cap, 1024);
  pgs_buf_put(&buf, block, 24);
  assert_int_equal(buf.cap, 2048);
  assert_int_equal(buf.data[0], 0xab);
  assert_memory_equal(buf.data + 1, block, sizeof(block));
  assert_memory_equal(buf.data + 1001, block, 24);

  /* reserve leaves the held bytes alone and only grows when it must. */
  pgs_buf_reserve(&buf, 2048 - 1025);
  assert_int_equal(buf.cap, 2048);
  pgs_buf_reserve(&buf, 2048 - 1024);
  assert_int_equal(buf.cap, 4096);
  assert_int_equal(buf.len, 1025);
  assert_memory_equal(buf.data + 1, block, sizeof(block));

  pgs_buf_free(&buf);
  assert_null(buf.data);
  assert_int_equal(buf.len, 0);
  assert_int_equal(buf.cap, 0);
  pgs_buf_free(&buf); /* twice is harmless */

  /* A large first reservation goes straight to a big enough power of two. */
  pgs_buf_reserve(&buf, 100000);
  assert_int_equal(buf.cap, 131072);
  assert_int_equal(buf.len, 0);
  pgs_buf_free(&buf);
}

static void test_buf_integers_are_big_endian(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_buf_put_i16(&buf, 0x1234);
  pgs_buf_put_i16(&buf, -2);
  pgs_buf_put_i32(&buf, 0x01020304);
  pgs_buf_put_i32(&buf, -1);
  pgs_buf_put_i32(&buf, INT32_MIN);
  pgs_buf_put_cstr(&buf, "ab");
  pgs_buf_put_cstr(&buf, "");
  static const uint8_t want[] = {0x12, 0x34, 0xff, 0xfe, 1, 2, 3,   4,   0xff, 0xff,
                                 0xff, 0xff, 0x80, 0,    0, 0, 'a', 'b', 0,    0};
  assert_int_equal(buf.len, sizeof(want));
  assert_memory_equal(buf.data, want, sizeof(want));

  uint8_t b[4];
  pgs_set_u32(b, 0xdeadbeef);
  assert_int_equal(b[0], 0xde);
  assert_int_equal(b[3], 0xef);
  assert_int_equal(pgs_get_u32(b), 0xdeadbeef);
  pgs_buf_free(&buf);
}

static void test_buf_consume(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_buf_put(&buf, "0123456789", 10);
  size_t cap = buf.cap;

  pgs_buf_consume(&buf, 0);
  assert_int_equal(buf.len, 10);
  assert_memory_equal(buf.data, "0123456789", 10);

  pgs_buf_consume(&buf, 3);
  assert_int_equal(buf.len, 7);
  assert_memory_equal(buf.data, "3456789", 7);

  /* Appending after a consume continues where the held bytes end. */
  pgs_buf_put(&buf, "ab", 2);
  assert_memory_equal(buf.data, "3456789ab", 9);

  pgs_buf_consume(&buf, 9);
  assert_int_equal(buf.len, 0);
  assert_int_equal(buf.cap, cap); /* the memory is kept for reuse */
  pgs_buf_put(&buf, "z", 1);
  assert_memory_equal(buf.data, "z", 1);
  pgs_buf_free(&buf);
}

/* ---- builders ---- */

static void test_msg_error(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_msg_error(&buf, "FATAL", PGS_SQLSTATE_PROTOCOL_VIOLATION, "the detail", "bad %s #%d", "thing",
                7);
  expect_only_message(&buf, 'E',
                      LIT("SFATAL\0"
                          "VFATAL\0"
                          "C08P01\0"
                          "Mpgshard: bad thing #7\0"
                          "Dthe detail\0"
                          "\0"));
  pgs_buf_free(&buf);

  /* No detail, NULL or empty: no D field at all. */
  pgs_msg_error(&buf, "ERROR", PGS_SQLSTATE_INTERNAL, NULL, "plain");
  pgs_msg_error(&buf, "ERROR", PGS_SQLSTATE_INTERNAL, "", "%s", "empty detail");
  size_t offset = 0;
  expect_message(&buf, &offset, 'E', LIT("SERROR\0VERROR\0CXX000\0Mpgshard: plain\0\0"));
  expect_message(&buf, &offset, 'E', LIT("SERROR\0VERROR\0CXX000\0Mpgshard: empty detail\0\0"));
  assert_int_equal(offset, buf.len);
  pgs_buf_free(&buf);

  /* The raw builder adds no prefix. */
  pgs_msg_error_raw(&buf, "ERROR", "42601", "syntax error at end of input", "d");
  expect_only_message(&buf, 'E',
                      LIT("SERROR\0VERROR\0C42601\0Msyntax error at end of input\0Dd\0\0"));
  pgs_buf_free(&buf);

  /* A message longer than the 1024-byte format buffer is cut, not overrun,
   * and the message stays well-formed. */
  char longtext[3000];
  memset(longtext, 'x', sizeof(longtext) - 1);
  longtext[sizeof(longtext) - 1] = '\0';
  pgs_msg_error(&buf, "ERROR", PGS_SQLSTATE_INTERNAL, NULL, "%s", longtext);
  pgs_error_fields_t f;
  pgs_error_parse(buf.data + 5, buf.len - 5, &f);
  assert_int_equal(strlen(f.message), 1023);
  assert_int_equal(strncmp(f.message, "pgshard: xxx", 12), 0);
  assert_int_equal(pgs_get_u32(buf.data + 1), buf.len - 1);
  pgs_buf_free(&buf);
}

static void test_msg_auth(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  static const uint8_t salt[4] = {0xde, 0xad, 0x00, 0xef};
  pgs_msg_auth(&buf, PGS_AUTHREQ_OK, NULL, 0);
  pgs_msg_auth(&buf, PGS_AUTHREQ_CLEARTEXT, NULL, 0);
  pgs_msg_auth(&buf, PGS_AUTHREQ_MD5, salt, sizeof(salt));
  pgs_msg_auth(&buf, PGS_AUTHREQ_SASL, "SCRAM-SHA-256\0", 15);
  pgs_msg_auth(&buf, PGS_AUTHREQ_SASL_CONTINUE, "r=abc,s=c2FsdA==,i=4096", 23);
  pgs_msg_auth(&buf, PGS_AUTHREQ_SASL_FINAL, "v=xyz", 5);
  size_t offset = 0;
  expect_message(&buf, &offset, 'R', LIT("\0\0\0\0"));
  expect_message(&buf, &offset, 'R', LIT("\0\0\0\x03"));
  expect_message(&buf, &offset, 'R', LIT("\0\0\0\x05\xde\xad\x00\xef"));
  expect_message(&buf, &offset, 'R', LIT("\0\0\0\x0aSCRAM-SHA-256\0\0"));
  expect_message(&buf, &offset, 'R', LIT("\0\0\0\x0br=abc,s=c2FsdA==,i=4096"));
  expect_message(&buf, &offset, 'R', LIT("\0\0\0\x0cv=xyz"));
  assert_int_equal(offset, buf.len);
  pgs_buf_free(&buf);
}

static void test_msg_small_builders(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_msg_parameter_status(&buf, "server_version", "15.1");
  pgs_msg_parameter_status(&buf, "application_name", "");
  pgs_msg_backend_key(&buf, 12345, -2);
  pgs_msg_backend_key(&buf, INT32_MAX, INT32_MIN);
  pgs_msg_ready(&buf, 'I');
  pgs_msg_ready(&buf, 'T');
  pgs_msg_ready(&buf, 'E');
  pgs_msg_empty(&buf, '1'); /* ParseComplete */
  pgs_msg_empty(&buf, '2'); /* BindComplete */
  pgs_msg_empty(&buf, '3'); /* CloseComplete */
  pgs_msg_empty(&buf, 'n'); /* NoData */
  pgs_msg_empty(&buf, 'I'); /* EmptyQueryResponse */
  pgs_msg_query(&buf, "SELECT 1");
  pgs_msg_query(&buf, "");

  size_t offset = 0;
  expect_message(&buf, &offset, 'S',
                 LIT("server_version\0"
                     "15.1\0"));
  expect_message(&buf, &offset, 'S', LIT("application_name\0\0"));
  expect_message(&buf, &offset, 'K', LIT("\x00\x00\x30\x39\xff\xff\xff\xfe"));
  expect_message(&buf, &offset, 'K', LIT("\x7f\xff\xff\xff\x80\x00\x00\x00"));
  expect_message(&buf, &offset, 'Z', LIT("I"));
  expect_message(&buf, &offset, 'Z', LIT("T"));
  expect_message(&buf, &offset, 'Z', LIT("E"));
  for (const char *t = "123nI"; *t; t++) expect_message(&buf, &offset, *t, LIT(""));
  expect_message(&buf, &offset, 'Q', LIT("SELECT 1\0"));
  expect_message(&buf, &offset, 'Q', LIT("\0"));
  assert_int_equal(offset, buf.len);

  /* The same bytes, spelled out whole for two of them. */
  pgs_buf_free(&buf);
  pgs_msg_ready(&buf, 'I');
  pgs_msg_empty(&buf, '1');
  pgs_msg_query(&buf, "x");
  static const uint8_t whole[] = {'Z', 0, 0, 0, 5, 'I', '1', 0, 0, 0, 4, 'Q', 0, 0, 0, 6, 'x', 0};
  assert_int_equal(buf.len, sizeof(whole));
  assert_memory_equal(buf.data, whole, sizeof(whole));
  pgs_buf_free(&buf);
}

/* pgs_msg_begin/end compose a message of any shape, appended after others. */
static void test_msg_begin_end(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_buf_put(&buf, "junk", 4);
  size_t start = pgs_msg_begin(&buf, 'D');
  assert_int_equal(start, 5);
  pgs_buf_put_i16(&buf, 1);
  pgs_buf_put_i32(&buf, 3);
  pgs_buf_put(&buf, "abc", 3);
  pgs_msg_end(&buf, start);
  size_t offset = 4;
  expect_message(&buf, &offset, 'D',
                 LIT("\0\x01\0\0\0\x03"
                     "abc"));
  assert_int_equal(offset, buf.len);
  pgs_buf_free(&buf);
}

/* ---- reader ---- */

static void test_reader(void **state) {
  static const uint8_t data[] = {0x01, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x01,
                                 'h',  'i',  0,    0,    'x',  'y'};
  pgs_reader_t r;
  pgs_reader_init(&r, data, sizeof(data));
  assert_int_equal(pgs_reader_left(&r), sizeof(data));
  assert_int_equal(pgs_read_u8(&r), 1);
  assert_int_equal(pgs_read_i16(&r), -2);
  assert_int_equal(pgs_read_i32(&r), (int32_t)0x80000001u);
  size_t len = 99;
  const char *s = pgs_read_cstr(&r, &len);
  assert_string_equal(s, "hi");
  assert_int_equal(len, 2);
  assert_ptr_equal(s, data + 7);
  s = pgs_read_cstr(&r, NULL); /* the empty string */
  assert_string_equal(s, "");
  assert_int_equal(pgs_reader_left(&r), 2);
  const uint8_t *b = pgs_read_bytes(&r, 2);
  assert_ptr_equal(b, data + 11);
  assert_int_equal(pgs_reader_left(&r), 0);
  assert_false(r.bad);
  /* Zero bytes at the end are still in bounds. */
  assert_non_null(pgs_read_bytes(&r, 0));
  assert_false(r.bad);
  assert_int_equal(pgs_read_u8(&r), 0);
  assert_true(r.bad);
}

static void test_reader_past_end(void **state) {
  static const uint8_t data[] = {0x7f, 0x7f, 0x7f};
  pgs_reader_t r;

  pgs_reader_init(&r, data, sizeof(data));
  assert_int_equal(pgs_read_i32(&r), 0);
  assert_true(r.bad);
  assert_int_equal(pgs_reader_left(&r), 3); /* a failed read moves nothing */
  /* bad is sticky: later reads fail even where bytes remain. */
  assert_int_equal(pgs_read_u8(&r), 0);
  assert_int_equal(pgs_read_i16(&r), 0);
  assert_null(pgs_read_bytes(&r, 1));
  assert_null(pgs_read_cstr(&r, NULL));
  assert_true(r.bad);

  pgs_reader_init(&r, data, 1);
  assert_int_equal(pgs_read_i16(&r), 0);
  assert_true(r.bad);

  pgs_reader_init(&r, data, 2);
  assert_int_equal(pgs_read_i16(&r), 0x7f7f);
  assert_int_equal(pgs_read_u8(&r), 0);
  assert_true(r.bad);

  pgs_reader_init(&r, data, sizeof(data));
  assert_null(pgs_read_bytes(&r, 4));
  assert_true(r.bad);
  pgs_reader_init(&r, data, sizeof(data));
  assert_null(pgs_read_bytes(&r, SIZE_MAX));
  assert_true(r.bad);

  /* A string without its NUL inside the bounds, even when one follows. */
  static const char text[] = "abc";
  pgs_reader_init(&r, text, 3);
  size_t len = 42;
  assert_null(pgs_read_cstr(&r, &len));
  assert_true(r.bad);
  assert_int_equal(len, 42);
  assert_int_equal(pgs_reader_left(&r), 3);

  /* Nothing at all. */
  pgs_reader_init(&r, data, 0);
  assert_null(pgs_read_cstr(&r, NULL));
  assert_true(r.bad);
  pgs_reader_init(&r, data, 0);
  assert_int_equal(pgs_read_u8(&r), 0);
  assert_true(r.bad);
}

/* ---- framing ---- */

static void test_msg_peek(void **state) {
  uint8_t m[16] = {'Q', 0, 0, 0, 13};
  char type = 0;
  size_t total = 0;

  for (size_t avail = 0; avail < 5; avail++)
    assert_int_equal(pgs_msg_peek(m, avail, 1024, &type, &total), PGS_EAGAIN);

  /* OK as soon as the header is there; the body may still be on its way. */
  assert_int_equal(pgs_msg_peek(m, 5, 1024, &type, &total), PGS_OK);
  assert_int_equal(type, 'Q');
  assert_int_equal(total, 14);

  /* The smallest message: a length of 4, no body. */
  pgs_set_u32(m + 1, 4);
  m[0] = 'S';
  assert_int_equal(pgs_msg_peek(m, 5, 1024, &type, &total), PGS_OK);
  assert_int_equal(type, 'S');
  assert_int_equal(total, 5);

  static const uint32_t bad_lengths[] = {0, 1, 3, 0x80000000u, 0x80000004u, 0xffffffffu};
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad_lengths); i++) {
    pgs_set_u32(m + 1, bad_lengths[i]);
    total = 77;
    assert_int_equal(pgs_msg_peek(m, 5, SIZE_MAX, &type, &total), PGS_EPROTO);
    assert_int_equal(total, 77);
  }

  /* The largest length that is not negative as an int32. */
  pgs_set_u32(m + 1, 0x7fffffffu);
  assert_int_equal(pgs_msg_peek(m, 5, SIZE_MAX, &type, &total), PGS_OK);
  assert_int_equal(total, 0x80000000u);
  assert_int_equal(pgs_msg_peek(m, 5, 0x7fffffffu, &type, &total), PGS_ETOOBIG);

  /* MAX bounds the whole message: type byte, length and body. */
  pgs_set_u32(m + 1, 1023);
  assert_int_equal(pgs_msg_peek(m, 5, 1024, &type, &total), PGS_OK);
  assert_int_equal(total, 1024);
  pgs_set_u32(m + 1, 1024);
  assert_int_equal(pgs_msg_peek(m, 5, 1024, &type, &total), PGS_ETOOBIG);

  /* Walking a buffer of built messages message by message. */
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_msg_query(&buf, "SELECT 1");
  pgs_msg_empty(&buf, 'S');
  pgs_msg_ready(&buf, 'I');
  static const char types[] = "QSZ";
  size_t offset = 0;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(pgs_msg_peek(buf.data + offset, buf.len - offset, 1024, &type, &total),
                     PGS_OK);
    assert_int_equal(type, types[i]);
    offset += total;
  }
  assert_int_equal(offset, buf.len);
  assert_int_equal(pgs_msg_peek(buf.data + offset, 0, 1024, &type, &total), PGS_EAGAIN);
  pgs_buf_free(&buf);
}

static void test_frontend_type_valid(void **state) {
  static const char valid[] = "QPBDECSHXFdcfp";
  for (int c = 0; c < 256; c++) {
    bool want = c != 0 && strchr(valid, c) != NULL;
    if (pgs_frontend_type_valid((char)c) != want)
      fail_msg("type 0x%02x ('%c'): expected %s", c, c >= 0x20 && c < 0x7f ? c : '?',
               want ? "valid" : "invalid");
  }
  /* Backend-only types a confused client might send. */
  assert_false(pgs_frontend_type_valid('R'));
  assert_false(pgs_frontend_type_valid('Z'));
  assert_false(pgs_frontend_type_valid('T'));
  assert_false(pgs_frontend_type_valid('1'));
  assert_false(pgs_frontend_type_valid('\0'));
}

/* ---- startup packet ---- */

/* A startup body: CODE, then the NUL-separated TAIL as given (LIT). */
static void startup_body(pgs_buf_t *buf, int32_t code, const uint8_t *tail, size_t tail_len) {
  pgs_buf_init(buf);
  pgs_buf_put_i32(buf, code);
  pgs_buf_put(buf, tail, tail_len);
}

/* Parse BODY expecting WANT; for failures ERR must contain NEEDLE. */
static void expect_startup(const pgs_buf_t *body, pgs_status_t want, const char *needle) {
  pgs_startup_t s;
  char err[256] = "";
  pgs_status_t got = pgs_startup_parse(body->data, body->len, &s, err, sizeof(err));
  if (got != want)
    fail_msg("startup parse: %s (%s), expected %s", pgs_status_str(got), err, pgs_status_str(want));
  if (needle && !strstr(err, needle)) fail_msg("error \"%s\" does not contain \"%s\"", err, needle);
}

static void test_startup_message(void **state) {
  pgs_buf_t body;
  startup_body(&body, PGS_PROTOCOL_3_0,
               LIT("user\0alice\0database\0app\0options\0-c search_path=s1\0"
                   "application_name\0\0\0"));
  pgs_startup_t s;
  char err[128] = "";
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_OK);
  assert_string_equal(err, "");
  assert_int_equal(s.code, PGS_PROTOCOL_3_0);
  assert_int_equal(s.nparams, 4);
  assert_string_equal(s.names[0], "user");
  assert_string_equal(s.values[0], "alice");
  assert_string_equal(s.names[2], "options");
  assert_string_equal(s.values[2], "-c search_path=s1");
  assert_string_equal(pgs_startup_get(&s, "user"), "alice");
  assert_string_equal(pgs_startup_get(&s, "database"), "app");
  assert_string_equal(pgs_startup_get(&s, "options"), "-c search_path=s1");
  assert_string_equal(pgs_startup_get(&s, "application_name"), "");
  assert_null(pgs_startup_get(&s, "USER"));
  assert_null(pgs_startup_get(&s, "replication"));
  /* Names and values point into the packet: nothing is copied. */
  assert_ptr_equal(s.names[0], (const char *)body.data + 4);
  assert_true((const uint8_t *)s.values[3] < body.data + body.len);
  pgs_buf_free(&body);

  /* No parameters at all, only the terminator. */
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("\0"));
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_OK);
  assert_int_equal(s.nparams, 0);
  assert_null(pgs_startup_get(&s, "user"));
  pgs_buf_free(&body);

  /* Exactly PGS_MAX_PARAMS parameters fit. */
  pgs_buf_init(&body);
  pgs_buf_put_i32(&body, PGS_PROTOCOL_3_0);
  for (int i = 0; i < PGS_MAX_PARAMS; i++) {
    char name[16];
    snprintf(name, sizeof(name), "p%d", i);
    pgs_buf_put_cstr(&body, name);
    pgs_buf_put_cstr(&body, name + 1);
  }
  pgs_buf_put_u8(&body, 0);
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_OK);
  assert_int_equal(s.nparams, PGS_MAX_PARAMS);
  assert_string_equal(pgs_startup_get(&s, "p63"), "63");
  pgs_buf_free(&body);
}

static void test_startup_too_many_params(void **state) {
  pgs_buf_t body;
  pgs_buf_init(&body);
  pgs_buf_put_i32(&body, PGS_PROTOCOL_3_0);
  for (int i = 0; i < PGS_MAX_PARAMS + 1; i++) {
    pgs_buf_put_cstr(&body, "k");
    pgs_buf_put_cstr(&body, "v");
  }
  pgs_buf_put_u8(&body, 0);
  expect_startup(&body, PGS_EPROTO, "too many startup parameters");
  pgs_buf_free(&body);
}

static void test_startup_requests(void **state) {
  pgs_buf_t body;
  pgs_startup_t s;
  char err[128];

  startup_body(&body, PGS_SSL_REQUEST_CODE, LIT(""));
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_OK);
  assert_int_equal(s.code, PGS_SSL_REQUEST_CODE);
  assert_int_equal(s.nparams, 0);
  pgs_buf_free(&body);

  startup_body(&body, PGS_GSSENC_REQUEST_CODE, LIT(""));
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_OK);
  assert_int_equal(s.code, PGS_GSSENC_REQUEST_CODE);
  pgs_buf_free(&body);

  startup_body(&body, PGS_CANCEL_REQUEST_CODE, LIT("\x00\x00\x30\x39\xde\xad\xbe\xef"));
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_OK);
  assert_int_equal(s.code, PGS_CANCEL_REQUEST_CODE);
  assert_int_equal(s.cancel_pid, 12345);
  assert_int_equal(s.cancel_key, (int32_t)0xdeadbeefu);
  assert_int_equal(s.nparams, 0);
  pgs_buf_free(&body);

  /* The bytes as a client sends them, length field stripped. */
  static const uint8_t ssl[] = {0x04, 0xd2, 0x16, 0x2f};
  assert_int_equal(pgs_startup_parse(ssl, sizeof(ssl), &s, err, sizeof(err)), PGS_OK);
  assert_int_equal(s.code, PGS_SSL_REQUEST_CODE);
}

static void test_startup_trailing_garbage(void **state) {
  pgs_buf_t body;
  startup_body(&body, PGS_SSL_REQUEST_CODE, LIT("\0"));
  expect_startup(&body, PGS_EPROTO, "SSL/GSS request");
  pgs_buf_free(&body);
  startup_body(&body, PGS_GSSENC_REQUEST_CODE, LIT("\0\0\0\0"));
  expect_startup(&body, PGS_EPROTO, "SSL/GSS request");
  pgs_buf_free(&body);
  startup_body(&body, PGS_CANCEL_REQUEST_CODE, LIT("\0\0\0\1\0\0\0\2x"));
  expect_startup(&body, PGS_EPROTO, "cancel request");
  pgs_buf_free(&body);
  /* ... and too little after a cancel code. */
  startup_body(&body, PGS_CANCEL_REQUEST_CODE, LIT("\0\0\0\1\0\0\0"));
  expect_startup(&body, PGS_EPROTO, "cancel request");
  pgs_buf_free(&body);
  startup_body(&body, PGS_CANCEL_REQUEST_CODE, LIT(""));
  expect_startup(&body, PGS_EPROTO, "cancel request");
  pgs_buf_free(&body);
  /* Bytes after the terminator of a StartupMessage. */
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0bob\0\0x"));
  expect_startup(&body, PGS_EPROTO, "expected terminator");
  pgs_buf_free(&body);
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0bob\0\0\0"));
  expect_startup(&body, PGS_EPROTO, "expected terminator");
  pgs_buf_free(&body);
}

static void test_startup_malformed(void **state) {
  pgs_buf_t body;

  /* Shorter than the code itself. */
  for (size_t len = 0; len < 4; len++) {
    pgs_buf_init(&body);
    pgs_buf_put(&body, "\0\3\0\0", len);
    expect_startup(&body, PGS_EPROTO, "length");
    pgs_buf_free(&body);
  }

  /* No final terminator. */
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0bob\0"));
  expect_startup(&body, PGS_EPROTO, "expected terminator");
  pgs_buf_free(&body);
  startup_body(&body, PGS_PROTOCOL_3_0, LIT(""));
  expect_startup(&body, PGS_EPROTO, "expected terminator");
  pgs_buf_free(&body);
  /* A name cut off before its NUL. */
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0bob\0data"));
  expect_startup(&body, PGS_EPROTO, "expected terminator");
  pgs_buf_free(&body);

  /* A name without a value. */
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0bob\0database\0"));
  expect_startup(&body, PGS_EPROTO, "missing value for \"database\"");
  pgs_buf_free(&body);
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0bo"));
  expect_startup(&body, PGS_EPROTO, "missing value for \"user\"");
  pgs_buf_free(&body);

  /* A tiny error buffer is filled, not overrun. */
  startup_body(&body, PGS_PROTOCOL_3_0, LIT("user\0"));
  pgs_startup_t s;
  char err[8];
  memset(err, 'z', sizeof(err));
  assert_int_equal(pgs_startup_parse(body.data, body.len, &s, err, sizeof(err)), PGS_EPROTO);
  assert_int_equal(strlen(err), sizeof(err) - 1);
  pgs_buf_free(&body);
}

static void test_startup_unsupported_versions(void **state) {
  pgs_buf_t body;
  startup_body(&body, 2 << 16, LIT("user\0bob\0\0"));
  expect_startup(&body, PGS_EUNSUPPORTED, "unsupported frontend protocol 2.0");
  pgs_buf_free(&body);
  startup_body(&body, 3 << 16 | 1, LIT("user\0bob\0\0"));
  expect_startup(&body, PGS_EUNSUPPORTED, "unsupported frontend protocol 3.1");
  pgs_buf_free(&body);
  startup_body(&body, 4 << 16, LIT("\0"));
  expect_startup(&body, PGS_EUNSUPPORTED, "4.0");
  pgs_buf_free(&body);
  /* A request code one off the known ones is an unknown version too. */
  startup_body(&body, PGS_GSSENC_REQUEST_CODE + 1, LIT(""));
  expect_startup(&body, PGS_EUNSUPPORTED, "1234.5681");
  pgs_buf_free(&body);
  startup_body(&body, 0, LIT(""));
  expect_startup(&body, PGS_EUNSUPPORTED, "0.0");
  pgs_buf_free(&body);
}

/* ---- ErrorResponse ---- */

static void test_error_parse(void **state) {
  pgs_error_fields_t f;
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_msg_error(&buf, "FATAL", PGS_SQLSTATE_INVALID_PASSWORD, "d", "no %s", "entry");
  pgs_error_parse(buf.data + 5, buf.len - 5, &f);
  assert_string_equal(f.severity, "FATAL");
  assert_string_equal(f.sqlstate, "28P01");
  assert_string_equal(f.message, "pgshard: no entry");
  pgs_buf_free(&buf);

  /* As a server sends it: localized S, fields in any order, unknown ones. */
  static const uint8_t server[] =
      "SFEHLER\0VERROR\0C42P01\0Mrelation \"t\" does not exist\0"
      "P15\0Fparse_relation.c\0L1392\0Rparser\0\0";
  pgs_error_parse(server, sizeof(server) - 1, &f);
  assert_string_equal(f.severity, "FEHLER");
  assert_string_equal(f.sqlstate, "42P01");
  assert_string_equal(f.message, "relation \"t\" does not exist");

  /* Nothing, or cut short: what was read stays, the rest is "". */
  pgs_error_parse(server, 0, &f);
  assert_string_equal(f.severity, "");
  assert_string_equal(f.sqlstate, "");
  assert_string_equal(f.message, "");
  pgs_error_parse(server, 16, &f); /* S and V whole, then "C" with no value */
  assert_string_equal(f.severity, "FEHLER");
  assert_string_equal(f.sqlstate, "");
  assert_string_equal(f.message, "");
  pgs_error_parse(server, 20, &f); /* C's value without its NUL */
  assert_string_equal(f.sqlstate, "");
  /* No final terminator: the fields are still found. */
  pgs_error_parse(server, sizeof(server) - 2, &f);
  assert_string_equal(f.message, "relation \"t\" does not exist");
  /* A zero byte ends the fields; what follows is not read. */
  static const uint8_t early[] = "SERROR\0\0Mhidden\0";
  pgs_error_parse(early, sizeof(early) - 1, &f);
  assert_string_equal(f.severity, "ERROR");
  assert_string_equal(f.message, "");
}

/* ---- extended-protocol client messages ---- */

/* A copy of LEN bytes of DATA at the very end of a heap block, so that any
 * read past them (even of the first byte when LEN is 0) is an
 * AddressSanitizer report in the sanitizer build. Freed by free_tight(). */
static uint8_t *tight_copy(const uint8_t *data, size_t len) {
  uint8_t *block = malloc(len + 1);
  assert_non_null(block);
  if (len) memcpy(block + 1, data, len);
  return block + 1;
}

static void free_tight(uint8_t *copy) { free(copy - 1); }

/* P lies in [BODY, BODY + LEN] with N bytes from it. */
static void assert_inside(const void *p, size_t n, const uint8_t *body, size_t len) {
  assert_non_null(p);
  const uint8_t *q = p;
  assert_true(q >= body && q <= body + len && n <= (size_t)(body + len - q));
}

static bool all_zero(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i]) return false;
  return true;
}

/* The readers under one signature, each checking what it gives: on
 * success every pointer inside the body, on failure a zeroed result. */
static pgs_status_t check_parse(const uint8_t *body, size_t len) {
  pgs_parse_msg_t m;
  pgs_status_t st = pgs_parse_read(body, len, &m);
  if (st != PGS_OK) {
    assert_true(all_zero(&m, sizeof(m)));
    return st;
  }
  assert_inside(m.name, m.name_len + 1, body, len);
  assert_int_equal(strlen(m.name), m.name_len);
  assert_inside(m.query, m.query_len + 1, body, len);
  assert_int_equal(strlen(m.query), m.query_len);
  assert_inside(m.type_oids, 4 * (size_t)m.ntypes, body, len);
  assert_ptr_equal(m.after_name, (const uint8_t *)m.name + m.name_len + 1);
  assert_ptr_equal(m.after_name + m.after_name_len, body + len);
  assert_ptr_equal(m.after_query, (const uint8_t *)m.query + m.query_len + 1);
  assert_int_equal(m.after_query_len, 2 + 4 * (size_t)m.ntypes);
  assert_ptr_equal(m.type_oids, m.after_query + 2);
  return st;
}

static pgs_status_t check_bind(const uint8_t *body, size_t len) {
  pgs_bind_msg_t m;
  pgs_status_t st = pgs_bind_read(body, len, &m);
  if (st != PGS_OK) {
    assert_true(all_zero(&m, sizeof(m)));
    return st;
  }
  assert_inside(m.portal, m.portal_len + 1, body, len);
  assert_inside(m.statement, m.statement_len + 1, body, len);
  assert_ptr_equal(m.after_names, (const uint8_t *)m.statement + m.statement_len + 1);
  assert_ptr_equal(m.after_names + m.after_names_len, body + len);
  assert_true(m.nformats == 0 || m.nformats == 1 || m.nformats == m.nparams);
  assert_inside(m.formats, 2 * (size_t)m.nformats, body, len);
  assert_inside(m.params, m.params_len, body, len);
  assert_inside(m.results, 2 * (size_t)m.nresults, body, len);
  assert_ptr_equal(m.results + 2 * (size_t)m.nresults, body + len);
  size_t at = 0;
  int n = 0;
  const uint8_t *value;
  int32_t vlen;
  while (pgs_bind_next_value(&m, &at, &value, &vlen)) {
    if (vlen == -1)
      assert_null(value);
    else
      assert_inside(value, (size_t)vlen, body, len);
    n++;
  }
  assert_int_equal(n, m.nparams);
  assert_int_equal(at, m.params_len);
  return st;
}

static pgs_status_t check_target(const uint8_t *body, size_t len, bool close) {
  pgs_describe_msg_t m;
  pgs_status_t st = close ? pgs_close_read(body, len, &m) : pgs_describe_read(body, len, &m);
  if (st != PGS_OK) {
    assert_true(all_zero(&m, sizeof(m)));
    return st;
  }
  assert_true(m.kind == 'S' || m.kind == 'P');
  assert_ptr_equal(m.name, (const char *)body + 1);
  assert_int_equal(m.name_len + 2, len);
  return st;
}

static pgs_status_t check_describe(const uint8_t *body, size_t len) {
  return check_target(body, len, false);
}

static pgs_status_t check_close(const uint8_t *body, size_t len) {
  return check_target(body, len, true);
}

static pgs_status_t check_execute(const uint8_t *body, size_t len) {
  pgs_execute_msg_t m;
  pgs_status_t st = pgs_execute_read(body, len, &m);
  if (st != PGS_OK) {
    assert_true(all_zero(&m, sizeof(m)));
    return st;
  }
  assert_ptr_equal(m.portal, (const char *)body);
  assert_int_equal(m.portal_len + 5, len);
  return st;
}

typedef pgs_status_t (*check_fn)(const uint8_t *body, size_t len);

/* What CHECK says of LEN bytes of DATA read from a block of their own. */
static pgs_status_t check_tight(check_fn check, const uint8_t *data, size_t len) {
  uint8_t *copy = tight_copy(data, len);
  pgs_status_t st = check(copy, len);
  free_tight(copy);
  return st;
}

/* The message in BUF (one, from the builders) is well-formed for CHECK;
 * every proper prefix of its body, and the body with a byte more, is not. */
static void expect_exact(check_fn check, const pgs_buf_t *buf) {
  assert_true(buf->len >= 5);
  assert_int_equal(pgs_get_u32(buf->data + 1) + 1, buf->len);
  const uint8_t *body = buf->data + 5;
  size_t len = buf->len - 5;
  assert_int_equal(check_tight(check, body, len), PGS_OK);
  for (size_t n = 0; n < len; n++) assert_int_equal(check_tight(check, body, n), PGS_EPROTO);
  uint8_t *longer = malloc(len + 1);
  assert_non_null(longer);
  memcpy(longer, body, len);
  for (int extra = 0; extra < 256; extra += 0x41) { /* a NUL, 'A', 0x82, 0xc3 */
    longer[len] = (uint8_t)extra;
    assert_int_equal(check_tight(check, longer, len + 1), PGS_EPROTO);
  }
  free(longer);
}

static void test_parse_read(void **state) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  static const uint32_t oids[] = {20, 25, 0, 0xfffffffeu};
  put_parse(&b, "s1", "select $1::int8, $2", 4, oids);
  pgs_parse_msg_t m;
  assert_int_equal(pgs_parse_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_string_equal(m.name, "s1");
  assert_int_equal(m.name_len, 2);
  assert_string_equal(m.query, "select $1::int8, $2");
  assert_int_equal(m.query_len, 19);
  assert_int_equal(m.ntypes, 4);
  for (int i = 0; i < 4; i++) assert_int_equal(pgs_parse_type_oid(&m, i), oids[i]);
  assert_ptr_equal(m.after_name, b.data + 5 + 3);
  assert_int_equal(m.after_name_len, 20 + 2 + 16);
  assert_int_equal(m.after_query_len, 2 + 16);
  expect_exact(check_parse, &b);

  /* What a proxy keeps (the body after the name) reads the same. */
  pgs_parse_msg_t kept;
  assert_int_equal(pgs_parse_read_after_name(m.after_name, m.after_name_len, &kept), PGS_OK);
  assert_null(kept.name);
  assert_ptr_equal(kept.query, m.query);
  assert_int_equal(kept.ntypes, 4);
  assert_ptr_equal(kept.type_oids, m.type_oids);
  assert_ptr_equal(kept.after_query, m.after_query);
  assert_int_equal(pgs_parse_read_after_name(m.after_name, m.after_name_len - 1, &kept),
                   PGS_EPROTO);
  assert_true(all_zero(&kept, sizeof(kept)));

  /* Unnamed, no types. */
  b.len = 0;
  put_parse(&b, "", "", 0, NULL);
  assert_int_equal(pgs_parse_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_string_equal(m.name, "");
  assert_string_equal(m.query, "");
  assert_int_equal(m.ntypes, 0);
  assert_int_equal(m.after_query_len, 2);
  expect_exact(check_parse, &b);
  pgs_buf_free(&b);
}

static void test_parse_read_counts(void **state) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  pgs_parse_msg_t m;
  /* Counts are unsigned as PostgreSQL reads them: 0x8000 and 0xffff types
   * are that many, when the OIDs are there. */
  static const int counts[] = {0x8000, 0xffff};
  for (size_t c = 0; c < 2; c++) {
    b.len = 0;
    put_parse(&b, "big", "select 1", counts[c], NULL);
    assert_int_equal(check_tight(check_parse, b.data + 5, b.len - 5), PGS_OK);
    assert_int_equal(pgs_parse_read(b.data + 5, b.len - 5, &m), PGS_OK);
    assert_int_equal(m.ntypes, counts[c]);
    assert_int_equal(pgs_parse_type_oid(&m, counts[c] - 1), 0);
    /* One OID short. */
    assert_int_equal(check_tight(check_parse, b.data + 5, b.len - 5 - 4), PGS_EPROTO);
  }
  /* A count claiming more OIDs than there are, or fewer. */
  b.len = 0;
  static const uint32_t two[] = {23, 23};
  put_parse(&b, "", "select $1, $2", 2, two);
  uint8_t *count = b.data + 5 + 1 + 14;
  count[1] = 3;
  assert_int_equal(check_tight(check_parse, b.data + 5, b.len - 5), PGS_EPROTO);
  count[1] = 1;
  assert_int_equal(check_tight(check_parse, b.data + 5, b.len - 5), PGS_EPROTO);
  count[0] = 0xff, count[1] = 0xff; /* -1 as a signed count */
  assert_int_equal(check_tight(check_parse, b.data + 5, b.len - 5), PGS_EPROTO);
  /* Strings without their NUL. */
  static const uint8_t no_query_end[] = {'s', 0, 's', 'e', 'l'};
  assert_int_equal(check_tight(check_parse, no_query_end, sizeof(no_query_end)), PGS_EPROTO);
  static const uint8_t no_name_end[] = {'s', '1'};
  assert_int_equal(check_tight(check_parse, no_name_end, sizeof(no_name_end)), PGS_EPROTO);
  pgs_buf_free(&b);
}

static void test_parse_read_head(void **state) {
  pgs_parse_msg_t m;
  /* Name and text only; the rest is anyone's. */
  static const uint8_t body[] = {'n', 0, 'q', 0, 0xff, 0xff, 'x'};
  uint8_t *copy = tight_copy(body, sizeof(body));
  assert_int_equal(pgs_parse_read_head(copy, sizeof(body), &m), PGS_OK);
  assert_string_equal(m.name, "n");
  assert_string_equal(m.query, "q");
  assert_int_equal(m.ntypes, 0);
  assert_null(m.type_oids);
  assert_ptr_equal(m.after_name, copy + 2);
  assert_int_equal(m.after_name_len, 5);
  assert_ptr_equal(m.after_query, copy + 4);
  assert_int_equal(m.after_query_len, 3);
  assert_int_equal(pgs_parse_read(copy, sizeof(body), &m), PGS_EPROTO);
  /* Up to the text's NUL. */
  assert_int_equal(pgs_parse_read_head(copy, 4, &m), PGS_OK);
  assert_int_equal(m.after_query_len, 0);
  for (size_t n = 0; n < 4; n++) {
    free_tight(copy);
    copy = tight_copy(body, n);
    assert_int_equal(pgs_parse_read_head(copy, n, &m), PGS_EPROTO);
    assert_true(all_zero(&m, sizeof(m)));
  }
  free_tight(copy);
}

static void test_bind_read(void **state) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  static const char *const values[] = {"42", NULL, "", "text"};
  static const int16_t formats[] = {1, 0, 1, 0};
  static const int16_t results[] = {1, 0, 1};
  put_bind(&b, "p1", "s1", 4, formats, 4, values, 3, results);
  pgs_bind_msg_t m;
  assert_int_equal(pgs_bind_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_string_equal(m.portal, "p1");
  assert_int_equal(m.portal_len, 2);
  assert_string_equal(m.statement, "s1");
  assert_int_equal(m.statement_len, 2);
  assert_ptr_equal(m.after_names, b.data + 5 + 6);
  assert_int_equal(m.nformats, 4);
  assert_int_equal(m.nparams, 4);
  assert_int_equal(m.params_len, 4 * 4 + 2 + 4);
  assert_int_equal(m.nresults, 3);
  assert_ptr_equal(m.results, b.data + b.len - 6);
  for (int i = 0; i < 4; i++) assert_int_equal(pgs_bind_param_format(&m, i), formats[i]);
  size_t at = 0;
  const uint8_t *value;
  int32_t vlen;
  for (int i = 0; i < 4; i++) {
    assert_true(pgs_bind_next_value(&m, &at, &value, &vlen));
    if (values[i] == NULL) {
      assert_int_equal(vlen, -1);
      assert_null(value);
    } else {
      assert_int_equal(vlen, strlen(values[i]));
      assert_non_null(value); /* an empty value is not NULL */
      assert_memory_equal(value, values[i], (size_t)vlen);
    }
  }
  assert_false(pgs_bind_next_value(&m, &at, &value, &vlen));
  expect_exact(check_bind, &b);

  /* No formats: all text. One format: all of them. */
  b.len = 0;
  put_bind(&b, "", "", 0, NULL, 2, values, 0, NULL);
  assert_int_equal(pgs_bind_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_int_equal(pgs_bind_param_format(&m, 0), 0);
  assert_int_equal(pgs_bind_param_format(&m, 1), 0);
  expect_exact(check_bind, &b);
  b.len = 0;
  static const int16_t binary[] = {1};
  put_bind(&b, "", "s", 1, binary, 3, values, 1, binary);
  assert_int_equal(pgs_bind_read(b.data + 5, b.len - 5, &m), PGS_OK);
  for (int i = 0; i < 3; i++) assert_int_equal(pgs_bind_param_format(&m, i), 1);
  expect_exact(check_bind, &b);

  /* Nothing but the names and three zero counts. */
  b.len = 0;
  put_bind(&b, "", "", 0, NULL, 0, NULL, 0, NULL);
  assert_int_equal(pgs_bind_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_int_equal(m.params_len, 0);
  at = 0;
  assert_false(pgs_bind_next_value(&m, &at, &value, &vlen));
  expect_exact(check_bind, &b);
  pgs_buf_free(&b);
}

static void test_bind_read_counts(void **state) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  static const char *const values[] = {"1", "2", "3"};
  static const int16_t formats[] = {0, 1, 0};
  /* A format count other than 0, 1 or the parameter count. */
  put_bind(&b, "", "s", 2, formats, 3, values, 0, NULL);
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5), PGS_EPROTO);
  b.len = 0;
  put_bind(&b, "", "s", 3, formats, 2, values, 0, NULL);
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5), PGS_EPROTO);
  b.len = 0;
  put_bind(&b, "", "s", 3, formats, 0, NULL, 0, NULL);
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5), PGS_EPROTO);

  /* 0xffff NULL parameters with one format: unsigned counts, as in
   * PostgreSQL, and 0xffff result formats. */
  b.len = 0;
  static const int16_t text[] = {0};
  put_bind(&b, "", "s", 1, text, 0xffff, NULL, 0, NULL);
  b.len -= 2; /* the result count, put again with its codes */
  pgs_buf_put_i16(&b, (int16_t)0xffff);
  for (int i = 0; i < 0xffff; i++) pgs_buf_put_i16(&b, 1);
  pgs_msg_end(&b, 1);
  pgs_bind_msg_t m;
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5), PGS_OK);
  assert_int_equal(pgs_bind_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_int_equal(m.nparams, 0xffff);
  assert_int_equal(m.nresults, 0xffff);
  assert_int_equal(m.params_len, 4 * 0xffff);
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5 - 1), PGS_EPROTO);

  /* Value lengths: -1 is NULL, below it malformed (though the message
   * would be whole without a value), beyond the body too. */
  static const int32_t lengths[] = {-1, -2, INT32_MIN, 4, 7, 0x7fffffff};
  for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
    b.len = 0;
    size_t start = pgs_msg_begin(&b, 'B');
    pgs_buf_put(&b, "\0\0", 2);
    pgs_buf_put_i16(&b, 0);
    pgs_buf_put_i16(&b, 1);
    pgs_buf_put_i32(&b, lengths[i]);
    if (lengths[i] > 0) pgs_buf_put(&b, "abcd", 4); /* what claims 7 or more is short */
    pgs_buf_put_i16(&b, 0);
    pgs_msg_end(&b, start);
    assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5),
                     lengths[i] == -1 || lengths[i] == 4 ? PGS_OK : PGS_EPROTO);
  }
  /* More result codes claimed than sent, and a negative-looking count. */
  b.len = 0;
  static const int16_t results[] = {0, 1};
  put_bind(&b, "", "", 0, NULL, 0, NULL, 2, results);
  b.data[b.len - 5] = 3;
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5), PGS_EPROTO);
  b.data[b.len - 6] = 0xff, b.data[b.len - 5] = 0xff;
  assert_int_equal(check_tight(check_bind, b.data + 5, b.len - 5), PGS_EPROTO);
  pgs_buf_free(&b);
}

static void test_bind_read_head(void **state) {
  pgs_bind_msg_t m;
  /* The names only: what follows them is not read. */
  static const uint8_t body[] = {'p', 0, 's', 0, 0x7f, 0x7f};
  uint8_t *copy = tight_copy(body, sizeof(body));
  assert_int_equal(pgs_bind_read_head(copy, sizeof(body), &m), PGS_OK);
  assert_string_equal(m.portal, "p");
  assert_string_equal(m.statement, "s");
  assert_ptr_equal(m.after_names, copy + 4);
  assert_int_equal(m.after_names_len, 2);
  assert_int_equal(m.nparams, 0);
  assert_int_equal(m.nresults, 0);
  assert_int_equal(pgs_bind_read(copy, sizeof(body), &m), PGS_EPROTO);
  for (size_t n = 0; n < 4; n++) {
    free_tight(copy);
    copy = tight_copy(body, n);
    assert_int_equal(pgs_bind_read_head(copy, n, &m), PGS_EPROTO);
    assert_true(all_zero(&m, sizeof(m)));
  }
  free_tight(copy);
}

static void test_describe_close_read(void **state) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  static const char kinds[] = {'S', 'P'};
  for (int k = 0; k < 2; k++) {
    b.len = 0;
    put_target(&b, 'D', kinds[k], "name");
    pgs_describe_msg_t d;
    assert_int_equal(pgs_describe_read(b.data + 5, b.len - 5, &d), PGS_OK);
    assert_int_equal(d.kind, kinds[k]);
    assert_string_equal(d.name, "name");
    assert_int_equal(d.name_len, 4);
    expect_exact(check_describe, &b);
    b.len = 0;
    put_target(&b, 'C', kinds[k], "");
    pgs_close_msg_t c;
    assert_int_equal(pgs_close_read(b.data + 5, b.len - 5, &c), PGS_OK);
    assert_int_equal(c.kind, kinds[k]);
    assert_string_equal(c.name, "");
    expect_exact(check_close, &b);
  }
  /* Only 'S' and 'P'; one name ending with the message. */
  static const uint8_t portal_kind_lower[] = {'p', 'x', 0};
  static const uint8_t no_kind[] = {0};
  static const uint8_t two_names[] = {'S', 'a', 0, 'b', 0};
  assert_int_equal(check_tight(check_describe, portal_kind_lower, 3), PGS_EPROTO);
  assert_int_equal(check_tight(check_close, portal_kind_lower, 3), PGS_EPROTO);
  assert_int_equal(check_tight(check_describe, no_kind, 1), PGS_EPROTO);
  assert_int_equal(check_tight(check_describe, two_names, 5), PGS_EPROTO);
  assert_int_equal(check_tight(check_close, two_names, 5), PGS_EPROTO);
  assert_int_equal(check_tight(check_close, two_names, 3), PGS_OK);
  pgs_buf_free(&b);
}

static void test_execute_read(void **state) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  put_execute(&b, "cur", 100);
  pgs_execute_msg_t m;
  assert_int_equal(pgs_execute_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_string_equal(m.portal, "cur");
  assert_int_equal(m.portal_len, 3);
  assert_int_equal(m.max_rows, 100);
  expect_exact(check_execute, &b);
  b.len = 0;
  put_execute(&b, "", -1); /* as every row */
  assert_int_equal(pgs_execute_read(b.data + 5, b.len - 5, &m), PGS_OK);
  assert_string_equal(m.portal, "");
  assert_int_equal(m.max_rows, -1);
  expect_exact(check_execute, &b);
  pgs_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buf_growth),
      cmocka_unit_test(test_buf_integers_are_big_endian),
      cmocka_unit_test(test_buf_consume),
      cmocka_unit_test(test_msg_error),
      cmocka_unit_test(test_msg_auth),
      cmocka_unit_test(test_msg_small_builders),
      cmocka_unit_test(test_msg_begin_end),
      cmocka_unit_test(test_reader),
      cmocka_unit_test(test_reader_past_end),
      cmocka_unit_test(test_msg_peek),
      cmocka_unit_test(test_frontend_type_valid),
      cmocka_unit_test(test_startup_message),
      cmocka_unit_test(test_startup_too_many_params),
      cmocka_unit_test(test_startup_requests),
      cmocka_unit_test(test_startup_trailing_garbage),
      cmocka_unit_test(test_startup_malformed),
      cmocka_unit_test(test_startup_unsupported_versions),
      cmocka_unit_test(test_error_parse),
      cmocka_unit_test(test_parse_read),
      cmocka_unit_test(test_parse_read_counts),
      cmocka_unit_test(test_parse_read_head),
      cmocka_unit_test(test_bind_read),
      cmocka_unit_test(test_bind_read_counts),
      cmocka_unit_test(test_bind_read_head),
      cmocka_unit_test(test_describe_close_read),
      cmocka_unit_test(test_execute_read),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
