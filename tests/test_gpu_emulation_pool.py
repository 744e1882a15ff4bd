"""The deformable (PS-)RoI pooling GPU launchers (cc/kernels/deform_psroi_pool_launch.h) run by
the host executor (tests/gpu_emulation.py), against the float64 NumPy reference
(tests/psroi_reference.py): forward, features and offsets gradients, every element type, both
the deterministic and the fast (atomic) features gradient, NaN rules and empty inputs.

The emulation runs the CUDA launchers' own code one thread after another, so it checks their
indexing, workspace layout, chunking and orderings, not the device's parallel execution.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tests import gpu_emulation as emu
from tests import psroi_reference as ref
from tests import test_deform_psroi_pool
from tests.gpu.capi_ctypes import RoiBatchCheck

try:
    emu.library()
except FileNotFoundError as exc:  # pragma: no cover - depends on the build
    pytest.skip(str(exc), allow_module_level=True)

GPU_OK = 0
WORKSPACE_TOO_SMALL = -2  # tf_dcn::kGpuWorkspaceTooSmall
TOO_MANY_SAMPLES = -100  # tf_dcn::kGpuPoolTooManySamples


LIB = emu.library()  # with the launchers' exact ctypes signatures


def _f32(x: float) -> float:
    """The value a float attribute (float32) really holds."""
    return float(np.float32(x))


class Pool:
    """One configuration of the op: sizes and attributes (pooled_size/part_size resolved)."""

    def __init__(self, features_shape, num_rois, *, output_dim, group_size, pooled_size,
                 part_size=None, sample_per_part=2, num_classes=0, trans_std=0.1,
                 spatial_scale=1.0):
        self.n, self.h, self.w, self.c = features_shape
        self.r = num_rois
        self.d, self.g, self.p = output_dim, group_size, pooled_size
        self.part = pooled_size if part_size is None else part_size
        self.s = sample_per_part
        self.use_offsets = num_classes > 0
        self.k = max(num_classes, 1)
        self.trans_std, self.spatial_scale = trans_std, spatial_scale
        assert self.c == self.d * self.g * self.g

    def dims(self):
        """The C API's tf_dcn::DeformPSRoIPoolDims, by reference."""
        return ctypes.byref(emu.PoolDims(
            batch=self.n, height=self.h, width=self.w, channels=self.c, num_rois=self.r,
            output_dim=self.d, group_size=self.g, pooled_size=self.p, part_size=self.part,
            sample_per_part=self.s, num_classes=self.k, spatial_scale=self.spatial_scale,
            trans_std=self.trans_std, use_offsets=self.use_offsets))

    def ref_kw(self):
        return dict(output_dim=self.d, group_size=self.g, pooled_size=self.p,
                    part_size=self.part, sample_per_part=self.s, trans_std=_f32(self.trans_std),
                    spatial_scale=_f32(self.spatial_scale))

    def workspace_bytes(self, dtype, deterministic, backward):
        out = ctypes.c_int64(-1)
        code = LIB.tfdcn_pool_workspace_bytes(emu.TYPE_CODES[dtype], 1, self.dims(),
                                              int(deterministic), int(backward),
                                              ctypes.byref(out))
        return code, out.value

    def forward(self, features, rois, offsets, dtype, *, rois_double=True, deterministic=True):
        code, nbytes = self.workspace_bytes(dtype, deterministic, False)
        emu.check(code)
        f = emu.to_storage(features, dtype)
        o = emu.to_storage(offsets, dtype) if self.use_offsets else None
        b = np.ascontiguousarray(rois, np.float64 if rois_double else np.float32)
        out = np.full([self.r, self.p, self.p, self.d], 0x5A5A, emu.storage_dtype(dtype))
        ws = emu.workspace(nbytes)
        emu.check(LIB.tfdcn_pool_forward(
            emu.TYPE_CODES[dtype], int(rois_double), self.dims(), int(deterministic), None,
            emu.ptr(f), emu.ptr(b), emu.ptr(o), emu.ptr(out), emu.ptr(ws), nbytes))
        return emu.from_storage(out, dtype)

    def backward(self, features, rois, offsets, grad_output, dtype, *, rois_double=True,
                 deterministic=True, workspace_bytes=None):
        """(grad_features, grad_offsets or None); the outputs start as garbage."""
        code, nbytes = self.workspace_bytes(dtype, deterministic, True)
        emu.check(code)
        if workspace_bytes is not None:
            nbytes = workspace_bytes
        f = emu.to_storage(features, dtype)
        o = emu.to_storage(offsets, dtype) if self.use_offsets else None
        b = np.ascontiguousarray(rois, np.float64 if rois_double else np.float32)
        g = emu.to_storage(grad_output, dtype)
        gf = np.full(f.shape, 0x5A5A, emu.storage_dtype(dtype))
        go = np.full(o.shape, 0x5A5A, emu.storage_dtype(dtype)) if self.use_offsets else None
        ws = emu.workspace(nbytes)
        code = LIB.tfdcn_pool_backward(
            emu.TYPE_CODES[dtype], int(rois_double), self.dims(), int(deterministic), None,
            emu.ptr(f), emu.ptr(b), emu.ptr(o), emu.ptr(g), emu.ptr(gf), emu.ptr(go),
            emu.ptr(ws), nbytes)
        if workspace_bytes is not None:
            return code
        emu.check(code)
        return emu.from_storage(gf, dtype), None if go is None else emu.from_storage(go, dtype)


