/* SPDX-License-Identifier: MIT */
/* fsclient.c - the fork server from the master's side (llink.h): forking
 * it with its control socket, sending it requests (queued in order while
 * the socket is full), receiving its reports with the descriptors they
 * carry, watching it while a worker's EXITED is due (a stopped server
 * would never send it), and reaping it at the end.
 */
#include "pool/local/llink.h"
#include "pool/clock.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Sends one message; 0, -EAGAIN when the socket is full, or -errno. */
static int fs_send_now(llink *l, const fp__fs_msg *m) {
  for (;;) {
    ssize_t n = send(l->fs_fd, m, sizeof(*m), MSG_NOSIGNAL);
    if (n == (ssize_t)sizeof(*m))
      return 0;
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EWOULDBLOCK)
      return -EAGAIN;
    return n < 0 ? -errno : FP_EPROTO;
  }
}

/* Sends what waits in the queue, in order, until the socket is full.
 * Returns 0 or -errno (not -EAGAIN). */
int fp__fs_flush_queue(llink *l) {
  size_t i = 0;
  int rc = 0;
  while (i < l->ctl_len && (rc = fs_send_now(l, &l->ctl_q[i])) == 0)
    i++;
  memmove(l->ctl_q, l->ctl_q + i, (l->ctl_len - i) * sizeof(*l->ctl_q));
  l->ctl_len -= i;
  return rc == -EAGAIN ? 0 : rc;
}

/* Sends a request to the fork server (the owner's lock held). The master's
 * end is non-blocking, and the server answers every SPAWN with a message
 * carrying a descriptor: a pool asking for hundreds of workers before its
 * loop reads any answer fills both directions, and a server blocked on
 * its answer reads no more requests. So what does not fit waits here, in
 * order, and the loop sends it when the socket drains (fs_on_io): a
 * request is never refused for a full socket. 0, FP_EPIPE (the server is
 * gone), FP_ENOMEM or -errno. */
int fp__fs_send(llink *l, int op, int slot, int pid, int arg, uint64_t aim) {
  fp__fs_msg m = {op, slot, pid, arg, aim};
  if (l->fs_fd < 0 || l->lost)
    return FP_EPIPE;
  int rc = l->ctl_len > 0 ? -EAGAIN : fs_send_now(l, &m);
  if (rc != -EAGAIN)
    return rc;
  if (l->ctl_len == l->ctl_cap) {
    size_t cap = l->ctl_cap ? 2 * l->ctl_cap : 64;
    fp__fs_msg *q = realloc(l->ctl_q, cap * sizeof(*q));
    if (q == NULL)
      return FP_ENOMEM;
    l->ctl_q = q;
    l->ctl_cap = cap;
  }
  l->ctl_q[l->ctl_len++] = m;
  if (l->started)
    uv_async_send(&l->flush); /* on_flush watches for room */
  return 0;
}

/* Makes the control socket pair (registered, above stdio). */
static int control_pair(int sv[2]) {
  fp__fdreg_lock();
  int rc = socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0
               ? -errno
               : 0;
  rc = fp__fdreg_add_pair_locked(sv, rc);
  fp__fdreg_unlock();
  return rc;
}

/* Forks the fork server with the control socket. */
int fp__fs_fork(llink *l) {
  int sv[2];
  int rc = fp__fdreg_init();
  if (rc == 0)
    rc = control_pair(sv);
  if (rc != 0)
    return rc;
  pid_t master = getpid();
  /* Every signal waits while the child is being set up: until it resets
   * its dispositions it would run the program's handlers, and a Ctrl-C
   * before it ignores the group signals would kill it. It gets what
   * arrived once its own dispositions are in place. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int by_main = gettid() == master, pid = fork();
  if (pid == 0) /* closes sv[0] with the other registered descriptors */
    fp__forkserver_main(&l->cfg, &l->v, sv[1], master, by_main, &old);
  rc = pid < 0 ? -errno : 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    fp__fdreg_close(sv[0]);
    fp__fdreg_close(sv[1]);
    return rc;
  }
  fp__fdreg_close(sv[1]);
  l->fs_pid = pid;
  l->fs_fd = sv[0];
  return 0;
}

/* Takes the descriptor that came with a message (if any): above stdio and
 * registered, in the same fdreg section as the recvmsg() that made it.
 * Returns it, -EMFILE when none came (a SPAWNED whose socket did not fit
 * in the descriptor table arrives without it), or -errno. */
