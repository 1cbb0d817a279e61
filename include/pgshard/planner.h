/*
 * planner.h — the request engine's planning half (planner.c), in the pure
 * library: a client message and the session it belongs to become steps.
 *
 * A session (pgs_session_t) is what planning needs to know of a client:
 * its database, prepared statements and portals, the transaction pgshard
 * keeps across shards, read-your-writes state, pgshard's own settings, and
 * the slots it holds servers on. It holds no connection: what planning
 * asks of the running proxy (the health of a shard, the turn of the round
 * robin, the plan cache, memory accounting) goes through a table of
 * operations (pgs_planner_ops_t), so that every "which steps does this
 * message become" scenario can be unit-tested without a server
 * (tests/unit/test_planner.c). The proxy (request.c) runs the steps;
 * exchange.h decides what each server reply becomes.
 *
 * Slots: a session has two per shard, 2 * shard for the shard's writer and
 * 2 * shard + 1 for one of its replicas (the node in picked[shard]). Steps
 * and the masks below are by slot.
 *
 * Message plans (routing mode: several shards, or a tenant session):
 *   Query     lexed + analysed (plan cache) + routed (route.h):
 *             ONE/ANY -> that shard; FANOUT -> the same Query on each shard
 *             in turn (later parts' descriptions swallowed, CommandComplete
 *             counts summed into the last one, one ReadyForQuery); SPLIT ->
 *             each shard gets an INSERT of its own rows; MERGE -> a fan
 *             (every shard at once, rows merged by the proxy); REFUSE ->
 *             error.
 *   Parse     remembered (text, plan, literals, declared types) and sent to
 *             the shard its Bind will pick when that Bind is already in
 *             the buffer (the bytes after the message), else to the
 *             session's shard.
 *   Bind      routed with its parameter values; the portal remembers its
 *             shards, so Describe/Execute/Close of it follow. A merged one
 *             is bound on one shard at once, on the others with the
 *             Execute, whose Sync is then sent without waiting.
 *   Execute   where its portal was bound; a merged portal's runs as a fan,
 *             and with a row limit the fan gathers the merged rows into
 *             the portal, which answers the next Executes itself.
 *   Sync      to every shard the unit touched, one ReadyForQuery reported.
 * Statements planned specially: INSERT INTO t VALUES without a column
 * list (planned with t's columns named: the message is rewritten);
 * DECLARE/FETCH/MOVE/CLOSE (a cursor on one shard is followed there; one
 * over several is gathered at DECLARE and answered by pgshard); NOTIFY
 * (the first shard's primary); LISTEN and UNLISTEN (transaction pooling:
 * a LISTEN step, in pass-through too; session pooling: the first shard's
 * primary); DEALLOCATE of a
 * protocol statement (answered); SET/RESET (tracked: a Query's when sent,
 * a prepared statement's when its portal runs); SET pgshard.* (answered).
 * Transactions: BEGIN is answered by pgshard and replayed on each shard the
 * transaction touches (tx_mask, when the proxy runs a step there);
 * COMMIT/ROLLBACK go to those shards, in two phases when they wrote on
 * several under cross_shard_writes = 2pc. A statement pgshard refuses
 * inside a transaction aborts it, as an error in PostgreSQL would.
 * Without routing (one shard, no tenant, no replicas) every step targets
 * slot 0 and nothing is lexed: the pass-through path of a plain pooler.
 */
#ifndef PGSHARD_PLANNER_H
#define PGSHARD_PLANNER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/copy.h"
#include "pgshard/exchange.h"
#include "pgshard/health.h"
#include "pgshard/proto.h"
#include "pgshard/route.h"
#include "pgshard/session.h"
#include "pgshard/strmap.h"

#define PGS_CLIENT_MAX_STATEMENTS 10000 /* prepared statements one client may keep */

struct pgs_session;

/* The SET/RESET statements a prepared statement runs: the session takes
 * them when it is executed (an Execute of a portal bound from it), as it
 * takes a simple Query's when it is sent. */
