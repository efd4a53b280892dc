/* SPDX-License-Identifier: MIT */
/* check_fnref.c - tests of pool/fnref.c, function references.
 *
 * A reference must resolve to the function the maker named or to NULL:
 * real functions come back as themselves; forged references (unknown kind,
 * wrong load address or identity, an offset outside the module's code, a
 * raw address outside executable memory) give NULL. The dlclose case
 * builds three tiny shared objects with the same layout from C source
 * written to a temporary directory (cc -shared -fPIC), so a function of
 * one sits at the same offset as the others' and a reference that named
 * modules by list position would silently call the wrong one.
 */
#include "pool/pool_int.h"
#include "testutil.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* Not static and used, so it stays a real function of the runner. */
int fnref_target(int x);
int fnref_target(int x) {
  return x + 1;
}

static int fnref_data = 42; /* a data address inside the runner's module */

static fp__fnref ref_of(const void *fn) {
  fp__fnref ref;
  ck_assert_int_eq(fp__fnref_make(fn, &ref), 0);
  return ref;
}

static void teardown(void) {
  fp_test_no_children();
}

/* Whether this process sees its own executable layout, which fnref checks
 * against: not under valgrind, which runs translated code and maps memory
 * of its own, so /proc/self/maps and the module list do not show it. */
static int layout_visible(void) {
  return !fp_test_under_valgrind();
}

START_TEST(real_functions_resolve_to_themselves) {
  const void *fns[] = {(const void *)fnref_target, (const void *)fp_version,
                       (const void *)getpid, (const void *)memcpy};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    fp__fnref ref = ref_of(fns[i]);
    ck_assert_uint_eq(ref.kind, 0);
    ck_assert_uint_eq(ref.pad, 0);
    ck_assert_uint_ne(ref.ident, 0);
    ck_assert_ptr_eq(fp__fnref_resolve(&ref), fns[i]);
    fp__fnref again = ref_of(fns[i]); /* from the cache */
    ck_assert_mem_eq(&again, &ref, sizeof ref);
  }
  ck_assert_uint_le(sizeof(fp__fnref), 32);
}
END_TEST

START_TEST(make_refuses_null_and_data) {
  if (!layout_visible())
    return;
  fp__fnref ref;
  int local = 0;
  void *heap = malloc(16);
  ck_assert_int_eq(fp__fnref_make(NULL, &ref), FP_EINVAL);
  ck_assert_int_eq(fp__fnref_make((const void *)fnref_target, NULL), FP_EINVAL);
  ck_assert_int_eq(fp__fnref_make(&fnref_data, &ref), FP_EINVAL);
  ck_assert_int_eq(fp__fnref_make(&local, &ref), FP_EINVAL);
  ck_assert_int_eq(fp__fnref_make(heap, &ref), FP_EINVAL);
  free(heap);
}
END_TEST

START_TEST(forged_kind_or_pad_resolves_to_null) {
  fp__fnref good = ref_of((const void *)fnref_target), bad;
  static const uint32_t kinds[] = {1, 2, 5, 0x80000000u, UINT32_MAX - 1};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    bad = good;
    bad.kind = kinds[i];
    ck_assert_ptr_null(fp__fnref_resolve(&bad));
  }
  bad = good;
  bad.pad = 1;
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  memset(&bad, 0, sizeof bad);
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  ck_assert_ptr_null(fp__fnref_resolve(NULL));
}
END_TEST

START_TEST(wrong_identity_resolves_to_null) {
  fp__fnref good = ref_of((const void *)fnref_target);
  fp__fnref libc = ref_of((const void *)getpid), bad;
  bad = good;
  bad.ident ^= 1;
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  bad = good;
  bad.base += 4096;
  bad.offset -= 4096; /* same absolute address, another "module" */
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  bad = good; /* another loaded module's identity at our base */
  bad.ident = libc.ident;
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  bad = libc; /* our identity at libc's base */
  bad.ident = good.ident;
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  ck_assert_ptr_eq(fp__fnref_resolve(&good), (void *)fnref_target);
}
END_TEST

