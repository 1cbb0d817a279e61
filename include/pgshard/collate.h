/*
 * collate.h — text compared the way PostgreSQL compares it under a
 * collation, for the cross-shard merge (merge.h): an ORDER BY key or a
 * min()/max() of text merged from several shards must come out in the
 * order one server would give. Pure: no I/O.
 *
 * Three parts:
 *  1. Sources, from a statement's parse tree (cached with its plan, so
 *     nothing here depends on the catalog): where an expression's
 *     collation comes from — an explicit COLLATE, the columns it reads,
 *     or nothing pgshard can follow (then it is refused for text).
 *  2. The catalog (pgs_collcat_t): what the shards' catalogs say, read by
 *     the monitor from every shard's writer — the database's encoding and
 *     default collation, the collations they all have, and every column
 *     whose collation is not the default. Immutable and refcounted; each
 *     health snapshot holds one per database.
 *  3. Collators: byte order (NULL: C, POSIX, ucs_basic, C.UTF-8) or a libc
 *     locale (strcoll_l, ties broken by strcmp, as PostgreSQL's
 *     varstr_cmp). ICU and non-deterministic collations cannot be
 *     compared here (pgshard does not link ICU): refused, as is a libc
 *     locale this machine cannot load, or when the shards' glibc is not
 *     this machine's (its collations change between versions).
 *
 * The derivation follows PostgreSQL's rules where they are simple: an
 * explicit COLLATE wins; a column (maybe cast to a text type, or under
 * min/max) has its column's collation; any other expression has the
 * database default when none of its columns has another collation.
 * Anything else is refused, never guessed.
 */
#ifndef PGSHARD_COLLATE_H
#define PGSHARD_COLLATE_H

#include "pgshard/common.h"

/* ---- collators ---- */

/* A libc locale loaded once per process; NULL stands for byte order. */
typedef struct pgs_collator pgs_collator_t;

/* The collator of libc locale LOCALE (a pg_collation.collcollate or a
 * datcollate), loaded on first use and kept for the process; NULL when
 * the locale cannot be loaded on this machine. Thread-safe. LOCALE must
 * not be a byte-order one (pgs_collate_locale_is_bytes). */
const pgs_collator_t *pgs_collator_libc(const char *locale);
/* The locale a collator was loaded from ("C" for NULL). */
const char *pgs_collator_locale(const pgs_collator_t *c);
/* Whether libc locale LOCALE sorts in byte order: C, POSIX, and C.UTF-8
 * (glibc's is code point order, which is UTF-8 byte order). */
bool pgs_collate_locale_is_bytes(const char *locale);

/* Whether values of type OID have a collation pgshard compares by it
 * (text, varchar, bpchar, name). */
bool pgs_collate_type(uint32_t oid);

/*
 * A and B compared under C, as PostgreSQL's varstr_cmp: byte order (NULL);
 * or equal bytes are equal, else strcoll_l of NUL-terminated copies (so,
 * like the server, nothing after a NUL byte counts), and strcmp when
 * strcoll calls them equal. Values of type OID: bpchar without its
 * trailing blanks. < 0, 0, > 0. Byte order allocates nothing; a locale
 * copies values of 1 kB or more to the heap.
 */
int pgs_collate_compare(const pgs_collator_t *c, uint32_t oid, const uint8_t *a, size_t alen,
                        const uint8_t *b, size_t blen);

/* ---- sources (from the statement) ---- */

/* A column an expression reads: [QUALIFIER.]COLUMN as written. */
typedef struct pgs_collate_input {
  char *schema;    /* schema.table.column: the schema, else NULL */
  char *qualifier; /* the table or alias, or NULL */
  char *column;
} pgs_collate_input_t;

typedef enum {
  PGS_COLLSRC_DERIVED, /* from its columns (the zero value) */
  PGS_COLLSRC_NAMED,   /* an explicit COLLATE */
  PGS_COLLSRC_UNSURE,  /* beyond the rules pgshard follows */
} pgs_collate_kind_t;

typedef struct pgs_collate_source {
  uint8_t kind; /* pgs_collate_kind_t */
  /* DERIVED: the expression is one column (bare, cast to a text type, or
   * under min/max): it has that column's collation. Otherwise the
   * database default, when no input has another. */
  bool bare;
  /* DERIVED: a column pgshard cannot name (a position into SELECT *). */
  bool opaque;
  char *schema; /* NAMED: COLLATE schema.name, schema or NULL */
  char *name;
  int ninputs; /* DERIVED: the columns read */
  pgs_collate_input_t *inputs;
} pgs_collate_source_t;

