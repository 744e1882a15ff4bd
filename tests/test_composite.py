"""The composite (pure TensorFlow) implementations against the custom ops: forward in float64 and
float32, autodiff gradients against the ops' gradients, non-finite inputs, argument checks, XLA,
and the layers' ``implementation`` switch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tests import test_deform_conv2d_errors as conv_errors
from tests import test_deform_psroi_pool as pool_errors
from tests.conv_reference import deform_conv2d as conv_reference
from tf_dcn import composite
from tf_dcn._arguments import conv_output_size, normalize_pair, normalize_padding
from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling

TOL = {tf.float64: 1e-12, tf.float32: 1e-5}


def assert_close(got, expected, rel, what=""):
    """|got - expected| <= rel * max|expected| elementwise, NaNs in the same places."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaN pattern")
    finite = ~np.isnan(expected)
    scale = max(np.abs(expected[finite]).max(initial=0.0), 1e-30)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=rel * scale,
                               err_msg=what)


def off_kink(rng, shape, low=-3, high=3):
    """Offsets integer + U(0.15, 0.85): never on a bilinear kink."""
    return rng.integers(low, high, size=shape) + rng.uniform(0.15, 0.85, size=shape)


# ------------------------------------------------------------------------------------------------
# deform_conv2d
# ------------------------------------------------------------------------------------------------
CONV_CASES = {
    # name: (N, H, W, C, Cout, (kh, kw), op kwargs, v2, bias)
    "v1-3x3": (2, 6, 7, 4, 5, (3, 3), dict(padding=1), False, True),
    "v2-nonsquare-stride-dilation-same": (2, 7, 8, 4, 3, (3, 2),
                                          dict(strides=(2, 1), padding="same",
                                               dilation_rate=(1, 2)), True, True),
    "v2-groups2-dg3-explicit": (1, 6, 6, 6, 4, (2, 3),
                                dict(groups=2, deformable_groups=3,
                                     padding=((1, 0), (2, 1))), True, False),
    "v1-valid-stride2": (3, 9, 8, 3, 2, (3, 3), dict(strides=2), False, False),
    "v2-batch0": (0, 5, 5, 2, 2, (3, 3), dict(padding="same"), True, True),
}


