"""The Bazel build of the CPU op library (tools/bazel_build.sh, cc/BUILD) matches the Makefile's.

The Bazel-built library is built here (warm: seconds; cold: a few minutes) and loaded in a fresh
Python process, never next to the Makefile-built one (both register the same ops). One process per
library runs every op (deformable convolution v1 and v2 forward, its gradient op, deformable
PS-RoI pooling with and without offsets and its gradient op) on the same seeded random inputs,
with each CPU instruction set the machine has, and saves the outputs to an .npz.

The outputs must be bitwise equal: both builds use the same g++, -O3 -DNDEBUG (cc/BUILD adds -O3 to
Bazel's -c opt), the same -m flags for the AVX2 and AVX-512 files only (so the same FMA
contraction), -std=c++17 and TensorFlow's -D flags, and the kernels are deterministic for a fixed
thread count. Bazel's other flags (-fno-omit-frame-pointer, -fstack-protector, _FORTIFY_SOURCE,
-ffunction-sections, gold, --gc-sections) do not change floating-point code. A difference means
the two builds' compiler flags have drifted apart (or the Makefile was run with other CXXFLAGS).

Without ``bazel`` on PATH these tests skip, unless TF_DCN_REQUIRE_BAZEL is set (CI sets it): then
they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tf_dcn import _loader
from tests.isa_scan import ISAS, cpu_supports, scan

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "tools" / "bazel_build.sh"
BAZEL_LIBRARY = REPO / "build" / "bazel" / "_tf_dcn_ops.so"
BAZEL_TARGET = "//cc:_tf_dcn_ops.so"
MAKE_LIBRARY = Path(_loader.CPU_LIBRARY)


def _bazel_required() -> bool:
    return os.environ.get("TF_DCN_REQUIRE_BAZEL", "") not in ("", "0")


def _bazel() -> str:
    bazel = shutil.which("bazel")
    if bazel:
        return bazel
    if _bazel_required():
        pytest.fail("TF_DCN_REQUIRE_BAZEL is set but bazel is not on PATH "
                    "(Debian/Ubuntu: apt-get install bazel-bootstrap)")
    pytest.skip("bazel is not on PATH (TF_DCN_REQUIRE_BAZEL=1 makes this a failure)")


@pytest.fixture(scope="module")
def bazel_library() -> Path:
    """Builds the library with tools/bazel_build.sh against this Python's TensorFlow."""
    _bazel()
    env = dict(os.environ, PYTHON_BIN_PATH=sys.executable)
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"tools/bazel_build.sh failed:\n{log}"
    printed = proc.stdout.strip().splitlines()[-1]
    assert Path(printed) == BAZEL_LIBRARY, f"expected the path as the last line, got {printed!r}"
    assert BAZEL_LIBRARY.is_file()
    return BAZEL_LIBRARY


