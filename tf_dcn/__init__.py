"""tf-dcn: Deformable Convolutional Networks for TensorFlow and Keras.

Custom C++ ops with registered gradients, channels-last (NHWC) like Keras:
``deform_conv2d`` (v1 offsets, modulated v2 with a mask), ``deform_psroi_pool`` (R-FCN) and
``deform_roi_pool`` (Faster R-CNN), and the Keras 3 layers in ``tf_dcn.layers``. Importing the
package registers the layers with Keras' serialisation and loads one op library: the CUDA one
when it was built, TensorFlow is a CUDA build and the driver supports CUDA 12.0, else the CPU one
(``TF_DCN_OPS=cpu|cuda`` forces either; ``loaded_library()`` says which).
"""

from tf_dcn import _environment

# First, so that a missing or mismatched TensorFlow fails with install advice, not a traceback.
_environment.check_tensorflow_and_keras()

from tf_dcn import applications, composite, convert, layers  # noqa: E402
from tf_dcn import _loader  # noqa: E402
from tf_dcn._loader import load_ops, loaded_library  # noqa: E402
from tf_dcn.deform_conv import deform_conv2d  # noqa: E402
from tf_dcn.deform_psroi_pool import deform_psroi_pool, deform_roi_pool  # noqa: E402
from tf_dcn.export import export_portable, use_implementation  # noqa: E402
from tf_dcn.onnx_export import export_onnx  # noqa: E402

_loader.load_at_import()

__version__ = "0.1.0"

__all__ = ["applications", "composite", "convert", "deform_conv2d", "deform_psroi_pool",
           "deform_roi_pool", "export_onnx", "export_portable", "layers", "load_ops",
           "loaded_library", "use_implementation", "__version__"]
