"""The GPU test harness (tests/gpu/) on a machine without a GPU.

tests/gpu/check_gpu.py needs PyTorch and a GPU, so here it is only byte-compiled. Where clang-19
is installed, `bash tests/gpu/run.sh --build-only` must build the harness library (tests/gpu/capi.cc
+ cc/kernels/*.cu + the runtime forwarders, one architecture, exactly like the op library) and the
library must export the whole C API of capi.h, load without a GPU or a CUDA runtime, and report
the missing runtime or driver as an error code, not a crash. Without clang-19 that part is skipped,
unless TF_DCN_REQUIRE_CUDA_TOOLS=1 makes it a failure.
"""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
C_API = [
    "tfdcn_error_string",
    "tfdcn_on_device",
    "tfdcn_conv_workspace_bytes",
    "tfdcn_conv_forward",
    "tfdcn_conv_backward",
    "tfdcn_pool_workspace_bytes",
    "tfdcn_pool_forward",
    "tfdcn_pool_backward",
    "tfdcn_pool_check_batch_indices",
    "tfdcn_driver_status",
]
NO_CUDA_RUNTIME = -4  # tf_dcn::kGpuNoCudaRuntime
NO_DEVICE, INSUFFICIENT_DRIVER = 100, 35  # cudaErrorNoDevice, cudaErrorInsufficientDriver


def test_check_gpu_script_compiles(tmp_path):
    py_compile.compile(str(REPO / "tests" / "gpu" / "check_gpu.py"),
                       cfile=str(tmp_path / "check_gpu.pyc"), doraise=True)


def _clang_or_skip() -> None:
    if shutil.which("clang-19"):
        return
    if os.environ.get("TF_DCN_REQUIRE_CUDA_TOOLS") == "1":
        pytest.fail("TF_DCN_REQUIRE_CUDA_TOOLS=1 but clang-19 is not on PATH")
    pytest.skip("clang-19 not on PATH (set TF_DCN_REQUIRE_CUDA_TOOLS=1 to require it)")


@pytest.fixture(scope="module")
def harness_library(tmp_path_factory) -> Path:
    _clang_or_skip()
    build_dir = tmp_path_factory.mktemp("gpu_harness")
    env = dict(os.environ, TF_DCN_GPU_BUILD_DIR=str(build_dir))
    result = subprocess.run(["bash", "tests/gpu/run.sh", "--build-only"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== compiler:" in result.stdout and "clang version 19" in result.stdout
    library = build_dir / "libtfdcn_gpu.so"
    assert library.is_file(), result.stdout
    return library


def test_library_exports_the_c_api(harness_library):
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not installed")
    listing = subprocess.run(["nm", "-D", "--defined-only", str(harness_library)],
                             capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in listing.splitlines() if " T " in line}
    missing = [name for name in C_API if name not in exported]
    assert not missing, f"not exported: {missing}"


def test_library_loads_without_a_gpu(harness_library):
    # In a fresh interpreter: the CUDA runtime and cuBLAS are looked up only when first needed,
    # so loading needs neither a GPU, nor a CUDA runtime, nor cuBLAS.
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.tfdcn_error_string.restype = ctypes.c_char_p; "
            "print(lib.tfdcn_on_device(), lib.tfdcn_error_string(-2).decode())")
    result = subprocess.run([sys.executable, "-c", code, str(harness_library)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    on_device, _, message = result.stdout.strip().partition(" ")
    assert on_device == "1"
    assert "workspace" in message


_STATUS_PROBE = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[2])
from tests.gpu import capi_ctypes
lib = ctypes.CDLL(sys.argv[1])
assert not capi_ctypes.declare(lib)
status = lib.tfdcn_driver_status()
result = capi_ctypes.RoiBatchCheck(-7, -7.0)
check = lib.tfdcn_pool_check_batch_indices(0, 3, 1, None, None, None, ctypes.byref(result))
runtimes = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libcudart" in line})
print(json.dumps([status, lib.tfdcn_error_string(status).decode(), check, runtimes]))
"""


def _probe(library: Path, **env: str) -> list:
    result = subprocess.run([sys.executable, "-c", _STATUS_PROBE, str(library), str(REPO)],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, **env))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_a_cuda_runtime_every_call_reports_it(harness_library):
    """No libcudart.so.12 anywhere the forwarders look: an error code and a message saying what
    is missing, from the status query and from a launcher alike."""
    env = {"TF_DCN_CUDART": "/nonexistent/libcudart.so.12"}
    status, message, check, runtimes = _probe(harness_library, **env)
    assert status == NO_CUDA_RUNTIME and check == NO_CUDA_RUNTIME, (status, check)
    assert "no CUDA 12 runtime in this process" in message and "TF_DCN_OPS=cpu" in message
    assert runtimes == []


def test_with_tensorflows_cuda_runtime_and_no_driver_calls_fail_cleanly(harness_library):
    """The forwarders load TensorFlow's libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel, copied
    next to the library by run.sh), register the kernels with it, and on this machine without an
    NVIDIA driver report that instead of crashing."""
    cudart = harness_library.parent / "libcudart.so.12"
    assert cudart.is_file()
    status, message, check, runtimes = _probe(harness_library, TF_DCN_CUDART=str(cudart))
    assert runtimes == [str(cudart)]
    assert status in (NO_DEVICE, INSUFFICIENT_DRIVER), (status, message)
    assert check != 0


def test_a_too_old_driver_is_explained(harness_library):
    """The text the ops put into their FailedPreconditionError for cudaErrorInsufficientDriver
    names the real requirement (TensorFlow's CUDA 12 runtime: a CUDA 12.0 driver, r525)."""
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.tfdcn_error_string.restype = ctypes.c_char_p; "
            f"print(lib.tfdcn_error_string({INSUFFICIENT_DRIVER}).decode())")
    result = subprocess.run([sys.executable, "-c", code, str(harness_library)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "CUDA 12.0 or newer" in message and "r525" in message, message
    assert "TF_DCN_OPS=cpu" in message and "CUDA 13" not in message


def test_in_gpu_tensorflow_the_forwarders_use_tensorflows_own_runtime(harness_library):
    """In a process running the GPU build of TensorFlow, the forwarders resolve through
    libtensorflow_framework.so.2's cudart stubs: it is TensorFlow's library loader that opens
    its libcudart.so.12 (from the nvidia-cuda-runtime-cu12 package beside it, which the dynamic
    loader alone would not find), and without a driver the calls fail cleanly."""
    from tests.fresh_process import gpu_tensorflow_site

    site = gpu_tensorflow_site()
    probe = "import tensorflow\n" + _STATUS_PROBE
    result = subprocess.run([sys.executable, "-c", probe, str(harness_library), str(REPO)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2",
                                     TF_DCN_CUDART="/nonexistent/libcudart.so.12"))
    assert result.returncode == 0, result.stderr[-3000:]
    status, message, check, runtimes = json.loads(result.stdout.strip().splitlines()[-1])
    assert runtimes == [str(site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")], runtimes
    assert status in (NO_DEVICE, INSUFFICIENT_DRIVER), (status, message)
    assert check != 0
