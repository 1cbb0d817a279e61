/*
 * main.c — pgshard's main thread: options, config, listening sockets,
 * signals. The work happens in the worker threads (worker.c).
 *
 * Signals: SIGHUP reloads the config (users, pool sizes, policies; the
 * listener and worker count need a restart); SIGTERM drains (stop accepting,
 * let transactions finish, then exit; at most shutdown_timeout_ms); SIGINT
 * exits now. They are blocked in every thread and taken by the main thread
 * with sigtimedwait, so no handler ever runs on a worker.
 *
 * With [pgshard] map_source, the map comes from PostgreSQL (mapsource.h):
 * a reload is the file's [pgshard] section with the version the map_source
 * thread holds, and that thread sends SIGHUP itself when it holds a new
 * one, so every map change takes this one reload path.
 *
 * Before the workers start, prepared transactions any pgshard left on the
 * shards are settled and the two-phase commit decision tables are made
 * (twophase.h).
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pgshard/hold.h"
#include "pgshard/log.h"
#include "pgshard/mapsource.h"
#include "pgshard/monitor.h"
#include "pgshard/worker.h"
#include "pgshard/twophase.h"
#include "pgshard/mailbox.h"

static const char *config_path;
static pgs_config_t *config;
static int nworkers;

static void print_config_warnings(const pgs_config_t *c) {
  for (int i = 0; i < c->nwarnings; i++)
    pgs_warn("%s:%d: %s", c->path, c->warnings[i].line, c->warnings[i].message);
}

static void print_config_errors(const pgs_config_t *c) {
  print_config_warnings(c);
  for (int i = 0; i < c->nerrors; i++) {
    if (c->errors[i].line > 0)
      pgs_error("%s:%d: %s", c->path, c->errors[i].line, c->errors[i].message);
    else
      pgs_error("%s: %s", c->path, c->errors[i].message);
  }
}

static int open_listener(const pgs_config_t *c, bool probe) {
  struct sockaddr_storage addr;
  const char *host = c->listen_host;
  if (!strcmp(host, "localhost")) host = "127.0.0.1";
  if (!strcmp(host, "*")) host = "0.0.0.0";
  memset(&addr, 0, sizeof(addr));
  if (strchr(host, ':')) {
    if (uv_ip6_addr(host, c->listen_port, (struct sockaddr_in6 *)&addr) != 0) return -EINVAL;
  } else if (uv_ip4_addr(host, c->listen_port, (struct sockaddr_in *)&addr) != 0) {
    return -EINVAL;
  }
  socklen_t len =
      addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  int one = 1;
  if (probe) {
    /* SO_REUSEPORT would let a second pgshard share the port silently: bind
     * once without it to find out whether anyone holds the address. */
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc = bind(fd, (struct sockaddr *)&addr, len) != 0 ? -errno : 0;
    close(fd);
    if (rc != 0) return rc;
  }
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&addr, len) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

#define RELOAD_WAIT_MS 2000
#define MAP_SOURCE_START_WAIT_MS 3000

/* The config file; with map_source, its [pgshard] section and the map
 * version held from the source (the file's own map while none is). */
static pgs_config_t *load_config(void) {
  pgs_config_t *prepared = pgs_mapsource_config(); /* built as this would, file unchanged */
  if (prepared) return prepared;
  char *body;
  int64_t version;
  if (!pgs_mapsource_held(&body, &version)) return pgs_config_load(config_path);
  char label[64];
  snprintf(label, sizeof(label), "map version %lld", (long long)version);
  pgs_config_t *c = pgs_config_load_map(config_path, body, label, version);
  free(body);
  return c;
}

static void reload(void) {
  pgs_config_t *next = load_config();
  if (next->nerrors) {
    pgs_error("reload: %s has errors; keeping the running config", config_path);
    print_config_errors(next);
    pgs_config_unref(next);
    return;
  }
  print_config_warnings(next);
  if (strcmp(next->listen_host, config->listen_host) || next->listen_port != config->listen_port ||
      next->workers != config->workers)
    pgs_warn("reload: listen and workers changes take effect after a restart");
  if ((next->map_source == NULL) != (config->map_source == NULL) ||
      (next->map_source && strcmp(next->map_source, config->map_source)))
    pgs_warn("reload: map_source changes take effect after a restart");
  next->workers = config->workers;
  pgs_mailbox_reload(next);
  pgs_monitor_reload(next);
  pgs_config_unref(config);
  config = next;
  /* Logged once every worker runs it (a worker takes it between two
   * callbacks): whatever a client sends after this line is read on the new
   * config, at its next transaction boundary. */
  if (!pgs_mailbox_wait_reloaded(RELOAD_WAIT_MS))
    pgs_warn("reload: a worker has not taken the new config after %d ms", RELOAD_WAIT_MS);
  else
    pgs_mailbox_note_reloaded();
  pgs_mapsource_served(config->map_version);
  if (config->map_version > 0)
    pgs_info("reloaded %s with map version %lld", config_path, (long long)config->map_version);
  else
    pgs_info("reloaded %s", config_path);
}

