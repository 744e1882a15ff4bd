"""ONNX export: every deformable convolution as the standard ``DeformConv`` operator.

:func:`export_onnx` converts a Keras model with tf2onnx (the ``[onnx]`` extra: ``onnx``,
``onnxruntime``, ``tf2onnx``). Each ``TfDcn>DeformableConv2D`` op becomes one ONNX ``DeformConv``
node (opset 19 and newer) with the NHWC/NCHW transposes around it; the pooling layers are traced
through their composite implementation (plain TensorFlow ops, converted to standard ONNX ops).
The graph that comes out uses only the default ONNX domain unless ``allow_custom_ops=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import tensorflow as tf

from tf_dcn.export import _tf_dcn_layers, switched_implementations
from tf_dcn.layers import DeformableConv2D

__all__ = ["export_onnx", "MIN_OPSET"]

#: The first ONNX opset with ``DeformConv``.
MIN_OPSET = 19
#: The newest opset tf2onnx 1.17 writes.
TF2ONNX_MAX_OPSET = 18
#: tf2onnx's domain for TensorFlow ops kept as they are (``allow_custom_ops=True``).
TENSORFLOW_DOMAIN = "ai.onnx.converters.tensorflow"
_STANDARD_DOMAINS = ("", "ai.onnx")


def _import_onnx_tools():
    try:
        import onnx
        import tf2onnx
    except ImportError as error:
        raise ImportError("tf_dcn.export_onnx needs onnx and tf2onnx: pip install "
                          "'tf-dcn[onnx]' (onnx, onnxruntime, tf2onnx)") from error
    from tf_dcn import _onnx_deform_conv  # noqa: F401  (registers the DeformConv handler)

    return onnx, tf2onnx


def _default_signature(model: keras.Model) -> list[tf.TensorSpec]:
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError("input_signature: the model has no known inputs (a subclassed model "
                         "that was never called); pass input_signature=[tf.TensorSpec(...)]")
    return [tf.TensorSpec(tuple(t.shape), t.dtype, name=getattr(t, "name", None) or f"input_{i}")
            for i, t in enumerate(inputs)]


def _graph_nodes(graph):
    """Every node of an ONNX graph and of its subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                yield from _graph_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_nodes(subgraph)


def _mark_unconverted_ops(onnx, proto, allow_custom_ops: bool) -> None:
    """TensorFlow ops tf2onnx had no conversion for stay in the graph under their TensorFlow
    name: an error naming them, or (``allow_custom_ops``) nodes of tf2onnx's TensorFlow domain."""
    unconverted = [node for node in _graph_nodes(proto.graph)
                   if node.domain in _STANDARD_DOMAINS and not onnx.defs.has(node.op_type)]
    if not unconverted:
        return
    if not allow_custom_ops:
        names = sorted({node.op_type for node in unconverted})
        raise ValueError(
            f"export_onnx: these TensorFlow ops have no standard ONNX form: {names}. A tf-dcn "
            "pooling op called directly (not through a tf_dcn.layers layer, whose pooling is "
            "exported through the composite) can be replaced by tf_dcn.composite's function of "
            "the same name; allow_custom_ops=True keeps such ops as custom-domain nodes.")
    for node in unconverted:
        node.domain = TENSORFLOW_DOMAIN
    proto.opset_import.append(onnx.helper.make_opsetid(TENSORFLOW_DOMAIN, 1))


def _raise_opset(onnx, proto, opset: int, placeholder_domain: str):
    """The tf2onnx model (opset <= 18) at ``opset``, converted op by op with
    ``onnx.version_converter``, and its DeformConv placeholders made standard DeformConv nodes."""
    def placeholders(graph):
        return [node for node in _graph_nodes(graph) if node.domain == placeholder_domain]

    if opset > TF2ONNX_MAX_OPSET:
        hidden = placeholders(proto.graph)
        for node in hidden:  # the converter adapts standard ops only: keep these out of its way
            node.op_type = "DeformConvPlaceholder"
        proto = onnx.version_converter.convert_version(proto, opset)
        for node in placeholders(proto.graph):
            node.op_type, node.domain = "DeformConv", ""
    imports = [entry for entry in proto.opset_import if entry.domain != placeholder_domain]
    del proto.opset_import[:]
    proto.opset_import.extend(imports)
    return proto


def _explicit_same_padding(onnx, proto) -> None:
    """Rewrites stride-1 ``Conv`` nodes with ``auto_pad=SAME_UPPER`` (what tf2onnx writes for
    ``padding="SAME"``) to explicit ``pads``: onnxruntime refuses SAME auto-padding with a
    dilation above 1, as the offset branch of a dilated DeformableConv2D has. With stride 1 the
    padding is ``(k - 1) * dilation`` whatever the input size, the extra pixel after (as
    TensorFlow does), so the rewrite is exact and keeps spatial sizes dynamic."""
    for node in _graph_nodes(proto.graph):
        if node.op_type != "Conv" or node.domain not in _STANDARD_DOMAINS:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        kernel = attributes.get("kernel_shape")
        if auto_pad not in (b"SAME_UPPER", "SAME_UPPER") or kernel is None:
            continue
        dilations = attributes.get("dilations") or [1] * len(kernel)
        if any(stride != 1 for stride in attributes.get("strides") or [1] * len(kernel)):
            continue
        totals = [(k - 1) * d for k, d in zip(kernel, dilations)]
        pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep + [onnx.helper.make_attribute("pads", pads)])


