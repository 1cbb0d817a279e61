/*
 * lab_server.c — one lab PostgreSQL server, from nothing to running and back:
 * initdb (primaries) or pg_basebackup (replicas), the lab's settings, start,
 * roles and databases, waiting for a replica to stream, stop.
 *
 * DIR/PORT (owned by the postgres OS user when pgshardctl runs as root) holds
 * data/ (the data directory), server.log (the postmaster's log, pg_ctl -l) and
 * ctl.log (the output of every tool the lab ran for this server). A data
 * directory is built as data.new and renamed to data/ when complete, so data/
 * always holds a whole cluster and a leftover data.new is an interrupted build
 * that is thrown away. The lab's settings live in data/pgshard-lab.conf,
 * included from postgresql.conf and rewritten before every start: a replica
 * copies its primary's files and must not keep its port. A server that is
 * already running is never reconfigured or restarted.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>

#include "lab.h"

#define LAB_INCLUDE_LINE "include_if_exists = 'pgshard-lab.conf'"

/* A lab, not production: durability is traded for speed everywhere. Unix
 * sockets are off because DIR paths can exceed the 107-byte socket path. */
static const char lab_settings[] =
    "# Written by `pgshardctl lab up` before every start; edits are lost.\n"
    "listen_addresses = '%s'\n"
    "port = %d\n"
    "unix_socket_directories = ''\n"
    "wal_level = logical    # resharding streams changes by logical decoding\n"
    "max_wal_senders = 20\n"
    "max_replication_slots = 20\n"
    "wal_keep_size = '256MB'\n"
    "hot_standby = on\n"
    "hot_standby_feedback = on\n"
    "max_connections = 300\n"
    "max_prepared_transactions = 64   # cross_shard_writes = 2pc; replicas need as many\n"
    "shared_buffers = 32MB\n"
    "fsync = off\n"
    "synchronous_commit = off\n"
    "full_page_writes = off\n"
    "wal_receiver_status_interval = 1s\n"
    "logging_collector = off\n";

static const char lab_hba[] =
    "# Written by `pgshardctl lab up`: a lab trusts every loopback connection.\n"
    "host all         all 127.0.0.0/8 trust\n"
    "host all         all ::1/128     trust\n"
    "host replication all 127.0.0.0/8 trust\n"
    "host replication all ::1/128     trust\n";

/* A TLS lab (lab_tls.c): TLS connections only. */
static const char lab_tls_settings[] =
    "ssl = on\n"
    "ssl_cert_file = '%s'\n"
    "ssl_key_file = '%s'\n"
    "ssl_ca_file = '%s'\n";

static const char lab_tls_hba[] =
    "# Written by `pgshardctl lab up` (a TLS lab): loopback connections over TLS only.\n"
    "hostssl all         all 127.0.0.0/8 trust\n"
    "hostssl all         all ::1/128     trust\n"
    "hostssl replication all 127.0.0.0/8 trust\n"
    "hostssl replication all ::1/128     trust\n";

static char *tool_path(const lab_t *lab, const char *tool) {
  return pgs_lab_format("%s/%s", lab->pg_bin, tool);
}

static char *server_file(const lab_server_t *server, const char *name) {
  return pgs_lab_format("%s/%s", server->dir, name);
}

static char *data_file(const char *datadir, const char *name) {
  return pgs_lab_format("%s/%s", datadir, name);
}

/* The postmaster running on DATADIR, or 0. The pid in postmaster.pid is
 * that postmaster when that process works in DATADIR (a postmaster chdirs
 * to its data directory): a pid reused by another process does not. No
 * clock is compared, so a wall clock stepped since the server started (a
 * busy virtual machine catching up) cannot make a running server look
 * stale. */
