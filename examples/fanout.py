#!/usr/bin/env python3
"""python3 examples/fanout.py --server http://127.0.0.1:7171 --events 20 --fail-for 3s

One topic fanned out to three webhooks, one of them down for a while: keel retries the failing
one with backoff until it recovers, delivers every event to every webhook, and the healthy
webhooks get theirs at once, as if nothing were wrong.

The example serves three sinks itself, each on its own port (chosen by the system) and each
checking keel's Standard Webhooks signature with its own secret: `billing`, `shipping` and
`analytics`. It creates the topic `purchases` if missing, and one push subscription per sink,
`purchases-billing` and so on, anew: keel shows the secret it generates for a subscription only
in the answer that creates it. Then it publishes --events purchases. `shipping` answers 503 for the first
--fail-for, then 200. The example waits until every sink has every event (or --timeout),
prints what each sink got and what keel counted, and exits 1 if a sink missed an event.

The subscriptions stay after it exits: `keel sub describe purchases-shipping` shows the
retries. The next run re-creates them.
"""

import argparse
import http.server
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

# The same signature check as the single sink of examples/webhook_sink.py.
from webhook_sink import signature_ok

TOPIC = "purchases"
SINKS = ("billing", "shipping", "analytics")
FAILING_SINK = "shipping"
# How keel treats the sinks: retry soon (from 200 ms, doubling up to 2 s, with jitter), and
# once half the attempts of the last 10 s fail (or 3 connections in a row fail) stop sending
# to the sink for 1 s before a few probe requests, so that a sink that is down is not flooded.
# An outage spends no attempts (the circuit breaker blames the sink), so 20 attempts are
# plenty before an event would be dead-lettered.
SUBSCRIPTION_SPEC = {
    "start": "latest",
    "retry": {"max_attempts": 20, "initial": "200ms", "max": "2s", "multiplier": 2},
    "circuit_breaker": {"cool_down": "1s"},
}


class Server(http.server.ThreadingHTTPServer):
    # keel sends up to a subscription's max_in_flight (100) requests at once: queue that many
    # connections (the default is 5) rather than have the system drop some.
    request_queue_size = 128


