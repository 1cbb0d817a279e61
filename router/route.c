/*
 * route.c — the route decision (route.h): a plan's parameter numbers
 * resolved to values, the values typed and mapped to shards, and the
 * target, the statement kind, the database's policies and the session's
 * hint or tenant turned into ONE / ANY / FANOUT / SPLIT / MERGE / REFUSE.
 *
 * Invariants: nothing here allocates on the routing path (keys and array
 * elements are parsed into fixed buffers on the stack; arrays are capped
 * at MAX_ARRAY_ELEMENTS), and every input a client controls (Bind values,
 * array literals, binary arrays) is bounds-checked before it is read. A
 * refusal fills OUT completely (kind, sqlstate, message) and nothing after
 * it changes OUT, so the first refusal is the one the client sees. Every
 * key is looked at even when a hint or tenant already decides the shard:
 * a bad value is refused the same way with or without one.
 *
 * pgs_route_split_insert works on the lexer's normalised text, where each
 * literal is a $N placeholder at a known offset, and puts the literals back
 * quoted afresh; it never scans for '$' itself, since identifiers may hold
 * one.
 */
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include "pgshard/merge.h"
#include "pgshard/route.h"

/* Elements of one array key (= ANY($1)); more are refused with 54000, so an
 * array costs bounded work whatever the client sends. */
#define MAX_ARRAY_ELEMENTS 65536
/* PostgreSQL's MAXDIM: more dimensions than this is a malformed array. */
#define MAX_ARRAY_DIMS 6

/* What one route decision needs besides its output. */
typedef struct route_ctx {
  const pgs_database_t *db;
  const pgs_lexed_t *lexed;
  const pgs_param_values_t *params;
  const pgs_key_t *tenant; /* the session's tenant, or NULL */
  int forced;              /* the shard a hint or tenant names, or -1 */
  bool forced_by_tenant;
  pgs_route_t *out;
} route_ctx_t;

/* One value a key ref stands for, before it is typed. */
typedef struct value {
  const uint8_t *data;
  size_t len;
  bool null;
  bool binary;
  bool number;  /* an unquoted number literal (its sign is the ref's negate) */
  uint32_t oid; /* binary: the type to read it as, 0 for the column's */
} value_t;

/* ---- outcomes ---- */

PGS_PRINTF(3, 4)
static bool refuse(pgs_route_t *out, const char *sqlstate, const char *fmt, ...) {
  out->kind = PGS_ROUTE_REFUSE;
  out->shard = -1;
  out->shards = 0;
  snprintf(out->sqlstate, sizeof(out->sqlstate), "%s", sqlstate);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out->message, sizeof(out->message), fmt, ap);
  va_end(ap);
  return false;
}

static bool refuse_key(pgs_route_t *out, const pgs_key_error_t *err) {
  return refuse(out, err->sqlstate, "%s", err->message);
}

static void route_one(pgs_route_t *out, int shard) {
  out->kind = PGS_ROUTE_ONE;
  out->shard = shard;
  out->shards = (uint64_t)1 << shard;
}

static uint64_t all_shards(const pgs_database_t *db) {
  return db->nshards >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << db->nshards) - 1;
}

static void route_set(pgs_route_t *out, pgs_route_kind_t kind, uint64_t shards) {
  out->kind = kind;
  out->shard = -1;
  out->shards = shards;
}

static int lowest_shard(uint64_t mask) { return __builtin_ctzll(mask); }
static bool several(uint64_t mask) { return (mask & (mask - 1)) != 0; }

/* "s0, s2" for the shards in MASK, cut short with "..." past CAP. */
static void shard_names(const pgs_database_t *db, uint64_t mask, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (int i = 0; i < db->nshards && i < 64; i++) {
    if (!(mask & ((uint64_t)1 << i))) continue;
    const char *name = db->shards[i].name;
    size_t need = strlen(name) + (len ? 2 : 0);
    if (len + need + 4 >= cap) {
      snprintf(buf + len, cap - len, "%s...", len ? ", " : "");
      return;
    }
    len += (size_t)snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", name);
  }
}

static const char *shard_name(const pgs_database_t *db, int shard) {
  return shard >= 0 && shard < db->nshards ? db->shards[shard].name : "?";
}

/* Whether the policy lets a write run on several shards: allow, and 2pc
 * (the proxy makes such a write atomic with two-phase commit). */
static bool writes_several(const pgs_database_t *db) {
  return db->cross_shard_writes == PGS_XWRITE_ALLOW || db->cross_shard_writes == PGS_XWRITE_2PC;
}

/* A write on the shards in MASK (several of them): the policy decides.
 * WHAT says what the statement does, for the refusal. */
static void write_several(route_ctx_t *c, uint64_t mask, const char *what) {
  if (writes_several(c->db)) {
    route_set(c->out, PGS_ROUTE_FANOUT, mask);
    return;
  }
  refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
         "%s; cross_shard_writes = deny allows writes on one shard only", what);
}

/* A read on the shards in MASK (several of them, none forced): merged
 * when the database allows it and the plan says how (merge.h). WHAT says
 * why the read spans shards, for the refusal. */
