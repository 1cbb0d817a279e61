/*
 * merge.c — the analysis half of cross-shard reads (merge.h): from the
 * parse tree of a SELECT (or COPY ... TO STDOUT) that reads sharded tables,
 * what each shard runs and how the shards' rows combine into the answer one
 * PostgreSQL holding every row would give; or, when that cannot be done
 * exactly, why not (spec->refuse, naming the construct).
 *
 * The tree is libpg_query's for the lexer's normalised text, where every
 * literal is a parameter $N. Nothing in a spec may depend on a literal's
 * value: the spec is cached with the plan and serves every statement that
 * normalises to the same text. (ORDER BY 2 is a position, not a value; the
 * lexer keeps such integers verbatim, so they are part of the text.) So
 * expressions are compared by structure, parameter numbers included and
 * locations aside, and a hidden column's text is libpg_query's deparse of
 * the expression, in which $N stay $N; pgs_merge_shard_sql puts the
 * literals back on every run. A text the parser took only with its
 * literals put back (varchar(10), DATE '...') is first given its
 * parameters again (params_again), so both kinds of text are analysed
 * alike.
 *
 * Columns are numbered as the shards return them: hidden columns first,
 * then the client's. While the analysis runs, a column is symbolic
 * (hidden index, or VISIBLE + target index), since how many columns are
 * hidden is known only at the end.
 *
 * Where the shards must run more than the client's statement:
 *  - HAVING: each shard keeps every partial group ("HAVING true OR ..."
 *    still makes the server check the condition and type its parameters);
 *    the aggregates the condition reads and its constants are hidden
 *    columns, a constant as "CASE WHEN false THEN other operand ELSE
 *    constant END" so the server types it as the comparison would.
 *  - count/sum/avg(DISTINCT x): each shard also groups by x (GROUP BY the
 *    hidden column's position), so its rows hold one value of x each and
 *    the other aggregates are partial over finer groups, which still
 *    combine.
 *  - DISTINCT ON runs on the shards as written; the merge keeps the first
 *    row of each key.
 * Expressions equal to GROUP BY items but for their literals (which are
 * numbered apart) match them only when those literals are written alike:
 * the spec lists such pairs and every run checks them.
 *
 * Invariant: a spec with refuse set has nothing else set.
 */
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "pgshard/collate.h"
#include "pgshard/config.h"
#include "pgshard/merge.h"
#include "pgshard/pbwalk.h"
#include "pgshard/route.h"
#include "pgshard/shardmap.h"

/* Backstop for the recursive walks (the tree's depth was checked before
 * it was unpacked; a walk takes two frames per level). */
#define MAX_DEPTH (2 * PGS_ANALYZE_MAX_DEPTH + 16)
/* Symbolic columns at or above this are targets; below, hidden columns. */
#define VISIBLE 0x100000
/* A resolved ORDER BY / GROUP BY item that needs no column (a constant). */
#define NO_COLUMN (-1)
/* Hidden plus visible columns must fit pgs_merge_key_t's int16. */
#define MAX_COLUMNS 16000

typedef struct target {
  const PgQuery__Node *expr; /* ResTarget.val */
  const char *alias;         /* AS name, or NULL */
  const char *name;          /* output column name (alias, column, function), or NULL */
  int agg;                   /* pgs_agg_kind_t when a bare aggregate */
  bool distinct;             /* count/sum/avg(DISTINCT x) */
  bool star;                 /* *, t.* or (x).*: any number of columns */
  int avg_sum, avg_count;    /* AVG: hidden columns */
  int distinct_arg;          /* DISTINCT: the hidden column holding x */
} target_t;

typedef struct hidden {
  char *text;                /* deparsed expression, $N kept */
  const PgQuery__Node *expr; /* the expression (NULL: an avg's part) */
  int agg;
  bool distinct; /* count/sum(DISTINCT x): distinct_arg holds x */
  int avg_sum, avg_count;
  int distinct_arg;
  bool arg;                  /* the x of a DISTINCT aggregate: the shards group by it */
  bool constant;             /* a HAVING constant */
  const PgQuery__Node *sort; /* an ORDER BY expression of its own, or NULL */
} hidden_t;

/* A HAVING node as pgs_merge_cond_t, its columns symbolic. */
typedef struct cond {
  int kind, op, nargs, left, right;
} cond_t;

/* A GROUP BY item, for HAVING: the expression it is (as written, and the
 * select item it names) and its column (symbolic). */
typedef struct group_node {
  const PgQuery__Node *expr, *target;
  int column;
} group_node_t;

typedef struct sort_key {
  int column; /* symbolic */
  bool desc, nulls_first;
} sort_key_t;

/* Shard key names a source in FROM exposes at most (a subquery may
 * select several). */
#define MAX_SOURCE_KEYS 8

/* A sharded table in a query level's FROM, or a subquery or WITH query
 * there that runs per shard (subqueries and WITH queries below): its
 * rows, like a table's, are on the shard of their key. */
typedef struct from_ref {
  const pgs_table_t *table; /* the table, or one the source reads (they are sharded alike) */
  const char *name;         /* alias or table name */
  const char *keys[MAX_SOURCE_KEYS]; /* its columns holding the shard key */
  int nkeys;
  bool nullable; /* on the nullable side of an outer join: its key may be NULL */
} from_ref_t;

/* A WITH query, and a sharded table its body reads (NULL: none). */
typedef struct cte_def {
  const PgQuery__CommonTableExpr *cte;
  const pgs_table_t *reads;
} cte_def_t;

/* The WITH names one query level binds, and the enclosing levels'. */
typedef struct cte_scope {
  const struct cte_scope *parent;
  const cte_def_t *defs;
  int ndefs;
  bool recursive;
} cte_scope_t;

/* Two refs whose shard keys a join equates. */
typedef struct key_edge {
  int a, b;
} key_edge_t;

typedef struct an {
  const pgs_database_t *db;
  const pgs_lexed_t *lexed;
  const int32_t *lit_loc;            /* literals put back: where each starts there */
  const PgQuery__SelectStmt *select; /* the SELECT analysed */
  uint32_t *lit_len;                 /* ... and how long each is there */
  pgs_merge_spec_t *spec;
  bool copy;
  bool too_deep;
  bool walk_skip; /* set by a visitor: walk does not go below this node */
  /* WITH names visible here (they hide tables of the same name). */
  cte_scope_t ctes;
  cte_def_t *cte_defs; /* this level's own, ctes.defs */
  from_ref_t *refs;
  int nrefs, refs_cap;
  key_edge_t *edges;
  int nedges, edges_cap;
  target_t *targets;
  int ntargets;
  int first_star;           /* index of the first star target, or -1 */
  int32_t first_target_loc; /* location of the first ResTarget */
  hidden_t *hidden;
  int nhidden, hidden_cap;
  bool grouped;
  int *group; /* symbolic */
  int ngroup;
  group_node_t *group_nodes;
  int ngroup_nodes;
  bool group_clause; /* GROUP BY names something besides () */
  bool regroup;      /* DISTINCT aggregates: the shards group by their x too */
  cond_t *conds;     /* HAVING */
  int nconds, conds_cap;
  int32_t *same; /* literal pairs that must be written alike (add_same) */
  int nsame, same_cap;
  sort_key_t *keys;
  int nkeys;
  int distinct_on; /* the last keys that are the DISTINCT ON expressions */
  pgs_merge_position_t *positions;
  int npositions, positions_cap;
  /* Query levels: the top level's SELECT, or a subquery's (subqueries
   * and WITH queries below), the level around it for the names it may
   * correlate to (NULL: none), the top level's analysis and how many
   * levels it has opened and how deep this one is. */
  const PgQuery__SelectStmt *stmt;
  const struct an *outer;
  struct an *root;
  int nlevels, level_depth;
} an_t;

PGS_PRINTF(2, 3)
static bool refuse(an_t *an, const char *fmt, ...) {
  pgs_merge_spec_t *spec = an->spec;
  if (spec->refuse[0] != '\0') return false; /* the first refusal wins */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(spec->refuse, sizeof(spec->refuse), fmt, ap);
  va_end(ap);
  return false;
}

static bool refused(const an_t *an) { return an->spec->refuse[0] != '\0'; }

/* ---- tree helpers ---- */

static const char *str_of(const PgQuery__Node *n) {
  return n && n->node_case == PG_QUERY__NODE__NODE_STRING ? n->string->sval : NULL;
}

static bool is_node(const PgQuery__Node *n, PgQuery__Node__NodeCase c) {
  return n != NULL && n->node_case == c;
}

/* Calls VISIT on M and everything below it, depth first, until VISIT
 * returns true (then so does this). Queries nested in expressions
 * (SELECT statements) are entered only with INTO_QUERIES. A visitor that
 * sets an->walk_skip keeps the walk out of what is below the node. */
typedef bool (*visit_fn)(an_t *an, const ProtobufCMessage *m, void *arg);

typedef struct walk_ctx {
  an_t *an;
  bool into_queries;
  visit_fn visit;
  void *arg;
} walk_ctx_t;

static pgs_walk_t walk_step(const ProtobufCMessage *m, void *arg) {
  walk_ctx_t *w = arg;
  if (w->visit(w->an, m, w->arg)) return PGS_WALK_STOP;
  if (w->an->walk_skip) {
    w->an->walk_skip = false;
    return PGS_WALK_SKIP;
  }
  if (!w->into_queries && m->descriptor == &pg_query__select_stmt__descriptor) return PGS_WALK_SKIP;
  return PGS_WALK_ON;
}

static bool walk(an_t *an, const ProtobufCMessage *m, bool into_queries, visit_fn visit,
                 void *arg) {
  walk_ctx_t w = {an, into_queries, visit, arg};
  return pgs_pb_walk(m, MAX_DEPTH, walk_step, &w, &an->too_deep);
}

static bool walk_node(an_t *an, const PgQuery__Node *n, bool into_queries, visit_fn visit,
                      void *arg) {
  return n != NULL && walk(an, &n->base, into_queries, visit, arg);
}

static void add_same(an_t *an, int a, int b);

/* Whether two parse trees are the same expression: every field equal but
 * the locations. With AN, two literals of the lexer's (parameters past the
 * client's) match too, and the pair is noted (add_same): the expressions
 * are the same only when those literals are written alike, which each run
 * checks (pgs_merge_limits). */
static bool same_tree(an_t *an, const ProtobufCMessage *a, const ProtobufCMessage *b, int depth) {
  if (a == NULL || b == NULL) return a == b;
  if (a->descriptor != b->descriptor || depth > MAX_DEPTH) return false;
  if (an && a->descriptor == &pg_query__param_ref__descriptor) {
    int pa = ((const PgQuery__ParamRef *)a)->number, pb = ((const PgQuery__ParamRef *)b)->number;
    if (pa > an->lexed->nparams && pb > an->lexed->nparams) {
      if (pa != pb) add_same(an, pa, pb);
      return true;
    }
    return pa == pb;
  }
  const ProtobufCMessageDescriptor *d = a->descriptor;
  const char *pa = (const char *)a, *pb = (const char *)b;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (!strcmp(f->name, "location")) continue;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t ca = *(const uint32_t *)(const void *)(pa + f->quantifier_offset);
      uint32_t cb = *(const uint32_t *)(const void *)(pb + f->quantifier_offset);
      if (ca != cb) return false;
      if (ca != f->id) continue;
    }
    size_t count = 1;
    const char *va = pa + f->offset, *vb = pb + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      count = *(const size_t *)(const void *)(pa + f->quantifier_offset);
      if (count != *(const size_t *)(const void *)(pb + f->quantifier_offset)) return false;
      va = *(const char *const *)(const void *)va;
      vb = *(const char *const *)(const void *)vb;
    }
    for (size_t j = 0; j < count; j++) {
      switch (f->type) {
      case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *ma = ((const ProtobufCMessage *const *)(const void *)va)[j];
        const ProtobufCMessage *mb = ((const ProtobufCMessage *const *)(const void *)vb)[j];
        if (!same_tree(an, ma, mb, depth + 1)) return false;
        break;
      }
      case PROTOBUF_C_TYPE_STRING: {
        const char *sa = ((const char *const *)(const void *)va)[j];
        const char *sb = ((const char *const *)(const void *)vb)[j];
        if (strcmp(sa ? sa : "", sb ? sb : "") != 0) return false;
        break;
      }
      case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *ba = &((const ProtobufCBinaryData *)(const void *)va)[j];
        const ProtobufCBinaryData *bb = &((const ProtobufCBinaryData *)(const void *)vb)[j];
        if (ba->len != bb->len || (ba->len && memcmp(ba->data, bb->data, ba->len) != 0))
          return false;
        break;
      }
      case PROTOBUF_C_TYPE_INT64:
      case PROTOBUF_C_TYPE_SINT64:
      case PROTOBUF_C_TYPE_SFIXED64:
      case PROTOBUF_C_TYPE_UINT64:
      case PROTOBUF_C_TYPE_FIXED64:
      case PROTOBUF_C_TYPE_DOUBLE:
        if (memcmp(va + 8 * j, vb + 8 * j, 8) != 0) return false;
        break;
      default: /* 32-bit integers, enums, floats and protobuf_c_boolean */
        if (memcmp(va + 4 * j, vb + 4 * j, 4) != 0) return false;
        break;
      }
    }
  }
  return true;
}

static bool same_node(const PgQuery__Node *a, const PgQuery__Node *b) {
  return same_tree(NULL, a ? &a->base : NULL, b ? &b->base : NULL, 0);
}

/* same_node, literals of the lexer's aside (same_tree). */
static bool same_node_but_literals(an_t *an, const PgQuery__Node *a, const PgQuery__Node *b) {
  int before = an->nsame;
  if (same_tree(an, a ? &a->base : NULL, b ? &b->base : NULL, 0)) return true;
  an->nsame = before;
  return false;
}

/* Whether N is GROUP BY item G (as written, or the select item it names),
 * literals of the lexer's aside. */
static bool is_group_node(an_t *an, const group_node_t *g, const PgQuery__Node *n) {
  return same_node_but_literals(an, g->expr, n) ||
         (g->target && same_node_but_literals(an, g->target, n));
}

/* The expression N as SQL (libpg_query's deparser), without "SELECT ";
 * NULL when it cannot be deparsed. malloc'ed. */
static char *deparse(const PgQuery__Node *n) {
  PgQuery__ResTarget rt = PG_QUERY__RES_TARGET__INIT;
  rt.val = (PgQuery__Node *)n;
  PgQuery__Node rt_node = PG_QUERY__NODE__INIT;
  rt_node.node_case = PG_QUERY__NODE__NODE_RES_TARGET;
  rt_node.res_target = &rt;
  PgQuery__Node *targets[1] = {&rt_node};
  PgQuery__SelectStmt sel = PG_QUERY__SELECT_STMT__INIT;
  sel.n_target_list = 1;
  sel.target_list = targets;
  sel.limit_option = PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_DEFAULT;
  sel.op = PG_QUERY__SET_OPERATION__SETOP_NONE;
  PgQuery__Node sel_node = PG_QUERY__NODE__INIT;
  sel_node.node_case = PG_QUERY__NODE__NODE_SELECT_STMT;
  sel_node.select_stmt = &sel;
  PgQuery__RawStmt raw = PG_QUERY__RAW_STMT__INIT;
  raw.stmt = &sel_node;
  PgQuery__RawStmt *raws[1] = {&raw};
  PgQuery__ParseResult pr = PG_QUERY__PARSE_RESULT__INIT;
  pr.n_stmts = 1;
  pr.stmts = raws;
  size_t len = pg_query__parse_result__get_packed_size(&pr);
  uint8_t *buf = pgs_xmalloc(len ? len : 1);
  pg_query__parse_result__pack(&pr, buf);
  PgQueryProtobuf pb = {.len = len, .data = (char *)buf};
  PgQueryDeparseResult r = pg_query_deparse_protobuf(pb);
  free(buf);
  char *text = NULL;
  if (r.error == NULL && r.query && strncmp(r.query, "SELECT ", 7) == 0)
    text = pgs_xstrdup(r.query + 7);
  pg_query_free_deparse_result(r);
  return text;
}

/* ---- functions and aggregates ---- */

/* The function's name when it is unqualified or in pg_catalog, else NULL
 * (another schema's function is the user's own). */
static const char *catalog_name(const PgQuery__FuncCall *fc) {
  if (fc->n_funcname == 0) return NULL;
  const char *name = str_of(fc->funcname[fc->n_funcname - 1]);
  if (fc->n_funcname == 2) {
    const char *schema = str_of(fc->funcname[0]);
    if (schema == NULL || strcmp(schema, "pg_catalog") != 0) return NULL;
  } else if (fc->n_funcname > 2) {
    return NULL;
  }
  return name;
}

static const char *last_name(const PgQuery__FuncCall *fc) {
  const char *name = fc->n_funcname ? str_of(fc->funcname[fc->n_funcname - 1]) : NULL;
  return name ? name : "?";
}

/* count, sum, min, max, avg: the aggregates whose partial results merge. */
static int mergeable_kind(const PgQuery__FuncCall *fc) {
  static const struct {
    const char *name;
    int kind;
  } aggs[] = {
      {"count", PGS_AGG_COUNT}, {"sum", PGS_AGG_SUM}, {"min", PGS_AGG_MIN},
      {"max", PGS_AGG_MAX},     {"avg", PGS_AGG_AVG},
  };
  const char *name = catalog_name(fc);
  if (name == NULL || fc->over != NULL) return -1;
  for (size_t i = 0; i < PGS_ARRAY_LEN(aggs); i++)
    if (!strcmp(aggs[i].name, name)) return aggs[i].kind;
  return -1;
}

/* PostgreSQL's other built-in aggregates: their partial results do not
 * combine into the whole one (or pgshard does not combine them). */
static bool other_aggregate(const char *name) {
  static const char *const names[] = {
      "any_value",
      "array_agg",
      "bit_and",
      "bit_or",
      "bit_xor",
      "bool_and",
      "bool_or",
      "corr",
      "covar_pop",
      "covar_samp",
      "cume_dist",
      "dense_rank",
      "every",
      "json_agg",
      "json_agg_strict",
      "json_object_agg",
      "jsonb_agg",
      "jsonb_object_agg",
      "mode",
      "percent_rank",
      "percentile_cont",
      "percentile_disc",
      "range_agg",
      "range_intersect_agg",
      "rank",
      "regr_avgx",
      "regr_avgy",
      "regr_count",
      "regr_intercept",
      "regr_r2",
      "regr_slope",
      "regr_sxx",
      "regr_sxy",
      "regr_syy",
      "stddev",
      "stddev_pop",
      "stddev_samp",
      "string_agg",
      "var_pop",
      "var_samp",
      "variance",
      "xmlagg",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(names); i++)
    if (!strcmp(names[i], name)) return true;
  return false;
}

