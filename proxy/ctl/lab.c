/*
 * lab.c — `pgshardctl lab`: a real sharded, replicated PostgreSQL 15 cluster
 * on this machine, built from a pgshard config, for demos, CI and replica-lag
 * tests.
 *
 * Every verb reads the same options (-c FILE, --dir DIR) into a lab_t; the
 * config is parsed by router/config.c and mapped onto servers (see lab.h).
 * `up` and `down` hold an exclusive lock on DIR, so two of them never
 * interleave. `up` is idempotent: it builds what is missing, starts what is
 * stopped and leaves running servers alone. Primaries come first, then the
 * roles and databases on them, then replicas (so a fresh base backup already
 * holds every database), then the proxy or proxies (lab_proxy.c). `down`
 * needs no config: it stops every proxy, then every server it finds in DIR,
 * replicas before primaries.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "ctl.h"
#include "lab.h"

typedef struct lab_options {
  const char *verb;
  const char *config_path;
  const char *dir;
  bool no_proxy;
  bool purge;
  bool tls;      /* up: servers with TLS (lab_tls.c) */
  int proxies;   /* up: --proxies N; 0 when not given (one proxy) */
  int timeout_s; /* wait */
  char **args;   /* positional arguments after the verb */
  int nargs;
} lab_options_t;

static void usage(FILE *out) {
  fprintf(out,
          "usage: pgshardctl lab up     -c FILE [--dir DIR] [--no-proxy] [--tls] [--proxies N]\n"
          "       pgshardctl lab status -c FILE [--dir DIR] [--no-proxy]\n"
          "       pgshardctl lab down   -c FILE [--dir DIR] [--purge]\n"
          "       pgshardctl lab lag    -c FILE [--dir DIR] DB.SHARD N pause|resume|delay MS\n"
          "       pgshardctl lab wait   -c FILE [--dir DIR] [--timeout SECONDS]\n"
          "DIR defaults to .pgshard-lab/ in the directory holding FILE.\n"
          "--tls: the servers take TLS connections only, with a certificate from the\n"
          "lab's own CA (DIR/tls/ca.crt); kept for the lab's life once made.\n"
          "--proxies N: run N pgshard (1 to %d, default 1), proxy I on FILE's listen\n"
          "port + I; up stops any proxy beyond N, status lists and down stops them all.\n",
          LAB_MAX_PROXIES);
}

/* ---- options ---- */

/* "--name VALUE" or "--name=VALUE"; advances *I past what it used. */
static bool option_value(int argc, char **argv, int *i, const char *name, const char **value) {
  size_t len = strlen(name);
  if (strncmp(argv[*i], name, len) != 0) return false;
  if (argv[*i][len] == '=') {
    *value = argv[*i] + len + 1;
    return true;
  }
  if (argv[*i][len] != '\0' || *i + 1 >= argc) return false;
  *value = argv[++*i];
  return true;
}

static bool is_number(const char *s) {
  if (*s == '-') s++;
  if (!isdigit((unsigned char)*s)) return false;
  while (isdigit((unsigned char)*s)) s++;
  return *s == '\0';
}

