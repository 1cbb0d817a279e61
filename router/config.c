/*
 * config.c — ini file to immutable pgs_config_t.
 *
 * inih calls handler() once per key. The handler validates each value as it
 * comes and records problems with their line numbers instead of stopping, so
 * one run of `pgshardctl check` names every mistake. Cross-section checks
 * (a shard for an unknown database, a database with no shard) run after the
 * whole file is read, and so does the shard map ([table.DB.T], [geo.DB],
 * [tenants.DB]): it is kept raw while reading, then typed, sorted and
 * checked as a whole (ranges cover the key space exactly once, every shard
 * and region named exists, every bound, geo value and tenant parses as its
 * column type) into each database's pgs_shardmap_t. [slots.DB] becomes the
 * database's slot table the same way (every slot given to one shard exactly
 * once); without it the table is the default layout, so routing is always
 * one lookup. inih does not hand line numbers to the handler in
 * Debian's build, so the reader below counts them itself.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include <ini.h>

#include "pgshard/auth.h"
#include "pgshard/config.h"
#include "pgshard/proto.h"
#include "pgshard/tls.h"

/* The shard map as written: kept raw while the file is read, because a
 * table's range bounds are typed by a `type` that may come later in its
 * section, tenant pins by tables that may come later in the file, and every
 * shard name may be declared after the line naming it. shardmap_build()
 * turns these into each database's pgs_shardmap_t once the file is read. */
typedef struct raw_range {
  char *spec; /* "SHARD: LOW - HIGH" */
  int line;
} raw_range_t;

typedef struct raw_table {
  char *db;
  char *name;
  int line;
  char *column;
  bool bad_column, has_type, has_strategy, bad_type, bad_strategy;
  pgs_key_type_t type;
  pgs_strategy_t strategy;
  raw_range_t *ranges;
  int nranges;
} raw_table_t;

/* One `KEY = VALUE` line of [geo.DB] (a region and one of its values, or
 * default), of [tenants.DB] (a tenant and its shard) or of [slots.DB] (a
 * shard and its slot ranges). */
typedef struct raw_entry {
  char *db;
  char *key;
  char *value;
  int line;
} raw_entry_t;

typedef struct parse_state {
  pgs_config_t *config;
  int line; /* line of the key being handled */
  int next_line;
  size_t line_length; /* bytes of the current line read so far */
  /* section-level bookkeeping */
  char section[256];
  int section_line;
  /* the shard map, raw */
  raw_table_t *tables;
  int ntables;
  raw_entry_t *geo;
  int ngeo;
  raw_entry_t *tenants;
  int ntenants;
  raw_entry_t *slots;
  int nslots;
  /* Which sections this text may hold: a config file read whole has all;
   * with a map kept in PostgreSQL (pgs_config_load_map) the file gives
   * [pgshard] only and the map's text everything else. */
  enum { SECTIONS_ALL, SECTIONS_PGSHARD, SECTIONS_MAP } sections;
} parse_state_t;

/* Source for the line-counting reader: either a FILE or a string. */
typedef struct line_source {
  FILE *file;
  const char *text;
  parse_state_t *state;
} line_source_t;

/* Append a message about LINE (0: none) to LIST, of N entries. */
static void add_note(pgs_config_error_t **list, int *n, int line, const char *fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  *list = pgs_xrealloc(*list, sizeof(**list) * (size_t)(*n + 1));
  (*list)[*n].line = line;
  (*list)[*n].message = pgs_xstrdup(buf);
  (*n)++;
}

PGS_PRINTF(3, 4)
static void config_error(pgs_config_t *config, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  add_note(&config->errors, &config->nerrors, line, fmt, ap);
  va_end(ap);
}

PGS_PRINTF(3, 4)
static void config_warning(pgs_config_t *config, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  add_note(&config->warnings, &config->nwarnings, line, fmt, ap);
  va_end(ap);
}

/* A table or column name of the map as PostgreSQL names it: written plain,
 * it folds to lower case as an unquoted identifier does; in double quotes
 * ("Users") it keeps its case. Returns a malloc'ed name, or NULL when the
 * quoted form is malformed. *FOLDED: a plain name changed case. */
static char *map_identifier(const char *written, bool *folded) {
  size_t len = strlen(written);
  *folded = false;
  if (len >= 2 && written[0] == '"') {
    if (written[len - 1] != '"' || len == 2 || memchr(written + 1, '"', len - 2)) return NULL;
    return pgs_xstrndup(written + 1, len - 2);
  }
  char *name = pgs_xstrdup(written);
  for (char *p = name; *p; p++) {
    if (*p >= 'A' && *p <= 'Z') {
      *p = (char)(*p - 'A' + 'a');
      *folded = true;
    }
  }
  return name;
}

/* inih keeps the section name in a 50-byte buffer and silently cuts longer
 * ones, which would merge two shards whose names differ late, so a header
 * that long is refused here, where the raw line is still visible. */
#define INI_MAX_SECTION 50

static void check_section_header(parse_state_t *st, const char *line) {
  while (isspace((unsigned char)*line)) line++;
  if (*line != '[') return;
  const char *close = strchr(line + 1, ']');
  if (close && close - line - 1 >= INI_MAX_SECTION)
    config_error(st->config, st->line, "[%.*s]: section name longer than %d characters",
                 (int)(close - line - 1), line + 1, INI_MAX_SECTION - 1);
}

static char *read_line_cb(char *str, int num, void *stream) {
  line_source_t *src = stream;
  int n = 0;
  bool starts_line = src->state->line != src->state->next_line;
  if (num <= 1) return NULL;
  if (src->file) {
    int c;
    while (n < num - 1 && (c = fgetc(src->file)) != EOF) {
      str[n++] = (char)c;
      if (c == '\n') break;
    }
  } else {
    while (n < num - 1 && *src->text) {
      char c = *src->text++;
      str[n++] = c;
      if (c == '\n') break;
    }
  }
  if (n == 0) return NULL;
  str[n] = '\0';
  src->state->line = src->state->next_line;
  if (str[n - 1] == '\n') src->state->next_line++;
  if (starts_line) check_section_header(src->state, str);

  /* Past ini_max_line inih parses the rest of the line as a line of its own. */
  size_t before = starts_line ? 0 : src->state->line_length;
  src->state->line_length = before + (size_t)n - (str[n - 1] == '\n');
  if (before < (size_t)ini_max_line && src->state->line_length >= (size_t)ini_max_line)
    config_error(src->state->config, src->state->line, "line longer than %d characters",
                 ini_max_line - 1);
  return str;
}

/* ---- value parsers: each records an error and returns false when bad ---- */

static bool parse_int(parse_state_t *st, const char *key, const char *value, int64_t min,
                      int64_t max, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(value, &end, 10);
  if (errno || end == value || *end != '\0' || v < min || v > max) {
    config_error(st->config, st->line, "%s: expected an integer between %lld and %lld, got \"%s\"",
                 key, (long long)min, (long long)max, value);
    return false;
  }
  *out = v;
  return true;
}

static void set_int(parse_state_t *st, const char *key, const char *value, int min, int max,
                    int *out) {
  int64_t v;
  if (parse_int(st, key, value, min, max, &v)) *out = (int)v;
}

static bool parse_bool(parse_state_t *st, const char *key, const char *value, bool *out) {
  if (!strcasecmp(value, "true") || !strcasecmp(value, "on") || !strcasecmp(value, "yes") ||
      !strcmp(value, "1")) {
    *out = true;
    return true;
  }
  if (!strcasecmp(value, "false") || !strcasecmp(value, "off") || !strcasecmp(value, "no") ||
      !strcmp(value, "0")) {
    *out = false;
    return true;
  }
  config_error(st->config, st->line, "%s: expected true or false, got \"%s\"", key, value);
  return false;
}

/* Match VALUE against a NULL-terminated list of names; the index is the enum. */
static bool parse_enum(parse_state_t *st, const char *key, const char *value,
                       const char *const *names, int *out) {
  for (int i = 0; names[i]; i++) {
    if (!strcasecmp(value, names[i])) {
      *out = i;
      return true;
    }
  }
  char choices[256] = "";
  for (int i = 0; names[i]; i++) {
    if (i) strncat(choices, " | ", sizeof(choices) - strlen(choices) - 1);
    strncat(choices, names[i], sizeof(choices) - strlen(choices) - 1);
  }
  config_error(st->config, st->line, "%s: expected one of %s, got \"%s\"", key, choices, value);
  return false;
}

#define PARSE_ENUM(st, key, value, names, field)                                                   \
  do {                                                                                             \
    int v_;                                                                                        \
    if (parse_enum(st, key, value, names, &v_)) field = v_;                                        \
  } while (0)

static const char *const auth_names[] = {"trust", "md5", "scram-sha-256", NULL};
static const char *const pool_mode_names[] = {"transaction", "session", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};
static const char *const ryw_names[] = {"off", "window", "session", "lsn", NULL};
static const char *const fallback_names[] = {"primary", "error", NULL};
static const char *const xwrite_names[] = {"deny", "allow", "2pc", NULL};
static const char *const hash_names[] = {"xxh3", "postgres", NULL};
static const char *const allow_deny_names[] = {"deny", "allow", NULL};
static const char *const tenant_isolation_names[] = {"shard", "strict", NULL};
static const char *const client_tls_names[] = {"disable",   "allow",       "require",
                                               "verify-ca", "verify-full", NULL};

/* ---- conninfo ---- */

bool pgs_host_is_loopback(const char *host) {
  if (host == NULL || *host == '\0') return false;
  return !strncmp(host, "127.", 4) || !strcmp(host, "::1") || !strcasecmp(host, "localhost");
}

