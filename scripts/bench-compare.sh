#!/usr/bin/env bash
# Compares the speed of two keel servers on the same machine, in one session: each round runs
# every workload against a fresh `keel serve` of build A, then of build B, so machine noise
# hits both alike. The load generator is always CLIENT (default: B), so only the servers
# differ. Prints each figure's median (and range) per build, and B/A of the medians.
#
# Usage: scripts/bench-compare.sh A_BINARY B_BINARY [ROUNDS] [CLIENT_BINARY]
#   e.g. scripts/bench-compare.sh /tmp/keel-before target/release/keel 3
# ONLY=text runs only the workloads whose name contains it (e.g. ONLY=pull).
# B_CONFIG=FILE starts B's server with --config FILE (e.g. alert rules); B_PUSH_ARGS are added
# to B's push workloads (e.g. --health-check), for features A does not have.
set -euo pipefail

a=${1:?usage: bench-compare.sh A_BINARY B_BINARY [ROUNDS] [CLIENT_BINARY]}
b=${2:?usage: bench-compare.sh A_BINARY B_BINARY [ROUNDS] [CLIENT_BINARY]}
rounds=${3:-3}
client=${4:-$b}
port=7199
server="http://127.0.0.1:$port"
results=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$results" /tmp/keel-bench-compare-data' EXIT

# name | arguments of `keel bench` | JSON figure | higher is better (1) or lower (0)
workloads=(
  "publish batched events/s|publish --events 500000 --batch-size 100 --concurrency 4|events_per_sec|1"
  "publish single events/s|publish --topic single --events 100000 --batch-size 1 --concurrency 64|events_per_sec|1"
  "publish single p99 ms|publish --topic single2 --events 100000 --batch-size 1 --concurrency 64|latency_ms.p99|0"
  "read events/s|read --topic bench|records_per_sec|1"
  "pull latency p50 ms (5k/s)|e2e --mode pull --rate 5000 --events 50000 --batch 10|latency_ms.p50|0"
  "pull latency p99 ms (5k/s)|e2e --mode pull --rate 5000 --events 50000 --batch 10|latency_ms.p99|0"
  "pull backlog events/s|e2e --mode pull --events 300000 --backlog --consumers 4 --pull-max 1000|events_per_sec|1"
  "push backlog events/s|e2e --mode push --events 100000 --backlog --max-in-flight 256|events_per_sec|1"
  "push latency p99 ms (5k/s)|e2e --mode push --rate 5000 --events 50000 --batch 10|latency_ms.p99|0"
)

start_server() {
  rm -rf /tmp/keel-bench-compare-data
  local config=()
  [ "$2" = b ] && [ -n "${B_CONFIG:-}" ] && config=(--config "$B_CONFIG")
  "$1" serve --data-dir /tmp/keel-bench-compare-data --listen "127.0.0.1:$port" "${config[@]}" \
    >/tmp/keel-bench-compare.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "$server/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "server $1 did not become ready; see /tmp/keel-bench-compare.log" >&2
  exit 1
}

if [ -n "${ONLY:-}" ]; then
  kept=()
  for workload in "${workloads[@]}"; do
    case "${workload%%|*}" in *"$ONLY"*) kept+=("$workload") ;; esac
  done
  workloads=("${kept[@]}")
fi

for round in $(seq "$rounds"); do
  for side in a b; do
    binary=$a
    [ "$side" = b ] && binary=$b
    start_server "$binary" "$side"
    for index in "${!workloads[@]}"; do
      IFS='|' read -r name arguments figure _ <<<"${workloads[$index]}"
      # Several figures may come from one workload: run each distinct argument list once.
      key=$(printf '%s' "$arguments" | md5sum | cut -c1-12)
      out="$results/$side.$round.$key.json"
      if [ ! -f "$out" ]; then
        extra=""
        case "$side:$arguments" in b:*"--mode push"*) extra=${B_PUSH_ARGS:-} ;; esac
        # shellcheck disable=SC2086
        "$client" --server "$server" --json bench $arguments $extra >"$out" 2>/dev/null || echo '{}' >"$out"
      fi
      echo "round $round, $side: $name" >&2
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done

python3 - "$results" "$rounds" "${workloads[@]}" <<'EOF'
import hashlib, json, statistics, sys
results, rounds, workloads = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def figure(side, round_, arguments, path):
    key = hashlib.md5(arguments.encode()).hexdigest()[:12]
    try:
        value = json.load(open(f"{results}/{side}.{round_}.{key}.json"))
        for part in path.split("."):
            value = value[part]
        return float(value)
    except (OSError, KeyError, TypeError, ValueError):
        return None
print(f"| workload | A: median (range) of {rounds} | B: median (range) of {rounds} | B/A | better |")
print("|---|---|---|---|---|")
show = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
for workload in workloads:
    name, arguments, path, higher = workload.split("|")
    medians, cells = [], []
    for side in "ab":
        values = [v for r in range(1, rounds + 1) if (v := figure(side, r, arguments, path)) is not None]
        medians.append(statistics.median(values) if values else None)
        cells.append(f"{show(medians[-1])} ({show(min(values))}–{show(max(values))})" if values else "failed")
    a, b = medians
    ratio = f"{b / a:.2f}" if a and b else "n/a"
    better = "higher" if higher == "1" else "lower"
    print(f"| {name} | {cells[0]} | {cells[1]} | {ratio} | {better} |")
EOF