/* An aggregate call (not a window function): a known aggregate, or
 * anything written with aggregate syntax. */
static bool is_aggregate(const PgQuery__FuncCall *fc) {
  if (fc->over != NULL) return false;
  const char *name = catalog_name(fc);
  return mergeable_kind(fc) >= 0 || (name && other_aggregate(name)) || fc->agg_star ||
         fc->agg_distinct || fc->n_agg_order > 0 || fc->agg_filter != NULL || fc->agg_within_group;
}

static bool visit_window(an_t *an, const ProtobufCMessage *m, void *arg) {
  return m->descriptor == &pg_query__func_call__descriptor &&
         ((const PgQuery__FuncCall *)m)->over != NULL;
}

static bool visit_grouping(an_t *an, const ProtobufCMessage *m, void *arg) {
  return m->descriptor == &pg_query__grouping_func__descriptor;
}

static bool visit_aggregate(an_t *an, const ProtobufCMessage *m, void *arg) {
  if (m->descriptor != &pg_query__func_call__descriptor) return false;
  const PgQuery__FuncCall *fc = (const PgQuery__FuncCall *)m;
  if (!is_aggregate(fc)) return false;
  *(const PgQuery__FuncCall **)arg = fc;
  return true;
}

/* The first aggregate call in N (not inside a subquery), or NULL. */
static const PgQuery__FuncCall *find_aggregate(an_t *an, const PgQuery__Node *n) {
  const PgQuery__FuncCall *found = NULL;
  walk_node(an, n, false, visit_aggregate, &found);
  return found;
}

/* ---- sharded tables ---- */

/* The WITH query RV names, innermost level first (*SCOPE its level's
 * names, *INDEX its place there), or NULL. */
static const cte_def_t *find_cte(const an_t *an, const PgQuery__RangeVar *rv,
                                 const cte_scope_t **scope, int *index) {
  if (rv->relname == NULL || (rv->schemaname && rv->schemaname[0])) return NULL;
  for (const cte_scope_t *sc = &an->ctes; sc; sc = sc->parent) {
    for (int i = 0; i < sc->ndefs; i++) {
      if (strcmp(sc->defs[i].cte->ctename, rv->relname) != 0) continue;
      if (scope) *scope = sc;
      if (index) *index = i;
      return &sc->defs[i];
    }
  }
  return NULL;
}

static bool is_cte(const an_t *an, const PgQuery__RangeVar *rv) {
  return find_cte(an, rv, NULL, NULL) != NULL;
}

static const pgs_table_t *sharded(const an_t *an, const PgQuery__RangeVar *rv) {
  if (rv == NULL || rv->relname == NULL || is_cte(an, rv)) return NULL;
  return pgs_shardmap_find_table(an->db, rv->relname);
}

static bool visit_sharded(an_t *an, const ProtobufCMessage *m, void *arg) {
  if (m->descriptor != &pg_query__range_var__descriptor) return false;
  /* A WITH query reads what its body reads. (A name bound by a WITH
   * inside N is taken for the table: at worst a refusal.) */
  const cte_def_t *cte = find_cte(an, (const PgQuery__RangeVar *)m, NULL, NULL);
  const pgs_table_t *t = cte ? cte->reads : sharded(an, (const PgQuery__RangeVar *)m);
  if (t == NULL) return false;
  *(const pgs_table_t **)arg = t;
  return true;
}

/* A sharded table read anywhere in N (subqueries included), or NULL. */
static const pgs_table_t *find_sharded(an_t *an, const PgQuery__Node *n) {
  const pgs_table_t *found = NULL;
  walk_node(an, n, true, visit_sharded, &found);
  return found;
}

/* Refuses when N reads a sharded table: N is a subquery, or holds one. */
static bool no_sharded_subquery(an_t *an, const PgQuery__Node *n) {
  const pgs_table_t *t = find_sharded(an, n);
  if (t)
    return refuse(an, "a subquery reading sharded table %s cannot be merged across shards",
                  t->name);
  return true;
}

/* Rows that join on a shard key value are on one shard when both tables
 * map a value to a shard the same way: same strategy and key type
 * (integers of any width encode alike), and for ranges the same ranges.
 * Tenant and geo tables share their database's tenant and geo maps. */
static bool sharded_alike(const pgs_table_t *a, const pgs_table_t *b) {
  if (a->strategy != b->strategy) return false;
  bool ia = a->type == PGS_TYPE_SMALLINT || a->type == PGS_TYPE_INT || a->type == PGS_TYPE_BIGINT;
  bool ib = b->type == PGS_TYPE_SMALLINT || b->type == PGS_TYPE_INT || b->type == PGS_TYPE_BIGINT;
  if (a->type != b->type && !(ia && ib)) return false;
  if (a->strategy != PGS_STRATEGY_RANGE) return true;
  if (a->nranges != b->nranges) return false;
  for (int i = 0; i < a->nranges; i++) {
    const pgs_range_t *ra = &a->ranges[i], *rb = &b->ranges[i];
    if (ra->shard != rb->shard || ra->has_low != rb->has_low || ra->has_high != rb->has_high)
      return false;
    if (ra->has_low && pgs_key_compare(ra->low, rb->low) != 0) return false;
    if (ra->has_high && pgs_key_compare(ra->high, rb->high) != 0) return false;
  }
  return true;
}

/* ---- FROM, WHERE and joins ---- */

static int add_ref(an_t *an, const pgs_table_t *t, const char *name) {
  if (an->nrefs == an->refs_cap) {
    an->refs_cap = an->refs_cap ? an->refs_cap * 2 : 4;
    an->refs = pgs_xrealloc(an->refs, (size_t)an->refs_cap * sizeof(*an->refs));
  }
  an->refs[an->nrefs] = (from_ref_t){.table = t, .name = name, .keys = {t->column}, .nkeys = 1};
  return an->nrefs++;
}

static void add_edge(an_t *an, int a, int b) {
  if (a == b) return;
  if (an->nedges == an->edges_cap) {
    an->edges_cap = an->edges_cap ? an->edges_cap * 2 : 4;
    an->edges = pgs_xrealloc(an->edges, (size_t)an->edges_cap * sizeof(*an->edges));
  }
  an->edges[an->nedges++] = (key_edge_t){a, b};
}

static bool ref_key_named(const from_ref_t *ref, const char *col) {
  for (int k = 0; k < ref->nkeys; k++)
    if (!strcmp(ref->keys[k], col)) return true;
  return false;
}

/* The refs whose shard key column N names: a qualified name the ref it
 * qualifies; an unqualified one every ref with a key column of that name
 * (two only when a USING or NATURAL join made them one column). */
static int key_refs(const an_t *an, const PgQuery__Node *n, int *out, int cap) {
  if (!is_node(n, PG_QUERY__NODE__NODE_COLUMN_REF)) return 0;
  const PgQuery__ColumnRef *c = n->column_ref;
  if (c->n_fields == 0) return 0;
  const char *col = str_of(c->fields[c->n_fields - 1]);
  const char *qualifier = c->n_fields > 1 ? str_of(c->fields[c->n_fields - 2]) : NULL;
  if (col == NULL || (c->n_fields > 1 && qualifier == NULL)) return 0;
  int count = 0;
  for (int r = 0; r < an->nrefs && count < cap; r++) {
    if (!ref_key_named(&an->refs[r], col)) continue;
    if (qualifier && strcmp(an->refs[r].name, qualifier) != 0) continue;
    out[count++] = r;
  }
  return count;
}

/* key = key conditions AND-ed at the top of a WHERE or ON clause. */
static void collect_edges(an_t *an, const PgQuery__Node *n) {
  if (n == NULL) return;
  if (n->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR &&
      n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
    for (size_t i = 0; i < n->bool_expr->n_args; i++) collect_edges(an, n->bool_expr->args[i]);
    return;
  }
  if (n->node_case != PG_QUERY__NODE__NODE_A_EXPR) return;
  const PgQuery__AExpr *e = n->a_expr;
  const char *op = e->n_name > 0 ? str_of(e->name[e->n_name - 1]) : NULL;
  if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || op == NULL || strcmp(op, "=") != 0) return;
  int left[8], right[8];
  int nl = key_refs(an, e->lexpr, left, 8), nr = key_refs(an, e->rexpr, right, 8);
  for (int i = 0; i < nl; i++)
    for (int j = 0; j < nr; j++) add_edge(an, left[i], right[j]);
}

/* USING (key) and NATURAL joins equate same-named key columns; an
 * outer join's nullable side may have NULL keys, and the side it keeps
 * whole must read sharded tables: rows of a side every shard has (no
 * sharded table) would come from each shard unmatched. The join's left
 * refs are [START, MID), its right ones [MID, END). */
static void join_keys(an_t *an, const PgQuery__JoinExpr *j, int start, int mid, int end) {
  for (int a = start; a < mid; a++) {
    for (int b = mid; b < end; b++) {
      for (int k = 0; k < an->refs[a].nkeys; k++) {
        const char *col = an->refs[a].keys[k];
        if (!ref_key_named(&an->refs[b], col)) continue;
        bool joined = j->is_natural;
        for (size_t u = 0; u < j->n_using_clause && !joined; u++) {
          const char *name = str_of(j->using_clause[u]);
          joined = name && !strcmp(name, col);
        }
        if (joined) add_edge(an, a, b);
      }
    }
  }
  bool left = j->jointype == PG_QUERY__JOIN_TYPE__JOIN_RIGHT ||
              j->jointype == PG_QUERY__JOIN_TYPE__JOIN_FULL;
  bool right = j->jointype == PG_QUERY__JOIN_TYPE__JOIN_LEFT ||
               j->jointype == PG_QUERY__JOIN_TYPE__JOIN_FULL;
  for (int r = start; r < end; r++)
    if (r < mid ? left : right) an->refs[r].nullable = true;
  if ((right && start == mid && mid < end) || (left && mid == end && start < mid))
    refuse(an,
           "an outer join keeping every row of a side without sharded tables, joined to "
           "sharded table %s, cannot be merged across shards: each shard would return them",
           an->refs[start].table->name);
}

static void add_subquery_source(an_t *an, const PgQuery__Node *n);
static void add_cte_source(an_t *an, const PgQuery__RangeVar *rv);

static void add_from(an_t *an, const PgQuery__Node *n, int depth) {
  if (n == NULL || refused(an)) return;
  if (depth > MAX_DEPTH) {
    an->too_deep = true;
    return;
  }
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_RANGE_VAR: {
    const PgQuery__RangeVar *rv = n->range_var;
    const pgs_table_t *t = sharded(an, rv);
    if (t)
      add_ref(an, t, rv->alias && rv->alias->aliasname ? rv->alias->aliasname : rv->relname);
    else
      add_cte_source(an, rv);
    break;
  }
  case PG_QUERY__NODE__NODE_JOIN_EXPR: {
    const PgQuery__JoinExpr *j = n->join_expr;
    int start = an->nrefs;
    add_from(an, j->larg, depth + 1);
    int mid = an->nrefs;
    add_from(an, j->rarg, depth + 1);
    int end = an->nrefs;
    join_keys(an, j, start, mid, end);
    if (!no_sharded_subquery(an, j->quals)) return;
    collect_edges(an, j->quals);
    break;
  }
  case PG_QUERY__NODE__NODE_RANGE_SUBSELECT:
    add_subquery_source(an, n);
    break;
  case PG_QUERY__NODE__NODE_RANGE_TABLE_SAMPLE: {
    const PgQuery__RangeTableSample *ts = n->range_table_sample;
    add_from(an, ts->relation, depth + 1);
    for (size_t i = 0; i < ts->n_args; i++) no_sharded_subquery(an, ts->args[i]);
    no_sharded_subquery(an, ts->repeatable);
    break;
  }
  default: /* subqueries, functions, XMLTABLE ... */
    no_sharded_subquery(an, n);
    break;
  }
}

static int find_set(int *parent, int x) {
  while (parent[x] != x) x = parent[x] = parent[parent[x]];
  return x;
}

/* Each shard's join is the whole join's part on that shard only when
 * every sharded table is joined to the others on shard keys of tables
 * sharded alike. */
static void check_joins(an_t *an) {
  if (an->nrefs < 2 || refused(an)) return;
  int *parent = pgs_xmalloc(sizeof(int) * (size_t)an->nrefs);
  for (int r = 0; r < an->nrefs; r++) parent[r] = r;
  int unlike = -1; /* an edge between tables sharded differently */
  for (int e = 0; e < an->nedges; e++) {
    const key_edge_t *k = &an->edges[e];
    if (!sharded_alike(an->refs[k->a].table, an->refs[k->b].table)) {
      if (unlike < 0) unlike = e;
      continue;
    }
    parent[find_set(parent, k->a)] = find_set(parent, k->b);
  }
  for (int r = 1; r < an->nrefs; r++) {
    if (find_set(parent, r) == find_set(parent, 0)) continue;
    if (unlike >= 0)
      refuse(an,
             "a join of sharded tables %s and %s on their shard keys cannot be merged across "
             "shards: they are not sharded alike",
             an->refs[an->edges[unlike].a].table->name, an->refs[an->edges[unlike].b].table->name);
    else
      refuse(an,
             "a join of sharded tables %s and %s not on their shard keys cannot be merged across "
             "shards",
             an->refs[0].table->name, an->refs[r].table->name);
    break;
  }
  free(parent);
}

/* ---- subqueries and WITH queries run per shard ----
 *
 * Every shard runs the whole statement, subqueries included, over its own
 * rows. A subquery in FROM, or a WITH query named there, is exact when its
 * rows over all the data are the union of its rows on each shard: it reads
 * sharded tables joined on their keys (check_joins), has no LIMIT/OFFSET
 * and no window function, and groups (GROUP BY, DISTINCT, aggregates) only
 * by a shard key, so that no group spans shards. Such a source is a ref
 * like a table: a column it selects that is a key of its tables is its key,
 * so joins on that column are colocated. A subquery in WHERE is exact when
 * every row it can match lives on the shard of the outer row it is asked
 * about: EXISTS or NOT EXISTS whose WHERE equates the key of its tables
 * with an outer table's key, and key IN (SELECT key ...) of a source as
 * above. NOT IN is not: a NULL the subquery returns on one shard changes
 * the answer on the others.
 *
 * Each subquery is a query level of its own (an_t, OUTER the level around
 * it). A name correlates to an outer level only when it is qualified, since
 * an unqualified one may be a column of the subquery's own tables; a
 * qualifier belongs to the innermost level whose FROM binds it.
 */

/* Query levels one statement may open (a WITH query is analysed where it
 * is used, so its uses multiply), and how deep they may nest. */
#define MAX_LEVELS 512
#define MAX_LEVEL_DEPTH 64

/* What a subquery or WITH query is as a source of rows. */
typedef struct source {
  const pgs_table_t *table; /* a sharded table of its FROM; NULL: none */
  int nkeys;                /* its output columns holding a shard key */
  const char *key_name[MAX_SOURCE_KEYS];
  int key_pos[MAX_SOURCE_KEYS]; /* 0-based output position; -1 after a * */
} source_t;

static const char *output_name(const PgQuery__Node *n);
static bool is_star(const PgQuery__Node *n);
static const char *bare_name(const PgQuery__Node *n);
static const char *setop_name(const PgQuery__SelectStmt *s);
static bool where_subqueries(an_t *an, const PgQuery__Node *n);

/* The WITH queries of W, bound at AN's level. A body sees the WITH
 * queries before it; under RECURSIVE it sees every one, whose reads are
 * not known yet: there each body is read without this WITH's names, and
 * one body reading a sharded table counts for all. */
static void record_with(an_t *an, const PgQuery__WithClause *w) {
  an->cte_defs = pgs_xcalloc(w->n_ctes ? w->n_ctes : 1, sizeof(*an->cte_defs));
  an->ctes.defs = an->cte_defs;
  an->ctes.recursive = w->recursive;
  int count = 0;
  for (size_t i = 0; i < w->n_ctes; i++)
    if (is_node(w->ctes[i], PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR))
      an->cte_defs[count++].cte = w->ctes[i]->common_table_expr;
  const pgs_table_t *any = NULL;
  for (int i = 0; i < count; i++) {
    an->ctes.ndefs = w->recursive ? 0 : i;
    an->cte_defs[i].reads = find_sharded(an, an->cte_defs[i].cte->ctequery);
    if (any == NULL) any = an->cte_defs[i].reads;
  }
  if (w->recursive)
    for (int i = 0; i < count; i++) an->cte_defs[i].reads = any;
  an->ctes.ndefs = count;
}

/* Opens SUB, the level of S inside AN's analysis: OUTER the level its
 * correlated names may reach, CTES the WITH names it sees. false, refused,
 * past the limits. level_close(AN, SUB) either way. */
static bool level_open(an_t *an, an_t *sub, const PgQuery__SelectStmt *s, const an_t *outer,
                       const cte_scope_t *ctes) {
  an_t *root = an->root ? an->root : an;
  *sub = (an_t){.db = an->db,
                .lexed = an->lexed,
                .lit_loc = an->lit_loc,
                .lit_len = an->lit_len,
                .spec = an->spec,
                .copy = an->copy,
                .ctes = {.parent = ctes},
                .first_star = -1,
                .first_target_loc = -1,
                .stmt = s,
                .outer = outer,
                .root = root,
                .level_depth = an->level_depth + 1};
  if (++root->nlevels > MAX_LEVELS || sub->level_depth > MAX_LEVEL_DEPTH)
    return refuse(an, "statement too complex to merge across shards");
  if (s->with_clause) record_with(sub, s->with_clause);
  return true;
}

static void level_close(an_t *an, an_t *sub) {
  if (sub->too_deep) an->too_deep = true;
  free(sub->refs);
  free(sub->edges);
  free(sub->cte_defs);
}

