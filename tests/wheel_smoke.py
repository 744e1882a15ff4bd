"""Smoke check of an installed tf-dcn, run by an interpreter outside the source tree.

Used by tests/test_wheel.py and tools/check_wheel_pythons.sh: imports the installed package,
runs the convolution forward (equal to tf.nn.conv2d at zero offsets) and its float64 gradients
(against central differences), the pooling op and a Keras layer. Prints ``wheel ok <python>
<tensorflow> <library>`` on success; any failure is an exception (non-zero exit).
"""

import os
import sys

import numpy as np
import tensorflow as tf

import tf_dcn

assert "site-packages" in tf_dcn.__file__, f"not the installed package: {tf_dcn.__file__}"
assert os.path.basename(tf_dcn.loaded_library() or "") == "_tf_dcn_ops.so", tf_dcn.loaded_library()

rng = np.random.default_rng(0)
x = tf.constant(rng.standard_normal([1, 6, 6, 3]), tf.float32)
w = tf.constant(rng.standard_normal([3, 3, 3, 4]), tf.float32)
y = tf_dcn.deform_conv2d(x, tf.zeros([1, 6, 6, 18]), w, padding="same")
np.testing.assert_allclose(y.numpy(), tf.nn.conv2d(x, w, 1, "SAME").numpy(), atol=1e-5)

# Gradients in float64: offsets kept away from integer sample positions (the bilinear kinks).
x64 = rng.standard_normal([1, 5, 5, 2])
offsets = rng.integers(-1, 2, [1, 3, 3, 18]) + rng.uniform(0.15, 0.85, [1, 3, 3, 18])
mask = rng.uniform(0.2, 1.0, [1, 3, 3, 9])
kernel = rng.standard_normal([3, 3, 2, 3])
theoretical, numerical = tf.test.compute_gradient(
    lambda a, o, m, k: tf_dcn.deform_conv2d(a, o, k, mask=m),
    [tf.constant(v) for v in (x64, offsets, mask, kernel)])
for t, n in zip(theoretical, numerical):
    np.testing.assert_allclose(t, n, atol=1e-6)

pooled = tf_dcn.deform_roi_pool(tf.ones([1, 8, 8, 2]), [[0, 0, 0, 7, 7]], pooled_size=2)
np.testing.assert_allclose(pooled.numpy(), np.ones([1, 2, 2, 2]), atol=1e-6)

layer = tf_dcn.layers.DeformableConv2D(4, 3, padding="same", modulated=True)
assert layer(tf.zeros([2, 8, 8, 3])).shape == (2, 8, 8, 4)

print("wheel ok", sys.version.split()[0], tf.__version__, os.path.basename(tf_dcn.loaded_library()))
