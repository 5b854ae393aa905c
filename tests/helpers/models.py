"""Small models shared by tests."""

import torch
from torch import nn


def conv_net(seed: int = 0) -> nn.Module:
    """Two convolutional stages, then a pooled linear head: ``layers="auto"`` records the first."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()
