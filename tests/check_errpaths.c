/* SPDX-License-Identifier: MIT */
/* check_errpaths.c - documented error results that no other suite reached.
 *
 * One test per function (or per family of calls on one handle kind), each
 * asserting the return code forkpool.h documents for the case (and one
 * test, manager_refusals_set_the_last_error, the messages of the Manager's
 * refusals). Manager cases: wrong-kind and destroyed handles, malformed
 * values, values too large for a minimum-size (256 KiB) arena, a full
 * arena and a thread left without a heap slot. Codec cases: malformed and
 * too-deep input, sticky writer errors, fp_vpack / fp_vunpack through a
 * va_list. Pool cases: max_frame, calls after close, a blocking apply
 * whose pool another thread terminates, a failed job's result value.
 * Waits are bounded (poll timeouts, result timeouts, the tcase timeout);
 * nothing sleeps to synchronise, and every pool, manager and writer is
 * freed.
 */
#include "forkpool.h"
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define K(s) s, strlen(s)

/* --- manager fixture ------------------------------------------------------
 * A manager at the documented minimum arena size: 256 KiB, 8 heap slots. */

static fp_manager *mgr;

static void mgr_setup(void) {
  fp_manager_opts o = {.arena_size = 256u << 10};
  ck_assert_int_eq(fp_manager_new(&mgr, &o), 0);
}

static void mgr_teardown(void) {
  fp_manager_free(mgr);
  mgr = NULL;
}

/* One encoded INT value in w (reset first). */
static void encode_int(fp_writer *w, int64_t v) {
  fp_writer_reset(w);
  ck_assert_int_eq(fp_write_int(w, v), 0);
}

/* --- Manager refusals say why ------------------------------------------ */

/* A refused Manager call sets fp_last_error() to what was wrong; an
 * ordinary outcome (a missing key, an index out of range) and a success
 * leave it alone. */
START_TEST(manager_refusals_set_the_last_error) {
  fp_manager *m2 = NULL;
  fp_manager_opts tiny = {.arena_size = 1};
  fp_dict *d;
  fp_counter *c;
  fp_lock *l;
  fp_list *li;
  fp_array *a;
  int64_t v;
  static char longkey[FP_DICT_KEY_MAX + 1];
  fp_assert_says(fp_manager_new(&m2, &tiny), FP_EINVAL, "arena_size");
  ck_assert_ptr_null(m2);
  fp_assert_says(fp_dict_new(NULL, &d), FP_EINVAL, "NULL manager");
  fp_assert_says(fp_array_new(mgr, SIZE_MAX, &a), FP_EMSGSIZE, "array");
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_counter_new(mgr, 0, &c), 0);
  ck_assert_int_eq(fp_lock_new(mgr, &l), 0);
  fp_assert_says(fp_dict_set_int(d, longkey, sizeof(longkey), 1), FP_EMSGSIZE,
                 "FP_DICT_KEY_MAX");
  fp_assert_says(fp_dict_set_int((fp_dict *)c, K("k"), 1), FP_ETYPE,
                 "is a counter, not a dict");
  fp_assert_says(fp_dict_set(d, K("k"), "\xff", 1), FP_EPROTO, "encoded value");
  fp_assert_says(fp_lock_release(l), FP_EPERM, "does not hold");
  fp_assert_says(fp_lock_acquire(l, NAN), FP_EINVAL, "NaN");
  fp_assert_says(fp_counter_from_ref(mgr, 12345, &c), FP_EINVAL,
                 "no live object");
  fp_assert_says(fp_counter_from_ref(mgr, fp_dict_ref(d), &c), FP_ETYPE,
                 "names a dict, not a counter");
  ck_assert_int_eq(fp_list_new(mgr, &li), 0);
  ck_assert_int_eq(fp_list_destroy(li), 0);
  fp_assert_says(fp_list_len(li), FP_EINVAL, "list");
  /* Not refusals: the message stays what the last refusal set. */
  ck_assert_int_eq(fp_dict_get_int(d, K("absent"), &v), FP_ENOENT);
  ck_assert_int_eq(fp_dict_set_int(d, K("k"), 1), 0);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "list"));
  /* The arena fills: FP_ENOMEM says so. */
  int rc;
  do
    rc = fp_lock_new(mgr, &l);
  while (rc == 0);
  ck_assert_int_eq(rc, FP_ENOMEM);
  ck_assert_msg(strstr(fp_last_error(), "arena is full") != NULL,
                "message '%s'", fp_last_error());
}
END_TEST

/* Refusals of a value's kind and size name them too. */
START_TEST(dict_kind_and_size_refusals_say_what) {
  fp_dict *d;
  int64_t v;
  double f;
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_dict_set_str(d, K("s"), "text"), 0);
  fp_assert_says(fp_dict_get_int(d, K("s"), &v), FP_ETYPE,
                 "holds a string, not an int");
  fp_assert_says(fp_dict_get_float(d, K("s"), &f), FP_ETYPE,
                 "holds a string, not a float");
  fp_assert_says(fp_dict_add_int(d, K("s"), 1, &v), FP_ETYPE,
                 "holds a string, not an int");
  fp_assert_says(fp_dict_set_bytes(d, K("b"), "", (size_t)UINT32_MAX + 1),
                 FP_EMSGSIZE, "at most");
}
END_TEST

/* setdefault's error never comes with a stored value, and a failed store
 * leaves the caller's writer as it was. */
