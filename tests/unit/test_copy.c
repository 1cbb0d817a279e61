/*
 * test_copy.c — router/copy.c: COPY options read through the real grammar
 * (pgs_lex + pgs_analyze, then pgs_copy_spec_resolve), checked against what
 * PostgreSQL 15 itself answers for the same statements (the SQLSTATEs and
 * messages below were taken from a real server); the plan cache sharing
 * one plan between COPYs whose option literals differ; and the splitter:
 * text and CSV rows, escapes and quotes in the key, header, the \. marker,
 * CRLF and lone CR line ends, every error with its line, the row cap. Every
 * data set is fed whole, a byte at a time, cut in two at every position and
 * in random pieces, and must give the same rows, shards and errors each
 * way; each row's shard is what the router gives the same key in an
 * INSERT. A randomised test does the same over a small nasty alphabet.
 * test_throughput prints rows per second (informative, not asserted).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/copy.h"
#include "pgshard/route.h"

static const char config_text[] =
    "[user.app]\npassword = x\n"
    "[database.app]\n"
    "[shard.app.s0]\nprimary = port=1\n"
    "[shard.app.s1]\nprimary = port=2\n"
    "[shard.app.s2]\nprimary = port=3\n"
    "[table.app.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"
    "[table.app.events]\ncolumn = id\ntype = bigint\nstrategy = range\n"
    "range = s0: - 100\nrange = s1: 100 - 1000\nrange = s2: 1000 -\n"
    "[table.app.names]\ncolumn = name\ntype = text\nstrategy = hash\n"
    "[table.app.docs]\ncolumn = id\ntype = uuid\nstrategy = hash\n"
    "[table.app.invoices]\ncolumn = tenant_id\ntype = bigint\nstrategy = tenant\n"
    "[tenants.app]\n42 = s2\n";

static pgs_config_t *config;
static const pgs_database_t *app;
static const pgs_table_t *users, *events, *names, *docs, *invoices;
static pgs_lexed_t lexed;

static int group_setup(void **state) {
  config = pgs_config_parse_string(config_text);
  for (int i = 0; i < config->nerrors; i++)
    print_message("line %d: %s\n", config->errors[i].line, config->errors[i].message);
  if (config->nerrors) return -1;
  app = pgs_config_find_database(config, "app");
  if (!app) return -1;
  users = pgs_shardmap_find_table(app, "users");
  events = pgs_shardmap_find_table(app, "events");
  names = pgs_shardmap_find_table(app, "names");
  docs = pgs_shardmap_find_table(app, "docs");
  invoices = pgs_shardmap_find_table(app, "invoices");
  pgs_lex_init(&lexed);
  return users && events && names && docs && invoices ? 0 : -1;
}

static int group_teardown(void **state) {
  pgs_lex_free(&lexed);
  pgs_config_unref(config);
  return 0;
}

/* ---- options ---- */

/* Lex and analyse SQL; the caller unrefs the plan. */
static pgs_plan_t *analyse(const char *sql) {
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  pgs_plan_t *plan = pgs_analyze(app, &lexed);
  assert_non_null(plan);
  return plan;
}

/* The spec of COPY statement SQL, or the refusal (plan or resolve) in ERR. */
static pgs_status_t spec_of(const char *sql, pgs_copy_spec_t *spec, pgs_key_error_t *err) {
  pgs_plan_t *plan = analyse(sql);
  pgs_status_t st;
  if (plan->refuse_sqlstate[0]) {
    memcpy(err->sqlstate, plan->refuse_sqlstate, sizeof(err->sqlstate));
    snprintf(err->message, sizeof(err->message), "%s", plan->refuse_message);
    st = PGS_EINVAL;
  } else {
    if (plan->copy == NULL) fail_msg("%s: no COPY options in the plan", sql);
    st = pgs_copy_spec_resolve(plan->copy, &lexed, spec, err);
  }
  pgs_plan_unref(plan);
  return st;
}

static void spec_ok(const char *sql, pgs_copy_spec_t *spec) {
  pgs_key_error_t err;
  if (spec_of(sql, spec, &err) != PGS_OK) fail_msg("%s: %s %s", sql, err.sqlstate, err.message);
}

static void expect_spec(const char *sql, pgs_copy_format_t format, char delimiter,
                        const char *null_string, char quote, char escape,
                        pgs_copy_header_t header) {
  pgs_copy_spec_t spec;
  spec_ok(sql, &spec);
  if (spec.format != format || spec.delimiter != delimiter ||
      strcmp(spec.null_string, null_string) || spec.null_len != strlen(null_string) ||
      spec.quote != quote || spec.escape != escape || spec.header != header)
    fail_msg("%s\n  got format %d delimiter %#x null '%s' quote %#x escape %#x header %d", sql,
             (int)spec.format, spec.delimiter, spec.null_string, spec.quote, spec.escape,
             (int)spec.header);
}

static void test_options_defaults(void **state) {
  const pgs_copy_header_t none = PGS_COPY_HEADER_NONE, skip = PGS_COPY_HEADER_SKIP,
                          match = PGS_COPY_HEADER_MATCH;
  expect_spec("COPY users (id, name) FROM STDIN", PGS_COPY_TEXT, '\t', "\\N", 0, 0, none);
  expect_spec("copy users (id) from stdin with (format text)", PGS_COPY_TEXT, '\t', "\\N", 0, 0,
              none);
  expect_spec("COPY users (id) FROM STDIN WITH (FORMAT csv)", PGS_COPY_CSV, ',', "", '"', '"',
              none);
  expect_spec("COPY users (id) FROM STDIN (FORMAT 'csv')", PGS_COPY_CSV, ',', "", '"', '"', none);
  expect_spec("COPY users (id) FROM STDIN WITH CSV HEADER DELIMITER ';'", PGS_COPY_CSV, ';', "",
              '"', '"', skip);
  expect_spec(
      "COPY users (id) FROM STDIN WITH CSV HEADER DELIMITER AS ';' NULL AS 'NA' "
      "QUOTE AS '''' ESCAPE AS '\\' FORCE NOT NULL id",
      PGS_COPY_CSV, ';', "NA", '\'', '\\', skip);
  expect_spec("COPY users (id) FROM STDIN (FORMAT csv, HEADER match, ESCAPE E'\\\\')", PGS_COPY_CSV,
              ',', "", '"', '\\', match);
  expect_spec("COPY users (id) FROM STDIN DELIMITER '|' NULL ''", PGS_COPY_TEXT, '|', "", 0, 0,
              none);
  expect_spec("COPY users (id) FROM STDIN USING DELIMITERS '|' WITH NULL AS 'x'", PGS_COPY_TEXT,
              '|', "x", 0, 0, none);
  expect_spec("COPY users (id) FROM STDIN (DELIMITER E'\\x01')", PGS_COPY_TEXT, 1, "\\N", 0, 0,
              none);
  expect_spec("COPY users (id) FROM STDIN (\"delimiter\" '|', \"header\")", PGS_COPY_TEXT, '|',
              "\\N", 0, 0, skip);
  expect_spec("COPY users (id) FROM STDIN (HEADER 1)", PGS_COPY_TEXT, '\t', "\\N", 0, 0, skip);
  expect_spec("COPY users (id) FROM STDIN (HEADER 0)", PGS_COPY_TEXT, '\t', "\\N", 0, 0, none);
  expect_spec("COPY users (id) FROM STDIN (HEADER on)", PGS_COPY_TEXT, '\t', "\\N", 0, 0, skip);
  expect_spec("COPY users (id) FROM STDIN (HEADER 'OFF')", PGS_COPY_TEXT, '\t', "\\N", 0, 0, none);
  expect_spec("COPY users (id) FROM STDIN (HEADER true, FORMAT csv)", PGS_COPY_CSV, ',', "", '"',
              '"', skip);
  expect_spec("COPY users (id) FROM STDIN (HEADER false)", PGS_COPY_TEXT, '\t', "\\N", 0, 0, none);
  expect_spec("COPY users (id) FROM STDIN (NULL -1)", PGS_COPY_TEXT, '\t', "-1", 0, 0, none);
  expect_spec("COPY users (id) FROM STDIN (NULL 007)", PGS_COPY_TEXT, '\t', "7", 0, 0, none);
  expect_spec("COPY users (id) FROM STDIN (FORMAT csv, DELIMITER 1)", PGS_COPY_CSV, '1', "", '"',
              '"', none);
  expect_spec(
      "COPY users (id) FROM STDIN (FORMAT csv, ENCODING 'utf-8', FREEZE, "
      "FORCE_NULL (id), FORCE_NOT_NULL (name))",
      PGS_COPY_CSV, ',', "", '"', '"', none);
  expect_spec("COPY users (id) FROM STDIN (ENCODING 'UTF8') WHERE id > 5", PGS_COPY_TEXT, '\t',
              "\\N", 0, 0, none);
  /* CSV is a keyword; the literal after WHERE is not an option value */
  expect_spec("COPY users (id, name) FROM STDIN WITH CSV WHERE name IS DISTINCT FROM 'text'",
              PGS_COPY_CSV, ',', "", '"', '"', none);
  expect_spec("COPY users (id) FROM STDIN (FORMAT csv /* c */ , DELIMITER /* c */ ';')",
              PGS_COPY_CSV, ';', "", '"', '"', none);

  pgs_copy_spec_t spec;
  spec_ok("COPY users (id, name) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (name, id), FREEZE 1)",
          &spec);
  assert_true(spec.key_force_not_null);
  assert_false(spec.key_force_null);
  assert_true(spec.freeze);
  assert_int_equal(spec.ncolumns, 2);
  spec_ok("COPY users (id) FROM STDIN (FORMAT csv, FORCE_NULL (id))", &spec);
  assert_true(spec.key_force_null);
  assert_false(spec.key_force_not_null);
  assert_int_equal(spec.ncolumns, 1);
}

