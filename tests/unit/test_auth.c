/*
 * test_auth.c — router/auth.c: the RFC 7677 SCRAM-SHA-256 vector, whole
 * exchanges against a client side computed here with OpenSSL (plain-text
 * passwords, stored secrets, secrets made by pgs_scram_make_secret), wrong
 * passwords, every kind of malformed message and misuse of the exchange's
 * states, and md5 verification.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "pgshard/auth.h"

/* RFC 7677 section 3. */
#define RFC_PASSWORD "pencil"
#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_NONCE RFC_CLIENT_NONCE RFC_SERVER_NONCE
#define RFC_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_CLIENT_FIRST "n,,n=user,r=" RFC_CLIENT_NONCE
#define RFC_SERVER_FIRST "r=" RFC_NONCE ",s=" RFC_SALT ",i=4096"
#define RFC_PROOF "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_NONCE ",p=" RFC_PROOF
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* The same password as PostgreSQL would store it (computed independently). */
#define RFC_SECRET                                                                                 \
  "SCRAM-SHA-256$4096:" RFC_SALT                                                                   \
  "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"                                                 \
  "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

#define OUT_SIZE 512

static const uint8_t rfc_salt[] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                   0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};

/* ---- a client side, written independently of router/auth.c ---- */

typedef struct client {
  const char *password;
  char first_bare[256];
  char nonce[160]; /* full nonce from server-first */
  uint8_t salted[32];
  uint8_t server_signature[32];
  uint8_t salt[64];
  int salt_len;
  int iterations;
} client_t;

