/*
 * copy.c — COPY ... FROM STDIN into sharded tables (copy.h): the options,
 * and the splitter that finds rows and their shards in the CopyData stream.
 *
 * Options follow PostgreSQL 15's ProcessCopyOptions (commands/copy.c): the
 * same option names, the same checks in the same order, the same SQLSTATEs
 * and messages, so a client sees from pgshard what it would have seen from
 * the server. Option values that were literals are kept as parameter
 * numbers (the plan is shared by every statement with the same normalised
 * text) and read from the statement's lexed text when the COPY runs.
 *
 * The splitter has two passes over each row, both following PostgreSQL
 * 15's copyfromparse.c:
 *  - the line scanner (CopyReadLineText) runs on bytes as they arrive and
 *    keeps its state between chunks, so a row may be cut anywhere. It stops
 *    only at bytes that can matter (backslash, CR, LF; in CSV the quote and
 *    escape), skipping the rest with a table lookup.
 *  - the field parser (CopyReadAttributesText/CSV) runs on a complete row,
 *    finds the key field, unescapes or unquotes it only when it has to, and
 *    counts the fields.
 * Invariants: a row that arrives whole in one chunk is reported in place
 * (no copy); only a row cut by a chunk boundary is assembled in `buf`,
 * which is kept between rows and never grows past max_row. Nothing is
 * allocated per row. After an error the splitter only repeats it.
 *
 * The binary format (CopyFromBinaryOneRow) is read from `buf`: each chunk
 * is appended, every complete tuple reported from there, and what is left
 * (one partial tuple, at most max_row) moved to its start; how far it was
 * read is kept, so a tuple cut anywhere is read once.
 */
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "pgshard/copy.h"

/* ---- options ---- */

typedef enum {
  VALUE_NONE,    /* no argument: (HEADER), (FREEZE) */
  VALUE_STRING,  /* a word or a string: text */
  VALUE_INTEGER, /* ival */
  VALUE_FLOAT,   /* a number that is not an int4: text */
  VALUE_BOOLEAN, /* bval: the old syntax's CSV HEADER, FREEZE */
  VALUE_STAR,    /* FORCE_QUOTE * */
  VALUE_LIST,    /* column names: text is them joined by '.' */
  VALUE_LITERAL, /* a literal of the statement: parameter `param` */
  VALUE_OTHER,   /* a node an option cannot take */
} value_kind_t;

typedef struct value {
  value_kind_t kind;
  const char *text;
  int32_t ival;
  bool bval;
} value_t;

typedef struct option {
  char *name;     /* as the grammar gives it: lower case unless quoted */
  value_t value;  /* text owned */
  uint16_t param; /* VALUE_LITERAL */
  bool negate;    /* VALUE_LITERAL: written as -literal */
  bool names_key; /* VALUE_LIST: the list names the shard key column */
} option_t;

struct pgs_copy_options {
  option_t *v;
  int n;
  const pgs_table_t *table; /* NULL: a reference table */
  int ncolumns;
  bool literals;
};

PGS_PRINTF(3, 4)
static pgs_status_t set_error(pgs_key_error_t *err, const char *sqlstate, const char *fmt, ...) {
  snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", sqlstate);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return PGS_EINVAL;
}

static bool ident_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '$' || c >= 0x80;
}

static const char *skip_blanks(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f' || *s == '\v') s++;
  return s;
}

/*
 * The literal an option's value is, when it is one: in the text with
 * literals put back, the option written at LOCATION is its name (a word or
 * a quoted identifier), an optional AS, an optional sign, then the value.
 * The lexer has already made every run of blanks and comments one space,
 * so nothing else can stand between them. -1 when the value is not a
 * literal (a keyword such as csv or true, or a U&'' string kept verbatim).
 */
static int literal_after(const pgs_copy_literals_t *lits, int32_t location, bool *negate) {
  *negate = false;
  if (lits == NULL || lits->text == NULL || lits->n == 0 || location < 0) return -1;
  const char *s = lits->text + location;
  if (*s == '"') {
    for (s++; *s; s++) {
      if (*s != '"') continue;
      if (s[1] != '"') break;
      s++;
    }
    if (*s == '"') s++;
  } else {
    while (ident_char((unsigned char)*s)) s++;
  }
  s = skip_blanks(s);
  if (strncasecmp(s, "as", 2) == 0 && !ident_char((unsigned char)s[2])) s = skip_blanks(s + 2);
  if (*s == '-' || *s == '+') {
    *negate = *s == '-';
    s = skip_blanks(s + 1);
  }
  int32_t at = (int32_t)(s - lits->text);
  int lo = 0, hi = lits->n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (lits->loc[mid] == at) return mid;
    if (lits->loc[mid] < at)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}

/* OPT's value from libpg_query's node ARG. False when a number is not at a
 * literal's place: the lexer turns every number into one, so the option
 * could not be told apart from others with the same normalised text. */
static bool option_value(option_t *opt, const PgQuery__Node *arg, const pgs_table_t *table,
                         const pgs_copy_literals_t *lits, int32_t location) {
  value_t *v = &opt->value;
  if (arg == NULL) {
    v->kind = VALUE_NONE;
    return true;
  }
  switch (arg->node_case) {
  case PG_QUERY__NODE__NODE_STRING:
    v->kind = VALUE_STRING;
    v->text = pgs_xstrdup(arg->string->sval ? arg->string->sval : "");
    break;
  case PG_QUERY__NODE__NODE_INTEGER:
    v->kind = VALUE_INTEGER;
    v->ival = arg->integer->ival;
    break;
  case PG_QUERY__NODE__NODE_FLOAT:
    v->kind = VALUE_FLOAT;
    v->text = pgs_xstrdup(arg->float_->fval ? arg->float_->fval : "");
    break;
  case PG_QUERY__NODE__NODE_BOOLEAN:
    v->kind = VALUE_BOOLEAN;
    v->bval = arg->boolean->boolval;
    return true;
  case PG_QUERY__NODE__NODE_A_STAR:
    v->kind = VALUE_STAR;
    return true;
  case PG_QUERY__NODE__NODE_LIST: {
    const PgQuery__List *l = arg->list;
    size_t len = 1;
    for (size_t i = 0; i < l->n_items; i++)
      if (l->items[i]->node_case == PG_QUERY__NODE__NODE_STRING)
        len += strlen(l->items[i]->string->sval) + 1;
    char *text = pgs_xmalloc(len);
    text[0] = '\0';
    for (size_t i = 0; i < l->n_items; i++) {
      if (l->items[i]->node_case != PG_QUERY__NODE__NODE_STRING) continue;
      const char *name = l->items[i]->string->sval;
      if (i > 0) strcat(text, ".");
      strcat(text, name);
      if (table && !strcmp(name, table->column)) opt->names_key = true;
    }
    v->kind = VALUE_LIST;
    v->text = text;
    return true;
  }
  default:
    v->kind = VALUE_OTHER;
    return true;
  }
  bool negate;
  int lit = literal_after(lits, location, &negate);
  if (lit >= 0) {
    free((void *)v->text);
    v->text = NULL;
    v->kind = VALUE_LITERAL;
    opt->param = (uint16_t)(lits->base + lit);
    opt->negate = negate;
    return true;
  }
  return v->kind == VALUE_STRING;
}

