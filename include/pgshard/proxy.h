/*
 * proxy.h — the proxy's runtime objects: workers, connection I/O, clients,
 * servers and pools, and the functions the proxy modules call on each other.
 *
 * Threads: the main thread owns signals and config reload; each worker owns
 * one libuv loop and every client, server and pool on it. Nothing here is
 * shared between workers except the config (immutable, refcounted) and each
 * worker's mailbox (mutex + uv_async).
 *
 * Bytes flow client.io.in -> (client.c inspects/rewrites) -> server.io out
 * batch, and server.io.in -> (server.c inspects) -> client.io out batch. Out
 * batches reference the peer's input buffer and are flushed (or copied into
 * the connection's own write buffers) before that input is compacted, so an
 * input buffer is never referenced after the batch that parsed it.
 */
#ifndef PGSHARD_PROXY_H
#define PGSHARD_PROXY_H

#include <uv.h>
#include <libpq-fe.h>

#include "pgshard/auth.h"
#include "pgshard/config.h"
#include "pgshard/copy.h"
#include "pgshard/exchange.h"
#include "pgshard/merge.h"
#include "pgshard/monitor.h"
#include "pgshard/proto.h"
#include "pgshard/route.h"
#include "pgshard/session.h"
#include "pgshard/strmap.h"

typedef struct pgs_worker pgs_worker_t;
typedef struct pgs_client pgs_client_t;
typedef struct pgs_server pgs_server_t;
typedef struct pgs_pool pgs_pool_t;

/* ---- intrusive lists ---- */
typedef struct pgs_list {
  struct pgs_list *prev, *next;
} pgs_list_t;

static inline void pgs_list_init(pgs_list_t *l) { l->prev = l->next = l; }
static inline bool pgs_list_empty(const pgs_list_t *l) { return l->next == l; }
static inline void pgs_list_append(pgs_list_t *head, pgs_list_t *node) {
  node->prev = head->prev;
  node->next = head;
  head->prev->next = node;
  head->prev = node;
}
static inline void pgs_list_remove(pgs_list_t *node) {
  node->prev->next = node->next;
  node->next->prev = node->prev;
  node->prev = node->next = node;
}
#define pgs_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Monotonic clock (io.c). */
uint64_t pgs_now_ms(void);
uint64_t pgs_now_us(void);

/* ---- connection I/O (io.c) ---- */

#define PGS_IO_MAX_SEGS 64
#define PGS_IO_READ_CHUNK 16384
#define PGS_IO_HIGH_WATER (1024 * 1024) /* queued output that pauses the source */

typedef struct pgs_io pgs_io_t;
struct pgs_io_tls; /* io.c */
struct ssl_ctx_st;
struct ssl_st;
typedef void (*pgs_io_read_cb)(pgs_io_t *io);
typedef void (*pgs_io_event_cb)(pgs_io_t *io, int status);

typedef struct pgs_io_seg {
  const uint8_t *ptr; /* NULL: scratch bytes at off */
  size_t off;
  size_t len;
} pgs_io_seg_t;

struct pgs_io {
  uv_tcp_t tcp;
  void *owner;
  pgs_buf_t in;                       /* received bytes */
  size_t in_pos;                      /* bytes of in already consumed by the owner */
  size_t in_want;                     /* total bytes the owner needs to make progress */
  size_t in_max;                      /* cap on in (largest message accepted + a read chunk) */
  pgs_io_seg_t segs[PGS_IO_MAX_SEGS]; /* this batch's output */
  int nsegs;
  pgs_buf_t scratch;                /* bytes built for this batch */
  pgs_buf_t wbuf;                   /* in flight in uv_write */
  pgs_buf_t qbuf;                   /* waiting for wbuf to finish */
  uint64_t queued_total;            /* bytes ever put in wbuf or qbuf (see pgs_io_accepted) */
  uint64_t read_total;              /* bytes ever read */
  uint64_t out_total;               /* bytes ever flushed (written or queued) */
  uint64_t counted_in, counted_out; /* of those, already in the owner's statistics */
  uv_write_t wreq;
  bool writing;
  bool reading;
  bool open; /* tcp initialised and not closing */
  bool eof;
  struct pgs_io_tls *tls;    /* NULL: plaintext (see io.c) */
  pgs_io_read_cb on_read;    /* new bytes in in */
  pgs_io_event_cb on_error;  /* read/write failure or EOF (status < 0) */
  pgs_io_read_cb on_drained; /* all queued output written */
  uv_close_cb on_close;
};

void pgs_io_init(pgs_io_t *io, void *owner, size_t in_max);
void pgs_io_free_buffers(pgs_io_t *io);
int pgs_io_start_reading(pgs_io_t *io);
void pgs_io_stop_reading(pgs_io_t *io);
/* Queue LEN bytes at PTR (which must stay valid until pgs_io_flush). */
void pgs_io_emit(pgs_io_t *io, const void *ptr, size_t len);
/* Scratch output: build into pgs_io_scratch(io) after noting
 * mark = pgs_io_scratch_mark(io), then pgs_io_scratch_done(io, mark). */
static inline pgs_buf_t *pgs_io_scratch(pgs_io_t *io) { return &io->scratch; }
static inline size_t pgs_io_scratch_mark(pgs_io_t *io) { return io->scratch.len; }
void pgs_io_scratch_done(pgs_io_t *io, size_t mark);
bool pgs_io_has_output(const pgs_io_t *io);
/* Write the batch: synchronously as far as the socket takes it, the rest
 * copied and queued. Returns 0 or a libuv error. */
int pgs_io_flush(pgs_io_t *io) PGS_MUST_USE;
/* Output queued beyond the socket: the source should pause above high water. */
size_t pgs_io_backlog(const pgs_io_t *io);
/* Bytes of the backlog the socket has taken so far (a counter): it stands
 * still while the peer reads nothing. */
