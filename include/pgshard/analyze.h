/*
 * analyze.h — statement analysis: what a SQL statement is, which sharded
 * tables it touches and where their shard keys are. Pure: no I/O.
 *
 * Two stages, so the hot path never runs the full parser:
 *  1. pgs_lex() — a fast single pass over the SQL text that replaces every
 *     literal with a placeholder $N (N after the statement's own highest $n),
 *     extracts each literal's value (strings unescaped) and any hint
 *     comment ("pgshard: shard=NAME" inside a C-style comment), and yields
 *     the normalised text.
 *  2. pgs_analyze() — the real PostgreSQL grammar (libpg_query) on the
 *     normalised text, producing a pgs_plan_t that refers to values only by
 *     parameter number. Plans are cached by normalised text (pgs_plan_cache,
 *     a bounded LRU, one per worker), so a statement seen before costs one
 *     lexer pass and one hash lookup.
 * The proxy then resolves the plan's parameter numbers to values (a
 * literal from the lexer, or a Bind parameter in text or binary format),
 * types them by the table's key type (shardmap.h) and gets shards.
 */
#ifndef PGSHARD_ANALYZE_H
#define PGSHARD_ANALYZE_H

#include "pgshard/common.h"

struct pgs_database;
struct pgs_table;

/* ---- lexer ---- */

#define PGS_LEX_MAX_LITERALS 65535 /* as many as Bind parameters may be */

typedef struct pgs_literal {
  uint32_t offset; /* into pgs_lexed_t.values */
  uint32_t len;
  bool is_string;       /* a quoted string ('...', E'...', $$...$$), else a number */
  uint32_t placeholder; /* offset of its $N in pgs_lexed_t.normalized */
  uint32_t start;       /* where it was in the original text: bytes [start, end), */
  uint32_t end;         /* from its first char (the E of E'...') to its last quote */
} pgs_literal_t;

typedef struct pgs_lexed {
  char *normalized; /* malloc'ed, NUL-terminated */
  size_t normalized_len;
  uint64_t hash; /* XXH3 of normalized */
  int nparams;   /* highest $n in the original text */
  int nliterals; /* literal i became $(nparams + 1 + i) */
  pgs_literal_t *literals;
  char *values;        /* literal values, back to back, NUL after each */
  char hint_shard[64]; /* from a pgshard: shard=NAME comment, or "" */
  int nstatements;     /* top-level statements (';'-separated, empty ones
                           not counted; a lexical count: the ';' inside a
                           BEGIN ATOMIC body counts too) */
  /* Capacities of the buffers above, kept between calls (private). */
  size_t normalized_cap;
  size_t values_len;
  size_t values_cap;
  int literals_cap;
  /* Operators and the keywords that chain left-deep (JOIN, UNION,
   * INTERSECT, EXCEPT, COLLATE, AT): a bound on how deep a parse tree of
   * the text can be that parentheses do not already limit.
   * pgs_analyze does not parse texts over PGS_ANALYZE_MAX_CHAIN, since
   * libpg_query recurses once per level. */
  int chain;
  char *scratch; /* renumbering placeholders swaps it with normalized */
  size_t scratch_cap;
} pgs_lexed_t;

/* Reusable: pgs_lex_init once, pgs_lex many times (buffers are kept). */
void pgs_lex_init(pgs_lexed_t *lexed);
void pgs_lex_free(pgs_lexed_t *lexed);
/* PGS_EINVAL for unterminated quotes/comments, bad escapes in E'...' and
 * NUL bytes (the server will reject those too), PGS_ETOOBIG over
 * PGS_LEX_MAX_LITERALS or when parameters and literals together pass 65535.
 * The normalised text keeps B'...', X'...', N'...' and U&'...' literals
 * verbatim (they are never keys; parts continued on another line are
 * joined by a bare newline), and integers standing alone as ORDER BY or
 * GROUP BY items (ORDER BY 2 names an output column, a $N there would
 * not); every other literal becomes $N. Whenever the server would parse
 * the text, the literals are exactly its scanner's string and number
 * constants but for those (tests/unit/lexer_parser_check.h checks it). */
pgs_status_t pgs_lex(const char *sql, size_t len, pgs_lexed_t *out) PGS_MUST_USE;
/* What a plan's parameter number PARAM stands for in LEXED: a literal (its
 * value is lexed->values + offset, len bytes), or NULL when PARAM is one of the
 * statement's own $n (a Bind value) or out of range. */
const pgs_literal_t *pgs_lexed_literal(const pgs_lexed_t *lexed, int param);

/* Putting literals back (a shard's text, a text libpg_query parses only
 * with them). A literal as SQL: a number as written, a string quoted
 * afresh ('' for ', and E'...' with \\ when it holds a backslash, so it
 * reads the same whatever standard_conforming_strings says). Appends to
 * OUT. */
