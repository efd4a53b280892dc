/* SPDX-License-Identifier: MIT */
/* check_progress.c - tests of the progress reporter (pool/progress.c).
 *
 * The reporter is driven directly through fp__progress_* (no pool needed).
 * Its output goes to fd 2, so each test points fd 2 at a temporary file
 * with dup2() for the duration (capture_begin / capture_end) and then
 * checks the text: line formats, rate limiting (many updates give few
 * lines), the final line, callback counts, unknown totals, and that OFF
 * writes nothing at all. Rate limits are real time, so a few tests sleep
 * for a fraction of a second.
 *
 * The bar's width is tested on a real terminal: pty_begin() opens a
 * pseudo-terminal of a given number of columns (openpty, raw mode so the
 * bytes arrive as written) and points fd 2 at it; pty_end() reads back
 * what the reporter drew, waiting a bounded time for the final newline.
 */
#include <check.h>
#include <poll.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "forkpool.h"
#include "pool/progress.h"
#include "testutil.h"

static int saved_fd = -1;
static FILE *cap_file;

/* Points fd 2 at a fresh temporary file. */
static void capture_begin(void) {
  cap_file = tmpfile();
  ck_assert_ptr_nonnull(cap_file);
  saved_fd = dup(STDERR_FILENO);
  ck_assert_int_ge(saved_fd, 0);
  ck_assert_int_ge(dup2(fileno(cap_file), STDERR_FILENO), 0);
}

/* Restores fd 2 and returns what was written to it (malloc'd,
 * NUL-terminated; the caller frees it). */
static char *capture_end(void) {
  long n;
  char *text;
  ck_assert_int_ge(dup2(saved_fd, STDERR_FILENO), 0);
  close(saved_fd);
  saved_fd = -1;
  n = lseek(fileno(cap_file), 0, SEEK_END);
  ck_assert_int_ge(n, 0);
  text = malloc((size_t)n + 1);
  ck_assert_ptr_nonnull(text);
  ck_assert_int_eq(pread(fileno(cap_file), text, (size_t)n, 0), n);
  text[n] = '\0';
  fclose(cap_file);
  cap_file = NULL;
  return text;
}

static int pty_master = -1;

/* Opens a pseudo-terminal `cols` columns wide, in raw mode (no output
 * processing: '\n' stays '\n'), and points fd 2 at its slave side. */
static void pty_begin(int cols) {
  struct winsize ws = {.ws_row = 24, .ws_col = (unsigned short)cols};
  struct termios t;
  int slave;
  ck_assert_int_eq(openpty(&pty_master, &slave, NULL, NULL, &ws), 0);
  ck_assert_int_eq(tcgetattr(slave, &t), 0);
  cfmakeraw(&t);
  ck_assert_int_eq(tcsetattr(slave, TCSANOW, &t), 0);
  saved_fd = dup(STDERR_FILENO);
  ck_assert_int_ge(saved_fd, 0);
  ck_assert_int_ge(dup2(slave, STDERR_FILENO), 0);
  close(slave);
}

/* Reads what was drawn on the terminal until it ends with the final
 * newline (the bar writes exactly one, at finish), waiting at most 5 s in
 * all, then restores fd 2 and closes the terminal. Returns the bytes
 * (malloc'd, NUL-terminated; the caller frees them). */
static char *pty_end(void) {
  size_t len = 0, cap = 4096;
  char *text = malloc(cap);
  struct timespec t0, t;
  ck_assert_ptr_nonnull(text);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    struct pollfd p = {.fd = pty_master, .events = POLLIN};
    long waited;
    ssize_t k;
    if (len > 0 && text[len - 1] == '\n')
      break;
    clock_gettime(CLOCK_MONOTONIC, &t);
    waited = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
    if (waited >= 5000 || poll(&p, 1, (int)(5000 - waited)) <= 0)
      break;
    if (len + 1024 > cap) {
      cap *= 2;
      text = realloc(text, cap);
      ck_assert_ptr_nonnull(text);
    }
    k = read(pty_master, text + len, cap - len - 1);
    if (k <= 0)
      break;
    len += (size_t)k;
  }
  text[len] = '\0';
  ck_assert_int_ge(dup2(saved_fd, STDERR_FILENO), 0);
  close(saved_fd);
  saved_fd = -1;
  close(pty_master);
  pty_master = -1;
  return text;
}

/* Returns the widest of the pieces of text between '\r' and '\n'
 * characters: the widest line a terminal would show. */