uint64_t pgs_io_accepted(const pgs_io_t *io);
/* Drop consumed input (after the batch that parsed it was flushed). */
void pgs_io_compact(pgs_io_t *io);
void pgs_io_close(pgs_io_t *io);
/* What a status given to on_error means (a TLS failure's reason for
 * UV_EPROTO on a TLS connection). */
const char *pgs_io_error_text(const pgs_io_t *io, int status);
/* From now on pgshard is the TLS server of this connection (its SSLRequest
 * was answered 'S'): the handshake runs on what is read next, then the
 * owner reads and writes plaintext as before. 0 or a libuv error. */
int pgs_io_tls_accept(pgs_io_t *io, struct ssl_ctx_st *ctx) PGS_MUST_USE;
/* Carry on SSL, the session libpq established at login on this
 * connection's socket (io's tcp is a dup of it). SSL stays libpq's:
 * pgs_io_tls_release gives it back before PQfinish. 0 or a libuv error. */
int pgs_io_tls_adopt(pgs_io_t *io, struct ssl_st *ssl) PGS_MUST_USE;
void pgs_io_tls_release(pgs_io_t *io);
/* TLS is on and its handshake done. */
bool pgs_io_tls_active(const pgs_io_t *io);
/* The SSL of a connection pgshard accepted TLS on, else NULL. */
struct ssl_st *pgs_io_tls_session(const pgs_io_t *io);

/* ---- clients (client.c) ---- */

#define PGS_CLIENT_MAX_STATEMENTS 10000 /* prepared statements one client may keep */
#define PGS_REQUEST_TEXT_MAX 200        /* bytes of a statement the slow-request log shows */

typedef enum {
  PGS_CL_STARTUP, /* reading the startup packet (maybe after SSLRequest) */
  PGS_CL_AUTH,    /* password exchange in progress */
  PGS_CL_LOGIN,   /* authenticated; in pool->waiters until the pool knows the
                      server's parameters */
  PGS_CL_IDLE,    /* logged in, no server linked */
  PGS_CL_WAITING, /* in pool->waiters for a server */
  PGS_CL_ACTIVE,  /* linked to client->server */
  PGS_CL_CLOSING, /* handles closing; in worker->closing */
} pgs_client_state_t;

typedef struct pgs_setting {
  char name[PGS_MAX_NAME];
  char *sql;    /* statement that establishes it */
  char *value;  /* its value when one constant (startup parameters: as sent), else NULL */
  bool startup; /* from the startup packet: survives RESET ALL */
} pgs_setting_t;

typedef struct pgs_client_stmt {
  char server_name[24]; /* "pgs_<16 hex>": same text+types, same name */
  pgs_buf_t parse_body; /* Parse body after the statement name */
  /* Routing only: the analysed statement, its literals and declared types. */
  pgs_plan_t *plan;
  pgs_lexed_t *lx;
  uint32_t *type_oids;
  int ntypes;
  bool drops_prepared; /* DISCARD ALL / DEALLOCATE ALL */
  /* A read that may run on several shards: the shards' variant of the
   * statement (merge.h: hidden columns, LIMIT pushed down), prepared under
   * its own name; built at the first merged Bind. */
  char merge_name[24];
  pgs_buf_t merge_body;
  /* Bytes charged to the client's memory (max_client_memory), given back
   * when the statement is freed. */
  struct pgs_client *owner;
  size_t charged;
} pgs_client_stmt_t;

/* One thing to do for a client message (request.c): send something to one
 * shard's server, or reply to the client without a server. A message that
 * needs several (a fan-out, a Sync closing several servers) becomes several
 * steps, run in order; a step for another server than the last one waits
 * until every other server has answered, so replies reach the client in
 * request order. */
typedef enum {
  PGS_STEP_FORWARD,  /* the client's message, to shard (statement names mapped) */
  PGS_STEP_PARSE,    /* the client's Parse: prepare stmt on shard, visibly */
  PGS_STEP_QUERY,    /* a Query with text */
  PGS_STEP_EXEC_SQL, /* text through Parse/Bind/Execute of the unnamed statement */
  PGS_STEP_SYNC,     /* Sync (internal: its ReadyForQuery is not the client's) */
  PGS_STEP_REPLY,    /* reply made up by pgshard: type `reply`, 'C' with tag text */
  PGS_STEP_ERROR,    /* ErrorResponse made up by pgshard: text "SQLSTATE\0message" */
  PGS_STEP_FAN_EXEC, /* a merged portal's part: Describe (for the merge) + Execute */
  PGS_STEP_INJECT,   /* text as pgshard's own statement (replies swallowed
                        unless its rule says otherwise) */
  PGS_STEP_TWOPC,    /* a two-phase commit phase (`phase`), run when the servers
                        have answered: it plans the steps that follow */
} pgs_step_op_t;

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
  int16_t shard;  /* slot (see pgs_client_t), -1: no server */
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
  bool gid;             /* INJECT: names the client's 2PC gid (PREPARE TRANSACTION,
                      COMMIT or ROLLBACK PREPARED) */
  char *text;
  struct pgs_client_stmt *stmt;
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
  char *sql;              /* local portals: the statement */
  pgs_plan_t *merge_plan; /* merged over several shards: the plan (ref), its spec */
  int64_t limit, offset;  /* the Bind's LIMIT/OFFSET values for the merge */
  /* Merged: the Bind went to one part (its reply is the client's); the
   * others get it with their Execute, inside the fan, so the Bind costs no
   * round trip. What they are sent: the shards' statement (name, Parse
   * body) and Bind, copied (the client may close the statement first). */
  uint64_t unbound;
  char merge_name[24];
  pgs_buf_t merge_body;
  pgs_buf_t merge_bind;
  struct pgs_client *owner; /* charged `charged` bytes of its memory */
  size_t charged;
} pgs_portal_t;