static void read_several(route_ctx_t *c, const pgs_plan_t *plan, uint64_t mask, const char *what) {
  if (!c->db->cross_shard_reads)
    refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s and cross_shard_reads = deny", what);
  else if (plan->merge == NULL)
    refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "%s; only a single SELECT or COPY ... TO STDOUT can run across shards", what);
  else if (plan->merge->refuse[0] != '\0')
    refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s: %s", what, plan->merge->refuse);
  else
    route_set(c->out, PGS_ROUTE_MERGE, mask);
}

/* ---- values ---- */

/* The value behind parameter number PARAM of REF, or false (refused). */
static bool resolve(route_ctx_t *c, const pgs_key_ref_t *ref, value_t *v) {
  memset(v, 0, sizeof(*v));
  int param = ref->param;
  if (param >= 1 && param <= c->lexed->nparams) {
    const pgs_param_values_t *p = c->params;
    if (p == NULL)
      return refuse(c->out, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                    "the key of table %s is parameter $%d, but no Bind supplies it",
                    ref->table->name, param);
    if (param > p->n)
      return refuse(c->out, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                    "bind message supplies %d parameters, but the statement uses $%d", p->n, param);
    int i = param - 1;
    if (p->len[i] < 0) {
      v->null = true;
      return true;
    }
    v->data = p->data[i];
    v->len = (size_t)p->len[i];
    v->binary = p->format && p->format[i] == 1;
    if (v->binary) {
      uint32_t declared = p->type_oid && i < p->ntypes ? p->type_oid[i] : 0;
      v->oid = declared ? declared : ref->cast_type_oid;
    }
    if (v->data == NULL && v->len > 0)
      return refuse(c->out, PGS_SQLSTATE_PROTOCOL_VIOLATION, "parameter $%d has no data", param);
    return true;
  }
  const pgs_literal_t *lit = pgs_lexed_literal(c->lexed, param);
  if (lit == NULL)
    return refuse(c->out, PGS_SQLSTATE_INTERNAL, "key of table %s refers to unknown value $%d",
                  ref->table->name, param);
  v->data = (const uint8_t *)c->lexed->values + lit->offset;
  v->len = lit->len;
  v->number = !lit->is_string;
  return true;
}

static bool is_integer(pgs_key_type_t type) {
  return type == PGS_TYPE_SMALLINT || type == PGS_TYPE_INT || type == PGS_TYPE_BIGINT;
}

/* -KEY, refused as PostgreSQL refuses an overflowing unary minus. */
static bool negate_key(route_ctx_t *c, const pgs_table_t *t, pgs_key_t *key) {
  int64_t lo = t->type == PGS_TYPE_SMALLINT ? INT16_MIN
               : t->type == PGS_TYPE_INT    ? INT32_MIN
                                            : INT64_MIN;
  if (key->i == INT64_MIN || -key->i < lo || -key->i > -(lo + 1))
    return refuse(c->out, "22003", "%s out of range",
                  t->type == PGS_TYPE_SMALLINT ? "smallint"
                  : t->type == PGS_TYPE_INT    ? "integer"
                                               : "bigint");
  key->i = -key->i;
  return true;
}

/* Type V (text form DATA/LEN, or binary with type OID) as a key of REF's
 * table, applying REF's negate. */
static bool make_key(route_ctx_t *c, const pgs_key_ref_t *ref, const uint8_t *data, size_t len,
                     bool binary, uint32_t oid, bool number, pgs_key_t *key) {
  const pgs_table_t *t = ref->table;
  pgs_key_error_t err;
  if (ref->negate && !is_integer(t->type))
    return refuse(c->out, "22P02", "invalid input syntax for type %s: a negated value",
                  pgs_key_type_name(t->type));
  pgs_status_t st;
  if (binary) {
    st = pgs_key_from_binary(t->type, oid, data, len, key, &err);
  } else if (ref->negate && number && len < 64) {
    /* -9223372036854775808 is a bigint although its digits alone are not:
     * the sign belongs to the literal, as PostgreSQL's grammar folds it. */
    char buf[65];
    buf[0] = '-';
    memcpy(buf + 1, data, len);
    st = pgs_key_from_text(t->type, buf, len + 1, key, &err);
    if (st != PGS_OK) return refuse_key(c->out, &err);
    return true;
  } else {
    st = pgs_key_from_text(t->type, (const char *)data, len, key, &err);
  }
  if (st != PGS_OK) return refuse_key(c->out, &err);
  return !ref->negate || negate_key(c, t, key);
}

/* KEY (of REF's table) is a key of the statement: check it against the
 * session and add its shard to *MASK. */
static bool add_key(route_ctx_t *c, const pgs_key_ref_t *ref, const pgs_key_t *key,
                    uint64_t *mask) {
  const pgs_table_t *t = ref->table;
  const pgs_database_t *db = c->db;
  char text[96];
  if (c->tenant && t->strategy == PGS_STRATEGY_TENANT && pgs_key_compare(key, c->tenant) != 0) {
    char tenant[96];
    pgs_key_format(key, text, sizeof(text));
    pgs_key_format(c->tenant, tenant, sizeof(tenant));
    return refuse(c->out, "42501", "tenant %s of table %s is not this session's tenant %s", text,
                  t->name, tenant);
  }
  pgs_key_error_t err;
  int shard = pgs_shardmap_route(db, t, key, &err);
  if (shard < 0) return refuse_key(c->out, &err);
  if (shard >= db->nshards || shard >= PGS_ROUTE_MAX_SHARDS)
    return refuse(c->out, PGS_SQLSTATE_INTERNAL, "key of table %s maps to no shard", t->name);
  if (c->forced >= 0 && shard != c->forced) {
    pgs_key_format(key, text, sizeof(text));
    return refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "key %s of table %s belongs to shard %s, not %s shard %s", text, t->name,
                  shard_name(db, shard), c->forced_by_tenant ? "the tenant's" : "hinted",
                  shard_name(db, c->forced));
  }
  *mask |= (uint64_t)1 << shard;
  return true;
}