def conv_inputs(name, dtype, rng):
    n, h, w, c, cout, (kh, kw), kwargs, v2, with_bias = CONV_CASES[name]
    groups, dg = kwargs.get("groups", 1), kwargs.get("deformable_groups", 1)
    mode, explicit = normalize_padding(kwargs.get("padding", "valid"))
    sh, sw = normalize_pair(kwargs.get("strides", 1), "strides")
    dh, dw = normalize_pair(kwargs.get("dilation_rate", 1), "dilation_rate")
    pads = explicit or [0, 0, 0, 0]
    ho = conv_output_size(h, kh, sh, dh, mode, pads[0], pads[1])
    wo = conv_output_size(w, kw, sw, dw, mode, pads[2], pads[3])
    args = dict(
        inputs=rng.normal(size=(n, h, w, c)),
        offsets=off_kink(rng, (n, ho, wo, 2 * dg * kh * kw)),
        kernel=rng.normal(size=(kh, kw, c // groups, cout)),
        mask=rng.uniform(0, 1, size=(n, ho, wo, dg * kh * kw)) if v2 else None,
        bias=rng.normal(size=(cout,)) if with_bias else None,
    )
    args = {k: None if v is None else tf.constant(v, dtype) for k, v in args.items()}
    return args, kwargs


def conv_forward_and_grads(fn, args, kwargs, weight):
    names = [k for k, v in args.items() if v is not None]
    with tf.GradientTape() as tape:
        tape.watch([args[k] for k in names])
        out = fn(**args, **kwargs)
        loss = tf.reduce_sum(out * weight)
    return out, dict(zip(names, tape.gradient(loss, [args[k] for k in names])))


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_matches_op_forward_and_gradients(name, dtype):
    rng = np.random.default_rng(hash(name) % 2**32)
    args, kwargs = conv_inputs(name, dtype, rng)
    expected = tf_dcn.deform_conv2d(**args, **kwargs)
    weight = tf.constant(rng.normal(size=expected.shape), dtype)
    out_op, grads_op = conv_forward_and_grads(tf_dcn.deform_conv2d, args, kwargs, weight)
    out, grads = conv_forward_and_grads(composite.deform_conv2d, args, kwargs, weight)
    assert out.dtype == dtype and out.shape == out_op.shape
    assert_close(out, out_op, TOL[dtype], "output")
    for key in grads_op:
        assert_close(grads[key], grads_op[key], TOL[dtype] * 10, f"d {key}")


def test_conv_matches_numpy_reference():
    rng = np.random.default_rng(3)
    args, kwargs = conv_inputs("v2-nonsquare-stride-dilation-same", tf.float64, rng)
    out = composite.deform_conv2d(**args, **kwargs)
    ref = conv_reference(args["inputs"].numpy(), args["offsets"].numpy(), args["kernel"].numpy(),
                         mask=args["mask"].numpy(), bias=args["bias"].numpy(), strides=(2, 1),
                         padding="same", dilation=(1, 2))
    assert_close(out, ref, 1e-12)


def test_conv_zero_offsets_is_conv2d_and_border_rule():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 5, 5, 3))
    k = rng.normal(size=(3, 3, 3, 2))
    out = composite.deform_conv2d(x, np.zeros((1, 5, 5, 18)), k, padding="same")
    assert_close(out, tf.nn.conv2d(x, k, 1, "SAME"), 1e-12)
    # One tap, positions on both sides of the strict limits -1 < y < H.
    x1 = np.ones((1, 4, 4, 1))
    for dy, expected in [(-1.0, 0.0), (-0.75, 0.25), (3.0, 1.0), (3.25, 0.75), (4.0, 0.0)]:
        off = np.zeros((1, 4, 4, 2))
        off[..., 0] = dy
        got = composite.deform_conv2d(x1, off, np.ones((1, 1, 1, 1)))  # output (0, 0): y = dy
        np.testing.assert_allclose(got.numpy()[0, 0, 0], [expected], atol=1e-12)


@pytest.mark.parametrize("dtype, rel", [(tf.float16, 2e-2), (tf.bfloat16, 2e-2)])
def test_conv_half_types_match_op(dtype, rel):
    rng = np.random.default_rng(5)
    args, kwargs = conv_inputs("v2-nonsquare-stride-dilation-same", dtype, rng)
    got = composite.deform_conv2d(**args, **kwargs)
    assert got.dtype == dtype
    assert_close(tf.cast(got, tf.float32), tf.cast(tf_dcn.deform_conv2d(**args, **kwargs),
                                                   tf.float32), rel)


def test_conv_non_finite_offsets_match_op():
    """NaN offsets: NaN outputs and NaN offset/mask gradients, no input gradient; Inf or huge
    offsets: outside (0, zero gradient). Never an out-of-range gather."""
    rng = np.random.default_rng(6)
    off = rng.uniform(-1, 1, size=(1, 5, 5, 18))
    off[0, 1, 1, 4] = np.nan         # dy of one tap
    off[0, 2, 2, 9] = np.nan         # dx of another
    off[0, 3, 1, 0] = -np.inf
    off[0, 2, 3, 7] = np.inf
    off[0, 0, 4, 2] = 1e300
    off[0, 4, 0, 1] = np.inf
    off[0, 4, 0, 0] = np.nan         # NaN wins over Inf, as in the op
    args = dict(inputs=tf.constant(rng.normal(size=(1, 5, 5, 2))), offsets=tf.constant(off),
                kernel=tf.constant(rng.normal(size=(3, 3, 2, 3))),
                mask=tf.constant(rng.uniform(size=(1, 5, 5, 9))), bias=None)
    weight = tf.ones([1, 5, 5, 3], tf.float64)
    out_op, grads_op = conv_forward_and_grads(tf_dcn.deform_conv2d, args, dict(padding=1), weight)
    out, grads = conv_forward_and_grads(composite.deform_conv2d, args, dict(padding=1), weight)
    assert np.isnan(out_op.numpy()).any()
    assert_close(out, out_op, 1e-12, "output")
    for key in grads_op:
        assert_close(grads[key], grads_op[key], 1e-12, f"d {key}")
    assert np.isnan(grads["offsets"].numpy()[0, 1, 1, 4:6]).all()
    assert np.isnan(grads["offsets"].numpy()[0, 2, 2, 8:10]).all()