static void b64(const uint8_t *in, size_t len, char *out) {
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

static int unb64(const char *in, uint8_t *out) {
  size_t len = strlen(in);
  int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
  assert_true(n >= 0);
  if (len >= 1 && in[len - 1] == '=') n--;
  if (len >= 2 && in[len - 2] == '=') n--;
  return n;
}

static void hmac(const uint8_t *key, const char *data, size_t len, uint8_t out[32]) {
  unsigned int outlen;
  assert_non_null(HMAC(EVP_sha256(), key, 32, (const unsigned char *)data, len, out, &outlen));
}

static void client_first(client_t *cl, const char *gs2, const char *nonce, char *out) {
  snprintf(cl->first_bare, sizeof(cl->first_bare), "n=,r=%s", nonce);
  sprintf(out, "%s%s", gs2, cl->first_bare);
}

/* Parse SERVER_FIRST, check it extends CLIENT_NONCE, and write client-final
 * (channel binding CBIND, optional EXTENSION before the proof) into OUT. */
static void client_final(client_t *cl, const char *client_nonce, const char *server_first,
                         const char *cbind, const char *extension, char *out) {
  char salt64[128];
  assert_int_equal(
      sscanf(server_first, "r=%159[^,],s=%127[^,],i=%d", cl->nonce, salt64, &cl->iterations), 3);
  assert_memory_equal(cl->nonce, client_nonce, strlen(client_nonce));
  assert_true(strlen(cl->nonce) > strlen(client_nonce));
  cl->salt_len = unb64(salt64, cl->salt);

  uint8_t client_key[32], stored_key[32], server_key[32], signature[32], proof[32];
  assert_int_equal(PKCS5_PBKDF2_HMAC(cl->password, (int)strlen(cl->password), cl->salt,
                                     cl->salt_len, cl->iterations, EVP_sha256(), 32, cl->salted),
                   1);
  hmac(cl->salted, "Client Key", 10, client_key);
  unsigned int len;
  assert_int_equal(EVP_Digest(client_key, 32, stored_key, &len, EVP_sha256(), NULL), 1);
  hmac(cl->salted, "Server Key", 10, server_key);

  char without_proof[512], auth_message[1024];
  snprintf(without_proof, sizeof(without_proof), "c=%s,r=%s%s%s", cbind, cl->nonce,
           extension ? "," : "", extension ? extension : "");
  int n = snprintf(auth_message, sizeof(auth_message), "%s,%s,%s", cl->first_bare, server_first,
                   without_proof);
  hmac(stored_key, auth_message, (size_t)n, signature);
  for (int i = 0; i < 32; i++) proof[i] = client_key[i] ^ signature[i];
  hmac(server_key, auth_message, (size_t)n, cl->server_signature);

  char proof64[64];
  b64(proof, 32, proof64);
  sprintf(out, "%s,p=%s", without_proof, proof64);
}

static void check_server_final(const client_t *cl, const char *server_final) {
  char expected[64];
  strcpy(expected, "v=");
  b64(cl->server_signature, 32, expected + 2);
  assert_string_equal(server_final, expected);
}

/* A whole exchange against SCRAM, already initialised, with the client side
 * above using PASSWORD. Returns the status of server_final. */
static pgs_status_t run_exchange(pgs_scram_t *scram, const char *password, const char *gs2,
                                 const char *cbind, const char *extension) {
  client_t cl = {.password = password};
  char msg[OUT_SIZE], out[OUT_SIZE];
  const char *client_nonce = "fyko+d2lbbFgONRv9qkxdawL";
  client_first(&cl, gs2, client_nonce, msg);
  assert_int_equal(pgs_scram_server_first(scram, msg, strlen(msg), out, sizeof(out)), PGS_OK);
  assert_int_equal(scram->state, PGS_SCRAM_STATE_SENT_FIRST);
  client_final(&cl, client_nonce, out, cbind, extension, msg);
  out[0] = '\0';
  pgs_status_t status = pgs_scram_server_final(scram, msg, strlen(msg), out, sizeof(out));
  if (status == PGS_OK) {
    check_server_final(&cl, out);
    assert_int_equal(scram->state, PGS_SCRAM_STATE_DONE);
  } else {
    assert_int_equal(scram->state, PGS_SCRAM_STATE_FAILED);
  }
  return status;
}

/* ---- RFC 7677 ---- */

static void rfc_exchange(pgs_scram_t *scram) {
  char out[OUT_SIZE];
  assert_int_equal(
      pgs_scram_server_first(scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_OK);
  assert_string_equal(out, RFC_SERVER_FIRST);
  assert_int_equal(
      pgs_scram_server_final(scram, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out, sizeof(out)),
      PGS_OK);
  assert_string_equal(out, RFC_SERVER_FINAL);
  assert_int_equal(scram->state, PGS_SCRAM_STATE_DONE);
}

static void test_rfc7677_plain(void **state) {
  pgs_scram_t scram;
  assert_int_equal(pgs_scram_init_fixed(&scram, RFC_PASSWORD, rfc_salt, sizeof(rfc_salt), 4096,
                                        RFC_SERVER_NONCE),
                   PGS_OK);
  assert_int_equal(scram.state, PGS_SCRAM_STATE_INIT);
  rfc_exchange(&scram);
  pgs_scram_clear(&scram);
  assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);
}

/* After a complete exchange the state holds the keys, salt, nonces and
 * messages; pgs_scram_clear leaves not one byte of them, and the heap
 * version frees a cleared state (and takes NULL). */
static void test_clear_wipes_every_byte(void **state) {
  pgs_scram_t scram;
  assert_int_equal(pgs_scram_init_fixed(&scram, RFC_PASSWORD, rfc_salt, sizeof(rfc_salt), 4096,
                                        RFC_SERVER_NONCE),
                   PGS_OK);
  rfc_exchange(&scram);
  static const uint8_t zero[PGS_SCRAM_KEY_LEN];
  assert_memory_not_equal(scram.stored_key, zero, sizeof(zero));
  assert_memory_not_equal(scram.server_key, zero, sizeof(zero));
  assert_true(strlen(scram.nonce) > 0 && strlen(scram.client_first_bare) > 0 &&
              strlen(scram.server_first) > 0);

  pgs_scram_clear(&scram);
  pgs_scram_t expect;
  memset(&expect, 0, sizeof(expect));
  expect.state = PGS_SCRAM_STATE_FAILED;
  assert_memory_equal(&scram, &expect, sizeof(scram));

  pgs_scram_t *heap = malloc(sizeof(*heap));
  assert_non_null(heap);
  assert_int_equal(
      pgs_scram_init_fixed(heap, RFC_PASSWORD, rfc_salt, sizeof(rfc_salt), 4096, RFC_SERVER_NONCE),
      PGS_OK);
  rfc_exchange(heap);
  pgs_scram_free(heap);
  pgs_scram_free(NULL);
}

static void test_rfc7677_secret(void **state) {
  pgs_scram_t scram;
  /* A secret brings its own salt and iteration count. */
  assert_int_equal(pgs_scram_init_fixed(&scram, RFC_SECRET, NULL, 0, 0, RFC_SERVER_NONCE), PGS_OK);
  assert_int_equal(scram.iterations, 4096);
  assert_int_equal(scram.salt_len, sizeof(rfc_salt));
  assert_memory_equal(scram.salt, rfc_salt, sizeof(rfc_salt));
  rfc_exchange(&scram);
}

/* The RFC's proof checked by the test's own client, so that the helper the
 * other tests rely on is itself right. */
static void test_client_helper_matches_rfc(void **state) {
  client_t cl = {.password = RFC_PASSWORD};
  char msg[OUT_SIZE];
  client_first(&cl, "n,,", RFC_CLIENT_NONCE, msg);
  strcpy(cl.first_bare, "n=user,r=" RFC_CLIENT_NONCE);
  client_final(&cl, RFC_CLIENT_NONCE, RFC_SERVER_FIRST, "biws", NULL, msg);
  assert_string_equal(msg, RFC_CLIENT_FINAL);
  check_server_final(&cl, RFC_SERVER_FINAL);
}

/* ---- whole exchanges ---- */

static void test_exchange_plain(void **state) {
  pgs_scram_t scram;
  char msg[OUT_SIZE], out[OUT_SIZE];
  assert_int_equal(pgs_scram_init(&scram, "correct horse battery staple"), PGS_OK);

  /* server-first as PostgreSQL makes it: 18 random bytes of nonce in base64
   * after the client's, a 16-byte salt, 4096 iterations. */
  strcpy(msg, "n,,n=,r=abc");
  assert_int_equal(pgs_scram_server_first(&scram, msg, strlen(msg), out, sizeof(out)), PGS_OK);
  char nonce[160], salt64[128];
  int iterations;
  assert_int_equal(sscanf(out, "r=%159[^,],s=%127[^,],i=%d", nonce, salt64, &iterations), 3);
  assert_int_equal(strncmp(nonce, "abc", 3), 0);
  assert_int_equal(strlen(nonce), 3 + 24);
  uint8_t salt[64];
  assert_int_equal(unb64(salt64, salt), 16);
  assert_int_equal(iterations, PGS_SCRAM_ITERATIONS);

  assert_int_equal(pgs_scram_init(&scram, "correct horse battery staple"), PGS_OK);
  assert_int_equal(run_exchange(&scram, "correct horse battery staple", "n,,", "biws", NULL),
                   PGS_OK);
}

static void test_exchange_is_random(void **state) {
  pgs_scram_t a, b;
  char out_a[OUT_SIZE], out_b[OUT_SIZE];
  assert_int_equal(pgs_scram_init(&a, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_init(&b, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_server_first(&a, "n,,n=,r=x", 9, out_a, sizeof(out_a)), PGS_OK);
  assert_int_equal(pgs_scram_server_first(&b, "n,,n=,r=x", 9, out_b, sizeof(out_b)), PGS_OK);
  assert_string_not_equal(out_a, out_b);
  assert_memory_not_equal(a.salt, b.salt, a.salt_len);

  uint8_t r1[32], r2[32];
  assert_int_equal(pgs_random_bytes(r1, sizeof(r1)), PGS_OK);
  assert_int_equal(pgs_random_bytes(r2, sizeof(r2)), PGS_OK);
  assert_memory_not_equal(r1, r2, sizeof(r1));
  assert_int_equal(pgs_random_bytes(r1, 0), PGS_OK);
}

/* Make a stored secret the way PostgreSQL does, with the test's own code,
 * from a given 16-byte SALT. */
static void make_secret_with_salt(const char *password, const uint8_t salt[16], char *out) {
  uint8_t salted[32], client_key[32], stored_key[32], server_key[32];
  char salt64[32], stored64[48], server64[48];
  unsigned int len;
  assert_int_equal(
      PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, 16, 4096, EVP_sha256(), 32, salted),
      1);
  hmac(salted, "Client Key", 10, client_key);
  assert_int_equal(EVP_Digest(client_key, 32, stored_key, &len, EVP_sha256(), NULL), 1);
  hmac(salted, "Server Key", 10, server_key);
  b64(salt, 16, salt64);
  b64(stored_key, 32, stored64);
  b64(server_key, 32, server64);
  sprintf(out, "SCRAM-SHA-256$4096:%s$%s:%s", salt64, stored64, server64);
}

static void make_secret(const char *password, char *out) {
  uint8_t salt[16];
  assert_int_equal(pgs_random_bytes(salt, sizeof(salt)), PGS_OK);
  make_secret_with_salt(password, salt, out);
}

static void test_exchange_secret(void **state) {
  char secret[256];
  pgs_scram_t scram;
  make_secret("s3cr3t", secret);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, "s3cr3t", "n,,", "biws", NULL), PGS_OK);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, "s3cr3T", "n,,", "biws", NULL), PGS_EAUTH);
  /* The secret's text is not a password. */
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, secret, "n,,", "biws", NULL), PGS_EAUTH);
}

