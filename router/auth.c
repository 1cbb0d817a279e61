/*
 * auth.c — md5 and SCRAM-SHA-256 password verification, server side.
 *
 * The SCRAM exchange follows RFC 5802 / RFC 7677 the way PostgreSQL's
 * auth-scram.c applies it: channel binding only as SCRAM-SHA-256-PLUS with
 * tls-server-end-point (gs2 flag "p=tls-server-end-point", offered over TLS;
 * "n" and "y" otherwise, "y" refused when PLUS was offered, so that a man in
 * the middle cannot strip the binding), no authzid, no mandatory extensions,
 * and the username attribute of
 * client-first is ignored because the user was named in the startup packet
 * (libpq sends "n=,"). Every message is length-bounded by
 * PGS_SCRAM_MAX_MESSAGE and parsed with an explicit end pointer, never as a C
 * string, so bytes from the network cannot run past what was received; a
 * malformed message is PGS_EPROTO, a wrong password PGS_EAUTH. Any error ends
 * the exchange (PGS_SCRAM_STATE_FAILED); there is no retry within one.
 *
 * Plain-text passwords are used as their raw bytes. PostgreSQL SASLprep-
 * normalises a password before hashing it; for ASCII (and for any password
 * already in NFKC form without prohibited characters) that is the identity,
 * so only a non-ASCII password that SASLprep would change behaves differently
 * here than against PostgreSQL. A stored "SCRAM-SHA-256$..." secret was
 * normalised by whoever made it, so it is always exact.
 *
 * Only the OpenSSL 3.0 API is used: OPENSSL_NO_DEPRECATED below hides every
 * deprecated declaration, so a deprecated call cannot compile.
 */
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED 1

#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "pgshard/auth.h"

#define SCRAM_SECRET_PREFIX "SCRAM-SHA-256$"
#define SCRAM_SALT_LEN 16 /* what PostgreSQL draws for new secrets */
#define SCRAM_MAX_SERVER_NONCE 64
#define MD5_HASH_LEN 35 /* "md5" + 32 hex digits */
#define MD5_HEX_LEN 32

/* ---- primitives ---- */

static bool sha256(const void *data, size_t len, uint8_t out[PGS_SCRAM_KEY_LEN]) {
  unsigned int outlen = 0;
  return EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) == 1 &&
         outlen == PGS_SCRAM_KEY_LEN;
}

static bool hmac_sha256(const uint8_t *key, size_t keylen, const void *data, size_t len,
                        uint8_t out[PGS_SCRAM_KEY_LEN]) {
  unsigned int outlen = 0;
  if (keylen > INT_MAX) return false;
  return HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &outlen) != NULL &&
         outlen == PGS_SCRAM_KEY_LEN;
}

/* md5 of DATA as 32 lowercase hex digits and a NUL. */
static bool md5_hex(const void *data, size_t len, char out[MD5_HEX_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t digest[16];
  unsigned int outlen = 0;
  if (EVP_Digest(data, len, digest, &outlen, EVP_md5(), NULL) != 1 || outlen != sizeof(digest))
    return false;
  for (size_t i = 0; i < sizeof(digest); i++) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 0xf];
  }
  out[MD5_HEX_LEN] = '\0';
  return true;
}

/* Base64 of IN into OUT with a NUL; false when OUT is too small. */
static bool base64_encode(const uint8_t *in, size_t len, char *out, size_t outcap) {
  if (len > 3 * 1024 || 4 * ((len + 2) / 3) + 1 > outcap) return false;
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
  return true;
}

static int base64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Strict base64 decode: whole quads, no whitespace, '=' only as final padding.
 * EVP_DecodeBlock is not used because it accepts surrounding whitespace and
 * does not report how much padding it dropped. */
