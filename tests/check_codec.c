/* SPDX-License-Identifier: MIT */
/* check_codec.c - tests of the value codec (ipc/wire/codec.c).
 *
 * Round trips of every type with edge values, the exact wire bytes of small
 * values (the examples of docs/codec.md), nesting at and past FP_MAX_DEPTH,
 * truncation of a multi-type message at every byte offset, corrupted
 * fields, wrong-type reads, and the rule that a failed read never moves the
 * reader and a failed write never changes the writer's bytes.
 */
#include "forkpool.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Asserts that the writer holds exactly the n bytes at want. */
static void assert_bytes(const fp_writer *w, const void *want, size_t n) {
  ck_assert_uint_eq(w->len, n);
  ck_assert_mem_eq(w->data, want, n);
}

static uint64_t bits_of(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof(u));
  return u;
}

START_TEST(write_read_roundtrip_scalar_edge_values) {
  static const char nul_str[] = {'a', 0, 'b', 0, 0};
  static const unsigned char nul_bytes[] = {0, 1, 0, 255, 0};
  const double nan_payload = (union {
                               uint64_t u;
                               double d;
                             }){.u = 0x7ff8000000000abcULL}
                                 .d;
  fp_writer w;
  fp_reader r;
  int b;
  int64_t i;
  double d;
  const char *s;
  const void *p;
  size_t n;

  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_nil(&w), 0);
  ck_assert_int_eq(fp_write_bool(&w, 0), 0);
  ck_assert_int_eq(fp_write_bool(&w, 42), 0);
  ck_assert_int_eq(fp_write_int(&w, INT64_MIN), 0);
  ck_assert_int_eq(fp_write_int(&w, INT64_MAX), 0);
  ck_assert_int_eq(fp_write_int(&w, -1), 0);
  ck_assert_int_eq(fp_write_int(&w, 0), 0);
  ck_assert_int_eq(fp_write_float(&w, -0.0), 0);
  ck_assert_int_eq(fp_write_float(&w, nan_payload), 0);
  ck_assert_int_eq(fp_write_float(&w, INFINITY), 0);
  ck_assert_int_eq(fp_write_float(&w, -INFINITY), 0);
  ck_assert_int_eq(fp_write_float(&w, DBL_MIN / 4), 0); /* subnormal */
  ck_assert_int_eq(fp_write_str(&w, ""), 0);
  ck_assert_int_eq(fp_write_strn(&w, nul_str, sizeof(nul_str)), 0);
  ck_assert_int_eq(fp_write_bytes(&w, nul_bytes, sizeof(nul_bytes)), 0);
  ck_assert_int_eq(fp_write_bytes(&w, NULL, 0), 0);
  ck_assert_int_eq(fp_write_strn(&w, NULL, 0), 0);
  ck_assert_int_eq(fp_writer_error(&w), 0);

  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_peek(&r), FP_NIL);
  ck_assert_int_eq(fp_read_nil(&r), 0);
  ck_assert_int_eq(fp_read_bool(&r, &b), 0);
  ck_assert_int_eq(b, 0);
  ck_assert_int_eq(fp_read_bool(&r, &b), 0);
  ck_assert_int_eq(b, 1);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == INT64_MIN);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == INT64_MAX);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == -1);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 0);
  ck_assert_int_eq(fp_read_float(&r, &d), 0);
  ck_assert_uint_eq(bits_of(d), bits_of(-0.0));
  ck_assert_int_eq(fp_read_float(&r, &d), 0);
  ck_assert_uint_eq(bits_of(d), 0x7ff8000000000abcULL);
  ck_assert_int_eq(fp_read_float(&r, &d), 0);
  ck_assert(isinf(d) && d > 0);
  ck_assert_int_eq(fp_read_float(&r, &d), 0);
  ck_assert(isinf(d) && d < 0);
  ck_assert_int_eq(fp_read_float(&r, &d), 0);
  ck_assert(d == DBL_MIN / 4);
  ck_assert_int_eq(fp_read_str(&r, &s, &n), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_str_eq(s, "");
  ck_assert_int_eq(fp_read_str(&r, &s, &n), 0);
  ck_assert_uint_eq(n, sizeof(nul_str));
  ck_assert_mem_eq(s, nul_str, n);
  ck_assert_int_eq(s[n], 0); /* terminated view */
  ck_assert_int_eq(fp_read_bytes(&r, &p, &n), 0);
  ck_assert_uint_eq(n, sizeof(nul_bytes));
  ck_assert_mem_eq(p, nul_bytes, n);
  ck_assert_int_eq(fp_read_bytes(&r, &p, &n), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(fp_read_str(&r, &s, NULL), 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  ck_assert_int_eq(fp_read_peek(&r), FP_EOF);
  ck_assert_int_eq(fp_read_nil(&r), FP_EOF);
  fp_writer_free(&w);
}
END_TEST

START_TEST(write_produces_documented_bytes) {
  /* The hex dumps of docs/codec.md. */
  static const unsigned char want[] = {
      0x06, 0x03, 0x00, 0x00, 0x00,                         /* list of 3 */
      0x02, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* int 7 */
      0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x40, /* float 2.5 */
      0x04, 0x02, 0x00, 0x00, 0x00, 'h',  'i',  0x00,       /* str "hi" */
      0x01, 0x01,                                           /* true */
      0x00,                                                 /* nil */
      0x05, 0x02, 0x00, 0x00, 0x00, 0xde, 0xad,             /* bytes */
      0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* int -1 */
  };
  fp_writer w;
  fp_writer_init(&w);
  fp_write_list_begin(&w);
  fp_write_int(&w, 7);
  fp_write_float(&w, 2.5);
  fp_write_str(&w, "hi");
  fp_write_list_end(&w);
  fp_write_bool(&w, 1);
  fp_write_nil(&w);
  fp_write_bytes(&w, "\xde\xad", 2);
  ck_assert_int_eq(fp_write_int(&w, -1), 0);
  assert_bytes(&w, want, sizeof(want));
  fp_writer_free(&w);
}
END_TEST

START_TEST(write_read_roundtrip_16mib_bytes) {
  size_t n = fp_test_under_valgrind() ? (size_t)1 << 20 : (size_t)16 << 20;
  unsigned char *src = malloc(n);
  fp_writer w;
  fp_reader r;
  void *dst;
  const void *p;
  size_t got;

  ck_assert_ptr_nonnull(src);
  for (size_t i = 0; i < n; i++)
    src[i] = (unsigned char)(i * 131 + (i >> 12));
  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_bytes(&w, src, n), 0);
  ck_assert_int_eq(fp_write_bytes_begin(&w, n, &dst), 0);
  memcpy(dst, src, n);
  fp_reader_init(&r, w.data, w.len);
  for (int k = 0; k < 2; k++) {
    ck_assert_int_eq(fp_read_bytes(&r, &p, &got), 0);
    ck_assert_uint_eq(got, n);
    ck_assert(memcmp(p, src, n) == 0);
  }
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_writer_free(&w);
  free(src);
}
END_TEST

START_TEST(list_roundtrip_nested_and_returns_to_parent) {
  fp_writer w;
  fp_reader r;
  uint32_t c;
  int64_t i;

  /* [1, [], [2, [3]]] 4 */
  fp_writer_init(&w);
  fp_write_list_begin(&w);
  fp_write_int(&w, 1);
  fp_write_list_begin(&w);
  fp_write_list_end(&w);
  fp_write_list_begin(&w);
  fp_write_int(&w, 2);
  fp_write_list_begin(&w);
  fp_write_int(&w, 3);
  fp_write_list_end(&w);
  fp_write_list_end(&w);
  fp_write_list_end(&w);
  fp_write_int(&w, 4);
  ck_assert_int_eq(fp_writer_error(&w), 0);
  ck_assert_int_eq(w.depth, 0);

  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_uint_eq(c, 3);
  ck_assert_int_eq(r.depth, 1);
  ck_assert_int_eq(fp_reader_at_end(&r), 0);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 1);
  ck_assert_int_eq(fp_read_list(&r, &c), 0); /* empty: not entered */
  ck_assert_uint_eq(c, 0);
  ck_assert_int_eq(r.depth, 1);
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_uint_eq(c, 2);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 2);
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_uint_eq(c, 1);
  ck_assert_int_eq(r.depth, 3);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 3);
  /* The last item closed three lists at once. */
  ck_assert_int_eq(r.depth, 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 0);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 4);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  ck_assert_int_eq(fp_read_list(&r, &c), FP_EOF);
  fp_writer_free(&w);
}
END_TEST

