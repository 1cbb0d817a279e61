/*
 * moves.h — resharding as the router sees it (moves.c): the moves a
 * resharding has under way (rows of pgshard.reshard_move, sql/reshard.sql,
 * which the monitor reads from every shard primary and publishes in the
 * health snapshot), the statements refused while rows move, and whether a
 * statement would run on other shards under another map (the cutover hold,
 * hold.h). Pure: no I/O.
 *
 * While a move copies or streams rows into a shard that already serves
 * (its target is a shard of the running map), those rows are on both
 * shards. A statement routed key by key is fine: a key the running map
 * sends to the target is not moving. Anything else that reaches the target
 * and names a moving table would read the copies twice or change them
 * twice (once there, once streamed from the source): a statement on
 * several shards (a fan-out, DDL included), or one sent there by a hint or
 * a tenant session without the table's key. pgs_moves_refuse says which.
 */
#ifndef PGSHARD_MOVES_H
#define PGSHARD_MOVES_H

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/route.h"

struct pgs_snapshot;

typedef enum {
  PGS_MOVE_COPYING,   /* rows as of the slot's snapshot are being copied */
  PGS_MOVE_STREAMING, /* copied; later changes applied as they come */
  PGS_MOVE_SWITCHED,  /* the new map serves; the source's copies wait for cleanup */
  PGS_MOVE_CLEANED,   /* the source's copies are gone */
  PGS_MOVE_UNKNOWN,   /* a phase this pgshard does not know: taken as moving */
} pgs_move_phase_t;

/* One row of pgshard.reshard_move (sql/reshard.sql), as read. */
typedef struct pgs_move {
  char *reshard_id;
  char *database;
  char *source; /* shard names */
  char *target;
  char **tables; /* table names (an unquoted "schema.name" is matched by name) */
  int ntables;
  char *phase_name; /* as the row has it */
  pgs_move_phase_t phase;
  int64_t rows_copied;
  int64_t rows_applied;
  bool has_applied_lsn;
  uint64_t applied_lsn;
  double applied_commit_at; /* seconds since the epoch; < 0: NULL */
  char *error;              /* NULL: none */
  double updated_at;        /* seconds since the epoch; < 0: NULL */
  bool mirror;              /* the source's copy of the target's row */
} pgs_move_t;

pgs_move_phase_t pgs_move_phase_parse(const char *name);
/* Copying or streaming (or a phase not known): its rows are on both shards. */
bool pgs_move_active(const pgs_move_t *move);

/* A one-dimensional text[] in PostgreSQL's output format ('{a,"b c"}')
 * into *OUT (N strings, malloc'ed). False when it is not one. */
bool pgs_moves_parse_array(const char *text, char ***out, int *n);

/* MOVE copied (deep) to the end of *MOVES (*N entries). */
void pgs_moves_append(pgs_move_t **moves, int *n, const pgs_move_t *move);
/* The same, unless *MOVES has the move (reshard_id, source, target)
 * already: then a target's row replaces a source's mirror of it, and a
 * mirror is dropped. */
void pgs_moves_add(pgs_move_t **moves, int *n, const pgs_move_t *move);
void pgs_moves_free(pgs_move_t *moves, int n);

/* The moves published for database DB in SNAP (*N of them), NULL when
 * none. */
const pgs_move_t *pgs_moves_of(const struct pgs_snapshot *snap, const char *db, int *n);

/*
 * Whether PLAN (of LEXED, routed RT in DB) must be refused because of one of
 * MOVES (N): an active move into a shard of DB that the statement reaches
 * without a decision by key, and a table of that move that the statement
 * names (a word of its text, case-folded unless quoted: a column of the
 * same name counts too; every table when LEXED is NULL). True with the message (no "pgshard: " prefix,
 * SQLSTATE 55000) in MESSAGE.
 */
bool pgs_moves_refuse(const pgs_move_t *moves, int n, const pgs_database_t *db,
                      const pgs_plan_t *plan, const pgs_lexed_t *lexed, const pgs_route_t *rt,
                      char *message, size_t cap);

/* ---- the same statement under two maps (the cutover hold) ---- */

/* Whether databases A and B send every key of every table to shards of
 * the same names (shards, hash function, regions, tables, ranges, geo
 * values, tenant pins all alike). Conservative: false whenever they might
 * not. */
bool pgs_moves_same_map(const pgs_database_t *a, const pgs_database_t *b);
/* The same for one table: TA of A and TB of B. */
bool pgs_moves_same_table(const pgs_database_t *a, const pgs_table_t *ta, const pgs_database_t *b,
                          const pgs_table_t *tb);

/* Whether a statement routed RA in A runs on the shards (by name) it runs
 * on routed RB in B. A refusal in A is the same anywhere (the statement is
 * refused now); one in B only is not. ANY (no sharded table) is ANY. A
 * SPLIT INSERT is compared row by row (NROWS rows, both row_shard arrays). */
bool pgs_moves_same_route(const pgs_database_t *a, const pgs_route_t *ra, const pgs_database_t *b,
                          const pgs_route_t *rb, int nrows);

#endif