static bool base64_decode(const char *in, size_t len, uint8_t *out, size_t outcap, size_t *outlen) {
  size_t pad = 0;
  if (len == 0 || len % 4 != 0) return false;
  if (in[len - 1] == '=') {
    pad = 1;
    if (in[len - 2] == '=') pad = 2;
  }
  size_t n = len / 4 * 3 - pad;
  if (n > outcap) return false;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 4) {
    uint32_t quad = 0;
    for (size_t j = 0; j < 4; j++) {
      int v;
      if (i + 4 == len && j >= 4 - pad)
        v = 0; /* padding, checked to be '=' above */
      else if ((v = base64_value((unsigned char)in[i + j])) < 0)
        return false;
      quad = quad << 6 | (uint32_t)v;
    }
    for (int shift = 16; shift >= 0 && o < n; shift -= 8) out[o++] = (uint8_t)(quad >> shift);
  }
  *outlen = n;
  return true;
}

/* ---- password kinds ---- */

/* "md5" and 32 lowercase hex digits, the test PostgreSQL applies. */
static bool is_md5_hash(const char *password) {
  return strlen(password) == MD5_HASH_LEN && !strncmp(password, "md5", 3) &&
         strspn(password + 3, "0123456789abcdef") == MD5_HEX_LEN;
}

static bool is_scram_secret(const char *password) {
  return !strncmp(password, SCRAM_SECRET_PREFIX, strlen(SCRAM_SECRET_PREFIX));
}

/* "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" into SCRAM. */
static bool parse_scram_secret(pgs_scram_t *scram, const char *secret) {
  const char *p = secret + strlen(SCRAM_SECRET_PREFIX);
  const char *colon = strchr(p, ':');
  const char *dollar = colon ? strchr(colon + 1, '$') : NULL;
  const char *colon2 = dollar ? strchr(dollar + 1, ':') : NULL;
  const char *end = p + strlen(p);
  size_t n;
  if (colon2 == NULL || colon == p) return false;

  long long iterations = 0;
  for (const char *d = p; d < colon; d++) {
    if (*d < '0' || *d > '9') return false;
    iterations = iterations * 10 + (*d - '0');
    if (iterations > INT_MAX) return false;
  }
  if (iterations < 1) return false;
  scram->iterations = (int)iterations;

  if (!base64_decode(colon + 1, (size_t)(dollar - colon - 1), scram->salt, sizeof(scram->salt),
                     &scram->salt_len) ||
      scram->salt_len == 0)
    return false;
  if (!base64_decode(dollar + 1, (size_t)(colon2 - dollar - 1), scram->stored_key,
                     sizeof(scram->stored_key), &n) ||
      n != PGS_SCRAM_KEY_LEN)
    return false;
  if (!base64_decode(colon2 + 1, (size_t)(end - colon2 - 1), scram->server_key,
                     sizeof(scram->server_key), &n) ||
      n != PGS_SCRAM_KEY_LEN)
    return false;
  return true;
}

/* StoredKey and ServerKey from a plain-text password (RFC 5802 section 3). */
static bool derive_keys(pgs_scram_t *scram, const char *password) {
  uint8_t salted[PGS_SCRAM_KEY_LEN], client_key[PGS_SCRAM_KEY_LEN];
  bool ok = PKCS5_PBKDF2_HMAC(password, (int)strlen(password), scram->salt, (int)scram->salt_len,
                              scram->iterations, EVP_sha256(), sizeof(salted), salted) == 1 &&
            hmac_sha256(salted, sizeof(salted), "Client Key", 10, client_key) &&
            sha256(client_key, sizeof(client_key), scram->stored_key) &&
            hmac_sha256(salted, sizeof(salted), "Server Key", 10, scram->server_key);
  OPENSSL_cleanse(salted, sizeof(salted));
  OPENSSL_cleanse(client_key, sizeof(client_key));
  return ok;
}

/* A nonce part is printable ASCII other than ',' (RFC 5802 "printable"). */
static bool is_printable(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',') return false;
  return true;
}

