/* SPDX-License-Identifier: MIT */
/* pack.c - printf-style pack/unpack over the codec's writer and reader.
 *
 * A format is a string of letters, one per value (n ? i d s S b), plus
 * '[' ']' for lists and, in unpack only, '*' to skip a value; whitespace is
 * ignored. The format is checked in full before anything happens, so a
 * malformed one (FP_EINVAL) never leaves half a message behind.
 *
 * Pack writes through the fp_write_* calls and, on failure, rolls the
 * writer back to its length, depth and item count at the call, so a failed
 * fp_pack() adds nothing (the writer's error stays sticky).
 *
 * Unpack is all or nothing in a stronger sense: it runs twice over the
 * same va_list (va_copy). The first pass reads from a copy of the reader
 * and stores nothing; only if it succeeds does the second pass read from
 * the caller's reader and store the outputs. The second pass sees the same
 * bytes and the same format, so it cannot fail. Unpack also keeps its own
 * count of the items left in each list it entered (left[]), which is what
 * makes ']' able to say "this list has more items" and stops a letter from
 * silently reading past the end of a list into its parent.
 */
#include "forkpool.h"

#include <string.h>

/* Returns 0 when fmt is a well-formed format (for unpack when unpack is
 * nonzero), FP_EINVAL otherwise. */
static int check_format(const char *fmt, int unpack) {
  int depth = 0;

  if (fmt == NULL)
    return FP_EINVAL;
  for (; *fmt != '\0'; fmt++) {
    switch (*fmt) {
    case ' ':
    case '\t':
    case '\n':
    case '\r':
    case 'n':
    case '?':
    case 'i':
    case 'd':
    case 's':
    case 'S':
    case 'b':
      break;
    case '*':
      if (!unpack)
        return FP_EINVAL;
      break;
    case '[':
      if (++depth > FP_MAX_DEPTH)
        return FP_EINVAL;
      break;
    case ']':
      if (--depth < 0)
        return FP_EINVAL;
      break;
    default:
      return FP_EINVAL;
    }
  }
  return depth == 0 ? 0 : FP_EINVAL;
}

int fp_vpack(fp_writer *w, const char *fmt, va_list ap) {
  size_t saved_len;
  int saved_depth, rc = 0;
  uint32_t saved_count;

  if (w == NULL)
    return FP_EINVAL;
  if (w->err != 0)
    return w->err;
  if (check_format(fmt, 0) != 0) {
    w->err = FP_EINVAL;
    return FP_EINVAL;
  }
  /* A balanced format only changes the count of the list open at the call
   * (deeper slots belong to lists it opens itself). */
  saved_len = w->len;
  saved_depth = w->depth;
  saved_count = w->depth > 0 ? w->counts[w->depth - 1] : 0;

  for (; *fmt != '\0' && rc == 0; fmt++) {
    switch (*fmt) {
    case 'n':
      rc = fp_write_nil(w);
      break;
    case '?':
      rc = fp_write_bool(w, va_arg(ap, int));
      break;
    case 'i':
      rc = fp_write_int(w, va_arg(ap, int64_t));
      break;
    case 'd':
      rc = fp_write_float(w, va_arg(ap, double));
      break;
    case 's':
      rc = fp_write_str(w, va_arg(ap, const char *));
      break;
    case 'S': {
      const char *s = va_arg(ap, const char *);
      size_t n = va_arg(ap, size_t);
      rc = fp_write_strn(w, s, n);
      break;
    }
    case 'b': {
      const void *p = va_arg(ap, const void *);
      size_t n = va_arg(ap, size_t);
      rc = fp_write_bytes(w, p, n);
      break;
    }
    case '[':
      rc = fp_write_list_begin(w);
      break;
    case ']':
      rc = fp_write_list_end(w);
      break;
    default: /* whitespace */
      break;
    }
  }
  if (rc != 0) {
    w->len = saved_len;
    w->depth = saved_depth;
    if (saved_depth > 0)
      w->counts[saved_depth - 1] = saved_count;
  }
  return rc;
}

int fp_pack(fp_writer *w, const char *fmt, ...) {
  va_list ap;
  int rc;

  va_start(ap, fmt);
  rc = fp_vpack(w, fmt, ap);
  va_end(ap);
  return rc;
}

/* Reads a str ('S') or bytes ('b') value and, when store is nonzero,
 * stores its pointer and length through the next two output pointers
 * (NULL ones are skipped). Each letter takes its own pointer type from *ap:
 * reading a const char ** as a const void ** would not be portable. Returns
 * 0 or the read's error. */
