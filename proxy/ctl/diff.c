/*
 * diff.c — `pgshardctl diff OLD NEW`: which keys change shard between two
 * configs, so a DBA sees what a shard-map change will move before making it.
 *
 * Shards are matched by name (a shard is where its name says, whatever its
 * servers), tables by database and name. For every table in both configs:
 *   hash    xxh3: the slot ranges whose shard changes (from the two slot
 *           tables, [slots.DB] or the default layout), with slot counts;
 *           postgres: the partition-hash residues whose shard changes;
 *           a changed hash function: the share of keys expected to move
 *   range   the key intervals whose shard changes (from both bound sets)
 *   geo     every listed value whose shard changes, and the default region
 *   tenant  every pinned tenant whose shard changes, and the unpinned
 *           tenants' hash space as for hash tables
 * then tables added and removed, and a summary line. Everything is computed
 * with the router's own routing functions, so the report cannot disagree
 * with what the proxy will do.
 */
#include <string.h>

#include "ctl.h"
#include "pgshard/config.h"

typedef struct diff_totals {
  int tables_added, tables_removed, tables_rekeyed;
  int hash_tables_moving;
  long slots_moved;
  int ranges_moved;
  int geo_moved, geo_changed;
  int tenants_moved;
  bool whole_database; /* a database added or removed */
} diff_totals_t;

static void diff_usage(FILE *out) {
  fprintf(out,
          "usage: pgshardctl diff [--exit-code] OLD NEW\n"
          "Prints which hash slots, key ranges, geo values and tenants change shard from\n"
          "config OLD to config NEW. Exit 0 when the report was printed (with --exit-code:\n"
          "0 nothing moves, 1 something does), 2 when a config is invalid or for usage.\n");
}

static const char *shard_name(const pgs_database_t *db, int shard) {
  return shard >= 0 && shard < db->nshards ? db->shards[shard].name : "(refused)";
}

/* ---- hash spaces ---- */