START_TEST(offset_outside_code_resolves_to_null) {
  fp__fnref good = ref_of((const void *)fnref_target), bad = good;
  static const uint64_t offsets[] = {UINT64_MAX, UINT64_C(1) << 46,
                                     UINT64_C(1) << 32};
  bad.offset = (uint64_t)((uintptr_t)&fnref_data - (uintptr_t)good.base);
  ck_assert_ptr_null(fp__fnref_resolve(&bad));
  for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
    bad.offset = offsets[i];
    ck_assert_ptr_null(fp__fnref_resolve(&bad));
  }
  bad.offset = good.offset + 1; /* still code of the module: allowed */
  ck_assert_ptr_eq(fp__fnref_resolve(&bad), (char *)fnref_target + 1);
}
END_TEST

static fp__fnref raw_ref(const void *p) {
  fp__fnref ref;
  memset(&ref, 0, sizeof ref);
  ref.kind = UINT32_MAX;
  ref.offset = (uint64_t)(uintptr_t)p;
  return ref;
}

START_TEST(raw_address_only_inside_exec_mapping) {
  if (!layout_visible())
    return;
  int local = 0;
  void *heap = malloc(16);
  fp__fnref ref = raw_ref((const void *)fnref_target);
  ck_assert_ptr_eq(fp__fnref_resolve(&ref), (void *)fnref_target);
  ref.base = 1;
  ck_assert_ptr_null(fp__fnref_resolve(&ref));
  const void *bad[] = {&local, heap, &fnref_data, NULL, (void *)8};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ref = raw_ref(bad[i]);
    ck_assert_ptr_null(fp__fnref_resolve(&ref));
  }
  ref = raw_ref(NULL);
  ref.offset = UINT64_MAX;
  ck_assert_ptr_null(fp__fnref_resolve(&ref));
  free(heap);
}
END_TEST

START_TEST(code_outside_modules_goes_raw) {
  long page = sysconf(_SC_PAGESIZE);
  void *code = mmap(NULL, (size_t)page, PROT_READ | PROT_EXEC,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  fp__fnref ref;
  if (code == MAP_FAILED)
    return; /* no executable anonymous memory here: nothing to test */
  ck_assert_int_eq(fp__fnref_make((char *)code + 16, &ref), 0);
  ck_assert_uint_eq(ref.kind, UINT32_MAX);
  ck_assert_ptr_eq(fp__fnref_resolve(&ref), (char *)code + 16);
  ck_assert_int_eq(munmap(code, (size_t)page), 0);
  ck_assert_ptr_null(fp__fnref_resolve(&ref));
  ck_assert_int_eq(fp__fnref_make((char *)code + 16, &ref), FP_EINVAL);
}
END_TEST

/* ---- dlclose: three libraries with the same layout ---------------------- */

typedef int (*probe_fn)(void);

static char libdir[64];

/* Builds <libdir>/<name>.so whose fnref_probe() returns value and dlopens
 * it; fills *fn. Returns the handle. */
static void *build_and_open(const char *name, int value, probe_fn *fn) {
  char src[128], so[128], cmd[512];
  snprintf(src, sizeof src, "%s/%s.c", libdir, name);
  snprintf(so, sizeof so, "%s/%s.so", libdir, name);
  FILE *f = fopen(src, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "int fnref_probe(void) { return %d; }\n", value);
  ck_assert_int_eq(fclose(f), 0);
  snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O0 -o %s %s", so, src);
  ck_assert_msg(system(cmd) == 0, "could not build %s", so);
  void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  ck_assert_msg(h != NULL, "dlopen %s: %s", so, dlerror());
  *fn = (probe_fn)dlsym(h, "fnref_probe");
  ck_assert_ptr_nonnull(*fn);
  return h;
}

static int still_loaded(const char *name) {
  char so[128];
  snprintf(so, sizeof so, "%s/%s.so", libdir, name);
  void *h = dlopen(so, RTLD_NOW | RTLD_NOLOAD);
  if (h != NULL)
    dlclose(h);
  return h != NULL;
}

/* Forks a "worker" that holds every library loaded now, sends it a
 * reference made after the caller's unload() and returns what the
 * worker's call returned (100 when the reference resolved to NULL). */
static int worker_calls(void (*unload)(void *), void *arg, probe_fn fn) {
  int p[2], status;
  ck_assert_int_eq(pipe(p), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    fp__fnref ref;
    close(p[1]);
    if (read(p[0], &ref, sizeof ref) != (ssize_t)sizeof ref)
      _exit(101);
    probe_fn got = (probe_fn)fp__fnref_resolve(&ref);
    _exit(got == NULL ? 100 : got());
  }
  close(p[0]);
  unload(arg);
  fp__fnref ref = ref_of((const void *)fn);
  ck_assert_int_eq(write(p[1], &ref, sizeof ref), (ssize_t)sizeof ref);
  close(p[1]);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status));
  return WEXITSTATUS(status);
}

