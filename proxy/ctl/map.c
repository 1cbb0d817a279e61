/*
 * map.c — `pgshardctl map push|show|status|wait`: the shard map kept in
 * PostgreSQL ([pgshard] map_source; sql/map_source.sql, proxy/mapsource.c).
 *
 * push validates FILE's map sections (every section but [pgshard]) with
 * the config code pgshard runs, combined with the [pgshard] section of -c
 * CONFIG when given, then inserts them as the next version and NOTIFYs
 * pgshard_map in the same transaction: a listener that hears it reads the
 * version committed. Versions are numbered under a lock on pgshard.map, so
 * two pushes never take the same number. A push of the text the latest
 * version already holds inserts nothing (a rerun is harmless).
 *
 * An instance is live when its heartbeat (about every second) is at most
 * --live-seconds old (3 by default).
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "ctl.h"
#include "map_source_sql.h"
#include "pgshard/mapsource.h"

static double now_seconds(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "pgshardctl: %s: %s\n", path, strerror(errno));
    return NULL;
  }
  size_t n;
  char *buf = pgs_read_all(f, &n);
  fclose(f);
  if (strlen(buf) != n) {
    fprintf(stderr, "pgshardctl: %s: holds a NUL byte\n", path);
    free(buf);
    return NULL;
  }
  return buf;
}

static PGconn *source_connect(const char *conninfo) {
  const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
  const char *values[] = {"5", "pgshardctl map", conninfo, NULL};
  PGconn *conn = PQconnectdbParams(keys, values, 1);
  if (PQstatus(conn) != CONNECTION_OK) {
    fprintf(stderr, "pgshardctl: map_source: %s", PQerrorMessage(conn));
    PQfinish(conn);
    return NULL;
  }
  return conn;
}

static bool exec_ok(PGconn *conn, const char *sql) {
  PGresult *res = PQexec(conn, sql);
  bool ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
  if (!ok) fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
  PQclear(res);
  return ok;
}

/* Print CONFIG's errors (those about the map name its label and line). */
static bool report_errors(const pgs_config_t *c, const char *path) {
  for (int i = 0; i < c->nerrors; i++) {
    if (c->errors[i].line > 0)
      fprintf(stderr, "%s:%d: %s\n", path, c->errors[i].line, c->errors[i].message);
    else
      fprintf(stderr, "%s: %s\n", path ? path : "pgshardctl", c->errors[i].message);
  }
  return c->nerrors == 0;
}

int pgs_ctl_map_push_text(const char *conninfo, const char *config_path, const char *map_text,
                          const char *label, const char *note, int64_t *version,
                          double *committed_at) {
  pgs_config_t *c = pgs_config_load_map(config_path, map_text, label, 0);
  bool valid = report_errors(c, config_path);
  pgs_config_unref(c);
  if (!valid) {
    fprintf(stderr, "pgshardctl: %s: refused; nothing pushed\n", label);
    return 1;
  }
  PGconn *conn = source_connect(conninfo);
  if (conn == NULL) return 1;
  int rc = 1;
  if (!exec_ok(conn, MAP_SOURCE_SQL) || !exec_ok(conn, "BEGIN") ||
      !exec_ok(conn, "LOCK TABLE pgshard.map IN EXCLUSIVE MODE"))
    goto out;
  PGresult *res = PQexec(conn,
                         "SELECT version, body FROM pgshard.map ORDER BY version DESC "
                         "LIMIT 1");
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
    PQclear(res);
    goto out;
  }
  if (PQntuples(res) == 1 && !strcmp(PQgetvalue(res, 0, 1), map_text)) {
    *version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    (void)exec_ok(conn, "ROLLBACK");
    *committed_at = 0;
    printf("map version %lld already holds this map: nothing pushed\n", (long long)*version);
    rc = 0;
    goto out;
  }
  PQclear(res);
  const char *params[] = {map_text, note};
  res = PQexecParams(conn,
                     "WITH v AS (INSERT INTO pgshard.map (version, body, note) "
                     "SELECT coalesce(max(version), 0) + 1, $1, $2 FROM pgshard.map "
                     "RETURNING version) "
                     "SELECT version, pg_notify('" PGS_MAP_CHANNEL "', version::text) FROM v",
                     2, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
    fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
    PQclear(res);
    goto out;
  }
  *version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
  PQclear(res);
  if (!exec_ok(conn, "COMMIT")) goto out;
  *committed_at = now_seconds();
  printf("map version %lld pushed (committed_at=%.6f)\n", (long long)*version, *committed_at);
  rc = 0;
out:
  PQfinish(conn);
  return rc;
}

