"""The CPU kernels are built twice (baseline x86-64 and AVX2+FMA+F16C) and chosen at run time.

Checks that both builds compute the same numbers, that TF_DCN_CPU_ISA forces either, and that no
AVX instruction leaked into code that runs on CPUs without AVX2 (the wheel must run on every
x86-64 CPU that TensorFlow runs on).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tf_dcn import _loader
from tests import conv_reference as ref
from tests.isa_scan import avx_instructions_outside_avx2, cpu_has_avx2


def _run_case(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (3, 9, 8, 8)).astype(np.float32)
    kernel = rng.uniform(-1, 1, (3, 3, 4, 6)).astype(np.float32)
    offsets = rng.uniform(-2, 2, (3, 9, 8, 36)).astype(np.float32)
    mask = rng.uniform(0, 1, (3, 9, 8, 18)).astype(np.float32)
    tensors = [tf.constant(a) for a in (x, offsets, kernel, mask)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = tf_dcn.deform_conv2d(tensors[0], tensors[1], tensors[2], mask=tensors[3],
                                 padding="same", groups=2, deformable_groups=2)
    grads = tape.gradient(y, tensors)
    expected = ref.deform_conv2d(x, offsets, kernel, mask, padding="same", groups=2,
                                 deformable_groups=2)
    return y.numpy(), [g.numpy() for g in grads], expected


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_forced_isa_matches_reference(isa, monkeypatch):
    if isa == "avx2" and not cpu_has_avx2():
        pytest.skip("this CPU has no AVX2/FMA/F16C; the AVX2 build cannot run here")
    monkeypatch.setenv("TF_DCN_CPU_ISA", isa)
    y, _, expected = _run_case(0)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


def test_isas_agree_forward_and_backward(monkeypatch):
    if not cpu_has_avx2():
        pytest.skip("this CPU has no AVX2/FMA/F16C; only the baseline build runs here")
    monkeypatch.setenv("TF_DCN_CPU_ISA", "generic")
    y0, g0, _ = _run_case(1)
    monkeypatch.setenv("TF_DCN_CPU_ISA", "avx2")
    y1, g1, _ = _run_case(1)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bad_isa_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("TF_DCN_CPU_ISA", "avx512-please")
    with pytest.raises(tf.errors.InvalidArgumentError, match="TF_DCN_CPU_ISA"):
        _run_case(2)


def test_no_avx_instruction_outside_the_avx2_build():
    tf_dcn.load_ops()
    vex_in_avx2, leaked = avx_instructions_outside_avx2(_loader.loaded_library())
    assert vex_in_avx2 > 0, "the AVX2 build is missing from the library"
    assert not leaked, sorted(leaked)[:10]


def test_avx2_object_is_linked_last():
    """The baseline copy of any inline function both builds emit must win at link time, so the
    AVX2 object must come after every other object (the Makefile links in OPS_SRCS order)."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sources = subprocess.run(["make", "-s", "print-sources"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.split()
    avx2 = [i for i, src in enumerate(sources) if src.endswith("_avx2.cc")]
    assert avx2, sources
    assert avx2 == list(range(len(sources) - len(avx2), len(sources))), sources
