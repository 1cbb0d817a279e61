/*
 * fuzz_scram.c — libFuzzer harness for the server side of SCRAM-SHA-256 and
 * md5 verification (router/auth.c).
 *
 * Input: client-first-message, '\n', client-final-message; without a '\n'
 * the whole input is client-first. Both run against one exchange prepared
 * once from the RFC 7677 password, salt and server nonce (PBKDF2 per input
 * would starve the fuzzer), so a corpus entry holding the RFC's messages
 * gets past every check to the proof and succeeds. Each input runs three
 * times: without TLS, over TLS with SCRAM-SHA-256 chosen, and with
 * SCRAM-SHA-256-PLUS chosen (fixed channel binding data). The input is also
 * tried as the body of a stored "SCRAM-SHA-256$" secret and as an md5
 * response.
 */
#include <stdint.h>
#include <string.h>

#include "pgshard/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t rfc_salt[] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                   0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};

/* CBIND: 0 no TLS, 1 PLUS offered but not chosen, 2 PLUS chosen. */
static void try_exchange(const uint8_t *data, size_t size, int cbind) {
  static const uint8_t end_point[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                        12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                        23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  static pgs_scram_t prepared;
  static bool ready;
  if (!ready) {
    if (pgs_scram_init_fixed(&prepared, "pencil", rfc_salt, sizeof(rfc_salt), 4096,
                             "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0") != PGS_OK)
      abort();
    ready = true;
  }
  pgs_scram_t scram = prepared;
  char out[PGS_SCRAM_MAX_MESSAGE];
  if (cbind > 0 &&
      pgs_scram_channel_binding(&scram, cbind == 2, end_point, sizeof(end_point)) != PGS_OK)
    abort();
  const uint8_t *newline = memchr(data, '\n', size);
  size_t first_len = newline ? (size_t)(newline - data) : size;

  pgs_status_t status =
      pgs_scram_server_first(&scram, (const char *)data, first_len, out, sizeof(out));
  if (status == PGS_OK && strlen(out) >= sizeof(out)) abort();
  if (status == PGS_OK && newline) {
    status = pgs_scram_server_final(&scram, (const char *)newline + 1, size - first_len - 1, out,
                                    sizeof(out));
    if (status == PGS_OK && (scram.state != PGS_SCRAM_STATE_DONE || strncmp(out, "v=", 2) != 0))
      abort();
  }
  if (status != PGS_OK && scram.state != PGS_SCRAM_STATE_FAILED) abort();
  pgs_scram_clear(&scram);
}

static void try_secret_and_md5(const uint8_t *data, size_t size) {
  static const char prefix[] = "SCRAM-SHA-256$";
  static const uint8_t salt[4] = {1, 2, 3, 4};
  char text[sizeof(prefix) + 512];
  if (size > 512 || memchr(data, '\0', size)) return;

  memcpy(text, prefix, sizeof(prefix) - 1);
  memcpy(text + sizeof(prefix) - 1, data, size);
  text[sizeof(prefix) - 1 + size] = '\0';
  /* A secret parses or is refused; no PBKDF2 runs either way. */
  pgs_scram_t scram;
  pgs_status_t status = pgs_scram_init_fixed(&scram, text, NULL, 0, 0, "nonce");
  if (status != PGS_OK && status != PGS_EINVAL) abort();

  /* Only the one right answer may pass: md5(md5("pencil" "user") || salt). */
  const char *input = text + sizeof(prefix) - 1;
  if (pgs_md5_verify("user", "pencil", salt, input) &&
      strcmp(input, "md54376eb6913b38f9aaff38dc7cf19ca76") != 0)
    abort();
  /* The input as the configured password (plain, md5 hash or secret). */
  if (pgs_md5_verify("user", input, salt, "md54376eb6913b38f9aaff38dc7cf19ca76") &&
      strcmp(input, "pencil") != 0 && strcmp(input, "md520c46e3762c864548e296b33c3406aa9") != 0)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int cbind = 0; cbind < 3; cbind++) try_exchange(data, size, cbind);
  try_secret_and_md5(data, size);
  return 0;
}