def test_conv_unknown_spatial_sizes_in_tf_function():
    rng = np.random.default_rng(7)
    k = tf.constant(rng.normal(size=(3, 3, 4, 2)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32),
                                  tf.TensorSpec([None, None, None, 18], tf.float32)])
    def run(x, off):
        return composite.deform_conv2d(x, off, k, strides=2, padding="same")

    for shape in [(1, 7, 9, 4), (2, 4, 4, 4)]:
        x = rng.normal(size=shape).astype(np.float32)
        ho, wo = -(-shape[1] // 2), -(-shape[2] // 2)
        off = rng.uniform(-2, 2, size=(shape[0], ho, wo, 18)).astype(np.float32)
        expected = tf_dcn.deform_conv2d(x, off, k, strides=2, padding="same")
        assert_close(run(x, off), expected, 1e-5)


@pytest.mark.parametrize("case, changes, argument", conv_errors.BAD_SHAPES,
                         ids=[c[0] for c in conv_errors.BAD_SHAPES])
def test_conv_bad_shapes_raise_value_error(case, changes, argument):
    """Every statically wrong shape raises a ValueError naming the argument (the op wrapper
    raises ValueError for the same shapes, or the kernel InvalidArgumentError at run time)."""
    args = {**conv_errors._valid_args(), **changes}
    with pytest.raises(ValueError, match=argument):
        composite.deform_conv2d(**args)


@pytest.mark.parametrize("changes, argument", [
    (dict(strides=0), "strides"),
    (dict(strides=(1, 2, 3)), "strides"),
    (dict(dilation_rate=(2, 0)), "dilation_rate"),
    (dict(padding="full"), "padding"),
    (dict(padding=((1, 1), (1, -2))), "padding"),
    (dict(groups=0), "groups"),
    (dict(deformable_groups=0), "deformable_groups"),
    (dict(inputs=np.zeros((2, 6, 6, 4), np.int32)), "inputs"),
])
def test_conv_bad_arguments_same_error_as_op(changes, argument):
    args = {**conv_errors._valid_args(), **changes}
    with pytest.raises(ValueError, match=argument) as op_error:
        tf_dcn.deform_conv2d(**args)
    with pytest.raises(ValueError, match=argument) as composite_error:
        composite.deform_conv2d(**args)
    assert str(composite_error.value) == str(op_error.value)


def test_conv_needs_static_kernel_shape():
    @tf.function(input_signature=[tf.TensorSpec([1, 5, 5, 2]), tf.TensorSpec([1, 5, 5, 18]),
                                  tf.TensorSpec(None)])
    def run(x, off, k):
        return composite.deform_conv2d(x, off, k, padding=1)

    with pytest.raises(ValueError, match="statically known"):
        run.get_concrete_function()


# ------------------------------------------------------------------------------------------------
# deform_psroi_pool / deform_roi_pool
# ------------------------------------------------------------------------------------------------
def make_rois(rng, count, batch, low=-12.0, high=30.0):
    x1 = rng.uniform(low, high, count)
    y1 = rng.uniform(low, high, count)
    rois = np.stack([rng.integers(0, batch, count), x1, y1, x1 + rng.uniform(-2, 25, count),
                     y1 + rng.uniform(-2, 25, count)], axis=1)
    rois[0, 1:] = [2.5, -3.5, 14.5, 9.5]      # halves: C round() goes away from zero
    return rois


POOL_CASES = {
    # name: (kwargs, num_classes (0: no offsets), C)
    "psroi-classaware-part2": (dict(output_dim=4, group_size=3, pooled_size=3, part_size=2,
                                    sample_per_part=2, trans_std=0.2, spatial_scale=0.5), 2, 36),
    "psroi-pooled4-group2": (dict(output_dim=3, group_size=2, pooled_size=4, sample_per_part=3,
                                  trans_std=0.1, spatial_scale=1 / 3), 1, 12),
    "psroi-no-offsets": (dict(output_dim=2, group_size=3, sample_per_part=4,
                              spatial_scale=0.25), 0, 18),
}


def pool_forward_and_grads(fn, features, rois, offsets, kwargs, weight):
    sources = [features] + ([] if offsets is None else [offsets])
    with tf.GradientTape() as tape:
        tape.watch(sources)
        out = fn(features, rois, offsets, **kwargs)
        loss = tf.reduce_sum(out * weight)
    return out, tape.gradient(loss, sources)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_psroi_matches_op_forward_and_gradients(name, dtype):
    kwargs, classes, channels = POOL_CASES[name]
    rng = np.random.default_rng(len(name))
    features = tf.constant(rng.normal(size=(2, 9, 11, channels)), dtype)
    rois = tf.constant(make_rois(rng, 7, 2), tf.float32)
    part = kwargs.get("part_size", kwargs.get("pooled_size", kwargs["group_size"]))
    offsets = None if not classes else tf.constant(
        rng.normal(size=(7, part, part, 2 * classes)), dtype)
    expected = tf_dcn.deform_psroi_pool(features, rois, offsets, **kwargs)
    weight = tf.constant(rng.normal(size=expected.shape), dtype)
    out_op, grads_op = pool_forward_and_grads(tf_dcn.deform_psroi_pool, features, rois, offsets,
                                              kwargs, weight)
    out, grads = pool_forward_and_grads(composite.deform_psroi_pool, features, rois, offsets,
                                        kwargs, weight)
    assert out.dtype == dtype
    assert_close(out, out_op, TOL[dtype], "output")
    for g, g_op, what in zip(grads, grads_op, ["features", "offsets"]):
        assert_close(g, g_op, TOL[dtype] * 10, f"d {what}")


def test_roi_pool_matches_op_with_float64_rois_and_gradients():
    rng = np.random.default_rng(11)
    features = tf.constant(rng.normal(size=(2, 8, 10, 5)), tf.float32)
    rois = tf.constant(make_rois(rng, 6, 2), tf.float64)      # kept float64 by both
    offsets = tf.constant(rng.normal(size=(6, 3, 3, 2)), tf.float32)
    kwargs = dict(pooled_size=3, sample_per_part=2, trans_std=0.3, spatial_scale=0.5)
    weight = tf.constant(rng.normal(size=(6, 3, 3, 5)), tf.float32)
    out_op, grads_op = pool_forward_and_grads(tf_dcn.deform_roi_pool, features, rois, offsets,
                                              kwargs, weight)
    out, grads = pool_forward_and_grads(composite.deform_roi_pool, features, rois, offsets,
                                        kwargs, weight)
    assert_close(out, out_op, 1e-5)
    for g, g_op in zip(grads, grads_op):
        assert_close(g, g_op, 1e-4)


def test_pool_integer_sample_positions_gradient_matches_op():
    """Integer-aligned boxes and zero offsets put samples exactly on integers (and on the skip
    limits and the clamped edges): the op's ceil corner gives a zero one-sided derivative there,
    and so does the composite's autodiff."""
    rng = np.random.default_rng(12)
    features = tf.constant(rng.normal(size=(1, 6, 6, 4)))
    rois = tf.constant([[0, 0, 0, 3, 3], [0, -1, 2, 6, 5], [0, 1, 1, 1, 1]], tf.float64)
    offsets = tf.zeros([3, 2, 2, 2], tf.float64)
    kwargs = dict(pooled_size=2, sample_per_part=2, trans_std=0.5, spatial_scale=1.0)
    weight = tf.constant(rng.normal(size=(3, 2, 2, 4)))
    out_op, grads_op = pool_forward_and_grads(tf_dcn.deform_roi_pool, features, rois, offsets,
                                              kwargs, weight)
    out, grads = pool_forward_and_grads(composite.deform_roi_pool, features, rois, offsets,
                                        kwargs, weight)
    assert_close(out, out_op, 1e-12)
    for g, g_op in zip(grads, grads_op):
        assert_close(g, g_op, 1e-12)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_pool_skip_limits_are_strict(axis):
    """A sample exactly at -0.5 or W-0.5 is kept, one just beyond is skipped (as the op)."""
    features = tf.constant(np.arange(1, 17, dtype=np.float64).reshape(1, 4, 4, 1))
    results = []
    for position in [-0.5, -0.5 - 1e-9, 3.5, 3.5 + 1e-9]:
        # Box (1, 1, 1, 1): start 0.5, size 1, one sample at 0.5 + offset * trans_std * 1.
        offsets = np.zeros((1, 1, 1, 2))
        offsets[0, 0, 0, 0 if axis == "x" else 1] = position - 0.5
        kw = dict(pooled_size=1, sample_per_part=1, trans_std=1.0, spatial_scale=1.0)
        rois = tf.constant([[0, 1, 1, 1, 1]], tf.float64)
        args = (features, rois, tf.constant(offsets))
        got = composite.deform_roi_pool(*args, **kw)
        assert_close(got, tf_dcn.deform_roi_pool(*args, **kw), 1e-12, f"position {position}")
        results.append(float(got.numpy().ravel()[0]))
    assert results[0] != 0 and results[1] == 0 and results[2] != 0 and results[3] == 0, results


def test_pool_non_finite_boxes_and_offsets_match_op():
    rng = np.random.default_rng(13)
    features = tf.constant(rng.normal(size=(2, 8, 8, 4)))
    rois = np.array([[0, 1, 1, 6, 6], [1, np.nan, 1, 5, 5], [0, 1, 1, np.inf, 5],
                     [1, 0, 0, 7, 7], [0, 2, 2, 5, 5], [1, -3e38, 0, 3e38, 4],
                     [0, 1, 1, 5, 5]], np.float64)
    offsets = rng.normal(size=(7, 2, 2, 2))
    offsets[3, 0, 1, 0] = np.nan
    offsets[4, 1, 1, 1] = np.inf
    offsets[4, 0, 0, 0] = -1e300
    kwargs = dict(pooled_size=2, sample_per_part=2, spatial_scale=0.5)
    weight = tf.ones([7, 2, 2, 4], tf.float64)
    args = (features, tf.constant(rois), tf.constant(offsets), kwargs, weight)
    out_op, grads_op = pool_forward_and_grads(tf_dcn.deform_roi_pool, *args)
    out, grads = pool_forward_and_grads(composite.deform_roi_pool, *args)
    assert np.isnan(out_op.numpy()[[1, 2]]).all() and np.isnan(out_op.numpy()[3, 0, 1]).all()
    assert_close(out, out_op, 1e-12, "output")
    for g, g_op, what in zip(grads, grads_op, ["features", "offsets"]):
        assert_close(g, g_op, 1e-12, f"d {what}")

    # trans_std = 0 with infinite offsets: 0 * Inf is NaN in both.
    kw0 = dict(kwargs, trans_std=0.0)
    inf_offsets = tf.constant(np.full((7, 2, 2, 2), np.inf))
    assert_close(composite.deform_roi_pool(features, rois, inf_offsets, **kw0),
                 tf_dcn.deform_roi_pool(features, rois, inf_offsets, **kw0), 1e-12)


def test_pool_invalid_batch_index_gives_nan_rois():
    """The op raises InvalidArgumentError; the composite (which must run inside TFLite/XLA)
    returns NaN for every bin of such a RoI, passes no gradient to the features from it and a
    NaN gradient to its offsets, and never indexes out of range."""
    rng = np.random.default_rng(14)
    features = tf.constant(rng.normal(size=(2, 6, 6, 3)))
    good = [[1, 0, 0, 5, 5], [0, 1, 2, 4, 5]]
    bad = [[2, 0, 0, 5, 5], [-1, 0, 0, 5, 5], [0.5, 0, 0, 5, 5], [np.nan, 0, 0, 5, 5],
           [np.inf, 0, 0, 5, 5], [1e30, 0, 0, 5, 5]]
    offsets = tf.constant(rng.normal(size=(8, 2, 2, 2)))
    kwargs = dict(pooled_size=2, sample_per_part=2)
    for row in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match="rois: batch index"):
            tf_dcn.deform_roi_pool(features, [row], offsets[:1], **kwargs)
    rois = tf.constant(good + bad, tf.float64)
    weight = tf.ones([8, 2, 2, 3], tf.float64)
    out, (d_features, d_offsets) = pool_forward_and_grads(
        composite.deform_roi_pool, features, rois, offsets, kwargs, weight)
    out_good, (d_features_good, d_offsets_good) = pool_forward_and_grads(
        tf_dcn.deform_roi_pool, features, tf.constant(good, tf.float64), offsets[:2], kwargs,
        weight[:2])
    assert np.isnan(out.numpy()[2:]).all() and np.isnan(d_offsets.numpy()[2:]).all()
    assert_close(out[:2], out_good, 1e-12)
    assert_close(d_features, d_features_good, 1e-12)
    assert_close(d_offsets[:2], d_offsets_good, 1e-12)


