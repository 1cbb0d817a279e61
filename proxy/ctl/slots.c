/*
 * slots.c — `pgshardctl reshard slots OLD NEW [DB]`: the [slots.DB] section
 * config NEW needs so that going from OLD's shards to NEW's moves as few
 * keys as an even spread allows. OLD's slot table ([slots.DB], else the
 * default layout) is rebalanced over NEW's shard list by
 * pgs_shardmap_rebalance_slots and printed, as compact slot ranges, on
 * stdout for the DBA to append to NEW. Nothing is written; no server is
 * asked. Without DB, every database of NEW that uses hash = xxh3 in both
 * configs gets a section.
 */
#include <string.h>

#include "ctl.h"
#include "pgshard/config.h"

/* A long slot list goes on several `SHARD = ...` lines (the key repeats),
 * each well within the line length the config reader takes. */
#define SLOTS_LINE_MAX 1000

static void slots_usage(FILE *out) {
  fprintf(out,
          "usage: pgshardctl reshard slots OLD NEW [DATABASE]\n"
          "Prints the [slots.DATABASE] section for config NEW, computed from OLD's slot table\n"
          "so that only the slots needed to spread keys evenly over NEW's shards move. Append\n"
          "it to NEW (`>> NEW`). Without DATABASE: every database that uses hash = xxh3 in\n"
          "both configs. Exit 0 when printed, 2 for usage or an invalid config.\n");
}

/* Prints SHARD's slots in TABLE as `NAME = a-b, c, ...` lines. */
static void print_shard_slots(const char *name, const int16_t *table, int shard) {
  char line[SLOTS_LINE_MAX + 32];
  size_t used = 0;
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    if (table[slot] != shard) continue;
    int end = slot;
    while (end + 1 < PGS_HASH_SLOTS && table[end + 1] == shard) end++;
    char range[24];
    if (end > slot)
      snprintf(range, sizeof(range), "%d-%d", slot, end);
    else
      snprintf(range, sizeof(range), "%d", slot);
    if (used > 0 && used + strlen(range) + 2 > SLOTS_LINE_MAX) {
      printf("%s = %s\n", name, line);
      used = 0;
    }
    used += (size_t)snprintf(line + used, sizeof(line) - used, "%s%s", used ? ", " : "", range);
    slot = end;
  }
  if (used) printf("%s = %s\n", name, line);
}

/* Why NEW's database cannot take a slot table made from OLD's, or NULL. */
static const char *unfit(const pgs_database_t *old, const pgs_database_t *new) {
  if (old == NULL) return "is not in the old config";
  if (old->hash != PGS_HASH_XXH3 || new->hash != PGS_HASH_XXH3)
    return "does not use hash = xxh3 in both configs";
  return NULL;
}

/* Prints [slots.DB] for NEW's database DB, rebalanced from OLD's. */
static void print_section(const pgs_database_t *old, const pgs_database_t *new,
                          const char *old_path) {
  const char **names = pgs_xcalloc((size_t) new->nshards, sizeof(*names));
  for (int i = 0; i < new->nshards; i++) names[i] = new->shards[i].name;
  int16_t table[PGS_HASH_SLOTS];
  int moved = pgs_shardmap_rebalance_slots(old, names, new->nshards, table);
  printf("\n; pgshardctl reshard slots from %s: %d of %d slots change shard (%.1f%% of keys)\n",
         old_path, moved, PGS_HASH_SLOTS, 100.0 * moved / PGS_HASH_SLOTS);
  printf("[slots.%s]\n", new->name);
  for (int i = 0; i < new->nshards; i++) print_shard_slots(names[i], table, i);
  if (new->slots_line)
    fprintf(stderr, "pgshardctl: the new config already has [slots.%s] (line %d): replace it\n",
            new->name, new->slots_line);
  free(names);
}

/* The sections for NEW's database DBNAME, or for every one that fits.
 * Returns the exit status. */
static int print_sections(const pgs_config_t *old, const pgs_config_t *new, const char *dbname,
                          const char *old_path) {
  int printed = 0;
  for (int i = 0; i < new->ndatabases; i++) {
    const pgs_database_t *db = &new->databases[i];
    if (dbname && strcmp(db->name, dbname) != 0) continue;
    const char *why = unfit(pgs_config_find_database(old, db->name), db);
    if (why) {
      fprintf(stderr, "pgshardctl: database %s %s: no slot table for it\n", db->name, why);
      if (dbname) return 2;
      continue;
    }
    print_section(pgs_config_find_database(old, db->name), db, old_path);
    printed++;
  }
  if (dbname && printed == 0)
    fprintf(stderr, "pgshardctl: no database %s in the new config\n", dbname);
  return printed ? 0 : 2;
}

int pgs_ctl_reshard_slots(int argc, char **argv) {
  if (argc >= 1 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help"))) {
    slots_usage(stdout);
    return 0;
  }
  if (argc < 2 || argc > 3) {
    slots_usage(stderr);
    return 2;
  }
  pgs_config_t *old = pgs_ctl_load_config(argv[0]);
  pgs_config_t *new = old ? pgs_ctl_load_config(argv[1]) : NULL;
  int rc = new ? print_sections(old, new, argc == 3 ? argv[2] : NULL, argv[0]) : 2;
  pgs_config_unref(old);
  pgs_config_unref(new);
  return rc;
}
