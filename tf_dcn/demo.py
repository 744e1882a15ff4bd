"""``python -m tf_dcn.demo``: what a deformable convolution learns, in about four minutes on a CPU.

1. A few lines showing what :func:`tf_dcn.deform_conv2d` computes (zero offsets = ``conv2d``;
   an offset moves where a tap reads; a fractional offset reads bilinearly).
2. A synthetic semantic-segmentation data set, generated in memory with a fixed seed: disks,
   triangles and crosses whose size varies from 8 to 44 pixels (5.5x), rotated, sheared and
   stretched, on textured backgrounds, in 64x64 images (labels: background + 3 classes).
3. A small DeepLab-like network (output stride 4) trained twice: with plain 3x3 convolutions,
   and with its last two 3x3 convolutions replaced by ``tf_dcn.layers.DeformableConv2D``
   (modulated, v2), as the paper does in res5. A table gives the held-out mIoU, the pixel
   accuracy on small and on large objects, the parameter counts and the time per training step.
4. ``<out>/sampling_locations.png``: the 9 x 9 = 81 sampling points of the two stacked
   deformable layers for activation units on a small object, a large object and the
   background (the paper's figures 5 and 7), and ``<out>/predictions.png``.
5. The effective dilation of the learned sampling grids (the paper's table 2), printed and drawn
   in ``<out>/receptive_field.png``.
6. The deformable network exported as a SavedModel, reloaded with ``tf.saved_model.load``, and
   its predictions compared with the in-memory model.

``--quick`` runs the same path on a tiny budget (under a minute); ``--out DIR`` chooses the
output folder (default ``demo_out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

import tf_dcn
from tf_dcn import viz
from tf_dcn.layers import DeformableConv2D

CLASSES = ("background", "disk", "triangle", "cross")
SMALL_MAX = 16.0   # object extent (pixels) up to which an object counts as small
LARGE_MIN = 32.0   # object extent (pixels) from which an object counts as large
STRIDE = 4         # output stride of the network
MIN_OBJECTS, MAX_OBJECTS = 2, 4
OBJECT_CONTRAST = 0.2      # colour difference inside an object's faint texture
COLOUR_DISTANCE = 0.35     # minimum colour difference between an object and its background


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one demo run."""

    train: int
    test: int
    epochs: int
    batch: int = 16
    width: int = 32
    learning_rate: float = 3e-3
    analysis_images: int = 200
    image_size: int = 64


FULL = Budget(train=1600, test=400, epochs=10)
QUICK = Budget(train=128, test=48, epochs=1, analysis_images=48)