/* One array element (text form, already unescaped, or binary). */
static bool add_element(route_ctx_t *c, const pgs_key_ref_t *ref, const uint8_t *data, size_t len,
                        bool binary, uint32_t oid, uint64_t *mask) {
  pgs_key_t key;
  if (!make_key(c, ref, data, len, binary, oid, false, &key)) return false;
  return add_key(c, ref, &key, mask);
}

/* ---- arrays ---- */

static bool array_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

static bool malformed_array(route_ctx_t *c, const char *why) {
  return refuse(c->out, "22P02", "malformed array literal as shard key: %s", why);
}

static bool too_many_elements(route_ctx_t *c, const pgs_key_ref_t *ref) {
  return refuse(c->out, "54000", "array key of table %s has over %d elements", ref->table->name,
                MAX_ARRAY_ELEMENTS);
}

/* Skip "[lo:hi]=" before a one-dimensional array literal. */
static bool skip_dimensions(const char **pp, const char *end) {
  const char *p = *pp;
  if (p >= end || *p != '[') return true;
  p++;
  int parts = 0;
  for (;;) {
    while (p < end && array_space(*p)) p++;
    if (p < end && (*p == '-' || *p == '+')) p++;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    if (p == digits) return false;
    while (p < end && array_space(*p)) p++;
    parts++;
    if (p < end && *p == ':' && parts == 1) {
      p++;
      continue;
    }
    break;
  }
  if (p >= end || *p != ']') return false;
  p++;
  while (p < end && array_space(*p)) p++;
  if (p >= end || *p != '=') return false; /* "[1][2]=" ends up here too */
  *pp = p + 1;
  return true;
}

/* A text array literal ('{1,2,"a b",NULL}', PostgreSQL's array_in for a
 * one-dimensional array with ',' between elements): each non-NULL element
 * is a key. */
static bool text_array(route_ctx_t *c, const pgs_key_ref_t *ref, const char *p, size_t len,
                       uint64_t *mask, int *nvalues) {
  const char *end = p + len;
  /* An element longer than any key fits is cut here; typing the cut value
   * still fails as the whole would (too long, out of range, bad syntax). */
  char elem[PGS_KEY_MAX_TEXT + 1];
  int count = 0;
  while (p < end && array_space(*p)) p++;
  if (!skip_dimensions(&p, end)) return malformed_array(c, "bad dimensions");
  while (p < end && array_space(*p)) p++;
  if (p >= end || *p != '{') return malformed_array(c, "expected \"{\"");
  p++;
  while (p < end && array_space(*p)) p++;
  if (p < end && *p == '}') {
    p++;
  } else {
    for (;;) {
      while (p < end && array_space(*p)) p++;
      if (p >= end) return malformed_array(c, "unexpected end");
      if (*p == '{') return malformed_array(c, "multidimensional arrays are not supported");
      size_t n = 0, kept = 0; /* kept: length without trailing unescaped blanks */
      bool quoted = false, escaped = false;
      if (*p == '"') {
        quoted = true;
        p++;
        for (;;) {
          if (p >= end) return malformed_array(c, "unterminated quoted element");
          char ch = *p++;
          if (ch == '"') break;
          if (ch == '\\') {
            if (p >= end) return malformed_array(c, "unexpected end");
            ch = *p++;
          }
          if (n < sizeof(elem)) elem[n] = ch;
          n++;
        }
        kept = n;
      } else {
        while (p < end && *p != ',' && *p != '}') {
          char ch = *p++;
          if (ch == '"' || ch == '{') return malformed_array(c, "unexpected quote or brace");
          bool literal = false;
          if (ch == '\\') {
            if (p >= end) return malformed_array(c, "unexpected end");
            ch = *p++;
            literal = escaped = true;
          }
          if (n < sizeof(elem)) elem[n] = ch;
          n++;
          if (literal || !array_space(ch)) kept = n;
        }
        if (kept == 0 && !escaped) return malformed_array(c, "empty element");
      }
      n = kept;
      while (p < end && array_space(*p)) p++;
      if (++count > MAX_ARRAY_ELEMENTS) return too_many_elements(c, ref);
      bool null = !quoted && !escaped && n == 4 && strncasecmp(elem, "null", 4) == 0;
      if (!null) {
        size_t use = n < sizeof(elem) ? n : sizeof(elem);
        if (!add_element(c, ref, (const uint8_t *)elem, use, false, 0, mask)) return false;
        (*nvalues)++;
      }
      if (p < end && *p == ',') {
        p++;
        continue;
      }
      if (p < end && *p == '}') {
        p++;
        break;
      }
      return malformed_array(c, "expected \",\" or \"}\"");
    }
  }
  while (p < end && array_space(*p)) p++;
  if (p != end) return malformed_array(c, "junk after closing \"}\"");
  return true;
}

static int32_t get_i32(const uint8_t *p) { return (int32_t)pgs_get_u32(p); }