START_TEST(dict_setdefault_error_stores_nothing) {
  fp_dict *d;
  fp_writer val, out;
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  fp_writer_init(&val); /* [[]]: two levels of lists */
  fp_writer_init(&out); /* 31 lists open: no room for two more levels */
  ck_assert_int_eq(fp_write_list_begin(&val), 0);
  ck_assert_int_eq(fp_write_list_begin(&val), 0);
  ck_assert_int_eq(fp_write_list_end(&val), 0);
  ck_assert_int_eq(fp_write_list_end(&val), 0);
  for (int i = 0; i < FP_MAX_DEPTH - 1; i++)
    ck_assert_int_eq(fp_write_list_begin(&out), 0);
  ck_assert_int_eq(fp_dict_setdefault(d, K("k"), val.data, val.len, &out),
                   FP_EDEPTH);
  ck_assert_int_eq(fp_dict_contains(d, K("k")), 0);

  /* A full arena: the insert fails after the value went out; it is taken
   * back, and the writer's open list still counts no item. */
  fp_lock *l;
  int rc;
  do
    rc = fp_lock_new(mgr, &l);
  while (rc == 0);
  ck_assert_int_eq(rc, FP_ENOMEM);
  fp_writer_reset(&out);
  ck_assert_int_eq(fp_write_list_begin(&out), 0);
  size_t len0 = out.len;
  encode_int(&val, 7);
  ck_assert_int_eq(fp_dict_setdefault(d, K("new"), val.data, val.len, &out),
                   FP_ENOMEM);
  ck_assert_int_eq(fp_dict_contains(d, K("new")), 0);
  ck_assert_uint_eq(out.len, len0);
  ck_assert_int_eq(fp_write_list_end(&out), 0);
  fp_reader r;
  uint32_t n = 99;
  fp_reader_init(&r, out.data, out.len);
  ck_assert_int_eq(fp_read_list(&r, &n), 0);
  ck_assert_uint_eq(n, 0);
  fp_writer_free(&val);
  fp_writer_free(&out);
}
END_TEST

/* A handle whose object another thread destroys and makes again at the
 * same place: each call answers for the new object or says the handle is
 * stale (FP_EINVAL), never that it is of another kind. */
static _Atomic int g_churn_stop;
static fp_counter *g_churned;

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *churn_counter(void *arg) {
  fp_counter *c = g_churned;
  (void)arg;
  while (!atomic_load(&g_churn_stop)) {
    fp_counter_destroy(c);
    if (fp_counter_new(mgr, 0, &c) != 0)
      return (void *)1;
  }
  return NULL;
}

START_TEST(handle_remade_under_a_call_is_never_another_kind) {
#if defined(__SANITIZE_THREAD__)
  return; /* reading a header another thread rewrites is the point */
#endif
  pthread_t t;
  void *ret;
  long etype = 0;
  ck_assert_int_eq(fp_counter_new(mgr, 0, &g_churned), 0);
  atomic_store(&g_churn_stop, 0);
  ck_assert_int_eq(pthread_create(&t, NULL, churn_counter, NULL), 0);
  /* The deadline is read every 100 calls: under valgrind, which runs one
   * thread at a time, a batch of calls can take seconds. */
  for (double end = mono_s() + 1.5; mono_s() < end && etype == 0;)
    for (int i = 0; i < 100; i++) {
      int64_t v;
      int rc = fp_counter_get(g_churned, &v);
      ck_assert_msg(rc == 0 || rc == FP_EINVAL || rc == FP_ETYPE, "rc %d", rc);
      etype += rc == FP_ETYPE;
    }
  atomic_store(&g_churn_stop, 1);
  ck_assert_int_eq(pthread_join(t, &ret), 0);
  ck_assert_ptr_null(ret);
  ck_assert_msg(etype == 0, "FP_ETYPE %ld times: '%s'", etype, fp_last_error());
}
END_TEST

/* --- counter, lock, array: destroy and wrong kinds ------------------------ */

START_TEST(lock_destroy_ok_then_einval_and_etype_for_other_kinds) {
  fp_lock *l;
  fp_counter *c;
  ck_assert_int_eq(fp_lock_new(mgr, &l), 0);
  ck_assert_int_eq(fp_counter_new(mgr, 5, &c), 0);
  ck_assert_int_eq(fp_lock_destroy(l), 0);
  ck_assert_int_eq(fp_lock_destroy(l), FP_EINVAL); /* second destroy */
  ck_assert_int_eq(fp_lock_destroy(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_lock_destroy((fp_lock *)c), FP_ETYPE);
  int64_t v = 0;
  ck_assert_int_eq(fp_counter_get(c, &v), 0); /* untouched */
  ck_assert_int_eq(v, 5);
  ck_assert_int_eq(fp_counter_destroy(c), 0);
}
END_TEST

START_TEST(counter_calls_give_etype_for_other_kinds) {
  fp_lock *l;
  fp_array *a;
  fp_counter *c;
  int64_t v = 7, expected = 0;
  ck_assert_int_eq(fp_lock_new(mgr, &l), 0);
  ck_assert_int_eq(fp_array_new(mgr, 64, &a), 0);
  fp_counter *wrong = (fp_counter *)l;
  ck_assert_int_eq(fp_counter_add(wrong, 1, &v), FP_ETYPE);
  ck_assert_int_eq(fp_counter_get(wrong, &v), FP_ETYPE);
  ck_assert_int_eq(fp_counter_set(wrong, 3), FP_ETYPE);
  ck_assert_int_eq(fp_counter_cas(wrong, &expected, 1), FP_ETYPE);
  ck_assert_int_eq(fp_counter_destroy(wrong), FP_ETYPE);
  ck_assert_int_eq(fp_counter_destroy((fp_counter *)a), FP_ETYPE);
  /* A ref of m's object of another type. */
  ck_assert_int_eq(fp_counter_from_ref(mgr, fp_lock_ref(l), &c), FP_ETYPE);
  ck_assert_int_eq(fp_counter_from_ref(mgr, fp_array_ref(a), &c), FP_ETYPE);
  /* The lock survived the refused calls. */
  ck_assert_int_eq(fp_lock_acquire(l, 0), 0);
  ck_assert_int_eq(fp_lock_release(l), 0);
  ck_assert_int_eq(fp_lock_destroy(l), 0);
  ck_assert_int_eq(fp_array_destroy(a), 0);
}
END_TEST

START_TEST(lock_calls_give_etype_for_other_kinds) {
  fp_counter *c;
  fp_dict *d;
  fp_lock *l;
  ck_assert_int_eq(fp_counter_new(mgr, 0, &c), 0);
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_lock_acquire((fp_lock *)c, 0), FP_ETYPE);
  ck_assert_int_eq(fp_lock_acquire((fp_lock *)c, FP_FOREVER), FP_ETYPE);
  ck_assert_int_eq(fp_lock_release((fp_lock *)c), FP_ETYPE);
  ck_assert_int_eq(fp_lock_acquire((fp_lock *)d, 1.0), FP_ETYPE);
  ck_assert_int_eq(fp_lock_release((fp_lock *)d), FP_ETYPE);
  ck_assert_int_eq(fp_lock_from_ref(mgr, fp_counter_ref(c), &l), FP_ETYPE);
  ck_assert_int_eq(fp_lock_from_ref(mgr, fp_dict_ref(d), &l), FP_ETYPE);
  ck_assert_int_eq(fp_counter_destroy(c), 0);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
}
END_TEST

