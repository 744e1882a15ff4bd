"""Keras 3 layers of tf-dcn."""

from tf_dcn.layers.deformable_conv2d import DeformableConv2D
from tf_dcn.layers.deformable_roi_pooling import DeformablePSRoIPooling, DeformableRoIPooling

__all__ = ["DeformableConv2D", "DeformablePSRoIPooling", "DeformableRoIPooling"]