static bool bad_binary_array(route_ctx_t *c, const char *why) {
  return refuse(c->out, "22P03", "incorrect binary array format in bind parameter: %s", why);
}

/* A binary array (array_send's format): ndim, has-nulls flag, element type
 * OID, then length and lower bound per dimension, then each element as a
 * length (-1: NULL) and its bytes, typed by the element OID. */
static bool binary_array(route_ctx_t *c, const pgs_key_ref_t *ref, const uint8_t *p, size_t len,
                         uint64_t *mask, int *nvalues) {
  const uint8_t *end = p + len;
  if (len < 12) return refuse(c->out, "08P01", "insufficient data left in message");
  int32_t ndim = get_i32(p), flags = get_i32(p + 4);
  uint32_t elem_oid = pgs_get_u32(p + 8);
  p += 12;
  if (ndim < 0 || ndim > MAX_ARRAY_DIMS) return bad_binary_array(c, "invalid number of dimensions");
  if (flags != 0 && flags != 1) return bad_binary_array(c, "invalid array flags");
  if (ndim > 1) return malformed_array(c, "multidimensional arrays are not supported");
  int32_t count = 0;
  if (ndim == 1) {
    if (end - p < 8) return refuse(c->out, "08P01", "insufficient data left in message");
    count = get_i32(p);
    p += 8; /* the lower bound does not matter to = ANY */
    if (count < 0) return bad_binary_array(c, "negative dimension");
    if (count > MAX_ARRAY_ELEMENTS) return too_many_elements(c, ref);
  }
  for (int32_t i = 0; i < count; i++) {
    if (end - p < 4) return refuse(c->out, "08P01", "insufficient data left in message");
    int32_t elen = get_i32(p);
    p += 4;
    if (elen == -1) continue;
    if (elen < 0) return bad_binary_array(c, "negative element length");
    if (end - p < elen) return refuse(c->out, "08P01", "insufficient data left in message");
    if (!add_element(c, ref, p, (size_t)elen, true, elem_oid, mask)) return false;
    (*nvalues)++;
    p += elen;
  }
  if (p != end) return bad_binary_array(c, "junk after the last element");
  return true;
}

/* Every key REF stands for (one, or an array's elements): add their shards
 * to *MASK and count the non-NULL ones in *NVALUES. */
static bool eval_ref(route_ctx_t *c, const pgs_key_ref_t *ref, uint64_t *mask, int *nvalues) {
  value_t v;
  if (!resolve(c, ref, &v)) return false;
  if (v.null) return true; /* matches no row: no shard */
  if (ref->array) {
    if (v.binary) return binary_array(c, ref, v.data, v.len, mask, nvalues);
    return text_array(c, ref, (const char *)v.data, v.len, mask, nvalues);
  }
  pgs_key_t key;
  if (!make_key(c, ref, v.data, v.len, v.binary, v.oid, v.number, &key)) return false;
  if (!add_key(c, ref, &key, mask)) return false;
  (*nvalues)++;
  return true;
}

/* ---- targets ---- */

static bool is_read(pgs_stmt_kind_t kind) {
  return kind == PGS_STMT_READ || kind == PGS_STMT_COPY_TO;
}

/* A plan's message, without the "pgshard: " analyze.c puts in front. */
static const char *plan_message(const pgs_plan_t *plan) {
  const char *m = plan->refuse_message;
  return strncmp(m, "pgshard: ", 9) == 0 ? m + 9 : m;
}

static void route_all(route_ctx_t *c, const pgs_plan_t *plan, const pgs_table_t *t) {
  const pgs_database_t *db = c->db;
  const char *name = t ? t->name : "?";
  const char *column = t ? t->column : "?";
  char what[192];
  if (is_read(plan->kind)) {
    snprintf(what, sizeof(what), "statement reads sharded table %s without its shard key %s", name,
             column);
    read_several(c, plan, all_shards(db), what);
  } else if (plan->kind == PGS_STMT_WRITE) {
    snprintf(what, sizeof(what),
             "write to sharded table %s without its shard key %s runs on "
             "every shard",
             name, column);
    write_several(c, all_shards(db), what);
  } else if (plan->kind == PGS_STMT_COPY_FROM) {
    refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "COPY reading sharded table %s without its shard key is not supported", name);
  } else {
    route_set(c->out, PGS_ROUTE_FANOUT, all_shards(db));
  }
}

static void route_keys(route_ctx_t *c, const pgs_plan_t *plan) {
  const pgs_database_t *db = c->db;
  uint64_t mask = 0;
  int nvalues = 0;
  for (int i = 0; i < plan->nkeys; i++)
    if (!eval_ref(c, &plan->keys[i], &mask, &nvalues)) return;
  if (c->forced >= 0 || db->nshards == 1) {
    route_one(c->out, c->forced >= 0 ? c->forced : 0);
    return;
  }
  if (mask == 0) { /* every key NULL: no row matches */
    if (is_read(plan->kind)) {
      route_set(c->out, PGS_ROUTE_ANY, all_shards(db));
      return;
    }
    const pgs_table_t *t = plan->all_table   ? plan->all_table
                           : plan->table     ? plan->table
                           : plan->nkeys > 0 ? plan->keys[0].table
                                             : NULL;
    route_all(c, plan, t);
    return;
  }
  if (!several(mask)) {
    route_one(c->out, lowest_shard(mask));
    return;
  }
  char names[128], what[192];
  shard_names(db, mask, names, sizeof(names));
  if (plan->same_shard_required) {
    refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "statement inserts rows and its keys are on shards %s; it must stay on one shard",
           names);
  } else if (is_read(plan->kind)) {
    snprintf(what, sizeof(what), "statement reads keys on shards %s", names);
    read_several(c, plan, mask, what);
  } else {
    snprintf(what, sizeof(what), "write touches keys on shards %s", names);
    write_several(c, mask, what);
  }
}

