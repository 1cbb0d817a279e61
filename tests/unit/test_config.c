/*
 * test_config.c — router/config.c through pgs_config_parse_string: the
 * DESIGN.md example parses to the right values, absent keys take their
 * defaults, every kind of mistake is reported with the line it is on, and
 * plain-text passwords get a SCRAM secret made at load.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "pgshard/auth.h"
#include "pgshard/config.h"

/* The "Config contract" example of DESIGN.md, verbatim. */
static const char design_example[] =
    "[pgshard]\n"
    "listen = 127.0.0.1:6432\n"
    "workers = 2                        ; event-loop threads\n"
    "metrics_listen = 127.0.0.1:9930    ; Prometheus text at GET /metrics; empty: off\n"
    "log_format = text                  ; text | json\n"
    "auth = scram-sha-256               ; trust | md5 | scram-sha-256\n"
    "\n"
    "[user.app]\n"
    "password = secret\n"
    "[user.admin]\n"
    "password = adminpw\n"
    "admin = true                       ; may use the admin database \"pgshard\"\n"
    "\n"
    "[database.app]                     ; clients connect to dbname=app\n"
    "pool_mode = transaction            ; transaction | session\n"
    "pool_size = 20                     ; server connections per node and user\n"
    "read_your_writes = lsn             ; off | window | session | lsn\n"
    "ryw_window_ms = 1000               ; for window\n"
    "max_replica_lag_ms = 1000\n"
    "max_replica_lag_bytes = 16777216\n"
    "lag_check_interval_ms = 100\n"
    "lag_fallback = primary             ; primary | error: when no replica qualifies\n"
    "cross_shard_reads = allow          ; allow | deny\n"
    "cross_shard_writes = deny          ; deny | allow | 2pc\n"
    "hash = xxh3                        ; xxh3 | postgres (PARTITION BY HASH compatible)\n"
    "\n"
    "[shard.app.s0]                     ; shard s0 of database app\n"
    "primary = host=127.0.0.1 port=6500 dbname=app user=postgres\n"
    "replica = host=127.0.0.1 port=6501 dbname=app user=postgres   ; repeatable\n"
    "region = eu\n"
    "[shard.app.s1]\n"
    "primary = host=127.0.0.1 port=6510 dbname=app user=postgres\n"
    "replica = host=127.0.0.1 port=6511 dbname=app user=postgres\n"
    "region = us\n"
    "\n"
    "[table.app.users]                  ; hash: slots spread evenly over shards\n"
    "column = id\n"
    "type = bigint                      ; smallint|int|bigint|text|uuid|date|timestamptz\n"
    "strategy = hash\n"
    "[table.app.events]                 ; range: half-open [low, high), open ends allowed\n"
    "column = id\n"
    "type = bigint\n"
    "strategy = range\n"
    "range = s0: - 1000000\n"
    "range = s1: 1000000 -\n"
    "[table.app.profiles]               ; geo: value -> region (via [geo.app]) -> shard with "
    "that region\n"
    "column = country\n"
    "type = text\n"
    "strategy = geo\n"
    "[geo.app]\n"
    "eu = DE FR IT ES NL PL\n"
    "us = US CA MX\n"
    "[table.app.invoices]               ; tenant: pinned tenants, others by hash\n"
    "column = tenant_id\n"
    "type = bigint\n"
    "strategy = tenant\n"
    "[tenants.app]\n"
    "42 = s1\n";

/* The smallest valid config; error tests append one mistake to it so that
 * exactly one error is expected. Four lines, so appended text starts on 5. */
#define MINIMAL                                                                                    \
  "[user.app]\n"                                                                                   \
  "password = secret\n"                                                                            \
  "[shard.app.s0]\n"                                                                               \
  "primary = port=6500\n"

static void print_errors(const pgs_config_t *c) {
  for (int i = 0; i < c->nerrors; i++)
    print_message("  line %d: %s\n", c->errors[i].line, c->errors[i].message);
}

/* TEXT must give NERRORS errors, the first on LINE with NEEDLE in its message. */
static void expect_errors(const char *text, int nerrors, int line, const char *needle) {
  pgs_config_t *c = pgs_config_parse_string(text);
  assert_non_null(c);
  if (c->nerrors != nerrors || c->errors[0].line != line || !strstr(c->errors[0].message, needle)) {
    print_message("expected %d error(s), the first on line %d containing \"%s\"; got %d:\n",
                  nerrors, line, needle, c->nerrors);
    print_errors(c);
    fail();
  }
  pgs_config_unref(c);
}

static void expect_one_error(const char *text, int line, const char *needle) {
  expect_errors(text, 1, line, needle);
}

/* Map names fold like PostgreSQL identifiers: plain ones to lower case
 * (with a warning naming the fold), quoted ones keep their case. */
static void test_map_names_fold(void **state) {
  pgs_config_t *c = pgs_config_parse_string(MINIMAL
                                            "[database.app]\n"
                                            "[table.app.Users]\ncolumn = ID\n"
                                            "type = bigint\nstrategy = hash\n"
                                            "[table.app.\"Mixed\"]\ncolumn = \"Key\"\n"
                                            "type = bigint\nstrategy = hash\n"
                                            "[table.app.plain]\ncolumn = id\n"
                                            "type = bigint\nstrategy = hash\n");
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  assert_non_null(db);
  const pgs_table_t *t = pgs_shardmap_find_table(db, "users");
  assert_non_null(t);
  assert_string_equal(t->column, "id");
  assert_null(pgs_shardmap_find_table(db, "Users"));
  t = pgs_shardmap_find_table(db, "Mixed");
  assert_non_null(t);
  assert_string_equal(t->column, "Key");
  assert_null(pgs_shardmap_find_table(db, "mixed"));
  assert_non_null(pgs_shardmap_find_table(db, "plain"));
  /* Two warnings (table and column of Users), none for the others. */
  assert_int_equal(c->nwarnings, 2);
  assert_non_null(strstr(c->warnings[0].message, "table name folded to users"));
  assert_non_null(strstr(c->warnings[1].message, "column ID folded to id"));
  pgs_config_unref(c);
  expect_errors(MINIMAL
                "[database.app]\n[table.app.\"a\"b\"]\ncolumn = id\ntype = bigint\n"
                "strategy = hash\n",
                3, 7, "bad database or table name");
}

