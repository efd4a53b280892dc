/* SPDX-License-Identifier: MIT */
/* forkpool.h - the one public header of forkpool.
 *
 * forkpool gives C programs what Python's multiprocessing.Pool gives Python
 * programs: a master process forks worker processes and hands them work
 * through a small length-prefixed codec, with map (fixed-size arrays and
 * codec values), starmap, apply, their async forms, imap and
 * imap_unordered (also fed by a producer), close, terminate and join; plus
 * Manager-style shared dict, list, counter, lock and raw arrays living in
 * shared memory, CPU affinity control and progress output.
 *
 * Conventions used by every call below:
 *   - Functions return int: 0 (or a documented non-negative value) on
 *     success, a negative FP_E* code on failure. fp_strerror() and
 *     fp_err_name() turn a code into text. Codes that mirror a POSIX errno
 *     have the value -errno; codes of our own live far away (-4000...).
 *     A system call failure not in the table is returned as -errno.
 *   - Constructors take an out-parameter: fp_pool_new(&pool, &opts).
 *   - What the library allocates, the library frees (fp_pool_free,
 *     fp_result_free, fp_iter_free, fp_writer_free, ...).
 *   - The library never prints (progress output is opt-in), never calls
 *     exit(), and aborts only on a broken internal invariant.
 *   - Timeouts are in seconds as a double; a negative timeout (FP_FOREVER)
 *     waits forever, 0 polls.
 *
 * Sections: errors, codec, frames, pool, results, tasks, manager, affinity,
 * and the compile-time helpers (FP_PACK, FP_UNPACK, FP_MAP ...).
 */
#ifndef FORKPOOL_H
#define FORKPOOL_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FP_EXTERN __attribute__((visibility("default")))
#define FP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FP_EXTERN
#define FP_PRINTF(a, b)
#endif

#define FP_VERSION_MAJOR 0
#define FP_VERSION_MINOR 1
#define FP_VERSION_PATCH 0
#define FP_VERSION_STRING "0.1.0"

/* Returns the library's version string, e.g. "0.1.0". */
FP_EXTERN const char *fp_version(void);

/* ======================================================================
 * Errors
 * ====================================================================== */

/* One table generates the codes, fp_strerror() and fp_err_name(). */
#define FP_ERRNO_MAP(XX)                                                       \
  XX(EINVAL, -EINVAL, "invalid argument")                                      \
  XX(ENOMEM, -ENOMEM, "out of memory")                                         \
  XX(ETIMEDOUT, -ETIMEDOUT, "timed out")                                       \
  XX(EAGAIN, -EAGAIN, "nothing ready yet: call again")                         \
  XX(ECANCELED, -ECANCELED, "operation canceled")                              \
  XX(EPROTO, -EPROTO, "protocol error: malformed or truncated input")          \
  XX(EMSGSIZE, -EMSGSIZE, "message too long")                                  \
  XX(ENOENT, -ENOENT, "no such key")                                           \
  XX(EEXIST, -EEXIST, "key already exists")                                    \
  XX(ERANGE, -ERANGE, "index out of range")                                    \
  XX(EBUSY, -EBUSY, "resource busy")                                           \
  XX(EPERM, -EPERM, "operation not permitted")                                 \
  XX(EPIPE, -EPIPE, "broken pipe: the peer closed its end")                    \
  XX(ENOTSUP, -ENOTSUP,                                                        \
     "not supported here (a transport not built or not linked, or a feature " \
     "that cannot cross machines)")                                           \
  XX(EOWNERDEAD, -EOWNERDEAD,                                                  \
     "the previous owner died holding the lock; state was recovered")          \
  XX(ETYPE, -4001, "wrong value type")                                         \
  XX(EWORKER, -4002, "a worker process died while holding the task")          \
  XX(ETASK, -4003, "the task reported a failure")                              \
  XX(ECLOSED, -4004, "pool not running (closed or terminated)")                \
  XX(EOF, -4005, "end of iteration")                                           \
  XX(ESTORM, -4006, "workers keep dying at start: restart limit reached")      \
  XX(EDEPTH, -4007, "list nesting deeper than the limit")

typedef enum fp_errno {
  FP_OK = 0, /* success; not in the table, which lists failures */
#define FP__ERR_ENUM(name, value, msg) FP_##name = (value),
  FP_ERRNO_MAP(FP__ERR_ENUM)
#undef FP__ERR_ENUM
} fp_errno;

/* Returns a human-readable description of a code. Never NULL: FP_OK (0)
 * gives "success", system errno codes outside the table get the C
 * library's description, anything else a generic "unknown error" string.
 * The string is static; do not free it. */
FP_EXTERN const char *fp_strerror(int code);

/* Returns the symbolic name of a code ("FP_EINVAL"; "FP_OK" for 0), or
 * "FP_UNKNOWN" for a code outside the table (system errno codes get
 * "FP_SYSERR"). Never NULL. */
FP_EXTERN const char *fp_err_name(int code);

/* Returns the message attached to the last failed pool call made by the
 * calling thread (a blocking call's task failure: the task's own message,
 * the worker's death, the item index; or why a call or fp_pool_new was
 * refused, naming the argument or option at fault). Pool calls are the
 * fp_pool_*, fp_result_* and fp_iter_* functions (a refused Manager call
 * sets it too: see the Manager section); fp_result_get and
 * fp_iter_next count as blocking calls: a failed result or item sets its
 * message, a successful one clears it. Like dlerror(), it is per thread
 * and overwritten by the thread's next failing pool call; a successful
 * blocking call (and a successful fp_pool_join) clears it; fp_pool_free
 * leaves it as it was, a successful fp_pool_new clears it. Returns an
 * empty string when there is none. Never NULL. */
FP_EXTERN const char *fp_last_error(void);

#define FP_FOREVER (-1.0)

/* ======================================================================
 * Codec: tagged, length-prefixed values (see docs/codec.md)
 * ====================================================================== */

/* Maximum nesting of lists, in both the writer and the reader. */
#define FP_MAX_DEPTH 32

typedef enum fp_type {
  FP_NIL = 0,
  FP_BOOL = 1,
  FP_INT = 2,
  FP_FLOAT = 3,
  FP_STR = 4,
  FP_BYTES = 5,
  FP_LIST = 6
} fp_type;

/* A growable output buffer of encoded values. Stack-allocate it, call
 * fp_writer_init(), write, then fp_writer_free(). Its bytes come from a
 * private jemalloc arena, which leak checkers do not track: start the
 * program with FORKPOOL_ALLOC=libc to have them from malloc instead
 * (docs/codec.md, section 4). The fields are readable
 * (data/len are the encoded bytes) but only the fp_write* calls change them.
 * Errors are sticky: after the first failure every write returns the same
 * code and fp_writer_error() reports it. */
typedef struct fp_writer {
  unsigned char *data; /* encoded bytes, owned by the writer */
  size_t len;          /* bytes used */
  size_t cap;          /* bytes allocated */
  int err;             /* first error, 0 if none */
  int depth;           /* open lists */
  size_t open_at[FP_MAX_DEPTH];  /* offset of each open list's count */
  uint32_t counts[FP_MAX_DEPTH]; /* items written into each open list */
} fp_writer;

/* A bounds-checked cursor over encoded values. It borrows the buffer: the
 * buffer must outlive the reader and every view (string, bytes) it returns. */
typedef struct fp_reader {
  const unsigned char *data;
  size_t len;
  size_t pos;
  int depth;                     /* lists entered and not yet finished */
  uint32_t remain[FP_MAX_DEPTH]; /* items left in each entered list */
} fp_reader;

/* CODEC_API_BEGIN (owned by the codec; see docs/codec.md) */

/* Wire format, one tag byte (the fp_type value) per value, all integers
 * little-endian: NIL: tag only. BOOL: 1 byte, 0 or 1. INT: 8 bytes two's
 * complement. FLOAT: 8 bytes IEEE-754 binary64 bits. STR: u32 length, the
 * bytes, then one 0 byte not counted in the length. BYTES: u32 length, the
 * bytes. LIST: u32 item count, then that many values. Lists nest at most
 * FP_MAX_DEPTH deep. Lengths and counts are limited to UINT32_MAX. */

/* --- writer ----------------------------------------------------------- */

/* Initialises an empty writer. Allocates nothing, cannot fail; NULL is
 * ignored. */
FP_EXTERN void fp_writer_init(fp_writer *w);

/* Frees the writer's buffer and re-initialises it (empty, no error), so the
 * writer may be reused or freed again. Pointers into w->data become invalid.
 * NULL is ignored. */
FP_EXTERN void fp_writer_free(fp_writer *w);

/* Empties the writer (len = 0), clears its sticky error and closes any open
 * list, but keeps the allocated memory for reuse. NULL is ignored. */
FP_EXTERN void fp_writer_reset(fp_writer *w);

/* Returns the writer's sticky error: 0, or the first failure of any write
 * since init/reset; FP_EINVAL for NULL. */
FP_EXTERN int fp_writer_error(const fp_writer *w);

/* Makes room for at least `extra` more bytes so that the next writes of that
 * size cannot fail for lack of memory. Returns 0, FP_ENOMEM (sticky), or the
 * sticky error already set. Pointers into w->data may be invalidated. */
FP_EXTERN int fp_writer_reserve(fp_writer *w, size_t extra);

/* Appends n raw bytes with no encoding and no tag; it does not count as a
 * list item. Meant for building frame buffers out of already-encoded parts.
 * raw may be NULL only when n is 0. Returns 0, FP_EINVAL, FP_ENOMEM or the
 * sticky error. */
FP_EXTERN int fp_writer_append(fp_writer *w, const void *raw, size_t n);

/* The fp_write_* calls encode one value each at the end of the writer; a
 * value written while a list is open counts as one item of that list. They
 * return 0 or a negative code, and the first failure is sticky: it is kept
 * in w->err and every later write returns it without writing anything,
 * until fp_writer_reset(). A failed call leaves the encoded bytes as they
 * were. Codes: FP_ENOMEM, FP_EMSGSIZE (a length or count above
 * UINT32_MAX), FP_EINVAL (NULL argument, misuse), FP_EDEPTH, FP_EPROTO. */

/* Writes nil. */
FP_EXTERN int fp_write_nil(fp_writer *w);

/* Writes a bool: any nonzero v is encoded as 1. */
FP_EXTERN int fp_write_bool(fp_writer *w, int v);

/* Writes a signed 64-bit integer. */
FP_EXTERN int fp_write_int(fp_writer *w, int64_t v);

/* Writes a double, bit for bit (NaN payloads and -0.0 survive). */
FP_EXTERN int fp_write_float(fp_writer *w, double v);

/* Writes the NUL-terminated string s (the string is copied). s == NULL
 * gives FP_EINVAL. */
FP_EXTERN int fp_write_str(fp_writer *w, const char *s);

/* Writes the n bytes at s as a string; embedded NULs are allowed. s may be
 * NULL only when n is 0. n > UINT32_MAX gives FP_EMSGSIZE. */
FP_EXTERN int fp_write_strn(fp_writer *w, const char *s, size_t n);

