/*
 * pause.c — the admin console's PAUSE and RESUME: which databases are
 * paused (a client of one waits before its next transaction). Read on
 * every transaction boundary, cheaply when nothing is paused; written by
 * the console. RESUME calls the hook the workers registered, which wakes
 * their waiting clients.
 */
#include <string.h>

#include <uv.h>

#include "pgshard/pause.h"

static uv_mutex_t pause_lock;
static uv_once_t pause_once = UV_ONCE_INIT;
static int pause_count; /* atomic: paused entries (the fast path reads it) */
static bool pause_all;
static char pause_dbs[16][PGS_MAX_NAME];
static int npause_dbs;

static void (*on_resume)(void); /* wakes the clients that waited (worker.c) */

static void pause_init(void) { uv_mutex_init(&pause_lock); }

void pgs_pause_on_resume(void (*fn)(void)) { on_resume = fn; }

bool pgs_paused(const char *db) {
  if (__atomic_load_n(&pause_count, __ATOMIC_ACQUIRE) == 0) return false;
  uv_mutex_lock(&pause_lock);
  bool paused = pause_all;
  for (int i = 0; i < npause_dbs && !paused; i++) paused = !strcmp(pause_dbs[i], db);
  uv_mutex_unlock(&pause_lock);
  return paused;
}

bool pgs_pause_set(const char *db, bool paused) {
  uv_once(&pause_once, pause_init);
  bool ok = true;
  uv_mutex_lock(&pause_lock);
  if (db == NULL) {
    pause_all = paused;
    if (!paused) npause_dbs = 0; /* RESUME with no name resumes everything */
  } else {
    int at = 0;
    while (at < npause_dbs && strcmp(pause_dbs[at], db) != 0) at++;
    if (paused && at == npause_dbs && npause_dbs == (int)PGS_ARRAY_LEN(pause_dbs))
      ok = false;
    else if (paused && at == npause_dbs)
      snprintf(pause_dbs[npause_dbs++], PGS_MAX_NAME, "%s", db);
    else if (!paused && at < npause_dbs)
      memmove(pause_dbs[at], pause_dbs[at + 1],
              sizeof(pause_dbs[0]) * (size_t)(npause_dbs - at - 1)),
          npause_dbs--;
  }
  __atomic_store_n(&pause_count, (pause_all ? 1 : 0) + npause_dbs, __ATOMIC_RELEASE);
  uv_mutex_unlock(&pause_lock);
  if (!paused && on_resume) on_resume();
  return ok;
}
