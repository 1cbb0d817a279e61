/*
 * merge.h — reads that run on several shards and come back as one result,
 * exactly as one PostgreSQL holding every row would answer, or are refused
 * (0A000, naming what cannot be merged). Pure: no I/O.
 *
 * Two halves:
 *  1. The spec (router/merge.c, from pgs_analyze): for a read of sharded
 *     tables, what each shard runs — the client's statement with hidden
 *     columns put first in its target list (sort and group expressions the
 *     client did not select, sum/count behind an avg) and LIMIT/OFFSET
 *     pushed down as LIMIT limit+offset — and how the shards' rows combine:
 *     concatenation; GROUP BY / aggregates (count, sum, min, max, avg,
 *     and count/sum/avg(DISTINCT x), for which the shards group by x as
 *     well) merged per group; HAVING over the merged groups; DISTINCT;
 *     ORDER BY (any number of keys, ASC/DESC, NULLS FIRST/LAST, by
 *     position, by output name or by expression); DISTINCT ON (the first
 *     row of each key in that order); then OFFSET and LIMIT once. Cached
 *     with the plan (normalised text: literals are $N there, so one spec
 *     serves every value).
 *  2. The executor (router/merge_exec.c, one per statement run): fed each
 *     shard's RowDescription and DataRows, it says which rows go to the
 *     client at once (plain concatenation streams, zero copy) and builds
 *     the rest when every shard has finished.
 *
 * Columns are numbered in the shards' rows: hidden columns 0..nhidden-1,
 * then the client's visible columns.
 */
#ifndef PGSHARD_MERGE_H
#define PGSHARD_MERGE_H

#include "pgshard/analyze.h"
#include "pgshard/proto.h"
#include "pgshard/value.h"

typedef enum {
  PGS_AGG_NONE,  /* not an aggregate: a group key, or any value of the group */
  PGS_AGG_COUNT, /* count(*) / count(x): partial counts add up */
  PGS_AGG_SUM,   /* sum(x): partial sums add up (NULL when every part is NULL) */
  PGS_AGG_MIN,   /* min(x): the least non-NULL value */
  PGS_AGG_MAX,   /* max(x): the greatest non-NULL value */
  PGS_AGG_AVG,   /* avg(x): sum of avg_sum / sum of avg_count (the shard's own
                    avg value in this column is replaced) */
} pgs_agg_kind_t;

typedef struct pgs_merge_column {
  uint8_t agg;     /* pgs_agg_kind_t */
  bool distinct;   /* COUNT/SUM of DISTINCT x: the shards group by x too, so
                      each of their rows holds one value of x (column
                      distinct_arg); a value counts once per group */
  int16_t avg_sum; /* AVG: the hidden columns holding sum(x) and count(x) */
  int16_t avg_count;
  int16_t distinct_arg; /* DISTINCT: the hidden column holding x */
} pgs_merge_column_t;

/* HAVING, evaluated on each merged group's row: a tree in prefix order
 * (a node's operands follow it). Three-valued, as SQL: a group stays only
 * when the root is true. */
typedef enum {
  PGS_COND_AND,     /* nargs conditions, all true */
  PGS_COND_OR,      /* nargs conditions, one true */
  PGS_COND_NOT,     /* one condition */
  PGS_COND_CMP,     /* left op right, by value (pgs_value_compare_mixed) */
  PGS_COND_IS_NULL, /* left IS NULL */
} pgs_cond_kind_t;

typedef enum {
  PGS_CMP_EQ,
  PGS_CMP_NE,
  PGS_CMP_LT,
  PGS_CMP_LE,
  PGS_CMP_GT,
  PGS_CMP_GE,
} pgs_cmp_op_t;

/* An operand that is the constant NULL (no column holds it). */
#define PGS_COND_NULL (-1)

typedef struct pgs_merge_cond {
  uint8_t kind;  /* pgs_cond_kind_t */
  uint8_t op;    /* CMP: pgs_cmp_op_t */
  int16_t nargs; /* AND, OR: how many conditions follow as its operands */
  int16_t left;  /* CMP, IS_NULL: columns of the shards' rows, or PGS_COND_NULL */
  int16_t right;
} pgs_merge_cond_t;

