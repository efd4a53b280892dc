/* SPDX-License-Identifier: MIT */
/* limits.c - the MPI link at the edges of memory and message size.
 *
 * Run as `mpirun -n 2 limits`. The worker rank runs under a soft
 * RLIMIT_AS a little above what it uses when it starts (its workers,
 * forked by its fork server, are given room by memory_limit), so it can
 * receive a worker's 200 MiB result but has no memory for the copy that
 * would carry it on to rank 0. Cases:
 *   - that result fails its item with FP_ENOMEM, as when the local
 *     master cannot buffer a frame, and the pool goes on (the rank used
 *     to drop the result and say nothing: the call waited for ever);
 *   - with max_frame at its largest (UINT32_MAX), an argument over what
 *     one MPI message carries is refused at submission with FP_EMSGSIZE
 *     naming the link's cap, and the pool goes on (it used to be sent,
 *     fail in the link and cost the worker its life).
 * Memory: about 2.3 GB on rank 0 for the second case.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static fp_pool *pool;

/* Task [n]: a bytes value of n bytes. */
static int big_result(fp_reader *args, fp_writer *out) {
  int64_t n;
  void *d;
  int rc = fp_read_int(args, &n);
  if (rc == 0)
    rc = fp_write_bytes_begin(out, (size_t)n, &d);
  if (rc == 0)
    memset(d, 7, (size_t)n);
  return rc;
}

/* Applies big_result for n bytes within 60 s; returns its outcome. */
static int apply_big(int64_t n, char *msg, size_t len) {
  fp_writer args;
  fp_result *r;
  fp_writer_init(&args);
  fp_write_int(&args, n);
  int rc = fp_pool_apply_async(pool, big_result, &args, NULL, &r);
  fp_writer_free(&args);
  if (rc != 0)
    return rc;
  rc = fp_result_get(r, 60);
  const char *why = rc != 0 ? fp_result_error(r) : NULL;
  snprintf(msg, len, "%s", why != NULL ? why : "");
  fp_result_free(r);
  return rc;
}

static void result_the_rank_cannot_carry_fails_with_enomem(void *arg) {
  char msg[512];
  (void)arg;
  int rc = apply_big((int64_t)200 << 20, msg, sizeof(msg));
  EXPECT(rc == FP_ENOMEM, "%s: %s", fp_err_name(rc), msg);
  EXPECT(strstr(msg, "out of memory") != NULL, "'%s'", msg);
  rc = apply_big(10, msg, sizeof(msg));
  EXPECT(rc == 0, "a small result afterwards: %s: %s", fp_err_name(rc), msg);
}

static void argument_over_one_message_is_refused(void *arg) {
  size_t n = ((size_t)1 << 31) + 4096;
  char msg[512];
  fp_writer args;
  void *d;
  (void)arg;
  fp_writer_init(&args);
  EXPECT(fp_write_bytes_begin(&args, n, &d) == 0, "no memory for the test");
  if (args.err == 0) {
    memset(d, 1, n);
    int rc = fp_pool_apply(pool, big_result, &args, NULL);
    EXPECT(rc == FP_EMSGSIZE, "%s: %s", fp_err_name(rc), fp_last_error());
    EXPECT(strstr(fp_last_error(), "max_frame 2147483") != NULL, "'%s'",
           fp_last_error());
  }
  fp_writer_free(&args);
  int rc = apply_big(10, msg, sizeof(msg));
  EXPECT(rc == 0, "a small result afterwards: %s: %s", fp_err_name(rc), msg);
}

/* VmSize of this process, in bytes. */
static size_t vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  size_t kb = 0;
  while (f != NULL && fgets(line, sizeof(line), f) != NULL)
    if (strncmp(line, "VmSize:", 7) == 0)
      kb = (size_t)atol(line + 7);
  if (f != NULL)
    fclose(f);
  return kb << 10;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *rank = getenv("OMPI_COMM_WORLD_RANK");
  if (rank != NULL && strcmp(rank, "0") != 0) {
    /* Room to receive a 200 MiB result, not to copy it as well. */
    struct rlimit rl = {.rlim_cur = vm_size() + ((size_t)400 << 20),
                        .rlim_max = RLIM_INFINITY};
    setrlimit(RLIMIT_AS, &rl);
  }
  fp_pool_opts o = {0};
  o.transport = FP_TRANSPORT_MPI;
  o.processes = 1;
  o.memory_limit = (size_t)8 << 30; /* the workers' own room */
  o.max_frame = UINT32_MAX;
  int rc = fp_pool_new(&pool, &o);
  if (rc != 0) {
    printf("fp_pool_new: %s: %s\n", fp_err_name(rc), fp_last_error());
    return 1;
  }
  mt_run("result_the_rank_cannot_carry_fails_with_enomem",
         result_the_rank_cannot_carry_fails_with_enomem, NULL);
  mt_run("argument_over_one_message_is_refused",
         argument_over_one_message_is_refused, NULL);
  fp_pool_free(pool);
  return mt_done();
}