PGS_PRINTF(4, 5)
static bool refuse_source(an_t *an, const char *kind, const PgQuery__SelectStmt *s, const char *fmt,
                          ...) {
  char reason[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof(reason), fmt, ap);
  va_end(ap);
  const pgs_table_t *t = NULL;
  walk(an, &s->base, true, visit_sharded, &t);
  return refuse(an, "%s reading sharded table %s cannot be merged across shards: %s", kind,
                t ? t->name : "?", reason);
}

/* ---- names across levels ---- */

/* Whether FROM item N binds the name Q (when unsure, yes: then no outer
 * level is taken for it). */
static bool from_binds(const PgQuery__Node *n, const char *q, int depth) {
  if (n == NULL) return false;
  if (depth > MAX_DEPTH) return true;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_RANGE_VAR: {
    const PgQuery__RangeVar *rv = n->range_var;
    const char *name = rv->alias && rv->alias->aliasname ? rv->alias->aliasname : rv->relname;
    return name && !strcmp(name, q);
  }
  case PG_QUERY__NODE__NODE_RANGE_SUBSELECT: {
    const PgQuery__Alias *alias = n->range_subselect->alias;
    return alias && alias->aliasname && !strcmp(alias->aliasname, q);
  }
  case PG_QUERY__NODE__NODE_JOIN_EXPR: {
    const PgQuery__JoinExpr *j = n->join_expr;
    if (j->alias && j->alias->aliasname && !strcmp(j->alias->aliasname, q)) return true;
    return from_binds(j->larg, q, depth + 1) || from_binds(j->rarg, q, depth + 1);
  }
  case PG_QUERY__NODE__NODE_RANGE_TABLE_SAMPLE:
    return from_binds(n->range_table_sample->relation, q, depth + 1);
  case PG_QUERY__NODE__NODE_RANGE_FUNCTION: {
    const PgQuery__Alias *alias = n->range_function->alias;
    return alias == NULL || alias->aliasname == NULL || !strcmp(alias->aliasname, q);
  }
  default:
    return true;
  }
}

static bool level_binds(const an_t *an, const char *q) {
  if (an->stmt == NULL) return true;
  for (size_t i = 0; i < an->stmt->n_from_clause; i++)
    if (from_binds(an->stmt->from_clause[i], q, 0)) return true;
  return false;
}

/* The ref whose shard key column N names, as seen from AN: unqualified,
 * one of AN's own; qualified, one of the innermost level that binds the
 * qualifier. -1 when N is no such column; else *LEVEL is the ref's level. */
static int resolve_key(const an_t *an, const PgQuery__Node *n, const an_t **level) {
  if (!is_node(n, PG_QUERY__NODE__NODE_COLUMN_REF) || n->column_ref->n_fields == 0) return -1;
  const PgQuery__ColumnRef *c = n->column_ref;
  int found[8];
  if (c->n_fields == 1) {
    if (key_refs(an, n, found, 8) == 0) return -1;
    *level = an;
    return found[0];
  }
  const char *qualifier = str_of(c->fields[c->n_fields - 2]);
  if (qualifier == NULL) return -1;
  for (const an_t *l = an; l; l = l->outer) {
    if (!level_binds(l, qualifier)) continue;
    if (key_refs(l, n, found, 8) == 0) return -1;
    *level = l;
    return found[0];
  }
  return -1;
}

/* Whether N is the shard key column of a ref of AN's own FROM that no
 * outer join makes NULL (keys are never NULL in a table). */
static bool own_key(const an_t *an, const PgQuery__Node *n) {
  int found[8];
  int count = key_refs(an, n, found, 8);
  for (int i = 0; i < count; i++)
    if (!an->refs[found[i]].nullable) return true;
  return false;
}

/* A GROUP BY item of S as an expression: a position is the select item it
 * names. NULL when it is another constant or a position past a *. */
static const PgQuery__Node *position_item(const PgQuery__SelectStmt *s, const PgQuery__Node *n) {
  if (!is_node(n, PG_QUERY__NODE__NODE_A_CONST)) return n;
  const PgQuery__AConst *c = n->a_const;
  if (c->isnull || c->val_case != PG_QUERY__A__CONST__VAL_IVAL) return NULL;
  int p = c->ival->ival;
  if (p < 1 || (size_t)p > s->n_target_list) return NULL;
  for (int i = 0; i < p; i++)
    if (!is_node(s->target_list[i], PG_QUERY__NODE__NODE_RES_TARGET) ||
        is_star(s->target_list[i]->res_target->val))
      return NULL;
  return s->target_list[p - 1]->res_target->val;
}

/* A DISTINCT ON item, resolved as PostgreSQL resolves an ORDER BY item: a
 * bare name is an output column's first. */
static const PgQuery__Node *distinct_on_item(const PgQuery__SelectStmt *s, const PgQuery__Node *n) {
  const char *name = bare_name(n);
  for (size_t i = 0; name && i < s->n_target_list; i++) {
    if (!is_node(s->target_list[i], PG_QUERY__NODE__NODE_RES_TARGET)) continue;
    const PgQuery__ResTarget *rt = s->target_list[i]->res_target;
    const char *out = rt->name && rt->name[0] ? rt->name : output_name(rt->val);
    if (!is_star(rt->val) && out && !strcmp(out, name)) return rt->val;
  }
  return position_item(s, n);
}

/* Whether a select item * or q.* includes the key of a ref of AN that no
 * outer join makes NULL. */
static bool star_has_key(const an_t *an, const PgQuery__Node *n) {
  if (!is_node(n, PG_QUERY__NODE__NODE_COLUMN_REF)) return false;
  const PgQuery__ColumnRef *c = n->column_ref;
  const char *qualifier = c->n_fields > 1 ? str_of(c->fields[c->n_fields - 2]) : NULL;
  for (int r = 0; r < an->nrefs; r++) {
    const from_ref_t *ref = &an->refs[r];
    if (ref->nullable || ref->nkeys == 0) continue;
    if (c->n_fields == 1 || (qualifier && !strcmp(qualifier, ref->name))) return true;
  }
  return false;
}

/* ---- what a subquery is as a source ---- */

static void add_source_key(source_t *src, const char *name, int pos) {
  if (name == NULL || src->nkeys == MAX_SOURCE_KEYS) return;
  src->key_name[src->nkeys] = name;
  src->key_pos[src->nkeys++] = pos;
}

/* The output columns of S (analysed as SUB) that hold a shard key. */
static void source_keys(const an_t *sub, const PgQuery__SelectStmt *s, source_t *src) {
  bool after_star = false;
  for (size_t i = 0; i < s->n_target_list; i++) {
    if (!is_node(s->target_list[i], PG_QUERY__NODE__NODE_RES_TARGET)) return;
    const PgQuery__ResTarget *rt = s->target_list[i]->res_target;
    if (is_star(rt->val)) {
      /* The keys of the refs it spans, by their names. */
      after_star = true;
      const PgQuery__ColumnRef *c =
          is_node(rt->val, PG_QUERY__NODE__NODE_COLUMN_REF) ? rt->val->column_ref : NULL;
      const char *qualifier = c && c->n_fields > 1 ? str_of(c->fields[c->n_fields - 2]) : NULL;
      for (int r = 0; c && r < sub->nrefs; r++) {
        const from_ref_t *ref = &sub->refs[r];
        if (ref->nullable || (c->n_fields > 1 && !(qualifier && !strcmp(qualifier, ref->name))))
          continue;
        for (int k = 0; k < ref->nkeys; k++) add_source_key(src, ref->keys[k], -1);
      }
      continue;
    }
    if (!own_key(sub, rt->val)) continue;
    add_source_key(src, rt->name && rt->name[0] ? rt->name : output_name(rt->val),
                   after_star ? -1 : (int)i);
  }
}

static bool reads_nothing(an_t *an, PgQuery__Node *const *items, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!no_sharded_subquery(an, items[i])) return false;
  return true;
}

/* What S reads outside its FROM and WHERE: no sharded table. */
static bool rest_reads_nothing(an_t *sub, const PgQuery__SelectStmt *s) {
  return reads_nothing(sub, s->target_list, s->n_target_list) &&
         reads_nothing(sub, s->distinct_clause, s->n_distinct_clause) &&
         reads_nothing(sub, s->group_clause, s->n_group_clause) &&
         no_sharded_subquery(sub, s->having_clause) &&
         reads_nothing(sub, s->window_clause, s->n_window_clause) &&
         reads_nothing(sub, s->sort_clause, s->n_sort_clause) &&
         no_sharded_subquery(sub, s->limit_offset) && no_sharded_subquery(sub, s->limit_count);
}

/* S's FROM and WHERE as level SUB: its refs, the joins between them and
 * the subqueries of its WHERE. false: refused. */
static bool level_from_where(an_t *sub, const PgQuery__SelectStmt *s) {
  for (size_t i = 0; i < s->n_from_clause && !refused(sub); i++)
    add_from(sub, s->from_clause[i], 0);
  if (refused(sub) || !where_subqueries(sub, s->where_clause)) return false;
  collect_edges(sub, s->where_clause);
  check_joins(sub);
  return !refused(sub);
}

static bool any_window(an_t *an, PgQuery__Node *const *items, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (walk_node(an, items[i], false, visit_window, NULL)) return true;
  return false;
}

static bool any_aggregate(an_t *an, PgQuery__Node *const *items, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (find_aggregate(an, items[i])) return true;
  return false;
}

/* The rules that make S (analysed as SUB, with sharded tables) the union
 * of its rows on each shard. */
static bool source_rules(an_t *sub, const PgQuery__SelectStmt *s, const char *kind) {
  const from_ref_t *first = &sub->refs[0];
  const char *key = first->nkeys ? first->keys[0] : first->table->column;
  if (s->limit_count || s->limit_offset)
    return refuse_source(sub, kind, s, "it has LIMIT or OFFSET");
  if (s->n_window_clause > 0 || any_window(sub, s->target_list, s->n_target_list) ||
      any_window(sub, s->sort_clause, s->n_sort_clause))
    return refuse_source(sub, kind, s, "it has window functions");
  if (s->n_group_clause > 0 || s->having_clause ||
      any_aggregate(sub, s->target_list, s->n_target_list) ||
      any_aggregate(sub, s->sort_clause, s->n_sort_clause)) {
    bool by_key = false;
    for (size_t g = 0; g < s->n_group_clause && !by_key; g++) {
      const PgQuery__Node *item = position_item(s, s->group_clause[g]);
      by_key = item && !is_node(item, PG_QUERY__NODE__NODE_GROUPING_SET) && own_key(sub, item);
    }
    if (!by_key && s->n_group_clause > 0)
      return refuse_source(sub, kind, s, "its GROUP BY does not include the shard key %s", key);
    if (!by_key)
      return refuse_source(sub, kind, s, "it aggregates without GROUP BY the shard key %s", key);
  }
  if (s->n_distinct_clause == 1 &&
      (s->distinct_clause[0] == NULL ||
       s->distinct_clause[0]->node_case == PG_QUERY__NODE__NODE__NOT_SET)) {
    bool by_key = false;
    for (size_t i = 0; i < s->n_target_list && !by_key; i++) {
      const PgQuery__Node *n = s->target_list[i];
      if (!is_node(n, PG_QUERY__NODE__NODE_RES_TARGET)) continue;
      by_key = is_star(n->res_target->val) ? star_has_key(sub, n->res_target->val)
                                           : own_key(sub, n->res_target->val);
    }
    if (!by_key)
      return refuse_source(sub, kind, s, "its DISTINCT does not include the shard key %s", key);
  } else if (s->n_distinct_clause > 0) {
    bool by_key = false;
    for (size_t i = 0; i < s->n_distinct_clause && !by_key; i++) {
      const PgQuery__Node *item = distinct_on_item(s, s->distinct_clause[i]);
      by_key = item && own_key(sub, item);
    }
    if (!by_key)
      return refuse_source(sub, kind, s, "its DISTINCT ON does not include the shard key %s", key);
  }
  return true;
}

static bool source_of(an_t *an, const PgQuery__SelectStmt *s, const an_t *outer,
                      const cte_scope_t *ctes, const char *kind, source_t *src);

/* A set operation: UNION ALL of parts that each read sharded tables; UNION,
 * INTERSECT and EXCEPT when both sides have a shard key at the same place
 * (equal rows are then on one shard). */
static bool setop_source(an_t *an, const PgQuery__SelectStmt *s, const an_t *outer,
                         const cte_scope_t *ctes, const char *kind, source_t *src) {
  an_t sub; /* for the WITH of the whole operation */
  source_t left = {0}, right = {0};
  bool ok = level_open(an, &sub, s, outer, ctes);
  if (ok && (s->limit_count || s->limit_offset))
    ok = refuse_source(&sub, kind, s, "it has LIMIT or OFFSET");
  if (ok)
    ok = source_of(&sub, s->larg, outer, &sub.ctes, kind, &left) &&
         source_of(&sub, s->rarg, outer, &sub.ctes, kind, &right) &&
         reads_nothing(&sub, s->sort_clause, s->n_sort_clause);
  if (ok && (left.table == NULL || right.table == NULL))
    ok = refuse_source(&sub, kind, s,
                       "a side of its %s reads no sharded table (every shard would return it)",
                       setop_name(s));
  if (ok) {
    src->table = left.table;
    for (int a = 0; a < left.nkeys && sharded_alike(left.table, right.table); a++)
      for (int b = 0; b < right.nkeys; b++)
        if (left.key_pos[a] >= 0 && left.key_pos[a] == right.key_pos[b]) {
          add_source_key(src, left.key_name[a], left.key_pos[a]);
          break;
        }
    if (src->nkeys == 0 && !(s->op == PG_QUERY__SET_OPERATION__SETOP_UNION && s->all))
      ok = refuse_source(&sub, kind, s, "its %s has no shard key at the same place on both sides",
                         setop_name(s));
  }
  level_close(an, &sub);
  return ok;
}

/* S, a subquery (KIND names it) in a FROM or an IN, as a source of rows:
 * false, refused, when it is not the union of its rows on each shard; else
 * SRC says which sharded tables it reads (none: it is the same on every
 * shard) and which of its columns hold their keys. OUTER is the level its
 * correlated names may reach, CTES the WITH names it sees. */
static bool source_of(an_t *an, const PgQuery__SelectStmt *s, const an_t *outer,
                      const cte_scope_t *ctes, const char *kind, source_t *src) {
  *src = (source_t){0};
  if (s == NULL) return false;
  if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE)
    return setop_source(an, s, outer, ctes, kind, src);
  an_t sub;
  bool ok = level_open(an, &sub, s, outer, ctes) && level_from_where(&sub, s);
  if (ok && sub.nrefs > 0) ok = source_rules(&sub, s, kind);
  if (ok) ok = rest_reads_nothing(&sub, s);
  if (ok && sub.nrefs > 0) {
    src->table = sub.refs[0].table;
    source_keys(&sub, s, src);
  }
  level_close(an, &sub);
  return ok;
}

/* Column names given to a source (FROM s AS x (a, b) or WITH x (a, b)):
 * the key at position POS is renamed, or lost when its position is not
 * known. */
static const char *renamed(const char *name, int pos, PgQuery__Node *const *cols, size_t ncols) {
  if (name == NULL || ncols == 0) return name;
  if (pos < 0) return NULL;
  return (size_t)pos < ncols ? str_of(cols[pos]) : name;
}

static void add_source(an_t *an, const source_t *src, const char *name, PgQuery__Node *const *cols,
                       size_t ncols, const PgQuery__Alias *alias) {
  int r = add_ref(an, src->table, name);
  from_ref_t *ref = &an->refs[r];
  ref->nkeys = 0;
  for (int k = 0; k < src->nkeys; k++) {
    const char *key = renamed(src->key_name[k], src->key_pos[k], cols, ncols);
    if (alias) key = renamed(key, src->key_pos[k], alias->colnames, alias->n_colnames);
    if (key) ref->keys[ref->nkeys++] = key;
  }
}

/* (SELECT ...) AS alias in FROM. */
static void add_subquery_source(an_t *an, const PgQuery__Node *n) {
  const PgQuery__RangeSubselect *rs = n->range_subselect;
  if (find_sharded(an, rs->subquery) == NULL) return;
  /* LATERAL: each row it is joined to is on one shard, its rows on all. */
  if (rs->lateral || !is_node(rs->subquery, PG_QUERY__NODE__NODE_SELECT_STMT)) {
    no_sharded_subquery(an, n);
    return;
  }
  source_t src;
  if (!source_of(an, rs->subquery->select_stmt, an->outer, &an->ctes, "a subquery", &src) ||
      src.table == NULL)
    return;
  const char *name = rs->alias && rs->alias->aliasname ? rs->alias->aliasname : "";
  add_source(an, &src, name, NULL, 0, rs->alias);
}

/* A WITH query named in FROM: its body, analysed where it is defined. */
static void add_cte_source(an_t *an, const PgQuery__RangeVar *rv) {
  const cte_scope_t *scope;
  int index;
  const cte_def_t *def = find_cte(an, rv, &scope, &index);
  if (def == NULL || def->reads == NULL) return;
  const PgQuery__CommonTableExpr *cte = def->cte;
  if (scope->recursive) {
    refuse(an, "a recursive WITH query reading sharded table %s cannot be merged across shards",
           def->reads->name);
    return;
  }
  if (!is_node(cte->ctequery, PG_QUERY__NODE__NODE_SELECT_STMT)) {
    refuse(an, "a data-modifying WITH query cannot be merged across shards");
    return;
  }
  cte_scope_t before = {.parent = scope->parent, .defs = scope->defs, .ndefs = index};
  source_t src;
  if (!source_of(an, cte->ctequery->select_stmt, NULL, &before, "a WITH query", &src) ||
      src.table == NULL)
    return;
  const char *name = rv->alias && rv->alias->aliasname ? rv->alias->aliasname : rv->relname;
  add_source(an, &src, name, cte->aliascolnames, cte->n_aliascolnames, rv->alias);
}

/* ---- subqueries in WHERE ---- */

/* Whether a conjunct of N equates the key of one of SUB's refs with the
 * key of a ref of an outer level sharded alike. */
