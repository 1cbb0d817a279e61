/*
 * reserved.c — refuse SQL that names pgshard's own prepared statements (see
 * reserved.h). Identifiers fold to lower case unless quoted, and the
 * server's names are lower case, so the quick look is case-insensitive and
 * the parse (libpg_query, the real grammar) decides.
 */
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "pgshard/analyze.h"
#include "pgshard/reserved.h"

static bool reserved(const char *name) {
  return name && !strncmp(name, PGS_RESERVED_PREFIX, strlen(PGS_RESERVED_PREFIX));
}

bool pgs_reserved_statement(const char *sql, size_t len, char *name, size_t cap, bool *prepares) {
  /* Each '_' (rare enough) is checked for the three letters before it. */
  bool seen = false;
  for (const char *u = memchr(sql, '_', len); u && !seen;
       u = memchr(u + 1, '_', len - (size_t)(u + 1 - sql)))
    seen = u - sql >= 3 && strncasecmp(u - 3, PGS_RESERVED_PREFIX, 3) == 0;
  if (!seen) return false;
  PgQueryProtobufParseResult result = pg_query_parse_protobuf(sql);
  bool found = false;
  if (result.error == NULL &&
      pgs_analyze_tree_depth_ok((const uint8_t *)result.parse_tree.data, result.parse_tree.len,
                                PGS_ANALYZE_MAX_DEPTH)) {
    PgQuery__ParseResult *tree = pg_query__parse_result__unpack(
        NULL, result.parse_tree.len, (const uint8_t *)result.parse_tree.data);
    for (size_t i = 0; tree && i < tree->n_stmts && !found; i++) {
      const PgQuery__Node *n = tree->stmts[i]->stmt;
      const char *stmt_name = NULL;
      bool prep = false;
      if (n == NULL) continue;
      if (n->node_case == PG_QUERY__NODE__NODE_EXECUTE_STMT) {
        stmt_name = n->execute_stmt->name;
      } else if (n->node_case == PG_QUERY__NODE__NODE_DEALLOCATE_STMT) {
        stmt_name = n->deallocate_stmt->name;
      } else if (n->node_case == PG_QUERY__NODE__NODE_PREPARE_STMT) {
        stmt_name = n->prepare_stmt->name;
        prep = true;
      } else if (n->node_case == PG_QUERY__NODE__NODE_EXPLAIN_STMT && n->explain_stmt->query &&
                 n->explain_stmt->query->node_case == PG_QUERY__NODE__NODE_EXECUTE_STMT) {
        stmt_name = n->explain_stmt->query->execute_stmt->name;
      } else if (n->node_case == PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT &&
                 n->create_table_as_stmt->query &&
                 n->create_table_as_stmt->query->node_case == PG_QUERY__NODE__NODE_EXECUTE_STMT) {
        stmt_name = n->create_table_as_stmt->query->execute_stmt->name;
      }
      if (reserved(stmt_name)) {
        found = true;
        *prepares = prep;
        snprintf(name, cap, "%s", stmt_name);
      }
    }
    if (tree) pg_query__parse_result__free_unpacked(tree, NULL);
  }
  pg_query_free_protobuf_parse_result(result);
  return found;
}
