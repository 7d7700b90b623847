"""Publishes through keel's HTTP API with the CloudEvents Python SDK (a client nobody here
wrote) and reads the events back.

Invariant: an event the SDK encodes in structured or binary mode is accepted, stored, and
decodes back with the SDK to the same attributes and data (bytes data included).
Usage: python3 cloudevents_sdk.py http://127.0.0.1:PORT
"""

import json
import sys
import urllib.request

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

BASE = sys.argv[1]


def call(method, path, body=None, headers=None):
    request = urllib.request.Request(BASE + path, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request) as response:
        return response.status, json.loads(response.read() or b"null")


def main():
    call("PUT", "/v1/topics/sdk", json.dumps({"partitions": 1}).encode())
    events = [
        (to_structured, CloudEvent({"type": "sdk.structured", "source": "python-sdk", "subject": "s1"}, {"amount": 42, "items": ["a", "b"]})),
        (to_binary, CloudEvent({"type": "sdk.binary.json", "source": "python-sdk", "partitionkey": "k1"}, {"ok": True})),
        (to_binary, CloudEvent({"type": "sdk.binary.bytes", "source": "python-sdk", "datacontenttype": "application/octet-stream"}, bytes([0, 1, 254, 255]))),
    ]
    for encode, event in events:
        headers, body = encode(event)
        status, answer = call("POST", "/v1/topics/sdk/events", body, dict(headers))
        assert status == 200, answer
        assert answer["results"][0]["id"] == event["id"], answer
    _, page = call("GET", "/v1/topics/sdk/partitions/0/events?from=0&max=10")
    assert len(page["records"]) == len(events), page
    for (_, sent), record in zip(events, page["records"]):
        stored = json.dumps(record["event"]).encode()
        received = from_http({"content-type": "application/cloudevents+json"}, stored)
        for attribute in ("id", "source", "type", "specversion", "subject", "partitionkey", "time"):
            assert received.get(attribute) == sent.get(attribute), (attribute, received, sent)
        assert received.data == sent.data, (received.data, sent.data)
    print(f"cloudevents SDK interop: {len(events)} events published and read back intact")


main()