pid_t pgs_lab_server_pid(const char *datadir) {
  char *path = data_file(datadir, "postmaster.pid");
  FILE *f = fopen(path, "re");
  free(path);
  long pid = 0;
  if (f == NULL) return 0;
  if (fscanf(f, "%ld", &pid) != 1) pid = 0;
  fclose(f);
  if (pid <= 0) return 0;
  char link[64], cwd[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/%ld/cwd", pid);
  ssize_t n = readlink(link, cwd, sizeof(cwd) - 1);
  char *real = realpath(datadir, NULL);
  bool ours = n > 0 && real != NULL && (size_t)n == strlen(real) && !memcmp(cwd, real, (size_t)n);
  free(real);
  return ours ? (pid_t)pid : 0;
}

static bool datadir_has(const char *datadir, const char *name) {
  char *path = data_file(datadir, name);
  bool found = pgs_lab_exists(path);
  free(path);
  return found;
}

/* ---- building a data directory ---- */

static pgs_status_t run_initdb(const lab_t *lab, const lab_server_t *server, const char *target) {
  char *initdb = tool_path(lab, "initdb");
  char *log = server_file(server, "ctl.log");
  const char *argv[] = {initdb, "-D",          target,         "-U",        LAB_SUPERUSER, "-E",
                        "UTF8", "--no-locale", "--auth=trust", "--no-sync", NULL};
  pgs_status_t rc = pgs_lab_run(lab, log, server->dir, argv);
  free(initdb);
  free(log);
  return rc;
}

/* -R writes standby.signal and primary_conninfo (with this application_name,
 * which names the replica in the primary's pg_stat_replication). */
static pgs_status_t run_basebackup(const lab_t *lab, const lab_server_t *server,
                                   const char *target) {
  const lab_server_t *upstream = &lab->servers[server->upstream];
  char *basebackup = tool_path(lab, "pg_basebackup");
  char *log = server_file(server, "ctl.log");
  char *source = pgs_lab_format("host=%s port=%d user=%s application_name=pgshard_lab_%d",
                                upstream->hosts[0], upstream->port, LAB_SUPERUSER, server->port);
  const char *argv[] = {basebackup, "-d", source, "-D",        target,          "-R", "-X",
                        "stream",   "-c", "fast", "--no-sync", "--no-password", NULL};
  pgs_status_t rc = pgs_lab_run(lab, log, server->dir, argv);
  free(basebackup);
  free(log);
  free(source);
  return rc;
}

static pgs_status_t server_build(const lab_t *lab, const lab_server_t *server) {
  char *target = pgs_lab_format("%s.new", server->datadir);
  pgs_status_t rc = pgs_lab_remove_tree(target);
  if (rc == PGS_OK) {
    printf("lab: %s %s:%d: %s\n", server->label, server->hosts[0], server->port,
           server->role == LAB_PRIMARY ? "initdb" : "pg_basebackup from its primary");
    fflush(stdout);
    rc = server->role == LAB_PRIMARY ? run_initdb(lab, server, target)
                                     : run_basebackup(lab, server, target);
  }
  if (rc == PGS_OK && rename(target, server->datadir) != 0) {
    pgs_lab_fail("cannot rename %s to %s: %s", target, server->datadir, strerror(errno));
    rc = PGS_EIO;
  }
  free(target);
  return rc;
}

/* A data directory built for the other role cannot serve this one. */
static pgs_status_t check_role(const lab_server_t *server) {
  bool standby = datadir_has(server->datadir, "standby.signal");
  if (standby == (server->role == LAB_REPLICA)) return PGS_OK;
  pgs_lab_fail(
      "%s was built as a %s but the config makes %s:%d (%s) a %s; "
      "run `pgshardctl lab down --purge` to rebuild the lab",
      server->datadir, standby ? "replica" : "primary", server->hosts[0], server->port,
      server->label, standby ? "primary" : "replica");
  return PGS_ECONFIG;
}

/* ---- configuring and starting ---- */

static pgs_status_t ensure_include(const lab_server_t *server) {
  char *path = data_file(server->datadir, "postgresql.conf");
  FILE *f = fopen(path, "re");
  char line[1024];
  bool found = false;
  pgs_status_t rc = PGS_OK;
  while (f && !found && fgets(line, sizeof(line), f))
    found = !strncmp(line, LAB_INCLUDE_LINE, sizeof(LAB_INCLUDE_LINE) - 1);
  if (f) fclose(f);
  if (!found) {
    f = fopen(path, "ae");
    if (f == NULL || fprintf(f, "\n# pgshard lab settings\n%s\n", LAB_INCLUDE_LINE) < 0) {
      pgs_lab_fail("cannot append to %s: %s", path, strerror(errno));
      rc = PGS_EIO;
    }
    if (f) fclose(f);
  }
  free(path);
  return rc;
}

/* The server's listen_addresses: its hosts as numeric addresses, each once.
 * "localhost" and "127.0.0.1" on one port are the same address, and
 * PostgreSQL would log a failed second bind that looks like a port clash. */
static char *listen_addresses(const lab_server_t *server) {
  char **addresses = NULL;
  int n = 0;
  for (int i = 0; i < server->nhosts; i++) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *list = NULL;
    char numeric[NI_MAXHOST];
    if (getaddrinfo(server->hosts[i], NULL, &hints, &list) != 0) list = NULL;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
      if (getnameinfo(ai->ai_addr, ai->ai_addrlen, numeric, sizeof(numeric), NULL, 0,
                      NI_NUMERICHOST) != 0)
        continue;
      bool seen = false;
      for (int k = 0; k < n && !seen; k++) seen = !strcmp(addresses[k], numeric);
      if (seen) continue;
      addresses = pgs_xrealloc(addresses, sizeof(*addresses) * (size_t)(n + 1));
      addresses[n++] = pgs_xstrdup(numeric);
    }
    if (list) freeaddrinfo(list);
  }
  char *joined = pgs_xstrdup(n ? "" : server->hosts[0]);
  for (int k = 0; k < n; k++) {
    char *next = pgs_lab_format("%s%s%s", joined, k ? "," : "", addresses[k]);
    free(joined);
    free(addresses[k]);
    joined = next;
  }
  free(addresses);
  return joined;
}

