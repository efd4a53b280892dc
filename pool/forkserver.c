/* forkserver.c - the fork server (zygote) that forks every worker.
 *
 * fp_pool_new() forks this process before the pool thread exists. It is
 * single-threaded and idle between requests, so a worker it forks never
 * inherits a lock held by some other thread of the user's program (the
 * fork-with-threads hazard). It talks to the master over one SOCK_SEQPACKET
 * socket (one fp__fs_msg per packet):
 *
 *   SPAWN slot      -> socketpair + fork; the master gets SPAWNED(slot, pid)
 *                      with its end of the socket passed by SCM_RIGHTS
 *   KILL pid sig    -> kill(pid, sig), only if pid is a live child of ours
 *                      (a zombie's pid cannot be reused before we reap it,
 *                      so this is free of pid-reuse races)
 *   SIGCHLD         -> waitpid(WNOHANG) loop; EXITED(slot, pid, status)
 *   EOF on control  -> the master closed the pool or died: SIGKILL what is
 *                      left, reap it, _exit(0)
 *
 * The fork server never allocates memory after start-up and never touches
 * stdio: it uses system calls only.
 */
#include "pool/pool_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio_ext.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The signal mask the master had when the pool was created; workers get it
 * back. Set by the fork server before it blocks SIGCHLD. */
sigset_t fp__fs_orig_mask;
pid_t fp__fs_pid;

/* The registry of library-owned descriptors: the master ends of every
 * pool's control socket and worker sockets. A fork server must not keep
 * another pool's descriptors open (its workers would hold them too, and a
 * worker would then never see EOF when its master closes its end), so it
 * closes every registered descriptor when it starts.
 *
 * Why not simply close every close-on-exec descriptor? Because libuv's
 * pthread_atfork child handler closes and re-creates its own signal pipe by
 * the numbers it remembers: if we had closed that pipe and a worker socket
 * had taken its number, the handler would close our socket in the worker.
 *
 * Lock-free on purpose: the fork server reads it right after fork(), when
 * a mutex could be held by a thread that no longer exists. */
#define FDREG_MAX 4096
static _Atomic int fdreg[FDREG_MAX]; /* fd + 1, 0 = free */

void fp__fdreg_add(int fd) {
  for (int i = 0; i < FDREG_MAX; i++) {
    int expect = 0;
    if (atomic_compare_exchange_strong(&fdreg[i], &expect, fd + 1))
      return;
  }
  /* Full: the descriptor just stays open in later fork servers. */
}

void fp__fdreg_del(int fd) {
  for (int i = 0; i < FDREG_MAX; i++) {
    int expect = fd + 1;
    if (atomic_compare_exchange_strong(&fdreg[i], &expect, 0))
      return;
  }
}

/* Closes every registered descriptor except keep (fork server only). */
static void fdreg_close_all(int keep) {
  for (int i = 0; i < FDREG_MAX; i++) {
    int v = atomic_load(&fdreg[i]);
    if (v != 0 && v - 1 != keep)
      close(v - 1);
  }
}

#define EXIT_GRACE_MS 200

static int64_t fs_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sends one message, with `pass_fd` attached when >= 0. Returns 0 or
 * -errno. Blocking; retried on EINTR. */
static int fs_send(int ctl, int op, int slot, int pid, int arg, int pass_fd) {
  fp__fs_msg m = {op, slot, pid, arg};
  struct iovec iov = {&m, sizeof(m)};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (pass_fd >= 0) {
    memset(&u, 0, sizeof(u));
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  while (sendmsg(ctl, &mh, MSG_NOSIGNAL) < 0) {
    if (errno != EINTR)
      return -errno;
  }
  return 0;
}

typedef struct child {
  pid_t pid;
  int slot;
} child;

/* Reaps every exited child and reports it. */
static void reap(int ctl, child *kids, int nkids) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    int slot = -1;
    for (int i = 0; i < nkids; i++) {
      if (kids[i].pid == pid) {
        slot = kids[i].slot;
        kids[i].pid = 0;
        break;
      }
    }
    if (ctl >= 0)
      fs_send(ctl, FP__FS_EXITED, slot, pid, status, -1);
  }
}