/* pgs_scram_make_secret: the secret the test's own code makes from the same
 * salt, and one pgs_scram_init takes for the password it was made from. */
static void test_make_secret(void **state) {
  char secret[PGS_SCRAM_SECRET_SIZE], other[PGS_SCRAM_SECRET_SIZE], expected[256];
  assert_int_equal(pgs_scram_make_secret("correct horse", secret, sizeof(secret)), PGS_OK);

  char salt64[64], stored64[64], server64[64];
  assert_int_equal(
      sscanf(secret, "SCRAM-SHA-256$4096:%63[^$]$%63[^:]:%63s", salt64, stored64, server64), 3);
  assert_int_equal(strlen(salt64), 24);
  assert_int_equal(strlen(stored64), 44);
  assert_int_equal(strlen(server64), 44);
  assert_int_equal(strlen(secret), 133);
  uint8_t salt[64];
  assert_int_equal(unb64(salt64, salt), 16);
  make_secret_with_salt("correct horse", salt, expected);
  assert_string_equal(secret, expected);

  /* A fresh salt each time. */
  assert_int_equal(pgs_scram_make_secret("correct horse", other, sizeof(other)), PGS_OK);
  assert_string_not_equal(secret, other);

  pgs_scram_t scram;
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, "correct horse", "n,,", "biws", NULL), PGS_OK);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, "correct horsE", "n,,", "biws", NULL), PGS_EAUTH);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, "", "n,,", "biws", NULL), PGS_EAUTH);
  assert_int_equal(pgs_scram_init(&scram, other), PGS_OK);
  assert_int_equal(run_exchange(&scram, "correct horse", "y,,", "eSws", NULL), PGS_OK);

  /* "md5abc" is not an md5 hash, so it is a password like any other. */
  assert_int_equal(pgs_scram_make_secret("md5abc", secret, sizeof(secret)), PGS_OK);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(run_exchange(&scram, "md5abc", "n,,", "biws", NULL), PGS_OK);
}

