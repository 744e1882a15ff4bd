"""``python -m tf_dcn.demo --quick`` runs end to end and writes valid figures and a SavedModel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("sampling_locations.png", "receptive_field.png", "predictions.png")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """Runs the quick demo once in a fresh process; returns (output folder, stdout, seconds)."""
    cwd = tmp_path_factory.mktemp("demo")
    out = cwd / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tf_dcn.demo", "--quick", "--out", str(out)],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout, result.stderr, seconds


def test_quick_demo_prints_the_results(quick_demo):
    _, stdout, stderr, seconds = quick_demo
    assert "mIoU" in stdout and "trivial baseline" in stdout
    assert "plain 3x3 convs" in stdout and "deformable v2 in res5a/b" in stdout
    assert "Effective dilation" in stdout and "res5a" in stdout and "res5b" in stdout
    assert ("network wins" in stdout) or ("same held-out mIoU" in stdout)
    assert re.search(r"^\d+/\d+ .*step - acc: [\d.]+ - loss: [\d.]+$", stdout, re.M)  # fit()
    assert "Traceback" not in stderr
    assert "Warning" not in stderr and "WARNING" not in stderr.replace(
        "WARNING: All log messages before absl::InitializeLog()", "")
    assert seconds < 120, f"the quick demo took {seconds:.0f} s"


def test_quick_demo_savedmodel_round_trip(quick_demo):
    out, stdout, _, _ = quick_demo
    lines = [line for line in stdout.splitlines() if line.startswith("SavedModel round trip:")]
    assert len(lines) == 1, stdout[-2000:]
    assert lines[0].endswith("(match)")
    assert (out / "deformable_savedmodel" / "saved_model.pb").is_file()


@pytest.mark.parametrize("name", FIGURES)
def test_quick_demo_writes_valid_pngs(quick_demo, name):
    from PIL import Image

    path = quick_demo[0] / name
    assert path.is_file(), f"{name} was not written"
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.width >= 200 and image.height >= 150
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 5.0  # something is drawn


def test_demo_rejects_unknown_arguments(capsys):
    from tf_dcn import demo

    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--no-such-flag"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
