/* SPDX-License-Identifier: MIT */
/* refuse.c - what cannot work across machines fails clearly on MPI.
 *
 * Run as `mpirun -n 3 refuse` (Manager refs) or `mpirun -n 3 refuse
 * --pin-list` (CPU lists). A Manager lives in one machine's shared memory,
 * and a worker rank is not a fork of rank 0, so a ref of rank 0 that
 * reaches a task on a worker rank names memory that does not exist there.
 * The dangerous case is the one a program gets by following the local
 * habit of making the manager before the pool: every rank runs main up to
 * fp_pool_new(), so every rank makes its own manager with the same objects
 * at the same offsets, and only the ref's 27-bit tag would tell rank 0's
 * dict from the worker rank's copy. Here the copy holds x = 1 and rank 0's
 * dict x = 42 after the pool starts: a task must fail with FP_ENOTSUP and
 * a message naming the rank, never answer 1. A manager rank 0 makes after
 * fp_pool_new() is NULL on the worker ranks (FP_EINVAL, with a message);
 * a manager a task makes on its own rank still works, and rank 0 itself
 * still resolves its refs.
 *
 * --pin-list: FP_PIN_LIST names CPUs of one machine and is refused by
 * fp_pool_new() with FP_ENOTSUP; the worker ranks are told to leave and
 * exit 0.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <stdlib.h>
#include <string.h>

static fp_manager *g_copy; /* made before fp_pool_new(), on every rank */
static fp_dict *g_copy_dict;
static fp_manager *g_late; /* made by rank 0 after fp_pool_new() */
static fp_pool *pool;

/* Task [ref, which]: x of the dict the ref names in g_copy (which 0) or
 * g_late (which 1). */
static int read_x(fp_reader *args, fp_writer *out) {
  int64_t ref, which, x;
  fp_dict *d;
  int rc = fp_unpack(args, "i i", &ref, &which);
  if (rc == 0)
    rc = fp_dict_from_ref(which ? g_late : g_copy, (uint64_t)ref, &d);
  if (rc == 0)
    rc = fp_dict_get_int(d, "x", 1, &x);
  return rc ? rc : fp_write_int(out, x);
}

/* Task: a manager made on the worker's own rank, used through a ref. */
static int own_manager(fp_reader *args, fp_writer *out) {
  fp_manager_opts mo = {.arena_size = 1 << 20};
  fp_manager *m;
  fp_dict *d, *again;
  int64_t x = 0;
  (void)args;
  int rc = fp_manager_new(&m, &mo);
  if (rc != 0)
    return rc;
  if ((rc = fp_dict_new(m, &d)) == 0 &&
      (rc = fp_dict_set_int(d, "x", 1, 7)) == 0 &&
      (rc = fp_dict_from_ref(m, fp_dict_ref(d), &again)) == 0)
    rc = fp_dict_get_int(again, "x", 1, &x);
  fp_manager_free(m);
  return rc ? rc : fp_write_int(out, x);
}

/* Applies read_x to (ref, which); returns the code, *x the answer. */
static int ask(uint64_t ref, int which, int64_t *x) {
  fp_writer a, o;
  fp_reader r;
  fp_writer_init(&a);
  fp_writer_init(&o);
  fp_pack(&a, "i i", (int64_t)ref, (int64_t)which);
  int rc = fp_pool_apply(pool, read_x, &a, &o);
  *x = -1;
  if (rc == 0) {
    fp_reader_init(&r, o.data, o.len);
    fp_read_int(&r, x);
  }
  fp_writer_free(&a);
  fp_writer_free(&o);
  return rc;
}

