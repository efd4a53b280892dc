/* SPDX-License-Identifier: MIT */
/* check_frame.c - tests of the frame layer (ipc/wire/frame.c).
 *
 * fp_frame_parse on partial and over-long input; fp_frame_write and
 * fp_frame_read across a socketpair and a pipe, including a peer that
 * writes one byte at a time (a forked child, reaped before the test ends),
 * a frame larger than the socket buffer (a thread reads while we write),
 * every end-of-file case, an over-long header that must fail without
 * allocating, and a dead peer that must give FP_EPIPE, not SIGPIPE.
 */
#include "forkpool.h"
#include "ipc/wire/alloc.h"
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void teardown(void) {
  fp_test_no_children();
}

static void make_pair(int sv[2]) {
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

START_TEST(frame_parse_needs_header_and_payload) {
  static const unsigned char f[] = {3, 0, 0, 0, 'a', 'b', 'c', 9};
  size_t n = 77;
  ck_assert_int_eq(fp_frame_parse(f, 0, 100, &n), 1);
  ck_assert_int_eq(fp_frame_parse(NULL, 0, 100, &n), 1);
  ck_assert_int_eq(fp_frame_parse(f, 3, 100, &n), 1);
  ck_assert_uint_eq(n, 77);
  ck_assert_int_eq(fp_frame_parse(f, 4, 100, &n), 1);
  ck_assert_uint_eq(n, 3); /* announced length known from the header */
  ck_assert_int_eq(fp_frame_parse(f, 6, 100, &n), 1);
  ck_assert_int_eq(fp_frame_parse(f, 7, 100, &n), 0);
  ck_assert_uint_eq(n, 3);
  ck_assert_int_eq(fp_frame_parse(f, 8, 100, &n), 0); /* next frame after */
  ck_assert_int_eq(fp_frame_parse(f, 7, 3, &n), 0);   /* max inclusive */
  ck_assert_int_eq(fp_frame_parse("\0\0\0\0", 4, 0, &n), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(fp_frame_parse(NULL, 4, 100, &n), FP_EINVAL);
  ck_assert_int_eq(fp_frame_parse(f, 4, 100, NULL), FP_EINVAL);
}
END_TEST

START_TEST(frame_parse_over_long_fails_emsgsize_from_header_alone) {
  static const unsigned char hdr[] = {0xff, 0xff, 0xff, 0xff};
  size_t n = 0;
  ck_assert_int_eq(fp_frame_parse(hdr, 4, FP_FRAME_MAX_DEFAULT, &n),
                   FP_EMSGSIZE);
  ck_assert_int_eq(fp_frame_parse("\x04\0\0\0", 4, 3, &n), FP_EMSGSIZE);
  ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(frame_write_read_roundtrip_over_socketpair) {
  int sv[2];
  fp_writer buf;
  make_pair(sv);
  fp_writer_init(&buf);
  ck_assert_int_eq(fp_frame_write(sv[0], "hello", 5), 0);
  ck_assert_int_eq(fp_frame_write(sv[0], NULL, 0), 0);
  ck_assert_int_eq(fp_frame_write(sv[0], "x", 1), 0);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), 0);
  ck_assert_uint_eq(buf.len, 5);
  ck_assert_mem_eq(buf.data, "hello", 5);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), 0);
  ck_assert_uint_eq(buf.len, 0);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), 0);
  ck_assert_uint_eq(buf.len, 1);
  ck_assert_mem_eq(buf.data, "x", 1);
  if (fp__alloc_uses_arena())
    ck_assert_int_eq(fp__alloc_from_arena(buf.data), 1);
  close(sv[0]);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), FP_EOF);
  ck_assert_uint_eq(buf.len, 0);
  close(sv[1]);
  fp_writer_free(&buf);
}
END_TEST

