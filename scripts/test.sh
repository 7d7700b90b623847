#!/usr/bin/env bash
# Every check keel must pass: formatting, lints, all tests (unit, property, API over real
# sockets, kill -9 crash cycles, fault injection), and the interop checks against outside
# clients. Installs what it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --locked --doc

echo "== interop with outside clients"
scripts/interop.sh

echo "== fuzzing, 20 s per target"
scripts/fuzz.sh 20
