/*
 * test_slots.c — the xxh3 slot table: [slots.DB] read into each database's
 * table (every error on its line), the default layout when it is absent,
 * hash tables and unpinned tenants routed through the table while geo keeps
 * its own spread, and pgs_shardmap_rebalance_slots: growing n shards to n+1
 * moves about 1/(n+1) of the slots, all to the new shard; removing a shard
 * moves only its slots; every result is balanced within one slot.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/config.h"
#include "pgshard/shardmap.h"

/* ---- helpers ---- */

static void print_errors(const pgs_config_t *c) {
  for (int i = 0; i < c->nerrors; i++)
    print_message("  line %d: %s\n", c->errors[i].line, c->errors[i].message);
}

static pgs_config_t *load_ok(const char *text) {
  pgs_config_t *c = pgs_config_parse_string(text);
  if (c->nerrors) {
    print_errors(c);
    fail_msg("%d config error(s)", c->nerrors);
  }
  return c;
}

/* TEXT must give exactly NERRORS errors, one of them on LINE containing
 * NEEDLE. */
static void config_errors(const char *text, int nerrors, int line, const char *needle) {
  pgs_config_t *c = pgs_config_parse_string(text);
  bool found = false;
  for (int i = 0; i < c->nerrors; i++)
    if (c->errors[i].line == line && strstr(c->errors[i].message, needle)) found = true;
  if (c->nerrors != nerrors || !found) {
    print_message("expected %d error(s), one on line %d containing \"%s\"; got %d:\n", nerrors,
                  line, needle, c->nerrors);
    print_errors(c);
    fail();
  }
  pgs_config_unref(c);
}

/* Two shards, a hash table and tenant tables. 16 lines: appended text starts on line 17. */
#define BASE2                                                                                      \
  "[user.app]\n"                                                                                   \
  "password = x\n"                                                                                 \
  "[database.app]\n"                                                                               \
  "[shard.app.s0]\n"                                                                               \
  "primary = port=1\n"                                                                             \
  "[shard.app.s1]\n"                                                                               \
  "primary = port=2\n"                                                                             \
  "[table.app.users]\n"                                                                            \
  "column = id\n"                                                                                  \
  "type = bigint\n"                                                                                \
  "strategy = hash\n"                                                                              \
  "[table.app.invoices]\n"                                                                         \
  "column = tenant_id\n"                                                                           \
  "type = bigint\n"                                                                                \
  "strategy = tenant\n"                                                                            \
  "[tenants.app]\n"

/* A config of database app with N shards s0..s(N-1) and nothing else. */
static pgs_config_t *load_shards(int n) {
  char text[4096] = "[user.app]\npassword = x\n[database.app]\n";
  for (int i = 0; i < n; i++) {
    size_t used = strlen(text);
    snprintf(text + used, sizeof(text) - used, "[shard.app.s%d]\nprimary = port=%d\n", i, i + 1);
  }
  return load_ok(text);
}

/* A database built by hand: shards named NAMES, slot table TABLE (NULL:
 * the default layout). */
typedef struct hand_db {
  pgs_shard_t shards[PGS_MAX_SHARDS];
  pgs_database_t db;
} hand_db_t;

static void hand_db(hand_db_t *h, const char *const *names, int n, int16_t *table) {
  memset(h, 0, sizeof(*h));
  for (int i = 0; i < n; i++) h->shards[i].name = (char *)names[i];
  h->db.name = (char *)"app";
  h->db.shards = h->shards;
  h->db.nshards = n;
  h->db.slot_shard = table;
}

static const char *const S[] = {"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"};

/* Every shard of OUT holds PGS_HASH_SLOTS / N slots or one more. */
static void assert_balanced(const int16_t *out, int n) {
  int count[PGS_MAX_SHARDS] = {0};
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    assert_in_range(out[slot], 0, n - 1);
    count[out[slot]]++;
  }
  for (int i = 0; i < n; i++) assert_in_range(count[i], PGS_HASH_SLOTS / n, PGS_HASH_SLOTS / n + 1);
}

