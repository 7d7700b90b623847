#!/usr/bin/env bash
# Starts a three-server NATS JetStream cluster on this machine's loopback, for trying keel's
# cluster mode (docs/cluster.md): client URLs nats://127.0.0.1:4222,4223,4224. Stores under
# DIR (default ./nats-data); logs in DIR/nN.log. Stops the servers on Ctrl-C.
# Usage: scripts/nats-cluster.sh [DIR]
set -euo pipefail
dir="${1:-nats-data}"
command -v nats-server >/dev/null 2>&1 || {
  echo "nats-server not found: run scripts/install-test-deps.sh (installs nats-server 2.15)" >&2
  exit 1
}
mkdir -p "$dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do
    [ "$j" = "$i" ] || routes="$routes\"nats://127.0.0.1:$((6222 + j))\", "
  done
  cat > "$dir/n$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:$((4222 + i))"
http: "127.0.0.1:$((8222 + i))"
max_payload: 8MB
jetstream { store_dir: "$dir/n$i" }
cluster { name: keel-nats, listen: "127.0.0.1:$((6222 + i))", routes: [ ${routes%, } ] }
CONF
  nats-server -c "$dir/n$i.conf" >>"$dir/n$i.log" 2>&1 &
  pids+=($!)
done
echo "NATS cluster: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 (logs in $dir/)"
wait
