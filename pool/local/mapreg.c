/* SPDX-License-Identifier: MIT */
/* mapreg.c - the registry of every pool's shared mapping, so that a fork
 * server unmaps those of the other pools.
 *
 * A fork server is a copy of the master, so it maps the shared memory of
 * every pool the program had when it was forked, and so would its
 * workers: a task of one pool could write another pool's rings and slot
 * records (the harm docs/faults.md describes for a worker's own pool,
 * carried to pools it has nothing to do with). A fork server therefore
 * unmaps every registered mapping but its own pool's when it starts.
 *
 * The registry shares the descriptor registry's mutex (fdreg.c), which
 * fork() takes around the copy: a child's registry names exactly the
 * mappings it has. Register after mmap and unregister before munmap, both
 * under that mutex, so that no entry ever names memory that could be
 * something else in a child. When the registry is full a mapping is not
 * registered: other pools' fork servers then keep it mapped, which is
 * what every pool did before this registry existed.
 */
#include "pool/local/local.h"

#include <sys/mman.h>

#define MAPREG_MAX 256

typedef struct mapping {
  void *base; /* NULL: free */
  size_t len;
} mapping;

static mapping mapreg[MAPREG_MAX]; /* under fp__fdreg_lock() */

void fp__mapreg_add(void *base, size_t len) {
  fp__fdreg_init(); /* the fork handlers that make the snapshot whole */
  fp__fdreg_lock();
  for (int i = 0; i < MAPREG_MAX; i++)
    if (mapreg[i].base == NULL) {
      mapreg[i] = (mapping){base, len};
      break;
    }
  fp__fdreg_unlock();
}

void fp__mapreg_remove(void *base) {
  fp__fdreg_lock();
  for (int i = 0; i < MAPREG_MAX; i++)
    if (mapreg[i].base == base)
      mapreg[i] = (mapping){NULL, 0};
  fp__fdreg_unlock();
}

/* In a freshly forked fork server (single-threaded: no lock). Its workers
 * inherit a registry naming only keep, which each worker drops when it
 * unmaps the other workers' rings (fp__mapreg_remove): a range with holes
 * must never be unmapped whole by a pool a task starts later. */
void fp__mapreg_unmap_others(const void *keep) {
  for (int i = 0; i < MAPREG_MAX; i++)
    if (mapreg[i].base != NULL && mapreg[i].base != keep) {
      munmap(mapreg[i].base, mapreg[i].len);
      mapreg[i] = (mapping){NULL, 0};
    }
}
