/*
 * test_collate.c — router/collate.c: text compared as PostgreSQL compares
 * it under a collation, and which collation a merged ORDER BY key or
 * min/max has. The orders expected here were taken from a PostgreSQL 15
 * server (Debian 12, glibc 2.36, locales-all): `SELECT string_agg(v, ...
 * ORDER BY v COLLATE "en_US")` over the same words. Then the catalog the
 * shards agree on, the derivation from statements analysed as the proxy
 * does it, every refusal with its message, and the merge executor
 * ordering and min/max-ing text from two parts by a libc collation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <gnu/libc-version.h>

#include "pgshard/analyze.h"
#include "pgshard/collate.h"
#include "pgshard/config.h"
#include "pgshard/merge.h"
#include "pgshard/value.h"

/* ---- comparing ---- */

static const char *const words[] = {
    "a", "B",  "b", "é", "e",  "Z", "ä",  "a b", "ab", "",  "A", "-a", "a-", "Ab", "z",
    "Ä", "ae", "æ", "1", "10", "9", "_x", " a",  "e",  "E", "ê", "ß",  "ss", "st",
};

/* From the server: ORDER BY v COLLATE "en_US" (and "C", "sv_SE"). */
static const char *const en_us_order[] = {
    "",  "1", "10", "9", " a", "-a", "a", "a-", "A",  "ä", "Ä",  "a b", "ab", "Ab", "ae",
    "æ", "b", "B",  "e", "e",  "E",  "é", "ê",  "ss", "ß", "st", "_x",  "z",  "Z",
};
static const char *const c_order[] = {
    "",   " a", "-a", "1", "10", "9",  "A",  "Ab", "B", "E", "Z", "_x", "a", "a b", "a-",
    "ab", "ae", "b",  "e", "e",  "ss", "st", "z",  "Ä", "ß", "ä", "æ",  "é", "ê",
};
static const char *const sv_se_order[] = {
    "",  "1", "10", "9", " a", "-a", "a", "a-", "A",  "a b", "ab", "Ab", "ae", "b", "B",
    "e", "e", "E",  "é", "ê",  "ss", "ß", "st", "_x", "z",   "Z",  "ä",  "Ä",  "æ",
};

static const pgs_collator_t *sorting;

static int by_collator(const void *a, const void *b) {
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  return pgs_collate_compare(sorting, PGS_OID_TEXT, (const uint8_t *)x, strlen(x),
                             (const uint8_t *)y, strlen(y));
}

static void expect_order(const pgs_collator_t *c, const char *const *want) {
  const char *got[PGS_ARRAY_LEN(words)];
  memcpy(got, words, sizeof(got));
  sorting = c;
  qsort(got, PGS_ARRAY_LEN(got), sizeof(got[0]), by_collator);
  for (size_t i = 0; i < PGS_ARRAY_LEN(got); i++)
    if (strcmp(got[i], want[i]) != 0)
      fail_msg("%s: position %zu is \"%s\", the server has \"%s\"", pgs_collator_locale(c), i,
               got[i], want[i]);
}

static const pgs_collator_t *libc(const char *locale) {
  const pgs_collator_t *c = pgs_collator_libc(locale);
  if (c == NULL) fail_msg("locale %s not installed (apt-get install locales-all)", locale);
  return c;
}

static int cmp(const pgs_collator_t *c, uint32_t oid, const char *a, const char *b) {
  int r = pgs_collate_compare(c, oid, (const uint8_t *)a, strlen(a), (const uint8_t *)b, strlen(b));
  return (r > 0) - (r < 0);
}

static void test_orders_as_the_server(void **state) {
  expect_order(NULL, c_order);
  expect_order(libc("en_US.utf8"), en_us_order);
  expect_order(libc("sv_SE.utf8"), sv_se_order);
  /* de_DE sorts these as en_US does (on the server too). */
  expect_order(libc("de_DE.utf8"), en_us_order);
}

