/* SPDX-License-Identifier: MIT */
/* fnref.c - naming task functions by (module identity, offset) instead of
 * pointers, and refusing any reference that does not name code.
 *
 * A task's function crosses the process boundary as the ELF module that
 * contains it and its offset from that module's load address. The module
 * is named by two things the resolver checks against its own module list
 * (dl_iterate_phdr): the load address (dlpi_addr) and `ident`, an FNV-1a
 * hash of the module's path, its GNU build-id and the layout of its
 * PT_LOAD segments. A position in the module list would not do: when the
 * master dlcloses a library loaded before the pool, every later module
 * moves up one place in the master but not in the workers, which were
 * forked before, and the same index names another library there. A load
 * address alone would not do either: a library dlopened after the
 * dlclose may land where the closed one was. With both, a reference
 * resolves to the module the master meant or to nothing.
 *
 * The offset must then fall inside an executable PT_LOAD segment of that
 * module, so a corrupt or forged TASK frame can at worst name another
 * function of the same module, never data, never past its end. Code that
 * no module contains (a JIT's buffer) goes as a raw address, which is
 * accepted only inside an executable mapping of the process
 * (/proc/self/maps), on both sides.
 *
 * Under fork every module sits at the same address in the worker, so a
 * valid reference resolves to the very pointer the master named. A module
 * loaded after the pool started is unknown to the workers, and one the
 * worker has unloaded is gone: the worker then fails the task with
 * FP_EINVAL instead of jumping to a wild address.
 *
 * Caches. The master makes a reference per job and a worker resolves one
 * per chunk, usually for the same few functions, so both sides keep
 * per-thread caches. An entry is only trusted while the loader's counts of
 * loads and unloads (dlpi_adds, dlpi_subs) are those it was filled under:
 * any dlopen or dlclose since invalidates it, so a cached module is still
 * mapped and a cached reference still names the module now at that
 * address.
 */
#include "pool/proto.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define KIND_MODULE 0u
#define KIND_RAW UINT32_MAX
#define CACHE_SLOTS 4

/* The loader's load/unload counts; ok is 0 when the C library does not
 * report them (then nothing is cached). */
typedef struct gen {
  unsigned long long adds, subs;
  int ok;
} gen;

static void gen_of(const struct dl_phdr_info *info, size_t size, gen *g) {
  g->ok = size >=
          offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs);
  g->adds = g->ok ? info->dlpi_adds : 0;
  g->subs = g->ok ? info->dlpi_subs : 0;
}

static int read_gen(struct dl_phdr_info *info, size_t size, void *arg) {
  gen_of(info, size, arg);
  return 1; /* the counts are the same in every entry: stop at the first */
}

/* Returns the current generation of the module list. */
static gen gen_now(void) {
  gen g = {0, 0, 0};
  dl_iterate_phdr(read_gen, &g);
  return g;
}

static int gen_same(const gen *a, const gen *b) {
  return a->ok && b->ok && a->adds == b->adds && a->subs == b->subs;
}

/* ---- module identity ----------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

/* Returns 1 when [vaddr, vaddr + len) lies in the file-backed part of one
 * PT_LOAD segment, i.e. is mapped and readable. */
static int in_loaded_file(const struct dl_phdr_info *info, ElfW(Addr) vaddr,
                          size_t len) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_LOAD && vaddr >= ph->p_vaddr &&
        vaddr - ph->p_vaddr <= ph->p_filesz &&
        len <= ph->p_filesz - (vaddr - ph->p_vaddr))
      return 1;
  }
  return 0;
}

/* Mixes the module's GNU build-id note, if it has one, into h. Notes are
 * read only where a PT_LOAD maps them, and every size is checked against
 * the note segment before it is used. */
static uint64_t hash_build_id(const struct dl_phdr_info *info, uint64_t h) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_NOTE ||
        !in_loaded_file(info, ph->p_vaddr, ph->p_memsz))
      continue;
    const unsigned char *p =
        (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
    size_t left = ph->p_memsz, align = ph->p_align == 8 ? 8 : 4;
    ElfW(Nhdr) nh;
    while (left >= sizeof nh) {
      memcpy(&nh, p, sizeof nh);
      size_t name = ((size_t)nh.n_namesz + align - 1) & ~(align - 1);
      size_t desc = ((size_t)nh.n_descsz + align - 1) & ~(align - 1);
      if (name + desc > left - sizeof nh)
        break;
      if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
          memcmp(p + sizeof nh, "GNU", 4) == 0)
        return fnv(h, p + sizeof nh + name, nh.n_descsz);
      p += sizeof nh + name + desc;
      left -= sizeof nh + name + desc;
    }
  }
  return h;
}

