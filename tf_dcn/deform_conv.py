"""``deform_conv2d``: deformable convolution v1 and modulated v2 (NHWC), and its gradient."""

from __future__ import annotations

import tensorflow as tf

from tf_dcn._arguments import (FLOAT_DTYPES, IntOrPair, Padding, check_rank, convert_to_dtype,
                               normalize_conv_arguments, static_dim)
from tf_dcn._loader import load_ops

_FORWARD_OP = "TfDcn>DeformableConv2D"
_GRAD_OP = "TfDcn>DeformableConv2DGrad"


def check_deform_conv2d_shapes(inputs: tf.Tensor, offsets: tf.Tensor, kernel: tf.Tensor,
                               mask: tf.Tensor | None, bias: tf.Tensor | None, groups: int,
                               deformable_groups: int) -> None:
    """The statically checkable shape rules of deform_conv2d (shared with tf_dcn.composite).

    Raises ValueError naming the argument; dimensions that are unknown are left to the kernel.
    """
    check_rank(inputs, 4, "inputs", "[N, H, W, C]")
    check_rank(offsets, 4, "offsets", "[N, Ho, Wo, 2*DG*kh*kw]")
    check_rank(kernel, 4, "kernel", "[kh, kw, C/groups, Cout]")
    if mask is not None:
        check_rank(mask, 4, "mask", "[N, Ho, Wo, DG*kh*kw]")
    if bias is not None:
        check_rank(bias, 1, "bias", "[Cout]")
    channels = static_dim(inputs, 3)
    if channels is not None:
        if channels % groups:
            raise ValueError(
                f"groups: input channels ({channels}) are not divisible by groups ({groups})")
        if channels % deformable_groups:
            raise ValueError(
                f"deformable_groups: input channels ({channels}) are not divisible by "
                f"deformable_groups ({deformable_groups})"
            )
        k_in = static_dim(kernel, 2)
        if k_in is not None and k_in != channels // groups:
            raise ValueError(
                f"kernel: expected {channels // groups} input channels (C/groups) in "
                f"dimension 2, got shape {kernel.shape}"
            )
    cout = static_dim(kernel, 3)
    if cout is not None and cout % groups:
        raise ValueError(
            f"groups: output channels of kernel ({cout}) are not divisible by groups ({groups})")
    kh, kw = static_dim(kernel, 0), static_dim(kernel, 1)
    n_off = static_dim(offsets, 3)
    if kh is not None and kw is not None and n_off is not None and (
            n_off != 2 * deformable_groups * kh * kw):
        raise ValueError(
            f"offsets: expected last dimension 2*deformable_groups*kh*kw = "
            f"{2 * deformable_groups * kh * kw}, got shape {offsets.shape}"
        )
    if mask is not None and kh is not None and kw is not None:
        n_mask = static_dim(mask, 3)
        if n_mask is not None and n_mask != deformable_groups * kh * kw:
            raise ValueError(
                f"mask: expected last dimension deformable_groups*kh*kw = "
                f"{deformable_groups * kh * kw}, got shape {mask.shape}"
            )
    if bias is not None and cout is not None and static_dim(bias, 0) not in (None, cout):
        raise ValueError(f"bias: expected {cout} elements (Cout), got shape {bias.shape}")