/* A read running on several shards at once, its rows merged (fanout.c).
 * Replies of its parts never reach the client directly: pgs_fan_reply
 * decides, and when the last part has finished the merged result goes
 * out. Steps after it wait until then. */
typedef struct pgs_fan {
  pgs_plan_t *plan; /* ref: the spec is plan->merge */
  pgs_merge_t *merge;
  uint64_t slots;          /* slots running a part */
  uint64_t done;           /* parts finished */
  bool simple;             /* Query: a part ends at ReadyForQuery */
  bool copy;               /* COPY: "COPY n" tags summed */
  bool copy_in;            /* COPY ... FROM STDIN: the client's CopyData split or copied */
  pgs_copy_split_t *split; /* into a sharded table: rows by key (else every row everywhere) */
  pgs_buf_t *batch;        /* per slot: rows of the current CopyData for its shard */
  uint64_t copy_shards;    /* shards that got rows */
  uint64_t copy_ended;     /* parts whose COPY ended (CommandComplete or error) */
  bool own_tx;             /* COPY FROM outside a transaction: each part in one of
                          pgshard's, ended when every part is (fan_settle), so
                          that a shard's error leaves no other shard's rows */
  bool sent_head;          /* RowDescription / CopyOutResponse went out */
  bool streams;            /* output goes out before every part is done: rows of a
                          plain concatenation, COPY messages */
  bool synced;             /* extended: the unit's Sync went out while the parts
                          run, so a failure has nothing left to skip */
  bool skipped;            /* extended: a part's messages were skipped after an
                          earlier error of the unit (which went out): the fan
                          reports nothing, as PostgreSQL would */
  uint64_t copy_rows;
  pgs_buf_t head;  /* a Query's RowDescription for the client, held with
                          the rows when they go out at the end (one write) */
  pgs_buf_t error; /* the first ErrorResponse of a part (whole message) */
  bool own_error;  /* ... made by pgshard (the merge failed), not a server */
  pgs_client_t *owner;
  size_t charged; /* the merge's rows, charged to the owner's memory */
} pgs_fan_t;

typedef enum {
  PGS_FAN_DROP,    /* swallowed (kept by the merge, or not the client's) */
  PGS_FAN_FORWARD, /* to the client as it is */
  PGS_FAN_READY,   /* the last part's ReadyForQuery: the merged result is out */
} pgs_fan_action_t;

/* A two-phase commit in progress (cross_shard_writes = 2pc, coordinator.c). */
typedef struct pgs_twopc {
  char gid[64];     /* PGS_GID_BUF (twophase.h); empty: none */
  uint64_t slots;   /* slots of the transaction */
  uint64_t written; /* of those, the ones that prepare */
  bool simple;      /* a simple Query: pgshard sends the ReadyForQuery */
  bool tag;         /* the client said COMMIT: answer "COMMIT" */
} pgs_twopc_t;

