"""The deformable convolution's GPU launcher, run on the CPU by the host emulation.

tests/gpu/capi.cc built with TF_DCN_CAPI_EMULATION runs cc/kernels/deform_conv2d_launch.h (the
code the CUDA library runs, functor by functor, with a plain-loop GEMM in BLAS's column-major
convention) one index at a time. Forward results are compared with the NumPy reference; gradients
with the CPU op (itself checked against numerical gradients in test_deform_conv2d.py) and, for a
small case, with central differences of the emulated forward pass. Both backward paths (atomic
scatter and the deterministic sort + gather) and the multi-chunk loop are exercised.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tests import conv_reference
from tests.gpu_emulation import (TYPE_CODES, ConvDims, check, from_storage, library, ptr,
                                 to_storage, workspace)

RNG = np.random.default_rng(7)


def _dims(x_shape, kernel_shape, offsets_shape, strides, dilation, pads, groups, dg, mask,
          bias) -> ConvDims:
    n, h, w, c = x_shape
    kh, kw, _, cout = kernel_shape
    _, ho, wo, _ = offsets_shape
    return ConvDims(batch=n, in_h=h, in_w=w, in_c=c, out_h=ho, out_w=wo, out_c=cout,
                    kernel_h=kh, kernel_w=kw, stride_h=strides[0], stride_w=strides[1],
                    dilation_h=dilation[0], dilation_w=dilation[1], pad_top=pads[0][0],
                    pad_left=pads[1][0], groups=groups, deformable_groups=dg, use_mask=mask,
                    use_bias=bias)


class Case:
    """A random deformable convolution and its NHWC tensors (float64)."""

    def __init__(self, n=2, h=6, w=7, c=4, cout=6, k=(3, 3), strides=(1, 1), dilation=(1, 1),
                 pads=((1, 1), (1, 1)), groups=1, dg=1, use_mask=True, use_bias=True, rng=RNG):
        kh, kw = k
        ho = (h + pads[0][0] + pads[0][1] - (dilation[0] * (kh - 1) + 1)) // strides[0] + 1
        wo = (w + pads[1][0] + pads[1][1] - (dilation[1] * (kw - 1) + 1)) // strides[1] + 1
        self.x = rng.uniform(-1, 1, (n, h, w, c))
        # integer + U(0.15, 0.85): away from the floor() kinks, several pixels reach outside.
        base = rng.integers(-3, 3, (n, ho, wo, 2 * dg * kh * kw))
        self.offsets = base + rng.uniform(0.15, 0.85, base.shape)
        self.mask = rng.uniform(0, 1, (n, ho, wo, dg * kh * kw)) if use_mask else None
        self.kernel = rng.uniform(-1, 1, (kh, kw, c // groups, cout))
        self.bias = rng.uniform(-1, 1, (cout,)) if use_bias else None
        self.upstream = rng.uniform(-1, 1, (n, ho, wo, cout))
        self.strides, self.dilation, self.pads, self.groups, self.dg = (strides, dilation, pads,
                                                                       groups, dg)
        self.dims = _dims(self.x.shape, self.kernel.shape, self.offsets.shape, strides, dilation,
                          pads, groups, dg, use_mask, use_bias)

    def reference(self):
        return conv_reference.deform_conv2d(
            self.x, self.offsets, self.kernel, mask=self.mask, bias=self.bias,
            strides=self.strides, padding=self.pads, dilation=self.dilation, groups=self.groups,
            deformable_groups=self.dg)

    def op_gradients(self):
        """The CPU op's five gradients of sum(out * upstream), float64."""
        tensors = [tf.constant(self.x), tf.constant(self.offsets), tf.constant(self.kernel)]
        tensors.append(tf.constant(self.mask) if self.mask is not None else None)
        tensors.append(tf.constant(self.bias) if self.bias is not None else None)
        watched = [t for t in tensors if t is not None]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            out = tf_dcn.deform_conv2d(
                tensors[0], tensors[1], tensors[2], mask=tensors[3], bias=tensors[4],
                strides=self.strides, padding=self.pads, dilation_rate=self.dilation,
                groups=self.groups, deformable_groups=self.dg)
            loss = tf.reduce_sum(out * self.upstream)
        grads = dict(zip(["x", "offsets", "kernel", "mask", "bias"],
                         [None if t is None else g.numpy()
                          for t, g in zip(tensors, _gradients(tape, loss, tensors))]))
        return grads