static bool correlated_on_key(const an_t *sub, const PgQuery__Node *n) {
  if (n == NULL) return false;
  if (is_node(n, PG_QUERY__NODE__NODE_BOOL_EXPR) &&
      n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
    for (size_t i = 0; i < n->bool_expr->n_args; i++)
      if (correlated_on_key(sub, n->bool_expr->args[i])) return true;
    return false;
  }
  if (!is_node(n, PG_QUERY__NODE__NODE_A_EXPR)) return false;
  const PgQuery__AExpr *e = n->a_expr;
  const char *op = e->n_name > 0 ? str_of(e->name[e->n_name - 1]) : NULL;
  if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || op == NULL || strcmp(op, "=") != 0)
    return false;
  const an_t *left_level = NULL, *right_level = NULL;
  int left = resolve_key(sub, e->lexpr, &left_level);
  int right = resolve_key(sub, e->rexpr, &right_level);
  if (left < 0 || right < 0 || (left_level == sub) == (right_level == sub)) return false;
  return sharded_alike(left_level->refs[left].table, right_level->refs[right].table);
}

/* EXISTS (SELECT ...) or NOT EXISTS: its rows are confined to the outer
 * row's shard by a key equality in its WHERE, so whatever it computes
 * there (aggregates, LIMIT) is exact. */
static bool exists_on_key(an_t *an, const PgQuery__SubLink *sl) {
  const PgQuery__SelectStmt *s = sl->subselect->select_stmt;
  if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE) return no_sharded_subquery(an, sl->subselect);
  an_t sub;
  bool ok = level_open(an, &sub, s, an, &an->ctes) && level_from_where(&sub, s);
  if (ok && sub.nrefs > 0 && !correlated_on_key(&sub, s->where_clause))
    ok = no_sharded_subquery(an, sl->subselect);
  if (ok) ok = rest_reads_nothing(&sub, s);
  level_close(an, &sub);
  return ok && !refused(an);
}

/* key IN (SELECT key ...): the subquery is a source whose only column is
 * a shard key sharded like the outer one. */
static bool in_on_key(an_t *an, const PgQuery__SubLink *sl) {
  const an_t *level = NULL;
  int r = resolve_key(an, sl->testexpr, &level);
  if (r < 0) return no_sharded_subquery(an, sl->subselect);
  source_t src;
  if (!source_of(an, sl->subselect->select_stmt, an, &an->ctes, "a subquery", &src)) return false;
  bool first_is_key = false;
  for (int k = 0; k < src.nkeys; k++) first_is_key |= src.key_pos[k] == 0;
  if (src.table == NULL || !first_is_key || !sharded_alike(src.table, level->refs[r].table))
    return no_sharded_subquery(an, sl->subselect);
  return true;
}

static bool not_in(an_t *an, const pgs_table_t *t) {
  return refuse(an,
                "NOT IN (SELECT ...) reading sharded table %s cannot be merged across shards: a "
                "NULL it returns on one shard changes the answer on all (use NOT EXISTS)",
                t->name);
}

/* The subqueries of a WHERE clause N at AN's level: those that are
 * conjuncts (under AND) run per shard when exact (above); every other
 * subquery must read no sharded table. false: refused. */
static bool where_subqueries(an_t *an, const PgQuery__Node *n) {
  if (n == NULL) return !refused(an);
  if (is_node(n, PG_QUERY__NODE__NODE_BOOL_EXPR) &&
      n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
    for (size_t i = 0; i < n->bool_expr->n_args; i++)
      if (!where_subqueries(an, n->bool_expr->args[i])) return false;
    return true;
  }
  const PgQuery__SubLink *sl = NULL;
  bool negated = false;
  if (is_node(n, PG_QUERY__NODE__NODE_SUB_LINK)) {
    sl = n->sub_link;
  } else if (is_node(n, PG_QUERY__NODE__NODE_BOOL_EXPR) &&
             n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__NOT_EXPR &&
             n->bool_expr->n_args == 1 &&
             is_node(n->bool_expr->args[0], PG_QUERY__NODE__NODE_SUB_LINK)) {
    sl = n->bool_expr->args[0]->sub_link;
    negated = true;
  }
  const pgs_table_t *t = sl ? find_sharded(an, sl->subselect) : NULL;
  if (t == NULL || !is_node(sl->subselect, PG_QUERY__NODE__NODE_SELECT_STMT))
    return no_sharded_subquery(an, n);
  if (!no_sharded_subquery(an, sl->testexpr)) return false;
  const char *op = sl->n_oper_name > 0 ? str_of(sl->oper_name[sl->n_oper_name - 1]) : NULL;
  switch (sl->sub_link_type) {
  case PG_QUERY__SUB_LINK_TYPE__EXISTS_SUBLINK:
    return exists_on_key(an, sl);
  case PG_QUERY__SUB_LINK_TYPE__ANY_SUBLINK:
    if (sl->n_oper_name > 0 && (op == NULL || strcmp(op, "=") != 0)) break;
    return negated ? not_in(an, t) : in_on_key(an, sl);
  case PG_QUERY__SUB_LINK_TYPE__ALL_SUBLINK: /* x <> ALL (SELECT ...) is NOT IN */
    if (negated || op == NULL || strcmp(op, "<>") != 0) break;
    return not_in(an, t);
  default:
    break;
  }
  return no_sharded_subquery(an, n);
}

/* ---- target list ---- */

/* The name PostgreSQL gives an output column of expression N
 * (FigureColname), or NULL for "?column?". */
static const char *output_name(const PgQuery__Node *n) {
  if (n == NULL) return NULL;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_COLUMN_REF: {
    const PgQuery__ColumnRef *c = n->column_ref;
    return c->n_fields ? str_of(c->fields[c->n_fields - 1]) : NULL;
  }
  case PG_QUERY__NODE__NODE_A_INDIRECTION: {
    const PgQuery__AIndirection *ind = n->a_indirection;
    for (size_t i = ind->n_indirection; i > 0; i--) {
      const char *name = str_of(ind->indirection[i - 1]);
      if (name) return name;
      if (is_node(ind->indirection[i - 1], PG_QUERY__NODE__NODE_A_STAR)) return NULL;
    }
    return output_name(ind->arg);
  }
  case PG_QUERY__NODE__NODE_FUNC_CALL:
    return last_name(n->func_call);
  case PG_QUERY__NODE__NODE_TYPE_CAST: {
    /* The argument's name when it has a strong one, else the type's. */
    const PgQuery__Node *arg = n->type_cast->arg;
    const char *name = output_name(arg);
    if (name && (is_node(arg, PG_QUERY__NODE__NODE_COLUMN_REF) ||
                 is_node(arg, PG_QUERY__NODE__NODE_FUNC_CALL) ||
                 is_node(arg, PG_QUERY__NODE__NODE_A_INDIRECTION)))
      return name;
    const PgQuery__TypeName *tn = n->type_cast->type_name;
    return tn && tn->n_names ? str_of(tn->names[tn->n_names - 1]) : name;
  }
  case PG_QUERY__NODE__NODE_COLLATE_CLAUSE:
    return output_name(n->collate_clause->arg);
  case PG_QUERY__NODE__NODE_CASE_EXPR:
    return "case";
  case PG_QUERY__NODE__NODE_COALESCE_EXPR:
    return "coalesce";
  case PG_QUERY__NODE__NODE_MIN_MAX_EXPR:
    return n->min_max_expr->op == PG_QUERY__MIN_MAX_OP__IS_GREATEST ? "greatest" : "least";
  case PG_QUERY__NODE__NODE_A_ARRAY_EXPR:
    return "array";
  case PG_QUERY__NODE__NODE_ROW_EXPR:
    return "row";
  case PG_QUERY__NODE__NODE_GROUPING_FUNC:
    return "grouping";
  case PG_QUERY__NODE__NODE_A_EXPR:
    return n->a_expr->kind == PG_QUERY__A__EXPR__KIND__AEXPR_NULLIF ? "nullif" : NULL;
  case PG_QUERY__NODE__NODE_SUB_LINK: {
    const PgQuery__SubLink *sl = n->sub_link;
    if (sl->sub_link_type == PG_QUERY__SUB_LINK_TYPE__EXISTS_SUBLINK) return "exists";
    if (sl->sub_link_type == PG_QUERY__SUB_LINK_TYPE__ARRAY_SUBLINK) return "array";
    if (sl->sub_link_type == PG_QUERY__SUB_LINK_TYPE__EXPR_SUBLINK &&
        is_node(sl->subselect, PG_QUERY__NODE__NODE_SELECT_STMT)) {
      const PgQuery__SelectStmt *s = sl->subselect->select_stmt;
      if (s->n_target_list > 0 && is_node(s->target_list[0], PG_QUERY__NODE__NODE_RES_TARGET)) {
        const PgQuery__ResTarget *rt = s->target_list[0]->res_target;
        return rt->name && rt->name[0] ? rt->name : output_name(rt->val);
      }
    }
    return NULL;
  }
  default:
    return NULL;
  }
}

static bool is_star(const PgQuery__Node *n) {
  if (is_node(n, PG_QUERY__NODE__NODE_COLUMN_REF)) {
    const PgQuery__ColumnRef *c = n->column_ref;
    return c->n_fields > 0 && is_node(c->fields[c->n_fields - 1], PG_QUERY__NODE__NODE_A_STAR);
  }
  if (is_node(n, PG_QUERY__NODE__NODE_A_INDIRECTION)) {
    const PgQuery__AIndirection *ind = n->a_indirection;
    return ind->n_indirection > 0 &&
           is_node(ind->indirection[ind->n_indirection - 1], PG_QUERY__NODE__NODE_A_STAR);
  }
  return false;
}

/* What expression N (a select item or a sort key) is to the merge: a bare
 * mergeable aggregate (*AGG its kind; *DISTINCT for count, sum or avg of
 * DISTINCT x: min and max of DISTINCT x are min and max) or an
 * expression without aggregates (*AGG = NONE). false, refused, for
 * everything else. */
static bool classify(an_t *an, const PgQuery__Node *n, int *agg, bool *distinct) {
  *agg = PGS_AGG_NONE;
  *distinct = false;
  if (walk_node(an, n, false, visit_window, NULL))
    return refuse(an, "window functions cannot be merged across shards");
  if (walk_node(an, n, false, visit_grouping, NULL))
    return refuse(an, "GROUPING() cannot be merged across shards");
  if (is_node(n, PG_QUERY__NODE__NODE_FUNC_CALL) && is_aggregate(n->func_call)) {
    const PgQuery__FuncCall *fc = n->func_call;
    const char *name = last_name(fc);
    int kind = mergeable_kind(fc);
    if (kind < 0) return refuse(an, "%s() cannot be merged across shards", name);
    if (fc->n_agg_order > 0 || fc->agg_within_group)
      return refuse(an, "%s() with ORDER BY cannot be merged across shards", name);
    if (fc->func_variadic ||
        (fc->agg_star ? kind != PGS_AGG_COUNT || fc->n_args != 0 : fc->n_args != 1))
      return refuse(an, "%s() with these arguments cannot be merged across shards", name);
    for (size_t i = 0; i < fc->n_args; i++)
      if (find_aggregate(an, fc->args[i]))
        return refuse(an, "nested aggregates cannot be merged across shards");
    *agg = kind;
    *distinct = fc->agg_distinct && kind != PGS_AGG_MIN && kind != PGS_AGG_MAX;
    return true;
  }
  const PgQuery__FuncCall *inner = find_aggregate(an, n);
  if (inner) {
    const char *name = last_name(inner);
    if (mergeable_kind(inner) < 0) return refuse(an, "%s() cannot be merged across shards", name);
    return refuse(an,
                  "%s() inside an expression cannot be merged across shards; select the "
                  "aggregate itself",
                  name);
  }
  return true;
}

/* ---- hidden columns ---- */

static int add_hidden_text(an_t *an, char *text, int agg) {
  for (int h = 0; h < an->nhidden; h++) {
    if (an->hidden[h].agg == agg && !strcmp(an->hidden[h].text, text)) {
      free(text);
      return h;
    }
  }
  if (an->nhidden == an->hidden_cap) {
    an->hidden_cap = an->hidden_cap ? an->hidden_cap * 2 : 4;
    an->hidden = pgs_xrealloc(an->hidden, (size_t)an->hidden_cap * sizeof(*an->hidden));
  }
  an->hidden[an->nhidden] =
      (hidden_t){.text = text, .agg = agg, .avg_sum = -1, .avg_count = -1, .distinct_arg = -1};
  return an->nhidden++;
}

static int add_hidden(an_t *an, const PgQuery__Node *n, int agg);

/* The hidden column holding x for count/sum/avg(DISTINCT x) (FC): the
 * shards group by it, so each of their rows holds one value of x; -1
 * when refused. */
static int distinct_arg(an_t *an, const PgQuery__FuncCall *fc) {
  int h = add_hidden(an, fc->args[0], PGS_AGG_NONE);
  if (h < 0) return -1;
  an->hidden[h].arg = true;
  an->regroup = true;
  return h;
}

/* Hidden column H is FC, count or sum of DISTINCT x. */
static bool mark_distinct(an_t *an, int h, const PgQuery__FuncCall *fc) {
  if (an->hidden[h].distinct) return true;
  int arg = distinct_arg(an, fc);
  if (arg < 0) return false;
  an->hidden[h].distinct = true;
  an->hidden[h].distinct_arg = arg;
  return true;
}

/* avg(x) [FILTER (WHERE c)] as pg_catalog.NAME(x) [FILTER (WHERE c)]. */
static char *avg_part(const PgQuery__FuncCall *avg, const char *name) {
  PgQuery__String s_schema = PG_QUERY__STRING__INIT, s_name = PG_QUERY__STRING__INIT;
  s_schema.sval = (char *)"pg_catalog";
  s_name.sval = (char *)name;
  PgQuery__Node n_schema = PG_QUERY__NODE__INIT, n_name = PG_QUERY__NODE__INIT;
  n_schema.node_case = n_name.node_case = PG_QUERY__NODE__NODE_STRING;
  n_schema.string = &s_schema;
  n_name.string = &s_name;
  PgQuery__Node *funcname[2] = {&n_schema, &n_name};
  PgQuery__FuncCall fc = *avg;
  fc.funcname = funcname;
  fc.n_funcname = 2;
  PgQuery__Node node = PG_QUERY__NODE__INIT;
  node.node_case = PG_QUERY__NODE__NODE_FUNC_CALL;
  node.func_call = &fc;
  return deparse(&node);
}

/* The hidden sum(x) and count(x) behind avg(x). */
static bool avg_parts(an_t *an, const PgQuery__FuncCall *avg, int *sum, int *count) {
  char *sum_text = avg_part(avg, "sum"), *count_text = avg_part(avg, "count");
  if (sum_text == NULL || count_text == NULL) {
    free(sum_text);
    free(count_text);
    return refuse(an, "avg() over this expression cannot be merged across shards");
  }
  *sum = add_hidden_text(an, sum_text, PGS_AGG_SUM);
  *count = add_hidden_text(an, count_text, PGS_AGG_COUNT);
  if (avg->agg_distinct && (!mark_distinct(an, *sum, avg) || !mark_distinct(an, *count, avg)))
    return false;
  return true;
}

/* A hidden column computing N (of aggregate kind AGG): its index, or -1
 * (refused). */
static int add_hidden(an_t *an, const PgQuery__Node *n, int agg) {
  char *text = deparse(n);
  if (text == NULL) {
    refuse(an,
           "an ORDER BY or GROUP BY expression cannot be merged across shards (it cannot be "
           "written back as SQL)");
    return -1;
  }
  int before = an->nhidden;
  int h = add_hidden_text(an, text, agg);
  if (an->hidden[h].expr == NULL) an->hidden[h].expr = n;
  if (agg == PGS_AGG_AVG && h == before) {
    int sum = -1, count = -1;
    if (!avg_parts(an, n->func_call, &sum, &count)) return -1;
    an->hidden[h].avg_sum = sum;
    an->hidden[h].avg_count = count;
  }
  if ((agg == PGS_AGG_COUNT || agg == PGS_AGG_SUM) && n->func_call->agg_distinct &&
      !mark_distinct(an, h, n->func_call))
    return -1;
  return h;
}

/* ---- GROUP BY and ORDER BY items ---- */

static void add_position(an_t *an, const PgQuery__AConst *c) {
  if (c->location < 0) return;
  if (an->npositions == an->positions_cap) {
    an->positions_cap = an->positions_cap ? an->positions_cap * 2 : 4;
    an->positions = pgs_xrealloc(an->positions, (size_t)an->positions_cap * sizeof(*an->positions));
  }
  /* The location is mapped and measured when the spec is built. */
  an->positions[an->npositions++] =
      (pgs_merge_position_t){.at = (uint32_t)c->location, .len = 0, .position = c->ival->ival};
}

/* A single unqualified column name, or NULL. */
static const char *bare_name(const PgQuery__Node *n) {
  if (!is_node(n, PG_QUERY__NODE__NODE_COLUMN_REF) || n->column_ref->n_fields != 1) return NULL;
  return str_of(n->column_ref->fields[0]);
}

/* Whether N is a constant the grammar allows where a position may stand:
 * returns true and sets *COLUMN for a position, refuses for other
 * constants (PostgreSQL rejects them), false for anything else. */
static bool constant_item(an_t *an, const PgQuery__Node *n, const char *clause, int *column) {
  if (is_node(n, PG_QUERY__NODE__NODE_A_CONST)) {
    const PgQuery__AConst *c = n->a_const;
    if (c->isnull || c->val_case != PG_QUERY__A__CONST__VAL_IVAL) {
      refuse(an, "non-integer constant in %s", clause);
      *column = NO_COLUMN;
      return true;
    }
    int p = c->ival->ival;
    if (p < 1 || (an->first_star < 0 && p > an->ntargets)) {
      refuse(an, "%s position %d is not in select list", clause, p);
      *column = NO_COLUMN;
      return true;
    }
    add_position(an, c);
    *column = VISIBLE + p - 1;
    return true;
  }
  if (is_node(n, PG_QUERY__NODE__NODE_PARAM_REF)) {
    /* The client's own $n is a value, constant for the statement: it
     * orders or groups nothing. A literal of the lexer's here was never a
     * position (the lexer keeps those), so PostgreSQL refuses it. */
    if (n->param_ref->number > an->lexed->nparams) refuse(an, "non-integer constant in %s", clause);
    *column = NO_COLUMN;
    return true;
  }
  return false;
}

