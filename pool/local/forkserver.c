/* SPDX-License-Identifier: MIT */
/* forkserver.c - the fork server (zygote) that forks every worker of the
 * local link.
 *
 * fsclient.c forks this process before the pool thread exists. It is
 * single-threaded and idle between requests, so a worker it forks never
 * inherits a lock held by some other thread of the user's program (the
 * fork-with-threads hazard). It talks to the master over one SOCK_SEQPACKET
 * socket (one fp__fs_msg per packet):
 *
 *   SPAWN slot      -> socketpair + fork; the master gets SPAWNED(slot, pid)
 *                      with its end of the socket passed by SCM_RIGHTS, or
 *                      FAILED(slot, errno) when no worker could be made
 *   KILL pid sig    -> kill(pid, sig), only if pid is a live child of ours
 *                      (a zombie's pid cannot be reused before we reap it,
 *                      so this is free of pid-reuse races)
 *   SIGCHLD         -> waitpid(WNOHANG) loop; EXITED(slot, pid, status)
 *   EOF on control,
 *   or master death -> the master closed the pool or died: SIGKILL what is
 *                      left, reap it, _exit
 *
 * Every SPAWN is answered by exactly one of: SPAWNED, later followed by
 * exactly one EXITED for that pid; or FAILED, and nothing more. FAILED
 * comes when the socketpair or the fork fails (EMFILE, ENFILE, EAGAIN ...),
 * when the slot is out of range or the child table is full, and also when
 * the SPAWNED message itself cannot be sent (sendmsg fails, so the master
 * never got the socket): that worker is killed at once and reaped without
 * an EXITED, since the master never heard of it.
 *
 * Master death is noticed three ways. EOF on the control socket is the
 * usual one. The control socket may stay open, though, when some other
 * process inherited the master's end (the user's program forked without
 * exec), so the server also polls a pidfd of the master when the kernel
 * has pidfd_open (Linux 5.3). And a fork server that is stopped (SIGSTOP,
 * a debugger, a cgroup freezer) polls nothing: for that it has
 * PR_SET_PDEATHSIG, which delivers SIGKILL even to a stopped process -
 * set only when the master's main thread forked it, since the signal
 * follows the forking thread, not the process.
 * Workers die with the fork server by their own PR_SET_PDEATHSIG.
 *
 * A worker inherits none of the server's descriptors: the control socket,
 * the signalfd and the pidfd are closed in the child, the server holds no
 * other worker's socket while it forks (it closes both ends right after
 * each spawn), and the registered descriptors of the master's pools were
 * closed when the server started (fdreg.c). Worker sockets never take fds
 * 0-2, which a daemon may have closed (a task's printf would go down the
 * socket).
 *
 * The fork server never allocates memory after start-up and never touches
 * stdio: it uses system calls only.
 */
#include "pool/local/local.h"
#include "pool/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_GRACE_MS 200

typedef struct child {
  pid_t pid; /* 0: free entry */
  int slot;
  int quiet; /* reap without reporting: the master never heard of it */
} child;

typedef struct fserver {
  const fp__wconf *cfg;
  const fp__shm_view *v; /* the master's private view of the mapping */
  int ctl;   /* control socket to the master */
  int sfd;   /* signalfd for SIGCHLD */
  int pidfd; /* the master's pidfd, or -1 */
  pid_t master;
  int by_main_thread; /* the master's main thread forked us */
  pid_t self;
  sigset_t mask; /* the master's signal mask, for the workers */
  sigset_t shielded; /* ignored here, back to default in the workers */
  child *kids;
  int nkids;
} fserver;

static int64_t now_ms(void) {
  return fp__now_ns() / 1000000;
}

/* Sends one message, with pass_fd attached when >= 0. Blocking; retried
 * on EINTR. Returns 0 or -errno. */
static int fs_send(int ctl, int op, int slot, int pid, int arg, int pass_fd) {
  fp__fs_msg m = {op, slot, pid, arg, 0};
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

/* Empties the signalfd; SIGCHLDs coalesce, so the count does not matter. */
static void drain_signals(int sfd) {
  struct signalfd_siginfo si;
  while (read(sfd, &si, sizeof(si)) > 0) {
  }
}

/* Reaps every exited child. With report set, each one the master knows
 * of gets its EXITED; a send that fails is dropped (the master is gone,
 * and the loop sees that next). */
static void reap(fserver *fs, int report) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < fs->nkids; i++) {
      child *k = &fs->kids[i];
      if (k->pid != pid)
        continue;
      if (report && !k->quiet)
        fs_send(fs->ctl, FP__FS_EXITED, k->slot, pid, status, -1);
      k->pid = 0;
      break;
    }
  }
}

