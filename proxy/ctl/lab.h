/*
 * lab.h — what the lab's files share: the lab model built from a config and
 * the helpers each file offers the others.
 *
 * The model maps config nodes onto servers. Every loopback node belongs to
 * exactly one server, keyed by port: nodes that share a port are databases of
 * the same PostgreSQL server, so they must agree on its role (primary or
 * replica) and, for replicas, on the primary it streams from. Nodes on other
 * hosts are listed (server == -1) but never started or stopped.
 *
 * On disk, the lab directory DIR holds lab.info (marks it as a lab), the
 * proxy's pgshard.pid and pgshard.log (pgshard-I.pid, .log and .ini for the
 * other proxies of `up --proxies N`), and one directory per server, DIR/PORT
 * (see lab_server.c). Files:
 *   lab.c         CLI, model, up and down
 *   lab_status.c  status and lag
 *   lab_server.c  one PostgreSQL server: build, configure, start, stop
 *   lab_proxy.c   the pgshard processes
 *   lab_util.c    processes, files, pid files, sockets, libpq helpers
 *   lab_tls.c     a CA and server certificate for `up --tls`
 */
#ifndef PGSHARD_CTL_LAB_H
#define PGSHARD_CTL_LAB_H

#include <stdbool.h>
#include <sys/types.h>

#include <libpq-fe.h>

#include "pgshard/config.h"

#define LAB_START_TIMEOUT_S 60   /* pg_ctl start/stop, and a server accepting connections */
#define LAB_REPLICA_TIMEOUT_S 60 /* a replica streaming, and databases reaching it */
#define LAB_PROXY_TIMEOUT_S 10   /* the proxy listening, and stopping on SIGTERM */
#define LAB_MAX_PROXIES 16       /* `up --proxies N`: 1 to this many pgshard */
#define LAB_SUPERUSER "postgres" /* initdb -U; every lab connection logs in as it */
#define LAB_DEFAULT_PG_BIN "/usr/lib/postgresql/15/bin"

typedef enum {
  LAB_PRIMARY, /* built by initdb; the config's roles and databases are created on it */
  LAB_REPLICA  /* built by pg_basebackup from its upstream primary; streams from it */
} lab_role_t;

/* One node of the config as the lab sees it. Pointers into lab->config. */
typedef struct lab_node {
  const pgs_database_t *database;
  const pgs_shard_t *shard;
  const pgs_node_t *node;
  int replica_index; /* 0-based in config order; -1 for the shard's primary */
  int server;        /* index in lab->servers; -1 when not on loopback */
} lab_node_t;

/* One PostgreSQL server the lab owns: every loopback node on its port. */
typedef struct lab_server {
  int port;
  lab_role_t role;
  int upstream; /* replicas: index of the server they stream from; -1 otherwise */
  char **hosts; /* distinct hosts its nodes name; listen_addresses resolves them */
  int nhosts;
  char **databases; /* primaries: every database its shards' nodes use */
  int ndatabases;
  char *dir;       /* DIR/PORT */
  char *datadir;   /* DIR/PORT/data */
  char label[160]; /* "app.s0 primary" of its first node, for messages */
} lab_server_t;

typedef struct lab {
  pgs_config_t *config; /* NULL for `down`, which works from DIR alone */
  char *config_path;    /* absolute; NULL when only --dir was given */
  char *dir;            /* absolute */
  char *pg_bin;         /* directory of initdb, pg_ctl, pg_basebackup */
  bool as_postgres;     /* running as root: tools run as the postgres OS user */
  uid_t pg_uid;
  gid_t pg_gid;
  char *pg_home;
  lab_node_t *nodes;
  int nnodes;
  lab_server_t *servers;
  int nservers;
  char **roles; /* login roles the nodes connect as, other than LAB_SUPERUSER */
  int nroles;
  bool tls;    /* servers take TLS connections only (lab_tls.c) */
  int proxies; /* up: how many pgshard to leave running (--proxies; 0 means 1) */
} lab_t;

