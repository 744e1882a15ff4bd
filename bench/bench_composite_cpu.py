"""CPU benchmark: the portable composite implementation versus the custom ops (2 intra-op threads).

For deform_conv2d, v1 and v2, 3x3, padding 1, offsets U(-2, 2), on the NHWC shapes
(N, Cin, H, W, Cout):

    S1 (8, 64, 56, 56, 64)   S2 (4, 256, 28, 28, 256)   S3 (2, 512, 14, 14, 512)
    S4 (1, 32, 128, 128, 32)

and for two pooling heads, 300 random proposals of a 600 x 800 image (stride 16):

    rfcn   deformable PS-RoI pooling of [1, 38, 50, 7*7*21], output_dim=21, group_size=7,
           sample_per_part=4, with offsets [300, 7, 7, 2]
    frcnn  deformable RoI pooling of [1, 38, 50, 256], pooled_size=7, with offsets [300, 7, 7, 2]

it times the forward pass and forward+backward (gradients of every differentiable input) of the
op, the composite in a tf.function, and the composite under XLA (tf.function(jit_compile=True)),
and prints the composite/op time ratios. Each figure is the median of ``--repeats`` runs after
two warm-up runs (bench/_timing.py); XLA compilation happens during warm-up. Other processes on
the machine inflate and scatter the figures: compare ratios from one run.

    .venv/bin/python bench/bench_composite_cpu.py [--repeats 5] [--shapes S1,S3] [--heads rfcn]
    .venv/bin/python bench/bench_composite_cpu.py --repeats 1 --shapes S3 --heads ""   # quick
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _timing import THREADS, median_ms, peak_rss_mib  # noqa: E402  (sets the thread counts)

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_dcn  # noqa: E402
from tf_dcn import composite  # noqa: E402

SHAPES = {
    "S1": (8, 64, 56, 56, 64),
    "S2": (4, 256, 28, 28, 256),
    "S3": (2, 512, 14, 14, 512),
    "S4": (1, 32, 128, 128, 32),
}
HEADS = ("rfcn", "frcnn")
NUM_ROIS = 300
IMAGE_H, IMAGE_W, STRIDE = 600, 800, 16
FEAT_H, FEAT_W = 38, 50


def _variants(forward, inputs):
    """{name: zero-argument callable}: forward and forward+backward of op, composite, XLA."""
    def make(implementation, backward, jit):
        fn = forward[implementation]

        def run(*args):
            if not backward:
                return fn(*args)
            with tf.GradientTape() as tape:
                tape.watch(args)
                out = fn(*args)
            return tape.gradient(out, args, output_gradients=tf.ones_like(out))

        compiled = tf.function(run, jit_compile=jit)
        return lambda: compiled(*inputs)

    return {
        "op fwd": make("op", False, False),
        "composite fwd": make("composite", False, False),
        "xla fwd": make("composite", False, True),
        "op fwd+bwd": make("op", True, False),
        "composite fwd+bwd": make("composite", True, False),
        "xla fwd+bwd": make("composite", True, True),
    }


def conv_case(name: str, modulated: bool):
    n, cin, h, w, cout = SHAPES[name]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=[n, h, w, cin]), tf.float32)
    kernel = tf.constant(rng.normal(0, 0.05, size=[3, 3, cin, cout]), tf.float32)
    bias = tf.constant(rng.normal(size=[cout]), tf.float32)
    offsets = tf.constant(rng.uniform(-2, 2, size=[n, h, w, 18]), tf.float32)
    inputs = [x, offsets, kernel, bias]
    if modulated:
        inputs.append(tf.constant(rng.uniform(0, 1, size=[n, h, w, 9]), tf.float32))

    def wrap(fn):
        def call(x, offsets, kernel, bias, mask=None):
            return fn(x, offsets, kernel, mask=mask, bias=bias, padding=1)
        return call

    forward = {"op": wrap(tf_dcn.deform_conv2d), "composite": wrap(composite.deform_conv2d)}
    return _variants(forward, inputs)


def make_rois(count: int, rng: np.random.Generator) -> np.ndarray:
    """Random proposals inside the 600 x 800 image, 16 to 400 pixels a side (bench_pool_cpu's)."""
    w = rng.uniform(16, 400, size=count)
    h = rng.uniform(16, 400, size=count)
    x1 = rng.uniform(0, IMAGE_W - w)
    y1 = rng.uniform(0, IMAGE_H - h)
    return np.stack([np.zeros(count), x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def pool_case(kind: str):
    rng = np.random.default_rng(0)
    if kind == "rfcn":
        channels = 7 * 7 * 21
        kw = dict(output_dim=21, group_size=7)
        ops = {"op": tf_dcn.deform_psroi_pool, "composite": composite.deform_psroi_pool}
    else:
        channels = 256
        kw = dict(pooled_size=7)
        ops = {"op": tf_dcn.deform_roi_pool, "composite": composite.deform_roi_pool}
    kw.update(sample_per_part=4, trans_std=0.1, spatial_scale=1.0 / STRIDE)
    features = tf.constant(rng.normal(size=[1, FEAT_H, FEAT_W, channels]), tf.float32)
    rois = tf.constant(make_rois(NUM_ROIS, rng))
    offsets = tf.constant(rng.normal(0, 0.3, size=[NUM_ROIS, 7, 7, 2]), tf.float32)

    def wrap(fn):
        def call(features, offsets):
            return fn(features, rois, offsets, **kw)
        return call

    return _variants({name: wrap(fn) for name, fn in ops.items()}, [features, offsets])


def report(label: str, variants: dict, repeats: int) -> None:
    times = {name: median_ms(fn, repeats=repeats) for name, fn in variants.items()}
    cells = []
    for part in ("fwd", "fwd+bwd"):
        op = times[f"op {part}"]
        comp = times[f"composite {part}"]
        xla = times[f"xla {part}"]
        cells.append(f"{op:9.1f} {comp:9.1f} {comp / op:6.2f}x {xla:9.1f} {xla / op:6.2f}x")
    print(f"{label:<14} " + " | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--shapes", default="S1,S2,S3,S4",
                        help="comma-separated subset of S1,S2,S3,S4 ('' for none)")
    parser.add_argument("--heads", default="rfcn,frcnn",
                        help="comma-separated subset of rfcn,frcnn ('' for none)")
    args = parser.parse_args()
    shapes = [s.strip().upper() for s in args.shapes.split(",") if s.strip()]
    heads = [h.strip().lower() for h in args.heads.split(",") if h.strip()]
    for s in shapes:
        if s not in SHAPES:
            parser.error(f"--shapes: unknown shape {s!r}, expected some of {sorted(SHAPES)}")
    for h in heads:
        if h not in HEADS:
            parser.error(f"--heads: unknown head {h!r}, expected some of {list(HEADS)}")

    print(f"tf-dcn composite vs op, CPU, {THREADS} intra-op threads, median of {args.repeats} "
          f"runs, milliseconds; TensorFlow {tf.__version__}")
    header = "op ms  comp ms  comp/op    xla ms   xla/op"
    print(f"{'case':<14} {'forward':^47} | {'forward+backward':^47}")
    print(f"{'':<14}  {header} |  {header}")
    for s in shapes:
        for modulated in (False, True):
            n, cin, h, w, cout = SHAPES[s]
            report(f"{s} {'v2' if modulated else 'v1'}", conv_case(s, modulated), args.repeats)
    for kind in heads:
        report(f"{kind} R={NUM_ROIS}", pool_case(kind), args.repeats)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
