"""The CUDA op library (tf_dcn/_tf_dcn_ops_cuda.so) and the choice between the two libraries.

CI compiles the CUDA library with clang-19 and the CUDA 12.5 pip wheels
(``TF_DCN_REQUIRE_CUDA_BUILD=1`` in .ci/run makes its absence a failure) but has no GPU. These
tests read the built file: it carries no CUDA runtime of its own (the runtime functions are hidden
forwarders to TensorFlow's, see cc/kernels/gpu/cuda_runtime_forward.cc), its cubins and PTX were
made by CUDA 12 (ELF ABI of CUDA 12, PTX ISA 8.5 at most), it depends only on TensorFlow's framework library and the C/C++ runtimes, it
loads in both ``tensorflow-cpu==2.21.0`` (the venv) and ``tensorflow==2.21.0`` (the GPU build,
unpacked by ``make tensorflow-gpu-site`` with its ``nvidia-cuda-runtime-cu12``), registers every op for both CPU and GPU, and computes the
CPU kernels exactly like the CPU library when forced with ``TF_DCN_OPS=cuda``. The GPU kernels
themselves are checked by the host emulation (test_gpu_emulation_*.py) and, on a GPU machine, by
tests/gpu/run.sh.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.fresh_process import gpu_tensorflow_site, run_python
from tf_dcn import _loader

REPO = Path(__file__).resolve().parent.parent
CUDA_LIBRARY = Path(_loader.CUDA_LIBRARY)
OPS = ["TfDcn>DeformableConv2D", "TfDcn>DeformableConv2DGrad", "TfDcn>DeformablePSRoIPool",
       "TfDcn>DeformablePSRoIPoolGrad"]

_spec = importlib.util.spec_from_file_location("fatbinary", REPO / "tools" / "fatbinary.py")
fatbinary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fatbinary)

CUDA_ARCHS = {75, 80, 86, 89, 90}  # the Makefile's CUDA_ARCHS; PTX for the last one only
CUDA12_PTX_ISA = (8, 5)  # the PTX ISA version of CUDA 12.5

_required = os.environ.get("TF_DCN_REQUIRE_CUDA_BUILD") == "1"
needs_cuda_library = pytest.mark.skipif(
    not CUDA_LIBRARY.exists() and not _required and shutil.which("clang-19") is None,
    reason="no clang-19 on this machine, so no CUDA library was built",
)


def _run_python(code: str, cwd: Path = REPO, **env: str) -> str:
    """Last line printed by `code` in a fresh interpreter (with `env` overrides)."""
    return run_python(code, cwd, env=env, timeout=300).stdout.strip().splitlines()[-1]


@needs_cuda_library
def test_cuda_library_was_built():
    assert CUDA_LIBRARY.exists(), \
        "clang-19 is available but `make build` did not build the CUDA library"


@needs_cuda_library
def test_cuda_library_depends_only_on_tensorflow_and_the_c_runtimes():
    out = subprocess.run(["readelf", "-d", str(CUDA_LIBRARY)], capture_output=True, text=True,
                         check=True).stdout
    needed = sorted(line.split("[")[1].rstrip("]") for line in out.splitlines()
                    if "(NEEDED)" in line)
    allowed = {"libtensorflow_framework.so.2", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1",
               "libc.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "ld-linux-x86-64.so.2"}
    assert set(needed) <= allowed, needed
    # The runtime forwarders are hidden: no cuda* symbol is exported to clash with TensorFlow's,
    # and none is left undefined (which would bind to whatever runtime the process has).
    symbols = subprocess.run(["nm", "-D", str(CUDA_LIBRARY)], capture_output=True, text=True,
                             check=True).stdout
    names = [line.split()[-1] for line in symbols.splitlines() if line.strip()]
    assert not [s for s in names if s.lstrip("_").startswith("cuda")], names


def _symbols(path: Path) -> list[tuple[str, str]]:
    """(type letter, name) of every symbol in the full symbol table of `path`."""
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return [(line.split()[-2], line.split()[-1]) for line in out.splitlines()
            if len(line.split()) >= 2]


def _forwarded_functions() -> set[str]:
    """The CUDA runtime functions the library defines itself (cuda_runtime_forward.cc)."""
    api = re.compile(r"^(__)?cuda[A-Z]\w*$")  # cudaLaunchKernel, __cudaRegisterFunction, ...
    return {name for kind, name in _symbols(CUDA_LIBRARY) if kind in "tT" and api.match(name)}


@needs_cuda_library
def test_cuda_library_carries_no_cuda_runtime_of_its_own():
    data = CUDA_LIBRARY.read_bytes()
    # A CUDA runtime (static libcudart) opens the driver itself, and has its internals in the
    # symbol table (cudart::..., __cudart...); the library has neither.
    assert b"libcuda.so" not in data
    internals = [name for _, name in _symbols(CUDA_LIBRARY)
                 if "cudart" in name and name != "libcudart"]
    assert not internals, internals[:10]
    # Every runtime function it uses is one of the hidden forwarders, which look up the real
    # function in TensorFlow's runtime (or a libcudart.so.12) at run time.
    forwarded = _forwarded_functions()
    assert {"cudaLaunchKernel", "__cudaRegisterFatBinary", "__cudaRegisterFunction",
            "__cudaPushCallConfiguration", "cudaMemcpyAsync"} <= forwarded, forwarded
    assert b"libtensorflow_framework.so.2" in data and b"libcudart.so.12" in data
    # No stream synchronisation anywhere (the pooling ops check rois asynchronously).
    assert not {"cudaStreamSynchronize", "cudaDeviceSynchronize"} & forwarded


def _fat_binary_images() -> list[fatbinary.Image]:
    """Every image of the library's .nv_fatbin section."""
    section = subprocess.run(["readelf", "-SW", str(CUDA_LIBRARY)], capture_output=True, text=True,
                             check=True).stdout
    match = re.search(r"\.nv_fatbin\s+PROGBITS\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)",
                      section)
    assert match, "no .nv_fatbin section"
    offset, size = int(match.group(1), 16), int(match.group(2), 16)
    with open(CUDA_LIBRARY, "rb") as f:
        f.seek(offset)
        return fatbinary.decode(f.read(size))