pgs_status_t pgs_conninfo_parse(const char *conninfo, pgs_node_t *node, char *err, size_t errlen) {
  const char *p = conninfo;
  node->host = NULL;
  node->port = 5432;
  node->dbname = node->user = node->password = NULL;
  while (*p) {
    while (isspace((unsigned char)*p)) p++;
    if (!*p) break;
    const char *kstart = p;
    while (*p && *p != '=' && !isspace((unsigned char)*p)) p++;
    size_t klen = (size_t)(p - kstart);
    while (isspace((unsigned char)*p)) p++;
    if (*p != '=' || klen == 0) {
      snprintf(err, errlen, "conninfo: expected key=value near \"%.20s\"", kstart);
      return PGS_EINVAL;
    }
    p++;
    while (isspace((unsigned char)*p)) p++;
    char value[1024];
    size_t vlen = 0;
    if (*p == '\'') {
      p++;
      while (*p && *p != '\'') {
        if (*p == '\\' && p[1]) p++;
        if (vlen < sizeof(value) - 1) value[vlen++] = *p;
        p++;
      }
      if (*p != '\'') {
        snprintf(err, errlen, "conninfo: unterminated quoted value");
        return PGS_EINVAL;
      }
      p++;
    } else {
      while (*p && !isspace((unsigned char)*p)) {
        if (*p == '\\' && p[1]) p++;
        if (vlen < sizeof(value) - 1) value[vlen++] = *p;
        p++;
      }
    }
    value[vlen] = '\0';
    if (klen == 4 && !strncmp(kstart, "host", 4)) {
      free(node->host);
      node->host = pgs_xstrdup(value);
    } else if (klen == 4 && !strncmp(kstart, "port", 4)) {
      char *end;
      long port = strtol(value, &end, 10);
      if (*end || port < 1 || port > 65535) {
        snprintf(err, errlen, "conninfo: bad port \"%s\"", value);
        return PGS_EINVAL;
      }
      node->port = (int)port;
    } else if (klen == 6 && !strncmp(kstart, "dbname", 6)) {
      free(node->dbname);
      node->dbname = pgs_xstrdup(value);
    } else if (klen == 4 && !strncmp(kstart, "user", 4)) {
      free(node->user);
      node->user = pgs_xstrdup(value);
    } else if (klen == 8 && !strncmp(kstart, "password", 8)) {
      free(node->password);
      node->password = pgs_xstrdup(value);
    }
  }
  if (node->host == NULL) node->host = pgs_xstrdup("127.0.0.1");
  return PGS_OK;
}

static void node_free(pgs_node_t *node) {
  free(node->conninfo);
  free(node->host);
  free(node->dbname);
  free(node->user);
  free(node->password);
}

/* ---- sections ---- */

static pgs_user_t *get_user(pgs_config_t *config, const char *name, int line) {
  for (int i = 0; i < config->nusers; i++)
    if (!strcmp(config->users[i].name, name)) return &config->users[i];
  config->users =
      pgs_xrealloc(config->users, sizeof(*config->users) * (size_t)(config->nusers + 1));
  pgs_user_t *user = &config->users[config->nusers++];
  memset(user, 0, sizeof(*user));
  user->name = pgs_xstrdup(name);
  user->line = line;
  return user;
}

static void database_defaults(pgs_database_t *db) {
  db->pool_mode = PGS_POOL_TRANSACTION;
  db->pool_size = 20;
  db->read_your_writes = PGS_RYW_LSN;
  db->ryw_window_ms = 1000;
  db->max_replica_lag_ms = 1000;
  db->max_replica_lag_bytes = 16 * 1024 * 1024;
  db->lag_check_interval_ms = 100;
  db->node_down_failures = 3;
  db->lag_fallback = PGS_FALLBACK_PRIMARY;
  db->cross_shard_reads = true;
  db->cross_shard_writes = PGS_XWRITE_DENY;
  db->hash = PGS_HASH_XXH3;
}

static pgs_database_t *get_database(pgs_config_t *config, const char *name, int line) {
  for (int i = 0; i < config->ndatabases; i++)
    if (!strcmp(config->databases[i].name, name)) return &config->databases[i];
  config->databases = pgs_xrealloc(config->databases,
                                   sizeof(*config->databases) * (size_t)(config->ndatabases + 1));
  pgs_database_t *db = &config->databases[config->ndatabases++];
  memset(db, 0, sizeof(*db));
  db->name = pgs_xstrdup(name);
  db->line = line;
  database_defaults(db);
  return db;
}

static pgs_shard_t *get_shard(pgs_database_t *db, const char *name, int line) {
  for (int i = 0; i < db->nshards; i++)
    if (!strcmp(db->shards[i].name, name)) return &db->shards[i];
  db->shards = pgs_xrealloc(db->shards, sizeof(*db->shards) * (size_t)(db->nshards + 1));
  pgs_shard_t *shard = &db->shards[db->nshards++];
  memset(shard, 0, sizeof(*shard));
  shard->name = pgs_xstrdup(name);
  shard->line = line;
  return shard;
}

