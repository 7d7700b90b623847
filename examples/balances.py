#!/usr/bin/env python3
"""python3 examples/balances.py --server http://127.0.0.1:7171 --setup

Per-account balances that equal the sum of deposits exactly, whatever crashes: a keel
stateful pull consumer in plain HTTP and the Python standard library.

--setup creates the topics `deposits` and `receipts` and the stateful subscription `balances`
when missing; then it consumes forever (--until-idle: until a pull finds nothing). Publish a
deposit to try it:

    keel publish deposits --type deposit --source bank --key alice --data '{"amount": 42}'

Why no SDK is needed: keel keeps each account's state (`partitionkey` = the account) and
hands it out with the deposit. The ack carries the new state and the receipt to emit, and keel
commits the three (state, receipt, ack) at once and durably. A deposit whose commit happened
is never handed out again, and a second commit for it is refused, so the balance counts each
deposit exactly once even if keel or this process is killed at any moment. This process keeps
nothing itself: it may crash, restart, or run twice.
"""

import argparse
import http.client
import json
import logging
import sys
import time
import urllib.error
import urllib.request

SUBSCRIPTION = "balances"
# Each account's events go to one partition, in order; accounts spread over the partitions.
TOPICS = {"deposits": 4, "receipts": 4}
# Pause before trying again while keel is unreachable or starting.
RETRY_PAUSE_S = 0.5

log = logging.getLogger("balances")


class Unavailable(Exception):
    """keel did not answer (down, restarting) or answered 5xx: try again later."""


def call(server, method, path, body=None):
    """One JSON request; returns (status, answer). Raises Unavailable when keel is down."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:  # 4xx and 5xx: the answer is a problem+json
        status, text = error.code, error.read()
    except (OSError, http.client.HTTPException) as error:  # refused, reset, cut short
        raise Unavailable(str(getattr(error, "reason", error))) from error
    if status >= 500:
        raise Unavailable(f"{status} {text.decode(errors='replace')}")
    return status, json.loads(text) if text else None


def patiently(server, method, path, body=None):
    """`call`, retried while keel is unavailable."""
    while True:
        try:
            return call(server, method, path, body)
        except Unavailable as error:
            log.warning("keel unavailable (%s); retrying in %s s", error, RETRY_PAUSE_S)
            time.sleep(RETRY_PAUSE_S)


def setup(server):
    """Creates the topics and the subscription; keeps them if they exist (PUT is idempotent)."""
    for topic, partitions in TOPICS.items():
        put(server, f"/v1/topics/{topic}", {"partitions": partitions})
    put(server, f"/v1/subscriptions/{SUBSCRIPTION}", {
        "topic": "deposits", "start": "earliest",
        "stateful": True, "ordering": "key",  # state per account needs one deposit at a time
    })


def put(server, path, spec):
    status, answer = patiently(server, "PUT", path, spec)
    if status not in (200, 201):
        sys.exit(f"PUT {path} answered {status}: {answer.get('detail', answer)}")
    log.info("%s %s", "created" if status == 201 else "exists:", path)


def commit_for(message):
    """The ack of one deposit: the account's new state and a receipt to emit."""
    event = message["event"]
    before = message["state"] or {"balance": 0, "deposits": 0}  # null: a new account
    amount = event["data"]["amount"]
    after = {"balance": before["balance"] + amount, "deposits": before["deposits"] + 1}
    # No "id": keel derives it from the deposit's position, so a receipt exists once.
    receipt = {"specversion": "1.0", "source": "/examples/balances", "type": "receipt",
               "partitionkey": event["partitionkey"],
               "data": {"deposit": event["id"], "amount": amount, "balance": after["balance"]}}
    return {"ack_id": message["ack_id"], "state": after,
            "emit": [{"topic": "receipts", "event": receipt}]}


def consume(server, until_idle, handling_s):
    """Pulls deposits and commits each with its account's new balance; returns when idle (if
    asked). Returns the number of deposits applied."""
    applied = 0
    while True:
        _, answer = patiently(server, "POST", f"/v1/subscriptions/{SUBSCRIPTION}/pull",
                              {"max": 100, "wait": "1s"})
        messages = answer["messages"]
        if not messages:
            if until_idle:
                return applied
            continue
        acks = [commit_for(message) for message in messages]
        time.sleep(handling_s)  # a real handler's work; a crash meanwhile makes the acks stale
        # Retried while keel is down: whether a lost answer's commit happened or not, sending
        # it again is safe, since keel applies a deposit's commit once.
        status, answer = patiently(server, "POST", f"/v1/subscriptions/{SUBSCRIPTION}/ack",
                                   {"acks": acks})
        if status == 409:
            # The deliveries are no longer outstanding (keel restarted, or the ack deadline
            # passed): nothing was committed now. Each deposit comes back unless an earlier
            # try committed it; keel hands out no deposit twice.
            log.warning("stale: %d deposits pulled before keel restarted (or past their ack "
                        "deadline); nothing committed now, pulling again", len(acks))
            continue
        if status != 200:
            sys.exit(f"ack answered {status}: {answer.get('detail', answer)}")
        for message, ack, result in zip(messages, acks, answer["results"]):
            event, state = message["event"], ack["state"]
            if result["outcome"] == "applied":
                applied += 1
                log.info("applied %s: account %s %+d -> balance %d (%d deposits)",
                         event["id"], event["partitionkey"], event["data"]["amount"],
                         state["balance"], state["deposits"])
            else:  # a second commit for the same deposit: keel refused it, nothing changed
                log.info("already applied %s: not counted again", event["id"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--server", default="http://127.0.0.1:7171", help="keel's URL")
    parser.add_argument("--setup", action="store_true",
                        help="create the topics and the subscription if missing")
    parser.add_argument("--until-idle", action="store_true",
                        help="stop when a pull finds nothing (else consume forever)")
    parser.add_argument("--handling-ms", type=int, default=0,
                        help="time each batch takes to handle, as a slower handler's would")
    options = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    server = options.server.rstrip("/")
    if options.setup:
        setup(server)
    try:
        applied = consume(server, options.until_idle, options.handling_ms / 1000)
    except KeyboardInterrupt:
        return
    log.info("idle: applied %d deposits in this run", applied)


if __name__ == "__main__":
    main()