/* Writes the n bytes at p as a bytes value. p may be NULL only when n is 0.
 * n > UINT32_MAX gives FP_EMSGSIZE. */
FP_EXTERN int fp_write_bytes(fp_writer *w, const void *p, size_t n);

/* Writes the header of an n-byte bytes value, reserves its n bytes and
 * stores in *dst where the caller must fill them (e.g. with read(2) or a
 * memcpy of a computed result), saving a copy. *dst is valid until the next
 * call on w. The bytes are uninitialised until the caller fills them. On
 * failure *dst is set to NULL. */
FP_EXTERN int fp_write_bytes_begin(fp_writer *w, size_t n, void **dst);

/* Opens a list: later writes are its items until fp_write_list_end(). The
 * item count is back-patched at the end. Opening more than FP_MAX_DEPTH
 * nested lists gives FP_EDEPTH. */
FP_EXTERN int fp_write_list_begin(fp_writer *w);

/* Closes the innermost open list. Without an open list: FP_EINVAL. */
FP_EXTERN int fp_write_list_end(fp_writer *w);

/* Appends exactly one value that is already encoded (for instance a span
 * returned by fp_read_span()). The n bytes at enc are validated first:
 * FP_EPROTO unless they are exactly one well-formed value, FP_EDEPTH when
 * its lists, nested inside the lists open in w, exceed FP_MAX_DEPTH. */
FP_EXTERN int fp_write_raw(fp_writer *w, const void *enc, size_t n);

/* --- reader ----------------------------------------------------------- */

/* Points r at the len encoded bytes at data (borrowed, not copied: the
 * buffer must outlive the reader and the views it returns). data may be
 * NULL only when len is 0 (NULL data reads as empty). Allocates nothing,
 * cannot fail; a NULL r is ignored. Every reader
 * call below, and fp_copy_value / fp_values_count, returns FP_EINVAL for a
 * NULL reader or argument (besides the codes it lists). */
FP_EXTERN void fp_reader_init(fp_reader *r, const void *data, size_t len);

/* Returns 1 when the current level holds no more values (the end of the
 * buffer at depth 0, or an entered list with no items left), else 0. A list
 * whose last item has been read is left automatically (see fp_read_list),
 * so inside a list this stays 0 until its items are consumed, then speaks
 * for the parent level. A NULL reader is at its end (1): the one reader
 * call that returns no error code. */
FP_EXTERN int fp_reader_at_end(const fp_reader *r);

/* Returns the fp_type (>= 0) of the next value without consuming it;
 * FP_EOF at the end of the current level; FP_EPROTO when the next byte is
 * not a valid tag or the buffer ends inside an unfinished list. */
FP_EXTERN int fp_read_peek(fp_reader *r);

/* The fp_read_* calls consume the next value of the current level and
 * return 0. On failure they return a negative code and the reader does not
 * move: FP_EOF at the end of the current level, FP_ETYPE when the next
 * value has another type, FP_EPROTO when it is truncated or malformed.
 * Output pointers may be NULL to discard the value. Views (strings, bytes)
 * point into the reader's buffer; they are not copied. */

/* Reads nil. */
FP_EXTERN int fp_read_nil(fp_reader *r);

/* Reads a bool into *v (0 or 1). A bool byte other than 0/1: FP_EPROTO. */
FP_EXTERN int fp_read_bool(fp_reader *r, int *v);

/* Reads a signed 64-bit integer into *v. */
FP_EXTERN int fp_read_int(fp_reader *r, int64_t *v);

/* Reads a double into *v, bit for bit. */
FP_EXTERN int fp_read_float(fp_reader *r, double *v);

/* Reads a string: *s points at its bytes in the buffer, NUL-terminated
 * (the terminator is part of the encoding and checked); *len gets its
 * length, which counts embedded NULs but not the terminator. len may be
 * NULL. */
FP_EXTERN int fp_read_str(fp_reader *r, const char **s, size_t *len);

/* Reads a bytes value: *p points at its bytes in the buffer (not
 * NUL-terminated), *len gets their count. */
FP_EXTERN int fp_read_bytes(fp_reader *r, const void **p, size_t *len);

/* Enters a list and stores its item count in *count; the next reads return
 * its items. When its last item has been read, the reader returns to the
 * parent level by itself (an empty list is never entered), so iterate with
 * the count. A count larger than the remaining bytes could hold:
 * FP_EPROTO; entering a list nested deeper than FP_MAX_DEPTH: FP_EDEPTH. */
FP_EXTERN int fp_read_list(fp_reader *r, uint32_t *count);

/* Skips the next value whole (a list with all its items), after checking
 * that it is well formed. */
FP_EXTERN int fp_read_skip(fp_reader *r);

/* Consumes the next value whole and returns its encoded bytes (tag
 * included) through *start and *len, e.g. to forward it unparsed with
 * fp_write_raw(). The value is validated first. */
FP_EXTERN int fp_read_span(fp_reader *r, const void **start, size_t *len);

/* Copies the next value of r to w (one item of w's open list, if any). The
 * reader moves only when the write succeeded. r may read w's own bytes
 * (values w already holds): when the write moves w's buffer, r moves with
 * it. Returns 0, a reader error (FP_EOF, FP_EPROTO, FP_EDEPTH) or a
 * writer error (sticky). */
FP_EXTERN int fp_copy_value(fp_writer *w, fp_reader *r);

/* Checks that the len bytes at data are a sequence of zero or more
 * well-formed values and stores their number (top-level values only) in
 * *count (may be NULL). Returns 0, FP_EPROTO or FP_EDEPTH (FP_EINVAL for
 * NULL data with len > 0); *count is left untouched on failure. */
FP_EXTERN int fp_values_count(const void *data, size_t len, size_t *count);

/* --- pack / unpack ---------------------------------------------------- */

/* A printf-like shorthand over the writer and reader calls. Format letters
 * (white space -- spaces, tabs, newlines, carriage returns -- is ignored):
 *
 *   letter  pack argument(s)           unpack argument(s)
 *   n       (none)                     (none)
 *   ?       int                        int *
 *   i       int64_t (cast literals!)   int64_t *
 *   d       double                     double *
 *   s       const char *               const char ** (borrowed view)
 *   S       const char *, size_t       const char **, size_t *
 *   b       const void *, size_t       const void **, size_t *
 *   [ ]     list begin / end           enter a list / require its end
 *   *       (invalid)                  skip any one value
 *
 * Example: fp_pack(&w, "[ i d s ]", (int64_t)7, 2.5, "x") writes one list
 * of three items; fp_unpack(&r, "[ i d s ]", &i, &d, &s) reads it back.
 * Unpack output pointers may be NULL to discard a value.
 *
 * A malformed format (unknown letter, unbalanced brackets, brackets nested
 * deeper than FP_MAX_DEPTH, '*' in pack) returns FP_EINVAL before anything
 * is written or read. Pack errors are the writer's (sticky), and a failed
 * pack adds nothing: the writer is rolled back to its state at the call.
 * Unpack is all or nothing: on failure the reader is back where it was and
 * no output was stored. Unpack fails with FP_EPROTO when a list holds more (at ']') or
 * fewer items than the format names, and with FP_EOF when the format names
 * more values than the current level holds. */
FP_EXTERN int fp_pack(fp_writer *w, const char *fmt, ...);
FP_EXTERN int fp_unpack(fp_reader *r, const char *fmt, ...);
/* fp_pack and fp_unpack taking a va_list (as vprintf), for wrappers of
 * your own: same formats, returns and failures. ap is used up (va_end is
 * the caller's). */
FP_EXTERN int fp_vpack(fp_writer *w, const char *fmt, va_list ap);
FP_EXTERN int fp_vunpack(fp_reader *r, const char *fmt, va_list ap);

/* CODEC_API_END */

/* ======================================================================
 * Frames: u32 little-endian length + payload (see docs/codec.md)
 * ====================================================================== */

/* FRAME_API_BEGIN */

/* Default cap on a frame's payload length (256 MiB). */
#define FP_FRAME_MAX_DEFAULT ((size_t)256 << 20)

/* Looks for one frame (4-byte little-endian u32 length + payload) at the
 * len bytes at buf, for callers that buffer a non-blocking stream. Returns
 * 0 when a whole frame is there (*payload_len = its payload length; the
 * payload starts at buf + 4, the next frame at buf + 4 + *payload_len);
 * 1 when more bytes are needed (once the 4 header bytes are there,
 * *payload_len already holds the announced length); FP_EMSGSIZE when the
 * announced length exceeds max, decided from the header alone, so nothing
 * needs to be allocated first; FP_EINVAL on a NULL payload_len, or a NULL
 * buf with len > 0 (NULL with len 0 is an empty buffer: 1). */
FP_EXTERN int fp_frame_parse(const void *buf, size_t len, size_t max,
                             size_t *payload_len);

/* Writes one frame (header + the len payload bytes) to the blocking fd,
 * looping over short writes and EINTR. On a socket it uses MSG_NOSIGNAL,
 * on a pipe it blocks SIGPIPE in the calling thread for the duration: a
 * closed peer gives FP_EPIPE, never a SIGPIPE. Returns 0, FP_EMSGSIZE when
 * len > UINT32_MAX, FP_EINVAL, or -errno of the failed write (a
 * non-blocking fd may give -EAGAIN). After a failure part of the frame may
 * have been written: the stream is no longer usable. */
FP_EXTERN int fp_frame_write(int fd, const void *payload, size_t len);

/* Reads one frame from the blocking fd, looping over short reads and EINTR,
 * and replaces buf's contents with its raw payload (buf->data, buf->len;
 * buf's sticky error and open lists are cleared). Returns 0; FP_EOF on a
 * clean end of file before any header byte; FP_EPROTO on end of file inside
 * a frame; FP_EMSGSIZE when the announced length exceeds max, without
 * allocating (the stream is then unusable); FP_ENOMEM; -errno of a failed
 * read. On failure buf->len is 0. max bounds what a peer can make this
 * call allocate (a 4-byte header announces up to 4 GiB): pass what you
 * expect, not SIZE_MAX, when the peer is not trusted. */
FP_EXTERN int fp_frame_read(int fd, fp_writer *buf, size_t max);

/* FRAME_API_END */

/* ======================================================================
 * Affinity and topology (docs/affinity.md)
 * ====================================================================== */

/* AFFINITY_API_BEGIN */

/* --- CPU sets ----------------------------------------------------------
 * fp_cpuset is a plain bitset of FP_CPU_MAX CPUs (CPU numbers 0..1023, the
 * same range as glibc's cpu_set_t). It is a value type: copy it with =,
 * compare it with fp_cpuset_equal(), no allocation, nothing to free. Zero it
 * with fp_cpuset_zero() (or = {0}) before use. */
#define FP_CPU_MAX 1024

typedef struct fp_cpuset {
  uint64_t bits[FP_CPU_MAX / 64];
} fp_cpuset;

/* Clears every CPU of *set. A NULL set is ignored here, read as empty by
 * the queries below, and FP_EINVAL for fp_cpuset_set/clear. */
FP_EXTERN void fp_cpuset_zero(fp_cpuset *set);

