/* SPDX-License-Identifier: MIT */
/* codec.c - the value codec: a growable writer and a bounds-checked reader.
 *
 * Every value is one tag byte (its fp_type) followed by a payload whose
 * layout depends on the tag (docs/codec.md has the byte-level description):
 * nil nothing, bool 1 byte, int and float 8 bytes little-endian, str a u32
 * length + bytes + a 0 byte, bytes a u32 length + bytes, list a u32 item
 * count + that many values. Integers are assembled byte by byte, so the
 * format does not depend on the host's endianness or alignment.
 *
 * Writer: an fp__alloc'd buffer that doubles as it grows. An open list
 * remembers the offset of its count field and how many items went into it;
 * fp_write_list_end() back-patches the count. Every encoded write goes
 * through value_begin()/value_commit(), which is the single place that
 * enforces the sticky error and counts list items, so nothing can write
 * without being counted. A failed write leaves w->len untouched.
 *
 * Reader: never trusts the input. value_end() is the one validator: it
 * walks one value iteratively (an explicit stack bounded by FP_MAX_DEPTH,
 * no recursion), checks every length against the bytes that remain with
 * subtractions that cannot overflow (pos <= len always holds), and only
 * then does a caller move the cursor, so a failed read leaves the reader
 * exactly where it was. Invariant of the reader: r->pos <= r->len, and
 * r->remain[0..depth) are the items left in each entered list; a level is
 * popped as soon as its count reaches zero, and a parent whose last item is
 * the list being read keeps remain == 0 until that child is finished.
 */
#include "forkpool.h"
#include "ipc/wire/alloc.h"

#include <string.h>