static long gcd(long a, long b) {
  while (b) {
    long t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Share of each shard name in a hash space (xxh3: slots; postgres: 1/n). */
static double hash_share(const pgs_database_t *db, const char *name) {
  int n = 0;
  if (db->hash == PGS_HASH_POSTGRES) {
    for (int i = 0; i < db->nshards; i++) n += !strcmp(db->shards[i].name, name);
    return (double)n / db->nshards;
  }
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++)
    n += !strcmp(db->shards[pgs_shardmap_slot_owner(db, slot)].name, name);
  return (double)n / PGS_HASH_SLOTS;
}

/* The xxh3 slot tables of OLD and NEW: the runs of slots that change
 * shard, the total, and how many each shard receives. */
static bool diff_slot_tables(const char *label, const pgs_database_t *old,
                             const pgs_database_t *new, diff_totals_t *tot) {
  long moved = 0;
  int arriving[PGS_MAX_SHARDS] = {0}; /* a valid config has no more shards */
  for (int slot = 0; slot < PGS_HASH_SLOTS;) {
    const char *a = old->shards[pgs_shardmap_slot_owner(old, slot)].name;
    int to = pgs_shardmap_slot_owner(new, slot);
    const char *b = new->shards[to].name;
    int end = slot + 1;
    while (end < PGS_HASH_SLOTS &&
           !strcmp(a, old->shards[pgs_shardmap_slot_owner(old, end)].name) &&
           !strcmp(b, new->shards[pgs_shardmap_slot_owner(new, end)].name))
      end++;
    if (strcmp(a, b) != 0) {
      printf("  %s: slots %d-%d move %s -> %s (%d of %d slots)\n", label, slot, end - 1, a, b,
             end - slot, PGS_HASH_SLOTS);
      moved += end - slot;
      arriving[to] += end - slot;
    }
    slot = end;
  }
  if (moved) {
    printf("  %s: %ld of %d slots move (%.1f%% of keys)\n", label, moved, PGS_HASH_SLOTS,
           100.0 * (double)moved / PGS_HASH_SLOTS);
    printf("  %s: moving slots go to", label);
    for (int i = 0; i < new->nshards; i++)
      if (arriving[i]) printf(" %s (%d)", new->shards[i].name, arriving[i]);
    printf("\n");
    tot->hash_tables_moving++;
    tot->slots_moved += moved;
  }
  return moved > 0;
}

/* The hash space of LABEL (a hash table, or a database's unpinned tenants)
 * from OLD to NEW. Returns whether anything moves. */
static bool diff_hash_space(const char *label, const pgs_database_t *old, const pgs_database_t *new,
                            diff_totals_t *tot) {
  if (old->hash != new->hash) {
    /* Different functions: a key's two shards are independent draws. */
    double stay = 0;
    for (int i = 0; i < new->nshards; i++) {
      bool first = true;
      for (int j = 0; j < i; j++) first = first && strcmp(new->shards[j].name, new->shards[i].name);
      if (first)
        stay += hash_share(old, new->shards[i].name) * hash_share(new, new->shards[i].name);
    }
    printf("  %s: hash changes %s -> %s: every key is rehashed, about %.1f%% move\n", label,
           old->hash == PGS_HASH_XXH3 ? "xxh3" : "postgres",
           new->hash == PGS_HASH_XXH3 ? "xxh3" : "postgres", 100.0 * (1 - stay));
    tot->hash_tables_moving++;
    return true;
  }
  if (new->hash == PGS_HASH_XXH3) return diff_slot_tables(label, old, new, tot);
  /* postgres: shard = hash % n, so residues modulo lcm(n_old, n_new) tell. */
  long l = (long)old->nshards / gcd(old->nshards, new->nshards) * new->nshards;
  long moved = 0;
  for (int a = 0; a < old->nshards; a++) {
    for (int b = 0; b < new->nshards; b++) {
      if (!strcmp(old->shards[a].name, new->shards[b].name)) continue;
      long count = 0;
      char residues[256] = "";
      for (long r = 0; r < l; r++) {
        if (r % old->nshards != a || r % new->nshards != b) continue;
        if (count++ < 8) {
          size_t used = strlen(residues);
          snprintf(residues + used, sizeof(residues) - used, "%s%ld", used ? ", " : "", r);
        }
      }
      if (count == 0) continue;
      printf("  %s: keys whose partition hash mod %ld is %s%s move %s -> %s\n", label, l, residues,
             count > 8 ? ", ..." : "", old->shards[a].name, new->shards[b].name);
      moved += count;
    }
  }
  if (moved) {
    printf("  %s: %ld of %ld partition-hash residues move (%.1f%% of keys)\n", label, moved, l,
           100.0 * (double)moved / (double)l);
    tot->hash_tables_moving++;
  }
  return moved > 0;
}

/* ---- ranges ---- */

int pgs_ctl_range_owner(const pgs_database_t *db, const pgs_table_t *t, const pgs_key_t *low) {
  if (low == NULL) return t->nranges > 0 && !t->ranges[0].has_low ? t->ranges[0].shard : -1;
  pgs_key_error_t err;
  return pgs_shardmap_route(db, t, low, &err);
}

static int key_order(const void *pa, const void *pb) {
  return pgs_key_compare(*(const pgs_key_t *const *)pa, *(const pgs_key_t *const *)pb);
}

const pgs_key_t **pgs_ctl_range_bounds(const pgs_table_t *a, const pgs_table_t *b, int *n) {
  int count = 0;
  const pgs_key_t **bounds =
      pgs_xcalloc((size_t)(2 * (a->nranges + b->nranges)) + 1, sizeof(*bounds));
  const pgs_table_t *tables[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    for (int i = 0; i < tables[k]->nranges; i++) {
      if (tables[k]->ranges[i].has_low) bounds[count++] = tables[k]->ranges[i].low;
      if (tables[k]->ranges[i].has_high) bounds[count++] = tables[k]->ranges[i].high;
    }
  }
  qsort(bounds, (size_t)count, sizeof(*bounds), key_order);
  int unique = 0;
  for (int i = 0; i < count; i++)
    if (unique == 0 || pgs_key_compare(bounds[unique - 1], bounds[i]) != 0)
      bounds[unique++] = bounds[i];
  *n = unique;
  return bounds;
}

static void diff_ranges(const pgs_database_t *old, const pgs_table_t *ot, const pgs_database_t *new,
                        const pgs_table_t *nt, diff_totals_t *tot) {
  /* Adjacent segments moving alike are merged. */
  int unique;
  const pgs_key_t **bounds = pgs_ctl_range_bounds(ot, nt, &unique);
  for (int seg = 0; seg <= unique;) {
    const pgs_key_t *low = seg == 0 ? NULL : bounds[seg - 1];
    const char *a = shard_name(old, pgs_ctl_range_owner(old, ot, low));
    const char *b = shard_name(new, pgs_ctl_range_owner(new, nt, low));
    int end = seg + 1;
    while (end <= unique &&
           !strcmp(a, shard_name(old, pgs_ctl_range_owner(old, ot, bounds[end - 1]))) &&
           !strcmp(b, shard_name(new, pgs_ctl_range_owner(new, nt, bounds[end - 1]))))
      end++;
    if (strcmp(a, b) != 0) {
      char lo[160] = "-infinity", hi[160] = "+infinity";
      if (low) pgs_key_format(low, lo, sizeof(lo));
      if (end <= unique) pgs_key_format(bounds[end - 1], hi, sizeof(hi));
      printf("  %s: keys [%s, %s) move %s -> %s\n", nt->name, lo, hi, a, b);
      tot->ranges_moved++;
    }
    seg = end;
  }
  free(bounds);
}

/* ---- geo and tenants ---- */

static pgs_table_t probe_table(const pgs_database_t *db, pgs_strategy_t strategy) {
  pgs_table_t t;
  memset(&t, 0, sizeof(t));
  t.name = (char *)(strategy == PGS_STRATEGY_GEO ? "geo" : "tenants");
  t.column = (char *)"value";
  t.strategy = strategy;
  t.type = strategy == PGS_STRATEGY_GEO ? db->shardmap.geo_type : db->shardmap.tenant_type;
  return t;
}

int pgs_ctl_probe_route(const pgs_database_t *db, pgs_strategy_t strategy, const char *value,
                        pgs_route_detail_t *d) {
  pgs_table_t t = probe_table(db, strategy);
  pgs_key_t key;
  pgs_key_error_t err;
  memset(d, 0, sizeof(*d));
  if (pgs_key_from_text(t.type, value, strlen(value), &key, &err) != PGS_OK) return -1;
  return pgs_shardmap_route_detail(db, &t, &key, d, &err);
}

static bool has_strategy(const pgs_database_t *db, pgs_strategy_t strategy) {
  for (int i = 0; i < db->shardmap.ntables; i++)
    if (db->shardmap.tables[i].strategy == strategy) return true;
  return false;
}

static void diff_geo_value(const pgs_database_t *old, const pgs_database_t *new, const char *value,
                           diff_totals_t *tot) {
  pgs_route_detail_t da, db_;
  int a = pgs_ctl_probe_route(old, PGS_STRATEGY_GEO, value, &da);
  int b = pgs_ctl_probe_route(new, PGS_STRATEGY_GEO, value, &db_);
  const char *ra = a >= 0 ? da.region : "none", *rb = b >= 0 ? db_.region : "none";
  if (a >= 0 && b >= 0 && !strcmp(shard_name(old, a), shard_name(new, b))) {
    if (strcmp(ra, rb) != 0) {
      printf("  geo.%s: %s changes region %s -> %s (stays on %s)\n", new->name, value, ra, rb,
             shard_name(new, b));
      tot->geo_changed++;
    }
    return;
  }
  if (a >= 0 && b >= 0) {
    printf("  geo.%s: %s moves %s -> %s (region %s -> %s)\n", new->name, value, shard_name(old, a),
           shard_name(new, b), ra, rb);
    tot->geo_moved++;
  } else if (a != b) {
    printf("  geo.%s: %s %s -> %s (region %s -> %s)\n", new->name, value,
           a >= 0 ? shard_name(old, a) : "refused", b >= 0 ? shard_name(new, b) : "refused", ra,
           rb);
    tot->geo_changed++;
  }
}

static void region_shard_list(const pgs_database_t *db, const char *region, char *buf, size_t cap) {
  buf[0] = '\0';
  if (region == NULL) {
    snprintf(buf, cap, "refused");
    return;
  }
  for (int i = 0; i < db->nshards; i++) {
    if (db->shards[i].region == NULL || strcmp(db->shards[i].region, region) != 0) continue;
    size_t used = strlen(buf);
    snprintf(buf + used, cap - used, "%s%s", used ? " " : "", db->shards[i].name);
  }
}

static void diff_geo(const pgs_database_t *old, const pgs_database_t *new, diff_totals_t *tot) {
  /* Every value listed in either config, each once. */
  const pgs_shardmap_t *maps[2] = {&old->shardmap, &new->shardmap};
  for (int m = 0; m < 2; m++) {
    for (int i = 0; i < maps[m]->ngeo; i++) {
      const char *value = maps[m]->geo[i].value;
      bool seen = false;
      for (int j = 0; m == 1 && j < maps[0]->ngeo && !seen; j++)
        seen = !strcmp(maps[0]->geo[j].value, value);
      if (!seen) diff_geo_value(old, new, value, tot);
    }
  }
  char a[256], b[256];
  region_shard_list(old, old->shardmap.geo_default, a, sizeof(a));
  region_shard_list(new, new->shardmap.geo_default, b, sizeof(b));
  if (strcmp(a, b) != 0) {
    printf("  geo.%s: values in no region: default %s -> %s (shards %s -> %s)\n", new->name,
           old->shardmap.geo_default ? old->shardmap.geo_default : "none",
           new->shardmap.geo_default ? new->shardmap.geo_default : "none", a, b);
    tot->geo_changed++;
  }
}

static void diff_tenants(const pgs_database_t *old, const pgs_database_t *new, diff_totals_t *tot) {
  const pgs_shardmap_t *maps[2] = {&old->shardmap, &new->shardmap};
  for (int m = 0; m < 2; m++) {
    for (int i = 0; i < maps[m]->ntenants; i++) {
      const char *raw = maps[m]->tenants[i].raw;
      bool seen = false;
      for (int j = 0; m == 1 && j < maps[0]->ntenants && !seen; j++)
        seen = !pgs_key_compare(maps[0]->tenants[j].key, maps[1]->tenants[i].key);
      if (seen) continue;
      pgs_route_detail_t da, db_;
      int a = pgs_ctl_probe_route(old, PGS_STRATEGY_TENANT, raw, &da);
      int b = pgs_ctl_probe_route(new, PGS_STRATEGY_TENANT, raw, &db_);
      if (!strcmp(shard_name(old, a), shard_name(new, b))) continue;
      printf("  tenants.%s: tenant %s moves %s -> %s (%s -> %s)\n", new->name, raw,
             shard_name(old, a), shard_name(new, b), da.pinned ? "pinned" : "hashed",
             db_.pinned ? "pinned" : "hashed");
      tot->tenants_moved++;
    }
  }
  char label[128];
  snprintf(label, sizeof(label), "tenants.%s (unpinned)", new->name);
  diff_hash_space(label, old, new, tot);
}

/* ---- databases ---- */

static void diff_database(const pgs_database_t *old, const pgs_database_t *new,
                          diff_totals_t *tot) {
  printf("database %s:\n", new->name);
  for (int i = 0; i < old->nshards; i++)
    if (pgs_shardmap_find_shard(new, old->shards[i].name) < 0)
      printf("  shard %s removed\n", old->shards[i].name);
  for (int i = 0; i < new->nshards; i++)
    if (pgs_shardmap_find_shard(old, new->shards[i].name) < 0)
      printf("  shard %s added\n", new->shards[i].name);

  for (int i = 0; i < old->shardmap.ntables; i++) {
    const pgs_table_t *ot = &old->shardmap.tables[i];
    if (pgs_shardmap_find_table(new, ot->name) == NULL) {
      printf("  table %s removed\n", ot->name);
      tot->tables_removed++;
    }
  }
  for (int i = 0; i < new->shardmap.ntables; i++) {
    const pgs_table_t *nt = &new->shardmap.tables[i];
    const pgs_table_t *ot = pgs_shardmap_find_table(old, nt->name);
    if (ot == NULL) {
      printf("  table %s added (%s on %s %s)\n", nt->name, pgs_strategy_name(nt->strategy),
             nt->column, pgs_key_type_name(nt->type));
      tot->tables_added++;
      continue;
    }
    if (ot->strategy != nt->strategy || ot->type != nt->type || strcmp(ot->column, nt->column)) {
      printf("  %s: sharding changes from %s on %s %s to %s on %s %s: every key may move\n",
             nt->name, pgs_strategy_name(ot->strategy), ot->column, pgs_key_type_name(ot->type),
             pgs_strategy_name(nt->strategy), nt->column, pgs_key_type_name(nt->type));
      tot->tables_rekeyed++;
      continue;
    }
    if (nt->strategy == PGS_STRATEGY_HASH) diff_hash_space(nt->name, old, new, tot);
    if (nt->strategy == PGS_STRATEGY_RANGE) diff_ranges(old, ot, new, nt, tot);
  }
  if (has_strategy(old, PGS_STRATEGY_GEO) && has_strategy(new, PGS_STRATEGY_GEO) &&
      old->shardmap.geo_type == new->shardmap.geo_type)
    diff_geo(old, new, tot);
  if (has_strategy(old, PGS_STRATEGY_TENANT) && has_strategy(new, PGS_STRATEGY_TENANT) &&
      old->shardmap.tenant_type == new->shardmap.tenant_type)
    diff_tenants(old, new, tot);
}

int pgs_ctl_diff(int argc, char **argv) {
  bool exit_code = false;
  const char *paths[2];
  int npaths = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--exit-code")) {
      exit_code = true;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      diff_usage(stdout);
      return 0;
    } else if (npaths < 2) {
      paths[npaths++] = argv[i];
    } else {
      npaths = 3;
    }
  }
  if (npaths != 2) {
    diff_usage(stderr);
    return 2;
  }
  pgs_config_t *old = pgs_ctl_load_config(paths[0]);
  pgs_config_t *new = old ? pgs_ctl_load_config(paths[1]) : NULL;
  if (new == NULL) {
    pgs_config_unref(old);
    return 2;
  }
  diff_totals_t tot;
  memset(&tot, 0, sizeof(tot));
  for (int i = 0; i < old->ndatabases; i++) {
    const pgs_database_t *o = &old->databases[i];
    if (pgs_config_find_database(new, o->name) == NULL) {
      printf("database %s removed (%d sharded table%s)\n", o->name, o->shardmap.ntables,
             o->shardmap.ntables == 1 ? "" : "s");
      tot.tables_removed += o->shardmap.ntables;
      tot.whole_database = true;
    }
  }
  for (int i = 0; i < new->ndatabases; i++) {
    const pgs_database_t *n = &new->databases[i];
    const pgs_database_t *o = pgs_config_find_database(old, n->name);
    if (o == NULL) {
      printf("database %s added (%d sharded table%s)\n", n->name, n->shardmap.ntables,
             n->shardmap.ntables == 1 ? "" : "s");
      tot.tables_added += n->shardmap.ntables;
      tot.whole_database = true;
    } else {
      diff_database(o, n, &tot);
    }
  }
  bool moves = tot.hash_tables_moving || tot.ranges_moved || tot.geo_moved || tot.geo_changed ||
               tot.tenants_moved || tot.tables_rekeyed || tot.tables_added || tot.tables_removed ||
               tot.whole_database;
  if (!moves) {
    printf("summary: nothing moves\n");
  } else {
    printf(
        "summary: %d hash space%s with moving keys (%ld xxh3 slot%s), %d key range%s, %d geo "
        "value%s move (%d other geo change%s), %d tenant%s move; %d table%s re-keyed, %d "
        "added, %d removed\n",
        tot.hash_tables_moving, tot.hash_tables_moving == 1 ? "" : "s", tot.slots_moved,
        tot.slots_moved == 1 ? "" : "s", tot.ranges_moved, tot.ranges_moved == 1 ? "" : "s",
        tot.geo_moved, tot.geo_moved == 1 ? "" : "s", tot.geo_changed,
        tot.geo_changed == 1 ? "" : "s", tot.tenants_moved, tot.tenants_moved == 1 ? "" : "s",
        tot.tables_rekeyed, tot.tables_rekeyed == 1 ? "" : "s", tot.tables_added,
        tot.tables_removed);
  }
  pgs_config_unref(old);
  pgs_config_unref(new);
  return exit_code && moves ? 1 : 0;
}