static bool valid_name(const char *name) {
  if (!*name || strlen(name) >= PGS_MAX_NAME) return false;
  for (const char *p = name; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-') return false;
  return true;
}

/* A table name in a section: a plain name, or one in double quotes that
 * keeps its case ([table.app."Users"]). */
static bool valid_table_name(const char *name) {
  size_t len = strlen(name);
  if (len >= 3 && name[0] == '"' && name[len - 1] == '"' && len < PGS_MAX_NAME) {
    for (size_t i = 1; i + 1 < len; i++)
      if (name[i] == '"' || (unsigned char)name[i] < 0x20) return false;
    return true;
  }
  return valid_name(name);
}

const char *pgs_client_tls_name(pgs_client_tls_t mode) {
  return (unsigned)mode <= PGS_CLIENT_TLS_VERIFY_FULL ? client_tls_names[mode] : "?";
}

/* A file name key: "" means none. */
static void set_file(parse_state_t *st, const char *value, char **file, int *line) {
  free(*file);
  *file = value[0] ? pgs_xstrdup(value) : NULL;
  *line = st->line;
}

/* HOST:PORT (an IPv6 address in brackets) at [S, E) into *HOST (allocated)
 * and *PORT; false (with an error for KEY) when it is not one. */
static bool parse_host_port(parse_state_t *st, const char *key, const char *s, const char *e,
                            char **host, int *port) {
  const char *colon = NULL;
  for (const char *p = s; p < e; p++)
    if (*p == ':') colon = p;
  char digits[8];
  size_t n = colon ? (size_t)(e - colon - 1) : 0;
  bool ok = colon && colon > s && n > 0 && n < sizeof(digits);
  int64_t v = 0;
  if (ok) {
    memcpy(digits, colon + 1, n);
    digits[n] = '\0';
    for (size_t i = 0; i < n && ok; i++) ok = digits[i] >= '0' && digits[i] <= '9';
    v = ok ? strtoll(digits, NULL, 10) : 0;
    ok = ok && v >= 1 && v <= 65535;
  }
  if (!ok) {
    config_error(st->config, st->line, "%s: expected HOST:PORT, got \"%.*s\"", key, (int)(e - s),
                 s);
    return false;
  }
  const char *hs = s, *he = colon;
  if (*hs == '[' && he > hs && he[-1] == ']') {
    hs++;
    he--;
  }
  *host = pgs_xstrndup(hs, (size_t)(he - hs));
  *port = (int)v;
  return true;
}

static void free_peers(pgs_config_t *c) {
  for (int i = 0; i < c->npeers; i++) free(c->peer_hosts[i]);
  free(c->peer_hosts);
  free(c->peer_ports);
  c->peer_hosts = NULL;
  c->peer_ports = NULL;
  c->npeers = 0;
}

/* peers = HOST:PORT, HOST:PORT, ... (commas or blanks between). */
static void parse_peers(parse_state_t *st, const char *key, const char *value) {
  pgs_config_t *c = st->config;
  free_peers(c);
  c->peers_line = st->line;
  c->peer_hosts = pgs_xcalloc(PGS_MAX_PEERS, sizeof(char *));
  c->peer_ports = pgs_xcalloc(PGS_MAX_PEERS, sizeof(int));
  for (const char *p = value; *p;) {
    while (*p == ',' || *p == ' ' || *p == '\t') p++;
    const char *e = p;
    while (*e && *e != ',' && *e != ' ' && *e != '\t') e++;
    if (e == p) break;
    if (c->npeers == PGS_MAX_PEERS) {
      config_error(c, st->line, "%s: more than %d peers", key, PGS_MAX_PEERS);
      return;
    }
    if (parse_host_port(st, key, p, e, &c->peer_hosts[c->npeers], &c->peer_ports[c->npeers]))
      c->npeers++;
    p = e;
  }
}

static void handle_pgshard(parse_state_t *st, const char *key, const char *value) {
  pgs_config_t *c = st->config;
  int64_t v64;
  if (!strcmp(key, "listen")) {
    const char *colon = strrchr(value, ':');
    int64_t port;
    if (!colon || colon == value || !parse_int(st, key, colon + 1, 1, 65535, &port)) {
      if (!colon || colon == value)
        config_error(c, st->line, "listen: expected HOST:PORT, got \"%s\"", value);
      return;
    }
    const char *hs = value, *he = colon;
    if (*hs == '[' && he > hs && he[-1] == ']') {
      hs++;
      he--;
    }
    free(c->listen_host);
    c->listen_host = pgs_xstrndup(hs, (size_t)(he - hs));
    c->listen_port = (int)port;
  } else if (!strcmp(key, "workers")) {
    set_int(st, key, value, 1, 64, &c->workers);
  } else if (!strcmp(key, "peer_id")) {
    set_int(st, key, value, 0, PGS_MAX_PEERS, &c->peer_id);
    c->peer_id_line = st->line;
  } else if (!strcmp(key, "peers")) {
    parse_peers(st, key, value);
  } else if (!strcmp(key, "metrics_listen")) {
    free(c->metrics_listen);
    c->metrics_listen = pgs_xstrdup(value);
  } else if (!strcmp(key, "log_format")) {
    PARSE_ENUM(st, key, value, log_format_names, c->log_format);
  } else if (!strcmp(key, "log_debug")) {
    parse_bool(st, key, value, &c->log_debug);
  } else if (!strcmp(key, "trace_comments")) {
    parse_bool(st, key, value, &c->trace_comments);
  } else if (!strcmp(key, "auth")) {
    PARSE_ENUM(st, key, value, auth_names, c->auth);
  } else if (!strcmp(key, "max_client_conn")) {
    set_int(st, key, value, 1, 1000000, &c->max_client_conn);
  } else if (!strcmp(key, "max_message_size")) {
    if (parse_int(st, key, value, 1024, (int64_t)1 << 30, &v64)) c->max_message_size = v64;
  } else if (!strcmp(key, "query_wait_timeout_ms")) {
    set_int(st, key, value, 1, 86400000, &c->query_wait_timeout_ms);
  } else if (!strcmp(key, "server_connect_timeout_ms")) {
    set_int(st, key, value, 1, 3600000, &c->server_connect_timeout_ms);
  } else if (!strcmp(key, "client_login_timeout_ms")) {
    set_int(st, key, value, 1, 3600000, &c->client_login_timeout_ms);
  } else if (!strcmp(key, "server_idle_timeout_ms")) {
    set_int(st, key, value, 0, 86400000, &c->server_idle_timeout_ms);
  } else if (!strcmp(key, "shutdown_timeout_ms")) {
    set_int(st, key, value, 0, 86400000, &c->shutdown_timeout_ms);
  } else if (!strcmp(key, "client_idle_timeout_ms")) {
    set_int(st, key, value, 0, 86400000, &c->client_idle_timeout_ms);
  } else if (!strcmp(key, "client_write_timeout_ms")) {
    set_int(st, key, value, 0, 86400000, &c->client_write_timeout_ms);
  } else if (!strcmp(key, "log_min_duration_ms")) {
    set_int(st, key, value, -1, 86400000, &c->log_min_duration_ms);
  } else if (!strcmp(key, "query_timeout_ms")) {
    set_int(st, key, value, 0, 86400000, &c->query_timeout_ms);
  } else if (!strcmp(key, "server_lifetime_ms")) {
    set_int(st, key, value, 0, 86400000, &c->server_lifetime_ms);
  } else if (!strcmp(key, "idle_transaction_timeout_ms")) {
    set_int(st, key, value, 0, 86400000, &c->idle_transaction_timeout_ms);
  } else if (!strcmp(key, "max_client_memory")) {
    if (parse_int(st, key, value, (int64_t)1 << 20, (int64_t)1 << 40, &v64))
      c->max_client_memory = v64;
  } else if (!strcmp(key, "max_total_client_memory")) {
    if (parse_int(st, key, value, (int64_t)1 << 20, (int64_t)1 << 50, &v64))
      c->max_total_client_memory = v64;
  } else if (!strcmp(key, "max_merge_bytes")) {
    if (parse_int(st, key, value, (int64_t)1 << 16, (int64_t)1 << 40, &v64))
      c->max_merge_bytes = v64;
  } else if (!strcmp(key, "max_notify_queue_bytes")) {
    if (parse_int(st, key, value, 1024, (int64_t)1 << 40, &v64)) c->max_notify_queue_bytes = v64;
  } else if (!strcmp(key, "twophase_log")) {
    /* The decision log of earlier versions: accepted, configs have it. */
    config_warning(c, st->line,
                   "twophase_log is no longer used: two-phase commit decisions are kept in the "
                   "shards (table pgshard.twophase_decision); remove this line");
  } else if (!strcmp(key, "client_tls")) {
    c->client_tls_line = st->line;
    if (!strcasecmp(value, "prefer")) /* PgBouncer's spelling of allow */
      c->client_tls = PGS_CLIENT_TLS_ALLOW;
    else
      PARSE_ENUM(st, key, value, client_tls_names, c->client_tls);
  } else if (!strcmp(key, "tls_cert_file")) {
    set_file(st, value, &c->tls_cert_file, &c->tls_cert_line);
  } else if (!strcmp(key, "tls_key_file")) {
    set_file(st, value, &c->tls_key_file, &c->tls_key_line);
  } else if (!strcmp(key, "tls_ca_file")) {
    set_file(st, value, &c->tls_ca_file, &c->tls_ca_line);
  } else if (!strcmp(key, "map_source")) {
    free(c->map_source);
    c->map_source = value[0] ? pgs_xstrdup(value) : NULL;
  } else if (!strcmp(key, "twophase_recovery_user")) {
    free(c->twophase_recovery_user);
    c->twophase_recovery_user = value[0] ? pgs_xstrdup(value) : NULL;
    c->twophase_recovery_user_line = st->line;
  } else {
    config_error(c, st->line, "unknown key \"%s\" in [pgshard]", key);
  }
}

static void handle_user(parse_state_t *st, const char *name, const char *key, const char *value) {
  pgs_user_t *user = get_user(st->config, name, st->line);
  if (!strcmp(key, "password")) {
    if (strlen(value) >= PGS_MAX_PASSWORD) {
      config_error(st->config, st->line, "password: longer than %d bytes", PGS_MAX_PASSWORD - 1);
      return;
    }
    free(user->password);
    user->password = pgs_xstrdup(value);
  } else if (!strcmp(key, "admin")) {
    parse_bool(st, key, value, &user->admin);
  } else {
    config_error(st->config, st->line, "unknown key \"%s\" in [user.%s]", key, name);
  }
}

static void handle_database(parse_state_t *st, const char *name, const char *key,
                            const char *value) {
  pgs_database_t *db = get_database(st->config, name, st->line);
  int64_t v64;
  if (!strcmp(key, "pool_mode")) {
    PARSE_ENUM(st, key, value, pool_mode_names, db->pool_mode);
  } else if (!strcmp(key, "pool_size")) {
    set_int(st, key, value, 1, 10000, &db->pool_size);
  } else if (!strcmp(key, "read_your_writes")) {
    PARSE_ENUM(st, key, value, ryw_names, db->read_your_writes);
  } else if (!strcmp(key, "ryw_window_ms")) {
    set_int(st, key, value, 0, 86400000, &db->ryw_window_ms);
  } else if (!strcmp(key, "max_replica_lag_ms")) {
    set_int(st, key, value, 0, 86400000, &db->max_replica_lag_ms);
  } else if (!strcmp(key, "max_replica_lag_bytes")) {
    if (parse_int(st, key, value, 0, INT64_MAX, &v64)) db->max_replica_lag_bytes = v64;
  } else if (!strcmp(key, "lag_check_interval_ms")) {
    set_int(st, key, value, 10, 3600000, &db->lag_check_interval_ms);
  } else if (!strcmp(key, "node_down_failures")) {
    set_int(st, key, value, 1, 1000, &db->node_down_failures);
  } else if (!strcmp(key, "lag_fallback")) {
    PARSE_ENUM(st, key, value, fallback_names, db->lag_fallback);
  } else if (!strcmp(key, "cross_shard_reads")) {
    int v;
    if (parse_enum(st, key, value, allow_deny_names, &v)) db->cross_shard_reads = v == 1;
  } else if (!strcmp(key, "cross_shard_writes")) {
    PARSE_ENUM(st, key, value, xwrite_names, db->cross_shard_writes);
  } else if (!strcmp(key, "tenant_isolation")) {
    int v;
    if (parse_enum(st, key, value, tenant_isolation_names, &v)) db->tenant_strict = v == 1;
  } else if (!strcmp(key, "hash")) {
    PARSE_ENUM(st, key, value, hash_names, db->hash);
  } else {
    config_error(st->config, st->line, "unknown key \"%s\" in [database.%s]", key, name);
  }
}

static void handle_shard(parse_state_t *st, const char *dbname, const char *name, const char *key,
                         const char *value) {
  pgs_database_t *db = get_database(st->config, dbname, st->line);
  pgs_shard_t *shard = get_shard(db, name, st->line);
  char err[256];
  if (!strcmp(key, "primary") || !strcmp(key, "replica")) {
    pgs_node_t node;
    memset(&node, 0, sizeof(node));
    if (pgs_conninfo_parse(value, &node, err, sizeof(err)) != PGS_OK) {
      config_error(st->config, st->line, "%s: %s", key, err);
      node_free(&node);
      return;
    }
    node.conninfo = pgs_xstrdup(value);
    node.line = st->line;
    if (key[0] == 'p') {
      if (shard->has_primary) {
        config_error(st->config, st->line, "shard %s.%s: primary given twice", dbname, name);
        node_free(&node);
        return;
      }
      node.is_primary = true;
      shard->primary = node;
      shard->has_primary = true;
    } else {
      shard->replicas =
          pgs_xrealloc(shard->replicas, sizeof(*shard->replicas) * (size_t)(shard->nreplicas + 1));
      shard->replicas[shard->nreplicas++] = node;
    }
  } else if (!strcmp(key, "region")) {
    free(shard->region);
    shard->region = pgs_xstrdup(value);
  } else {
    config_error(st->config, st->line, "unknown key \"%s\" in [shard.%s.%s]", key, dbname, name);
  }
}

/* ---- the shard map: [table.DB.T], [geo.DB], [tenants.DB] ---- */

static raw_table_t *get_raw_table(parse_state_t *st, const char *db, const char *name) {
  for (int i = 0; i < st->ntables; i++)
    if (!strcmp(st->tables[i].db, db) && !strcmp(st->tables[i].name, name)) return &st->tables[i];
  st->tables = pgs_xrealloc(st->tables, sizeof(*st->tables) * (size_t)(st->ntables + 1));
  raw_table_t *t = &st->tables[st->ntables++];
  memset(t, 0, sizeof(*t));
  t->db = pgs_xstrdup(db);
  t->name = pgs_xstrdup(name);
  t->line = st->line;
  return t;
}

static void handle_table(parse_state_t *st, const char *dbname, const char *name, const char *key,
                         const char *value) {
  raw_table_t *t = get_raw_table(st, dbname, name);
  pgs_config_t *c = st->config;
  if (!strcmp(key, "column")) {
    if (t->column || t->bad_column) {
      config_error(c, st->line, "[table.%s.%s]: column given twice", dbname, name);
    } else if (!*value || strpbrk(value, " \t") || strlen(value) >= PGS_MAX_NAME) {
      t->bad_column = true;
      config_error(c, st->line, "column: expected a column name, got \"%s\"", value);
    } else {
      t->column = pgs_xstrdup(value);
    }
  } else if (!strcmp(key, "type")) {
    if (t->has_type || t->bad_type) {
      config_error(c, st->line, "[table.%s.%s]: type given twice", dbname, name);
    } else if (pgs_key_type_parse(value, &t->type)) {
      t->has_type = true;
    } else {
      t->bad_type = true;
      config_error(c, st->line,
                   "type: expected one of smallint | int | bigint | text | uuid | date | "
                   "timestamptz, got \"%s\"",
                   value);
    }
  } else if (!strcmp(key, "strategy")) {
    if (t->has_strategy || t->bad_strategy) {
      config_error(c, st->line, "[table.%s.%s]: strategy given twice", dbname, name);
    } else if (pgs_strategy_parse(value, &t->strategy)) {
      t->has_strategy = true;
    } else {
      t->bad_strategy = true;
      config_error(c, st->line, "strategy: expected one of hash | range | geo | tenant, got \"%s\"",
                   value);
    }
  } else if (!strcmp(key, "range")) {
    t->ranges = pgs_xrealloc(t->ranges, sizeof(*t->ranges) * (size_t)(t->nranges + 1));
    t->ranges[t->nranges].spec = pgs_xstrdup(value);
    t->ranges[t->nranges].line = st->line;
    t->nranges++;
  } else {
    config_error(c, st->line, "unknown key \"%s\" in [table.%s.%s]", key, dbname, name);
  }
}

static void add_entry(raw_entry_t **list, int *n, const char *db, const char *key,
                      const char *value, size_t value_len, int line) {
  *list = pgs_xrealloc(*list, sizeof(**list) * (size_t)(*n + 1));
  raw_entry_t *e = &(*list)[(*n)++];
  e->db = pgs_xstrdup(db);
  e->key = pgs_xstrdup(key);
  e->value = pgs_xstrndup(value, value_len);
  e->line = line;
}

/* [geo.DB]: `REGION = VALUE VALUE ...` (blanks or commas between values),
 * repeatable; `default = REGION`. One raw entry per value. */
static void handle_geo(parse_state_t *st, const char *dbname, const char *key, const char *value) {
  if (!strcmp(key, "default")) {
    if (!valid_name(value)) {
      config_error(st->config, st->line, "default: expected a region name, got \"%s\"", value);
      return;
    }
    add_entry(&st->geo, &st->ngeo, dbname, key, value, strlen(value), st->line);
    return;
  }
  if (!valid_name(key)) {
    config_error(st->config, st->line, "[geo.%s]: bad region name \"%s\"", dbname, key);
    return;
  }
  int found = 0;
  for (const char *p = value; *p;) {
    while (*p == ',' || isspace((unsigned char)*p)) p++;
    const char *start = p;
    while (*p && *p != ',' && !isspace((unsigned char)*p)) p++;
    if (p > start) {
      add_entry(&st->geo, &st->ngeo, dbname, key, start, (size_t)(p - start), st->line);
      found++;
    }
  }
  if (!found) config_error(st->config, st->line, "[geo.%s]: region %s lists no value", dbname, key);
}

/* [tenants.DB]: `TENANT = SHARD`. */
static void handle_tenant(parse_state_t *st, const char *dbname, const char *key,
                          const char *value) {
  if (!valid_name(value)) {
    config_error(st->config, st->line, "tenant %s: expected a shard name, got \"%s\"", key, value);
    return;
  }
  add_entry(&st->tenants, &st->ntenants, dbname, key, value, strlen(value), st->line);
}

/* [slots.DB]: `SHARD = RANGES`, repeatable (a long list may go on several
 * lines); the ranges are read once the file is (build_slots). */
static void handle_slots(parse_state_t *st, const char *dbname, const char *key,
                         const char *value) {
  if (!valid_name(key)) {
    config_error(st->config, st->line, "[slots.%s]: bad shard name \"%s\"", dbname, key);
    return;
  }
  add_entry(&st->slots, &st->nslots, dbname, key, value, strlen(value), st->line);
}

/* Split "a.b.c" section names. Returns the number of parts (max 3). */
static int split_section(const char *section, char parts[3][128]) {
  int n = 0;
  const char *p = section;
  while (n < 3) {
    const char *dot = strchr(p, '.');
    size_t len = dot ? (size_t)(dot - p) : strlen(p);
    if (len >= 128) return -1;
    memcpy(parts[n], p, len);
    parts[n][len] = '\0';
    n++;
    if (!dot) return n;
    p = dot + 1;
  }
  return -1; /* more than three parts */
}

static int handler(void *user, const char *section, const char *key, const char *value) {
  parse_state_t *st = user;
  char parts[3][128];
  int n = split_section(section, parts);
  if (strcmp(section, st->section) != 0) {
    snprintf(st->section, sizeof(st->section), "%s", section);
    st->section_line = st->line;
    if (st->sections == SECTIONS_MAP && n == 1 && !strcmp(parts[0], "pgshard"))
      config_error(st->config, st->line,
                   "[pgshard]: not part of the shard map (it stays in the config file)");
  }
  bool pgshard_section = n == 1 && !strcmp(parts[0], "pgshard");
  if ((st->sections == SECTIONS_PGSHARD && !pgshard_section) ||
      (st->sections == SECTIONS_MAP && pgshard_section))
    return 1;
  if (pgshard_section) {
    handle_pgshard(st, key, value);
  } else if (n == 2 && !strcmp(parts[0], "user")) {
    if (!valid_name(parts[1]))
      config_error(st->config, st->line, "[%s]: bad user name", section);
    else
      handle_user(st, parts[1], key, value);
  } else if (n == 2 && !strcmp(parts[0], "database")) {
    if (!valid_name(parts[1]))
      config_error(st->config, st->line, "[%s]: bad database name", section);
    else
      handle_database(st, parts[1], key, value);
  } else if (n == 3 && !strcmp(parts[0], "shard")) {
    if (!valid_name(parts[1]) || !valid_name(parts[2]))
      config_error(st->config, st->line, "[%s]: bad database or shard name", section);
    else
      handle_shard(st, parts[1], parts[2], key, value);
  } else if (n == 3 && !strcmp(parts[0], "table")) {
    if (!valid_name(parts[1]) || !valid_table_name(parts[2]))
      config_error(st->config, st->line, "[%s]: bad database or table name", section);
    else
      handle_table(st, parts[1], parts[2], key, value);
  } else if (n == 2 && !strcmp(parts[0], "geo")) {
    if (!valid_name(parts[1]))
      config_error(st->config, st->line, "[%s]: bad database name", section);
    else
      handle_geo(st, parts[1], key, value);
  } else if (n == 2 && !strcmp(parts[0], "tenants")) {
    if (!valid_name(parts[1]))
      config_error(st->config, st->line, "[%s]: bad database name", section);
    else
      handle_tenant(st, parts[1], key, value);
  } else if (n == 2 && !strcmp(parts[0], "slots")) {
    if (!valid_name(parts[1]))
      config_error(st->config, st->line, "[%s]: bad database name", section);
    else
      handle_slots(st, parts[1], key, value);
  } else if (section[0] == '\0') {
    config_error(st->config, st->line, "key \"%s\" outside any section", key);
  } else {
    config_error(st->config, st->line, "unknown section [%s]", section);
  }
  return 1;
}

static void config_defaults(pgs_config_t *c) {
  c->listen_host = pgs_xstrdup("127.0.0.1");
  c->listen_port = 6432;
  c->workers = 2;
  c->log_format = PGS_LOG_TEXT;
  c->auth = PGS_AUTH_SCRAM;
  c->max_client_conn = 10000;
  c->max_message_size = 64 * 1024 * 1024;
  c->query_wait_timeout_ms = 120000;
  c->server_connect_timeout_ms = 5000;
  c->client_login_timeout_ms = 60000;
  c->server_idle_timeout_ms = 600000;
  c->shutdown_timeout_ms = 30000;
  c->log_min_duration_ms = -1;
  c->max_client_memory = (int64_t)256 << 20;
  c->max_total_client_memory = (int64_t)4 << 30;
  c->max_merge_bytes = (int64_t)256 << 20;
  c->max_notify_queue_bytes = (int64_t)1 << 20;
  c->refcount = 1;
}

static void config_validate(pgs_config_t *c) {
  for (int i = 0; i < c->nusers; i++) {
    if (c->users[i].password == NULL && c->auth != PGS_AUTH_TRUST)
      config_error(c, c->users[i].line, "[user.%s]: no password (auth = %s needs one)",
                   c->users[i].name, auth_names[c->auth]);
  }
  for (int i = 0; i < c->ndatabases; i++) {
    pgs_database_t *db = &c->databases[i];
    if (!strcmp(db->name, "pgshard"))
      config_error(c, db->line, "[database.pgshard]: \"pgshard\" is the admin database");
    if (db->nshards == 0)
      config_error(c, db->line, "[database.%s]: no [shard.%s.*] section", db->name, db->name);
    if (db->nshards > PGS_MAX_SHARDS)
      config_error(c, db->shards[PGS_MAX_SHARDS].line,
                   "[database.%s]: %d shards; at most %d are supported", db->name, db->nshards,
                   PGS_MAX_SHARDS);
    for (int s = 0; s < db->nshards; s++) {
      if (!db->shards[s].has_primary)
        config_error(c, db->shards[s].line, "[shard.%s.%s]: no primary", db->name,
                     db->shards[s].name);
    }
  }
  if (c->ndatabases == 0) config_error(c, 0, "no [database.*] section");
  if (c->peer_id > c->npeers)
    config_error(c, c->peer_id_line ? c->peer_id_line : c->peers_line,
                 "peer_id = %d: peers lists %d instance(s) (peer_id is this instance's place "
                 "in peers, from 1)",
                 c->peer_id, c->npeers);
  if (c->npeers > 0 && c->peer_id == 0)
    config_error(c, c->peers_line, "peers: set peer_id (this instance's place in peers, from 1)");
  if (c->twophase_recovery_user && !pgs_config_find_user(c, c->twophase_recovery_user))
    config_error(c, c->twophase_recovery_user_line, "twophase_recovery_user: no [user.%s] section",
                 c->twophase_recovery_user);
  if (c->max_total_client_memory < c->max_client_memory)
    config_error(c, 0, "max_total_client_memory (%lld) is below max_client_memory (%lld)",
                 (long long)c->max_total_client_memory, (long long)c->max_client_memory);
}

/* A SCRAM login checked against a plain-text password runs PBKDF2 (4096
 * HMACs) for every client, on the event loop; a secret made once here spares
 * that. pgs_scram_make_secret refuses md5 hashes, secrets and empty
 * passwords: those users keep no secret and log in exactly as before. */
static void make_scram_secrets(pgs_config_t *c) {
  for (int i = 0; i < c->nusers; i++) {
    pgs_user_t *user = &c->users[i];
    char secret[PGS_SCRAM_SECRET_SIZE];
    if (user->password == NULL) continue;
    if (pgs_scram_make_secret(user->password, secret, sizeof(secret)) == PGS_OK)
      user->scram_secret = pgs_xstrdup(secret);
    explicit_bzero(secret, sizeof(secret));
  }
}

/* ---- the shard map, built and checked once the whole file is read ---- */

static pgs_database_t *find_database(pgs_config_t *c, const char *name) {
  for (int i = 0; i < c->ndatabases; i++)
    if (!strcmp(c->databases[i].name, name)) return &c->databases[i];
  return NULL;
}

static pgs_key_t *key_dup(const pgs_key_t *key) {
  pgs_key_t *k = pgs_xmalloc(sizeof(*k));
  *k = *key;
  return k;
}

static char *trim_copy(const char *s, size_t len) {
  while (len > 0 && isspace((unsigned char)*s)) {
    s++;
    len--;
  }
  while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
  return pgs_xstrndup(s, len);
}

/* A bound as written: 'quoted' (with '' for a quote) or bare; "" is open. */
static char *unquote_bound(char *bound) {
  size_t len = strlen(bound);
  if (len >= 2 && bound[0] == '\'' && bound[len - 1] == '\'') {
    size_t o = 0;
    for (size_t i = 1; i + 1 < len; i++) {
      bound[o++] = bound[i];
      if (bound[i] == '\'' && bound[i + 1] == '\'') i++;
    }
    bound[o] = '\0';
  }
  return bound;
}

/* "SHARD: LOW - HIGH". The separator is a hyphen standing alone between
 * blanks (so -5, 2024-01-01 and 10:00:00-05 are bounds, not separators); an
 * empty side is open: "s0: - 100", "s1: 100 -", "s2: -" (everything).
 * Bounds may be quoted to hold " - ". Returns false with ERR set. */
static bool split_range_spec(const char *spec, char **shard, char **low, char **high,
                             bool *quoted_low, bool *quoted_high, char *err, size_t errlen) {
  const char *colon = strchr(spec, ':');
  *shard = *low = *high = NULL;
  if (colon == NULL) {
    snprintf(err, errlen, "range: expected SHARD: LOW - HIGH, got \"%s\"", spec);
    return false;
  }
  const char *rest = colon + 1;
  size_t len = strlen(rest);
  size_t seps[3];
  int nseps = 0;
  bool quoted = false;
  for (size_t i = 0; i < len; i++) {
    if (rest[i] == '\'') quoted = !quoted;
    if (quoted || rest[i] != '-') continue;
    bool alone_before = i == 0 || isspace((unsigned char)rest[i - 1]);
    bool alone_after = i + 1 == len || isspace((unsigned char)rest[i + 1]);
    if (alone_before && alone_after && nseps < 3) seps[nseps++] = i;
  }
  char *between = NULL;
  if (nseps == 2) between = trim_copy(rest + seps[0] + 1, seps[1] - seps[0] - 1);
  bool ok = nseps == 1 || (nseps == 2 && !*between);
  if (ok) {
    size_t hi_start = seps[nseps - 1] + 1;
    *low = trim_copy(rest, seps[0]);
    *high = trim_copy(rest + hi_start, len - hi_start);
    /* "- -" is open at both ends; "5 - - 7" is not a range. */
    if (nseps == 2 && (**low || **high)) ok = false;
  }
  free(between);
  if (!ok) {
    free(*low);
    free(*high);
    *low = *high = NULL;
    snprintf(err, errlen,
             "range: expected SHARD: LOW - HIGH with one lone \"-\" between the bounds "
             "(an empty side is open), got \"%s\"",
             spec);
    return false;
  }
  *quoted_low = **low == '\'';
  *quoted_high = **high == '\'';
  unquote_bound(*low);
  unquote_bound(*high);
  *shard = trim_copy(spec, (size_t)(colon - spec));
  return true;
}

static void format_bound(const pgs_range_t *r, bool high, char *buf, size_t cap) {
  const pgs_key_t *key = high ? r->high : r->low;
  if (key == NULL) {
    snprintf(buf, cap, "%s", high ? "+infinity" : "-infinity");
  } else if (key->type == PGS_TYPE_TEXT) {
    /* quoted, so that '' and blanks show */
    char text[128];
    pgs_key_format(key, text, sizeof(text));
    snprintf(buf, cap, "'%s'", text);
  } else {
    pgs_key_format(key, buf, cap);
  }
}

static int range_order(const void *pa, const void *pb) {
  const pgs_range_t *a = pa, *b = pb;
  if (!a->has_low || !b->has_low) return (int)a->has_low - (int)b->has_low;
  return pgs_key_compare(a->low, b->low);
}

/* Parse one bound with the column type; false (error recorded) if bad. */
static bool parse_bound(pgs_config_t *c, const raw_table_t *t, const raw_range_t *raw,
                        const char *text, pgs_key_t **out) {
  pgs_key_t key;
  pgs_key_error_t kerr;
  if (pgs_key_from_text(t->type, text, strlen(text), &key, &kerr) != PGS_OK) {
    config_error(c, raw->line, "[table.%s.%s]: range bound \"%s\" is not a %s: %s (%s)", t->db,
                 t->name, text, pgs_key_type_name(t->type), kerr.message, kerr.sqlstate);
    return false;
  }
  *out = key_dup(&key);
  return true;
}

/* The ranges of a range table: typed, sorted, and covering the whole key
 * space exactly once (first open low, last open high, each high the next
 * low). */
static void build_ranges(pgs_config_t *c, const pgs_database_t *db, const raw_table_t *t,
                         pgs_table_t *table) {
  table->ranges = pgs_xcalloc((size_t)t->nranges + 1, sizeof(*table->ranges));
  bool all_parsed = true;
  for (int i = 0; i < t->nranges; i++) {
    const raw_range_t *raw = &t->ranges[i];
    char *shard, *low, *high, err[512];
    bool ql, qh;
    if (!split_range_spec(raw->spec, &shard, &low, &high, &ql, &qh, err, sizeof(err))) {
      config_error(c, raw->line, "[table.%s.%s]: %s", t->db, t->name, err);
      all_parsed = false;
      continue;
    }
    pgs_range_t r = {.shard = pgs_shardmap_find_shard(db, shard), .line = raw->line};
    bool ok = true;
    /* A range on an unknown shard still covers its keys for the checks
     * below; it is kept pointing at shard 0 in a config that is unusable
     * anyway. */
    if (r.shard < 0) {
      config_error(c, raw->line, "[table.%s.%s]: range on unknown shard %s (no [shard.%s.%s])",
                   t->db, t->name, shard, t->db, shard);
      r.shard = 0;
    }
    r.has_low = *low || ql;
    r.has_high = *high || qh;
    if (r.has_low && !parse_bound(c, t, raw, low, &r.low)) ok = false;
    if (r.has_high && !parse_bound(c, t, raw, high, &r.high)) ok = false;
    if (ok && r.has_low && r.has_high && pgs_key_compare(r.low, r.high) >= 0) {
      config_error(c, raw->line, "[table.%s.%s]: empty range: low %s is not below high %s", t->db,
                   t->name, low, high);
      ok = false;
    }
    free(shard);
    free(low);
    free(high);
    if (!ok) {
      free(r.low);
      free(r.high);
      all_parsed = false;
      continue;
    }
    table->ranges[table->nranges++] = r;
  }
  /* Gaps and overlaps are judged on the whole set only: with a line
   * missing they would be noise on top of the line's own error. */
  if (table->nranges == 0 || !all_parsed) return;
  qsort(table->ranges, (size_t)table->nranges, sizeof(*table->ranges), range_order);

  char a[160], b[160];
  const pgs_range_t *first = &table->ranges[0];
  if (first->has_low) {
    format_bound(first, false, a, sizeof(a));
    config_error(c, first->line,
                 "[table.%s.%s]: gap: keys below %s are in no range (make the lowest range "
                 "open: \"SHARD: - %s\")",
                 t->db, t->name, a, a);
  }
  for (int i = 1; i < table->nranges; i++) {
    const pgs_range_t *prev = &table->ranges[i - 1], *r = &table->ranges[i];
    int cmp = !prev->has_high || !r->has_low ? 1 : pgs_key_compare(prev->high, r->low);
    if (cmp > 0) {
      format_bound(r, false, a, sizeof(a));
      format_bound(prev, true, b, sizeof(b));
      config_error(c, r->line,
                   "[table.%s.%s]: overlap: this range starts at %s, before the range on line "
                   "%d ends (%s)",
                   t->db, t->name, a, prev->line, b);
    } else if (cmp < 0) {
      format_bound(prev, true, a, sizeof(a));
      format_bound(r, false, b, sizeof(b));
      config_error(c, r->line,
                   "[table.%s.%s]: gap: keys from %s up to %s are in no range (between the "
                   "ranges on lines %d and %d)",
                   t->db, t->name, a, b, prev->line, r->line);
    }
  }
  const pgs_range_t *last = &table->ranges[table->nranges - 1];
  if (last->has_high) {
    format_bound(last, true, a, sizeof(a));
    config_error(c, last->line,
                 "[table.%s.%s]: gap: keys from %s up are in no range (make the highest range "
                 "open: \"SHARD: %s -\")",
                 t->db, t->name, a, a);
  }
}

static int geo_order(const void *pa, const void *pb) {
  return pgs_key_compare(((const pgs_geo_value_t *)pa)->key, ((const pgs_geo_value_t *)pb)->key);
}

static int tenant_order(const void *pa, const void *pb) {
  return pgs_key_compare(((const pgs_tenant_pin_t *)pa)->key, ((const pgs_tenant_pin_t *)pb)->key);
}

/* The column type every table of STRATEGY in DB shares (text when there is
 * none); tables that differ are an error on the first one that does. */
static pgs_key_type_t shared_type(pgs_config_t *c, const pgs_database_t *db,
                                  pgs_strategy_t strategy) {
  const pgs_table_t *first = NULL;
  for (int i = 0; i < db->shardmap.ntables; i++) {
    const pgs_table_t *t = &db->shardmap.tables[i];
    if (t->strategy != strategy) continue;
    if (first == NULL) {
      first = t;
    } else if (t->type != first->type) {
      config_error(c, t->line,
                   "[table.%s.%s]: the %s tables of database %s share one key space, but this "
                   "one is %s and %s (line %d) is %s",
                   db->name, t->name, pgs_strategy_name(strategy), db->name,
                   pgs_key_type_name(t->type), first->name, first->line,
                   pgs_key_type_name(first->type));
    }
  }
  return first ? first->type : PGS_TYPE_TEXT;
}

static bool raw_is_for(const raw_entry_t *e, const pgs_database_t *db) {
  return !strcmp(e->db, db->name);
}

static void build_geo(pgs_config_t *c, parse_state_t *st, pgs_database_t *db) {
  pgs_shardmap_t *map = &db->shardmap;
  map->geo_type = shared_type(c, db, PGS_STRATEGY_GEO);
  int regions_checked = 0;
  char **checked = NULL;
  for (int i = 0; i < st->ngeo; i++) {
    const raw_entry_t *e = &st->geo[i];
    if (!raw_is_for(e, db)) continue;
    if (map->geo_line == 0) map->geo_line = e->line;
    const char *region = !strcmp(e->key, "default") ? e->value : e->key;
    bool seen = false;
    for (int r = 0; r < regions_checked; r++) seen = seen || !strcmp(checked[r], region);
    if (!seen) {
      checked = pgs_xrealloc(checked, sizeof(*checked) * (size_t)(regions_checked + 1));
      checked[regions_checked++] = (char *)region;
      if (pgs_shardmap_region_shards(db, region, NULL, 0) == 0)
        config_error(c, e->line,
                     "[geo.%s]: region %s has no shard (no [shard.%s.*] says region = %s)",
                     db->name, region, db->name, region);
    }
    if (!strcmp(e->key, "default")) {
      if (map->geo_default) {
        config_error(c, e->line, "[geo.%s]: default given twice", db->name);
        continue;
      }
      map->geo_default = pgs_xstrdup(e->value);
      continue;
    }
    pgs_key_t key;
    pgs_key_error_t kerr;
    if (pgs_key_from_text(map->geo_type, e->value, strlen(e->value), &key, &kerr) != PGS_OK) {
      config_error(c, e->line, "[geo.%s]: value \"%s\" of region %s is not a %s: %s (%s)", db->name,
                   e->value, e->key, pgs_key_type_name(map->geo_type), kerr.message, kerr.sqlstate);
      continue;
    }
    const pgs_geo_value_t *dup = NULL;
    for (int g = 0; g < map->ngeo && !dup; g++)
      if (!pgs_key_compare(map->geo[g].key, &key)) dup = &map->geo[g];
    if (dup) {
      if (!strcmp(dup->region, e->key))
        config_error(c, e->line, "[geo.%s]: value %s is listed twice in region %s (line %d)",
                     db->name, e->value, e->key, dup->line);
      else
        config_error(c, e->line, "[geo.%s]: value %s is listed in two regions: %s (line %d) and %s",
                     db->name, e->value, dup->region, dup->line, e->key);
      continue;
    }
    map->geo = pgs_xrealloc(map->geo, sizeof(*map->geo) * (size_t)(map->ngeo + 1));
    pgs_geo_value_t *g = &map->geo[map->ngeo++];
    g->value = pgs_xstrdup(e->value);
    g->region = pgs_xstrdup(e->key);
    g->key = key_dup(&key);
    g->line = e->line;
  }
  free(checked);
  if (map->ngeo > 1) qsort(map->geo, (size_t)map->ngeo, sizeof(*map->geo), geo_order);
  for (int i = 0; i < map->ntables; i++) {
    const pgs_table_t *t = &map->tables[i];
    if (t->strategy == PGS_STRATEGY_GEO && map->ngeo == 0 && map->geo_default == NULL &&
        map->geo_line == 0)
      config_error(c, t->line, "[table.%s.%s]: strategy = geo needs a [geo.%s] section", db->name,
                   t->name, db->name);
  }
}

static void build_tenants(pgs_config_t *c, parse_state_t *st, pgs_database_t *db) {
  pgs_shardmap_t *map = &db->shardmap;
  map->tenant_type = shared_type(c, db, PGS_STRATEGY_TENANT);
  for (int i = 0; i < st->ntenants; i++) {
    const raw_entry_t *e = &st->tenants[i];
    if (!raw_is_for(e, db)) continue;
    if (map->tenants_line == 0) map->tenants_line = e->line;
    pgs_key_t key;
    pgs_key_error_t kerr;
    bool ok = true;
    if (pgs_key_from_text(map->tenant_type, e->key, strlen(e->key), &key, &kerr) != PGS_OK) {
      config_error(c, e->line, "[tenants.%s]: tenant \"%s\" is not a %s: %s (%s)", db->name, e->key,
                   pgs_key_type_name(map->tenant_type), kerr.message, kerr.sqlstate);
      ok = false;
    }
    int shard = pgs_shardmap_find_shard(db, e->value);
    if (shard < 0) {
      config_error(c, e->line, "[tenants.%s]: tenant %s pinned on unknown shard %s", db->name,
                   e->key, e->value);
      ok = false;
    }
    if (!ok) continue;
    const pgs_tenant_pin_t *dup = NULL;
    for (int p = 0; p < map->ntenants && !dup; p++)
      if (!pgs_key_compare(map->tenants[p].key, &key)) dup = &map->tenants[p];
    if (dup) {
      config_error(c, e->line, "[tenants.%s]: tenant %s is pinned twice (also as %s on line %d)",
                   db->name, e->key, dup->raw, dup->line);
      continue;
    }
    map->tenants = pgs_xrealloc(map->tenants, sizeof(*map->tenants) * (size_t)(map->ntenants + 1));
    pgs_tenant_pin_t *pin = &map->tenants[map->ntenants++];
    pin->key = key_dup(&key);
    pin->raw = pgs_xstrdup(e->key);
    pin->shard = shard;
    pin->line = e->line;
  }
  if (map->ntenants > 1)
    qsort(map->tenants, (size_t)map->ntenants, sizeof(*map->tenants), tenant_order);
}

/* ---- [slots.DB]: the xxh3 slot table ---- */

/* A slot number at *P, blanks around it skipped. */
static bool read_slot_number(const char **p, long *out) {
  const char *s = *p;
  while (isspace((unsigned char)*s)) s++;
  const char *digits = s;
  long v = 0;
  while (isdigit((unsigned char)*s) && s - digits < 9) v = v * 10 + (*s++ - '0');
  if (s == digits || isdigit((unsigned char)*s)) return false;
  while (isspace((unsigned char)*s)) s++;
  *p = s;
  *out = v;
  return true;
}

/* The next "N" or "N-M" of a [slots.DB] value at *P, and whether another
 * follows (after a comma). False on anything else. */
static bool next_slot_range(const char **p, long *lo, long *hi, bool *more) {
  if (!read_slot_number(p, lo)) return false;
  *hi = *lo;
  if (**p == '-') {
    ++*p;
    if (!read_slot_number(p, hi)) return false;
  }
  *more = **p == ',';
  if (*more) ++*p;
  return *more || **p == '\0';
}

/* Gives the slots of one [slots.DB] line to its shard in DB's table;
 * LINE_OF says which line gave each slot so far (0: none). */
static void slots_read_line(pgs_config_t *c, pgs_database_t *db, const raw_entry_t *e,
                            int *line_of) {
  int shard = pgs_shardmap_find_shard(db, e->key);
  if (shard < 0) {
    config_error(c, e->line, "[slots.%s]: unknown shard %s (no [shard.%s.%s])", db->name, e->key,
                 db->name, e->key);
    return;
  }
  const char *p = e->value;
  bool more = true, overlap_reported = false;
  while (more) {
    long lo, hi;
    if (!next_slot_range(&p, &lo, &hi, &more)) {
      config_error(c, e->line,
                   "[slots.%s]: %s: expected slot ranges like 0-1364, 2731-2800, got \"%s\"",
                   db->name, e->key, e->value);
      return;
    }
    if (hi >= PGS_HASH_SLOTS || lo > hi) {
      if (lo == hi)
        config_error(c, e->line, "[slots.%s]: %s: slot %ld is not one of 0-%d", db->name, e->key,
                     lo, PGS_HASH_SLOTS - 1);
      else
        config_error(c, e->line, "[slots.%s]: %s: %ld-%ld is not a range of slots 0-%d", db->name,
                     e->key, lo, hi, PGS_HASH_SLOTS - 1);
      return;
    }
    for (long slot = lo; slot <= hi; slot++) {
      if (line_of[slot] == 0) {
        line_of[slot] = e->line;
        db->slot_shard[slot] = (int16_t)shard;
      } else if (!overlap_reported) {
        config_error(c, e->line,
                     "[slots.%s]: slot %ld is given twice: to %s here and to %s on line %d",
                     db->name, slot, e->key, db->shards[db->slot_shard[slot]].name, line_of[slot]);
        overlap_reported = true;
      }
    }
  }
}

/* Every slot no line gave, as compact ranges, in one error. */
static void slots_check_gaps(pgs_config_t *c, const pgs_database_t *db, const int *line_of) {
  char gaps[200] = "";
  bool any = false, cut = false;
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    if (line_of[slot]) continue;
    int end = slot;
    while (end + 1 < PGS_HASH_SLOTS && !line_of[end + 1]) end++;
    char range[32];
    if (end > slot)
      snprintf(range, sizeof(range), "%d-%d", slot, end);
    else
      snprintf(range, sizeof(range), "%d", slot);
    size_t used = strlen(gaps);
    if (!cut && used + strlen(range) + 8 < sizeof(gaps)) {
      snprintf(gaps + used, sizeof(gaps) - used, "%s%s", any ? ", " : "", range);
    } else if (!cut) {
      snprintf(gaps + used, sizeof(gaps) - used, ", ...");
      cut = true;
    }
    any = true;
    slot = end;
  }
  if (any)
    config_error(c, db->slots_line,
                 "[slots.%s]: slots %s are on no shard (every slot 0-%d must be given to one)",
                 db->name, gaps, PGS_HASH_SLOTS - 1);
}