static int take_passed_fd(const struct msghdr *mh) {
  struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
  if (cm == NULL || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
    return -EMFILE;
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  int above = fp__fd_above_stdio(fd);
  if (above < 0) {
    close(fd);
    return above;
  }
  fp__fdreg_add_locked(above);
  return above;
}

/* Receives one fork server message; returns 0, 1 when none is waiting,
 * -1 at EOF. *fd: see take_passed_fd(). */
int fp__fs_recv(llink *l, fp__fs_msg *m, int *fd) {
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct iovec iov = {m, sizeof(*m)};
  struct msghdr mh = {.msg_iov = &iov,
                      .msg_iovlen = 1,
                      .msg_control = u.buf,
                      .msg_controllen = sizeof(u.buf)};
  *fd = -EMFILE;
  ssize_t n;
  fp__fdreg_lock();
  do
    n = recvmsg(l->fs_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  int err = errno;
  if (n > 0)
    *fd = take_passed_fd(&mh);
  fp__fdreg_unlock();
  if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK))
    return 1;
  if (n <= 0)
    return -1;
  if (n != (ssize_t)sizeof(*m)) {
    fp__fdreg_close(*fd);
    *fd = -EMFILE;
    m->op = 0; /* ignored */
  }
  return 0;
}

/* Checks the due EXITED reports; past one, while the fork server is
 * stopped, kills it, and its end is then handled as any (fs_gone: every
 * worker dies with it, by PDEATHSIG). Stops when none is due. */
void fp__fs_watch(uv_timer_t *t) {
  llink *l = t->data;
  int64_t now = fp__now_ns();
  int due = 0;
  l->ev.enter(l->ev.ctx);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    int64_t d = l->slots[i].pid != 0 ? l->slots[i].exit_due_ns : 0;
    due |= d != 0;
    if (d != 0 && now >= d && !l->lost && fp__proc_stopped(l->fs_pid)) {
      kill(l->fs_pid, SIGKILL); /* our child: reaped by free() only */
      break;
    }
  }
  if (!due || l->lost) {
    uv_timer_stop(&l->watch);
    l->watching = 0;
  }
  l->ev.leave(l->ev.ctx);
}

/* slot's EXITED is now due within FP__FS_STUCK_NS (unless due already).
 * Any thread holding the owner's lock may get here (a caller draining the
 * rings, a submitter): the loop thread starts the watch (on_flush). */
void fp__fs_expect_exit(llink *l, int slot) {
  lslot *s = &l->slots[slot];
  if (s->pid == 0 || s->exit_due_ns != 0 || !l->started)
    return;
  s->exit_due_ns = fp__now_ns() + FP__FS_STUCK_NS;
  if (!l->watching && !l->watch_wanted) {
    l->watch_wanted = 1;
    uv_async_send(&l->flush);
  }
}

/* Says how the fork server ended, for the pool's error message. Its wait
 * status is read without reaping it (WNOWAIT: free() reaps it). The EOF
 * that told us it died can come a moment before it is a zombie, so this
 * looks for up to 100 ms; a program that reaps every child itself (a
 * SIGCHLD handler calling waitpid(-1)) leaves nothing to read. */
void fp__fs_death_message(const llink *l, char *buf, size_t len) {
  static const char what[] = "the pool's fork server died";
  for (int i = 0; i < 100; i++) {
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, l->fs_pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
      break;
    if (si.si_pid == l->fs_pid && si.si_code == CLD_EXITED) {
      snprintf(buf, len, "%s (it exited with status %d)", what, si.si_status);
      return;
    }
    if (si.si_pid == l->fs_pid) { /* worded as deaths.c words workers' */
      const char *abbrev = sigabbrev_np(si.si_status);
      const char *descr = sigdescr_np(si.si_status);
      snprintf(buf, len, "%s (killed by signal SIG%s (%s))", what,
               abbrev ? abbrev : "?", descr ? descr : "unknown");
      return;
    }
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  snprintf(buf, len, "%s", what);
}

/* Reaps the fork server after the EOF on its socket, which it answers
 * within milliseconds: it SIGKILLs what is left of its workers, reaps
 * them and exits. One that is stopped (SIGSTOP, a debugger, a freezer)
 * never would, and join or free would wait for ever: as fp__fs_watch does
 * while the pool runs, a stopped one is SIGKILLed, and so is one that has
 * not exited after FP__FS_STUCK_NS. It is waited for on a pidfd, which wakes
 * the caller the moment it exits; without one, by polls that back off
 * from 20 us to 10 ms. */
void fp__fs_reap(pid_t pid) {
  int64_t deadline = fp__now_ns() + FP__FS_STUCK_NS;
  int pfd = fp__pidfd_open(pid);
  long pause_ns = 20000;
  pid_t r;

  while ((r = waitpid(pid, NULL, WNOHANG)) == 0 || (r < 0 && errno == EINTR)) {
    if (r == 0 && pfd >= 0) {
      struct pollfd p = {.fd = pfd, .events = POLLIN};
      if (poll(&p, 1, 10) == 1)
        continue; /* it exited: reap it */
    } else if (r == 0) {
      nanosleep(&(struct timespec){0, pause_ns}, NULL);
      pause_ns = pause_ns < 10000000 ? pause_ns * 2 : pause_ns;
    }
    if (r == 0 && (fp__proc_stopped(pid) || fp__now_ns() >= deadline)) {
      kill(pid, SIGKILL);
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
      }
      break;
    }
  }
  if (pfd >= 0)
    close(pfd);
}