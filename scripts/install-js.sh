#!/usr/bin/env bash
# The OpenTelemetry JavaScript SDK the tests run as a real OTLP client (tests/js), from the
# npm registry at the versions package-lock.json pins; Node.js from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/../tests/js"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-js: Node.js 18.19+ and npm are needed for tests/js; install them, or run" \
         "this as root on Debian/Ubuntu" >&2
    exit 1
  fi
  echo "install-js: installing nodejs and npm from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "install-js: npm ci (tests/js)"
  npm ci --no-audit --no-fund --loglevel=error
fi
