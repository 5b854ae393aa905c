import pytest
import torch

from torch_deup.features.base import NotFittedError
from torch_deup.features.density import GaussianDensity
from torch_deup.features.distance import KNNDistance, MahalanobisDistance
from torch_deup.features.subspace import ViMScore
from torch_deup.ood_criteria import GDACriterion, KNNCriterion, MahalanobisCriterion, ViMCriterion
from torch_deup.outputs import ModelOutputs


def outputs_of(embedding: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(torch.zeros(len(embedding), 2), embedding)


@pytest.fixture
def train() -> tuple[ModelOutputs, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    targets = torch.arange(120) % 2
    return outputs_of(torch.randn(120, 4, generator=gen) + 3.0 * targets[:, None]), targets


CASES = [
    (MahalanobisCriterion(), MahalanobisDistance(), 1.0),
    (KNNCriterion(k=7, normalize=False), KNNDistance(k=7, normalize=False), 1.0),
    (GDACriterion(), GaussianDensity(), -1.0),
    (ViMCriterion(dim=2), ViMScore(dim=2), 1.0),
]


@pytest.mark.parametrize(("criterion", "extractor", "sign"), CASES)
def test_score_is_signed_feature(train, criterion, extractor, sign):
    outputs, targets = train
    assert criterion.needs_fit
    assert not criterion.fitted
    assert criterion.fit(outputs, targets) is criterion
    assert criterion.fitted
    queries = outputs_of(torch.randn(9, 4))
    expected = sign * extractor.fit(outputs, targets)(queries)[:, 0]
    assert torch.equal(criterion(queries), expected)


@pytest.mark.parametrize("criterion", [MahalanobisCriterion(), KNNCriterion(k=7), GDACriterion()])
def test_far_embedding_scores_higher(train, criterion):
    outputs, targets = train
    criterion.fit(outputs, targets)
    # the cosine k-NN distance sees directions only: the far point points away from the data
    near, far = criterion(outputs_of(torch.tensor([[3.0] * 4, [-40.0, 40.0, -40.0, 40.0]])))
    assert far > near


def test_knn_criterion_passes_its_arguments(train):
    outputs, targets = train
    criterion = KNNCriterion(k=3, normalize=False).fit(outputs, targets)
    assert (criterion.extractor_.k, criterion.extractor_.normalize) == (3, False)


@pytest.mark.parametrize(
    "criterion", [MahalanobisCriterion(), KNNCriterion(), GDACriterion(), ViMCriterion()]
)
def test_unfitted_use_raises(criterion):
    with pytest.raises(NotFittedError, match=f"{type(criterion).__name__} instance is not fitted yet"):
        criterion(outputs_of(torch.zeros(2, 4)))