START_TEST(array_calls_give_etype_for_other_kinds) {
  fp_counter *c;
  fp_list *l;
  fp_array *a;
  ck_assert_int_eq(fp_counter_new(mgr, 0, &c), 0);
  ck_assert_int_eq(fp_list_new(mgr, &l), 0);
  ck_assert_int_eq(fp_array_destroy((fp_array *)c), FP_ETYPE);
  ck_assert_int_eq(fp_array_destroy((fp_array *)l), FP_ETYPE);
  ck_assert_int_eq(fp_array_from_ref(mgr, fp_counter_ref(c), &a), FP_ETYPE);
  ck_assert_int_eq(fp_array_from_ref(mgr, fp_list_ref(l), &a), FP_ETYPE);
  ck_assert_int_eq(fp_list_len(l), 0); /* the list survived */
  ck_assert_int_eq(fp_counter_destroy(c), 0);
  ck_assert_int_eq(fp_list_destroy(l), 0);
}
END_TEST

/* --- list ----------------------------------------------------------------- */

START_TEST(list_destroy_gives_einval_twice_and_etype_for_other_kinds) {
  fp_list *l;
  fp_dict *d;
  fp_counter *c;
  ck_assert_int_eq(fp_list_new(mgr, &l), 0);
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_counter_new(mgr, 0, &c), 0);
  ck_assert_int_eq(fp_list_destroy(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_list_destroy((fp_list *)d), FP_ETYPE);
  ck_assert_int_eq(fp_list_destroy((fp_list *)c), FP_ETYPE);
  ck_assert_int_eq(fp_list_destroy(l), 0);
  ck_assert_int_eq(fp_list_destroy(l), FP_EINVAL); /* second destroy */
  ck_assert_int_eq(fp_dict_len(d), 0);             /* the dict survived */
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  ck_assert_int_eq(fp_counter_destroy(c), 0);
}
END_TEST

START_TEST(list_pop_gives_einval_for_null_and_destroyed_list) {
  fp_list *l;
  fp_writer w, out;
  fp_writer_init(&w);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_list_new(mgr, &l), 0);
  encode_int(&w, 9);
  ck_assert_int_eq(fp_list_append(l, w.data, w.len), 0);
  ck_assert_int_eq(fp_list_pop(NULL, -1, &out), FP_EINVAL);
  ck_assert_int_eq(fp_list_pop(NULL, 0, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_list_destroy(l), 0);
  ck_assert_int_eq(fp_list_pop(l, -1, &out), FP_EINVAL);
  ck_assert_int_eq(fp_list_pop(l, 0, NULL), FP_EINVAL);
  ck_assert_uint_eq(out.len, 0);
  fp_writer_free(&w);
  fp_writer_free(&out);
}
END_TEST

/* Writes one value: FP_MAX_DEPTH nested lists around a nil. */
static void write_deepest(fp_writer *w) {
  for (int i = 0; i < FP_MAX_DEPTH; i++)
    ck_assert_int_eq(fp_write_list_begin(w), 0);
  ck_assert_int_eq(fp_write_nil(w), 0);
  for (int i = 0; i < FP_MAX_DEPTH; i++)
    ck_assert_int_eq(fp_write_list_end(w), 0);
}

/* The snapshot's own list makes an item of FP_MAX_DEPTH levels one too
 * deep: FP_EDEPTH, the writer's sticky error; fp_list_get still reads it. */
START_TEST(list_snapshot_gives_edepth_for_an_item_at_max_depth) {
  fp_list *l;
  fp_writer w, out;
  fp_writer_init(&w);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_list_new(mgr, &l), 0);
  write_deepest(&w);
  ck_assert_int_eq(fp_list_append(l, w.data, w.len), 0);
  ck_assert_int_eq(fp_list_snapshot(l, &out), FP_EDEPTH);
  ck_assert_int_eq(fp_writer_error(&out), FP_EDEPTH);
  fp_writer_reset(&out);
  ck_assert_int_eq(fp_list_get(l, 0, &out), 0);
  ck_assert_uint_eq(out.len, w.len);
  ck_assert_int_eq(memcmp(out.data, w.data, w.len), 0);
  ck_assert_int_eq(fp_list_destroy(l), 0);
  fp_writer_free(&w);
  fp_writer_free(&out);
}
END_TEST

/* A value larger than the arena's heap area: FP_EMSGSIZE (the list's
 * errors are the dict's). */
