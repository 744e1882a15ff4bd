"""Peak memory of the CPU backward passes at 1, 2, 16 and 64 intra-op threads.

For each thread count a fresh process (TensorFlow fixes its pool at start-up) builds the inputs,
runs the backward op once on a small warm-up case, then once on the measured case, and reports
how much the process's peak resident memory (VmHWM, reset just before the call) rose above its
resident memory before the call. The growth includes the op's
outputs (the gradients); "temporaries" is the growth minus their size. The bound the kernels keep
is: growth <= size of the input gradient + 64 MiB, whatever the thread count.

  * convolution: deformable conv v1, 3x3, padding 1, input [1, 512, 512, 128] float32 (128 MiB),
    128 output channels, offsets U(-2, 2), gradient op called directly (no forward, no tape);
  * pooling: deformable RoI pooling of [1, 256, 256, 256] float32 features (64 MiB), 300 RoIs,
    pooled 7, sample_per_part 4, with offsets.

    .venv/bin/python bench/bench_backward_memory.py [--threads 1,2,16,64] [--case conv,pool]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20

_WORKER = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
threads, case = int(sys.argv[1]), sys.argv[2]
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, sys.argv[3])
import tf_dcn
ops = tf_dcn.load_ops()


def status_bytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak():
    """Resets VmHWM (the peak) to the current VmRSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def conv_inputs(n, h, w, c, cout):
    rng = np.random.default_rng(0)
    f = lambda shape, lo, hi: tf.constant(rng.uniform(lo, hi, shape).astype(np.float32))
    return dict(input=f((n, h, w, c), -1, 1), offsets=f((n, h, w, 18), -2, 2),
                mask=tf.zeros([0]), kernel=f((3, 3, c, cout), -0.1, 0.1), bias=tf.zeros([0]),
                grad_output=f((n, h, w, cout), -1, 1))


def conv_grad(inputs):
    return ops.tf_dcn_deformable_conv2d_grad(
        **inputs, strides=[1, 1], dilations=[1, 1], padding="EXPLICIT",
        explicit_paddings=[1, 1, 1, 1], groups=1, deformable_groups=1, use_mask=False,
        use_bias=False)


def pool_inputs(h, w, c, rois):
    rng = np.random.default_rng(0)
    x1 = rng.uniform(0, max(1, 16 * w - 400), rois)
    y1 = rng.uniform(0, max(1, 16 * h - 400), rois)
    boxes = np.stack([np.zeros(rois), x1, y1, x1 + rng.uniform(16, 400, rois),
                      y1 + rng.uniform(16, 400, rois)], axis=1).astype(np.float32)
    return dict(features=tf.constant(rng.normal(size=(1, h, w, c)).astype(np.float32)),
                rois=tf.constant(boxes),
                offsets=tf.constant(rng.normal(0, 0.3, (rois, 7, 7, 2)).astype(np.float32)),
                grad_output=tf.constant(rng.normal(size=(rois, 7, 7, c)).astype(np.float32)))


def pool_grad(inputs):
    return ops.tf_dcn_deformable_ps_ro_i_pool_grad(
        **inputs, output_dim=inputs["features"].shape[-1], group_size=1, pooled_size=7,
        part_size=7, sample_per_part=4, trans_std=0.1, spatial_scale=1.0 / 16,
        use_offsets=True)


if case == "conv":
    [g.numpy() for g in conv_grad(conv_inputs(1, 16, 16, 8, 8))]   # warm-up: load, allocate
    inputs = conv_inputs(1, 512, 512, 128, 128)
    run = conv_grad
else:
    [g.numpy() for g in pool_grad(pool_inputs(8, 8, 4, 3))]
    inputs = pool_inputs(256, 256, 256, 300)
    run = pool_grad
before = status_bytes("VmRSS")
reset_peak()
grads = run(inputs)
after = status_bytes("VmHWM")
print(json.dumps(dict(growth=after - before, input_grad=grads[0].numpy().nbytes,
                      outputs=sum(g.numpy().nbytes for g in grads))))
'''


def measure(threads: int, case: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _WORKER, str(threads), case, REPO], env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2,16,64")
    parser.add_argument("--case", default="conv,pool")
    args = parser.parse_args()
    print(f"peak RSS growth of one backward call, MiB; TF_DCN_CPU_ISA="
          f"{os.environ.get('TF_DCN_CPU_ISA', 'auto')}, TF_DCN_CPU_WORKSPACE_BYTES="
          f"{os.environ.get('TF_DCN_CPU_WORKSPACE_BYTES', 'default')}, {os.cpu_count()} CPUs")
    print(f"{'case':<6} {'threads':>7} {'growth':>8} {'outputs':>8} {'temporaries':>12} "
          f"{'bound (input grad + 64)':>24} {'within':>7}")
    for case in args.case.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            r = measure(threads, case)
            bound = r["input_grad"] + 64 * MIB
            print(f"{case:<6} {threads:>7} {r['growth'] / MIB:8.1f} {r['outputs'] / MIB:8.1f} "
                  f"{(r['growth'] - r['outputs']) / MIB:12.1f} {bound / MIB:24.1f} "
                  f"{'yes' if r['growth'] <= bound else 'NO':>7}", flush=True)


if __name__ == "__main__":
    main()
