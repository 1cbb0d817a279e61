/*
 * merge_exec.c — the cross-shard merge executor (merge.h, second half): one
 * pgs_merge_t per statement run, fed every part's RowDescription and
 * DataRows, answering per row whether it goes to the client now (PASS),
 * waits for the merged result (HELD) or is not part of it (DROP), and
 * building that result when every part has finished.
 *
 * Three modes, fixed by the spec when the run starts:
 *  - PASS: plain concatenation (no grouping, DISTINCT, ORDER BY or hidden
 *    column): rows stream through untouched and uncopied; only OFFSET and
 *    LIMIT are counted.
 *  - HOLD: rows are copied into one growing arena (a row is an offset, never
 *    its own allocation). DISTINCT drops a duplicate when it arrives; without
 *    ORDER BY the arrival order is the result's order and rows outside the
 *    OFFSET/LIMIT window are dropped at once.
 *  - GROUP: one state per group (found by a hash of the group columns'
 *    values): the first row's bytes for plain columns, counts, running sums,
 *    the current min/max value, and for count/sum(DISTINCT x) the values of
 *    x already counted (one table for every group, keyed by group, column
 *    and value). At the end each group becomes a row in the arena, HAVING
 *    keeps it or not, and from there on it is HOLD's pipeline.
 * The pipeline at the end is PostgreSQL's order: groups, HAVING, DISTINCT,
 * ORDER BY (a natural merge sort: each part arrives sorted, so k parts are
 * k runs and sorting costs n log k comparisons; only the first
 * OFFSET+LIMIT rows are ever merged past their run), DISTINCT ON (the
 * first of each run of equal DISTINCT ON keys, the last sort keys), OFFSET,
 * LIMIT, hidden columns cut off.
 *
 * Values are equal as PostgreSQL's = says wherever rows or groups are
 * matched: numeric, float and bpchar columns by value (hashed on a
 * canonical form, pgs_value_hash), other types by their bytes.
 *
 * Invariants: every byte of a row is bounds-checked before anything is
 * read from it; everything held (arena, row table, group states, hash
 * table, numeric digits) is counted against max_bytes after each row; the
 * first failure is the one reported, and a failed merge keeps no rows.
 */
#include <stdarg.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/collate.h"
#include "pgshard/merge.h"

typedef enum {
  MODE_PASS,  /* concatenation: rows go through as they come */
  MODE_HOLD,  /* rows copied, merged at the end */
  MODE_GROUP, /* rows folded into group states, merged at the end */
} merge_mode_t;

/* One column of a row: OFF is where its value bytes start, from the start
 * of the row's body (its length field is the 4 bytes before); LEN -1 for
 * NULL. */
typedef struct field {
  uint32_t off;
  int32_t len;
} field_t;

/* A sort key of a held row: where its bytes are (as field_t) and, for
 * integer columns, the value decoded once when the row was held, so the
 * sort compares int64s instead of parsing text on every comparison. */
typedef struct sort_key {
  uint32_t off;
  int32_t len;
  int64_t i;
} sort_key_t;

/* A held row: a DataRow body in the arena. */
typedef struct row {
  size_t off;
  uint32_t len;
  uint32_t vis; /* where the visible columns start (their length fields
                    included): the output row is the count and this tail */
  uint32_t part;
  uint64_t hash; /* DISTINCT: of the visible bytes */
} row_t;

/* One column of a group's state. */
typedef struct cell {
  size_t off;    /* NONE, MIN, MAX: the value's bytes in the arena */
  int32_t len;   /* -1: NULL (MIN/MAX: no non-NULL value yet) */
  int64_t count; /* COUNT */
} cell_t;

typedef struct group {
  uint64_t hash;
  uint32_t part; /* the part its first row came from */
} group_t;

/* A value of x a DISTINCT aggregate (column) has counted for a group. */
typedef struct seen {
  uint64_t hash;
  size_t off;  /* its bytes in the arena */
  int32_t len; /* -1: NULL */
  uint32_t group;
  int32_t column;
} dvalue_t;

struct pgs_merge {
  const pgs_merge_spec_t *spec; /* outlives the run (the plan holds it) */
  int nparts;
  int64_t limit; /* -1: none */
  int64_t offset;
  size_t max_bytes;
  merge_mode_t mode;
  bool failed;
  bool finished;
  pgs_value_error_t err;

  /* From the first RowDescription. */
  bool described;
  int ncols;
  uint32_t *oids;
  int16_t *formats;
  field_t *fields; /* scratch: the columns of the row at hand */
  bool *int_key;   /* per ORDER BY key: an integer column (sort_key_t.i) */

  /* Per column: equal values may differ in bytes (numeric 1.0, 1.00);
   * and whether a visible column is such (DISTINCT). */
  bool *by_value;
  bool visible_by_value;
  /* Collations (pgs_merge_collate): whether text follows them, the
   * catalog they are found in, and per ORDER BY key and per column (its
   * min/max) the collator, NULL for byte order (arrays NULL: all bytes). */
  bool collate;
  bool utf8;
  struct pgs_collcat *cat;
  const pgs_collator_t **key_coll;
  const pgs_collator_t **col_coll;

  /* What each column merges by (GROUP): the spec's agg, with the columns an
   * avg reads promoted to SUM/COUNT; and the index of its running sum. */
  uint8_t *role;
  int *sum_slot;
  int nsums;

  /* PASS and concatenation in HOLD: rows counted against OFFSET, and rows
   * in the window so far. */
  uint64_t seen;
  uint64_t sent;

  pgs_buf_t arena;
  row_t *rows;
  size_t nrows, rows_cap;
  sort_key_t *keyf; /* nkeys per row */

  group_t *groups;
  size_t ngroups, groups_cap;
  cell_t *cells;   /* ncols per group */
  pgs_sum_t *sums; /* nsums per group */
  size_t digit_bytes;

  /* Open addressing, entries are index + 1 (0 empty): groups while rows
   * arrive, rows for DISTINCT. */
  uint32_t *table;
  size_t table_cap, table_used;
  bool table_rows;

  /* DISTINCT aggregates: the values counted, and their own table. */
  dvalue_t *dvalues;
  size_t ndvalues, dvalues_cap;
  uint32_t *dvalue_table;
  size_t dvalue_table_cap;
};

/* ---- failures ---- */

/* Give back everything rows and groups hold: a failed merge keeps nothing
 * while the shards finish sending. */
static void release_rows(pgs_merge_t *m) {
  for (size_t i = 0; i < m->ngroups * (size_t)m->nsums; i++) pgs_sum_free(&m->sums[i]);
  free(m->sums);
  free(m->cells);
  free(m->groups);
  free(m->rows);
  free(m->keyf);
  free(m->table);
  free(m->dvalues);
  free(m->dvalue_table);
  pgs_buf_free(&m->arena);
  m->dvalues = NULL;
  m->dvalue_table = NULL;
  m->ndvalues = m->dvalues_cap = m->dvalue_table_cap = 0;
  m->sums = NULL;
  m->cells = NULL;
  m->groups = NULL;
  m->rows = NULL;
  m->keyf = NULL;
  m->table = NULL;
  m->ngroups = m->groups_cap = m->nrows = m->rows_cap = 0;
  m->table_cap = m->table_used = 0;
  m->digit_bytes = 0;
}

/* Record the first failure. What is held is given back by the entry
 * points (release_rows) once nothing of it is in use. */
PGS_PRINTF(3, 4)
static void fail(pgs_merge_t *m, const char *sqlstate, const char *fmt, ...) {
  if (m->failed) return;
  m->failed = true;
  snprintf(m->err.sqlstate, sizeof(m->err.sqlstate), "%s", sqlstate);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->err.message, sizeof(m->err.message), fmt, ap);
  va_end(ap);
}

static void fail_value(pgs_merge_t *m, const pgs_value_error_t *err) {
  fail(m, err->sqlstate[0] ? err->sqlstate : PGS_SQLSTATE_INTERNAL, "%s", err->message);
}

/* ---- types by name, for messages ---- */

