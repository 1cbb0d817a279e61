/*
 * test_pgoutput.c — router/pgoutput.c: the replication stream's frames
 * ('w' XLogData, 'k' keepalive, the 'r' status update we send back) and
 * every pgoutput message of protocol version 1, built here byte by byte and
 * checked field by field, then the same messages as PostgreSQL 15 really
 * sent them (captured from pg_logical_slot_peek_binary_changes and
 * START_REPLICATION on a throwaway server).
 *
 * Each valid message is also decoded cut short at every length and with a
 * byte too many: all of those must be PGS_EPROTO. Every decode reads from a
 * heap copy of exactly the message's size, so under ASan a read one byte
 * past the end is a report, and every decode, failed or not, is followed by
 * pgs_lr_msg_clear, so LeakSanitizer reports whatever a failed decode
 * allocated and clear did not free.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/health.h"
#include "pgshard/pgoutput.h"

/* ---- building messages ---- */

/* Big enough for a Relation of PGS_LR_MAX_COLUMNS + 1 columns. */
typedef struct builder {
  uint8_t b[64 * 1024];
  size_t n;
} builder_t;

static void put8(builder_t *b, uint8_t v) {
  assert_true(b->n < sizeof(b->b));
  b->b[b->n++] = v;
}

static void put16(builder_t *b, uint16_t v) {
  put8(b, (uint8_t)(v >> 8));
  put8(b, (uint8_t)v);
}

static void put32(builder_t *b, uint32_t v) {
  for (int i = 3; i >= 0; i--) put8(b, (uint8_t)(v >> (8 * i)));
}

static void put64(builder_t *b, uint64_t v) {
  for (int i = 7; i >= 0; i--) put8(b, (uint8_t)(v >> (8 * i)));
}

static void put_bytes(builder_t *b, const void *data, size_t len) {
  for (size_t i = 0; i < len; i++) put8(b, ((const uint8_t *)data)[i]);
}

static void put_str(builder_t *b, const char *s) { put_bytes(b, s, strlen(s) + 1); }

static void start(builder_t *b, char kind) {
  b->n = 0;
  put8(b, (uint8_t)kind);
}

/* A 't' (or 'b') column; returns where its bytes start in the message. */
static size_t put_col(builder_t *b, char kind, const void *data, uint32_t len) {
  put8(b, (uint8_t)kind);
  put32(b, len);
  size_t at = b->n;
  put_bytes(b, data, len);
  return at;
}

static size_t put_text(builder_t *b, const char *s) {
  return put_col(b, 't', s, (uint32_t)strlen(s));
}

static void from_hex(builder_t *b, const char *hex) {
  b->n = 0;
  for (size_t i = 0; hex[i] && hex[i + 1]; i += 2) {
    char pair[3] = {hex[i], hex[i + 1], '\0'};
    put8(b, (uint8_t)strtoul(pair, NULL, 16));
  }
}

/* ---- decoding ---- */

static uint8_t *heap_copy(const uint8_t *data, size_t len) {
  uint8_t *p = malloc(len ? len : 1);
  assert_non_null(p);
  if (len) memcpy(p, data, len);
  return p;
}

static void assert_cleared(const pgs_lr_msg_t *m) {
  static const pgs_lr_msg_t zero;
  assert_memory_equal(m, &zero, sizeof(zero));
}

/* LEN bytes of DATA (a copy of exactly that size) must be refused, and
 * clear must leave nothing behind. */
static void assert_refused(const uint8_t *data, size_t len) {
  uint8_t *p = heap_copy(data, len);
  pgs_lr_msg_t m = {0};
  assert_int_equal(pgs_lr_msg_decode(p, len, &m), PGS_EPROTO);
  pgs_lr_msg_clear(&m);
  assert_cleared(&m);
  free(p);
}

static void assert_builder_refused(const builder_t *b) { assert_refused(b->b, b->n); }

/* Every prefix shorter than the message, and the message with one more
 * byte of a few values, is PGS_EPROTO. */
static void assert_strict(const uint8_t *data, size_t len) {
  for (size_t cut = 0; cut < len; cut++) assert_refused(data, cut);
  static const uint8_t extra[] = {0x00, 'N', 0xff};
  for (size_t i = 0; i < sizeof(extra); i++) {
    uint8_t *p = malloc(len + 1);
    assert_non_null(p);
    memcpy(p, data, len);
    p[len] = extra[i];
    assert_refused(p, len + 1);
    free(p);
  }
}

/* A message decoded from its own heap buffer, which the pointers in M
 * point into. */
typedef struct decoded {
  uint8_t *buf;
  pgs_lr_msg_t m;
} decoded_t;

static void decode_ok(const builder_t *b, decoded_t *d) {
  assert_strict(b->b, b->n);
  d->buf = heap_copy(b->b, b->n);
  memset(&d->m, 0, sizeof(d->m));
  assert_int_equal(pgs_lr_msg_decode(d->buf, b->n, &d->m), PGS_OK);
}

static void done(decoded_t *d) {
  pgs_lr_msg_clear(&d->m);
  assert_cleared(&d->m);
  free(d->buf);
}

static void assert_col_null(const pgs_lr_col_t *c, char kind) {
  assert_int_equal(c->kind, kind);
  assert_null(c->data);
  assert_int_equal(c->len, 0);
}

/* Column C is a KIND value of LEN bytes at offset AT of the decoded buffer:
 * pointed to where it is, not copied. */
static void assert_col_at(const decoded_t *d, const pgs_lr_col_t *c, char kind, size_t at,
                          uint32_t len) {
  assert_int_equal(c->kind, kind);
  assert_int_equal(c->len, len);
  assert_ptr_equal(c->data, d->buf + at);
}

static void assert_col_text(const pgs_lr_col_t *c, const char *text) {
  assert_int_equal(c->kind, 't');
  assert_int_equal(c->len, strlen(text));
  assert_non_null(c->data);
  assert_memory_equal(c->data, text, strlen(text));
}

/* ---- frames ---- */