START_TEST(list_nesting_at_depth_limit_roundtrips) {
  fp_writer w;
  fp_reader r;
  uint32_t c;
  int64_t i;
  size_t count;

  fp_writer_init(&w);
  for (int k = 0; k < FP_MAX_DEPTH; k++)
    ck_assert_int_eq(fp_write_list_begin(&w), 0);
  ck_assert_int_eq(fp_write_int(&w, 99), 0);
  for (int k = 0; k < FP_MAX_DEPTH; k++)
    ck_assert_int_eq(fp_write_list_end(&w), 0);
  ck_assert_int_eq(fp_values_count(w.data, w.len, &count), 0);
  ck_assert_uint_eq(count, 1);

  fp_reader_init(&r, w.data, w.len);
  for (int k = 0; k < FP_MAX_DEPTH; k++) {
    ck_assert_int_eq(fp_read_list(&r, &c), 0);
    ck_assert_uint_eq(c, 1);
  }
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 99);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_skip(&r), 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_writer_free(&w);
}
END_TEST

START_TEST(write_list_begin_past_depth_limit_fails_edepth) {
  fp_writer w;
  size_t len;

  fp_writer_init(&w);
  for (int k = 0; k < FP_MAX_DEPTH; k++)
    ck_assert_int_eq(fp_write_list_begin(&w), 0);
  len = w.len;
  ck_assert_int_eq(fp_write_list_begin(&w), FP_EDEPTH);
  ck_assert_uint_eq(w.len, len);
  ck_assert_int_eq(fp_writer_error(&w), FP_EDEPTH);
  ck_assert_int_eq(fp_write_nil(&w), FP_EDEPTH); /* sticky */
  fp_writer_free(&w);
}
END_TEST