/* Returns -1 when the options are fine, else the exit status. */
static int parse_options(int argc, char **argv, lab_options_t *opts) {
  memset(opts, 0, sizeof(*opts));
  opts->verb = argv[0];
  opts->timeout_s = 60;
  opts->args = pgs_xcalloc((size_t)argc, sizeof(char *));
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *timeout, *proxies;
    if (!strcmp(opts->verb, "wait") && option_value(argc, argv, &i, "--timeout", &timeout)) {
      char *end;
      long v = strtol(timeout, &end, 10);
      if (end == timeout || *end || v <= 0 || v > 86400) {
        fprintf(stderr, "pgshardctl: lab wait: --timeout needs seconds (1 to 86400), got \"%s\"\n",
                timeout);
        return 2;
      }
      opts->timeout_s = (int)v;
    } else if (option_value(argc, argv, &i, "-c", &opts->config_path) ||
               option_value(argc, argv, &i, "--config", &opts->config_path) ||
               option_value(argc, argv, &i, "--dir", &opts->dir)) {
      continue;
    } else if (option_value(argc, argv, &i, "--proxies", &proxies)) {
      char *end;
      long v = strtol(proxies, &end, 10);
      if (strcmp(opts->verb, "up") != 0) {
        fprintf(stderr, "pgshardctl: lab %s does not take --proxies\n", opts->verb);
        usage(stderr);
        return 2;
      }
      if (end == proxies || *end || v < 1 || v > LAB_MAX_PROXIES) {
        fprintf(stderr, "pgshardctl: lab up: --proxies needs a number from 1 to %d, got \"%s\"\n",
                LAB_MAX_PROXIES, proxies);
        return 2;
      }
      opts->proxies = (int)v;
    } else if (!strcmp(a, "--no-proxy") && strcmp(opts->verb, "down") &&
               strcmp(opts->verb, "lag") && strcmp(opts->verb, "wait")) {
      opts->no_proxy = true;
    } else if (!strcmp(a, "--purge") && !strcmp(opts->verb, "down")) {
      opts->purge = true;
    } else if (!strcmp(a, "--tls") && !strcmp(opts->verb, "up")) {
      opts->tls = true;
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--no-proxy") || !strcmp(a, "--purge") || !strcmp(a, "--tls")) {
      fprintf(stderr, "pgshardctl: lab %s does not take %s\n", opts->verb, a);
      usage(stderr);
      return 2;
    } else if (a[0] == '-' && !is_number(a)) {
      fprintf(stderr, "pgshardctl: lab %s: unknown option or missing value: %s\n", opts->verb, a);
      usage(stderr);
      return 2;
    } else {
      opts->args[opts->nargs++] = argv[i];
    }
  }
  if (opts->proxies && opts->no_proxy) {
    fprintf(stderr, "pgshardctl: lab up: --proxies and --no-proxy exclude each other\n");
    return 2;
  }
  bool down = !strcmp(opts->verb, "down");
  if (opts->config_path == NULL && !(down && opts->dir)) {
    fprintf(stderr, "pgshardctl: lab %s: -c FILE is required\n", opts->verb);
    usage(stderr);
    return 2;
  }
  if (opts->nargs > 0 && strcmp(opts->verb, "lag") != 0) {
    fprintf(stderr, "pgshardctl: lab %s: unexpected argument: %s\n", opts->verb, opts->args[0]);
    usage(stderr);
    return 2;
  }
  return -1;
}

/* ---- paths and environment ---- */

