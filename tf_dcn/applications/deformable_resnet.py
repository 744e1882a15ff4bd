"""``DeformableResNet``: a channels-last Keras ResNet-50/101/152 with deformable 3x3 convolutions,
weight-compatible with mmdetection's ``ResNet(dcn=..., stage_with_dcn=...)`` and torchvision.

The network is torchvision's / mmdetection's "pytorch style" ResNet: a 7x7/2 stem conv, BN, ReLU
and a 3x3/2 max pool with padding 1, then four stages of bottleneck blocks (1x1, 3x3, 1x1 convs,
expansion 4) whose stride sits in the 3x3 conv, with a 1x1 strided conv + BN shortcut in each
stage's first block. BatchNorm uses PyTorch's ``eps=1e-5`` (Keras ``momentum=0.9`` is PyTorch's
0.1). PyTorch pads symmetrically while Keras' ``"same"`` pads bottom/right more at stride 2, so
every strided conv and the max pool get an explicit ``ZeroPadding2D`` and run ``"valid"`` (the
max pool's zero padding equals PyTorch's ``-inf`` padding because it follows a ReLU). In the
stages chosen by ``stage_with_dcn`` the 3x3 conv is a ``DeformableConv2D(planes, 3,
strides=stride, padding=1, use_bias=False)`` owning its offset branch, a regular conv with the
same stride and padding (mmcv's ``DeformConv2dPack`` / ``ModulatedDeformConv2dPack``).

Every layer is named by its PyTorch module path, so a checkpoint maps key by key
(``{name}.{param}``), and ``model.get_layer("layer2.0.conv2")`` finds the module
``layer2[0].conv2``. ``L`` is ``layer1`` ... ``layer4`` (c2 ... c5) and ``b`` the block index.

================================  ============================  =================================
PyTorch key                       PyTorch shape                 Keras layer: variable
================================  ============================  =================================
``conv1.weight``                  ``[64, 3, 7, 7]``             ``conv1`` (Conv2D): kernel
``bn1.weight`` / ``.bias``        ``[64]``                      ``bn1``: gamma / beta
``bn1.running_mean`` / ``_var``   ``[64]``                      ``bn1``: moving_mean / _variance
``*.num_batches_tracked``         ``[]`` int64                  consumed, not stored
``L.b.conv1.weight``              ``[planes, Cin, 1, 1]``       ``L.b.conv1``: kernel
``L.b.bn{1,2}.*``                 ``[planes]``                  ``L.b.bn1``, ``L.b.bn2`` (as bn1)
``L.b.conv2.weight``              ``[planes, planes, 3, 3]``    ``L.b.conv2``: kernel
``L.b.conv2.conv_offset.weight``  ``[B, planes, 3, 3]``         ``L.b.conv2``: offset_kernel
``L.b.conv2.conv_offset.bias``    ``[B]``                       ``L.b.conv2``: offset_bias
``L.b.conv3.weight``              ``[4*planes, planes, 1, 1]``  ``L.b.conv3``: kernel
``L.b.bn3.*``                     ``[4*planes]``                ``L.b.bn3`` (as bn1)
``L.0.downsample.0.weight``       ``[4*planes, Cin, 1, 1]``     ``L.0.downsample.0``: kernel
``L.0.downsample.1.*``            ``[4*planes]``                ``L.0.downsample.1`` (as bn1)
================================  ============================  =================================

``L.b.conv2`` is a ``DeformableConv2D`` in the stages of ``stage_with_dcn`` (a ``Conv2D``
elsewhere); its offset branch has ``B = 2*DG*9`` output channels (DCNv1) or ``3*DG*9`` (DCNv2:
offsets, then mask logits). Checkpoints older than mmdetection PR #1894 name the branch
``L.b.conv2_offset.weight`` / ``.bias``; both styles load.

``planes`` is 64, 128, 256, 512 for ``layer1`` ... ``layer4``. Conv kernels are transposed from
OIHW to HWIO (``w.transpose(2, 3, 1, 0)``); the offset branch's channel order is the same in both
frameworks (offsets ``dy, dx`` per deformable group and tap, then, for DCNv2, the mask logits).
Weight-free layers are named after the module they follow: ``conv1_pad``, ``relu``,
``maxpool_pad``, ``maxpool``, ``L.b.relu1``, ``L.b.relu2``, ``L.b.conv2_pad`` (strided regular
3x3 only), ``L.b.add`` and ``L.b.relu3`` (the block output). A detector checkpoint's
``backbone.`` (and a ``DataParallel`` ``module.``) prefix is stripped and its other keys are
reported as ``ignored``, as are an ImageNet classifier's ``fc.weight`` / ``fc.bias``.

The input is what the PyTorch model expects, channels-last: RGB ``[N, H, W, 3]`` normalised with
the checkpoint's mean and std (mmdetection / torchvision: mean ``[123.675, 116.28, 103.53]``, std
``[58.395, 57.12, 57.375]`` on 0-255 pixels). Outputs are channels-last too: feature ``ci`` is
``[N, ceil(H/2^i), ceil(W/2^i), 256*2^(i-2)]`` (for H, W divisible by 32, ``H/2^i``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tf_dcn.convert import LoadReport, load_pytorch_state_dict, read_state_dict
from tf_dcn.layers.deformable_conv2d import DeformableConv2D

STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = 4
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1

_CHANNELS_LAST = "channels_last"


def _kernel_init() -> keras.initializers.Initializer:
    # torchvision / mmdetection: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def _conv(filters: int, size: int, stride: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, size, strides=stride, padding="valid", use_bias=False,
                               data_format=_CHANNELS_LAST, kernel_initializer=_kernel_init(),
                               name=name)


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                           name=name)


def _pad(amount: int, name: str) -> keras.layers.ZeroPadding2D:
    return keras.layers.ZeroPadding2D(amount, data_format=_CHANNELS_LAST, name=name)


def bottleneck_block(x, planes: int, stride: int = 1, *, downsample: bool = False,
                     dcn: bool = False, modulated: bool = False, deformable_groups: int = 1,
                     name: str):
    """One "pytorch style" bottleneck block (stride in the 3x3 conv), named like PyTorch's.

    Args:
        x: a channels-last Keras tensor ``[N, H, W, Cin]``.
        planes: width of the 1x1 and 3x3 convs; the block outputs ``4*planes`` channels.
        stride: stride of the 3x3 conv (and of the shortcut's 1x1 conv).
        downsample: add the 1x1 conv + BN shortcut (``{name}.downsample.0`` / ``.1``); needed
            when ``stride > 1`` or ``Cin != 4*planes``.
        dcn: make the 3x3 conv a ``DeformableConv2D`` that owns its offset branch.
        modulated: DCNv2 (offsets and mask) rather than DCNv1.
        deformable_groups: mmdetection's ``dcn=dict(deform_groups=...)``.
        name: the block's PyTorch module path, e.g. ``"layer2.0"``.

    Returns:
        ``[N, ceil(H/stride), ceil(W/stride), 4*planes]``, after the final ReLU.
    """
    if not downsample and (stride != 1 or x.shape[-1] != planes * EXPANSION):
        raise ValueError(f"{name}: stride {stride} or {x.shape[-1]} -> {planes * EXPANSION} "
                         "channels needs downsample=True")
    out = _conv(planes, 1, 1, f"{name}.conv1")(x)
    out = _bn(f"{name}.bn1")(out)
    out = keras.layers.ReLU(name=f"{name}.relu1")(out)
    if dcn:
        out = DeformableConv2D(planes, 3, strides=stride, padding=1, use_bias=False,
                               data_format=_CHANNELS_LAST, kernel_initializer=_kernel_init(),
                               deformable_groups=deformable_groups, modulated=modulated,
                               name=f"{name}.conv2")(out)
    elif stride == 1:
        out = keras.layers.Conv2D(planes, 3, padding="same", use_bias=False,
                                  data_format=_CHANNELS_LAST, kernel_initializer=_kernel_init(),
                                  name=f"{name}.conv2")(out)  # stride 1: "same" pads 1 each side
    else:
        out = _pad(1, f"{name}.conv2_pad")(out)
        out = _conv(planes, 3, stride, f"{name}.conv2")(out)
    out = _bn(f"{name}.bn2")(out)
    out = keras.layers.ReLU(name=f"{name}.relu2")(out)
    out = _conv(planes * EXPANSION, 1, 1, f"{name}.conv3")(out)
    out = _bn(f"{name}.bn3")(out)
    identity = x
    if downsample:
        identity = _conv(planes * EXPANSION, 1, stride, f"{name}.downsample.0")(x)
        identity = _bn(f"{name}.downsample.1")(identity)
    out = keras.layers.Add(name=f"{name}.add")([out, identity])
    return keras.layers.ReLU(name=f"{name}.relu3")(out)


def _backbone_prefix(keys: Sequence[str]) -> str:
    for candidate in ("module.backbone.", "backbone."):
        if any(k.startswith(candidate) for k in keys):
            return candidate
    if keys and all(k.startswith("module.") for k in keys):
        return "module."
    return ""


def load_resnet_weights(model: keras.Model, weights: Any, strict: bool = True
                        ) -> LoadReport | None:
    """Loads mmdetection / torchvision ResNet weights into a :func:`DeformableResNet` model.

    Args:
        model: a model built by :func:`DeformableResNet` (or any model with the same layer names).
        weights: a state dict (mapping of arrays or tensors in PyTorch layout, mmdetection key
            names), a path to an ``.npz`` / ``.pth`` / ``.pt`` file of one, or a Keras weights
            file (``.weights.h5`` / ``.h5`` / ``.keras``) saved from such a model. ``backbone.``
            and ``module.`` prefixes are stripped (other keys are reported as ``ignored``), as
            are ``fc.*`` classifier keys and the keys of stages the model does not build
            (after the last of ``out_indices``); both mmcv offset key styles are accepted.
        strict: raise :class:`tf_dcn.convert.StateDictMismatchError` when backbone keys are
            missing or unexpected (nothing is loaded then).

    Returns:
        The :class:`tf_dcn.convert.LoadReport`, or None for a Keras weights file.

    Raises:
        ValueError: a shape mismatch (naming the key and both shapes), e.g. a DCNv2 checkpoint
            into a ``modulated=False`` model, or missing/unexpected keys in strict mode.
    """
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(
            (".keras", ".h5")):
        model.load_weights(os.fspath(weights))
        return None
    arrays = read_state_dict(weights)
    prefix = _backbone_prefix(list(arrays))
    # Stages after the last one in out_indices are not part of the model: their keys are ignored.
    built = {layer.name.split(".")[0] for layer in model.layers}
    absent = tuple(f"layer{i}." for i in range(1, 5) if f"layer{i}" not in built)
    return load_pytorch_state_dict(model, arrays, prefix=prefix, strict=strict,
                                   ignore=("fc.",) + absent)


def DeformableResNet(  # noqa: N802 - named like keras.applications' constructors
    depth: int = 50,
    *,
    modulated: bool = False,
    deformable_groups: int = 1,
    stage_with_dcn: Sequence[bool] = (False, True, True, True),
    out_indices: Sequence[int] = (0, 1, 2, 3),
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: Mapping[str, Any] | str | os.PathLike | None = None,
    strict: bool = True,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    name: str | None = None,
) -> keras.Model:
    """A ResNet backbone with deformable 3x3 convs, returning multi-scale channels-last features.

    Equivalent to mmdetection's ``ResNet(depth, out_indices, style="pytorch",
    dcn=dict(type="DCNv2" if modulated else "DCN", deform_groups=deformable_groups),
    stage_with_dcn=stage_with_dcn)`` (the "dconv c3-c5" / "mdconv c3-c5" configs by default) and,
    with ``stage_with_dcn=(False,) * 4``, to torchvision's ``resnet{depth}`` without its head.
    Layer names are the PyTorch module paths (see the module docstring for the key table).

    Args:
        depth: 50, 101 or 152.
        modulated: DCNv2 (``ModulatedDeformConv2dPack``: offsets and sigmoid mask) instead of
            DCNv1 (``DeformConv2dPack``).
        deformable_groups: offset groups of every deformable conv (``deform_groups``).
        stage_with_dcn: four booleans for ``layer1`` ... ``layer4`` (c2 ... c5); default c3-c5.
        out_indices: which stages to return, 0 = ``layer1`` (c2, stride 4) ... 3 = ``layer4``
            (c5, stride 32), in increasing order.
        input_shape: ``(H, W, 3)``; ``None`` for variable sizes.
        weights: None (random: Kaiming fan-out convs, zero offset branches), or a checkpoint for
            :func:`load_resnet_weights` (a state dict, ``.npz`` / ``.pth`` path, or Keras weights
            file). The :class:`~tf_dcn.convert.LoadReport` of a PyTorch checkpoint is kept as
            ``model.conversion_report``.
        strict: passed to :func:`load_resnet_weights`.
        frozen_stages: as mmdetection's: -1 freezes nothing, 0 the stem (``conv1``, ``bn1``),
            ``i`` the stem and ``layer1`` ... ``layer{i}`` (``trainable=False``).
        norm_eval: set every BatchNormalization to ``trainable=False``, which in Keras both uses
            the moving statistics in training and freezes ``gamma`` / ``beta`` (mmdetection's
            ``norm_eval`` freezes only the statistics).
        name: model name, default ``"deformable_resnet{depth}"``.

    Returns:
        A functional ``keras.Model`` from ``[N, H, W, 3]`` to a list of ``len(out_indices)``
        tensors, feature ``i`` ``[N, H/2^(i+2), W/2^(i+2), 256*2^i]`` (sizes rounded up).

    Raises:
        ValueError: an unsupported depth or argument, or weights that do not fit.

    Example:
        >>> backbone = DeformableResNet(50, modulated=True, weights="r50_dcnv2.npz")
        >>> c2, c3, c4, c5 = backbone(images)       # images [N, H, W, 3], normalised
    """
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got depth={depth!r}")
    stage_with_dcn = tuple(bool(s) for s in stage_with_dcn)
    if len(stage_with_dcn) != 4:
        raise ValueError(f"stage_with_dcn needs 4 booleans (layer1..layer4), got {stage_with_dcn}")
    out_indices = tuple(int(i) for i in out_indices)
    if not out_indices or list(out_indices) != sorted(set(out_indices)) or not all(
            0 <= i <= 3 for i in out_indices):
        raise ValueError(f"out_indices must be increasing stage indices in 0..3, got {out_indices}")
    if not isinstance(deformable_groups, int) or deformable_groups < 1:
        raise ValueError(f"deformable_groups must be a positive int, got {deformable_groups!r}")
    if frozen_stages not in range(-1, 5):
        raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages!r}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3), got {input_shape}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _pad(3, "conv1_pad")(inputs)
    x = _conv(64, 7, 2, "conv1")(x)
    x = _bn("bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = _pad(1, "maxpool_pad")(x)  # zeros == PyTorch's -inf padding after a ReLU
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", data_format=_CHANNELS_LAST,
                                  name="maxpool")(x)
    features = []
    for stage, (blocks, planes) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_PLANES)):
        for block in range(blocks):
            x = bottleneck_block(
                x, planes, stride=(1 if stage == 0 else 2) if block == 0 else 1,
                downsample=block == 0, dcn=stage_with_dcn[stage], modulated=modulated,
                deformable_groups=deformable_groups, name=f"layer{stage + 1}.{block}")
        if stage in out_indices:
            features.append(x)
        if stage == max(out_indices):
            break
    model = keras.Model(inputs, features, name=name or f"deformable_resnet{depth}")

    frozen = (["conv1", "bn1"] if frozen_stages >= 0 else []) + [
        f"layer{i}." for i in range(1, frozen_stages + 1)]
    for layer in model.layers:
        if layer.name in frozen or any(layer.name.startswith(p) for p in frozen if p.endswith(".")):
            layer.trainable = False
        if norm_eval and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False

    if weights is not None:
        report = load_resnet_weights(model, weights, strict=strict)
        if report is not None:
            model.conversion_report = report
    return model
