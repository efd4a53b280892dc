/* SPDX-License-Identifier: MIT */
/* progress.c - opt-in progress output for pool jobs (see progress.h).
 *
 * One reporter per job. The thread taking results in calls
 * fp__progress_update() with the cumulative number of finished items; the
 * reporter decides whether to say anything. Three outputs, all optional:
 *
 *   BAR       a tqdm-like bar on stderr, redrawn in place with '\r' at most
 *             ten times a second and once more, with a newline, at finish:
 *
 *     forkpool(n=2):  40%|####      | 40/100 [00:01<00:01, 33.30it/s]
 *
 *   LINES     joblib-style lines, one per growing step of `done` (1, 2, 4,
 *             8, ... items) but never closer than 0.5 s apart, plus at least
 *             one every 10 s while work progresses, and a final line:
 *
 *     [forkpool(n=2)]: Done 40 of 100 tasks | elapsed: 1.2s remaining: 1.8s
 *     [forkpool(n=2)]: Done 100 of 100 tasks | elapsed: 3.0s finished
 *
 *   CALLBACK  the user's callback, called on every update that passes the
 *             0.1 s rate limit (in every mode) and once at finish.
 *
 * With an unknown total (-1) no percentage, bar or remaining time is shown.
 *
 * The bar never wraps: its line is at most one column narrower than the
 * terminal (a line exactly as wide as the terminal wraps on some). As the
 * terminal narrows, the bar shrinks from 40 to 10 characters, then, as tqdm
 * does, the rate goes, then the remaining time, then the elapsed time; then
 * the bar itself, then the "forkpool(n=2):" prefix; what still does not fit
 * is cut.
 *
 * Cost on the hot path: fp__progress_update() stores `done`, reads
 * CLOCK_MONOTONIC once and compares it with the next tick time; only past
 * a tick does it format anything. Each line is written to fd 2 with one
 * write(2) call (looping only on EINTR and short writes), so nothing sits in
 * a stdio buffer and lines from different processes do not interleave
 * mid-line. Write errors are ignored: progress output must never fail a job.
 *
 * The reporter is used by one thread at a time (under the pool's lock), so
 * it needs no lock of its own. A pool's reporters defer their callbacks
 * (fp__progress_defer): a due call is queued, and run by the pool after it
 * released its lock, since the callback may call the pool.
 */
#include "pool/progress.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_SEC 0.1      /* bar redraws and callbacks: at most 10 per s */
#define LINE_MIN_SEC 0.5  /* joblib lines: never closer than this */
#define LINE_MAX_SEC 10.0 /* ... and at least this often while progressing */
#define LINE_CAP 512      /* one output line, bar included */
#define BAR_MIN 10        /* bar width bounds, in characters */
#define BAR_MAX 40

struct fp__progress {
  fp_progress_mode mode; /* BAR, LINES or CALLBACK (AUTO resolved) */
  fp_progress_fn cb;
  void *cb_arg;
  int nworkers;
  int64_t total;     /* -1: unknown */
  int64_t done;      /* last value given to update */
  int64_t printed;   /* done at the last line/bar written, -1: none yet */
  int64_t next_done; /* LINES: the next step of done worth a line */
  double t0;         /* creation time */
  double next_tick;  /* earliest time of the next bar/callback/line */
  double last_line;  /* LINES: time of the last line */
  int bar_len;       /* BAR: visible length of the last bar drawn */
  /* A deferred callback (fp__progress_defer): */
  fp__progress_queue *q; /* where due calls go; NULL: call at once */
  fp__progress *q_next;  /* link in q */
  int queued;            /* in q */
  int final;             /* the last call is due: free after it */
  int64_t due_done;      /* arguments of the call that is due */
  double due_elapsed;
};

/* Returns CLOCK_MONOTONIC in seconds. */
static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* 1 when a write of up to PIPE_BUF bytes to fd 2 will not block: a pipe
 * or socket with room, a file. A stderr nobody reads must not stop the
 * pool (the writer holds its lock): its lines are dropped. */
static int stderr_has_room(void) {
  struct pollfd p = {STDERR_FILENO, POLLOUT, 0};
  int rc;
  while ((rc = poll(&p, 1, 0)) < 0 && errno == EINTR)
    ;
  return rc == 1 && (p.revents & POLLOUT);
}

/* A terminal says "writable" while it has any room at all, and a blocking
 * write then waits until every byte is out: a terminal nobody reads (a
 * stopped emulator, a pty whose master is not read) would stop the pool.
 * For a character device, fd 2 is opened afresh, non-blocking, as its own
 * file description (O_NONBLOCK on fd 2 itself would change the user's
 * stderr). Returns that descriptor; -1: write to fd 2 after
 * stderr_has_room() (not a character device, or one that is no terminal:
 * /dev/null); NO_SAFE_WRITE: a terminal that cannot be opened afresh (it
 * belongs to another user since a setuid, or /proc is missing), which no
 * write can be sure not to block on: the lines are dropped. */