# Runs in a fresh process: loads one op library and saves every op's outputs, keyed
# "<isa>|<case>|<output>", to an .npz. Inputs come from fixed seeds, so both processes see the same.
_WORKER = r'''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(2)
library, out_path, isas = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
ops = tf.load_op_library(library)
results = {}


def out_size(size, k, stride, dilation, padding, before=0, after=0):
    if padding == "SAME":
        return -(-size // stride)
    return (size + before + after - (dilation * (k - 1) + 1)) // stride + 1


def conv_case(isa, name, seed, dtype, n, h, w, c, cout, k, strides, dilations, padding,
              explicit, groups, dgroups, use_mask, use_bias):
    rng = np.random.default_rng(seed)
    ho = out_size(h, k, strides[0], dilations[0], padding, *(explicit[:2] or [0, 0]))
    wo = out_size(w, k, strides[1], dilations[1], padding, *(explicit[2:] or [0, 0]))
    x = rng.uniform(-1, 1, (n, h, w, c))
    offsets = rng.uniform(-2, 2, (n, ho, wo, 2 * dgroups * k * k))
    mask = rng.uniform(0, 1, (n, ho, wo, dgroups * k * k)) if use_mask else np.zeros([0])
    kernel = rng.uniform(-1, 1, (k, k, c // groups, cout))
    bias = rng.uniform(-1, 1, (cout,)) if use_bias else np.zeros([0])
    grad = rng.uniform(-1, 1, (n, ho, wo, cout))
    t = lambda a: tf.constant(a.astype(dtype))
    attrs = dict(strides=strides, dilations=dilations, padding=padding,
                 explicit_paddings=explicit, groups=groups, deformable_groups=dgroups,
                 use_mask=use_mask, use_bias=use_bias)
    inputs = dict(input=t(x), offsets=t(offsets), mask=t(mask), kernel=t(kernel), bias=t(bias))
    y = ops.tf_dcn_deformable_conv2d(**inputs, **attrs)
    assert y.shape == (n, ho, wo, cout), y.shape
    grads = ops.tf_dcn_deformable_conv2d_grad(**inputs, grad_output=t(grad), **attrs)
    results[f"{isa}|{name}|output"] = y.numpy()
    for label, g in zip(("input", "offsets", "mask", "kernel", "bias"), grads):
        results[f"{isa}|{name}|grad_{label}"] = g.numpy()


def pool_case(isa, name, seed, dtype, roi_dtype, use_offsets):
    rng = np.random.default_rng(seed)
    n, h, w, output_dim, group_size, pooled, part, classes = 2, 12, 10, 4, 3, 3, 3, 2
    features = rng.uniform(-1, 1, (n, h, w, output_dim * group_size ** 2))
    r = 6
    x1, y1 = rng.uniform(-4, 14, r), rng.uniform(-4, 18, r)
    rois = np.stack([rng.integers(0, n, r), x1, y1, x1 + rng.uniform(1, 10, r),
                     y1 + rng.uniform(1, 10, r)], axis=1)
    offsets = rng.uniform(-1, 1, (r, part, part, 2 * classes)) if use_offsets else np.zeros([0])
    grad = rng.uniform(-1, 1, (r, pooled, pooled, output_dim))
    attrs = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled,
                 part_size=part, sample_per_part=2, trans_std=0.1, spatial_scale=0.5,
                 use_offsets=use_offsets)
    inputs = dict(features=tf.constant(features.astype(dtype)),
                  rois=tf.constant(rois.astype(roi_dtype)),
                  offsets=tf.constant(offsets.astype(dtype)))
    y = ops.tf_dcn_deformable_ps_ro_i_pool(**inputs, **attrs)
    gf, go = ops.tf_dcn_deformable_ps_ro_i_pool_grad(**inputs, grad_output=tf.constant(
        grad.astype(dtype)), **attrs)
    results[f"{isa}|{name}|output"] = y.numpy()
    results[f"{isa}|{name}|grad_features"] = gf.numpy()
    results[f"{isa}|{name}|grad_offsets"] = go.numpy()


for isa in isas:
    os.environ["TF_DCN_CPU_ISA"] = isa  # read by the kernels at every call
    conv_case(isa, "conv_v1", 1, np.float32, 2, 9, 8, 4, 6, 3, [1, 1], [1, 1], "SAME", [],
              2, 2, False, True)
    conv_case(isa, "conv_v2", 2, np.float32, 2, 11, 9, 6, 4, 3, [2, 1], [1, 2], "EXPLICIT",
              [1, 0, 2, 1], 1, 3, True, False)
    conv_case(isa, "conv_v2_f64", 3, np.float64, 1, 7, 8, 4, 4, 3, [1, 1], [1, 1], "VALID", [],
              2, 1, True, True)
    conv_case(isa, "conv_v2_f16", 4, np.float16, 2, 6, 7, 8, 4, 3, [1, 1], [1, 1], "SAME", [],
              1, 2, True, True)
    pool_case(isa, "psroi", 5, np.float32, np.float32, False)
    pool_case(isa, "psroi_offsets", 6, np.float32, np.float32, True)
    pool_case(isa, "psroi_offsets_f64", 7, np.float64, np.float64, True)
np.savez(out_path, **results)
'''


