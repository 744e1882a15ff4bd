"""tf_dcn.viz: sampling locations on known offsets, their composition, effective dilation, the
feature-map-to-image mapping, bad inputs and the PNG plots."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_dcn import viz
from tf_dcn.layers import DeformableConv2D

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"




def _build(layer, shape, bias=None, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    layer(x)
    if bias is not None:
        full = np.zeros(layer.offset_bias.shape, np.float32)
        full[: len(bias)] = bias
        layer.offset_bias.assign(full)
    return x


def _regular(positions, kernel, strides, dilation, pads):
    """Expected [P, kh*kw, 2] regular grid, written out with loops."""
    out = []
    for _, ho, wo in positions:
        taps = []
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                taps.append((ho * strides[0] - pads[0] + i * dilation[0],
                             wo * strides[1] - pads[1] + j * dilation[1]))
        out.append(taps)
    return np.array(out, np.float64)


def _all_positions(n, h, w):
    grid = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    return np.stack(grid, -1).reshape(-1, 3)


# ------------------------------------------------------------------------------------------------
# One layer, known offsets
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, shape, pads",
    [
        # SAME, stride 2, H=9: total = max(4*2 + 3 - 9, 0) = 2 -> top 1; W=10: total 1 -> left 0
        (dict(kernel_size=3, strides=2, padding="same"), (2, 9, 10, 3), (1, 0)),
        # SAME, dilation 2: total = 4 on both axes -> top = left = 2
        (dict(kernel_size=3, dilation_rate=2, padding="same"), (1, 7, 8, 3), (2, 2)),
        # SAME, non-square kernel with stride (2, 1): H=8: total = max(3*2+2-8, 0) = 0; W: 4 -> 2
        (dict(kernel_size=(2, 5), strides=(2, 1), padding="same"), (1, 8, 9, 2), (0, 2)),
        (dict(kernel_size=3, strides=(1, 2), padding="valid"), (1, 7, 9, 2), (0, 0)),
        (dict(kernel_size=3, padding=((2, 0), (1, 3))), (1, 6, 6, 2), (2, 1)),
        (dict(kernel_size=(3, 2), dilation_rate=(1, 3), padding=1), (1, 6, 8, 2), (1, 1)),
    ],
)
def test_zero_offsets_give_the_regular_grid(kwargs, shape, pads):
    layer = DeformableConv2D(4, **kwargs)
    x = _build(layer, shape)
    out_h, out_w = layer.compute_output_shape(shape)[1:3]
    positions = _all_positions(shape[0], out_h, out_w)
    points = viz.sampling_locations(layer, x, positions)
    kernel, strides, dilation = layer.kernel_size, layer.strides, layer.dilation_rate
    assert points.shape == (len(positions), 1, kernel[0] * kernel[1], 2)
    np.testing.assert_array_equal(points[:, 0], _regular(positions, kernel, strides, dilation,
                                                         pads))


@pytest.mark.parametrize("size, kernel, stride, dilation",
                         [(9, 3, 2, 1), (10, 3, 2, 1), (7, 3, 1, 2), (8, 5, 1, 1), (3, 7, 4, 1),
                          (12, 4, 2, 1), (11, 2, 3, 2)])
def test_same_padding_rule_matches_tensorflow(size, kernel, stride, dilation):
    """SAME == VALID on the input padded with (same_padding_before, the rest)."""
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(1, size, size + 1, 1)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(kernel, kernel, 1, 1)).astype(np.float32)
    same = tf.nn.conv2d(x, w, stride, "SAME", dilations=dilation).numpy()
    top = viz.same_padding_before(size, kernel, stride, dilation)
    left = viz.same_padding_before(size + 1, kernel, stride, dilation)
    padded = np.pad(x, ((0, 0), (top, 2 * size), (left, 2 * size), (0, 0)))
    valid = tf.nn.conv2d(padded, w, stride, "VALID", dilations=dilation).numpy()
    np.testing.assert_allclose(valid[:, : same.shape[1], : same.shape[2]], same, atol=1e-5)


def test_points_are_where_the_op_reads():
    """On a linear ramp, a one-hot kernel returns the sampled coordinates themselves."""
    height, width = 9, 11
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                         indexing="ij")
    x = np.stack([yy, xx], -1)[None].repeat(2, 0)
    x[1] = x[1, ::-1, ::-1]  # a different offset field for the second image
    layer = DeformableConv2D(18, 3, strides=(2, 1), padding="same", dilation_rate=1,
                             use_bias=False,
                             offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.05,
                                                                                       seed=1),
                             offset_bias_initializer=keras.initializers.RandomNormal(0, 0.5,
                                                                                     seed=2))
    layer(x)
    kernel = np.zeros((3, 3, 2, 18), np.float32)
    for k in range(9):
        kernel[k // 3, k % 3, 0, 2 * k] = 1.0      # output 2k   = y sample of tap k
        kernel[k // 3, k % 3, 1, 2 * k + 1] = 1.0  # output 2k+1 = x sample of tap k
    layer.kernel.assign(kernel)
    read = layer(x).numpy()                        # [2, 5, 11, 18]
    positions = _all_positions(2, read.shape[1], read.shape[2])
    points = viz.sampling_locations(layer, x, positions)[:, 0]     # [P, 9, 2]
    assert np.abs(points - np.round(points)).max() > 0.05          # genuinely fractional
    sampled = read[positions[:, 0], positions[:, 1], positions[:, 2]].reshape(-1, 9, 2)
    # Image 1 is the flipped ramp: map its sampled values back to coordinates.
    flipped = positions[:, 0] == 1
    sampled[flipped] = np.array([height - 1, width - 1]) - sampled[flipped]
    inside = ((points[..., 0] >= 0) & (points[..., 0] <= height - 1)
              & (points[..., 1] >= 0) & (points[..., 1] <= width - 1))
    assert inside.mean() > 0.6
    np.testing.assert_allclose(sampled[inside], points[inside], atol=1e-4)


def test_constant_offset_shifts_every_point_and_keeps_dilation():
    layer = DeformableConv2D(3, 3, padding="same", dilation_rate=2, modulated=True)
    x = _build(layer, (2, 8, 8, 3), bias=np.tile([0.75, -1.25], 9))
    positions = _all_positions(2, 8, 8)
    points = viz.sampling_locations(layer, x, positions)[:, 0]
    regular = _regular(positions, (3, 3), (1, 1), (2, 2), (2, 2))
    np.testing.assert_allclose(points, regular + [0.75, -1.25], atol=1e-6)
    np.testing.assert_allclose(viz.effective_dilation(points, 3), 2.0, atol=1e-6)


@pytest.mark.parametrize("scale, dilation", [(2.5, 2), (0.5, 1), (3.0, 1)])
def test_scaled_grid_has_scaled_effective_dilation(scale, dilation):
    ii, jj = np.meshgrid(np.arange(3) - 1.0, np.arange(3) - 1.0, indexing="ij")
    bias = np.stack([ii, jj], -1).reshape(-1) * (scale - 1) * dilation
    layer = DeformableConv2D(2, 3, padding="same", dilation_rate=dilation)
    x = _build(layer, (1, 6, 7, 2), bias=bias)
    points = viz.sampling_locations(layer, x, _all_positions(1, 6, 7))
    assert points.shape == (42, 1, 9, 2)
    np.testing.assert_allclose(viz.effective_dilation(points, 3), scale * dilation, atol=1e-6)


def test_effective_dilation_of_regular_grids():
    cases = [((3, 3), (1, 1)), ((3, 3), (1, 3)), ((2, 3), (2, 5)), ((5, 1), (4, 9))]
    for kernel, dilation in cases:
        ii, jj = np.meshgrid(np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
        points = np.stack([ii * dilation[0], jj * dilation[1]], -1).reshape(-1, 2) + [3.0, -2.0]
        horizontal = kernel[0] * (kernel[1] - 1)
        vertical = (kernel[0] - 1) * kernel[1]
        expected = (horizontal * dilation[1] + vertical * dilation[0]) / (horizontal + vertical)
        assert viz.effective_dilation(points, kernel) == pytest.approx(expected)
    batch = np.zeros((4, 2, 9, 2))
    assert viz.effective_dilation(batch, 3).shape == (4, 2)


def test_grid_locations_with_deformable_groups():
    rng = np.random.default_rng(3)
    offsets = rng.normal(size=(2, 4, 5, 2 * 2 * 9))
    positions = np.array([[0, 0, 0], [1, 3, 4], [1, 2, 1]])
    points = viz.grid_locations(offsets, positions, 3, (8, 10), strides=2, padding="same")
    assert points.shape == (3, 2, 9, 2)
    # SAME, stride 2, H=8: total = max(3*2+3-8, 0) = 1 -> top 0; W=10: total 1 -> left 0
    regular = _regular(positions, (3, 3), (2, 2), (1, 1), (0, 0))
    picked = offsets[positions[:, 0], positions[:, 1], positions[:, 2]].reshape(3, 2, 9, 2)
    np.testing.assert_allclose(points, regular[:, None] + picked)


def test_channels_first_layer_uses_nhwc_input():
    layer = DeformableConv2D(3, 3, padding="same", data_format="channels_first")
    x = np.random.default_rng(0).uniform(size=(1, 2, 5, 6)).astype(np.float32)
    layer(x)
    layer.offset_bias.assign(np.tile([0.5, 0.25], 9).astype(np.float32))
    points = viz.sampling_locations(layer, x.transpose(0, 2, 3, 1), [[0, 4, 5]])
    np.testing.assert_allclose(points[0, 0, 4], [4.5, 5.25])


# ------------------------------------------------------------------------------------------------
# Stacks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_two_stacked_zero_offset_layers_give_the_composed_grid(interpolation):
    bottom = DeformableConv2D(4, 3, strides=2, padding="valid")
    top = DeformableConv2D(4, 3, padding="same", dilation_rate=2)
    x = _build(bottom, (2, 15, 13, 3))
    y = bottom(x).numpy()                                   # [2, 7, 6, 4]
    top(y)
    positions = np.array([[0, 0, 0], [1, 3, 2], [0, 6, 5], [1, 2, 4]])
    points = viz.stacked_sampling_locations([bottom, top], [x, y], positions, interpolation)
    assert points.shape == (4, 9, 9, 2)
    expected = np.empty((4, 9, 9, 2))
    for p, (_, ho, wo) in enumerate(positions):
        for a in range(9):
            qy, qx = ho - 2 + (a // 3) * 2, wo - 2 + (a % 3) * 2   # top: SAME, d=2 -> pad 2
            for b in range(9):
                expected[p, a, b] = (qy * 2 + b // 3, qx * 2 + b % 3)  # bottom: VALID, s=2
    np.testing.assert_array_equal(points, expected)
    assert len(np.unique(points[1].reshape(-1, 2), axis=0)) == 81


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_stack_propagates_through_the_lower_layers_offsets(interpolation):
    init = keras.initializers.RandomNormal(0, 0.3, seed=4)
    bottom = DeformableConv2D(4, 3, padding="same", offset_kernel_initializer=init,
                              offset_bias_initializer=init)
    top = DeformableConv2D(4, 3, padding="same")            # zero offsets: integer taps
    x = _build(bottom, (2, 8, 9, 3))
    y = bottom(x).numpy()
    top(y)
    positions = np.array([[0, 3, 4], [1, 5, 2]])
    points = viz.stacked_sampling_locations([bottom, top], [x, y], positions, interpolation)
    for p, (n, ho, wo) in enumerate(positions):
        taps = np.array([[n, ho - 1 + a // 3, wo - 1 + a % 3] for a in range(9)])
        direct = viz.sampling_locations(bottom, x, taps)[:, 0]
        np.testing.assert_allclose(points[p], direct, atol=1e-5)
    # A single layer is just sampling_locations with the groups flattened.
    single = viz.stacked_sampling_locations([bottom], [x], positions)
    np.testing.assert_allclose(single, viz.sampling_locations(bottom, x, positions)[:, 0])


def test_stack_interpolates_offsets_bilinearly_at_fractional_points():
    bottom = DeformableConv2D(2, 3, padding="same")
    top = DeformableConv2D(2, 3, padding="same")
    x = _build(bottom, (1, 6, 6, 2))
    y = bottom(x).numpy()
    top(y)
    top.offset_bias.assign(np.tile([0.5, 0.25], 9).astype(np.float32))
    # Bottom offsets dy = 0.1 * (input channel 0) through a 1-tap offset kernel: a known field.
    kernel = np.zeros(bottom.offset_kernel.shape, np.float32)
    kernel[1, 1, 0, 0::2] = 0.1
    bottom.offset_kernel.assign(kernel)
    field = 0.1 * x[0, :, :, 0]                              # dy at every bottom output
    points = viz.stacked_sampling_locations([bottom, top], [x, y], [[0, 2, 2]])
    qy, qx = 2 - 1 + 1 + 0.5, 2 - 1 + 1 + 0.25               # centre tap of the top layer
    y0, x0 = int(qy), int(qx)
    wy, wx = qy - y0, qx - x0
    interp = ((1 - wy) * ((1 - wx) * field[y0, x0] + wx * field[y0, x0 + 1])
              + wy * ((1 - wx) * field[y0 + 1, x0] + wx * field[y0 + 1, x0 + 1]))
    np.testing.assert_allclose(points[0, 4, 0], [qy - 1 + interp, qx - 1], atol=1e-5)
    nearest = viz.stacked_sampling_locations([bottom, top], [x, y], [[0, 2, 2]], "nearest")
    np.testing.assert_allclose(nearest[0, 4, 0], [qy - 1 + field[3, 2], qx - 1], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Feature map -> image
# ------------------------------------------------------------------------------------------------
def test_feature_to_image_transform():
    chain = [keras.layers.Conv2D(4, 3, padding="same"), keras.layers.MaxPooling2D(2),
             keras.layers.Conv2D(4, 3, strides=2, padding="same")]
    # conv same s1: identity; pool 2: 2o + 0.5; conv s2 same on 32: total 1, top 0 -> 2o + 1.
    scale, shift = viz.feature_to_image_transform(chain, (64, 64))
    np.testing.assert_allclose(scale, [4, 4])
    np.testing.assert_allclose(shift, [2.5, 2.5])
    strided = [keras.layers.Conv2D(4, 4, strides=2, padding="same")] * 2
    scale, shift = viz.feature_to_image_transform(strided, (64, 48))
    np.testing.assert_allclose(shift, [1.5, 1.5])        # two 2x2-pool-like steps: 4o + 1.5
    points = viz.feature_to_image(np.array([[[0.0, 0.0], [2.0, 3.5]]]), strided, (64, 48))
    np.testing.assert_allclose(points, [[[1.5, 1.5], [9.5, 15.5]]])
    layer = DeformableConv2D(2, 3, strides=2, padding="valid", dilation_rate=1)
    scale, shift = viz.feature_to_image_transform([layer], (9, 9))
    np.testing.assert_allclose(shift, [1.0, 1.0])
    scale, shift = viz.feature_to_image_transform([], (9, 9))
    np.testing.assert_allclose(scale, [1, 1])
    np.testing.assert_allclose(shift, [0, 0])


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors_naming_the_argument():
    layer = DeformableConv2D(2, 3, padding="same")
    x = _build(layer, (2, 5, 5, 2))
    with pytest.raises(ValueError, match="positions"):
        viz.sampling_locations(layer, x, [[0, 1]])
    with pytest.raises(ValueError, match="positions.*out of range"):
        viz.sampling_locations(layer, x, [[2, 0, 0]])
    with pytest.raises(ValueError, match="positions.*out of range"):
        viz.sampling_locations(layer, x, [[0, 0, 5]])
    with pytest.raises(ValueError, match="positions.*out of range"):
        viz.sampling_locations(layer, x, [[0, -1, 0]])
    with pytest.raises(ValueError, match="positions.*integers"):
        viz.sampling_locations(layer, x, [[0, 0.5, 0]])
    with pytest.raises(ValueError, match="layer_input_nhwc"):
        viz.sampling_locations(layer, x[0], [[0, 0, 0]])
    with pytest.raises(ValueError, match="layer.*DeformableConv2D"):
        viz.sampling_locations(keras.layers.Conv2D(2, 3), x, [[0, 0, 0]])
    with pytest.raises(ValueError, match="layer.*not built"):
        viz.sampling_locations(DeformableConv2D(2, 3), x, [[0, 0, 0]])
    external = DeformableConv2D(2, 3, padding="same")
    external([x, np.zeros((2, 5, 5, 18), np.float32)])
    with pytest.raises(ValueError, match="layer.*owns no offset branch"):
        viz.sampling_locations(external, x, [[0, 0, 0]])
    with pytest.raises(ValueError, match="layers\\[1\\].*owns no offset branch"):
        viz.stacked_sampling_locations([layer, external], [x, x], [[0, 0, 0]])
    with pytest.raises(ValueError, match="layer_inputs"):
        viz.stacked_sampling_locations([layer, layer], [x], [[0, 0, 0]])
    with pytest.raises(ValueError, match="layer_inputs"):
        viz.stacked_sampling_locations([layer, layer], [x, x[:, :4]], [[0, 0, 0]])
    with pytest.raises(ValueError, match="layers"):
        viz.stacked_sampling_locations([], [], [[0, 0, 0]])
    with pytest.raises(ValueError, match="interpolation"):
        viz.stacked_sampling_locations([layer], [x], [[0, 0, 0]], interpolation="cubic")
    with pytest.raises(ValueError, match="offsets"):
        viz.grid_locations(np.zeros((1, 5, 5, 17)), [[0, 0, 0]], 3, (5, 5), padding="same")
    with pytest.raises(ValueError, match="offsets.*spatial size"):
        viz.grid_locations(np.zeros((1, 5, 5, 18)), [[0, 0, 0]], 3, (5, 5), padding="valid")
    with pytest.raises(ValueError, match="points"):
        viz.effective_dilation(np.zeros((4, 8, 2)), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        viz.effective_dilation(np.zeros((4, 1, 2)), 1)
    with pytest.raises(ValueError, match="points"):
        viz.feature_to_image(np.zeros((4, 3)), [], (5, 5))
    with pytest.raises(ValueError, match="layers"):
        viz.feature_to_image_transform([keras.layers.Dense(3)], (5, 5))


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------
def _check_png(path):
    from PIL import Image

    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.width >= 100 and image.height >= 100
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 1.0  # not a blank canvas


def test_plot_sampling_locations_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 32, 32, 3))
    units = rng.uniform(0, 31, (2, 3, 2))
    points = units[:, :, None] + rng.normal(0, 4, (2, 3, 81, 2))
    boxes = np.concatenate([units - 4, units + 4], -1)
    path = viz.plot_sampling_locations(images, units, points, str(tmp_path / "s.png"),
                                       column_titles=["a", "b", "c"], row_titles=["x", "y"],
                                       boxes=boxes, caption="a caption\non two lines")
    _check_png(path)
    with pytest.raises(ValueError, match="points"):
        viz.plot_sampling_locations(images, units, points[:, :2], str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="units"):
        viz.plot_sampling_locations(images, units[0], points, str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="images"):
        viz.plot_sampling_locations(images[0], units, points, str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="column_titles"):
        viz.plot_sampling_locations(images, units, points, str(tmp_path / "bad.png"),
                                    column_titles=["a"])
    assert not (tmp_path / "bad.png").exists()


def test_plot_effective_dilation_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    values = {name: {"small": rng.normal(1.0, 0.1, 50), "large": rng.normal(1.6, 0.3, 80),
                     "background": np.array([])} for name in ("res5a", "res5b")}
    _check_png(viz.plot_effective_dilation(values, str(tmp_path / "r.png")))
    with pytest.raises(ValueError, match="values"):
        viz.plot_effective_dilation({}, str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="values"):
        viz.plot_effective_dilation({"a": {"b": np.zeros((2, 2))}}, str(tmp_path / "bad.png"))


def test_plot_segmentations_writes_a_png(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(3, 16, 16, 3))
    labels = rng.integers(0, 4, (3, 16, 16))
    path = viz.plot_segmentations(images, {"truth": labels, "guess": labels[::-1]},
                                  str(tmp_path / "p.png"), ["bg", "a", "b", "c"])
    _check_png(path)
    with pytest.raises(ValueError, match="label_maps"):
        viz.plot_segmentations(images, {"truth": labels[:2]}, str(tmp_path / "bad.png"),
                               ["bg", "a", "b", "c"])
    with pytest.raises(ValueError, match="label_maps"):
        viz.plot_segmentations(images, {"truth": labels}, str(tmp_path / "bad.png"), ["bg", "a"])
    with pytest.raises(ValueError, match="images"):
        viz.plot_segmentations(images[0], {"truth": labels}, str(tmp_path / "bad.png"), ["bg"])