@needs_cuda_library
def test_cuda_library_images_were_made_for_the_cuda_12_abi():
    images = _fat_binary_images()
    cubins = [image for image in images if image.kind == "elf"]
    ptx = [image for image in images if image.kind == "ptx"]
    # Two .cu files have kernels; each has SASS for every architecture and PTX for the newest.
    assert len(cubins) == 2 * len(CUDA_ARCHS) and len(ptx) == 2, [(i.kind, i.arch) for i in images]
    assert {image.arch for image in cubins} == CUDA_ARCHS
    assert {image.arch for image in ptx} == {max(CUDA_ARCHS)}
    for image in cubins:
        # ELF header: OS/ABI 0x33 (CUDA) and ABI version 7 are CUDA 12's ptxas; CUDA 13 writes
        # 0x41 and 8, which drivers before r580 cannot load.
        ident = image.payload[:16]
        assert ident[:4] == b"\x7fELF" and ident[4] == 2, ident
        assert (ident[7], ident[8]) == (0x33, 7), f"sm_{image.arch}: OS/ABI {ident[7]:#x}, " \
                                                 f"ABI version {ident[8]}"
        e_machine = struct.unpack_from("<H", image.payload, 18)[0]
        assert e_machine == 190  # EM_CUDA
    for image in ptx:
        version = fatbinary.ptx_version(image.payload)
        assert image.version == version and version <= CUDA12_PTX_ISA, version
        assert f".target sm_{image.arch}".encode() in image.payload


