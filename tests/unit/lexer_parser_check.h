/*
 * lexer_parser_check.h — pgshard's digest lexer (router/lexer.c) against
 * PostgreSQL 15's own scanner and grammar (libpg_query), on one text.
 * Shared by tests/unit/test_lexer_parser.c (generated statements, a fixed
 * seed) and tests/fuzz/fuzz_lexer_parser.c (libFuzzer).
 *
 * The router reads a statement's keys from the lexer's literals while the
 * server runs the original text; if the two read literals differently, a
 * key check can pass for a statement that does something else. The rule
 * checked, for a text without NUL bytes:
 *
 *  - pgs_lex refuses it (PGS_EINVAL) only if libpg_query cannot parse it
 *    either (the proxy forwards a text the lexer refuses unrouted, trusting
 *    the server to reject it). PGS_ETOOBIG is always allowed.
 *  - When pgs_lex accepts it and libpg_query parses it:
 *     1. the lexer's literals are exactly the scanner's SCONST, ICONST and
 *        FCONST tokens: same start, same end in the original text, string
 *        for SCONST, number otherwise. Two documented exceptions, both left
 *        verbatim in the normalised text and therefore read by the grammar
 *        itself: BCONST, XCONST, USCONST and the SCONST of N'...' (never
 *        keys), and an ICONST that is part of an ORDER BY / GROUP BY item.
 *        An ICONST that is a whole such item (ORDER BY 2, a column
 *        position) must stay verbatim: $N there would sort by a constant.
 *     2. the statement count is the scanner's (';'-separated runs of
 *        tokens other than comments), the highest $n the scanner's, and
 *        the hint the first "pgshard: shard=NAME" in the scanner's comment
 *        tokens (never one inside a literal).
 *     3. the normalised text with every literal put back
 *        (pgs_lexed_restore: values re-quoted by the lexer) parses to the
 *        same tree as the original, locations aside. This is what checks
 *        the values: a string unescaped or joined wrongly gives another
 *        A_Const.
 *     4. the scanner finds in the normalised text a PARAM token exactly at
 *        each literal's placeholder, with its number, and no other
 *        literal parameter: with 3, the parser reads the normalised text
 *        as the original with parameters in place of the literals.
 *
 * libpg_query is not quite the server here: its scanner returns "--"
 * comments as tokens, and so no longer joins 'a' -- note <newline> 'b'
 * into 'ab' as PostgreSQL does (scan.l's special_whitespace and
 * horiz_whitespace take {comment}; libpg_query's patch
 * 04_lexer_comments_as_tokens drops it). The server's reading is what
 * counts, so the scanner and the grammar are given the text with every
 * "--" comment (where the scanner found them) blanked to spaces: the same
 * offsets, and comments are blanks to the server anyway. The hint is read
 * from the comments of the text as written.
 */
#ifndef PGSHARD_TEST_LEXER_PARSER_CHECK_H
#define PGSHARD_TEST_LEXER_PARSER_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "pgshard/analyze.h"
#include "pgshard/proto.h"

/* How each integer constant of the original tree stands, by location. */
enum { LPC_OTHER, LPC_IN_SORT_ITEM, LPC_SORT_ITEM };

static bool lpc_fail(char *why, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, n, fmt, ap);
  va_end(ap);
  return false;
}

/* Walk a libpg_query tree through protobuf-c's descriptors: zero every
 * location (they differ between the original and the restored text), and
 * when MARK is not NULL record at MARK[location] how each integer A_Const
 * stands: a whole ORDER BY / GROUP BY item, inside one, or neither. A
 * subquery starts afresh. Trees are depth-checked before they are
 * unpacked, so the recursion is bounded. */
