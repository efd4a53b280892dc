/* SPDX-License-Identifier: MIT */
/* progress.c - the MPI progress thread: the one thread that calls MPI.
 *
 * The pool thread must never block in MPI, and ops are called with the
 * pool's mutex held, on user threads too: they only post messages here
 * (a list append under this thread's own mutex). The thread starts an
 * MPI_Isend for every posted message, tests those in flight, and receives
 * every waiting message with FP__MPI_TAG (MPI_Iprobe, then MPI_Recv of the
 * probed size), queues it and calls notify() (a uv_async_send to the loop
 * that handles it). One thread making every call needs only
 * MPI_THREAD_SERIALIZED from the library.
 *
 * MPI has no descriptor to sleep on, so the thread polls: back to back
 * while messages move, while a send is unfinished (Open MPI moves data
 * only inside MPI calls) and for SPIN_NS after the last message (a reply
 * usually follows within that time); then it sleeps on a condition
 * variable for 10 us, doubling to MAX_SLEEP_US. A post wakes it at once;
 * a message arriving after a long idle time waits at most MAX_SLEEP_US.
 * Measured here (docs/mpi.md): with a 50 or 200 us spin an apply round
 * trip took 1.7-2 ms (a hop that finds its peer asleep waits far longer
 * than the sleep asked for on this VM); with 1 ms it takes about 110 us.
 * The price is up to SPIN_NS of one CPU per message burst and rank; an
 * idle rank costs about two thousand short wake-ups a second.
 */
#include "pool/mpi/mpi_int.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SPIN_NS 1000000
#define MAX_SLEEP_US 500

fp__mbuf *fp__mbuf_new(int peer, int op, int slot, int pid, int arg,
                       size_t extra) {
  fp__mbuf *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return NULL;
  m->len = sizeof(fp__mhdr) + extra;
  if ((m->data = malloc(m->len)) == NULL) {
    free(m);
    return NULL;
  }
  fp__mhdr h = {.op = (uint8_t)op, .slot = slot, .pid = pid, .arg = arg};
  memcpy(m->data, &h, sizeof(h));
  m->peer = peer;
  m->req = MPI_REQUEST_NULL;
  return m;
}

void fp__mbuf_free(fp__mbuf *m) {
  if (m == NULL)
    return;
  free(m->data);
  free(m);
}

static void list_free(fp__mbuf *m) {
  while (m != NULL) {
    fp__mbuf *next = m->next;
    fp__mbuf_free(m);
    m = next;
  }
}

/* Starts a send for every message of list. Returns how many. */
static int start_sends(fp__mprog *p, fp__mbuf *list) {
  int n = 0;
  while (list != NULL) {
    fp__mbuf *m = list;
    list = m->next;
    /* MPI counts are int: a longer payload was refused when it was made
     * (FP__MPI_PAYLOAD_MAX: link_mpi.c for tasks, rank.c for results). */
    MPI_Isend(m->data, (int)m->len, MPI_BYTE, m->peer, FP__MPI_TAG,
              MPI_COMM_WORLD, &m->req);
    m->next = p->sending;
    p->sending = m;
    n++;
  }
  return n;
}

/* Frees the messages whose sends completed. Returns how many. */
static int test_sends(fp__mprog *p) {
  int n = 0;
  for (fp__mbuf **pp = &p->sending; *pp != NULL;) {
    int done = 0;
    MPI_Test(&(*pp)->req, &done, MPI_STATUS_IGNORE);
    if (!done) {
      pp = &(*pp)->next;
      continue;
    }
    fp__mbuf *m = *pp;
    *pp = m->next;
    fp__mbuf_free(m);
    n++;
  }
  return n;
}

