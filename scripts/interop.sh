#!/usr/bin/env bash
# Checks keel's standard interfaces with outside clients against a real server:
# the CloudEvents Python SDK publishes and decodes events; promtool lints /metrics; the
# Standard Webhooks Python library verifies the signatures of pushed events.
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

# The real server pushes to a sink that verifies each request with the official
# standardwebhooks library and decodes it with the CloudEvents SDK; every event must be
# acknowledged (204), none dead-lettered.
url="http://127.0.0.1:$port"
secret="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
python3 tests/interop/standard_webhooks_sink.py "$dir/sink.port" "$secret" > "$dir/sink.log" 2>&1 &
sink_pid=$!
trap 'kill $pid $sink_pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/sink.port" ] && break; sleep 0.1; done
curl -sf -XPUT "$url/v1/topics/hooks" -d '{"partitions": 2}' >/dev/null
curl -sf -XPUT "$url/v1/subscriptions/verified" -d "{\"topic\": \"hooks\", \"start\": \"earliest\",
  \"sink\": {\"url\": \"http://127.0.0.1:$(cat "$dir/sink.port")/hook\", \"secret\": \"$secret\"},
  \"retry\": {\"max_attempts\": 1}}" >/dev/null
# The last event is also traced: the sink checks with OpenTelemetry's propagator that keel's
# push continues its trace.
traced='"subject":"a b%c","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"'
for data in '"data":{"amount":42}' '"datacontenttype":"text/plain","data":"caf\u00e9"' "$traced"; do
  curl -sf -XPOST "$url/v1/topics/hooks/events" -H 'content-type: application/cloudevents+json' \
    -d "{\"specversion\":\"1.0\",\"id\":\"i-$RANDOM\",\"source\":\"interop\",\"type\":\"t\",$data}" >/dev/null
done
for _ in $(seq 100); do
  curl -sf "$url/v1/subscriptions/verified" | grep -q '"delivered":3' && break
  sleep 0.1
done
if ! curl -sf "$url/v1/subscriptions/verified" | grep -q '"delivered":3,"retried":0,"dead_lettered":0'; then
  echo "standardwebhooks: keel's pushes were not all verified:" >&2
  cat "$dir/sink.log" >&2
  curl -s "$url/v1/subscriptions/verified" >&2
  exit 1
fi
grep -q "traced" "$dir/sink.log" || { echo "the traced event was not checked" >&2; exit 1; }
echo "standardwebhooks: the official library verified 3 events pushed by keel"
echo "opentelemetry: keel's push of a traced event continues its trace"

curl -sf "http://127.0.0.1:$port/metrics" > "$dir/metrics.txt"
promtool check metrics < "$dir/metrics.txt"
echo "promtool: /metrics passes ($(grep -c '^keel_' "$dir/metrics.txt") samples)"

# Push delivery: PushClient::deliver against a Python sink that verifies with the official
# standardwebhooks library (the test skips itself without KEEL_INTEROP=1).
KEEL_INTEROP=1 cargo test --locked -p keel-engine --test standard_webhooks_interop -- --nocapture

# The OpenAPI document: an outside validator checks it against the OpenAPI 3.1 schema, then
# schemathesis fuzzes a second server, with auth on, from it for 90 s: every answer must be
# documented (status, content type, headers, body schema), none may be a 5xx, and requests
# the document forbids must be refused. At least 1,000 requests must have been sent.
scripts/openapi-fuzz.sh
