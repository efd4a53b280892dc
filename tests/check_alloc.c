/* SPDX-License-Identifier: MIT */
/* check_alloc.c - tests of ipc/wire/alloc.c, the private jemalloc arena.
 *
 * Arena membership is asserted only when the build uses the arena
 * (fp__alloc_uses_arena() == 1); sanitizer builds define FP_ALLOC_LIBC and
 * then only the plain allocation behaviour is checked.
 */
#include "forkpool.h"
#include "ipc/wire/alloc.h"
#include "testutil.h"

#include <jemalloc/jemalloc.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void teardown(void) {
  fp_test_no_children();
}

static int libc_asked(void) {
  const char *env = getenv("FORKPOOL_ALLOC");
  return env != NULL && strcmp(env, "libc") == 0;
}

START_TEST(uses_arena_unless_libc_build) {
#ifdef FP_ALLOC_LIBC
  ck_assert_int_eq(fp__alloc_uses_arena(), 0);
#else
  ck_assert_int_eq(fp__alloc_uses_arena(), !libc_asked());
#endif
}
END_TEST

/* FORKPOOL_ALLOC=libc, for users' leak checkers: this test runs the
 * suite again in a new process started with it, where every buffer must
 * come from malloc (uses_arena_unless_libc_build checks it there) and
 * everything else work as before. */
START_TEST(environment_hands_buffers_to_libc) {
#ifdef FP_ALLOC_LIBC
  return; /* always malloc: there is no switch to test */
#endif
  /* Under valgrind /proc/self/exe is valgrind's own tool, not the runner. */
  if (libc_asked() || fp_test_under_valgrind())
    return; /* the run started below */
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    setenv("FORKPOOL_ALLOC", "libc", 1);
    setenv("CK_RUN_SUITE", "alloc", 1);
    setenv("CK_RUN_CASE", "core", 1);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execl("/proc/self/exe", "runner", (char *)NULL);
    _exit(127);
  }
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "the alloc suite under FORKPOOL_ALLOC=libc failed (status "
                "%d)",
                st);
}
END_TEST

START_TEST(alloc_returns_arena_buffer) {
  unsigned char *p = fp__alloc(100);
  ck_assert_ptr_nonnull(p);
  memset(p, 0xab, 100);
  if (fp__alloc_uses_arena())
    ck_assert_int_eq(fp__alloc_from_arena(p), 1);
  fp__free(p, 100);
}
END_TEST

START_TEST(alloc_zero_size_is_freeable) {
  void *p = fp__alloc(0);
  ck_assert_ptr_nonnull(p);
  fp__free(p, 0);
  fp__free(NULL, 0);
  fp__free(NULL, 123);
}
END_TEST

START_TEST(realloc_growth_keeps_contents_in_arena) {
  size_t n = 16;
  unsigned char *p = fp__realloc(NULL, 0, n);
  ck_assert_ptr_nonnull(p);
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)i;
  while (n < ((size_t)4 << 20)) {
    unsigned char *q = fp__realloc(p, n, n * 4);
    ck_assert_ptr_nonnull(q);
    for (size_t i = 0; i < 16; i++)
      ck_assert_uint_eq(q[i], i);
    memset(q + n, 0x5a, n * 3);
    p = q;
    n *= 4;
    if (fp__alloc_uses_arena())
      ck_assert_int_eq(fp__alloc_from_arena(p), 1);
  }
  p = fp__realloc(p, n, 8); /* shrink */
  ck_assert_ptr_nonnull(p);
  ck_assert_uint_eq(p[7], 7);
  fp__free(p, 8);
}
END_TEST

START_TEST(from_arena_is_zero_for_other_jemalloc_memory) {
#ifndef FP_ALLOC_LIBC
  void *other = mallocx(64, 0); /* jemalloc, but not our arena */
  ck_assert_ptr_nonnull(other);
  ck_assert_int_eq(fp__alloc_from_arena(other), 0);
  dallocx(other, 0);
#endif
  ck_assert_int_eq(fp__alloc_from_arena(NULL), 0);
}
END_TEST

START_TEST(writer_buffers_come_from_arena) {
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_ptr_null(w.data); /* init allocates nothing */
  for (int i = 0; i < 1000; i++)
    ck_assert_int_eq(fp_write_int(&w, i), 0);
  ck_assert_ptr_nonnull(w.data);
  if (fp__alloc_uses_arena())
    ck_assert_int_eq(fp__alloc_from_arena(w.data), 1);
  fp_writer_free(&w);
  ck_assert_ptr_null(w.data);
}
END_TEST

static void *thread_churn(void *arg) {
  long bad = 0;
  for (int i = 1; i <= 2000; i++) {
    size_t n = (size_t)(i * 37 % 5000) + 1;
    unsigned char *p = fp__alloc(n);
    if (p == NULL) {
      bad++;
      continue;
    }
    memset(p, i & 0xff, n);
    if (fp__alloc_uses_arena() && !fp__alloc_from_arena(p))
      bad++;
    p = fp__realloc(p, n, n * 2);
    if (p == NULL || p[n - 1] != (unsigned char)(i & 0xff))
      bad++;
    fp__free(p, n * 2);
  }
  return (void *)bad;
}

START_TEST(alloc_is_thread_safe) {
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, thread_churn, NULL), 0);
  for (int i = 0; i < 4; i++) {
    void *bad;
    ck_assert_int_eq(pthread_join(t[i], &bad), 0);
    ck_assert_ptr_null(bad);
  }
}
END_TEST

START_TEST(alloc_works_in_forked_child) {
  void *parent_buf = fp__alloc(4096);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    fp_writer w;
    int ok;
    fp_writer_init(&w);
    ok = fp_write_bytes(&w, parent_buf, 4096) == 0;
    ok = ok && (!fp__alloc_uses_arena() || fp__alloc_from_arena(w.data));
    fp_writer_free(&w);
    fp__free(parent_buf, 4096); /* inherited copy-on-write */
    _exit(ok ? 0 : 1);
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status));
  ck_assert_int_eq(WEXITSTATUS(status), 0);
  fp__free(parent_buf, 4096);
}
END_TEST

Suite *alloc_suite(void) {
  Suite *s = suite_create("alloc");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 20);
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, uses_arena_unless_libc_build);
  tcase_add_test(tc, environment_hands_buffers_to_libc);
  tcase_add_test(tc, alloc_returns_arena_buffer);
  tcase_add_test(tc, alloc_zero_size_is_freeable);
  tcase_add_test(tc, realloc_growth_keeps_contents_in_arena);
  tcase_add_test(tc, from_arena_is_zero_for_other_jemalloc_memory);
  tcase_add_test(tc, writer_buffers_come_from_arena);
  tcase_add_test(tc, alloc_is_thread_safe);
  tcase_add_test(tc, alloc_works_in_forked_child);
  suite_add_tcase(s, tc);
  return s;
}
