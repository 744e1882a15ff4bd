"""The CPU kernels are built twice (baseline x86-64 and AVX2+FMA+F16C) and chosen at run time.

Checks that both builds compute the same numbers, that TF_DCN_CPU_ISA forces either, and that no
AVX instruction leaked into code that runs on CPUs without AVX2 (the wheel must run on every
x86-64 CPU that TensorFlow runs on).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tf_dcn import _loader
from tests import conv_reference as ref


def _cpu_has_avx2() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(re.search(rf"\b{f}\b", flags) for f in ("avx2", "fma", "f16c"))


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
    if isa == "avx2" and not _cpu_has_avx2():
        pytest.skip("this CPU has no AVX2/FMA/F16C; the AVX2 build cannot run here")
    monkeypatch.setenv("TF_DCN_CPU_ISA", isa)
    y, _, expected = _run_case(0)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


def test_isas_agree_forward_and_backward(monkeypatch):
    if not _cpu_has_avx2():
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
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, installed with gcc) is needed for this check"
    tf_dcn.load_ops()
    library = _loader.loaded_library()
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", library],
                             capture_output=True, text=True, check=True).stdout
    function, leaked, vex_in_avx2 = None, set(), 0
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\s+(\S+)", line)
        if function and insn and insn.group(1).startswith("v") and insn.group(1) not in (
                "verr", "verw"):
            if "avx2::" in function or "TfDcnAvx2Eigen" in function:
                vex_in_avx2 += 1
            else:
                leaked.add(function)
    assert vex_in_avx2 > 0, "the AVX2 build is missing from the library"
    assert not leaked, sorted(leaked)[:10]
