/*
 * shardmap.h — the shard map of one database: which tables are sharded, by
 * which column of which type, with which strategy; and the functions that
 * turn a key value into a shard. Pure: no I/O.
 *
 * Keys are typed by the table's column type and canonically encoded before
 * hashing, so 42, '42', 42::bigint and a binary int8 42 are the same key:
 *   smallint/int/bigint  -> int64, encoded as 8 bytes big-endian
 *   date                 -> days since 2000-01-01 (PostgreSQL's DateADT), 4 bytes BE
 *   timestamptz          -> microseconds since 2000-01-01 00:00 UTC, 8 bytes BE
 *   uuid                 -> 16 bytes
 *   text                 -> its UTF-8 bytes
 *
 * Strategies:
 *   hash    XXH3-64 of the canonical encoding -> one of PGS_HASH_SLOTS slots,
 *           each slot owned by the shard the database's slot table says:
 *           [slots.DB] when given, else slots spread evenly over the shards
 *           in config order (shard = slot * nshards / PGS_HASH_SLOTS), the
 *           default layout; with `hash = postgres`
 *           PostgreSQL's own partition hash (the type's *hashextended
 *           function with HASH_PARTITION_SEED, combined as
 *           compute_partition_hash_value does) modulo nshards, so shard i
 *           holds what PARTITION BY HASH ... MODULUS n REMAINDER i would.
 *   range   half-open [low, high) per shard, open ends allowed
 *   geo     value -> region ([geo.DB]) -> the shards with that region (hash
 *           within the region when several); a value in no region is
 *           refused unless [geo.DB] default = REGION
 *   tenant  [tenants.DB] pins tenants to shards; other tenants by hash. All
 *           tenant tables of a database share one tenant namespace.
 */
#ifndef PGSHARD_SHARDMAP_H
#define PGSHARD_SHARDMAP_H

#include "pgshard/common.h"

#define PGS_HASH_SLOTS 4096
#define PGS_KEY_MAX_TEXT 1024 /* longer text keys are refused (22001) */

typedef enum {
  PGS_TYPE_SMALLINT,
  PGS_TYPE_INT,
  PGS_TYPE_BIGINT,
  PGS_TYPE_TEXT,
  PGS_TYPE_UUID,
  PGS_TYPE_DATE,
  PGS_TYPE_TIMESTAMPTZ,
} pgs_key_type_t;

typedef enum {
  PGS_STRATEGY_HASH,
  PGS_STRATEGY_RANGE,
  PGS_STRATEGY_GEO,
  PGS_STRATEGY_TENANT,
} pgs_strategy_t;

/* A typed key value. Text keys own a copy of their bytes (text[]), so a key
 * never points into a message buffer. */
typedef struct pgs_key {
  pgs_key_type_t type;
  int64_t i; /* integers, date (days), timestamptz (microseconds) */
  uint8_t uuid[16];
  size_t text_len;
  char text[PGS_KEY_MAX_TEXT];
  /* timestamptz only: the value carried no time zone (text without one, or
   * a binary `timestamp` parameter) and was read as UTC. PostgreSQL would
   * read it in the session's TimeZone, so the two agree only when that is
   * UTC; the proxy, which sees the session's TimeZone, may refuse such keys
   * in other sessions. Not part of the key: encode/compare/hash ignore it. */
  bool zone_assumed;
} pgs_key_t;

/* Why a key could not be made or routed: a SQLSTATE and a message without
 * the "pgshard: " prefix (the proxy adds it). */
typedef struct pgs_key_error {
  char sqlstate[6];
  char message[256];
} pgs_key_error_t;

typedef struct pgs_range {
  int shard;    /* index into the database's shards */
  bool has_low; /* false: open, -infinity */
  bool has_high;
  pgs_key_t *low;  /* inclusive */
  pgs_key_t *high; /* exclusive */
  int line;
} pgs_range_t;

typedef struct pgs_table {
  char *name; /* unqualified table name, as in [table.DB.NAME] */
  char *column;
  pgs_key_type_t type;
  pgs_strategy_t strategy;
  pgs_range_t *ranges; /* range strategy, sorted by low */
  int nranges;
  int line;
} pgs_table_t;