pgs_copy_options_t *pgs_copy_options_parse(const struct PgQuery__CopyStmt *stmt,
                                           const pgs_table_t *table,
                                           const pgs_copy_literals_t *literals,
                                           pgs_key_error_t *err) {
  pgs_copy_options_t *o = pgs_xcalloc(1, sizeof(*o));
  err->sqlstate[0] = '\0';
  err->message[0] = '\0';
  o->table = table;
  o->ncolumns = stmt->n_attlist > 0 ? (int)stmt->n_attlist : -1;
  o->v = pgs_xcalloc(stmt->n_options > 0 ? stmt->n_options : 1, sizeof(*o->v));
  bool understood = true;
  for (size_t i = 0; i < stmt->n_options; i++) {
    const PgQuery__Node *n = stmt->options[i];
    if (n->node_case != PG_QUERY__NODE__NODE_DEF_ELEM) continue;
    const PgQuery__DefElem *d = n->def_elem;
    option_t *opt = &o->v[o->n++];
    opt->name = pgs_xstrdup(d->defname ? d->defname : "");
    if (!option_value(opt, d->arg, table, literals, d->location)) understood = false;
    if (opt->value.kind == VALUE_LITERAL) o->literals = true;
  }
  if (!understood) {
    set_error(err, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "cannot analyse the options of this COPY");
  } else if (!o->literals) {
    pgs_copy_spec_t spec;
    if (pgs_copy_spec_resolve(o, NULL, &spec, err) == PGS_OK) err->sqlstate[0] = '\0';
  }
  return o;
}

void pgs_copy_options_free(pgs_copy_options_t *o) {
  if (o == NULL) return;
  for (int i = 0; i < o->n; i++) {
    free(o->v[i].name);
    free((void *)o->v[i].value.text);
  }
  free(o->v);
  free(o);
}

bool pgs_copy_options_have_literals(const pgs_copy_options_t *o) { return o->literals; }

/* ---- resolving: ProcessCopyOptions ---- */

/* A string-valued option: whether given, and its value (NUM holds a value
 * that had to be written out: a number). */
typedef struct slot {
  bool set;
  const char *s;
  char num[80];
} slot_t;

/* OPT's value, its literal read from LEXED; NUM receives a number's text. */
static bool resolve_value(const option_t *opt, const pgs_lexed_t *lexed, char num[80], value_t *v,
                          pgs_key_error_t *err) {
  *v = opt->value;
  if (v->kind != VALUE_LITERAL) return true;
  const pgs_literal_t *lit = lexed ? pgs_lexed_literal(lexed, opt->param) : NULL;
  if (lit == NULL) {
    set_error(err, PGS_SQLSTATE_INTERNAL, "no value for COPY option %s", opt->name);
    return false;
  }
  const char *text = lexed->values + lit->offset;
  if (lit->is_string) {
    v->kind = VALUE_STRING;
    v->text = text;
    return true;
  }
  /* A number: an int4 is an Integer node, anything else a Float, and a
   * sign belongs to the number (the grammar's SignedIconst/NumericOnly). */
  if (lit->len + 2 > 80) {
    set_error(err, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "COPY option %s: number too long",
              opt->name);
    return false;
  }
  snprintf(num, 80, "%s%s", opt->negate ? "-" : "", text);
  bool digits = lit->len > 0 && lit->len <= 10;
  for (uint32_t i = 0; i < lit->len && digits; i++) digits = text[i] >= '0' && text[i] <= '9';
  long long value = digits ? strtoll(text, NULL, 10) : 0;
  if (digits && value <= INT32_MAX) {
    v->kind = VALUE_INTEGER;
    v->ival = (int32_t)(opt->negate ? -value : value);
  } else {
    v->kind = VALUE_FLOAT;
    v->text = num;
  }
  return true;
}

/* defGetString. */
static const char *value_string(const value_t *v, const char *name, char num[80],
                                pgs_key_error_t *err) {
  switch (v->kind) {
  case VALUE_NONE:
    set_error(err, "42601", "%s requires a parameter", name);
    return NULL;
  case VALUE_INTEGER:
    snprintf(num, 80, "%d", (int)v->ival);
    return num;
  case VALUE_BOOLEAN:
    return v->bval ? "true" : "false";
  case VALUE_STAR:
    return "*";
  case VALUE_STRING:
  case VALUE_FLOAT:
  case VALUE_LIST:
    return v->text;
  default:
    set_error(err, "42601", "%s requires a parameter", name);
    return NULL;
  }
}

/* defGetBoolean, and defGetCopyHeaderChoice when HEADER (-1 on error;
 * 2 for "match"). */
static int value_boolean(const value_t *v, const char *name, bool header, pgs_key_error_t *err) {
  char num[80];
  if (v->kind == VALUE_NONE) return 1;
  if (v->kind == VALUE_INTEGER) {
    if (v->ival == 0 || v->ival == 1) return v->ival;
  } else {
    const char *s = value_string(v, name, num, err);
    if (s == NULL) return -1;
    if (!strcasecmp(s, "true") || !strcasecmp(s, "on")) return 1;
    if (!strcasecmp(s, "false") || !strcasecmp(s, "off")) return 0;
    if (header && !strcasecmp(s, "match")) return 2;
  }
  if (header)
    set_error(err, "42601", "%s requires a Boolean value or \"match\"", name);
  else
    set_error(err, "42601", "%s requires a Boolean value", name);
  return -1;
}

/* pg_char_to_encoding's name cleaning: lower case, letters and digits only. */
static bool is_utf8_name(const char *name) {
  char clean[16];
  size_t n = 0;
  for (const char *p = name; *p; p++) {
    char c = *p;
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) continue;
    if (n + 1 >= sizeof(clean)) return false;
    clean[n++] = c;
  }
  clean[n] = '\0';
  return !strcmp(clean, "utf8") || !strcmp(clean, "unicode");
}

static pgs_status_t conflicting(pgs_key_error_t *err) {
  return set_error(err, "42601", "conflicting or redundant options");
}

