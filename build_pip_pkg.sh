#!/usr/bin/env bash
# Builds the platform wheel of tf-dcn into dist/ (or the folder given as $1).
# The op library is compiled first (make build); the wheel is assembled in a staging copy so the
# repository stays clean.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"

make -C "$here" build >/dev/null
test -f "$here/tf_dcn/_tf_dcn_ops.so" || { echo "op library missing after make build" >&2; exit 1; }

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
cp "$here/setup.py" "$here/README.md" "$staging/"
# The Python package (all subpackages) and the built op libraries; no caches.
(cd "$here" && find tf_dcn \( -name '*.py' -o -name '*.so' \) -not -path '*/__pycache__/*' \
  -exec cp --parents {} "$staging/" \;)

(cd "$staging" && "$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dest" .)
ls "$dest"/tf_dcn-*.whl