static void test_frame_xlogdata(void **state) {
  static builder_t b;
  start(&b, 'w');
  put64(&b, 0x0000000101586DF0ull);
  put64(&b, 0xFFFFFFFF00000001ull);
  put64(&b, 0x0003050C7F2D3DD1ull);
  const char payload[] = "B\0\x01payload";
  put_bytes(&b, payload, sizeof(payload) - 1);

  uint8_t *p = heap_copy(b.b, b.n);
  pgs_lr_frame_t f;
  assert_int_equal(pgs_lr_frame_decode(p, b.n, &f), PGS_OK);
  assert_int_equal(f.kind, 'w');
  assert_int_equal(f.wal_start, 0x0000000101586DF0ull);
  assert_int_equal(f.wal_end, 0xFFFFFFFF00000001ull);
  assert_int_equal(f.send_time, 0x0003050C7F2D3DD1ll);
  assert_false(f.reply_requested);
  assert_ptr_equal(f.payload, p + 25);
  assert_int_equal(f.payload_len, sizeof(payload) - 1);

  /* A send time before 2000 is negative. */
  memset(p + 17, 0xff, 8);
  assert_int_equal(pgs_lr_frame_decode(p, b.n, &f), PGS_OK);
  assert_int_equal(f.send_time, -1);
  free(p);

  /* The header alone is an XLogData with an empty message; anything
   * shorter is refused, and nothing past the given length is read. */
  for (size_t cut = 0; cut < b.n; cut++) {
    p = heap_copy(b.b, cut);
    memset(&f, 'x', sizeof(f));
    if (cut < 25) {
      assert_int_equal(pgs_lr_frame_decode(p, cut, &f), PGS_EPROTO);
      assert_int_equal(f.payload_len, 0);
    } else {
      assert_int_equal(pgs_lr_frame_decode(p, cut, &f), PGS_OK);
      assert_ptr_equal(f.payload, p + 25);
      assert_int_equal(f.payload_len, cut - 25);
    }
    free(p);
  }
}

static void test_frame_keepalive(void **state) {
  static builder_t b;
  for (int reply = 0; reply <= 1; reply++) {
    start(&b, 'k');
    put64(&b, 0x0000000101585828ull);
    put64(&b, 0x0003050C7F2D3CA9ull);
    put8(&b, (uint8_t)reply);
    assert_int_equal(b.n, 18);

    uint8_t *p = heap_copy(b.b, b.n);
    pgs_lr_frame_t f;
    memset(&f, 'x', sizeof(f));
    assert_int_equal(pgs_lr_frame_decode(p, b.n, &f), PGS_OK);
    assert_int_equal(f.kind, 'k');
    assert_int_equal(f.wal_start, 0);
    assert_int_equal(f.wal_end, 0x0000000101585828ull);
    assert_int_equal(f.send_time, 0x0003050C7F2D3CA9ll);
    assert_int_equal(f.reply_requested, reply == 1);
    assert_null(f.payload);
    assert_int_equal(f.payload_len, 0);
    free(p);

    for (size_t cut = 0; cut < b.n; cut++) {
      p = heap_copy(b.b, cut);
      assert_int_equal(pgs_lr_frame_decode(p, cut, &f), PGS_EPROTO);
      free(p);
    }
  }
}

static void test_frame_unknown_kind(void **state) {
  /* 'r' is what we send, never what the server does; 'd' and 'H' are
   * other CopyData a replication connection may carry. */
  static const char kinds[] = {'r', 'd', 'H', 'W', 'K', 0, (char)0xff};
  uint8_t buf[40];
  for (size_t i = 0; i < sizeof(kinds); i++) {
    memset(buf, 0, sizeof(buf));
    buf[0] = (uint8_t)kinds[i];
    pgs_lr_frame_t f;
    assert_int_equal(pgs_lr_frame_decode(buf, sizeof(buf), &f), PGS_EPROTO);
  }
}

static void test_status_encode(void **state) {
  uint8_t out[34 + 1];
  memset(out, 0xAA, sizeof(out));
  size_t n = pgs_lr_status_encode(out, 0x0000000101586DF0ull, 0x0102030405060708ull,
                                  0xFFFFFFFFFFFFFFFEull, 0x0003050C7F2D3CA9ll, true);
  static const uint8_t want[34] = {
      'r',  0x00, 0x00, 0x00, 0x01, 0x01, 0x58, 0x6D, 0xF0, /* written */
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,       /* flushed */
      0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE,       /* applied */
      0x00, 0x03, 0x05, 0x0C, 0x7F, 0x2D, 0x3C, 0xA9,       /* now */
      0x01,                                                 /* reply */
  };
  assert_int_equal(n, 34);
  assert_memory_equal(out, want, 34);
  assert_int_equal(out[34], 0xAA); /* nothing written past the 34 bytes */

  n = pgs_lr_status_encode(out, 0, 0, 0, -2, false);
  static const uint8_t want2[34] = {
      'r',  0, 0, 0, 0, 0, 0, 0, 0,    0,    0,    0,    0,    0,    0,    0,    0,
      0,    0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, /* a time before 2000 */
      0x00,
  };
  assert_int_equal(n, 34);
  assert_memory_equal(out, want2, 34);
}