static pgs_status_t server_configure(const lab_t *lab, const lab_server_t *server) {
  char *hosts = listen_addresses(server);
  char *settings = pgs_lab_format(lab_settings, hosts, server->port);
  if (lab->tls) {
    char *cert = pgs_lab_tls_file(lab, "server.crt");
    char *key = pgs_lab_tls_file(lab, "server.key");
    char *ca = pgs_lab_tls_file(lab, "ca.crt");
    char *tls = pgs_lab_format(lab_tls_settings, cert, key, ca);
    char *both = pgs_lab_format("%s%s", settings, tls);
    free(settings);
    settings = both;
    free(tls);
    free(cert);
    free(key);
    free(ca);
  }
  char *conf = data_file(server->datadir, "pgshard-lab.conf");
  char *hba = data_file(server->datadir, "pg_hba.conf");
  pgs_status_t rc = pgs_lab_write_file(lab, conf, settings, true);
  if (rc == PGS_OK) rc = pgs_lab_write_file(lab, hba, lab->tls ? lab_tls_hba : lab_hba, true);
  if (rc == PGS_OK) rc = ensure_include(server);
  free(hosts);
  free(settings);
  free(conf);
  free(hba);
  return rc;
}

static pgs_status_t check_port_free(const lab_server_t *server) {
  for (int i = 0; i < server->nhosts; i++) {
    if (!pgs_lab_port_in_use(server->hosts[i], server->port)) continue;
    pgs_lab_fail(
        "port %d on %s (%s) is in use by another program, not this lab's server in %s; "
        "stop it or give the node another port",
        server->port, server->hosts[i], server->label, server->dir);
    return PGS_EIO;
  }
  return PGS_OK;
}

