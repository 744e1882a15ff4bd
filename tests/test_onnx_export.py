"""``tf_dcn.export_onnx``: deformable convolutions as ONNX ``DeformConv``, pooling through standard
ops, run in onnxruntime on the CPU and compared with the Keras model (float32, 1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
import tf_dcn
from tf_dcn.onnx_export import onnx_op_types

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")


def _randomise_offset_branches(model: keras.Model, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero offsets and masks (the branches start at zero, which would test little)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "offset" in weight.path or "mask" in weight.path:
            weight.assign(rng.normal(scale=scale, size=weight.shape).astype("float32"))


def _run(path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def _assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


def _assert_standard_ops_only(proto) -> None:
    for op_type in onnx_op_types(proto):
        assert ":" not in op_type, op_type  # no custom domain
        assert onnx.defs.has(op_type), op_type  # a standard ONNX operator


CONV_CASES = {
    "v1_same": dict(filters=6, kernel_size=3, padding="same"),
    "v2_same_bias": dict(filters=6, kernel_size=3, padding="same", modulated=True),
    "v2_groups_deformable_groups": dict(filters=8, kernel_size=3, padding="same", modulated=True,
                                        groups=2, deformable_groups=4),
    "v1_dilation": dict(filters=5, kernel_size=3, padding="same", dilation_rate=2, use_bias=False),
    "v2_stride_explicit": dict(filters=4, kernel_size=3, strides=2, padding=1, modulated=True),
    "v2_asymmetric": dict(filters=4, kernel_size=(3, 2), strides=(2, 1),
                          padding=((1, 0), (2, 1)), modulated=True, deformable_groups=2),
    "v1_valid_5x5": dict(filters=3, kernel_size=5, padding="valid"),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_deformable_conv_model_matches_onnxruntime(case, tmp_path):
    inputs = keras.Input((None, None, 8))
    x = tf_dcn.layers.DeformableConv2D(**CONV_CASES[case], name="dcn_a")(inputs)
    x = keras.layers.ReLU()(x)
    x = tf_dcn.layers.DeformableConv2D(4, 3, padding="same", modulated=True, name="dcn_b")(x)
    model = keras.Model(inputs, x)
    _randomise_offset_branches(model)
    path = tmp_path / "model.onnx"
    proto = tf_dcn.export_onnx(model, path)
    assert sum(node.op_type == "DeformConv" for node in proto.graph.node) == 2
    _assert_standard_ops_only(proto)
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    assert [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")
            ] == [19]
    rng = np.random.default_rng(1)
    for shape in ((1, 13, 11, 8), (3, 16, 20, 8)):  # dynamic batch and spatial size
        images = rng.normal(size=shape).astype("float32")
        got, = _run(path, [images])
        _assert_close(got, model(images).numpy())
    # the layers are back on the op afterwards
    assert all(layer.implementation == "op" for layer in model.layers
               if isinstance(layer, tf_dcn.layers.DeformableConv2D))


def test_newer_opset(tmp_path):
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, tf_dcn.layers.DeformableConv2D(4, 3, padding="same",
                                                              modulated=True)(inputs))
    _randomise_offset_branches(model)
    proto = tf_dcn.export_onnx(model, tmp_path / "model.onnx", opset=21)
    assert [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")
            ] == [21]
    images = np.random.default_rng(2).normal(size=(2, 9, 9, 4)).astype("float32")
    _assert_close(_run(tmp_path / "model.onnx", [images])[0], model(images).numpy())


def test_same_padding_with_stride_needs_a_fixed_size(tmp_path):
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, tf_dcn.layers.DeformableConv2D(4, 3, strides=2,
                                                              padding="same")(inputs))
    _randomise_offset_branches(model)
    with pytest.raises(ValueError, match="input_signature"):
        tf_dcn.export_onnx(model, tmp_path / "model.onnx")
    # With a fixed height and width TensorFlow's SAME rule becomes explicit pads (here odd and
    # even sizes, whose padding differs).
    for size in ((15, 10),):
        signature = [tf.TensorSpec((None,) + size + (4,), tf.float32)]
        tf_dcn.export_onnx(model, tmp_path / "fixed.onnx", input_signature=signature)
        images = np.random.default_rng(3).normal(size=(2,) + size + (4,)).astype("float32")
        _assert_close(_run(tmp_path / "fixed.onnx", [images])[0], model(images).numpy())


def test_opset_below_19_is_an_error(tmp_path):
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, tf_dcn.layers.DeformableConv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="opset 19"):
        tf_dcn.export_onnx(model, tmp_path / "model.onnx", opset=18)
    with pytest.raises(ValueError, match="opset"):
        tf_dcn.export_onnx(model, tmp_path / "model.onnx", opset="19")


def test_rfcn_head_with_deformable_psroi_pooling(tmp_path):
    features = keras.Input((None, None, 16))
    boxes = keras.Input((None, 4))                       # per-image boxes, -1 padding
    maps = keras.layers.Conv2D(3 * 9, 1)(features)
    pooled = tf_dcn.layers.DeformablePSRoIPooling(
        3, group_size=3, spatial_scale=0.25, sample_per_part=2,
        offset_kernel_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=1))(
        [maps, boxes, features])
    scores = keras.layers.Lambda(lambda t: tf.reduce_mean(t, axis=(2, 3)))(pooled)
    rois = keras.Input((5,))                             # rows (batch index, x1, y1, x2, y2)
    roi_scores = tf_dcn.layers.DeformableRoIPooling(
        pooled_size=2, spatial_scale=0.25, sample_per_part=2,
        offset_kernel_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=2))(
        [features, rois])
    model = keras.Model([features, boxes, rois], [scores, roi_scores])
    proto = tf_dcn.export_onnx(model, tmp_path / "head.onnx")
    _assert_standard_ops_only(proto)
    rng = np.random.default_rng(4)
    feature_map = rng.normal(size=(2, 12, 10, 16)).astype("float32")
    box_array = np.array([[[4, 4, 30, 20], [0, 0, 39, 47], [-1, -1, -1, -1]],
                          [[10, 3, 12, 9], [5, 5, 25, 45], [20, 20, 38, 30]]], np.float32)
    roi_array = np.array([[0, 1, 2, 20, 30], [1, 8, 8, 9, 9], [1, 0, 0, 39, 47]], np.float32)
    got = _run(tmp_path / "head.onnx", [feature_map, box_array, roi_array])
    expected = model([feature_map, box_array, roi_array])
    for g, e in zip(got, expected):
        _assert_close(g, np.asarray(e))
    np.testing.assert_array_equal(got[0][0, 2], 0.0)  # the padding box
    assert all(layer.implementation == "op" for layer in model.layers if isinstance(
        layer, (tf_dcn.layers.DeformablePSRoIPooling, tf_dcn.layers.DeformableRoIPooling)))


def test_deformable_resnet50(tmp_path):
    model = tf_dcn.applications.DeformableResNet(50, modulated=True, out_indices=(2, 3))
    _randomise_offset_branches(model, scale=0.02)
    proto = tf_dcn.export_onnx(model, tmp_path / "resnet50.onnx")
    _assert_standard_ops_only(proto)
    deformable = [layer for layer in model._flatten_layers()
                  if isinstance(layer, tf_dcn.layers.DeformableConv2D)]
    assert sum(node.op_type == "DeformConv" for node in proto.graph.node) == len(deformable) == 13
    images = np.random.default_rng(5).normal(size=(2, 64, 96, 3)).astype("float32")
    got = _run(tmp_path / "resnet50.onnx", [images])
    for g, e in zip(got, model(images)):
        _assert_close(g, e.numpy())


def test_op_without_an_onnx_form_is_named(tmp_path):
    """A custom layer calling the pooling op directly (not the composite) has no ONNX form."""
    features = keras.Input((8, 8, 4))
    rois = keras.Input((5,))
    pooled = keras.layers.Lambda(lambda t: tf_dcn.deform_psroi_pool(
        t[0], t[1], None, output_dim=1, group_size=2, spatial_scale=1.0))([features, rois])
    model = keras.Model([features, rois], pooled)
    with pytest.raises(ValueError, match="DeformablePSRoIPool"):
        tf_dcn.export_onnx(model, tmp_path / "model.onnx")
    proto = tf_dcn.export_onnx(model, tmp_path / "custom.onnx", allow_custom_ops=True)
    assert "ai.onnx.converters.tensorflow:TfDcn>DeformablePSRoIPool" in onnx_op_types(proto)


def test_missing_onnx_tools_name_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, tf_dcn.layers.DeformableConv2D(4, 3)(inputs))
    with pytest.raises(ImportError, match=r"tf-dcn\[onnx\]"):
        tf_dcn.export_onnx(model, tmp_path / "model.onnx")


def test_captured_tensor_is_an_error(tmp_path):
    """A tensor captured from outside the traced call would become an extra ONNX input."""
    class Shift(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.shift = tf.constant([1.0, 2.0, 3.0, 4.0])

        def call(self, x):
            return x + self.shift

    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, Shift()(tf_dcn.layers.DeformableConv2D(4, 3)(inputs)))
    with pytest.raises(ValueError, match="captures tensors"):
        tf_dcn.export_onnx(model, tmp_path / "model.onnx")