/* The target an expression is, if it is one whose column is known. */
static int same_target(const an_t *an, const PgQuery__Node *n) {
  for (int i = 0; i < an->ntargets; i++) {
    if (an->first_star >= 0 && i >= an->first_star) break;
    if (same_node(an->targets[i].expr, n)) return i;
  }
  return -1;
}

/* A GROUP BY item: the column holding its value (symbolic), NO_COLUMN, or
 * -2 when refused. PostgreSQL resolves a bare name as an input column
 * first, then as an output name; an output column that is that input
 * column is the same thing. */
static int group_item(an_t *an, const PgQuery__Node *n) {
  int column;
  if (constant_item(an, n, "GROUP BY", &column)) return refused(an) ? -2 : column;
  if (find_aggregate(an, n)) {
    refuse(an, "aggregate functions are not allowed in GROUP BY");
    return -2;
  }
  if (walk_node(an, n, false, visit_window, NULL)) {
    refuse(an, "window functions cannot be merged across shards");
    return -2;
  }
  const char *name = bare_name(n);
  if (name) {
    for (int i = 0; i < an->ntargets; i++) {
      const target_t *t = &an->targets[i];
      if (t->star) break;
      const PgQuery__Node *e = t->expr;
      if (is_node(e, PG_QUERY__NODE__NODE_COLUMN_REF) && !is_star(e) && output_name(e) &&
          !strcmp(output_name(e), name))
        return VISIBLE + i;
    }
    for (int i = 0; i < an->ntargets; i++) {
      const target_t *t = &an->targets[i];
      if (t->star) break;
      if (t->alias && !strcmp(t->alias, name) && t->agg == PGS_AGG_NONE) return VISIBLE + i;
    }
  }
  int i = same_target(an, n);
  if (i >= 0 && an->targets[i].agg == PGS_AGG_NONE) return VISIBLE + i;
  int h = add_hidden(an, n, PGS_AGG_NONE);
  return h < 0 ? -2 : h;
}

/* The column a target stands in when its position is not known (after a
 * *): a hidden copy. */
static int target_column(an_t *an, int i) {
  if (an->first_star < 0 || i < an->first_star) return VISIBLE + i;
  int h = add_hidden(an, an->targets[i].expr, an->targets[i].agg);
  return h < 0 ? -2 : h;
}

/* An ORDER BY item, as PostgreSQL resolves it: a position; a bare name
 * matching an output column's name; an expression equal to a select
 * item; else an expression of its own (hidden). Returns the symbolic
 * column, NO_COLUMN, or -2 when refused. */
static int sort_item(an_t *an, const PgQuery__Node *n) {
  int column;
  if (constant_item(an, n, "ORDER BY", &column)) return refused(an) ? -2 : column;
  const char *name = bare_name(n);
  if (name) {
    for (int i = 0; i < an->ntargets; i++)
      if (!an->targets[i].star && an->targets[i].name && !strcmp(an->targets[i].name, name))
        return target_column(an, i);
  }
  int agg;
  bool distinct;
  if (!classify(an, n, &agg, &distinct)) return -2;
  int i = same_target(an, n);
  if (i >= 0) return VISIBLE + i;
  int h = add_hidden(an, n, agg);
  if (h < 0) return -2;
  if (agg == PGS_AGG_NONE && !an->hidden[h].sort) an->hidden[h].sort = n;
  return h;
}

/* ---- LIMIT and OFFSET ---- */

static bool integer_type(const PgQuery__TypeName *tn) {
  static const char *const names[] = {"int2", "int4", "int8", "numeric"};
  if (tn == NULL || tn->n_names == 0 || tn->n_array_bounds > 0 || tn->pct_type) return false;
  const char *name = str_of(tn->names[tn->n_names - 1]);
  if (name == NULL) return false;
  if (tn->n_names == 2) {
    const char *schema = str_of(tn->names[0]);
    if (schema == NULL || strcmp(schema, "pg_catalog") != 0) return false;
  } else if (tn->n_names > 2) {
    return false;
  }
  for (size_t i = 0; i < PGS_ARRAY_LEN(names); i++)
    if (!strcmp(names[i], name)) return true;
  return false;
}

/* A LIMIT or OFFSET value: none, NULL/ALL, FETCH FIRST ROW's implicit 1,
 * or a parameter (a literal of the lexer's or the client's $n), maybe
 * signed and cast to an integer type. *START is where it starts in the
 * text (-1 when it is not written). false, refused, for other forms. */
static bool count_value(an_t *an, const PgQuery__Node *n, const char *clause, int *param,
                        bool *negate, bool *one, int32_t *start) {
  if (n == NULL) return true;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_A_CONST: {
    const PgQuery__AConst *c = n->a_const;
    if (*start < 0 || c->location < *start) *start = c->location;
    if (c->isnull) return true;
    if (c->val_case == PG_QUERY__A__CONST__VAL_IVAL && c->ival->ival == 1 && c->location < 0) {
      *one = true; /* FETCH FIRST ROW ONLY */
      return true;
    }
    break;
  }
  case PG_QUERY__NODE__NODE_PARAM_REF: {
    const PgQuery__ParamRef *p = n->param_ref;
    if (p->number < 1 || p->number > an->lexed->nparams + an->lexed->nliterals) break;
    *param = p->number;
    if (*start < 0 || p->location < *start) *start = p->location;
    return true;
  }
  case PG_QUERY__NODE__NODE_A_EXPR: {
    const PgQuery__AExpr *e = n->a_expr;
    const char *op = e->n_name == 1 ? str_of(e->name[0]) : NULL;
    if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || e->lexpr || op == NULL ||
        (strcmp(op, "-") != 0 && strcmp(op, "+") != 0))
      break;
    if (*start < 0 || e->location < *start) *start = e->location;
    if (op[0] == '-') *negate = !*negate;
    if (!is_node(e->rexpr, PG_QUERY__NODE__NODE_PARAM_REF)) break;
    return count_value(an, e->rexpr, clause, param, negate, one, start);
  }
  case PG_QUERY__NODE__NODE_TYPE_CAST:
    if (!integer_type(n->type_cast->type_name)) break;
    if (n->type_cast->location >= 0 && (*start < 0 || n->type_cast->location < *start))
      *start = n->type_cast->location;
    if (is_node(n->type_cast->arg, PG_QUERY__NODE__NODE_TYPE_CAST)) break;
    return count_value(an, n->type_cast->arg, clause, param, negate, one, start);
  default:
    break;
  }
  return refuse(an, "%s other than a constant or a parameter cannot be merged across shards",
                clause);
}

/* Where a placeholder or literal at offset R of the analysed text is in
 * the normalised text (they differ when the literals were put back). */
static uint32_t to_normalized(const an_t *an, int32_t r) {
  if (an->lit_loc == NULL || r < 0) return (uint32_t)(r < 0 ? 0 : r);
  const pgs_lexed_t *lexed = an->lexed;
  int lo = 0, hi = lexed->nliterals - 1, last = -1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (an->lit_loc[mid] <= r) {
      last = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  if (last < 0) return (uint32_t)r;
  const pgs_literal_t *lit = &lexed->literals[last];
  uint32_t end = (uint32_t)an->lit_loc[last] + an->lit_len[last];
  if ((uint32_t)r < end) return lit->placeholder;
  char digits[16];
  int n = snprintf(digits, sizeof(digits), "$%d", lexed->nparams + 1 + last);
  return (uint32_t)r - end + lit->placeholder + (uint32_t)n;
}

/* The normalised text's tokens. NULL when it does not scan. */
static PgQuery__ScanResult *scan_text(const pgs_lexed_t *lexed, PgQueryScanResult *raw) {
  *raw = pg_query_scan(lexed->normalized);
  if (raw->error) return NULL;
  return pg_query__scan_result__unpack(NULL, raw->pbuf.len, (const uint8_t *)raw->pbuf.data);
}

/* The index of the LIMIT / OFFSET / FETCH token whose value starts at
 * offset AT of the normalised text; for FETCH FIRST ROW ONLY (AT < 0) the
 * last FETCH. -1 when there is none. */
static int clause_token(const PgQuery__ScanResult *sr, int32_t at) {
  int n = (int)sr->n_tokens;
  if (at < 0) {
    for (int k = n - 1; k >= 0; k--)
      if (sr->tokens[k]->token == PG_QUERY__TOKEN__FETCH) return k;
    return -1;
  }
  int k = 0;
  while (k < n && sr->tokens[k]->start < at) k++;
  if (k == n || sr->tokens[k]->start != at) return -1;
  k--;
  while (k >= 0 && sr->tokens[k]->token == PG_QUERY__TOKEN__ASCII_40) k--; /* ( */
  if (k < 0) return -1;
  switch (sr->tokens[k]->token) {
  case PG_QUERY__TOKEN__LIMIT:
  case PG_QUERY__TOKEN__OFFSET:
    return k;
  case PG_QUERY__TOKEN__FIRST_P:
  case PG_QUERY__TOKEN__NEXT:
    return k > 0 && sr->tokens[k - 1]->token == PG_QUERY__TOKEN__FETCH ? k - 1 : -1;
  default:
    return -1;
  }
}

/* LIMIT, OFFSET and FETCH FIRST: the parameters and where their clauses
 * stand in the normalised text, one stretch from the first clause to the
 * end of the text or the parenthesis around them. */
static void analyse_limits(an_t *an, const PgQuery__SelectStmt *s) {
  pgs_merge_spec_t *spec = an->spec;
  if (s->limit_option == PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_WITH_TIES) {
    refuse(an, "FETCH FIRST ... WITH TIES cannot be merged across shards");
    return;
  }
  int32_t limit_at = -1, offset_at = -1;
  bool offset_one = false; /* an OFFSET is always written */
  if (!count_value(an, s->limit_count, "LIMIT", &spec->limit_param, &spec->limit_negate,
                   &spec->limit_one, &limit_at) ||
      !count_value(an, s->limit_offset, "OFFSET", &spec->offset_param, &spec->offset_negate,
                   &offset_one, &offset_at))
    return;
  if (offset_one) {
    refuse(an, "OFFSET other than a constant or a parameter cannot be merged across shards");
    return;
  }
  if (s->limit_count == NULL && s->limit_offset == NULL) return;
  if (an->copy) return; /* refused later: COPY only concatenates */

  PgQueryScanResult raw;
  PgQuery__ScanResult *sr = scan_text(an->lexed, &raw);
  int first = -1, other = -1;
  if (sr) {
    int kl = s->limit_count
                 ? clause_token(sr, limit_at < 0 ? -1 : (int32_t)to_normalized(an, limit_at))
                 : -1;
    int ko = s->limit_offset ? clause_token(sr, (int32_t)to_normalized(an, offset_at)) : -1;
    bool found = (s->limit_count == NULL || kl >= 0) && (s->limit_offset == NULL || ko >= 0);
    if (found) {
      first = kl < 0 ? ko : ko < 0 ? kl : kl < ko ? kl : ko;
      other = kl < 0 ? ko : ko < 0 ? kl : kl < ko ? ko : kl;
    }
  }
  if (first >= 0) {
    spec->tail_at = (uint32_t)sr->tokens[first]->start;
    spec->tail_end = (uint32_t)an->lexed->normalized_len;
    int depth = 0;
    bool other_inside = false;
    for (size_t k = (size_t)first; k < sr->n_tokens; k++) {
      const PgQuery__ScanToken *t = sr->tokens[k];
      if ((int)k == other && depth == 0) other_inside = true;
      if (t->token == PG_QUERY__TOKEN__ASCII_40) {
        depth++;
      } else if (t->token == PG_QUERY__TOKEN__ASCII_41 && depth-- == 0) {
        spec->tail_end = (uint32_t)t->start;
        break;
      }
    }
    if (!other_inside) first = -1;
  }
  if (first < 0) refuse(an, "LIMIT/OFFSET in this form cannot be merged across shards");
  if (sr) pg_query__scan_result__free_unpacked(sr, NULL);
  pg_query_free_scan_result(raw);
}

/* ---- the statement ---- */

static const char *setop_name(const PgQuery__SelectStmt *s) {
  switch (s->op) {
  case PG_QUERY__SET_OPERATION__SETOP_UNION:
    return s->all ? "UNION ALL" : "UNION";
  case PG_QUERY__SET_OPERATION__SETOP_INTERSECT:
    return s->all ? "INTERSECT ALL" : "INTERSECT";
  default:
    return s->all ? "EXCEPT ALL" : "EXCEPT";
  }
}

static void analyse_targets(an_t *an, const PgQuery__SelectStmt *s) {
  an->ntargets = (int)s->n_target_list;
  an->targets = pgs_xcalloc(s->n_target_list ? s->n_target_list : 1, sizeof(*an->targets));
  an->first_star = -1;
  an->first_target_loc = -1;
  for (int i = 0; i < an->ntargets && !refused(an); i++) {
    target_t *t = &an->targets[i];
    t->avg_sum = t->avg_count = -1;
    const PgQuery__Node *n = s->target_list[i];
    if (!is_node(n, PG_QUERY__NODE__NODE_RES_TARGET)) {
      refuse(an, "this select list cannot be merged across shards");
      return;
    }
    const PgQuery__ResTarget *rt = n->res_target;
    if (i == 0) an->first_target_loc = rt->location;
    t->expr = rt->val;
    t->alias = rt->name && rt->name[0] ? rt->name : NULL;
    t->name = t->alias ? t->alias : output_name(rt->val);
    if (is_star(rt->val)) {
      t->star = true;
      if (an->first_star < 0) an->first_star = i;
      continue;
    }
    if (!no_sharded_subquery(an, rt->val)) return;
    if (!classify(an, rt->val, &t->agg, &t->distinct)) return;
    if (t->agg != PGS_AGG_NONE) an->grouped = true;
  }
  /* An avg's sum and count come first among the hidden columns, then the
   * arguments of DISTINCT aggregates. */
  for (int i = 0; i < an->ntargets && !refused(an); i++) {
    target_t *t = &an->targets[i];
    t->distinct_arg = -1;
    if (t->agg == PGS_AGG_AVG) avg_parts(an, t->expr->func_call, &t->avg_sum, &t->avg_count);
  }
  for (int i = 0; i < an->ntargets && !refused(an); i++) {
    target_t *t = &an->targets[i];
    if (t->distinct && t->agg != PGS_AGG_AVG)
      t->distinct_arg = distinct_arg(an, t->expr->func_call);
  }
}

static void analyse_group(an_t *an, const PgQuery__SelectStmt *s) {
  if (s->n_group_clause == 0) return;
  an->grouped = true;
  an->group = pgs_xmalloc(sizeof(int) * s->n_group_clause);
  an->group_nodes = pgs_xmalloc(sizeof(*an->group_nodes) * s->n_group_clause);
  for (size_t g = 0; g < s->n_group_clause && !refused(an); g++) {
    const PgQuery__Node *n = s->group_clause[g];
    if (is_node(n, PG_QUERY__NODE__NODE_GROUPING_SET)) {
      if (n->grouping_set->kind == PG_QUERY__GROUPING_SET_KIND__GROUPING_SET_EMPTY) continue;
      refuse(an, "GROUPING SETS, ROLLUP and CUBE cannot be merged across shards");
      return;
    }
    an->group_clause = true;
    if (!no_sharded_subquery(an, n)) return;
    int column = group_item(an, n);
    if (column == -2) return;
    if (column == NO_COLUMN) continue;
    const PgQuery__Node *target = column >= VISIBLE ? an->targets[column - VISIBLE].expr : NULL;
    an->group_nodes[an->ngroup_nodes++] = (group_node_t){n, target, column};
    bool dup = false;
    for (int k = 0; k < an->ngroup && !dup; k++) dup = an->group[k] == column;
    if (!dup) an->group[an->ngroup++] = column;
  }
}

/* ---- HAVING ---- */

static bool visit_sublink(an_t *an, const ProtobufCMessage *m, void *arg) {
  return m->descriptor == &pg_query__sub_link__descriptor;
}

static void add_same(an_t *an, int a, int b) {
  for (int i = 0; i < an->nsame; i++)
    if ((an->same[2 * i] == a && an->same[2 * i + 1] == b) ||
        (an->same[2 * i] == b && an->same[2 * i + 1] == a))
      return;
  if (an->nsame == an->same_cap) {
    an->same_cap = an->same_cap ? an->same_cap * 2 : 4;
    an->same = pgs_xrealloc(an->same, sizeof(*an->same) * 2 * (size_t)an->same_cap);
  }
  an->same[2 * an->nsame] = a;
  an->same[2 * an->nsame + 1] = b;
  an->nsame++;
}

static int add_cond(an_t *an, cond_t c) {
  if (an->nconds == an->conds_cap) {
    an->conds_cap = an->conds_cap ? an->conds_cap * 2 : 8;
    an->conds = pgs_xrealloc(an->conds, (size_t)an->conds_cap * sizeof(*an->conds));
  }
  an->conds[an->nconds] = c;
  return an->nconds++;
}

static int add_logic(an_t *an, int kind, size_t nargs) {
  if (nargs > INT16_MAX) {
    refuse(an, "HAVING with this many conditions cannot be merged across shards");
    return -1;
  }
  return add_cond(an, (cond_t){.kind = kind, .nargs = (int)nargs});
}

/* A constant: a literal (a parameter of the lexer's), the client's $n,
 * NULL, true/false, maybe signed and cast. */
static bool constant(const PgQuery__Node *n) {
  if (n == NULL) return false;
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_PARAM_REF:
  case PG_QUERY__NODE__NODE_A_CONST:
    return true;
  case PG_QUERY__NODE__NODE_TYPE_CAST:
    return constant(n->type_cast->arg);
  case PG_QUERY__NODE__NODE_A_EXPR: {
    const PgQuery__AExpr *e = n->a_expr;
    const char *op = e->n_name == 1 ? str_of(e->name[0]) : NULL;
    return e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_OP && e->lexpr == NULL && op &&
           (!strcmp(op, "-") || !strcmp(op, "+")) && constant(e->rexpr);
  }
  default:
    return false;
  }
}

/* The column holding HAVING operand N, compared with PARTNER (NULL when
 * none): an aggregate (a select item or a hidden column), a GROUP BY
 * expression, or a constant. A constant comes back from the shards as a
 * hidden column "CASE WHEN false THEN partner ELSE constant END": the
 * server types an untyped literal or parameter against the other operand
 * as the comparison does (count(*) > '5' compares bigints). false,
 * refused, for anything else. */