static void test_design_example(void **state) {
  pgs_config_t *c = pgs_config_parse_string(design_example);
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_null(c->path);

  assert_string_equal(c->listen_host, "127.0.0.1");
  assert_int_equal(c->listen_port, 6432);
  assert_int_equal(c->workers, 2);
  assert_string_equal(c->metrics_listen, "127.0.0.1:9930");
  assert_int_equal(c->log_format, PGS_LOG_TEXT);
  assert_int_equal(c->auth, PGS_AUTH_SCRAM);

  assert_int_equal(c->nusers, 2);
  const pgs_user_t *app = pgs_config_find_user(c, "app");
  const pgs_user_t *admin = pgs_config_find_user(c, "admin");
  assert_non_null(app);
  assert_non_null(admin);
  assert_null(pgs_config_find_user(c, "nobody"));
  assert_string_equal(app->password, "secret");
  assert_false(app->admin);
  assert_int_equal(app->line, 9);
  assert_string_equal(admin->password, "adminpw");
  assert_true(admin->admin);

  assert_int_equal(c->ndatabases, 1);
  assert_null(pgs_config_find_database(c, "pgshard"));
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  assert_non_null(db);
  assert_int_equal(db->pool_mode, PGS_POOL_TRANSACTION);
  assert_int_equal(db->pool_size, 20);
  assert_int_equal(db->read_your_writes, PGS_RYW_LSN);
  assert_int_equal(db->ryw_window_ms, 1000);
  assert_int_equal(db->max_replica_lag_ms, 1000);
  assert_int_equal(db->max_replica_lag_bytes, 16777216);
  assert_int_equal(db->lag_check_interval_ms, 100);
  assert_int_equal(db->lag_fallback, PGS_FALLBACK_PRIMARY);
  assert_true(db->cross_shard_reads);
  assert_int_equal(db->cross_shard_writes, PGS_XWRITE_DENY);
  assert_int_equal(db->hash, PGS_HASH_XXH3);

  assert_int_equal(db->nshards, 2);
  static const struct {
    const char *name, *region;
    int primary_port, replica_port, primary_line, replica_line;
  } want[] = {{"s0", "eu", 6500, 6501, 28, 29}, {"s1", "us", 6510, 6511, 32, 33}};
  for (size_t i = 0; i < PGS_ARRAY_LEN(want); i++) {
    const pgs_shard_t *s = &db->shards[i];
    assert_string_equal(s->name, want[i].name);
    assert_string_equal(s->region, want[i].region);
    assert_true(s->has_primary);
    assert_true(s->primary.is_primary);
    assert_string_equal(s->primary.host, "127.0.0.1");
    assert_int_equal(s->primary.port, want[i].primary_port);
    assert_string_equal(s->primary.dbname, "app");
    assert_string_equal(s->primary.user, "postgres");
    assert_null(s->primary.password);
    assert_int_equal(s->primary.line, want[i].primary_line);
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d dbname=app user=postgres",
             want[i].primary_port);
    assert_string_equal(s->primary.conninfo, conninfo);
    assert_int_equal(s->nreplicas, 1);
    assert_false(s->replicas[0].is_primary);
    assert_int_equal(s->replicas[0].port, want[i].replica_port);
    assert_int_equal(s->replicas[0].line, want[i].replica_line);
    /* The inline comment is not part of the conninfo. */
    assert_null(strchr(s->replicas[0].conninfo, ';'));
  }
  pgs_config_unref(c);
}

static void test_defaults(void **state) {
  pgs_config_t *c = pgs_config_parse_string(MINIMAL);
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_string_equal(c->listen_host, "127.0.0.1");
  assert_int_equal(c->listen_port, 6432);
  assert_int_equal(c->workers, 2);
  assert_null(c->metrics_listen);
  assert_int_equal(c->log_format, PGS_LOG_TEXT);
  assert_false(c->log_debug);
  assert_int_equal(c->auth, PGS_AUTH_SCRAM);
  assert_int_equal(c->max_client_conn, 10000);
  assert_int_equal(c->max_message_size, 64 * 1024 * 1024);
  assert_int_equal(c->query_wait_timeout_ms, 120000);
  assert_int_equal(c->server_connect_timeout_ms, 5000);
  assert_int_equal(c->client_login_timeout_ms, 60000);
  assert_int_equal(c->server_idle_timeout_ms, 600000);
  assert_int_equal(c->shutdown_timeout_ms, 30000);
  assert_int_equal(c->client_idle_timeout_ms, 0);
  assert_int_equal(c->idle_transaction_timeout_ms, 0);
  assert_true(c->max_client_memory == (int64_t)256 << 20);
  assert_true(c->max_total_client_memory == (int64_t)4 << 30);
  assert_true(c->max_merge_bytes == (int64_t)256 << 20);
  assert_int_equal(c->refcount, 1);

  /* A [shard.DB.*] section alone creates database DB with every default. */
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  assert_non_null(db);
  assert_int_equal(db->pool_mode, PGS_POOL_TRANSACTION);
  assert_int_equal(db->pool_size, 20);
  assert_int_equal(db->read_your_writes, PGS_RYW_LSN);
  assert_int_equal(db->ryw_window_ms, 1000);
  assert_int_equal(db->max_replica_lag_ms, 1000);
  assert_int_equal(db->max_replica_lag_bytes, 16 * 1024 * 1024);
  assert_int_equal(db->lag_check_interval_ms, 100);
  assert_int_equal(db->node_down_failures, 3); /* the default */
  assert_int_equal(db->lag_fallback, PGS_FALLBACK_PRIMARY);
  assert_true(db->cross_shard_reads);
  assert_int_equal(db->cross_shard_writes, PGS_XWRITE_DENY);
  assert_int_equal(db->hash, PGS_HASH_XXH3);

  /* A conninfo naming only the port: host defaults, the rest follows the client. */
  assert_int_equal(db->nshards, 1);
  const pgs_shard_t *s = &db->shards[0];
  assert_null(s->region);
  assert_int_equal(s->nreplicas, 0);
  assert_string_equal(s->primary.host, "127.0.0.1");
  assert_int_equal(s->primary.port, 6500);
  assert_null(s->primary.dbname);
  assert_null(s->primary.user);
  assert_null(s->primary.password);

  const pgs_user_t *u = pgs_config_find_user(c, "app");
  assert_non_null(u);
  assert_false(u->admin);
  pgs_config_unref(c);
}