static void test_compare_details(void **state) {
  const pgs_collator_t *en = libc("en_US.utf8");
  /* bpchar: trailing blanks do not count, in either order. */
  assert_int_equal(cmp(NULL, PGS_OID_BPCHAR, "ab  ", "ab"), 0);
  assert_int_equal(cmp(en, PGS_OID_BPCHAR, "ab  ", "ab"), 0);
  assert_int_equal(cmp(en, PGS_OID_TEXT, "ab  ", "ab"), 1);
  assert_int_equal(cmp(en, PGS_OID_BPCHAR, "B ", "a  "), 1);
  /* Equal bytes, and strcmp breaking what strcoll may call equal. */
  assert_int_equal(cmp(en, PGS_OID_TEXT, "é", "é"), 0);
  assert_int_equal(cmp(en, PGS_OID_TEXT, "a", "A"), -1);
  assert_int_equal(cmp(en, PGS_OID_VARCHAR, "A", "a"), 1);
  assert_int_equal(cmp(en, PGS_OID_NAME, "", "a"), -1);
  /* A NUL byte ends the string for strcoll, as on the server (which
   * never holds one in text); byte order sees the rest. */
  const uint8_t a[] = {'x', 0, 'b'}, b[] = {'x', 0, 'a'};
  assert_int_equal(pgs_collate_compare(en, PGS_OID_TEXT, a, 3, b, 3), 0);
  assert_true(pgs_collate_compare(NULL, PGS_OID_TEXT, a, 3, b, 3) > 0);
  /* Values over the stack buffers compare alike. */
  size_t n = 5000;
  char *x = malloc(n + 1), *y = malloc(n + 1);
  memset(x, 'a', n);
  memset(y, 'a', n);
  x[n] = y[n] = '\0';
  x[n - 1] = 'B';
  y[n - 1] = 'b';
  assert_int_equal(cmp(en, PGS_OID_TEXT, x, y), 1);
  assert_int_equal(cmp(NULL, PGS_OID_TEXT, x, y), -1);
  assert_int_equal(cmp(en, PGS_OID_TEXT, x, x), 0);
  free(x);
  free(y);
}

static void test_collators(void **state) {
  const pgs_collator_t *en = libc("en_US.utf8");
  assert_ptr_equal(pgs_collator_libc("en_US.utf8"), en);
  assert_string_equal(pgs_collator_locale(en), "en_US.utf8");
  assert_string_equal(pgs_collator_locale(NULL), "C");
  assert_null(pgs_collator_libc("xx_YY.nothing"));
  assert_null(pgs_collator_libc("xx_YY.nothing")); /* failures are not kept */
  assert_true(pgs_collate_locale_is_bytes("C"));
  assert_true(pgs_collate_locale_is_bytes("POSIX"));
  assert_true(pgs_collate_locale_is_bytes("C.UTF-8"));
  assert_true(pgs_collate_locale_is_bytes("C.utf8"));
  assert_false(pgs_collate_locale_is_bytes("C.latin1"));
  assert_false(pgs_collate_locale_is_bytes("en_US.utf8"));
  assert_false(pgs_collate_locale_is_bytes("c"));
  assert_true(pgs_collate_type(PGS_OID_TEXT));
  assert_true(pgs_collate_type(PGS_OID_NAME));
  assert_false(pgs_collate_type(PGS_OID_INT8));
  assert_false(pgs_collate_type(PGS_OID_BYTEA));
}

/* glibc's C.UTF-8 is code point order: UTF-8 byte order, which is why
 * pgshard compares it with memcmp. */
static void test_c_utf8_is_byte_order(void **state) {
  const pgs_collator_t *c = libc("C.utf8");
  static const char *const samples[] = {
      "",
      "a",
      "A",
      "ab",
      "a b",
      "é",
      "e",
      "ä",
      "Z",
      "z",
      "ß",
      "日本",
      "日",
      "€",
      "~",
      "\x7f",
      "\xc2\x80",
      "\xf0\x9f\x98\x80",
      "\xef\xbf\xbd",
      "a\xcc\x81",
      "Ω",
      "ω",
      "1",
      "_",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(samples); i++)
    for (size_t j = 0; j < PGS_ARRAY_LEN(samples); j++)
      if (cmp(c, PGS_OID_TEXT, samples[i], samples[j]) !=
          cmp(NULL, PGS_OID_TEXT, samples[i], samples[j]))
        fail_msg("C.utf8 orders \"%s\" and \"%s\" unlike bytes", samples[i], samples[j]);
}

/* ---- the catalog ---- */

/* A database part's first line: "@V" stands for this machine's glibc
 * version (the shards' must be pgshard's). */
