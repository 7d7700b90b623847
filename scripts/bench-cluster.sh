#!/usr/bin/env bash
# Measures keel's cluster mode on this machine, in one session (BENCHMARKS.md, "Cluster mode on
# NATS JetStream"): starts a 3-server NATS JetStream cluster, a 3-node keel cluster on it
# (replicas 3) and a single `keel serve` (fsync always), all on free loopback ports, and tears
# them down at the end.
#
# Usage: scripts/bench-cluster.sh [WHAT...]      WHAT: publish e2e failover spread (default: publish e2e)
#   publish   keel bench publish on the single node, on the cluster through one node and
#             through all three, and plain JetStream (R3, no keel) with the same batches and
#             concurrency (crates/keel-cluster/examples/jetstream_publish.rs); each round runs
#             every target once, in turn (A B C D, A B C D...). CPU per event of the keel
#             node(s) and of the nats-servers is read from /proc/PID/stat around each run.
#   e2e       keel bench e2e (pull and push) on the single node and on the cluster, in turn.
#   failover  scripts/bench-cluster-moves.py failover: kill -9 the node hosting a subscription,
#             ROUNDS_FAILOVER times, for each lease TTL of FAILOVER_TTLS.
#   spread    scripts/bench-cluster-moves.py spread: 30 subscriptions, nodes joining one by one.
# Environment: KEEL (default target/release/keel; KEEL_SERVER runs the servers with another
#   build, the load generator stays KEEL's), JS_BENCH (default
#   target/release/examples/jetstream_publish), ROUNDS (3), OUT (results directory, default a
#   new /tmp/keel-bench-cluster.XXXX), NATS_SYNC (e.g. "always": sets the servers'
#   jetstream sync_interval; default: nats-server's own, an fsync every 2 minutes),
#   LEASE_TTL (of the publish/e2e cluster, default 5s), FAILOVER_TTLS ("2s 5s"),
#   ROUNDS_FAILOVER (20), PUBLISH_EVENTS_BATCHED (100000; batches of 10 send a quarter),
#   PUBLISH_EVENTS_SINGLE (20000).
# Build first: cargo build --release -p keel-cli && cargo build --release -p keel-cluster --example jetstream_publish
set -euo pipefail