static void test_make_secret_rejects(void **state) {
  char out[PGS_SCRAM_SECRET_SIZE];
  strcpy(out, "stale");
  assert_int_equal(pgs_scram_make_secret(NULL, out, sizeof(out)), PGS_EINVAL);
  assert_string_equal(out, "");
  assert_int_equal(pgs_scram_make_secret("", out, sizeof(out)), PGS_EINVAL);
  assert_int_equal(pgs_scram_make_secret("md5"
                                         "0123456789abcdef0123456789abcdef",
                                         out, sizeof(out)),
                   PGS_EUNSUPPORTED);
  assert_int_equal(pgs_scram_make_secret(RFC_SECRET, out, sizeof(out)), PGS_EINVAL);
  assert_int_equal(pgs_scram_make_secret("SCRAM-SHA-256$", out, sizeof(out)), PGS_EINVAL);
  assert_string_equal(out, "");

  char huge[PGS_MAX_PASSWORD + 1];
  memset(huge, 'x', PGS_MAX_PASSWORD);
  huge[PGS_MAX_PASSWORD] = '\0';
  assert_int_equal(pgs_scram_make_secret(huge, out, sizeof(out)), PGS_EINVAL);

  /* OUT must hold the 133 characters and the NUL; a short one is left "". */
  memset(out, 'z', sizeof(out));
  assert_int_equal(pgs_scram_make_secret("pw", out, 133), PGS_EINVAL);
  assert_string_equal(out, "");
  assert_int_equal(pgs_scram_make_secret("pw", out, 134), PGS_OK);
  assert_int_equal(strlen(out), 133);
  assert_int_equal(pgs_scram_make_secret("pw", NULL, 134), PGS_EINVAL);
  assert_int_equal(pgs_scram_make_secret("pw", out, 0), PGS_EINVAL);
}

static void test_exchange_y_flag_and_extensions(void **state) {
  pgs_scram_t scram;
  /* "y,,": the client could bind but thinks the server cannot; c= echoes it. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", "y,,", "eSws", NULL), PGS_OK);
  /* Dropping or changing the flag between the messages is refused. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", "y,,", "biws", NULL), PGS_EPROTO);
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", "n,,", "eSws", NULL), PGS_EPROTO);
  /* Optional extensions before the proof are ignored but signed. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", "n,,", "biws", "x=ext,Y=2"), PGS_OK);

  /* Extensions after the nonce of client-first are ignored too, and the
   * username attribute is ignored whatever it holds. */
  char out[OUT_SIZE];
  static const char first[] = "n,,n=someone=2Celse,r=abc,x=1,z=";
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_server_first(&scram, first, strlen(first), out, sizeof(out)), PGS_OK);
}

/* SCRAM-SHA-256-PLUS: c= is base64("p=tls-server-end-point,," + data). */
static void cbind_value(const uint8_t *data, size_t len, char *out) {
  uint8_t input[128];
  static const char header[] = "p=tls-server-end-point,,";
  memcpy(input, header, sizeof(header) - 1);
  memcpy(input + sizeof(header) - 1, data, len);
  b64(input, sizeof(header) - 1 + len, out);
}

