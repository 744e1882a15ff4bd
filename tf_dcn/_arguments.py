"""Validation and normalisation of the arguments shared by the op wrappers, the composites and
the layers (int-or-pair, padding, positive ints, op attributes, float dtypes)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence, Union

import tensorflow as tf

IntOrPair = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]

#: The dtypes of the features/inputs the ops and the composites accept.
FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def normalize_pair(value: IntOrPair, name: str, minimum: int = 1) -> tuple[int, int]:
    """Returns ``(v, v)`` for an int or the pair itself; raises ValueError naming ``name``."""
    if _is_int(value):
        pair = (int(value), int(value))
    else:
        try:
            items = tuple(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(items) != 2 or not all(_is_int(v) for v in items):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (int(items[0]), int(items[1]))
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def normalize_padding(padding: Padding) -> tuple[str, list[int]]:
    """Maps the public ``padding`` argument to the op's ``(padding, explicit_paddings)`` attrs.

    Accepts ``"valid"``, ``"same"`` (TensorFlow's rule), an int ``p`` (all sides), a pair
    ``(ph, pw)`` (top=bottom=ph, left=right=pw) or ``((top, bottom), (left, right))``.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in ("VALID", "SAME"):
            raise ValueError(f"padding must be 'valid', 'same' or explicit ints, got {padding!r}")
        return mode, []
    if _is_int(padding):
        sides = [int(padding)] * 4
    else:
        try:
            items = tuple(padding)
        except TypeError:
            raise ValueError(f"padding: unsupported value {padding!r}") from None
        if len(items) == 2 and all(_is_int(v) for v in items):
            sides = [int(items[0]), int(items[0]), int(items[1]), int(items[1])]
        elif len(items) == 2 and all(
            not _is_int(v) and not isinstance(v, str) and len(tuple(v)) == 2 and all(
                _is_int(x) for x in v) for v in items
        ):
            (top, bottom), (left, right) = items
            sides = [int(top), int(bottom), int(left), int(right)]
        else:
            raise ValueError(
                "padding must be 'valid', 'same', an int, a pair (ph, pw) or "
                f"((top, bottom), (left, right)), got {padding!r}"
            )
    if min(sides) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return "EXPLICIT", sides


def conv_output_size(size: int | None, kernel: int, stride: int, dilation: int, mode: str,
                     before: int = 0, after: int = 0) -> int | None:
    """Output length of one axis, the same formula as the C++ shape function (None if unknown)."""
    if size is None:
        return None
    effective = dilation * (kernel - 1) + 1
    if mode == "SAME":
        return -(-size // stride)
    padded = size + before + after
    if padded < effective:
        return None
    return (padded - effective) // stride + 1


def static_dim(tensor: tf.Tensor, axis: int) -> int | None:
    """The statically known size of ``axis``, or None (unknown rank or dimension)."""
    return tensor.shape[axis] if tensor.shape.rank is not None else None


def check_rank(tensor: tf.Tensor, rank: int, name: str, layout: str) -> None:
    """ValueError naming ``name`` when the static rank is known and differs from ``rank``."""
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor {layout}, got shape {tensor.shape}")


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; ValueError naming ``name`` otherwise."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def positive_int32(value, name: str) -> int:
    """``value`` as an int in ``[1, 2**31 - 1]`` (an int32 op attribute); ValueError naming
    ``name`` otherwise. Accepts any integral number (``np.int64`` too) but not ``bool``."""
    if not _is_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 1 <= int(value) <= _INT32_MAX:
        raise ValueError(
            f"{name} must be a positive int no larger than {_INT32_MAX}, got {value!r}")
    return int(value)


def non_negative_float32(value, name: str) -> float:
    """``value`` as a finite float in ``[0, float32 max]`` (a float32 op attribute); ValueError
    naming ``name`` otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or value > _FLOAT32_MAX:
        raise ValueError(
            f"{name} must be a finite non-negative number (a float32 attribute), got {value!r}"
        )
    return value


def normalize_pool_arguments(output_dim, group_size, pooled_size, part_size, sample_per_part,
                             trans_std, spatial_scale):
    """``(output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std,
    spatial_scale)`` of the pooling op wrapper and composite, checked (ValueError naming the
    argument); ``pooled_size`` defaults to ``group_size`` and ``part_size`` to ``pooled_size``."""
    output_dim = positive_int32(output_dim, "output_dim")
    group_size = positive_int32(group_size, "group_size")
    pooled_size = group_size if pooled_size is None else positive_int32(pooled_size, "pooled_size")
    part_size = pooled_size if part_size is None else positive_int32(part_size, "part_size")
    sample_per_part = positive_int32(sample_per_part, "sample_per_part")
    trans_std = non_negative_float32(trans_std, "trans_std")
    spatial_scale = non_negative_float32(spatial_scale, "spatial_scale")
    return output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std, spatial_scale


def convert_to_dtype(value, dtype: tf.DType, name: str, like: str = "inputs") -> tf.Tensor:
    """``value`` as a tensor of ``dtype`` (the dtype of argument ``like``). A tensor of another
    dtype raises a ValueError naming both arguments and dtypes (TensorFlow's own message would
    print the whole tensor); Python numbers and NumPy arrays are converted."""
    if tf.is_tensor(value) and value.dtype != dtype:
        raise ValueError(
            f"{name}: dtype must be {dtype.name} (the dtype of {like}), got {value.dtype.name}"
        )
    return tf.convert_to_tensor(value, dtype=dtype, name=name)


def normalize_conv_arguments(strides: IntOrPair, padding: Padding, dilation_rate: IntOrPair,
                             groups: int, deformable_groups: int):
    """``(strides, dilations, padding_mode, explicit_paddings, groups, deformable_groups)`` of
    deform_conv2d's arguments, validated (shared by the op wrapper and the composite)."""
    strides = normalize_pair(strides, "strides")
    dilations = normalize_pair(dilation_rate, "dilation_rate")
    padding_mode, explicit_paddings = normalize_padding(padding)
    return (strides, dilations, padding_mode, explicit_paddings, positive_int(groups, "groups"),
            positive_int(deformable_groups, "deformable_groups"))
