"""PyTorch-trained weights (mmcv / mmdetection, detectron2, torchvision) into tf-dcn layers, and
back.

A *state dict* here is a mapping from PyTorch parameter names to arrays in PyTorch layout: NumPy
arrays, anything ``np.asarray`` accepts, or ``torch.Tensor`` values. Every loader also accepts a
path: ``.npz`` (``np.savez(path, **{k: v.numpy() for k, v in sd.items()})``), or ``.pth`` /
``.pt`` / ``.bin`` when ``torch`` is installed (imported only then; mmdetection's
``{"state_dict": ...}`` and detectron2's ``{"model": ...}`` wrappers are unwrapped).

Layouts (PyTorch -> Keras):

=============================  ===============================  ================================
PyTorch                        shape                            Keras variable
=============================  ===============================  ================================
``Conv2d.weight``              ``[Cout, C/groups, kh, kw]``     ``kernel`` ``[kh, kw, C/groups,
                                                                Cout]`` = ``w.transpose(2,3,1,0)``
``Conv2d.bias``                ``[Cout]``                       ``bias``
``BatchNorm2d.weight/bias``    ``[C]``                          ``gamma`` / ``beta``
``BatchNorm2d.running_mean``   ``[C]``                          ``moving_mean``
``BatchNorm2d.running_var``    ``[C]``                          ``moving_variance``
``num_batches_tracked``        ``[]`` int64                     consumed, not stored
``Linear.weight``              ``[out, in]``                    ``kernel`` ``[in, out]``
deform conv ``weight``         ``[Cout, C/groups, kh, kw]``     ``DeformableConv2D.kernel``
offset conv ``weight``         ``[2*DG*K (+DG*K), C, kh, kw]``  ``offset_kernel`` ``[kh, kw, C,
                                                                2*DG*K (+DG*K)]``
offset conv ``bias``           ``[2*DG*K (+DG*K)]``             ``offset_bias``
=============================  ===============================  ================================

(``K = kh*kw``, ``DG`` = deformable groups.) The offset branch's output channels need no
permutation: mmcv's ``ModulatedDeformConv2dPack`` and detectron2's ``DeformBottleneckBlock`` chunk
the branch output into ``o1, o2, mask`` and use ``offset = cat(o1, o2)``, so the first
``2*DG*K`` channels are the offsets in the op's order (per deformable group ``g`` and tap ``k``:
``dy`` at ``2*(g*K + k)``, ``dx`` at ``+1``) and the last ``DG*K`` are the mask logits that go
through a sigmoid, which is exactly ``DeformableConv2D``'s owned branch.

Every loader returns a :class:`LoadReport` (``loaded``, ``missing``, ``unexpected``, ``ignored``
key lists). With ``strict=True`` (the default) missing or unexpected keys raise
:class:`StateDictMismatchError` (a ``ValueError`` carrying the report) before any variable is
changed; with ``strict=False`` the keys that are present are loaded and the rest is only
reported. A shape mismatch always raises ``ValueError`` naming the key and both shapes.

Loaders: :func:`load_mmcv_deform_conv` (mmcv ``DeformConv2dPack`` / ``ModulatedDeformConv2dPack``
and mmcv's pre-``conv_offset`` key style), :func:`load_detectron2_deform_conv`,
:func:`load_torchvision_deform_conv`, :func:`load_conv2d`, :func:`load_batchnorm`,
:func:`load_linear`, and :func:`load_pytorch_state_dict` for a whole Keras model whose layers are
named by their PyTorch module paths (as in :mod:`tf_dcn.applications`). Exporters (the reverse,
bit-exact for float32 weights): :func:`deform_conv_to_pytorch`, :func:`conv2d_to_pytorch`,
:func:`batchnorm_to_pytorch`, :func:`linear_to_pytorch` and :func:`to_pytorch_state_dict`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import keras
import numpy as np

from tf_dcn.layers.deformable_conv2d import DeformableConv2D

StateDict = Mapping[str, Any]
StateDictLike = Union[StateDict, str, "os.PathLike[str]"]

_CONV_LAYOUT = "PyTorch layout [Cout, C/groups, kh, kw]"
_OFFSET_LAYOUT = "PyTorch layout [branch channels, C, kh, kw]"
_MAX_LISTED = 30

__all__ = [
    "LoadReport",
    "StateDictMismatchError",
    "read_state_dict",
    "load_mmcv_deform_conv",
    "load_detectron2_deform_conv",
    "load_torchvision_deform_conv",
    "load_conv2d",
    "load_batchnorm",
    "load_linear",
    "load_pytorch_state_dict",
    "deform_conv_to_pytorch",
    "conv2d_to_pytorch",
    "batchnorm_to_pytorch",
    "linear_to_pytorch",
    "to_pytorch_state_dict",
]


# ------------------------------------------------------------------------------------------------
# Reports and errors
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadReport:
    """What a loader did with a state dict.

    Attributes:
        loaded: keys whose arrays were assigned (or, for ``num_batches_tracked``, consumed).
        missing: keys the layers need that the state dict lacks; those variables keep their
            values.
        unexpected: keys in the loader's scope that no variable took.
        ignored: keys deliberately left alone and outside the loader's scope (for example a
            detector's non-backbone weights, or an ImageNet classifier's ``fc.*``); never an error.
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing is missing and nothing unexpected."""
        return not self.missing and not self.unexpected

    def merge(self, other: "LoadReport") -> "LoadReport":
        """A new report with the keys of both (order kept)."""
        return LoadReport(self.loaded + other.loaded, self.missing + other.missing,
                          self.unexpected + other.unexpected, self.ignored + other.ignored)

    def describe(self) -> str:
        """One line per non-empty problem list (keys listed, long lists shortened)."""
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:_MAX_LISTED])
                extra = len(keys) - _MAX_LISTED
                more = f", ... and {extra} more" if extra > 0 else ""
                parts.append(f"{len(keys)} {label} key(s): {shown}{more}")
        return "; ".join(parts) if parts else "all keys matched"

    def __str__(self) -> str:
        return (f"LoadReport(loaded={len(self.loaded)}, missing={len(self.missing)}, "
                f"unexpected={len(self.unexpected)}, ignored={len(self.ignored)}): "
                f"{self.describe()}")


class StateDictMismatchError(ValueError):
    """Raised in strict mode when keys are missing or unexpected; ``.report`` has the lists."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


