/*
 * mapsource.c — the shard map kept in PostgreSQL (mapsource.h says what
 * and why). One thread, one blocking libpq connection at a time: every
 * wait is a poll(2) on that connection's socket and on a pipe that wakes
 * the thread (stop, a new served version), with a timeout, so stopping
 * takes at most a connect_timeout. Everything shared with other threads is
 * under ms.lock; the thread never touches a worker: it asks main.c for a
 * reload with SIGHUP, as an operator would, and main.c tells it what the
 * workers serve (pgs_mapsource_served).
 *
 * The thread's life: connect (backoff 100 ms doubling to 5 s between
 * failures), create the schema if missing (sql/map_source.sql), LISTEN,
 * read the latest version, then wait for notifications, heartbeating every
 * second; on any error, close and start again.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "map_source_sql.h"
#include "pgshard/io.h"
#include "pgshard/log.h"
#include "pgshard/mapsource.h"

#define HEARTBEAT_MS 1000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* Which config file a config was built from: a file replaced or edited
 * since differs in one of these. */
typedef struct file_id {
  bool exists;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
} file_id_t;

static file_id_t file_id_of(const char *path) {
  struct stat st;
  file_id_t id = {.exists = false};
  if (stat(path, &st) == 0) id = (file_id_t){true, st.st_dev, st.st_ino, st.st_size, st.st_mtim};
  return id;
}

