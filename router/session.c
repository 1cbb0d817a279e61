/*
 * session.c — classify statements by their effect on session state. See
 * session.h for why; the rules follow PostgreSQL's own definitions (what
 * DISCARD ALL resets, which objects are session-scoped).
 */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "pgshard/analyze.h"
#include "pgshard/session.h"

const char *pgs_session_skip_space(const char *p, const char *end) {
  while (p < end) {
    if (isspace((unsigned char)*p)) {
      p++;
    } else if (p + 1 < end && p[0] == '-' && p[1] == '-') {
      while (p < end && *p != '\n') p++;
    } else if (p + 1 < end && p[0] == '/' && p[1] == '*') {
      int depth = 0;
      do {
        if (p + 1 < end && p[0] == '/' && p[1] == '*') {
          depth++;
          p += 2;
        } else if (p + 1 < end && p[0] == '*' && p[1] == '/') {
          depth--;
          p += 2;
        } else {
          p++;
        }
      } while (p < end && depth > 0);
    } else {
      break;
    }
  }
  return p;
}

static const char *skip_space(const char *p, const char *end) {
  return pgs_session_skip_space(p, end);
}

/* Whether HAY holds NEEDLE (lower case) in any case. On the hot path (every
 * Query's first look), so a cheap test of the first byte comes first. */
static bool has_ci(const char *hay, size_t len, const char *needle) {
  size_t n = strlen(needle);
  unsigned char first = (unsigned char)needle[0];
  for (size_t i = 0; i + n <= len; i++)
    if (((unsigned char)hay[i] | 0x20) == first && strncasecmp(hay + i, needle, n) == 0)
      return true;
  return false;
}

/* Whether SQL calls set_config: looked for at each '_' (rare in SQL next
 * to "set" and "config"). */
static bool mentions_set_config(const char *sql, size_t len) {
  for (const char *u = memchr(sql, '_', len); u;
       u = memchr(u + 1, '_', len - (size_t)(u + 1 - sql))) {
    size_t at = (size_t)(u - sql);
    if (at >= 3 && len - at > 6 && strncasecmp(u - 3, "set", 3) == 0 &&
        strncasecmp(u + 1, "config", 6) == 0)
      return true;
  }
  return false;
}

bool pgs_session_maybe(const char *sql, size_t len) {
  static const char *const first_words[] = {"set",    "reset",   "discard",  "deallocate",
                                            "listen", "prepare", "declare",  "create",
                                            "load",   "do",      "unlisten", NULL};
  const char *end = sql + len;
  const char *p = skip_space(sql, end);
  const char *w = p;
  while (p < end && isalpha((unsigned char)*p)) p++;
  size_t wlen = (size_t)(p - w);
  for (int i = 0; first_words[i]; i++)
    if (wlen == strlen(first_words[i]) && strncasecmp(w, first_words[i], wlen) == 0) return true;
  /* SELECT ... INTO TEMP creates a temporary table without saying CREATE. */
  bool select = (wlen == 6 && strncasecmp(w, "select", 6) == 0) ||
                (wlen == 4 && strncasecmp(w, "with", 4) == 0) || wlen == 0 /* "(" */;
  if (select && has_ci(sql, len, "temp") && has_ci(sql, len, "into")) return true;
  /* A later statement in a multi-statement query, or a session advisory lock
   * inside any statement (function names are case-insensitive, so the quick
   * look for the 'y' of "advisory" takes either case). */
  const char *semi = memchr(p, ';', (size_t)(end - p));
  if (semi && skip_space(semi + 1, end) < end && *skip_space(semi + 1, end) != '\0') return true;
  /* set_config() may change any setting behind pgshard's back. */
  if (mentions_set_config(sql, len)) return true;
  return (memchr(sql, 'y', len) || memchr(sql, 'Y', len)) && has_ci(sql, len, "advisory");
}

/* ---- a token scanner, enough to read set_config()'s arguments ---- */

