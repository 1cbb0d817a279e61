/*
 * tls.c — OpenSSL contexts for clients and what pgshard reads from
 * certificates. A context is made once per config load and shared by every
 * worker (SSL_new takes its own reference, so a connection outlives the
 * config it was accepted under); nothing here reads or writes a socket.
 *
 * A missing or unreadable file is reported with the system's reason before
 * OpenSSL tries it, because OpenSSL's own message for it is a stack of
 * library codes. A key with a passphrase fails instead of prompting on the
 * terminal.
 */
#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "pgshard/tls.h"

void pgs_tls_error_text(char *out, size_t outlen, const char *fallback) {
  unsigned long code;
  size_t n = 0;
  out[0] = '\0';
  while ((code = ERR_get_error()) != 0) {
    const char *reason = ERR_reason_error_string(code);
    char unknown[32];
    if (reason == NULL) {
      snprintf(unknown, sizeof(unknown), "error %lx", code);
      reason = unknown;
    }
    /* The first reason is the one that says what went wrong. */
    if (n == 0 && outlen > 0) n = (size_t)snprintf(out, outlen, "%s", reason);
  }
  if (n == 0) snprintf(out, outlen, "%s", fallback);
}

/* No passphrase is ever typed: a key that needs one does not load. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *userdata) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)userdata;
  return 0;
}

static bool readable(const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(err, errlen, "cannot open \"%s\": %s", path, strerror(errno));
    return false;
  }
  fclose(f);
  return true;
}

SSL_CTX *pgs_tls_server_context(const char *cert, const char *key, const char *ca, bool verify,
                                pgs_tls_file_t *which, char *err, size_t errlen) {
  char why[256];
  *which = PGS_TLS_FILE_CERT;
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    pgs_tls_error_text(why, sizeof(why), "out of memory");
    snprintf(err, errlen, "cannot make a TLS context: %s", why);
    return NULL;
  }
  SSL_CTX_set_default_passwd_cb(ctx, no_passphrase_cb);
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) goto openssl_failed;
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
  /* Idle connections give back OpenSSL's record buffers. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_dh_auto(ctx, 1);

  if (!readable(cert, err, errlen)) goto failed;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    pgs_tls_error_text(why, sizeof(why), "not a PEM certificate");
    snprintf(err, errlen, "cannot load certificate \"%s\": %s", cert, why);
    goto failed;
  }
  *which = PGS_TLS_FILE_KEY;
  if (!readable(key, err, errlen)) goto failed;
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    unsigned long code = ERR_peek_last_error();
    pgs_tls_error_text(why, sizeof(why), "not a PEM private key");
    if (ERR_GET_LIB(code) == ERR_LIB_X509 && ERR_GET_REASON(code) == X509_R_KEY_VALUES_MISMATCH)
      snprintf(err, errlen, "private key \"%s\" does not match the certificate \"%s\"", key, cert);
    else
      snprintf(err, errlen, "cannot load private key \"%s\": %s", key, why);
    goto failed;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    snprintf(err, errlen, "private key \"%s\" does not match the certificate \"%s\"", key, cert);
    goto failed;
  }
  *which = PGS_TLS_FILE_CA;
  if (ca) {
    if (!readable(ca, err, errlen)) goto failed;
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names == NULL || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      if (names) sk_X509_NAME_pop_free(names, X509_NAME_free);
      pgs_tls_error_text(why, sizeof(why), "no PEM certificate in it");
      snprintf(err, errlen, "cannot load CA certificates \"%s\": %s", ca, why);
      goto failed;
    }
    /* Tells clients which CAs their certificate may come from. */
    SSL_CTX_set_client_CA_list(ctx, names);
  } else if (verify) {
    snprintf(err, errlen, "client certificates are verified, but no CA file is given");
    goto failed;
  }
  SSL_CTX_set_verify(
      ctx, verify ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_NONE, NULL);
  ERR_clear_error();
  return ctx;

openssl_failed:
  pgs_tls_error_text(why, sizeof(why), "unknown error");
  snprintf(err, errlen, "cannot set up a TLS context: %s", why);
failed:
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return NULL;
}

void pgs_tls_context_free(SSL_CTX *ctx) { SSL_CTX_free(ctx); }

bool pgs_tls_peer_verified(const SSL *ssl) {
  return SSL_get0_peer_certificate(ssl) != NULL && SSL_get_verify_result(ssl) == X509_V_OK;
}

bool pgs_tls_peer_common_name(const SSL *ssl, char *out, size_t outlen) {
  X509 *peer = SSL_get0_peer_certificate(ssl);
  if (peer == NULL || outlen == 0) return false;
  const X509_NAME *subject = X509_get_subject_name(peer);
  int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0) return false;
  const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
  unsigned char *utf8 = NULL;
  int len = ASN1_STRING_to_UTF8(&utf8, cn);
  if (len < 0) return false;
  bool ok = (size_t)len < outlen && memchr(utf8, '\0', (size_t)len) == NULL;
  if (ok) {
    memcpy(out, utf8, (size_t)len);
    out[len] = '\0';
  }
  OPENSSL_free(utf8);
  return ok;
}

size_t pgs_tls_server_end_point(const SSL *ssl, uint8_t out[PGS_TLS_MAX_END_POINT]) {
  X509 *cert = SSL_get_certificate(ssl);
  int digest_nid;
  if (cert == NULL || !OBJ_find_sigid_algs(X509_get_signature_nid(cert), &digest_nid, NULL))
    return 0;
  /* RFC 5929 4.1: MD5 and SHA-1 are replaced by SHA-256. */
  const EVP_MD *md = digest_nid == NID_md5 || digest_nid == NID_sha1
                         ? EVP_sha256()
                         : EVP_get_digestbynid(digest_nid);
  unsigned int len = 0;
  if (md == NULL || EVP_MD_get_size(md) > PGS_TLS_MAX_END_POINT ||
      X509_digest(cert, md, out, &len) != 1)
    return 0;
  return len;
}
