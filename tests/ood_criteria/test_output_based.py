import math

import pytest
import torch

from torch_deup.ood_criteria import (
    EnergyCriterion,
    EntropyCriterion,
    MaxLogitCriterion,
    MaxSoftmaxCriterion,
    MutualInformationCriterion,
    class_logits,
)
from torch_deup.outputs import ModelOutputs

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [10.0, -10.0, 3.0], [-200.0, 0.0, 50.0]])


def written_out(logits: list[float]) -> dict[str, float]:
    """The four scores of one sample, from the textbook formulas in plain Python floats."""
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    probs = [e / total for e in exps]
    return {
        "msp": -max(probs),
        "logit": -top,
        "energy": -(top + math.log(total)),
        "entropy": -sum(p * math.log(p) for p in probs if p > 0),
    }


@pytest.mark.parametrize(
    ("criterion", "key"),
    [
        (MaxSoftmaxCriterion(), "msp"),
        (MaxLogitCriterion(), "logit"),
        (EnergyCriterion(), "energy"),
        (EntropyCriterion(), "entropy"),
    ],
)
def test_scores_match_formula(criterion, key):
    scores = criterion(ModelOutputs(LOGITS))
    assert scores.shape == (4,)
    expected = torch.tensor([written_out(row)[key] for row in LOGITS.tolist()])
    torch.testing.assert_close(scores, expected)


def test_energy_temperature_matches_formula():
    scores = EnergyCriterion(temperature=2.0)(ModelOutputs(LOGITS))
    rows = LOGITS[:3].tolist()
    expected = torch.tensor([-2.0 * math.log(sum(math.exp(v / 2.0) for v in row)) for row in rows])
    torch.testing.assert_close(scores[:3], expected)


def test_energy_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="`temperature` to be positive, but got 0"):
        EnergyCriterion(temperature=0)(ModelOutputs(LOGITS))


@pytest.mark.parametrize("criterion", [MaxSoftmaxCriterion(), EnergyCriterion(), EntropyCriterion()])
def test_uniform_logits_score_higher_than_peaked(criterion):
    uniform, peaked = criterion(ModelOutputs(torch.tensor([[1.0, 1.0, 1.0], [8.0, 0.0, 0.0]])))
    assert uniform > peaked


def test_single_logit_is_a_bernoulli():
    logit = torch.tensor([[-3.0], [0.0], [1.5]])
    p = torch.sigmoid(logit[:, 0])
    outputs = ModelOutputs(logit)
    torch.testing.assert_close(MaxSoftmaxCriterion()(outputs), -torch.maximum(p, 1 - p))
    bernoulli_entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    torch.testing.assert_close(EntropyCriterion()(outputs), bernoulli_entropy)
    torch.testing.assert_close(EnergyCriterion()(outputs), -torch.nn.functional.softplus(logit[:, 0]))
    torch.testing.assert_close(MaxLogitCriterion()(outputs), -logit[:, 0].clamp_min(0))


@pytest.mark.parametrize("num_logits", [1, 3])
def test_max_logit_and_energy_of_an_ensemble_are_its_members_mean(num_logits):
    members = torch.randn(6, 2, num_logits) * torch.tensor([1.0, 5.0])[None, :, None]
    # an ensemble's logits are log mean probabilities: their logsumexp is 0, they carry no scale
    mean_probs = class_logits(members.reshape(12, -1)).softmax(1).view(6, 2, -1).mean(1)
    outputs = ModelOutputs(mean_probs.log(), members=members)
    single = [ModelOutputs(members[:, i]) for i in range(2)]
    for criterion in (MaxLogitCriterion(), EnergyCriterion(temperature=2.0)):
        expected = (criterion(single[0]) + criterion(single[1])) / 2
        torch.testing.assert_close(criterion(outputs), expected)
    assert EnergyCriterion()(outputs).std() > 0.1


def test_class_logits_rejects_one_dimensional_logits():
    with pytest.raises(ValueError, match=r"shape \(N, C\), but got shape \(3,\)"):
        class_logits(torch.zeros(3))


def test_output_criteria_need_no_fit():
    criterion = MaxSoftmaxCriterion()
    assert not criterion.needs_fit
    assert criterion.fitted
    assert criterion.fit(ModelOutputs(LOGITS), torch.zeros(4)) is criterion


def test_mutual_information_is_the_entropy_of_the_mean_minus_the_mean_entropy():
    members = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 0.0]]])
    p = torch.sigmoid(torch.tensor(2.0))
    h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))  # noqa: E731
    expected = torch.tensor([h(0.5) - h(float(p)), 0.0])
    score = MutualInformationCriterion()(ModelOutputs(torch.zeros(2, 2), members=members))
    torch.testing.assert_close(score, expected, atol=1e-6, rtol=1e-5)