static void test_every_enum_and_value(void **state) {
  pgs_config_t *c = pgs_config_parse_string(
      "[pgshard]\n"
      "listen = [::1]:7000\n"
      "workers = 64\n"
      "metrics_listen =\n"
      "log_format = JSON\n"
      "log_debug = on\n"
      "auth = md5\n"
      "max_client_conn = 5\n"
      "max_message_size = 1024\n"
      "query_wait_timeout_ms = 1\n"
      "server_connect_timeout_ms = 2\n"
      "client_login_timeout_ms = 3\n"
      "server_idle_timeout_ms = 0\n"
      "shutdown_timeout_ms = 0\n"
      "client_idle_timeout_ms = 86400000\n"
      "idle_transaction_timeout_ms = 500\n"
      "max_client_memory = 1048576\n"
      "max_total_client_memory = 1125899906842624\n"
      "max_merge_bytes = 65536\n"
      "[user.app]\n"
      "password = md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
      "admin = no\n"
      "[database.app]\n"
      "pool_mode = session\n"
      "read_your_writes = window\n"
      "lag_fallback = error\n"
      "cross_shard_reads = deny\n"
      "cross_shard_writes = 2pc\n"
      "hash = postgres\n"
      "max_replica_lag_bytes = 9223372036854775807\n"
      "node_down_failures = 1000\n"
      "[shard.app.s0]\n"
      "primary = host=db.example port=1 password='p w' user=u dbname=d\n"
      "replica = host=r1\n"
      "replica = host=r2 port=65535\n");
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_string_equal(c->listen_host, "::1");
  assert_int_equal(c->listen_port, 7000);
  assert_int_equal(c->workers, 64);
  assert_string_equal(c->metrics_listen, "");
  assert_int_equal(c->log_format, PGS_LOG_JSON);
  assert_true(c->log_debug);
  assert_int_equal(c->auth, PGS_AUTH_MD5);
  assert_int_equal(c->max_client_conn, 5);
  assert_int_equal(c->max_message_size, 1024);
  assert_int_equal(c->query_wait_timeout_ms, 1);
  assert_int_equal(c->server_connect_timeout_ms, 2);
  assert_int_equal(c->client_login_timeout_ms, 3);
  assert_int_equal(c->server_idle_timeout_ms, 0);
  assert_int_equal(c->shutdown_timeout_ms, 0);
  assert_int_equal(c->client_idle_timeout_ms, 86400000);
  assert_int_equal(c->idle_transaction_timeout_ms, 500);
  assert_true(c->max_client_memory == 1048576);
  assert_true(c->max_total_client_memory == (int64_t)1 << 50);
  assert_true(c->max_merge_bytes == 65536);

  const pgs_database_t *db = pgs_config_find_database(c, "app");
  assert_int_equal(db->pool_mode, PGS_POOL_SESSION);
  assert_int_equal(db->read_your_writes, PGS_RYW_WINDOW);
  assert_int_equal(db->lag_fallback, PGS_FALLBACK_ERROR);
  assert_false(db->cross_shard_reads);
  assert_int_equal(db->cross_shard_writes, PGS_XWRITE_2PC);
  assert_int_equal(db->hash, PGS_HASH_POSTGRES);
  assert_true(db->max_replica_lag_bytes == INT64_MAX);
  assert_int_equal(db->node_down_failures, 1000);

  const pgs_shard_t *s = &db->shards[0];
  assert_string_equal(s->primary.host, "db.example");
  assert_int_equal(s->primary.port, 1);
  assert_string_equal(s->primary.password, "p w");
  assert_string_equal(s->primary.user, "u");
  assert_string_equal(s->primary.dbname, "d");
  assert_int_equal(s->nreplicas, 2);
  assert_string_equal(s->replicas[0].host, "r1");
  assert_int_equal(s->replicas[0].port, 5432);
  assert_string_equal(s->replicas[1].host, "r2");
  assert_int_equal(s->replicas[1].port, 65535);
  pgs_config_unref(c);
}

static void test_auth_trust_needs_no_password(void **state) {
  pgs_config_t *c = pgs_config_parse_string(
      "[pgshard]\nauth = trust\n"
      "[user.app]\nadmin = true\n"
      "[shard.app.s0]\nprimary = port=1\n");
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_null(pgs_config_find_user(c, "app")->password);
  pgs_config_unref(c);
}

#define MD5_HASH                                                                                   \
  "md5"                                                                                            \
  "0123456789abcdef0123456789abcdef"
#define SCRAM_SECRET                                                                               \
  "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"      \
  "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

/* Users of every password kind; a plain one gets a secret made at load. */
static const char scram_users[] =
    "[user.plain]\npassword = secret\n"
    "[user.hashed]\npassword = " MD5_HASH
    "\n"
    "[user.scram]\npassword = " SCRAM_SECRET
    "\n"
    "[user.md5ish]\npassword = md5abc\n"
    "[shard.app.s0]\nprimary = port=6500\n";

