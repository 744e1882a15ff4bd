"""Prints a SHA-256 digest of every output and gradient of the ops on the benchmark shapes, to
check that a refactoring leaves the results bitwise unchanged.

    .venv/bin/python bench/output_digest.py > before.txt     # on the old code
    .venv/bin/python bench/output_digest.py > after.txt      # on the new code
    diff before.txt after.txt                                # no output: bitwise equal

Shapes: the convolution benchmark's S1-S4 (bench/bench_conv_cpu.py; v1 and v2, float32, plus
float16 and float64 on S4) and the pooling benchmark's heads (bench/bench_pool_cpu.py), with
fixed seeds and two intra-op threads (the CPU convolution backward is deterministic for a fixed
thread count). TF_DCN_OPS=cuda runs the same check through the CUDA library's CPU kernels.
"""

from __future__ import annotations

import hashlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_dcn  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)

CONV_SHAPES = {  # name: (N, C, H, W, Cout), 3x3, padding "same"
    "S1": (8, 64, 56, 56, 64),
    "S2": (4, 256, 28, 28, 256),
    "S3": (2, 512, 14, 14, 512),
    "S4": (1, 32, 128, 128, 32),
}
POOL_CASES = {  # name: (C, group_size, output_dim, rois, with offsets)
    "roi_pool_C256": (256, 1, 256, 300, True),
    "psroi_pool_7x7x21": (7 * 7 * 21, 7, 21, 300, True),
    "psroi_pool_no_offsets": (7 * 7 * 21, 7, 21, 300, False),
}


def digest(tensor: tf.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor.numpy()).tobytes()).hexdigest()[:16]


def conv_case(name: str, shape, modulated: bool, dtype: tf.DType) -> None:
    n, c, h, w, cout = shape
    rng = np.random.default_rng(1234)
    x = tf.constant(rng.standard_normal([n, h, w, c]), dtype)
    offsets = tf.constant(rng.uniform(-2, 2, [n, h, w, 18]), dtype)
    mask = tf.constant(rng.uniform(0, 1, [n, h, w, 9]), dtype) if modulated else None
    kernel = tf.constant(rng.standard_normal([3, 3, c, cout]) * 0.05, dtype)
    bias = tf.constant(rng.standard_normal([cout]), dtype)
    grad_out = tf.constant(rng.standard_normal([n, h, w, cout]), dtype)
    sources = [x, offsets, kernel, bias] + ([mask] if modulated else [])
    with tf.GradientTape() as tape:
        tape.watch(sources)
        y = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask, bias=bias, padding="same")
    grads = tape.gradient(y, sources, output_gradients=grad_out)
    names = ["input", "offsets", "kernel", "bias"] + (["mask"] if modulated else [])
    tag = f"conv {name} {'v2' if modulated else 'v1'} {dtype.name}"
    print(tag, "output", digest(y))
    for label, grad in zip(names, grads):
        print(tag, "grad_" + label, digest(grad))


def pool_case(name: str, case) -> None:
    channels, group_size, output_dim, num_rois, with_offsets = case
    rng = np.random.default_rng(99)
    features = tf.constant(rng.standard_normal([2, 38, 50, channels]), tf.float32)
    x1 = rng.uniform(0, 600, num_rois)
    y1 = rng.uniform(0, 450, num_rois)
    rois = np.stack([rng.integers(0, 2, num_rois), x1, y1, x1 + rng.uniform(16, 200, num_rois),
                     y1 + rng.uniform(16, 150, num_rois)], axis=1)
    rois = tf.constant(rois, tf.float32)
    offsets = (tf.constant(rng.standard_normal([num_rois, 7, 7, 2]), tf.float32)
               if with_offsets else None)
    grad_out = tf.constant(rng.standard_normal([num_rois, 7, 7, output_dim]), tf.float32)
    sources = [features] + ([offsets] if with_offsets else [])
    with tf.GradientTape() as tape:
        tape.watch(sources)
        y = tf_dcn.deform_psroi_pool(features, rois, offsets, output_dim=output_dim,
                                     group_size=group_size, pooled_size=7, part_size=7,
                                     spatial_scale=1 / 16)
    grads = tape.gradient(y, sources, output_gradients=grad_out)
    print(f"pool {name}", "output", digest(y))
    for label, grad in zip(["features", "offsets"], grads):
        print(f"pool {name}", "grad_" + label, digest(grad))


def main() -> None:
    for name, shape in CONV_SHAPES.items():
        for modulated in (False, True):
            conv_case(name, shape, modulated, tf.float32)
    for dtype in (tf.float16, tf.bfloat16, tf.float64):
        conv_case("S4", CONV_SHAPES["S4"], True, dtype)
    for name, case in POOL_CASES.items():
        pool_case(name, case)
    print("library", os.path.basename(tf_dcn.loaded_library()))


if __name__ == "__main__":
    main()
