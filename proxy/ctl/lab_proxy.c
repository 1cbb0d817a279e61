/*
 * lab_proxy.c — the proxies the lab runs beside its servers: `lab up
 * --proxies N` runs N pgshard (1 by default) on consecutive ports, proxy I
 * listening on the config's listen port + I. Each is `pgshard -c FILE` in its
 * own session (setsid), so it outlives pgshardctl and ignores the terminal's
 * signals, with stdout and stderr appended to its log and its pid in its pid
 * file: DIR/pgshard.log and DIR/pgshard.pid for proxy 0 (what a one-proxy lab
 * always had), DIR/pgshard-I.log and DIR/pgshard-I.pid for the others.
 *
 * pgshard takes its listen address only from its config file, so proxy I >= 1
 * runs on DIR/pgshard-I.ini: FILE's text, line for line, with the [pgshard]
 * keys that must differ per proxy commented out and a [pgshard] section
 * appended that sets them (inih takes a section again). Those keys are listen
 * (port + I), metrics_listen (port + I, when set) and peer_id (I + 1, when
 * FILE lists peers: FILE, proxy 0's, says peer_id = 1); the proxies share
 * everything else (two-phase commit decisions live in the shards, where any
 * of them recovers any other's). The derived file lives in DIR, not
 * beside FILE, so the lab leaves nothing in the user's directories and
 * `down --purge` removes it; a relative file name in FILE means "beside
 * FILE", so the derived file names every file key (the
 * tls_*_file keys, the ones router/config.c resolves beside the config) by
 * the absolute path the parsed config resolved it to. A new file key there
 * must be added to rewritten_keys here. Every `up` rewrites the derived files
 * (atomically, mode 0600: they hold FILE's passwords), so a SIGHUP to a
 * running proxy reloads FILE's current text.
 *
 * The number of proxies is remembered by the pid files themselves: `up`
 * leaves exactly N running (it stops proxies N and above, saying so, rather
 * than leave a larger fleet running unasked), `down` stops every proxy with a
 * pid file, and `status` lists proxy 0 and every other proxy with a pid file.
 *
 * A pid file is trusted only while its process is alive and started before
 * the file was written (pgs_lab_pidfile_process), so a stale file never makes
 * the lab signal an unrelated process. Start succeeds only once the listen
 * address accepts TCP connections; a proxy that exits or never listens is
 * reported with the tail of its log, and one that never listens is stopped.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lab.h"

char *pgs_lab_proxy_file(const lab_t *lab, int index, const char *ext) {
  if (index == 0) return pgs_lab_format("%s/pgshard.%s", lab->dir, ext);
  return pgs_lab_format("%s/pgshard-%d.%s", lab->dir, index, ext);
}

int pgs_lab_proxy_port(const lab_t *lab, int index) { return lab->config->listen_port + index; }

pid_t pgs_lab_proxy_pid(const lab_t *lab, int index) {
  char *path = pgs_lab_proxy_file(lab, index, "pid");
  pid_t pid = pgs_lab_pidfile_process(path);
  free(path);
  return pid;
}

bool pgs_lab_proxy_known(const lab_t *lab, int index) {
  char *path = pgs_lab_proxy_file(lab, index, "pid");
  bool known = pgs_lab_exists(path);
  free(path);
  return known;
}

/* "pgshard", "pgshard-1", ...: the proxy's name in messages and status. */
static void proxy_name(int index, char *buf, size_t len) {
  if (index == 0)
    snprintf(buf, len, "pgshard");
  else
    snprintf(buf, len, "pgshard-%d", index);
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

/* ---- the derived config of proxy I >= 1 ---- */

/* [pgshard] keys whose value must differ per proxy, or that name a file. */
static const char *const rewritten_keys[] = {"listen",       "metrics_listen", "tls_cert_file",
                                             "tls_key_file", "tls_ca_file",    "peer_id"};

/* Whether P (a line, leading blanks skipped) opens a section, as inih reads
 * it; if so, *IS_PGSHARD says whether that section is [pgshard]. */
static bool line_opens_section(const char *p, bool *is_pgshard) {
  if (*p != '[') return false;
  const char *end = strchr(p, ']');
  *is_pgshard = end && end - p - 1 == 7 && !strncmp(p + 1, "pgshard", 7);
  return true;
}

/* A "key = value" (or "key: value") line setting one of rewritten_keys. */
static bool line_sets_rewritten_key(const char *p) {
  size_t len = strcspn(p, "=:");
  if (p[len] == '\0') return false;
  while (len > 0 && isspace((unsigned char)p[len - 1])) len--;
  for (size_t k = 0; k < PGS_ARRAY_LEN(rewritten_keys); k++)
    if (strlen(rewritten_keys[k]) == len && !strncmp(p, rewritten_keys[k], len)) return true;
  return false;
}

/* The [pgshard] lines appended for proxy INDEX; NULL (reported) when
 * metrics_listen cannot be moved to its port. */
static char *derived_section(const lab_t *lab, int index) {
  const pgs_config_t *c = lab->config;
  bool v6 = strchr(c->listen_host, ':') != NULL;
  char *text = pgs_lab_format(
      "\n; written by pgshardctl lab up: proxy %d of the lab in %s, on %s\n"
      "[pgshard]\nlisten = %s%s%s:%d\n",
      index, lab->dir, lab->config_path, v6 ? "[" : "", c->listen_host, v6 ? "]" : "",
      pgs_lab_proxy_port(lab, index));
  if (c->metrics_listen && c->metrics_listen[0]) {
    const char *colon = strrchr(c->metrics_listen, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (colon == NULL || end == colon + 1 || *end || port <= 0 || port + index > 65535) {
      pgs_lab_fail("metrics_listen = %s in %s: expected HOST:PORT with PORT + %d below 65536",
                   c->metrics_listen, lab->config_path, index);
      free(text);
      return NULL;
    }
    char *more = pgs_lab_format("%smetrics_listen = %.*s:%ld\n", text,
                                (int)(colon - c->metrics_listen), c->metrics_listen, port + index);
    free(text);
    text = more;
  }
  if (c->npeers > 0) {
    /* FILE lists the fleet (peers) and is proxy 0's: proxy I is at I + 1. */
    char *more = pgs_lab_format("%speer_id = %d\n", text, index + 1);
    free(text);
    text = more;
  }
  const char *const file_keys[] = {"tls_cert_file", "tls_key_file", "tls_ca_file"};
  const char *const files[] = {c->tls_cert_file, c->tls_key_file, c->tls_ca_file};
  for (size_t k = 0; k < PGS_ARRAY_LEN(files); k++) {
    if (files[k] == NULL) continue;
    char *more = pgs_lab_format("%s%s = %s\n", text, file_keys[k], files[k]);
    free(text);
    text = more;
  }
  return text;
}

/* FILE's lines, the rewritten keys of [pgshard] commented out in place (so
 * pgshard's error messages name FILE's line numbers), then SECTION. */
static char *derived_text(const lab_t *lab, const char *section) {
  FILE *in = fopen(lab->config_path, "re");
  if (in == NULL) {
    pgs_lab_fail("cannot read %s: %s", lab->config_path, strerror(errno));
    return NULL;
  }
  char *text = NULL, *line = NULL;
  size_t text_len = 0, cap = 0;
  FILE *out = open_memstream(&text, &text_len);
  if (out == NULL) abort();
  bool in_pgshard = false, first = true;
  ssize_t n;
  while ((n = getline(&line, &cap, in)) >= 0) {
    const char *p = line;
    if (first && !strncmp(p, "\xEF\xBB\xBF", 3)) p += 3; /* inih skips a UTF-8 BOM */
    first = false;
    while (isspace((unsigned char)*p)) p++;
    if (!line_opens_section(p, &in_pgshard) && in_pgshard && line_sets_rewritten_key(p))
      fputs("; replaced below by pgshardctl lab: ", out);
    fputs(line, out);
    if (n > 0 && line[n - 1] != '\n') fputc('\n', out);
  }
  bool failed = ferror(in);
  if (failed) pgs_lab_fail("cannot read %s: %s", lab->config_path, strerror(errno));
  fputs(section, out);
  fclose(in);
  free(line);
  fclose(out);
  if (failed) {
    free(text);
    return NULL;
  }
  return text;
}

/* Replace PATH by TEXT atomically (a proxy reloading on SIGHUP never reads
 * half a file), readable only by its owner. */
static pgs_status_t replace_private_file(const char *path, const char *text) {
  char *tmp = pgs_lab_format("%s.tmp", path);
  pgs_status_t rc = PGS_EIO;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0) {
    size_t len = strlen(text);
    ssize_t n = fchmod(fd, 0600) == 0 ? write(fd, text, len) : -1;
    if (close(fd) == 0 && n >= 0 && (size_t)n == len && rename(tmp, path) == 0) rc = PGS_OK;
  }
  if (rc != PGS_OK) {
    pgs_lab_fail("cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
  }
  free(tmp);
  return rc;
}

/* The config proxy INDEX runs on (malloc'ed): FILE itself for proxy 0, a
 * derived DIR/pgshard-INDEX.ini, rewritten now, for the others. */
static char *proxy_config(const lab_t *lab, int index) {
  if (index == 0) return pgs_xstrdup(lab->config_path);
  char *section = derived_section(lab, index);
  char *text = section ? derived_text(lab, section) : NULL;
  char *path = pgs_lab_proxy_file(lab, index, "ini");
  if (text == NULL || replace_private_file(path, text) != PGS_OK) {
    free(path);
    path = NULL;
  }
  free(section);
  free(text);
  return path;
}

/* ---- one proxy ---- */

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

static pid_t spawn_proxy(const char *binary, const char *config_path, const char *log,
                         off_t *log_start) {
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    pgs_lab_fail("cannot open %s: %s", log, strerror(errno));
    return -1;
  }
  *log_start = lseek(fd, 0, SEEK_END);
  dprintf(fd, "\n==> pgshardctl lab up: %s -c %s\n", binary, config_path);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) exec_proxy(binary, config_path, fd);
  if (pid < 0) pgs_lab_fail("fork: %s", strerror(errno));
  close(fd);
  return pid;
}