int pgs_ctl_map_push_file(const char *conninfo, const char *config_path, const char *file,
                          const char *note, int64_t *version, double *committed_at) {
  char *text = read_text(file);
  if (text == NULL) return 1;
  char *map_text = pgs_config_map_text(text);
  int rc = pgs_ctl_map_push_text(conninfo, config_path, map_text, file, note ? note : file, version,
                                 committed_at);
  free(map_text);
  free(text);
  return rc;
}

int pgs_ctl_map_live_instances(const char *conninfo, int live_seconds, char ***listens) {
  PGconn *conn = source_connect(conninfo);
  if (conn == NULL) return -1;
  char live[16];
  snprintf(live, sizeof(live), "%d", live_seconds);
  const char *params[] = {live};
  if (!exec_ok(conn, MAP_SOURCE_SQL)) {
    PQfinish(conn);
    return -1;
  }
  PGresult *res = PQexecParams(conn,
                               "SELECT listen FROM pgshard.instance WHERE listen IS NOT NULL "
                               "AND seen_at > now() - make_interval(secs => $1::int) ORDER BY id",
                               1, NULL, params, NULL, NULL, 0);
  int n = -1;
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
  } else {
    n = PQntuples(res);
    *listens = pgs_xcalloc((size_t)n + 1, sizeof(**listens));
    for (int i = 0; i < n; i++) (*listens)[i] = pgs_xstrdup(PQgetvalue(res, i, 0));
  }
  PQclear(res);
  PQfinish(conn);
  return n;
}

int pgs_ctl_map_wait(const char *conninfo, int64_t version, int timeout_ms, int live_seconds) {
  PGconn *conn = source_connect(conninfo);
  if (conn == NULL) return 1;
  char v[24], live[16];
  snprintf(v, sizeof(v), "%lld", (long long)version);
  snprintf(live, sizeof(live), "%d", live_seconds);
  const char *params[] = {v, live};
  double start = now_seconds(), deadline = start + timeout_ms / 1000.0;
  int rc = 1;
  for (;;) {
    PGresult *res = PQexecParams(
        conn,
        "SELECT count(*), count(*) FILTER (WHERE map_version >= $1::bigint), "
        "coalesce(string_agg(id || ' (' || coalesce(map_version, 0) || ')', ', ' ORDER BY id) "
        "FILTER (WHERE coalesce(map_version, 0) < $1::bigint), '') "
        "FROM pgshard.instance WHERE seen_at > now() - make_interval(secs => $2::int)",
        2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
      fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
      PQclear(res);
      break;
    }
    long live_n = atol(PQgetvalue(res, 0, 0)), done = atol(PQgetvalue(res, 0, 1));
    if (done == live_n) {
      if (live_n == 0)
        fprintf(stderr, "pgshardctl: no live pgshard instance reports to this map_source\n");
      printf("map version %lld served by every live instance (%ld) after %.0f ms\n",
             (long long)version, live_n, (now_seconds() - start) * 1000);
      PQclear(res);
      rc = 0;
      break;
    }
    if (now_seconds() >= deadline) {
      fprintf(stderr,
              "pgshardctl: map version %lld: %ld of %ld live instances serve it after %d "
              "ms; behind: %s\n",
              (long long)version, done, live_n, timeout_ms, PQgetvalue(res, 0, 2));
      PQclear(res);
      break;
    }
    PQclear(res);
    usleep(20 * 1000);
  }
  PQfinish(conn);
  return rc;
}

static int show(PGconn *conn, int64_t version) {
  char v[24];
  snprintf(v, sizeof(v), "%lld", (long long)version);
  const char *params[] = {v};
  PGresult *res = PQexecParams(conn,
                               "SELECT version, body, created_at, coalesce(note, '') "
                               "FROM pgshard.map WHERE $1::bigint = 0 OR version = $1::bigint "
                               "ORDER BY version DESC LIMIT 1",
                               1, NULL, params, NULL, NULL, 0);
  int rc = 1;
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
  } else if (PQntuples(res) == 0) {
    if (version)
      fprintf(stderr, "pgshardctl: no map version %lld\n", (long long)version);
    else
      fprintf(stderr, "pgshardctl: map_source holds no version yet\n");
  } else {
    printf("; map version %s, created %s%s%s\n", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 2),
           *PQgetvalue(res, 0, 3) ? ": " : "", PQgetvalue(res, 0, 3));
    fputs(PQgetvalue(res, 0, 1), stdout);
    rc = 0;
  }
  PQclear(res);
  return rc;
}

