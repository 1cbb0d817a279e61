/*
 * auth.h — password verification for client logins: md5 and SCRAM-SHA-256
 * (RFC 5802 / RFC 7677, server side), with SCRAM-SHA-256-PLUS channel
 * binding (tls-server-end-point, RFC 5929) over TLS, built on OpenSSL.
 * Pure computation: the proxy moves the bytes, this module checks them.
 *
 * A user's configured password may be plain text, an "md5<32 hex>" hash
 * (md5 auth only) or a "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"
 * secret as PostgreSQL stores it (scram auth only).
 *
 * SCRAM exchange, as the proxy drives it:
 *   pgs_scram_init(&s, password)             -> PGS_OK, or PGS_EUNSUPPORTED when
 *                                               the stored password cannot do SCRAM
 *   over TLS, SCRAM-SHA-256-PLUS offered too; the client picks one:
 *   pgs_scram_channel_binding(&s, plus, data, len)
 *   client sends SASLInitialResponse(client-first-message)
 *   pgs_scram_server_first(&s, msg, len, out) -> server-first-message in OUT
 *   client sends SASLResponse(client-final-message)
 *   pgs_scram_server_final(&s, msg, len, out) -> PGS_OK and server-final ("v=...")
 *                                               in OUT, or PGS_EAUTH (wrong
 *                                               password) / PGS_EPROTO (malformed)
 */
#ifndef PGSHARD_AUTH_H
#define PGSHARD_AUTH_H

#include "pgshard/common.h"

#define PGS_SCRAM_KEY_LEN 32   /* SHA-256 */
#define PGS_SCRAM_NONCE_LEN 18 /* raw bytes of the server's nonce part */
#define PGS_SCRAM_ITERATIONS 4096
#define PGS_SCRAM_MAX_MESSAGE 1024
#define PGS_SCRAM_MAX_CBIND 64 /* channel binding data: a hash, SHA-512 at most */

typedef enum {
  PGS_SCRAM_STATE_INIT,       /* waiting for client-first-message */
  PGS_SCRAM_STATE_SENT_FIRST, /* server-first sent, waiting for client-final */
  PGS_SCRAM_STATE_DONE,       /* verified */
  PGS_SCRAM_STATE_FAILED,
} pgs_scram_state_t;

typedef struct pgs_scram {
  pgs_scram_state_t state;
  int iterations;
  uint8_t salt[64];
  size_t salt_len;
  uint8_t stored_key[PGS_SCRAM_KEY_LEN];
  uint8_t server_key[PGS_SCRAM_KEY_LEN];
  /* Kept between the two round trips for the AuthMessage. */
  char client_first_bare[PGS_SCRAM_MAX_MESSAGE];
  char server_first[PGS_SCRAM_MAX_MESSAGE];
  char nonce[128]; /* client nonce + server nonce, as sent */
  char cbind_flag; /* gs2 flag of client-first ('n', 'y' or 'p'), echoed in client-final */
  /* Channel binding: the data of the connection (cbind_len 0: not TLS, the
   * PLUS mechanism was not offered) and whether the client picked PLUS. */
  bool plus;
  uint8_t cbind_data[PGS_SCRAM_MAX_CBIND];
  size_t cbind_len;
} pgs_scram_t;

/* Prepare a SCRAM exchange for a user whose configured password is PASSWORD
 * (plain text: a random salt is drawn; SCRAM secret: its salt and keys are
 * used). PGS_EUNSUPPORTED for an md5 hash; PGS_EINVAL for an empty password
 * or a "SCRAM-SHA-256$" secret that does not parse. */
pgs_status_t pgs_scram_init(pgs_scram_t *scram, const char *password) PGS_MUST_USE;

/* Test hook: like pgs_scram_init but with a fixed salt and server nonce, so
 * RFC test vectors can be checked. SALT and ITERATIONS apply to a plain-text
 * password only (a secret brings its own); SERVER_NONCE is printable ASCII
 * without ',' and at most 64 characters. */
pgs_status_t pgs_scram_init_fixed(pgs_scram_t *scram, const char *password, const uint8_t *salt,
                                  size_t salt_len, int iterations,
                                  const char *server_nonce) PGS_MUST_USE;

/* After pgs_scram_init, before client-first: the connection's
 * tls-server-end-point data DATA (LEN bytes; LEN 0: no TLS, only
 * SCRAM-SHA-256 was offered) and whether the client chose
 * SCRAM-SHA-256-PLUS. PostgreSQL's rules follow: PLUS needs the gs2 flag
 * "p=tls-server-end-point" and the same data echoed in client-final; a
 * flag "y" (the client could bind but thinks the server cannot) is refused
 * when PLUS was offered, as a downgrade. PGS_EINVAL for PLUS without data
 * or LEN over PGS_SCRAM_MAX_CBIND. */
pgs_status_t pgs_scram_channel_binding(pgs_scram_t *scram, bool plus, const uint8_t *data,
                                       size_t len) PGS_MUST_USE;

/* Room for any secret pgs_scram_make_secret writes, with its NUL (133
 * characters and the NUL at 4096 iterations and a 16-byte salt). */
#define PGS_SCRAM_SECRET_SIZE 160

/* Make a stored secret from the plain-text PASSWORD the way PostgreSQL does
 * (a random 16-byte salt, PGS_SCRAM_ITERATIONS):
 * "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>", base64, written with a
 * NUL into OUT (OUTCAP bytes; PGS_SCRAM_SECRET_SIZE is enough). pgs_scram_init
 * on the secret accepts the same password as on PASSWORD itself, without
 * running PBKDF2 per login. PGS_EUNSUPPORTED for an md5 hash; PGS_EINVAL for
 * an empty or over-long password, one that already is a "SCRAM-SHA-256$"
 * secret, or OUT too small (OUT then holds ""). */
pgs_status_t pgs_scram_make_secret(const char *password, char *out, size_t outcap) PGS_MUST_USE;

/* Consume client-first-message (MSG, LEN bytes, not NUL-terminated); write a
 * NUL-terminated server-first-message into OUT (OUTCAP bytes). */
pgs_status_t pgs_scram_server_first(pgs_scram_t *scram, const char *msg, size_t len, char *out,
                                    size_t outcap) PGS_MUST_USE;

/* Consume client-final-message; verify the proof; write server-final into OUT. */
pgs_status_t pgs_scram_server_final(pgs_scram_t *scram, const char *msg, size_t len, char *out,
                                    size_t outcap) PGS_MUST_USE;

/* Wipe the keys, nonces and messages of an exchange (done or abandoned):
 * every byte zero, state PGS_SCRAM_STATE_FAILED, so it cannot go on. */
void pgs_scram_clear(pgs_scram_t *scram);
/* pgs_scram_clear, then free (a heap-allocated exchange; NULL is fine). */
void pgs_scram_free(pgs_scram_t *scram);

/* md5 auth: true when RESPONSE ("md5" + 32 hex, as sent in PasswordMessage) is
 * right for USER with configured PASSWORD (plain or "md5..." hash) and SALT. */
bool pgs_md5_verify(const char *user, const char *password, const uint8_t salt[4],
                    const char *response);

/* Fill BUF with LEN cryptographically random bytes. */
pgs_status_t pgs_random_bytes(void *buf, size_t len) PGS_MUST_USE;

#endif