/* How many slots of OLD's table change shard (by name) in OUT over NAMES;
 * every one must land on shard TO (-1: anywhere). */
static int count_moves(const pgs_database_t *old, const char *const *names, const int16_t *out,
                       int to) {
  int moved = 0;
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    if (!strcmp(old->shards[pgs_shardmap_slot_owner(old, slot)].name, names[out[slot]])) continue;
    moved++;
    if (to >= 0) assert_int_equal(out[slot], to);
  }
  return moved;
}

/* ---- the table in the config ---- */

static void test_default_table_is_the_old_layout(void **state) {
  for (int n = 1; n <= 9; n++) {
    pgs_config_t *c = load_shards(n);
    const pgs_database_t *db = pgs_config_find_database(c, "app");
    assert_non_null(db->slot_shard);
    assert_int_equal(db->slots_line, 0);
    for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
      assert_int_equal(db->slot_shard[slot], pgs_shardmap_slot_shard(slot, n));
      assert_int_equal(pgs_shardmap_slot_owner(db, slot), pgs_shardmap_slot_shard(slot, n));
    }
    pgs_config_unref(c);
  }
}

static void test_section_is_read(void **state) {
  pgs_config_t *c = load_ok(BASE2
                            "[slots.app]\n"
                            "s1 = 0-99, 200, 4000 - 4095\n"
                            "s0 = 100-199,201-3999\n");
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  assert_int_equal(db->slots_line, 18);
  assert_int_equal(db->slot_shard[0], 1);
  assert_int_equal(db->slot_shard[99], 1);
  assert_int_equal(db->slot_shard[100], 0);
  assert_int_equal(db->slot_shard[200], 1);
  assert_int_equal(db->slot_shard[201], 0);
  assert_int_equal(db->slot_shard[3999], 0);
  assert_int_equal(db->slot_shard[4000], 1);
  assert_int_equal(db->slot_shard[4095], 1);
  pgs_config_unref(c);
  /* A shard's list may go on several lines; a shard may hold no slot. */
  c = load_ok(BASE2 "[slots.app]\ns1 = 0-2000\ns1 = 2001-4095\n");
  db = pgs_config_find_database(c, "app");
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) assert_int_equal(db->slot_shard[slot], 1);
  pgs_config_unref(c);
}

static void test_hash_and_tenants_route_by_the_table(void **state) {
  /* The default layout turned around: every key changes shard. */
  pgs_config_t *c = load_ok(BASE2 "7 = s0\n[slots.app]\ns0 = 2048-4095\ns1 = 0-2047\n");
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  const pgs_table_t *users = pgs_shardmap_find_table(db, "users");
  const pgs_table_t *invoices = pgs_shardmap_find_table(db, "invoices");
  int count[2] = {0};
  for (int64_t i = 0; i < 2000; i++) {
    pgs_key_t k = {.type = PGS_TYPE_BIGINT, .i = i};
    pgs_route_detail_t d;
    int s = pgs_shardmap_route_detail(db, users, &k, &d, NULL);
    assert_int_equal(d.slot, pgs_shardmap_slot(&k));
    assert_int_equal(s, 1 - pgs_shardmap_slot_shard(d.slot, 2));
    assert_int_equal(s, d.slot < 2048 ? 1 : 0);
    assert_int_equal(pgs_shardmap_hash_shard(db, &k, NULL), s);
    if (i != 7) assert_int_equal(pgs_shardmap_route(db, invoices, &k, NULL), s);
    count[s]++;
  }
  assert_in_range(count[0], 900, 1100);
  pgs_key_t pinned = {.type = PGS_TYPE_BIGINT, .i = 7};
  assert_int_equal(pgs_shardmap_route(db, invoices, &pinned, NULL), 0);
  pgs_config_unref(c);
}