typedef struct pgs_merge_key {
  int16_t column; /* column of the shards' rows */
  bool desc;
  bool nulls_first; /* as PostgreSQL defaults: NULLS FIRST for DESC, LAST for ASC */
} pgs_merge_key_t;

/* An ORDER BY / GROUP BY position in the normalised text (ORDER BY 2,
 * kept verbatim by the lexer): the shards' text names column
 * position + nhidden instead. */
typedef struct pgs_merge_position {
  uint32_t at;      /* offset of its digits in the normalised text */
  uint32_t len;     /* how many digits */
  int32_t position; /* the client's position, 1-based */
} pgs_merge_position_t;

typedef struct pgs_merge_spec {
  /* Set when the statement cannot be merged exactly: why, naming the
   * construct ("window functions across shards", "HAVING across shards",
   * "string_agg across shards", "a join of sharded tables a and b not on
   * their shard keys" ...). Nothing below is meaningful then. */
  char refuse[256];
  /* The shards' statement (see pgs_merge_shard_sql). */
  uint32_t hidden_at; /* offset in the normalised text to insert hidden_text */
  char *hidden_text;  /* "expr AS pgs_h0, expr AS pgs_h1, " or NULL */
  int nhidden;
  uint32_t tail_at; /* where LIMIT/OFFSET/FETCH start; 0: no such clause */
  int limit_param;  /* parameter number of the LIMIT/FETCH count; 0: none (or ALL) */
  int offset_param; /* parameter number of the OFFSET; 0: none */
  /* How the rows combine. */
  bool grouped; /* GROUP BY or aggregates: one row per group */
  int ncolumns; /* entries in columns[]: hidden + visible targets
                           (0 when not grouped: every column is NONE) */
  pgs_merge_column_t *columns;
  int ngroup; /* grouped: the columns that identify a group */
  int16_t *group;
  bool one_group; /* grouped without GROUP BY: one row even when no shard
                     sends one (they send none when DISTINCT aggregates
                     make them group by x) */
  int nhaving;    /* HAVING: the condition's nodes, 0 when none */
  pgs_merge_cond_t *having;
  bool distinct; /* SELECT DISTINCT: equal visible rows once */
  int nkeys;     /* ORDER BY */
  pgs_merge_key_t *keys;
  int distinct_on; /* DISTINCT ON: the last distinct_on keys are its
                      expressions (after the ORDER BY's); after the sort
                      only the first row of each run of equal keys stays */
  bool rewrite;    /* the shards' text differs from the client's */
  /* Where each ORDER BY key's and MIN/MAX column's collation comes from
   * (collate.h), for text; NULL: byte order. */
  struct pgs_collate_spec *collations;
  /* What else the shards' text needs (merge.c's own; the executor needs
   * none of it). */
  uint32_t tail_end; /* where the LIMIT/OFFSET tail ends: the ')' that
                           closes the parentheses it is in, or the end */
  bool limit_negate; /* written LIMIT -$n / OFFSET -$n */
  bool offset_negate;
  bool limit_one; /* FETCH FIRST ROW ONLY: a count of 1 and no value
                           (limit_param 0) */
  int npositions; /* ORDER BY / GROUP BY / DISTINCT ON positions, in text order */
  pgs_merge_position_t *positions;
  uint32_t having_at; /* where "true OR " goes: after the HAVING keyword, so
                         the shards keep every partial group but still check
                         the condition (and infer its parameters' types); 0:
                         no HAVING */
  uint32_t group_at;  /* where group_text goes; 0: nowhere */
  char *group_text;   /* DISTINCT aggregates: the shards also group by their
                         arguments (hidden columns, by position) */
  int nsame;          /* pairs of literals (parameter numbers, in same[]) that
                         must be written alike: an expression matched its
                         GROUP BY expression but for them */
  int32_t *same;
} pgs_merge_spec_t;