/* ---- lab_util.c ---- */
PGS_PRINTF(1, 2) void pgs_lab_fail(const char *fmt, ...);
PGS_PRINTF(1, 2) char *pgs_lab_format(const char *fmt, ...);
bool pgs_lab_exists(const char *path);
pgs_status_t pgs_lab_mkdir(const lab_t *lab, const char *path, bool for_postgres) PGS_MUST_USE;
pgs_status_t pgs_lab_mkdir_parents(const char *path) PGS_MUST_USE;
pgs_status_t pgs_lab_write_file(const lab_t *lab, const char *path, const char *text,
                                bool for_postgres) PGS_MUST_USE;
pgs_status_t pgs_lab_remove_tree(const char *path) PGS_MUST_USE;
off_t pgs_lab_file_size(const char *path);
void pgs_lab_print_log(const char *path, off_t from, size_t max_bytes);
pgs_status_t pgs_lab_run(const lab_t *lab, const char *log_path, const char *cwd,
                         const char *const argv[]) PGS_MUST_USE;
bool pgs_lab_postgres_can_enter(const lab_t *lab, const char *dir);
bool pgs_lab_process_alive(pid_t pid);
pid_t pgs_lab_pidfile_process(const char *path);
bool pgs_lab_port_in_use(const char *host, int port);
bool pgs_lab_port_accepts(const char *host, int port);
void pgs_lab_sleep_ms(int ms);
double pgs_lab_now(void);
/* The lab's connections use sslmode=require (ON) or disable. */
void pgs_lab_connect_tls(bool on);
PGconn *pgs_lab_connect(const char *host, int port, const char *dbname, char *err, size_t errlen);
PGresult *pgs_lab_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                        char *err, size_t errlen);

/* ---- lab_server.c ---- */
pid_t pgs_lab_server_pid(const char *datadir);
pgs_status_t pgs_lab_server_ensure(const lab_t *lab, const lab_server_t *server) PGS_MUST_USE;
pgs_status_t pgs_lab_server_create_databases(const lab_t *lab,
                                             const lab_server_t *server) PGS_MUST_USE;
pgs_status_t pgs_lab_server_wait_replica(const lab_t *lab, const lab_server_t *server) PGS_MUST_USE;
pgs_status_t pgs_lab_server_stop(const lab_t *lab, const char *server_dir) PGS_MUST_USE;

/* ---- lab_tls.c ---- */
/* DIR/tls/NAME (malloc'ed). */
char *pgs_lab_tls_file(const lab_t *lab, const char *name);
/* The lab made its TLS material: its servers run with TLS. */
bool pgs_lab_tls_present(const lab_t *lab);
/* Make the CA and the server certificate unless they exist. */
pgs_status_t pgs_lab_tls_ensure(const lab_t *lab) PGS_MUST_USE;

/* ---- lab_proxy.c ---- */
/* Start proxies 0 to lab->proxies - 1 that are not running; stop the others. */
pgs_status_t pgs_lab_proxy_start(const lab_t *lab) PGS_MUST_USE;
/* Stop every proxy that has a pid file. */
pgs_status_t pgs_lab_proxy_stop(const lab_t *lab) PGS_MUST_USE;
/* Proxy INDEX's DIR/pgshard.EXT (INDEX 0) or DIR/pgshard-INDEX.EXT (malloc'ed). */
char *pgs_lab_proxy_file(const lab_t *lab, int index, const char *ext);
/* The port proxy INDEX listens on: the config's listen port + INDEX. */
int pgs_lab_proxy_port(const lab_t *lab, int index);
/* Proxy INDEX's live process, or 0. */
pid_t pgs_lab_proxy_pid(const lab_t *lab, int index);
/* Proxy INDEX has a pid file, live or stale: the lab started it. */
bool pgs_lab_proxy_known(const lab_t *lab, int index);
const char *pgs_lab_proxy_probe_host(const char *listen_host);

/* ---- lab_status.c ---- */
int pgs_lab_status(const lab_t *lab, bool with_proxy);
int pgs_lab_lag(const lab_t *lab, int argc, char **argv);
/* Block until every replica has replayed all its primary had committed
 * when called, or fail after TIMEOUT_S seconds. */
int pgs_lab_wait(const lab_t *lab, int timeout_s);

#endif