static const struct {
  uint32_t oid;
  const char *name;
} type_names[] = {
    {16, "boolean"},
    {17, "bytea"},
    {18, "\"char\""},
    {19, "name"},
    {20, "bigint"},
    {21, "smallint"},
    {23, "integer"},
    {25, "text"},
    {26, "oid"},
    {114, "json"},
    {142, "xml"},
    {199, "json[]"},
    {600, "point"},
    {601, "lseg"},
    {602, "path"},
    {603, "box"},
    {604, "polygon"},
    {628, "line"},
    {650, "cidr"},
    {700, "real"},
    {701, "double precision"},
    {705, "unknown"},
    {718, "circle"},
    {790, "money"},
    {829, "macaddr"},
    {869, "inet"},
    {1000, "boolean[]"},
    {1001, "bytea[]"},
    {1005, "smallint[]"},
    {1007, "integer[]"},
    {1009, "text[]"},
    {1015, "character varying[]"},
    {1016, "bigint[]"},
    {1021, "real[]"},
    {1022, "double precision[]"},
    {1042, "character"},
    {1043, "character varying"},
    {1082, "date"},
    {1083, "time without time zone"},
    {1114, "timestamp without time zone"},
    {1115, "timestamp without time zone[]"},
    {1182, "date[]"},
    {1184, "timestamp with time zone"},
    {1185, "timestamp with time zone[]"},
    {1186, "interval"},
    {1231, "numeric[]"},
    {1266, "time with time zone"},
    {1560, "bit"},
    {1562, "bit varying"},
    {1700, "numeric"},
    {2249, "record"},
    {2950, "uuid"},
    {2951, "uuid[]"},
    {3614, "tsvector"},
    {3615, "tsquery"},
    {3802, "jsonb"},
    {3807, "jsonb[]"},
    {3904, "int4range"},
    {3906, "numrange"},
    {3908, "tsrange"},
    {3910, "tstzrange"},
    {3912, "daterange"},
    {3926, "int8range"},
};

static const char *type_name(uint32_t oid, char *buf, size_t cap) {
  for (size_t i = 0; i < PGS_ARRAY_LEN(type_names); i++)
    if (type_names[i].oid == oid) return type_names[i].name;
  snprintf(buf, cap, "with OID %u", oid);
  return buf;
}

static const char *agg_name(int agg) {
  switch (agg) {
  case PGS_AGG_COUNT:
    return "count";
  case PGS_AGG_SUM:
    return "sum";
  case PGS_AGG_MIN:
    return "min";
  case PGS_AGG_MAX:
    return "max";
  case PGS_AGG_AVG:
    return "avg";
  }
  return "?";
}

/* ---- lifecycle ---- */

/* Whether the HAVING node at *AT and its operands are a well-formed tree
 * over the spec's columns; *AT moves past them. */
static bool having_fits(const pgs_merge_spec_t *spec, int *at, int depth) {
  if (*at >= spec->nhaving || depth > spec->nhaving) return false;
  const pgs_merge_cond_t *c = &spec->having[(*at)++];
  switch (c->kind) {
  case PGS_COND_AND:
  case PGS_COND_OR:
  case PGS_COND_NOT:
    if (c->nargs < 1 || (c->kind == PGS_COND_NOT && c->nargs != 1)) return false;
    for (int i = 0; i < c->nargs; i++)
      if (!having_fits(spec, at, depth + 1)) return false;
    return true;
  case PGS_COND_CMP:
    if (c->op > PGS_CMP_GE) return false;
    if (c->right != PGS_COND_NULL && (c->right < 0 || c->right >= spec->ncolumns)) return false;
    /* fall through */
  case PGS_COND_IS_NULL:
    return c->left == PGS_COND_NULL || (c->left >= 0 && c->left < spec->ncolumns);
  default:
    return false;
  }
}

/* Roles: which columns keep a running sum or count. An avg's sum and count
 * columns are hidden columns the analysis marks SUM and COUNT; NONE there
 * is taken to mean the same, anything else is a spec that cannot work. */
static void plan_roles(pgs_merge_t *m) {
  const pgs_merge_spec_t *spec = m->spec;
  int n = spec->ncolumns;
  m->role = pgs_xcalloc((size_t)n, 1);
  m->sum_slot = pgs_xmalloc((size_t)(n ? n : 1) * sizeof(int));
  for (int c = 0; c < n; c++) {
    m->role[c] = spec->columns[c].agg;
    if (m->role[c] > PGS_AGG_AVG) {
      fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: column %d has unknown aggregate %d", c,
           m->role[c]);
      return;
    }
  }
  for (int c = 0; c < n; c++) {
    if (m->role[c] != PGS_AGG_AVG) continue;
    int s = spec->columns[c].avg_sum, k = spec->columns[c].avg_count;
    if (s < 0 || s >= n || k < 0 || k >= n || s == k || s == c || k == c) {
      fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: avg column %d reads columns %d and %d", c, s, k);
      return;
    }
    if (m->role[s] == PGS_AGG_NONE) m->role[s] = PGS_AGG_SUM;
    if (m->role[k] == PGS_AGG_NONE) m->role[k] = PGS_AGG_COUNT;
    if (m->role[s] != PGS_AGG_SUM || m->role[k] != PGS_AGG_COUNT) {
      fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: avg column %d reads columns %d and %d", c, s, k);
      return;
    }
  }
  for (int c = 0; c < n; c++) m->sum_slot[c] = m->role[c] == PGS_AGG_SUM ? m->nsums++ : -1;
  for (int g = 0; g < spec->ngroup; g++) {
    int c = spec->group[g];
    if (c < 0 || c >= n || m->role[c] != PGS_AGG_NONE) {
      fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: group column %d is not a plain column", c);
      return;
    }
  }
  for (int c = 0; c < n; c++) {
    if (!spec->columns[c].distinct) continue;
    int a = spec->columns[c].distinct_arg;
    if ((m->role[c] != PGS_AGG_COUNT && m->role[c] != PGS_AGG_SUM) || a < 0 || a >= n ||
        m->role[a] != PGS_AGG_NONE) {
      fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: DISTINCT column %d reads column %d", c, a);
      return;
    }
  }
  int at = 0;
  if (spec->nhaving > 0 && (!having_fits(spec, &at, 0) || at != spec->nhaving))
    fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: a HAVING condition that does not fit");
}

pgs_merge_t *pgs_merge_new(const pgs_merge_spec_t *spec, int nparts, int64_t limit, int64_t offset,
                           size_t max_bytes) {
  PGS_ASSERT(spec != NULL && nparts > 0);
  pgs_merge_t *m = pgs_xcalloc(1, sizeof(*m));
  m->spec = spec;
  m->nparts = nparts;
  m->limit = limit < 0 ? -1 : limit;
  m->offset = offset < 0 ? 0 : offset;
  m->max_bytes = max_bytes;
  pgs_buf_init(&m->arena);
  m->table_rows = !spec->grouped;
  if (spec->grouped)
    m->mode = MODE_GROUP;
  else if (spec->distinct || spec->nkeys > 0 || spec->nhidden > 0)
    m->mode = MODE_HOLD;
  else
    m->mode = MODE_PASS;
  if (spec->refuse[0] != '\0') {
    fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", spec->refuse);
    return m;
  }
  if (spec->grouped) plan_roles(m);
  if (spec->distinct_on < 0 || spec->distinct_on > spec->nkeys)
    fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: DISTINCT ON over %d of %d sort keys",
         spec->distinct_on, spec->nkeys);
  return m;
}

void pgs_merge_free(pgs_merge_t *m) {
  if (!m) return;
  release_rows(m);
  free(m->oids);
  free(m->formats);
  free(m->fields);
  free(m->int_key);
  free(m->by_value);
  free(m->key_coll);
  free(m->col_coll);
  pgs_collcat_unref(m->cat);
  free(m->role);
  free(m->sum_slot);
  free(m);
}

const pgs_value_error_t *pgs_merge_error(const pgs_merge_t *m) { return &m->err; }

bool pgs_merge_described(const pgs_merge_t *m) { return m->described; }

void pgs_merge_collate(pgs_merge_t *m, struct pgs_collcat *cat, bool utf8) {
  PGS_ASSERT(!m->described);
  pgs_collcat_unref(m->cat);
  m->collate = true;
  m->cat = pgs_collcat_ref(cat);
  m->utf8 = utf8;
}