START_TEST(list_extend_gives_emsgsize_for_a_value_over_the_heap_area) {
  fp_list *l;
  fp_writer w;
  static char big[512u << 10]; /* twice the whole arena */
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_new(mgr, &l), 0);
  ck_assert_int_eq(fp_write_bytes(&w, big, sizeof big), 0);
  ck_assert_int_eq(fp_list_extend(l, w.data, w.len), FP_EMSGSIZE);
  ck_assert_int_eq(fp_list_destroy(l), 0);
  fp_writer_free(&w);
}
END_TEST

/* --- dict ----------------------------------------------------------------- */

START_TEST(dict_set_float_gives_einval) {
  fp_dict *d;
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_dict_set_float(NULL, K("f"), 1.5), FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_float(d, NULL, 3, 1.5), FP_EINVAL);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  ck_assert_int_eq(fp_dict_set_float(d, K("f"), 1.5), FP_EINVAL);
}
END_TEST

START_TEST(dict_get_float_gives_enoent_for_absent_keys) {
  fp_dict *d;
  double v = 42.0;
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_dict_get_float(d, K("never"), &v), FP_ENOENT);
  ck_assert_int_eq(fp_dict_get_float(d, NULL, 0, &v), FP_ENOENT);
  ck_assert_int_eq(fp_dict_set_float(d, K("gone"), 2.5), 0);
  ck_assert_int_eq(fp_dict_delete(d, K("gone"), NULL), 0);
  ck_assert_int_eq(fp_dict_get_float(d, K("gone"), &v), FP_ENOENT);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
}
END_TEST

START_TEST(dict_set_if_absent_gives_einval_and_eproto) {
  static const unsigned char junk[] = {0x77, 1, 2};     /* no such tag */
  static const unsigned char cut[] = {FP_INT, 1, 2, 3}; /* truncated INT */
  fp_dict *d;
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  encode_int(&w, 1);
  ck_assert_int_eq(fp_dict_set_if_absent(NULL, K("a"), w.data, w.len),
                   FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_if_absent(d, NULL, 1, w.data, w.len), FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_if_absent(d, K("a"), NULL, 9), FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_if_absent(d, K("a"), junk, sizeof junk),
                   FP_EPROTO);
  ck_assert_int_eq(fp_dict_set_if_absent(d, K("a"), cut, sizeof cut),
                   FP_EPROTO);
  ck_assert_int_eq(fp_write_int(&w, 2), 0); /* two values */
  ck_assert_int_eq(fp_dict_set_if_absent(d, K("a"), w.data, w.len), FP_EPROTO);
  ck_assert_int_eq(fp_dict_contains(d, K("a")), 0);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  encode_int(&w, 1);
  ck_assert_int_eq(fp_dict_set_if_absent(d, K("a"), w.data, w.len), FP_EINVAL);
  fp_writer_free(&w);
}
END_TEST

START_TEST(dict_setdefault_gives_eproto_for_a_malformed_value) {
  static const unsigned char junk[] = {0x77, 1, 2};
  static const unsigned char cut[] = {FP_STR, 9, 0, 0, 0, 'a'};
  fp_dict *d;
  fp_writer w, out;
  fp_writer_init(&w);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_dict_setdefault(d, K("k"), junk, sizeof junk, &out),
                   FP_EPROTO);
  ck_assert_int_eq(fp_dict_setdefault(d, K("k"), cut, sizeof cut, NULL),
                   FP_EPROTO);
  ck_assert_int_eq(fp_write_nil(&w), 0);
  ck_assert_int_eq(fp_write_nil(&w), 0); /* two values */
  ck_assert_int_eq(fp_dict_setdefault(d, K("k"), w.data, w.len, &out),
                   FP_EPROTO);
  ck_assert_int_eq(fp_dict_contains(d, K("k")), 0);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  fp_writer_free(&w);
  fp_writer_free(&out);
}
END_TEST

START_TEST(dict_set_bytes_gives_einval_and_emsgsize) {
  static char big[512u << 10]; /* more than the 256 KiB arena's heap area */
  static char key[FP_DICT_KEY_MAX + 1];
  fp_dict *d;
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_dict_set_bytes(NULL, K("b"), "x", 1), FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_bytes(d, NULL, 2, "x", 1), FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_bytes(d, K("b"), NULL, 4), FP_EINVAL);
  ck_assert_int_eq(fp_dict_set_bytes(d, key, sizeof key, "x", 1), FP_EMSGSIZE);
  ck_assert_int_eq(fp_dict_set_bytes(d, K("b"), big, sizeof big), FP_EMSGSIZE);
  ck_assert_int_eq(fp_dict_contains(d, K("b")), 0);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  ck_assert_int_eq(fp_dict_set_bytes(d, K("b"), "x", 1), FP_EINVAL);
}
END_TEST

