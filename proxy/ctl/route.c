/*
 * route.c — `pgshardctl route FILE DB TABLE KEY`: the shard a key maps to,
 * computed by the same router code the proxy runs. KEY is read as the text
 * form of the table's column type (as a literal or text-format parameter
 * would be); --stdin reads one key a line from standard input and prints
 * "KEY<TAB>SHARD" for each, so scripts can route many keys in one run.
 * -v also prints how: the canonical encoding, the hash, the slot or range or
 * region, the tenant pin.
 */
#include <string.h>

#include "ctl.h"
#include "pgshard/config.h"

static void route_usage(FILE *out) {
  fprintf(out,
          "usage: pgshardctl route [-v] FILE DATABASE TABLE KEY\n"
          "       pgshardctl route [-v] --stdin FILE DATABASE TABLE   (keys one a line)\n"
          "KEY is read as the column type reads text (a key starting with - after --).\n"
          "Prints the shard KEY maps to. Exit 0 when routed, 1 for a bad config, an unknown\n"
          "database or table, or a key that does not parse as the column type, 2 for usage.\n");
}

/* Loads FILE; prints its errors and returns NULL when it has any. */
pgs_config_t *pgs_ctl_load_config(const char *path) {
  pgs_config_t *config = pgs_config_load(path);
  if (config->nerrors == 0) return config;
  for (int i = 0; i < config->nerrors; i++) {
    if (config->errors[i].line > 0)
      fprintf(stderr, "%s:%d: %s\n", path, config->errors[i].line, config->errors[i].message);
    else
      fprintf(stderr, "%s: %s\n", path, config->errors[i].message);
  }
  pgs_config_unref(config);
  return NULL;
}

static void print_hex(const uint8_t *buf, size_t len) {
  for (size_t i = 0; i < len; i++) printf("%02x", buf[i]);
}

static void print_detail(const pgs_database_t *db, const pgs_table_t *table, const pgs_key_t *key,
                         const pgs_route_detail_t *d) {
  char text[PGS_KEY_MAX_TEXT + 64];
  uint8_t enc[PGS_KEY_MAX_TEXT + 16];
  pgs_key_format(key, text, sizeof(text));
  size_t n = pgs_key_encode(key, enc, sizeof(enc));
  printf("shard:    %s (index %d of %d)\n", db->shards[d->shard].name, d->shard, db->nshards);
  printf("table:    %s.%s column %s %s, strategy %s\n", db->name, table->name, table->column,
         pgs_key_type_name(table->type), pgs_strategy_name(table->strategy));
  printf("key:      %s\n", text);
  printf("encoded:  ");
  print_hex(enc, n);
  printf(" (%zu bytes)\n", n);
  if (key->zone_assumed) printf("note:     no time zone given: read as UTC\n");
  switch (table->strategy) {
  case PGS_STRATEGY_RANGE: {
    const pgs_range_t *r = &table->ranges[d->range];
    char low[160] = "-infinity", high[160] = "+infinity";
    if (r->has_low) pgs_key_format(r->low, low, sizeof(low));
    if (r->has_high) pgs_key_format(r->high, high, sizeof(high));
    printf("range:    [%s, %s) (line %d)\n", low, high, r->line);
    break;
  }
  case PGS_STRATEGY_GEO: {
    int nregion = pgs_shardmap_region_shards(db, d->region, NULL, 0);
    printf("region:   %s (%s; %d shard%s)\n", d->region,
           d->geo_default ? "in no list: the default region" : "listed in [geo]", nregion,
           nregion == 1 ? "" : "s");
    break;
  }
  case PGS_STRATEGY_TENANT:
    if (d->pinned) {
      const pgs_tenant_pin_t *pin = pgs_shardmap_find_tenant(&db->shardmap, key);
      printf("tenant:   pinned in [tenants.%s] (line %d)\n", db->name, pin ? pin->line : 0);
    } else {
      printf("tenant:   not pinned: hashed\n");
    }
    break;
  case PGS_STRATEGY_HASH:
    break;
  }
  if (d->hashed && d->postgres_hash) {
    printf("hash:     postgres partition hash %llu (0x%016llx); %llu %% %d = %d\n",
           (unsigned long long)d->hash, (unsigned long long)d->hash, (unsigned long long)d->hash,
           db->nshards, d->shard);
  } else if (d->hashed) {
    int nspread = table->strategy == PGS_STRATEGY_GEO
                      ? pgs_shardmap_region_shards(db, d->region, NULL, 0)
                      : db->nshards;
    printf("hash:     xxh3 0x%016llx\n", (unsigned long long)d->hash);
    if (table->strategy != PGS_STRATEGY_GEO && db->slots_line)
      printf("slot:     %d of %d (owned by %s in [slots.%s], line %d)\n", d->slot, PGS_HASH_SLOTS,
             db->shards[d->shard].name, db->name, db->slots_line);
    else
      printf("slot:     %d of %d (spread over %d shard%s)\n", d->slot, PGS_HASH_SLOTS, nspread,
             nspread == 1 ? "" : "s");
  }
}

