"""``deform_psroi_pool`` and ``deform_roi_pool``: deformable (position-sensitive) RoI pooling
(NHWC), and their gradient."""

from __future__ import annotations

import tensorflow as tf

from tf_dcn._arguments import (FLOAT_DTYPES, check_rank, convert_to_dtype,
                               normalize_pool_arguments, static_dim)
from tf_dcn._loader import load_ops

_FORWARD_OP = "TfDcn>DeformablePSRoIPool"
_GRAD_OP = "TfDcn>DeformablePSRoIPoolGrad"


def roi_pool_channels(features: tf.Tensor) -> int:
    """``C`` of deform_roi_pool's features (it becomes output_dim); must be static and >= 1."""
    check_rank(features, 4, "features", "[N, H, W, C]")
    channels = static_dim(features, 3)
    if channels is None:
        raise ValueError(
            f"features: deform_roi_pool needs a statically known channel dimension C, got "
            f"shape {features.shape}"
        )
    if channels < 1:
        raise ValueError(f"features: expected at least one channel, got shape {features.shape}")
    return channels


def check_deform_psroi_pool_shapes(features: tf.Tensor, rois: tf.Tensor,
                                   offsets: tf.Tensor | None, output_dim: int, group_size: int,
                                   part_size: int) -> None:
    """The statically checkable shape rules of deform_psroi_pool (shared with tf_dcn.composite).

    Raises ValueError naming the argument; unknown dimensions are left to the kernel.
    """
    check_rank(features, 4, "features", "[N, H, W, C]")
    check_rank(rois, 2, "rois", "[R, 5]")
    if static_dim(rois, 1) not in (None, 5):
        raise ValueError(
            f"rois: expected shape [R, 5] of (batch_index, x1, y1, x2, y2), got {rois.shape}"
        )
    channels = static_dim(features, 3)
    if channels is not None and channels != output_dim * group_size**2:
        raise ValueError(
            f"features: expected C = output_dim * group_size**2 = {output_dim} * "
            f"{group_size}**2 = {output_dim * group_size**2} channels, got shape "
            f"{features.shape}"
        )
    if offsets is None:
        return
    check_rank(offsets, 4, "offsets", "[R, part_size, part_size, 2*num_classes]")
    if offsets.shape.rank is None:
        return
    r_off, ph, pw, last = offsets.shape.as_list()
    if ph not in (None, part_size) or pw not in (None, part_size):
        raise ValueError(
            f"offsets: expected part_size = {part_size} in dimensions 1 and 2, got "
            f"shape {offsets.shape}"
        )
    if last is not None:
        if last < 2 or last % 2:
            raise ValueError(
                "offsets: expected a positive even last dimension 2*num_classes "
                f"((x, y) pairs), got shape {offsets.shape}"
            )
        if output_dim % (last // 2):
            raise ValueError(
                f"offsets: output_dim ({output_dim}) is not divisible by num_classes "
                f"= {last // 2} (the last dimension / 2), got shape {offsets.shape}"
            )
    r_rois = static_dim(rois, 0)
    if r_off is not None and r_rois is not None and r_off != r_rois:
        raise ValueError(
            f"offsets: expected {r_rois} RoIs (the rows of rois) in dimension 0, got "
            f"shape {offsets.shape}"
        )


def convert_rois(rois, dtype: tf.DType) -> tf.Tensor:
    """``rois`` as a tensor: float64 when given (or when the features, of ``dtype``, are) float64,
    float32 otherwise; ValueError for a dtype that is neither float nor int. Shared with
    :mod:`tf_dcn.composite`."""
    rois = tf.convert_to_tensor(rois, name="rois")
    if rois.dtype == tf.float64:
        return rois
    if not (rois.dtype.is_floating or rois.dtype.is_integer):
        raise ValueError(f"rois: expected a real (float or int) tensor, got dtype {rois.dtype}")
    return tf.cast(rois, tf.float64 if dtype == tf.float64 else tf.float32)


def deform_psroi_pool(
    features: tf.Tensor,
    rois: tf.Tensor,
    offsets: tf.Tensor | None = None,
    *,
    output_dim: int,
    group_size: int,
    pooled_size: int | None = None,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.1,
    spatial_scale: float = 1.0,
    name: str | None = None,
) -> tf.Tensor:
    """Deformable position-sensitive RoI pooling (R-FCN, Dai et al. 2017), MSRA's semantics.

    Each RoI ``(b, x1, y1, x2, y2)`` is rounded (C ``round()``, halves away from zero) and mapped
    to the feature map: ``x_start = round(x1)*spatial_scale - 0.5``,
    ``x_end = (round(x2) + 1)*spatial_scale - 0.5``, ``roi_w = max(x_end - x_start, 0.1)`` (same
    for y). It is split into ``pooled_size x pooled_size`` bins. Bin ``(ph, pw)`` is shifted by
    ``offset * trans_std * roi_size`` (a fraction of the whole RoI), read from part cell
    ``(ph*part_size//pooled_size, pw*part_size//pooled_size)``, and averages
    ``sample_per_part**2`` bilinear samples taken at the sub-bin starts. Output channel ``ctop``
    of bin ``(ph, pw)`` reads feature channel ``(ctop*group_size + gh)*group_size + gw`` with
    ``gh = ph*group_size//pooled_size`` (position-sensitive score maps). A sample outside
    ``[-0.5, W-0.5] x [-0.5, H-0.5]`` is skipped (the limits themselves are kept), a kept one is
    clamped into the image; the bin is the mean of its kept samples, or 0 when none is kept.

    Args:
        features: ``[N, H, W, C]`` (NHWC), float16, bfloat16, float32 or float64, with
            ``C = output_dim * group_size**2``; channel ``(ctop*group_size + gh)*group_size + gw``
            is the score map of output channel ``ctop`` for group cell ``(gh, gw)`` (MSRA's
            channel order moved to the last axis).
        rois: ``[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels (inclusive
            corners). Kept in float64 when given (or when features are) float64, otherwise cast
            to float32, so half-precision features do not quantise the boxes. ``batch_index``
            must be an integer in ``[0, N)``.
        offsets: optional ``[R, part_size, part_size, 2*num_classes]``, dtype of ``features``.
            Last-axis index ``2*cls + {0: x, 1: y}``: **x before y** (the opposite of the
            convolution offsets; MSRA's ``[R, 2*num_classes, part, part]`` transposed
            ``(0, 2, 3, 1)``). Output channel ``ctop`` uses class
            ``ctop // (output_dim // num_classes)``. ``None``: no deformation (plain PS-RoI
            pooling with MSRA's sampling).
        output_dim: channels of the output; must be divisible by ``num_classes``.
        group_size: side of the position-sensitive grid of score maps.
        pooled_size: bins per side of the output; defaults to ``group_size``.
        part_size: cells per side of the offset grid; defaults to ``pooled_size``.
        sample_per_part: samples per side of a bin.
        trans_std: scale of the offsets (a float32 attribute).
        spatial_scale: feature-map pixels per input-image pixel, e.g. ``1/16`` (a float32
            attribute).
        name: optional name scope.

    Returns:
        ``[R, pooled_size, pooled_size, output_dim]`` in the dtype of ``features`` (half types
        accumulate in float32). All bins of a RoI whose box has a NaN or infinite coordinate,
        and every bin with a NaN sample position (NaN offsets), are NaN; such bins pass no
        gradient to ``features`` and a NaN gradient to their offsets. Infinite or huge finite
        offsets move the samples outside (skipped), never out of bounds.

    Raises:
        ValueError: an argument value or a statically known shape is wrong.
        tf.errors.InvalidArgumentError: a shape known only at run time is wrong, or a batch
            index is negative, not an integer, not finite or ``>= N``. Messages name the
            argument.

    Gradients flow to ``features`` and ``offsets`` (none to ``rois``); the CPU backward pass is
    deterministic (bitwise identical from run to run, whatever the thread count).

    Example:
        >>> feats = tf.random.normal([1, 38, 50, 21 * 7 * 7])  # R-FCN score maps, stride 16
        >>> rois = tf.constant([[0.0, 32.0, 48.0, 320.0, 400.0]])
        >>> offs = tf.zeros([1, 7, 7, 2])  # one offset class, (x, y) per part cell
        >>> out = tf_dcn.deform_psroi_pool(feats, rois, offs, output_dim=21, group_size=7,
        ...                                spatial_scale=1 / 16)
        >>> out.shape
        TensorShape([1, 7, 7, 21])
    """
    output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std, spatial_scale = (
        normalize_pool_arguments(output_dim, group_size, pooled_size, part_size, sample_per_part,
                                 trans_std, spatial_scale))

    with tf.name_scope(name or "deform_psroi_pool"):
        features = tf.convert_to_tensor(features, name="features")
        dtype = features.dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"features: dtype must be float16, bfloat16, float32 or float64, got {dtype}"
            )
        rois = convert_rois(rois, dtype)
        use_offsets = offsets is not None
        if use_offsets:
            offsets = convert_to_dtype(offsets, dtype, "offsets", like="features")
        check_deform_psroi_pool_shapes(features, rois, offsets, output_dim, group_size, part_size)
        if not use_offsets:
            offsets = tf.zeros([0], dtype=dtype)

        return load_ops().tf_dcn_deformable_ps_ro_i_pool(
            features=features,
            rois=rois,
            offsets=offsets,
            output_dim=output_dim,
            group_size=group_size,
            pooled_size=pooled_size,
            part_size=part_size,
            sample_per_part=sample_per_part,
            trans_std=trans_std,
            spatial_scale=spatial_scale,
            use_offsets=use_offsets,
        )


