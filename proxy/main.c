/*
 * main.c — pgshard's main thread: options, config, listening sockets,
 * signals. The work happens in the worker threads (worker.c).
 *
 * Signals: SIGHUP reloads the config (users, pool sizes, policies; the
 * listener and worker count need a restart); SIGTERM drains (stop accepting,
 * let transactions finish, then exit; at most shutdown_timeout_ms); SIGINT
 * exits now.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pgshard/log.h"
#include "pgshard/proxy.h"

static const char *config_path;
static pgs_config_t *config;
static uv_signal_t sig_hup, sig_term, sig_int;
static uv_async_t worker_done;
static int nworkers;

static void print_config_errors(const pgs_config_t *c) {
  for (int i = 0; i < c->nerrors; i++) {
    if (c->errors[i].line > 0)
      pgs_error("%s:%d: %s", c->path, c->errors[i].line, c->errors[i].message);
    else
      pgs_error("%s: %s", c->path, c->errors[i].message);
  }
}

static int open_listener(const pgs_config_t *c) {
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
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  socklen_t len = addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, (struct sockaddr *)&addr, len) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

static void on_sighup(uv_signal_t *handle, int signum) {
  pgs_config_t *next = pgs_config_load(config_path);
  if (next->nerrors) {
    pgs_error("reload: %s has errors; keeping the running config", config_path);
    print_config_errors(next);
    pgs_config_unref(next);
    return;
  }
  if (strcmp(next->listen_host, config->listen_host) || next->listen_port != config->listen_port ||
      next->workers != config->workers)
    pgs_warn("reload: listen and workers changes take effect after a restart");
  next->workers = config->workers;
  pgs_workers_reload(next);
  pgs_config_unref(config);
  config = next;
  pgs_info("reloaded %s", config_path);
}

static void on_sigterm(uv_signal_t *handle, int signum) {
  pgs_info("SIGTERM: draining (at most %d ms)", config->shutdown_timeout_ms);
  pgs_workers_drain();
}

static void on_sigint(uv_signal_t *handle, int signum) {
  pgs_info("SIGINT: exiting now");
  pgs_workers_exit();
}

static void on_worker_done(uv_async_t *handle) {
  /* uv_async_send coalesces wakeups: ask how many threads are left. */
  if (pgs_workers_running() == 0) uv_stop(handle->loop);
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
  signal(SIGPIPE, SIG_IGN);

  nworkers = config->workers;
  int fds[64];
  for (int i = 0; i < nworkers; i++) {
    fds[i] = open_listener(config);
    if (fds[i] < 0) {
      pgs_error("cannot listen on %s:%d: %s", config->listen_host, config->listen_port,
                strerror(-fds[i]));
      return 1;
    }
  }

  uv_loop_t *loop = uv_default_loop();
  uv_async_init(loop, &worker_done, on_worker_done);
  uv_signal_init(loop, &sig_hup);
  uv_signal_init(loop, &sig_term);
  uv_signal_init(loop, &sig_int);
  uv_signal_start(&sig_hup, on_sighup, SIGHUP);
  uv_signal_start(&sig_term, on_sigterm, SIGTERM);
  uv_signal_start(&sig_int, on_sigint, SIGINT);
  if (pgs_workers_start(config, fds, nworkers, &worker_done) != 0) return 1;
  pgs_info("pgshard %s listening on %s:%d with %d workers", PGS_VERSION, config->listen_host,
           config->listen_port, nworkers);

  /* Run until every worker has ended (drain or exit), then join them. */
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&sig_hup, NULL);
  uv_close((uv_handle_t *)&sig_term, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
  uv_close((uv_handle_t *)&worker_done, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  pgs_workers_join();
  uv_loop_close(loop);
  pgs_config_unref(config);
  pgs_info("pgshard stopped");
  return 0;
}
