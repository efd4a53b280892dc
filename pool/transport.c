/* SPDX-License-Identifier: MIT */
/* transport.c - finds the MPI link at run time, so the core never links MPI.
 *
 * A pool that asks for FP_TRANSPORT_MPI needs libforkpool_mpi's entry
 * function (transport.h). It is looked for, first found wins:
 *
 *   1. a weak reference: a program that linked libforkpool_mpi.a (with
 *      `-Wl,-u,fp_mpi_entry`, which forkpool-mpi.pc adds) has it resolved
 *      at link time;
 *   2. the process's global symbols: a program linked against
 *      libforkpool_mpi.so;
 *   3. dlopen(): $FP_MPI_LIBRARY when set (and only it), else
 *      libforkpool_mpi.so.0 in the directory of the module that holds this
 *      code (libforkpool.so's directory, or the program's for a static
 *      core), else by the dynamic linker's default search path.
 *
 * A library that is found is kept loaded for the life of the process (its
 * progress thread and MPI state may outlive a pool). Nothing here needs
 * MPI's headers.
 */
#include "pool/transport.h"
#include "affinity/affinity.h"
#include "ipc/shm/arena.h"
#include "ipc/wire/error.h"
#include "ipc/wire/frame.h"
#include "pool/clock.h"
#include "pool/usermem.h"

#include <dlfcn.h>
#include <link.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MPI_SONAME "libforkpool_mpi.so.0"

extern const fp__mpi_entry_t *fp_mpi_entry(const fp__core_api *core)
    __attribute__((weak));

static const fp__core_api core_api = {
    .abi = FP__TRANSPORT_ABI,
    .size = sizeof(fp__core_api),
    .local = &fp__link_local,
    .set_last_error = fp__set_last_error,
    .strerror = fp_strerror,
    .cpu_count = fp_cpu_count,
    .affinity_plan = fp__affinity_plan,
    .now_ns = fp__now_ns,
    .fnref_rebase = fp__fnref_rebase,
    .enter_worker_rank = fp__shm_enter_worker_rank,
    .frame_put_hdr = fp__frame_put_hdr,
    .frame_parse = fp_frame_parse,
    .mem_read = fp__mem_read,
};

/* dlopen()s path and looks the entry up; appends why not to why. */
static fp__mpi_entry_fn try_open(const char *path, char *why, size_t len) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  fp__mpi_entry_fn fn = NULL;
  if (h != NULL)
    *(void **)&fn = dlsym(h, "fp_mpi_entry");
  if (fn == NULL) {
    size_t used = strlen(why);
    const char *e = dlerror();
    snprintf(why + used, len - used, "%s%s", used ? "; " : "",
             e ? e : path);
    if (h != NULL)
      dlclose(h);
  }
  return fn;
}

/* The absolute path of the module holding this function into buf: the
 * program itself (a static core) through /proc/self/exe -- the name the
 * dynamic linker knows it by is argv[0], which the caller chooses and may
 * be relative to any directory -- or the shared core's path when it is
 * absolute. 0, or -1 when there is none to trust. */
static int core_module_path(char *buf, size_t len) {
  Dl_info info;
  struct link_map *lm = NULL;
  if (dladdr1((void *)core_module_path, &info, (void **)&lm,
              RTLD_DL_LINKMAP) == 0 ||
      lm == NULL)
    return -1;
  if (lm->l_name == NULL || lm->l_name[0] == '\0') { /* the program */
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0 || (size_t)n >= len - 1)
      return -1;
    buf[n] = '\0';
    return 0;
  }
  if (lm->l_name[0] != '/' || strlen(lm->l_name) >= len)
    return -1; /* opened by a relative path: not where it is now */
  strcpy(buf, lm->l_name);
  return 0;
}

/* libforkpool_mpi.so.0 next to the module holding the core. */
static fp__mpi_entry_fn try_beside_core(char *why, size_t len) {
  char module[PATH_MAX], path[PATH_MAX];
  if (core_module_path(module, sizeof(module)) != 0)
    return NULL;
  const char *slash = strrchr(module, '/');
  int n = snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - module),
                   module, MPI_SONAME);
  if (n < 0 || (size_t)n >= sizeof(path))
    return NULL;
  return try_open(path, why, len);
}

static fp__mpi_entry_fn find_entry(char *why, size_t len) {
  fp__mpi_entry_fn fn = fp_mpi_entry;
  if (fn == NULL)
    *(void **)&fn = dlsym(RTLD_DEFAULT, "fp_mpi_entry");
  if (fn != NULL)
    return fn;
  const char *env = getenv("FP_MPI_LIBRARY");
  if (env != NULL && *env)
    return try_open(env, why, len);
  if ((fn = try_beside_core(why, len)) == NULL)
    fn = try_open(MPI_SONAME, why, len);
  return fn;
}

/* The entry whose prepare() succeeded: one MPI pool per run. */
static const fp__mpi_entry_t *_Atomic prepared;

int fp__transport_mpi(const fp_pool_opts *opts, const fp__link_ops **ops,
                      int *nworkers) {
  char why[768] = "", msg[1024];
  fp__mpi_entry_fn fn = find_entry(why, sizeof(why));
  const fp__mpi_entry_t *e = fn ? fn(&core_api) : NULL;
  if (e == NULL || e->abi != FP__TRANSPORT_ABI) {
    snprintf(msg, sizeof(msg),
             "FP_TRANSPORT_MPI: %s (link -lforkpool_mpi, see `pkg-config "
             "--libs forkpool-mpi`, or set FP_MPI_LIBRARY to its path)",
             fn ? "libforkpool_mpi was built for another forkpool version"
                : why[0] ? why : "libforkpool_mpi not found");
    fp__set_last_error(FP_ENOTSUP, msg);
    return FP_ENOTSUP;
  }
  int rc = e->prepare(&core_api, opts, nworkers);
  if (rc == 0) {
    *ops = e->ops;
    atomic_store(&prepared, e);
  }
  return rc;
}

void fp__transport_mpi_abandon(void) {
  const fp__mpi_entry_t *e = atomic_exchange(&prepared, NULL);
  if (e != NULL)
    e->abandon();
}