static char *absolute_path(const char *path) {
  char cwd[PATH_MAX];
  char *abs;
  if (path[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
    abs = pgs_xstrdup(path);
  else
    abs = pgs_lab_format("%s/%s", cwd, path);
  size_t len = strlen(abs);
  while (len > 1 && abs[len - 1] == '/') abs[--len] = '\0';
  return abs;
}

static void lab_resolve_paths(lab_t *lab, const lab_options_t *opts) {
  if (opts->config_path) {
    char real[PATH_MAX];
    lab->config_path =
        realpath(opts->config_path, real) ? pgs_xstrdup(real) : absolute_path(opts->config_path);
  }
  if (opts->dir) {
    lab->dir = absolute_path(opts->dir);
  } else {
    char *copy = pgs_xstrdup(lab->config_path);
    lab->dir = pgs_lab_format("%s/.pgshard-lab", dirname(copy));
    free(copy);
  }
  const char *bin = getenv("PGSHARD_PG_BIN");
  lab->pg_bin = pgs_xstrdup(bin && *bin ? bin : LAB_DEFAULT_PG_BIN);
}

/* PostgreSQL refuses to run as root; as root the lab runs it as `postgres`. */
static pgs_status_t lab_resolve_user(lab_t *lab) {
  if (geteuid() != 0) return PGS_OK;
  struct passwd *pw = getpwnam("postgres");
  if (pw == NULL) {
    pgs_lab_fail(
        "running as root, the lab runs PostgreSQL as the postgres OS user, "
        "which does not exist: install postgresql-15");
    return PGS_ENOTFOUND;
  }
  lab->as_postgres = true;
  lab->pg_uid = pw->pw_uid;
  lab->pg_gid = pw->pw_gid;
  lab->pg_home = pgs_xstrdup(pw->pw_dir);
  return PGS_OK;
}

static pgs_status_t lab_check_tools(const lab_t *lab) {
  static const char *const tools[] = {"initdb", "pg_ctl", "pg_basebackup"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(tools); i++) {
    char *path = pgs_lab_format("%s/%s", lab->pg_bin, tools[i]);
    bool found = access(path, X_OK) == 0;
    if (!found)
      pgs_lab_fail(
          "%s not found at %s: install postgresql-15 (or set PGSHARD_PG_BIN to the "
          "directory holding its programs)",
          tools[i], path);
    free(path);
    if (!found) return PGS_ENOTFOUND;
  }
  return PGS_OK;
}

/* ---- the model: config nodes onto servers ---- */

static void add_unique(char ***list, int *n, const char *value) {
  for (int i = 0; i < *n; i++)
    if (!strcmp((*list)[i], value)) return;
  *list = pgs_xrealloc(*list, sizeof(**list) * (size_t)(*n + 1));
  (*list)[(*n)++] = pgs_xstrdup(value);
}

static int find_server(const lab_t *lab, int port) {
  for (int i = 0; i < lab->nservers; i++)
    if (lab->servers[i].port == port) return i;
  return -1;
}

static int add_server(lab_t *lab, int port, lab_role_t role, int upstream, const char *label) {
  lab->servers = pgs_xrealloc(lab->servers, sizeof(*lab->servers) * (size_t)(lab->nservers + 1));
  lab_server_t *server = &lab->servers[lab->nservers];
  memset(server, 0, sizeof(*server));
  server->port = port;
  server->role = role;
  server->upstream = upstream;
  server->dir = pgs_lab_format("%s/%d", lab->dir, port);
  server->datadir = pgs_lab_format("%s/data", server->dir);
  snprintf(server->label, sizeof(server->label), "%s", label);
  return lab->nservers++;
}

static void node_label(const lab_node_t *ln, char *buf, size_t len) {
  if (ln->replica_index < 0)
    snprintf(buf, len, "%s.%s primary", ln->database->name, ln->shard->name);
  else
    snprintf(buf, len, "%s.%s replica %d", ln->database->name, ln->shard->name, ln->replica_index);
}

/* The server NODE joins, creating it when its port is new; -1 when the
 * config asks one server to be two things. */
static int server_for(lab_t *lab, const lab_node_t *ln, int upstream, const char *label) {
  lab_role_t role = ln->replica_index < 0 ? LAB_PRIMARY : LAB_REPLICA;
  int s = find_server(lab, ln->node->port);
  if (s < 0) return add_server(lab, ln->node->port, role, upstream, label);
  const lab_server_t *server = &lab->servers[s];
  if (server->role != role) {
    pgs_lab_fail(
        "%s:%d: %s and %s are both on port %d; one server cannot be a primary and a "
        "replica",
        lab->config_path, ln->node->line, label, server->label, server->port);
    return -1;
  }
  if (role == LAB_REPLICA && server->upstream != upstream) {
    pgs_lab_fail(
        "%s:%d: %s shares port %d with %s, which streams from another primary "
        "(port %d, not %d)",
        lab->config_path, ln->node->line, label, server->port, server->label,
        lab->servers[server->upstream].port, lab->servers[upstream].port);
    return -1;
  }
  return s;
}

static pgs_status_t add_node(lab_t *lab, const pgs_database_t *db, const pgs_shard_t *shard,
                             const pgs_node_t *node, int replica_index) {
  lab->nodes = pgs_xrealloc(lab->nodes, sizeof(*lab->nodes) * (size_t)(lab->nnodes + 1));
  lab_node_t *ln = &lab->nodes[lab->nnodes++];
  *ln = (lab_node_t){db, shard, node, replica_index, -1};
  if (!pgs_host_is_loopback(node->host)) return PGS_OK;
  char label[160];
  node_label(ln, label, sizeof(label));
  int upstream = -1;
  if (replica_index >= 0) {
    upstream =
        pgs_host_is_loopback(shard->primary.host) ? find_server(lab, shard->primary.port) : -1;
    if (upstream < 0) {
      pgs_lab_fail(
          "%s:%d: %s is on loopback but its primary (%s) is not; the lab builds replicas "
          "only of primaries it runs",
          lab->config_path, node->line, label, shard->primary.host);
      return PGS_ECONFIG;
    }
  }
  int s = server_for(lab, ln, upstream, label);
  if (s < 0) return PGS_ECONFIG;
  ln->server = s;
  add_unique(&lab->servers[s].hosts, &lab->servers[s].nhosts, node->host);
  lab_server_t *owner = &lab->servers[replica_index < 0 ? s : upstream];
  add_unique(&owner->databases, &owner->ndatabases, node->dbname ? node->dbname : db->name);
  return PGS_OK;
}

/* A node without user= logs in as the client's user: every [user.*]. */
static void add_roles(lab_t *lab, const pgs_node_t *node) {
  if (node->user) {
    if (strcmp(node->user, LAB_SUPERUSER) != 0) add_unique(&lab->roles, &lab->nroles, node->user);
    return;
  }
  for (int u = 0; u < lab->config->nusers; u++)
    if (strcmp(lab->config->users[u].name, LAB_SUPERUSER) != 0)
      add_unique(&lab->roles, &lab->nroles, lab->config->users[u].name);
}

static pgs_status_t lab_build_model(lab_t *lab) {
  const pgs_config_t *config = lab->config;
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_t *shard = &db->shards[s];
      if (add_node(lab, db, shard, &shard->primary, -1) != PGS_OK) return PGS_ECONFIG;
      for (int r = 0; r < shard->nreplicas; r++)
        if (add_node(lab, db, shard, &shard->replicas[r], r) != PGS_OK) return PGS_ECONFIG;
    }
  }
  for (int i = 0; i < lab->nnodes; i++)
    if (lab->nodes[i].server >= 0) add_roles(lab, lab->nodes[i].node);
  return PGS_OK;
}