/* ---- RowDescription ---- */

/* Whether a field description can be skipped in R. */
static bool skip_field(pgs_reader_t *r) {
  size_t n;
  if (!pgs_read_cstr(r, &n)) return false;
  pgs_read_bytes(r, 18); /* table oid, attnum, type oid, typlen, typmod, format */
  return !r->bad;
}

/* The spec's column numbers against NCOLS columns, then whether the types
 * allow what is asked of them. */
static bool check_columns(pgs_merge_t *m) {
  const pgs_merge_spec_t *spec = m->spec;
  int n = m->ncols;
  char buf[32];
  if (spec->nhidden < 0 || spec->nhidden > n || (spec->grouped && spec->ncolumns != n)) {
    fail(m, PGS_SQLSTATE_INTERNAL,
         "merge spec (%d hidden, %d columns) does not fit the shards' %d columns", spec->nhidden,
         spec->grouped ? spec->ncolumns : n, n);
    return false;
  }
  for (int k = 0; k < spec->nkeys; k++) {
    int c = spec->keys[k].column;
    if (c < 0 || c >= n) {
      fail(m, PGS_SQLSTATE_INTERNAL, "merge spec: ORDER BY column %d of %d", c, n);
      return false;
    }
    if (!pgs_value_comparable(m->oids[c])) {
      fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "cannot merge ORDER BY over type %s across shards",
           type_name(m->oids[c], buf, sizeof(buf)));
      return false;
    }
  }
  if (!spec->grouped) return true;
  for (int c = 0; c < n; c++) {
    int agg = spec->columns[c].agg;
    uint32_t oid = m->oids[c];
    bool ok = true;
    switch (m->role[c]) {
    case PGS_AGG_COUNT:
      ok = oid == PGS_OID_INT8;
      break;
    case PGS_AGG_SUM:
      ok = pgs_sum_supported(oid);
      break;
    case PGS_AGG_MIN:
    case PGS_AGG_MAX:
      ok = pgs_value_comparable(oid);
      break;
    case PGS_AGG_AVG: {
      /* The running sum is over the hidden sum column's type; the result
       * is PostgreSQL's avg type for it. */
      uint32_t sum_oid = m->oids[spec->columns[c].avg_sum];
      ok = pgs_sum_supported(sum_oid) && (oid == PGS_OID_NUMERIC || oid == PGS_OID_FLOAT8);
      if (!pgs_sum_supported(sum_oid)) oid = sum_oid;
      break;
    }
    }
    if (ok && spec->columns[c].distinct &&
        !pgs_value_comparable(m->oids[spec->columns[c].distinct_arg])) {
      /* Values of x are told apart by type: only those pgshard knows. */
      fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "cannot merge %s(DISTINCT ...) over type %s across shards", agg_name(m->role[c]),
           type_name(m->oids[spec->columns[c].distinct_arg], buf, sizeof(buf)));
      return false;
    }
    if (!ok) {
      /* Name what the client asked for: an avg's hidden sum or count is
       * the avg's failure. */
      int what = agg == PGS_AGG_NONE ? m->role[c] : agg;
      for (int a = 0; a < n && agg == PGS_AGG_NONE; a++)
        if (spec->columns[a].agg == PGS_AGG_AVG &&
            (spec->columns[a].avg_sum == c || spec->columns[a].avg_count == c))
          what = PGS_AGG_AVG;
      fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "cannot merge %s over type %s across shards",
           agg_name(what), type_name(oid, buf, sizeof(buf)));
      return false;
    }
  }
  for (int i = 0; i < spec->nhaving; i++) {
    const pgs_merge_cond_t *h = &spec->having[i];
    if (h->kind != PGS_COND_CMP || h->left == PGS_COND_NULL || h->right == PGS_COND_NULL) continue;
    uint32_t a = m->oids[h->left], b = m->oids[h->right];
    if (!pgs_value_comparable_with(a, b)) {
      char buf2[32];
      fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "HAVING cannot compare values of types %s and %s across shards",
           type_name(a, buf, sizeof(buf)), type_name(b, buf2, sizeof(buf2)));
      return false;
    }
  }
  return true;
}

/* The collator of a text value of column C whose collation comes from
 * SRC: into *OUT; false (the merge failed, naming WHAT) when it cannot be
 * known or compared here. */
static bool collator_for(pgs_merge_t *m, const pgs_collate_source_t *src, int c, const char *what,
                         const pgs_collator_t **out) {
  char why[sizeof(m->err.message) - 32];
  if (pgs_collate_resolve(m->cat, m->spec->collations, src, m->oids[c], m->utf8, out, why,
                          sizeof(why)) == PGS_OK)
    return true;
  fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s: %s", what, why);
  return false;
}

static bool is_group_column(const pgs_merge_spec_t *spec, int c) {
  for (int g = 0; g < spec->ngroup; g++)
    if (spec->group[g] == c) return true;
  return false;
}

/* Each text ORDER BY key's and min/max's collator, once the columns'
 * types are known. Groups and DISTINCT compare bytes: right for a
 * deterministic collation (equal strings are equal bytes), refused for
 * one known not to be. */
static bool resolve_collations(pgs_merge_t *m) {
  const pgs_merge_spec_t *spec = m->spec;
  const pgs_collate_spec_t *cs = spec->collations;
  if (!m->collate || cs == NULL) return true;
  if (cs->nkeys == spec->nkeys && spec->nkeys > 0) {
    m->key_coll = pgs_xcalloc((size_t)spec->nkeys, sizeof(*m->key_coll));
    for (int k = 0; k < spec->nkeys; k++)
      if (!collator_for(m, &cs->keys[k], spec->keys[k].column, "ORDER BY", &m->key_coll[k]))
        return false;
  }
  if (cs->ncolumns != m->ncols) return true; /* a star: no column is compared */
  if (spec->grouped)
    m->col_coll = pgs_xcalloc((size_t)(m->ncols ? m->ncols : 1), sizeof(*m->col_coll));
  for (int c = 0; c < m->ncols; c++) {
    int agg = spec->grouped ? spec->columns[c].agg : PGS_AGG_NONE;
    if (agg == PGS_AGG_MIN || agg == PGS_AGG_MAX) {
      if (!collator_for(m, &cs->columns[c], c, agg == PGS_AGG_MIN ? "min()" : "max()",
                        &m->col_coll[c]))
        return false;
      continue;
    }
    bool group = is_group_column(spec, c);
    char name[100];
    if ((group || (spec->distinct && c >= spec->nhidden)) && pgs_collate_type(m->oids[c]) &&
        pgs_collate_nondeterministic(m->cat, cs, &cs->columns[c], name, sizeof(name))) {
      fail(m, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "%s: collation \"%s\" (non-deterministic) cannot be compared across shards",
           group ? "GROUP BY" : "DISTINCT", name);
      return false;
    }
  }
  return true;
}

