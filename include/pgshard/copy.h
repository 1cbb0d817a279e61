/*
 * copy.h — COPY ... FROM STDIN into sharded tables: the COPY options as
 * PostgreSQL 15 reads them, and a streaming splitter that cuts the CopyData
 * stream into rows and says which shard each row belongs to. Pure: no I/O.
 *
 * Three steps, matching when each thing is known:
 *  1. Analysis (analyze.c) records the statement's options in the plan
 *     (pgs_plan_t.copy, a pgs_copy_options_t). Plans are cached by
 *     normalised text, where a literal option value (DELIMITER ';') is a
 *     $N placeholder, so such values are kept as parameter numbers. When no
 *     option is a literal, invalid options refuse the plan right away.
 *  2. At the COPY, pgs_copy_spec_resolve turns the options and the
 *     statement's literals into a pgs_copy_spec_t, checked as PostgreSQL's
 *     ProcessCopyOptions checks them (same SQLSTATEs and messages), plus
 *     what pgshard refuses: ENCODING other than UTF8 into a sharded table.
 *  3. pgs_copy_split_* take the CopyData payloads in whatever pieces they
 *     arrive and report each complete row with its shard. Reference tables
 *     need no splitter: every byte goes to every shard unchanged.
 *
 * Rows are found exactly as PostgreSQL 15's CopyReadLineText finds them
 * (text: backslash quotes the next byte, newline included; CSV: quotes,
 * ESCAPE, the end-of-data marker `\.`; \n, \r\n or \r line ends, fixed by
 * the first line, with PostgreSQL's errors for mixed ones), since a row cut
 * in the wrong place would put keys on the wrong shard. Binary tuples are
 * found as CopyFromBinaryOneRow finds them (a field count, then each
 * field's length and bytes).
 */
#ifndef PGSHARD_COPY_H
#define PGSHARD_COPY_H

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/route.h"
#include "pgshard/shardmap.h"

#define PGS_COPY_MAX_NULL 1023 /* longer NULL strings are refused (0A000) */

typedef enum { PGS_COPY_TEXT, PGS_COPY_CSV, PGS_COPY_BINARY } pgs_copy_format_t;

typedef enum {
  PGS_COPY_HEADER_NONE,  /* no header line */
  PGS_COPY_HEADER_SKIP,  /* HEADER true: the first line is skipped */
  PGS_COPY_HEADER_MATCH, /* HEADER match: the first line must name the columns */
} pgs_copy_header_t;

/* The options of one COPY ... FROM STDIN, resolved and checked. */
typedef struct pgs_copy_spec {
  pgs_copy_format_t format;
  pgs_copy_header_t header;
  char delimiter; /* default tab (text), ',' (CSV) */
  char quote;     /* CSV: default '"'; 0 otherwise */
  char escape;    /* CSV: default the quote; 0 otherwise */
  bool freeze;
  bool key_force_not_null; /* CSV: FORCE_NOT_NULL names the shard key column */
  bool key_force_null;     /* CSV: FORCE_NULL names it */
  int ncolumns;            /* columns in the COPY's column list, -1 when none */
  size_t null_len;
  char null_string[PGS_COPY_MAX_NULL + 1]; /* NUL-terminated; default \N (text), "" (CSV) */
} pgs_copy_spec_t;

/* The options as the plan holds them (opaque; owned by the plan). */
typedef struct pgs_copy_options pgs_copy_options_t;

/* Where the literals are in a text analysed with its literals put back
 * (analyze.h): literal i starts at text + loc[i] and is parameter base + i.
 * All zero when the normalised text itself was analysed. */
typedef struct pgs_copy_literals {
  const char *text;
  const int32_t *loc;
  int n;
  int base;
} pgs_copy_literals_t;

struct PgQuery__CopyStmt;

/*
 * The options of COPY ... FROM STDIN statement STMT into TABLE (NULL: a
 * reference table). Never NULL. When no option value is a literal the
 * options are checked now: on a problem ERR is set (SQLSTATE and a message
 * without "pgshard: ") and the plan should be refused; ERR->sqlstate is ""
 * otherwise. Options whose values are literals are checked by
 * pgs_copy_spec_resolve.
 */
pgs_copy_options_t *pgs_copy_options_parse(const struct PgQuery__CopyStmt *stmt,
                                           const pgs_table_t *table,
                                           const pgs_copy_literals_t *literals,
                                           pgs_key_error_t *err);
