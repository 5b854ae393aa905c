import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_deup.features.variance import DropoutVariance, EnsembleDisagreement, dropout_rate
from torch_deup.outputs import ModelOutputs, OutputCapture


def head_and_embedding(num_classes: int, seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(6, num_classes), torch.randn(5, 6)


def softmax_of(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities; a single logit l is the binary model [0, l]."""
    if logits.shape[-1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], -1)
    return F.softmax(logits, -1)


def monte_carlo(head: nn.Linear, embedding: torch.Tensor, p: float, samples: int = 40_000):
    """Logit variance and top-probability std over sampled dropout masks on the head's input."""
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(samples, *embedding.shape, generator=gen) > p).float() / (1 - p)
    with torch.no_grad():
        logits = head(embedding * masks)  # (S, N, C)
        base = head(embedding)
    probs = softmax_of(logits)
    top_prob = probs.gather(-1, softmax_of(base).argmax(-1).expand(samples, -1)[..., None]).squeeze(-1)
    return logits.var(0).sum(-1), top_prob.std(0)


# (column, rate, rtol): the logit variance is exact; the delta method linearises the softmax, so
# the probability std is exact only in the limit of small perturbations, hence the small rate
COLUMNS = [(0, 0.3, 0.03), (1, 0.005, 0.06)]


@pytest.mark.parametrize(("column", "p", "rtol"), COLUMNS, ids=["logit_variance", "prob_std"])
@pytest.mark.parametrize("num_classes", [1, 4])
def test_closed_form_matches_monte_carlo_dropout(num_classes, column, p, rtol):
    head, embedding = head_and_embedding(num_classes)
    with torch.no_grad():
        outputs = ModelOutputs(head(embedding), embedding)
    expected = monte_carlo(head, embedding, p)[column]
    torch.testing.assert_close(
        DropoutVariance(head.weight, p)(outputs)[:, column], expected, rtol=rtol, atol=0
    )


def test_from_model_reads_the_dropout_rate_and_the_head():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    extractor = DropoutVariance.from_model(model)
    assert extractor.p == 0.2
    assert torch.equal(extractor.weight, model[3].weight.detach())
    with torch.no_grad():
        features = extractor(OutputCapture(model.eval())(torch.randn(4, 3)))
    assert features.shape == (4, 2)
    assert (features > 0).all()


def test_a_model_without_dropout_is_refused_unless_a_rate_is_given():
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2))
    assert dropout_rate(model) == 0.0
    with pytest.raises(ValueError, match=r"has no nn\.Dropout"):
        DropoutVariance.from_model(model)
    assert DropoutVariance.from_model(model, p=0.1).p == 0.1


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_rates_outside_the_open_interval_are_refused(p):
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        DropoutVariance(torch.ones(2, 3), p)


def test_embedding_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="fitted on 3-dimensional"):
        DropoutVariance(torch.ones(2, 3), 0.5)(ModelOutputs(torch.zeros(1, 2), torch.ones(1, 4)))


def test_ensemble_disagreement_matches_its_formula():
    torch.manual_seed(0)
    members = torch.randn(9, 4, 3) * 3
    probs = members.softmax(2).double().numpy()
    mean = probs.mean(1)
    entropy = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    expected_mi = entropy(mean) - entropy(probs).mean(1)
    top = mean.argmax(1)
    expected_std = probs[np.arange(9), :, top].std(1, ddof=1)
    got = EnsembleDisagreement()(ModelOutputs(torch.zeros(9, 3), members=members))
    np.testing.assert_allclose(got[:, 0].numpy(), expected_mi, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[:, 1].numpy(), expected_std, rtol=1e-4, atol=1e-6)


def test_ensemble_disagreement_is_zero_when_members_agree_and_needs_members():
    same = torch.randn(5, 1, 3).expand(5, 4, 3)
    disagreement = EnsembleDisagreement()(ModelOutputs(torch.zeros(5, 3), members=same))
    assert torch.allclose(disagreement, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="DeepEnsemble"):
        EnsembleDisagreement()(ModelOutputs(torch.zeros(5, 3)))
