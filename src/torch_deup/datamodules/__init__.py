"""Lightning DataModules serving images as uint8 tensors in whole, normalised batches."""

from torch_deup.datamodules.base import TensorDataModule
from torch_deup.datamodules.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR10DataModule,
    CIFAR100DataModule,
)
from torch_deup.datamodules.image_folder import ImageFolderDataModule

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
    "TensorDataModule",
]