static int widest_draw(const char *text) {
  int widest = 0, cur = 0;
  for (; *text; text++) {
    if (*text == '\r' || *text == '\n')
      cur = 0;
    else if (++cur > widest)
      widest = cur;
  }
  return widest;
}

/* Copies the last draw of text (after its last '\r', without the final
 * newline and the blanking spaces) into buf. */
static void last_draw(const char *text, char *buf, size_t cap) {
  const char *cr = strrchr(text, '\r');
  size_t n;
  snprintf(buf, cap, "%s", cr ? cr + 1 : text);
  n = strlen(buf);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
    buf[--n] = '\0';
}

/* Counts occurrences of the character c in s. */
static int count_char(const char *s, char c) {
  int n = 0;
  for (; *s; s++)
    n += *s == c;
  return n;
}

/* Sleeps for ms milliseconds. */
static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
}

typedef struct cb_log {
  int calls;
  int64_t last_done, last_total;
  double last_elapsed;
} cb_log;

static void log_cb(int64_t done, int64_t total, double elapsed, void *arg) {
  cb_log *log = arg;
  log->calls++;
  log->last_done = done;
  log->last_total = total;
  log->last_elapsed = elapsed;
}

START_TEST(progress_new_off_gives_null_and_prints_nothing) {
  fp__progress *pg = (fp__progress *)1;
  char *out;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_OFF, NULL, NULL, 2, 10),
                   0);
  ck_assert_ptr_null(pg);
  fp__progress_update(pg, 5); /* NULL is ignored */
  fp__progress_set_total(pg, 5);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_str_eq(out, "");
  free(out);
}
END_TEST

START_TEST(progress_lines_final_line_format) {
  fp__progress *pg;
  char *out, *last;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_LINES, NULL, NULL, 2, 100),
                   0);
  ck_assert_ptr_nonnull(pg);
  for (int i = 1; i <= 100; i++)
    fp__progress_update(pg, i);
  fp__progress_finish(pg);
  out = capture_end();
  /* Every line is a joblib-style line ending in a newline. */
  ck_assert_int_gt(strlen(out), 0);
  ck_assert_int_eq(out[strlen(out) - 1], '\n');
  out[strlen(out) - 1] = '\0';
  last = strrchr(out, '\n');
  last = last ? last + 1 : out;
  ck_assert_msg(
      strncmp(last, "[forkpool(n=2)]: Done 100 of 100 tasks | elapsed: ", 50) ==
          0,
      "bad final line: %s", last);
  ck_assert_msg(strstr(last, "s finished") != NULL, "no finished: %s", last);
  ck_assert_ptr_null(strchr(out, '\r'));
  free(out);
}
END_TEST

START_TEST(progress_lines_rate_limited) {
  fp__progress *pg;
  char *out;
  struct timespec t0, t1;
  double secs;
  capture_begin();
  ck_assert_int_eq(
      fp__progress_new(&pg, FP_PROGRESS_LINES, NULL, NULL, 4, 1000000), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 1; i <= 1000000; i++)
    fp__progress_update(pg, i);
  fp__progress_finish(pg);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  out = capture_end();
  /* Lines never closer than 0.5 s whatever the speed (a fast run prints
   * the first line and the final one; valgrind makes the loop take
   * seconds): the first, one per half second since, and the final one. */
  secs =
      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  int lines = count_char(out, '\n');
  int complete = strstr(out, "Done 1000000 of 1000000 tasks") != NULL;
  free(out); /* before asserting: a failed assertion must not leak */
  ck_assert_msg(lines <= 2 + (int)(secs / 0.5), "%d lines in %.2f s", lines,
                secs);
  ck_assert(complete);
}
END_TEST

START_TEST(progress_lines_intermediate_has_remaining) {
  fp__progress *pg;
  char *out, *line;
  int lines = 0;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_LINES, NULL, NULL, 2, 100),
                   0);
  sleep_ms(50);
  fp__progress_update(pg, 10); /* first line at once */
  sleep_ms(600);
  fp__progress_update(pg, 40); /* past 0.5 s and past the next step */
  sleep_ms(100);
  fp__progress_update(pg, 41); /* too soon: no line */
  fp__progress_finish(pg);
  out = capture_end();
  for (line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    lines++;
    ck_assert_msg(strncmp(line, "[forkpool(n=2)]: Done ", 22) == 0, "%s", line);
    if (lines == 1)
      ck_assert_msg(strstr(line, "Done 10 of 100 tasks | elapsed: 0.") &&
                        strstr(line, "s remaining: "),
                    "%s", line);
    if (lines == 2) {
      /* remaining = elapsed * (100 - 40) / 40, both rounded to 0.1 s. */
      double el, left;
      ck_assert_msg(sscanf(line,
                           "[forkpool(n=2)]: Done 40 of 100 tasks | "
                           "elapsed: %lfs remaining: %lfs",
                           &el, &left) == 2,
                    "%s", line);
      ck_assert_msg(el >= 0.6 && left > el * 1.5 - 0.15 &&
                        left < el * 1.5 + 0.15,
                    "%s", line);
    }
    if (lines == 3)
      ck_assert_msg(strstr(line, "Done 41 of 100 tasks") &&
                        strstr(line, "finished"),
                    "%s", line);
  }
  ck_assert_int_eq(lines, 3);
  free(out);
}
END_TEST