typedef struct pgs_set_ops {
  int n;
  pgs_set_op_t ops[];
} pgs_set_ops_t;

typedef struct pgs_client_stmt {
  char server_name[24]; /* "pgs_<16 hex>": same text+types, same name */
  pgs_buf_t parse_body; /* Parse body after the statement name */
  /* Routing only: the analysed statement, its literals and declared types. */
  pgs_plan_t *plan;
  pgs_lexed_t *lexed;
  uint32_t *type_oids;
  int ntypes;
  bool drops_prepared;    /* DISCARD ALL / DEALLOCATE ALL */
  pgs_set_ops_t *set_ops; /* its SET/RESET statements, or NULL */
  /* A read that may run on several shards: the shards' variant of the
   * statement (merge.h: hidden columns, LIMIT pushed down), prepared under
   * its own name; built at the first merged Bind. */
  char merge_name[24];
  pgs_buf_t merge_body;
  /* Bytes charged to the session's memory (max_client_memory), given back
   * when the statement is freed. */
  struct pgs_session *owner;
  size_t charged;
} pgs_client_stmt_t;

/* One thing to do for a client message: send something to one shard's
 * server, or reply to the client without a server. A message that needs
 * several (a fan-out, a Sync closing several servers) becomes several
 * steps, run in order; a step for another server than the last one waits
 * until every other server has answered, so replies reach the client in
 * request order. */
typedef enum {
  PGS_STEP_FORWARD,      /* the client's message, to shard (statement names mapped) */
  PGS_STEP_PARSE,        /* the client's Parse: prepare stmt on shard, visibly */
  PGS_STEP_QUERY,        /* a Query with text */
  PGS_STEP_EXEC_SQL,     /* text through Parse/Bind/Execute of the unnamed statement */
  PGS_STEP_SYNC,         /* Sync (internal: its ReadyForQuery is not the client's) */
  PGS_STEP_REPLY,        /* reply made up by pgshard: type `reply`, 'C' with tag text */
  PGS_STEP_ERROR,        /* ErrorResponse made up by pgshard: text "SQLSTATE\0message" */
  PGS_STEP_FAN_EXEC,     /* a merged portal's part: Describe (for the merge) + Execute */
  PGS_STEP_INJECT,       /* text as pgshard's own statement (replies swallowed
                        unless its rule says otherwise) */
  PGS_STEP_TWOPC,        /* a two-phase commit phase (`phase`), run when the servers
                        have answered: it plans the steps that follow */
  PGS_STEP_ROWS,         /* the next `rows` rows (0: all) of the gathered portal or
                        cursor named `text` (pgs_portal_fetch, `fetch` how) */
  PGS_STEP_FAN_SQL,      /* a fan's part in the extended protocol: text through the
                        unnamed statement and portal, described (for the merge) */
  PGS_STEP_BIND_VARIANT, /* the client's Bind as `variant` says for this shard */
  PGS_STEP_LISTEN,       /* transaction pooling: LISTEN ('L' in `reply`), UNLISTEN ('U')
                        of channel `text`, or UNLISTEN * ('*'), done by the proxy's
                        listeners (proxy/listen.c), which answer it */
} pgs_step_op_t;

/* A shard's own form of the client's statement and Bind: a multi-row
 * INSERT split by shard in the extended protocol keeps that shard's rows
 * and their parameters, numbered afresh. NAME is prepared from BODY (a
 * Parse body: text, parameter types) unless the server has it; then BIND
 * (a whole Bind message naming it) is sent. */
typedef struct pgs_variant {
  char name[24];
  pgs_buf_t body;
  pgs_buf_t bind;
} pgs_variant_t;

/* Why a step goes to the server it goes to. In routing mode every message
 * pgshard hands a server has a reason other than NONE and PASSTHROUGH; the
 * one place that hands messages to servers (request.c, issue) refuses any
 * other. */