def _gradients(tape, loss, tensors):
    present = [t for t in tensors if t is not None]
    grads = iter(tape.gradient(loss, present))
    return [next(grads) if t is not None else None for t in tensors]


def emulated_forward(case: Case, dtype="float64", deterministic=False):
    lib = library()
    code = TYPE_CODES[dtype]
    dims = ctypes.byref(case.dims)
    st = {name: None if value is None else to_storage(value, dtype)
          for name, value in [("x", case.x), ("offsets", case.offsets), ("mask", case.mask),
                              ("kernel", case.kernel), ("bias", case.bias)]}
    out = np.zeros(case.upstream.shape, dtype=st["x"].dtype)
    nbytes = np.zeros(1, np.int64)
    check(lib.tfdcn_conv_workspace_bytes(code, dims, int(deterministic), 0, ptr(nbytes)))
    ws = workspace(nbytes[0])
    check(lib.tfdcn_conv_forward(code, dims, int(deterministic), None, ptr(st["x"]),
                                 ptr(st["offsets"]), ptr(st["mask"]), ptr(st["kernel"]),
                                 ptr(st["bias"]), ptr(out), ptr(ws), ctypes.c_int64(ws.size)))
    return from_storage(out, dtype)


def emulated_backward(case: Case, dtype="float64", deterministic=False):
    lib = library()
    code = TYPE_CODES[dtype]
    dims = ctypes.byref(case.dims)
    st = {name: None if value is None else to_storage(value, dtype)
          for name, value in [("x", case.x), ("offsets", case.offsets), ("mask", case.mask),
                              ("kernel", case.kernel), ("bias", case.bias),
                              ("upstream", case.upstream)]}
    grads = {name: None if value is None else np.full_like(value, 7)  # garbage: all overwritten
             for name, value in st.items() if name != "upstream"}
    nbytes = np.zeros(1, np.int64)
    check(lib.tfdcn_conv_workspace_bytes(code, dims, int(deterministic), 1, ptr(nbytes)))
    ws = workspace(nbytes[0])
    ws[:] = 0xFF  # the launcher must not rely on a zeroed workspace
    check(lib.tfdcn_conv_backward(
        code, dims, int(deterministic), None, ptr(st["x"]), ptr(st["offsets"]), ptr(st["mask"]),
        ptr(st["kernel"]), ptr(st["upstream"]), ptr(grads["x"]), ptr(grads["offsets"]),
        ptr(grads["mask"]), ptr(grads["kernel"]), ptr(grads["bias"]), ptr(ws), ctypes.c_int64(ws.size)))
    return {k: None if v is None else from_storage(v, dtype) for k, v in grads.items()}


CASES = {
    "plain": dict(),
    "v1_no_bias": dict(use_mask=False, use_bias=False),
    "groups2": dict(c=4, cout=6, groups=2),
    "dg2": dict(c=4, dg=2),
    "groups2_dg4": dict(c=8, cout=4, groups=2, dg=4),
    "stride2_dilation2": dict(h=9, w=8, strides=(2, 2), dilation=(2, 2), pads=((2, 1), (0, 2))),
    "rect_kernel_valid": dict(k=(2, 3), pads=((0, 0), (0, 0))),
    "one_by_one": dict(k=(1, 1), pads=((0, 0), (0, 0)), c=3, cout=2),
}