static bool having_operand(an_t *an, const PgQuery__Node *n, const PgQuery__Node *partner,
                           int *column) {
  if (n == NULL) return refuse(an, "HAVING in this form cannot be merged across shards");
  if (is_node(n, PG_QUERY__NODE__NODE_A_CONST) && n->a_const->isnull) {
    *column = PGS_COND_NULL;
    return true;
  }
  if (constant(n)) {
    char *text = deparse(n);
    if (text && partner && !is_node(n, PG_QUERY__NODE__NODE_TYPE_CAST)) {
      char *other = deparse(partner);
      char *both = NULL;
      if (other) {
        size_t len = strlen(text) + strlen(other) + 48;
        both = pgs_xmalloc(len);
        snprintf(both, len, "CASE WHEN false THEN (%s) ELSE (%s) END", other, text);
      }
      free(other);
      free(text);
      text = both;
    }
    if (text == NULL)
      return refuse(an,
                    "a HAVING constant cannot be merged across shards (it cannot be written "
                    "back as SQL)");
    int h = add_hidden_text(an, text, PGS_AGG_NONE);
    an->hidden[h].constant = true;
    *column = h;
    return true;
  }
  if (is_node(n, PG_QUERY__NODE__NODE_FUNC_CALL) && is_aggregate(n->func_call)) {
    int agg;
    bool distinct;
    if (!classify(an, n, &agg, &distinct)) return false;
    int i = same_target(an, n);
    if (i >= 0 && an->targets[i].agg == agg) {
      *column = VISIBLE + i;
      return true;
    }
    int h = add_hidden(an, n, agg);
    if (h < 0) return false;
    *column = h;
    return true;
  }
  const PgQuery__FuncCall *inner = find_aggregate(an, n);
  if (inner)
    return refuse(an,
                  "HAVING with %s() inside an expression cannot be merged across shards; compare "
                  "the aggregate itself",
                  last_name(inner));
  for (int g = 0; g < an->ngroup_nodes; g++) {
    if (is_group_node(an, &an->group_nodes[g], n)) {
      *column = an->group_nodes[g].column;
      return true;
    }
  }
  return refuse(an,
                "HAVING with an expression that is not an aggregate, a GROUP BY expression or a "
                "constant cannot be merged across shards");
}

static bool having_compare(an_t *an, const PgQuery__Node *l, int op, const PgQuery__Node *r) {
  int lc, rc;
  if (!having_operand(an, l, r, &lc) || !having_operand(an, r, l, &rc)) return false;
  add_cond(an, (cond_t){.kind = PGS_COND_CMP, .op = op, .left = lc, .right = rc});
  return true;
}

/* x BETWEEN lo AND hi: x >= lo AND x <= hi. */
static bool having_between(an_t *an, const PgQuery__Node *x, const PgQuery__Node *lo,
                           const PgQuery__Node *hi) {
  add_logic(an, PGS_COND_AND, 2);
  return having_compare(an, x, PGS_CMP_GE, lo) && having_compare(an, x, PGS_CMP_LE, hi);
}

static int compare_op(const char *op) {
  static const struct {
    const char *name;
    int op;
  } ops[] = {{"=", PGS_CMP_EQ},  {"<>", PGS_CMP_NE}, {"!=", PGS_CMP_NE}, {"<", PGS_CMP_LT},
             {"<=", PGS_CMP_LE}, {">", PGS_CMP_GT},  {">=", PGS_CMP_GE}};
  for (size_t i = 0; op && i < PGS_ARRAY_LEN(ops); i++)
    if (!strcmp(ops[i].name, op)) return ops[i].op;
  return -1;
}

/* HAVING condition N into an->conds (prefix order). */
static bool having_cond(an_t *an, const PgQuery__Node *n, int depth) {
  if (depth > MAX_DEPTH) {
    an->too_deep = true;
    return false;
  }
  if (is_node(n, PG_QUERY__NODE__NODE_BOOL_EXPR)) {
    const PgQuery__BoolExpr *b = n->bool_expr;
    int kind = b->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR  ? PGS_COND_AND
               : b->boolop == PG_QUERY__BOOL_EXPR_TYPE__OR_EXPR ? PGS_COND_OR
                                                                : PGS_COND_NOT;
    if (add_logic(an, kind, b->n_args) < 0) return false;
    for (size_t i = 0; i < b->n_args; i++)
      if (!having_cond(an, b->args[i], depth + 1)) return false;
    return true;
  }
  if (is_node(n, PG_QUERY__NODE__NODE_NULL_TEST)) {
    const PgQuery__NullTest *t = n->null_test;
    if (t->nulltesttype == PG_QUERY__NULL_TEST_TYPE__IS_NOT_NULL) add_logic(an, PGS_COND_NOT, 1);
    int c;
    if (!having_operand(an, (const PgQuery__Node *)t->arg, NULL, &c)) return false;
    add_cond(an, (cond_t){.kind = PGS_COND_IS_NULL, .left = c, .right = PGS_COND_NULL});
    return true;
  }
  if (is_node(n, PG_QUERY__NODE__NODE_A_EXPR)) {
    const PgQuery__AExpr *e = n->a_expr;
    const char *op = e->n_name == 1 ? str_of(e->name[0]) : NULL;
    const PgQuery__List *list =
        is_node(e->rexpr, PG_QUERY__NODE__NODE_LIST) ? e->rexpr->list : NULL;
    switch (e->kind) {
    case PG_QUERY__A__EXPR__KIND__AEXPR_OP:
      if (compare_op(op) < 0 || e->lexpr == NULL) break;
      return having_compare(an, e->lexpr, compare_op(op), e->rexpr);
    case PG_QUERY__A__EXPR__KIND__AEXPR_IN: {
      /* x IN (a, b): x = a OR x = b; NOT IN: x <> a AND x <> b. */
      int cmp = compare_op(op);
      if (list == NULL || (cmp != PGS_CMP_EQ && cmp != PGS_CMP_NE)) break;
      if (add_logic(an, cmp == PGS_CMP_EQ ? PGS_COND_OR : PGS_COND_AND, list->n_items) < 0)
        return false;
      for (size_t i = 0; i < list->n_items; i++)
        if (!having_compare(an, e->lexpr, cmp, list->items[i])) return false;
      return true;
    }
    case PG_QUERY__A__EXPR__KIND__AEXPR_BETWEEN:
    case PG_QUERY__A__EXPR__KIND__AEXPR_NOT_BETWEEN:
    case PG_QUERY__A__EXPR__KIND__AEXPR_BETWEEN_SYM:
    case PG_QUERY__A__EXPR__KIND__AEXPR_NOT_BETWEEN_SYM: {
      if (list == NULL || list->n_items != 2) break;
      const PgQuery__Node *lo = list->items[0], *hi = list->items[1];
      bool negate = e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_NOT_BETWEEN ||
                    e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_NOT_BETWEEN_SYM;
      bool symmetric = e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_BETWEEN_SYM ||
                       e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_NOT_BETWEEN_SYM;
      if (negate) add_logic(an, PGS_COND_NOT, 1);
      if (!symmetric) return having_between(an, e->lexpr, lo, hi);
      /* SYMMETRIC: either bound may be the lower one. */
      add_logic(an, PGS_COND_OR, 2);
      return having_between(an, e->lexpr, lo, hi) && having_between(an, e->lexpr, hi, lo);
    }
    default:
      break;
    }
  }
  const PgQuery__FuncCall *inner = find_aggregate(an, n);
  if (inner && mergeable_kind(inner) < 0)
    return refuse(an, "%s() cannot be merged across shards", last_name(inner));
  return refuse(an,
                "HAVING with this condition cannot be merged across shards (only comparisons, "
                "BETWEEN, IN lists, IS [NOT] NULL, AND, OR and NOT)");
}

static void analyse_having(an_t *an, const PgQuery__SelectStmt *s) {
  if (s->having_clause == NULL) return;
  if (walk_node(an, s->having_clause, true, visit_sublink, NULL)) {
    refuse(an, "HAVING with a subquery cannot be merged across shards");
    return;
  }
  if (walk_node(an, s->having_clause, false, visit_window, NULL)) {
    refuse(an, "window functions cannot be merged across shards");
    return;
  }
  having_cond(an, s->having_clause, 0);
}

/* ---- DISTINCT ON ---- */

/* The shards run DISTINCT ON as written (PostgreSQL checks that it
 * matches the start of the ORDER BY); the merge sorts by the ORDER BY,
 * then by the DISTINCT ON expressions (as PostgreSQL does when the ORDER
 * BY names only some of them; else they change nothing), so rows of equal
 * keys are next to each other, and keeps the first of each. */
static void analyse_distinct_on(an_t *an, const PgQuery__SelectStmt *s) {
  if (an->grouped) {
    refuse(an, "DISTINCT ON with aggregates or GROUP BY cannot be merged across shards");
    return;
  }
  int n = (int)s->n_distinct_clause, non = 0;
  int *on = pgs_xmalloc(sizeof(int) * (size_t)n);
  for (int i = 0; i < n && !refused(an); i++) {
    const PgQuery__Node *item = s->distinct_clause[i];
    if (is_node(item, PG_QUERY__NODE__NODE_PARAM_REF) &&
        item->param_ref->number > an->lexed->nparams) {
      /* The lexer keeps ORDER BY and GROUP BY positions, not these. */
      refuse(an, "DISTINCT ON (position) cannot be merged across shards; write the expression");
      break;
    }
    if (!no_sharded_subquery(an, item)) break;
    int column = sort_item(an, item);
    if (column == -2) break;
    if (column == NO_COLUMN) {
      refuse(an, "DISTINCT ON a constant cannot be merged across shards");
      break;
    }
    bool dup = false;
    for (int k = 0; k < non && !dup; k++) dup = on[k] == column;
    if (!dup) on[non++] = column;
  }
  if (!refused(an)) {
    an->keys = pgs_xrealloc(an->keys, sizeof(*an->keys) * (size_t)(an->nkeys + non));
    for (int i = 0; i < non; i++) an->keys[an->nkeys++] = (sort_key_t){on[i], false, false};
    an->distinct_on = non;
  }
  free(on);
}

/* ---- DISTINCT aggregates ---- */

/* Whether expression M is made of GROUP BY expressions, aggregates and
 * constants only: once the shards group by a DISTINCT aggregate's x as
 * well, they would take a column that is none of those (which PostgreSQL
 * refuses), so pgshard must. */
static bool visit_ungrouped(an_t *an, const ProtobufCMessage *m, void *arg) {
  (void)arg;
  if (m->descriptor != &pg_query__node__descriptor) return false;
  const PgQuery__Node *n = (const PgQuery__Node *)m;
  bool whole = is_node(n, PG_QUERY__NODE__NODE_FUNC_CALL) && is_aggregate(n->func_call);
  for (int g = 0; g < an->ngroup_nodes && !whole; g++)
    whole = is_group_node(an, &an->group_nodes[g], n);
  an->walk_skip = whole;
  return !whole && is_node(n, PG_QUERY__NODE__NODE_COLUMN_REF);
}

static bool grouped_expr(an_t *an, const ProtobufCMessage *m) {
  return m == NULL || !walk(an, m, true, visit_ungrouped, NULL);
}

/* What regrouping by the DISTINCT aggregates' arguments needs: every
 * other column a GROUP BY expression or made of them; without GROUP BY
 * (one group, which pgshard makes up when no shard sends a row) nothing
 * but aggregates, whose values over no rows pgshard knows. */
static void check_regroup(an_t *an) {
  if (!an->regroup || refused(an)) return;
  for (int i = 0; i < an->ntargets && !refused(an); i++) {
    const target_t *t = &an->targets[i];
    if (t->agg != PGS_AGG_NONE) continue;
    if (!an->group_clause)
      refuse(an,
             "count/sum/avg(DISTINCT ...) without GROUP BY cannot be merged across shards beside "
             "a select item that is not an aggregate");
    else if (!grouped_expr(an, &t->expr->base))
      refuse(an,
             "count/sum/avg(DISTINCT ...) cannot be merged across shards beside a select item "
             "that is not an aggregate or a GROUP BY expression");
  }
  for (int h = 0; h < an->nhidden && !refused(an); h++) {
    const hidden_t *hc = &an->hidden[h];
    if (hc->constant && !an->group_clause)
      refuse(an,
             "HAVING with a constant beside count/sum/avg(DISTINCT ...) and no GROUP BY cannot "
             "be merged across shards");
    else if (hc->sort && !grouped_expr(an, &hc->sort->base))
      refuse(an,
             "count/sum/avg(DISTINCT ...) cannot be merged across shards with an ORDER BY "
             "expression that is not an aggregate or a GROUP BY expression");
  }
}

static void analyse_sort(an_t *an, const PgQuery__SelectStmt *s) {
  if (s->n_sort_clause == 0) return;
  an->keys = pgs_xmalloc(sizeof(*an->keys) * s->n_sort_clause);
  for (size_t k = 0; k < s->n_sort_clause && !refused(an); k++) {
    const PgQuery__Node *n = s->sort_clause[k];
    if (!is_node(n, PG_QUERY__NODE__NODE_SORT_BY)) {
      refuse(an, "this ORDER BY cannot be merged across shards");
      return;
    }
    const PgQuery__SortBy *sb = n->sort_by;
    if (sb->sortby_dir == PG_QUERY__SORT_BY_DIR__SORTBY_USING) {
      refuse(an, "ORDER BY ... USING cannot be merged across shards");
      return;
    }
    if (!no_sharded_subquery(an, sb->node)) return;
    int column = sort_item(an, sb->node);
    if (column == -2) return;
    if (column == NO_COLUMN) continue;
    bool desc = sb->sortby_dir == PG_QUERY__SORT_BY_DIR__SORTBY_DESC;
    bool nulls_first = sb->sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORTBY_NULLS_FIRST  ? true
                       : sb->sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORTBY_NULLS_LAST ? false
                                                                                        : desc;
    an->keys[an->nkeys++] = (sort_key_t){column, desc, nulls_first};
  }
}

static void analyse_select(an_t *an, const PgQuery__SelectStmt *s) {
  an->select = s;
  if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE) {
    refuse(an, "%s cannot be merged across shards", setop_name(s));
    return;
  }
  if (s->into_clause) {
    refuse(an, "SELECT ... INTO cannot be merged across shards");
    return;
  }
  if (s->n_locking_clause > 0) {
    refuse(an, "SELECT ... FOR UPDATE/SHARE cannot be merged across shards");
    return;
  }
  /* WITH queries are analysed where they are used (subqueries and WITH
   * queries run per shard). */
  an->stmt = s;
  if (s->with_clause) record_with(an, s->with_clause);
  for (size_t i = 0; i < s->n_from_clause; i++) add_from(an, s->from_clause[i], 0);
  if (!where_subqueries(an, s->where_clause)) return;
  collect_edges(an, s->where_clause);
  check_joins(an);
  if (refused(an)) return;
  if (s->n_window_clause > 0) {
    refuse(an, "window functions cannot be merged across shards");
    return;
  }
  bool distinct_on = false;
  if (s->n_distinct_clause == 1 &&
      (s->distinct_clause[0] == NULL ||
       s->distinct_clause[0]->node_case == PG_QUERY__NODE__NODE__NOT_SET)) {
    an->spec->distinct = true;
  } else if (s->n_distinct_clause > 0) {
    distinct_on = true;
  }
  analyse_targets(an, s);
  if (refused(an)) return;
  /* An aggregate in ORDER BY, or HAVING, groups the query too. */
  for (size_t k = 0; k < s->n_sort_clause; k++)
    if (is_node(s->sort_clause[k], PG_QUERY__NODE__NODE_SORT_BY) &&
        find_aggregate(an, s->sort_clause[k]->sort_by->node))
      an->grouped = true;
  if (s->having_clause) an->grouped = true;
  if ((an->grouped || s->n_group_clause > 0) && an->first_star >= 0) {
    refuse(an, "SELECT * with aggregates or GROUP BY cannot be merged across shards");
    return;
  }
  analyse_group(an, s);
  if (refused(an)) return;
  analyse_having(an, s);
  if (refused(an)) return;
  analyse_sort(an, s);
  if (refused(an)) return;
  if (distinct_on) analyse_distinct_on(an, s);
  check_regroup(an);
  if (refused(an)) return;
  analyse_limits(an, s);
  if (refused(an) || !an->copy) return;
  const pgs_merge_spec_t *spec = an->spec;
  const char *what = an->grouped                         ? "aggregates or GROUP BY"
                     : spec->distinct                    ? "DISTINCT"
                     : distinct_on                       ? "DISTINCT ON"
                     : s->n_sort_clause                  ? "ORDER BY"
                     : s->limit_count || s->limit_offset ? "LIMIT or OFFSET"
                                                         : NULL;
  if (what)
    refuse(an,
           "COPY (SELECT ... %s) TO STDOUT cannot be merged across shards; COPY only "
           "concatenates the shards' rows",
           what);
}

/* A DefElem's boolean value: no argument means true (COPY ... HEADER). */
static bool option_true(const PgQuery__DefElem *d) {
  const PgQuery__Node *a = d->arg;
  if (a == NULL) return true;
  switch (a->node_case) {
  case PG_QUERY__NODE__NODE_BOOLEAN:
    return a->boolean->boolval;
  case PG_QUERY__NODE__NODE_INTEGER:
    return a->integer->ival != 0;
  case PG_QUERY__NODE__NODE_STRING:
    return strcasecmp(a->string->sval, "false") != 0 && strcasecmp(a->string->sval, "off") != 0 &&
           strcasecmp(a->string->sval, "no") != 0 && strcmp(a->string->sval, "0") != 0;
  default:
    return true;
  }
}