#define HEAD_C "UTF8\tc\tC\t\t@V\n"
#define COLUMNS                                                                                    \
  "public\tusers\tname\tpg_catalog\ten_US\tc\tt\ten_US.utf8\n"                                     \
  "public\tusers\ticu\tpg_catalog\tund-x-icu\ti\tt\tund\n"                                         \
  "public\tusers\tsys\tpg_catalog\tC\tc\tt\tC\n"                                                   \
  "public\tusers\tci\tpublic\tnd\ti\tf\tund\n"                                                     \
  "public\tcountries\tname\tpg_catalog\tde_DE\tc\tt\tde_DE.utf8\n"
#define LIST                                                                                       \
  "pg_catalog\tC\tc\tt\tC\n"                                                                       \
  "pg_catalog\tPOSIX\tc\tt\tPOSIX\n"                                                               \
  "pg_catalog\tdefault\td\tt\t\n"                                                                  \
  "pg_catalog\ten_US\tc\tt\ten_US.utf8\n"                                                          \
  "pg_catalog\tsv_SE\tc\tt\tsv_SE.utf8\n"                                                          \
  "pg_catalog\tund-x-icu\ti\tt\tund\n"                                                             \
  "public\tnd\ti\tf\tund\n"                                                                        \
  "public\tbogus\tc\tt\txx_YY.nothing\n"                                                           \
  "public\ttwice\tc\tt\ten_US.utf8\n"                                                              \
  "other\ttwice\tc\tt\tsv_SE.utf8\n"

/* S with "@V" replaced by glibc's version; malloc'ed (NULL for NULL). */
static char *with_version(const char *s) {
  if (s == NULL) return NULL;
  const char *at = strstr(s, "@V");
  if (at == NULL) return strdup(s);
  const char *v = gnu_get_libc_version();
  char *out = malloc(strlen(s) + strlen(v) + 1);
  sprintf(out, "%.*s%s%s", (int)(at - s), s, v, at + 2);
  return out;
}

static pgs_collcat_t *two_shards(const char *db0, const char *db1, const char *l0, const char *l1) {
  char *d0 = with_version(db0), *d1 = with_version(db1);
  const char *dbs[] = {d0, d1}, *lists[] = {l0, l1};
  pgs_collcat_t *cat = pgs_collcat_build(dbs, lists, 2);
  free(d0);
  free(d1);
  return cat;
}

static void test_catalog_agreement(void **state) {
  pgs_collcat_t *cat = two_shards(HEAD_C COLUMNS, HEAD_C COLUMNS, LIST, LIST);
  assert_non_null(cat);
  assert_ptr_equal(pgs_collcat_ref(cat), cat);
  pgs_collcat_unref(cat);
  pgs_collcat_unref(cat);
  /* Not every shard answered, or their databases differ. */
  assert_null(two_shards(HEAD_C, NULL, LIST, LIST));
  assert_null(two_shards(HEAD_C, HEAD_C, LIST, NULL));
  assert_null(two_shards(HEAD_C, "UTF8\tc\ten_US.utf8\t\t@V\n", LIST, LIST));
  assert_null(two_shards(HEAD_C, "LATIN1\tc\tC\t\t@V\n", LIST, LIST));
  assert_null(two_shards(HEAD_C, "UTF8\tc\tC\t\t1.0\n", LIST, LIST));
  assert_null(two_shards("UTF8\tc\tC\n", "UTF8\tc\tC\n", LIST, LIST));
  /* A column line that does not read: nothing is sure. */
  assert_null(
      two_shards(HEAD_C "public\tusers\tname\n", HEAD_C "public\tusers\tname\n", LIST, LIST));
  assert_null(pgs_collcat_build(NULL, NULL, 0));
}

/* ---- statements: analysed as the proxy does, resolved ---- */

static pgs_table_t tables[] = {
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "orders", .column = "user_id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
};
static pgs_database_t db;
static pgs_lexed_t lexed;
static pgs_plan_t *plan;
static const pgs_merge_spec_t *spec;
static const char *last_sql;

static int group_setup(void **state) {
  memset(&db, 0, sizeof(db));
  db.name = "app";
  db.nshards = 2;
  db.cross_shard_reads = true;
  db.shardmap.tables = tables;
  db.shardmap.ntables = (int)PGS_ARRAY_LEN(tables);
  pgs_lex_init(&lexed);
  return 0;
}

static int group_teardown(void **state) {
  pgs_plan_unref(plan);
  plan = NULL;
  pgs_lex_free(&lexed);
  return 0;
}

