"""ResNet-18..152: TorchUncertainty's state-dict layout, torchvision's numbers, CIFAR dispatch."""

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from torch_deup.models import CifarResNet, ResNet, resnet
from torch_deup.outputs import OutputCapture, last_linear

REFERENCE = (
    Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "resnet_state_dict_keys.json"
)
COMBOS = [(arch, style) for arch in (18, 34, 50) for style in ("cifar", "imagenet")]


@pytest.fixture(scope="module")
def tu_keys() -> dict[str, dict[str, list[int]]]:
    """Keys and shapes of torch-uncertainty 0.13.0's ``resnet`` (10 classes, 3 input channels)."""
    if not REFERENCE.is_file():
        pytest.skip(f"reference key file {REFERENCE} is absent (../shared beside the repo)")
    return json.loads(REFERENCE.read_text())


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize(("arch", "style"), COMBOS)
def test_state_dict_equals_torch_uncertainty(tu_keys, arch, style):
    expected = tu_keys[f"arch={arch},style={style}"]
    got = _shapes(resnet(in_channels=3, num_classes=10, arch=arch, style=style, conv_bias=False))
    assert list(got) == list(expected)  # same keys in the same order
    assert got == expected


def test_conv_bias_adds_one_bias_per_convolution(tu_keys):
    expected = tu_keys["arch=18,style=cifar"]
    conv_biases = {k.removesuffix("weight") + "bias": [s[0]] for k, s in expected.items() if len(s) == 4}
    assert _shapes(resnet(arch=18, conv_bias=True)) == expected | conv_biases


# torchvision's ResNet v1.5 computes the same function under other names, an independent reference.
# Models are built on the meta device and filled with random tensors: skipping the weight
# initialisation of two ResNet-50s keeps the test fast.
def _torchvision_twin_state(arch: int, style: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{arch}")(num_classes=10)
    if style == "cifar":
        tv.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False, device="meta")
        tv.maxpool = nn.Identity()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, t in tv.state_dict().items():
        if "num_batches_tracked" in name:
            state[name] = torch.tensor(0)
        elif "running_var" in name:  # random statistics, so that eval-mode BatchNorm is not the identity
            state[name] = torch.rand(t.shape, generator=gen) + 0.5
        else:
            state[name] = 0.1 * torch.randn(t.shape, generator=gen)
    tv.load_state_dict(state, assign=True)
    return tv.eval(), state


@pytest.mark.parametrize(
    ("arch", "style", "size"), [(18, "cifar", 16), (18, "imagenet", 32), (50, "imagenet", 32)]
)
def test_forward_equals_torchvision_with_same_weights(arch, style, size):
    tv, state = _torchvision_twin_state(arch, style)
    with torch.device("meta"):
        model = resnet(arch=arch, style=style)
    renamed = {k.replace("downsample", "shortcut").replace("fc.", "linear."): v for k, v in state.items()}
    model.load_state_dict(renamed, assign=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tv(x), rtol=1e-4, atol=1e-5)


# Parameter counts published in torchvision's model table (ImageNet stem, 1000 classes).
@pytest.mark.parametrize(
    ("arch", "count"),
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160), (152, 60_192_808)],
)
def test_parameter_count_equals_torchvision(arch, count):
    with torch.device("meta"):
        model = resnet(num_classes=1000, arch=arch, style="imagenet")
    assert sum(p.numel() for p in model.parameters()) == count


def test_cifar_resnet18_has_torch_uncertainty_size():
    # torchvision's count with a 3x3 stem and a 10-class head: TU's tutorial prints "11.17 M".
    count = 11_689_512 - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3 - 1000 * 513 + 10 * 513
    with torch.device("meta"):
        model = resnet(arch=18)
    assert sum(p.numel() for p in model.parameters()) == count == 11_173_962


# Shapes only, on the meta device: the numbers are checked against torchvision above.
@pytest.mark.parametrize(("arch", "width"), [(18, 512), (34, 512), (50, 2048), (101, 2048), (152, 2048)])
@pytest.mark.parametrize("style", ["cifar", "imagenet"])
def test_head_is_last_linear_and_embedding_is_captured(arch, width, style):
    with torch.device("meta"):
        model = resnet(num_classes=7, arch=arch, style=style)
        out = OutputCapture(model)(torch.zeros(2, 3, 32, 32))
    assert last_linear(model) is model.linear
    assert out.logits.shape == (2, 7)
    assert out.embedding.shape == (2, width)


@pytest.mark.parametrize("arch", [18, 50])  # a basic-block and a bottleneck network
def test_cifar_style_keeps_resolution_in_the_first_stage(arch):
    model = resnet(in_channels=1, num_classes=4, arch=arch, style="cifar")
    x = torch.zeros(2, 1, 8, 8)
    assert model.layer1(model.conv1(x)).shape[-2:] == (8, 8)
    assert model(x).shape == (2, 4)


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    model = resnet(arch=18, style="imagenet", dropout_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), model(x))
        model.train()  # BatchNorm uses batch statistics, so only dropout differs between passes
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("arch", [20, 32, 44, 56, 110])
def test_cifar_depths_dispatch_to_cifar_resnet(arch):
    model = resnet(in_channels=3, num_classes=10, arch=arch)
    assert isinstance(model, CifarResNet)
    assert len(model.layer1) == (arch - 2) // 6


def test_resnet_builds_the_public_class():
    assert isinstance(resnet(arch=34), ResNet)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"arch": 19},
            r"Expected `arch` to be one of \[18, 20, 32, 34, 44, 50, 56, 101, 110, 152\], but got 19",
        ),
        ({"style": "tiny"}, r"Expected `style` to be one of \['cifar', 'imagenet'\], but got 'tiny'"),
        ({"dropout_rate": 1.0}, r"Expected `dropout_rate` in \[0, 1\), but got 1.0"),
        ({"arch": 20, "style": "imagenet"}, r"arch=20 is the CIFAR ResNet.*got style='imagenet'"),
        ({"arch": 56, "conv_bias": True}, r"arch=56 is the CIFAR ResNet.*conv_bias=True"),
        ({"arch": 110, "dropout_rate": 0.1}, r"arch=110 is the CIFAR ResNet.*dropout_rate=0.1"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet(**kwargs)
