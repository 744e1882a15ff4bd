"""``DeformableConv2D``: the Keras 3 layer of deformable convolution v1 / modulated v2."""

from __future__ import annotations

import numbers
from typing import Any

import keras
import tensorflow as tf

from tf_dcn import composite
from tf_dcn._arguments import (check_rank, conv_output_size, normalize_pair, normalize_padding,
                               positive_int)
from tf_dcn.deform_conv import deform_conv2d
from tf_dcn.layers._implementation import ImplementationSwitch
from tf_dcn.layers._input_structure import InputSpecPerStructure

_INPUT_NAMES = ("x", "offsets", "mask")


def _is_shape_list(input_shape: Any) -> bool:
    """True for a list of shapes ([x, offsets(, mask)]), False for one shape."""
    return (isinstance(input_shape, (list, tuple)) and len(input_shape) > 0
            and isinstance(input_shape[0], (list, tuple, tf.TensorShape)))


def _plain_ints(value):
    """``value`` with numpy integers as Python ints, its structure kept (for get_config)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_ints(item) for item in value)
    return value


def _standardize_data_format(data_format: str | None) -> str:
    """``keras.config.image_data_format()`` for None, else the lower-cased value, which must be
    ``"channels_last"`` or ``"channels_first"`` (Keras' own rule for ``data_format``)."""
    if data_format is None:
        return keras.config.image_data_format()
    value = str(data_format).lower()
    if value not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
    return value


@keras.saving.register_keras_serializable(package="tf_dcn")
class DeformableConv2D(ImplementationSwitch, InputSpecPerStructure, keras.layers.Layer):
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
    those and owns no branch (decided at the first call). External offsets and mask are cast
    to the dtype of ``x`` as the layer sees it (its compute dtype, since Keras autocasts float
    inputs; with ``autocast=False`` the dtype ``x`` comes in), like the weights.

    Args:
        filters: number of output channels ``Cout``; divisible by ``groups``. Ints here and
            below may be any integral number (``np.int64`` too), not ``bool``.
        kernel_size: int or ``(kh, kw)``.
        strides: int or ``(sh, sw)``.
        padding: ``"valid"``, ``"same"``, an int, ``(ph, pw)`` or ``((top, bottom), (left,
            right))``.
        dilation_rate: int or ``(dh, dw)``.
        groups: convolution groups (``C`` and ``filters`` divisible by it).
        activation: activation applied to the output (``None``: linear).
        use_bias: whether to add a bias.
        data_format: ``"channels_last"`` (NHWC) or ``"channels_first"`` (NCHW; the layer
            transposes around the NHWC op, and external offsets/mask are then channels-first
            too: ``[N, 2*DG*kh*kw, Ho, Wo]``); case-insensitive; default
            ``keras.config.image_data_format()`` (normally ``"channels_last"``).
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
        ValueError: invalid arguments (including ``implementation``); inputs of another rank
            than 4 (Keras' ``input_spec`` message) or of other channels than built for; input
            channels not divisible by ``groups`` or ``deformable_groups``; an input smaller than
            the dilated kernel (after padding), from ``compute_output_shape``.

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
        filters = positive_int(filters, "filters")
        groups = positive_int(groups, "groups")
        if filters % groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")
        deformable_groups = positive_int(deformable_groups, "deformable_groups")
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size")
        self.strides = normalize_pair(strides, "strides")
        self.dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
        self._padding_mode, self._explicit_padding = normalize_padding(padding)
        self.padding = padding.lower() if isinstance(padding, str) else _plain_ints(padding)
        self.groups = groups
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.data_format = _standardize_data_format(data_format)
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
        self._input_channels: int | None = None  # C, known once built
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

    @property
    def normalized_padding(self) -> str | tuple[tuple[int, int], tuple[int, int]]:
        """The ``padding`` argument in one canonical form (read-only): ``"valid"``, ``"same"`` or
        explicit ``((top, bottom), (left, right))`` ints (an int ``p`` or a pair ``(ph, pw)``
        expanded). ``padding`` itself keeps the argument as given (for ``get_config``)."""
        if self._padding_mode == "EXPLICIT":
            top, bottom, left, right = self._explicit_padding
            return ((top, bottom), (left, right))
        return self._padding_mode.lower()

    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _layout(self) -> str:
        return "[N, H, W, C]" if self.data_format == "channels_last" else "[N, C, H, W]"

    def _input_spec_for(self, count: int | None):
        """The ``keras.layers.InputSpec`` of ``x`` (``count=None``) or of ``[x, offsets]`` /
        ``[x, offsets, mask]`` (``count`` 2 or 3): rank 4, and the channels once known."""
        if count is not None and count not in (2, 3):
            raise ValueError(
                f"{self.name}: call it on x, [x, offsets] or [x, offsets, mask]; got a list of "
                f"{count} inputs"
            )
        if self.owns_offset_branch is not None and self.owns_offset_branch != (count is None):
            built_for = "a single input x" if self.owns_offset_branch else "[x, offsets(, mask)]"
            got = "one tensor" if count is None else f"a list of {count}"
            raise ValueError(f"{self.name} was built for {built_for}, got {got}")
        axis = self._channel_axis()
        channels = [self._input_channels, self.offset_channels, self.mask_channels]
        specs = [
            keras.layers.InputSpec(ndim=4, name=name,
                                   axes=None if size is None else {axis: size})
            for name, size in zip(_INPUT_NAMES[:count or 1], channels)
        ]
        return specs[0] if count is None else specs

    def _output_length(self, axis: int, size: int | None, x_shape) -> int | None:
        """Output length of spatial axis 0 (height) or 1 (width); ValueError if it would be
        zero or negative (like Keras' convolutions)."""
        kernel, stride, dilation = (self.kernel_size[axis], self.strides[axis],
                                    self.dilation_rate[axis])
        before, after = (self._explicit_padding or [0, 0, 0, 0])[2 * axis: 2 * axis + 2]
        length = conv_output_size(size, kernel, stride, dilation, self._padding_mode, before,
                                  after)
        if size is not None and length is None:
            name = ("height", "width")[axis]
            raise ValueError(
                f"{self.name}: computed output size would be zero or negative: the input "
                f"{name} {size} plus padding {before} + {after} is smaller than the dilated "
                f"kernel {name} {dilation * (kernel - 1) + 1} (kernel_size={self.kernel_size}, "
                f"dilation_rate={self.dilation_rate}, padding={self.padding!r}); input shape "
                f"{x_shape}"
            )
        return length

    def compute_output_shape(self, input_shape):
        """The output shape; validates the rank of ``x`` and that the output is not empty."""
        x_shape = tuple(input_shape[0]) if _is_shape_list(input_shape) else tuple(input_shape)
        if len(x_shape) != 4:
            raise ValueError(
                f"{self.name}: expected a 4-D input x {self._layout()}, got shape {x_shape}")
        spatial = x_shape[1:3] if self.data_format == "channels_last" else x_shape[2:4]
        out_h = self._output_length(0, spatial[0], x_shape)
        out_w = self._output_length(1, spatial[1], x_shape)
        if self.data_format == "channels_last":
            return (x_shape[0], out_h, out_w, self.filters)
        return (x_shape[0], self.filters, out_h, out_w)

    # -- weights -----------------------------------------------------------------------------
    def build(self, input_shape):
        count = len(input_shape) if _is_shape_list(input_shape) else None
        self._input_spec_for(count)  # checks the number of inputs
        shapes = [tuple(s) for s in input_shape] if count else [tuple(input_shape)]
        for name, shape in zip(_INPUT_NAMES, shapes):
            # Called through the layer, Keras' input_spec has checked this already.
            if len(shape) != 4:
                raise ValueError(
                    f"{self.name}: expected a 4-D {name} {self._layout()}, got shape {shape}")
        x_shape = shapes[0]
        channels = x_shape[self._channel_axis()]
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
        self.compute_output_shape(input_shape)  # validates the spatial sizes, like Keras' Conv2D
        self.owns_offset_branch = count is None
        self._input_channels = channels
        self.input_spec = self._input_spec_for(count)
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
        x_nhwc = tf.convert_to_tensor(x_nhwc)
        check_rank(x_nhwc, 4, "x_nhwc", "[N, H, W, C]")
        dtype = x_nhwc.dtype
        branch = tf.nn.conv2d(x_nhwc, tf.cast(self.offset_kernel, dtype), self.strides,
                              self._tf_padding(), dilations=self.dilation_rate)
        branch = tf.nn.bias_add(branch, tf.cast(self.offset_bias, dtype))
        offsets = branch[..., : self.offset_channels]
        mask = tf.sigmoid(branch[..., self.offset_channels:]) if self.modulated else None
        return offsets, mask

    def call(self, inputs):
        # __call__ has checked the structure (x or [x, offsets(, mask)]) and the ranks.
        external = isinstance(inputs, (list, tuple))
        x = inputs[0] if external else inputs
        if x.shape.rank is not None:
            # Spatial sizes unknown at build time (keras.Input((None, None, C))) are known now.
            self.compute_output_shape(tuple(x.shape))
        x = self._to_nhwc(x)
        if external:
            offsets = self._to_nhwc(inputs[1])
            mask = self._to_nhwc(inputs[2]) if len(inputs) > 2 else None
        else:
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
