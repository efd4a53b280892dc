#!/bin/sh
# SPDX-License-Identifier: MIT
# readme_blocks.sh - extracts the C examples of a Markdown file, so that
# make check compiles and runs every one of them (as it does docs/examples).
#
#   sh tests/readme_blocks.sh README.md build/readme
#
# Writes OUT/readme_N.c for the N-th ```c block (N from 1) and, when a
# ```text block comes after it in the same section (before the next heading
# and the next ```c block), that block as OUT/readme_N.expected: what the
# program must print on stdout. Files of blocks that no longer exist are
# removed. Prints the .c paths, one a line.

md=${1:?usage: readme_blocks.sh FILE.md OUTDIR}
out=${2:?usage: readme_blocks.sh FILE.md OUTDIR}
mkdir -p "$out" || exit 1
rm -f "$out"/readme_*.c "$out"/readme_*.expected
awk -v out="$out" '
  # A fence opens a block of its info string (c, text, sh ...); the same
  # fence with no info string closes it.
  !inblk && /^```/ {
    inblk = 1
    kind = substr($0, 4)
    if (kind == "c") {
      n++
      file = out "/readme_" n ".c"
      want = 1 # the next text block is this program'"'"'s output
    } else if (kind == "text" && want) {
      file = out "/readme_" n ".expected"
      want = 0
    } else {
      file = ""
    }
    next
  }
  !inblk && /^#/ { want = 0 } # a new section: no output block any more
  inblk && /^```[ \t]*$/ { inblk = 0; if (file != "") close(file); next }
  inblk && file != "" { print > file }
  END {
    if (inblk) { print "readme_blocks: unterminated block" > "/dev/stderr"; exit 1 }
    for (i = 1; i <= n; i++) print out "/readme_" i ".c"
  }
' "$md"
