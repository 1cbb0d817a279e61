/*
 * lab_status.c — looking at a lab and steering its replicas: `lab status`
 * (a line per config node and one per proxy), `lab lag` (pause, resume
 * or delay WAL replay on one replica, which is how tests get real lag) and
 * `lab wait` (until every replica has replayed what its primary committed).
 *
 * Both talk to the servers over libpq as the lab superuser and change no file
 * of the lab directory, so neither takes the lock `up` and `down` hold. A
 * replica's lag is the distance in bytes from its primary's current WAL
 * position to the position it has replayed; the primary is asked first, so
 * writes racing the probe can only make a lag look smaller, never invent one.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "lab.h"

typedef struct server_probe {
  bool reachable;
  bool in_recovery;
  bool paused;
  bool streaming;
  bool has_lsn;
  uint64_t lsn;   /* primary: current WAL position; replica: last replayed */
  char delay[32]; /* recovery_min_apply_delay */
  char error[256];
} server_probe_t;

/* pg_is_wal_replay_paused() and pg_current_wal_lsn() each fail on the wrong
 * side of recovery, hence the CASEs. */
static const char probe_sql[] =
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END,"
    " CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,"
    " current_setting('recovery_min_apply_delay'),"
    " EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')";

/* "16/B374D848" to a byte position. */
static bool parse_lsn(const char *text, uint64_t *lsn) {
  unsigned int high, low;
  if (text == NULL || sscanf(text, "%X/%X", &high, &low) != 2) return false;
  *lsn = ((uint64_t)high << 32) | low;
  return true;
}

static void probe_server(const lab_server_t *server, server_probe_t *probe) {
  memset(probe, 0, sizeof(*probe));
  PGconn *conn = pgs_lab_connect(server->hosts[0], server->port, "postgres", probe->error,
                                 sizeof(probe->error));
  if (conn == NULL) return;
  PGresult *res = pgs_lab_query(conn, probe_sql, 0, NULL, probe->error, sizeof(probe->error));
  if (res && PQntuples(res) == 1) {
    probe->reachable = true;
    probe->in_recovery = !strcmp(PQgetvalue(res, 0, 0), "t");
    probe->has_lsn = !PQgetisnull(res, 0, 1) && parse_lsn(PQgetvalue(res, 0, 1), &probe->lsn);
    probe->paused = !strcmp(PQgetvalue(res, 0, 2), "t");
    snprintf(probe->delay, sizeof(probe->delay), "%s", PQgetvalue(res, 0, 3));
    probe->streaming = !strcmp(PQgetvalue(res, 0, 4), "t");
  }
  PQclear(res);
  PQfinish(conn);
}