typedef enum {
  PGS_PLACED_NONE,        /* no server: a reply pgshard makes itself */
  PGS_PLACED_ROUTE,       /* the router's decision: a key, hint or tenant, the
                             policy for several shards, or where a portal so
                             placed was bound */
  PGS_PLACED_SESSION,     /* no data: where the session's servers are (SET,
                             transaction ends, Sync, Flush, COPY data of the
                             COPY in progress, Describe of a statement, a
                             Parse whose Bind routes it later) */
  PGS_PLACED_INTERNAL,    /* pgshard's own statement (BEGIN replay, 2PC) */
  PGS_PLACED_PASSTHROUGH, /* one shard, nothing routed: a plain pooler */
} pgs_placed_t;

typedef struct pgs_step {
  int16_t shard;  /* slot, -1: no server */
  uint8_t placed; /* pgs_placed_t */
  int8_t node;    /* the shard node to take a server from when none is linked */
  uint8_t op;
  uint8_t phase;         /* TWOPC: pgs_twopc_phase_t */
  pgs_reply_rule_t rule; /* what the client sees of the replies */
  char reply;            /* REPLY: the message type */
  bool internal;
  bool drain_all;       /* wait until every server has answered, the same one too */
  bool always;          /* runs even when an earlier part of the message failed */
  bool forget_prepared; /* the statement drops the server's prepared statements */
  bool concurrent;      /* a part of a fan-out read: runs without waiting for the others */
  bool drain_others;    /* first part of a fan: waits for the servers outside it only */
  bool extended;        /* INJECT: through Parse/Bind/Execute (inside an extended unit) */
  bool merged;          /* Bind/Parse of the shards' variant of the statement (merge.h) */
  bool gid;             /* INJECT: names the session's 2PC gid (PREPARE TRANSACTION,
                           COMMIT or ROLLBACK PREPARED) */
  uint8_t fetch;        /* ROWS: pgs_fetch_t */
  int64_t rows;         /* ROWS: how many, 0 all */
  char *text;
  struct pgs_client_stmt *stmt;
  pgs_variant_t *variant; /* BIND_VARIANT: owned */
} pgs_step_t;

/* A portal the client bound: the shards it was bound on, or none when
 * pgshard answers it itself (transaction control, pgshard settings). */
typedef struct pgs_portal {
  uint64_t mask;
  uint8_t placed; /* pgs_placed_t of its Bind */
  pgs_stmt_kind_t kind;
  bool copies;    /* fans out to copies (DDL, reference tables) */
  bool read_only; /* BEGIN READ ONLY */
  bool drops_prepared;
  char *sql;               /* local portals: the statement */
  pgs_set_ops_t *set_ops;  /* its statement's SET/RESET, taken at its Execute */
  pgs_plan_t *cursor_plan; /* a local portal of a SQL cursor statement on a cursor
                              over several shards (DECLARE, FETCH, MOVE, CLOSE):
                              its plan, a reference */
  pgs_plan_t *merge_plan;  /* merged over several shards: the plan (ref), its spec */
  int64_t limit, offset;   /* the Bind's LIMIT/OFFSET values for the merge */
  /* Merged: the Bind went to one part (its reply is the client's); the
   * others get it with their Execute, inside the fan, so the Bind costs no
   * round trip. What they are sent: the shards' statement (name, Parse
   * body) and Bind, copied (the client may close the statement first). */
  uint64_t unbound;
  char merge_name[24];
  pgs_buf_t merge_body;
  pgs_buf_t merge_bind;
  /* Gathered: a merged result fetched in parts (Execute with a row limit,
   * FETCH from a cursor) is read whole from the shards once and handed
   * out from here: DataRow messages, the next at rows_pos; for a cursor
   * its RowDescription in head. */
  bool gathered;
  bool hold;  /* a cursor WITH HOLD: it outlives its transaction */
  bool in_tx; /* a cursor declared in the open transaction */
  bool busy;  /* a fan gathers into it: the fan frees it if it is closed
                  (`closed`, out of the session's map) meanwhile */
  bool closed;
  pgs_buf_t rows;
  size_t rows_pos;
  pgs_buf_t head;
  struct pgs_session *owner; /* charged `charged` bytes of its memory */
  size_t charged;
  size_t rows_charged; /* of which the gathered rows */
} pgs_portal_t;