/* Adds / removes CPU cpu. Returns 0, or FP_ERANGE when cpu is outside
 * 0..FP_CPU_MAX-1 (the set is then unchanged), FP_EINVAL for NULL. */
FP_EXTERN int fp_cpuset_set(fp_cpuset *set, int cpu);
FP_EXTERN int fp_cpuset_clear(fp_cpuset *set, int cpu);

/* Returns 1 when cpu is in the set, 0 when not (or out of range). */
FP_EXTERN int fp_cpuset_isset(const fp_cpuset *set, int cpu);

/* Returns the number of CPUs in the set (0..FP_CPU_MAX). */
FP_EXTERN int fp_cpuset_count(const fp_cpuset *set);

/* Returns the n-th CPU of the set in ascending order (n = 0 is the lowest),
 * or -1 when the set holds n CPUs or fewer (or n < 0). */
FP_EXTERN int fp_cpuset_nth(const fp_cpuset *set, int n);

/* Returns 1 when the two sets hold the same CPUs, else 0 (two NULLs are
 * equal, NULL and a set are not). */
FP_EXTERN int fp_cpuset_equal(const fp_cpuset *a, const fp_cpuset *b);

/* Parses a Linux cpu-list string ("0-3,8,10-11", the syntax of
 * /sys/devices/system/cpu/online, taskset -c and Cpus_allowed_list) into
 * *out, which is zeroed first. Blanks and newlines around numbers, commas
 * and dashes are ignored; ranges may overlap or repeat. An empty (or
 * all-blank) string gives the empty set. Returns 0; FP_EINVAL for anything
 * else (garbage, a reversed range "5-3", an empty item as in "1,,2" or a
 * trailing comma "1,"), FP_ERANGE for a CPU >= FP_CPU_MAX (including numbers
 * too large for an int). On failure *out is left empty and
 * fp_affinity_error() says what and where. */
FP_EXTERN int fp_cpulist_parse(const char *s, fp_cpuset *out);

/* Formats *set as a canonical cpu-list ("0-3,8,10-11"; runs of two CPUs are
 * written "4-5") into buf, NUL-terminated. The empty set gives "". Returns
 * the string length (>= 0) on success; FP_ERANGE when buf (len bytes,
 * including the NUL) is too small, leaving "" in buf if len > 0; FP_EINVAL
 * for a NULL argument. A buffer of FP_CPULIST_MAX bytes always suffices. */
#define FP_CPULIST_MAX 4096
FP_EXTERN int fp_cpulist_format(const fp_cpuset *set, char *buf, size_t len);

/* --- Topology ----------------------------------------------------------
 * What the process may run on and what that hardware looks like:
 *   - usable: the CPUs of the calling thread's affinity mask
 *     (sched_getaffinity), which already reflects cgroup cpusets, taskset
 *     and numactl;
 *   - the cgroup CPU quota (v2 cpu.max, or v1 cpu.cfs_quota_us /
 *     cpu.cfs_period_us) of the process's cgroup and every ancestor, the
 *     smallest one in CPUs, e.g. "150000 100000" = 1.5 CPUs;
 *   - for each usable CPU its core and package from
 *     /sys/devices/system/cpu/cpuN/topology/{core_id,physical_package_id},
 *     so SMT siblings (hyperthreads of one core) are known.
 * Missing sysfs or cgroup files (containers, chroots) are not errors: the
 * quota is then "none" and each CPU counts as its own core (has_smt_info =
 * 0). The snapshot is taken at fp_topology_get() and never updated. */

/* One usable CPU. */
typedef struct fp_cpu_info {
  int cpu;        /* CPU number as the kernel numbers it */
  int core_id;    /* core_id from sysfs; the CPU number when unknown */
  int package_id; /* physical_package_id; 0 when unknown */
  int smt_index;  /* 0 for the first usable thread of its core (in CPU
                     order), 1 for the second sibling, ... */
} fp_cpu_info;

/* A read-only snapshot; all fields are public. Free with fp_topology_free. */
typedef struct fp_topology {
  fp_cpuset usable;   /* CPUs this thread may run on now */
  int nusable;        /* fp_cpuset_count(&usable), >= 1 */
  int online;         /* CPUs online in the machine (sysfs or sysconf) */
  double quota;       /* cgroup CPU quota in CPUs, 0.0 = no quota found */
  int quota_cpus;     /* quota rounded up (1.5 -> 2), 0 = no quota */
  int effective;      /* min(nusable, quota_cpus), >= 1: fp_cpu_count() */
  int has_smt_info;   /* 1 when core and package ids were read for every
                         usable CPU, 0 when guessed */
  int ncores;         /* distinct (package, core) pairs among usable CPUs */
  int npackages;      /* distinct packages among usable CPUs */
  size_t ncpus;       /* entries in cpus[], = nusable */
  fp_cpu_info *cpus;  /* usable CPUs in ascending CPU order */
} fp_topology;

/* Takes a topology snapshot of the calling process. On success *out is a
 * new object the caller frees with fp_topology_free() and 0 is returned.
 * Fails with FP_ENOMEM, FP_EINVAL (out is NULL) or the -errno of
 * sched_getaffinity; *out is then NULL. */
FP_EXTERN int fp_topology_get(fp_topology **out);

/* Frees a snapshot. NULL is a no-op. */
FP_EXTERN void fp_topology_free(fp_topology *topo);

/* Returns the entry of usable CPU cpu in topo, or NULL when cpu is not
 * usable. The pointer lives as long as topo. */
FP_EXTERN const fp_cpu_info *fp_topology_cpu(const fp_topology *topo,
                                             int cpu);

/* Returns the default worker count: the CPUs this process may use (its
 * affinity mask), capped by the cgroup CPU quota rounded up, at least 1 -
 * Python's os.process_cpu_count() plus the quota. Reads the kernel on
 * every call (nothing is cached), so a narrowed mask is seen at once. The
 * pool uses it when processes = 0. Never fails. */
FP_EXTERN int fp_cpu_count(void);

/* --- Pinning -----------------------------------------------------------
 * These act on the calling THREAD (sched_setaffinity(0, ...)). In a
 * single-threaded process such as a forkpool worker that is the whole
 * process; threads created afterwards inherit the mask. In a multithreaded
 * master, other threads keep their masks.
 *
 * The allowed set: a CPU may be pinned to when it is in the mask the
 * process had when the library was loaded (captured once, before main, and
 * inherited by forked workers) or in the current mask. So a worker pinned
 * to CPU 0 may later re-pin itself to CPU 1, which the current mask alone
 * would refuse; yet CPUs the process was never given (taskset, cgroup
 * cpuset) are refused. The kernel still has the last word: a CPU that went
 * offline or left the cpuset fails with FP_EINVAL too.
 *
 * On failure fp_affinity_error() names the CPU and the allowed set, e.g.
 * "CPU 7 not in allowed set 0-1". */

/* Pins the calling thread to CPU cpu alone. Returns 0; FP_EINVAL when cpu
 * is not in the allowed set (or the kernel refuses it), another -errno of
 * sched_setaffinity otherwise. */
FP_EXTERN int fp_affinity_pin(int cpu);

/* Stores the calling thread's current mask in *out. Returns 0, FP_EINVAL
 * for a NULL out, or the -errno of sched_getaffinity. */
FP_EXTERN int fp_affinity_get(fp_cpuset *out);

/* Sets the calling thread's mask to *set. Returns 0; FP_EINVAL when set is
 * NULL, empty or holds a CPU outside the allowed set (nothing changes). */
FP_EXTERN int fp_affinity_set(const fp_cpuset *set);

/* Returns the CPU the calling thread is running on right now
 * (sched_getcpu), >= 0, or a negative -errno. Without pinning, the answer
 * can be stale by the time it is read. */
FP_EXTERN int fp_current_cpu(void);

/* Returns the message of the calling thread's last failed affinity call
 * (fp_affinity_*, fp_cpulist_parse, pool pinning), or "" when the last such
 * call succeeded. Thread-local, never NULL, valid until the thread's next
 * affinity call; do not free. */
FP_EXTERN const char *fp_affinity_error(void);

/* How a pool pins its workers (fp_pool_opts.pin, .pin_cpus, .pin_ncpus):
 *   FP_PIN_NONE     no pinning, the kernel schedules (the default);
 *   FP_PIN_COMPACT  worker i -> the i-th usable CPU in CPU order, wrapping;
 *   FP_PIN_SCATTER  one worker per physical core first (distinct
 *                   package/core pairs in CPU order), then the SMT
 *                   siblings, wrapping;
 *   FP_PIN_LIST     worker i -> pin_cpus[i % pin_ncpus]; each CPU must be
 *                   usable, else the pool fails to start with FP_EINVAL.
 * A replaced worker gets the CPU of the worker it replaces. See
 * docs/affinity.md for when pinning helps and when it hurts. */
typedef enum fp_pin_policy {
  FP_PIN_NONE = 0,
  FP_PIN_COMPACT,
  FP_PIN_SCATTER,
  FP_PIN_LIST
} fp_pin_policy;

/* AFFINITY_API_END */

/* ======================================================================
 * Pool
 * ====================================================================== */

/* POOL_API_BEGIN */

/* How a pool works (docs/pool.md has the full story):
 *
 *   fp_pool_new() forks a small "fork server" first, then starts one pool
 *   thread running a libuv loop. The fork server forks every worker, the
 *   first ones and each replacement, so a worker never inherits a lock held
 *   by another thread of your program. Each worker talks to the pool thread
 *   over its own socket; a worker that dies fails exactly the tasks it held.
 *
 *   SIGNALS: workers start with every caught signal back at its default
 *   (ignored ones stay ignored), so a Ctrl-C that reaches the process group
 *   kills them and they are replaced. The fork server ignores SIGHUP,
 *   SIGINT, SIGQUIT and SIGTERM and ends only with the master, so a program
 *   that catches such a signal and carries on keeps a working pool.
 *
 *   FORK INHERITANCE: every worker sees the program's memory as it was when
 *   fp_pool_new() was called. Globals and data loaded before fp_pool_new()
 *   are visible to tasks for free (copy-on-write, no serialisation); changes
 *   the master makes afterwards are NOT seen by workers, and changes a task
 *   makes stay in its worker. Load large read-only inputs before the pool.
 *
 *   THREADS: every fp_pool_* call may be made from several user threads at
 *   once, except fp_pool_free(), which must not race with other calls on the
 *   same pool. Callbacks run on the pool thread, serially, like CPython's
 *   result-handler thread: keep them short and do not make blocking pool
 *   calls from them (those return FP_EINVAL there).
 *
 *   FORKS: in a process forked from the master after fp_pool_new(),
 *   submissions, blocking waits on the pool's pending results,
 *   fp_iter_next, fp_pool_close/terminate/join and fp_result_cancel
 *   return FP_EINVAL with a message saying so (the pool, its workers, its
 *   results and iterators are the parent's, and stay untouched; no call
 *   takes a lock a thread of the parent may have held at the fork),
 *   fp_result_free and fp_iter_free touch nothing of the parent's, and
 *   fp_pool_free() frees only that copy's memory -- all of it but the
 *   few hundred bytes libuv holds for the copy's loop, which closing
 *   would unregister the parent's descriptors from the epoll instance
 *   the two share, and the copy of the work pending at the fork (jobs
 *   and their chunks, which the copy's results may still point to). A
 *   child made by _Fork() or a raw fork system call, which skips
 *   pthread_atfork handlers, is recognised as a copy too (on Linux 4.14
 *   and later: MADV_WIPEONFORK).
 *
 *   FUNCTIONS are named by reference (module + offset, resolved again in the
 *   worker), never sent as raw pointers; pass functions of your program or
 *   of a shared library loaded before fp_pool_new().
 */

