/*
 * hold.c — the resharding cutover's hold (hold.h). One hold at most, kept
 * under a mutex by whichever thread begins or ends it (an admin client's
 * worker, or a worker's tick at its timeout); workers read its generation
 * with one atomic load on every statement, and only while it is not 0 look
 * further.
 *
 * A hold's content (the new config and the databases it holds) is an
 * immutable, refcounted object: each worker thread keeps a reference to
 * the one it saw last (a thread-local, renewed when the version changes),
 * so a worker can use the new config's database while another thread ends
 * the hold. A new HOLD makes a new object (a new version) but keeps the
 * generation when one is active.
 */
#include <string.h>
#include <time.h>

#include <uv.h>

#include "pgshard/hold.h"
#include "pgshard/io.h"
#include "pgshard/log.h"
#include "pgshard/moves.h"

typedef struct hold_content {
  int refcount; /* atomic */
  uint64_t version;
  pgs_config_t *next;
  char (*dbs)[PGS_MAX_NAME];
  int ndbs;
} hold_content_t;

static uv_mutex_t hold_lock;
static uv_once_t hold_once = UV_ONCE_INIT;
static uint64_t active_gen;     /* atomic: 0 none */
static uint64_t version;        /* atomic: of `current` */
static uint64_t last_gen;       /* under the lock: generations never repeat */
static hold_content_t *current; /* under the lock */
static char hold_path[1024];
static double hold_since;
static uint64_t hold_since_ms, hold_deadline_ms;
static void (*on_release)(void);

static uint64_t reloads_asked, reloads_done; /* atomic */

/* The hold a worker thread saw last (a reference). */
static __thread hold_content_t *seen;

static void hold_init(void) { uv_mutex_init(&hold_lock); }

static void content_unref(hold_content_t *c) {
  if (c == NULL || __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  pgs_config_unref(c->next);
  free(c->dbs);
  free(c);
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void pgs_hold_on_release(void (*fn)(void)) { on_release = fn; }

uint64_t pgs_hold_begin(pgs_config_t *next, const pgs_config_t *running, const char *path,
                        int64_t timeout_ms, int *nheld) {
  uv_once(&hold_once, hold_init);
  hold_content_t *c = pgs_xcalloc(1, sizeof(*c));
  c->refcount = 1;
  c->next = pgs_config_ref(next);
  c->dbs = pgs_xcalloc((size_t)(running->ndatabases ? running->ndatabases : 1), sizeof(*c->dbs));
  for (int d = 0; d < running->ndatabases; d++) {
    const pgs_database_t *old = &running->databases[d];
    const pgs_database_t *new = pgs_config_find_database(next, old->name);
    if (new && !pgs_moves_same_map(old, new))
      snprintf(c->dbs[c->ndbs++], PGS_MAX_NAME, "%s", old->name);
  }
  *nheld = c->ndbs;
  uv_mutex_lock(&hold_lock);
  hold_content_t *old = current;
  c->version = __atomic_load_n(&version, __ATOMIC_RELAXED) + 1;
  current = c;
  uint64_t gen = __atomic_load_n(&active_gen, __ATOMIC_RELAXED);
  if (gen == 0) {
    gen = ++last_gen;
    hold_since = wall_now();
    hold_since_ms = pgs_now_ms();
  }
  snprintf(hold_path, sizeof(hold_path), "%s", path);
  hold_deadline_ms = pgs_now_ms() + (uint64_t)timeout_ms;
  __atomic_store_n(&version, c->version, __ATOMIC_RELEASE);
  __atomic_store_n(&active_gen, gen, __ATOMIC_RELEASE);
  uv_mutex_unlock(&hold_lock);
  content_unref(old);
  return gen;
}

bool pgs_hold_end(const char *why) {
  uv_once(&hold_once, hold_init);
  uv_mutex_lock(&hold_lock);
  hold_content_t *c = current;
  current = NULL;
  uint64_t gen = __atomic_exchange_n(&active_gen, 0, __ATOMIC_ACQ_REL);
  uint64_t held_ms = pgs_now_ms() - hold_since_ms;
  char path[sizeof(hold_path)];
  memcpy(path, hold_path, sizeof(path));
  uv_mutex_unlock(&hold_lock);
  content_unref(c);
  if (gen == 0) return false;
  if (strcmp(why, "timeout") == 0)
    pgs_warn(
        "RESHARD HOLD of %s released itself after %llu ms (its timeout): nothing released "
        "it; held statements go on with the running config",
        path, (unsigned long long)held_ms);
  else
    pgs_info("%s: the hold of %s ends after %llu ms", why, path, (unsigned long long)held_ms);
  if (on_release) on_release();
  return true;
}

uint64_t pgs_hold_gen(void) { return __atomic_load_n(&active_gen, __ATOMIC_ACQUIRE); }

const pgs_database_t *pgs_hold_database(uint64_t gen, const char *db) {
  if (gen == 0 || __atomic_load_n(&active_gen, __ATOMIC_ACQUIRE) != gen) return NULL;
  uint64_t v = __atomic_load_n(&version, __ATOMIC_ACQUIRE);
  if (seen == NULL || seen->version != v) {
    uv_mutex_lock(&hold_lock);
    hold_content_t *c = current;
    if (c) __atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
    uv_mutex_unlock(&hold_lock);
    content_unref(seen);
    seen = c;
  }
  if (seen == NULL) return NULL;
  for (int i = 0; i < seen->ndbs; i++)
    if (!strcmp(seen->dbs[i], db)) return pgs_config_find_database(seen->next, db);
  return NULL;
}

void pgs_hold_tick(uint64_t now) {
  if (__atomic_load_n(&active_gen, __ATOMIC_ACQUIRE) == 0) return;
  uv_mutex_lock(&hold_lock);
  bool due = current && now >= hold_deadline_ms;
  uv_mutex_unlock(&hold_lock);
  if (due) (void)pgs_hold_end("timeout");
}

void pgs_hold_thread_done(void) {
  content_unref(seen);
  seen = NULL;
}

bool pgs_hold_info(pgs_hold_info_t *out) {
  memset(out, 0, sizeof(*out));
  if (__atomic_load_n(&active_gen, __ATOMIC_ACQUIRE) == 0) return false;
  uv_mutex_lock(&hold_lock);
  bool active = current != NULL;
  if (active) {
    out->gen = __atomic_load_n(&active_gen, __ATOMIC_RELAXED);
    snprintf(out->path, sizeof(out->path), "%s", hold_path);
    out->since = hold_since;
    out->since_ms = hold_since_ms;
    out->deadline_ms = hold_deadline_ms;
    out->ndbs = current->ndbs;
    out->dbs = pgs_xcalloc((size_t)(out->ndbs ? out->ndbs : 1), sizeof(*out->dbs));
    memcpy(out->dbs, current->dbs, sizeof(*out->dbs) * (size_t)out->ndbs);
  }
  uv_mutex_unlock(&hold_lock);
  return active;
}

void pgs_hold_reload_ask(void) { __atomic_add_fetch(&reloads_asked, 1, __ATOMIC_ACQ_REL); }

uint64_t pgs_hold_reloads_asked(void) { return __atomic_load_n(&reloads_asked, __ATOMIC_ACQUIRE); }

void pgs_hold_reloads_done(uint64_t asked) {
  __atomic_store_n(&reloads_done, asked, __ATOMIC_RELEASE);
}

bool pgs_hold_reloads_pending(void) {
  return __atomic_load_n(&reloads_done, __ATOMIC_ACQUIRE) <
         __atomic_load_n(&reloads_asked, __ATOMIC_ACQUIRE);
}
