#!/usr/bin/env bash
# Fuzzes the file readers (safetensors, llama2.c checkpoint, llama2.c tokenizer) with libFuzzer
# under ASan + UBSan for a bounded time each, starting from tests/fuzz/corpus/<target>/.
#
#   bash scripts/fuzz.sh                       # every target, FUZZ_SECONDS (20) each
#   FUZZ_SECONDS=600 FUZZ_TARGETS=safetensors bash scripts/fuzz.sh
#   build-fuzz/fuzz_<target> FILE               # replay one input (a reproducer) once
#
# The build is build-fuzz/ (clang, tests/fuzz/CMakeLists.txt); the working corpus grows in
# build-fuzz/corpus/<target>/ across runs (the repository's seeds are only read). Exits non-zero
# when any target finds a crash, sanitizer report, leak, timeout (-timeout=5 s per input) or
# out-of-memory (2 GB), and prints the reproducer's path.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_TARGETS=${FUZZ_TARGETS:-"safetensors llama2c sp_tokenizer"}
BUILD=${FUZZ_BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc)}

# Longest input per target: room for a few-layer model or a 512-token vocabulary, small enough
# that most of the time goes to mutating structure rather than bulk bytes.
max_len() {
  case "$1" in
    safetensors) echo 4096 ;;
    llama2c) echo 4096 ;;
    sp_tokenizer) echo 8192 ;;
    *) echo "fuzz: unknown target '$1' (known: safetensors llama2c sp_tokenizer)" >&2; exit 2 ;;
  esac
}

if ! command -v clang++ >/dev/null 2>&1 || ! command -v clang >/dev/null 2>&1; then
  echo "fuzz: clang/clang++ not found: install clang and libclang-rt-14-dev (scripts/setup.sh does)"
  exit 1
fi
mkdir -p "$BUILD"
probe="$BUILD/.libfuzzer_probe"
if ! printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' |
    clang++ -x c++ -fsanitize=fuzzer,address,undefined - -o "$probe" >/dev/null 2>&1; then
  echo "fuzz: clang++ cannot link libFuzzer (-fsanitize=fuzzer): install libclang-rt-14-dev (scripts/setup.sh does)"
  exit 1
fi
rm -f "$probe"

start=$(date +%s)
CC=clang CXX=clang++ cmake -S tests/fuzz -B "$BUILD" -G Ninja >/dev/null
targets=()
for t in $FUZZ_TARGETS; do max_len "$t" >/dev/null; targets+=("fuzz_$t"); done
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s; ${FUZZ_SECONDS} s per target"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1  # OpenBLAS (linked by the llama2c target) starts no thread pool
failed=0
for t in $FUZZ_TARGETS; do
  corpus="$BUILD/corpus/$t" artifacts="$BUILD/artifacts/$t" log="$BUILD/logs/$t.log"
  mkdir -p "$corpus" "$BUILD/logs"
  rm -rf "$artifacts" && mkdir -p "$artifacts"
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/
  rc=0
  "$BUILD/fuzz_$t" "$corpus" -max_total_time="$FUZZ_SECONDS" -timeout=5 -rss_limit_mb=2048 \
    -max_len="$(max_len "$t")" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if ((rc != 0)); then
    failed=1
    repro=$(ls -t "$artifacts"/* 2>/dev/null | head -1 || true)
    echo "fuzz: $t FAILED (exit $rc); last lines of $log:"
    grep -E 'ERROR|runtime error|SUMMARY|fuzz invariant|terminate|Test unit written' "$log" | head -20 || tail -20 "$log"
    echo "fuzz: $t reproducer: ${repro:-none written} (replay: $BUILD/fuzz_$t ${repro:-FILE})"
  else
    echo "fuzz: $t ok (${runs:-?} inputs, corpus $(ls "$corpus" | wc -l) files)"
  fi
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit "$failed"