typedef struct fp_pool fp_pool;
typedef struct fp_result fp_result;
typedef struct fp_iter fp_iter;

/* A task over codec values. `args` reads the task's arguments: for
 * fp_pool_apply the values packed into `args`; for fp_pool_starmap the
 * elements of one tuple (list); for fp_pool_map_values / imap the one item.
 * The task writes exactly one result value into `out`, which is empty when
 * it starts and is the task's alone (writing nothing yields nil; writing
 * more than one, or bytes that are not a value, fails the item with
 * FP_EPROTO; fp_writer_reset(out) is harmless).
 * Return 0 on success, or a negative code to fail the item, usually
 * through fp_task_fail(). Runs in a worker process. */
typedef int (*fp_task_fn)(fp_reader *args, fp_writer *out);

/* A task over one fixed-size element, qsort style: read *in (in_size bytes),
 * write *out (out_size bytes). Return 0, or a negative code to fail the
 * item. Whole chunks of elements travel with memcpy: the fast path. */
typedef int (*fp_elem_fn)(const void *in, void *out);

/* Result callback: runs on the pool thread exactly once, before waiters on
 * the result wake up (as in CPython). `res` is borrowed for the call. */
typedef void (*fp_callback)(fp_result *res, void *arg);

/* Progress hook: done and total items of a job (total is -1 when unknown,
 * e.g. a producer-fed imap), elapsed seconds. Called at most ten times a
 * second and once at the end, on the pool thread and with no lock held,
 * like a result's callback: it may make non-blocking calls on the pool;
 * blocking ones (and fp_pool_join/terminate/free of this pool) return
 * FP_EINVAL. The last call comes before the job's result is ready (for an
 * iterator, it may come just after its last item). */
typedef void (*fp_progress_fn)(int64_t done, int64_t total, double elapsed,
                               void *arg);

/* A producer for streaming imap: write the next input item (one value)
 * into `item` and return 1, return 0 at the end of the input (writing
 * nothing), or a negative code to stop with that error. `item` is empty
 * at each call (a writer of the library's: write into it, do not free
 * it). Anything else -- no value or several, or a value and 0 -- ends the
 * iteration with FP_EPROTO. Called on the thread that calls
 * fp_pool_imap_producer() / fp_iter_next(), or fp_pool_join() after
 * fp_pool_close() (which reads what is left of the input), never two calls
 * at once, and never after fp_iter_free() returned. It may make pool
 * calls, but not those that would wait for its own input (or that of a
 * producer it runs inside, when it reads another iterator): there,
 * fp_iter_next() of its iterator and fp_pool_join() of that iterator's
 * pool return FP_EINVAL, and fp_iter_free() of the iterator and
 * fp_pool_free() of its pool free nothing and set fp_last_error(). */
typedef int (*fp_producer_fn)(void *arg, fp_writer *item);

typedef enum fp_crash_policy {
  FP_CRASH_DEFAULT = 0, /* per call: the pool's policy; per pool: FAIL */
  FP_CRASH_FAIL,        /* the dead worker's running task fails: FP_EWORKER */
  FP_CRASH_RETRY,       /* rerun it on another worker up to `retries` times */
  FP_CRASH_ABORT        /* fail the whole job at once, drop its queued work */
} fp_crash_policy;

typedef enum fp_progress_mode {
  FP_PROGRESS_DEFAULT = 0, /* per call: the pool's mode; per pool: OFF */
  FP_PROGRESS_OFF,
  FP_PROGRESS_AUTO,    /* a bar when stderr is a TTY, else joblib-style lines */
  FP_PROGRESS_BAR,     /* a tqdm-like bar on stderr */
  FP_PROGRESS_LINES,   /* "[forkpool(n=2)]: Done 40 of 100 tasks | ..." lines */
  FP_PROGRESS_CALLBACK /* only call progress_cb (which must be set:
                          fp_pool_new and calls asking for it without
                          one return FP_EINVAL) */
} fp_progress_mode;

/* Where a pool's workers run (fp_pool_opts.transport):
 *   FP_TRANSPORT_LOCAL  forked workers on this machine (the default);
 *   FP_TRANSPORT_MPI    across the ranks of an MPI job (`mpirun -n N prog`):
 *                       rank 0 gets the pool; every other rank serves tasks
 *                       inside fp_pool_new() with `processes` local workers
 *                       (0: that node's CPU count) and ends its process
 *                       with exit status 0 when rank 0 frees the pool (with
 *                       an option out of range, every rank returns
 *                       FP_EINVAL instead). Needs libforkpool_mpi (linked,
 *                       or found at run time; else FP_ENOTSUP). See
 *                       docs/mpi.md. */
typedef enum fp_transport {
  FP_TRANSPORT_LOCAL = 0,
  FP_TRANSPORT_MPI
} fp_transport;

/* Pool options. Zero-initialise and set what you need: every zero field
 * means "the default" given here. A field out of its range (given here)
 * makes fp_pool_new fail with FP_EINVAL, and fp_last_error() names it. */
typedef struct fp_pool_opts {
  int processes;             /* workers, 0 to 4096; 0: fp_cpu_count() */
  int (*initializer)(void *arg); /* run once in each worker at start; a
                                  non-zero return makes that start fail */
  void *initarg;
  unsigned maxtasksperchild; /* tasks (chunks) before a worker is replaced;
                                0: unlimited. Chunks it was sent and
                                answered without running (canceled, or
                                moved to an idle worker) count too */
  size_t max_frame;          /* largest message, item or result: 4096
                                to 2^32 - 1; 0: FP_FRAME_MAX_DEFAULT.
                                A task frame's header takes 256 bytes
                                of it (FP_EMSGSIZE's message says what
                                is left).
                                A chunk's results
                                together may pass it (several messages),
                                up to 1 GiB or max_frame if larger. An
                                MPI pool caps it under 2 GiB (what one
                                MPI message carries, docs/mpi.md) */
  double task_timeout;       /* seconds one item may run; 0 or negative
                                (FP_FOREVER): no limit.
                                Every timeout in the API: a century or
                                more (INFINITY, DBL_MAX ...) means no
                                limit, NaN is FP_EINVAL */
  double kill_grace;         /* SIGTERM to SIGKILL delay; 0: 0.2 s; at
                                most 3600 s (terminate must return) */
  fp_crash_policy on_crash;  /* 0: FP_CRASH_FAIL */
  int retries;               /* with FP_CRASH_RETRY, 0 or more; 0: 1 */
  int max_restarts;          /* workers dying at start (before becoming
                                ready) more than this (0 to 1000000) ... */
  double restart_window;     /* ... within this many seconds (0 or more):
                                the pool fails its work with FP_ESTORM.
                                0: 5 / 1 s */
  size_t memory_limit;       /* RLIMIT_AS per worker in bytes; 0: none */
  fp_pin_policy pin;         /* CPU pinning of workers; 0: none */
  const int *pin_cpus;       /* FP_PIN_LIST: the CPUs (copied) */
  size_t pin_ncpus;
  fp_progress_mode progress; /* 0: off */
  fp_progress_fn progress_cb;
  void *progress_arg;
  int inflight;              /* chunks queued per worker when chunks
                                take under 20 ms (1 when longer); 0:
                                adaptive, about 1 ms of work, 2 to 16;
                                at most 16. Chunks queued behind one that
                                runs long go to an idle worker (local
                                workers; docs/pool.md section 7) */
  fp_transport transport;    /* how workers are reached; 0: local */
} fp_pool_opts;

/* Per-call options; NULL or zero fields take the pool's defaults. */
typedef struct fp_call_opts {
  size_t chunksize;          /* items per task; 0: ceil(n / (4*workers))
                                as CPython (fp_pool_map also caps it at
                                48 KiB of elements), 1 for imap */
  fp_callback callback;      /* on success (async calls only) */
  fp_callback error_callback; /* on failure (async calls only) */
  void *arg;                 /* passed to both callbacks */
  double timeout;            /* per-item time limit; 0: the pool's;
                                negative: none */
  fp_crash_policy on_crash;  /* 0: the pool's */
  int retries;               /* 0: the pool's */
  size_t readahead;          /* producer imap: most items produced and
                                not yet consumed; 0: 8 * chunksize * workers;
                                SIZE_MAX: no bound */
  fp_progress_mode progress; /* 0: the pool's */
  int *item_status;          /* map, map_values, starmap (and _async):
                                NULL, or an array of one int per item that
                                receives 0 or that item's failure code, and
                                then item failures do not fail the call
                                (see "Keeping the good results" below) */
} fp_call_opts;

/* Keeping the good results (Python's return_exceptions, joblib's and
 * concurrent.futures' per-item outcomes). By default a map whose item fails
 * reports the lowest failing item and, for map_values / starmap, appends no
 * results. With opts->item_status set to an array of n ints (n = the
 * number of items), the map instead completes: every item's outcome is
 * written to item_status[i] (0 or its failure code, FP_EWORKER also for
 * items whose result died with a worker), the call returns 0 unless the
 * job failed as a whole (terminate, cancel, FP_ESTORM, a crash under
 * FP_CRASH_ABORT ...), results of good items are delivered in order and a
 * failed item's value is nil (map_values / starmap) or its output element
 * is unspecified (fp_pool_map). The array
 * must stay valid until the call returns (blocking) or the result is ready;
 * freeing an unready async result that writes one stops its job (as for
 * fp_pool_map_async). fp_pool_imap gives each item's message as well. */

/* Creates a pool: forks the fork server and the workers, starts the pool
 * thread, and returns once every worker ran its initializer (or failed to,
 * see max_restarts). `opts` may be NULL. On success *out owns the pool;
 * free it with fp_pool_free(). Fails with FP_EINVAL (bad options, such as
 * a pinned CPU outside the process's set), FP_ENOMEM, FP_ESTORM (workers
 * cannot start), FP_EWORKER (the fork server died while starting), or
 * -errno of socketpair/fork/mmap. fp_last_error() says why. */
FP_EXTERN int fp_pool_new(fp_pool **out, const fp_pool_opts *opts);

/* Stops accepting work (state CLOSE): queued work still runs, then workers
 * exit. Returns 0 (FP_EINVAL for NULL, or in a forked copy of the
 * master); calling it again, or after terminate, is harmless. */
FP_EXTERN int fp_pool_close(fp_pool *pool);

/* Kills the workers now (SIGTERM, then SIGKILL after kill_grace) and fails
 * every unfinished result with FP_ECANCELED (state TERMINATE). Returns once
 * every worker is dead, even if tasks ignore SIGTERM or run forever.
 * Harmless when repeated. Returns 0, or FP_EINVAL for NULL, from a
 * callback (the pool thread cannot wait for itself) or in a forked copy of
 * the master. */