struct pgs_client {
  pgs_list_t link;      /* worker->clients or worker->closing */
  pgs_list_t wait_link; /* pool->waiters */
  pgs_worker_t *worker;
  pgs_client_state_t state;
  pgs_io_t io;
  pgs_exchange_t ex;    /* its request and transaction states, and the reply
                           bookkeeping of the message served (exchange.h) */
  pgs_config_t *config; /* ref taken at login */
  const pgs_user_t *user;
  const pgs_database_t *db;
  struct pgs_db_stats *stats; /* its database's counters on its worker (NULL before login) */
  uint64_t request_start_us;  /* first message of the request being served, 0: none */
  bool request_failed;        /* an error went to the client during that request */
  uint64_t request_id;        /* the request's number on its worker (logs: "c<client>.<n>") */
  uint64_t request_slots;     /* slots it sent messages to */
  char *request_text;         /* its first statement, cut at REQUEST_TEXT_MAX - 1 bytes (the
                                 slow-request log; allocated while that log is on) */
  uint64_t request_query;     /* routing: the hash of its statement's normalised text, 0: none
                                 (its entry in worker->queries holds the text) */
  bool admin;                 /* a client of the admin console (admin.c) */
  struct pgs_admin_session *admin_session;
  char username[PGS_MAX_NAME];
  char dbname[PGS_MAX_NAME];
  char peer[64];
  pgs_pool_t *pool;
  pgs_server_t *server;
  int32_t cancel_pid;
  int32_t cancel_key;
  uint64_t created_ms;
  uint64_t wait_start_ms;
  uint64_t active_ms; /* it sent bytes or was sent a ReadyForQuery (idle timeouts) */
  /* Memory held for it (max_client_memory): statements, portals, merge rows,
   * counted where they are made and freed. Its unsent output is
   * io's backlog. While that backlog is over the budget: the unsent bytes
   * seen last and since when they have not gone down. */
  size_t mem_held;
  uint64_t stall_accepted;
  uint64_t stall_since_ms;
  /* auth */
  struct pgs_param *login_values; /* LOGIN: values read from the server */
  int nlogin_values;              /* entries allocated in login_values */
  uint8_t md5_salt[4];
  pgs_scram_t *scram;
  /* session state */
  pgs_setting_t *settings;
  int nsettings;
  uint64_t settings_hash;                   /* 0: no settings */
  pgs_set_op_t tx_ops[PGS_SESSION_MAX_OPS]; /* SET/RESET awaiting commit */
  int ntx_ops;
  bool tx_failed;        /* the transaction holding tx_ops failed or rolled back */
  bool pinned;           /* session state that cannot move: keep the server */
  bool paused;           /* its database is paused (admin PAUSE): it waits, not read,
                      before its next transaction until RESUME */
  bool temp;             /* made temporary objects: its servers are closed, not reused */
  char *startup_options; /* session pooling: startup parameters as libpq options
                            ("-c name=value ..."), given to its servers at login */
  char txstatus;         /* last ReadyForQuery status sent */
  pgs_strmap_t stmts;    /* client statement name -> pgs_client_stmt_t */
  int pending_closes;
  /* routing (request.c) */
  bool routing; /* analyse and route (several shards, or a tenant) */
  bool scs_off; /* a server said standard_conforming_strings is off */
  /* A slot per shard and role: 2 * shard for the shard's writer, 2 * shard
   * + 1 for one of its replicas. Steps, servers and the masks below are by
   * slot. */
  int nslots;
  pgs_server_t **servers; /* per slot: linked server or NULL */
  pgs_pool_t **pools;     /* per shard node (shard * pool_stride + node), on first use */
  int pool_stride;
  int cur;               /* slot of client->server, -1 none */
  int want_slot;         /* the slot it waits for a server for */
  pgs_pool_t *wait_pool; /* the pool it waits in */
  int want_node;
  int last_shard;     /* where the last routed statement went */
  uint64_t unit_mask; /* slots sent extended messages since the last Sync */
  uint64_t tx_mask;   /* slots the transaction has begun on */
  bool tx_read_only;  /* BEGIN READ ONLY: replicas may serve it */
  uint64_t tx_wrote;  /* shards written since the last ReadyForQuery 'I' */
  /* read-your-writes */
  bool wrote_ever;
  uint64_t last_write_ms;
  uint64_t *ryw_commit_ms; /* per shard: when a write there committed, 0 when known */
  uint64_t *ryw_lsn;       /* per shard: the LSN replicas must have replayed */
  int route_pref;          /* SET pgshard.route: 0 auto, 1 primary, 2 replica */
  int8_t *picked;          /* per shard: the replica node chosen for its replica slot */
  int ryw_pref;            /* SET pgshard.read_your_writes: -1 the database's, else pgs_ryw_t */
  int tx_write_shard;      /* the shard this transaction wrote on, -1 */
  char *begin_sql;         /* how the client began it, replayed on each shard */
  /* Its SET [LOCAL], RESET and savepoints so far, "...;" each, replayed
   * after begin_sql on each shard it reaches later; the statement being
   * run is added once its steps are done (tx_replay_next). */
  pgs_buf_t tx_replay;
  char *tx_replay_next;
  int hint_shard;       /* SET pgshard.shard, -1 */
  pgs_key_t *tenant;    /* SET pgshard.tenant / -c pgshard.tenant */
  char *startup_tenant; /* -c pgshard.tenant until login types it */
  char *tenant_text;    /* the tenant as set, typed again after a reload */
  pgs_step_t *steps;
  int nsteps, step_next, steps_cap;
  pgs_strmap_t portals; /* portal name -> pgs_portal_t */
  pgs_lexed_t lx;       /* lexer scratch for simple queries */
  int *row_shard;       /* route scratch */
  int row_shard_cap;
  pgs_fan_t *fan;          /* a merged read in flight */
  pgs_twopc_t twopc;       /* a two-phase commit in progress (coordinator.c) */
  const uint8_t **pv_data; /* Bind parameter scratch */
  int32_t *pv_len;
  int16_t *pv_fmt;
  int pv_cap;
};

pgs_client_t *pgs_client_accept(pgs_worker_t *worker, uv_stream_t *listener);
/* The one error path: FATAL ErrorResponse with SQLSTATE, then close. */
PGS_PRINTF(3, 4)
void pgs_client_fail(pgs_client_t *client, const char *sqlstate, const char *fmt, ...);
/* Refuse the client's current request (up to its Sync) with an ERROR, keep
 * the session. */
PGS_PRINTF(3, 4)
void pgs_client_refuse(pgs_client_t *client, const char *sqlstate, const char *fmt, ...);
/* A server for it from the pool it waited in. */
void pgs_client_on_server(pgs_client_t *client, pgs_server_t *server);
/* The admin console (admin.c): a client of the database "pgshard". */
void pgs_admin_login(pgs_client_t *client);
void pgs_admin_process(pgs_client_t *client);
void pgs_admin_free(pgs_client_t *client);
void pgs_client_process(pgs_client_t *client);
/* The next whole message at the client's in_pos: PGS_OK with *TYPE and
 * *TOTAL; PGS_EAGAIN when more bytes are needed (in_want set); PGS_EPROTO
 * when it is malformed or too big (the client was failed). */
pgs_status_t pgs_client_next_message(pgs_client_t *client, char *type, size_t *total);
void pgs_client_server_lost(pgs_client_t *client, const char *why);
/* The server of SLOT died with READIES ReadyForQuery owed (OPEN_UNIT: and
 * a unit without its Sync): a replica outside a transaction costs the
 * client an ERROR per request, not the session. */
void pgs_client_server_lost_at(pgs_client_t *client, int slot, int readies, bool open_unit,
                               const char *why);
void pgs_client_after_ready(pgs_client_t *client, char status);
void pgs_client_on_server_message(pgs_client_t *client, char type, const uint8_t *body, size_t len);
void pgs_client_on_login_row(pgs_client_t *client, const uint8_t *body, size_t len);
/* An ErrorResponse (BODY) went to the client: its SQLSTATE class counted. */
void pgs_client_count_error(pgs_client_t *client, const uint8_t *body, size_t len);
void pgs_client_login_done(pgs_client_t *client);
void pgs_client_close(pgs_client_t *client);
void pgs_client_cancel(pgs_client_t *client);
/* Memory held for a client (statements, portals, merge rows): N bytes more
 * or fewer, in its count and the process's. */
