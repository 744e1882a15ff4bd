"""A small R-FCN detector (Dai et al. 2016) with deformable parts (Dai et al. 2017), as a Keras
model that trains with ``model.fit``.

Layout and conventions:

* images ``[N, S, S, 3]`` float32 in ``[0, 1]``; boxes ``(x1, y1, x2, y2)`` in image pixels
  (continuous coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``); a padding box is
  four -1 and its class is -1 (the convention of :mod:`tf_dcn.layers`' ``boxes [N, K, 4]``).
* ``model.fit(images, {"boxes": [N, G, 4], "classes": [N, G]})``: classes ``1..num_classes``.
* ``model(images)`` / ``model.predict(images)``: a dict of ``boxes [N, D, 4]``, ``scores
  [N, D]``, ``classes [N, D]`` (int32, -1 after the last detection) and ``num_detections [N]``.

The network: a small convolutional backbone at stride 8 (its last two 3x3 convolutions may be
``DeformableConv2D``); a region proposal network (RPN) with anchors of three sizes and three
aspect ratios, whose box deltas are decoded and filtered with ``tf.image`` NMS into proposals;
and the R-FCN head: a 1x1 convolution to ``k*k*(classes+1)`` position-sensitive score maps and
``k*k*4`` box maps, pooled per proposal by (deformable) PS-RoI pooling and averaged over the
``k x k`` bins (voting). Training follows Faster R-CNN's approximate joint training: one loss,
the proposals treated as constants, the ground-truth boxes added to them.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling
from tf_dcn.layers._boxes import is_padding

#: Scales of the ``(dx, dy, dw, dh)`` box deltas (Faster R-CNN's head normalisation).
DELTA_SCALE = (0.1, 0.1, 0.2, 0.2)
#: Largest ``dw``, ``dh`` decoded (a box grows at most ~60x): keeps ``exp`` finite.
MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Sizes and thresholds of the detector."""

    image_size: int = 96                  # a multiple of the stride, 8
    num_classes: int = 3
    width: int = 64                       # channels of the last backbone stage
    anchor_sizes: tuple[float, ...] = (12.0, 24.0, 48.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)   # height / width
    group_size: int = 3                   # k: k x k position-sensitive parts
    sample_per_part: int = 2
    deformable_pooling: bool = True
    deformable_conv: bool = False
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch: int = 128                  # anchors sampled per image for the RPN loss
    pre_nms: int = 300                    # best-scoring anchors kept before NMS
    rpn_nms_iou: float = 0.7
    train_proposals: int = 48             # proposals per image after NMS, training
    test_proposals: int = 64              # and inference
    head_foreground_iou: float = 0.5
    detections: int = 50                  # detections per image
    detection_nms_iou: float = 0.5
    score_threshold: float = 0.01

    #: Output stride of the backbone (three stride-2 convolutions).
    stride = 8

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and self.image_size >= self.stride
                and self.image_size % self.stride == 0):
            raise ValueError(f"image_size must be a positive multiple of {self.stride}, got "
                             f"image_size={self.image_size!r}")
        for name in ("num_classes", "width", "group_size", "sample_per_part", "rpn_batch",
                     "pre_nms", "train_proposals", "test_proposals", "detections"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if not self.anchor_sizes or not self.anchor_ratios or min(
                self.anchor_sizes + self.anchor_ratios) <= 0:
            raise ValueError("anchor_sizes and anchor_ratios must be non-empty and positive, got "
                             f"anchor_sizes={self.anchor_sizes!r}, "
                             f"anchor_ratios={self.anchor_ratios!r}")
        for name in ("rpn_positive_iou", "rpn_negative_iou", "rpn_nms_iou",
                     "head_foreground_iou", "detection_nms_iou", "score_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {name}={value!r}")

    @property
    def feature_size(self) -> int:
        return self.image_size // self.stride

    @property
    def anchors_per_cell(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)


# ------------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------------
def make_anchors(config: DetectorConfig) -> np.ndarray:
    """Anchors ``[h*w*A, 4]`` xyxy: for every feature cell ``(i, j)`` (centred on image point
    ``((j + 0.5) * stride, (i + 0.5) * stride)``), each size and aspect ratio (equal area per
    size), in the order ``(i, j, size, ratio)`` that matches the RPN's outputs."""
    shapes = np.array([(size / np.sqrt(ratio), size * np.sqrt(ratio))  # (width, height)
                       for size in config.anchor_sizes for ratio in config.anchor_ratios])
    centres = (np.arange(config.feature_size) + 0.5) * config.stride
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    centre = np.stack([cx, cy], axis=-1)[:, :, None, :]              # [h, w, 1, 2]
    half = shapes[None, None] / 2                                    # [1, 1, A, 2]
    anchors = np.concatenate([centre - half, centre + half], axis=-1)
    return anchors.reshape(-1, 4).astype(np.float32)


def encode_boxes(boxes: tf.Tensor, references: tf.Tensor) -> tf.Tensor:
    """Deltas ``[..., 4]`` = ``(dx, dy, log dw, log dh) / DELTA_SCALE`` of xyxy ``boxes``
    relative to xyxy ``references`` (same or broadcastable shapes)."""
    w, h = references[..., 2] - references[..., 0], references[..., 3] - references[..., 1]
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    # centres computed alike on both sides, so that a box encodes to exactly 0 against itself
    deltas = tf.stack([
        ((boxes[..., 0] + 0.5 * bw) - (references[..., 0] + 0.5 * w)) / w,
        ((boxes[..., 1] + 0.5 * bh) - (references[..., 1] + 0.5 * h)) / h,
        tf.math.log(tf.maximum(bw, 1e-3) / w),
        tf.math.log(tf.maximum(bh, 1e-3) / h)], axis=-1)
    return deltas / DELTA_SCALE


def decode_boxes(deltas: tf.Tensor, references: tf.Tensor) -> tf.Tensor:
    """The inverse of :func:`encode_boxes` (size deltas clipped to ``MAX_LOG_SCALE``)."""
    deltas = deltas * DELTA_SCALE
    w, h = references[..., 2] - references[..., 0], references[..., 3] - references[..., 1]
    cx = references[..., 0] + 0.5 * w + deltas[..., 0] * w
    cy = references[..., 1] + 0.5 * h + deltas[..., 1] * h
    bw = w * tf.exp(tf.minimum(deltas[..., 2], MAX_LOG_SCALE))
    bh = h * tf.exp(tf.minimum(deltas[..., 3], MAX_LOG_SCALE))
    return tf.stack([cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh], axis=-1)


def pairwise_iou(boxes: tf.Tensor, others: tf.Tensor) -> tf.Tensor:
    """IoU ``[N, A, G]`` of xyxy ``boxes [N, A, 4]`` with ``others [N, G, 4]``; -1 in the
    columns of padding boxes of ``others`` and in the rows of padding ``boxes``."""
    a = boxes[:, :, None, :]
    b = others[:, None, :, :]
    iw = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter / tf.maximum(area_a + area_b - inter, 1e-6)
    invalid = is_padding(boxes)[:, :, None] | is_padding(others)[:, None, :]
    return tf.where(invalid, -1.0, iou)


def _sample(candidates: tf.Tensor, limit: tf.Tensor, seed: keras.random.SeedGenerator
            ) -> tf.Tensor:
    """``[N, A]`` bool: at most ``limit`` (``[N]`` int) of the ``candidates [N, A]`` of every
    image, chosen uniformly at random."""
    keys = tf.where(candidates, keras.random.uniform(tf.shape(candidates), seed=seed), -1.0)
    ranked = tf.sort(keys, axis=1, direction="DESCENDING")
    index = tf.clip_by_value(limit - 1, 0, tf.shape(keys)[1] - 1)
    threshold = tf.gather(ranked, index[:, None], batch_dims=1)
    return candidates & (keys >= threshold) & (limit[:, None] > 0)


def rpn_targets(anchors: tf.Tensor, gt_boxes: tf.Tensor, config: DetectorConfig,
                seed: keras.random.SeedGenerator) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Faster R-CNN's anchor labels: positive at IoU >= 0.7 with a box or when an anchor is the
    best for a box, negative below 0.3, ``rpn_batch`` anchors sampled per image with at most
    half positives.

    Returns:
        ``positive [N, A]`` and ``sampled [N, A]`` (positives and negatives in the loss), float32;
        ``deltas [N, A, 4]`` of each anchor's best box.
    """
    batch = tf.shape(gt_boxes)[0]
    tiled = tf.tile(anchors[None], [batch, 1, 1])
    iou = pairwise_iou(tiled, gt_boxes)                                   # [N, A, G]
    best = tf.reduce_max(iou, axis=2)
    best_for_box = tf.reduce_max(iou, axis=1, keepdims=True)              # [N, 1, G]
    is_best = tf.reduce_any((iou >= best_for_box) & (best_for_box > 0.0), axis=2)
    positive = (best >= config.rpn_positive_iou) | is_best
    negative = (best < config.rpn_negative_iou) & ~positive  # also every anchor of an empty image
    max_positive = config.rpn_batch // 2
    positive = _sample(positive, tf.fill([batch], max_positive), seed)
    count = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    negative = _sample(negative, config.rpn_batch - count, seed)
    matched = tf.gather(gt_boxes, tf.argmax(iou, axis=2, output_type=tf.int32), batch_dims=1)
    deltas = encode_boxes(matched, tiled)
    return (tf.cast(positive, tf.float32), tf.cast(positive | negative, tf.float32),
            tf.where(positive[..., None], deltas, 0.0))


def head_targets(rois: tf.Tensor, gt_boxes: tf.Tensor, gt_classes: tf.Tensor,
                 config: DetectorConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Labels ``[N, K]`` of the RoIs (class of the best box at IoU >= 0.5, else 0; -1 for padding
    RoIs) and their box deltas ``[N, K, 4]`` to that box."""
    iou = pairwise_iou(rois, gt_boxes)
    best = tf.reduce_max(iou, axis=2)
    index = tf.argmax(iou, axis=2, output_type=tf.int32)
    labels = tf.where(best >= config.head_foreground_iou,
                      tf.gather(tf.cast(gt_classes, tf.int32), index, batch_dims=1), 0)
    labels = tf.where(is_padding(rois), -1, labels)
    matched = tf.gather(gt_boxes, index, batch_dims=1)
    deltas = tf.where((labels > 0)[..., None], encode_boxes(matched, rois), 0.0)
    return labels, deltas


def nms_boxes(boxes: tf.Tensor, scores: tf.Tensor, count: int, iou_threshold: float,
              score_threshold: float):
    """``tf.image.combined_non_max_suppression`` per image and class on xyxy ``boxes [N, B, 4]``
    (shared by the classes) and ``scores [N, B, classes]``; returns boxes ``[N, count, 4]``
    (padding -1), scores ``[N, count]`` (0 after the last), classes ``[N, count]`` (0-based,
    -1 after the last) and the number kept ``[N]``."""
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], scores, max_output_size_per_class=count, max_total_size=count,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False,
        clip_boxes=False)
    valid = tf.range(count)[None, :] < nms.valid_detections[:, None]
    kept = tf.where(valid[..., None], nms.nmsed_boxes, -1.0)
    classes = tf.where(valid, tf.cast(nms.nmsed_classes, tf.int32), -1)
    return kept, tf.where(valid, nms.nmsed_scores, 0.0), classes, nms.valid_detections


