#!/usr/bin/env python3
"""Failover time and unit spread of keel's cluster mode, on real `keel serve --cluster` nodes.

Needs a NATS JetStream cluster already running (scripts/bench-cluster.sh starts one and calls
this); uses only the Python standard library.

  failover: 3 keel nodes; a pull subscription under a trickle of publishes (one event every
    20 ms) through a node that does not host it, and a consumer pulling through another such
    node. Each round kill -9s the node hosting the subscription and measures, from the kill:
      unit_moved_ms   until a survivor's GET /v1/cluster shows the unit held by a survivor
                      (every survivor is polled every 10 ms; a node's view is that of its
                      last round, every lease TTL / 3, so this includes up to TTL/3 of
                      observation lag),
      first_pull_ms   until the first pull sent after the kill returns events (through a
                      survivor, forwarded to the new host),
      first_new_ms    until the first event published after the kill is received.
    Then restarts the killed node (same id), waits until the unit is back where the
    rendezvous hash places it, and goes on. Each kill comes 1 s plus a random share of a
    lease TTL after the unit settled, so kills fall at every phase of the nodes' rounds.
  spread: N subscriptions created on one node; nodes k1..k4 join one by one; after each,
    waits until every unit is held where it is placed and records units per node, how many
    units changed holder, and how long the cluster took to settle.

Prints one JSON object per round or step, then a summary (JSON) on the last line.
"""

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=10, content_type="application/json"):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text.decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        return 0, str(error)


class Node:
    def __init__(self, args, index):
        self.args = args
        self.id = f"k{index}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = os.path.join(args.workdir, self.id)
        self.process = None

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        log = open(os.path.join(self.args.workdir, f"{self.id}.log"), "ab")
        self.process = subprocess.Popen(
            [self.args.keel, "serve", "--data-dir", self.dir, "--listen", f"127.0.0.1:{self.port}",
             "--cluster", self.args.nats, "--node-id", self.id, "--cluster-name", self.args.cluster_name,
             "--lease-ttl", self.args.lease_ttl],
            stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if http("GET", self.url + "/readyz", timeout=1)[0] == 200:
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.id} not ready within 30s; see {self.args.workdir}/{self.id}.log")

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def cluster(self):
        status, body = http("GET", self.url + "/v1/cluster", timeout=2)
        return body if status == 200 else None


def holders(status):
    return {unit["unit"]: unit.get("node") for unit in status["units"]}


def settled(status, units, nodes):
    live = {node["id"] for node in status["nodes"]}
    listed = status["units"]
    return (len(live) == nodes and len(listed) == units
            and all(u.get("node") and u.get("node") == u.get("placed_on") and u["node"] in live
                    for u in listed))


def wait_settled(node, units, nodes, within=60):
    started = time.monotonic()
    while time.monotonic() - started < within:
        status = node.cluster()
        if status and settled(status, units, nodes):
            return status, time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"not settled within {within}s: {node.cluster()}")


def percentiles(values):
    values = sorted(values)
    if not values:
        return {}
    at = lambda q: values[min(len(values) - 1, int(round(q * (len(values) - 1))))]
    return {"n": len(values), "min": values[0], "median": statistics.median(values),
            "p90": at(0.9), "max": values[-1]}


