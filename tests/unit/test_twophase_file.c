/*
 * test_twophase_file.c — proxy/twophase_file.c on a temporary directory:
 * the lock on "<log>.lock" excludes a second locker, also once the log has
 * been replaced by rename (as compaction does), and until the holder closes
 * it; a replacement leaves the new text in place, the lock file alone, and
 * no temporary file behind, and never touches a file named like the old
 * fixed temporary name.
 *
 * flock locks belong to open file descriptions, so a second open() in this
 * process stands for another pgshard.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "pgshard/twophase.h"

typedef struct fixture {
  char dir[64];
  char log[128];
  char lock[160];
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  snprintf(f->dir, sizeof(f->dir), "/tmp/pgshard-test-2pc-XXXXXX");
  if (mkdtemp(f->dir) == NULL) return -1;
  snprintf(f->log, sizeof(f->log), "%s/decisions.log", f->dir);
  snprintf(f->lock, sizeof(f->lock), "%s.lock", f->log);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  DIR *d = opendir(f->dir);
  if (d) {
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      snprintf(path, sizeof(path), "%s/%s", f->dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

static void write_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  assert_int_equal(fputs(text, fp) >= 0, 1);
  assert_int_equal(fclose(fp), 0);
}

static void assert_file_is(const char *path, const char *text) {
  char buf[256] = {0};
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  assert_string_equal(buf, text);
}

/* The names in the fixture's directory, sorted, joined by spaces. */
static void list_dir(const fixture_t *f, char *out, size_t cap) {
  struct dirent **names;
  int n = scandir(f->dir, &names, NULL, alphasort);
  assert_true(n >= 0);
  out[0] = '\0';
  for (int i = 0; i < n; i++) {
    if (names[i]->d_name[0] != '.') {
      if (out[0]) strncat(out, " ", cap - strlen(out) - 1);
      strncat(out, names[i]->d_name, cap - strlen(out) - 1);
    }
    free(names[i]);
  }
  free(names);
}

static void test_second_locker_refused_after_compaction(void **state) {
  fixture_t *f = *state;
  char err[512];
  write_file(f->log, "pgshard-2pc-log 1 owner=0123456789abcdef\nC x\nD x\n");

  int holder = -1;
  assert_int_equal(pgs_twophase_file_lock(f->log, &holder, err, sizeof(err)), PGS_OK);
  assert_true(holder >= 0);
  struct stat before;
  assert_int_equal(stat(f->lock, &before), 0);

  /* Another process while the log is the original file. */
  int other = -1;
  assert_int_equal(pgs_twophase_file_lock(f->log, &other, err, sizeof(err)), PGS_EIO);
  assert_int_equal(other, -1);
  assert_non_null(strstr(err, "in use by another pgshard process"));

  /* A process that opened the log before it is replaced: under a lock on
   * the log itself it would lock the old inode once the holder let go. */
  int early = open(f->log, O_RDONLY | O_CLOEXEC);
  assert_true(early >= 0);

  /* Compaction: the log is a new inode now. */
  const char *compacted = "pgshard-2pc-log 1 owner=0123456789abcdef\n";
  struct stat old_log, new_log;
  assert_int_equal(stat(f->log, &old_log), 0);
  int fd = pgs_twophase_file_replace(f->log, compacted, strlen(compacted), err, sizeof(err));
  assert_true(fd >= 0);
  assert_string_equal(err, "");
  assert_int_equal(stat(f->log, &new_log), 0);
  assert_true(new_log.st_ino != old_log.st_ino);
  assert_file_is(f->log, compacted);

  /* The lock file is the same file, and still excludes everybody. */
  struct stat after;
  assert_int_equal(stat(f->lock, &after), 0);
  assert_true(after.st_ino == before.st_ino);
  assert_int_equal(pgs_twophase_file_lock(f->log, &other, err, sizeof(err)), PGS_EIO);
  assert_int_equal(other, -1);
  /* ...whatever inode of the log a late process holds. */
  assert_int_equal(flock(early, LOCK_EX | LOCK_NB), 0);
  assert_int_equal(pgs_twophase_file_lock(f->log, &other, err, sizeof(err)), PGS_EIO);
  close(early);

  /* The new descriptor appends to the new log. */
  assert_int_equal(write(fd, "C y\n", 4), 4);
  close(fd);
  char expect[128];
  snprintf(expect, sizeof(expect), "%sC y\n", compacted);
  assert_file_is(f->log, expect);

  /* Once the holder ends, the next one gets it. */
  close(holder);
  assert_int_equal(pgs_twophase_file_lock(f->log, &other, err, sizeof(err)), PGS_OK);
  assert_true(other >= 0);
  close(other);
}

static void test_replace_uses_unique_temporary_files(void **state) {
  fixture_t *f = *state;
  char err[512];
  /* A file with the name a fixed temporary would have is nobody's to use. */
  char fixed_tmp[200];
  snprintf(fixed_tmp, sizeof(fixed_tmp), "%s.tmp", f->log);
  write_file(fixed_tmp, "someone else's\n");

  for (int i = 0; i < 3; i++) {
    char text[64];
    snprintf(text, sizeof(text), "pgshard-2pc-log 1 owner=000000000000000%d\n", i);
    int fd = pgs_twophase_file_replace(f->log, text, strlen(text), err, sizeof(err));
    assert_true(fd >= 0);
    close(fd);
    assert_file_is(f->log, text);
  }
  assert_file_is(fixed_tmp, "someone else's\n");
  char names[512];
  list_dir(f, names, sizeof(names));
  assert_string_equal(names, "decisions.log decisions.log.tmp");
}

static void test_replace_failure_leaves_the_log(void **state) {
  fixture_t *f = *state;
  char err[512];
  char missing[200];
  snprintf(missing, sizeof(missing), "%s/no-such-dir/decisions.log", f->dir);
  assert_int_equal(pgs_twophase_file_replace(missing, "x\n", 2, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "cannot create"));

  int holder = -1;
  snprintf(missing, sizeof(missing), "%s/no-such-dir/decisions.log", f->dir);
  assert_int_equal(pgs_twophase_file_lock(missing, &holder, err, sizeof(err)), PGS_EIO);
  assert_non_null(strstr(err, "cannot open"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_second_locker_refused_after_compaction, setup, teardown),
      cmocka_unit_test_setup_teardown(test_replace_uses_unique_temporary_files, setup, teardown),
      cmocka_unit_test_setup_teardown(test_replace_failure_leaves_the_log, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
