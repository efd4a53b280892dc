/* SPDX-License-Identifier: MIT */
/* transport.h - how the core finds a link that lives in another library.
 *
 * The core (libforkpool) never links an MPI library. The MPI link is built
 * as libforkpool_mpi, which exports one function, fp_mpi_entry(). The core
 * finds it when a pool asks for FP_TRANSPORT_MPI (transport.c): through a
 * weak reference (static linking with `-Wl,-u,fp_mpi_entry`), then in the
 * process's global symbols (the program linked libforkpool_mpi.so), then
 * by dlopen() of libforkpool_mpi.so.0 (FP_MPI_LIBRARY, the directory of
 * the module holding the core, the default search path).
 *
 * The two libraries share no symbols: the core hands the MPI library a
 * table of the core functions it needs (fp__core_api), so the MPI library
 * links against neither libforkpool.a nor libforkpool.so and works with
 * either, and a program that links the core statically still gets one copy
 * of the core's state (allocator, descriptor registry, task context).
 * libuv is shared the ordinary way (both link libuv.so.1).
 */
#ifndef FP_POOL_TRANSPORT_H
#define FP_POOL_TRANSPORT_H

#include "pool/link.h"

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever fp__core_api or fp__mpi_entry_t changes shape, or a
 * structure passed through them (fp__wconf: 5 added result_limit; 6 added
 * abandon). */
#define FP__TRANSPORT_ABI 6

/* The core functions a transport library may call. */
typedef struct fp__core_api {
  unsigned abi;  /* FP__TRANSPORT_ABI */
  size_t size;   /* sizeof(fp__core_api) */
  const fp__link_ops *local;
  void (*set_last_error)(int code, const char *msg);
  const char *(*strerror)(int code);
  int (*cpu_count)(void);
  int (*affinity_plan)(fp_pin_policy policy, const int *cpus, size_t ncpus,
                       int nworkers, int *cpu_of_worker, char *err,
                       size_t errlen);
  int64_t (*now_ns)(void);
  int (*fnref_rebase)(fp__fnref *ref);
  /* A worker rank calls it before it forks anything: from then on, this
   * process and its forks refuse Manager refs of rank 0 with a message
   * instead of reading their own memory (ipc/shm/arena.h). */
  void (*enter_worker_rank)(int rank);
  /* The one wire (ipc/wire/frame.c): a transport never writes or parses
   * a frame header by hand. */
  int (*frame_put_hdr)(unsigned char out[4], size_t len);
  int (*frame_parse)(const void *buf, size_t len, size_t max,
                     size_t *payload_len);
  /* Reads a map's borrowed items without faulting (pool/usermem.h):
   * 0, or -EFAULT when they cannot be read. */
  int (*mem_read)(void *dst, const void *src, size_t n);
} fp__core_api;

/* What a transport library offers. */
typedef struct fp__mpi_entry_t {
  unsigned abi;
  const fp__link_ops *ops;
  /* Called on every process that runs fp_pool_new() with this transport,
   * before the link is opened. On the master (MPI rank 0) it returns 0 and
   * the number of worker slots the link will have in *nworkers, or a
   * negative code (the last error says why). On every other rank it
   * serves the pool and ends the process: it never returns. */
  int (*prepare)(const fp__core_api *core, const fp_pool_opts *opts,
                 int *nworkers);
  /* Rank 0 only: the pool failed after prepare() returned 0 and before a
   * link was opened (a worker plan or the link's own allocation failed),
   * so no link will ever say BYE. Tells every worker rank to end, which
   * otherwise would serve for ever and keep MPI_Finalize waiting. */
  void (*abandon)(void);
} fp__mpi_entry_t;

/* The library's one exported function: its entry, or NULL when the core's
 * ABI (core->abi, core->size) is not the one it was built for. */
typedef const fp__mpi_entry_t *(*fp__mpi_entry_fn)(const fp__core_api *core);

/* fnref.c: points a reference made by another process of the same
 * program at this process's copy of its module. Returns 0 or FP_EINVAL
 * (then the reference names nothing). */
int fp__fnref_rebase(fp__fnref *ref);

/* Core side (transport.c): finds libforkpool_mpi and runs its prepare().
 * Returns 0 with *ops and *nworkers (rank 0 only: other ranks never
 * return), or FP_ENOTSUP when no usable library is found, or the error of
 * prepare(); the last error says why. */
int fp__transport_mpi(const fp_pool_opts *opts, const fp__link_ops **ops,
                      int *nworkers);
/* After fp__transport_mpi() returned 0, the pool could not open its link:
 * ends the worker ranks (the entry's abandon()). */
void fp__transport_mpi_abandon(void);

#endif