class Trickle:
    """Publishes one event every `interval` through `self.via`, and pulls (and acks)
    through `self.pull_via`, recording when each pull was sent and answered."""

    def __init__(self, topic, subscription, interval=0.02):
        self.topic, self.subscription, self.interval = topic, subscription, interval
        self.via = self.pull_via = None
        self.stop = False  # the publisher
        self.stop_consumer = False
        self.lock = threading.Lock()
        self.published = []  # (sequence, sent)
        self.pulls = []  # (sent, answered, [sequences])
        self.errors = {"publish": 0, "pull": 0}
        self.sequence = 0

    def publisher(self):
        next_at = time.monotonic()
        while not self.stop:
            seq = self.sequence
            self.sequence += 1
            sent = time.monotonic()
            event = {"specversion": "1.0", "id": f"e{seq}", "source": "/failover", "type": "t",
                     "data": {"n": seq}}
            status, _ = http("POST", f"{self.via}/v1/topics/{self.topic}/events", event, timeout=5,
                             content_type="application/cloudevents+json")
            if status in (200, 201):
                with self.lock:
                    self.published.append((seq, sent))
            else:
                self.errors["publish"] += 1
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def consumer(self):
        while not self.stop_consumer:
            sent = time.monotonic()
            status, body = http("POST", f"{self.pull_via}/v1/subscriptions/{self.subscription}/pull",
                                {"max": 100, "wait": "500ms"}, timeout=5)
            answered = time.monotonic()
            if status != 200 or not isinstance(body, dict):
                self.errors["pull"] += 1
                time.sleep(0.01)
                continue
            messages = body.get("messages", [])
            sequences = [m["event"]["data"]["n"] for m in messages]
            with self.lock:
                self.pulls.append((sent, answered, sequences))
            if messages:
                http("POST", f"{self.pull_via}/v1/subscriptions/{self.subscription}/ack",
                     {"ack_ids": [m["ack_id"] for m in messages]}, timeout=5)


def failover(args):
    nodes = [Node(args, i) for i in range(3)]
    for node in nodes:
        node.start()
    try:
        first = nodes[0]
        http("PUT", first.url + "/v1/topics/fo", {"partitions": 1})
        status, body = http("PUT", first.url + "/v1/subscriptions/fo-sub",
                            {"topic": "fo", "start": "latest", "ack_timeout": "30s"})
        if status not in (200, 201):
            raise SystemExit(f"create subscription: {status} {body}")
        wait_settled(first, 1, 3)
        trickle = Trickle("fo", "fo-sub")
        host = lambda status: holders(status).get("subscription/fo-sub")
        rounds = []
        threads = []
        for index in range(args.rounds):
            status, _ = wait_settled(nodes[0] if nodes[0].process else nodes[1], 1, 3)
            victim = next(n for n in nodes if n.id == host(status))
            survivors = [n for n in nodes if n is not victim]
            trickle.via, trickle.pull_via = survivors[0].url, survivors[1].url
            if not threads:
                threads = [threading.Thread(target=trickle.publisher, daemon=True),
                           threading.Thread(target=trickle.consumer, daemon=True)]
                for thread in threads:
                    thread.start()
            # Deliveries flow through the survivors; the kill falls at a random point of the
            # nodes' rounds (a fixed pause after the settle would kill at one phase only).
            time.sleep(args.steady + random.uniform(0, parse_seconds(args.lease_ttl)))
            with trickle.lock:
                published_before = trickle.sequence
            killed_at = time.monotonic()
            victim.kill9()
            moved_at = new_host = None
            deadline = killed_at + 8 * parse_seconds(args.lease_ttl) + 10
            while moved_at is None and time.monotonic() < deadline:
                for survivor in survivors:
                    status = survivor.cluster()
                    if status and host(status) in {s.id for s in survivors}:
                        moved_at, new_host = time.monotonic(), host(status)
                        break
                time.sleep(0.01)
            # The first pull sent after the kill that returns events; the first event published
            # after the kill that arrives.
            first_pull = first_new = None
            while time.monotonic() < deadline and (first_pull is None or first_new is None):
                with trickle.lock:
                    for sent, answered, sequences in trickle.pulls:
                        if sent >= killed_at and sequences and first_pull is None:
                            first_pull = answered
                        if answered >= killed_at and any(s >= published_before for s in sequences) \
                                and first_new is None:
                            first_new = answered
                time.sleep(0.02)
            ms = lambda at: None if at is None else round((at - killed_at) * 1000)
            record = {"round": index + 1, "victim": victim.id, "unit_moved_ms": ms(moved_at),
                      "first_pull_ms": ms(first_pull), "first_new_ms": ms(first_new),
                      "new_host": new_host}
            print(json.dumps(record), flush=True)
            rounds.append(record)
            victim.start()
        # Publishing stops first; the consumer drains what was published (or 30 s pass).
        trickle.stop = True
        threads[0].join(timeout=10)
        drain_deadline = time.monotonic() + 30
        while time.monotonic() < drain_deadline:
            with trickle.lock:
                received = {s for _, _, sequences in trickle.pulls for s in sequences}
                acknowledged = {seq for seq, _ in trickle.published}
            if acknowledged <= received:
                break
            time.sleep(0.1)
        trickle.stop_consumer = True
        threads[1].join(timeout=10)
        with trickle.lock:
            received = set()
            duplicates = 0
            for _, _, sequences in trickle.pulls:
                for sequence in sequences:
                    duplicates += sequence in received
                    received.add(sequence)
            acknowledged = {seq for seq, _ in trickle.published}
        summary = {"lease_ttl": args.lease_ttl, "rounds": len(rounds)}
        for figure in ("unit_moved_ms", "first_pull_ms", "first_new_ms"):
            values = [r[figure] for r in rounds if r[figure] is not None]
            summary[figure] = percentiles(values)
            summary[figure]["missing"] = len(rounds) - len(values)
        summary["published_acknowledged"] = len(acknowledged)
        summary["acknowledged_never_received"] = len(acknowledged - received)
        summary["never_received_sequences"] = sorted(acknowledged - received)[:20]
        summary["redelivered"] = duplicates
        summary["errors"] = trickle.errors
        print(json.dumps(summary), flush=True)
    finally:
        for node in nodes:
            node.stop()


