"""The GPU launchers' C API (capi.h) for ctypes: the entry points' signatures (SIGNATURES,
declare) and mirrors of the two dimension structs they take:
``tf_dcn::DeformConv2DDims`` (cc/kernels/deform_conv2d_geometry.h) and
``tf_dcn::DeformPSRoIPoolDims`` (cc/kernels/deform_psroi_pool_geometry.h).

Fields are set by name, so two sizes cannot be swapped silently; :func:`check_layout` compares
every field's offset and the struct sizes with what the compiled library reports
(``tfdcn_*_dims_field_offset``, ``tfdcn_*_dims_size``), so a field added to, removed from or
reordered in the C++ struct fails loudly instead of numerically. Used by the host-emulation
tests (tests/gpu_emulation.py) and by the GPU check (check_gpu.py); needs only ctypes.
"""

from __future__ import annotations

import ctypes

_I64 = ctypes.c_int64


class _Dims(ctypes.Structure):
    """Every field must be given, by name: a misspelt or forgotten size raises TypeError."""

    def __init__(self, **fields):
        names = [name for name, _ in self._fields_]
        unknown = sorted(set(fields) - set(names))
        missing = [name for name in names if name not in fields]
        if unknown or missing:
            raise TypeError(f"{type(self).__name__}: unknown fields {unknown}, missing {missing}")
        super().__init__(**fields)


class ConvDims(_Dims):
    """``tf_dcn::DeformConv2DDims``: every size of one deformable convolution (NHWC)."""

    _fields_ = [
        ("batch", _I64), ("in_h", _I64), ("in_w", _I64), ("in_c", _I64),
        ("out_h", _I64), ("out_w", _I64), ("out_c", _I64),
        ("kernel_h", _I64), ("kernel_w", _I64),
        ("stride_h", _I64), ("stride_w", _I64),
        ("dilation_h", _I64), ("dilation_w", _I64),
        ("pad_top", _I64), ("pad_left", _I64),
        ("groups", _I64), ("deformable_groups", _I64),
        ("use_mask", ctypes.c_bool), ("use_bias", ctypes.c_bool),
    ]


class PoolDims(_Dims):
    """``tf_dcn::DeformPSRoIPoolDims``: every size and scalar attribute of one pooling call.
    ``spatial_scale`` and ``trans_std`` are float32, like the op's attributes; ``num_classes`` is
    the number of offset classes (1 without offsets)."""

    _fields_ = [
        ("batch", _I64), ("height", _I64), ("width", _I64), ("channels", _I64),
        ("num_rois", _I64),
        ("output_dim", _I64), ("group_size", _I64), ("pooled_size", _I64), ("part_size", _I64),
        ("sample_per_part", _I64),
        ("num_classes", _I64),
        ("spatial_scale", ctypes.c_float), ("trans_std", ctypes.c_float),
        ("use_offsets", ctypes.c_bool),
    ]


_STRUCTS = {"conv": ConvDims, "pool": PoolDims}

_I, _P, _CONV, _POOL = ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ConvDims), ctypes.POINTER(
    PoolDims)
# Argument types of the launcher entry points (all return int). The int64_t* out-parameter of
# the *_workspace_bytes functions is a c_void_p: ctypes.byref(c_int64) and array pointers pass.
SIGNATURES = {
    # type, dims, deterministic, backward, bytes
    "tfdcn_conv_workspace_bytes": [_I, _CONV, _I, _I, _P],
    # type, dims, deterministic, stream, input, offsets, mask, kernel, bias, output, workspace,
    # bytes
    "tfdcn_conv_forward": [_I, _CONV, _I, _P] + [_P] * 7 + [_I64],
    # type, dims, deterministic, stream, input, offsets, mask, kernel, grad_output, grad_input,
    # grad_offsets, grad_mask, grad_kernel, grad_bias, workspace, bytes
    "tfdcn_conv_backward": [_I, _CONV, _I, _P] + [_P] * 11 + [_I64],
    # type, rois_double, dims, deterministic, backward, bytes
    "tfdcn_pool_workspace_bytes": [_I, _I, _POOL, _I, _I, _P],
    # type, rois_double, dims, deterministic, stream, features, rois, offsets, output, workspace,
    # bytes
    "tfdcn_pool_forward": [_I, _I, _POOL, _I, _P] + [_P] * 5 + [_I64],
    # ... stream, features, rois, offsets, grad_output, grad_features, grad_offsets, workspace,
    # bytes
    "tfdcn_pool_backward": [_I, _I, _POOL, _I, _P] + [_P] * 7 + [_I64],
    # rois_double, num_rois, batch, stream, rois, scratch, host_result
    "tfdcn_pool_check_batch_indices": [_I, _I64, _I64, _P, _P, _P, _P],
    "tfdcn_driver_status": [],
}


class RoiBatchCheck(ctypes.Structure):
    """``tf_dcn::RoiBatchCheck``: the first RoI with a bad batch index (R if none) and its value."""

    _fields_ = [("first_bad", ctypes.c_longlong), ("value", ctypes.c_double)]


def declare(lib: ctypes.CDLL) -> list[str]:
    """Sets the signatures of ``lib``'s entry points, checks the dims layout (check_layout) and
    returns the names of the entry points the library lacks."""
    lib.tfdcn_error_string.argtypes = [_I]
    lib.tfdcn_error_string.restype = ctypes.c_char_p
    lib.tfdcn_on_device.argtypes = []
    lib.tfdcn_on_device.restype = _I
    missing = []
    for name, argtypes in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.argtypes, fn.restype = argtypes, _I
    check_layout(lib)
    return missing


def check_layout(lib: ctypes.CDLL) -> None:
    """Raises AssertionError unless both mirrors match the library's structs field by field."""
    for prefix, struct in _STRUCTS.items():
        size_fn = getattr(lib, f"tfdcn_{prefix}_dims_size")
        size_fn.argtypes, size_fn.restype = [], _I64
        offset_fn = getattr(lib, f"tfdcn_{prefix}_dims_field_offset")
        offset_fn.argtypes, offset_fn.restype = [ctypes.c_char_p], _I64
        count_fn = getattr(lib, f"tfdcn_{prefix}_dims_field_count")
        count_fn.argtypes, count_fn.restype = [], _I64
        problems = []
        if ctypes.sizeof(struct) != size_fn():
            problems.append(f"size {ctypes.sizeof(struct)} != {size_fn()}")
        if len(struct._fields_) != count_fn():
            problems.append(f"{len(struct._fields_)} fields != {count_fn()}")
        for name, _ in struct._fields_:
            theirs = offset_fn(name.encode())
            ours = getattr(struct, name).offset
            if theirs != ours:
                problems.append(f"{name} at {ours}, library has {theirs}")
        assert not problems, f"{struct.__name__} does not mirror the C++ struct: {problems}"