#define NO_SAFE_WRITE (-2)
static int open_nonblocking_tty(void) {
  struct stat st;
  int fd;
  if (fstat(STDERR_FILENO, &st) != 0 || !S_ISCHR(st.st_mode))
    return -1;
  fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd >= 0)
    return fd;
  return isatty(STDERR_FILENO) ? NO_SAFE_WRITE : -1;
}

/* Writes the n bytes at buf to fd 2, PIPE_BUF bytes at most per write(2),
 * none of which can block (stderr_has_room, open_nonblocking_tty): what
 * finds no room is dropped. Errors are ignored, and a stderr that is a
 * broken pipe must not kill the program: SIGPIPE is blocked for the
 * write, and one it raised is taken back (the thread may be the user's,
 * taking results in). */
static void write_all(const char *buf, size_t n) {
  sigset_t pipe_only, old, pending;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  sigpending(&pending);
  int was_pending = sigismember(&pending, SIGPIPE);
  int broke = 0, tty = open_nonblocking_tty();
  int fd = tty >= 0 ? tty : STDERR_FILENO;
  if (tty == NO_SAFE_WRITE)
    n = 0;
  while (n > 0 && (tty >= 0 || stderr_has_room())) {
    ssize_t k = write(fd, buf, n < PIPE_BUF ? n : PIPE_BUF);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      broke = errno == EPIPE;
      break; /* EAGAIN from the terminal: no room, the rest is dropped */
    }
    buf += k;
    n -= (size_t)k;
  }
  if (tty >= 0)
    close(tty);
  if (broke && !was_pending) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR)
      ;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Calls pg's callback with (done, elapsed), or queues the call. */
static void callback(fp__progress *pg, int64_t done, double elapsed) {
  if (pg->q == NULL) {
    pg->cb(done, pg->total, elapsed, pg->cb_arg);
    return;
  }
  pg->due_done = done;
  pg->due_elapsed = elapsed;
  if (pg->queued)
    return; /* one call per take: the newest figures */
  pg->queued = 1;
  pg->q_next = NULL;
  if (pg->q->tail)
    pg->q->tail->q_next = pg;
  else
    pg->q->head = pg;
  pg->q->tail = pg;
  atomic_fetch_add(&pg->q->pending, 1);
}

void fp__progress_defer(fp__progress *pg, fp__progress_queue *q) {
  if (pg != NULL && pg->cb != NULL)
    pg->q = q;
}

int fp__progress_deferred(const fp__progress *pg) {
  return pg != NULL && pg->q != NULL;
}

int fp__progress_take(fp__progress_queue *q, fp__progress_call *c) {
  fp__progress *pg = q->head;
  if (pg == NULL)
    return 0;
  q->head = pg->q_next;
  if (q->head == NULL)
    q->tail = NULL;
  atomic_fetch_sub(&q->pending, 1);
  pg->queued = 0;
  c->cb = pg->cb;
  c->arg = pg->cb_arg;
  c->done = pg->due_done;
  c->total = pg->total;
  c->elapsed = pg->due_elapsed;
  c->done_with = pg->final ? pg : NULL;
  return 1;
}

void fp__progress_call_run(const fp__progress_call *c) {
  c->cb(c->done, c->total, c->elapsed, c->arg);
  free(c->done_with);
}

/* Appends printf-formatted text at buf[*len], never past cap - 1 bytes;
 * output that does not fit is truncated. */
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    FP_PRINTF(4, 5);
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...) {
  va_list ap;
  int k;
  if (*len + 1 >= cap)
    return;
  va_start(ap, fmt);
  k = vsnprintf(buf + *len, cap - *len, fmt, ap);
  va_end(ap);
  if (k < 0)
    return;
  *len += (size_t)k < cap - *len ? (size_t)k : cap - *len - 1;
}

/* Formats a duration the way joblib does: "1.2s", "2.5min", "1.1h". */
static void append_short_time(char *buf, size_t cap, size_t *len, double t) {
  if (t < 0)
    t = 0;
  if (t < 60)
    append(buf, cap, len, "%.1fs", t);
  else if (t < 3600)
    append(buf, cap, len, "%.1fmin", t / 60);
  else
    append(buf, cap, len, "%.1fh", t / 3600);
}

/* Formats a duration the way tqdm does: "MM:SS", or "H:MM:SS" past an
 * hour. */