static void test_lsn_format(void **state) {
  static const struct {
    uint64_t lsn;
    const char *text;
  } cases[] = {
      {0x19C3360, "0/19C3360"},
      {0x100000000ull, "1/0"},
      {0xFFFFFFFFFFFFFFFFull, "FFFFFFFF/FFFFFFFF"},
      {0, "0/0"},
      {0x0000ABCD000000EFull, "ABCD/EF"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char buf[24];
    memset(buf, 'x', sizeof(buf));
    pgs_lsn_format(cases[i].lsn, buf, sizeof(buf));
    assert_string_equal(buf, cases[i].text);
    uint64_t back = 1;
    assert_int_equal(pgs_lsn_parse(buf, &back), PGS_OK);
    assert_int_equal(back, cases[i].lsn);
  }
}

/* ---- messages, built ---- */

static void test_begin(void **state) {
  static builder_t b;
  start(&b, 'B');
  put64(&b, 0x0000000101586F78ull);
  put64(&b, 0x0003050C7E9A02DDull);
  put32(&b, 0xFFFFFFFE);
  decoded_t d;
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'B');
  assert_int_equal(d.m.lsn, 0x0000000101586F78ull);
  assert_int_equal(d.m.commit_time, 0x0003050C7E9A02DDll);
  assert_int_equal(d.m.xid, 0xFFFFFFFE);
  assert_int_equal(d.m.end_lsn, 0);
  assert_null(d.m.relcols);
  done(&d);

  /* A commit time before 2000 is negative. */
  start(&b, 'B');
  put64(&b, 1);
  put64(&b, (uint64_t)-1000000);
  put32(&b, 3);
  decode_ok(&b, &d);
  assert_int_equal(d.m.commit_time, -1000000);
  assert_int_equal(d.m.xid, 3);
  done(&d);
}

static void test_commit(void **state) {
  static builder_t b;
  start(&b, 'C');
  put8(&b, 0x5A); /* flags: unused, but their byte is read past */
  put64(&b, 0x0000000101586F78ull);
  put64(&b, 0x0000000101586FA8ull);
  put64(&b, 0x0003050C7E9A02DDull);
  decoded_t d;
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'C');
  assert_int_equal(d.m.lsn, 0x0000000101586F78ull);
  assert_int_equal(d.m.end_lsn, 0x0000000101586FA8ull);
  assert_int_equal(d.m.commit_time, 0x0003050C7E9A02DDll);
  assert_int_equal(d.m.xid, 0);
  done(&d);
}

static void test_origin(void **state) {
  static builder_t b;
  start(&b, 'O');
  put64(&b, 0x0000000000ABCDEFull);
  size_t at = b.n;
  put_str(&b, "orig1");
  decoded_t d;
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'O');
  assert_int_equal(d.m.lsn, 0xABCDEF);
  assert_ptr_equal(d.m.prefix, (const char *)d.buf + at);
  assert_string_equal(d.m.prefix, "orig1");
  done(&d);

  start(&b, 'O'); /* an empty name */
  put64(&b, 7);
  put_str(&b, "");
  decode_ok(&b, &d);
  assert_string_equal(d.m.prefix, "");
  done(&d);
}

static void test_relation(void **state) {
  static builder_t b;
  start(&b, 'R');
  put32(&b, 0x80004005);
  put_str(&b, "public");
  put_str(&b, "accounts");
  put8(&b, 'i');
  put16(&b, 4);
  put8(&b, 1);
  put_str(&b, "id");
  put32(&b, 20);
  put32(&b, 0xFFFFFFFF);
  put8(&b, 0);
  put_str(&b, "name");
  put32(&b, 1043);
  put32(&b, 16); /* varchar(12) */
  put8(&b, 1);
  put_str(&b, "Region Code");
  put32(&b, 0xFFFFFFF0);
  put32(&b, 0x7FFFFFFF);
  put8(&b, 2); /* a flag other than the key's */
  put_str(&b, "");
  put32(&b, 25);
  put32(&b, 0);

  decoded_t d;
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'R');
  assert_int_equal(d.m.relid, 0x80004005);
  assert_string_equal(d.m.nspname, "public");
  assert_string_equal(d.m.relname, "accounts");
  assert_int_equal(d.m.replident, 'i');
  assert_int_equal(d.m.nrelcols, 4);
  assert_non_null(d.m.relcols);
  const pgs_lr_relcol_t *c = d.m.relcols;
  assert_true(c[0].key);
  assert_string_equal(c[0].name, "id");
  assert_int_equal(c[0].type_oid, 20);
  assert_int_equal(c[0].typmod, -1);
  assert_false(c[1].key);
  assert_string_equal(c[1].name, "name");
  assert_int_equal(c[1].type_oid, 1043);
  assert_int_equal(c[1].typmod, 16);
  assert_true(c[2].key);
  assert_string_equal(c[2].name, "Region Code");
  assert_int_equal(c[2].type_oid, 0xFFFFFFF0);
  assert_int_equal(c[2].typmod, 0x7FFFFFFF);
  assert_false(c[3].key);
  assert_string_equal(c[3].name, "");
  assert_int_equal(c[3].type_oid, 25);
  assert_int_equal(c[3].typmod, 0);
  /* Names point into the message. */
  assert_true((const uint8_t *)c[3].name > d.buf && (const uint8_t *)c[3].name < d.buf + b.n);
  done(&d);

  /* pg_catalog is sent as an empty namespace; a relation may have no
   * columns; each replica identity keeps its letter. */
  static const char idents[] = {'d', 'n', 'f', 'i'};
  for (size_t i = 0; i < sizeof(idents); i++) {
    start(&b, 'R');
    put32(&b, 1259);
    put_str(&b, "");
    put_str(&b, "empty");
    put8(&b, (uint8_t)idents[i]);
    put16(&b, 0);
    decode_ok(&b, &d);
    assert_string_equal(d.m.nspname, "");
    assert_string_equal(d.m.relname, "empty");
    assert_int_equal(d.m.replident, idents[i]);
    assert_int_equal(d.m.nrelcols, 0);
    done(&d);
  }
}

static void test_type(void **state) {
  static builder_t b;
  start(&b, 'Y');
  put32(&b, 16385);
  put_str(&b, "public");
  put_str(&b, "mood");
  decoded_t d;
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'Y');
  assert_int_equal(d.m.relid, 16385);
  assert_string_equal(d.m.nspname, "public");
  assert_string_equal(d.m.relname, "mood");
  done(&d);
}