static void lpc_walk(ProtobufCMessage *m, int ctx, uint8_t *mark, size_t len) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (d == &pg_query__select_stmt__descriptor) {
    ctx = LPC_OTHER;
  } else if (d == &pg_query__a__const__descriptor) {
    const PgQuery__AConst *c = (const PgQuery__AConst *)m;
    if (mark && ctx != LPC_OTHER && c->val_case == PG_QUERY__A__CONST__VAL_IVAL &&
        c->location >= 0 && (size_t)c->location < len)
      mark[c->location] = (uint8_t)ctx;
  } else if (d != &pg_query__node__descriptor && ctx == LPC_SORT_ITEM) {
    ctx = LPC_IN_SORT_ITEM; /* an expression: what is under it is part of the item */
  }
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    char *at = (char *)m + f->offset;
    if (f->type == PROTOBUF_C_TYPE_INT32 && f->label != PROTOBUF_C_LABEL_REPEATED &&
        (!strcmp(f->name, "location") || !strcmp(f->name, "stmt_location") ||
         !strcmp(f->name, "stmt_len"))) {
      *(int32_t *)at = 0;
      continue;
    }
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id)
      continue;
    int child = ctx;
    if ((d == &pg_query__sort_by__descriptor && !strcmp(f->name, "node")) ||
        (d == &pg_query__select_stmt__descriptor && !strcmp(f->name, "group_clause")))
      child = LPC_SORT_ITEM;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
      ProtobufCMessage **items = *(ProtobufCMessage ***)at;
      for (size_t k = 0; k < n; k++)
        if (items[k]) lpc_walk(items[k], child, mark, len);
    } else if (*(ProtobufCMessage **)at) {
      lpc_walk(*(ProtobufCMessage **)at, child, mark, len);
    }
  }
}

/* SQL's parse tree, locations zeroed and packed again (malloc'ed, *N
 * bytes), with MARK filled as lpc_walk says; NULL when libpg_query rejects
 * it or the tree is too deep to unpack safely. */
static uint8_t *lpc_tree(const char *sql, size_t *n, uint8_t *mark, size_t len) {
  PgQueryProtobufParseResult r = pg_query_parse_protobuf(sql);
  uint8_t *packed = NULL;
  if (!r.error && pgs_analyze_tree_depth_ok((const uint8_t *)r.parse_tree.data, r.parse_tree.len,
                                            PGS_ANALYZE_MAX_DEPTH)) {
    PgQuery__ParseResult *tree =
        pg_query__parse_result__unpack(NULL, r.parse_tree.len, (const uint8_t *)r.parse_tree.data);
    if (tree) {
      lpc_walk(&tree->base, LPC_OTHER, mark, len);
      *n = pg_query__parse_result__get_packed_size(tree);
      packed = malloc(*n + 1);
      pg_query__parse_result__pack(tree, packed);
      pg_query__parse_result__free_unpacked(tree, NULL);
    }
  }
  pg_query_free_protobuf_parse_result(r);
  return packed;
}

/* The hint in one comment body, as DESIGN.md states it: "pgshard" ":"
 * "shard" "=" NAME, blanks (space, tab) around ':' and '=', keywords in any
 * case, NAME of [A-Za-z0-9_.-], at most 63 kept. Written apart from the
 * lexer's on purpose. */
static bool lpc_hint(const char *s, size_t n, char *name, size_t cap) {
  for (size_t i = 0; i + 7 <= n; i++) {
    if (strncasecmp(s + i, "pgshard", 7) != 0) continue;
    size_t j = i + 7;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    if (j >= n || s[j++] != ':') continue;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    if (n - j < 5 || strncasecmp(s + j, "shard", 5) != 0) continue;
    j += 5;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    if (j >= n || s[j++] != '=') continue;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    size_t k = 0;
    while (j + k < n && s[j + k] != '\0' &&
           strchr("abcdefghijklmnopqrstuvwxyz"
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
                  s[j + k]))
      k++;
    if (k == 0) continue;
    if (k > cap - 1) k = cap - 1;
    memcpy(name, s + j, k);
    name[k] = '\0';
    return true;
  }
  return false;
}

static const char *lpc_token_name(int token) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&pg_query__token__descriptor, token);
  return v ? v->name : "?";
}

static PgQuery__ScanResult *lpc_scan(const char *sql) {
  PgQueryScanResult r = pg_query_scan(sql);
  PgQuery__ScanResult *sr = NULL;
  if (!r.error) sr = pg_query__scan_result__unpack(NULL, r.pbuf.len, (const uint8_t *)r.pbuf.data);
  pg_query_free_scan_result(r);
  return sr;
}

/* Rule 1 and 2 against the scanner's tokens of BLANKED (the text with its
 * "--" comments blanked); HINT is the one in the text's comments. */
