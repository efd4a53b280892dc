/* SPDX-License-Identifier: MIT */
/* check_ring.c - tests of the local link's rings (pool/local/ring.c).
 *
 * Task rings (master -> worker) and result rings (worker -> master):
 * entries that wrap around the end many times come out whole and in
 * order; a full ring refuses a frame until the consumer releases space;
 * forged positions and frame headers are reported as corrupt, never read
 * out of bounds (the SANITIZE=1 build checks that); a producer killed in
 * the middle of a message leaves nothing visible; and a stress test runs
 * a producer and a consumer in two processes (and, for ThreadSanitizer,
 * two threads) through the futex sleep and wake, checking every byte.
 */
#include "pool/link.h"
#include "pool/local/local.h"
#include "ipc/wire/frame.h"
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void teardown(void) {
  fp_test_no_children();
}

/* A zeroed ring in shared memory, so that forked children share it. */
static void *shared(size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(p, MAP_FAILED);
  return p;
}

/* Fills buf with bytes that depend on the message number k. */
static void pattern(unsigned char *buf, size_t len, uint64_t k) {
  for (size_t i = 0; i < len; i++)
    buf[i] = (unsigned char)(k * 31 + i * 7);
}

/* Message k's length: 12 .. about 40 KiB, a multiple of 16 minus the
 * frame header, as task frames are. */
static size_t msg_len(uint64_t k) {
  return ((k * 2654435761u) % 2500) * 16 + 12;
}

/* Puts message k (its number in the first 8 bytes) at *tail. */
static int put_msg(fp__tring *r, uint64_t *tail, uint64_t k) {
  static unsigned char buf[64 * 1024];
  size_t len = msg_len(k);
  pattern(buf, len, k);
  memcpy(buf, &k, sizeof(k));
  struct iovec iov = {buf, len};
  return fp__tring_put(r, tail, &iov, 1, len, NULL);
}

static void check_msg(const unsigned char *p, size_t len, uint64_t k) {
  static unsigned char want[64 * 1024];
  ck_assert_uint_eq(len, msg_len(k));
  pattern(want, len, k);
  memcpy(want, &k, sizeof(k));
  ck_assert_int_eq(memcmp(p, want, len), 0);
  ck_assert_uint_eq((uintptr_t)(p - FP__FRAME_HDR) % FP__FRAME_ALIGN, 0);
}

START_TEST(tring_wraps_around_many_times_in_order) {
  fp__tring *r = shared(sizeof(*r));
  uint64_t tail = 0, pos = 0, got = 0;
  for (uint64_t k = 0; k < 2000; k++) {
    ck_assert_int_eq(put_msg(r, &tail, k), 0);
    fp__tring_publish(r, tail);
    const unsigned char *p;
    size_t len;
    while (got + 3 < k && fp__tring_next(r, &pos, &p, &len) == 1) {
      check_msg(p, len, got++);
      fp__tring_release(r, pos);
    }
  }
  ck_assert_uint_gt(tail, 20 * (uint64_t)FP__TRING_SIZE);
  munmap(r, sizeof(*r));
}
END_TEST

START_TEST(tring_full_refuses_until_released) {
  fp__tring *r = shared(sizeof(*r));
  uint64_t tail = 0, pos = 0;
  unsigned char big[FP__TRING_MAX];
  memset(big, 7, sizeof(big));
  struct iovec iov = {big, sizeof(big) - FP__FRAME_HDR};
  int n = 0;
  while (fp__tring_put(r, &tail, &iov, 1, iov.iov_len, NULL) == 0)
    n++;
  ck_assert_int_eq(n, FP__TRING_SIZE / FP__TRING_MAX);
  /* local.h's bound: a full batch of the largest inline frames, a wrap's
   * waste and a marker always fit. */
  ck_assert_int_ge(n, FP__LINK_MAX_BATCH + 1);
  fp__tring_publish(r, tail);
  const unsigned char *p;
  size_t len;
  ck_assert_int_eq(fp__tring_next(r, &pos, &p, &len), 1);
  ck_assert_int_eq(fp__tring_put(r, &tail, &iov, 1, iov.iov_len, NULL), -1);
  fp__tring_release(r, pos);
  ck_assert_int_eq(fp__tring_put(r, &tail, &iov, 1, iov.iov_len, NULL), 0);
  /* Over FP__TRING_MAX never goes in, whatever the space. */
  struct iovec huge = {big, FP__TRING_MAX + 16};
  ck_assert_int_eq(fp__tring_put(r, &tail, &huge, 1, huge.iov_len, NULL), -1);
  munmap(r, sizeof(*r));
}
END_TEST

