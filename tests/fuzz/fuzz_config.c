/*
 * fuzz_config.c — libFuzzer harness for the config parser (router/config.c
 * over inih): arbitrary text in, a config out that is walked and freed.
 * AddressSanitizer's leak check makes every lost allocation a finding.
 */
#include <stdint.h>
#include <string.h>

#include "pgshard/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = pgs_xmalloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';

  pgs_config_t *config = pgs_config_parse_string(text);
  /* What the proxy reads after a parse: every name findable, every error
   * message a string. */
  for (int i = 0; i < config->nusers; i++)
    if (pgs_config_find_user(config, config->users[i].name) != &config->users[i]) abort();
  for (int i = 0; i < config->ndatabases; i++) {
    const pgs_database_t *db = &config->databases[i];
    if (pgs_config_find_database(config, db->name) != db) abort();
    for (int s = 0; s < db->nshards; s++)
      if (db->shards[s].has_primary && db->shards[s].primary.host == NULL) abort();
    /* The slot table is always there, every entry a shard of DB. */
    if (db->slot_shard == NULL) abort();
    for (int slot = 0; slot < PGS_HASH_SLOTS && db->nshards > 0; slot++)
      if (db->slot_shard[slot] < 0 || db->slot_shard[slot] >= db->nshards) abort();
  }
  for (int i = 0; i < config->nerrors; i++)
    if (config->errors[i].message == NULL || config->errors[i].line < 0) abort();
  pgs_config_unref(config);
  free(text);
  return 0;
}
