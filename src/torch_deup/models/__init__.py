"""Model architectures."""

from torch_deup.models.classification import CifarResNet, ResNet, resnet
from torch_deup.models.ensemble import DeepEnsemble

__all__ = ["CifarResNet", "DeepEnsemble", "ResNet", "resnet"]
