/*
 * admin.h — the admin console's statements, read without I/O: `psql -d
 * pgshard` as a user with admin = true sends SHOW ..., EXPLAIN ROUTE ...,
 * RELOAD, PAUSE, RESUME, BAN, UNBAN, KILL, SHUTDOWN, RESHARD HOLD '<new
 * config>' [timeout_ms], RESHARD RELEASE (DESIGN.md,
 * "Operations"); proxy/admin.c runs them. Keywords are case-insensitive, a
 * trailing semicolon and surrounding blanks are allowed; SET statements
 * (drivers send them at connect) are accepted and do nothing.
 */
#ifndef PGSHARD_ADMIN_H
#define PGSHARD_ADMIN_H

#include "pgshard/common.h"

typedef enum {
  PGS_ADMIN_EMPTY,         /* nothing but blanks and semicolons */
  PGS_ADMIN_SHOW,          /* SHOW <what> */
  PGS_ADMIN_EXPLAIN_ROUTE, /* EXPLAIN ROUTE [IN db] <statement> */
  PGS_ADMIN_RELOAD,
  PGS_ADMIN_PAUSE,  /* PAUSE [db] */
  PGS_ADMIN_RESUME, /* RESUME [db] */
  PGS_ADMIN_BAN,    /* BAN node */
  PGS_ADMIN_UNBAN,  /* UNBAN node */
  PGS_ADMIN_KILL,   /* KILL client_id */
  PGS_ADMIN_SHUTDOWN,
  PGS_ADMIN_SET,             /* SET ... (ignored) */
  PGS_ADMIN_RESHARD_HOLD,    /* RESHARD HOLD 'path' [timeout_ms] */
  PGS_ADMIN_RESHARD_RELEASE, /* RESHARD RELEASE */
} pgs_admin_kind_t;

#define PGS_ADMIN_SHOW_MAP(X)                                                                      \
  X(SHARDS, "shards", "every shard node: role, health, read set, lag")                             \
  X(NODES, "nodes", "every node once, with its health")                                            \
  X(POOLS, "pools", "clients and servers per database, user and node")                             \
  X(CLIENTS, "clients", "every client connection")                                                 \
  X(SERVERS, "servers", "every server connection")                                                 \
  X(STATS, "stats", "requests, transactions, errors and latency per database")                     \
  X(QUERIES, "queries", "per statement (normalised): calls, shards, errors, latency; top 100")     \
  X(TWOPHASE, "twophase", "two-phase commits in flight: gid, state, driver; recovery's counters")  \
  X(LISTENERS, "listeners", "LISTEN/NOTIFY: pgshard's listening connections and their channels")   \
  X(RESHARD, "reshard", "resharding: each move (phase, rows, lag) and the cutover hold")           \
  X(CONFIG, "config", "the running configuration")                                                 \
  X(VERSION, "version", "pgshard's version")                                                       \
  X(HELP, "help", "the admin commands")

typedef enum {
#define PGS_ADMIN_SHOW_ENUM(name, word, help) PGS_SHOW_##name,
  PGS_ADMIN_SHOW_MAP(PGS_ADMIN_SHOW_ENUM)
#undef PGS_ADMIN_SHOW_ENUM
      PGS_SHOW_COUNT
} pgs_admin_show_t;

typedef struct pgs_admin_cmd {
  pgs_admin_kind_t kind;
  pgs_admin_show_t show;
  char arg[PGS_MAX_NAME * 2 + 2]; /* the database (PAUSE, RESUME, EXPLAIN ROUTE IN), node
                                     (BAN, UNBAN: "db.shard.index" or host:port) */
  int64_t client_id;              /* KILL */
  char path[1024];                /* RESHARD HOLD: the new config's path ('' quotes undone) */
  int64_t timeout_ms;             /* RESHARD HOLD: 0 when not given */
  const char *statement;          /* EXPLAIN ROUTE: the rest of the text (points into it) */
  size_t statement_len;
} pgs_admin_cmd_t;

/* Read SQL (LEN bytes). On failure returns PGS_EINVAL with a message in ERR
 * (SQLSTATE 42601 unless it says otherwise). */
pgs_status_t pgs_admin_parse(const char *sql, size_t len, pgs_admin_cmd_t *cmd, char *err,
                             size_t errlen) PGS_MUST_USE;
/* The word after SHOW and one line of help for WHAT. */
const char *pgs_admin_show_word(pgs_admin_show_t what);
const char *pgs_admin_show_help(pgs_admin_show_t what);

#endif
