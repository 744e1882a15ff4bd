"""``python -m tf_dcn.demo``: a small worked example of what deform_conv2d computes.

It shows that zero offsets reproduce tf.nn.conv2d, that an integer offset shifts where a tap reads,
and that a fractional offset samples bilinearly, then trains a learned offset to follow a known
sub-pixel displacement.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import tf_dcn


def main() -> None:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 8, 8, 3)), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)), tf.float32)
    zero = tf.zeros([1, 8, 8, 18])
    same = tf_dcn.deform_conv2d(x, zero, kernel, padding="same")
    ref = tf.nn.conv2d(x, kernel, 1, "SAME")
    print(f"1. zero offsets vs tf.nn.conv2d: max |difference| = "
          f"{float(tf.reduce_max(tf.abs(same - ref))):.2e}")

    identity = tf.eye(3, batch_shape=[1, 1])  # 1x1 kernel that returns the sample itself
    shift = np.zeros((1, 8, 8, 2), np.float32)
    shift[..., 1] = 1.0  # every pixel reads one column to the right (dy=0, dx=+1)
    shifted = tf_dcn.deform_conv2d(x, shift, identity)
    print("2. offset (dy, dx) = (0, 1) reads the right neighbour:",
          bool(np.allclose(shifted[0, :, :7].numpy(), x[0, :, 1:].numpy())),
          "| last column reads outside the image -> 0:",
          bool(np.all(shifted[0, :, 7].numpy() == 0)))

    half = np.zeros((1, 8, 8, 2), np.float32)
    half[..., 0] = 0.5
    blended = tf_dcn.deform_conv2d(x, half, identity)
    expected = 0.5 * (x[0, 2, 3] + x[0, 3, 3])
    print("3. offset (0.5, 0) at (2, 3) blends rows 2 and 3:",
          bool(np.allclose(blended[0, 2, 3].numpy(), expected.numpy(), atol=1e-6)))

    # 4. Learn a single global offset that reproduces a known displacement of (0.3, -0.6) of a
    #    smooth image (gradient descent on the offsets through the bilinear sampling).
    yy, xx = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")
    smooth = np.stack([np.sin(yy / 2.0), np.cos(xx / 2.5), np.sin((yy + xx) / 3.0)], -1)
    x = tf.constant(smooth[None], tf.float32)
    target = tf_dcn.deform_conv2d(x, tf.constant(np.tile([0.3, -0.6], (1, 8, 8, 1)), tf.float32),
                                  identity)
    learned = tf.Variable([0.0, 0.0])
    optimizer = tf.keras.optimizers.Adam(0.05)
    for _ in range(150):
        with tf.GradientTape() as tape:
            offsets = tf.broadcast_to(learned, [1, 8, 8, 2])
            loss = tf.reduce_mean((tf_dcn.deform_conv2d(x, offsets, identity) - target) ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, learned), learned)])
    print(f"4. learned offset {learned.numpy().round(3)} (true [0.3, -0.6]), loss {float(loss):.2e}")


if __name__ == "__main__":
    main()
