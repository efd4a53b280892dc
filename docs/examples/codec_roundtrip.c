/* SPDX-License-Identifier: MIT */
/* codec_roundtrip.c - the codec in one page (docs/codec.md).
 *
 * Packs a starmap-style argument tuple, frames it across a socketpair (as
 * the master does to a worker), reads it back with the reader calls and
 * with fp_unpack, and shows what corrupt input gives. Built and run by
 * `make check`; exits 0 when everything behaved.
 */
#include <forkpool.h>

#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define TRY(call)                                                              \
  do {                                                                         \
    int rc_ = (call);                                                          \
    if (rc_ != 0) {                                                            \
      fprintf(stderr, "%s: %s (%s)\n", #call, fp_strerror(rc_),                \
              fp_err_name(rc_));                                               \
      return 1;                                                                \
    }                                                                          \
  } while (0)

int main(void) {
  fp_writer w, in;
  fp_reader r;
  int sv[2];
  uint32_t count;
  int64_t n;
  double x;
  const char *name;
  size_t name_len;

  /* Encode ("alice", 42, 0.5) as one list: the writer grows by itself. */
  fp_writer_init(&w);
  TRY(fp_pack(&w, "[s i d]", "alice", (int64_t)42, 0.5));
  printf("encoded %zu bytes:", w.len);
  for (size_t i = 0; i < w.len; i++)
    printf(" %02x", w.data[i]);
  printf("\n");

  /* Send it as one frame and receive it on the other end. */
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
    return 1;
  TRY(fp_frame_write(sv[0], w.data, w.len));
  fp_writer_init(&in);
  TRY(fp_frame_read(sv[1], &in, FP_FRAME_MAX_DEFAULT));
  close(sv[0]);
  close(sv[1]);

  /* Decode value by value; strings are views into in.data. */
  fp_reader_init(&r, in.data, in.len);
  TRY(fp_read_list(&r, &count));
  TRY(fp_read_str(&r, &name, &name_len));
  TRY(fp_read_int(&r, &n));
  TRY(fp_read_float(&r, &x));
  printf("list of %u: \"%s\" (%zu bytes), %lld, %g\n", count, name, name_len,
         (long long)n, x);
  if (!fp_reader_at_end(&r) || n != 42 || x != 0.5)
    return 1;

  /* The same with one call; a wrong format leaves the reader in place. */
  fp_reader_init(&r, in.data, in.len);
  int rc = fp_unpack(&r, "[s s d]", &name, &name, &x);
  printf("unpack \"[s s d]\": %s\n", fp_err_name(rc));
  if (rc != FP_ETYPE || r.pos != 0)
    return 1;
  TRY(fp_unpack(&r, "[s i d]", &name, &n, &x));

  /* Corrupt input is an error, never a crash: cut the message short. */
  size_t values;
  rc = fp_values_count(in.data, in.len - 1, &values);
  printf("truncated message: %s\n", fp_strerror(rc));
  if (rc != FP_EPROTO)
    return 1;

  fp_writer_free(&w);
  fp_writer_free(&in);
  return 0;
}