static bool same_file(const file_id_t *a, const file_id_t *b) {
  return a->exists && b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

static struct {
  pthread_mutex_t lock;
  pthread_cond_t first_done; /* the first attempt to read ended */
  pthread_t thread;
  bool running;
  int wake[2]; /* a byte written to wake[1] wakes the thread */
  char *conninfo;
  char *path;
  char *cache_path; /* PATH.map-cache: the version held, for a start without the source */
  char listen[300];
  double started_at;
  /* under lock */
  bool stop, refresh, first_attempt_done, connected;
  double since;
  char error[256];
  char *body;
  /* The config body makes with the file's [pgshard] section, as the file
   * was (prepared_file): what a reload takes while the file is unchanged,
   * instead of building it again. */
  pgs_config_t *prepared;
  file_id_t prepared_file;
  int64_t held, served, refused;
  bool served_changed;
  uint64_t nrefused;
  char instance[128];
} ms = {.lock = PTHREAD_MUTEX_INITIALIZER, .first_done = PTHREAD_COND_INITIALIZER};

static double wall_seconds(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void wake_thread(void) {
  char byte = 1;
  if (ms.running) (void)!write(ms.wake[1], &byte, 1);
}

static bool stopping(void) {
  pthread_mutex_lock(&ms.lock);
  bool stop = ms.stop;
  pthread_mutex_unlock(&ms.lock);
  return stop;
}

/* Wait up to TIMEOUT_MS for FD (-1: none) to be readable or the thread to
 * be woken. Returns 1 when FD is readable, 0 otherwise. */
static int wait_readable(int fd, int timeout_ms) {
  struct pollfd fds[2] = {{.fd = ms.wake[0], .events = POLLIN}, {.fd = fd, .events = POLLIN}};
  int n = poll(fds, fd >= 0 ? 2 : 1, timeout_ms);
  if (n <= 0) return 0;
  if (fds[0].revents & POLLIN) {
    char buf[64];
    while (read(ms.wake[0], buf, sizeof(buf)) > 0) {
    }
  }
  return fd >= 0 && (fds[1].revents & (POLLIN | POLLERR | POLLHUP)) ? 1 : 0;
}

static void set_state(bool connected, const char *error) {
  pthread_mutex_lock(&ms.lock);
  bool changed = ms.connected != connected || ms.since == 0;
  if (changed) ms.since = wall_seconds();
  ms.connected = connected;
  snprintf(ms.error, sizeof(ms.error), "%s", error ? error : "");
  pthread_mutex_unlock(&ms.lock);
  if (changed && connected)
    pgs_info("map_source: listening on %s", PGS_MAP_CHANNEL);
  else if (changed)
    pgs_warn("map_source: unreachable (%s); serving the version held", error ? error : "?");
}

/* MESSAGE on one line: whitespace runs as one space, none at the end. */
static void one_line(char *out, size_t cap, const char *message) {
  size_t n = 0;
  for (const char *p = message; *p && n + 1 < cap; p++) {
    bool space = *p == ' ' || *p == '\n' || *p == '\t';
    if (space && (n == 0 || out[n - 1] == ' ')) continue;
    out[n++] = space ? ' ' : *p;
  }
  while (n > 0 && out[n - 1] == ' ') n--;
  out[n] = '\0';
}

/* The message of a libpq error, on one line. */
static void conn_error(PGconn *conn, char *out, size_t cap) {
  one_line(out, cap, conn ? PQerrorMessage(conn) : "out of memory");
}

/* Notices (CREATE ... IF NOT EXISTS skipping, the FATAL a terminated
 * backend sends) go to the debug log, not raw to stderr. */
static void notice_cb(void *arg, const char *message) {
  char line[512];
  one_line(line, sizeof(line), message);
  pgs_debug("map_source: server says: %s", line);
}

static PGconn *source_connect(void) {
  /* Bounds on every wait (the conninfo's own settings win): a source that
   * hangs is treated as down instead of stalling the thread. */
  const char *keys[] = {"connect_timeout", "options", "application_name", "dbname", NULL};
  const char *values[] = {"2", "-c statement_timeout=10000", "pgshard map_source", ms.conninfo,
                          NULL};
  PGconn *conn = PQconnectdbParams(keys, values, 1);
  if (PQstatus(conn) == CONNECTION_OK) {
    PQsetNoticeProcessor(conn, notice_cb, NULL);
    return conn;
  }
  char err[256];
  conn_error(conn, err, sizeof(err));
  set_state(false, err);
  PQfinish(conn);
  return NULL;
}

/* Run SQL (no result rows wanted); false, with the state set, on error. */
static bool run(PGconn *conn, const char *sql) {
  PGresult *res = PQexec(conn, sql);
  ExecStatusType status = PQresultStatus(res);
  bool ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
  if (!ok) {
    char err[256];
    one_line(err, sizeof(err), PQresultErrorMessage(res));
    set_state(false, err);
  }
  PQclear(res);
  return ok;
}

/* BODY, version VERSION, with the file's [pgshard] section: the config,
 * or NULL when it does not validate (logged). *ID: the file as it was
 * before it was read. */
static pgs_config_t *body_config(const char *body, int64_t version, file_id_t *id) {
  char label[64];
  snprintf(label, sizeof(label), "map version %lld", (long long)version);
  *id = file_id_of(ms.path);
  pgs_config_t *c = pgs_config_load_map(ms.path, body, label, version);
  if (c->nerrors == 0) return c;
  pgs_error("map_source: version %lld refused (%d errors); keeping version %lld",
            (long long)version, c->nerrors, (long long)ms.held);
  for (int i = 0; i < c->nerrors && i < 10; i++) pgs_error("map_source: %s", c->errors[i].message);
  pgs_config_unref(c);
  return NULL;
}

/* Hold BODY (VERSION) and its config C. Under ms.lock. */
static void hold_locked(const char *body, int64_t version, pgs_config_t *c, const file_id_t *id) {
  free(ms.body);
  ms.body = pgs_xstrdup(body);
  ms.held = version;
  pgs_config_unref(ms.prepared);
  ms.prepared = c;
  ms.prepared_file = *id;
}

#define CACHE_HEADER "; pgshard map_source cache: version "

/* Keep the version held on disk (written aside, then renamed: a reader
 * never sees half of it), so that a restart while the source is down
 * serves it rather than the file's older map. */
static void cache_write(const char *body, int64_t version) {
  char tmp[4200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", ms.cache_path);
  FILE *f = fopen(tmp, "w");
  bool ok = f && fprintf(f, CACHE_HEADER "%lld\n%s", (long long)version, body) > 0;
  if (f && fclose(f) != 0) ok = false;
  if (ok && rename(tmp, ms.cache_path) != 0) ok = false;
  if (!ok) pgs_warn("map_source: cannot write %s: %s", ms.cache_path, strerror(errno));
}

/* The version cache_write left, when it still validates. */
static void cache_read(void) {
  FILE *f = fopen(ms.cache_path, "r");
  if (f == NULL) return;
  char *text = pgs_read_all(f, NULL);
  fclose(f);
  const char *nl = strchr(text, '\n');
  int64_t version = 0;
  if (nl && !strncmp(text, CACHE_HEADER, strlen(CACHE_HEADER)))
    version = strtoll(text + strlen(CACHE_HEADER), NULL, 10);
  file_id_t id;
  pgs_config_t *c = version > 0 ? body_config(nl + 1, version, &id) : NULL;
  if (c) {
    hold_locked(nl + 1, version, c, &id); /* no thread yet */
    pgs_info("map_source: version %lld held from %s", (long long)version, ms.cache_path);
  } else {
    pgs_warn("map_source: %s is not a valid map cache; ignored", ms.cache_path);
  }
  free(text);
}

/* Read the latest version; hold it when it validates and is new, and ask
 * for a reload when the workers do not serve it. False on a lost
 * connection or a failed query. */
static bool read_latest(PGconn *conn) {
  PGresult *res = PQexec(conn,
                         "SELECT version, body FROM pgshard.map "
                         "ORDER BY version DESC LIMIT 1");
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    char err[256], line[200];
    one_line(line, sizeof(line), PQresultErrorMessage(res));
    snprintf(err, sizeof(err), "reading pgshard.map: %s", line);
    set_state(false, err);
    PQclear(res);
    return false;
  }
  if (PQntuples(res) == 0) { /* no version yet: the file's map serves */
    PQclear(res);
    return true;
  }
  int64_t version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
  pthread_mutex_lock(&ms.lock);
  bool known = version == ms.held || version == ms.refused;
  pthread_mutex_unlock(&ms.lock);
  if (known) {
    PQclear(res);
    return true;
  }
  const char *body = PQgetvalue(res, 0, 1);
  file_id_t id;
  pgs_config_t *c = body_config(body, version, &id);
  bool valid = c != NULL;
  pthread_mutex_lock(&ms.lock);
  if (valid) {
    hold_locked(body, version, c, &id);
  } else {
    ms.refused = version;
    ms.nrefused++;
  }
  bool reload = valid && ms.held != ms.served;
  pthread_mutex_unlock(&ms.lock);
  if (valid) {
    pgs_info("map_source: version %lld read", (long long)version);
    cache_write(body, version);
  }
  PQclear(res);
  if (reload) kill(getpid(), SIGHUP); /* main.c reloads, as for an operator's SIGHUP */
  return true;
}

static bool heartbeat(PGconn *conn) {
  pthread_mutex_lock(&ms.lock);
  int64_t served = ms.served;
  ms.served_changed = false;
  pthread_mutex_unlock(&ms.lock);
  char pid[16], version[24], started[32];
  snprintf(pid, sizeof(pid), "%d", (int)getpid());
  snprintf(version, sizeof(version), "%lld", (long long)served);
  snprintf(started, sizeof(started), "%.6f", ms.started_at);
  const char *params[] = {ms.instance, ms.listen, pid, version, started};
  PGresult *res = PQexecParams(
      conn,
      "INSERT INTO pgshard.instance (id, listen, pid, map_version, started_at, seen_at) "
      "VALUES ($1, $2, $3, $4, to_timestamp($5::float8), now()) "
      "ON CONFLICT (id) DO UPDATE SET listen = excluded.listen, pid = excluded.pid, "
      "map_version = excluded.map_version, started_at = excluded.started_at, seen_at = now()",
      5, NULL, params, NULL, NULL, 0);
  bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
  if (!ok) {
    char err[256], line[200];
    one_line(line, sizeof(line), PQresultErrorMessage(res));
    snprintf(err, sizeof(err), "heartbeat: %s", line);
    set_state(false, err);
  }
  PQclear(res);
  return ok;
}

/* One connection's life, until an error or stop. */
static void serve_connection(PGconn *conn) {
  if (!run(conn, MAP_SOURCE_SQL) || !run(conn, "LISTEN " PGS_MAP_CHANNEL)) return;
  set_state(true, NULL);
  bool ok = read_latest(conn);
  pthread_mutex_lock(&ms.lock);
  ms.first_attempt_done = true;
  pthread_cond_broadcast(&ms.first_done);
  pthread_mutex_unlock(&ms.lock);
  if (!ok || !heartbeat(conn)) return;
  uint64_t next_beat = pgs_now_ms() + HEARTBEAT_MS;
  while (!stopping()) {
    /* Notifications libpq read along with an answer are queued already:
     * take them before waiting on the socket, which would not wake. */
    bool notified = false;
    PGnotify *n;
    while ((n = PQnotifies(conn)) != NULL) {
      notified = true;
      PQfreemem(n);
    }
    pthread_mutex_lock(&ms.lock);
    bool refresh = ms.refresh, beat = ms.served_changed;
    ms.refresh = false;
    pthread_mutex_unlock(&ms.lock);
    bool worked = false;
    if (notified || refresh) {
      if (!read_latest(conn)) return;
      worked = true;
    }
    if (beat || pgs_now_ms() >= next_beat) {
      if (!heartbeat(conn)) return;
      next_beat = pgs_now_ms() + HEARTBEAT_MS;
      worked = true;
    }
    if (worked) continue;
    uint64_t now = pgs_now_ms();
    int timeout = next_beat > now ? (int)(next_beat - now) : 0;
    if (wait_readable(PQsocket(conn), timeout) && !PQconsumeInput(conn)) {
      char err[256];
      conn_error(conn, err, sizeof(err));
      set_state(false, err);
      return;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
      set_state(false, "connection lost");
      return;
    }
  }
  /* Stopping: this instance is gone at once, not when its heartbeat ages
   * (map wait and cutover count live instances only). */
  char pid[16];
  snprintf(pid, sizeof(pid), "%d", (int)getpid());
  const char *params[] = {ms.instance, pid};
  PQclear(PQexecParams(conn,
                       "UPDATE pgshard.instance SET seen_at = NULL WHERE id = $1 AND pid = $2", 2,
                       NULL, params, NULL, NULL, 0));
}

static void *thread_main(void *arg) {
  int backoff = BACKOFF_MIN_MS;
  while (!stopping()) {
    PGconn *conn = source_connect();
    bool connected = conn != NULL;
    if (connected) {
      serve_connection(conn);
      PQfinish(conn);
    }
    pthread_mutex_lock(&ms.lock);
    bool stop = ms.stop, was_up = ms.connected;
    ms.first_attempt_done = true;
    pthread_cond_broadcast(&ms.first_done);
    pthread_mutex_unlock(&ms.lock);
    if (stop) break;
    if (was_up) set_state(false, "connection lost");
    /* A connection that worked retries soon (a missed notification is read
     * at the next connect); repeated failures back off. */
    backoff = connected                      ? BACKOFF_MIN_MS
              : backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                             : backoff * 2;
    wait_readable(-1, backoff);
  }
  return arg;
}

int pgs_mapsource_start(const pgs_config_t *config, const char *path, int wait_ms) {
  if (config->map_source == NULL) return 0;
  if (pipe2(ms.wake, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  ms.conninfo = pgs_xstrdup(config->map_source);
  ms.path = pgs_xstrdup(path);
  size_t len = strlen(path) + sizeof(".map-cache");
  ms.cache_path = pgs_xmalloc(len);
  snprintf(ms.cache_path, len, "%s.map-cache", path);
  cache_read();
  snprintf(ms.listen, sizeof(ms.listen), "%s:%d", config->listen_host, config->listen_port);
  char host[64] = "localhost";
  gethostname(host, sizeof(host) - 1);
  snprintf(ms.instance, sizeof(ms.instance), "%s:%d", host, config->listen_port);
  ms.started_at = wall_seconds();
  ms.running = true;
  if (pthread_create(&ms.thread, NULL, thread_main, NULL) != 0) {
    ms.running = false;
    return -1;
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += wait_ms / 1000;
  deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&ms.lock);
  while (!ms.first_attempt_done)
    if (pthread_cond_timedwait(&ms.first_done, &ms.lock, &deadline) == ETIMEDOUT) break;
  pthread_mutex_unlock(&ms.lock);
  return 0;
}

void pgs_mapsource_stop(void) {
  if (!ms.running) return;
  pthread_mutex_lock(&ms.lock);
  ms.stop = true;
  pthread_mutex_unlock(&ms.lock);
  wake_thread();
  pthread_join(ms.thread, NULL);
  pthread_mutex_lock(&ms.lock);
  ms.running = false;
  pthread_mutex_unlock(&ms.lock);
  close(ms.wake[0]);
  close(ms.wake[1]);
  free(ms.conninfo);
  free(ms.path);
  free(ms.cache_path);
  free(ms.body);
  pgs_config_unref(ms.prepared);
  ms.prepared = NULL;
  ms.conninfo = ms.path = ms.cache_path = ms.body = NULL;
}

bool pgs_mapsource_held(char **body, int64_t *version) {
  pthread_mutex_lock(&ms.lock);
  bool held = ms.body != NULL;
  if (held) {
    *body = pgs_xstrdup(ms.body);
    *version = ms.held;
  }
  pthread_mutex_unlock(&ms.lock);
  return held;
}

pgs_config_t *pgs_mapsource_config(void) {
  pthread_mutex_lock(&ms.lock);
  pgs_config_t *c = NULL;
  if (ms.prepared) {
    file_id_t now = file_id_of(ms.path);
    if (same_file(&now, &ms.prepared_file)) c = pgs_config_ref(ms.prepared);
  }
  pthread_mutex_unlock(&ms.lock);
  return c;
}

void pgs_mapsource_served(int64_t version) {
  if (!ms.running) return;
  pthread_mutex_lock(&ms.lock);
  ms.served_changed = ms.served != version;
  ms.served = version;
  ms.refresh = true;
  pthread_mutex_unlock(&ms.lock);
  wake_thread();
}

void pgs_mapsource_state(pgs_mapsource_state_t *out) {
  memset(out, 0, sizeof(*out));
  pthread_mutex_lock(&ms.lock);
  out->running = ms.running;
  out->connected = ms.connected;
  out->since = ms.since;
  snprintf(out->error, sizeof(out->error), "%s", ms.error);
  out->held = ms.held;
  out->served = ms.served;
  out->refused = ms.refused;
  out->nrefused = ms.nrefused;
  snprintf(out->instance, sizeof(out->instance), "%s", ms.instance);
  pthread_mutex_unlock(&ms.lock);
}

char *pgs_mapsource_conninfo_display(const char *conninfo) {
  PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
  if (opts == NULL) return pgs_xstrdup("(unparsable)");
  size_t cap = strlen(conninfo) + 64, len = 0;
  char *out = pgs_xmalloc(cap);
  out[0] = '\0';
  for (PQconninfoOption *o = opts; o->keyword; o++) {
    if (o->val == NULL || !strcmp(o->keyword, "password")) continue;
    size_t need = strlen(o->keyword) + strlen(o->val) + 4;
    if (len + need >= cap) {
      cap = (len + need) * 2;
      out = pgs_xrealloc(out, cap);
    }
    len += (size_t)snprintf(out + len, cap - len, "%s%s=%s", len ? " " : "", o->keyword, o->val);
  }
  PQconninfoFree(opts);
  return out;
}
