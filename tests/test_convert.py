"""tf_dcn.convert on single layers: mmcv (both key styles), detectron2 and torchvision deformable
convs, Conv2d / BatchNorm / Linear, files, exports, shape errors, missing and unexpected keys.

Every numeric check compares with the NCHW NumPy reference in tests/resnet_reference.py, fed the
PyTorch-layout arrays directly."""

from __future__ import annotations

import importlib.util
import re

import keras
import numpy as np
import pytest

from tests import resnet_reference as ref
from tf_dcn.convert import (LoadReport, StateDictMismatchError, batchnorm_to_pytorch,
                            conv2d_to_pytorch, deform_conv_to_pytorch, linear_to_pytorch,
                            load_batchnorm, load_conv2d, load_detectron2_deform_conv,
                            load_linear, load_mmcv_deform_conv, load_pytorch_state_dict,
                            load_torchvision_deform_conv, read_state_dict, to_pytorch_state_dict)
from tf_dcn.layers import DeformableConv2D

C, COUT, DG = 6, 5, 2
K = 9
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _rng(seed):
    return np.random.default_rng(seed)


def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))).astype(np.float32)


def _assert_matches(ours, expected_nchw, rel=2e-5):
    expected = np.transpose(expected_nchw, (0, 2, 3, 1))
    assert ours.shape == expected.shape
    np.testing.assert_allclose(np.asarray(ours, np.float64), expected, rtol=0,
                               atol=rel * np.abs(expected).max())


def _branch_weights(rng, channels, prefix=""):
    """An offset conv whose outputs move samples by about a pixel."""
    return {prefix + "weight": _f32(rng, channels, C, 3, 3, scale=0.4),
            prefix + "bias": _f32(rng, channels, scale=0.7)}


def _mmcv_dict(rng, modulated, prefix="", bias=True):
    sd = {prefix + "weight": _f32(rng, COUT, C, 3, 3)}
    if bias:
        sd[prefix + "bias"] = _f32(rng, COUT)
    sd.update(_branch_weights(rng, (3 if modulated else 2) * DG * K, prefix + "conv_offset."))
    return sd


def _reference_pack(sd, x, prefix, offset_prefix, modulated, stride=1):
    """mmcv *DeformConv2dPack forward (offset conv, chunk, sigmoid, deformable conv)."""
    branch = ref.conv2d(x, sd[offset_prefix + "weight"], sd[offset_prefix + "bias"],
                        stride=stride, padding=1)
    offset, mask = ref.mmcv_offsets_and_mask(branch, modulated)
    return ref.deform_conv2d(x, offset, sd[prefix + "weight"], mask, sd.get(prefix + "bias"),
                             stride=stride, padding=1, deform_groups=DG)


def _x(seed=3, size=(2, C, 9, 10)):
    return _rng(seed).standard_normal(size)


# ------------------------------------------------------------------------------------------------
# mmcv
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modulated, stride", [(True, 1), (False, 2)])
def test_mmcv_pack_matches_reference(modulated, stride):
    sd = _mmcv_dict(_rng(1), modulated)
    layer = DeformableConv2D(COUT, 3, strides=stride, padding=1, modulated=modulated,
                             deformable_groups=DG)
    report = load_mmcv_deform_conv(layer, sd)  # unbuilt: built from the weight's shape
    assert layer.built and layer.owns_offset_branch
    assert report.complete and sorted(report.loaded) == sorted(sd)
    x = _x()
    _assert_matches(layer(_nhwc(x)).numpy(),
                    _reference_pack(sd, x, "", "conv_offset.", modulated, stride))
    assert {k: v.tolist() for k, v in deform_conv_to_pytorch(layer).items()} == {
        k: v.tolist() for k, v in sd.items()}


@pytest.mark.parametrize("old_style", [False, True])
def test_mmcv_both_key_styles_with_prefix(old_style):
    prefix = "backbone.layer3.1.conv2."
    sd = _mmcv_dict(_rng(2), True, prefix, bias=False)
    if old_style:
        sd = ref.to_old_mmcv_keys(sd)
        assert prefix[:-1] + "_offset.weight" in sd
    sd["backbone.layer3.1.bn2.weight"] = np.ones(COUT, np.float32)  # outside the prefix
    layer = DeformableConv2D(COUT, 3, padding=1, use_bias=False, modulated=True,
                             deformable_groups=DG)
    report = load_mmcv_deform_conv(layer, sd, prefix=prefix)
    assert report.complete and len(report.loaded) == 3
    offset_prefix = prefix[:-1] + "_offset." if old_style else prefix + "conv_offset."
    x = _x(4)
    _assert_matches(layer(_nhwc(x)).numpy(), _reference_pack(sd, x, prefix, offset_prefix, True))
    exported = deform_conv_to_pytorch(layer, prefix)  # always the current style
    assert sorted(exported) == sorted(k.replace("conv2_offset.", "conv2.conv_offset.")
                                      for k in sd if "bn2" not in k)


