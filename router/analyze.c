/*
 * analyze.c — what a statement is and where its shard keys are (analyze.h).
 *
 * libpg_query parses the lexer's normalised text (literals are $N there, so
 * a key is always a parameter number) into its protobuf tree; this file
 * walks that tree. The statement kinds and the statement shapes that yield
 * keys are handled by hand; everything else is walked generically through
 * protobuf-c's field descriptors, so a subquery, a function call or a
 * table reference nested anywhere is still seen. What is not understood
 * is treated conservatively: a sharded table reference without a key
 * found for it makes the statement go to every shard, a function not on
 * the read-only list below makes a SELECT a write.
 *
 * The model: every reference to a sharded table in a FROM list (or as an
 * UPDATE/DELETE/MERGE target) is a "ref" that belongs to one query level
 * ("scope"). A WHERE or JOIN ... ON clause restricts the rows of the refs
 * it filters (all of its scope's for WHERE and inner joins, only the
 * nullable side of an outer join); `key = $n` conditions under AND/OR/IN/
 * ANY in such a clause give those refs keys. Equalities between two key
 * columns (joins, correlated subqueries) are edges along which a key found
 * for one ref is copied to the other, in the direction the clause
 * restricts. The statement is keyed only if every ref is; INSERT targets
 * are refs whose keys are their rows.
 *
 * All memory is the analysis' own; the plan returned is one allocation.
 */
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/copy.h"
#include "pgshard/merge.h"
#include "pgshard/shardmap.h"

/* A backstop for the walk below: the tree's depth was checked before it
 * was unpacked (tree_depth_ok), and the walk enters at most two frames
 * per level. */
#define MAX_DEPTH (2 * PGS_ANALYZE_MAX_DEPTH + 16)
/* Array keys (= ANY($1)) count as this many keys when choosing the
 * narrowest of several AND-ed conditions. */
#define ARRAY_WEIGHT 1000

/* ---- functions known to be read-only ----
 *
 * A SELECT calling any other function goes to a primary (DESIGN.md: "functions
 * not known read-only"): user functions may write, and so do built-ins such
 * as nextval, setval, set_config, txid_current, pg_advisory_lock,
 * pg_notify, lo_*, pg_terminate_backend. Names are matched unqualified or
 * qualified with pg_catalog (the grammar itself writes pg_catalog.extract,
 * pg_catalog.btrim, ...); any other schema is a user function. Volatile but
 * side-effect free functions (random, clock_timestamp, pg_sleep,
 * gen_random_uuid) are reads. Keep sorted in strcmp order (binary search;
 * test_analyze calls every one of them). */
/* clang-format off */
static const char *const read_only_functions[] = {
    "abs", "acos", "age", "array_agg", "array_append", "array_cat", "array_length", "array_lower",
    "array_position", "array_positions", "array_prepend", "array_remove", "array_replace",
    "array_to_json", "array_to_string", "array_upper", "ascii", "asin", "atan", "atan2", "avg",
    "bit_and", "bit_length", "bit_or", "bool", "bool_and", "bool_or", "btrim", "cardinality",
    "cbrt", "ceil", "ceiling", "char_length", "character_length", "chr", "clock_timestamp",
    "coalesce", "col_description", "concat", "concat_ws", "corr", "cos", "count", "covar_pop",
    "covar_samp", "cume_dist", "current_database", "current_schema", "current_schemas",
    "current_setting", "date", "date_part", "date_trunc", "daterange", "decode", "degrees",
    "dense_rank", "div", "encode", "every", "exp", "extract", "first_value", "float4", "float8",
    "floor", "format", "format_type", "gen_random_uuid", "generate_series", "generate_subscripts",
    "greatest", "has_column_privilege", "has_database_privilege", "has_function_privilege",
    "has_schema_privilege", "has_sequence_privilege", "has_table_privilege", "inet_client_addr",
    "inet_client_port", "inet_server_addr", "inet_server_port", "initcap", "int2", "int4",
    "int4range", "int8", "int8range", "interval", "is_normalized", "isempty", "isfinite",
    "json_agg", "json_array_elements", "json_array_elements_text", "json_array_length",
    "json_build_array", "json_build_object", "json_each", "json_each_text", "json_extract_path",
    "json_extract_path_text", "json_object", "json_object_agg", "json_object_keys", "json_typeof",
    "jsonb_agg", "jsonb_array_elements", "jsonb_array_elements_text", "jsonb_array_length",
    "jsonb_build_array", "jsonb_build_object", "jsonb_each", "jsonb_each_text",
    "jsonb_extract_path", "jsonb_extract_path_text", "jsonb_insert", "jsonb_object",
    "jsonb_object_agg", "jsonb_object_keys", "jsonb_path_exists", "jsonb_path_match",
    "jsonb_path_query", "jsonb_path_query_array", "jsonb_path_query_first", "jsonb_pretty",
    "jsonb_set", "jsonb_strip_nulls", "jsonb_typeof", "justify_days", "justify_hours",
    "justify_interval", "lag", "last_value", "lead", "least", "left", "length", "like_escape", "ln",
    "log", "log10", "lower", "lower_inc", "lower_inf", "lpad", "ltrim", "make_date",
    "make_interval", "make_time", "make_timestamp", "make_timestamptz", "max", "md5", "min", "mod",
    "mode", "normalize", "now", "nth_value", "ntile", "nullif", "num_nonnulls", "num_nulls",
    "numeric", "numrange", "obj_description", "octet_length", "overlaps", "overlay", "percent_rank",
    "percentile_cont", "percentile_disc", "pg_backend_pid", "pg_collation_is_visible",
    "pg_column_is_updatable", "pg_column_size", "pg_database_size", "pg_describe_object",
    "pg_encoding_to_char", "pg_function_is_visible", "pg_get_constraintdef", "pg_get_expr",
    "pg_get_function_arguments", "pg_get_function_identity_arguments", "pg_get_function_result",
    "pg_get_indexdef", "pg_get_keywords", "pg_get_partkeydef", "pg_get_ruledef",
    "pg_get_serial_sequence", "pg_get_triggerdef", "pg_get_userbyid", "pg_get_viewdef",
    "pg_indexes_size", "pg_is_in_recovery", "pg_last_wal_replay_lsn", "pg_postmaster_start_time",
    "pg_relation_is_updatable", "pg_relation_size", "pg_size_pretty", "pg_sleep",
    "pg_table_is_visible", "pg_table_size", "pg_total_relation_size", "pg_type_is_visible",
    "pg_typeof", "phraseto_tsquery", "pi", "plainto_tsquery", "position", "power", "quote_ident",
    "quote_literal", "quote_nullable", "radians", "random", "rank", "regexp_match",
    "regexp_matches", "regexp_replace", "regexp_split_to_array", "regexp_split_to_table", "repeat",
    "replace", "reverse", "right", "round", "row_number", "row_to_json", "rpad", "rtrim",
    "setweight", "sha224", "sha256", "sha384", "sha512", "shobj_description", "sign",
    "similar_to_escape", "sin", "split_part", "sqrt", "starts_with", "statement_timestamp",
    "stddev", "stddev_pop", "stddev_samp", "string_agg", "string_to_array", "strpos", "substr",
    "substring", "sum", "tan", "text", "timeofday", "timestamp", "timestamptz", "timezone",
    "to_char", "to_date", "to_json", "to_jsonb", "to_number", "to_regclass", "to_regnamespace",
    "to_regproc", "to_regtype", "to_timestamp", "to_tsquery", "to_tsvector",
    "transaction_timestamp", "translate", "trunc", "ts_headline", "ts_rank", "ts_rank_cd",
    "tsrange", "tstzrange", "unnest", "upper", "upper_inc", "upper_inf", "uuid", "var_pop",
    "var_samp", "variance", "version", "websearch_to_tsquery", "width_bucket", "xmlagg",
};
/* clang-format on */

static int compare_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char *const *pgs_analyze_read_only_functions(size_t *count) {
  *count = PGS_ARRAY_LEN(read_only_functions);
  return read_only_functions;
}

static bool function_is_read_only(const char *name) {
  return bsearch(&name, read_only_functions, PGS_ARRAY_LEN(read_only_functions),
                 sizeof(read_only_functions[0]), compare_names) != NULL;
}

/* ---- analysis state ---- */

typedef struct keyvec {
  pgs_key_ref_t *v;
  int n;
  int cap;
} keyvec_t;

/* One reference to a sharded table. */
typedef struct ref {
  const pgs_table_t *table;
  int scope; /* the scope whose FROM holds it; -1 INSERT/COPY target, -2 elsewhere */
  bool keyed;
  bool insert; /* an INSERT target: its keys are its rows, in order */
  int first;   /* keys: ctx->pool.v[first .. first + count) */
  int count;
} ref_t;

/* A = B between the key columns of two refs: a key of A may be copied to B
 * when the clause restricts B's rows (into_b), and the other way. */
typedef struct edge {
  int a, b;
  bool into_a, into_b;
} edge_t;

/* A name in a FROM list (alias or table name) and its ref, or -1. */
typedef struct item {
  const char *name;
  int ref;
} item_t;

/* key IN (SELECT key2 FROM ...): the outer refs the IN's left side names,
 * waiting for the analysis of SUB to name the inner ones. */
typedef struct link {
  const PgQuery__SelectStmt *sub;
  int outer[8];
  int nouter;
  bool into_outer[8]; /* the IN restricts that outer ref's rows */
} link_t;

typedef struct scope {
  struct scope *parent;
  int id;
  item_t *items;
  int nitems, items_cap;
  const char **ctes; /* WITH names visible here (and below) */
  int nctes, ctes_cap;
} scope_t;

typedef struct ctx {
  const pgs_database_t *db;
  ref_t *refs;
  int nrefs, refs_cap;
  keyvec_t pool; /* keys of all refs */
  keyvec_t tmp;  /* keys being collected */
  edge_t *edges;
  int nedges, edges_cap;
  link_t *links;
  int nlinks, links_cap;
  int next_scope;
  int depth;
  bool too_deep;
  /* Per statement: */
  bool unknown_function; /* calls a function not known read-only */
  bool locks_rows;       /* FOR UPDATE/SHARE anywhere */
  bool select_into;      /* SELECT ... INTO creates a table */
  bool modifies;         /* INSERT/UPDATE/DELETE/MERGE anywhere (WITH d AS (DELETE ...)) */
  bool runs_code;        /* CALL, DO, or a SELECT that is a write only by calling
                            functions not known read-only: what it writes is unknown */
  bool copy_write;       /* COPY (INSERT/UPDATE/DELETE/MERGE ... RETURNING) TO */
  bool cursor;           /* DECLARE CURSOR */
  const pgs_table_t *needs_columns; /* see pgs_plan_t */
  bool notifies;
  bool advisory;             /* calls advisory lock functions (see pgs_plan_t) */
  bool other_code;           /* calls other functions not known read-only */
  pgs_cursor_op_t cursor_op; /* the last SQL cursor statement (one statement: the plan's) */
  char cursor_name[64];
  bool cursor_hold, cursor_scroll, fetch_forward;
  int64_t fetch_count;
  int not_replayable; /* statements other than SET/RESET/savepoints */
  int insert_ref;     /* the ref of a top-level INSERT, or -1 */
  /* Whole text: */
  const pgs_table_t *table;
  bool copy_rows;
  int copy_key_column;
  pgs_copy_options_t *copy; /* the first COPY FROM STDIN's options */
  bool read_only_tx;
  char sqlstate[6];
  char message[256];
  /* Analysing the text with literals put back: A_Const at lit_loc[i] is
   * literal i, i.e. parameter lit_base + i. */
  const char *text;
  const int32_t *lit_loc;
  int nlit;
  int lit_base;
} ctx_t;

