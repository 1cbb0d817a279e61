/*
 * session.h — what a statement does to session state that transaction
 * pooling must know about.
 *
 * Under transaction pooling a client's server changes between transactions,
 * so session state must either follow the client or pin it to one server:
 *  - SET / RESET / RESET ALL / DISCARD ALL are tracked per client and replayed
 *    on whichever server it gets (ops below);
 *  - state that cannot be replayed (LISTEN, SQL-level PREPARE, cursors WITH
 *    HOLD, temporary objects, LOAD, session advisory locks) pins the client to
 *    its server until it disconnects (PGS_SESSION_PIN);
 *  - DISCARD ALL and DEALLOCATE ALL drop the server's protocol-level prepared
 *    statements, which pgshard caches per server (PGS_SESSION_DROPS_PREPARED).
 *
 * pgs_session_maybe() is the hot-path filter (a look at the first keyword and
 * a scan for "advisory" and ';'); only statements it flags are parsed with
 * libpg_query, the real PostgreSQL grammar.
 */
#ifndef PGSHARD_SESSION_H
#define PGSHARD_SESSION_H

#include "pgshard/common.h"

#define PGS_SESSION_PIN 0x1
#define PGS_SESSION_DROPS_PREPARED 0x2
#define PGS_SESSION_MAX_OPS 32

typedef enum {
  PGS_SET_OP_SET,       /* name = the setting, sql = the statement to replay */
  PGS_SET_OP_RESET,     /* RESET name */
  PGS_SET_OP_RESET_ALL, /* RESET ALL, DISCARD ALL */
} pgs_set_op_kind_t;

typedef struct pgs_set_op {
  pgs_set_op_kind_t kind;
  char name[PGS_MAX_NAME];
  char *sql; /* malloc'ed, for PGS_SET_OP_SET */
  /* SET name = one constant (string, number or word): its text. Filled for
   * every SET so pgshard's own settings (pgshard.*) can be read; SET LOCAL
   * of a pgshard.* setting is reported as a SET. */
  bool has_value;
  char value[256];
} pgs_set_op_t;

typedef struct pgs_session_effects {
  int flags;
  int nops;
  pgs_set_op_t ops[PGS_SESSION_MAX_OPS];
  bool parse_failed; /* libpg_query rejected it: the server will too */
} pgs_session_effects_t;

/* Cheap filter: false means the statement certainly has no session effect. */
bool pgs_session_maybe(const char *sql, size_t len);

/* Parse SQL (NUL-terminated) and fill OUT. */
void pgs_session_analyze(const char *sql, pgs_session_effects_t *out);
void pgs_session_effects_free(pgs_session_effects_t *out);

#endif