def test_pool_empty_inputs():
    features = tf.zeros([1, 0, 5, 4], tf.float32)
    got = composite.deform_psroi_pool(features, [[0, 1, 1, 3, 3]], output_dim=1, group_size=2)
    np.testing.assert_array_equal(got.numpy(), np.zeros([1, 2, 2, 1]))
    got = composite.deform_roi_pool(tf.ones([1, 5, 5, 3]), tf.zeros([0, 5]),
                                    tf.zeros([0, 2, 2, 2]), pooled_size=2)
    assert got.shape == (0, 2, 2, 3)


def test_pool_half_types_match_op():
    rng = np.random.default_rng(15)
    for dtype in (tf.float16, tf.bfloat16):
        features = tf.constant(rng.normal(size=(1, 8, 8, 8)), dtype)
        rois = make_rois(rng, 4, 1, low=0, high=5)
        offsets = tf.constant(rng.normal(size=(4, 2, 2, 2)), dtype)
        kw = dict(output_dim=2, group_size=2, spatial_scale=0.5)
        got = composite.deform_psroi_pool(features, rois, offsets, **kw)
        assert got.dtype == dtype
        assert_close(tf.cast(got, tf.float32),
                     tf.cast(tf_dcn.deform_psroi_pool(features, rois, offsets, **kw), tf.float32),
                     2e-2)


