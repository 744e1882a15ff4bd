"""Where a deformable convolution looks: sampling locations, their composition, effective dilation.

Helpers behind ``python -m tf_dcn.demo`` (figures 5 and 7 and table 2 of Dai et al., 2017):

- :func:`sampling_locations`: the absolute ``(y, x)`` points a :class:`~tf_dcn.layers.
  DeformableConv2D` samples for chosen output positions, in the layer's input coordinates.
- :func:`grid_locations`: the same from an offsets tensor and the convolution's geometry (no
  layer needed).
- :func:`stacked_sampling_locations`: the points of a stack of deformable layers (``9 * 9 = 81``
  for two 3x3 layers), the upper layer's taps propagated through the lower layers.
- :func:`feature_to_image_transform` / :func:`feature_to_image`: maps feature-map coordinates to
  image pixels through a chain of convolutions and poolings.
- :func:`effective_dilation`: the mean distance between adjacent taps of each sampling grid.
- :func:`plot_sampling_locations`, :func:`plot_effective_dilation`, :func:`plot_segmentations`:
  PNG figures (matplotlib's Agg backend; nothing is ever shown on screen).

Conventions. Coordinates are ``(y, x)`` pairs of pixel indices: the centre of pixel (row ``r``,
column ``c``) of a map is ``(r, c)``. Offsets are NHWC ``[N, Ho, Wo, 2*DG*kh*kw]`` with, per tap,
dy before dx, the deformable group outermost and the taps row-major, exactly as
:func:`tf_dcn.deform_conv2d`. Tap ``(i, j)`` of output ``(ho, wo)`` samples
``y = ho*sh - pad_top + i*dh + dy``, ``x = wo*sw - pad_left + j*dw + dx``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tf_dcn._arguments import IntOrPair, Padding, normalize_padding, normalize_pair

__all__ = [
    "effective_dilation",
    "feature_to_image",
    "feature_to_image_transform",
    "grid_locations",
    "plot_effective_dilation",
    "plot_sampling_locations",
    "plot_segmentations",
    "same_padding_before",
    "sampling_locations",
    "stacked_sampling_locations",
]


# ------------------------------------------------------------------------------------------------
# Geometry of one convolution
# ------------------------------------------------------------------------------------------------
def same_padding_before(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Top (or left) padding of TensorFlow's ``"SAME"`` rule for one axis of length ``size``.

    ``total = max((ceil(size / stride) - 1) * stride + dilation*(kernel-1) + 1 - size, 0)`` and
    the top/left side gets ``total // 2`` (the bottom/right side the rest).
    """
    effective = dilation * (kernel - 1) + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2


def _padding_before(mode: str, explicit: Sequence[int], size: tuple[int, int],
                    kernel: tuple[int, int], strides: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int]:
    """``(pad_top, pad_left)`` for a normalised padding ``mode`` / ``explicit`` list."""
    if mode == "SAME":
        return (same_padding_before(size[0], kernel[0], strides[0], dilation[0]),
                same_padding_before(size[1], kernel[1], strides[1], dilation[1]))
    if mode == "EXPLICIT":
        return int(explicit[0]), int(explicit[2])
    return 0, 0