/* ---- start-up ------------------------------------------------------------ */

/* Handlers the master installed are the master's business: the fork
 * server and the workers start as after exec(), with every caught signal
 * back to its default action (ignored ones stay ignored, except SIGCHLD,
 * whose SIG_IGN would auto-reap and hide exit statuses). Without this a
 * handler meant for the master (a test harness's SIGTERM handler that
 * kills its process group, say) would run inside a worker. SIGCHLD gets
 * a plain default whatever it had: SA_NOCLDWAIT, which even a SIG_DFL
 * disposition may carry, auto-reaps too. */
static void reset_signals(void) {
  for (int sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) != 0)
      continue;
    if (sig == SIGCHLD) {
      struct sigaction dfl;
      memset(&dfl, 0, sizeof(dfl));
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      sigaction(SIGCHLD, &dfl, NULL);
      continue;
    }
    if (!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_IGN)
      continue;
    if ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_DFL)
      signal(sig, SIG_DFL);
  }
}

/* Signals that a terminal or a shell sends to a whole process group
 * (Ctrl-C, Ctrl-backslash, a hang-up, `kill -TERM -pgid`). The fork server is
 * in the user's group, and with the default action one of them would kill it
 * and break the pool for good, even when the program catches the signal
 * to carry on. It ignores those that are at their default after
 * reset_signals(); the workers get the default back (become_worker), so
 * they still die as documented and are replaced. The server needs none of
 * them to end: it leaves when the master does (EOF, pidfd, PDEATHSIG). */
static const int group_sigs[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};
#define N_GROUP_SIGS (sizeof(group_sigs) / sizeof(group_sigs[0]))

static void shield_signals(fserver *fs) {
  sigemptyset(&fs->shielded);
  for (size_t i = 0; i < N_GROUP_SIGS; i++) {
    struct sigaction sa;
    int sig = group_sigs[i];
    if (sigaction(sig, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
        sa.sa_handler == SIG_DFL && signal(sig, SIG_IGN) != SIG_ERR)
      sigaddset(&fs->shielded, sig);
  }
}

/* Opens a pidfd of the master, or returns -1 when the kernel (or a seccomp
 * filter) has no pidfd_open: then EOF on the control socket and the
 * parent-death signal are the only ways to notice master death. */
static int open_master_pidfd(pid_t master) {
  int fd = fp__pidfd_open(master);
  if (fd < 0)
    return -1;
  int above = fp__fd_above_stdio(fd);
  if (above < 0) {
    close(fd);
    return -1;
  }
  return above;
}

/* Everything before the loop: parent-death signal, the check that the
 * master is still our parent, descriptors, signals, the signalfd. Exits
 * with FP__WEXIT_SETUP on failure. */
static void fs_start(fserver *fs) {
  /* PR_SET_PDEATHSIG follows the thread that forked us, not the process:
   * if that thread exits while the master lives on, this server would be
   * killed. So it is set only when the master's main thread forked us
   * (which lives as long as the process); otherwise the pidfd and EOF on
   * the control socket tell us the master died. See the file header. */
  if (fs->by_main_thread)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Before this process opens anything: every registered number is then
   * one of the master's library descriptors, never one of ours. */
  fp__fdreg_close_all(fs->ctl);
  fp__mapreg_unmap_others(fs->v->hdr); /* other pools' memory */
  /* The pidfd is opened before the parent check: if the master is still
   * our parent after the pidfd exists, the pidfd is the master's (a dead
   * parent's pid is never ours again, so the check cannot pass late). */
  fs->pidfd = open_master_pidfd(fs->master);
  if (getppid() != fs->master)
    _exit(FP__WEXIT_SETUP); /* the master died before the signal was set */
  fs->self = getpid();
  /* Output buffered by the master before the fork belongs to the master:
   * drop our copy so it is never printed twice. */
  __fpurge(stdout);
  __fpurge(stderr);
  reset_signals();
  shield_signals(fs);
  /* The shielded signals are blocked as well as ignored: a child forked
   * here ignores them until become_worker() restores the default, and
   * one sent to the group in that window would be lost, leaving that
   * worker alive while its siblings die. Blocked, it stays pending in the
   * child and strikes when worker_start() sets the task mask. */
  sigset_t chld, held = fs->mask;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  for (size_t i = 0; i < N_GROUP_SIGS; i++)
    if (sigismember(&fs->shielded, group_sigs[i]) == 1)
      sigaddset(&held, group_sigs[i]);
  sigaddset(&held, SIGCHLD);
  /* Until here every signal was blocked (fp__fs_fork() in fsclient.c):
   * what arrived meanwhile is delivered now, with our dispositions. */
  sigprocmask(SIG_SETMASK, &held, NULL);
  sigdelset(&fs->mask, SIGCHLD);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0)
    _exit(FP__WEXIT_SETUP);
  fs->sfd = fp__fd_above_stdio(sfd);
  if (fs->sfd < 0)
    _exit(FP__WEXIT_SETUP);
}

