"""tf-dcn: Deformable Convolutional Networks for TensorFlow and Keras.

Custom C++ ops (deformable convolution v1/v2) with registered gradients, NHWC like Keras.
"""

from tf_dcn._loader import load_ops
from tf_dcn.deform_conv import deform_conv2d

__version__ = "0.1.0"

__all__ = ["deform_conv2d", "load_ops", "__version__"]
