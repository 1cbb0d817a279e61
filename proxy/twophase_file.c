/*
 * twophase_file.c — the decision log's file operations (twophase.h): the
 * lock that makes one process the log's owner, and the replacement of the
 * log by a new file (at startup and at compaction). No libuv, no libpq, no
 * global state, so a unit test drives it on a temporary directory.
 *
 * Invariants:
 *  - The lock is an exclusive flock on "<log>.lock", a file beside the log
 *    that is created if missing and never renamed or deleted. The log itself
 *    cannot carry it: each replacement renames a new inode over the log, and
 *    a process that opened the log before the rename could lock the old,
 *    unlinked inode (or a late one the new inode) while the owner runs.
 *  - A replacement is written to a file of its own, named by mkostemp in
 *    the log's directory (the rename stays within one file system), synced,
 *    renamed over the log, and the directory synced: a crash leaves either
 *    the old log or the new one, never a mix, and two writers never share a
 *    temporary file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "pgshard/twophase.h"

#define LOCK_SUFFIX ".lock"
#define TEMP_SUFFIX ".tmp.XXXXXX"

/* PATH with SUFFIX appended, malloc'ed. */
static char *with_suffix(const char *path, const char *suffix) {
  size_t plen = strlen(path), slen = strlen(suffix);
  char *out = pgs_xmalloc(plen + slen + 1);
  memcpy(out, path, plen);
  memcpy(out + plen, suffix, slen + 1);
  return out;
}

bool pgs_twophase_file_write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    len -= (size_t)n;
  }
  return true;
}

/* fsync the directory holding PATH, so a rename into it is durable. */
static int fsync_dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir =
      slash ? pgs_xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : pgs_xstrdup(".");
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

pgs_status_t pgs_twophase_file_lock(const char *log_path, int *lock_fd, char *err, size_t errlen) {
  char *path = with_suffix(log_path, LOCK_SUFFIX);
  pgs_status_t rc = PGS_OK;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    rc = PGS_EIO;
  } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      snprintf(err, errlen, "%s is in use by another pgshard process (%s is locked)", log_path,
               path);
    else
      snprintf(err, errlen, "cannot lock %s: %s", path, strerror(errno));
    close(fd);
    rc = PGS_EIO;
  } else {
    *lock_fd = fd;
  }
  free(path);
  return rc;
}

int pgs_twophase_file_replace(const char *log_path, const char *text, size_t len, char *err,
                              size_t errlen) {
  char *tmp = with_suffix(log_path, TEMP_SUFFIX);
  const char *what = "create";
  int fd = mkostemp(tmp, O_APPEND | O_CLOEXEC);
  if (fd < 0) goto fail;
  what = "write";
  if (!pgs_twophase_file_write_all(fd, text, len)) goto fail;
  what = "sync";
  if (fsync(fd) != 0) goto fail;
  what = "rename";
  if (rename(tmp, log_path) != 0) goto fail;
  if (fsync_dir_of(log_path) != 0)
    snprintf(err, errlen, "cannot sync the directory of %s: %s", log_path, strerror(errno));
  else if (errlen > 0)
    err[0] = '\0';
  free(tmp);
  return fd;

fail:
  snprintf(err, errlen, "cannot %s %s: %s", what, tmp, strerror(errno));
  if (fd >= 0) {
    close(fd);
    unlink(tmp);
  }
  free(tmp);
  return -1;
}
