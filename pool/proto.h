/* SPDX-License-Identifier: MIT */
/* proto.h - what the master, the fork server and the workers share.
 *
 * Everything in this header crosses fork() or the wire; nothing else
 * does. A worker never sees the master's fp_pool: it gets an fp__wconf
 * (below) and the descriptors and shared memory of its link.
 *
 * Messages between the scheduler and a worker are frames (ipc/wire/frame.c
 * writes and parses every frame header: a u32 little-endian length, then
 * the payload). A payload starts with one of the headers below, in the
 * host's byte order: every process that speaks it runs the same binary on
 * the same kind of machine (the MPI link requires the same of its ranks).
 */
#ifndef FP_POOL_PROTO_H
#define FP_POOL_PROTO_H

#include "forkpool.h"

#include <stddef.h>
#include <stdint.h>

#define FP__MSG_LEN 512 /* longest task failure message kept */

/* Bytes of a frame besides the items or results of a chunk: the header of
 * either kind of message, the frame prefix and alignment padding. A chunk
 * is cut so that its items fit in max_frame - FP__FRAME_OVERHEAD. */
#define FP__FRAME_OVERHEAD 256

/* ---- function references (fnref.c) ---------------------------------- */

/* A function named by the ELF module that holds it and its offset from the
 * module's load address. The module is identified by its load address and
 * a hash of its path, GNU build-id and segment layout, so the resolver
 * finds the same module or none, never another one that took its place in
 * the module list. kind == UINT32_MAX: `offset` is the raw address of code
 * outside every module (accepted only inside an executable mapping; valid
 * under fork only). 32 bytes, fixed layout; see fnref.c. */
typedef struct fp__fnref {
  uint32_t kind;   /* 0: module + offset; UINT32_MAX: raw address */
  uint32_t pad;    /* 0 */
  uint64_t offset; /* from the module's load address, or the raw address */
  uint64_t base;   /* the module's load address (dlpi_addr); raw: 0 */
  uint64_t ident;  /* hash of the module's path, build-id, layout; raw: 0 */
} fp__fnref;

int fp__fnref_make(const void *fn, fp__fnref *out);
void *fp__fnref_resolve(const fp__fnref *ref);

/* ---- worker messages -------------------------------------------------- */

enum {
  FP__MSG_TASK = 1, /* scheduler -> worker: run a chunk */
  FP__MSG_READY,    /* worker -> scheduler: initializer done */
  FP__MSG_RESULT,   /* worker -> scheduler: a chunk's results */
  FP__MSG_RETIRE,   /* worker -> scheduler: maxtasksperchild reached */
  FP__MSG_KICK,     /* worker -> link: a result waits in shared memory */
  FP__MSG_PART      /* worker -> link: a slice of a RESULT larger than
                       max_frame (below) */
};

/* A chunk's RESULT payload larger than max_frame travels as PART frames:
 * each is this header, then the next bytes of the payload; the one with
 * `last` set completes it, and the link hands the whole payload on as if
 * one frame had brought it. So a chunk's results are not bound by
 * max_frame (which bounds what one frame may make the master allocate on
 * the word of a length prefix), but by FP__RESULT_MAX, or max_frame when
 * that is larger: results beyond fail the chunk's items with FP_EMSGSIZE.
 * 1 GiB keeps them well within what an MPI message can hold (an int). */
typedef struct fp__part_hdr {
  uint8_t type; /* FP__MSG_PART */
  uint8_t last;
  uint8_t pad[6];
} fp__part_hdr;
#define FP__RESULT_MAX ((size_t)1 << 30)

/* Largest RESULT payload of one chunk for a link with this max_frame. */
static inline size_t fp__result_limit(size_t max_frame) {
  return max_frame > FP__RESULT_MAX ? max_frame : FP__RESULT_MAX;
}

/* How a chunk's items and results are encoded. */
enum {
  FP__WIRE_FIXED = 1, /* fixed-size elements, memcpy'd */
  FP__WIRE_VALUES,    /* one codec value per item */
  FP__WIRE_STAR       /* one codec list per item: the call's arguments */
};