static pgs_status_t server_start(const lab_t *lab, const lab_server_t *server) {
  char *pg_ctl = tool_path(lab, "pg_ctl");
  char *log = server_file(server, "ctl.log");
  char *server_log = server_file(server, "server.log");
  char timeout[16];
  snprintf(timeout, sizeof(timeout), "%d", LAB_START_TIMEOUT_S);
  const char *argv[] = {pg_ctl,     "start", "-D", server->datadir, "-l",
                        server_log, "-w",    "-t", timeout,         NULL};
  off_t log_start = pgs_lab_file_size(server_log);
  pgs_status_t rc = pgs_lab_run(lab, log, server->dir, argv);
  if (rc != PGS_OK) {
    fprintf(stderr, "  server log (%s):\n", server_log);
    pgs_lab_print_log(server_log, log_start, 4096);
  }
  free(pg_ctl);
  free(log);
  free(server_log);
  return rc;
}

/* pg_ctl -w waits for the postmaster to report ready; a server found already
 * running may still be starting, so wait until it takes connections. */
static pgs_status_t wait_accepting(const lab_server_t *server) {
  char err[512] = "";
  double deadline = pgs_lab_now() + LAB_START_TIMEOUT_S;
  while (pgs_lab_now() < deadline) {
    PGconn *conn = pgs_lab_connect(server->hosts[0], server->port, "postgres", err, sizeof(err));
    if (conn) {
      PQfinish(conn);
      return PGS_OK;
    }
    pgs_lab_sleep_ms(200);
  }
  pgs_lab_fail("%s %s:%d runs (pid in %s/postmaster.pid) but refuses connections: %s",
               server->label, server->hosts[0], server->port, server->datadir, err);
  return PGS_EIO;
}

pgs_status_t pgs_lab_server_ensure(const lab_t *lab, const lab_server_t *server) {
  pgs_status_t rc = pgs_lab_mkdir(lab, server->dir, true);
  if (rc == PGS_OK && !datadir_has(server->datadir, "PG_VERSION")) {
    rc = check_port_free(server); /* before a build that would be wasted */
    if (rc == PGS_OK) rc = server_build(lab, server);
  }
  if (rc == PGS_OK) rc = check_role(server);
  if (rc != PGS_OK) return rc;
  if (pgs_lab_server_pid(server->datadir) > 0) {
    printf("lab: %s %s:%d: already running\n", server->label, server->hosts[0], server->port);
    return wait_accepting(server);
  }
  rc = check_port_free(server);
  if (rc == PGS_OK) rc = server_configure(lab, server);
  if (rc == PGS_OK) rc = server_start(lab, server);
  if (rc == PGS_OK) rc = wait_accepting(server);
  if (rc == PGS_OK)
    printf("lab: %s %s:%d: started\n", server->label, server->hosts[0], server->port);
  return rc;
}

/* ---- roles and databases ---- */

/* 1 when SQL (with NAME as $1) returns a row, 0 when not, -1 on error. */
static int row_exists(PGconn *conn, const char *sql, const char *name, char *err, size_t errlen) {
  const char *params[] = {name};
  PGresult *res = pgs_lab_query(conn, sql, 1, params, err, errlen);
  if (res == NULL) return -1;
  int found = PQntuples(res) > 0;
  PQclear(res);
  return found;
}

/* NAME quoted as an SQL identifier, in memory the caller frees. */
static char *quote_identifier(PGconn *conn, const char *name) {
  char *quoted = PQescapeIdentifier(conn, name, strlen(name));
  char *copy = pgs_xstrdup(quoted ? quoted : "\"\"");
  PQfreemem(quoted);
  return copy;
}

/* Run SQL and free it. */
static bool exec_owned(PGconn *conn, char *sql, char *err, size_t errlen) {
  PGresult *res = pgs_lab_query(conn, sql, 0, NULL, err, errlen);
  bool ok = res != NULL;
  PQclear(res);
  free(sql);
  return ok;
}