# ------------------------------------------------------------------------------------------------
# 1. What the op computes
# ------------------------------------------------------------------------------------------------
def worked_example() -> None:
    """Three one-line checks of what deform_conv2d computes."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 8, 8, 3)), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)), tf.float32)
    same = tf_dcn.deform_conv2d(x, tf.zeros([1, 8, 8, 18]), kernel, padding="same")
    ref = tf.nn.conv2d(x, kernel, 1, "SAME")
    print(f"  zero offsets = tf.nn.conv2d: max |difference| = "
          f"{float(tf.reduce_max(tf.abs(same - ref))):.1e}")
    identity = tf.eye(3, batch_shape=[1, 1])  # a 1x1 kernel that returns its sample
    shift = np.zeros((1, 8, 8, 2), np.float32)
    shift[..., 1] = 1.0
    shifted = tf_dcn.deform_conv2d(x, shift, identity)
    print("  offset (dy, dx) = (0, 1) reads the right neighbour:",
          bool(np.allclose(shifted[0, :, :7].numpy(), x[0, :, 1:].numpy())))
    half = np.zeros((1, 8, 8, 2), np.float32)
    half[..., 0] = 0.5
    blended = tf_dcn.deform_conv2d(x, half, identity)
    print("  offset (0.5, 0) blends two rows bilinearly:",
          bool(np.allclose(blended[0, 2, 3].numpy(), 0.5 * (x[0, 2, 3] + x[0, 3, 3]).numpy(),
                           atol=1e-6)))


# ------------------------------------------------------------------------------------------------
# 2. Data
# ------------------------------------------------------------------------------------------------
def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, colours: np.ndarray,
             noise: float) -> np.ndarray:
    """A grating between ``colours[0]`` and ``colours[1]`` plus noise at the pixel coordinates
    ``yy``, ``xx`` (any shape ``S``): ``[*S, 3]``."""
    pattern = np.zeros_like(yy)
    for weight in (1.0, 0.5):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, 12.0)
        pattern += weight * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period
                                   + rng.uniform(0, 2 * np.pi))
    t = (0.5 + pattern / 3.0)[..., None]
    return colours[0] * (1 - t) + colours[1] * t + rng.normal(0.0, noise, yy.shape + (3,))


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A random colour at least ``COLOUR_DISTANCE`` (max-norm) from every colour in ``avoid``."""
    for _ in range(50):
        colour = rng.uniform(0.0, 1.0, 3)
        if np.min(np.abs(avoid - colour).max(axis=1)) >= COLOUR_DISTANCE:
            break
    return colour


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of canonical coordinates ``(u, v)`` (unit radius) in shape class ``shape``."""
    if shape == 1:  # disk
        return u * u + v * v <= 1.0
    if shape == 2:  # equilateral triangle with circumradius 1
        inside = np.ones(u.shape, bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= -(np.cos(angle) * u + np.sin(angle) * v) <= 0.5
        return inside
    arm = 0.34  # cross (plus sign)
    return ((np.abs(u) <= 1) & (np.abs(v) <= arm)) | ((np.abs(v) <= 1) & (np.abs(u) <= arm))


def make_dataset(count: int, seed: int, size: int = 64, objects: tuple[int, int] = (
        MIN_OBJECTS, MAX_OBJECTS), diameters: tuple[float, float] = (8.0, 44.0)
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images with 2-4 (``objects``) rotated, sheared, stretched shapes of widely varying size.

    Each object is a disk, an equilateral triangle or a cross of diameter ``D`` drawn
    log-uniformly from ``diameters`` (default ``[8, 44]`` pixels), rotated by a uniform angle, sheared by a factor in
    ``[-0.6, 0.6]`` and squeezed along one axis by ``[0.7, 1]``; it has a faint texture of its
    own and sits on a strong random grating of other colours. Large objects are drawn first and
    may be partly covered by later ones (at most 20% of an object's area).

    Returns:
        ``images`` float32 ``[N, size, size, 3]`` in ``[0, 1]``; ``labels`` uint8 ``[N, size,
        size]`` (0 background, 1 disk, 2 triangle, 3 cross); ``extent`` float32 ``[N, size,
        size]``: the diameter ``D`` in pixels of the object that owns each pixel, 0 on the
        background.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64),
                         indexing="ij")
    images = np.empty((count, size, size, 3), np.float32)
    labels = np.zeros((count, size, size), np.uint8)
    extent = np.zeros((count, size, size), np.float32)
    for n in range(count):
        background = rng.uniform(0.0, 1.0, (2, 3))
        image = _texture(rng, yy, xx, background, 0.04)
        number = rng.integers(objects[0], objects[1] + 1)
        drawn = np.sort(np.exp(rng.uniform(np.log(diameters[0]), np.log(diameters[1]),
                                           number)))[::-1]
        taken = np.zeros((size, size), bool)
        for diameter in drawn:  # the largest first, so that small objects stay visible
            radius = diameter / 2
            for _attempt in range(10):
                shape = int(rng.integers(1, len(CLASSES)))
                angle, shear, squeeze = (rng.uniform(0, 2 * np.pi), rng.uniform(-0.6, 0.6),
                                         rng.uniform(0.7, 1.0))
                cy, cx = rng.uniform(radius / 2, size - radius / 2, 2)
                # pixel = centre + R(angle) @ Shear(shear) @ diag(r, r*squeeze) @ (u, v)
                forward = (np.array([[np.cos(angle), -np.sin(angle)],
                                     [np.sin(angle), np.cos(angle)]])
                           @ np.array([[1.0, shear], [0.0, 1.0]])
                           @ np.diag([radius, radius * squeeze]))
                inverse = np.linalg.inv(forward)
                u = inverse[0, 0] * (yy - cy) + inverse[0, 1] * (xx - cx)
                v = inverse[1, 0] * (yy - cy) + inverse[1, 1] * (xx - cx)
                mask = _inside(shape, u, v)
                area = mask.sum()
                if area >= 12 and (taken & mask).sum() <= 0.2 * area:
                    break
            else:
                continue
            colour = _distinct_colour(rng, background)
            second = np.clip(colour + rng.uniform(-OBJECT_CONTRAST, OBJECT_CONTRAST, 3), 0, 1)
            image[mask] = _texture(rng, yy[mask], xx[mask], np.stack([colour, second]), 0.04)
            labels[n][mask] = shape
            extent[n][mask] = diameter
            taken |= mask
        images[n] = np.clip(image, 0.0, 1.0)
    return images, labels, extent


def soft_targets(labels: np.ndarray, classes: int, stride: int) -> np.ndarray:
    """Class fractions of every ``stride x stride`` block: ``[N, H/s, W/s, classes]`` float32."""
    n, h, w = labels.shape
    one_hot = np.eye(classes, dtype=np.float32)[labels]
    return one_hot.reshape(n, h // stride, stride, w // stride, stride, classes).mean(axis=(2, 4))


# ------------------------------------------------------------------------------------------------
# 3. Networks
# ------------------------------------------------------------------------------------------------
def build_network(deformable: bool, budget: Budget, seed: int) -> keras.Model:
    """The segmentation network: logits at output stride 4, ``[N, 16, 16, 4]`` for 64x64 images.

    conv4x4/2(16) - conv4x4/2(32) - conv3x3(w) - res5a 3x3(w) - res5b 3x3(w) - conv1x1(4), every
    convolution but the last followed by batch norm and ReLU. In the deformable network res5a
    and res5b are ``DeformableConv2D`` (v2, offsets and mask from their own zero-initialised
    branches). The 4x4 stride-2 "same" convolutions centre feature ``(i, j)`` on image point
    ``(4i + 1.5, 4j + 1.5)``, where bilinear upsampling by 4 expects it, so predictions align
    with the image.
    """
    keras.utils.set_random_seed(seed)
    size = budget.image_size
    inputs = keras.Input((size, size, 3), name="image")

    def block(x, layer):
        x = layer(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=layer.name + "_bn")(x)
        return keras.layers.ReLU(name=layer.name + "_relu")(x)

    x = block(inputs, keras.layers.Conv2D(16, 4, strides=2, padding="same", use_bias=False,
                                          name="conv1"))
    x = block(x, keras.layers.Conv2D(32, 4, strides=2, padding="same", use_bias=False,
                                     name="conv2"))
    x = block(x, keras.layers.Conv2D(budget.width, 3, padding="same", use_bias=False,
                                     name="conv3"))
    for name in ("res5a", "res5b"):
        if deformable:
            layer = DeformableConv2D(budget.width, 3, padding="same", use_bias=False,
                                     modulated=True, name=name)
        else:
            layer = keras.layers.Conv2D(budget.width, 3, padding="same", use_bias=False,
                                        name=name)
        x = block(x, layer)
    logits = keras.layers.Conv2D(len(CLASSES), 1, name="classifier")(x)
    return keras.Model(inputs, logits, name="deformable" if deformable else "plain")


def inference_model(network: keras.Model) -> keras.Model:
    """``network`` with its logits upsampled bilinearly to the image size: ``[N, 64, 64, 4]``."""
    upsampled = keras.layers.UpSampling2D(STRIDE, interpolation="bilinear", name="upsample")(
        network.output)
    return keras.Model(network.input, upsampled, name=network.name + "_full_resolution")


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.times.append(time.perf_counter() - self._start)


def fit_timed(model: keras.Model, images, targets, batch: int, epochs: int,
              verbose: int) -> float:
    """``model.fit`` (shuffled) with a step timer; returns the median seconds per training step,
    the first steps (graph tracing) left out."""
    timer = StepTimer()
    model.fit(images, targets, batch_size=batch, epochs=epochs, shuffle=True, callbacks=[timer],
              verbose=verbose)
    skip = min(3, len(timer.times) - 1)
    return float(np.median(timer.times[skip:]))


def train(network: keras.Model, images: np.ndarray, targets: np.ndarray, budget: Budget,
          verbose: int) -> float:
    """Trains ``network``; returns the median seconds per training step."""
    steps = budget.epochs * -(-len(images) // budget.batch)
    schedule = keras.optimizers.schedules.CosineDecay(budget.learning_rate, steps, alpha=0.05)
    # The same settings for both networks: no XLA (custom ops cannot be compiled by it).
    network.compile(optimizer=keras.optimizers.Adam(schedule),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.CategoricalAccuracy(name="acc")], jit_compile=False)
    return fit_timed(network, images, targets, budget.batch, budget.epochs, verbose)


def predict(model: keras.Model, images: np.ndarray, batch_size: int = 100
            ) -> np.ndarray | list[np.ndarray]:
    """``model``'s outputs (numpy; a list for several outputs) in inference mode, batch by batch.

    Eager calls: unlike ``Model.predict`` they trace nothing, so predicting with several models
    and a partial last batch causes no retracing."""
    chunks = [model(images[i:i + batch_size], training=False)
              for i in range(0, len(images), batch_size)]
    if isinstance(chunks[0], (list, tuple)):
        return [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(chunks[0]))]
    return np.concatenate([np.asarray(c) for c in chunks])


def confusion(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``[classes, classes]`` counts, rows = ground truth, columns = prediction."""
    index = labels.astype(np.int64).ravel() * classes + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def mean_iou(matrix: np.ndarray) -> float:
    """Mean over classes of ``TP / (TP + FP + FN)`` (classes absent from both are skipped)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    valid = union > 0
    return float(np.mean(tp[valid] / union[valid]))


def evaluate(predicted: np.ndarray, labels: np.ndarray, extent: np.ndarray) -> dict[str, float]:
    """mIoU and the pixel accuracy on small-object and large-object pixels."""
    small = (extent > 0) & (extent <= SMALL_MAX)
    large = extent >= LARGE_MIN
    hit = predicted == labels
    return {
        "miou": mean_iou(confusion(predicted, labels, len(CLASSES))),
        "small": float(hit[small].mean()) if small.any() else float("nan"),
        "large": float(hit[large].mean()) if large.any() else float("nan"),
    }


# ------------------------------------------------------------------------------------------------
# 4-5. Analysis of the learned sampling grids
# ------------------------------------------------------------------------------------------------
GROUPS = ("small objects", "large objects", "background")


def unit_groups(extent: np.ndarray) -> np.ndarray:
    """Group of every stride-4 unit: 0 small object, 1 large object, 2 background, -1 other.

    Feature ``(i, j)`` is centred on image point ``(4i + 1.5, 4j + 1.5)`` (checked against the
    network in :func:`analyse`). A unit belongs to an object (or to the background) when the
    2x2 image pixels around its centre all do; medium objects (16-32 px) and units on an
    object's edge get -1. Objects are told apart by their (continuous, random) diameter.
    """
    window = np.stack([extent[:, a::STRIDE, b::STRIDE] for a in (1, 2) for b in (1, 2)])
    uniform = (window == window[0]).all(axis=0)
    size = window[0]
    group = np.full(size.shape, -1, np.int64)
    group[uniform & (size > 0) & (size <= SMALL_MAX)] = 0
    group[uniform & (size >= LARGE_MIN)] = 1
    group[uniform & (size == 0)] = 2
    return group


def _figure_units(extent: np.ndarray, group: np.ndarray, rows: int) -> list[list[tuple]]:
    """For up to ``rows`` images: units ``(n, i, j)`` on the smallest object, the largest object
    and the background, in the images where the two objects differ most in size."""
    size = np.stack([extent[:, a::STRIDE, b::STRIDE] for a in (1, 2) for b in (1, 2)])
    uniform = (size == size[0]).all(axis=0)
    size = size[0]
    candidates = []
    for n in range(len(extent)):
        sizes = np.unique(size[n][uniform[n] & (size[n] > 0)])
        if len(sizes) >= 1 and (group[n] == 2).any():  # prefer two objects, accept one
            candidates.append((len(sizes) >= 2, sizes.max() / sizes.min(), n, sizes.min(),
                               sizes.max()))
    chosen = sorted(candidates, reverse=True)[:rows]
    units = []
    for _, _, n, smallest, largest in chosen:
        row = []
        for diameter in (smallest, largest):
            cells = np.argwhere(uniform[n] & (size[n] == diameter))
            centre = cells.mean(axis=0)  # the unit closest to the object's centroid
            cell = cells[np.argmin(np.linalg.norm(cells - centre, axis=1))]
            row.append((n, int(cell[0]), int(cell[1]), float(diameter)))
        # The background unit farthest from any object and from the image border.
        background = np.argwhere(group[n] == 2)
        objects = np.argwhere(size[n] > 0)
        distance = np.linalg.norm(background[:, None] - objects[None], axis=-1).min(axis=1)
        border = np.minimum(background, np.array(size[n].shape) - 1 - background).min(axis=1)
        cell = background[np.argmax(np.minimum(distance, border + 1))]
        row.append((n, int(cell[0]), int(cell[1]), 0.0))
        units.append(row)
    return units


def analyse(network: keras.Model, images: np.ndarray, extent: np.ndarray, out_dir: str,
            figure_rows: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Writes sampling_locations.png and receptive_field.png; returns the effective dilations
    ``{layer: {group: [units]}}`` in feature-map pixels."""
    layers = [network.get_layer("res5a"), network.get_layer("res5b")]
    probe = keras.Model(network.input, [network.get_layer("conv3_relu").output,
                                        network.get_layer("res5a_relu").output])
    inputs_a, inputs_b = predict(probe, images)
    chain = [network.get_layer("conv1"), network.get_layer("conv2")]
    image_size = images.shape[1:3]
    scale, shift = viz.feature_to_image_transform(chain, image_size)
    assert np.all(scale == STRIDE) and np.all(shift == 1.5), (scale, shift)
    group = unit_groups(extent)

    # Table 2 analogue: the effective dilation of each layer's 3x3 grid at every unit.
    positions = np.argwhere(np.ones(group.shape, bool))          # [N*h*w, 3] = (n, i, j)
    values: dict[str, dict[str, np.ndarray]] = {}
    for layer, layer_input in zip(layers, (inputs_a, inputs_b)):
        points = viz.sampling_locations(layer, layer_input, positions)
        dilation = viz.effective_dilation(points, layer.kernel_size)[:, 0]  # DG = 1
        values[layer.name] = {name: dilation[group.ravel() == g] for g, name in enumerate(GROUPS)}
    viz.plot_effective_dilation(values, os.path.join(out_dir, "receptive_field.png"),
                                unit="feature-map pixels = 4 image pixels", regular=1.0)

    # Figures 5 and 7 analogue: the 9 x 9 = 81 points of res5a under the taps of res5b.
    rows = _figure_units(extent, group, figure_rows)
    if rows:
        flat = np.array([unit[:3] for row in rows for unit in row])
        stacked = viz.stacked_sampling_locations(layers, [inputs_a, inputs_b], flat)
        stacked = viz.feature_to_image(stacked.reshape(len(flat), -1, 2), chain, image_size)
        centres = viz.feature_to_image(flat[:, 1:].astype(np.float64), chain, image_size)
        half = 2 * scale + 0.5  # the regular grid of two stacked 3x3 convolutions: +-2 units
        boxes = np.concatenate([centres - half, centres + half], axis=-1)
        count = len(rows)
        viz.plot_sampling_locations(
            images[[row[0][0] for row in rows]], centres.reshape(count, 3, 2),
            stacked.reshape(count, 3, -1, 2), os.path.join(out_dir, "sampling_locations.png"),
            column_titles=["small object", "large object", "background"],
            row_titles=[f"objects of {row[0][3]:.0f} and {row[1][3]:.0f} px" for row in rows],
            boxes=boxes.reshape(count, 3, 4),
            caption="green: an activation unit of res5b; red: its 9 x 9 = 81 sampling points "
                    "through res5b and res5a (learned offsets);\ndashed: extent of the regular "
                    "grid of two 3x3 convolutions (+-2 feature pixels = +-8 image pixels)")
    return values


