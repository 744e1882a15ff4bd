"""The GPU test harness (tests/gpu/) on a machine without a GPU.

tests/gpu/check_gpu.py needs PyTorch and a GPU, so here it is only byte-compiled. Where nvcc is
installed, `bash tests/gpu/run.sh --build-only` must build the harness library (tests/gpu/capi.cc +
cc/kernels/*.cu, one architecture) and the library must export the whole C API of capi.h and
load without a GPU. Without nvcc that part is skipped, unless TF_DCN_REQUIRE_NVCC=1 makes a
missing nvcc a failure.
"""

from __future__ import annotations

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
]


def test_check_gpu_script_compiles(tmp_path):
    py_compile.compile(str(REPO / "tests" / "gpu" / "check_gpu.py"),
                       cfile=str(tmp_path / "check_gpu.pyc"), doraise=True)


def _nvcc_or_skip() -> None:
    if shutil.which("nvcc"):
        return
    if os.environ.get("TF_DCN_REQUIRE_NVCC") == "1":
        pytest.fail("TF_DCN_REQUIRE_NVCC=1 but nvcc is not on PATH")
    pytest.skip("nvcc not on PATH (set TF_DCN_REQUIRE_NVCC=1 to require it)")


@pytest.fixture(scope="module")
def harness_library(tmp_path_factory) -> Path:
    _nvcc_or_skip()
    build_dir = tmp_path_factory.mktemp("gpu_harness")
    env = dict(os.environ, TF_DCN_GPU_BUILD_DIR=str(build_dir))
    result = subprocess.run(["bash", "tests/gpu/run.sh", "--build-only"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== nvcc:" in result.stdout
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
    # In a fresh interpreter: the CUDA runtime is linked statically and cuBLAS is dlopen'ed only
    # at the first matrix product, so loading needs neither a GPU nor cuBLAS.
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.tfdcn_error_string.restype = ctypes.c_char_p; "
            "print(lib.tfdcn_on_device(), lib.tfdcn_error_string(-2).decode())")
    result = subprocess.run([sys.executable, "-c", code, str(harness_library)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    on_device, _, message = result.stdout.strip().partition(" ")
    assert on_device == "1"
    assert "workspace" in message
