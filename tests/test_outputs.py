import numpy as np
import pytest
import torch
from torch import nn

from torch_deup.models import DeepEnsemble
from torch_deup.models.classification.resnet import resnet
from torch_deup.outputs import ModelOutputs, OutputCapture, auto_layers, channel_statistics, concat_outputs


def conv_net(seed: int = 0) -> nn.Module:
    """Two convolutional stages, then a pooled linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()


def numpy_statistics(feature_map: torch.Tensor) -> np.ndarray:
    flat = feature_map.detach().numpy().reshape(*feature_map.shape[:2], -1)
    return np.concatenate([flat.mean(2), flat.std(2)], axis=1)  # numpy's std is the population one


def test_channel_statistics_are_each_channels_mean_then_population_std():
    x = torch.randn(5, 3, 4, 7)
    np.testing.assert_allclose(channel_statistics(x).numpy(), numpy_statistics(x), rtol=1e-5, atol=1e-6)
    # one spatial position: a standard deviation of 0, not NaN
    assert torch.equal(channel_statistics(x[:, :, :1, :1])[:, 3:], torch.zeros(5, 3))


def test_auto_layers_are_the_stages_but_the_last():
    model = resnet(arch=20, num_classes=10)
    assert auto_layers(model) == [model.layer1, model.layer2]
    net = conv_net()
    assert auto_layers(net) == [net[0]]
    assert auto_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))) == []


@torch.no_grad()
def test_capture_records_the_statistics_of_the_first_stage_in_the_same_pass():
    net, x = conv_net(), torch.randn(8, 1, 5, 5)
    out = OutputCapture(net)(x)
    np.testing.assert_allclose(out.layer_stats.numpy(), numpy_statistics(net[0](x)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, net(x))
    # named layers, in the order given
    named = OutputCapture(net, layers=["1", "0"])(x)
    expected = np.concatenate([numpy_statistics(net[1](net[0](x))), numpy_statistics(net[0](x))], 1)
    np.testing.assert_allclose(named.layer_stats.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert OutputCapture(net, layers=None)(x).layer_stats is None


@torch.no_grad()
def test_an_ensemble_records_each_members_stages_in_member_order():
    members = [conv_net(0), conv_net(1)]
    x = torch.randn(4, 1, 5, 5)
    out = OutputCapture(DeepEnsemble(members).eval())(x)
    expected = np.concatenate([numpy_statistics(m[0](x)) for m in members], 1)
    np.testing.assert_allclose(out.layer_stats.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_bad_layers_are_named():
    net, x = conv_net(), torch.randn(2, 1, 5, 5)
    with pytest.raises(ValueError, match="no submodule 'stage9'"):
        OutputCapture(net, layers=["stage9"])
    with pytest.raises(ValueError, match=r"returned \(2, 6\), but layer statistics need"):
        OutputCapture(net, layers=["3"])(x)  # Flatten's output is (N, C)
    branch = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    unused = nn.Module()
    unused.net, unused.spare = branch, nn.Conv2d(1, 1, 1)
    unused.forward = branch.forward
    with pytest.raises(ValueError, match="Only 0 of the 1 layers"):
        OutputCapture(unused, layers=["spare"])(torch.randn(2, 4))


def test_indexing_moving_and_concatenating_keep_the_layer_statistics():
    out = ModelOutputs(torch.randn(6, 3), torch.randn(6, 4), layer_stats=torch.randn(6, 8))
    assert torch.equal(out[2:4].layer_stats, out.layer_stats[2:4])
    assert torch.equal(out.to("cpu").detach().layer_stats, out.layer_stats)
    assert torch.equal(concat_outputs([out[:2], out[2:]]).layer_stats, out.layer_stats)
    assert concat_outputs([ModelOutputs(torch.zeros(2, 3))]).layer_stats is None