def _rounded(x, dtype):
    """x as the launcher sees it in `dtype` (float64 values)."""
    return None if x is None else emu.from_storage(emu.to_storage(x, dtype), dtype)


# ------------------------------------------------------------------------------------------------
# Against the reference (the boxes and configurations of tests/test_deform_psroi_pool.py).
# ------------------------------------------------------------------------------------------------
ROIS = test_deform_psroi_pool.ROIS  # inside, partly/wholly outside, halves, degenerate

CASES = {
    # name: (H, W, output_dim, group_size, pooled_size, part_size, sample_per_part, num_classes,
    #        trans_std, spatial_scale)
    "psroi_g3_no_offsets": (9, 11, 4, 3, 3, None, 2, 0, 0.1, 1.0),
    "psroi_g3_offsets": (9, 11, 4, 3, 3, None, 3, 1, 0.1, 1.0),
    "psroi_class_aware_part2": (9, 11, 4, 3, 3, 2, 3, 2, 0.1, 1.0),
    "psroi_part4_pool3_scale_half": (7, 8, 2, 3, 3, 4, 2, 2, 0.25, 0.5),
    "psroi_pooled4_group2_classes3": (9, 11, 3, 2, 4, None, 2, 3, 0.3, 1.0),
    "roi_pool_g1_classes": (9, 11, 4, 1, 2, None, 3, 4, 0.2, 1.0),
    "roi_pool_g1_no_offsets": (6, 5, 3, 1, 4, None, 2, 0, 0.1, 0.5),
}

# dtype: (rois in float64?, forward atol, gradient rtol, gradient atol)
DTYPES = {
    "float64": (True, 1e-12, 0.0, 1e-10),
    "float32": (False, 2e-5, 1e-5, 5e-5),
    "float16": (False, 1e-3, 2e-3, 2e-3),
    "bfloat16": (True, 8e-3, 1.6e-2, 1.6e-2),
}

_REFERENCE_CACHE = {}


def _fragile_offset_cells(pool, rois, offsets, eps=1e-5):
    """Mask over the offsets gradient [R, part, part, 2K]: True where a bin of that part cell and
    class has a sample within eps of an integer coordinate or of a keep/skip border. There the
    gradient jumps (floor changes side; the derivative at an integer is 0), so float32 position
    arithmetic and the float64 reference may legitimately land on different sides."""
    kw = pool.ref_kw()
    mask = np.zeros([pool.r, pool.part, pool.part, 2 * pool.k], bool)
    for n in range(pool.r):
        geo = ref._roi_geometry(rois[n], kw["spatial_scale"], pool.p, pool.s)
        for ph in range(pool.p):
            for pw in range(pool.p):
                a, b = ph * pool.part // pool.p, pw * pool.part // pool.p
                for cls in range(pool.k):
                    tx = offsets[n, a, b, 2 * cls] * kw["trans_std"]
                    ty = offsets[n, a, b, 2 * cls + 1] * kw["trans_std"]
                    w0 = pw * geo["bin_w"] + geo["x_start"] + tx * geo["roi_w"]
                    h0 = ph * geo["bin_h"] + geo["y_start"] + ty * geo["roi_h"]
                    pos = [w0 + i * geo["sub_w"] for i in range(pool.s)]
                    pos += [h0 + i * geo["sub_h"] for i in range(pool.s)]
                    if any(min(abs(v - round(v)), abs(v + 0.5 - round(v + 0.5))) < eps
                           for v in pos):
                        mask[n, a, b, 2 * cls:2 * cls + 2] = True
    return mask


