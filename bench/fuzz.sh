#!/usr/bin/env bash
# Fuzzes kiln's untrusted-input parsers with cargo fuzz (libFuzzer) for SECONDS each and prints a
# table: target, seconds run, executions (libFuzzer's stat::number_of_executed_units), exec/s,
# corpus size, crashes. Not part of CI (CI only runs every target over its seeds, uninstrumented:
# `cargo test -p kiln-fuzz`). Exits 1 when a run found a crash. The fuzz crate is a workspace
# member, so the instrumented binaries are in target/x86_64-unknown-linux-gnu/release/.
#
# Usage: bench/fuzz.sh [SECONDS] [TARGET...]    (default: 30 s, all targets)
#
# Runs on the stable toolchain: coverage instrumentation (-Cpasses=sancov-module and
# -Cllvm-args=-sanitizer-coverage-*) is stable, so `cargo fuzz ... -s none` needs no nightly.
# FUZZ_SANITIZER=address (or another sanitizer) adds -Zsanitizer=..., which stable rustc only
# takes with RUSTC_BOOTSTRAP=1: the script sets it then. The targets are safe Rust, so `none`
# (the default) loses little; the sanitizer build is slower and rebuilds everything.
#
# Seeds (checked in) are in fuzz/seeds/<target>/; libFuzzer adds what it finds to the
# gitignored fuzz/corpus/<target>/, and writes crashing inputs to fuzz/artifacts/<target>/.
# Reproduce one with: cargo fuzz run -s none <target> fuzz/artifacts/<target>/crash-...
# Minimize it with:   cargo fuzz tmin -s none <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(extract_tarball parse_job read_manifest)
SAN=${FUZZ_SANITIZER:-none}
TD=() # a sanitizer build gets its own target dir, so switching does not rebuild the other
if [ "$SAN" != none ]; then
  export RUSTC_BOOTSTRAP=1
  TD=(--target-dir "fuzz/target/sanitizer-$SAN")
fi

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -s "$SAN" "${TD[@]}" # all targets, release with debug assertions off (cargo fuzz's default)

max_len() { # libFuzzer's -max_len per target: tarballs need room for a few 512-byte headers
  case $1 in extract_tarball) echo 32768 ;; *) echo 8192 ;; esac
}

LOGS=fuzz/logs
mkdir -p "$LOGS"
ROWS=()
FOUND=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | sort)
  log=$LOGS/$t.log
  start=$(date +%s)
  # -timeout: one input taking over 10 s is a hang; the extractor's own budget is 1 s.
  cargo fuzz run -s "$SAN" "${TD[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len="$(max_len "$t")" >"$log" 2>&1 || true
  took=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  persec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  new=$(comm -13 <(echo "$before") <(find "fuzz/artifacts/$t" -type f | sort) | grep -c . || true)
  FOUND=$((FOUND + new))
  ROWS+=("$(printf '| %-16s | %7s | %12s | %8s | %7s | %7s |' "$t" "$took" "${execs:-?}" \
    "${persec:-?}" "$corpus" "$new")")
  if [ "$new" -gt 0 ]; then
    echo "$t: crash, see $log and:" >&2
    comm -13 <(echo "$before") <(find "fuzz/artifacts/$t" -type f | sort) >&2
  fi
done

echo
echo "cargo fuzz (libFuzzer), sanitizer: $SAN, $SECS s per target; logs in $LOGS/"
echo
printf '| %-16s | %7s | %12s | %8s | %7s | %7s |\n' target seconds executions "exec/s" corpus crashes
echo "|------------------|---------|--------------|----------|---------|---------|"
printf '%s\n' "${ROWS[@]}"
[ "$FOUND" -eq 0 ]