/* DB's slot table: [slots.DB] read and checked, or the default layout. */
static void build_slots(pgs_config_t *c, parse_state_t *st, pgs_database_t *db) {
  int *line_of = pgs_xcalloc(PGS_HASH_SLOTS, sizeof(*line_of));
  db->slot_shard = pgs_xcalloc(PGS_HASH_SLOTS, sizeof(*db->slot_shard));
  for (int i = 0; i < st->nslots; i++) {
    if (!raw_is_for(&st->slots[i], db)) continue;
    if (db->slots_line == 0) db->slots_line = st->slots[i].line;
    slots_read_line(c, db, &st->slots[i], line_of);
  }
  if (db->slots_line && db->hash != PGS_HASH_XXH3)
    config_error(c, db->slots_line,
                 "[slots.%s]: a slot table is for hash = xxh3, but database %s has hash = %s",
                 db->name, db->name, hash_names[db->hash]);
  if (db->slots_line) slots_check_gaps(c, db, line_of);
  /* The default layout, also under what a broken section left unset. */
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++)
    if (!line_of[slot]) db->slot_shard[slot] = (int16_t)pgs_shardmap_slot_shard(slot, db->nshards);
  free(line_of);
}

/* [slots.X] for a database X that does not exist: one error per X. */
static void slots_check_databases(pgs_config_t *c, const parse_state_t *st) {
  for (int i = 0; i < st->nslots; i++) {
    const raw_entry_t *e = &st->slots[i];
    bool reported = false;
    for (int j = 0; j < i && !reported; j++) reported = !strcmp(st->slots[j].db, e->db);
    if (!reported && find_database(c, e->db) == NULL)
      config_error(c, e->line, "[slots.%s]: unknown database %s (no [database.%s])", e->db, e->db,
                   e->db);
  }
}

