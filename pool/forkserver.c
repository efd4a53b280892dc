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
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The signal mask the master had when the pool was created; workers get it
 * back. Set by the fork server before it blocks SIGCHLD. */
sigset_t fp__fs_orig_mask;
pid_t fp__fs_pid;

struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

void fp__close_cloexec_fds(int keep1, int keep2) {
  char buf[4096];
  int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return;
  /* Collect first, close after: closing while reading the directory would
   * change what we are reading. 1024 descriptors per pass, repeated. */
  for (;;) {
    int fds[1024];
    int n = 0;
    lseek(dfd, 0, SEEK_SET);
    long nread;
    while (n < 1024 &&
           (nread = syscall(SYS_getdents64, dfd, buf, sizeof(buf))) > 0) {
      for (long off = 0; off < nread;) {
        struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
        off += d->d_reclen;
        if (d->d_name[0] < '0' || d->d_name[0] > '9')
          continue;
        int fd = 0;
        for (const char *p = d->d_name; *p; p++)
          fd = fd * 10 + (*p - '0');
        if (fd < 3 || fd == dfd || fd == keep1 || fd == keep2)
          continue;
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0 && (fl & FD_CLOEXEC) && n < 1024)
          fds[n++] = fd;
      }
    }
    for (int i = 0; i < n; i++)
      close(fds[i]);
    if (n < 1024)
      break;
  }
  close(dfd);
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
  fp__close_cloexec_fds(ctl, -1);
  signal(SIGCHLD, SIG_DFL); /* SIG_IGN would auto-reap and hide statuses */
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

  /* The master is gone or done: nothing we forked may outlive it. */
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