typedef enum { TOK_END, TOK_WORD, TOK_STRING, TOK_QUOTED, TOK_PUNCT } tok_kind_t;

typedef struct token {
  tok_kind_t kind;
  const char *text; /* a word, a punctuation character, or what is between quotes */
  size_t len;
} token_t;

static bool word_char(char c) {
  return isalnum((unsigned char)c) || c == '_' || c == '$' || (unsigned char)c >= 0x80;
}

/* The end of a quoted run that opened just before P with QUOTE; a doubled
 * quote stays inside, and so does a backslashed one when ESCAPES. */
static const char *quoted_end(const char *p, const char *end, char quote, bool escapes) {
  while (p < end) {
    if (escapes && *p == '\\' && p + 1 < end) {
      p += 2;
    } else if (*p == quote && p + 1 < end && p[1] == quote) {
      p += 2;
    } else if (*p == quote) {
      return p;
    } else {
      p++;
    }
  }
  return end;
}

/* The next token at *PP, skipping blanks and comments. Unterminated quotes
 * run to the end (the server refuses those anyway). */
static token_t next_token(const char **pp, const char *end) {
  const char *p = skip_space(*pp, end);
  token_t t = {TOK_END, p, 0};
  if (p >= end) {
    *pp = p;
    return t;
  }
  if (*p == '\'' || *p == '"') {
    const char *close = quoted_end(p + 1, end, *p, false);
    t.kind = *p == '"' ? TOK_QUOTED : TOK_STRING;
    t.text = p + 1;
    t.len = (size_t)(close - (p + 1));
    *pp = close < end ? close + 1 : end;
    return t;
  }
  if (*p == '$' && p + 1 < end && !isdigit((unsigned char)p[1])) {
    /* A dollar quote: $tag$ ... $tag$. */
    const char *q = p + 1;
    while (q < end && *q != '$' && (isalnum((unsigned char)*q) || *q == '_')) q++;
    if (q < end && *q == '$') {
      size_t tag = (size_t)(q + 1 - p);
      const char *close = memmem(q + 1, (size_t)(end - (q + 1)), p, tag);
      t.kind = TOK_STRING;
      t.text = q + 1;
      t.len = (size_t)((close ? close : end) - (q + 1));
      *pp = close ? close + tag : end;
      return t;
    }
  }
  if (word_char(*p)) {
    const char *q = p;
    while (q < end && word_char(*q)) q++;
    if (q - p == 1 && (*p == 'e' || *p == 'E') && q < end && *q == '\'') {
      /* E'...': backslash escapes. */
      const char *close = quoted_end(q + 1, end, '\'', true);
      t.kind = TOK_STRING;
      t.text = q + 1;
      t.len = (size_t)(close - (q + 1));
      *pp = close < end ? close + 1 : end;
      return t;
    }
    t.kind = TOK_WORD;
    t.len = (size_t)(q - p);
    *pp = q;
    return t;
  }
  t.kind = TOK_PUNCT;
  t.len = 1;
  *pp = p + 1;
  return t;
}

static bool token_is(const token_t *t, const char *word) {
  return t->len == strlen(word) && strncasecmp(t->text, word, t->len) == 0;
}

/* Whether the argument list after "set_config" (at *PP) ends with a third
 * argument that is the constant true: the change ends with the transaction.
 * Anything else (a variable, an expression, false) is not provably local. */
