"""tf_dcn.deform_psroi_pool / deform_roi_pool against the float64 NumPy reference
(tests/psroi_reference.py), hand-computed edge cases, gradients, errors, dtypes and determinism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tests import psroi_reference as ref

RNG = np.random.default_rng(2024)


def _f32(x: float) -> float:
    """The value a float attribute (float32) really holds."""
    return float(np.float32(x))


def _pool(features, rois, offsets=None, dtype=tf.float64, **kw):
    features = tf.constant(features, dtype)
    if offsets is not None:
        offsets = tf.constant(offsets, dtype)
    return tf_dcn.deform_psroi_pool(features, rois, offsets, **kw)


def _ramp(n, h, w, c, base=1.0):
    """features[b, y, x, ch] = base + x + 100*y + 1000*b (the same in every channel)."""
    b, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    plane = base + x + 100.0 * y + 1000.0 * b
    return np.repeat(plane[..., None], c, axis=-1).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# Against the reference.
# ------------------------------------------------------------------------------------------------
# Boxes: inside, partly outside (left/top, right/bottom), wholly outside, halves to round,
# degenerate (x2 < x1: minimum size), a one-pixel box.
ROIS = np.array([
    [0, 1.0, 2.0, 7.5, 6.0],
    [1, -3.0, -2.0, 4.0, 5.0],
    [1, 6.0, 5.0, 14.0, 12.0],
    [0, 2.5, -0.5, 2.5, 3.0],
    [1, 30.0, 40.0, 36.0, 44.0],
    [0, 8.0, 7.0, 3.0, 2.0],
    [0, -2.5, 4.5, 10.5, 8.5],
])

CASES = {
    # name: (H, W, output_dim, group_size, pooled_size, part_size, sample_per_part, num_classes,
    #        trans_std, spatial_scale)
    "psroi_g3_no_offsets": (9, 11, 4, 3, 3, None, 2, 0, 0.1, 1.0),
    "psroi_g3_offsets": (9, 11, 4, 3, 3, None, 3, 1, 0.1, 1.0),
    "psroi_class_aware_part2": (9, 11, 4, 3, 3, 2, 3, 2, 0.1, 1.0),
    "psroi_part4_pool3_scale_half": (7, 8, 2, 3, 3, 4, 2, 2, 0.25, 0.5),
    "psroi_pooled4_group2": (9, 11, 3, 2, 4, None, 2, 3, 0.3, 1.0),
    "psroi_pooled2_group3": (9, 11, 2, 3, 2, 3, 2, 1, 0.1, 0.75),
    "roi_pool_g1_offsets": (9, 11, 5, 1, 3, None, 2, 1, 0.1, 1.0),
    "roi_pool_g1_classes": (9, 11, 4, 1, 2, None, 3, 4, 0.2, 1.0),
    "roi_pool_g1_no_offsets": (6, 5, 3, 1, 4, None, 2, 0, 0.1, 0.5),
}


def _case_inputs(name, rng=None):
    rng = rng or np.random.default_rng(abs(hash(name)) % 2**32)
    h, w, d, g, p, part, s, k, ts, scale = CASES[name]
    part_size = p if part is None else part
    features = rng.uniform(-1, 1, size=[2, h, w, d * g * g])
    offsets = None if k == 0 else rng.normal(0, 1.5, size=[len(ROIS), part_size, part_size, 2 * k])
    kw = dict(output_dim=d, group_size=g, pooled_size=p, part_size=part, sample_per_part=s,
              trans_std=ts, spatial_scale=scale)
    ref_kw = dict(kw, trans_std=_f32(ts), spatial_scale=_f32(scale))
    return features, offsets, kw, ref_kw


@pytest.mark.parametrize("dtype, atol", [(tf.float64, 1e-12), (tf.float32, 2e-5)])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_reference(name, dtype, atol):
    features, offsets, kw, ref_kw = _case_inputs(name)
    rois = ROIS if dtype == tf.float64 else tf.constant(ROIS, tf.float32)
    got = _pool(features, rois, offsets, dtype=dtype, **kw).numpy()
    want, count = ref.deform_psroi_pool_ref(features, ROIS, offsets, **ref_kw)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    # The cases exercise both kept and fully skipped bins.
    assert (count == 0).any() and (count > 0).any()


@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_reference(name):
    features, offsets, kw, ref_kw = _case_inputs(name)
    f = tf.constant(features)
    o = None if offsets is None else tf.constant(offsets)
    grad_out = RNG.normal(size=[len(ROIS), kw["pooled_size"], kw["pooled_size"], kw["output_dim"]])
    with tf.GradientTape() as tape:
        tape.watch(f)
        if o is not None:
            tape.watch(o)
        out = tf_dcn.deform_psroi_pool(f, ROIS, o, **kw)
    sources = [f] if o is None else [f, o]
    grads = tape.gradient(out, sources, output_gradients=tf.constant(grad_out))
    want_f, want_o = ref.deform_psroi_pool_grad_ref(features, ROIS, offsets, grad_out, **ref_kw)
    np.testing.assert_allclose(grads[0].numpy(), want_f, rtol=0, atol=1e-12)
    if o is not None:
        np.testing.assert_allclose(grads[1].numpy(), want_o, rtol=0, atol=1e-10)
        assert np.abs(want_o).max() > 0


def test_deform_roi_pool_is_group_size_one():
    features = RNG.uniform(-1, 1, size=[2, 9, 11, 5])
    offsets = RNG.normal(size=[len(ROIS), 3, 3, 2])
    a = tf_dcn.deform_roi_pool(tf.constant(features), ROIS, tf.constant(offsets), pooled_size=3,
                               sample_per_part=2, trans_std=0.2, spatial_scale=0.5)
    b = _pool(features, ROIS, offsets, output_dim=5, group_size=1, pooled_size=3,
              sample_per_part=2, trans_std=0.2, spatial_scale=0.5)
    assert a.shape == (len(ROIS), 3, 3, 5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_no_offsets_equals_zero_offsets():
    features, _, kw, _ = _case_inputs("psroi_class_aware_part2")
    a = _pool(features, ROIS, None, **kw).numpy()
    b = _pool(features, ROIS, np.zeros([len(ROIS), 2, 2, 4]), **kw).numpy()
    np.testing.assert_array_equal(a, b)


def test_defaults_pooled_and_part_size():
    features = RNG.uniform(-1, 1, size=[2, 9, 11, 2 * 9])
    offsets = RNG.normal(size=[len(ROIS), 3, 3, 2])
    got = _pool(features, ROIS, offsets, output_dim=2, group_size=3)
    want, _ = ref.deform_psroi_pool_ref(features, ROIS, offsets, output_dim=2, group_size=3,
                                        pooled_size=3, part_size=3, sample_per_part=4,
                                        trans_std=_f32(0.1), spatial_scale=1.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Hand-computed geometry on a ramp (value = 1 + x + 100*y): the mean of the kept sample positions.
# ------------------------------------------------------------------------------------------------
def _single(features, box, offsets=None, pooled=1, samples=1, trans_std=1.0, scale=1.0,
            dtype=tf.float64):
    out = _pool(features, np.array([box], np.float64), offsets, dtype=dtype, output_dim=1,
                group_size=1, pooled_size=pooled, sample_per_part=samples, trans_std=trans_std,
                spatial_scale=scale)
    return out.numpy()


@pytest.mark.parametrize("x1, rounded, banker", [
    (2.5, 3, 2), (-2.5, -3, -2), (0.5, 1, 0), (-0.5, -1, 0), (3.5, 4, 4), (2.4, 2, 2),
])
@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_round_halves_away_from_zero(x1, rounded, banker, dtype):
    features = _ramp(1, 12, 12, 1)
    # P = 1, S = 4, x2 = 8: samples at x_start + k*roi_w/4; y fixed at row 5.
    def expected(r):
        x_start, roi_w = r - 0.5, 8 + 1 - r
        xs = [x_start + k * roi_w / 4 for k in range(4)]
        kept = [min(max(x, 0.0), 11.0) for x in xs if -0.5 <= x <= 11.5]
        ys = [4.5 + k * 0.25 for k in range(4)]  # y1 = y2 = 5: roi_h = 1
        return np.mean([1 + x + 100 * y for x in kept for y in ys])

    # Transposed box too (the same rule on y): features rotated.
    got_x = _single(features, [0, x1, 5, 8, 5], samples=4, dtype=dtype)[0, 0, 0, 0]
    got_y = _single(features.transpose(0, 2, 1, 3), [0, 5, x1, 5, 8], samples=4,
                    dtype=dtype)[0, 0, 0, 0]
    np.testing.assert_allclose(got_x, expected(rounded), rtol=1e-6)
    np.testing.assert_allclose(got_y, expected(rounded), rtol=1e-6)
    if rounded != banker:  # the test would catch np.round
        assert abs(expected(rounded) - expected(banker)) > 1e-3
    assert ref.c_round(x1) == rounded


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_plus_one_and_minimum_size(dtype):
    features = _ramp(1, 10, 10, 1)
    # x1 = x2 = 3: [2.5, 3.5), roi_w = 1 thanks to the +1; S = 2 samples at 2.5 and 3.0.
    got = _single(features, [0, 3, 4, 3, 4], samples=2, dtype=dtype)[0, 0, 0, 0]
    np.testing.assert_allclose(got, 1 + 2.75 + 100 * 3.75, rtol=1e-6)
    # x2 < x1: roi_w = max(2.5 - 4.5, 0.1) = 0.1: samples at 4.5 and 4.55 (same on y).
    got = _single(features, [0, 5, 5, 2, 2], samples=2, dtype=dtype)[0, 0, 0, 0]
    np.testing.assert_allclose(got, 1 + 4.525 + 100 * 4.525, rtol=1e-6)
    # spatial_scale = 1/32 makes a 1-pixel box 0.03125 wide: the 0.1 minimum applies.
    got = _single(features, [0, 64, 64, 64, 64], samples=2, scale=1 / 32, dtype=dtype)
    np.testing.assert_allclose(got[0, 0, 0, 0], 1 + 1.525 + 100 * 1.525, rtol=1e-6)


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_skip_limits_are_strict(axis, dtype):
    """Samples exactly at -0.5 and W-0.5 are kept (and clamped); 1/64 beyond, skipped."""
    features = _ramp(1, 8, 8, 1)
    if axis == "y":
        features = features.transpose(0, 2, 1, 3)
    def run(box, shift):  # shift in pixels: offset * trans_std(1) * roi(8 or 4)
        x1, x2 = box
        roi = x2 - x1 + 1
        off = np.zeros([1, 1, 1, 2])
        off[..., 0 if axis == "x" else 1] = shift / roi
        b = [0, x1, 3, x2, 3] if axis == "x" else [0, 3, x1, 3, x2]
        return _single(features, b, off, samples=2, dtype=dtype)[0, 0, 0, 0]
    # The other axis: [2.5, 3.5) with samples 2.5, 3.0 -> mean 2.75, in ramp units 100 * 2.75.
    other = 100 * 2.75
    # Left: box [0, 7] -> samples at -0.5 (kept, clamped to 0) and 3.5.
    np.testing.assert_allclose(run((0, 7), 0.0), 1 + (0 + 3.5) / 2 + other, rtol=1e-6)
    np.testing.assert_allclose(run((0, 7), -1 / 64), 1 + (3.5 - 1 / 64) + other, rtol=1e-6)
    # Right: box [4, 7] shifted by +2 -> samples 5.5 and 7.5 = W - 0.5 (kept, clamped to 7).
    np.testing.assert_allclose(run((4, 7), 2.0), 1 + (5.5 + 7) / 2 + other, rtol=1e-6)
    np.testing.assert_allclose(run((4, 7), 2 + 1 / 64), 1 + (5.5 + 1 / 64) + other, rtol=1e-6)
    # Both samples beyond: count 0 -> 0.
    assert run((4, 7), 4.0 + 1 / 64) == 0.0


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_offsets_put_x_before_y(dtype):
    features = _ramp(1, 16, 16, 1)
    box = [0, 4, 4, 11, 11]  # roi 8 x 8, P = 1, S = 1: sample at (3.5, 3.5)
    base = _single(features, box, np.zeros([1, 1, 1, 2]), trans_std=0.25, dtype=dtype)[0, 0, 0, 0]
    np.testing.assert_allclose(base, 1 + 3.5 + 350, rtol=1e-6)
    # offsets (x=1, y=0): x moves by 1 * 0.25 * 8 = 2 pixels.
    got = _single(features, box, np.array([[[[1.0, 0.0]]]]), trans_std=0.25, dtype=dtype)
    np.testing.assert_allclose(got[0, 0, 0, 0], base + 2, rtol=1e-6)
    # offsets (x=0, y=1): y moves by 2 pixels.
    got = _single(features, box, np.array([[[[0.0, 1.0]]]]), trans_std=0.25, dtype=dtype)
    np.testing.assert_allclose(got[0, 0, 0, 0], base + 200, rtol=1e-6)


def test_class_aware_offsets():
    """output_dim 4, 2 classes: channels 0-1 use class 0 offsets, channels 2-3 class 1."""
    features = _ramp(1, 16, 16, 4)
    offsets = np.array([[[[0.5, 0.0, 0.0, -0.25]]]])  # class 0: x + 4; class 1: y - 2
    out = _pool(features, np.array([[0, 4, 4, 11, 11]], np.float64), offsets, output_dim=4,
                group_size=1, pooled_size=1, sample_per_part=1, trans_std=1.0).numpy()[0, 0, 0]
    base = 1 + 3.5 + 350
    np.testing.assert_allclose(out, [base + 4, base + 4, base - 200, base - 200])


def test_position_sensitive_channels():
    """Bin (ph, pw) of output channel ctop reads channel (ctop*G + gh)*G + gw. (Equal up to the
    rounding of the weight sums: the CPU kernels sum each pixel's weights before multiplying.)"""
    g, d = 3, 2
    features = np.zeros([1, 10, 10, d * g * g])
    features[..., :] = np.arange(d * g * g)  # channel index as the value
    out = _pool(features, np.array([[0, 0, 0, 9, 9]], np.float64), output_dim=d, group_size=g,
                sample_per_part=2).numpy()[0]
    for ph in range(g):
        for pw in range(g):
            for ctop in range(d):
                assert out[ph, pw, ctop] == pytest.approx((ctop * g + ph) * g + pw, rel=1e-14)


def test_rois_outside_give_zeros_and_no_gradient():
    features = tf.constant(RNG.uniform(-1, 1, size=[1, 6, 6, 4]))
    rois = np.array([[0, 20, 20, 30, 30], [0, -30, -30, -10, -10], [0, -10, 2, -2, 4]], np.float64)
    offsets = tf.constant(RNG.normal(0, 0.1, size=[3, 2, 2, 2]))
    with tf.GradientTape() as tape:
        tape.watch([features, offsets])
        out = tf_dcn.deform_roi_pool(features, rois, offsets, pooled_size=2, sample_per_part=2)
    gf, go = tape.gradient(out, [features, offsets])
    assert np.all(out.numpy() == 0)
    assert np.all(gf.numpy() == 0) and np.all(go.numpy() == 0)


# ------------------------------------------------------------------------------------------------
# Non-finite inputs never index memory.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_box_gives_nan_bins(bad):
    features = tf.constant(RNG.uniform(-1, 1, size=[1, 8, 8, 4]))
    rois = np.array([[0, 1, 1, 6, 6], [0, 1, bad, 6, 6]], np.float64)
    offsets = tf.constant(RNG.normal(0, 0.1, size=[2, 2, 2, 2]))
    with tf.GradientTape() as tape:
        tape.watch([features, offsets])
        out = tf_dcn.deform_roi_pool(features, rois, offsets, pooled_size=2, sample_per_part=2)
    gf, go = tape.gradient(out, [features, offsets])
    assert np.all(np.isfinite(out.numpy()[0])) and np.all(np.isnan(out.numpy()[1]))
    # The NaN RoI passes nothing to the features; its offsets gradient is NaN.
    with tf.GradientTape() as tape:
        tape.watch(features)
        out0 = tf_dcn.deform_roi_pool(features, rois[:1], offsets[:1], pooled_size=2,
                                      sample_per_part=2)
    np.testing.assert_array_equal(gf.numpy(), tape.gradient(out0, features).numpy())
    assert np.all(np.isfinite(go.numpy()[0])) and np.all(np.isnan(go.numpy()[1]))


def test_nan_and_huge_offsets():
    features = tf.constant(RNG.uniform(-1, 1, size=[1, 8, 8, 1]))
    rois = np.array([[0, 1, 1, 6, 6]], np.float64)
    offsets = np.zeros([1, 2, 2, 2])
    offsets[0, 0, 0, 0] = np.nan  # bin (0, 0): NaN
    offsets[0, 0, 1, 1] = 1e30  # bin (0, 1): every sample far outside -> 0
    offsets[0, 1, 0, 0] = -np.inf  # bin (1, 0): -> 0
    offsets = tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch([features, offsets])
        out = tf_dcn.deform_roi_pool(features, rois, offsets, pooled_size=2, sample_per_part=2)
    gf, go = tape.gradient(out, [features, offsets])
    out = out.numpy()[0, ..., 0]
    assert np.isnan(out[0, 0]) and out[0, 1] == 0 and out[1, 0] == 0 and np.isfinite(out[1, 1])
    # Only bin (1, 1) reaches the features; the NaN bin's offsets get a NaN gradient.
    assert np.all(np.isfinite(gf.numpy())) and np.count_nonzero(gf.numpy()) > 0
    go = go.numpy()[0]
    assert np.all(np.isnan(go[0, 0])) and np.all(go[0, 1] == 0) and np.all(go[1, 0] == 0)
    assert np.all(np.isfinite(go[1, 1]))


def test_huge_finite_box_does_not_crash():
    features = tf.constant(RNG.uniform(-1, 1, size=[1, 8, 8, 1]), tf.float32)
    rois = tf.constant([[0, -3e38, -3e38, 3e38, 3e38], [0, 0, 0, 3e38, 3e38]], tf.float32)
    out = tf_dcn.deform_roi_pool(features, rois, pooled_size=2, spatial_scale=16.0).numpy()
    assert out.shape == (2, 2, 2, 1)  # values are 0, finite or NaN (overflowing box arithmetic)


def test_empty_feature_map_gives_zeros():
    out = _pool(np.zeros([1, 0, 5, 4]), np.array([[0, 0, 0, 3, 3]], np.float64), output_dim=4,
                group_size=1, pooled_size=2)
    np.testing.assert_array_equal(out.numpy(), np.zeros([1, 2, 2, 4]))


# ------------------------------------------------------------------------------------------------
# Numerical gradients (float64).
# ------------------------------------------------------------------------------------------------
def test_numerical_gradient_features():
    features = RNG.uniform(-1, 1, size=[2, 5, 6, 2 * 4])
    rois = np.array([[0, -1, 0, 4, 3], [1, 1, 1, 7, 5], [0, 2.5, 1, 3, 2]], np.float64)
    offsets = tf.constant(RNG.normal(0, 1, size=[3, 3, 3, 4]))

    def f(x):
        return tf_dcn.deform_psroi_pool(x, rois, offsets, output_dim=2, group_size=2,
                                        pooled_size=2, part_size=3, sample_per_part=2,
                                        trans_std=0.1)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(features)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)