static void route_rows(route_ctx_t *c, const pgs_plan_t *plan) {
  const pgs_database_t *db = c->db;
  if (plan->nrows == 0) { /* COPY FROM: the rows come later, in CopyData */
    if (c->forced >= 0 || db->nshards == 1)
      route_one(c->out, c->forced >= 0 ? c->forced : 0);
    else /* every shard is ready for rows; the proxy sends each its own */
      route_set(c->out, PGS_ROUTE_FANOUT, all_shards(db));
    return;
  }
  uint64_t mask = 0;
  for (int i = 0; i < plan->nrows; i++) {
    const pgs_key_ref_t *ref = &plan->rows[i];
    if (ref->array) {
      refuse(c->out, PGS_SQLSTATE_INTERNAL, "row %d of the INSERT has an array key", i + 1);
      return;
    }
    uint64_t row = 0;
    int nvalues = 0;
    if (!eval_ref(c, ref, &row, &nvalues)) return;
    if (nvalues == 0) {
      refuse(c->out, "23502", "null value in shard key column \"%s\" of relation \"%s\" (row %d)",
             ref->table->column, ref->table->name, i + 1);
      return;
    }
    if (c->out->row_shard) c->out->row_shard[i] = lowest_shard(row);
    mask |= row;
  }
  if (c->forced >= 0 || db->nshards == 1) {
    route_one(c->out, c->forced >= 0 ? c->forced : 0);
  } else if (!several(mask)) {
    route_one(c->out, lowest_shard(mask));
  } else if (writes_several(db)) {
    route_set(c->out, PGS_ROUTE_SPLIT, mask);
  } else {
    char names[128], what[192];
    shard_names(db, mask, names, sizeof(names));
    snprintf(what, sizeof(what), "INSERT into %s puts rows on shards %s", plan->rows[0].table->name,
             names);
    write_several(c, mask, what);
  }
}

static void route_any(route_ctx_t *c, const pgs_plan_t *plan) {
  const pgs_database_t *db = c->db;
  if (c->forced >= 0 || db->nshards == 1) {
    route_one(c->out, c->forced >= 0 ? c->forced : 0);
  } else if (is_read(plan->kind)) {
    route_set(c->out, PGS_ROUTE_ANY, all_shards(db));
  } else if (plan->runs_code) {
    /* A function, procedure or DO block writes who knows what: on every
     * shard only when the policy lets one statement write on several. */
    write_several(c, all_shards(db),
                  "this statement runs code that may write (CALL, DO, or a function not known "
                  "read-only) and names no shard key, hint or tenant, so it would run on every "
                  "shard");
  } else {
    /* Writes, DDL, COPY into a reference table (every shard gets every
     * row). */
    route_set(c->out, PGS_ROUTE_FANOUT, all_shards(db));
  }
}

/* The shard the session's hint or tenant names (C->forced), or false. */
static bool session_shard(route_ctx_t *c, const pgs_route_session_t *session) {
  const pgs_database_t *db = c->db;
  c->forced = -1;
  if (session == NULL) return true;
  if (session->hint_shard >= 0) {
    if (session->hint_shard >= db->nshards)
      return refuse(c->out, "22023", "hinted shard %d does not exist in database %s",
                    session->hint_shard, db->name);
    c->forced = session->hint_shard;
  }
  if (session->tenant) {
    pgs_key_error_t err;
    int shard = pgs_route_tenant_shard(db, session->tenant, &err);
    if (shard < 0) return refuse_key(c->out, &err);
    if (c->forced >= 0 && shard != c->forced)
      return refuse(c->out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                    "hinted shard %s is not the session tenant's shard %s",
                    shard_name(db, c->forced), shard_name(db, shard));
    c->forced_by_tenant = c->forced < 0;
    c->forced = shard;
    c->tenant = session->tenant;
  }
  return true;
}

static void route_plan(const pgs_database_t *db, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                       const pgs_param_values_t *params, const pgs_route_session_t *session,
                       pgs_route_t *out);

/* tenant_isolation = strict, in a tenant session: only what provably
 * touches the tenant's own rows runs. Keys of other tenants are refused
 * on the way already (42501); here, what names no tenant at all. */
static void tenant_strict(const pgs_database_t *db, const pgs_plan_t *plan, pgs_route_t *out) {
  switch (plan->kind) {
  case PGS_STMT_BEGIN:
  case PGS_STMT_COMMIT:
  case PGS_STMT_ROLLBACK:
  case PGS_STMT_SESSION:
  case PGS_STMT_COPY_FROM: /* each row's key is checked as it streams */
    return;
  default:
    break;
  }
  if (plan->unkeyed_tenant)
    refuse(out, "42501",
           "tenant_isolation = strict: this statement touches tenant table %s without naming "
           "the session's tenant (%s = ...)",
           plan->unkeyed_tenant->name, plan->unkeyed_tenant->column);
  else if (plan->kind == PGS_STMT_DDL || plan->runs_code ||
           (plan->kind == PGS_STMT_OTHER && plan->nstatements > 0))
    refuse(out, "42501",
           "tenant_isolation = strict: a tenant session runs no DDL, utility statement or code "
           "that may write (database %s)",
           db->name);
}

