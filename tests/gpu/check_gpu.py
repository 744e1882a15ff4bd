"""GPU check of tf-dcn's CUDA launchers, without TensorFlow.

The one command, from the repository root on a machine with an NVIDIA GPU, PyTorch and torchvision
(and clang-19, or a library built elsewhere by ``run.sh --build-only``, then ``--prebuilt``):

    bash tests/gpu/run.sh

run.sh builds tests/gpu/build/libtfdcn_gpu.so (tests/gpu/capi.cc + cc/kernels/*.cu, the same
launchers the TensorFlow op runs, with cuBLAS as the GEMM) and runs this script, which drives the
library through its C API (ctypes, device pointers from PyTorch tensors, PyTorch's current CUDA
stream) and compares:

  * deformable convolution, forward and all five gradients (input, offsets, mask, kernel, bias),
    against torchvision.ops.deform_conv2d on CUDA run in float64 on the same (rounded) inputs:
    v1/v2, groups 2, deformable groups 2, stride 2, dilation 2, padding, a non-square kernel, a
    multi-chunk case and the benchmark shapes; float64, float32, float16 and bfloat16 (torchvision
    has no bfloat16, hence the float64 reference for every type). Errors are printed as
    rel = max|ours - ref| / max|ref| per tensor, plus the largest absolute error. torchvision takes
    NCHW: our NHWC tensors are transposed, our kernel [kh, kw, C/groups, Cout] becomes its weight
    [Cout, C/groups, kh, kw], our offsets [N, Ho, Wo, DG*kh*kw*2] (dy before dx) and mask
    [N, Ho, Wo, DG*kh*kw] become its [N, C', Ho, Wo] by the same transpose;
  * the deterministic backward pass: bitwise equal over two runs, and equal to the fast (atomic)
    pass within rounding;
  * deformable PS-RoI pooling, forward and gradients, against tests/psroi_reference.py (NumPy,
    float64), with RoIs and offsets chosen so that no sample lies near a floor() kink (there the
    offset gradient is discontinuous and float32 vs float64 positions could pick different sides);
    deterministic backward bitwise reproducible;
  * timing of forward + backward against torchvision (float32 and float16), reported only: the
    goals (ours/torchvision < 1 in float32, < 0.5 in float16) do not affect the exit code.

Exit code 1 if any PASS/FAIL check fails. Environment: TF_DCN_GPU_LIB (library path).
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops import deform_conv2d as tv_deform_conv2d

REPO = Path(__file__).resolve().parents[2]
LIB_PATH = Path(os.environ.get("TF_DCN_GPU_LIB", REPO / "tests" / "gpu" / "build" /
                               "libtfdcn_gpu.so"))
DEVICE = torch.device("cuda")
TYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
         torch.float64: "fp64"}
FAILURES: list[str] = []


# ---- C API ---------------------------------------------------------------------------------

def _load_capi_ctypes():
    """tests/gpu/capi_ctypes.py by path (the tests package imports TensorFlow)."""
    spec = importlib.util.spec_from_file_location("capi_ctypes", Path(__file__).with_name(
        "capi_ctypes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


capi_ctypes = _load_capi_ctypes()
_I64 = ctypes.c_int64


class CApi:
    """The tfdcn_* entry points of libtfdcn_gpu.so with exact ctypes signatures."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.missing = capi_ctypes.declare(self.lib)

    def call(self, name: str, *args) -> None:
        code = getattr(self.lib, name)(*args)
        if code != 0:
            message = self.lib.tfdcn_error_string(code).decode()
            raise RuntimeError(f"{name}: error {code}: {message}")

    def workspace(self, name: str, *args) -> torch.Tensor:
        """Queries a workspace size and allocates it (uint8, at least one byte)."""
        nbytes = _I64(0)
        self.call(name, *args, ctypes.byref(nbytes))
        return torch.empty(max(int(nbytes.value), 1), dtype=torch.uint8, device=DEVICE)


def ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.is_cuda and t.is_contiguous(), "device pointers of contiguous tensors only"
    return t.data_ptr()


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


# ---- reporting -----------------------------------------------------------------------------

def errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max |want|); inf when got has a non-finite entry."""
    got, want = got.double(), want.double()
    if not bool(torch.isfinite(got).all()):
        return math.inf, math.inf
    max_abs = float((got - want).abs().max()) if got.numel() else 0.0
    scale = float(want.abs().max()) if want.numel() else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name:<44} {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def compare_all(name: str, got: dict, want: dict, tol: float) -> None:
    """One line: rel error of every tensor, the worst absolute error, PASS if all rel <= tol."""
    parts, worst_abs, ok = [], 0.0, True
    for key, value in want.items():
        if value is None:
            continue
        max_abs, rel = errors(got[key], value)
        worst_abs = max(worst_abs, max_abs)
        ok = ok and rel <= tol
        parts.append(f"{key} {rel:.1e}")
    report(name, ok, f"rel: {'  '.join(parts)} | max abs {worst_abs:.1e} (tol rel {tol:.0e})")


def guarded(name: str, fn, *args, **kwargs) -> None:
    """Runs one check; an exception is a FAIL line, and the script goes on."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure must be reported, not raised
        report(name, False, f"{type(exc).__name__}: {exc}".splitlines()[0][:160])
        traceback.print_exc(limit=-3, file=sys.stdout)


# ---- deformable convolution ----------------------------------------------------------------

