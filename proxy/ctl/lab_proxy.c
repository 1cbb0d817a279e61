/*
 * lab_proxy.c — the proxy the lab runs beside its servers: `pgshard -c FILE`
 * in its own session (setsid), so it outlives pgshardctl and ignores the
 * terminal's signals, with stdout and stderr appended to DIR/pgshard.log and
 * its pid in DIR/pgshard.pid.
 *
 * The pid file is trusted only while its process is alive and started before
 * the file was written (pgs_lab_pidfile_process), so a stale file never makes
 * the lab signal an unrelated process. Start succeeds only once the listen
 * address accepts TCP connections; a proxy that exits or never listens is
 * reported with the tail of its log, and one that never listens is stopped.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lab.h"

static char *pid_path(const lab_t *lab) { return pgs_lab_format("%s/pgshard.pid", lab->dir); }
static char *log_path(const lab_t *lab) { return pgs_lab_format("%s/pgshard.log", lab->dir); }

pid_t pgs_lab_proxy_pid(const lab_t *lab) {
  char *path = pid_path(lab);
  pid_t pid = pgs_lab_pidfile_process(path);
  free(path);
  return pid;
}

/* A wildcard listen address is reached through loopback. */
const char *pgs_lab_proxy_probe_host(const char *listen_host) {
  if (!strcmp(listen_host, "") || !strcmp(listen_host, "*") || !strcmp(listen_host, "0.0.0.0"))
    return "127.0.0.1";
  if (!strcmp(listen_host, "::")) return "::1";
  return listen_host;
}

/* $PGSHARD_BIN, else `pgshard` beside this pgshardctl. */
static char *proxy_binary(void) {
  const char *env = getenv("PGSHARD_BIN");
  if (env && *env) return pgs_xstrdup(env);
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return pgs_xstrdup("pgshard");
  self[n] = '\0';
  return pgs_lab_format("%s/pgshard", dirname(self));
}

__attribute__((noreturn)) static void exec_proxy(const char *binary, const char *config_path,
                                                 int log_fd) {
  int null_fd = open("/dev/null", O_RDONLY);
  setsid();
  if (null_fd >= 0) dup2(null_fd, 0);
  dup2(log_fd, 1);
  dup2(log_fd, 2);
  execl(binary, binary, "-c", config_path, (char *)NULL);
  fprintf(stderr, "pgshardctl: cannot run %s: %s\n", binary, strerror(errno));
  _exit(127);
}

static pid_t spawn_proxy(const lab_t *lab, const char *binary, const char *log, off_t *log_start) {
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    pgs_lab_fail("cannot open %s: %s", log, strerror(errno));
    return -1;
  }
  *log_start = lseek(fd, 0, SEEK_END);
  dprintf(fd, "\n==> pgshardctl lab up: %s -c %s\n", binary, lab->config_path);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) exec_proxy(binary, lab->config_path, fd);
  if (pid < 0) pgs_lab_fail("fork: %s", strerror(errno));
  close(fd);
  return pid;
}

static pgs_status_t write_pid(const lab_t *lab, pid_t pid) {
  char *path = pid_path(lab);
  char text[32];
  snprintf(text, sizeof(text), "%ld\n", (long)pid);
  pgs_status_t rc = pgs_lab_write_file(lab, path, text, false);
  free(path);
  return rc;
}

/* True once PID has exited. Reaps it when it is our child (a proxy this run
 * started); otherwise init reaps it and /proc tells. */
static bool wait_gone(pid_t pid, double seconds) {
  double deadline = pgs_lab_now() + seconds;
  while (pgs_lab_now() < deadline) {
    waitpid(pid, NULL, WNOHANG);
    if (!pgs_lab_process_alive(pid)) return true;
    pgs_lab_sleep_ms(50);
  }
  return false;
}

/* The proxy leads its own process group (setsid), so signalling the group
 * also reaches anything a wrapper script started. */
static void signal_proxy(pid_t pid, int sig) {
  if (kill(-pid, sig) != 0) kill(pid, sig);
}

