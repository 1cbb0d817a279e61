/*
 * moves.c — resharding as the router sees it (moves.h): the moves read from
 * pgshard.reshard_move, the refusal of statements that would see or change
 * moving rows twice, and the comparison of a statement's shards under two
 * maps. Pure: the monitor reads the rows, the planner asks.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "pgshard/moves.h"
#include "pgshard/snapshot.h"

#define BIT(i) ((uint64_t)1 << (i))

pgs_move_phase_t pgs_move_phase_parse(const char *name) {
  static const char *const names[] = {"copying", "streaming", "switched", "cleaned"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(names); i++)
    if (name && !strcmp(name, names[i])) return (pgs_move_phase_t)i;
  return PGS_MOVE_UNKNOWN;
}

bool pgs_move_active(const pgs_move_t *move) {
  return move->phase != PGS_MOVE_SWITCHED && move->phase != PGS_MOVE_CLEANED;
}

/* ---- the rows ---- */

bool pgs_moves_parse_array(const char *text, char ***out, int *n) {
  *out = NULL;
  *n = 0;
  size_t len = text ? strlen(text) : 0;
  if (len < 2 || text[0] != '{' || text[len - 1] != '}') return false;
  char **items = NULL;
  int count = 0;
  const char *p = text + 1, *end = text + len - 1;
  char *item = pgs_xmalloc(len + 1);
  while (p < end) {
    size_t k = 0;
    if (*p == '"') {
      for (p++; p < end && *p != '"'; p++) {
        if (*p == '\\' && p + 1 < end) p++;
        item[k++] = *p;
      }
      if (p >= end) goto fail; /* unterminated */
      p++;
    } else {
      while (p < end && *p != ',') item[k++] = *p++;
      while (k > 0 && isspace((unsigned char)item[k - 1])) k--;
      if (k == 0 || item[0] == '{') goto fail; /* empty or nested */
    }
    item[k] = '\0';
    items = pgs_xrealloc(items, sizeof(char *) * (size_t)(count + 1));
    items[count++] = pgs_xstrdup(item);
    if (p < end && *p != ',') goto fail;
    if (p < end) p++;
  }
  free(item);
  *out = items;
  *n = count;
  return true;
fail:
  free(item);
  for (int i = 0; i < count; i++) free(items[i]);
  free(items);
  return false;
}

static char *dup_or_null(const char *s) { return s ? pgs_xstrdup(s) : NULL; }

void pgs_moves_append(pgs_move_t **moves, int *n, const pgs_move_t *move) {
  *moves = pgs_xrealloc(*moves, sizeof(**moves) * (size_t)(*n + 1));
  pgs_move_t *m = &(*moves)[(*n)++];
  *m = *move;
  m->reshard_id = dup_or_null(move->reshard_id);
  m->database = dup_or_null(move->database);
  m->source = dup_or_null(move->source);
  m->target = dup_or_null(move->target);
  m->phase_name = dup_or_null(move->phase_name);
  m->error = dup_or_null(move->error);
  m->tables = move->ntables ? pgs_xcalloc((size_t)move->ntables, sizeof(char *)) : NULL;
  for (int i = 0; i < move->ntables; i++) m->tables[i] = pgs_xstrdup(move->tables[i]);
}

static void move_free(pgs_move_t *m) {
  free(m->reshard_id);
  free(m->database);
  free(m->source);
  free(m->target);
  free(m->phase_name);
  free(m->error);
  for (int t = 0; t < m->ntables; t++) free(m->tables[t]);
  free(m->tables);
}

static bool same_name(const char *a, const char *b) { return a && b ? !strcmp(a, b) : a == b; }

void pgs_moves_add(pgs_move_t **moves, int *n, const pgs_move_t *move) {
  for (int i = 0; i < *n; i++) {
    pgs_move_t *m = &(*moves)[i];
    if (!same_name(m->reshard_id, move->reshard_id) || !same_name(m->source, move->source) ||
        !same_name(m->target, move->target))
      continue;
    if (m->mirror && !move->mirror) {
      move_free(m);
      pgs_move_t *last = &(*moves)[--*n];
      if (m != last) *m = *last;
      pgs_moves_append(moves, n, move);
    }
    return;
  }
  pgs_moves_append(moves, n, move);
}

void pgs_moves_free(pgs_move_t *moves, int n) {
  for (int i = 0; i < n; i++) move_free(&moves[i]);
  free(moves);
}

const pgs_move_t *pgs_moves_of(const pgs_snapshot_t *snap, const char *db, int *n) {
  *n = 0;
  if (snap == NULL || snap->nmoves == 0) return NULL;
  for (int d = 0; d < snap->ndbs; d++) {
    if (strcmp(snap->dbs[d].name, db) != 0) continue;
    *n = snap->dbs[d].nmoves;
    return *n ? snap->dbs[d].moves : NULL;
  }
  return NULL;
}

/* ---- refusals while rows move ---- */

static bool ident_char(unsigned char c) { return isalnum(c) || c == '_' || c == '$' || c >= 0x80; }