static void test_insert(void **state) {
  static builder_t b;
  static const uint8_t embedded[] = {'a', 0, 'b', 0xff, '\n', 0, 0};
  static const uint8_t binary[] = {0, 0, 0, 42};
  start(&b, 'I');
  put32(&b, 16389);
  put8(&b, 'N');
  put16(&b, 6);
  put8(&b, 'n');
  put8(&b, 'u');
  size_t empty_at = put_text(&b, "");
  size_t embedded_at = put_col(&b, 't', embedded, sizeof(embedded));
  size_t binary_at = put_col(&b, 'b', binary, sizeof(binary));
  size_t utf8_at = put_text(&b, "tab\tnl\n\xc3\xa9");

  decoded_t d;
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'I');
  assert_int_equal(d.m.relid, 16389);
  assert_int_equal(d.m.old_kind, 0);
  assert_int_equal(d.m.old_tuple.ncols, 0);
  assert_null(d.m.old_tuple.cols);
  assert_int_equal(d.m.new_tuple.ncols, 6);
  const pgs_lr_col_t *c = d.m.new_tuple.cols;
  assert_col_null(&c[0], 'n');
  assert_col_null(&c[1], 'u');
  assert_col_at(&d, &c[2], 't', empty_at, 0);
  assert_col_at(&d, &c[3], 't', embedded_at, sizeof(embedded));
  assert_memory_equal(c[3].data, embedded, sizeof(embedded));
  assert_col_at(&d, &c[4], 'b', binary_at, sizeof(binary));
  assert_memory_equal(c[4].data, binary, sizeof(binary));
  assert_col_at(&d, &c[5], 't', utf8_at, 9);
  assert_col_text(&c[5], "tab\tnl\n\xc3\xa9");
  done(&d);

  /* No columns at all. */
  start(&b, 'I');
  put32(&b, 1);
  put8(&b, 'N');
  put16(&b, 0);
  decode_ok(&b, &d);
  assert_int_equal(d.m.new_tuple.ncols, 0);
  done(&d);
}

/* The tuple the update and delete tests send: ('7', NULL, 'x\0y'). */
static void put_row(builder_t *b, const char *first) {
  put16(b, 3);
  put_text(b, first);
  put8(b, 'n');
  put_col(b, 't', "x\0y", 3);
}

static void assert_row(const pgs_lr_tuple_t *t, const char *first) {
  assert_int_equal(t->ncols, 3);
  assert_col_text(&t->cols[0], first);
  assert_col_null(&t->cols[1], 'n');
  assert_int_equal(t->cols[2].kind, 't');
  assert_int_equal(t->cols[2].len, 3);
  assert_memory_equal(t->cols[2].data, "x\0y", 3);
}

static void test_update(void **state) {
  static builder_t b;
  decoded_t d;

  /* No old tuple: the key did not change (replica identity default). */
  start(&b, 'U');
  put32(&b, 16389);
  put8(&b, 'N');
  put16(&b, 2);
  put_text(&b, "1");
  put8(&b, 'u');
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'U');
  assert_int_equal(d.m.relid, 16389);
  assert_int_equal(d.m.old_kind, 0);
  assert_int_equal(d.m.old_tuple.ncols, 0);
  assert_null(d.m.old_tuple.cols);
  assert_int_equal(d.m.new_tuple.ncols, 2);
  assert_col_text(&d.m.new_tuple.cols[0], "1");
  assert_col_null(&d.m.new_tuple.cols[1], 'u');
  done(&d);

  /* 'K': the old key, then the new row; 'O': the whole old row. */
  static const char tags[] = {'K', 'O'};
  for (size_t i = 0; i < sizeof(tags); i++) {
    start(&b, 'U');
    put32(&b, 0xFFFFFFFF);
    put8(&b, (uint8_t)tags[i]);
    put_row(&b, "old");
    put8(&b, 'N');
    put_row(&b, "new!");
    decode_ok(&b, &d);
    assert_int_equal(d.m.kind, 'U');
    assert_int_equal(d.m.relid, 0xFFFFFFFF);
    assert_int_equal(d.m.old_kind, tags[i]);
    assert_row(&d.m.old_tuple, "old");
    assert_row(&d.m.new_tuple, "new!");
    done(&d);
  }
}

static void test_delete(void **state) {
  static builder_t b;
  static const char tags[] = {'K', 'O'};
  for (size_t i = 0; i < sizeof(tags); i++) {
    decoded_t d;
    start(&b, 'D');
    put32(&b, 16396);
    put8(&b, (uint8_t)tags[i]);
    put_row(&b, "gone");
    decode_ok(&b, &d);
    assert_int_equal(d.m.kind, 'D');
    assert_int_equal(d.m.relid, 16396);
    assert_int_equal(d.m.old_kind, tags[i]);
    assert_row(&d.m.old_tuple, "gone");
    assert_int_equal(d.m.new_tuple.ncols, 0);
    assert_null(d.m.new_tuple.cols);
    done(&d);
  }
}

static void test_truncate(void **state) {
  static builder_t b;
  decoded_t d;
  start(&b, 'T');
  put32(&b, 3);
  put8(&b, 3); /* CASCADE | RESTART IDENTITY */
  put32(&b, 16401);
  put32(&b, 16396);
  put32(&b, 0xFFFFFFFF);
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'T');
  assert_int_equal(d.m.nrelids, 3);
  assert_int_equal(d.m.truncate_options, 3);
  assert_int_equal(d.m.relids[0], 16401);
  assert_int_equal(d.m.relids[1], 16396);
  assert_int_equal(d.m.relids[2], 0xFFFFFFFF);
  done(&d);

  start(&b, 'T');
  put32(&b, 1);
  put8(&b, 0);
  put32(&b, 42);
  decode_ok(&b, &d);
  assert_int_equal(d.m.nrelids, 1);
  assert_int_equal(d.m.truncate_options, 0);
  assert_int_equal(d.m.relids[0], 42);
  done(&d);
}