def deform_roi_pool(
    features: tf.Tensor,
    rois: tf.Tensor,
    offsets: tf.Tensor | None = None,
    *,
    pooled_size: int,
    sample_per_part: int = 4,
    trans_std: float = 0.1,
    spatial_scale: float = 1.0,
    name: str | None = None,
) -> tf.Tensor:
    """Deformable RoI pooling (the Faster R-CNN variant of Dai et al. 2017), NHWC.

    This is :func:`deform_psroi_pool` with ``group_size=1`` and ``output_dim=C``: every output
    channel pools its own feature channel. Bin ``(ph, pw)`` of a RoI is shifted by
    ``offset * trans_std * roi_size`` and averages ``sample_per_part**2`` bilinear samples at the
    sub-bin starts (MSRA's rounding, ``+1`` on ``x2``/``y2``, 0.1 minimum size and border rule;
    see :func:`deform_psroi_pool`).

    Args:
        features: ``[N, H, W, C]`` (NHWC), float16, bfloat16, float32 or float64; ``C`` must be
            statically known.
        rois: ``[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels; float64
            kept, anything else cast to float32. ``batch_index`` must be an integer in ``[0, N)``.
        offsets: optional ``[R, pooled_size, pooled_size, 2*num_classes]`` (usually
            ``num_classes = 1``), dtype of ``features``, with **x before y** on the last axis
            (the opposite of the convolution offsets). ``C`` must be divisible by
            ``num_classes``. ``None``: no deformation.
        pooled_size: bins per side of the output (the offset grid has the same size).
        sample_per_part: samples per side of a bin.
        trans_std: scale of the offsets (a float32 attribute).
        spatial_scale: feature-map pixels per input-image pixel, e.g. ``1/16``.
        name: optional name scope.

    Returns:
        ``[R, pooled_size, pooled_size, C]`` in the dtype of ``features``. Bins of a RoI with a
        NaN/infinite box coordinate, and bins with NaN sample positions, are NaN.

    Raises:
        ValueError: an argument value or a statically known shape is wrong, or ``C`` is unknown.
        tf.errors.InvalidArgumentError: a run-time shape or a batch index is wrong (negative, not
            an integer, not finite or ``>= N``).

    Example:
        >>> feats = tf.random.normal([1, 38, 50, 256])  # stride-16 feature map
        >>> rois = tf.constant([[0.0, 32.0, 48.0, 320.0, 400.0]])
        >>> offs = tf.zeros([1, 7, 7, 2])  # (x, y) per bin
        >>> out = tf_dcn.deform_roi_pool(feats, rois, offs, pooled_size=7, spatial_scale=1 / 16)
        >>> out.shape
        TensorShape([1, 7, 7, 256])
    """
    with tf.name_scope(name or "deform_roi_pool"):
        features = tf.convert_to_tensor(features, name="features")
        channels = roi_pool_channels(features)
        return deform_psroi_pool(
            features,
            rois,
            offsets,
            output_dim=channels,
            group_size=1,
            pooled_size=pooled_size,
            part_size=pooled_size,
            sample_per_part=sample_per_part,
            trans_std=trans_std,
            spatial_scale=spatial_scale,
        )


_ATTRS = (
    "output_dim",
    "group_size",
    "pooled_size",
    "part_size",
    "sample_per_part",
    "trans_std",
    "spatial_scale",
    "use_offsets",
)


@tf.RegisterGradient(_FORWARD_OP)
def _deform_psroi_pool_grad(op: tf.Operation, grad: tf.Tensor):
    """Gradients of features and offsets from one C++ op; rois get None."""
    attrs = {name: op.get_attr(name) for name in _ATTRS}
    grad_features, grad_offsets = load_ops().tf_dcn_deformable_ps_ro_i_pool_grad(
        features=op.inputs[0],
        rois=op.inputs[1],
        offsets=op.inputs[2],
        grad_output=grad,
        **attrs,
    )
    return [grad_features, None, grad_offsets]


tf.no_gradient(_GRAD_OP)
