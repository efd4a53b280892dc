/* SPDX-License-Identifier: MIT */
/* hello.c - rank 0 learns what every worker rank offers.
 *
 * Each worker rank opens its local link (so it knows how many workers it
 * runs and that it can fork them), then sends one HELLO: its slot count or
 * the error that stops it, and its host name. Rank 0 waits for all of
 * them, polling with MPI_Iprobe so the wait is bounded (HELLO_TIMEOUT_S,
 * or $FP_MPI_HELLO_TIMEOUT seconds): a rank that never reaches
 * fp_pool_new() gives an error, not a hang. No collective call is made
 * for the same reason. Any error ends every worker rank (BYE) and fails
 * fp_pool_new() on rank 0 with a message naming the rank.
 */
#include "pool/mpi/mpi_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HELLO_TIMEOUT_S 60

void fp__mpi_bye_all(const fp__mpi_world *w, const int *said) {
  for (int r = 1; r < w->size; r++)
    if (said == NULL || said[r] != 2)
      fp__mpi_send_now(r, FP__M_BYE, 0, 0, 0, NULL, 0);
}

static int64_t hello_deadline(void) {
  const char *env = getenv("FP_MPI_HELLO_TIMEOUT");
  double s = env && *env ? atof(env) : HELLO_TIMEOUT_S;
  if (!(s > 0)) /* 0, negative, NaN, or not a number: the default */
    s = HELLO_TIMEOUT_S;
  /* INFINITY or a century and more: no limit (as the API's timeouts). */
  if (s >= 3.0e9)
    return INT64_MAX;
  return fp__mpi_now() + (int64_t)(s * 1e9);
}

/* Receives one HELLO into w (rank r: said[r] = 1, or 2 when the rank
 * cannot serve and leaves on its own). Returns 0, 1 when none
 * is waiting, or an error with msg filled. */
static int recv_hello(fp__mpi_world *w, int *said, char *msg, size_t len) {
  int flag = 0, count = 0;
  MPI_Status st;
  MPI_Iprobe(MPI_ANY_SOURCE, FP__MPI_TAG, MPI_COMM_WORLD, &flag, &st);
  if (!flag)
    return 1;
  unsigned char buf[sizeof(fp__mhdr) + sizeof(fp__mhello)] = {0};
  MPI_Get_count(&st, MPI_BYTE, &count);
  int r = st.MPI_SOURCE;
  MPI_Recv(buf, (int)sizeof(buf), MPI_BYTE, r, FP__MPI_TAG, MPI_COMM_WORLD,
           MPI_STATUS_IGNORE);
  fp__mhdr h;
  fp__mhello hello;
  memcpy(&h, buf, sizeof(h));
  memcpy(&hello, buf + sizeof(h), sizeof(hello));
  hello.host[FP__MPI_HOST - 1] = hello.err[sizeof(hello.err) - 1] = 0;
  if (h.op != FP__M_HELLO || count != (int)sizeof(buf) || said[r]) {
    snprintf(msg, len, "FP_TRANSPORT_MPI: rank %d sent a malformed HELLO "
                       "(a different forkpool build?)", r);
    return FP_EPROTO;
  }
  said[r] = h.arg > 0 ? 1 : 2; /* 2: the rank leaves by itself */
  memcpy(w->host[r], hello.host, FP__MPI_HOST);
  if (h.arg <= 0) {
    snprintf(msg, len, "FP_TRANSPORT_MPI: rank %d on %s cannot serve: %s",
             r, hello.host, hello.err);
    return h.arg < 0 ? h.arg : FP_EINVAL;
  }
  w->count[r] = h.arg;
  return 0;
}

/* Options that cannot mean the same thing on every node. */
static int refuse_opts(const fp_pool_opts *opts, char *msg, size_t len) {
  if (opts->pin == FP_PIN_LIST) {
    snprintf(msg, len, "FP_TRANSPORT_MPI: FP_PIN_LIST names CPUs of one "
                       "machine; use FP_PIN_COMPACT or FP_PIN_SCATTER, "
                       "which every worker rank plans on its own node");
    return FP_ENOTSUP;
  }
  return 0;
}

static int alloc_map(fp__mpi_world *w) {
  size_t n = (size_t)w->size;
  free(w->base);
  free(w->count);
  free(w->host);
  w->base = calloc(n, sizeof(int));
  w->count = calloc(n, sizeof(int));
  w->host = calloc(n, sizeof(*w->host));
  return w->base && w->count && w->host ? 0 : FP_ENOMEM;
}

int fp__mpi_hello_gather(fp__mpi_world *w, const fp_pool_opts *opts) {
  char msg[512] = "";
  int rc = alloc_map(w), got = 0, said[w->size];
  memset(said, 0, sizeof(said));
  int64_t deadline = hello_deadline();
  while (rc == 0 && got < w->size - 1) {
    int one = recv_hello(w, said, msg, sizeof(msg));
    if (one == 0)
      got++;
    else if (one < 0)
      rc = one;
    else if (fp__mpi_now() > deadline)
      rc = FP_ETIMEDOUT;
    else
      nanosleep(&(struct timespec){0, 200000}, NULL);
  }
  if (rc == FP_ETIMEDOUT)
    for (int r = 1; r < w->size; r++)
      if (!said[r]) {
        snprintf(msg, sizeof(msg), "FP_TRANSPORT_MPI: rank %d did not reach "
                                   "fp_pool_new() in time (every rank must "
                                   "call it with FP_TRANSPORT_MPI)", r);
        break;
      }
  if (rc == 0)
    rc = refuse_opts(opts, msg, sizeof(msg));
  if (rc != 0) {
    fp__mpi_bye_all(w, said);
    w->core->set_last_error(rc, msg[0] ? msg : "FP_TRANSPORT_MPI failed");
    return rc;
  }
  w->total = 0;
  for (int r = 1; r < w->size; r++) {
    w->base[r] = w->total;
    w->total += w->count[r];
  }
  return 0;
}