static void test_message(void **state) {
  static builder_t b;
  decoded_t d;
  static const uint8_t content[] = {0, 1, 2, 0, 0xff};
  start(&b, 'M');
  put8(&b, 1);
  put64(&b, 0x0000000101587F88ull);
  put_str(&b, "pgshard.reshard");
  put32(&b, sizeof(content));
  size_t at = b.n;
  put_bytes(&b, content, sizeof(content));
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'M');
  assert_true(d.m.transactional);
  assert_int_equal(d.m.lsn, 0x0000000101587F88ull);
  assert_string_equal(d.m.prefix, "pgshard.reshard");
  assert_int_equal(d.m.content_len, sizeof(content));
  assert_ptr_equal(d.m.content, d.buf + at);
  assert_memory_equal(d.m.content, content, sizeof(content));
  done(&d);

  /* Not transactional, an empty prefix and no content. */
  start(&b, 'M');
  put8(&b, 0);
  put64(&b, 5);
  put_str(&b, "");
  put32(&b, 0);
  decode_ok(&b, &d);
  assert_false(d.m.transactional);
  assert_int_equal(d.m.lsn, 5);
  assert_string_equal(d.m.prefix, "");
  assert_int_equal(d.m.content_len, 0);
  done(&d);
}

/* ---- malformed messages ---- */

static void test_unknown_message_kind(void **state) {
  /* Protocol version 2 and 3 kinds (streaming, two-phase) among them:
   * never asked for, so never decoded as something else. */
  static const char kinds[] = {'S', 'E', 'c', 'A', 'b', 'P', 'K', 'r', 'p', 'N', 0};
  uint8_t buf[64];
  for (size_t i = 0; i < sizeof(kinds); i++) {
    memset(buf, 0, sizeof(buf));
    buf[0] = (uint8_t)kinds[i];
    assert_refused(buf, sizeof(buf));
  }
  assert_refused(buf, 0);
}

static void test_too_many_columns(void **state) {
  static builder_t b;
  decoded_t d;
  /* PGS_LR_MAX_COLUMNS columns are read; one more is refused, even with
   * every column there. */
  for (int n = PGS_LR_MAX_COLUMNS; n <= PGS_LR_MAX_COLUMNS + 1; n++) {
    start(&b, 'I');
    put32(&b, 1);
    put8(&b, 'N');
    put16(&b, (uint16_t)n);
    for (int i = 0; i < n; i++) put8(&b, 'n');
    if (n == PGS_LR_MAX_COLUMNS) {
      d.buf = heap_copy(b.b, b.n);
      memset(&d.m, 0, sizeof(d.m));
      assert_int_equal(pgs_lr_msg_decode(d.buf, b.n, &d.m), PGS_OK);
      assert_int_equal(d.m.new_tuple.ncols, PGS_LR_MAX_COLUMNS);
      assert_col_null(&d.m.new_tuple.cols[PGS_LR_MAX_COLUMNS - 1], 'n');
      done(&d);
    } else {
      assert_builder_refused(&b);
    }

    start(&b, 'R');
    put32(&b, 1);
    put_str(&b, "s");
    put_str(&b, "wide");
    put8(&b, 'd');
    put16(&b, (uint16_t)n);
    for (int i = 0; i < n; i++) {
      put8(&b, 0);
      put_str(&b, "c");
      put32(&b, 23);
      put32(&b, 0xFFFFFFFF);
    }
    if (n == PGS_LR_MAX_COLUMNS) {
      d.buf = heap_copy(b.b, b.n);
      memset(&d.m, 0, sizeof(d.m));
      assert_int_equal(pgs_lr_msg_decode(d.buf, b.n, &d.m), PGS_OK);
      assert_int_equal(d.m.nrelcols, PGS_LR_MAX_COLUMNS);
      assert_string_equal(d.m.relcols[PGS_LR_MAX_COLUMNS - 1].name, "c");
      done(&d);
    } else {
      assert_builder_refused(&b);
    }
  }

  /* A count of 65535 with nothing after it. */
  start(&b, 'I');
  put32(&b, 1);
  put8(&b, 'N');
  put16(&b, 0xFFFF);
  assert_builder_refused(&b);
}

static void test_bad_column_kind(void **state) {
  static builder_t b;
  static const char kinds[] = {'x', 'N', 'T', 'B', 'U', 0, (char)0xff};
  for (size_t i = 0; i < sizeof(kinds); i++) {
    /* As the only column, and after a valid one. */
    for (int after = 0; after <= 1; after++) {
      start(&b, 'I');
      put32(&b, 1);
      put8(&b, 'N');
      put16(&b, (uint16_t)(1 + after));
      if (after) put_text(&b, "ok");
      put8(&b, (uint8_t)kinds[i]);
      put32(&b, 0); /* what a 't' would have as its length */
      assert_builder_refused(&b);
    }
  }
}

static void test_value_longer_than_message(void **state) {
  static builder_t b;
  static const char kinds[] = {'t', 'b'};
  for (size_t i = 0; i < sizeof(kinds); i++) {
    static const uint32_t lens[] = {4, 5, 0x7FFFFFFF, 0xFFFFFFFF};
    for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
      start(&b, 'I');
      put32(&b, 1);
      put8(&b, 'N');
      put16(&b, 1);
      put8(&b, (uint8_t)kinds[i]);
      put32(&b, lens[j]);
      put_bytes(&b, "abc", 3); /* 3 bytes left */
      assert_builder_refused(&b);
    }
  }
  /* A Message whose content is longer than what follows. */
  start(&b, 'M');
  put8(&b, 1);
  put64(&b, 1);
  put_str(&b, "p");
  put32(&b, 4);
  put_bytes(&b, "abc", 3);
  assert_builder_refused(&b);
}

