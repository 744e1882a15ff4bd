"""tf2onnx handler: ``TfDcn>DeformableConv2D`` (NHWC) as one ONNX ``DeformConv`` (NCHW, opset 19).

Imported by :func:`tf_dcn.export_onnx` only (it needs tf2onnx, the ``[onnx]`` extra). The
decorator registers the handler with tf2onnx's op table when this module is imported.

What maps to what:

* ``input [N, H, W, C]`` -> ``X [N, C, H, W]``; ``offsets [N, Ho, Wo, 2*DG*kh*kw]`` (per tap dy
  before dx, deformable group outermost, taps row-major) -> ``offset [N, 2*DG*kh*kw, Ho, Wo]``,
  the same order on the channel axis, which is ONNX's; ``mask [N, Ho, Wo, DG*kh*kw]`` ->
  ``mask [N, DG*kh*kw, Ho, Wo]``; ``kernel [kh, kw, C/groups, Cout]`` -> ``W [Cout, C/groups,
  kh, kw]``; ``bias`` unchanged; the output is transposed back to NHWC.
* ``strides``, ``dilations`` -> the same; ``groups`` -> ``group``; ``deformable_groups`` ->
  ``offset_group``; ``padding`` -> ``pads = [top, left, bottom, right]`` (ONNX's DeformConv has
  no ``auto_pad``, so TensorFlow's ``SAME`` rule is evaluated here, from the input's static
  height and width when the stride is above 1).
"""

from __future__ import annotations

from tf2onnx.handler import tf_op

#: tf2onnx 1.17 writes opsets up to 18, one below DeformConv's: the handler emits its nodes in
#: this domain, and export_onnx moves them to the standard domain once the model's opset is
#: raised (with onnx.version_converter).
PLACEHOLDER_DOMAIN = "tf_dcn.deform_conv"
NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]
HWIO_TO_OIHW = [3, 2, 0, 1]


class ExportError(ValueError):
    """A DeformableConv2D node that ONNX's DeformConv cannot express."""


#: The ExportErrors of the current conversion: tf2onnx logs a handler's exception and goes on,
#: so export_onnx clears this list before converting and raises the first one afterwards.
ERRORS: list[ExportError] = []


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding ``(before, after)`` of one spatial axis."""
    output = -(-size // stride)
    total = max((output - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def onnx_pads(padding: str, explicit: list[int], input_hw: list[int], kernel_hw: list[int],
              strides: list[int], dilations: list[int], node_name: str) -> list[int]:
    """``pads [top, left, bottom, right]`` of the op's padding attributes (``input_hw`` may
    hold -1 for an unknown size)."""
    if padding == "VALID":
        return [0, 0, 0, 0]
    if padding == "EXPLICIT":
        top, bottom, left, right = explicit
        return [top, left, bottom, right]
    pairs = []
    for axis in range(2):
        size, kernel, stride, dilation = (input_hw[axis], kernel_hw[axis], strides[axis],
                                          dilations[axis])
        if stride == 1:  # the total padding no longer depends on the size
            total = (kernel - 1) * dilation
            pairs.append((total // 2, total - total // 2))
        elif size is None or size < 0:
            raise ExportError(
                f"export_onnx: the deformable convolution {node_name!r} uses padding='same' with "
                f"strides={tuple(strides)}: its padding depends on the input's height and "
                "width, which are not fixed here (ONNX DeformConv has no auto_pad). Pass an "
                "input_signature with a fixed height and width, or use explicit padding.")
        else:
            pairs.append(_same_padding(size, kernel, stride, dilation))
    return [pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1]]


def _transposed(ctx, name: str, perm: list[int]) -> str:
    node = ctx.make_node("Transpose", [name], attr={"perm": perm})
    shape = ctx.get_shape(name)
    if shape is not None:
        ctx.set_shape(node.output[0], [shape[p] for p in perm])
    ctx.set_dtype(node.output[0], ctx.get_dtype(name))
    return node.output[0]


@tf_op("TfDcn>DeformableConv2D")
class DeformableConv2DToDeformConv:
    """tf2onnx conversion of the deformable convolution op (a DeformConv placeholder node)."""

    @classmethod
    def version_18(cls, ctx, node, **kwargs):
        try:
            cls._convert(ctx, node)
        except ExportError as error:
            ERRORS.append(error)
            raise

    @classmethod
    def _convert(cls, ctx, node):
        x, offsets, mask, kernel, bias = node.input
        use_mask = bool(node.get_attr_value("use_mask"))
        use_bias = bool(node.get_attr_value("use_bias"))
        strides = [int(v) for v in node.get_attr_value("strides")]
        dilations = [int(v) for v in node.get_attr_value("dilations")]
        padding = node.get_attr_value("padding")
        padding = padding.decode() if isinstance(padding, bytes) else padding
        explicit = [int(v) for v in node.get_attr_value("explicit_paddings") or []]
        kernel_shape = ctx.get_shape(kernel)
        if kernel_shape is None or any(v is None or v < 0 for v in kernel_shape):
            raise ExportError(f"export_onnx: the kernel shape of {node.name!r} must be static, "
                              f"got {kernel_shape}")
        input_shape = ctx.get_shape(x) or [-1, -1, -1, -1]
        pads = onnx_pads(padding, explicit, input_shape[1:3], kernel_shape[:2], strides,
                         dilations, node.name)
        output, = node.output
        output_shape, dtype = ctx.get_shape(output), ctx.get_dtype(output)
        inputs = [_transposed(ctx, x, NHWC_TO_NCHW), _transposed(ctx, kernel, HWIO_TO_OIHW),
                  _transposed(ctx, offsets, NHWC_TO_NCHW), bias if use_bias else "",
                  _transposed(ctx, mask, NHWC_TO_NCHW) if use_mask else ""]
        while inputs[-1] == "":
            inputs.pop()
        ctx.remove_node(node.name)
        conv = ctx.make_node(
            "DeformConv", inputs, attr={
                "kernel_shape": kernel_shape[:2], "strides": strides, "dilations": dilations,
                "pads": pads, "group": int(node.get_attr_value("groups")),
                "offset_group": int(node.get_attr_value("deformable_groups"))},
            shapes=[None if output_shape is None else [output_shape[p] for p in NHWC_TO_NCHW]],
            dtypes=[dtype], op_name_scope=node.name, domain=PLACEHOLDER_DOMAIN)
        ctx.make_node("Transpose", conv.output, attr={"perm": NCHW_TO_NHWC}, outputs=[output],
                      shapes=[output_shape], dtypes=[dtype], op_name_scope=node.name)
