/*
 * proxy.h — the proxy's runtime objects: workers, clients, servers and
 * pools, their fans, and the tables lower modules report upwards through
 * (a client's session, steps and portals are the planner's: planner.h).
 * Types only: each module's functions are declared in its own header (io.h,
 * client.h, request.h, coordinator.h, fanout.h, server.h, pool.h,
 * worker.h, console.h), and a module includes the headers of the modules
 * it calls, so the includes show the layers: worker -> client -> request
 * -> {fanout, coordinator}, and request -> pool -> server -> io.
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

#include <stdarg.h>

#include <uv.h>
#include <libpq-fe.h>

#include "pgshard/auth.h"
#include "pgshard/config.h"
#include "pgshard/copy.h"
#include "pgshard/io.h"
#include "pgshard/exchange.h"
#include "pgshard/merge.h"
#include "pgshard/monitor.h"
#include "pgshard/planner.h"
#include "pgshard/proto.h"
#include "pgshard/route.h"
#include "pgshard/session.h"
#include "pgshard/strmap.h"

typedef struct pgs_worker pgs_worker_t;
typedef struct pgs_client pgs_client_t;
typedef struct pgs_server pgs_server_t;
typedef struct pgs_pool pgs_pool_t;
typedef struct pgs_listen_client pgs_listen_client_t;

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

/* ---- clients (client.c) ---- */

#define PGS_REQUEST_TEXT_MAX 200 /* bytes of a statement the slow-request log shows */

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

/* Where a client waits that is not waiting for a server. Set by request.c
 * as it parks the client, and by the worker that wakes it (worker.c). */
typedef enum {
  PGS_PARK_NONE,
  PGS_PARK_PAUSED, /* its database is paused (admin PAUSE): not read before its
                      next transaction until RESUME */
  PGS_PARK_HELD,   /* its message at in_pos waits for the cutover hold to end
                      (hold.h): not read, not processed until the workers wake it */
  PGS_PARK_WOKEN,  /* the hold ended: the message is planned again, not counted again */
} pgs_client_park_t;

typedef struct pgs_setting {
  char name[PGS_MAX_NAME];
  char *sql;    /* statement that establishes it */
  char *value;  /* its value when one constant (startup parameters: as sent), else NULL */
  bool startup; /* from the startup packet: survives RESET ALL */
} pgs_setting_t;

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
  /* Gathered for PORTAL (fetched in parts): every row kept in `rows`
   * (DataRow messages), the first max_rows sent at the end. */
  pgs_portal_t *portal;
  int64_t max_rows;
  bool declare; /* PORTAL is a cursor being declared */
  pgs_buf_t rows;
  pgs_client_t *owner;
  size_t charged; /* the merge's rows, charged to the owner's memory */
} pgs_fan_t;

typedef enum {
  PGS_FAN_DROP,    /* swallowed (kept by the merge, or not the client's) */
  PGS_FAN_FORWARD, /* to the client as it is */
  PGS_FAN_READY,   /* the last part's ReadyForQuery: the merged result is out */
} pgs_fan_action_t;

struct pgs_client {
  pgs_list_t link;      /* worker->clients or worker->closing */
  pgs_list_t wait_link; /* pool->waiters */
  pgs_worker_t *worker;
  pgs_client_state_t state;
  pgs_io_t io;
  /* What planning knows of it (planner.h): its database, statements,
   * portals, transaction, plan, and the states of its requests. */
  pgs_session_t session;
  pgs_config_t *config; /* ref taken at login */
  const pgs_user_t *user;
  struct pgs_db_stats *stats; /* its database's counters on its worker (NULL before login) */
  uint64_t request_start_us;  /* first message of the request being served, 0: none */
  uint64_t request_id;        /* the request's number on its worker (logs: "c<client>.<n>") */
  uint64_t request_slots;     /* slots it sent messages to */
  char *request_text;         /* its first statement, cut at REQUEST_TEXT_MAX - 1 bytes (the
                                 slow-request log, while it is on: this and the two
                                 below are allocated by a request and let go at its end) */
  char request_sqlstate[6];   /* the first error it sent the client, "" none */
  uint64_t *request_shard_us; /* slow-request log: per slot, when the request first
                                 reached it and when its last ReadyForQuery there came
                                 (2 per slot, request_shard_cap slots) */
  int request_shard_cap;
  char *request_trace;    /* a W3C traceparent its statement carried in a comment
                                 (trace.h; allocated when one is first seen) */
  uint64_t request_query; /* routing: the hash of its statement's normalised text, 0: none
                                 (its entry in worker->queries holds the text) */
  bool admin;             /* a client of the admin console (admin.c) */
  struct pgs_admin_session *admin_session;
  /* Its user and database names (cut at PGS_MAX_NAME - 1 bytes, as the
   * server would) and its address: "" until known, then pointers into one
   * allocation, `names` (client_set_names). */
  const char *username, *dbname, *peer;
  char *names;
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
  uint64_t settings_hash; /* 0: no settings */
  bool tx_failed;         /* the transaction holding session.tx_ops failed or rolled back */
  pgs_client_park_t park; /* parked by PAUSE or a cutover hold, or woken from one */
  uint64_t tx_hold;       /* the hold generation its transaction (or statement) began
                             under, 0 none: only those are held (hold.h) */
  bool hold_stale;        /* that hold has ended: a statement routed otherwise on the
                             workers' reloaded map fails with 40001 (request.c) */
  char *startup_options;  /* session pooling: startup parameters as libpq options
                             ("-c name=value ..."), given to its servers at login */
  char txstatus;          /* last ReadyForQuery status sent */
  int pending_closes;
  /* Its servers, by slot (planner.h: 2 * shard the writer, 2 * shard + 1
   * a replica); session.linked has a bit for each that is set. */
  pgs_server_t **servers; /* per slot: linked server or NULL */
  pgs_pool_t **pools;     /* per shard node (shard * pool_stride + node), on first use */
  int pool_stride;
  int want_slot;         /* the slot it waits for a server for */
  pgs_pool_t *wait_pool; /* the pool it waits in */
  int want_node;
  pgs_fan_t *fan;              /* a merged read in flight */
  pgs_listen_client_t *listen; /* its channels and held notifications (listen.c), or NULL */
};

