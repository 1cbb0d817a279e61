/*
 * lab_util.c — the lab's contact with the operating system: running the
 * PostgreSQL tools (as the postgres OS user when pgshardctl runs as root),
 * files and directories those tools must be able to use, pid files, TCP
 * probes, and the two libpq calls every lab command makes.
 *
 * A tool's stdout and stderr are appended to a log file, never a pipe:
 * `pg_ctl start` leaves a postmaster behind that would inherit the pipe and
 * hold it open forever. Each run notes where its output starts in the log, so
 * a failure prints exactly what that run wrote. Every descriptor the lab
 * opens is close-on-exec, so neither a postmaster nor the proxy inherits one.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lab.h"

void pgs_lab_fail(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fputs("pgshardctl: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

char *pgs_lab_format(const char *fmt, ...) {
  va_list ap;
  char *text;
  va_start(ap, fmt);
  int n = vasprintf(&text, fmt, ap);
  va_end(ap);
  if (n < 0) {
    fprintf(stderr, "pgshardctl: out of memory\n");
    abort();
  }
  return text;
}

bool pgs_lab_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* ---- files and directories ---- */

/* Hand PATH to the postgres OS user when the lab runs as root. */
static pgs_status_t give_to_postgres(const lab_t *lab, const char *path, int fd) {
  if (!lab->as_postgres) return PGS_OK;
  int rc = fd >= 0 ? fchown(fd, lab->pg_uid, lab->pg_gid) : chown(path, lab->pg_uid, lab->pg_gid);
  if (rc != 0) {
    pgs_lab_fail("cannot give %s to the postgres user: %s", path, strerror(errno));
    return PGS_EIO;
  }
  return PGS_OK;
}

pgs_status_t pgs_lab_mkdir(const lab_t *lab, const char *path, bool for_postgres) {
  struct stat st;
  if (mkdir(path, for_postgres ? 0700 : 0755) != 0 && errno != EEXIST) {
    pgs_lab_fail("cannot create directory %s: %s", path, strerror(errno));
    return PGS_EIO;
  }
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    pgs_lab_fail("%s exists and is not a directory", path);
    return PGS_EIO;
  }
  return for_postgres ? give_to_postgres(lab, path, -1) : PGS_OK;
}

pgs_status_t pgs_lab_mkdir_parents(const char *path) {
  char *copy = pgs_xstrdup(path);
  pgs_status_t rc = PGS_OK;
  for (char *p = copy + 1; rc == PGS_OK; p++) {
    if (*p != '/' && *p != '\0') continue;
    char saved = *p;
    *p = '\0';
    /* chmod: a umask of 077 must not lock the postgres user out. */
    if (mkdir(copy, 0755) == 0) {
      chmod(copy, 0755);
    } else if (errno != EEXIST) {
      pgs_lab_fail("cannot create directory %s: %s", copy, strerror(errno));
      rc = PGS_EIO;
    }
    *p = saved;
    if (saved == '\0') break;
  }
  free(copy);
  return rc;
}

pgs_status_t pgs_lab_write_file(const lab_t *lab, const char *path, const char *text,
                                bool for_postgres) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, for_postgres ? 0600 : 0644);
  if (fd < 0) {
    pgs_lab_fail("cannot write %s: %s", path, strerror(errno));
    return PGS_EIO;
  }
  size_t len = strlen(text);
  ssize_t n = write(fd, text, len);
  pgs_status_t rc = PGS_OK;
  if (n < 0 || (size_t)n != len) {
    pgs_lab_fail("cannot write %s: %s", path, n < 0 ? strerror(errno) : "short write");
    rc = PGS_EIO;
  }
  if (rc == PGS_OK && for_postgres) rc = give_to_postgres(lab, path, fd);
  close(fd);
  return rc;
}

static int remove_entry_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  if (remove(path) != 0 && errno != ENOENT) {
    pgs_lab_fail("cannot remove %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

pgs_status_t pgs_lab_remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return PGS_OK;
  return nftw(path, remove_entry_cb, 16, FTW_DEPTH | FTW_PHYS) == 0 ? PGS_OK : PGS_EIO;
}

off_t pgs_lab_file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? st.st_size : 0;
}

