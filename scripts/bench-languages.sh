#!/usr/bin/env bash
# The per-record cost of a plugin in each language: `sluice new` makes the
# same stage (parse a JSON object, add a field, serialize it, add a header)
# in Rust, Python and JavaScript; each runs alone on generated orders under
# `sluice bench`. Then the example pipeline with the Python and JavaScript
# stages (plugins/polyglot.toml). Needs `make build` (and scripts/setup.sh).
#   scripts/bench-languages.sh [COUNT]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-50000}
sluice="$root/target/release/sluice"
work="$root/target/lang-bench"
rm -rf "$work"
mkdir -p "$work"

for lang in rust python js; do
  "$sluice" new "tag-$lang" --lang "$lang" --dir "$work/tag-$lang" >/dev/null
  make -s -C "$work/tag-$lang" build \
    COMPONENTIZE_PY="$root/target/tools/venv/bin/componentize-py" \
    COMPONENTIZE_JS="$root/plugins/suspicious-js/node_modules/.bin/componentize-js" \
    CARGO_TARGET_DIR="$root/target/scaffold" >/dev/null
done
cp "$root/target/scaffold/wasm32-wasip2/release/tag_rust.wasm" "$work/tag-rust.wasm"
cp "$work/tag-python/tag-python.wasm" "$work/tag-js/tag-js.wasm" "$work/"

for lang in rust python js; do
  cat > "$work/$lang.toml" <<TOML
[kafka]
brokers = "none"
group = "bench"
[redis]
url = "redis://none"
[source]
topics = ["orders"]
[output]
topic = "out"
[dead_letter]
topic = "dlq"
[[stages]]
name = "tag-$lang"
plugin = "tag-$lang.wasm"
limits = { memory_mib = 128 }
TOML
  echo "== $lang: $(du -h "$work/tag-$lang.wasm" | cut -f1) component"
  "$sluice" --log warn bench "$work/$lang.toml" --count "$count" --batch 1 --batch 64 --batch 512 | grep -v "stages only"
done

echo "== plugins/polyglot.toml: the default stages, then vip (Python) and suspicious (JavaScript)"
"$sluice" --log warn bench "$root/plugins/polyglot.toml" --count "$count" --batch 512 | grep -v "stages only"
