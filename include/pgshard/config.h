/*
 * config.h — the parsed, immutable pgshard configuration.
 *
 * A config is built once from an ini file (inih) and never modified; reload
 * builds a new one and swaps the pointer. Holders take a reference
 * (pgs_config_ref) so a config lives until the last client that logged in
 * under it has gone. Parsing never stops at the first problem: every error is
 * collected with its line so `pgshardctl check` can report them all.
 *
 * Sections (see config/pgshard.ini for every key, commented):
 *   [pgshard]            listener, workers, limits, timeouts, client auth
 *   [user.NAME]          client users: password, admin
 *   [database.NAME]      what clients connect to: pooling and routing policy
 *   [shard.DB.NAME]      one shard: primary, replicas (repeatable), region
 *   [table.DB.T] [geo.DB] [tenants.DB]  the shard map (routing issue)
 *   [slots.DB]           which shard owns each xxh3 hash slot (optional)
 */
#ifndef PGSHARD_CONFIG_H
#define PGSHARD_CONFIG_H

#include "pgshard/common.h"
#include "pgshard/shardmap.h"

/* Shards per database: each has a writer slot and a replica slot in a
 * client's 64-bit masks (proxy/request.c). */
#define PGS_MAX_SHARDS 32

typedef enum { PGS_AUTH_TRUST, PGS_AUTH_MD5, PGS_AUTH_SCRAM } pgs_auth_method_t;
typedef enum { PGS_POOL_TRANSACTION, PGS_POOL_SESSION } pgs_pool_mode_t;
typedef enum { PGS_LOG_TEXT, PGS_LOG_JSON } pgs_log_format_t;
typedef enum { PGS_RYW_OFF, PGS_RYW_WINDOW, PGS_RYW_SESSION, PGS_RYW_LSN } pgs_ryw_t;
typedef enum { PGS_FALLBACK_PRIMARY, PGS_FALLBACK_ERROR } pgs_lag_fallback_t;
typedef enum { PGS_XWRITE_DENY, PGS_XWRITE_ALLOW, PGS_XWRITE_2PC } pgs_cross_writes_t;
typedef enum { PGS_HASH_XXH3, PGS_HASH_POSTGRES } pgs_hash_fn_t;
/* client_tls: PgBouncer's client_tls_sslmode. */
typedef enum {
  PGS_CLIENT_TLS_DISABLE,    /* SSLRequest answered 'N' */
  PGS_CLIENT_TLS_ALLOW,      /* TLS when the client asks for it ("prefer" too) */
  PGS_CLIENT_TLS_REQUIRE,    /* a client without TLS is refused (28000) */
  PGS_CLIENT_TLS_VERIFY_CA,  /* require + a client certificate from tls_ca_file */
  PGS_CLIENT_TLS_VERIFY_FULL /* verify-ca + its CN is the user name */
} pgs_client_tls_t;

struct ssl_ctx_st;

/* One server: a libpq conninfo plus the fields pgshard itself needs. */
typedef struct pgs_node {
  char *conninfo; /* as written in the config, passed to libpq */
  char *host;     /* "127.0.0.1" when the conninfo names none */
  int port;       /* 5432 when the conninfo names none */
  char *dbname;   /* NULL: the client's database name */
  char *user;     /* NULL: the client's user name */
  char *password; /* NULL: the client's password from [user.*] */
  bool is_primary;
  int line;
} pgs_node_t;

typedef struct pgs_shard {
  char *name;
  char *region; /* NULL when none */
  pgs_node_t primary;
  bool has_primary;
  pgs_node_t *replicas;
  int nreplicas;
  int line;
} pgs_shard_t;