/* Shared by both init functions. The server nonce waits in scram->nonce until
 * client-first supplies the client's part to put in front of it. */
static pgs_status_t scram_setup(pgs_scram_t *scram, const char *password, const uint8_t *salt,
                                size_t salt_len, int iterations, const char *server_nonce) {
  memset(scram, 0, sizeof(*scram));
  scram->state = PGS_SCRAM_STATE_FAILED;
  if (password == NULL || server_nonce == NULL) return PGS_EINVAL;

  size_t nonce_len = strlen(server_nonce);
  if (nonce_len == 0 || nonce_len > SCRAM_MAX_SERVER_NONCE ||
      !is_printable(server_nonce, nonce_len))
    return PGS_EINVAL;

  if (is_md5_hash(password)) return PGS_EUNSUPPORTED;
  if (is_scram_secret(password)) {
    /* Unlike PostgreSQL, which takes a secret it cannot parse for a
     * plain-text password, refuse it: a typo in a secret must not turn the
     * secret's text into the password. */
    if (!parse_scram_secret(scram, password)) return PGS_EINVAL;
  } else {
    /* PostgreSQL refuses empty passwords too (CREATE ROLE clears them). */
    size_t pwlen = strlen(password);
    if (pwlen == 0 || pwlen >= PGS_MAX_PASSWORD) return PGS_EINVAL;
    if (salt == NULL || salt_len == 0 || salt_len > sizeof(scram->salt) || iterations < 1)
      return PGS_EINVAL;
    memcpy(scram->salt, salt, salt_len);
    scram->salt_len = salt_len;
    scram->iterations = iterations;
    if (!derive_keys(scram, password)) return PGS_EIO;
  }
  memcpy(scram->nonce, server_nonce, nonce_len + 1);
  scram->state = PGS_SCRAM_STATE_INIT;
  return PGS_OK;
}

pgs_status_t pgs_scram_init(pgs_scram_t *scram, const char *password) {
  uint8_t salt[SCRAM_SALT_LEN], raw_nonce[PGS_SCRAM_NONCE_LEN];
  char nonce[4 * ((PGS_SCRAM_NONCE_LEN + 2) / 3) + 1];
  pgs_status_t status = PGS_EIO;
  if (pgs_random_bytes(salt, sizeof(salt)) != PGS_OK ||
      pgs_random_bytes(raw_nonce, sizeof(raw_nonce)) != PGS_OK ||
      !base64_encode(raw_nonce, sizeof(raw_nonce), nonce, sizeof(nonce))) {
    memset(scram, 0, sizeof(*scram));
    scram->state = PGS_SCRAM_STATE_FAILED;
  } else {
    status = scram_setup(scram, password, salt, sizeof(salt), PGS_SCRAM_ITERATIONS, nonce);
  }
  OPENSSL_cleanse(raw_nonce, sizeof(raw_nonce));
  OPENSSL_cleanse(nonce, sizeof(nonce));
  OPENSSL_cleanse(salt, sizeof(salt));
  return status;
}

pgs_status_t pgs_scram_init_fixed(pgs_scram_t *scram, const char *password, const uint8_t *salt,
                                  size_t salt_len, int iterations, const char *server_nonce) {
  return scram_setup(scram, password, salt, salt_len, iterations, server_nonce);
}

