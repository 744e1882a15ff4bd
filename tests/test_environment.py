"""`import tf_dcn` refuses a missing or mismatched TensorFlow or Keras with one ImportError that
says what to install (tf_dcn/_environment.py), before any op library is loaded.

Each case runs in a fresh interpreter from the source tree; stand-in `tensorflow` / `keras`
packages on PYTHONPATH play the other versions (the check reads only `__version__`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fresh_process import run_python
from tf_dcn import _environment

REPO = Path(__file__).resolve().parents[1]
BUILT = _environment.built_tensorflow_version()


def _fake_package(root: Path, name: str, version: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"__version__ = {version!r}\n")


def _import_error(code: str, pythonpath: Path | None = None) -> str:
    """The last line of the traceback that `code` ends with."""
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath else None
    result = run_python(code, REPO, env=env, check=False, timeout=300)
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def test_minor_version():
    assert _environment.minor_version("2.21.0") == "2.21"
    assert _environment.minor_version("2.21.0rc1") == "2.21"
    assert _environment.minor_version("2.22.0-dev20261201") == "2.22"


def test_built_version_is_the_installed_tensorflow():
    import tensorflow as tf

    assert BUILT == tf.__version__


def test_missing_tensorflow():
    last = _import_error("import sys; sys.modules['tensorflow'] = None; import tf_dcn")
    assert last.startswith("ImportError: tf-dcn needs TensorFlow 2.21, which is not installed"), last
    assert 'pip install "tf-dcn[cpu]"' in last and '"tf-dcn[gpu]"' in last, last
    assert '"tensorflow-cpu==2.21.*"' in last and '"tensorflow[and-cuda]==2.21.*"' in last, last


@pytest.mark.parametrize("other", ["2.20.0", "2.22.0rc0"])
def test_other_tensorflow_minor_version(tmp_path, other):
    _fake_package(tmp_path, "tensorflow", other)
    last = _import_error("import tf_dcn", tmp_path)
    assert last.startswith("ImportError: tf-dcn's op libraries were built for TensorFlow "
                           f"{BUILT}, but this process has TensorFlow {other}"), last
    assert '"tensorflow-cpu==2.21.*"' in last, last


def test_other_tensorflow_patch_version_is_accepted(tmp_path):
    # Same minor version: the check passes and goes on to Keras (here a stand-in Keras 2).
    _fake_package(tmp_path, "tensorflow", "2.21.9")
    _fake_package(tmp_path, "keras", "2.15.0")
    last = _import_error("import tf_dcn", tmp_path)
    assert last == ('ImportError: tf-dcn needs Keras 3, but this process has Keras 2.15.0: '
                    'pip install "keras>=3"'), last


def test_missing_keras(tmp_path):
    _fake_package(tmp_path, "tensorflow", BUILT)
    last = _import_error("import sys; sys.modules['keras'] = None; import tf_dcn", tmp_path)
    assert last.startswith("ImportError: tf-dcn needs Keras 3, which is not installed"), last


def test_an_import_error_inside_tensorflow_is_not_hidden(tmp_path):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("import a_module_tensorflow_lacks\n")
    last = _import_error("import tf_dcn", tmp_path)
    assert last == "ModuleNotFoundError: No module named 'a_module_tensorflow_lacks'", last