FP_EXTERN int fp_pool_terminate(fp_pool *pool);

/* Waits until the workers, the fork server and the pool thread are gone.
 * Only after fp_pool_close() or fp_pool_terminate(): in state RUN it
 * returns FP_EINVAL (CPython raises ValueError), as for NULL, from a
 * callback, from the producer of one of the pool's iterators (it would
 * wait for the input being produced) or in a forked copy of the master. Returns 0 (and clears
 * fp_last_error()). After close,
 * queued work finishes first, and so does every producer-fed imap: join
 * reads what is left of its input, calling the producer on this thread
 * without the read-ahead bound (as CPython's task handler exhausts imap's
 * generator), so its results wait for fp_iter_next(). Several threads may
 * join at once; each returns when the pool is gone. */
FP_EXTERN int fp_pool_join(fp_pool *pool);

/* Terminates (unless already joined: even after fp_pool_close, queued work
 * is canceled), joins and frees the pool: what leaving a Python
 * `with Pool() as p:` block does. To let queued work finish, call
 * fp_pool_close() and fp_pool_join() first. Results still held by the
 * caller stay valid (failed with FP_ECANCELED if unfinished) until
 * fp_result_free. NULL is ignored. After the call `pool` is invalid.
 * From a callback (the pool thread, which cannot join itself) or the
 * producer of one of the pool's iterators (whose caller still uses the
 * pool) it frees nothing and sets fp_last_error(): free the pool from
 * another thread, or after the producer returned. */
FP_EXTERN void fp_pool_free(fp_pool *pool);

/* Returns the number of worker processes, or FP_EINVAL for NULL. */
FP_EXTERN int fp_pool_size(const fp_pool *pool);

/* What a worker slot is doing, for demos, tests and monitoring. */
typedef struct fp_worker_info {
  pid_t pid;          /* current process of slot i, 0 while (re)starting
                         and once the pool was joined */
  int cpu;            /* CPU it is pinned to, -1 when not pinned (and
                         over MPI, where its rank pins it on its node) */
  int last_cpu;       /* CPU it last ran a task on (sched_getcpu), or -1
                         (over MPI: known only for jobs with a time
                         limit, whose running items the ranks report,
                         and for a slot whose process has exited) */
  uint64_t tasks;     /* chunks completed by this slot, all processes */
  uint64_t restarts;  /* replacement processes started in this slot
                         (after a death or maxtasksperchild) */
} fp_worker_info;

/* Fills *info for worker slot i (0 <= i < fp_pool_size). FP_EINVAL for a
 * bad slot or NULL, and in a forked copy of the master (the pool is the
 * parent's). */
FP_EXTERN int fp_pool_worker_info(fp_pool *pool, int i, fp_worker_info *info);

/* --- blocking calls ---------------------------------------------------- */

/* Runs fn(args) in a worker and waits: Python's pool.apply(f, args).
 * `args` (may be NULL: no arguments) is copied at the call. On success the
 * task's one result value is appended to `out` (may be NULL). Returns 0,
 * FP_ECLOSED (pool not running), FP_EINVAL, or the task's failure:
 * FP_ETASK or the code it returned, FP_EWORKER (its worker died),
 * FP_ETIMEDOUT (time limit), FP_ECANCELED (terminated). fp_last_error()
 * gives the message. */
FP_EXTERN int fp_pool_apply(fp_pool *pool, fp_task_fn fn,
                            const fp_writer *args, fp_writer *out);

/* Python's pool.map over a C array: out[i] = fn(in[i]) for n elements of
 * in_size bytes, results of out_size bytes, in order. Returns 0 when every
 * item succeeded; otherwise, once the whole job has finished, the failure
 * of the lowest failing item (fp_last_error() names it) — the other items
 * still ran and their outputs are written. n == 0 sends no work. in_size
 * or out_size may be 0: fn then has no input bytes to read, or no output
 * bytes to write (a map run for its effects). An `out`
 * of 256 KiB or more has its whole pages faulted in by the calling thread
 * while the workers run (MADV_POPULATE_WRITE: as if written, contents
 * unchanged), so that copying results into fresh memory does not take a
 * page fault per page. Unreadable input items, or a range of `out` that is
 * not writable, fail their chunk's items with -EFAULT; the master never
 * faults on them. Fails at once, sending nothing, with FP_EINVAL (NULL
 * pool or fn, NULL in or out with n > 0 and its size > 0, a size above
 * 2^32 - 1 or n above INT64_MAX, bad opts, a blocking call from a
 * callback or a forked copy), FP_EMSGSIZE (in_size or out_size above what
 * the pool's max_frame carries),
 * FP_ECLOSED (after fp_pool_close or fp_pool_terminate, even with n == 0)
 * or FP_ENOMEM. */
FP_EXTERN int fp_pool_map(fp_pool *pool, fp_elem_fn fn, const void *in,
                          size_t n, size_t in_size, void *out,
                          size_t out_size, const fp_call_opts *opts);

/* Python's pool.map over codec values: `items` holds a sequence of values
 * (one per item, written with fp_write_* / fp_pack); fn receives each item
 * as its args. The results, one value per item in input order, are
 * appended to `out`. NULL items, like an empty writer, is no items (no
 * work, 0). Errors as fp_pool_map, and before any work is sent:
 * FP_EPROTO when an item is not a well-formed value, FP_EMSGSIZE when one
 * is larger than max_frame leaves (fp_last_error() names the item),
 * FP_EINVAL when `items` or `out` is a writer in an error state. */
FP_EXTERN int fp_pool_map_values(fp_pool *pool, fp_task_fn fn,
                                 const fp_writer *items, fp_writer *out,
                                 const fp_call_opts *opts);

/* Python's pool.starmap: each item of `items` is a list (tuple) whose
 * elements are fn's arguments, so fn reads them with fp_unpack(args,
 * "i i", ...). A non-list item fails the call with FP_ETYPE before any work
 * is sent. Results and errors as fp_pool_map_values. A struct array with
 * fp_pool_map is the fixed-size form of starmap. */
FP_EXTERN int fp_pool_starmap(fp_pool *pool, fp_task_fn fn,
                              const fp_writer *items, fp_writer *out,
                              const fp_call_opts *opts);

/* --- asynchronous calls ------------------------------------------------ */
/* Each returns 0 and a new result in *res (free it with fp_result_free),
 * or an error and then no result exists and no callback ever runs. */

/* Python's pool.apply_async(f, args): queues fn(args) and returns at
 * once. `args` (may be NULL: no arguments) is copied at the call, so the
 * caller may reuse or free it right away. The task's one result value is
 * read with fp_result_value() once ready; its failure (as fp_pool_apply's)
 * with fp_result_get() and fp_result_error(). opts may be NULL; its
 * callback / error_callback run on the pool thread before the result is
 * marked ready. Refused at once with FP_EINVAL (NULL pool, fn or res,
 * args in an error state or with an open list, bad opts, a forked copy),
 * FP_EPROTO or FP_EDEPTH (args are not well-formed values), FP_EMSGSIZE
 * (args above the pool's max_frame), FP_ECLOSED (after fp_pool_close or
 * fp_pool_terminate) or FP_ENOMEM. */
FP_EXTERN int fp_pool_apply_async(fp_pool *pool, fp_task_fn fn,
                                  const fp_writer *args,
                                  const fp_call_opts *opts, fp_result **res);

/* As fp_pool_map; `in` and `out` are NOT copied: keep them valid and do
 * not touch `out` until the result is ready, or until fp_result_free()
 * returned (which stops the job: see there). `in` is read only through
 * the kernel: unreadable items fail their chunk with -EFAULT. Each
 * chunk's range of `out` is checked before its results are stored (as
 * fp_pool_map does): a range that is not writable (read-only, unmapped)
 * fails that chunk's items with -EFAULT and leaves it unchanged. */
FP_EXTERN int fp_pool_map_async(fp_pool *pool, fp_elem_fn fn, const void *in,
                                size_t n, size_t in_size, void *out,
                                size_t out_size, const fp_call_opts *opts,
                                fp_result **res);

/* As fp_pool_map_values / fp_pool_starmap; `items` is copied at the call.
 * Read the results with fp_result_value(). */
FP_EXTERN int fp_pool_map_values_async(fp_pool *pool, fp_task_fn fn,
                                       const fp_writer *items,
                                       const fp_call_opts *opts,
                                       fp_result **res);
FP_EXTERN int fp_pool_starmap_async(fp_pool *pool, fp_task_fn fn,
                                    const fp_writer *items,
                                    const fp_call_opts *opts,
                                    fp_result **res);

/* --- streaming --------------------------------------------------------- */

/* Python's pool.imap / imap_unordered over the values in `items` (copied):
 * returns an iterator; results come in input order (imap) or as they
 * complete, each exactly once (imap_unordered). Default chunksize 1. */
FP_EXTERN int fp_pool_imap(fp_pool *pool, fp_task_fn fn,
                           const fp_writer *items, const fp_call_opts *opts,
                           fp_iter **it);
FP_EXTERN int fp_pool_imap_unordered(fp_pool *pool, fp_task_fn fn,
                                     const fp_writer *items,
                                     const fp_call_opts *opts, fp_iter **it);

/* The same fed by a producer, with bounded read-ahead: at most
 * opts->readahead items are produced and not yet consumed, so an input
 * larger than memory streams through in constant memory. The producer runs
 * on the caller's thread, here and inside fp_iter_next(); a chunk stops
 * short rather than pass the bound. */
FP_EXTERN int fp_pool_imap_producer(fp_pool *pool, fp_task_fn fn,
                                    fp_producer_fn producer, void *parg,
                                    const fp_call_opts *opts, fp_iter **it);
FP_EXTERN int fp_pool_imap_unordered_producer(fp_pool *pool, fp_task_fn fn,
                                              fp_producer_fn producer,
                                              void *parg,
                                              const fp_call_opts *opts,
                                              fp_iter **it);

/* Returns the next result: 0 and `item` set to read it (valid until the
 * next call or fp_iter_free), FP_EOF when all results were returned,
 * FP_EAGAIN when none arrived within `timeout` seconds (call again), or
 * that item's failure code (FP_ETIMEDOUT only for an item that hit its
 * time limit; fp_iter_error() has its message, and the iteration goes on
 * with the next call, as Python's imap re-raises and continues; an item's
 * failure also sets fp_last_error(), a successful item clears it). A
 * producer's error ends the iteration with that code. FP_EINVAL for NULL
 * or a NaN timeout, from the iterator's own producer, in a forked copy of
 * the master (whatever the timeout: the iterator is the parent's), and
 * for a call that would wait inside a callback (the pool thread, which
 * delivers the items). */
FP_EXTERN int fp_iter_next(fp_iter *it, fp_reader *item, double timeout);

/* Input index of the item last returned by fp_iter_next (useful with
 * imap_unordered), or -1 before the first. After a job-level failure: the
 * crashing item's index under FP_CRASH_ABORT, else -1. -1 for NULL. */
FP_EXTERN int64_t fp_iter_index(const fp_iter *it);

