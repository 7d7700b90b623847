#!/usr/bin/env python3
"""python3 examples/aggregate.py --server http://127.0.0.1:7171 --writers 8 --commands 25

An event-sourced bank account that is never overdrawn and never loses an update, however many
writers command it at once: optimistic concurrency with keel's key streams, in plain HTTP.

The account's events are its key's stream in the topic `accounts` (created if missing). To
handle a command (deposit or withdraw an amount), a writer reads the events it has not seen
yet, folds them into the account (its balance), decides (a withdrawal larger than the balance
is refused), and appends the resulting event with `expected_version` = the version it decided
on. If another writer appended first, keel answers 409 and appends nothing: the writer reads
what it missed and decides again. --writers threads each handle --commands random commands
at the same account. At the end the example reads the whole stream again and checks that it
holds exactly the events the writers were told were appended, and that the balance is exact;
it exits 1 if not. Requests are sent again while keel restarts, so the account stays exact
when keel is killed mid-run too.
"""

import argparse
import concurrent.futures
import http.client
import json
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

TOPIC = "accounts"
# While keel is unreachable or restarting, a request is sent again every RETRY_PAUSE_S, for at
# most UNAVAILABLE_WAIT_S.
RETRY_PAUSE_S = 0.2
UNAVAILABLE_WAIT_S = 30


class Conflict(Exception):
    """Another writer appended to the stream first: keel's 409, with the version it is at."""