static void test_wrong_tuple_tags(void **state) {
  static builder_t b;
  /* An Update's new tuple must be tagged 'N', with or without an old one. */
  static const char bad_new[] = {'K', 'O', 'n', 'X', 0};
  for (size_t i = 0; i < sizeof(bad_new); i++) {
    start(&b, 'U');
    put32(&b, 1);
    put8(&b, (uint8_t)bad_new[i]);
    put_row(&b, "new");
    if (bad_new[i] == 'K' || bad_new[i] == 'O') {
      put8(&b, (uint8_t)bad_new[i]); /* K or O twice: no N */
      put_row(&b, "new");
    }
    assert_builder_refused(&b);

    start(&b, 'U');
    put32(&b, 1);
    put8(&b, 'O');
    put_row(&b, "old");
    put8(&b, (uint8_t)bad_new[i]);
    put_row(&b, "new");
    assert_builder_refused(&b);
  }

  /* A Delete has no new tuple: an old one is required. */
  static const char bad_old[] = {'N', 'k', 'o', 'X', 0};
  for (size_t i = 0; i < sizeof(bad_old); i++) {
    start(&b, 'D');
    put32(&b, 1);
    put8(&b, (uint8_t)bad_old[i]);
    put_row(&b, "old");
    assert_builder_refused(&b);
  }
  for (size_t i = 0; i < sizeof(bad_old); i++) {
    start(&b, 'D'); /* nothing after the tag */
    put32(&b, 1);
    put8(&b, (uint8_t)bad_old[i]);
    assert_builder_refused(&b);
  }
  start(&b, 'D'); /* and not only the relation */
  put32(&b, 1);
  assert_builder_refused(&b);

  /* An Insert's tuple is 'N' too. */
  static const char bad_insert[] = {'K', 'O', 'n', 0};
  for (size_t i = 0; i < sizeof(bad_insert); i++) {
    start(&b, 'I');
    put32(&b, 1);
    put8(&b, (uint8_t)bad_insert[i]);
    put_row(&b, "new");
    assert_builder_refused(&b);
  }
}

static void test_truncate_count_beyond_message(void **state) {
  static builder_t b;
  static const uint32_t counts[] = {3, 4, 0x40000000, 0x7FFFFFFF, 0xFFFFFFFF};
  for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
    start(&b, 'T');
    put32(&b, counts[i]);
    put8(&b, 0);
    put32(&b, 16401);
    put32(&b, 16396); /* two relids follow */
    assert_builder_refused(&b);
  }
  /* Two relids and a partial third. */
  for (int extra = 1; extra <= 3; extra++) {
    start(&b, 'T');
    put32(&b, 2);
    put8(&b, 0);
    put32(&b, 16401);
    put32(&b, 16396);
    for (int i = 0; i < extra; i++) put8(&b, 0);
    assert_builder_refused(&b);
  }
}

/* A decode that fails after allocating leaves its allocations in the
 * message, and clear frees them (LeakSanitizer checks). */
static void test_clear_after_failed_decode(void **state) {
  static builder_t b;
  uint8_t *p;
  pgs_lr_msg_t m = {0};

  /* The old tuple is decoded, the new one's tag is wrong. */
  start(&b, 'U');
  put32(&b, 1);
  put8(&b, 'O');
  put_row(&b, "old");
  put8(&b, 'X');
  put_row(&b, "new");
  p = heap_copy(b.b, b.n);
  assert_int_equal(pgs_lr_msg_decode(p, b.n, &m), PGS_EPROTO);
  assert_non_null(m.old_tuple.cols);
  pgs_lr_msg_clear(&m);
  assert_cleared(&m);
  free(p);

  /* Both tuples allocated, then a byte too many. */
  start(&b, 'U');
  put32(&b, 1);
  put8(&b, 'K');
  put_row(&b, "old");
  put8(&b, 'N');
  put_row(&b, "new");
  put8(&b, 0);
  p = heap_copy(b.b, b.n);
  assert_int_equal(pgs_lr_msg_decode(p, b.n, &m), PGS_EPROTO);
  assert_non_null(m.old_tuple.cols);
  assert_non_null(m.new_tuple.cols);
  pgs_lr_msg_clear(&m);
  assert_cleared(&m);
  free(p);

  /* A relation whose last column is cut short. */
  start(&b, 'R');
  put32(&b, 1);
  put_str(&b, "s");
  put_str(&b, "r");
  put8(&b, 'd');
  put16(&b, 2);
  put8(&b, 1);
  put_str(&b, "a");
  put32(&b, 23);
  put32(&b, 0xFFFFFFFF);
  put8(&b, 0);
  put_str(&b, "b");
  put32(&b, 23);
  p = heap_copy(b.b, b.n);
  assert_int_equal(pgs_lr_msg_decode(p, b.n, &m), PGS_EPROTO);
  assert_non_null(m.relcols);
  pgs_lr_msg_clear(&m);
  assert_cleared(&m);
  free(p);

  /* A truncate with its relids, then a trailing byte. */
  start(&b, 'T');
  put32(&b, 1);
  put8(&b, 0);
  put32(&b, 9);
  put8(&b, 9);
  p = heap_copy(b.b, b.n);
  assert_int_equal(pgs_lr_msg_decode(p, b.n, &m), PGS_EPROTO);
  assert_non_null(m.relids);
  pgs_lr_msg_clear(&m);
  assert_cleared(&m);
  free(p);

  /* Clearing twice, or a message never decoded, is harmless. */
  pgs_lr_msg_clear(&m);
  assert_cleared(&m);
}

/* ---- what PostgreSQL 15 sent ----
 *
 * One transaction per change, on:
 *   CREATE TYPE mood AS ENUM ('sad', 'happy');
 *   CREATE TABLE t (id int PRIMARY KEY, name text, note text, big text,
 *                   m mood, v varchar(12));   -- big: STORAGE EXTERNAL
 *   CREATE TABLE full_t (a int, b text);       -- REPLICA IDENTITY FULL
 *   CREATE TABLE t3 (x int);
 *   CREATE PUBLICATION pub FOR ALL TABLES;
 * with proto_version '1', publication_names 'pub', messages 'true'. */

static void decode_real(const char *hex, builder_t *b, decoded_t *d) {
  from_hex(b, hex);
  decode_ok(b, d);
}