void fp__forkserver_main(fp_pool *pool, int ctl) {
  sigset_t chld;
  fp__fs_pid = getpid();
  /* Output buffered by the master before the fork belongs to the master:
   * drop our copy so it is never printed twice. */
  __fpurge(stdout);
  __fpurge(stderr);
  fdreg_close_all(ctl);
  /* Handlers the master installed are the master's business: the fork
   * server and the workers start as after exec(), with every caught signal
   * back to its default action (ignored ones stay ignored). Without this a
   * handler meant for the master (a test harness's SIGTERM handler that
   * kills its process group, say) would run inside a worker. */
  for (int sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) != 0)
      continue;
    if (!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_IGN &&
        sig != SIGCHLD)
      continue;
    if ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_DFL)
      signal(sig, SIG_DFL);
  }
  /* SIGCHLD is back to SIG_DFL above: SIG_IGN would auto-reap and hide
   * exit statuses. */
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &fp__fs_orig_mask);
  sigdelset(&fp__fs_orig_mask, SIGCHLD);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0)
    _exit(127);

  /* Room for every slot's current process plus ones being killed. */
  int nkids = pool->nworkers * 4 + 16;
  child kids[nkids];
  memset(kids, 0, sizeof(kids));

  for (;;) {
    struct pollfd pf[2] = {{ctl, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (pf[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof(si)) > 0) {
      }
      reap(ctl, kids, nkids);
    }
    if (!pf[0].revents)
      continue;
    fp__fs_msg m;
    ssize_t n = recv(ctl, &m, sizeof(m), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break; /* EOF: the master closed the pool or died */
    if (n != sizeof(m))
      continue;
    if (m.op == FP__FS_KILL) {
      for (int i = 0; i < nkids; i++)
        if (kids[i].pid == m.pid && m.pid > 0)
          kill(m.pid, m.arg);
    } else if (m.op == FP__FS_SPAWN) {
      int sv[2];
      int free_i = -1;
      for (int i = 0; i < nkids; i++)
        if (kids[i].pid == 0) {
          free_i = i;
          break;
        }
      if (free_i < 0) {
        fs_send(ctl, FP__FS_FAILED, m.slot, 0, EAGAIN, -1);
        continue;
      }
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        fs_send(ctl, FP__FS_FAILED, m.slot, 0, errno, -1);
        continue;
      }
      /* Bigger socket buffers: a 1 MiB value then crosses in one or two
       * writes instead of five, each a wake-up of the other side. The
       * kernel caps the size at net.core.wmem_max/rmem_max; failure only
       * means the default stays. */
      for (int k = 0; k < 2; k++) {
        int sz = FP__SOCKBUF;
        setsockopt(sv[k], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        setsockopt(sv[k], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
      }
      pid_t pid = fork();
      if (pid < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        fs_send(ctl, FP__FS_FAILED, m.slot, 0, e, -1);
        continue;
      }
      if (pid == 0) {
        close(ctl);
        close(sfd);
        close(sv[0]);
        fp__worker_main(pool, m.slot, sv[1]);
      }
      kids[free_i].pid = pid;
      kids[free_i].slot = m.slot;
      close(sv[1]);
      fs_send(ctl, FP__FS_SPAWNED, m.slot, pid, 0, sv[0]);
      close(sv[0]);
    }
  }

  /* The master is gone or done: nothing we forked may outlive it. The
   * workers saw EOF on their sockets too (the master's ends are closed) and
   * idle ones are exiting by themselves; give them EXIT_GRACE_MS, then
   * SIGKILL whatever is still running. */
  int64_t deadline = fs_now_ms() + EXIT_GRACE_MS;
  for (;;) {
    int left = 0;
    for (int i = 0; i < nkids; i++)
      left += kids[i].pid > 0;
    int64_t now = fs_now_ms();
    if (left == 0 || now >= deadline)
      break;
    struct pollfd pf = {sfd, POLLIN, 0};
    poll(&pf, 1, (int)(deadline - now));
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof(si)) > 0) {
    }
    reap(-1, kids, nkids);
  }
  for (int i = 0; i < nkids; i++)
    if (kids[i].pid > 0)
      kill(kids[i].pid, SIGKILL);
  for (;;) {
    pid_t pid = waitpid(-1, NULL, 0);
    if (pid < 0 && errno == EINTR)
      continue;
    if (pid < 0)
      break;
  }
  _exit(0);
}
