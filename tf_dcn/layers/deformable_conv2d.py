"""``DeformableConv2D``: the Keras 3 layer of deformable convolution v1 / modulated v2."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tf_dcn import composite
from tf_dcn._arguments import conv_output_size, normalize_pair, normalize_padding
from tf_dcn.deform_conv import deform_conv2d
from tf_dcn.layers._implementation import ImplementationSwitch


def _is_shape_list(input_shape: Any) -> bool:
    """True for a list of shapes ([x, offsets(, mask)]), False for one shape."""
    return (isinstance(input_shape, (list, tuple)) and len(input_shape) > 0
            and isinstance(input_shape[0], (list, tuple, tf.TensorShape)))


@keras.saving.register_keras_serializable(package="tf_dcn")
class DeformableConv2D(ImplementationSwitch, keras.layers.Layer):
    """2-D deformable convolution (Dai et al. 2017; modulated v2, Zhu et al. 2019).

    Every kernel tap samples the input bilinearly at a learned offset from its regular grid
    position (and, for v2, multiplies the sample by a learned mask in ``[0, 1]``) before an
    ordinary convolution. With zero offsets (and, for v1, always) training starts from a regular
    convolution.

    Called on one tensor ``x``, the layer owns the paper's offset branch: a regular convolution
    of ``x`` with the same kernel size, strides, padding and dilation that outputs ``2*DG*kh*kw``
    channels (v1), or ``3*DG*kh*kw`` (v2: the first ``2*DG*kh*kw`` are the offsets, the last
    ``DG*kh*kw`` pass through a sigmoid to form the mask, as in mmcv and detectron2). It is
    zero-initialised by default. Called on ``[x, offsets]`` or ``[x, offsets, mask]``, it uses
    those and owns no branch (decided at the first call).

    Args:
        filters: number of output channels ``Cout``; divisible by ``groups``.
        kernel_size: int or ``(kh, kw)``.
        strides: int or ``(sh, sw)``.
        padding: ``"valid"``, ``"same"``, an int, ``(ph, pw)`` or ``((top, bottom), (left,
            right))``.
        dilation_rate: int or ``(dh, dw)``.
        groups: convolution groups (``C`` and ``filters`` divisible by it).
        activation: activation applied to the output (``None``: linear).
        use_bias: whether to add a bias.
        data_format: ``"channels_last"`` (default, NHWC) or ``"channels_first"`` (NCHW; the layer
            transposes around the NHWC op, and external offsets/mask are then channels-first
            too: ``[N, 2*DG*kh*kw, Ho, Wo]``).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in ``keras.layers.Conv2D``.
        deformable_groups: ``DG``, input-channel groups sharing one offset field.
        modulated: ``True`` for v2 (the owned branch also predicts the mask).
        offset_kernel_initializer, offset_bias_initializer: initializers of the owned offset
            branch (default zeros).
        implementation: ``"op"`` (default: the custom C++ op, fastest, not XLA/TFLite/stock
            serving friendly) or ``"composite"`` (:func:`tf_dcn.composite.deform_conv2d`, plain
            TensorFlow ops: XLA-compilable, exportable with :func:`tf_dcn.export_portable`,
            ``supports_jit`` is then True). Same weights and results; settable later through
            the ``implementation`` attribute or :func:`tf_dcn.use_implementation`.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ``trainable``).

    Input shape:
        ``x``: ``[N, H, W, C]`` (channels_last) or ``[N, C, H, W]``; optionally followed by
        ``offsets`` ``[N, Ho, Wo, 2*DG*kh*kw]`` (dy before dx per tap, deformable group
        outermost, taps row-major) and ``mask`` ``[N, Ho, Wo, DG*kh*kw]``.

    Output shape:
        ``[N, Ho, Wo, filters]`` (channels_last) or ``[N, filters, Ho, Wo]``.

    Raises:
        ValueError: invalid arguments (including ``implementation``), or input channels not
            divisible by ``groups`` or ``deformable_groups``.

    Example:
        >>> inputs = keras.Input((None, None, 16))
        >>> x = tf_dcn.layers.DeformableConv2D(32, 3, padding="same", modulated=True)(inputs)
        >>> model = keras.Model(inputs, x)
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding="valid",
        dilation_rate=1,
        groups: int = 1,
        activation=None,
        use_bias: bool = True,
        data_format: str | None = None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        deformable_groups: int = 1,
        modulated: bool = False,
        offset_kernel_initializer="zeros",
        offset_bias_initializer="zeros",
        implementation: str = "op",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"filters must be a positive int, got filters={filters!r}")
        if not isinstance(groups, int) or groups <= 0:
            raise ValueError(f"groups must be a positive int, got groups={groups!r}")
        if filters % groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")
        if not isinstance(deformable_groups, int) or deformable_groups <= 0:
            raise ValueError(
                f"deformable_groups must be a positive int, got deformable_groups={deformable_groups!r}"
            )
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size")
        self.strides = normalize_pair(strides, "strides")
        self.dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
        self._padding_mode, self._explicit_padding = normalize_padding(padding)
        self.padding = padding.lower() if isinstance(padding, str) else padding
        self.groups = groups
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        data_format = keras.config.image_data_format() if data_format is None else data_format
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
            )
        self.data_format = data_format
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.deformable_groups = deformable_groups
        self.modulated = bool(modulated)
        self.offset_kernel_initializer = keras.initializers.get(offset_kernel_initializer)
        self.offset_bias_initializer = keras.initializers.get(offset_bias_initializer)
        self.owns_offset_branch: bool | None = None
        # Also sets supports_jit: XLA cannot compile the custom op, so keep Keras' default
        # jit_compile="auto" off for models that use it; the composite compiles.
        self.implementation = implementation

    # -- shapes ------------------------------------------------------------------------------
    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def offset_channels(self) -> int:
        """``2*DG*kh*kw``: channels of the offsets tensor."""
        return 2 * self.deformable_groups * self.taps

    @property
    def mask_channels(self) -> int:
        """``DG*kh*kw``: channels of the mask tensor."""
        return self.deformable_groups * self.taps

    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _spatial_output(self, height, width):
        pads = self._explicit_padding or [0, 0, 0, 0]
        out_h = conv_output_size(height, self.kernel_size[0], self.strides[0],
                                 self.dilation_rate[0], self._padding_mode, pads[0], pads[1])
        out_w = conv_output_size(width, self.kernel_size[1], self.strides[1],
                                 self.dilation_rate[1], self._padding_mode, pads[2], pads[3])
        return out_h, out_w

    def compute_output_shape(self, input_shape):
        x_shape = tuple(input_shape[0]) if _is_shape_list(input_shape) else tuple(input_shape)
        if len(x_shape) != 4:
            raise ValueError(f"{self.name}: expected a 4-D input, got shape {x_shape}")
        if self.data_format == "channels_last":
            out_h, out_w = self._spatial_output(x_shape[1], x_shape[2])
            return (x_shape[0], out_h, out_w, self.filters)
        out_h, out_w = self._spatial_output(x_shape[2], x_shape[3])
        return (x_shape[0], self.filters, out_h, out_w)

    # -- weights -----------------------------------------------------------------------------
    def build(self, input_shape):
        self.owns_offset_branch = not _is_shape_list(input_shape)
        x_shape = tuple(input_shape[0]) if not self.owns_offset_branch else tuple(input_shape)
        if not self.owns_offset_branch and len(input_shape) not in (2, 3):
            raise ValueError(
                f"{self.name}: call it on x, [x, offsets] or [x, offsets, mask]; got "
                f"{len(input_shape)} inputs"
            )
        channels = x_shape[self._channel_axis()] if len(x_shape) == 4 else None
        if channels is None:
            raise ValueError(
                f"{self.name}: the channel dimension of the input must be known, got shape "
                f"{x_shape}"
            )
        if channels % self.groups:
            raise ValueError(
                f"{self.name}: input channels ({channels}) must be divisible by groups "
                f"({self.groups})"
            )
        if channels % self.deformable_groups:
            raise ValueError(
                f"{self.name}: input channels ({channels}) must be divisible by "
                f"deformable_groups ({self.deformable_groups})"
            )
        self.compute_output_shape(input_shape)
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(kh, kw, channels // self.groups, self.filters),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint)
        self.offset_kernel = self.offset_bias = None
        if self.owns_offset_branch:
            if max(self.strides) > 1 and max(self.dilation_rate) > 1:
                raise ValueError(
                    f"{self.name}: the offset branch (tf.nn.conv2d) does not support strides > 1 "
                    f"together with dilation_rate > 1 (got strides={self.strides}, "
                    f"dilation_rate={self.dilation_rate}); pass offsets explicitly instead"
                )
            branch = self.offset_channels + (self.mask_channels if self.modulated else 0)
            self.offset_kernel = self.add_weight(
                name="offset_kernel", shape=(kh, kw, channels, branch),
                initializer=self.offset_kernel_initializer)
            self.offset_bias = self.add_weight(
                name="offset_bias", shape=(branch,), initializer=self.offset_bias_initializer)

    # -- computation -------------------------------------------------------------------------
    def _to_nhwc(self, t):
        return t if self.data_format == "channels_last" else tf.transpose(t, [0, 2, 3, 1])

    def _tf_padding(self):
        if self._padding_mode != "EXPLICIT":
            return self._padding_mode
        top, bottom, left, right = self._explicit_padding
        return [[0, 0], [top, bottom], [left, right], [0, 0]]

    def offsets_and_mask(self, x_nhwc):
        """Offsets ``[N, Ho, Wo, 2*DG*kh*kw]`` and mask (v2, else None) of the owned branch.

        ``x_nhwc`` is the layer's input in NHWC, whatever the layer's ``data_format``.
        """
        if not self.owns_offset_branch:
            raise ValueError(f"{self.name} takes its offsets as inputs and owns no branch")
        dtype = x_nhwc.dtype
        branch = tf.nn.conv2d(x_nhwc, tf.cast(self.offset_kernel, dtype), self.strides,
                              self._tf_padding(), dilations=self.dilation_rate)
        branch = tf.nn.bias_add(branch, tf.cast(self.offset_bias, dtype))
        offsets = branch[..., : self.offset_channels]
        mask = tf.sigmoid(branch[..., self.offset_channels:]) if self.modulated else None
        return offsets, mask

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            if self.owns_offset_branch:
                raise ValueError(f"{self.name} was built for a single input x, got a list")
            x = self._to_nhwc(inputs[0])
            offsets = self._to_nhwc(inputs[1])
            mask = self._to_nhwc(inputs[2]) if len(inputs) > 2 else None
        else:
            if not self.owns_offset_branch:
                raise ValueError(f"{self.name} was built for [x, offsets(, mask)], got one tensor")
            x = self._to_nhwc(inputs)
            offsets, mask = self.offsets_and_mask(x)
        dtype = x.dtype
        conv = composite.deform_conv2d if self._implementation == "composite" else deform_conv2d
        outputs = conv(
            x, tf.cast(offsets, dtype), tf.cast(self.kernel, dtype),
            mask=None if mask is None else tf.cast(mask, dtype),
            bias=tf.cast(self.bias, dtype) if self.use_bias else None,
            strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
            groups=self.groups, deformable_groups=self.deformable_groups)
        if self.activation is not None:
            outputs = self.activation(outputs)
        if self.data_format == "channels_first":
            outputs = tf.transpose(outputs, [0, 3, 1, 2])
        return outputs

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "data_format": self.data_format,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "deformable_groups": self.deformable_groups,
            "modulated": self.modulated,
            "offset_kernel_initializer": keras.initializers.serialize(
                self.offset_kernel_initializer),
            "offset_bias_initializer": keras.initializers.serialize(self.offset_bias_initializer),
            "implementation": self._implementation,
        })
        return config
