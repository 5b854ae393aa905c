"""FLOPs and parameter counts against hand counts and TorchUncertainty's ResNet-18 figures."""

import torch
import torchvision
from torch import nn

from torch_deup.metrics import flops, format_metric, params


def test_flops_are_two_per_multiply_accumulate() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    batch = torch.zeros(2, 3, 16, 16)
    conv_macs = 2 * 8 * 16 * 16 * (3 * 3 * 3)  # batch x out channels x out pixels x kernel volume
    linear_macs = 2 * (8 * 16 * 16) * 10
    assert flops(model, batch) == 2 * (conv_macs + linear_macs)
    assert flops(model, batch, on_meta=False) == 2 * (conv_macs + linear_macs)


def test_counting_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)).train()
    model[2].eval()  # a batch norm frozen on purpose stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops(model, torch.randn(8, 4))
    flops(model, torch.randn(8, 4), on_meta=False)
    assert [m.training for m in model] == [True, True, False]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_params_counts_shared_weights_once_and_filters_trainable() -> None:
    linear = nn.Linear(3, 2)
    model = nn.Sequential(linear, nn.ReLU(), linear, nn.Linear(2, 1))
    model[3].weight.requires_grad_(False)
    assert params(model) == (3 * 2 + 2) + (2 * 1 + 1)
    assert params(model, trainable_only=True) == (3 * 2 + 2) + 1


def test_cifar_resnet18_matches_torch_uncertainty_tables() -> None:
    # TorchUncertainty's CIFAR ResNet-18: 3x3 stem, no max-pooling; batch of 256 (DEUP tutorial)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    assert format_metric("flops", flops(model, torch.zeros(256, 3, 32, 32))) == "284.38 G"
    assert format_metric("params", params(model)) == "11.17 M"