static bool lpc_compare_tokens(const char *blanked, const char *hint, const pgs_lexed_t *lexed,
                               const uint8_t *mark, char *why, size_t whylen) {
  const char *sql = blanked;
  PgQuery__ScanResult *sr = lpc_scan(sql);
  if (sr == NULL) return lpc_fail(why, whylen, "libpg_query parses the text but cannot scan it");
  bool ok = true;
  int li = 0, statements = 0, nparams = 0;
  bool open = false;
  for (size_t i = 0; i < sr->n_tokens && ok; i++) {
    const PgQuery__ScanToken *t = sr->tokens[i];
    int tok = t->token;
    if (tok == PG_QUERY__TOKEN__SQL_COMMENT || tok == PG_QUERY__TOKEN__C_COMMENT) continue;
    if (tok == PG_QUERY__TOKEN__ASCII_59) {
      statements += open;
      open = false;
      continue;
    }
    open = true;
    if (tok == PG_QUERY__TOKEN__PARAM) {
      int p = atoi(sql + t->start + 1);
      if (p > nparams) nparams = p;
      continue;
    }
    bool number = tok == PG_QUERY__TOKEN__ICONST || tok == PG_QUERY__TOKEN__FCONST;
    if (!number && tok != PG_QUERY__TOKEN__SCONST) continue;
    /* N'...' scans as NCHAR (the N alone) and an SCONST: kept verbatim. */
    const PgQuery__ScanToken *prev = i > 0 ? sr->tokens[i - 1] : NULL;
    if (tok == PG_QUERY__TOKEN__SCONST && prev && prev->token == PG_QUERY__TOKEN__NCHAR &&
        prev->end == t->start && prev->end - prev->start == 1)
      continue;
    const pgs_literal_t *lit = li < lexed->nliterals ? &lexed->literals[li] : NULL;
    if (lit && lit->start < (uint32_t)t->start) {
      ok = lpc_fail(why, whylen, "lexer literal [%u,%u) \"%.*s\" is no constant to the scanner",
                    lit->start, lit->end, (int)(lit->end - lit->start), sql + lit->start);
    } else if (lit && lit->start == (uint32_t)t->start) {
      if (lit->end != (uint32_t)t->end || lit->is_string == number)
        ok = lpc_fail(why, whylen, "lexer literal [%u,%u) %s, scanner %s [%d,%d) \"%.*s\"",
                      lit->start, lit->end, lit->is_string ? "string" : "number",
                      lpc_token_name(tok), t->start, t->end, t->end - t->start, sql + t->start);
      else if (tok == PG_QUERY__TOKEN__ICONST && mark[t->start] == LPC_SORT_ITEM)
        ok = lpc_fail(why, whylen, "ORDER BY / GROUP BY position %.*s became a parameter",
                      t->end - t->start, sql + t->start);
      li++;
    } else if (!(tok == PG_QUERY__TOKEN__ICONST && mark[t->start] != LPC_OTHER)) {
      ok = lpc_fail(why, whylen, "scanner %s [%d,%d) \"%.*s\" is no lexer literal",
                    lpc_token_name(tok), t->start, t->end, t->end - t->start, sql + t->start);
    }
  }
  statements += open;
  if (ok && li < lexed->nliterals) {
    const pgs_literal_t *lit = &lexed->literals[li];
    ok = lpc_fail(why, whylen, "lexer literal [%u,%u) \"%.*s\" is no constant to the scanner",
                  lit->start, lit->end, (int)(lit->end - lit->start), sql + lit->start);
  }
  if (ok && statements != lexed->nstatements)
    ok = lpc_fail(why, whylen, "%d statements to the scanner, %d to the lexer", statements,
                  lexed->nstatements);
  if (ok && nparams != lexed->nparams)
    ok = lpc_fail(why, whylen, "highest $n %d to the scanner, %d to the lexer", nparams,
                  lexed->nparams);
  if (ok && strcmp(hint, lexed->hint_shard) != 0)
    ok = lpc_fail(why, whylen, "hint \"%s\" in the scanner's comments, \"%s\" from the lexer", hint,
                  lexed->hint_shard);
  pg_query__scan_result__free_unpacked(sr, NULL);
  return ok;
}