static pgs_status_t not_a_list(pgs_key_error_t *err, const char *name) {
  return set_error(err, "22023", "argument to option \"%s\" must be a list of column names", name);
}

pgs_status_t pgs_copy_spec_resolve(const pgs_copy_options_t *o, const pgs_lexed_t *lexed,
                                   pgs_copy_spec_t *out, pgs_key_error_t *err) {
  memset(out, 0, offsetof(pgs_copy_spec_t, null_string));
  out->null_string[0] = '\0';
  out->ncolumns = o->ncolumns;
  bool format_set = false, freeze_set = false, header_set = false, csv = false, binary = false;
  bool force_quote = false, force_not_null = false, force_null = false, convert = false;
  slot_t delim = {0}, null = {0}, quote = {0}, escape = {0}, encoding = {0};
  char num[80];

  for (int i = 0; i < o->n; i++) {
    const option_t *opt = &o->v[i];
    const char *name = opt->name;
    slot_t *slot = !strcmp(name, "delimiter")  ? &delim
                   : !strcmp(name, "null")     ? &null
                   : !strcmp(name, "quote")    ? &quote
                   : !strcmp(name, "escape")   ? &escape
                   : !strcmp(name, "encoding") ? &encoding
                                               : NULL;
    value_t v;
    if (!resolve_value(opt, lexed, slot ? slot->num : num, &v, err)) return PGS_EINVAL;
    if (!strcmp(name, "format")) {
      if (format_set) return conflicting(err);
      format_set = true;
      const char *fmt = value_string(&v, name, num, err);
      if (fmt == NULL) return PGS_EINVAL;
      if (!strcmp(fmt, "text")) {
      } else if (!strcmp(fmt, "csv")) {
        csv = true;
      } else if (!strcmp(fmt, "binary")) {
        binary = true;
      } else {
        return set_error(err, "22023", "COPY format \"%s\" not recognized", fmt);
      }
    } else if (!strcmp(name, "freeze")) {
      if (freeze_set) return conflicting(err);
      freeze_set = true;
      int b = value_boolean(&v, name, false, err);
      if (b < 0) return PGS_EINVAL;
      out->freeze = b == 1;
    } else if (!strcmp(name, "header")) {
      if (header_set) return conflicting(err);
      header_set = true;
      int b = value_boolean(&v, name, true, err);
      if (b < 0) return PGS_EINVAL;
      out->header = b == 2   ? PGS_COPY_HEADER_MATCH
                    : b == 1 ? PGS_COPY_HEADER_SKIP
                             : PGS_COPY_HEADER_NONE;
    } else if (slot) {
      if (slot->set) return conflicting(err);
      slot->s = value_string(&v, name, slot->num, err);
      if (slot->s == NULL) return PGS_EINVAL;
      slot->set = true;
      if (slot == &encoding && o->table && !is_utf8_name(slot->s))
        return set_error(err, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                         "COPY ENCODING '%s' into sharded table %s is not supported; "
                         "only UTF8 is",
                         slot->s, o->table->name);
    } else if (!strcmp(name, "force_quote")) {
      if (force_quote) return conflicting(err);
      force_quote = true;
      if (v.kind != VALUE_STAR && v.kind != VALUE_LIST) return not_a_list(err, name);
    } else if (!strcmp(name, "force_not_null")) {
      if (force_not_null) return conflicting(err);
      force_not_null = true;
      if (v.kind != VALUE_LIST) return not_a_list(err, name);
      out->key_force_not_null = opt->names_key;
    } else if (!strcmp(name, "force_null")) {
      if (force_null) return conflicting(err);
      force_null = true;
      if (v.kind != VALUE_LIST) return not_a_list(err, name);
      out->key_force_null = opt->names_key;
    } else if (!strcmp(name, "convert_selectively")) {
      if (convert) return conflicting(err);
      convert = true;
      if (v.kind != VALUE_NONE && v.kind != VALUE_LIST) return not_a_list(err, name);
    } else {
      return set_error(err, "42601", "option \"%s\" not recognized", name);
    }
  }

  if (binary && delim.set)
    return set_error(err, "42601", "cannot specify DELIMITER in BINARY mode");
  if (binary && null.set) return set_error(err, "42601", "cannot specify NULL in BINARY mode");
  if (!delim.set) delim.s = csv ? "," : "\t";
  if (!null.set) null.s = csv ? "" : "\\N";
  if (csv && !quote.set) quote.s = "\"";
  if (csv && !escape.set) escape.s = quote.s;

  if (strlen(delim.s) != 1)
    return set_error(err, "0A000", "COPY delimiter must be a single one-byte character");
  if (strchr(delim.s, '\r') || strchr(delim.s, '\n'))
    return set_error(err, "22023", "COPY delimiter cannot be newline or carriage return");
  if (strchr(null.s, '\r') || strchr(null.s, '\n'))
    return set_error(err, "22023",
                     "COPY null representation cannot use newline or carriage return");
  if (!csv && strchr("\\.abcdefghijklmnopqrstuvwxyz0123456789", delim.s[0]))
    return set_error(err, "22023", "COPY delimiter cannot be \"%s\"", delim.s);
  if (binary && out->header != PGS_COPY_HEADER_NONE)
    return set_error(err, "0A000", "cannot specify HEADER in BINARY mode");
  if (!csv && quote.set) return set_error(err, "0A000", "COPY quote available only in CSV mode");
  if (csv && strlen(quote.s) != 1)
    return set_error(err, "0A000", "COPY quote must be a single one-byte character");
  if (csv && delim.s[0] == quote.s[0])
    return set_error(err, "22023", "COPY delimiter and quote must be different");
  if (!csv && escape.set) return set_error(err, "0A000", "COPY escape available only in CSV mode");
  if (csv && strlen(escape.s) != 1)
    return set_error(err, "0A000", "COPY escape must be a single one-byte character");
  if (!csv && force_quote)
    return set_error(err, "0A000", "COPY force quote available only in CSV mode");
  if (force_quote) return set_error(err, "0A000", "COPY force quote only available using COPY TO");
  if (!csv && force_not_null)
    return set_error(err, "0A000", "COPY force not null available only in CSV mode");
  if (!csv && force_null)
    return set_error(err, "0A000", "COPY force null available only in CSV mode");
  if (strchr(null.s, delim.s[0]))
    return set_error(err, "0A000", "COPY delimiter must not appear in the NULL specification");
  if (csv && strchr(null.s, quote.s[0]))
    return set_error(err, "0A000", "CSV quote character must not appear in the NULL specification");

  /* What pgshard refuses on top. */
  if (convert) return set_error(err, "0A000", "COPY option convert_selectively is not supported");
  size_t null_len = strlen(null.s);
  if (null_len > PGS_COPY_MAX_NULL)
    return set_error(err, "0A000", "COPY NULL strings longer than %d bytes are not supported",
                     PGS_COPY_MAX_NULL);

  out->format = binary ? PGS_COPY_BINARY : csv ? PGS_COPY_CSV : PGS_COPY_TEXT;
  out->delimiter = delim.s[0];
  out->quote = csv ? quote.s[0] : '\0';
  out->escape = csv ? escape.s[0] : '\0';
  out->null_len = null_len;
  memcpy(out->null_string, null.s, null_len + 1);
  if (!csv) out->key_force_not_null = out->key_force_null = false;
  err->sqlstate[0] = '\0';
  err->message[0] = '\0';
  return PGS_OK;
}

