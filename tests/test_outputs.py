import numpy as np
import pytest
import torch
from torch import nn

from helpers.models import conv_net
from torch_deup.models import DeepEnsemble
from torch_deup.models.classification.resnet import resnet
from torch_deup.outputs import (
    ModelOutputs,
    OutputCapture,
    channel_statistics,
    collect_outputs,
    concat_outputs,
    evaluating,
)


def numpy_statistics(feature_map: torch.Tensor) -> np.ndarray:
    flat = feature_map.detach().numpy().reshape(*feature_map.shape[:2], -1)
    return np.concatenate([flat.mean(2), flat.std(2)], axis=1)  # numpy's std is the population one


def test_channel_statistics_are_each_channels_mean_then_population_std():
    x = torch.randn(5, 3, 4, 7)
    np.testing.assert_allclose(channel_statistics(x).numpy(), numpy_statistics(x), rtol=1e-5, atol=1e-6)
    # a batch computed in several blocks (64 samples of 64 x 128 at a time)
    large = torch.randn(150, 64, 8, 16, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(
        channel_statistics(large).numpy(), numpy_statistics(large), rtol=1e-5, atol=1e-6
    )
    assert channel_statistics(large[:0]).shape == (0, 128)
    # half precision is computed in float32
    half = large.half()
    np.testing.assert_allclose(
        channel_statistics(half).numpy(), numpy_statistics(half.float()), rtol=1e-5, atol=1e-6
    )
    # one spatial position: a standard deviation of 0, not NaN
    assert torch.equal(channel_statistics(x[:, :, :1, :1])[:, 3:], torch.zeros(5, 3))
    # a mean that dwarfs the spread (where E[x^2] - E[x]^2 would cancel) and a constant channel
    far = x + torch.tensor([1e4, 0.0, 0.0])[:, None, None]
    far[:, 2] = 7.0
    np.testing.assert_allclose(channel_statistics(far).numpy(), numpy_statistics(far), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_auto_records_every_stage_but_the_last_of_a_resnet():
    model = resnet(arch=20, num_classes=10).eval()
    seen = {}
    for name in ("layer1", "layer2"):
        getattr(model, name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    out = OutputCapture(model)(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    expected = np.concatenate([numpy_statistics(seen["layer1"]), numpy_statistics(seen["layer2"])], 1)
    np.testing.assert_allclose(out.layer_stats.numpy(), expected, rtol=1e-5, atol=1e-6)


class Tokens(nn.Module):
    """Stages returning 3-D token tensors ``(N, L, D)``: not image feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1, self.stage2 = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)).mean(1))


def test_auto_finds_nothing_without_image_feature_maps_or_with_one_feature_stage():
    x = torch.randn(2, 5, 4)
    assert OutputCapture(Tokens())(x).layer_stats is None
    assert (
        OutputCapture(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))(x[:, 0]).layer_stats is None
    )
    # VGG and MobileNet: one nn.Sequential of feature maps, then a head, also nn.Sequential
    single = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
    )
    assert OutputCapture(single)(torch.randn(2, 1, 5, 5)).layer_stats is None
    # named, a 3-D output is taken as (N, C, L)
    named = OutputCapture(Tokens(), layers="stage1")(x)
    assert named.layer_stats.shape == (2, 10)


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
        OutputCapture(net, layers="stage9")  # one name, not its characters
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
    with pytest.raises(ValueError, match="Some batches of outputs carry `layer_stats`"):
        concat_outputs([out[:2], ModelOutputs(torch.zeros(2, 3), torch.zeros(2, 4))])


def test_collect_outputs_runs_the_model_without_gradients_and_returns_ordinary_tensors():
    model = conv_net()
    grad_enabled = []
    model.register_forward_hook(lambda module, args, out: grad_enabled.append(torch.is_grad_enabled()))
    batches = [(torch.randn(4, 1, 5, 5), torch.zeros(4)) for _ in range(2)]
    outputs, _ = collect_outputs(model, batches, progress=False)
    assert grad_enabled == [False, False]
    assert outputs.logits.shape == (8, 3)
    # not inference tensors: a caller may modify them in place or train on them
    assert not outputs.logits.is_inference()
    outputs.logits.add_(1.0)


def test_collect_outputs_runs_in_eval_mode_and_restores_the_mode_and_the_device():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    moves = []
    original_to = model.to
    model.to = lambda *args, **kwargs: moves.append(args) or original_to(*args, **kwargs)
    model.train()
    batches = [(torch.randn(5, 4), torch.zeros(5))]
    first, _ = collect_outputs(model, batches, device="cpu", progress=False)
    second, _ = collect_outputs(model, batches, device="cpu", progress=False)
    assert torch.equal(first.logits, second.logits)  # no dropout noise
    assert model.training
    assert moves == [("cpu",), (torch.device("cpu"),)] * 2  # there and back, each time


def test_a_move_that_fails_part_way_is_undone_and_a_buffer_only_model_finds_its_device():
    # a second device is not at hand here: the move to it fails as an out-of-memory move would
    model = nn.Sequential(nn.BatchNorm1d(4, affine=False))  # buffers only, no parameters
    model.train()
    moves = []
    original_to = model.to

    def to(device):
        moves.append(device)
        if device == "elsewhere":
            raise RuntimeError("out of memory")
        return original_to(device)

    model.to = to
    with pytest.raises(RuntimeError, match="out of memory"), evaluating(model, "elsewhere"):
        pass
    assert moves == ["elsewhere", torch.device("cpu")]  # back to the buffers' device


def test_collecting_keeps_a_submodule_the_user_froze_in_eval_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a frozen batch norm inside a model being trained
    collect_outputs(model, [(torch.randn(5, 4), torch.zeros(5))], progress=False)
    assert [m.training for m in model] == [True, False, True]


def test_a_head_that_does_not_run_is_warned_about_and_no_batches_are_refused():
    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
            self.projection = nn.Linear(8, 2)  # registered last, used only in training

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    with pytest.warns(UserWarning, match=r"\('projection'\) did not run"):
        outputs = OutputCapture(Projected())(torch.zeros(2, 4))
    assert outputs.embedding is None
    with pytest.raises(ValueError, match="No batches"):
        concat_outputs([])
