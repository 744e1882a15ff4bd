"""The wheel, built by the README's command (`make wheel`): its manylinux tag, its contents and
metadata, and that it installs into a fresh virtualenv outside the repository and works there,
or says what to install when TensorFlow is missing.

Installing into each CPython that TensorFlow 2.21 supports (3.10-3.13) downloads TensorFlow four
times, so it lives in tools/check_wheel_pythons.sh rather than here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tf_dcn import _loader

REPO = Path(__file__).resolve().parents[1]
GLIBC_FLOOR = (2, 27)  # TensorFlow 2.21's own wheels are manylinux_2_27
WHEEL_NAME = re.compile(r"tf_dcn-0\.1\.0-py3-none-((?:manylinux_2_\d+_x86_64\.?)+)\.whl")


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def _run_outside(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run(["make", "-C", str(REPO), "wheel", f"DIST={dist}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    wheels = list(dist.glob("tf_dcn-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _glibc_versions(library: Path) -> set[tuple[int, ...]]:
    dump = subprocess.run(["objdump", "-T", str(library)], capture_output=True, text=True,
                          check=True).stdout
    return {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_([0-9.]+)\)?\s", dump)}


def test_libraries_need_no_newer_glibc_than_tensorflow():
    libraries = [Path(_loader.CPU_LIBRARY), Path(_loader.CUDA_LIBRARY)]
    for library in [lib for lib in libraries if lib.exists()]:
        versions = _glibc_versions(library)
        assert versions and max(versions) <= GLIBC_FLOOR, (library.name, sorted(versions)[-3:])


def test_wheel_has_a_manylinux_tag_no_newer_than_tensorflows(wheel):
    match = WHEEL_NAME.fullmatch(wheel.name)
    assert match, wheel.name
    floors = [int(n) for n in re.findall(r"manylinux_2_(\d+)", match.group(1))]
    assert max(floors) <= GLIBC_FLOOR[1], wheel.name
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                          capture_output=True, text=True, check=True).stdout
    # auditwheel judges the symbol versions; libtensorflow_framework.so.2 is TensorFlow's own
    # (excluded at repair time), which is why `show` alone cannot report the manylinux tag.
    constrained = re.search(r'constrains the platform tag to\s+"manylinux_2_(\d+)_x86_64"', show)
    assert constrained and int(constrained.group(1)) <= GLIBC_FLOOR[1], show


def test_wheel_contents_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("tf_dcn-0.1.0.dist-info/METADATA").decode()
        license_text = archive.read("tf_dcn-0.1.0.dist-info/licenses/LICENSE").decode()
        wheel_info = archive.read("tf_dcn-0.1.0.dist-info/WHEEL").decode()
    assert license_text == (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert {"tf_dcn/__init__.py", "tf_dcn/_build_info.py", "tf_dcn/_tf_dcn_ops.so",
            "tf_dcn/layers/deformable_conv2d.py"} <= names
    assert ("tf_dcn/_tf_dcn_ops_cuda.so" in names) == Path(_loader.CUDA_LIBRARY).exists()
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert "Root-Is-Purelib: false" in wheel_info
    assert "Requires-Python: >=3.10" in metadata
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    # TensorFlow only through the extras: tensorflow and tensorflow-cpu are rival distributions.
    assert [r for r in requires if "extra ==" not in r] == ["numpy"], requires
    assert 'tensorflow-cpu==2.21.*; extra == "cpu"' in requires, requires
    assert 'tensorflow[and-cuda]==2.21.*; extra == "gpu"' in requires, requires


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[cpu]",
                    "-c", str(REPO / "requirements.txt")], check=True)
    result = _run_outside(python, [str(REPO / "tests" / "wheel_smoke.py")], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "wheel ok" in result.stdout


def test_wheel_without_tensorflow_says_what_to_install(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True)
    result = _run_outside(python, ["-c", "import tf_dcn"], cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: tf-dcn needs TensorFlow 2.21, which is not installed"), last
    assert 'pip install "tf-dcn[cpu]"' in last and 'tensorflow-cpu==2.21.*' in last, last