static void test_geo_keeps_its_spread(void **state) {
  /* Every slot on s1 (us): eu's values still spread over s0 and s2 by the
   * default layout over the region's two shards. */
  pgs_config_t *c = load_ok(
      "[user.app]\npassword = x\n[database.app]\n"
      "[shard.app.s0]\nprimary = port=1\nregion = eu\n"
      "[shard.app.s1]\nprimary = port=2\nregion = us\n"
      "[shard.app.s2]\nprimary = port=3\nregion = eu\n"
      "[table.app.p]\ncolumn = c\ntype = text\nstrategy = geo\n"
      "[table.app.h]\ncolumn = id\ntype = text\nstrategy = hash\n"
      "[geo.app]\neu = DE FR IT ES NL PL\n"
      "[slots.app]\ns1 = 0-4095\n");
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  const char *eu[] = {"DE", "FR", "IT", "ES", "NL", "PL"};
  bool seen[3] = {false};
  for (size_t i = 0; i < PGS_ARRAY_LEN(eu); i++) {
    pgs_key_t k;
    pgs_key_error_t err;
    assert_int_equal(pgs_key_from_text(PGS_TYPE_TEXT, eu[i], strlen(eu[i]), &k, &err), PGS_OK);
    int s = pgs_shardmap_route(db, pgs_shardmap_find_table(db, "p"), &k, NULL);
    assert_int_equal(s, pgs_shardmap_slot_shard(pgs_shardmap_slot(&k), 2) == 0 ? 0 : 2);
    seen[s] = true;
    assert_int_equal(pgs_shardmap_route(db, pgs_shardmap_find_table(db, "h"), &k, NULL), 1);
  }
  assert_true(seen[0] && seen[2]);
  pgs_config_unref(c);
}

static void test_hand_built_database_uses_the_default_layout(void **state) {
  hand_db_t h;
  hand_db(&h, S, 3, NULL);
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++)
    assert_int_equal(pgs_shardmap_slot_owner(&h.db, slot), pgs_shardmap_slot_shard(slot, 3));
}

static void test_config_errors(void **state) {
  config_errors(BASE2 "[slots.app]\ns0 = 0-2047\n", 1, 18, "slots 2048-4095 are on no shard");
  config_errors(BASE2 "[slots.app]\ns0 = 0-2047\ns1 = 2048-4095\ns1 = 17\n", 1, 20,
                "slot 17 is given twice: to s1 here and to s0 on line 18");
  config_errors(BASE2 "[slots.app]\ns0 = 0-2047\ns1 = 2047-4095\n", 1, 19,
                "slot 2047 is given twice");
  config_errors(BASE2 "[slots.app]\ns0 = 0-2047\ns1 = 2048-4095\ns9 = 5\n", 1, 20,
                "[slots.app]: unknown shard s9 (no [shard.app.s9])");
  config_errors(BASE2 "[slots.app]\ns0 = 0-2047\ns1 = 2048-4096\n", 2, 19,
                "s1: 2048-4096 is not a range of slots 0-4095");
  config_errors(BASE2 "[slots.app]\ns0 = 0-2047\ns1 = 2048-4095, 9999\n", 1, 19,
                "s1: slot 9999 is not one of 0-4095");
  config_errors(BASE2 "[slots.app]\ns0 = 2047-0\ns1 = 2048-4095\n", 2, 18, "2047-0 is not a range");
  const char *bad[] = {"0-2047,",  "0-2047 x", "0--2047", "-5",   "",
                       "0-2047,,", "a",        "0-20 47", "0x10", "99999999999"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    char text[512];
    snprintf(text, sizeof(text), BASE2 "[slots.app]\ns1 = 2048-4095\ns0 = %s\n", bad[i]);
    pgs_config_t *c = pgs_config_parse_string(text);
    bool found = false;
    for (int e = 0; e < c->nerrors; e++)
      found = found || (c->errors[e].line == 19 &&
                        strstr(c->errors[e].message, "expected slot ranges like 0-1364"));
    if (!found) {
      print_errors(c);
      fail_msg("\"%s\" not refused as a slot list", bad[i]);
    }
    pgs_config_unref(c);
  }
  config_errors(BASE2 "[database.app]\nhash = postgres\n[slots.app]\ns0 = 0-4095\n", 1, 20,
                "a slot table is for hash = xxh3, but database app has hash = postgres");
  config_errors(BASE2 "[slots.nope]\ns0 = 0-4095\ns1 = 1\n[slots.nope]\ns0 = 2\n", 1, 18,
                "[slots.nope]: unknown database nope (no [database.nope])");
  config_errors(BASE2 "[slots.app]\ns-0! = 0-4095\n", 1, 18, "[slots.app]: bad shard name");
}