def test_mmcv_plain_deform_conv_with_external_offsets():
    """mmcv's ModulatedDeformConv2d (no Pack): offsets and mask are inputs, only weight/bias."""
    rng = _rng(5)
    sd = {"weight": _f32(rng, COUT, C, 3, 3), "bias": _f32(rng, COUT)}
    layer = DeformableConv2D(COUT, 3, padding=1, modulated=True, deformable_groups=DG)
    assert load_mmcv_deform_conv(layer, sd).complete
    assert not layer.owns_offset_branch
    x = _x(6)
    offset = _rng(7).standard_normal((2, 2 * DG * K, 9, 10))
    mask = ref.sigmoid(_rng(8).standard_normal((2, DG * K, 9, 10)))
    ours = layer([_nhwc(x), _nhwc(offset), _nhwc(mask)]).numpy()
    _assert_matches(ours, ref.deform_conv2d(x, offset, sd["weight"], mask, sd["bias"], padding=1,
                                            deform_groups=DG))


# ------------------------------------------------------------------------------------------------
# detectron2 and torchvision
# ------------------------------------------------------------------------------------------------
def test_detectron2_deform_conv_and_its_norm():
    rng = _rng(9)
    prefix, offset_prefix = "backbone.res3.0.conv2.", "backbone.res3.0.conv2_offset."
    sd = {prefix + "weight": _f32(rng, COUT, C, 3, 3)}
    sd.update(_branch_weights(rng, 3 * DG * K, offset_prefix))
    norm = {prefix + "norm." + name: value for name, value in {
        "weight": rng.uniform(0.5, 1.5, COUT), "bias": rng.standard_normal(COUT),
        "running_mean": rng.standard_normal(COUT), "running_var": rng.uniform(0.5, 2, COUT),
    }.items()}
    sd.update({k: v.astype(np.float32) for k, v in norm.items()})
    conv = DeformableConv2D(COUT, 3, strides=2, padding=1, use_bias=False, modulated=True,
                            deformable_groups=DG)
    bn = keras.layers.BatchNormalization(epsilon=1e-5)
    report = load_detectron2_deform_conv(conv, sd, prefix, offset_prefix)
    assert report.complete and len(report.loaded) == 3  # norm.* is out of its scope
    assert load_batchnorm(bn, sd, prefix + "norm.").complete
    x = _x(10)
    expected = _reference_pack(sd, x, prefix, offset_prefix, True, stride=2)
    expected = ref.batchnorm(expected, *(sd[prefix + "norm." + n] for n in (
        "weight", "bias", "running_mean", "running_var")))
    _assert_matches(bn(conv(_nhwc(x))).numpy(), expected)
    exported = deform_conv_to_pytorch(conv, prefix, offset_prefix=offset_prefix)
    exported.update(batchnorm_to_pytorch(bn, prefix + "norm.", num_batches_tracked=None))
    assert sorted(exported) == sorted(sd)
    assert all(np.array_equal(exported[k], sd[k]) for k in sd)


def test_torchvision_deform_conv_with_offset_and_mask_convs():
    rng = _rng(11)
    sd = {"dcn.weight": _f32(rng, COUT, C, 3, 3), "dcn.bias": _f32(rng, COUT)}
    sd.update(_branch_weights(rng, 2 * DG * K, "offset_conv."))
    sd.update(_branch_weights(rng, DG * K, "mask_conv."))
    layer = DeformableConv2D(COUT, 3, padding=1, modulated=True, deformable_groups=DG)
    report = load_torchvision_deform_conv(layer, sd, "dcn.", offset_prefix="offset_conv.",
                                          mask_prefix="mask_conv.")
    assert report.complete and len(report.loaded) == 6
    x = _x(12)
    # The PyTorch module: offset = offset_conv(x); mask = sigmoid(mask_conv(x));
    # torchvision.ops.deform_conv2d(x, offset, dcn.weight, dcn.bias, padding=1, mask=mask).
    offset = ref.conv2d(x, sd["offset_conv.weight"], sd["offset_conv.bias"], padding=1)
    mask = ref.sigmoid(ref.conv2d(x, sd["mask_conv.weight"], sd["mask_conv.bias"], padding=1))
    _assert_matches(layer(_nhwc(x)).numpy(), ref.deform_conv2d(
        x, offset, sd["dcn.weight"], mask, sd["dcn.bias"], padding=1, deform_groups=DG))
    exported = deform_conv_to_pytorch(layer, "dcn.", "offset_conv.", "mask_conv.")
    assert sorted(exported) == sorted(sd) and all(np.array_equal(exported[k], sd[k]) for k in sd)