/* Take signals until every worker has ended (after a drain or an exit). */
static void signal_loop(const sigset_t *set) {
  struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
  bool draining = false;
  while (pgs_workers_running() > 0) {
    int sig = sigtimedwait(set, NULL, &tick);
    if (sig == SIGHUP) {
      uint64_t asked = pgs_hold_reloads_asked(); /* RELOADs this one serves */
      reload();
      pgs_hold_reloads_done(asked);
    } else if (sig == SIGTERM) {
      if (!draining) pgs_info("SIGTERM: draining (at most %d ms)", config->shutdown_timeout_ms);
      draining = true;
      pgs_mailbox_drain();
    } else if (sig == SIGINT) {
      pgs_info("SIGINT: exiting now");
      pgs_mailbox_exit();
    }
  }
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: pgshard -c FILE [-d]\n"
          "  -c, --config FILE   configuration (see config/pgshard.ini)\n"
          "  -d, --debug         debug logging\n"
          "  -V, --version       print the version\n");
}

int main(int argc, char **argv) {
  static const struct option options[] = {{"config", required_argument, NULL, 'c'},
                                          {"debug", no_argument, NULL, 'd'},
                                          {"version", no_argument, NULL, 'V'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  bool debug = false;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:dVh", options, NULL)) != -1) {
    switch (opt) {
    case 'c':
      config_path = optarg;
      break;
    case 'd':
      debug = true;
      break;
    case 'V':
      printf("pgshard %s\n", PGS_VERSION);
      return 0;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (config_path == NULL || optind != argc) {
    usage(stderr);
    return 2;
  }
  config = pgs_config_load(config_path);
  pgs_log_setup(config->log_format == PGS_LOG_JSON, debug || config->log_debug);
  if (config->nerrors) {
    print_config_errors(config);
    return 1;
  }
  print_config_warnings(config);
  signal(SIGPIPE, SIG_IGN);

  nworkers = config->workers;
  int fds[64];
  for (int i = 0; i < nworkers; i++) {
    fds[i] = open_listener(config, i == 0);
    if (fds[i] < 0) {
      pgs_error("cannot listen on %s:%d: %s", config->listen_host, config->listen_port,
                strerror(-fds[i]));
      return 1;
    }
  }

  /* Block the signals before any thread exists, so every thread inherits
   * the mask and only sigtimedwait below ever sees them. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  /* With map_source, start on the version the source holds when it
   * answers in time; else on the file's map until it does. */
  if (pgs_mapsource_start(config, config_path, MAP_SOURCE_START_WAIT_MS) != 0) {
    pgs_error("cannot start the map_source thread");
    return 1;
  }
  if (config->map_source) {
    pgs_config_t *mapped = load_config();
    if (mapped->nerrors) {
      print_config_errors(mapped);
      pgs_error("map_source: serving the file's map");
      pgs_config_unref(mapped);
    } else if (mapped->map_version > 0) {
      pgs_info("map_source: starting on map version %lld", (long long)mapped->map_version);
      mapped->workers = config->workers;
      pgs_config_unref(config);
      config = mapped;
    } else {
      pgs_config_unref(mapped);
      pgs_warn("map_source: no version read yet; serving the file's map");
    }
    pgs_mapsource_served(config->map_version);
  }

  /* Two-phase commit: make the decision tables and settle the prepared
   * transactions any pgshard left before any client can start new ones. A
   * shard that is down now is settled later by the monitor. */
  if (pgs_twophase_start(config) != PGS_OK) return 1;
  if (pgs_twophase_check_recovery_user(config) != PGS_OK) return 1;
  (void)pgs_twophase_recover_config(config);
  if (pgs_workers_start(config, fds, nworkers) != 0) return 1;
  if (pgs_monitor_start(config, pgs_mailbox_publish) != 0) {
    pgs_error("cannot start the health monitor");
    pgs_mailbox_exit();
    pgs_workers_join();
    return 1;
  }
  pgs_info("pgshard %s listening on %s:%d with %d workers", PGS_VERSION, config->listen_host,
           config->listen_port, nworkers);
  signal_loop(&set);
  pgs_monitor_stop();
  pgs_mapsource_stop();
  pgs_workers_join();
  pgs_twophase_stop();
  pgs_config_unref(config);
  pgs_info("pgshard stopped");
  return 0;
}