static void test_channel_binding(void **state) {
  pgs_scram_t scram;
  uint8_t data[32], other[32];
  for (int i = 0; i < 32; i++) {
    data[i] = (uint8_t)(i * 7 + 1);
    other[i] = (uint8_t)(i * 7 + 2);
  }
  char good[128], wrong[128];
  cbind_value(data, sizeof(data), good);
  cbind_value(other, sizeof(other), wrong);
  static const char plus_gs2[] = "p=tls-server-end-point,,";

  /* PLUS chosen, the connection's data echoed: logged in. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, true, data, sizeof(data)), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", plus_gs2, good, NULL), PGS_OK);
  /* Another connection's data (a man in the middle relaying): refused. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, true, data, sizeof(data)), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", plus_gs2, wrong, NULL), PGS_EPROTO);
  /* The header alone, without the data: refused. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, true, data, sizeof(data)), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", plus_gs2, "cD10bHMtc2VydmVyLWVuZC1wb2ludCws", NULL),
                   PGS_EPROTO);
  /* Offered over TLS but not chosen: plain SCRAM with "n" still works. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, false, data, sizeof(data)), PGS_OK);
  assert_int_equal(run_exchange(&scram, "pw", "n,,", "biws", NULL), PGS_OK);

  char out[OUT_SIZE];
  static const char *const refused_first[] = {
      "y,,n=,r=abc",                     /* could bind, saw no PLUS: it was stripped */
      "p=tls-unique,,n=,r=abc",          /* another binding type */
      "p=tls-server-end-point,n=,r=abc", /* */
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(refused_first); i++) {
    assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
    assert_int_equal(pgs_scram_channel_binding(&scram, false, data, sizeof(data)), PGS_OK);
    if (i > 0)
      assert_int_equal(pgs_scram_channel_binding(&scram, true, data, sizeof(data)), PGS_OK);
    const char *m = refused_first[i];
    assert_int_equal(pgs_scram_server_first(&scram, m, strlen(m), out, sizeof(out)), PGS_EPROTO);
  }
  /* PLUS chosen but the message does not bind; binding without PLUS. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, true, data, sizeof(data)), PGS_OK);
  assert_int_equal(pgs_scram_server_first(&scram, "n,,n=,r=abc", 11, out, sizeof(out)), PGS_EPROTO);
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(
      pgs_scram_server_first(&scram, "p=tls-server-end-point,,n=,r=abc", 32, out, sizeof(out)),
      PGS_EPROTO);
  /* PLUS without data, too much data, or after client-first: misuse. */
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, true, NULL, 0), PGS_EINVAL);
  uint8_t big[PGS_SCRAM_MAX_CBIND + 1] = {0};
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, false, big, sizeof(big)), PGS_EINVAL);
  assert_int_equal(pgs_scram_init(&scram, "pw"), PGS_OK);
  assert_int_equal(pgs_scram_server_first(&scram, "n,,n=,r=abc", 11, out, sizeof(out)), PGS_OK);
  assert_int_equal(pgs_scram_channel_binding(&scram, false, data, sizeof(data)), PGS_EINVAL);
}

static void test_wrong_password(void **state) {
  pgs_scram_t scram;
  char out[OUT_SIZE];
  assert_int_equal(pgs_scram_init(&scram, "right"), PGS_OK);
  assert_int_equal(run_exchange(&scram, "wrong", "n,,", "biws", NULL), PGS_EAUTH);
  /* The exchange is over: nothing more is accepted. */
  assert_int_equal(
      pgs_scram_server_final(&scram, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out, sizeof(out)),
      PGS_EPROTO);

  /* A proof that is one bit off. */
  assert_int_equal(pgs_scram_init_fixed(&scram, RFC_PASSWORD, rfc_salt, sizeof(rfc_salt), 4096,
                                        RFC_SERVER_NONCE),
                   PGS_OK);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_OK);
  static const char off[] = "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=";
  assert_int_equal(pgs_scram_server_final(&scram, off, strlen(off), out, sizeof(out)), PGS_EAUTH);
  assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);
}

/* ---- malformed messages ---- */

static void rfc_init(pgs_scram_t *scram) {
  assert_int_equal(pgs_scram_init_fixed(scram, RFC_SECRET, NULL, 0, 0, RFC_SERVER_NONCE), PGS_OK);
}

static void expect_first(const char *msg, size_t len, pgs_status_t want) {
  pgs_scram_t scram;
  char out[OUT_SIZE];
  rfc_init(&scram);
  pgs_status_t got = pgs_scram_server_first(&scram, msg, len, out, sizeof(out));
  if (got != want)
    fail_msg("client-first \"%.*s\": %s, expected %s", (int)len, msg, pgs_status_str(got),
             pgs_status_str(want));
  if (want != PGS_OK) assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);
}