static void walk(ctx_t *ctx, scope_t *sc, const ProtobufCMessage *m);
static void walk_node(ctx_t *ctx, scope_t *sc, const PgQuery__Node *n);
static void analyse_select(ctx_t *ctx, scope_t *parent, const PgQuery__SelectStmt *s);

PGS_PRINTF(3, 4)
static void refuse(ctx_t *ctx, const char *sqlstate, const char *fmt, ...) {
  if (ctx->sqlstate[0] != '\0') return; /* the first refusal wins */
  memcpy(ctx->sqlstate, sqlstate, 5);
  ctx->sqlstate[5] = '\0';
  int n = snprintf(ctx->message, sizeof(ctx->message), "pgshard: ");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->message + n, sizeof(ctx->message) - (size_t)n, fmt, ap);
  va_end(ap);
}

static void keyvec_push(keyvec_t *kv, const pgs_key_ref_t *k) {
  if (kv->n == kv->cap) {
    kv->cap = kv->cap ? kv->cap * 2 : 16;
    kv->v = pgs_xrealloc(kv->v, (size_t)kv->cap * sizeof(*kv->v));
  }
  kv->v[kv->n++] = *k;
}

static int new_ref(ctx_t *ctx, const pgs_table_t *table, int scope) {
  if (ctx->nrefs == ctx->refs_cap) {
    ctx->refs_cap = ctx->refs_cap ? ctx->refs_cap * 2 : 8;
    ctx->refs = pgs_xrealloc(ctx->refs, (size_t)ctx->refs_cap * sizeof(*ctx->refs));
  }
  ref_t *r = &ctx->refs[ctx->nrefs];
  memset(r, 0, sizeof(*r));
  r->table = table;
  r->scope = scope;
  return ctx->nrefs++;
}

/* Give ref R the N keys at KEYS (not in ctx->pool), retyped to R's table. */
static void set_keys(ctx_t *ctx, int r, const pgs_key_ref_t *keys, int n) {
  ref_t *ref = &ctx->refs[r];
  ref->first = ctx->pool.n;
  for (int i = 0; i < n; i++) {
    pgs_key_ref_t k = keys[i];
    k.table = ref->table;
    keyvec_push(&ctx->pool, &k);
  }
  ctx->refs[r].count = n;
  ctx->refs[r].keyed = true;
}

static void add_edge(ctx_t *ctx, int a, int b, bool into_a, bool into_b) {
  if (!into_a && !into_b) return;
  if (ctx->nedges == ctx->edges_cap) {
    ctx->edges_cap = ctx->edges_cap ? ctx->edges_cap * 2 : 8;
    ctx->edges = pgs_xrealloc(ctx->edges, (size_t)ctx->edges_cap * sizeof(*ctx->edges));
  }
  ctx->edges[ctx->nedges++] = (edge_t){a, b, into_a, into_b};
}

static bool enter(ctx_t *ctx) {
  if (++ctx->depth > MAX_DEPTH) ctx->too_deep = true;
  return !ctx->too_deep;
}

static void leave(ctx_t *ctx) { ctx->depth--; }

/* ---- scopes ---- */

static void scope_init(ctx_t *ctx, scope_t *sc, scope_t *parent) {
  memset(sc, 0, sizeof(*sc));
  sc->parent = parent;
  sc->id = ctx->next_scope++;
}

static void scope_free(scope_t *sc) {
  free(sc->items);
  free(sc->ctes);
}

static void scope_add(scope_t *sc, const char *name, int ref) {
  if (sc->nitems == sc->items_cap) {
    sc->items_cap = sc->items_cap ? sc->items_cap * 2 : 4;
    sc->items = pgs_xrealloc(sc->items, (size_t)sc->items_cap * sizeof(*sc->items));
  }
  sc->items[sc->nitems++] = (item_t){name, ref};
}

static void scope_add_cte(scope_t *sc, const char *name) {
  if (sc->nctes == sc->ctes_cap) {
    sc->ctes_cap = sc->ctes_cap ? sc->ctes_cap * 2 : 4;
    sc->ctes = pgs_xrealloc(sc->ctes, (size_t)sc->ctes_cap * sizeof(*sc->ctes));
  }
  sc->ctes[sc->nctes++] = name;
}

static bool scope_has_cte(const scope_t *sc, const char *name) {
  for (; sc; sc = sc->parent)
    for (int i = 0; i < sc->nctes; i++)
      if (!strcmp(sc->ctes[i], name)) return true;
  return false;
}

/* The FROM item a qualifier names, innermost query level first. */
static const item_t *scope_find(const scope_t *sc, const char *name) {
  for (; sc; sc = sc->parent)
    for (int i = 0; i < sc->nitems; i++)
      if (!strcmp(sc->items[i].name, name)) return &sc->items[i];
  return NULL;
}

/* The refs of SC's own FROM among refs [from, to). Caller frees. */
static int *scope_refs(const ctx_t *ctx, const scope_t *sc, int from, int to, int *n) {
  int *out = pgs_xmalloc(sizeof(int) * (size_t)(to > from ? to - from : 1));
  *n = 0;
  for (int r = from; r < to; r++)
    if (ctx->refs[r].scope == sc->id) out[(*n)++] = r;
  return out;
}

static bool in_list(const int *list, int n, int x) {
  for (int i = 0; i < n; i++)
    if (list[i] == x) return true;
  return false;
}

/* ---- tree helpers ---- */

static const char *str_of(const PgQuery__Node *n) {
  return n && n->node_case == PG_QUERY__NODE__NODE_STRING ? n->string->sval : NULL;
}

/* The operator of an A_Expr ("=" for a.b = c, "=" for IN). */
static const char *op_name(const PgQuery__AExpr *e) {
  return e->n_name > 0 ? str_of(e->name[e->n_name - 1]) : NULL;
}

static const pgs_table_t *sharded(const ctx_t *ctx, const PgQuery__RangeVar *rv) {
  return rv && rv->relname ? pgs_shardmap_find_table(ctx->db, rv->relname) : NULL;
}

static const char *range_var_name(const PgQuery__RangeVar *rv) {
  return rv->alias && rv->alias->aliasname ? rv->alias->aliasname : rv->relname;
}

/* The type oids pgs_key_from_* and the proxy know; others 0. */
static uint32_t type_oid(const PgQuery__TypeName *tn) {
  static const struct {
    const char *name;
    uint32_t oid;
  } types[] = {
      {"int2", 21},        {"int4", 23},     {"int8", 20},    {"text", 25},   {"varchar", 1043},
      {"bpchar", 1042},    {"name", 19},     {"uuid", 2950},  {"date", 1082}, {"timestamptz", 1184},
      {"timestamp", 1114}, {"smallint", 21}, {"integer", 23}, {"int", 23},    {"bigint", 20},
  };
  if (tn == NULL || tn->n_names == 0 || tn->pct_type) return 0;
  const char *name = str_of(tn->names[tn->n_names - 1]);
  if (name == NULL) return 0;
  if (tn->n_names > 1) {
    const char *schema = str_of(tn->names[tn->n_names - 2]);
    if (schema == NULL || strcmp(schema, "pg_catalog") != 0) return 0;
  }
  for (size_t i = 0; i < PGS_ARRAY_LEN(types); i++)
    if (!strcmp(types[i].name, name)) return types[i].oid;
  return 0;
}

/* pg_[try_]advisory_[xact_]lock[_shared], pg_advisory_unlock[_shared|_all]. */
static bool advisory_function(const char *name) {
  return !strncmp(name, "pg_advisory_", 12) || !strncmp(name, "pg_try_advisory_", 16);
}

static void check_function(ctx_t *ctx, const PgQuery__FuncCall *fc) {
  if (fc->n_funcname == 0) return;
  const char *name = str_of(fc->funcname[fc->n_funcname - 1]);
  bool catalog = true;
  if (fc->n_funcname > 1) {
    const char *schema = str_of(fc->funcname[fc->n_funcname - 2]);
    catalog = schema && !strcmp(schema, "pg_catalog");
  }
  if (name && catalog && function_is_read_only(name)) return;
  ctx->unknown_function = true;
  if (name && catalog && advisory_function(name))
    ctx->advisory = true;
  else
    ctx->other_code = true;
}

/* ---- values: what a key may be compared with ---- */

/* In the text with literals put back: the literal an A_Const at LOCATION is,
 * or -1. A negative number is folded into one A_Const located at its '-'. */
static int literal_at(const ctx_t *ctx, int32_t location, bool *negated) {
  if (ctx->lit_loc == NULL || location < 0) return -1;
  *negated = false;
  if (ctx->text[location] == '-') {
    *negated = true;
    location++;
    while (ctx->text[location] == ' ') location++;
  }
  int lo = 0, hi = ctx->nlit - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (ctx->lit_loc[mid] == location) return mid;
    if (ctx->lit_loc[mid] < location)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}

/* A single value: $n, a literal, a cast of one, -value or +value. */
static bool scalar_value(const ctx_t *ctx, const PgQuery__Node *n, pgs_key_ref_t *k) {
  if (n == NULL) return false;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_PARAM_REF:
    if (n->param_ref->number < 1 || n->param_ref->number > 65535) return false;
    k->param = (uint16_t)n->param_ref->number;
    return true;
  case PG_QUERY__NODE__NODE_A_CONST: {
    bool negated;
    if (n->a_const->isnull) return false;
    int lit = literal_at(ctx, n->a_const->location, &negated);
    if (lit < 0) return false;
    k->param = (uint16_t)(ctx->lit_base + lit);
    if (negated) k->negate = !k->negate;
    return true;
  }
  case PG_QUERY__NODE__NODE_TYPE_CAST: {
    const PgQuery__TypeCast *tc = n->type_cast;
    if (tc->type_name && tc->type_name->n_array_bounds > 0) return false;
    if (!scalar_value(ctx, tc->arg, k)) return false;
    k->cast_type_oid = type_oid(tc->type_name); /* the outermost cast wins */
    return true;
  }
  case PG_QUERY__NODE__NODE_A_EXPR: {
    const PgQuery__AExpr *e = n->a_expr;
    const char *op = op_name(e);
    if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || e->lexpr || op == NULL) return false;
    if (strcmp(op, "-") != 0 && strcmp(op, "+") != 0) return false;
    if (!scalar_value(ctx, e->rexpr, k)) return false;
    if (op[0] == '-') k->negate = !k->negate;
    return true;
  }
  default:
    return false;
  }
}

/* The right side of key = ANY(...): an array parameter ($1, $1::int8[], a
 * literal '{1,2}'), or ARRAY[v, ...] whose elements are values. Appends to
 * OUT. */
