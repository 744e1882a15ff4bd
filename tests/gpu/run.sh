#!/usr/bin/env bash
# GPU check of tf-dcn's CUDA launchers, without TensorFlow. From the repository root:
#
#   bash tests/gpu/run.sh              build, then run tests/gpu/check_gpu.py (needs a GPU, PyTorch,
#                                      torchvision); exits non-zero if anything fails
#   bash tests/gpu/run.sh --build-only only build (needs clang-19; `make` provides the rest)
#   bash tests/gpu/run.sh --prebuilt   only run, with the library a --build-only left in the build
#                                      directory (for GPU machines without clang or a package index)
#
# Builds $TF_DCN_GPU_BUILD_DIR/libtfdcn_gpu.so (default tests/gpu/build) from tests/gpu/capi.cc and
# cc/kernels/*.cu exactly like the TensorFlow op library (Makefile: clang-19 with the CUDA 12.5
# installation from pip wheels, `make -s print-cuda-flags`; cc/kernels/gpu/cuda_runtime_forward.cc
# instead of a CUDA runtime of its own), for one architecture (TF_DCN_GPU_ARCH, default 90 =
# H100/H200) to keep the build short. At run time the forwarders use the libcudart.so.12 already in
# the process (PyTorch's, when PyTorch is a CUDA 12 build), else the copy of TensorFlow's runtime
# (nvidia-cuda-runtime-cu12) that --build-only puts next to the library. cuBLAS is dlopen'ed at
# run time (tests/gpu/cublas_gemm.h): TF_DCN_CUBLAS is pointed at the libcublas shipped in
# PyTorch's nvidia wheels unless already set.
set -euo pipefail

BUILD=1
RUN=1
for arg in "$@"; do
  case "$arg" in
    --build-only) RUN=0 ;;
    --prebuilt) BUILD=0 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD_DIR="${TF_DCN_GPU_BUILD_DIR:-tests/gpu/build}"
ARCH="${TF_DCN_GPU_ARCH:-90}"
PYTHON="${PYTHON:-python3}"
LIB="$BUILD_DIR/libtfdcn_gpu.so"

if command -v nvidia-smi >/dev/null 2>&1; then
  echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    2>/dev/null | head -n 1 || echo unknown)"
fi

# ---- build ---------------------------------------------------------------------------------
if [[ $BUILD -eq 1 ]]; then
  # The CUDA 12.5 installation and the compiler flags of the op library.
  make -s cuda12-root >/dev/null
  FLAGS_TEXT="$(make -s print-cuda-flags)"
  CLANG="$(sed -n 's/^CUDA_CLANG=//p' <<<"$FLAGS_TEXT")"
  CUDA_HOME_12="$(sed -n 's/^CUDA_HOME_12=//p' <<<"$FLAGS_TEXT")"
  read -r -a CUDA_FLAGS <<<"$(sed -n 's/^CLANG_CUDA_FLAGS=//p' <<<"$FLAGS_TEXT")"
  if [[ -z "$CLANG" ]]; then
    echo "run.sh: clang-19 not found (apt-get install clang-19)" >&2
    exit 1
  fi
  echo "== compiler: $CLANG ($("$CLANG" --version | head -n 1)), CUDA at $CUDA_HOME_12"
  CXX="${CXX:-g++}"
  mkdir -p "$BUILD_DIR/obj"
  start=$(date +%s)
  pids=()
  objs=()
  # capi.cc is compiled as CUDA (like the .cu files) so it sees the CUDA runtime headers.
  for src in tests/gpu/capi.cc cc/kernels/*.cu; do
    obj="$BUILD_DIR/obj/$(echo "$src" | tr '/' '_').o"
    objs+=("$obj")
    "$CLANG" "${CUDA_FLAGS[@]}" "--cuda-gpu-arch=sm_${ARCH}" "--cuda-include-ptx=sm_${ARCH}" \
      -c "$src" -o "$obj" &
    pids+=($!)
  done
  obj="$BUILD_DIR/obj/cuda_runtime_forward.o"
  objs+=("$obj")
  "$CXX" -std=c++17 -O2 -fPIC -I. -c cc/kernels/gpu/cuda_runtime_forward.cc -o "$obj" &
  pids+=($!)
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  if [[ $status -ne 0 ]]; then
    echo "run.sh: compilation failed" >&2
    exit 1
  fi
  # -z defs: every symbol must resolve now (a missing launcher or runtime forwarder fails here).
  "$CXX" -shared "${objs[@]}" -o "$LIB.tmp" -ldl -Wl,-z,defs
  mv -f "$LIB.tmp" "$LIB"
  cp -f build/cuda12/wheels/nvidia/cuda_runtime/lib/libcudart.so.12 "$BUILD_DIR/libcudart.so.12"
  echo "== built $LIB for sm_${ARCH} in $(( $(date +%s) - start )) s"
fi
if [[ ! -f "$LIB" ]]; then
  echo "run.sh: $LIB is missing (run tests/gpu/run.sh --build-only where clang-19 is)" >&2
  exit 1
fi
if [[ $RUN -eq 0 ]]; then
  exit 0
fi

# ---- run -----------------------------------------------------------------------------------
if [[ -z "${TF_DCN_CUBLAS:-}" ]]; then
  # The libcublas of PyTorch's CUDA wheels (nvidia/cublas/lib or, for CUDA 13 wheels,
  # nvidia/cu13/lib), preferring the CUDA major version PyTorch was built with.
  TF_DCN_CUBLAS="$("$PYTHON" - <<'EOF' 2>/dev/null || true
import glob, os, sys
found = []
for entry in sys.path:
    found += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libcublas.so.*")))
try:
    import torch
    major = (torch.version.cuda or "").split(".")[0]
except Exception:
    major = ""
preferred = [p for p in found if major and p.endswith(".so." + major)]
print((preferred or found or [""])[0])
EOF
)"
  export TF_DCN_CUBLAS
fi
if [[ -n "${TF_DCN_CUBLAS:-}" ]]; then
  export LD_LIBRARY_PATH="$(dirname "$TF_DCN_CUBLAS")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "== TF_DCN_CUBLAS=${TF_DCN_CUBLAS:-<unset: system search>}"
export TF_DCN_CUBLAS_VERBOSE="${TF_DCN_CUBLAS_VERBOSE:-1}"
export TF_DCN_GPU_LIB="$LIB"
# Only used when no libcudart.so.12 is loaded by then (cuda_runtime_forward.cc).
export TF_DCN_CUDART="${TF_DCN_CUDART:-$(cd "$BUILD_DIR" && pwd)/libcudart.so.12}"
exec "$PYTHON" tests/gpu/check_gpu.py
