"""CPU benchmark of deformable (PS-)RoI pooling, 2 intra-op threads.

Times the forward pass and forward+backward (gradients of features and offsets) of
  * an R-FCN head: deformable PS-RoI pooling of [1, 38, 50, 7*7*21] score maps (stride 16,
    600 x 800 image), output_dim=21, group_size=7, sample_per_part=4, with offsets;
  * Faster R-CNN deformable RoI pooling of [1, 38, 50, 256], pooled_size=7, with offsets;
for 100, 300 and 1000 RoIs. The forward and forward+backward runs alternate; each time is the
median (and the minimum) of its runs after warm-up, and the ratio the median (and quartiles) of
the ratios of the pairs.

    .venv/bin/python bench/bench_pool_cpu.py [--repeats 7]
"""

from __future__ import annotations

import tensorflow as tf

# Before anything else touches TensorFlow's runtime.
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tf_dcn  # noqa: E402

IMAGE_H, IMAGE_W, STRIDE = 600, 800, 16
FEAT_H, FEAT_W = 38, 50


def make_rois(count: int, rng: np.random.Generator) -> np.ndarray:
    """Random proposals inside the 600 x 800 image, 16 to 400 pixels a side."""
    w = rng.uniform(16, 400, size=count)
    h = rng.uniform(16, 400, size=count)
    x1 = rng.uniform(0, IMAGE_W - w)
    y1 = rng.uniform(0, IMAGE_H - h)
    return np.stack([np.zeros(count), x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def time_pair_ms(first, second, warmup: int, repeats: int):
    """Times `first` and `second` alternately, `repeats` times each after `warmup` calls:
    ((median, min) ms of first, (median, min) ms of second, ratios second/first of the pairs).
    Alternating keeps the two under the same load, so their ratio is steadier than either."""
    for _ in range(warmup):
        first()
        second()
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(*times)]
    return ((1000.0 * statistics.median(times[0]), 1000.0 * min(times[0])),
            (1000.0 * statistics.median(times[1]), 1000.0 * min(times[1])), ratios)


def bench_case(kind: str, num_rois: int, warmup: int, repeats: int):
    """((median, min) forward ms, (median, min) forward+backward ms, paired ratios)."""
    rng = np.random.default_rng(0)
    if kind == "rfcn":
        channels, pooled, kw = 7 * 7 * 21, 7, dict(output_dim=21, group_size=7)
        pool = tf_dcn.deform_psroi_pool
    else:
        channels, pooled, kw = 256, 7, dict(pooled_size=7)
        pool = tf_dcn.deform_roi_pool
    kw.update(sample_per_part=4, trans_std=0.1, spatial_scale=1.0 / STRIDE)
    features = tf.constant(rng.normal(size=[1, FEAT_H, FEAT_W, channels]), tf.float32)
    rois = tf.constant(make_rois(num_rois, rng))
    offsets = tf.constant(rng.normal(0, 0.3, size=[num_rois, pooled, pooled, 2]), tf.float32)

    @tf.function
    def forward(x, r, o):
        return pool(x, r, o, **kw)

    @tf.function
    def forward_backward(x, r, o):
        with tf.GradientTape() as tape:
            tape.watch([x, o])
            y = pool(x, r, o, **kw)
        return tape.gradient(y, [x, o], output_gradients=tf.ones_like(y))

    def run_forward():
        forward(features, rois, offsets).numpy()

    def run_both():
        for t in forward_backward(features, rois, offsets):
            t.numpy()

    return time_pair_ms(run_forward, run_both, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (>= 5)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    repeats = max(5, args.repeats)
    tf_dcn.load_ops()  # load the library eagerly, outside the traced functions

    print(f"tf-dcn deformable RoI pooling, CPU, TensorFlow {tf.__version__}, "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads()}, "
          f"forward and forward+backward alternately, median of {repeats} runs each after "
          f"{args.warmup} warm-up, float32")
    print(f"features {FEAT_H}x{FEAT_W} (stride {STRIDE}, {IMAGE_H}x{IMAGE_W} image), "
          "sample_per_part=4, offsets [R, 7, 7, 2]")
    print(f"{os.cpu_count()} CPUs, 1-minute load average at start {os.getloadavg()[0]:.2f} "
          "(other processes distort the timings)")
    header = (f"{'case':<44} {'RoIs':>5} {'fwd ms':>8} {'(min)':>8} {'fwd+bwd ms':>11} "
              f"{'(min)':>8} {'ratio':>6} {'(spread)':>10}")
    print(header)
    print("-" * len(header))
    cases = [
        ("rfcn", "R-FCN deform PS-RoI pool (C=1029, D=21, G=7)"),
        ("faster", "deform RoI pool (C=256, P=7)"),
    ]
    for kind, label in cases:
        for num_rois in (100, 300, 1000):
            (fwd, fwd_min), (both, both_min), ratios = bench_case(kind, num_rois, args.warmup,
                                                                  repeats)
            q1, median, q3 = statistics.quantiles(ratios, n=4)
            print(f"{label:<44} {num_rois:>5} {fwd:>8.2f} {fwd_min:>8.2f} {both:>11.2f} "
                  f"{both_min:>8.2f} {median:>6.2f} {q1:>4.2f}-{q3:.2f}")
        print()
    print("medians, (min) = fastest run; ratio = median over the pairs of fwd+bwd / fwd, spread = "
          "its quartiles; backward = gradients of features and offsets")


if __name__ == "__main__":
    main()