static int read_span(fp_reader *r, char c, va_list *ap, int store) {
  size_t n;
  int rc;

  if (c == 'S') {
    const char **out = va_arg(*ap, const char **), *v;
    size_t *nout = va_arg(*ap, size_t *);
    if ((rc = fp_read_str(r, &v, &n)) == 0 && store && out != NULL)
      *out = v;
    if (rc == 0 && store && nout != NULL)
      *nout = n;
  } else {
    const void **out = va_arg(*ap, const void **), *v;
    size_t *nout = va_arg(*ap, size_t *);
    if ((rc = fp_read_bytes(r, &v, &n)) == 0 && store && out != NULL)
      *out = v;
    if (rc == 0 && store && nout != NULL)
      *nout = n;
  }
  return rc;
}

/* Reads the value named by the letter c (anything but '[' and ']') and,
 * when store is nonzero, stores it through the next output pointer taken
 * from *ap (a NULL pointer is skipped). Returns 0 or the read's error. */
static int read_value(fp_reader *r, char c, va_list *ap, int store) {
  int rc;

  switch (c) {
  case 'n':
    return fp_read_nil(r);
  case '*':
    return fp_read_skip(r);
  case 'S':
  case 'b':
    return read_span(r, c, ap, store);
  case '?': {
    int *out = va_arg(*ap, int *), v;
    if ((rc = fp_read_bool(r, &v)) == 0 && store && out != NULL)
      *out = v;
    return rc;
  }
  case 'i': {
    int64_t *out = va_arg(*ap, int64_t *), v;
    if ((rc = fp_read_int(r, &v)) == 0 && store && out != NULL)
      *out = v;
    return rc;
  }
  case 'd': {
    double *out = va_arg(*ap, double *), v;
    if ((rc = fp_read_float(r, &v)) == 0 && store && out != NULL)
      *out = v;
    return rc;
  }
  case 's': {
    const char **out = va_arg(*ap, const char **), *v;
    if ((rc = fp_read_str(r, &v, NULL)) == 0 && store && out != NULL)
      *out = v;
    return rc;
  }
  default:
    return FP_EINVAL; /* unreachable: the format was checked */
  }
}

/* One unpack pass over a well-formed format. Reads from r and, when store
 * is nonzero, stores into the output pointers taken from *ap (NULL ones
 * are skipped). Returns 0 or the first error; r is left wherever the error
 * happened. */
static int unpack_pass(fp_reader *r, const char *fmt, va_list *ap, int store) {
  /* left[k]: items left in the k-th list entered by this format; level 0
   * is the caller's level, bounded only when the reader is inside a list.
   * The format was checked, so lvl stays within 0..FP_MAX_DEPTH. */
  uint32_t left[FP_MAX_DEPTH + 1];
  int lvl = 0, bounded0 = r->depth > 0, rc;

  left[0] = bounded0 ? r->remain[r->depth - 1] : 0;
  for (; *fmt != '\0'; fmt++) {
    char c = *fmt;

    if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
      continue;
    /* Closing a list: every item it holds must have been named. */
    if (c == ']') {
      if (left[lvl] != 0)
        return FP_EPROTO; /* the list holds more items than named */
      lvl--;
      continue;
    }
    /* Every other letter is one item of the level it appears at. */
    if (lvl > 0 || bounded0) {
      if (left[lvl] == 0)
        return lvl > 0 ? FP_EPROTO : FP_EOF;
      left[lvl]--;
    }
    /* Opening a list: its count bounds the letters up to its ']'. */
    if (c == '[') {
      uint32_t n;
      if ((rc = fp_read_list(r, &n)) != 0)
        return rc;
      left[++lvl] = n;
      continue;
    }
    if ((rc = read_value(r, c, ap, store)) != 0)
      return rc;
  }
  return 0;
}

/* Both passes take their own copy of ap: a va_list handed to a function
 * that calls va_arg on it is indeterminate afterwards, so each pass walks
 * a va_copy through a pointer and ap itself is never consumed. */
int fp_vunpack(fp_reader *r, const char *fmt, va_list ap) {
  fp_reader probe;
  va_list aq;
  int rc;

  if (r == NULL || check_format(fmt, 1) != 0)
    return FP_EINVAL;
  probe = *r;
  va_copy(aq, ap);
  rc = unpack_pass(&probe, fmt, &aq, 0);
  va_end(aq);
  if (rc != 0)
    return rc;
  va_copy(aq, ap);
  rc = unpack_pass(r, fmt, &aq, 1);
  va_end(aq);
  return rc;
}

int fp_unpack(fp_reader *r, const char *fmt, ...) {
  va_list ap;
  int rc;

  va_start(ap, fmt);
  rc = fp_vunpack(r, fmt, ap);
  va_end(ap);
  return rc;
}
