"""Every wrong input of deform_conv2d raises an error naming the argument, never a crash.

Each case runs twice: through the public wrapper (statically known shapes: ValueError) and through
the raw op in eager mode, where no Python check runs, so the kernel's own validation must raise
tf.errors.InvalidArgumentError.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_dcn


def _valid_args():
    """A valid v2 call: N=2, H=W=6, C=4, 3x3, Cout=6, padding 1, DG=2, groups=2."""
    return dict(
        inputs=np.zeros((2, 6, 6, 4), np.float32),
        offsets=np.zeros((2, 6, 6, 36), np.float32),
        kernel=np.zeros((3, 3, 2, 6), np.float32),
        mask=np.ones((2, 6, 6, 18), np.float32),
        bias=np.zeros((6,), np.float32),
        strides=1, padding=1, dilation_rate=1, groups=2, deformable_groups=2,
    )


def _raw_call(args):
    """The op itself, bypassing every Python-side check."""
    padding = args["padding"]
    if isinstance(padding, str):
        mode, explicit = padding.upper(), []
    else:
        mode, explicit = "EXPLICIT", list(padding) if isinstance(padding, (list, tuple)) else [padding] * 4
    pair = lambda v: list(v) if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
    return tf_dcn.load_ops().tf_dcn_deformable_conv2d(
        input=args["inputs"], offsets=args["offsets"], kernel=args["kernel"],
        mask=args["mask"] if args["mask"] is not None else np.zeros([0], np.float32),
        bias=args["bias"] if args["bias"] is not None else np.zeros([0], np.float32),
        strides=pair(args["strides"]), dilations=pair(args["dilation_rate"]), padding=mode,
        explicit_paddings=explicit, groups=args["groups"],
        deformable_groups=args["deformable_groups"], use_mask=args["mask"] is not None,
        use_bias=args["bias"] is not None)


BAD_SHAPES = [
    # (case id, changes, argument named in the message)
    ("inputs-rank", dict(inputs=np.zeros((2, 6, 6), np.float32)), "inputs"),
    ("offsets-rank", dict(offsets=np.zeros((2, 6, 36), np.float32)), "offsets"),
    ("kernel-rank", dict(kernel=np.zeros((3, 3, 2), np.float32)), "kernel"),
    ("mask-rank", dict(mask=np.ones((2, 6, 18), np.float32)), "mask"),
    ("bias-rank", dict(bias=np.zeros((6, 1), np.float32)), "bias"),
    ("offsets-channels", dict(offsets=np.zeros((2, 6, 6, 18), np.float32)), "offsets"),
    ("offsets-spatial", dict(offsets=np.zeros((2, 5, 6, 36), np.float32)), "offsets"),
    ("mask-channels", dict(mask=np.ones((2, 6, 6, 9), np.float32)), "mask"),
    ("mask-spatial", dict(mask=np.ones((2, 6, 7, 18), np.float32)), "mask"),
    ("offsets-batch", dict(offsets=np.zeros((3, 6, 6, 36), np.float32)), "offsets"),
    ("mask-batch", dict(mask=np.ones((1, 6, 6, 18), np.float32)), "mask"),
    ("channels-vs-groups", dict(inputs=np.zeros((2, 6, 6, 3), np.float32), deformable_groups=1,
                                groups=2, kernel=np.zeros((3, 3, 1, 6), np.float32),
                                offsets=np.zeros((2, 6, 6, 18), np.float32),
                                mask=np.ones((2, 6, 6, 9), np.float32)), "groups"),
    ("channels-vs-deformable-groups", dict(deformable_groups=3,
                                           offsets=np.zeros((2, 6, 6, 54), np.float32),
                                           mask=np.ones((2, 6, 6, 27), np.float32)),
     "deformable_groups"),
    ("cout-vs-groups", dict(kernel=np.zeros((3, 3, 2, 5), np.float32),
                            bias=np.zeros((5,), np.float32)), "groups"),
    ("kernel-in-channels", dict(kernel=np.zeros((3, 3, 4, 6), np.float32)), "kernel"),
    ("bias-size", dict(bias=np.zeros((5,), np.float32)), "bias"),
    ("kernel-larger-than-input", dict(kernel=np.zeros((9, 3, 2, 6), np.float32),
                                      offsets=np.zeros((2, 0, 6, 108), np.float32),
                                      mask=np.ones((2, 0, 6, 54), np.float32)), "kernel"),
]


@pytest.mark.parametrize("case, changes, argument", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_wrapper_raises_value_error(case, changes, argument):
    args = {**_valid_args(), **changes}
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=argument):
        tf_dcn.deform_conv2d(**args)


@pytest.mark.parametrize("case, changes, argument", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_kernel_raises_invalid_argument(case, changes, argument):
    args = {**_valid_args(), **changes}
    with pytest.raises(tf.errors.InvalidArgumentError, match=argument):
        _raw_call(args)


@pytest.mark.parametrize("case, changes, argument", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_unknown_shapes_raise_at_run_time(case, changes, argument):
    """Inside tf.function with fully unknown shapes, the kernel is the only check left."""
    args = {**_valid_args(), **changes}
    names = ["inputs", "offsets", "kernel", "mask", "bias"]
    specs = [tf.TensorSpec(None, tf.float32) for _ in names]

    @tf.function(input_signature=specs)
    def fn(inputs, offsets, kernel, mask, bias):
        return tf_dcn.deform_conv2d(inputs, offsets, kernel, mask=mask, bias=bias,
                                    strides=args["strides"], padding=args["padding"],
                                    dilation_rate=args["dilation_rate"], groups=args["groups"],
                                    deformable_groups=args["deformable_groups"])

    with pytest.raises(tf.errors.InvalidArgumentError, match=argument):
        fn(*[args[n] for n in names])


@pytest.mark.parametrize("changes, argument", [
    (dict(strides=0), "strides"),
    (dict(strides=(1, -1)), "strides"),
    (dict(strides=(1, 2, 3)), "strides"),
    (dict(dilation_rate=0), "dilation_rate"),
    (dict(dilation_rate=(2, 0)), "dilation_rate"),
    (dict(padding="full"), "padding"),
    (dict(padding=-1), "padding"),
    (dict(padding=((1, 1), (1, -2))), "padding"),
    (dict(padding=(1, 2, 3)), "padding"),
    (dict(groups=0), "groups"),
    (dict(deformable_groups=0), "deformable_groups"),
])
def test_bad_arguments_raise_value_error(changes, argument):
    with pytest.raises(ValueError, match=argument):
        tf_dcn.deform_conv2d(**{**_valid_args(), **changes})


@pytest.mark.parametrize("changes, argument", [
    (dict(strides=(0, 1)), "strides"),
    (dict(dilation_rate=(1, 0)), "dilation_rate"),
    (dict(padding=(1, 1, -1, 1)), "padding"),
])
def test_kernel_rejects_bad_attributes(changes, argument):
    with pytest.raises(tf.errors.InvalidArgumentError, match=argument):
        _raw_call({**_valid_args(), **changes})


def test_unsupported_dtype():
    args = _valid_args()
    args["inputs"] = args["inputs"].astype(np.int32)
    with pytest.raises(ValueError, match="inputs"):
        tf_dcn.deform_conv2d(**args)


def test_grad_op_checks_grad_output_shape():
    args = _valid_args()
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad_output"):
        tf_dcn.load_ops().tf_dcn_deformable_conv2d_grad(
            input=args["inputs"], offsets=args["offsets"], mask=args["mask"],
            kernel=args["kernel"], bias=args["bias"],
            grad_output=np.zeros((2, 6, 6, 5), np.float32), strides=[1, 1], dilations=[1, 1],
            padding="EXPLICIT", explicit_paddings=[1, 1, 1, 1], groups=2, deformable_groups=2,
            use_mask=True, use_bias=True)


def test_grad_op_revalidates_inputs():
    args = _valid_args()
    with pytest.raises(tf.errors.InvalidArgumentError, match="offsets"):
        tf_dcn.load_ops().tf_dcn_deformable_conv2d_grad(
            input=args["inputs"], offsets=np.zeros((2, 6, 6, 35), np.float32),
            mask=args["mask"], kernel=args["kernel"], bias=args["bias"],
            grad_output=np.zeros((2, 6, 6, 6), np.float32), strides=[1, 1], dilations=[1, 1],
            padding="EXPLICIT", explicit_paddings=[1, 1, 1, 1], groups=2, deformable_groups=2,
            use_mask=True, use_bias=True)