static bool array_values(const ctx_t *ctx, const PgQuery__Node *n, uint32_t elem_oid,
                         keyvec_t *out) {
  if (n == NULL) return false;
  pgs_key_ref_t k = {0};
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_PARAM_REF:
  case PG_QUERY__NODE__NODE_A_CONST:
    if (!scalar_value(ctx, n, &k)) return false;
    k.array = true;
    k.cast_type_oid = elem_oid;
    keyvec_push(out, &k);
    return true;
  case PG_QUERY__NODE__NODE_TYPE_CAST: {
    const PgQuery__TypeCast *tc = n->type_cast;
    if (tc->type_name == NULL || tc->type_name->n_array_bounds == 0) return false;
    return array_values(ctx, tc->arg, type_oid(tc->type_name), out);
  }
  case PG_QUERY__NODE__NODE_A_ARRAY_EXPR: {
    const PgQuery__AArrayExpr *a = n->a_array_expr;
    if (a->n_elements == 0) return false;
    for (size_t i = 0; i < a->n_elements; i++) {
      pgs_key_ref_t e = {0};
      if (!scalar_value(ctx, a->elements[i], &e)) return false;
      if (e.cast_type_oid == 0) e.cast_type_oid = elem_oid;
      keyvec_push(out, &e);
    }
    return true;
  }
  default:
    return false;
  }
}

/* ---- column references ---- */

/* The refs whose key column C names, seen from SC. Unqualified: the sharded
 * tables of SC's own FROM with a key column of that name (several only
 * under JOIN USING or NATURAL, where they are equal; an unqualified name is
 * never taken to mean an outer query's column, since a table of this level
 * may have a column of that name). Qualified: the FROM item the qualifier
 * names, innermost level first. Fills OUT (up to CAP); returns how many. */
static int colref_refs(const ctx_t *ctx, const scope_t *sc, const PgQuery__Node *n, int *out,
                       int cap) {
  if (n == NULL || n->node_case != PG_QUERY__NODE__NODE_COLUMN_REF) return 0;
  const PgQuery__ColumnRef *c = n->column_ref;
  if (c->n_fields == 0) return 0;
  const char *col = str_of(c->fields[c->n_fields - 1]);
  if (col == NULL) return 0;
  int count = 0;
  if (c->n_fields == 1) {
    for (int r = 0; r < ctx->nrefs && count < cap; r++)
      if (ctx->refs[r].scope == sc->id && !strcmp(ctx->refs[r].table->column, col))
        out[count++] = r;
    return count;
  }
  const char *qualifier = str_of(c->fields[c->n_fields - 2]);
  if (qualifier == NULL) return 0;
  const item_t *item = scope_find(sc, qualifier);
  if (item && item->ref >= 0 && !strcmp(ctx->refs[item->ref].table->column, col) && cap > 0) {
    out[0] = item->ref;
    return 1;
  }
  return 0;
}

static bool colref_is(const ctx_t *ctx, const scope_t *sc, const PgQuery__Node *n, int r) {
  int found[8];
  int count = colref_refs(ctx, sc, n, found, 8);
  return in_list(found, count, r);
}

/* ---- key conditions ---- */

/* Append to OUT the keys that condition N restricts ref R's rows to, and
 * return true; false (OUT unchanged) when N does not restrict R to keys. */
static bool keyset(ctx_t *ctx, const scope_t *sc, const PgQuery__Node *n, int r, keyvec_t *out) {
  if (n == NULL) return false;
  int save = out->n;
  if (n->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR) {
    const PgQuery__BoolExpr *b = n->bool_expr;
    if (b->boolop == PG_QUERY__BOOL_EXPR_TYPE__OR_EXPR) {
      /* A row passes some branch: the union, if every branch has keys. */
      for (size_t i = 0; i < b->n_args; i++) {
        if (!keyset(ctx, sc, b->args[i], r, out)) {
          out->n = save;
          return false;
        }
      }
      return b->n_args > 0;
    }
    if (b->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
      /* A row passes every conjunct: any keyed one will do; take the
       * narrowest. */
      int best = -1, best_len = 0, best_weight = 0;
      for (size_t i = 0; i < b->n_args; i++) {
        int start = out->n;
        if (!keyset(ctx, sc, b->args[i], r, out)) continue;
        int weight = 0;
        for (int j = start; j < out->n; j++) weight += out->v[j].array ? ARRAY_WEIGHT : 1;
        if (best < 0 || weight < best_weight) {
          best = start;
          best_len = out->n - start;
          best_weight = weight;
        }
      }
      if (best < 0) return false;
      memmove(out->v + save, out->v + best, (size_t)best_len * sizeof(*out->v));
      out->n = save + best_len;
      return true;
    }
    return false; /* NOT */
  }
  if (n->node_case != PG_QUERY__NODE__NODE_A_EXPR) return false;
  const PgQuery__AExpr *e = n->a_expr;
  const char *op = op_name(e);
  if (op == NULL || strcmp(op, "=") != 0) return false;
  pgs_key_ref_t k = {0};
  switch (e->kind) {
  case PG_QUERY__A__EXPR__KIND__AEXPR_OP:
    if (colref_is(ctx, sc, e->lexpr, r) && scalar_value(ctx, e->rexpr, &k)) {
      keyvec_push(out, &k);
      return true;
    }
    if (colref_is(ctx, sc, e->rexpr, r) && scalar_value(ctx, e->lexpr, &k)) {
      keyvec_push(out, &k);
      return true;
    }
    /* (key, x) = ($1, $2) */
    if (e->lexpr && e->rexpr && e->lexpr->node_case == PG_QUERY__NODE__NODE_ROW_EXPR &&
        e->rexpr->node_case == PG_QUERY__NODE__NODE_ROW_EXPR &&
        e->lexpr->row_expr->n_args == e->rexpr->row_expr->n_args) {
      for (size_t i = 0; i < e->lexpr->row_expr->n_args; i++) {
        if (colref_is(ctx, sc, e->lexpr->row_expr->args[i], r) &&
            scalar_value(ctx, e->rexpr->row_expr->args[i], &k)) {
          keyvec_push(out, &k);
          return true;
        }
      }
    }
    return false;
  case PG_QUERY__A__EXPR__KIND__AEXPR_IN: {
    if (!colref_is(ctx, sc, e->lexpr, r) || e->rexpr == NULL ||
        e->rexpr->node_case != PG_QUERY__NODE__NODE_LIST)
      return false;
    const PgQuery__List *list = e->rexpr->list;
    for (size_t i = 0; i < list->n_items; i++) {
      pgs_key_ref_t item = {0};
      if (!scalar_value(ctx, list->items[i], &item)) {
        out->n = save;
        return false;
      }
      keyvec_push(out, &item);
    }
    return list->n_items > 0;
  }
  case PG_QUERY__A__EXPR__KIND__AEXPR_OP_ANY:
    if (!colref_is(ctx, sc, e->lexpr, r)) return false;
    if (array_values(ctx, e->rexpr, 0, out)) return true;
    out->n = save;
    return false;
  default:
    return false;
  }
}

/* The SELECT of an IN (SELECT ...) / = ANY (SELECT ...). */
static const PgQuery__SelectStmt *in_subselect(const PgQuery__Node *n) {
  if (n == NULL || n->node_case != PG_QUERY__NODE__NODE_SUB_LINK) return NULL;
  const PgQuery__SubLink *sl = n->sub_link;
  if (sl->sub_link_type != PG_QUERY__SUB_LINK_TYPE__ANY_SUBLINK || sl->subselect == NULL ||
      sl->subselect->node_case != PG_QUERY__NODE__NODE_SELECT_STMT)
    return NULL;
  if (sl->n_oper_name > 0) { /* IN has none; = ANY (SELECT ...) names "=" */
    const char *op = str_of(sl->oper_name[sl->n_oper_name - 1]);
    if (op == NULL || strcmp(op, "=") != 0) return NULL;
  }
  return sl->subselect->select_stmt;
}

/* key_a = key_b between two refs, at the top level of N's AND tree; and
 * key IN (SELECT key_b ...), completed when the subquery is analysed. */
static void collect_edges(ctx_t *ctx, const scope_t *sc, const PgQuery__Node *n,
                          const int *restricted, int nrestricted) {
  if (n == NULL) return;
  if (n->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR &&
      n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
    for (size_t i = 0; i < n->bool_expr->n_args; i++)
      collect_edges(ctx, sc, n->bool_expr->args[i], restricted, nrestricted);
    return;
  }
  const PgQuery__SelectStmt *sub = in_subselect(n);
  if (sub) {
    link_t link = {.sub = sub};
    link.nouter = colref_refs(ctx, sc, n->sub_link->testexpr, link.outer, 8);
    for (int i = 0; i < link.nouter; i++)
      link.into_outer[i] = in_list(restricted, nrestricted, link.outer[i]);
    if (link.nouter == 0) return;
    if (ctx->nlinks == ctx->links_cap) {
      ctx->links_cap = ctx->links_cap ? ctx->links_cap * 2 : 4;
      ctx->links = pgs_xrealloc(ctx->links, (size_t)ctx->links_cap * sizeof(*ctx->links));
    }
    ctx->links[ctx->nlinks++] = link;
    return;
  }
  if (n->node_case != PG_QUERY__NODE__NODE_A_EXPR) return;
  const PgQuery__AExpr *e = n->a_expr;
  const char *op = op_name(e);
  if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || op == NULL || strcmp(op, "=") != 0) return;
  int left[8], right[8];
  int nl = colref_refs(ctx, sc, e->lexpr, left, 8);
  int nr = colref_refs(ctx, sc, e->rexpr, right, 8);
  for (int i = 0; i < nl; i++)
    for (int j = 0; j < nr; j++)
      if (left[i] != right[j])
        add_edge(ctx, left[i], right[j], in_list(restricted, nrestricted, left[i]),
                 in_list(restricted, nrestricted, right[j]));
}

/* A WHERE or ON clause that filters the rows of the RESTRICTED refs. */
static void process_clause(ctx_t *ctx, scope_t *sc, const PgQuery__Node *n, const int *restricted,
                           int nrestricted) {
  if (n == NULL) return;
  for (int i = 0; i < nrestricted; i++) {
    int r = restricted[i];
    if (ctx->refs[r].keyed) continue;
    ctx->tmp.n = 0;
    if (keyset(ctx, sc, n, r, &ctx->tmp)) set_keys(ctx, r, ctx->tmp.v, ctx->tmp.n);
  }
  collect_edges(ctx, sc, n, restricted, nrestricted);
  walk_node(ctx, sc, n); /* subqueries and function calls inside */
}

/* ---- FROM lists ---- */