static pgs_status_t write_pid(const lab_t *lab, int index, pid_t pid) {
  char *path = pgs_lab_proxy_file(lab, index, "pid");
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
static void terminate(const char *name, pid_t pid) {
  signal_proxy(pid, SIGTERM);
  if (wait_gone(pid, LAB_PROXY_TIMEOUT_S)) return;
  fprintf(stderr, "pgshardctl: %s (pid %ld) still runs %d s after SIGTERM; sending SIGKILL\n", name,
          (long)pid, LAB_PROXY_TIMEOUT_S);
  signal_proxy(pid, SIGKILL);
  wait_gone(pid, 5);
}

/* Wait until proxy INDEX listens, exits, or LAB_PROXY_TIMEOUT_S pass. */
static pgs_status_t wait_listening(const lab_t *lab, int index, pid_t pid, const char *log,
                                   off_t log_start) {
  const char *host = pgs_lab_proxy_probe_host(lab->config->listen_host);
  int port = pgs_lab_proxy_port(lab, index);
  char name[32];
  proxy_name(index, name, sizeof(name));
  double deadline = pgs_lab_now() + LAB_PROXY_TIMEOUT_S;
  int status;
  while (pgs_lab_now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pgs_lab_fail("%s exited (%s %d) before listening on %s:%d; its log (%s):", name,
                   WIFEXITED(status) ? "status" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), host, port, log);
      pgs_lab_print_log(log, log_start, 4096);
      return PGS_EIO;
    }
    if (pgs_lab_port_accepts(host, port)) return PGS_OK;
    pgs_lab_sleep_ms(100);
  }
  terminate(name, pid);
  pgs_lab_fail("%s (pid %ld) did not listen on %s:%d within %d s and was stopped; its log (%s):",
               name, (long)pid, host, port, LAB_PROXY_TIMEOUT_S, log);
  pgs_lab_print_log(log, log_start, 4096);
  return PGS_EIO;
}

