/*
 * reshard.h — `pgshardctl reshard`: moving rows between shards while the
 * application runs. Shared by reshard.c (the verbs, the plan, the state in
 * the cluster), reshard_copy.c (the snapshot copy) and reshard_stream.c
 * (applying the source's changes as they come).
 *
 * A plan is computed from two configs: for every (source shard of the old
 * map, target shard of the new map) that some key can move between, a move
 * with the sharded tables concerned. Moves from one source share one
 * replication slot and one publication, and are served by one streamer
 * process. State lives in pgshard.reshard_move on each target's primary
 * (sql/reshard.sql), one row per (reshard_id, source).
 */
#ifndef PGSHARD_CTL_RESHARD_H
#define PGSHARD_CTL_RESHARD_H

#include <libpq-fe.h>

#include "pgshard/config.h"

#define RS_MESSAGE_PREFIX "pgshard_reshard" /* pg_logical_emit_message prefix of cut markers */

typedef struct rs_move {
  const pgs_database_t *old_db, *new_db;
  const pgs_shard_t *source; /* of old_db */
  const pgs_shard_t *target; /* of new_db */
  int target_index;          /* in new_db->shards */
  char **tables;             /* table names, as in both maps */
  int ntables;
} rs_move_t;

typedef struct rs_source {
  const pgs_database_t *old_db, *new_db;
  const pgs_shard_t *shard; /* of old_db */
  char **tables;            /* every table any of its moves has */
  int ntables;
  int *moves; /* indexes into the plan's moves */
  int nmoves;
  char slot[PGS_MAX_NAME];
  char publication[PGS_MAX_NAME];
} rs_source_t;

typedef struct rs_plan {
  pgs_config_t *old_config, *new_config;
  const char *old_path, *new_path;
  const pgs_database_t *old_db, *new_db;
  char id[17];
  rs_move_t *moves;
  int nmoves;
  rs_source_t *sources;
  int nsources;
} rs_plan_t;

/* One move's row of pgshard.reshard_move, as read back. */
typedef struct rs_state {
  bool found;
  char phase[16];
  uint64_t consistent_lsn, applied_lsn;
  long long rows_copied, rows_applied;
  char applied_commit_at[40];
  char cut_token[40];
  char error[512];
} rs_state_t;

/* Options of the verbs. */
typedef struct rs_options {
  const char *database;    /* --database */
  const char *admin;       /* --admin CONNINFO of pgshard's console */
  long long max_lag_bytes; /* cutover: hold only once every move lags less */
  double max_lag_seconds;
  int wait_ms; /* cutover: how long to wait for that */
  int timeout_ms;
} rs_options_t;

/* ---- reshard.c ---- */

void rs_plan_free(rs_plan_t *plan);
/* pgshard's admin console: --admin, else OLD's listen address as its first
 * admin user (NULL after printing why). */
PGconn *rs_console_connect(const rs_plan_t *plan, const rs_options_t *opt);
/* An LSN's text (pg_lsn) as a number; 0 when it is not one. */
uint64_t rs_lsn(const char *text);

/* Connections: to a node as its conninfo says (REPLICATION: a logical
 * replication connection). NULL after printing why. */
PGconn *rs_connect(const pgs_node_t *node, const char *dbname, bool replication);
/* Run SQL with text PARAMS on CONN; false after printing the error
 * prefixed by WHAT. */
bool rs_exec(PGconn *conn, const char *what, const char *sql, int nparams,
             const char *const *params);
/* The same, returning the result (NULL after printing the error). */
PGresult *rs_query(PGconn *conn, const char *what, const char *sql, int nparams,
                   const char *const *params);
/* MOVE's state row on its target (CONN), into OUT. */
bool rs_state_read(PGconn *conn, const rs_plan_t *plan, const rs_move_t *move, rs_state_t *out);
/* Copy MOVE's row from its target (TCONN) to its source (SCONN) as a
 * mirror (deleting the mirror when the row is gone); every move's with
 * connections of its own (rs_mirror_all). */
bool rs_state_mirror(PGconn *tconn, PGconn *sconn, const rs_plan_t *plan, const rs_move_t *move);
bool rs_mirror_all(const rs_plan_t *plan);
/* Set MOVE's error column (or clear it: NULL), autocommit on CONN. */
void rs_state_error(PGconn *conn, const rs_plan_t *plan, const rs_move_t *move, const char *error);
/* The shard NAME's index in DB for the key in TEXT of TABLE, or -1 after
 * filling ERRBUF (a key that does not parse or route). */
int rs_route_text(const pgs_database_t *db, const pgs_table_t *table, const char *text, size_t len,
                  char *errbuf, size_t errcap);
/* Quote an identifier into BUF ("..." with doubled quotes). */
const char *rs_ident(const char *name, char *buf, size_t cap);
/* The columns COPY and the apply name, in attnum order, of TABLE on CONN,
 * and the shard key's position among them (-1: missing). Caller frees. */
char **rs_table_columns(PGconn *conn, const char *table, const char *key_column, int *ncols,
                        int *key_pos);
void rs_free_strings(char **v, int n);

/* ---- reshard_copy.c ---- */

/* Source SRC's copy: a fresh slot and its snapshot, the moving rows copied
 * into every target in one transaction each, phase streaming. Leaves the
 * replication connection REPL ready to stream from the slot. False after
 * recording the error. */
bool rs_copy_source(const rs_plan_t *plan, const rs_source_t *src, PGconn *repl);
/* Delete, on CONN (a shard's primary, inside the caller's transaction),
 * the rows of TABLE whose key routes by DB to a shard named DROP_NAME (when
 * KEEP is false) or to any shard but KEEP_NAME (when KEEP is true). Returns
 * the count, or -1 after printing the error. */
long long rs_delete_routed(PGconn *conn, const pgs_database_t *db, const char *table,
                           const char *name, bool keep);

/* ---- reshard_stream.c ---- */

/* Stream SRC's changes from its slot and apply them until the moves are
 * switched or aborted (0), or an error stops it (1, recorded in the
 * state's error column). */
int rs_stream_source(const rs_plan_t *plan, const rs_source_t *src, PGconn *repl);

/* ---- reshard_cut.c ---- */

int rs_verb_cutover(const rs_plan_t *plan, const rs_options_t *opt);
int rs_verb_cleanup(const rs_plan_t *plan);
int rs_verb_abort(const rs_plan_t *plan, const rs_options_t *opt);

#endif