/* ---- the splitter ---- */

typedef enum {
  EOL_UNKNOWN, /* no line end seen yet: the first one fixes the style */
  EOL_NL,
  EOL_CR,
  EOL_CRNL,
} eol_t;

/* Where the line scanner is within a line. */
typedef enum {
  SCAN_DATA,      /* plain data (in CSV, maybe inside quotes) */
  SCAN_BACKSLASH, /* after a backslash that may start the marker \. (text:
                     any backslash; CSV: one first on its line) */
  SCAN_DOT,       /* after "\.": the line must end now */
  SCAN_DOT_CR,    /* after "\.\r" with \r\n line ends: \n must follow */
  SCAN_CR,        /* after a line-ending \r while \r\n is possible */
} scan_t;

/* What one byte did. */
typedef enum {
  STEP_NEXT,       /* nothing yet: next byte */
  STEP_ROW,        /* this byte ends a row (it is the row's last byte) */
  STEP_ROW_BEFORE, /* the row ended before this byte (a lone \r ended it);
                      the byte starts the next row and must be scanned again */
  STEP_MARKER,     /* this byte completes the end-of-data marker */
  STEP_ERROR,
} step_t;

struct pgs_copy_split {
  pgs_copy_spec_t spec;
  bool csv;
  uint8_t delimiter, quote, escape;
  uint8_t scan_escape; /* CopyReadLineText ignores ESCAPE when it is QUOTE: 0 then */
  bool special[256];   /* bytes the line scanner must look at */
  const pgs_database_t *db;
  const pgs_table_t *table;
  int key_column;
  int ncolumns;
  size_t max_row;
  pgs_route_session_t session;
  bool has_session;
  pgs_key_t tenant;
  pgs_copy_row_cb cb;
  void *cb_ctx;

  /* The line scanner. */
  scan_t state;
  eol_t eol;
  bool in_quote;
  bool last_was_esc;
  bool first_char; /* CSV: at the first byte of a line (where \. is the marker) */
  size_t term;     /* row offset of the line terminator */
  size_t mark;     /* row offset of the backslash of a possible marker */
  uint64_t line;   /* PostgreSQL's cur_lineno: the line being read (1-based) */
  bool header_pending;
  bool marker_seen;
  bool finished;
  bool failed;
  pgs_key_error_t error;
  uint64_t rows;

  /* The current row's bytes so far, when it began in an earlier chunk. */
  uint8_t *buf;
  size_t len, cap;
  /* The key field when it had to be unescaped or unquoted. */
  char *key_text;
  size_t key_cap;
  pgs_key_t key;

  /* Binary format: everything not yet reported is in buf (len bytes);
   * bin_pos is how far it has been read, in bin_state. */
  int bin_state;
  size_t bin_pos;
  int bin_nfields, bin_field;
  int32_t bin_flen;
  size_t bin_key_off;
  int32_t bin_key_len;
};

pgs_copy_split_t *pgs_copy_split_new(const pgs_copy_spec_t *spec, const pgs_database_t *db,
                                     const pgs_table_t *table, int key_column, int ncolumns,
                                     size_t max_row, const pgs_route_session_t *session,
                                     pgs_copy_row_cb cb, void *cb_ctx) {
  PGS_ASSERT(key_column >= 0 && (ncolumns < 0 || key_column < ncolumns));
  pgs_copy_split_t *s = pgs_xcalloc(1, sizeof(*s));
  s->spec = *spec;
  s->csv = spec->format == PGS_COPY_CSV;
  s->delimiter = (uint8_t)spec->delimiter;
  s->quote = (uint8_t)spec->quote;
  s->escape = (uint8_t)spec->escape;
  s->scan_escape = s->escape == s->quote ? 0 : s->escape;
  s->special['\n'] = s->special['\r'] = true;
  if (s->csv) {
    s->special[s->quote] = s->special[s->scan_escape] = true;
  } else {
    s->special['\\'] = true;
  }
  s->db = db;
  s->table = table;
  s->key_column = key_column;
  s->ncolumns = ncolumns;
  s->max_row = max_row;
  if (session) {
    s->has_session = true;
    s->session = *session;
    if (session->tenant) {
      s->tenant = *session->tenant;
      s->session.tenant = &s->tenant;
    }
  }
  s->cb = cb;
  s->cb_ctx = cb_ctx;
  s->state = SCAN_DATA;
  s->eol = EOL_UNKNOWN;
  s->first_char = s->csv;
  s->line = 1;
  s->header_pending = spec->header != PGS_COPY_HEADER_NONE;
  return s;
}

void pgs_copy_split_free(pgs_copy_split_t *s) {
  if (s == NULL) return;
  free(s->buf);
  free(s->key_text);
  free(s);
}

bool pgs_copy_split_ended(const pgs_copy_split_t *s) { return s->marker_seen; }

uint64_t pgs_copy_split_rows(const pgs_copy_split_t *s) { return s->rows; }

/* ---- errors ---- */

/* The splitter's error: SQLSTATE, the message, and where (PostgreSQL's
 * CONTEXT line, in parentheses), cutting the message rather than the
 * context when the two do not fit. */
PGS_PRINTF(4, 5)
static bool fail(pgs_copy_split_t *s, const char *sqlstate, bool column, const char *fmt, ...) {
  char where[160];
  int n = snprintf(where, sizeof(where), " (COPY %s, line %llu%s%s)", s->table->name,
                   (unsigned long long)s->line, column ? ", column " : "",
                   column ? s->table->column : "");
  size_t wlen = n < 0 ? 0 : (size_t)n < sizeof(where) ? (size_t)n : sizeof(where) - 1;
  size_t room = sizeof(s->error.message) - wlen;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(s->error.message, room, fmt, ap);
  va_end(ap);
  size_t mlen = m < 0 ? 0 : (size_t)m < room ? (size_t)m : room - 1;
  memcpy(s->error.message + mlen, where, wlen + 1);
  snprintf(s->error.sqlstate, sizeof(s->error.sqlstate), "%s", sqlstate);
  s->failed = true;
  return false;
}