pgs_status_t pgs_scram_make_secret(const char *password, char *out, size_t outcap) {
  if (out == NULL || outcap == 0) return PGS_EINVAL;
  out[0] = '\0';
  if (password == NULL || is_scram_secret(password)) return PGS_EINVAL;
  if (is_md5_hash(password)) return PGS_EUNSUPPORTED;
  size_t pwlen = strlen(password);
  if (pwlen == 0 || pwlen >= PGS_MAX_PASSWORD) return PGS_EINVAL;

  pgs_scram_t scram;
  memset(&scram, 0, sizeof(scram));
  scram.salt_len = SCRAM_SALT_LEN;
  scram.iterations = PGS_SCRAM_ITERATIONS;
  if (pgs_random_bytes(scram.salt, scram.salt_len) != PGS_OK) return PGS_EIO;

  char salt64[4 * ((SCRAM_SALT_LEN + 2) / 3) + 1];
  char stored64[4 * ((PGS_SCRAM_KEY_LEN + 2) / 3) + 1], server64[sizeof(stored64)];
  char secret[PGS_SCRAM_SECRET_SIZE];
  pgs_status_t status = PGS_EIO;
  if (derive_keys(&scram, password) &&
      base64_encode(scram.salt, scram.salt_len, salt64, sizeof(salt64)) &&
      base64_encode(scram.stored_key, sizeof(scram.stored_key), stored64, sizeof(stored64)) &&
      base64_encode(scram.server_key, sizeof(scram.server_key), server64, sizeof(server64))) {
    int n = snprintf(secret, sizeof(secret), SCRAM_SECRET_PREFIX "%d:%s$%s:%s", scram.iterations,
                     salt64, stored64, server64);
    if (n < 0 || (size_t)n >= sizeof(secret) || (size_t)n >= outcap) {
      status = PGS_EINVAL;
    } else {
      memcpy(out, secret, (size_t)n + 1);
      status = PGS_OK;
    }
  }
  /* The keys let whoever holds them pose as the server to this user. */
  OPENSSL_cleanse(&scram, sizeof(scram));
  OPENSSL_cleanse(secret, sizeof(secret));
  OPENSSL_cleanse(stored64, sizeof(stored64));
  OPENSSL_cleanse(server64, sizeof(server64));
  return status;
}

void pgs_scram_clear(pgs_scram_t *scram) {
  OPENSSL_cleanse(scram, sizeof(*scram));
  scram->state = PGS_SCRAM_STATE_FAILED;
}

void pgs_scram_free(pgs_scram_t *scram) {
  if (scram == NULL) return;
  pgs_scram_clear(scram);
  free(scram);
}

/* ---- message parsing ---- */

typedef struct cursor {
  const char *p;
  const char *end;
} cursor_t;

/* Read one "A=value" attribute at the cursor: A must be ATTR, or any ASCII
 * letter when ATTR is 0 (an extension, stored in *FOUND). The value runs to
 * the next ',' or the end; the cursor moves past the comma, and a comma that
 * ends the message (an empty last attribute) is malformed. */
