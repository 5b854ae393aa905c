"""Classification backbones."""

from torch_deup.models.classification.cifar_resnet import CifarResNet
from torch_deup.models.classification.resnet import ResNet, resnet

__all__ = ["CifarResNet", "ResNet", "resnet"]