static void shardmap_build(pgs_config_t *c, parse_state_t *st) {
  for (int i = 0; i < st->ntables; i++) {
    const raw_table_t *t = &st->tables[i];
    pgs_database_t *db = find_database(c, t->db);
    if (db == NULL) {
      config_error(c, t->line, "[table.%s.%s]: unknown database %s (no [database.%s])", t->db,
                   t->name, t->db, t->db);
      continue;
    }
    bool ok = !t->bad_type && !t->bad_strategy && !t->bad_column;
    if (t->column == NULL && !t->bad_column) {
      config_error(c, t->line, "[table.%s.%s]: no column", t->db, t->name);
      ok = false;
    }
    if (!t->has_type && !t->bad_type) {
      config_error(c, t->line, "[table.%s.%s]: no type", t->db, t->name);
      ok = false;
    }
    if (!t->has_strategy && !t->bad_strategy) {
      config_error(c, t->line, "[table.%s.%s]: no strategy", t->db, t->name);
      ok = false;
    }
    if (t->has_strategy && t->strategy != PGS_STRATEGY_RANGE && t->nranges > 0) {
      config_error(c, t->ranges[0].line,
                   "[table.%s.%s]: range = ... is for strategy = range, not %s", t->db, t->name,
                   pgs_strategy_name(t->strategy));
      ok = false;
    }
    if (t->has_strategy && t->strategy == PGS_STRATEGY_RANGE && t->nranges == 0) {
      config_error(c, t->line,
                   "[table.%s.%s]: strategy = range needs range = SHARD: LOW - HIGH lines", t->db,
                   t->name);
      ok = false;
    }
    if (!ok) continue;
    pgs_shardmap_t *map = &db->shardmap;
    map->tables = pgs_xrealloc(map->tables, sizeof(*map->tables) * (size_t)(map->ntables + 1));
    pgs_table_t *table = &map->tables[map->ntables++];
    memset(table, 0, sizeof(*table));
    bool name_folded, column_folded;
    table->name = map_identifier(t->name, &name_folded);
    table->column = map_identifier(t->column, &column_folded);
    if (table->name == NULL || table->column == NULL) {
      config_error(c, t->line, "[table.%s.%s]: a quoted name is \"name\", with no quote inside",
                   t->db, t->name);
      if (table->name == NULL) table->name = pgs_xstrdup(t->name);
      if (table->column == NULL) table->column = pgs_xstrdup(t->column);
    }
    if (name_folded)
      config_warning(c, t->line,
                     "[table.%s.%s]: table name folded to %s, as PostgreSQL folds unquoted names; "
                     "a table created with the quoted name \"%s\" never matches it: write "
                     "[table.%s.\"%s\"] for that one",
                     t->db, t->name, table->name, t->name, t->db, t->name);
    if (column_folded)
      config_warning(c, t->line,
                     "[table.%s.%s]: column %s folded to %s, as PostgreSQL folds unquoted names; "
                     "write column = \"%s\" for a column created with that quoted name",
                     t->db, t->name, t->column, table->column, t->column);
    table->type = t->type;
    table->strategy = t->strategy;
    table->line = t->line;
    if (t->strategy == PGS_STRATEGY_RANGE) build_ranges(c, db, t, table);
  }
  for (int i = 0; i < st->ngeo + st->ntenants; i++) {
    const raw_entry_t *e = i < st->ngeo ? &st->geo[i] : &st->tenants[i - st->ngeo];
    if (find_database(c, e->db) == NULL) {
      /* once per section, not per line */
      bool reported = false;
      for (int j = 0; j < i && !reported; j++) {
        const raw_entry_t *o = j < st->ngeo ? &st->geo[j] : &st->tenants[j - st->ngeo];
        reported = (j < st->ngeo) == (i < st->ngeo) && !strcmp(o->db, e->db);
      }
      if (!reported)
        config_error(c, e->line, "[%s.%s]: unknown database %s (no [database.%s])",
                     i < st->ngeo ? "geo" : "tenants", e->db, e->db, e->db);
    }
  }
  slots_check_databases(c, st);
  for (int i = 0; i < c->ndatabases; i++) {
    build_geo(c, st, &c->databases[i]);
    build_tenants(c, st, &c->databases[i]);
    build_slots(c, st, &c->databases[i]);
  }
}