@pytest.mark.parametrize("case, changes, argument", pool_errors.BAD_SHAPES,
                         ids=[c[0] for c in pool_errors.BAD_SHAPES])
def test_pool_bad_shapes_same_error_as_op(case, changes, argument):
    features, rois, offsets = pool_errors._inputs(changes)
    with pytest.raises(ValueError) as op_error:
        tf_dcn.deform_psroi_pool(features, rois, offsets, **pool_errors.GOOD_KW)
    with pytest.raises(ValueError) as composite_error:
        composite.deform_psroi_pool(features, rois, offsets, **pool_errors.GOOD_KW)
    assert str(composite_error.value) == str(op_error.value)
    assert str(op_error.value).startswith(argument)


@pytest.mark.parametrize("changes, argument", pool_errors.BAD_ARGS,
                         ids=[a for _, a in pool_errors.BAD_ARGS])
def test_pool_bad_arguments_same_error_as_op(changes, argument):
    features, rois, offsets = pool_errors._inputs({})
    kw = dict(pool_errors.GOOD_KW, **changes)
    with pytest.raises(ValueError, match=f"^{argument} must be") as op_error:
        tf_dcn.deform_psroi_pool(features, rois, offsets, **kw)
    with pytest.raises(ValueError, match=f"^{argument} must be") as composite_error:
        composite.deform_psroi_pool(features, rois, offsets, **kw)
    assert str(composite_error.value) == str(op_error.value)