START_TEST(read_list_past_depth_limit_fails_edepth) {
  /* 33 nested one-item lists around a nil, built by hand. */
  unsigned char buf[(FP_MAX_DEPTH + 1) * 5 + 1];
  fp_reader r, snap;
  uint32_t c;
  size_t count = 77;

  for (int k = 0; k <= FP_MAX_DEPTH; k++)
    memcpy(buf + k * 5, "\x06\x01\x00\x00\x00", 5);
  buf[sizeof(buf) - 1] = FP_NIL;
  ck_assert_int_eq(fp_values_count(buf, sizeof(buf), &count), FP_EDEPTH);
  ck_assert_uint_eq(count, 77);
  fp_reader_init(&r, buf, sizeof(buf));
  ck_assert_int_eq(fp_read_skip(&r), FP_EDEPTH);
  ck_assert_uint_eq(r.pos, 0);
  for (int k = 0; k < FP_MAX_DEPTH; k++)
    ck_assert_int_eq(fp_read_list(&r, &c), 0);
  snap = r;
  ck_assert_int_eq(fp_read_list(&r, &c), FP_EDEPTH);
  ck_assert_mem_eq(&r, &snap, sizeof(r));
  /* Also when the too-deep list is empty. */
  buf[sizeof(buf) - 5] = 0; /* the innermost list's count */
  ck_assert_int_eq(fp_values_count(buf, sizeof(buf) - 1, NULL), FP_EDEPTH);
}
END_TEST

/* Reads the next value of the current level whatever its type (entering
 * lists). Returns the read's result. */
static int read_any(fp_reader *r) {
  int t = fp_read_peek(r);
  uint32_t c;

  switch (t) {
  case FP_NIL:
    return fp_read_nil(r);
  case FP_BOOL:
    return fp_read_bool(r, NULL);
  case FP_INT:
    return fp_read_int(r, NULL);
  case FP_FLOAT:
    return fp_read_float(r, NULL);
  case FP_STR:
    return fp_read_str(r, NULL, NULL);
  case FP_BYTES:
    return fp_read_bytes(r, NULL, NULL);
  case FP_LIST:
    return fp_read_list(r, &c);
  default:
    return t;
  }
}