static void raw_entries_free(raw_entry_t *list, int n) {
  for (int i = 0; i < n; i++) {
    free(list[i].db);
    free(list[i].key);
    free(list[i].value);
  }
  free(list);
}

static void parse_state_free(parse_state_t *st) {
  for (int i = 0; i < st->ntables; i++) {
    raw_table_t *t = &st->tables[i];
    free(t->db);
    free(t->name);
    free(t->column);
    for (int r = 0; r < t->nranges; r++) free(t->ranges[r].spec);
    free(t->ranges);
  }
  free(st->tables);
  raw_entries_free(st->geo, st->ngeo);
  raw_entries_free(st->tenants, st->ntenants);
  raw_entries_free(st->slots, st->nslots);
}

/* A relative file name in the config names a file beside the config file,
 * wherever pgshard was started from (the lab starts it in another
 * directory). A config parsed from a string has no directory: unchanged. */
static void resolve_beside_config(const pgs_config_t *c, char **file) {
  const char *slash = c->path ? strrchr(c->path, '/') : NULL;
  if (*file == NULL || (*file)[0] == '/' || slash == NULL) return;
  size_t dirlen = (size_t)(slash - c->path) + 1;
  char *joined = pgs_xmalloc(dirlen + strlen(*file) + 1);
  memcpy(joined, c->path, dirlen);
  strcpy(joined + dirlen, *file);
  free(*file);
  *file = joined;
}

