"""Independent float64 NumPy reference of mmdetection's deformable ResNet, in NCHW / OIHW.

Works directly on PyTorch layouts and key names, so a layout mistake in tf_dcn.convert or in the
Keras model cannot cancel out. Vectorised: gathers per kernel tap, BLAS contractions.

Deformable convolution follows torchvision / mmcv: the sample of tap ``k = i*kw + j`` of
deformable group ``g`` at output ``(ho, wo)`` is at ``y = ho*stride - pad + i*dil +
offset[2*(g*K + k)]``, ``x = wo*stride - pad + j*dil + offset[2*(g*K + k) + 1]``; it is 0 unless
``-1 < y < H`` and ``-1 < x < W``, and bilinear corners outside the image read 0. mmcv's
modulated branch output is chunked into ``o1, o2, mask``; offsets are ``cat(o1, o2)`` and the mask
``sigmoid(mask)``.
"""

from __future__ import annotations

import numpy as np

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_PLANES = (64, 128, 256, 512)


# ------------------------------------------------------------------------------------------------
# Primitives (NCHW, OIHW, float64)
# ------------------------------------------------------------------------------------------------
def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0, dilation: int = 1):
    """``x [N, C, H, W]``, ``weight [O, C, kh, kw]`` (groups 1), symmetric zero padding."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    assert c_w == c, (x.shape, weight.shape)
    ho = _out_size(h, kh, stride, padding, dilation)
    wo = _out_size(w, kw, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
                       j * dilation: j * dilation + stride * (wo - 1) + 1: stride]
            out += np.einsum("oc,nchw->nohw", weight[:, :, i, j], patch, optimize=True)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out


def batchnorm(x, weight, bias, mean, var, eps: float = 1e-5):
    """Inference BatchNorm2d on ``[N, C, H, W]``."""
    scale = np.asarray(weight, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def maxpool(x, kernel: int = 3, stride: int = 2, padding: int = 1):
    """PyTorch MaxPool2d: padding with -inf."""
    n, c, h, w = x.shape
    ho, wo = _out_size(h, kernel, stride, padding, 1), _out_size(w, kernel, stride, padding, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                constant_values=-np.inf)
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(kernel):
        for j in range(kernel):
            out = np.maximum(out, xp[:, :, i: i + stride * (ho - 1) + 1: stride,
                                     j: j + stride * (wo - 1) + 1: stride])
    return out


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bilinear_gather(images, py, px):
    """Samples ``images [N, G, Cg, H, W]`` at ``py, px [N, G, P]`` -> ``[N, G, Cg, P]``.

    torchvision's rule: 0 unless ``-1 < y < H`` and ``-1 < x < W``; corners outside read 0.
    """
    n, g, cg, h, w = images.shape
    flat = images.reshape(n, g, cg, h * w)
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0, x0 = np.floor(py), np.floor(px)
    ly, lx = py - y0, px - x0
    out = np.zeros((n, g, cg, py.shape[-1]))
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                           (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = inside & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        index = (np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)).astype(np.int64)
        index = np.where(valid, index, 0)
        values = np.take_along_axis(flat, index[:, :, None, :], axis=-1)
        out += values * np.where(valid, weight, 0.0)[:, :, None, :]
    return out


def deform_conv2d(x, offset, weight, mask=None, bias=None, stride: int = 1, padding: int = 0,
                  dilation: int = 1, deform_groups: int = 1):
    """torchvision/mmcv deformable conv in NCHW: ``x [N, C, H, W]``, ``offset [N, 2*DG*K, Ho,
    Wo]`` (per group and tap: dy then dx), ``weight [O, C, kh, kw]`` (groups 1), ``mask [N, DG*K,
    Ho, Wo]`` applied as given."""
    x = np.asarray(x, np.float64)
    offset = np.asarray(offset, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    assert c_w == c and c % deform_groups == 0
    taps = kh * kw
    ho = _out_size(h, kh, stride, padding, dilation)
    wo = _out_size(w, kw, stride, padding, dilation)
    assert offset.shape == (n, 2 * deform_groups * taps, ho, wo), offset.shape
    off = offset.reshape(n, deform_groups, taps, 2, ho, wo)
    tap_i = (np.arange(taps) // kw) * dilation
    tap_j = (np.arange(taps) % kw) * dilation
    grid_y = (np.arange(ho) * stride - padding)[None, None, None, :, None] + tap_i[None, None, :,
                                                                                   None, None]
    grid_x = (np.arange(wo) * stride - padding)[None, None, None, None, :] + tap_j[None, None, :,
                                                                                   None, None]
    py = (grid_y + off[:, :, :, 0]).reshape(n, deform_groups, -1)   # [N, DG, K*Ho*Wo]
    px = (grid_x + off[:, :, :, 1]).reshape(n, deform_groups, -1)
    cg = c // deform_groups
    cols = bilinear_gather(x.reshape(n, deform_groups, cg, h, w), py, px)
    cols = cols.reshape(n, deform_groups, cg, taps, ho, wo)
    if mask is not None:
        cols = cols * np.asarray(mask, np.float64).reshape(n, deform_groups, 1, taps, ho, wo)
    cols = cols.reshape(n, c, taps, ho, wo)
    out = np.einsum("nckhw,ock->nohw", cols, weight.reshape(o, c, taps), optimize=True)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out


def mmcv_offsets_and_mask(branch, modulated: bool):
    """mmcv's split of the offset conv's output ``[N, 2K or 3K (per DG), Ho, Wo]``."""
    if not modulated:
        return branch, None
    o1, o2, mask = np.split(branch, 3, axis=1)
    return np.concatenate([o1, o2], axis=1), sigmoid(mask)


# ------------------------------------------------------------------------------------------------
# mmdetection ResNet (pytorch style) on a state dict
# ------------------------------------------------------------------------------------------------
def _bn(sd, prefix, x):
    return batchnorm(x, sd[prefix + "weight"], sd[prefix + "bias"], sd[prefix + "running_mean"],
                     sd[prefix + "running_var"])


def bottleneck(sd, prefix: str, x, stride: int, dcn: bool, modulated: bool = False,
               deform_groups: int = 1, trace: dict | None = None):
    """One block ``{prefix}`` (e.g. ``"layer2.0."``) on ``x [N, C, H, W]``; a downsample branch
    is used when ``{prefix}downsample.0.weight`` exists. ``trace`` receives the offsets/mask."""
    out = relu(_bn(sd, prefix + "bn1.", conv2d(x, sd[prefix + "conv1.weight"])))
    if dcn:
        branch_prefix = prefix + "conv2.conv_offset."
        if branch_prefix + "weight" not in sd:
            branch_prefix = prefix + "conv2_offset."
        branch = conv2d(out, sd[branch_prefix + "weight"], sd[branch_prefix + "bias"],
                        stride=stride, padding=1)
        offset, mask = mmcv_offsets_and_mask(branch, modulated)
        if trace is not None:
            trace.setdefault("offsets", []).append(offset)
            trace.setdefault("masks", []).append(mask)
        out = deform_conv2d(out, offset, sd[prefix + "conv2.weight"], mask, stride=stride,
                            padding=1, deform_groups=deform_groups)
    else:
        out = conv2d(out, sd[prefix + "conv2.weight"], stride=stride, padding=1)
    out = relu(_bn(sd, prefix + "bn2.", out))
    out = _bn(sd, prefix + "bn3.", conv2d(out, sd[prefix + "conv3.weight"]))
    identity = x
    if prefix + "downsample.0.weight" in sd:
        identity = _bn(sd, prefix + "downsample.1.",
                       conv2d(x, sd[prefix + "downsample.0.weight"], stride=stride))
    return relu(out + identity)


def resnet(sd, x, depth: int = 50, stage_with_dcn=(False, True, True, True),
           modulated: bool = False, deform_groups: int = 1, out_indices=(0, 1, 2, 3),
           trace: dict | None = None):
    """The backbone on ``x [N, 3, H, W]``: the list of NCHW stage outputs in ``out_indices``."""
    out = maxpool(relu(_bn(sd, "bn1.", conv2d(x, sd["conv1.weight"], stride=2, padding=3))))
    features = []
    for stage, blocks in enumerate(STAGE_BLOCKS[depth]):
        for block in range(blocks):
            out = bottleneck(sd, f"layer{stage + 1}.{block}.", out,
                             stride=2 if (block == 0 and stage > 0) else 1,
                             dcn=stage_with_dcn[stage], modulated=modulated,
                             deform_groups=deform_groups, trace=trace)
        if stage in out_indices:
            features.append(out)
    return features


# ------------------------------------------------------------------------------------------------
# Random checkpoints in mmdetection's key names and PyTorch layouts
# ------------------------------------------------------------------------------------------------
def _conv_weight(rng, cout, cin, k, gain=1.0):
    return (rng.standard_normal((cout, cin, k, k)) * gain / np.sqrt(cin * k * k)).astype(np.float32)


def _bn_params(rng, prefix, channels, scale=(0.5, 1.5)):
    return {
        prefix + "weight": rng.uniform(*scale, channels).astype(np.float32),
        prefix + "bias": (0.1 * rng.standard_normal(channels)).astype(np.float32),
        prefix + "running_mean": (0.2 * rng.standard_normal(channels)).astype(np.float32),
        prefix + "running_var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
        prefix + "num_batches_tracked": np.array(int(rng.integers(1, 10**6)), np.int64),
    }


def block_state_dict(rng, prefix: str, cin: int, planes: int, downsample: bool, dcn: bool,
                     modulated: bool = False, deform_groups: int = 1,
                     offset_std: float = 1.0) -> dict:
    """One bottleneck's keys in mmdetection order. ``offset_std`` scales the offset conv so that
    the predicted offsets are about ``offset_std`` times a few pixels (non-zero, around 1 px)."""
    sd = {prefix + "conv1.weight": _conv_weight(rng, planes, cin, 1)}
    sd.update(_bn_params(rng, prefix + "bn1.", planes))
    sd[prefix + "conv2.weight"] = _conv_weight(rng, planes, planes, 3)
    if dcn:
        branch = (3 if modulated else 2) * deform_groups * 9
        sd[prefix + "conv2.conv_offset.weight"] = _conv_weight(rng, branch, planes, 3,
                                                               gain=offset_std)
        sd[prefix + "conv2.conv_offset.bias"] = (
            offset_std * rng.standard_normal(branch)).astype(np.float32)
    sd.update(_bn_params(rng, prefix + "bn2.", planes))
    sd[prefix + "conv3.weight"] = _conv_weight(rng, planes * 4, planes, 1)
    # Small last-BN scales keep the residual stream bounded through many random blocks.
    sd.update(_bn_params(rng, prefix + "bn3.", planes * 4, scale=(0.1, 0.4)))
    if downsample:
        sd[prefix + "downsample.0.weight"] = _conv_weight(rng, planes * 4, cin, 1)
        sd.update(_bn_params(rng, prefix + "downsample.1.", planes * 4))
    return sd


def resnet_state_dict(rng, depth: int = 50, stage_with_dcn=(False, True, True, True),
                      modulated: bool = False, deform_groups: int = 1,
                      offset_std: float = 1.0) -> dict:
    """A random mmdetection ``ResNet`` state dict (float32, int64 ``num_batches_tracked``)."""
    sd = {"conv1.weight": _conv_weight(rng, 64, 3, 7)}
    sd.update(_bn_params(rng, "bn1.", 64))
    cin = 64
    for stage, (blocks, planes) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_PLANES)):
        for block in range(blocks):
            sd.update(block_state_dict(rng, f"layer{stage + 1}.{block}.", cin, planes,
                                       downsample=block == 0, dcn=stage_with_dcn[stage],
                                       modulated=modulated, deform_groups=deform_groups,
                                       offset_std=offset_std))
            cin = planes * 4
    return sd


def to_old_mmcv_keys(sd: dict) -> dict:
    """mmdetection before PR #1894: ``*.conv2.conv_offset.*`` was ``*.conv2_offset.*``."""
    return {k.replace(".conv2.conv_offset.", ".conv2_offset."): v for k, v in sd.items()}