class Sink:
    """One webhook endpoint: verifies each request, answers, and records what it got."""

    def __init__(self, name):
        self.name = name
        self.secret = None  # set once keel created the subscription
        self.fail_until = 0.0  # monotonic time until which it answers 503
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = 0  # requests answered other than 2xx
        self.attempts = {}  # event id -> [(seconds since start, status)]
        self.started = time.monotonic()  # reset when the purchases are published
        self.complete_after = None  # seconds until it had every event
        self.server = Server(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def answer(self, headers, body):
        """The status to answer one request with."""
        if not signature_ok(self.secret, headers, body):
            return 401  # not from keel, or altered on the way: keel dead-letters it
        if time.monotonic() < self.fail_until:
            return 503  # down for maintenance: keel retries later
        return 200

    def record(self, event_id, status):
        with self.lock:
            self.requests += 1
            self.failed += status != 200
            at = time.monotonic() - self.started
            self.attempts.setdefault(event_id, []).append((at, status))

    def received(self):
        """Ids of the events this sink took (answered 200)."""
        with self.lock:
            return {i for i, tries in self.attempts.items() if any(s == 200 for _, s in tries)}

    def handler(self):
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = sink.answer(self.headers, body)
                sink.record(self.headers["webhook-id"], status)
                if status != 200:
                    print(f"{sink.name}: {status} to {self.headers['webhook-id']} "
                          f"(attempt {self.headers['keel-attempt']})", flush=True)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass  # the summary says what happened

        return Handler

    def serve(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def call(server, method, path, body=None, content_type="application/json"):
    """One request to keel; returns (status, answer as JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server + path, data=data, method=method,
                                     headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:  # the answer is a problem+json
        status, text = error.code, error.read()
    return status, json.loads(text) if text else None


def expect(status, answer, wanted, what):
    if status not in wanted:
        sys.exit(f"{what} answered {status}: {(answer or {}).get('detail', answer)}")


def setup(server, sinks):
    """Creates the topic if missing, and a fresh push subscription per sink."""
    status, answer = call(server, "PUT", f"/v1/topics/{TOPIC}", {"partitions": 4})
    expect(status, answer, (200, 201), f"PUT /v1/topics/{TOPIC}")
    for sink in sinks:
        name = f"{TOPIC}-{sink.name}"
        status, answer = call(server, "DELETE", f"/v1/subscriptions/{name}")
        expect(status, answer, (204, 404), f"DELETE /v1/subscriptions/{name}")
        spec = dict(SUBSCRIPTION_SPEC, topic=TOPIC, sink={"url": sink.url})
        status, answer = call(server, "PUT", f"/v1/subscriptions/{name}", spec)
        expect(status, answer, (201,), f"PUT /v1/subscriptions/{name}")
        sink.secret = answer["secret"]  # keel generated it; this answer is the only one with it
        print(f"subscription {name} pushes to {sink.url}", flush=True)


def publish(server, count):
    """Publishes `count` purchases in one batch; returns their ids."""
    run = uuid.uuid4().hex[:8]  # fresh ids, so that keel's dedupe does not drop a rerun's
    events = [{"specversion": "1.0", "id": f"purchase-{run}-{n:04}", "source": "/examples/shop",
               "type": "purchase.completed", "partitionkey": f"customer-{n % 7}",
               "datacontenttype": "application/json", "data": {"amount": 10 + n}}
              for n in range(count)]
    status, answer = call(server, "POST", f"/v1/topics/{TOPIC}/events", events,
                          "application/cloudevents-batch+json")
    expect(status, answer, (200,), "publish")
    print(f"published {count} purchases to {TOPIC}", flush=True)
    return {event["id"] for event in events}


def wait_for_all(sinks, ids, timeout_s):
    """Waits until every sink has every id, or the timeout; notes when each got them all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for sink in sinks:
            if sink.complete_after is None and sink.received() >= ids:
                sink.complete_after = time.monotonic() - sink.started
                print(f"{sink.name}: has all {len(ids)} events", flush=True)
        if all(sink.complete_after is not None for sink in sinks):
            return
        time.sleep(0.05)


def settled(server, subscription):
    """The subscription's describe, once nothing is pending (keel counts a delivery when the
    sink's answer reaches it, a moment after the sink recorded it); at most 5 s."""
    deadline = time.monotonic() + 5
    while True:
        status, info = call(server, "GET", f"/v1/subscriptions/{subscription}")
        expect(status, info, (200,), f"GET /v1/subscriptions/{subscription}")
        if info["pending"] == 0 or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def summary(server, sinks, ids):
    """Prints what each sink got and keel's counters; returns the number of events missed."""
    print(f"\n{'sink':<10} {'requests':>8} {'failed':>6} {'distinct':>8} {'missing':>7} "
          f"{'all after':>9}   keel: delivered retried dead-lettered")
    missed = 0
    for sink in sinks:
        got = sink.received()
        missing = len(ids - got)
        missed += missing
        after = "-" if sink.complete_after is None else f"{sink.complete_after:.1f} s"
        info = settled(server, f"{TOPIC}-{sink.name}")
        print(f"{sink.name:<10} {sink.requests:>8} {sink.failed:>6} {len(got & ids):>8} "
              f"{missing:>7} {after:>9}   {info['delivered']:>15} {info['retried']:>7} "
              f"{info['dead_lettered']:>13}")
    # The failing sink's most tried event shows keel backing off: after 5 failures in a row
    # the circuit breaker opened, so keel sent nothing for 1 s, then one probe; each failed
    # probe doubles the pause (2 s, 4 s, ...). The probe that succeeds closes the circuit, and
    # the waiting events go at once. (Events failing while it is closed each wait their own
    # retry backoff: from 200 ms, doubling, with jitter.)
    failing = next(sink for sink in sinks if sink.name == FAILING_SINK)
    event_id, tries = max(failing.attempts.items(), key=lambda item: len(item[1]),
                          default=(None, []))
    if len(tries) > 1:
        times = " ".join(f"+{at:.2f}s:{status}" for at, status in tries)
        print(f"\nattempts of {event_id} at {FAILING_SINK}: {times}")
    return missed


def seconds(text):
    """A duration such as "3s" or "500ms", in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3s or 500ms")
    return float(match[1]) / (1000 if match[2] == "ms" else 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--server", default="http://127.0.0.1:7171", help="keel's URL")
    parser.add_argument("--events", type=int, default=20, help="purchases to publish")
    parser.add_argument("--fail-for", type=seconds, default=3.0, metavar="DURATION",
                        help=f"how long {FAILING_SINK} answers 503, from the publish on")
    parser.add_argument("--timeout", type=seconds, default=60.0, metavar="DURATION",
                        help="how long to wait for every sink to get every event")
    options = parser.parse_args()
    server = options.server.rstrip("/")
    sinks = [Sink(name) for name in SINKS]
    for sink in sinks:
        sink.serve()
    setup(server, sinks)
    now = time.monotonic()
    for sink in sinks:
        sink.started = now
        if sink.name == FAILING_SINK:
            sink.fail_until = now + options.fail_for
    print(f"{FAILING_SINK} answers 503 for the next {options.fail_for:g} s", flush=True)
    ids = publish(server, options.events)
    wait_for_all(sinks, ids, options.timeout)
    missed = summary(server, sinks, ids)
    if missed:
        sys.exit(f"\n{missed} deliveries missing: not every sink got every event")
    print(f"\nevery sink got all {len(ids)} events; {FAILING_SINK}'s outage held back only "
          f"{FAILING_SINK}")


if __name__ == "__main__":
    main()
