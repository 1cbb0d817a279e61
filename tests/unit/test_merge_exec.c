/*
 * test_merge_exec.c — router/merge_exec.c: the merge executor fed by hand
 * (specs filled in directly, RowDescription and DataRow bodies built here,
 * two or three parts) and its output rows compared exactly with what one
 * PostgreSQL 15 holding every row answers (expected values were taken from
 * a real server): plain concatenation with OFFSET/LIMIT, ORDER BY of every
 * kind, grouped and ungrouped aggregates, DISTINCT, hidden columns, and
 * the failures with their SQLSTATE and message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "pgshard/merge.h"

/* ---- specs ---- */

static pgs_merge_spec_t spec;
static pgs_merge_column_t spec_columns[16];
static int16_t spec_group[8];
static pgs_merge_key_t spec_keys[8];

static void spec_reset(void) {
  memset(&spec, 0, sizeof(spec));
  memset(spec_keys, 0, sizeof(spec_keys));
  memset(spec_columns, 0, sizeof(spec_columns));
  spec.columns = spec_columns;
  spec.group = spec_group;
  spec.keys = spec_keys;
}

static void add_key(int column, bool desc, bool nulls_first) {
  spec_keys[spec.nkeys++] =
      (pgs_merge_key_t){.column = (int16_t)column, .desc = desc, .nulls_first = nulls_first};
}

/* Grouped over NCOLUMNS columns; AGGS one letter per column: n(one) c(ount)
 * s(um) <(min) >(max) a(vg). */
static void grouped(const char *aggs) {
  spec.grouped = true;
  spec.ncolumns = (int)strlen(aggs);
  for (int i = 0; aggs[i]; i++) {
    static const struct {
      char letter;
      uint8_t agg;
    } kinds[] = {{'n', PGS_AGG_NONE}, {'c', PGS_AGG_COUNT}, {'s', PGS_AGG_SUM},
                 {'<', PGS_AGG_MIN},  {'>', PGS_AGG_MAX},   {'a', PGS_AGG_AVG}};
    size_t k = 0;
    while (k < PGS_ARRAY_LEN(kinds) && kinds[k].letter != aggs[i]) k++;
    assert_true(k < PGS_ARRAY_LEN(kinds));
    spec_columns[i].agg = kinds[k].agg;
  }
}

static void add_group(int column) { spec_group[spec.ngroup++] = (int16_t)column; }

/* ---- messages ---- */

static pgs_buf_t body;

/* A RowDescription of N columns of OIDS, all in FORMAT. */
static void build_rowdesc(int n, const uint32_t *oids, const int16_t *formats) {
  body.len = 0;
  pgs_buf_put_i16(&body, (int16_t)n);
  for (int i = 0; i < n; i++) {
    char name[16];
    snprintf(name, sizeof(name), "c%d", i);
    pgs_buf_put_cstr(&body, name);
    pgs_buf_put_i32(&body, 16384);
    pgs_buf_put_i16(&body, (int16_t)(i + 1));
    pgs_buf_put_i32(&body, (int32_t)oids[i]);
    pgs_buf_put_i16(&body, -1);
    pgs_buf_put_i32(&body, -1);
    pgs_buf_put_i16(&body, formats ? formats[i] : 0);
  }
}

static pgs_status_t describe_with(pgs_merge_t *m, int n, const uint32_t *oids,
                                  const int16_t *formats) {
  build_rowdesc(n, oids, formats);
  return pgs_merge_describe(m, body.data, body.len);
}

/* Describe every part (each sends its own RowDescription). */
static void describe(pgs_merge_t *m, int nparts, int n, const uint32_t *oids,
                     const int16_t *formats) {
  for (int p = 0; p < nparts; p++)
    if (describe_with(m, n, oids, formats) != PGS_OK)
      fail_msg("describe: %s %s", pgs_merge_error(m)->sqlstate, pgs_merge_error(m)->message);
  assert_true(pgs_merge_described(m));
}

static void row_start(int n) {
  body.len = 0;
  pgs_buf_put_i16(&body, (int16_t)n);
}

static void row_text(const char *s) {
  if (!s) {
    pgs_buf_put_i32(&body, -1);
    return;
  }
  pgs_buf_put_i32(&body, (int32_t)strlen(s));
  pgs_buf_put(&body, s, strlen(s));
}

/* A binary value given as hex digits. */
static void row_hex(const char *hex) {
  size_t n = strlen(hex) / 2;
  pgs_buf_put_i32(&body, (int32_t)n);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    pgs_buf_put_u8(&body, (uint8_t)v);
  }
}

static void row_int8(int64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)v >> (56 - 8 * i));
  pgs_buf_put_i32(&body, 8);
  pgs_buf_put(&body, b, 8);
}

static pgs_merge_verdict_t row_feed(pgs_merge_t *m, int part) {
  return pgs_merge_row(m, part, body.data, body.len);
}

/* A text row of N values (NULL pointer: SQL NULL) from PART. */
static pgs_merge_verdict_t feed(pgs_merge_t *m, int part, int n, ...) {
  va_list ap;
  va_start(ap, n);
  row_start(n);
  for (int i = 0; i < n; i++) row_text(va_arg(ap, const char *));
  va_end(ap);
  return row_feed(m, part);
}

/* ---- output ---- */

static pgs_buf_t out;
static char rendered[8192];
static size_t rendered_len;
static unsigned hex_mask; /* columns render() shows as \x hex */

/* Append to rendered, silently cut at its size. */
PGS_PRINTF(1, 2)
static void put(const char *fmt, ...) {
  if (rendered_len >= sizeof(rendered) - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(rendered + rendered_len, sizeof(rendered) - rendered_len, fmt, ap);
  va_end(ap);
  rendered_len += (size_t)n;
  if (rendered_len > sizeof(rendered) - 1) rendered_len = sizeof(rendered) - 1;
}

/* OUT's DataRows as "v|v;v|v" (NULL for NULL; columns in BINMASK, when 8
 * bytes, as int8). Fails on anything that is not a whole 'D' message. */
static const char *render(unsigned binmask) {
  size_t at = 0;
  bool first = true;
  rendered_len = 0;
  rendered[0] = '\0';
  while (at < out.len) {
    assert_true(out.len - at >= 5);
    assert_int_equal(out.data[at], 'D');
    size_t mlen = pgs_get_u32(out.data + at + 1);
    assert_true(at + 1 + mlen <= out.len);
    const uint8_t *p = out.data + at + 5, *end = out.data + at + 1 + mlen;
    int n = (int16_t)((p[0] << 8) | p[1]);
    p += 2;
    if (!first) put(";");
    first = false;
    for (int i = 0; i < n; i++) {
      assert_true(end - p >= 4);
      int32_t len = (int32_t)pgs_get_u32(p);
      p += 4;
      if (i) put("|");
      if (len < 0) {
        put("NULL");
        continue;
      }
      assert_true(end - p >= len);
      if ((hex_mask >> i) & 1) {
        put("\\x");
        for (int k = 0; k < len; k++) put("%02x", p[k]);
      } else if ((binmask >> i) & 1 && len == 8) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) v = v << 8 | p[k];
        put("%lld", (long long)(int64_t)v);
      } else {
        put("%.*s", (int)len, p);
      }
      p += len;
    }
    assert_true(p == end);
    at += 1 + mlen;
  }
  return rendered;
}

/* Finish M and compare its rows (and the row count for the tag). */
static void expect_rows(pgs_merge_t *m, uint64_t nrows, unsigned binmask, const char *rows) {
  uint64_t count = 12345;
  out.len = 0;
  assert_int_equal(pgs_merge_finish(m, &out, &count), PGS_OK);
  assert_string_equal(render(binmask), rows);
  assert_int_equal(count, nrows);
}

static void expect_error(const pgs_merge_t *m, const char *sqlstate, const char *message) {
  const pgs_value_error_t *err = pgs_merge_error(m);
  assert_string_equal(err->sqlstate, sqlstate);
  if (message) assert_string_equal(err->message, message);
}

static void expect_finish_fails(pgs_merge_t *m) {
  uint64_t count = 7;
  out.len = 0;
  assert_int_equal(pgs_merge_finish(m, &out, &count), PGS_EINVAL);
  assert_int_equal(out.len, 0);
}

static int setup(void **state) {
  spec_reset();
  hex_mask = 0;
  pgs_buf_init(&body);
  pgs_buf_init(&out);
  return 0;
}

static int teardown(void **state) {
  pgs_buf_free(&body);
  pgs_buf_free(&out);
  return 0;
}

static const uint32_t INT4_TEXT[] = {PGS_OID_INT4, PGS_OID_TEXT, PGS_OID_TEXT, PGS_OID_TEXT};
#define BIG ((size_t)1 << 30)

/* ---- concatenation ---- */