struct pgs_buf;
void pgs_lexed_put_literal(const pgs_lexed_t *lexed, const pgs_literal_t *lit, struct pgs_buf *out);
/* Append LEXED's normalised text [FROM, TO) to OUT with every placeholder of
 * a literal in it put back as the literal. *NEXT is the first literal whose
 * placeholder may lie at or after FROM (0 to start; literals are in text
 * order), advanced past those copied, so consecutive ranges cost one pass.
 * LOC, when not NULL, gets the offset in OUT of each literal I copied at
 * LOC[I]. false when a placeholder is not where the lexer wrote it (OUT
 * then holds part of the range). */
bool pgs_lexed_restore(const pgs_lexed_t *lexed, size_t from, size_t to, int *next,
                       struct pgs_buf *out, int32_t *loc) PGS_MUST_USE;

/* ---- plans ---- */

/* Statements deeper than these are refused (54001, as PostgreSQL refuses
 * what exceeds its stack depth) instead of analysed: libpg_query and
 * protobuf-c recurse once per tree level (a few hundred bytes of stack
 * each), and a worker's stack may be as small as 2 MB. */
#define PGS_ANALYZE_MAX_CHAIN 3000 /* pgs_lexed_t.chain */
#define PGS_ANALYZE_MAX_DEPTH 1000 /* nested messages in libpg_query's tree */

/* Whether a libpg_query protobuf parse tree nests at most LIMIT messages
 * deep, checked without recursion. Anything that unpacks a tree of client
 * SQL must ask first: protobuf-c's unpack recurses once per level. */
bool pgs_analyze_tree_depth_ok(const uint8_t *data, size_t len, int limit);

typedef enum {
  PGS_STMT_READ,      /* SELECT, VALUES, TABLE, SHOW, EXPLAIN (no ANALYZE) */
  PGS_STMT_WRITE,     /* INSERT/UPDATE/DELETE/MERGE, SELECT FOR UPDATE/SHARE,
                           SELECT calling functions not known read-only */
  PGS_STMT_DDL,       /* CREATE/ALTER/DROP/TRUNCATE/GRANT/COMMENT ... */
  PGS_STMT_BEGIN,     /* BEGIN / START TRANSACTION */
  PGS_STMT_COMMIT,    /* COMMIT / END / COMMIT PREPARED */
  PGS_STMT_ROLLBACK,  /* ROLLBACK / ABORT (not TO SAVEPOINT) */
  PGS_STMT_SESSION,   /* SET/RESET/DISCARD/SAVEPOINT/RELEASE/ROLLBACK TO/
                           LISTEN/... : goes wherever the session is */
  PGS_STMT_COPY_FROM, /* COPY t FROM STDIN */
  PGS_STMT_COPY_TO,   /* COPY t TO STDOUT / COPY (query) TO STDOUT */
  PGS_STMT_OTHER,     /* anything else (VACUUM, ANALYZE, CHECKPOINT, DO ...) */
} pgs_stmt_kind_t;

typedef enum {
  PGS_TARGET_ANY,  /* touches no sharded table: reference tables only, or
                         none (SELECT 1): any one shard (reads) / every shard
                         (writes and DDL) */
  PGS_TARGET_KEYS, /* the union of the shards of keys[] */
  PGS_TARGET_ALL,  /* a sharded table with no usable key: every shard */
  PGS_TARGET_ROWS, /* INSERT: rows[] each with its own key, split by shard */
} pgs_target_t;

/* A key value: parameter number (1-based; see pgs_lexed_t for literals).
 * negate: written as -$n. array: $n is an array (= ANY($n)), each element
 * a key. */
typedef struct pgs_key_ref {
  const struct pgs_table *table;
  uint16_t param;
  bool negate;
  bool array;
  uint32_t cast_type_oid; /* an explicit cast on the value ($1::int8), or 0 */
} pgs_key_ref_t;

typedef enum {
  PGS_CURSOR_NONE,
  PGS_CURSOR_DECLARE,
  PGS_CURSOR_FETCH,
  PGS_CURSOR_MOVE,
  PGS_CURSOR_CLOSE,
} pgs_cursor_op_t;

