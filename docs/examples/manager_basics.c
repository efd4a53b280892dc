/* SPDX-License-Identifier: MIT */
/* manager_basics.c - the Manager in one page (docs/manager.md).
 *
 * A shared dict, list, counter and lock created before forking, updated by
 * two child processes, read back by the parent. Real programs fork their
 * workers with fp_pool_new() instead of fork(); the rule is the same: make
 * the manager first. Exits 0 when every total is exact.
 */
#include <forkpool.h>

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define N 10000

int main(void) {
  fp_manager *m;
  fp_dict *d;
  fp_list *l;
  fp_counter *c;
  fp_lock *lock;
  fp_writer w;
  int64_t hits, value, locked;

  /* 1. The manager and its objects, before any worker exists. */
  if (fp_manager_new(&m, NULL) != 0 || fp_dict_new(m, &d) != 0 ||
      fp_list_new(m, &l) != 0 || fp_counter_new(m, 0, &c) != 0 ||
      fp_lock_new(m, &lock) != 0)
    return 1;
  fp_dict_set_int(d, "locked", 6, 0);

  /* 2. Two workers update them concurrently. */
  for (int p = 0; p < 2; p++) {
    if (fork() == 0) {
      fp_writer_init(&w);
      fp_write_int(&w, p);
      fp_list_append(l, w.data, w.len); /* l.append(p) */
      fp_writer_free(&w);
      for (int i = 0; i < N; i++) {
        fp_dict_add_int(d, "hits", 4, 1, NULL); /* d["hits"] += 1, atomic */
        fp_counter_add(c, 1, NULL);             /* v.value += 1, atomic */
        fp_lock_acquire(lock, FP_FOREVER);      /* with lock: */
        fp_dict_get_int(d, "locked", 6, &locked);
        fp_dict_set_int(d, "locked", 6, locked + 1); /* get-then-set */
        fp_lock_release(lock);
      }
      _exit(0);
    }
  }
  while (wait(NULL) > 0)
    ;

  /* 3. The parent sees every update. */
  fp_dict_get_int(d, "hits", 4, &hits);
  fp_dict_get_int(d, "locked", 6, &locked);
  fp_counter_get(c, &value);
  printf("hits=%lld locked=%lld value=%lld list_len=%lld\n", (long long)hits,
         (long long)locked, (long long)value, (long long)fp_list_len(l));
  int ok =
      hits == 2 * N && locked == 2 * N && value == 2 * N && fp_list_len(l) == 2;
  fp_manager_free(m);
  return ok ? 0 : 1;
}