static void analyse(const char *sql) {
  last_sql = sql;
  pgs_plan_unref(plan);
  plan = NULL;
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  plan = pgs_analyze(&db, &lexed);
  assert_non_null(plan);
  spec = plan->merge;
  if (spec == NULL || spec->refuse[0]) fail_msg("%s: not merged", sql);
  assert_non_null(spec->collations);
}

/* The collation of ORDER BY key K (or, K < 0, column -K-1) of SQL for a
 * value of type OID on CAT: the collator's locale ("C" for byte order),
 * or "! " and the reason. */
static const char *resolve_as(const pgs_collcat_t *cat, const char *sql, int k, uint32_t oid,
                              bool utf8) {
  static char buf[300];
  analyse(sql);
  const pgs_collate_spec_t *cs = spec->collations;
  const pgs_collate_source_t *src = k >= 0 ? &cs->keys[k] : &cs->columns[-k - 1];
  const pgs_collator_t *c = (const pgs_collator_t *)&buf; /* must be overwritten */
  char why[250];
  if (pgs_collate_resolve(cat, cs, src, oid, utf8, &c, why, sizeof(why)) != PGS_OK) {
    assert_null(c);
    snprintf(buf, sizeof(buf), "! %s", why);
  } else {
    snprintf(buf, sizeof(buf), "%s", pgs_collator_locale(c));
  }
  return buf;
}

static void expect(const pgs_collcat_t *cat, const char *sql, int k, const char *want) {
  const char *got = resolve_as(cat, sql, k, PGS_OID_TEXT, true);
  if (strcmp(got, want) != 0) fail_msg("%s (key %d)\n  got  %s\n  want %s", sql, k, got, want);
}