static step_t bad_format(pgs_copy_split_t *s, const char *message) {
  fail(s, "22P04", false, "%s", message);
  return STEP_ERROR;
}

/* ---- the line scanner: CopyReadLineText, one byte at a time ---- */

static step_t step(pgs_copy_split_t *s, uint8_t c, size_t off);

static step_t step_data(pgs_copy_split_t *s, uint8_t c, size_t off) {
  bool first = s->first_char;
  s->first_char = false;
  if (s->csv) {
    /* Quotes and escapes: with QUOTE as ESCAPE (scan_escape 0) a quote
     * simply toggles; otherwise only an escape inside quotes right before
     * a quote counts, not the second of an escape-escape pair. */
    if (s->in_quote && c == s->scan_escape) s->last_was_esc = !s->last_was_esc;
    if (c == s->quote && !s->last_was_esc) s->in_quote = !s->in_quote;
    if (c != s->scan_escape) s->last_was_esc = false;
    if (s->in_quote && c == (s->eol == EOL_NL ? '\n' : '\r')) s->line++;
  }
  bool outside = !s->csv || !s->in_quote;
  if (c == '\r' && outside) {
    s->term = off;
    if (s->eol == EOL_UNKNOWN || s->eol == EOL_CRNL) {
      s->state = SCAN_CR; /* \r\n or a lone \r: the next byte tells */
      return STEP_NEXT;
    }
    if (s->eol == EOL_NL)
      return bad_format(s, s->csv ? "unquoted carriage return found in data"
                                  : "literal carriage return found in data");
    return STEP_ROW;
  }
  if (c == '\n' && outside) {
    if (s->eol == EOL_CR || s->eol == EOL_CRNL)
      return bad_format(
          s, s->csv ? "unquoted newline found in data" : "literal newline found in data");
    s->eol = EOL_NL;
    s->term = off;
    return STEP_ROW;
  }
  if (c == '\\' && (!s->csv || first)) {
    s->mark = off;
    s->state = SCAN_BACKSLASH;
  }
  return STEP_NEXT;
}

/* CSV: "\." that turned out not to be the marker is data. The bytes after
 * the backslash are scanned as data ('.', the \r of SCAN_DOT_CR), then C. */
static step_t not_marker(pgs_copy_split_t *s, uint8_t c, size_t off) {
  bool had_cr = s->state == SCAN_DOT_CR;
  s->state = SCAN_DATA;
  step_t r = step_data(s, '.', s->mark + 1);
  if (r == STEP_NEXT && had_cr) r = step_data(s, '\r', s->mark + 2);
  if (r != STEP_NEXT) return r == STEP_ERROR ? STEP_ERROR : bad_format(s, "internal: marker");
  return step(s, c, off);
}

/* The byte C after "\." (after "\.\r" with \r\n line ends). */
static step_t marker_end(pgs_copy_split_t *s, uint8_t c, size_t off) {
  if (c != '\r' && c != '\n') {
    if (!s->csv) return bad_format(s, "end-of-copy marker corrupt");
    return not_marker(s, c, off);
  }
  if ((s->eol == EOL_NL && c != '\n') || (s->eol == EOL_CRNL && c != '\n') ||
      (s->eol == EOL_CR && c != '\r'))
    return bad_format(s, "end-of-copy marker does not match previous newline style");
  return STEP_MARKER;
}

static step_t step(pgs_copy_split_t *s, uint8_t c, size_t off) {
  switch (s->state) {
  case SCAN_DATA:
    return step_data(s, c, off);
  case SCAN_BACKSLASH:
    if (c == '.') {
      s->state = SCAN_DOT;
      return STEP_NEXT;
    }
    s->state = SCAN_DATA;
    /* Text: the byte after a backslash is data, a newline included. CSV:
     * a backslash is data and the byte is scanned as usual. */
    return s->csv ? step_data(s, c, off) : STEP_NEXT;
  case SCAN_DOT:
    if (s->eol == EOL_CRNL) {
      if (c == '\r') {
        s->state = SCAN_DOT_CR;
        return STEP_NEXT;
      }
      if (!s->csv)
        return bad_format(s, c == '\n' ? "end-of-copy marker does not match previous newline style"
                                       : "end-of-copy marker corrupt");
      return not_marker(s, c, off);
    }
    return marker_end(s, c, off);
  case SCAN_DOT_CR:
    return marker_end(s, c, off);
  case SCAN_CR:
    s->state = SCAN_DATA;
    if (c == '\n') {
      s->eol = EOL_CRNL;
      return STEP_ROW;
    }
    if (s->eol == EOL_CRNL)
      return bad_format(s, s->csv ? "unquoted carriage return found in data"
                                  : "literal carriage return found in data");
    s->eol = EOL_CR;
    return STEP_ROW_BEFORE;
  }
  return bad_format(s, "internal: scanner state");
}

/* ---- the field parser: finding the key in a complete row ---- */

static char *key_space(pgs_copy_split_t *s, size_t need) {
  if (need > s->key_cap) {
    size_t cap = s->key_cap ? s->key_cap : 256;
    while (cap < need) cap *= 2;
    s->key_text = pgs_xrealloc(s->key_text, cap);
    s->key_cap = cap;
  }
  return s->key_text;
}