START_TEST(progress_lines_unknown_total) {
  fp__progress *pg;
  char *out;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_LINES, NULL, NULL, 3, -1),
                   0);
  fp__progress_update(pg, 7);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_msg(strncmp(out, "[forkpool(n=3)]: Done 7 tasks | elapsed: ", 41) ==
                    0,
                "%s", out);
  ck_assert_ptr_null(strstr(out, " of "));
  ck_assert_ptr_null(strstr(out, "remaining"));
  ck_assert_int_eq(count_char(out, '\n'), 2);
  free(out);
}
END_TEST

START_TEST(progress_set_total_used_by_final_line) {
  fp__progress *pg;
  char *out;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_LINES, NULL, NULL, 2, -1),
                   0);
  fp__progress_update(pg, 5);
  fp__progress_set_total(pg, 5);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_msg(strstr(out, "Done 5 of 5 tasks | elapsed: ") &&
                    strstr(out, "finished\n"),
                "%s", out);
  free(out);
}
END_TEST

START_TEST(progress_bar_redraws_in_place) {
  fp__progress *pg;
  char *out;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, 50),
                   0);
  for (int i = 1; i <= 50; i++)
    fp__progress_update(pg, i);
  fp__progress_finish(pg);
  out = capture_end();
  /* One newline only, at the very end; every draw starts with '\r'. */
  ck_assert_int_eq(count_char(out, '\n'), 1);
  ck_assert_int_eq(out[strlen(out) - 1], '\n');
  ck_assert_int_eq(out[0], '\r');
  /* A million updates would not draw more than ~10 per s: here 2. */
  ck_assert_int_le(count_char(out, '\r'), 3);
  ck_assert_msg(strstr(out, "forkpool(n=2): 100%|#") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "| 50/50 [00:00<00:00, ") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "it/s]") != NULL, "%s", out);
  free(out);
}
END_TEST

START_TEST(progress_bar_rate_limited) {
  fp__progress *pg;
  char *out;
  struct timespec t0, t1;
  capture_begin();
  ck_assert_int_eq(
      fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, 2000000), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 1; i <= 2000000; i++)
    fp__progress_update(pg, i);
  fp__progress_finish(pg);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  out = capture_end();
  /* At most ~10 redraws a second whatever the speed (valgrind makes the
   * loop slow), plus the first and the final one. */
  double secs = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  int redraws = count_char(out, '\r');
  int bound = (int)(secs * 10) + 3;
  int complete = strstr(out, "2000000/2000000") != NULL;
  free(out); /* before asserting: a failed assertion must not leak */
  ck_assert_msg(redraws <= bound, "%d redraws in %.2fs", redraws, secs);
  ck_assert(complete);
}
END_TEST

START_TEST(progress_bar_unknown_total) {
  fp__progress *pg;
  char *out;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, -1),
                   0);
  fp__progress_update(pg, 3);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_ptr_null(strchr(out, '%'));
  ck_assert_ptr_null(strchr(out, '<'));
  ck_assert_msg(strstr(out, "forkpool(n=2): 3it [00:00, ") != NULL, "%s", out);
  free(out);
}
END_TEST

START_TEST(progress_auto_without_tty_gives_lines) {
  fp__progress *pg;
  char *out;
  capture_begin(); /* fd 2 is a regular file, not a TTY */
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_AUTO, NULL, NULL, 2, 4),
                   0);
  fp__progress_update(pg, 4);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_ptr_null(strchr(out, '\r'));
  ck_assert_ptr_nonnull(strstr(out, "Done 4 of 4 tasks"));
  free(out);
}
END_TEST