pgs_status_t pgs_merge_describe(pgs_merge_t *m, const uint8_t *body, size_t len) {
  if (m->failed) return PGS_EINVAL;
  pgs_reader_t r;
  pgs_reader_init(&r, body, len);
  int n = pgs_read_i16(&r);
  if (r.bad || n < 0) goto malformed;
  if (m->described && n != m->ncols) {
    fail(m, PGS_SQLSTATE_INTERNAL, "shards return %d and %d columns for one statement", m->ncols,
         n);
    return PGS_EINVAL;
  }
  uint32_t *oids = pgs_xmalloc((size_t)(n ? n : 1) * sizeof(*oids));
  int16_t *formats = pgs_xmalloc((size_t)(n ? n : 1) * sizeof(*formats));
  for (int i = 0; i < n; i++) {
    size_t namelen;
    pgs_read_cstr(&r, &namelen);
    pgs_read_bytes(&r, 6); /* table oid, attnum */
    oids[i] = (uint32_t)pgs_read_i32(&r);
    pgs_read_bytes(&r, 6); /* typlen, typmod */
    formats[i] = pgs_read_i16(&r);
    if (formats[i] != 0 && formats[i] != 1) r.bad = true;
  }
  if (r.bad || pgs_reader_left(&r) != 0) {
    free(oids);
    free(formats);
    goto malformed;
  }
  if (m->described) {
    int c = 0;
    while (c < n && oids[c] == m->oids[c] && formats[c] == m->formats[c]) c++;
    free(oids);
    free(formats);
    if (c < n) {
      fail(m, PGS_SQLSTATE_INTERNAL, "shards return column %d with different types or formats",
           c + 1);
      return PGS_EINVAL;
    }
    return PGS_OK;
  }
  m->described = true;
  m->ncols = n;
  m->oids = oids;
  m->formats = formats;
  m->fields = pgs_xmalloc((size_t)(n ? n : 1) * sizeof(*m->fields));
  if (!check_columns(m) || !resolve_collations(m)) return PGS_EINVAL;
  const pgs_merge_spec_t *spec = m->spec;
  m->int_key = pgs_xcalloc((size_t)(spec->nkeys ? spec->nkeys : 1), sizeof(*m->int_key));
  for (int k = 0; k < spec->nkeys; k++) {
    uint32_t oid = m->oids[spec->keys[k].column];
    m->int_key[k] = oid == PGS_OID_INT2 || oid == PGS_OID_INT4 || oid == PGS_OID_INT8;
  }
  m->by_value = pgs_xcalloc((size_t)(n ? n : 1), sizeof(*m->by_value));
  for (int c = 0; c < n; c++) {
    m->by_value[c] = !pgs_value_bytes_equal(m->oids[c]);
    if (c >= spec->nhidden && m->by_value[c]) m->visible_by_value = true;
  }
  return PGS_OK;

malformed:
  fail(m, PGS_SQLSTATE_PROTOCOL_VIOLATION, "a shard sent a malformed RowDescription");
  return PGS_EINVAL;
}

void pgs_merge_client_rowdesc(const pgs_merge_spec_t *spec, const uint8_t *body, size_t len,
                              pgs_buf_t *out) {
  pgs_reader_t r;
  pgs_reader_init(&r, body, len);
  int n = pgs_read_i16(&r);
  int hide = spec->nhidden;
  for (int i = 0; i < hide && !r.bad; i++) skip_field(&r);
  size_t start = pgs_msg_begin(out, 'T');
  if (hide <= 0 || r.bad || n < hide) {
    /* Nothing to drop, or a description the merge will refuse anyway
     * (pgs_merge_describe checks it): as the shard sent it. */
    pgs_buf_put(out, body, len);
  } else {
    pgs_buf_put_i16(out, (int16_t)(n - hide));
    pgs_buf_put(out, r.p, pgs_reader_left(&r));
  }
  pgs_msg_end(out, start);
}

/* ---- DataRow ---- */

/* Check a DataRow body and find its columns (into FIELDS unless NULL). */
static bool parse_row(pgs_merge_t *m, const uint8_t *body, size_t len, field_t *fields) {
  if (len < 2 || len > INT32_MAX) goto malformed;
  int n = (int16_t)((body[0] << 8) | body[1]);
  if (n != m->ncols) {
    fail(m, PGS_SQLSTATE_PROTOCOL_VIOLATION,
         "a shard sent a DataRow of %d columns for a RowDescription of %d", n, m->ncols);
    return false;
  }
  size_t at = 2;
  for (int i = 0; i < n; i++) {
    if (len - at < 4) goto malformed;
    int32_t flen = (int32_t)pgs_get_u32(body + at);
    at += 4;
    if (flen < -1 || (flen > 0 && (size_t)flen > len - at)) goto malformed;
    if (fields) {
      fields[i].off = (uint32_t)at;
      fields[i].len = flen;
    }
    if (flen > 0) at += (size_t)flen;
  }
  if (at != len) goto malformed;
  return true;

malformed:
  fail(m, PGS_SQLSTATE_PROTOCOL_VIOLATION, "a shard sent a malformed DataRow");
  return false;
}

static size_t held_bytes(const pgs_merge_t *m) {
  const pgs_merge_spec_t *spec = m->spec;
  return m->arena.len + m->nrows * (sizeof(row_t) + (size_t)spec->nkeys * sizeof(sort_key_t)) +
         m->ngroups * (sizeof(group_t) + (size_t)m->ncols * sizeof(cell_t) +
                       (size_t)m->nsums * sizeof(pgs_sum_t)) +
         m->table_cap * sizeof(uint32_t) + m->digit_bytes + m->ndvalues * sizeof(dvalue_t) +
         m->dvalue_table_cap * sizeof(uint32_t);
}

size_t pgs_merge_held(const pgs_merge_t *m) { return held_bytes(m); }

static bool check_cap(pgs_merge_t *m) {
  if (held_bytes(m) <= m->max_bytes) return true;
  fail(m, "54000",
       "cross-shard result is larger than max_merge_bytes (%zu bytes); add a LIMIT or a "
       "condition on the shard key",
       m->max_bytes);
  return false;
}

static bool in_window(pgs_merge_t *m) {
  if (m->seen < (uint64_t)m->offset) {
    m->seen++;
    return false;
  }
  if (m->limit >= 0 && m->sent >= (uint64_t)m->limit) return false;
  m->sent++;
  return true;
}

/* ---- values as = sees them ---- */

/* Whether values A and B (length -1: NULL) of column C are equal as
 * grouping and DISTINCT see them. false with m->failed when one does not
 * parse. */
static bool same_value(pgs_merge_t *m, int c, const uint8_t *a, int32_t alen, const uint8_t *b,
                       int32_t blen) {
  if (alen < 0 || blen < 0) return alen < 0 && blen < 0;
  if (!m->by_value[c]) return alen == blen && (alen == 0 || memcmp(a, b, (size_t)alen) == 0);
  bool equal;
  pgs_value_error_t err;
  if (pgs_value_equal(m->oids[c], m->formats[c], a, (size_t)alen, b, (size_t)blen, &equal, &err) !=
      PGS_OK) {
    fail_value(m, &err);
    return false;
  }
  return equal;
}

/* *H mixed with value V (length -1: NULL) of column C so that equal values
 * mix alike. false with m->failed when it does not parse. */
static bool mix_value(pgs_merge_t *m, int c, const uint8_t *v, int32_t len, uint64_t *h) {
  if (len < 0 || !m->by_value[c]) {
    *h = XXH3_64bits_withSeed(v, len > 0 ? (size_t)len : 0, *h ^ (uint64_t)(uint32_t)len);
    return true;
  }
  pgs_value_error_t err;
  if (pgs_value_hash(m->oids[c], m->formats[c], v, (size_t)len, *h, h, &err) != PGS_OK) {
    fail_value(m, &err);
    return false;
  }
  return true;
}

/* ---- hash table ---- */

static uint64_t entry_hash(const pgs_merge_t *m, uint32_t i) {
  return m->table_rows ? m->rows[i].hash : m->groups[i].hash;
}

/* Room for one more entry (load at most 1/2). */
static void table_reserve(pgs_merge_t *m) {
  if ((m->table_used + 1) * 2 <= m->table_cap) return;
  size_t cap = m->table_cap ? m->table_cap * 2 : 64;
  uint32_t *t = pgs_xcalloc(cap, sizeof(*t));
  for (size_t i = 0; i < m->table_cap; i++) {
    uint32_t e = m->table[i];
    if (!e) continue;
    size_t s = entry_hash(m, e - 1) & (cap - 1);
    while (t[s]) s = (s + 1) & (cap - 1);
    t[s] = e;
  }
  free(m->table);
  m->table = t;
  m->table_cap = cap;
}

static void table_reset(pgs_merge_t *m, bool rows) {
  free(m->table);
  m->table = NULL;
  m->table_cap = m->table_used = 0;
  m->table_rows = rows;
}

/* ---- held rows ---- */

static uint64_t visible_hash(const uint8_t *p, size_t n) { return XXH3_64bits(p, n); }

/* Whether held row R's visible columns equal, value by value, those of
 * the row at hand (bytes BODY, columns in m->fields). */