static void analyse_copy(an_t *an, const PgQuery__CopyStmt *c) {
  an->copy = true;
  if (c->is_program || (c->filename && c->filename[0])) {
    refuse(an, "COPY ... TO a server file or program cannot be merged across shards");
    return;
  }
  for (size_t i = 0; i < c->n_options; i++) {
    if (!is_node(c->options[i], PG_QUERY__NODE__NODE_DEF_ELEM)) continue;
    const PgQuery__DefElem *d = c->options[i]->def_elem;
    if (d->defname && !strcmp(d->defname, "format") && str_of(d->arg) &&
        !strcasecmp(str_of(d->arg), "binary")) {
      refuse(an,
             "COPY ... TO STDOUT in binary format cannot be merged across shards (each "
             "shard's output has its own header)");
      return;
    }
    if (d->defname && !strcmp(d->defname, "header") && option_true(d)) {
      refuse(an,
             "COPY ... TO STDOUT with HEADER cannot be merged across shards (each shard "
             "would send its header line)");
      return;
    }
  }
  if (c->query == NULL) return; /* COPY table TO STDOUT: every shard's rows */
  if (!is_node(c->query, PG_QUERY__NODE__NODE_SELECT_STMT)) {
    refuse(an, "COPY of a data-modifying statement cannot be merged across shards");
    return;
  }
  analyse_select(an, c->query->select_stmt);
}

/* ---- literals put back: parameters again ---- */

/* The literal whose placeholder is at offset AT of the normalised text,
 * or -1. */
static int literal_at(const pgs_lexed_t *lexed, uint32_t at) {
  int lo = 0, hi = lexed->nliterals - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (lexed->literals[mid].placeholder == at) return mid;
    if (lexed->literals[mid].placeholder < at)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}

static PgQuery__Node *new_param_ref(int number, int32_t location) {
  PgQuery__ParamRef *p = pgs_xmalloc(sizeof(*p));
  pg_query__param_ref__init(p);
  p->number = number;
  p->location = location;
  PgQuery__Node *n = pgs_xmalloc(sizeof(*n));
  pg_query__node__init(n);
  n->node_case = PG_QUERY__NODE__NODE_PARAM_REF;
  n->param_ref = p;
  return n;
}

/* An A_Const the parser saw for a literal of the lexer's becomes that
 * literal's parameter again, as the normalised text has it: $N, or -$N
 * where the grammar folded a minus into the constant. */
static void literal_again(an_t *an, PgQuery__Node *n) {
  const pgs_lexed_t *lexed = an->lexed;
  PgQuery__AConst *c = n->a_const;
  if (c->isnull || c->location < 0 || c->val_case == PG_QUERY__A__CONST__VAL_BOOLVAL ||
      c->val_case == PG_QUERY__A__CONST__VAL_BSVAL)
    return;
  uint32_t at = to_normalized(an, c->location);
  const char *text = lexed->normalized;
  bool negate = false;
  if (at < lexed->normalized_len && text[at] == '-') {
    negate = true;
    at++;
    while (at < lexed->normalized_len && (text[at] == ' ' || text[at] == '(')) at++;
  }
  int i = literal_at(lexed, at);
  if (i < 0) return;
  int32_t location = c->location;
  PgQuery__Node *param = new_param_ref(lexed->nparams + 1 + i, an->lit_loc[i]);
  pg_query__a__const__free_unpacked(c, NULL);
  if (!negate) {
    n->node_case = PG_QUERY__NODE__NODE_PARAM_REF;
    n->param_ref = param->param_ref;
    free(param);
    return;
  }
  PgQuery__String *minus = pgs_xmalloc(sizeof(*minus));
  pg_query__string__init(minus);
  minus->sval = pgs_xstrdup("-");
  PgQuery__Node *name = pgs_xmalloc(sizeof(*name));
  pg_query__node__init(name);
  name->node_case = PG_QUERY__NODE__NODE_STRING;
  name->string = minus;
  PgQuery__AExpr *e = pgs_xmalloc(sizeof(*e));
  pg_query__a__expr__init(e);
  e->kind = PG_QUERY__A__EXPR__KIND__AEXPR_OP;
  e->n_name = 1;
  e->name = pgs_xmalloc(sizeof(*e->name));
  e->name[0] = name;
  e->rexpr = param;
  e->location = location;
  n->node_case = PG_QUERY__NODE__NODE_A_EXPR;
  n->a_expr = e;
}

static void params_again(an_t *an, ProtobufCMessage *m, int depth) {
  if (m == NULL || depth > MAX_DEPTH) return;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (d == &pg_query__node__descriptor &&
      ((PgQuery__Node *)m)->node_case == PG_QUERY__NODE__NODE_A_CONST) {
    literal_again(an, (PgQuery__Node *)m);
    return;
  }
  char *base = (char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t count = *(size_t *)(void *)(base + f->quantifier_offset);
      ProtobufCMessage **items = *(ProtobufCMessage ***)(void *)(base + f->offset);
      for (size_t j = 0; j < count; j++) params_again(an, items[j], depth + 1);
    } else {
      if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
          *(uint32_t *)(void *)(base + f->quantifier_offset) != f->id)
        continue;
      params_again(an, *(ProtobufCMessage **)(void *)(base + f->offset), depth + 1);
    }
  }
}

/* A copy of STMT in which every literal is its parameter again. */
static PgQuery__Node *copy_with_params(an_t *an, const PgQuery__Node *stmt) {
  const pgs_lexed_t *lexed = an->lexed;
  an->lit_len = pgs_xmalloc(sizeof(*an->lit_len) * (size_t)lexed->nliterals);
  pgs_buf_t scratch;
  pgs_buf_init(&scratch);
  for (int i = 0; i < lexed->nliterals; i++) {
    scratch.len = 0;
    pgs_lexed_put_literal(lexed, &lexed->literals[i], &scratch);
    an->lit_len[i] = (uint32_t)scratch.len;
  }
  pgs_buf_free(&scratch);
  size_t len = pg_query__node__get_packed_size(stmt);
  uint8_t *buf = pgs_xmalloc(len ? len : 1);
  pg_query__node__pack(stmt, buf);
  PgQuery__Node *copy = pg_query__node__unpack(NULL, len, buf);
  free(buf);
  if (copy) params_again(an, &copy->base, 0);
  return copy;
}

/* ---- the spec ---- */

static int compare_positions(const void *a, const void *b) {
  const pgs_merge_position_t *pa = a, *pb = b;
  return pa->at < pb->at ? -1 : pa->at > pb->at;
}

static int16_t column_of(const an_t *an, int symbolic) {
  return (int16_t)(symbolic >= VISIBLE ? an->nhidden + (symbolic - VISIBLE) : symbolic);
}

static bool is_group_column(const pgs_merge_spec_t *spec, int column) {
  for (int g = 0; g < spec->ngroup; g++)
    if (spec->group[g] == column) return true;
  return false;
}

/* Whether the shards may stop after limit + offset rows. A grouped
 * result's first groups are every shard's first groups only when the
 * ORDER BY orders the groups by their group columns alone: it starts
 * with every group column (in any order) before any other key. Then the
 * groups come in one total order everywhere, and a group among the first
 * limit + offset overall is among the first on each shard that has it.
 * Otherwise (no ORDER BY, an aggregate first, a group column left out) a
 * shard could cut a group another shard returns, and the merged group
 * would miss that shard's rows. */
static bool limit_pushed(const pgs_merge_spec_t *spec) {
  if (!spec->grouped) return true;
  /* HAVING drops merged groups, and shards grouping by a DISTINCT
   * aggregate's x send several rows per group: the first rows are not
   * the first groups then. */
  if (spec->nhaving > 0 || spec->group_text) return false;
  int covered = 0;
  for (int k = 0; k < spec->nkeys && covered < spec->ngroup; k++) {
    int c = spec->keys[k].column;
    if (!is_group_column(spec, c)) return false;
    bool seen = false;
    for (int j = 0; j < k && !seen; j++) seen = spec->keys[j].column == c;
    if (!seen) covered++;
  }
  return covered == spec->ngroup;
}

/* Whether the shards' text replaces the LIMIT/OFFSET tail. */
static bool tail_rewritten(const pgs_merge_spec_t *spec) {
  if (spec->tail_at == 0) return false;
  bool limit = spec->limit_param > 0 || spec->limit_one;
  return spec->offset_param > 0 || (limit && !limit_pushed(spec));
}

/* Where the shards' text takes "true OR " (after the HAVING keyword) and
 * the grouping by DISTINCT aggregates' arguments (after GROUP BY, or a
 * GROUP BY clause of its own before HAVING, WINDOW, ORDER BY, LIMIT ...),
 * found among the SELECT's own tokens: from its first select item on, at
 * that parenthesis depth, to the end or the parenthesis that closes it. */
static void place_clauses(an_t *an, bool having) {
  pgs_merge_spec_t *spec = an->spec;
  const pgs_lexed_t *lexed = an->lexed;
  bool regroup = an->regroup;
  if (!having && !regroup) return;
  if (an->first_target_loc < 0) {
    refuse(an, "a SELECT without columns cannot be merged across shards with HAVING");
    return;
  }
  uint32_t from = to_normalized(an, an->first_target_loc);
  PgQueryScanResult raw;
  PgQuery__ScanResult *sr = scan_text(lexed, &raw);
  uint32_t group_by = 0, before = (uint32_t)lexed->normalized_len;
  bool placed = false; /* BEFORE is the first clause after WHERE */
  int depth = 0;
  for (size_t k = 0; sr && k < sr->n_tokens; k++) {
    const PgQuery__ScanToken *t = sr->tokens[k];
    if ((uint32_t)t->start < from) continue;
    if (t->token == PG_QUERY__TOKEN__ASCII_40) {
      depth++;
      continue;
    }
    if (t->token == PG_QUERY__TOKEN__ASCII_41 && depth-- == 0) {
      if (!placed) before = (uint32_t)t->start;
      break;
    }
    if (depth > 0) continue;
    bool end = false;
    switch (t->token) {
    case PG_QUERY__TOKEN__GROUP_P:
      if (k + 1 < sr->n_tokens && sr->tokens[k + 1]->token == PG_QUERY__TOKEN__BY) {
        size_t b = k + 1;
        if (b + 1 < sr->n_tokens && (sr->tokens[b + 1]->token == PG_QUERY__TOKEN__DISTINCT ||
                                     sr->tokens[b + 1]->token == PG_QUERY__TOKEN__ALL))
          b++;
        group_by = (uint32_t)sr->tokens[b]->end;
      }
      break;
    case PG_QUERY__TOKEN__HAVING:
      if (!placed) before = (uint32_t)t->start;
      placed = true;
      spec->having_at = (uint32_t)t->end;
      break;
    case PG_QUERY__TOKEN__WINDOW:
    case PG_QUERY__TOKEN__ORDER:
    case PG_QUERY__TOKEN__LIMIT:
    case PG_QUERY__TOKEN__OFFSET:
    case PG_QUERY__TOKEN__FETCH:
    case PG_QUERY__TOKEN__FOR:
    case PG_QUERY__TOKEN__UNION:
    case PG_QUERY__TOKEN__INTERSECT:
    case PG_QUERY__TOKEN__EXCEPT:
    case PG_QUERY__TOKEN__ASCII_59: /* ; */
      if (!placed) before = (uint32_t)t->start;
      end = true;
      break;
    default:
      break;
    }
    if (end) break;
  }
  if (sr) pg_query__scan_result__free_unpacked(sr, NULL);
  pg_query_free_scan_result(raw);
  if (having && spec->having_at == 0) {
    refuse(an, "HAVING in this form cannot be merged across shards");
    return;
  }
  if (!regroup) return;
  /* GROUP BY the arguments' hidden columns, by position. */
  pgs_buf_t text;
  pgs_buf_init(&text);
  if (group_by)
    pgs_buf_put_u8(&text, ' ');
  else if (before > 0 && lexed->normalized[before - 1] == ' ')
    pgs_buf_put(&text, "GROUP BY ", 9);
  else
    pgs_buf_put(&text, " GROUP BY ", 10);
  bool first = true;
  for (int h = 0; h < an->nhidden; h++) {
    if (!an->hidden[h].arg) continue;
    char num[16];
    int n = snprintf(num, sizeof(num), first ? "%d" : ", %d", h + 1);
    pgs_buf_put(&text, num, (size_t)n);
    first = false;
  }
  pgs_buf_put(&text, group_by ? "," : " ", 1);
  pgs_buf_put_u8(&text, '\0');
  spec->group_text = (char *)text.data;
  spec->group_at = group_by ? group_by : before;
}

/* The expression in symbolic column COLUMN: a target's, or the one a
 * hidden column computes; NULL when a star stands there or before it (a
 * position then counts the star's columns). */
static const PgQuery__Node *column_expr(const an_t *an, int column) {
  if (column < VISIBLE) return an->hidden[column].expr;
  int i = column - VISIBLE;
  if (i >= an->ntargets || (an->first_star >= 0 && i >= an->first_star)) return NULL;
  return an->targets[i].expr;
}

/* Where the collation of each ORDER BY key, min/max column, group column
 * and DISTINCT column comes from: read when the shards' columns turn out
 * to be text. */
static void add_collations(an_t *an) {
  pgs_merge_spec_t *spec = an->spec;
  if (an->select == NULL || (an->nkeys == 0 && !spec->grouped && !spec->distinct)) return;
  int ncolumns = an->nhidden + an->ntargets;
  spec->collations = pgs_collate_spec_new(an->select, spec->nkeys, ncolumns);
  for (int k = 0; k < an->nkeys; k++)
    pgs_collate_source_of(&spec->collations->keys[k], column_expr(an, an->keys[k].column));
  for (int c = 0; c < ncolumns; c++) {
    int agg = spec->grouped ? spec->columns[c].agg : PGS_AGG_NONE;
    bool compared = agg == PGS_AGG_MIN || agg == PGS_AGG_MAX ||
                    (spec->distinct && c >= an->nhidden) || is_group_column(spec, c);
    int symbolic = c < an->nhidden ? c : VISIBLE + (c - an->nhidden);
    if (compared) pgs_collate_source_of(&spec->collations->columns[c], column_expr(an, symbolic));
  }
}

static void build_spec(an_t *an) {
  pgs_merge_spec_t *spec = an->spec;
  const pgs_lexed_t *lexed = an->lexed;
  if (an->nhidden + an->ntargets > MAX_COLUMNS) {
    refuse(an, "a select list of %d columns cannot be merged across shards",
           an->nhidden + an->ntargets);
    return;
  }
  spec->nhidden = an->nhidden;
  if (an->nhidden > 0) {
    if (an->first_target_loc < 0) {
      refuse(an,
             "a SELECT without columns cannot be merged across shards with ORDER BY or "
             "GROUP BY");
      return;
    }
    pgs_buf_t text;
    pgs_buf_init(&text);
    for (int h = 0; h < an->nhidden; h++) {
      char alias[32];
      pgs_buf_put(&text, an->hidden[h].text, strlen(an->hidden[h].text));
      int n = snprintf(alias, sizeof(alias), " AS pgs_h%d, ", h);
      pgs_buf_put(&text, alias, (size_t)n);
    }
    pgs_buf_put_u8(&text, '\0');
    spec->hidden_text = (char *)text.data;
    spec->hidden_at = to_normalized(an, an->first_target_loc);
  }
  place_clauses(an, an->nconds > 0);
  if (refused(an)) return;
  spec->grouped = an->grouped;
  if (an->grouped) {
    spec->ncolumns = an->nhidden + an->ntargets;
    spec->columns = pgs_xcalloc((size_t)spec->ncolumns, sizeof(*spec->columns));
    for (int h = 0; h < an->nhidden; h++) {
      pgs_merge_column_t *col = &spec->columns[h];
      const hidden_t *hc = &an->hidden[h];
      col->agg = (uint8_t)hc->agg;
      col->avg_sum = (int16_t)hc->avg_sum;
      col->avg_count = (int16_t)hc->avg_count;
      col->distinct = hc->distinct;
      col->distinct_arg = (int16_t)(hc->distinct ? hc->distinct_arg : -1);
    }
    for (int i = 0; i < an->ntargets; i++) {
      pgs_merge_column_t *col = &spec->columns[an->nhidden + i];
      const target_t *t = &an->targets[i];
      col->agg = (uint8_t)t->agg;
      col->avg_sum = (int16_t)t->avg_sum;
      col->avg_count = (int16_t)t->avg_count;
      col->distinct = t->distinct && t->agg != PGS_AGG_AVG;
      col->distinct_arg = (int16_t)(col->distinct ? t->distinct_arg : -1);
    }
    spec->ngroup = an->ngroup;
    spec->group = pgs_xmalloc(sizeof(*spec->group) * (size_t)(an->ngroup ? an->ngroup : 1));
    for (int g = 0; g < an->ngroup; g++) spec->group[g] = column_of(an, an->group[g]);
    spec->one_group = !an->group_clause;
    if (an->nconds > 0) {
      spec->nhaving = an->nconds;
      spec->having = pgs_xmalloc(sizeof(*spec->having) * (size_t)an->nconds);
      for (int i = 0; i < an->nconds; i++) {
        const cond_t *c = &an->conds[i];
        bool operands = c->kind == PGS_COND_CMP || c->kind == PGS_COND_IS_NULL;
        spec->having[i] = (pgs_merge_cond_t){
            .kind = (uint8_t)c->kind,
            .op = (uint8_t)c->op,
            .nargs = (int16_t)c->nargs,
            .left = operands && c->left != PGS_COND_NULL ? column_of(an, c->left) : PGS_COND_NULL,
            .right =
                operands && c->right != PGS_COND_NULL ? column_of(an, c->right) : PGS_COND_NULL,
        };
      }
    }
  }
  spec->distinct_on = an->distinct_on;
  if (an->nsame > 0) {
    spec->nsame = an->nsame;
    spec->same = pgs_xmalloc(sizeof(*spec->same) * 2 * (size_t)an->nsame);
    memcpy(spec->same, an->same, sizeof(*spec->same) * 2 * (size_t)an->nsame);
  }
  spec->nkeys = an->nkeys;
  if (an->nkeys > 0) {
    spec->keys = pgs_xmalloc(sizeof(*spec->keys) * (size_t)an->nkeys);
    for (int k = 0; k < an->nkeys; k++)
      spec->keys[k] = (pgs_merge_key_t){column_of(an, an->keys[k].column), an->keys[k].desc,
                                        an->keys[k].nulls_first};
  }
  add_collations(an);
  /* Positions move past the hidden columns; without any they stay. */
  if (an->nhidden > 0 && an->npositions > 0) {
    spec->positions = pgs_xmalloc(sizeof(*spec->positions) * (size_t)an->npositions);
    for (int i = 0; i < an->npositions; i++) {
      pgs_merge_position_t p = an->positions[i];
      p.at = to_normalized(an, (int32_t)p.at);
      while (p.at + p.len < lexed->normalized_len && lexed->normalized[p.at + p.len] >= '0' &&
             lexed->normalized[p.at + p.len] <= '9')
        p.len++;
      if (p.len == 0 || (spec->tail_at && p.at >= spec->tail_at)) {
        refuse(an, "an ORDER BY or GROUP BY position cannot be merged across shards here");
        return;
      }
      spec->positions[spec->npositions++] = p;
    }
    qsort(spec->positions, (size_t)spec->npositions, sizeof(*spec->positions), compare_positions);
  }
  spec->rewrite = spec->nhidden > 0 || tail_rewritten(spec) || spec->having_at || spec->group_text;
}