/* Writes a message of every type, several top-level values, recording the
 * offset at which each top-level value ends. */
static size_t build_message(fp_writer *w, size_t *ends) {
  size_t n = 0;
  fp_write_int(w, -5);
  ends[n++] = w->len;
  fp_write_list_begin(w);
  fp_write_nil(w);
  fp_write_bool(w, 1);
  fp_write_float(w, 3.25);
  fp_write_str(w, "hello");
  fp_write_list_begin(w);
  fp_write_bytes(w, "\0\1\2", 3);
  fp_write_list_begin(w);
  fp_write_list_end(w);
  fp_write_list_end(w);
  fp_write_int(w, INT64_MIN);
  fp_write_list_end(w);
  ends[n++] = w->len;
  fp_write_str(w, "tail");
  ends[n++] = w->len;
  ck_assert_int_eq(fp_writer_error(w), 0);
  return n;
}

START_TEST(truncated_message_fails_at_every_offset_without_moving) {
  fp_writer w;
  size_t ends[8], nends, count;

  fp_writer_init(&w);
  nends = build_message(&w, ends);
  for (size_t k = 0; k <= w.len; k++) {
    unsigned char *copy = malloc(k ? k : 1); /* exact size: ASan sees */
    int boundary = k == 0, rc = 0;
    size_t values = 0;
    fp_reader r, snap;

    memcpy(copy, w.data, k);
    for (size_t e = 0; e < nends; e++)
      if (ends[e] == k) {
        boundary = 1;
        values = e + 1;
      }
    rc = fp_values_count(copy, k, &count);
    if (boundary) {
      ck_assert_int_eq(rc, 0);
      ck_assert_uint_eq(count, values);
    } else {
      ck_assert_int_eq(rc, FP_EPROTO);
    }

    /* Walk value by value: the walk ends at FP_EOF exactly at a boundary;
     * elsewhere some read fails with FP_EPROTO and leaves r as it was. */
    fp_reader_init(&r, copy, k);
    for (;;) {
      snap = r;
      rc = read_any(&r);
      if (rc != 0)
        break;
    }
    ck_assert_mem_eq(&r, &snap, sizeof(r));
    ck_assert_int_eq(rc, boundary ? FP_EOF : FP_EPROTO);

    /* Skipping value by value behaves the same. */
    fp_reader_init(&r, copy, k);
    while ((rc = fp_read_skip(&r)) == 0)
      ;
    ck_assert_int_eq(rc, boundary ? FP_EOF : FP_EPROTO);
    free(copy);
  }
  fp_writer_free(&w);
}
END_TEST

/* Asserts that buf fails validation and skipping with FP_EPROTO, and that
 * a value-by-value walk fails with FP_EPROTO (entering a list only checks
 * its header, so the walk may get some way in first) without moving the
 * reader at the failing read. */
static void assert_corrupt(const void *buf, size_t len) {
  fp_reader r, snap;
  int rc;
  ck_assert_int_eq(fp_values_count(buf, len, NULL), FP_EPROTO);
  fp_reader_init(&r, buf, len);
  ck_assert_int_eq(fp_read_skip(&r), FP_EPROTO);
  ck_assert_uint_eq(r.pos, 0);
  do {
    snap = r;
  } while ((rc = read_any(&r)) == 0);
  ck_assert_int_eq(rc, FP_EPROTO);
  ck_assert_mem_eq(&r, &snap, sizeof(r));
}

