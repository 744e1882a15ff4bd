"""Portable composite implementations of tf-dcn's ops in plain TensorFlow (no custom op).

``deform_conv2d``, ``deform_psroi_pool`` and ``deform_roi_pool`` here have the signatures, the
argument checks and the semantics (``docs/semantics.md`` sections 1 and 2) of the custom-op
wrappers in :mod:`tf_dcn`, but are built from ordinary TensorFlow ops only: ``gather`` with int32
indices, ``floor``, comparisons, ``where``/select, ``pad``, ``concat``, ``reshape``/``transpose``
and matrix products. A graph that uses them therefore

* runs in a stock TensorFlow (e.g. a stock TensorFlow Serving binary) without ``_tf_dcn_ops.so``,
* compiles with XLA (``tf.function(jit_compile=True)``, ``model.compile(jit_compile=True)``),
* converts to TFLite with builtin ops only (``tf.lite.OpsSet.TFLITE_BUILTINS``),

and its gradients come from TensorFlow's autodiff. They agree with the op's gradients wherever
the op's are the derivative (everywhere except exactly on the bilinear kinks; at integer sample
coordinates the composite, like the op, takes the floor-based one-sided derivative).

The custom ops are faster on CPU and use far less memory in the backward pass (the composite
keeps every gathered corner for autodiff): train with ``implementation="op"`` and switch to the
composite for export (:func:`tf_dcn.export_portable`, :func:`tf_dcn.use_implementation`).

Differences from the ops, all by design:

* Run-time shape errors (only possible when shapes are not statically known) surface as
  TensorFlow's reshape/broadcast ``InvalidArgumentError`` instead of the op's messages naming
  the argument. Statically known shapes raise the same ``ValueError`` as the op wrappers.
* An invalid RoI batch index (negative, not an integer, not finite, ``>= N``) makes the op raise
  ``InvalidArgumentError``. The composite cannot raise inside a TFLite or XLA program, so every
  bin of such a RoI is NaN instead (exactly like a RoI with a non-finite box: no gradient to the
  features, NaN gradient to its offsets). It never indexes out of range.
* Gathers use int32 row indices: the input (padded by one pixel on each side for the
  convolution) must have fewer than ``2**31`` rows of ``C/deformable_groups`` (convolution) or of
  ``output_dim/num_classes`` (pooling) channels; a statically larger input raises ValueError.
* The kernel shape of ``deform_conv2d``, the channels of its input, and the last dimension of the
  pooling offsets must be statically known (they fix the graph's structure).
* float16/bfloat16 inputs are computed in float32 (as the op accumulates them) and cast back.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np
import tensorflow as tf

from tf_dcn._arguments import (FLOAT_DTYPES, IntOrPair, Padding, convert_to_dtype,
                               normalize_conv_arguments, normalize_pool_arguments, static_dim)
from tf_dcn.deform_conv import check_deform_conv2d_shapes
from tf_dcn.deform_psroi_pool import check_deform_psroi_pool_shapes, convert_rois, roi_pool_channels

__all__ = ["IMPLEMENTATIONS", "check_implementation", "deform_conv2d", "deform_psroi_pool",
           "deform_roi_pool"]

#: The values of the layers' ``implementation`` argument.
IMPLEMENTATIONS = ("op", "composite")

_INT32_MAX = 2**31 - 1
Dim = Union[int, tf.Tensor]


def check_implementation(implementation: str) -> str:
    """Returns ``implementation`` if it is ``"op"`` or ``"composite"``; raises ValueError."""
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be 'op' or 'composite', got implementation={implementation!r}"
        )
    return implementation


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def _dim(tensor: tf.Tensor, axis: int) -> Dim:
    """The static size of ``axis`` if known, else a scalar int32 tensor."""
    static = static_dim(tensor, axis)
    return static if static is not None else tf.shape(tensor)[axis]


def _is_static(*values) -> bool:
    return all(isinstance(v, (int, np.integer)) for v in values)


def _compute_dtype(dtype: tf.DType) -> tf.DType:
    """float64 stays float64; every other float type is computed in float32 (as the op does)."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _arange(n: Dim) -> Union[np.ndarray, tf.Tensor]:
    return np.arange(n, dtype=np.int32) if _is_static(n) else tf.range(n, dtype=tf.int32)


def _check_rows(rows: Dim, what: str) -> None:
    if _is_static(rows) and rows > _INT32_MAX:
        raise ValueError(
            f"{what}: the composite implementation gathers with int32 indices and needs fewer "
            f"than 2**31 rows, got {rows}"
        )


def _c_round(x: tf.Tensor) -> tf.Tensor:
    """C's ``round()`` (halves away from zero) without converting to an integer.

    ``floor(|x|)`` and ``|x| - floor(|x|)`` are exact, so this equals the op's
    ``RoundHalfAwayFromZero`` for every value; NaN and +-Inf come back unchanged.
    """
    magnitude = tf.abs(x)
    whole = tf.floor(magnitude)
    rounded = whole + tf.cast(magnitude - whole >= 0.5, x.dtype)
    return tf.where(x < 0, -rounded, rounded)


def _in_xla_context() -> bool:
    """True while a function is traced for XLA (``tf.function(jit_compile=True)``, Keras'
    ``jit_compile=True``), also in functions first traced while it is.

    TensorFlow has no public API for this. ``tf.__internal__.get_enclosing_xla_context`` is an
    exported name (the ``tf.__internal__`` namespace TensorFlow keeps for libraries built on it,
    outside its semantic-versioning guarantee) rather than a ``tensorflow.python`` module. If a
    TensorFlow version lacks it this returns False: the gathers are then split into blocks under
    XLA too, with the same results.
    """
    get_context = getattr(getattr(tf, "__internal__", None), "get_enclosing_xla_context", None)
    return get_context is not None and get_context() is not None