static void check_scram_secrets(const pgs_config_t *c) {
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  const pgs_user_t *plain = pgs_config_find_user(c, "plain");
  assert_string_equal(plain->password, "secret"); /* md5 logins and servers need it */
  assert_non_null(plain->scram_secret);
  assert_int_equal(strncmp(plain->scram_secret, "SCRAM-SHA-256$4096:", 19), 0);
  pgs_scram_t scram;
  assert_int_equal(pgs_scram_init(&scram, plain->scram_secret), PGS_OK);
  assert_int_equal(scram.salt_len, 16);

  /* "md5abc" is no md5 hash: a plain password. */
  assert_non_null(pgs_config_find_user(c, "md5ish")->scram_secret);
  assert_string_not_equal(pgs_config_find_user(c, "md5ish")->scram_secret, plain->scram_secret);

  assert_string_equal(pgs_config_find_user(c, "hashed")->password, MD5_HASH);
  assert_null(pgs_config_find_user(c, "hashed")->scram_secret);
  assert_string_equal(pgs_config_find_user(c, "scram")->password, SCRAM_SECRET);
  assert_null(pgs_config_find_user(c, "scram")->scram_secret);
}

static void test_scram_secret(void **state) {
  pgs_config_t *c = pgs_config_parse_string(scram_users);
  check_scram_secrets(c);
  pgs_config_unref(c); /* frees the secrets; LeakSanitizer checks */

  /* The same from a file. */
  char path[] = "/tmp/test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  assert_non_null(f);
  assert_true(fputs(scram_users, f) >= 0);
  assert_int_equal(fclose(f), 0);
  c = pgs_config_load(path);
  unlink(path);
  check_scram_secrets(c);
  pgs_config_unref(c);

  /* A config with errors is not used: no PBKDF2 is spent on it. */
  c = pgs_config_parse_string("[user.plain]\npassword = secret\n");
  assert_int_equal(c->nerrors, 1);
  assert_null(pgs_config_find_user(c, "plain")->scram_secret);
  pgs_config_unref(c);

  /* No password (trust) or an empty one: no secret. */
  c = pgs_config_parse_string(
      "[pgshard]\nauth = trust\n[user.a]\nadmin = true\n"
      "[user.b]\npassword =\n[shard.app.s0]\nprimary = port=1\n");
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_null(pgs_config_find_user(c, "a")->scram_secret);
  assert_string_equal(pgs_config_find_user(c, "b")->password, "");
  assert_null(pgs_config_find_user(c, "b")->scram_secret);
  pgs_config_unref(c);
}

static void test_bad_int(void **state) {
  expect_one_error(MINIMAL "[pgshard]\nworkers = abc\n", 6, "workers");
  expect_one_error(MINIMAL "[pgshard]\nworkers = 65\n", 6, "between 1 and 64");
  expect_one_error(MINIMAL "[pgshard]\nworkers = 0\n", 6, "workers");
  expect_one_error(MINIMAL "[pgshard]\nworkers = 3x\n", 6, "workers");
  expect_one_error(MINIMAL "[pgshard]\nmax_message_size = 99999999999999999999\n", 6,
                   "max_message_size");
  expect_one_error(MINIMAL "[database.app]\n\npool_size = -1\n", 7, "pool_size");
  expect_one_error(MINIMAL "[database.app]\nmax_replica_lag_bytes = -1\n", 6,
                   "max_replica_lag_bytes");
  expect_one_error(MINIMAL "[pgshard]\nlisten = 127.0.0.1:70000\n", 6, "listen");
  expect_one_error(MINIMAL "[pgshard]\nlisten = 127.0.0.1\n", 6, "HOST:PORT");
  expect_one_error(MINIMAL "[pgshard]\nlisten = :6432\n", 6, "HOST:PORT");
  expect_one_error(MINIMAL "[user.app]\nadmin = maybe\n", 6, "true or false");
}

/* peers: the fleet's listen addresses, in order; peer_id: this one's place. */
static void test_peers(void **state) {
  (void)state;
  pgs_config_t *c = pgs_config_parse_string(
      MINIMAL "[pgshard]\npeer_id = 2\npeers = 10.0.0.1:6432, px2:6433 [::1]:6434\n");
  assert_non_null(c);
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_int_equal(c->peer_id, 2);
  assert_int_equal(c->npeers, 3);
  assert_string_equal(c->peer_hosts[0], "10.0.0.1");
  assert_int_equal(c->peer_ports[0], 6432);
  assert_string_equal(c->peer_hosts[1], "px2");
  assert_string_equal(c->peer_hosts[2], "::1");
  assert_int_equal(c->peer_ports[2], 6434);
  pgs_config_unref(c);
  expect_one_error(MINIMAL "[pgshard]\npeer_id = 3\npeers = a:1, b:2\n", 6, "peers lists 2");
  expect_one_error(MINIMAL "[pgshard]\npeers = a:1, b:2\n", 6, "set peer_id");
  expect_one_error(MINIMAL "[pgshard]\npeer_id = 1\n", 6, "peers lists 0");
  expect_one_error(MINIMAL "[pgshard]\npeer_id = 1\npeers = a:1, b\n", 7, "HOST:PORT");
  expect_one_error(MINIMAL "[pgshard]\npeer_id = 1\npeers = a:1, b:0\n", 7, "HOST:PORT");
  expect_one_error(MINIMAL "[pgshard]\npeer_id = 256\n", 6, "peer_id");
}

static void test_memory_and_idle_limits(void **state) {
  expect_one_error(MINIMAL "[pgshard]\nclient_idle_timeout_ms = -1\n", 6, "client_idle_timeout_ms");
  expect_one_error(MINIMAL "[pgshard]\nidle_transaction_timeout_ms = 86400001\n", 6,
                   "idle_transaction_timeout_ms");
  expect_one_error(MINIMAL "[pgshard]\nmax_client_memory = 1000\n", 6, "max_client_memory");
  expect_one_error(MINIMAL "[pgshard]\nmax_merge_bytes = 1k\n", 6, "max_merge_bytes");
  expect_one_error(MINIMAL "[pgshard]\nmax_total_client_memory = 0\n", 6,
                   "max_total_client_memory");
  /* A whole-process budget below one client's is a mistake, not a limit. */
  expect_one_error(MINIMAL
                   "[pgshard]\nmax_client_memory = 4194304\n"
                   "max_total_client_memory = 2097152\n",
                   0, "is below max_client_memory");
}