START_TEST(corrupt_fields_fail_eproto) {
  assert_corrupt("\x07", 1);                             /* unknown tag */
  assert_corrupt("\xff", 1);                             /* unknown tag */
  assert_corrupt("\x01\x02", 2);                         /* bool 2 */
  assert_corrupt("\x01\xff", 2);                         /* bool 255 */
  assert_corrupt("\x04\x02\x00\x00\x00hiX", 8);          /* no NUL */
  assert_corrupt("\x04\x03\x00\x00\x00hi\x00", 8);       /* str too long */
  assert_corrupt("\x04\xff\xff\xff\xff", 5);             /* str 4 GiB */
  assert_corrupt("\x05\x03\x00\x00\x00hi", 7);           /* bytes too long */
  assert_corrupt("\x05\xff\xff\xff\xff", 5);             /* bytes 4 GiB */
  assert_corrupt("\x06\x02\x00\x00\x00\x00", 6);         /* count > bytes */
  assert_corrupt("\x06\xff\xff\xff\xff\x00", 6);         /* count 4 G */
  assert_corrupt("\x06\x02\x00\x00\x00\x00\x07", 7);     /* bad tag inside */
  assert_corrupt("\x06\x01\x00\x00\x00\x01\x05", 7);     /* bad bool inside */
  assert_corrupt("\x02\x01\x02\x03\x04\x05\x06", 7);     /* short int */
  assert_corrupt("\x03\x01\x02\x03\x04\x05\x06\x07", 8); /* short float */
  fp_reader r;
  fp_reader_init(&r, "\x09", 1);
  ck_assert_int_eq(fp_read_peek(&r), FP_EPROTO);
}
END_TEST

START_TEST(read_list_eproto_when_items_missing_at_buffer_end) {
  /* The count (2) fits the bytes left (2) but the first item takes both:
   * the walk reaches the end of the buffer inside the list. */
  static const unsigned char buf[] = {0x06, 0x02, 0, 0, 0, 0x01, 0x01};
  fp_reader r;
  uint32_t c;
  fp_reader_init(&r, buf, sizeof(buf));
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_int_eq(fp_read_bool(&r, NULL), 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 0);
  ck_assert_int_eq(fp_read_peek(&r), FP_EPROTO);
  ck_assert_int_eq(fp_read_nil(&r), FP_EPROTO);
}
END_TEST

START_TEST(wrong_type_read_fails_etype_without_moving) {
  fp_writer w;
  fp_reader r;
  uint32_t c;

  fp_writer_init(&w);
  fp_write_nil(&w);
  fp_write_bool(&w, 1);
  fp_write_int(&w, 1);
  fp_write_float(&w, 1);
  fp_write_str(&w, "s");
  fp_write_bytes(&w, "b", 1);
  fp_write_list_begin(&w);
  fp_write_list_end(&w);
  fp_reader_init(&r, w.data, w.len);
  for (int t = FP_NIL; t <= FP_LIST; t++) {
    size_t pos = r.pos;
    ck_assert_int_eq(fp_read_peek(&r), t);
    ck_assert_int_eq(t == FP_NIL ? 0 : fp_read_nil(&r),
                     t == FP_NIL ? 0 : FP_ETYPE);
    if (t != FP_BOOL)
      ck_assert_int_eq(fp_read_bool(&r, NULL), FP_ETYPE);
    if (t != FP_INT)
      ck_assert_int_eq(fp_read_int(&r, NULL), FP_ETYPE);
    if (t != FP_FLOAT)
      ck_assert_int_eq(fp_read_float(&r, NULL), FP_ETYPE);
    if (t != FP_STR)
      ck_assert_int_eq(fp_read_str(&r, NULL, NULL), FP_ETYPE);
    if (t != FP_BYTES)
      ck_assert_int_eq(fp_read_bytes(&r, NULL, NULL), FP_ETYPE);
    if (t != FP_LIST)
      ck_assert_int_eq(fp_read_list(&r, &c), FP_ETYPE);
    ck_assert_uint_eq(r.pos, pos);
    ck_assert_int_eq(read_any(&r), 0);
  }
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_writer_free(&w);
}
END_TEST

START_TEST(write_errors_are_sticky_and_write_nothing) {
  fp_writer w;
  size_t len;

  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_int(&w, 1), 0);
  len = w.len;
  ck_assert_int_eq(fp_write_str(&w, NULL), FP_EINVAL);
  ck_assert_uint_eq(w.len, len);
  ck_assert_int_eq(fp_write_int(&w, 2), FP_EINVAL);
  ck_assert_int_eq(fp_write_list_begin(&w), FP_EINVAL);
  ck_assert_int_eq(fp_writer_append(&w, "x", 1), FP_EINVAL);
  ck_assert_int_eq(fp_writer_reserve(&w, 10), FP_EINVAL);
  ck_assert_uint_eq(w.len, len);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_writer_error(&w), 0);
  ck_assert_uint_eq(w.len, 0);
  ck_assert_int_eq(fp_write_list_end(&w), FP_EINVAL); /* no open list */
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_strn(&w, NULL, 3), FP_EINVAL);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_bytes(&w, NULL, 3), FP_EINVAL);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_bytes_begin(&w, 3, NULL), FP_EINVAL);
  fp_writer_free(&w);
  ck_assert_int_eq(fp_write_nil(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_writer_error(NULL), FP_EINVAL);
  fp_writer_free(NULL);
}
END_TEST