static void c_copy_refused(void *arg) {
  (void)arg;
  uint64_t ref = fp_dict_ref(g_copy_dict);
  int64_t x;
  EXPECT(fp_dict_set_int(g_copy_dict, "x", 1, 42) == 0, "set");
  int rc = ask(ref, 0, &x);
  EXPECT(rc == FP_ENOTSUP, "%s, x = %lld", fp_err_name(rc), (long long)x);
  EXPECT(strstr(fp_last_error(), "fp_dict_from_ref") &&
             strstr(fp_last_error(), "worker rank") &&
             strstr(fp_last_error(), "own copy"),
         "message: %s", fp_last_error());
  printf("  %s\n", fp_last_error());
  /* Every item, on every worker rank: refused, none answers. */
  fp_writer in, out;
  int status[16];
  fp_call_opts co = {.chunksize = 1, .item_status = status};
  fp_writer_init(&in);
  fp_writer_init(&out);
  for (int i = 0; i < 16; i++)
    fp_pack(&in, "[ i i ]", (int64_t)ref, (int64_t)0);
  rc = fp_pool_starmap(pool, read_x, &in, &out, &co);
  EXPECT(rc == 0, "starmap: %s", fp_err_name(rc));
  for (int i = 0; i < 16; i++)
    EXPECT(status[i] == FP_ENOTSUP, "item %d: %s", i, fp_err_name(status[i]));
  fp_writer_free(&in);
  fp_writer_free(&out);
}

static void c_unmapped_refused(void *arg) {
  (void)arg;
  fp_manager_opts mo = {.arena_size = 1 << 20};
  fp_dict *d;
  int64_t x;
  EXPECT(fp_manager_new(&g_late, &mo) == 0, "manager");
  EXPECT(fp_dict_new(g_late, &d) == 0 && fp_dict_set_int(d, "x", 1, 5) == 0,
         "dict");
  int rc = ask(fp_dict_ref(d), 1, &x);
  EXPECT(rc == FP_EINVAL, "%s, x = %lld", fp_err_name(rc), (long long)x);
  EXPECT(strstr(fp_last_error(), "no manager (NULL)"), "message: %s",
         fp_last_error());
  printf("  %s\n", fp_last_error());
  fp_manager_free(g_late);
  g_late = NULL;
}

static void c_rank_own_manager(void *arg) {
  (void)arg;
  fp_writer o;
  fp_reader r;
  int64_t x = 0;
  fp_writer_init(&o);
  int rc = fp_pool_apply(pool, own_manager, NULL, &o);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  fp_reader_init(&r, o.data, o.len);
  EXPECT(rc != 0 || (fp_read_int(&r, &x) == 0 && x == 7), "x = %lld",
         (long long)x);
  fp_writer_free(&o);
}

static void c_master_resolves(void *arg) {
  (void)arg;
  fp_dict *d;
  int64_t x = 0;
  EXPECT(fp_dict_from_ref(g_copy, fp_dict_ref(g_copy_dict), &d) == 0 &&
             fp_dict_get_int(d, "x", 1, &x) == 0 && x == 42,
         "x = %lld", (long long)x);
}

static void c_pin_list(void *arg) {
  (void)arg;
  int cpus[1] = {0};
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI,
                    .processes = 1,
                    .pin = FP_PIN_LIST,
                    .pin_cpus = cpus,
                    .pin_ncpus = 1};
  fp_pool *p = NULL;
  int rc = fp_pool_new(&p, &o); /* worker ranks leave inside */
  EXPECT(rc == FP_ENOTSUP && p == NULL, "%s", fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), "FP_PIN_LIST"), "message: %s",
         fp_last_error());
  printf("  %s\n", fp_last_error());
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 1 && strcmp(argv[1], "--pin-list") == 0) {
    mt_run("pin_list_refused", c_pin_list, NULL);
    return mt_done();
  }
  /* Every rank: the local habit, a manager before the pool. */
  fp_manager_opts mo = {.arena_size = 1 << 20};
  if (fp_manager_new(&g_copy, &mo) != 0 || fp_dict_new(g_copy, &g_copy_dict) ||
      fp_dict_set_int(g_copy_dict, "x", 1, 1) != 0) {
    printf("manager: %s\n0 passed, 1 failed\n", fp_last_error());
    return 1;
  }
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  int rc = fp_pool_new(&pool, &o); /* worker ranks never return */
  if (rc != 0) {
    printf("fp_pool_new: %s: %s\n0 passed, 1 failed\n", fp_err_name(rc),
           fp_last_error());
    return 1;
  }
  mt_run("manager_copy_ref_refused_on_worker_rank", c_copy_refused, NULL);
  mt_run("null_manager_ref_refused_on_worker_rank", c_unmapped_refused, NULL);
  mt_run("manager_made_on_worker_rank_works", c_rank_own_manager, NULL);
  mt_run("master_resolves_its_refs", c_master_resolves, NULL);
  fp_pool_free(pool);
  fp_manager_free(g_copy);
  return mt_done();
}
