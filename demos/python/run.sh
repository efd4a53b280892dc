#!/bin/sh
# SPDX-License-Identifier: MIT
# run.sh - runs the Python twins of the demos and summarises them, like
# demos/run.sh does for the C programs (`make demo-python`).
#
# Uses Debian's /usr/bin/python3. Missing modules are installed first with
# apt-get (python3-joblib, python3-numpy, python3-sklearn, python3-psutil;
# through sudo when not root). Each script runs at its default sizes, which
# match the C demos' defaults except bogosort (100 arrays instead of 1000:
# CPython needs ~60 ms per array), affinity and manager (smaller loops), and
# times each side 3 times (--repeat), reporting the medians. Exits 1 if any
# check failed or a script crashed. PY_ARGS is passed to every script.
#
#   sh demos/python/run.sh --deps     only installs the missing modules
#                                     (used by demos/compare.sh)

here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
[ -x "$py" ] || py=python3
demos="cumsum forest bogosort kmeans textclean affinity manager"

# Install what is missing, one Debian package per module.
missing=
for pair in joblib:python3-joblib numpy:python3-numpy \
            sklearn:python3-sklearn psutil:python3-psutil; do
  mod=${pair%%:*}
  pkg=${pair#*:}
  "$py" -c "import $mod" 2>/dev/null || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends $missing >/dev/null ||
      { echo "apt-get install failed"; exit 2; }
  else
    echo "no apt-get: install$missing yourself" >&2
    exit 2
  fi
fi
[ "${1:-}" = --deps ] && exit 0

tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM
tmo=
command -v timeout >/dev/null 2>&1 && tmo="timeout 900"
failed=0
start=$(date +%s)
for name in $demos; do
  script="$here/$name.py"
  if [ ! -f "$script" ]; then
    echo "== $name: $script missing, skipped"
    echo "$name skipped" >> "$tmp/summary"
    continue
  fi
  echo "== $name.py"
  { $tmo "$py" "$script" $PY_ARGS 2>&1; echo $? > "$tmp/$name.rc"; } |
    tee "$tmp/$name.out"
  rc=$(cat "$tmp/$name.rc")
  line=$(grep '^RESULT ' "$tmp/$name.out" | tail -n 1)
  if [ -z "$line" ]; then
    echo "$name crashed $rc" >> "$tmp/summary"
    failed=1
  else
    echo "$line" >> "$tmp/summary"
    case "$line" in *check=ok*) [ "$rc" = 0 ] || failed=1 ;; *) failed=1 ;; esac
  fi
  echo
done

end=$(date +%s)
echo "== summary (Python $("$py" -c 'import sys; print(sys.version.split()[0])'), $((end - start)) s in all)"
awk '
  BEGIN { printf "%-10s %12s %12s %9s  %s\n", "demo", "sequential s",
          "parallel s", "speedup", "check" }
  $1 == "RESULT" {
    seq = par = sp = ck = "?"
    note = ""
    for (i = 3; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "seq") seq = kv[2]
      else if (kv[1] == "par") par = kv[2]
      else if (kv[1] == "speedup") sp = kv[2] "x"
      else if (kv[1] == "check") ck = kv[2]
      else if (kv[1] == "note" && kv[2] == "noisy") note = "  (speedup noisy, rerun)"
    }
    printf "%-10s %12s %12s %9s  %s%s\n", $2, seq, par, sp, ck, note
    next
  }
  $2 == "skipped" { printf "%-10s %12s %12s %9s  %s\n", $1, "-", "-", "-",
                    "skipped (script missing)"; next }
  $2 == "crashed" { printf "%-10s %12s %12s %9s  %s\n", $1, "-", "-", "-",
                    "FAIL (exit status " $3 ", no RESULT line)"; next }
' "$tmp/summary"
if [ "$failed" != 0 ]; then
  echo "Python demo run FAILED"
  exit 1
fi
echo "all Python demos ok"