/* Whether the statement's text names TABLE as a word: an identifier,
 * folded to lower case, or a quoted one as written. Quoted strings (the
 * lexer leaves B'', X'' and the like) are skipped. */
static bool names_table(const char *sql, size_t len, const char *table) {
  const char *dot = strrchr(table, '.');
  if (dot && !strchr(table, '"')) table = dot + 1; /* schema.name: the name */
  size_t tlen = strlen(table);
  for (size_t i = 0; i < len;) {
    unsigned char c = (unsigned char)sql[i];
    if (c == '\'') {
      for (i++; i < len && sql[i] != '\''; i++) {
      }
      i++;
    } else if (c == '"') {
      size_t start = ++i, k = 0;
      bool same = true;
      for (; i < len; i++) {
        if (sql[i] == '"' && i + 1 < len && sql[i + 1] == '"')
          i++;
        else if (sql[i] == '"')
          break;
        same = same && k < tlen && sql[i] == table[k];
        k++;
      }
      i++;
      if (same && k == tlen && i > start) return true;
    } else if (ident_char(c) && !isdigit(c) && c != '$') {
      size_t start = i;
      while (i < len && ident_char((unsigned char)sql[i])) i++;
      if (i - start == tlen && !strncasecmp(sql + start, table, tlen)) return true;
    } else if (ident_char(c)) {
      while (i < len && ident_char((unsigned char)sql[i])) i++; /* $1, 42 */
    } else {
      i++;
    }
  }
  return false;
}

/* Whether the plan routes TABLE by its key: a key or row of it decides. */
static bool keyed_on(const pgs_plan_t *plan, const char *table) {
  const char *dot = strrchr(table, '.');
  const char *name = dot ? dot + 1 : table;
  if (plan->target == PGS_TARGET_ROWS)
    return plan->table && !strcmp(plan->table->name, name) &&
           (plan->nrows > 0 || plan->kind == PGS_STMT_COPY_FROM);
  if (plan->target != PGS_TARGET_KEYS) return false;
  for (int i = 0; i < plan->nkeys; i++)
    if (plan->keys[i].table && !strcmp(plan->keys[i].table->name, name)) return true;
  return false;
}

bool pgs_moves_refuse(const pgs_move_t *moves, int n, const pgs_database_t *db,
                      const pgs_plan_t *plan, const pgs_lexed_t *lexed, const pgs_route_t *rt,
                      char *message, size_t cap) {
  if (rt->kind == PGS_ROUTE_REFUSE || rt->kind == PGS_ROUTE_ANY || rt->kind == PGS_ROUTE_SPLIT)
    return false; /* no sharded table, or each row by its key */
  for (int i = 0; i < n; i++) {
    const pgs_move_t *m = &moves[i];
    if (!pgs_move_active(m) || m->target == NULL) continue;
    int target = pgs_shardmap_find_shard(db, m->target);
    if (target < 0 || target >= 64) continue; /* no client reaches it */
    bool one = rt->kind == PGS_ROUTE_ONE;
    if (one ? rt->shard != target : !(rt->shards & BIT(target))) continue;
    for (int t = 0; t < m->ntables; t++) {
      const char *table = m->tables[t];
      if (lexed && !names_table(lexed->normalized, lexed->normalized_len, table)) continue;
      const char *why;
      if (one && keyed_on(plan, table)) {
        continue; /* the key is the target's under the running map: not moving */
      } else if (!one && plan->kind == PGS_STMT_COPY_FROM && keyed_on(plan, table)) {
        continue; /* each row to its key's shard */
      } else if (plan->kind == PGS_STMT_DDL) {
        why = "DDL on it would break the copy";
      } else if (one) {
        why =
            "a statement sent to that shard by a hint or a tenant, without the table's key, "
            "would see or change the moving rows there as well";
      } else {
        why = "a statement on several shards would see or change the moving rows twice";
      }
      snprintf(message, cap,
               "table \"%s\" has rows moving from shard %s to %s (reshard %s); %s: refused "
               "until the move is cut over or aborted",
               table, m->source ? m->source : "?", m->target, m->reshard_id ? m->reshard_id : "?",
               why);
      return true;
    }
  }
  return false;
}

/* ---- one statement, two maps ---- */

static bool same_string(const char *a, const char *b) {
  return a == b || (a && b && !strcmp(a, b));
}

static bool same_key(const pgs_key_t *a, const pgs_key_t *b) {
  return a == b || (a && b && a->type == b->type && pgs_key_compare(a, b) == 0);
}

/* Shards alike: names in the same order, and regions (geo routes by them). */
static bool same_shards(const pgs_database_t *a, const pgs_database_t *b) {
  if (a->nshards != b->nshards || a->hash != b->hash) return false;
  for (int i = 0; i < a->nshards; i++)
    if (!same_string(a->shards[i].name, b->shards[i].name) ||
        !same_string(a->shards[i].region, b->shards[i].region))
      return false;
  return true;
}