/* Message of the last outcome fp_iter_next returned: an item's failure or
 * the job's; "" after an item that succeeded, before the first item, and
 * for NULL (FP_EAGAIN and FP_EOF leave it as it was). Never NULL; valid
 * until the next fp_iter_next or fp_iter_free. */
FP_EXTERN const char *fp_iter_error(const fp_iter *it);

/* Frees the iterator; unfinished work is canceled. NULL is ignored. In a
 * forked copy of the master it frees nothing (the iterator is the
 * parent's); from the iterator's own producer it frees nothing and sets
 * fp_last_error(). */
FP_EXTERN void fp_iter_free(fp_iter *it);

/* --- results (CPython's AsyncResult) ------------------------------------ */

/* Waits up to `timeout` seconds and returns the job's outcome: 0 on
 * success, its error code on failure, FP_ETIMEDOUT if not ready yet (a
 * later call may succeed). A job that failed because a task hit its time
 * limit is ready and returns FP_ETIMEDOUT too, for good: to wait for a
 * result to be ready, loop on fp_result_wait (0 once ready) or test
 * fp_result_ready(). FP_EINVAL for NULL or a NaN timeout, and for a
 * wait that could never end: another result's, inside a callback; one in
 * a forked copy of the master. Once the result is ready, its outcome is
 * the call's: fp_last_error() gets the job's message when it failed and
 * is cleared when it succeeded. */
FP_EXTERN int fp_result_get(fp_result *res, double timeout);

/* Waits up to `timeout`; returns 0 when ready, FP_ETIMEDOUT otherwise,
 * FP_EINVAL as fp_result_get. */
FP_EXTERN int fp_result_wait(fp_result *res, double timeout);

/* Returns 1 when ready, 0 when not (never blocks), FP_EINVAL for NULL. */
FP_EXTERN int fp_result_ready(fp_result *res);

/* Returns 1 when ready and successful, 0 when ready and failed,
 * FP_EINVAL when not ready (CPython raises ValueError). */
FP_EXTERN int fp_result_successful(fp_result *res);

/* Points `rd` at the result values: apply's one value, or map_values /
 * starmap's values in input order (fixed-size maps wrote `out` and have
 * none). Valid until fp_result_free. FP_EINVAL when not ready, the job's
 * error code when it failed. */
FP_EXTERN int fp_result_value(fp_result *res, fp_reader *rd);

/* The failure message ("item 17: worker 1 (pid 4242) killed by signal
 * SIGSEGV (Segmentation fault) while running it"), or NULL when not ready
 * or successful, and for NULL. Owned by the result. */
FP_EXTERN const char *fp_result_error(fp_result *res);

/* Input index of the failing item (the lowest one for maps), or -1: for
 * success, a result not ready yet, a job-level failure (cancel,
 * terminate, a storm) and NULL. */
FP_EXTERN int64_t fp_result_error_index(fp_result *res);

/* Cancels the job: queued tasks never run (including those a worker holds
 * but has not started; over MPI those still run, their results dropped:
 * docs/faults.md); a running task has its worker killed and replaced.
 * The job fails at once; its result becomes ready with FP_ECANCELED once
 * its error_callback has run on the pool thread (fp_result_get waits for
 * that). Cancel itself never waits for the pool thread, so it may be called
 * holding a lock that callbacks take. Returns 0; FP_EINVAL for NULL, when
 * the job already finished (its result is ready, or will be once its
 * callbacks ran), or in a forked copy of the master (the job is the
 * parent's). */
FP_EXTERN int fp_result_cancel(fp_result *res);

/* Releases the caller's result. An unfinished job keeps running (its
 * callbacks still run) unless canceled - except a job that borrows the
 * caller's memory (fp_pool_map_async's `in` and `out`, an item_status
 * array): its queued tasks are dropped, tasks already sent finish without
 * writing anything, and it ends with FP_ECANCELED (its error_callback
 * runs), so that memory is never touched once this returns. NULL is
 * ignored. */
FP_EXTERN void fp_result_free(fp_result *res);

/* --- inside a task (worker side) ---------------------------------------- */

/* Input index of the item being processed, or -1 outside a task. */
FP_EXTERN int64_t fp_task_index(void);

/* Slot number (0 .. processes-1) of this worker, or -1 in the master. */
FP_EXTERN int fp_task_worker_id(void);

/* Sets the current item's failure message (printf-style) and returns
 * FP_ETASK, so a task can `return fp_task_fail("bad input %d", x);`. */
FP_EXTERN int fp_task_fail(const char *fmt, ...) FP_PRINTF(1, 2);

/* POOL_API_END */

/* ======================================================================
 * Manager: shared dict, list, counter, lock and arrays (docs/manager.md)
 * ====================================================================== */

/* MANAGER_API_BEGIN */

/* What Python's multiprocessing.Manager() gives through a server process,
 * forkpool gives through one shared-memory arena that every process maps at
 * the same address: no server, no round trip, memory speed.
 *
 * Create the manager BEFORE fp_pool_new(): workers are forked (by the
 * pool's fork server) after that point and inherit the mapping, so every
 * handle below -- a pointer into the arena -- is valid in every process
 * forked after the manager was created, including objects created later
 * (pass those to workers with fp_*_ref() / fp_*_from_ref()). A manager
 * created after the pool started is NOT visible to that pool's workers.
 *
 * Every call works from any process and thread at the same time. Each
 * call on a dict or list is atomic; a sequence of calls is not: "get then
 * set" loses updates under concurrency, use fp_dict_add_int(),
 * fp_counter_add() or an fp_lock. Dict reads and in-place updates of
 * numbers take no lock, other dict writes lock one stripe of 256, a list
 * has one lock; each thread allocates from its own cache, so processes
 * working on different keys scale (docs/manager.md). Each thread that
 * calls a dict or list function, or creates or destroys an object, takes
 * one of the manager's heap slots (one per 256 KiB of arena, 8 to 1024)
 * and keeps it while it lives: such a call from one more live thread
 * fails with FP_ENOMEM. Counter and lock operations and array access take
 * no slot.
 * A process killed in the middle of any call leaves every structure valid:
 * the interrupted call took effect entirely or not at all, and the next
 * process to touch the structure repairs it (see docs/manager.md). Two
 * calls are made of several such steps and may stop between them:
 * fp_list_extend (a prefix of its values is appended) and fp_dict_clear
 * (some stripes are cleared, the others untouched).
 *
 * Handles are checked: NULL or a freed object gives FP_EINVAL, an object of
 * another type FP_ETYPE. Values stored in dicts and lists are single codec
 * values (exactly one well-formed encoded value, else FP_EPROTO); reads copy
 * the encoded value out into a caller's fp_writer (appended with
 * fp_write_raw semantics).
 *
 * A refused call (a bad handle or argument, a full arena: FP_EINVAL,
 * FP_ETYPE, FP_EMSGSIZE, FP_EPROTO, FP_EPERM, FP_ENOMEM, ...) sets the
 * thread's fp_last_error() to what was wrong ("the handle is a counter,
 * not a dict", "the manager's arena is full: ..."). Ordinary outcomes
 * (FP_ENOENT, FP_ERANGE, FP_EEXIST, FP_ETIMEDOUT, FP_EOWNERDEAD) and
 * successes leave it alone: they cost no message on the fast paths. */

typedef struct fp_manager fp_manager;
typedef struct fp_dict fp_dict;
typedef struct fp_list fp_list;
typedef struct fp_counter fp_counter;
typedef struct fp_lock fp_lock;
typedef struct fp_array fp_array;

/* Manager options; zero-fill, then set what you need. */
typedef struct fp_manager_opts {
  /* Bytes of address space to reserve for the arena (MAP_NORESERVE: pages
   * cost memory only once touched). 0 = 1 GiB. At least 256 KiB, at most
   * 1 TiB. Rounded up to the page size. A live thread that writes keeps
   * up to ~270 KiB of free chunks cached for itself while it runs (pool
   * workers give theirs back whenever they go idle; docs/manager.md, "The
   * arena"): allow 1 MiB or more per writer of your own. */
  size_t arena_size;
} fp_manager_opts;

/* Usage figures of a manager's arena. */
typedef struct fp_manager_stats {
  size_t arena_size; /* bytes reserved */
  size_t used;       /* bytes handed out by the allocator: live data
                        (size-class rounded), plus chunks that threads
                        hold in their caches or retired for later reuse */
  size_t free;       /* bytes not handed out: free pages and chunks,
                        allocator overhead, untouched space */
  size_t objects;    /* live dicts, lists, counters, locks and arrays */
  size_t repairs;    /* interrupted updates rolled back or forward after
                        the process doing them died */
  size_t footprint;  /* the most bytes of the arena the allocator has had
                        carved at once (both ends together): a high-water
                        mark, about the memory it touched */
} fp_manager_stats;

/* Maximum dict key length in bytes; longer keys give FP_EMSGSIZE. */
#define FP_DICT_KEY_MAX 4096

/* Creates a manager: maps the arena and builds its header. opts may be
 * NULL. Returns 0 and *out, FP_EINVAL (bad size), or FP_ENOMEM / -errno
 * when mmap fails. Free it with fp_manager_free(). */
FP_EXTERN int fp_manager_new(fp_manager **out, const fp_manager_opts *opts);

/* Gives the calling thread's heap (its cached chunks and its heap slot)
 * back, then unmaps the arena from the calling process. Every handle into
 * it becomes invalid in this process; other processes that inherited the
 * mapping keep it until they exit or call this too. NULL is ignored. Call
 * it after the pool's workers are gone, and not while another thread of
 * this process is inside a call on it. From an fp_dict_foreach() callback
 * on one of its dicts it frees nothing and sets fp_last_error(). */
FP_EXTERN void fp_manager_free(fp_manager *m);

/* Fills *out with the arena's usage. Returns 0 or FP_EINVAL. */
FP_EXTERN int fp_manager_stats_get(fp_manager *m, fp_manager_stats *out);

/* --- dict: byte-string keys -> codec values --------------------------- */
/* Keys are byte strings (key, klen), klen <= FP_DICT_KEY_MAX; the empty key
 * (klen 0, key may be NULL) is allowed. Reads and in-place updates of
 * numbers take no lock; inserts, deletes and other writes lock one of 256
 * stripes (by key hash), so processes working on different keys rarely
 * meet. Errors common to all calls: FP_EINVAL (NULL handle or argument),
 * FP_ETYPE (handle of another type), FP_EMSGSIZE (key too long, or value
 * larger than the arena's heap area: its size less the header, page map
 * and heap table), FP_ENOMEM (arena full, or no heap slot for this
 * thread; the dict is unchanged), FP_EPROTO (value not exactly one encoded
 * value). */

/* Creates an empty dict in m. Returns 0 and *out (valid in every process
 * forked after fp_manager_new), FP_ENOMEM or FP_EINVAL. */
FP_EXTERN int fp_dict_new(fp_manager *m, fp_dict **out);

/* Destroys the dict: marks it dying, so that every later call on it, from
 * any process, fails with FP_EINVAL (a call already holding one of its
 * locks finishes first, and what it added is freed too), then empties it
 * and frees it. A destroy interrupted by a crash may be called again.
 * Handles and refs of a destroyed dict are detected in most cases, but no
 * process should use them. Returns 0 or an error. */
