/* SPDX-License-Identifier: MIT */
/* check_fdreg.c - tests of the registry of library descriptors
 * (pool/local/fdreg.c) and of pools started from several threads at once.
 *
 * A fork server closes every registered descriptor when it starts. If a
 * fork could catch the registry half-updated by another thread, the
 * server would close a number it had reused for its own pidfd and quit
 * before its first worker: fp_pool_new then failed with FP_EPIPE or
 * FP_EWORKER about once in ten thousand pools started from concurrent
 * threads (seen in `make stress`). The race test below opens and closes
 * registered sockets in other threads while it forks, and every child
 * checks that each registered number is a descriptor it holds.
 */
#include "forkpool.h"
#include "pool/local/local.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void teardown(void) {
  fp_test_no_children();
}

static int is_open(int fd) {
  return fcntl(fd, F_GETFD) >= 0;
}

/* Forks; the child runs fn and exits with its return value. Returns it. */
static int in_child(int (*fn)(void *), void *arg) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(fn(arg));
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st));
  return WEXITSTATUS(st);
}

static int registered_pair(int sv[2]) {
  fp__fdreg_lock();
  int rc = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
  if (rc == 0) {
    fp__fdreg_add_locked(sv[0]);
    fp__fdreg_add_locked(sv[1]);
  }
  fp__fdreg_unlock();
  return rc;
}

/* ---- close_all ------------------------------------------------------------ */

typedef struct two_pairs {
  int a[2], b[2];
} two_pairs;

static int close_all_child(void *arg) {
  two_pairs *p = arg;
  if (fp__fdreg_close_all(p->a[0]) != 0)
    return 10;
  if (!is_open(p->a[0]) || is_open(p->a[1]) || is_open(p->b[0]) ||
      is_open(p->b[1]))
    return 11;
  /* The registry is empty now: numbers reused in this process are safe. */
  int fd = open("/dev/null", O_RDONLY);
  if (fp__fdreg_close_all(-1) != 0 || !is_open(fd) || !is_open(p->a[0]))
    return 12;
  return 0;
}

START_TEST(close_all_closes_registered_keeps_one_and_empties) {
  ck_assert_int_eq(fp__fdreg_init(), 0);
  two_pairs p;
  ck_assert_int_eq(registered_pair(p.a), 0);
  ck_assert_int_eq(registered_pair(p.b), 0);
  ck_assert_int_eq(in_child(close_all_child, &p), 0);
  /* The parent's descriptors are untouched. */
  for (int i = 0; i < 2; i++) {
    ck_assert(is_open(p.a[i]) && is_open(p.b[i]));
    fp__fdreg_close(p.a[i]);
    fp__fdreg_close(p.b[i]);
  }
  ck_assert(!is_open(p.a[0]));
}
END_TEST

static int stale_child(void *arg) {
  (void)arg;
  return fp__fdreg_close_all(-1) > 0;
}

START_TEST(close_all_counts_numbers_that_are_not_open) {
  ck_assert_int_eq(fp__fdreg_init(), 0);
  int sv[2];
  ck_assert_int_eq(registered_pair(sv), 0);
  close(sv[1]); /* behind the registry's back: a stale entry */
  ck_assert_int_eq(in_child(stale_child, NULL), 1);
  fp__fdreg_close(sv[0]);
  fp__fdreg_close(sv[1]); /* unregisters; the close fails harmlessly */
}
END_TEST

/* ---- forks racing registrations -------------------------------------------- */

static _Atomic int g_stop;

static void *churn(void *arg) {
  (void)arg;
  while (!atomic_load(&g_stop)) {
    int sv[2];
    if (registered_pair(sv) != 0)
      continue;
    fp__fdreg_close(sv[0]);
    fp__fdreg_close(sv[1]);
  }
  return NULL;
}