static void format_address(const char *host, int port, char *buf, size_t len) {
  snprintf(buf, len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

static void append_note(char *notes, size_t len, const char *note) {
  size_t used = strlen(notes);
  snprintf(notes + used, len - used, "%s%s", used ? ", " : "", note);
}

static void replica_notes(const server_probe_t *probe, char *notes, size_t len) {
  char delay[64];
  append_note(notes, len, probe->streaming ? "streaming" : "not streaming");
  if (probe->paused) append_note(notes, len, "replay paused");
  if (probe->delay[0] && strcmp(probe->delay, "0")) {
    snprintf(delay, sizeof(delay), "apply delay %s", probe->delay);
    append_note(notes, len, delay);
  }
  if (!probe->in_recovery) append_note(notes, len, "NOT IN RECOVERY: promoted?");
}

/* One node's line; returns whether it counts as running. */
static bool print_node(const lab_t *lab, const lab_node_t *ln, const server_probe_t *probes) {
  char name[160], role[32], address[300], lag[32] = "-", notes[512] = "";
  const char *state, *recovery = "-";
  snprintf(name, sizeof(name), "%s.%s", ln->database->name, ln->shard->name);
  if (ln->replica_index < 0)
    snprintf(role, sizeof(role), "primary");
  else
    snprintf(role, sizeof(role), "replica %d", ln->replica_index);
  format_address(ln->node->host, ln->node->port, address, sizeof(address));
  bool running = true;
  if (ln->server < 0) {
    state = "remote";
    append_note(notes, sizeof(notes), "not on loopback: not managed by the lab");
  } else {
    const lab_server_t *server = &lab->servers[ln->server];
    const server_probe_t *probe = &probes[ln->server];
    running = probe->reachable;
    state = running ? "running" : "stopped";
    if (running) recovery = probe->in_recovery ? "yes" : "no";
    if (!running && pgs_lab_server_pid(server->datadir) > 0) {
      state = "failing";
      append_note(notes, sizeof(notes), probe->error);
    } else if (running && server->role == LAB_REPLICA) {
      const server_probe_t *primary = &probes[server->upstream];
      if (primary->has_lsn && !primary->in_recovery && probe->has_lsn && probe->in_recovery)
        snprintf(lag, sizeof(lag), "%" PRIu64,
                 primary->lsn > probe->lsn ? primary->lsn - probe->lsn : 0);
      replica_notes(probe, notes, sizeof(notes));
    } else if (running && probe->in_recovery) {
      append_note(notes, sizeof(notes), "IN RECOVERY: not a primary");
    }
  }
  printf("%-20s %-10s %-22s %-8s %-8s %-10s %s\n", name, role, address, state, recovery, lag,
         notes);
  return running;
}

/* Proxy INDEX's line; returns whether it runs. */
static bool print_proxy(const lab_t *lab, int index) {
  char name[32], address[300], notes[512];
  const char *host = pgs_lab_proxy_probe_host(lab->config->listen_host);
  int port = pgs_lab_proxy_port(lab, index);
  pid_t pid = pgs_lab_proxy_pid(lab, index);
  if (index == 0)
    snprintf(name, sizeof(name), "pgshard");
  else
    snprintf(name, sizeof(name), "pgshard-%d", index);
  format_address(lab->config->listen_host, port, address, sizeof(address));
  if (pid > 0) {
    snprintf(notes, sizeof(notes), "pid %ld, %s", (long)pid,
             pgs_lab_port_accepts(host, port) ? "listening" : "NOT LISTENING");
  } else {
    char *path = pgs_lab_proxy_file(lab, index, "pid");
    snprintf(notes, sizeof(notes), "no live pid in %s", path);
    free(path);
  }
  printf("%-20s %-10s %-22s %-8s %-8s %-10s %s\n", name, "proxy", address,
         pid > 0 ? "running" : "stopped", "-", "-", notes);
  return pid > 0;
}

int pgs_lab_status(const lab_t *lab, bool with_proxy) {
  server_probe_t *probes = pgs_xcalloc((size_t)lab->nservers + 1, sizeof(*probes));
  for (int pass = 0; pass < 2; pass++) {
    lab_role_t role = pass == 0 ? LAB_PRIMARY : LAB_REPLICA;
    for (int i = 0; i < lab->nservers; i++)
      if (lab->servers[i].role == role) probe_server(&lab->servers[i], &probes[i]);
  }
  bool all_running = true;
  printf("%-20s %-10s %-22s %-8s %-8s %-10s %s\n", "NODE", "ROLE", "ADDRESS", "STATE", "RECOVERY",
         "LAG_BYTES", "NOTES");
  for (int i = 0; i < lab->nnodes; i++) all_running &= print_node(lab, &lab->nodes[i], probes);
  /* Proxy 0 always (a lab runs one unless told otherwise), then every other
   * proxy `up --proxies N` started, as its pid file tells. */
  for (int i = 0; with_proxy && i < LAB_MAX_PROXIES; i++)
    if (i == 0 || pgs_lab_proxy_known(lab, i)) all_running &= print_proxy(lab, i);
  free(probes);
  return all_running ? 0 : 1;
}

/* ---- lag ---- */

static const pgs_node_t *find_replica(const lab_t *lab, const char *target, const char *index,
                                      int *replica_index) {
  const char *dot = strchr(target, '.');
  char dbname[PGS_MAX_NAME + 1];
  if (dot == NULL || dot == target || (size_t)(dot - target) > PGS_MAX_NAME) {
    pgs_lab_fail("lab lag: expected DB.SHARD, got \"%s\"", target);
    return NULL;
  }
  snprintf(dbname, sizeof(dbname), "%.*s", (int)(dot - target), target);
  const pgs_database_t *db = pgs_config_find_database(lab->config, dbname);
  const pgs_shard_t *shard = NULL;
  for (int s = 0; db && s < db->nshards && !shard; s++)
    if (!strcmp(db->shards[s].name, dot + 1)) shard = &db->shards[s];
  if (shard == NULL) {
    pgs_lab_fail("lab lag: %s names no shard [shard.%s] in %s", target, target, lab->config_path);
    return NULL;
  }
  char *end;
  errno = 0;
  long n = strtol(index, &end, 10);
  if (errno || end == index || *end || n < 0 || n >= shard->nreplicas) {
    if (shard->nreplicas == 0)
      pgs_lab_fail("lab lag: shard %s has no replicas", target);
    else
      pgs_lab_fail("lab lag: shard %s has replicas 0 to %d, not \"%s\"", target,
                   shard->nreplicas - 1, index);
    return NULL;
  }
  *replica_index = (int)n;
  return &shard->replicas[n];
}

static bool run_sql(PGconn *conn, const char *sql, const char *what) {
  char err[512];
  PGresult *res = pgs_lab_query(conn, sql, 0, NULL, err, sizeof(err));
  if (res == NULL) pgs_lab_fail("%s: %s", what, err);
  PQclear(res);
  return res != NULL;
}

/* recovery_min_apply_delay holds every commit back MS milliseconds; 0 removes it. */
static bool set_delay(PGconn *conn, long ms, const char *what) {
  char sql[128];
  if (ms == 0)
    snprintf(sql, sizeof(sql), "ALTER SYSTEM RESET recovery_min_apply_delay");
  else
    snprintf(sql, sizeof(sql), "ALTER SYSTEM SET recovery_min_apply_delay = '%ldms'", ms);
  return run_sql(conn, sql, what) && run_sql(conn, "SELECT pg_reload_conf()", what);
}

static bool parse_ms(const char *text, long *ms) {
  char *end;
  errno = 0;
  *ms = text ? strtol(text, &end, 10) : -1;
  if (text && !errno && end != text && *end == '\0' && *ms >= 0 && *ms <= INT_MAX) return true;
  pgs_lab_fail("lab lag: delay needs milliseconds between 0 and %d, got \"%s\"", INT_MAX,
               text ? text : "");
  return false;
}

static int lag_usage(void) {
  fprintf(stderr,
          "usage: pgshardctl lab lag -c FILE [--dir DIR] DB.SHARD N pause|resume|delay MS\n");
  return 2;
}

int pgs_lab_lag(const lab_t *lab, int argc, char **argv) {
  if (argc < 3 || argc > 4) return lag_usage();
  const char *action = argv[2];
  bool delay = !strcmp(action, "delay");
  long ms = 0;
  if (!delay && strcmp(action, "pause") && strcmp(action, "resume")) return lag_usage();
  if (delay != (argc == 4)) return lag_usage();
  if (delay && !parse_ms(argv[3], &ms)) return 2;
  int index;
  const pgs_node_t *node = find_replica(lab, argv[0], argv[1], &index);
  if (node == NULL) return 1;

  char what[400], err[512];
  snprintf(what, sizeof(what), "%s replica %d (%s:%d)", argv[0], index, node->host, node->port);
  PGconn *conn = pgs_lab_connect(node->host, node->port, "postgres", err, sizeof(err));
  if (conn == NULL) {
    pgs_lab_fail("%s: %s", what, err);
    return 1;
  }
  bool ok;
  if (!strcmp(action, "pause"))
    ok = run_sql(conn, "SELECT pg_wal_replay_pause()", what);
  else if (!strcmp(action, "resume"))
    ok = run_sql(conn, "SELECT pg_wal_replay_resume()", what) && set_delay(conn, 0, what);
  else
    ok = set_delay(conn, ms, what);
  PQfinish(conn);
  if (!ok) return 1;
  if (delay && ms > 0)
    printf("lab: %s: every commit now replays %ld ms late\n", what, ms);
  else if (delay)
    printf("lab: %s: apply delay removed\n", what);
  else if (!strcmp(action, "pause"))
    printf("lab: %s: WAL replay paused\n", what);
  else
    printf("lab: %s: WAL replay resumed, apply delay removed\n", what);
  return 0;
}

/* ---- wait ---- */

/* The server a replica's stream comes from at the end of its chain. */
static int root_of(const lab_t *lab, int server) {
  for (int hops = 0; hops < lab->nservers && lab->servers[server].upstream >= 0; hops++)
    server = lab->servers[server].upstream;
  return server;
}

/*
 * The target is the end of a transactional WAL message committed with
 * synchronous_commit = on: it is inserted after every commit record the
 * primary had written when it was asked, and flushed before the call
 * returns. The lab's servers run with synchronous_commit = off, so the
 * primary's flush or insert position alone can miss the last asynchronous
 * commit (WAL not yet flushed is not yet sent), and a transaction that wrote
 * no WAL of its own commits asynchronously whatever the setting.
 */
static bool primary_target(const lab_server_t *server, char *lsn, size_t cap, char *err,
                           size_t errlen) {
  PGconn *conn = pgs_lab_connect(server->hosts[0], server->port, "postgres", err, errlen);
  if (conn == NULL) return false;
  PGresult *res = pgs_lab_query(conn, "SET synchronous_commit = on", 0, NULL, err, errlen);
  PQclear(res);
  if (res) {
    res = pgs_lab_query(conn, "SELECT pg_logical_emit_message(true, 'pgshard-lab', 'wait')::text",
                        0, NULL, err, errlen);
    if (res) snprintf(lsn, cap, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
  }
  PQfinish(conn);
  return res != NULL;
}

static bool replayed(const lab_server_t *server, const char *lsn, char *err, size_t errlen) {
  PGconn *conn = pgs_lab_connect(server->hosts[0], server->port, "postgres", err, errlen);
  if (conn == NULL) return false;
  const char *params[] = {lsn};
  PGresult *res =
      pgs_lab_query(conn, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", 1, params, err, errlen);
  bool done = res && !strcmp(PQgetvalue(res, 0, 0), "t");
  if (res && !done) snprintf(err, errlen, "replayed less than %s", lsn);
  PQclear(res);
  PQfinish(conn);
  return done;
}

int pgs_lab_wait(const lab_t *lab, int timeout_s) {
  double start = pgs_lab_now();
  char err[512];
  char(*targets)[32] = pgs_xcalloc((size_t)(lab->nservers ? lab->nservers : 1), sizeof(*targets));
  int nreplicas = 0, rc = 0;
  for (int i = 0; i < lab->nservers && rc == 0; i++) {
    const lab_server_t *server = &lab->servers[i];
    if (server->role != LAB_PRIMARY) continue;
    if (!primary_target(server, targets[i], sizeof(targets[i]), err, sizeof(err))) {
      pgs_lab_fail("lab wait: %s (port %d): %s", server->label, server->port, err);
      rc = 1;
    }
  }
  for (int i = 0; i < lab->nservers && rc == 0; i++) {
    const lab_server_t *server = &lab->servers[i];
    if (server->role != LAB_REPLICA) continue;
    const char *target = targets[root_of(lab, i)];
    if (!target[0]) continue; /* its primary is not one the lab starts */
    nreplicas++;
    while (!replayed(server, target, err, sizeof(err))) {
      if (pgs_lab_now() - start > timeout_s) {
        pgs_lab_fail("lab wait: %s (port %d) did not replay to %s within %d s: %s", server->label,
                     server->port, target, timeout_s, err);
        rc = 1;
        break;
      }
      pgs_lab_sleep_ms(20);
    }
  }
  free(targets);
  if (rc == 0)
    printf("lab: wait: %d replica%s replayed what %s primar%s had committed (%.0f ms)\n", nreplicas,
           nreplicas == 1 ? "" : "s", nreplicas == 1 ? "its" : "their",
           nreplicas == 1 ? "y" : "ies", (pgs_lab_now() - start) * 1000);
  return rc;
}
