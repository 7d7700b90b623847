#!/usr/bin/env bash
# Fuzzes the record decoder (keel-log) and the CloudEvents parser (keel-engine) with
# libFuzzer through cargo-fuzz. Not part of scripts/test.sh: it needs cargo-fuzz
# (`cargo install cargo-fuzz`) and nightly compiler flags, which RUSTC_BOOTSTRAP=1 enables
# on the stable toolchain. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1
(cd crates/keel-log/fuzz && cargo fuzz run decode_record -- -max_total_time="$seconds")
(cd crates/keel-engine/fuzz && cargo fuzz run parse_event -- -max_total_time="$seconds")
