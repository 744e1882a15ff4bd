"""The ``implementation`` switch shared by every tf-dcn layer ("op" or "composite")."""

from __future__ import annotations

from tf_dcn import composite


class ImplementationSwitch:
    """Mixin for keras.layers.Layer subclasses: ``implementation`` chooses the custom op or the
    portable composite (tf_dcn.composite) and keeps ``supports_jit`` in step (XLA cannot compile
    the custom ops, the composite can)."""

    @property
    def implementation(self) -> str:
        """``"op"`` or ``"composite"``; setting it also sets ``supports_jit``."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        self._implementation = composite.check_implementation(value)
        self.supports_jit = value == "composite"