START_TEST(tring_forged_positions_and_headers_are_corrupt) {
  fp__tring *r = shared(sizeof(*r));
  uint64_t tail = 0, pos;
  const unsigned char *p;
  size_t len;
  unsigned char m[12] = {1};
  struct iovec iov = {m, sizeof(m)};
  /* A head past the tail, or more than a ring behind it: no write. */
  atomic_store(&r->head, 64);
  ck_assert_int_eq(fp__tring_put(r, &tail, &iov, 1, sizeof(m), NULL), -1);
  atomic_store(&r->head, 0);
  tail = 2 * (uint64_t)FP__TRING_SIZE;
  ck_assert_int_eq(fp__tring_put(r, &tail, &iov, 1, sizeof(m), NULL), -1);
  /* A tail more than a ring ahead, or a misaligned position. */
  atomic_store(&r->tail, 2 * (uint64_t)FP__TRING_SIZE);
  pos = 0;
  ck_assert_int_eq(fp__tring_next(r, &pos, &p, &len), -1);
  atomic_store(&r->tail, 64);
  pos = 8;
  ck_assert_int_eq(fp__tring_next(r, &pos, &p, &len), -1);
  /* A frame header longer than the published bytes, or than the end. */
  pos = 0;
  fp__frame_put_hdr(r->data, 1000);
  ck_assert_int_eq(fp__tring_next(r, &pos, &p, &len), -1);
  atomic_store(&r->head, FP__TRING_SIZE - 16);
  atomic_store(&r->tail, FP__TRING_SIZE + 4096);
  pos = FP__TRING_SIZE - 16;
  fp__frame_put_hdr(r->data + FP__TRING_SIZE - 16, 4000);
  ck_assert_int_eq(fp__tring_next(r, &pos, &p, &len), -1);
  munmap(r, sizeof(*r));
}
END_TEST

/* A tail that is not a position the producer could have reached
 * (unaligned, as a task can forge in shared memory) is refused and nothing
 * is written: at size - 1 the wrap marker went 3 bytes past the data. The
 * ring lies at the end of a mapping followed by a PROT_NONE page, so a
 * byte written past it is a crash (and an ASan report). */
START_TEST(put_refuses_unaligned_tail) {
  long page = sysconf(_SC_PAGESIZE);
  size_t len = (sizeof(fp__tring) + (size_t)page - 1) & ~((size_t)page - 1);
  unsigned char *m = mmap(NULL, len + (size_t)page, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(m, MAP_FAILED);
  ck_assert_int_eq(mprotect(m + len, (size_t)page, PROT_NONE), 0);
  fp__tring *r = (fp__tring *)(m + len - sizeof(fp__tring));
  unsigned char msg[100] = {7};
  struct iovec iov = {msg, sizeof(msg)};
  uint64_t odd[] = {FP__TRING_SIZE - 1, FP__TRING_SIZE - 3, 5,
                    2 * FP__TRING_SIZE - 1};
  for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
    uint64_t tail = odd[i];
    atomic_store(&r->head, odd[i] & ~(uint64_t)(FP__FRAME_ALIGN - 1));
    ck_assert_int_eq(fp__tring_put(r, &tail, &iov, 1, sizeof(msg), NULL), -1);
    ck_assert_uint_eq(tail, odd[i]);
  }
  for (size_t i = 0; i < FP__TRING_SIZE; i++)
    ck_assert_uint_eq(r->data[i], 0);
  munmap(m, len + (size_t)page);
}
END_TEST