void pgs_client_mem_add(pgs_client_t *client, size_t n);
void pgs_client_mem_sub(pgs_client_t *client, size_t n);
/* NULL when N more bytes fit the client's budget (its unsent output
 * counted) and the process's; else the config key that refuses them. */
const char *pgs_client_mem_refuses(const pgs_client_t *client, size_t n);
/* Worker tick: close the client if it has been idle too long, or has not
 * read any of an output backlog over its budget for a while. NOW in ms. */
void pgs_client_tick(pgs_client_t *client, uint64_t now);
/* state.c: the client's request, unit and transaction states (exchange.h)
 * change only through these: checked against the engine's tables, logged. */
void pgs_state_set_request(pgs_client_t *client, pgs_req_state_t to);
void pgs_state_set_unit(pgs_client_t *client, pgs_unit_state_t to);
void pgs_state_set_tx(pgs_client_t *client, pgs_tx_state_t to);
/* A statement failed or was refused in the client's open transaction:
 * only its end is taken now. */
void pgs_state_tx_failed(pgs_client_t *client);
/* A reply the client waited for came: true when it was waiting (draining
 * or held), and the caller processes it again. */
bool pgs_state_resume(pgs_client_t *client);
/* The message at the client's read position is planned. */
static inline bool pgs_state_planned(const pgs_client_t *client) {
  return client->ex.req == PGS_REQ_RUNNING || client->ex.req == PGS_REQ_DRAINING;
}
/* An ErrorResponse went to the client during this message. */
void pgs_state_message_failed(pgs_client_t *client);
/* steps.c: a message's plan. A step for SHARD (a slot, -1: no server);
 * its node is -1 (placed when it runs) unless the planner sets it. */
pgs_step_t *pgs_steps_add(pgs_client_t *client, int shard, pgs_step_op_t op, pgs_placed_t placed);
/* A reply pgshard makes itself: REPLY's type, TAG for CommandComplete. */
void pgs_steps_reply(pgs_client_t *client, char reply, const char *tag);
/* An ErrorResponse pgshard makes ("pgshard: " and the message); the
 * transaction, if open, is aborted. */
PGS_PRINTF(3, 4)
void pgs_steps_error(pgs_client_t *client, const char *sqlstate, const char *fmt, ...);
/* TEXT as pgshard's own statement on SLOT (EXTENDED: inside an extended
 * unit, with a Sync of its own); RULE: what becomes of its replies. */
void pgs_steps_inject(pgs_client_t *client, int slot, const char *text, pgs_reply_rule_t rule,
                      bool extended);
/* Forget the planned steps of the message at in_pos. */
void pgs_steps_clear(pgs_client_t *client);
/* coordinator.c: two-phase commits. Whether committing writes on
 * WRITTEN_SHARDS takes two phases (cross_shard_writes = 2pc, several). */
bool pgs_coordinator_needed(const pgs_client_t *client, uint64_t written_shards);
/* Commit SLOTS (WRITTEN of them wrote) in two phases: a gid, then the
 * PREPARE phase as a step. SIMPLE: a simple Query (pgshard sends its
 * ReadyForQuery); TAG: the client said COMMIT (answer "COMMIT"). */
void pgs_coordinator_begin(pgs_client_t *client, uint64_t slots, uint64_t written, bool simple,
                           bool tag);
/* Run PHASE (a TWOPC step, once every server has answered the steps
 * before it): it plans the steps that follow. */
void pgs_coordinator_run(pgs_client_t *client, pgs_twopc_phase_t phase);
/* The client goes away in the middle of a two-phase commit it will not
 * finish: the gid is recovery's. */
void pgs_coordinator_abandon(pgs_client_t *client);
/* request.c */
void pgs_client_routing_init(pgs_client_t *client);
void pgs_client_routing_free(pgs_client_t *client);
/* A reload happened (client->config is not the worker's): move the client
 * to the running config if it is between transactions with nothing in
 * flight; otherwise it stays on its own until such a point. Returns false
 * when the client was closed (its database or user is no longer
 * configured, or its tenant or shard hint cannot be placed in the new map). */
bool pgs_client_follow_config(pgs_client_t *client);
/* Between transactions with nothing in flight (where a reload is followed
 * and a PAUSE holds a client). */
bool pgs_client_between_transactions(const pgs_client_t *client);
void pgs_client_unlink(pgs_client_t *client, pgs_server_t *server);
/* The ReadyForQuery status the client is told: its transaction over every
 * shard (a failed one anywhere: 'E'; open anywhere: 'T'). */
char pgs_client_ready_status(const pgs_client_t *client);
/* ReadyForQuery with that status, made by pgshard, and what follows it. */
void pgs_client_send_ready(pgs_client_t *client);
void pgs_client_free_stmt(void *stmt);
/* Where a client logs in (reads the server's parameters): a slot of shard
 * 0 and the node in *NODE. */
int pgs_client_login_slot(pgs_client_t *client, int *node);
/* A ReadyForQuery 'I': writes since the last one are committed (read-your-writes). */
void pgs_client_tx_done(pgs_client_t *client);
/* fanout.c */
pgs_fan_t *pgs_fan_start(pgs_client_t *client, pgs_plan_t *plan, uint64_t slots, int64_t limit,
                         int64_t offset, bool simple);
void pgs_fan_free(pgs_fan_t *fan);
/* A reply (whole message M of TOTAL bytes) from the server in SLOT to a
 * part of the client's fan. */
pgs_fan_action_t pgs_fan_reply(pgs_client_t *client, int slot, char type, const uint8_t *m,
                               size_t total);
/* COPY ... FROM STDIN on every shard of SLOTS: the fan takes the client's
 * CopyData, CopyDone and CopyFail (pgs_fan_copy_message) until it ends.
 * OWN_TX: each part runs in a transaction the caller began on its server,
 * committed when every part succeeded, else rolled back. */
