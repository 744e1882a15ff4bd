"""tf_dcn.export_portable: a SavedModel without tf-dcn ops that a fresh process loads without
importing tf_dcn, and that TFLite converts with builtin ops only."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tests.fresh_process import run_python
from tests.test_saving import build_model, sample_inputs
from tf_dcn.export import find_tf_dcn_ops
from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling

# tf.lite.Interpreter still works in TensorFlow 2.21; LiteRT's is a separate package.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def _run_without_tf_dcn(code: str, cwd: Path) -> str:
    """Runs code in a fresh interpreter that cannot import tf_dcn (the repository is not on its
    path and the working directory is elsewhere)."""
    return run_python(code, cwd, env={"PYTHONPATH": None}).stdout


def _dcn_layers(model):
    return [layer for layer in model.layers if hasattr(layer, "implementation")]


def test_export_portable_loads_and_serves_without_tf_dcn(tmp_path):
    model = build_model(seed=2)
    image, rois = sample_inputs()
    expected = model([image, rois]).numpy()          # the custom ops
    path = tf_dcn.export_portable(model, tmp_path / "portable")
    assert path == str(tmp_path / "portable")
    assert find_tf_dcn_ops(path) == []
    assert [layer.implementation for layer in _dcn_layers(model)] == ["op"] * 3
    model.export(str(tmp_path / "with_ops"), verbose=False)
    assert find_tf_dcn_ops(tmp_path / "with_ops") == ["TfDcn>DeformableConv2D",
                                                      "TfDcn>DeformablePSRoIPool"]
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "rois.npy", rois)
    np.save(tmp_path / "expected.npy", expected)

    out = _run_without_tf_dcn("""
        import sys
        import numpy as np, tensorflow as tf
        image, rois, expected = (np.load(n + ".npy") for n in ("image", "rois", "expected"))
        served = tf.saved_model.load("portable")
        got = served.serve([image, rois]).numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)
        signature = served.signatures["serving_default"]
        got = list(signature(image=tf.constant(image), rois=tf.constant(rois)).values())[0]
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5 * scale)
        assert not [m for m in sys.modules if m.startswith("tf_dcn")], "tf_dcn was imported"
        try:
            import tf_dcn  # noqa: F401
        except ImportError:
            print("portable ok, tf_dcn not importable here")
    """, tmp_path)
    assert "portable ok, tf_dcn not importable here" in out


class _RawOpLayer(keras.layers.Layer):
    """Calls the custom op directly: not switchable, so not portable."""

    def call(self, x):
        kernel = tf.ones([3, 3, 3, 2])
        offsets = tf.zeros(tf.concat([tf.shape(x)[:3], [18]], 0))
        return tf_dcn.deform_conv2d(x, offsets, kernel, padding="same")


def test_export_portable_refuses_remaining_custom_ops(tmp_path):
    inputs = keras.Input((6, 6, 3))
    x = DeformableConv2D(3, 3, padding="same")(inputs)
    model = keras.Model(inputs, _RawOpLayer()(x))
    with pytest.raises(RuntimeError, match=r"still uses tf-dcn custom ops \['TfDcn>Deformable"):
        tf_dcn.export_portable(model, tmp_path / "not_portable")
    assert model.layers[1].implementation == "op"


def _tflite(path: str):
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Select TF ops
    flatbuffer = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    return interpreter.get_signature_runner("serving_default"), ops


def test_tflite_builtins_only_conv_model_v1_and_v2(tmp_path):
    init = keras.initializers.RandomNormal(0.0, 0.3, seed=1)
    image = keras.Input((10, 9, 3), batch_size=2, name="image")
    x = DeformableConv2D(4, 3, padding="same", activation="relu",
                         offset_kernel_initializer=init, offset_bias_initializer=init)(image)
    x = DeformableConv2D(5, (3, 2), strides=2, padding="same", modulated=True,
                         deformable_groups=2, offset_kernel_initializer=init,
                         offset_bias_initializer=init)(x)
    model = keras.Model(image, x)
    data = np.random.default_rng(0).uniform(-1, 1, (2, 10, 9, 3)).astype(np.float32)
    expected = model(data).numpy()
    runner, ops = _tflite(tf_dcn.export_portable(model, tmp_path / "conv"))
    assert "GATHER" in ops
    got = list(runner(image=data).values())[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_tflite_builtins_only_pooling_model(tmp_path):
    init = keras.initializers.RandomNormal(0.0, 0.3, seed=2)
    features = keras.Input((9, 11, 18), batch_size=2, name="features")
    rois = keras.Input((5,), batch_size=4, name="rois")
    a = DeformableRoIPooling(pooled_size=3, spatial_scale=0.5, offset_kernel_initializer=init,
                             offset_bias_initializer=init)([features, rois])
    b = DeformablePSRoIPooling(output_dim=2, group_size=3, spatial_scale=0.5, sample_per_part=2,
                               class_aware_offsets=True, offset_kernel_initializer=init,
                               offset_bias_initializer=init)([features, rois])
    out = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    model = keras.Model([features, rois], out)
    rng = np.random.default_rng(1)
    data = rng.uniform(-1, 1, (2, 9, 11, 18)).astype(np.float32)
    boxes = np.array([[0, 1.5, 2.0, 17.0, 12.0], [1, -4.0, 3.0, 9.5, 30.0],
                      [1, 6.0, 6.0, 6.0, 6.0], [0, 0.0, 0.0, 21.0, 17.0]], np.float32)
    expected = model([data, boxes]).numpy()
    runner, _ = _tflite(tf_dcn.export_portable(model, tmp_path / "pool"))
    got = list(runner(features=data, rois=boxes).values())[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_tflite_non_finite_inputs_and_bad_batch_index():
    """Inside TFLite the composite keeps its non-finite semantics and never gathers out of range:
    NaN/Inf offsets, NaN boxes and invalid batch indices (NaN RoIs) give the same outputs as in
    TensorFlow."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
    offsets = rng.uniform(-2, 2, size=(1, 6, 6, 18)).astype(np.float32)
    offsets[0, 1, 1, 3], offsets[0, 2, 2, 0], offsets[0, 3, 3, 5] = np.nan, np.inf, -1e30
    features = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    rois = np.array([[0, 1, 2, 12, 10], [1, np.nan, 1, 5, 5], [2, 1, 1, 5, 5],
                     [0.5, 0, 0, 3, 3], [1, 0, 0, 15, 15]], np.float32)
    pool_offsets = rng.normal(size=(5, 2, 2, 2)).astype(np.float32)
    pool_offsets[0, 0, 0, 0] = np.nan

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 6, 6, 2]), tf.TensorSpec([1, 6, 6, 18]),
                                      tf.TensorSpec([2, 8, 8, 4]), tf.TensorSpec([5, 5]),
                                      tf.TensorSpec([5, 2, 2, 2])])
        def run(self, x, off, f, r, po):
            conv = tf_dcn.composite.deform_conv2d(x, off, kernel, padding=1)
            pool = tf_dcn.composite.deform_roi_pool(f, r, po, pooled_size=2, spatial_scale=0.5)
            return {"conv": conv, "pool": pool}

    module = Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.run.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner()
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    got = runner(x=x, off=offsets, f=features, r=rois, po=pool_offsets)
    expected = module.run(x, offsets, features, rois, pool_offsets)
    for key in ("conv", "pool"):
        want = expected[key].numpy()
        assert np.isnan(want).any(), key
        np.testing.assert_array_equal(np.isnan(got[key]), np.isnan(want), err_msg=key)
        finite = ~np.isnan(want)
        np.testing.assert_allclose(got[key][finite], want[finite], rtol=0,
                                   atol=1e-5 * np.abs(want[finite]).max())
    assert np.isnan(expected["pool"].numpy()[1:4]).all()