/* Rule 4: the literals' placeholders, as the scanner reads LEXED->normalized. */
static bool lpc_check_placeholders(const pgs_lexed_t *lexed, char *why, size_t whylen) {
  PgQuery__ScanResult *sr = lpc_scan(lexed->normalized);
  if (sr == NULL) return lpc_fail(why, whylen, "the normalised text does not scan");
  bool ok = true;
  int li = 0;
  for (size_t i = 0; i < sr->n_tokens && ok; i++) {
    const PgQuery__ScanToken *t = sr->tokens[i];
    if (t->token != PG_QUERY__TOKEN__PARAM) continue;
    int p = atoi(lexed->normalized + t->start + 1);
    if (p <= lexed->nparams) continue;
    if (li >= lexed->nliterals || p != lexed->nparams + 1 + li ||
        (uint32_t)t->start != lexed->literals[li].placeholder)
      ok = lpc_fail(why, whylen, "parameter $%d at %d of the normalised text is not literal %d's",
                    p, t->start, li);
    li++;
  }
  if (ok && li != lexed->nliterals)
    ok = lpc_fail(why, whylen, "%d literal parameters in the normalised text, %d literals", li,
                  lexed->nliterals);
  pg_query__scan_result__free_unpacked(sr, NULL);
  return ok;
}

/* The whole rule on SQL (LEN bytes, NUL-terminated, no NUL inside), with LEXED
 * as the lexer's state (reused). true when it holds; otherwise false and a
 * reason in WHY. *COMPARED (when not NULL) tells whether both read the
 * text, so that their readings were compared. */
static bool lpc_check(const char *sql, size_t len, pgs_lexed_t *lexed, char *why, size_t whylen,
                      bool *compared) {
  why[0] = '\0';
  if (compared) *compared = false;
  pgs_status_t st = pgs_lex(sql, len, lexed);
  if (st == PGS_ETOOBIG) return true;

  /* The comments, as both libpg_query and the server see them: the hint,
   * and the text with "--" comments blanked. A text that does not scan
   * does not parse either. */
  PgQuery__ScanResult *sr = lpc_scan(sql);
  if (sr == NULL) return true;
  char *blanked = malloc(len + 1);
  memcpy(blanked, sql, len + 1);
  char hint[64] = "";
  for (size_t i = 0; i < sr->n_tokens; i++) {
    const PgQuery__ScanToken *t = sr->tokens[i];
    bool line = t->token == PG_QUERY__TOKEN__SQL_COMMENT;
    if (!line && t->token != PG_QUERY__TOKEN__C_COMMENT) continue;
    size_t body = (size_t)t->start + 2, end = (size_t)t->end - (line ? 0 : 2);
    if (hint[0] == '\0' && end > body) lpc_hint(sql + body, end - body, hint, sizeof(hint));
    if (line) memset(blanked + t->start, ' ', (size_t)(t->end - t->start));
  }
  pg_query__scan_result__free_unpacked(sr, NULL);

  uint8_t *mark = calloc(len + 1, 1);
  size_t orig_len = 0;
  uint8_t *orig = lpc_tree(blanked, &orig_len, mark, len);
  bool ok = true;
  if (st != PGS_OK) {
    /* A deep tree can fail to unpack; parse failures are what matter. */
    if (orig) ok = lpc_fail(why, whylen, "pgs_lex refuses (%d) a text PostgreSQL parses", st);
  } else if (orig && lexed->chain <= PGS_ANALYZE_MAX_CHAIN) {
    if (compared) *compared = true;
    ok = lpc_compare_tokens(blanked, hint, lexed, mark, why, whylen) &&
         lpc_check_placeholders(lexed, why, whylen);
    if (ok) {
      pgs_buf_t b;
      pgs_buf_init(&b);
      int next = 0;
      if (!pgs_lexed_restore(lexed, 0, lexed->normalized_len, &next, &b, NULL)) {
        ok = lpc_fail(why, whylen, "the normalised text does not restore");
      } else {
        pgs_buf_put_u8(&b, '\0');
        size_t back_len = 0;
        uint8_t *back = lpc_tree((const char *)b.data, &back_len, NULL, 0);
        if (back == NULL)
          ok = lpc_fail(why, whylen, "restored text does not parse: %s", (const char *)b.data);
        else if (back_len != orig_len || memcmp(back, orig, orig_len) != 0)
          ok = lpc_fail(why, whylen, "restored text parses to another tree: %s",
                        (const char *)b.data);
        free(back);
      }
      pgs_buf_free(&b);
    }
  }
  free(orig);
  free(mark);
  free(blanked);
  return ok;
}

#endif
