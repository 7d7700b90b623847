#!/usr/bin/env python3
"""A webhook sink for trying keel: prints each event keel pushes and answers 200.

    python3 examples/webhook_sink.py --port 8080 [--secret whsec_...] [--reject-negative]

With --secret it checks each request's Standard Webhooks signature (HMAC-SHA256 over
"id.timestamp.body") and answers 401 when it does not verify. With --reject-negative it
answers 422 to events whose data has a negative "amount", to show keel's dead-letter queue.
A GET of /healthz answers 200, for keel's health checks (`--health-check`).
Only the Python standard library is used.
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json


def signature_ok(secret, headers, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split()]
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def handler(options):
    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status = 200
            if options.secret and not signature_ok(options.secret, self.headers, body):
                status = 401
            elif options.reject_negative:
                try:
                    if json.loads(body).get("amount", 0) < 0:
                        status = 422
                except (ValueError, AttributeError):
                    pass
            print(f"{status} {self.headers['ce-type']} id={self.headers['ce-id']} "
                  f"attempt={self.headers['keel-attempt']} data={body.decode(errors='replace')}",
                  flush=True)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self):
            status = 200 if self.path == "/healthz" else 404
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Sink


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--secret", help="whsec_... secret to verify signatures with")
    parser.add_argument("--reject-negative", action="store_true",
                        help="answer 422 to events whose data.amount is negative")
    options = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", options.port), handler(options))
    print(f"sink listening on http://127.0.0.1:{options.port}/hooks", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
