/*
 * tls.h — TLS contexts and certificate facts, built on OpenSSL. No I/O: the
 * proxy runs TLS sessions over its connections (proxy/io.c) with the
 * context made here, and the config (router/config.c) makes it when it is
 * loaded, so a certificate or key that does not load refuses the config.
 *
 * OpenSSL's types are named by their struct tags, so that including this
 * header does not pull OpenSSL's headers into every file.
 */
#ifndef PGSHARD_TLS_H
#define PGSHARD_TLS_H

#include "pgshard/common.h"

struct ssl_ctx_st;
struct ssl_st;

/* Which file of pgs_tls_server_context a failure is about. */
typedef enum { PGS_TLS_FILE_CERT, PGS_TLS_FILE_KEY, PGS_TLS_FILE_CA } pgs_tls_file_t;

/* Longest tls-server-end-point hash (SHA-512). */
#define PGS_TLS_MAX_END_POINT 64

/* A context for accepting clients: the certificate chain in CERT (PEM, the
 * server's certificate first), its private key in KEY (PEM, no passphrase)
 * and, when CA is not NULL, the CA certificates client certificates are
 * verified against; VERIFY: every client must present a certificate that
 * verifies (CA required). TLS 1.2 and later, no compression, no
 * renegotiation, no session resumption (PostgreSQL's own choices). Returns
 * NULL with the reason in ERR and the file it is about in *WHICH. */
struct ssl_ctx_st *pgs_tls_server_context(const char *cert, const char *key, const char *ca,
                                          bool verify, pgs_tls_file_t *which, char *err,
                                          size_t errlen);
void pgs_tls_context_free(struct ssl_ctx_st *ctx);

/* The common name of the certificate the peer of SSL presented, in OUT
 * (OUTLEN bytes); false when it presented none, has no CN, or the CN holds
 * a NUL byte or does not fit. */
bool pgs_tls_peer_common_name(const struct ssl_st *ssl, char *out, size_t outlen);

/* True when the peer of SSL presented a certificate that verified. */
bool pgs_tls_peer_verified(const struct ssl_st *ssl);

/* tls-server-end-point channel binding data (RFC 5929) for the certificate
 * SSL presents as a server: the hash of its DER encoding, SHA-256 unless its
 * signature uses a stronger one. Returns the length written into OUT, 0 when
 * there is none (no certificate, an unknown signature algorithm). */
size_t pgs_tls_server_end_point(const struct ssl_st *ssl, uint8_t out[PGS_TLS_MAX_END_POINT]);

/* The OpenSSL errors queued on this thread as one line in OUT (emptying
 * the queue); FALLBACK when there are none. */
void pgs_tls_error_text(char *out, size_t outlen, const char *fallback);

#endif
