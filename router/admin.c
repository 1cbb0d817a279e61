/*
 * admin.c — reading the admin console's statements (admin.h). A statement
 * is a sequence of words; the first one or two decide the command, the
 * rest are its argument. Only EXPLAIN ROUTE keeps raw text (the statement
 * to explain, handed to the lexer as it is).
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgshard/admin.h"

typedef struct cursor {
  const char *p, *end;
} cursor_t;

static void skip_blanks(cursor_t *c) {
  while (c->p < c->end && isspace((unsigned char)*c->p)) c->p++;
}

/* The next word (letters, digits, "_", ".", ":", "-" and brackets for IPv6
 * hosts): its bytes in [*start, *start + *len). False at the end. */
static bool next_word(cursor_t *c, const char **start, size_t *len) {
  skip_blanks(c);
  const char *s = c->p;
  while (c->p < c->end && (isalnum((unsigned char)*c->p) || strchr("_.:-[]", *c->p))) c->p++;
  *start = s;
  *len = (size_t)(c->p - s);
  return *len > 0;
}

static bool word_is(const char *w, size_t len, const char *keyword) {
  return strlen(keyword) == len && !strncasecmp(w, keyword, len);
}

/* Nothing but blanks and semicolons left. */
static bool at_end(cursor_t *c) {
  for (const char *p = c->p; p < c->end; p++)
    if (!isspace((unsigned char)*p) && *p != ';') return false;
  return true;
}

static pgs_status_t fail(char *err, size_t errlen, const char *message, const char *w, size_t len) {
  snprintf(err, errlen, "%s%s%.*s%s", message, w ? " \"" : "", w ? (int)(len > 64 ? 64 : len) : 0,
           w ? w : "", w ? "\"" : "");
  return PGS_EINVAL;
}

/* An optional single argument word, copied into cmd->arg. */
static pgs_status_t optional_arg(cursor_t *c, pgs_admin_cmd_t *cmd, bool required, const char *what,
                                 char *err, size_t errlen) {
  const char *w;
  size_t len;
  if (!next_word(c, &w, &len)) {
    if (required) return fail(err, errlen, what, NULL, 0);
  } else {
    if (len >= sizeof(cmd->arg)) return fail(err, errlen, "name too long:", w, len);
    memcpy(cmd->arg, w, len);
    cmd->arg[len] = '\0';
  }
  if (!at_end(c))
    return fail(err, errlen, "unexpected text after the command:", c->p, (size_t)(c->end - c->p));
  return PGS_OK;
}

/* RESHARD HOLD '<path>' [timeout_ms] | RESHARD RELEASE, after RESHARD. */
static pgs_status_t parse_reshard(cursor_t *c, pgs_admin_cmd_t *cmd, char *err, size_t errlen) {
  static const char usage[] = "RESHARD HOLD '<new config file>' [timeout_ms] or RESHARD RELEASE";
  const char *w;
  size_t wl;
  if (!next_word(c, &w, &wl)) return fail(err, errlen, usage, NULL, 0);
  if (word_is(w, wl, "release")) {
    cmd->kind = PGS_ADMIN_RESHARD_RELEASE;
    if (!at_end(c))
      return fail(err, errlen, "unexpected text after the command:", c->p, (size_t)(c->end - c->p));
    return PGS_OK;
  }
  if (!word_is(w, wl, "hold")) return fail(err, errlen, usage, NULL, 0);
  cmd->kind = PGS_ADMIN_RESHARD_HOLD;
  skip_blanks(c);
  if (c->p == c->end || *c->p != '\'') return fail(err, errlen, usage, NULL, 0);
  size_t n = 0;
  for (c->p++;; c->p++) {
    if (c->p == c->end) return fail(err, errlen, "unterminated quoted path", NULL, 0);
    if (*c->p == '\'' && (c->p + 1 == c->end || c->p[1] != '\'')) break;
    if (*c->p == '\'') c->p++; /* '' is a quote */
    if (n + 1 >= sizeof(cmd->path)) return fail(err, errlen, "path too long", NULL, 0);
    cmd->path[n++] = *c->p;
  }
  c->p++;
  cmd->path[n] = '\0';
  if (n == 0) return fail(err, errlen, usage, NULL, 0);
  if (next_word(c, &w, &wl)) {
    char digits[24];
    char *end;
    snprintf(digits, sizeof(digits), "%.*s", (int)(wl < sizeof(digits) ? wl : sizeof(digits) - 1),
             w);
    errno = 0;
    long long ms = strtoll(digits, &end, 10);
    if (errno || *end || ms <= 0 || wl >= sizeof(digits))
      return fail(err, errlen, "RESHARD HOLD's timeout is a number of milliseconds, not", w, wl);
    cmd->timeout_ms = ms;
  }
  if (!at_end(c))
    return fail(err, errlen, "unexpected text after the command:", c->p, (size_t)(c->end - c->p));
  return PGS_OK;
}