/* Copy PATH from offset FROM to stderr, at most its last MAX_BYTES. */
void pgs_lab_print_log(const char *path, off_t from, size_t max_bytes) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  off_t size = lseek(fd, 0, SEEK_END);
  off_t start = from;
  if (size - start > (off_t)max_bytes) {
    start = size - (off_t)max_bytes;
    fprintf(stderr, "  [... earlier output in %s]\n", path);
  }
  char buf[4096];
  ssize_t n;
  lseek(fd, start, SEEK_SET);
  while ((n = read(fd, buf, sizeof(buf))) > 0) fwrite(buf, 1, (size_t)n, stderr);
  close(fd);
}

/* ---- processes ---- */

/* In a child: become the postgres OS user, or exit. */
static void drop_to_postgres(const lab_t *lab) {
  if (!lab->as_postgres) return;
  if (initgroups("postgres", lab->pg_gid) != 0 || setgid(lab->pg_gid) != 0 ||
      setuid(lab->pg_uid) != 0) {
    fprintf(stderr, "pgshardctl: cannot become the postgres user: %s\n", strerror(errno));
    _exit(126);
  }
  setenv("HOME", lab->pg_home, 1);
  setenv("USER", "postgres", 1);
  setenv("LOGNAME", "postgres", 1);
}

static void log_command(int fd, const char *const argv[]) {
  char when[32];
  time_t now = time(NULL);
  strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&now));
  dprintf(fd, "\n==> %s $", when);
  for (int i = 0; argv[i]; i++) dprintf(fd, " %s", argv[i]);
  dprintf(fd, "\n");
}

__attribute__((noreturn)) static void run_child(const lab_t *lab, int log_fd, const char *cwd,
                                                const char *const argv[]) {
  int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd >= 0) dup2(null_fd, 0);
  dup2(log_fd, 1);
  dup2(log_fd, 2);
  drop_to_postgres(lab);
  if (cwd && chdir(cwd) != 0) {
    fprintf(stderr, "pgshardctl: cannot enter %s: %s\n", cwd, strerror(errno));
    _exit(126);
  }
  execv(argv[0], (char *const *)argv);
  fprintf(stderr, "pgshardctl: cannot run %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

static int wait_child(pid_t pid) {
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

static void describe_exit(int status, char *buf, size_t len) {
  if (WIFEXITED(status))
    snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
  else
    snprintf(buf, len, "wait status %d", status);
}

pgs_status_t pgs_lab_run(const lab_t *lab, const char *log_path, const char *cwd,
                         const char *const argv[]) {
  int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    pgs_lab_fail("cannot open %s: %s", log_path, strerror(errno));
    return PGS_EIO;
  }
  if (give_to_postgres(lab, log_path, fd) != PGS_OK) {
    close(fd);
    return PGS_EIO;
  }
  off_t start = lseek(fd, 0, SEEK_END);
  log_command(fd, argv);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) run_child(lab, fd, cwd, argv);
  close(fd);
  if (pid < 0) {
    pgs_lab_fail("fork: %s", strerror(errno));
    return PGS_EIO;
  }
  int status = wait_child(pid);
  if (status == 0) return PGS_OK;
  char how[64];
  describe_exit(status, how, sizeof(how));
  const char *name = strrchr(argv[0], '/');
  pgs_lab_fail("%s failed (%s); its output (from %s):", name ? name + 1 : argv[0], how, log_path);
  pgs_lab_print_log(log_path, start, 8192);
  return PGS_EIO;
}

bool pgs_lab_postgres_can_enter(const lab_t *lab, const char *dir) {
  if (!lab->as_postgres) return true;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    drop_to_postgres(lab);
    _exit(access(dir, X_OK) == 0 ? 0 : 1);
  }
  return pid > 0 && wait_child(pid) == 0;
}

/* Fields 3 (state) and 22 (start time in clock ticks after boot) of
 * /proc/PID/stat. The command name (field 2) may hold spaces and parentheses,
 * so parsing starts after its last ')'. */
static bool read_proc_stat(pid_t pid, char *state, unsigned long long *start_ticks) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] != ' ') return false;
  *state = p[2];
  p += 2;
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  if (p == NULL) return false;
  *start_ticks = strtoull(p, NULL, 10);
  return true;
}

static time_t boot_time(void) {
  FILE *f = fopen("/proc/stat", "re");
  char line[256];
  long long btime = 0;
  if (f == NULL) return 0;
  while (fgets(line, sizeof(line), f)) {
    if (sscanf(line, "btime %lld", &btime) == 1) break;
  }
  fclose(f);
  return (time_t)btime;
}

/* Alive, and not a zombie waiting for a parent that never reaps it. */
bool pgs_lab_process_alive(pid_t pid) {
  char state;
  unsigned long long ticks;
  return pid > 0 && read_proc_stat(pid, &state, &ticks) && state != 'Z' && state != 'X';
}

