"""``python -m tf_dcn.examples.rfcn``: train a small R-FCN detector with plain and with deformable
PS-RoI pooling, and compare them with COCO-style AP (about seven minutes on a 2-core CPU).

1. Generated detection data (no download; fixed seeds): 96x96 images of 2-5 disks, triangles
   and crosses 10-64 pixels across (6x), rotated, sheared and stretched, on textured
   backgrounds, with one box per object.
2. Two detectors (:class:`tf_dcn.examples.rfcn_model.RFCN`: backbone at stride 8, RPN with 9
   anchors per cell and ``tf.image`` NMS, 3x3 position-sensitive score and box maps, voting)
   trained with ``model.fit`` and the same seed, data and schedule: with plain PS-RoI pooling and
   with deformable PS-RoI pooling (``tf_dcn.layers.DeformablePSRoIPooling``). ``--dcn`` trains a
   third with ``DeformableConv2D`` (v2) in the backbone's last two 3x3 convolutions too.
3. Evaluation of held-out images with pycocotools' ``COCOeval``: AP@0.5, AP@0.7, AP@0.75 and
   AP@[.5:.95] side by side, and which variant won and by how much.
4. ``<out>/detections.png`` (ground truth and both detectors) and ``<out>/part_offsets.png``
   (the 3x3 parts of the deformable PS-RoI pooling, moved by the learned offsets).
5. The deformable detector (image in, boxes/scores/classes out) exported as a SavedModel
   (``model.export``), with ``tf_dcn.export_portable`` (no custom op) and, when the ``[onnx]``
   extra is installed, with ``tf_dcn.export_onnx``; each reloaded (``tf.saved_model.load``,
   onnxruntime) and compared with the in-memory model.

``--quick`` runs the same path on a tiny budget (under a minute); ``--out DIR`` chooses the output
folder (default ``rfcn_out``). Needs pycocotools and matplotlib (``pip install
'tf-dcn[detection]'``).
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
from tf_dcn import viz_detection
from tf_dcn.demo import fit_timed
from tf_dcn.examples.coco_evaluation import coco_box_ap
from tf_dcn.examples.detection_data import OBJECT_CLASSES, make_detection_dataset
from tf_dcn.examples.rfcn_model import RFCN, DetectorConfig

METRICS = ("AP50", "AP70", "AP75", "AP")
METRIC_TITLES = {"AP50": "AP@0.5", "AP70": "AP@0.7", "AP75": "AP@0.75", "AP": "AP@[.5:.95]"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one run."""

    train: int
    test: int
    epochs: int
    batch: int = 16
    learning_rate: float = 2e-3


FULL = Budget(train=1600, test=400, epochs=10)
QUICK = Budget(train=64, test=32, epochs=1)

VARIANTS = {
    "plain": ("plain PS-RoI pooling", DetectorConfig(deformable_pooling=False)),
    "deformable": ("deformable PS-RoI pooling", DetectorConfig(deformable_pooling=True)),
    "deformable+dcn": ("deformable PS-RoI + DCN in res5",
                       DetectorConfig(deformable_pooling=True, deformable_conv=True)),
}