/* What the client connection does for the layers that serve its requests
 * (request.c, admin.c): client.c provides them and the worker registers
 * them, so that neither calls up into client.c. */
typedef struct pgs_session_ops {
  /* The one error path: FATAL ErrorResponse with SQLSTATE and MESSAGE
   * ("pgshard: " is put in front), then close. */
  void (*fail)(pgs_client_t *client, const char *sqlstate, const char *message);
  void (*close)(pgs_client_t *client);
  /* A ReadyForQuery with STATUS went out: the request is over. */
  void (*after_ready)(pgs_client_t *client, char status);
  /* A server the session cannot do without was lost (WHY). */
  void (*server_lost)(pgs_client_t *client, const char *why);
  /* Login: a row of the server's parameter values, and its end. */
  void (*login_row)(pgs_client_t *client, const uint8_t *body, size_t len);
  void (*login_done)(pgs_client_t *client);
  /* A result or status of the client's own that its session tracks. */
  void (*server_message)(pgs_client_t *client, char type, const uint8_t *body, size_t len);
} pgs_session_ops_t;

/* OPS->fail with a message formatted from FMT. */
PGS_PRINTF(4, 5)
static inline void pgs_session_fail(const pgs_session_ops_t *ops, pgs_client_t *client,
                                    const char *sqlstate, const char *fmt, ...) {
  char message[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  ops->fail(client, sqlstate, message);
}

/* ---- servers (server.c) ---- */

typedef enum {
  PGS_SV_CONNECTING, /* libpq handshake; pool->connecting */
  PGS_SV_IDLE,       /* logged in, no client; pool->idle */
  PGS_SV_ACTIVE,     /* linked to server->client; pool->active */
  PGS_SV_RESETTING,  /* no client, running DISCARD ALL; pool->active */
  PGS_SV_CLOSING,    /* handles closing; worker->closing */
  PGS_SV_MOVING,     /* idle, on its way to another worker's pool (pool.c); on no list */
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
  bool cancelling;        /* a CancelRequest is on its way: nothing more is sent
                             to it until the postmaster has signalled it */
  const char *cancel_why; /* cancel its fan part once it runs it (the log's why) */
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
  int move_to;         /* PGS_SV_MOVING: the worker it goes to */
  uint32_t down_epoch; /* its pool's when it was opened (pgs_pool_apply_health) */
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
  int size; /* pool_size: for every worker together (shared) */
  /* What the workers' pools of this key share (pool.c): the node's server
   * count, which worker's clients wait, the login parameters learned. */
  struct pgs_pool_shared *shared;
  int published_need; /* what this pool last told shared it needs */
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
  bool accepting;      /* the listener takes connections (worker.c, maybe_accept) */
  uint64_t started_ms; /* when the worker started */
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
  int nclients;                 /* atomic: other workers read it to balance new connections */
  int incoming;                 /* atomic: connections other workers handed it, not yet opened */
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
  struct pgs_query_table *queries;    /* SHOW QUERIES (allocated on first use) */
  struct pgs_listen_registry *listen; /* LISTEN/NOTIFY of its clients (listen.c), or NULL */
};

#endif