static bool same_geo(const pgs_shardmap_t *a, const pgs_shardmap_t *b) {
  if (a->ngeo != b->ngeo || a->geo_type != b->geo_type ||
      !same_string(a->geo_default, b->geo_default))
    return false;
  for (int i = 0; i < a->ngeo; i++)
    if (!same_key(a->geo[i].key, b->geo[i].key) || !same_string(a->geo[i].region, b->geo[i].region))
      return false;
  return true;
}

static bool same_tenants(const pgs_database_t *a, const pgs_database_t *b) {
  const pgs_shardmap_t *ma = &a->shardmap, *mb = &b->shardmap;
  if (ma->ntenants != mb->ntenants || ma->tenant_type != mb->tenant_type) return false;
  for (int i = 0; i < ma->ntenants; i++)
    if (!same_key(ma->tenants[i].key, mb->tenants[i].key) ||
        strcmp(a->shards[ma->tenants[i].shard].name, b->shards[mb->tenants[i].shard].name) != 0)
      return false;
  return true;
}

bool pgs_moves_same_table(const pgs_database_t *a, const pgs_table_t *ta, const pgs_database_t *b,
                          const pgs_table_t *tb) {
  if (ta == NULL || tb == NULL) return ta == tb;
  if (strcmp(ta->name, tb->name) != 0 || strcmp(ta->column, tb->column) != 0 ||
      ta->type != tb->type || ta->strategy != tb->strategy)
    return false;
  switch (ta->strategy) {
  case PGS_STRATEGY_HASH:
    return same_shards(a, b);
  case PGS_STRATEGY_GEO:
    return same_shards(a, b) && same_geo(&a->shardmap, &b->shardmap);
  case PGS_STRATEGY_TENANT:
    return same_shards(a, b) && same_tenants(a, b);
  case PGS_STRATEGY_RANGE:
    if (ta->nranges != tb->nranges) return false;
    for (int i = 0; i < ta->nranges; i++) {
      const pgs_range_t *ra = &ta->ranges[i], *rb = &tb->ranges[i];
      if (ra->has_low != rb->has_low || ra->has_high != rb->has_high ||
          (ra->has_low && !same_key(ra->low, rb->low)) ||
          (ra->has_high && !same_key(ra->high, rb->high)) ||
          strcmp(a->shards[ra->shard].name, b->shards[rb->shard].name) != 0)
        return false;
    }
    return true;
  }
  return false;
}

bool pgs_moves_same_map(const pgs_database_t *a, const pgs_database_t *b) {
  if (a == b) return true;
  if (!same_shards(a, b) || a->shardmap.ntables != b->shardmap.ntables ||
      !same_geo(&a->shardmap, &b->shardmap) || !same_tenants(a, b))
    return false;
  for (int t = 0; t < a->shardmap.ntables; t++)
    if (!pgs_moves_same_table(a, &a->shardmap.tables[t], b, &b->shardmap.tables[t])) return false;
  return true;
}

/* The shards RT runs on, as a mask. */
static uint64_t route_mask(const pgs_route_t *rt) {
  return rt->kind == PGS_ROUTE_ONE ? (rt->shard >= 0 ? BIT(rt->shard) : 0) : rt->shards;
}

/* Whether shard I of A has a namesake in B among the shards of MASK. */
static bool named_in(const pgs_database_t *a, int i, const pgs_database_t *b, uint64_t mask) {
  int j = pgs_shardmap_find_shard(b, a->shards[i].name);
  return j >= 0 && j < 64 && (mask & BIT(j));
}

bool pgs_moves_same_route(const pgs_database_t *a, const pgs_route_t *ra, const pgs_database_t *b,
                          const pgs_route_t *rb, int nrows) {
  if (ra->kind == PGS_ROUTE_REFUSE) return true;
  if (rb->kind == PGS_ROUTE_REFUSE) return false;
  if (ra->kind == PGS_ROUTE_ANY || rb->kind == PGS_ROUTE_ANY)
    return ra->kind == PGS_ROUTE_ANY && rb->kind == PGS_ROUTE_ANY;
  uint64_t ma = route_mask(ra), mb = route_mask(rb);
  if (__builtin_popcountll(ma) != __builtin_popcountll(mb)) return false;
  for (int i = 0; i < a->nshards && i < 64; i++)
    if ((ma & BIT(i)) && !named_in(a, i, b, mb)) return false;
  if (ra->kind == PGS_ROUTE_SPLIT || rb->kind == PGS_ROUTE_SPLIT) {
    if (ra->row_shard == NULL || rb->row_shard == NULL) return false;
    for (int r = 0; r < nrows; r++) {
      int sa = ra->kind == PGS_ROUTE_SPLIT ? ra->row_shard[r] : ra->shard;
      int sb = rb->kind == PGS_ROUTE_SPLIT ? rb->row_shard[r] : rb->shard;
      if (sa < 0 || sb < 0 || sa >= a->nshards || sb >= b->nshards ||
          strcmp(a->shards[sa].name, b->shards[sb].name) != 0)
        return false;
    }
  }
  return true;
}