def test_numerical_gradient_offsets():
    """Sample positions are k + 0.5 + U(-0.3, 0.3): never integers, far from the skip limits."""
    h = w = 12
    features = tf.constant(RNG.uniform(-1, 1, size=[2, h, w, 2 * 4]))
    # Boxes 8 x 8 with P = 2, S = 2: sub-bins of 2 pixels starting at k + 0.5.
    rois = np.array([[0, 2, 1, 9, 8], [1, 3, 2, 10, 9]], np.float64)
    trans_std = 0.125  # shift = offset * 0.125 * 8 = offset pixels
    shifts = RNG.uniform(-0.3, 0.3, size=[2, 2, 2, 4])  # 2 classes

    def f(off):
        return tf_dcn.deform_psroi_pool(features, rois, off, output_dim=2, group_size=2,
                                        pooled_size=2, sample_per_part=2, trans_std=trans_std)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(shifts)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)
    assert np.abs(theoretical[0]).max() > 0.01


# ------------------------------------------------------------------------------------------------
# Graph mode, empty inputs, dtypes, determinism.
# ------------------------------------------------------------------------------------------------
def test_tf_function_unknown_num_rois():
    features, offsets, kw, ref_kw = _case_inputs("psroi_class_aware_part2")

    @tf.function(input_signature=[
        tf.TensorSpec([2, 9, 11, 36], tf.float64),
        tf.TensorSpec([None, 5], tf.float64),
        tf.TensorSpec([None, 2, 2, 4], tf.float64),
    ])
    def run(x, r, o):
        with tf.GradientTape() as tape:
            tape.watch([x, o])
            y = tf_dcn.deform_psroi_pool(x, r, o, **kw)
            assert y.shape.as_list() == [None, 3, 3, 4]
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [x, o])

    for count in (len(ROIS), 2):
        out, (gf, go) = run(tf.constant(features), tf.constant(ROIS[:count]),
                            tf.constant(offsets[:count]))
        want, _ = ref.deform_psroi_pool_ref(features, ROIS[:count], offsets[:count], **ref_kw)
        np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-12)
        want_f, want_o = ref.deform_psroi_pool_grad_ref(features, ROIS[:count], offsets[:count],
                                                        2 * want, **ref_kw)
        np.testing.assert_allclose(gf.numpy(), want_f, rtol=0, atol=1e-11)
        np.testing.assert_allclose(go.numpy(), want_o, rtol=0, atol=1e-10)