static void test_derivation(void **state) {
  pgs_collcat_t *cat = two_shards(HEAD_C COLUMNS, HEAD_C COLUMNS, LIST, LIST);
  /* A column: its own collation; explicit COLLATE wins. */
  expect(cat, "SELECT id, name FROM users ORDER BY name", 0, "en_US.utf8");
  expect(cat, "SELECT id, name FROM users ORDER BY 2 DESC", 0, "en_US.utf8");
  expect(cat, "SELECT id, name AS n FROM users ORDER BY n", 0, "en_US.utf8");
  expect(cat, "SELECT id FROM users u ORDER BY u.name", 0, "en_US.utf8");
  expect(cat, "SELECT id FROM public.users ORDER BY public.users.name", 0, "en_US.utf8");
  expect(cat, "SELECT id FROM users ORDER BY name::varchar(20)", 0, "en_US.utf8");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE \"C\"", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE pg_catalog.\"POSIX\"", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY email COLLATE \"sv_SE\"", 0, "sv_SE.utf8");
  expect(cat, "SELECT id FROM users ORDER BY email COLLATE \"default\"", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY sys", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY id, email", 1, "C");
  /* Expressions: the default when no column has another collation. */
  expect(cat, "SELECT id FROM users ORDER BY lower(email) || 'x'", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY id::text", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY lower(sys)", 0, "C"); /* C is the default here */
  expect(cat, "SELECT id FROM users ORDER BY lower(name)", 0,
         "! an expression over a column with collation \"en_US\" has a collation pgshard "
         "cannot tell; name one with COLLATE");
  expect(cat, "SELECT id FROM users ORDER BY lower(name COLLATE \"C\")", 0,
         "! pgshard cannot tell which collation this expression has; name one with COLLATE");
  expect(cat, "SELECT id FROM users ORDER BY (SELECT 'x')", 0,
         "! pgshard cannot tell which collation this expression has; name one with COLLATE");
  /* Columns of other FROM items. */
  expect(cat, "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id ORDER BY email", 0, "C");
  expect(cat, "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id ORDER BY name", 0,
         "! pgshard cannot tell the collation of column name; name one with COLLATE");
  expect(cat, "SELECT u.id FROM users u JOIN countries c ON c.id = u.id ORDER BY c.name", 0,
         "de_DE.utf8");
  expect(cat, "SELECT u.id FROM users u, (SELECT 1 AS k) s ORDER BY email", 0,
         "! pgshard cannot tell the collation of column email; name one with COLLATE");
  expect(cat, "SELECT u.id FROM users u, (SELECT 'a' AS k) s ORDER BY s.k", 0,
         "! pgshard cannot tell the collation of column s.k; name one with COLLATE");
  expect(cat, "SELECT * FROM users ORDER BY 2", 0,
         "! pgshard cannot tell the collation of these columns; name one with COLLATE");
  expect(cat, "SELECT * FROM users ORDER BY name", 0, "en_US.utf8");
  /* What cannot be compared here. */
  expect(cat, "SELECT id FROM users ORDER BY icu", 0,
         "! collation \"und-x-icu\" (ICU) cannot be compared across shards");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE \"und-x-icu\"", 0,
         "! collation \"und-x-icu\" (ICU) cannot be compared across shards");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE nd", 0,
         "! collation \"nd\" (ICU) cannot be compared across shards");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE bogus", 0,
         "! collation \"bogus\" (libc locale \"xx_YY.nothing\") cannot be loaded on pgshard's "
         "machine, so it cannot be compared across shards");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE \"fr_FR\"", 0,
         "! collation \"fr_FR\" is not known alike on every shard");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE twice", 0,
         "! collation \"twice\" is not known alike on every shard");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE other.twice", 0, "sv_SE.utf8");
  /* min and max have their argument's collation. */
  expect(cat, "SELECT min(name), max(email), max(name COLLATE \"C\") FROM users", -1, "en_US.utf8");
  expect(cat, "SELECT min(name), max(email), max(name COLLATE \"C\") FROM users", -2, "C");
  expect(cat, "SELECT min(name), max(email), max(name COLLATE \"C\") FROM users", -3, "C");
  expect(cat, "SELECT email, max(name) FROM users GROUP BY email ORDER BY max(name)", 0,
         "en_US.utf8");
  /* Types: name's default is C; types without collation never ask. */
  assert_string_equal(
      resolve_as(cat, "SELECT id FROM users ORDER BY current_user", 0, PGS_OID_NAME, true), "C");
  assert_string_equal(
      resolve_as(NULL, "SELECT id FROM users ORDER BY lower(name)", 0, PGS_OID_INT8, true), "C");
  /* A client that does not receive UTF-8. */
  assert_string_equal(
      resolve_as(cat, "SELECT id FROM users ORDER BY name", 0, PGS_OID_TEXT, false),
      "! collation \"en_US\" cannot be compared across shards unless the database's encoding "
      "and the client's are UTF8");
  assert_string_equal(
      resolve_as(cat, "SELECT id FROM users ORDER BY email", 0, PGS_OID_TEXT, false), "C");
  pgs_collcat_unref(cat);

  /* Not known yet: only the byte-order collations can be named. */
  const char *not_yet =
      "! the collations of the shards' columns are not known yet (pgshard "
      "reads them from the shards' catalogs); try again";
  expect(NULL, "SELECT id FROM users ORDER BY email", 0, not_yet);
  expect(NULL, "SELECT id FROM users ORDER BY name COLLATE \"en_US\"", 0, not_yet);
  expect(NULL, "SELECT id FROM users ORDER BY name COLLATE \"C\"", 0, "C");
  expect(NULL, "SELECT id FROM users ORDER BY name COLLATE ucs_basic", 0, "C");

  /* No column with a collation of its own: every column has the default. */
  cat = two_shards("UTF8\tc\ten_US.UTF-8\t\t@V\n", "UTF8\tc\ten_US.UTF-8\t\t@V\n", LIST, LIST);
  expect(cat, "SELECT * FROM users ORDER BY 2", 0, "en_US.UTF-8");
  expect(cat, "SELECT u.id FROM users u, (SELECT 'a' AS k) s ORDER BY s.k", 0, "en_US.UTF-8");
  expect(cat, "SELECT id FROM users ORDER BY lower(name)", 0, "en_US.UTF-8");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE \"default\"", 0, "en_US.UTF-8");
  expect(cat, "SELECT id FROM users ORDER BY name COLLATE \"C\"", 0, "C");
  pgs_collcat_unref(cat);
  /* The database's default by ICU, or C.UTF-8. */
  cat = two_shards("UTF8\ti\t\tund-x-icu\t@V\n", "UTF8\ti\t\tund-x-icu\t@V\n", LIST, LIST);
  expect(cat, "SELECT id FROM users ORDER BY email", 0,
         "! the database's default collation \"und-x-icu\" (ICU) cannot be compared across "
         "shards");
  expect(cat, "SELECT id FROM users ORDER BY email COLLATE \"en_US\"", 0, "en_US.utf8");
  pgs_collcat_unref(cat);
  cat = two_shards("UTF8\tc\tC.UTF-8\t\t\n", "UTF8\tc\tC.UTF-8\t\t\n", LIST, LIST);
  expect(cat, "SELECT id FROM users ORDER BY email", 0, "C");
  pgs_collcat_unref(cat);
  /* Shards with another glibc sort differently: only byte order is sure. */
  cat = two_shards("UTF8\tc\ten_US.utf8\t\t2.27\n" COLUMNS, "UTF8\tc\ten_US.utf8\t\t2.27\n" COLUMNS,
                   LIST, LIST);
  char want[200];
  snprintf(want, sizeof(want),
           "! collation \"en_US\" cannot be compared across shards: they sort with glibc 2.27, "
           "pgshard with %s",
           gnu_get_libc_version());
  expect(cat, "SELECT id FROM users ORDER BY name", 0, want);
  expect(cat, "SELECT id FROM users ORDER BY sys", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY email COLLATE \"C\"", 0, "C");
  pgs_collcat_unref(cat);
  /* PostgreSQL 17's builtin provider: C and C.UTF-8 are code point order. */
  cat = two_shards("UTF8\tb\t\tC.UTF-8\t\n", "UTF8\tb\t\tC.UTF-8\t\n", LIST, LIST);
  expect(cat, "SELECT id FROM users ORDER BY email", 0, "C");
  pgs_collcat_unref(cat);
  cat = two_shards("SQL_ASCII\tc\ten_US\t\t@V\n", "SQL_ASCII\tc\ten_US\t\t@V\n", LIST, LIST);
  expect(cat, "SELECT id FROM users ORDER BY email", 0,
         "! the database's default collation \"en_US\" cannot be compared across shards unless "
         "the database's encoding and the client's are UTF8");
  pgs_collcat_unref(cat);
}