typedef struct option_error {
  const char *options;
  const char *sqlstate;
  const char *message;
} option_error_t;

/* What PostgreSQL 15 answers for "COPY t (id, b) FROM STDIN <options>". */
static const option_error_t option_errors[] = {
    {"(format binary, delimiter ',')", "42601", "cannot specify DELIMITER in BINARY mode"},
    {"(format binary, null 'x')", "42601", "cannot specify NULL in BINARY mode"},
    {"(force_quote (id))", "0A000", "COPY force quote available only in CSV mode"},
    {"(format csv, force_quote *)", "0A000", "COPY force quote only available using COPY TO"},
    {"(format csv, force_quote (id, b))", "0A000", "COPY force quote only available using COPY TO"},
    {"(delimiter 'ab')", "0A000", "COPY delimiter must be a single one-byte character"},
    {"(delimiter '')", "0A000", "COPY delimiter must be a single one-byte character"},
    {"(delimiter 'é')", "0A000", "COPY delimiter must be a single one-byte character"},
    {"(delimiter E'\\n')", "22023", "COPY delimiter cannot be newline or carriage return"},
    {"(format csv, delimiter E'\\r')", "22023",
     "COPY delimiter cannot be newline or carriage return"},
    {"(null E'a\\rb')", "22023", "COPY null representation cannot use newline or carriage return"},
    {"(delimiter 'a')", "22023", "COPY delimiter cannot be \"a\""},
    {"(delimiter '.')", "22023", "COPY delimiter cannot be \".\""},
    {"(delimiter 1)", "22023", "COPY delimiter cannot be \"1\""},
    {"(delimiter E'\\\\')", "22023", "COPY delimiter cannot be \"\\\""},
    {"(quote '\"')", "0A000", "COPY quote available only in CSV mode"},
    {"(format text, quote '\"')", "0A000", "COPY quote available only in CSV mode"},
    {"(format csv, quote 'xy')", "0A000", "COPY quote must be a single one-byte character"},
    {"(format csv, delimiter '\"')", "22023", "COPY delimiter and quote must be different"},
    {"(format csv, delimiter ',', quote ',')", "22023",
     "COPY delimiter and quote must be different"},
    {"(escape 'x')", "0A000", "COPY escape available only in CSV mode"},
    {"(format csv, escape '')", "0A000", "COPY escape must be a single one-byte character"},
    {"(force_not_null (id))", "0A000", "COPY force not null available only in CSV mode"},
    {"(force_null (id))", "0A000", "COPY force null available only in CSV mode"},
    {"(format csv, force_not_null *)", "22023",
     "argument to option \"force_not_null\" must be a list of column names"},
    {"(format csv, force_null *)", "22023",
     "argument to option \"force_null\" must be a list of column names"},
    {"(format csv, force_not_null 'id')", "22023",
     "argument to option \"force_not_null\" must be a list of column names"},
    {"(null ',', format csv)", "0A000", "COPY delimiter must not appear in the NULL specification"},
    {"(delimiter '|', null 'a|b')", "0A000",
     "COPY delimiter must not appear in the NULL specification"},
    {"(format csv, null 'a\"b')", "0A000",
     "CSV quote character must not appear in the NULL specification"},
    {"(header 2)", "42601", "header requires a Boolean value or \"match\""},
    {"(header yes)", "42601", "header requires a Boolean value or \"match\""},
    {"(header 1.0)", "42601", "header requires a Boolean value or \"match\""},
    {"(header -1)", "42601", "header requires a Boolean value or \"match\""},
    {"(freeze 'x')", "42601", "freeze requires a Boolean value"},
    {"(freeze 2)", "42601", "freeze requires a Boolean value"},
    {"(format 'TEXT')", "22023", "COPY format \"TEXT\" not recognized"},
    {"(format xml)", "22023", "COPY format \"xml\" not recognized"},
    {"(format csv, format csv)", "42601", "conflicting or redundant options"},
    {"(delimiter ',', delimiter ',')", "42601", "conflicting or redundant options"},
    {"(header, header false)", "42601", "conflicting or redundant options"},
    {"(bogus 1)", "42601", "option \"bogus\" not recognized"},
    {"(default 'x')", "42601", "option \"default\" not recognized"},
    {"(on_error stop)", "42601", "option \"on_error\" not recognized"},
    {"(\"Delimiter\" ',')", "42601", "option \"Delimiter\" not recognized"},
    {"(format binary, header)", "0A000", "cannot specify HEADER in BINARY mode"},
    {"(format)", "42601", "format requires a parameter"},
    {"(delimiter)", "42601", "delimiter requires a parameter"},
    {"(null)", "42601", "null requires a parameter"},
    /* pgshard's own refusals (sharded table) */
    {"(encoding 'latin1')", "0A000",
     "COPY ENCODING 'latin1' into sharded table users is not supported; only UTF8 is"},
    {"(convert_selectively (id))", "0A000", "COPY option convert_selectively is not supported"},
};

static void test_options_errors(void **state) {
  char sql[512];
  for (size_t i = 0; i < PGS_ARRAY_LEN(option_errors); i++) {
    const option_error_t *e = &option_errors[i];
    snprintf(sql, sizeof(sql), "COPY users (id, b) FROM STDIN %s", e->options);
    pgs_copy_spec_t spec;
    pgs_key_error_t err;
    if (spec_of(sql, &spec, &err) == PGS_OK) fail_msg("%s: accepted", sql);
    const char *message = err.message;
    if (!strncmp(message, "pgshard: ", 9)) message += 9;
    if (strcmp(err.sqlstate, e->sqlstate) || (e->message && strcmp(message, e->message)))
      fail_msg("%s\n  got      %s %s\n  expected %s %s", sql, err.sqlstate, message, e->sqlstate,
               e->message ? e->message : "");
  }
}

