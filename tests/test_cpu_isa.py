"""The CPU kernels are built three times (baseline x86-64, AVX2+FMA+F16C, AVX-512 on top) and
chosen at run time.

Checks that every build computes the same numbers (bitwise on integer-valued inputs, where every
sum is exact whatever the order and whether or not it is fused; closely on random ones), that
TF_DCN_CPU_ISA forces each (and that bad settings of it and of TF_DCN_CPU_WORKSPACE_BYTES are
errors), and that no instruction of a wider set leaked into the code of a
narrower one (the wheel must run on every x86-64 CPU that TensorFlow runs on).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn
from tf_dcn import _loader
from tests import conv_reference as ref
from tests.isa_scan import ISAS, cpu_supports, scan

REPO = Path(__file__).resolve().parents[1]
WIDER_ISAS = [isa for isa in ISAS if isa != "generic"]


def _require(isa: str) -> None:
    if not cpu_supports(isa):
        pytest.skip(f"this CPU cannot run the {isa} build")


def _conv_case(seed: int, integer: bool, wide: bool = False):
    """Forward and all gradients of a modulated deformable convolution with two deformable
    groups: grouped with few channels, or (wide) 20 channels per deformable group and 40 output
    channels, so that the kernels' whole vectors, their remainders and several output panels
    (cpu_panel_product.h) are all used in every build."""
    rng = np.random.default_rng(seed)
    n, h, w, c, cout, groups = (2, 7, 9, 40, 40, 1) if wide else (3, 9, 8, 8, 6, 2)
    shapes = [(n, h, w, c), (n, h, w, 36), (3, 3, c // groups, cout), (n, h, w, 18),
              (n, h, w, cout)]
    if integer:
        # Integer offsets put every sample on a pixel: weights 0/1, every sum exact.
        bounds = [(-4, 5), (-2, 3), (-3, 4), (0, 3), (-2, 3)]
        x, offsets, kernel, mask, upstream = (rng.integers(lo, hi, shape).astype(np.float32)
                                              for (lo, hi), shape in zip(bounds, shapes))
    else:
        bounds = [(-1, 1), (-2, 2), (-1, 1), (0, 1), (-1, 1)]
        x, offsets, kernel, mask, upstream = (rng.uniform(lo, hi, shape).astype(np.float32)
                                              for (lo, hi), shape in zip(bounds, shapes))
    tensors = [tf.constant(a) for a in (x, offsets, kernel, mask)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = tf_dcn.deform_conv2d(tensors[0], tensors[1], tensors[2], mask=tensors[3],
                                 padding="same", groups=groups, deformable_groups=2)
    grads = tape.gradient(y, tensors, output_gradients=tf.constant(upstream))
    return [y.numpy()] + [g.numpy() for g in grads], (x, offsets, kernel, mask)


def _wide_conv_case(seed: int, integer: bool):
    return _conv_case(seed, integer, wide=True)


def _pool_case(seed: int, integer: bool):
    """Forward and gradients of deformable PS-RoI pooling and deformable RoI pooling."""
    rng = np.random.default_rng(seed)
    # spatial_scale 1 and 8-pixel boxes: bins of 4 and samples 2 apart, at half-integer positions;
    # offsets move them by multiples of trans_std * 8 = 0.5. Bilinear weights are then multiples
    # of 1/4 and every sum is exact.
    features = (rng.integers(-4, 5, (2, 12, 12, 2 * 2 * 3)) if integer
                else rng.uniform(-1, 1, (2, 12, 12, 12))).astype(np.float32)
    corners = rng.integers(0, 4, (5, 2))
    rois = np.concatenate([rng.integers(0, 2, (5, 1)), corners, corners + 7], axis=1)
    offsets = (rng.integers(-2, 3, (5, 2, 2, 2)) if integer
               else rng.uniform(-1, 1, (5, 2, 2, 2))).astype(np.float32)
    upstream = (rng.integers(-2, 3, (5, 2, 2, 3)) if integer
                else rng.uniform(-1, 1, (5, 2, 2, 3))).astype(np.float32)
    results = []
    for pool, kw, up in (
            (tf_dcn.deform_psroi_pool, dict(output_dim=3, group_size=2), upstream),
            (tf_dcn.deform_roi_pool, dict(), np.repeat(upstream, 4, axis=-1))):
        f, o = tf.constant(features), tf.constant(offsets)
        with tf.GradientTape() as tape:
            tape.watch([f, o])
            y = pool(f, tf.constant(rois.astype(np.float32)), o, pooled_size=2, sample_per_part=2,
                     trans_std=1.0 / 16, spatial_scale=1.0, **kw)
        results += [y.numpy()] + [g.numpy() for g in tape.gradient(y, [f, o], up)]
    return results


def _with_isa(monkeypatch, isa, fn, *args):
    monkeypatch.setenv("TF_DCN_CPU_ISA", isa)
    return fn(*args)


def _baseline_and(isa, case, seed, integer, monkeypatch):
    """The outputs of `case` with the baseline build and with build `isa`."""
    _require(isa)
    results = [_with_isa(monkeypatch, name, case, seed, integer) for name in ("generic", isa)]
    return [r[0] if isinstance(r, tuple) else r for r in results]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wide", [False, True], ids=["grouped", "wide"])
def test_forced_isa_matches_reference(isa, wide, monkeypatch):
    _require(isa)
    outputs, (x, offsets, kernel, mask) = _with_isa(monkeypatch, isa, _conv_case, 0, False, wide)
    expected = ref.deform_conv2d(x, offsets, kernel, mask, padding="same",
                                 groups=1 if wide else 2, deformable_groups=2)
    np.testing.assert_allclose(outputs[0], expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("isa", WIDER_ISAS)
@pytest.mark.parametrize("case", [_conv_case, _wide_conv_case, _pool_case],
                         ids=["conv", "wide-conv", "pool"])
def test_isa_is_bitwise_equal_to_baseline_on_integer_inputs(isa, case, monkeypatch):
    baseline, wider = _baseline_and(isa, case, 3, True, monkeypatch)
    assert len(baseline) == len(wider) >= 5
    for i, (a, b) in enumerate(zip(wider, baseline)):
        assert np.any(b != 0), f"output {i} is all zeros: the case exercises nothing"
        assert a.tobytes() == b.tobytes(), (
            f"output {i}: max |difference| {np.max(np.abs(a - b))}")


@pytest.mark.parametrize("isa", WIDER_ISAS)
@pytest.mark.parametrize("case", [_conv_case, _wide_conv_case, _pool_case],
                         ids=["conv", "wide-conv", "pool"])
def test_isa_agrees_with_baseline_on_random_inputs(isa, case, monkeypatch):
    baseline, wider = _baseline_and(isa, case, 1, False, monkeypatch)
    for a, b in zip(wider, baseline):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bad_isa_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("TF_DCN_CPU_ISA", "avx512-please")
    with pytest.raises(tf.errors.InvalidArgumentError, match="TF_DCN_CPU_ISA"):
        _conv_case(2, False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="TF_DCN_CPU_ISA"):
        _pool_case(2, False)


@pytest.mark.parametrize("setting", ["lots", "1e6", "65535", "0", "-1", "99999999999999999999"])
def test_bad_workspace_setting_is_an_error(setting, monkeypatch):
    # The CPU kernels' other environment setting, read at the same place as TF_DCN_CPU_ISA.
    monkeypatch.setenv("TF_DCN_CPU_WORKSPACE_BYTES", setting)
    for case in (_conv_case, _pool_case):
        with pytest.raises(tf.errors.InvalidArgumentError, match="TF_DCN_CPU_WORKSPACE_BYTES"):
            case(2, False)


def test_smallest_workspace_setting_and_empty_are_accepted(monkeypatch):
    monkeypatch.delenv("TF_DCN_CPU_WORKSPACE_BYTES", raising=False)
    def run():
        return _conv_case(2, False)[0] + _pool_case(2, False)

    expected = run()
    for setting in ("65536", ""):
        monkeypatch.setenv("TF_DCN_CPU_WORKSPACE_BYTES", setting)
        for a, b in zip(run(), expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", WIDER_ISAS)
def test_forcing_an_isa_this_cpu_lacks_is_an_error(isa, monkeypatch):
    if cpu_supports(isa):
        pytest.skip(f"this CPU supports {isa}")
    monkeypatch.setenv("TF_DCN_CPU_ISA", isa)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not support"):
        _conv_case(2, False)


def test_no_instruction_of_a_wider_set_outside_its_build():
    tf_dcn.load_ops()
    counts, leaks = scan(_loader.loaded_library())
    assert counts["avx2"] > 0, "the AVX2 build is missing from the library"
    assert counts["avx512"] > 0, "the AVX-512 build is missing from the library"
    assert not leaks["avx2"], ("VEX (AVX) code in baseline functions", sorted(leaks["avx2"])[:10])
    assert not leaks["avx512"], ("EVEX (AVX-512) code outside the AVX-512 build",
                                 sorted(leaks["avx512"])[:10])


def test_wider_isa_objects_are_linked_last_narrowest_first():
    """Where several objects emit the same inline function the first copy wins, so the baseline
    objects must come first, then avx2, then avx512 (the Makefile links in OPS_SRCS order)."""
    sources = subprocess.run(["make", "-s", "print-sources"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    tail = [s for s in sources if s.endswith(("_avx2.cc", "_avx512.cc"))]
    assert [s.rsplit("_", 1)[1] for s in tail] == ["avx2.cc", "avx512.cc"], tail
    assert sources[-2:] == tail, sources
