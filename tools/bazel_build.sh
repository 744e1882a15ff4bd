#!/usr/bin/env bash
# Builds the CPU op library with Bazel (`make bazel`) and copies it to build/bazel/_tf_dcn_ops.so,
# whose path is the last line printed. Extra arguments go to `bazel build`.
#
#   tools/bazel_build.sh [BAZEL_BUILD_ARGS...]
#
# The Python whose TensorFlow is built against: $PYTHON_BIN_PATH, else this checkout's
# .venv/bin/python (`make venv`). configure.sh writes .bazelrc for it on every run.
# CPU only: Bazel does not build the CUDA library (use `make gpu`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=//cc:_tf_dcn_ops.so
dest=build/bazel/_tf_dcn_ops.so

if ! command -v bazel >/dev/null; then
  echo "bazel_build.sh: bazel is not on PATH (Debian/Ubuntu: apt-get install bazel-bootstrap)" >&2
  exit 1
fi
python="${PYTHON_BIN_PATH:-.venv/bin/python}"
if [[ ! -x "$python" ]] && ! command -v "$python" >/dev/null; then
  echo "bazel_build.sh: $python not found: run \`make venv\` or set PYTHON_BIN_PATH" >&2
  exit 1
fi

./configure.sh "$python"
bazel build "$@" "$target"
built="$(bazel info "$@" bazel-bin 2>/dev/null)/cc/_tf_dcn_ops.so"

# Copied to a temporary name and renamed, so a process that has the old library mapped keeps it.
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp "$dest.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
cp -f "$built" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$dest"
echo "$(pwd)/$dest"