START_TEST(write_length_above_u32_fails_emsgsize) {
  fp_writer w;
  void *dst = &w;
  size_t huge = (size_t)UINT32_MAX + 1;

  if (sizeof(size_t) <= 4)
    return;
  fp_writer_init(&w);
  /* The length is checked before the source is touched. */
  ck_assert_int_eq(fp_write_strn(&w, "x", huge), FP_EMSGSIZE);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_bytes(&w, "x", huge), FP_EMSGSIZE);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_bytes_begin(&w, huge, &dst), FP_EMSGSIZE);
  ck_assert_ptr_null(dst);
  ck_assert_uint_eq(w.len, 0);
  fp_writer_free(&w);
}
END_TEST

START_TEST(writer_append_and_reserve_do_not_count_items) {
  fp_writer w;
  fp_reader r;
  uint32_t c;

  fp_writer_init(&w);
  ck_assert_int_eq(fp_writer_reserve(&w, 1000), 0);
  ck_assert_uint_ge(w.cap, 1000);
  ck_assert_uint_eq(w.len, 0);
  fp_write_list_begin(&w);
  ck_assert_int_eq(fp_writer_append(&w, "\x00", 1), 0); /* a raw nil */
  ck_assert_int_eq(fp_writer_append(&w, NULL, 0), 0);
  fp_write_list_end(&w);
  ck_assert_uint_eq(w.len, 6);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &c), 0); /* count 0, raw byte after */
  ck_assert_uint_eq(c, 0);
  fp_writer_free(&w);
}
END_TEST

START_TEST(write_raw_appends_one_valid_value) {
  fp_writer w, v;
  fp_reader r;
  uint32_t c;
  int64_t i;

  fp_writer_init(&w);
  fp_writer_init(&v);
  fp_write_list_begin(&v);
  fp_write_int(&v, 5);
  fp_write_list_end(&v);

  fp_write_list_begin(&w);
  ck_assert_int_eq(fp_write_raw(&w, v.data, v.len), 0);
  ck_assert_int_eq(fp_write_raw(&w, "\x02\x06\0\0\0\0\0\0\0", 9), 0);
  fp_write_list_end(&w);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_uint_eq(c, 2); /* each raw value counted once */
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 5);
  ck_assert_int_eq(fp_read_int(&r, &i), 0);
  ck_assert(i == 6);

  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_raw(&w, "\x00\x00", 2), FP_EPROTO); /* two */
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_raw(&w, v.data, v.len - 1), FP_EPROTO);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_raw(&w, "", 0), FP_EPROTO);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_write_raw(&w, "\x08", 1), FP_EPROTO);
  ck_assert_uint_eq(w.len, 0);
  /* A list that fits alone but not inside FP_MAX_DEPTH open lists. */
  fp_writer_reset(&w);
  for (int k = 0; k < FP_MAX_DEPTH; k++)
    fp_write_list_begin(&w);
  ck_assert_int_eq(fp_write_raw(&w, "\x00", 1), 0);
  ck_assert_int_eq(fp_write_raw(&w, v.data, v.len), FP_EDEPTH);
  fp_writer_free(&w);
  fp_writer_free(&v);
}
END_TEST

