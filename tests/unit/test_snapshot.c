/*
 * test_snapshot.c — the health snapshot's lookups (snapshot.h): a shard by
 * database and index in the snapshot's own config, and a shard of another
 * config (a reload not yet followed) found by names only when its nodes are
 * the same, in the same order; the sharded tables' columns; references
 * counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/shardmap.h"
#include "pgshard/snapshot.h"

#define HEAD "[pgshard]\nlisten = 127.0.0.1:6432\n[user.app]\npassword = x\n[database.app]\n"

static const char two_shards[] = HEAD
    "[shard.app.s0]\nprimary = host=127.0.0.1 port=6500\nreplica = host=127.0.0.1 port=6501\n"
    "[shard.app.s1]\nprimary = host=127.0.0.1 port=6510\n";
/* s1 first now, s0 with the same nodes. */
static const char reordered[] = HEAD
    "[shard.app.s1]\nprimary = host=127.0.0.1 port=6510\n"
    "[shard.app.s0]\nprimary = host=127.0.0.1 port=6500\nreplica = host=127.0.0.1 port=6501\n";
/* s0's replica moved to another port. */
static const char moved[] = HEAD
    "[shard.app.s0]\nprimary = host=127.0.0.1 port=6500\nreplica = host=127.0.0.1 port=6601\n"
    "[shard.app.s1]\nprimary = host=127.0.0.1 port=6510\n";

/* A snapshot of CONFIG: every node's state zeroed, shard i's writer = i. */
static pgs_snapshot_t *snapshot_of(pgs_config_t *config) {
  pgs_snapshot_t *snap = calloc(1, sizeof(*snap));
  snap->refcount = 1;
  snap->config = pgs_config_ref(config);
  snap->ndbs = config->ndatabases;
  snap->dbs = calloc((size_t)snap->ndbs, sizeof(*snap->dbs));
  for (int d = 0; d < snap->ndbs; d++) {
    const pgs_database_t *db = &config->databases[d];
    pgs_health_db_t *h = &snap->dbs[d];
    h->name = strdup(db->name);
    h->nshards = db->nshards;
    h->shards = calloc((size_t)db->nshards, sizeof(*h->shards));
    for (int s = 0; s < db->nshards; s++) {
      h->shards[s].nnodes = 1 + db->shards[s].nreplicas;
      h->shards[s].nodes = calloc((size_t)h->shards[s].nnodes, sizeof(pgs_node_state_t));
      h->shards[s].writer = s;
    }
  }
  return snap;
}

static void test_lookups(void **state) {
  pgs_config_t *config = pgs_config_parse_string(two_shards);
  assert_non_null(config);
  pgs_snapshot_t *snap = snapshot_of(config);
  const pgs_database_t *db = pgs_config_find_database(config, "app");
  assert_non_null(db);
  assert_int_equal(pgs_snapshot_shard(snap, "app", 1)->writer, 1);
  assert_null(pgs_snapshot_shard(snap, "app", 2));
  assert_null(pgs_snapshot_shard(snap, "app", -1));
  assert_null(pgs_snapshot_shard(snap, "other", 0));
  assert_null(pgs_snapshot_shard(NULL, "app", 0));
  /* The snapshot's own config: by index. */
  assert_ptr_equal(pgs_snapshot_shard_of(snap, db, 0), pgs_snapshot_shard(snap, "app", 0));

  /* A client still on an older config whose shards come in another order:
   * found by name. */
  pgs_config_t *older = pgs_config_parse_string(reordered);
  const pgs_database_t *odb = pgs_config_find_database(older, "app");
  int s0 = pgs_shardmap_find_shard(odb, "s0");
  assert_int_equal(s0, 1);
  assert_ptr_equal(pgs_snapshot_shard_of(snap, odb, s0), pgs_snapshot_shard(snap, "app", 0));
  /* ... but not when its nodes differ: node indexes would not agree. */
  pgs_config_t *other = pgs_config_parse_string(moved);
  const pgs_database_t *mdb = pgs_config_find_database(other, "app");
  assert_null(pgs_snapshot_shard_of(snap, mdb, 0));
  assert_non_null(pgs_snapshot_shard_of(snap, mdb, 1));
  assert_null(pgs_snapshot_shard_of(snap, mdb, 5));

  /* References: the last unref frees it (and its config reference). */
  assert_ptr_equal(pgs_snapshot_ref(snap), snap);
  assert_int_equal(snap->refcount, 2);
  pgs_snapshot_unref(snap);
  assert_int_equal(snap->refcount, 1);
  pgs_snapshot_unref(snap);
  pgs_snapshot_unref(NULL);
  pgs_config_unref(config);
  pgs_config_unref(older);
  pgs_config_unref(other);
}

/* The sharded tables' columns the monitor publishes: by database and table
 * name; NULL where not known. */
static void test_columns(void **state) {
  pgs_config_t *config =
      pgs_config_parse_string(HEAD
                              "[shard.app.s0]\nprimary = host=127.0.0.1 port=6500\n"
                              "[table.app.users]\ncolumn = id\ntype = bigint\n"
                              "strategy = hash\n"
                              "[table.app.orders]\ncolumn = id\ntype = bigint\n"
                              "strategy = hash\n");
  assert_non_null(config);
  assert_int_equal(config->nerrors, 0);
  pgs_snapshot_t *snap = snapshot_of(config);
  pgs_health_db_t *h = &snap->dbs[0];
  h->ntables = 2;
  h->columns = calloc(2, sizeof(char *));
  h->columns[0] = strdup("id, name");
  assert_string_equal(pgs_snapshot_columns(snap, "app", "users"), "id, name");
  assert_null(pgs_snapshot_columns(snap, "app", "orders")); /* not known */
  assert_null(pgs_snapshot_columns(snap, "app", "ghosts"));
  assert_null(pgs_snapshot_columns(snap, "other", "users"));
  assert_null(pgs_snapshot_columns(NULL, "app", "users"));
  pgs_snapshot_unref(snap); /* frees the columns too (ASan: no leak) */
  pgs_config_unref(config);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lookups),
      cmocka_unit_test(test_columns),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