FP_EXTERN int fp_dict_destroy(fp_dict *d);

/* d[key] = value, where value/vlen is one encoded value (copied). */
FP_EXTERN int fp_dict_set(fp_dict *d, const void *key, size_t klen,
                          const void *value, size_t vlen);

/* Typed setters: d[key] = v as an INT, FLOAT, STR (NUL-terminated s) or
 * BYTES value. An INT or FLOAT stored over a value of the same type is
 * updated in place, without a lock (one compare-and-swap on x86-64). */
FP_EXTERN int fp_dict_set_int(fp_dict *d, const void *key, size_t klen,
                              int64_t v);
FP_EXTERN int fp_dict_set_float(fp_dict *d, const void *key, size_t klen,
                                double v);
FP_EXTERN int fp_dict_set_str(fp_dict *d, const void *key, size_t klen,
                              const char *s);
FP_EXTERN int fp_dict_set_bytes(fp_dict *d, const void *key, size_t klen,
                                const void *p, size_t n);

/* Appends d[key] (its encoded value) to out. Returns 0, FP_ENOENT when the
 * key is absent, or a writer error (out keeps its sticky error). */
FP_EXTERN int fp_dict_get(fp_dict *d, const void *key, size_t klen,
                          fp_writer *out);

/* Typed getters: *v = d[key]. FP_ENOENT when absent, FP_ETYPE when the
 * value has another type (an INT is not converted to a float). */
FP_EXTERN int fp_dict_get_int(fp_dict *d, const void *key, size_t klen,
                              int64_t *v);
FP_EXTERN int fp_dict_get_float(fp_dict *d, const void *key, size_t klen,
                                double *v);

/* Removes key; when out is not NULL its value is appended to out first
 * (Python's d.pop(key)). Returns 0 or FP_ENOENT. */
FP_EXTERN int fp_dict_delete(fp_dict *d, const void *key, size_t klen,
                             fp_writer *out);

/* Returns 1 when key is present, 0 when not, or a negative error. */
FP_EXTERN int fp_dict_contains(fp_dict *d, const void *key, size_t klen);

/* Returns the number of keys (>= 0) or a negative error. The count is the
 * sum of per-stripe counts read one stripe at a time, without a lock: exact
 * when nobody writes concurrently. A stripe whose lock is held is waited
 * for first (a writer holds it for a few stores), and one whose holder
 * died is taken over and repaired, so the count also agrees with the keys
 * after a process was killed mid-update. FP_EINVAL for a destroyed dict;
 * FP_ENOMEM only when a stripe is locked and the calling thread cannot get
 * a slot in the manager's heap table. */
FP_EXTERN int64_t fp_dict_len(fp_dict *d);

/* Removes every key. Each stripe is cleared atomically; keys inserted
 * concurrently into an already-cleared stripe survive. A process killed
 * in the middle leaves some stripes cleared and the others as they were
 * (each stripe all or nothing, the dict valid); call it again to finish.
 * Returns 0 or an error. */
FP_EXTERN int fp_dict_clear(fp_dict *d);

/* Atomic d[key] += delta on an INT value; a missing key starts at 0. Stores
 * the new value in *new_value (may be NULL). FP_ETYPE when the value is not
 * an INT (the dict is unchanged). Wraps around on overflow like unsigned
 * arithmetic. This is the safe form of "get then set". On an existing key
 * it takes no lock (one compare-and-swap on x86-64), so processes adding
 * to different keys do not slow each other down. */
FP_EXTERN int fp_dict_add_int(fp_dict *d, const void *key, size_t klen,
                              int64_t delta, int64_t *new_value);

/* Atomic set-if-absent: stores value only if key is missing. Returns 0 when
 * stored, FP_EEXIST when the key was present (nothing changed). */
FP_EXTERN int fp_dict_set_if_absent(fp_dict *d, const void *key, size_t klen,
                                    const void *value, size_t vlen);

/* Python's d.setdefault(key, value): atomically stores value if key is
 * missing, then appends the key's value (existing or new) to out (may be
 * NULL). Returns 0 when it stored value, 1 when the key was present. */
FP_EXTERN int fp_dict_setdefault(fp_dict *d, const void *key, size_t klen,
                                 const void *value, size_t vlen,
                                 fp_writer *out);

/* Callback of fp_dict_foreach: key and the encoded value are private
 * copies valid during the call. Return 0 to continue, anything else to
 * stop (fp_dict_foreach then returns that value). It must return: leaving
 * it by longjmp() leaves the walk's bookkeeping behind, and a later
 * fp_manager_free() then reads freed stack. It may fork: the child goes
 * on with the walk as a process of its own. */
typedef int (*fp_dict_item_cb)(const void *key, size_t klen,
                               const void *value, size_t vlen, void *arg);

/* Calls cb for every item, in the hash table's order (not in insertion
 * order, as a Python dict would). Stripes are visited one at a time: each
 * stripe is copied under its lock, then its items are passed to cb with no
 * lock held, so cb may read or modify the dict. Under concurrent
 * modification every item that stays present during the whole walk is
 * seen exactly once, an item added or removed meanwhile may or may not be
 * seen, and no item is seen twice. A destroy of the dict during the walk (from cb or anywhere
 * else) ends it with FP_EINVAL at the next stripe, even when a new dict
 * took the old one's place. Returns 0, cb's nonzero return, FP_ENOMEM
 * (private copy) or an error. */
FP_EXTERN int fp_dict_foreach(fp_dict *d, fp_dict_item_cb cb, void *arg);

/* A dict's ref: a 64-bit value to pass to a worker (e.g. as an INT task
 * argument) for a dict created after the pool started. 0 for a bad handle.
 * A ref carries bits of its manager's random identity. fp_dict_from_ref()
 * returns the dict in any process forked after m was created: 0 and *out,
 * FP_EINVAL (not a live object of m: a ref of another manager, of a
 * destroyed object, or garbage -- type bits that disagree with the object
 * named included; *out is NULL) or FP_ETYPE (a ref of m's object of
 * another type). The other kinds' refs work the same way. */
FP_EXTERN uint64_t fp_dict_ref(const fp_dict *d);
FP_EXTERN int fp_dict_from_ref(fp_manager *m, uint64_t ref, fp_dict **out);

/* --- list: codec values ------------------------------------------------ */
/* Indexes may be negative, counted from the end as in Python (-1 = last);
 * out of range: FP_ERANGE. One lock per list, held for a few stores per
 * call (an appended item is built before it is taken), so appends from
 * several processes take turns. Common errors as for the dict. */

/* Creates an empty list in m: as fp_dict_new. */
FP_EXTERN int fp_list_new(fp_manager *m, fp_list **out);
/* Destroys the list as fp_dict_destroy does a dict. */
FP_EXTERN int fp_list_destroy(fp_list *l);

/* l.append(value). */
FP_EXTERN int fp_list_append(fp_list *l, const void *value, size_t vlen);

/* l.extend(values): data/len is a sequence of zero or more encoded values
 * (e.g. several fp_write_* calls into one writer), appended in order under
 * one lock hold, so no other process's item lands between them. Like
 * Python's extend over an iterator that fails part-way, a call that fails
 * with FP_ENOMEM (the arena filled up) leaves the values before the one
 * that did not fit appended, and so does a process that dies in the
 * middle: a prefix of the values. Malformed data (FP_EPROTO) is refused
 * before anything is appended. */
FP_EXTERN int fp_list_extend(fp_list *l, const void *data, size_t len);

/* Appends l[index] to out. */
FP_EXTERN int fp_list_get(fp_list *l, int64_t index, fp_writer *out);

/* l[index] = value. */
FP_EXTERN int fp_list_set(fp_list *l, int64_t index, const void *value,
                          size_t vlen);

/* l.pop(index): removes l[index], appending its value to out if out is not
 * NULL. The last item (index -1) and the first (index 0: a queue) pop in
 * O(1) and need no memory, so a full arena still drains; other indexes
 * copy the item table (O(n)) and may fail with FP_ENOMEM in a full arena,
 * popping nothing. FP_ERANGE on an empty list or an index outside it. */
FP_EXTERN int fp_list_pop(fp_list *l, int64_t index, fp_writer *out);

/* Returns the number of items (>= 0) or a negative error. */
FP_EXTERN int64_t fp_list_len(fp_list *l);

/* Removes every item. */
FP_EXTERN int fp_list_clear(fp_list *l);

/* Appends one LIST value holding a snapshot of every item to out (Python's
 * list(shared_list)). The snapshot adds one level of nesting: with an item
 * nested FP_MAX_DEPTH lists deep, it fails with FP_EDEPTH, the writer's
 * sticky error -- read such an item with fp_list_get. A failed snapshot
 * leaves out's bytes as they were (as a failed fp_pack does). */
FP_EXTERN int fp_list_snapshot(fp_list *l, fp_writer *out);

/* Refs as fp_dict_ref / fp_dict_from_ref. */
FP_EXTERN uint64_t fp_list_ref(const fp_list *l);
FP_EXTERN int fp_list_from_ref(fp_manager *m, uint64_t ref, fp_list **out);

/* --- counter: lock-free int64 (Python's Value('i')) --------------------- */
/* Each call is one C11 atomic operation on an aligned int64 in the arena:
 * nothing to repair when a process dies, never blocks. Every call returns
 * FP_EINVAL for a NULL argument or a counter that was destroyed, FP_ETYPE
 * for a handle of another kind. */

/* Creates a counter holding `initial`: 0 and *out, FP_ENOMEM (arena full)
 * or FP_EINVAL. Destroy: 0, then calls on it (a second destroy included)
 * give FP_EINVAL -- until a new counter reuses its memory: a handle is a
 * pointer, so a later object at the same place answers to it. Refs carry
 * the object's creation number and are always refused once it is gone;
 * no process should use a destroyed handle. The same holds for locks and
 * arrays. */
FP_EXTERN int fp_counter_new(fp_manager *m, int64_t initial, fp_counter **out);
FP_EXTERN int fp_counter_destroy(fp_counter *c);

/* Atomically adds delta (wrapping) and stores the new value in *new_value
 * (may be NULL). */
FP_EXTERN int fp_counter_add(fp_counter *c, int64_t delta,
                             int64_t *new_value);
/* Reads the value into *value / stores value: 0 or an error above. */
FP_EXTERN int fp_counter_get(fp_counter *c, int64_t *value);
FP_EXTERN int fp_counter_set(fp_counter *c, int64_t value);

/* Compare-exchange: if the value equals *expected, stores desired and
 * returns 1; otherwise stores the current value in *expected and returns
 * 0. Negative on a bad handle. */
FP_EXTERN int fp_counter_cas(fp_counter *c, int64_t *expected,
                             int64_t desired);

/* Refs as fp_dict_ref / fp_dict_from_ref. */
FP_EXTERN uint64_t fp_counter_ref(const fp_counter *c);
FP_EXTERN int fp_counter_from_ref(fp_manager *m, uint64_t ref,
                                  fp_counter **out);