/* Returns the identity hash of a module: its path (the main program's is
 * ""), its build-id and its PT_LOAD layout. Never 0, so a zeroed
 * reference names nothing. */
static uint64_t module_ident(const struct dl_phdr_info *info) {
  const char *name = info->dlpi_name != NULL ? info->dlpi_name : "";
  uint64_t h = fnv(UINT64_C(0xcbf29ce484222325), name, strlen(name) + 1);
  h = hash_build_id(info, h);
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD)
      continue;
    uint64_t seg[3] = {ph->p_vaddr, ph->p_memsz, ph->p_flags};
    h = fnv(h, seg, sizeof seg);
  }
  return h != 0 ? h : 1;
}

/* Returns 1 when offset (from the module's load address) lies inside one of
 * the module's executable PT_LOAD segments. */
static int in_exec_segment(const ElfW(Phdr) * phdr, int phnum,
                           uint64_t offset) {
  for (int i = 0; i < phnum; i++) {
    const ElfW(Phdr) *ph = &phdr[i];
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) != 0 &&
        offset >= ph->p_vaddr && offset - ph->p_vaddr < ph->p_memsz)
      return 1;
  }
  return 0;
}

/* ---- raw addresses: /proc/self/maps -------------------------------------- */

/* Returns 1 when the maps line `line` ("lo-hi perms ...") covers addr with
 * execute permission, 0 when it covers addr without, -1 when it does not
 * cover addr (or does not parse). */
static int maps_line_covers(const char *line, uintptr_t addr) {
  unsigned long lo, hi;
  char perms[5];
  if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) != 3)
    return -1;
  if (addr < lo || addr >= hi)
    return -1;
  return perms[2] == 'x';
}

/* Returns 1 when addr lies in an executable mapping of this process, else
 * 0 (also when /proc/self/maps cannot be read). Reads with a fixed buffer,
 * keeping only the start of each line, so it allocates nothing. */
static int exec_mapping_contains(uintptr_t addr) {
  char buf[4096], line[128];
  size_t used = 0;
  ssize_t n;
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC), verdict = -1;

  if (fd < 0)
    return 0;
  while (verdict < 0 && (n = read(fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n && verdict < 0; i++) {
      if (buf[i] != '\n') {
        if (used < sizeof line - 1)
          line[used++] = buf[i];
        continue;
      }
      line[used] = '\0';
      used = 0;
      verdict = maps_line_covers(line, addr);
    }
  }
  close(fd);
  return verdict == 1;
}

/* ---- making references --------------------------------------------------- */

typedef struct find_ctx {
  uintptr_t addr;
  int found, exec;
  fp__fnref ref;
  gen g;
} find_ctx;

/* dl_iterate_phdr callback: stops at the module whose PT_LOAD segments
 * contain ctx->addr and fills ctx->ref from it. */
static int find_module(struct dl_phdr_info *info, size_t size, void *arg) {
  find_ctx *ctx = arg;
  gen_of(info, size, &ctx->g);
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type != PT_LOAD || ctx->addr < lo ||
        ctx->addr - lo >= ph->p_memsz)
      continue;
    ctx->found = 1;
    ctx->exec = (ph->p_flags & PF_X) != 0;
    ctx->ref.kind = KIND_MODULE;
    ctx->ref.base = info->dlpi_addr;
    ctx->ref.offset = ctx->addr - info->dlpi_addr;
    ctx->ref.ident = module_ident(info);
    return 1;
  }
  return 0;
}

/* Fills *ref for fn from the current module list. Returns 0, or FP_EINVAL
 * when fn is not code: inside a module but outside its executable
 * segments, or outside every module and every executable mapping. */
static int make_uncached(const void *fn, fp__fnref *ref, gen *g) {
  find_ctx ctx;

  memset(&ctx, 0, sizeof ctx);
  ctx.addr = (uintptr_t)fn;
  dl_iterate_phdr(find_module, &ctx);
  *g = ctx.g;
  if (ctx.found) {
    *ref = ctx.ref;
    return ctx.exec ? 0 : FP_EINVAL;
  }
  if (!exec_mapping_contains((uintptr_t)fn))
    return FP_EINVAL;
  memset(ref, 0, sizeof *ref);
  ref->kind = KIND_RAW;
  ref->offset = (uint64_t)(uintptr_t)fn;
  return 0;
}

/* Fills *out with the reference of fn. Returns 0, or FP_EINVAL for a NULL
 * argument or an fn that is not code (see make_uncached); *out is then
 * unspecified. Callers submit the same few functions over and over, so the
 * last module references made are kept per thread while the module list
 * does not change. */