/* Shards that do not agree: what differs is not known, the rest is. */
static void test_disagreement(void **state) {
  pgs_collcat_t *cat = two_shards(HEAD_C COLUMNS,
                                  HEAD_C
                                  "public\tusers\tname\tpg_catalog\tsv_SE\tc\tt\tsv_SE.utf8\n"
                                  "public\tusers\ticu\tpg_catalog\tund-x-icu\ti\tt\tund\n",
                                  LIST, "pg_catalog\ten_US\tc\tt\ten_US.utf8\n");
  expect(cat, "SELECT id FROM users ORDER BY name", 0,
         "! pgshard cannot tell the collation of column name; name one with COLLATE");
  /* users.sys is C on one shard, the default on the other. */
  expect(cat, "SELECT id FROM users ORDER BY sys", 0,
         "! pgshard cannot tell the collation of column sys; name one with COLLATE");
  expect(cat, "SELECT id FROM users ORDER BY icu", 0,
         "! collation \"und-x-icu\" (ICU) cannot be compared across shards");
  expect(cat, "SELECT id FROM users ORDER BY email", 0, "C");
  expect(cat, "SELECT id FROM users ORDER BY email COLLATE \"en_US\"", 0, "en_US.utf8");
  expect(cat, "SELECT id FROM users ORDER BY email COLLATE \"sv_SE\"", 0,
         "! collation \"sv_SE\" is not known alike on every shard");
  pgs_collcat_unref(cat);
}

/* ---- the merge ---- */

static pgs_buf_t body, out;

/* A RowDescription of N columns of type OID, but column INT8_AT (-1: none)
 * of int8. */
static void rowdesc_with(int n, uint32_t oid, int int8_at) {
  body.len = 0;
  pgs_buf_put_i16(&body, (int16_t)n);
  for (int i = 0; i < n; i++) {
    pgs_buf_put_cstr(&body, "c");
    pgs_buf_put_i32(&body, 0);
    pgs_buf_put_i16(&body, 0);
    pgs_buf_put_i32(&body, (int32_t)(i == int8_at ? PGS_OID_INT8 : oid));
    pgs_buf_put_i16(&body, -1);
    pgs_buf_put_i32(&body, -1);
    pgs_buf_put_i16(&body, 0);
  }
}

static void rowdesc(int n, uint32_t oid) { rowdesc_with(n, oid, -1); }

static void feed(pgs_merge_t *m, int part, int n, const char *const *values) {
  body.len = 0;
  pgs_buf_put_i16(&body, (int16_t)n);
  for (int i = 0; i < n; i++) {
    if (values[i] == NULL) {
      pgs_buf_put_i32(&body, -1);
      continue;
    }
    pgs_buf_put_i32(&body, (int32_t)strlen(values[i]));
    pgs_buf_put(&body, values[i], strlen(values[i]));
  }
  pgs_merge_verdict_t v = pgs_merge_row(m, part, body.data, body.len);
  if (v == PGS_MERGE_FAILED) fail_msg("row failed: %s", pgs_merge_error(m)->message);
}

