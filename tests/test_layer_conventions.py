"""The layers follow Keras 3's conventions: integral arguments of any int type, ``input_spec``
checks with Keras' own messages for both input structures, ``compute_output_shape`` that
refuses an empty output, documented casting of external offsets, a public normalised padding;
and tf_dcn's modules use each other's (and TensorFlow's) public names only."""

from __future__ import annotations

import ast
import json
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tf_dcn import composite, viz
from tf_dcn._arguments import FLOAT_DTYPES, non_negative_float32, positive_int32
from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling

PACKAGE = pathlib.Path(tf_dcn.__file__).parent
RNG = np.random.default_rng(7)
ROIS = np.array([[0, 1.2, 1.0, 8.4, 9.1], [0, 3.0, 3.0, 4.0, 4.6]], np.float32)


def _x(shape, dtype=np.float32):
    return RNG.uniform(-1, 1, size=shape).astype(dtype)


def _incompatible(index, name, expected):
    """Keras' input_spec message (keras.src.layers.input_spec.assert_input_compatibility)."""
    return (rf"Input {index} with name '{name}' of layer '[a-z0-9_]+' is incompatible with the "
            rf"layer: expected {expected}")


# ------------------------------------------------------------------------------------------------
# DeformableConv2D: arguments
# ------------------------------------------------------------------------------------------------
def test_conv_accepts_numpy_integers_and_stores_python_ints():
    numpy_layer = DeformableConv2D(
        np.int64(8), np.int32(3), strides=(np.int64(1), 1), dilation_rate=np.int16(1),
        groups=np.int64(2), deformable_groups=np.uint8(2), padding=np.int64(1), name="dcn")
    int_layer = DeformableConv2D(8, 3, strides=1, dilation_rate=1, groups=2, deformable_groups=2,
                                 padding=1, name="dcn")
    config = numpy_layer.get_config()
    for key in ("filters", "groups", "deformable_groups"):
        assert type(config[key]) is int, key
    assert config["kernel_size"] == (3, 3) and all(type(v) is int for v in config["kernel_size"])
    json.dumps(config)  # a .keras file's config is JSON
    x = _x((1, 6, 6, 4))
    numpy_layer.build(x.shape)
    int_layer.build(x.shape)
    int_layer.set_weights(numpy_layer.get_weights())
    np.testing.assert_array_equal(numpy_layer(x).numpy(), int_layer(x).numpy())
    assert numpy_layer.normalized_padding == int_layer.normalized_padding == ((1, 1), (1, 1))


@pytest.mark.parametrize("argument, value", [
    ("filters", 0), ("filters", -3), ("filters", 2.0), ("filters", True), ("filters", "8"),
    ("groups", np.int64(0)), ("groups", 1.5), ("deformable_groups", False),
    ("deformable_groups", np.float32(2)),
])
def test_conv_rejects_non_positive_or_non_integral_ints(argument, value):
    kwargs = {"filters": 4, "kernel_size": 3, argument: value}
    with pytest.raises(ValueError, match=f"^{argument} must be a positive int, got "):
        DeformableConv2D(**kwargs)


@pytest.mark.parametrize("argument", ["kernel_size", "strides", "dilation_rate"])
@pytest.mark.parametrize("value", [0, (1, 0), (3, 3, 3), 1.5, (2.0, 1), True, "3"])
def test_conv_tuple_arguments_name_the_argument(argument, value):
    kwargs = {"filters": 4, "kernel_size": 3, argument: value}
    with pytest.raises(ValueError, match=f"^{argument} must be "):
        DeformableConv2D(**kwargs)


def test_conv_data_format_is_standardized_like_keras():
    assert DeformableConv2D(4, 3, data_format="Channels_First").data_format == "channels_first"
    assert DeformableConv2D(4, 3).data_format == keras.config.image_data_format()
    assert DeformableConv2D(4, 3, data_format="CHANNELS_LAST").get_config()["data_format"] == (
        "channels_last")
    with pytest.raises(ValueError, match="^data_format must be 'channels_last' or "):
        DeformableConv2D(4, 3, data_format="NCHW")