static int hex_value(uint8_t c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

static bool is_octal(uint8_t c) { return c >= '0' && c <= '7'; }

/* Text format: the end of the field starting at P (the delimiter or E), as
 * CopyReadAttributesText reads it: a backslash takes the next byte, and
 * up to two more octal digits after \0-7, up to two hex digits after \x.
 * *ESCAPED: whether a backslash was seen. */
static const uint8_t *text_field_end(const pgs_copy_split_t *s, const uint8_t *p, const uint8_t *e,
                                     bool *escaped) {
  const uint8_t delim = s->delimiter;
  while (p < e) {
    uint8_t c = *p;
    if (c == delim) break;
    p++;
    if (c != '\\') continue;
    *escaped = true;
    if (p >= e) break;
    c = *p++;
    if (is_octal(c)) {
      if (p < e && is_octal(*p)) {
        p++;
        if (p < e && is_octal(*p)) p++;
      }
    } else if (c == 'x') {
      if (p < e && hex_value(*p) >= 0) {
        p++;
        if (p < e && hex_value(*p) >= 0) p++;
      }
    }
  }
  return p;
}

/* Text format: the escaped field [P, E) unescaped into OUT (room for E - P
 * bytes); its length. *NON_ASCII: an escape made a NUL or a high-bit byte. */
static size_t text_unescape(const uint8_t *p, const uint8_t *e, char *out, bool *non_ascii) {
  size_t n = 0;
  while (p < e) {
    uint8_t c = *p++;
    if (c == '\\') {
      if (p >= e) break; /* a backslash ending the line is dropped */
      c = *p++;
      if (is_octal(c)) {
        int val = c - '0';
        if (p < e && is_octal(*p)) {
          val = (val << 3) + (*p++ - '0');
          if (p < e && is_octal(*p)) val = (val << 3) + (*p++ - '0');
        }
        c = (uint8_t)(val & 0377);
        if (c == 0 || c >= 0x80) *non_ascii = true;
      } else if (c == 'x') {
        if (p < e && hex_value(*p) >= 0) {
          int val = hex_value(*p++);
          if (p < e && hex_value(*p) >= 0) val = (val << 4) + hex_value(*p++);
          c = (uint8_t)(val & 0xff);
          if (c == 0 || c >= 0x80) *non_ascii = true;
        }
      } else {
        switch (c) {
        case 'b':
          c = '\b';
          break;
        case 'f':
          c = '\f';
          break;
        case 'n':
          c = '\n';
          break;
        case 'r':
          c = '\r';
          break;
        case 't':
          c = '\t';
          break;
        case 'v':
          c = '\v';
          break;
        default:
          break; /* any other byte stands for itself */
        }
      }
    }
    out[n++] = (char)c;
  }
  return n;
}

/* The first byte of an invalid UTF-8 sequence in [P, P + N), or -1
 * (PostgreSQL's pg_verifymbstr: NUL, overlong forms and surrogates are
 * invalid). */
static long utf8_invalid_at(const uint8_t *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = p[i];
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c == 0) return (long)i;
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return (long)i;
    }
    if (i + len > n) return (long)i;
    if (p[i + 1] < lo || p[i + 1] > hi) return (long)i;
    for (size_t k = 2; k < len; k++)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return (long)i;
    i += len;
  }
  return -1;
}

/* The key field of a text-format row [P, E): *KEY and *KEY_LEN (*KEY NULL for SQL
 * NULL), and the row's field count (counting stops after the key when the
 * column count is unknown). False with the error set. */
static bool text_key(pgs_copy_split_t *s, const uint8_t *p, const uint8_t *e, const char **key,
                     size_t *key_len, int *fields) {
  int col = 0;
  *key = NULL;
  for (;;) {
    bool escaped = false;
    const uint8_t *start = p;
    const uint8_t *end = text_field_end(s, p, e, &escaped);
    if (col == s->key_column) {
      size_t raw = (size_t)(end - start);
      if (raw == s->spec.null_len && memcmp(start, s->spec.null_string, raw) == 0) {
        *key = NULL;
      } else if (!escaped) {
        *key = (const char *)start;
        *key_len = raw;
      } else {
        bool non_ascii = false;
        char *out = key_space(s, raw + 1);
        *key_len = text_unescape(start, end, out, &non_ascii);
        *key = out;
        long bad = non_ascii ? utf8_invalid_at((const uint8_t *)out, *key_len) : -1;
        if (bad >= 0)
          return fail(s, "22021", true, "invalid byte sequence for encoding \"UTF8\": 0x%02x",
                      (unsigned)(uint8_t)out[bad]);
      }
      if (s->ncolumns < 0) {
        *fields = col + 1;
        return true;
      }
    }
    col++;
    if (end == e) break;
    p = end + 1; /* past the delimiter */
  }
  *fields = col;
  return true;
}

/* The same for CSV (CopyReadAttributesCSV): quoted parts may hold
 * delimiters and line ends; ESCAPE inside quotes takes a following QUOTE
 * or ESCAPE literally; a field matches the NULL string only unquoted. */
static bool csv_key(pgs_copy_split_t *s, const uint8_t *p, const uint8_t *e, const char **key,
                    size_t *key_len, bool *key_null, int *fields) {
  const uint8_t delim = s->delimiter, quote = s->quote, escape = s->escape;
  int col = 0;
  for (;;) {
    const bool is_key = col == s->key_column;
    const uint8_t *start = p, *end = p;
    bool quoted = false, found_delim = false;
    char *out = NULL;
    size_t n = 0;
    for (;;) {
      /* outside quotes */
      bool opened = false;
      while (p < e) {
        uint8_t c = *p;
        if (c == delim) break;
        p++;
        if (c == quote) {
          opened = true;
          break;
        }
        if (out) out[n++] = (char)c;
      }
      if (!opened) {
        end = p;
        found_delim = p < e;
        break;
      }
      /* inside quotes: the value is built only for the key, from its start */
      quoted = true;
      if (is_key && out == NULL) {
        out = key_space(s, (size_t)(e - start) + 1);
        n = (size_t)(p - 1 - start);
        memcpy(out, start, n);
      }
      for (;;) {
        if (p >= e) return fail(s, "22P04", false, "unterminated CSV quoted field");
        uint8_t c = *p++;
        if (c == escape && p < e && (*p == escape || *p == quote)) {
          if (out) out[n++] = (char)*p;
          p++;
          continue;
        }
        if (c == quote) break;
        if (out) out[n++] = (char)c;
      }
    }
    if (is_key) {
      size_t raw = (size_t)(end - start);
      *key_null =
          !quoted && raw == s->spec.null_len && memcmp(start, s->spec.null_string, raw) == 0;
      *key = out ? out : (const char *)start;
      *key_len = out ? n : raw;
      if (*key_null && s->spec.key_force_not_null) {
        *key_null = false;
        *key = s->spec.null_string;
        *key_len = s->spec.null_len;
      } else if (!*key_null && s->spec.key_force_null && *key_len == s->spec.null_len &&
                 memcmp(*key, s->spec.null_string, *key_len) == 0) {
        *key_null = true;
      }
      if (s->ncolumns < 0) {
        *fields = col + 1;
        return true;
      }
    }
    col++;
    if (!found_delim) break;
    p = end + 1;
  }
  *fields = col;
  return true;
}

/* A data row: ROW (TOTAL bytes, of which CONTENT before the terminator)
 * gets its shard and is reported. */
