/*
 * lexer.c — the digest lexer in front of statement analysis (analyze.h).
 *
 * One pass over the SQL text, following PostgreSQL 15's scanner (scan.l)
 * closely enough that the normalised text means what the original meant:
 * every literal ('...', E'...', $tag$...$tag$, numbers) becomes a
 * placeholder $N and its value is kept (strings unescaped, numbers as
 * written); comments are dropped (a "pgshard: shard=NAME" in one is kept as
 * the hint); runs of blanks and comments become one space; empty statements
 * and the final ';' go. Two texts that differ only in literal values,
 * blanks or comments therefore normalise, and hash, the same, which is
 * what lets the plan cache skip the parser.
 *
 * Invariants: the buffers in pgs_lexed_t only grow, so a worker lexing
 * statements of similar size allocates nothing after the first few;
 * every output byte is either a consumed input byte (or a space standing
 * for at least one) or part of a placeholder, and capacity for the rest of
 * the input plus a placeholder's worth of slack is ensured each time a
 * placeholder is written.
 */
#include <string.h>
#include <strings.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/analyze.h"
#include "pgshard/proto.h"

#define MAX_PARAM 65535 /* the protocol's limit on bind parameters */
#define PLACEHOLDER_SLACK 16

/* Character classes, as scan.l defines them. */
enum {
  C_SPACE = 1,       /* [ \t\n\r\f\v] */
  C_IDENT_START = 2, /* [A-Za-z\200-\377_] */
  C_IDENT_CONT = 4,  /* [A-Za-z\200-\377_0-9\$] */
  C_DIGIT = 8,
  C_HEX = 16,
  C_TAG_CONT = 32, /* dollar-quote tag: [A-Za-z\200-\377_0-9] */
  C_OPERATOR = 64, /* [+\-*\/<>=~!@#%^&|`?] and ':' of "::" */
};

#define ALPHA (C_IDENT_START | C_IDENT_CONT | C_TAG_CONT)
static const uint8_t char_class[256] = {
    [' '] = C_SPACE,
    ['\t'] = C_SPACE,
    ['\n'] = C_SPACE,
    ['\r'] = C_SPACE,
    ['\f'] = C_SPACE,
    ['\v'] = C_SPACE,
    ['0' ... '9'] = C_DIGIT | C_HEX | C_IDENT_CONT | C_TAG_CONT,
    ['a' ... 'f'] = ALPHA | C_HEX,
    ['g' ... 'z'] = ALPHA,
    ['A' ... 'F'] = ALPHA | C_HEX,
    ['G' ... 'Z'] = ALPHA,
    ['_'] = ALPHA,
    [0x80 ... 0xFF] = ALPHA,
    ['$'] = C_IDENT_CONT,
    ['+'] = C_OPERATOR,
    ['-'] = C_OPERATOR,
    ['*'] = C_OPERATOR,
    ['/'] = C_OPERATOR,
    ['<'] = C_OPERATOR,
    ['>'] = C_OPERATOR,
    ['='] = C_OPERATOR,
    ['~'] = C_OPERATOR,
    ['!'] = C_OPERATOR,
    ['@'] = C_OPERATOR,
    ['#'] = C_OPERATOR,
    ['%'] = C_OPERATOR,
    ['^'] = C_OPERATOR,
    ['&'] = C_OPERATOR,
    ['|'] = C_OPERATOR,
    ['`'] = C_OPERATOR,
    ['?'] = C_OPERATOR,
    [':'] = C_OPERATOR,
};
#undef ALPHA

static inline bool is_class(unsigned char c, int k) { return (char_class[c] & k) != 0; }

/* ---- lexer state ---- */

typedef struct lexer {
  const char *sql; /* the original text, for literals' offsets in it */
  const char *p;
  const char *end;
  pgs_lexed_t *out;
  size_t len;             /* bytes written to out->normalized */
  bool after_placeholder; /* an identifier char now would glue onto $N */
  int depth;              /* parentheses open */
  uint64_t sort_lists;    /* bit d: an ORDER BY / GROUP BY list is open at depth d */
  bool item_start;        /* the last token began an item of such a list */
} lexer_t;

static void ensure_out(lexer_t *lexed, size_t need) {
  pgs_lexed_t *o = lexed->out;
  if (need <= o->normalized_cap) return;
  size_t cap = o->normalized_cap ? o->normalized_cap : 256;
  while (cap < need) cap *= 2;
  o->normalized = pgs_xrealloc(o->normalized, cap);
  o->normalized_cap = cap;
}

static inline void put(lexer_t *lexed, char c) { lexed->out->normalized[lexed->len++] = c; }

static inline void put_n(lexer_t *lexed, const char *s, size_t n) {
  memcpy(lexed->out->normalized + lexed->len, s, n);
  lexed->len += n;
}

