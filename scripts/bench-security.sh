#!/usr/bin/env bash
# What auth and TLS cost a publisher, in one session, A B A B: each round starts a fresh
# `keel serve` per configuration and runs the same publish workloads against it:
#   plain  auth off, HTTP
#   auth   auth on, the load generator using a token scoped `publish:bench*` (the scope
#          check and the token lookup on every request)
#   tls    auth off, HTTPS with a private CA (made here with openssl)
#   base   auth off, HTTP, another build (BASE=path/to/keel; left out when unset)
# Prints one line per configuration and workload: events/s, p50 and p99 ms, errors, and the
# server's CPU (utime + stime) in microseconds per event.
#
# Usage: scripts/bench-security.sh [ROUNDS]   (needs target/release/keel and openssl)
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
keel=$PWD/target/release/keel
admin=bench-admin-token-0123456789abcdef0123456789
port=7801
tick=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null; rm -rf "$work"' EXIT

# A private CA and a certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/ca.key" -out "$work/ca.pem" -subj "/CN=keel bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One workload: bench ARGS... against the running server; prints its figures.
bench() {
  local before after report
  before=$(cpu_ticks "$pid")
  report=$("$keel" --server "$url" "${client[@]}" --json bench publish "$@" 2>/dev/null)
  after=$(cpu_ticks "$pid")
  python3 -c '
import json, sys
report = json.loads(sys.argv[1])
ticks, tick = float(sys.argv[2]), float(sys.argv[3])
latency = report["latency_ms"]
print(round(report["events_per_sec"]), latency["p50"], latency["p99"], report["errors"],
      round(ticks / tick * 1e6 / max(report["events"], 1), 1))' "$report" $((after - before)) "$tick"
}

run() {
  local name=$1 server=$keel scheme=http
  local serve=() env=()
  client=()
  case $name in
    base) server=$BASE ;;
    auth) env=(KEEL_ADMIN_TOKEN=$admin); client=(--token "$admin") ;;
    tls)
      scheme=https
      serve=(--tls-cert "$work/server.pem" --tls-key "$work/server.key")
      client=(--ca-file "$work/ca.pem") ;;
  esac
  rm -rf "$work/data"
  env "${env[@]}" "$server" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
    "${serve[@]}" 2> "$work/keel.log" &
  pid=$!
  url=$scheme://127.0.0.1:$port
  for _ in $(seq 100); do curl -sfk "$url/readyz" >/dev/null && break; sleep 0.1; done
  "$keel" --server "$url" "${client[@]}" topic create bench --partitions 8 >/dev/null
  "$keel" --server "$url" "${client[@]}" topic create bench-nofsync --partitions 8 --fsync never >/dev/null
  if [ "$name" = auth ]; then
    local token
    token=$("$keel" --server "$url" "${client[@]}" --json token create bench --scope 'publish:bench*' |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    client=(--token "$token")
  fi
  echo "$name single $(bench --batch-size 1 --concurrency 64 --events 200000)"
  echo "$name batched $(bench --batch-size 100 --concurrency 4 --events 1000000)"
  echo "$name single-nofsync $(bench --topic bench-nofsync --batch-size 1 --concurrency 64 --events 200000)"
  kill "$pid"
  wait "$pid" 2>/dev/null
}

for _ in $(seq "$rounds"); do
  for name in ${BASE:+base} plain auth tls; do run "$name"; done
done
