"""Checks, before tf-dcn imports TensorFlow's or Keras' modules, that they are the ones it needs.

tf-dcn does not depend on TensorFlow in its wheel's metadata: TensorFlow comes as several
distributions (``tensorflow``, ``tensorflow-cpu``, ``tf-nightly``, ...) that install the same
``tensorflow`` module, and a hard requirement on one of them would install it on top of another.
The extras ``tf-dcn[cpu]`` and ``tf-dcn[gpu]`` pull the right one in. Whatever the route, the op
libraries are compiled against one TensorFlow minor version (its C++ ABI changes between minor
versions), so ``import tf_dcn`` checks here and fails with one message that says what to install,
instead of an undefined-symbol error from the loader or a missing-module traceback.

This module imports nothing from tf-dcn and nothing outside the standard library at module level.
"""

from __future__ import annotations

import importlib

_EXTRAS_HINT = (
    'pip install "tf-dcn[cpu]" (CPU-only TensorFlow) or "tf-dcn[gpu]" (TensorFlow with CUDA); '
    'from a wheel file: pip install "./tf_dcn-<version>-<tag>.whl[cpu]"'
)


def built_tensorflow_version() -> str | None:
    """The TensorFlow version the op libraries were compiled against (``"2.21.0"``), or None in a
    source tree where ``make build`` has not run yet."""
    try:
        build_info = importlib.import_module("tf_dcn._build_info")
    except ModuleNotFoundError:
        return None
    return build_info.TENSORFLOW_VERSION


def minor_version(version: str) -> str:
    """``"2.21.0"`` and ``"2.21.0rc1"`` -> ``"2.21"``."""
    return ".".join(version.split(".")[:2])


def check_tensorflow_and_keras() -> None:
    """Raises ImportError with install advice unless TensorFlow (of the minor version the
    libraries were built for) and Keras 3 are importable."""
    built = built_tensorflow_version()
    wanted = f"TensorFlow {minor_version(built)}" if built else "TensorFlow"
    pin = f"=={minor_version(built)}.*" if built else ""
    try:
        import tensorflow as tf
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != "tensorflow":
            raise
        raise ImportError(
            f"tf-dcn needs {wanted}, which is not installed. Install it with: {_EXTRAS_HINT}; "
            f'or on its own: pip install "tensorflow-cpu{pin}" (or "tensorflow[and-cuda]{pin}").'
        ) from None

    if built and minor_version(tf.__version__) != minor_version(built):
        raise ImportError(
            f"tf-dcn's op libraries were built for TensorFlow {built}, but this process has "
            f"TensorFlow {tf.__version__}; TensorFlow's C++ ABI changes between minor versions, "
            f'so they cannot load. Install TensorFlow {minor_version(built)} '
            f'(pip install "tensorflow-cpu{pin}" or "tensorflow[and-cuda]{pin}"), or build '
            f"tf-dcn from source against your TensorFlow (make build)."
        )

    try:
        import keras
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != "keras":
            raise
        raise ImportError(
            "tf-dcn needs Keras 3, which is not installed (TensorFlow 2.16+ normally brings it): "
            'pip install "keras>=3"'
        ) from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise ImportError(
            f"tf-dcn needs Keras 3, but this process has Keras {keras.__version__}: "
            'pip install "keras>=3"'
        )