static void test_concat_offset_limit(void **state) {
  pgs_merge_t *m = pgs_merge_new(&spec, 3, 3, 2, BIG);
  describe(m, 3, 2, INT4_TEXT, NULL);
  /* Rows come interleaved from three parts; the first two are skipped,
   * the next three pass, the rest are dropped. */
  assert_int_equal(feed(m, 1, 2, "1", "a"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 0, 2, "2", NULL), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 2, 2, "3", "c"), PGS_MERGE_PASS);
  assert_int_equal(feed(m, 0, 2, "4", "d"), PGS_MERGE_PASS);
  assert_int_equal(feed(m, 1, 2, "5", "e"), PGS_MERGE_PASS);
  assert_int_equal(feed(m, 2, 2, "6", "f"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 0, 2, "7", "g"), PGS_MERGE_DROP);
  expect_rows(m, 3, 0, "");
  pgs_merge_free(m);
}

static void test_concat_unlimited(void **state) {
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, 0); /* nothing held: no cap reached */
  describe(m, 2, 2, INT4_TEXT, NULL);
  for (int i = 0; i < 10; i++) assert_int_equal(feed(m, i % 2, 2, "1", "x"), PGS_MERGE_PASS);
  expect_rows(m, 10, 0, "");
  pgs_merge_free(m);

  /* LIMIT 0, and an OFFSET past the end. */
  m = pgs_merge_new(&spec, 2, 0, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "x"), PGS_MERGE_DROP);
  expect_rows(m, 0, 0, "");
  pgs_merge_free(m);
  m = pgs_merge_new(&spec, 2, -1, 5, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  for (int i = 0; i < 5; i++) assert_int_equal(feed(m, 1, 2, "1", "x"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 0, 2, "9", "y"), PGS_MERGE_PASS);
  expect_rows(m, 1, 0, "");
  pgs_merge_free(m);
}

static void test_concat_hidden_columns(void **state) {
  /* A hidden column without ORDER BY: held, in arrival order, projected. */
  spec.nhidden = 1;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, 2, 1, BIG);
  describe(m, 2, 3, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 1, 3, "h1", "1", "a"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 0, 3, "h2", "2", NULL), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 3, NULL, "3", "c"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 3, "h4", "4", "d"), PGS_MERGE_DROP);
  expect_rows(m, 2, 0, "2|NULL;3|c");
  pgs_merge_free(m);
}

static void test_client_rowdesc(void **state) {
  static const uint32_t oids[] = {PGS_OID_INT8, PGS_OID_NUMERIC, PGS_OID_TEXT};
  build_rowdesc(3, oids, NULL);
  spec.nhidden = 2;
  out.len = 0;
  pgs_merge_client_rowdesc(&spec, body.data, body.len, &out);
  assert_int_equal(out.data[0], 'T');
  assert_int_equal(pgs_get_u32(out.data + 1), out.len - 1);
  static const uint32_t want_oids[] = {PGS_OID_TEXT};
  build_rowdesc(1, want_oids, NULL);
  /* The kept field is "c2" (attnum 3) as the shard described it. */
  assert_int_equal(out.len - 5, body.len);
  assert_memory_equal(out.data + 5, "\0\1c2\0", 5);
  assert_int_equal(out.data[5 + 2 + 3 + 4 + 1], 3);
  assert_memory_equal(out.data + 5 + 2 + 3 + 6, body.data + 2 + 3 + 6, body.len - 11);

  /* No hidden column: the same body. */
  build_rowdesc(3, oids, NULL);
  spec.nhidden = 0;
  out.len = 0;
  pgs_merge_client_rowdesc(&spec, body.data, body.len, &out);
  assert_int_equal(out.len, body.len + 5);
  assert_memory_equal(out.data + 5, body.data, body.len);
}

/* ---- ORDER BY ---- */

static void test_order_int(void **state) {
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 2, INT4_TEXT, NULL);
  /* Each part sorted, as the shards return them; ties: part 0 first, then
   * arrival order within a part. */
  size_t held = pgs_merge_held(m);
  assert_int_equal(feed(m, 1, 2, "-5", "p1a"), PGS_MERGE_HELD);
  assert_true(pgs_merge_held(m) > held); /* what the proxy charges the client */
  held = pgs_merge_held(m);
  assert_int_equal(feed(m, 0, 2, "3", "p0a"), PGS_MERGE_HELD);
  assert_true(pgs_merge_held(m) > held);
  assert_int_equal(feed(m, 2, 2, "3", "p2a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "3", "p1b"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "3", "p1c"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "20", "p0b"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 2, 2, "100", "p2b"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "1000", "p1d"), PGS_MERGE_HELD);
  expect_rows(m, 8, 0, "-5|p1a;3|p0a;3|p1b;3|p1c;3|p2a;20|p0b;100|p2b;1000|p1d");
  pgs_merge_free(m);

  spec_reset();
  add_key(0, true, true);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "9", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "10", "b"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "-1", "c"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "9", "d"), PGS_MERGE_HELD);
  expect_rows(m, 4, 0, "10|b;9|a;9|d;-1|c");
  pgs_merge_free(m);
}

/* Values 2, NULL, 1 on part 0 and NULL, 3 on part 1, in KEY's order. */
static const char *order_nulls(bool desc, bool nulls_first) {
  spec_reset();
  add_key(0, desc, nulls_first);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "2", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, NULL, "b"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, NULL, "c"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "1", "d"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "3", "e"), PGS_MERGE_HELD);
  uint64_t count;
  out.len = 0;
  assert_int_equal(pgs_merge_finish(m, &out, &count), PGS_OK);
  assert_int_equal(count, 5);
  pgs_merge_free(m);
  return render(0);
}

static void test_order_nulls(void **state) {
  assert_string_equal(order_nulls(false, false), "1|d;2|a;3|e;NULL|c;NULL|b");
  assert_string_equal(order_nulls(false, true), "NULL|c;NULL|b;1|d;2|a;3|e");
  assert_string_equal(order_nulls(true, true), "NULL|c;NULL|b;3|e;2|a;1|d");
  assert_string_equal(order_nulls(true, false), "3|e;2|a;1|d;NULL|c;NULL|b");
}

static void test_order_multiple_keys(void **state) {
  /* ORDER BY c1 ASC, c0 DESC NULLS LAST, c2 */
  add_key(1, false, false);
  add_key(0, true, false);
  add_key(2, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 3, INT4_TEXT, NULL);
  feed(m, 0, 3, "1", "a", "z");
  feed(m, 0, 3, NULL, "a", "y");
  feed(m, 0, 3, "5", "b", "x");
  feed(m, 1, 3, "7", "a", "w");
  feed(m, 1, 3, "1", "a", "b");
  feed(m, 1, 3, "5", "b", "a");
  expect_rows(m, 6, 0, "7|a|w;1|a|b;1|a|z;NULL|a|y;5|b|a;5|b|x");
  pgs_merge_free(m);
}

static void test_order_text(void **state) {
  /* Bytewise, as the C collation: uppercase first, shorter prefix first. */
  add_key(1, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  feed(m, 0, 2, "1", "");
  feed(m, 0, 2, "2", "a");
  feed(m, 0, 2, "3", "abd");
  feed(m, 1, 2, "4", "B");
  feed(m, 1, 2, "5", "ab");
  feed(m, 1, 2, "6", "abc");
  expect_rows(m, 6, 0, "1|;4|B;2|a;5|ab;6|abc;3|abd");
  pgs_merge_free(m);
}

static void test_order_numeric(void **state) {
  static const uint32_t oids[] = {PGS_OID_NUMERIC, PGS_OID_TEXT};
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, NULL);
  feed(m, 0, 2, "-1", "a");
  feed(m, 0, 2, "10.0", "b");
  feed(m, 0, 2, "NaN", "c");
  feed(m, 1, 2, "9.5", "d");
  feed(m, 1, 2, "10", "e");
  feed(m, 1, 2, "1000", "f");
  /* 10.0 = 10: part 0's first. */
  expect_rows(m, 6, 0, "-1|a;9.5|d;10.0|b;10|e;1000|f;NaN|c");
  pgs_merge_free(m);
}

static void test_order_timestamp(void **state) {
  static const uint32_t oids[] = {PGS_OID_TIMESTAMP, PGS_OID_TEXT};
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 2, oids, NULL);
  feed(m, 0, 2, "-infinity", "a");
  feed(m, 0, 2, "2024-03-01 09:59:59.999999", "b");
  feed(m, 1, 2, "0001-01-01 00:00:00 BC", "c");
  feed(m, 1, 2, "2024-03-01 10:00:00", "d");
  feed(m, 2, 2, "1999-12-31 23:00:00", "e");
  feed(m, 2, 2, "infinity", "f");
  expect_rows(m, 6, 0,
              "-infinity|a;0001-01-01 00:00:00 BC|c;1999-12-31 23:00:00|e;"
              "2024-03-01 09:59:59.999999|b;2024-03-01 10:00:00|d;infinity|f");
  pgs_merge_free(m);

  /* timestamptz, DESC. */
  static const uint32_t tz[] = {PGS_OID_TIMESTAMPTZ};
  spec_reset();
  add_key(0, true, true);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 1, tz, NULL);
  feed(m, 0, 1, "2024-01-02 00:00:00+00");
  feed(m, 0, 1, "2023-12-31 23:59:59.5+00");
  feed(m, 1, 1, "2024-01-01 12:00:00+00");
  expect_rows(m, 3, 0, "2024-01-02 00:00:00+00;2024-01-01 12:00:00+00;2023-12-31 23:59:59.5+00");
  pgs_merge_free(m);
}

