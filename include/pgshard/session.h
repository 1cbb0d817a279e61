/*
 * session.h — what a statement does to session state that transaction
 * pooling must know about.
 *
 * Under transaction pooling a client's server changes between transactions,
 * so session state must either follow the client or pin it to one server:
 *  - SET / RESET / RESET ALL / DISCARD ALL are tracked per client and replayed
 *    on whichever server it gets (ops below);
 *  - state that cannot be replayed (LISTEN, SQL-level PREPARE, cursors WITH
 *    HOLD, temporary objects, LOAD, session advisory locks) or that pgshard
 *    cannot see (set_config() not provably local, DO blocks) pins the client
 *    to its server until it disconnects (PGS_SESSION_PIN); the server is
 *    reset with DISCARD ALL before its next client;
 *  - role and session authorization (SET ROLE, SET SESSION AUTHORIZATION and
 *    their RESETs) are tracked like other settings, for the client's servers
 *    on other shards, and pin too: RESET ALL, which replay starts with,
 *    leaves them as they are;
 *  - temporary objects leave a temporary schema behind that even DISCARD ALL
 *    keeps (and with it, PostgreSQL's refusal to PREPARE TRANSACTION after
 *    using it): the server is closed, not reused (PGS_SESSION_TEMP);
 *  - DISCARD ALL and DEALLOCATE ALL drop the server's protocol-level prepared
 *    statements, which pgshard caches per server (PGS_SESSION_DROPS_PREPARED).
 *
 * pgs_session_maybe() is the hot-path filter (a look at the first keyword and
 * a scan for "advisory", "set_config" and ';'); only statements it flags are parsed with
 * libpg_query, the real PostgreSQL grammar.
 */
#ifndef PGSHARD_SESSION_H
#define PGSHARD_SESSION_H

#include "pgshard/common.h"

#define PGS_SESSION_PIN 0x1
#define PGS_SESSION_DROPS_PREPARED 0x2
#define PGS_SESSION_TEMP 0x4        /* temporary objects: close the server, never reuse it */
#define PGS_SESSION_STRINGS_OFF 0x8 /* SET [LOCAL] standard_conforming_strings to other than on */
#define PGS_SESSION_MAX_OPS 32

typedef enum {
  PGS_SET_OP_SET,       /* name = the setting, sql = the statement to replay */
  PGS_SET_OP_RESET,     /* RESET name */
  PGS_SET_OP_RESET_ALL, /* RESET ALL, DISCARD ALL (role and session
                           authorization stay: DISCARD ALL adds a RESET
                           session_authorization) */
  /* Not settings: LISTEN name, UNLISTEN name, UNLISTEN * (name = the
   * channel as PostgreSQL folds it). Transaction pooling answers them
   * itself (planner.c, proxy/listen.c); they never join the replayed
   * settings. */
  PGS_SET_OP_LISTEN,
  PGS_SET_OP_UNLISTEN,
  PGS_SET_OP_UNLISTEN_ALL,
} pgs_set_op_kind_t;

static inline bool pgs_set_op_is_listen(pgs_set_op_kind_t kind) {
  return kind == PGS_SET_OP_LISTEN || kind == PGS_SET_OP_UNLISTEN ||
         kind == PGS_SET_OP_UNLISTEN_ALL;
}

typedef struct pgs_set_op {
  pgs_set_op_kind_t kind;
  char name[PGS_MAX_NAME];
  char *sql; /* malloc'ed, for PGS_SET_OP_SET */
  /* SET name = one constant (string, number or word): its text. Filled for
   * every SET so pgshard's own settings (pgshard.*) can be read; SET LOCAL
   * of a pgshard.* setting is reported as a SET. */
  bool has_value;
  char value[256];
  /* Set by the proxy: the server reported the parameter's resolved value
   * (ParameterStatus) after running it, and sql sets exactly that value. */
  bool reported;
} pgs_set_op_t;

typedef struct pgs_session_effects {
  int flags;
  int nops;
  pgs_set_op_t ops[PGS_SESSION_MAX_OPS];
  bool parse_failed; /* libpg_query rejected it: the server will too */
  int nstatements;   /* statements in the text */
  /* The text is one statement, DEALLOCATE [PREPARE] NAME: NAME (else ""). A
   * statement the client prepared through the protocol is the proxy's to
   * forget: the server knows it by another name. */
  char deallocate[64];
} pgs_session_effects_t;

/* The first byte at or after P (before END) that is not whitespace or in a
 * comment (-- to the end of the line, nested slash-star), as PostgreSQL's
 * scanner skips them. */
const char *pgs_session_skip_space(const char *p, const char *end);

/* Cheap filter: false means the statement certainly has no session effect. */
bool pgs_session_maybe(const char *sql, size_t len);

/* Whether NAME (any case) is a role setting: "role"
 * or "session_authorization". RESET ALL does not touch them. */
bool pgs_session_is_role(const char *name);

/* Parse SQL (NUL-terminated) and fill OUT. */
void pgs_session_analyze(const char *sql, pgs_session_effects_t *out);
void pgs_session_effects_free(pgs_session_effects_t *out);

/* Whether V is one of PostgreSQL's spellings of true for a boolean setting
 * (parse_bool: on, true, yes, 1 and their prefixes t, tr, y ...). */
bool pgs_session_bool_on(const char *v);

#endif
