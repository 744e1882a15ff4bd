"""Ready-made Keras backbones built from tf-dcn layers, loadable from PyTorch checkpoints."""

from tf_dcn.applications.deformable_resnet import (
    DeformableResNet,
    bottleneck_block,
    load_resnet_weights,
)

__all__ = ["DeformableResNet", "bottleneck_block", "load_resnet_weights"]