/* The TLS context clients get, made now so that a file that does not load
 * is an error at its line, at startup and at reload alike. */
static void tls_load(pgs_config_t *c) {
  bool wants = c->client_tls != PGS_CLIENT_TLS_DISABLE;
  bool verify = c->client_tls >= PGS_CLIENT_TLS_VERIFY_CA;
  if (wants && (c->tls_cert_file == NULL || c->tls_key_file == NULL)) {
    config_error(c, c->client_tls_line, "client_tls = %s needs tls_cert_file and tls_key_file",
                 client_tls_names[c->client_tls]);
    return;
  }
  if (verify && c->tls_ca_file == NULL) {
    config_error(c, c->client_tls_line,
                 "client_tls = %s needs tls_ca_file (the CA client certificates come from)",
                 client_tls_names[c->client_tls]);
    return;
  }
  if (c->tls_cert_file == NULL && c->tls_key_file == NULL) {
    if (c->tls_ca_file)
      config_error(c, c->tls_ca_line, "tls_ca_file: needs tls_cert_file and tls_key_file");
    return;
  }
  if (c->tls_cert_file == NULL || c->tls_key_file == NULL) {
    config_error(c, c->tls_cert_file ? c->tls_cert_line : c->tls_key_line,
                 "tls_cert_file and tls_key_file go together");
    return;
  }
  char err[512];
  pgs_tls_file_t which;
  c->tls_ctx = pgs_tls_server_context(c->tls_cert_file, c->tls_key_file, c->tls_ca_file, verify,
                                      &which, err, sizeof(err));
  if (c->tls_ctx == NULL) {
    static const char *const keys[] = {"tls_cert_file", "tls_key_file", "tls_ca_file"};
    int line = which == PGS_TLS_FILE_CERT  ? c->tls_cert_line
               : which == PGS_TLS_FILE_KEY ? c->tls_key_line
                                           : c->tls_ca_line;
    config_error(c, line, "%s: %s", keys[which], err);
  }
}