static void test_client_first_malformed(void **state) {
  static const char *const bad[] = {
      "n",                                /* no gs2 header */
      "n,",                               /* */
      "n,,",                              /* no bare message */
      "x,,n=,r=abc",                      /* unknown flag */
      "p=tls-server-end-point,,n=,r=abc", /* channel binding, PLUS not chosen */
      "p,,n=,r=abc",                      /* */
      "n,a=admin,n=,r=abc",               /* authzid */
      "n,x,n=,r=abc",                     /* */
      "n,,m=ext,n=,r=abc",                /* mandatory extension */
      "n,,r=abc",                         /* no username attribute */
      "n,,n=",                            /* no nonce */
      "n,,n=,",                           /* */
      "n,,n=,x=abc",                      /* */
      "n,,n=,r=",                         /* empty nonce */
      "n,,n=,r=ab c",                     /* unprintable nonce */
      "n,,n=,r=ab\x01",                   /* */
      "n,,n=,r=ab\x80",                   /* */
      "n,,n=,r=abc,",                     /* empty attribute at the end */
      "n,,n=,r=abc,,x=1",                 /* */
      "n,,n=,r=abc,1=x",                  /* extension name not a letter */
      "n,,n=,r=abc,xy",                   /* extension without '=' */
      "N,,n=,r=abc",                      /* */
      " n,,n=,r=abc",                     /* */
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) expect_first(bad[i], strlen(bad[i]), PGS_EPROTO);

  expect_first("", 0, PGS_EPROTO);
  expect_first("n,,n=,r=abc\0def", 15, PGS_EPROTO); /* NUL inside */
  expect_first("n,,n=,r=abc", 11, PGS_OK);
  expect_first("y,,n=user,r=abc", 15, PGS_OK);

  /* Oversize: a valid message padded past the cap by an ignored extension. */
  char big[PGS_SCRAM_MAX_MESSAGE + 2];
  int n = snprintf(big, sizeof(big), "n,,n=,r=abc,x=");
  memset(big + n, 'a', sizeof(big) - 1 - (size_t)n);
  big[sizeof(big) - 1] = '\0';
  expect_first(big, PGS_SCRAM_MAX_MESSAGE + 1, PGS_EPROTO);
  expect_first(big, PGS_SCRAM_MAX_MESSAGE, PGS_OK);

  /* A client nonce too long to fit beside the server's. */
  char longnonce[200];
  n = snprintf(longnonce, sizeof(longnonce), "n,,n=,r=");
  memset(longnonce + n, 'a', 150);
  longnonce[n + 150] = '\0';
  expect_first(longnonce, strlen(longnonce), PGS_EPROTO);
  longnonce[n + 80] = '\0';
  expect_first(longnonce, strlen(longnonce), PGS_OK);
}

static void expect_final(const char *msg, size_t len, pgs_status_t want) {
  pgs_scram_t scram;
  char out[OUT_SIZE];
  rfc_init(&scram);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_OK);
  out[0] = '\0';
  pgs_status_t got = pgs_scram_server_final(&scram, msg, len, out, sizeof(out));
  if (got != want)
    fail_msg("client-final \"%.*s\": %s, expected %s", (int)len, msg, pgs_status_str(got),
             pgs_status_str(want));
  if (want != PGS_OK) {
    assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);
    assert_string_equal(out, ""); /* nothing for the client on failure */
  }
}

static void test_client_final_malformed(void **state) {
  static const char *const bad[] = {
      "c=biws",
      "c=biws,r=" RFC_NONCE,                                             /* no proof */
      "c=biws,r=" RFC_NONCE ",",                                         /* */
      "c=biws,r=" RFC_NONCE ",p=",                                       /* empty proof */
      "r=" RFC_NONCE ",p=" RFC_PROOF,                                    /* no channel binding */
      "c=biws,p=" RFC_PROOF,                                             /* no nonce */
      "c=,r=" RFC_NONCE ",p=" RFC_PROOF,                                 /* */
      "c=eSws,r=" RFC_NONCE ",p=" RFC_PROOF,                             /* flag changed */
      "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" RFC_NONCE ",p=" RFC_PROOF, /* binding data */
      "c=biws,r=" RFC_CLIENT_NONCE ",p=" RFC_PROOF,                      /* server part missing */
      "c=biws,r=" RFC_NONCE "x,p=" RFC_PROOF,                            /* nonce extended */
      "c=biws,r=" RFC_CLIENT_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1,p=" RFC_PROOF, /* wrong */
      "c=biws,r=" RFC_NONCE ",p=" RFC_PROOF ",x=trailing",                     /* proof not last */
      "c=biws,r=" RFC_NONCE ",p=" RFC_PROOF ",",                               /* */
      "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",  /* no pad */
      "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndV==", /* 31 bytes */
      "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=AAAA", /* 33+ */
      "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And!Q=",     /* bad char */
      "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqm iz7AndVQ=",     /* space */
      "c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7An=VQ=",     /* inner pad */
      "c=biws,r=" RFC_NONCE ",1=x,p=" RFC_PROOF, /* bad extension */
      "c=biws,r=" RFC_NONCE ",,p=" RFC_PROOF,    /* empty attribute */
      "c=biws,,r=" RFC_NONCE ",p=" RFC_PROOF,    /* */
      "x=1,c=biws,r=" RFC_NONCE ",p=" RFC_PROOF, /* c= not first */
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) expect_final(bad[i], strlen(bad[i]), PGS_EPROTO);

  expect_final("", 0, PGS_EPROTO);
  static const char with_nul[] = RFC_CLIENT_FINAL "\0";
  expect_final(with_nul, sizeof(with_nul) - 1, PGS_EPROTO);
  expect_final(RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), PGS_OK);
  /* Only the first LEN bytes count. */
  static const char longer[] = RFC_CLIENT_FINAL "garbage";
  expect_final(longer, strlen(RFC_CLIENT_FINAL), PGS_OK);
  /* An extension changes the signed message, so the RFC proof no longer fits:
   * parsed, then refused as a wrong proof. */
  static const char ext[] = "c=biws,r=" RFC_NONCE ",x=1,p=" RFC_PROOF;
  expect_final(ext, strlen(ext), PGS_EAUTH);

  char big[PGS_SCRAM_MAX_MESSAGE + 2];
  int n = snprintf(big, sizeof(big), "c=biws,r=%s,x=", RFC_NONCE);
  memset(big + n, 'a', sizeof(big) - 1 - (size_t)n);
  big[sizeof(big) - 1] = '\0';
  expect_final(big, PGS_SCRAM_MAX_MESSAGE + 1, PGS_EPROTO);
  expect_final(big, SIZE_MAX, PGS_EPROTO);
}