# ------------------------------------------------------------------------------------------------
# DeformableConv2D: input_spec
# ------------------------------------------------------------------------------------------------
def test_conv_rank_errors_are_keras_input_spec_errors():
    with pytest.raises(ValueError, match=_incompatible(0, "x", "ndim=4, found ndim=3")):
        DeformableConv2D(4, 3)(_x((5, 5, 3)))
    with pytest.raises(ValueError, match=_incompatible(0, "x", "ndim=4, found ndim=3")):
        DeformableConv2D(4, 3)(keras.Input((5, 3)))
    with pytest.raises(ValueError, match=_incompatible(0, "x", "ndim=4, found ndim=5")):
        DeformableConv2D(4, 3)(keras.Input((2, 5, 5, 3)))
    x = _x((1, 5, 5, 2))
    with pytest.raises(ValueError, match=_incompatible(1, "offsets", "ndim=4, found ndim=3")):
        DeformableConv2D(4, 3)([x, _x((3, 3, 18))])
    with pytest.raises(ValueError, match=_incompatible(2, "mask", "ndim=4, found ndim=2")):
        DeformableConv2D(4, 3)([x, _x((1, 3, 3, 18)), _x((3, 9))])


def test_conv_channel_errors_are_keras_input_spec_errors():
    x = _x((1, 5, 5, 2))
    axis_value = "axis {} of input shape to have value {}"
    with pytest.raises(ValueError, match=_incompatible(1, "offsets", axis_value.format(-1, 18))):
        DeformableConv2D(4, 3)([x, _x((1, 3, 3, 17))])
    with pytest.raises(ValueError, match=_incompatible(2, "mask", axis_value.format(-1, 18))):
        DeformableConv2D(4, 3, deformable_groups=2)([x, _x((1, 3, 3, 36)), _x((1, 3, 3, 9))])
    with pytest.raises(ValueError, match=_incompatible(1, "offsets", axis_value.format(1, 18))):
        DeformableConv2D(4, 3, data_format="channels_first")(
            [_x((1, 2, 5, 5)), _x((1, 3, 3, 18))])
    # Once built, the input channels are part of the spec (as in keras.layers.Conv2D).
    layer = DeformableConv2D(4, 3)
    layer(x)
    assert layer.input_spec.ndim == 4 and layer.input_spec.axes == {-1: 2}
    with pytest.raises(ValueError, match=_incompatible(0, "x", axis_value.format(-1, 2))):
        layer(_x((1, 5, 5, 3)))
    first = DeformableConv2D(4, 3, data_format="channels_first")
    first(_x((1, 2, 5, 5)))
    assert first.input_spec.axes == {1: 2}


def test_conv_input_structure_errors():
    x = _x((1, 5, 5, 2))
    offsets = _x((1, 3, 3, 18))
    for inputs, count in [([x], 1), ([x, offsets, _x((1, 3, 3, 9)), x], 4)]:
        with pytest.raises(ValueError, match=re.escape(
                f"call it on x, [x, offsets] or [x, offsets, mask]; got a list of {count} inputs")):
            DeformableConv2D(4, 3)(inputs)
    owned = DeformableConv2D(4, 3)
    owned(x)
    with pytest.raises(ValueError, match="was built for a single input x, got a list of 2"):
        owned([x, offsets])
    external = DeformableConv2D(4, 3)
    y = external([x, offsets])
    with pytest.raises(ValueError, match=re.escape("was built for [x, offsets(, mask)], got one")):
        external(x)
    # [x, offsets] and [x, offsets, mask] both stay valid for a layer built on either.
    ones = np.ones((1, 3, 3, 9), np.float32)
    np.testing.assert_allclose(external([x, offsets, ones]).numpy(), y.numpy(), atol=1e-6)
    assert len(external.input_spec) == 3


