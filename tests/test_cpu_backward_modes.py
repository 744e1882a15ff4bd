"""The CPU backward pass in its two modes (image mode, chunk mode) and at several thread counts;
the pooling backward pass at several thread counts and RoI chunk sizes.

Each thread count runs in a fresh process (TensorFlow fixes the intra-op pool at start-up). A
small TF_DCN_CPU_WORKSPACE_BYTES (read at every call) forces chunk mode with many chunks and
pixel ranges; the default takes image mode (whole images, or split images with fewer images than
threads). Checked: every mode and thread count agrees with float64 NumPy-independent results of
the default mode (a float64 run), half types with float32, and each result is bitwise equal when
run again (determinism).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
THREADS = (1, 2, 3, 4)
WORKSPACES = {"image": None, "chunk": 64 << 10, "chunk_small": 256 << 10}
CONV_CASES = ("one_image", "batch")
POOL_CASES = ("psroi", "roi")

_WORKER = r'''
import json, os, sys
import numpy as np
import tensorflow as tf
threads = int(sys.argv[1])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
import tf_dcn

workspaces = json.loads(sys.argv[2])
out = sys.argv[3]
rng = np.random.default_rng(7)
cases = {
    # name: (input shape NHWC, kernel shape, groups, deformable groups, stride)
    "one_image": ((1, 13, 11, 8), (3, 3, 4, 6), 2, 2, 1),
    "batch": ((3, 9, 10, 6), (3, 2, 6, 5), 1, 3, 2),
}
results = {}


def record(key, compute):
    """results[key|mode] = compute() in every workspace mode, and whether a second call gave
    the same bits."""
    for mode, workspace in workspaces.items():
        if workspace is None:
            os.environ.pop("TF_DCN_CPU_WORKSPACE_BYTES", None)
        else:
            os.environ["TF_DCN_CPU_WORKSPACE_BYTES"] = str(workspace)
        runs = [compute(), compute()]
        results[f"{key}|{mode}"] = runs[0]
        results[f"{key}|{mode}|same_again"] = all(a.tobytes() == b.tobytes()
                                                 for a, b in zip(*runs))


for name, (xs, ks, groups, dgroups, stride) in cases.items():
    n, h, w, c = xs
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    taps = ks[0] * ks[1]
    x = rng.uniform(-1, 1, xs)
    kernel = rng.uniform(-1, 1, ks)
    offsets = rng.uniform(-3, 3, (n, ho, wo, 2 * dgroups * taps))
    mask = rng.uniform(0, 1, (n, ho, wo, dgroups * taps))
    upstream = rng.uniform(-1, 1, (n, ho, wo, ks[3]))
    for dtype in ("float64", "float32", "float16"):
        tensors = [tf.constant(a.astype(dtype)) for a in (x, offsets, kernel, mask)]

        def conv():
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                y = tf_dcn.deform_conv2d(*tensors[:3], mask=tensors[3], strides=stride,
                                         padding="same", groups=groups, deformable_groups=dgroups)
            grads = tape.gradient(y, tensors, output_gradients=tf.constant(
                upstream.astype(dtype)))
            return [y.numpy()] + [g.numpy() for g in grads]

        record(f"{name}|{dtype}", conv)

# Pooling: deformable PS-RoI pooling (owners are position-sensitive groups) and deformable RoI
# pooling with 130 channels (owners are channel blocks, the last one partial).
pool_features = rng.uniform(-1, 1, (2, 14, 12, 130))
corners = rng.uniform(-6, 30, (9, 2))
pool_rois = np.concatenate([rng.integers(0, 2, (9, 1)), corners,
                            corners + rng.uniform(4, 30, (9, 2))], axis=1)
pool_offsets = rng.normal(0, 0.4, (9, 3, 3, 2))
pool_cases = {
    "psroi": (tf_dcn.deform_psroi_pool, dict(output_dim=14, group_size=3),
              pool_features[..., :126]),
    "roi": (tf_dcn.deform_roi_pool, dict(), pool_features),
}
for name, (pool, kw, feats) in pool_cases.items():
    upstream = rng.uniform(-1, 1, (9, 3, 3, kw.get("output_dim", feats.shape[-1])))
    for dtype in ("float64", "float32", "float16"):
        f, o = tf.constant(feats.astype(dtype)), tf.constant(pool_offsets.astype(dtype))

        def pool_grads():
            with tf.GradientTape() as tape:
                tape.watch([f, o])
                y = pool(f, pool_rois, o, pooled_size=3, sample_per_part=3, trans_std=0.1,
                         spatial_scale=0.5, **kw)
            grads = tape.gradient(y, [f, o], tf.constant(upstream.astype(dtype)))
            return [y.numpy()] + [g.numpy() for g in grads]

        record(f"{name}|{dtype}", pool_grads)

arrays = {}
for key, value in results.items():
    if isinstance(value, list):
        arrays.update({f"{key}|{i}": a for i, a in enumerate(value)})
    else:
        arrays[key] = np.asarray(value)
np.savez(out, **arrays)
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("modes")
    for threads in THREADS:
        path = folder / f"t{threads}.npz"
        env = {k: v for k, v in os.environ.items() if k != "TF_DCN_CPU_WORKSPACE_BYTES"}
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER, str(threads), json.dumps(WORKSPACES), str(path)],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        with np.load(path) as data:
            out[threads] = {k: data[k] for k in data.files}
    return out


def _outputs(data, key):
    count = 3 if key.split("|")[0] in POOL_CASES else 5
    return [data[f"{key}|{i}"] for i in range(count)]


@pytest.mark.parametrize("threads", THREADS)
def test_every_mode_is_deterministic(results, threads):
    data = results[threads]
    again = [k for k in data if k.endswith("|same_again")]
    assert len(again) == (len(CONV_CASES) + len(POOL_CASES)) * 3 * len(WORKSPACES)
    assert all(bool(data[k]) for k in again), [k for k in again if not bool(data[k])]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", CONV_CASES + POOL_CASES)
def test_modes_and_thread_counts_agree(results, threads, case):
    reference = _outputs(results[1], f"{case}|float64|image")
    for i, a in enumerate(reference):
        assert np.all(np.isfinite(a)) and np.any(a != 0), (case, i)
    for dtype, tol in (("float64", 1e-10), ("float32", 2e-4), ("float16", 5e-2)):
        for mode in WORKSPACES:
            got = _outputs(results[threads], f"{case}|{dtype}|{mode}")
            for i, (g, r) in enumerate(zip(got, reference)):
                scale = max(1.0, float(np.max(np.abs(r))))
                np.testing.assert_allclose(
                    g.astype(np.float64), r, rtol=tol, atol=tol * scale,
                    err_msg=f"{case} {dtype} {mode} threads={threads} output {i}")


@pytest.mark.parametrize("threads", THREADS[1:])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_backward_is_the_same_at_every_thread_count(results, threads, case):
    """docs/semantics.md: the pooling backward pass (and forward pass) is bitwise identical
    whatever the thread count, in every element type and chunking."""
    for dtype in ("float64", "float32", "float16"):
        for mode in WORKSPACES:
            key = f"{case}|{dtype}|{mode}"
            for i, (a, b) in enumerate(zip(_outputs(results[threads], key),
                                           _outputs(results[1], key))):
                assert a.tobytes() == b.tobytes(), (key, threads, i)


@pytest.mark.parametrize("threads", THREADS[1:])
@pytest.mark.parametrize("case", CONV_CASES)
def test_narrow_convolution_forward_is_the_same_at_every_thread_count(results, threads, case):
    """docs/semantics.md: with at most 32 output channels per group (64 with AVX-512) the
    forward pass computes every output element as one ordered sum (cpu_panel_product.h), so its
    bits depend on neither the thread count nor the workspace (how the pixels are cut into tiles
    and chunks)."""
    for dtype in ("float64", "float32", "float16"):
        expected = results[1][f"{case}|{dtype}|image|0"]
        for mode in WORKSPACES:
            got = results[threads][f"{case}|{dtype}|{mode}|0"]
            assert got.tobytes() == expected.tobytes(), (case, dtype, mode, threads)