static void add_from_item(ctx_t *ctx, scope_t *sc, const PgQuery__Node *n) {
  if (n == NULL || !enter(ctx)) goto out;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_RANGE_VAR: {
    const PgQuery__RangeVar *rv = n->range_var;
    const pgs_table_t *t = NULL;
    if (rv->schemaname == NULL || rv->schemaname[0] == '\0') {
      if (!scope_has_cte(sc, rv->relname)) t = sharded(ctx, rv);
    } else {
      t = sharded(ctx, rv);
    }
    scope_add(sc, range_var_name(rv), t ? new_ref(ctx, t, sc->id) : -1);
    break;
  }
  case PG_QUERY__NODE__NODE_JOIN_EXPR: {
    const PgQuery__JoinExpr *j = n->join_expr;
    int start = ctx->nrefs;
    add_from_item(ctx, sc, j->larg);
    int mid = ctx->nrefs;
    add_from_item(ctx, sc, j->rarg);
    int end = ctx->nrefs;
    /* The rows an ON clause filters: both sides of an inner join, only the
     * nullable side of an outer one. */
    int from = start, to = end;
    switch (j->jointype) {
    case PG_QUERY__JOIN_TYPE__JOIN_LEFT:
      from = mid;
      break;
    case PG_QUERY__JOIN_TYPE__JOIN_RIGHT:
      to = mid;
      break;
    case PG_QUERY__JOIN_TYPE__JOIN_FULL:
      to = from;
      break;
    default:
      break;
    }
    int nrestricted;
    int *restricted = scope_refs(ctx, sc, from, to, &nrestricted);
    /* USING (key) and NATURAL joins equate same-named key columns. */
    for (int a = start; a < mid; a++) {
      for (int b = mid; b < end; b++) {
        const ref_t *ra = &ctx->refs[a], *rb = &ctx->refs[b];
        if (ra->scope != sc->id || rb->scope != sc->id) continue;
        if (strcmp(ra->table->column, rb->table->column) != 0) continue;
        bool joined = j->is_natural;
        for (size_t u = 0; u < j->n_using_clause && !joined; u++) {
          const char *col = str_of(j->using_clause[u]);
          joined = col && !strcmp(col, ra->table->column);
        }
        if (joined)
          add_edge(ctx, a, b, in_list(restricted, nrestricted, a),
                   in_list(restricted, nrestricted, b));
      }
    }
    process_clause(ctx, sc, j->quals, restricted, nrestricted);
    free(restricted);
    break;
  }
  case PG_QUERY__NODE__NODE_RANGE_SUBSELECT: {
    const PgQuery__RangeSubselect *rs = n->range_subselect;
    walk_node(ctx, sc, rs->subquery);
    if (rs->alias && rs->alias->aliasname) scope_add(sc, rs->alias->aliasname, -1);
    break;
  }
  case PG_QUERY__NODE__NODE_RANGE_FUNCTION: {
    const PgQuery__RangeFunction *rf = n->range_function;
    for (size_t i = 0; i < rf->n_functions; i++) walk_node(ctx, sc, rf->functions[i]);
    if (rf->alias && rf->alias->aliasname) scope_add(sc, rf->alias->aliasname, -1);
    break;
  }
  case PG_QUERY__NODE__NODE_RANGE_TABLE_SAMPLE: {
    const PgQuery__RangeTableSample *ts = n->range_table_sample;
    add_from_item(ctx, sc, ts->relation);
    for (size_t i = 0; i < ts->n_args; i++) walk_node(ctx, sc, ts->args[i]);
    walk_node(ctx, sc, ts->repeatable);
    break;
  }
  default:
    walk_node(ctx, sc, n);
    break;
  }
out:
  if (n) leave(ctx);
}

/* ---- statements ---- */

static void walk_list(ctx_t *ctx, scope_t *sc, PgQuery__Node *const *list, size_t n) {
  for (size_t i = 0; i < n; i++) walk_node(ctx, sc, list[i]);
}

/* WITH: the names go into SC (visible to the query and later CTEs, and to
 * every CTE when RECURSIVE); the bodies are analysed as subqueries. */
static void analyse_with(ctx_t *ctx, scope_t *sc, const PgQuery__WithClause *w) {
  if (w == NULL) return;
  if (w->recursive)
    for (size_t i = 0; i < w->n_ctes; i++)
      if (w->ctes[i]->node_case == PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR)
        scope_add_cte(sc, w->ctes[i]->common_table_expr->ctename);
  for (size_t i = 0; i < w->n_ctes; i++) {
    if (w->ctes[i]->node_case != PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR) continue;
    const PgQuery__CommonTableExpr *cte = w->ctes[i]->common_table_expr;
    walk_node(ctx, sc, cte->ctequery);
    if (!w->recursive) scope_add_cte(sc, cte->ctename);
  }
}

static void analyse_where(ctx_t *ctx, scope_t *sc, const PgQuery__Node *where) {
  if (where == NULL) return;
  int nrestricted;
  int *restricted = scope_refs(ctx, sc, 0, ctx->nrefs, &nrestricted);
  process_clause(ctx, sc, where, restricted, nrestricted);
  free(restricted);
}

/* S is the subquery of a key IN (SELECT col ...): when COL is a key column
 * of S's own FROM, the two are joined on their keys. The subquery's rows
 * matter only where they match an outer row, so a key of the outer ref
 * restricts them; the IN restricts the outer rows when it is AND-ed into a
 * WHERE or ON clause. */
static void link_subselect(ctx_t *ctx, scope_t *sc, const PgQuery__SelectStmt *s) {
  for (int i = 0; i < ctx->nlinks; i++) {
    if (ctx->links[i].sub != s) continue;
    if (s->n_target_list != 1 || s->target_list[0]->node_case != PG_QUERY__NODE__NODE_RES_TARGET)
      return;
    int inner[8];
    int ninner = colref_refs(ctx, sc, s->target_list[0]->res_target->val, inner, 8);
    const link_t link = ctx->links[i];
    for (int a = 0; a < link.nouter; a++)
      for (int b = 0; b < ninner; b++)
        add_edge(ctx, link.outer[a], inner[b], link.into_outer[a], true);
    return;
  }
}

static void analyse_select(ctx_t *ctx, scope_t *parent, const PgQuery__SelectStmt *s) {
  if (s == NULL || !enter(ctx)) goto out;
  scope_t sc;
  scope_init(ctx, &sc, parent);
  analyse_with(ctx, &sc, s->with_clause);
  if (s->n_locking_clause > 0) ctx->locks_rows = true;
  if (s->into_clause) ctx->select_into = true;
  if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE) {
    analyse_select(ctx, &sc, s->larg);
    analyse_select(ctx, &sc, s->rarg);
  } else {
    for (size_t i = 0; i < s->n_from_clause; i++) add_from_item(ctx, &sc, s->from_clause[i]);
    analyse_where(ctx, &sc, s->where_clause);
    link_subselect(ctx, &sc, s);
  }
  /* Not the locking clause (its names are aliases) nor INTO (a new table). */
  walk_list(ctx, &sc, s->target_list, s->n_target_list);
  walk_list(ctx, &sc, s->distinct_clause, s->n_distinct_clause);
  walk_list(ctx, &sc, s->group_clause, s->n_group_clause);
  walk_node(ctx, &sc, s->having_clause);
  walk_list(ctx, &sc, s->window_clause, s->n_window_clause);
  walk_list(ctx, &sc, s->values_lists, s->n_values_lists);
  walk_list(ctx, &sc, s->sort_clause, s->n_sort_clause);
  walk_node(ctx, &sc, s->limit_offset);
  walk_node(ctx, &sc, s->limit_count);
  scope_free(&sc);
out:
  if (s) leave(ctx);
}

static int column_position(PgQuery__Node *const *cols, size_t n, const char *column) {
  for (size_t i = 0; i < n; i++) {
    const char *name = NULL;
    if (cols[i]->node_case == PG_QUERY__NODE__NODE_RES_TARGET)
      name = cols[i]->res_target->name;
    else
      name = str_of(cols[i]);
    /* INSERT INTO t (id[1]) or (col.field): not a plain column. */
    if (cols[i]->node_case == PG_QUERY__NODE__NODE_RES_TARGET &&
        cols[i]->res_target->n_indirection > 0)
      continue;
    if (name && !strcmp(name, column)) return (int)i;
  }
  return -1;
}

/* SET col = ... naming the shard key (UPDATE, ON CONFLICT DO UPDATE, MERGE). */
static bool sets_key(const pgs_table_t *t, PgQuery__Node *const *targets, size_t n) {
  if (t == NULL) return false;
  for (size_t i = 0; i < n; i++)
    if (targets[i]->node_case == PG_QUERY__NODE__NODE_RES_TARGET && targets[i]->res_target->name &&
        !strcmp(targets[i]->res_target->name, t->column))
      return true;
  return false;
}

/* A SELECT that yields its target list once (no FROM, no set operation):
 * INSERT ... SELECT $1, $2 [WHERE NOT EXISTS (...)] inserts one row. */
static bool is_single_row_select(const PgQuery__SelectStmt *s) {
  return s->op == PG_QUERY__SET_OPERATION__SETOP_NONE && s->n_from_clause == 0 &&
         s->n_values_lists == 0 && s->n_group_clause == 0 && s->having_clause == NULL &&
         s->with_clause == NULL && s->into_clause == NULL && s->n_target_list > 0;
}

static void analyse_insert(ctx_t *ctx, scope_t *parent, const PgQuery__InsertStmt *ins, bool top) {
  ctx->modifies = true;
  if (!enter(ctx)) goto out;
  scope_t sc;
  scope_init(ctx, &sc, parent);
  analyse_with(ctx, &sc, ins->with_clause);
  const PgQuery__RangeVar *rv = ins->relation;
  const pgs_table_t *t = sharded(ctx, rv);
  if (t && ctx->table == NULL) ctx->table = t;
  if (rv) scope_add(&sc, range_var_name(rv), -1);

  const PgQuery__SelectStmt *sel = NULL;
  if (ins->select_stmt && ins->select_stmt->node_case == PG_QUERY__NODE__NODE_SELECT_STMT)
    sel = ins->select_stmt->select_stmt;
  bool values = sel && sel->op == PG_QUERY__SET_OPERATION__SETOP_NONE && sel->n_values_lists > 0 &&
                sel->n_from_clause == 0;
  bool single = sel && !values && is_single_row_select(sel);
  int refs_before = ctx->nrefs;

  if (t) {
    int ref = new_ref(ctx, t, -1);
    ctx->refs[ref].insert = true;
    if (top) ctx->insert_ref = ref;
    int pos = column_position(ins->cols, ins->n_cols, t->column);
    if (sel && !values && !single) {
      refuse(ctx, "0A000", "INSERT ... SELECT into sharded table %s is not supported", t->name);
    } else if (pos < 0) {
      if (ins->n_cols == 0 && (values || single) && top && ctx->sqlstate[0] == '\0' &&
          ins->with_clause == NULL)
        ctx->needs_columns = t; /* this refusal is the first, and its only one */
      refuse(ctx, "0A000", "INSERT into sharded table %s needs a column list naming %s", t->name,
             t->column);
    } else {
      ctx->tmp.n = 0;
      bool ok = true;
      size_t nrows = values ? sel->n_values_lists : 1;
      for (size_t i = 0; i < nrows && ok; i++) {
        pgs_key_ref_t k = {0};
        const PgQuery__Node *v = NULL;
        if (values) {
          const PgQuery__Node *row = sel->values_lists[i];
          if (row->node_case == PG_QUERY__NODE__NODE_LIST && (size_t)pos < row->list->n_items)
            v = row->list->items[pos];
        } else if ((size_t)pos < sel->n_target_list &&
                   sel->target_list[pos]->node_case == PG_QUERY__NODE__NODE_RES_TARGET) {
          v = sel->target_list[pos]->res_target->val;
        }
        ok = scalar_value(ctx, v, &k);
        if (ok) keyvec_push(&ctx->tmp, &k);
      }
      if (ok)
        set_keys(ctx, ref, ctx->tmp.v, ctx->tmp.n);
      else
        refuse(ctx, "0A000",
               "INSERT into sharded table %s needs a literal or parameter for %s in every row",
               t->name, t->column);
    }
  }
  /* The values themselves: subqueries and function calls. */
  if (sel) {
    if (values || single) {
      scope_t vs;
      scope_init(ctx, &vs, &sc);
      walk_list(ctx, &vs, sel->values_lists, sel->n_values_lists);
      walk_list(ctx, &vs, sel->target_list, sel->n_target_list);
      walk_node(ctx, &vs, sel->where_clause);
      scope_free(&vs);
    } else {
      analyse_select(ctx, &sc, sel);
    }
  }
  if (!t && rv) {
    /* A reference table is written on every shard: rows computed from a
     * sharded table would differ from shard to shard. */
    for (int r = refs_before; r < ctx->nrefs; r++) {
      refuse(ctx, "0A000", "INSERT into %s reading sharded table %s is not supported", rv->relname,
             ctx->refs[r].table->name);
      break;
    }
  }
  const PgQuery__OnConflictClause *oc = ins->on_conflict_clause;
  if (oc) {
    if (sets_key(t, oc->target_list, oc->n_target_list))
      refuse(ctx, "0A000", "ON CONFLICT DO UPDATE of shard key column %s.%s is not supported",
             t->name, t->column);
    scope_add(&sc, "excluded", -1);
    walk_list(ctx, &sc, oc->target_list, oc->n_target_list);
    walk_node(ctx, &sc, oc->where_clause);
  }
  walk_list(ctx, &sc, ins->returning_list, ins->n_returning_list);
  scope_free(&sc);
out:
  leave(ctx);
}

