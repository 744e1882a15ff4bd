#!/usr/bin/env bash
# GPU check of tf-dcn's CUDA launchers, without TensorFlow. From the repository root:
#
#   bash tests/gpu/run.sh              build, then run tests/gpu/check_gpu.py (needs a GPU, PyTorch,
#                                      torchvision); exits non-zero if anything fails
#   bash tests/gpu/run.sh --build-only only build (any machine with nvcc)
#
# Builds $TF_DCN_GPU_BUILD_DIR/libtfdcn_gpu.so (default tests/gpu/build) with nvcc from
# tests/gpu/capi.cc and cc/kernels/*.cu, for one architecture (TF_DCN_GPU_ARCH, default 90 =
# H100/H200) to keep the build short. The CUDA runtime is linked statically (nvcc's default);
# cuBLAS is dlopen'ed at run time (tests/gpu/cublas_gemm.h): TF_DCN_CUBLAS is pointed at the
# libcublas shipped in PyTorch's nvidia wheels unless already set.
set -euo pipefail

BUILD_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --build-only) BUILD_ONLY=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD_DIR="${TF_DCN_GPU_BUILD_DIR:-tests/gpu/build}"
ARCH="${TF_DCN_GPU_ARCH:-90}"
PYTHON="${PYTHON:-python3}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" ]]; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-13*/bin/nvcc; do
    if [[ -x "$candidate" ]]; then NVCC="$candidate"; break; fi
  done
fi
if [[ -z "$NVCC" ]]; then
  echo "run.sh: nvcc not found (put the CUDA 13 toolkit's bin/ on PATH or set NVCC)" >&2
  exit 1
fi

echo "== nvcc: $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*, V[0-9.]*' || true))"
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    2>/dev/null | head -n 1 || echo unknown)"
fi

# ---- build ---------------------------------------------------------------------------------
mkdir -p "$BUILD_DIR"
LIB="$BUILD_DIR/libtfdcn_gpu.so"
OBJ_DIR="$BUILD_DIR/obj"
mkdir -p "$OBJ_DIR"
FLAGS=(-std=c++17 -O3 -DNDEBUG -I. -Xcompiler -fPIC
       -gencode "arch=compute_${ARCH},code=sm_${ARCH}")
SOURCES=(tests/gpu/capi.cc cc/kernels/*.cu)
start=$(date +%s)
pids=()
objs=()
for src in "${SOURCES[@]}"; do
  obj="$OBJ_DIR/$(echo "$src" | tr '/' '_').o"
  objs+=("$obj")
  # capi.cc is compiled as CUDA (-x cu) so it sees the CUDA runtime headers like the .cu files.
  "$NVCC" "${FLAGS[@]}" -x cu -c "$src" -o "$obj" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [[ $status -ne 0 ]]; then
  echo "run.sh: compilation failed" >&2
  exit 1
fi
# -z defs: every symbol must resolve now (a missing launcher fails here, not at dlopen time).
"$NVCC" -shared -cudart static "${objs[@]}" -o "$LIB.tmp" -ldl \
  -Xlinker -z -Xlinker defs
mv -f "$LIB.tmp" "$LIB"
echo "== built $LIB for sm_${ARCH} in $(( $(date +%s) - start )) s (${#SOURCES[@]} sources)"

if [[ $BUILD_ONLY -eq 1 ]]; then
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
exec "$PYTHON" tests/gpu/check_gpu.py