static void test_order_binary_int8(void **state) {
  static const uint32_t oids[] = {PGS_OID_INT8, PGS_OID_INT8};
  static const int16_t fmts[] = {1, 1};
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, fmts);
  /* Negative values sort below positive ones (not bytewise). */
  static const int64_t p0[] = {INT64_MIN, -300, -1, 0, 256};
  static const int64_t p1[] = {-2, 1, 255, INT64_MAX};
  for (size_t i = 0; i < PGS_ARRAY_LEN(p0); i++) {
    row_start(2);
    row_int8(p0[i]);
    row_int8(0);
    assert_int_equal(row_feed(m, 0), PGS_MERGE_HELD);
  }
  for (size_t i = 0; i < PGS_ARRAY_LEN(p1); i++) {
    row_start(2);
    row_int8(p1[i]);
    row_int8(1);
    assert_int_equal(row_feed(m, 1), PGS_MERGE_HELD);
  }
  expect_rows(m, 9, 3,
              "-9223372036854775808|0;-300|0;-2|1;-1|0;0|0;1|1;255|1;256|0;"
              "9223372036854775807|1");
  pgs_merge_free(m);
}

static void test_order_limit_offset_hidden_key(void **state) {
  /* SELECT name FROM t ORDER BY id DESC LIMIT 3 OFFSET 2: id is hidden;
   * each shard ran LIMIT 5. */
  spec.nhidden = 1;
  add_key(0, true, true);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, 3, 2, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  const char *names[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
  for (int i = 9; i >= 0; i--) {
    char id[8];
    snprintf(id, sizeof(id), "%d", i * 10);
    assert_int_equal(feed(m, i % 2, 2, id, names[i]), PGS_MERGE_HELD);
  }
  expect_rows(m, 3, 0, "h;g;f");
  pgs_merge_free(m);

  /* OFFSET past every row. */
  m = pgs_merge_new(&spec, 2, 3, 20, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  feed(m, 0, 2, "1", "x");
  feed(m, 1, 2, "2", "y");
  expect_rows(m, 0, 0, "");
  pgs_merge_free(m);

  /* LIMIT 0: nothing held, nothing compared. */
  m = pgs_merge_new(&spec, 2, 0, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "x"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "x", "y"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 1, "2"), PGS_MERGE_FAILED); /* still checked */
  pgs_merge_free(m);
  m = pgs_merge_new(&spec, 2, 0, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "x"), PGS_MERGE_DROP);
  expect_rows(m, 0, 0, "");
  pgs_merge_free(m);
}

static void test_order_unsorted_parts(void **state) {
  /* Parts that do not arrive sorted (a grouped part's order is its own)
   * still come out sorted: many runs. */
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, 5, 1, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  static const int vals[] = {42, 7, 19, 3, 88, 3, 61, 0, 25, 14, 9, 70, 33, 1};
  for (size_t i = 0; i < PGS_ARRAY_LEN(vals); i++) {
    char v[8], tag[8];
    snprintf(v, sizeof(v), "%d", vals[i]);
    snprintf(tag, sizeof(tag), "t%zu", i);
    feed(m, (int)(i % 2), 2, v, tag);
  }
  /* 0 1 3(t3) 3(t5) 7 9 14 ...: OFFSET 1 LIMIT 5 */
  expect_rows(m, 5, 0, "1|t13;3|t3;3|t5;7|t1;9|t10");
  pgs_merge_free(m);
}

/* ---- aggregates ---- */

static const uint32_t AGG_OIDS[] = {
    PGS_OID_INT8, PGS_OID_INT8, PGS_OID_TEXT, PGS_OID_INT8,
    PGS_OID_INT8, PGS_OID_TEXT, PGS_OID_TEXT, PGS_OID_NUMERIC,
};

/* SELECT g, count(*), sum(x), min(s), max(s), avg(x) FROM t GROUP BY g
 * (x int4): hidden sum(x), count(x) for the avg. */
static void agg_spec(void) {
  grouped("scncs<>a");
  spec.nhidden = 2;
  spec_columns[7].avg_sum = 0;
  spec_columns[7].avg_count = 1;
  add_group(2);
}

static void agg_feed(pgs_merge_t *m) {
  /* Shard 0 and 1 as PostgreSQL computed them; shard 2 has no rows. */
  feed(m, 0, 8, "3", "2", "a", "2", "3", "b", "m", "1.5000000000000000");
  feed(m, 1, 8, "10", "1", "a", "1", "10", "c", "c", "10.0000000000000000");
  feed(m, 0, 8, NULL, "0", "b", "1", NULL, NULL, NULL, NULL);
  feed(m, 1, 8, "7", "1", "c", "1", "7", "q", "q", "7.0000000000000000");
  feed(m, 0, 8, "5", "1", NULL, "1", "5", "z", "z", "5.0000000000000000");
  feed(m, 1, 8, NULL, "0", NULL, "1", NULL, "y", "y", NULL);
}

static void test_grouped(void **state) {
  agg_spec();
  pgs_merge_t *m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 8, AGG_OIDS, NULL);
  agg_feed(m);
  /* No ORDER BY: groups in the order they were first seen. */
  expect_rows(m, 4, 0,
              "a|3|13|b|m|4.3333333333333333;b|1|NULL|NULL|NULL|NULL;"
              "c|1|7|q|q|7.0000000000000000;NULL|2|5|y|z|5.0000000000000000");
  pgs_merge_free(m);
}

static void test_grouped_order_limit(void **state) {
  /* ... ORDER BY g NULLS FIRST LIMIT 3 */
  agg_spec();
  add_key(2, false, true);
  pgs_merge_t *m = pgs_merge_new(&spec, 3, 3, 0, BIG);
  describe(m, 3, 8, AGG_OIDS, NULL);
  agg_feed(m);
  expect_rows(m, 3, 0,
              "NULL|2|5|y|z|5.0000000000000000;a|3|13|b|m|4.3333333333333333;"
              "b|1|NULL|NULL|NULL|NULL");
  pgs_merge_free(m);

  /* ... ORDER BY count(*) DESC, sum(x) DESC (NULLS FIRST) OFFSET 1: by
   * the merged values, not the parts'. */
  spec_reset();
  agg_spec();
  add_key(3, true, true);
  add_key(4, true, true);
  m = pgs_merge_new(&spec, 3, -1, 1, BIG);
  describe(m, 3, 8, AGG_OIDS, NULL);
  agg_feed(m);
  expect_rows(m, 3, 0,
              "NULL|2|5|y|z|5.0000000000000000;b|1|NULL|NULL|NULL|NULL;"
              "c|1|7|q|q|7.0000000000000000");
  pgs_merge_free(m);
}

static void test_ungrouped(void **state) {
  /* SELECT count(*), sum(x), min(x), max(x), avg(x) FROM t: one row per
   * shard, one row out; shard 2 is empty. */
  static const uint32_t oids[] = {PGS_OID_INT8, PGS_OID_INT8, PGS_OID_INT8,   PGS_OID_INT8,
                                  PGS_OID_INT4, PGS_OID_INT4, PGS_OID_NUMERIC};
  grouped("sccs<>a");
  spec.nhidden = 2;
  spec_columns[6].avg_sum = 0;
  spec_columns[6].avg_count = 1;
  pgs_merge_t *m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 7, oids, NULL);
  assert_int_equal(feed(m, 2, 7, NULL, "0", "0", NULL, NULL, NULL, NULL), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 7, "8", "3", "4", "8", "1", "5", "2.6666666666666667"),
                   PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 7, "17", "2", "3", "17", "7", "10", "8.5000000000000000"),
                   PGS_MERGE_HELD);
  expect_rows(m, 1, 0, "7|25|1|10|5.0000000000000000");
  pgs_merge_free(m);

  /* Every shard empty: count 0, the rest NULL. */
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 7, oids, NULL);
  feed(m, 0, 7, NULL, "0", "0", NULL, NULL, NULL, NULL);
  feed(m, 1, 7, NULL, "0", "0", NULL, NULL, NULL, NULL);
  expect_rows(m, 1, 0, "0|NULL|NULL|NULL|NULL");
  pgs_merge_free(m);

  /* avg of 1, 2, 2 over two shards: numeric_div's scale. */
  spec_reset();
  grouped("sca");
  spec.nhidden = 2;
  spec_columns[2].avg_sum = 0;
  spec_columns[2].avg_count = 1;
  static const uint32_t avg_oids[] = {PGS_OID_INT8, PGS_OID_INT8, PGS_OID_NUMERIC};
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 3, avg_oids, NULL);
  feed(m, 0, 3, "1", "1", "1.00000000000000000000");
  feed(m, 1, 3, "4", "2", "2.0000000000000000");
  expect_rows(m, 1, 0, "1.6666666666666667");
  pgs_merge_free(m);

  /* sum(numeric): display scale of the widest input. */
  spec_reset();
  grouped("s");
  static const uint32_t num[] = {PGS_OID_NUMERIC};
  m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 1, num, NULL);
  feed(m, 0, 1, "1.5");
  feed(m, 1, 1, "2.25");
  feed(m, 2, 1, "-0.75");
  expect_rows(m, 1, 0, "3.00");
  pgs_merge_free(m);
}

