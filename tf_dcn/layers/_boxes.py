"""Dense per-image boxes ``[N, K, 4]`` for the RoI pooling layers (Keras' way of feeding boxes).

Keras detection code (``keras.utils.bounding_boxes``, keras-hub) passes boxes per image as a
dense ``[N, K, 4]`` tensor in a named ``bounding_box_format`` and pads images with fewer boxes.
The pooling ops take ``rois [R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image
pixels instead; this module converts between the two.

Formats (the names of ``keras.utils.bounding_boxes``), each row of 4 values:
    ``"xyxy"``         left, top, right, bottom
    ``"yxyx"``         top, left, bottom, right
    ``"xywh"``         left, top, width, height
    ``"center_xywh"``  center x, center y, width, height
    ``"center_yxhw"``  center y, center x, height, width
and their relative forms ``"rel_xyxy"``, ``"rel_yxyx"``, ``"rel_xywh"``, ``"rel_center_xywh"``,
``"rel_center_yxhw"``: fractions of the image width (x values) and height (y values).

Padding: a box whose four values are all -1 (keras-hub's padding value) is padding. Its pooled
output is zero and passes no gradient.
"""

from __future__ import annotations

import tensorflow as tf

ABSOLUTE_FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw")
BOX_FORMATS = ABSOLUTE_FORMATS + tuple("rel_" + name for name in ABSOLUTE_FORMATS)
PADDING_VALUE = -1.0


def check_box_format(bounding_box_format: str) -> str:
    """The format name in lower case; ValueError naming the argument for an unknown one."""
    if not isinstance(bounding_box_format, str) or bounding_box_format.lower() not in BOX_FORMATS:
        raise ValueError(
            f"bounding_box_format must be one of {', '.join(BOX_FORMATS)}; got "
            f"bounding_box_format={bounding_box_format!r}")
    return bounding_box_format.lower()


def to_xyxy(boxes: tf.Tensor, bounding_box_format: str, image_height, image_width) -> tf.Tensor:
    """``boxes [..., 4]`` in ``bounding_box_format`` as ``(x1, y1, x2, y2)`` in image pixels.

    ``image_height`` and ``image_width`` (scalars) scale the relative formats.
    """
    name = check_box_format(bounding_box_format)
    a, b, c, d = tf.unstack(boxes, 4, axis=-1)
    relative = name.startswith("rel_")
    name = name[4:] if relative else name
    if name == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    elif name == "yxyx":
        y1, x1, y2, x2 = a, b, c, d
    elif name == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif name == "center_xywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:  # center_yxhw
        x1, y1, x2, y2 = b - d / 2, a - c / 2, b + d / 2, a + c / 2
    if relative:
        w = tf.cast(image_width, boxes.dtype)
        h = tf.cast(image_height, boxes.dtype)
        x1, y1, x2, y2 = x1 * w, y1 * h, x2 * w, y2 * h
    return tf.stack([x1, y1, x2, y2], axis=-1)


def is_padding(boxes: tf.Tensor) -> tf.Tensor:
    """``[N, K]`` bool: True where all four values of a box are -1."""
    return tf.reduce_all(tf.equal(boxes, PADDING_VALUE), axis=-1)


def boxes_to_rois(boxes: tf.Tensor, bounding_box_format: str, image_height,
                  image_width) -> tuple[tf.Tensor, tf.Tensor]:
    """``boxes [N, K, 4]`` as ``rois [N*K, 5]`` (image n's boxes at rows n*K..n*K+K-1, batch
    index n) and the padding mask ``[N*K]`` (True for padding). Padding boxes become the box
    (0, 0, 0, 0) so that they never produce non-finite or far samples."""
    boxes = tf.convert_to_tensor(boxes)
    if boxes.dtype not in (tf.float32, tf.float64):
        boxes = tf.cast(boxes, tf.float32)
    shape = tf.shape(boxes, out_type=tf.int64)
    n, k = shape[0], shape[1]
    padding = tf.reshape(is_padding(boxes), [-1])
    xyxy = tf.reshape(to_xyxy(boxes, bounding_box_format, image_height, image_width), [-1, 4])
    xyxy = tf.where(padding[:, None], tf.zeros_like(xyxy), xyxy)
    batch_index = tf.cast(tf.repeat(tf.range(n), k), boxes.dtype)
    return tf.concat([batch_index[:, None], xyxy], axis=1), padding


def pooled_per_image(pooled: tf.Tensor, padding: tf.Tensor, batch, boxes_per_image) -> tf.Tensor:
    """``pooled [N*K, P, P, C]`` as ``[N, K, P, P, C]`` with padding boxes set to zero (no
    gradient flows to them)."""
    keep = tf.reshape(tf.logical_not(padding), [-1, 1, 1, 1])
    pooled = tf.where(keep, pooled, tf.zeros_like(pooled))
    tail = tf.shape(pooled)[1:]
    return tf.reshape(pooled, tf.concat([[batch, boxes_per_image], tail], axis=0))
