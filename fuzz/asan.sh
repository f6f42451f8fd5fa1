#!/usr/bin/env bash
# The integration tests that send garbage (malformed, injected, replayed
# datagrams, floods), against the Cython core built with AddressSanitizer and
# UndefinedBehaviorSanitizer. Run as root, after tools/setup.sh and
# fuzz/setup.sh (make test-asan does both).
#
# The core is built with clang into build/asan/lib (the normal in-place build
# is untouched) and copied with the Python package and the tests into
# build/asan/tree, where the tests run: the routers the testbed starts with
# `python -m dataplane` from that directory import the same ASan build, and
# every process gets the ASan runtime through LD_PRELOAD (Python itself is
# not instrumented; ASAN_OPTIONS=detect_leaks=0 because CPython keeps memory
# on purpose). Every sanitizer report of any process goes to
# build/asan/logs/; the run fails if the tests fail or if any report exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/weavefast/bin/python}  # the venv tools/setup.sh made
root=$PWD
out=$root/build/asan
TESTS=${ASAN_TESTS:-tests/test_bad_input.py tests/test_memory.py tests/test_sealed.py}
SELECT=${ASAN_SELECT:-injection or replay or malformed or floods}

rm -rf "$out/tree" "$out/logs"
mkdir -p "$out/tree" "$out/logs"
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
CC=clang LDSHARED="clang -shared" CFLAGS="-g -O1 $sanitize" LDFLAGS="$sanitize -shared-libasan" \
  "$PYTHON" setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp" --force >"$out/build.log" 2>&1 ||
  { cat "$out/build.log" >&2; echo "test-asan: building the ASan core failed" >&2; exit 1; }
so=$(ls "$out"/lib/dataplane/_core*.so)
nm -D "$so" | grep -q __asan_report || { echo "test-asan: $so is not instrumented" >&2; exit 1; }

cp -r dataplane tests pyproject.toml "$out/tree/"
find "$out/tree" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
cp "$so" "$out/tree/dataplane/"
# ASan's shadow memory and quarantine make resident size meaningless: the
# copy of test_memory.py checks the floods' effect on memory with a looser
# bound (1 GiB; the normal run keeps its 64 MB).
sed -i 's/^RSS_LIMIT_KB = 64 \* 1024$/RSS_LIMIT_KB = 1024 * 1024  # ASan build (fuzz\/asan.sh)/' \
  "$out/tree/tests/test_memory.py"
grep -q "ASan build" "$out/tree/tests/test_memory.py" ||
  { echo "test-asan: tests/test_memory.py has no 'RSS_LIMIT_KB = 64 * 1024' line to loosen any more" >&2; exit 1; }

runtime=$(clang -print-file-name=libclang_rt.asan-x86_64.so)
[ -f "$runtime" ] || { echo "test-asan: no $runtime (apt-get install libclang-rt-14-dev)" >&2; exit 1; }
cd "$out/tree"
run_tests() {
  LD_PRELOAD=$runtime \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$out/logs/sanitizer:print_summary=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$out/logs/sanitizer" \
    "$PYTHON" -m pytest -q -o cache_dir="$out/pytest-cache" "$@" $TESTS -k "$SELECT"
}
set +e
run_tests
rc=$?
reports=$(ls "$out/logs" 2>/dev/null | wc -l)
if [ $rc -ne 0 ] && [ "$reports" -eq 0 ]; then
  # The ASan build is slower: a test whose timing assumptions it broke gets one
  # more try (a sanitizer report never does).
  echo "test-asan: tests failed without a sanitizer report; running the failed ones again" >&2
  run_tests --last-failed
  rc=$?
fi
set -e
reports=$(ls "$out/logs" 2>/dev/null | wc -l)
if [ "$reports" -gt 0 ]; then
  echo "test-asan: $reports sanitizer report(s) in $out/logs:" >&2
  for f in "$out"/logs/*; do echo "== $f" >&2; head -40 "$f" >&2; done
  exit 1
fi
if [ $rc -ne 0 ]; then
  echo "test-asan: the tests failed against the ASan build (exit $rc)" >&2
  exit $rc
fi
echo "test-asan: passed, no sanitizer report"