/* UPDATE t ... FROM / DELETE FROM t ... USING: the target is a ref of the
 * statement's own level, filtered by WHERE like the FROM items. */
static int add_target(ctx_t *ctx, scope_t *sc, const PgQuery__RangeVar *rv,
                      const pgs_table_t **table) {
  const pgs_table_t *t = sharded(ctx, rv);
  *table = t;
  if (rv == NULL) return -1;
  if (t && ctx->table == NULL) ctx->table = t;
  int ref = t ? new_ref(ctx, t, sc->id) : -1;
  scope_add(sc, range_var_name(rv), ref);
  return ref;
}

static void analyse_update(ctx_t *ctx, scope_t *parent, const PgQuery__UpdateStmt *u) {
  ctx->modifies = true;
  if (!enter(ctx)) goto out;
  scope_t sc;
  scope_init(ctx, &sc, parent);
  analyse_with(ctx, &sc, u->with_clause);
  const pgs_table_t *t;
  add_target(ctx, &sc, u->relation, &t);
  if (sets_key(t, u->target_list, u->n_target_list))
    refuse(ctx, "0A000", "UPDATE of shard key column %s.%s is not supported", t->name, t->column);
  for (size_t i = 0; i < u->n_from_clause; i++) add_from_item(ctx, &sc, u->from_clause[i]);
  analyse_where(ctx, &sc, u->where_clause);
  walk_list(ctx, &sc, u->target_list, u->n_target_list);
  walk_list(ctx, &sc, u->returning_list, u->n_returning_list);
  scope_free(&sc);
out:
  leave(ctx);
}

static void analyse_delete(ctx_t *ctx, scope_t *parent, const PgQuery__DeleteStmt *d) {
  ctx->modifies = true;
  if (!enter(ctx)) goto out;
  scope_t sc;
  scope_init(ctx, &sc, parent);
  analyse_with(ctx, &sc, d->with_clause);
  const pgs_table_t *t;
  add_target(ctx, &sc, d->relation, &t);
  for (size_t i = 0; i < d->n_using_clause; i++) add_from_item(ctx, &sc, d->using_clause[i]);
  analyse_where(ctx, &sc, d->where_clause);
  walk_list(ctx, &sc, d->returning_list, d->n_returning_list);
  scope_free(&sc);
out:
  leave(ctx);
}

/* MERGE INTO t USING s ON cond: the ON condition restricts the target rows
 * that WHEN MATCHED acts on; WHEN NOT MATCHED THEN INSERT creates rows
 * whose keys come from the source, which cannot be routed here. */
static void analyse_merge(ctx_t *ctx, scope_t *parent, const PgQuery__MergeStmt *m) {
  ctx->modifies = true;
  if (!enter(ctx)) goto out;
  scope_t sc;
  scope_init(ctx, &sc, parent);
  analyse_with(ctx, &sc, m->with_clause);
  const pgs_table_t *t;
  int ref = add_target(ctx, &sc, m->relation, &t);
  add_from_item(ctx, &sc, m->source_relation);
  for (size_t i = 0; i < m->n_merge_when_clauses; i++) {
    const PgQuery__Node *n = m->merge_when_clauses[i];
    if (n->node_case != PG_QUERY__NODE__NODE_MERGE_WHEN_CLAUSE) continue;
    const PgQuery__MergeWhenClause *w = n->merge_when_clause;
    if (t && w->command_type == PG_QUERY__CMD_TYPE__CMD_INSERT)
      refuse(ctx, "0A000", "MERGE ... THEN INSERT into sharded table %s is not supported", t->name);
    if (w->command_type == PG_QUERY__CMD_TYPE__CMD_UPDATE &&
        sets_key(t, w->target_list, w->n_target_list))
      refuse(ctx, "0A000", "UPDATE of shard key column %s.%s is not supported", t->name, t->column);
    walk_node(ctx, &sc, w->condition);
    walk_list(ctx, &sc, w->target_list, w->n_target_list);
    walk_list(ctx, &sc, w->values, w->n_values);
  }
  process_clause(ctx, &sc, m->join_condition, &ref, ref >= 0 ? 1 : 0);
  scope_free(&sc);
out:
  leave(ctx);
}

static pgs_stmt_kind_t analyse_stmt(ctx_t *ctx, const PgQuery__Node *n, bool top);

static pgs_stmt_kind_t analyse_copy(ctx_t *ctx, const PgQuery__CopyStmt *c) {
  if (c->query) {
    /* COPY (UPDATE ... RETURNING ...) TO STDOUT writes: it runs where its
     * statement would, on a primary. */
    if (analyse_stmt(ctx, c->query, false) == PGS_STMT_WRITE) {
      ctx->copy_write = true;
      return PGS_STMT_WRITE;
    }
    return PGS_STMT_COPY_TO;
  }
  const pgs_table_t *t = sharded(ctx, c->relation);
  if (t && ctx->table == NULL) ctx->table = t;
  if (!c->is_from) {
    if (t) new_ref(ctx, t, -2); /* every row of every shard */
    return PGS_STMT_COPY_TO;
  }
  if (!(c->filename && c->filename[0]) && !c->is_program && ctx->copy == NULL) {
    pgs_copy_literals_t lits = {ctx->text, ctx->lit_loc, ctx->nlit, ctx->lit_base};
    pgs_key_error_t err;
    ctx->copy = pgs_copy_options_parse(c, t, &lits, &err);
    if (err.sqlstate[0]) refuse(ctx, err.sqlstate, "%s", err.message);
  }
  if (t) {
    int pos = column_position(c->attlist, c->n_attlist, t->column);
    if ((c->filename && c->filename[0]) || c->is_program) {
      refuse(ctx, "0A000", "COPY FROM a file into sharded table %s is not supported", t->name);
      new_ref(ctx, t, -1);
    } else if (pos < 0) {
      refuse(ctx, "0A000", "COPY into sharded table %s needs a column list naming %s", t->name,
             t->column);
      new_ref(ctx, t, -1);
    } else {
      ctx->copy_rows = true;
      ctx->copy_key_column = pos;
    }
  }
  walk_node(ctx, NULL, c->where_clause);
  return PGS_STMT_COPY_FROM;
}

/* A DefElem's boolean value: no argument means true (EXPLAIN ANALYZE). */
static bool def_true(const PgQuery__DefElem *d) {
  const PgQuery__Node *a = d->arg;
  if (a == NULL) return true;
  switch (a->node_case) {
  case PG_QUERY__NODE__NODE_STRING:
    return !strcasecmp(a->string->sval, "true") || !strcasecmp(a->string->sval, "on") ||
           !strcasecmp(a->string->sval, "yes") || !strcmp(a->string->sval, "1");
  case PG_QUERY__NODE__NODE_INTEGER:
    return a->integer->ival != 0;
  case PG_QUERY__NODE__NODE_BOOLEAN:
    return a->boolean->boolval;
  case PG_QUERY__NODE__NODE_A_CONST:
    if (a->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL) return a->a_const->ival->ival != 0;
    if (a->a_const->val_case == PG_QUERY__A__CONST__VAL_BOOLVAL)
      return a->a_const->boolval->boolval;
    return false;
  default:
    return false;
  }
}

static bool option_set(PgQuery__Node *const *options, size_t n, const char *name, bool *value) {
  bool found = false;
  for (size_t i = 0; i < n; i++) {
    if (options[i]->node_case != PG_QUERY__NODE__NODE_DEF_ELEM) continue;
    const PgQuery__DefElem *d = options[i]->def_elem;
    if (d->defname && !strcmp(d->defname, name)) {
      found = true;
      *value = def_true(d); /* the last one wins, as in PostgreSQL */
    }
  }
  return found;
}

static pgs_stmt_kind_t analyse_explain(ctx_t *ctx, const PgQuery__ExplainStmt *e) {
  bool analyze = false;
  option_set(e->options, e->n_options, "analyze", &analyze);
  if (analyze) return analyse_stmt(ctx, e->query, false);
  /* Only planned: it changes nothing, so nothing is refused, and it reads
   * wherever the statement would go. */
  char sqlstate[6], message[256];
  memcpy(sqlstate, ctx->sqlstate, sizeof(sqlstate));
  memcpy(message, ctx->message, sizeof(message));
  (void)analyse_stmt(ctx, e->query, false);
  memcpy(ctx->sqlstate, sqlstate, sizeof(sqlstate));
  memcpy(ctx->message, message, sizeof(message));
  for (int r = 0; r < ctx->nrefs; r++) ctx->refs[r].insert = false;
  return PGS_STMT_READ;
}

