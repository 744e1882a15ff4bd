"""DeformableResNet against an independent NCHW NumPy reference on mmdetection-named random
checkpoints: a deformable bottleneck, the whole DCNv2 ResNet-50, key styles, round trips, saving."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from tests import resnet_reference as ref
from tf_dcn.applications import DeformableResNet, bottleneck_block, load_resnet_weights
from tf_dcn.convert import (StateDictMismatchError, load_pytorch_state_dict,
                            to_pytorch_state_dict)
from tf_dcn.layers import DeformableConv2D

DCN_C3_C5 = (False, True, True, True)


def _nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))).astype(np.float32)


def _assert_close(ours, expected_nchw, rel=2e-5):
    expected = np.transpose(expected_nchw, (0, 2, 3, 1))
    assert ours.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0.1
    np.testing.assert_allclose(np.asarray(ours, np.float64), expected, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module")
def r50_state_dict():
    """mmdetection DCNv2 ResNet-50, deform_groups=1, dconv c3-c5, random float32 weights."""
    return ref.resnet_state_dict(np.random.default_rng(50), 50, DCN_C3_C5, modulated=True)


@pytest.fixture(scope="module")
def r50(r50_state_dict):
    return DeformableResNet(50, modulated=True, weights=r50_state_dict)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).standard_normal((1, 3, 64, 64))


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride, modulated, groups", [(2, True, 1), (1, False, 2)])
def test_deformable_bottleneck_matches_reference(stride, modulated, groups):
    rng = np.random.default_rng(stride * 10 + groups)
    cin, planes = (256, 128) if stride == 2 else (512, 128)
    sd = ref.block_state_dict(rng, "layer2.1.", cin, planes, downsample=stride == 2, dcn=True,
                              modulated=modulated, deform_groups=groups)
    inputs = keras.Input((None, None, cin))
    block = keras.Model(inputs, bottleneck_block(
        inputs, planes, stride, downsample=stride == 2, dcn=True, modulated=modulated,
        deformable_groups=groups, name="layer2.1"))
    report = load_pytorch_state_dict(block, sd)
    assert report.complete and sorted(report.loaded) == sorted(sd)
    conv2 = block.get_layer("layer2.1.conv2")
    assert isinstance(conv2, DeformableConv2D) and conv2.modulated == modulated
    assert conv2.offset_kernel.shape == (3, 3, planes, (3 if modulated else 2) * groups * 9)

    x = np.maximum(rng.standard_normal((2, cin, 11, 12)), 0)  # odd size: stride-2 rounding
    trace = {}
    expected = ref.bottleneck(sd, "layer2.1.", x, stride, dcn=True, modulated=modulated,
                              deform_groups=groups, trace=trace)
    _assert_close(block(_nhwc(x)).numpy(), expected)
    offsets = trace["offsets"][0]
    assert 0.3 < np.abs(offsets).mean() < 3.0, "samples should move by around a pixel"

    # The offsets matter: swapping dy and dx in the reference changes the result by far more
    # than the tolerance (so a transposed offset layout could not pass).
    swapped = dict(sd)
    w = sd["layer2.1.conv2.conv_offset.weight"]
    b = sd["layer2.1.conv2.conv_offset.bias"]
    order = np.arange(w.shape[0])
    order[:2 * groups * 9] = order[:2 * groups * 9].reshape(-1, 2)[:, ::-1].reshape(-1)
    swapped["layer2.1.conv2.conv_offset.weight"], swapped["layer2.1.conv2.conv_offset.bias"] = (
        w[order], b[order])
    other = ref.bottleneck(swapped, "layer2.1.", x, stride, dcn=True, modulated=modulated,
                           deform_groups=groups)
    assert np.abs(other - expected).max() > 100 * 2e-5 * np.abs(expected).max()


def test_backbone_matches_reference(r50, r50_state_dict, image):
    assert r50.conversion_report.complete
    assert len(r50.conversion_report.loaded) == len(r50_state_dict)
    features = r50(_nhwc(image))
    expected = ref.resnet(r50_state_dict, image, 50, DCN_C3_C5, modulated=True)
    assert [tuple(f.shape) for f in features] == [
        (1, 16, 16, 256), (1, 8, 8, 512), (1, 4, 4, 1024), (1, 2, 2, 2048)]
    for ours, theirs in zip(features, expected):
        _assert_close(ours.numpy(), theirs)


def test_structure_and_names(r50):
    deformable = [l.name for l in r50.layers if isinstance(l, DeformableConv2D)]
    assert deformable == [f"layer{s}.{b}.conv2" for s, n in ((2, 4), (3, 6), (4, 3))
                          for b in range(n)]
    for name in deformable:
        layer = r50.get_layer(name)
        stride = 2 if name.endswith(".0.conv2") else 1
        assert layer.modulated and layer.deformable_groups == 1 and not layer.use_bias
        assert layer.strides == (stride, stride) and layer.padding == 1
    assert isinstance(r50.get_layer("layer1.0.conv2"), keras.layers.Conv2D)
    bn = r50.get_layer("layer3.2.bn2")
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)
    assert r50.get_layer("layer1.0.downsample.0").strides == (1, 1)
    assert r50.get_layer("layer4.0.downsample.0").strides == (2, 2)


# ------------------------------------------------------------------------------------------------
# Conversion paths
# ------------------------------------------------------------------------------------------------
def test_round_trip_to_pytorch(r50, r50_state_dict):
    exported = to_pytorch_state_dict(r50, num_batches_tracked=None)
    expected = {k: v for k, v in r50_state_dict.items() if not k.endswith("num_batches_tracked")}
    assert sorted(exported) == sorted(expected)
    for key, value in expected.items():
        assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
        assert np.array_equal(exported[key], value), key
    with_counts = to_pytorch_state_dict(r50)
    assert set(with_counts) == set(r50_state_dict)
    assert with_counts["bn1.num_batches_tracked"].dtype == np.int64


def test_old_mmcv_keys_detector_prefix_and_truncated_stages(r50_state_dict, image):
    """Pre-PR-#1894 keys (conv2_offset) in a detector checkpoint (backbone. prefix, neck/head
    keys) into a model that stops at c3: layer3/layer4, neck and head keys are ignored."""
    old = ref.to_old_mmcv_keys(r50_state_dict)
    assert "layer2.0.conv2_offset.weight" in old and "layer2.0.conv2.conv_offset.weight" not in old
    detector = {"backbone." + k: v for k, v in old.items()}
    detector["neck.lateral_convs.0.conv.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    detector["rpn_head.rpn_cls.bias"] = np.zeros(3, np.float32)
    model = DeformableResNet(50, modulated=True, out_indices=(0, 1), weights=detector)
    report = model.conversion_report
    assert report.complete
    assert "backbone.layer2.0.conv2_offset.weight" in report.loaded
    assert "neck.lateral_convs.0.conv.weight" in report.ignored
    assert "backbone.layer3.0.conv1.weight" in report.ignored
    c2, c3 = model(_nhwc(image))
    expected = ref.resnet(old, image, 50, DCN_C3_C5, modulated=True, out_indices=(0, 1))
    _assert_close(c2.numpy(), expected[0])
    _assert_close(c3.numpy(), expected[1])


# Keras' own weight saving trips NumPy 2's __array__(copy=...) deprecation; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_files_round_trip(r50_state_dict, image, tmp_path):
    """Convert once, save as .keras and .weights.h5, reload both ways: identical outputs. (A model
    up to c3 keeps the files small; the checkpoint's layer3/layer4 keys are ignored.)"""
    model = DeformableResNet(50, modulated=True, out_indices=(0, 1), weights=r50_state_dict)
    x = _nhwc(image)
    expected = [f.numpy() for f in model(x)]
    model.save(tmp_path / "r50_c3.keras")
    reloaded = keras.models.load_model(tmp_path / "r50_c3.keras")
    assert isinstance(reloaded.get_layer("layer2.3.conv2"), DeformableConv2D)
    for ours, theirs in zip(reloaded(x), expected):
        np.testing.assert_array_equal(ours.numpy(), theirs)

    model.save_weights(tmp_path / "r50_c3.weights.h5")
    again = DeformableResNet(50, modulated=True, out_indices=(0, 1),
                             weights=tmp_path / "r50_c3.weights.h5")
    assert not hasattr(again, "conversion_report")
    for ours, theirs in zip(again(x), expected):
        np.testing.assert_array_equal(ours.numpy(), theirs)


def test_npz_checkpoint(r50_state_dict, tmp_path):
    path = tmp_path / "r50.npz"
    subset = {k: v for k, v in r50_state_dict.items() if k.split(".")[0] in ("conv1", "bn1",
                                                                          "layer1")}
    subset["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision classifier head
    subset["fc.bias"] = np.zeros(1000, np.float32)
    np.savez(path, **subset)
    model = DeformableResNet(50, out_indices=(0,), weights=str(path))
    assert model.conversion_report.complete
    assert model.conversion_report.ignored == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                  subset["conv1.weight"].transpose(2, 3, 1, 0))


def test_v1_model_rejects_v2_checkpoint(r50_state_dict):
    model = DeformableResNet(50, modulated=False, out_indices=(0, 1))
    with pytest.raises(ValueError, match=re.escape(
            "layer2.0.conv2.conv_offset.weight: shape mismatch: the state dict has "
            "(27, 128, 3, 3), layer 'layer2.0.conv2' expects (18, 128, 3, 3)")) as info:
        load_resnet_weights(model, r50_state_dict)
    assert "modulated=True" in str(info.value)


# ------------------------------------------------------------------------------------------------
# Deeper variant, freezing, arguments
# ------------------------------------------------------------------------------------------------
def test_resnet101_structure_missing_keys_and_freezing(r50_state_dict):
    model = DeformableResNet(101, input_shape=(64, 64, 3), deformable_groups=4, frozen_stages=1,
                             norm_eval=True)
    blocks = {}
    for layer in model.layers:
        match = re.fullmatch(r"layer(\d)\.(\d+)\.conv1", layer.name)
        if match:
            blocks[int(match[1])] = blocks.get(int(match[1]), 0) + 1
    assert blocks == {1: 3, 2: 4, 3: 23, 4: 3}
    deformable = [l for l in model.layers if isinstance(l, DeformableConv2D)]
    assert len(deformable) == 4 + 23 + 3
    assert all(l.deformable_groups == 4 and not l.modulated for l in deformable)
    assert deformable[0].offset_kernel.shape == (3, 3, 128, 2 * 4 * 9)
    assert [tuple(o.shape) for o in model.outputs] == [
        (None, 16, 16, 256), (None, 8, 8, 512), (None, 4, 4, 1024), (None, 2, 2, 2048)]
    # frozen_stages=1: the stem and layer1; norm_eval: every BN.
    assert not model.get_layer("conv1").trainable
    assert not model.get_layer("layer1.2.conv3").trainable
    assert model.get_layer("layer2.0.conv1").trainable
    assert not model.get_layer("layer4.2.bn3").trainable
    # A plain ResNet-50 checkpoint lacks layer3.6 ... layer3.22 and every offset branch.
    plain_r50 = ref.resnet_state_dict(np.random.default_rng(1), 50, (False,) * 4)
    before = model.get_layer("conv1").kernel.numpy()
    with pytest.raises(StateDictMismatchError,
                       match=r"missing key\(s\): .*layer3\.6\.conv1\.weight") as info:
        load_resnet_weights(model, plain_r50)
    assert len(info.value.report.missing) > 0 and info.value.report.unexpected == []
    assert "layer3.22.bn3.running_var" in info.value.report.missing
    assert "layer2.0.conv2.conv_offset.weight" in info.value.report.missing
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), before)  # untouched


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 34}, "depth must be one of"),
    ({"out_indices": (2, 1)}, "out_indices"),
    ({"stage_with_dcn": (True, True)}, "stage_with_dcn"),
    ({"frozen_stages": 5}, "frozen_stages"),
    ({"input_shape": (64, 64, 1)}, "input_shape"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeformableResNet(**kwargs)