def _output_size(size: int, kernel: int, stride: int, dilation: int, mode: str, before: int,
                 after: int) -> int:
    if mode == "SAME":
        return -(-size // stride)
    effective = dilation * (kernel - 1) + 1
    return max((size + before + after - effective) // stride + 1, 0)


def _check_positions(positions: Any, batch: int, out_h: int, out_w: int) -> np.ndarray:
    """``positions`` as an int64 ``[P, 3]`` array of ``(n, ho, wo)``, range-checked."""
    array = np.asarray(positions)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"positions: expected an integer array [P, 3] of (n, ho, wo), got shape "
                         f"{array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("positions: entries must be integers (n, ho, wo)")
    array = array.astype(np.int64)
    limits = np.array([batch, out_h, out_w])
    bad = (array < 0) | (array >= limits)
    if np.any(bad):
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        raise ValueError(
            f"positions: row {row} = {array[row].tolist()} is out of range for a batch of {batch} "
            f"and an output of {out_h}x{out_w} (need 0 <= n < {batch}, 0 <= ho < {out_h}, "
            f"0 <= wo < {out_w})")
    return array


def _base_grid(kernel: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """``[kh*kw, 2]`` regular tap displacements ``(i*dh, j*dw)``, taps row-major."""
    ii, jj = np.meshgrid(np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
    return np.stack([ii.ravel() * dilation[0], jj.ravel() * dilation[1]], axis=-1).astype(
        np.float64)


def grid_locations(
    offsets: Any,
    positions: Any,
    kernel_size: IntOrPair,
    input_size: tuple[int, int],
    strides: IntOrPair = 1,
    padding: Padding = "valid",
    dilation_rate: IntOrPair = 1,
) -> np.ndarray:
    """Absolute sampling points of a deformable convolution given its offsets and geometry.

    Args:
        offsets: ``[N, Ho, Wo, 2*DG*kh*kw]`` (dy before dx per tap, deformable group outermost,
            taps row-major), array-like or tensor.
        positions: ``[P, 3]`` integers ``(n, ho, wo)``: the output positions (activation units).
        kernel_size: int or ``(kh, kw)``.
        input_size: ``(H, W)`` of the convolution's input (needed for ``"same"`` padding and to
            check ``Ho``/``Wo``).
        strides, padding, dilation_rate: as in :func:`tf_dcn.deform_conv2d`.

    Returns:
        float64 ``[P, DG, kh*kw, 2]``: ``(y, x)`` of every tap in the input's pixel coordinates,
        ``y = ho*sh - pad_top + i*dh + dy`` (taps row-major).

    Raises:
        ValueError: naming the argument whose shape or values are wrong.
    """
    kernel = normalize_pair(kernel_size, "kernel_size")
    stride = normalize_pair(strides, "strides")
    dilation = normalize_pair(dilation_rate, "dilation_rate")
    mode, explicit = normalize_padding(padding)
    size = normalize_pair(input_size, "input_size")
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.ndim != 4:
        raise ValueError(f"offsets: expected a 4-D array [N, Ho, Wo, 2*DG*kh*kw], got shape "
                         f"{offsets.shape}")
    taps = kernel[0] * kernel[1]
    if offsets.shape[3] % (2 * taps) or offsets.shape[3] == 0:
        raise ValueError(f"offsets: the last dimension must be a positive multiple of 2*kh*kw = "
                         f"{2 * taps}, got shape {offsets.shape}")
    pads = list(explicit) or [0, 0, 0, 0]
    expected = (_output_size(size[0], kernel[0], stride[0], dilation[0], mode, pads[0], pads[1]),
                _output_size(size[1], kernel[1], stride[1], dilation[1], mode, pads[2], pads[3]))
    if offsets.shape[1:3] != expected:
        raise ValueError(f"offsets: expected spatial size {expected} for input_size {size}, got "
                         f"shape {offsets.shape}")
    groups = offsets.shape[3] // (2 * taps)
    pos = _check_positions(positions, offsets.shape[0], *expected)
    top, left = _padding_before(mode, explicit, size, kernel, stride, dilation)
    picked = offsets[pos[:, 0], pos[:, 1], pos[:, 2]].reshape(len(pos), groups, taps, 2)
    origin = np.stack([pos[:, 1] * stride[0] - top, pos[:, 2] * stride[1] - left], axis=-1)
    return origin[:, None, None, :] + _base_grid(kernel, dilation)[None, None] + picked


# ------------------------------------------------------------------------------------------------
# Deformable layers
# ------------------------------------------------------------------------------------------------
def _check_deformable_layer(layer: Any, name: str = "layer") -> None:
    from tf_dcn.layers import DeformableConv2D

    if not isinstance(layer, DeformableConv2D):
        raise ValueError(f"{name}: expected a tf_dcn.layers.DeformableConv2D, got "
                         f"{type(layer).__name__}")
    if layer.owns_offset_branch is None:
        raise ValueError(f"{name}: {layer.name} is not built yet; call it on an input first")
    if not layer.owns_offset_branch:
        raise ValueError(f"{name}: {layer.name} owns no offset branch (it was called on "
                         f"[x, offsets(, mask)]); use grid_locations with those offsets instead")


def _check_input(x: Any, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D NHWC array [N, H, W, C], got shape "
                         f"{array.shape}")
    return array


def _layer_offsets(layer: Any, x: np.ndarray) -> np.ndarray:
    """The owned branch's offsets of ``layer`` for the NHWC input ``x`` (float64 numpy)."""
    import tensorflow as tf

    dtype = layer.offset_kernel.dtype
    offsets, _ = layer.offsets_and_mask(tf.convert_to_tensor(x, dtype=dtype))
    return np.asarray(offsets, dtype=np.float64)


def _layer_geometry(layer: Any, input_size: tuple[int, int]) -> dict[str, Any]:
    return {
        "kernel_size": tuple(layer.kernel_size),
        "strides": tuple(layer.strides),
        "dilation_rate": tuple(layer.dilation_rate),
        "padding": layer.normalized_padding,
        "input_size": input_size,
    }


def sampling_locations(layer: Any, layer_input_nhwc: Any, positions: Any) -> np.ndarray:
    """Absolute sampling points of a ``DeformableConv2D`` for chosen output positions.

    The offsets come from the layer's own offset branch (``layer.offsets_and_mask``), and the
    regular grid from its ``kernel_size``, ``strides``, ``dilation_rate`` and padding
    (``"valid"``, ``"same"`` with TensorFlow's rule, or explicit).

    Args:
        layer: a built :class:`tf_dcn.layers.DeformableConv2D` that owns its offset branch
            (called on one tensor).
        layer_input_nhwc: ``[N, H, W, C]``: the layer's input, NHWC whatever the layer's
            ``data_format``.
        positions: ``[P, 3]`` integers ``(n, ho, wo)`` in the layer's output.

    Returns:
        float64 ``[P, DG, kh*kw, 2]``: ``(y, x)`` in the layer's input pixel coordinates.

    Raises:
        ValueError: ``layer`` is not a built DeformableConv2D owning an offset branch, or
            ``layer_input_nhwc`` / ``positions`` have a wrong shape or out-of-range values.
    """
    _check_deformable_layer(layer)
    x = _check_input(layer_input_nhwc, "layer_input_nhwc")
    offsets = _layer_offsets(layer, x)
    return grid_locations(offsets, positions, **_layer_geometry(layer, x.shape[1:3]))


def _interpolate(field: np.ndarray, ys: np.ndarray, xs: np.ndarray, mode: str) -> np.ndarray:
    """Samples ``field [H, W, D]`` at fractional ``(ys, xs)`` (border-clamped) -> ``[..., D]``."""
    height, width = field.shape[:2]
    ys = np.clip(ys, 0.0, height - 1.0)
    xs = np.clip(xs, 0.0, width - 1.0)
    if mode == "nearest":
        return field[np.floor(ys + 0.5).astype(np.int64), np.floor(xs + 0.5).astype(np.int64)]
    y0 = np.minimum(np.floor(ys).astype(np.int64), height - 1)
    x0 = np.minimum(np.floor(xs).astype(np.int64), width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    wy = (ys - y0)[..., None]
    wx = (xs - x0)[..., None]
    return ((1 - wy) * ((1 - wx) * field[y0, x0] + wx * field[y0, x1])
            + wy * ((1 - wx) * field[y1, x0] + wx * field[y1, x1]))


def stacked_sampling_locations(
    layers: Sequence[Any],
    layer_inputs: Sequence[Any],
    positions: Any,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Sampling points of a stack of deformable layers, in the lowest layer's input coordinates.

    ``layers`` are ordered from the bottom (closest to the image) to the top; layer ``l+1``'s
    input must be on layer ``l``'s output grid (anything in between, such as batch norm or an
    activation, must be pointwise). The taps of layer ``l+1`` are points in layer ``l``'s output
    coordinates, starting from the top layer's taps at ``positions``; each is propagated
    through layer ``l`` by evaluating layer ``l``'s sampling grid at that (fractional) output
    position: the regular part
    ``(q_y*sh - pad_top + i*dh, q_x*sw - pad_left + j*dw)`` exactly, plus layer ``l``'s offsets
    interpolated there from its offset map, bilinearly (``interpolation="bilinear"``, default)
    or from the nearest output position (``"nearest"``); outside the map the offsets of the
    nearest border position are used. With zero offsets both give the exact composed regular
    grid (e.g. the 9x9 grid of two stacked 3x3 convolutions).

    Args:
        layers: ``L >= 1`` built :class:`tf_dcn.layers.DeformableConv2D` owning offset branches,
            bottom to top.
        layer_inputs: the ``L`` NHWC inputs of those layers (``[N, H_l, W_l, C_l]``), e.g. from a
            ``keras.Model`` that outputs them.
        positions: ``[P, 3]`` integers ``(n, ho, wo)`` in the top layer's output.
        interpolation: ``"bilinear"`` or ``"nearest"``.

    Returns:
        float64 ``[P, M_L, ..., M_1, 2]`` with ``M_l = DG_l*kh_l*kw_l`` (deformable group
        outermost, taps row-major): ``(y, x)`` in the bottom layer's input pixel coordinates.
        For two layers, ``[p, a, b, :]`` is tap ``b`` of the bottom layer evaluated where tap
        ``a`` of the top layer samples.

    Raises:
        ValueError: naming the argument (``layers``, ``layer_inputs``, ``positions`` or
            ``interpolation``) that is wrong.
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    if len(layers) == 0:
        raise ValueError("layers: need at least one DeformableConv2D")
    if len(layer_inputs) != len(layers):
        raise ValueError(f"layer_inputs: expected {len(layers)} inputs (one per layer), got "
                         f"{len(layer_inputs)}")
    for index, layer in enumerate(layers):
        _check_deformable_layer(layer, f"layers[{index}]")
    inputs = [_check_input(x, f"layer_inputs[{index}]") for index, x in enumerate(layer_inputs)]
    batch = inputs[0].shape[0]
    geometries = [_layer_geometry(layer, x.shape[1:3]) for layer, x in zip(layers, inputs)]
    for index in range(1, len(layers)):
        geo = geometries[index - 1]
        mode, explicit = normalize_padding(geo["padding"])
        pads = list(explicit) or [0, 0, 0, 0]
        out = tuple(
            _output_size(geo["input_size"][a], geo["kernel_size"][a], geo["strides"][a],
                         geo["dilation_rate"][a], mode, pads[2 * a], pads[2 * a + 1])
            for a in range(2))
        if tuple(inputs[index].shape[1:3]) != out or inputs[index].shape[0] != batch:
            raise ValueError(
                f"layer_inputs: layer_inputs[{index}] has shape {inputs[index].shape}, but "
                f"layers[{index - 1}] outputs a {out[0]}x{out[1]} map for a batch of {batch}")

    top = len(layers) - 1
    points = sampling_locations(layers[top], inputs[top], positions)
    pos = np.asarray(positions).astype(np.int64)             # validated above
    points = points.reshape(points.shape[0], -1, 2)          # [P, M_L, 2]
    for index in range(top - 1, -1, -1):
        layer, geo = layers[index], geometries[index]
        offsets = _layer_offsets(layer, inputs[index][np.unique(pos[:, 0])])
        rows = np.searchsorted(np.unique(pos[:, 0]), pos[:, 0])
        kernel, stride, dilation = geo["kernel_size"], geo["strides"], geo["dilation_rate"]
        mode, explicit = normalize_padding(geo["padding"])
        pad_top, pad_left = _padding_before(mode, explicit, geo["input_size"], kernel, stride,
                                            dilation)
        base = _base_grid(kernel, dilation)                  # [K, 2]
        taps = kernel[0] * kernel[1]
        groups = offsets.shape[3] // (2 * taps)
        new_shape = points.shape[1:-1]
        flat = points.reshape(points.shape[0], -1, 2)        # [P, Q, 2]
        result = np.empty(flat.shape[:2] + (groups, taps, 2))
        for p in range(flat.shape[0]):
            ys, xs = flat[p, :, 0], flat[p, :, 1]
            sampled = _interpolate(offsets[rows[p]], ys, xs, interpolation)
            sampled = sampled.reshape(len(ys), groups, taps, 2)
            origin = np.stack([ys * stride[0] - pad_top, xs * stride[1] - pad_left], axis=-1)
            result[p] = origin[:, None, None, :] + base[None, None] + sampled
        points = result.reshape((flat.shape[0],) + new_shape + (groups * taps, 2))
    return points


# ------------------------------------------------------------------------------------------------
# Feature-map coordinates -> image pixels
# ------------------------------------------------------------------------------------------------
def _spatial_params(layer: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int],
                                          str, list[int]]:
    """``(kernel, strides, dilation, mode, explicit)`` of a convolution or pooling layer."""
    from tf_dcn.layers import DeformableConv2D

    if isinstance(layer, DeformableConv2D):
        mode, explicit = normalize_padding(layer.normalized_padding)
        return (tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate),
                mode, explicit)
    kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    strides = getattr(layer, "strides", None)
    padding = getattr(layer, "padding", None)
    if kernel is None or strides is None or not isinstance(padding, str):
        raise ValueError(
            f"layers: {getattr(layer, 'name', layer)!r} ({type(layer).__name__}) is not a "
            "convolution or pooling layer (needs kernel_size or pool_size, strides, padding)")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(f"layers: {layer.name} is channels_first; only NHWC chains are supported")
    dilation = getattr(layer, "dilation_rate", 1)
    mode, explicit = normalize_padding(padding)
    return (normalize_pair(tuple(kernel), "kernel_size"),
            normalize_pair(tuple(strides), "strides"),
            normalize_pair(dilation if isinstance(dilation, int) else tuple(dilation),
                           "dilation_rate"),
            mode, explicit)


def feature_to_image_transform(layers: Sequence[Any], image_size: tuple[int, int]
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Affine map from a feature map's pixel coordinates to image pixels.

    ``layers`` is the chain of spatial layers from the image to the feature map, in order:
    ``keras.layers.Conv2D`` (and other layers with ``kernel_size``, ``strides``, ``padding``,
    ``dilation_rate``), ``MaxPooling2D``/``AveragePooling2D`` (``pool_size``) or
    ``DeformableConv2D`` (whose regular grid is used); pointwise layers (batch norm,
    activations) are left out. Output position ``o`` of one layer is mapped to the centre of
    its regular window, ``o*s - pad_before + d*(k-1)/2``, and the maps are composed.

    Args:
        layers: the chain, image first. An empty chain gives the identity.
        image_size: ``(H, W)`` of the image (SAME padding depends on every layer's input size).

    Returns:
        ``(scale, shift)``, two float64 arrays ``[2]`` (y, x): ``image = scale * feature + shift``.

    Raises:
        ValueError: ``layers`` contains a layer that is not a channels-last convolution or
            pooling layer.
    """
    size = normalize_pair(image_size, "image_size")
    scale = np.ones(2)
    shift = np.zeros(2)
    for layer in layers:
        kernel, stride, dilation, mode, explicit = _spatial_params(layer)
        before = _padding_before(mode, explicit, size, kernel, stride, dilation)
        pads = list(explicit) or [0, 0, 0, 0]
        local_scale = np.array(stride, np.float64)
        local_shift = np.array([-before[a] + dilation[a] * (kernel[a] - 1) / 2.0
                                for a in range(2)])
        # image = scale * (local_scale * out + local_shift) + shift
        shift = scale * local_shift + shift
        scale = scale * local_scale
        size = tuple(_output_size(size[a], kernel[a], stride[a], dilation[a], mode,
                                  pads[2 * a], pads[2 * a + 1]) for a in range(2))
    return scale, shift


def feature_to_image(points: Any, layers: Sequence[Any], image_size: tuple[int, int]
                     ) -> np.ndarray:
    """Maps ``(y, x)`` points ``[..., 2]`` of a feature map to image pixels.

    See :func:`feature_to_image_transform` for ``layers`` and ``image_size``. Distances scale by
    the chain's total stride.

    Raises:
        ValueError: ``points`` does not end in a dimension of 2, or ``layers`` is invalid.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != 2:
        raise ValueError(f"points: expected an array [..., 2] of (y, x), got shape {array.shape}")
    scale, shift = feature_to_image_transform(layers, image_size)
    return array * scale + shift


# ------------------------------------------------------------------------------------------------
# Effective dilation
# ------------------------------------------------------------------------------------------------
def effective_dilation(points: Any, kernel_size: IntOrPair) -> np.ndarray:
    """Mean distance between horizontally and vertically adjacent taps of each sampling grid.

    A rough measure of the receptive field of a deformable filter (Dai et al. 2017, table 2): a
    regular grid with dilation ``d`` gives exactly ``d``; with ``(dh, dw)`` it gives the average
    over all ``kh*(kw-1)`` horizontal and ``(kh-1)*kw`` vertical pairs. The unit is that of
    ``points``.

    Args:
        points: ``[..., kh*kw, 2]`` ``(y, x)`` taps in row-major order (e.g. the output of
            :func:`sampling_locations`, ``[P, DG, kh*kw, 2]``).
        kernel_size: int or ``(kh, kw)``, at least 2 taps.

    Returns:
        float64 ``[...]``: one value per grid.

    Raises:
        ValueError: ``points`` does not end in ``[kh*kw, 2]``, or ``kernel_size`` is ``1x1``.
    """
    kernel = normalize_pair(kernel_size, "kernel_size")
    if kernel[0] * kernel[1] < 2:
        raise ValueError(f"kernel_size: a 1x1 grid has no adjacent taps, got {kernel_size!r}")
    array = np.asarray(points, dtype=np.float64)
    if array.ndim < 2 or array.shape[-2:] != (kernel[0] * kernel[1], 2):
        raise ValueError(f"points: expected an array [..., {kernel[0] * kernel[1]}, 2] for a "
                         f"{kernel[0]}x{kernel[1]} kernel, got shape {array.shape}")
    grid = array.reshape(array.shape[:-2] + (kernel[0], kernel[1], 2))
    horizontal = np.linalg.norm(np.diff(grid, axis=-2), axis=-1)   # [..., kh, kw-1]
    vertical = np.linalg.norm(np.diff(grid, axis=-3), axis=-1)     # [..., kh-1, kw]
    total = (horizontal.sum(axis=(-2, -1)) + vertical.sum(axis=(-2, -1)))
    count = kernel[0] * (kernel[1] - 1) + (kernel[0] - 1) * kernel[1]
    return total / count


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    """A matplotlib ``Figure`` drawn with the Agg canvas: no pyplot, no global backend change,
    no window (figures are only ever saved as PNG files)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_sampling_locations(
    images: Any,
    units: Any,
    points: Any,
    path: str,
    column_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    boxes: Any | None = None,
    caption: str | None = None,
    panel_inches: float = 2.2,
    dpi: int = 80,
) -> str:
    """Saves a grid of panels: sampling points (red) of one activation unit (green) over an image.

    Args:
        images: ``[R, H, W, 3]`` (float in ``[0, 1]`` or uint8), one per row.
        units: ``[R, C, 2]``: ``(y, x)`` image pixels of the activation unit of each panel.
        points: ``[R, C, M, 2]``: ``(y, x)`` image pixels of the ``M`` sampling points of each
            panel (e.g. ``81`` for two stacked 3x3 layers).
        path: the PNG file to write.
        column_titles: ``C`` titles (e.g. "small object", "large object", "background").
        row_titles: optional ``R`` labels.
        boxes: optional ``[R, C, 4]`` ``(y0, x0, y1, x1)`` of a reference rectangle per panel
            (e.g. the extent of the regular grid), drawn dashed.
        caption: optional text under the panels.
        panel_inches: size of one panel; ``dpi``: resolution of the PNG.

    Returns:
        ``path``.

    Raises:
        ValueError: naming the argument whose shape does not fit.
    """
    images = np.asarray(images)
    units = np.asarray(units, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images: expected [R, H, W, 3], got shape {images.shape}")
    rows = images.shape[0]
    if units.ndim != 3 or units.shape[0] != rows or units.shape[2] != 2:
        raise ValueError(f"units: expected [R={rows}, C, 2], got shape {units.shape}")
    cols = units.shape[1]
    if points.ndim != 4 or points.shape[:2] != (rows, cols) or points.shape[3] != 2:
        raise ValueError(f"points: expected [R={rows}, C={cols}, M, 2], got shape {points.shape}")
    if column_titles is not None and len(column_titles) != cols:
        raise ValueError(f"column_titles: expected {cols} titles, got {len(column_titles)}")
    if row_titles is not None and len(row_titles) != rows:
        raise ValueError(f"row_titles: expected {rows} titles, got {len(row_titles)}")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (rows, cols, 4):
            raise ValueError(f"boxes: expected [R={rows}, C={cols}, 4], got shape {boxes.shape}")
    from matplotlib.patches import Rectangle

    height, width = images.shape[1:3]
    fig = _figure(panel_inches * cols, panel_inches * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        image = images[r] if images.shape[-1] == 3 else images[r, ..., 0]
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest", cmap=None if image.ndim == 3 else "gray")
            if boxes is not None:
                y0, x0, y1, x1 = boxes[r, c]
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=0.8,
                                       ec="white", alpha=0.8))
            ax.scatter(points[r, c, :, 1], points[r, c, :, 0], s=7, c="red", edgecolors="white",
                       linewidths=0.25)
            ax.scatter([units[r, c, 1]], [units[r, c, 0]], s=40, c="lime", marker="o",
                       edgecolors="black", linewidths=0.6)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and column_titles is not None:
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=8)
    bottom = 0.0
    if caption:
        lines = caption.count("\n") + 1
        bottom = 0.16 * lines / (panel_inches * rows)
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7.5, wrap=True)
    fig.tight_layout(pad=0.3, rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=dpi)
    return path


def plot_effective_dilation(
    values: Mapping[str, Mapping[str, Any]],
    path: str,
    unit: str = "feature-map pixels",
    regular: float | None = 1.0,
    dpi: int = 80,
) -> str:
    """Saves histograms of effective dilation, one panel per layer, one colour per group.

    Args:
        values: ``{layer name: {group name: 1-D array of effective dilations}}`` (e.g. groups
            "small objects", "large objects", "background"); empty arrays are skipped.
        path: the PNG file to write.
        unit: the unit of the values, for the axis label.
        regular: the dilation of the regular grid, drawn as a dashed line (``None``: no line).
        dpi: resolution of the PNG.

    Returns:
        ``path``.

    Raises:
        ValueError: ``values`` is empty or an entry is not 1-D.
    """
    if not values:
        raise ValueError("values: need at least one layer")
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for layer_name, groups in values.items():
        arrays[layer_name] = {}
        for group, data in groups.items():
            array = np.asarray(data, dtype=np.float64)
            if array.ndim != 1:
                raise ValueError(f"values: values[{layer_name!r}][{group!r}] must be 1-D, got "
                                 f"shape {array.shape}")
            arrays[layer_name][group] = array
    finite = [a for g in arrays.values() for a in g.values() if a.size]
    high = max([float(np.percentile(a, 99.5)) for a in finite] + [(regular or 1.0) * 1.5])
    bins = np.linspace(0.0, high, 40)
    fig = _figure(3.6 * len(arrays), 2.8)
    axes = fig.subplots(1, len(arrays), squeeze=False)
    colours = ["tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:purple"]
    for ax, (layer_name, groups) in zip(axes[0], arrays.items()):
        for index, (group, array) in enumerate(groups.items()):
            if array.size == 0:
                continue
            label = f"{group}: {array.mean():.2f} ± {array.std():.2f}"
            ax.hist(array, bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                    color=colours[index % len(colours)], label=label)
        if regular is not None:
            ax.axvline(regular, color="black", ls="--", lw=1, label=f"regular grid ({regular:g})")
        ax.set_title(layer_name, fontsize=9)
        ax.set_xlabel(f"effective dilation ({unit})", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, frameon=False)
    fig.tight_layout(pad=0.4)
    fig.savefig(path, dpi=dpi)
    return path


_PALETTE = np.array([[0.10, 0.10, 0.10], [0.90, 0.30, 0.20], [0.20, 0.70, 0.30],
                     [0.30, 0.50, 0.95], [0.95, 0.80, 0.20], [0.70, 0.35, 0.85],
                     [0.20, 0.80, 0.85], [0.95, 0.55, 0.75], [0.60, 0.60, 0.60],
                     [0.55, 0.40, 0.20]])


def plot_segmentations(
    images: Any,
    label_maps: Mapping[str, Any],
    path: str,
    class_names: Sequence[str],
    dpi: int = 80,
) -> str:
    """Saves one row per image: the image, then one colour-coded label map per column.

    Args:
        images: ``[R, H, W, 3]`` (float in ``[0, 1]`` or uint8).
        label_maps: ``{column title: [R, H, W] integer class map}`` (e.g. ground truth and the
            predictions of several networks).
        path: the PNG file to write.
        class_names: the names of classes ``0 .. K-1`` (at most 10), shown in a legend.
        dpi: resolution of the PNG.

    Returns:
        ``path``.

    Raises:
        ValueError: ``images``, ``label_maps`` or ``class_names`` do not fit together.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected [R, H, W, 3], got shape {images.shape}")
    if not 1 <= len(class_names) <= len(_PALETTE):
        raise ValueError(f"class_names: expected 1 to {len(_PALETTE)} names, got "
                         f"{len(class_names)}")
    maps = {}
    for title, labels in label_maps.items():
        labels = np.asarray(labels)
        if labels.shape != images.shape[:3] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"label_maps: {title!r} must be an integer array of shape "
                             f"{images.shape[:3]}, got {labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"label_maps: {title!r} has classes outside 0..{len(class_names) - 1}")
        maps[title] = labels
    from matplotlib.patches import Patch

    rows, cols = images.shape[0], 1 + len(maps)
    fig = _figure(1.6 * cols, 1.6 * rows + 0.35)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        panels = [images[r]] + [_PALETTE[labels[r]] for labels in maps.values()]
        for c, (panel, title) in enumerate(zip(panels, ["image"] + list(maps))):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.legend(handles=[Patch(color=_PALETTE[k], label=name)
                        for k, name in enumerate(class_names)],
               loc="lower center", ncol=len(class_names), fontsize=8, frameon=False)
    fig.tight_layout(pad=0.3, rect=(0, 0.35 / (1.6 * rows + 0.35), 1, 1))
    fig.savefig(path, dpi=dpi)
    return path