static bool set_config_is_local(const char **pp, const char *end) {
  static const char *const truths[] = {"true", "t", "on", "yes", "1", NULL};
  token_t t = next_token(pp, end);
  if (t.kind != TOK_PUNCT || t.text[0] != '(') return false;
  int depth = 1, arg = 0, third_tokens = 0;
  bool third_true = false;
  while (depth > 0) {
    t = next_token(pp, end);
    if (t.kind == TOK_END) return false;
    if (t.kind == TOK_PUNCT && (t.text[0] == '(' || t.text[0] == '['))
      depth++;
    else if (t.kind == TOK_PUNCT && (t.text[0] == ')' || t.text[0] == ']'))
      depth--;
    if (depth == 0) break;
    if (depth == 1 && t.kind == TOK_PUNCT && t.text[0] == ',') {
      arg++;
      continue;
    }
    if (arg != 2) continue;
    third_tokens++;
    third_true = false;
    if (t.kind == TOK_WORD && token_is(&t, "true")) third_true = true;
    for (int i = 0; t.kind == TOK_STRING && truths[i]; i++) third_true |= token_is(&t, truths[i]);
  }
  return arg == 2 && third_tokens == 1 && third_true;
}

/* Whether TEXT calls set_config() other than for the current transaction.
 * Names inside strings and comments are not calls; one inside a function
 * body runs when the function does, which no statement analysis can see. */
static bool calls_session_set_config(const char *text, size_t len) {
  const char *p = text, *end = text + len;
  for (;;) {
    token_t t = next_token(&p, end);
    if (t.kind == TOK_END) return false;
    bool named = (t.kind == TOK_WORD && token_is(&t, "set_config")) ||
                 (t.kind == TOK_QUOTED && t.len == 10 && !memcmp(t.text, "set_config", 10));
    if (named && !set_config_is_local(&p, end)) return true;
  }
}

bool pgs_session_is_role(const char *name) {
  return !strcasecmp(name, "role") || !strcasecmp(name, "session_authorization");
}

/* Session-level advisory lock functions: pg_[try_]advisory_lock[_shared],
 * not the _xact_ ones that end with the transaction. */
static bool uses_session_advisory_lock(const char *sql, size_t len) {
  static const char *const prefixes[] = {"pg_advisory_lock", "pg_try_advisory_lock", NULL};
  for (int i = 0; prefixes[i]; i++)
    if (has_ci(sql, len, prefixes[i])) return true;
  return false;
}

/* A temporary object pins the client, and its server is not reused. */
#define TEMP_OBJECT (PGS_SESSION_PIN | PGS_SESSION_TEMP)

static bool is_temp(const PgQuery__RangeVar *rel) {
  return rel && rel->relpersistence && rel->relpersistence[0] == 't';
}

static pgs_set_op_t *add_op(pgs_session_effects_t *out, pgs_set_op_kind_t kind, const char *name) {
  if (out->nops == PGS_SESSION_MAX_OPS) return NULL;
  pgs_set_op_t *op = &out->ops[out->nops++];
  memset(op, 0, sizeof(*op));
  op->kind = kind;
  if (name) {
    snprintf(op->name, sizeof(op->name), "%s", name);
    for (char *c = op->name; *c; c++) *c = (char)tolower((unsigned char)*c);
  }
  return op;
}

/* LISTEN or UNLISTEN of CHANNEL (NULL: *): the name as the parser left it,
 * folded and cut to NAMEDATALEN - 1 bytes as PostgreSQL does (quoted names
 * keep their case). */
static void add_channel_op(pgs_session_effects_t *out, pgs_set_op_kind_t kind,
                           const char *channel) {
  pgs_set_op_t *op = add_op(out, kind, NULL);
  if (op == NULL) {
    out->flags |= PGS_SESSION_PIN;
    return;
  }
  if (channel == NULL) return;
  size_t n = strlen(channel);
  if (n >= sizeof(op->name)) {
    n = sizeof(op->name) - 1;
    while (n > 0 && ((unsigned char)channel[n] & 0xC0) == 0x80) n--; /* whole characters */
  }
  memcpy(op->name, channel, n);
  op->name[n] = '\0';
}

/* The statement to keep for replay. Replay joins statements with ';', so one
 * whose last line holds "--" (a comment, or harmlessly a string) gets its
 * line ended: otherwise the comment would swallow whatever follows. */
