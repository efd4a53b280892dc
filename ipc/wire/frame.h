/* SPDX-License-Identifier: MIT */
/* frame.h - the frame header for library-internal writers and readers.
 *
 * The public half of the frame layer (fp_frame_parse/write/read) is in
 * forkpool.h. This header serves the pool's own transports, which build
 * frames into iovecs or shared-memory rings and buffer non-blocking
 * streams: they must not write a length prefix by hand, so that the wire
 * is defined in one place (frame.c) with one byte order (little-endian).
 */
#ifndef FP_IPC_WIRE_FRAME_H
#define FP_IPC_WIRE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FP__FRAME_HDR 4 /* bytes of the length prefix */

/* The smallest read a stream reader asks for, and the largest it sizes up
 * front for a frame whose length it does not know yet. */
#define FP__FRAME_READ_MIN (64 * 1024)

/* Writes the header of a frame whose payload is `len` bytes into out.
 * Returns 0, or FP_EMSGSIZE when len does not fit the 32-bit prefix. */
int fp__frame_put_hdr(unsigned char out[FP__FRAME_HDR], size_t len);

/* How many bytes a stream reader should have room for, counting from the
 * start of `buf` (which holds `have` bytes of one or more frames): the
 * whole first frame when its header is known and it is within `max`,
 * else have + FP__FRAME_READ_MIN. The one place read buffers are sized. */
size_t fp__frame_want(const unsigned char *buf, size_t have, size_t max);

#endif
