"""Per-image boxes [N, K, 4] for the RoI pooling layers: every bounding_box_format against the
rois [R, 5] form, padding boxes, and feeding through model.fit / evaluate / predict (arrays with
batches that do not divide the data, tf.data, generators), mixed precision, .keras, SavedModel
and export_portable."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import keras

import tf_dcn
from tf_dcn.layers import DeformablePSRoIPooling, DeformableRoIPooling

# Features 8 x 16 at stride 8: the image is 64 x 128 (powers of two, so relative coordinates
# and every conversion below are exact).
N, K, FH, FW, STRIDE = 3, 4, 8, 16, 8
IMAGE_H, IMAGE_W = FH * STRIDE, FW * STRIDE


def _xyxy_boxes(rng, n=N, k=K):
    """Boxes in pixels, multiples of 0.5 (x1 < x2, y1 < y2)."""
    x1 = rng.integers(0, 200, (n, k)) / 2.0
    y1 = rng.integers(0, 100, (n, k)) / 2.0
    w = rng.integers(8, 60, (n, k)) / 2.0
    h = rng.integers(8, 40, (n, k)) / 2.0
    return np.stack([x1, y1, x1 + w, y1 + h], axis=-1).astype(np.float32)


def _in_format(xyxy: np.ndarray, name: str) -> np.ndarray:
    """NumPy conversion from xyxy pixels (independent of the layer's)."""
    x1, y1, x2, y2 = np.moveaxis(xyxy, -1, 0)
    relative = name.startswith("rel_")
    if relative:
        x1, x2, y1, y2 = x1 / IMAGE_W, x2 / IMAGE_W, y1 / IMAGE_H, y2 / IMAGE_H
        name = name[4:]
    w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
    columns = {"xyxy": (x1, y1, x2, y2), "yxyx": (y1, x1, y2, x2), "xywh": (x1, y1, w, h),
               "center_xywh": (cx, cy, w, h), "center_yxhw": (cy, cx, h, w)}[name]
    return np.stack(columns, axis=-1).astype(np.float32)


def _rois(xyxy: np.ndarray) -> np.ndarray:
    n, k = xyxy.shape[:2]
    index = np.repeat(np.arange(n, dtype=np.float32), k)[:, None]
    return np.concatenate([index, xyxy.reshape(-1, 4)], axis=1)


def _layers(**kw):
    init = keras.initializers.RandomNormal(stddev=0.05, seed=3)
    return {
        "roi": DeformableRoIPooling(pooled_size=3, spatial_scale=1.0 / STRIDE, sample_per_part=2,
                                    offset_kernel_initializer=init, **kw),
        "psroi": DeformablePSRoIPooling(output_dim=4, group_size=3, sample_per_part=2,
                                        spatial_scale=1.0 / STRIDE,
                                        offset_kernel_initializer=init, **kw),
    }


def _features(rng, kind):
    channels = 6 if kind == "roi" else 4 * 9
    return rng.normal(size=(N, FH, FW, channels)).astype(np.float32)


FORMATS = ["xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw", "rel_xyxy", "rel_yxyx",
           "rel_xywh", "rel_center_xywh", "rel_center_yxhw"]


@pytest.mark.parametrize("kind", ["roi", "psroi"])
@pytest.mark.parametrize("name", FORMATS)
def test_every_format_equals_the_rois_form(kind, name):
    rng = np.random.default_rng(0)
    features, xyxy = _features(rng, kind), _xyxy_boxes(rng)
    layer = _layers(bounding_box_format=name)[kind]
    expected = layer([features, _rois(xyxy)]).numpy()  # builds with rois; same weights below
    layer_boxes = type(layer).from_config(layer.get_config())
    layer_boxes([features, _in_format(xyxy, name)])
    layer_boxes.set_weights(layer.get_weights())
    got = layer_boxes([features, _in_format(xyxy, name)]).numpy()
    assert got.shape == (N, K) + expected.shape[1:]
    assert np.any(expected != 0)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)


def test_image_size_scales_relative_boxes():
    rng = np.random.default_rng(1)
    features, xyxy = _features(rng, "roi"), _xyxy_boxes(rng)
    # An image of 60 x 120 pixels whose features were padded to 8 x 16 at stride 8.
    rel = xyxy / np.array([120, 60, 120, 60], np.float32)
    pixels = DeformableRoIPooling(pooled_size=3, spatial_scale=1.0 / 8)
    sized = DeformableRoIPooling(pooled_size=3, spatial_scale=1.0 / 8,
                                 bounding_box_format="rel_xyxy", image_size=(60, 120))
    np.testing.assert_allclose(sized([features, rel]).numpy(),
                               pixels([features, xyxy]).numpy(), rtol=1e-5, atol=1e-6)
    assert sized.get_config()["image_size"] == [60, 120]


