"""The pieces of the R-FCN example: data, anchors and box coding, target assignment, the plain
PS-RoI pooling layer, COCO evaluation and the part-offset geometry, each against NumPy or exact
values; and the detector trained for a few steps with ``model.fit``."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tf_dcn import viz_detection
from tf_dcn.examples import coco_evaluation, detection_data, rfcn_model
from tf_dcn.examples.rfcn_model import RFCN, DetectorConfig, PSRoIPooling

SMALL = DetectorConfig(image_size=48, anchor_sizes=(10.0, 20.0), train_proposals=16,
                       test_proposals=16, detections=10, pre_nms=100, rpn_batch=32)


def _numpy_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _random_boxes(rng, shape, size=48.0):
    corner = rng.uniform(0, size - 12, shape + (2,))
    extent = rng.uniform(2, 12, shape + (2,))
    return np.concatenate([corner, corner + extent], axis=-1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def test_boxes_from_masks_on_a_drawn_image():
    labels = np.zeros((2, 10, 12), np.uint8)
    extent = np.zeros((2, 10, 12), np.float32)
    labels[0, 2:5, 3:9], extent[0, 2:5, 3:9] = 2, 20.0    # 18 pixels: rows 2-4, columns 3-8
    labels[0, 6:10, 0:4], extent[0, 6:10, 0:4] = 3, 11.5  # 16 pixels
    labels[0, 0, 0], extent[0, 0, 0] = 1, 9.0             # 1 pixel: too small, left out
    boxes, classes = detection_data.boxes_from_masks(labels, extent, max_objects=3)
    np.testing.assert_array_equal(boxes[0], [[3, 2, 9, 5], [0, 6, 4, 10], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(classes[0], [2, 3, -1])
    np.testing.assert_array_equal(boxes[1], -np.ones((3, 4)))
    np.testing.assert_array_equal(classes[1], [-1, -1, -1])
    with pytest.raises(ValueError, match="max_objects=1"):
        detection_data.boxes_from_masks(labels, extent, max_objects=1)


def test_make_detection_dataset():
    images, boxes, classes = detection_data.make_detection_dataset(12, seed=3)
    assert images.shape == (12, 96, 96, 3) and images.dtype == np.float32
    assert boxes.shape == (12, 5, 4) and classes.shape == (12, 5)
    valid = classes > 0
    assert valid.sum(axis=1).min() >= 1 and set(np.unique(classes[valid])) <= {1, 2, 3}
    assert np.all(boxes[~valid] == -1)
    b = boxes[valid]
    assert np.all(b[:, :2] >= 0) and np.all(b[:, 2:] <= 96) and np.all(b[:, 2:] > b[:, :2])
    again = detection_data.make_detection_dataset(12, seed=3)
    np.testing.assert_array_equal(again[1], boxes)  # fixed seed, same data


# ------------------------------------------------------------------------------------------------
# Boxes and targets
# ------------------------------------------------------------------------------------------------
def test_anchors_layout():
    config = DetectorConfig()
    anchors = rfcn_model.make_anchors(config)
    assert anchors.shape == (12 * 12 * 9, 4)
    per_cell = anchors.reshape(12, 12, 9, 4)
    centres = (per_cell[..., :2] + per_cell[..., 2:]) / 2
    np.testing.assert_allclose(centres[0, 0], np.full((9, 2), 4.0), atol=1e-5)
    np.testing.assert_allclose(centres[2, 5], np.tile([[44.0, 20.0]], (9, 1)), atol=1e-5)  # x, y
    width = per_cell[0, 0, :, 2] - per_cell[0, 0, :, 0]
    height = per_cell[0, 0, :, 3] - per_cell[0, 0, :, 1]
    sizes = np.repeat(config.anchor_sizes, 3)
    ratios = np.tile(config.anchor_ratios, 3)
    np.testing.assert_allclose(width * height, sizes ** 2, rtol=1e-5)
    np.testing.assert_allclose(height / width, ratios, rtol=1e-5)


def test_box_coding_round_trip_and_values():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, (3, 7))
    references = _random_boxes(rng, (3, 7))
    deltas = rfcn_model.encode_boxes(tf.constant(boxes), tf.constant(references))
    np.testing.assert_allclose(rfcn_model.decode_boxes(deltas, tf.constant(references)), boxes,
                               atol=1e-4)
    np.testing.assert_allclose(rfcn_model.encode_boxes(tf.constant(references),
                                                       tf.constant(references)), 0.0, atol=0)
    # A box twice as wide, moved right by half the reference width: dx = 0.5, dw = log 2.
    got = rfcn_model.encode_boxes(tf.constant([[10.0, 0.0, 30.0, 10.0]]),
                                  tf.constant([[10.0, 0.0, 20.0, 10.0]]))
    np.testing.assert_allclose(got, [[0.5 / 0.1, 0.0, np.log(2.0) / 0.2, 0.0]], rtol=1e-6)
    huge = rfcn_model.decode_boxes(tf.constant([[0.0, 0.0, 1e4, 1e4]]), tf.constant([[0.0, 0, 1, 1]]))
    assert np.all(np.isfinite(huge))


def test_pairwise_iou_against_numpy():
    rng = np.random.default_rng(1)
    a = _random_boxes(rng, (2, 6))
    b = _random_boxes(rng, (2, 4))
    a[1, 5] = -1.0
    b[0, 3] = -1.0
    got = rfcn_model.pairwise_iou(tf.constant(a), tf.constant(b)).numpy()
    for n in range(2):
        for i in range(6):
            for j in range(4):
                padding = (a[n, i] == -1).all() or (b[n, j] == -1).all()
                expected = -1.0 if padding else _numpy_iou(a[n, i], b[n, j])
                assert got[n, i, j] == pytest.approx(expected, abs=1e-6)


def test_rpn_targets():
    config = SMALL
    anchors = rfcn_model.make_anchors(config)
    gt = np.full((2, 3, 4), -1.0, np.float32)
    gt[0, 0] = anchors[40]                 # exactly one anchor
    gt[0, 1] = [20.0, 20.0, 33.0, 31.0]
    positive, sampled, deltas = rfcn_model.rpn_targets(
        tf.constant(anchors), tf.constant(gt), config, keras.random.SeedGenerator(0))
    positive, sampled, deltas = positive.numpy(), sampled.numpy(), deltas.numpy()
    assert positive[0, 40] == 1 and np.all(deltas[0, 40] == 0)
    assert positive[0].sum() <= config.rpn_batch // 2 and sampled[0].sum() == config.rpn_batch
    iou = np.array([[_numpy_iou(a, g) for g in gt[0, :2]] for a in anchors]).max(axis=1)
    negatives = (sampled[0] == 1) & (positive[0] == 0)
    assert np.all(iou[negatives] < config.rpn_negative_iou)
    assert np.all((iou[positive[0] == 1] >= config.rpn_positive_iou)
                  | np.isin(np.nonzero(positive[0])[0], [40, np.argmax(
                      [_numpy_iou(a, gt[0, 1]) for a in anchors])]))
    # An image without objects: no positives, rpn_batch negatives, no box targets.
    assert positive[1].sum() == 0 and sampled[1].sum() == config.rpn_batch
    assert np.all(deltas[1] == 0) and np.all(deltas[0][positive[0] == 0] == 0)


def test_head_targets():
    gt = tf.constant([[[10.0, 10.0, 20.0, 20.0], [-1, -1, -1, -1]]])
    classes = tf.constant([[3, -1]])
    rois = tf.constant([[[10.0, 10.0, 20.0, 20.0],     # the object: class 3, zero deltas
                         [12.0, 10.0, 22.0, 20.0],     # IoU 8/12 = 0.67: class 3
                         [15.0, 10.0, 25.0, 20.0],     # IoU 5/15 = 0.33: background
                         [-1, -1, -1, -1]]])           # padding
    labels, deltas = rfcn_model.head_targets(rois, gt, classes, DetectorConfig())
    np.testing.assert_array_equal(labels, [[3, 3, 0, -1]])
    np.testing.assert_allclose(deltas[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(deltas[0, 1], [-0.2 / 0.1, 0, 0, 0], atol=1e-5)
    np.testing.assert_array_equal(deltas[0, 2:], 0.0)


@pytest.mark.parametrize("field,value", [("image_size", 50), ("image_size", 0),
                                         ("num_classes", 0), ("group_size", 0),
                                         ("detections", 2.5), ("rpn_nms_iou", 1.5),
                                         ("anchor_sizes", ()), ("anchor_ratios", (1.0, -2.0))])
def test_bad_detector_config_is_an_error(field, value):
    with pytest.raises(ValueError, match=field):
        DetectorConfig(**{field: value})


# ------------------------------------------------------------------------------------------------
# Plain PS-RoI pooling and the part geometry
# ------------------------------------------------------------------------------------------------
def test_plain_psroi_pooling_equals_deformable_with_zero_offsets():
    rng = np.random.default_rng(2)
    maps = tf.constant(rng.normal(size=(2, 6, 6, 2 * 9)), tf.float32)
    boxes = tf.constant(_random_boxes(rng, (2, 3)))
    plain = PSRoIPooling(2, group_size=3, spatial_scale=0.125, sample_per_part=2)
    deformable = tf_dcn.layers.DeformablePSRoIPooling(2, group_size=3, spatial_scale=0.125,
                                                      sample_per_part=2)
    got = plain([maps, boxes])
    assert got.shape == (2, 3, 3, 3, 2) and not plain.weights
    np.testing.assert_array_equal(got, deformable([maps, boxes]))  # zero-initialised offsets
    again = PSRoIPooling.from_config(plain.get_config())
    np.testing.assert_array_equal(again([maps, boxes]), got)


def test_part_bins_match_where_the_op_samples():
    """A score map whose value is its own x (or y) feature coordinate pools, per bin, the mean
    position of the bin's samples: so the op itself says where each moved bin lies."""
    rng = np.random.default_rng(3)
    k, samples, scale = 3, 2, 0.25
    layer = tf_dcn.layers.DeformablePSRoIPooling(
        2, group_size=k, spatial_scale=scale, sample_per_part=samples, trans_std=0.1,
        offset_kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1),
        offset_bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=2))
    size = 24
    u = np.arange(size, dtype=np.float32)
    coordinate = np.stack([np.broadcast_to(u[None, :], (size, size)),       # x, then y
                           np.broadcast_to(u[:, None], (size, size))], axis=-1)
    maps = np.repeat(coordinate[:, :, :, None], k * k, axis=-1).reshape(1, size, size, 2 * k * k)
    features = rng.normal(size=(1, size, size, 5)).astype(np.float32)
    boxes = np.array([[30.2, 28.0, 61.0, 50.6], [40.0, 35.0, 49.0, 66.0]], np.float32)
    pooled = layer([tf.constant(maps), tf.constant(boxes[None]), tf.constant(features)])[0]
    regular, moved = viz_detection.part_bins(layer, features, boxes)
    bin_size = moved[..., 2:] - moved[..., :2]
    # samples at the sub-bin starts: their mean is the bin start + (S-1)/(2S) of the bin
    mean_sample = moved[..., :2] + bin_size * (samples - 1) / (2 * samples)
    np.testing.assert_allclose((pooled.numpy() + 0.5) / scale, mean_sample, atol=1e-3)
    assert np.abs(moved - regular).max() > 0.5  # the offsets are not zero
    np.testing.assert_allclose(regular[0, 0, 0], [30, 28, 30 + 32 / 3, 28 + 24 / 3], atol=1e-5)
    with pytest.raises(ValueError, match="boxes"):
        viz_detection.part_bins(layer, features, boxes[0])