START_TEST(ring_forged_result_header_is_corrupt) {
  fp__ring *r = shared(sizeof(*r));
  uint64_t pos = 0;
  const unsigned char *p;
  size_t len;
  fp__frame_put_hdr(r->data, FP__RING_MAX + 8);
  atomic_store(&r->tail, FP__RING_SIZE);
  ck_assert_int_eq(fp__ring_next(r, &pos, &p, &len), -1);
  unsigned char m[20] = {3};
  struct iovec iov = {m, sizeof(m)};
  atomic_store(&r->tail, 0);
  ck_assert_int_eq(fp__ring_put(r, &iov, 1, sizeof(m)), 0);
  ck_assert_int_eq(fp__ring_next(r, &pos, &p, &len), 1);
  ck_assert_uint_eq(len, sizeof(m));
  ck_assert_int_eq(memcmp(p, m, sizeof(m)), 0);
  munmap(r, sizeof(*r));
}
END_TEST

START_TEST(tring_producer_killed_mid_message_publishes_nothing) {
  fp__tring *r = shared(sizeof(*r));
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    uint64_t tail = 0;
    put_msg(r, &tail, 1); /* written, never published */
    raise(SIGKILL);
  }
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFSIGNALED(st));
  uint64_t pos = 0;
  const unsigned char *p;
  size_t len;
  ck_assert_int_eq(fp__tring_next(r, &pos, &p, &len), 0);
  munmap(r, sizeof(*r));
}
END_TEST

START_TEST(tring_consumer_killed_asleep_leaves_producer_free) {
  fp__tring *r = shared(sizeof(*r));
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    for (;;)
      fp__tring_sleep(r, 0);
  }
  while (atomic_load(&r->sleeping) == 0)
    usleep(100);
  kill(pid, SIGKILL);
  ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
  uint64_t tail = 0;
  ck_assert_int_eq(put_msg(r, &tail, 0), 0);
  if (fp__tring_publish(r, tail))
    fp__tring_wake(r); /* nobody waits: returns at once */
  munmap(r, sizeof(*r));
}
END_TEST

/* ---- stress: producer and consumer through sleep and wake ---------------- */

#define STRESS_N 20000

/* Consumes STRESS_N messages, sleeping whenever the ring is empty (every
 * other time it spins a little first). Returns the number of bad ones. */
static int consume(fp__tring *r) {
  uint64_t pos = 0;
  int bad = 0;
  for (uint64_t k = 0; k < STRESS_N; k++) {
    const unsigned char *p;
    size_t len;
    int rc, spins = (k & 1) ? 200 : 0;
    while ((rc = fp__tring_next(r, &pos, &p, &len)) == 0) {
      if (spins-- > 0)
        fp__cpu_relax();
      else
        fp__tring_sleep(r, pos);
    }
    uint64_t got;
    memcpy(&got, p, sizeof(got));
    bad += rc != 1 || got != k || len != msg_len(k);
    fp__tring_release(r, pos);
  }
  return bad;
}

/* Produces STRESS_N messages in bursts, waking the consumer when it said
 * it sleeps; waits (yielding) while the ring is full. */
static void produce(fp__tring *r) {
  uint64_t tail = 0;
  for (uint64_t k = 0; k < STRESS_N; k++) {
    while (put_msg(r, &tail, k) != 0)
      sched_yield();
    if ((k % 7) == 0 || k + 1 == STRESS_N) {
      if (fp__tring_publish(r, tail))
        fp__tring_wake(r);
      if ((k % 5) == 0)
        usleep(1);
    }
  }
}

START_TEST(tring_stress_two_processes) {
  fp__tring *r = shared(sizeof(*r));
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(consume(r) == 0 ? 0 : 1);
  produce(r);
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  munmap(r, sizeof(*r));
}
END_TEST

static void *consumer_thread(void *arg) {
  return (void *)(intptr_t)consume(arg);
}

START_TEST(tring_stress_two_threads) {
  fp__tring *r = shared(sizeof(*r));
  pthread_t t;
  void *bad;
  ck_assert_int_eq(pthread_create(&t, NULL, consumer_thread, r), 0);
  produce(r);
  pthread_join(t, &bad);
  ck_assert_int_eq((int)(intptr_t)bad, 0);
  munmap(r, sizeof(*r));
}
END_TEST

/* ---- the CPU budget and skip marks of a worker's slot ------------------ */

/* A worker that exits while counted in the budget is taken out once, by
 * the master, and one that left before exiting is not taken out again. */