/* Create the role or database NAME unless EXISTS_SQL ($1 = NAME) finds it. */
static pgs_status_t ensure_object(PGconn *conn, const lab_server_t *server, const char *kind,
                                  const char *exists_sql, const char *create_fmt,
                                  const char *name) {
  char err[512];
  int found = row_exists(conn, exists_sql, name, err, sizeof(err));
  if (found == 1) return PGS_OK;
  if (found == 0) {
    char *quoted = quote_identifier(conn, name);
    bool created = exec_owned(conn, pgs_lab_format(create_fmt, quoted), err, sizeof(err));
    free(quoted);
    if (created) {
      printf("lab: %s %s:%d: created %s %s\n", server->label, server->hosts[0], server->port, kind,
             name);
      return PGS_OK;
    }
  }
  pgs_lab_fail("%s %s:%d: cannot create %s %s: %s", server->label, server->hosts[0], server->port,
               kind, name, err);
  return PGS_EIO;
}

/* Roles the nodes log in as may use DATABASE and create in its public schema
 * (which PostgreSQL 15 no longer opens to everyone). CONN is on "postgres". */
static pgs_status_t grant_roles(const lab_t *lab, PGconn *conn, const lab_server_t *server,
                                const char *database) {
  char err[512] = "";
  PGconn *dbconn = pgs_lab_connect(server->hosts[0], server->port, database, err, sizeof(err));
  char *db = quote_identifier(conn, database);
  bool ok = dbconn != NULL;
  for (int r = 0; r < lab->nroles && ok; r++) {
    char *role = quote_identifier(conn, lab->roles[r]);
    ok = exec_owned(conn, pgs_lab_format("GRANT ALL ON DATABASE %s TO %s", db, role), err,
                    sizeof(err)) &&
         exec_owned(dbconn, pgs_lab_format("GRANT ALL ON SCHEMA public TO %s", role), err,
                    sizeof(err));
    free(role);
  }
  free(db);
  PQfinish(dbconn);
  if (ok) return PGS_OK;
  pgs_lab_fail("%s %s:%d: cannot grant roles access to database %s: %s", server->label,
               server->hosts[0], server->port, database, err);
  return PGS_EIO;
}

pgs_status_t pgs_lab_server_create_databases(const lab_t *lab, const lab_server_t *server) {
  char err[512];
  PGconn *conn = pgs_lab_connect(server->hosts[0], server->port, "postgres", err, sizeof(err));
  if (conn == NULL) {
    pgs_lab_fail("%s %s:%d: %s", server->label, server->hosts[0], server->port, err);
    return PGS_EIO;
  }
  pgs_status_t rc = PGS_OK;
  for (int i = 0; i < lab->nroles && rc == PGS_OK; i++)
    rc = ensure_object(conn, server, "role", "SELECT 1 FROM pg_roles WHERE rolname = $1",
                       "CREATE ROLE %s LOGIN", lab->roles[i]);
  for (int i = 0; i < server->ndatabases && rc == PGS_OK; i++) {
    rc = ensure_object(conn, server, "database", "SELECT 1 FROM pg_database WHERE datname = $1",
                       "CREATE DATABASE %s", server->databases[i]);
    if (rc == PGS_OK && lab->nroles > 0) rc = grant_roles(lab, conn, server, server->databases[i]);
  }
  PQfinish(conn);
  return rc;
}

/* ---- replicas ---- */

/* Poll SQL (with $1 = NAME when NAME is given) on SERVER until it returns a
 * row or TIMEOUT_S pass; asks at least once. */
static bool poll_until_row(const lab_server_t *server, const char *sql, const char *name,
                           int timeout_s, char *err, size_t errlen) {
  double deadline = pgs_lab_now() + timeout_s;
  PGconn *conn = NULL;
  const char *params[] = {name};
  bool found = false;
  for (;;) {
    if (conn == NULL)
      conn = pgs_lab_connect(server->hosts[0], server->port, "postgres", err, errlen);
    PGresult *res = conn ? pgs_lab_query(conn, sql, name ? 1 : 0, params, err, errlen) : NULL;
    found = res && PQntuples(res) > 0;
    if (res == NULL && conn) {
      PQfinish(conn);
      conn = NULL;
    }
    PQclear(res);
    if (found || pgs_lab_now() >= deadline) break;
    pgs_lab_sleep_ms(200);
  }
  PQfinish(conn);
  return found;
}