static bool place_row(pgs_copy_split_t *s, const uint8_t *row, size_t total, size_t content) {
  const char *key = NULL;
  size_t key_len = 0;
  bool key_null = false;
  int fields = 0;
  if (s->csv) {
    if (!csv_key(s, row, row + content, &key, &key_len, &key_null, &fields)) return false;
  } else {
    if (!text_key(s, row, row + content, &key, &key_len, &fields)) return false;
    key_null = key == NULL;
  }
  if (s->ncolumns >= 0 && fields > s->ncolumns)
    return fail(s, "22P04", false, "extra data after last expected column");
  if (fields <= s->key_column)
    return fail(s, "22P04", false, "missing data for column \"%s\"", s->table->column);
  if (key_null)
    return fail(s, "23502", false, "null value in shard key column \"%s\" of relation \"%s\"",
                s->table->column, s->table->name);
  pgs_key_error_t kerr;
  if (pgs_key_from_text(s->table->type, key, key_len, &s->key, &kerr) != PGS_OK)
    return fail(s, kerr.sqlstate, true, "%s", kerr.message);
  if (s->ncolumns >= 0 && fields < s->ncolumns)
    return fail(s, "22P04", false, "missing data for column %d of %d", fields + 1, s->ncolumns);
  int shard =
      pgs_route_key_shard(s->db, s->table, &s->key, s->has_session ? &s->session : NULL, &kerr);
  if (shard < 0) return fail(s, kerr.sqlstate, true, "%s", kerr.message);
  s->rows++;
  s->cb(s->cb_ctx, shard, row, total);
  return true;
}

/* ---- rows ---- */

static void append(pgs_copy_split_t *s, const uint8_t *data, size_t n) {
  if (n == 0) return;
  if (s->len + n > s->cap) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < s->len + n) cap *= 2;
    if (cap > s->max_row && s->len + n <= s->max_row) cap = s->max_row;
    s->buf = pgs_xrealloc(s->buf, cap);
    s->cap = cap;
  }
  memcpy(s->buf + s->len, data, n);
  s->len += n;
}

static bool too_long(pgs_copy_split_t *s) {
  return fail(s, "54000", false, "row longer than %zu bytes", s->max_row);
}

/* The current row is complete: TOTAL bytes from its start (the first
 * s->len of them in buf, the rest from ROW in the chunk), CONTENT before
 * the terminator. Reports it and starts the next row. */
static bool emit(pgs_copy_split_t *s, const uint8_t *row, size_t total, size_t content) {
  if (total > s->max_row) return too_long(s);
  const uint8_t *bytes = row;
  if (s->len > 0) {
    if (total > s->len) append(s, row, total - s->len);
    bytes = s->buf;
  }
  bool ok = true;
  if (s->header_pending) {
    s->header_pending = false;
    s->cb(s->cb_ctx, -1, bytes, total);
  } else {
    ok = place_row(s, bytes, total, content);
  }
  s->len = 0;
  s->line++;
  s->in_quote = false;
  s->last_was_esc = false;
  s->first_char = s->csv;
  return ok;
}

static pgs_status_t failed(pgs_copy_split_t *s, pgs_key_error_t *err) {
  s->failed = true;
  *err = s->error;
  return PGS_EINVAL;
}

/* ---- binary format: CopyFromBinaryOneRow ----
 *
 * The header (signature, flags, extension) and the trailer (a field count
 * of -1) go to every shard; each tuple (int16 field count, then per field
 * an int32 length, -1 for NULL, and its bytes) to its key's shard. The
 * bytes are kept in buf until reported; bin_pos says how far they have
 * been read, so a tuple cut anywhere is read once. */

enum { BIN_HEADER, BIN_COUNT, BIN_LEN, BIN_DATA };

static const uint8_t binary_signature[11] = {'P',  'G',  'C',  'O',  'P', 'Y',
                                             '\n', 0377, '\r', '\n', 0};

static uint32_t read_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The tuple ROW (TOTAL bytes, in buf) is complete: its key placed, it is
 * reported. */
static bool place_binary_row(pgs_copy_split_t *s, const uint8_t *row, size_t total) {
  if (s->bin_key_len < 0)
    return fail(s, "23502", false, "null value in shard key column \"%s\" of relation \"%s\"",
                s->table->column, s->table->name);
  const uint8_t *key = row + s->bin_key_off;
  size_t klen = (size_t)s->bin_key_len;
  /* An integer key is sent as its column's type: its width says which. */
  uint32_t oid = 0;
  if (s->table->type == PGS_TYPE_SMALLINT || s->table->type == PGS_TYPE_INT ||
      s->table->type == PGS_TYPE_BIGINT)
    oid = klen == 2 ? 21 : klen == 4 ? 23 : klen == 8 ? 20 : 0;
  pgs_key_error_t kerr;
  if (pgs_key_from_binary(s->table->type, oid, key, klen, &s->key, &kerr) != PGS_OK)
    return fail(s, kerr.sqlstate, true, "%s", kerr.message);
  int shard =
      pgs_route_key_shard(s->db, s->table, &s->key, s->has_session ? &s->session : NULL, &kerr);
  if (shard < 0) return fail(s, kerr.sqlstate, true, "%s", kerr.message);
  s->rows++;
  s->cb(s->cb_ctx, shard, row, total);
  s->line++;
  return true;
}

/* One step of the reader at POS (START: where the current tuple or the
 * header starts): false when more bytes are needed or it failed (then
 * s->failed). *DONE: a tuple, the header or the trailer ended at *POS. */
static bool binary_step(pgs_copy_split_t *s, size_t start, size_t *pos, bool *done) {
  const uint8_t *b = s->buf;
  size_t avail = s->len - *pos;
  *done = false;
  switch (s->bin_state) {
  case BIN_HEADER: {
    if (avail < 19) return false;
    if (memcmp(b, binary_signature, sizeof(binary_signature)) != 0)
      return fail(s, "22P04", false, "COPY file signature not recognized");
    uint32_t flags = read_u32(b + 11), ext = read_u32(b + 15);
    if (flags & (1u << 16)) return fail(s, "22P04", false, "invalid COPY file header (WITH OIDS)");
    if ((flags & 0xFFFF0000u) != 0)
      return fail(s, "22P04", false, "unrecognized critical flags in COPY file header");
    if (ext > s->max_row) return fail(s, "22P04", false, "invalid COPY file header (wrong length)");
    if (avail < 19 + (size_t)ext) return false;
    s->cb(s->cb_ctx, -1, b, 19 + (size_t)ext);
    *pos = 19 + (size_t)ext;
    s->bin_state = BIN_COUNT;
    *done = true;
    return true;
  }
  case BIN_COUNT: {
    if (avail < 2) return false;
    int16_t n = (int16_t)(b[*pos] << 8 | b[*pos + 1]);
    if (n == -1) { /* the trailer: every shard's data ends with it */
      s->cb(s->cb_ctx, -1, b + *pos, 2);
      s->marker_seen = true;
      if (avail > 2) return fail(s, "22P04", false, "received copy data after EOF marker");
      *pos += 2;
      *done = true;
      return true;
    }
    if (s->ncolumns >= 0 && n != s->ncolumns)
      return fail(s, "22P04", false, "row field count is %d, expected %d", n, s->ncolumns);
    if (n <= s->key_column)
      return fail(s, "22P04", false, "missing data for column \"%s\"", s->table->column);
    s->bin_nfields = n;
    s->bin_field = 0;
    *pos += 2;
    s->bin_state = BIN_LEN;
    return true;
  }
  case BIN_LEN: {
    if (avail < 4) return false;
    int32_t flen = (int32_t)read_u32(b + *pos);
    if (flen < -1) return fail(s, "22P04", false, "invalid field size");
    *pos += 4;
    if (flen > 0 && *pos - start + (size_t)flen > s->max_row) return too_long(s);
    if (s->bin_field == s->key_column) {
      s->bin_key_off = *pos - start;
      s->bin_key_len = flen;
    }
    s->bin_flen = flen;
    if (flen > 0) {
      s->bin_state = BIN_DATA;
      return true;
    }
    break;
  }
  default: /* BIN_DATA */
    if (avail < (size_t)s->bin_flen) return false;
    *pos += (size_t)s->bin_flen;
    break;
  }
  /* A field ended: the next one, or the tuple is complete. */
  s->bin_state = ++s->bin_field < s->bin_nfields ? BIN_LEN : BIN_COUNT;
  if (s->bin_state == BIN_COUNT) {
    if (!place_binary_row(s, b + start, *pos - start)) return false;
    *done = true;
  }
  return true;
}