def test_pool_dtype_and_static_channel_errors():
    with pytest.raises(ValueError, match="features: dtype"):
        composite.deform_psroi_pool(tf.zeros([1, 4, 4, 4], tf.int32), [[0, 0, 0, 1, 1]],
                                    output_dim=1, group_size=2)

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, None], tf.float32)])
    def roi_pool(x):
        return composite.deform_roi_pool(x, [[0, 0, 0, 2, 2]], pooled_size=2)

    with pytest.raises(ValueError, match="features: deform_roi_pool needs a statically known"):
        roi_pool.get_concrete_function()

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 4]), tf.TensorSpec([1, 2, 2, None])])
    def unknown_classes(x, off):
        return composite.deform_psroi_pool(x, [[0, 0, 0, 2, 2]], off, output_dim=1, group_size=2)

    with pytest.raises(ValueError, match="offsets: the composite"):
        unknown_classes.get_concrete_function()


def test_pool_unknown_num_rois_in_tf_function():
    rng = np.random.default_rng(16)
    features = rng.normal(size=(2, 7, 7, 18)).astype(np.float32)
    kw = dict(output_dim=2, group_size=3, sample_per_part=2, spatial_scale=0.5)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 18]),
                                  tf.TensorSpec([None, 5]), tf.TensorSpec([None, 3, 3, 2])])
    def run(f, r, o):
        return composite.deform_psroi_pool(f, r, o, **kw)

    for count in (1, 5):
        rois = make_rois(rng, count, 2, low=0, high=10).astype(np.float32)
        offsets = rng.normal(size=(count, 3, 3, 2)).astype(np.float32)
        assert_close(run(features, rois, offsets),
                     tf_dcn.deform_psroi_pool(features, rois, offsets, **kw), 1e-5)


