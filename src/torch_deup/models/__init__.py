"""Model architectures."""

from torch_deup.models.classification import CifarResNet, ResNet, resnet

__all__ = ["CifarResNet", "ResNet", "resnet"]