static char *replay_text(const char *text, size_t len) {
  const char *nl = memrchr(text, '\n', len);
  const char *line = nl ? nl + 1 : text;
  size_t line_len = len - (size_t)(line - text);
  if (memmem(line, line_len, "--", 2) == NULL) return pgs_xstrndup(text, len);
  char *sql = pgs_xmalloc(len + 2);
  memcpy(sql, text, len);
  sql[len] = '\n';
  sql[len + 1] = '\0';
  return sql;
}

/* The text of a SET's single constant argument, if it has one. */
static void set_op_value(pgs_set_op_t *op, const PgQuery__VariableSetStmt *vs) {
  if (vs->kind != PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE || vs->n_args != 1 ||
      vs->args[0]->node_case != PG_QUERY__NODE__NODE_A_CONST)
    return;
  const PgQuery__AConst *c = vs->args[0]->a_const;
  switch (c->val_case) {
  case PG_QUERY__A__CONST__VAL_SVAL:
    snprintf(op->value, sizeof(op->value), "%s", c->sval->sval);
    break;
  case PG_QUERY__A__CONST__VAL_IVAL:
    snprintf(op->value, sizeof(op->value), "%d", (int)c->ival->ival);
    break;
  case PG_QUERY__A__CONST__VAL_FVAL:
    snprintf(op->value, sizeof(op->value), "%s", c->fval->fval);
    break;
  default:
    return;
  }
  op->has_value = true;
}

bool pgs_session_bool_on(const char *v) {
  static const char *const on[] = {"on", "true", "yes", "1", "t", "tr", "tru", "y", "ye", NULL};
  for (int i = 0; on[i]; i++)
    if (!strcasecmp(v, on[i])) return true;
  return false;
}

/* SET [LOCAL] standard_conforming_strings to anything but on: flagged
 * whatever else is tracked (a SET LOCAL is not), since the proxy must know
 * before the statement runs (PGS_SESSION_STRINGS_OFF). RESET and DEFAULT
 * return to the value the session started with. */
static void check_standard_strings(const PgQuery__VariableSetStmt *vs, pgs_session_effects_t *out) {
  if (vs->name == NULL || strcasecmp(vs->name, "standard_conforming_strings") != 0) return;
  if (vs->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_DEFAULT ||
      vs->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET)
    return;
  pgs_set_op_t probe;
  memset(&probe, 0, sizeof(probe));
  if (vs->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE) set_op_value(&probe, vs);
  if (!(probe.has_value && pgs_session_bool_on(probe.value))) out->flags |= PGS_SESSION_STRINGS_OFF;
}

static void analyze_variable_set(const PgQuery__VariableSetStmt *vs, const char *text, size_t len,
                                 pgs_session_effects_t *out) {
  pgs_set_op_t *op;
  check_standard_strings(vs, out);
  switch (vs->kind) {
  case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE:
  case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_DEFAULT:
  case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_CURRENT:
  case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_MULTI:
    /* SET LOCAL and SET TRANSACTION end with the transaction. */
    if ((vs->is_local && strncasecmp(vs->name, "pgshard.", 8) != 0) ||
        !strcasecmp(vs->name, "TRANSACTION"))
      return;
    op = add_op(out, PGS_SET_OP_SET, vs->name);
    if (op == NULL) {
      out->flags |= PGS_SESSION_PIN; /* too many to track: keep the server */
      return;
    }
    op->sql = replay_text(text, len);
    set_op_value(op, vs);
    /* RESET ALL (replay's first word) leaves role and session
     * authorization: only the client's own server may have them. */
    if (pgs_session_is_role(op->name)) out->flags |= PGS_SESSION_PIN;
    return;
  case PG_QUERY__VARIABLE_SET_KIND__VAR_RESET:
    /* RESET ROLE, RESET SESSION AUTHORIZATION: pinned like the SETs, so
     * that the client's servers agree on what it reset. */
    op = add_op(out, PGS_SET_OP_RESET, vs->name);
    if (op == NULL || pgs_session_is_role(op->name)) out->flags |= PGS_SESSION_PIN;
    return;
  case PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL:
    if (add_op(out, PGS_SET_OP_RESET_ALL, NULL) == NULL) out->flags |= PGS_SESSION_PIN;
    return;
  default:
    return;
  }
}