static void test_grouped_null_keys_two_columns(void **state) {
  /* GROUP BY a, b: (NULL, x) and (x, NULL) and ("", NULL) are different
   * groups, NULL equals NULL. */
  static const uint32_t oids[] = {PGS_OID_TEXT, PGS_OID_TEXT, PGS_OID_INT8};
  grouped("nnc");
  add_group(0);
  add_group(1);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 3, oids, NULL);
  feed(m, 0, 3, NULL, "x", "1");
  feed(m, 0, 3, "x", NULL, "2");
  feed(m, 0, 3, "", NULL, "4");
  feed(m, 0, 3, NULL, NULL, "8");
  feed(m, 1, 3, "x", NULL, "16");
  feed(m, 1, 3, NULL, NULL, "32");
  feed(m, 1, 3, NULL, "x", "64");
  feed(m, 1, 3, NULL, "", "128");
  expect_rows(m, 5, 0, "NULL|x|65;x|NULL|18;|NULL|4;NULL|NULL|40;NULL||128");
  pgs_merge_free(m);
}

static void test_grouped_many_groups(void **state) {
  /* Enough groups to grow the table several times; every group's count
   * checked. */
  static const uint32_t oids[] = {PGS_OID_INT4, PGS_OID_INT8};
  grouped("nc");
  add_group(0);
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 2, oids, NULL);
  for (int p = 0; p < 3; p++)
    for (int g = 0; g < 5000; g += p + 1) {
      char k[16], c[16];
      snprintf(k, sizeof(k), "%d", g);
      snprintf(c, sizeof(c), "%d", p + 1);
      assert_int_equal(feed(m, p, 2, k, c), PGS_MERGE_HELD);
    }
  uint64_t count;
  out.len = 0;
  assert_int_equal(pgs_merge_finish(m, &out, &count), PGS_OK);
  assert_int_equal(count, 5000);
  render(0);
  const char *r = rendered;
  for (int g = 0; g < 5000; g++) {
    int want = 1 + (g % 2 == 0 ? 2 : 0) + (g % 3 == 0 ? 3 : 0);
    char expect[32];
    snprintf(expect, sizeof(expect), "%d|%d", g, want);
    if (g < 200) { /* rendered holds the first rows only */
      assert_memory_equal(r, expect, strlen(expect));
      r += strlen(expect) + 1;
    }
  }
  pgs_merge_free(m);
}

static void test_grouped_binary(void **state) {
  /* GROUP BY k (int8) with count(*), sum(int4 x) -> int8, max(k), all in
   * binary. */
  static const uint32_t oids[] = {PGS_OID_INT8, PGS_OID_INT8, PGS_OID_INT8, PGS_OID_INT8};
  static const int16_t fmts[] = {1, 1, 1, 1};
  grouped("ncs>");
  add_group(0);
  add_key(0, true, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 4, oids, fmts);
  static const int64_t rows[][5] = {
      /* part, k, count, sum, max */
      {0, -1, 2, -10, 5},          {0, 7, 1, 3, 3},     {1, -1, 3, 100, 4}, {1, 256, 1, 1, 9},
      {1, 7, 2, INT64_MIN / 2, 2}, {0, 256, 1, -1, -9},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(rows); i++) {
    row_start(4);
    for (int c = 1; c < 5; c++) row_int8(rows[i][c]);
    assert_int_equal(row_feed(m, (int)rows[i][0]), PGS_MERGE_HELD);
  }
  expect_rows(m, 3, 0xf, "256|2|0|9;7|3|-4611686018427387901|3;-1|5|90|5");
  pgs_merge_free(m);
}

static void test_binary_numeric_sum_avg(void **state) {
  /* SELECT sum(x), avg(x) FROM t (x int8), results in binary: the shards'
   * numeric partial sums (1+2 and 10+9223372036854775807) added, and the
   * avg computed from them; bytes as numeric_send gives them. */
  static const uint32_t oids[] = {PGS_OID_NUMERIC, PGS_OID_INT8, PGS_OID_NUMERIC, PGS_OID_NUMERIC};
  static const int16_t fmts[] = {1, 1, 1, 1};
  grouped("scsa");
  spec.nhidden = 2;
  spec_columns[3].avg_sum = 0;
  spec_columns[3].avg_count = 1;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 4, oids, fmts);
  row_start(4);
  row_hex("00010000000000000003");
  row_int8(2);
  row_hex("00010000000000000003");
  row_hex("000200000000000100011388");
  assert_int_equal(row_feed(m, 0), PGS_MERGE_HELD);
  row_start(4);
  row_hex("0005000400000000039a0d2c0170156516b9");
  row_int8(2);
  row_hex("0005000400000000039a0d2c0170156516b9");
  row_hex("000600040000000101cd069600b80ab21ee41388");
  assert_int_equal(row_feed(m, 1), PGS_MERGE_HELD);
  hex_mask = 3;
  expect_rows(m, 1, 0,
              "\\x0005000400000000039a0d2c0170156516bc|"
              "\\x000500040000000000e616d3005c05590f73");
  pgs_merge_free(m);
}

/* ---- DISTINCT ---- */

static void test_distinct(void **state) {
  spec.distinct = true;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "1", "a"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "1", NULL), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "1", ""), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "1", NULL), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "2", "a"), PGS_MERGE_HELD);
  expect_rows(m, 4, 0, "1|a;1|NULL;1|;2|a");
  pgs_merge_free(m);

  /* With ORDER BY and LIMIT/OFFSET. */
  spec_reset();
  spec.distinct = true;
  add_key(1, true, false);
  m = pgs_merge_new(&spec, 2, 2, 1, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  feed(m, 0, 2, "1", "d");
  feed(m, 0, 2, "2", "c");
  feed(m, 0, 2, "3", "b");
  feed(m, 1, 2, "1", "d");
  feed(m, 1, 2, "2", "c");
  feed(m, 1, 2, "2", "a");
  expect_rows(m, 2, 0, "2|c;3|b");
  pgs_merge_free(m);

  /* LIMIT without ORDER BY: rows past the window are not kept. */
  spec_reset();
  spec.distinct = true;
  m = pgs_merge_new(&spec, 2, 2, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "1", "a"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "2", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "3", "a"), PGS_MERGE_DROP);
  expect_rows(m, 2, 0, "1|a;2|a");
  pgs_merge_free(m);
}

static void test_distinct_hidden_and_grouped(void **state) {
  /* DISTINCT compares the visible columns only. */
  spec.distinct = true;
  spec.nhidden = 1;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "2", "a"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "2", "b"), PGS_MERGE_HELD);
  expect_rows(m, 2, 0, "a;b");
  pgs_merge_free(m);

  /* SELECT DISTINCT count(*) FROM t GROUP BY g ORDER BY 1: g hidden. */
  static const uint32_t oids[] = {PGS_OID_TEXT, PGS_OID_INT8};
  spec_reset();
  grouped("nc");
  spec.nhidden = 1;
  spec.distinct = true;
  add_group(0);
  add_key(1, false, false);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, NULL);
  feed(m, 0, 2, "a", "1");
  feed(m, 0, 2, "b", "2");
  feed(m, 0, 2, "c", "3");
  feed(m, 1, 2, "a", "1");
  feed(m, 1, 2, "d", "2");
  feed(m, 1, 2, "e", "5");
  /* a 2, b 2, c 3, d 2, e 5 */
  expect_rows(m, 3, 0, "2;3;5");
  pgs_merge_free(m);
}

/* ---- HAVING ---- */

static pgs_merge_cond_t spec_having[32];

static void having_node(int kind, int op, int nargs, int left, int right) {
  spec.having = spec_having;
  spec_having[spec.nhaving++] = (pgs_merge_cond_t){
      .kind = (uint8_t)kind,
      .op = (uint8_t)op,
      .nargs = (int16_t)nargs,
      .left = (int16_t)left,
      .right = (int16_t)right,
  };
}