static bool read_attribute(cursor_t *c, char attr, char *found, const char **value,
                           size_t *value_len) {
  if (c->end - c->p < 2 || c->p[1] != '=') return false;
  char a = c->p[0];
  if (attr ? a != attr : !((a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z'))) return false;
  const char *v = c->p + 2;
  const char *comma = memchr(v, ',', (size_t)(c->end - v));
  *value = v;
  *value_len = (size_t)((comma ? comma : c->end) - v);
  if (found) *found = a;
  if (comma) {
    c->p = comma + 1;
    if (c->p == c->end) return false;
  } else {
    c->p = c->end;
  }
  return true;
}

/* Non-empty, within the cap, and no NUL: the rest of the parser relies on it. */
static bool message_is_sane(const char *msg, size_t len) {
  return msg != NULL && len > 0 && len <= PGS_SCRAM_MAX_MESSAGE && memchr(msg, '\0', len) == NULL;
}

static pgs_status_t scram_fail(pgs_scram_t *scram, pgs_status_t status) {
  scram->state = PGS_SCRAM_STATE_FAILED;
  return status;
}

pgs_status_t pgs_scram_channel_binding(pgs_scram_t *scram, bool plus, const uint8_t *data,
                                       size_t len) {
  if (len > PGS_SCRAM_MAX_CBIND || (plus && len == 0) || scram->state != PGS_SCRAM_STATE_INIT)
    return scram_fail(scram, PGS_EINVAL);
  scram->plus = plus;
  if (len) memcpy(scram->cbind_data, data, len);
  scram->cbind_len = len;
  return PGS_OK;
}

pgs_status_t pgs_scram_server_first(pgs_scram_t *scram, const char *msg, size_t len, char *out,
                                    size_t outcap) {
  cursor_t c = {msg, msg + len};
  const char *value;
  size_t value_len;

  if (scram->state != PGS_SCRAM_STATE_INIT) return scram_fail(scram, PGS_EPROTO);
  if (!message_is_sane(msg, len)) return scram_fail(scram, PGS_EPROTO);

  /* gs2-header: "n,,", "y,," or "p=tls-server-end-point,,". A client
   * that picked PLUS must bind; one that did not must not; "y" says it
   * could, but saw no PLUS offered: when it was, someone removed it. */
  char cbind_flag = *c.p;
  if (cbind_flag == 'p') {
    static const char type[] = "p=tls-server-end-point";
    if (!scram->plus || (size_t)(c.end - c.p) < sizeof(type) - 1 ||
        memcmp(c.p, type, sizeof(type) - 1) != 0)
      return scram_fail(scram, PGS_EPROTO);
    c.p += sizeof(type) - 1;
  } else if (cbind_flag == 'n' || cbind_flag == 'y') {
    if (scram->plus || (cbind_flag == 'y' && scram->cbind_len > 0))
      return scram_fail(scram, PGS_EPROTO);
    c.p++;
  } else {
    return scram_fail(scram, PGS_EPROTO);
  }
  if (c.end - c.p < 2 || c.p[0] != ',' || c.p[1] != ',') return scram_fail(scram, PGS_EPROTO);
  c.p += 2;

  /* client-first-message-bare: [m=...,] n=user, r=nonce [,ext...] */
  const char *bare = c.p;
  size_t bare_len = (size_t)(c.end - bare);
  if (c.p < c.end && *c.p == 'm') return scram_fail(scram, PGS_EPROTO);
  if (!read_attribute(&c, 'n', NULL, &value, &value_len)) return scram_fail(scram, PGS_EPROTO);
  const char *client_nonce;
  size_t client_nonce_len;
  if (!read_attribute(&c, 'r', NULL, &client_nonce, &client_nonce_len) || client_nonce_len == 0 ||
      !is_printable(client_nonce, client_nonce_len))
    return scram_fail(scram, PGS_EPROTO);
  while (c.p < c.end) {
    char attr;
    if (!read_attribute(&c, 0, &attr, &value, &value_len)) return scram_fail(scram, PGS_EPROTO);
  }

  size_t server_nonce_len = strlen(scram->nonce);
  if (client_nonce_len + server_nonce_len >= sizeof(scram->nonce))
    return scram_fail(scram, PGS_EPROTO);
  memmove(scram->nonce + client_nonce_len, scram->nonce, server_nonce_len + 1);
  memcpy(scram->nonce, client_nonce, client_nonce_len);
  memcpy(scram->client_first_bare, bare, bare_len);
  scram->client_first_bare[bare_len] = '\0';
  scram->cbind_flag = cbind_flag;

  char salt64[4 * ((sizeof(scram->salt) + 2) / 3) + 1];
  if (!base64_encode(scram->salt, scram->salt_len, salt64, sizeof(salt64)))
    return scram_fail(scram, PGS_EINVAL);
  int n = snprintf(scram->server_first, sizeof(scram->server_first), "r=%s,s=%s,i=%d", scram->nonce,
                   salt64, scram->iterations);
  if (n < 0 || (size_t)n >= sizeof(scram->server_first) || (size_t)n >= outcap)
    return scram_fail(scram, PGS_EINVAL);
  memcpy(out, scram->server_first, (size_t)n + 1);
  scram->state = PGS_SCRAM_STATE_SENT_FIRST;
  return PGS_OK;
}

pgs_status_t pgs_scram_server_final(pgs_scram_t *scram, const char *msg, size_t len, char *out,
                                    size_t outcap) {
  cursor_t c = {msg, msg + len};
  const char *value;
  size_t value_len;

  if (scram->state != PGS_SCRAM_STATE_SENT_FIRST) return scram_fail(scram, PGS_EPROTO);
  if (!message_is_sane(msg, len)) return scram_fail(scram, PGS_EPROTO);

  /* c=: the gs2 header echoed back, base64 ("n,," is "biws", "y,," is
   * "eSws"), followed for PLUS by the channel binding data: it must repeat
   * the flag of client-first, so a "y" cannot be dropped, and bind this
   * very TLS connection. */
  char expect_cbind[4 * ((sizeof("p=tls-server-end-point,,") + PGS_SCRAM_MAX_CBIND + 2) / 3) + 1];
  if (scram->cbind_flag == 'p') {
    uint8_t input[sizeof("p=tls-server-end-point,,") - 1 + PGS_SCRAM_MAX_CBIND];
    size_t header = sizeof("p=tls-server-end-point,,") - 1;
    memcpy(input, "p=tls-server-end-point,,", header);
    memcpy(input + header, scram->cbind_data, scram->cbind_len);
    if (!base64_encode(input, header + scram->cbind_len, expect_cbind, sizeof(expect_cbind)))
      return scram_fail(scram, PGS_EINVAL);
  } else {
    memcpy(expect_cbind, scram->cbind_flag == 'y' ? "eSws" : "biws", 5);
  }
  size_t expect_len = strlen(expect_cbind);
  if (!read_attribute(&c, 'c', NULL, &value, &value_len) || value_len != expect_len ||
      CRYPTO_memcmp(value, expect_cbind, expect_len) != 0)
    return scram_fail(scram, PGS_EPROTO);

  if (!read_attribute(&c, 'r', NULL, &value, &value_len) || value_len != strlen(scram->nonce) ||
      memcmp(value, scram->nonce, value_len) != 0)
    return scram_fail(scram, PGS_EPROTO);

  /* Extensions, ignored, up to the proof, which must come last. */
  const char *proof_attr;
  char attr = 0;
  do {
    proof_attr = c.p;
    if (c.p >= c.end || !read_attribute(&c, 0, &attr, &value, &value_len))
      return scram_fail(scram, PGS_EPROTO);
  } while (attr != 'p');
  if (value + value_len != c.end) return scram_fail(scram, PGS_EPROTO);

  /* Everything below is wiped on the way out: the proof XOR the client
   * signature is the ClientKey, which logs in as this user wherever its
   * StoredKey is kept. */
  uint8_t proof[PGS_SCRAM_KEY_LEN];
  uint8_t signature[PGS_SCRAM_KEY_LEN], client_key[PGS_SCRAM_KEY_LEN];
  uint8_t computed_stored[PGS_SCRAM_KEY_LEN];
  char auth_message[3 * PGS_SCRAM_MAX_MESSAGE];
  char signature64[4 * ((PGS_SCRAM_KEY_LEN + 2) / 3) + 1];
  pgs_status_t status = PGS_OK;
  size_t proof_len;
  int n;
  if (!base64_decode(value, value_len, proof, sizeof(proof), &proof_len) ||
      proof_len != PGS_SCRAM_KEY_LEN) {
    status = PGS_EPROTO;
    goto out;
  }

  /* AuthMessage = client-first-bare "," server-first "," client-final-without-proof */
  size_t without_proof_len = (size_t)(proof_attr - 1 - msg);
  n = snprintf(auth_message, sizeof(auth_message), "%s,%s,%.*s", scram->client_first_bare,
               scram->server_first, (int)without_proof_len, msg);
  if (n < 0 || (size_t)n >= sizeof(auth_message)) {
    status = PGS_EPROTO;
    goto out;
  }

  /* ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the proof holds
   * when H(ClientKey) is StoredKey. */
  if (!hmac_sha256(scram->stored_key, sizeof(scram->stored_key), auth_message, (size_t)n,
                   signature)) {
    status = PGS_EIO;
    goto out;
  }
  for (size_t i = 0; i < PGS_SCRAM_KEY_LEN; i++) client_key[i] = proof[i] ^ signature[i];
  if (!sha256(client_key, sizeof(client_key), computed_stored)) {
    status = PGS_EIO;
    goto out;
  }
  if (CRYPTO_memcmp(computed_stored, scram->stored_key, PGS_SCRAM_KEY_LEN) != 0) {
    status = PGS_EAUTH;
    goto out;
  }

  if (!hmac_sha256(scram->server_key, sizeof(scram->server_key), auth_message, (size_t)n,
                   signature) ||
      !base64_encode(signature, sizeof(signature), signature64, sizeof(signature64))) {
    status = PGS_EIO;
    goto out;
  }
  n = snprintf(out, outcap, "v=%s", signature64);
  if (n < 0 || (size_t)n >= outcap) status = PGS_EINVAL;

out:
  OPENSSL_cleanse(proof, sizeof(proof));
  OPENSSL_cleanse(signature, sizeof(signature));
  OPENSSL_cleanse(client_key, sizeof(client_key));
  OPENSSL_cleanse(computed_stored, sizeof(computed_stored));
  OPENSSL_cleanse(auth_message, sizeof(auth_message));
  OPENSSL_cleanse(signature64, sizeof(signature64));
  if (status != PGS_OK) return scram_fail(scram, status);
  scram->state = PGS_SCRAM_STATE_DONE;
  return PGS_OK;
}

/* ---- md5 ---- */

bool pgs_md5_verify(const char *user, const char *password, const uint8_t salt[4],
                    const char *response) {
  char inner[MD5_HEX_LEN + 4]; /* md5hex(password || user) followed by the salt */
  char expected[MD5_HASH_LEN + 1];
  bool ok = false;

  if (user == NULL || password == NULL || salt == NULL || response == NULL) return false;
  if (strnlen(response, MD5_HASH_LEN + 1) != MD5_HASH_LEN) return false;
  if (is_scram_secret(password)) return false; /* cannot give md5 of the password */

  if (is_md5_hash(password)) {
    memcpy(inner, password + 3, MD5_HEX_LEN);
  } else {
    char concat[PGS_MAX_PASSWORD + PGS_MAX_NAME];
    size_t pwlen = strnlen(password, PGS_MAX_PASSWORD);
    size_t userlen = strnlen(user, PGS_MAX_NAME);
    if (pwlen == 0 || pwlen >= PGS_MAX_PASSWORD || userlen >= PGS_MAX_NAME) return false;
    memcpy(concat, password, pwlen);
    memcpy(concat + pwlen, user, userlen);
    char hex[MD5_HEX_LEN + 1];
    bool hashed = md5_hex(concat, pwlen + userlen, hex);
    OPENSSL_cleanse(concat, sizeof(concat));
    if (!hashed) return false;
    memcpy(inner, hex, MD5_HEX_LEN);
    OPENSSL_cleanse(hex, sizeof(hex));
  }
  memcpy(inner + MD5_HEX_LEN, salt, 4);
  memcpy(expected, "md5", 3);
  if (md5_hex(inner, sizeof(inner), expected + 3))
    ok = CRYPTO_memcmp(expected, response, MD5_HASH_LEN) == 0;
  OPENSSL_cleanse(inner, sizeof(inner));
  return ok;
}

pgs_status_t pgs_random_bytes(void *buf, size_t len) {
  if (len > INT_MAX) return PGS_EINVAL;
  return RAND_bytes(buf, (int)len) == 1 ? PGS_OK : PGS_EIO;
}
