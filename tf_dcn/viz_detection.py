"""Pictures of detections and of the parts a deformable PS-RoI pooling moved.

- :func:`part_bins`: where each ``k x k`` bin of a :class:`~tf_dcn.layers.DeformablePSRoIPooling`
  lies for given RoIs, without and with the learned offsets, in image pixels.
- :func:`plot_detections`: images with boxes, classes and scores, one column per detector.
- :func:`plot_part_offsets`: RoIs with their regular bins (dashed) and the bins moved by the
  learned offsets (the figure of offset parts of Dai et al., 2017).

Box coordinates are continuous image pixels ``(x1, y1, x2, y2)``: pixel ``(row i, column j)``
covers ``[j, j+1) x [i, i+1)``. (:mod:`tf_dcn.viz` uses pixel *centres*; the plots here convert.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_dcn.viz import _PALETTE, _figure

__all__ = ["part_bins", "plot_detections", "plot_part_offsets"]


def _c_round(values: np.ndarray) -> np.ndarray:
    """C's ``round``: halves away from zero (the op rounds box corners so)."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def part_bins(layer: Any, offset_features: Any, boxes: Any) -> tuple[np.ndarray, np.ndarray]:
    """The bins a deformable PS-RoI pooling layer pools for ``boxes``, before and after its
    learned offsets, in image pixels.

    The geometry is the op's (docs/semantics.md, sections 2.2-2.3): corners rounded, ``x2`` and
    ``y2`` inclusive; bin ``(ph, pw)`` of a RoI of size ``W x H`` starts at
    ``(x1 + pw*W/k, y1 + ph*H/k)`` and moves by ``offset * trans_std * (W, H)``.

    Args:
        layer: a built :class:`~tf_dcn.layers.DeformablePSRoIPooling` with ``class_aware_offsets
            =False`` (one offset field).
        offset_features: ``[1, H, W, Cf]`` what the layer's offset branch reads for one image
            (its score maps, or the ``offset_features`` input it was called with).
        boxes: ``[R, 4]`` xyxy boxes in image pixels of that image.

    Returns:
        ``(regular, moved)``, each ``[R, k, k, 4]`` xyxy image pixels of bin ``(ph, pw)``.
    """
    if getattr(layer, "class_aware_offsets", True):
        raise ValueError("layer: expected a DeformablePSRoIPooling with class_aware_offsets=False")
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected [R, 4], got shape {boxes.shape}")
    rois = np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], axis=1)
    offsets = layer.predict_offsets(tf.convert_to_tensor(offset_features), tf.constant(rois))
    offsets = np.asarray(offsets, np.float64)  # [R, part, part, 2], x before y
    k, part = layer.pooled_size, layer.part_size
    x1, y1 = _c_round(boxes[:, 0]), _c_round(boxes[:, 1])
    scale = layer.spatial_scale
    width = np.maximum(_c_round(boxes[:, 2]) + 1 - x1, 0.1 / scale)
    height = np.maximum(_c_round(boxes[:, 3]) + 1 - y1, 0.1 / scale)
    index = np.arange(k)
    x0 = x1[:, None, None] + index[None, None, :] * (width / k)[:, None, None]
    y0 = y1[:, None, None] + index[None, :, None] * (height / k)[:, None, None]
    x0, y0 = np.broadcast_to(x0, (len(boxes), k, k)), np.broadcast_to(y0, (len(boxes), k, k))
    regular = np.stack([x0, y0, x0 + (width / k)[:, None, None],
                        y0 + (height / k)[:, None, None]], axis=-1)
    cells = index * part // k
    shift = offsets[:, cells][:, :, cells] * layer.trans_std       # [R, k, k, 2]
    move = np.stack([shift[..., 0] * width[:, None, None], shift[..., 1] * height[:, None, None]],
                    axis=-1)
    moved = regular + np.concatenate([move, move], axis=-1)
    return regular, moved


def _rectangle(ax, box, **style) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, **style))