cd "$(dirname "$0")/.."
keel=${KEEL:-target/release/keel}
# The servers may be another build than the load generator (KEEL_SERVER=/tmp/keel-old).
keel_server=${KEEL_SERVER:-$keel}
js_bench=${JS_BENCH:-target/release/examples/jetstream_publish}
rounds=${ROUNDS:-3}
whats=("$@")
[ ${#whats[@]} -gt 0 ] || whats=(publish e2e)
out=${OUT:-$(mktemp -d /tmp/keel-bench-cluster.XXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/keel-bench-cluster-run.XXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
for binary in "$keel" "$js_bench"; do
  [ -x "$binary" ] || { echo "missing $binary: build it first (see the header)" >&2; exit 1; }
done
command -v nats-server >/dev/null || { echo "nats-server not found (scripts/install-test-deps.sh)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # URL
  for _ in $(seq 600); do curl -sf "$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  cp "$work"/*.log "$work"/nats/*.log "$out"/ 2>/dev/null || true
  echo "$1 did not become ready within 60s; logs copied to $out" >&2; exit 1
}
# utime + stime of the processes, in clock ticks.
cpu_ticks() { local total=0 pid; for pid in "$@"; do
  total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$total"; }
clk_tck=$(getconf CLK_TCK)

# --- NATS: three servers in one cluster -------------------------------------------------------
nats_ports=() cluster_ports=() nats_pids=()
for i in 0 1 2; do nats_ports+=("$(free_port)"); cluster_ports+=("$(free_port)"); done
for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do [ "$j" = "$i" ] || routes="$routes\"nats-route://127.0.0.1:${cluster_ports[$j]}\", "; done
  sync_line=""
  [ -n "${NATS_SYNC:-}" ] && sync_line=", sync_interval: ${NATS_SYNC}"
  mkdir -p "$work/nats/n$i"
  cat >"$work/nats/n$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:${nats_ports[$i]}"
max_payload: 8MB
jetstream { store_dir: "$work/nats/n$i"$sync_line }
cluster { name: keel-bench, listen: "127.0.0.1:${cluster_ports[$i]}", routes: [ ${routes%, } ] }
CONF
  nats-server -c "$work/nats/n$i.conf" >"$work/nats/n$i.log" 2>&1 &
  pids+=($!) nats_pids+=($!)
done
nats_urls="nats://127.0.0.1:${nats_ports[0]},nats://127.0.0.1:${nats_ports[1]},nats://127.0.0.1:${nats_ports[2]}"
# JetStream is ready once a meta leader is elected (keel's connect waits for it too).
sleep 2
for pid in "${nats_pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work"/nats/*.log >&2; echo "a nats-server did not start" >&2; exit 1; }
done
echo "NATS cluster: $nats_urls (sync_interval ${NATS_SYNC:-default}); results in $out" >&2

needs_keel=0
for what in "${whats[@]}"; do case $what in publish | e2e) needs_keel=1 ;; esac; done
node_urls=() node_pids=()
if [ "$needs_keel" = 1 ]; then
  single_port=$(free_port)
  single="http://127.0.0.1:$single_port"
  "$keel_server" serve --data-dir "$work/single" --listen "127.0.0.1:$single_port" >"$work/single.log" 2>&1 &
  pids+=($!) single_pid=$!
  for i in 0 1 2; do
    port=$(free_port)
    "$keel_server" serve --data-dir "$work/k$i" --listen "127.0.0.1:$port" --cluster "$nats_urls" \
      --node-id "k$i" --cluster-name bench --lease-ttl "${LEASE_TTL:-5s}" >"$work/k$i.log" 2>&1 &
    pids+=($!) node_pids+=($!)
    node_urls+=("http://127.0.0.1:$port")
  done
  wait_ready "$single"
  for url in "${node_urls[@]}"; do wait_ready "$url"; done
  sleep "${LEASE_TTL_SETTLE:-3}" # every node sees the others
fi
all_nodes=$(IFS=,; echo "${node_urls[*]:-}")

# Runs one measured command; appends a JSON line with its report and the CPU it cost to
# $out/results.jsonl. Args: workload target keel_pids nats_pids -- command...
measure() {
  local workload=$1 target=$2 kpids=$3 npids=$4
  shift 5
  local k0 n0 k1 n1 report
  # shellcheck disable=SC2086
  k0=$(cpu_ticks $kpids); n0=$(cpu_ticks $npids)
  report=$("$@" 2>>"$out/stderr.log") || report=${report:-'{}'}
  # shellcheck disable=SC2086
  k1=$(cpu_ticks $kpids); n1=$(cpu_ticks $npids)
  report=$(printf '%s' "$report" | jq -c . 2>/dev/null | tail -n 1)
  [ -n "$report" ] || report='{}'
  jq -c --arg w "$workload" --arg t "$target" --argjson r "${round:-0}" \
    --argjson kcpu "$(((k1 - k0) * 1000000 / clk_tck))" --argjson ncpu "$(((n1 - n0) * 1000000 / clk_tck))" \
    '{workload: $w, target: $t, round: $r, keel_cpu_us: $kcpu, nats_cpu_us: $ncpu} + .' \
    <<<"$report" >>"$out/results.jsonl" || echo "unparsable report of $workload $target: $report" >&2
  echo "round ${round:-0}: $workload on $target done" >&2
}

# Publishes 512 events with 64 keys (so every partition is written) through SERVERS, so that
# every node opened the topic's partitions before the measured run. Args: SERVER TOPIC SERVERS
warm_up() {
  "$keel" --server "$1" bench publish --topic "$2" --events 512 --batch-size 1 --concurrency 16 \
    --keys 64 --servers "$3" >/dev/null 2>&1 || echo "warm-up of $2 failed" >&2
}

run_publish() {
  local batched=${PUBLISH_EVENTS_BATCHED:-100000} single_events=${PUBLISH_EVENTS_SINGLE:-20000}
  # name | events | batch size | concurrency
  local workloads=("batch100-c4|$batched|100|4" "batch10-c16|$((batched / 4))|10|16" "single-c64|$single_events|1|64")
  for round in $(seq "$rounds"); do
    for spec in "${workloads[@]}"; do
      IFS='|' read -r name events batch concurrency <<<"$spec"
      local common=(--json bench publish --events "$events" --batch-size "$batch" --concurrency "$concurrency" --size 1024)
      local topic="p$round$name"
      topic=${topic//-/}
      local create=(topic create --partitions 8 --fsync always)
      local js=("$js_bench" --servers "$nats_urls" --events "$events" --batch-size "$batch"
        --concurrency "$concurrency" --size 1190 --json)
      # Topics and streams are created before and deleted after the measured run, so that the
      # CPU read around it is the publishing's.
      "$keel" --server "$single" "${create[@]}" "$topic" >/dev/null
      warm_up "$single" "$topic" "$single"
      measure "$name" single "$single_pid" "${nats_pids[*]}" -- \
        "$keel" --server "$single" "${common[@]}" --topic "$topic"
      "$keel" --server "$single" topic delete "$topic" >/dev/null 2>&1 || true
      "$keel" --server "${node_urls[0]}" "${create[@]}" "${topic}a" >/dev/null
      warm_up "${node_urls[0]}" "${topic}a" "${node_urls[0]}"
      measure "$name" cluster-via-1 "${node_pids[*]}" "${nats_pids[*]}" -- \
        "$keel" --server "${node_urls[0]}" "${common[@]}" --topic "${topic}a"
      "$keel" --server "${node_urls[0]}" topic delete "${topic}a" >/dev/null 2>&1 || true
      "$keel" --server "${node_urls[0]}" "${create[@]}" "${topic}b" >/dev/null
      sleep 2 # every node opened the topic
      warm_up "${node_urls[0]}" "${topic}b" "$all_nodes"
      measure "$name" cluster-via-3 "${node_pids[*]}" "${nats_pids[*]}" -- \
        "$keel" --server "${node_urls[0]}" "${common[@]}" --topic "${topic}b" --servers "$all_nodes"
      "$keel" --server "${node_urls[0]}" topic delete "${topic}b" >/dev/null 2>&1 || true
      # Keel stores a 1 KiB-data bench event as about 1,190 bytes of CloudEvent JSON.
      # 8 streams with 3 followers each is what a 3-node keel cluster asks of NATS for a
      # topic of 8 partitions: each node follows every partition (log.rs).
      for variant in 1:0 8:0 8:3; do
        local streams=${variant%:*} followers=${variant#*:} target="jetstream-${variant%:*}-stream"
        [ "$followers" = 0 ] || target="$target-$followers-followers"
        "${js[@]}" --stream "js$streams$followers$topic" --streams "$streams" --phase create
        measure "$name" "$target" "" "${nats_pids[*]}" -- \
          "${js[@]}" --stream "js$streams$followers$topic" --streams "$streams" --phase publish \
          --followers "$followers"
        "${js[@]}" --stream "js$streams$followers$topic" --streams "$streams" --phase delete
      done
    done
  done
}

run_e2e() {
  # name | arguments of keel bench e2e
  local workloads=(
    "pull-5k|--mode pull --rate 5000 --events 25000 --batch 10"
    "pull-backlog|--mode pull --events 100000 --backlog --consumers 4 --pull-max 1000"
    "push-5k|--mode push --rate 5000 --events 25000 --batch 10"
    "push-backlog|--mode push --events 50000 --backlog --max-in-flight 256"
  )
  for round in $(seq "$rounds"); do
    for spec in "${workloads[@]}"; do
      IFS='|' read -r name arguments <<<"$spec"
      # shellcheck disable=SC2086
      measure "$name" single "$single_pid" "${nats_pids[*]}" -- \
        "$keel" --server "$single" --json bench e2e $arguments
      # shellcheck disable=SC2086
      measure "$name" cluster "${node_pids[*]}" "${nats_pids[*]}" -- \
        "$keel" --server "${node_urls[0]}" --json bench e2e $arguments --wait-placed --pull-via host
      case $name in pull-*)
        # shellcheck disable=SC2086
        measure "$name" cluster-forwarded "${node_pids[*]}" "${nats_pids[*]}" -- \
          "$keel" --server "${node_urls[0]}" --json bench e2e $arguments --wait-placed --pull-via elsewhere ;;
      esac
    done
  done
}

for what in "${whats[@]}"; do
  case $what in
    publish) run_publish ;;
    e2e) run_e2e ;;
    failover)
      for ttl in ${FAILOVER_TTLS:-2s 5s}; do
        python3 scripts/bench-cluster-moves.py failover --keel "$keel" --nats "$nats_urls" \
          --workdir "$work/failover-$ttl" --lease-ttl "$ttl" --rounds "${ROUNDS_FAILOVER:-20}" \
          | tee -a "$out/failover-$ttl.jsonl"
      done ;;
    spread)
      python3 scripts/bench-cluster-moves.py spread --keel "$keel" --nats "$nats_urls" \
        --workdir "$work/spread" --units 30 --nodes 5 | tee -a "$out/spread.jsonl" ;;
    *) echo "unknown: $what (publish e2e failover spread)" >&2; exit 2 ;;
  esac
done

# Summary: per workload and target, the median (and range) over rounds, with CPU per event.
if [ -f "$out/results.jsonl" ]; then
  jq -rs '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r1: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
    group_by([.workload, .target]) | .[] |
    (map(.events_per_sec // 0)) as $eps |
    (map(.events // .delivered // 0) | add) as $events |
    "\(.[0].workload)\t\(.[0].target)\tn=\(length)\tevents/s \($eps | median | round) (\($eps | min | round)-\($eps | max | round))\tp50 \(map(.latency_ms.p50) | median | r1) ms\tp99 \(map(.latency_ms.p99) | median | r1) ms\tkeel CPU \((map(.keel_cpu_us) | add) / $events | r1) us/event\tNATS CPU \((map(.nats_cpu_us) | add) / $events | r1) us/event"
  ' "$out/results.jsonl" | tee "$out/summary.tsv"
fi
echo "results in $out" >&2