/*
 * The spec for STMT, a statement of LEXED that reads sharded tables of DB:
 * STMT is libpg_query's parse tree node (PgQuery__Node) of the one
 * statement in LEXED's normalised text, or, when LIT_LOC is not NULL, of that
 * text with the literals put back (pgs_lexed_restore), literal i starting
 * at LIT_LOC[i] there. NULL when STMT is not a SELECT, COPY (SELECT ...)
 * TO or COPY table TO (nothing to merge); a spec with refuse set when it
 * cannot be merged exactly. Nothing in the spec depends on a literal's
 * value, so it serves every statement of the same normalised text.
 *
 * What merges: target lists of plain expressions, `*` (without
 * aggregates or GROUP BY) and count(*), count(x), sum(x), min(x), max(x),
 * avg(x), count/sum/avg(DISTINCT x), with or without FILTER; GROUP BY;
 * HAVING of comparisons, BETWEEN, IN lists, IS [NOT] NULL, AND, OR and NOT
 * over those aggregates, GROUP BY expressions and constants (the
 * constants come back from the shards as hidden columns, typed as
 * PostgreSQL types them against the other operand); DISTINCT; DISTINCT
 * ON with its ORDER BY; ORDER BY; LIMIT,
 * OFFSET and FETCH FIRST n ROWS ONLY of a constant or parameter; joins of
 * sharded tables on their shard keys when they are sharded alike;
 * reference tables anywhere; subqueries and WITH queries in FROM that are
 * the union of their rows on each shard, and EXISTS / NOT EXISTS / key IN
 * (SELECT key ...) correlated on the shard key (merge.c says which). COPY merges only by concatenation (no
 * ORDER BY, aggregates, GROUP BY, DISTINCT or LIMIT; no HEADER, no binary
 * format, only TO STDOUT).
 */
struct PgQuery__Node;
struct pgs_database;
pgs_merge_spec_t *pgs_merge_analyze(const struct pgs_database *db, const pgs_lexed_t *lexed,
                                    const struct PgQuery__Node *stmt, const int32_t *lit_loc);

void pgs_merge_spec_free(pgs_merge_spec_t *spec);

/*
 * The text each shard runs for SPEC, from LEXED (the statement the spec was
 * made from): hidden_text inserted, ORDER BY / GROUP BY positions moved
 * past the hidden columns, "true OR" after HAVING, group_text (the DISTINCT
 * aggregates' arguments) after GROUP BY or as a GROUP BY of its own, the
 * LIMIT/OFFSET tail replaced (LIMIT l OFFSET
 * o -> LIMIT (l)::int8 + (o)::int8; OFFSET o alone -> OFFSET 0 *
 * (o)::int8, so a Bind parameter stays referenced; LIMIT l alone
 * unchanged; when grouped and the ORDER BY does not cover every group
 * column, or with HAVING or DISTINCT aggregates, a shard's first rows are
 * not the groups that come first, so no LIMIT goes down: OFFSET 0 *
 * (l)::int8 + 0 * (o)::int8), and every literal
 * put back as the client wrote it (strings quoted afresh); the statement's
 * own $n stay. Appends a NUL-terminated text to OUT (the NUL counted, as
 * pgs_buf_put_cstr).
 */
void pgs_merge_shard_sql(const pgs_merge_spec_t *spec, const pgs_lexed_t *lexed, pgs_buf_t *out);

/*
 * The LIMIT and OFFSET values of one run: from the lexer's literals or the
 * Bind parameters (text or binary int8/int4; Parse-declared types in
 * PARAMS). *LIMIT = -1 for none/ALL/NULL, *OFFSET = 0 for none/NULL.
 * PGS_EINVAL with ERR (22P02, or 2201W/2201X for negative values, as
 * PostgreSQL says) when a value is not a valid count, or (0A000) when
 * the run's literals do not fit the spec (spec->same).
 */
struct pgs_param_values;
pgs_status_t pgs_merge_limits(const pgs_merge_spec_t *spec, const pgs_lexed_t *lexed,
                              const struct pgs_param_values *params, int64_t *limit,
                              int64_t *offset, pgs_value_error_t *err) PGS_MUST_USE;