static void test_having(void **state) {
  /* SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > 1: the shards
   * send the constant back as hidden column 0 (bigint, as the server typed
   * it against count(*)). */
  static const uint32_t oids[] = {PGS_OID_INT8, PGS_OID_TEXT, PGS_OID_INT8};
  grouped("nnc");
  spec.nhidden = 1;
  add_group(1);
  having_node(PGS_COND_CMP, PGS_CMP_GT, 0, 2, 0);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 3, oids, NULL);
  feed(m, 0, 3, "1", "a", "1");
  feed(m, 0, 3, "1", "b", "1");
  feed(m, 0, 3, "1", "c", "5");
  feed(m, 1, 3, "1", "a", "1");
  feed(m, 1, 3, "1", "d", "1");
  /* Each shard's partial groups would all fail or pass on their own. */
  expect_rows(m, 2, 0, "a|2;c|5");
  pgs_merge_free(m);

  /* HAVING sum(x) >= 2.5 AND (min(s) IS NULL OR NOT max(s) = 'q') over
   * sum bigint against a numeric constant (hidden 0), min/max of text
   * against a text constant (hidden 1): three-valued logic. */
  static const uint32_t oids2[] = {PGS_OID_NUMERIC, PGS_OID_TEXT, PGS_OID_TEXT,
                                   PGS_OID_INT8,    PGS_OID_TEXT, PGS_OID_TEXT};
  spec_reset();
  grouped("nnns<>");
  spec.nhidden = 2;
  add_group(2);
  having_node(PGS_COND_AND, 0, 2, 0, 0);
  having_node(PGS_COND_CMP, PGS_CMP_GE, 0, 3, 0);
  having_node(PGS_COND_OR, 0, 2, 0, 0);
  having_node(PGS_COND_IS_NULL, 0, 0, 4, PGS_COND_NULL);
  having_node(PGS_COND_NOT, 0, 1, 0, 0);
  having_node(PGS_COND_CMP, PGS_CMP_EQ, 0, 5, 1);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 6, oids2, NULL);
  feed(m, 0, 6, "2.5", "q", "a", "1", "q", "q"); /* a: 3, q..z */
  feed(m, 1, 6, "2.5", "q", "a", "2", "z", "z");
  feed(m, 0, 6, "2.5", "q", "b", "2", "q", "q");   /* b: 2 < 2.5 */
  feed(m, 1, 6, "2.5", "q", "c", "3", "q", "q");   /* c: max = q */
  feed(m, 0, 6, "2.5", "q", "d", "9", NULL, NULL); /* d: min NULL */
  feed(m, 1, 6, "2.5", "q", "e", NULL, "r", "r");  /* e: sum NULL: unknown */
  add_key(2, false, false);
  expect_rows(m, 2, 0, "a|3|q|z;d|9|NULL|NULL");
  pgs_merge_free(m);

  /* NOT (sum > NULL) is unknown too; count(*) BETWEEN 2 AND 3 over
   * int8 against int4 constants. */
  static const uint32_t oids3[] = {PGS_OID_INT4, PGS_OID_INT4, PGS_OID_TEXT, PGS_OID_INT8};
  spec_reset();
  grouped("nnnc");
  spec.nhidden = 2;
  add_group(2);
  having_node(PGS_COND_OR, 0, 2, 0, 0);
  having_node(PGS_COND_NOT, 0, 1, 0, 0);
  having_node(PGS_COND_CMP, PGS_CMP_GT, 0, 3, PGS_COND_NULL);
  having_node(PGS_COND_AND, 0, 2, 0, 0);
  having_node(PGS_COND_CMP, PGS_CMP_GE, 0, 3, 0);
  having_node(PGS_COND_CMP, PGS_CMP_LE, 0, 3, 1);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 4, oids3, NULL);
  feed(m, 0, 4, "2", "3", "a", "1");
  feed(m, 1, 4, "2", "3", "b", "2");
  feed(m, 1, 4, "2", "3", "a", "2");
  feed(m, 0, 4, "2", "3", "c", "4");
  expect_rows(m, 2, 0, "a|3;b|2");
  pgs_merge_free(m);
}

static void test_having_one_group(void **state) {
  /* SELECT count(*) FROM t HAVING count(*) > 2 (no GROUP BY): one group,
   * kept or not. */
  static const uint32_t oids[] = {PGS_OID_INT8, PGS_OID_INT8};
  for (int want = 0; want < 2; want++) {
    spec_reset();
    grouped("nc");
    spec.nhidden = 1;
    spec.one_group = true;
    having_node(PGS_COND_CMP, PGS_CMP_GT, 0, 1, 0);
    pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
    describe(m, 2, 2, oids, NULL);
    feed(m, 0, 2, "2", want ? "2" : "1");
    feed(m, 1, 2, "2", "1");
    expect_rows(m, (uint64_t)want, 0, want ? "3" : "");
    pgs_merge_free(m);
  }
  /* No shard sent a row (they grouped by a DISTINCT aggregate's x): the
   * one group is made up, count 0, the others NULL. */
  static const uint32_t oids2[] = {PGS_OID_INT4, PGS_OID_INT8, PGS_OID_INT8, PGS_OID_INT8};
  spec_reset();
  grouped("nccs");
  spec.nhidden = 1;
  spec.one_group = true;
  spec_columns[1].distinct = true;
  spec_columns[1].distinct_arg = 0;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 4, oids2, NULL);
  expect_rows(m, 1, 0, "0|0|NULL");
  pgs_merge_free(m);
  /* ... but not with LIMIT 0, nor with GROUP BY. */
  m = pgs_merge_new(&spec, 2, 0, 0, BIG);
  describe(m, 2, 4, oids2, NULL);
  expect_rows(m, 0, 0, "");
  pgs_merge_free(m);
  spec.one_group = false;
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 4, oids2, NULL);
  expect_rows(m, 0, 0, "");
  pgs_merge_free(m);
}

static void test_having_errors(void **state) {
  /* A comparison pgshard cannot make: refused when the types are known. */
  static const uint32_t oids[] = {PGS_OID_DATE, PGS_OID_TIMESTAMP};
  grouped("<>");
  spec.one_group = true;
  having_node(PGS_COND_CMP, PGS_CMP_GT, 0, 0, 1);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, oids, NULL), PGS_EINVAL);
  expect_error(m, "0A000",
               "HAVING cannot compare values of types date and timestamp without time zone "
               "across shards");
  pgs_merge_free(m);
  /* A tree that does not fit its spec. */
  spec_reset();
  grouped("nc");
  having_node(PGS_COND_AND, 0, 2, 0, 0);
  having_node(PGS_COND_IS_NULL, 0, 0, 1, PGS_COND_NULL);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  expect_error(m, "XX000", "merge spec: a HAVING condition that does not fit");
  pgs_merge_free(m);
  spec_reset();
  grouped("nc");
  having_node(PGS_COND_CMP, PGS_CMP_EQ, 0, 1, 2);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);
  /* A value that does not parse fails the merge when it is compared. */
  static const uint32_t oids2[] = {PGS_OID_NUMERIC, PGS_OID_INT8};
  spec_reset();
  grouped("nc");
  spec.nhidden = 1;
  spec.one_group = true;
  having_node(PGS_COND_CMP, PGS_CMP_LT, 0, 1, 0);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids2, NULL);
  feed(m, 0, 2, "1.x", "2");
  expect_finish_fails(m);
  expect_error(m, "22P02", "invalid input syntax for type numeric: \"1.x\"");
  pgs_merge_free(m);
}

/* ---- DISTINCT aggregates ---- */

static void test_distinct_aggregates(void **state) {
  /* SELECT g, count(DISTINCT x), count(*), sum(DISTINCT x) FROM t GROUP
   * BY g (x numeric): the shards group by x too and send x first. */
  static const uint32_t oids[] = {PGS_OID_NUMERIC, PGS_OID_TEXT, PGS_OID_INT8, PGS_OID_INT8,
                                  PGS_OID_NUMERIC};
  grouped("nncss");
  spec.nhidden = 1;
  add_group(1);
  spec_columns[2].distinct = spec_columns[4].distinct = true;
  spec_columns[2].distinct_arg = spec_columns[4].distinct_arg = 0;
  add_key(1, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 5, oids, NULL);
  feed(m, 0, 5, "1.0", "a", "1", "3", "1.0");
  feed(m, 0, 5, "2", "a", "1", "1", "2");
  feed(m, 0, 5, NULL, "a", "0", "2", NULL);
  feed(m, 1, 5, "1.00", "a", "1", "4", "1.00"); /* 1.0 again */
  feed(m, 1, 5, "3", "b", "1", "1", "3");
  feed(m, 1, 5, "2", "c", "1", "1", "2"); /* 2 in another group counts */
  expect_rows(m, 3, 0, "a|2|10|3.0;b|1|1|3;c|1|1|2");
  pgs_merge_free(m);

  /* count(DISTINCT x) FILTER (WHERE ...): a shard whose rows of x all
   * failed the filter sends 0; another shard may still count x. And
   * avg(DISTINCT x) from its hidden sum and count of DISTINCT x. */
  static const uint32_t oids2[] = {PGS_OID_INT8, PGS_OID_INT8, PGS_OID_INT4, PGS_OID_INT8,
                                   PGS_OID_NUMERIC};
  spec_reset();
  grouped("scnca");
  spec.nhidden = 3;
  spec.one_group = true;
  spec_columns[0].distinct = spec_columns[1].distinct = spec_columns[3].distinct = true;
  spec_columns[0].distinct_arg = spec_columns[1].distinct_arg = spec_columns[3].distinct_arg = 2;
  spec_columns[4].avg_sum = 0;
  spec_columns[4].avg_count = 1;
  m = pgs_merge_new(&spec, 3, -1, 0, BIG);
  describe(m, 3, 5, oids2, NULL);
  /* x, then count(DISTINCT x) FILTER (WHERE y > 0) */
  feed(m, 0, 5, "5", "1", "5", "0", "5.0000000000000000");
  feed(m, 1, 5, "5", "1", "5", "1", "5.0000000000000000");
  feed(m, 2, 5, "5", "1", "5", "1", "5.0000000000000000");
  feed(m, 0, 5, "2", "1", "2", "1", "2.0000000000000000");
  feed(m, 2, 5, "7", "1", "7", "0", "7.0000000000000000");
  /* avg(DISTINCT x) over 5, 2, 7 = 14 / 3 */
  expect_rows(m, 1, 0, "2|4.6666666666666667");
  pgs_merge_free(m);
}