static pgs_status_t wait_streaming(const lab_t *lab, const lab_server_t *server) {
  const lab_server_t *upstream = &lab->servers[server->upstream];
  char err[512] = "";
  if (poll_until_row(server, "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'", NULL,
                     LAB_REPLICA_TIMEOUT_S, err, sizeof(err)))
    return PGS_OK;
  char *server_log = server_file(server, "server.log");
  pgs_lab_fail("%s %s:%d: not streaming from %s:%d after %d s%s%s; server log (%s):", server->label,
               server->hosts[0], server->port, upstream->hosts[0], upstream->port,
               LAB_REPLICA_TIMEOUT_S, err[0] ? ": " : "", err, server_log);
  pgs_lab_print_log(server_log, 0, 4096);
  free(server_log);
  return PGS_EIO;
}

/* Databases created on the primary this run reach the replica by WAL replay,
 * which `lab lag ... pause` may have stopped: then there is no point waiting. */
static pgs_status_t wait_databases(const lab_t *lab, const lab_server_t *server) {
  const lab_server_t *upstream = &lab->servers[server->upstream];
  const char *exists_sql = "SELECT 1 FROM pg_database WHERE datname = $1";
  char err[512] = "";
  bool paused =
      poll_until_row(server, "SELECT 1 WHERE pg_is_wal_replay_paused()", NULL, 0, err, sizeof(err));
  for (int i = 0; i < upstream->ndatabases; i++) {
    const char *database = upstream->databases[i];
    if (poll_until_row(server, exists_sql, database, paused ? 0 : LAB_REPLICA_TIMEOUT_S, err,
                       sizeof(err)))
      continue;
    if (paused)
      pgs_lab_fail(
          "%s %s:%d: database %s cannot replicate while WAL replay is paused; "
          "resume it with `pgshardctl lab lag ... resume`",
          server->label, server->hosts[0], server->port, database);
    else
      pgs_lab_fail(
          "%s %s:%d: database %s has not replicated after %d s (a long "
          "recovery_min_apply_delay? `pgshardctl lab lag ... resume` clears it)",
          server->label, server->hosts[0], server->port, database, LAB_REPLICA_TIMEOUT_S);
    return PGS_EIO;
  }
  return PGS_OK;
}

pgs_status_t pgs_lab_server_wait_replica(const lab_t *lab, const lab_server_t *server) {
  const lab_server_t *upstream = &lab->servers[server->upstream];
  if (wait_streaming(lab, server) != PGS_OK || wait_databases(lab, server) != PGS_OK)
    return PGS_EIO;
  printf("lab: %s %s:%d: streaming from %s:%d\n", server->label, server->hosts[0], server->port,
         upstream->hosts[0], upstream->port);
  return PGS_OK;
}

/* ---- stopping ---- */

/* Stop the server in SERVER_DIR if one runs there. Needs no config: `down`
 * stops whatever the lab directory holds. */
pgs_status_t pgs_lab_server_stop(const lab_t *lab, const char *server_dir) {
  char *datadir = pgs_lab_format("%s/data", server_dir);
  pid_t pid = pgs_lab_server_pid(datadir);
  pgs_status_t rc = PGS_OK;
  if (pid > 0) {
    char *pg_ctl = tool_path(lab, "pg_ctl");
    char *log = pgs_lab_format("%s/ctl.log", server_dir);
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%d", LAB_START_TIMEOUT_S);
    const char *argv[] = {pg_ctl, "stop", "-D", datadir, "-m", "fast", "-w", "-t", timeout, NULL};
    rc = pgs_lab_run(lab, log, server_dir, argv);
    if (rc == PGS_OK)
      printf("lab: stopped the %s in %s (pid %ld)\n",
             datadir_has(datadir, "standby.signal") ? "replica" : "primary", server_dir, (long)pid);
    free(pg_ctl);
    free(log);
  }
  free(datadir);
  return rc;
}
