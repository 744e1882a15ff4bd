"""Keras 3 layers of deformable RoI pooling (Faster R-CNN) and deformable PS-RoI pooling (R-FCN)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_dcn import composite
from tf_dcn._arguments import check_rank, positive_int
from tf_dcn.deform_psroi_pool import deform_psroi_pool, deform_roi_pool
from tf_dcn.layers import _boxes
from tf_dcn.layers._implementation import ImplementationSwitch
from tf_dcn.layers._input_structure import InputSpecPerStructure, list_length


def _non_negative(value, name: str) -> float:
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"{name} must be a non-negative number, got {name}={value!r}")
    return value


class _RoIPoolingBase(ImplementationSwitch, InputSpecPerStructure, keras.layers.Layer):
    """Shared behaviour: XLA only with the composite implementation, boxes kept in float32,
    features cast to the compute dtype, inputs checked by ``input_spec`` (ranks; rois ``[R, 5]``
    or boxes ``[N, K, 4]``; the channels the weights were built for) and by
    ``compute_output_shape``. The boxes input may be ``rois [R, 5]`` (one row per RoI with its
    batch index) or per-image ``boxes [N, K, 4]`` in ``bounding_box_format`` (see
    :mod:`tf_dcn.layers._boxes`), which give ``[N, K, ...]`` outputs."""

    #: ``(name, rank, layout)`` of each input, in order; the inputs past the second are optional.
    _INPUTS: tuple[tuple[str, int, str], ...] = ()

    def __init__(self, implementation: str = "op", bounding_box_format: str = "xyxy",
                 image_size=None, **kwargs):
        # Box coordinates must not be autocast to float16 under mixed precision: the layer casts
        # the features and weights itself and passes rois through unchanged (float32).
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        # Also sets supports_jit (the custom op cannot be XLA-compiled, the composite can).
        self.implementation = implementation
        # Channels of the input the offset branch reads (features or offset features), once built.
        self._branch_channels: int | None = None
        self.bounding_box_format = _boxes.check_box_format(bounding_box_format)
        if image_size is not None and (not isinstance(image_size, (list, tuple))
                                       or len(image_size) != 2):
            raise ValueError(f"image_size must be (height, width), got image_size={image_size!r}")
        self.image_size = None if image_size is None else tuple(
            positive_int(v, "image_size") for v in image_size)

    def _psroi_pool(self, *args, **kwargs):
        if self._implementation == "composite":
            return composite.deform_psroi_pool(*args, **kwargs)
        return deform_psroi_pool(*args, **kwargs)

    def _roi_pool(self, *args, **kwargs):
        if self._implementation == "composite":
            return composite.deform_roi_pool(*args, **kwargs)
        return deform_roi_pool(*args, **kwargs)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("autocast", None)
        return cls(**config)

    def _check_count(self, count: int | None) -> None:
        allowed = range(2, len(self._INPUTS) + 1)
        if count not in allowed:
            names = [name for name, _, _ in self._INPUTS]
            expected = " or ".join(f"[{', '.join(names[:n])}]" for n in allowed)
            got = "one tensor" if count is None else f"a list of {count}"
            raise ValueError(f"{self.name}: expected a list {expected}, got {got}")

    def _split(self, inputs) -> list:
        """``inputs`` (tensors or shapes) as a list, after checking how many there are."""
        self._check_count(list_length(inputs))
        return list(inputs)

    def _branch_input_index(self, count: int) -> int:
        """Index of the input the offset branch reads (its channels fix the weights)."""
        return 0

    def _input_spec_for(self, count: int | None):
        self._check_count(count)
        specs = []
        for index, (name, rank, _) in enumerate(self._INPUTS[:count]):
            if name == "rois":  # rois [R, 5] or boxes [N, K, 4]: _as_rois checks the last axis
                specs.append(keras.layers.InputSpec(min_ndim=2, max_ndim=3, name=name))
                continue
            axes = None
            if index == self._branch_input_index(count) and self._branch_channels is not None:
                axes = {-1: self._branch_channels}
            specs.append(keras.layers.InputSpec(ndim=rank, axes=axes, name=name))
        return specs

    def _check_shapes(self, input_shape) -> list[tuple]:
        """The input shapes as tuples; ValueError for a wrong rank, rois not ``[R, 5]`` or boxes
        not ``[N, K, 4]``. (Called through the layer, Keras' input_spec has checked the same
        already.)"""
        shapes = [tuple(shape) for shape in self._split(input_shape)]
        for (name, rank, layout), shape in zip(self._INPUTS, shapes):
            if name == "rois":
                continue
            if len(shape) != rank:
                raise ValueError(
                    f"{self.name}: expected a {rank}-D {name} {layout}, got shape {shape}")
        boxes = shapes[1]
        if not ((len(boxes) == 2 and boxes[-1] in (None, 5))
                or (len(boxes) == 3 and boxes[-1] in (None, 4))):
            raise ValueError(f"{self.name}: the boxes input must be rois [R, 5] or boxes "
                             f"[N, K, 4], got shape {boxes}")
        if len(boxes) == 3 and None not in (shapes[0][0], boxes[0]) and shapes[0][0] != boxes[0]:
            raise ValueError(f"{self.name}: boxes [N, K, 4] must have the features' batch size "
                             f"{shapes[0][0]}, got shape {boxes}")
        return shapes

    def _pooled_shape(self, boxes_shape, tail) -> tuple:
        """``(R,) + tail`` for rois ``[R, 5]``, ``(N, K) + tail`` for boxes ``[N, K, 4]``."""
        if len(boxes_shape) == 3:
            return (boxes_shape[0], boxes_shape[1]) + tuple(tail)
        return (boxes_shape[0],) + tuple(tail)

    def _as_rois(self, features, boxes):
        """``(rois [R, 5], finish)``: the boxes input as rois, and the function that turns the
        pooled ``[R, ...]`` into the layer's output (``[N, K, ...]`` with zeros for padding
        boxes, for boxes ``[N, K, 4]``; unchanged for rois)."""
        boxes = tf.convert_to_tensor(boxes)
        self._check_shapes([features.shape, boxes.shape])
        if boxes.shape.rank != 3:
            return boxes, lambda pooled: pooled
        if self.image_size is not None:
            height, width = self.image_size
        elif self.bounding_box_format.startswith("rel_"):
            if self.spatial_scale == 0.0:
                raise ValueError(f"{self.name}: relative boxes need image_size or a positive "
                                 "spatial_scale")
            shape = tf.shape(features)
            height = tf.cast(shape[1], tf.float32) / self.spatial_scale
            width = tf.cast(shape[2], tf.float32) / self.spatial_scale
        else:
            height = width = 1.0  # unused by the absolute formats
        rois, padding = _boxes.boxes_to_rois(boxes, self.bounding_box_format, height, width)
        batch, count = tf.shape(boxes)[0], tf.shape(boxes)[1]
        return rois, lambda pooled: _boxes.pooled_per_image(pooled, padding, batch, count)

    def _finish_build(self, shapes: list[tuple]) -> None:
        """Records the channels the weights were built for, for ``input_spec``."""
        self._branch_channels = shapes[self._branch_input_index(len(shapes))][-1]
        self.input_spec = self._input_spec_for(len(shapes))

    def _boxes_config(self) -> dict:
        return {"bounding_box_format": self.bounding_box_format,
                "image_size": None if self.image_size is None else list(self.image_size)}

    def _features(self, t):
        return tf.cast(t, self.compute_dtype)

    def _weight(self, w):
        return tf.cast(w, self.compute_dtype)


@keras.saving.register_keras_serializable(package="tf_dcn")
class DeformableRoIPooling(_RoIPoolingBase):
    """Deformable RoI pooling (Dai et al. 2017, section 2.2) for Faster R-CNN style heads.

    A plain pooling of each RoI (the op without offsets) feeds a fully connected branch
    (zero-initialised) that predicts a normalised offset ``(x, y)`` for each of the
    ``pooled_size x pooled_size`` bins; the features are then pooled again with each bin moved by
    ``offset * trans_std * (roi width, roi height)`` (the paper's gamma = ``trans_std`` = 0.1).
    At initialisation the offsets are zero, so the layer starts as a plain (average) RoI pooling.

    Args:
        pooled_size: bins per side ``k``.
        spatial_scale: feature-map scale relative to the box coordinates (1/16 for a stride-16
            feature map).
        sample_per_part: bilinear samples per bin side.
        trans_std: scale of the predicted offsets.
        offset_kernel_initializer, offset_bias_initializer: of the fully connected branch.
        implementation: ``"op"`` (default, the custom C++ op) or ``"composite"`` (plain
            TensorFlow ops from :mod:`tf_dcn.composite`: XLA-compilable, exportable with
            :func:`tf_dcn.export_portable`; ``supports_jit`` is then True). Same weights and
            results; settable later through the ``implementation`` attribute or
            :func:`tf_dcn.use_implementation`.
        bounding_box_format: format of per-image boxes ``[N, K, 4]`` (``keras.utils.
            bounding_boxes`` names: ``"xyxy"`` (default), ``"yxyx"``, ``"xywh"``,
            ``"center_xywh"``, ``"center_yxhw"`` in input-image pixels, and their ``"rel_"``
            forms, fractions of the image size). Not used with rois ``[R, 5]``.
        image_size: ``(height, width)`` of the input image, for relative formats; by default
            the features' size divided by ``spatial_scale``.
        **kwargs: base layer arguments.

    Input shape:
        ``[features, rois]``: ``features [N, H, W, C]``; ``rois [R, 5]`` rows
        ``(batch_index, x1, y1, x2, y2)`` in input-image pixels, or per-image ``boxes
        [N, K, 4]`` in ``bounding_box_format``, padded with boxes of four -1 (the form
        ``model.fit`` slices consistently with the images).

    Output shape:
        ``[R, pooled_size, pooled_size, C]``, or ``[N, K, pooled_size, pooled_size, C]`` for
        boxes (zeros, and no gradient, for padding boxes).

    Example:
        >>> feats = keras.Input((None, None, 256))
        >>> rois = keras.Input((5,))
        >>> pooled = tf_dcn.layers.DeformableRoIPooling(pooled_size=7)([feats, rois])
    """

    _INPUTS = (("features", 4, "[N, H, W, C]"), ("rois", 2, "[R, 5]"))

    def __init__(self, pooled_size: int = 7, spatial_scale: float = 1.0 / 16,
                 sample_per_part: int = 4, trans_std: float = 0.1,
                 offset_kernel_initializer="zeros", offset_bias_initializer="zeros",
                 implementation: str = "op", bounding_box_format: str = "xyxy",
                 image_size=None, **kwargs):
        super().__init__(implementation=implementation, bounding_box_format=bounding_box_format,
                         image_size=image_size, **kwargs)
        self.pooled_size = positive_int(pooled_size, "pooled_size")
        self.spatial_scale = _non_negative(spatial_scale, "spatial_scale")
        self.sample_per_part = positive_int(sample_per_part, "sample_per_part")
        self.trans_std = _non_negative(trans_std, "trans_std")
        self.offset_kernel_initializer = keras.initializers.get(offset_kernel_initializer)
        self.offset_bias_initializer = keras.initializers.get(offset_bias_initializer)

    def build(self, input_shape):
        shapes = self._check_shapes(input_shape)
        channels = shapes[0][-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension of features must be known")
        k = self.pooled_size
        self.offset_kernel = self.add_weight(
            name="offset_kernel", shape=(k * k * channels, k * k * 2),
            initializer=self.offset_kernel_initializer)
        self.offset_bias = self.add_weight(
            name="offset_bias", shape=(k * k * 2,), initializer=self.offset_bias_initializer)
        self._finish_build(shapes)

    def compute_output_shape(self, input_shape):
        """``(R, pooled_size, pooled_size, C)`` (``(N, K, ...)`` for boxes ``[N, K, 4]``);
        validates the number and ranks of the inputs and the boxes' last dimension."""
        features_shape, rois_shape = self._check_shapes(input_shape)
        return self._pooled_shape(rois_shape,
                                  (self.pooled_size, self.pooled_size, features_shape[-1]))

    def _pool(self, features, rois, offsets):
        return self._roi_pool(features, rois, offsets, pooled_size=self.pooled_size,
                              sample_per_part=self.sample_per_part, trans_std=self.trans_std,
                              spatial_scale=self.spatial_scale)

    def predict_offsets(self, features, rois):
        """Normalised bin offsets ``[R, k, k, 2]`` (**x before y**) of the fully connected branch."""
        features = self._features(features)
        k = self.pooled_size
        plain = self._pool(features, rois, None)
        flat = tf.reshape(plain, [-1, k * k * features.shape[-1]])
        offsets = tf.matmul(flat, self._weight(self.offset_kernel)) + self._weight(self.offset_bias)
        return tf.reshape(offsets, [-1, k, k, 2])

    def call(self, inputs):
        features, boxes = self._split(inputs)
        features = self._features(features)
        rois, finish = self._as_rois(features, boxes)
        return finish(self._pool(features, rois, self.predict_offsets(features, rois)))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "pooled_size": self.pooled_size,
            "spatial_scale": self.spatial_scale,
            "sample_per_part": self.sample_per_part,
            "trans_std": self.trans_std,
            "offset_kernel_initializer": keras.initializers.serialize(
                self.offset_kernel_initializer),
            "offset_bias_initializer": keras.initializers.serialize(self.offset_bias_initializer),
            "implementation": self._implementation,
            **self._boxes_config(),
        })
        return config