# ------------------------------------------------------------------------------------------------
# Layers and the model
# ------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tf_dcn.examples")
class PSRoIPooling(DeformablePSRoIPooling):
    """Plain position-sensitive RoI pooling (R-FCN without deformable parts): the same op and
    arguments as :class:`~tf_dcn.layers.DeformablePSRoIPooling` without the offset branch (no
    weights; inputs ``[score_maps, rois or boxes]``)."""

    def build(self, input_shape):
        shapes = self._check_shapes(input_shape)
        self.compute_output_shape(input_shape)
        self._finish_build(shapes)

    def call(self, inputs):
        inputs = self._split(inputs)
        score_maps = self._features(inputs[0])
        rois, finish = self._as_rois(score_maps, inputs[1])
        return finish(self._psroi_pool(
            score_maps, rois, None, output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, sample_per_part=self.sample_per_part,
            spatial_scale=self.spatial_scale))


def build_backbone(config: DetectorConfig) -> keras.Model:
    """Image ``[N, S, S, 3]`` to features ``[N, S/8, S/8, width]``: 3x3 convolutions
    32/2 - 48/2 - 48 - 64/2 - res5a - res5b (``width`` channels; ``DeformableConv2D`` v2 when
    ``config.deformable_conv``), each with batch norm and ReLU."""
    images = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = images
    for name, filters, stride in (("conv1", 32, 2), ("conv2", 48, 2), ("conv3", 48, 1),
                                  ("conv4", config.width, 2), ("res5a", config.width, 1),
                                  ("res5b", config.width, 1)):
        if config.deformable_conv and name.startswith("res5"):
            layer = DeformableConv2D(filters, 3, padding="same", use_bias=False, modulated=True,
                                     name=name)
        else:
            layer = keras.layers.Conv2D(filters, 3, strides=stride, padding="same",
                                        use_bias=False, name=name)
        x = layer(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=name + "_bn")(x)
        x = keras.layers.ReLU(name=name + "_relu")(x)
    return keras.Model(images, x, name="backbone")