static pgs_status_t lab_load_config(lab_t *lab) {
  lab->config = pgs_config_load(lab->config_path);
  if (lab->config->nerrors == 0) return lab_build_model(lab);
  for (int i = 0; i < lab->config->nerrors; i++) {
    if (lab->config->errors[i].line > 0)
      fprintf(stderr, "%s:%d: %s\n", lab->config_path, lab->config->errors[i].line,
              lab->config->errors[i].message);
    else
      fprintf(stderr, "%s: %s\n", lab->config_path, lab->config->errors[i].message);
  }
  pgs_lab_fail("%s is not a valid config (see above)", lab->config_path);
  return PGS_ECONFIG;
}

static void free_strings(char **list, int n) {
  for (int i = 0; i < n; i++) free(list[i]);
  free(list);
}

static void lab_free(lab_t *lab) {
  for (int i = 0; i < lab->nservers; i++) {
    free_strings(lab->servers[i].hosts, lab->servers[i].nhosts);
    free_strings(lab->servers[i].databases, lab->servers[i].ndatabases);
    free(lab->servers[i].dir);
    free(lab->servers[i].datadir);
  }
  free(lab->servers);
  free(lab->nodes);
  free_strings(lab->roles, lab->nroles);
  pgs_config_unref(lab->config);
  free(lab->config_path);
  free(lab->dir);
  free(lab->pg_bin);
  free(lab->pg_home);
}

/* ---- the lab directory ---- */