# ------------------------------------------------------------------------------------------------
# COCO evaluation
# ------------------------------------------------------------------------------------------------
def _ap(gt_boxes, gt_classes, boxes, scores, classes):
    return coco_evaluation.coco_box_ap(np.asarray(gt_boxes, np.float32), np.asarray(gt_classes),
                                       np.asarray(boxes, np.float32), np.asarray(scores),
                                       np.asarray(classes), ("a", "b"))


def test_coco_ap_exact_values():
    gt = [[[10, 10, 20, 20], [30, 30, 50, 40]], [[0, 0, 8, 8], [-1, -1, -1, -1]]]
    gt_classes = [[1, 2], [1, -1]]
    perfect = _ap(gt, gt_classes, gt, [[0.9, 0.8], [0.7, 0.0]], gt_classes)
    assert perfect == {"AP": 1.0, "AP50": 1.0, "AP70": 1.0, "AP75": 1.0}
    # Every box moved by 1/5 of its width: IoU = 0.8 / 1.2 = 0.667, a hit at 0.50-0.65 only.
    moved = [[[12, 10, 22, 20], [34, 30, 54, 40]], [[1.6, 0, 9.6, 8], [-1, -1, -1, -1]]]
    got = _ap(gt, gt_classes, moved, [[0.9, 0.8], [0.7, 0.0]], gt_classes)
    assert got["AP50"] == 1.0 and got["AP70"] == 0.0 and got["AP75"] == 0.0
    assert got["AP"] == pytest.approx(0.4)  # 4 of the 10 thresholds 0.50, 0.55, ..., 0.95
    wrong_class = _ap(gt, gt_classes, gt, [[0.9, 0.8], [0.7, 0.0]], [[2, 1], [2, -1]])
    assert wrong_class["AP50"] == 0.0
    nothing = _ap(gt, gt_classes, gt, [[0.0, 0.0], [0.0, 0.0]], [[-1, -1], [-1, -1]])
    assert nothing == {"AP": 0.0, "AP50": 0.0, "AP70": 0.0, "AP75": 0.0}