static void test_real_insert_update_delete(void **state) {
  static builder_t b;
  decoded_t d;

  decode_real("420000000001586f780003050c7e9a02dd000002db", &b, &d);
  assert_int_equal(d.m.kind, 'B');
  assert_int_equal(d.m.lsn, 0x1586F78);
  assert_int_equal(d.m.commit_time, 0x0003050C7E9A02DDll);
  assert_int_equal(d.m.xid, 731);
  done(&d);

  decode_real("59000040017075626c6963006d6f6f6400", &b, &d);
  assert_int_equal(d.m.kind, 'Y');
  assert_int_equal(d.m.relid, 16385);
  assert_string_equal(d.m.nspname, "public");
  assert_string_equal(d.m.relname, "mood");
  done(&d);

  decode_real(
      "52000040057075626c69630074006400060169640000000017ffffffff006e616d6500000000"
      "19ffffffff006e6f74650000000019ffffffff006269670000000019ffffffff006d00000040"
      "01ffffffff0076000000041300000010",
      &b, &d);
  assert_int_equal(d.m.kind, 'R');
  assert_int_equal(d.m.relid, 16389);
  assert_string_equal(d.m.nspname, "public");
  assert_string_equal(d.m.relname, "t");
  assert_int_equal(d.m.replident, 'd');
  assert_int_equal(d.m.nrelcols, 6);
  static const struct {
    bool key;
    const char *name;
    uint32_t type_oid;
    int32_t typmod;
  } cols[] = {{true, "id", 23, -1},   {false, "name", 25, -1}, {false, "note", 25, -1},
              {false, "big", 25, -1}, {false, "m", 16385, -1}, {false, "v", 1043, 16}};
  for (int i = 0; i < 6; i++) {
    assert_int_equal(d.m.relcols[i].key, cols[i].key);
    assert_string_equal(d.m.relcols[i].name, cols[i].name);
    assert_int_equal(d.m.relcols[i].type_oid, cols[i].type_oid);
    assert_int_equal(d.m.relcols[i].typmod, cols[i].typmod);
  }
  done(&d);

  /* INSERT INTO t VALUES (1, 'a', '', repeat('x', 5000), 'happy', 'vv') */
  from_hex(&b, "49000040054e000674000000013174000000016174000000007400001388");
  size_t big_at = b.n;
  for (int i = 0; i < 5000; i++) put8(&b, 'x');
  put_bytes(&b, "t\0\0\0\5happyt\0\0\0\2vv", 17);
  decode_ok(&b, &d);
  assert_int_equal(d.m.kind, 'I');
  assert_int_equal(d.m.new_tuple.ncols, 6);
  assert_col_text(&d.m.new_tuple.cols[0], "1");
  assert_col_text(&d.m.new_tuple.cols[1], "a");
  assert_col_text(&d.m.new_tuple.cols[2], "");
  assert_col_at(&d, &d.m.new_tuple.cols[3], 't', big_at, 5000);
  assert_col_text(&d.m.new_tuple.cols[4], "happy");
  assert_col_text(&d.m.new_tuple.cols[5], "vv");
  done(&d);

  /* (2, NULL, E'tab\tnl\né', NULL, NULL, NULL) */
  decode_real("49000040054e00067400000001326e7400000009746162096e6c0ac3a96e6e6e", &b, &d);
  assert_int_equal(d.m.relid, 16389);
  assert_col_text(&d.m.new_tuple.cols[0], "2");
  assert_col_null(&d.m.new_tuple.cols[1], 'n');
  assert_col_text(&d.m.new_tuple.cols[2], "tab\tnl\n\xc3\xa9");
  for (int i = 3; i < 6; i++) assert_col_null(&d.m.new_tuple.cols[i], 'n');
  done(&d);

  decode_real("43000000000001586f780000000001586fa80003050c7e9a02dd", &b, &d);
  assert_int_equal(d.m.kind, 'C');
  assert_int_equal(d.m.lsn, 0x1586F78);
  assert_int_equal(d.m.end_lsn, 0x1586FA8);
  assert_int_equal(d.m.commit_time, 0x0003050C7E9A02DDll);
  done(&d);

  /* UPDATE t SET name = 'b' WHERE id = 1: the TOASTed big is unchanged. */
  decode_real(
      "55000040054e00067400000001317400000001627400000000757400000005686170707974000"
      "000027676",
      &b, &d);
  assert_int_equal(d.m.kind, 'U');
  assert_int_equal(d.m.old_kind, 0);
  assert_col_text(&d.m.new_tuple.cols[1], "b");
  assert_col_null(&d.m.new_tuple.cols[3], 'u');
  assert_col_text(&d.m.new_tuple.cols[4], "happy");
  done(&d);

  /* UPDATE t SET id = 10 WHERE id = 2: the old key. */
  decode_real(
      "55000040054b00067400000001326e6e6e6e6e4e0006740000000231306e740000000974616209"
      "6e6c0ac3a96e6e6e",
      &b, &d);
  assert_int_equal(d.m.old_kind, 'K');
  assert_int_equal(d.m.old_tuple.ncols, 6);
  assert_col_text(&d.m.old_tuple.cols[0], "2");
  for (int i = 1; i < 6; i++) assert_col_null(&d.m.old_tuple.cols[i], 'n');
  assert_col_text(&d.m.new_tuple.cols[0], "10");
  assert_col_text(&d.m.new_tuple.cols[2], "tab\tnl\n\xc3\xa9");
  done(&d);

  decode_real("44000040054b0006740000000231306e6e6e6e6e", &b, &d);
  assert_int_equal(d.m.kind, 'D');
  assert_int_equal(d.m.old_kind, 'K');
  assert_col_text(&d.m.old_tuple.cols[0], "10");
  assert_int_equal(d.m.new_tuple.ncols, 0);
  done(&d);
}