static void test_distinct_aggregates_cap(void **state) {
  /* Every value of x counted is held, and bounded. */
  static const uint32_t oids[] = {PGS_OID_INT4, PGS_OID_INT8};
  grouped("nc");
  spec.nhidden = 1;
  spec.one_group = true;
  spec_columns[1].distinct = true;
  spec_columns[1].distinct_arg = 0;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, 16384);
  describe(m, 2, 2, oids, NULL);
  pgs_merge_verdict_t v = PGS_MERGE_HELD;
  int i = 0;
  for (; i < 100000 && v == PGS_MERGE_HELD; i++) {
    char x[16];
    snprintf(x, sizeof(x), "%d", i);
    v = feed(m, i % 2, 2, x, "1");
  }
  assert_int_equal(v, PGS_MERGE_FAILED);
  assert_true(i > 100 && i < 16384 / 16);
  expect_error(m, "54000", NULL);
  pgs_merge_free(m);
  /* Under the cap: one group, and what it held counted. */
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, NULL);
  for (i = 0; i < 3000; i++) {
    char x[16];
    snprintf(x, sizeof(x), "%d", i % 1000);
    assert_int_equal(feed(m, i % 2, 2, x, "1"), PGS_MERGE_HELD);
  }
  assert_true(pgs_merge_held(m) > 1000 * 24);
  expect_rows(m, 1, 0, "1000");
  pgs_merge_free(m);
  /* x of a type pgshard cannot tell apart by value. */
  static const uint32_t interval[] = {PGS_OID_INTERVAL, PGS_OID_INT8};
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, interval, NULL), PGS_EINVAL);
  expect_error(m, "0A000", "cannot merge count(DISTINCT ...) over type interval across shards");
  pgs_merge_free(m);
}

/* ---- DISTINCT ON ---- */

static void test_distinct_on(void **state) {
  /* SELECT DISTINCT ON (g) id, g FROM t ORDER BY g, id DESC: each shard
   * sends its first row of each g; the first overall stays. The sort keys
   * are the ORDER BY's, then DISTINCT ON's. */
  spec.distinct_on = 1;
  add_key(1, false, false);
  add_key(0, true, false);
  add_key(1, false, false);
  static const uint32_t oids[] = {PGS_OID_INT4, PGS_OID_TEXT};
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, NULL);
  feed(m, 0, 2, "9", "a");
  feed(m, 0, 2, "4", "b");
  feed(m, 0, 2, "1", NULL);
  feed(m, 1, 2, "12", "a");
  feed(m, 1, 2, "3", "c");
  feed(m, 1, 2, "8", NULL);
  expect_rows(m, 4, 0, "12|a;4|b;3|c;8|NULL");
  pgs_merge_free(m);

  /* DISTINCT ON (n) ... ORDER BY n, id OFFSET 1 LIMIT 2, n numeric and
   * hidden: 1.0 and 1.00 are one key. */
  spec_reset();
  spec.distinct_on = 1;
  spec.nhidden = 1;
  add_key(0, false, false);
  add_key(1, false, false);
  add_key(0, false, false);
  static const uint32_t oids2[] = {PGS_OID_NUMERIC, PGS_OID_INT4};
  m = pgs_merge_new(&spec, 2, 2, 1, BIG);
  describe(m, 2, 2, oids2, NULL);
  feed(m, 0, 2, "0.5", "7");
  feed(m, 0, 2, "1.00", "5");
  feed(m, 0, 2, "2", "1");
  feed(m, 1, 2, "0.50", "3");
  feed(m, 1, 2, "1.0", "2");
  feed(m, 1, 2, "3", "6");
  /* keys 0.5 (3), 1 (2), 2 (1), 3 (6) */
  expect_rows(m, 2, 0, "2;1");
  pgs_merge_free(m);

  /* DISTINCT ON (a, b) ... ORDER BY a: sorted by a, then b. */
  spec_reset();
  spec.distinct_on = 2;
  add_key(0, false, false);
  add_key(0, false, false);
  add_key(1, false, false);
  static const uint32_t oids3[] = {PGS_OID_TEXT, PGS_OID_INT4, PGS_OID_INT4};
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 3, oids3, NULL);
  feed(m, 0, 3, "a", "2", "10");
  feed(m, 0, 3, "a", "1", "11");
  feed(m, 1, 3, "a", "1", "12");
  feed(m, 1, 3, "b", NULL, "13");
  feed(m, 0, 3, "b", NULL, "14");
  expect_rows(m, 3, 0, "a|1|11;a|2|10;b|NULL|14");
  pgs_merge_free(m);

  /* A spec whose key is longer than its sort keys cannot run. */
  spec_reset();
  spec.distinct_on = 2;
  add_key(0, false, false);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  expect_error(m, "XX000", "merge spec: DISTINCT ON over 2 of 1 sort keys");
  pgs_merge_free(m);
}

/* ---- equal values in other forms ---- */

static void test_group_keys_by_value(void **state) {
  /* GROUP BY n, f, c (numeric, float8, bpchar): 1.0 = 1.00, -0 = 0,
   * 'a ' = 'a'; the first form seen is the one shown. */
  static const uint32_t oids[] = {PGS_OID_NUMERIC, PGS_OID_FLOAT8, PGS_OID_BPCHAR, PGS_OID_INT8};
  grouped("nnnc");
  add_group(0);
  add_group(1);
  add_group(2);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 4, oids, NULL);
  feed(m, 0, 4, "1.0", "-0", "a ", "1");
  feed(m, 1, 4, "1.00", "0", "a", "2");
  feed(m, 1, 4, "1.000", "0", "b", "4");
  feed(m, 0, 4, "NaN", "NaN", "b", "8");
  feed(m, 1, 4, "NaN", "NaN", "b ", "16");
  feed(m, 0, 4, "-0.0", "1e0", NULL, "32");
  feed(m, 1, 4, "0", "1", NULL, "64");
  expect_rows(m, 4, 0, "1.0|-0|a |3;1.000|0|b|4;NaN|NaN|b|24;-0.0|1e0|NULL|96");
  pgs_merge_free(m);

  /* In binary: numeric 1.0 (dscale 1) and 1.00 (dscale 2), float8 -0 and 0. */
  static const uint32_t oids2[] = {PGS_OID_NUMERIC, PGS_OID_FLOAT8, PGS_OID_INT8};
  static const int16_t fmts[] = {1, 1, 1};
  spec_reset();
  grouped("nnc");
  add_group(0);
  add_group(1);
  hex_mask = 0x3;
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 3, oids2, fmts);
  row_start(3);
  row_hex(
      "0001000000000001"
      "0001");
  row_hex("8000000000000000");
  row_int8(1);
  row_feed(m, 0);
  row_start(3);
  row_hex(
      "0001000000000002"
      "0001");
  row_hex("0000000000000000");
  row_int8(2);
  row_feed(m, 1);
  expect_rows(m, 1, 0x4, "\\x00010000000000010001|\\x8000000000000000|3");
  pgs_merge_free(m);
}

static void test_distinct_by_value(void **state) {
  /* SELECT DISTINCT n, s: numeric by value, text by bytes. */
  static const uint32_t oids[] = {PGS_OID_NUMERIC, PGS_OID_TEXT};
  spec.distinct = true;
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, NULL);
  assert_int_equal(feed(m, 0, 2, "2.50", "x"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "2.5", "x"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "2.5", "x "), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, NULL, "x"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, NULL, "x"), PGS_MERGE_DROP);
  assert_int_equal(feed(m, 1, 2, "-0", "x"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 0, 2, "0.000", "x"), PGS_MERGE_DROP);
  expect_rows(m, 4, 0, "2.50|x;2.5|x ;NULL|x;-0|x");
  pgs_merge_free(m);
  /* A value that does not parse fails rather than guess. */
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, oids, NULL);
  assert_int_equal(feed(m, 0, 2, "one", "x"), PGS_MERGE_FAILED);
  expect_error(m, "22P02", NULL);
  pgs_merge_free(m);
}