START_TEST(budget_drops_a_worker_that_died_counted_once) {
  void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(m, MAP_FAILED);
  fp__local_shm *shm = m;
  fp__slot *slot = (fp__slot *)((char *)m + 1024);
  for (int leaves = 0; leaves < 2; leaves++) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      fp__budget_join_slot(shm, slot);
      if (leaves)
        fp__budget_leave_slot(shm, slot);
      _exit(0); /* as a worker does at maxtasksperchild, or is killed */
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_int_eq(atomic_load(&shm->active), leaves ? 0 : 1);
    fp__budget_drop_slot(shm, slot);
    ck_assert_int_eq(atomic_load(&shm->active), 0);
    fp__budget_drop_slot(shm, slot);
    ck_assert_int_eq(atomic_load(&shm->active), 0);
  }
  munmap(m, 4096);
}
END_TEST

/* The skip handshake of local.h, step by step from one thread. */
START_TEST(skip_marks_are_claimed_or_withdrawn_once) {
  fp__slot slot;
  memset(&slot, 0, sizeof slot);
  atomic_store(&slot.seq, 3); /* the worker runs chunk 3 */
  ck_assert_int_eq(fp__slot_skip(&slot, 7), 0); /* 7 not reached: marked */
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 5), 0);
  atomic_store(&slot.seq, 7);
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 7), 1); /* skipped */
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 7), 0); /* once */
  atomic_store(&slot.seq, 9); /* started before the master marked it */
  ck_assert_int_eq(fp__slot_skip(&slot, 9), 1);        /* withdrawn: kill */
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 9), 0); /* so it runs */
  for (int i = 0; i < FP__SLOT_SKIPS; i++)
    ck_assert_uint_eq(atomic_load(&slot.skip[i]), 0); /* nothing left */
  /* Full: asks fail softly (the chunk then runs, its result dropped). */
  for (uint64_t q = 100; q < 100 + FP__SLOT_SKIPS; q++)
    ck_assert_int_eq(fp__slot_skip(&slot, q), 0);
  ck_assert_int_eq(fp__slot_skip(&slot, 500), 0);
  atomic_store(&slot.seq, 500);
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 500), 0);
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 100), 1);
}
END_TEST

/* A mark set for a chunk the worker had already finished (a cancel that
 * crossed its result) is never claimed; the chunk's RESULT withdraws it.
 * Without that, 16 such cancels filled the marks and every later cancel
 * of a queued chunk let it run (and of a running one sent no kill). */
START_TEST(skip_marks_of_finished_chunks_are_withdrawn) {
  fp__slot slot;
  memset(&slot, 0, sizeof slot);
  for (uint64_t q = 1; q <= 4 * FP__SLOT_SKIPS; q++) {
    atomic_store(&slot.seq, 0); /* q finished: the worker is idle */
    ck_assert_int_eq(fp__slot_skip(&slot, q), 0); /* marked, never claimed */
    fp__slot_unskip(&slot, q);                    /* q's RESULT came */
  }
  for (int i = 0; i < FP__SLOT_SKIPS; i++)
    ck_assert_uint_eq(atomic_load(&slot.skip[i]), 0);
  /* A running chunk is still told apart from a queued one. */
  atomic_store(&slot.seq, 1000);
  ck_assert_int_eq(fp__slot_skip(&slot, 1000), 1);
  ck_assert_int_eq(fp__slot_skip(&slot, 1001), 0);
  atomic_store(&slot.seq, 1001);
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 1001), 1);
}
END_TEST

/* Taking a chunk back (local.h, fp__slot_recall) must tell a chunk the
 * worker has not reached from one it has already finished, which a skip
 * mark alone cannot: slot->seq has moved past both. */
