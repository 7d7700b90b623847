#!/usr/bin/env bash
# A/B of publish throughput and server CPU without alert rules (A) and with 10 rules evaluated
# every second (B), alternating A B A B A B A on fresh data directories under
# target/bench-alerts (removed after each run). Needs `cargo build --release`.
# Usage: flock /tmp/keel-bench.lock scripts/bench-alerts.sh
set -uo pipefail
cd "$(dirname "$0")/.."
KEEL=$PWD/target/release/keel
mkdir -p target/bench-alerts && cd target/bench-alerts
PORT=7391
URL=http://127.0.0.1:$PORT
cat > with-rules.toml <<'TOML'
alert_evaluation_interval = "1s"
[alerts.lag]
kind = "threshold"
metric = "keel_subscription_lag"
op = ">"
value = 10000
for = "1m"
[alerts.dlq]
kind = "threshold"
metric = "keel_subscription_dlq_depth"
op = ">"
value = 0
[alerts.errors]
kind = "threshold"
function = "ratio"
window = "5m"
by = ["subscription"]
metric = "keel_subscription_attempts_total"
labels = { outcome = "failed" }
denominator = { metric = "keel_subscription_attempts_total" }
op = ">"
value = 0.05
[alerts.fsync]
kind = "threshold"
function = "quantile"
quantile = 0.99
window = "5m"
metric = "keel_fsync_seconds"
op = ">"
value = 0.05
[alerts.append]
kind = "threshold"
function = "quantile"
quantile = 0.99
window = "1m"
metric = "keel_append_seconds"
op = ">"
value = 0.05
[alerts.publish-rate]
kind = "anomaly"
metric = "keel_publish_events_total"
function = "rate"
window = "1m"
for = "1m"
warm_up = "10s"
[alerts.publish-bytes]
kind = "anomaly"
metric = "keel_publish_bytes_total"
function = "rate"
window = "30s"
warm_up = "10s"
[alerts.delivery-latency]
kind = "anomaly"
metric = "keel_subscription_delivery_seconds"
function = "quantile"
quantile = 0.99
window = "1m"
direction = "up"
[alerts.in-flight]
kind = "threshold"
metric = "keel_subscription_in_flight"
aggregate = "max"
by = []
op = ">"
value = 5000
[alerts.partitions]
kind = "threshold"
metric = "keel_partition_unavailable"
op = ">"
value = 0
TOML
echo "" > no-rules.toml
run() {
  local name=$1 config=$2
  rm -rf data; mkdir data
  $KEEL serve --data-dir data --listen 127.0.0.1:$PORT --config "$config" 2>server-$name.log &
  local pid=$!
  for _ in $(seq 100); do curl -sf $URL/readyz >/dev/null && break; sleep 0.1; done
  $KEEL --server $URL topic create bench --partitions 8 >/dev/null
  for n in $(seq 20); do $KEEL --server $URL sub create s$n --topic bench >/dev/null; done
  local cpu0; cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local out; out=$($KEEL --server $URL --json bench publish --topic bench --events 300000 --batch-size 100 --concurrency 4 --size 1024)
  local cpu1; cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
  local rate; rate=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["events_per_sec"]))')
  local evals; evals=$(curl -s $URL/metrics | grep -E '^keel_alert_evaluation_seconds_(sum|count)' | tr '\n' ' ')
  echo "$name events/s=$rate server_cpu_ticks=$(( cpu1-cpu0 )) $evals load=$(cut -d' ' -f1 /proc/loadavg)"
  kill $pid; wait $pid || true
  rm -rf data
}
for round in 1 2 3; do
  run no-rules no-rules.toml
  run with-rules with-rules.toml
done
run no-rules no-rules.toml
