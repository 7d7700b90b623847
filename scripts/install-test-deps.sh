#!/usr/bin/env bash
# Installs the outside tools the tests check keel against, on a fresh Debian machine:
# promtool (Prometheus' own checker) for /metrics, fiu-run (libfiu) to make fsync fail,
# the CloudEvents Python SDK as an outside publisher, and the official Standard Webhooks
# Python library to verify pushed signatures, OpenTelemetry's API to read pushed trace context;
# python3 itself runs examples/balances.py in the
# exactly-once test. Idempotent and quiet when present.
set -euo pipefail

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v fiu-run >/dev/null 2>&1 || need_apt+=(fiu-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing with apt-get: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import cloudevents' 2>/dev/null; then
  echo "installing with pip: cloudevents"
  python3 -m pip install -q 'cloudevents==1.12.0'
fi
if ! python3 -c 'import standardwebhooks' 2>/dev/null; then
  echo "installing with pip: standardwebhooks"
  python3 -m pip install -q 'standardwebhooks==1.1.0'
fi
if ! python3 -c 'import opentelemetry.trace' 2>/dev/null; then
  echo "installing with pip: opentelemetry-api"
  python3 -m pip install -q 'opentelemetry-api==1.45.3'
fi