def test_conv_direct_build_checks_ranks():
    with pytest.raises(ValueError, match=re.escape("expected a 4-D x [N, H, W, C], got shape")):
        DeformableConv2D(4, 3).build((5, 5, 3))
    with pytest.raises(ValueError, match=re.escape("expected a 4-D offsets [N, C, H, W]")):
        DeformableConv2D(4, 3, data_format="channels_first").build([(1, 2, 5, 5), (1, 18, 3)])
    with pytest.raises(ValueError, match="channel dimension of the input must be known"):
        DeformableConv2D(4, 3).build((None, 5, 5, None))


# ------------------------------------------------------------------------------------------------
# DeformableConv2D: output size
# ------------------------------------------------------------------------------------------------
ZERO_OUTPUT = "computed output size would be zero or negative"


@pytest.mark.parametrize("kwargs, shape, message", [
    (dict(kernel_size=5), (1, 3, 3, 2),
     "the input height 3 plus padding 0 + 0 is smaller than the dilated kernel height 5"),
    (dict(kernel_size=(1, 3), dilation_rate=2), (1, 8, 4, 2),
     "the input width 4 plus padding 0 + 0 is smaller than the dilated kernel width 5"),
    (dict(kernel_size=5, padding=((1, 0), (2, 2))), (1, 3, 3, 2),
     "the input height 3 plus padding 1 + 0 is smaller than the dilated kernel height 5"),
    (dict(kernel_size=4, data_format="channels_first"), (1, 2, 8, 3),
     "the input width 3 plus padding 0 + 0 is smaller than the dilated kernel width 4"),
])
def test_conv_refuses_an_empty_output_like_keras(kwargs, shape, message):
    layer = DeformableConv2D(4, **kwargs)
    for call in (layer.compute_output_shape, layer.build, lambda s: layer(_x(s)),
                 lambda s: layer(keras.Input(s[1:]))):
        with pytest.raises(ValueError, match=ZERO_OUTPUT) as info:
            call(shape)
        assert message in str(info.value)
        assert "input shape (" in str(info.value) and str(shape[1:])[1:] in str(info.value)


def test_conv_output_size_checks_that_pass():
    # Exactly the dilated kernel after padding: one output pixel; "same" never empties.
    assert DeformableConv2D(4, 5, padding=1).compute_output_shape((1, 3, 3, 2)) == (1, 1, 1, 4)
    assert DeformableConv2D(4, 7, padding="same").compute_output_shape((1, 3, 3, 2)) == (
        1, 3, 3, 4)
    assert DeformableConv2D(4, 5).compute_output_shape((None, None, None, 2)) == (
        None, None, None, 4)


def test_conv_output_size_is_checked_at_call_when_unknown_at_build():
    layer = DeformableConv2D(4, 5)
    model = keras.Sequential([keras.Input((None, None, 2)), layer])
    assert model(_x((1, 6, 6, 2))).shape == (1, 2, 2, 4)
    with pytest.raises(ValueError, match=ZERO_OUTPUT):
        model(_x((1, 4, 6, 2)))
    with pytest.raises(ValueError, match=ZERO_OUTPUT):
        DeformableConv2D(4, 5)([_x((1, 3, 3, 2)), _x((1, 1, 1, 50))])


# ------------------------------------------------------------------------------------------------
# DeformableConv2D: dtypes of external offsets and mask
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy, autocast, x_dtype, expected", [
    ("float16", True, "float32", tf.float16),
    ("mixed_float16", True, "float16", tf.float16),
    ("float32", True, "float16", tf.float32),
    (None, False, "float16", tf.float16),
])
def test_conv_casts_external_offsets_and_mask_to_the_dtype_of_x(policy, autocast, x_dtype,
                                                                 expected):
    x = _x((1, 5, 5, 2), x_dtype)
    offsets = _x((1, 3, 3, 18), np.float32)
    mask = np.abs(_x((1, 3, 3, 9), np.float64))
    kwargs = {} if policy is None else {"dtype": policy}
    layer = DeformableConv2D(4, 3, autocast=autocast, **kwargs)
    y = layer([x, offsets, mask])
    assert y.dtype == expected
    kernel = tf.cast(layer.kernel, expected)
    reference = tf_dcn.deform_conv2d(
        tf.cast(x, expected), tf.cast(offsets, expected), kernel, mask=tf.cast(mask, expected),
        bias=tf.cast(layer.bias, expected))
    np.testing.assert_array_equal(y.numpy(), reference.numpy())