static void test_state_misuse(void **state) {
  pgs_scram_t scram;
  char out[OUT_SIZE];

  /* client-final before client-first. */
  rfc_init(&scram);
  assert_int_equal(
      pgs_scram_server_final(&scram, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out, sizeof(out)),
      PGS_EPROTO);
  assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);

  /* client-first twice. */
  rfc_init(&scram);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_OK);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_EPROTO);
  assert_int_equal(
      pgs_scram_server_final(&scram, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out, sizeof(out)),
      PGS_EPROTO);

  /* Anything after a successful exchange. */
  rfc_init(&scram);
  rfc_exchange(&scram);
  assert_int_equal(
      pgs_scram_server_final(&scram, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out, sizeof(out)),
      PGS_EPROTO);
  rfc_init(&scram);
  rfc_exchange(&scram);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_EPROTO);

  /* A failed init leaves nothing usable. */
  assert_int_equal(pgs_scram_init(&scram, ""), PGS_EINVAL);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_EPROTO);

  /* A cleared exchange likewise. */
  rfc_init(&scram);
  pgs_scram_clear(&scram);
  assert_int_equal(
      pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out, sizeof(out)),
      PGS_EPROTO);
}

static void test_output_too_small(void **state) {
  pgs_scram_t scram;
  char out[OUT_SIZE];
  rfc_init(&scram);
  assert_int_equal(pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                          strlen(RFC_SERVER_FIRST)),
                   PGS_EINVAL);
  rfc_init(&scram);
  assert_int_equal(pgs_scram_server_first(&scram, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                          strlen(RFC_SERVER_FIRST) + 1),
                   PGS_OK);
  assert_int_equal(pgs_scram_server_final(&scram, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                          strlen(RFC_SERVER_FINAL)),
                   PGS_EINVAL);
  assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);
}

static void test_init_rejects(void **state) {
  pgs_scram_t scram;
  /* An md5 hash cannot do SCRAM. */
  assert_int_equal(pgs_scram_init(&scram,
                                  "md5"
                                  "0123456789abcdef0123456789abcdef"),
                   PGS_EUNSUPPORTED);
  /* Not an md5 hash (uppercase, short): a plain-text password like any other. */
  assert_int_equal(pgs_scram_init(&scram,
                                  "md5"
                                  "0123456789ABCDEF0123456789ABCDEF"),
                   PGS_OK);
  assert_int_equal(pgs_scram_init(&scram, "md5abc"), PGS_OK);

  assert_int_equal(pgs_scram_init(&scram, NULL), PGS_EINVAL);
  assert_int_equal(pgs_scram_init(&scram, ""), PGS_EINVAL);
  char huge[PGS_MAX_PASSWORD + 1];
  memset(huge, 'x', PGS_MAX_PASSWORD);
  huge[PGS_MAX_PASSWORD] = '\0';
  assert_int_equal(pgs_scram_init(&scram, huge), PGS_EINVAL);
  huge[PGS_MAX_PASSWORD - 1] = '\0';
  assert_int_equal(pgs_scram_init(&scram, huge), PGS_OK);

#define KEY "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
  static const char *const bad_secrets[] = {
      "SCRAM-SHA-256$",
      "SCRAM-SHA-256$4096",
      "SCRAM-SHA-256$4096:" RFC_SALT,
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY,
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY ":",
      "SCRAM-SHA-256$:" RFC_SALT "$" KEY ":" KEY,
      "SCRAM-SHA-256$0:" RFC_SALT "$" KEY ":" KEY,
      "SCRAM-SHA-256$-1:" RFC_SALT "$" KEY ":" KEY,
      "SCRAM-SHA-256$40x:" RFC_SALT "$" KEY ":" KEY,
      "SCRAM-SHA-256$99999999999:" RFC_SALT "$" KEY ":" KEY,
      "SCRAM-SHA-256$4096:$" KEY ":" KEY,
      "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$" KEY ":" KEY,
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY ":" KEY "x",
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY ":" KEY ":" KEY,
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY ":" KEY "$",
      "SCRAM-SHA-256$4096:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4q==:" KEY,
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY "AAAA:" KEY,
      "SCRAM-SHA-256$4096:" RFC_SALT "$" KEY ":" KEY " ",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad_secrets); i++) {
    if (pgs_scram_init(&scram, bad_secrets[i]) != PGS_EINVAL)
      fail_msg("secret \"%s\" was accepted", bad_secrets[i]);
    assert_int_equal(scram.state, PGS_SCRAM_STATE_FAILED);
  }
  assert_int_equal(pgs_scram_init(&scram, "SCRAM-SHA-256$1:" RFC_SALT "$" KEY ":" KEY), PGS_OK);

  /* Salts up to 64 bytes (88 base64 characters) fit; 66 bytes do not. */
  char secret[300], salt64[100];
  memset(salt64, 'A', 88);
  salt64[88] = '\0';
  snprintf(secret, sizeof(secret), "SCRAM-SHA-256$4096:%s$" KEY ":" KEY, salt64);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_EINVAL);
  salt64[84] = '\0'; /* 63 bytes */
  snprintf(secret, sizeof(secret), "SCRAM-SHA-256$4096:%s$" KEY ":" KEY, salt64);
  assert_int_equal(pgs_scram_init(&scram, secret), PGS_OK);
  assert_int_equal(scram.salt_len, 63);
