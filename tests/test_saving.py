"""Saving (.keras), SavedModel export and reload in fresh processes, mixed precision and
tf.distribute for the three layers."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.fresh_process import run_python
from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling

REPO = Path(__file__).resolve().parents[1]


def _with_batch_index(boxes):
    """[R, 4] boxes of one RoI per image -> [R, 5] rois indexing the (replica-local) batch."""
    index = tf.cast(tf.range(tf.shape(boxes)[0]), boxes.dtype)[:, None]
    return tf.concat([index, boxes], axis=1)


def build_model(seed: int = 0, boxes_only: bool = False) -> keras.Model:
    """A small model with all three layers; non-zero offset branches so offsets matter.

    With ``boxes_only`` the second input is ``[R, 4]`` boxes, one per image, and the model adds
    the batch index itself (needed when tf.distribute splits the batch)."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(0.0, 0.05, seed=seed)
    image = keras.Input((12, 12, 3), name="image")
    rois_input = keras.Input((4,) if boxes_only else (5,), name="rois")
    rois = keras.layers.Lambda(_with_batch_index)(rois_input) if boxes_only else rois_input
    x = DeformableConv2D(18, 3, padding="same", modulated=True, activation="relu",
                         offset_kernel_initializer=init, offset_bias_initializer=init)(image)
    a = DeformableRoIPooling(pooled_size=3, spatial_scale=0.5, offset_kernel_initializer=init,
                             offset_bias_initializer=init)([x, rois])
    b = DeformablePSRoIPooling(output_dim=2, group_size=3, spatial_scale=0.5,
                               offset_kernel_initializer=init)([x, rois, image])
    out = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    return keras.Model([image, rois_input], keras.layers.Dense(4)(out))


def sample_inputs():
    rng = np.random.default_rng(9)
    image = rng.uniform(0, 1, (2, 12, 12, 3)).astype(np.float32)
    rois = np.array([[0, 1.0, 2.0, 17.0, 20.0], [1, 4.0, 0.0, 23.0, 9.0]], np.float32)
    return image, rois


def _run(code: str, cwd: Path) -> str:
    return run_python(code, cwd, env={"PYTHONPATH": str(REPO)}).stdout


def test_keras_file_round_trip_in_fresh_process(tmp_path):
    model = build_model()
    image, rois = sample_inputs()
    expected = model([image, rois]).numpy()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "rois.npy", rois)
    np.save(tmp_path / "expected.npy", expected)
    model.save(tmp_path / "model.keras")
    out = _run("""
        import numpy as np, keras
        import tf_dcn  # registers the layers
        model = keras.saving.load_model("model.keras")
        got = model([np.load("image.npy"), np.load("rois.npy")]).numpy()
        assert np.array_equal(got, np.load("expected.npy")), np.abs(got - np.load("expected.npy")).max()
        print("keras ok", type(model.layers[1]).__name__)
    """, tmp_path)
    assert "keras ok DeformableConv2D" in out


def test_saved_model_export_and_reload(tmp_path):
    model = build_model()
    image, rois = sample_inputs()
    expected = model([image, rois]).numpy()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "rois.npy", rois)
    np.save(tmp_path / "expected.npy", expected)
    model.export(str(tmp_path / "exported"), verbose=False)
    tf.saved_model.save(model, str(tmp_path / "saved"))

    out = _run("""
        import numpy as np, tensorflow as tf, keras
        import tf_dcn
        tf_dcn.load_ops()
        tf_dcn.load_ops()  # idempotent
        image, rois = np.load("image.npy"), np.load("rois.npy")
        expected = np.load("expected.npy")
        exported = tf.saved_model.load("exported")
        served = exported.serve([image, rois]).numpy()
        np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-6)
        saved = tf.saved_model.load("saved")
        sig = saved.signatures["serving_default"]
        outputs = sig(inputs=tf.constant(image), inputs_1=tf.constant(rois))
        np.testing.assert_allclose(list(outputs.values())[0].numpy(), expected, rtol=1e-6, atol=1e-6)
        layer = keras.layers.TFSMLayer("exported", call_endpoint="serve")
        np.testing.assert_allclose(layer([image, rois]).numpy(), expected, rtol=1e-6, atol=1e-6)
        print("savedmodel ok")
    """, tmp_path)
    assert "savedmodel ok" in out

    out = _run("""
        import tensorflow as tf
        try:
            tf.saved_model.load("exported")
        except Exception as err:  # without the library TensorFlow cannot resolve our ops
            print("error:", type(err).__name__, err)
        else:
            raise SystemExit("loading without tf_dcn unexpectedly worked")
    """, tmp_path)
    assert "Op type not registered" in out and "TfDcn>Deformable" in out


@pytest.mark.parametrize("policy, dtype", [("mixed_float16", "float16"),
                                           ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_trains(policy, dtype):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model(seed=1)
        for layer in model.layers[1:4]:
            assert layer.compute_dtype == dtype, layer
            assert all(w.dtype == "float32" for w in layer.weights), layer
        image, rois = sample_inputs()
        assert model.layers[1](image).dtype == dtype
        target = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        first = model.evaluate([image, rois], target, verbose=0)
        model.fit([image, rois], target, epochs=15, verbose=0)
        last = model.evaluate([image, rois], target, verbose=0)
        assert np.isfinite(last) and last < 0.7 * first, (first, last)
    finally:
        keras.config.set_dtype_policy(previous)


def test_mirrored_strategy_matches_single_device(tmp_path):
    out = _run("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tests.test_saving import build_model, sample_inputs
        image, rois = sample_inputs()
        image = np.concatenate([image, image[::-1] * 0.5])
        boxes = np.array([[1.0, 2.0, 17.0, 20.0], [4.0, 0.0, 23.0, 9.0],
                          [0.0, 0.0, 20.0, 20.0], [6.0, 6.0, 12.0, 14.0]], np.float32)
        target = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)

        def train(strategy):
            with strategy.scope():
                model = build_model(seed=5, boxes_only=True)
                model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
            ds = tf.data.Dataset.from_tensor_slices(((image, boxes), target)).batch(4).repeat(3)
            model.fit(ds, epochs=1, verbose=0)
            return [w.numpy() for w in model.weights]

        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        assert len(devices) == 2, devices
        mirrored = train(tf.distribute.MirroredStrategy(devices))
        single = train(tf.distribute.OneDeviceStrategy(devices[0]))
        initial = [w.numpy() for w in build_model(seed=5, boxes_only=True).weights]
        moved = sum(not np.allclose(a, b) for a, b in zip(mirrored, initial))
        assert moved >= len(initial) - 1, moved  # every trainable weight changed
        for a, b in zip(mirrored, single):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        print("mirrored ok", len(mirrored))
    """, REPO)
    assert "mirrored ok" in out