/* A table, view or other relation in the statement's FROM. */
typedef struct pgs_collate_rel {
  char *schema; /* or NULL */
  char *name;
  char *alias; /* or NULL */
} pgs_collate_rel_t;

/* What a merged statement needs: its FROM (to find the tables its
 * columns belong to), and a source per ORDER BY key and per MIN/MAX
 * column (other columns' entries stay zero). */
typedef struct pgs_collate_spec {
  int nrels;
  pgs_collate_rel_t *rels;
  bool others; /* FROM has subqueries, functions, WITH queries ... */
  int nkeys;
  pgs_collate_source_t *keys;
  int ncolumns;
  pgs_collate_source_t *columns;
} pgs_collate_spec_t;

/* A spec for a SELECT (libpg_query's PgQuery__SelectStmt) with NKEYS
 * keys and NCOLUMNS columns, its FROM read; sources are filled by
 * pgs_collate_source_of. */
struct PgQuery__SelectStmt;
struct PgQuery__Node;
pgs_collate_spec_t *pgs_collate_spec_new(const struct PgQuery__SelectStmt *select, int nkeys,
                                         int ncolumns);
void pgs_collate_spec_free(pgs_collate_spec_t *spec);
/* SRC for expression N (a parse tree node of the statement); N NULL: a
 * column pgshard cannot name (opaque). */
void pgs_collate_source_of(pgs_collate_source_t *src, const struct PgQuery__Node *n);

/* ---- the catalog (from the shards) ---- */

/* A collation as pg_collation has it. */
typedef struct pgs_collation {
  char *schema;
  char *name;
  char provider; /* 'c' libc, 'i' ICU, 'd' the database default */
  bool deterministic;
  char *locale; /* libc: collcollate; ICU: the ICU locale */
} pgs_collation_t;

typedef struct pgs_collcat pgs_collcat_t;

/*
 * The catalog agreed by N shards' writers from their answers to the
 * monitor's query (pgs_collcat_query): DBS[i] the database part ("encoding
 * TAB provider TAB collate TAB icu-locale TAB glibc version", a newline, then one line per
 * column with a collation other than the default: "schema TAB table TAB
 * column TAB coll-schema TAB coll-name TAB provider TAB t|f TAB locale"),
 * LISTS[i] the pg_collation part (lines "schema TAB name TAB provider TAB
 * t|f TAB locale"). NULL when a shard has not answered or their database
 * parts differ in encoding or default collation. A column the shards do
 * not list alike, or a collation not every shard has alike, is not known
 * (refused when an expression needs it).
 */
pgs_collcat_t *pgs_collcat_build(const char *const *dbs, const char *const *lists, int n);
pgs_collcat_t *pgs_collcat_ref(pgs_collcat_t *cat);
void pgs_collcat_unref(pgs_collcat_t *cat);

/* The query a writer answers with one row: encoding, default provider,
 * datcollate, daticulocale, the server's glibc version (of its libc
 * collations), the columns part (every user column with a collation other
 * than the default; pgshard's own schema `pgshard` left out: its name
 * columns are C, and its tables are never read through a merge), a mark
 * of pg_collation's
 * state (it changes when a collation is created, dropped or altered),
 * and the collation list unless the mark is KNOWN ("" for none).
 * malloc'ed. */
char *pgs_collcat_query(const char *known);
#define PGS_COLLCAT_MARK_MAX 64 /* a mark's length, its NUL included */

/*
 * The collator for a value of type OID whose collation comes from SRC, in
 * a statement with FROM in SPEC, on catalog CAT (NULL: not known yet),
 * for a client that receives text as UTF-8 (UTF8): *OUT (NULL: byte
 * order). Types without a collation compare as they always do (*OUT
 * NULL). PGS_EINVAL with WHY (a sentence without "pgshard:") when it
 * cannot be known or compared here.
 */
pgs_status_t pgs_collate_resolve(const pgs_collcat_t *cat, const pgs_collate_spec_t *spec,
                                 const pgs_collate_source_t *src, uint32_t oid, bool utf8,
                                 const pgs_collator_t **out, char *why, size_t cap) PGS_MUST_USE;

/* Whether a value whose collation comes from SRC is known to compare under
 * a non-deterministic collation on CAT (then strings that differ in bytes
 * may be equal, and grouping by bytes is wrong): its name into NAME. */
bool pgs_collate_nondeterministic(const pgs_collcat_t *cat, const pgs_collate_spec_t *spec,
                                  const pgs_collate_source_t *src, char *name, size_t cap);

#endif