static pgs_status_t check_can_start(const lab_t *lab, int index, const char *binary) {
  const char *host = pgs_lab_proxy_probe_host(lab->config->listen_host);
  int port = pgs_lab_proxy_port(lab, index);
  if (access(binary, X_OK) != 0) {
    pgs_lab_fail("pgshard not found at %s: build it (cmake --build build) or set PGSHARD_BIN",
                 binary);
    return PGS_ENOTFOUND;
  }
  if (pgs_lab_port_accepts(host, port)) {
    if (index == 0)
      pgs_lab_fail(
          "%s:%d (listen in %s) already accepts connections, but not from this lab's "
          "pgshard; stop that program or change listen",
          host, port, lab->config_path);
    else
      pgs_lab_fail(
          "%s:%d (listen in %s + %d, for proxy %d) already accepts connections, but not "
          "from this lab's pgshard; stop that program, change listen or ask for fewer proxies",
          host, port, lab->config_path, index, index);
    return PGS_EIO;
  }
  return PGS_OK;
}

static pgs_status_t start_one(const lab_t *lab, int index, const char *binary) {
  char name[32];
  proxy_name(index, name, sizeof(name));
  pid_t running = pgs_lab_proxy_pid(lab, index);
  if (running > 0) {
    /* Its derived config is rewritten all the same: a SIGHUP reloads FILE. */
    char *config = index > 0 ? proxy_config(lab, index) : NULL;
    if (index > 0 && config == NULL) return PGS_EIO;
    free(config);
    printf("lab: %s already running (pid %ld)\n", name, (long)running);
    return PGS_OK;
  }
  char *log = pgs_lab_proxy_file(lab, index, "log");
  char *config = NULL;
  off_t log_start = 0;
  pid_t pid = -1;
  pgs_status_t rc = check_can_start(lab, index, binary);
  if (rc == PGS_OK) {
    config = proxy_config(lab, index);
    if (config == NULL) rc = PGS_EIO;
  }
  if (rc == PGS_OK) {
    pid = spawn_proxy(binary, config, log, &log_start);
    rc = pid > 0 ? write_pid(lab, index, pid) : PGS_EIO;
  }
  if (rc == PGS_OK) rc = wait_listening(lab, index, pid, log, log_start);
  if (rc == PGS_OK)
    printf("lab: %s started (pid %ld), listening on %s:%d; log %s\n", name, (long)pid,
           lab->config->listen_host, pgs_lab_proxy_port(lab, index), log);
  if (rc != PGS_OK && pid > 0) {
    char *path = pgs_lab_proxy_file(lab, index, "pid");
    unlink(path);
    free(path);
  }
  free(config);
  free(log);
  return rc;
}