START_TEST(dict_delete_gives_einval) {
  fp_dict *d;
  fp_writer out;
  fp_writer_init(&out);
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  ck_assert_int_eq(fp_dict_set_int(d, K("a"), 1), 0);
  ck_assert_int_eq(fp_dict_delete(NULL, K("a"), &out), FP_EINVAL);
  ck_assert_int_eq(fp_dict_delete(d, NULL, 1, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_dict_contains(d, K("a")), 1);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  ck_assert_int_eq(fp_dict_delete(d, K("a"), &out), FP_EINVAL);
  ck_assert_uint_eq(out.len, 0);
  fp_writer_free(&out);
}
END_TEST

/* --- a full arena, a thread without a heap slot -------------------------- */

START_TEST(lock_new_gives_enomem_once_the_arena_is_full) {
  enum { MAX_LOCKS = 1 << 16 }; /* far above what 256 KiB can hold */
  fp_lock *l;
  int rc, n = 0;
  while ((rc = fp_lock_new(mgr, &l)) == 0 && n < MAX_LOCKS)
    n++;
  ck_assert_int_eq(rc, FP_ENOMEM);
  ck_assert_int_gt(n, 0);
}
END_TEST

/* What one helper thread reports: its fp_list_get, and when that failed,
 * its fp_list_set and fp_dict_foreach. */
typedef struct slot_probe {
  pthread_t t;
  fp_list *l;
  fp_dict *d;
  const fp_writer *val; /* one encoded value for fp_list_set */
  int go_fd;            /* read end: released when a byte (or EOF) arrives */
  int report_fd;        /* write end: one report per thread */
  int rc[3];
} slot_probe;

static int count_item(const void *k, size_t kl, const void *v, size_t vl,
                      void *arg) {
  (void)k, (void)kl, (void)v, (void)vl;
  ++*(int *)arg;
  return 0;
}

/* Binds a heap slot with fp_list_get and keeps it (stays alive) until
 * released; a thread that got none tries the other calls at once. */
static void *slot_holder(void *arg) {
  slot_probe *p = arg;
  fp_writer out;
  char b;
  int seen = 0;
  fp_writer_init(&out);
  p->rc[0] = fp_list_get(p->l, 0, &out);
  if (p->rc[0] != 0) {
    p->rc[1] = fp_list_set(p->l, 0, p->val->data, p->val->len);
    p->rc[2] = fp_dict_foreach(p->d, count_item, &seen);
  }
  fp_writer_free(&out);
  (void)!write(p->report_fd, "r", 1);
  if (p->rc[0] == 0)
    (void)!read(p->go_fd, &b, 1);
  return NULL;
}

/* "A call from one more live thread fails with FP_ENOMEM": threads take
 * the 256 KiB arena's heap slots one by one until one gets none. */
START_TEST(list_get_set_and_dict_foreach_give_enomem_without_a_heap_slot) {
  enum { MAX_THREADS = 64 };
  static slot_probe p[MAX_THREADS];
  fp_list *l;
  fp_dict *d;
  fp_writer w;
  int go[2], report[2], n = 0;
  fp_writer_init(&w);
  ck_assert_int_eq(pipe(go), 0);
  ck_assert_int_eq(pipe(report), 0);
  ck_assert_int_eq(fp_list_new(mgr, &l), 0); /* main thread: one slot */
  ck_assert_int_eq(fp_dict_new(mgr, &d), 0);
  encode_int(&w, 3);
  ck_assert_int_eq(fp_list_append(l, w.data, w.len), 0);
  ck_assert_int_eq(fp_dict_set_int(d, K("k"), 1), 0);
  for (;;) {
    struct pollfd pf = {report[0], POLLIN, 0};
    char b;
    ck_assert_int_lt(n, MAX_THREADS);
    p[n] = (slot_probe){
        .l = l, .d = d, .val = &w, .go_fd = go[0], .report_fd = report[1]};
    ck_assert_int_eq(pthread_create(&p[n].t, NULL, slot_holder, &p[n]), 0);
    ck_assert_int_eq(poll(&pf, 1, 10000), 1);
    ck_assert_int_eq(read(report[0], &b, 1), 1);
    if (p[n++].rc[0] != 0)
      break;
  }
  slot_probe *last = &p[n - 1];
  ck_assert_int_eq(last->rc[0], FP_ENOMEM);
  ck_assert_int_eq(last->rc[1], FP_ENOMEM);
  ck_assert_int_eq(last->rc[2], FP_ENOMEM);
  ck_assert_int_gt(n, 1); /* some thread did get a slot */
  close(go[1]);           /* EOF releases every holder */
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(pthread_join(p[i].t, NULL), 0);
  close(go[0]), close(report[0]), close(report[1]);
  ck_assert_int_eq(fp_list_destroy(l), 0);
  ck_assert_int_eq(fp_dict_destroy(d), 0);
  fp_writer_free(&w);
}
END_TEST

/* --- codec ------------------------------------------------------------- */

START_TEST(read_span_gives_eproto_and_does_not_move) {
  static const unsigned char bad_tag[] = {0x77};
  static const unsigned char cut_int[] = {FP_INT, 1, 2, 3};
  static const unsigned char short_list[] = {FP_LIST, 3, 0, 0, 0, FP_NIL};
  static const unsigned char cut_bytes[] = {FP_BYTES, 200, 0, 0, 0, 'x'};
  const struct {
    const unsigned char *p;
    size_t n;
  } cases[] = {{bad_tag, sizeof bad_tag},
               {cut_int, sizeof cut_int},
               {short_list, sizeof short_list},
               {cut_bytes, sizeof cut_bytes}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fp_reader r;
    const void *start = NULL;
    size_t len = 0;
    fp_reader_init(&r, cases[i].p, cases[i].n);
    ck_assert_int_eq(fp_read_span(&r, &start, &len), FP_EPROTO);
    ck_assert_uint_eq(r.pos, 0);
  }
}
END_TEST

/* FP_MAX_DEPTH + 1 nested lists around a nil, encoded by hand. */
static size_t encode_too_deep(unsigned char *buf) {
  size_t n = 0;
  for (int i = 0; i <= FP_MAX_DEPTH; i++) {
    static const unsigned char one_item_list[] = {FP_LIST, 1, 0, 0, 0};
    memcpy(buf + n, one_item_list, sizeof one_item_list);
    n += sizeof one_item_list;
  }
  buf[n++] = FP_NIL;
  return n;
}

START_TEST(copy_value_gives_eof_eproto_and_edepth) {
  static const unsigned char bad_tag[] = {0x77};
  unsigned char deep[5 * (FP_MAX_DEPTH + 1) + 1];
  size_t ndeep = encode_too_deep(deep);
  fp_writer w, two;
  fp_reader r;
  fp_writer_init(&w);
  fp_writer_init(&two);
  fp_reader_init(&r, NULL, 0); /* nothing to copy */
  ck_assert_int_eq(fp_copy_value(&w, &r), FP_EOF);
  fp_reader_init(&r, bad_tag, sizeof bad_tag);
  ck_assert_int_eq(fp_copy_value(&w, &r), FP_EPROTO);
  ck_assert_uint_eq(r.pos, 0);
  fp_reader_init(&r, deep, ndeep); /* too deep in the reader */
  ck_assert_int_eq(fp_copy_value(&w, &r), FP_EDEPTH);
  ck_assert_uint_eq(r.pos, 0);
  ck_assert_uint_eq(w.len, 0);
  /* Too deep once nested in the lists open in w: the writer's error. */
  ck_assert_int_eq(fp_pack(&two, "[[n]]"), 0);
  for (int i = 0; i < FP_MAX_DEPTH - 1; i++)
    ck_assert_int_eq(fp_write_list_begin(&w), 0);
  fp_reader_init(&r, two.data, two.len);
  ck_assert_int_eq(fp_copy_value(&w, &r), FP_EDEPTH);
  ck_assert_int_eq(fp_writer_error(&w), FP_EDEPTH);
  ck_assert_uint_eq(r.pos, 0);
  fp_writer_free(&w);
  fp_writer_free(&two);
}
END_TEST

START_TEST(write_raw_gives_einval_for_null_arguments) {
  fp_writer w, one;
  fp_writer_init(&w);
  fp_writer_init(&one);
  ck_assert_int_eq(fp_write_int(&one, 4), 0);
  ck_assert_int_eq(fp_write_raw(NULL, one.data, one.len), FP_EINVAL);
  ck_assert_int_eq(fp_write_raw(&w, NULL, 9), FP_EINVAL);
  ck_assert_uint_eq(w.len, 0);
  ck_assert_int_eq(fp_writer_error(&w), FP_EINVAL); /* sticky */
  ck_assert_int_eq(fp_write_raw(&w, one.data, one.len), FP_EINVAL);
  ck_assert_uint_eq(w.len, 0);
  fp_writer_free(&w);
  fp_writer_free(&one);
}
END_TEST

START_TEST(write_bool_and_float_return_the_sticky_error) {
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_int(&w, 1), 0);
  size_t len = w.len;
  ck_assert_int_eq(fp_write_list_end(&w), FP_EINVAL); /* no open list */
  ck_assert_int_eq(fp_write_bool(&w, 1), FP_EINVAL);
  ck_assert_int_eq(fp_write_float(&w, 0.5), FP_EINVAL);
  ck_assert_uint_eq(w.len, len);
  /* Another first error, kept the same way. */
  fp_writer_reset(&w);
  for (int i = 0; i < FP_MAX_DEPTH; i++)
    ck_assert_int_eq(fp_write_list_begin(&w), 0);
  len = w.len;
  ck_assert_int_eq(fp_write_list_begin(&w), FP_EDEPTH);
  ck_assert_int_eq(fp_write_bool(&w, 0), FP_EDEPTH);
  ck_assert_int_eq(fp_write_float(&w, -1.0), FP_EDEPTH);
  ck_assert_int_eq(fp_writer_error(&w), FP_EDEPTH);
  ck_assert_uint_eq(w.len, len);
  fp_writer_free(&w);
}
END_TEST

