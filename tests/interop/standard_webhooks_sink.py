"""A webhook sink that checks keel's pushes with the official Standard Webhooks library
(`standardwebhooks`, a verifier nobody here wrote) and decodes them with the CloudEvents
Python SDK; a push of a traced event is also read with OpenTelemetry's W3C Trace Context
propagator.

Invariant: every request keel pushes carries a `webhook-signature` that the library accepts
for the secret given here, and is a binary-mode CloudEvent whose id is the `webhook-id`.
Answers 204 when both hold; 401 with the library's reason when the signature does not
verify; 400 when the CloudEvent does not decode; 422 for a body that is not UTF-8, which the
library cannot verify (it decodes bodies as text). An event with a `traceparent` attribute
must arrive with an HTTP `traceparent` that OpenTelemetry extracts as a child in the same
trace (same trace id, another span id), else 400. Each verdict is printed as one line.
Usage: python3 standard_webhooks_sink.py PORT_FILE WHSEC_SECRET
  (binds 127.0.0.1 on a free port and writes the port to PORT_FILE once it listens)
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.http import from_http
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT_FILE, SECRET = sys.argv[1], sys.argv[2]
WEBHOOK = Webhook(SECRET)


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as keel's client expects

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = dict(self.headers.items())
        try:
            WEBHOOK.verify(body, headers, json_parse=False)
        except WebhookVerificationError as error:
            return self.answer(401, f"signature rejected: {error}")
        except UnicodeDecodeError:
            # The library reads bodies as UTF-8 text, so it cannot check other bytes.
            return self.answer(422, "the library cannot verify a body that is not UTF-8")
        try:
            event = from_http(headers, body)
        except Exception as error:  # any decoding failure is the sender's fault here
            return self.answer(400, f"not a binary-mode CloudEvent: {error!r}")
        if event["id"] != headers.get("webhook-id"):
            return self.answer(400, f"ce-id {event['id']!r} is not webhook-id")
        traced = event.get("traceparent")
        if traced is not None:
            problem = trace_problem(traced, headers)
            if problem:
                return self.answer(400, problem)
        verdict = f"verified {event['id']} ({event['type']}{', traced' if traced else ''})"
        return self.answer(204, verdict)

    def answer(self, status, verdict):
        print(f"{status} {verdict}", flush=True)
        body = verdict.encode() if status != 204 else b""
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # the verdict lines above are the log


def span_of(carrier):
    """The span context OpenTelemetry's propagator reads from a carrier's `traceparent`."""
    context = TraceContextTextMapPropagator().extract(carrier)
    return trace.get_current_span(context).get_span_context()


def trace_problem(event_traceparent, headers):
    """Why the request does not continue the event's trace, or None when it does."""
    lower = {name.lower(): value for name, value in headers.items()}
    event_span = span_of({"traceparent": event_traceparent})
    hop = span_of(lower)
    if not hop.is_valid:
        return f"no valid HTTP traceparent for a traced event: {lower.get('traceparent')!r}"
    if hop.trace_id != event_span.trace_id or hop.span_id == event_span.span_id:
        return f"traceparent {lower['traceparent']!r} is not a child of {event_traceparent!r}"
    return None


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    # Written whole under another name, then renamed, so a reader never sees half a port.
    with open(PORT_FILE + ".tmp", "w") as file:
        file.write(str(server.server_address[1]))
    os.replace(PORT_FILE + ".tmp", PORT_FILE)
    server.serve_forever()


main()