typedef struct pgs_geo_value {
  char *value;    /* e.g. "DE" */
  char *region;   /* e.g. "eu" */
  pgs_key_t *key; /* VALUE typed by the geo tables' column type */
  int line;
} pgs_geo_value_t;

typedef struct pgs_tenant_pin {
  pgs_key_t *key; /* typed by the tenant tables' column type */
  char *raw;      /* as written in the config */
  int shard;
  int line;
} pgs_tenant_pin_t;

/* Everything routing needs for one database, hung off pgs_database_t. */
typedef struct pgs_shardmap {
  pgs_table_t *tables;
  int ntables;
  pgs_geo_value_t *geo; /* sorted by key (binary search) */
  int ngeo;
  char *geo_default;         /* region for values in no list, or NULL: refuse */
  pgs_tenant_pin_t *tenants; /* sorted by key (binary search) */
  int ntenants;
  pgs_key_type_t geo_type;    /* column type shared by the geo tables (text if none) */
  pgs_key_type_t tenant_type; /* column type shared by the tenant tables (text if none) */
  int geo_line;               /* first line of [geo.DB], 0 when absent */
  int tenants_line;           /* first line of [tenants.DB], 0 when absent */
} pgs_shardmap_t;

const char *pgs_key_type_name(pgs_key_type_t type);
const char *pgs_strategy_name(pgs_strategy_t strategy);

/* Parse a key from its text form (a literal's text, a text-format bind
 * parameter, a config value). Errors: 22P02 invalid input syntax, 22003 out
 * of range, 22001 text too long, 22021 a NUL byte in text, 22007/22008/22009
 * bad date/time, 0A000 a form PostgreSQL reads that pgshard does not.
 *
 * What is read is what PostgreSQL reads, to the same value: integers with
 * blanks and a sign around them; uuids with or without hyphens and braces,
 * any case; dates and timestamps in ISO 8601 (YYYY-MM-DD, then for
 * timestamptz ' ' or 'T', H:MM[:SS[.frac]] rounded to microseconds as the
 * server rounds, and a zone Z/UTC/GMT/+HH[:MM]), 'infinity', '-infinity',
 * 'epoch', and a trailing BC. Refused with 0A000 although PostgreSQL reads
 * them: 'now'/'today'/... (they change with the clock), named time zones
 * (CET, Europe/Berlin: they need the tz database). Other DateStyle forms
 * ('Jan 8 1999', '1999/01/08') are refused with 22007 and a note that only
 * ISO is read. A timestamptz without a zone is read as UTC and marked
 * zone_assumed (see pgs_key_t). */
pgs_status_t pgs_key_from_text(pgs_key_type_t type, const char *text, size_t len, pgs_key_t *out,
                               pgs_key_error_t *err) PGS_MUST_USE;

/* Parse a binary-format bind parameter. TYPE_OID is the parameter's type as
 * declared in Parse (0 when unspecified: then it has the column's type).
 * Accepts int2/int4/int8 for integer columns, text/varchar/bpchar/name for
 * text, uuid, date, timestamptz/timestamp. */
pgs_status_t pgs_key_from_binary(pgs_key_type_t type, uint32_t type_oid, const uint8_t *data,
                                 size_t len, pgs_key_t *out, pgs_key_error_t *err) PGS_MUST_USE;

/* Canonical encoding (see above); returns its length. CAP >= 16 + text_len. */
size_t pgs_key_encode(const pgs_key_t *key, uint8_t *buf, size_t cap);
int pgs_key_compare(const pgs_key_t *a, const pgs_key_t *b);
/* Text form of a key, as pgshardctl prints it. */
void pgs_key_format(const pgs_key_t *key, char *buf, size_t cap);

uint64_t pgs_key_hash_xxh3(const pgs_key_t *key);
/* The partition hash PostgreSQL computes for a one-column PARTITION BY HASH
 * key of this type: the row goes to the partition with REMAINDER equal to
 * this modulo the MODULUS. */
uint64_t pgs_key_hash_postgres(const pgs_key_t *key);