static bool last_is_ident(const lexer_t *lexed) {
  return lexed->len > 0 &&
         is_class((unsigned char)lexed->out->normalized[lexed->len - 1], C_IDENT_CONT);
}

/* Whether the last word written (one blank before it allowed) is LOWER. */
static bool last_word_is(const lexer_t *lexed, const char *lower, size_t n) {
  const char *o = lexed->out->normalized;
  size_t end = lexed->len;
  if (end > 0 && o[end - 1] == ' ') end--;
  if (end < n) return false;
  size_t start = end - n;
  if (start > 0 && is_class((unsigned char)o[start - 1], C_IDENT_CONT)) return false;
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)o[start + i] | 0x20) != (unsigned char)lower[i]) return false;
  return true;
}

/* Room for the rest of the input plus a placeholder and its separators:
 * called before writing any byte that stands for no input byte. */
static inline void keep_room(lexer_t *lexed) {
  ensure_out(lexed, lexed->len + (size_t)(lexed->end - lexed->p) + PLACEHOLDER_SLACK);
}

/* A space that keeps $N from gluing onto an identifier or digit after it. */
static void put_separator(lexer_t *lexed) {
  keep_room(lexed);
  put(lexed, ' ');
  lexed->after_placeholder = false;
}

static void put_placeholder(lexer_t *lexed, int n) {
  char digits[12];
  int nd = 0;
  do {
    digits[nd++] = (char)('0' + n % 10);
    n /= 10;
  } while (n > 0);
  put(lexed, '$');
  while (nd > 0) put(lexed, digits[--nd]);
  lexed->after_placeholder = true;
}

/* ---- literal values ---- */

static void ensure_values(pgs_lexed_t *o, size_t need) {
  if (need <= o->values_cap) return;
  size_t cap = o->values_cap ? o->values_cap : 256;
  while (cap < need) cap *= 2;
  o->values = pgs_xrealloc(o->values, cap);
  o->values_cap = cap;
}

/* Begin a literal whose text starts at START (its quote, or the E before
 * it, or its first digit). */
static pgs_status_t begin_literal(lexer_t *lexed, const char *start, bool is_string) {
  pgs_lexed_t *o = lexed->out;
  if (o->nliterals >= PGS_LEX_MAX_LITERALS) return PGS_ETOOBIG;
  if (o->nliterals == o->literals_cap) {
    int cap = o->literals_cap ? o->literals_cap * 2 : 16;
    o->literals = pgs_xrealloc(o->literals, (size_t)cap * sizeof(*o->literals));
    o->literals_cap = cap;
  }
  pgs_literal_t *lit = &o->literals[o->nliterals];
  lit->offset = (uint32_t)o->values_len;
  lit->len = 0;
  lit->is_string = is_string;
  lit->placeholder = 0;
  lit->start = (uint32_t)(start - lexed->sql);
  return PGS_OK;
}

/* Close the literal begun last, which ends where P now is: NUL-terminate
 * its value and write its placeholder (numbered from 1 for now; renumber()
 * shifts them past the statement's own $n at the end). */
static void end_literal(lexer_t *lexed) {
  pgs_lexed_t *o = lexed->out;
  pgs_literal_t *lit = &o->literals[o->nliterals];
  lit->len = (uint32_t)(o->values_len - lit->offset);
  lit->end = (uint32_t)(lexed->p - lexed->sql);
  o->values[o->values_len++] = '\0';
  o->nliterals++;
  keep_room(lexed);
  /* "abc" followed by $1 would read as the identifier abc$1. */
  if (last_is_ident(lexed)) put(lexed, ' ');
  lit->placeholder = (uint32_t)lexed->len;
  put_placeholder(lexed, o->nliterals);
}

static inline void value_byte(pgs_lexed_t *o, char c) { o->values[o->values_len++] = c; }

/* ---- comments and hints ---- */

/* "pgshard: shard=NAME" anywhere in a comment body (case-insensitive
 * keywords, blanks allowed around ':' and '='). The first hint wins. */
static void scan_hint(pgs_lexed_t *o, const char *s, size_t n) {
  if (o->hint_shard[0] != '\0' || n < 14) return;
  for (size_t i = 0; i + 8 <= n; i++) {
    if ((s[i] | 0x20) != 'p' || strncasecmp(s + i, "pgshard", 7) != 0) continue;
    size_t j = i + 7;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    if (j >= n || s[j] != ':') continue;
    j++;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    if (j + 5 > n || strncasecmp(s + j, "shard", 5) != 0) continue;
    j += 5;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    if (j >= n || s[j] != '=') continue;
    j++;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    size_t k = 0;
    while (j < n && k + 1 < sizeof(o->hint_shard) &&
           (is_class((unsigned char)s[j], C_TAG_CONT) || s[j] == '-' || s[j] == '.') &&
           (unsigned char)s[j] < 0x80)
      o->hint_shard[k++] = s[j++];
    o->hint_shard[k] = '\0';
    if (k > 0) return;
  }
}

