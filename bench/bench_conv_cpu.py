"""CPU speed of tf_dcn.deform_conv2d (v1, v2) against tf.nn.conv2d on the same NHWC shapes.

Prints forward and forward+backward times (median of 5 after warm-up, 2 intra-op threads) and
their ratios to tf.nn.conv2d measured in this run, plus the process's peak resident memory.

    .venv/bin/python bench/bench_conv_cpu.py [--repeats 5] [--shapes S1,S2]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _timing import THREADS, median_ms, peak_rss_mib, tf  # noqa: E402

import tf_dcn  # noqa: E402

SHAPES = {  # (N, Cin, H, W, Cout)
    "S1": (8, 64, 56, 56, 64),
    "S2": (4, 256, 28, 28, 256),
    "S3": (2, 512, 14, 14, 512),
    "S4": (1, 32, 128, 128, 32),
}


def _functions(n, cin, h, w, cout, dtype=tf.float32):
    """tf.functions (forward, forward+backward) of conv2d and deform_conv2d v1/v2 on one shape."""
    rng = tf.random.Generator.from_seed(0)
    x = tf.Variable(tf.cast(rng.normal([n, h, w, cin]), dtype))
    kernel = tf.Variable(tf.cast(rng.normal([3, 3, cin, cout]) * 0.05, dtype))
    offsets = tf.Variable(tf.cast(rng.uniform([n, h, w, 18], -2.0, 2.0), dtype))
    mask = tf.Variable(tf.cast(rng.uniform([n, h, w, 9], 0.0, 1.0), dtype))

    @tf.function
    def conv_fwd():
        return tf.nn.conv2d(x, kernel, 1, [[0, 0], [1, 1], [1, 1], [0, 0]])

    @tf.function
    def conv_fwd_bwd():
        with tf.GradientTape() as tape:
            y = tf.nn.conv2d(x, kernel, 1, [[0, 0], [1, 1], [1, 1], [0, 0]])
            loss = tf.reduce_sum(y)
        return tape.gradient(loss, [x, kernel])

    def dcn(modulated):
        @tf.function
        def fwd():
            return tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask if modulated else None,
                                        padding=1)

        @tf.function
        def fwd_bwd():
            with tf.GradientTape() as tape:
                y = tf_dcn.deform_conv2d(x, offsets, kernel, mask=mask if modulated else None,
                                         padding=1)
                loss = tf.reduce_sum(y)
            variables = [x, offsets, kernel] + ([mask] if modulated else [])
            return tape.gradient(loss, variables)

        return fwd, fwd_bwd

    return {"conv2d": (conv_fwd, conv_fwd_bwd), "dcn v1": dcn(False), "dcn v2": dcn(True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    print(f"tf-dcn CPU benchmark: {THREADS} intra-op threads, median of {args.repeats}, "
          "3x3 stride 1 padding 1, offsets U(-2, 2), float32, NHWC")
    print(f"{'shape':<4} {'(N, Cin, H, W, Cout)':<22} {'op':<7} {'fwd ms':>9} {'fwd+bwd ms':>11}"
          f" {'fwd ratio':>10} {'fwd+bwd ratio':>14} {'peak RSS MiB':>13}")
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        results = {}
        for op, (fwd, fwd_bwd) in _functions(*shape).items():
            results[op] = (median_ms(fwd, args.repeats), median_ms(fwd_bwd, args.repeats))
            base_f, base_b = results["conv2d"]
            f, b = results[op]
            print(f"{name:<4} {str(shape):<22} {op:<7} {f:9.1f} {b:11.1f} {f / base_f:9.2f}x"
                  f" {b / base_b:13.2f}x {peak_rss_mib():13.0f}", flush=True)


if __name__ == "__main__":
    main()
