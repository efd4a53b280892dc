/* SPDX-License-Identifier: MIT */
/* nolink_missing.c - FP_TRANSPORT_MPI without libforkpool_mpi: a clear
 * error, never a crash.
 *
 * Linked with the core only, by the plain compiler, and run without
 * mpirun: with FP_MPI_LIBRARY naming a file that does not exist, and with
 * nothing to find at all (nothing beside the program, nothing on the
 * search path), fp_pool_new() fails with FP_ENOTSUP and a message that
 * says how to get the library. An unknown transport is FP_EINVAL, and a
 * local pool still works in the same program.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int one(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, 1);
}

static void c_missing(void *env) {
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  fp_pool *p = NULL;
  if (env)
    setenv("FP_MPI_LIBRARY", env, 1);
  else
    unsetenv("FP_MPI_LIBRARY");
  int rc = fp_pool_new(&p, &o);
  EXPECT(rc == FP_ENOTSUP && p == NULL, "%s", fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), "FP_TRANSPORT_MPI") &&
             strstr(fp_last_error(), "-lforkpool_mpi"),
         "message: %s", fp_last_error());
  printf("  message: %s\n", fp_last_error());
}

static void c_unknown(void *a) {
  (void)a;
  fp_pool_opts o = {.transport = (fp_transport)7, .processes = 1};
  fp_pool *p = NULL;
  EXPECT(fp_pool_new(&p, &o) == FP_EINVAL && p == NULL, "unknown transport");
}

static void c_local_still_works(void *a) {
  (void)a;
  fp_pool_opts o = {.processes = 1};
  fp_pool *p = NULL;
  EXPECT(fp_pool_new(&p, &o) == 0, "local pool: %s", fp_last_error());
  EXPECT(p && fp_pool_apply(p, one, NULL, NULL) == 0, "apply");
  fp_pool_free(p);
}

/* The library is looked for beside the program that holds the core, as
 * the kernel knows it (/proc/self/exe), never beside argv[0], which the
 * caller picks: run from a directory holding a decoy
 * libforkpool_mpi.so.0, under the relative name "./nolink_missing", the
 * program must not open the decoy. (Run by c_decoy, re-executed.) */
static void c_decoy_ignored(void *a) {
  (void)a;
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  fp_pool *p = NULL;
  unsetenv("FP_MPI_LIBRARY");
  int rc = fp_pool_new(&p, &o);
  EXPECT(rc == FP_ENOTSUP && p == NULL, "%s", fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), "./libforkpool_mpi") == NULL &&
             strstr(fp_last_error(), "too short") == NULL,
         "the decoy was opened: %s", fp_last_error());
}

static void c_decoy(void *a) {
  (void)a;
  char dir[] = "/tmp/fp-decoy-XXXXXX", lib[64];
  EXPECT(mkdtemp(dir) != NULL, "mkdtemp");
  snprintf(lib, sizeof(lib), "%s/libforkpool_mpi.so.0", dir);
  FILE *f = fopen(lib, "w");
  EXPECT(f != NULL, "decoy");
  if (f == NULL)
    return;
  fputs("not a library\n", f);
  fclose(f);
  pid_t pid = fork();
  if (pid == 0) {
    char *args[] = {"./nolink_missing", "--decoy", NULL};
    if (chdir(dir) == 0)
      execv("/proc/self/exe", args);
    _exit(127);
  }
  int st = -1;
  waitpid(pid, &st, 0);
  EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "decoy run: status %d", st);
  unlink(lib);
  rmdir(dir);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--decoy") == 0) {
    mt_run("library_beside_argv0_is_not_opened", c_decoy_ignored, NULL);
    return mt_done();
  }
  mt_run("named_library_missing_is_enotsup", c_missing,
         "/nonexistent/libforkpool_mpi.so.0");
  mt_run("no_library_anywhere_is_enotsup", c_missing, NULL);
  mt_run("unknown_transport_is_einval", c_unknown, NULL);
  mt_run("local_pool_unaffected", c_local_still_works, NULL);
  mt_run("decoy_beside_a_relative_argv0", c_decoy, NULL);
  return mt_done();
}