def onnx_op_types(model) -> list[str]:
    """Sorted ``domain:op_type`` (``op_type`` alone for the default domain) of every node."""
    return sorted({(f"{node.domain}:" if node.domain not in _STANDARD_DOMAINS else "")
                   + node.op_type for node in _graph_nodes(model.graph)})


def export_onnx(model: keras.Model, path: str | os.PathLike | None, opset: int = MIN_OPSET,
                input_signature: Sequence[tf.TensorSpec] | None = None, *,
                allow_custom_ops: bool = False):
    """Writes ``model`` as an ONNX file in which every deformable convolution is a ``DeformConv``.

    The model is traced for inference (``training=False``) with the pooling layers switched to
    their composite implementation (standard ONNX ops after conversion) and the convolution
    layers on the op (one ``DeformConv`` each; v1 without ``mask``, v2 with it; groups,
    deformable groups, strides, dilations and asymmetric padding carried over); the layers are
    switched back afterwards. The IR version is the lowest the opset allows (onnx 1.23 would
    write IR 14, which onnxruntime 1.31 refuses), and the file passes ``onnx.checker``.

    Args:
        model: a Keras model (functional, sequential, or subclassed and already called).
        path: the ``.onnx`` file to write (``None``: only return the model).
        opset: the ONNX opset, at least 19 when the model has a ``DeformableConv2D``.
        input_signature: ``tf.TensorSpec`` per model input; default: the model's inputs with
            their Keras shapes (batch dimension dynamic, and whatever else is ``None``).
            ``padding="same"`` with strides above 1 needs a fixed height and width.
        allow_custom_ops: keep ops tf2onnx cannot convert as custom-domain nodes (runnable only
            where a runtime implements them) instead of raising.

    Returns:
        The ``onnx.ModelProto``.

    Raises:
        ImportError: onnx or tf2onnx is not installed.
        ValueError: ``opset`` is below 19 with a ``DeformableConv2D`` in the model, a layer
            cannot be expressed (see the message), or an op has no standard ONNX form (its type
            is named) and ``allow_custom_ops`` is False.

    Example:
        >>> tf_dcn.export_onnx(model, "model.onnx")
        >>> import onnxruntime
        >>> session = onnxruntime.InferenceSession("model.onnx")
        >>> y, = session.run(None, {session.get_inputs()[0].name: images})
    """
    onnx, tf2onnx = _import_onnx_tools()
    layers = _tf_dcn_layers(model)
    if not isinstance(opset, int) or opset < 1:
        raise ValueError(f"opset must be a positive integer, got opset={opset!r}")
    if opset < MIN_OPSET and any(isinstance(layer, DeformableConv2D) for layer in layers):
        raise ValueError(f"opset: ONNX DeformConv needs opset {MIN_OPSET} or newer, got "
                         f"opset={opset}")
    signature = list(input_signature) if input_signature is not None else _default_signature(
        model)
    # the convolutions stay on the op (one DeformConv each), the pooling goes composite
    with switched_implementations(
            model, lambda layer: "op" if isinstance(layer, DeformableConv2D) else "composite"):

        @tf.function(input_signature=signature)
        def inference(*inputs):
            return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

        from tf_dcn import _onnx_deform_conv as handler

        handler.ERRORS.clear()
        try:
            proto, _ = tf2onnx.convert.from_function(
                inference, input_signature=signature, opset=min(opset, TF2ONNX_MAX_OPSET),
                extra_opset=[onnx.helper.make_opsetid(handler.PLACEHOLDER_DOMAIN, 1)])
        except Exception as error:
            raise ValueError(f"export_onnx: tf2onnx could not convert the model at opset "
                             f"{opset}: {error}") from error
        if handler.ERRORS:  # tf2onnx logged it and left the node unconverted
            raise handler.ERRORS[0]
    if len(proto.graph.input) != len(signature):
        extra = [i.name for i in proto.graph.input][len(signature):]
        raise ValueError(
            f"export_onnx: the ONNX graph has inputs {extra} besides the model's "
            f"{len(signature)}: the model captures tensors created outside its call (for "
            "example a tf.constant kept as an attribute); create them inside call, or keep "
            "them as NumPy arrays or Keras weights")
    _mark_unconverted_ops(onnx, proto, allow_custom_ops)
    proto = _raise_opset(onnx, proto, opset, handler.PLACEHOLDER_DOMAIN)
    _explicit_same_padding(onnx, proto)
    custom = [name for name in onnx_op_types(proto) if ":" in name]
    if custom and not allow_custom_ops:
        raise ValueError(f"export_onnx: the graph still has ops outside the standard ONNX "
                         f"domain: {custom}; they run only where a runtime implements them "
                         "(pass allow_custom_ops=True to keep them)")
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import),
                                                           ignore_unknown=True)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