/* ---- executor ---- */

typedef struct pgs_merge pgs_merge_t;

typedef enum {
  PGS_MERGE_PASS,   /* send this DataRow to the client now, unchanged */
  PGS_MERGE_HELD,   /* kept: it is part of what pgs_merge_finish builds */
  PGS_MERGE_DROP,   /* not in the result (OFFSET, past LIMIT) */
  PGS_MERGE_FAILED, /* the merge failed: pgs_merge_error says why */
} pgs_merge_verdict_t;

/* A run over NPARTS shards with LIMIT (-1: none) and OFFSET, holding at
 * most MAX_BYTES of rows and group state (then 54000, naming
 * max_merge_bytes). SPEC must outlive the run (the portal holds its plan).
 * Group keys, DISTINCT rows and DISTINCT aggregates' values are equal as
 * PostgreSQL's = says (numeric 1.0 and 1.00, float -0 and 0 are one; other
 * types by their bytes), NULL equal to NULL; a group or row shows the
 * first of its equal values that arrived. */
pgs_merge_t *pgs_merge_new(const pgs_merge_spec_t *spec, int nparts, int64_t limit, int64_t offset,
                           size_t max_bytes);
void pgs_merge_free(pgs_merge_t *m);
/* Bytes of rows and group state it holds now (what MAX_BYTES bounds). */
size_t pgs_merge_held(const pgs_merge_t *m);

/* A part's RowDescription (message body): the first fixes column types and
 * formats; a later one with another column count, type or format fails
 * the merge (XX000). PGS_EINVAL, with pgs_merge_error set, when the merge
 * cannot compute over a column's type (0A000: "cannot merge sum over type
 * interval across shards"), the description is malformed (08P01) or the
 * spec does not fit its columns (XX000). */
pgs_status_t pgs_merge_describe(pgs_merge_t *m, const uint8_t *body, size_t len) PGS_MUST_USE;
/* Whether a RowDescription has arrived. */
bool pgs_merge_described(const pgs_merge_t *m);

/* The client's RowDescription for SPEC from a shard's (BODY): hidden
 * columns dropped. Appends the whole message ('T', length, body) to OUT. */
void pgs_merge_client_rowdesc(const pgs_merge_spec_t *spec, const uint8_t *body, size_t len,
                              pgs_buf_t *out);

/* A DataRow (message body) of PART. Rows must follow a RowDescription.
 * Plain concatenation (not grouped, no DISTINCT, no ORDER BY, no hidden
 * column) passes rows through as they come, counting OFFSET and LIMIT;
 * everything else is held, except what can already be known to be out of
 * the result (DROP: a DISTINCT duplicate, anything under LIMIT 0, rows
 * past the window when the order is the arrival order). Malformed rows
 * fail the merge (08P01); once FAILED, every later call says so. */
pgs_merge_verdict_t pgs_merge_row(pgs_merge_t *m, int part, const uint8_t *body, size_t len);

/* Every part has finished: append the held rows, merged, as DataRow
 * messages (hidden columns dropped) to OUT; *ROWS = rows in the result
 * (passed ones included) for the CommandComplete tag. PGS_EINVAL when the
 * merge failed (before or now); OUT is then untouched. Called once. */
pgs_status_t pgs_merge_finish(pgs_merge_t *m, pgs_buf_t *out, uint64_t *rows) PGS_MUST_USE;

const pgs_value_error_t *pgs_merge_error(const pgs_merge_t *m);

/* Text in the run compares as the server does (collate.h): by the
 * collation of each ORDER BY key and min/max, found in CAT, the
 * database's catalog as the shards have it (NULL: not known yet; a
 * reference is kept while the run lives), for a client receiving text as
 * UTF-8 (UTF8). Called before the first RowDescription; without it text
 * compares in byte order (the C collation). A collation that cannot be
 * known or compared here fails the merge when the columns turn out to be
 * text (0A000, naming it). */
struct pgs_collcat;
void pgs_merge_collate(pgs_merge_t *m, struct pgs_collcat *cat, bool utf8);

#endif
