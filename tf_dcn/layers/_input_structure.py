"""``input_spec`` for layers called on more than one input structure (e.g. ``x`` or
``[x, offsets]``)."""

from __future__ import annotations


def list_length(inputs) -> int | None:
    """The number of tensors (or shapes) in a list or tuple input; None for a single one."""
    return len(inputs) if isinstance(inputs, (list, tuple)) else None


class InputSpecPerStructure:
    """Mixin for keras.layers.Layer subclasses whose first call argument may be one tensor or a
    list of tensors of more than one length.

    Keras checks the first call argument against ``layer.input_spec`` (the number of tensors,
    their ranks, known axes) before it builds the layer, so one fixed spec cannot accept both
    ``x`` and ``[x, offsets]``. The layer defines ``_input_spec_for(count)``: the spec for one
    tensor (``count=None``) or a list of ``count`` tensors, which raises ValueError for a
    structure the layer does not take. It is set just before Keras' check, at every call, so
    Keras' own messages (``expected ndim=4, found ndim=3``) report wrong ranks and axes.
    """

    def __call__(self, *args, **kwargs):
        inputs = args[0] if args else kwargs.get("inputs")
        self.input_spec = self._input_spec_for(list_length(inputs))
        return super().__call__(*args, **kwargs)

    def _input_spec_for(self, count: int | None):
        raise NotImplementedError