pgs_status_t pgs_admin_parse(const char *sql, size_t len, pgs_admin_cmd_t *cmd, char *err,
                             size_t errlen) {
  memset(cmd, 0, sizeof(*cmd));
  cursor_t c = {sql, sql + len};
  const char *w;
  size_t wl;
  if (at_end(&c)) {
    cmd->kind = PGS_ADMIN_EMPTY;
    return PGS_OK;
  }
  if (!next_word(&c, &w, &wl)) return fail(err, errlen, "syntax error at", c.p, 1);
  if (word_is(w, wl, "show")) {
    cmd->kind = PGS_ADMIN_SHOW;
    const char *what;
    size_t whatlen;
    if (!next_word(&c, &what, &whatlen))
      return fail(err, errlen, "SHOW needs what to show (SHOW HELP lists it)", NULL, 0);
    for (int i = 0; i < PGS_SHOW_COUNT; i++) {
      if (word_is(what, whatlen, pgs_admin_show_word((pgs_admin_show_t)i))) {
        cmd->show = (pgs_admin_show_t)i;
        if (!at_end(&c))
          return fail(err, errlen, "unexpected text after the command:", c.p,
                      (size_t)(c.end - c.p));
        return PGS_OK;
      }
    }
    return fail(err, errlen, "unknown SHOW (SHOW HELP lists them):", what, whatlen);
  }
  if (word_is(w, wl, "explain")) {
    const char *route;
    size_t rl;
    if (!next_word(&c, &route, &rl) || !word_is(route, rl, "route"))
      return fail(err, errlen, "only EXPLAIN ROUTE <statement> is known here", NULL, 0);
    cmd->kind = PGS_ADMIN_EXPLAIN_ROUTE;
    cursor_t save = c;
    const char *in;
    size_t il;
    if (next_word(&c, &in, &il) && word_is(in, il, "in")) {
      const char *db;
      size_t dl;
      if (!next_word(&c, &db, &dl))
        return fail(err, errlen, "EXPLAIN ROUTE IN needs a database", NULL, 0);
      if (dl >= PGS_MAX_NAME) return fail(err, errlen, "name too long:", db, dl);
      memcpy(cmd->arg, db, dl);
      cmd->arg[dl] = '\0';
    } else {
      c = save;
    }
    skip_blanks(&c);
    if (at_end(&c)) return fail(err, errlen, "EXPLAIN ROUTE needs a statement", NULL, 0);
    cmd->statement = c.p;
    cmd->statement_len = (size_t)(c.end - c.p);
    return PGS_OK;
  }
  if (word_is(w, wl, "set")) {
    cmd->kind = PGS_ADMIN_SET;
    return PGS_OK;
  }
  if (word_is(w, wl, "reshard")) return parse_reshard(&c, cmd, err, errlen);
  static const struct {
    const char *word;
    pgs_admin_kind_t kind;
    int arg; /* 0 none, 1 optional, 2 required */
  } simple[] = {
      {"reload", PGS_ADMIN_RELOAD, 0}, {"shutdown", PGS_ADMIN_SHUTDOWN, 0},
      {"pause", PGS_ADMIN_PAUSE, 1},   {"resume", PGS_ADMIN_RESUME, 1},
      {"ban", PGS_ADMIN_BAN, 2},       {"unban", PGS_ADMIN_UNBAN, 2},
      {"kill", PGS_ADMIN_KILL, 2},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(simple); i++) {
    if (!word_is(w, wl, simple[i].word)) continue;
    cmd->kind = simple[i].kind;
    if (simple[i].arg == 0) {
      if (!at_end(&c))
        return fail(err, errlen, "unexpected text after the command:", c.p, (size_t)(c.end - c.p));
      return PGS_OK;
    }
    pgs_status_t st = optional_arg(
        &c, cmd, simple[i].arg == 2,
        cmd->kind == PGS_ADMIN_KILL ? "KILL needs a client id" : "BAN and UNBAN need a node", err,
        errlen);
    if (st != PGS_OK || cmd->kind != PGS_ADMIN_KILL) return st;
    char *end;
    errno = 0;
    long long id = strtoll(cmd->arg, &end, 10);
    if (errno || *end || id < 0)
      return fail(err, errlen, "KILL needs a client id, not", cmd->arg, strlen(cmd->arg));
    cmd->client_id = id;
    return PGS_OK;
  }
  return fail(err, errlen, "unknown admin command (SHOW HELP lists them):", w, wl);
}

const char *pgs_admin_show_word(pgs_admin_show_t what) {
  static const char *const words[] = {
#define PGS_ADMIN_SHOW_WORD(name, word, help) word,
      PGS_ADMIN_SHOW_MAP(PGS_ADMIN_SHOW_WORD)
#undef PGS_ADMIN_SHOW_WORD
  };
  return what >= 0 && what < PGS_SHOW_COUNT ? words[what] : "?";
}

const char *pgs_admin_show_help(pgs_admin_show_t what) {
  static const char *const help[] = {
#define PGS_ADMIN_SHOW_HELP(name, word, text) text,
      PGS_ADMIN_SHOW_MAP(PGS_ADMIN_SHOW_HELP)
#undef PGS_ADMIN_SHOW_HELP
  };
  return what >= 0 && what < PGS_SHOW_COUNT ? help[what] : "?";
}
