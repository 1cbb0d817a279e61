/*
 * fuzz_route.c — libFuzzer harness for the route decision: arbitrary Bind
 * values and SQL through pgs_lex, pgs_analyze and pgs_route_plan for a
 * two-shard database with a table of every strategy and several key types,
 * then pgs_route_split_insert for every shard of a SPLIT and the shards'
 * text and LIMIT/OFFSET of a MERGE. It checks what the proxy relies on: a
 * decision is one of the six kinds; ONE names a shard that exists and is
 * in `shards`; SPLIT gives every row a shard of `shards`; MERGE has a
 * mergeable spec and a NUL-terminated shards' text; REFUSE has a
 * five-character SQLSTATE and a message without the "pgshard: " prefix; a
 * split text is NUL-terminated.
 *
 * Input: byte 0 = number of Bind values (low 3 bits) and whether a hint or
 * tenant is set (bits 3-4); then per value: a format byte, a 2-byte length
 * (0xffff: NULL) and the bytes; then one byte choosing declared type OIDs;
 * the rest is the SQL text.
 *
 *   cmake --build build-fuzz --target fuzz_route
 *   mkdir -p /tmp/corpus && cp -r tests/fuzz/corpus/route /tmp/corpus/
 *   build-fuzz/fuzz_route -max_total_time=60 -max_len=4096 /tmp/corpus/route
 */
#include <stdint.h>
#include <string.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/merge.h"
#include "pgshard/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] =
    "[pgshard]\nlisten = 127.0.0.1:6432\n"
    "[database.app]\n"
    "[shard.app.s0]\nprimary = host=127.0.0.1 port=6500\nregion = eu\n"
    "[shard.app.s1]\nprimary = host=127.0.0.1 port=6510\nregion = us\n"
    "[table.app.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"
    "[table.app.events]\ncolumn = at\ntype = timestamptz\nstrategy = range\n"
    "range = s0: - 2024-01-01\nrange = s1: 2024-01-01 -\n"
    "[table.app.profiles]\ncolumn = country\ntype = text\nstrategy = geo\n"
    "[geo.app]\neu = DE FR\nus = US CA\n"
    "[table.app.invoices]\ncolumn = tenant_id\ntype = bigint\nstrategy = tenant\n"
    "[tenants.app]\n42 = s1\n"
    "[table.app.docs]\ncolumn = id\ntype = uuid\nstrategy = hash\n"
    "[table.app.days]\ncolumn = d\ntype = date\nstrategy = hash\n"
    "[table.app.small]\ncolumn = k\ntype = smallint\nstrategy = hash\n";

static const uint32_t oids[] = {0, 20, 21, 23, 25, 1043, 2950, 1082, 1184, 1114, 1016, 1009};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static pgs_config_t *config;
  static pgs_lexed_t lexed;
  if (config == NULL) {
    config = pgs_config_parse_string(config_text);
    if (config->nerrors) abort();
    pgs_lex_init(&lexed);
  }
  const pgs_database_t *db = &config->databases[0];
  if (size < 2) return 0;
  size_t pos = 0;
  uint8_t head = data[pos++];
  int n = head & 7;
  const uint8_t *values[8];
  int32_t lens[8];
  int16_t formats[8];
  uint32_t types[8];
  for (int i = 0; i < n; i++) {
    if (size - pos < 3) return 0;
    formats[i] = data[pos] & 1;
    uint16_t len = (uint16_t)(data[pos + 1] << 8 | data[pos + 2]);
    pos += 3;
    if (len == 0xffff) {
      values[i] = NULL;
      lens[i] = -1;
      continue;
    }
    if (size - pos < len) return 0;
    values[i] = data + pos;
    lens[i] = len;
    pos += len;
  }
  if (pos >= size) return 0;
  uint8_t oid_choice = data[pos++];
  for (int i = 0; i < n; i++) types[i] = oids[(oid_choice + i) % (sizeof(oids) / sizeof(oids[0]))];

  if (pgs_lex((const char *)data + pos, size - pos, &lexed) != PGS_OK) return 0;
  pgs_plan_t *plan = pgs_analyze(db, &lexed);
  pgs_key_t tenant;
  pgs_key_error_t kerr;
  pgs_route_session_t session = {.hint_shard = (head & 8) ? 1 : -1};
  if ((head & 16) && pgs_key_from_text(PGS_TYPE_BIGINT, "42", 2, &tenant, &kerr) == PGS_OK)
    session.tenant = &tenant;
  pgs_param_values_t params = {.n = n,
                               .data = values,
                               .len = lens,
                               .format = formats,
                               .type_oid = types,
                               .ntypes = (oid_choice & 0x80) ? n : 0};
  int *row_shard = plan->nrows ? malloc(sizeof(int) * (size_t)plan->nrows) : NULL;
  pgs_route_t rt = {.row_shard = row_shard};
  pgs_route_plan(db, plan, &lexed, n || lexed.nparams ? &params : NULL, &session, &rt);
  switch (rt.kind) {
  case PGS_ROUTE_ONE:
    if (rt.shard < 0 || rt.shard >= db->nshards || !(rt.shards & (1ull << rt.shard))) abort();
    break;
  case PGS_ROUTE_ANY:
    break;
  case PGS_ROUTE_FANOUT:
    if (rt.shards == 0 || rt.shards >> db->nshards) abort();
    break;
  case PGS_ROUTE_SPLIT:
    for (int i = 0; i < plan->nrows; i++)
      if (row_shard[i] < 0 || row_shard[i] >= db->nshards || !(rt.shards & (1ull << row_shard[i])))
        abort();
    for (int s = 0; s < db->nshards; s++) {
      if (!(rt.shards & (1ull << s))) continue;
      pgs_buf_t out;
      pgs_buf_init(&out);
      if (pgs_route_split_insert(&lexed, row_shard, plan->nrows, s, &out) == PGS_OK &&
          (out.len == 0 || out.data[out.len - 1] != '\0'))
        abort();
      pgs_buf_free(&out);
    }
    break;
  case PGS_ROUTE_MERGE: {
    /* Every shard's text is a C string; LIMIT/OFFSET come out in range. */
    if (rt.shards == 0 || rt.shards >> db->nshards) abort();
    if (plan->merge == NULL || plan->merge->refuse[0] != '\0') abort();
    pgs_buf_t out;
    pgs_buf_init(&out);
    pgs_merge_shard_sql(plan->merge, &lexed, &out);
    if (out.len == 0 || out.data[out.len - 1] != '\0' || strlen((char *)out.data) != out.len - 1)
      abort();
    pgs_buf_free(&out);
    int64_t limit, offset;
    pgs_value_error_t err;
    if (pgs_merge_limits(plan->merge, &lexed, n || lexed.nparams ? &params : NULL, &limit, &offset,
                         &err) == PGS_OK &&
        (limit < -1 || offset < 0))
      abort();
    break;
  }
  case PGS_ROUTE_REFUSE:
    if (strlen(rt.sqlstate) != 5 || !strncmp(rt.message, "pgshard: ", 9)) abort();
    break;
  default:
    abort();
  }
  free(row_shard);
  pgs_plan_unref(plan);
  return 0;
}