@tf.autograph.experimental.do_not_convert
def deform_conv2d(
    inputs: tf.Tensor,
    offsets: tf.Tensor,
    kernel: tf.Tensor,
    mask: tf.Tensor | None = None,
    bias: tf.Tensor | None = None,
    strides: IntOrPair = 1,
    padding: Padding = "valid",
    dilation_rate: IntOrPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
    name: str | None = None,
) -> tf.Tensor:
    """Deformable 2-D convolution (Dai et al. 2017), modulated (v2, Zhu et al. 2019) with ``mask``.

    Every tap ``(i, j)`` of the kernel, at output pixel ``(ho, wo)``, samples the input bilinearly at
    ``(ho*sh - pad_top + i*dh + dy, wo*sw - pad_left + j*dw + dx)`` where ``(dy, dx)`` is that
    tap's learned offset, multiplies the sample by the tap's mask value (v2) and feeds the result
    to an ordinary convolution. With zero offsets and a mask of ones it equals ``tf.nn.conv2d``.

    Border rule (torchvision's): a sample is 0 unless ``-1 < y < H`` and ``-1 < x < W``; inside,
    each of the four bilinear corners that falls outside the image reads 0. NaN offsets give NaN
    outputs (never a memory access); huge offsets read 0.

    Args:
        inputs: ``[N, H, W, C]`` (NHWC), float16, bfloat16, float32 or float64.
        offsets: ``[N, Ho, Wo, 2*DG*kh*kw]``, same dtype. Last-axis index
            ``(g*kh*kw + i*kw + j)*2 + {0: dy, 1: dx}``: deformable group outermost, taps
            row-major, **dy before dx** (torchvision's/mmcv's channel order moved to the last
            axis: ``offsets_nhwc = offsets_nchw.permute(0, 2, 3, 1)``).
        kernel: ``[kh, kw, C/groups, Cout]`` (the Keras ``Conv2D`` layout; from PyTorch OIHW
            use ``weight.permute(2, 3, 1, 0)``).
        mask: optional ``[N, Ho, Wo, DG*kh*kw]``, index ``g*kh*kw + i*kw + j``; applied as given
            (no sigmoid). ``None`` is v1 (all ones).
        bias: optional ``[Cout]``.
        strides: int or ``(sh, sw)``.
        padding: ``"valid"``, ``"same"`` (TensorFlow's rule), an int, ``(ph, pw)`` or
            ``((top, bottom), (left, right))``. Only top/left move the sampling grid.
        dilation_rate: int or ``(dh, dw)``.
        groups: convolution groups; ``C`` and ``Cout`` must be divisible by it.
        deformable_groups: ``DG``, groups of input channels sharing one offset field; ``C`` must
            be divisible by it (independent of ``groups``).
        name: optional name scope.

    Returns:
        ``[N, Ho, Wo, Cout]`` with ``Ho = (H + pad_top + pad_bottom - (dh*(kh-1)+1)) // sh + 1``
        (same for ``Wo``), in the dtype of ``inputs``. Half types accumulate in float32.

    Raises:
        ValueError: a statically known shape or an argument is wrong.
        tf.errors.InvalidArgumentError: a shape known only at run time is wrong. Messages name the
            argument.

    Memory: the CPU kernel works on tiles of output pixels whose column buffer is about 1 MiB per
    thread; the backward pass keeps at most ``2 * threads`` float32 partials of one image's input
    gradient and of the kernel gradient. Neither grows with the batch size. The CUDA kernels
    (CUDA library, see the README) process chunks of output pixels whose column buffers stay
    under 128 MiB together, plus a float32 input gradient for half types.
    Under ``tf.config.experimental.enable_op_determinism()`` the GPU backward pass is bitwise
    reproducible (no floating-point atomics); the CPU kernels always are.

    Example:
        >>> x = tf.random.normal([2, 16, 16, 8])
        >>> w = tf.random.normal([3, 3, 8, 4])
        >>> off = tf.zeros([2, 16, 16, 2 * 9])
        >>> y = tf_dcn.deform_conv2d(x, off, w, padding="same")  # == tf.nn.conv2d(x, w, 1, "SAME")
        >>> y.shape
        TensorShape([2, 16, 16, 4])
    """
    strides, dilations, padding_mode, explicit_paddings, groups, deformable_groups = (
        normalize_conv_arguments(strides, padding, dilation_rate, groups, deformable_groups))

    with tf.name_scope(name or "deform_conv2d"):
        inputs = tf.convert_to_tensor(inputs, name="inputs")
        dtype = inputs.dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"inputs: dtype must be float16, bfloat16, float32 or float64, got {dtype}")
        offsets = convert_to_dtype(offsets, dtype, "offsets")
        kernel = convert_to_dtype(kernel, dtype, "kernel")
        use_mask = mask is not None
        use_bias = bias is not None
        if use_mask:
            mask = convert_to_dtype(mask, dtype, "mask")
        if use_bias:
            bias = convert_to_dtype(bias, dtype, "bias")
        check_deform_conv2d_shapes(inputs, offsets, kernel, mask, bias, groups,
                                   deformable_groups)
        if not use_mask:
            mask = tf.zeros([0], dtype=dtype)
        if not use_bias:
            bias = tf.zeros([0], dtype=dtype)

        return load_ops().tf_dcn_deformable_conv2d(
            input=inputs,
            offsets=offsets,
            mask=mask,
            kernel=kernel,
            bias=bias,
            strides=list(strides),
            dilations=list(dilations),
            padding=padding_mode,
            explicit_paddings=explicit_paddings,
            groups=groups,
            deformable_groups=deformable_groups,
            use_mask=use_mask,
            use_bias=use_bias,
        )


_ATTRS = (
    "strides",
    "dilations",
    "padding",
    "explicit_paddings",
    "groups",
    "deformable_groups",
    "use_mask",
    "use_bias",
)


@tf.RegisterGradient(_FORWARD_OP)
def _deform_conv2d_grad(op: tf.Operation, grad: tf.Tensor):
    """All five gradients from one fused C++ op; absent mask/bias get empty gradients."""
    attrs = {name: op.get_attr(name) for name in _ATTRS}
    if isinstance(attrs["padding"], bytes):
        attrs["padding"] = attrs["padding"].decode()
    return load_ops().tf_dcn_deformable_conv2d_grad(
        input=op.inputs[0],
        offsets=op.inputs[1],
        mask=op.inputs[2],
        kernel=op.inputs[3],
        bias=op.inputs[4],
        grad_output=grad,
        **attrs,
    )


tf.no_gradient(_GRAD_OP)