static void test_options_reference_table(void **state) {
  pgs_copy_spec_t spec;
  /* Not in the shard map: bytes go to every shard, so binary and any
   * encoding are fine; the options are still read and checked. */
  spec_ok("COPY countries (code) FROM STDIN (FORMAT binary)", &spec);
  assert_int_equal(spec.format, PGS_COPY_BINARY);
  spec_ok("COPY BINARY countries FROM STDIN", &spec);
  assert_int_equal(spec.format, PGS_COPY_BINARY);
  assert_int_equal(spec.ncolumns, -1);
  spec_ok("COPY countries FROM STDIN (ENCODING 'latin1', FORMAT csv)", &spec);
  assert_int_equal(spec.format, PGS_COPY_CSV);
  pgs_key_error_t err;
  assert_int_equal(spec_of("COPY countries FROM STDIN (FORMAT csv, QUOTE 'ab')", &spec, &err),
                   PGS_EINVAL);
  assert_string_equal(err.sqlstate, "0A000");

  pgs_plan_t *plan = analyse("COPY countries (code) FROM STDIN WITH CSV");
  assert_int_equal(plan->kind, PGS_STMT_COPY_FROM);
  assert_non_null(plan->copy);
  assert_int_equal(plan->copy_key_column, -1);
  pgs_plan_unref(plan);
  /* Not from STDIN, or not FROM at all: no options in the plan. */
  plan = analyse("COPY countries TO STDOUT (FORMAT csv)");
  assert_null(plan->copy);
  pgs_plan_unref(plan);
  plan = analyse("COPY countries FROM '/tmp/x' (FORMAT csv)");
  assert_null(plan->copy);
  pgs_plan_unref(plan);
  plan = analyse("SELECT 1");
  assert_null(plan->copy);
  pgs_plan_unref(plan);
}

/* The plan is cached by normalised text, where a literal option value is a
 * placeholder: two COPYs differing only in it share one plan, and each
 * resolves to its own value. */
static void test_options_cached_plan(void **state) {
  static const struct {
    const char *sql;
    const char *sqlstate; /* NULL: resolves */
    char delimiter;
    pgs_copy_format_t format;
    pgs_copy_header_t header;
  } cases[] = {
      {"COPY users (id) FROM STDIN (DELIMITER ';')", NULL, ';', PGS_COPY_TEXT, 0},
      {"COPY users (id) FROM STDIN (DELIMITER '|')", NULL, '|', PGS_COPY_TEXT, 0},
      {"COPY users (id) FROM STDIN (DELIMITER 'a')", "22023", 0, 0, 0},
      {"COPY users (id) FROM STDIN (FORMAT 'csv', HEADER 1)", NULL, ',', PGS_COPY_CSV,
       PGS_COPY_HEADER_SKIP},
      {"COPY users (id) FROM STDIN (FORMAT 'text', HEADER 0)", NULL, '\t', PGS_COPY_TEXT,
       PGS_COPY_HEADER_NONE},
      {"COPY users (id) FROM STDIN (FORMAT 'binary', HEADER 0)", NULL, '\t', PGS_COPY_BINARY,
       PGS_COPY_HEADER_NONE},
      {"COPY users (id) FROM STDIN (FORMAT 'binary', HEADER 1)", "0A000", 0, 0, 0},
      {"COPY users (id) FROM STDIN (FORMAT 'csv', HEADER 7)", "42601", 0, 0, 0},
  };
  pgs_plan_cache_t *cache = pgs_plan_cache_new(16);
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    const char *sql = cases[i].sql;
    assert_int_equal(pgs_lex(sql, strlen(sql), &lexed), PGS_OK);
    pgs_plan_t *plan = pgs_plan_cache_get(cache, app, &lexed);
    assert_string_equal(plan->refuse_sqlstate, "");
    assert_non_null(plan->copy);
    assert_true(pgs_copy_options_have_literals(plan->copy));
    pgs_copy_spec_t spec;
    pgs_key_error_t err;
    pgs_status_t st = pgs_copy_spec_resolve(plan->copy, &lexed, &spec, &err);
    if (cases[i].sqlstate) {
      assert_int_equal(st, PGS_EINVAL);
      assert_string_equal(err.sqlstate, cases[i].sqlstate);
    } else {
      if (st != PGS_OK) fail_msg("%s: %s %s", sql, err.sqlstate, err.message);
      assert_int_equal(spec.delimiter, cases[i].delimiter);
      assert_int_equal(spec.format, cases[i].format);
      assert_int_equal(spec.header, cases[i].header);
    }
    pgs_plan_unref(plan);
  }
  /* Two normalised texts: (DELIMITER $1) and (FORMAT $1, HEADER $2). */
  assert_int_equal(pgs_plan_cache_misses(cache), 2);
  assert_int_equal(pgs_plan_cache_hits(cache), PGS_ARRAY_LEN(cases) - 2);
  /* Without the statement's literals the options cannot be resolved. */
  const char *sql = "COPY users (id) FROM STDIN (DELIMITER ';')";
  assert_int_equal(pgs_lex(sql, strlen(sql), &lexed), PGS_OK);
  pgs_plan_t *plan = pgs_plan_cache_get(cache, app, &lexed);
  pgs_copy_spec_t spec;
  pgs_key_error_t err;
  assert_int_equal(pgs_copy_spec_resolve(plan->copy, NULL, &spec, &err), PGS_EINVAL);
  pgs_plan_unref(plan);
  pgs_plan_cache_free(cache);
}

static void test_options_plan_fields(void **state) {
  pgs_plan_t *plan = analyse("COPY users (name, id) FROM STDIN (FORMAT csv)");
  assert_int_equal(plan->kind, PGS_STMT_COPY_FROM);
  assert_int_equal(plan->target, PGS_TARGET_ROWS);
  assert_ptr_equal(plan->table, users);
  assert_int_equal(plan->copy_key_column, 1);
  assert_non_null(plan->copy);
  assert_false(pgs_copy_options_have_literals(plan->copy));
  pgs_plan_unref(plan);
  /* Invalid options without literals refuse the plan itself. */
  plan = analyse("COPY users (id) FROM STDIN (FORMAT binary, HEADER)");
  assert_string_equal(plan->refuse_sqlstate, "0A000");
  assert_non_null(strstr(plan->refuse_message, "cannot specify HEADER in BINARY mode"));
  pgs_plan_unref(plan);
  plan = analyse("COPY users (id) FROM STDIN (FORMAT xml)");
  assert_string_equal(plan->refuse_sqlstate, "22023");
  pgs_plan_unref(plan);
}

/* ---- the splitter ---- */

typedef struct got {
  int n;
  int cap;
  int *shard;
  size_t *off;
  size_t *len;
  char *bytes;
  size_t blen, bcap;
  pgs_status_t status;
  pgs_key_error_t err;
  bool ended;
  uint64_t rows;
} got_t;

static void got_free(got_t *g) {
  free(g->shard);
  free(g->off);
  free(g->len);
  free(g->bytes);
  memset(g, 0, sizeof(*g));
}

static void collect(void *ctx, int shard, const uint8_t *row, size_t len) {
  got_t *g = ctx;
  if (g->n == g->cap) {
    g->cap = g->cap ? g->cap * 2 : 64;
    g->shard = realloc(g->shard, sizeof(int) * (size_t)g->cap);
    g->off = realloc(g->off, sizeof(size_t) * (size_t)g->cap);
    g->len = realloc(g->len, sizeof(size_t) * (size_t)g->cap);
  }
  if (g->blen + len > g->bcap) {
    while (g->blen + len > g->bcap) g->bcap = g->bcap ? g->bcap * 2 : 1024;
    g->bytes = realloc(g->bytes, g->bcap);
  }
  memcpy(g->bytes + g->blen, row, len);
  g->shard[g->n] = shard;
  g->off[g->n] = g->blen;
  g->len[g->n] = len;
  g->blen += len;
  g->n++;
}

/* What the splitter is given. */
typedef struct setup {
  pgs_copy_spec_t spec;
  const pgs_table_t *table;
  int key_column;
  int ncolumns;
  size_t max_row;
  const pgs_route_session_t *session;
} setup_t;

static setup_t setup_for(const char *sql) {
  setup_t s = {.max_row = 1 << 20};
  spec_ok(sql, &s.spec);
  pgs_plan_t *plan = analyse(sql);
  if (plan->table == NULL || plan->copy_key_column < 0) fail_msg("%s: not a sharded COPY", sql);
  s.table = plan->table;
  s.key_column = plan->copy_key_column;
  s.ncolumns = s.spec.ncolumns;
  pgs_plan_unref(plan);
  return s;
}

typedef enum { CHUNKS_WHOLE, CHUNKS_BYTES, CHUNKS_CUT, CHUNKS_RANDOM } chunking_t;

/* Feed DATA (LEN bytes) cut as CHUNKING says (CUT: at byte ARG; RANDOM:
 * pieces of 1..ARG bytes from seed SEED), then finish. Each piece is copied
 * to a buffer of its own size first, so reading past it is caught by ASan. */