# ------------------------------------------------------------------------------------------------
# 6. Export
# ------------------------------------------------------------------------------------------------
def export_and_reload(model: keras.Model, images: np.ndarray, path: str) -> float:
    """Exports ``model`` as a SavedModel, reloads it; returns the max |difference| of outputs."""
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    expected = predict(model, images)
    served = reloaded.serve(tf.constant(images)).numpy()
    return float(np.max(np.abs(served - expected)))


# ------------------------------------------------------------------------------------------------
def verdict(results: dict[str, dict[str, float]]) -> str:
    """One sentence saying which network has the higher held-out mIoU, and by how much."""
    plain, deformable = results["plain"]["miou"], results["deformable"]["miou"]
    if abs(deformable - plain) < 0.0005:
        return f"Both networks reach the same held-out mIoU ({100 * plain:.1f}%)."
    winner, loser = ("deformable", "plain") if deformable > plain else ("plain", "deformable")
    high, low = max(plain, deformable), min(plain, deformable)
    return (f"The {winner} network wins: its held-out mIoU is {100 * (high - low):.1f} points "
            f"higher than the {loser} network's ({100 * high:.1f}% vs {100 * low:.1f}%).")


def _fmt(value: float) -> str:
    return "   n/a" if np.isnan(value) else f"{100 * value:5.1f}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_dcn.demo", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny budget (under a minute)")
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    os.makedirs(args.out, exist_ok=True)
    verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()

    print("== 1. What deform_conv2d computes")
    worked_example()

    print(f"\n== 2. Data: {budget.train} training and {budget.test} held-out {budget.image_size}x"
          f"{budget.image_size} images; {', '.join(CLASSES[1:])} of 8-44 px, rotated, sheared, "
          "stretched, on textures")
    train_images, train_labels, _ = make_dataset(budget.train, args.seed, budget.image_size)
    test_images, test_labels, test_extent = make_dataset(budget.test, args.seed + 1,
                                                         budget.image_size)
    targets = soft_targets(train_labels, len(CLASSES), STRIDE)
    fractions = np.bincount(test_labels.ravel(), minlength=len(CLASSES)) / test_labels.size
    print("  held-out pixel fractions: " + ", ".join(
        f"{name} {100 * f:.1f}%" for name, f in zip(CLASSES, fractions)))

    results = {}
    predictions = {}
    networks = {}
    for deformable in (False, True):
        name = "deformable" if deformable else "plain"
        print(f"\n== 3. Training the {name} network ({budget.epochs} epochs, batch "
              f"{budget.batch})")
        network = build_network(deformable, budget, args.seed)
        tic = time.perf_counter()
        step = train(network, train_images, targets, budget, verbose)
        seconds = time.perf_counter() - tic
        full = inference_model(network)
        logits = predict(full, test_images)
        predictions[name] = np.argmax(logits, axis=-1).astype(np.uint8)
        results[name] = dict(evaluate(predictions[name], test_labels, test_extent),
                             params=network.count_params(), step=step, seconds=seconds)
        networks[name] = (network, full)
    baseline = evaluate(np.zeros_like(test_labels), test_labels, test_extent)

    print(f"\n== Results on {budget.test} held-out images (mIoU over {len(CLASSES)} classes "
          "incl. background; accuracy = pixel accuracy on small (<= 16 px) / large (>= 32 px) "
          "objects)")
    header = (f"{'network':<34}{'mIoU':>7}{'acc small':>11}{'acc large':>11}{'params':>9}"
              f"{'ms/step':>9}{'train s':>9}")
    print(header)
    print("-" * len(header))
    print(f"{'all background (trivial baseline)':<34}{_fmt(baseline['miou']):>7}"
          f"{_fmt(baseline['small']):>11}{_fmt(baseline['large']):>11}{'-':>9}{'-':>9}{'-':>9}")
    for name, label in (("plain", "plain 3x3 convs"), ("deformable", "deformable v2 in res5a/b")):
        r = results[name]
        print(f"{label:<34}{_fmt(r['miou']):>7}{_fmt(r['small']):>11}{_fmt(r['large']):>11}"
              f"{r['params']:>9,}{1000 * r['step']:>9.0f}{r['seconds']:>9.0f}")
    print(f"(ms/step: median wall time of one training step of {budget.batch} images; train s: "
          "the whole fit, first-step tracing included)")
    print(verdict(results))
    extra = results["deformable"]["params"] - results["plain"]["params"]
    print(f"The deformable network has {extra:,} more parameters (its offset/mask branches, "
          f"+{100 * extra / results['plain']['params']:.0f}%) and takes "
          f"{results['deformable']['step'] / results['plain']['step']:.1f}x the time per "
          "training step.")

    print("\n== 4-5. Learned sampling grids")
    count = min(budget.analysis_images, budget.test)
    deform_net = networks["deformable"][0]
    values = analyse(deform_net, test_images[:count], test_extent[:count], args.out)
    viz.plot_segmentations(test_images[:4], {"ground truth": test_labels[:4],
                                             "plain": predictions["plain"][:4],
                                             "deformable": predictions["deformable"][:4]},
                           os.path.join(args.out, "predictions.png"), CLASSES)
    print(f"Effective dilation (mean distance between adjacent sampling points of the 3x3 grid, "
          f"in feature-map pixels; 1 feature-map pixel = {STRIDE} image pixels; the regular "
          f"grid gives 1.00) over units of {count} held-out images:")
    print(f"{'layer':<8}" + "".join(f"{g:>20}" for g in ("small objects", "large objects",
                                                          "background")))
    for layer_name, groups in values.items():
        cells = [f"{a.mean():.2f} ± {a.std():.2f} ({len(a)})" if len(a) else "n/a"
                 for a in groups.values()]
        print(f"{layer_name:<8}" + "".join(f"{c:>20}" for c in cells))
    print(f"wrote {os.path.join(args.out, 'sampling_locations.png')}, "
          f"{os.path.join(args.out, 'receptive_field.png')}, "
          f"{os.path.join(args.out, 'predictions.png')}")

    print("\n== 6. SavedModel")
    path = os.path.join(args.out, "deformable_savedmodel")
    size = budget.image_size
    difference = export_and_reload(networks["deformable"][1], test_images[:16], path)
    print(f"SavedModel round trip: exported to {path}, reloaded with tf.saved_model.load; "
          f"max |difference| of predictions = {difference:.2e} "
          f"({'match' if difference <= 1e-5 else 'MISMATCH'})")
    print("  to serve it elsewhere: import tf_dcn; tf_dcn.load_ops(); "
          f"tf.saved_model.load({path!r}).serve(images)  # [N, {size}, {size}, 3] images -> "
          f"[N, {size}, {size}, {len(CLASSES)}] logits")
    print(f"\nTotal time {time.perf_counter() - started:.0f} s")
    return 0 if difference <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