void pgs_route_plan(const pgs_database_t *db, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                    const pgs_param_values_t *params, const pgs_route_session_t *session,
                    pgs_route_t *out) {
  route_plan(db, plan, lexed, params, session, out);
  if (out->kind != PGS_ROUTE_REFUSE && session && session->tenant && db->tenant_strict)
    tenant_strict(db, plan, out);
  /* Its rows go out as one COPY stream, or stay in one server's cursor:
   * from one shard only. */
  bool several =
      out->kind != PGS_ROUTE_ONE && out->kind != PGS_ROUTE_ANY && out->kind != PGS_ROUTE_REFUSE;
  if (plan->copy_write && several)
    refuse(out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "COPY of a data-modifying statement must touch one shard; give its shard key");
  else if (plan->cursor && several)
    refuse(out, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
           "a cursor lives on one server: DECLARE one over a single shard (give its shard key "
           "or a hint)");
}

static void route_plan(const pgs_database_t *db, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                       const pgs_param_values_t *params, const pgs_route_session_t *session,
                       pgs_route_t *out) {
  out->kind = PGS_ROUTE_REFUSE;
  out->shard = -1;
  out->shards = 0;
  out->sqlstate[0] = '\0';
  out->message[0] = '\0';
  if (plan->refuse_sqlstate[0] != '\0') {
    refuse(out, plan->refuse_sqlstate, "%s", plan_message(plan));
    return;
  }
  if (db->nshards < 1) {
    refuse(out, PGS_SQLSTATE_INTERNAL, "database %s has no shard", db->name);
    return;
  }
  if (db->nshards > PGS_ROUTE_MAX_SHARDS) {
    refuse(out, "54000", "database %s has %d shards; pgshard routes over at most %d", db->name,
           db->nshards, PGS_ROUTE_MAX_SHARDS);
    return;
  }
  switch (plan->kind) {
  case PGS_STMT_BEGIN:
  case PGS_STMT_COMMIT:
  case PGS_STMT_ROLLBACK:
  case PGS_STMT_SESSION:
    if (db->nshards == 1)
      route_one(out, 0);
    else
      route_set(out, PGS_ROUTE_ANY, all_shards(db));
    return;
  default:
    break;
  }
  route_ctx_t c = {.db = db, .lexed = lexed, .params = params, .forced = -1, .out = out};
  if (!session_shard(&c, session)) return;
  switch (plan->target) {
  case PGS_TARGET_ANY:
    route_any(&c, plan);
    return;
  case PGS_TARGET_KEYS:
    route_keys(&c, plan);
    return;
  case PGS_TARGET_ALL:
    if (c.forced >= 0 || db->nshards == 1)
      route_one(out, c.forced >= 0 ? c.forced : 0);
    else
      route_all(&c, plan, plan->all_table ? plan->all_table : plan->table);
    return;
  case PGS_TARGET_ROWS:
    route_rows(&c, plan);
    return;
  }
  refuse(out, PGS_SQLSTATE_INTERNAL, "unknown plan target %d", (int)plan->target);
}

int pgs_route_tenant_shard(const pgs_database_t *db, const pgs_key_t *tenant,
                           pgs_key_error_t *err) {
  if (db->nshards < 1) {
    snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", PGS_SQLSTATE_INTERNAL);
    snprintf(err->message, sizeof(err->message), "database %s has no shard", db->name);
    return -1;
  }
  if (tenant->type != db->shardmap.tenant_type) {
    snprintf(err->sqlstate, sizeof(err->sqlstate), "42804");
    snprintf(
        err->message, sizeof(err->message), "a %s tenant cannot route database %s (tenants are %s)",
        pgs_key_type_name(tenant->type), db->name, pgs_key_type_name(db->shardmap.tenant_type));
    return -1;
  }
  const pgs_tenant_pin_t *pin = pgs_shardmap_find_tenant(&db->shardmap, tenant);
  if (pin) return pin->shard;
  return pgs_shardmap_hash_shard(db, tenant, NULL);
}

/* ---- splitting a multi-row INSERT ---- */

static bool ident_char(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '_' || ch == '$' || ch >= 0x80;
}

/* A scanner over SQL text that knows quotes and comments. */
typedef struct scan {
  const char *s;
  size_t len;
  size_t pos;
} scan_t;

/* Past a quoted token or comment at POS, when one starts there; false when
 * there is none. An unterminated one runs to the end. */
static bool skip_quoted(scan_t *sc) {
  const char *s = sc->s;
  size_t n = sc->len, p = sc->pos;
  if (s[p] == '\'' || s[p] == '"') {
    char q = s[p++];
    while (p < n) {
      if (s[p] == q) {
        if (p + 1 < n && s[p + 1] == q) {
          p += 2;
          continue;
        }
        p++;
        break;
      }
      p++;
    }
    sc->pos = p;
    return true;
  }
  if (s[p] == '-' && p + 1 < n && s[p + 1] == '-') {
    while (p < n && s[p] != '\n' && s[p] != '\r') p++;
    sc->pos = p;
    return true;
  }
  if (s[p] == '/' && p + 1 < n && s[p + 1] == '*') {
    int depth = 1;
    p += 2;
    while (p < n && depth > 0) {
      if (s[p] == '/' && p + 1 < n && s[p + 1] == '*') {
        depth++;
        p += 2;
      } else if (s[p] == '*' && p + 1 < n && s[p + 1] == '/') {
        depth--;
        p += 2;
      } else {
        p++;
      }
    }
    sc->pos = p;
    return true;
  }
  return false;
}