static void unload_handle(void *h) {
  ck_assert_int_eq(dlclose(h), 0);
}

START_TEST(dlclose_of_earlier_library_never_runs_its_code) {
  if (!layout_visible())
    return;
  probe_fn fa, fb, fc;
  snprintf(libdir, sizeof libdir, "/tmp/fp_fnref_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(libdir));
  void *ha = build_and_open("a", 1, &fa);
  void *hb = build_and_open("b", 2, &fb);
  fp__fnref ref_a = ref_of((const void *)fa);
  fp__fnref ref_b = ref_of((const void *)fb);
  ck_assert_uint_ne(ref_a.ident, ref_b.ident);
  ck_assert_uint_eq(ref_a.offset, ref_b.offset); /* same layout */

  /* The master unloads a, then names b's function: the worker, forked
   * with both loaded, must call b's, not a's at the same offset. */
  ck_assert_int_eq(worker_calls(unload_handle, ha, fb), 2);

  fp__fnref after = ref_of((const void *)fb);
  ck_assert_mem_eq(&after, &ref_b, sizeof after);
  ck_assert_ptr_eq(fp__fnref_resolve(&ref_b), (void *)fb);
  if (!still_loaded("a"))
    ck_assert_ptr_null(fp__fnref_resolve(&ref_a));

  /* c may take a's place: a's old reference must not find it, and c's
   * reference (made with a's cached entry possibly at that address) must
   * name c. */
  void *hc = build_and_open("c", 3, &fc);
  fp__fnref ref_c = ref_of((const void *)fc);
  ck_assert_uint_ne(ref_c.ident, ref_a.ident);
  ck_assert_ptr_eq(fp__fnref_resolve(&ref_c), (void *)fc);
  ck_assert_int_eq(((probe_fn)fp__fnref_resolve(&ref_c))(), 3);
  if (!still_loaded("a"))
    ck_assert_ptr_null(fp__fnref_resolve(&ref_a));

  dlclose(hb);
  dlclose(hc);
  static const char *files[] = {"a.c", "a.so", "b.c", "b.so", "c.c", "c.so"};
  char path[128];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", libdir, files[i]);
    unlink(path);
  }
  rmdir(libdir);
}
END_TEST

Suite *fnref_suite(void) {
  Suite *s = suite_create("fnref");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 30);
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, real_functions_resolve_to_themselves);
  tcase_add_test(tc, make_refuses_null_and_data);
  tcase_add_test(tc, forged_kind_or_pad_resolves_to_null);
  tcase_add_test(tc, wrong_identity_resolves_to_null);
  tcase_add_test(tc, offset_outside_code_resolves_to_null);
  tcase_add_test(tc, raw_address_only_inside_exec_mapping);
  tcase_add_test(tc, code_outside_modules_goes_raw);
  tcase_add_test(tc, dlclose_of_earlier_library_never_runs_its_code);
  suite_add_tcase(s, tc);
  return s;
}