int fp__fnref_make(const void *fn, fp__fnref *out) {
  static __thread const void *cache_fn[CACHE_SLOTS];
  static __thread fp__fnref cache_ref[CACHE_SLOTS];
  static __thread gen cache_gen;
  static __thread unsigned cache_next;
  gen now;
  int rc;

  if (fn == NULL || out == NULL)
    return FP_EINVAL;
  now = gen_now();
  if (gen_same(&now, &cache_gen)) {
    for (int i = 0; i < CACHE_SLOTS; i++)
      if (cache_fn[i] == fn) {
        *out = cache_ref[i];
        return 0;
      }
  } else {
    memset(cache_fn, 0, sizeof cache_fn);
  }
  if ((rc = make_uncached(fn, out, &now)) != 0)
    return rc;
  if (out->kind == KIND_RAW)
    return 0; /* mmap/munmap leave the module list alone: never cached */
  if (!gen_same(&now, &cache_gen)) /* the list changed during the walk */
    memset(cache_fn, 0, sizeof cache_fn);
  cache_gen = now;
  cache_fn[cache_next % CACHE_SLOTS] = fn;
  cache_ref[cache_next % CACHE_SLOTS] = *out;
  cache_next++;
  return 0;
}

/* ---- resolving references ------------------------------------------------ */

typedef struct module_hit {
  uint64_t base, ident;
  const ElfW(Phdr) * phdr;
  int phnum, found;
  gen g;
} module_hit;

/* dl_iterate_phdr callback: stops at the module loaded at hit->base whose
 * identity is hit->ident. */
static int match_module(struct dl_phdr_info *info, size_t size, void *arg) {
  module_hit *hit = arg;
  gen_of(info, size, &hit->g);
  if ((uint64_t)info->dlpi_addr != hit->base ||
      module_ident(info) != hit->ident)
    return 0;
  hit->phdr = info->dlpi_phdr;
  hit->phnum = info->dlpi_phnum;
  hit->found = 1;
  return 1;
}

/* Resolves a reference in this process. Returns the function's address,
 * or NULL when the reference names no code here: an unknown kind, a
 * nonzero pad, no module with that load address and identity, an offset
 * outside the module's executable segments, or a raw address outside
 * every executable mapping. The module last looked up is cached per
 * thread until the module list changes: a worker usually runs one
 * function for many chunks. */
void *fp__fnref_resolve(const fp__fnref *ref) {
  static __thread module_hit cached;
  module_hit hit;

  if (ref == NULL || ref->pad != 0)
    return NULL;
  if (ref->kind == KIND_RAW) {
    if (ref->base != 0 || ref->ident != 0 || ref->offset > UINTPTR_MAX ||
        !exec_mapping_contains((uintptr_t)ref->offset))
      return NULL;
    return (void *)(uintptr_t)ref->offset;
  }
  if (ref->kind != KIND_MODULE || ref->base > UINTPTR_MAX)
    return NULL;
  gen now = gen_now();
  if (cached.found && cached.base == ref->base && cached.ident == ref->ident &&
      gen_same(&now, &cached.g)) {
    hit = cached;
  } else {
    memset(&hit, 0, sizeof hit);
    hit.base = ref->base;
    hit.ident = ref->ident;
    dl_iterate_phdr(match_module, &hit);
    if (!hit.found)
      return NULL;
    cached = hit;
  }
  if (!in_exec_segment(hit.phdr, hit.phnum, ref->offset))
    return NULL;
  return (void *)(uintptr_t)(ref->base + ref->offset);
}

/* ---- references from another process of the same program (MPI) ---------- */

typedef struct ident_hit {
  uint64_t ident, base;
  int n;
} ident_hit;

static int match_ident(struct dl_phdr_info *info, size_t size, void *arg) {
  ident_hit *hit = arg;
  (void)size;
  if (module_ident(info) == hit->ident) {
    hit->base = (uint64_t)info->dlpi_addr;
    hit->n++;
  }
  return 0;
}

/* Points a reference made by another process running the same program (an
 * MPI rank: not a fork, so its modules sit elsewhere) at this process's
 * copy of the module: the one module with the same identity, wherever it
 * is loaded here. Returns 0; FP_EINVAL for a raw address (meaningless in
 * another process) or when no module, or more than one, has that
 * identity - the reference then names nothing and the task fails as for a
 * module that is not loaded. */
int fp__fnref_rebase(fp__fnref *ref) {
  ident_hit hit = {.ident = ref->ident};
  if (ref->kind == KIND_MODULE)
    dl_iterate_phdr(match_ident, &hit);
  if (hit.n != 1) {
    memset(ref, 0, sizeof(*ref));
    return FP_EINVAL;
  }
  ref->base = hit.base;
  return 0;
}