START_TEST(recall_tells_a_finished_chunk_from_a_queued_one) {
  fp__slot slot;
  memset(&slot, 0, sizeof slot);
  atomic_store(&slot.taken, 2); /* frames 1 and 2 done, the worker idle */
  ck_assert_int_eq(fp__slot_recall(&slot, 20, 2), 1); /* ran: keep it */
  ck_assert_int_eq(fp__slot_skip(&slot, 20), 0);      /* skip cannot tell */
  fp__slot_unskip(&slot, 20);
  ck_assert_int_eq(fp__slot_recall(&slot, 30, 3), 0); /* not reached */
  atomic_store(&slot.taken, 3);
  atomic_store(&slot.seq, 30);
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 30), 1); /* so not run */
  atomic_store(&slot.seq, 40);
  atomic_store(&slot.taken, 4);
  ck_assert_int_eq(fp__slot_recall(&slot, 40, 4), 1); /* running */
  ck_assert_int_eq(fp__slot_claim_skip(&slot, 40), 0);
  for (int i = 0; i < FP__SLOT_SKIPS; i++)
    ck_assert_uint_eq(atomic_load(&slot.skip[i]), 0);
  /* No free entry: not taken back, it runs where it is. */
  for (uint64_t q = 100; q < 100 + FP__SLOT_SKIPS; q++)
    ck_assert_int_eq(fp__slot_recall(&slot, q, 5 + q), 0);
  ck_assert_int_eq(fp__slot_recall(&slot, 500, 500), 1);
}
END_TEST

/* A worker thread begins frames 1..N in order while the master takes
 * frames back as fast as it can: every frame the master was told it got
 * back is skipped by the worker, and every other frame runs, exactly. */
enum { RECALL_FRAMES = 200000 };

typedef struct recall_race {
  fp__slot slot;
  unsigned char *skipped, *recalled;
} recall_race;

static uint64_t frame_seq(uint64_t nth) {
  return nth * 7 + 1;
}

static void *recall_worker(void *arg) {
  recall_race *rr = arg;
  for (uint64_t k = 1; k <= RECALL_FRAMES; k++) {
    atomic_store(&rr->slot.taken, k);
    atomic_store(&rr->slot.seq, frame_seq(k));
    rr->skipped[k] =
        (unsigned char)fp__slot_claim_skip(&rr->slot, frame_seq(k));
    for (volatile int spin = 0; spin < (int)(k % 64); spin++) {
    }
  }
  return NULL;
}

START_TEST(recall_never_lets_a_frame_run_twice_or_vanish) {
  recall_race *rr = calloc(1, sizeof(*rr));
  rr->skipped = calloc(RECALL_FRAMES + 1, 1);
  rr->recalled = calloc(RECALL_FRAMES + 1, 1);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, recall_worker, rr), 0);
  for (uint64_t k = 1; k <= RECALL_FRAMES; k++) {
    rr->recalled[k] = fp__slot_recall(&rr->slot, frame_seq(k), k) == 0;
  }
  pthread_join(t, NULL);
  for (uint64_t k = 1; k <= RECALL_FRAMES; k++)
    ck_assert_msg(rr->recalled[k] == rr->skipped[k],
                  "frame %llu: taken back %d, skipped by the worker %d",
                  (unsigned long long)k, rr->recalled[k], rr->skipped[k]);
  for (int i = 0; i < FP__SLOT_SKIPS; i++)
    ck_assert_uint_eq(atomic_load(&rr->slot.skip[i]), 0);
  free(rr->skipped);
  free(rr->recalled);
  free(rr);
}
END_TEST

Suite *ring_suite(void) {
  Suite *s = suite_create("ring");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, tring_wraps_around_many_times_in_order);
  tcase_add_test(tc, tring_full_refuses_until_released);
  tcase_add_test(tc, tring_forged_positions_and_headers_are_corrupt);
  tcase_add_test(tc, ring_forged_result_header_is_corrupt);
  tcase_add_test(tc, put_refuses_unaligned_tail);
  tcase_add_test(tc, tring_producer_killed_mid_message_publishes_nothing);
  tcase_add_test(tc, tring_consumer_killed_asleep_leaves_producer_free);
  tcase_add_test(tc, tring_stress_two_processes);
  tcase_add_test(tc, tring_stress_two_threads);
  tcase_add_test(tc, budget_drops_a_worker_that_died_counted_once);
  tcase_add_test(tc, skip_marks_are_claimed_or_withdrawn_once);
  tcase_add_test(tc, skip_marks_of_finished_chunks_are_withdrawn);
  tcase_add_test(tc, recall_tells_a_finished_chunk_from_a_queued_one);
  tcase_add_test(tc, recall_never_lets_a_frame_run_twice_or_vanish);
  suite_add_tcase(s, tc);
  return s;
}