static bool is_ddl(PgQuery__Node__NodeCase c) {
  switch (c) {
  case PG_QUERY__NODE__NODE_CREATE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_DOMAIN_STMT:
  case PG_QUERY__NODE__NODE_GRANT_STMT:
  case PG_QUERY__NODE__NODE_GRANT_ROLE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_DEFAULT_PRIVILEGES_STMT:
  case PG_QUERY__NODE__NODE_DEFINE_STMT:
  case PG_QUERY__NODE__NODE_DROP_STMT:
  case PG_QUERY__NODE__NODE_TRUNCATE_STMT:
  case PG_QUERY__NODE__NODE_COMMENT_STMT:
  case PG_QUERY__NODE__NODE_INDEX_STMT:
  case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
  case PG_QUERY__NODE__NODE_ALTER_FUNCTION_STMT:
  case PG_QUERY__NODE__NODE_RENAME_STMT:
  case PG_QUERY__NODE__NODE_RULE_STMT:
  case PG_QUERY__NODE__NODE_VIEW_STMT:
  case PG_QUERY__NODE__NODE_CREATE_DOMAIN_STMT:
  case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT:
  case PG_QUERY__NODE__NODE_CREATE_SEQ_STMT:
  case PG_QUERY__NODE__NODE_ALTER_SEQ_STMT:
  case PG_QUERY__NODE__NODE_CREATE_TRIG_STMT:
  case PG_QUERY__NODE__NODE_CREATE_PLANG_STMT:
  case PG_QUERY__NODE__NODE_CREATE_ROLE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_ROLE_STMT:
  case PG_QUERY__NODE__NODE_DROP_ROLE_STMT:
  case PG_QUERY__NODE__NODE_CREATE_SCHEMA_STMT:
  case PG_QUERY__NODE__NODE_ALTER_DATABASE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_DATABASE_SET_STMT:
  case PG_QUERY__NODE__NODE_ALTER_ROLE_SET_STMT:
  case PG_QUERY__NODE__NODE_CREATE_CONVERSION_STMT:
  case PG_QUERY__NODE__NODE_CREATE_CAST_STMT:
  case PG_QUERY__NODE__NODE_CREATE_OP_CLASS_STMT:
  case PG_QUERY__NODE__NODE_CREATE_OP_FAMILY_STMT:
  case PG_QUERY__NODE__NODE_ALTER_OP_FAMILY_STMT:
  case PG_QUERY__NODE__NODE_ALTER_OBJECT_DEPENDS_STMT:
  case PG_QUERY__NODE__NODE_ALTER_OBJECT_SCHEMA_STMT:
  case PG_QUERY__NODE__NODE_ALTER_OWNER_STMT:
  case PG_QUERY__NODE__NODE_ALTER_OPERATOR_STMT:
  case PG_QUERY__NODE__NODE_ALTER_TYPE_STMT:
  case PG_QUERY__NODE__NODE_DROP_OWNED_STMT:
  case PG_QUERY__NODE__NODE_REASSIGN_OWNED_STMT:
  case PG_QUERY__NODE__NODE_COMPOSITE_TYPE_STMT:
  case PG_QUERY__NODE__NODE_CREATE_ENUM_STMT:
  case PG_QUERY__NODE__NODE_CREATE_RANGE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_ENUM_STMT:
  case PG_QUERY__NODE__NODE_ALTER_TSDICTIONARY_STMT:
  case PG_QUERY__NODE__NODE_ALTER_TSCONFIGURATION_STMT:
  case PG_QUERY__NODE__NODE_CREATE_FDW_STMT:
  case PG_QUERY__NODE__NODE_ALTER_FDW_STMT:
  case PG_QUERY__NODE__NODE_CREATE_FOREIGN_SERVER_STMT:
  case PG_QUERY__NODE__NODE_ALTER_FOREIGN_SERVER_STMT:
  case PG_QUERY__NODE__NODE_CREATE_USER_MAPPING_STMT:
  case PG_QUERY__NODE__NODE_ALTER_USER_MAPPING_STMT:
  case PG_QUERY__NODE__NODE_DROP_USER_MAPPING_STMT:
  case PG_QUERY__NODE__NODE_ALTER_TABLE_MOVE_ALL_STMT:
  case PG_QUERY__NODE__NODE_SEC_LABEL_STMT:
  case PG_QUERY__NODE__NODE_CREATE_FOREIGN_TABLE_STMT:
  case PG_QUERY__NODE__NODE_IMPORT_FOREIGN_SCHEMA_STMT:
  case PG_QUERY__NODE__NODE_CREATE_EXTENSION_STMT:
  case PG_QUERY__NODE__NODE_ALTER_EXTENSION_STMT:
  case PG_QUERY__NODE__NODE_ALTER_EXTENSION_CONTENTS_STMT:
  case PG_QUERY__NODE__NODE_CREATE_EVENT_TRIG_STMT:
  case PG_QUERY__NODE__NODE_ALTER_EVENT_TRIG_STMT:
  case PG_QUERY__NODE__NODE_REFRESH_MAT_VIEW_STMT:
  case PG_QUERY__NODE__NODE_REPLICA_IDENTITY_STMT:
  case PG_QUERY__NODE__NODE_CREATE_POLICY_STMT:
  case PG_QUERY__NODE__NODE_ALTER_POLICY_STMT:
  case PG_QUERY__NODE__NODE_CREATE_TRANSFORM_STMT:
  case PG_QUERY__NODE__NODE_CREATE_AM_STMT:
  case PG_QUERY__NODE__NODE_CREATE_PUBLICATION_STMT:
  case PG_QUERY__NODE__NODE_ALTER_PUBLICATION_STMT:
  case PG_QUERY__NODE__NODE_CREATE_SUBSCRIPTION_STMT:
  case PG_QUERY__NODE__NODE_ALTER_SUBSCRIPTION_STMT:
  case PG_QUERY__NODE__NODE_DROP_SUBSCRIPTION_STMT:
  case PG_QUERY__NODE__NODE_CREATE_STATS_STMT:
  case PG_QUERY__NODE__NODE_ALTER_COLLATION_STMT:
  case PG_QUERY__NODE__NODE_ALTER_STATS_STMT:
    return true;
  default:
    return false;
  }
}

/* SELECT pg_advisory_unlock_all() and nothing else (asyncpg's pool
 * resets a released connection with it): it changes nothing but the
 * session's own advisory locks, so it runs where the session is, as SET
 * does (a client that took a session lock is pinned to where it did). */
static bool unlocks_all(const PgQuery__SelectStmt *s) {
  if (s->n_target_list != 1 || s->n_from_clause || s->where_clause || s->with_clause ||
      s->op != PG_QUERY__SET_OPERATION__SETOP_NONE || s->n_group_clause || s->having_clause ||
      s->n_sort_clause || s->limit_count || s->limit_offset || s->n_locking_clause ||
      s->n_distinct_clause || s->into_clause || s->n_values_lists)
    return false;
  const PgQuery__Node *t = s->target_list[0];
  if (t->node_case != PG_QUERY__NODE__NODE_RES_TARGET || t->res_target->val == NULL ||
      t->res_target->val->node_case != PG_QUERY__NODE__NODE_FUNC_CALL)
    return false;
  const PgQuery__FuncCall *fc = t->res_target->val->func_call;
  if (fc->n_args || fc->agg_star || fc->over || fc->n_funcname == 0 || fc->n_funcname > 2)
    return false;
  const char *name = str_of(fc->funcname[fc->n_funcname - 1]);
  const char *schema = fc->n_funcname > 1 ? str_of(fc->funcname[0]) : "pg_catalog";
  return name && schema && !strcmp(name, "pg_advisory_unlock_all") && !strcmp(schema, "pg_catalog");
}

static pgs_stmt_kind_t analyse_stmt(ctx_t *ctx, const PgQuery__Node *n, bool top) {
  if (n == NULL) return PGS_STMT_OTHER;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_SELECT_STMT: {
    ctx->unknown_function = ctx->locks_rows = ctx->select_into = ctx->modifies = false;
    ctx->advisory = ctx->other_code = false;
    int before = ctx->nrefs;
    analyse_select(ctx, NULL, n->select_stmt);
    if (ctx->select_into) return PGS_STMT_DDL;
    if (ctx->advisory && top && ctx->nrefs == before && !ctx->other_code && !ctx->locks_rows &&
        !ctx->modifies)
      return PGS_STMT_SESSION; /* advisory locks: on the first shard (planner.c) */
    if (ctx->unknown_function && !ctx->modifies) ctx->runs_code = true;
    if (ctx->locks_rows || ctx->unknown_function || ctx->modifies) return PGS_STMT_WRITE;
    return PGS_STMT_READ;
  }
  case PG_QUERY__NODE__NODE_INSERT_STMT:
    analyse_insert(ctx, NULL, n->insert_stmt, top);
    return PGS_STMT_WRITE;
  case PG_QUERY__NODE__NODE_UPDATE_STMT:
    analyse_update(ctx, NULL, n->update_stmt);
    return PGS_STMT_WRITE;
  case PG_QUERY__NODE__NODE_DELETE_STMT:
    analyse_delete(ctx, NULL, n->delete_stmt);
    return PGS_STMT_WRITE;
  case PG_QUERY__NODE__NODE_MERGE_STMT:
    analyse_merge(ctx, NULL, n->merge_stmt);
    return PGS_STMT_WRITE;
  case PG_QUERY__NODE__NODE_CALL_STMT:
  case PG_QUERY__NODE__NODE_DO_STMT:
    /* Code: it may write anything, anywhere on the shard it runs on. */
    ctx->runs_code = true;
    return PGS_STMT_WRITE;
  case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
    return analyse_explain(ctx, n->explain_stmt);
  case PG_QUERY__NODE__NODE_COPY_STMT:
    return analyse_copy(ctx, n->copy_stmt);
  case PG_QUERY__NODE__NODE_TRANSACTION_STMT: {
    const PgQuery__TransactionStmt *t = n->transaction_stmt;
    bool read_only = false;
    switch (t->kind) {
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
      if (option_set(t->options, t->n_options, "transaction_read_only", &read_only))
        ctx->read_only_tx = read_only;
      return PGS_STMT_BEGIN;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
      return PGS_STMT_COMMIT;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
      return PGS_STMT_ROLLBACK;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT_PREPARED:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_PREPARED:
      /* A client's own two-phase commit would name one shard's prepared
       * transaction while its transaction spans the shards pgshard chose:
       * pgshard runs two-phase commit itself (cross_shard_writes = 2pc). */
      refuse(ctx, "0A000",
             "PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are not routed: a "
             "transaction through pgshard may span shards; use cross_shard_writes = 2pc for "
             "atomic commits");
      return PGS_STMT_OTHER;
    default: /* SAVEPOINT, RELEASE, ROLLBACK TO */
      return PGS_STMT_SESSION;
    }
  }
  case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT: {
    const PgQuery__VariableSetStmt *v = n->variable_set_stmt;
    bool read_only = false;
    if (v->name && !strcmp(v->name, "TRANSACTION") &&
        option_set(v->args, v->n_args, "transaction_read_only", &read_only))
      ctx->read_only_tx = read_only;
    return PGS_STMT_SESSION;
  }
  case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
    return PGS_STMT_READ;
  case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT: {
    /* Routed as the read it is: on one shard the cursor lives on its
     * server; on several pgshard gathers its rows (planner.c). A cursor
     * over a SELECT that locks rows or calls code that may write is a
     * write, like that SELECT. */
    const PgQuery__DeclareCursorStmt *d = n->declare_cursor_stmt;
    ctx->cursor = true;
    ctx->cursor_op = PGS_CURSOR_DECLARE;
    snprintf(ctx->cursor_name, sizeof(ctx->cursor_name), "%s", d->portalname ? d->portalname : "");
    ctx->cursor_hold = (d->options & 0x0020) != 0;   /* CURSOR_OPT_HOLD */
    ctx->cursor_scroll = (d->options & 0x0002) != 0; /* CURSOR_OPT_SCROLL */
    return analyse_stmt(ctx, d->query, false) == PGS_STMT_WRITE ? PGS_STMT_WRITE : PGS_STMT_READ;
  }
  case PG_QUERY__NODE__NODE_FETCH_STMT: {
    const PgQuery__FetchStmt *f = n->fetch_stmt;
    ctx->cursor_op = f->ismove ? PGS_CURSOR_MOVE : PGS_CURSOR_FETCH;
    snprintf(ctx->cursor_name, sizeof(ctx->cursor_name), "%s", f->portalname ? f->portalname : "");
    /* FETCH -n and FETCH 0 are FORWARD in the grammar, but not forward. */
    ctx->fetch_forward =
        f->direction == PG_QUERY__FETCH_DIRECTION__FETCH_FORWARD && f->how_many > 0;
    ctx->fetch_count = f->how_many >= INT64_MAX / 2 ? -1 : f->how_many; /* FETCH_ALL: LONG_MAX */
    return PGS_STMT_SESSION;
  }
  case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
    ctx->cursor_op = PGS_CURSOR_CLOSE;
    snprintf(ctx->cursor_name, sizeof(ctx->cursor_name), "%s",
             n->close_portal_stmt->portalname ? n->close_portal_stmt->portalname : "");
    return PGS_STMT_SESSION;
  case PG_QUERY__NODE__NODE_PREPARE_STMT: {
    /* EXECUTE would run it wherever the session is, whatever its
     * parameters: a statement on a sharded table must be prepared through
     * the protocol (Parse/Bind), where each Bind is routed. */
    int before = ctx->nrefs;
    walk_node(ctx, NULL, n->prepare_stmt->query);
    if (ctx->nrefs > before)
      refuse(ctx, "0A000",
             "SQL PREPARE of a statement on sharded table %s is not supported; use the "
             "protocol's prepared statements (Parse/Bind), as drivers do",
             ctx->refs[before].table->name);
    return PGS_STMT_SESSION;
  }
  case PG_QUERY__NODE__NODE_LISTEN_STMT:
  case PG_QUERY__NODE__NODE_UNLISTEN_STMT:
  case PG_QUERY__NODE__NODE_NOTIFY_STMT:
    ctx->notifies = true;
    return PGS_STMT_SESSION;
  case PG_QUERY__NODE__NODE_DISCARD_STMT:
  case PG_QUERY__NODE__NODE_EXECUTE_STMT:
  case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
  case PG_QUERY__NODE__NODE_CONSTRAINTS_SET_STMT:
  case PG_QUERY__NODE__NODE_LOAD_STMT:
    return PGS_STMT_SESSION;
  default:
    return is_ddl(n->node_case) ? PGS_STMT_DDL : PGS_STMT_OTHER;
  }
}