static void test_gap_list_is_cut(void **state) {
  /* Every other slot missing: one error, its list cut short. */
  static char text[32768];
  size_t used = (size_t)snprintf(text, sizeof(text), BASE2 "[slots.app]\ns0 = 0");
  for (int slot = 2; slot < PGS_HASH_SLOTS; slot += 2)
    used += (size_t)snprintf(text + used, sizeof(text) - used, ", %d", slot);
  snprintf(text + used, sizeof(text) - used, "\n");
  config_errors(text, 1, 18, "slots 1, 3, 5, ");
  pgs_config_t *c = pgs_config_parse_string(text);
  assert_non_null(strstr(c->errors[0].message, ", ... are on no shard"));
  assert_true(strlen(c->errors[0].message) < 300);
  pgs_config_unref(c);
}

/* ---- rebalancing ---- */

static void test_grow_two_to_three(void **state) {
  hand_db_t h;
  hand_db(&h, S, 2, NULL);
  int16_t out[PGS_HASH_SLOTS];
  int moved = pgs_shardmap_rebalance_slots(&h.db, S, 3, out);
  assert_int_equal(moved, 1365); /* 4096 / 3: one third */
  assert_int_equal(count_moves(&h.db, S, out, 2), moved);
  assert_balanced(out, 3);
}

static void test_grow_three_to_four(void **state) {
  hand_db_t h;
  hand_db(&h, S, 3, NULL);
  int16_t out[PGS_HASH_SLOTS];
  int moved = pgs_shardmap_rebalance_slots(&h.db, S, 4, out);
  assert_int_equal(moved, 1024);
  assert_int_equal(count_moves(&h.db, S, out, 3), moved);
  assert_balanced(out, 4);
}

static void test_grow_one_at_a_time(void **state) {
  /* 1 -> 2 -> ... -> 10, each step from the table the last one made: every
   * step moves the new shard's share and nothing else. */
  int16_t table[PGS_HASH_SLOTS], out[PGS_HASH_SLOTS];
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) table[slot] = 0;
  for (int n = 1; n < 10; n++) {
    hand_db_t h;
    hand_db(&h, S, n, table);
    int moved = pgs_shardmap_rebalance_slots(&h.db, S, n + 1, out);
    assert_in_range(moved, PGS_HASH_SLOTS / (n + 1), PGS_HASH_SLOTS / (n + 1) + 1);
    assert_int_equal(count_moves(&h.db, S, out, n), moved);
    assert_balanced(out, n + 1);
    memcpy(table, out, sizeof(table));
  }
}

static void test_remove_a_shard(void **state) {
  hand_db_t h;
  hand_db(&h, S, 3, NULL);
  const char *const left[] = {"s0", "s2"};
  int16_t out[PGS_HASH_SLOTS];
  int moved = pgs_shardmap_rebalance_slots(&h.db, left, 2, out);
  int s1_slots = 0;
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    int was = pgs_shardmap_slot_shard(slot, 3);
    s1_slots += was == 1;
    if (was != 1) assert_string_equal(left[out[slot]], S[was]); /* the others stay */
  }
  assert_int_equal(moved, s1_slots);
  assert_int_equal(count_moves(&h.db, left, out, -1), moved);
  assert_balanced(out, 2);
}

