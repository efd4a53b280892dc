/* SPDX-License-Identifier: MIT */
/* fuzz_codec.c - libFuzzer target for the codec and the frame parser.
 *
 * Each input is tried twice: as a frame (fp_frame_parse, then its payload)
 * and as a raw value sequence. Every decoder runs over a heap copy of
 * exactly the input's size, so ASan flags any read past the end. The
 * decoders must agree with each other:
 *   - fp_values_count() is the reference verdict (ok or an error code);
 *   - a generic walk with fp_read_peek()/fp_read_*() re-encodes every value
 *     it reads; it must succeed exactly when the verdict is ok, fail with the
 *     same code otherwise, never move the reader on a failed read, and keep
 *     r->depth equal to its own count of open lists; on success the
 *     re-encoding must equal the input byte for byte (the encoding is
 *     canonical: one byte sequence per value);
 *   - fp_read_skip() and fp_read_span() + fp_write_raw() give the same
 *     verdict, and the spans re-assemble the input;
 *   - fp_unpack() with a few formats either succeeds or leaves the reader
 *     where it was.
 * Any disagreement aborts, which libFuzzer reports as a crash.
 */
#include "forkpool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_codec: check failed at line %d: %s\n", __LINE__,   \
              #cond);                                                          \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* Reads every value of r, re-encoding it into w. Returns 0 at the clean
 * end, or the first read error. */
static int walk(fp_reader *r, fp_writer *w) {
  uint32_t open[FP_MAX_DEPTH];
  int top = 0;

  for (;;) {
    fp_reader snap = *r;
    int t = fp_read_peek(r), rc = 0, b;
    int64_t i;
    double d;
    const char *s;
    const void *p;
    size_t n;
    uint32_t c;

    CHECK(memcmp(&snap, r, sizeof(snap)) == 0); /* peek never moves */
    if (t == FP_EOF) {
      CHECK(top == 0 && r->depth == 0 && r->pos == r->len);
      return 0;
    }
    if (t < 0)
      return t;
    switch (t) {
    case FP_NIL:
      if ((rc = fp_read_nil(r)) == 0)
        fp_write_nil(w);
      break;
    case FP_BOOL:
      if ((rc = fp_read_bool(r, &b)) == 0) {
        CHECK(b == 0 || b == 1);
        fp_write_bool(w, b);
      }
      break;
    case FP_INT:
      if ((rc = fp_read_int(r, &i)) == 0)
        fp_write_int(w, i);
      break;
    case FP_FLOAT:
      if ((rc = fp_read_float(r, &d)) == 0)
        fp_write_float(w, d);
      break;
    case FP_STR:
      if ((rc = fp_read_str(r, &s, &n)) == 0) {
        CHECK(s[n] == '\0');
        fp_write_strn(w, s, n);
      }
      break;
    case FP_BYTES:
      if ((rc = fp_read_bytes(r, &p, &n)) == 0)
        fp_write_bytes(w, p, n);
      break;
    case FP_LIST:
      if ((rc = fp_read_list(r, &c)) == 0) {
        fp_write_list_begin(w);
        if (c > 0) {
          open[top++] = c;
          CHECK(r->depth == top);
          continue;
        }
        fp_write_list_end(w);
      }
      break;
    default:
      CHECK(!"peek returned an unknown type");
    }
    if (rc != 0) {
      CHECK(memcmp(&snap, r, sizeof(snap)) == 0); /* failed: not moved */
      return rc;
    }
    CHECK(fp_writer_error(w) == 0);
    while (top > 0) {
      if (--open[top - 1] != 0)
        break;
      top--;
      fp_write_list_end(w);
    }
    CHECK(r->depth == top);
  }
}

static void try_unpack(const unsigned char *d, size_t n, const char *fmt) {
  fp_reader r;
  int64_t i;
  const char *s;
  const void *p;
  size_t len;
  double f;
  int b, rc;

  fp_reader_init(&r, d, n);
  /* Formats below use at most: ? i d s S b in this order of arguments. */
  if (strcmp(fmt, "? i d") == 0)
    rc = fp_unpack(&r, fmt, &b, &i, &f);
  else if (strcmp(fmt, "[s S b]") == 0)
    rc = fp_unpack(&r, fmt, &s, &s, &len, &p, &len);
  else if (strcmp(fmt, "[i [*] n]") == 0)
    rc = fp_unpack(&r, fmt, &i);
  else
    rc = fp_unpack(&r, fmt);
  if (rc != 0)
    CHECK(r.pos == 0 && r.depth == 0);
  else
    CHECK(r.pos > 0);
}

static void exercise(const unsigned char *d, size_t n) {
  size_t count = 0, k = 0;
  int verdict = fp_values_count(d, n, &count), rc;
  fp_reader r;
  fp_writer w;
  const void *start;
  size_t len;

  CHECK(verdict == 0 || verdict == FP_EPROTO || verdict == FP_EDEPTH);

  fp_writer_init(&w);
  fp_reader_init(&r, d, n);
  rc = walk(&r, &w);
  CHECK(rc == verdict);
  if (rc == 0)
    CHECK(w.len == n && (n == 0 || memcmp(w.data, d, n) == 0));

  fp_reader_init(&r, d, n);
  while ((rc = fp_read_skip(&r)) == 0)
    k++;
  CHECK(verdict == 0 ? rc == FP_EOF && k == count : rc == verdict);

  fp_writer_reset(&w);
  fp_reader_init(&r, d, n);
  while ((rc = fp_read_span(&r, &start, &len)) == 0)
    CHECK(fp_write_raw(&w, start, len) == 0);
  CHECK(verdict == 0 ? rc == FP_EOF : rc == verdict);
  if (verdict == 0)
    CHECK(w.len == n && (n == 0 || memcmp(w.data, d, n) == 0));
  fp_writer_free(&w);

  try_unpack(d, n, "? i d");
  try_unpack(d, n, "[s S b]");
  try_unpack(d, n, "[i [*] n]");
  try_unpack(d, n, "* * *");
  try_unpack(d, n, "[[*]]");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t plen;
  unsigned char *copy = malloc(size ? size : 1);
  int rc;

  if (copy == NULL)
    return 0;
  if (size)
    memcpy(copy, data, size);
  rc = fp_frame_parse(copy, size, 4096, &plen);
  CHECK(rc == 0 || rc == 1 || rc == FP_EMSGSIZE);
  if (rc == 0) {
    unsigned char *payload = malloc(plen ? plen : 1);
    CHECK(plen <= size - 4);
    if (payload != NULL) {
      memcpy(payload, copy + 4, plen);
      exercise(payload, plen);
      free(payload);
    }
  }
  exercise(copy, size);
  free(copy);
  return 0;
}