/* How gathered rows go out (pgs_portal_fetch). */
typedef enum {
  PGS_FETCH_EXECUTE,     /* Execute: rows, then PortalSuspended when the limit was
                        reached, else CommandComplete "SELECT n" */
  PGS_FETCH_FETCH,       /* SQL FETCH: the RowDescription, rows, CommandComplete "FETCH n" */
  PGS_FETCH_ROWS,        /* SQL FETCH as a portal (extended protocol): rows, "FETCH n" */
  PGS_FETCH_MOVE,        /* SQL MOVE: no rows, CommandComplete "MOVE n" */
  PGS_FETCH_DESCRIBE,    /* a cursor's Describe: its RowDescription only */
  PGS_FETCH_MOVE_PORTAL, /* SQL MOVE on a protocol portal: as MOVE, from `portals` */
} pgs_fetch_t;

/* A two-phase commit in progress (cross_shard_writes = 2pc): planned here,
 * its phases run by the proxy's coordinator (coordinator.c). */
typedef struct pgs_twopc {
  char gid[64];     /* PGS_GID_BUF (twophase.h); empty: none yet */
  uint64_t slots;   /* slots of the transaction */
  uint64_t written; /* of those, the ones that prepare */
  bool simple;      /* a simple Query: pgshard sends the ReadyForQuery */
  bool tag;         /* the client said COMMIT: answer "COMMIT" */
  bool committed;   /* the decision shard committed: COMMIT PREPARED sent */
} pgs_twopc_t;

/* A read or COPY the proxy runs on several shards at once (fanout.c),
 * ordered by the plan: the proxy starts it before it runs the steps.
 * The session holds one while its steps do (pgs_session_t.fan_order). */
typedef struct pgs_fan_order {
  pgs_plan_t *plan; /* a reference, the order's own */
  uint64_t slots;
  int64_t limit, offset;
  bool simple;
  bool copy_in; /* COPY FROM STDIN: rows split by key (spec, route) */
  /* Gathered into PORTAL (a merged portal's first Execute with a row
   * limit): the parts run whole, then its first MAX_ROWS rows go out. */
  struct pgs_portal *portal;
  int64_t max_rows;
  bool declare;          /* PORTAL is a cursor being declared: nothing goes out but
                   "DECLARE CURSOR" */
  bool own_tx;           /* each part in a transaction of pgshard's, ended with the COPY */
  pgs_copy_spec_t *spec; /* copy_in: the COPY's options (the order's own) */
  pgs_route_session_t route;
} pgs_fan_order_t;

/* What planning asks of the running proxy; CTX is the session's ctx. */
typedef struct pgs_planner_ops {
  /* The health of SHARD of the session's database; NULL: not known
   * (primaries only). */
  const pgs_shard_health_t *(*health)(void *ctx, int shard);
  /* The round robin's turn over replicas; it moves on when ADVANCE. */
  uint32_t (*turn)(void *ctx, bool advance);
  /* The plan of a lexed statement (the plan cache); a reference. */
  pgs_plan_t *(*analyze)(void *ctx, const pgs_lexed_t *lexed);
  /* The request runs LEXED's statement (SHOW QUERIES). */
  void (*note_query)(void *ctx, const pgs_lexed_t *lexed);
  /* Memory held for the session: ADD bytes more, SUB fewer. */
  void (*charge)(void *ctx, size_t add, size_t sub);
  /* pgshard refused something with SQLSTATE (statistics). */
  void (*refused)(void *ctx, const char *sqlstate);
  /* Whether the session's client_encoding sends keys as UTF-8 bytes. */
  bool (*keys_utf8)(void *ctx);
  /* Whether the unnamed statement on the session's current server is the
   * session's own (pass-through). */
  bool (*owns_unnamed)(void *ctx);
  uint64_t (*now_ms)(void);
  /* The columns of sharded TABLE in the catalog's order, as a column list
   * ("id, name, \"Mixed\""), or NULL when not known (yet). */
  const char *(*columns)(void *ctx, const char *table);
  /* The moves of a resharding under way in the session's database
   * (moves.h), *N of them; NULL when none. May be NULL. */
  const struct pgs_move *(*moves)(void *ctx, int *n);
  /* While a cutover hold applies to the session's next statement
   * (hold.h), the new map's database: a statement that would run on
   * other shards there waits (pgs_session_t.held). NULL otherwise (the fast
   * path). May be NULL. */
  const pgs_database_t *(*hold)(void *ctx);
} pgs_planner_ops_t;