/* ---- the generic walk ---- */

static void walk_fields(ctx_t *ctx, scope_t *sc, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = (const char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t count = *(const size_t *)(const void *)(base + f->quantifier_offset);
      ProtobufCMessage *const *items =
          *(ProtobufCMessage *const *const *)(const void *)(base + f->offset);
      for (size_t j = 0; j < count; j++) walk(ctx, sc, items[j]);
    } else {
      if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
          *(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
        continue;
      walk(ctx, sc, *(ProtobufCMessage *const *)(const void *)(base + f->offset));
    }
  }
}

/* Any part of a statement: subqueries and DML (in CTEs) are analysed,
 * function calls checked, sharded tables named where no key can be found
 * for them become refs without keys; everything else is descended into. */
static void walk(ctx_t *ctx, scope_t *sc, const ProtobufCMessage *m) {
  if (m == NULL || !enter(ctx)) goto out;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (d == &pg_query__node__descriptor) {
    const PgQuery__Node *n = (const PgQuery__Node *)m;
    switch (n->node_case) {
    case PG_QUERY__NODE__NODE__NOT_SET:
    case PG_QUERY__NODE__NODE_COLUMN_REF:
    case PG_QUERY__NODE__NODE_PARAM_REF:
    case PG_QUERY__NODE__NODE_A_CONST:
    case PG_QUERY__NODE__NODE_STRING:
    case PG_QUERY__NODE__NODE_INTEGER:
    case PG_QUERY__NODE__NODE_FLOAT:
    case PG_QUERY__NODE__NODE_TYPE_NAME:
      break;
    case PG_QUERY__NODE__NODE_INSERT_STMT:
      analyse_insert(ctx, sc, n->insert_stmt, false);
      break;
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
      analyse_update(ctx, sc, n->update_stmt);
      break;
    case PG_QUERY__NODE__NODE_DELETE_STMT:
      analyse_delete(ctx, sc, n->delete_stmt);
      break;
    case PG_QUERY__NODE__NODE_MERGE_STMT:
      analyse_merge(ctx, sc, n->merge_stmt);
      break;
    default:
      /* Every member of the oneof is a message pointer in the same place. */
      walk(ctx, sc, (const ProtobufCMessage *)n->alias);
      break;
    }
  } else if (d == &pg_query__select_stmt__descriptor) {
    analyse_select(ctx, sc, (const PgQuery__SelectStmt *)m);
  } else if (d == &pg_query__func_call__descriptor) {
    check_function(ctx, (const PgQuery__FuncCall *)m);
    walk_fields(ctx, sc, m);
  } else if (d == &pg_query__range_var__descriptor) {
    const pgs_table_t *t = sharded(ctx, (const PgQuery__RangeVar *)m);
    if (t) new_ref(ctx, t, -2);
  } else if (d == &pg_query__locking_clause__descriptor ||
             d == &pg_query__into_clause__descriptor) {
    /* names of aliases / of a table to create */
  } else {
    walk_fields(ctx, sc, m);
  }
out:
  if (m) leave(ctx);
}

static void walk_node(ctx_t *ctx, scope_t *sc, const PgQuery__Node *n) {
  if (n) walk(ctx, sc, &n->base);
}

/* ---- putting it together ---- */

/* SET [LOCAL], RESET and savepoints: state of a transaction that a shard
 * it reaches later must be given too (in order, from its BEGIN). */
static bool tx_replayable(const PgQuery__Node *n) {
  if (n == NULL) return false;
  if (n->node_case == PG_QUERY__NODE__NODE_VARIABLE_SET_STMT) return true;
  if (n->node_case != PG_QUERY__NODE__NODE_TRANSACTION_STMT) return false;
  switch (n->transaction_stmt->kind) {
  case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
  case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
  case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO:
    return true;
  default:
    return false;
  }
}

/* Strongest first: a text of several statements takes the first of these
 * kinds any of them has. */
static pgs_stmt_kind_t combine_kinds(const pgs_stmt_kind_t *kinds, int n) {
  static const pgs_stmt_kind_t order[] = {
      PGS_STMT_WRITE, PGS_STMT_DDL,     PGS_STMT_COPY_FROM, PGS_STMT_COPY_TO, PGS_STMT_OTHER,
      PGS_STMT_READ,  PGS_STMT_SESSION, PGS_STMT_BEGIN,     PGS_STMT_COMMIT,  PGS_STMT_ROLLBACK,
  };
  if (n == 0) return PGS_STMT_OTHER;
  bool same = true;
  for (int i = 1; i < n; i++) same = same && kinds[i] == kinds[0];
  if (same) return kinds[0];
  for (size_t o = 0; o < PGS_ARRAY_LEN(order); o++)
    for (int i = 0; i < n; i++)
      if (kinds[i] == order[o]) return order[o];
  return kinds[n - 1];
}

static bool same_key(const pgs_key_ref_t *a, const pgs_key_ref_t *b) {
  return a->table == b->table && a->param == b->param && a->negate == b->negate &&
         a->array == b->array && a->cast_type_oid == b->cast_type_oid;
}

static void propagate(ctx_t *ctx) {
  bool changed = true;
  while (changed) {
    changed = false;
    for (int i = 0; i < ctx->nedges; i++) {
      const edge_t *e = &ctx->edges[i];
      ref_t *a = &ctx->refs[e->a], *b = &ctx->refs[e->b];
      if (a->keyed && !b->keyed && e->into_b) {
        ctx->tmp.n = 0;
        for (int k = 0; k < a->count; k++) keyvec_push(&ctx->tmp, &ctx->pool.v[a->first + k]);
        set_keys(ctx, e->b, ctx->tmp.v, ctx->tmp.n);
        changed = true;
      } else if (b->keyed && !a->keyed && e->into_a) {
        ctx->tmp.n = 0;
        for (int k = 0; k < b->count; k++) keyvec_push(&ctx->tmp, &ctx->pool.v[b->first + k]);
        set_keys(ctx, e->a, ctx->tmp.v, ctx->tmp.n);
        changed = true;
      }
    }
  }
}

