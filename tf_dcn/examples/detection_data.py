"""Generated detection data: the segmentation demo's shapes, with a box and a class per object."""

from __future__ import annotations

import numpy as np

from tf_dcn.demo import CLASSES, make_dataset
from tf_dcn.layers._boxes import PADDING_VALUE as PADDING  # four of it make a padding box

#: Object classes of the detection data (class id = index + 1; 0 is the background).
OBJECT_CLASSES = CLASSES[1:]


def boxes_from_masks(labels: np.ndarray, extent: np.ndarray, max_objects: int,
                     min_pixels: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """One box per object of :func:`tf_dcn.demo.make_dataset`'s images.

    Every object has its own random (continuous) diameter, so the pixels of one object are the
    pixels with one value of ``extent``. An object's box is the extent of its *visible* pixels
    (later objects may cover part of it), in continuous pixel coordinates: a pixel ``(i, j)``
    covers ``[j, j+1) x [i, i+1)``, so a box is ``(x_min, y_min, x_max + 1, y_max + 1)``.

    Args:
        labels: ``[N, H, W]`` class of every pixel (0 background).
        extent: ``[N, H, W]`` diameter of the object owning every pixel (0 background).
        max_objects: boxes per image in the output (padding after the objects).
        min_pixels: objects with fewer visible pixels are left out.

    Returns:
        ``boxes`` float32 ``[N, max_objects, 4]`` as ``(x1, y1, x2, y2)`` in pixels, padded with
        boxes of four -1; ``classes`` int32 ``[N, max_objects]`` (1..3, padding -1).
    """
    count = len(labels)
    boxes = np.full((count, max_objects, 4), PADDING, np.float32)
    classes = np.full((count, max_objects), int(PADDING), np.int32)
    for n in range(count):
        found = 0
        for diameter in np.unique(extent[n][extent[n] > 0])[::-1]:  # the largest first
            ys, xs = np.nonzero(extent[n] == diameter)
            if len(ys) < min_pixels:
                continue
            if found == max_objects:
                raise ValueError(f"image {n} has more than max_objects={max_objects} objects")
            boxes[n, found] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            classes[n, found] = np.bincount(labels[n][ys, xs]).argmax()
            found += 1
    return boxes, classes


def make_detection_dataset(count: int, seed: int, size: int = 96,
                           objects: tuple[int, int] = (2, 5),
                           diameters: tuple[float, float] = (10.0, 64.0)
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of 2-5 disks, triangles and crosses (rotated, sheared, stretched, 10-64 px across,
    on textured backgrounds) with their boxes.

    Returns:
        ``images`` float32 ``[N, size, size, 3]`` in ``[0, 1]``, ``boxes`` float32
        ``[N, objects[1], 4]`` xyxy pixels padded with -1, ``classes`` int32 ``[N, objects[1]]``
        (1 disk, 2 triangle, 3 cross; padding -1).
    """
    images, labels, extent = make_dataset(count, seed, size, objects=objects,
                                          diameters=diameters)
    boxes, classes = boxes_from_masks(labels, extent, objects[1])
    return images, boxes, classes
