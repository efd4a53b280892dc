#!/bin/sh
# SPDX-License-Identifier: MIT
# install_check.sh - checks what README.md promises about an installed
# forkpool (what `make check-install` runs).
#
#   sh tests/install_check.sh BUILD_DIR
#
# Expects `make install DESTDIR=BUILD_DIR/stage PREFIX=/usr` and the
# README's blocks in BUILD_DIR/readme (tests/readme_blocks.sh) to be there.
# Then, with PKG_CONFIG_PATH pointed at the staged forkpool.pc:
#   1. the README's one-line build of its first C block (the "taste"),
#      `cc taste.c $(pkg-config --cflags --libs forkpool)`, links the
#      shared library and prints the README's expected output;
#   2. with the shared library gone (INSTALL_SHARED=0), the static line
#      `cc taste.c $(pkg-config --static --cflags --libs forkpool)` links
#      libforkpool.a: the program needs no libforkpool.so and prints the
#      same output;
#   3. the man page is installed under share/man/man3 and renders.
# $CC is the compiler (default cc). Exits 1 on the first failure.

build=$(cd "${1:?usage: install_check.sh BUILD_DIR}" && pwd) || exit 1
stage=$build/stage
cc=${CC:-cc}
fail() { echo "install_check: $*" >&2; exit 1; }

[ -f "$stage/usr/lib/pkgconfig/forkpool.pc" ] || fail "no staged install in $stage"
[ -f "$build/readme/readme_1.c" ] || fail "no README blocks in $build/readme"
tmp=$build/install-check
rm -rf "$tmp" && mkdir -p "$tmp" || exit 1
cp "$build/readme/readme_1.c" "$tmp/taste.c"
want=$build/readme/readme_1.expected
[ -f "$want" ] || fail "README's taste has no expected output block"

# 1. The README's line, against the shared library.
PKG_CONFIG_PATH=$stage/usr/lib/pkgconfig
export PKG_CONFIG_PATH
(cd "$tmp" && $cc taste.c $(pkg-config --cflags --libs forkpool) -o taste) ||
  fail "the README's build line failed"
LD_LIBRARY_PATH=$stage/usr/lib "$tmp/taste" > "$tmp/taste.out" ||
  fail "taste (shared) exited with status $?"
cmp -s "$tmp/taste.out" "$want" || fail "taste (shared) printed:
$(cat "$tmp/taste.out")"
readelf -d "$tmp/taste" | grep -q 'NEEDED.*libforkpool\.so\.0' ||
  fail "taste (shared) does not need libforkpool.so.0"
echo "install_check: README's cc line (shared) ok"

# 2. The static line, with only libforkpool.a installed (a copy of the
#    stage without the shared library: what INSTALL_SHARED=0 installs).
cp -R "$stage" "$tmp/stage-static" || exit 1
rm -f "$tmp"/stage-static/usr/lib/libforkpool.so*
PKG_CONFIG_PATH=$tmp/stage-static/usr/lib/pkgconfig
(cd "$tmp" &&
  $cc taste.c $(pkg-config --static --cflags --libs forkpool) -o taste-static) ||
  fail "the static build line failed: $(pkg-config --static --libs forkpool)"
"$tmp/taste-static" > "$tmp/taste-static.out" ||
  fail "taste (static) exited with status $?"
cmp -s "$tmp/taste-static.out" "$want" || fail "taste (static) printed:
$(cat "$tmp/taste-static.out")"
if readelf -d "$tmp/taste-static" | grep -q 'NEEDED.*libforkpool'; then
  fail "taste (static) still needs libforkpool.so"
fi
echo "install_check: pkg-config --static line (libforkpool.a only) ok"

# 3. The man page.
man3=$stage/usr/share/man/man3/forkpool.3
[ -f "$man3" ] || fail "forkpool.3 not installed under share/man/man3"
if command -v man >/dev/null 2>&1; then
  MANWIDTH=80 man -l "$man3" 2>/dev/null | grep -q 'FORKPOOL(3)' ||
    fail "forkpool.3 does not render"
fi
echo "install_check: man page ok"