START_TEST(progress_callback_only_prints_nothing) {
  fp__progress *pg;
  cb_log log = {0};
  char *out;
  capture_begin();
  ck_assert_int_eq(
      fp__progress_new(&pg, FP_PROGRESS_CALLBACK, log_cb, &log, 2, 100000), 0);
  for (int i = 1; i <= 100000; i++)
    fp__progress_update(pg, i);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_str_eq(out, "");
  /* Rate-limited: the first update, maybe a tick or two, and the end. */
  ck_assert_int_ge(log.calls, 2);
  ck_assert_int_le(log.calls, 4);
  ck_assert_int_eq(log.last_done, 100000);
  ck_assert_int_eq(log.last_total, 100000);
  ck_assert(log.last_elapsed >= 0);
  free(out);
}
END_TEST

START_TEST(progress_callback_ticks_ten_per_second) {
  fp__progress *pg;
  cb_log log = {0};
  char *out;
  struct timespec t0, t1;
  double el;
  capture_begin();
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ck_assert_int_eq(
      fp__progress_new(&pg, FP_PROGRESS_LINES, log_cb, &log, 2, -1), 0);
  for (int i = 1; i <= 50; i++) {
    fp__progress_update(pg, i);
    sleep_ms(10);
  }
  fp__progress_finish(pg);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  out = capture_end();
  /* Updates every 10 ms for >= 0.5 s: one call per 0.1 s tick (the first
   * update is one) plus the final call - however slow the machine. */
  el = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  ck_assert_msg(log.calls >= 4 && log.calls <= (int)(el / 0.1) + 2,
                "calls=%d in %.3f s", log.calls, el);
  ck_assert_int_eq(log.last_total, -1);
  ck_assert_int_eq(log.last_done, 50);
  ck_assert_ptr_nonnull(strstr(out, "Done 50 tasks | elapsed: "));
  free(out);
}
END_TEST

/* The terminal widths the bar is drawn at, from a narrow split pane to a
 * wide window. */
static const int widths[] = {40, 50, 80, 200};

START_TEST(progress_bar_fits_the_terminal) {
  int cols = widths[_i];
  fp__progress *pg;
  char *out, draw[512];

  /* A mid-job draw and the final one, total known. */
  pty_begin(cols);
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, 100),
                   0);
  fp__progress_update(pg, 40);  /* the first update draws at once */
  fp__progress_update(pg, 100); /* rate-limited: drawn by finish */
  fp__progress_finish(pg);
  out = pty_end();
  ck_assert_msg(widest_draw(out) <= cols - 1, "%d columns: %s", cols, out);
  ck_assert_int_eq(count_char(out, '\n'), 1);
  ck_assert_msg(strstr(out, "40/100") != NULL, "%d: %s", cols, out);
  ck_assert_msg(strstr(out, "100%|#") != NULL, "%d: %s", cols, out);
  /* What is dropped, and in which order: the rate first, then the
   * remaining time, then the elapsed time; never the count. */
  if (cols >= 80) {
    ck_assert_msg(strstr(out, "it/s]") && strstr(out, "<"), "%d: %s", cols,
                  out);
  } else if (cols == 50) {
    ck_assert_msg(strstr(out, "it/s") == NULL && strchr(out, '<') == NULL &&
                      strstr(out, "| 40/100 [00:00]") != NULL,
                  "50: %s", out);
  } else {
    ck_assert_msg(strchr(out, '[') == NULL, "%d: %s", cols, out);
  }
  if (cols == 200) /* wide: the bar has its full 40 characters */
    ck_assert_msg(strstr(out, "|########################################|"),
                  "200: %s", out);
  free(out);

  /* Counts too long for any bar at 40 columns: the bar and the prefix go,
   * the count stays. */
  pty_begin(cols);
  ck_assert_int_eq(
      fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 64, 2000000000), 0);
  fp__progress_update(pg, 123456789);
  fp__progress_finish(pg);
  out = pty_end();
  ck_assert_msg(widest_draw(out) <= cols - 1, "%d columns: %s", cols, out);
  ck_assert_msg(strstr(out, "123456789/2000000000") != NULL, "%d: %s", cols,
                out);
  if (cols == 40)
    ck_assert_msg(strstr(out, "forkpool") == NULL, "40: %s", out);
  free(out);

  /* An unknown total: no bar; the tail shrinks the same way. */
  pty_begin(cols);
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, -1),
                   0);
  fp__progress_update(pg, 12345678);
  fp__progress_finish(pg);
  out = pty_end();
  last_draw(out, draw, sizeof draw);
  ck_assert_msg(widest_draw(out) <= cols - 1, "%d columns: %s", cols, out);
  ck_assert_msg(strncmp(draw, "forkpool(n=2): 12345678it", 25) == 0, "%d: %s",
                cols, draw);
  free(out);
}
END_TEST