static int vpack_via(fp_writer *w, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = fp_vpack(w, fmt, ap);
  va_end(ap);
  return rc;
}

static int vunpack_via(fp_reader *r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = fp_vunpack(r, fmt, ap);
  va_end(ap);
  return rc;
}

START_TEST(vpack_errors_through_a_va_list) {
  char deep[2 * (FP_MAX_DEPTH + 1) + 1];
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(vpack_via(&w, "i", (int64_t)1), 0);
  size_t len = w.len;
  ck_assert_int_eq(vpack_via(&w, "q", (int64_t)1), FP_EINVAL);
  ck_assert_int_eq(vpack_via(&w, "[ i", (int64_t)1), FP_EINVAL);
  ck_assert_int_eq(vpack_via(&w, "i ]", (int64_t)1), FP_EINVAL);
  ck_assert_int_eq(vpack_via(&w, "*"), FP_EINVAL);
  memset(deep, '[', FP_MAX_DEPTH + 1);
  memset(deep + FP_MAX_DEPTH + 1, ']', FP_MAX_DEPTH + 1);
  deep[2 * (FP_MAX_DEPTH + 1)] = '\0';
  ck_assert_int_eq(vpack_via(&w, deep), FP_EINVAL);
  ck_assert_uint_eq(w.len, len); /* nothing written */
  /* A failed write (a NULL string): rolled back to the call. */
  ck_assert_int_eq(vpack_via(&w, "[ i s ]", (int64_t)2, (const char *)NULL),
                   FP_EINVAL);
  ck_assert_uint_eq(w.len, len);
  fp_writer_free(&w);
}
END_TEST

START_TEST(vunpack_errors_through_a_va_list) {
  fp_writer w;
  fp_reader r;
  int64_t a = -1, b = -1, c = -1, d = -1;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_pack(&w, "[ i i ] i", (int64_t)1, (int64_t)2, (int64_t)3),
                   0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(vunpack_via(&r, "q", &a), FP_EINVAL);
  ck_assert_int_eq(vunpack_via(&r, "[ i", &a), FP_EINVAL);
  ck_assert_int_eq(vunpack_via(&r, "i ]", &a), FP_EINVAL);
  /* The list holds more items than "[ i ]" names. */
  ck_assert_int_eq(vunpack_via(&r, "[ i ] i", &a, &b), FP_EPROTO);
  /* More values than the top level holds. */
  ck_assert_int_eq(vunpack_via(&r, "[ i i ] i i", &a, &b, &c, &d), FP_EOF);
  /* All or nothing: the reader did not move and nothing was stored. */
  ck_assert_uint_eq(r.pos, 0);
  ck_assert_int_eq(a, -1);
  ck_assert_int_eq(b, -1);
  ck_assert_int_eq(c, -1);
  ck_assert_int_eq(d, -1);
  ck_assert_int_eq(vunpack_via(&r, "[ i i ] i", &a, &b, &c), 0);
  ck_assert_int_eq(a + b + c, 6);
  fp_writer_free(&w);
}
END_TEST

