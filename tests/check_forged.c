/* SPDX-License-Identifier: MIT */
/* check_forged.c - a task that rewrites the pool's shared memory.
 *
 * Every process of a pool maps the local link's shared memory (slots,
 * result rings, task rings, the CPU budget's words), and a task runs with
 * it writable. Process isolation means a buggy or hostile task harms at
 * most its own work: the master never crashes or writes out of bounds,
 * never delivers a wrong result as a success, and never waits for ever.
 * Each test here forges one thing an audit found the master trusting:
 *
 *   a result with the wrong number of values, or bytes that are no values
 *   another worker's rings (now unmapped in every other worker: a worker's
 *     task rewrote the error records another worker published while the
 *     master checked them, and the master then wrote out of bounds)
 *   another pool's memory (now unmapped by every later pool's fork server)
 *   a slot's "running" word erased before the worker crashes
 *   the budget's "callers are polling" word, which stops workers' kicks
 *
 * Each failed or hung before its fix. Bounded: every wait has a deadline,
 * the tcase a timeout, and teardown checks that no child is left.
 */
#include "forkpool.h"
#include "pool/local/local.h"
#include "pool/proto.h"
#include "testutil.h"

#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* State shared with the workers (made before any pool). */
typedef struct fshared {
  _Atomic int runs; /* times a task ran */
} fshared;

static fshared *g_sh;

static void setup(void) {
  g_sh = mmap(NULL, sizeof(*g_sh), PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(g_sh, MAP_FAILED);
}

static void teardown(void) {
  fp_test_no_children();
  munmap(g_sh, sizeof(*g_sh));
  g_sh = NULL;
}

static fp_pool *pool_n(int n) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = n;
  o.inflight = 1;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  return p;
}

/* The pool's shared mapping, found in the master's /proc/self/maps by its
 * length (fp__local_layout); workers inherit it at the same address. */
static uintptr_t pool_mapping(int n) {
  size_t len;
  long page = sysconf(_SC_PAGESIZE);
  fp__local_layout(NULL, n, &len);
  len = (len + (size_t)page - 1) & ~((size_t)page - 1);
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  unsigned long lo, hi;
  uintptr_t found = 0;
  while (f != NULL && found == 0 && fgets(line, sizeof(line), f) != NULL)
    if (strstr(line, " rw-s ") != NULL &&
        sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi - lo == len)
      found = lo;
  if (f != NULL)
    fclose(f);
  ck_assert_msg(found != 0, "no shared mapping of %zu bytes", len);
  return found;
}

/* A task's view of the mapping: its arguments are the mapping's address
 * and the pool's size. */
static int task_view(fp_reader *args, fp__shm_view *v) {
  int64_t base, n;
  size_t len;
  int rc = fp_unpack(args, "i i", &base, &n);
  if (rc == 0)
    *v = fp__local_layout((void *)(uintptr_t)base, (int)n, &len);
  return rc;
}

static void pack_view(fp_writer *w, uintptr_t base, int n) {
  fp_writer_init(w);
  ck_assert_int_eq(fp_pack(w, "i i", (int64_t)base, (int64_t)n), 0);
}

static int t_one(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, 1);
}

/* ---- a result that lies about its values -------------------------------- */

/* For item 0, publishes in its own result ring a RESULT for its one-item
 * chunk holding two values (mode 0) or bytes that are no value (mode 1),
 * then waits to be killed for it. Other items return 10 * item. */
static int t_forge_values(fp_reader *args, fp_writer *out) {
  int64_t base, n, mode, item;
  size_t len;
  if (fp_unpack(args, "[ i i i i ]", &base, &n, &mode, &item) != 0)
    return fp_task_fail("bad args");
  if (item != 0)
    return fp_write_int(out, 10 * item);
  fp__shm_view v = fp__local_layout((void *)(uintptr_t)base, (int)n, &len);
  int me = fp_task_worker_id();
  fp__ring *r = &v.rings[me];
  fp_writer d;
  fp_writer_init(&d);
  if (mode == 0) {
    fp_write_int(&d, 0);
    fp_write_int(&d, 999);
  } else {
    static const unsigned char junk[9] = {0x7f, 1, 2, 3, 4, 5, 6, 7, 8};
    fp_writer_append(&d, junk, sizeof(junk));
  }
  fp__res_hdr rh;
  memset(&rh, 0, sizeof(rh));
  rh.type = FP__MSG_RESULT;
  rh.count = 1;
  rh.seq = atomic_load(&v.slots[me].seq);
  uint32_t plen = (uint32_t)(sizeof(rh) + d.len);
  uint64_t t = atomic_load(&r->tail);
  unsigned char *f = r->data + t % FP__RING_SIZE;
  memcpy(f, &plen, 4);
  memcpy(f + 4, &rh, sizeof(rh));
  memcpy(f + 4 + sizeof(rh), d.data, d.len);
  atomic_store(&r->tail, t + ((4 + plen + 7) & ~(uint64_t)7));
  fp_writer_free(&d);
  for (;;)
    pause(); /* the master kills this worker for the forged result */
  return 0;
}

