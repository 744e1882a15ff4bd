"""Runs Python code in a fresh interpreter, for the tests that need a clean process (loading a
library or a saved model without this process's state), possibly with the GPU build of
TensorFlow instead of the venv's tensorflow-cpu (gpu_tensorflow_site)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_python(code: str, cwd: Path, env: dict[str, str | None] | None = None,
               check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs dedented `code` with `python -c` in `cwd`. `env` overrides this process's environment
    (a value of None removes the variable); TensorFlow's C++ logging is quietened. With `check`,
    a non-zero exit fails the calling test with the child's output."""
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=environ,
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


REPO = Path(__file__).resolve().parent.parent
GPU_TENSORFLOW_SITE = REPO / "build" / "tensorflow-gpu"


def gpu_tensorflow_site() -> Path:
    """The GPU build of TensorFlow (the `tensorflow` wheel of the venv's version) with its CUDA 12
    runtime package, unpacked by `make tensorflow-gpu-site` (once per build directory). Put it
    first on PYTHONPATH to run it instead of tensorflow-cpu."""
    result = subprocess.run(["make", "-s", "tensorflow-gpu-site"], cwd=REPO, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    return GPU_TENSORFLOW_SITE