# ------------------------------------------------------------------------------------------------
# Reading state dicts
# ------------------------------------------------------------------------------------------------
def _to_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - re-raised with the key
        raise ValueError(f"{key}: not an array ({type(value).__name__}): {err}") from None
    if array.dtype == object:
        raise ValueError(f"{key}: not a numeric array (got {type(value).__name__})")
    return array


def _read_torch_file(path: str, trust_pickle: bool) -> Mapping[str, Any]:
    try:
        import torch  # noqa: PLC0415 - optional dependency, imported only for .pth files
    except ImportError:
        raise ImportError(
            f"reading {path!r} needs PyTorch, which is not installed. Either install torch, or "
            "convert the checkpoint once where torch is available: "
            "np.savez('weights.npz', **{k: v.numpy() for k, v in torch.load(path)['state_dict']"
            ".items()}) and pass the .npz file (or a dict of NumPy arrays)"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        if trust_pickle:
            raise
        raise ValueError(
            f"torch.load({path!r}, weights_only=True) failed ({err}); if you trust the file, "
            "call tf_dcn.convert.read_state_dict(path, trust_pickle=True) and pass the result"
        ) from err


def read_state_dict(source: StateDictLike, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a state dict into ``{key: np.ndarray}`` (PyTorch layouts unchanged).

    Args:
        source: a mapping of arrays or ``torch.Tensor`` values, or a path to an ``.npz`` file
            (read with ``allow_pickle=False``) or to a ``.pth`` / ``.pt`` / ``.bin`` file (needs
            ``torch``, imported lazily). Checkpoints of the form ``{"state_dict": {...}, ...}``
            (mmcv / mmdetection) or ``{"model": {...}, ...}`` (detectron2) are unwrapped.
        trust_pickle: for ``.pth`` files, use ``torch.load(weights_only=False)`` (runs arbitrary
            pickled code: only for files you trust). Default ``weights_only=True``.

    Returns:
        A new dict from key to NumPy array, in the source's order.

    Raises:
        ImportError: a ``.pth`` path was given and ``torch`` is not installed.
        ValueError: an unknown file extension, or a value that is not a numeric array.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        lower = path.lower()
        if lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        if lower.endswith((".pth", ".pt", ".bin", ".ckpt")):
            source = _read_torch_file(path, trust_pickle)
        else:
            raise ValueError(
                f"{path!r}: expected an .npz, .pth, .pt or .bin file (or pass a dict of arrays)"
            )
    if not isinstance(source, Mapping):
        raise ValueError(f"a state dict must be a mapping or a path, got {type(source).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = source.get(wrapper)
        if isinstance(inner, Mapping):
            source = inner
            break
    return {str(key): _to_numpy(str(key), value) for key, value in source.items()}


# ------------------------------------------------------------------------------------------------
# Planning: collect (variable, value) pairs, validate everything, then assign
# ------------------------------------------------------------------------------------------------
class _Source:
    """A state dict plus the keys taken from it and the keys found missing."""

    def __init__(self, arrays: dict[str, np.ndarray], in_scope: Callable[[str], bool]):
        self.arrays = arrays
        self.in_scope = in_scope
        self.used: list[str] = []
        self.missing: list[str] = []
        self.plan: list[tuple[Any, np.ndarray]] = []

    def has(self, key: str) -> bool:
        return key in self.arrays

    def take(self, key: str, expected: tuple[int, ...], owner: str, layout: str,
             hint: Callable[[tuple[int, ...]], str] | None = None) -> np.ndarray | None:
        """The array under ``key`` after a shape check, or None (recorded as missing)."""
        if key not in self.arrays:
            self.missing.append(key)
            return None
        array = self.arrays[key]
        if tuple(array.shape) != tuple(expected):
            extra = hint(tuple(array.shape)) if hint else ""
            raise ValueError(
                f"{key}: shape mismatch: the state dict has {tuple(array.shape)}, {owner} expects "
                f"{tuple(expected)} ({layout}){extra}"
            )
        self.used.append(key)
        return array

    def consume(self, key: str) -> None:
        """Marks a key as used when present (``num_batches_tracked``)."""
        if key in self.arrays:
            self.used.append(key)

    def assign_later(self, variable, value: np.ndarray) -> None:
        self.plan.append((variable, value))

    def report(self) -> LoadReport:
        used = set(self.used)
        unexpected = [k for k in self.arrays if self.in_scope(k) and k not in used]
        return LoadReport(loaded=list(dict.fromkeys(self.used)),
                          missing=list(dict.fromkeys(self.missing)), unexpected=unexpected)


def _finish(source: _Source, strict: bool, context: str,
            ignored: Iterable[str] = ()) -> LoadReport:
    report = source.report()
    report.ignored.extend(ignored)
    if strict and not report.complete:
        raise StateDictMismatchError(
            f"{context}: {report.describe()} (nothing was loaded; pass strict=False to load the "
            "matching keys and inspect the returned report)", report)
    for variable, value in source.plan:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return report


def _prefix_scope(*prefixes: str, exclude: tuple[str, ...] = ()) -> Callable[[str], bool]:
    def in_scope(key: str) -> bool:
        return any(key.startswith(p) for p in prefixes) and not any(
            key.startswith(e) for e in exclude)
    return in_scope


def _owner(layer) -> str:
    return f"layer {layer.name!r}"


def _oihw(hwio_shape) -> tuple[int, ...]:
    kh, kw, cin, cout = (int(d) for d in hwio_shape)
    return (cout, cin, kh, kw)


def _to_hwio(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))


def _to_oihw(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def _plan_conv_like(layer, source: _Source, prefix: str) -> None:
    """``weight`` (and ``bias`` when the layer uses one) of a Conv2D or DeformableConv2D."""
    weight = source.take(prefix + "weight", _oihw(layer.kernel.shape), _owner(layer), _CONV_LAYOUT)
    if weight is not None:
        source.assign_later(layer.kernel, _to_hwio(weight))
    if getattr(layer, "bias", None) is not None:
        bias = source.take(prefix + "bias", tuple(layer.bias.shape), _owner(layer), "[Cout]")
        if bias is not None:
            source.assign_later(layer.bias, bias)


def _offset_hint(layer: DeformableConv2D) -> Callable[[tuple[int, ...]], str]:
    def hint(got: tuple[int, ...]) -> str:
        if not got:
            return ""
        two, three = layer.offset_channels, layer.offset_channels + layer.mask_channels
        if got[0] == three and not layer.modulated:
            return (" (the checkpoint's offset branch is modulated, DCNv2: build the layer with "
                    "modulated=True)")
        if got[0] == two and layer.modulated:
            return (" (the checkpoint's offset branch has no mask, DCNv1: build the layer with "
                    "modulated=False)")
        return (f" (branch channels are 2*DG*kh*kw{' + DG*kh*kw' if layer.modulated else ''} "
                f"with DG={layer.deformable_groups}: check deformable_groups and kernel_size)")
    return hint


def _plan_offset_branch(layer: DeformableConv2D, source: _Source,
                        parts: list[tuple[str, int]]) -> None:
    """Fills the owned offset branch from consecutive PyTorch convs (``(prefix, channels)``)."""
    kh, kw, channels, _ = (int(d) for d in layer.offset_kernel.shape)
    weights, biases = [], []
    for prefix, count in parts:
        hint = _offset_hint(layer) if len(parts) == 1 else None
        weights.append(source.take(prefix + "weight", (count, channels, kh, kw), _owner(layer),
                                   _OFFSET_LAYOUT, hint))
        biases.append(source.take(prefix + "bias", (count,), _owner(layer), "[branch channels]",
                                  hint))
    if all(w is not None for w in weights):
        source.assign_later(layer.offset_kernel, _to_hwio(np.concatenate(weights, axis=0)))
    if all(b is not None for b in biases):
        source.assign_later(layer.offset_bias, np.concatenate(biases, axis=0))


def _ensure_built_deform(layer: DeformableConv2D, arrays: dict[str, np.ndarray], prefix: str,
                         owns_branch: bool) -> None:
    """Builds an unbuilt layer from the checkpoint's ``weight`` shape (input channels)."""
    if layer.built:
        return
    weight = arrays.get(prefix + "weight")
    if weight is None or weight.ndim != 4:
        raise ValueError(
            f"{_owner(layer)} is not built and {prefix}weight is absent or not 4-D: call the layer "
            "on an input (or build it) before loading"
        )
    channels = int(weight.shape[1]) * layer.groups

    def shape(c):
        return (None, None, None, c) if layer.data_format == "channels_last" else (None, c, None,
                                                                                   None)
    if owns_branch:
        layer.build(shape(channels))
    else:
        shapes = [shape(channels), shape(layer.offset_channels)]
        if layer.modulated:
            shapes.append(shape(layer.mask_channels))
        layer.build(shapes)


def _ensure_built(layer, arrays: dict[str, np.ndarray], key: str, channel_dim: int,
                  rank: int) -> None:
    if layer.built:
        return
    weight = arrays.get(key)
    if weight is None or weight.ndim <= channel_dim:
        raise ValueError(f"{_owner(layer)} is not built and {key} is absent: call the layer on an "
                         "input (or build it) before loading")
    channels = int(weight.shape[channel_dim]) * getattr(layer, "groups", 1)
    layer.build((None,) * (rank - 1) + (channels,))


def _mmcv_offset_prefix(source_keys: Mapping[str, Any], prefix: str) -> str | None:
    """``{prefix}conv_offset.`` (mmcv >= 1.0 / mmdetection >= PR #1894) or the older
    ``{prefix[:-1]}_offset.`` (``layer2.0.conv2_offset.``); None when neither is present."""
    new = prefix + "conv_offset."
    if new + "weight" in source_keys or new + "bias" in source_keys:
        return new
    if prefix.endswith("."):
        old = prefix[:-1] + "_offset."
        if old + "weight" in source_keys or old + "bias" in source_keys:
            return old
    return None


def _plan_mmcv_deform_conv(layer: DeformableConv2D, source: _Source, prefix: str) -> None:
    _plan_conv_like(layer, source, prefix)
    if layer.owns_offset_branch:
        branch = _mmcv_offset_prefix(source.arrays, prefix) or prefix + "conv_offset."
        _plan_offset_branch(layer, source, [(branch, int(layer.offset_kernel.shape[-1]))])


def _plan_batchnorm(layer, source: _Source, prefix: str) -> None:
    owner = _owner(layer)
    pairs = [("weight", getattr(layer, "gamma", None)), ("bias", getattr(layer, "beta", None)),
             ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)]
    for name, variable in pairs:
        if variable is None:
            continue
        value = source.take(prefix + name, tuple(variable.shape), owner, "[C]")
        if value is not None:
            source.assign_later(variable, value)
    source.consume(prefix + "num_batches_tracked")


def _plan_linear(layer, source: _Source, prefix: str) -> None:
    din, dout = (int(d) for d in layer.kernel.shape)
    weight = source.take(prefix + "weight", (dout, din), _owner(layer), "PyTorch layout [out, in]")
    if weight is not None:
        source.assign_later(layer.kernel, weight.T)
    if getattr(layer, "bias", None) is not None:
        bias = source.take(prefix + "bias", (dout,), _owner(layer), "[out]")
        if bias is not None:
            source.assign_later(layer.bias, bias)


def _check_type(layer, kinds, what: str) -> None:
    if not isinstance(layer, kinds):
        raise TypeError(f"expected a {what}, got {type(layer).__name__} ({layer.name!r})")


# ------------------------------------------------------------------------------------------------
# Public loaders of single layers
# ------------------------------------------------------------------------------------------------
def load_mmcv_deform_conv(layer: DeformableConv2D, state_dict: StateDictLike, prefix: str = "",
                          strict: bool = True) -> LoadReport:
    """Fills a ``DeformableConv2D`` from mmcv's (Modulated)``DeformConv2dPack``.

    Keys (PyTorch layouts, ``K = kh*kw``):

    - ``{prefix}weight`` ``[Cout, C/groups, kh, kw]`` -> ``kernel`` ``[kh, kw, C/groups, Cout]``;
    - ``{prefix}bias`` ``[Cout]`` (only when the layer has ``use_bias=True``; mmdetection's
      backbones use ``bias=False``);
    - ``{prefix}conv_offset.weight`` ``[2*DG*K, C, kh, kw]`` (v1) or ``[3*DG*K, C, kh, kw]`` (v2:
      offsets, then mask logits) -> ``offset_kernel``, and ``{prefix}conv_offset.bias``.
      Checkpoints older than mmdetection PR #1894 name them ``{prefix[:-1]}_offset.weight`` /
      ``.bias`` (``layer2.0.conv2_offset.weight``); both styles are accepted (the new one wins
      when both are present, and the old keys are then reported as unexpected).

    A layer that takes its offsets as inputs (``[x, offsets(, mask)]``, mmcv's plain
    ``DeformConv2d`` / ``ModulatedDeformConv2d``) takes only ``weight`` / ``bias``. An unbuilt
    layer is built from the checkpoint (owned branch when offset keys are present).

    Args:
        layer: the layer to fill; its ``modulated``, ``deformable_groups``, kernel size, groups and
            ``use_bias`` must match the PyTorch module.
        state_dict: mapping of arrays / tensors, or a path (see :func:`read_state_dict`).
        prefix: the module's key prefix including the trailing dot (``"layer2.0.conv2."``), or
            ``""`` for a module's own state dict.
        strict: raise when keys are missing or unexpected (within ``prefix`` and, for the old
            style, ``{prefix[:-1]}_offset.``).

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: a shape mismatch (naming the key and both shapes).
        StateDictMismatchError: ``strict`` and keys missing or unexpected; nothing is assigned.

    Example:
        >>> layer = DeformableConv2D(128, 3, strides=2, padding=1, use_bias=False, modulated=True)
        >>> report = load_mmcv_deform_conv(layer, ckpt, prefix="layer2.0.conv2.")
    """
    _check_type(layer, DeformableConv2D, "tf_dcn.layers.DeformableConv2D")
    arrays = read_state_dict(state_dict)
    scopes = [prefix] + ([prefix[:-1] + "_offset."] if prefix.endswith(".") else [])
    _ensure_built_deform(layer, arrays, prefix,
                         owns_branch=_mmcv_offset_prefix(arrays, prefix) is not None)
    source = _Source(arrays, _prefix_scope(*scopes))
    _plan_mmcv_deform_conv(layer, source, prefix)
    return _finish(source, strict, f"loading {_owner(layer)} from mmcv keys {prefix!r}")


def load_detectron2_deform_conv(layer: DeformableConv2D, state_dict: StateDictLike, prefix: str,
                                offset_prefix: str, strict: bool = True) -> LoadReport:
    """Fills a ``DeformableConv2D`` from detectron2's ``DeformConv`` / ``ModulatedDeformConv`` and
    its separate offset convolution (``DeformBottleneckBlock.conv2`` and ``.conv2_offset``).

    Keys: ``{prefix}weight`` ``[Cout, C/groups, kh, kw]``, ``{prefix}bias`` (when the layer uses a
    bias), ``{offset_prefix}weight`` ``[2*DG*K or 3*DG*K, C, kh, kw]`` and ``{offset_prefix}bias``.
    detectron2's modulated block chunks the offset conv's output into ``o1, o2, mask`` and uses
    ``cat(o1, o2)`` and ``sigmoid(mask)``: the same channel order as the layer's branch. The
    ``{prefix}norm.*`` keys of detectron2's conv-with-norm wrapper are outside this loader's scope:
    load them into the BatchNormalization layer with ``load_batchnorm(bn, sd, prefix + "norm.")``.

    Args:
        layer: the layer; it must own its offset branch (called on one tensor).
        state_dict: mapping or path (see :func:`read_state_dict`).
        prefix: e.g. ``"backbone.res3.0.conv2."``.
        offset_prefix: e.g. ``"backbone.res3.0.conv2_offset."``.
        strict: raise on missing or unexpected keys under either prefix.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: shape mismatch, or the layer takes external offsets.
        StateDictMismatchError: ``strict`` and keys missing or unexpected.
    """
    _check_type(layer, DeformableConv2D, "tf_dcn.layers.DeformableConv2D")
    arrays = read_state_dict(state_dict)
    _ensure_built_deform(layer, arrays, prefix, owns_branch=True)
    if not layer.owns_offset_branch:
        raise ValueError(f"{_owner(layer)} takes its offsets as inputs: detectron2's offset conv "
                         "needs a layer that owns its offset branch (call it on one tensor)")
    source = _Source(arrays, _prefix_scope(prefix, offset_prefix, exclude=(prefix + "norm.",)))
    _plan_conv_like(layer, source, prefix)
    _plan_offset_branch(layer, source, [(offset_prefix, int(layer.offset_kernel.shape[-1]))])
    return _finish(source, strict,
                   f"loading {_owner(layer)} from detectron2 keys {prefix!r}, {offset_prefix!r}")


def load_torchvision_deform_conv(layer: DeformableConv2D, state_dict: StateDictLike,
                                 prefix: str = "", offset_prefix: str | None = None,
                                 mask_prefix: str | None = None,
                                 strict: bool = True) -> LoadReport:
    """Fills a ``DeformableConv2D`` from ``torchvision.ops.DeformConv2d`` and the user's offset
    (and mask) convolutions.

    Keys: ``{prefix}weight`` ``[Cout, C/groups, kh, kw]`` and ``{prefix}bias`` ``[Cout]``
    (torchvision's default ``bias=True``; a layer with ``use_bias=False`` takes none).

    A layer that owns its offset branch also needs ``offset_prefix``: a ``nn.Conv2d`` with the
    same kernel size, stride, padding and dilation as the deformable conv (only its weight shape
    can be checked here), whose output is the ``offset`` argument of ``deform_conv2d``:
    ``{offset_prefix}weight`` ``[2*DG*K, C, kh, kw]`` and ``.bias``. For ``modulated=True``, give
    either ``mask_prefix``, a second such conv ``[DG*K, C, kh, kw]`` whose output the PyTorch model
    passes through ``torch.sigmoid`` as the ``mask`` argument, or no ``mask_prefix`` and an offset
    conv of ``3*DG*K`` channels whose last ``DG*K`` are the mask logits (the mmcv order). A layer
    called on ``[x, offsets(, mask)]`` takes only ``weight`` / ``bias``.

    Args:
        layer: the layer to fill.
        state_dict: mapping or path (see :func:`read_state_dict`).
        prefix: the ``DeformConv2d`` module's prefix (``"dcn."``, or ``""``).
        offset_prefix, mask_prefix: prefixes of the offset and mask convs, or None.
        strict: raise on missing or unexpected keys under the given prefixes.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: shape mismatch, or prefixes that do not fit the layer (an owned branch
            without ``offset_prefix``, offset prefixes for a layer with external offsets, a
            ``mask_prefix`` for a v1 layer).
        StateDictMismatchError: ``strict`` and keys missing or unexpected.
    """
    _check_type(layer, DeformableConv2D, "tf_dcn.layers.DeformableConv2D")
    arrays = read_state_dict(state_dict)
    _ensure_built_deform(layer, arrays, prefix, owns_branch=offset_prefix is not None)
    if layer.owns_offset_branch and offset_prefix is None:
        raise ValueError(f"{_owner(layer)} owns its offset branch: pass offset_prefix (and, for a "
                         "separate mask conv, mask_prefix)")
    if not layer.owns_offset_branch and (offset_prefix is not None or mask_prefix is not None):
        raise ValueError(f"{_owner(layer)} takes its offsets as inputs and has no offset branch "
                         "to fill: pass offset_prefix=None and mask_prefix=None")
    if mask_prefix is not None and not layer.modulated:
        raise ValueError(f"{_owner(layer)} is not modulated (v1): it has no mask channels for "
                         f"mask_prefix={mask_prefix!r}")
    prefixes = [p for p in (prefix, offset_prefix, mask_prefix) if p is not None]
    source = _Source(arrays, _prefix_scope(*prefixes))
    _plan_conv_like(layer, source, prefix)
    if layer.owns_offset_branch:
        if mask_prefix is not None:
            parts = [(offset_prefix, layer.offset_channels), (mask_prefix, layer.mask_channels)]
        else:
            parts = [(offset_prefix, int(layer.offset_kernel.shape[-1]))]
        _plan_offset_branch(layer, source, parts)
    return _finish(source, strict, f"loading {_owner(layer)} from torchvision keys {prefixes}")


def load_conv2d(layer: keras.layers.Conv2D, state_dict: StateDictLike, prefix: str = "",
                strict: bool = True) -> LoadReport:
    """Fills a ``keras.layers.Conv2D`` from ``nn.Conv2d``: ``{prefix}weight`` ``[Cout, C/groups,
    kh, kw]`` -> ``kernel`` ``[kh, kw, C/groups, Cout]``, ``{prefix}bias`` ``[Cout]`` when the
    layer uses a bias. Stride, padding and dilation are the layer's business: PyTorch's symmetric
    padding is ``ZeroPadding2D(p)`` followed by a ``"valid"`` conv (Keras' ``"same"`` pads
    bottom/right more for stride 2). An unbuilt layer is built from the weight's shape.

    Returns a :class:`LoadReport`; raises ``ValueError`` on a shape mismatch and
    :class:`StateDictMismatchError` when ``strict`` and keys under ``prefix`` are missing or
    unexpected.
    """
    _check_type(layer, keras.layers.Conv2D, "keras.layers.Conv2D")
    arrays = read_state_dict(state_dict)
    _ensure_built(layer, arrays, prefix + "weight", 1, 4)
    source = _Source(arrays, _prefix_scope(prefix))
    _plan_conv_like(layer, source, prefix)
    return _finish(source, strict, f"loading {_owner(layer)} from keys {prefix!r}")


def load_batchnorm(layer: keras.layers.BatchNormalization, state_dict: StateDictLike,
                   prefix: str = "", eps: float | None = None, strict: bool = True) -> LoadReport:
    """Fills a ``keras.layers.BatchNormalization`` from ``nn.BatchNorm2d`` / ``SyncBatchNorm``.

    Keys ``[C]``: ``{prefix}weight`` -> ``gamma``, ``bias`` -> ``beta``, ``running_mean`` ->
    ``moving_mean``, ``running_var`` -> ``moving_variance``; ``num_batches_tracked`` (int64
    scalar) is consumed and dropped (PyTorch uses it only with ``momentum=None``). PyTorch's
    default ``eps`` is ``1e-5`` (Keras' is ``1e-3``) and its ``momentum`` 0.1 is Keras'
    ``momentum=0.9``; the checkpoint carries neither.

    Args:
        layer: the layer (``axis`` the channel axis; unbuilt layers are built as channels-last).
        state_dict: mapping or path.
        prefix: e.g. ``"layer1.0.bn1."``.
        eps: when given, set as ``layer.epsilon`` (kept in the layer's config).
        strict: raise on missing or unexpected keys under ``prefix``.

    Returns:
        A :class:`LoadReport`.
    """
    _check_type(layer, keras.layers.BatchNormalization, "keras.layers.BatchNormalization")
    arrays = read_state_dict(state_dict)
    _ensure_built(layer, arrays, prefix + "running_mean", 0, 4)
    source = _Source(arrays, _prefix_scope(prefix))
    _plan_batchnorm(layer, source, prefix)
    report = _finish(source, strict, f"loading {_owner(layer)} from keys {prefix!r}")
    if eps is not None:
        layer.epsilon = float(eps)
    return report


def load_linear(layer: keras.layers.Dense, state_dict: StateDictLike, prefix: str = "",
                strict: bool = True) -> LoadReport:
    """Fills a ``keras.layers.Dense`` from ``nn.Linear``: ``{prefix}weight`` ``[out, in]`` ->
    ``kernel`` ``[in, out]``, ``{prefix}bias`` ``[out]``. Returns a :class:`LoadReport`."""
    _check_type(layer, keras.layers.Dense, "keras.layers.Dense")
    arrays = read_state_dict(state_dict)
    _ensure_built(layer, arrays, prefix + "weight", 1, 2)
    source = _Source(arrays, _prefix_scope(prefix))
    _plan_linear(layer, source, prefix)
    return _finish(source, strict, f"loading {_owner(layer)} from keys {prefix!r}")


# ------------------------------------------------------------------------------------------------
# Whole models: layers named by their PyTorch module paths
# ------------------------------------------------------------------------------------------------
def _weighted_layers(model) -> list:
    """Layers with weights, nested models flattened (their layers keep their own names)."""
    found = []
    for layer in getattr(model, "layers", [model]):
        if isinstance(layer, keras.Model):
            found.extend(_weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def _plan_layer(layer, source: _Source, prefix: str) -> None:
    if isinstance(layer, DeformableConv2D):
        _plan_mmcv_deform_conv(layer, source, prefix)
    elif isinstance(layer, keras.layers.Conv2D):
        _plan_conv_like(layer, source, prefix)
    elif isinstance(layer, keras.layers.BatchNormalization):
        _plan_batchnorm(layer, source, prefix)
    elif isinstance(layer, keras.layers.Dense):
        _plan_linear(layer, source, prefix)
    else:
        raise ValueError(f"{_owner(layer)} of type {type(layer).__name__} has weights but no "
                         "PyTorch mapping (supported: DeformableConv2D, Conv2D, "
                         "BatchNormalization, Dense)")


def load_pytorch_state_dict(model: keras.Model | keras.layers.Layer, state_dict: StateDictLike,
                            prefix: str = "", strict: bool = True,
                            ignore: Iterable[str] = ()) -> LoadReport:
    """Loads a PyTorch state dict into a built Keras model whose layers are named by module path.

    A layer named ``"layer2.0.conv2"`` takes the keys ``{prefix}layer2.0.conv2.*``:
    ``DeformableConv2D`` as in :func:`load_mmcv_deform_conv` (both mmcv key styles), ``Conv2D`` as
    :func:`load_conv2d`, ``BatchNormalization`` as :func:`load_batchnorm`, ``Dense`` as
    :func:`load_linear`. Layers without weights are skipped; nested models are searched too.

    Args:
        model: a built Keras model (or single layer).
        state_dict: mapping or path (see :func:`read_state_dict`).
        prefix: prepended to every layer name (``"backbone."``); keys not starting with it are
            reported as ``ignored``.
        strict: raise when keys are missing or unexpected; nothing is assigned then.
        ignore: key prefixes (after ``prefix``) that are deliberately skipped and reported as
            ``ignored`` (e.g. ``("fc.",)`` for an ImageNet classifier's head).

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: a shape mismatch, or a layer with weights of an unsupported type.
        StateDictMismatchError: ``strict`` and keys missing or unexpected.
    """
    arrays = read_state_dict(state_dict)
    skipped = tuple(prefix + p for p in ignore)
    in_scope = _prefix_scope(prefix, exclude=skipped)
    source = _Source(arrays, in_scope)
    for layer in _weighted_layers(model):
        _plan_layer(layer, source, f"{prefix}{layer.name}.")
    ignored = [k for k in arrays if not in_scope(k)]
    return _finish(source, strict, f"loading model {model.name!r}", ignored=ignored)


# ------------------------------------------------------------------------------------------------
# Export (the reverse)
# ------------------------------------------------------------------------------------------------
def _np(variable) -> np.ndarray:
    return np.array(variable.numpy())


def deform_conv_to_pytorch(layer: DeformableConv2D, prefix: str = "",
                           offset_prefix: str | None = None,
                           mask_prefix: str | None = None) -> dict[str, np.ndarray]:
    """A ``DeformableConv2D``'s weights in PyTorch layout and naming.

    Default (mmcv ``*DeformConv2dPack``): ``{prefix}weight`` ``[Cout, C/groups, kh, kw]``,
    ``{prefix}bias`` (if any), ``{prefix}conv_offset.weight`` ``[2*DG*K (+DG*K), C, kh, kw]`` and
    ``{prefix}conv_offset.bias``. With ``offset_prefix`` the branch goes to a separate conv
    (detectron2 ``conv2_offset``, torchvision), and with ``mask_prefix`` as well (v2 only) its
    last ``DG*K`` channels go to a separate mask conv. The inverse of the loaders, bit-exact.
    """
    _check_type(layer, DeformableConv2D, "tf_dcn.layers.DeformableConv2D")
    out = {prefix + "weight": _to_oihw(_np(layer.kernel))}
    if layer.bias is not None:
        out[prefix + "bias"] = _np(layer.bias)
    if layer.owns_offset_branch:
        weight, bias = _to_oihw(_np(layer.offset_kernel)), _np(layer.offset_bias)
        if mask_prefix is not None:
            if not layer.modulated:
                raise ValueError(f"{_owner(layer)} is not modulated: no mask channels to export")
            if offset_prefix is None:
                raise ValueError("mask_prefix needs offset_prefix")
            split = layer.offset_channels
            out[offset_prefix + "weight"] = weight[:split]
            out[offset_prefix + "bias"] = bias[:split]
            out[mask_prefix + "weight"] = weight[split:]
            out[mask_prefix + "bias"] = bias[split:]
        else:
            branch = prefix + "conv_offset." if offset_prefix is None else offset_prefix
            out[branch + "weight"], out[branch + "bias"] = weight, bias
    return out


def conv2d_to_pytorch(layer: keras.layers.Conv2D, prefix: str = "") -> dict[str, np.ndarray]:
    """``{prefix}weight`` ``[Cout, C/groups, kh, kw]`` and ``{prefix}bias`` (if any)."""
    out = {prefix + "weight": _to_oihw(_np(layer.kernel))}
    if getattr(layer, "bias", None) is not None:
        out[prefix + "bias"] = _np(layer.bias)
    return out


def batchnorm_to_pytorch(layer: keras.layers.BatchNormalization, prefix: str = "",
                         num_batches_tracked: int | None = 0) -> dict[str, np.ndarray]:
    """``weight``, ``bias``, ``running_mean``, ``running_var`` ``[C]`` and, unless
    ``num_batches_tracked`` is None, ``num_batches_tracked`` (an int64 scalar of that value: Keras
    does not count batches)."""
    out = {}
    if getattr(layer, "gamma", None) is not None:
        out[prefix + "weight"] = _np(layer.gamma)
    if getattr(layer, "beta", None) is not None:
        out[prefix + "bias"] = _np(layer.beta)
    out[prefix + "running_mean"] = _np(layer.moving_mean)
    out[prefix + "running_var"] = _np(layer.moving_variance)
    if num_batches_tracked is not None:
        out[prefix + "num_batches_tracked"] = np.array(num_batches_tracked, np.int64)
    return out


def linear_to_pytorch(layer: keras.layers.Dense, prefix: str = "") -> dict[str, np.ndarray]:
    """``{prefix}weight`` ``[out, in]`` and ``{prefix}bias`` ``[out]``."""
    out = {prefix + "weight": _np(layer.kernel).T.copy()}
    if getattr(layer, "bias", None) is not None:
        out[prefix + "bias"] = _np(layer.bias)
    return out


def to_pytorch_state_dict(model: keras.Model | keras.layers.Layer, prefix: str = "",
                          num_batches_tracked: int | None = 0) -> dict[str, np.ndarray]:
    """The weights of a model whose layers are named by PyTorch module paths, as a state dict.

    The inverse of :func:`load_pytorch_state_dict`: ``{prefix}{layer.name}.weight`` etc., in
    PyTorch layouts, deformable convs in mmcv's current key style (``.conv_offset.``). Float32
    weights come back bit-exact; ``num_batches_tracked`` is written as the given value (None
    leaves it out). Save with ``np.savez`` or ``torch.save({k: torch.from_numpy(v) ...})``.
    """
    out: dict[str, np.ndarray] = {}
    for layer in _weighted_layers(model):
        key = f"{prefix}{layer.name}."
        if isinstance(layer, DeformableConv2D):
            out.update(deform_conv_to_pytorch(layer, key))
        elif isinstance(layer, keras.layers.Conv2D):
            out.update(conv2d_to_pytorch(layer, key))
        elif isinstance(layer, keras.layers.BatchNormalization):
            out.update(batchnorm_to_pytorch(layer, key, num_batches_tracked))
        elif isinstance(layer, keras.layers.Dense):
            out.update(linear_to_pytorch(layer, key))
        else:
            raise ValueError(f"{_owner(layer)} of type {type(layer).__name__} has weights but no "
                             "PyTorch mapping")
    return out