typedef struct pgs_session {
  const pgs_planner_ops_t *ops;
  void *ctx;
  int id;                  /* logs: "client ID" */
  const char *user, *peer; /* logs */
  const char *dbname;
  const pgs_database_t *db;
  size_t max_message_size;
  pgs_exchange_t ex; /* the request, unit and transaction states, and the reply
                        bookkeeping of the message served (exchange.h) */
  bool routing;      /* analyse and route (several shards, or a tenant, or replicas) */
  bool held;         /* the message waits for the cutover hold to end (ops->hold):
                        nothing is planned, it is planned again then */
  bool scs_off;      /* a server said standard_conforming_strings is off */
  bool pinned;       /* session state that cannot move: keep the servers */
  bool temp;         /* made temporary objects: its servers are closed, not reused */
  /* SET/RESET awaiting commit (at most PGS_SESSION_MAX_OPS), allocated on the
   * first and let go with the transaction (pgs_session_clear_tx_ops). */
  pgs_set_op_t *tx_ops;
  int ntx_ops, tx_ops_cap;
  pgs_strmap_t stmts;   /* client statement name -> pgs_client_stmt_t */
  pgs_strmap_t portals; /* portal name -> pgs_portal_t */
  /* Pass-through (no portal is kept): the SETs of the last unnamed Parse,
   * and of the portals bound from SET statements (name -> pgs_set_ops_t). */
  pgs_set_ops_t *unnamed_set_ops;
  pgs_strmap_t portal_set_ops;
  /* SQL cursors declared through pgshard: on one shard (mask: its slot),
   * or over several, gathered (pgs_portal_t.gathered). */
  pgs_strmap_t cursors;
  /* The plan of the message being served. */
  pgs_step_t *steps;
  int nsteps, step_next, steps_cap;
  pgs_fan_order_t *fan_order; /* the fan it orders, NULL none (let go with the steps) */
  /* The message as planned when pgshard rewrote it (an INSERT given its
   * column list): what the steps send instead of the client's. */
  bool rewritten;
  pgs_buf_t message;
  pgs_twopc_t
      *twopc; /* a two-phase commit's, allocated by its first (pgs_session_rest lets it go) */
  /* Where it is. */
  int nslots;
  uint64_t linked;    /* slots holding a server (the proxy keeps it) */
  int cur;            /* the slot of the last step run, -1 none */
  int last_shard;     /* where the last routed statement went */
  uint64_t unit_mask; /* slots sent extended messages since the last Sync */
  uint64_t tx_mask;   /* slots the transaction has begun on */
  uint64_t tx_wrote;  /* shards written since the last ReadyForQuery 'I' */
  int tx_write_shard; /* the shard this transaction wrote on, -1 */
  char *begin_sql;    /* how the client began it, replayed on each shard */
  /* Its SET [LOCAL], RESET and savepoints so far, "...;" each, replayed
   * after begin_sql on each shard it reaches later; the statement being
   * run is added once its steps are done (tx_replay_next). */
  pgs_buf_t tx_replay;
  char *tx_replay_next;
  /* read-your-writes */
  bool wrote_ever;
  uint64_t last_write_ms;
  /* Per shard, in one allocation that ryw_commit_ms owns: */
  uint64_t *ryw_commit_ms; /* per shard: when a write there committed, 0 when known */
  uint64_t *ryw_lsn;       /* per shard: the LSN replicas must have replayed */
  int8_t *picked;          /* per shard: the replica node chosen for its replica slot */
  /* pgshard's own settings */
  int route_pref;       /* SET pgshard.route: 0 auto, 1 primary, 2 replica */
  int ryw_pref;         /* SET pgshard.read_your_writes: -1 the database's, else pgs_ryw_t */
  int hint_shard;       /* SET pgshard.shard, -1 */
  pgs_key_t *tenant;    /* SET pgshard.tenant / -c pgshard.tenant */
  char *startup_tenant; /* -c pgshard.tenant until login types it */
  char *tenant_text;    /* the tenant as set, typed again after a reload */
  /* scratch */
  pgs_lexed_t *lexed; /* a Query's lexed text (allocated when one is first lexed) */
  int *row_shard;
  int row_shard_cap;
  const uint8_t **param_data; /* a Bind's parameter values */
  int32_t *param_len;
  int16_t *param_fmt;
  int param_cap;
} pgs_session_t;