# ------------------------------------------------------------------------------------------------
# The detector
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data():
    return detection_data.make_detection_dataset(10, seed=5, size=48, objects=(1, 3),
                                                 diameters=(10.0, 30.0))


@pytest.mark.parametrize("deformable_pooling,deformable_conv", [(False, False), (True, True)])
def test_detector_trains_with_fit_and_detects(small_data, deformable_pooling, deformable_conv):
    images, boxes, classes = small_data
    config = dataclasses.replace(SMALL, deformable_pooling=deformable_pooling,
                                 deformable_conv=deformable_conv)
    model = RFCN(config, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    # 10 images in batches of 4: the last batch has 2 (fit slices images and targets alike).
    history = model.fit(images, {"boxes": boxes, "classes": classes}, batch_size=4, epochs=6,
                        shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert set(history.history) == {"loss", "rpn_cls", "rpn_box", "cls", "box"}
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    evaluated = model.evaluate(images, {"boxes": boxes, "classes": classes}, batch_size=4,
                               verbose=0, return_dict=True)
    assert np.isfinite(evaluated["loss"])
    found = model.predict(images, batch_size=4, verbose=0)
    assert found["boxes"].shape == (10, 10, 4) and found["classes"].shape == (10, 10)
    count = found["num_detections"]
    for n in range(10):
        kept = np.arange(10) < count[n]
        assert set(np.unique(found["classes"][n][kept])) <= {1, 2, 3}
        assert np.all(found["classes"][n][~kept] == -1) and np.all(found["boxes"][n][~kept] == -1)
        assert np.all(found["boxes"][n][kept] >= 0) and np.all(found["boxes"][n][kept] <= 48)
        assert np.all(np.diff(found["scores"][n][kept]) <= 0)
    names = {type(layer).__name__ for layer in model._flatten_layers()}
    assert ("DeformableConv2D" in names) == deformable_conv
    assert ("PSRoIPooling" in names) != deformable_pooling


def test_detector_config_round_trip(small_data):
    images = small_data[0][:2]
    model = RFCN(SMALL, seed=2)
    expected = model(images)
    again = RFCN.from_config(model.get_config())
    again(images)
    again.set_weights(model.get_weights())
    assert again.config == model.config
    for key in expected:
        np.testing.assert_array_equal(again(images)[key], expected[key])


def test_padding_proposals_give_no_detections(small_data, monkeypatch):
    model = RFCN(SMALL, seed=3)
    monkeypatch.setattr(model, "_propose",
                        lambda logits, deltas, count: -tf.ones([tf.shape(logits)[0], count, 4]))
    found = model(small_data[0][:3])
    np.testing.assert_array_equal(found["num_detections"], [0, 0, 0])
    np.testing.assert_array_equal(found["classes"], -1)


def test_detector_input_errors(small_data):
    images, boxes, classes = small_data
    model = RFCN(SMALL, seed=4)
    with pytest.raises(ValueError):
        model(np.zeros((1, 40, 40, 3), np.float32))
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="targets"):
        model.fit(images, {"boxes": boxes}, batch_size=5, epochs=1, verbose=0)