def _case(name):
    h, w, d, g, p, part, s, k, ts, scale = CASES[name]
    pool = Pool([2, h, w, d * g * g], len(ROIS), output_dim=d, group_size=g, pooled_size=p,
                part_size=part, sample_per_part=s, num_classes=k, trans_std=ts,
                spatial_scale=scale)
    rng = np.random.default_rng(sum(map(ord, name)))
    features = rng.uniform(-1, 1, size=[2, h, w, pool.c])
    offsets = (rng.normal(0, 1.5, size=[len(ROIS), pool.part, pool.part, 2 * k])
               if k else None)
    grad_out = rng.normal(size=[len(ROIS), p, p, d])
    return pool, features, offsets, grad_out


def _reference(name, dtype):
    """Reference outputs for the inputs rounded to dtype."""
    key = (name, dtype)
    if key not in _REFERENCE_CACHE:
        pool, features, offsets, grad_out = _case(name)
        f, o, g = (_rounded(x, dtype) for x in (features, offsets, grad_out))
        out, count = ref.deform_psroi_pool_ref(f, ROIS, o, **pool.ref_kw())
        gf, go = ref.deform_psroi_pool_grad_ref(f, ROIS, o, g, **pool.ref_kw())
        _REFERENCE_CACHE[key] = (out, count, gf, go)
    return _REFERENCE_CACHE[key]


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, dtype, deterministic):
    pool, features, offsets, grad_out = _case(name)
    rois_double, fwd_atol, rtol, atol = DTYPES[dtype]
    want, count, want_f, want_o = _reference(name, dtype)
    # The cases exercise both kept and fully skipped bins.
    assert (count == 0).any() and (count > 0).any()

    got = pool.forward(features, ROIS, offsets, dtype, rois_double=rois_double,
                       deterministic=deterministic)
    np.testing.assert_allclose(got, want, rtol=0 if dtype == "float64" else rtol, atol=fwd_atol)

    gf, go = pool.backward(features, ROIS, offsets, grad_out, dtype, rois_double=rois_double,
                           deterministic=deterministic)
    np.testing.assert_allclose(gf, want_f, rtol=rtol, atol=atol if dtype != "float64" else 1e-12)
    if offsets is None:
        assert go is None
    else:
        assert np.abs(want_o).max() > 0
        if dtype != "float64":
            fragile = _fragile_offset_cells(pool, ROIS, _rounded(offsets, dtype))
            assert fragile.mean() < 0.1
            go, want_o = go[~fragile], want_o[~fragile]
        np.testing.assert_allclose(go, want_o, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("name", ["psroi_class_aware_part2", "psroi_pooled4_group2_classes3",
                                  "roi_pool_g1_classes"])
def test_bitwise_equal_to_cpu_kernel(name, dtype, monkeypatch):
    """The launchers use the CPU kernel's per-element helpers and its per-sample summation order
    in the forward pass, so the emulation reproduces the CPU op's baseline build (no FMA
    contraction, like the emulation) bit for bit there. The CPU backward sums each bin's corner
    weights per pixel before touching the channels (deform_psroi_pool_cpu_kernels.h, BinCells),
    the launchers sample by sample, so the gradients agree up to rounding. (On a GPU, FMA
    contraction may change the last bits.)"""
    import tensorflow as tf

    import tf_dcn

    try:
        tf_dcn.load_ops()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("TF_DCN_CPU_ISA", "generic")
    pool, features, offsets, grad_out = _case(name)
    tf_dtype = {"float64": tf.float64, "float32": tf.float32, "bfloat16": tf.bfloat16}[dtype]
    f, o, g = (None if x is None else tf.constant(_rounded(x, dtype), tf_dtype)
               for x in (features, offsets, grad_out))
    with tf.device("/CPU:0"), tf.GradientTape() as tape:
        tape.watch([f, o])
        out = tf_dcn.deform_psroi_pool(
            f, ROIS, o, output_dim=pool.d, group_size=pool.g, pooled_size=pool.p,
            part_size=pool.part, sample_per_part=pool.s, trans_std=pool.trans_std,
            spatial_scale=pool.spatial_scale)
    cpu = [out] + tape.gradient(out, [f, o], output_gradients=g)
    cpu = [x.numpy().astype(np.float64) for x in cpu]
    got = [pool.forward(features, ROIS, offsets, dtype)]
    got += pool.backward(features, ROIS, offsets, grad_out, dtype)
    np.testing.assert_array_equal(cpu[0], got[0])
    tol = {"float64": 1e-12, "float32": 2e-5, "bfloat16": 2e-2}[dtype]
    for a, b in zip(cpu[1:], got[1:]):
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------------------------------------
# Determinism and the two features-gradient paths.
# ------------------------------------------------------------------------------------------------
def _overlapping(rng, num_rois, n, h, w):
    """Boxes that overlap a lot (many contributions per feature element), some partly outside."""
    x1 = rng.uniform(-3, w - 2, num_rois)
    y1 = rng.uniform(-3, h - 2, num_rois)
    x2 = x1 + rng.uniform(1, w, num_rois)
    y2 = y1 + rng.uniform(1, h, num_rois)
    b = rng.integers(0, n, num_rois)
    return np.stack([b, x1, y1, x2, y2], axis=1).astype(np.float64)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_deterministic_is_reproducible_and_agrees_with_fast(dtype):
    rng = np.random.default_rng(7)
    pool = Pool([2, 12, 13, 3 * 4], 24, output_dim=3, group_size=2, pooled_size=4, part_size=3,
                sample_per_part=3, num_classes=3, trans_std=0.2)
    features = rng.uniform(-1, 1, size=[2, 12, 13, 12])
    rois = _overlapping(rng, 24, 2, 12, 13)
    offsets = rng.normal(0, 0.5, size=[24, 3, 3, 6])
    grad_out = rng.normal(size=[24, 4, 4, 3])
    a = pool.backward(features, rois, offsets, grad_out, dtype, deterministic=True)
    b = pool.backward(features, rois, offsets, grad_out, dtype, deterministic=True)
    c = pool.backward(features, rois, offsets, grad_out, dtype, deterministic=False)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(a[0], c[0], rtol=tol, atol=tol)
    np.testing.assert_array_equal(a[1], c[1])  # the offsets gradient is the same code
    assert np.count_nonzero(a[0]) > 0.5 * a[0].size


def test_deterministic_chunks_agree_with_fast():
    """More entries than one chunk (kMaxEntriesPerChunk = 2^21): 32 RoIs * 16 bins * 48^2
    samples * 4 corners = 4.7M entries, three chunks."""
    rng = np.random.default_rng(3)
    pool = Pool([1, 6, 7, 1], 32, output_dim=1, group_size=1, pooled_size=4, sample_per_part=48,
                num_classes=1, trans_std=0.1)
    features = rng.uniform(-1, 1, size=[1, 6, 7, 1])
    rois = _overlapping(rng, 32, 1, 6, 7)
    offsets = rng.normal(0, 0.5, size=[32, 4, 4, 2])
    grad_out = rng.normal(size=[32, 4, 4, 1])
    det = pool.backward(features, rois, offsets, grad_out, "float64", deterministic=True)
    fast = pool.backward(features, rois, offsets, grad_out, "float64", deterministic=False)
    np.testing.assert_allclose(det[0], fast[0], rtol=1e-13, atol=1e-13)
    assert np.count_nonzero(det[0]) == det[0].size


# ------------------------------------------------------------------------------------------------
# Non-finite inputs, empty inputs, workspace.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
@pytest.mark.parametrize("rois_double", [True, False], ids=["rois64", "rois32"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_box_gives_nan_bins(bad, rois_double, deterministic):
    rng = np.random.default_rng(11)
    features = rng.uniform(-1, 1, size=[1, 8, 8, 4])
    rois = np.array([[0, 1, 1, 6, 6], [0, 1, bad, 6, 6]], np.float64)
    offsets = rng.normal(0, 0.1, size=[2, 2, 2, 2])
    grad_out = rng.normal(size=[2, 2, 2, 4])
    kw = dict(output_dim=4, group_size=1, pooled_size=2, sample_per_part=2, num_classes=1)
    pool2, pool1 = Pool([1, 8, 8, 4], 2, **kw), Pool([1, 8, 8, 4], 1, **kw)
    run = dict(rois_double=rois_double, deterministic=deterministic)
    out = pool2.forward(features, rois, offsets, "float64", **run)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))
    gf, go = pool2.backward(features, rois, offsets, grad_out, "float64", **run)
    # The NaN RoI passes nothing to the features; its offsets gradient is NaN.
    gf1, go1 = pool1.backward(features, rois[:1], offsets[:1], grad_out[:1], "float64", **run)
    np.testing.assert_array_equal(gf, gf1)
    np.testing.assert_array_equal(go[0], go1[0])
    assert np.all(np.isfinite(go[0])) and np.all(np.isnan(go[1]))


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
def test_nan_and_huge_offsets(deterministic):
    rng = np.random.default_rng(5)
    features = rng.uniform(-1, 1, size=[1, 8, 8, 1])
    rois = np.array([[0, 1, 1, 6, 6]], np.float64)
    offsets = np.zeros([1, 2, 2, 2])
    offsets[0, 0, 0, 0] = np.nan  # bin (0, 0): NaN
    offsets[0, 0, 1, 1] = 1e30  # bin (0, 1): every sample far outside -> 0
    offsets[0, 1, 0, 0] = -np.inf  # bin (1, 0): -> 0
    pool = Pool([1, 8, 8, 1], 1, output_dim=1, group_size=1, pooled_size=2, sample_per_part=2,
                num_classes=1)
    out = pool.forward(features, rois, offsets, "float32", deterministic=deterministic)[0, ..., 0]
    assert np.isnan(out[0, 0]) and out[0, 1] == 0 and out[1, 0] == 0 and np.isfinite(out[1, 1])
    gf, go = pool.backward(features, rois, offsets, np.ones([1, 2, 2, 1]), "float32",
                           deterministic=deterministic)
    # Only bin (1, 1) reaches the features; the NaN bin's offsets get a NaN gradient.
    assert np.all(np.isfinite(gf)) and np.count_nonzero(gf) > 0
    go = go[0]
    assert np.all(np.isnan(go[0, 0])) and np.all(go[0, 1] == 0) and np.all(go[1, 0] == 0)
    assert np.all(np.isfinite(go[1, 1]))
    # Bin (1, 1) alone, as the reference sees it.
    clean = offsets.copy()
    clean[0, :, :, :] = 0.0
    clean[0, 1, 1] = offsets[0, 1, 1]
    grad = np.zeros([1, 2, 2, 1])
    grad[0, 1, 1] = 1.0
    want_f, _ = ref.deform_psroi_pool_grad_ref(_rounded(features, "float32"), rois, clean, grad,
                                              **pool.ref_kw())
    np.testing.assert_allclose(gf, want_f, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_no_rois(dtype, deterministic):
    pool = Pool([2, 5, 6, 8], 0, output_dim=2, group_size=2, pooled_size=3, num_classes=1)
    features = np.ones([2, 5, 6, 8])
    rois = np.zeros([0, 5])
    offsets = np.zeros([0, 3, 3, 2])
    assert pool.forward(features, rois, offsets, dtype, deterministic=deterministic).shape == (
        0, 3, 3, 2)
    gf, go = pool.backward(features, rois, offsets, np.zeros([0, 3, 3, 2]), dtype,
                           deterministic=deterministic)
    assert np.all(gf == 0) and go.shape == (0, 3, 3, 2)


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
def test_empty_feature_map(deterministic):
    pool = Pool([1, 0, 5, 4], 1, output_dim=4, group_size=1, pooled_size=2, num_classes=2)
    rois = np.array([[0, 0, 0, 3, 3]], np.float64)
    offsets = np.ones([1, 2, 2, 4])
    out = pool.forward(np.zeros([1, 0, 5, 4]), rois, offsets, "float32",
                       deterministic=deterministic)
    assert out.shape == (1, 2, 2, 4) and np.all(out == 0)
    gf, go = pool.backward(np.zeros([1, 0, 5, 4]), rois, offsets, np.ones([1, 2, 2, 4]),
                           "bfloat16", deterministic=deterministic)
    assert gf.size == 0 and np.all(go == 0)


def test_workspace():
    pool = Pool([2, 9, 11, 4 * 9], 7, output_dim=4, group_size=3, pooled_size=3,
                sample_per_part=2, num_classes=2)
    for dtype in DTYPES:
        for deterministic in (True, False):
            assert pool.workspace_bytes(dtype, deterministic, False) == (GPU_OK, 0)
        _, fast = pool.workspace_bytes(dtype, False, True)
        _, det = pool.workspace_bytes(dtype, True, True)
        assert 0 < fast < det
    # Half types accumulate the features gradient in a float32 buffer.
    assert pool.workspace_bytes("float16", False, True)[1] >= (
        pool.workspace_bytes("float32", False, True)[1] + 2 * 9 * 11 * 36 * 4)
    # Too little workspace is refused before anything runs.
    features = np.zeros([2, 9, 11, 36])
    offsets = np.zeros([7, 3, 3, 4])
    code = pool.backward(features, ROIS, offsets, np.zeros([7, 3, 3, 4]), "float32",
                         workspace_bytes=pool.workspace_bytes("float32", True, True)[1] - 1)
    assert code == WORKSPACE_TOO_SMALL


def test_absurd_sample_per_part_is_refused_only_when_deterministic():
    pool = Pool([1, 4, 4, 1], 3, output_dim=1, group_size=1, pooled_size=2,
                sample_per_part=2**31 - 1)
    assert pool.workspace_bytes("float32", True, True)[0] == TOO_MANY_SAMPLES
    assert pool.workspace_bytes("float32", False, True)[0] == GPU_OK


# ------------------------------------------------------------------------------------------------
# The batch-index check of the GPU ops (DeformPSRoIPoolGpuCheckBatchIndices) and the kernels'
# guard against a bad index (the op reports it asynchronously, after the kernels ran).
# ------------------------------------------------------------------------------------------------
def _check_batch_indices(batch_indices, batch, rois_double):
    rois = np.zeros((len(batch_indices), 5), np.float64 if rois_double else np.float32)
    rois[:, 0] = batch_indices
    rois[:, 3:] = 4.0
    scratch = np.zeros(2, np.float64)  # the device scratch: 16 bytes
    result = RoiBatchCheck(-7, -7.0)
    emu.check(LIB.tfdcn_pool_check_batch_indices(int(rois_double), len(batch_indices), batch,
                                                  None, emu.ptr(rois), emu.ptr(scratch),
                                                  ctypes.byref(result)))
    return result.first_bad, result.value


@pytest.mark.parametrize("rois_double", [True, False])
@pytest.mark.parametrize("indices, batch, first_bad, value", [
    ([0, 1, 2, 1], 3, 4, 0.0),                 # all valid: first_bad = R
    ([], 2, 0, 0.0),                           # no RoIs
    ([0, 2, 1, 5], 2, 1, 2.0),                 # out of range (== N), then another
    ([1, 0, -1], 2, 2, -1.0),                  # negative
    ([0, 0.5, 7], 2, 1, 0.5),                  # not an integer
    ([0, 1, np.inf, np.nan], 2, 2, np.inf),    # not finite
    ([np.nan, 1], 2, 0, np.nan),
    ([0, 1], 0, 0, 0.0),                       # no images at all: every index is bad
])
def test_batch_index_check_finds_the_first_bad_index(indices, batch, first_bad, value,
                                                     rois_double):
    got_first, got_value = _check_batch_indices(indices, batch, rois_double)
    assert got_first == first_bad
    np.testing.assert_equal(got_value, value)


def test_a_bad_batch_index_reads_no_features_and_gives_nan_bins():
    """The GPU op enqueues the kernels before it learns that a batch index is bad: the kernels
    must read nothing for that RoI (here N = 1, so index 3 would be out of bounds) and write NaN,
    and the backward pass must leave the features gradient of the other RoIs untouched."""
    pool = Pool((1, 6, 6, 4), 3, output_dim=4, group_size=1, pooled_size=2, num_classes=1)
    rng = np.random.default_rng(5)
    features = rng.normal(size=(1, 6, 6, 4))
    rois = np.array([[0, 0, 0, 4, 4], [3, 0, 0, 4, 4], [0.5, 1, 1, 5, 5]], np.float64)
    offsets = rng.normal(size=(3, 2, 2, 2))
    out = pool.forward(features, rois, offsets, "float64")
    one = Pool((1, 6, 6, 4), 1, output_dim=4, group_size=1, pooled_size=2, num_classes=1)
    assert np.isnan(out[1:]).all()
    np.testing.assert_array_equal(out[:1], one.forward(features, rois[:1], offsets[:1], "float64"))
    grad = rng.normal(size=out.shape)
    gf, go = pool.backward(features, rois, offsets, grad, "float64")
    gf1, go1 = one.backward(features, rois[:1], offsets[:1], grad[:1], "float64")
    np.testing.assert_array_equal(gf, gf1)  # the bad RoIs add nothing to the features gradient
    np.testing.assert_array_equal(go[0], go1[0])
    assert np.isnan(go[1:]).all()