/* The process a pid file (postmaster.pid, pgshard.pid) names, or 0 when it is
 * gone. A process that started after the file was last written is not the one
 * that wrote it (the pid was reused), so it does not count either; the slack
 * covers /proc/stat's one-second boot time. */
pid_t pgs_lab_pidfile_process(const char *path) {
  FILE *f = fopen(path, "re");
  struct stat st;
  long pid = 0;
  if (f == NULL) return 0;
  if (fscanf(f, "%ld", &pid) != 1 || fstat(fileno(f), &st) != 0) pid = 0;
  fclose(f);
  char state;
  unsigned long long ticks;
  if (pid <= 0 || !read_proc_stat((pid_t)pid, &state, &ticks) || state == 'Z' || state == 'X')
    return 0;
  time_t booted = boot_time();
  long hz = sysconf(_SC_CLK_TCK);
  if (booted > 0 && hz > 0 && booted + (time_t)(ticks / (unsigned long long)hz) > st.st_mtime + 2)
    return 0;
  return (pid_t)pid;
}

void pgs_lab_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

double pgs_lab_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- sockets ---- */

static struct addrinfo *resolve(const char *host, int port) {
  struct addrinfo hints, *list = NULL;
  char service[16];
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  snprintf(service, sizeof(service), "%d", port);
  if (getaddrinfo(host, service, &hints, &list) != 0) return NULL;
  return list;
}

/* True when some address of HOST:PORT cannot be bound because another socket
 * holds it. SO_REUSEADDR, as PostgreSQL sets it, keeps TIME_WAIT leftovers
 * from counting; addresses this machine lacks (no ::1) do not count either. */
bool pgs_lab_port_in_use(const char *host, int port) {
  struct addrinfo *list = resolve(host, port);
  bool in_use = false;
  for (struct addrinfo *ai = list; ai && !in_use; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno == EADDRINUSE) in_use = true;
    close(fd);
  }
  if (list) freeaddrinfo(list);
  return in_use;
}

static bool connect_within(const struct addrinfo *ai, int timeout_ms) {
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
  if (fd < 0) return false;
  bool ok = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
  if (!ok && errno == EINPROGRESS) {
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof(err);
    ok = poll(&pfd, 1, timeout_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
         err == 0;
  }
  close(fd);
  return ok;
}

bool pgs_lab_port_accepts(const char *host, int port) {
  struct addrinfo *list = resolve(host, port);
  bool ok = false;
  for (struct addrinfo *ai = list; ai && !ok; ai = ai->ai_next) ok = connect_within(ai, 500);
  if (list) freeaddrinfo(list);
  return ok;
}

/* ---- libpq ---- */

static void copy_error(char *err, size_t errlen, const char *message) {
  snprintf(err, errlen, "%s", message);
  size_t len = strlen(err);
  while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == ' ')) err[--len] = '\0';
}

static const char *lab_sslmode = "disable";

void pgs_lab_connect_tls(bool on) { lab_sslmode = on ? "require" : "disable"; }

/* A superuser connection to one lab server; NULL with the reason in ERR. */
PGconn *pgs_lab_connect(const char *host, int port, const char *dbname, char *err, size_t errlen) {
  char port_text[16];
  snprintf(port_text, sizeof(port_text), "%d", port);
  const char *keys[] = {"host",    "port",       "dbname",           "user", "connect_timeout",
                        "sslmode", "gssencmode", "application_name", NULL};
  const char *values[] = {host,        port_text, dbname,       LAB_SUPERUSER, "5",
                          lab_sslmode, "disable", "pgshardctl", NULL};
  PGconn *conn = PQconnectdbParams(keys, values, 0);
  if (PQstatus(conn) == CONNECTION_OK) return conn;
  copy_error(err, errlen, PQerrorMessage(conn));
  PQfinish(conn);
  return NULL;
}

/* Run one statement; NULL with the server's message in ERR when it fails.
 * Without parameters it goes through the simple protocol, which ALTER SYSTEM
 * and CREATE DATABASE accept outside a transaction block. */
PGresult *pgs_lab_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                        char *err, size_t errlen) {
  PGresult *res = nparams == 0 ? PQexec(conn, sql)
                               : PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(res);
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) return res;
  copy_error(err, errlen, res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
  if (err[0] == '\0') copy_error(err, errlen, PQerrorMessage(conn));
  PQclear(res);
  return NULL;
}