START_TEST(frame_read_assembles_bytes_written_one_at_a_time) {
  int sv[2];
  pid_t pid;
  fp_writer buf;
  fp_reader r;
  int64_t i;
  const char *s;

  make_pair(sv);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    /* Child: encode a message, frame it, dribble it out byte by byte. */
    fp_writer m, f;
    unsigned char hdr[4];
    int ok = 1;
    close(sv[1]);
    fp_writer_init(&m);
    fp_writer_init(&f);
    fp_pack(&m, "[i s]", (int64_t)-42, "dribble");
    hdr[0] = (unsigned char)m.len;
    hdr[1] = (unsigned char)(m.len >> 8);
    hdr[2] = hdr[3] = 0;
    fp_writer_append(&f, hdr, 4);
    fp_writer_append(&f, m.data, m.len);
    for (size_t k = 0; k < f.len && ok; k++)
      ok = write(sv[0], f.data + k, 1) == 1;
    fp_writer_free(&m);
    fp_writer_free(&f);
    _exit(ok ? 0 : 1);
  }
  close(sv[0]);
  fp_writer_init(&buf);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, FP_FRAME_MAX_DEFAULT), 0);
  fp_reader_init(&r, buf.data, buf.len);
  ck_assert_int_eq(fp_unpack(&r, "[i s]", &i, &s), 0);
  ck_assert(i == -42);
  ck_assert_str_eq(s, "dribble");
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), FP_EOF);
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(sv[1]);
  fp_writer_free(&buf);
}
END_TEST

struct big_reader {
  int fd;
  size_t want;
  int rc;
  size_t got;
  int ok;
};

static void *read_big(void *arg) {
  struct big_reader *b = arg;
  fp_writer buf;
  fp_writer_init(&buf);
  b->rc = fp_frame_read(b->fd, &buf, FP_FRAME_MAX_DEFAULT);
  b->got = buf.len;
  b->ok = 1;
  for (size_t k = 0; k < buf.len; k++)
    if (buf.data[k] != (unsigned char)(k * 7))
      b->ok = 0;
  fp_writer_free(&buf);
  return NULL;
}

START_TEST(frame_larger_than_socket_buffer_roundtrips) {
  size_t n = fp_test_under_valgrind() ? (size_t)1 << 20 : (size_t)8 << 20;
  unsigned char *p = malloc(n);
  struct big_reader b;
  pthread_t t;
  int sv[2];

  ck_assert_ptr_nonnull(p);
  for (size_t k = 0; k < n; k++)
    p[k] = (unsigned char)(k * 7);
  make_pair(sv);
  b.fd = sv[1];
  b.want = n;
  ck_assert_int_eq(pthread_create(&t, NULL, read_big, &b), 0);
  ck_assert_int_eq(fp_frame_write(sv[0], p, n), 0);
  ck_assert_int_eq(pthread_join(t, NULL), 0);
  ck_assert_int_eq(b.rc, 0);
  ck_assert_uint_eq(b.got, n);
  ck_assert_int_eq(b.ok, 1);
  close(sv[0]);
  close(sv[1]);
  free(p);
}
END_TEST

START_TEST(frame_read_eof_inside_frame_fails_eproto) {
  int sv[2];
  fp_writer buf;
  fp_writer_init(&buf);

  make_pair(sv); /* EOF inside the header */
  ck_assert_int_eq(write(sv[0], "\x05\x00", 2), 2);
  close(sv[0]);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), FP_EPROTO);
  close(sv[1]);

  make_pair(sv); /* EOF inside the payload */
  ck_assert_int_eq(write(sv[0],
                         "\x05\x00\x00\x00"
                         "abc",
                         7),
                   7);
  close(sv[0]);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 100), FP_EPROTO);
  ck_assert_uint_eq(buf.len, 0);
  close(sv[1]);
  fp_writer_free(&buf);
}
END_TEST

START_TEST(frame_read_over_long_header_fails_emsgsize_without_allocating) {
  int sv[2];
  fp_writer buf;
  make_pair(sv);
  fp_writer_init(&buf);
  /* 4 GiB - 1 announced, nothing behind it: must fail at once. */
  ck_assert_int_eq(write(sv[0], "\xff\xff\xff\xff", 4), 4);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, FP_FRAME_MAX_DEFAULT),
                   FP_EMSGSIZE);
  ck_assert_ptr_null(buf.data); /* nothing was allocated */
  ck_assert_uint_eq(buf.cap, 0);
  ck_assert_int_eq(write(sv[0], "\x0b\x00\x00\x00", 4), 4);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 10), FP_EMSGSIZE);
  ck_assert_ptr_null(buf.data);
  close(sv[0]);
  close(sv[1]);
  fp_writer_free(&buf);
}
END_TEST