/* --- lock: robust, process-shared mutex (Python's Manager().Lock()) ----- */
/* Ownership belongs to the calling thread (a pthread mutex), not to the
 * process. Not recursive. */

/* Creates an unlocked lock: 0 and *out, FP_ENOMEM or FP_EINVAL. Destroy:
 * 0 (also while someone holds it: make sure nobody does), then calls on it
 * give FP_EINVAL (until a new lock reuses its memory: see fp_counter_new);
 * FP_ETYPE for a handle of another kind. */
FP_EXTERN int fp_lock_new(fp_manager *m, fp_lock **out);
FP_EXTERN int fp_lock_destroy(fp_lock *l);

/* Acquires the lock, waiting at most timeout seconds (FP_FOREVER or any
 * negative value: forever; 0: try once). Returns 0, FP_ETIMEDOUT (0 timeout
 * included: FP_EBUSY is not used), or FP_EOWNERDEAD: the previous holder
 * died holding it; the lock was made consistent and YOU HOLD IT NOW, but
 * the state it protects may be half-updated -- check or rebuild it, then
 * fp_lock_release() as usual. A thread that already holds it: -EDEADLK.
 * A NaN timeout, or a bad handle: FP_EINVAL. */
FP_EXTERN int fp_lock_acquire(fp_lock *l, double timeout);

/* Releases the lock. FP_EPERM when the calling thread does not hold it. */
FP_EXTERN int fp_lock_release(fp_lock *l);

/* Refs as fp_dict_ref / fp_dict_from_ref. */
FP_EXTERN uint64_t fp_lock_ref(const fp_lock *l);
FP_EXTERN int fp_lock_from_ref(fp_manager *m, uint64_t ref, fp_lock **out);

/* --- array: raw shared bytes (multiprocessing.Array / shared_memory) ---- */
/* A fixed-size, zero-filled, 64-byte aligned buffer that tasks read and
 * write directly. No locking: coordinate with an fp_lock, atomics, or by
 * giving each task its own slice. */

/* Creates an array of `size` bytes (0 allowed): 0 and *out, FP_EMSGSIZE
 * (larger than the arena's heap area could ever hold), FP_ENOMEM (no
 * room now) or FP_EINVAL. Destroy: 0, then calls on it give FP_EINVAL
 * (until a new array reuses its memory: see fp_counter_new); FP_ETYPE for
 * a handle of another kind. */
FP_EXTERN int fp_array_new(fp_manager *m, size_t size, fp_array **out);
FP_EXTERN int fp_array_destroy(fp_array *a);

/* Returns the buffer (NULL for a bad handle) and its size (0 likewise). */
FP_EXTERN void *fp_array_data(fp_array *a);
FP_EXTERN size_t fp_array_size(const fp_array *a);

/* Refs as fp_dict_ref / fp_dict_from_ref. */
FP_EXTERN uint64_t fp_array_ref(const fp_array *a);
FP_EXTERN int fp_array_from_ref(fp_manager *m, uint64_t ref, fp_array **out);

/* MANAGER_API_END */

/* ======================================================================
 * Compile-time helpers: typed packing and FP_MAP (docs/codec.md,
 * docs/pool.md)
 * ====================================================================== */

/* TYPED_API_BEGIN */

/* fp_pack() and fp_unpack() are variadic, so the compiler cannot see that
 * "i" wants an int64_t: fp_pack(w, "i", n) with a plain int n (or a
 * double) is undefined behaviour that no warning reports, and
 * fp_unpack(r, "i", &n) with an int n writes 8 bytes into 4. The macros
 * below take the types from the arguments (C11 _Generic): a value is
 * converted to the type its format letter needs, or refused at compile
 * time.
 *
 *   FP_PACK(w, ...)       packs 1 to 8 values, each by its C type: any
 *                         integer type gives "i" (converted to int64_t),
 *                         float and double give "d", char * and
 *                         const char * give "s", _Bool gives "?".
 *                         FP_PACK(&w, 7, 2.5, "x") is
 *                         fp_pack(&w, "i d s", (int64_t)7, 2.5, "x"): same
 *                         return value, and a failed pack adds nothing.
 *   FP_PACK_LIST(w, ...)  the same values as one list, e.g. one starmap
 *                         tuple: FP_PACK_LIST(&items, a, b) is "[i i]".
 *   FP_UNPACK(r, ...)     unpacks 1 to 8 values into int64_t *, double *
 *                         or const char ** ("i", "d", "s"); any other
 *                         pointer, an int * or a NULL included, does not
 *                         compile (use fp_unpack with '*' to skip).
 *   FP_I(x) FP_D(x)       one argument of an explicit fp_pack() format,
 *   FP_S(x) FP_B(x)       for "i", "d", "s" and "?" (lists and bytes need
 *                         a format): fp_pack(w, "[i d]", FP_I(n), FP_D(x)).
 *                         FP_I takes integer types only (a double or a
 *                         pointer does not compile), FP_D integer and
 *                         floating types, FP_S char pointers only, FP_B
 *                         integer types (any nonzero value is true).
 *   FP_MAP(pool, fn, in, n, out, opts)
 *                         fp_pool_map() with in_size = sizeof *in and
 *                         out_size = sizeof *out: in and out are typed
 *                         arrays or pointers (a void * does not compile).
 *   FP_MAP_ASYNC(pool, fn, in, n, out, opts, res)
 *                         the same for fp_pool_map_async().
 *
 * Every argument is evaluated exactly once. A refused type stops the
 * compilation with "_Generic selector of type ... is not compatible with
 * any association". Unsigned values above INT64_MAX become negative
 * int64_t values, as with a cast. The macros need C11 and are not defined
 * for C++. */

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L &&               \
    !defined(__cplusplus)

/* Identity conversions the macros call: the parameter type is the point. */
static inline int64_t fp__as_i(int64_t v) { return v; }
static inline double fp__as_d(double v) { return v; }
static inline const char *fp__as_s(const char *v) { return v; }
/* Widest type: a 64-bit value whose low 32 bits are zero is still true. */
static inline int fp__as_b(unsigned long long v) { return v != 0; }

#if defined(__GNUC__)
/* Never defined: a call compiled in (FP_MAP over a void *) is an error. */
size_t fp__map_needs_typed_arrays(void)
    __attribute__((error("FP_MAP: in and out must be typed arrays or "
                         "pointers, not void *")));
#else
size_t fp__map_needs_typed_arrays(void); /* never defined: a link error */
#endif

/* _Generic associations mapping every integer type (but _Bool) to f. */
#define FP__INTEGERS(f)                                                        \
  char: f, signed char: f, unsigned char: f, short: f, unsigned short: f,      \
  int: f, unsigned: f, long: f, unsigned long: f, long long: f,                \
  unsigned long long: f

#define FP_I(x) _Generic((x), FP__INTEGERS(fp__as_i), _Bool: fp__as_i)(x)
#define FP_D(x)                                                                \
  _Generic((x), FP__INTEGERS(fp__as_d), _Bool: fp__as_d, float: fp__as_d,      \
           double: fp__as_d, long double: fp__as_d)(x)
#define FP_S(x) _Generic((x), char *: fp__as_s, const char *: fp__as_s)(x)
#define FP_B(x) _Generic((x), FP__INTEGERS(fp__as_b), _Bool: fp__as_b)(x)

/* The pack letter of a value and the value converted for it. */
#define FP__LETTER(x)                                                          \
  _Generic((x), FP__INTEGERS('i'), _Bool: '?', float: 'd', double: 'd',        \
           long double: 'd', char *: 's', const char *: 's')
#define FP__ARG(x)                                                             \
  _Generic((x), FP__INTEGERS(fp__as_i), _Bool: fp__as_b, float: fp__as_d,      \
           double: fp__as_d, long double: fp__as_d, char *: fp__as_s,          \
           const char *: fp__as_s)(x)
/* The unpack letter of an output pointer. */
#define FP__ULETTER(p)                                                         \
  _Generic((p), int64_t *: 'i', double *: 'd', const char **: 's')

/* FP__EACH(m, a, b, ...) is m(a), m(b), ... for 1 to 8 arguments; 9 to 16
 * name an undeclared identifier, so that too many values do not compile. */
#define FP__NARGS(...)                                                         \
  FP__NARGS_(__VA_ARGS__, X, X, X, X, X, X, X, X, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define FP__NARGS_(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13,     \
                   a14, a15, a16, n, ...)                                      \
  n
#define FP__CAT(a, b) FP__CAT_(a, b)
#define FP__CAT_(a, b) a##b
#define FP__EACH(m, ...) FP__CAT(FP__EACH, FP__NARGS(__VA_ARGS__))(m, __VA_ARGS__)
#define FP__EACHX(m, ...) fp__at_most_8_values
#define FP__EACH1(m, a) m(a)
#define FP__EACH2(m, a, ...) m(a), FP__EACH1(m, __VA_ARGS__)
#define FP__EACH3(m, a, ...) m(a), FP__EACH2(m, __VA_ARGS__)
#define FP__EACH4(m, a, ...) m(a), FP__EACH3(m, __VA_ARGS__)
#define FP__EACH5(m, a, ...) m(a), FP__EACH4(m, __VA_ARGS__)
#define FP__EACH6(m, a, ...) m(a), FP__EACH5(m, __VA_ARGS__)
#define FP__EACH7(m, a, ...) m(a), FP__EACH6(m, __VA_ARGS__)
#define FP__EACH8(m, a, ...) m(a), FP__EACH7(m, __VA_ARGS__)

/* The format is a compound literal built from the letters: the values'
 * types are known at compile time, the string exists at run time. */
#define FP_PACK(w, ...)                                                        \
  fp_pack((w), (const char[]){FP__EACH(FP__LETTER, __VA_ARGS__), '\0'},        \
          FP__EACH(FP__ARG, __VA_ARGS__))
#define FP_PACK_LIST(w, ...)                                                   \
  fp_pack((w),                                                                 \
          (const char[]){'[', FP__EACH(FP__LETTER, __VA_ARGS__), ']', '\0'},   \
          FP__EACH(FP__ARG, __VA_ARGS__))
#define FP_UNPACK(r, ...)                                                      \
  fp_unpack((r), (const char[]){FP__EACH(FP__ULETTER, __VA_ARGS__), '\0'},     \
            __VA_ARGS__)

/* sizeof *p, refusing void pointers (whose sizeof *p would be 1). */
#define FP__ELEM_SIZE(p)                                                       \
  _Generic((p), void *: fp__map_needs_typed_arrays(),                          \
           const void *: fp__map_needs_typed_arrays(), default: sizeof *(p))
#define FP_MAP(pool, fn, in, n, out, opts)                                     \
  fp_pool_map((pool), (fn), (in), (n), FP__ELEM_SIZE(in), (out),               \
              FP__ELEM_SIZE(out), (opts))
#define FP_MAP_ASYNC(pool, fn, in, n, out, opts, res)                          \
  fp_pool_map_async((pool), (fn), (in), (n), FP__ELEM_SIZE(in), (out),         \
                    FP__ELEM_SIZE(out), (opts), (res))

#endif /* C11, not C++ */

/* TYPED_API_END */

#ifdef __cplusplus
}
#endif
#endif /* FORKPOOL_H */