# ------------------------------------------------------------------------------------------------
# DeformableConv2D: normalized_padding (public, used by tf_dcn.viz)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding, expected", [
    ("valid", "valid"), ("SAME", "same"), (2, ((2, 2), (2, 2))), (np.int64(1), ((1, 1), (1, 1))),
    ((1, 2), ((1, 1), (2, 2))), ([[0, 1], [2, 3]], ((0, 1), (2, 3))),
])
def test_normalized_padding(padding, expected):
    layer = DeformableConv2D(4, 3, padding=padding)
    assert layer.normalized_padding == expected
    # get_config keeps the argument as given (saved models still load the same).
    assert layer.get_config()["padding"] == (padding.lower() if isinstance(padding, str)
                                             else padding)
    with pytest.raises(AttributeError):
        layer.normalized_padding = "same"


def test_viz_uses_the_layers_normalized_padding():
    layer = DeformableConv2D(4, 3, strides=2, padding=((2, 0), (1, 3)),
                             offset_bias_initializer=keras.initializers.RandomNormal(0, 0.5))
    x = _x((1, 9, 8, 2))
    layer(x)
    positions = np.array([[0, 0, 0], [0, 3, 2], [0, 4, 4]])
    offsets, _ = layer.offsets_and_mask(x)
    expected = viz.grid_locations(offsets.numpy(), positions, layer.kernel_size, (9, 8),
                                  layer.strides, layer.normalized_padding, layer.dilation_rate)
    np.testing.assert_allclose(viz.sampling_locations(layer, x, positions), expected)
    same = DeformableConv2D(4, 3, strides=2, padding="same")
    same.build((None, 9, 8, 2))
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    conv.build((None, 9, 8, 2))
    np.testing.assert_allclose(viz.feature_to_image_transform([same], (9, 8)),
                               viz.feature_to_image_transform([conv], (9, 8)))


def test_offsets_and_mask_checks_the_rank():
    layer = DeformableConv2D(4, 3)
    layer(_x((1, 5, 5, 2)))
    with pytest.raises(ValueError, match=re.escape("x_nhwc: expected a 4-D tensor [N, H, W, C]")):
        layer.offsets_and_mask(_x((5, 5, 2)))


# ------------------------------------------------------------------------------------------------
# Pooling layers
# ------------------------------------------------------------------------------------------------
def test_pooling_layers_accept_numpy_integers():
    roi = DeformableRoIPooling(pooled_size=np.int64(3), sample_per_part=np.int32(2),
                               spatial_scale=np.float32(1.0))
    ps = DeformablePSRoIPooling(output_dim=np.int64(2), group_size=np.int8(3),
                                pooled_size=np.int64(3), part_size=np.uint16(3),
                                sample_per_part=np.int64(2), spatial_scale=1.0)
    for layer in (roi, ps):
        config = layer.get_config()
        json.dumps(config)
        assert all(type(config[key]) is int for key in ("pooled_size", "sample_per_part"))
    assert roi([_x((1, 12, 12, 4)), ROIS]).shape == (2, 3, 3, 4)
    assert ps([_x((1, 12, 12, 18)), ROIS]).shape == (2, 3, 3, 2)
    for bad in (True, 2.0, np.int64(0)):
        with pytest.raises(ValueError, match="^pooled_size must be a positive int"):
            DeformableRoIPooling(pooled_size=bad)
        with pytest.raises(ValueError, match="^group_size must be a positive int"):
            DeformablePSRoIPooling(output_dim=2, group_size=bad)


