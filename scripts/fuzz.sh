#!/usr/bin/env bash
# Fuzzes keel with libFuzzer through cargo-fuzz, one crate of targets in fuzz/ (docs/fuzzing.md):
# the record decoder, segment recovery, the CloudEvents parser in its three modes, the filter
# parser, and the pull, ack and state bodies. Each target runs SECONDS from its seed corpus
# (fuzz/corpus/TARGET, kept in the repository); inputs it finds go to fuzz/target/corpus, not
# the repository. A crash fails the script; its input is left in fuzz/artifacts/TARGET.
#
# Installs the pinned cargo-fuzz when missing. cargo-fuzz needs nightly compiler flags, which
# RUSTC_BOOTSTRAP=1 enables on the stable toolchain. scripts/test.sh runs this for a short
# bounded time; run it longer by hand. Environment: FUZZ_BUILD (default "--dev") picks the
# build: "--dev" compiles about twice as fast, "--release" runs faster (for long runs).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_record recover_segment parse_event parse_filter ack_body)
fi

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
# Fails when fuzz/Cargo.lock is out of date, as --locked does for the workspace.
cargo fetch --locked --quiet
# No sanitizer: keel forbids unsafe code, so AddressSanitizer would watch only dependencies,
# at twice the build time. Debug assertions and overflow checks stay on.
build=(${FUZZ_BUILD:---dev} --sanitizer none)
cargo fuzz build "${build[@]}"
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  found="target/corpus/$target"
  mkdir -p "$found"
  # The first corpus directory takes the new inputs; the seeds are only read. libFuzzer's
  # output goes to a log, shown when the target fails.
  log="target/$target.log"
  if ! cargo fuzz run "${build[@]}" "$target" "$found" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: its input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done)" "$log" || true
done
