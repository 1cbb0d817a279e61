/*
 * test_strmap.c — router/strmap.c: put, get, replace, remove and contains,
 * keys copied rather than kept, growth through many doublings with every
 * key still found, and freeing with and without a value destructor (under
 * ASan, a value or entry left behind is a leak report).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/strmap.h"

static int one, two, three;

static void test_empty(void **state) {
  pgs_strmap_t map;
  pgs_strmap_init(&map);
  assert_int_equal(map.count, 0);
  assert_null(pgs_strmap_get(&map, "x"));
  assert_false(pgs_strmap_contains(&map, "x"));
  assert_null(pgs_strmap_remove(&map, "x"));
  pgs_strmap_free(&map, NULL);
  pgs_strmap_free(&map, free); /* nothing to free twice */
}

static void test_put_get_replace_remove(void **state) {
  pgs_strmap_t map;
  pgs_strmap_init(&map);

  assert_null(pgs_strmap_put(&map, "a", &one));
  assert_null(pgs_strmap_put(&map, "b", &two));
  assert_int_equal(map.count, 2);
  assert_ptr_equal(pgs_strmap_get(&map, "a"), &one);
  assert_ptr_equal(pgs_strmap_get(&map, "b"), &two);
  assert_null(pgs_strmap_get(&map, "c"));
  assert_true(pgs_strmap_contains(&map, "a"));
  assert_false(pgs_strmap_contains(&map, "c"));

  /* Replacing returns the old value and does not add an entry. */
  assert_ptr_equal(pgs_strmap_put(&map, "a", &three), &one);
  assert_int_equal(map.count, 2);
  assert_ptr_equal(pgs_strmap_get(&map, "a"), &three);

  /* Keys are whole strings, compared exactly. */
  assert_null(pgs_strmap_get(&map, "A"));
  assert_null(pgs_strmap_get(&map, "a "));
  assert_null(pgs_strmap_get(&map, ""));
  assert_null(pgs_strmap_put(&map, "", &one)); /* the unnamed statement */
  assert_ptr_equal(pgs_strmap_get(&map, ""), &one);
  assert_int_equal(map.count, 3);

  /* A NULL value is stored; contains tells it from a missing key. */
  assert_null(pgs_strmap_put(&map, "nothing", NULL));
  assert_true(pgs_strmap_contains(&map, "nothing"));
  assert_null(pgs_strmap_get(&map, "nothing"));
  assert_int_equal(map.count, 4);

  assert_ptr_equal(pgs_strmap_remove(&map, "a"), &three);
  assert_int_equal(map.count, 3);
  assert_false(pgs_strmap_contains(&map, "a"));
  assert_null(pgs_strmap_get(&map, "a"));
  assert_null(pgs_strmap_remove(&map, "a")); /* already gone */
  assert_int_equal(map.count, 3);
  assert_ptr_equal(pgs_strmap_get(&map, "b"), &two);

  /* A removed key can come back. */
  assert_null(pgs_strmap_put(&map, "a", &two));
  assert_ptr_equal(pgs_strmap_get(&map, "a"), &two);
  assert_int_equal(map.count, 4);
  pgs_strmap_free(&map, NULL);
  assert_int_equal(map.count, 0);
  assert_null(map.buckets);
}

static void test_keys_are_copied(void **state) {
  pgs_strmap_t map;
  pgs_strmap_init(&map);
  char key[16] = "stmt_1";
  assert_null(pgs_strmap_put(&map, key, &one));
  strcpy(key, "stmt_2");
  assert_null(pgs_strmap_get(&map, "stmt_2"));
  assert_ptr_equal(pgs_strmap_get(&map, "stmt_1"), &one);
  assert_ptr_equal(pgs_strmap_get(&map, key), NULL);
  pgs_strmap_free(&map, NULL);
}

#define MANY 10000

static void test_growth(void **state) {
  pgs_strmap_t map;
  pgs_strmap_init(&map);
  static int values[MANY];
  char key[32];
  for (int i = 0; i < MANY; i++) {
    snprintf(key, sizeof(key), "statement_%d", i);
    assert_null(pgs_strmap_put(&map, key, &values[i]));
    assert_int_equal(map.count, (size_t)i + 1);
    /* The load never passes 1 and the table stays a power of two. */
    assert_true(map.count <= map.nbuckets);
    assert_int_equal(map.nbuckets & (map.nbuckets - 1), 0);
  }
  assert_int_equal(map.nbuckets, 16384);

  for (int i = 0; i < MANY; i++) {
    snprintf(key, sizeof(key), "statement_%d", i);
    if (pgs_strmap_get(&map, key) != &values[i]) fail_msg("%s lost after growth", key);
  }
  assert_null(pgs_strmap_get(&map, "statement_10000"));
  assert_null(pgs_strmap_get(&map, "statement_"));

  /* Every entry is in the bucket its hash names, exactly once. */
  size_t seen = 0;
  for (size_t b = 0; b < map.nbuckets; b++)
    for (const pgs_strmap_entry_t *e = map.buckets[b]; e; e = e->next) {
      assert_int_equal(e->hash & (map.nbuckets - 1), b);
      seen++;
    }
  assert_int_equal(seen, MANY);

  /* Remove the even keys; the odd ones stay. */
  for (int i = 0; i < MANY; i += 2) {
    snprintf(key, sizeof(key), "statement_%d", i);
    assert_ptr_equal(pgs_strmap_remove(&map, key), &values[i]);
  }
  assert_int_equal(map.count, MANY / 2);
  for (int i = 0; i < MANY; i++) {
    snprintf(key, sizeof(key), "statement_%d", i);
    assert_int_equal(pgs_strmap_contains(&map, key), i % 2 == 1);
  }
  pgs_strmap_free(&map, NULL);
}

static int freed;

static void count_free(void *value) {
  freed++;
  free(value);
}

static void test_free_with_destructor(void **state) {
  pgs_strmap_t map;
  pgs_strmap_init(&map);
  char key[32];
  for (int i = 0; i < 100; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    assert_null(pgs_strmap_put(&map, key, pgs_xstrdup(key)));
  }
  /* A replaced value is handed back to the caller, not freed by the map. */
  char *old = pgs_strmap_put(&map, "k7", pgs_xstrdup("new"));
  assert_string_equal(old, "k7");
  free(old);
  free(pgs_strmap_remove(&map, "k8"));
  assert_string_equal(pgs_strmap_get(&map, "k7"), "new");

  freed = 0;
  pgs_strmap_free(&map, count_free);
  assert_int_equal(freed, 99);
  assert_int_equal(map.count, 0);
  assert_int_equal(map.nbuckets, 0);

  /* The map is usable again after a free. */
  assert_null(pgs_strmap_put(&map, "again", &one));
  assert_ptr_equal(pgs_strmap_get(&map, "again"), &one);
  pgs_strmap_free(&map, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_put_get_replace_remove),
      cmocka_unit_test(test_keys_are_copied),
      cmocka_unit_test(test_growth),
      cmocka_unit_test(test_free_with_destructor),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