/* At "--": skip to the end of the line (the newline is left). */
static void skip_line_comment(lexer_t *lexed) {
  const char *start = lexed->p + 2;
  const char *stop = start;
  while (stop < lexed->end && *stop != '\n' && *stop != '\r') stop++;
  scan_hint(lexed->out, start, (size_t)(stop - start));
  lexed->p = stop;
}

/* At "/ *": skip a block comment, nested as PostgreSQL nests them. */
static pgs_status_t skip_block_comment(lexer_t *lexed) {
  const char *start = lexed->p + 2;
  const char *q = start;
  int depth = 1;
  while (q + 1 < lexed->end) {
    if (q[0] == '/' && q[1] == '*') {
      depth++;
      q += 2;
    } else if (q[0] == '*' && q[1] == '/') {
      if (--depth == 0) {
        scan_hint(lexed->out, start, (size_t)(q - start));
        lexed->p = q + 2;
        return PGS_OK;
      }
      q += 2;
    } else {
      q++;
    }
  }
  return PGS_EINVAL;
}

/* ---- strings ---- */

/* After a closing quote: PostgreSQL joins 'a' <newline> 'b' into 'ab' when
 * only blanks and "--" comments, with at least one newline, separate them
 * (a hint in such a comment counts, as in any comment). Returns the
 * position after the next opening quote, or NULL. */
static const char *quote_continue(lexer_t *lexed, const char *q) {
  const char *end = lexed->end;
  bool newline = false;
  while (q < end) {
    if (*q == ' ' || *q == '\t' || *q == '\f') {
      q++;
    } else if (*q == '\n' || *q == '\r') {
      newline = true;
      q++;
    } else if (*q == '-' && q + 1 < end && q[1] == '-') {
      const char *start = q + 2;
      while (q < end && *q != '\n' && *q != '\r') q++;
      scan_hint(lexed->out, start, (size_t)(q - start));
    } else {
      break;
    }
  }
  return newline && q < end && *q == '\'' ? q + 1 : NULL;
}

/* Copy a quoted token verbatim (B'..', X'..', N'..', U&'..', "ident"),
 * continuation lines included. P is at the opening quote char Q. DOUBLED:
 * Q Q inside stands for Q (not in B'..' and X'..', where '' ends the
 * string and starts another, as in scan.l's xb and xh states). Between
 * continued parts only a newline is written: libpg_query, unlike the
 * server, does not join parts across a "--" comment, and the normalised
 * text must read the same to both. */
static pgs_status_t copy_quoted(lexer_t *lexed, const char *token_start, char q, bool doubled) {
  if (lexed->after_placeholder && is_class((unsigned char)*token_start, C_IDENT_CONT))
    put_separator(lexed);
  const char *part = token_start; /* from here on not written yet */
  const char *s = lexed->p + 1;
  for (;;) {
    const char *close = memchr(s, q, (size_t)(lexed->end - s));
    if (close == NULL) return PGS_EINVAL;
    s = close + 1;
    if (doubled && s < lexed->end && *s == q) {
      s++;
      continue;
    }
    if (q == '\'') {
      const char *next = quote_continue(lexed, s);
      if (next) {
        put_n(lexed, part, (size_t)(s - part));
        put(lexed, '\n'); /* stands for at least the newline */
        part = next - 1;
        s = next;
        continue;
      }
    }
    break;
  }
  put_n(lexed, part, (size_t)(s - part));
  lexed->after_placeholder = false;
  lexed->p = s;
  return PGS_OK;
}

/* A standard-conforming string: backslashes are ordinary, '' is a quote.
 * P is at the opening quote. */
static pgs_status_t lex_string(lexer_t *lexed) {
  pgs_lexed_t *o = lexed->out;
  pgs_status_t st = begin_literal(lexed, lexed->p, true);
  if (st != PGS_OK) return st;
  const char *s = lexed->p + 1;
  for (;;) {
    const char *close = memchr(s, '\'', (size_t)(lexed->end - s));
    if (close == NULL) return PGS_EINVAL;
    memcpy(o->values + o->values_len, s, (size_t)(close - s));
    o->values_len += (size_t)(close - s);
    s = close + 1;
    if (s < lexed->end && *s == '\'') {
      value_byte(o, '\'');
      s++;
      continue;
    }
    const char *next = quote_continue(lexed, s);
    if (next == NULL) break;
    s = next;
  }
  lexed->p = s;
  end_literal(lexed);
  return PGS_OK;
}