@keras.saving.register_keras_serializable(package="tf_dcn")
class DeformablePSRoIPooling(_RoIPoolingBase):
    """Deformable position-sensitive RoI pooling: the deformable R-FCN head (Dai et al. 2017).

    A 1x1 convolution (zero-initialised) of ``offset_features`` (default: the score maps) produces
    ``2*k*k*num_offset_classes`` maps (``k = group_size``); their position-sensitive pooling
    without offsets gives a normalised ``(x, y)`` offset per part cell and offset class; the score
    maps are then pooled with each bin moved by ``offset * trans_std * (roi width, roi height)``.

    Args:
        output_dim: output channels (e.g. classes + 1 for R-FCN's classification maps).
        group_size: position-sensitive groups per side; the score maps have
            ``output_dim * group_size**2`` channels, channel ``(c*group_size + gy)*group_size + gx``.
        pooled_size: bins per side (default ``group_size``).
        part_size: offset cells per side (default ``pooled_size``).
        sample_per_part: bilinear samples per bin side.
        trans_std: scale of the offsets.
        spatial_scale: feature-map scale relative to the box coordinates.
        class_aware_offsets: one offset field per output channel class (``num_offset_classes =
            output_dim``) instead of one shared field.
        offset_kernel_initializer, offset_bias_initializer: of the 1x1 offset convolution.
        implementation: ``"op"`` (default, the custom C++ op) or ``"composite"`` (plain
            TensorFlow ops from :mod:`tf_dcn.composite`: XLA-compilable, exportable with
            :func:`tf_dcn.export_portable`; ``supports_jit`` is then True). Same weights and
            results; settable later through the ``implementation`` attribute or
            :func:`tf_dcn.use_implementation`.
        bounding_box_format: format of per-image boxes ``[N, K, 4]`` (``keras.utils.
            bounding_boxes`` names: ``"xyxy"`` (default), ``"yxyx"``, ``"xywh"``,
            ``"center_xywh"``, ``"center_yxhw"`` in input-image pixels, and their ``"rel_"``
            forms, fractions of the image size). Not used with rois ``[R, 5]``.
        image_size: ``(height, width)`` of the input image, for relative formats; by default
            the features' size divided by ``spatial_scale``.
        **kwargs: base layer arguments.

    Input shape:
        ``[score_maps, rois]`` or ``[score_maps, rois, offset_features]``: ``score_maps
        [N, H, W, output_dim*group_size**2]``, ``rois [R, 5]`` (``batch_index, x1, y1, x2, y2``)
        or per-image ``boxes [N, K, 4]`` in ``bounding_box_format`` (padding boxes all -1),
        ``offset_features [N, H, W, Cf]``.

    Output shape:
        ``[R, pooled_size, pooled_size, output_dim]``, or ``[N, K, pooled_size, pooled_size,
        output_dim]`` for boxes (zeros, and no gradient, for padding boxes).
    """

    _INPUTS = (("score_maps", 4, "[N, H, W, output_dim*group_size**2]"), ("rois", 2, "[R, 5]"),
               ("offset_features", 4, "[N, H, W, Cf]"))

    def __init__(self, output_dim: int, group_size: int = 7, pooled_size: int | None = None,
                 part_size: int | None = None, sample_per_part: int = 4, trans_std: float = 0.1,
                 spatial_scale: float = 1.0 / 16, class_aware_offsets: bool = False,
                 offset_kernel_initializer="zeros", offset_bias_initializer="zeros",
                 implementation: str = "op", bounding_box_format: str = "xyxy",
                 image_size=None, **kwargs):
        super().__init__(implementation=implementation, bounding_box_format=bounding_box_format,
                         image_size=image_size, **kwargs)
        self.output_dim = positive_int(output_dim, "output_dim")
        self.group_size = positive_int(group_size, "group_size")
        self.pooled_size = positive_int(pooled_size if pooled_size is not None else group_size,
                                     "pooled_size")
        self.part_size = positive_int(part_size if part_size is not None else self.pooled_size,
                                   "part_size")
        self.sample_per_part = positive_int(sample_per_part, "sample_per_part")
        self.trans_std = _non_negative(trans_std, "trans_std")
        self.spatial_scale = _non_negative(spatial_scale, "spatial_scale")
        self.class_aware_offsets = bool(class_aware_offsets)
        self.offset_kernel_initializer = keras.initializers.get(offset_kernel_initializer)
        self.offset_bias_initializer = keras.initializers.get(offset_bias_initializer)

    @property
    def num_offset_classes(self) -> int:
        return self.output_dim if self.class_aware_offsets else 1

    def _branch_input_index(self, count: int) -> int:
        return 2 if count == 3 else 0  # offset_features, else the score maps

    def _input_spec_for(self, count: int | None):
        score_channels = self.output_dim * self.group_size ** 2
        if count == 2 and self._branch_channels not in (None, score_channels):
            raise ValueError(
                f"{self.name}: the offset branch was built for offset_features of "
                f"{self._branch_channels} channels; call it on [score_maps, rois, "
                "offset_features]"
            )
        return super()._input_spec_for(count)

    def build(self, input_shape):
        self.compute_output_shape(input_shape)  # validates the shapes, the score maps' channels
        shapes = self._check_shapes(input_shape)
        offset_channels = shapes[self._branch_input_index(len(shapes))][-1]
        if offset_channels is None:
            raise ValueError(f"{self.name}: the channel dimension of the offset features must "
                             "be known")
        maps = 2 * self.group_size ** 2 * self.num_offset_classes
        self.offset_kernel = self.add_weight(
            name="offset_kernel", shape=(1, 1, offset_channels, maps),
            initializer=self.offset_kernel_initializer)
        self.offset_bias = self.add_weight(
            name="offset_bias", shape=(maps,), initializer=self.offset_bias_initializer)
        self._finish_build(shapes)

    def compute_output_shape(self, input_shape):
        """``(R, pooled_size, pooled_size, output_dim)``; validates the number and ranks of the
        inputs, the rois' last dimension (5) and the score maps' channels."""
        shapes = self._check_shapes(input_shape)
        channels = shapes[0][-1]
        expected = self.output_dim * self.group_size ** 2
        if channels is not None and channels != expected:
            raise ValueError(
                f"{self.name}: score_maps must have output_dim * group_size**2 = {expected} "
                f"channels, got shape {shapes[0]}"
            )
        return self._pooled_shape(shapes[1],
                                  (self.pooled_size, self.pooled_size, self.output_dim))

    def predict_offsets(self, offset_features, rois):
        """Normalised offsets ``[R, part_size, part_size, 2*num_offset_classes]`` (x before y)."""
        offset_features = self._features(offset_features)
        check_rank(offset_features, 4, "offset_features", "[N, H, W, Cf]")
        maps = tf.nn.conv2d(offset_features, self._weight(self.offset_kernel), 1, "VALID")
        maps = tf.nn.bias_add(maps, self._weight(self.offset_bias))
        return self._psroi_pool(
            maps, rois, None, output_dim=2 * self.num_offset_classes, group_size=self.group_size,
            pooled_size=self.part_size, sample_per_part=self.sample_per_part,
            spatial_scale=self.spatial_scale)

    def call(self, inputs):
        inputs = self._split(inputs)
        score_maps = self._features(inputs[0])
        rois, finish = self._as_rois(score_maps, inputs[1])
        offset_features = inputs[2] if len(inputs) == 3 else score_maps
        offsets = self.predict_offsets(offset_features, rois)
        return finish(self._psroi_pool(
            score_maps, rois, offsets, output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, part_size=self.part_size,
            sample_per_part=self.sample_per_part, trans_std=self.trans_std,
            spatial_scale=self.spatial_scale))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "output_dim": self.output_dim,
            "group_size": self.group_size,
            "pooled_size": self.pooled_size,
            "part_size": self.part_size,
            "sample_per_part": self.sample_per_part,
            "trans_std": self.trans_std,
            "spatial_scale": self.spatial_scale,
            "class_aware_offsets": self.class_aware_offsets,
            "offset_kernel_initializer": keras.initializers.serialize(
                self.offset_kernel_initializer),
            "offset_bias_initializer": keras.initializers.serialize(self.offset_bias_initializer),
            "implementation": self._implementation,
            **self._boxes_config(),
        })
        return config