@pytest.mark.parametrize("kind", ["roi", "psroi"])
def test_padding_boxes_give_zeros_and_no_gradient(kind):
    rng = np.random.default_rng(2)
    features, xyxy = tf.constant(_features(rng, kind)), _xyxy_boxes(rng)
    padded = xyxy.copy()
    padded[0, 2:] = -1.0  # image 0 has 2 boxes, image 2 none
    padded[2] = -1.0
    layer = _layers()[kind]
    layer([features, padded])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        out = layer([features, padded])
        loss = tf.reduce_sum(out * rng.normal(size=out.shape).astype(np.float32))
    np.testing.assert_array_equal(out.numpy()[0, 2:], 0.0)
    np.testing.assert_array_equal(out.numpy()[2], 0.0)
    assert np.all(out.numpy()[1] != 0)
    grads = tape.gradient(loss, [features] + layer.trainable_weights)
    # Only the real boxes count: the same loss over the real boxes alone, as rois.
    keep = ~np.all(padded == -1.0, axis=-1).reshape(-1)
    weights = tape.gradient(loss, out).numpy().reshape((-1,) + tuple(out.shape[2:]))
    with tf.GradientTape() as tape2:
        tape2.watch(features)
        pooled = layer([features, _rois(padded)[keep]])
        loss2 = tf.reduce_sum(pooled * weights[keep])
    grads2 = tape2.gradient(loss2, [features] + layer.trainable_weights)
    for a, b in zip(grads, grads2):
        assert np.all(np.isfinite(a.numpy()))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(grads[0].numpy()[2] == 0)  # image 2 has only padding


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="bounding_box_format"):
        DeformableRoIPooling(bounding_box_format="xyz")
    with pytest.raises(ValueError, match="image_size"):
        DeformablePSRoIPooling(output_dim=2, image_size=(10,))
    with pytest.raises(ValueError, match="image_size"):
        DeformablePSRoIPooling(output_dim=2, image_size=(10, 0))
    with pytest.raises(ValueError, match="image_size"):
        DeformablePSRoIPooling(output_dim=2, image_size=64)
    layer = DeformableRoIPooling(pooled_size=2)
    with pytest.raises(ValueError, match=r"\[N, K, 4\]"):
        layer.compute_output_shape([(2, 8, 8, 3), (2, 5, 5)])
    with pytest.raises(ValueError, match="batch size"):
        layer.compute_output_shape([(2, 8, 8, 3), (3, 5, 4)])
    rel = DeformableRoIPooling(pooled_size=2, spatial_scale=0.0, bounding_box_format="rel_xyxy")
    with pytest.raises(ValueError, match="image_size"):
        rel([np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 2, 4), np.float32)])


# ------------------------------------------------------------------------------------------------
# Feeding a model: images [N, H, W, 3] and boxes [N, K, 4] have the same first dimension.
# ------------------------------------------------------------------------------------------------
def _detector_head(kind="psroi", policy=None):
    """images [None, 64, 128, 3], boxes [None, K, 4] (center_xywh) -> class scores [None, K, 3]."""
    images = keras.Input((IMAGE_H, IMAGE_W, 3), name="images")
    boxes = keras.Input((K, 4), name="boxes")
    x = keras.layers.Conv2D(8, 3, strides=STRIDE, padding="same", activation="relu",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=1))(images)
    init = keras.initializers.RandomNormal(stddev=0.05, seed=3)
    if kind == "psroi":
        maps = keras.layers.Conv2D(3 * 9, 1, kernel_initializer=keras.initializers.GlorotUniform(
            seed=2))(x)
        pooled = DeformablePSRoIPooling(output_dim=3, group_size=3, sample_per_part=2,
                                        spatial_scale=1.0 / STRIDE, offset_kernel_initializer=init,
                                        bounding_box_format="center_xywh")([maps, boxes])
        # Voting: the mean over the 3 x 3 bins.
        bins = keras.layers.Reshape((K, 9, 3))(pooled)
        scores = keras.layers.Reshape((K, 3))(keras.layers.AveragePooling2D((1, 9))(bins))
    else:
        pooled = DeformableRoIPooling(pooled_size=3, spatial_scale=1.0 / STRIDE,
                                      sample_per_part=2, offset_kernel_initializer=init,
                                      bounding_box_format="center_xywh")([x, boxes])
        flat = keras.layers.Reshape((K, 3 * 3 * 8))(pooled)
        scores = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(
            seed=4))(flat)
    scores = keras.layers.Activation("linear", dtype="float32")(scores)
    return keras.Model([images, boxes], scores)