# Outside XLA every gather materialises its rows. Blocks of at most this many bytes are
# recycled by the allocator; much larger ones are fresh memory on every call, whose page faults
# cost more than the copy (3x on the Faster R-CNN head of bench/bench_composite_cpu.py).
_GATHER_BLOCK_BYTES = 16 << 20
_ASSUMED_ROIS = 256  # for the block size when the number of RoIs is not static


def _units_per_gather(units: int, bytes_per_unit: int) -> int:
    """How many of ``units`` equal pieces to gather at once (all of them under XLA)."""
    if _in_xla_context():
        return units
    return int(max(1, min(units, _GATHER_BLOCK_BYTES // max(1, bytes_per_unit))))


def _quad_table(image: tf.Tensor, groups: int, width: int) -> tf.Tensor:
    """The 2x2 neighbourhoods of ``image`` as gather rows, plus one zero row at the end.

    ``image`` is ``[N, Hp, Wp, groups*width]``. Row ``((n*(Hp-1) + y)*(Wp-1) + x)*groups + g``
    of the result ``[N*(Hp-1)*(Wp-1)*groups + 1, 4*width]`` holds channels
    ``[g*width, (g+1)*width)`` of pixels ``(y, x), (y, x+1), (y+1, x), (y+1, x+1)``: one gather
    fetches the four bilinear corners of a sample (much faster than four gathers of small rows).
    """
    corners = [image[:, :-1, :-1], image[:, :-1, 1:], image[:, 1:, :-1], image[:, 1:, 1:]]
    if groups == 1:
        table = tf.reshape(tf.concat(corners, axis=-1), [-1, 4 * width])
    else:
        corners = [tf.reshape(c, [-1, groups, 1, width]) for c in corners]
        table = tf.reshape(tf.concat(corners, axis=2), [-1, 4 * width])
    return tf.concat([table, tf.zeros([1, 4 * width], image.dtype)], axis=0)


def _blend(table: tf.Tensor, index: tf.Tensor, weight: tf.Tensor, width: int) -> tf.Tensor:
    """Sum over samples and corners of ``weight * table[index]``: ``[B, width]``.

    ``index`` is ``[B, S]`` rows of a :func:`_quad_table`, ``weight`` ``[B, S*4]`` (sample-major,
    then the table's corner order).
    """
    terms = weight.shape[-1]
    if _in_xla_context():
        # XLA fuses gather, product and sum into one loop, so nothing of size B*terms*width is
        # materialised (several times faster than a batched matmul there).
        values = tf.reshape(tf.gather(table, index), [-1, terms, width])
        return tf.reduce_sum(values * tf.reshape(weight, [-1, terms, 1]), axis=1)
    values = tf.reshape(tf.gather(table, index), [-1, terms, width])
    # TensorFlow's kernels: a batched [1, terms] x [terms, width] product beats broadcasting.
    return tf.reshape(tf.matmul(tf.reshape(weight, [-1, 1, terms]), values), [-1, width])


# ------------------------------------------------------------------------------------------------
# Deformable convolution
# ------------------------------------------------------------------------------------------------
def _axis_geometry(size: Dim, kernel: int, stride: int, dilation: int, mode: str,
                   before: int, after: int) -> tuple[Dim, Dim]:
    """(output size, padding before) of one axis: the op's ``ComputeAxisGeometry``."""
    effective = dilation * (kernel - 1) + 1
    if mode == "SAME":
        out = (size + stride - 1) // stride
        total = (out - 1) * stride + effective - size
        total = max(total, 0) if _is_static(total) else tf.maximum(total, 0)
        return out, total // 2
    if mode == "VALID":
        before = after = 0
    return (size + before + after - effective) // stride + 1, before


def _validate_conv(inputs, offsets, kernel, mask, bias, groups, deformable_groups):
    """The static checks of :func:`tf_dcn.deform_conv2d` plus the composite's own needs."""
    check_deform_conv2d_shapes(inputs, offsets, kernel, mask, bias, groups, deformable_groups)
    channels, cout = static_dim(inputs, 3), static_dim(kernel, 3)
    kh, kw = static_dim(kernel, 0), static_dim(kernel, 1)
    # Needed by the composite's graph structure (the op accepts them unknown).
    if None in (channels, kh, kw, static_dim(kernel, 2), cout):
        raise ValueError(
            "the composite deform_conv2d needs statically known input channels and kernel shape, "
            f"got inputs {inputs.shape} and kernel {kernel.shape}"
        )


def _check_output_shape(tensor, name, layout, batch, out_h, out_w):
    """Static N/Ho/Wo of offsets or mask must agree with inputs (the op checks at run time)."""
    if tensor is None or tensor.shape.rank is None:
        return
    for axis, expected in ((0, batch), (1, out_h), (2, out_w)):
        got = tensor.shape[axis]
        if _is_static(expected) and got is not None and got != expected:
            raise ValueError(
                f"{name}: expected shape {layout} with N={batch}, Ho={out_h}, Wo={out_w}, got "
                f"shape {tensor.shape}"
            )


@tf.autograph.experimental.do_not_convert
def deform_conv2d(
    inputs: tf.Tensor,
    offsets: tf.Tensor,
    kernel: tf.Tensor,
    mask: tf.Tensor | None = None,
    bias: tf.Tensor | None = None,
    strides: IntOrPair = 1,
    padding: Padding = "valid",
    dilation_rate: IntOrPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
    name: str | None = None,
) -> tf.Tensor:
    """Deformable 2-D convolution (v1, modulated v2 with ``mask``) in plain TensorFlow ops.

    Same signature, checks and results as :func:`tf_dcn.deform_conv2d` (see it for the full
    description), but portable: no custom op, XLA-compilable, TFLite-builtin-convertible.
    Tap ``(i, j)`` at output ``(ho, wo)`` samples the input at
    ``(ho*sh - pad_top + i*dh + dy, wo*sw - pad_left + j*dw + dx)`` with torchvision's border
    rule (zero unless ``-1 < y < H`` and ``-1 < x < W``; corners outside the image read 0), the
    samples are multiplied by the mask (v2) and meet the kernel in one matrix product.

    How: the input is zero-padded by one pixel on each side and viewed as rows of
    ``C/deformable_groups`` channels; the four corners of every sample are gathered (int32
    indices), weighted and summed into a column matrix ``[N*Ho*Wo, kh*kw*C]``, which is
    multiplied by the kernel (a batched product per convolution group). Samples outside, and NaN
    samples, read the zero padding (never out of range); NaN positions keep NaN weights, so the
    output is NaN and the offset and mask gradients are NaN, while the input gets no gradient
    from them, as from the op.

    Args:
        inputs: ``[N, H, W, C]`` (NHWC), float16, bfloat16, float32 or float64; ``C`` static.
        offsets: ``[N, Ho, Wo, 2*DG*kh*kw]``, last-axis index ``(g*kh*kw + i*kw + j)*2 +
            {0: dy, 1: dx}`` (deformable group outermost, taps row-major, **dy before dx**).
        kernel: ``[kh, kw, C/groups, Cout]`` (Keras ``Conv2D`` layout), statically known shape.
        mask: optional ``[N, Ho, Wo, DG*kh*kw]``, index ``g*kh*kw + i*kw + j``, applied as given.
        bias: optional ``[Cout]``.
        strides, padding, dilation_rate, groups, deformable_groups: as in
            :func:`tf_dcn.deform_conv2d`.
        name: optional name scope.

    Returns:
        ``[N, Ho, Wo, Cout]`` in the dtype of ``inputs``.

    Raises:
        ValueError: an argument or a statically known shape is wrong (the op wrapper's checks and
            messages), or the kernel shape / input channels are not statically known.

    Example:
        >>> x = tf.random.normal([2, 16, 16, 8])
        >>> w = tf.random.normal([3, 3, 8, 4])
        >>> off = tf.random.normal([2, 16, 16, 18])
        >>> y = tf_dcn.composite.deform_conv2d(x, off, w, padding="same")
        >>> y.shape
        TensorShape([2, 16, 16, 4])
    """
    strides, dilations, padding_mode, explicit, groups, deformable_groups = (
        normalize_conv_arguments(strides, padding, dilation_rate, groups, deformable_groups))

    with tf.name_scope(name or "deform_conv2d_composite"):
        inputs = tf.convert_to_tensor(inputs, name="inputs")
        dtype = inputs.dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"inputs: dtype must be float16, bfloat16, float32 or float64, got {dtype}"
            )
        offsets = convert_to_dtype(offsets, dtype, "offsets")
        kernel = convert_to_dtype(kernel, dtype, "kernel")
        if mask is not None:
            mask = convert_to_dtype(mask, dtype, "mask")
        if bias is not None:
            bias = convert_to_dtype(bias, dtype, "bias")
        _validate_conv(inputs, offsets, kernel, mask, bias, groups, deformable_groups)

        kh, kw, cin_g, cout = kernel.shape.as_list()
        channels = inputs.shape[3]
        batch, height, width = _dim(inputs, 0), _dim(inputs, 1), _dim(inputs, 2)
        pads = explicit or [0, 0, 0, 0]
        out_h, pad_top = _axis_geometry(height, kh, strides[0], dilations[0], padding_mode,
                                        pads[0], pads[1])
        out_w, pad_left = _axis_geometry(width, kw, strides[1], dilations[1], padding_mode,
                                         pads[2], pads[3])
        if _is_static(out_h, out_w) and (out_h < 1 or out_w < 1):
            raise ValueError(
                f"kernel: the dilated kernel ({dilations[0] * (kh - 1) + 1}, "
                f"{dilations[1] * (kw - 1) + 1}) is larger than the padded input, got inputs "
                f"{inputs.shape} and kernel {kernel.shape}"
            )
        _check_output_shape(offsets, "offsets", "[N, Ho, Wo, 2*DG*kh*kw]", batch, out_h, out_w)
        _check_output_shape(mask, "mask", "[N, Ho, Wo, DG*kh*kw]", batch, out_h, out_w)
        dg = deformable_groups
        if _is_static(batch, height, width):
            _check_rows(batch * (height + 1) * (width + 1) * dg + 1, "inputs")

        cdtype = _compute_dtype(dtype)
        geometry = _ConvGeometry(batch, height, width, channels, out_h, out_w, kh, kw, strides,
                                 dilations, pad_top, pad_left, dg)
        py, px = _conv_sample_positions(tf.cast(offsets, cdtype), geometry, cdtype)
        m = None if mask is None else _groups_innermost(tf.cast(mask, cdtype), geometry, False)
        index, weight = _conv_corners(py, px, m, geometry, cdtype)
        columns = _conv_columns(tf.cast(inputs, cdtype), index, weight, geometry, cdtype)
        out = _columns_times_kernel(columns, tf.cast(kernel, cdtype), groups, geometry)
        if bias is not None:
            out = out + tf.cast(bias, cdtype)
        out = tf.reshape(out, [batch, out_h, out_w, cout])
        return tf.cast(out, dtype)


class _ConvGeometry(NamedTuple):
    """The sizes of one composite convolution (``Dim``: an int, or a scalar tensor when not
    static); ``taps = kh*kw``, ``pixels = batch*out_h*out_w``."""

    batch: Dim
    height: Dim
    width: Dim
    channels: int
    out_h: Dim
    out_w: Dim
    kh: int
    kw: int
    strides: tuple
    dilations: tuple
    pad_top: Dim
    pad_left: Dim
    deformable_groups: int

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def pixels(self) -> Dim:
        return self.batch * self.out_h * self.out_w


def _groups_innermost(values: tf.Tensor, g: _ConvGeometry, pairs: bool) -> tf.Tensor:
    """Offsets ``[N, Ho, Wo, DG*K*2]`` (``pairs``) or a mask ``[N, Ho, Wo, DG*K]``, deformable
    group outermost -> ``[N, Ho, Wo, K*DG, 2]`` or ``[N, Ho, Wo, K*DG]``, group innermost (the
    order of the gathered corner rows)."""
    dg, taps = g.deformable_groups, g.taps
    pair = [2] if pairs else []
    values = tf.reshape(values, [g.pixels, dg, taps] + pair)
    if dg > 1:
        values = tf.transpose(values, [0, 2, 1, 3] if pair else [0, 2, 1])
    return tf.reshape(values, [g.batch, g.out_h, g.out_w, taps * dg] + pair)


def _conv_sample_positions(offsets: tf.Tensor, g: _ConvGeometry, cdtype: tf.DType):
    """Where each tap samples: ``(py, px)``, each ``[N, Ho, Wo, K*DG]``, the regular grid
    position ``(ho*sh - pad_top + i*dh, wo*sw - pad_left + j*dw)`` plus the tap's offsets."""
    off = _groups_innermost(offsets, g, True)
    dy, dx = off[..., 0], off[..., 1]
    dg, taps = g.deformable_groups, g.taps
    tap_i = np.repeat(np.arange(taps) // g.kw, dg).astype(np.int32)
    tap_j = np.repeat(np.arange(taps) % g.kw, dg).astype(np.int32)
    rows_y = _arange(g.out_h) * g.strides[0] - g.pad_top
    rows_x = _arange(g.out_w) * g.strides[1] - g.pad_left
    base_y = tf.cast(tf.reshape(rows_y, [-1, 1, 1]) + tap_i * g.dilations[0], cdtype)
    base_x = tf.cast(tf.reshape(rows_x, [-1, 1]) + tap_j * g.dilations[1], cdtype)
    return base_y + dy, base_x + dx


def _conv_corners(py: tf.Tensor, px: tf.Tensor, m: tf.Tensor | None, g: _ConvGeometry,
                  cdtype: tf.DType):
    """The four bilinear corners of every sample, with torchvision's border rule:
    ``index`` ``[N, Ho, Wo, K*DG]``, the row of the sample's 2x2 neighbourhood in the
    zero-padded input (``_quad_table``; the zero row for samples not inside), and ``weight``
    ``[N, Ho, Wo, K*DG, 4]`` (times the mask when given)."""
    h_f, w_f = tf.cast(g.height, cdtype), tf.cast(g.width, cdtype)
    inside = (py > -1) & (py < h_f) & (px > -1) & (px < w_f)   # False for NaN
    nan = ~((py > -1) | (py <= -1)) | ~((px > -1) | (px <= -1))  # as the op: NaN first
    # Weight positions: outside samples at 0 (their corners read the padding: value 0, no
    # gradient); a NaN sample gets NaN in both coordinates, so its value and the gradients
    # of both of its offsets and of its mask are NaN, as from the op.
    zero = tf.zeros_like(py)
    either = py + px
    py_w = tf.where(nan, either, tf.where(inside, py, zero))
    px_w = tf.where(nan, either, tf.where(inside, px, zero))
    y0f, x0f = tf.floor(py_w), tf.floor(px_w)
    ly, lx = py_w - y0f, px_w - x0f
    hy, hx = 1 - ly, 1 - lx
    weights = [hy * hx, hy * lx, ly * hx, ly * lx]
    if m is not None:
        weights = [w * m for w in weights]

    # The input zero-padded by one pixel on each side, as 2x2 neighbourhoods: the corners of
    # a sample with top-left corner (y0, x0) in [-1, H-1] x [-1, W-1] are row
    # ((n*(H+1) + y0+1)*(W+1) + x0+1)*DG + g. Samples not inside read the zero row.
    dg = g.deformable_groups
    rows = g.batch * (g.height + 1) * (g.width + 1) * dg
    zero_f = tf.zeros_like(y0f)
    y0 = tf.cast(tf.where(inside, y0f, zero_f), tf.int32)
    x0 = tf.cast(tf.where(inside, x0f, zero_f), tf.int32)
    image_row = tf.reshape(_arange(g.batch) * (g.height + 1), [-1, 1, 1, 1])
    group = np.tile(np.arange(dg, dtype=np.int32), g.taps)
    index = ((image_row + y0 + 1) * (g.width + 1) + x0 + 1) * dg + group
    index = tf.where(inside, index, rows)                   # [N, Ho, Wo, K*DG]
    return index, tf.stack(weights, axis=-1)                # [N, Ho, Wo, K*DG, 4]


def _conv_columns(x: tf.Tensor, index: tf.Tensor, weight: tf.Tensor, g: _ConvGeometry,
                  cdtype: tf.DType) -> tf.Tensor:
    """The column matrix ``[N*Ho*Wo, K*C]`` (tap-major, channel-minor) of the weighted corner
    rows, gathered a few taps at a time (one at a time when the pixel count is not static)."""
    dg, taps, channels, pixels = g.deformable_groups, g.taps, g.channels, g.pixels
    c_dg = channels // dg
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    table = _quad_table(padded, dg, c_dg)
    tap_bytes = (pixels * 4 * channels * cdtype.size if _is_static(pixels)
                 else _GATHER_BLOCK_BYTES)
    step = _units_per_gather(taps, tap_bytes)
    blocks = []
    for k0 in range(0, taps, step):
        k1 = min(k0 + step, taps)
        block = _blend(table, tf.reshape(index[..., k0 * dg:k1 * dg], [-1, 1]),
                       tf.reshape(weight[..., k0 * dg:k1 * dg, :], [-1, 4]), c_dg)
        blocks.append(tf.reshape(block, [pixels, (k1 - k0) * channels]))
    return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1)


def _columns_times_kernel(columns: tf.Tensor, kernel: tf.Tensor, groups: int,
                          g: _ConvGeometry) -> tf.Tensor:
    """``[N*Ho*Wo, Cout]``: the columns times the kernel ``[K*C/groups, Cout]``, a batched
    product per convolution group."""
    _, _, cin_g, cout = kernel.shape.as_list()
    taps, pixels = g.taps, g.pixels
    if groups == 1:
        return tf.matmul(columns, tf.reshape(kernel, [taps * cin_g, cout]))
    cout_g = cout // groups
    columns = tf.reshape(columns, [pixels, taps, groups, cin_g])
    columns = tf.reshape(tf.transpose(columns, [2, 0, 1, 3]), [groups, pixels, taps * cin_g])
    kern = tf.reshape(kernel, [taps, cin_g, groups, cout_g])
    kern = tf.reshape(tf.transpose(kern, [2, 0, 1, 3]), [groups, taps * cin_g, cout_g])
    out = tf.matmul(columns, kern)                         # [groups, N*Ho*Wo, Cout/groups]
    return tf.reshape(tf.transpose(out, [1, 0, 2]), [pixels, cout])


# ------------------------------------------------------------------------------------------------
# Deformable (PS-)RoI pooling
# ------------------------------------------------------------------------------------------------
def _validate_pool(features, rois, offsets, output_dim, group_size, part_size):
    """The static checks of :func:`tf_dcn.deform_psroi_pool` plus the composite's own needs."""
    check_deform_psroi_pool_shapes(features, rois, offsets, output_dim, group_size, part_size)
    if offsets is None:
        return
    if offsets.shape.rank is None:
        raise ValueError(
            "offsets: the composite deform_psroi_pool needs the rank and last dimension "
            f"(2*num_classes) of offsets statically, got shape {offsets.shape}"
        )
    if offsets.shape[-1] is None:
        raise ValueError(
            "offsets: the composite deform_psroi_pool needs the last dimension (2*num_classes) "
            f"statically, got shape {offsets.shape}"
        )


class _AxisSamples:
    """Sample coordinates along one axis (any shape, e.g. [R, P, P*classes, samples]).

    ``kept``: inside ``[-0.5, size-0.5]`` (the op's strict skip test); ``nan``: NaN positions;
    ``lo``: floor of the position clamped into ``[0, size-1]`` (0 when not kept); ``frac``: the
    clamped position minus ``lo`` (0 when not kept). The op's second corner is ``ceil``, equal to
    ``lo`` at an integer position: there ``frac`` is 0 *with a zero derivative* (the ``where``
    below), so the composite's autodiff gives the op's gradient even on integers.
    """

    def __init__(self, pos: tf.Tensor, size: Dim, size_f: tf.Tensor):
        skipped = (pos < -0.5) | (pos > size_f - 0.5)
        kept = (pos >= -0.5) & (pos <= size_f - 0.5)        # both False for NaN
        if not (_is_static(size) and size >= 1):
            kept = kept & (size_f >= 1)
            skipped = skipped | (size_f < 1)
        self.kept = kept
        self.nan = ~(kept | skipped)
        upper = size_f - 1
        zero = tf.zeros_like(pos)
        clamped = tf.where(pos < 0, zero, tf.where(pos > upper, zero + upper, pos))
        clamped = tf.where(kept, clamped, zero)
        lo_f = tf.floor(clamped)
        frac = clamped - lo_f
        self.frac = tf.where(frac > 0, frac, zero)
        self.lo = tf.cast(lo_f, tf.int32)


@tf.autograph.experimental.do_not_convert
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
    """Deformable PS-RoI pooling (R-FCN) in plain TensorFlow ops, MSRA's semantics.

    Same signature, checks and results as :func:`tf_dcn.deform_psroi_pool` (see it for the
    full description): C ``round()`` of the boxes, ``+1`` on ``x2``/``y2``, 0.1 minimum size,
    samples at the sub-bin starts, strict skip outside ``[-0.5, W-0.5] x [-0.5, H-0.5]``,
    clamping, division by the number of kept samples, class-aware offsets
    (**x before y** on the offsets' last axis, the opposite of the convolution offsets).

    How: the features are viewed as rows ``[N*H*W*group_size**2*num_classes, output_dim /
    num_classes]`` plus one zero row; for each of the ``sample_per_part**2`` samples of a bin
    (a Python loop, the RoIs and bins are vectorised) the four corner rows are gathered with
    int32 indices, weighted and accumulated. Skipped and NaN samples read the zero row.

    Args:
        features: ``[N, H, W, C]`` (NHWC) with ``C = output_dim * group_size**2``.
        rois: ``[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels
            (float64 kept, anything else cast to float32, as the op wrapper does).
        offsets: optional ``[R, part_size, part_size, 2*num_classes]``, last axis
            ``2*cls + {0: x, 1: y}`` (**x before y**); its last dimension must be static.
        output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std,
        spatial_scale: as in :func:`tf_dcn.deform_psroi_pool` (``trans_std`` and
            ``spatial_scale`` are rounded to float32, like the op's attributes).
        name: optional name scope.

    Returns:
        ``[R, pooled_size, pooled_size, output_dim]`` in the dtype of ``features``. Bins of a
        RoI with a NaN/infinite box coordinate **or an invalid batch index** (where the op
        raises InvalidArgumentError), and bins with a NaN sample position, are NaN; they pass no
        gradient to ``features`` and a NaN gradient to their offsets. ``rois`` get no gradient.

    Raises:
        ValueError: an argument value or a statically known shape is wrong (the op wrapper's
            checks and messages), or the last dimension of ``offsets`` is not static.

    Example:
        >>> feats = tf.random.normal([1, 38, 50, 21 * 7 * 7])
        >>> rois = tf.constant([[0.0, 32.0, 48.0, 320.0, 400.0]])
        >>> offs = tf.zeros([1, 7, 7, 2])
        >>> out = tf_dcn.composite.deform_psroi_pool(feats, rois, offs, output_dim=21,
        ...                                          group_size=7, spatial_scale=1 / 16)
        >>> out.shape
        TensorShape([1, 7, 7, 21])
    """
    output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std, spatial_scale = (
        normalize_pool_arguments(output_dim, group_size, pooled_size, part_size, sample_per_part,
                                 trans_std, spatial_scale))
    # The op's attributes are float32.
    trans_std = float(np.float32(trans_std))
    spatial_scale = float(np.float32(spatial_scale))

    with tf.name_scope(name or "deform_psroi_pool_composite"):
        features = tf.convert_to_tensor(features, name="features")
        dtype = features.dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"features: dtype must be float16, bfloat16, float32 or float64, got {dtype}"
            )
        rois = tf.stop_gradient(convert_rois(rois, dtype))
        if offsets is not None:
            offsets = convert_to_dtype(offsets, dtype, "offsets", like="features")
        _validate_pool(features, rois, offsets, output_dim, group_size, part_size)

        cdtype = _compute_dtype(dtype)
        classes = 1 if offsets is None else offsets.shape[-1] // 2
        per_class = output_dim // classes
        cells = group_size * group_size
        pooled = pooled_size
        batch, height, width = _dim(features, 0), _dim(features, 1), _dim(features, 2)
        num_rois = _dim(rois, 0)
        rows = batch * height * width * cells * classes
        if _is_static(rows):
            _check_rows(rows + 1, "features")

        table = _pool_feature_table(features, cells, classes, per_class, cdtype)
        boxes = _pool_boxes(rois, batch, spatial_scale, pooled, sample_per_part, cdtype)
        h0, w0, shift = _pool_bin_origins(offsets, boxes, num_rois, pooled, part_size, classes,
                                          trans_std, cdtype)

        # Samples: every per-axis quantity is [R, P, P*classes, sample_per_part] (4-D, for
        # TFLite's broadcasting); sample ix of a bin is at w0 + ix*sub_w, row iy at h0 + iy*sub_h.
        steps = tf.constant(np.arange(sample_per_part, dtype=np.float64).reshape(1, 1, 1, -1),
                            cdtype)
        lanes = pooled * classes
        xs = _AxisSamples(tf.reshape(w0, [-1, pooled, lanes, 1]) + steps * boxes.sub_w, width,
                          tf.cast(width, cdtype))
        ys = _AxisSamples(tf.reshape(h0, [-1, pooled, lanes, 1]) + steps * boxes.sub_h, height,
                          tf.cast(height, cdtype))
        # The sample grid is a product, so are its kept samples: count = kept x's * kept y's.
        count = (tf.reduce_sum(tf.cast(xs.kept, cdtype), axis=-1)
                 * tf.reduce_sum(tf.cast(ys.kept, cdtype), axis=-1))
        any_nan = tf.reduce_any(xs.nan, axis=-1) | tf.reduce_any(ys.nan, axis=-1)

        total = _pool_sum_samples(table, xs, ys, boxes.image, height, width, rows, group_size,
                                  pooled, classes, per_class, sample_per_part,
                                  _pool_gather_chunk(rois, pooled, output_dim, sample_per_part,
                                                     cdtype))
        out = _pool_average(total, count, any_nan, boxes.roi_ok, shift, cdtype)
        out = tf.reshape(out, [num_rois, pooled, pooled, output_dim])
        return tf.cast(out, dtype)


def _pool_feature_table(features: tf.Tensor, cells: int, classes: int, per_class: int,
                        cdtype: tf.DType) -> tf.Tensor:
    """The features as 2x2-neighbourhood rows (``_quad_table``): row ((b*H + y)*W + x)*G*G*classes
    + gidx*classes + cls holds pixel (y, x)'s neighbourhood (zero-padded at the bottom/right) of
    the channels of group cell gidx and class cls; the channel of output ctop = cls*Ce + j at
    cell gidx is ctop*G*G + gidx. The last row is zero (skipped and NaN samples read it)."""
    batch, height, width = _dim(features, 0), _dim(features, 1), _dim(features, 2)
    image_table = tf.cast(features, cdtype)
    if cells > 1:
        image_table = tf.reshape(image_table, [-1, classes, per_class, cells])
        image_table = tf.transpose(image_table, [0, 3, 1, 2])
        image_table = tf.reshape(image_table,
                                 [batch, height, width, cells * classes * per_class])
    image_table = tf.pad(image_table, [[0, 0], [0, 1], [0, 1], [0, 0]])
    return _quad_table(image_table, cells * classes, per_class)


class _PoolBoxes(NamedTuple):
    """The RoIs' geometry in the compute type, each ``[R, 1, 1, 1]``, plus ``image`` (``[R]``
    int32 batch index, 0 where invalid) and ``roi_ok`` (``[R]``: finite box, valid index)."""

    x_start: tf.Tensor
    y_start: tf.Tensor
    roi_w: tf.Tensor
    roi_h: tf.Tensor
    bin_w: tf.Tensor
    bin_h: tf.Tensor
    sub_w: tf.Tensor
    sub_h: tf.Tensor
    image: tf.Tensor
    roi_ok: tf.Tensor


def _pool_boxes(rois: tf.Tensor, batch: Dim, spatial_scale: float, pooled: int,
                sample_per_part: int, cdtype: tf.DType) -> _PoolBoxes:
    """MSRA's box rule: rounded in the rois' type (C ``round()``), ``+1`` on x2/y2, scaled, the
    0.1 minimum size; then bins and sub-bins."""
    b = rois[:, 0]
    box = tf.cast(_c_round(rois[:, 1:]), cdtype)           # [R, 4]: x1, y1, x2, y2
    finite = tf.reduce_all(tf.abs(box) <= cdtype.max, axis=1)
    batch_ok = (b == tf.floor(b)) & (b >= 0) & (b < tf.cast(batch, b.dtype))
    roi_ok = finite & batch_ok
    box = tf.unstack(tf.where(finite[:, None], box, tf.zeros_like(box)), axis=1)
    image = tf.cast(tf.where(batch_ok, b, tf.zeros_like(b)), tf.int32)

    def per_roi(v):
        return tf.reshape(v, [-1, 1, 1, 1])

    scale = tf.constant(spatial_scale, cdtype)
    x_start = box[0] * scale - 0.5
    y_start = box[1] * scale - 0.5
    x_end = (box[2] + 1) * scale - 0.5
    y_end = (box[3] + 1) * scale - 0.5
    roi_w, roi_h = x_end - x_start, y_end - y_start
    roi_w = tf.where(roi_w < 0.1, tf.constant(0.1, cdtype), roi_w)  # keeps NaN
    roi_h = tf.where(roi_h < 0.1, tf.constant(0.1, cdtype), roi_h)
    bin_w, bin_h = roi_w / pooled, roi_h / pooled
    sub_w, sub_h = bin_w / sample_per_part, bin_h / sample_per_part
    return _PoolBoxes(*map(per_roi, (x_start, y_start, roi_w, roi_h, bin_w, bin_h, sub_w,
                                     sub_h)), image, roi_ok)


def _pool_bin_origins(offsets: tf.Tensor | None, boxes: _PoolBoxes, num_rois: Dim, pooled: int,
                      part_size: int, classes: int, trans_std: float, cdtype: tf.DType):
    """``(h0, w0, shift)``, each ``[R, P, P, classes]``: the first sample position of every bin
    and class (the bin start moved by ``offset * trans_std * roi size``, the offsets of the
    bin's part cell, x before y), and ``tx + ty`` (through which NaN bins pass their NaN
    gradient to the offsets)."""
    if offsets is not None:
        off = tf.cast(offsets, cdtype)
        part = (np.arange(pooled) * part_size // pooled).astype(np.int32)
        if not np.array_equal(part, np.arange(part_size)):
            off = tf.gather(tf.gather(off, part, axis=1), part, axis=2)
        off = tf.reshape(off, [num_rois, pooled, pooled, classes, 2])
        tx = off[..., 0] * tf.constant(trans_std, cdtype)
        ty = off[..., 1] * tf.constant(trans_std, cdtype)
    else:
        tx = ty = tf.zeros([1, 1, 1, 1], cdtype)
    bins = np.arange(pooled, dtype=np.float64)
    pw_f = tf.constant(bins.reshape(1, 1, pooled, 1), cdtype)
    ph_f = tf.constant(bins.reshape(1, pooled, 1, 1), cdtype)
    full = tf.zeros([num_rois, pooled, pooled, classes], cdtype)
    w0 = pw_f * boxes.bin_w + boxes.x_start + tx * boxes.roi_w + full
    h0 = ph_f * boxes.bin_h + boxes.y_start + ty * boxes.roi_h + full
    return h0, w0, tx + ty + full


def _pool_gather_chunk(rois: tf.Tensor, pooled: int, output_dim: int, sample_per_part: int,
                       cdtype: tf.DType) -> int:
    """How many x samples one gather takes. Under XLA one (its fused gather-multiply-sum loop
    slows down sharply with more terms per output); otherwise as many as fit a block."""
    if _in_xla_context():
        return 1
    rois_static = static_dim(rois, 0)
    per_sample = ((rois_static if rois_static is not None else _ASSUMED_ROIS)
                  * pooled * pooled * output_dim * 4 * cdtype.size)
    return _units_per_gather(sample_per_part, per_sample)


def _pool_sum_samples(table: tf.Tensor, xs: "_AxisSamples", ys: "_AxisSamples",
                      image: tf.Tensor, height: Dim, width: Dim, zero_row: Dim, group_size: int,
                      pooled: int, classes: int, per_class: int, sample_per_part: int,
                      chunk: int) -> tf.Tensor:
    """``[R*P*P*classes, per_class]``: the sum over the kept samples of their bilinear values,
    the four corner rows of each gathered from ``table`` (skipped and NaN samples read the
    zero row), ``chunk`` x samples per gather."""
    # Row of pixel (y, x) of image b, group cell gidx, class cls:
    # ((b*H + y)*W + x)*G*G*classes + gidx*classes + cls.
    lanes = pooled * classes
    gcell = np.minimum(np.arange(pooled) * group_size // pooled, group_size - 1)
    cell = (gcell[:, None] * group_size + gcell[None, :])[:, :, None] * classes
    cell = (cell + np.arange(classes)[None, None, :]).astype(np.int32)
    cell = cell.reshape(1, pooled, lanes, 1)
    image_row = tf.reshape(image * height, [-1, 1, 1, 1])
    row_stride = group_size * group_size * classes
    total = None
    for iy in range(sample_per_part):
        for ix in range(0, sample_per_part, chunk):
            cols = slice(ix, min(ix + chunk, sample_per_part))
            taken = cols.stop - cols.start
            kept = ys.kept[..., iy:iy + 1] & xs.kept[..., cols]
            fy, fx = ys.frac[..., iy:iy + 1], xs.frac[..., cols]
            gy, gx = 1 - fy, 1 - fx
            index = (image_row + ys.lo[..., iy:iy + 1]) * width + xs.lo[..., cols]
            index = tf.where(kept, index * row_stride + cell, zero_row)
            # The table's corner order (y0,x0), (y0,x1), (y1,x0), (y1,x1), sample-major.
            weight = tf.stack([gy * gx, gy * fx, fy * gx, fy * fx], axis=-1)
            value = _blend(table, tf.reshape(index, [-1, taken]),
                           tf.reshape(weight, [-1, 4 * taken]), per_class)
            total = value if total is None else total + value
    return total


def _pool_average(total: tf.Tensor, count: tf.Tensor, any_nan: tf.Tensor, roi_ok: tf.Tensor,
                  shift: tf.Tensor, cdtype: tf.DType) -> tf.Tensor:
    """The bins' means (0 without a kept sample); NaN bins (NaN sample, bad box or index) are
    NaN, pass no gradient to the features and a NaN one to their offsets (through ``shift``)."""
    count = tf.reshape(count, [-1, 1])
    pooled_value = tf.where(count > 0, total / tf.maximum(count, 1), tf.zeros_like(total))
    nan_bin = any_nan | ~tf.reshape(roi_ok, [-1, 1, 1])
    nan_bin = tf.reshape(nan_bin, [-1, 1])
    # The factor is NaN only on NaN bins, so the other bins' offsets get a zero gradient here.
    nan_factor = tf.where(nan_bin, tf.constant(np.nan, cdtype), tf.constant(0.0, cdtype))
    nan_value = tf.reshape(shift, [-1, 1]) * nan_factor
    return tf.where(nan_bin, nan_value, pooled_value)


@tf.autograph.experimental.do_not_convert
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
    """Deformable RoI pooling (Faster R-CNN) in plain TensorFlow ops.

    :func:`deform_psroi_pool` with ``group_size=1`` and ``output_dim=C``; same signature, checks
    and results as :func:`tf_dcn.deform_roi_pool`. Offsets ``[R, pooled_size, pooled_size,
    2*num_classes]`` put **x before y** on the last axis.

    Args:
        features: ``[N, H, W, C]`` (NHWC); ``C`` must be statically known.
        rois: ``[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels.
        offsets: optional ``[R, pooled_size, pooled_size, 2*num_classes]`` (x before y).
        pooled_size, sample_per_part, trans_std, spatial_scale: as in
            :func:`tf_dcn.deform_roi_pool`.
        name: optional name scope.

    Returns:
        ``[R, pooled_size, pooled_size, C]``; NaN bins as in :func:`deform_psroi_pool`.

    Raises:
        ValueError: an argument value or a statically known shape is wrong, or ``C`` is unknown.

    Example:
        >>> feats = tf.random.normal([1, 38, 50, 256])
        >>> rois = tf.constant([[0.0, 32.0, 48.0, 320.0, 400.0]])
        >>> out = tf_dcn.composite.deform_roi_pool(feats, rois, tf.zeros([1, 7, 7, 2]),
        ...                                        pooled_size=7, spatial_scale=1 / 16)
        >>> out.shape
        TensorShape([1, 7, 7, 256])
    """
    with tf.name_scope(name or "deform_roi_pool_composite"):
        features = tf.convert_to_tensor(features, name="features")
        channels = roi_pool_channels(features)
        return deform_psroi_pool(
            features, rois, offsets, output_dim=channels, group_size=1, pooled_size=pooled_size,
            part_size=pooled_size, sample_per_part=sample_per_part, trans_std=trans_std,
            spatial_scale=spatial_scale)