void pgs_copy_options_free(pgs_copy_options_t *options);

/* Whether some option value is a literal (and so needs LEXED to resolve). */
bool pgs_copy_options_have_literals(const pgs_copy_options_t *options);

/*
 * The spec of OPTIONS, literal values taken from LEXED (the statement's lexed
 * text; NULL is fine when no option is a literal). PGS_EINVAL with ERR
 * when PostgreSQL would refuse the options (42601, 22023, 0A000 as it
 * does) or pgshard does: an ENCODING other than UTF8 into a sharded table,
 * the undocumented convert_selectively, a NULL string
 * longer than PGS_COPY_MAX_NULL (all 0A000).
 */
pgs_status_t pgs_copy_spec_resolve(const pgs_copy_options_t *options, const pgs_lexed_t *lexed,
                                   pgs_copy_spec_t *out, pgs_key_error_t *err) PGS_MUST_USE;

/* ---- the splitter ---- */

/* One row: SHARD is its shard, or -1 for the header line (send it to every
 * shard: each shard's COPY skips or matches it) and, in binary, the
 * header and the trailer. ROW includes its line
 * terminator, except for a last row the data ended without one (nothing
 * follows such a row). ROW points into the caller's chunk when the row
 * arrived whole, else into the splitter's buffer: valid during the call. */
typedef void (*pgs_copy_row_cb)(void *ctx, int shard, const uint8_t *row, size_t len);

typedef struct pgs_copy_split pgs_copy_split_t;

/*
 * A splitter for COPY into sharded TABLE of DB with SPEC (text, CSV or
 * binary: tuples as CopyFromBinaryOneRow reads them, the key decoded as
 * pgs_key_from_binary does, an integer key's type by its width). KEY_COLUMN: the key's
 * 0-based position in the COPY column list (pgs_plan_t.copy_key_column);
 * NCOLUMNS: the columns in that list, or -1 when unknown (then only the
 * key's presence is checked, not the field count). MAX_ROW: the longest row
 * (bytes, terminator included) accepted, e.g. max_message_size; a longer
 * one, or a partial row held past it, is refused with 54000. SESSION (may
 * be NULL; copied) restricts rows as it restricts INSERT rows: a hint or a
 * tenant refuses keys of another shard or tenant (route.h). DB and TABLE
 * must outlive the splitter.
 */
pgs_copy_split_t *pgs_copy_split_new(const pgs_copy_spec_t *spec, const pgs_database_t *db,
                                     const pgs_table_t *table, int key_column, int ncolumns,
                                     size_t max_row, const pgs_route_session_t *session,
                                     pgs_copy_row_cb cb, void *cb_ctx);
void pgs_copy_split_free(pgs_copy_split_t *split);

/*
 * The payload of the next CopyData message (any size; rows may span
 * messages). Reports every row it completes. PGS_EINVAL with ERR (SQLSTATE
 * and a message without "pgshard: ", ending in "(COPY t, line N)") when a
 * row cannot be placed:
 *   23502  the key is NULL
 *   22P02, 22003, 22007, 22023 ...  the key does not parse or route (the
 *          key error's SQLSTATE)
 *   22P04  too few fields to reach the key, a field count other than
 *          NCOLUMNS, an unterminated CSV quote in or before the key, line
 *          ends that change style, a corrupt end-of-data marker
 *   22021  a key whose escapes make invalid UTF-8
 *   54000  a row longer than MAX_ROW
 * Rows reported before the error stay reported. After an error every call
 * returns the same error; after the end-of-data marker `\.` every byte is
 * ignored (PostgreSQL ignores them too).
 */
pgs_status_t pgs_copy_split_feed(pgs_copy_split_t *split, const uint8_t *data, size_t len,
                                 pgs_key_error_t *err) PGS_MUST_USE;

/* CopyDone: a last row without a line terminator is a row (as PostgreSQL
 * reads it). Errors as pgs_copy_split_feed. */
pgs_status_t pgs_copy_split_finish(pgs_copy_split_t *split, pgs_key_error_t *err) PGS_MUST_USE;

/* Whether the end-of-data marker was seen. */
bool pgs_copy_split_ended(const pgs_copy_split_t *split);
/* Rows reported so far, the header line not counted. */
uint64_t pgs_copy_split_rows(const pgs_copy_split_t *split);

#endif
