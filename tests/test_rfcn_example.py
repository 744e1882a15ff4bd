"""``python -m tf_dcn.examples.rfcn --quick`` runs end to end: trains both detectors with
``model.fit``, evaluates them with pycocotools, draws the pictures, and exports a SavedModel, a
portable SavedModel and an ONNX file that reload (onnxruntime for ONNX) and match."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tf_dcn.export import find_tf_dcn_ops

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Runs the quick example once in a fresh process; returns (out folder, stdout, seconds)."""
    cwd = tmp_path_factory.mktemp("rfcn")
    out = cwd / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tf_dcn.examples.rfcn", "--quick", "--out",
                             str(out)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    return out, result.stdout, seconds


def test_quick_run_trains_with_fit_and_prints_the_ap_table(quick_run):
    _, stdout, seconds = quick_run
    # Keras progress lines of model.fit with the detector's four losses
    assert re.search(r"^\d+/\d+ .*step - box: [\d.]+ - cls: [\d.]+ - loss: [\d.]+ - rpn_box: "
                     r"[\d.]+ - rpn_cls: [\d.]+$", stdout, re.M)
    header = [line for line in stdout.splitlines() if line.startswith("detector")]
    assert len(header) == 1
    for title in ("AP@0.5", "AP@0.7", "AP@0.75", "AP@[.5:.95]"):
        assert title in header[0]
        assert re.search(rf"^{re.escape(title)}: (\w+ wins by [\d.]+ points|.* are equal)",
                         stdout, re.M), title
    for variant in ("plain PS-RoI pooling", "deformable PS-RoI pooling"):
        row = [line for line in stdout.splitlines() if line.startswith(variant)]
        assert len(row) == 1
        values = [float(v.replace(",", "")) for v in row[0][len(variant):].split()]
        assert len(values) == 7 and all(0.0 <= v <= 100.0 for v in values[:4])
    assert seconds < 120, f"the quick run took {seconds:.0f} s"


def test_quick_run_exports_match(quick_run):
    out, stdout, _ = quick_run
    for name in ("SavedModel", "export_portable", "ONNX (onnxruntime)"):
        lines = [line for line in stdout.splitlines() if line.strip().startswith(name + ":")]
        assert len(lines) == 1 and lines[0].endswith("(match)"), stdout[-2000:]
    assert find_tf_dcn_ops(out / "rfcn_savedmodel") == ["TfDcn>DeformablePSRoIPool"]
    assert find_tf_dcn_ops(out / "rfcn_portable") == []
    assert (out / "rfcn.onnx").stat().st_size > 10_000


@pytest.mark.parametrize("name,min_width,min_height", [
    ("detections.png", 400, 600),      # 3 columns x 4 rows of panels
    ("part_offsets.png", 600, 300)])   # 4 x 2 panels
def test_quick_run_writes_the_pictures(quick_run, name, min_width, min_height):
    from PIL import Image

    out, _, _ = quick_run
    path = out / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width > min_width and height > min_height
    assert pixels.std() > 10  # images were drawn, not an empty canvas