/* Past blanks and comments. */
static void skip_blank(scan_t *sc) {
  while (sc->pos < sc->len) {
    unsigned char ch = (unsigned char)sc->s[sc->pos];
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v') {
      sc->pos++;
    } else if ((ch == '-' || ch == '/') && skip_quoted(sc)) {
      /* a comment */
    } else {
      break;
    }
  }
}

/* The word (identifier or keyword) ending just before P, skipping blanks:
 * its start, or P itself when none. */
static size_t word_before(const char *s, size_t p) {
  while (p > 0 && (s[p - 1] == ' ' || s[p - 1] == '\t' || s[p - 1] == '\n' || s[p - 1] == '\r'))
    p--;
  size_t end = p;
  while (p > 0 && ident_char((unsigned char)s[p - 1])) p--;
  return p < end ? p : end;
}

static bool word_eq(const char *s, size_t start, size_t end, const char *word) {
  size_t n = strlen(word);
  return end - start == n && strncasecmp(s + start, word, n) == 0;
}

/* The offset of the VALUES keyword that starts the rows: the first one at
 * parenthesis depth 0 outside quotes and comments that is followed by '('
 * and is not a name (INTO values, schema.values, AS values). SIZE_MAX when
 * none. */
static size_t find_values(const char *s, size_t n) {
  scan_t sc = {.s = s, .len = n, .pos = 0};
  int depth = 0;
  while (sc.pos < n) {
    if (skip_quoted(&sc)) continue;
    unsigned char ch = (unsigned char)s[sc.pos];
    if (ch == '(') {
      depth++;
      sc.pos++;
    } else if (ch == ')') {
      depth--;
      sc.pos++;
    } else if (ident_char(ch)) {
      size_t start = sc.pos;
      while (sc.pos < n && ident_char((unsigned char)s[sc.pos])) sc.pos++;
      if (depth != 0 || !word_eq(s, start, sc.pos, "values")) continue;
      if (start > 0 && s[start - 1] == '.') continue;
      if (sc.pos < n && s[sc.pos] == '.') continue;
      size_t prev = word_before(s, start);
      if (prev < start) {
        size_t prev_end = prev;
        while (prev_end < start && ident_char((unsigned char)s[prev_end])) prev_end++;
        if (word_eq(s, prev, prev_end, "into") || word_eq(s, prev, prev_end, "as")) continue;
      }
      scan_t after = sc;
      skip_blank(&after);
      if (after.pos < n && s[after.pos] == '(') return start;
    } else {
      sc.pos++;
    }
  }
  return SIZE_MAX;
}

/* At '(': past its matching ')', or false when it is never closed. */
static bool skip_parens(scan_t *sc) {
  int depth = 0;
  while (sc->pos < sc->len) {
    if (skip_quoted(sc)) continue;
    char ch = sc->s[sc->pos++];
    if (ch == '(') {
      depth++;
    } else if (ch == ')' && --depth == 0) {
      return true;
    }
  }
  return false;
}

pgs_status_t pgs_route_split_insert(const pgs_lexed_t *lexed, const int *row_shard, int nrows,
                                    int shard, pgs_buf_t *out) {
  const char *s = lexed->normalized;
  size_t n = lexed->normalized_len;
  if (s == NULL || nrows < 1) return PGS_EINVAL;
  size_t values = find_values(s, n);
  if (values == SIZE_MAX) return PGS_EINVAL;

  /* The rows: "(...)" separated by ',' until anything else. Only their
   * bounds are needed, so the scan runs twice rather than storing them. */
  scan_t sc = {.s = s, .len = n, .pos = values + 6};
  skip_blank(&sc);
  size_t rows_start = sc.pos, rows_end = 0;
  int found = 0;
  while (sc.pos < n && s[sc.pos] == '(') {
    if (!skip_parens(&sc)) return PGS_EINVAL;
    found++;
    rows_end = sc.pos;
    scan_t after = sc;
    skip_blank(&after);
    if (after.pos < n && s[after.pos] == ',') {
      after.pos++;
      skip_blank(&after);
      if (after.pos >= n || s[after.pos] != '(') return PGS_EINVAL;
      sc = after;
      continue;
    }
    break;
  }
  if (found == 0 || found != nrows) return PGS_EINVAL;

  size_t mark = out->len;
  int next = 0;
  bool ok = pgs_lexed_restore(lexed, 0, rows_start, &next, out, NULL);
  bool first = true;
  sc.pos = rows_start;
  for (int row = 0; row < nrows && ok; row++) {
    skip_blank(&sc);
    if (row > 0) { /* the ',' between rows */
      sc.pos++;
      skip_blank(&sc);
    }
    size_t start = sc.pos;
    if (!skip_parens(&sc)) {
      ok = false;
      break;
    }
    if (row_shard[row] != shard) continue;
    if (!first) pgs_buf_put(out, ", ", 2);
    first = false;
    ok = pgs_lexed_restore(lexed, start, sc.pos, &next, out, NULL);
  }
  if (ok && first) ok = false; /* no row of SHARD: nothing to send */
  if (ok) ok = pgs_lexed_restore(lexed, rows_end, n, &next, out, NULL);
  if (!ok) {
    out->len = mark;
    return PGS_EINVAL;
  }
  pgs_buf_put_u8(out, '\0');
  return PGS_OK;
}