def test_torchvision_v1_and_argument_checks():
    rng = _rng(13)
    sd = {"weight": _f32(rng, COUT, C, 3, 3), "bias": _f32(rng, COUT)}
    sd.update(_branch_weights(rng, 2 * DG * K, "off."))
    layer = DeformableConv2D(COUT, 3, padding=1, deformable_groups=DG)
    assert load_torchvision_deform_conv(layer, sd, offset_prefix="off.").complete
    x = _x(14)
    _assert_matches(layer(_nhwc(x)).numpy(), _reference_pack(sd, x, "", "off.", False))
    with pytest.raises(ValueError, match="pass offset_prefix"):
        load_torchvision_deform_conv(layer, sd)
    with pytest.raises(ValueError, match="not modulated"):
        load_torchvision_deform_conv(layer, sd, offset_prefix="off.", mask_prefix="m.")


# ------------------------------------------------------------------------------------------------
# Plain layers and whole models
# ------------------------------------------------------------------------------------------------
def test_conv_batchnorm_linear_loaders():
    rng = _rng(15)
    sd = {"conv.weight": _f32(rng, 4, C, 3, 2), "conv.bias": _f32(rng, 4),
          "bn.weight": _f32(rng, 4), "bn.bias": _f32(rng, 4), "bn.running_mean": _f32(rng, 4),
          "bn.running_var": rng.uniform(0.5, 2, 4).astype(np.float32),
          "bn.num_batches_tracked": np.array(7, np.int64),
          "fc.weight": _f32(rng, 3, 4), "fc.bias": _f32(rng, 3)}
    conv = keras.layers.Conv2D(4, (3, 2))
    bn = keras.layers.BatchNormalization()
    fc = keras.layers.Dense(3)
    assert load_conv2d(conv, sd, "conv.").loaded == ["conv.weight", "conv.bias"]
    report = load_batchnorm(bn, sd, "bn.", eps=1e-5)
    assert "bn.num_batches_tracked" in report.loaded and bn.epsilon == 1e-5
    assert load_linear(fc, sd, "fc.").complete
    x = _x(16, (2, C, 7, 6))
    y = ref.batchnorm(ref.conv2d(x, sd["conv.weight"], sd["conv.bias"]), sd["bn.weight"],
                      sd["bn.bias"], sd["bn.running_mean"], sd["bn.running_var"])
    _assert_matches(bn(conv(_nhwc(x))).numpy(), y)
    vec = _rng(17).standard_normal((2, 4))
    np.testing.assert_allclose(fc(vec.astype(np.float32)).numpy(),
                               vec @ sd["fc.weight"].T.astype(np.float64) + sd["fc.bias"],
                               rtol=1e-5, atol=1e-5)
    exported = {**conv2d_to_pytorch(conv, "conv."), **batchnorm_to_pytorch(bn, "bn.", 7),
                **linear_to_pytorch(fc, "fc.")}
    assert sorted(exported) == sorted(sd) and all(np.array_equal(exported[k], sd[k]) for k in sd)


def test_generic_model_loader_and_export():
    rng = _rng(18)
    inputs = keras.Input((None, None, C))
    x = DeformableConv2D(COUT, 3, padding=1, modulated=True, deformable_groups=DG,
                         name="head.dcn")(inputs)
    x = keras.layers.BatchNormalization(name="head.bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head.fc")(x))
    sd = {**_mmcv_dict(rng, True, "model.head.dcn."),
          **{f"model.head.bn.{n}": rng.uniform(0.5, 1.5, COUT).astype(np.float32)
             for n in ("weight", "bias", "running_mean", "running_var")},
          "model.head.fc.weight": _f32(rng, 2, COUT), "model.head.fc.bias": _f32(rng, 2),
          "other.weight": _f32(rng, 1)}
    report = load_pytorch_state_dict(model, sd, prefix="model.")
    assert report.complete and report.ignored == ["other.weight"]
    exported = to_pytorch_state_dict(model, prefix="model.", num_batches_tracked=None)
    assert sorted(exported) == sorted(k for k in sd if k != "other.weight")
    assert all(np.array_equal(v, sd[k]) for k, v in exported.items())

    odd = keras.Sequential([keras.Input((4,)), keras.layers.LayerNormalization(name="ln")])
    with pytest.raises(ValueError, match="no PyTorch mapping"):
        load_pytorch_state_dict(odd, {})


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def test_npz_file_and_wrapped_checkpoints(tmp_path):
    sd = _mmcv_dict(_rng(19), True, "conv2.")
    path = tmp_path / "dcn.npz"
    np.savez(path, **sd)
    from_file = DeformableConv2D(COUT, 3, padding=1, modulated=True, deformable_groups=DG)
    from_dict = DeformableConv2D(COUT, 3, padding=1, modulated=True, deformable_groups=DG)
    assert load_mmcv_deform_conv(from_file, str(path), "conv2.").complete
    assert load_mmcv_deform_conv(from_dict, {"state_dict": sd, "meta": {}}, "conv2.").complete
    for a, b in zip(from_file.weights, from_dict.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert sorted(read_state_dict({"model": sd})) == sorted(sd)  # detectron2's wrapper
    with pytest.raises(ValueError, match="expected an .npz"):
        read_state_dict(tmp_path / "weights.onnx")


@pytest.mark.skipif(HAS_TORCH, reason="checks the message shown when torch is absent")
def test_pth_without_torch_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not read")
    with pytest.raises(ImportError, match="needs PyTorch, which is not installed.*npz"):
        read_state_dict(path)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_pth_with_torch(tmp_path):  # pragma: no cover - runs only where torch is installed
    import torch
    sd = _mmcv_dict(_rng(20), False)
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}},
               tmp_path / "m.pth")
    layer = DeformableConv2D(COUT, 3, padding=1, deformable_groups=DG)
    assert load_mmcv_deform_conv(layer, tmp_path / "m.pth").complete