@needs_cuda_library
def test_gpu_tensorflow_exports_every_runtime_function_the_library_forwards():
    """In the GPU build of TensorFlow the forwarders resolve to libtensorflow_framework's own
    CUDA 12 runtime entry points (its cudart stubs): every one of them must be there."""
    framework = gpu_tensorflow_site() / "tensorflow" / "libtensorflow_framework.so.2"
    out = subprocess.run(["nm", "-D", "--defined-only", str(framework)], capture_output=True,
                         text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    missing = sorted(_forwarded_functions() - exported)
    assert not missing, missing


@needs_cuda_library
def test_cuda_library_registers_cpu_and_gpu_kernels():
    code = (
        "import json, tensorflow as tf\n"
        "from tensorflow.python.framework import kernels\n"
        f"tf.load_op_library({str(CUDA_LIBRARY)!r})\n"
        f"ops = {OPS!r}\n"
        "print(json.dumps({op: sorted({(k.device_type, str(k.constraint[0].allowed_values.list.type))"
        " for k in kernels.get_registered_kernels_for_op(op).kernel}) for op in ops}))\n"
    )
    registered = json.loads(_run_python(code))
    for op, entries in registered.items():
        devices = {device for device, _ in entries}
        assert devices == {"CPU", "GPU"}, (op, entries)
        gpu_types = [types for device, types in entries if device == "GPU"]
        cpu_types = [types for device, types in entries if device == "CPU"]
        assert sorted(gpu_types) == sorted(cpu_types), op  # same type combinations


def test_cpu_library_registers_cpu_kernels_only():
    code = (
        "import json, tensorflow as tf\n"
        "from tensorflow.python.framework import kernels\n"
        f"tf.load_op_library({_loader.CPU_LIBRARY!r})\n"
        f"ops = {OPS!r}\n"
        "print(json.dumps({op: sorted({k.device_type for k in "
        "kernels.get_registered_kernels_for_op(op).kernel}) for op in ops}))\n"
    )
    assert all(devices == ["CPU"] for devices in json.loads(_run_python(code)).values())


@needs_cuda_library
def test_forced_cuda_library_computes_like_the_cpu_library_in_both_tensorflow_wheels():
    """The CUDA library, forced with TF_DCN_OPS=cuda, loads into tensorflow-cpu and into the GPU
    build of TensorFlow (no GPU or driver here), registers CPU and GPU kernels in both, and its CPU
    kernels compute bitwise what the CPU library computes. Unforced, the GPU build without a driver
    gets the CPU library."""
    code = (
        "import json, numpy as np, tensorflow as tf, tf_dcn\n"
        "from tensorflow.python.framework import kernels\n"
        "from tf_dcn import _loader\n"
        "rng = np.random.default_rng(3)\n"
        "x = rng.normal(size=(2, 7, 6, 4)); k = rng.normal(size=(3, 3, 2, 6))\n"
        "off = rng.uniform(-2, 2, size=(2, 7, 6, 36)); m = rng.uniform(size=(2, 7, 6, 18))\n"
        "xs = tf.constant(x)\n"
        "with tf.GradientTape() as tape:\n"
        "    tape.watch(xs)\n"
        "    y = tf_dcn.deform_conv2d(xs, off, k, mask=m, padding='same', groups=2,"
        " deformable_groups=2)\n"
        "    loss = tf.reduce_sum(y * y)\n"
        "g = tape.gradient(loss, xs)\n"
        "feat = rng.normal(size=(1, 9, 9, 18)); rois = np.array([[0, 1, 1, 6, 7]], np.float32)\n"
        "p = tf_dcn.deform_psroi_pool(feat, rois, output_dim=2, group_size=3, pooled_size=3)\n"
        f"devices = sorted({{k.device_type for op in {OPS!r}"
        " for k in kernels.get_registered_kernels_for_op(op).kernel})\n"
        "print(json.dumps({'library': _loader.loaded_library(), 'tensorflow': tf.__file__,"
        " 'with_cuda': tf.test.is_built_with_cuda(), 'version': tf.__version__,"
        " 'devices': devices, 'sums': [repr(float(np.sum(v))) for v in (y, g, p)]}))\n"
    )
    runs = {"cpu-wheel forced": _run_python(code, TF_DCN_OPS="cuda"),
            "cpu-wheel cpu": _run_python(code, TF_DCN_OPS="cpu")}
    gpu_tf = str(gpu_tensorflow_site())
    runs["gpu-wheel forced"] = _run_python(code, PYTHONPATH=gpu_tf, TF_DCN_OPS="cuda")
    runs["gpu-wheel default"] = _run_python(code, PYTHONPATH=gpu_tf, TF_DCN_OPS="")
    runs = {name: json.loads(out) for name, out in runs.items()}
    for name, run in runs.items():
        gpu_wheel = name.startswith("gpu-wheel")
        assert run["version"] == _loader.tf.__version__, name
        assert run["with_cuda"] == gpu_wheel and run["tensorflow"].startswith(gpu_tf) == gpu_wheel
        forced = name.endswith("forced")
        assert run["library"] == (str(CUDA_LIBRARY) if forced else _loader.CPU_LIBRARY), name
        assert run["devices"] == (["CPU", "GPU"] if forced else ["CPU"]), name
        assert run["sums"] == runs["cpu-wheel cpu"]["sums"], name  # bitwise equal sums


def test_library_choice(monkeypatch, tmp_path):
    cuda = tmp_path / "_tf_dcn_ops_cuda.so"
    monkeypatch.setattr(_loader, "CUDA_LIBRARY", str(cuda))
    monkeypatch.setattr(_loader.tf.test, "is_built_with_cuda", lambda: True)
    monkeypatch.setattr(_loader, "_cuda_driver_version", lambda: 13000)
    monkeypatch.delenv("TF_DCN_OPS", raising=False)
    assert _loader.choose_library() == _loader.CPU_LIBRARY  # not built
    with pytest.raises(FileNotFoundError, match="make gpu"):
        monkeypatch.setenv("TF_DCN_OPS", "cuda")
        _loader.choose_library()
    cuda.write_bytes(b"")
    assert _loader.choose_library() == str(cuda)
    monkeypatch.setenv("TF_DCN_OPS", "cpu")
    assert _loader.choose_library() == _loader.CPU_LIBRARY
    monkeypatch.delenv("TF_DCN_OPS")
    assert _loader.choose_library() == str(cuda)
    monkeypatch.setattr(_loader, "_cuda_driver_version", lambda: 12000)  # r525, CUDA 12.0
    assert _loader.choose_library() == str(cuda)
    monkeypatch.setattr(_loader, "_cuda_driver_version", lambda: 11080)  # a CUDA 11.8 driver
    assert _loader.choose_library() == _loader.CPU_LIBRARY
    monkeypatch.setattr(_loader, "_cuda_driver_version", lambda: 0)  # no driver
    assert _loader.choose_library() == _loader.CPU_LIBRARY
    monkeypatch.setattr(_loader, "_cuda_driver_version", lambda: 13000)
    monkeypatch.setattr(_loader.tf.test, "is_built_with_cuda", lambda: False)  # tensorflow-cpu
    assert _loader.choose_library() == _loader.CPU_LIBRARY
    monkeypatch.setenv("TF_DCN_OPS", "gpu")
    with pytest.raises(ValueError, match="TF_DCN_OPS"):
        _loader.choose_library()


def test_import_chooses_and_loads_one_library():
    code = "import tf_dcn; print(tf_dcn.loaded_library())"
    assert _run_python(code, TF_DCN_OPS="cpu") == _loader.CPU_LIBRARY
    if CUDA_LIBRARY.exists():
        assert _run_python(code, TF_DCN_OPS="cuda") == str(CUDA_LIBRARY)
    # tensorflow-cpu (this venv): never the CUDA library unless forced.
    assert _run_python(code, TF_DCN_OPS="") == _loader.CPU_LIBRARY
    result = run_python(code, REPO, env={"TF_DCN_OPS": "gpu"}, check=False, timeout=300)
    assert result.returncode != 0 and "TF_DCN_OPS must be 'cpu' or 'cuda'" in result.stderr


def test_import_without_a_built_library_defers_the_error(tmp_path):
    shutil.copytree(REPO / "tf_dcn", tmp_path / "tf_dcn",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = (
        "import numpy as np, tf_dcn\n"
        "assert tf_dcn.loaded_library() is None\n"
        "x = np.ones((1, 4, 4, 2)); off = np.zeros((1, 2, 2, 18)); k = np.ones((3, 3, 2, 1))\n"
        "y = tf_dcn.composite.deform_conv2d(x, off, k)\n"
        "try:\n"
        "    tf_dcn.deform_conv2d(x, off, k)\n"
        "except FileNotFoundError as err:\n"
        "    print('deferred:', 'make build' in str(err), float(np.sum(y)))\n"
    )
    out = _run_python(code, cwd=tmp_path, PYTHONPATH=str(tmp_path), TF_DCN_OPS="")
    assert out == "deferred: True 72.0"  # 2x2 outputs of 3*3*2 ones


def _includes(path: Path) -> list[str]:
    return [line.split('"')[1] for line in path.read_text().splitlines()
            if line.startswith("#include \"")]


def test_cuda_sources_include_no_tensorflow_headers():
    """The .cu files, and every header of ours they pull in, stay free of TensorFlow, XLA and
    Eigen (nvcc 13 and TF's headers do not mix: docs/gpu-build.md)."""
    sources = sorted((REPO / "cc" / "kernels").glob("*.cu"))
    assert sources
    seen, pending = set(), list(sources)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _includes(path):
            assert not name.startswith(("tensorflow/", "xla/", "Eigen", "unsupported/", "absl/")), \
                f"{path.relative_to(REPO)} includes {name}"
            if name.startswith("cc/"):
                pending.append(REPO / name)
    assert {p.name for p in seen} >= {"gpu_launch.h", "dcn_common.h", "cuda_exec.cuh"}