static void test_replace_a_shard(void **state) {
  /* s1 out, s3 in: s1's slots go to s3, which is emptiest. */
  hand_db_t h;
  hand_db(&h, S, 3, NULL);
  const char *const names[] = {"s0", "s2", "s3"};
  int16_t out[PGS_HASH_SLOTS];
  int moved = pgs_shardmap_rebalance_slots(&h.db, names, 3, out);
  assert_int_equal(moved, 1365);
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++)
    if (pgs_shardmap_slot_shard(slot, 3) == 1) assert_int_equal(out[slot], 2);
  assert_int_equal(count_moves(&h.db, names, out, 2), moved);
  assert_balanced(out, 3);
}

static void test_same_shards_move_nothing(void **state) {
  /* Same names in another order: the table follows the names. */
  hand_db_t h;
  hand_db(&h, S, 3, NULL);
  const char *const names[] = {"s2", "s0", "s1"};
  int16_t out[PGS_HASH_SLOTS];
  assert_int_equal(pgs_shardmap_rebalance_slots(&h.db, names, 3, out), 0);
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++)
    assert_string_equal(names[out[slot]], S[pgs_shardmap_slot_shard(slot, 3)]);
}

static void test_unbalanced_table_is_evened_out(void **state) {
  /* s0 holds 3000 slots, s1 1096: going to three shards, s0 gives up what
   * it holds above its share and s1 keeps all of its own. */
  int16_t table[PGS_HASH_SLOTS], out[PGS_HASH_SLOTS];
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) table[slot] = slot < 3000 ? 0 : 1;
  hand_db_t h;
  hand_db(&h, S, 2, table);
  int moved = pgs_shardmap_rebalance_slots(&h.db, S, 3, out);
  assert_int_equal(moved, 3000 - 1366);
  for (int slot = 3000; slot < PGS_HASH_SLOTS; slot++) assert_int_equal(out[slot], 1);
  for (int slot = 0; slot < 1366; slot++) assert_int_equal(out[slot], 0);
  assert_balanced(out, 3);
  /* The slots s0 gives up go to the shards lacking most, in runs. */
  int runs = 0;
  for (int slot = 1; slot < PGS_HASH_SLOTS; slot++) runs += out[slot] != out[slot - 1];
  assert_true(runs <= 3);
}

static void test_fragmented_table(void **state) {
  int16_t table[PGS_HASH_SLOTS], out[PGS_HASH_SLOTS];
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) table[slot] = (int16_t)(slot % 3);
  hand_db_t h;
  hand_db(&h, S, 3, table);
  int moved = pgs_shardmap_rebalance_slots(&h.db, S, 4, out);
  assert_int_equal(moved, 1024);
  assert_int_equal(count_moves(&h.db, S, out, 3), moved);
  assert_balanced(out, 4);
}

static void test_from_a_config(void **state) {
  pgs_config_t *c = load_ok(BASE2 "[slots.app]\ns0 = 0-999, 3000-4095\ns1 = 1000-2999\n");
  const pgs_database_t *db = pgs_config_find_database(c, "app");
  int16_t out[PGS_HASH_SLOTS];
  int moved = pgs_shardmap_rebalance_slots(db, S, 3, out);
  assert_int_equal(moved, 1365);
  assert_int_equal(count_moves(db, S, out, 2), moved);
  assert_balanced(out, 3);
  assert_int_equal(pgs_shardmap_rebalance_slots(db, S, 0, out), -1);
  pgs_config_unref(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_table_is_the_old_layout),
      cmocka_unit_test(test_section_is_read),
      cmocka_unit_test(test_hash_and_tenants_route_by_the_table),
      cmocka_unit_test(test_geo_keeps_its_spread),
      cmocka_unit_test(test_hand_built_database_uses_the_default_layout),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_gap_list_is_cut),
      cmocka_unit_test(test_grow_two_to_three),
      cmocka_unit_test(test_grow_three_to_four),
      cmocka_unit_test(test_grow_one_at_a_time),
      cmocka_unit_test(test_remove_a_shard),
      cmocka_unit_test(test_replace_a_shard),
      cmocka_unit_test(test_same_shards_move_nothing),
      cmocka_unit_test(test_unbalanced_table_is_evened_out),
      cmocka_unit_test(test_fragmented_table),
      cmocka_unit_test(test_from_a_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