/* twophase_log (the decision log of earlier versions) is accepted, with a
 * warning that it is no longer used, whatever its value. */
static void test_twophase_log_accepted_with_a_warning(void **state) {
  PGS_UNUSED(state);
  static const char *const values[] = {"/var/lib/pgshard/2pc.log", ""};
  for (size_t i = 0; i < PGS_ARRAY_LEN(values); i++) {
    char text[256];
    snprintf(text, sizeof(text), MINIMAL "[pgshard]\ntwophase_log = %s\n", values[i]);
    pgs_config_t *c = pgs_config_parse_string(text);
    print_errors(c);
    assert_int_equal(c->nerrors, 0);
    assert_int_equal(c->nwarnings, 1);
    assert_int_equal(c->warnings[0].line, 6);
    assert_non_null(strstr(c->warnings[0].message, "twophase_log is no longer used"));
    pgs_config_unref(c);
  }
}

/* twophase_recovery_user names a [user.*] (declared before or after it);
 * empty or absent: none, each prepared transaction is settled as its owner. */
static void test_twophase_recovery_user(void **state) {
  PGS_UNUSED(state);
  pgs_config_t *c = pgs_config_parse_string(MINIMAL);
  assert_int_equal(c->nerrors, 0);
  assert_null(c->twophase_recovery_user);
  pgs_config_unref(c);

  c = pgs_config_parse_string("[pgshard]\ntwophase_recovery_user = fixer\n" MINIMAL
                              "[user.fixer]\npassword = pw\n");
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  assert_string_equal(c->twophase_recovery_user, "fixer");
  assert_non_null(pgs_config_find_user(c, c->twophase_recovery_user));
  pgs_config_unref(c);

  c = pgs_config_parse_string(MINIMAL "[pgshard]\ntwophase_recovery_user =\n");
  assert_int_equal(c->nerrors, 0);
  assert_null(c->twophase_recovery_user);
  pgs_config_unref(c);

  expect_one_error(MINIMAL "[pgshard]\ntwophase_recovery_user = nobody\n", 6,
                   "twophase_recovery_user: no [user.nobody]");
}

/* client_tls and the files it needs: checked with their lines. */
static void test_client_tls_keys(void **state) {
  PGS_UNUSED(state);
  pgs_config_t *c = pgs_config_parse_string(MINIMAL);
  assert_int_equal(c->client_tls, PGS_CLIENT_TLS_DISABLE);
  assert_null(c->tls_cert_file);
  assert_null(c->tls_ctx);
  pgs_config_unref(c);

  expect_one_error(MINIMAL "[pgshard]\nclient_tls = prefer\n", 6,
                   "client_tls = allow needs tls_cert_file and tls_key_file");
  expect_one_error(MINIMAL "[pgshard]\nclient_tls = maybe\n", 6, "expected one of disable");
  expect_one_error(MINIMAL
                   "[pgshard]\nclient_tls = verify-full\ntls_cert_file = a.crt\n"
                   "tls_key_file = a.key\n",
                   6, "needs tls_ca_file");
  expect_one_error(MINIMAL "[pgshard]\ntls_key_file = a.key\n", 6, "go together");
  expect_one_error(MINIMAL "[pgshard]\ntls_ca_file = ca.crt\n", 6, "needs tls_cert_file");
  expect_one_error(MINIMAL
                   "[pgshard]\nclient_tls = require\n"
                   "tls_cert_file = /nonexistent/pgshard.crt\n"
                   "tls_key_file = /nonexistent/pgshard.key\n",
                   7, "tls_cert_file: cannot open \"/nonexistent/pgshard.crt\"");
  /* Empty: none, as absent. */
  c = pgs_config_parse_string(MINIMAL "[pgshard]\ntls_cert_file =\ntls_key_file =\n");
  assert_int_equal(c->nerrors, 0);
  assert_null(c->tls_cert_file);
  pgs_config_unref(c);
}

/* A self-signed certificate and its key, as PEM files DIR/NAME.crt and
 * DIR/NAME.key. */