@pytest.fixture(params=[None, "3"], ids=["one_chunk", "chunks_of_3"])
def chunking(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setenv("TF_DCN_EMULATION_MAX_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_reference(name, chunking):
    case = Case(**CASES[name])
    want = case.reference()
    np.testing.assert_allclose(emulated_forward(case, "float64"), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(emulated_forward(case, "float32"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_matches_cpu_op(name, deterministic, chunking):
    case = Case(**CASES[name])
    want = case.op_gradients()
    got = emulated_backward(case, "float64", deterministic)
    for key, value in want.items():
        if value is None:
            assert got[key] is None
            continue
        np.testing.assert_allclose(got[key], value, rtol=1e-11, atol=1e-11, err_msg=key)


def test_backward_matches_central_differences():
    case = Case(n=1, h=4, w=4, c=2, cout=2, dg=2)
    grads = emulated_backward(case, "float64", deterministic=True)
    eps = 1e-6
    for name in ["x", "offsets", "mask", "kernel", "bias"]:
        value = getattr(case, name)
        flat = value.reshape(-1)
        for index in RNG.choice(flat.size, size=min(flat.size, 12), replace=False):
            saved = flat[index]
            flat[index] = saved + eps
            plus = np.sum(emulated_forward(case) * case.upstream)
            flat[index] = saved - eps
            minus = np.sum(emulated_forward(case) * case.upstream)
            flat[index] = saved
            numeric = (plus - minus) / (2 * eps)
            assert abs(grads[name].reshape(-1)[index] - numeric) < 1e-6, (name, index)


def test_deterministic_backward_is_bitwise_reproducible_and_agrees_with_atomic(monkeypatch):
    monkeypatch.setenv("TF_DCN_EMULATION_MAX_CHUNK", "5")
    case = Case(n=2, h=7, w=6, c=8, cout=4, dg=2, groups=2)
    first = emulated_backward(case, "float32", deterministic=True)
    second = emulated_backward(case, "float32", deterministic=True)
    fast = emulated_backward(case, "float32", deterministic=False)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        np.testing.assert_allclose(first[key], fast[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-2), ("bfloat16", 1.5e-1)])
def test_half_types_accumulate_in_float32(dtype, tol, monkeypatch):
    monkeypatch.setenv("TF_DCN_EMULATION_MAX_CHUNK", "7")
    case = Case(n=2, h=6, w=6, c=8, cout=8, dg=2)
    # The float64 answer on the same rounded inputs.
    for name in ["x", "offsets", "mask", "kernel", "bias", "upstream"]:
        setattr(case, name, from_storage(to_storage(getattr(case, name), dtype), dtype))
    want_out = case.reference()
    want = case.op_gradients()
    scale = np.abs(want_out).max()
    np.testing.assert_allclose(emulated_forward(case, dtype), want_out, atol=tol * scale)
    for deterministic in (False, True):
        got = emulated_backward(case, dtype, deterministic)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, atol=tol * np.abs(value).max(),
                                       err_msg=f"{key} deterministic={deterministic}")


def test_non_finite_and_huge_offsets_follow_the_cpu_op():
    case = Case(n=1, h=5, w=5, c=3, cout=2)
    case.offsets[0, 1, 1, 0] = np.nan
    case.offsets[0, 2, 2, 3] = np.inf
    case.offsets[0, 3, 3, 5] = 1e30
    case.offsets[0, 0, 4, 7] = -1e30
    want = tf_dcn.deform_conv2d(case.x, case.offsets, case.kernel, mask=case.mask, bias=case.bias,
                                padding=case.pads).numpy()
    np.testing.assert_allclose(emulated_forward(case), want, rtol=1e-12, atol=1e-12)
    want_grads = case.op_gradients()
    for deterministic in (False, True):
        got = emulated_backward(case, "float64", deterministic)
        for key, value in want_grads.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-11, atol=1e-11,
                                       err_msg=f"{key} deterministic={deterministic}")


def test_empty_batch_and_zero_output_channels():
    empty = Case(n=0)
    assert emulated_forward(empty).shape == empty.upstream.shape
    grads = emulated_backward(empty)
    np.testing.assert_array_equal(grads["kernel"], 0)
    np.testing.assert_array_equal(grads["bias"], 0)
    no_out = Case(cout=0)
    grads = emulated_backward(no_out, deterministic=True)
    np.testing.assert_array_equal(grads["x"], 0)
    np.testing.assert_array_equal(grads["offsets"], 0)


def test_too_small_workspace_is_an_error():
    case = Case()
    lib = library()
    dims = ctypes.byref(case.dims)
    nbytes = np.zeros(1, np.int64)
    check(lib.tfdcn_conv_workspace_bytes(TYPE_CODES["float64"], dims, 0, 0, ptr(nbytes)))
    ws = workspace(nbytes[0] - 1)
    out = np.zeros(case.upstream.shape)
    code = lib.tfdcn_conv_forward(TYPE_CODES["float64"], dims, 0, None, ptr(case.x),
                                  ptr(case.offsets), ptr(case.mask), ptr(case.kernel),
                                  ptr(case.bias), ptr(out), ptr(ws), ctypes.c_int64(int(nbytes[0]) - 1))
    assert code == -2  # kGpuWorkspaceTooSmall