/* A values result must hold one value per item: two values for one item
 * (which shifted every later item's result by one) or bytes that are not
 * values at all used to be delivered with the call returning 0. */
START_TEST(result_with_wrong_values_is_a_violation) {
  fp_pool *p = pool_n(2);
  uintptr_t base = pool_mapping(2);
  for (int mode = 0; mode < 2; mode++) {
    fp_writer items, out;
    fp_writer_init(&items);
    fp_writer_init(&out);
    for (int i = 0; i < 4; i++)
      ck_assert_int_eq(fp_pack(&items, "[ i i i i ]", (int64_t)base, (int64_t)2,
                               (int64_t)mode, (int64_t)i),
                       0);
    fp_call_opts co = {0};
    co.chunksize = 1;
    int rc = fp_pool_map_values(p, t_forge_values, &items, &out, &co);
    ck_assert_msg(rc == FP_EPROTO, "mode %d: %s, %zu bytes out", mode,
                  fp_err_name(rc), out.len);
    ck_assert_uint_eq(out.len, 0);
    fp_writer_free(&items);
    fp_writer_free(&out);
  }
  fp_pool_free(p);
}
END_TEST

/* ---- another worker's task ring ------------------------------------------ */

/* Moves the other worker's task-ring tail back by one frame, which would
 * erase a chunk the master sent it. */
static int t_erase_other(fp_reader *args, fp_writer *out) {
  fp__shm_view v;
  if (task_view(args, &v) != 0)
    return fp_task_fail("bad args");
  fp__tring *other = &v.trings[1 - fp_task_worker_id()];
  uint64_t t = atomic_load(&other->tail);
  atomic_store(&other->tail, t >= FP__FRAME_ALIGN ? t - FP__FRAME_ALIGN : 0);
  return fp_write_int(out, 1);
}

/* A worker maps no other worker's rings: the write is its own crash
 * (SIGSEGV), reported as such; the other worker serves on. It used to
 * succeed and could erase a chunk another worker held, whose caller then
 * waited for ever (no time limit fires for a chunk that never started). */
START_TEST(other_workers_rings_are_out_of_reach) {
  fp_pool *p = pool_n(2);
  uintptr_t base = pool_mapping(2);
  fp_writer a;
  pack_view(&a, base, 2);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_erase_other, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_EWORKER);
  ck_assert_ptr_nonnull(strstr(fp_result_error(r), "SIGSEGV"));
  fp_result_free(r);
  for (int i = 0; i < 20; i++)
    ck_assert_int_eq(fp_pool_apply(p, t_one, NULL, NULL), 0);
  fp_writer_free(&a);
  fp_pool_free(p);
}
END_TEST

/* Writes the task-ring tail of worker 0 of another pool, whose mapping's
 * address (and size) are its arguments. */
static int t_write_other_pool(fp_reader *args, fp_writer *out) {
  fp__shm_view v;
  if (task_view(args, &v) != 0)
    return fp_task_fail("bad args");
  atomic_store(&v.trings[0].tail, 0);
  atomic_store(&v.hdr->pollers, 1000000);
  return fp_write_int(out, 1);
}

/* A pool's fork server unmaps the shared memory of every other pool the
 * program had when it was forked, so a task cannot reach another pool's
 * rings or words either: the write is its own worker's crash. It used to
 * succeed. */
START_TEST(other_pools_memory_is_out_of_reach) {
  fp_pool *a = pool_n(1);
  uintptr_t base_a = pool_mapping(1);
  fp_pool *b = pool_n(2);
  fp_writer args;
  pack_view(&args, base_a, 1);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(b, t_write_other_pool, &args, NULL, &r),
                   0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_EWORKER);
  ck_assert_ptr_nonnull(strstr(fp_result_error(r), "SIGSEGV"));
  fp_result_free(r);
  ck_assert_int_eq(fp_pool_apply(a, t_one, NULL, NULL), 0);
  ck_assert_int_eq(fp_pool_apply(b, t_one, NULL, NULL), 0);
  fp_writer_free(&args);
  fp_pool_free(b);
  fp_pool_free(a);
}
END_TEST