static void test_value_equality_and_mixed_compare(void **state) {
  pgs_value_error_t err;
  bool eq;
  uint64_t h1, h2;
#define S(x) (const uint8_t *)(x), strlen(x)
  assert_int_equal(pgs_value_equal(PGS_OID_NUMERIC, 0, S("1.0"), S("1.000"), &eq, &err), PGS_OK);
  assert_true(eq);
  assert_int_equal(pgs_value_hash(PGS_OID_NUMERIC, 0, S("1.0"), 7, &h1, &err), PGS_OK);
  assert_int_equal(pgs_value_hash(PGS_OID_NUMERIC, 0, S("01.000"), 7, &h2, &err), PGS_OK);
  assert_true(h1 == h2);
  assert_int_equal(pgs_value_hash(PGS_OID_NUMERIC, 0, S("1.01"), 7, &h2, &err), PGS_OK);
  assert_true(h1 != h2);
  assert_int_equal(pgs_value_hash(PGS_OID_NUMERIC, 0, S("-0.00"), 7, &h1, &err), PGS_OK);
  assert_int_equal(pgs_value_hash(PGS_OID_NUMERIC, 0, S("0"), 7, &h2, &err), PGS_OK);
  assert_true(h1 == h2);
  assert_int_equal(pgs_value_hash(PGS_OID_FLOAT4, 0, S("-0"), 1, &h1, &err), PGS_OK);
  assert_int_equal(pgs_value_hash(PGS_OID_FLOAT4, 0, S("0"), 1, &h2, &err), PGS_OK);
  assert_true(h1 == h2);
  assert_int_equal(pgs_value_equal(PGS_OID_TEXT, 0, S("a"), S("a "), &eq, &err), PGS_OK);
  assert_false(eq);
  assert_int_equal(pgs_value_equal(PGS_OID_BPCHAR, 0, S("a"), S("a  "), &eq, &err), PGS_OK);
  assert_true(eq);
  assert_int_equal(pgs_value_equal(PGS_OID_NUMERIC, 0, S("x"), S("1"), &eq, &err), PGS_EINVAL);
  assert_string_equal(err.sqlstate, "22P02");
  assert_true(pgs_value_bytes_equal(PGS_OID_TEXT) && pgs_value_bytes_equal(PGS_OID_INT8));
  assert_false(pgs_value_bytes_equal(PGS_OID_NUMERIC) || pgs_value_bytes_equal(PGS_OID_FLOAT8));

  /* Across types, as the server's cross-type operators. */
  static const struct {
    uint32_t a;
    const char *x;
    uint32_t b;
    const char *y;
    int want;
  } cases[] = {
      {PGS_OID_INT8, "3", PGS_OID_NUMERIC, "2.5", 1},
      {PGS_OID_INT8, "9223372036854775807", PGS_OID_NUMERIC, "9223372036854775806.9", 1},
      {PGS_OID_INT4, "-2", PGS_OID_INT8, "-2", 0},
      {PGS_OID_INT2, "7", PGS_OID_FLOAT8, "7.5", -1},
      {PGS_OID_NUMERIC, "0.1", PGS_OID_FLOAT8, "0.1", 0},
      {PGS_OID_NUMERIC, "NaN", PGS_OID_INT8, "5", 1},
      {PGS_OID_FLOAT4, "NaN", PGS_OID_FLOAT8, "Infinity", 1},
      {PGS_OID_TEXT, "b", PGS_OID_VARCHAR, "ab", 1},
      {PGS_OID_BPCHAR, "a  ", PGS_OID_TEXT, "a", 0},
      {PGS_OID_BPCHAR, "a  ", PGS_OID_BPCHAR, "a", 0},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    int r = 9;
    assert_true(pgs_value_comparable_with(cases[i].a, cases[i].b));
    if (pgs_value_compare_mixed(cases[i].a, 0, S(cases[i].x), cases[i].b, 0, S(cases[i].y), &r,
                                &err) != PGS_OK)
      fail_msg("case %zu: %s", i, err.message);
    if ((r > 0) - (r < 0) != cases[i].want) fail_msg("case %zu: %d", i, r);
  }
  /* One type in two formats: int8 text 5 against binary 5. */
  int r = 9;
  static const uint8_t five[8] = {0, 0, 0, 0, 0, 0, 0, 5};
  assert_int_equal(
      pgs_value_compare_mixed(PGS_OID_INT8, 0, S("5"), PGS_OID_INT8, 1, five, 8, &r, &err), PGS_OK);
  assert_int_equal(r, 0);
  assert_int_equal(
      pgs_value_compare_mixed(PGS_OID_DATE, 1, five, 4, PGS_OID_DATE, 0, S("2000-01-01"), &r, &err),
      PGS_OK);
  assert_int_equal(r, 0);
  assert_false(pgs_value_comparable_with(PGS_OID_DATE, PGS_OID_TIMESTAMP));
  assert_false(pgs_value_comparable_with(PGS_OID_TEXT, PGS_OID_INT4));
  assert_false(pgs_value_comparable_with(PGS_OID_INTERVAL, PGS_OID_INTERVAL));
  assert_int_equal(
      pgs_value_compare_mixed(PGS_OID_TEXT, 0, S("1"), PGS_OID_INT4, 0, S("1"), &r, &err),
      PGS_EINVAL);
  assert_string_equal(err.sqlstate, "0A000");
  assert_string_equal(err.message, "cannot compare values of types text and integer across shards");
#undef S
}

/* ---- failures ---- */

static void test_error_column_count(void **state) {
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 1, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 3, "1", "a", "b"), PGS_MERGE_FAILED);
  expect_error(m, "08P01", "a shard sent a DataRow of 3 columns for a RowDescription of 2");
  /* Failed for good. */
  assert_int_equal(feed(m, 0, 2, "1", "a"), PGS_MERGE_FAILED);
  expect_finish_fails(m);
  pgs_merge_free(m);

  /* A second RowDescription with another column count. */
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 1, 2, INT4_TEXT, NULL);
  assert_int_equal(describe_with(m, 3, INT4_TEXT, NULL), PGS_EINVAL);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);

  /* Parts that disagree on a column's type. */
  static const uint32_t other[] = {PGS_OID_INT8, PGS_OID_TEXT};
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 1, 2, INT4_TEXT, NULL);
  assert_int_equal(describe_with(m, 2, other, NULL), PGS_EINVAL);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);

  /* A spec that does not fit the rows: more aggregate columns than the
   * shards return, a hidden count past them, a key past them. */
  spec_reset();
  grouped("ncc");
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, INT4_TEXT, NULL), PGS_EINVAL);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);
  spec_reset();
  spec.nhidden = 3;
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, INT4_TEXT, NULL), PGS_EINVAL);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);
  spec_reset();
  add_key(2, false, false);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, INT4_TEXT, NULL), PGS_EINVAL);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);
  spec_reset();

  /* A row before any RowDescription. */
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_false(pgs_merge_described(m));
  assert_int_equal(feed(m, 0, 1, "1"), PGS_MERGE_FAILED);
  expect_error(m, "08P01", NULL);
  pgs_merge_free(m);
}

/* Feed BYTES as a row to a fresh merge (held or passed) and expect 08P01. */
static void expect_malformed(bool hold, const uint8_t *bytes, size_t len) {
  spec_reset();
  if (hold) add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 1, 2, INT4_TEXT, NULL);
  assert_int_equal(pgs_merge_row(m, 0, bytes, len), PGS_MERGE_FAILED);
  expect_error(m, "08P01", "a shard sent a malformed DataRow");
  expect_finish_fails(m);
  pgs_merge_free(m);
}

static void test_error_malformed_rows(void **state) {
  static const uint8_t truncated_len[] = {0, 2, 0, 0, 0, 1, '7', 0, 0};
  static const uint8_t short_value[] = {0, 2, 0, 0, 0, 1, '7', 0, 0, 0, 3, 'a', 'b'};
  static const uint8_t bad_len[] = {0, 2, 0, 0, 0, 1, '7', 0xff, 0xff, 0xff, 0xfe};
  static const uint8_t trailing[] = {0, 2, 0, 0, 0, 1, '7', 0xff, 0xff, 0xff, 0xff, 0};
  static const uint8_t huge_len[] = {0, 2, 0, 0, 0, 1, '7', 0x7f, 0xff, 0xff, 0xff, 'x'};
  static const uint8_t one_byte[] = {0};
  for (int hold = 0; hold < 2; hold++) {
    expect_malformed(hold, truncated_len, sizeof(truncated_len));
    expect_malformed(hold, short_value, sizeof(short_value));
    expect_malformed(hold, bad_len, sizeof(bad_len));
    expect_malformed(hold, trailing, sizeof(trailing));
    expect_malformed(hold, huge_len, sizeof(huge_len));
    expect_malformed(hold, one_byte, sizeof(one_byte));
    expect_malformed(hold, one_byte, 0);
  }
  /* A well-formed one for comparison. */
  static const uint8_t good[] = {0, 2, 0, 0, 0, 1, '7', 0xff, 0xff, 0xff, 0xff};
  spec_reset();
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 1, 2, INT4_TEXT, NULL);
  assert_int_equal(pgs_merge_row(m, 0, good, sizeof(good)), PGS_MERGE_PASS);
  pgs_merge_free(m);

  /* A malformed RowDescription. */
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  build_rowdesc(2, INT4_TEXT, NULL);
  assert_int_equal(pgs_merge_describe(m, body.data, body.len - 1), PGS_EINVAL);
  expect_error(m, "08P01", "a shard sent a malformed RowDescription");
  assert_false(pgs_merge_described(m));
  pgs_merge_free(m);
}

