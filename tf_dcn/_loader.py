"""Loads tf-dcn's op library once per process.

The package ships a CPU op library (``_tf_dcn_ops.so``) and, when built with clang-19 and CUDA
12.5, a CUDA one (``_tf_dcn_ops_cuda.so``, which runs on TensorFlow's own CUDA 12 runtime). Exactly
one of them may be loaded in a process: both register the same ops. The CUDA library is chosen
only when it exists, TensorFlow is a CUDA build and the driver supports CUDA 12.0 or newer (r525
and up, what TensorFlow 2.21 itself needs). ``TF_DCN_OPS=cpu`` or ``TF_DCN_OPS=cuda`` forces the
choice; with a forced CUDA library on a too-old driver the GPU ops raise
``FailedPreconditionError`` naming the requirement.
"""

from __future__ import annotations

import ctypes
import os
import threading
from types import ModuleType

import tensorflow as tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CPU_LIBRARY = os.path.join(_PACKAGE_DIR, "_tf_dcn_ops.so")
CUDA_LIBRARY = os.path.join(_PACKAGE_DIR, "_tf_dcn_ops_cuda.so")
_MIN_CUDA_DRIVER = 12000  # cuDriverGetVersion() of a CUDA 12.0 driver (r525); gpu_runtime.h

_lock = threading.Lock()
_module: ModuleType | None = None
_loaded_path: str | None = None


def _cuda_driver_version() -> int:
    """CUDA driver version (e.g. 13000), or 0 without a usable driver. Needs no cuInit."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return 0
    return version.value


def choose_library() -> str:
    """Path of the op library this process should load (see the module docstring)."""
    forced = os.environ.get("TF_DCN_OPS", "").strip().lower()
    if forced not in ("", "cpu", "cuda"):
        raise ValueError(f"TF_DCN_OPS must be 'cpu' or 'cuda', got {forced!r}")
    if forced == "cpu":
        return CPU_LIBRARY
    if forced == "cuda":
        if not os.path.exists(CUDA_LIBRARY):
            raise FileNotFoundError(
                f"TF_DCN_OPS=cuda but {CUDA_LIBRARY} was not built (run `make gpu`)"
            )
        return CUDA_LIBRARY
    if (
        os.path.exists(CUDA_LIBRARY)
        and tf.test.is_built_with_cuda()
        and _cuda_driver_version() >= _MIN_CUDA_DRIVER
    ):
        return CUDA_LIBRARY
    return CPU_LIBRARY


@tf.autograph.experimental.do_not_convert
def load_ops() -> ModuleType:
    """Loads the op library (idempotent) and returns TensorFlow's generated op module.

    Call it before ``tf.saved_model.load`` of a model that contains tf-dcn ops, in serving code
    that never imports the layers: it registers the ``TfDcn>`` ops with TensorFlow.

    Raises:
        FileNotFoundError: the library was not built (run ``make build``).
        tf.errors.NotFoundError: the library does not match this TensorFlow (rebuild it).
    """
    global _module, _loaded_path
    with _lock:
        if _module is None:
            path = choose_library()
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"tf-dcn op library {path} is missing: run `make build` in the repository "
                    "or install the tf-dcn wheel"
                )
            try:
                _module = tf.load_op_library(path)
            except tf.errors.NotFoundError as err:
                raise tf.errors.NotFoundError(
                    None,
                    None,
                    f"could not load {path} into TensorFlow {tf.__version__}: {err.message}. "
                    "The library was built for another TensorFlow; rebuild it with `make build`.",
                ) from err
            _loaded_path = path
        return _module


def load_at_import() -> None:
    """Called by ``import tf_dcn``: loads the chosen library now, so the CPU/CUDA choice is made
    once, at import time. A missing or mismatched library is not an import error (the portable
    composite path needs none); the first op call raises it instead. A bad ``TF_DCN_OPS`` is."""
    try:
        load_ops()  # a bad TF_DCN_OPS raises ValueError here
    except (FileNotFoundError, tf.errors.NotFoundError):
        pass


def loaded_library() -> str | None:
    """Path of the loaded op library, or None when none could be loaded."""
    return _loaded_path
