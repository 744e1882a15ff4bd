"""tf_dcn.deform_conv2d against tf.nn.conv2d, shifted convolutions and the NumPy reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tests import conv_reference as ref

RNG = np.random.default_rng(1234)


def _random(shape, rng=RNG, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape)


def _explicit_pads(padding, h, w, kh, kw, strides, dilation):
    """((top, bottom), (left, right)) of any public padding argument."""
    if padding == "same":
        return (ref.same_padding(h, kh, strides[0], dilation[0]),
                ref.same_padding(w, kw, strides[1], dilation[1]))
    if padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return padding


def _out_size(size, kernel, stride, dilation, before, after):
    return (size + before + after - (dilation * (kernel - 1) + 1)) // stride + 1


# ------------------------------------------------------------------------------------------------
# Zero offsets and mask 1 equal tf.nn.conv2d.
# ------------------------------------------------------------------------------------------------
CONV_CASES = [
    # (H, W, C, Cout, kh, kw, strides, dilation, groups, padding)
    (7, 8, 4, 6, 3, 3, (1, 1), (1, 1), 1, "same"),
    (7, 8, 4, 6, 3, 3, (1, 1), (1, 1), 1, "valid"),
    (9, 7, 4, 6, 3, 2, (2, 1), (1, 1), 1, "same"),
    (9, 9, 6, 4, 3, 3, (2, 2), (2, 2), 2, "valid"),
    (8, 9, 4, 4, 3, 3, (1, 2), (2, 1), 2, "same"),
    (8, 8, 4, 6, 3, 3, (1, 1), (1, 1), 1, ((2, 0), (1, 3))),
    (6, 7, 2, 3, 5, 5, (1, 1), (1, 1), 1, 2),
    (6, 7, 2, 3, 1, 1, (2, 2), (1, 1), 1, "valid"),
]


def _tf_padding(padding):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    (t, b), (l, r) = padding
    return [[0, 0], [t, b], [l, r], [0, 0]]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("modulated", [False, True])
def test_zero_offsets_equal_conv2d(case, modulated):
    h, w, c, cout, kh, kw, strides, dilation, groups, padding = case
    x = _random((2, h, w, c))
    kernel = _random((kh, kw, c // groups, cout))
    bias = _random((cout,))
    expected = tf.nn.conv2d(x, kernel, strides, _tf_padding(padding), dilations=dilation) + bias
    n, ho, wo, _ = expected.shape
    offsets = np.zeros((n, ho, wo, 2 * kh * kw))
    mask = np.ones((n, ho, wo, kh * kw)) if modulated else None
    got = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask, bias=bias, strides=strides,
                               padding=padding, dilation_rate=dilation, groups=groups)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Integer offsets (different for each tap and deformable group) equal a shifted convolution.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deformable_groups", [1, 2])
def test_integer_offsets_equal_shifted_convolution(deformable_groups):
    rng = np.random.default_rng(7)
    x = _random((2, 7, 8, 4), rng)
    kernel = _random((3, 3, 4, 5), rng)
    padding = ((1, 1), (1, 1))
    shifts = rng.integers(-3, 4, size=(deformable_groups, 9, 2))
    offsets = np.broadcast_to(shifts.reshape(-1), (2, 7, 8, deformable_groups * 18)).astype(float)
    got = tf_dcn.deform_conv2d(x, offsets, kernel, padding=padding,
                               deformable_groups=deformable_groups)
    expected = ref.shifted_conv2d(x, kernel, shifts, padding, deformable_groups)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Border rule: a 1x1 identity kernel returns the sample itself.
# ------------------------------------------------------------------------------------------------
def _sample(image, y, x):
    """Samples an [H, W, C] image at one position through the op (1x1 identity kernel)."""
    # Output pixel (0, 0) samples at (0 + y, 0 + x).
    h, w, c = image.shape
    off = np.zeros((1, h, w, 2))
    off[0, 0, 0] = [y, x]
    out = tf_dcn.deform_conv2d(image[None], off, np.eye(c).reshape(1, 1, c, c))
    return out.numpy()[0, 0, 0]


@pytest.mark.parametrize("y, x", [
    (-0.3, 1.0), (1.0, -0.6), (-0.25, -0.75),      # inside (-1, 0): fades towards the edge
    (3.4, 2.0), (2.0, 4.7), (3.5, 4.5),            # inside (H-1, H) and (W-1, W)
    (-1.0, 1.0), (1.0, 5.0), (4.0, 0.0), (-3.0, 9.0),  # at or beyond the limits: exactly 0
    (1.25, 2.5), (0.0, 0.0), (3.0, 4.0),
])
def test_border_rule(y, x):
    image = _random((4, 5, 3))
    got = _sample(image, y, x)
    np.testing.assert_allclose(got, ref.bilinear(image, y, x), rtol=1e-12, atol=1e-12)


def test_border_fade_values_are_exact():
    image = np.arange(1.0, 21.0).reshape(4, 5, 1)
    # y = -0.25: only the row-0 corners are inside, with weight 0.75.
    assert _sample(image, -0.25, 2.0)[0] == pytest.approx(0.75 * image[0, 2, 0])
    # y = H - 1 + 0.4: only the last row, weight 0.6.
    assert _sample(image, 3.4, 1.0)[0] == pytest.approx(0.6 * image[3, 1, 0])
    assert _sample(image, -1.0, 2.0)[0] == 0.0
    assert _sample(image, 4.0, 2.0)[0] == 0.0


# ------------------------------------------------------------------------------------------------
# Random configurations against the NumPy reference.
# ------------------------------------------------------------------------------------------------
RANDOM_CASES = [
    # (kh, kw, deformable_groups, groups, strides, dilation, padding, C, Cout)
    (1, 1, 1, 1, (1, 1), (1, 1), "valid", 4, 4),
    (3, 3, 1, 1, (1, 1), (1, 1), "same", 4, 6),
    (3, 2, 2, 1, (2, 1), (1, 1), ((1, 0), (0, 1)), 4, 3),
    (5, 5, 4, 2, (1, 1), (1, 1), 2, 8, 4),
    (3, 3, 2, 2, (2, 2), (2, 2), "same", 4, 6),
    (3, 3, 4, 1, (1, 2), (2, 1), 1, 8, 2),
    (3, 3, 1, 2, (1, 1), (1, 1), "valid", 6, 4),
]


@pytest.mark.parametrize("case", RANDOM_CASES)
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_against_reference(case, modulated, dtype):
    kh, kw, dg, groups, strides, dilation, padding, c, cout = case
    rng = np.random.default_rng(zlib.crc32(repr((case, modulated)).encode()))
    h, w = 7, 6
    x = _random((2, h, w, c), rng)
    kernel = _random((kh, kw, c // groups, cout), rng)
    bias = _random((cout,), rng)
    pads = _explicit_pads(padding, h, w, kh, kw, strides, dilation)
    ho = _out_size(h, kh, strides[0], dilation[0], *pads[0])
    wo = _out_size(w, kw, strides[1], dilation[1], *pads[1])
    offsets = _random((2, ho, wo, 2 * dg * kh * kw), rng, -2.5, 2.5)
    mask = _random((2, ho, wo, dg * kh * kw), rng, 0.0, 1.0) if modulated else None
    expected = ref.deform_conv2d(x, offsets, kernel, mask, bias, strides, pads, dilation, groups, dg)
    cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
    got = tf_dcn.deform_conv2d(cast(x), cast(offsets), cast(kernel), mask=cast(mask),
                               bias=cast(bias), strides=strides, padding=padding,
                               dilation_rate=dilation, groups=groups, deformable_groups=dg)
    assert got.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got.numpy(), expected, rtol=tol, atol=tol)


# The CPU forward pass has two paths: with at most 4 KiB of columns per output pixel (taps x
# channels x accumulator size) each thread gathers and multiplies tiles that stay in its cache;
# with more it gathers chunks of columns shared by all threads (many chunks with a small
# TF_DCN_CPU_WORKSPACE_BYTES). Both against the reference, grouped, strided, modulated, biased.
@pytest.mark.parametrize("c, dtype, workspace", [
    (8, np.float32, None),       # 288 B per pixel: cached tiles
    (8, np.float64, None),
    (120, np.float32, None),     # 4320 B per pixel: chunks
    (120, np.float32, 65536),    # chunks of 7 pixels
    (64, np.float64, 65536),     # 4608 B per pixel
    (120, np.float16, 65536),    # float32 accumulation: chunks
])
def test_forward_paths_against_reference(c, dtype, workspace, monkeypatch):
    if workspace is None:
        monkeypatch.delenv("TF_DCN_CPU_WORKSPACE_BYTES", raising=False)
    else:
        monkeypatch.setenv("TF_DCN_CPU_WORKSPACE_BYTES", str(workspace))
    rng = np.random.default_rng(c)
    x = _random((2, 9, 8, c), rng)
    kernel = _random((3, 3, c // 2, 6), rng)
    bias = _random((6,), rng)
    offsets = _random((2, 5, 4, 2 * 2 * 9), rng, -2.5, 2.5)
    mask = _random((2, 5, 4, 2 * 9), rng, 0.0, 1.0)
    pads = _explicit_pads("same", 9, 8, 3, 3, (2, 2), (1, 1))
    expected = ref.deform_conv2d(x, offsets, kernel, mask, bias, (2, 2), pads, (1, 1), 2, 2)
    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    got = tf_dcn.deform_conv2d(cast(x), cast(offsets), cast(kernel), mask=cast(mask),
                               bias=cast(bias), strides=2, padding="same", groups=2,
                               deformable_groups=2)
    tol = {np.float64: 1e-12, np.float32: 2e-5, np.float16: 2e-2}[dtype]
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=tol,
                               atol=tol * scale)


# ------------------------------------------------------------------------------------------------
# Gradients: tf.test.compute_gradient in float64, offsets integer + U(0.15, 0.85).
# ------------------------------------------------------------------------------------------------
GRAD_CASES = [
    # (kh, kw, dg, groups, strides, dilation, padding, C, Cout)
    (3, 3, 1, 1, (1, 1), (1, 1), "same", 2, 3),
    (3, 2, 2, 2, (2, 1), (1, 1), ((1, 0), (0, 1)), 4, 2),
    (3, 3, 2, 1, (1, 1), (2, 2), "same", 4, 2),
]


def _grad_inputs(case, rng):
    kh, kw, dg, groups, strides, dilation, padding, c, cout = case
    h, w = 5, 4
    x = _random((1, h, w, c), rng)
    kernel = _random((kh, kw, c // groups, cout), rng)
    bias = _random((cout,), rng)
    pads = _explicit_pads(padding, h, w, kh, kw, strides, dilation)
    ho = _out_size(h, kh, strides[0], dilation[0], *pads[0])
    wo = _out_size(w, kw, strides[1], dilation[1], *pads[1])
    shape = (1, ho, wo, 2 * dg * kh * kw)
    offsets = rng.integers(-2, 2, size=shape) + rng.uniform(0.15, 0.85, size=shape)
    mask = rng.uniform(0.2, 1.0, size=(1, ho, wo, dg * kh * kw))
    return x, offsets, kernel, mask, bias


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("modulated", [False, True])
def test_gradients_match_numerical(case, modulated):
    kh, kw, dg, groups, strides, dilation, padding, c, cout = case
    rng = np.random.default_rng(42)
    x, offsets, kernel, mask, bias = _grad_inputs(case, rng)
    args = [x, offsets, kernel, bias] + ([mask] if modulated else [])

    def fn(x, offsets, kernel, bias, mask=None):
        return tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask, bias=bias, strides=strides,
                                    padding=padding, dilation_rate=dilation, groups=groups,
                                    deformable_groups=dg)

    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(a) for a in args])
    for name, t, n in zip(["inputs", "offsets", "kernel", "bias", "mask"], theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6, err_msg=name)


def test_offset_gradient_is_zero_outside_and_mask_gradient_is_sample():
    x = tf.constant(_random((1, 4, 4, 2)))
    kernel = tf.constant(_random((1, 1, 2, 3)))
    offsets = np.zeros((1, 4, 4, 2))
    offsets[0, 1, 1] = [10.0, 0.0]  # far outside
    offsets = tf.constant(offsets)
    mask = tf.constant(np.ones((1, 4, 4, 1)))
    with tf.GradientTape() as tape:
        tape.watch([offsets, mask])
        y = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask)
        loss = tf.reduce_sum(y)
    d_off, d_mask = tape.gradient(loss, [offsets, mask])
    assert np.all(d_off.numpy()[0, 1, 1] == 0.0)
    assert d_mask.numpy()[0, 1, 1, 0] == 0.0
    # Inside, d mask = sum_o sum_c kernel[c, o] * x[c] at that pixel.
    expected = np.einsum("c,co->", x.numpy()[0, 2, 3], kernel.numpy()[0, 0])
    assert d_mask.numpy()[0, 2, 3, 0] == pytest.approx(expected)


def test_backward_is_bitwise_deterministic():
    rng = np.random.default_rng(3)
    x = tf.constant(_random((3, 12, 11, 8), rng), tf.float32)
    kernel = tf.constant(_random((3, 3, 8, 8), rng), tf.float32)
    offsets = tf.constant(_random((3, 12, 11, 36), rng, -3, 3), tf.float32)
    mask = tf.constant(_random((3, 12, 11, 18), rng, 0, 1), tf.float32)
    upstream = tf.constant(_random((3, 12, 11, 8), rng), tf.float32)

    def grads():
        with tf.GradientTape() as tape:
            tape.watch([x, offsets, mask, kernel])
            y = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask, padding="same",
                                     deformable_groups=2)
        return [g.numpy() for g in tape.gradient(y, [x, offsets, mask, kernel],
                                                 output_gradients=upstream)]

    first = grads()
    for _ in range(3):
        for a, b in zip(first, grads()):
            assert np.array_equal(a, b)


def test_batch_split_and_whole_images_agree():
    """Batch sizes above and below the thread count take different work partitions."""
    rng = np.random.default_rng(5)
    x = _random((5, 6, 6, 4), rng)
    kernel = _random((3, 3, 4, 4), rng)
    offsets = _random((5, 6, 6, 18), rng, -2, 2)
    upstream = _random((5, 6, 6, 4), rng)

    def input_grad(xs, offs, ups):
        xs, offs = tf.constant(xs), tf.constant(offs)
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = tf_dcn.deform_conv2d(xs, offs, kernel, padding="same")
        return tape.gradient(y, xs, output_gradients=tf.constant(ups)).numpy()

    whole = input_grad(x, offsets, upstream)
    for n in range(5):
        single = input_grad(x[n:n + 1], offsets[n:n + 1], upstream[n:n + 1])
        np.testing.assert_allclose(single[0], whole[n], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Half types against float32.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(tf.float16, 5e-3), (tf.bfloat16, 3e-2)])
def test_half_types_against_float32(dtype, tol):
    rng = np.random.default_rng(11)
    x = _random((2, 8, 8, 8), rng)
    kernel = _random((3, 3, 8, 4), rng) * 0.3
    offsets = _random((2, 8, 8, 36), rng, -2, 2)
    mask = _random((2, 8, 8, 18), rng, 0, 1)
    # The float32 run sees the same (rounded) inputs, so only the kernel's arithmetic differs.
    low = [tf.cast(tf.constant(a, tf.float32), dtype) for a in (x, offsets, kernel, mask)]
    f32 = [tf.cast(a, tf.float32) for a in low]

    def run(x, offsets, kernel, mask):
        with tf.GradientTape() as tape:
            tape.watch([x, offsets, kernel, mask])
            y = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask, padding="same",
                                     deformable_groups=2)
        return [y] + tape.gradient(y, [x, offsets, kernel, mask])

    for a, b in zip(run(*low), run(*f32)):
        assert a.dtype == dtype
        a = tf.cast(a, tf.float32).numpy()
        b = b.numpy()
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)


# ------------------------------------------------------------------------------------------------
# Non-finite and huge offsets, empty batch.
# ------------------------------------------------------------------------------------------------
def test_nan_inf_and_huge_offsets():
    x = _random((1, 5, 5, 2))
    kernel = np.eye(2).reshape(1, 1, 2, 2)
    offsets = np.zeros((1, 5, 5, 2))
    offsets[0, 0, 0] = [np.nan, 0.0]
    offsets[0, 0, 1] = [np.inf, 0.0]
    offsets[0, 0, 2] = [0.0, -np.inf]
    offsets[0, 0, 3] = [1e30, -1e30]
    offsets[0, 0, 4] = [3e9, 0.0]
    offsets_t = tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch(offsets_t)
        y = tf_dcn.deform_conv2d(x, offsets_t, kernel)
    out = y.numpy()
    assert np.all(np.isnan(out[0, 0, 0]))
    assert np.all(out[0, 0, 1:5] == 0.0)
    np.testing.assert_allclose(out[0, 1:], x[0, 1:], rtol=1e-12)
    grad = tape.gradient(y, offsets_t).numpy()
    assert np.all(np.isnan(grad[0, 0, 0]))
    assert np.all(grad[0, 0, 1:5] == 0.0)


def test_empty_batch():
    x = tf.zeros([0, 6, 6, 4])
    offsets = tf.zeros([0, 6, 6, 18])
    kernel = tf.constant(_random((3, 3, 4, 5)), tf.float32)
    bias = tf.ones([5])
    with tf.GradientTape() as tape:
        tape.watch([x, offsets, kernel, bias])
        y = tf_dcn.deform_conv2d(x, offsets, kernel, bias=bias, padding="same")
    assert y.shape == (0, 6, 6, 5)
    gx, goff, gk, gb = tape.gradient(y, [x, offsets, kernel, bias])
    assert gx.shape == (0, 6, 6, 4) and goff.shape == (0, 6, 6, 18)
    assert np.all(gk.numpy() == 0) and np.all(gb.numpy() == 0)


# ------------------------------------------------------------------------------------------------
# Unknown batch and spatial dimensions inside tf.function.
# ------------------------------------------------------------------------------------------------
def test_tf_function_with_unknown_dimensions():
    spec = [tf.TensorSpec([None, None, None, 4], tf.float32),
            tf.TensorSpec([None, None, None, 18], tf.float32),
            tf.TensorSpec([None, None, None, 9], tf.float32)]
    kernel = tf.constant(_random((3, 3, 4, 6)), tf.float32)

    @tf.function(input_signature=spec)
    def fn(x, offsets, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask, padding="same")
            loss = tf.reduce_sum(y)
        assert y.shape.as_list() == [None, None, None, 6]
        return y, tape.gradient(loss, x)

    rng = np.random.default_rng(0)
    for n, h, w in [(1, 5, 7), (3, 4, 4)]:
        x = _random((n, h, w, 4), rng)
        off = _random((n, h, w, 18), rng, -1, 1)
        m = _random((n, h, w, 9), rng, 0, 1)
        y, gx = fn(tf.constant(x, tf.float32), tf.constant(off, tf.float32),
                   tf.constant(m, tf.float32))
        expected = ref.deform_conv2d(x, off, kernel.numpy(), m, padding="same")
        np.testing.assert_allclose(y.numpy(), expected, rtol=2e-5, atol=2e-5)
        assert gx.shape == (n, h, w, 4)


def test_static_shape_inference():
    spec = tf.TensorSpec([4, 10, 12, 8], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([4, 5, 6, 18], tf.float32)])
    def fn(x, offsets):
        y = tf_dcn.deform_conv2d(x, offsets, tf.zeros([3, 3, 8, 16]), strides=2, padding="same")
        assert y.shape.as_list() == [4, 5, 6, 16]
        return y

    fn.get_concrete_function()
