/*
 * collate.c — collations for the cross-shard merge (collate.h): the
 * comparison PostgreSQL's varstr_cmp makes, where a merged expression's
 * collation comes from, and the catalog the shards agree on.
 *
 * Collators are loaded once per process and never freed: a lock-free list
 * (pushed with compare-and-swap) that worker threads read and extend, so a
 * merge can keep a pointer for as long as it runs whatever snapshot comes
 * next. A catalog is immutable once built; its strings point into copies
 * of the shards' answers it owns.
 */
#include <gnu/libc-version.h>
#include <locale.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include <pg_query/pg_query.pb-c.h>

#include "pgshard/collate.h"
#include "pgshard/pbwalk.h"
#include "pgshard/value.h"

/* ---- collators ---- */

struct pgs_collator {
  struct pgs_collator *next;
  locale_t locale;
  char name[];
};

static pgs_collator_t *collators; /* loaded so far: atomic head of the list */

static const pgs_collator_t *find_collator(pgs_collator_t *head, const char *locale) {
  for (const pgs_collator_t *c = head; c; c = c->next)
    if (!strcmp(c->name, locale)) return c;
  return NULL;
}

const pgs_collator_t *pgs_collator_libc(const char *locale) {
  pgs_collator_t *head = __atomic_load_n(&collators, __ATOMIC_ACQUIRE);
  const pgs_collator_t *found = find_collator(head, locale);
  if (found) return found;
  locale_t loc = newlocale(LC_COLLATE_MASK, locale, (locale_t)0);
  if (loc == (locale_t)0) return NULL;
  size_t len = strlen(locale);
  pgs_collator_t *c = pgs_xmalloc(sizeof(*c) + len + 1);
  c->locale = loc;
  memcpy(c->name, locale, len + 1);
  for (;;) {
    c->next = head;
    if (__atomic_compare_exchange_n(&collators, &head, c, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
      return c;
    /* Another thread pushed meanwhile (HEAD is its list now): maybe this
     * very locale. */
    found = find_collator(head, locale);
    if (found) {
      freelocale(loc);
      free(c);
      return found;
    }
  }
}

const char *pgs_collator_locale(const pgs_collator_t *c) { return c ? c->name : "C"; }

bool pgs_collate_locale_is_bytes(const char *locale) {
  if (!strcmp(locale, "C") || !strcmp(locale, "POSIX")) return true;
  /* C.UTF-8, C.utf8: glibc sorts them by code point. */
  if (strncmp(locale, "C.", 2) != 0) return false;
  char codeset[16];
  size_t n = 0;
  for (const char *p = locale + 2; *p && n + 1 < sizeof(codeset); p++)
    if (*p != '-') codeset[n++] = (char)(*p | 0x20);
  codeset[n] = '\0';
  return !strcmp(codeset, "utf8");
}

bool pgs_collate_type(uint32_t oid) {
  return oid == PGS_OID_TEXT || oid == PGS_OID_VARCHAR || oid == PGS_OID_BPCHAR ||
         oid == PGS_OID_NAME;
}

static int bytes_compare(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
  size_t n = alen < blen ? alen : blen;
  int r = n ? memcmp(a, b, n) : 0;
  if (r != 0) return r;
  return (alen > blen) - (alen < blen);
}

/* Values this long are copied to the heap to be NUL-terminated (as
 * PostgreSQL's TEXTBUFLEN). */
#define STACK_TEXT 1024

int pgs_collate_compare(const pgs_collator_t *c, uint32_t oid, const uint8_t *a, size_t alen,
                        const uint8_t *b, size_t blen) {
  if (oid == PGS_OID_BPCHAR) { /* trailing blanks do not count */
    while (alen > 0 && a[alen - 1] == ' ') alen--;
    while (blen > 0 && b[blen - 1] == ' ') blen--;
  }
  if (c == NULL) return bytes_compare(a, alen, b, blen);
  /* Equal bytes are equal in every deterministic collation, and cheap to
   * find (varstr_cmp does the same). */
  if (alen == blen && (alen == 0 || memcmp(a, b, alen) == 0)) return 0;
  char abuf[STACK_TEXT], bbuf[STACK_TEXT];
  char *ap = alen < sizeof(abuf) ? abuf : pgs_xmalloc(alen + 1);
  char *bp = blen < sizeof(bbuf) ? bbuf : pgs_xmalloc(blen + 1);
  if (alen) memcpy(ap, a, alen);
  ap[alen] = '\0';
  if (blen) memcpy(bp, b, blen);
  bp[blen] = '\0';
  int r = strcoll_l(ap, bp, c->locale);
  /* Deterministic: strings strcoll calls equal are ordered by strcmp. */
  if (r == 0) r = strcmp(ap, bp);
  if (ap != abuf) free(ap);
  if (bp != bbuf) free(bp);
  return r;
}

/* ---- sources ---- */

static const char *str_of(const PgQuery__Node *n) {
  return n && n->node_case == PG_QUERY__NODE__NODE_STRING ? n->string->sval : NULL;
}

static char *dup_or_null(const char *s) { return s && s[0] ? pgs_xstrdup(s) : NULL; }

static bool is_cte(const PgQuery__SelectStmt *s, const PgQuery__RangeVar *rv) {
  const PgQuery__WithClause *w = s->with_clause;
  if (w == NULL || (rv->schemaname && rv->schemaname[0])) return false;
  for (size_t i = 0; i < w->n_ctes; i++) {
    const PgQuery__Node *c = w->ctes[i];
    if (c && c->node_case == PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR &&
        !strcmp(c->common_table_expr->ctename, rv->relname))
      return true;
  }
  return false;
}

static void add_from(pgs_collate_spec_t *spec, const PgQuery__SelectStmt *s, const PgQuery__Node *n,
                     int depth) {
  if (n == NULL) return;
  if (depth > 100) {
    spec->others = true;
    return;
  }
  switch (n->node_case) {
  case PG_QUERY__NODE__NODE_RANGE_VAR: {
    const PgQuery__RangeVar *rv = n->range_var;
    if (rv->relname == NULL || is_cte(s, rv)) {
      spec->others = true;
      return;
    }
    spec->rels = pgs_xrealloc(spec->rels, (size_t)(spec->nrels + 1) * sizeof(*spec->rels));
    pgs_collate_rel_t *r = &spec->rels[spec->nrels++];
    r->schema = dup_or_null(rv->schemaname);
    r->name = pgs_xstrdup(rv->relname);
    r->alias = rv->alias ? dup_or_null(rv->alias->aliasname) : NULL;
    return;
  }
  case PG_QUERY__NODE__NODE_JOIN_EXPR: {
    const PgQuery__JoinExpr *j = n->join_expr;
    /* A join's own alias hides its tables' names: unknown then. */
    if (j->alias) spec->others = true;
    add_from(spec, s, j->larg, depth + 1);
    add_from(spec, s, j->rarg, depth + 1);
    return;
  }
  case PG_QUERY__NODE__NODE_RANGE_TABLE_SAMPLE:
    add_from(spec, s, n->range_table_sample->relation, depth + 1);
    return;
  default: /* subqueries, functions, XMLTABLE ...: columns of their own */
    spec->others = true;
    return;
  }
}

pgs_collate_spec_t *pgs_collate_spec_new(const PgQuery__SelectStmt *select, int nkeys,
                                         int ncolumns) {
  pgs_collate_spec_t *spec = pgs_xcalloc(1, sizeof(*spec));
  for (size_t i = 0; i < select->n_from_clause; i++)
    add_from(spec, select, select->from_clause[i], 0);
  spec->nkeys = nkeys;
  spec->keys = pgs_xcalloc((size_t)(nkeys ? nkeys : 1), sizeof(*spec->keys));
  spec->ncolumns = ncolumns;
  spec->columns = pgs_xcalloc((size_t)(ncolumns ? ncolumns : 1), sizeof(*spec->columns));
  return spec;
}

static void source_free(pgs_collate_source_t *src) {
  free(src->schema);
  free(src->name);
  for (int i = 0; i < src->ninputs; i++) {
    free(src->inputs[i].schema);
    free(src->inputs[i].qualifier);
    free(src->inputs[i].column);
  }
  free(src->inputs);
}

void pgs_collate_spec_free(pgs_collate_spec_t *spec) {
  if (spec == NULL) return;
  for (int i = 0; i < spec->nrels; i++) {
    free(spec->rels[i].schema);
    free(spec->rels[i].name);
    free(spec->rels[i].alias);
  }
  free(spec->rels);
  for (int k = 0; k < spec->nkeys; k++) source_free(&spec->keys[k]);
  free(spec->keys);
  for (int c = 0; c < spec->ncolumns; c++) source_free(&spec->columns[c]);
  free(spec->columns);
  free(spec);
}

/* A column reference as an input; false for t.* (a row, never text). */
static bool add_input(pgs_collate_source_t *src, const PgQuery__ColumnRef *c) {
  size_t n = c->n_fields;
  const char *column = n ? str_of(c->fields[n - 1]) : NULL;
  if (column == NULL || n > 4) return false;
  src->inputs = pgs_xrealloc(src->inputs, (size_t)(src->ninputs + 1) * sizeof(*src->inputs));
  pgs_collate_input_t *in = &src->inputs[src->ninputs++];
  in->column = pgs_xstrdup(column);
  in->qualifier = n >= 2 ? dup_or_null(str_of(c->fields[n - 2])) : NULL;
  in->schema = n >= 3 ? dup_or_null(str_of(c->fields[n - 3])) : NULL;
  return true;
}

/* scan_inputs' visitor: a column is an input; an inner COLLATE, a
 * subquery or a row decides the collation in a way pgshard does not
 * follow (the walk stops, and so does a column it cannot note). */
static pgs_walk_t scan_input(const ProtobufCMessage *m, void *arg) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (d == &pg_query__collate_clause__descriptor || d == &pg_query__sub_link__descriptor ||
      d == &pg_query__select_stmt__descriptor)
    return PGS_WALK_STOP;
  if (d == &pg_query__column_ref__descriptor)
    return add_input(arg, (const PgQuery__ColumnRef *)m) ? PGS_WALK_SKIP : PGS_WALK_STOP;
  return PGS_WALK_ON;
}

/* The columns M reads, depth first; false when something in it decides
 * the collation in a way pgshard does not follow (an inner COLLATE, a
 * subquery, a row). */
static bool scan_inputs(pgs_collate_source_t *src, const ProtobufCMessage *m) {
  return !pgs_pb_walk(m, 200, scan_input, src, NULL);
}

/* A cast to a type with a collation keeps its argument's collation (or
 * gives the default to one without). */
static bool text_cast(const PgQuery__TypeCast *tc) {
  static const char *const names[] = {"text", "varchar", "bpchar", "name"};
  const PgQuery__TypeName *tn = tc->type_name;
  if (tn == NULL || tn->n_names == 0 || tn->n_array_bounds > 0 || tn->pct_type) return false;
  const char *name = str_of(tn->names[tn->n_names - 1]);
  if (name == NULL) return false;
  if (tn->n_names == 2 &&
      (str_of(tn->names[0]) == NULL || strcmp(str_of(tn->names[0]), "pg_catalog")))
    return false;
  if (tn->n_names > 2) return false;
  for (size_t i = 0; i < PGS_ARRAY_LEN(names); i++)
    if (!strcmp(names[i], name)) return true;
  return false;
}

/* min(x) and max(x) have x's collation. */
static const PgQuery__Node *min_max_arg(const PgQuery__FuncCall *fc) {
  if (fc->n_args != 1 || fc->agg_star || fc->over || fc->n_funcname == 0 || fc->n_funcname > 2)
    return NULL;
  const char *name = str_of(fc->funcname[fc->n_funcname - 1]);
  if (fc->n_funcname == 2 &&
      (str_of(fc->funcname[0]) == NULL || strcmp(str_of(fc->funcname[0]), "pg_catalog")))
    return NULL;
  if (name == NULL || (strcmp(name, "min") != 0 && strcmp(name, "max") != 0)) return NULL;
  return fc->args[0];
}

void pgs_collate_source_of(pgs_collate_source_t *src, const PgQuery__Node *n) {
  source_free(src);
  memset(src, 0, sizeof(*src));
  if (n == NULL) {
    src->bare = src->opaque = true;
    return;
  }
  for (int depth = 0; depth < 100; depth++) {
    if (n->node_case == PG_QUERY__NODE__NODE_TYPE_CAST && text_cast(n->type_cast) &&
        n->type_cast->arg) {
      n = n->type_cast->arg;
    } else if (n->node_case == PG_QUERY__NODE__NODE_FUNC_CALL && min_max_arg(n->func_call)) {
      n = min_max_arg(n->func_call);
    } else {
      break;
    }
  }
  if (n->node_case == PG_QUERY__NODE__NODE_COLLATE_CLAUSE) {
    const PgQuery__CollateClause *cc = n->collate_clause;
    const char *name = cc->n_collname ? str_of(cc->collname[cc->n_collname - 1]) : NULL;
    const char *schema = cc->n_collname == 2 ? str_of(cc->collname[0]) : NULL;
    if (name == NULL || cc->n_collname > 2 || (cc->n_collname == 2 && schema == NULL)) {
      src->kind = PGS_COLLSRC_UNSURE;
      return;
    }
    src->kind = PGS_COLLSRC_NAMED;
    src->name = pgs_xstrdup(name);
    src->schema = dup_or_null(schema);
    return;
  }
  if (n->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
    src->bare = true;
    if (!add_input(src, n->column_ref)) src->kind = PGS_COLLSRC_UNSURE;
    return;
  }
  if (!scan_inputs(src, &n->base)) src->kind = PGS_COLLSRC_UNSURE;
}

/* ---- the catalog ---- */

typedef struct column_entry {
  const char *schema, *table, *column;
  bool agreed; /* every shard lists it alike: COLL is its collation */
  pgs_collation_t coll;
} column_entry_t;

struct pgs_collcat {
  int refcount; /* atomic */
  const char *encoding;
  const char *libc_version; /* the shards' glibc ("": not known) */
  pgs_collation_t deflt;    /* the database's default */
  pgs_collation_t *collations;
  int ncollations; /* sorted by name, then schema */
  column_entry_t *columns;
  int ncolumns;
  char **texts; /* the copies everything points into */
  int ntexts;
};

pgs_collcat_t *pgs_collcat_ref(pgs_collcat_t *cat) {
  if (cat) __atomic_add_fetch(&cat->refcount, 1, __ATOMIC_RELAXED);
  return cat;
}

void pgs_collcat_unref(pgs_collcat_t *cat) {
  if (cat == NULL || __atomic_sub_fetch(&cat->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  for (int i = 0; i < cat->ntexts; i++) free(cat->texts[i]);
  free(cat->texts);
  free(cat->collations);
  free(cat->columns);
  free(cat);
}

/* A copy of TEXT the catalog owns. */
static char *own(pgs_collcat_t *cat, const char *text) {
  cat->texts = pgs_xrealloc(cat->texts, (size_t)(cat->ntexts + 1) * sizeof(*cat->texts));
  return cat->texts[cat->ntexts++] = pgs_xstrdup(text);
}

/* TEXT cut into lines in place (empty ones skipped): how many, in *LINES
 * (malloc'ed). */
static int split_lines(char *text, char ***lines) {
  int n = 0, cap = 0;
  *lines = NULL;
  for (char *p = text; p && *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    if (*p) {
      if (n == cap) {
        cap = cap ? cap * 2 : 64;
        *lines = pgs_xrealloc(*lines, (size_t)cap * sizeof(**lines));
      }
      (*lines)[n++] = p;
    }
    p = nl ? nl + 1 : NULL;
  }
  return n;
}

/* LINE cut at its tabs in place into exactly N fields in F; false (the
 * line partly cut) when it has another number of fields. */
static bool split_fields(char *line, char **f, int n) {
  int i = 1;
  f[0] = line;
  for (char *p = line; *p; p++) {
    if (*p != '\t') continue;
    if (i == n) return false;
    *p = '\0';
    f[i++] = p + 1;
  }
  return i == n;
}

/* "provider TAB t|f TAB locale" as a collation. */
static bool parse_collation(char **f, pgs_collation_t *c) {
  if (strlen(f[0]) != 1 || (strcmp(f[1], "t") != 0 && strcmp(f[1], "f") != 0)) return false;
  c->provider = f[0][0];
  c->deterministic = f[1][0] == 't';
  c->locale = f[2];
  return true;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int compare_collations(const void *a, const void *b) {
  const pgs_collation_t *x = a, *y = b;
  int r = strcmp(x->name, y->name);
  return r ? r : strcmp(x->schema, y->schema);
}

/* The first three fields of a column line (its key) compared. */
static int key_compare(const char *a, const char *b) {
  int tabs = 0;
  for (;; a++, b++) {
    if (*a != *b) {
      bool aend = *a == '\0' || (*a == '\t' && tabs == 2);
      bool bend = *b == '\0' || (*b == '\t' && tabs == 2);
      if (aend && bend) return 0;
      return aend ? -1 : bend ? 1 : (unsigned char)*a - (unsigned char)*b;
    }
    if (*a == '\0') return 0;
    if (*a == '\t' && ++tabs == 3) return 0;
  }
}

static bool has_line(char **lines, int n, const char *line) {
  return bsearch(&line, lines, (size_t)n, sizeof(*lines), compare_strings) != NULL;
}

pgs_collcat_t *pgs_collcat_build(const char *const *dbs, const char *const *lists, int n) {
  if (n <= 0) return NULL;
  for (int i = 0; i < n; i++)
    if (dbs[i] == NULL || lists[i] == NULL) return NULL;
  /* The database part's first line: alike everywhere. */
  size_t head = strcspn(dbs[0], "\n");
  for (int i = 1; i < n; i++)
    if (strcspn(dbs[i], "\n") != head || strncmp(dbs[0], dbs[i], head) != 0) return NULL;
  pgs_collcat_t *cat = pgs_xcalloc(1, sizeof(*cat));
  cat->refcount = 1;
  char **dblines[n], **listlines[n];
  int ndb[n], nlist[n];
  for (int i = 0; i < n; i++) {
    ndb[i] = split_lines(own(cat, dbs[i]), &dblines[i]);
    nlist[i] = split_lines(own(cat, lists[i]), &listlines[i]);
    qsort(listlines[i], (size_t)nlist[i], sizeof(char *), compare_strings);
  }
  bool ok = ndb[0] >= 1;
  char *f[8];
  if (ok && split_fields(dblines[0][0], f, 5)) {
    /* A default by ICU or the builtin provider has its locale apart. */
    cat->encoding = f[0];
    cat->libc_version = f[4];
    cat->deflt = (pgs_collation_t){.schema = "pg_catalog",
                                   .name = "default",
                                   .provider = f[1][0],
                                   .deterministic = true,
                                   .locale = f[1][0] == 'c' ? f[2] : f[3]};
    ok = strlen(f[1]) == 1;
  } else {
    ok = false;
  }
  /* Collations: those every shard has alike. */
  if (ok) {
    cat->collations = pgs_xcalloc((size_t)(nlist[0] ? nlist[0] : 1), sizeof(*cat->collations));
    for (int l = 0; l < nlist[0]; l++) {
      char *line = listlines[0][l];
      bool everywhere = true;
      for (int i = 1; i < n && everywhere; i++) everywhere = has_line(listlines[i], nlist[i], line);
      pgs_collation_t *c = &cat->collations[cat->ncollations];
      if (!everywhere || !split_fields(line, f, 5) || !parse_collation(f + 2, c)) continue;
      c->schema = f[0];
      c->name = f[1];
      cat->ncollations++;
    }
    qsort(cat->collations, (size_t)cat->ncollations, sizeof(*cat->collations), compare_collations);
  }
  /* Columns: every shard's, grouped by schema, table and column. */
  if (ok) {
    int total = 0;
    for (int i = 0; i < n; i++) total += ndb[i] - 1;
    char **all = pgs_xmalloc((size_t)(total ? total : 1) * sizeof(*all));
    int k = 0;
    for (int i = 0; i < n; i++)
      for (int l = 1; l < ndb[i]; l++) all[k++] = dblines[i][l];
    qsort(all, (size_t)total, sizeof(*all), compare_strings);
    cat->columns = pgs_xcalloc((size_t)(total ? total : 1), sizeof(*cat->columns));
    for (int a = 0; a < total;) {
      int b = a + 1;
      bool alike = true;
      while (b < total && key_compare(all[a], all[b]) == 0) {
        alike = alike && !strcmp(all[a], all[b]);
        b++;
      }
      column_entry_t *e = &cat->columns[cat->ncolumns++];
      if (!split_fields(all[a], f, 8) || !parse_collation(f + 5, &e->coll)) {
        ok = false; /* a name with a tab or newline: nothing is sure */
        break;
      }
      e->schema = f[0];
      e->table = f[1];
      e->column = f[2];
      e->coll.schema = f[3];
      e->coll.name = f[4];
      e->agreed = alike && b - a == n;
      a = b;
    }
    free(all);
  }
  for (int i = 0; i < n; i++) {
    free(dblines[i]);
    free(listlines[i]);
  }
  if (!ok) {
    pgs_collcat_unref(cat);
    return NULL;
  }
  return cat;
}

char *pgs_collcat_query(const char *known) {
  static const char head[] =
      "SELECT pg_catalog.getdatabaseencoding(), "
      "coalesce(pg_catalog.to_jsonb(d) ->> 'datlocprovider', 'c'), d.datcollate, "
      "coalesce(pg_catalog.to_jsonb(d) ->> 'daticulocale', pg_catalog.to_jsonb(d) ->> "
      "'datlocale'), coalesce((SELECT pg_catalog.pg_collation_actual_version(v.oid) FROM "
      "pg_catalog.pg_collation v WHERE v.collprovider = 'c' AND v.collcollate !~* "
      "'^(c|posix)($|\\.)' LIMIT 1), pg_catalog.to_jsonb(d) ->> 'datcollversion'), "
      "(SELECT pg_catalog.string_agg(x.line, E'\\n' ORDER BY x.line) FROM (SELECT "
      "n.nspname || E'\\t' || c.relname || E'\\t' || a.attname || E'\\t' || cn.nspname || "
      "E'\\t' || co.collname || E'\\t' || co.collprovider::text || E'\\t' || CASE WHEN "
      "co.collisdeterministic THEN 't' ELSE 'f' END || E'\\t' || "
      "coalesce(co.collcollate, pg_catalog.to_jsonb(co) ->> 'colliculocale', "
      "pg_catalog.to_jsonb(co) ->> 'colllocale', '') AS line "
      "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
      "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
      "JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation "
      "JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace "
      "WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attcollation <> 100 "
      "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
      "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgshard') "
      "AND n.nspname !~ '^pg_toast') x), "
      "l.h, CASE WHEN l.h = '";
  static const char tail[] =
      "' THEN NULL ELSE (SELECT coalesce(pg_catalog.string_agg(z.line, E'\\n'), '') FROM "
      "(SELECT cn.nspname || E'\\t' || co.collname || E'\\t' || co.collprovider::text || E'\\t' "
      "|| CASE WHEN co.collisdeterministic THEN 't' ELSE 'f' END || E'\\t' || "
      "coalesce(co.collcollate, pg_catalog.to_jsonb(co) ->> 'colliculocale', "
      "pg_catalog.to_jsonb(co) ->> 'colllocale', '') AS line "
      "FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn "
      "ON cn.oid = co.collnamespace WHERE co.collencoding IN (-1, "
      "pg_catalog.pg_char_to_encoding(pg_catalog.getdatabaseencoding()))) z) END "
      "FROM pg_catalog.pg_database d, (SELECT count(*) || ':' || coalesce(sum(oid::int8), 0) || "
      "':' || coalesce(max(xmin::text::int8), 0) AS h FROM pg_catalog.pg_collation) l "
      "WHERE d.datname = pg_catalog.current_database()";
  char mark[64];
  size_t n = 0;
  for (const char *p = known; p && *p && n + 1 < sizeof(mark); p++)
    if ((*p >= '0' && *p <= '9') || *p == ':') mark[n++] = *p;
  mark[n] = '\0';
  size_t len = sizeof(head) - 1 + n + sizeof(tail);
  char *sql = pgs_xmalloc(len);
  snprintf(sql, len, "%s%s%s", head, mark, tail);
  return sql;
}

/* ---- resolution ---- */

PGS_PRINTF(3, 4)
static pgs_status_t refuse(char *why, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, cap, fmt, ap);
  va_end(ap);
  return PGS_EINVAL;
}

static const char not_yet[] =
    "the collations of the shards' columns are not known yet (pgshard reads them from the "
    "shards' catalogs); try again";

/* A collation pgshard knows without a catalog: the byte-order ones. */
static bool builtin_bytes(const char *schema, const char *name) {
  if (schema && strcmp(schema, "pg_catalog") != 0) return false;
  return !strcmp(name, "C") || !strcmp(name, "POSIX") || !strcmp(name, "ucs_basic");
}

/* The collation named [SCHEMA.]NAME every shard has; NULL when none or
 * (unqualified) several differ. pg_catalog's comes first, as in the
 * search path. */
static const pgs_collation_t *find_collation(const pgs_collcat_t *cat, const char *schema,
                                             const char *name) {
  int lo = 0, hi = cat->ncollations;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (strcmp(cat->collations[mid].name, name) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  const pgs_collation_t *found = NULL;
  bool several = false;
  for (int i = lo; i < cat->ncollations && !strcmp(cat->collations[i].name, name); i++) {
    const pgs_collation_t *c = &cat->collations[i];
    if (schema ? !strcmp(c->schema, schema) : !strcmp(c->schema, "pg_catalog")) return c;
    if (schema) continue;
    if (found && (found->provider != c->provider || found->deterministic != c->deterministic ||
                  strcmp(found->locale, c->locale) != 0))
      several = true;
    found = c;
  }
  return several ? NULL : found;
}

/* What a column's collation is: */
typedef enum {
  COL_DEFAULT, /* the default, or none (a type without collations) */
  COL_NAMED,   /* *ENTRY */
  COL_UNKNOWN, /* pgshard cannot tell */
} column_coll_t;

static column_coll_t rel_column(const pgs_collcat_t *cat, const pgs_collate_rel_t *rel,
                                const char *schema, const char *column,
                                const pgs_collation_t **entry) {
  const column_entry_t *found = NULL;
  for (int i = 0; i < cat->ncolumns; i++) {
    const column_entry_t *e = &cat->columns[i];
    if (strcmp(e->table, rel->name) != 0 || strcmp(e->column, column) != 0) continue;
    const char *want = rel->schema ? rel->schema : schema;
    if (want && strcmp(e->schema, want) != 0) continue;
    if (found || !e->agreed) return COL_UNKNOWN; /* two schemas, or the shards differ */
    found = e;
  }
  if (found == NULL) return COL_DEFAULT;
  *entry = &found->coll;
  return COL_NAMED;
}

static column_coll_t input_collation(const pgs_collcat_t *cat, const pgs_collate_spec_t *spec,
                                     const pgs_collate_input_t *in, const pgs_collation_t **entry) {
  if (cat->ncolumns == 0) return COL_DEFAULT; /* every column has the default */
  if (in->qualifier) {
    for (int r = 0; r < spec->nrels; r++) {
      const pgs_collate_rel_t *rel = &spec->rels[r];
      bool named = rel->alias ? !strcmp(rel->alias, in->qualifier)
                              : !strcmp(rel->name, in->qualifier) &&
                                    (in->schema == NULL || rel->schema == NULL ||
                                     !strcmp(in->schema, rel->schema));
      if (named) return rel_column(cat, rel, in->schema, in->column, entry);
    }
    return COL_UNKNOWN; /* a subquery's or function's column */
  }
  if (spec->others || spec->nrels == 0) return COL_UNKNOWN;
  if (spec->nrels == 1) return rel_column(cat, &spec->rels[0], NULL, in->column, entry);
  /* Which table has it is not known here: only when none has a collation
   * for a column of that name is the answer sure. */
  for (int r = 0; r < spec->nrels; r++) {
    const pgs_collation_t *e = NULL;
    if (rel_column(cat, &spec->rels[r], NULL, in->column, &e) != COL_DEFAULT) return COL_UNKNOWN;
  }
  return COL_DEFAULT;
}

static void describe(const pgs_collation_t *c, char *buf, size_t cap) {
  if (!strcmp(c->name, "default") && !strcmp(c->schema, "pg_catalog"))
    snprintf(buf, cap, "the database's default collation \"%s\"", c->locale);
  else
    snprintf(buf, cap, "collation \"%s\"", c->name);
}

/* The collator of collation C, or why it cannot be compared here. */
static pgs_status_t collator_of(const pgs_collcat_t *cat, const pgs_collation_t *c, bool utf8,
                                const pgs_collator_t **out, char *why, size_t cap) {
  char name[200];
  describe(c, name, sizeof(name));
  if (c->provider == 'i')
    return refuse(why, cap, "%s (ICU) cannot be compared across shards", name);
  if (!c->deterministic)
    return refuse(why, cap, "%s (non-deterministic) cannot be compared across shards", name);
  /* libc's C and C.UTF-8, and the builtin provider's C and C.UTF-8: code
   * point order. */
  if ((c->provider == 'c' || c->provider == 'b') && pgs_collate_locale_is_bytes(c->locale))
    return PGS_OK;
  if (c->provider != 'c')
    return refuse(why, cap, "%s (provider '%c') cannot be compared across shards", name,
                  c->provider);
  /* glibc's collations change between versions (2.28 most of all): the
   * shards' order is this machine's only with the same glibc. */
  if (strcmp(cat->libc_version, gnu_get_libc_version()) != 0)
    return refuse(why, cap,
                  "%s cannot be compared across shards: they sort with glibc %s, pgshard with "
                  "%s",
                  name, cat->libc_version[0] ? cat->libc_version : "(unknown)",
                  gnu_get_libc_version());
  if (strcmp(cat->encoding, "UTF8") != 0 || !utf8)
    return refuse(why, cap,
                  "%s cannot be compared across shards unless the database's encoding and the "
                  "client's are UTF8",
                  name);
  *out = pgs_collator_libc(c->locale);
  if (*out == NULL)
    return refuse(why, cap,
                  "%s (libc locale \"%s\") cannot be loaded on pgshard's machine, so it cannot "
                  "be compared across shards",
                  name, c->locale);
  return PGS_OK;
}

pgs_status_t pgs_collate_resolve(const pgs_collcat_t *cat, const pgs_collate_spec_t *spec,
                                 const pgs_collate_source_t *src, uint32_t oid, bool utf8,
                                 const pgs_collator_t **out, char *why, size_t cap) {
  *out = NULL;
  if (!pgs_collate_type(oid)) return PGS_OK;
  if (src->kind == PGS_COLLSRC_UNSURE)
    return refuse(why, cap,
                  "pgshard cannot tell which collation this expression has; name one with "
                  "COLLATE");
  if (src->kind == PGS_COLLSRC_NAMED) {
    if (builtin_bytes(src->schema, src->name)) return PGS_OK;
    if (cat == NULL) return refuse(why, cap, "%s", not_yet);
    bool deflt = !strcmp(src->name, "default") &&
                 (src->schema == NULL || !strcmp(src->schema, "pg_catalog"));
    const pgs_collation_t *c = deflt ? NULL : find_collation(cat, src->schema, src->name);
    if (deflt) {
      if (oid == PGS_OID_NAME) return PGS_OK;
      c = &cat->deflt;
    }
    if (c == NULL)
      return refuse(why, cap, "collation \"%s\" is not known alike on every shard", src->name);
    return collator_of(cat, c, utf8, out, why, cap);
  }
  if (cat == NULL) return refuse(why, cap, "%s", not_yet);
  const pgs_collation_t *entry = NULL;
  column_coll_t kind = COL_DEFAULT;
  if (src->opaque) {
    kind = cat->ncolumns == 0 ? COL_DEFAULT : COL_UNKNOWN;
  } else if (src->bare && src->ninputs == 1) {
    kind = input_collation(cat, spec, &src->inputs[0], &entry);
  } else {
    for (int i = 0; i < src->ninputs && kind != COL_UNKNOWN; i++) {
      const pgs_collation_t *e = NULL;
      column_coll_t k = input_collation(cat, spec, &src->inputs[i], &e);
      if (k == COL_NAMED) {
        /* An input whose collation is not the default decides the
         * expression's when nothing else does: pgshard does not follow
         * that far, unless it compares just like the default. */
        bool same =
            e->provider == 'c' && cat->deflt.provider == 'c' &&
            (pgs_collate_locale_is_bytes(e->locale) ? pgs_collate_locale_is_bytes(cat->deflt.locale)
                                                    : !strcmp(e->locale, cat->deflt.locale));
        if (!same || oid == PGS_OID_NAME) {
          kind = COL_UNKNOWN;
          entry = e;
        }
      } else if (k == COL_UNKNOWN) {
        kind = k;
      }
    }
    if (kind == COL_UNKNOWN && entry)
      return refuse(why, cap,
                    "an expression over a column with collation \"%s\" has a collation pgshard "
                    "cannot tell; name one with COLLATE",
                    entry->name);
  }
  if (kind == COL_UNKNOWN) {
    const pgs_collate_input_t *in = src->ninputs > 0 ? &src->inputs[0] : NULL;
    if (in && src->ninputs == 1)
      return refuse(why, cap,
                    "pgshard cannot tell the collation of column %s%s%s; name one with COLLATE",
                    in->qualifier ? in->qualifier : "", in->qualifier ? "." : "", in->column);
    return refuse(why, cap,
                  "pgshard cannot tell the collation of these columns; name one with COLLATE");
  }
  if (kind == COL_NAMED) return collator_of(cat, entry, utf8, out, why, cap);
  /* The default of the type: C for name, the database's for the rest. */
  if (oid == PGS_OID_NAME) return PGS_OK;
  return collator_of(cat, &cat->deflt, utf8, out, why, cap);
}

bool pgs_collate_nondeterministic(const pgs_collcat_t *cat, const pgs_collate_spec_t *spec,
                                  const pgs_collate_source_t *src, char *name, size_t cap) {
  if (cat == NULL) return false;
  const pgs_collation_t *found = NULL;
  if (src->kind == PGS_COLLSRC_NAMED) {
    found = find_collation(cat, src->schema, src->name);
  } else if (src->kind == PGS_COLLSRC_DERIVED) {
    for (int i = 0; i < src->ninputs && found == NULL; i++) {
      const pgs_collation_t *e = NULL;
      if (input_collation(cat, spec, &src->inputs[i], &e) == COL_NAMED) found = e;
      if (found && found->deterministic) found = NULL;
    }
  }
  if (found == NULL || found->deterministic) return false;
  snprintf(name, cap, "%s", found->name);
  return true;
}