#undef KEY

  /* init_fixed's own arguments. */
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 0, 4096, "n"), PGS_EINVAL);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", NULL, 16, 4096, "n"), PGS_EINVAL);
  uint8_t salt65[65] = {0};
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", salt65, 65, 4096, "n"), PGS_EINVAL);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", salt65, 64, 1, "n"), PGS_OK);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 0, "n"), PGS_EINVAL);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 1, ""), PGS_EINVAL);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 1, "a,b"), PGS_EINVAL);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 1, "a b"), PGS_EINVAL);
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 1, NULL), PGS_EINVAL);
  char nonce65[66];
  memset(nonce65, 'n', 65);
  nonce65[65] = '\0';
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 1, nonce65), PGS_EINVAL);
  nonce65[64] = '\0';
  assert_int_equal(pgs_scram_init_fixed(&scram, "pw", rfc_salt, 16, 1, nonce65), PGS_OK);
}

/* ---- md5 ---- */

/* Computed independently: md5(md5("secret" || "app") || 01 02 03 04). */
#define MD5_STORED "md56a422f785c9e20873908ce25d1736ae2"
#define MD5_RESPONSE "md5911f527656472583a006e7727877b33e"

static void test_md5_verify(void **state) {
  static const uint8_t salt[4] = {1, 2, 3, 4};
  static const uint8_t other_salt[4] = {1, 2, 3, 5};

  assert_true(pgs_md5_verify("app", "secret", salt, MD5_RESPONSE));
  assert_true(pgs_md5_verify("app", MD5_STORED, salt, MD5_RESPONSE));

  assert_false(pgs_md5_verify("app", "Secret", salt, MD5_RESPONSE));
  assert_false(pgs_md5_verify("app2", "secret", salt, MD5_RESPONSE)); /* user is salted in */
  assert_false(pgs_md5_verify("app", "secret", other_salt, MD5_RESPONSE));
  assert_false(pgs_md5_verify("app", MD5_STORED, other_salt, MD5_RESPONSE));
  /* The client must not be able to send the stored hash itself. */
  assert_false(pgs_md5_verify("app", MD5_STORED, salt, MD5_STORED));
  assert_false(pgs_md5_verify("app", "secret", salt, "md5911F527656472583A006E7727877B33E"));
  assert_false(pgs_md5_verify("app", "secret", salt, "md5911f527656472583a006e7727877b33"));
  assert_false(pgs_md5_verify("app", "secret", salt, MD5_RESPONSE "0"));
  assert_false(pgs_md5_verify("app", "secret", salt, "911f527656472583a006e7727877b33e"));
  assert_false(pgs_md5_verify("app", "secret", salt, ""));
  assert_false(pgs_md5_verify("app", "", salt, MD5_RESPONSE));
  assert_false(pgs_md5_verify("app", RFC_SECRET, salt, MD5_RESPONSE));
  assert_false(pgs_md5_verify(NULL, "secret", salt, MD5_RESPONSE));
  assert_false(pgs_md5_verify("app", NULL, salt, MD5_RESPONSE));
  assert_false(pgs_md5_verify("app", "secret", NULL, MD5_RESPONSE));
  assert_false(pgs_md5_verify("app", "secret", salt, NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rfc7677_plain),
      cmocka_unit_test(test_clear_wipes_every_byte),
      cmocka_unit_test(test_rfc7677_secret),
      cmocka_unit_test(test_client_helper_matches_rfc),
      cmocka_unit_test(test_exchange_plain),
      cmocka_unit_test(test_exchange_is_random),
      cmocka_unit_test(test_exchange_secret),
      cmocka_unit_test(test_make_secret),
      cmocka_unit_test(test_make_secret_rejects),
      cmocka_unit_test(test_exchange_y_flag_and_extensions),
      cmocka_unit_test(test_channel_binding),
      cmocka_unit_test(test_wrong_password),
      cmocka_unit_test(test_client_first_malformed),
      cmocka_unit_test(test_client_final_malformed),
      cmocka_unit_test(test_state_misuse),
      cmocka_unit_test(test_output_too_small),
      cmocka_unit_test(test_init_rejects),
      cmocka_unit_test(test_md5_verify),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