static pgs_plan_t *build_plan(ctx_t *ctx, pgs_stmt_kind_t kind, int nstatements) {
  propagate(ctx);
  int unkeyed = -1, ninsert = 0;
  for (int r = 0; r < ctx->nrefs; r++) {
    if (!ctx->refs[r].keyed && unkeyed < 0) unkeyed = r;
    if (ctx->refs[r].insert) ninsert++;
  }
  pgs_target_t target = PGS_TARGET_ANY;
  bool rows = false, same_shard = false;
  if (ctx->too_deep) { /* not expected: tree_depth_ok came first */
    refuse(ctx, "54001", "statement too complex to route");
    target = PGS_TARGET_ALL;
  } else if (unkeyed >= 0) {
    target = PGS_TARGET_ALL;
    if (ninsert > 0)
      for (int r = 0; r < ctx->nrefs; r++)
        if (ctx->refs[r].insert)
          refuse(ctx, "0A000",
                 "a statement inserting into sharded table %s and reading sharded table %s "
                 "without its shard key is not supported",
                 ctx->refs[r].table->name, ctx->refs[unkeyed].table->name);
  } else if (ctx->copy_rows && ctx->nrefs == 0 && nstatements == 1) {
    target = PGS_TARGET_ROWS;
  } else if (ctx->copy_rows) {
    refuse(ctx, "0A000", "COPY into sharded table %s with other statements is not supported",
           ctx->table->name);
    target = PGS_TARGET_ALL;
  } else if (ctx->nrefs == 1 && ctx->insert_ref == 0 && nstatements == 1) {
    target = PGS_TARGET_ROWS;
    rows = true;
  } else if (ctx->nrefs > 0) {
    target = PGS_TARGET_KEYS;
    same_shard = ninsert > 0;
  }

  /* The keys: the union over refs, without duplicates, in order. */
  keyvec_t keys = {0};
  if (target == PGS_TARGET_KEYS) {
    for (int r = 0; r < ctx->nrefs; r++) {
      const ref_t *ref = &ctx->refs[r];
      for (int k = 0; k < ref->count; k++) {
        const pgs_key_ref_t *key = &ctx->pool.v[ref->first + k];
        bool dup = false;
        /* Quadratic, but only on a cache miss and over at most a few
         * thousand keys, next to a full parse. */
        for (int j = 0; j < keys.n && !dup; j++) dup = same_key(&keys.v[j], key);
        if (!dup) keyvec_push(&keys, key);
      }
    }
  }
  int nrows = rows ? ctx->refs[0].count : 0;
  size_t size = sizeof(pgs_plan_t) + sizeof(pgs_key_ref_t) * (size_t)(keys.n + nrows);
  pgs_plan_t *plan = pgs_xcalloc(1, size);
  pgs_key_ref_t *space = (pgs_key_ref_t *)(void *)(plan + 1);
  plan->kind = kind;
  plan->target = target;
  plan->read_only_tx = ctx->read_only_tx;
  plan->runs_code = ctx->runs_code;
  for (int r = 0; r < ctx->nrefs && plan->unkeyed_tenant == NULL; r++)
    if (!ctx->refs[r].keyed && ctx->refs[r].table->strategy == PGS_STRATEGY_TENANT)
      plan->unkeyed_tenant = ctx->refs[r].table;
  plan->copy_write = ctx->copy_write;
  plan->cursor = ctx->cursor;
  if (nstatements == 1) plan->needs_columns = ctx->needs_columns;
  plan->notifies = nstatements == 1 && ctx->notifies;
  plan->advisory = nstatements == 1 && ctx->advisory && plan->kind == PGS_STMT_SESSION;
  if (nstatements == 1) {
    plan->cursor_op = ctx->cursor_op;
    memcpy(plan->cursor_name, ctx->cursor_name, sizeof(plan->cursor_name));
    plan->cursor_hold = ctx->cursor_hold;
    plan->cursor_scroll = ctx->cursor_scroll;
    plan->fetch_forward = ctx->fetch_forward;
    plan->fetch_count = ctx->fetch_count;
  }
  plan->tx_replayable = nstatements > 0 && ctx->not_replayable == 0 && kind == PGS_STMT_SESSION;
  plan->nkeys = keys.n;
  plan->keys = keys.n ? space : NULL;
  if (keys.n) memcpy(space, keys.v, sizeof(*keys.v) * (size_t)keys.n);
  plan->nrows = nrows;
  plan->rows = nrows ? space + keys.n : NULL;
  if (nrows)
    memcpy(plan->rows, &ctx->pool.v[ctx->refs[0].first], sizeof(*plan->rows) * (size_t)nrows);
  plan->table = ctx->table;
  if (target == PGS_TARGET_ALL)
    plan->all_table = unkeyed >= 0 ? ctx->refs[unkeyed].table : ctx->copy_rows ? ctx->table : NULL;
  memcpy(plan->refuse_sqlstate, ctx->sqlstate, sizeof(plan->refuse_sqlstate));
  memcpy(plan->refuse_message, ctx->message, sizeof(plan->refuse_message));
  plan->refcount = 1;
  plan->same_shard_required = same_shard;
  plan->copy_key_column = ctx->copy_rows ? ctx->copy_key_column : -1;
  plan->copy = ctx->copy;
  ctx->copy = NULL;
  plan->nstatements = nstatements;
  free(keys.v);
  return plan;
}

/* A plan refusing a statement too deep to analyse. */
static pgs_plan_t *too_complex_plan(void) {
  pgs_plan_t *plan = pgs_xcalloc(1, sizeof(*plan));
  plan->kind = PGS_STMT_OTHER;
  plan->target = PGS_TARGET_ALL;
  plan->refcount = 1;
  plan->copy_key_column = -1;
  memcpy(plan->refuse_sqlstate, "54001", 6);
  snprintf(plan->refuse_message, sizeof(plan->refuse_message),
           "pgshard: statement too complex to route");
  return plan;
}

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; *p < end && shift < 64; shift += 7) {
    uint8_t b = *(*p)++;
    r |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

static const ProtobufCFieldDescriptor *field_by_id(const ProtobufCMessageDescriptor *d,
                                                   uint64_t id) {
  unsigned lo = 0, hi = d->n_fields; /* fields are sorted by number */
  while (lo < hi) {
    unsigned mid = (lo + hi) / 2;
    if (d->fields[mid].id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < d->n_fields && d->fields[lo].id == id ? &d->fields[lo] : NULL;
}

/* Whether libpg_query's serialized tree nests at most LIMIT messages deep,
 * found without recursion: protobuf-c's unpack recurses once per level with
 * a large frame, so a deep tree must be refused before it is unpacked. */
bool pgs_analyze_tree_depth_ok(const uint8_t *data, size_t len, int limit) {
  typedef struct frame {
    const uint8_t *end;
    const ProtobufCMessageDescriptor *desc;
  } frame_t;
  frame_t *stack = pgs_xmalloc(sizeof(*stack) * (size_t)(limit + 1));
  int depth = 0;
  stack[0] = (frame_t){data + len, &pg_query__parse_result__descriptor};
  const uint8_t *p = data;
  bool ok = true;
  while (ok) {
    const uint8_t *end = stack[depth].end;
    if (p == end) {
      if (depth == 0) break;
      depth--;
      continue;
    }
    uint64_t tag, v;
    if (!read_varint(&p, end, &tag)) break;
    switch (tag & 7) {
    case 0:
      ok = read_varint(&p, end, &v);
      break;
    case 1:
      ok = end - p >= 8;
      p += ok ? 8 : 0;
      break;
    case 5:
      ok = end - p >= 4;
      p += ok ? 4 : 0;
      break;
    case 2: {
      ok = read_varint(&p, end, &v) && v <= (uint64_t)(end - p);
      if (!ok) break;
      const ProtobufCFieldDescriptor *f = field_by_id(stack[depth].desc, tag >> 3);
      if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ok = depth < limit;
        if (ok) stack[++depth] = (frame_t){p + v, f->descriptor};
      } else {
        p += v;
      }
      break;
    }
    default:
      ok = false;
      break;
    }
  }
  free(stack);
  return ok;
}

/* A statement the grammar does not take is refused (42601) rather than
 * sent anywhere: what pgshard cannot read it cannot place. WHY: the
 * parser's message, or NULL. */
static pgs_plan_t *parse_failed_plan(const char *why) {
  pgs_plan_t *plan = pgs_xcalloc(1, sizeof(*plan));
  plan->kind = PGS_STMT_OTHER;
  plan->target = PGS_TARGET_ANY;
  plan->refcount = 1;
  plan->copy_key_column = -1;
  plan->parse_failed = true;
  memcpy(plan->refuse_sqlstate, "42601", 6);
  snprintf(plan->refuse_message, sizeof(plan->refuse_message),
           "pgshard: %s%s; the statement was not sent to any shard",
           why ? why : "syntax error: statement not understood",
           why ? " (PostgreSQL 15 grammar)" : "");
  return plan;
}

/* The normalised text with each literal put back as a literal, and where
 * each now starts (pgs_lexed_restore). NULL if the lexer's placeholders
 * are not where it said. */
static char *restore_literals(const pgs_lexed_t *lexed, int32_t *loc) {
  pgs_buf_t text;
  pgs_buf_init(&text);
  int next = 0;
  if (!pgs_lexed_restore(lexed, 0, lexed->normalized_len, &next, &text, loc)) {
    pgs_buf_free(&text);
    return NULL;
  }
  pgs_buf_put_u8(&text, '\0');
  return (char *)text.data;
}

pgs_plan_t *pgs_analyze(const pgs_database_t *db, const pgs_lexed_t *lexed) {
  if (lexed->normalized == NULL) return parse_failed_plan(NULL);
  if (lexed->chain > PGS_ANALYZE_MAX_CHAIN) return too_complex_plan();
  PgQueryProtobufParseResult result = pg_query_parse_protobuf(lexed->normalized);
  char *restored = NULL;
  int32_t *loc = NULL;
  if (result.error && lexed->nliterals > 0) {
    /* A literal in a place the grammar takes no parameter (see analyze.h). */
    pg_query_free_protobuf_parse_result(result);
    loc = pgs_xmalloc(sizeof(*loc) * (size_t)lexed->nliterals);
    restored = restore_literals(lexed, loc);
    if (restored == NULL) {
      free(loc);
      return parse_failed_plan(NULL);
    }
    result = pg_query_parse_protobuf(restored);
  }
  PgQuery__ParseResult *tree = NULL;
  if (!result.error && !pgs_analyze_tree_depth_ok((const uint8_t *)result.parse_tree.data,
                                                  result.parse_tree.len, PGS_ANALYZE_MAX_DEPTH)) {
    pg_query_free_protobuf_parse_result(result);
    free(restored);
    free(loc);
    return too_complex_plan();
  }
  if (!result.error)
    tree = pg_query__parse_result__unpack(NULL, result.parse_tree.len,
                                          (const uint8_t *)result.parse_tree.data);
  if (tree == NULL) {
    char why[160] = "";
    if (result.error && result.error->message)
      snprintf(why, sizeof(why), "%s", result.error->message);
    pg_query_free_protobuf_parse_result(result);
    free(restored);
    free(loc);
    return parse_failed_plan(why[0] ? why : NULL);
  }

  ctx_t ctx = {.db = db, .insert_ref = -1, .copy_key_column = -1};
  if (restored) {
    ctx.text = restored;
    ctx.lit_loc = loc;
    ctx.nlit = lexed->nliterals;
    ctx.lit_base = lexed->nparams + 1;
  }
  int n = (int)tree->n_stmts;
  pgs_stmt_kind_t *kinds = pgs_xmalloc(sizeof(*kinds) * (size_t)(n > 0 ? n : 1));
  for (int i = 0; i < n; i++) {
    const PgQuery__Node *stmt = tree->stmts[i]->stmt;
    kinds[i] = stmt && stmt->node_case == PG_QUERY__NODE__NODE_SELECT_STMT &&
                       unlocks_all(stmt->select_stmt)
                   ? PGS_STMT_SESSION
                   : analyse_stmt(&ctx, stmt, n == 1);
    if (!tx_replayable(tree->stmts[i]->stmt)) ctx.not_replayable++;
  }
  pgs_plan_t *plan = build_plan(&ctx, combine_kinds(kinds, n), n);
  /* A single read of sharded tables: how it runs across shards (merge.c). */
  if (n == 1 && ctx.nrefs > 0 && (plan->kind == PGS_STMT_READ || plan->kind == PGS_STMT_COPY_TO))
    plan->merge = pgs_merge_analyze(db, lexed, tree->stmts[0]->stmt, restored ? loc : NULL);

  free(kinds);
  free(ctx.refs);
  free(ctx.pool.v);
  free(ctx.tmp.v);
  free(ctx.edges);
  free(ctx.links);
  pg_query__parse_result__free_unpacked(tree, NULL);
  pg_query_free_protobuf_parse_result(result);
  free(restored);
  free(loc);
  return plan;
}

void pgs_plan_unref(pgs_plan_t *plan) {
  if (plan == NULL) return;
  PGS_ASSERT(plan->refcount > 0);
  if (--plan->refcount == 0) {
    pgs_merge_spec_free(plan->merge);
    pgs_copy_options_free(plan->copy);
    free(plan);
  }
}