pgs_fan_t *pgs_fan_start_copy_in(pgs_client_t *client, pgs_plan_t *plan, uint64_t slots,
                                 const pgs_copy_spec_t *spec, const pgs_route_session_t *session,
                                 bool own_tx, pgs_key_error_t *err);
/* One of the client's COPY messages (P, TOTAL bytes) while a COPY FROM
 * fan runs: split, copied or dropped (after a failure). */
void pgs_fan_copy_message(pgs_client_t *client, char type, const uint8_t *p, size_t total);
/* The server of SLOT, running a part, was lost: the statement fails. */
void pgs_fan_part_lost(pgs_client_t *client, int slot, const char *why);
/* The parts of SLOTS got no server (connect refused, pool timeout) and
 * were never sent: the statement fails with SQLSTATE/WHY, and ends when
 * the parts that were sent have answered. */
void pgs_fan_parts_unserved(pgs_client_t *client, uint64_t slots, const char *sqlstate,
                            const char *why);
/* A client waiting for a server for a part of its fan was refused one:
 * handled as the fan's failure (true), or not a fan part (false). */
bool pgs_request_fan_unserved(pgs_client_t *client, const char *sqlstate, const char *why);
/* An error of an earlier message of the unit (already the client's) made
 * the server of SLOT skip its part: the fan reports nothing. */
void pgs_fan_part_skipped(pgs_client_t *client, int slot);
/* Give every server back when the client is between transactions. */
bool pgs_client_maybe_release(pgs_client_t *client);
/* A ParameterStatus from one of the client's servers (or at login). */
void pgs_request_on_parameter_status(pgs_client_t *client, const char *name, const char *value);
/* Type the tenant a client named at startup (-c pgshard.tenant=...). */
bool pgs_client_startup_tenant(pgs_client_t *client, pgs_key_error_t *err);

/* ---- servers (server.c) ---- */

typedef enum {
  PGS_SV_CONNECTING, /* libpq handshake; pool->connecting */
  PGS_SV_IDLE,       /* logged in, no client; pool->idle */
  PGS_SV_ACTIVE,     /* linked to server->client; pool->active */
  PGS_SV_RESETTING,  /* no client, running DISCARD ALL; pool->active */
  PGS_SV_CLOSING,    /* handles closing; worker->closing */
} pgs_server_state_t;

struct pgs_server {
  pgs_list_t link; /* pool list for its state, or worker->closing */
  pgs_worker_t *worker;
  pgs_pool_t *pool;
  pgs_server_state_t state;
  PGconn *pg;
  uv_poll_t *poll; /* during the libpq handshake, on poll_fd (a new handle
                       when libpq moves to another socket) */
  int poll_fd;
  pgs_io_t io; /* after login, on a dup of libpq's socket */
  pgs_client_t *client;
  pgs_replies_t replies; /* what it owes, in order (exchange.h) */
  pgs_strmap_t prepared; /* server statement names prepared on it */
  char **prepared_order; /* FIFO for eviction */
  size_t prepared_head, prepared_count;
  uint64_t settings_hash;
  char txstatus;
  bool dirty;             /* never reuse: close at release */
  bool needs_discard;     /* run DISCARD ALL before reuse */
  bool need_flush;        /* extended messages sent since the last Sync/Flush */
  uint64_t unnamed_owner; /* the client whose unnamed statement it holds (request.c) */
  bool login_scs_off;     /* logged in with standard_conforming_strings off */
  char gid[64];           /* PGS_GID_BUF: the 2PC gid its last statement naming
                             one named (request.c) */
  bool gid_prepared;      /* ... and its PREPARE TRANSACTION succeeded */
  bool gid_held;          /* settling gid for a client that left: recovery
                             waits for it (pgs_twophase_hold) */
  int shard;              /* the client's slot it is linked as */
  uint64_t state_since_ms;
  uint64_t born_ms; /* when it was opened (server_lifetime_ms) */
  int32_t backend_pid;
  int pending_closes;
  char last_error[256];
};

#define PGS_SERVER_MAX_PREPARED 2048

/* What the client a server is linked to hears from it (PgBouncer's sbuf
 * callbacks are the model): server.c calls nothing above it. request.c
 * provides them (pgs_request_server_owner), the worker registers them. */
typedef struct pgs_server_owner {
  /* The client's reply bookkeeping, for the verdicts (exchange.h). */
  pgs_exchange_t *(*exchange)(pgs_client_t *client);
  /* A reply (message M of TOTAL bytes, TYPE) and its verdict V; what the
   * verdict meant for the server is done. */
  void (*reply)(pgs_client_t *client, pgs_server_t *server, const pgs_verdict_t *v, char type,
                const uint8_t *m, size_t total);
  /* A reply pgshard makes itself for the server ('1' ParseComplete, '3'
   * CloseComplete), in its place among the replies. */
  void (*synthetic)(pgs_client_t *client, char type);
  /* The client's output is over its high water mark: stop reading. */
  bool (*backlogged)(const pgs_client_t *client);
  /* Write the client's output; false when the client went away. */
  bool (*flush)(pgs_client_t *client);
  /* Every reply read so far is handled (release, or go on). */
  void (*settled)(pgs_client_t *client);
  /* The server's output was written: the client may send more. */
  void (*drained)(pgs_client_t *client);
  /* The server closes: it is the client's no more. */
  void (*unlink)(pgs_client_t *client, pgs_server_t *server);
  /* The server of SLOT was lost with READIES ReadyForQuery owed (OPEN_UNIT:
   * and a unit without its Sync); SLOT -1: by a protocol error. */
  void (*lost)(pgs_client_t *client, int slot, int readies, bool open_unit, const char *why);
} pgs_server_owner_t;

