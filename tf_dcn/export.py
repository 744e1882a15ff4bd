"""Switching a model between the custom ops and the portable composite, and portable export.

A model trained with the custom ops (the layers' default ``implementation="op"``) can be served
by a stock TensorFlow (TensorFlow Serving, TFLite, XLA) without retraining: the composite
implementation has the same weights and gives the same results in plain TensorFlow ops.

* :func:`use_implementation` switches every tf-dcn layer of a model in place.
* :func:`export_portable` writes a SavedModel (``serve`` endpoint, like ``model.export``) traced
  with the composite implementation, and checks that its graph contains no ``TfDcn>`` op.
* :func:`find_tf_dcn_ops` lists the ``TfDcn>`` op types a SavedModel uses.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import keras
from tensorflow.core.protobuf import saved_model_pb2

from tf_dcn import composite
from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling

__all__ = ["export_portable", "find_tf_dcn_ops", "use_implementation"]

_OP_PREFIX = "TfDcn>"
_LAYER_TYPES = (DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling)


def _all_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """``layer`` and every layer nested in it (models, custom layers), each once."""
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        yield from flatten(include_self=True, recursive=True)
        return
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _all_layers(child)


def _tf_dcn_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [layer for layer in _all_layers(model) if isinstance(layer, _LAYER_TYPES)]


def _reset_compiled_functions(model: keras.layers.Layer) -> None:
    """Drops Keras' cached train/test/predict functions so the next call retraces."""
    for layer in _all_layers(model):
        for attr in ("train_function", "test_function", "predict_function"):
            if getattr(layer, attr, None) is not None:
                setattr(layer, attr, None)


@contextlib.contextmanager
def switched_implementations(model: keras.layers.Layer,
                             choose: Callable[[keras.layers.Layer], str]) -> Iterator[list]:
    """Within the block, every tf-dcn layer of ``model`` uses ``choose(layer)``; afterwards each
    gets its own implementation back and Keras' cached train/test/predict functions are
    dropped. Yields the layers."""
    layers = _tf_dcn_layers(model)
    previous = [layer.implementation for layer in layers]
    try:
        for layer in layers:
            layer.implementation = choose(layer)
        yield layers
    finally:
        for layer, implementation in zip(layers, previous):
            layer.implementation = implementation
        _reset_compiled_functions(model)


def use_implementation(model: keras.layers.Layer, implementation: str) -> int:
    """Switches every tf-dcn layer in ``model`` to ``implementation``, in place.

    The weights are untouched: ``"op"`` and ``"composite"`` compute the same function
    (docs/semantics.md), so a model trained with the custom ops can be exported, XLA-compiled or
    converted to TFLite with the composite, and switched back.

    Keras caches compiled train/test/predict functions; they are dropped so that the next
    ``fit``/``evaluate``/``predict`` retraces with the new implementation. Whether ``fit`` uses
    XLA is decided by ``model.compile`` (``jit_compile="auto"`` or ``True`` needs every layer's
    ``supports_jit``, which the composite sets), so switch *before* ``compile``, or call
    ``compile`` again after switching. Functions you traced yourself (``tf.function``) keep what
    they traced.

    Args:
        model: a Keras model or layer; nested models and layers are searched too.
        implementation: ``"op"`` or ``"composite"``.

    Returns:
        The number of tf-dcn layers found (all of them now use ``implementation``).

    Raises:
        ValueError: ``implementation`` is not ``"op"`` or ``"composite"``.

    Example:
        >>> tf_dcn.use_implementation(model, "composite")
        >>> model.compile(optimizer="adam", loss="mse", jit_compile=True)  # XLA
    """
    composite.check_implementation(implementation)
    layers = _tf_dcn_layers(model)
    for layer in layers:
        layer.implementation = implementation
    _reset_compiled_functions(model)
    return len(layers)


def find_tf_dcn_ops(path: str | os.PathLike) -> list[str]:
    """Sorted op types starting with ``"TfDcn>"`` in a SavedModel's graphs and functions.

    Args:
        path: a SavedModel directory (with ``saved_model.pb``).

    Returns:
        The distinct ``TfDcn>`` op types (empty: the SavedModel runs in a stock TensorFlow).
    """
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    found = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        nodes = list(graph.node)
        for function in graph.library.function:
            nodes.extend(function.node_def)
        found.update(node.op for node in nodes if node.op.startswith(_OP_PREFIX))
        for op in meta_graph.meta_info_def.stripped_op_list.op:
            if op.name.startswith(_OP_PREFIX):
                found.add(op.name)
    return sorted(found)


def export_portable(model: keras.Model, path: str | os.PathLike, *, input_signature=None,
                    verbose: bool = False, **kwargs) -> str:
    """Writes a SavedModel of ``model`` that needs no tf-dcn op (stock TF Serving, TFLite, XLA).

    Every tf-dcn layer is switched to the composite implementation while ``model.export`` traces
    the model (a ``serve`` endpoint and the ``serving_default`` signature, as ``model.export``
    writes them), then switched back to what it was. The written graph is scanned: if any op type
    starts with ``"TfDcn>"`` (e.g. a custom layer calling :func:`tf_dcn.deform_conv2d` directly)
    a ``RuntimeError`` names them and the directory is left for inspection.

    The SavedModel loads with ``tf.saved_model.load(path)`` in a process that never imports
    tf_dcn, is served by a stock ``tensorflow/serving`` image, and converts with
    ``tf.lite.TFLiteConverter.from_saved_model(path)`` using builtin ops only (give a fixed
    ``input_signature`` for TFLite if the model's input shapes are not fixed).

    Args:
        model: a Keras model (the Keras ``model.export`` requirements apply: built, with known
            inputs).
        path: the SavedModel directory to write.
        input_signature: optional, passed to ``model.export`` (e.g. a list of
            ``tf.TensorSpec`` with fixed shapes).
        verbose: passed to ``model.export``.
        **kwargs: further ``model.export`` arguments.

    Returns:
        ``path`` as a string.

    Raises:
        RuntimeError: the written graph still contains ``TfDcn>`` ops.

    Example:
        >>> tf_dcn.export_portable(model, "portable")
        >>> served = tf.saved_model.load("portable")  # no `import tf_dcn` needed
        >>> y = served.serve([images, rois])
    """
    path = os.fspath(path)
    with switched_implementations(model, lambda layer: "composite"):
        model.export(path, format="tf_saved_model", verbose=verbose,
                     input_signature=input_signature, **kwargs)
    custom_ops = find_tf_dcn_ops(path)
    if custom_ops:
        raise RuntimeError(
            f"export_portable: the SavedModel written to {path!r} still uses tf-dcn custom ops "
            f"{custom_ops}; a layer or function outside tf_dcn.layers calls the op wrappers "
            "directly (use tf_dcn.composite there)"
        )
    return path