@dataclass(frozen=True)
class ConvSpec:
    n: int
    c: int
    h: int
    w: int
    cout: int
    kh: int = 3
    kw: int = 3
    stride: tuple = (1, 1)
    pad: tuple = (1, 1)  # symmetric per axis (torchvision's padding)
    dil: tuple = (1, 1)
    groups: int = 1
    dg: int = 1
    mask: bool = True
    bias: bool = True

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.pad[0] - self.dil[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pad[1] - self.dil[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    def dims(self):
        """The C API's tf_dcn::DeformConv2DDims."""
        return ctypes.byref(capi_ctypes.ConvDims(
            batch=self.n, in_h=self.h, in_w=self.w, in_c=self.c, out_h=self.ho, out_w=self.wo,
            out_c=self.cout, kernel_h=self.kh, kernel_w=self.kw, stride_h=self.stride[0],
            stride_w=self.stride[1], dilation_h=self.dil[0], dilation_w=self.dil[1],
            pad_top=self.pad[0], pad_left=self.pad[1], groups=self.groups,
            deformable_groups=self.dg, use_mask=self.mask, use_bias=self.bias))


def conv_tensors(spec: ConvSpec, seed: int, offsets: str = "kink_free") -> dict:
    """Random NHWC float64 tensors on the GPU. offsets="kink_free": integer + U(0.15, 0.85) in
    about [-3, 3] (samples far from floor() kinks, some outside the image); "uniform2": U(-2, 2)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low

    k = spec.taps
    off_shape = (spec.n, spec.ho, spec.wo, 2 * spec.dg * k)
    if offsets == "kink_free":
        base = torch.randint(-3, 3, off_shape, generator=gen).double()
        off = base + uniform(off_shape, 0.15, 0.85)
    else:
        off = uniform(off_shape, -2.0, 2.0)
    scale = 1.0 / math.sqrt(k * spec.c // spec.groups)  # outputs of order 1 (fp16-friendly)
    t = {
        "x": uniform((spec.n, spec.h, spec.w, spec.c), -1, 1),
        "offsets": off,
        "mask": uniform((spec.n, spec.ho, spec.wo, spec.dg * k), 0, 1) if spec.mask else None,
        "kernel": uniform((spec.kh, spec.kw, spec.c // spec.groups, spec.cout), -1, 1) * scale,
        "bias": uniform((spec.cout,), -1, 1) if spec.bias else None,
        "grad_out": uniform((spec.n, spec.ho, spec.wo, spec.cout), -1, 1),
    }
    return {key: None if v is None else v.to(DEVICE) for key, v in t.items()}


def cast(t: dict, dtype: torch.dtype) -> dict:
    return {key: None if v is None else v.to(dtype).contiguous() for key, v in t.items()}


def ours_forward(api: CApi, spec: ConvSpec, t: dict, workspace: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    dtype = t["x"].dtype
    if out is None:
        out = torch.empty((spec.n, spec.ho, spec.wo, spec.cout), dtype=dtype, device=DEVICE)
    api.call("tfdcn_conv_forward", TYPE_CODES[dtype], spec.dims(), 0, stream(), ptr(t["x"]),
             ptr(t["offsets"]), ptr(t["mask"]), ptr(t["kernel"]), ptr(t["bias"]), ptr(out),
             ptr(workspace), workspace.numel())
    return out


def ours_backward(api: CApi, spec: ConvSpec, t: dict, deterministic: bool,
                  workspace: torch.Tensor, fill: float | None = math.nan) -> dict:
    """The five gradients; outputs pre-filled with NaN (fill) so unwritten entries show."""
    def new(like):
        if like is None:
            return None
        return torch.empty_like(like) if fill is None else torch.full_like(like, fill)

    g = {"x": new(t["x"]), "offsets": new(t["offsets"]), "mask": new(t["mask"]),
         "kernel": new(t["kernel"]), "bias": new(t["bias"])}
    api.call("tfdcn_conv_backward", TYPE_CODES[t["x"].dtype], spec.dims(), int(deterministic),
             stream(), ptr(t["x"]), ptr(t["offsets"]), ptr(t["mask"]), ptr(t["kernel"]),
             ptr(t["grad_out"]), ptr(g["x"]), ptr(g["offsets"]), ptr(g["mask"]),
             ptr(g["kernel"]), ptr(g["bias"]), ptr(workspace), workspace.numel())
    return g


def conv_workspace(api: CApi, spec: ConvSpec, dtype: torch.dtype, deterministic: bool,
                   backward: bool) -> torch.Tensor:
    return api.workspace("tfdcn_conv_workspace_bytes", TYPE_CODES[dtype], spec.dims(),
                         int(deterministic), int(backward))


def nhwc_to_nchw(v: torch.Tensor | None) -> torch.Tensor | None:
    return None if v is None else v.permute(0, 3, 1, 2).contiguous()


def nchw_to_nhwc(v: torch.Tensor | None) -> torch.Tensor | None:
    return None if v is None else v.permute(0, 2, 3, 1).contiguous()


def kernel_to_torchvision(k: torch.Tensor) -> torch.Tensor:
    """[kh, kw, C/groups, Cout] -> [Cout, C/groups, kh, kw]."""
    return k.permute(3, 2, 0, 1).contiguous()


def kernel_from_torchvision(w: torch.Tensor) -> torch.Tensor:
    """[Cout, C/groups, kh, kw] -> [kh, kw, C/groups, Cout]."""
    return w.permute(2, 3, 1, 0).contiguous()


def torchvision_leaves(spec: ConvSpec, t: dict) -> dict:
    """torchvision's NCHW inputs (leaves requiring grad) from our NHWC tensors."""
    leaves = {
        "x": nhwc_to_nchw(t["x"]),
        "offsets": nhwc_to_nchw(t["offsets"]),
        "mask": nhwc_to_nchw(t["mask"]),
        "kernel": kernel_to_torchvision(t["kernel"]),
        "bias": None if t["bias"] is None else t["bias"].clone(),
    }
    for v in leaves.values():
        if v is not None:
            v.requires_grad_(True)
    return leaves


def torchvision_run(spec: ConvSpec, leaves: dict, grad_out_nchw: torch.Tensor):
    """Forward + backward of torchvision; returns (output NCHW, grads in leaves' layouts)."""
    out = tv_deform_conv2d(leaves["x"], leaves["offsets"], leaves["kernel"], leaves["bias"],
                           stride=spec.stride, padding=spec.pad, dilation=spec.dil,
                           mask=leaves["mask"])
    keys = [key for key, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(out, [leaves[key] for key in keys], grad_out_nchw)
    return out, dict(zip(keys, grads))


def torchvision_reference(spec: ConvSpec, t: dict) -> dict:
    """torchvision in float64 on the given tensors; results in our NHWC layouts."""
    t64 = cast(t, torch.float64)
    out, grads = torchvision_run(spec, torchvision_leaves(spec, t64),
                                 nhwc_to_nchw(t64["grad_out"]))
    return {
        "out": nchw_to_nhwc(out.detach()),
        "dx": nchw_to_nhwc(grads["x"]),
        "doff": nchw_to_nhwc(grads["offsets"]),
        "dmask": nchw_to_nhwc(grads.get("mask")),
        "dw": kernel_from_torchvision(grads["kernel"]),
        "db": grads.get("bias"),
    }


def ours_all(api: CApi, spec: ConvSpec, t: dict, deterministic: bool = False) -> dict:
    dtype = t["x"].dtype
    out = ours_forward(api, spec, t, conv_workspace(api, spec, dtype, False, False))
    g = ours_backward(api, spec, t, deterministic,
                      conv_workspace(api, spec, dtype, deterministic, True))
    torch.cuda.synchronize()
    return {"out": out, "dx": g["x"], "doff": g["offsets"], "dmask": g["mask"],
            "dw": g["kernel"], "db": g["bias"]}


TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2,
              torch.bfloat16: 5e-2}


def check_conv(api: CApi, label: str, spec: ConvSpec, dtype: torch.dtype, seed: int,
               offsets: str = "kink_free") -> None:
    """Ours in `dtype` vs torchvision in float64 on the same dtype-rounded inputs."""
    t = cast(conv_tensors(spec, seed, offsets), dtype)
    got = ours_all(api, spec, t)
    want = torchvision_reference(spec, t)
    compare_all(f"conv {SHORT[dtype]} {label}", got, want, TOLERANCES[dtype])


def check_conv_determinism(api: CApi, spec: ConvSpec, dtype: torch.dtype, tol: float) -> None:
    t = cast(conv_tensors(spec, seed=11), dtype)
    ws = conv_workspace(api, spec, dtype, True, True)
    first = ours_backward(api, spec, t, True, ws)
    second = ours_backward(api, spec, t, True, ws)
    fast = ours_backward(api, spec, t, False, conv_workspace(api, spec, dtype, False, True))
    torch.cuda.synchronize()
    same = all(torch.equal(first[k].view(torch.uint8), second[k].view(torch.uint8))
               for k in first if first[k] is not None)
    worst = max(errors(fast[k], first[k])[1] for k in first if first[k] is not None)
    differs = sum(int((fast[k] != first[k]).sum()) for k in first if first[k] is not None)
    report(f"conv {SHORT[dtype]} deterministic backward", same and worst <= tol,
           f"two deterministic runs bitwise equal: {same}; vs atomic: rel {worst:.1e} "
           f"(tol {tol:.0e}), {differs} entries differ")


CONV_SPECS = {
    "v2 base (pad 1)": ConvSpec(n=2, c=8, h=9, w=10, cout=6),
    "v1 (no mask)": ConvSpec(n=2, c=8, h=9, w=10, cout=6, mask=False),
    "v2 groups 2": ConvSpec(n=2, c=8, h=9, w=10, cout=6, groups=2),
    "v2 deformable groups 2": ConvSpec(n=2, c=8, h=9, w=10, cout=6, dg=2),
    "v2 stride 2": ConvSpec(n=2, c=8, h=11, w=10, cout=6, stride=(2, 2)),
    "v2 dilation 2": ConvSpec(n=2, c=8, h=11, w=10, cout=6, dil=(2, 2)),
    "v1 mixed 3x2 s(2,1) d(1,2) p(1,0) g2 dg4 nobias": ConvSpec(
        n=3, c=8, h=12, w=9, cout=4, kh=3, kw=2, stride=(2, 1), dil=(1, 2), pad=(1, 0),
        groups=2, dg=4, mask=False, bias=False),
}
# 18432 output pixels with C = 256: several chunks of the 128 MiB column budget.
CHUNKED = ConvSpec(n=8, c=256, h=48, w=48, cout=64, groups=2, dg=2)
BENCH = {
    "S1": ConvSpec(n=8, c=64, h=56, w=56, cout=64),
    "S2": ConvSpec(n=4, c=256, h=28, w=28, cout=256),
    "S3": ConvSpec(n=2, c=512, h=14, w=14, cout=512),
    "S4": ConvSpec(n=1, c=32, h=128, w=128, cout=32),
}


def run_conv_checks(api: CApi) -> None:
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    for index, (label, spec) in enumerate(CONV_SPECS.items()):
        for dtype in dtypes:
            guarded(f"conv {SHORT[dtype]} {label}", check_conv, api, label, spec, dtype,
                    seed=100 + index)
    for dtype in [torch.float32, torch.float16]:
        guarded(f"conv {SHORT[dtype]} multi-chunk", check_conv, api,
                "multi-chunk N8 C256 48x48 g2 dg2", CHUNKED, dtype, seed=7)
    for name, spec in BENCH.items():
        for dtype in [torch.float32, torch.float16]:
            guarded(f"conv {SHORT[dtype]} {name}", check_conv, api, f"{name} shape", spec, dtype,
                    seed=200)
    det_spec = ConvSpec(n=4, c=32, h=24, w=24, cout=32, groups=2, dg=2)
    guarded("conv fp32 deterministic backward", check_conv_determinism, api, det_spec,
            torch.float32, 1e-5)
    guarded("conv fp16 deterministic backward", check_conv_determinism, api, det_spec,
            torch.float16, 5e-3)


# ---- deformable PS-RoI pooling -------------------------------------------------------------

def load_psroi_reference():
    """tests/psroi_reference.py by path (the tests package imports TensorFlow)."""
    spec = importlib.util.spec_from_file_location("psroi_reference",
                                                  REPO / "tests" / "psroi_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PoolSpec:
    n: int = 2
    h: int = 16
    w: int = 16
    output_dim: int = 6
    group_size: int = 3
    pooled_size: int = 3
    part_size: int = 3
    sample_per_part: int = 4
    num_classes: int = 2
    num_rois: int = 20
    spatial_scale: float = 0.5
    trans_std: float = 0.1
    use_offsets: bool = True

    @property
    def channels(self) -> int:
        return self.output_dim * self.group_size ** 2

    def dims(self):
        """The C API's tf_dcn::DeformPSRoIPoolDims."""
        return ctypes.byref(capi_ctypes.PoolDims(
            batch=self.n, height=self.h, width=self.w, channels=self.channels,
            num_rois=self.num_rois, output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, part_size=self.part_size,
            sample_per_part=self.sample_per_part,
            num_classes=self.num_classes if self.use_offsets else 1,
            spatial_scale=self.spatial_scale, trans_std=self.trans_std,
            use_offsets=self.use_offsets))


def pool_inputs(spec: PoolSpec, seed: int) -> dict:
    """float64 NumPy inputs. With offsets, every sample position is 0.15 or more away from an
    integer and from a half-integer: RoI corners round to even image coordinates (spatial scale
    1/2, so x_start is a half-integer), RoI sizes are 6 or 12 feature pixels (bin 2 or 4, sub-bin
    0.5 or 1) and offset * trans_std * roi_size = j + f with f in {0.2, 0.35, 0.65, 0.8}.
    Without offsets every position is an integer or a half-integer, exact in float32 too, so the
    strict border test (w < -0.5 is skipped) decides alike on both sides."""
    assert spec.spatial_scale == 0.5 and spec.pooled_size == 3 and spec.sample_per_part == 4
    rng = np.random.default_rng(seed)
    r = spec.num_rois
    rois = np.zeros((r, 5))
    rois[:, 0] = np.arange(r) % spec.n
    sizes = {}
    for axis, (lo_col, hi_col) in enumerate([(1, 3), (2, 4)]):
        start = 2 * rng.integers(-2, 8, r)                  # even, some RoIs partly outside
        size_img = rng.choice([12, 24], r)                   # feature size 6 or 12
        jitter = rng.uniform(-0.4, 0.4, (r, 2))              # removed again by round()
        rois[:, lo_col] = start + jitter[:, 0]
        rois[:, hi_col] = start + size_img - 1 + jitter[:, 1]
        sizes[axis] = size_img * spec.spatial_scale
    features = rng.uniform(-1, 1, (spec.n, spec.h, spec.w, spec.channels))
    offsets = None
    if spec.use_offsets:
        trans_std = float(np.float32(spec.trans_std))  # the C API rounds it to float32
        shift = (rng.integers(-1, 2, (r, spec.part_size, spec.part_size, 2 * spec.num_classes))
                 + rng.choice([0.2, 0.35, 0.65, 0.8],
                              (r, spec.part_size, spec.part_size, 2 * spec.num_classes)))
        roi_size = np.stack([sizes[0], sizes[1]], axis=-1)  # [r, 2]: x (w) then y (h)
        per_axis = np.tile(roi_size, spec.num_classes)      # x, y, x, y, ... per class
        offsets = shift / (trans_std * per_axis[:, None, None, :])
    grad_out = rng.uniform(-1, 1, (r, spec.pooled_size, spec.pooled_size, spec.output_dim))
    return {"features": features, "rois": rois, "offsets": offsets, "grad_out": grad_out}


def ours_pool(api: CApi, spec: PoolSpec, t: dict, rois_double: bool, deterministic: bool,
              backward: bool) -> dict:
    """Forward (backward=False: {"out"}) or backward ({"dfeat", "doff"}) through the C API."""
    dtype = t["features"].dtype
    code = TYPE_CODES[dtype]
    ws = api.workspace("tfdcn_pool_workspace_bytes", code, int(rois_double), spec.dims(),
                       int(deterministic), int(backward))
    common = (code, int(rois_double), spec.dims(), int(deterministic), stream(),
              ptr(t["features"]), ptr(t["rois"]), ptr(t["offsets"]))
    if not backward:
        out = torch.full((spec.num_rois, spec.pooled_size, spec.pooled_size, spec.output_dim),
                         math.nan, dtype=dtype, device=DEVICE)
        api.call("tfdcn_pool_forward", *common, ptr(out), ptr(ws), ws.numel())
        torch.cuda.synchronize()
        return {"out": out}
    dfeat = torch.full_like(t["features"], math.nan)
    doff = None if t["offsets"] is None else torch.full_like(t["offsets"], math.nan)
    api.call("tfdcn_pool_backward", *common, ptr(t["grad_out"]), ptr(dfeat), ptr(doff), ptr(ws),
             ws.numel())
    torch.cuda.synchronize()
    return {"dfeat": dfeat, "doff": doff}


def pool_device_tensors(inputs: dict, dtype: torch.dtype, rois_double: bool) -> dict:
    def dev(v, dt):
        return None if v is None else torch.from_numpy(np.ascontiguousarray(v)).to(DEVICE, dt)

    return {"features": dev(inputs["features"], dtype),
            "rois": dev(inputs["rois"], torch.float64 if rois_double else torch.float32),
            "offsets": dev(inputs["offsets"], dtype),
            "grad_out": dev(inputs["grad_out"], dtype)}


def pool_reference(ref, spec: PoolSpec, t: dict) -> dict:
    """tests/psroi_reference.py on the device tensors' exact values."""
    def host(v):
        return None if v is None else v.double().cpu().numpy()

    kwargs = dict(output_dim=spec.output_dim, group_size=spec.group_size,
                  pooled_size=spec.pooled_size, part_size=spec.part_size,
                  sample_per_part=spec.sample_per_part,
                  trans_std=float(np.float32(spec.trans_std)),
                  spatial_scale=float(np.float32(spec.spatial_scale)))
    out, _ = ref.deform_psroi_pool_ref(host(t["features"]), host(t["rois"]), host(t["offsets"]),
                                       **kwargs)
    dfeat, doff = ref.deform_psroi_pool_grad_ref(host(t["features"]), host(t["rois"]),
                                                 host(t["offsets"]), host(t["grad_out"]),
                                                 **kwargs)
    as_dev = (lambda v: None if v is None else torch.from_numpy(v).to(DEVICE))
    return {"out": as_dev(out), "dfeat": as_dev(dfeat), "doff": as_dev(doff)}


def check_pool(api: CApi, ref, label: str, spec: PoolSpec, dtype: torch.dtype, rois_double: bool,
               tol: float, seed: int) -> None:
    t = pool_device_tensors(pool_inputs(spec, seed), dtype, rois_double)
    got = ours_pool(api, spec, t, rois_double, False, False)
    got.update(ours_pool(api, spec, t, rois_double, False, True))
    want = pool_reference(ref, spec, t)
    compare_all(f"pool {SHORT[dtype]} {label}", got, want, tol)


def check_pool_determinism(api: CApi, spec: PoolSpec) -> None:
    t = pool_device_tensors(pool_inputs(spec, seed=5), torch.float32, False)
    first = ours_pool(api, spec, t, False, True, True)
    second = ours_pool(api, spec, t, False, True, True)
    fast = ours_pool(api, spec, t, False, False, True)
    same = all(torch.equal(first[k].view(torch.uint8), second[k].view(torch.uint8))
               for k in first)
    worst = max(errors(fast[k], first[k])[1] for k in first)
    report("pool fp32 deterministic backward", same and worst <= 1e-5,
           f"two deterministic runs bitwise equal: {same}; vs atomic: rel {worst:.1e} (tol 1e-05)")


def check_batch_index_check(api: CApi) -> None:
    """The pooling ops' device-side batch-index check: the first bad RoI and its value land in
    pinned host memory asynchronously; valid rois report R."""
    cases = [([0, 1, 2, 1], 3, 4, 0.0), ([0, 2, 1, 5], 2, 1, 2.0), ([1, 0, -1], 2, 2, -1.0),
             ([0, 0.5, 7], 2, 1, 0.5), ([0, 1, math.inf], 2, 2, math.inf)]
    # Many RoIs, the last one bad: the atomic minimum across blocks.
    cases.append(([0] * 99_999 + [9], 1, 99_999, 9.0))
    bad = []
    for indices, batch, first_bad, value in cases:
        for rois_double in (False, True):
            rois = torch.zeros((len(indices), 5), dtype=torch.float64 if rois_double else
                               torch.float32)
            rois[:, 0] = torch.tensor(indices, dtype=torch.float64)
            rois = rois.to(DEVICE)
            scratch = torch.empty(16, dtype=torch.uint8, device=DEVICE)
            host = torch.zeros(2, dtype=torch.float64).pin_memory()
            api.call("tfdcn_pool_check_batch_indices", int(rois_double), len(indices), batch,
                     stream(), ptr(rois), ptr(scratch), host.data_ptr())
            torch.cuda.current_stream().synchronize()
            result = capi_ctypes.RoiBatchCheck.from_address(host.data_ptr())
            if result.first_bad != first_bad or not (result.value == value):
                bad.append(f"{indices[:4]}{'...' if len(indices) > 4 else ''} -> "
                           f"({result.first_bad}, {result.value}), want ({first_bad}, {value})")
    report("pool batch-index check", not bad, "; ".join(bad) or f"{2 * len(cases)} cases")


def run_pool_checks(api: CApi) -> None:
    pool_api = [name for name in api.missing if name.startswith("tfdcn_pool")]
    if pool_api:
        report("pool", False, f"the library lacks {', '.join(pool_api)}")
        return
    ref = load_psroi_reference()
    spec = PoolSpec()
    guarded("pool fp32 offsets, float32 rois", check_pool, api, ref,
            "G3 P3 offsets, float32 rois", spec, torch.float32, False, 1e-4, seed=1)
    guarded("pool fp32 offsets, float64 rois", check_pool, api, ref,
            "G3 P3 offsets, float64 rois", spec, torch.float32, True, 1e-4, seed=2)
    guarded("pool fp32 no offsets", check_pool, api, ref, "G3 P3 no offsets",
            PoolSpec(use_offsets=False, num_classes=1), torch.float32, False, 1e-4, seed=3)
    guarded("pool fp16 offsets", check_pool, api, ref, "G3 P3 offsets, float32 rois", spec,
            torch.float16, False, 1e-2, seed=4)
    guarded("pool fp32 deterministic backward", check_pool_determinism, api, spec)
    guarded("pool batch-index check", check_batch_index_check, api)


# ---- timing --------------------------------------------------------------------------------

WARMUP, ITERS = 3, 15


def median_ms(fn) -> float:
    """Median CUDA-event time of fn() on the current stream, after WARMUP untimed calls."""
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(ITERS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def time_ours(api: CApi, spec: ConvSpec, t: dict, deterministic: bool) -> float:
    dtype = t["x"].dtype
    # One workspace, large enough for both passes, allocated once here: not timed.
    fwd = conv_workspace(api, spec, dtype, False, False)
    bwd = conv_workspace(api, spec, dtype, deterministic, True)
    ws = fwd if fwd.numel() >= bwd.numel() else bwd

    def step():  # timed: output + gradient allocation (caching allocator), forward, backward
        ours_forward(api, spec, t, ws)
        ours_backward(api, spec, t, deterministic, ws, fill=None)

    return median_ms(step)


def time_torchvision(spec: ConvSpec, t: dict) -> float:
    leaves = torchvision_leaves(spec, t)
    grad_out = nhwc_to_nchw(t["grad_out"])

    def step():  # timed: torchvision forward + autograd backward to all five inputs
        torchvision_run(spec, leaves, grad_out)

    return median_ms(step)


def run_timing(api: CApi) -> None:
    print("\ntiming: median of %d CUDA-event-timed iterations after %d warm-ups; one iteration ="
          " forward + backward (all five gradients), output/gradient tensors allocated inside\n"
          "the iteration by PyTorch's caching allocator; ours: workspace (max of forward and "
          "backward sizes) allocated once before timing, not timed; 'det' = deterministic\n"
          "backward. 3x3, padding 1, v2 with mask and bias, offsets U(-2, 2). Goal: ours/tv < 1 "
          "(fp32), < 0.5 (fp16); reported, not a PASS/FAIL check." % (ITERS, WARMUP))
    print(f"{'shape (N,Cin,H,W,Cout)':<26}{'dtype':<6}{'ours ms':>9}{'det ms':>9}{'tv ms':>9}"
          f"{'ours/tv':>9}{'det/tv':>9}  goal")
    for name, spec in BENCH.items():
        for dtype, goal in [(torch.float32, 1.0), (torch.float16, 0.5)]:
            label = f"{name} ({spec.n},{spec.c},{spec.h},{spec.w},{spec.cout})"
            try:
                t = cast(conv_tensors(spec, seed=300, offsets="uniform2"), dtype)
                ours = time_ours(api, spec, t, False)
                det = time_ours(api, spec, t, True)
                tv = time_torchvision(spec, t)
                ratio = ours / tv
                print(f"{label:<26}{SHORT[dtype]:<6}{ours:9.3f}{det:9.3f}{tv:9.3f}{ratio:9.2f}"
                      f"{det / tv:9.2f}  {'met' if ratio < goal else 'MISSED'} (<{goal})",
                      flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"{label:<26}{SHORT[dtype]:<6} error: {type(exc).__name__}: {exc}")
            torch.cuda.empty_cache()


# ---- main ----------------------------------------------------------------------------------

def main() -> int:
    started = time.time()
    if not torch.cuda.is_available():
        print("FAIL  no CUDA device visible to PyTorch")
        return 1
    # float32 means float32: no TF32 in torchvision's GEMMs either (cuBLAS in ours has none).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} "
          f"GiB); torch {torch.__version__} (CUDA {torch.version.cuda}); torchvision "
          f"{torchvision.__version__}")
    print(f"library: {LIB_PATH}")
    api = CApi(LIB_PATH)
    runtimes = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libcudart" in line})
    status = api.lib.tfdcn_driver_status()
    report("CUDA 12 runtime and driver found by the forwarders", status == 0,
           f"status {status} ({api.lib.tfdcn_error_string(status).decode()}); "
           f"runtimes mapped: {', '.join(runtimes) or 'none'}")
    report("library is the CUDA build", api.lib.tfdcn_on_device() == 1,
           f"tfdcn_on_device() = {api.lib.tfdcn_on_device()}; missing entry points: "
           f"{', '.join(api.missing) or 'none'}")
    run_conv_checks(api)
    run_pool_checks(api)
    run_timing(api)
    print(f"\n{len(FAILURES)} check(s) failed{': ' + ', '.join(FAILURES) if FAILURES else ''}; "
          f"{time.time() - started:.0f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