START_TEST(read_span_and_copy_value_forward_exact_bytes) {
  fp_writer w, out;
  fp_reader r;
  size_t ends[8];
  const void *start;
  size_t len, prev = 0;

  fp_writer_init(&w);
  fp_writer_init(&out);
  size_t n = build_message(&w, ends);
  fp_reader_init(&r, w.data, w.len);
  for (size_t k = 0; k < n; k++) {
    ck_assert_int_eq(fp_read_span(&r, &start, &len), 0);
    ck_assert_ptr_eq(start, w.data + prev);
    ck_assert_uint_eq(len, ends[k] - prev);
    prev = ends[k];
  }
  ck_assert_int_eq(fp_read_span(&r, &start, &len), FP_EOF);

  fp_reader_init(&r, w.data, w.len);
  while (fp_copy_value(&out, &r) == 0)
    ;
  assert_bytes(&out, w.data, w.len);

  /* A writer in error: the reader does not move. */
  fp_writer_reset(&out);
  fp_write_list_end(&out);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_copy_value(&out, &r), FP_EINVAL);
  ck_assert_uint_eq(r.pos, 0);
  fp_writer_free(&w);
  fp_writer_free(&out);
}
END_TEST

START_TEST(values_count_counts_top_level_values) {
  fp_writer w;
  size_t ends[8], count = 99;

  ck_assert_int_eq(fp_values_count(NULL, 0, &count), 0);
  ck_assert_uint_eq(count, 0);
  ck_assert_int_eq(fp_values_count(NULL, 3, &count), FP_EINVAL);
  fp_writer_init(&w);
  ck_assert_uint_eq(build_message(&w, ends), 3);
  ck_assert_int_eq(fp_values_count(w.data, w.len, &count), 0);
  ck_assert_uint_eq(count, 3);
  fp_writer_free(&w);
}
END_TEST

START_TEST(list_counts_items_of_every_kind) {
  fp_writer w;
  fp_reader r;
  uint32_t c;
  void *dst;

  fp_writer_init(&w);
  fp_write_list_begin(&w);
  fp_write_nil(&w);
  fp_write_bytes_begin(&w, 2, &dst);
  memcpy(dst, "ab", 2);
  fp_write_raw(&w, "\x01\x00", 2);
  fp_write_list_begin(&w);
  fp_write_int(&w, 1);
  fp_write_int(&w, 2);
  fp_write_list_end(&w);
  fp_write_str(&w, "z");
  fp_write_list_end(&w);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  ck_assert_uint_eq(c, 5);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_skip(&r), 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_writer_free(&w);
}
END_TEST

/* A span read back from the writer's own buffer may be written into it
 * again: the writer grows (and moves) its buffer before it copies. */
START_TEST(writes_from_the_writers_own_buffer) {
  fp_writer w;
  fp_reader r;
  char text[41];

  memset(text, 't', 40);
  text[40] = 0;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_str(&w, text), 0);
  size_t vsz = w.len; /* one encoded string */
  for (int i = 0; i < 12; i++) { /* doubles each round: many moves */
    size_t len = w.len;
    /* A reader borrows its buffer, which moves as w grows: one reader
     * per copy, over the value's bytes in w as they are now. */
    for (size_t off = 0; off < len; off += vsz) {
      fp_reader_init(&r, w.data + off, vsz);
      ck_assert_int_eq(fp_copy_value(&w, &r), 0);
    }
    ck_assert_uint_eq(w.len, 2 * len);
  }
  ck_assert_int_eq(fp_write_bytes(&w, w.data + 5, 40), 0);
  ck_assert_int_eq(memcmp(w.data + w.len - 40, text, 40), 0);
  ck_assert_int_eq(fp_write_strn(&w, (const char *)w.data + 5, 40), 0);
  ck_assert_int_eq(memcmp(w.data + w.len - 41, text, 40), 0);
  fp_reader_init(&r, w.data, w.len);
  const char *s;
  size_t n;
  long count = 0;
  while (!fp_reader_at_end(&r)) {
    if (fp_read_str(&r, &s, &n) == 0) {
      ck_assert_uint_eq(n, 40);
      ck_assert_int_eq(memcmp(s, text, 40), 0);
    } else {
      const void *b;
      ck_assert_int_eq(fp_read_bytes(&r, &b, &n), 0);
      ck_assert_uint_eq(n, 40);
    }
    count++;
  }
  ck_assert_int_eq(count, (1 << 12) + 2);
  fp_writer_free(&w);
}
END_TEST

/* A reader over all of w's bytes copies them into w one by one: each
 * copy may move w's buffer, and the reader moves with it (it kept the
 * old address, freed, before). */
