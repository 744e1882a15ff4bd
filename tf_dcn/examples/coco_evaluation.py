"""COCO-style box AP of detections with pycocotools (``pip install tf-dcn[detection]``)."""

from __future__ import annotations

import contextlib
import io

import numpy as np

#: IoU thresholds of COCOeval's default evaluation (0.50:0.05:0.95).
COCO_IOUS = np.linspace(0.5, 0.95, 10)


def _import_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:  # pragma: no cover - the extra is in requirements.txt
        raise ImportError("the detection example evaluates with pycocotools: "
                          "pip install 'tf-dcn[detection]' (or pip install pycocotools)") from error
    return COCO, COCOeval


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_box_ap(gt_boxes: np.ndarray, gt_classes: np.ndarray, boxes: np.ndarray,
                scores: np.ndarray, classes: np.ndarray, class_names: tuple[str, ...]
                ) -> dict[str, float]:
    """Box AP of detections against ground truth, computed by pycocotools' ``COCOeval``.

    Args:
        gt_boxes: ``[N, G, 4]`` xyxy pixels; padding boxes have class -1.
        gt_classes: ``[N, G]`` 1-based classes, -1 for padding.
        boxes: ``[N, D, 4]`` detected xyxy boxes.
        scores: ``[N, D]`` their scores.
        classes: ``[N, D]`` 1-based classes, -1 after the last detection of an image.
        class_names: the names of classes ``1..len(class_names)``.

    Returns:
        ``{"AP": AP@[.5:.95], "AP50": AP@0.5, "AP70": AP@0.7, "AP75": AP@0.75}`` in ``[0, 1]``
        (area "all", at most 100 detections per image). AP@0.7 is read from the same
        ``COCOeval`` precision table as the others, at its IoU threshold 0.7.
    """
    COCO, COCOeval = _import_pycocotools()
    images, annotations, results = [], [], []
    for n in range(len(gt_boxes)):
        images.append({"id": n + 1, "width": 0, "height": 0})
        for box, label in zip(gt_boxes[n], gt_classes[n]):
            if label <= 0:
                continue
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1,
                                "category_id": int(label), "bbox": xywh,
                                "area": xywh[2] * xywh[3], "iscrowd": 0})
        for box, score, label in zip(boxes[n], scores[n], classes[n]):
            if label > 0:
                results.append({"image_id": n + 1, "category_id": int(label),
                                "bbox": _xywh(box), "score": float(score)})
    ground_truth = COCO()
    ground_truth.dataset = {"images": images, "annotations": annotations, "categories": [
        {"id": i + 1, "name": name} for i, name in enumerate(class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP70": 0.0, "AP75": 0.0}
        detections = ground_truth.loadRes(results)
        evaluation = COCOeval(ground_truth, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision [iou, recall, class, area, max detections]; area 0 = "all", max dets 100 = last
    precision = evaluation.eval["precision"][:, :, :, 0, -1]

    def at(iou: float) -> float:
        row = precision[int(np.argmin(np.abs(evaluation.params.iouThrs - iou)))]
        return float(row[row > -1].mean()) if (row > -1).any() else 0.0

    return {"AP": float(evaluation.stats[0]), "AP50": at(0.5), "AP70": at(0.7),
            "AP75": at(0.75)}