static int status(PGconn *conn, int live_seconds) {
  char live[16];
  snprintf(live, sizeof(live), "%d", live_seconds);
  const char *params[] = {live};
  PGresult *res = PQexecParams(
      conn,
      "SELECT (SELECT coalesce(max(version), 0) FROM pgshard.map), id, coalesce(listen, ''), "
      "coalesce(pid, 0), coalesce(map_version, 0), "
      "coalesce(round(extract(epoch FROM now() - seen_at)::numeric, 1)::text, '-'), "
      "coalesce(seen_at > now() - make_interval(secs => $1::int), false) "
      "FROM pgshard.instance ORDER BY id",
      1, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    fprintf(stderr, "pgshardctl: map_source: %s", PQresultErrorMessage(res));
    PQclear(res);
    return 1;
  }
  if (PQntuples(res) == 0) {
    printf("no pgshard instance has reported\n");
  } else {
    printf("latest map version %s\n", PQgetvalue(res, 0, 0));
    printf("%-32s %-24s %8s %8s %8s %s\n", "instance", "listen", "pid", "version", "seen_s",
           "live");
    for (int i = 0; i < PQntuples(res); i++)
      printf("%-32s %-24s %8s %8s %8s %s\n", PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
             PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), PQgetvalue(res, i, 5),
             !strcmp(PQgetvalue(res, i, 6), "t") ? "live" : "gone");
  }
  PQclear(res);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: pgshardctl map push FILE [--source CONNINFO | -c CONFIG] [--note TEXT]\n"
          "       pgshardctl map show [--version N] [--source CONNINFO | -c CONFIG]\n"
          "       pgshardctl map status [--live-seconds N] [--source CONNINFO | -c CONFIG]\n"
          "       pgshardctl map wait VERSION [--timeout-ms N] [--live-seconds N]\n"
          "                                   [--source CONNINFO | -c CONFIG]\n");
}

int pgs_ctl_map(int argc, char **argv) {
  static const struct option options[] = {{"source", required_argument, NULL, 's'},
                                          {"config", required_argument, NULL, 'c'},
                                          {"note", required_argument, NULL, 'n'},
                                          {"version", required_argument, NULL, 'v'},
                                          {"timeout-ms", required_argument, NULL, 't'},
                                          {"live-seconds", required_argument, NULL, 'l'},
                                          {NULL, 0, NULL, 0}};
  if (argc < 1) {
    usage();
    return 2;
  }
  const char *verb = argv[0];
  const char *source = NULL, *config_path = NULL, *note = NULL;
  long long version = 0;
  int timeout_ms = 30000, live_seconds = PGS_CTL_MAP_LIVE_SECONDS, opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "c:", options, NULL)) != -1) {
    switch (opt) {
    case 's':
      source = optarg;
      break;
    case 'c':
      config_path = optarg;
      break;
    case 'n':
      note = optarg;
      break;
    case 'v':
      version = atoll(optarg);
      break;
    case 't':
      timeout_ms = atoi(optarg);
      break;
    case 'l':
      live_seconds = atoi(optarg);
      break;
    default:
      usage();
      return 2;
    }
  }
  char **args = argv + optind;
  int nargs = argc - optind;
  bool push = !strcmp(verb, "push"), wait = !strcmp(verb, "wait");
  if ((!push && !wait && strcmp(verb, "show") && strcmp(verb, "status")) ||
      nargs != (push || wait ? 1 : 0) || (source == NULL) == (config_path == NULL) ||
      live_seconds < 1 || timeout_ms < 0) {
    if ((source == NULL) == (config_path == NULL))
      fprintf(stderr, "pgshardctl: map: give --source CONNINFO or -c CONFIG (one of them)\n");
    usage();
    return 2;
  }
  pgs_config_t *config = NULL;
  if (config_path) {
    if ((config = pgs_ctl_load_config(config_path)) == NULL) return 1;
    if (config->map_source == NULL) {
      fprintf(stderr, "pgshardctl: %s: no map_source in [pgshard]\n", config_path);
      pgs_config_unref(config);
      return 1;
    }
    source = config->map_source;
  }
  int rc = 1;
  if (push) {
    int64_t pushed;
    double committed_at;
    rc = pgs_ctl_map_push_file(source, config_path, args[0], note, &pushed, &committed_at);
  } else if (wait) {
    rc = pgs_ctl_map_wait(source, atoll(args[0]), timeout_ms, live_seconds);
  } else {
    PGconn *conn = source_connect(source);
    if (conn && exec_ok(conn, MAP_SOURCE_SQL))
      rc = !strcmp(verb, "show") ? show(conn, version) : status(conn, live_seconds);
    PQfinish(conn);
  }
  pgs_config_unref(config);
  return rc;
}