static void run(const setup_t *st, const char *data, size_t len, chunking_t chunking, size_t arg,
                unsigned seed, got_t *g) {
  memset(g, 0, sizeof(*g));
  pgs_copy_split_t *s = pgs_copy_split_new(&st->spec, app, st->table, st->key_column, st->ncolumns,
                                           st->max_row, st->session, collect, g);
  size_t at = 0;
  g->status = PGS_OK;
  while (at < len && g->status == PGS_OK) {
    size_t n = len - at;
    if (chunking == CHUNKS_BYTES) n = 1;
    if (chunking == CHUNKS_CUT && at < arg) n = arg - at;
    if (chunking == CHUNKS_RANDOM) {
      seed = seed * 1103515245u + 12345u;
      size_t want = 1 + (seed >> 8) % arg;
      if (want < n) n = want;
    }
    uint8_t *piece = malloc(n ? n : 1);
    memcpy(piece, data + at, n);
    g->status = pgs_copy_split_feed(s, piece, n, &g->err);
    free(piece);
    at += n;
  }
  if (g->status == PGS_OK) g->status = pgs_copy_split_finish(s, &g->err);
  g->ended = pgs_copy_split_ended(s);
  g->rows = pgs_copy_split_rows(s);
  if (g->status == PGS_OK) {
    /* After an error or the end, every call repeats itself. */
  } else {
    pgs_key_error_t again;
    assert_int_equal(pgs_copy_split_feed(s, (const uint8_t *)"1\n", 2, &again), PGS_EINVAL);
    assert_string_equal(again.message, g->err.message);
  }
  pgs_copy_split_free(s);
}

static void describe(const got_t *g, char *buf, size_t cap) {
  size_t n = 0;
  for (int i = 0; i < g->n && n + 64 < cap; i++) {
    n += (size_t)snprintf(buf + n, cap - n, "  [%d] shard %d: \"", i, g->shard[i]);
    for (size_t k = 0; k < g->len[i] && n + 8 < cap; k++) {
      unsigned char c = (unsigned char)g->bytes[g->off[i] + k];
      n += (size_t)(c >= 32 && c < 127 ? snprintf(buf + n, cap - n, "%c", c)
                                       : snprintf(buf + n, cap - n, "\\x%02x", c));
    }
    n += (size_t)snprintf(buf + n, cap - n, "\"\n");
  }
  if (g->status != PGS_OK && n < cap)
    snprintf(buf + n, cap - n, "  error %s %s\n", g->err.sqlstate, g->err.message);
}

static bool same(const got_t *a, const got_t *b) {
  if (a->n != b->n || a->blen != b->blen || a->status != b->status || a->ended != b->ended ||
      a->rows != b->rows)
    return false;
  if (a->blen > 0 && memcmp(a->bytes, b->bytes, a->blen) != 0) return false;
  for (int i = 0; i < a->n; i++)
    if (a->shard[i] != b->shard[i] || a->len[i] != b->len[i]) return false;
  if (a->status != PGS_OK &&
      (strcmp(a->err.sqlstate, b->err.sqlstate) || strcmp(a->err.message, b->err.message)))
    return false;
  return true;
}

static void expect_same(const char *data, size_t len, const got_t *whole, const got_t *other,
                        const char *how) {
  if (same(whole, other)) return;
  static char a[8192], b[8192];
  describe(whole, a, sizeof(a));
  describe(other, b, sizeof(b));
  fail_msg("data \"%.*s\": fed %s differs from whole\nwhole:\n%s%s:\n%s", (int)len, data, how, a,
           how, b);
}

/* Split DATA every way; *WHOLE gets the result of feeding it whole. */
static void split_all_ways(const setup_t *st, const char *data, size_t len, got_t *whole) {
  run(st, data, len, CHUNKS_WHOLE, 0, 0, whole);
  got_t g;
  run(st, data, len, CHUNKS_BYTES, 0, 0, &g);
  expect_same(data, len, whole, &g, "byte by byte");
  got_free(&g);
  for (size_t cut = 1; cut < len; cut++) {
    run(st, data, len, CHUNKS_CUT, cut, 0, &g);
    char how[48];
    snprintf(how, sizeof(how), "cut at %zu", cut);
    expect_same(data, len, whole, &g, how);
    got_free(&g);
  }
  for (unsigned seed = 1; seed <= 8; seed++) {
    run(st, data, len, CHUNKS_RANDOM, 1 + seed * 3, seed, &g);
    expect_same(data, len, whole, &g, "in random pieces");
    got_free(&g);
  }
}

/* The shard the router gives KEY_SQL (a SQL literal) in an INSERT into
 * TABLE: the mapping COPY rows must follow. */
static int insert_shard(const pgs_table_t *table, const char *key_sql) {
  char sql[512];
  snprintf(sql, sizeof(sql), "INSERT INTO %s (%s) VALUES (%s)", table->name, table->column,
           key_sql);
  pgs_plan_t *plan = analyse(sql);
  pgs_route_t r;
  memset(&r, 0, sizeof(r));
  pgs_route_plan(app, plan, &lexed, NULL, NULL, &r);
  pgs_plan_unref(plan);
  if (r.kind != PGS_ROUTE_ONE) fail_msg("%s: not routed to one shard: %s", sql, r.message);
  return r.shard;
}

/* Row I of G is EXPECT (bytes) on SHARD. */
static void expect_row(const got_t *g, int i, int shard, const char *expect) {
  if (i >= g->n) fail_msg("no row %d (got %d)", i, g->n);
  size_t len = strlen(expect);
  if (g->len[i] != len || memcmp(g->bytes + g->off[i], expect, len) != 0 || g->shard[i] != shard)
    fail_msg("row %d: got shard %d \"%.*s\", expected shard %d \"%s\"", i, g->shard[i],
             (int)g->len[i], g->bytes + g->off[i], shard, expect);
}

static void expect_error(const got_t *g, const char *sqlstate, const char *message) {
  if (g->status == PGS_OK) fail_msg("no error; expected %s %s", sqlstate, message);
  if (strcmp(g->err.sqlstate, sqlstate) || !strstr(g->err.message, message))
    fail_msg("got %s %s\nexpected %s ...%s...", g->err.sqlstate, g->err.message, sqlstate, message);
}

static void expect_ok(const got_t *g) {
  if (g->status != PGS_OK) fail_msg("error %s %s", g->err.sqlstate, g->err.message);
}

static void test_text_rows(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN");
  char data[4096];
  size_t len = 0;
  int64_t keys[40];
  for (int i = 0; i < 40; i++) {
    keys[i] = i * 7919 - 100000;
    len += (size_t)snprintf(data + len, sizeof(data) - len, "%lld\tname %d\\tx\\\\\n",
                            (long long)keys[i], i);
  }
  got_t g;
  split_all_ways(&st, data, len, &g);
  expect_ok(&g);
  assert_int_equal(g.n, 40);
  assert_int_equal(g.rows, 40);
  size_t at = 0;
  for (int i = 0; i < 40; i++) {
    char key[32];
    snprintf(key, sizeof(key), "%lld", (long long)keys[i]);
    assert_int_equal(g.shard[i], insert_shard(users, key));
    assert_int_equal(g.off[i], at); /* rows in order, all of them, terminators included */
    at += g.len[i];
    assert_int_equal(g.bytes[at - 1], '\n');
  }
  assert_int_equal(at, len);
  assert_memory_equal(g.bytes, data, len);
  got_free(&g);

  /* The key in the second column; blanks around integers as PostgreSQL reads them. */
  st = setup_for("COPY users (name, id) FROM STDIN");
  const char *d = "a\t 17 \nb\\\tc\t-3\n\\N\t+5\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  expect_row(&g, 0, insert_shard(users, "17"), "a\t 17 \n");
  expect_row(&g, 1, insert_shard(users, "-3"), "b\\\tc\t-3\n");
  expect_row(&g, 2, insert_shard(users, "5"), "\\N\t+5\n");
  got_free(&g);
}