# ------------------------------------------------------------------------------------------------
# XLA
# ------------------------------------------------------------------------------------------------
def test_xla_compiles_and_matches_forward_and_gradients():
    rng = np.random.default_rng(17)
    args, kwargs = conv_inputs("v2-groups2-dg3-explicit", tf.float32, rng)
    weight = tf.constant(rng.normal(size=(1, 6, 7, 4)), tf.float32)

    def conv_step(inputs, offsets, kernel, mask):
        a = dict(inputs=inputs, offsets=offsets, kernel=kernel, mask=mask, bias=None)
        return conv_forward_and_grads(composite.deform_conv2d, a, kwargs, weight)

    xla_conv = tf.function(conv_step, jit_compile=True)
    out, grads = xla_conv(args["inputs"], args["offsets"], args["kernel"], args["mask"])
    out_op, grads_op = conv_forward_and_grads(tf_dcn.deform_conv2d, args, kwargs, weight)
    assert_close(out, out_op, 1e-5)
    for key in grads_op:
        assert_close(grads[key], grads_op[key], 1e-4, f"d {key}")

    kw, classes, channels = POOL_CASES["psroi-classaware-part2"]
    features = tf.constant(rng.normal(size=(2, 9, 11, channels)), tf.float32)
    rois = tf.constant(make_rois(rng, 5, 2), tf.float32)
    offsets = tf.constant(rng.normal(size=(5, 2, 2, 4)), tf.float32)
    pool_weight = tf.constant(rng.normal(size=(5, 3, 3, 4)), tf.float32)
    xla_pool = tf.function(
        lambda f, o: pool_forward_and_grads(composite.deform_psroi_pool, f, rois, o, kw,
                                            pool_weight), jit_compile=True)
    out, grads = xla_pool(features, offsets)
    out_op, grads_op = pool_forward_and_grads(tf_dcn.deform_psroi_pool, features, rois, offsets,
                                              kw, pool_weight)
    assert_close(out, out_op, 1e-5)
    for g, g_op in zip(grads, grads_op):
        assert_close(g, g_op, 1e-4)


