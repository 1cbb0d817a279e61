/*
 * fuzz_key.c — libFuzzer harness for shard-key typing (router/shardmap.c):
 * arbitrary bytes in as the text or binary form of every key type, then
 * routed through every strategy.
 *
 * Input: byte 0 picks the key type, byte 1 text or binary and the binary
 * parameter's type OID; the rest is the value. Besides memory errors, a
 * finding is any broken invariant: a refusal without a five-character
 * SQLSTATE and a message; an accepted key whose printed form does not read
 * back to the same key; an encoding longer than documented; a route outside
 * the shards, or a refusal without a SQLSTATE.
 *
 * Run as the other harnesses (tests/fuzz/README.md), e.g.
 *   CC=clang cmake -S . -B build-fuzz -DPGS_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_key
 *   cp -r tests/fuzz/corpus/key /tmp/corpus-key
 *   build-fuzz/fuzz_key -max_total_time=60 -max_len=2048 /tmp/corpus-key
 */
#include <stdint.h>
#include <string.h>

#include "pgshard/config.h"
#include "pgshard/shardmap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint32_t oids[] = {0,  20,  21,   23,   25,   1043, 1042,
                                19, 705, 2950, 1082, 1114, 1184, 700};

/* Every type under every strategy, 3 shards in two regions. */
static const char config_text[] =
    "[user.app]\npassword = x\n[database.app]\n"
    "[shard.app.s0]\nprimary = port=1\nregion = eu\n"
    "[shard.app.s1]\nprimary = port=2\nregion = us\n"
    "[shard.app.s2]\nprimary = port=3\nregion = eu\n"
    "[database.pg]\nhash = postgres\n"
    "[shard.pg.s0]\nprimary = port=1\n[shard.pg.s1]\nprimary = port=2\n"
    "[table.app.h0]\ncolumn = k\ntype = smallint\nstrategy = hash\n"
    "[table.app.h1]\ncolumn = k\ntype = int\nstrategy = hash\n"
    "[table.app.h2]\ncolumn = k\ntype = bigint\nstrategy = hash\n"
    "[table.app.h3]\ncolumn = k\ntype = text\nstrategy = hash\n"
    "[table.app.h4]\ncolumn = k\ntype = uuid\nstrategy = hash\n"
    "[table.app.h5]\ncolumn = k\ntype = date\nstrategy = hash\n"
    "[table.app.h6]\ncolumn = k\ntype = timestamptz\nstrategy = hash\n"
    "[table.app.r0]\ncolumn = k\ntype = smallint\nstrategy = range\n"
    "range = s0: - 0\nrange = s1: 0 - 100\nrange = s2: 100 -\n"
    "[table.app.r1]\ncolumn = k\ntype = int\nstrategy = range\nrange = s0: - 0\nrange = s1: 0 -\n"
    "[table.app.r2]\ncolumn = k\ntype = bigint\nstrategy = range\nrange = s2: - 5\n"
    "range = s1: 5 -\n"
    "[table.app.r3]\ncolumn = k\ntype = text\nstrategy = range\nrange = s0: - m\nrange = s1: m -\n"
    "[table.app.r4]\ncolumn = k\ntype = uuid\nstrategy = range\n"
    "range = s0: - 80000000-0000-0000-0000-000000000000\n"
    "range = s1: 80000000-0000-0000-0000-000000000000 -\n"
    "[table.app.r5]\ncolumn = k\ntype = date\nstrategy = range\n"
    "range = s0: - 2000-01-01\nrange = s1: 2000-01-01 -\n"
    "[table.app.r6]\ncolumn = k\ntype = timestamptz\nstrategy = range\n"
    "range = s0: - 2000-01-01 00:00:00+00\nrange = s1: 2000-01-01 00:00:00+00 -\n"
    "[table.app.geo]\ncolumn = k\ntype = text\nstrategy = geo\n"
    "[geo.app]\neu = DE FR\nus = US\n"
    "[table.app.tenants]\ncolumn = k\ntype = bigint\nstrategy = tenant\n"
    "[tenants.app]\n42 = s2\n"
    "[table.pg.p0]\ncolumn = k\ntype = smallint\nstrategy = hash\n"
    "[table.pg.p1]\ncolumn = k\ntype = int\nstrategy = hash\n"
    "[table.pg.p2]\ncolumn = k\ntype = bigint\nstrategy = hash\n"
    "[table.pg.p3]\ncolumn = k\ntype = text\nstrategy = hash\n"
    "[table.pg.p4]\ncolumn = k\ntype = uuid\nstrategy = hash\n"
    "[table.pg.p5]\ncolumn = k\ntype = date\nstrategy = hash\n"
    "[table.pg.p6]\ncolumn = k\ntype = timestamptz\nstrategy = hash\n";

static pgs_config_t *config;

static void check_error(const pgs_key_error_t *err) {
  if (strlen(err->sqlstate) != 5 || err->message[0] == '\0') abort();
}

static void route_everywhere(const pgs_key_t *key) {
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int t = 0; t < db->shardmap.ntables; t++) {
      const pgs_table_t *table = &db->shardmap.tables[t];
      if (table->type != key->type) continue;
      pgs_key_error_t err;
      memset(&err, 0, sizeof(err));
      int shard = pgs_shardmap_route(db, table, key, &err);
      if (shard >= db->nshards) abort();
      if (shard < 0) check_error(&err);
      /* Range tables cover the whole key space, hash tables never refuse. */
      if (shard < 0 && table->strategy != PGS_STRATEGY_GEO) abort();
    }
  }
}

static void check_key(const pgs_key_t *key) {
  uint8_t enc[PGS_KEY_MAX_TEXT + 16];
  size_t n = pgs_key_encode(key, enc, sizeof(enc));
  if (n > 16 && key->type != PGS_TYPE_TEXT) abort();
  if (key->type == PGS_TYPE_TEXT && (n != key->text_len || memcmp(enc, key->text, n) != 0)) abort();
  (void)pgs_key_hash_xxh3(key);
  (void)pgs_key_hash_postgres(key);

  /* What pgshardctl prints must read back as the same key. */
  char text[PGS_KEY_MAX_TEXT + 64];
  pgs_key_format(key, text, sizeof(text));
  size_t len = key->type == PGS_TYPE_TEXT ? key->text_len : strlen(text);
  pgs_key_t again;
  pgs_key_error_t err;
  if (pgs_key_from_text(key->type, text, len, &again, &err) != PGS_OK) abort();
  if (pgs_key_compare(key, &again) != 0) abort();
  route_everywhere(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (config == NULL) {
    config = pgs_config_parse_string(config_text);
    if (config->nerrors) abort();
  }
  if (size < 2) return 0;
  pgs_key_type_t type = (pgs_key_type_t)(data[0] % 7);
  bool binary = data[1] & 0x80;
  uint32_t oid = oids[(data[1] & 0x7f) % (sizeof(oids) / sizeof(oids[0]))];
  data += 2;
  size -= 2;

  pgs_key_t key;
  pgs_key_error_t err;
  memset(&err, 0, sizeof(err));
  pgs_status_t rc = binary ? pgs_key_from_binary(type, oid, data, size, &key, &err)
                           : pgs_key_from_text(type, (const char *)data, size, &key, &err);
  if (rc != PGS_OK) {
    check_error(&err);
    return 0;
  }
  if (key.type != type) abort();
  check_key(&key);
  return 0;
}
