import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_deup.models import DeepEnsemble
from torch_deup.outputs import OutputCapture, collect_outputs


def members(num: int = 3, num_classes: int = 4) -> list[nn.Sequential]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, num_classes)) for _ in range(num)]


def test_forward_is_the_log_of_the_mean_member_probability():
    ensemble = DeepEnsemble(members())
    x = torch.randn(7, 5)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in ensemble.members]).mean(0)
        torch.testing.assert_close(ensemble(x), mean.log())


def test_capture_records_each_member_once_and_concatenates_their_embeddings():
    ensemble = DeepEnsemble(members())
    calls = []
    for m in ensemble.members:
        m.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(6, 5)
    with torch.no_grad():
        out = OutputCapture(ensemble)(x)
        expected_members = torch.stack([m(x) for m in ensemble.members], dim=1)
        expected_embedding = torch.cat([m[:2](x) for m in ensemble.members], dim=1)
    assert len(calls) == 3 + 3  # the capture's forward, then the expected values above
    torch.testing.assert_close(out.members, expected_members)
    torch.testing.assert_close(out.embedding, expected_embedding)
    torch.testing.assert_close(out.logits, ensemble(x).detach())
    assert out[torch.tensor([0, 2])].members.shape == (2, 3, 4)


def test_collect_outputs_concatenates_member_logits_across_batches():
    ensemble = DeepEnsemble(members())
    data = TensorDataset(torch.randn(10, 5), torch.zeros(10, dtype=torch.long))
    outputs, _ = collect_outputs(ensemble, DataLoader(data, batch_size=4), progress=False)
    assert outputs.members.shape == (10, 3, 4)
    assert outputs.embedding.shape == (10, 24)
    single, _ = collect_outputs(members(1)[0], DataLoader(data, batch_size=4), progress=False)
    assert single.members is None


def test_bad_ensembles_are_refused():
    with pytest.raises(ValueError, match="at least 2 members"):
        DeepEnsemble(members(1))
    mixed = DeepEnsemble([members(1, num_classes=3)[0], members(1, num_classes=4)[0]])
    with pytest.raises(ValueError, match="same C"):
        mixed(torch.randn(2, 5))


def test_members_sharing_modules_are_refused_and_a_nested_ensemble_is_found():
    member = members(1)[0]
    with pytest.raises(ValueError, match="share modules"):
        OutputCapture(DeepEnsemble([member, member]))
    shared_head = nn.Linear(8, 4)
    bodies = [nn.Sequential(nn.Linear(5, 8), nn.ReLU(), shared_head) for _ in range(2)]
    with pytest.raises(ValueError, match="share modules"):
        OutputCapture(DeepEnsemble(bodies))
    ensemble = DeepEnsemble(members())
    wrapped = nn.Sequential(nn.Identity(), ensemble)
    with torch.no_grad():
        out = OutputCapture(wrapped)(torch.randn(3, 5))
    assert out.members.shape == (3, 3, 4)
    assert out.embedding.shape == (3, 24)


def test_an_ensemble_that_the_model_does_not_run_is_named():
    class WithTeacher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = members(1)[0]
            self.teacher = DeepEnsemble(members())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.student(x)

    with pytest.raises(ValueError, match="0 of the 3 members"):
        OutputCapture(WithTeacher())(torch.randn(2, 5))