typedef struct pgs_database {
  char *name;
  pgs_pool_mode_t pool_mode;
  int pool_size;
  pgs_ryw_t read_your_writes;
  int ryw_window_ms;
  int max_replica_lag_ms;
  int64_t max_replica_lag_bytes;
  int lag_check_interval_ms;
  int node_down_failures; /* failed checks in a row before a node is marked down */
  pgs_lag_fallback_t lag_fallback;
  bool cross_shard_reads;
  pgs_cross_writes_t cross_shard_writes;
  /* tenant_isolation = strict: in a tenant session a statement must name
   * the tenant on every tenant table it touches, and may not run DDL or
   * code (false: shard, the statement runs on the tenant's shard). */
  bool tenant_strict;
  pgs_hash_fn_t hash;
  pgs_shard_t *shards;
  int nshards;
  pgs_shardmap_t shardmap; /* [table.DB.*], [geo.DB], [tenants.DB] */
  /* The xxh3 slot table: the shard (index) of each of the PGS_HASH_SLOTS
   * slots, as [slots.DB] gives it, else the default layout
   * (pgs_shardmap_slot_shard). Always filled by the parser; NULL only in a
   * database built by hand (tests, benchmarks), which routes by the default
   * layout. Geo hashing within a region does not use it. */
  int16_t *slot_shard;
  int slots_line; /* first line of [slots.DB], 0 when absent */
  int line;
} pgs_database_t;

typedef struct pgs_user {
  char *name;
  char *password; /* plain text, "md5..." hash or "SCRAM-SHA-256$..." secret */
  /* For a plain-text password: a "SCRAM-SHA-256$..." secret made from it when
   * the config was loaded, so SCRAM logins do not run PBKDF2 on the event
   * loop each time. NULL for hashes, secrets and a config with errors. */
  char *scram_secret;
  bool admin;
  int line;
} pgs_user_t;

typedef struct pgs_config_error {
  int line; /* 0: not tied to one line */
  char *message;
} pgs_config_error_t;

#define PGS_MAX_PEERS 255

typedef struct pgs_config {
  char *path;
  /* [pgshard] */
  char *listen_host;
  int listen_port;
  int workers;
  char *metrics_listen; /* NULL or "" disables */
  /* Cancel requests across a fleet (PgBouncer's peering): this instance's
   * place (1-based) in peers, 0: none. Its sessions' cancel keys carry it
   * in their top byte, and a cancel request for another's key is sent on
   * to that peer. */
  int peer_id;
  int peer_id_line;
  int npeers;
  char **peer_hosts; /* PGS_MAX_PEERS at most */
  int *peer_ports;
  int peers_line;
  pgs_log_format_t log_format;
  bool log_debug;
  bool trace_comments; /* a simple Query reaches servers led by its request id, in a comment */
  pgs_auth_method_t auth;
  int max_client_conn;
  int64_t max_message_size;  /* cap on one client message */
  int query_wait_timeout_ms; /* how long a client waits for a pool */
  int server_connect_timeout_ms;
  int client_login_timeout_ms;
  int server_idle_timeout_ms;      /* close pooled servers idle this long */
  int shutdown_timeout_ms;         /* SIGTERM drain limit */
  int client_idle_timeout_ms;      /* close a client idle outside a transaction; 0: off */
  int client_write_timeout_ms;     /* close a client that takes none of its output; 0: off */
  int query_timeout_ms;            /* close a client whose request runs this long; 0: off */
  int log_min_duration_ms;         /* log requests at least this long; -1: off */
  int server_lifetime_ms;          /* close a pooled server this old when it is freed; 0: off */
  int idle_transaction_timeout_ms; /* close a client idle inside a transaction; 0: off */
  /* Memory a client may make pgshard hold: its statements, portals and
   * merge rows, and the output it has not read (per client); the first
   * three summed over every client (whole process); one merge's rows. */
  int64_t max_client_memory;
  int64_t max_total_client_memory;
  int64_t max_merge_bytes;
  int64_t max_notify_queue_bytes; /* notifications held per client (proxy/listen.c) */
  /* [pgshard] twophase_recovery_user: the [user.*] whose login settles 2PC
   * orphans of every owner (it must be a superuser on the shards: checked
   * at startup). NULL: each prepared transaction is settled as its owner. */
  char *twophase_recovery_user;
  int twophase_recovery_user_line;
  /* TLS with clients: client_tls, and the files its context is made from
   * (a relative name is beside the config file). tls_ctx is that context
   * (an OpenSSL SSL_CTX), made when the config is loaded so that a file
   * that does not load refuses the config at startup and at reload alike;
   * NULL when no certificate is configured. */
  pgs_client_tls_t client_tls;
  char *tls_cert_file;
  char *tls_key_file;
  char *tls_ca_file;
  int client_tls_line, tls_cert_line, tls_key_line, tls_ca_line;
  struct ssl_ctx_st *tls_ctx;

  /* [pgshard] map_source: the libpq conninfo of the database the shard map
   * is kept in (proxy/mapsource.c), or NULL: the file's map. map_version:
   * the version of that map this config holds, 0 when the map is the
   * file's own sections. */
  char *map_source;
  int64_t map_version;

  pgs_user_t *users;
  int nusers;
  pgs_database_t *databases;
  int ndatabases;

  pgs_config_error_t *errors;
  int nerrors;
  /* Not errors, but worth a look (pgshardctl check prints them, pgshard
   * logs them): a map name folded to lower case, say. */
  pgs_config_error_t *warnings;
  int nwarnings;

  int refcount; /* atomic; see pgs_config_ref */
} pgs_config_t;