static void test_real_full_identity_truncate_messages(void **state) {
  static builder_t b;
  decoded_t d;

  decode_real(
      "520000400c7075626c69630066756c6c5f740066000201610000000017ffffffff01620000000019"
      "ffffffff",
      &b, &d);
  assert_int_equal(d.m.relid, 16396);
  assert_string_equal(d.m.relname, "full_t");
  assert_int_equal(d.m.replident, 'f');
  assert_int_equal(d.m.nrelcols, 2);
  assert_true(d.m.relcols[0].key); /* FULL: every column is the identity */
  assert_true(d.m.relcols[1].key);
  assert_string_equal(d.m.relcols[1].name, "b");
  done(&d);

  decode_real("550000400c4f000274000000013174000000036f6e654e00027400000001317400000003756e6f", &b,
              &d);
  assert_int_equal(d.m.old_kind, 'O');
  assert_col_text(&d.m.old_tuple.cols[1], "one");
  assert_col_text(&d.m.new_tuple.cols[1], "uno");
  done(&d);

  decode_real("440000400c4f00027400000001317400000003756e6f", &b, &d);
  assert_int_equal(d.m.old_kind, 'O');
  assert_col_text(&d.m.old_tuple.cols[0], "1");
  assert_col_text(&d.m.old_tuple.cols[1], "uno");
  done(&d);

  /* TRUNCATE t3, full_t RESTART IDENTITY CASCADE */
  decode_real("540000000203000040110000400c", &b, &d);
  assert_int_equal(d.m.kind, 'T');
  assert_int_equal(d.m.nrelids, 2);
  assert_int_equal(d.m.truncate_options, 3);
  assert_int_equal(d.m.relids[0], 16401);
  assert_int_equal(d.m.relids[1], 16396);
  done(&d);

  /* pg_logical_emit_message(true, 'pfx', '\x00010200ff'::bytea) */
  decode_real("4d010000000001587f88706678000000000500010200ff", &b, &d);
  assert_int_equal(d.m.kind, 'M');
  assert_true(d.m.transactional);
  assert_int_equal(d.m.lsn, 0x1587F88);
  assert_string_equal(d.m.prefix, "pfx");
  assert_int_equal(d.m.content_len, 5);
  assert_memory_equal(d.m.content, "\x00\x01\x02\x00\xff", 5);
  done(&d);

  /* pg_logical_emit_message(false, 'nt', 'hello') */
  decode_real("4d000000000001587ff86e74000000000568656c6c6f", &b, &d);
  assert_false(d.m.transactional);
  assert_int_equal(d.m.lsn, 0x1587FF8);
  assert_string_equal(d.m.prefix, "nt");
  assert_memory_equal(d.m.content, "hello", 5);
  done(&d);

  /* A transaction replayed under replication origin 'orig1'. */
  decode_real("4f0000000000abcdef6f7269673100", &b, &d);
  assert_int_equal(d.m.kind, 'O');
  assert_int_equal(d.m.lsn, 0xABCDEF);
  assert_string_equal(d.m.prefix, "orig1");
  done(&d);
}

static void test_real_frames(void **state) {
  static builder_t b;
  pgs_lr_frame_t f;

  from_hex(&b, "6b00000000015858280003050c7f2d3ca900");
  assert_int_equal(pgs_lr_frame_decode(b.b, b.n, &f), PGS_OK);
  assert_int_equal(f.kind, 'k');
  assert_int_equal(f.wal_end, 0x1585828);
  assert_int_equal(f.send_time, 0x0003050C7F2D3CA9ll);
  assert_false(f.reply_requested);

  /* The Begin above, as it came in its XLogData. */
  from_hex(&b,
           "770000000001586df00000000001586df00003050c7f2d3dd1420000000001586f780003050c7e"
           "9a02dd000002db");
  assert_int_equal(pgs_lr_frame_decode(b.b, b.n, &f), PGS_OK);
  assert_int_equal(f.kind, 'w');
  assert_int_equal(f.wal_start, 0x1586DF0);
  assert_int_equal(f.wal_end, 0x1586DF0);
  assert_int_equal(f.send_time, 0x0003050C7F2D3DD1ll);
  assert_int_equal(f.payload_len, 21);
  pgs_lr_msg_t m = {0};
  assert_int_equal(pgs_lr_msg_decode(f.payload, f.payload_len, &m), PGS_OK);
  assert_int_equal(m.kind, 'B');
  assert_int_equal(m.xid, 731);
  pgs_lr_msg_clear(&m);

  /* Messages sent outside a transaction's WAL (Relation, Type) come
   * with zero positions. */
  from_hex(&b,
           "77000000000000000000000000000000000003050c7f2d3e0459000040017075626c6963006d"
           "6f6f6400");
  assert_int_equal(pgs_lr_frame_decode(b.b, b.n, &f), PGS_OK);
  assert_int_equal(f.wal_start, 0);
  assert_int_equal(f.wal_end, 0);
  assert_int_equal(pgs_lr_msg_decode(f.payload, f.payload_len, &m), PGS_OK);
  assert_int_equal(m.kind, 'Y');
  pgs_lr_msg_clear(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frame_xlogdata),
      cmocka_unit_test(test_frame_keepalive),
      cmocka_unit_test(test_frame_unknown_kind),
      cmocka_unit_test(test_status_encode),
      cmocka_unit_test(test_lsn_format),
      cmocka_unit_test(test_begin),
      cmocka_unit_test(test_commit),
      cmocka_unit_test(test_origin),
      cmocka_unit_test(test_relation),
      cmocka_unit_test(test_type),
      cmocka_unit_test(test_insert),
      cmocka_unit_test(test_update),
      cmocka_unit_test(test_delete),
      cmocka_unit_test(test_truncate),
      cmocka_unit_test(test_message),
      cmocka_unit_test(test_unknown_message_kind),
      cmocka_unit_test(test_too_many_columns),
      cmocka_unit_test(test_bad_column_kind),
      cmocka_unit_test(test_value_longer_than_message),
      cmocka_unit_test(test_wrong_tuple_tags),
      cmocka_unit_test(test_truncate_count_beyond_message),
      cmocka_unit_test(test_clear_after_failed_decode),
      cmocka_unit_test(test_real_insert_update_delete),
      cmocka_unit_test(test_real_full_identity_truncate_messages),
      cmocka_unit_test(test_real_frames),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