static pgs_status_t stop_one(const lab_t *lab, int index, const char *why) {
  char name[32];
  proxy_name(index, name, sizeof(name));
  pid_t pid = pgs_lab_proxy_pid(lab, index);
  char *path = pgs_lab_proxy_file(lab, index, "pid");
  if (pid > 0) {
    terminate(name, pid);
    if (pgs_lab_process_alive(pid)) {
      pgs_lab_fail("%s (pid %ld) survived SIGKILL", name, (long)pid);
      free(path);
      return PGS_EIO;
    }
    printf("lab: stopped %s (pid %ld)%s\n", name, (long)pid, why);
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    pgs_lab_fail("cannot remove %s: %s", path, strerror(errno));
    free(path);
    return PGS_EIO;
  }
  free(path);
  return PGS_OK;
}

/* ---- the fleet ---- */

pgs_status_t pgs_lab_proxy_start(const lab_t *lab) {
  int count = lab->proxies > 0 ? lab->proxies : 1;
  int last = pgs_lab_proxy_port(lab, count - 1);
  if (last > 65535) {
    pgs_lab_fail("--proxies %d needs ports %d to %d (listen in %s and up): past 65535", count,
                 lab->config->listen_port, last, lab->config_path);
    return PGS_ECONFIG;
  }
  pgs_status_t rc = PGS_OK;
  char why[64];
  snprintf(why, sizeof(why), ": lab up asked for %d prox%s", count, count == 1 ? "y" : "ies");
  for (int i = count; i < LAB_MAX_PROXIES; i++)
    if (pgs_lab_proxy_known(lab, i) && stop_one(lab, i, why) != PGS_OK) rc = PGS_EIO;
  char *binary = proxy_binary();
  for (int i = 0; i < count && rc == PGS_OK; i++) rc = start_one(lab, i, binary);
  free(binary);
  return rc;
}

/* Every proxy with a pid file; keeps going past a failure. */
pgs_status_t pgs_lab_proxy_stop(const lab_t *lab) {
  pgs_status_t rc = PGS_OK;
  for (int i = 0; i < LAB_MAX_PROXIES; i++)
    if (pgs_lab_proxy_known(lab, i) && stop_one(lab, i, "") != PGS_OK) rc = PGS_EIO;
  return rc;
}