START_TEST(frame_write_to_closed_socket_fails_epipe_not_sigpipe) {
  int sv[2];
  signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill this test */
  make_pair(sv);
  close(sv[1]);
  ck_assert_int_eq(fp_frame_write(sv[0], "data", 4), FP_EPIPE);
  close(sv[0]);
}
END_TEST

START_TEST(frame_write_to_closed_pipe_fails_epipe_not_sigpipe) {
  int pfd[2];
  sigset_t mask, pending;
  signal(SIGPIPE, SIG_DFL);
  ck_assert_int_eq(pipe(pfd), 0);
  close(pfd[0]);
  ck_assert_int_eq(fp_frame_write(pfd[1], "data", 4), FP_EPIPE);
  /* The mask is back and no SIGPIPE is left pending. */
  pthread_sigmask(SIG_SETMASK, NULL, &mask);
  ck_assert_int_eq(sigismember(&mask, SIGPIPE), 0);
  sigpending(&pending);
  ck_assert_int_eq(sigismember(&pending, SIGPIPE), 0);
  close(pfd[1]);
}
END_TEST

START_TEST(frame_write_read_over_pipe) {
  int pfd[2];
  fp_writer buf;
  ck_assert_int_eq(pipe(pfd), 0);
  fp_writer_init(&buf);
  ck_assert_int_eq(fp_frame_write(pfd[1], "pipe", 4), 0);
  ck_assert_int_eq(fp_frame_read(pfd[0], &buf, 4), 0);
  ck_assert_mem_eq(buf.data, "pipe", 4);
  close(pfd[1]);
  ck_assert_int_eq(fp_frame_read(pfd[0], &buf, 4), FP_EOF);
  close(pfd[0]);
  fp_writer_free(&buf);
}
END_TEST

START_TEST(frame_calls_reject_bad_arguments) {
  fp_writer buf;
  fp_writer_init(&buf);
  ck_assert_int_eq(fp_frame_write(1, NULL, 3), FP_EINVAL);
  if (sizeof(size_t) > 4) /* checked before the payload is touched */
    ck_assert_int_eq(fp_frame_write(1, "x", (size_t)UINT32_MAX + 1),
                     FP_EMSGSIZE);
  ck_assert_int_eq(fp_frame_write(-1, "x", 1), -EBADF);
  ck_assert_int_eq(fp_frame_read(-1, &buf, 10), -EBADF);
  ck_assert_int_eq(fp_frame_read(0, NULL, 10), FP_EINVAL);
  fp_writer_free(&buf);
}
END_TEST

START_TEST(frame_read_clears_previous_contents_and_error) {
  int sv[2];
  fp_writer buf;
  make_pair(sv);
  fp_writer_init(&buf);
  fp_write_str(&buf, "old contents");
  fp_write_list_end(&buf); /* sticky FP_EINVAL */
  ck_assert_int_eq(fp_frame_write(sv[0], "\x00", 1), 0);
  ck_assert_int_eq(fp_frame_read(sv[1], &buf, 10), 0);
  ck_assert_int_eq(fp_writer_error(&buf), 0);
  ck_assert_uint_eq(buf.len, 1);
  ck_assert_int_eq(fp_values_count(buf.data, buf.len, NULL), 0);
  close(sv[0]);
  close(sv[1]);
  fp_writer_free(&buf);
}
END_TEST

Suite *frame_suite(void) {
  Suite *s = suite_create("frame");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 30);
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, frame_parse_needs_header_and_payload);
  tcase_add_test(tc, frame_parse_over_long_fails_emsgsize_from_header_alone);
  tcase_add_test(tc, frame_write_read_roundtrip_over_socketpair);
  tcase_add_test(tc, frame_read_assembles_bytes_written_one_at_a_time);
  tcase_add_test(tc, frame_larger_than_socket_buffer_roundtrips);
  tcase_add_test(tc, frame_read_eof_inside_frame_fails_eproto);
  tcase_add_test(tc,
                 frame_read_over_long_header_fails_emsgsize_without_allocating);
  tcase_add_test(tc, frame_write_to_closed_socket_fails_epipe_not_sigpipe);
  tcase_add_test(tc, frame_write_to_closed_pipe_fails_epipe_not_sigpipe);
  tcase_add_test(tc, frame_write_read_over_pipe);
  tcase_add_test(tc, frame_calls_reject_bad_arguments);
  tcase_add_test(tc, frame_read_clears_previous_contents_and_error);
  suite_add_tcase(s, tc);
  return s;
}
