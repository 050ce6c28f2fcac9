/* Preloaded into wrk by benchmarks/edge.sh (LD_PRELOAD): counts the TLS handshakes wrk
 * completes, full and resumed, and prints them to stderr when wrk exits; with
 * ZEITWORK_TLS_RESUME=0 it also makes wrk forget its session between connections.
 *
 * wrk reconnects a finished connection with SSL_shutdown + SSL_clear, and SSL_clear keeps
 * the last session: so, left alone, every connection after a thread's first resumes its
 * TLS 1.3 session (PSK + ECDHE, no certificate signature). Clearing the session first makes
 * each connection a full handshake, which is what "new TLS handshakes" should measure. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>

static long full_handshakes, resumed_handshakes;
static int forget_sessions = -1;

static int forgetting(void) {
    if (forget_sessions < 0) {
        const char *v = getenv("ZEITWORK_TLS_RESUME");
        forget_sessions = v != NULL && strcmp(v, "0") == 0;
    }
    return forget_sessions;
}

int SSL_clear(SSL *ssl) {
    static int (*real)(SSL *);
    if (real == NULL) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    if (forgetting()) SSL_set_session(ssl, NULL);
    return real(ssl);
}

int SSL_connect(SSL *ssl) {
    static int (*real)(SSL *);
    if (real == NULL) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    int done = real(ssl);
    if (done == 1) {
        if (SSL_session_reused(ssl)) resumed_handshakes++;
        else full_handshakes++;
    }
    return done;
}

__attribute__((destructor)) static void report(void) {
    fprintf(stderr, "tls-handshakes full=%ld resumed=%ld\n", full_handshakes, resumed_handshakes);
}