/* Routes one key; prints the shard (or the error) and returns 0 or 1. */
static int route_one(const pgs_database_t *db, const pgs_table_t *table, const char *text,
                     size_t len, bool verbose, bool batch) {
  pgs_key_t key;
  pgs_key_error_t err;
  pgs_route_detail_t detail;
  int shard = -1;
  if (pgs_key_from_text(table->type, text, len, &key, &err) == PGS_OK)
    shard = pgs_shardmap_route_detail(db, table, &key, &detail, &err);
  if (shard < 0) {
    if (batch)
      printf("%.*s\tERROR %s %s\n", (int)len, text, err.sqlstate, err.message);
    else
      fprintf(stderr, "pgshardctl: %s: %s\n", err.sqlstate, err.message);
    return 1;
  }
  if (verbose) {
    if (batch) printf("--- %.*s\n", (int)len, text);
    print_detail(db, table, &key, &detail);
  } else if (batch) {
    printf("%.*s\t%s\n", (int)len, text, db->shards[shard].name);
  } else {
    printf("%s\n", db->shards[shard].name);
  }
  return 0;
}

int pgs_ctl_route(int argc, char **argv) {
  bool verbose = false, from_stdin = false;
  char *args[4];
  int nargs = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) {
      verbose = true;
    } else if (!strcmp(argv[i], "--stdin")) {
      from_stdin = true;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      route_usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--")) {
      for (i++; i < argc && nargs < 4; i++) args[nargs++] = argv[i];
      if (i < argc) nargs = 5;
    } else if (nargs < 4) {
      args[nargs++] = argv[i];
    } else {
      nargs = 5;
    }
  }
  if (nargs != (from_stdin ? 3 : 4)) {
    route_usage(stderr);
    return 2;
  }
  pgs_config_t *config = pgs_ctl_load_config(args[0]);
  if (config == NULL) return 1;
  int rc = 1;
  const pgs_database_t *db = pgs_config_find_database(config, args[1]);
  const pgs_table_t *table = db ? pgs_shardmap_find_table(db, args[2]) : NULL;
  if (db == NULL) {
    fprintf(stderr, "pgshardctl: %s: no [database.%s]\n", args[0], args[1]);
  } else if (table == NULL) {
    fprintf(stderr, "pgshardctl: %s: no [table.%s.%s]: %s is not sharded\n", args[0], args[1],
            args[2], args[2]);
  } else if (!from_stdin) {
    rc = route_one(db, table, args[3], strlen(args[3]), verbose, false);
  } else {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    rc = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
      if (n > 0 && line[n - 1] == '\n') n--;
      if (n > 0 && line[n - 1] == '\r') n--;
      rc |= route_one(db, table, line, (size_t)n, verbose, true);
    }
    free(line);
  }
  pgs_config_unref(config);
  return rc;
}