static bool row_same(pgs_merge_t *m, const row_t *r, const uint8_t *body) {
  const uint8_t *p = m->arena.data + r->off + r->vis;
  for (int c = m->spec->nhidden; c < m->ncols; c++) {
    int32_t len = (int32_t)pgs_get_u32(p);
    p += 4;
    const field_t *f = &m->fields[c];
    if (!same_value(m, c, p, len, body + f->off, f->len)) return false;
    if (len > 0) p += len;
  }
  return true;
}

/* Whether a row with visible bytes P[0..N) (BODY and m->fields: the whole
 * row) and HASH is held already; *SLOT is where it goes if not. */
static bool distinct_seen(pgs_merge_t *m, const uint8_t *body, const uint8_t *p, size_t n,
                          uint64_t hash, size_t *slot) {
  size_t mask = m->table_cap - 1;
  for (size_t s = hash & mask;; s = (s + 1) & mask) {
    uint32_t e = m->table[s];
    if (!e) {
      *slot = s;
      return false;
    }
    const row_t *r = &m->rows[e - 1];
    if (r->hash != hash) continue;
    if (m->visible_by_value) {
      if (row_same(m, r, body)) return true;
      if (m->failed) return false;
    } else if (r->len - r->vis == n && memcmp(m->arena.data + r->off + r->vis, p, n) == 0) {
      return true;
    }
  }
}

/* Copy a checked row (columns in m->fields) into the arena. With DISTINCT
 * (DISTINCT true) a row whose visible columns equal a held row's is not
 * kept: false; false too when a sort key does not decode (m->failed). */
static bool hold_row(pgs_merge_t *m, int part, const uint8_t *body, size_t len, bool distinct,
                     bool in_arena) {
  const pgs_merge_spec_t *spec = m->spec;
  uint32_t vis = spec->nhidden < m->ncols ? m->fields[spec->nhidden].off - 4 : (uint32_t)len;
  uint64_t hash = 0;
  size_t slot = 0;
  if (distinct) {
    table_reserve(m);
    if (m->visible_by_value) {
      hash = 0x9e3779b97f4a7c15ull;
      for (int c = spec->nhidden; c < m->ncols; c++)
        if (!mix_value(m, c, body + m->fields[c].off, m->fields[c].len, &hash)) return false;
    } else {
      hash = visible_hash(body + vis, len - vis);
    }
    if (distinct_seen(m, body, body + vis, len - vis, hash, &slot) || m->failed) return false;
  }
  PGS_ASSERT(m->nrows < UINT32_MAX - 1);
  if (m->nrows == m->rows_cap) {
    m->rows_cap = m->rows_cap ? m->rows_cap * 2 : 64;
    m->rows = pgs_xrealloc(m->rows, m->rows_cap * sizeof(*m->rows));
    if (spec->nkeys)
      m->keyf = pgs_xrealloc(m->keyf, m->rows_cap * (size_t)spec->nkeys * sizeof(*m->keyf));
  }
  for (int k = 0; k < spec->nkeys; k++) {
    sort_key_t *keys = &m->keyf[m->nrows * (size_t)spec->nkeys];
    const field_t *f = &m->fields[spec->keys[k].column];
    keys[k].off = f->off;
    keys[k].len = f->len;
    keys[k].i = 0;
    if (m->int_key[k] && f->len >= 0) {
      int c = spec->keys[k].column;
      pgs_value_error_t err;
      if (pgs_value_int8(m->oids[c], m->formats[c], body + f->off, (size_t)f->len, &keys[k].i,
                         &err) != PGS_OK) {
        fail_value(m, &err);
        return false;
      }
    }
  }
  /* IN_ARENA: BODY is the arena's last bytes already (a group's row). */
  size_t off;
  if (in_arena) {
    off = (size_t)(body - m->arena.data);
  } else {
    off = m->arena.len;
    pgs_buf_put(&m->arena, body, len);
  }
  row_t *r = &m->rows[m->nrows];
  r->off = off;
  r->len = (uint32_t)len;
  r->vis = vis;
  r->part = (uint32_t)part;
  r->hash = hash;
  m->nrows++;
  if (distinct) {
    m->table[slot] = (uint32_t)m->nrows;
    m->table_used++;
  }
  return true;
}

/* ---- groups ---- */

/* The hash of the row at hand's group (columns in m->fields); false with
 * m->failed when a value does not parse. */
static bool group_hash(pgs_merge_t *m, const uint8_t *body, uint64_t *hash) {
  const pgs_merge_spec_t *spec = m->spec;
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (int g = 0; g < spec->ngroup; g++) {
    const field_t *f = &m->fields[spec->group[g]];
    if (!mix_value(m, spec->group[g], body + f->off, f->len, &h)) return false;
  }
  *hash = h;
  return true;
}

/* The group of the row at hand (columns in m->fields), or -1 with *SLOT
 * where a new one goes (or m->failed). */
static long group_find(pgs_merge_t *m, const uint8_t *body, uint64_t hash, size_t *slot) {
  const pgs_merge_spec_t *spec = m->spec;
  size_t mask = m->table_cap - 1;
  for (size_t s = hash & mask;; s = (s + 1) & mask) {
    uint32_t e = m->table[s];
    if (!e) {
      *slot = s;
      return -1;
    }
    if (m->groups[e - 1].hash != hash) continue;
    const cell_t *cells = &m->cells[(size_t)(e - 1) * (size_t)m->ncols];
    int g = 0;
    for (; g < spec->ngroup; g++) {
      int c = spec->group[g];
      const field_t *f = &m->fields[c];
      if (!same_value(m, c, m->arena.data + cells[c].off, cells[c].len, body + f->off, f->len))
        break;
    }
    if (m->failed) return -1;
    if (g == spec->ngroup) return (long)(e - 1);
  }
}

static bool sum_add(pgs_merge_t *m, pgs_sum_t *sum, int c, const uint8_t *value, size_t len) {
  pgs_value_error_t err;
  int cap = sum->cap;
  pgs_status_t st = pgs_sum_add(sum, m->formats[c], value, len, &err);
  if (sum->cap > cap) m->digit_bytes += (size_t)(sum->cap - cap) * sizeof(int16_t);
  if (st != PGS_OK) {
    fail_value(m, &err);
    return false;
  }
  return true;
}

static bool count_add(pgs_merge_t *m, cell_t *cell, int c, const uint8_t *value, size_t len) {
  pgs_value_error_t err;
  int64_t v;
  if (pgs_value_int8(m->oids[c], m->formats[c], value, len, &v, &err) != PGS_OK) {
    fail_value(m, &err);
    return false;
  }
  if (__builtin_add_overflow(cell->count, v, &cell->count)) {
    fail(m, "22003", "bigint out of range");
    return false;
  }
  return true;
}

/* Room for one more value in the DISTINCT aggregates' table. */
static void dvalue_reserve(pgs_merge_t *m) {
  if ((m->ndvalues + 1) * 2 <= m->dvalue_table_cap) return;
  size_t cap = m->dvalue_table_cap ? m->dvalue_table_cap * 2 : 64;
  uint32_t *t = pgs_xcalloc(cap, sizeof(*t));
  for (size_t i = 0; i < m->ndvalues; i++) {
    size_t s = m->dvalues[i].hash & (cap - 1);
    while (t[s]) s = (s + 1) & (cap - 1);
    t[s] = (uint32_t)(i + 1);
  }
  free(m->dvalue_table);
  m->dvalue_table = t;
  m->dvalue_table_cap = cap;
}

/* The row at hand for DISTINCT aggregate column C of group GI: 1 when
 * its x is new to the group (and now remembered), 0 when that x was
 * counted already or the row counts nothing (a NULL sum, a zero count:
 * x NULL, or no row of x passed the aggregate's FILTER on that shard),
 * -1 when it failed. */