/* --- frames -------------------------------------------------------------- */

/* VmSize of this process in bytes. */
static size_t vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  size_t kb = 0;
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmSize: %zu kB", &kb) == 1)
      break;
  if (f != NULL)
    fclose(f);
  return kb << 10;
}

/* A frame announcing ~4 GiB, read with no max, while the address space is
 * capped 64 MiB above its use: the buffer cannot be had, FP_ENOMEM and an
 * empty buffer. Sanitizers and valgrind manage memory their own way (the
 * cap would stop them, not the library): skipped there. */
START_TEST(frame_read_gives_enomem_when_the_buffer_cannot_be_had) {
  if (fp_test_under_valgrind() || fp_test_under_sanitizer())
    return;
  static const unsigned char hdr[4] = {0xf0, 0xff, 0xff, 0xff};
  int fds[2];
  fp_writer buf;
  struct rlimit old, cap;
  fp_writer_init(&buf);
  ck_assert_int_eq(pipe(fds), 0);
  ck_assert_int_eq(write(fds[1], hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
  cap = old;
  cap.rlim_cur = vm_size() + ((size_t)64 << 20);
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &cap), 0);
  int rc = fp_frame_read(fds[0], &buf, SIZE_MAX);
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &old), 0);
  ck_assert_int_eq(rc, FP_ENOMEM);
  ck_assert_uint_eq(buf.len, 0);
  close(fds[0]), close(fds[1]);
  fp_writer_free(&buf);
}
END_TEST

/* --- pool ----------------------------------------------------------------- */

static void pool_teardown(void) {
  fp_test_no_children();
}

static fp_pool *pool_with(int processes, size_t max_frame) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = processes;
  o.max_frame = max_frame;
  int rc = fp_pool_new(&p, &o);
  ck_assert_msg(rc == 0, "fp_pool_new: %s", fp_err_name(rc));
  return p;
}

static int t_echo(fp_reader *args, fp_writer *out) {
  return fp_copy_value(out, args);
}

static int t_sum2(fp_reader *args, fp_writer *out) {
  int64_t a = 0, b = 0;
  int rc = fp_unpack(args, "i i", &a, &b);
  return rc != 0 ? rc : fp_write_int(out, a + b);
}

START_TEST(map_values_gives_emsgsize_for_an_item_over_max_frame) {
  static char big[8192];
  fp_pool *p = pool_with(2, 4096);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_write_int(&items, 1), 0);
  ck_assert_int_eq(fp_write_bytes(&items, big, sizeof big), 0);
  ck_assert_int_eq(fp_pool_map_values(p, t_echo, &items, &out, NULL),
                   FP_EMSGSIZE);
  ck_assert_uint_eq(out.len, 0);
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

START_TEST(starmap_gives_einval_and_emsgsize) {
  static char big[8192];
  fp_pool *p = pool_with(2, 4096);
  fp_writer items, out;
  fp_call_opts co = {0};
  fp_writer_init(&items);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_pack(&items, "[i i]", (int64_t)1, (int64_t)2), 0);
  ck_assert_int_eq(fp_pool_starmap(NULL, t_sum2, &items, &out, NULL),
                   FP_EINVAL);
  ck_assert_int_eq(fp_pool_starmap(p, NULL, &items, &out, NULL), FP_EINVAL);
  co.timeout = NAN; /* a NaN timeout is FP_EINVAL everywhere */
  ck_assert_int_eq(fp_pool_starmap(p, t_sum2, &items, &out, &co), FP_EINVAL);
  ck_assert_int_eq(fp_pack(&items, "[i b]", (int64_t)3, big, sizeof big), 0);
  ck_assert_int_eq(fp_pool_starmap(p, t_sum2, &items, &out, NULL), FP_EMSGSIZE);
  ck_assert_uint_eq(out.len, 0);
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

START_TEST(starmap_async_and_imap_unordered_give_eclosed_after_close) {
  fp_pool *p = pool_with(2, 0);
  fp_writer items;
  fp_result *res = NULL;
  fp_iter *it = NULL;
  fp_writer_init(&items);
  ck_assert_int_eq(fp_pack(&items, "[i i]", (int64_t)1, (int64_t)2), 0);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_starmap_async(p, t_sum2, &items, NULL, &res),
                   FP_ECLOSED);
  ck_assert_int_eq(fp_pool_imap_unordered(p, t_echo, &items, NULL, &it),
                   FP_ECLOSED);
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_int_eq(fp_pool_starmap_async(p, t_sum2, &items, NULL, &res),
                   FP_ECLOSED);
  ck_assert_int_eq(fp_pool_imap_unordered(p, t_echo, &items, NULL, &it),
                   FP_ECLOSED);
  fp_pool_free(p);
  fp_writer_free(&items);
}
END_TEST

/* Made before the pool, so that its workers inherit them: a task reports
 * on g_started, then blocks reading g_never, which nobody writes (the
 * worker holds a write end too, so the read never sees EOF). */
static int g_started[2] = {-1, -1};
static int g_never[2] = {-1, -1};

static int t_report_and_block(fp_reader *args, fp_writer *out) {
  char b;
  (void)args;
  if (write(g_started[1], "s", 1) != 1)
    return fp_task_fail("started pipe write failed");
  (void)!read(g_never[0], &b, 1);
  return fp_write_nil(out);
}

typedef struct apply_call {
  fp_pool *p;
  int rc;
} apply_call;

static void *apply_thread(void *arg) {
  apply_call *a = arg;
  fp_writer out;
  fp_writer_init(&out);
  a->rc = fp_pool_apply(a->p, t_report_and_block, NULL, &out);
  fp_writer_free(&out);
  return NULL;
}