/* An exclusive lock on DIR for the rest of this command; -1 on failure. */
static int lock_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    pgs_lab_fail("cannot open %s: %s", dir, strerror(errno));
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    printf("lab: waiting for another pgshardctl lab command on %s\n", dir);
    fflush(stdout);
    if (flock(fd, LOCK_EX) != 0) {
      pgs_lab_fail("cannot lock %s: %s", dir, strerror(errno));
      close(fd);
      return -1;
    }
  }
  return fd;
}

static pgs_status_t prepare_dir(const lab_t *lab, int *lock_fd) {
  if (pgs_lab_mkdir_parents(lab->dir) != PGS_OK) return PGS_EIO;
  if (!pgs_lab_postgres_can_enter(lab, lab->dir)) {
    pgs_lab_fail(
        "the postgres OS user cannot reach %s: as root the lab runs PostgreSQL as "
        "postgres, which needs search (x) permission on every parent directory; "
        "use --dir under /tmp, or chmod o+x the parents",
        lab->dir);
    return PGS_EIO;
  }
  *lock_fd = lock_dir(lab->dir);
  if (*lock_fd < 0) return PGS_EIO;
  char *info = pgs_lab_format("%s/lab.info", lab->dir);
  char *text = pgs_lab_format(
      "# A pgshard lab: `pgshardctl lab down --purge` removes this "
      "directory.\nconfig = %s\n",
      lab->config_path);
  pgs_status_t rc = pgs_lab_write_file(lab, info, text, false);
  free(info);
  free(text);
  return rc;
}

/* ---- up ---- */

static pgs_status_t up_servers(const lab_t *lab) {
  pgs_status_t rc = PGS_OK;
  for (int i = 0; i < lab->nservers && rc == PGS_OK; i++)
    if (lab->servers[i].role == LAB_PRIMARY) rc = pgs_lab_server_ensure(lab, &lab->servers[i]);
  for (int i = 0; i < lab->nservers && rc == PGS_OK; i++)
    if (lab->servers[i].role == LAB_PRIMARY)
      rc = pgs_lab_server_create_databases(lab, &lab->servers[i]);
  for (int i = 0; i < lab->nservers && rc == PGS_OK; i++)
    if (lab->servers[i].role == LAB_REPLICA) rc = pgs_lab_server_ensure(lab, &lab->servers[i]);
  for (int i = 0; i < lab->nservers && rc == PGS_OK; i++)
    if (lab->servers[i].role == LAB_REPLICA)
      rc = pgs_lab_server_wait_replica(lab, &lab->servers[i]);
  return rc;
}

static int lab_up(lab_t *lab, bool no_proxy) {
  int lock_fd = -1;
  pgs_status_t rc = lab_check_tools(lab);
  if (rc == PGS_OK) rc = prepare_dir(lab, &lock_fd);
  if (rc == PGS_OK && lab->nservers == 0)
    printf("lab: no node of %s is on loopback; no server to start\n", lab->config_path);
  if (rc == PGS_OK && lab->tls) rc = pgs_lab_tls_ensure(lab);
  if (rc == PGS_OK) rc = up_servers(lab);
  if (rc == PGS_OK && !no_proxy) rc = pgs_lab_proxy_start(lab);
  if (lock_fd >= 0) close(lock_fd);
  if (rc != PGS_OK) return 1;
  printf("lab: up: %d server%s in %s\n", lab->nservers, lab->nservers == 1 ? "" : "s", lab->dir);
  return 0;
}

/* ---- down ---- */

static bool is_port_name(const char *name) {
  for (const char *p = name; *p; p++)
    if (!isdigit((unsigned char)*p)) return false;
  return *name != '\0';
}

/* Stop every server in DIR whose data directory is (REPLICAS) or is not a
 * standby. Keeps going past a failure so as much as possible stops. */