static int distinct_new(pgs_merge_t *m, size_t gi, int c, const uint8_t *body) {
  const field_t *f = &m->fields[c];
  if (f->len < 0) return 0;
  if (m->role[c] == PGS_AGG_COUNT) {
    int64_t v;
    pgs_value_error_t err;
    if (pgs_value_int8(m->oids[c], m->formats[c], body + f->off, (size_t)f->len, &v, &err) !=
        PGS_OK) {
      fail_value(m, &err);
      return -1;
    }
    if (v == 0) return 0;
  }
  int a = m->spec->columns[c].distinct_arg;
  const field_t *x = &m->fields[a];
  uint64_t hash = ((uint64_t)gi * 0x9e3779b97f4a7c15ull) ^ (uint64_t)c;
  if (!mix_value(m, a, body + x->off, x->len, &hash)) return -1;
  if (m->ndvalues >= UINT32_MAX - 1) {
    fail(m, "54000", "too many values of DISTINCT aggregates to merge across shards");
    return -1;
  }
  dvalue_reserve(m);
  if (m->ndvalues == m->dvalues_cap) {
    m->dvalues_cap = m->dvalues_cap ? m->dvalues_cap * 2 : 32;
    m->dvalues = pgs_xrealloc(m->dvalues, m->dvalues_cap * sizeof(*m->dvalues));
  }
  size_t mask = m->dvalue_table_cap - 1, s = hash & mask;
  for (;; s = (s + 1) & mask) {
    uint32_t e = m->dvalue_table[s];
    if (!e) break;
    const dvalue_t *v = &m->dvalues[e - 1];
    if (v->hash != hash || v->group != gi || v->column != c) continue;
    if (same_value(m, a, m->arena.data + v->off, v->len, body + x->off, x->len)) return 0;
    if (m->failed) return -1;
  }
  m->dvalues[m->ndvalues] = (dvalue_t){
      .hash = hash, .off = m->arena.len, .len = x->len, .group = (uint32_t)gi, .column = c};
  if (x->len > 0) pgs_buf_put(&m->arena, body + x->off, (size_t)x->len);
  m->dvalue_table[s] = (uint32_t)++m->ndvalues;
  return 1;
}

/* Whether the row at hand counts in column C of group GI: it does unless
 * C is a DISTINCT aggregate that has counted its x (*FAILED then says
 * whether that failed). */
static bool counts(pgs_merge_t *m, size_t gi, int c, const uint8_t *body, bool *failed) {
  *failed = false;
  if (!m->spec->columns[c].distinct) return true;
  int r = distinct_new(m, gi, c, body);
  *failed = r < 0;
  return r > 0;
}

static bool group_new(pgs_merge_t *m, int part, const uint8_t *body, size_t len, uint64_t hash,
                      size_t slot) {
  int n = m->ncols;
  PGS_ASSERT(m->ngroups < UINT32_MAX - 1);
  if (m->ngroups == m->groups_cap) {
    size_t cap = m->groups_cap ? m->groups_cap * 2 : 16;
    m->groups = pgs_xrealloc(m->groups, cap * sizeof(*m->groups));
    m->cells = pgs_xrealloc(m->cells, cap * (size_t)n * sizeof(*m->cells));
    if (m->nsums) m->sums = pgs_xrealloc(m->sums, cap * (size_t)m->nsums * sizeof(*m->sums));
    m->groups_cap = cap;
  }
  size_t gi = m->ngroups++;
  m->groups[gi].hash = hash;
  m->groups[gi].part = (uint32_t)part;
  m->table[slot] = (uint32_t)m->ngroups;
  m->table_used++;
  size_t base = m->arena.len;
  pgs_buf_put(&m->arena, body, len);
  cell_t *cells = &m->cells[gi * (size_t)n];
  pgs_sum_t *sums = m->nsums ? &m->sums[gi * (size_t)m->nsums] : NULL;
  for (int c = 0; c < n; c++) {
    const field_t *f = &m->fields[c];
    cells[c].off = base + f->off;
    cells[c].len = f->len;
    cells[c].count = 0;
    if (m->role[c] == PGS_AGG_SUM) pgs_sum_init(&sums[m->sum_slot[c]], m->oids[c]);
  }
  for (int c = 0; c < n; c++) {
    const field_t *f = &m->fields[c];
    bool failed;
    if (f->len < 0 || (m->role[c] != PGS_AGG_COUNT && m->role[c] != PGS_AGG_SUM)) continue;
    if (!counts(m, gi, c, body, &failed)) {
      if (failed) return false;
      continue;
    }
    if (m->role[c] == PGS_AGG_COUNT && !count_add(m, &cells[c], c, body + f->off, (size_t)f->len))
      return false;
    if (m->role[c] == PGS_AGG_SUM &&
        !sum_add(m, &sums[m->sum_slot[c]], c, body + f->off, (size_t)f->len))
      return false;
  }
  return true;
}

static bool group_update(pgs_merge_t *m, size_t gi, const uint8_t *body) {
  int n = m->ncols;
  cell_t *cells = &m->cells[gi * (size_t)n];
  pgs_sum_t *sums = m->nsums ? &m->sums[gi * (size_t)m->nsums] : NULL;
  for (int c = 0; c < n; c++) {
    const field_t *f = &m->fields[c];
    if (f->len < 0) continue; /* NULL never changes an aggregate */
    const uint8_t *v = body + f->off;
    size_t vlen = (size_t)f->len;
    bool failed;
    switch (m->role[c]) {
    case PGS_AGG_COUNT:
      if (counts(m, gi, c, body, &failed) && !count_add(m, &cells[c], c, v, vlen)) return false;
      if (failed) return false;
      break;
    case PGS_AGG_SUM:
      if (counts(m, gi, c, body, &failed) && !sum_add(m, &sums[m->sum_slot[c]], c, v, vlen))
        return false;
      if (failed) return false;
      break;
    case PGS_AGG_MIN:
    case PGS_AGG_MAX: {
      if (cells[c].len >= 0) {
        int r;
        pgs_value_error_t err;
        if (m->col_coll && m->col_coll[c]) {
          r = pgs_collate_compare(m->col_coll[c], m->oids[c], v, vlen, m->arena.data + cells[c].off,
                                  (size_t)cells[c].len);
        } else if (pgs_value_compare(m->oids[c], m->formats[c], v, vlen,
                                     m->arena.data + cells[c].off, (size_t)cells[c].len, &r,
                                     &err) != PGS_OK) {
          fail_value(m, &err);
          return false;
        }
        if (m->role[c] == PGS_AGG_MIN ? r >= 0 : r <= 0) break;
      }
      cells[c].off = m->arena.len;
      cells[c].len = f->len;
      pgs_buf_put(&m->arena, v, vlen);
      break;
    }
    default:
      break; /* NONE keeps the first value; AVG is computed at the end */
    }
  }
  return true;
}

/* Start a value in the arena: its length comes when it is known. */
static size_t value_begin(pgs_buf_t *b) {
  size_t at = b->len;
  pgs_buf_put_i32(b, 0);
  return at;
}

static void value_end(pgs_buf_t *b, size_t at) {
  pgs_set_u32(b->data + at, (uint32_t)(b->len - at - 4));
}

/* A copy of arena bytes at OFF to the arena's end (which may move them). */
static void arena_copy(pgs_buf_t *b, size_t off, size_t len) {
  pgs_buf_reserve(b, len);
  memcpy(b->data + b->len, b->data + off, len);
  b->len += len;
}

/* ---- HAVING ---- */

/* The HAVING node at *AT over the merged row ROW (its columns in
 * m->fields): 1 true, 0 false, -1 NULL, in SQL's three-valued logic; *AT
 * moves past the node and its operands. 0 with m->failed when two values
 * do not compare. */
static int having_eval(pgs_merge_t *m, const uint8_t *row, int *at) {
  const pgs_merge_cond_t *c = &m->spec->having[(*at)++];
  switch (c->kind) {
  case PGS_COND_AND:
  case PGS_COND_OR: {
    /* Every operand is read, to move past it. */
    int decides = c->kind == PGS_COND_AND ? 0 : 1, r = !decides;
    for (int i = 0; i < c->nargs; i++) {
      int v = having_eval(m, row, at);
      if (v == decides)
        r = v;
      else if (v < 0 && r != decides)
        r = -1;
    }
    return r;
  }
  case PGS_COND_NOT: {
    int v = having_eval(m, row, at);
    return v < 0 ? -1 : !v;
  }
  case PGS_COND_IS_NULL:
    return c->left == PGS_COND_NULL || m->fields[c->left].len < 0;
  case PGS_COND_CMP: {
    if (c->left == PGS_COND_NULL || c->right == PGS_COND_NULL) return -1;
    const field_t *a = &m->fields[c->left], *b = &m->fields[c->right];
    if (a->len < 0 || b->len < 0) return -1;
    int r;
    pgs_value_error_t err;
    if (pgs_value_compare_mixed(m->oids[c->left], m->formats[c->left], row + a->off, (size_t)a->len,
                                m->oids[c->right], m->formats[c->right], row + b->off,
                                (size_t)b->len, &r, &err) != PGS_OK) {
      fail_value(m, &err);
      return 0;
    }
    switch (c->op) {
    case PGS_CMP_EQ:
      return r == 0;
    case PGS_CMP_NE:
      return r != 0;
    case PGS_CMP_LT:
      return r < 0;
    case PGS_CMP_LE:
      return r <= 0;
    case PGS_CMP_GT:
      return r > 0;
    default:
      return r >= 0;
    }
  }
  }
  return 0;
}