# ------------------------------------------------------------------------------------------------
# Layers: the implementation switch
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, kwargs", [
    (DeformableConv2D, dict(filters=2, kernel_size=3)),
    (DeformableRoIPooling, dict()),
    (DeformablePSRoIPooling, dict(output_dim=2)),
])
def test_layer_implementation_argument(cls, kwargs):
    layer = cls(**kwargs)
    assert layer.implementation == "op" and layer.supports_jit is False
    layer = cls(**kwargs, implementation="composite")
    assert layer.supports_jit is True
    config = layer.get_config()
    assert config["implementation"] == "composite"
    assert cls.from_config(config).implementation == "composite"
    legacy = dict(config)
    legacy.pop("implementation")
    assert cls.from_config(legacy).implementation == "op"
    layer.implementation = "op"
    assert layer.supports_jit is False
    for bad in ("xla", "Composite", None, 1):
        with pytest.raises(ValueError, match="implementation must be 'op' or 'composite'"):
            cls(**kwargs, implementation=bad)
        with pytest.raises(ValueError, match="implementation must be 'op' or 'composite'"):
            layer.implementation = bad


def test_use_implementation_switches_a_model_without_changing_outputs():
    from tests.test_saving import build_model, sample_inputs

    model = build_model(seed=3)
    image, rois = sample_inputs()
    expected = model([image, rois]).numpy()
    assert tf_dcn.use_implementation(model, "composite") == 3
    dcn_layers = [layer for layer in model.layers if hasattr(layer, "implementation")]
    assert len(dcn_layers) == 3
    assert all(layer.implementation == "composite" for layer in dcn_layers)
    assert_close(model([image, rois]), expected, 1e-5)
    assert tf_dcn.use_implementation(model, "op") == 3
    np.testing.assert_array_equal(model([image, rois]).numpy(), expected)
    with pytest.raises(ValueError, match="implementation must be"):
        tf_dcn.use_implementation(model, "tflite")


def small_model(seed: int, implementation: str = "op") -> keras.Model:
    """All three layers, small enough for a quick XLA compilation (one sample per bin; the
    composite's XLA numbers with more samples are checked function by function above)."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(0.0, 0.05, seed=seed)
    image = keras.Input((8, 8, 3), name="image")
    rois = keras.Input((5,), name="rois")
    x = DeformableConv2D(8, 3, padding="same", modulated=True, activation="relu",
                         offset_kernel_initializer=init, implementation=implementation)(image)
    a = DeformableRoIPooling(pooled_size=2, spatial_scale=0.5, sample_per_part=1,
                             offset_kernel_initializer=init,
                             implementation=implementation)([x, rois])
    b = DeformablePSRoIPooling(output_dim=2, group_size=2, spatial_scale=0.5, sample_per_part=1,
                               offset_kernel_initializer=init,
                               implementation=implementation)([x, rois])
    out = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    return keras.Model([image, rois], keras.layers.Dense(3)(out))


def test_composite_model_trains_with_jit_compile():
    """model.compile(jit_compile=True) keeps XLA on (every layer supports_jit) and trains."""
    model = small_model(seed=4, implementation="composite")
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    rois = np.array([[0, 1.0, 2.0, 12.0, 13.0], [1, 4.0, 0.0, 15.0, 9.0]], np.float32)
    target = rng.normal(size=(2, 3)).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse", jit_compile=True)
    assert model.jit_compile is True
    losses = model.fit([image, rois], target, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    # The same model with the op refuses XLA (Keras falls back with a warning).
    op_model = small_model(seed=4)
    op_model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert op_model.jit_compile is False
