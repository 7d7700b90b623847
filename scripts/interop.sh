#!/usr/bin/env bash
# Checks keel's standard interfaces with outside clients against a real server:
# the CloudEvents Python SDK publishes and decodes events; promtool lints /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --bin keel
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/keel serve --data-dir "$dir/data" --listen "127.0.0.1:$port" 2> "$dir/keel.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done

python3 tests/interop/cloudevents_sdk.py "http://127.0.0.1:$port"
curl -sf "http://127.0.0.1:$port/metrics" > "$dir/metrics.txt"
promtool check metrics < "$dir/metrics.txt"
echo "promtool: /metrics passes ($(grep -c '^keel_' "$dir/metrics.txt") samples)"
