"""GPU speed of tf_dcn.deform_conv2d (v1, v2) against tf.nn.conv2d on the same NHWC shapes.

Needs the CUDA op library (`make gpu`), a CUDA build of TensorFlow and a GPU; prints a note and
exits 0 when TensorFlow sees no GPU. Same shapes as bench_conv_cpu.py (S1-S4), float32 and float16,
median of `--repeats` after warm-up. Each timed call reduces its results to one scalar on the GPU
and fetches it, so the times include the kernels and one small device-to-host copy, not the
transfer of whole tensors. `--deterministic` turns on tf.config.experimental.enable_op_determinism()
for the whole run (the sort-based deterministic backward pass).

    .venv/bin/python bench/bench_conv_gpu.py [--repeats 20] [--shapes S1,S2] [--deterministic]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _timing import median_ms, tf  # noqa: E402
from bench_conv_cpu import SHAPES, _functions  # noqa: E402

import tf_dcn  # noqa: E402

tf.get_logger().setLevel("ERROR")  # one tf.function per timed callable: no retracing warnings


def _to_scalar(fn):
    @tf.function
    def run():
        return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tf.nest.flatten(fn())])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("bench_conv_gpu: TensorFlow sees no GPU (a CUDA build of TensorFlow, a driver for "
              "CUDA 12.0 or newer and a GPU are needed); nothing to time.")
        return
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf_dcn.load_ops()
    print(f"tf-dcn GPU benchmark on {gpus[0].name}, library {tf_dcn.loaded_library()}, "
          f"median of {args.repeats}, 3x3 stride 1 padding 1, offsets U(-2, 2), NHWC, "
          f"deterministic={args.deterministic}")
    print(f"{'shape':<4} {'dtype':<8} {'op':<7} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd ratio':>10}"
          f" {'fwd+bwd ratio':>14}")
    for name in args.shapes.split(","):
        for dtype in (tf.float32, tf.float16):
            with tf.device("/GPU:0"):
                functions = _functions(*SHAPES[name], dtype=dtype)
                results = {}
                for op, (fwd, fwd_bwd) in functions.items():
                    results[op] = (median_ms(_to_scalar(fwd), args.repeats),
                                   median_ms(_to_scalar(fwd_bwd), args.repeats))
                    base_f, base_b = results["conv2d"]
                    f, b = results[op]
                    print(f"{name:<4} {dtype.name:<8} {op:<7} {f:9.2f} {b:11.2f} "
                          f"{f / base_f:9.2f}x {b / base_b:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
