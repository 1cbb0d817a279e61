/*
 * test_config_map.c — a config made of a file's [pgshard] section and a
 * shard map kept elsewhere (map_source): pgs_config_load_map takes
 * [pgshard] from the file only and everything else from the map's text,
 * refuses a [pgshard] in the map, names the map and its line in errors;
 * pgs_config_map_text cuts a config file down to its map sections, line
 * numbers kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "pgshard/config.h"

#define FILE_TEXT                                                                                  \
  "[pgshard]\n"                                                                                    \
  "listen = 127.0.0.1:7000\n"                                                                      \
  "workers = 3\n"                                                                                  \
  "auth = trust\n"                                                                                 \
  "map_source = host=db port=5432 dbname=maps\n"                                                   \
  "\n"                                                                                             \
  "[user.app]\n"                                                                                   \
  "admin = true\n"                                                                                 \
  "[database.app]\n"                                                                               \
  "pool_size = 2\n"                                                                                \
  "[shard.app.s0]\n"                                                                               \
  "primary = host=127.0.0.1 port=6500\n"

#define MAP_TEXT                                                                                   \
  "[user.app]\n"                                                                                   \
  "admin = false\n"                                                                                \
  "[user.other]\n"                                                                                 \
  "admin = true\n"                                                                                 \
  "[database.app]\n"                                                                               \
  "pool_size = 2\n"                                                                                \
  "[shard.app.s0]\n"                                                                               \
  "primary = host=127.0.0.1 port=6500\n"                                                           \
  "[shard.app.s1]\n"                                                                               \
  "primary = host=127.0.0.1 port=6510\n"                                                           \
  "[table.app.t]\n"                                                                                \
  "column = id\n"                                                                                  \
  "type = bigint\n"                                                                                \
  "strategy = tenant\n"                                                                            \
  "[tenants.app]\n"                                                                                \
  "42 = s1\n"

static char path[64];

static int write_file(void **state) {
  snprintf(path, sizeof(path), "/tmp/test_config_map_%d.ini", (int)getpid());
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(FILE_TEXT, f);
  fclose(f);
  return 0;
}

static int remove_file(void **state) {
  unlink(path);
  return 0;
}

static void test_file_pgshard_and_map_sections(void **state) {
  pgs_config_t *c = pgs_config_load_map(path, MAP_TEXT, "map version 3", 3);
  assert_int_equal(c->nerrors, 0);
  assert_int_equal(c->map_version, 3);
  /* [pgshard] from the file */
  assert_int_equal(c->listen_port, 7000);
  assert_int_equal(c->workers, 3);
  assert_string_equal(c->map_source, "host=db port=5432 dbname=maps");
  /* the rest from the map: two users, two shards, the pin */
  assert_int_equal(c->nusers, 2);
  assert_int_equal(c->ndatabases, 1);
  assert_int_equal(c->databases[0].nshards, 2);
  assert_int_equal(c->databases[0].shardmap.ntables, 1);
  pgs_config_unref(c);

  /* The file alone: its own map, version 0. */
  c = pgs_config_load(path);
  assert_int_equal(c->nerrors, 0);
  assert_int_equal(c->map_version, 0);
  assert_int_equal(c->databases[0].nshards, 1);
  assert_non_null(c->map_source);
  pgs_config_unref(c);
}

static void test_map_errors_name_the_map(void **state) {
  pgs_config_t *c = pgs_config_load_map(path,
                                        "[database.app]\n"
                                        "[shard.app.s0]\n"
                                        "primary = host=127.0.0.1 port=6500\n"
                                        "[tenants.app]\n"
                                        "42 = s9\n",
                                        "map version 8", 8);
  assert_true(c->nerrors >= 1);
  bool found = false;
  for (int i = 0; i < c->nerrors; i++) {
    assert_int_equal(c->errors[i].line, 0);
    if (strstr(c->errors[i].message, "map version 8, line 5: ") &&
        strstr(c->errors[i].message, "s9"))
      found = true;
  }
  assert_true(found);
  pgs_config_unref(c);

  /* [pgshard] belongs to the file, never to the map. */
  c = pgs_config_load_map(path, "[pgshard]\nworkers = 9\n" MAP_TEXT, "map version 9", 9);
  assert_int_equal(c->nerrors, 1);
  assert_non_null(strstr(c->errors[0].message, "map version 9, line 2: [pgshard]"));
  assert_int_equal(c->workers, 3);
  pgs_config_unref(c);

  /* A map that says nothing is not a config. */
  c = pgs_config_load_map(path, "", "map version 10", 10);
  assert_true(c->nerrors >= 1);
  pgs_config_unref(c);
}

static void test_no_file_means_defaults(void **state) {
  pgs_config_t *c = pgs_config_load_map(NULL, MAP_TEXT, "push", 0);
  /* auth = scram-sha-256 by default: users need passwords */
  assert_true(c->nerrors >= 1);
  assert_int_equal(c->listen_port, 6432);
  pgs_config_unref(c);
  c = pgs_config_load_map("/nonexistent/pgshard.ini", MAP_TEXT, "map version 1", 1);
  assert_true(c->nerrors >= 1);
  assert_non_null(strstr(c->errors[0].message, "cannot open"));
  pgs_config_unref(c);
}

static void test_map_text_drops_pgshard_keeping_lines(void **state) {
  char *text = pgs_config_map_text(
      "; top comment\n"
      "[pgshard]\n"
      "listen = 1.2.3.4:5\n"
      "[user.app]\n"
      "password = x\n"
      "  [ pgshard ]  \n"
      "workers = 2\n"
      "[database.app]\n"
      "pool_size = 3");
  assert_string_equal(text,
                      "; top comment\n"
                      "\n"
                      "\n"
                      "[user.app]\n"
                      "password = x\n"
                      "\n"
                      "\n"
                      "[database.app]\n"
                      "pool_size = 3");
  free(text);
  text = pgs_config_map_text("");
  assert_string_equal(text, "");
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_file_pgshard_and_map_sections, write_file, remove_file),
      cmocka_unit_test_setup_teardown(test_map_errors_name_the_map, write_file, remove_file),
      cmocka_unit_test(test_no_file_means_defaults),
      cmocka_unit_test(test_map_text_drops_pgshard_keeping_lines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