static pgs_status_t stop_servers(const lab_t *lab, bool replicas) {
  DIR *d = opendir(lab->dir);
  struct dirent *entry;
  pgs_status_t rc = PGS_OK;
  if (d == NULL) return PGS_OK;
  while ((entry = readdir(d)) != NULL) {
    if (!is_port_name(entry->d_name)) continue;
    char *server_dir = pgs_lab_format("%s/%s", lab->dir, entry->d_name);
    char *signal = pgs_lab_format("%s/data/standby.signal", server_dir);
    if (pgs_lab_exists(signal) == replicas && pgs_lab_server_stop(lab, server_dir) != PGS_OK)
      rc = PGS_EIO;
    free(signal);
    free(server_dir);
  }
  closedir(d);
  return rc;
}

/* Remove DIR, but only when it is a lab directory (or empty): a mistyped
 * --dir must not cost someone their home directory. */
static pgs_status_t purge_dir(const lab_t *lab) {
  char *info = pgs_lab_format("%s/lab.info", lab->dir);
  bool is_lab = pgs_lab_exists(info);
  free(info);
  if (!is_lab && rmdir(lab->dir) != 0 && errno != ENOENT) {
    pgs_lab_fail("%s has no lab.info, so it may not be a lab directory; not removing it", lab->dir);
    return PGS_EIO;
  }
  return pgs_lab_remove_tree(lab->dir);
}

static int lab_down(lab_t *lab, bool purge) {
  if (!pgs_lab_exists(lab->dir)) {
    printf("lab: down: %s does not exist; nothing runs\n", lab->dir);
    return 0;
  }
  if (lab_resolve_user(lab) != PGS_OK) return 1;
  int lock_fd = lock_dir(lab->dir);
  if (lock_fd < 0) return 1;
  pgs_status_t rc = pgs_lab_proxy_stop(lab);
  if (stop_servers(lab, true) != PGS_OK) rc = PGS_EIO;
  if (stop_servers(lab, false) != PGS_OK) rc = PGS_EIO;
  if (rc == PGS_OK && purge) rc = purge_dir(lab);
  close(lock_fd);
  if (rc != PGS_OK) return 1;
  printf(purge ? "lab: down: nothing runs, %s removed\n" : "lab: down: nothing runs from %s\n",
         lab->dir);
  return 0;
}

/* ---- dispatch ---- */

static int lab_run_verb(lab_t *lab, const lab_options_t *opts) {
  const char *verb = opts->verb;
  if (!strcmp(verb, "down")) return lab_down(lab, opts->purge);
  if (lab_load_config(lab) != PGS_OK) return 1;
  lab->tls = (opts->tls && !strcmp(verb, "up")) || pgs_lab_tls_present(lab);
  lab->proxies = opts->proxies;
  pgs_lab_connect_tls(lab->tls);
  if (!strcmp(verb, "up")) return lab_resolve_user(lab) == PGS_OK ? lab_up(lab, opts->no_proxy) : 1;
  if (!strcmp(verb, "status")) return pgs_lab_status(lab, !opts->no_proxy);
  if (!strcmp(verb, "wait")) return pgs_lab_wait(lab, opts->timeout_s);
  return pgs_lab_lag(lab, opts->nargs, opts->args);
}

int pgs_ctl_lab(int argc, char **argv) {
  static const char *const verbs[] = {"up", "status", "down", "lag", "wait"};
  bool known = false;
  if (argc > 0 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help"))) {
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; argc > 0 && i < PGS_ARRAY_LEN(verbs); i++) known |= !strcmp(argv[0], verbs[i]);
  if (!known) {
    if (argc > 0) fprintf(stderr, "pgshardctl: lab: unknown command \"%s\"\n", argv[0]);
    usage(stderr);
    return 2;
  }
  lab_options_t opts;
  int rc = parse_options(argc, argv, &opts);
  if (rc < 0) {
    lab_t lab;
    memset(&lab, 0, sizeof(lab));
    lab_resolve_paths(&lab, &opts);
    rc = lab_run_verb(&lab, &opts);
    lab_free(&lab);
  }
  free(opts.args);
  fflush(stdout);
  return rc;
}