/* Read what buf holds from bin_pos; report what is complete and keep the
 * rest (a part of one tuple, or of the header) at the start of buf. */
static bool binary_read(pgs_copy_split_t *s) {
  size_t start = 0, pos = s->bin_pos;
  bool done;
  while (!s->marker_seen && binary_step(s, start, &pos, &done))
    if (done) start = pos;
  if (s->failed) return false;
  if (s->bin_state != BIN_HEADER && s->len - start > s->max_row) return too_long(s);
  memmove(s->buf, s->buf + start, s->len - start);
  s->len -= start;
  s->bin_pos = pos - start;
  return true;
}

static pgs_status_t binary_feed(pgs_copy_split_t *s, const uint8_t *data, size_t len,
                                pgs_key_error_t *err) {
  size_t need = s->len + len;
  if (need > s->cap) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < need) cap *= 2;
    s->buf = pgs_xrealloc(s->buf, cap);
    s->cap = cap;
  }
  memcpy(s->buf + s->len, data, len);
  s->len += len;
  if (!binary_read(s)) return failed(s, err);
  return PGS_OK;
}

pgs_status_t pgs_copy_split_feed(pgs_copy_split_t *s, const uint8_t *data, size_t len,
                                 pgs_key_error_t *err) {
  if (s->failed) return failed(s, err);
  if (s->spec.format == PGS_COPY_BINARY && s->marker_seen && len > 0) {
    fail(s, "22P04", false, "received copy data after EOF marker");
    return failed(s, err);
  }
  if (s->marker_seen || s->finished || len == 0) return PGS_OK;
  if (s->spec.format == PGS_COPY_BINARY) return binary_feed(s, data, len, err);
  const uint8_t *p = data, *end = data + len;
  const uint8_t *row = data; /* where the current row's bytes in this chunk start */
  const bool *special = s->special;
  while (p < end) {
    if (s->state == SCAN_DATA && !s->first_char) {
      const uint8_t *q = p;
      while (q < end && !special[*q]) q++;
      if (q != p) {
        s->last_was_esc = false; /* none of the skipped bytes is the escape */
        p = q;
        if (p == end) break;
      }
    }
    size_t off = s->len + (size_t)(p - row);
    switch (step(s, *p, off)) {
    case STEP_NEXT:
      p++;
      break;
    case STEP_ROW:
      p++;
      if (!emit(s, row, off + 1, s->term)) return failed(s, err);
      row = p;
      break;
    case STEP_ROW_BEFORE:
      if (!emit(s, row, off, s->term)) return failed(s, err);
      row = p;
      break;
    case STEP_MARKER:
      s->marker_seen = true;
      s->state = SCAN_DATA;
      /* What came before \. on its line is a last row (text format). */
      if (s->mark > 0 && !emit(s, row, s->mark, s->mark)) return failed(s, err);
      s->len = 0;
      return PGS_OK;
    case STEP_ERROR:
      return failed(s, err);
    }
  }
  size_t rest = (size_t)(end - row);
  if (s->len + rest > s->max_row) {
    too_long(s);
    return failed(s, err);
  }
  append(s, row, rest);
  return PGS_OK;
}

pgs_status_t pgs_copy_split_finish(pgs_copy_split_t *s, pgs_key_error_t *err) {
  if (s->failed) return failed(s, err);
  if (s->marker_seen || s->finished) return PGS_OK;
  s->finished = true;
  if (s->spec.format == PGS_COPY_BINARY) {
    /* Without a trailer the data may end between tuples, as PostgreSQL
     * takes it; not inside the header or a tuple. */
    if (s->bin_state == BIN_HEADER) {
      fail(s, "22P04", false, "COPY file signature not recognized");
      return failed(s, err);
    }
    if (s->len > 0) {
      fail(s, "22P04", false, "unexpected EOF in COPY data");
      return failed(s, err);
    }
    return PGS_OK;
  }
  /* End of data: PostgreSQL reads the byte after the last as '\0' where it
   * looks ahead, and takes what is left of the line as a line. */
  switch (s->state) {
  case SCAN_DATA:
  case SCAN_BACKSLASH: /* a backslash ending the data belongs to the line */
  case SCAN_CR:
    break;
  case SCAN_DOT:
  case SCAN_DOT_CR:
    if (!s->csv) {
      bad_format(s, "end-of-copy marker corrupt");
      return failed(s, err);
    }
    /* CSV: not the marker, so data; scan the bytes after the backslash. */
    {
      bool had_cr = s->state == SCAN_DOT_CR;
      s->state = SCAN_DATA;
      step_t r = step_data(s, '.', s->mark + 1);
      if (r == STEP_NEXT && had_cr) r = step_data(s, '\r', s->mark + 2);
      if (r == STEP_ERROR) return failed(s, err);
    }
    break;
  }
  size_t content = s->len;
  if (s->state == SCAN_CR) {
    s->state = SCAN_DATA;
    if (s->eol == EOL_CRNL) {
      bad_format(s, s->csv ? "unquoted carriage return found in data"
                           : "literal carriage return found in data");
      return failed(s, err);
    }
    s->eol = EOL_CR;
    content = s->term;
  }
  s->state = SCAN_DATA;
  if (s->len > 0 && !emit(s, s->buf, s->len, content)) return failed(s, err);
  return PGS_OK;
}