/* ---- the session ---- */

/* Set up S for database DB (ops, ctx, id, names, settings before: the
 * caller's). Slots, per-shard state, routing. */
void pgs_session_init(pgs_session_t *s, const pgs_database_t *db);
void pgs_session_free(pgs_session_t *s);
/* Forget the SET/RESET statements awaiting commit and let their array go. */
void pgs_session_clear_tx_ops(pgs_session_t *s);
/* Between requests (no steps, request idle): let the step array go; the
 * next message's first step allocates it again. Called where nothing can
 * hold a step (the end of the proxy's processing of a read). */
void pgs_session_rest(pgs_session_t *s);
/* S moves to DB of a reloaded config: per-shard state carried over by
 * shard name, the tenant typed again, statements analysed again, portals
 * dropped. False with SQLSTATE and MESSAGE (CAP bytes) set, and S as it
 * was, when its tenant or shard hint does not fit the new map: the session
 * must end. */
bool pgs_session_move(pgs_session_t *s, const pgs_database_t *db, char sqlstate[6], char *message,
                      size_t cap);

/* The request, unit and transaction states change only through these:
 * checked against the engine's tables (exchange.h), logged at debug level.
 * A change the table refuses is an engine bug: logged as an error, fatal
 * under PGSHARD_STRICT (as the tests run), made anyway. */
void pgs_session_set_request(pgs_session_t *s, pgs_req_state_t to);
void pgs_session_set_unit(pgs_session_t *s, pgs_unit_state_t to);
void pgs_session_set_tx(pgs_session_t *s, pgs_tx_state_t to);
/* A statement failed or was refused in the open transaction: only its end
 * is taken now. */
void pgs_session_tx_failed(pgs_session_t *s);
/* A reply the session waited for came: true when it was waiting (draining
 * or held), and the caller processes it again. */
bool pgs_session_resume(pgs_session_t *s);
/* The gid of the session's two-phase commit, "" when it has none. */
static inline const char *pgs_session_twopc_gid(const pgs_session_t *s) {
  return s->twopc ? s->twopc->gid : "";
}
/* The message at the client's read position is planned. */
static inline bool pgs_session_planned(const pgs_session_t *s) {
  return s->ex.req == PGS_REQ_RUNNING || s->ex.req == PGS_REQ_DRAINING;
}
/* An ErrorResponse went to the client during this message. */
void pgs_session_message_failed(pgs_session_t *s);

/* ---- steps ---- */

/* A step for SLOT (-1: no server); its node is -1 (placed when it runs)
 * unless the planner sets it. */
pgs_step_t *pgs_steps_add(pgs_session_t *s, int slot, pgs_step_op_t op, pgs_placed_t placed);
/* A reply pgshard makes itself: REPLY's type, TAG for CommandComplete. */
void pgs_steps_reply(pgs_session_t *s, char reply, const char *tag);
/* An ErrorResponse pgshard makes ("pgshard: " and the message); the
 * transaction, if open, is aborted. */
PGS_PRINTF(3, 4)
void pgs_steps_error(pgs_session_t *s, const char *sqlstate, const char *fmt, ...);
/* TEXT as pgshard's own statement on SLOT (EXTENDED: inside an extended
 * unit, with a Sync of its own); RULE: what becomes of its replies. */