/* SIGTERM (the proxy drains), then SIGKILL after LAB_PROXY_TIMEOUT_S. */
static void terminate(pid_t pid) {
  signal_proxy(pid, SIGTERM);
  if (wait_gone(pid, LAB_PROXY_TIMEOUT_S)) return;
  fprintf(stderr, "pgshardctl: pgshard (pid %ld) still runs %d s after SIGTERM; sending SIGKILL\n",
          (long)pid, LAB_PROXY_TIMEOUT_S);
  signal_proxy(pid, SIGKILL);
  wait_gone(pid, 5);
}

/* Wait until the proxy listens, exits, or LAB_PROXY_TIMEOUT_S pass. */
static pgs_status_t wait_listening(const lab_t *lab, pid_t pid, const char *log, off_t log_start) {
  const char *host = pgs_lab_proxy_probe_host(lab->config->listen_host);
  int port = lab->config->listen_port;
  double deadline = pgs_lab_now() + LAB_PROXY_TIMEOUT_S;
  int status;
  while (pgs_lab_now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pgs_lab_fail("pgshard exited (%s %d) before listening on %s:%d; its log (%s):",
                   WIFEXITED(status) ? "status" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), host, port, log);
      pgs_lab_print_log(log, log_start, 4096);
      return PGS_EIO;
    }
    if (pgs_lab_port_accepts(host, port)) return PGS_OK;
    pgs_lab_sleep_ms(100);
  }
  terminate(pid);
  pgs_lab_fail(
      "pgshard (pid %ld) did not listen on %s:%d within %d s and was stopped; its log (%s):",
      (long)pid, host, port, LAB_PROXY_TIMEOUT_S, log);
  pgs_lab_print_log(log, log_start, 4096);
  return PGS_EIO;
}

static pgs_status_t check_can_start(const lab_t *lab, const char *binary) {
  const char *host = pgs_lab_proxy_probe_host(lab->config->listen_host);
  if (access(binary, X_OK) != 0) {
    pgs_lab_fail("pgshard not found at %s: build it (cmake --build build) or set PGSHARD_BIN",
                 binary);
    return PGS_ENOTFOUND;
  }
  if (pgs_lab_port_accepts(host, lab->config->listen_port)) {
    pgs_lab_fail(
        "%s:%d (listen in %s) already accepts connections, but not from this lab's "
        "pgshard; stop that program or change listen",
        host, lab->config->listen_port, lab->config_path);
    return PGS_EIO;
  }
  return PGS_OK;
}

pgs_status_t pgs_lab_proxy_start(const lab_t *lab) {
  pid_t running = pgs_lab_proxy_pid(lab);
  if (running > 0) {
    printf("lab: pgshard already running (pid %ld)\n", (long)running);
    return PGS_OK;
  }
  char *binary = proxy_binary();
  char *log = log_path(lab);
  off_t log_start = 0;
  pid_t pid = -1;
  pgs_status_t rc = check_can_start(lab, binary);
  if (rc == PGS_OK) {
    pid = spawn_proxy(lab, binary, log, &log_start);
    rc = pid > 0 ? write_pid(lab, pid) : PGS_EIO;
  }
  if (rc == PGS_OK) rc = wait_listening(lab, pid, log, log_start);
  if (rc == PGS_OK)
    printf("lab: pgshard started (pid %ld), listening on %s:%d; log %s\n", (long)pid,
           lab->config->listen_host, lab->config->listen_port, log);
  if (rc != PGS_OK && pid > 0) {
    char *path = pid_path(lab);
    unlink(path);
    free(path);
  }
  free(binary);
  free(log);
  return rc;
}

pgs_status_t pgs_lab_proxy_stop(const lab_t *lab) {
  pid_t pid = pgs_lab_proxy_pid(lab);
  char *path = pid_path(lab);
  if (pid > 0) {
    terminate(pid);
    if (pgs_lab_process_alive(pid)) {
      pgs_lab_fail("pgshard (pid %ld) survived SIGKILL", (long)pid);
      free(path);
      return PGS_EIO;
    }
    printf("lab: stopped pgshard (pid %ld)\n", (long)pid);
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    pgs_lab_fail("cannot remove %s: %s", path, strerror(errno));
    free(path);
    return PGS_EIO;
  }
  free(path);
  return PGS_OK;
}