START_TEST(forks_never_see_a_half_updated_registry) {
  ck_assert_int_eq(fp__fdreg_init(), 0);
  enum { MAX_THREADS = 3 };
  /* Valgrind runs one thread at a time, so the race cannot happen there;
   * and a churning thread that takes the mutex again the moment it let go
   * would starve the forking thread's pthread_atfork handler, which
   * valgrind's scheduler never lets in between. Its run checks the
   * single-threaded case (and leaks) with a few forks. */
  int threads = fp_test_under_valgrind() ? 0 : MAX_THREADS;
  int forks = fp_test_under_valgrind() ? 50 : 3000;
  pthread_t th[MAX_THREADS];
  atomic_store(&g_stop, 0);
  for (int i = 0; i < threads; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, churn, NULL), 0);
  /* On a machine busy with other work the three churning threads leave
   * the forking one little CPU (one CI run under load took past the
   * case's 120 s), so the forks also stop after 40 s, every fork made so
   * far checked. */
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int bad = 0, made = 0;
  for (t = t0; made < forks && t.tv_sec - t0.tv_sec < 40; made++) {
    bad += in_child(stale_child, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t);
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < threads; i++)
    pthread_join(th[i], NULL);
  ck_assert_msg(bad == 0,
                "%d of %d children had registered numbers they do not hold",
                bad, made);
}
END_TEST

/* ---- pools from several threads ---------------------------------------------- */

static int add_one(const void *in, void *out) {
  int64_t v;
  memcpy(&v, in, sizeof(v));
  v += 1;
  memcpy(out, &v, sizeof(v));
  return 0;
}

/* The first failure's call, code and message, for the assertion. */
static pthread_mutex_t first_mu = PTHREAD_MUTEX_INITIALIZER;
static char first_failure[640];

static void note_failure(const char *call, int rc) {
  pthread_mutex_lock(&first_mu);
  if (first_failure[0] == 0)
    snprintf(first_failure, sizeof(first_failure), "%s: %s: %s", call,
             fp_err_name(rc), fp_last_error());
  pthread_mutex_unlock(&first_mu);
}

static void *pools_main(void *arg) {
  intptr_t failures = 0;
  for (int i = 0; i < 15; i++) {
    fp_pool *p = NULL;
    fp_pool_opts o = {0};
    o.processes = 1 + (int)((intptr_t)arg + i) % 2;
    int rc = fp_pool_new(&p, &o);
    if (rc != 0) {
      note_failure("fp_pool_new", rc);
      failures++;
      continue;
    }
    int64_t in[16], out[16];
    for (int k = 0; k < 16; k++)
      in[k] = k;
    if ((rc = fp_pool_map(p, add_one, in, 16, 8, out, 8, NULL)) != 0) {
      note_failure("fp_pool_map", rc);
      failures++;
    }
    for (int k = 0; k < 16; k++)
      failures += out[k] != k + 1;
    fp_pool_free(p);
  }
  return (void *)failures;
}

START_TEST(pools_started_from_several_threads_at_once) {
  enum { THREADS = 4 };
  /* gcc 12's AddressSanitizer allocator has no fork handler: a fork
   * server forked while another thread is inside malloc inherits the
   * allocator's lock held, and its worker blocks on it forever (seen:
   * SizeClassAllocator64::GetFromAllocator). A hang of the sanitizer, not
   * of the library; `make stress` leaves its threads scenario out there
   * for the same reason. */
  if (fp_test_under_sanitizer())
    return;
  pthread_t th[THREADS];
  for (intptr_t i = 0; i < THREADS; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, pools_main, (void *)i), 0);
  intptr_t failures = 0;
  for (int i = 0; i < THREADS; i++) {
    void *f;
    pthread_join(th[i], &f);
    failures += (intptr_t)f;
  }
  ck_assert_msg(failures == 0, "%ld failures; the first: %s", (long)failures,
                first_failure);
}
END_TEST

Suite *fdreg_suite(void) {
  Suite *s = suite_create("fdreg");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, close_all_closes_registered_keeps_one_and_empties);
  tcase_add_test(tc, close_all_counts_numbers_that_are_not_open);
  tcase_add_test(tc, forks_never_see_a_half_updated_registry);
  tcase_add_test(tc, pools_started_from_several_threads_at_once);
  suite_add_tcase(s, tc);
  return s;
}
