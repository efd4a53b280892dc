/* SPDX-License-Identifier: MIT */
/* stdfd.c - keeping the loop's descriptors off the standard streams.
 *
 * A daemon may start the pool with descriptors 0, 1 or 2 closed. Then the
 * next descriptor the process opens takes that number: libuv's epoll
 * descriptor, its eventfd or its signal pipe would become "stdin", and
 * libuv asserts when it closes a descriptor <= 2 (uv__close). While the
 * pool's loop is made, the free standard slots are filled with /dev/null
 * and given back afterwards, so the loop lands above them and the
 * program's standard streams stay as the program left them. (Sockets the
 * links create are moved above 2 by themselves: fp__fd_above_stdio.)
 */
#include "pool/pool_int.h"

#include <fcntl.h>
#include <unistd.h>

void fp__stdfd_hold(int held[3]) {
  held[0] = held[1] = held[2] = 0;
  int fd;
  /* open() returns the lowest free number: repeat until it is above 2,
   * i.e. until every standard slot is taken. */
  while ((fd = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0 && fd <= 2)
    held[fd] = 1;
  if (fd > 2)
    close(fd);
}

void fp__stdfd_release(const int held[3]) {
  for (int i = 0; i < 3; i++)
    if (held[i])
      close(i);
}
