#!/usr/bin/env bash
# Runs every Rust test of the workspace (unit, golden, end to end) and ends
# with one line that sums them up.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
status=0
cargo test --release --workspace 2>&1 | tee target/test.log || status=$?
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "sluice: %d passed, %d failed\n", passed, failed }' target/test.log
exit "$status"