static void analyze_stmt(const PgQuery__Node *node, const char *text, size_t len,
                         pgs_session_effects_t *out) {
  if (node == NULL) return;
  switch (node->node_case) {
  case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
    analyze_variable_set(node->variable_set_stmt, text, len, out);
    break;
  case PG_QUERY__NODE__NODE_DISCARD_STMT:
    if (node->discard_stmt->target == PG_QUERY__DISCARD_MODE__DISCARD_ALL) {
      /* DISCARD ALL is RESET ALL plus SET SESSION AUTHORIZATION DEFAULT
       * (which drops the role too), among others. */
      if (add_op(out, PGS_SET_OP_RESET_ALL, NULL) == NULL ||
          add_op(out, PGS_SET_OP_RESET, "session_authorization") == NULL)
        out->flags |= PGS_SESSION_PIN;
      add_channel_op(out, PGS_SET_OP_UNLISTEN_ALL, NULL); /* and UNLISTEN * */
      out->flags |= PGS_SESSION_DROPS_PREPARED;
    }
    break;
  case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
    if (node->deallocate_stmt->name == NULL || node->deallocate_stmt->name[0] == '\0')
      out->flags |= PGS_SESSION_DROPS_PREPARED;
    else
      snprintf(out->deallocate, sizeof(out->deallocate), "%s", node->deallocate_stmt->name);
    break;
  case PG_QUERY__NODE__NODE_LISTEN_STMT:
    /* Pins in session pooling; transaction pooling takes its op instead. */
    add_channel_op(out, PGS_SET_OP_LISTEN, node->listen_stmt->conditionname);
    out->flags |= PGS_SESSION_PIN;
    break;
  case PG_QUERY__NODE__NODE_UNLISTEN_STMT: {
    const char *channel = node->unlisten_stmt->conditionname; /* "" (protobuf's NULL): * */
    bool all = channel == NULL || channel[0] == '\0';
    add_channel_op(out, all ? PGS_SET_OP_UNLISTEN_ALL : PGS_SET_OP_UNLISTEN, all ? NULL : channel);
    break;
  }
  case PG_QUERY__NODE__NODE_PREPARE_STMT:
  case PG_QUERY__NODE__NODE_LOAD_STMT:
  case PG_QUERY__NODE__NODE_DO_STMT: /* its body may SET anything */
    out->flags |= PGS_SESSION_PIN;
    break;
  case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
    if (node->declare_cursor_stmt->options & 0x0020 /* CURSOR_OPT_HOLD */)
      out->flags |= PGS_SESSION_PIN;
    break;
  case PG_QUERY__NODE__NODE_CREATE_STMT:
    if (is_temp(node->create_stmt->relation)) out->flags |= TEMP_OBJECT;
    break;
  case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT:
    if (node->create_table_as_stmt->into && is_temp(node->create_table_as_stmt->into->rel))
      out->flags |= TEMP_OBJECT;
    break;
  case PG_QUERY__NODE__NODE_CREATE_SEQ_STMT:
    if (is_temp(node->create_seq_stmt->sequence)) out->flags |= TEMP_OBJECT;
    break;
  case PG_QUERY__NODE__NODE_VIEW_STMT:
    if (is_temp(node->view_stmt->view)) out->flags |= TEMP_OBJECT;
    break;
  case PG_QUERY__NODE__NODE_SELECT_STMT: {
    /* SELECT ... INTO TEMP t; in a UNION the INTO sits on the leftmost arm. */
    const PgQuery__SelectStmt *select = node->select_stmt;
    while (select->op != PG_QUERY__SET_OPERATION__SETOP_NONE && select->larg) select = select->larg;
    if (select->into_clause && is_temp(select->into_clause->rel)) out->flags |= TEMP_OBJECT;
    break;
  }
  default:
    break;
  }
  if (uses_session_advisory_lock(text, len)) out->flags |= PGS_SESSION_PIN;
  if (has_ci(text, len, "set_config") && calls_session_set_config(text, len))
    out->flags |= PGS_SESSION_PIN;
}