#define FP__TASK_TIMED 1 /* publish the start time of every item */
#define FP__TASK_WHOLE 2 /* apply: the whole payload is one item's args */

typedef struct fp__task_hdr {
  uint8_t type;      /* FP__MSG_TASK */
  uint8_t wire;
  uint8_t flags;
  uint8_t pad;
  uint32_t count;    /* items in the chunk */
  uint64_t seq;      /* chunk id, unique per pool */
  int64_t start;     /* input index of the first item */
  uint32_t in_size;  /* FIXED: element sizes */
  uint32_t out_size;
  fp__fnref fn;
  uint64_t items_len; /* bytes of items; zero padding follows them */
} fp__task_hdr; /* followed by FP__HDR_PAD zero bytes, the items, padding */

/* Every task frame is a multiple of FP__FRAME_ALIGN bytes long and its
 * items start FP__FRAME_ALIGN-aligned within the frame, so a worker that
 * reads frames back to back into an aligned buffer hands fixed-size tasks
 * element pointers aligned like a C array (an int64_t or double element is
 * never misaligned). */
#define FP__FRAME_ALIGN 16
/* Zero bytes between the header and the items. */
#define FP__HDR_PAD                                                           \
  ((FP__FRAME_ALIGN - (4 + sizeof(fp__task_hdr)) % FP__FRAME_ALIGN) %        \
   FP__FRAME_ALIGN)
/* Zero bytes after `items_len` bytes of items. */
#define FP__ITEMS_PAD(items_len)                                              \
  ((FP__FRAME_ALIGN - (items_len) % FP__FRAME_ALIGN) % FP__FRAME_ALIGN)

/* READY, RESULT, RETIRE and KICK start with this header; only RESULT
 * fills more than `type`. */
typedef struct fp__res_hdr {
  uint8_t type;
  uint8_t pad[3];
  uint32_t count;    /* items */
  uint64_t seq;
  uint32_t nerr;     /* failed items; their records follow the header */
  int32_t cpu;
  uint64_t errs_len; /* bytes of error records, then the item results */
} fp__res_hdr;

/* An error record: fp__err_rec then msg_len bytes of message (no NUL). */
typedef struct fp__err_rec {
  int64_t index;
  int32_t code;
  uint32_t msg_len;
} fp__err_rec;

/* ---- how a worker process ends ------------------------------------------ */

/* Exit statuses with a meaning; any other status is the task's own exit()
 * (or a signal). */
typedef enum fp__wexit {
  FP__WEXIT_OK = 0,      /* EOF from the master, or retired */
  FP__WEXIT_SEND = 123,  /* a result could not be sent */
  FP__WEXIT_PROTO = 124, /* the master's frame made no sense */
  FP__WEXIT_INIT = 125,  /* the user's initializer returned non-zero */
  FP__WEXIT_PIN = 126,   /* pinning to the planned CPU failed */
  FP__WEXIT_SETUP = 127  /* the fork server could not set itself up */
} fp__wexit;

/* ---- what a worker is told ---------------------------------------------- */

/* The worker configuration: what crosses fork() from the master to the
 * fork server and every worker, copied from the resolved pool options.
 * Pointers in it point into memory the master allocated before the fork
 * server was forked, so they stay valid in the children. */
typedef struct fp__wconf {
  int nworkers;
  size_t max_frame;
  unsigned maxtasksperchild;       /* 0: unlimited */
  size_t memory_limit;             /* RLIMIT_AS in bytes; 0: none */
  int (*initializer)(void *arg);   /* NULL: none */
  void *initarg;
  const int *cpu_of_worker;        /* nworkers CPUs (-1: any); NULL: none */
  size_t result_limit; /* largest RESULT payload of one chunk, when what
                          carries it further is smaller (an MPI message);
                          0: fp__result_limit(max_frame) */
} fp__wconf;

/* Largest RESULT payload of one chunk under c: fp__result_limit(), or
 * c->result_limit when that is smaller. */
static inline size_t fp__wconf_result_limit(const fp__wconf *c) {
  size_t limit = fp__result_limit(c->max_frame);
  return c->result_limit != 0 && c->result_limit < limit ? c->result_limit
                                                         : limit;
}

#endif