@keras.saving.register_keras_serializable(package="tf_dcn.examples")
class RFCN(keras.Model):
    """The detector (see the module docstring). ``config`` fixes its sizes and variant.

    ``fit``/``evaluate`` take ``(images, {"boxes", "classes"})`` and report the four losses
    (``rpn_cls``, ``rpn_box``, ``cls``, ``box``); ``call``/``predict`` return the detections.
    """

    LOSSES = ("rpn_cls", "rpn_box", "cls", "box")

    def __init__(self, config: DetectorConfig | None = None, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config = config or DetectorConfig()
        self.seed = seed
        keras.utils.set_random_seed(seed)
        self._anchor_array = make_anchors(config)
        self.backbone = build_backbone(config)
        a = config.anchors_per_cell
        self.rpn_conv = keras.layers.Conv2D(config.width, 3, padding="same", activation="relu",
                                            name="rpn_conv")
        self.rpn_cls = keras.layers.Conv2D(a, 1, name="rpn_cls",
                                           kernel_initializer=keras.initializers.RandomNormal(
                                               stddev=0.01))
        self.rpn_box = keras.layers.Conv2D(4 * a, 1, name="rpn_box", kernel_initializer="zeros")
        k = config.group_size
        classes = config.num_classes + 1
        self.head_conv = keras.layers.Conv2D(config.width, 1, activation="relu", name="head_conv")
        self.score_maps = keras.layers.Conv2D(k * k * classes, 1, name="score_maps")
        self.box_maps = keras.layers.Conv2D(k * k * 4, 1, name="box_maps",
                                            kernel_initializer="zeros")
        pooling = DeformablePSRoIPooling if config.deformable_pooling else PSRoIPooling
        common = dict(group_size=k, spatial_scale=1.0 / config.stride,
                      sample_per_part=config.sample_per_part)
        self.cls_pool = pooling(classes, name="cls_pool", **common)
        self.box_pool = pooling(4, name="box_pool", **common)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in ("loss",) + self.LOSSES}
        self.sampling_seed = keras.random.SeedGenerator(seed)

    @property
    def anchors(self) -> tf.Tensor:
        """The anchors ``[A, 4]``, as a constant of the graph being traced (not a captured
        tensor, which graph converters such as tf2onnx would turn into an extra input)."""
        return tf.constant(self._anchor_array)

    # -- the parts ------------------------------------------------------------------------------
    def _rpn(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Objectness logits ``[N, A]`` and box deltas ``[N, A, 4]`` of every anchor."""
        x = self.rpn_conv(features)
        batch = tf.shape(features)[0]
        logits = tf.reshape(self.rpn_cls(x), [batch, -1])
        deltas = tf.reshape(self.rpn_box(x), [batch, -1, 4])
        return logits, deltas

    def _propose(self, logits: tf.Tensor, deltas: tf.Tensor, count: int) -> tf.Tensor:
        """Proposals ``[N, count, 4]`` (padding -1): decoded anchors clipped to the image, the
        ``pre_nms`` best kept, NMS at ``rpn_nms_iou``; boxes under 2 pixels are dropped."""
        config = self.config
        boxes = tf.clip_by_value(decode_boxes(deltas, self.anchors), 0.0,
                                 float(config.image_size))
        scores = tf.sigmoid(logits)
        large = ((boxes[..., 2] - boxes[..., 0]) >= 2.0) & ((boxes[..., 3] - boxes[..., 1]) >= 2.0)
        scores = tf.where(large, scores, 0.0)
        top = tf.math.top_k(scores, k=min(config.pre_nms, len(self._anchor_array)))
        boxes = tf.gather(boxes, top.indices, batch_dims=1)
        proposals, _, _, _ = nms_boxes(boxes, top.values[..., None], count, config.rpn_nms_iou,
                                       score_threshold=1e-6)
        return proposals

    def _head(self, features: tf.Tensor, rois: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Class logits ``[N, K, classes+1]`` and box deltas ``[N, K, 4]`` of ``rois [N, K, 4]``:
        PS-RoI pooling of the score and box maps, averaged over the k x k bins."""
        x = self.head_conv(features)
        scores, boxes = self.score_maps(x), self.box_maps(x)
        if self.config.deformable_pooling:  # the offsets are predicted from the head features
            scores = self.cls_pool([scores, rois, x])
            boxes = self.box_pool([boxes, rois, x])
        else:
            scores = self.cls_pool([scores, rois])
            boxes = self.box_pool([boxes, rois])
        return tf.reduce_mean(scores, axis=(2, 3)), tf.reduce_mean(boxes, axis=(2, 3))

    def call(self, images, training=False):
        """Detections of ``images [N, S, S, 3]``: a dict of ``boxes [N, D, 4]`` (xyxy pixels,
        -1 after the last), ``scores [N, D]``, ``classes [N, D]`` (int32, 1-based, -1 after the
        last) and ``num_detections [N]``."""
        config = self.config
        features = self.backbone(images, training=training)
        rois = self._propose(*self._rpn(features), config.test_proposals)
        logits, deltas = self._head(features, rois)
        valid = ~is_padding(rois)
        probabilities = tf.where(valid[..., None], tf.nn.softmax(logits)[..., 1:], 0.0)
        boxes = tf.clip_by_value(decode_boxes(deltas, rois), 0.0, float(config.image_size))
        boxes, scores, classes, count = nms_boxes(
            boxes, probabilities, config.detections, config.detection_nms_iou,
            config.score_threshold)
        return {"boxes": boxes, "scores": scores, "classes": tf.where(classes >= 0, classes + 1, -1),
                "num_detections": count}

    # -- training -------------------------------------------------------------------------------
    def _detection_losses(self, images, targets, training: bool) -> dict[str, tf.Tensor]:
        config = self.config
        if not isinstance(targets, dict) or set(targets) != {"boxes", "classes"}:
            got = sorted(targets) if isinstance(targets, dict) else type(targets).__name__
            raise ValueError('targets (y) must be a dict {"boxes": [N, G, 4], "classes": '
                             f'[N, G]}}, got {got}')
        gt_boxes = tf.cast(targets["boxes"], tf.float32)
        gt_classes = tf.cast(targets["classes"], tf.int32)
        features = self.backbone(images, training=training)
        logits, deltas = self._rpn(features)
        positive, sampled, anchor_deltas = rpn_targets(self.anchors, gt_boxes, config,
                                                       self.sampling_seed)
        count = tf.maximum(tf.reduce_sum(sampled), 1.0)
        rpn_cls = tf.reduce_sum(sampled * tf.nn.sigmoid_cross_entropy_with_logits(
            labels=positive, logits=logits)) / count
        rpn_box = tf.reduce_sum(positive * _huber(deltas - anchor_deltas)) / count

        proposals = tf.stop_gradient(self._propose(logits, deltas, config.train_proposals))
        rois = tf.concat([proposals, gt_boxes], axis=1)
        labels, roi_deltas = head_targets(rois, gt_boxes, gt_classes, config)
        cls_logits, box_deltas = self._head(features, rois)
        valid = tf.cast(labels >= 0, tf.float32)
        foreground = tf.cast(labels > 0, tf.float32)
        cls = tf.reduce_sum(valid * tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(labels, 0), logits=cls_logits)) / tf.maximum(tf.reduce_sum(valid), 1.0)
        box = tf.reduce_sum(foreground * _huber(box_deltas - roi_deltas)) / tf.maximum(
            tf.reduce_sum(foreground), 1.0)
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "cls": cls, "box": box}

    def _record(self, losses: dict[str, tf.Tensor], total: tf.Tensor) -> dict[str, tf.Tensor]:
        self._trackers["loss"].update_state(total)
        for name, value in losses.items():
            self._trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, data):
        images, targets = data[0], data[1]
        with tf.GradientTape() as tape:
            losses = self._detection_losses(images, targets, training=True)
            total = tf.add_n(list(losses.values()))
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(total, variables), variables)
        return self._record(losses, total)

    def test_step(self, data):
        losses = self._detection_losses(data[0], data[1], training=False)
        return self._record(losses, tf.add_n(list(losses.values())))

    @property
    def metrics(self):
        return list(self._trackers.values())

    def get_config(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "seed": self.seed,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        settings = {key: tuple(value) if isinstance(value, list) else value
                    for key, value in config.pop("config").items()}
        return cls(DetectorConfig(**settings), **config)


def _huber(difference: tf.Tensor) -> tf.Tensor:
    """Smooth L1 (Huber, delta 1) summed over the last axis."""
    magnitude = tf.abs(difference)
    return tf.reduce_sum(tf.where(magnitude < 1.0, 0.5 * difference * difference,
                                  magnitude - 0.5), axis=-1)