/* A statement too deep to parse safely: libpg_query's parser and
 * protobuf-c's unpack both recurse per tree level, and a left-deep chain of
 * operators is not bounded by the grammar. Such a statement is not analysed;
 * the client keeps its server, which is always safe. */
typedef enum { PARSE_OK, PARSE_TOO_DEEP, PARSE_INVALID } parse_check_t;

static parse_check_t check_before_parse(const char *sql) {
  pgs_lexed_t lexed;
  pgs_lex_init(&lexed);
  pgs_status_t st = pgs_lex(sql, strlen(sql), &lexed);
  int chain = lexed.chain;
  pgs_lex_free(&lexed);
  /* Unterminated quotes or comments: the server refuses it, nothing happens.
   * Too many literals: the lexer stopped counting, so assume the worst. */
  if (st == PGS_EINVAL) return PARSE_INVALID;
  if (st != PGS_OK || chain > PGS_ANALYZE_MAX_CHAIN) return PARSE_TOO_DEEP;
  return PARSE_OK;
}

void pgs_session_analyze(const char *sql, pgs_session_effects_t *out) {
  memset(out, 0, sizeof(*out));
  switch (check_before_parse(sql)) {
  case PARSE_INVALID:
    out->parse_failed = true;
    return;
  case PARSE_TOO_DEEP:
    out->parse_failed = true;
    out->flags |= PGS_SESSION_PIN;
    return;
  case PARSE_OK:
    break;
  }
  PgQueryProtobufParseResult result = pg_query_parse_protobuf(sql);
  if (result.error) {
    out->parse_failed = true;
    pg_query_free_protobuf_parse_result(result);
    return;
  }
  if (!pgs_analyze_tree_depth_ok((const uint8_t *)result.parse_tree.data, result.parse_tree.len,
                                 PGS_ANALYZE_MAX_DEPTH)) {
    out->parse_failed = true;
    out->flags |= PGS_SESSION_PIN;
    pg_query_free_protobuf_parse_result(result);
    return;
  }
  PgQuery__ParseResult *tree = pg_query__parse_result__unpack(
      NULL, result.parse_tree.len, (const uint8_t *)result.parse_tree.data);
  if (tree == NULL) {
    out->parse_failed = true;
    pg_query_free_protobuf_parse_result(result);
    return;
  }
  size_t sql_len = strlen(sql);
  for (size_t i = 0; i < tree->n_stmts; i++) {
    const PgQuery__RawStmt *raw = tree->stmts[i];
    size_t start = (size_t)raw->stmt_location;
    size_t len = raw->stmt_len ? (size_t)raw->stmt_len : sql_len - start;
    if (start > sql_len || len > sql_len - start) continue;
    /* A later statement starts right after the previous ';', and the last
     * one runs to the end of the string: drop the blanks and comments around
     * it so that the text kept for replay is the statement alone. */
    const char *text = skip_space(sql + start, sql + start + len);
    len -= (size_t)(text - (sql + start));
    while (len > 0 && isspace((unsigned char)text[len - 1])) len--;
    analyze_stmt(raw->stmt, text, len, out);
  }
  if (tree->n_stmts != 1) out->deallocate[0] = '\0'; /* one statement of its own only */
  out->nstatements = (int)tree->n_stmts;
  pg_query__parse_result__free_unpacked(tree, NULL);
  pg_query_free_protobuf_parse_result(result);
}

void pgs_session_effects_free(pgs_session_effects_t *out) {
  for (int i = 0; i < out->nops; i++) free(out->ops[i].sql);
  out->nops = 0;
}