static int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void put_utf8(pgs_lexed_t *o, uint32_t cp) {
  if (cp < 0x80) {
    value_byte(o, (char)cp);
  } else if (cp < 0x800) {
    value_byte(o, (char)(0xC0 | (cp >> 6)));
    value_byte(o, (char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    value_byte(o, (char)(0xE0 | (cp >> 12)));
    value_byte(o, (char)(0x80 | ((cp >> 6) & 0x3F)));
    value_byte(o, (char)(0x80 | (cp & 0x3F)));
  } else {
    value_byte(o, (char)(0xF0 | (cp >> 18)));
    value_byte(o, (char)(0x80 | ((cp >> 12) & 0x3F)));
    value_byte(o, (char)(0x80 | ((cp >> 6) & 0x3F)));
    value_byte(o, (char)(0x80 | (cp & 0x3F)));
  }
}

/* N hex digits at S (exactly N, as \u and \U require), or -1. */
static int64_t read_hex(const char *s, const char *end, int n) {
  if (end - s < n) return -1;
  int64_t v = 0;
  for (int i = 0; i < n; i++) {
    int h = hex_value((unsigned char)s[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

/* E'...': backslash escapes (\b \f \n \r \t, octal, \xHH, \uXXXX,
 * \UXXXXXXXX with UTF-16 surrogate pairs, any other char stands for
 * itself) and '' both work. P is at the opening quote (after the E). A NUL
 * produced by an escape is refused, as the server refuses it. */
static pgs_status_t lex_escape_string(lexer_t *lexed) {
  pgs_lexed_t *o = lexed->out;
  pgs_status_t st = begin_literal(lexed, lexed->p - 1, true);
  if (st != PGS_OK) return st;
  const char *s = lexed->p + 1;
  const char *end = lexed->end;
  uint32_t high_surrogate = 0;
  for (;;) {
    if (s >= end) return PGS_EINVAL;
    unsigned char c = (unsigned char)*s;
    if (high_surrogate && c != '\\') return PGS_EINVAL;
    if (c == '\'') {
      if (s + 1 < end && s[1] == '\'') {
        value_byte(o, '\'');
        s += 2;
        continue;
      }
      const char *next = quote_continue(lexed, s + 1);
      if (next == NULL) {
        s++;
        break;
      }
      s = next;
      continue;
    }
    if (c != '\\') {
      value_byte(o, (char)c);
      s++;
      continue;
    }
    if (s + 1 >= end) return PGS_EINVAL;
    unsigned char e = (unsigned char)s[1];
    s += 2;
    if (high_surrogate && e != 'u' && e != 'U') return PGS_EINVAL;
    switch (e) {
    case 'b':
      value_byte(o, '\b');
      break;
    case 'f':
      value_byte(o, '\f');
      break;
    case 'n':
      value_byte(o, '\n');
      break;
    case 'r':
      value_byte(o, '\r');
      break;
    case 't':
      value_byte(o, '\t');
      break;
    case 'x': {
      int v = hex_value((unsigned char)(s < end ? *s : 0));
      if (v < 0) { /* "\x" without a digit is just 'x' */
        value_byte(o, 'x');
        break;
      }
      s++;
      int v2 = s < end ? hex_value((unsigned char)*s) : -1;
      if (v2 >= 0) {
        v = v * 16 + v2;
        s++;
      }
      if (v == 0) return PGS_EINVAL;
      value_byte(o, (char)v);
      break;
    }
    case 'u':
    case 'U': {
      int n = e == 'u' ? 4 : 8;
      int64_t cp = read_hex(s, end, n);
      if (cp < 0) return PGS_EINVAL;
      s += n;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (high_surrogate) return PGS_EINVAL;
        high_surrogate = (uint32_t)cp;
        break;
      }
      if (cp >= 0xDC00 && cp <= 0xDFFF) {
        if (!high_surrogate) return PGS_EINVAL;
        cp = 0x10000 + (((int64_t)high_surrogate - 0xD800) << 10) + (cp - 0xDC00);
        high_surrogate = 0;
      } else if (high_surrogate) {
        return PGS_EINVAL;
      }
      if (cp == 0 || cp > 0x10FFFF) return PGS_EINVAL;
      put_utf8(o, (uint32_t)cp);
      break;
    }
    default:
      if (e >= '0' && e <= '7') {
        int v = e - '0';
        for (int i = 0; i < 2 && s < end && *s >= '0' && *s <= '7'; i++) v = v * 8 + (*s++ - '0');
        v &= 0xFF;
        if (v == 0) return PGS_EINVAL;
        value_byte(o, (char)v);
      } else {
        value_byte(o, (char)e);
      }
      break;
    }
  }
  if (high_surrogate) return PGS_EINVAL;
  lexed->p = s;
  end_literal(lexed);
  return PGS_OK;
}

/* At '$' followed by a tag char or '$': a dollar quote if a full opening
 * delimiter is there. Returns PGS_ENOTFOUND when it is not one (then the
 * '$' is an ordinary char), PGS_EINVAL when it is never closed. */
static pgs_status_t lex_dollar_quote(lexer_t *lexed) {
  const char *s = lexed->p + 1;
  if (s < lexed->end && *s != '$') {
    if (!is_class((unsigned char)*s, C_IDENT_START)) return PGS_ENOTFOUND;
    while (s < lexed->end && is_class((unsigned char)*s, C_TAG_CONT)) s++;
    if (s >= lexed->end || *s != '$') return PGS_ENOTFOUND;
  }
  if (s >= lexed->end) return PGS_ENOTFOUND;
  size_t delim_len = (size_t)(s + 1 - lexed->p); /* "$tag$" */
  const char *body = s + 1;
  const char *close = memmem(body, (size_t)(lexed->end - body), lexed->p, delim_len);
  if (close == NULL) return PGS_EINVAL;
  pgs_status_t st = begin_literal(lexed, lexed->p, true);
  if (st != PGS_OK) return st;
  pgs_lexed_t *o = lexed->out;
  memcpy(o->values + o->values_len, body, (size_t)(close - body));
  o->values_len += (size_t)(close - body);
  lexed->p = close + delim_len;
  end_literal(lexed);
  return PGS_OK;
}

/* ---- numbers and parameters ---- */

/* A number as PostgreSQL 15 reads one: digits, an optional fraction
 * ("1.", ".5", but "1..2" is 1 then ".."), an optional exponent only when
 * digits follow the e. A number glued to an identifier char ("0x1F",
 * "1_000", "1e", "$1a") is an error in PostgreSQL 15 ("trailing junk");
 * here it is the number then the identifier, and the server reports the
 * error. P is at a digit or at a '.' before a digit. */
static pgs_status_t lex_number(lexer_t *lexed) {
  const char *s = lexed->p;
  const char *end = lexed->end;
  while (s < end && is_class((unsigned char)*s, C_DIGIT)) s++;
  if (s < end && *s == '.' && !(s + 1 < end && s[1] == '.')) {
    s++;
    while (s < end && is_class((unsigned char)*s, C_DIGIT)) s++;
  }
  if (s < end && (*s == 'e' || *s == 'E')) {
    const char *t = s + 1;
    if (t < end && (*t == '+' || *t == '-')) t++;
    if (t < end && is_class((unsigned char)*t, C_DIGIT)) {
      while (t < end && is_class((unsigned char)*t, C_DIGIT)) t++;
      s = t;
    }
  }
  pgs_status_t st = begin_literal(lexed, lexed->p, false);
  if (st != PGS_OK) return st;
  pgs_lexed_t *o = lexed->out;
  memcpy(o->values + o->values_len, lexed->p, (size_t)(s - lexed->p));
  o->values_len += (size_t)(s - lexed->p);
  lexed->p = s;
  end_literal(lexed);
  return PGS_OK;
}

/* $n: copied as written; the highest n is the statement's nparams. */
static pgs_status_t lex_param(lexer_t *lexed) {
  const char *s = lexed->p + 1;
  long n = 0;
  while (s < lexed->end && is_class((unsigned char)*s, C_DIGIT)) {
    n = n * 10 + (*s - '0');
    if (n > MAX_PARAM) return PGS_ETOOBIG;
    s++;
  }
  if (n > lexed->out->nparams) lexed->out->nparams = (int)n;
  if (lexed->after_placeholder) put_separator(lexed);
  put_n(lexed, lexed->p, (size_t)(s - lexed->p));
  lexed->after_placeholder = true; /* a digit now would change the number */
  lexed->p = s;
  return PGS_OK;
}

/* W (N bytes) is LOWER in any case. c | 0x20 is c's lower case for letters
 * and, for any other byte, never a lower-case letter. */
static inline bool word_is(const char *w, const char *lower, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)w[i] | 0x20) != (unsigned char)lower[i]) return false;
  return true;
}

/* Keywords whose grammar rules are left-recursive, so that a chain of them
 * nests without parentheses (bison's own stack bounds everything else).
 * Called for every identifier: the first letter decides before any loop. */
static inline bool chains_left_deep(const char *w, size_t n) {
  switch ((unsigned char)w[0] | 0x20) {
  case 'a':
    return n == 2 && word_is(w, "at", 2);
  case 'c':
    return n == 7 && word_is(w, "collate", 7);
  case 'e':
    return n == 6 && word_is(w, "except", 6);
  case 'i':
    return n == 9 && word_is(w, "intersect", 9);
  case 'j':
    return n == 4 && word_is(w, "join", 4);
  case 'u':
    return n == 5 && word_is(w, "union", 5);
  default:
    return false;
  }
}

/* ---- ORDER BY and GROUP BY positions ----
 *
 * An integer that is a whole item of an ORDER BY or GROUP BY list names an
 * output column by its position (ORDER BY 2, GROUP BY DISTINCT 1, ORDER
 * BY (2): the grammar drops the parentheses), which a parameter in its
 * place would not: such integers are kept as written, so that statements
 * sorting or grouping by different columns normalise apart and never
 * share a cached plan (merge.h reads the positions from the plan). Lists
 * are tracked per parenthesis depth, from ORDER BY / GROUP BY to the
 * closing parenthesis, the ';' or a keyword that starts another clause at
 * that depth; an item starts after BY, after a ',' of the list, after ALL
 * or DISTINCT at the start of a GROUP BY list, and inside a '(' that
 * starts an item. Keeping a literal that is not a position is harmless
 * (it is no key: it sits in a sort or group expression), so the tracking
 * only has to err that way. */

static inline uint64_t depth_bit(int depth) {
  return depth >= 0 && depth < 64 ? (uint64_t)1 << depth : 0;
}

/* Called with each word before it is written; ITEM_START: the token
 * before it began an item. */
static void track_sort_list(lexer_t *lexed, const char *w, size_t n, bool item_start) {
  static const char *const ends[] = {
      "except", "fetch",     "for",    "from", "having", "intersect", "into",  "limit",  "offset",
      "on",     "returning", "select", "set",  "union",  "values",    "where", "window", "with",
  };
  uint64_t bit = depth_bit(lexed->depth);
  if (n == 2 && word_is(w, "by", 2)) {
    if (last_word_is(lexed, "order", 5) || last_word_is(lexed, "group", 5)) {
      lexed->sort_lists |= bit;
      lexed->item_start = true;
    }
    return;
  }
  if (!(lexed->sort_lists & bit)) return;
  if (item_start && ((n == 3 && word_is(w, "all", 3)) || (n == 8 && word_is(w, "distinct", 8)))) {
    lexed->item_start = true; /* GROUP BY ALL | DISTINCT */
    return;
  }
  for (size_t i = 0; i < PGS_ARRAY_LEN(ends); i++)
    if (strlen(ends[i]) == n && word_is(w, ends[i], n)) {
      lexed->sort_lists &= ~bit;
      return;
    }
}

/* At a digit: an integer standing alone as an ORDER BY / GROUP BY item
 * (ITEM_START: the token before began an item) is copied as written;
 * false otherwise. */
static bool lex_position(lexer_t *lexed, bool item_start) {
  if (!item_start || !(lexed->sort_lists & depth_bit(lexed->depth))) return false;
  const char *s = lexed->p;
  int64_t value = 0;
  while (s < lexed->end && is_class((unsigned char)*s, C_DIGIT)) {
    value = value * 10 + (*s++ - '0');
    /* Past int4 the scanner makes it a float (FCONST), no position. */
    if (value > INT32_MAX) return false;
  }
  /* A fraction, an exponent or a glued identifier: not an integer. */
  if (s < lexed->end && (*s == '.' || is_class((unsigned char)*s, C_IDENT_CONT))) return false;
  if (lexed->after_placeholder) put_separator(lexed);
  put_n(lexed, lexed->p, (size_t)(s - lexed->p));
  lexed->after_placeholder = true; /* a digit now would change the number */
  lexed->p = s;
  return true;
}

/* ---- renumbering ---- */

/* Literals were numbered $1.. as they came; the statement's own highest $n
 * is known only at the end. When both exist, shift every placeholder past
 * nparams (one copy of the output, only for such mixed statements). */
static void renumber(lexer_t *lexed) {
  pgs_lexed_t *o = lexed->out;
  size_t cap = lexed->len + (size_t)o->nliterals * 6 + 1; /* "$65535" at most */
  if (o->scratch_cap < cap) {
    o->scratch = pgs_xrealloc(o->scratch, cap);
    o->scratch_cap = cap;
  }
  char *text = o->scratch;
  size_t in = 0, outlen = 0;
  for (int i = 0; i < o->nliterals; i++) {
    pgs_literal_t *lit = &o->literals[i];
    size_t at = lit->placeholder;
    memcpy(text + outlen, o->normalized + in, at - in);
    outlen += at - in;
    in = at + 1; /* skip '$' and the old digits */
    while (in < lexed->len && o->normalized[in] >= '0' && o->normalized[in] <= '9') in++;
    lit->placeholder = (uint32_t)outlen;
    outlen += (size_t)snprintf(text + outlen, cap - outlen, "$%d", o->nparams + 1 + i);
  }
  memcpy(text + outlen, o->normalized + in, lexed->len - in);
  outlen += lexed->len - in;
  o->scratch = o->normalized;
  o->scratch_cap = o->normalized_cap;
  o->normalized = text;
  o->normalized_cap = cap;
  lexed->len = outlen;
}

/* ---- driver ---- */

void pgs_lex_init(pgs_lexed_t *lexed) { memset(lexed, 0, sizeof(*lexed)); }

const pgs_literal_t *pgs_lexed_literal(const pgs_lexed_t *lexed, int param) {
  int i = param - lexed->nparams - 1;
  return i >= 0 && i < lexed->nliterals ? &lexed->literals[i] : NULL;
}

void pgs_lexed_put_literal(const pgs_lexed_t *lexed, const pgs_literal_t *lit, pgs_buf_t *out) {
  const char *value = lexed->values + lit->offset;
  if (!lit->is_string) {
    pgs_buf_put(out, value, lit->len);
    return;
  }
  bool backslash = memchr(value, '\\', lit->len) != NULL;
  pgs_buf_reserve(out, (size_t)lit->len * 2 + 3);
  if (backslash) pgs_buf_put_u8(out, 'E');
  pgs_buf_put_u8(out, '\'');
  for (uint32_t i = 0; i < lit->len; i++) {
    char ch = value[i];
    if (ch == '\'' || (backslash && ch == '\\')) pgs_buf_put_u8(out, (uint8_t)ch);
    pgs_buf_put_u8(out, (uint8_t)ch);
  }
  pgs_buf_put_u8(out, '\'');
}

bool pgs_lexed_restore(const pgs_lexed_t *lexed, size_t from, size_t to, int *next, pgs_buf_t *out,
                       int32_t *loc) {
  const char *s = lexed->normalized;
  int i = *next;
  while (i < lexed->nliterals && lexed->literals[i].placeholder < from) i++;
  size_t at = from;
  for (; i < lexed->nliterals && lexed->literals[i].placeholder < to; i++) {
    const pgs_literal_t *lit = &lexed->literals[i];
    size_t p = lit->placeholder;
    char expect[16];
    int n = snprintf(expect, sizeof(expect), "$%d", lexed->nparams + 1 + i);
    if (p + (size_t)n > to || memcmp(s + p, expect, (size_t)n) != 0 ||
        (p + (size_t)n < lexed->normalized_len && s[p + n] >= '0' && s[p + n] <= '9'))
      return false;
    pgs_buf_put(out, s + at, p - at);
    if (loc) loc[i] = (int32_t)out->len;
    pgs_lexed_put_literal(lexed, lit, out);
    at = p + (size_t)n;
  }
  pgs_buf_put(out, s + at, to - at);
  *next = i;
  return true;
}

void pgs_lex_free(pgs_lexed_t *lexed) {
  free(lexed->normalized);
  free(lexed->literals);
  free(lexed->values);
  free(lexed->scratch);
  memset(lexed, 0, sizeof(*lexed));
}

pgs_status_t pgs_lex(const char *sql, size_t len, pgs_lexed_t *out) {
  out->nparams = 0;
  out->nliterals = 0;
  out->values_len = 0;
  out->hint_shard[0] = '\0';
  out->nstatements = 0;
  out->normalized_len = 0;
  out->hash = 0;
  out->chain = 0;

  lexer_t lexed = {.sql = sql, .p = sql, .end = sql + len, .out = out};
  ensure_out(&lexed, len + PLACEHOLDER_SLACK);
  out->normalized[0] = '\0';
  /* A value never takes more bytes than its literal did, plus its NUL. */
  ensure_values(out, 2 * len + 1);
  /* The parser takes a C string, and no Query message can hold a NUL. */
  if (memchr(sql, '\0', len) != NULL) return PGS_EINVAL;

  bool pending_space = false;
  bool statement_open = false; /* a token since the last ';' */
  pgs_status_t st = PGS_OK;
  while (lexed.p < lexed.end && st == PGS_OK) {
    unsigned char c = (unsigned char)*lexed.p;
    if (is_class(c, C_SPACE)) {
      pending_space = true;
      lexed.p++;
      continue;
    }
    if (c == '-' && lexed.p + 1 < lexed.end && lexed.p[1] == '-') {
      skip_line_comment(&lexed);
      pending_space = true;
      continue;
    }
    if (c == '/' && lexed.p + 1 < lexed.end && lexed.p[1] == '*') {
      st = skip_block_comment(&lexed);
      pending_space = true;
      continue;
    }
    if (c == ';') {
      if (statement_open) {
        put(&lexed, ';');
        out->nstatements++;
        statement_open = false;
        /* The space written after it stands for no input byte. */
        keep_room(&lexed);
      }
      lexed.after_placeholder = false;
      lexed.depth = 0;
      lexed.sort_lists = 0;
      lexed.item_start = false;
      pending_space = lexed.len > 0;
      lexed.p++;
      continue;
    }
    if (pending_space && lexed.len > 0) {
      put(&lexed, ' ');
      lexed.after_placeholder = false;
    }
    pending_space = false;
    statement_open = true;
    /* Whether this token may be a whole ORDER BY / GROUP BY item; the
     * branches below say whether the next one may. */
    bool item_start = lexed.item_start;
    lexed.item_start = false;

    unsigned char next = lexed.p + 1 < lexed.end ? (unsigned char)lexed.p[1] : 0;
    if (c == '\'') {
      st = lex_string(&lexed);
    } else if ((c == 'e' || c == 'E') && next == '\'') {
      lexed.p++;
      st = lex_escape_string(&lexed);
    } else if ((c == 'b' || c == 'B' || c == 'x' || c == 'X' || c == 'n' || c == 'N') &&
               next == '\'') {
      const char *start = lexed.p++;
      st = copy_quoted(&lexed, start, '\'', c == 'n' || c == 'N');
    } else if ((c == 'u' || c == 'U') && next == '&' && lexed.p + 2 < lexed.end &&
               (lexed.p[2] == '\'' || lexed.p[2] == '"')) {
      const char *start = lexed.p;
      lexed.p += 2;
      st = copy_quoted(&lexed, start, *lexed.p, true);
    } else if (c == '"') {
      st = copy_quoted(&lexed, lexed.p, '"', true);
    } else if (c == '$' && is_class(next, C_DIGIT)) {
      st = lex_param(&lexed);
    } else if (is_class(c, C_DIGIT) && lex_position(&lexed, item_start)) {
      st = PGS_OK;
    } else if (is_class(c, C_DIGIT) || (c == '.' && is_class(next, C_DIGIT))) {
      st = lex_number(&lexed);
    } else if (c == '$' && (st = lex_dollar_quote(&lexed)) != PGS_ENOTFOUND) {
      /* a dollar-quoted string (or an unterminated one) */
    } else if (is_class(c, C_IDENT_START)) {
      st = PGS_OK;
      const char *s = lexed.p + 1;
      while (s < lexed.end && is_class((unsigned char)*s, C_IDENT_CONT)) s++;
      if (lexed.after_placeholder) put_separator(&lexed);
      if (chains_left_deep(lexed.p, (size_t)(s - lexed.p))) out->chain++;
      track_sort_list(&lexed, lexed.p, (size_t)(s - lexed.p), item_start);
      put_n(&lexed, lexed.p, (size_t)(s - lexed.p));
      lexed.after_placeholder = false;
      lexed.p = s;
    } else {
      st = PGS_OK;
      /* The first char of a run of operator chars ("||", "::", "->>"). */
      if (is_class(c, C_OPERATOR) &&
          !(lexed.len > 0 && is_class((unsigned char)out->normalized[lexed.len - 1], C_OPERATOR)))
        out->chain++;
      if (c == '(') {
        bool item = item_start && (lexed.sort_lists & depth_bit(lexed.depth));
        lexed.depth++;
        lexed.sort_lists &= depth_bit(lexed.depth) - 1; /* none open inside yet */
        if (item) {                                     /* ORDER BY (2) is ORDER BY 2 */
          lexed.sort_lists |= depth_bit(lexed.depth);
          lexed.item_start = true;
        }
      } else if (c == ',') {
        lexed.item_start = (lexed.sort_lists & depth_bit(lexed.depth)) != 0;
      } else if (c == ')') {
        lexed.sort_lists &= depth_bit(lexed.depth) - 1; /* those inside close */
        if (lexed.depth > 0) lexed.depth--;
      }
      put(&lexed, (char)c);
      lexed.after_placeholder = false;
      lexed.p++;
    }
  }
  if (st != PGS_OK) {
    out->normalized[0] = '\0';
    return st;
  }
  if (statement_open) out->nstatements++;
  /* The final ';' (empty statements were never written). */
  if (lexed.len > 0 && out->normalized[lexed.len - 1] == ';') lexed.len--;
  if ((size_t)out->nparams + (size_t)out->nliterals > MAX_PARAM) {
    out->normalized[0] = '\0';
    return PGS_ETOOBIG;
  }
  if (out->nparams > 0 && out->nliterals > 0) renumber(&lexed);

  PGS_ASSERT(lexed.len < out->normalized_cap);
  out->normalized[lexed.len] = '\0';
  out->normalized_len = lexed.len;
  out->hash = XXH3_64bits(out->normalized, lexed.len);
  return PGS_OK;
}
