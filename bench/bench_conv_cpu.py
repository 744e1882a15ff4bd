"""CPU speed of tf_dcn.deform_conv2d (v1, v2) against tf.nn.conv2d on the same NHWC shapes.

Prints forward and forward+backward times (2 intra-op threads; BENCH_THREADS=n for others) and
their ratios to tf.nn.conv2d measured in this run, plus the process's peak resident memory. Each
shape is measured in `--rounds` rounds that time conv2d, v1 and v2 in turn (median of `--repeats`
calls each after warm-up), so that a slow spell of the machine hits all three; the table shows the
median over rounds of each time and ratio, and the ratios' spread (min-max over rounds).

    .venv/bin/python bench/bench_conv_cpu.py [--repeats 5] [--rounds 3] [--shapes S1,S2]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def _cpu_description() -> str:
    """CPU model and the vector extensions the kernels can use (from /proc/cpuinfo)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), []))
    isa = ("AVX-512" if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
           else "AVX2" if {"avx2", "fma", "f16c"} <= flags else "baseline x86-64")
    return f"{model}, {os.cpu_count()} CPUs, widest kernel build {isa}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    print(f"tf-dcn CPU benchmark: {THREADS} intra-op threads, {args.rounds} rounds of median of "
          f"{args.repeats}, 3x3 stride 1 padding 1, offsets U(-2, 2), float32, NHWC")
    print(f"{_cpu_description()}; TF_DCN_CPU_ISA={os.environ.get('TF_DCN_CPU_ISA', 'auto')}")
    print(f"{'shape':<4} {'(N, Cin, H, W, Cout)':<22} {'op':<7} {'fwd ms':>8} {'fwd+bwd ms':>11}"
          f" {'fwd ratio':>10} {'(spread)':>11} {'fwd+bwd ratio':>14} {'(spread)':>11}"
          f" {'peak RSS MiB':>13}")
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        functions = _functions(*shape)
        rounds = []
        for _ in range(args.rounds):
            rounds.append({op: (median_ms(fwd, args.repeats), median_ms(fwd_bwd, args.repeats))
                           for op, (fwd, fwd_bwd) in functions.items()})
        for op in functions:
            f = statistics.median(r[op][0] for r in rounds)
            b = statistics.median(r[op][1] for r in rounds)
            fr = [r[op][0] / r["conv2d"][0] for r in rounds]
            br = [r[op][1] / r["conv2d"][1] for r in rounds]
            print(f"{name:<4} {str(shape):<22} {op:<7} {f:8.1f} {b:11.1f}"
                  f" {statistics.median(fr):9.2f}x {min(fr):5.2f}-{max(fr):4.2f}"
                  f" {statistics.median(br):13.2f}x {min(br):5.2f}-{max(br):4.2f}"
                  f" {peak_rss_mib():13.0f}", flush=True)


if __name__ == "__main__":
    main()