# ------------------------------------------------------------------------------------------------
# Errors and reports
# ------------------------------------------------------------------------------------------------
def test_shape_mismatch_names_key_and_shapes():
    sd = _mmcv_dict(_rng(21), True, "l.")
    layer = DeformableConv2D(COUT, 3, padding=1, modulated=False, deformable_groups=DG)
    layer.build((None, None, None, C))
    expected = (f"l.conv_offset.weight: shape mismatch: the state dict has (54, 6, 3, 3), layer "
                f"'{layer.name}' expects (36, 6, 3, 3)")
    with pytest.raises(ValueError, match=re.escape(expected) + r".*modulated=True"):
        load_mmcv_deform_conv(layer, sd, "l.")
    sd["l.weight"] = sd["l.weight"][:, :, :, :2]
    with pytest.raises(ValueError, match=re.escape(
            "l.weight: shape mismatch: the state dict has (5, 6, 3, 2), layer")):
        load_mmcv_deform_conv(DeformableConv2D(COUT, 3, modulated=True, deformable_groups=DG),
                              sd, "l.")
    bn = keras.layers.BatchNormalization()
    bn.build((None, 4))
    with pytest.raises(ValueError, match=re.escape("bn.running_var: shape mismatch: the state "
                                                   "dict has (3,), layer")):
        load_batchnorm(bn, {"bn.weight": np.ones(4), "bn.bias": np.ones(4),
                            "bn.running_mean": np.ones(4), "bn.running_var": np.ones(3)}, "bn.")


def test_missing_and_unexpected_keys_strict_and_not():
    sd = _mmcv_dict(_rng(22), True, "dcn.")
    del sd["dcn.conv_offset.bias"]
    sd["dcn.conv_offset.extra"] = np.zeros(3, np.float32)
    layer = DeformableConv2D(COUT, 3, padding=1, modulated=True, deformable_groups=DG)
    layer.build((None, None, None, C))
    before = [w.numpy().copy() for w in layer.weights]
    with pytest.raises(StateDictMismatchError) as info:
        load_mmcv_deform_conv(layer, sd, "dcn.")
    message = str(info.value)
    assert "1 missing key(s): dcn.conv_offset.bias" in message
    assert "1 unexpected key(s): dcn.conv_offset.extra" in message
    assert isinstance(info.value, ValueError)
    assert info.value.report.missing == ["dcn.conv_offset.bias"]
    for old, var in zip(before, layer.weights):  # strict failure assigns nothing
        np.testing.assert_array_equal(var.numpy(), old)

    report = load_mmcv_deform_conv(layer, sd, "dcn.", strict=False)
    assert isinstance(report, LoadReport) and not report.complete
    assert report.missing == ["dcn.conv_offset.bias"]
    assert report.unexpected == ["dcn.conv_offset.extra"]
    np.testing.assert_array_equal(layer.offset_kernel.numpy(),
                                  sd["dcn.conv_offset.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(layer.offset_bias.numpy(), before[3])  # kept
    assert "missing=1" in str(report)

    # A bias in the checkpoint for a layer without one is unexpected, not dropped.
    no_bias = DeformableConv2D(COUT, 3, padding=1, use_bias=False, modulated=True,
                               deformable_groups=DG)
    with pytest.raises(StateDictMismatchError, match="unexpected key.*: dcn.bias"):
        load_mmcv_deform_conv(no_bias, _mmcv_dict(_rng(23), True, "dcn."), "dcn.")
