#!/usr/bin/env bash
# Builds and runs fuzz targets, one after the other, each for FUZZ_SECONDS
# (default 600). Usage: fuzz/run.sh [target...]  (default: all of them)
#
#   C targets (libFuzzer + ASan + UBSan): datagram rxpath reasm uso tso aead replay
#   Python targets (atheris):             control reference
#
# Each starts from its committed seed corpus fuzz/corpus/<target>/ (read
# only) plus what earlier runs found in build/fuzz/corpus/<target>/. Any
# crash, leak, sanitizer report, timeout or out-of-memory fails the target:
# the input is left in build/fuzz/crashes/<target>/ and the log in
# build/fuzz/<target>.log; the script goes on with the other targets and
# exits 1 at the end if any failed. Reproduce with
#   build/fuzz/bin/fuzz_<target> build/fuzz/crashes/<target>/crash-...
#   /opt/weavefast/bin/python fuzz/fuzz_<target>.py build/fuzz/crashes/<target>/crash-...
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/weavefast/bin/python}  # the venv tools/setup.sh made
SECONDS_EACH=${FUZZ_SECONDS:-600}
C_TARGETS=(datagram rxpath reasm uso tso aead replay)
PY_TARGETS=(control reference)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${C_TARGETS[@]}" "${PY_TARGETS[@]}")
out=build/fuzz
mkdir -p "$out/bin"
CC=${FUZZ_CC:-clang}
CFLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -D_GNU_SOURCE -Iext/includes -Ifuzz)

declare -A dict=([datagram]=datagram [rxpath]=datagram [reasm]= [uso]= [tso]= [aead]=datagram [replay]= [control]=control [reference]=datagram)
failed=()
for t in "${targets[@]}"; do
  if [ -f "fuzz/fuzz_$t.c" ]; then
    if ! "$CC" "${CFLAGS[@]}" "fuzz/fuzz_$t.c" -lcrypto -o "$out/bin/fuzz_$t"; then
      echo "fuzz $t: BUILD FAILED" >&2
      failed+=("$t")
      continue
    fi
    cmd=("$out/bin/fuzz_$t")
  elif [ -f "fuzz/fuzz_$t.py" ]; then
    cmd=("$PYTHON" "fuzz/fuzz_$t.py")
  else
    echo "fuzz: no target '$t' (have: ${C_TARGETS[*]} ${PY_TARGETS[*]})" >&2
    exit 2
  fi
  mkdir -p "$out/corpus/$t" "$out/crashes/$t"
  opts=(-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2560 -max_len=8192
        -print_final_stats=1 -artifact_prefix="$out/crashes/$t/")
  [ -n "${dict[$t]:-}" ] && opts+=(-dict="fuzz/dict/${dict[$t]}.dict")
  echo "fuzz $t: ${SECONDS_EACH} s ..."
  # The first corpus directory is where new inputs go; the seeds stay as committed.
  "${cmd[@]}" "${opts[@]}" "$out/corpus/$t" "fuzz/corpus/$t" >"$out/$t.log" 2>&1
  rc=$?
  stats=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$out/$t.log" | tail -1 |
          sed -E 's/.*DONE +(cov: [0-9]+ ft: [0-9]+).*exec\/s: ([0-9]+).*/\1, \2 exec\/s/')
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$out/$t.log" | tail -1)
  if [ $rc -ne 0 ] || grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: " "$out/$t.log"; then
    echo "fuzz $t: FAILED (exit $rc): input in $out/crashes/$t/, log $out/$t.log" >&2
    grep -E "ERROR:|runtime error:|invariant violated|Error:|SUMMARY:" "$out/$t.log" | head -5 >&2
    ls "$out/crashes/$t/" >&2
    failed+=("$t")
  else
    echo "fuzz $t: ok, ${runs:-?} runs, ${stats:-no stats}"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
