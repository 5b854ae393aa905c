"""ResNet-18/34/50/101/152 (He et al., 2016) laid out like TorchUncertainty 0.13.0's ``resnet``.

Module names, registration order and shapes match TorchUncertainty's, so its published
checkpoints (``torch-uncertainty/resnet18_c10`` on Hugging Face) load with ``load_state_dict``.
Convolution shortcuts ("option B") project the input whenever the shape changes; the stride of a
bottleneck sits on its 3x3 convolution (ResNet v1.5, as in torchvision). The CIFAR depths
20..110 are the separate :class:`~torch_deup.models.classification.cifar_resnet.CifarResNet`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_deup.models.classification.cifar_resnet import DEPTHS as CIFAR_DEPTHS
from torch_deup.models.classification.cifar_resnet import CifarResNet

STYLES = ("cifar", "imagenet")


def _check_choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"Expected `{name}` to be one of {list(allowed)}, but got {value!r}.")


def _shortcut(in_planes: int, out_planes: int, stride: int, conv_bias: bool) -> nn.Sequential:
    """1x1 projection when the shape changes; an empty Sequential (identity, no keys) otherwise."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=conv_bias), nn.BatchNorm2d(out_planes)
    )


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int, dropout_rate: float, conv_bias: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout2d(dropout_rate)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, conv_bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.dropout(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int, dropout_rate: float, conv_bias: bool
    ) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout2d(dropout_rate)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride, conv_bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.dropout(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


LAYOUTS: dict[int, tuple[type[_BasicBlock | _Bottleneck], tuple[int, int, int, int]]] = {
    18: (_BasicBlock, (2, 2, 2, 2)),
    34: (_BasicBlock, (3, 4, 6, 3)),
    50: (_Bottleneck, (3, 4, 6, 3)),
    101: (_Bottleneck, (3, 4, 23, 3)),
    152: (_Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet-``arch`` with four stages of 64-128-256-512 planes; ``linear`` is the head.

    ``style="cifar"`` starts with a 3x3 stride-1 convolution and no max-pool (for 32x32 inputs);
    ``style="imagenet"`` with a 7x7 stride-2 convolution and a 3x3 stride-2 max-pool.
    ``dropout_rate`` drops channels inside each block and features before the head, as in
    TorchUncertainty (useful for MC dropout); dropout has no parameters, so keys do not change.

    Example:
        >>> model = ResNet(arch=18, num_classes=10, style="cifar")
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        arch: int = 18,
        num_classes: int = 10,
        in_channels: int = 3,
        style: Literal["cifar", "imagenet"] = "cifar",
        conv_bias: bool = False,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check_choice("arch", arch, tuple(LAYOUTS))
        _check_choice("style", style, STYLES)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"Expected `dropout_rate` in [0, 1), but got {dropout_rate}.")
        block, num_blocks = LAYOUTS[arch]
        if style == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=conv_bias)
            self.pool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=conv_bias)
            self.pool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, n in enumerate(num_blocks):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s, dropout_rate, conv_bias))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(dropout_rate)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(self.dropout(out))


def resnet(
    in_channels: int = 3,
    num_classes: int = 10,
    arch: int = 18,
    *,
    style: Literal["cifar", "imagenet"] = "cifar",
    conv_bias: bool = False,
    dropout_rate: float = 0.0,
) -> ResNet | CifarResNet:
    """Build a ResNet by depth, with TorchUncertainty's argument names.

    ``arch`` 18/34/50/101/152 gives a :class:`ResNet` whose state-dict keys and shapes equal those
    of ``torch_uncertainty.models.classification.resnet.resnet`` for the same arguments.
    ``arch`` 20/32/44/56/110 gives He et al.'s CIFAR ResNet with parameter-free shortcuts
    (:class:`CifarResNet`, the layout of akamaster/pytorch_resnet_cifar10); it exists in the
    CIFAR style only, without convolution bias or dropout. TorchUncertainty's own ResNet-20 uses
    convolution shortcuts, so its checkpoints do not load into it.

    Unlike TorchUncertainty's: ``style`` defaults to ``"cifar"`` (its default is ``"imagenet"``;
    pass the style, as its tutorial does), the options after ``arch`` are keyword-only, and there
    is no ``feats_forward``: the penultimate embedding is recorded by
    :class:`~torch_deup.outputs.OutputCapture` in the ordinary forward.

    Example:
        >>> model = resnet(in_channels=3, num_classes=10, arch=18, style="cifar")
        >>> model(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
        >>> type(resnet(arch=20)).__name__
        'CifarResNet'
    """
    _check_choice("arch", arch, tuple(sorted([*CIFAR_DEPTHS, *LAYOUTS])))
    if arch not in CIFAR_DEPTHS:
        return ResNet(arch, num_classes, in_channels, style, conv_bias, dropout_rate)
    if style != "cifar" or conv_bias or dropout_rate:
        raise ValueError(
            f"arch={arch} is the CIFAR ResNet with parameter-free shortcuts: it supports style='cifar', "
            f"conv_bias=False and dropout_rate=0.0 only, but got style={style!r}, conv_bias={conv_bias}, "
            f"dropout_rate={dropout_rate}. Use arch in {sorted(LAYOUTS)} for the other options."
        )
    return CifarResNet(depth=arch, num_classes=num_classes, in_channels=in_channels)
