/* fnref.c - naming task functions by (module, offset) instead of pointers.
 *
 * A task's function crosses the process boundary as the index of the ELF
 * module that contains it (in dl_iterate_phdr order) and its offset from
 * that module's load address. Under fork every module sits at the same
 * address in the worker, so the reference resolves to the same pointer; it
 * also stays meaningful for a later transport (MPI) where every rank runs
 * the same binary at another address. A module loaded after the pool
 * started is unknown to the workers: the worker then fails the task with
 * FP_EINVAL instead of jumping to a wild address.
 */
#include "pool/pool_int.h"

#include <link.h>
#include <string.h>

typedef struct find_ctx {
  uintptr_t addr;
  uint32_t index;
  uint32_t found;
  uintptr_t base;
} find_ctx;

/* dl_iterate_phdr callback: stops at the module whose PT_LOAD segments
 * contain ctx->addr. */
static int find_module(struct dl_phdr_info *info, size_t size, void *arg) {
  find_ctx *ctx = arg;
  (void)size;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD)
      continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (ctx->addr >= lo && ctx->addr < lo + ph->p_memsz) {
      ctx->found = 1;
      ctx->base = info->dlpi_addr;
      return 1;
    }
  }
  ctx->index++;
  return 0;
}

/* Fills *out with the reference of `fn`. Returns 0, or FP_EINVAL for NULL.
 * When no module contains fn (a static binary), the raw address is used. */
int fp__fnref_make(const void *fn, fp__fnref *out) {
  /* Callers submit the same few functions over and over: remember the
   * last ones per thread rather than walk the module list each time. */
  static __thread const void *cache_fn[4];
  static __thread fp__fnref cache_ref[4];
  static __thread unsigned cache_next;
  if (fn == NULL || out == NULL)
    return FP_EINVAL;
  for (int i = 0; i < 4; i++)
    if (cache_fn[i] == fn) {
      *out = cache_ref[i];
      return 0;
    }
  find_ctx ctx = {(uintptr_t)fn, 0, 0, 0};
  dl_iterate_phdr(find_module, &ctx);
  memset(out, 0, sizeof(*out));
  if (ctx.found) {
    out->module = ctx.index;
    out->offset = (uint64_t)((uintptr_t)fn - ctx.base);
  } else {
    out->module = UINT32_MAX;
    out->offset = (uint64_t)(uintptr_t)fn;
  }
  cache_fn[cache_next % 4] = fn;
  cache_ref[cache_next % 4] = *out;
  cache_next++;
  return 0;
}

typedef struct base_ctx {
  uint32_t want, index;
  uintptr_t base;
  int found;
} base_ctx;

static int find_base(struct dl_phdr_info *info, size_t size, void *arg) {
  base_ctx *ctx = arg;
  (void)size;
  if (ctx->index++ == ctx->want) {
    ctx->base = info->dlpi_addr;
    ctx->found = 1;
    return 1;
  }
  return 0;
}

/* Resolves a reference in this process. Returns the function's address, or
 * NULL when the module does not exist here. The last module looked up is
 * cached: a worker usually runs one function many times. */
void *fp__fnref_resolve(const fp__fnref *ref) {
  static uint32_t cached_module = UINT32_MAX;
  static uintptr_t cached_base;
  if (ref->module == UINT32_MAX)
    return (void *)(uintptr_t)ref->offset;
  if (ref->module != cached_module) {
    base_ctx ctx = {ref->module, 0, 0, 0};
    dl_iterate_phdr(find_base, &ctx);
    if (!ctx.found)
      return NULL;
    cached_module = ref->module;
    cached_base = ctx.base;
  }
  return (void *)(cached_base + (uintptr_t)ref->offset);
}
