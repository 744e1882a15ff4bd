"""The wheel from build_pip_pkg.sh installs into a fresh virtualenv outside the repository and
runs an op there (so the .so is really inside the wheel and loads without the source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, tf_dcn
    assert "site-packages" in tf_dcn.__file__, tf_dcn.__file__
    x = tf.random.normal([1, 6, 6, 3])
    w = tf.random.normal([3, 3, 3, 4])
    y = tf_dcn.deform_conv2d(x, tf.zeros([1, 6, 6, 18]), w, padding="same")
    np.testing.assert_allclose(y.numpy(), tf.nn.conv2d(x, w, 1, "SAME").numpy(), atol=1e-5)
    import keras
    from tf_dcn.applications import DeformableResNet
    from tf_dcn.layers import DeformableConv2D, DeformablePSRoIPooling, DeformableRoIPooling
    assert keras.layers.Dense  # layers import cleanly from the installed package
    pooled = tf_dcn.deform_roi_pool(tf.ones([1, 8, 8, 2]), [[0, 0, 0, 7, 7]], pooled_size=2)
    assert pooled.shape == (1, 2, 2, 2)
    print("wheel ok", tf_dcn.__file__)
    """
)


def test_wheel_installs_and_runs_in_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(["bash", str(REPO / "build_pip_pkg.sh"), str(dist)], check=True, cwd=REPO,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wheels = list(dist.glob("tf_dcn-*.whl"))
    assert len(wheels) == 1, wheels
    assert "linux_x86_64" in wheels[0].name or "manylinux" in wheels[0].name, wheels[0].name

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{wheels[0]}[cpu]",
         "-c", str(REPO / "requirements.txt")],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wheel ok" in result.stdout