def plot_detections(images: Any, columns: Mapping[str, tuple[Any, Any, Any]], path: str,
                    class_names: Sequence[str], min_score: float = 0.5, dpi: int = 90) -> str:
    """Saves one row per image and one column per detector (e.g. ground truth, plain,
    deformable): boxes coloured by class, labelled with the class and score.

    Args:
        images: ``[R, H, W, 3]`` floats in ``[0, 1]``.
        columns: ``{title: (boxes [R, D, 4], scores [R, D] or None, classes [R, D])}``, classes
            1-based, -1 or 0 for no box; ``scores=None`` for ground truth (always drawn).
        path: the PNG file to write.
        class_names: names of classes ``1..C``.
        min_score: detections with lower scores are not drawn.
        dpi: resolution of the PNG.

    Returns:
        ``path``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected [R, H, W, 3], got shape {images.shape}")
    rows = len(images)
    for title, (boxes, scores, classes) in columns.items():
        if np.shape(boxes)[:1] != (rows,) or np.shape(classes)[:1] != (rows,):
            raise ValueError(f"columns: {title!r} must hold {rows} images' boxes and classes")
    fig = _figure(2.0 * len(columns), 2.0 * rows + 0.2)
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for c, (title, (boxes, scores, classes)) in enumerate(columns.items()):
        for r in range(rows):
            ax = axes[r, c]
            ax.imshow(images[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for d in range(len(classes[r])):
                label = int(classes[r][d])
                score = None if scores is None else float(scores[r][d])
                if label <= 0 or (score is not None and score < min_score):
                    continue
                colour = _PALETTE[label % len(_PALETTE)]
                _rectangle(ax, boxes[r][d], lw=1.2, ec=colour)
                text = class_names[label - 1] + ("" if score is None else f" {score:.2f}")
                ax.text(boxes[r][d][0] - 0.5, boxes[r][d][1] - 1.0, text, fontsize=6.5,
                        color="white", va="bottom",
                        bbox=dict(facecolor=colour, alpha=0.75, pad=0.6, lw=0))
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=dpi)
    return path


def plot_part_offsets(images: Any, boxes: Any, regular: Any, moved: Any, path: str,
                      titles: Sequence[str] | None = None, caption: str | None = None,
                      margin: float | None = 0.3, panel_inches: float = 2.4,
                      dpi: int = 80) -> str:
    """Saves one panel per RoI (four per row): its image, the RoI (white), its regular ``k x k``
    bins (dashed) and the bins moved by the learned offsets (coloured by part, with an arrow
    from each regular bin's centre to its moved centre).

    Args:
        images: ``[R, H, W, 3]``: the image of each RoI.
        boxes: ``[R, 4]`` the RoIs (xyxy pixels).
        regular, moved: ``[R, k, k, 4]`` the bins, from :func:`part_bins`.
        path: the PNG file to write.
        titles: optional ``R`` panel titles.
        caption: optional text under the panels.
        margin: each panel shows its RoI and this fraction of the RoI's size around it (at
            least 16 pixels); ``None`` shows the whole image.
        panel_inches: size of one panel; ``dpi``: resolution of the PNG.

    Returns:
        ``path``.
    """
    images, boxes = np.asarray(images), np.asarray(boxes)
    regular, moved = np.asarray(regular), np.asarray(moved)
    count = len(images)
    if boxes.shape != (count, 4):
        raise ValueError(f"boxes: expected [{count}, 4], got shape {boxes.shape}")
    if regular.shape != moved.shape or regular.ndim != 4 or regular.shape[0] != count:
        raise ValueError(f"regular, moved: expected two [{count}, k, k, 4] arrays, got "
                         f"{regular.shape} and {moved.shape}")
    if titles is not None and len(titles) != count:
        raise ValueError(f"titles: expected {count} titles, got {len(titles)}")
    k = regular.shape[1]
    cols = min(count, 4)
    rows = -(-count // cols)
    extra = 0.35 if caption else 0.0
    fig = _figure(panel_inches * cols, panel_inches * rows + extra)
    axes = fig.subplots(rows, cols, squeeze=False)
    height, width = images.shape[1:3]
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.set_axis_off()
            continue
        ax.imshow(images[i], interpolation="nearest")
        _rectangle(ax, boxes[i], lw=1.0, ec="white")
        for ph in range(k):
            for pw in range(k):
                colour = _PALETTE[1 + (ph * k + pw) % (len(_PALETTE) - 1)]
                _rectangle(ax, regular[i, ph, pw], lw=0.5, ec="white", ls="--", alpha=0.7)
                _rectangle(ax, moved[i, ph, pw], lw=1.2, ec=colour)
                start = (regular[i, ph, pw, :2] + regular[i, ph, pw, 2:]) / 2 - 0.5
                end = (moved[i, ph, pw, :2] + moved[i, ph, pw, 2:]) / 2 - 0.5
                ax.annotate("", xy=end, xytext=start,
                            arrowprops=dict(arrowstyle="->", color=colour, lw=1.0))
        x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
        if margin is not None:  # a square window around the RoI and its moved parts
            corners = np.concatenate([boxes[i][None], moved[i].reshape(-1, 4)])
            lo, hi = corners[:, :2].min(axis=0), corners[:, 2:].max(axis=0)
            half = min(max(float((hi - lo).max()) * (0.5 + margin), 16.0),
                       max(width, height) / 2)
            # centred on the RoI, moved inside the image where the image is large enough
            cx = width / 2 if 2 * half >= width else float(
                np.clip((lo[0] + hi[0]) / 2, half, width - half))
            cy = height / 2 if 2 * half >= height else float(
                np.clip((lo[1] + hi[1]) / 2, half, height - half))
            x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        ax.set_xlim(x0 - 0.5, x1 - 0.5)
        ax.set_ylim(y1 - 0.5, y0 - 0.5)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7)
    fig.tight_layout(pad=0.4, h_pad=1.6,
                     rect=(0, extra / (panel_inches * rows + extra), 1, 0.97))
    fig.savefig(path, dpi=dpi)
    return path
