"""Keras layers: shapes, numbers against the ops, config round trips, errors and learning."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling

RNG = np.random.default_rng(2024)
ROIS = np.array([[0, 1.2, 1.0, 8.4, 9.1], [1, 0.0, 2.5, 11.0, 5.2], [0, 3.0, 3.0, 4.0, 4.6]],
                np.float32)


def _x(shape, rng=RNG):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# DeformableConv2D
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modulated, dg", [(False, 1), (True, 2)])
def test_owned_branch_shapes_and_zero_init(modulated, dg):
    layer = DeformableConv2D(6, 3, padding="same", modulated=modulated, deformable_groups=dg,
                             bias_initializer="random_normal")
    x = _x((2, 7, 8, 4))
    y = layer(x)
    assert y.shape == (2, 7, 8, 6)
    branch = 3 * dg * 9 if modulated else 2 * dg * 9
    assert layer.offset_kernel.shape == (3, 3, 4, branch)
    assert layer.offset_bias.shape == (branch,)
    assert np.all(layer.offset_kernel.numpy() == 0)
    # Zero offsets: a regular convolution; v2's zero-initialised mask logits give sigmoid(0) = 0.5.
    conv = tf.nn.conv2d(x, layer.kernel, 1, "SAME")
    scale = 0.5 if modulated else 1.0
    np.testing.assert_allclose(y.numpy(), scale * conv.numpy() + layer.bias.numpy(), atol=1e-5)
    assert len(layer.trainable_weights) == 4


def test_branch_output_order_matches_op():
    """Offsets are the first 2*DG*K branch channels, the mask the sigmoid of the last DG*K."""
    layer = DeformableConv2D(3, 3, padding=1, modulated=True, deformable_groups=2,
                             offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.3),
                             offset_bias_initializer=keras.initializers.RandomNormal(0, 0.3))
    x = _x((1, 6, 6, 4))
    y = layer(x)
    branch = tf.nn.conv2d(x, layer.offset_kernel, 1, [[0, 0], [1, 1], [1, 1], [0, 0]])
    branch = branch + layer.offset_bias
    expected = tf_dcn.deform_conv2d(x, branch[..., :36], layer.kernel,
                                    mask=tf.sigmoid(branch[..., 36:]), bias=layer.bias, padding=1,
                                    deformable_groups=2)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-6)
    offsets, mask = layer.offsets_and_mask(x)
    np.testing.assert_allclose(offsets.numpy(), branch[..., :36].numpy(), atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_external_offsets(with_mask):
    layer = DeformableConv2D(5, (3, 2), strides=(2, 1), padding="valid", activation="relu",
                             deformable_groups=2)
    x = _x((2, 9, 7, 4))
    offsets = _x((2, 4, 6, 24)) * 2
    mask = np.abs(_x((2, 4, 6, 12)))
    inputs = [x, offsets, mask] if with_mask else [x, offsets]
    y = layer(inputs)
    assert layer.offset_kernel is None and len(layer.trainable_weights) == 2
    expected = tf.nn.relu(tf_dcn.deform_conv2d(
        x, offsets, layer.kernel, mask=mask if with_mask else None, bias=layer.bias,
        strides=(2, 1), deformable_groups=2))
    np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="built for"):
        layer(x)


def test_channels_first_matches_channels_last():
    x = _x((2, 7, 6, 4))
    last = DeformableConv2D(6, 3, strides=2, padding="same", modulated=True,
                            offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.2))
    y_last = last(x)
    first = DeformableConv2D(6, 3, strides=2, padding="same", modulated=True,
                             data_format="channels_first")
    first.build((None, 4, 7, 6))
    first.set_weights(last.get_weights())
    y_first = first(np.transpose(x, (0, 3, 1, 2)))
    assert first.compute_output_shape((None, 4, 7, 6)) == (None, 6, 4, 3)
    np.testing.assert_allclose(np.transpose(y_first.numpy(), (0, 2, 3, 1)), y_last.numpy(),
                               atol=1e-5)


def test_sequential_and_functional_with_unknown_sizes():
    model = keras.Sequential([
        keras.Input((None, None, 3)),
        DeformableConv2D(8, 3, padding="same", modulated=True),
        DeformableConv2D(4, 3, strides=2, dilation_rate=1, padding=((1, 0), (0, 1))),
    ])
    assert model.output_shape == (None, None, None, 4)
    for shape in [(1, 9, 11, 3), (3, 4, 4, 3)]:
        y = model(_x(shape))
        assert y.shape == (shape[0], (shape[1] + 1 - 3) // 2 + 1, (shape[2] + 1 - 3) // 2 + 1, 4)
    inp = keras.Input((12, 10, 3))
    out = DeformableConv2D(5, 3, dilation_rate=2)(inp)
    assert out.shape == (None, 8, 6, 5)


def test_conv_layer_config_round_trip():
    layer = DeformableConv2D(
        8, (3, 2), strides=(2, 1), padding=((1, 0), (2, 1)), dilation_rate=1, groups=2,
        activation="gelu", use_bias=False, data_format="channels_last",
        kernel_initializer=keras.initializers.HeNormal(seed=3),
        kernel_regularizer=keras.regularizers.L2(1e-4),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_regularizer=keras.regularizers.L1(1e-3),
        activity_regularizer=keras.regularizers.L2(1e-5),
        deformable_groups=2, modulated=True,
        offset_kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=1),
        offset_bias_initializer="ones", name="dcn")
    config = layer.get_config()
    clone = DeformableConv2D.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "tf_dcn>DeformableConv2D"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert restored.get_config() == config
    assert isinstance(restored.kernel_regularizer, keras.regularizers.L2)


def test_pooling_layer_config_round_trip():
    for layer in [
        DeformableRoIPooling(pooled_size=5, spatial_scale=0.25, sample_per_part=2, trans_std=0.2,
                             offset_kernel_initializer="glorot_uniform", name="roi"),
        DeformablePSRoIPooling(output_dim=3, group_size=3, pooled_size=6, part_size=3,
                               sample_per_part=2, trans_std=0.05, spatial_scale=0.5,
                               class_aware_offsets=True, name="psroi"),
    ]:
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert restored.get_config() == config


@pytest.mark.parametrize("kwargs, match", [
    (dict(filters=0, kernel_size=3), "filters"),
    (dict(filters=6, kernel_size=3, groups=4), "groups"),
    (dict(filters=6, kernel_size=0), "kernel_size"),
    (dict(filters=6, kernel_size=3, strides=0), "strides"),
    (dict(filters=6, kernel_size=3, padding="causal"), "padding"),
    (dict(filters=6, kernel_size=3, deformable_groups=0), "deformable_groups"),
    (dict(filters=6, kernel_size=3, data_format="nhwc"), "data_format"),
])
def test_conv_layer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeformableConv2D(**kwargs)


@pytest.mark.parametrize("kwargs, shape, match", [
    (dict(filters=4, kernel_size=3, groups=2), (1, 5, 5, 3), "groups"),
    (dict(filters=4, kernel_size=3, deformable_groups=2), (1, 5, 5, 3), "deformable_groups"),
    (dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), (1, 9, 9, 4), "dilation"),
])
def test_conv_layer_bad_input_channels(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        DeformableConv2D(**kwargs)(_x(shape))


@pytest.mark.parametrize("cls, kwargs, match", [
    (DeformableRoIPooling, dict(pooled_size=0), "pooled_size"),
    (DeformableRoIPooling, dict(sample_per_part=0), "sample_per_part"),
    (DeformableRoIPooling, dict(trans_std=-0.1), "trans_std"),
    (DeformableRoIPooling, dict(spatial_scale=-1.0), "spatial_scale"),
    (DeformablePSRoIPooling, dict(output_dim=0), "output_dim"),
    (DeformablePSRoIPooling, dict(output_dim=2, group_size=0), "group_size"),
    (DeformablePSRoIPooling, dict(output_dim=2, part_size=-1), "part_size"),
])
def test_pooling_layer_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_psroi_layer_checks_score_map_channels():
    with pytest.raises(ValueError, match="output_dim"):
        DeformablePSRoIPooling(output_dim=2, group_size=3)([_x((1, 8, 8, 17)), ROIS[:1]])


# ------------------------------------------------------------------------------------------------
# Pooling layers against the ops
# ------------------------------------------------------------------------------------------------
def test_roi_pooling_layer_zero_init_is_plain_pooling():
    feats = _x((2, 12, 12, 4))
    layer = DeformableRoIPooling(pooled_size=3, spatial_scale=1.0, sample_per_part=2)
    y = layer([feats, ROIS])
    assert y.shape == (3, 3, 3, 4)
    assert layer.offset_kernel.shape == (3 * 3 * 4, 3 * 3 * 2)
    plain = tf_dcn.deform_roi_pool(feats, ROIS, pooled_size=3, sample_per_part=2)
    np.testing.assert_allclose(y.numpy(), plain.numpy(), atol=1e-6)


def test_roi_pooling_layer_uses_predicted_offsets():
    feats = _x((2, 12, 12, 4))
    layer = DeformableRoIPooling(pooled_size=3, spatial_scale=0.5, trans_std=0.1,
                                 offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.5),
                                 offset_bias_initializer=keras.initializers.RandomNormal(0, 0.5))
    y = layer([feats, ROIS])
    plain = tf_dcn.deform_roi_pool(feats, ROIS, pooled_size=3, spatial_scale=0.5)
    offsets = tf.reshape(tf.reshape(plain, [3, -1]) @ layer.offset_kernel + layer.offset_bias,
                         [3, 3, 3, 2])
    expected = tf_dcn.deform_roi_pool(feats, ROIS, offsets, pooled_size=3, spatial_scale=0.5,
                                      trans_std=0.1)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(y.numpy(), plain.numpy())


@pytest.mark.parametrize("class_aware, with_offset_features", [(False, False), (True, True)])
def test_psroi_pooling_layer_against_op(class_aware, with_offset_features):
    k, out_dim = 3, 2
    score_maps = _x((2, 12, 12, out_dim * k * k))
    offset_feats = _x((2, 12, 12, 5))
    init = keras.initializers.RandomNormal(0, 0.5, seed=4)
    layer = DeformablePSRoIPooling(output_dim=out_dim, group_size=k, spatial_scale=1.0,
                                   class_aware_offsets=class_aware,
                                   offset_kernel_initializer=init, offset_bias_initializer=init)
    inputs = [score_maps, ROIS] + ([offset_feats] if with_offset_features else [])
    y = layer(inputs)
    assert y.shape == (3, k, k, out_dim)
    n_cls = out_dim if class_aware else 1
    source = offset_feats if with_offset_features else score_maps
    maps = tf.nn.conv2d(source, layer.offset_kernel, 1, "VALID") + layer.offset_bias
    assert maps.shape[-1] == 2 * k * k * n_cls
    offsets = tf_dcn.deform_psroi_pool(maps, ROIS, output_dim=2 * n_cls, group_size=k)
    expected = tf_dcn.deform_psroi_pool(score_maps, ROIS, offsets, output_dim=out_dim,
                                        group_size=k, trans_std=0.1)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def test_default_compile_and_fit_runs_without_xla():
    inp = keras.Input((8, 8, 3))
    rois = keras.Input((5,))
    x = DeformableConv2D(9 * 2, 3, padding="same", modulated=True)(inp)
    a = DeformableRoIPooling(pooled_size=3, spatial_scale=1.0)([x, rois])
    b = DeformablePSRoIPooling(output_dim=2, group_size=3, spatial_scale=1.0)([x, rois])
    out = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    model = keras.Model([inp, rois], keras.layers.Dense(1)(out))
    model.compile(optimizer="adam", loss="mse")  # jit_compile="auto"
    history = model.fit([_x((3, 8, 8, 3)), np.array([[0, 0, 0, 7, 7]] * 3, np.float32)],
                        np.ones((3, 1)), epochs=2, verbose=0)
    assert model.jit_compile is False
    assert np.isfinite(history.history["loss"]).all()


def test_offset_branch_moves_after_one_step():
    layer = DeformableConv2D(4, 3, padding="same", modulated=True)
    model = keras.Sequential([keras.Input((8, 8, 3)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = _x((4, 8, 8, 3))
    model.fit(x, _x((4, 8, 8, 4)), epochs=1, batch_size=4, verbose=0)
    assert np.abs(layer.offset_kernel.numpy()).max() > 0
    assert np.abs(layer.offset_bias.numpy()).max() > 0


def test_learns_subpixel_displacement_that_plain_conv_cannot():
    """Target: a smooth image displaced by (0.4, -0.7) pixels. A 1x1 deformable convolution can
    learn that through its offset branch; a 1x1 plain convolution cannot move anything."""
    yy, xx = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    images = np.stack([np.sin(yy / 2.2 + p) * np.cos(xx / 1.7 - p) for p in np.linspace(0, 3, 8)])
    images = images[..., None].astype(np.float32)
    shift = np.tile(np.array([0.4, -0.7], np.float32), (8, 16, 16, 1))
    target = tf_dcn.deform_conv2d(images, shift, np.ones((1, 1, 1, 1), np.float32)).numpy()
    # Compare away from the border, where the shifted sample leaves the image.
    target_inner = target[:, 2:-2, 2:-2]

    def train(layer):
        inp = keras.Input((16, 16, 1))
        model = keras.Model(inp, keras.layers.Cropping2D(2)(layer(inp)))
        model.compile(optimizer=keras.optimizers.Adam(0.03), loss="mse")
        model.fit(images, target_inner, epochs=150, batch_size=8, verbose=0)
        return model.evaluate(images, target_inner, verbose=0)

    keras.utils.set_random_seed(0)
    plain = train(keras.layers.Conv2D(1, 1, kernel_initializer="ones"))
    deformable = train(DeformableConv2D(1, 1, kernel_initializer="ones"))
    assert deformable < 0.05 * plain, (deformable, plain)
    assert deformable < 1e-3