/* Each group's final row, in the order groups were first seen, as a held
 * row (HAVING and DISTINCT applied here). */
static bool groups_to_rows(pgs_merge_t *m) {
  const pgs_merge_spec_t *spec = m->spec;
  int n = m->ncols;
  if (spec->distinct) table_reset(m, true);
  for (size_t gi = 0; gi < m->ngroups; gi++) {
    const cell_t *cells = &m->cells[gi * (size_t)n];
    const pgs_sum_t *sums = m->nsums ? &m->sums[gi * (size_t)m->nsums] : NULL;
    size_t base = m->arena.len;
    pgs_buf_put_i16(&m->arena, (int16_t)n);
    for (int c = 0; c < n; c++) {
      size_t at = value_begin(&m->arena);
      int32_t len = 0;
      switch (m->role[c]) {
      case PGS_AGG_COUNT:
        pgs_value_put_int8(cells[c].count, m->formats[c], &m->arena);
        break;
      case PGS_AGG_SUM: {
        const pgs_sum_t *sum = &sums[m->sum_slot[c]];
        if (sum->any)
          pgs_sum_output(sum, m->formats[c], &m->arena);
        else
          len = -1;
        break;
      }
      case PGS_AGG_AVG: {
        const pgs_merge_column_t *col = &spec->columns[c];
        int64_t count = cells[col->avg_count].count;
        if (count == 0) {
          len = -1;
          break;
        }
        pgs_value_error_t err;
        if (pgs_value_avg(&sums[m->sum_slot[col->avg_sum]], count, m->oids[c], m->formats[c],
                          &m->arena, &err) != PGS_OK) {
          fail_value(m, &err);
          return false;
        }
        break;
      }
      default: /* NONE, MIN, MAX: the value kept */
        if (cells[c].len < 0)
          len = -1;
        else
          arena_copy(&m->arena, cells[c].off, (size_t)cells[c].len);
        break;
      }
      if (len < 0) {
        m->arena.len = at;
        pgs_buf_put_i32(&m->arena, -1);
        m->fields[c].off = (uint32_t)(m->arena.len - base);
        m->fields[c].len = -1;
      } else {
        value_end(&m->arena, at);
        m->fields[c].off = (uint32_t)(at + 4 - base);
        m->fields[c].len = (int32_t)(m->arena.len - at - 4);
      }
    }
    size_t len = m->arena.len - base;
    if (spec->nhaving > 0) {
      int at = 0;
      int keep = having_eval(m, m->arena.data + base, &at);
      if (m->failed) return false;
      if (keep != 1) {
        m->arena.len = base;
        continue;
      }
    }
    if (!hold_row(m, (int)m->groups[gi].part, m->arena.data + base, len, spec->distinct, true)) {
      if (m->failed) return false;
      m->arena.len = base; /* a duplicate */
    }
    if (!check_cap(m)) return false;
  }
  return true;
}

/* ---- ORDER BY ---- */

static int sign(int r) { return (r > 0) - (r < 0); }