static void test_text_key_escapes(void **state) {
  setup_t st = setup_for("COPY names (name, n) FROM STDIN");
  static const struct {
    const char *field;
    const char *literal; /* the same key in SQL */
  } cases[] = {
      {"plain", "'plain'"},
      {"a\\tb", "E'a\\tb'"},
      {"\\101\\x42\\103", "'ABC'"}, /* octal and hex */
      {"\\1011", "'A1'"},           /* octal takes at most three digits */
      {"\\x4g", "E'\\x04g'"},       /* hex at most two, and only hex digits */
      {"\\xg", "'xg'"},             /* \x without a digit is x */
      {"\\q\\\\x", "E'q\\\\x'"},    /* other bytes stand for themselves */
      {"\\b\\f\\n\\r\\v", "E'\\b\\f\\n\\r\\013'"},
      {"x\\\ty", "E'x\\ty'"},             /* an escaped delimiter */
      {"\\303\\251t\\xc3\\xa9", "'été'"}, /* escapes making UTF-8 */
      {"\\\\N", "E'\\\\N'"},              /* not the NULL marker */
      {"", "''"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    char data[128];
    int n = snprintf(data, sizeof(data), "%s\t1\n", cases[i].field);
    got_t g;
    split_all_ways(&st, data, (size_t)n, &g);
    expect_ok(&g);
    assert_int_equal(g.n, 1);
    if (g.shard[0] != insert_shard(names, cases[i].literal)) {
      fail_msg("field %s: shard %d, INSERT of %s gives %d", cases[i].field, g.shard[0],
               cases[i].literal, insert_shard(names, cases[i].literal));
    }
    got_free(&g);
  }
  /* Distinct keys spread over shards: make sure the test is not vacuous. */
  bool seen[3] = {false};
  for (int i = 0; i < 30; i++) {
    char lit[32];
    snprintf(lit, sizeof(lit), "'k%d'", i);
    seen[insert_shard(names, lit)] = true;
  }
  assert_true(seen[0] && seen[1] && seen[2]);

  /* An escape making a NUL or invalid UTF-8 in the key: 22021. */
  got_t g;
  split_all_ways(&st, "ok\t1\na\\000b\t2\n", 14, &g);
  expect_error(&g, "22021", "invalid byte sequence for encoding \"UTF8\": 0x00");
  expect_error(&g, "22021", "(COPY names, line 2, column name)");
  assert_int_equal(g.n, 1);
  got_free(&g);
  split_all_ways(&st, "\\xff\t2\n", 7, &g);
  expect_error(&g, "22021", "0xff");
  got_free(&g);
  /* A trailing backslash at the end of the data is dropped from the key. */
  split_all_ways(&st, "x\t1\tab\\", 7, &g);
  expect_error(&g, "22P04", "extra data after last expected column");
  got_free(&g);
  st = setup_for("COPY names (n, name) FROM STDIN");
  split_all_ways(&st, "1\tab\\", 5, &g);
  expect_ok(&g);
  expect_row(&g, 0, insert_shard(names, "'ab'"), "1\tab\\");
  got_free(&g);
}

static void test_text_errors(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN");
  got_t g;
  split_all_ways(&st, "1\ta\n2\tb\n\\N\tc\n4\td\n", 17, &g);
  expect_error(&g, "23502", "null value in shard key column \"id\" of relation \"users\"");
  expect_error(&g, "23502", "(COPY users, line 3)");
  assert_int_equal(g.n, 2); /* rows before the error stay reported */
  got_free(&g);

  split_all_ways(&st, "1\ta\nabc\tb\n", 10, &g);
  expect_error(&g, "22P02", "invalid input syntax for type bigint");
  expect_error(&g, "22P02", "(COPY users, line 2, column id)");
  got_free(&g);
  split_all_ways(&st, "99999999999999999999\tb\n", 23, &g);
  expect_error(&g, "22003", "(COPY users, line 1, column id)");
  got_free(&g);

  /* Too few fields to reach the key, too many, too few after it. */
  setup_t st2 = setup_for("COPY users (name, id) FROM STDIN");
  split_all_ways(&st2, "a\t1\nb\n", 6, &g);
  expect_error(&g, "22P04", "missing data for column \"id\" (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\n2\tb\tc\n", 10, &g);
  expect_error(&g, "22P04", "extra data after last expected column (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\n2\n", 6, &g);
  expect_error(&g, "22P04", "missing data for column 2 of 2 (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "\n", 1, &g);
  expect_error(&g, "22P02", "(COPY users, line 1, column id)");
  got_free(&g);

  /* Keys the shard map refuses keep their SQLSTATE. */
  setup_t ev = setup_for("COPY docs (id) FROM STDIN");
  split_all_ways(&ev, "not-a-uuid\n", 11, &g);
  expect_error(&g, "22P02", "uuid");
  got_free(&g);
}

static void test_text_marker(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN");
  got_t g;
  const char *d = "1\ta\n\\.\n2\tb\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_true(g.ended);
  assert_int_equal(g.n, 1);
  expect_row(&g, 0, insert_shard(users, "1"), "1\ta\n");
  got_free(&g);
  /* PostgreSQL 15 text format: \. anywhere ends the data; what came
   * before it on the line is a last row, without a terminator. */
  d = "1\ta\n2\tb\\.\nxyz";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_int_equal(g.n, 2);
  expect_row(&g, 1, insert_shard(users, "2"), "2\tb");
  got_free(&g);
  d = "1\ta\r\n\\.\r\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_true(g.ended);
  expect_row(&g, 0, insert_shard(users, "1"), "1\ta\r\n");
  got_free(&g);
  /* \\. is data: a backslash, then a dot */
  setup_t nm = setup_for("COPY names (name) FROM STDIN");
  d = "\\\\.\n";
  split_all_ways(&nm, d, strlen(d), &g);
  expect_ok(&g);
  assert_false(g.ended);
  expect_row(&g, 0, insert_shard(names, "E'\\\\.'"), d);
  got_free(&g);
  /* Corrupt markers, as PostgreSQL reports them. */
  split_all_ways(&st, "1\ta\n\\.x\n", 8, &g);
  expect_error(&g, "22P04", "end-of-copy marker corrupt (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\n\\.", 6, &g);
  expect_error(&g, "22P04", "end-of-copy marker corrupt (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\n\\.\r\n", 8, &g);
  expect_error(&g, "22P04", "end-of-copy marker does not match previous newline style");
  got_free(&g);
  split_all_ways(&st, "1\ta\r\n\\.\n", 8, &g);
  expect_error(&g, "22P04", "end-of-copy marker does not match previous newline style");
  got_free(&g);
  split_all_ways(&st, "\\.\r\n", 4, &g); /* the first line may pick either */
  expect_ok(&g);
  assert_true(g.ended);
  assert_int_equal(g.n, 0);
  got_free(&g);
}

static void test_line_ends(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN");
  got_t g;
  const char *d = "1\ta\r\n2\tb\r\n3\tc";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  expect_row(&g, 0, insert_shard(users, "1"), "1\ta\r\n");
  expect_row(&g, 1, insert_shard(users, "2"), "2\tb\r\n");
  expect_row(&g, 2, insert_shard(users, "3"), "3\tc"); /* the last, without a terminator */
  got_free(&g);
  d = "1\ta\r2\tb\r3\tc\r";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_int_equal(g.n, 3);
  expect_row(&g, 1, insert_shard(users, "2"), "2\tb\r");
  expect_row(&g, 2, insert_shard(users, "3"), "3\tc\r");
  got_free(&g);
  /* An escaped line end is data (text format). */
  d = "1\ta\\\nb\n2\tc\\\rd\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_int_equal(g.n, 2);
  expect_row(&g, 0, insert_shard(users, "1"), "1\ta\\\nb\n");
  got_free(&g);
  /* Mixed line ends, as PostgreSQL refuses them. */
  split_all_ways(&st, "1\ta\r\n2\tb\n", 10, &g);
  expect_error(&g, "22P04", "literal newline found in data (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\n2\tb\r\n", 10, &g);
  expect_error(&g, "22P04", "literal carriage return found in data (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\r2\tb\n", 8, &g);
  expect_error(&g, "22P04", "literal newline found in data (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\r\n2\tb\rc\n", 12, &g);
  expect_error(&g, "22P04", "literal carriage return found in data (COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "1\ta\r\n2\tb\r", 10, &g); /* \r at the end, \r\n expected */
  expect_error(&g, "22P04", "literal carriage return found in data (COPY users, line 2)");
  got_free(&g);
}

static void test_header(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN (HEADER)");
  got_t g;
  const char *d = "id\tname\n1\ta\n\\N\tb\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_row(&g, 0, -1, "id\tname\n");
  expect_row(&g, 1, insert_shard(users, "1"), "1\ta\n");
  expect_error(&g, "23502", "(COPY users, line 3)"); /* the header is line 1 */
  assert_int_equal(g.rows, 1);
  got_free(&g);
  st = setup_for("COPY users (id, name) FROM STDIN (FORMAT csv, HEADER match)");
  d = "\"id\nx\",\"name\"\r\n7,a\r\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  expect_row(&g, 0, -1, "\"id\nx\",\"name\"\r\n");
  expect_row(&g, 1, insert_shard(users, "7"), "7,a\r\n");
  got_free(&g);
  /* A header alone, without a line end. */
  split_all_ways(&st, "id,name", 7, &g);
  expect_ok(&g);
  assert_int_equal(g.n, 1);
  expect_row(&g, 0, -1, "id,name");
  assert_int_equal(g.rows, 0);
  got_free(&g);
}

static void test_csv_rows(void **state) {
  setup_t st = setup_for("COPY names (name, note) FROM STDIN (FORMAT csv)");
  static const struct {
    const char *row;
    const char *literal;
  } cases[] = {
      {"plain,x\n", "'plain'"},
      {"\"quoted\",x\n", "'quoted'"},
      {"\"a,b\",x\n", "'a,b'"},
      {"\"a\"\"b\",x\n", "'a\"b'"},
      {"\"line\nbreak\",x\n", "E'line\\nbreak'"},
      {"\"cr\r\nlf\",x\n", "E'cr\\r\\nlf'"},
      {"mid\"dle, q\"d,x\n", "'middle, qd'"},
      {" spaced ,x\n", "' spaced '"},
      {"\"\",x\n", "''"},      /* a quoted empty string is not NULL */
      {"\\.,x\n", "E'\\\\.'"}, /* \. with more on its line is data in CSV */
      {"a\\b,\"multi\nline\nnote\"\n", "E'a\\\\b'"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    got_t g;
    split_all_ways(&st, cases[i].row, strlen(cases[i].row), &g);
    expect_ok(&g);
    expect_row(&g, 0, insert_shard(names, cases[i].literal), cases[i].row);
    got_free(&g);
  }
  got_t g;
  split_all_ways(&st, ",x\n", 3, &g);
  expect_error(&g, "23502", "(COPY names, line 1)");
  got_free(&g);
  /* line 3: the newline inside the open quote counts (PostgreSQL says so) */
  split_all_ways(&st, "ok,x\n\"open,x\n", 13, &g);
  expect_error(&g, "22P04", "unterminated CSV quoted field (COPY names, line 3)");
  got_free(&g);
  split_all_ways(&st, "a,\"x\"y\"\n", 8, &g); /* still quoted at the end of the data */
  expect_error(&g, "22P04", "unterminated CSV quoted field");
  got_free(&g);

  /* A different ESCAPE: only before a quote or itself, only inside quotes. */
  st = setup_for("COPY names (name, note) FROM STDIN (FORMAT csv, ESCAPE '\\')");
  const char *d = "\"a\\\"b\",x\n\"c\\\\\",\"y\\\"\n\"\n\"\\d\",z\nq\\,r\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  expect_row(&g, 0, insert_shard(names, "'a\"b'"), "\"a\\\"b\",x\n");
  expect_row(&g, 1, insert_shard(names, "E'c\\\\'"), "\"c\\\\\",\"y\\\"\n\"\n");
  expect_row(&g, 2, insert_shard(names, "E'\\\\d'"), "\"\\d\",z\n");
  expect_row(&g, 3, insert_shard(names, "E'q\\\\'"), "q\\,r\n");
  got_free(&g);

  /* Integer keys, NULL string, FORCE_NOT_NULL and FORCE_NULL on the key. */
  st = setup_for("COPY users (note, id) FROM STDIN (FORMAT csv, NULL 'NA', DELIMITER ';')");
  d = "x;\"42\"\n\"a;b\";NA\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_row(&g, 0, insert_shard(users, "42"), "x;\"42\"\n");
  expect_error(&g, "23502", "(COPY users, line 2)");
  got_free(&g);
  split_all_ways(&st, "x;\"NA\"\n", 7, &g); /* quoted: not NULL, and not a bigint */
  expect_error(&g, "22P02", "(COPY users, line 1, column id)");
  got_free(&g);
  st = setup_for("COPY names (name) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (name))");
  split_all_ways(&st, "\n", 1, &g);
  expect_ok(&g);
  expect_row(&g, 0, insert_shard(names, "''"), "\n");
  got_free(&g);
  st = setup_for("COPY names (name) FROM STDIN (FORMAT csv, FORCE_NULL (name))");
  split_all_ways(&st, "a\n\"\"\n", 5, &g);
  expect_error(&g, "23502", "(COPY names, line 2)");
  got_free(&g);

  /* Line numbers count the line ends inside quotes (after the first line,
   * as PostgreSQL counts them). */
  st = setup_for("COPY users (id, note) FROM STDIN (FORMAT csv)");
  d = "1,\"a\nb\"\n2,\"c\nd\ne\"\nx,y\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_error(&g, "22P02", "(COPY users, line 5, column id)");
  assert_int_equal(g.n, 2);
  got_free(&g);
}

/* ---- binary format ---- */

typedef struct bin {
  char data[8192];
  size_t len;
} bin_t;

static void bin_put(bin_t *b, const void *p, size_t n) {
  memcpy(b->data + b->len, p, n);
  b->len += n;
}
static void bin_i16(bin_t *b, int16_t v) {
  uint8_t x[2] = {(uint8_t)((uint16_t)v >> 8), (uint8_t)v};
  bin_put(b, x, 2);
}
static void bin_i32(bin_t *b, int32_t v) {
  uint8_t x[4] = {(uint8_t)((uint32_t)v >> 24), (uint8_t)((uint32_t)v >> 16),
                  (uint8_t)((uint32_t)v >> 8), (uint8_t)v};
  bin_put(b, x, 4);
}
static void bin_header(bin_t *b, int32_t flags, int32_t ext) {
  bin_put(b, "PGCOPY\n\377\r\n\0", 11);
  bin_i32(b, flags);
  bin_i32(b, ext);
  for (int i = 0; i < ext; i++) bin_put(b, "e", 1);
}
/* A tuple (id, name): the key in WIDTH bytes (0: NULL), a text name. */
static void bin_row(bin_t *b, int64_t id, int width, const char *name) {
  bin_i16(b, 2);
  if (width == 0) {
    bin_i32(b, -1);
  } else {
    bin_i32(b, width);
    for (int i = width - 1; i >= 0; i--) {
      uint8_t byte = (uint8_t)((uint64_t)id >> (8 * i));
      bin_put(b, &byte, 1);
    }
  }
  bin_i32(b, (int32_t)strlen(name));
  bin_put(b, name, strlen(name));
}

static void test_binary_rows(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN (FORMAT binary)");
  assert_int_equal(st.spec.format, PGS_COPY_BINARY);
  bin_t b = {.len = 0};
  bin_header(&b, 0, 3);
  size_t header = b.len;
  const int64_t ids[] = {1, 2, 3, 40, 50, 600, 7000};
  size_t start[8];
  for (int i = 0; i < 7; i++) {
    start[i] = b.len;
    bin_row(&b, ids[i], i == 3 ? 4 : i == 4 ? 2 : 8, i == 5 ? "" : "a name");
  }
  start[7] = b.len;
  bin_i16(&b, -1);
  got_t g;
  split_all_ways(&st, b.data, b.len, &g);
  expect_ok(&g);
  assert_true(g.ended);
  assert_int_equal(g.rows, 7);
  assert_int_equal(g.n, 9); /* header, 7 tuples, trailer */
  assert_int_equal(g.shard[0], -1);
  assert_int_equal(g.len[0], header);
  for (int i = 0; i < 7; i++) {
    char key[32];
    snprintf(key, sizeof(key), "%lld", (long long)ids[i]);
    assert_int_equal(g.shard[1 + i], insert_shard(users, key));
    assert_int_equal(g.len[1 + i], start[i + 1] - start[i]);
    assert_memory_equal(g.bytes + g.off[1 + i], b.data + start[i], g.len[1 + i]);
  }
  assert_int_equal(g.shard[8], -1);
  assert_int_equal(g.len[8], 2);
  got_free(&g);
  /* Without the trailer the data may end between tuples. */
  split_all_ways(&st, b.data, b.len - 2, &g);
  expect_ok(&g);
  assert_int_equal(g.rows, 7);
  got_free(&g);
  /* A text key. */
  setup_t names_st = setup_for("COPY names (name, n) FROM STDIN (FORMAT binary)");
  bin_t t = {.len = 0};
  bin_header(&t, 0, 0);
  bin_i16(&t, 2);
  bin_i32(&t, 5);
  bin_put(&t, "alice", 5);
  bin_i32(&t, -1);
  split_all_ways(&names_st, t.data, t.len, &g);
  expect_ok(&g);
  assert_int_equal(g.shard[1], insert_shard(names, "'alice'"));
  got_free(&g);
}

static void test_binary_errors(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN (FORMAT binary)");
  struct {
    const char *what;
    const char *sqlstate, *message;
  } cases[] = {
      {"signature", "22P04", "COPY file signature not recognized"},
      {"oids", "22P04", "invalid COPY file header (WITH OIDS)"},
      {"critical", "22P04", "unrecognized critical flags in COPY file header"},
      {"count", "22P04", "row field count is 3, expected 2"},
      {"null key", "23502", "null value in shard key column \"id\""},
      {"field size", "22P04", "invalid field size"},
      {"key width", "08P01", "insufficient data left in message"},
      {"truncated", "22P04", "unexpected EOF in COPY data"},
      {"after trailer", "22P04", "received copy data after EOF marker"},
      {"empty", "22P04", "COPY file signature not recognized"},
  };
  for (size_t c = 0; c < PGS_ARRAY_LEN(cases); c++) {
    bin_t b = {.len = 0};
    const char *what = cases[c].what;
    if (!strcmp(what, "signature")) {
      bin_put(&b, "PGCOPY\n\377\r\n\1", 11);
      bin_i32(&b, 0);
      bin_i32(&b, 0);
    } else if (!strcmp(what, "oids")) {
      bin_header(&b, 1 << 16, 0);
    } else if (!strcmp(what, "critical")) {
      bin_header(&b, 1 << 20, 0);
    } else if (strcmp(what, "empty") != 0) {
      bin_header(&b, 0, 0);
      bin_row(&b, 1, 8, "x");
    }
    if (!strcmp(what, "count")) {
      bin_i16(&b, 3);
    } else if (!strcmp(what, "null key")) {
      bin_row(&b, 0, 0, "x");
    } else if (!strcmp(what, "field size")) {
      bin_i16(&b, 2);
      bin_i32(&b, -2);
    } else if (!strcmp(what, "key width")) {
      bin_row(&b, 5, 3, "x");
    } else if (!strcmp(what, "truncated")) {
      bin_row(&b, 2, 8, "x");
      b.len -= 1;
    } else if (!strcmp(what, "after trailer")) {
      bin_i16(&b, -1);
      bin_row(&b, 2, 8, "x");
    }
    got_t g;
    run(&st, b.data, b.len, CHUNKS_WHOLE, 0, 0, &g);
    if (g.status == PGS_OK) fail_msg("%s: accepted", what);
    expect_error(&g, cases[c].sqlstate, cases[c].message);
    got_free(&g);
  }
  /* A tuple over the row cap: 54000, whole or in pieces. */
  st.max_row = 64;
  bin_t b = {.len = 0};
  bin_header(&b, 0, 0);
  char name[100];
  memset(name, 'n', sizeof(name) - 1);
  name[sizeof(name) - 1] = '\0';
  bin_row(&b, 1, 8, name);
  got_t g;
  run(&st, b.data, b.len, CHUNKS_BYTES, 0, 0, &g);
  expect_error(&g, "54000", "row longer than 64 bytes");
  got_free(&g);
}

static void test_csv_marker(void **state) {
  setup_t st = setup_for("COPY names (name) FROM STDIN (FORMAT csv)");
  got_t g;
  const char *d = "a\n\\.\nb\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_true(g.ended);
  assert_int_equal(g.n, 1);
  got_free(&g);
  /* Not the marker: \. not alone, inside quotes, or at the very end. */
  d = "\\.x\n\"\\.\"\n\"\n\\.\n\"\n\\.";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_false(g.ended);
  expect_row(&g, 0, insert_shard(names, "E'\\\\.x'"), "\\.x\n");
  expect_row(&g, 1, insert_shard(names, "E'\\\\.'"), "\"\\.\"\n");
  expect_row(&g, 2, insert_shard(names, "E'\\n\\\\.\\n'"), "\"\n\\.\n\"\n");
  expect_row(&g, 3, insert_shard(names, "E'\\\\.'"), "\\.");
  got_free(&g);
  d = "a\r\n\\.\r\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_true(g.ended);
  got_free(&g);
  /* With \r\n lines, "\.\n" is data, and then an unquoted newline. */
  split_all_ways(&st, "a\r\n\\.\n", 6, &g);
  expect_error(&g, "22P04", "unquoted newline found in data (COPY names, line 2)");
  got_free(&g);
  split_all_ways(&st, "a\n\\.\r\n", 6, &g);
  expect_error(&g, "22P04", "end-of-copy marker does not match previous newline style");
  got_free(&g);
  split_all_ways(&st, "a\r\n\\.\rx", 7, &g);
  expect_error(&g, "22P04", "unquoted carriage return found in data (COPY names, line 2)");
  got_free(&g);
}

static void test_row_cap(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN");
  st.max_row = 16;
  got_t g;
  const char *d = "1\t0123456789ab\n2\t0123456789abc\n3\tb\n"; /* rows of 15 and 16 bytes */
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_int_equal(g.n, 3);
  got_free(&g);
  d = "1\ta\n2\t0123456789abcd\n3\tb\n"; /* 17 bytes: refused whole or in pieces */
  split_all_ways(&st, d, strlen(d), &g);
  expect_error(&g, "54000", "row longer than 16 bytes (COPY users, line 2)");
  assert_int_equal(g.n, 1);
  got_free(&g);
  /* A partial row is refused as soon as it holds more than the cap. */
  st.max_row = 1000;
  memset(&g, 0, sizeof(g));
  pgs_copy_split_t *s =
      pgs_copy_split_new(&st.spec, app, st.table, 0, 2, st.max_row, NULL, collect, &g);
  char block[600];
  memset(block, 'x', sizeof(block));
  pgs_key_error_t err;
  assert_int_equal(pgs_copy_split_feed(s, (const uint8_t *)"5\t", 2, &err), PGS_OK);
  assert_int_equal(pgs_copy_split_feed(s, (const uint8_t *)block, sizeof(block), &err), PGS_OK);
  assert_int_equal(pgs_copy_split_feed(s, (const uint8_t *)block, sizeof(block), &err), PGS_EINVAL);
  assert_string_equal(err.sqlstate, "54000");
  assert_int_equal(g.n, 0);
  pgs_copy_split_free(s);
  got_free(&g);
}

/* Rows that arrive whole are reported in place; a row cut by a chunk
 * boundary is assembled. */
typedef struct where {
  const uint8_t *lo, *hi;
  int inside, outside;
} where_t;

static void count_where(void *ctx, int shard, const uint8_t *row, size_t len) {
  where_t *w = ctx;
  if (row >= w->lo && row + len <= w->hi)
    w->inside++;
  else
    w->outside++;
}

static void test_zero_copy(void **state) {
  setup_t st = setup_for("COPY users (id, name) FROM STDIN");
  const char *a = "1\ta\n2\tb\n3\t", *b = "c\n4\td\n";
  where_t w = {0};
  pgs_copy_split_t *s =
      pgs_copy_split_new(&st.spec, app, st.table, 0, 2, 1024, NULL, count_where, &w);
  pgs_key_error_t err;
  w.lo = (const uint8_t *)a;
  w.hi = w.lo + strlen(a);
  assert_int_equal(pgs_copy_split_feed(s, w.lo, strlen(a), &err), PGS_OK);
  assert_int_equal(w.inside, 2);
  w.lo = (const uint8_t *)b;
  w.hi = w.lo + strlen(b);
  assert_int_equal(pgs_copy_split_feed(s, w.lo, strlen(b), &err), PGS_OK);
  assert_int_equal(w.inside, 3);
  assert_int_equal(w.outside, 1); /* "3\tc\n", assembled */
  assert_int_equal(pgs_copy_split_finish(s, &err), PGS_OK);
  assert_int_equal(pgs_copy_split_rows(s), 4);
  pgs_copy_split_free(s);
}

static void test_range_and_uuid_tables(void **state) {
  setup_t st = setup_for("COPY events (id, what) FROM STDIN (FORMAT csv)");
  got_t g;
  const char *d = "-5,a\n99,b\n100,c\n999,d\n1000,e\n123456789,f\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  const int want[] = {0, 0, 1, 1, 2, 2};
  const char *keys[] = {"-5", "99", "100", "999", "1000", "123456789"};
  for (int i = 0; i < 6; i++) {
    assert_int_equal(g.shard[i], want[i]);
    assert_int_equal(g.shard[i], insert_shard(events, keys[i]));
  }
  got_free(&g);
  st = setup_for("COPY docs (id) FROM STDIN");
  d = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\n{A0EEBC999C0B4EF8BB6D6BB9BD380A12}\n";
  split_all_ways(&st, d, strlen(d), &g);
  expect_ok(&g);
  assert_int_equal(g.shard[0], insert_shard(docs, "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"));
  assert_int_equal(g.shard[1], insert_shard(docs, "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'"));
  got_free(&g);
}

static void test_session(void **state) {
  setup_t st = setup_for("COPY invoices (tenant_id, amount) FROM STDIN");
  pgs_key_t tenant;
  pgs_key_error_t kerr;
  assert_int_equal(pgs_key_from_text(PGS_TYPE_BIGINT, "42", 2, &tenant, &kerr), PGS_OK);
  pgs_route_session_t session = {.hint_shard = -1, .tenant = &tenant};
  st.session = &session;
  got_t g;
  split_all_ways(&st, "42\t1\n42\t2\n7\t3\n", 14, &g);
  assert_int_equal(g.n, 2);
  assert_int_equal(g.shard[0], 2);
  expect_error(&g, "42501", "tenant 7 of table invoices is not this session's tenant 42");
  expect_error(&g, "42501", "(COPY invoices, line 3, column tenant_id)");
  got_free(&g);
  /* A hint: keys of other shards are refused. */
  st = setup_for("COPY users (id) FROM STDIN");
  int s1 = insert_shard(users, "1");
  int other = -1;
  char key[16] = "";
  for (int k = 2; other < 0; k++) {
    snprintf(key, sizeof(key), "%d", k);
    if (insert_shard(users, key) != s1) other = k;
  }
  pgs_route_session_t hint = {.hint_shard = s1};
  st.session = &hint;
  char d[64];
  int n = snprintf(d, sizeof(d), "1\n%d\n", other);
  split_all_ways(&st, d, (size_t)n, &g);
  assert_int_equal(g.n, 1);
  expect_error(&g, "0A000", "not hinted shard");
  got_free(&g);
}

/* Random data over an alphabet of the bytes that matter must split the
 * same however it is cut (and never crash or read out of bounds). */
static void test_random_data(void **state) {
  static const char alphabet[] = "1\t\n\r\\.\",;x\n1";
  const char *sqls[] = {
      "COPY names (name, n) FROM STDIN",
      "COPY names (n, name) FROM STDIN (FORMAT csv)",
      "COPY names (name) FROM STDIN (FORMAT csv, ESCAPE '\\', HEADER)",
      "COPY names (name, n) FROM STDIN (FORMAT csv, DELIMITER ';', QUOTE '\\')",
      "COPY names (name, n) FROM STDIN (DELIMITER ',', NULL '1')",
  };
  unsigned seed = 12345;
  char data[64];
  for (size_t q = 0; q < PGS_ARRAY_LEN(sqls); q++) {
    setup_t st = setup_for(sqls[q]);
    for (int iter = 0; iter < 300; iter++) {
      seed = seed * 1103515245u + 12345u;
      size_t len = 1 + (seed >> 10) % 24;
      for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        data[i] = alphabet[(seed >> 12) % (sizeof(alphabet) - 1)];
      }
      got_t g;
      split_all_ways(&st, data, len, &g);
      got_free(&g);
    }
  }
}

