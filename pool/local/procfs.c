/* SPDX-License-Identifier: MIT */
/* procfs.c - the few facts the local link learns about other processes:
 * from /proc, a small file read whole and whether a process is stopped;
 * a pidfd to wait for one to end. Every reader treats "no procfs" (a
 * container without it) or no pidfd as "cannot tell", never as an error. */
#include "pool/local/local.h"

#include <fcntl.h>
#include <stdio.h>
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

int fp__proc_stopped(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (fp__proc_read(path, buf, sizeof(buf)) < 0)
    return 0;
  /* "pid (comm) S ...": comm may hold spaces and parentheses. */
  const char *p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' && (p[2] == 'T' || p[2] == 't');
}

int fp__pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  return -1;
#endif
}