/* Receives every waiting message. Returns how many. */
static int receive(fp__mprog *p) {
  int n = 0, flag = 0;
  MPI_Status st;
  for (;;) {
    MPI_Iprobe(MPI_ANY_SOURCE, FP__MPI_TAG, MPI_COMM_WORLD, &flag, &st);
    if (!flag)
      break;
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    fp__mbuf *m = calloc(1, sizeof(*m));
    unsigned char *data = m ? malloc(count > 0 ? (size_t)count : 1) : NULL;
    if (data == NULL) {
      /* Out of memory: retry later rather than drop a message, which
       * would leave a chunk or a death unaccounted for. */
      free(m);
      break;
    }
    MPI_Recv(data, count, MPI_BYTE, st.MPI_SOURCE, FP__MPI_TAG,
             MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    m->data = data;
    m->len = (size_t)count;
    m->peer = st.MPI_SOURCE;
    pthread_mutex_lock(&p->mu);
    if (p->in_tail)
      p->in_tail->next = m;
    else
      p->in = m;
    p->in_tail = m;
    pthread_cond_broadcast(&p->arrived);
    /* Under the lock, so that once fp__mprog_mute() returned no call is
     * under way: the loop it pokes may be closed right after. */
    if (p->notify)
      p->notify(p->arg);
    pthread_mutex_unlock(&p->mu);
    n++;
  }
  return n;
}

static void sleep_a_little(fp__mprog *p, int idle) {
  int shift = idle - 1;
  int64_t us = shift >= 6 ? MAX_SLEEP_US : (int64_t)10 << shift;
  if (us > MAX_SLEEP_US)
    us = MAX_SLEEP_US;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_nsec += us * 1000;
  ts.tv_sec += ts.tv_nsec / 1000000000;
  ts.tv_nsec %= 1000000000;
  p->sleeping = 1;
  pthread_cond_timedwait(&p->wake, &p->mu, &ts);
  p->sleeping = 0;
}

static void *prog_main(void *arg) {
  fp__mprog *p = arg;
  int idle = 0; /* sleeps since the last message */
  int64_t last = fp__mpi_now();
  pthread_mutex_lock(&p->mu);
  for (;;) {
    fp__mbuf *out = p->out;
    p->out = p->out_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    int moved = start_sends(p, out);
    moved += test_sends(p);
    moved += receive(p);
    pthread_mutex_lock(&p->mu);
    if (p->stop && p->out == NULL &&
        (p->sending == NULL || fp__mpi_now() > p->stop_by_ns))
      break;
    if (moved) {
      idle = 0;
      last = fp__mpi_now();
    } else if (p->out == NULL && p->sending == NULL && !p->stop &&
               fp__mpi_now() - last > SPIN_NS) {
      sleep_a_little(p, ++idle);
    } else {
      /* Spinning: let the rank's loop and workers have the CPU first
       * (Open MPI yields by itself only when it sees oversubscription;
       * without this, -n 2 on 2 CPUs ran 30 times slower). */
      pthread_mutex_unlock(&p->mu);
      sched_yield();
      pthread_mutex_lock(&p->mu);
    }
  }
  pthread_mutex_unlock(&p->mu);
  /* Sends a peer never took (it died, or the deadline passed): let MPI
   * finish or drop them on its own; their buffers must then stay valid,
   * so they are leaked (a few, once, at the end). */
  for (fp__mbuf *m = p->sending; m != NULL; m = m->next)
    MPI_Request_free(&m->req);
  p->sending = NULL;
  return NULL;
}

int fp__mprog_start(fp__mprog *p, void (*notify)(void *), void *arg) {
  memset(p, 0, sizeof(*p));
  pthread_mutex_init(&p->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->wake, &ca);
  pthread_cond_init(&p->arrived, &ca);
  pthread_condattr_destroy(&ca);
  p->notify = notify;
  p->arg = arg;
  /* The thread takes no signals: the program's handlers run on its own
   * threads, as they would without the library. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&p->thread, NULL, prog_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0)
    return -rc;
  p->running = 1;
  return 0;
}

void fp__mprog_post(fp__mprog *p, fp__mbuf *m) {
  m->next = NULL;
  pthread_mutex_lock(&p->mu);
  if (p->out_tail)
    p->out_tail->next = m;
  else
    p->out = m;
  p->out_tail = m;
  if (p->sleeping)
    pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->mu);
}

void fp__mprog_mute(fp__mprog *p) {
  pthread_mutex_lock(&p->mu);
  p->notify = NULL;
  pthread_mutex_unlock(&p->mu);
}

fp__mbuf *fp__mprog_take(fp__mprog *p) {
  pthread_mutex_lock(&p->mu);
  fp__mbuf *m = p->in;
  p->in = p->in_tail = NULL;
  pthread_mutex_unlock(&p->mu);
  return m;
}

fp__mbuf *fp__mprog_wait(fp__mprog *p, int64_t deadline_ns) {
  pthread_mutex_lock(&p->mu);
  while (p->in == NULL && fp__mpi_now() < deadline_ns) {
    struct timespec ts = {deadline_ns / 1000000000,
                          deadline_ns % 1000000000};
    pthread_cond_timedwait(&p->arrived, &p->mu, &ts);
  }
  fp__mbuf *m = p->in;
  p->in = p->in_tail = NULL;
  pthread_mutex_unlock(&p->mu);
  return m;
}

void fp__mprog_halt(fp__mprog *p, int64_t deadline_ns) {
  if (!p->running)
    return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  p->stop_by_ns = deadline_ns;
  pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->mu);
  pthread_join(p->thread, NULL);
  p->running = 0;
}

void fp__mprog_notify_last(fp__mprog *p) {
  pthread_mutex_lock(&p->mu);
  if (p->notify)
    p->notify(p->arg);
  p->notify = NULL;
  pthread_mutex_unlock(&p->mu);
}

void fp__mprog_stop(fp__mprog *p, int64_t deadline_ns) {
  if (!p->running)
    return;
  fp__mprog_halt(p, deadline_ns);
  fp__mprog_release(p);
}

void fp__mprog_release(fp__mprog *p) {
  list_free(p->out);
  list_free(p->in);
  p->out = p->out_tail = p->in = p->in_tail = NULL;
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->arrived);
}