/* --- little-endian helpers ------------------------------------------ */

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static void put_u64(unsigned char *p, uint64_t v) {
  put_u32(p, (uint32_t)v);
  put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get_u64(const unsigned char *p) {
  return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* --- validation ------------------------------------------------------ */

/* Finds the end of the one value that starts at data[pos] (of len bytes),
 * checking that it is well formed: a known tag, a bool byte of 0 or 1, a
 * string's terminating 0 byte, every length and count within the bytes that
 * remain, and lists nested no deeper than FP_MAX_DEPTH counting `base`
 * enclosing lists. Returns 0 and stores the offset just past the value in
 * *end; FP_EPROTO or FP_EDEPTH otherwise. Requires pos <= len; never reads
 * outside data[0..len). Iterative: stack[i] holds the items still expected
 * by the i-th list opened inside this value. */
static int value_end(const unsigned char *data, size_t len, size_t pos,
                     int base, size_t *end) {
  uint32_t stack[FP_MAX_DEPTH];
  int top = 0;

  for (;;) {
    size_t rem = len - pos; /* pos <= len, so no wrap */
    size_t adv;
    uint32_t n;

    if (rem < 1)
      return FP_EPROTO;
    switch (data[pos]) {
    case FP_NIL:
      adv = 1;
      break;
    case FP_BOOL:
      if (rem < 2 || data[pos + 1] > 1)
        return FP_EPROTO;
      adv = 2;
      break;
    case FP_INT:
    case FP_FLOAT:
      if (rem < 9)
        return FP_EPROTO;
      adv = 9;
      break;
    case FP_STR:
      /* 5 header bytes, n bytes, 1 terminator: n + 1 <= rem - 5. */
      if (rem < 6)
        return FP_EPROTO;
      n = get_u32(data + pos + 1);
      if (n > rem - 6 || data[pos + 5 + n] != 0)
        return FP_EPROTO;
      adv = (size_t)6 + n;
      break;
    case FP_BYTES:
      if (rem < 5)
        return FP_EPROTO;
      n = get_u32(data + pos + 1);
      if (n > rem - 5)
        return FP_EPROTO;
      adv = (size_t)5 + n;
      break;
    case FP_LIST:
      if (rem < 5)
        return FP_EPROTO;
      if (base + top + 1 > FP_MAX_DEPTH)
        return FP_EDEPTH;
      n = get_u32(data + pos + 1);
      /* Each item takes at least one byte: a larger count is a lie. */
      if (n > rem - 5)
        return FP_EPROTO;
      pos += 5;
      if (n > 0) {
        stack[top++] = n;
        continue;
      }
      adv = 0; /* an empty list is complete */
      break;
    default:
      return FP_EPROTO;
    }
    pos += adv;
    /* One value completed: it is an item of the innermost open list; each
     * list it completes is in turn one item of its parent. */
    for (;;) {
      if (top == 0) {
        *end = pos;
        return 0;
      }
      if (--stack[top - 1] != 0)
        break;
      top--;
    }
  }
}

int fp_values_count(const void *data, size_t len, size_t *count) {
  const unsigned char *d = data;
  size_t pos = 0, n = 0, end;
  int rc;

  if (d == NULL && len != 0)
    return FP_EINVAL;
  while (pos < len) {
    rc = value_end(d, len, pos, 0, &end);
    if (rc != 0)
      return rc;
    pos = end;
    n++;
  }
  if (count != NULL)
    *count = n;
  return 0;
}

/* --- writer ---------------------------------------------------------- */

void fp_writer_init(fp_writer *w) {
  if (w != NULL)
    memset(w, 0, sizeof(*w));
}

void fp_writer_free(fp_writer *w) {
  if (w == NULL)
    return;
  fp__free(w->data, w->cap);
  fp_writer_init(w);
}

void fp_writer_reset(fp_writer *w) {
  if (w == NULL)
    return;
  w->len = 0;
  w->err = 0;
  w->depth = 0;
}

int fp_writer_error(const fp_writer *w) {
  return w != NULL ? w->err : FP_EINVAL;
}

/* Records code as the writer's sticky error (unless one is already set)
 * and returns it. */
static int fail(fp_writer *w, int code) {
  if (w->err == 0)
    w->err = code;
  return code;
}

/* Makes room for extra more bytes, doubling the capacity (minimum 64) so
 * that n appends cost O(n) overall. Returns 0 or FP_ENOMEM (sticky). */
static int grow(fp_writer *w, size_t extra) {
  size_t need, cap;
  void *p;

  if (extra <= w->cap - w->len)
    return 0;
  /* No object is larger than PTRDIFF_MAX: asking the allocator anyway
   * only makes sanitizers abort instead of returning NULL. */
  if (extra > PTRDIFF_MAX - w->len)
    return fail(w, FP_ENOMEM);
  need = w->len + extra;
  cap = w->cap != 0 ? w->cap : 64;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  p = fp__realloc(w->data, w->cap, cap);
  if (p == NULL)
    return fail(w, FP_ENOMEM);
  w->data = p;
  w->cap = cap;
  return 0;
}

/* Like grow(), for a write whose source *src may lie in w's own buffer
 * (a span read back from it): growing moves the buffer, so *src is taken
 * as an offset across the move. Returns 0 or FP_ENOMEM (sticky). */
static int grow_from(fp_writer *w, size_t extra, const void **src) {
  uintptr_t s = (uintptr_t)*src, d = (uintptr_t)w->data;
  if (w->data == NULL || s < d || s >= d + w->len)
    return grow(w, extra);
  size_t off = (size_t)(s - d);
  int rc = grow(w, extra);
  *src = w->data + off;
  return rc;
}

int fp_writer_reserve(fp_writer *w, size_t extra) {
  if (w == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  return grow(w, extra);
}

int fp_writer_append(fp_writer *w, const void *raw, size_t n) {
  int rc;

  if (w == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  if (raw == NULL && n != 0)
    return fail(w, FP_EINVAL);
  if ((rc = grow(w, n)) != 0)
    return rc;
  if (n != 0)
    memcpy(w->data + w->len, raw, n);
  w->len += n;
  return 0;
}

/* Prepares to append one encoded value of size bytes: checks the sticky
 * error and that the open list can take one more item, and makes room.
 * Returns where the value goes, or NULL with the error in *rc. Nothing is
 * counted until value_commit(). */
static unsigned char *value_begin(fp_writer *w, size_t size, int *rc) {
  if (w == NULL) {
    *rc = FP_EINVAL;
    return NULL;
  }
  if (w->err != 0) {
    *rc = w->err;
    return NULL;
  }
  if (w->depth > 0 && w->counts[w->depth - 1] == UINT32_MAX) {
    *rc = fail(w, FP_EMSGSIZE);
    return NULL;
  }
  if ((*rc = grow(w, size)) != 0)
    return NULL;
  return w->data + w->len;
}

/* Makes the value prepared by value_begin() part of the output. */
static void value_commit(fp_writer *w, size_t size) {
  w->len += size;
  if (w->depth > 0)
    w->counts[w->depth - 1]++;
}

int fp_write_nil(fp_writer *w) {
  int rc;
  unsigned char *p = value_begin(w, 1, &rc);

  if (p == NULL)
    return rc;
  p[0] = FP_NIL;
  value_commit(w, 1);
  return 0;
}

int fp_write_bool(fp_writer *w, int v) {
  int rc;
  unsigned char *p = value_begin(w, 2, &rc);

  if (p == NULL)
    return rc;
  p[0] = FP_BOOL;
  p[1] = v != 0;
  value_commit(w, 2);
  return 0;
}

int fp_write_int(fp_writer *w, int64_t v) {
  int rc;
  unsigned char *p = value_begin(w, 9, &rc);

  if (p == NULL)
    return rc;
  p[0] = FP_INT;
  put_u64(p + 1, (uint64_t)v); /* two's complement by C's conversion rule */
  value_commit(w, 9);
  return 0;
}

int fp_write_float(fp_writer *w, double v) {
  int rc;
  uint64_t bits;
  unsigned char *p = value_begin(w, 9, &rc);

  if (p == NULL)
    return rc;
  memcpy(&bits, &v, sizeof(bits));
  p[0] = FP_FLOAT;
  put_u64(p + 1, bits);
  value_commit(w, 9);
  return 0;
}

/* Writes the header of a str or bytes value of n bytes (plus the string's
 * terminator) and returns where its n bytes go; the caller fills them and
 * the value is already committed. Returns NULL with the error in *rc. */
static unsigned char *write_sized(fp_writer *w, int tag, const void **src,
                                  size_t n, int *rc) {
  size_t size;
  unsigned char *p;

  if (w == NULL) {
    *rc = FP_EINVAL;
    return NULL;
  }
  if (w->err != 0) {
    *rc = w->err;
    return NULL;
  }
  if (*src == NULL && n != 0) {
    *rc = fail(w, FP_EINVAL);
    return NULL;
  }
  if (n > UINT32_MAX) {
    *rc = fail(w, FP_EMSGSIZE);
    return NULL;
  }
  if (n > SIZE_MAX - 6) { /* only reachable where size_t is 32 bits */
    *rc = fail(w, FP_ENOMEM);
    return NULL;
  }
  size = 5 + n + (tag == FP_STR);
  if (n != 0 && (*rc = grow_from(w, size, src)) != 0)
    return NULL;
  if ((p = value_begin(w, size, rc)) == NULL)
    return NULL;
  p[0] = (unsigned char)tag;
  put_u32(p + 1, (uint32_t)n);
  if (tag == FP_STR)
    p[5 + n] = 0;
  value_commit(w, size);
  return p + 5;
}

int fp_write_strn(fp_writer *w, const char *s, size_t n) {
  int rc;
  const void *src = s; /* moved along if s is in w's own buffer */
  unsigned char *p = write_sized(w, FP_STR, &src, n, &rc);

  if (p == NULL)
    return rc;
  if (n != 0)
    memcpy(p, src, n);
  return 0;
}

int fp_write_str(fp_writer *w, const char *s) {
  if (w == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  if (s == NULL)
    return fail(w, FP_EINVAL);
  return fp_write_strn(w, s, strlen(s));
}

int fp_write_bytes(fp_writer *w, const void *p, size_t n) {
  int rc;
  const void *src = p; /* moved along if p is in w's own buffer */
  unsigned char *dst = write_sized(w, FP_BYTES, &src, n, &rc);

  if (dst == NULL)
    return rc;
  if (n != 0)
    memcpy(dst, src, n);
  return 0;
}

int fp_write_bytes_begin(fp_writer *w, size_t n, void **dst) {
  int rc;
  unsigned char *p;

  if (dst != NULL)
    *dst = NULL; /* on every failure */
  if (w != NULL && w->err != 0)
    return w->err; /* sticky: every later write returns it */
  if (dst == NULL)
    return w != NULL ? fail(w, FP_EINVAL) : FP_EINVAL;
  /* write_sized only checks src for NULL; any non-NULL marker will do. */
  const void *marker = "";
  p = write_sized(w, FP_BYTES, &marker, n, &rc);
  *dst = p;
  return p != NULL ? 0 : rc;
}

int fp_write_list_begin(fp_writer *w) {
  int rc;
  unsigned char *p;

  if (w != NULL && w->err == 0 && w->depth >= FP_MAX_DEPTH)
    return fail(w, FP_EDEPTH);
  if ((p = value_begin(w, 5, &rc)) == NULL)
    return rc;
  p[0] = FP_LIST;
  put_u32(p + 1, 0); /* back-patched by fp_write_list_end() */
  value_commit(w, 5);
  w->open_at[w->depth] = w->len - 4;
  w->counts[w->depth] = 0;
  w->depth++;
  return 0;
}

int fp_write_list_end(fp_writer *w) {
  if (w == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  if (w->depth == 0)
    return fail(w, FP_EINVAL);
  w->depth--;
  put_u32(w->data + w->open_at[w->depth], w->counts[w->depth]);
  return 0;
}

int fp_write_raw(fp_writer *w, const void *enc, size_t n) {
  size_t end;
  int rc;
  unsigned char *p;

  if (w == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  if (enc == NULL && n != 0)
    return fail(w, FP_EINVAL);
  if (n == 0)
    return fail(w, FP_EPROTO);
  rc = value_end(enc, n, 0, w->depth, &end);
  if (rc == 0 && end != n)
    rc = FP_EPROTO; /* trailing bytes: more than one value */
  if (rc != 0)
    return fail(w, rc);
  if ((rc = grow_from(w, n, &enc)) != 0)
    return rc;
  if ((p = value_begin(w, n, &rc)) == NULL)
    return rc;
  memcpy(p, enc, n);
  value_commit(w, n);
  return 0;
}

/* --- reader ---------------------------------------------------------- */

void fp_reader_init(fp_reader *r, const void *data, size_t len) {
  if (r == NULL)
    return;
  memset(r, 0, sizeof(*r));
  r->data = data;
  r->len = data != NULL ? len : 0;
}

int fp_reader_at_end(const fp_reader *r) {
  if (r == NULL)
    return 1;
  if (r->depth > 0)
    return r->remain[r->depth - 1] == 0;
  return r->pos >= r->len;
}

/* Returns the tag of the next value of the current level (checked to be a
 * known type), FP_EOF at the end of the level, FP_EPROTO when the buffer
 * ends while the entered list still expects items or the tag is unknown. */
static int next_tag(const fp_reader *r) {
  if (r == NULL)
    return FP_EINVAL;
  if (fp_reader_at_end(r))
    return FP_EOF;
  if (r->pos >= r->len)
    return FP_EPROTO;
  if (r->data[r->pos] > FP_LIST)
    return FP_EPROTO;
  return r->data[r->pos];
}

int fp_read_peek(fp_reader *r) {
  return next_tag(r);
}

/* Marks one value of the current level as consumed and leaves every list
 * that this completes (see the reader invariant in the file header). */
static void item_done(fp_reader *r) {
  if (r->depth == 0)
    return;
  r->remain[r->depth - 1]--;
  while (r->depth > 0 && r->remain[r->depth - 1] == 0)
    r->depth--;
}

/* Checks that the next value has type want and is well formed; stores the
 * offset past it in *end. Does not move the reader. Not for lists. */
static int begin_read(const fp_reader *r, int want, size_t *end) {
  int t = next_tag(r);

  if (t < 0)
    return t;
  if (t != want)
    return FP_ETYPE;
  return value_end(r->data, r->len, r->pos, r->depth, end);
}

/* Moves the reader past a value that begin_read() accepted. */
static void finish_read(fp_reader *r, size_t end) {
  r->pos = end;
  item_done(r);
}

int fp_read_nil(fp_reader *r) {
  size_t end;
  int rc = begin_read(r, FP_NIL, &end);

  if (rc != 0)
    return rc;
  finish_read(r, end);
  return 0;
}

int fp_read_bool(fp_reader *r, int *v) {
  size_t end;
  int rc = begin_read(r, FP_BOOL, &end);

  if (rc != 0)
    return rc;
  if (v != NULL)
    *v = r->data[r->pos + 1];
  finish_read(r, end);
  return 0;
}

int fp_read_int(fp_reader *r, int64_t *v) {
  size_t end;
  uint64_t u;
  int rc = begin_read(r, FP_INT, &end);

  if (rc != 0)
    return rc;
  u = get_u64(r->data + r->pos + 1);
  /* Two's complement back to signed without implementation-defined
   * conversion: values above INT64_MAX are negative. */
  if (v != NULL)
    *v = u <= INT64_MAX ? (int64_t)u : -(int64_t)(UINT64_MAX - u) - 1;
  finish_read(r, end);
  return 0;
}

int fp_read_float(fp_reader *r, double *v) {
  size_t end;
  uint64_t bits;
  int rc = begin_read(r, FP_FLOAT, &end);

  if (rc != 0)
    return rc;
  bits = get_u64(r->data + r->pos + 1);
  if (v != NULL)
    memcpy(v, &bits, sizeof(*v));
  finish_read(r, end);
  return 0;
}

int fp_read_str(fp_reader *r, const char **s, size_t *len) {
  size_t end;
  int rc = begin_read(r, FP_STR, &end);

  if (rc != 0)
    return rc;
  if (s != NULL)
    *s = (const char *)r->data + r->pos + 5;
  if (len != NULL)
    *len = get_u32(r->data + r->pos + 1);
  finish_read(r, end);
  return 0;
}

int fp_read_bytes(fp_reader *r, const void **p, size_t *len) {
  size_t end;
  int rc = begin_read(r, FP_BYTES, &end);

  if (rc != 0)
    return rc;
  if (p != NULL)
    *p = r->data + r->pos + 5;
  if (len != NULL)
    *len = get_u32(r->data + r->pos + 1);
  finish_read(r, end);
  return 0;
}

int fp_read_list(fp_reader *r, uint32_t *count) {
  uint32_t n;
  int t = next_tag(r);

  if (t < 0)
    return t;
  if (t != FP_LIST)
    return FP_ETYPE;
  if (r->len - r->pos < 5)
    return FP_EPROTO;
  if (r->depth >= FP_MAX_DEPTH)
    return FP_EDEPTH;
  n = get_u32(r->data + r->pos + 1);
  if (n > r->len - r->pos - 5)
    return FP_EPROTO; /* each item takes at least one byte */
  r->pos += 5;
  if (count != NULL)
    *count = n;
  if (n == 0) {
    item_done(r); /* never entered: nothing to leave later */
    return 0;
  }
  /* The list is one item of its parent; the parent may reach zero here but
   * stays on the stack until this child is finished. */
  if (r->depth > 0)
    r->remain[r->depth - 1]--;
  r->remain[r->depth++] = n;
  return 0;
}

int fp_read_span(fp_reader *r, const void **start, size_t *len) {
  size_t end;
  int rc = next_tag(r);

  if (rc < 0)
    return rc;
  rc = value_end(r->data, r->len, r->pos, r->depth, &end);
  if (rc != 0)
    return rc;
  if (start != NULL)
    *start = r->data + r->pos;
  if (len != NULL)
    *len = end - r->pos;
  finish_read(r, end);
  return 0;
}

int fp_read_skip(fp_reader *r) {
  return fp_read_span(r, NULL, NULL);
}

int fp_copy_value(fp_writer *w, fp_reader *r) {
  fp_reader probe;
  const void *start;
  size_t len;
  int rc;

  if (w == NULL || r == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  /* Find the span on a copy, so the reader moves only if the write works. */
  probe = *r;
  rc = fp_read_span(&probe, &start, &len);
  if (rc != 0)
    return rc;
  /* A reader of w's own bytes (copying a value w already holds): the
   * write may move w's buffer, and the reader with it. */
  const unsigned char *old = w->data;
  int own = old != NULL && probe.data >= old && probe.data < old + w->len;
  rc = fp_write_raw(w, start, len);
  if (rc != 0)
    return rc;
  if (own)
    probe.data = w->data + (probe.data - old);
  *r = probe;
  return 0;
}