START_TEST(copy_value_reader_over_the_writers_own_bytes) {
  fp_writer w;
  fp_reader r;
  int64_t v;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_str(&w, "abcdefghijklmnopqrstuvwxyz0123456789"), 0);
  size_t str_len = w.len;
  int n = 0;
  while (w.cap - w.len >= str_len) /* until the copy cannot fit */
    ck_assert_int_eq(fp_write_int(&w, n++), 0);
  size_t len = w.len;
  fp_reader_init(&r, w.data, len);
  ck_assert_int_eq(fp_copy_value(&w, &r), 0); /* the string: w grows */
  ck_assert(r.data >= w.data && r.data < w.data + w.len); /* r moved along */
  for (int i = 0; i < n; i++) {
    ck_assert_int_eq(fp_read_int(&r, &v), 0);
    ck_assert_int_eq(v, i);
  }
  ck_assert(fp_reader_at_end(&r));
  ck_assert_uint_gt(w.len, len);
  fp_writer_free(&w);
}
END_TEST

/* A writer's first error stays: bytes_begin without a destination on a
 * writer already in error returns that error, not FP_EINVAL. */
START_TEST(bytes_begin_keeps_the_sticky_error) {
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_write_list_end(&w), FP_EINVAL);
  fp_writer_free(&w);
  fp_writer_init(&w);
  ck_assert_int_eq(fp_writer_reserve(&w, SIZE_MAX), FP_ENOMEM);
  ck_assert_int_eq(fp_write_bytes_begin(&w, 4, NULL), FP_ENOMEM);
  ck_assert_int_eq(fp_writer_error(&w), FP_ENOMEM);
  /* ... and *dst is NULL on that failure too, as on every other. */
  void *dst = (void *)1;
  ck_assert_int_eq(fp_write_bytes_begin(&w, 4, &dst), FP_ENOMEM);
  ck_assert_ptr_null(dst);
  fp_writer_free(&w);
}
END_TEST

START_TEST(reader_null_and_empty_inputs) {
  fp_reader r;
  fp_reader_init(&r, NULL, 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  ck_assert_int_eq(fp_read_peek(&r), FP_EOF);
  ck_assert_int_eq(fp_read_skip(&r), FP_EOF);
  ck_assert_int_eq(fp_read_peek(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_read_int(NULL, NULL), FP_EINVAL);
}
END_TEST

Suite *codec_suite(void) {
  Suite *s = suite_create("codec");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, write_read_roundtrip_scalar_edge_values);
  tcase_add_test(tc, write_produces_documented_bytes);
  tcase_add_test(tc, write_read_roundtrip_16mib_bytes);
  tcase_add_test(tc, list_roundtrip_nested_and_returns_to_parent);
  tcase_add_test(tc, list_nesting_at_depth_limit_roundtrips);
  tcase_add_test(tc, write_list_begin_past_depth_limit_fails_edepth);
  tcase_add_test(tc, read_list_past_depth_limit_fails_edepth);
  tcase_add_test(tc, truncated_message_fails_at_every_offset_without_moving);
  tcase_add_test(tc, corrupt_fields_fail_eproto);
  tcase_add_test(tc, read_list_eproto_when_items_missing_at_buffer_end);
  tcase_add_test(tc, wrong_type_read_fails_etype_without_moving);
  tcase_add_test(tc, write_errors_are_sticky_and_write_nothing);
  tcase_add_test(tc, write_length_above_u32_fails_emsgsize);
  tcase_add_test(tc, writer_append_and_reserve_do_not_count_items);
  tcase_add_test(tc, write_raw_appends_one_valid_value);
  tcase_add_test(tc, read_span_and_copy_value_forward_exact_bytes);
  tcase_add_test(tc, values_count_counts_top_level_values);
  tcase_add_test(tc, list_counts_items_of_every_kind);
  tcase_add_test(tc, reader_null_and_empty_inputs);
  tcase_add_test(tc, writes_from_the_writers_own_buffer);
  tcase_add_test(tc, copy_value_reader_over_the_writers_own_bytes);
  tcase_add_test(tc, bytes_begin_keeps_the_sticky_error);
  suite_add_tcase(s, tc);
  return s;
}