def _run_workers(libraries: dict[str, Path], tmp_path: Path, isas: list[str]) -> dict[str, dict]:
    """Runs one worker process per library (concurrently) and loads their .npz files."""
    env = {k: v for k, v in os.environ.items() if k != "TF_DCN_CPU_ISA"}
    procs = {}
    for name, library in libraries.items():
        out = tmp_path / f"{name}.npz"
        procs[name] = (out, subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(library), str(out), ",".join(isas)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for name, (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"worker for the {name} library failed:\n{log[-6000:]}"
        with np.load(out) as data:
            results[name] = {key: data[key] for key in data.files}
    return results


def test_bazel_library_computes_the_same_as_the_makefile_library(bazel_library, tmp_path):
    if not MAKE_LIBRARY.is_file():
        pytest.fail(f"{MAKE_LIBRARY} is missing: run `make build` first")
    newer = [p for p in (REPO / "cc").rglob("*") if p.suffix in (".cc", ".h")
             and p.stat().st_mtime > MAKE_LIBRARY.stat().st_mtime]
    if newer:
        pytest.fail(f"{MAKE_LIBRARY} is older than {newer[0].relative_to(REPO)}: run `make build` "
                    "(`make test` does) so that both libraries are built from the same sources")
    isas = [isa for isa in ISAS if cpu_supports(isa)]
    results = _run_workers({"make": MAKE_LIBRARY, "bazel": bazel_library}, tmp_path, isas)
    make, bazel = results["make"], results["bazel"]
    assert sorted(make) == sorted(bazel)
    assert len(make) == len(isas) * (4 * 6 + 3 * 3)
    differ = []
    for key in sorted(make):
        a, b = make[key], bazel[key]
        assert a.dtype == b.dtype and a.shape == b.shape, (key, a.dtype, b.dtype, a.shape, b.shape)
        assert np.all(np.isfinite(a)), key
        if a.tobytes() != b.tobytes():
            diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)
            differ.append(f"{key}: max |difference| {diff:.3g}")
    # Nothing is trivially zero: each case exercises its op.
    for key in make:
        if key.endswith("|output"):
            assert np.any(make[key] != 0), key
    assert not differ, (
        "the Bazel-built and Makefile-built libraries disagree (compiler flags drifted apart?):\n"
        + "\n".join(differ)
    )


def test_wider_isa_objects_are_linked_last_narrowest_first(bazel_library):
    """On the link command line every baseline object comes first, then avx2, then avx512.

    Where several objects emit the same inline function, the linker keeps the first copy; it must
    be the narrowest one, so that no AVX2 (AVX-512) code runs on CPUs without it. The disassembly
    check below cannot see every wrong order (an inline function whose wider copy happens to have
    no wider instruction), so the order itself is checked here.
    """
    proc = subprocess.run(
        [_bazel(), "aquery", "--noshow_progress", f'mnemonic("CppLink", {BAZEL_TARGET})'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = proc.stdout.split("Command Line:", 1)[1]
    objects = re.findall(r"(\S+?)\.(?:pic\.)?o\b", command)
    names = [Path(o).name for o in objects]
    assert len(names) == len(set(names)) >= 3, names
    tail = [name for name in names if name.endswith(("_avx2", "_avx512"))]
    assert [name.rsplit("_", 1)[1] for name in tail] == ["avx2", "avx512"], names
    assert names[-2:] == tail, f"the wider-ISA objects must be linked last; link order: {names}"


def test_no_instruction_of_a_wider_set_outside_its_build(bazel_library):
    counts, leaks = scan(bazel_library)
    assert counts["avx2"] > 0 and counts["avx512"] > 0, (
        "an ISA build is missing from the Bazel-built library", counts)
    assert not leaks["avx2"] and not leaks["avx512"], {k: sorted(v)[:10] for k, v in leaks.items()}