/* ---- a crash that names no chunk --------------------------------------- */

/* Erases its slot's "running chunk" word, then crashes. */
static int t_erase_running_and_crash(fp_reader *args, fp_writer *out) {
  fp__shm_view v;
  (void)out;
  atomic_fetch_add(&g_sh->runs, 1);
  if (task_view(args, &v) != 0)
    return fp_task_fail("bad args");
  atomic_store(&v.slots[fp_task_worker_id()].seq, 0);
  abort();
}

/* A worker that dies naming no running chunk had, as far as the master
 * can tell, not started the ones it held, which are requeued; a task that
 * erases the name before crashing its worker made its chunk run and crash
 * again for ever (thousands of times a second). It now fails with
 * FP_EWORKER after a few rounds and says why. */
START_TEST(crash_that_names_no_chunk_is_not_rerun_for_ever) {
  fp_pool *p = pool_n(2);
  uintptr_t base = pool_mapping(2);
  fp_writer a;
  pack_view(&a, base, 2);
  fp_result *r;
  ck_assert_int_eq(
      fp_pool_apply_async(p, t_erase_running_and_crash, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 60), FP_EWORKER);
  ck_assert_ptr_nonnull(strstr(fp_result_error(r), "none saying which"));
  ck_assert_int_le(atomic_load(&g_sh->runs), 4);
  fp_result_free(r);
  ck_assert_int_eq(fp_pool_apply(p, t_one, NULL, NULL), 0);
  fp_writer_free(&a);
  fp_pool_free(p);
}
END_TEST

/* ---- the word that stops workers' kicks -------------------------------- */

static int t_forge_pollers(fp_reader *args, fp_writer *out) {
  fp__shm_view v;
  if (task_view(args, &v) != 0)
    return fp_task_fail("bad args");
  atomic_store(&v.hdr->pollers, 1000000);
  return fp_write_int(out, 1);
}

static pthread_mutex_t g_cb_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cb_cond = PTHREAD_COND_INITIALIZER;
static int g_cb_done;

static void on_done(fp_result *r, void *arg) {
  (void)r;
  (void)arg;
  pthread_mutex_lock(&g_cb_mu);
  g_cb_done = 1;
  pthread_cond_signal(&g_cb_cond);
  pthread_mutex_unlock(&g_cb_mu);
}

/* Waits up to 10 s for on_done; returns whether it ran. */
static int callback_came(void) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  pthread_mutex_lock(&g_cb_mu);
  while (!g_cb_done &&
         pthread_cond_timedwait(&g_cb_cond, &g_cb_mu, &until) == 0) {
  }
  int done = g_cb_done;
  g_cb_done = 0;
  pthread_mutex_unlock(&g_cb_mu);
  return done;
}

/* Workers kick the sleeping pool thread only when no caller polls the
 * rings, as a word in shared memory says. With that word forged, a result
 * whose only consumer is its callback (nobody waits in fp_result_get)
 * waited in its ring for ever; the pool thread now looks at the link every
 * 100 ms while chunks travel. */
START_TEST(callbacks_come_while_a_task_forges_the_pollers_word) {
  fp_pool *p = pool_n(2);
  uintptr_t base = pool_mapping(2);
  fp_writer a;
  pack_view(&a, base, 2);
  ck_assert_int_eq(fp_pool_apply(p, t_forge_pollers, &a, NULL), 0);
  for (int i = 0; i < 3; i++) {
    fp_call_opts co = {0};
    co.callback = on_done;
    fp_result *r;
    ck_assert_int_eq(fp_pool_apply_async(p, t_one, NULL, &co, &r), 0);
    ck_assert_msg(callback_came(), "round %d: no callback within 10 s", i);
    fp_result_free(r);
  }
  fp_writer_free(&a);
  fp_pool_free(p);
}
END_TEST

Suite *forged_suite(void) {
  Suite *s = suite_create("forged");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, result_with_wrong_values_is_a_violation);
  tcase_add_test(tc, other_workers_rings_are_out_of_reach);
  tcase_add_test(tc, other_pools_memory_is_out_of_reach);
  tcase_add_test(tc, crash_that_names_no_chunk_is_not_rerun_for_ever);
  tcase_add_test(tc, callbacks_come_while_a_task_forges_the_pollers_word);
  suite_add_tcase(s, tc);
  return s;
}