static void write_cert(const char *dir, const char *name) {
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  X509 *cert = X509_new();
  assert_non_null(key);
  assert_non_null(cert);
  X509_set_version(cert, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             (const unsigned char *)name, -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  assert_true(X509_sign(cert, key, EVP_sha256()) > 0);
  char path[256];
  snprintf(path, sizeof(path), "%s/%s.crt", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(PEM_write_X509(f, cert), 1);
  fclose(f);
  snprintf(path, sizeof(path), "%s/%s.key", dir, name);
  f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
  fclose(f);
  X509_free(cert);
  EVP_PKEY_free(key);
}

/* The TLS context is made when the config loads, from files beside it; a
 * key that is not the certificate's, or a file that is not PEM, is an
 * error at its line. */
static void test_client_tls_context(void **state) {
  PGS_UNUSED(state);
  char dir[] = "/tmp/pgshard-test-tls-XXXXXX";
  assert_non_null(mkdtemp(dir));
  write_cert(dir, "a");
  write_cert(dir, "b");
  char path[128], junk[128];
  snprintf(path, sizeof(path), "%s/pgshard.ini", dir);
  snprintf(junk, sizeof(junk), "%s/junk.crt", dir);
  FILE *f = fopen(junk, "w");
  assert_non_null(f);
  fputs("not PEM\n", f);
  fclose(f);
  static const struct {
    const char *keys;
    int line; /* 0: loads */
    const char *needle;
  } cases[] = {
      {"client_tls = verify-full\ntls_cert_file = a.crt\ntls_key_file = a.key\n"
       "tls_ca_file = b.crt\n",
       0, NULL},
      {"client_tls = require\ntls_cert_file = a.crt\ntls_key_file = b.key\n", 8,
       "tls_key_file: private key"},
      {"client_tls = verify-ca\ntls_cert_file = a.crt\ntls_key_file = a.key\n"
       "tls_ca_file = junk.crt\n",
       9, "tls_ca_file: cannot load CA certificates"},
      {"client_tls = allow\ntls_cert_file = junk.crt\ntls_key_file = a.key\n", 7,
       "tls_cert_file: cannot load certificate"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "%s[pgshard]\n%s", MINIMAL, cases[i].keys);
    fclose(f);
    pgs_config_t *c = pgs_config_load(path);
    if (cases[i].line == 0) {
      print_errors(c);
      assert_int_equal(c->nerrors, 0);
      assert_non_null(c->tls_ctx);
      assert_int_equal(c->client_tls, PGS_CLIENT_TLS_VERIFY_FULL);
      char want[160];
      snprintf(want, sizeof(want), "%s/a.crt", dir);
      assert_string_equal(c->tls_cert_file, want);
    } else {
      if (c->nerrors != 1 || c->errors[0].line != cases[i].line ||
          !strstr(c->errors[0].message, cases[i].needle)) {
        print_message("case %zu: expected line %d \"%s\"\n", i, cases[i].line, cases[i].needle);
        print_errors(c);
        fail();
      }
      assert_null(c->tls_ctx);
    }
    pgs_config_unref(c);
  }
  static const char *const files[] = {"a.crt", "a.key",    "b.crt",
                                      "b.key", "junk.crt", "pgshard.ini"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(files); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

static void test_unknown_key(void **state) {
  expect_one_error(MINIMAL "[pgshard]\nworker = 2\n", 6, "unknown key \"worker\" in [pgshard]");
  expect_one_error(MINIMAL "[user.app]\n; comment\npasswd = x\n", 7, "unknown key \"passwd\"");
  expect_one_error(MINIMAL "[database.app]\npool = 1\n", 6, "[database.app]");
  expect_one_error(MINIMAL "[shard.app.s0]\nhost = x\n", 6, "[shard.app.s0]");
}

static void test_unknown_section(void **state) {
  expect_one_error(MINIMAL "[bogus]\nx = 1\n", 6, "unknown section [bogus]");
  expect_one_error(MINIMAL "[shard.app]\nprimary = port=1\n", 6, "unknown section");
  expect_one_error(MINIMAL "[shard.a.b.c]\nprimary = port=1\n", 6, "unknown section");
  expect_one_error(MINIMAL "[user.a b]\npassword = x\n", 6, "bad user name");
  expect_one_error(MINIMAL "[database.]\npool_size = 1\n", 6, "bad database name");
  expect_one_error(MINIMAL "[shard.app.s/0]\nprimary = port=1\n", 6, "bad database or shard");
}

static void test_long_section_name(void **state) {
  /* inih cuts section names at 49 characters: without the check these two
   * shards would silently become one, with two primaries. */
  expect_one_error(MINIMAL
                   "[shard.app.a_shard_name_long_enough_to_pass_inih_limit]\n"
                   "primary = port=1\n",
                   5, "longer than 49 characters");
}

static void test_bad_enum(void **state) {
  expect_one_error(MINIMAL "[pgshard]\nlog_format = xml\n", 6, "expected one of text | json");
  expect_one_error(MINIMAL "[pgshard]\nauth = password\n", 6, "trust | md5 | scram-sha-256");
  expect_one_error(MINIMAL "[database.app]\npool_mode = statement\n", 6, "pool_mode");
  expect_one_error(MINIMAL "[database.app]\nread_your_writes = always\n", 6, "read_your_writes");
  expect_one_error(MINIMAL "[database.app]\nlag_fallback = replica\n", 6, "lag_fallback");
  expect_one_error(MINIMAL "[database.app]\ncross_shard_reads = yes\n", 6, "allow");
  expect_one_error(MINIMAL "[database.app]\ncross_shard_writes = 3pc\n", 6, "2pc");
  expect_one_error(MINIMAL "[database.app]\nhash = md5\n", 6, "xxh3 | postgres");
}

static void test_bad_conninfo(void **state) {
  expect_one_error(MINIMAL "[shard.app.s0]\nreplica = host=x port=99999\n", 6, "bad port");
  expect_one_error(MINIMAL "[shard.app.s0]\nreplica = host=x port=abc\n", 6, "bad port");
  expect_one_error(MINIMAL "[shard.app.s1]\nprimary = port=1\nreplica = port=0\n", 7, "bad port");
  expect_one_error(MINIMAL "[shard.app.s0]\nreplica = host='x port=1\n", 6, "unterminated");
  expect_one_error(MINIMAL "[shard.app.s0]\nreplica = host\n", 6, "expected key=value");
  expect_one_error(MINIMAL "[shard.app.s0]\nprimary = port=2\n", 6, "primary given twice");
  /* A primary that does not parse also leaves its shard without one. */
  expect_errors(MINIMAL "[shard.app.s1]\nprimary = port=99999\n", 2, 6, "bad port");
}

static void test_shard_without_primary(void **state) {
  /* The error names the line where the shard first appears. */
  expect_one_error(MINIMAL "[shard.app.s1]\nregion = eu\nreplica = port=7\n", 6,
                   "[shard.app.s1]: no primary");
}

static void test_database_without_shard(void **state) {
  expect_one_error(MINIMAL "[database.other]\npool_size = 5\n", 6,
                   "[database.other]: no [shard.other.*] section");
  pgs_config_t *c = pgs_config_parse_string("[user.app]\npassword = x\n");
  assert_int_equal(c->nerrors, 1);
  assert_int_equal(c->errors[0].line, 0);
  assert_non_null(strstr(c->errors[0].message, "no [database.*] section"));
  pgs_config_unref(c);
  expect_one_error(MINIMAL "[shard.pgshard.s0]\nprimary = port=1\n", 6, "admin database");
}

static void test_user_without_password(void **state) {
  expect_one_error(MINIMAL "[user.bob]\nadmin = true\n", 6, "[user.bob]: no password");
  expect_one_error("[pgshard]\nauth = md5\n" MINIMAL "[user.bob]\nadmin = false\n", 8,
                   "auth = md5 needs one");
  expect_one_error(MINIMAL "[pgshard]\nauth = scram-sha-256\n[user.bob]\nadmin = false\n", 8,
                   "scram-sha-256");
  /* Over PGS_MAX_PASSWORD: refused, the earlier password stays. */
  char text[2048];
  int n = snprintf(text, sizeof(text), MINIMAL "[user.app]\npassword = ");
  memset(text + n, 'x', PGS_MAX_PASSWORD);
  strcpy(text + n + PGS_MAX_PASSWORD, "\n");
  expect_one_error(text, 6, "longer than 1023 bytes");
}

static void test_key_outside_section(void **state) {
  expect_one_error("workers = 2\n" MINIMAL, 1, "key \"workers\" outside any section");
  expect_one_error("; leading comment\n\nauth = md5\n" MINIMAL, 3, "outside any section");
}

static void test_syntax_error(void **state) {
  expect_one_error(MINIMAL "[pgshard]\nthis line has no equals sign\n", 6, "syntax error");
  expect_one_error(MINIMAL "[pgshard\n", 5, "syntax error");
}

static void test_every_error_collected(void **state) {
  pgs_config_t *c = pgs_config_parse_string(
      "[pgshard]\n"
      "workers = many\n"
      "log_format = xml\n"
      "[user.bob]\n"
      "admin = 1\n"
      "[database.app]\n"
      "pool_size = 0\n");
  /* workers, log_format, pool_size, bob's password, app's shards. */
  assert_int_equal(c->nerrors, 5);
  int lines[5];
  for (int i = 0; i < 5; i++) lines[i] = c->errors[i].line;
  assert_int_equal(lines[0], 2);
  assert_int_equal(lines[1], 3);
  assert_int_equal(lines[2], 7);
  assert_int_equal(lines[3], 5);
  assert_int_equal(lines[4], 7);
  pgs_config_unref(c);
}

static void test_long_lines(void **state) {
  /* Lines past inih's initial 200-byte buffer are read whole, not split. */
  char text[20000];
  char password[301];
  memset(password, 'p', 300);
  password[300] = '\0';
  snprintf(text, sizeof(text),
           MINIMAL
           "[shard.app.s1]\n"
           "primary = host=h port=7 dbname=d user=u password='%s'\n"
           "region = eu\n"
           "[geo.app]\n"
           "eu = %s\n",
           password, password);
  pgs_config_t *c = pgs_config_parse_string(text);
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  const pgs_shard_t *s = &pgs_config_find_database(c, "app")->shards[1];
  assert_string_equal(s->primary.password, password);
  assert_int_equal(s->primary.port, 7);
  pgs_config_unref(c);

  /* A line longer than the parser's limit is an error, never silently cut. */
  int n = snprintf(text, sizeof(text), MINIMAL "[geo.app]\neu = ");
  memset(text + n, 'x', 17000);
  strcpy(text + n + 17000, " = y\n[pgshard]\nworkers = 1\n");
  c = pgs_config_parse_string(text);
  print_errors(c);
  assert_true(c->nerrors >= 1);
  bool found = false;
  for (int i = 0; i < c->nerrors; i++)
    if (c->errors[i].line == 6 && strstr(c->errors[i].message, "line longer than")) found = true;
  assert_true(found);
  assert_int_equal(c->workers, 1); /* line counting survived the long line */
  pgs_config_unref(c);
}

static void test_crlf_and_missing_final_newline(void **state) {
  pgs_config_t *c = pgs_config_parse_string(
      "[user.app]\r\npassword = secret\r\n"
      "[shard.app.s0]\r\nprimary = port=6500\r\n"
      "[pgshard]\r\nworkers = x");
  assert_int_equal(c->nerrors, 1);
  assert_int_equal(c->errors[0].line, 6);
  assert_string_equal(pgs_config_find_user(c, "app")->password, "secret");
  pgs_config_unref(c);
}

static void test_refcount(void **state) {
  pgs_config_t *c = pgs_config_parse_string(MINIMAL);
  assert_ptr_equal(pgs_config_ref(c), c);
  assert_int_equal(c->refcount, 2);
  pgs_config_unref(c);
  assert_int_equal(c->refcount, 1);
  pgs_config_unref(c); /* frees; LeakSanitizer checks */
  pgs_config_unref(NULL);
}

static void test_load_missing_file(void **state) {
  pgs_config_t *c = pgs_config_load("/nonexistent/pgshard.ini");
  assert_int_equal(c->nerrors, 1);
  assert_int_equal(c->errors[0].line, 0);
  assert_non_null(strstr(c->errors[0].message, "cannot open"));
  assert_string_equal(c->path, "/nonexistent/pgshard.ini");
  pgs_config_unref(c);
}

static void test_conninfo(void **state) {
  pgs_node_t node;
  char err[128];

  memset(&node, 0, sizeof(node));
  assert_int_equal(pgs_conninfo_parse("", &node, err, sizeof(err)), PGS_OK);
  assert_string_equal(node.host, "127.0.0.1");
  assert_int_equal(node.port, 5432);
  assert_null(node.dbname);
  free(node.host);

  memset(&node, 0, sizeof(node));
  assert_int_equal(pgs_conninfo_parse("  host = 'db one'  port= 5433 dbname ='my db' "
                                      "user='o\\'brien' password='a\\\\b' sslmode=require "
                                      "application_name=x",
                                      &node, err, sizeof(err)),
                   PGS_OK);
  assert_string_equal(node.host, "db one");
  assert_int_equal(node.port, 5433);
  assert_string_equal(node.dbname, "my db");
  assert_string_equal(node.user, "o'brien");
  assert_string_equal(node.password, "a\\b");
  free(node.host);
  free(node.dbname);
  free(node.user);
  free(node.password);

  /* An empty quoted value is a value; a later key replaces an earlier one. */
  memset(&node, 0, sizeof(node));
  assert_int_equal(pgs_conninfo_parse("password='' host=a host=b", &node, err, sizeof(err)),
                   PGS_OK);
  assert_string_equal(node.password, "");
  assert_string_equal(node.host, "b");
  free(node.host);
  free(node.password);

  static const char *const bad[] = {"host",       "=x",        "host=x port=", "port=0",
                                    "port=65536", "port=12ab", "host='x",      "dbname='a\\'"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    memset(&node, 0, sizeof(node));
    err[0] = '\0';
    if (pgs_conninfo_parse(bad[i], &node, err, sizeof(err)) != PGS_EINVAL)
      fail_msg("conninfo \"%s\" was accepted", bad[i]);
    assert_true(strlen(err) > 0);
    free(node.host);
    free(node.dbname);
    free(node.user);
    free(node.password);
  }
}

/* The conninfo pools and the monitor hand to libpq. */
static void test_node_conninfo(void **state) {
  pgs_config_t *c = pgs_config_parse_string(
      "[user.app]\npassword = it's\n"
      "[database.app]\n"
      "[shard.app.s0]\nprimary = host=127.0.0.1 port=6500\n"
      "replica = host=127.0.0.1 port=6501 user=postgres sslmode=require\n");
  print_errors(c);
  assert_int_equal(c->nerrors, 0);
  const pgs_database_t *db = &c->databases[0];
  char *s = pgs_node_conninfo(c, db, &db->shards[0].primary, &c->users[0],
                              "fallback_application_name", "pgshard");
  assert_string_equal(s,
                      "host=127.0.0.1 port=6500 dbname='app' user='app' password='it\\'s' "
                      "sslmode='disable' gssencmode='disable' connect_timeout='5' "
                      "fallback_application_name='pgshard'");
  free(s);
  s = pgs_node_conninfo(c, db, &db->shards[0].replicas[0], &c->users[0], "application_name", "m");
  assert_null(strstr(s, "password"));          /* the node names its own user */
  assert_null(strstr(s, "sslmode='disable'")); /* the node chose */
  assert_non_null(strstr(s, "application_name='m'"));
  free(s);
  pgs_config_unref(c);
}

static void test_host_is_loopback(void **state) {
  assert_true(pgs_host_is_loopback("127.0.0.1"));
  assert_true(pgs_host_is_loopback("127.1.2.3"));
  assert_true(pgs_host_is_loopback("::1"));
  assert_true(pgs_host_is_loopback("localhost"));
  assert_true(pgs_host_is_loopback("LocalHost"));
  assert_false(pgs_host_is_loopback(NULL));
  assert_false(pgs_host_is_loopback(""));
  assert_false(pgs_host_is_loopback("10.0.0.1"));
  assert_false(pgs_host_is_loopback("128.0.0.1"));
  assert_false(pgs_host_is_loopback("::2"));
  assert_false(pgs_host_is_loopback("db.example.com"));
  assert_false(pgs_host_is_loopback("localhost.example.com"));
}

/* The shard-map half of the DESIGN.md example: four tables, ranges sorted
 * and typed, geo values typed and sorted, the tenant pin on its shard. */
static void test_design_example_shard_map(void **state) {
  pgs_config_t *c = pgs_config_parse_string(design_example);
  assert_int_equal(c->nerrors, 0);
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  const pgs_shardmap_t *map = &db->shardmap;
  assert_int_equal(map->ntables, 4);
  const pgs_table_t *events = pgs_shardmap_find_table(db, "events");
  assert_int_equal(events->strategy, PGS_STRATEGY_RANGE);
  assert_int_equal(events->nranges, 2);
  assert_false(events->ranges[0].has_low);
  assert_int_equal(events->ranges[0].high->i, 1000000);
  assert_int_equal(events->ranges[1].shard, 1);
  assert_false(events->ranges[1].has_high);
  assert_int_equal(pgs_shardmap_find_table(db, "profiles")->strategy, PGS_STRATEGY_GEO);
  assert_int_equal(map->ngeo, 9);
  assert_int_equal(map->geo_type, PGS_TYPE_TEXT);
  assert_null(map->geo_default);
  assert_int_equal(map->ntenants, 1);
  assert_int_equal(map->tenants[0].key->i, 42);
  assert_int_equal(map->tenants[0].shard, 1);
  assert_int_equal(map->tenant_type, PGS_TYPE_BIGINT);
  pgs_config_unref(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_design_example),
      cmocka_unit_test(test_design_example_shard_map),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_every_enum_and_value),
      cmocka_unit_test(test_auth_trust_needs_no_password),
      cmocka_unit_test(test_scram_secret),
      cmocka_unit_test(test_map_names_fold),
      cmocka_unit_test(test_bad_int),
      cmocka_unit_test(test_peers),
      cmocka_unit_test(test_memory_and_idle_limits),
      cmocka_unit_test(test_twophase_log_accepted_with_a_warning),
      cmocka_unit_test(test_twophase_recovery_user),
      cmocka_unit_test(test_client_tls_keys),
      cmocka_unit_test(test_client_tls_context),
      cmocka_unit_test(test_unknown_key),
      cmocka_unit_test(test_unknown_section),
      cmocka_unit_test(test_long_section_name),
      cmocka_unit_test(test_bad_enum),
      cmocka_unit_test(test_bad_conninfo),
      cmocka_unit_test(test_shard_without_primary),
      cmocka_unit_test(test_database_without_shard),
      cmocka_unit_test(test_user_without_password),
      cmocka_unit_test(test_key_outside_section),
      cmocka_unit_test(test_syntax_error),
      cmocka_unit_test(test_every_error_collected),
      cmocka_unit_test(test_long_lines),
      cmocka_unit_test(test_crlf_and_missing_final_newline),
      cmocka_unit_test(test_refcount),
      cmocka_unit_test(test_load_missing_file),
      cmocka_unit_test(test_conninfo),
      cmocka_unit_test(test_node_conninfo),
      cmocka_unit_test(test_host_is_loopback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