typedef struct pgs_plan {
  pgs_stmt_kind_t kind;
  pgs_target_t target;
  bool read_only_tx; /* BEGIN READ ONLY / START TRANSACTION READ ONLY
                              (also SET TRANSACTION READ ONLY, kind SESSION) */
  int nkeys;
  pgs_key_ref_t *keys; /* TARGET_KEYS: the statement touches only these keys' shards */
  int nrows;           /* TARGET_ROWS: rows[i] is row i's key (table = inserted table) */
  pgs_key_ref_t *rows;
  const struct pgs_table *table;     /* the sharded table a write/COPY targets, or NULL */
  const struct pgs_table *all_table; /* TARGET_ALL: a sharded table lacking a key (for messages) */
  const struct pgs_table *unkeyed_tenant; /* a tenant-strategy table the statement touches
                                             without its key, or NULL */
  /* Set when the statement must be refused before it runs: */
  char refuse_sqlstate[6];
  char refuse_message[256];
  size_t refcount; /* owned by the cache; see pgs_plan_cache_get */
  /* TARGET_KEYS of a statement that inserts rows (several statements, or an
   * INSERT reading other sharded tables): correct only when every key maps
   * to one shard; the proxy refuses it (0A000) otherwise, since sending an
   * INSERT to a shard that does not own its rows would misplace them. */
  bool same_shard_required;
  /* COPY_FROM into a sharded table: target ROWS with nrows 0 (the rows come
   * in CopyData); the key's 0-based position in the COPY column list. -1
   * otherwise. */
  int copy_key_column;
  int nstatements; /* statements libpg_query found */
  /* A single SELECT (or COPY (SELECT ...)/COPY t TO) reading sharded
   * tables: how it runs on several shards (merge.h), or why it cannot
   * (spec->refuse). NULL for everything else. Owned by the plan. */
  struct pgs_merge_spec *merge;
  /* COPY ... FROM STDIN (sharded or reference table): its options
   * (copy.h; pgs_copy_spec_resolve reads them with the statement's
   * literals). NULL for everything else. Owned by the plan. */
  struct pgs_copy_options *copy;
  bool parse_failed; /* libpg_query rejected it: kind OTHER, target ANY;
                              such plans are not cached */
  /* CALL, DO, or a SELECT whose only write is a call of a function not
   * known read-only: what it writes is unknown, so without a key, hint or
   * tenant it runs on every shard and cross_shard_writes decides. */
  bool runs_code;
  /* COPY (INSERT/UPDATE/DELETE ... RETURNING) TO STDOUT: kind WRITE, runs
   * on one shard only (its output cannot be merged). */
  bool copy_write;
  /* DECLARE CURSOR: its query runs on one shard, where the cursor then
   * lives, or on several with its rows gathered by pgshard (planner.h). */
  bool cursor;
  /* Refused only for want of a column list: INSERT INTO t VALUES (...) (or
   * SELECT without FROM) into this sharded table; with the table's columns
   * named (the catalog's order) it would route (planner.c rewrites it). */
  const struct pgs_table *needs_columns;
  /* LISTEN, UNLISTEN or NOTIFY, a statement of its own: on one shard for
   * every session (planner.c), so that notifications meet their listeners. */
  bool notifies;
  /* A SELECT whose only code that may write is advisory lock functions
   * (pg_advisory_lock, pg_try_advisory_xact_lock, pg_advisory_unlock ...),
   * a statement of its own: on the first shard's primary for every
   * session, so that clients locking the same key meet there. */
  bool advisory;
  /* SQL cursors, a statement of its own: DECLARE, FETCH/MOVE, CLOSE. */
  pgs_cursor_op_t cursor_op;
  char cursor_name[64]; /* CLOSE: "" is CLOSE ALL */
  bool cursor_hold;     /* DECLARE ... WITH HOLD */
  bool cursor_scroll;   /* DECLARE ... SCROLL */
  /* FETCH/MOVE: forward COUNT rows (-1: ALL); other directions (BACKWARD,
   * ABSOLUTE, RELATIVE, PRIOR, ...) are not forward. */
  bool fetch_forward;
  int64_t fetch_count;
  /* Every statement is SET [LOCAL], RESET, SAVEPOINT, RELEASE or ROLLBACK
   * TO: inside a transaction, replayed on each shard it reaches later. */
  bool tx_replayable;
} pgs_plan_t;

/* Analyse one normalised statement for database DB. Never NULL: a statement
 * libpg_query cannot parse gets kind OTHER, target ANY (the server will
 * report the syntax error). Parameter numbers run to lexed->nparams +
 * lexed->nliterals. The caller owns the one reference it returns.
 * A few grammar positions take only a literal (varchar(10), COMMENT ... IS
 * '...', CREATE FUNCTION ... AS $$...$$, DO $$...$$, COPY ... FROM 'file'):
 * when the normalised text does not parse, the literals are put back
 * (quoted) and that text is analysed instead, each literal still referred
 * to by its parameter number. */
pgs_plan_t *pgs_analyze(const struct pgs_database *db, const pgs_lexed_t *lexed);
void pgs_plan_unref(pgs_plan_t *plan);

/* The functions a SELECT may call and still be a read (PGS_STMT_READ),
 * unqualified or in pg_catalog; analyze.c says why these. Sorted. */
const char *const *pgs_analyze_read_only_functions(size_t *count);

/* ---- plan cache: bounded LRU keyed by normalised text ---- */

typedef struct pgs_plan_cache pgs_plan_cache_t;

pgs_plan_cache_t *pgs_plan_cache_new(size_t capacity);
void pgs_plan_cache_free(pgs_plan_cache_t *cache);
/* The plan for LEXED in DB, analysing and caching it on a miss. The caller owns
 * one reference (pgs_plan_unref). The cache is per worker: not thread-safe. */
pgs_plan_t *pgs_plan_cache_get(pgs_plan_cache_t *cache, const struct pgs_database *db,
                               const pgs_lexed_t *lexed);
size_t pgs_plan_cache_hits(const pgs_plan_cache_t *cache);
/* Drop every plan (config reload: plans point into the old config). */
void pgs_plan_cache_clear(pgs_plan_cache_t *cache);
size_t pgs_plan_cache_misses(const pgs_plan_cache_t *cache);
/* Plans held now (at most the capacity; unparseable texts are never kept). */
size_t pgs_plan_cache_count(const pgs_plan_cache_t *cache);

#endif