def train(model: RFCN, images: np.ndarray, targets: dict[str, np.ndarray], budget: Budget,
          verbose: int) -> float:
    """Trains ``model`` with ``model.fit``; returns the median seconds per training step."""
    steps = budget.epochs * -(-len(images) // budget.batch)
    schedule = keras.optimizers.schedules.CosineDecay(budget.learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  jit_compile=False)
    return fit_timed(model, images, targets, budget.batch, budget.epochs, verbose)


def detect(model: keras.Model, images: np.ndarray, batch_size: int = 100) -> dict[str, np.ndarray]:
    """The detections of ``model`` (inference mode), batch by batch, as NumPy arrays."""
    chunks = [model(images[i:i + batch_size], training=False)
              for i in range(0, len(images), batch_size)]
    return {key: np.concatenate([np.asarray(c[key]) for c in chunks]) for key in chunks[0]}


def verdict(results: dict[str, dict[str, float]], first: str, second: str, metric: str) -> str:
    """One sentence: which of two variants has the higher ``metric``, by how many points."""
    a, b = results[first][metric], results[second][metric]
    title = METRIC_TITLES[metric]
    if abs(a - b) < 0.0005:
        return f"{title}: {first} and {second} are equal ({100 * a:.1f})."
    winner, loser = (first, second) if a > b else (second, first)
    return (f"{title}: {winner} wins by {100 * abs(a - b):.1f} points "
            f"({100 * max(a, b):.1f} vs {100 * min(a, b):.1f} for {loser}).")


def draw_parts(model: RFCN, images: np.ndarray, detections: dict[str, np.ndarray], path: str,
               count: int = 8) -> str:
    """``part_offsets.png``: the classification pooling's parts for the best detection of
    ``count`` images: those whose best detections score highest, taken in turn from each class;
    ``""`` when nothing was detected."""
    ranked = sorted(((float(detections["scores"][n, 0]), n) for n in range(len(images))
                     if detections["num_detections"][n]), reverse=True)
    per_class = [[n for _, n in ranked if detections["classes"][n, 0] == c]
                 for c in range(1, len(OBJECT_CLASSES) + 1)]
    chosen = []
    while len(chosen) < count and any(per_class):
        for queue in per_class:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    if not chosen:
        return ""
    regular, moved = [], []
    for n in chosen:
        head = model.head_conv(model.backbone(images[n:n + 1], training=False))
        r, m = viz_detection.part_bins(model.cls_pool, head, detections["boxes"][n, :1])
        regular.append(r[0])
        moved.append(m[0])
    return viz_detection.plot_part_offsets(
        images[chosen], detections["boxes"][chosen, 0], np.stack(regular), np.stack(moved), path,
        titles=[f"{OBJECT_CLASSES[detections['classes'][n, 0] - 1]} "
                f"{detections['scores'][n, 0]:.2f}" for n in chosen],
        caption="white: detected box; dashed: the 3x3 regular parts; coloured: the parts moved "
                "by the learned offsets (classification score maps)")


def _difference(served: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                image_size: int) -> float:
    """Largest |difference| of scores and of boxes relative to the image size; infinite when
    the classes or the counts differ."""
    same = all(np.array_equal(np.asarray(served[key]).astype(np.int64), expected[key])
               for key in ("classes", "num_detections"))
    if not same:
        return float("inf")
    return max(float(np.max(np.abs(served["boxes"] - expected["boxes"]))) / image_size,
               float(np.max(np.abs(served["scores"] - expected["scores"]))))


def export_and_compare(model: RFCN, images: np.ndarray, out_dir: str) -> dict[str, float]:
    """Exports ``model`` as a SavedModel, with ``export_portable`` and (when onnx, onnxruntime
    and tf2onnx are installed) with ``export_onnx``; reloads each (tf.saved_model.load,
    onnxruntime) and returns, per export, the largest difference from the in-memory model
    (:func:`_difference`)."""
    size = model.config.image_size
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    expected = {key: value.astype(np.int64) if key in ("classes", "num_detections") else value
                for key, value in detect(model, images).items()}
    paths = {"SavedModel": os.path.join(out_dir, "rfcn_savedmodel"),
             "export_portable": os.path.join(out_dir, "rfcn_portable")}
    model.export(paths["SavedModel"], input_signature=signature, verbose=False)
    tf_dcn.export_portable(model, paths["export_portable"], input_signature=signature)
    differences = {}
    for name, path in paths.items():
        loaded = tf.saved_model.load(path)  # kept: its functions need its variables alive
        differences[name] = _difference(
            {key: np.asarray(value) for key, value in loaded.serve(tf.constant(images)).items()},
            expected, size)
    try:
        import onnxruntime
        import tf2onnx  # noqa: F401
    except ImportError:
        print("  (onnx, onnxruntime or tf2onnx not installed: no ONNX export)")
        return differences
    path = os.path.join(out_dir, "rfcn.onnx")
    tf_dcn.export_onnx(model, path, input_signature=signature)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images})
    differences["ONNX (onnxruntime)"] = _difference(
        dict(zip([o.name for o in session.get_outputs()], outputs)), expected, size)
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_dcn.examples.rfcn",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny budget (under a minute)")
    parser.add_argument("--dcn", action="store_true",
                        help="also train a variant with deformable convolutions in res5")
    parser.add_argument("--out", default="rfcn_out", help="output folder (default rfcn_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    os.makedirs(args.out, exist_ok=True)
    verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    size = DetectorConfig().image_size

    print(f"== 1. Data: {budget.train} training and {budget.test} held-out {size}x{size} images; "
          f"{', '.join(OBJECT_CLASSES)} of 10-64 px, rotated, sheared, stretched, on textures")
    train_images, train_boxes, train_classes = make_detection_dataset(budget.train, args.seed)
    test_images, test_boxes, test_classes = make_detection_dataset(budget.test, args.seed + 1)
    valid = test_classes > 0
    sides = np.sqrt((test_boxes[..., 2] - test_boxes[..., 0])
                    * (test_boxes[..., 3] - test_boxes[..., 1]))[valid]
    print(f"  held-out: {int(valid.sum())} objects, {valid.sum() / len(valid):.1f} per image, "
          f"box sqrt(area) {sides.min():.0f}-{sides.max():.0f} px (median {np.median(sides):.0f})")
    targets = {"boxes": train_boxes, "classes": train_classes}

    names = ["plain", "deformable"] + (["deformable+dcn"] if args.dcn else [])
    results, detections, models = {}, {}, {}
    for name in names:
        title, config = VARIANTS[name]
        print(f"\n== 2. Training the detector with {title} ({budget.epochs} epochs, batch "
              f"{budget.batch}, model.fit)")
        model = RFCN(config, seed=args.seed, name=name.replace("+", "_"))
        model(train_images[:1])  # builds the weights, so that the parameter count is known
        tic = time.perf_counter()
        step = train(model, train_images, targets, budget, verbose)
        seconds = time.perf_counter() - tic
        detections[name] = detect(model, test_images)
        found = detections[name]
        results[name] = dict(coco_box_ap(test_boxes, test_classes, found["boxes"],
                                         found["scores"], found["classes"], OBJECT_CLASSES),
                             params=model.count_params(), step=step, seconds=seconds)
        models[name] = model

    print(f"\n== 3. COCO-style box AP on {budget.test} held-out images (pycocotools COCOeval, "
          "area all, 100 detections per image), in %")
    header = (f"{'detector':<34}" + "".join(f"{METRIC_TITLES[m]:>13}" for m in METRICS)
              + f"{'params':>9}{'ms/step':>9}{'train s':>9}")
    print(header)
    print("-" * len(header))
    for name in names:
        r = results[name]
        print(f"{VARIANTS[name][0]:<34}" + "".join(f"{100 * r[m]:>13.1f}" for m in METRICS)
              + f"{r['params']:>9,}{1000 * r['step']:>9.0f}{r['seconds']:>9.0f}")
    print(f"(ms/step: median wall time of one training step of {budget.batch} images; train s: "
          "the whole fit, first-step tracing included)")
    for metric in METRICS:
        print(verdict(results, "deformable", "plain", metric))
    if args.dcn:
        print(verdict(results, "deformable+dcn", "deformable", "AP"))

    print("\n== 4. Pictures")
    rows = min(4, budget.test)
    columns = {"ground truth": (test_boxes[:rows], None, test_classes[:rows])}
    for name in names:
        found = detections[name]
        columns[VARIANTS[name][0]] = (found["boxes"][:rows], found["scores"][:rows],
                                      found["classes"][:rows])
    paths = [viz_detection.plot_detections(test_images[:rows], columns,
                                           os.path.join(args.out, "detections.png"),
                                           OBJECT_CLASSES)]
    parts = draw_parts(models["deformable"], test_images, detections["deformable"],
                       os.path.join(args.out, "part_offsets.png"))
    if parts:
        paths.append(parts)
    else:
        print("  nothing detected: part_offsets.png not drawn")
    print(f"wrote {', '.join(paths)} (detections.png: scores >= 0.5)")

    print("\n== 5. Export of the deformable detector (image in, boxes/scores/classes out)")
    differences = export_and_compare(models["deformable"], test_images[:16], args.out)
    for name, difference in differences.items():
        loader = "onnxruntime" if name.startswith("ONNX") else "tf.saved_model.load"
        print(f"  {name}: reloaded with {loader}, max |difference| of scores and of boxes / "
              f"image size = {difference:.2e} ({'match' if difference <= 1e-5 else 'MISMATCH'})")
    print(f"\nTotal time {time.perf_counter() - started:.0f} s")
    return 0 if all(d <= 1e-5 for d in differences.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