def test_pooling_rank_errors_are_keras_input_spec_errors():
    feats = _x((1, 12, 12, 4))
    with pytest.raises(ValueError, match=_incompatible(0, "features", "ndim=4, found ndim=3")):
        DeformableRoIPooling(3)([_x((12, 12, 4)), ROIS])
    # The boxes input is rois [R, 5] or per-image boxes [N, K, 4] (tests/test_roi_boxes.py).
    with pytest.raises(ValueError, match=_incompatible(1, "rois", "min_ndim=2, found ndim=1")):
        DeformableRoIPooling(3)([feats, ROIS[0]])
    with pytest.raises(ValueError, match=_incompatible(1, "rois", "max_ndim=3, found ndim=4")):
        DeformableRoIPooling(3)([feats, ROIS[None, None]])
    with pytest.raises(ValueError, match=re.escape(
            "the boxes input must be rois [R, 5] or boxes [N, K, 4], got shape (2, 4)")):
        DeformableRoIPooling(3)([feats, ROIS[:, :4]])
    with pytest.raises(ValueError, match=_incompatible(0, "score_maps", "ndim=4, found ndim=3")):
        # This reached tf.nn.conv2d with a rank-3 input, which aborts the process on CPU.
        DeformablePSRoIPooling(1, 2)([_x((4, 4, 4)), ROIS])
    with pytest.raises(ValueError, match=_incompatible(
            2, "offset_features", "ndim=4, found ndim=3")):
        DeformablePSRoIPooling(1, 2)([_x((1, 4, 4, 4)), ROIS, _x((4, 4, 3))])
    with pytest.raises(ValueError, match=_incompatible(0, "features", "ndim=4, found ndim=3")):
        DeformableRoIPooling(3)([keras.Input((12, 4)), keras.Input((5,))])


def test_pooling_channel_errors_once_built():
    roi = DeformableRoIPooling(3, spatial_scale=1.0)
    roi([_x((1, 12, 12, 4)), ROIS])
    assert roi.input_spec[0].axes == {-1: 4}
    assert (roi.input_spec[1].min_ndim, roi.input_spec[1].max_ndim) == (2, 3)
    with pytest.raises(ValueError, match=_incompatible(
            0, "features", "axis -1 of input shape to have value 4")):
        roi([_x((1, 12, 12, 6)), ROIS])
    ps = DeformablePSRoIPooling(2, 3, spatial_scale=1.0)
    score_maps = _x((1, 12, 12, 18))
    y = ps([score_maps, ROIS])
    # Offset features with the channels the offset branch was built for stay valid.
    np.testing.assert_array_equal(ps([score_maps, ROIS, score_maps]).numpy(), y.numpy())
    with pytest.raises(ValueError, match=_incompatible(
            2, "offset_features", "axis -1 of input shape to have value 18")):
        ps([score_maps, ROIS, _x((1, 12, 12, 5))])
    separate = DeformablePSRoIPooling(2, 3, spatial_scale=1.0)
    separate([score_maps, ROIS, _x((1, 12, 12, 5))])
    with pytest.raises(ValueError, match="offset branch was built for offset_features of 5 "):
        separate([score_maps, ROIS])


def test_pooling_input_structure_errors():
    feats = _x((1, 12, 12, 4))
    with pytest.raises(ValueError, match=re.escape("expected a list [features, rois], got one")):
        DeformableRoIPooling(3)(feats)
    with pytest.raises(ValueError, match=re.escape(
            "expected a list [features, rois], got a list of 3")):
        DeformableRoIPooling(3)([feats, ROIS, feats])
    with pytest.raises(ValueError, match=re.escape(
            "expected a list [score_maps, rois] or [score_maps, rois, offset_features], got a "
            "list of 1")):
        DeformablePSRoIPooling(1, 2)([feats])


