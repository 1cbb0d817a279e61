/*
 * pgshardctl.c — the DBA and lab CLI: command dispatch.
 */
#include <stdint.h>
#include <string.h>

#include "pgshard/config.h"

#include "ctl.h"

/* Errors in line order (the parser finds some only once the file is read);
 * errors tied to no line come last. */
static int error_order(const void *pa, const void *pb) {
  const pgs_config_error_t *a = *(pgs_config_error_t *const *)pa;
  const pgs_config_error_t *b = *(pgs_config_error_t *const *)pb;
  int la = a->line > 0 ? a->line : INT32_MAX, lb = b->line > 0 ? b->line : INT32_MAX;
  if (la != lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b; /* stable: the order they were found in */
}

static int cmd_check(int argc, char **argv) {
  if (argc != 1) {
    fprintf(stderr, "usage: pgshardctl check FILE\n");
    return 2;
  }
  pgs_config_t *config = pgs_config_load(argv[0]);
  pgs_config_error_t **sorted = pgs_xcalloc((size_t)config->nerrors + 1, sizeof(*sorted));
  for (int i = 0; i < config->nerrors; i++) sorted[i] = &config->errors[i];
  qsort(sorted, (size_t)config->nerrors, sizeof(*sorted), error_order);
  for (int i = 0; i < config->nerrors; i++) {
    if (sorted[i]->line > 0)
      printf("%s:%d: %s\n", argv[0], sorted[i]->line, sorted[i]->message);
    else
      printf("%s: %s\n", argv[0], sorted[i]->message);
  }
  free(sorted);
  for (int i = 0; i < config->nwarnings; i++)
    printf("%s:%d: warning: %s\n", argv[0], config->warnings[i].line, config->warnings[i].message);
  int rc = config->nerrors ? 1 : 0;
  if (rc == 0) printf("%s: OK\n", argv[0]);
  pgs_config_unref(config);
  return rc;
}

static void usage(void) {
  fprintf(stderr,
          "usage: pgshardctl check FILE\n"
          "       pgshardctl route [-v] [--stdin] FILE DATABASE TABLE [KEY]\n"
          "       pgshardctl diff [--exit-code] OLD NEW\n"
          "       pgshardctl reshard plan|start|status|cutover|cleanup|abort OLD NEW [options]\n"
          "       pgshardctl map push|show|status|wait ... [--source CONNINFO | -c CONFIG]\n"
          "       pgshardctl lab up|status|down|lag -c FILE [--dir DIR] ...\n"
          "       (pgshardctl lab --help for details)\n");
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "check")) return cmd_check(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "route")) return pgs_ctl_route(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "diff")) return pgs_ctl_diff(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "lab")) return pgs_ctl_lab(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "reshard")) return pgs_ctl_reshard(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "map")) return pgs_ctl_map(argc - 2, argv + 2);
  usage();
  return 2;
}