/* ---- spawning ------------------------------------------------------------ */

/* Makes a worker's socket pair, both ends above fd 2, with big buffers.
 * Returns 0 or -errno (nothing left open). */
static int make_pair(int sv[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  for (int k = 0; k < 2; k++) {
    int fd = fp__fd_above_stdio(sv[k]);
    if (fd < 0) {
      close(sv[0]);
      close(sv[1]);
      return fd;
    }
    sv[k] = fd;
  }
  /* Bigger socket buffers: a 1 MiB value then crosses in one or two
   * writes instead of five, each a wake-up of the other side. The kernel
   * caps the size at net.core.wmem_max/rmem_max; failure only means the
   * default stays. */
  for (int k = 0; k < 2; k++) {
    int sz = FP__SOCKBUF;
    setsockopt(sv[k], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(sv[k], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
  }
  return 0;
}

/* In the new child: closes what a worker must not hold and becomes the
 * worker of slot. Never returns. */
static void become_worker(const fserver *fs, int slot, const int sv[2])
    __attribute__((noreturn));
static void become_worker(const fserver *fs, int slot, const int sv[2]) {
  fp__wboot boot;
  close(fs->ctl);
  close(fs->sfd);
  if (fs->pidfd >= 0)
    close(fs->pidfd);
  close(sv[0]);
  for (size_t i = 0; i < N_GROUP_SIGS; i++)
    if (sigismember(&fs->shielded, group_sigs[i]) == 1)
      signal(group_sigs[i], SIG_DFL);
  memset(&boot, 0, sizeof(boot));
  boot.slot = slot;
  boot.fd = sv[1];
  boot.parent = fs->self;
  boot.mask = fs->mask;
  boot.v = fs->v;
  fp__worker_main(fs->cfg, &boot);
}

/* Handles SPAWN(slot): answers with SPAWNED or FAILED (see the file
 * header for the one-answer rule). */
static void fs_spawn(fserver *fs, int slot) {
  child *k = NULL;
  for (int i = 0; i < fs->nkids && k == NULL; i++)
    if (fs->kids[i].pid == 0)
      k = &fs->kids[i];
  if (slot < 0 || slot >= fs->v->nslots || slot >= fs->cfg->nworkers) {
    fs_send(fs->ctl, FP__FS_FAILED, slot, 0, EINVAL, -1);
    return;
  }
  if (k == NULL) {
    fs_send(fs->ctl, FP__FS_FAILED, slot, 0, EAGAIN, -1);
    return;
  }
  int sv[2];
  int rc = make_pair(sv);
  if (rc < 0) {
    fs_send(fs->ctl, FP__FS_FAILED, slot, 0, -rc, -1);
    return;
  }
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(sv[0]);
    close(sv[1]);
    fs_send(fs->ctl, FP__FS_FAILED, slot, 0, e, -1);
    return;
  }
  if (pid == 0)
    become_worker(fs, slot, sv);
  close(sv[1]);
  k->pid = pid;
  k->slot = slot;
  k->quiet = 0;
  rc = fs_send(fs->ctl, FP__FS_SPAWNED, slot, pid, 0, sv[0]);
  close(sv[0]);
  if (rc < 0) {
    /* The master never got the socket, so it cannot use this worker:
     * kill it now and let reap() collect it without an EXITED. */
    kill(pid, SIGKILL);
    k->quiet = 1;
    fs_send(fs->ctl, FP__FS_FAILED, slot, 0, -rc, -1);
  }
}

/* Signals worker pid of slot; an aimed signal is for one chunk. It is
 * not sent at all when the worker is no longer running that chunk (an
 * ignored signal would still interrupt the next task's system call with
 * EINTR); it carries the chunk's seq for the worker's handler, which
 * ignores it if the worker moved on between this check and delivery. */
static void send_kill(fserver *fs, int slot, pid_t pid, int sig,
                      uint64_t aim) {
  if (aim != 0) {
    if (slot >= 0 && slot < fs->v->nslots &&
        atomic_load(&fs->v->slots[slot].seq) != aim)
      return;
    union sigval v = {.sival_ptr = (void *)(uintptr_t)aim};
    if (sigqueue(pid, sig, v) == 0 || errno == ESRCH)
      return;
  }
  kill(pid, sig);
}

/* Handles one control message. Returns 0 to go on, 1 when the master
 * closed its end or the socket failed. */
static int fs_control(fserver *fs) {
  fp__fs_msg m;
  ssize_t n = recv(fs->ctl, &m, sizeof(m), 0);
  if (n < 0 && errno == EINTR)
    return 0;
  if (n <= 0)
    return 1; /* EOF: the master closed the pool or died */
  if (n != sizeof(m))
    return 0;
  if (m.op == FP__FS_KILL && m.pid > 0) {
    for (int i = 0; i < fs->nkids; i++)
      if (fs->kids[i].pid == m.pid)
        send_kill(fs, m.slot, m.pid, m.arg, m.aim);
  } else if (m.op == FP__FS_SPAWN) {
    fs_spawn(fs, m.slot);
  }
  return 0;
}

/* Serves requests until the master closes the control socket or dies. */
static void fs_loop(fserver *fs) {
  for (;;) {
    struct pollfd pf[3] = {{fs->ctl, POLLIN, 0},
                           {fs->sfd, POLLIN, 0},
                           {fs->pidfd, POLLIN, 0}}; /* -1: ignored */
    if (poll(pf, 3, -1) < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    if (pf[1].revents) {
      drain_signals(fs->sfd);
      reap(fs, 1);
    }
    if (pf[2].revents)
      return; /* the master is gone, whoever still holds its socket */
    if (pf[0].revents && fs_control(fs) != 0)
      return;
  }
}

/* The master is gone or done: nothing we forked may outlive it. The
 * workers saw EOF on their sockets too (the master's ends are closed) and
 * idle ones are exiting by themselves; give them EXIT_GRACE_MS, then
 * SIGKILL whatever is still running and reap everything. Never returns. */
static void fs_shutdown(fserver *fs) __attribute__((noreturn));
static void fs_shutdown(fserver *fs) {
  int64_t deadline = now_ms() + EXIT_GRACE_MS;
  for (;;) {
    int left = 0;
    for (int i = 0; i < fs->nkids; i++)
      left += fs->kids[i].pid > 0;
    int64_t now = now_ms();
    if (left == 0 || now >= deadline)
      break;
    struct pollfd pf = {fs->sfd, POLLIN, 0};
    poll(&pf, 1, (int)(deadline - now));
    drain_signals(fs->sfd);
    reap(fs, 0);
  }
  for (int i = 0; i < fs->nkids; i++)
    if (fs->kids[i].pid > 0)
      kill(fs->kids[i].pid, SIGKILL);
  for (;;) {
    pid_t pid = waitpid(-1, NULL, 0);
    if (pid < 0 && errno == EINTR)
      continue;
    if (pid < 0)
      break;
  }
  _exit(FP__WEXIT_OK);
}

void fp__forkserver_main(const fp__wconf *cfg, const fp__shm_view *v, int ctl,
                         pid_t master, int by_main_thread,
                         const sigset_t *mask) {
  fserver fs;
  memset(&fs, 0, sizeof(fs));
  fs.cfg = cfg;
  fs.v = v;
  fs.ctl = ctl;
  fs.master = master;
  fs.by_main_thread = by_main_thread;
  fs.mask = *mask;
  fs_start(&fs);
  /* Room for every slot's current process plus ones being killed. */
  int nkids = cfg->nworkers * 4 + 16;
  child kids[nkids];
  memset(kids, 0, sizeof(kids));
  fs.kids = kids;
  fs.nkids = nkids;
  fs_loop(&fs);
  fs_shutdown(&fs);
}
