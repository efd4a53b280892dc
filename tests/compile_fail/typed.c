/* SPDX-License-Identifier: MIT */
/* typed.c - misuses of the typed macros of forkpool.h that must not
 * compile.
 *
 * make check compiles this file once per CASE: CASE=0 is correct code and
 * must compile without a warning (so a failure below is the misuse, not a
 * broken file); every other case must fail with an error, -Werror or not.
 * Each case is one line a user could write by mistake. Nothing here is
 * ever linked or run.
 */
#include <forkpool.h>
#include <stddef.h>

#ifndef CASE
#define CASE 0
#endif

static int elem(const void *in, void *out) {
  (void)in;
  (void)out;
  return 0;
}

int typed_cases(fp_pool *pool, fp_writer *w, fp_reader *r);

int typed_cases(fp_pool *pool, fp_writer *w, fp_reader *r) {
  int64_t in[4] = {0}, out[4], i64 = 0;
  const char *s = "x";
  double d = 1.0;
  int n = 3;
  void *vin = in;
  struct {
    int a;
  } st = {0};
  (void)in, (void)out, (void)i64, (void)s, (void)d, (void)n, (void)vin;
  (void)st;
#if CASE == 0
  /* Correct: every form the cases below get wrong. */
  return FP_PACK(w, n, d, s) + FP_PACK_LIST(w, n, 2) +
         fp_pack(w, "i d s ?", FP_I(n), FP_D(n), FP_S(s), FP_B(n)) +
         FP_UNPACK(r, &i64, &d, &s) + FP_MAP(pool, elem, in, 4, out, NULL);
#elif CASE == 1
  return fp_pack(w, "i", FP_I(d)); /* a double where "i" wants an integer */
#elif CASE == 2
  return fp_pack(w, "i", FP_I(s)); /* a pointer as an integer */
#elif CASE == 3
  return fp_pack(w, "s", FP_S(n)); /* an int as a string */
#elif CASE == 4
  return FP_UNPACK(r, &n); /* int *: fp_unpack would write 8 bytes */
#elif CASE == 5
  return FP_PACK(w, st); /* a struct has no codec type */
#elif CASE == 6
  return FP_PACK(w, &n); /* neither a string nor a number */
#elif CASE == 7
  return FP_MAP(pool, elem, vin, 4, out, NULL); /* void *: no element size */
#elif CASE == 8
  return FP_UNPACK(r, NULL); /* NULL: skip with fp_unpack's '*' instead */
#elif CASE == 9
  return FP_PACK(w, 1, 2, 3, 4, 5, 6, 7, 8, 9); /* more than 8 values */
#else
#error "no such case"
#endif
}
