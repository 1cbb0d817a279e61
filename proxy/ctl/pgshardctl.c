/*
 * pgshardctl.c — the DBA and lab CLI: command dispatch.
 */
#include <string.h>

#include "pgshard/config.h"

#include "ctl.h"

static int cmd_check(int argc, char **argv) {
  if (argc != 1) {
    fprintf(stderr, "usage: pgshardctl check FILE\n");
    return 2;
  }
  pgs_config_t *config = pgs_config_load(argv[0]);
  for (int i = 0; i < config->nerrors; i++) {
    if (config->errors[i].line > 0)
      printf("%s:%d: %s\n", argv[0], config->errors[i].line, config->errors[i].message);
    else
      printf("%s: %s\n", argv[0], config->errors[i].message);
  }
  int rc = config->nerrors ? 1 : 0;
  if (rc == 0) printf("%s: OK\n", argv[0]);
  pgs_config_unref(config);
  return rc;
}

static void usage(void) {
  fprintf(stderr,
          "usage: pgshardctl check FILE\n"
          "       pgshardctl lab up|status|down|lag -c FILE [--dir DIR] ...\n"
          "       (pgshardctl lab --help for details)\n");
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "check")) return cmd_check(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "lab")) return pgs_ctl_lab(argc - 2, argv + 2);
  usage();
  return 2;
}