def test_zero_rois():
    features = tf.constant(RNG.uniform(-1, 1, size=[1, 5, 5, 8]))
    rois = tf.zeros([0, 5], tf.float64)
    offsets = tf.zeros([0, 2, 2, 2], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([features, offsets])
        out = tf_dcn.deform_psroi_pool(features, rois, offsets, output_dim=2, group_size=2)
    gf, go = tape.gradient(out, [features, offsets])
    assert out.shape == (0, 2, 2, 2)
    assert go.shape == (0, 2, 2, 2)
    np.testing.assert_array_equal(gf.numpy(), np.zeros([1, 5, 5, 8]))


@pytest.mark.parametrize("dtype, rtol", [(tf.float16, 2e-3), (tf.bfloat16, 1.6e-2)])
def test_half_types_match_float32(dtype, rtol):
    features, offsets, kw, _ = _case_inputs("psroi_class_aware_part2")
    # Quantise the inputs once, so both runs see the same values.
    f = tf.cast(tf.constant(features), dtype)
    o = tf.cast(tf.constant(offsets), dtype)
    grad_out = tf.constant(RNG.uniform(-1, 1, size=[len(ROIS), 3, 3, 4]))

    def run(x, off, t):
        x, off = tf.cast(x, t), tf.cast(off, t)
        with tf.GradientTape() as tape:
            tape.watch([x, off])
            y = tf_dcn.deform_psroi_pool(x, ROIS, off, **kw)  # rois stay float64
        return [y] + tape.gradient(y, [x, off], output_gradients=tf.cast(grad_out, t))

    half = run(f, o, dtype)
    full = run(f, o, tf.float32)
    for a, b in zip(half, full):
        assert a.dtype == dtype
        a = tf.cast(a, tf.float32).numpy()
        b = b.numpy()
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_backward_is_deterministic(dtype):
    rng = np.random.default_rng(7)
    n, h, w, d, g = 2, 16, 16, 8, 3
    features = tf.constant(rng.uniform(-1, 1, size=[n, h, w, d * g * g]), dtype)
    r = 60
    x1 = rng.uniform(-4, 12, size=r)
    y1 = rng.uniform(-4, 12, size=r)
    rois = np.stack([rng.integers(0, n, size=r), x1, y1, x1 + rng.uniform(0, 10, size=r),
                     y1 + rng.uniform(0, 10, size=r)], axis=1)
    offsets = tf.constant(rng.normal(0, 0.5, size=[r, g, g, 4]), dtype)
    grad_out = tf.constant(rng.normal(size=[r, g, g, d]), dtype)

    def backward():
        with tf.GradientTape() as tape:
            tape.watch([features, offsets])
            y = tf_dcn.deform_psroi_pool(features, rois, offsets, output_dim=d, group_size=g)
        return [t.numpy().tobytes() for t in tape.gradient(y, [features, offsets],
                                                           output_gradients=grad_out)]

    first = backward()
    for _ in range(2):
        assert backward() == first


def _thread_probe() -> str:
    """Digest of a forward and backward run (float32) on a fixed problem with many shards."""
    rng = np.random.default_rng(11)
    n, d, g = 2, 6, 3
    features = tf.constant(rng.uniform(-1, 1, size=[n, 12, 13, d * g * g]), tf.float32)
    x1 = rng.uniform(-3, 10, size=40)
    y1 = rng.uniform(-3, 10, size=40)
    rois = np.stack([rng.integers(0, n, size=40), x1, y1, x1 + 6, y1 + 5], axis=1)
    offsets = tf.constant(rng.normal(0, 0.5, size=[40, 3, 3, 6]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([features, offsets])
        y = tf_dcn.deform_psroi_pool(features, rois, offsets, output_dim=d, group_size=g,
                                     sample_per_part=3)
    grads = tape.gradient(y, [features, offsets], output_gradients=tf.sin(y * 3.0))
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in [y] + grads)).hexdigest()


def test_results_do_not_depend_on_thread_count():
    """Forward and backward are bitwise identical with 2 (this process) and 5 threads."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import sys, tensorflow as tf; t = int(sys.argv[1]); "
              "tf.config.threading.set_intra_op_parallelism_threads(t); "
              "tf.config.threading.set_inter_op_parallelism_threads(1); "
              "from tests.test_deform_psroi_pool import _thread_probe; print(_thread_probe())")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(t)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t in (5,)]
    here = _thread_probe()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == here


# ------------------------------------------------------------------------------------------------
# Errors: ValueError from the wrapper (static), InvalidArgumentError from the kernel (run time).
# ------------------------------------------------------------------------------------------------
GOOD = dict(features=np.zeros([2, 6, 6, 8]), rois=np.array([[0, 0, 0, 3, 3], [1, 1, 1, 4, 4]]),
            offsets=np.zeros([2, 2, 2, 4]))
GOOD_KW = dict(output_dim=2, group_size=2)

BAD_SHAPES = [
    # (id, changed inputs, argument named in the message)
    ("rois_rank1", dict(rois=np.zeros([5])), "rois"),
    ("rois_last_4", dict(rois=np.zeros([2, 4])), "rois"),
    ("features_rank3", dict(features=np.zeros([6, 6, 8])), "features"),
    ("channels", dict(features=np.zeros([2, 6, 6, 9])), "features"),
    ("offsets_rank3", dict(offsets=np.zeros([2, 2, 4])), "offsets"),
    ("offsets_num_rois", dict(offsets=np.zeros([3, 2, 2, 4])), "offsets"),
    ("offsets_part_size", dict(offsets=np.zeros([2, 3, 2, 4])), "offsets"),
    ("offsets_odd_last", dict(offsets=np.zeros([2, 2, 2, 3])), "offsets"),
    ("offsets_classes", dict(offsets=np.zeros([2, 2, 2, 6])), "offsets"),  # 2 % 3 != 0
]


def _inputs(changes):
    args = dict(GOOD, **changes)
    return args["features"], args["rois"], args["offsets"]


@pytest.mark.parametrize("case, changes, argument", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_wrapper_raises_value_error(case, changes, argument):
    features, rois, offsets = _inputs(changes)
    with pytest.raises(ValueError, match=f"^{argument}: expected|^{argument}: output_dim"):
        tf_dcn.deform_psroi_pool(features, rois, offsets, **GOOD_KW)


@pytest.mark.parametrize("case, changes, argument", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_kernel_raises_invalid_argument(case, changes, argument):
    """Unknown shapes at trace time: only the kernel can see the problem."""
    features, rois, offsets = _inputs(changes)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float64)] * 3)
    def run(x, r, o):
        return tf_dcn.deform_psroi_pool(x, r, o, **GOOD_KW)

    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{argument}: "):
        run(tf.constant(features, tf.float64), tf.constant(rois, tf.float64),
            tf.constant(offsets, tf.float64))


BAD_BATCH = [
    ("negative", -1.0, "out of range"),
    ("too_large", 2.0, "out of range"),
    ("huge", 1e300, "out of range"),
    ("fraction", 0.5, "not an integer"),
    ("nan", np.nan, "not finite"),
    ("inf", np.inf, "not finite"),
    ("minus_inf", -np.inf, "not finite"),
]


@pytest.mark.parametrize("case, value, text", BAD_BATCH, ids=[c[0] for c in BAD_BATCH])
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_bad_batch_index(case, value, text, mode):
    rois = GOOD["rois"].astype(np.float64)
    rois[1, 0] = value
    features, offsets = tf.constant(GOOD["features"]), tf.constant(GOOD["offsets"])

    def run(x, r, o):
        return tf_dcn.deform_psroi_pool(x, r, o, **GOOD_KW)

    if mode == "function":
        run = tf.function(run, input_signature=[
            tf.TensorSpec([None, None, None, 8], tf.float64), tf.TensorSpec([None, 5], tf.float64),
            tf.TensorSpec([None, 2, 2, 4], tf.float64)])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"rois: batch index rois\[1, 0\] = .* is {text}"):
        run(features, tf.constant(rois), offsets)
    if case != "huge":  # float32 rois too
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"rois: batch index .* {text}"):
            tf_dcn.deform_psroi_pool(tf.constant(GOOD["features"], tf.float32),
                                     tf.constant(rois, tf.float32), None, **GOOD_KW)


def test_grad_op_checks_batch_index_and_grad_output():
    ops = tf_dcn.load_ops()
    attrs = dict(output_dim=2, group_size=2, pooled_size=2, part_size=2, use_offsets=True)
    features = tf.constant(GOOD["features"])
    offsets = tf.constant(GOOD["offsets"])
    bad_rois = tf.constant([[0, 0, 0, 3, 3], [5, 1, 1, 4, 4]], tf.float64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rois: batch index"):
        ops.tf_dcn_deformable_ps_ro_i_pool_grad(features=features, rois=bad_rois, offsets=offsets,
                                                grad_output=tf.zeros([2, 2, 2, 2], tf.float64),
                                                **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad_output: expected shape"):
        ops.tf_dcn_deformable_ps_ro_i_pool_grad(
            features=features, rois=tf.constant(GOOD["rois"], tf.float64), offsets=offsets,
            grad_output=tf.zeros([2, 2, 2, 3], tf.float64), **attrs)


BAD_ARGS = [
    (dict(output_dim=0), "output_dim"),
    (dict(group_size=0), "group_size"),
    (dict(group_size=True), "group_size"),
    (dict(pooled_size=0), "pooled_size"),
    (dict(pooled_size=-2), "pooled_size"),
    (dict(part_size=0), "part_size"),
    (dict(sample_per_part=0), "sample_per_part"),
    (dict(sample_per_part=1.5), "sample_per_part"),
    (dict(spatial_scale=-0.0625), "spatial_scale"),
    (dict(spatial_scale=float("nan")), "spatial_scale"),
    (dict(trans_std=-0.1), "trans_std"),
    (dict(trans_std=float("inf")), "trans_std"),
]


@pytest.mark.parametrize("changes, argument", BAD_ARGS, ids=[a for _, a in BAD_ARGS])
def test_bad_arguments_raise_value_error(changes, argument):
    features, rois, offsets = _inputs({})
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        tf_dcn.deform_psroi_pool(features, rois, offsets, **dict(GOOD_KW, **changes))


@pytest.mark.parametrize("changes, argument", [
    (dict(pooled_size=0), "pooled_size"),
    (dict(group_size=0), "group_size"),
    (dict(part_size=-1), "part_size"),
    (dict(sample_per_part=0), "sample_per_part"),
    (dict(output_dim=0), "output_dim"),
    (dict(spatial_scale=-1.0), "spatial_scale"),
    (dict(trans_std=-0.5), "trans_std"),
    (dict(trans_std=float("nan")), "trans_std"),
], ids=["pooled_size", "group_size", "part_size", "sample_per_part", "output_dim", "spatial_scale",
        "trans_std", "trans_std_nan"])
def test_kernel_rejects_bad_attributes(changes, argument):
    attrs = dict(dict(output_dim=2, group_size=2, pooled_size=2, part_size=2, use_offsets=True),
                 **changes)
    with pytest.raises(tf.errors.InvalidArgumentError, match=argument):
        tf_dcn.load_ops().tf_dcn_deformable_ps_ro_i_pool(
            features=tf.constant(GOOD["features"]), rois=tf.constant(GOOD["rois"], tf.float64),
            offsets=tf.constant(GOOD["offsets"]), **attrs)


def test_unsupported_dtypes():
    with pytest.raises(ValueError, match="features: dtype"):
        tf_dcn.deform_psroi_pool(tf.zeros([1, 4, 4, 4], tf.int32), GOOD["rois"][:1], output_dim=1,
                                 group_size=2)
    with pytest.raises(ValueError, match="rois: expected a real"):
        tf_dcn.deform_psroi_pool(tf.zeros([1, 4, 4, 4]), tf.constant([["a"] * 5]), output_dim=1,
                                 group_size=2)


def test_deform_roi_pool_needs_static_channels():
    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, None], tf.float32)])
    def run(x):
        return tf_dcn.deform_roi_pool(x, [[0, 0, 0, 2, 2]], pooled_size=2)

    with pytest.raises(ValueError, match="features: deform_roi_pool needs a statically known"):
        run.get_concrete_function()


@pytest.mark.parametrize("rois_shape, offsets_shape, argument", [
    ([2, 4], [2, 2, 2, 2], "rois"),
    ([2, 5], [2, 3, 2, 2], "offsets"),
    ([2, 5], [2, 2, 2, 3], "offsets"),
    ([2, 5], [3, 2, 2, 2], "Dimensions must be equal"),
])
def test_shape_function_is_strict(rois_shape, offsets_shape, argument):
    """The raw op in a graph: static shape errors surface at trace time."""
    ops = tf_dcn.load_ops()

    @tf.function
    def run():
        return ops.tf_dcn_deformable_ps_ro_i_pool(
            features=tf.zeros([1, 4, 4, 8]), rois=tf.zeros(rois_shape),
            offsets=tf.zeros(offsets_shape), output_dim=2, group_size=2, pooled_size=2,
            part_size=2, use_offsets=True)

    with pytest.raises(ValueError, match=argument):
        run.get_concrete_function()


def test_shape_function_infers_shapes():
    ops = tf_dcn.load_ops()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 8]),
                                  tf.TensorSpec([None, 5]), tf.TensorSpec(None)])
    def run(x, r, o):
        y = ops.tf_dcn_deformable_ps_ro_i_pool(features=x, rois=r, offsets=o, output_dim=2,
                                               group_size=2, pooled_size=3, part_size=2,
                                               use_offsets=True)
        gx, go = ops.tf_dcn_deformable_ps_ro_i_pool_grad(
            features=x, rois=r, offsets=o, grad_output=y, output_dim=2, group_size=2,
            pooled_size=3, part_size=2, use_offsets=True)
        assert y.shape.as_list() == [None, 3, 3, 2]
        assert gx.shape.as_list() == [None, None, None, 8]
        assert go.shape.as_list() == [None, 2, 2, None]
        return y

    run.get_concrete_function()


def test_backward_in_chunks_of_rois_agrees(monkeypatch):
    """The backward pass runs in chunks of RoIs sized to the workspace limit
    (TF_DCN_CPU_WORKSPACE_BYTES): one chunk of all 12 RoIs and chunks of 10 compute the same
    gradients, up to rounding."""
    rng = np.random.default_rng(11)
    features = tf.constant(rng.uniform(-1, 1, (2, 16, 16, 2 * 2 * 8)))
    rois = np.stack([rng.integers(0, 2, 12), rng.uniform(-4, 20, 12), rng.uniform(-4, 20, 12),
                     rng.uniform(20, 60, 12), rng.uniform(20, 60, 12)], axis=1)
    offsets = tf.constant(rng.normal(0, 0.3, (12, 2, 2, 2)))
    upstream = tf.constant(rng.uniform(-1, 1, (12, 2, 2, 8)))

    def grads():
        with tf.GradientTape() as tape:
            tape.watch([features, offsets])
            out = tf_dcn.deform_psroi_pool(features, rois, offsets, output_dim=8, group_size=2,
                                           pooled_size=2, sample_per_part=3, trans_std=0.1,
                                           spatial_scale=0.5)
        return [g.numpy() for g in tape.gradient(out, [features, offsets], upstream)]

    monkeypatch.delenv("TF_DCN_CPU_WORKSPACE_BYTES", raising=False)
    one_chunk = grads()
    # One RoI's worst case (4 bins of 4*9 cells of 40 bytes, their sums, its geometry) is
    # 5968 bytes.
    monkeypatch.setenv("TF_DCN_CPU_WORKSPACE_BYTES", "65536")
    chunked = grads()
    for a, b in zip(one_chunk, chunked):
        assert np.any(b != 0)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group_size, output_dim", [(1, 4), (2, 3)], ids=["roi", "psroi"])
def test_non_finite_features_match_the_reference(group_size, output_dim):
    """Inf and NaN feature values. The CPU backward adds each bin's corner weights per pixel
    before it visits the channels; its "poison" flags keep NaN wherever sample-by-sample
    arithmetic (the NumPy reference) multiplies a non-finite value by a zero weight or adds
    terms of both signs. Box corners on the pixel grid put samples exactly on pixel rows and
    columns, where floor and ceil corners coincide and weights are zero. Outputs and both
    gradients agree with the reference, NaNs in the same places."""
    rng = np.random.default_rng(17)
    channels = output_dim * group_size ** 2
    features = rng.normal(size=(2, 10, 10, channels))
    features[0, 3, 4, :] = np.inf
    features[0, 6, 2, 0] = -np.inf
    features[0, 4, 5, 1] = -np.inf
    features[1, 5, 5, channels - 1] = np.nan
    rois = np.array([[0, 4, 4, 12, 12], [0, 2, 6, 15, 14], [1, 6, 6, 14, 14],
                     [1, 0, 0, 19, 19], [0, 8.5, 4.5, 10.5, 8.5], [0, 12, 0, 19, 9]])
    offsets = rng.normal(0, 0.3, size=(6, 2, 2, 2))
    offsets[0] = 0.0
    upstream = rng.choice([-1.0, 1.0, 0.5], size=(6, 2, 2, output_dim))
    # trans_std and spatial_scale exact in the ops' float attributes.
    kw = dict(output_dim=output_dim, group_size=group_size, pooled_size=2, sample_per_part=3,
              trans_std=0.125, spatial_scale=0.5)
    f, o = tf.constant(features), tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch([f, o])
        out = tf_dcn.deform_psroi_pool(f, tf.constant(rois), o, **kw)
    grads = tape.gradient(out, [f, o], tf.constant(upstream))
    with np.errstate(invalid="ignore"):  # Inf - Inf and 0 * Inf in the reference, as intended
        expected = ref.deform_psroi_pool_ref(features, rois, offsets, **kw)[0]
        expected_grads = ref.deform_psroi_pool_grad_ref(features, rois, offsets, upstream, **kw)
    assert np.isnan(expected).any() and np.isinf(expected).any()
    assert np.isnan(expected_grads[1]).any() and np.isfinite(expected_grads[1]).any()
    for got, want, what in zip([out] + grads, (expected,) + tuple(expected_grads),
                               ["output", "d features", "d offsets"]):
        got = got.numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{what}: Inf")
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-10, atol=1e-10,
                                   err_msg=what)