/* Parse FILE. Always returns a config (never NULL) so the caller can print
 * every error; the config is usable only when nerrors == 0. */
pgs_config_t *pgs_config_load(const char *path);
/* Parse ini text held in memory (tests, fuzzers). */
pgs_config_t *pgs_config_parse_string(const char *text);
/* A config whose [pgshard] section is PATH's (NULL: defaults; the file's
 * other sections are ignored) and whose users, databases, shards and shard
 * map are MAP_TEXT's (where a [pgshard] section is an error). Errors and
 * warnings about MAP_TEXT name LABEL ("map version 7") and its line in
 * their message, with line 0. map_version is VERSION. */
pgs_config_t *pgs_config_load_map(const char *path, const char *map_text, const char *label,
                                  int64_t version);
/* TEXT with its [pgshard] sections' lines left empty: the shard map part of a config
 * file, as map_source keeps it. malloc'ed. */
char *pgs_config_map_text(const char *text);

pgs_config_t *pgs_config_ref(pgs_config_t *config);
void pgs_config_unref(pgs_config_t *config);

const pgs_user_t *pgs_config_find_user(const pgs_config_t *config, const char *name);
const pgs_database_t *pgs_config_find_database(const pgs_config_t *config, const char *name);

/* Parse a libpq-style "key=value key='quoted value'" conninfo into NODE.
 * Pure: no libpq. Returns PGS_EINVAL with a message in ERR on bad syntax. */
pgs_status_t pgs_conninfo_parse(const char *conninfo, pgs_node_t *node, char *err,
                                size_t errlen) PGS_MUST_USE;

/* The libpq conninfo pgshard connects to NODE of DB with: the node's own
 * conninfo, completed with dbname = DB's name and, for a node naming no
 * user, USER's name and (plain-text passwords only: hashes and secrets stay
 * with pgshard) password; sslmode/gssencmode disable unless set (TLS to a
 * server is what its conninfo asks for, never libpq's "prefer" by
 * default); connect_timeout from the config; and
 * APP_KEY = APP_VALUE (application_name or fallback_application_name).
 * USER may be NULL. malloc'ed. */
char *pgs_node_conninfo(const pgs_config_t *config, const pgs_database_t *db,
                        const pgs_node_t *node, const pgs_user_t *user, const char *app_key,
                        const char *app_value);

/* client_tls as the config spells it ("verify-full"). */
const char *pgs_client_tls_name(pgs_client_tls_t mode);

/* True when HOST is on loopback (127.0.0.0/8, ::1, localhost). */
bool pgs_host_is_loopback(const char *host);

#endif