def spread(args):
    nodes = [Node(args, i) for i in range(args.nodes)]
    try:
        nodes[0].start()
        http("PUT", nodes[0].url + "/v1/topics/sp", {"partitions": 1})
        for index in range(args.units):
            status, body = http("PUT", f"{nodes[0].url}/v1/subscriptions/s{index}",
                                {"topic": "sp", "start": "latest"})
            if status not in (200, 201):
                raise SystemExit(f"create s{index}: {status} {body}")
        status, took = wait_settled(nodes[0], args.units, 1)
        steps = []
        before = holders(status)
        for count in range(1, args.nodes + 1):
            if count > 1:
                started = time.monotonic()
                nodes[count - 1].start()
                status, _ = wait_settled(nodes[0], args.units, count, within=120)
                took = time.monotonic() - started
            after = holders(status)
            per_node = {node["id"]: len(node["units"]) for node in status["nodes"]}
            moved = sum(1 for unit, node in after.items() if before.get(unit) != node)
            step = {"nodes": count, "units_per_node": per_node, "moved": moved,
                    "settled_after_s": round(took, 2)}
            print(json.dumps(step), flush=True)
            steps.append(step)
            before = after
        print(json.dumps({"units": args.units, "steps": steps}), flush=True)
    finally:
        for node in nodes:
            node.stop()


def parse_seconds(text):
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["failover", "spread"])
    parser.add_argument("--keel", required=True, help="the keel binary")
    parser.add_argument("--nats", required=True, help="NATS URLs, comma-separated")
    parser.add_argument("--workdir", required=True, help="data dirs and logs of the nodes")
    parser.add_argument("--cluster-name", default=f"moves{os.getpid()}")
    parser.add_argument("--lease-ttl", default="2s")
    parser.add_argument("--rounds", type=int, default=20, help="failover: kills")
    parser.add_argument("--steady", type=float, default=1.0,
                        help="failover: seconds of deliveries before each kill")
    parser.add_argument("--units", type=int, default=30, help="spread: subscriptions")
    parser.add_argument("--nodes", type=int, default=5, help="spread: nodes, added one by one")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    # SIGTERM stops the nodes too (the `finally` blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    (failover if args.what == "failover" else spread)(args)


if __name__ == "__main__":
    sys.exit(main())
