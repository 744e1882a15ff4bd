#!/usr/bin/env bash
# Installs one tf-dcn wheel into a fresh virtualenv of every CPython that TensorFlow 2.21 supports
# and runs tests/wheel_smoke.py there (forward, float64 gradients, pooling, a layer), from a
# folder outside the source tree. Then checks that a TensorFlow of another minor version is
# refused at import with a message naming both versions.
#
#   tools/check_wheel_pythons.sh [WHEEL]     (default: the one wheel in dist/, from `make wheel`)
#
# Interpreters: python3.10 ... python3.13 under ~/.pyenv/versions/ or on PATH (PYTHONS="3.10 3.12"
# chooses others). OTHER_TF (default 2.20.0, empty skips) is the mismatched TensorFlow. Needs the
# package index (each venv downloads tensorflow-cpu), so it is not part of `make test`.
# Prints one line per check and exits non-zero if any failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheel="${1:-}"
if [[ -z "$wheel" ]]; then
  wheels=("$here"/dist/tf_dcn-*.whl)
  [[ ${#wheels[@]} == 1 && -f "${wheels[0]}" ]] || { echo "expected one wheel in dist/ (make wheel)" >&2; exit 2; }
  wheel="${wheels[0]}"
fi
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/tests/wheel_smoke.py" "$work/"
echo "wheel: $(basename "$wheel")"

find_python() {  # $1 = 3.11 -> the path of a working interpreter, or nothing
  local candidate
  for candidate in $(ls -d "$HOME"/.pyenv/versions/"$1".*/bin/python 2>/dev/null | sort -rV) \
                   $(command -v "python$1" 2>/dev/null); do
    "$candidate" -c 'pass' >/dev/null 2>&1 && { echo "$candidate"; return; }
  done
}

failed=0
for version in ${PYTHONS:-3.10 3.11 3.12 3.13}; do
  python="$(find_python "$version")"
  if [[ -z "$python" ]]; then
    echo "python $version: FAIL (no interpreter found)"; failed=1; continue
  fi
  venv="$work/venv$version"
  start=$SECONDS
  if ! "$python" -m venv "$venv" >"$work/log$version" 2>&1 ||
     ! "$venv/bin/python" -m pip install --quiet "$wheel[cpu]" >>"$work/log$version" 2>&1; then
    echo "python $version: FAIL (install)"; tail -5 "$work/log$version"; failed=1; continue
  fi
  if result="$(cd "$work" && env -u PYTHONPATH TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" wheel_smoke.py 2>&1)"; then
    echo "python $version: ok in $((SECONDS - start)) s: $(echo "$result" | tail -1)"
  else
    echo "python $version: FAIL"; echo "$result" | tail -8; failed=1
  fi
done

other_tf="${OTHER_TF-2.20.0}"
if [[ -n "$other_tf" ]]; then
  python="$(find_python 3.11)"
  venv="$work/venv-other-tf"
  if "$python" -m venv "$venv" >/dev/null 2>&1 &&
     "$venv/bin/python" -m pip install --quiet "tensorflow-cpu==$other_tf" >/dev/null 2>&1 &&
     "$venv/bin/python" -m pip install --quiet --no-deps "$wheel" >/dev/null 2>&1; then
    message="$(cd "$work" && env -u PYTHONPATH TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -c 'import tf_dcn' 2>&1 | tail -1)"
    if [[ "$message" == *"ImportError"*"$other_tf"*"2.21"* ]]; then
      echo "tensorflow-cpu $other_tf: refused as expected: $message"
    else
      echo "tensorflow-cpu $other_tf: FAIL (unexpected result: $message)"; failed=1
    fi
  else
    echo "tensorflow-cpu $other_tf: FAIL (install)"; failed=1
  fi
fi
exit $failed