def test_pooling_compute_output_shape_validates():
    roi = DeformableRoIPooling(3)
    assert roi.compute_output_shape([(None, None, None, 8), (None, 5)]) == (None, 3, 3, 8)
    with pytest.raises(ValueError, match=re.escape(
            "must be rois [R, 5] or boxes [N, K, 4], got shape (7, 4)")):
        roi.compute_output_shape([(1, 8, 8, 4), (7, 4)])
    assert roi.compute_output_shape([(2, 8, 8, 4), (2, 7, 4)]) == (2, 7, 3, 3, 4)
    with pytest.raises(ValueError, match=re.escape("expected a 4-D features [N, H, W, C]")):
        roi.compute_output_shape([(8, 8, 4), (7, 5)])
    with pytest.raises(ValueError, match=re.escape(
            "must be rois [R, 5] or boxes [N, K, 4], got shape (5,)")):
        roi.build([(1, 8, 8, 4), (5,)])
    ps = DeformablePSRoIPooling(2, 3)
    assert ps.compute_output_shape([(1, 8, 8, 18), (7, 5), (1, 8, 8, 3)]) == (7, 3, 3, 2)
    with pytest.raises(ValueError, match="output_dim \\* group_size\\*\\*2 = 18 channels"):
        ps.compute_output_shape([(1, 8, 8, 17), (7, 5)])
    with pytest.raises(ValueError, match=re.escape("expected a 4-D offset_features")):
        ps.build([(1, 8, 8, 18), (7, 5), (8, 8, 3)])


def test_psroi_predict_offsets_checks_the_rank():
    layer = DeformablePSRoIPooling(1, 2, spatial_scale=1.0)
    layer([_x((1, 6, 6, 4)), ROIS])
    with pytest.raises(ValueError, match=re.escape("offset_features: expected a 4-D tensor")):
        layer.predict_offsets(_x((6, 6, 4)), ROIS)


# ------------------------------------------------------------------------------------------------
# Public helpers shared by the op wrappers and the composites
# ------------------------------------------------------------------------------------------------
def test_shared_argument_helpers():
    assert positive_int32(np.int64(7), "group_size") == 7
    assert type(positive_int32(np.int64(7), "group_size")) is int
    for bad, message in [(True, "must be a positive int, got True"),
                         (0, "must be a positive int no larger than 2147483647, got 0"),
                         (2**31, "must be a positive int no larger than 2147483647"),
                         (1.0, "must be a positive int, got 1.0")]:
        with pytest.raises(ValueError, match=f"^group_size {message}"):
            positive_int32(bad, "group_size")
    assert non_negative_float32(np.float16(0.5), "trans_std") == 0.5
    for bad in (-0.1, float("inf"), float("nan"), 1e39, True, "0.1"):
        with pytest.raises(ValueError, match="^trans_std must be a finite non-negative number"):
            non_negative_float32(bad, "trans_std")
    assert FLOAT_DTYPES == (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def test_convert_rois_is_public():
    from tf_dcn.deform_psroi_pool import convert_rois

    assert convert_rois(np.zeros((2, 5), np.int32), tf.float16).dtype == tf.float32
    assert convert_rois(np.zeros((2, 5), np.float32), tf.float64).dtype == tf.float64
    assert convert_rois(np.zeros((2, 5), np.float64), tf.float32).dtype == tf.float64
    with pytest.raises(ValueError, match="rois: expected a real"):
        convert_rois(tf.zeros((2, 5), tf.complex64), tf.float32)


def test_composite_knows_when_it_is_compiled_by_xla():
    # autograph=False: nothing here needs converting, and autograph would re-read this file.
    def inside():
        return tf.constant(composite._in_xla_context())

    def calls_inside():
        return nested()

    assert not composite._in_xla_context()
    assert not bool(tf.function(inside, autograph=False)())
    assert bool(tf.function(inside, jit_compile=True, autograph=False)())
    nested = tf.function(inside, autograph=False)  # first traced inside the XLA function
    assert bool(tf.function(calls_inside, jit_compile=True, autograph=False)())


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.module or "", [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_modules_use_public_names_only():
    for module, names in _imports(PACKAGE / "composite.py"):
        assert not module.startswith("tensorflow.python"), module
        if module.startswith("tf_dcn"):
            assert not [name for name in names if name.startswith("_")], (module, names)
    private = {"_padding_mode", "_explicit_padding"}
    viz_tree = ast.parse((PACKAGE / "viz.py").read_text())
    used = {node.attr for node in ast.walk(viz_tree) if isinstance(node, ast.Attribute)}
    assert not used & private
