/* SPDX-License-Identifier: MIT */
/* procfs.c - the few facts the local link learns about other processes:
 * from /proc, a small file read whole, whether a process is stopped and
 * when it started; a pidfd to wait for one to end or to kill it. Every reader
 * treats "no procfs" (a container without it) or no pidfd as "cannot tell",
 * never as an error. */
#include "pool/local/local.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

ssize_t fp__proc_read(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  return n;
}

/* Reads /proc/<pid>/stat and returns where its third field (the state)
 * starts in buf, or NULL. */
static const char *proc_stat(pid_t pid, char *buf, size_t cap) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (fp__proc_read(path, buf, cap) < 0)
    return NULL;
  /* "pid (comm) S ...": comm may hold spaces and parentheses. */
  const char *p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' ? p + 2 : NULL;
}

int fp__proc_stopped(pid_t pid) {
  char buf[512];
  const char *st = proc_stat(pid, buf, sizeof(buf));
  return st != NULL && (st[0] == 'T' || st[0] == 't');
}

uint64_t fp__proc_start_time(pid_t pid) {
  char buf[512];
  const char *p = proc_stat(pid, buf, sizeof(buf));
  for (int field = 3; p != NULL && field < 22; field++)
    if ((p = strchr(p, ' ')) != NULL)
      p++;
  return p != NULL ? strtoull(p, NULL, 10) : 0;
}

/* A signal through a pidfd reaches the process it was opened for or none:
 * with the start time read after opening it, a reused pid is never hit. */
int fp__proc_kill_same(pid_t pid, uint64_t start) {
  if (start == 0)
    return -1;
  int fd = fp__pidfd_open(pid);
  if (fd < 0 || fp__proc_start_time(pid) != start) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
#ifdef SYS_pidfd_send_signal
  if (syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0) == 0)
    return fd;
#endif
  close(fd);
  return -1;
}

int fp__pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  return -1;
#endif
}