START_TEST(progress_bar_never_wraps_on_tiny_terminals) {
  for (int cols = 1; cols <= 30; cols++) {
    fp__progress *pg;
    char *out;
    pty_begin(cols);
    ck_assert_int_eq(
        fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, 1000), 0);
    fp__progress_update(pg, 999);
    fp__progress_finish(pg);
    out = pty_end();
    ck_assert_msg(widest_draw(out) <= cols - 1, "%d columns: %s", cols, out);
    ck_assert_int_eq(count_char(out, '\n'), 1);
    free(out);
  }
}
END_TEST

START_TEST(progress_bar_blanks_a_longer_previous_draw) {
  fp__progress *pg;
  char *out, *cr1, *cr2;
  size_t n1, n2;
  pty_begin(200);
  ck_assert_int_eq(
      fp__progress_new(&pg, FP_PROGRESS_BAR, NULL, NULL, 2, 1000000000), 0);
  fp__progress_update(pg, 999999999); /* a bar and a long count */
  fp__progress_set_total(pg, -1);     /* the final draw has neither */
  fp__progress_finish(pg);
  out = pty_end();
  /* Two draws; the second is padded with spaces to the first's width, so
   * nothing of the first is left on the screen. */
  cr1 = strchr(out, '\r');
  ck_assert_ptr_nonnull(cr1);
  cr2 = strchr(cr1 + 1, '\r');
  ck_assert_ptr_nonnull(cr2);
  n1 = (size_t)(cr2 - cr1 - 1);
  n2 = strlen(cr2 + 1) - 1; /* without the final newline */
  ck_assert_msg(n2 == n1 && cr2[n2] == ' ', "%s", out);
  ck_assert_msg(strncmp(cr2 + 1, "forkpool(n=2): 999999999it [", 28) == 0, "%s",
                out);
  ck_assert_int_le(widest_draw(out), 199);
  free(out);
}
END_TEST

START_TEST(progress_auto_on_a_terminal_gives_a_bar) {
  fp__progress *pg;
  char *out;
  pty_begin(50);
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_AUTO, NULL, NULL, 2, 10),
                   0);
  fp__progress_update(pg, 5);
  fp__progress_update(pg, 10);
  fp__progress_finish(pg);
  out = pty_end();
  ck_assert_msg(out[0] == '\r' && strstr(out, "forkpool(n=2): 100%|#"), "%s",
                out);
  ck_assert_int_le(widest_draw(out), 49);
  free(out);
}
END_TEST

START_TEST(progress_finish_without_updates) {
  fp__progress *pg;
  cb_log log = {0};
  char *out;
  capture_begin();
  ck_assert_int_eq(fp__progress_new(&pg, FP_PROGRESS_LINES, log_cb, &log, 1, 0),
                   0);
  fp__progress_finish(pg);
  out = capture_end();
  ck_assert_int_eq(log.calls, 1);
  ck_assert_msg(
      strncmp(out, "[forkpool(n=1)]: Done 0 of 0 tasks | elapsed: ", 46) == 0,
      "%s", out);
  free(out);
}
END_TEST

Suite *progress_suite(void) {
  Suite *s = suite_create("progress");
  TCase *tc = tcase_create("progress");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, progress_new_off_gives_null_and_prints_nothing);
  tcase_add_test(tc, progress_lines_final_line_format);
  tcase_add_test(tc, progress_lines_rate_limited);
  tcase_add_test(tc, progress_lines_intermediate_has_remaining);
  tcase_add_test(tc, progress_lines_unknown_total);
  tcase_add_test(tc, progress_set_total_used_by_final_line);
  tcase_add_test(tc, progress_bar_redraws_in_place);
  tcase_add_test(tc, progress_bar_rate_limited);
  tcase_add_test(tc, progress_bar_unknown_total);
  tcase_add_test(tc, progress_auto_without_tty_gives_lines);
  tcase_add_test(tc, progress_callback_only_prints_nothing);
  tcase_add_test(tc, progress_callback_ticks_ten_per_second);
  tcase_add_test(tc, progress_finish_without_updates);
  tcase_add_loop_test(tc, progress_bar_fits_the_terminal, 0,
                      (int)(sizeof widths / sizeof widths[0]));
  tcase_add_test(tc, progress_bar_never_wraps_on_tiny_terminals);
  tcase_add_test(tc, progress_bar_blanks_a_longer_previous_draw);
  tcase_add_test(tc, progress_auto_on_a_terminal_gives_a_bar);
  suite_add_tcase(s, tc);
  return s;
}