/* The merged rows' values, "|" between columns and ";" between rows. */
static const char *finish(pgs_merge_t *m) {
  static char buf[2048];
  uint64_t rows;
  out.len = 0;
  if (pgs_merge_finish(m, &out, &rows) != PGS_OK)
    fail_msg("finish: %s", pgs_merge_error(m)->message);
  size_t w = 0, at = 0;
  buf[0] = '\0';
  while (at < out.len) {
    const uint8_t *p = out.data + at + 5;
    size_t mlen = pgs_get_u32(out.data + at + 1);
    int n = (int16_t)((p[0] << 8) | p[1]);
    p += 2;
    for (int i = 0; i < n; i++) {
      int32_t len = (int32_t)pgs_get_u32(p);
      p += 4;
      w += (size_t)snprintf(buf + w, sizeof(buf) - w, "%s%.*s", i ? "|" : (at ? ";" : ""),
                            len < 0 ? 4 : len, len < 0 ? "NULL" : (const char *)p);
      if (len > 0) p += len;
    }
    at += 1 + mlen;
  }
  return buf;
}

static pgs_merge_t *run(pgs_collcat_t *cat, const char *sql, int64_t limit, int ncols) {
  analyse(sql);
  pgs_merge_t *m = pgs_merge_new(spec, 2, limit, 0, (size_t)1 << 24);
  pgs_merge_collate(m, cat, true);
  rowdesc(ncols, PGS_OID_TEXT);
  return m;
}

static void describe_ok(pgs_merge_t *m) {
  for (int part = 0; part < 2; part++)
    if (pgs_merge_describe(m, body.data, body.len) != PGS_OK)
      fail_msg("%s: describe: %s", last_sql, pgs_merge_error(m)->message);
}

static void describe_refused(pgs_merge_t *m, const char *message) {
  assert_int_equal(pgs_merge_describe(m, body.data, body.len), PGS_EINVAL);
  assert_string_equal(pgs_merge_error(m)->sqlstate, "0A000");
  assert_string_equal(pgs_merge_error(m)->message, message);
  pgs_merge_free(m);
}