def call(server, method, path, body=None, content_type="application/json"):
    """One request to keel; returns (status, answer as JSON). Sent again while keel is
    unreachable or answers 5xx (restarting), for up to UNAVAILABLE_WAIT_S. That is safe even
    when an answer was lost after keel acted: a read changes nothing, and an append sent again
    carries the same event ids, so one that happened is answered as a duplicate."""
    data = None if body is None else json.dumps(body).encode()
    deadline = time.monotonic() + UNAVAILABLE_WAIT_S
    while True:
        request = urllib.request.Request(server + path, data=data, method=method,
                                         headers={"content-type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:  # the answer is a problem+json
            status, text = error.code, error.read()
        except (OSError, http.client.HTTPException) as error:  # refused, reset, cut short
            status, text = None, str(getattr(error, "reason", error)).encode()
        if status is not None and status < 500:
            break
        if time.monotonic() > deadline:
            sys.exit(f"{method} {path}: keel unavailable for {UNAVAILABLE_WAIT_S} s: {text}")
        print(f"keel unavailable ({status or text.decode()}); sending {method} again", flush=True)
        time.sleep(RETRY_PAUSE_S)
    answer = json.loads(text) if text else None
    if status not in (200, 201, 409):
        sys.exit(f"{method} {path} answered {status}: {(answer or {}).get('detail', answer)}")
    return status, answer


class Account:
    """The aggregate: the state its events fold into, and the decisions taken on it."""

    def __init__(self, key):
        self.key = key
        self.version = 0  # how many of the stream's events are folded in
        self.balance = 0

    def apply(self, version, event):
        """Folds in one event. An event records the balance it leaves, so a fold that reaches
        another one (a lost or doubled update) is caught here."""
        assert version == self.version + 1, f"version {version} after {self.version}"
        amount = event["data"]["amount"]
        self.balance += amount if event["type"] == "deposited" else -amount
        if self.balance < 0 or self.balance != event["data"]["balance"]:
            raise AssertionError(f"event {version} ({event['id']}) leaves balance "
                                 f"{event['data']['balance']}, the fold says {self.balance}")
        self.version = version

    def catch_up(self, server):
        """Reads and folds the events after `version`, page by page."""
        path = f"/v1/topics/{TOPIC}/keys/{urllib.parse.quote(self.key, safe='')}/events"
        while True:
            _, page = call(server, "GET", f"{path}?from_version={self.version + 1}&max=1000")
            for record in page["records"]:
                self.apply(record["version"], record["event"])
            if page["next_version"] > page["version"]:
                return

    def decide(self, command, event_id):
        """The event a command results in, or None when it is refused."""
        kind, amount = command
        if kind == "withdraw" and amount > self.balance:
            return None  # never overdraw: the decision needs an up-to-date balance
        after = self.balance + (amount if kind == "deposit" else -amount)
        return {"specversion": "1.0", "id": event_id, "source": "/examples/aggregate",
                "type": "deposited" if kind == "deposit" else "withdrawn",
                "partitionkey": self.key, "datacontenttype": "application/json",
                "data": {"amount": amount, "balance": after}}


def append(server, event, expected_version):
    """Appends `event` if the stream is at `expected_version`; raises Conflict if not."""
    status, answer = call(server, "POST",
                          f"/v1/topics/{TOPIC}/events?expected_version={expected_version}",
                          event, "application/cloudevents+json")
    if status == 409:
        raise Conflict(answer["current_version"])


def handle(server, account, command, event_id, tally):
    """Handles one command: decide on the latest state, append, and on a conflict again."""
    while True:
        account.catch_up(server)
        event = account.decide(command, event_id)
        if event is None:
            tally["refused"] += 1
            return
        try:
            # The event's id is the command's, the same on every try (see `call`).
            append(server, event, account.version)
        except Conflict:
            tally["conflicts"] += 1
            continue  # someone else's event came first: read it, decide again
        tally["applied"] += 1
        tally["change"] += event["data"]["amount"] * (1 if command[0] == "deposit" else -1)
        return


def writer(server, key, number, commands, run):
    """One writer's commands: random deposits and withdrawals at one account. Returns what
    came of them."""
    draw = random.Random(f"{run}-{number}")
    account = Account(key)  # this writer's own view, brought up to date before each decision
    tally = dict(applied=0, refused=0, conflicts=0, change=0)
    for n in range(commands):
        command = (draw.choice(["deposit", "withdraw"]), draw.randint(1, 100))
        handle(server, account, command, f"{run}-w{number}-c{n}", tally)
    return tally


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--server", default="http://127.0.0.1:7171", help="keel's URL")
    parser.add_argument("--account", default="acct-1", help="the account (the stream's key)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers")
    parser.add_argument("--commands", type=int, default=25, help="commands per writer")
    options = parser.parse_args()
    server = options.server.rstrip("/")
    call(server, "PUT", f"/v1/topics/{TOPIC}", {"partitions": 4})
    before = Account(options.account)
    before.catch_up(server)  # a rerun continues the same account
    print(f"account {before.key}: version {before.version}, balance {before.balance}")
    run = uuid.uuid4().hex[:8]  # fresh event ids per run, so keel's dedupe keeps them all
    with concurrent.futures.ThreadPoolExecutor(options.writers) as pool:
        writers = [pool.submit(writer, server, options.account, number, options.commands, run)
                   for number in range(options.writers)]
        tallies = [w.result() for w in writers]  # a writer that failed fails the run here
    total = {name: sum(t[name] for t in tallies) for name in tallies[0]}
    print(f"{options.writers} writers, {options.writers * options.commands} commands: "
          f"{total['applied']} applied, {total['refused']} refused (insufficient funds), "
          f"{total['conflicts']} conflicts retried")
    # The check: a fresh fold of the whole stream (which also checks every event's recorded
    # balance) must hold exactly the events the writers were told were appended.
    after = Account(options.account)
    after.catch_up(server)
    print(f"account {after.key}: version {after.version}, balance {after.balance}")
    appended, change = after.version - before.version, after.balance - before.balance
    if appended != total["applied"] or change != total["change"]:
        sys.exit(f"mismatch: the stream gained {appended} events and {change:+d}, the writers "
                 f"applied {total['applied']} events and {total['change']:+d}")
    print(f"exact: {appended} events appended = {total['applied']} applied; balance changed by "
          f"{change:+d} = the applied deposits minus withdrawals; never below 0")


if __name__ == "__main__":
    main()
