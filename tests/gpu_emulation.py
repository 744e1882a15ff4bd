"""ctypes access to the host emulation of the GPU launchers (tests/gpu/capi.cc built with
TF_DCN_CAPI_EMULATION by ``make build`` into build/emulation/libtfdcn_emulation.so).

The emulation runs the CUDA launchers' own code (cc/kernels/*_launch.h) with the host executor, so
these tests check the GPU kernels' indexing, chunking, GEMM conventions and deterministic path on
machines without a GPU. ``TF_DCN_EMULATION_LIB`` overrides the library path.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

# ConvDims and PoolDims (the C API's dims structs) are re-exported for the tests.
from tests.gpu.capi_ctypes import ConvDims, PoolDims, declare  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
LIBRARY = Path(os.environ.get("TF_DCN_EMULATION_LIB",
                              REPO / "build" / "emulation" / "libtfdcn_emulation.so"))

# tf_dcn::ElementType
TYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}

_lib = None



def library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        if not LIBRARY.exists():
            raise FileNotFoundError(f"{LIBRARY} is missing: run `make build`")
        lib = ctypes.CDLL(str(LIBRARY))
        missing = declare(lib)
        assert not missing, f"{LIBRARY} lacks {missing}"
        _lib = lib
    return _lib


def ptr(array: np.ndarray | None) -> ctypes.c_void_p:
    """Address of a C-contiguous array's data (None -> NULL)."""
    if array is None:
        return ctypes.c_void_p(0)
    assert array.flags["C_CONTIGUOUS"]
    return ctypes.c_void_p(array.ctypes.data)


def check(code: int) -> None:
    if code != 0:
        raise RuntimeError(f"launcher error {code}: {library().tfdcn_error_string(code).decode()}")


def storage_dtype(dtype: str) -> np.dtype:
    """NumPy dtype holding the bits of `dtype` (bfloat16 as uint16)."""
    return {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32,
            "float64": np.float64}[dtype]


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float array -> contiguous storage of `dtype` (bfloat16: round to nearest even)."""
    x = np.ascontiguousarray(x)
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        return np.ascontiguousarray((rounded >> 16).astype(np.uint16))
    return np.ascontiguousarray(x.astype(storage_dtype(dtype)))


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """storage of `dtype` -> float64 values."""
    if dtype == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return x.astype(np.float64)


def workspace(nbytes: int) -> np.ndarray:
    return np.zeros(max(int(nbytes), 1), dtype=np.uint8)