void pgs_server_set_owner(const pgs_server_owner_t *owner);

/* What a server's pool hears from it (pool.c provides them). */
typedef struct pgs_server_pool_ops {
  /* The state setter (the pool keeps a list per state). */
  void (*set_state)(pgs_server_t *server, pgs_server_state_t state);
  /* Logged in and ready for clients. */
  void (*connected)(pgs_server_t *server);
  /* Login failed (ERROR: why). */
  void (*failed)(pgs_server_t *server, const char *error);
  /* Free again (a reset ended well): to the next waiter or idle. */
  void (*free)(pgs_server_t *server);
} pgs_server_pool_ops_t;

void pgs_server_set_pool_ops(const pgs_server_pool_ops_t *ops);
/* The client side of servers (request.c). */
extern const pgs_server_owner_t pgs_request_server_owner;

void pgs_server_connect(pgs_pool_t *pool);
/* Append pgshard's own simple query; RULE (made internal) says what
 * becomes of its replies. */
void pgs_server_inject_query(pgs_server_t *server, const char *sql, pgs_reply_rule_t rule);
/* ... one whose row holds a logging-in client's parameter values. */
void pgs_server_inject_capture(pgs_server_t *server, const char *sql);
/* Note a reply the server owes for what it was just sent (STMT: a Parse's
 * server statement name). */
void pgs_server_expect(pgs_server_t *server, pgs_expect_kind_t kind, pgs_reply_rule_t rule,
                       const char *stmt);
bool pgs_server_expect_idle(const pgs_server_t *server);
/* Synthetic replies at the head of the queue are emitted to the client. */
void pgs_server_emit_synthetic(pgs_server_t *server);
bool pgs_server_has_prepared(pgs_server_t *server, const char *name);
void pgs_server_add_prepared(pgs_server_t *server, const char *name);
void pgs_server_forget_prepared(pgs_server_t *server);
void pgs_server_process(pgs_server_t *server);
void pgs_server_close(pgs_server_t *server, const char *why);
/* Send the server a CancelRequest when it has requests in flight (WHY for
 * the log). It is not reused after: the cancel may land after its
 * statement ended. */
void pgs_server_cancel(pgs_server_t *server, const char *why);
int pgs_server_flush(pgs_server_t *server) PGS_MUST_USE;

/* ---- pools (pool.c) ---- */

typedef struct pgs_param {
  char name[PGS_MAX_NAME];
  char value[256];
} pgs_param_t;

#define PGS_MAX_WELCOME_PARAMS 24
#define PGS_POOL_WELCOME_CACHE 16

/* The parameter values a client with given startup settings is told at
 * login, as PostgreSQL reports them (read from a server once per settings
 * combination: "ISO,DMY" is reported as "ISO, DMY"). */
typedef struct pgs_welcome {
  uint64_t settings_hash;
  pgs_param_t params[PGS_MAX_WELCOME_PARAMS];
} pgs_welcome_t;

struct pgs_pool {
  pgs_list_t link; /* worker->pools */
  pgs_worker_t *worker;
  char dbname[PGS_MAX_NAME];
  char username[PGS_MAX_NAME];
  char shard[PGS_MAX_NAME]; /* by name: shard indexes may change on reload */
  char *node_conninfo;      /* the node as the config writes it: identifies it */
  int node;                 /* 0: the shard's configured primary, i: replica i - 1 */
  bool node_up;             /* as the last health snapshot says */
  bool gone;                /* the running config no longer has this node or user: only
                     clients still on an older config use it, and a server
                     nobody waits for is closed when freed */
  uint32_t down_epoch;
  char *conninfo; /* conninfo handed to libpq */
  /* Session pooling: the startup parameters its clients sent, as libpq
   * options; part of the pool's key (NULL: none). Pools of one node that
   * differ only by these are siblings, and pool_size counts their servers
   * together (has_siblings). */
  char *startup_options;
  bool has_siblings;
  pgs_pool_mode_t mode;
  int size; /* this worker's share of pool_size */
  pgs_list_t idle, active, connecting, waiters;
  int nidle, nactive, nconnecting, nwaiters;
  pgs_param_t params[PGS_MAX_WELCOME_PARAMS];
  int nparams;
  bool have_params;
  pgs_welcome_t welcome[PGS_POOL_WELCOME_CACHE];
  int nwelcome;
  int welcome_next; /* slot replaced next when full */
  uint64_t last_failure_ms;
  char last_error[256];
};

/* What a client waiting in a pool hears from it (client.c provides them):
 * a server linked to it, or none (SQLSTATE, MESSAGE: at login the client
 * fails, later its request is refused). */
typedef struct pgs_pool_waiter_ops {
  void (*served)(pgs_client_t *client, pgs_server_t *server);
  void (*unserved)(pgs_client_t *client, const char *sqlstate, const char *message);
} pgs_pool_waiter_ops_t;

void pgs_pool_set_waiter_ops(const pgs_pool_waiter_ops_t *ops);
/* The pool side of servers (pool.c), and the client side of pools
 * (client.c). */
extern const pgs_server_pool_ops_t pgs_pool_server_ops;
extern const pgs_pool_waiter_ops_t pgs_client_waiter_ops;

/* The pool for a node of SHARD of DB (a database of CONFIG, the client's
 * config, which may be older than the worker's); STARTUP_OPTIONS: see
 * pgs_pool_t (NULL or the client's startup_options). */
pgs_pool_t *pgs_pool_get(pgs_worker_t *worker, const pgs_config_t *config, const pgs_database_t *db,
                         const pgs_user_t *user, int shard, int node, const char *startup_options);