static void config_begin(pgs_config_t *c, parse_state_t *st, const char *path) {
  memset(st, 0, sizeof(*st));
  st->config = c;
  st->next_line = 1;
  config_defaults(c);
  c->path = path ? pgs_xstrdup(path) : NULL;
}

/* Read SRC's lines into ST (and its config), counting lines from 1. */
static void config_read(parse_state_t *st, line_source_t *src) {
  st->line = 0;
  st->next_line = 1;
  st->line_length = 0;
  st->section[0] = '\0';
  src->state = st;
  /* Debian's inih exposes its compile-time knobs as globals: long lines
   * (tenant lists) must not be split, and indented lines are not
   * continuations. The heap line buffer starts at ini_initial_alloc (200)
   * bytes and grows up to ini_max_line only when ini_allow_realloc is set.
   * Written only when they differ: the first parse (at startup, before any
   * thread) sets them, and later parses from any thread only read them. */
  if (ini_use_stack) ini_use_stack = false;
  if (!ini_allow_realloc) ini_allow_realloc = true;
  if (ini_max_line != 16384) ini_max_line = 16384;
  if (ini_allow_multiline) ini_allow_multiline = false;
  int rc = ini_parse_stream(read_line_cb, src, handler, st);
  if (rc > 0) config_error(st->config, rc, "syntax error (expected [section] or key = value)");
}

/* What depends on [pgshard] alone: files named beside the config, TLS. */
static void config_finish_pgshard(pgs_config_t *c) {
  resolve_beside_config(c, &c->tls_cert_file);
  resolve_beside_config(c, &c->tls_key_file);
  resolve_beside_config(c, &c->tls_ca_file);
  tls_load(c);
}

static void config_finish(pgs_config_t *c, parse_state_t *st) {
  config_validate(c);
  shardmap_build(c, st);
  parse_state_free(st);
  if (c->nerrors == 0) make_scram_secrets(c);
}

static pgs_config_t *config_parse(line_source_t *src, const char *path) {
  pgs_config_t *c = pgs_xcalloc(1, sizeof(*c));
  parse_state_t st;
  config_begin(c, &st, path);
  config_read(&st, src);
  config_finish_pgshard(c);
  config_finish(c, &st);
  return c;
}

pgs_config_t *pgs_config_load(const char *path) {
  line_source_t src = {0};
  src.file = fopen(path, "r");
  if (src.file == NULL) {
    pgs_config_t *c = pgs_xcalloc(1, sizeof(*c));
    config_defaults(c);
    c->path = pgs_xstrdup(path);
    config_error(c, 0, "cannot open %s: %s", path, strerror(errno));
    return c;
  }
  pgs_config_t *c = config_parse(&src, path);
  fclose(src.file);
  return c;
}

pgs_config_t *pgs_config_parse_string(const char *text) {
  line_source_t src = {0};
  src.text = text;
  return config_parse(&src, NULL);
}

/* Notes from FIRST on are about the map's text: their lines are its lines,
 * not the file's, so they say so in the message and keep no file line. */
static void label_notes(pgs_config_error_t *list, int n, int first, const char *label) {
  for (int i = first; i < n; i++) {
    char buf[640];
    if (list[i].line > 0)
      snprintf(buf, sizeof(buf), "%s, line %d: %s", label, list[i].line, list[i].message);
    else
      snprintf(buf, sizeof(buf), "%s: %s", label, list[i].message);
    free(list[i].message);
    list[i].message = pgs_xstrdup(buf);
    list[i].line = 0;
  }
}

pgs_config_t *pgs_config_load_map(const char *path, const char *map_text, const char *label,
                                  int64_t version) {
  pgs_config_t *c = pgs_xcalloc(1, sizeof(*c));
  parse_state_t st;
  config_begin(c, &st, path);
  if (path) {
    line_source_t file = {0};
    file.file = fopen(path, "r");
    if (file.file == NULL) {
      config_error(c, 0, "cannot open %s: %s", path, strerror(errno));
      return c;
    }
    st.sections = SECTIONS_PGSHARD;
    config_read(&st, &file);
    fclose(file.file);
  }
  config_finish_pgshard(c);
  int first_error = c->nerrors, first_warning = c->nwarnings;
  line_source_t map = {0};
  map.text = map_text;
  st.sections = SECTIONS_MAP;
  config_read(&st, &map);
  config_finish(c, &st);
  label_notes(c->errors, c->nerrors, first_error, label);
  label_notes(c->warnings, c->nwarnings, first_warning, label);
  c->map_version = version;
  return c;
}

char *pgs_config_map_text(const char *text) {
  size_t len = strlen(text);
  char *out = pgs_xmalloc(len + 1), *o = out;
  bool keep = true;
  for (const char *p = text; *p;) {
    const char *end = strchr(p, '\n');
    size_t n = end ? (size_t)(end - p) + 1 : strlen(p);
    const char *q = p;
    while (q < p + n && isspace((unsigned char)*q)) q++;
    if (q < p + n && *q == '[') {
      const char *close = memchr(q, ']', (size_t)(p + n - q));
      if (close) {
        const char *a = q + 1, *b = close;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        keep = !((size_t)(b - a) == 7 && !strncmp(a, "pgshard", 7));
      }
    }
    if (keep) {
      memcpy(o, p, n);
      o += n;
    } else if (p[n - 1] == '\n') {
      *o++ = '\n'; /* the map's lines keep the numbers they have in TEXT */
    }
    p += n;
  }
  *o = '\0';
  return out;
}

pgs_config_t *pgs_config_ref(pgs_config_t *config) {
  __atomic_add_fetch(&config->refcount, 1, __ATOMIC_RELAXED);
  return config;
}

void pgs_config_unref(pgs_config_t *c) {
  if (c == NULL || __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  free(c->path);
  free(c->listen_host);
  free(c->metrics_listen);
  free_peers(c);
  free(c->twophase_recovery_user);
  free(c->map_source);
  free(c->tls_cert_file);
  free(c->tls_key_file);
  free(c->tls_ca_file);
  pgs_tls_context_free(c->tls_ctx);
  for (int i = 0; i < c->nusers; i++) {
    free(c->users[i].name);
    free(c->users[i].password);
    free(c->users[i].scram_secret);
  }
  free(c->users);
  for (int i = 0; i < c->ndatabases; i++) {
    pgs_database_t *db = &c->databases[i];
    for (int s = 0; s < db->nshards; s++) {
      pgs_shard_t *shard = &db->shards[s];
      free(shard->name);
      free(shard->region);
      if (shard->has_primary) node_free(&shard->primary);
      for (int r = 0; r < shard->nreplicas; r++) node_free(&shard->replicas[r]);
      free(shard->replicas);
    }
    free(db->shards);
    pgs_shardmap_free(&db->shardmap);
    free(db->slot_shard);
    free(db->name);
  }
  free(c->databases);
  for (int i = 0; i < c->nerrors; i++) free(c->errors[i].message);
  free(c->errors);
  for (int i = 0; i < c->nwarnings; i++) free(c->warnings[i].message);
  free(c->warnings);
  free(c);
}

const pgs_user_t *pgs_config_find_user(const pgs_config_t *config, const char *name) {
  for (int i = 0; i < config->nusers; i++)
    if (!strcmp(config->users[i].name, name)) return &config->users[i];
  return NULL;
}

const pgs_database_t *pgs_config_find_database(const pgs_config_t *config, const char *name) {
  for (int i = 0; i < config->ndatabases; i++)
    if (!strcmp(config->databases[i].name, name)) return &config->databases[i];
  return NULL;
}

static void append_conninfo(pgs_buf_t *buf, const char *key, const char *value) {
  pgs_buf_put(buf, " ", 1);
  pgs_buf_put(buf, key, strlen(key));
  pgs_buf_put(buf, "='", 2);
  for (const char *p = value; *p; p++) {
    if (*p == '\'' || *p == '\\') pgs_buf_put(buf, "\\", 1);
    pgs_buf_put(buf, p, 1);
  }
  pgs_buf_put(buf, "'", 1);
}

char *pgs_node_conninfo(const pgs_config_t *config, const pgs_database_t *db,
                        const pgs_node_t *node, const pgs_user_t *user, const char *app_key,
                        const char *app_value) {
  pgs_buf_t buf;
  char timeout[32];
  pgs_buf_init(&buf);
  pgs_buf_put(&buf, node->conninfo, strlen(node->conninfo));
  if (node->dbname == NULL) append_conninfo(&buf, "dbname", db->name);
  if (node->user == NULL && user) {
    append_conninfo(&buf, "user", user->name);
    if (node->password == NULL && user->password && user->scram_secret)
      append_conninfo(&buf, "password", user->password);
  }
  if (strstr(node->conninfo, "sslmode") == NULL) append_conninfo(&buf, "sslmode", "disable");
  if (strstr(node->conninfo, "gssencmode") == NULL) append_conninfo(&buf, "gssencmode", "disable");
  snprintf(timeout, sizeof(timeout), "%d", (config->server_connect_timeout_ms + 999) / 1000);
  append_conninfo(&buf, "connect_timeout", timeout);
  append_conninfo(&buf, app_key, app_value);
  pgs_buf_put_u8(&buf, 0);
  return (char *)buf.data;
}
