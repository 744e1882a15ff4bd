"""A tensor argument of another float dtype than the inputs/features raises a short ValueError
naming the argument and both dtypes (not TensorFlow's conversion error, which prints the whole
tensor); NumPy and Python values are converted to the inputs' dtype."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn

CONV_IMPLEMENTATIONS = {"op": tf_dcn.deform_conv2d, "composite": tf_dcn.composite.deform_conv2d}
POOL_IMPLEMENTATIONS = {"op": tf_dcn.deform_roi_pool, "composite": tf_dcn.composite.deform_roi_pool}


def _conv_args(dtype, other, wrong):
    args = {"offsets": tf.zeros([1, 3, 3, 18], dtype), "kernel": tf.zeros([3, 3, 2, 4], dtype),
            "mask": tf.ones([1, 3, 3, 9], dtype), "bias": tf.zeros([4], dtype)}
    args[wrong] = tf.cast(args[wrong], other)
    return args


@pytest.mark.parametrize("implementation", CONV_IMPLEMENTATIONS)
@pytest.mark.parametrize("wrong", ["offsets", "kernel", "mask", "bias"])
def test_conv_argument_of_another_dtype(implementation, wrong):
    x = tf.zeros([1, 5, 5, 2], tf.float16)
    args = _conv_args(tf.float16, tf.float32, wrong)
    message = f"{wrong}: dtype must be float16 (the dtype of inputs), got float32"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CONV_IMPLEMENTATIONS[implementation](x, args.pop("offsets"), args.pop("kernel"), **args)


@pytest.mark.parametrize("implementation", CONV_IMPLEMENTATIONS)
def test_conv_numpy_arguments_take_the_inputs_dtype(implementation):
    x = tf.ones([1, 5, 5, 2], tf.float16)
    y = CONV_IMPLEMENTATIONS[implementation](x, np.zeros([1, 3, 3, 18]), np.ones([3, 3, 2, 4]),
                                             bias=[0.5] * 4)
    assert y.dtype == tf.float16
    np.testing.assert_array_equal(y.numpy(), np.full([1, 3, 3, 4], 18.5, np.float16))


@pytest.mark.parametrize("implementation", POOL_IMPLEMENTATIONS)
def test_pool_offsets_of_another_dtype(implementation):
    features = tf.zeros([1, 8, 8, 2], tf.bfloat16)
    with pytest.raises(ValueError,
                       match=r"^offsets: dtype must be bfloat16 \(the dtype of features\), "
                             r"got float64$"):
        POOL_IMPLEMENTATIONS[implementation](features, [[0, 0, 0, 7, 7]],
                                             tf.zeros([1, 2, 2, 2], tf.float64), pooled_size=2)