static void *terminate_thread(void *arg) {
  return (void *)(intptr_t)fp_pool_terminate(arg);
}

START_TEST(apply_gives_ecanceled_when_another_thread_terminates) {
  ck_assert_int_eq(pipe(g_started), 0);
  ck_assert_int_eq(pipe(g_never), 0);
  apply_call a = {.p = pool_with(1, 0), .rc = 1};
  pthread_t ta, tt;
  void *trc;
  char b;
  ck_assert_int_eq(pthread_create(&ta, NULL, apply_thread, &a), 0);
  struct pollfd pf = {g_started[0], POLLIN, 0};
  ck_assert_int_eq(poll(&pf, 1, 30000), 1); /* the task is running */
  ck_assert_int_eq(read(g_started[0], &b, 1), 1);
  ck_assert_int_eq(pthread_create(&tt, NULL, terminate_thread, a.p), 0);
  ck_assert_int_eq(pthread_join(tt, &trc), 0);
  ck_assert_int_eq((int)(intptr_t)trc, 0);
  ck_assert_int_eq(pthread_join(ta, NULL), 0);
  ck_assert_int_eq(a.rc, FP_ECANCELED);
  ck_assert_int_eq(fp_pool_join(a.p), 0);
  fp_pool_free(a.p);
  close(g_started[0]), close(g_started[1]);
  close(g_never[0]), close(g_never[1]);
}
END_TEST

static int t_fail_etask(fp_reader *args, fp_writer *out) {
  (void)args, (void)out;
  return fp_task_fail("deliberate failure");
}

static int t_fail_erange(fp_reader *args, fp_writer *out) {
  (void)args, (void)out;
  return FP_ERANGE;
}

START_TEST(result_value_gives_the_failed_jobs_code) {
  fp_pool *p = pool_with(2, 0);
  fp_result *r1 = NULL, *r2 = NULL;
  fp_reader rd;
  ck_assert_int_eq(fp_pool_apply_async(p, t_fail_etask, NULL, NULL, &r1), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, t_fail_erange, NULL, NULL, &r2), 0);
  ck_assert_int_eq(fp_result_get(r1, 30), FP_ETASK);
  ck_assert_int_eq(fp_result_value(r1, &rd), FP_ETASK);
  ck_assert_int_eq(fp_result_get(r2, 30), FP_ERANGE);
  ck_assert_int_eq(fp_result_value(r2, &rd), FP_ERANGE);
  fp_result_free(r1);
  fp_result_free(r2);
  fp_pool_free(p);
}
END_TEST

Suite *errpaths_suite(void) {
  Suite *s = suite_create("errpaths");
  TCase *tc = tcase_create("manager");
  tcase_add_checked_fixture(tc, mgr_setup, mgr_teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, manager_refusals_set_the_last_error);
  tcase_add_test(tc, dict_kind_and_size_refusals_say_what);
  tcase_add_test(tc, dict_setdefault_error_stores_nothing);
  tcase_add_test(tc, handle_remade_under_a_call_is_never_another_kind);
  tcase_add_test(tc, lock_destroy_ok_then_einval_and_etype_for_other_kinds);
  tcase_add_test(tc, counter_calls_give_etype_for_other_kinds);
  tcase_add_test(tc, lock_calls_give_etype_for_other_kinds);
  tcase_add_test(tc, array_calls_give_etype_for_other_kinds);
  tcase_add_test(tc, list_destroy_gives_einval_twice_and_etype_for_other_kinds);
  tcase_add_test(tc, list_pop_gives_einval_for_null_and_destroyed_list);
  tcase_add_test(tc, list_snapshot_gives_edepth_for_an_item_at_max_depth);
  tcase_add_test(tc, list_extend_gives_emsgsize_for_a_value_over_the_heap_area);
  tcase_add_test(tc, dict_set_float_gives_einval);
  tcase_add_test(tc, dict_get_float_gives_enoent_for_absent_keys);
  tcase_add_test(tc, dict_set_if_absent_gives_einval_and_eproto);
  tcase_add_test(tc, dict_setdefault_gives_eproto_for_a_malformed_value);
  tcase_add_test(tc, dict_set_bytes_gives_einval_and_emsgsize);
  tcase_add_test(tc, dict_delete_gives_einval);
  tcase_add_test(tc, lock_new_gives_enomem_once_the_arena_is_full);
  tcase_add_test(tc,
                 list_get_set_and_dict_foreach_give_enomem_without_a_heap_slot);
  suite_add_tcase(s, tc);

  tc = tcase_create("codec");
  tcase_set_timeout(tc, 10);
  tcase_add_test(tc, read_span_gives_eproto_and_does_not_move);
  tcase_add_test(tc, copy_value_gives_eof_eproto_and_edepth);
  tcase_add_test(tc, write_raw_gives_einval_for_null_arguments);
  tcase_add_test(tc, write_bool_and_float_return_the_sticky_error);
  tcase_add_test(tc, vpack_errors_through_a_va_list);
  tcase_add_test(tc, vunpack_errors_through_a_va_list);
  tcase_add_test(tc, frame_read_gives_enomem_when_the_buffer_cannot_be_had);
  suite_add_tcase(s, tc);

  tc = tcase_create("pool");
  tcase_add_checked_fixture(tc, NULL, pool_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, map_values_gives_emsgsize_for_an_item_over_max_frame);
  tcase_add_test(tc, starmap_gives_einval_and_emsgsize);
  tcase_add_test(tc, starmap_async_and_imap_unordered_give_eclosed_after_close);
  tcase_add_test(tc, apply_gives_ecanceled_when_another_thread_terminates);
  tcase_add_test(tc, result_value_gives_the_failed_jobs_code);
  suite_add_tcase(s, tc);
  return s;
}