static void append_clock(char *buf, size_t cap, size_t *len, double t) {
  long s = t < 0 ? 0 : (long)t;
  if (s >= 3600)
    append(buf, cap, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    append(buf, cap, len, "%02ld:%02ld", s / 60, s % 60);
}

/* Returns the width of the terminal on fd 2, or 80 when unknown. */
static int term_width(void) {
  struct winsize ws;
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

/* Writes one joblib-style line for the current state. `final` gives the
 * "finished" form. */
static void emit_line(fp__progress *pg, double now, int final) {
  char buf[LINE_CAP];
  size_t len = 0;
  double el = now - pg->t0;
  append(buf, sizeof buf, &len, "[forkpool(n=%d)]: Done %lld", pg->nworkers,
         (long long)pg->done);
  if (pg->total >= 0)
    append(buf, sizeof buf, &len, " of %lld", (long long)pg->total);
  append(buf, sizeof buf, &len, " tasks | elapsed: ");
  append_short_time(buf, sizeof buf, &len, el);
  if (final) {
    append(buf, sizeof buf, &len, " finished");
  } else if (pg->total >= 0 && pg->done > 0) {
    double left = el * (double)(pg->total - pg->done) / (double)pg->done;
    append(buf, sizeof buf, &len, " remaining: ");
    append_short_time(buf, sizeof buf, &len, left);
  }
  append(buf, sizeof buf, &len, "\n");
  write_all(buf, len);
  pg->printed = pg->done;
  pg->last_line = now;
}

/* Detail levels of the text after the bar, richest first; a narrower
 * terminal drops the rate, then the remaining time, then the elapsed time. */
enum { TAIL_FULL, TAIL_NO_RATE, TAIL_ELAPSED, TAIL_COUNT, TAIL_LEVELS };

/* Formats the text after the bar at detail `level` into buf (cap bytes):
 * "| 40/100 [00:01<00:01, 33.30it/s]", "| 40/100 [00:01<00:01]",
 * "| 40/100 [00:01]", "| 40/100"; with an unknown total
 * "40it [00:01, 33.30it/s]", "40it [00:01]", "40it". Returns its length. */
static size_t format_tail(const fp__progress *pg, int level, double el,
                          double rate, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  if (pg->total >= 0)
    append(buf, cap, &len, "| %lld/%lld", (long long)pg->done,
           (long long)pg->total);
  else
    append(buf, cap, &len, "%lldit", (long long)pg->done);
  if (level >= TAIL_COUNT)
    return len;
  append(buf, cap, &len, " [");
  append_clock(buf, cap, &len, el);
  if (pg->total >= 0 && level < TAIL_ELAPSED) {
    append(buf, cap, &len, "<");
    if (pg->done > 0 && rate > 0)
      append_clock(buf, cap, &len, (double)(pg->total - pg->done) / rate);
    else
      append(buf, cap, &len, "?");
  }
  if (level == TAIL_FULL) {
    if (rate >= 1 || pg->done == 0)
      append(buf, cap, &len, ", %.2fit/s", rate);
    else
      append(buf, cap, &len, ", %.2fs/it", 1 / rate);
  }
  append(buf, cap, &len, "]");
  return len;
}

/* Redraws the bar in place ('\r' first, spaces over any leftover of a
 * longer previous bar); `final` ends it with a newline. The visible line
 * is at most term_width() - 1 columns (see the file header for what is
 * dropped to get there), so it never wraps. */
static void emit_bar(fp__progress *pg, double now, int final) {
  char prefix[64], tail[LINE_CAP], buf[LINE_CAP];
  size_t len = 0, tlen = 0;
  double el = now - pg->t0;
  double rate = el > 0 ? (double)pg->done / el : 0;
  int width = term_width() - 1, plen, bar = 0, level, pad, shown;
  int64_t d = pg->total >= 0 && pg->done > pg->total ? pg->total : pg->done;
  double frac = pg->total > 0 ? (double)d / (double)pg->total : 1.0;

  if (width < 0)
    width = 0;
  plen = snprintf(prefix, sizeof prefix, "forkpool(n=%d): ", pg->nworkers);
  if (plen < 0 || plen >= (int)sizeof prefix)
    plen = 0, prefix[0] = '\0';

  /* The richest tail that leaves room for a bar of BAR_MIN characters
   * (with a known total: "100%|" is 5 more) or, with an unknown total and
   * so no bar, that fits at all. */
  for (level = TAIL_FULL; level < TAIL_LEVELS; level++) {
    int room;
    tlen = format_tail(pg, level, el, rate, tail, sizeof tail);
    room = width - plen - (int)tlen - (pg->total >= 0 ? 5 : 0);
    if (pg->total < 0 && room >= 0)
      break;
    if (pg->total >= 0 && room >= BAR_MIN) {
      bar = room < BAR_MAX ? room : BAR_MAX;
      break;
    }
  }

  buf[len++] = '\r';
  if (level < TAIL_LEVELS) {
    append(buf, sizeof buf, &len, "%s", prefix);
    if (pg->total >= 0) {
      int fill = (int)(frac * bar);
      append(buf, sizeof buf, &len, "%3d%%|", (int)(frac * 100));
      for (int i = 0; i < bar && len + 2 < sizeof buf; i++)
        buf[len++] = i < fill ? '#' : ' ';
      buf[len] = '\0';
    }
    append(buf, sizeof buf, &len, "%s", tail);
  } else {
    /* Too narrow for any bar: " 40% 40/100" (or "40it"), after the
     * prefix when it still fits. */
    char core[64];
    size_t clen = 0;
    if (pg->total >= 0)
      append(core, sizeof core, &clen, "%3d%% %lld/%lld", (int)(frac * 100),
             (long long)pg->done, (long long)pg->total);
    else
      append(core, sizeof core, &clen, "%lldit", (long long)pg->done);
    if (plen + (int)clen <= width)
      append(buf, sizeof buf, &len, "%s", prefix);
    append(buf, sizeof buf, &len, "%s", core);
  }
  if ((int)len - 1 > width) /* what still does not fit is cut */
    len = (size_t)width + 1;
  shown = (int)len - 1;

  /* Blank out what is left of a longer previous bar, within the width. */
  pad = (pg->bar_len < width ? pg->bar_len : width) - shown;
  pg->bar_len = shown;
  while (pad-- > 0 && len + 2 < sizeof buf)
    buf[len++] = ' ';
  if (final)
    buf[len++] = '\n';
  write_all(buf, len);
  pg->printed = pg->done;
}

int fp__progress_new(fp__progress **out, fp_progress_mode mode,
                     fp_progress_fn cb, void *cb_arg, int nworkers,
                     int64_t total) {
  fp__progress *pg;
  *out = NULL;
  if (mode == FP_PROGRESS_OFF || mode == FP_PROGRESS_DEFAULT)
    return 0;
  pg = calloc(1, sizeof *pg);
  if (pg == NULL)
    return FP_ENOMEM;
  if (mode == FP_PROGRESS_AUTO)
    mode = isatty(STDERR_FILENO) ? FP_PROGRESS_BAR : FP_PROGRESS_LINES;
  pg->mode = mode;
  pg->cb = cb;
  pg->cb_arg = cb_arg;
  pg->nworkers = nworkers;
  pg->total = total < 0 ? -1 : total;
  pg->printed = -1;
  pg->next_done = 1;
  pg->t0 = now_sec();
  pg->next_tick = pg->t0; /* the first update may report at once */
  pg->last_line = pg->t0 - LINE_MIN_SEC;
  *out = pg;
  return 0;
}

void fp__progress_update(fp__progress *pg, int64_t done) {
  double now;
  if (pg == NULL)
    return;
  pg->done = done;
  now = now_sec();
  if (now < pg->next_tick)
    return; /* the hot path: one clock read, one compare */
  pg->next_tick = now + TICK_SEC;
  if (pg->cb != NULL)
    callback(pg, done, now - pg->t0);
  switch (pg->mode) {
  case FP_PROGRESS_BAR:
    emit_bar(pg, now, 0);
    break;
  case FP_PROGRESS_LINES:
    /* A line per doubling of done, rate-limited, plus a heartbeat. */
    if (done > pg->printed && now - pg->last_line >= LINE_MIN_SEC &&
        (done >= pg->next_done || now - pg->last_line >= LINE_MAX_SEC)) {
      emit_line(pg, now, 0);
      while (pg->next_done <= done)
        pg->next_done *= 2;
    }
    break;
  default:
    break;
  }
}

void fp__progress_set_total(fp__progress *pg, int64_t total) {
  if (pg == NULL)
    return;
  pg->total = total < 0 ? -1 : total;
}

void fp__progress_discard(fp__progress *pg) {
  free(pg);
}

void fp__progress_finish(fp__progress *pg) {
  double now;
  if (pg == NULL)
    return;
  now = now_sec();
  if (pg->mode == FP_PROGRESS_BAR)
    emit_bar(pg, now, 1);
  else if (pg->mode == FP_PROGRESS_LINES)
    emit_line(pg, now, 1);
  if (pg->cb != NULL && pg->q != NULL) {
    pg->final = 1; /* the queued last call frees pg */
    callback(pg, pg->done, now - pg->t0);
    return;
  }
  if (pg->cb != NULL)
    pg->cb(pg->done, pg->total, now - pg->t0, pg->cb_arg);
  free(pg);
}