struct pgs_database; /* config.h */

const pgs_table_t *pgs_shardmap_find_table(const struct pgs_database *db, const char *name);
int pgs_shardmap_find_shard(const struct pgs_database *db, const char *name);

/* The shard of KEY in TABLE: its index, or -1 with ERR set (a geo value in
 * no region: 22023; a range key no range covers: 22023). */
int pgs_shardmap_route(const struct pgs_database *db, const pgs_table_t *table,
                       const pgs_key_t *key, pgs_key_error_t *err);

/* The hash slot of KEY (hash strategy, xxh3); the shard owning a slot in
 * the default layout over NSHARDS shards (also how geo spreads a region's
 * keys over its shards); the shard owning a slot in DB's slot table. */
int pgs_shardmap_slot(const pgs_key_t *key);
int pgs_shardmap_slot_shard(int slot, int nshards);
int pgs_shardmap_slot_owner(const struct pgs_database *db, int slot);

/* A slot table for a database whose shards are NEW_NAMES (NEW_N of them, in
 * config order) made from OLD's slot table, moving as few slots as it can:
 * a slot stays on its shard while that shard still exists and holds no more
 * than its share; each shard ends with PGS_HASH_SLOTS / NEW_N slots or one
 * more (the shards holding the most keep the extra ones); what a shard gives
 * up (the highest of its slots) and a removed shard's slots go to the
 * shards lacking most (the emptiest), in runs of consecutive slots. Fills OUT
 * (PGS_HASH_SLOTS entries, indexes into NEW_NAMES) and returns how many
 * slots change shard (by name), or -1 when NEW_N is not positive. Pure. */
int pgs_shardmap_rebalance_slots(const struct pgs_database *old, const char *const *new_names,
                                 int new_n, int16_t *out);

/* How a key was routed, for `pgshardctl route -v` and debug logs. */
typedef struct pgs_route_detail {
  int shard;          /* as pgs_shardmap_route returns */
  bool hashed;        /* hash, tenant not pinned, geo within a region of several */
  bool postgres_hash; /* hashed with `hash = postgres` (hash is the partition hash) */
  uint64_t hash;      /* XXH3-64 or the PostgreSQL partition hash */
  int slot;           /* xxh3 slot, or -1 */
  int range;          /* range strategy: index into table->ranges, else -1 */
  const char *region; /* geo: the value's region (the default one included), else NULL */
  bool geo_default;   /* geo: the value is in no list; the default region took it */
  bool pinned;        /* tenant: pinned in [tenants.DB] */
} pgs_route_detail_t;

/* pgs_shardmap_route, also telling how (DETAIL may be NULL). */
int pgs_shardmap_route_detail(const struct pgs_database *db, const pgs_table_t *table,
                              const pgs_key_t *key, pgs_route_detail_t *detail,
                              pgs_key_error_t *err);

/* The shard an unpinned tenant or a hash-strategy key goes to under DB's
 * `hash` setting (no table needed: tenants share one namespace). */
int pgs_shardmap_hash_shard(const struct pgs_database *db, const pgs_key_t *key,
                            pgs_route_detail_t *detail);

/* Lookups in the sorted geo and tenant lists: the entry for KEY or NULL. */
const pgs_geo_value_t *pgs_shardmap_find_geo(const pgs_shardmap_t *map, const pgs_key_t *key);
const pgs_tenant_pin_t *pgs_shardmap_find_tenant(const pgs_shardmap_t *map, const pgs_key_t *key);

/* The shards (indexes, in config order) whose `region` is REGION; returns
 * how many, filling at most CAP of OUT. */
int pgs_shardmap_region_shards(const struct pgs_database *db, const char *region, int *out,
                               int cap);

/* Parse a pgs_key_type_t / pgs_strategy_t name as the config writes it
 * ("int" and "integer" are the same type). */
bool pgs_key_type_parse(const char *name, pgs_key_type_t *out);
bool pgs_strategy_parse(const char *name, pgs_strategy_t *out);

void pgs_shardmap_free(pgs_shardmap_t *map);

#endif