/* A new health snapshot: drop idle servers of a node marked down since. */
void pgs_pool_apply_health(pgs_pool_t *pool, const pgs_snapshot_t *snapshot);
/* Ask for a server for CLIENT: linked now (pgs_client_on_server) or queued. */
void pgs_pool_request(pgs_pool_t *pool, pgs_client_t *client);
void pgs_pool_cancel_wait(pgs_pool_t *pool, pgs_client_t *client);
/* A server is free: hand it to the next waiter or park it idle. */
void pgs_pool_server_free(pgs_pool_t *pool, pgs_server_t *server);
void pgs_pool_server_connected(pgs_pool_t *pool, pgs_server_t *server);
void pgs_pool_server_failed(pgs_pool_t *pool, pgs_server_t *server, const char *error);
void pgs_pool_set_state(pgs_server_t *server, pgs_server_state_t state);
void pgs_pool_tick(pgs_pool_t *pool, uint64_t now);
void pgs_pool_apply_config(pgs_pool_t *pool, const pgs_config_t *config);
int pgs_pool_share(int pool_size, int workers, int index);
void pgs_pool_destroy(pgs_pool_t *pool);

/* ---- workers (worker.c) ---- */

#define PGS_WORKER_PLANS 4096 /* analysed statements cached per worker */

/* Work another thread hands a worker: run on the worker's thread. */
typedef void (*pgs_worker_fn)(pgs_worker_t *worker, void *arg);
typedef struct pgs_worker_task {
  struct pgs_worker_task *next;
  pgs_worker_fn run;
  void *arg;
} pgs_worker_task_t;

struct pgs_worker {
  int index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_tcp_t listener;
  int listen_fd;
  bool listening;
  uv_async_t wakeup;
  uv_timer_t tick;
  uv_tcp_t metrics; /* worker 0: the metrics_listen socket (metrics.c) */
  bool metrics_on;
  pgs_config_t *config;
  pgs_list_t clients;
  pgs_list_t closing;
  pgs_list_t pools;
  struct pgs_plan_cache *plans; /* plans for clients on this config */
  pgs_snapshot_t *snapshot;     /* node health, from the monitor */
  uint32_t rr;                  /* round robin over replicas */
  int nclients;
  uint32_t next_client;
  uint64_t next_request;
  uint64_t slow_logged_second; /* log_min_duration_ms: lines this second, for the cap */
  int slow_logged;
  int slow_suppressed;
  bool draining;
  bool stopping;
  uint64_t drain_deadline_ms;
  /* mailbox, filled by other threads */
  uv_mutex_t mbox_lock;
  pgs_config_t *mbox_config;
  pgs_snapshot_t *mbox_snapshot;
  bool mbox_closed; /* wakeup is closing: post nothing more */
  bool mbox_drain;
  bool mbox_exit;
  struct {
    int32_t pid, key;
  } mbox_cancels[64];
  int mbox_ncancels;
  pgs_worker_task_t *mbox_tasks; /* in the order posted */
  pgs_worker_task_t **mbox_tasks_tail;
  /* what it counts (stats.h), per database, for the admin console and
   * /metrics: touched by this worker only */
  struct pgs_db_stats **stats; /* each allocated once: clients keep pointers */
  int nstats;
  struct pgs_query_table *queries; /* SHOW QUERIES (allocated on first use) */
};

int pgs_workers_start(pgs_config_t *config, int *listen_fds, int nfds) PGS_MUST_USE;
void pgs_workers_reload(pgs_config_t *config);
/* Hand SNAPSHOT to every worker (each takes a reference). */
void pgs_workers_publish(pgs_snapshot_t *snapshot);
void pgs_workers_drain(void);
void pgs_workers_exit(void);
void pgs_workers_join(void);
int pgs_workers_running(void);
/* Route a CancelRequest to the worker that owns PID. */
void pgs_workers_cancel(int32_t pid, int32_t key);
int pgs_worker_index_of_pid(int32_t pid);
int pgs_workers_count(void);
/* Admin PAUSE / RESUME of database DB (NULL: every database): a client of
 * a paused database waits before its next transaction. pgs_paused is cheap
 * when nothing is paused. RESUME wakes every worker's waiting clients. */
/* False when too many databases are paused already. */
bool pgs_pause_set(const char *db, bool paused);
bool pgs_paused(const char *db);
/* Serve GET /metrics at ADDRESS (HOST:PORT) on WORKER's loop (metrics.c). */
int pgs_metrics_start(pgs_worker_t *worker, uv_tcp_t *listener, const char *address);
/* Run FN(worker, ARG) on worker INDEX's thread. False when that worker no
 * longer takes work (it is stopping): FN will not run. */
bool pgs_worker_post(int index, pgs_worker_fn fn, void *arg);
/* Asking workers for parts of an answer (gather.c): PART(worker, buffer,
 * WHAT, PARAM) runs on every worker's thread (ONLY >= 0: that worker's
 * alone), each filling its own buffer; then DONE(gather, OWNER) runs on
 * HOME's thread with every part, unless the owner cancelled first (then
 * never). The gather is freed after DONE returns or at the cancel. */
typedef struct pgs_gather pgs_gather_t;
typedef void (*pgs_gather_part_fn)(pgs_worker_t *worker, pgs_buf_t *part, int what, int64_t param);
typedef void (*pgs_gather_done_fn)(pgs_gather_t *gather, void *owner);
pgs_gather_t *pgs_gather_start(pgs_worker_t *home, int only, int what, int64_t param,
                               pgs_gather_part_fn part, pgs_gather_done_fn done, void *owner);
void pgs_gather_cancel(pgs_gather_t *gather);
int pgs_gather_nparts(const pgs_gather_t *gather);
const pgs_buf_t *pgs_gather_part(const pgs_gather_t *gather, int i);
/* This worker's counters for database DB (made on first use). */
struct pgs_db_stats *pgs_worker_stats(pgs_worker_t *worker, const char *db);

#endif