static void test_merge_by_collation(void **state) {
  pgs_collcat_t *cat = two_shards(HEAD_C COLUMNS, HEAD_C COLUMNS, LIST, LIST);
  pgs_buf_init(&body);
  pgs_buf_init(&out);
  /* Each part as the server sorts it in en_US; merged alike. */
  static const char *const p0[] = {"", "a", "A", "ab", "b", "é", "ss", "z", NULL};
  static const char *const p1[] = {"1", "ä", "a b", "æ", "B", "e", "E", "ß", "Z", NULL};
  pgs_merge_t *m = run(cat, "SELECT name FROM users ORDER BY name", -1, 1);
  describe_ok(m);
  for (size_t i = 0; i < PGS_ARRAY_LEN(p0); i++) feed(m, 0, 1, &p0[i]);
  for (size_t i = 0; i < PGS_ARRAY_LEN(p1); i++) feed(m, 1, 1, &p1[i]);
  assert_string_equal(finish(m), ";1;a;A;ä;a b;ab;æ;b;B;e;E;é;ss;ß;z;Z;NULL;NULL");
  pgs_merge_free(m);
  /* DESC NULLS FIRST with a LIMIT: the parts' orders reversed. */
  m = run(cat, "SELECT name FROM users ORDER BY name DESC NULLS FIRST LIMIT 6", 6, 1);
  describe_ok(m);
  for (size_t i = PGS_ARRAY_LEN(p0); i-- > 0;) feed(m, 0, 1, &p0[(i + 1) % PGS_ARRAY_LEN(p0)]);
  for (size_t i = PGS_ARRAY_LEN(p1); i-- > 0;) feed(m, 1, 1, &p1[(i + 1) % PGS_ARRAY_LEN(p1)]);
  assert_string_equal(finish(m), "NULL;NULL;Z;z;ß;ss");
  pgs_merge_free(m);
  /* The same rows by byte order: COLLATE "C" on the shards and here. */
  static const char *const c0[] = {"", "A", "a", "ab", "b", "ss", "z", "é", NULL};
  static const char *const c1[] = {"1", "B", "E", "Z", "a b", "e", "ß", "ä", "æ", NULL};
  m = run(cat, "SELECT name FROM users ORDER BY name COLLATE \"C\"", -1, 2);
  assert_int_equal(spec->nhidden, 1);
  describe_ok(m);
  for (size_t i = 0; i < PGS_ARRAY_LEN(c0); i++) feed(m, 0, 2, (const char *[]){c0[i], c0[i]});
  for (size_t i = 0; i < PGS_ARRAY_LEN(c1); i++) feed(m, 1, 2, (const char *[]){c1[i], c1[i]});
  assert_string_equal(finish(m), ";1;A;B;E;Z;a;a b;ab;b;e;ss;z;ß;ä;æ;é;NULL;NULL");
  pgs_merge_free(m);
  /* min and max: each by its argument's collation. */
  m = run(cat, "SELECT min(name), max(name), max(email) FROM users", -1, 3);
  describe_ok(m);
  static const char *const g0[] = {"a", "z", "Z"}, *const g1[] = {"ä", "Z", "z"};
  feed(m, 0, 3, g0);
  feed(m, 1, 3, g1);
  assert_string_equal(finish(m), "a|Z|z");
  pgs_merge_free(m);
  /* Refused when the columns turn out to be text. */
  describe_refused(run(cat, "SELECT icu FROM users ORDER BY icu", -1, 1),
                   "ORDER BY: collation \"und-x-icu\" (ICU) cannot be compared across shards");
  describe_refused(run(cat, "SELECT id, max(icu) FROM users GROUP BY id", -1, 2),
                   "max(): collation \"und-x-icu\" (ICU) cannot be compared across shards");
  describe_refused(run(NULL, "SELECT name FROM users ORDER BY name", -1, 1),
                   "ORDER BY: the collations of the shards' columns are not known yet (pgshard "
                   "reads them from the shards' catalogs); try again");
  /* Groups and DISTINCT compare bytes: refused for a non-deterministic
   * collation, fine for the others. */
  m = run(cat, "SELECT ci, count(*) FROM users GROUP BY ci", -1, 2);
  rowdesc_with(2, PGS_OID_TEXT, 1);
  describe_refused(m,
                   "GROUP BY: collation \"nd\" (non-deterministic) cannot be compared across "
                   "shards");
  describe_refused(run(cat, "SELECT DISTINCT lower(ci) FROM users", -1, 1),
                   "DISTINCT: collation \"nd\" (non-deterministic) cannot be compared across "
                   "shards");
  describe_refused(run(cat, "SELECT DISTINCT email COLLATE nd FROM users", -1, 1),
                   "DISTINCT: collation \"nd\" (non-deterministic) cannot be compared across "
                   "shards");
  m = run(cat, "SELECT DISTINCT name, icu FROM users", -1, 2);
  describe_ok(m);
  pgs_merge_free(m);
  m = run(cat, "SELECT name, count(*) FROM users GROUP BY name", -1, 2);
  rowdesc_with(2, PGS_OID_TEXT, 1);
  describe_ok(m);
  pgs_merge_free(m);
  /* ... and never for other types; nor without collations at all. */
  m = run(NULL, "SELECT id FROM users ORDER BY lower(name)", -1, 2);
  rowdesc(2, PGS_OID_INT8);
  describe_ok(m);
  pgs_merge_free(m);
  analyse("SELECT name FROM users ORDER BY name");
  m = pgs_merge_new(spec, 2, -1, 0, (size_t)1 << 24);
  rowdesc(1, PGS_OID_TEXT);
  describe_ok(m);
  for (size_t i = 0; i < PGS_ARRAY_LEN(c0); i++) feed(m, 0, 1, &c0[i]);
  assert_string_equal(finish(m), ";A;a;ab;b;ss;z;é;NULL");
  pgs_merge_free(m);
  pgs_collcat_unref(cat);
  pgs_buf_free(&body);
  pgs_buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_orders_as_the_server),
      cmocka_unit_test(test_compare_details),
      cmocka_unit_test(test_collators),
      cmocka_unit_test(test_c_utf8_is_byte_order),
      cmocka_unit_test(test_catalog_agreement),
      cmocka_unit_test(test_derivation),
      cmocka_unit_test(test_disagreement),
      cmocka_unit_test(test_merge_by_collation),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