static void test_error_cap(void **state) {
  add_key(0, false, false);
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, 4096);
  describe(m, 2, 2, INT4_TEXT, NULL);
  int i = 0;
  pgs_merge_verdict_t v;
  while ((v = feed(m, i % 2, 2, "1", "some text to fill the cap")) == PGS_MERGE_HELD) i++;
  assert_int_equal(v, PGS_MERGE_FAILED);
  assert_true(i > 10 && i < 4096 / 30);
  expect_error(m, "54000",
               "cross-shard result is larger than max_merge_bytes (4096 bytes); add a LIMIT or a "
               "condition on the shard key");
  assert_int_equal(feed(m, 0, 2, "1", "x"), PGS_MERGE_FAILED);
  expect_finish_fails(m);
  pgs_merge_free(m);

  /* Groups count too. */
  static const uint32_t oids[] = {PGS_OID_INT4, PGS_OID_INT8};
  spec_reset();
  grouped("nc");
  add_group(0);
  m = pgs_merge_new(&spec, 2, -1, 0, 8192);
  describe(m, 2, 2, oids, NULL);
  for (i = 0; i < 10000; i++) {
    char k[16];
    snprintf(k, sizeof(k), "%d", i);
    if ((v = feed(m, 0, 2, k, "1")) != PGS_MERGE_HELD) break;
  }
  assert_int_equal(v, PGS_MERGE_FAILED);
  expect_error(m, "54000", NULL);
  pgs_merge_free(m);
}

static void test_error_unsupported_type(void **state) {
  /* sum(interval) */
  static const uint32_t interval[] = {PGS_OID_INTERVAL};
  grouped("s");
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 1, interval, NULL), PGS_EINVAL);
  expect_error(m, "0A000", "cannot merge sum over type interval across shards");
  assert_int_equal(feed(m, 0, 1, "1 day"), PGS_MERGE_FAILED);
  pgs_merge_free(m);

  /* ORDER BY a json column. */
  static const uint32_t json[] = {PGS_OID_INT4, 114};
  spec_reset();
  add_key(1, false, false);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, json, NULL), PGS_EINVAL);
  expect_error(m, "0A000", "cannot merge ORDER BY over type json across shards");
  pgs_merge_free(m);

  /* max(point): min/max need an order. */
  static const uint32_t point[] = {600};
  spec_reset();
  grouped(">");
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 1, point, NULL), PGS_EINVAL);
  expect_error(m, "0A000", "cannot merge max over type point across shards");
  pgs_merge_free(m);

  /* avg(interval): the hidden sum is what cannot be merged. */
  static const uint32_t avg_interval[] = {PGS_OID_INTERVAL, PGS_OID_INT8, PGS_OID_INTERVAL};
  spec_reset();
  grouped("nna");
  spec.nhidden = 2;
  spec_columns[2].avg_sum = 0;
  spec_columns[2].avg_count = 1;
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 3, avg_interval, NULL), PGS_EINVAL);
  expect_error(m, "0A000", "cannot merge avg over type interval across shards");
  pgs_merge_free(m);

  /* DISTINCT and plain columns take any type. */
  spec_reset();
  spec.distinct = true;
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  assert_int_equal(describe_with(m, 2, json, NULL), PGS_OK);
  assert_int_equal(feed(m, 0, 2, "1", "{}"), PGS_MERGE_HELD);
  pgs_merge_free(m);
}

static void test_error_values(void **state) {
  /* A count that overflows int8. */
  static const uint32_t oids[] = {PGS_OID_INT8};
  grouped("c");
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 1, oids, NULL);
  assert_int_equal(feed(m, 0, 1, "9223372036854775807"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 1, "1"), PGS_MERGE_FAILED);
  expect_error(m, "22003", "bigint out of range");
  expect_finish_fails(m);
  pgs_merge_free(m);

  /* An int8 sum (sum(int4)) that overflows: value.c's error. */
  spec_reset();
  grouped("s");
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 1, oids, NULL);
  assert_int_equal(feed(m, 0, 1, "9223372036854775807"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 1, "1"), PGS_MERGE_FAILED);
  expect_error(m, "22003", NULL);
  pgs_merge_free(m);

  /* An integer key that does not parse fails as it arrives (integer keys
   * are decoded once per row)... */
  spec_reset();
  add_key(0, false, false);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 0, 2, "1", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "x1", "b"), PGS_MERGE_FAILED);
  expect_error(m, "22P02", NULL);
  expect_finish_fails(m);
  pgs_merge_free(m);

  /* ... others when the sort compares them. */
  static const uint32_t num[] = {PGS_OID_NUMERIC, PGS_OID_TEXT};
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, num, NULL);
  assert_int_equal(feed(m, 0, 2, "1.5", "a"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 2, "1.5.5", "b"), PGS_MERGE_HELD);
  expect_finish_fails(m);
  expect_error(m, "22P02", NULL);
  pgs_merge_free(m);

  /* A min over values that do not parse. */
  spec_reset();
  grouped("<");
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 1, num, NULL);
  assert_int_equal(feed(m, 0, 1, "2"), PGS_MERGE_HELD);
  assert_int_equal(feed(m, 1, 1, "abc"), PGS_MERGE_FAILED);
  expect_error(m, "22P02", NULL);
  pgs_merge_free(m);

  /* A part number out of range. */
  spec_reset();
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 1, 2, INT4_TEXT, NULL);
  assert_int_equal(feed(m, 2, 2, "1", "a"), PGS_MERGE_FAILED);
  expect_error(m, "XX000", NULL);
  pgs_merge_free(m);
}

/* ---- scale ---- */

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_scale(void **state) {
  /* 1M rows of concatenation pass without being held. */
  pgs_merge_t *m = pgs_merge_new(&spec, 2, -1, 0, 1024);
  describe(m, 2, 2, INT4_TEXT, NULL);
  row_start(2);
  row_text("123456");
  row_text("some payload text");
  double t0 = seconds();
  for (int i = 0; i < 1000000; i++)
    if (row_feed(m, i & 1) != PGS_MERGE_PASS) fail_msg("row %d not passed", i);
  double t1 = seconds();
  expect_rows(m, 1000000, 0, "");
  pgs_merge_free(m);

  /* ORDER BY over 200k sorted rows in two parts: n log k, not n^2. */
  add_key(0, false, false);
  m = pgs_merge_new(&spec, 2, -1, 0, BIG);
  describe(m, 2, 2, INT4_TEXT, NULL);
  for (int i = 0; i < 200000; i++) {
    char v[16];
    snprintf(v, sizeof(v), "%d", i);
    if (feed(m, i & 1, 2, v, "x") != PGS_MERGE_HELD) fail_msg("row %d not held", i);
  }
  uint64_t count;
  out.len = 0;
  double t2 = seconds();
  assert_int_equal(pgs_merge_finish(m, &out, &count), PGS_OK);
  double t3 = seconds();
  assert_int_equal(count, 200000);
  pgs_merge_free(m);
  print_message("1M rows passed in %.3fs; 200k rows merged in %.3fs\n", t1 - t0, t3 - t2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_concat_offset_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concat_unlimited, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concat_hidden_columns, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_rowdesc, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_int, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_nulls, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_multiple_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_text, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_numeric, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_timestamp, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_binary_int8, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_limit_offset_hidden_key, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_unsorted_parts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_grouped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_grouped_order_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ungrouped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_grouped_null_keys_two_columns, setup, teardown),
      cmocka_unit_test_setup_teardown(test_grouped_many_groups, setup, teardown),
      cmocka_unit_test_setup_teardown(test_grouped_binary, setup, teardown),
      cmocka_unit_test_setup_teardown(test_binary_numeric_sum_avg, setup, teardown),
      cmocka_unit_test_setup_teardown(test_distinct, setup, teardown),
      cmocka_unit_test_setup_teardown(test_distinct_hidden_and_grouped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_having, setup, teardown),
      cmocka_unit_test_setup_teardown(test_having_one_group, setup, teardown),
      cmocka_unit_test_setup_teardown(test_having_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_distinct_aggregates, setup, teardown),
      cmocka_unit_test_setup_teardown(test_distinct_aggregates_cap, setup, teardown),
      cmocka_unit_test_setup_teardown(test_distinct_on, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_keys_by_value, setup, teardown),
      cmocka_unit_test_setup_teardown(test_distinct_by_value, setup, teardown),
      cmocka_unit_test_setup_teardown(test_value_equality_and_mixed_compare, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_column_count, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_malformed_rows, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_cap, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_unsupported_type, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_values, setup, teardown),
      cmocka_unit_test_setup_teardown(test_scale, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