static uint64_t throughput_rows;
static size_t throughput_bytes;

static void count_rows(void *ctx, int shard, const uint8_t *row, size_t len) {
  int *per_shard = ctx;
  per_shard[shard + 1]++;
  throughput_rows++;
  throughput_bytes += len;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Not an assertion on time: prints what one core does. */
static void test_throughput(void **state) {
  const char *sqls[] = {"COPY users (id, name, email) FROM STDIN",
                        "COPY users (id, name, email) FROM STDIN (FORMAT csv)"};
  const int nrows = 1000000;
  for (size_t q = 0; q < PGS_ARRAY_LEN(sqls); q++) {
    setup_t st = setup_for(sqls[q]);
    bool csv = st.spec.format == PGS_COPY_CSV;
    size_t cap = (size_t)nrows * 64;
    char *data = malloc(cap);
    size_t len = 0;
    for (int i = 0; i < nrows; i++)
      len += (size_t)snprintf(
          data + len, cap - len,
          csv ? "%d,\"user %d\",u%d@example.com\n" : "%d\tuser %d\tu%d@example.com\n", i * 13 + 1,
          i, i);
    int per_shard[4] = {0};
    throughput_rows = 0;
    throughput_bytes = 0;
    pgs_copy_split_t *s =
        pgs_copy_split_new(&st.spec, app, st.table, 0, 3, 1 << 20, NULL, count_rows, per_shard);
    pgs_key_error_t err;
    double t0 = now_seconds();
    /* CopyData messages of 64 KiB, as psql sends them: rows span them. */
    for (size_t at = 0; at < len; at += 65536) {
      size_t n = len - at < 65536 ? len - at : 65536;
      assert_int_equal(pgs_copy_split_feed(s, (const uint8_t *)data + at, n, &err), PGS_OK);
    }
    assert_int_equal(pgs_copy_split_finish(s, &err), PGS_OK);
    double t = now_seconds() - t0;
    assert_int_equal(throughput_rows, nrows);
    assert_int_equal(throughput_bytes, len);
    assert_int_equal(per_shard[0], 0);
    print_message("%s: %d rows (%.1f MB) in %.3f s: %.2f M rows/s, %.0f MB/s (shards %d/%d/%d)\n",
                  csv ? "csv " : "text", nrows, (double)len / 1e6, t, nrows / t / 1e6,
                  (double)len / t / 1e6, per_shard[1], per_shard[2], per_shard[3]);
    pgs_copy_split_free(s);
    free(data);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_options_defaults),
      cmocka_unit_test(test_options_errors),
      cmocka_unit_test(test_options_reference_table),
      cmocka_unit_test(test_options_cached_plan),
      cmocka_unit_test(test_options_plan_fields),
      cmocka_unit_test(test_text_rows),
      cmocka_unit_test(test_text_key_escapes),
      cmocka_unit_test(test_text_errors),
      cmocka_unit_test(test_text_marker),
      cmocka_unit_test(test_line_ends),
      cmocka_unit_test(test_header),
      cmocka_unit_test(test_csv_rows),
      cmocka_unit_test(test_csv_marker),
      cmocka_unit_test(test_binary_rows),
      cmocka_unit_test(test_binary_errors),
      cmocka_unit_test(test_row_cap),
      cmocka_unit_test(test_zero_copy),
      cmocka_unit_test(test_range_and_uuid_tables),
      cmocka_unit_test(test_session),
      cmocka_unit_test(test_random_data),
      cmocka_unit_test(test_throughput),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