/* Nothing but the reason stays in a refused spec. */
static void clear_spec(pgs_merge_spec_t *spec) {
  char reason[sizeof(spec->refuse)];
  memcpy(reason, spec->refuse, sizeof(reason));
  pgs_collate_spec_free(spec->collations);
  free(spec->hidden_text);
  free(spec->columns);
  free(spec->group);
  free(spec->keys);
  free(spec->positions);
  free(spec->having);
  free(spec->group_text);
  free(spec->same);
  memset(spec, 0, sizeof(*spec));
  memcpy(spec->refuse, reason, sizeof(reason));
}

pgs_merge_spec_t *pgs_merge_analyze(const pgs_database_t *db, const pgs_lexed_t *lexed,
                                    const PgQuery__Node *stmt, const int32_t *lit_loc) {
  if (stmt == NULL) return NULL;
  if (stmt->node_case == PG_QUERY__NODE__NODE_COPY_STMT) {
    if (stmt->copy_stmt->is_from) return NULL;
  } else if (stmt->node_case != PG_QUERY__NODE__NODE_SELECT_STMT) {
    return NULL;
  }
  an_t an = {.db = db, .lexed = lexed, .first_star = -1, .first_target_loc = -1};
  an.spec = pgs_xcalloc(1, sizeof(*an.spec));
  PgQuery__Node *own = NULL;
  if (lit_loc != NULL && lexed->nliterals > 0) {
    an.lit_loc = lit_loc;
    own = copy_with_params(&an, stmt);
    if (own == NULL) refuse(&an, "statement too complex to merge across shards");
    stmt = own;
  }
  if (!refused(&an)) {
    if (stmt->node_case == PG_QUERY__NODE__NODE_COPY_STMT)
      analyse_copy(&an, stmt->copy_stmt);
    else
      analyse_select(&an, stmt->select_stmt);
  }
  if (an.too_deep) refuse(&an, "statement too complex to merge across shards");
  if (!refused(&an)) build_spec(&an);
  if (refused(&an)) clear_spec(an.spec);

  for (int h = 0; h < an.nhidden; h++) free(an.hidden[h].text);
  free(an.hidden);
  free(an.targets);
  free(an.group);
  free(an.group_nodes);
  free(an.conds);
  free(an.same);
  free(an.keys);
  free(an.positions);
  free(an.refs);
  free(an.edges);
  free(an.cte_defs);
  free(an.lit_len);
  if (own) pg_query__node__free_unpacked(own, NULL);
  return an.spec;
}

void pgs_merge_spec_free(pgs_merge_spec_t *spec) {
  if (spec == NULL) return;
  pgs_collate_spec_free(spec->collations);
  free(spec->hidden_text);
  free(spec->columns);
  free(spec->group);
  free(spec->keys);
  free(spec->positions);
  free(spec->having);
  free(spec->group_text);
  free(spec->same);
  free(spec);
}

/* ---- the shards' text ---- */

/* Normalised text [FROM, TO) with its literals put back. */
static void put_range(const pgs_lexed_t *lexed, size_t from, size_t to, int *next, pgs_buf_t *out) {
  size_t mark = out->len;
  if (from >= to) return;
  if (!pgs_lexed_restore(lexed, from, to, next, out, NULL)) {
    /* Not expected: the lexer put the placeholders there. */
    out->len = mark;
    pgs_buf_put(out, lexed->normalized + from, to - from);
  }
}

static bool ident_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '$' || c >= 0x80;
}

/* Parameter P as SQL: its literal, or $P. */
static void put_param(const pgs_lexed_t *lexed, int p, pgs_buf_t *out) {
  const pgs_literal_t *lit = pgs_lexed_literal(lexed, p);
  if (lit) {
    pgs_lexed_put_literal(lexed, lit, out);
  } else {
    char buf[16];
    int n = snprintf(buf, sizeof(buf), "$%d", p);
    pgs_buf_put(out, buf, (size_t)n);
  }
}

/* The hidden columns' text with its literals' $N put back (the deparser
 * quotes strings '...' or E'...' and identifiers "...": a $N inside those,
 * or glued to an identifier, is no parameter). */
static void put_hidden(const pgs_lexed_t *lexed, const char *s, pgs_buf_t *out) {
  size_t i = 0, n = strlen(s);
  while (i < n) {
    char ch = s[i];
    if (ch == '\'' || ch == '"') {
      size_t j = i + 1;
      while (j < n) {
        if (ch == '\'' && s[j] == '\\' && i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e') &&
            j + 1 < n) {
          j += 2;
          continue;
        }
        if (s[j] == ch) {
          if (j + 1 < n && s[j + 1] == ch) {
            j += 2;
            continue;
          }
          j++;
          break;
        }
        j++;
      }
      pgs_buf_put(out, s + i, j - i);
      i = j;
    } else if (ch == '$' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9' &&
               !(i > 0 && ident_byte((unsigned char)s[i - 1]))) {
      size_t j = i + 1;
      long p = 0;
      while (j < n && s[j] >= '0' && s[j] <= '9' && p <= 65535) p = p * 10 + (s[j++] - '0');
      put_param(lexed, (int)p, out);
      i = j;
    } else {
      pgs_buf_put_u8(out, (uint8_t)ch);
      i++;
    }
  }
}

/* "(value)::int8" for a LIMIT or OFFSET parameter. */
static void put_count(const pgs_lexed_t *lexed, int param, bool negate, pgs_buf_t *out) {
  pgs_buf_put(out, negate ? "(-" : "(", negate ? 2 : 1);
  put_param(lexed, param, out);
  pgs_buf_put(out, ")::int8", 7);
}

static void put_tail(const pgs_merge_spec_t *spec, const pgs_lexed_t *lexed, pgs_buf_t *out) {
  bool limit = spec->limit_param > 0 || spec->limit_one;
  bool offset = spec->offset_param > 0;
  if (limit_pushed(spec)) {
    if (limit) {
      pgs_buf_put(out, "LIMIT ", 6);
      if (spec->limit_one)
        pgs_buf_put(out, "1", 1);
      else
        put_count(lexed, spec->limit_param, spec->limit_negate, out);
      pgs_buf_put(out, " + ", 3);
    } else {
      pgs_buf_put(out, "OFFSET 0 * ", 11);
    }
    put_count(lexed, spec->offset_param, spec->offset_negate, out);
    return;
  }
  /* Every row of every shard; the parameters stay referenced. */
  if (spec->limit_param == 0 && !offset) return;
  pgs_buf_put(out, "OFFSET ", 7);
  if (spec->limit_param > 0) {
    pgs_buf_put(out, "0 * ", 4);
    put_count(lexed, spec->limit_param, spec->limit_negate, out);
    if (offset) pgs_buf_put(out, " + ", 3);
  }
  if (offset) {
    pgs_buf_put(out, "0 * ", 4);
    put_count(lexed, spec->offset_param, spec->offset_negate, out);
  }
}

/* One change the shards' text makes to the client's, at offset AT of the
 * normalised text: insertions (hidden columns, the DISTINCT aggregates'
 * grouping, HAVING's "true OR ") take nothing; a position and the
 * LIMIT/OFFSET tail replace [at, end). */
typedef enum { EDIT_HIDDEN, EDIT_GROUP, EDIT_HAVING, EDIT_POSITION, EDIT_TAIL } edit_kind_t;

typedef struct edit {
  uint32_t at, end;
  int kind;
  int index; /* EDIT_POSITION: which */
} edit_t;

static int compare_edits(const void *a, const void *b) {
  const edit_t *ea = a, *eb = b;
  if (ea->at != eb->at) return ea->at < eb->at ? -1 : 1;
  return (ea->kind > eb->kind) - (ea->kind < eb->kind); /* insertions first */
}

void pgs_merge_shard_sql(const pgs_merge_spec_t *spec, const pgs_lexed_t *lexed, pgs_buf_t *out) {
  size_t len = lexed->normalized_len;
  size_t at = 0;
  int next = 0;
  if (spec->refuse[0] == '\0' && spec->rewrite) {
    edit_t *edits = pgs_xmalloc(sizeof(*edits) * (size_t)(spec->npositions + 4));
    int n = 0;
    if (spec->nhidden > 0 && spec->hidden_text)
      edits[n++] = (edit_t){spec->hidden_at, spec->hidden_at, EDIT_HIDDEN, 0};
    if (spec->group_text) edits[n++] = (edit_t){spec->group_at, spec->group_at, EDIT_GROUP, 0};
    if (spec->having_at) edits[n++] = (edit_t){spec->having_at, spec->having_at, EDIT_HAVING, 0};
    if (spec->nhidden > 0)
      for (int i = 0; i < spec->npositions; i++)
        edits[n++] = (edit_t){spec->positions[i].at, spec->positions[i].at + spec->positions[i].len,
                              EDIT_POSITION, i};
    if (tail_rewritten(spec) && spec->tail_at <= spec->tail_end)
      edits[n++] = (edit_t){spec->tail_at, spec->tail_end, EDIT_TAIL, 0};
    qsort(edits, (size_t)n, sizeof(*edits), compare_edits);
    for (int i = 0; i < n; i++) {
      const edit_t *e = &edits[i];
      if (e->at < at || e->end > len) continue; /* not expected: a spec of another text */
      put_range(lexed, at, e->at, &next, out);
      switch (e->kind) {
      case EDIT_HIDDEN:
        put_hidden(lexed, spec->hidden_text, out);
        break;
      case EDIT_GROUP:
        pgs_buf_put(out, spec->group_text, strlen(spec->group_text));
        break;
      case EDIT_HAVING:
        pgs_buf_put(out, " true OR", 8);
        break;
      case EDIT_POSITION: {
        char buf[16];
        int k =
            snprintf(buf, sizeof(buf), "%d", spec->positions[e->index].position + spec->nhidden);
        pgs_buf_put(out, buf, (size_t)k);
        break;
      }
      case EDIT_TAIL:
        put_tail(spec, lexed, out);
        break;
      }
      at = e->end;
    }
    free(edits);
  }
  put_range(lexed, at, len, &next, out);
  pgs_buf_put_u8(out, '\0');
}

/* ---- LIMIT and OFFSET values ---- */

PGS_PRINTF(3, 4)
static pgs_status_t value_error(pgs_value_error_t *err, const char *sqlstate, const char *fmt,
                                ...) {
  snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", sqlstate);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return PGS_EINVAL;
}

static bool blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* An integer as int8in/int4in/int2in read one: blanks around, a sign,
 * digits. */
static pgs_status_t parse_integer(const char *s, size_t len, int64_t lo, int64_t hi,
                                  const char *type, int64_t *out, pgs_value_error_t *err) {
  size_t i = 0, end = len;
  while (i < end && blank(s[i])) i++;
  while (end > i && blank(s[end - 1])) end--;
  bool neg = false;
  if (i < end && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  if (i == end) goto syntax;
  uint64_t v = 0;
  for (; i < end; i++) {
    if (s[i] < '0' || s[i] > '9') goto syntax;
    uint64_t d = (uint64_t)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) goto range;
    v = v * 10 + d;
  }
  if (neg ? v > (uint64_t) - (lo + 1) + 1 : v > (uint64_t)hi) goto range;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return PGS_OK;
syntax:
  return value_error(err, "22P02", "invalid input syntax for type %s: \"%.*s\"", type,
                     (int)(len > 100 ? 100 : len), s);
range:
  return value_error(err, "22003", "value \"%.*s\" is out of range for type %s",
                     (int)(len > 100 ? 100 : len), s, type);
}

/* A numeric or float value converted to bigint: numeric rounds half away
 * from zero, float half to even (rint), as PostgreSQL's casts do. */
static pgs_status_t parse_decimal(const char *s, size_t len, bool half_even, int64_t *out,
                                  pgs_value_error_t *err) {
  char buf[128];
  if (len >= sizeof(buf)) len = sizeof(buf) - 1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  char *end;
  double d = strtod(buf, &end);
  while (*end && blank(*end)) end++;
  if (end == buf || *end != '\0' || isnan(d))
    return value_error(err, "22P02", "invalid input syntax for type numeric: \"%s\"", buf);
  d = half_even ? rint(d) : round(d);
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
    return value_error(err, "22003", "bigint out of range");
  *out = (int64_t)d;
  return PGS_OK;
}

static bool decimal_syntax(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] == '.' || s[i] == 'e' || s[i] == 'E') return true;
  return false;
}

/* Parameter PARAM's value as a count; *ISNULL for SQL NULL. */
static pgs_status_t read_count(const pgs_lexed_t *lexed, const pgs_param_values_t *params,
                               int param, const char *clause, int64_t *out, bool *isnull,
                               pgs_value_error_t *err) {
  *isnull = false;
  if (param > lexed->nparams) {
    const pgs_literal_t *lit = pgs_lexed_literal(lexed, param);
    if (lit == NULL)
      return value_error(err, PGS_SQLSTATE_INTERNAL, "%s refers to unknown value $%d", clause,
                         param);
    const char *v = lexed->values + lit->offset;
    if (lit->is_string) return parse_integer(v, lit->len, INT64_MIN, INT64_MAX, "bigint", out, err);
    /* A number literal: an integer, or a numeric cast to bigint. */
    if (decimal_syntax(v, lit->len)) return parse_decimal(v, lit->len, false, out, err);
    if (parse_integer(v, lit->len, INT64_MIN, INT64_MAX, "bigint", out, err) != PGS_OK)
      return value_error(err, "22003", "bigint out of range");
    return PGS_OK;
  }
  if (params == NULL)
    return value_error(err, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                       "the %s is parameter $%d, but no Bind supplies it", clause, param);
  if (param > params->n)
    return value_error(err, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                       "bind message supplies %d parameters, but the statement uses $%d", params->n,
                       param);
  int i = param - 1;
  if (params->len[i] < 0) {
    *isnull = true;
    return PGS_OK;
  }
  const uint8_t *data = params->data[i];
  size_t len = (size_t)params->len[i];
  if (data == NULL && len > 0)
    return value_error(err, PGS_SQLSTATE_PROTOCOL_VIOLATION, "parameter $%d has no data", param);
  uint32_t oid = params->type_oid && i < params->ntypes ? params->type_oid[i] : 0;
  bool binary = params->format && params->format[i] == 1;
  if (binary) {
    /* Unspecified: PostgreSQL infers bigint for a LIMIT or OFFSET. */
    size_t want = oid == PGS_OID_INT2               ? 2
                  : oid == PGS_OID_INT4             ? 4
                  : oid == PGS_OID_INT8 || oid == 0 ? 8
                                                    : 0;
    if (want == 0)
      return value_error(err, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                         "a binary %s parameter of type %u cannot be read across shards", clause,
                         oid);
    if (len != want)
      return value_error(err, "22P03", "incorrect binary data format in bind parameter %d", param);
    if (want == 2)
      *out = (int16_t)(((uint16_t)data[0] << 8) | data[1]);
    else if (want == 4)
      *out = (int32_t)pgs_get_u32(data);
    else
      *out = (int64_t)(((uint64_t)pgs_get_u32(data) << 32) | pgs_get_u32(data + 4));
    return PGS_OK;
  }
  const char *s = (const char *)data;
  switch (oid) {
  case PGS_OID_INT2:
    return parse_integer(s, len, INT16_MIN, INT16_MAX, "smallint", out, err);
  case PGS_OID_INT4:
    return parse_integer(s, len, INT32_MIN, INT32_MAX, "integer", out, err);
  case PGS_OID_NUMERIC:
    return parse_decimal(s, len, false, out, err);
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8:
    return parse_decimal(s, len, true, out, err);
  default:
    return parse_integer(s, len, INT64_MIN, INT64_MAX, "bigint", out, err);
  }
}

pgs_status_t pgs_merge_limits(const pgs_merge_spec_t *spec, const pgs_lexed_t *lexed,
                              const pgs_param_values_t *params, int64_t *limit, int64_t *offset,
                              pgs_value_error_t *err) {
  *limit = -1;
  *offset = 0;
  for (int i = 0; i < spec->nsame; i++) {
    const pgs_literal_t *a = pgs_lexed_literal(lexed, spec->same[2 * i]);
    const pgs_literal_t *b = pgs_lexed_literal(lexed, spec->same[2 * i + 1]);
    if (a && b && a->is_string == b->is_string && a->len == b->len &&
        memcmp(lexed->values + a->offset, lexed->values + b->offset, a->len) == 0)
      continue;
    return value_error(err, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                       "an expression that is its GROUP BY expression but for a literal cannot "
                       "be merged across shards with HAVING or a DISTINCT aggregate");
  }
  int64_t v;
  bool isnull;
  if (spec->limit_one) {
    *limit = 1;
  } else if (spec->limit_param > 0) {
    pgs_status_t st = read_count(lexed, params, spec->limit_param, "LIMIT", &v, &isnull, err);
    if (st != PGS_OK) return st;
    if (!isnull) {
      if (spec->limit_negate) {
        if (v == INT64_MIN) return value_error(err, "22003", "bigint out of range");
        v = -v;
      }
      if (v < 0) return value_error(err, "2201W", "LIMIT must not be negative");
      *limit = v;
    }
  }
  if (spec->offset_param > 0) {
    pgs_status_t st = read_count(lexed, params, spec->offset_param, "OFFSET", &v, &isnull, err);
    if (st != PGS_OK) return st;
    if (!isnull) {
      if (spec->offset_negate) {
        if (v == INT64_MIN) return value_error(err, "22003", "bigint out of range");
        v = -v;
      }
      if (v < 0) return value_error(err, "2201X", "OFFSET must not be negative");
      *offset = v;
    }
  }
  return PGS_OK;
}