def _data(count=8, seed=5):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (count, IMAGE_H, IMAGE_W, 3)).astype(np.float32)
    boxes = _in_format(_xyxy_boxes(rng, count, K), "center_xywh")
    boxes[1, 3] = -1.0  # a padding box
    labels = rng.integers(0, 3, (count, K))
    return images, boxes, labels


def _compile(model):
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("kind", ["roi", "psroi"])
def test_fit_on_arrays_with_an_uneven_last_batch_matches_manual_steps(kind):
    images, boxes, labels = _data()
    model = _compile(_detector_head(kind))
    reference = _compile(_detector_head(kind))
    reference.set_weights(model.get_weights())
    initial_offsets = [layer for layer in model.layers
                       if "pooling" in layer.name][0].offset_kernel.numpy().copy()
    history = model.fit([images, boxes], labels, batch_size=3, epochs=1, shuffle=False,
                        verbose=0)
    # The same three steps (3, 3 and 2 images) by hand.
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for start in (0, 3, 6):
        batch = slice(start, start + 3)
        with tf.GradientTape() as tape:
            loss = loss_fn(labels[batch], reference([images[batch], boxes[batch]], training=True))
        grads = tape.gradient(loss, reference.trainable_weights)
        for w, g in zip(reference.trainable_weights, grads):
            w.assign_sub(0.1 * g)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.isfinite(history.history["loss"][0])
    # The offset branch of the deformable pooling was trained too.
    pool = [layer for layer in model.layers if "pooling" in layer.name][0]
    assert np.any(pool.offset_kernel.numpy() != initial_offsets)


def test_predict_and_evaluate_on_arrays_datasets_and_generators():
    images, boxes, labels = _data()
    model = _compile(_detector_head())
    whole = model([images, boxes]).numpy()
    assert whole.shape == (8, K, 3)
    np.testing.assert_allclose(model.predict([images, boxes], batch_size=3, verbose=0), whole,
                               rtol=1e-5, atol=1e-6)
    dataset = tf.data.Dataset.from_tensor_slices(((images, boxes), labels)).batch(3)
    np.testing.assert_allclose(model.predict(dataset, verbose=0), whole, rtol=1e-5, atol=1e-6)

    def batches():
        for start in range(0, 8, 3):
            yield (images[start:start + 3], boxes[start:start + 3]), labels[start:start + 3]

    np.testing.assert_allclose(model.predict(batches(), verbose=0), whole, rtol=1e-5, atol=1e-6)
    expected = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, whole))
    for data in ({"x": [images, boxes], "y": labels, "batch_size": 3}, {"x": dataset},
                 {"x": batches()}):
        assert model.evaluate(**data, verbose=0) == pytest.approx(expected, rel=1e-5)
    model.fit(dataset, epochs=1, verbose=0)
    model.fit(batches(), epochs=1, verbose=0)


def test_mixed_float16_fit():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _compile(_detector_head())
        pool = [layer for layer in model.layers if "pooling" in layer.name][0]
        images, boxes, labels = _data()
        history = model.fit([images, boxes], labels, batch_size=3, epochs=2, verbose=0)
        assert pool.compute_dtype == "float16"
        assert all(np.isfinite(history.history["loss"]))
        out = model.predict([images, boxes], verbose=0)
        assert out.dtype == np.float32 and np.all(np.isfinite(out))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_file_saved_model_and_portable_export(tmp_path):
    images, boxes, labels = _data()
    model = _compile(_detector_head())
    model.fit([images, boxes], labels, batch_size=4, epochs=1, verbose=0)
    expected = model.predict([images, boxes], verbose=0)
    model.save(tmp_path / "head.keras")
    reloaded = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_allclose(reloaded.predict([images, boxes], verbose=0), expected,
                               rtol=1e-6, atol=1e-6)
    model.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(served.serve([images, boxes]).numpy(), expected, rtol=1e-6,
                               atol=1e-6)
    tf_dcn.export_portable(model, tmp_path / "portable")
    portable = tf.saved_model.load(str(tmp_path / "portable"))
    np.testing.assert_allclose(portable.serve([images, boxes]).numpy(), expected, rtol=1e-4,
                               atol=1e-5)