/* Past a number or an identifier at POS (a '$' inside either is part of
 * it: a$1, 1$ are not parameters). */
static void skip_word(scan_t *sc) {
  while (sc->pos < sc->len && ident_char((unsigned char)sc->s[sc->pos])) sc->pos++;
}

pgs_status_t pgs_route_renumber_params(const char *sql, size_t len, int nparams, int *old_of,
                                       int *nused, pgs_buf_t *out) {
  scan_t sc = {.s = sql, .len = len, .pos = 0};
  size_t mark = out->len, at = 0;
  int *new_of = NULL; /* old number - 1 -> new number, 0 unseen */
  int used = 0;
  if (nparams > 0) new_of = pgs_xcalloc((size_t)nparams, sizeof(int));
  while (sc.pos < len) {
    if (skip_quoted(&sc)) continue;
    unsigned char ch = (unsigned char)sql[sc.pos];
    if (ch != '$') {
      if (ident_char(ch))
        skip_word(&sc);
      else
        sc.pos++;
      continue;
    }
    size_t start = sc.pos++;
    long n = 0;
    while (sc.pos < len && sql[sc.pos] >= '0' && sql[sc.pos] <= '9' && n <= nparams)
      n = n * 10 + (sql[sc.pos++] - '0');
    if (sc.pos == start + 1) continue; /* a lone '$' (an operator's) */
    if (n < 1 || n > nparams || (sc.pos < len && ident_char((unsigned char)sql[sc.pos]))) {
      free(new_of);
      out->len = mark;
      return PGS_EINVAL;
    }
    if (new_of[n - 1] == 0) {
      new_of[n - 1] = ++used;
      old_of[used - 1] = (int)n;
    }
    char number[16];
    int w = snprintf(number, sizeof(number), "$%d", new_of[n - 1]);
    pgs_buf_put(out, sql + at, start - at);
    pgs_buf_put(out, number, (size_t)w);
    at = sc.pos;
  }
  pgs_buf_put(out, sql + at, len - at);
  free(new_of);
  *nused = used;
  return PGS_OK;
}

/* ---- CommandComplete tags ---- */

/* The tags whose last word is a row count (INSERT's is "INSERT oid rows"). */
static bool tag_has_count(const char *tag) {
  static const char *const counted[] = {"INSERT", "UPDATE", "DELETE", "SELECT",
                                        "COPY",   "MERGE",  "MOVE",   "FETCH"};
  size_t word = strcspn(tag, " ");
  for (size_t i = 0; i < PGS_ARRAY_LEN(counted); i++)
    if (word == strlen(counted[i]) && strncmp(tag, counted[i], word) == 0) return true;
  return false;
}

/* Where the count of TAG starts (the last word, all digits), or NULL. */
static const char *tag_count_at(const char *tag) {
  if (!tag_has_count(tag)) return NULL;
  const char *space = strrchr(tag, ' ');
  if (space == NULL || space[1] == '\0') return NULL;
  for (const char *p = space + 1; *p; p++)
    if (*p < '0' || *p > '9') return NULL;
  return space + 1;
}

uint64_t pgs_route_tag_count(const char *tag) {
  const char *p = tag_count_at(tag);
  if (p == NULL) return 0;
  uint64_t count = 0;
  for (; *p; p++) {
    uint64_t digit = (uint64_t)(*p - '0');
    if (count > (UINT64_MAX - digit) / 10) return UINT64_MAX;
    count = count * 10 + digit;
  }
  return count;
}

void pgs_route_tag_with_count(const char *tag, uint64_t count, char *out, size_t cap) {
  if (cap == 0) return;
  const char *p = tag_count_at(tag);
  if (p == NULL) {
    snprintf(out, cap, "%s", tag);
    return;
  }
  snprintf(out, cap, "%.*s%llu", (int)(p - tag), tag, (unsigned long long)count);
}

/* ---- one key at a time (COPY rows) ---- */

int pgs_route_key_shard(const pgs_database_t *db, const pgs_table_t *table, const pgs_key_t *key,
                        const pgs_route_session_t *session, pgs_key_error_t *err) {
  pgs_route_t out = {.kind = PGS_ROUTE_ONE, .shard = -1};
  route_ctx_t c = {.db = db, .forced = -1, .out = &out};
  const pgs_key_ref_t ref = {.table = table};
  uint64_t mask = 0;
  if (db->nshards < 1 || db->nshards > PGS_ROUTE_MAX_SHARDS) {
    refuse(&out, PGS_SQLSTATE_INTERNAL, "database %s has %d shards", db->name, db->nshards);
  } else if (session_shard(&c, session) && add_key(&c, &ref, key, &mask)) {
    return lowest_shard(mask);
  }
  snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", out.sqlstate);
  snprintf(err->message, sizeof(err->message), "%s", out.message);
  return -1;
}