void pgs_steps_inject(pgs_session_t *s, int slot, const char *text, pgs_reply_rule_t rule,
                      bool extended);
/* Forget the planned steps (and an order for a fan not started). */
void pgs_steps_clear(pgs_session_t *s);

/* ---- planning ---- */

/* Plan the complete client message P (TYPE, TOTAL bytes). AHEAD: the
 * AHEAD_LEN bytes the client sent after it (a Parse looks at the Bind that
 * follows). The plan is s->steps, and s->fan_order when a fan must start first. */
void pgs_plan_message(pgs_session_t *s, char type, const uint8_t *p, size_t total,
                      const uint8_t *ahead, size_t ahead_len);
/* The message (TYPE) waited for a cutover hold inside a transaction (or an
 * extended unit) that stays on the map it began on, and the map has
 * changed: its plan is one error, 40001 (the client retries the
 * transaction). */
void pgs_plan_cutover_retry(pgs_session_t *s, char type, const uint8_t *p, size_t total);
/* The message is refused for going over the memory budget KEY (LIMIT
 * bytes): its plan is one error. */
void pgs_plan_over_budget(pgs_session_t *s, const char *key, long long limit);
/* What a Parse P (TYPE 'P') or Bind ('B') of TOTAL bytes would make the
 * session keep, beyond what it keeps now; 0 when nothing. */
size_t pgs_plan_cost(const pgs_session_t *s, char type, const uint8_t *p, size_t total);

/* The node a step on SLOT takes a server from. */
int pgs_session_slot_node(const pgs_session_t *s, int slot);
/* Where a session logs in (reads the server's parameters): a slot of
 * shard 0 and the node in *NODE. */
int pgs_session_login_slot(pgs_session_t *s, int *node);
/* A ReadyForQuery 'I': writes since the last one are committed (NOW_MS). */
void pgs_session_tx_done(pgs_session_t *s, uint64_t now_ms);
/* A ParameterStatus from one of the session's servers (or at login). */
void pgs_session_on_parameter_status(pgs_session_t *s, const char *name, const char *value);
/* Type the tenant a client named at startup (-c pgshard.tenant=...). */
bool pgs_session_startup_tenant(pgs_session_t *s, pgs_key_error_t *err);
/* Whether a two-phase commit is needed for writes on WRITTEN_SHARDS. */
bool pgs_session_needs_twopc(const pgs_session_t *s, uint64_t written_shards);
/* A merged read's output goes out before every part is done (rows of a
 * plain concatenation, COPY messages). */
bool pgs_plan_streams(const pgs_plan_t *plan);

/* ---- statements and portals ---- */

void pgs_session_free_stmt(void *stmt);
void pgs_set_ops_free(void *set_ops);
void pgs_session_free_portal(void *portal);
/* STMT's variant for the shards of a merged read (merge.h), built once. */
void pgs_stmt_merge_variant(pgs_client_stmt_t *stmt);
/* The next MAX_ROWS rows (0: all) of gathered PORTAL into OUT, then what
 * ends them as HOW says (pgs_fetch_t). Returns the rows handed out. */
uint64_t pgs_portal_fetch(pgs_portal_t *portal, int64_t max_rows, pgs_fetch_t how, pgs_buf_t *out);
/* PORTAL's gathered rows are ROWS, and a cursor's RowDescription HEAD
 * (NULL: none), both taken over and charged to its session. */
void pgs_portal_gathered(pgs_portal_t *portal, pgs_buf_t *rows, pgs_buf_t *head);
/* A cursor whose DECLARE failed is forgotten. */
void pgs_session_drop_cursor(pgs_session_t *s, pgs_portal_t *cursor);
/* BIND's rest after its names for the shards' variant: HIDDEN text result
 * codes in front when it has per-column codes. */
void pgs_bind_put_rest(pgs_buf_t *b, const pgs_bind_msg_t *bind, int hidden);

#endif