/* Rows A and B (indexes) in ORDER BY order; ties by part, then arrival. */
static int row_compare(pgs_merge_t *m, uint32_t a, uint32_t b) {
  const pgs_merge_spec_t *spec = m->spec;
  const sort_key_t *fa = &m->keyf[(size_t)a * (size_t)spec->nkeys];
  const sort_key_t *fb = &m->keyf[(size_t)b * (size_t)spec->nkeys];
  const uint8_t *ra = m->arena.data + m->rows[a].off;
  const uint8_t *rb = m->arena.data + m->rows[b].off;
  for (int k = 0; k < spec->nkeys; k++) {
    const pgs_merge_key_t *key = &spec->keys[k];
    int r;
    if (fa[k].len < 0 || fb[k].len < 0) {
      if (fa[k].len < 0 && fb[k].len < 0) continue;
      r = (fa[k].len < 0) == key->nulls_first ? -1 : 1;
      return r;
    }
    int c = key->column;
    pgs_value_error_t err;
    if (m->int_key[k]) {
      r = (fa[k].i > fb[k].i) - (fa[k].i < fb[k].i);
    } else if (m->key_coll && m->key_coll[k]) {
      r = pgs_collate_compare(m->key_coll[k], m->oids[c], ra + fa[k].off, (size_t)fa[k].len,
                              rb + fb[k].off, (size_t)fb[k].len);
    } else if (pgs_value_compare(m->oids[c], m->formats[c], ra + fa[k].off, (size_t)fa[k].len,
                                 rb + fb[k].off, (size_t)fb[k].len, &r, &err) != PGS_OK) {
      fail_value(m, &err);
      return 0;
    }
    r = sign(r);
    if (key->desc) r = -r;
    if (r) return r;
  }
  if (m->rows[a].part != m->rows[b].part) return m->rows[a].part < m->rows[b].part ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/*
 * Sort IDX[0..N) and keep the first KEEP: a natural merge sort. The input
 * is ordered by part and arrival, so every part that arrived sorted is one
 * run; runs are merged pairwise, and a merged run never grows past KEEP
 * (what lies beyond can never be among the first KEEP). Returns how many
 * of IDX hold the result (min(N, KEEP)), or 0 after a failure. TMP has
 * room for N, BOUNDS and NEXT for N + 1.
 */
static size_t sort_rows(pgs_merge_t *m, uint32_t *idx, size_t n, size_t keep, uint32_t *tmp,
                        size_t *bounds, size_t *next) {
  if (n < 2) return n;
  /* Runs, each cut to KEEP in place: [bounds[i], bounds[i+1]) after
   * compaction. */
  size_t nruns = 0, w = 0, start = 0;
  for (size_t i = 1; i <= n && !m->failed; i++) {
    if (i < n && row_compare(m, idx[i - 1], idx[i]) <= 0) continue;
    size_t len = i - start;
    if (len > keep) len = keep;
    bounds[nruns++] = w;
    memmove(idx + w, idx + start, len * sizeof(*idx));
    w += len;
    start = i;
  }
  bounds[nruns] = w;
  while (nruns > 1 && !m->failed) {
    size_t out = 0, nnext = 0;
    for (size_t r = 0; r < nruns; r += 2) {
      next[nnext++] = out;
      size_t a = bounds[r], ae = bounds[r + 1];
      size_t b = r + 1 < nruns ? bounds[r + 1] : ae, be = r + 1 < nruns ? bounds[r + 2] : ae;
      size_t limit = keep < n - out ? out + keep : n;
      while (out < limit && a < ae && b < be && !m->failed) {
        if (row_compare(m, idx[a], idx[b]) <= 0)
          tmp[out++] = idx[a++];
        else
          tmp[out++] = idx[b++];
      }
      while (out < limit && a < ae) tmp[out++] = idx[a++];
      while (out < limit && b < be) tmp[out++] = idx[b++];
    }
    next[nnext] = out;
    memcpy(idx, tmp, out * sizeof(*idx));
    memcpy(bounds, next, (nnext + 1) * sizeof(*bounds));
    nruns = nnext;
  }
  return m->failed ? 0 : bounds[1];
}

/* ---- rows in, result out ---- */

/* The row at hand (columns in m->fields) into its group. */
static bool group_row(pgs_merge_t *m, int part, const uint8_t *body, size_t len) {
  table_reserve(m);
  uint64_t hash;
  if (!group_hash(m, body, &hash)) return false;
  size_t slot;
  long gi = group_find(m, body, hash, &slot);
  if (m->failed) return false;
  return gi < 0 ? group_new(m, part, body, len, hash, slot) : group_update(m, (size_t)gi, body);
}

/* Aggregates without GROUP BY are one group even over no rows (count 0,
 * the others NULL): made up from a row of NULLs when no shard sent one. */
static bool one_group(pgs_merge_t *m) {
  pgs_buf_t row;
  pgs_buf_init(&row);
  pgs_buf_put_i16(&row, (int16_t)m->ncols);
  for (int c = 0; c < m->ncols; c++) pgs_buf_put_i32(&row, -1);
  bool ok = parse_row(m, row.data, row.len, m->fields) && group_row(m, 0, row.data, row.len) &&
            check_cap(m);
  pgs_buf_free(&row);
  return ok;
}

/* Whether held rows A and B have equal DISTINCT ON keys. */
static bool same_key(pgs_merge_t *m, uint32_t a, uint32_t b) {
  const pgs_merge_spec_t *spec = m->spec;
  const sort_key_t *fa = &m->keyf[(size_t)a * (size_t)spec->nkeys];
  const sort_key_t *fb = &m->keyf[(size_t)b * (size_t)spec->nkeys];
  const uint8_t *ra = m->arena.data + m->rows[a].off;
  const uint8_t *rb = m->arena.data + m->rows[b].off;
  for (int k = spec->nkeys - spec->distinct_on; k < spec->nkeys; k++)
    if (!same_value(m, spec->keys[k].column, ra + fa[k].off, fa[k].len, rb + fb[k].off, fb[k].len))
      return false;
  return true;
}

/* The merge has failed: nothing it holds is needed any more. */
static pgs_merge_verdict_t failed(pgs_merge_t *m) {
  release_rows(m);
  return PGS_MERGE_FAILED;
}

pgs_merge_verdict_t pgs_merge_row(pgs_merge_t *m, int part, const uint8_t *body, size_t len) {
  if (m->failed) return PGS_MERGE_FAILED;
  const pgs_merge_spec_t *spec = m->spec;
  if (part < 0 || part >= m->nparts || m->finished) {
    fail(m, PGS_SQLSTATE_INTERNAL, "merge: row of part %d of %d after the end", part, m->nparts);
    return PGS_MERGE_FAILED;
  }
  if (!m->described) {
    fail(m, PGS_SQLSTATE_PROTOCOL_VIOLATION, "a shard sent a DataRow before a RowDescription");
    return PGS_MERGE_FAILED;
  }
  if (m->limit == 0 && m->mode != MODE_PASS) {
    /* LIMIT 0: no row is part of the result, and as in PostgreSQL (whose
     * Limit node never asks for one) nothing is computed over them. */
    return parse_row(m, body, len, NULL) ? PGS_MERGE_DROP : PGS_MERGE_FAILED;
  }
  switch (m->mode) {
  case MODE_PASS:
    if (!parse_row(m, body, len, NULL)) return PGS_MERGE_FAILED;
    return in_window(m) ? PGS_MERGE_PASS : PGS_MERGE_DROP;
  case MODE_HOLD:
    if (!parse_row(m, body, len, m->fields)) return failed(m);
    if (!spec->distinct && spec->nkeys == 0) {
      /* Concatenation with hidden columns: the window as rows come. */
      if (!in_window(m)) return PGS_MERGE_DROP;
    } else if (spec->nkeys == 0 && m->limit >= 0 &&
               m->nrows >= (uint64_t)m->offset + (uint64_t)m->limit) {
      return PGS_MERGE_DROP; /* DISTINCT in arrival order: enough rows */
    }
    if (!hold_row(m, part, body, len, spec->distinct, false))
      return m->failed ? failed(m) : PGS_MERGE_DROP;
    return check_cap(m) ? PGS_MERGE_HELD : failed(m);
  case MODE_GROUP: {
    if (!parse_row(m, body, len, m->fields)) return failed(m);
    return group_row(m, part, body, len) && check_cap(m) ? PGS_MERGE_HELD : failed(m);
  }
  }
  return PGS_MERGE_FAILED;
}

pgs_status_t pgs_merge_finish(pgs_merge_t *m, pgs_buf_t *out, uint64_t *rows) {
  const pgs_merge_spec_t *spec = m->spec;
  *rows = 0;
  if (m->failed) return PGS_EINVAL;
  PGS_ASSERT(!m->finished);
  m->finished = true;
  if (m->mode == MODE_PASS) {
    *rows = m->sent;
    return PGS_OK;
  }
  if (m->mode == MODE_GROUP && spec->one_group && m->ngroups == 0 && m->described &&
      m->limit != 0 && !one_group(m)) {
    release_rows(m);
    return PGS_EINVAL;
  }
  if (m->mode == MODE_GROUP && !groups_to_rows(m)) {
    release_rows(m);
    return PGS_EINVAL;
  }

  size_t n = m->nrows;
  /* One block of scratch: the order (idx), and for ORDER BY the merge's
   * second array and run bounds (also the counting sort's part starts). */
  size_t nb = (n > (size_t)m->nparts ? n : (size_t)m->nparts) + 1;
  size_t scratch = n * sizeof(uint32_t) + (spec->nkeys > 0 ? n * sizeof(uint32_t) : 0);
  scratch = (scratch + 7) & ~(size_t)7;
  void *block = pgs_xmalloc(scratch + (spec->nkeys > 0 ? 2 * nb * sizeof(size_t) : 0));
  uint32_t *idx = block;
  size_t first = 0, end = n;
  bool windowed = m->mode == MODE_HOLD && !spec->distinct && spec->nkeys == 0;
  uint64_t keep = UINT64_MAX;
  if (!windowed && m->limit >= 0) keep = (uint64_t)m->offset + (uint64_t)m->limit;
  if (spec->nkeys > 0) {
    uint32_t *tmp = idx + n;
    size_t *bounds = (size_t *)((uint8_t *)block + scratch), *next = bounds + nb;
    /* Part by part, each in arrival order: a counting sort. */
    size_t *at = bounds;
    memset(at, 0, ((size_t)m->nparts + 1) * sizeof(*at));
    for (size_t i = 0; i < n; i++) at[m->rows[i].part + 1]++;
    for (int p = 0; p < m->nparts; p++) at[p + 1] += at[p];
    for (size_t i = 0; i < n; i++) idx[at[m->rows[i].part]++] = (uint32_t)i;
    /* DISTINCT ON drops rows after the sort: every one is sorted then. */
    uint64_t sorted = spec->distinct_on > 0 ? UINT64_MAX : keep;
    end = sort_rows(m, idx, n, sorted > SIZE_MAX ? SIZE_MAX : (size_t)sorted, tmp, bounds, next);
    if (spec->distinct_on > 0 && !m->failed) {
      size_t w = 0;
      for (size_t i = 0; i < end && !m->failed; i++)
        if (w == 0 || !same_key(m, idx[w - 1], idx[i])) idx[w++] = idx[i];
      end = w;
    }
    if (m->failed) {
      free(block);
      release_rows(m);
      return PGS_EINVAL;
    }
  } else {
    for (size_t i = 0; i < n; i++) idx[i] = (uint32_t)i;
  }
  if (!windowed) {
    first = (uint64_t)m->offset < end ? (size_t)m->offset : end;
    if (keep < end) end = (size_t)keep;
  }
  int16_t visible = (int16_t)(m->ncols - spec->nhidden);
  size_t total = 0;
  for (size_t i = first; i < end; i++) total += 7 + (m->rows[idx[i]].len - m->rows[idx[i]].vis);
  pgs_buf_reserve(out, total);
  for (size_t i = first; i < end; i++) {
    const row_t *r = &m->rows[idx[i]];
    size_t start = pgs_msg_begin(out, 'D');
    pgs_buf_put_i16(out, visible);
    pgs_buf_put(out, m->arena.data + r->off + r->vis, r->len - r->vis);
    pgs_msg_end(out, start);
  }
  free(block);
  *rows = end - first;
  return PGS_OK;
}
