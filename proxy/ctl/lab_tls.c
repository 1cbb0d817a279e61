/*
 * lab_tls.c — the lab's TLS material, for `pgshardctl lab up --tls`: a CA
 * of its own and one server certificate it signs, made with OpenSSL's API
 * (no openssl program needed) into DIR/tls once, then kept, and so is TLS:
 * a later `up` without --tls finds DIR/tls and keeps the servers on TLS.
 *
 *   DIR/tls/ca.crt       the CA: what clients verify servers against
 *                        (sslrootcert); also each server's ssl_ca_file
 *   DIR/tls/ca.key       its key (postgres-owned, 0600), to sign more
 *   DIR/tls/server.crt   every lab server's certificate: CN localhost, and
 *                        localhost, 127.0.0.1, ::1 and each server's host as
 *                        subjectAltName, so sslmode=verify-full works
 *   DIR/tls/server.key   its key (postgres-owned, 0600, as PostgreSQL demands)
 *
 * A TLS lab's servers take TLS connections only (hostssl in pg_hba.conf),
 * and the lab's own connections use sslmode=require.
 */
#include <arpa/inet.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "lab.h"

#define LAB_TLS_DAYS 3650

char *pgs_lab_tls_file(const lab_t *lab, const char *name) {
  return pgs_lab_format("%s/tls/%s", lab->dir, name);
}

bool pgs_lab_tls_present(const lab_t *lab) {
  char *cert = pgs_lab_tls_file(lab, "server.crt");
  bool found = pgs_lab_exists(cert);
  free(cert);
  return found;
}

static void openssl_failed(const char *what) {
  char reason[256] = "unknown error";
  unsigned long code = ERR_get_error();
  if (code) ERR_error_string_n(code, reason, sizeof(reason));
  ERR_clear_error();
  pgs_lab_fail("TLS: cannot %s: %s", what, reason);
}

static bool add_extension(X509 *cert, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  bool ok = ext && X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok;
}

/* A certificate for KEY named CN, signed by ISSUER (ISSUER_KEY), or by
 * itself when ISSUER is NULL (the CA). SAN: subjectAltName, servers only. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san) {
  X509 *cert = X509_new();
  uint64_t serial = 0;
  bool ok = cert && RAND_bytes((unsigned char *)&serial, sizeof(serial)) == 1;
  ok = ok && X509_set_version(cert, X509_VERSION_3) &&
       ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert), serial >> 1) &&
       X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
       X509_gmtime_adj(X509_getm_notAfter(cert), (long)LAB_TLS_DAYS * 86400) &&
       X509_set_pubkey(cert, key);
  X509_NAME *name = ok ? X509_get_subject_name(cert) : NULL;
  ok = ok &&
       X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"pgshard lab", -1,
                                  -1, 0) &&
       X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) &&
       X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
  X509V3_CTX ctx;
  if (ok) X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, NULL, NULL, 0);
  if (ok && issuer == NULL) {
    ok = add_extension(cert, &ctx, NID_basic_constraints, "critical,CA:TRUE") &&
         add_extension(cert, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") &&
         add_extension(cert, &ctx, NID_subject_key_identifier, "hash");
  } else if (ok) {
    ok = add_extension(cert, &ctx, NID_basic_constraints, "CA:FALSE") &&
         add_extension(cert, &ctx, NID_key_usage, "critical,digitalSignature,keyEncipherment") &&
         add_extension(cert, &ctx, NID_ext_key_usage, "serverAuth") &&
         add_extension(cert, &ctx, NID_subject_alt_name, san) &&
         add_extension(cert, &ctx, NID_authority_key_identifier, "keyid");
  }
  ok = ok && X509_sign(cert, issuer_key ? issuer_key : key, EVP_sha256()) > 0;
  if (!ok) {
    X509_free(cert);
    return NULL;
  }
  return cert;
}

/* PEM text of a certificate (KEY NULL) or of a private key; malloc'ed. */
static char *pem_text(X509 *cert, EVP_PKEY *key) {
  BIO *bio = BIO_new(BIO_s_mem());
  char *text = NULL;
  bool ok = bio && (cert ? PEM_write_bio_X509(bio, cert)
                         : PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL));
  if (ok) {
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    text = pgs_xstrndup(data, (size_t)len);
  }
  BIO_free(bio);
  return text;
}

static pgs_status_t write_pem(const lab_t *lab, const char *name, X509 *cert, EVP_PKEY *key,
                              bool secret) {
  char *text = pem_text(cert, key);
  if (text == NULL) {
    openssl_failed("write PEM");
    return PGS_EIO;
  }
  char *path = pgs_lab_tls_file(lab, name);
  pgs_status_t rc = pgs_lab_write_file(lab, path, text, secret);
  OPENSSL_cleanse(text, strlen(text));
  free(text);
  free(path);
  return rc;
}

/* "DNS:localhost,IP:127.0.0.1,IP:::1" and every server's host, each once. */
static char *subject_alt_names(const lab_t *lab) {
  char *san = pgs_xstrdup("DNS:localhost,IP:127.0.0.1,IP:::1");
  for (int s = 0; s < lab->nservers; s++) {
    for (int h = 0; h < lab->servers[s].nhosts; h++) {
      const char *host = lab->servers[s].hosts[h];
      unsigned char addr[16];
      bool ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
      char *entry = pgs_lab_format("%s:%s", ip ? "IP" : "DNS", host);
      if (strstr(san, entry) == NULL) {
        char *longer = pgs_lab_format("%s,%s", san, entry);
        free(san);
        san = longer;
      }
      free(entry);
    }
  }
  return san;
}

pgs_status_t pgs_lab_tls_ensure(const lab_t *lab) {
  if (pgs_lab_tls_present(lab)) return PGS_OK;
  char *dir = pgs_lab_format("%s/tls", lab->dir);
  pgs_status_t rc = pgs_lab_mkdir(lab, dir, false);
  free(dir);
  if (rc != PGS_OK) return rc;
  printf("lab: TLS: making a CA and a server certificate in %s/tls\n", lab->dir);
  fflush(stdout);
  char *san = subject_alt_names(lab);
  EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  EVP_PKEY *server_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  X509 *ca = ca_key ? make_cert(ca_key, "pgshard lab CA", NULL, NULL, NULL) : NULL;
  X509 *server = ca && server_key ? make_cert(server_key, "localhost", ca, ca_key, san) : NULL;
  if (server == NULL) {
    openssl_failed("make the lab's certificates");
    rc = PGS_EIO;
  }
  /* The server's certificate last: its presence marks the set complete. */
  if (rc == PGS_OK) rc = write_pem(lab, "ca.key", NULL, ca_key, true);
  if (rc == PGS_OK) rc = write_pem(lab, "ca.crt", ca, NULL, false);
  if (rc == PGS_OK) rc = write_pem(lab, "server.key", NULL, server_key, true);
  if (rc == PGS_OK) rc = write_pem(lab, "server.crt", server, NULL, false);
  X509_free(server);
  X509_free(ca);
  EVP_PKEY_free(server_key);
  EVP_PKEY_free(ca_key);
  free(san);
  return rc;
}
