import pytest
import torch
from scipy.stats import chi2

from torch_deup.features.distance import MahalanobisDistance
from torch_deup.features.layers import LayerStatistics
from torch_deup.features.outputs import OutputStatistics
from torch_deup.models import DeepEnsemble
from torch_deup.outputs import ModelOutputs, OutputCapture
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.virtual_outliers import virtual_outlier_rows, virtual_outliers


@pytest.fixture
def train() -> tuple[ModelOutputs, torch.Tensor]:
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3)
    targets = torch.arange(600) % 3
    embedding = torch.randn(600, 4) + 4.0 * torch.nn.functional.one_hot(targets, 4)[:, :4].float()
    with torch.no_grad():
        return ModelOutputs(head(embedding), embedding), targets


def test_outliers_lie_in_the_tails_and_the_head_maps_them(train):
    outputs, targets = train
    virtual = virtual_outliers(train, 90, seed=0)
    assert virtual.embedding.shape == (90, 4)
    # drawn class by class, 30 each; tail = 2%: each is farther from its own class (in the tied
    # covariance's metric) than the 95% quantile of a chi-square with 4 degrees of freedom
    emb = outputs.embedding.double()
    means = torch.stack([emb[targets == c].mean(0) for c in range(3)])
    centred = emb - means[targets]
    precision = torch.linalg.inv(centred.T @ centred / len(emb))
    offset = virtual.embedding.double() - means.repeat_interleave(30, dim=0)
    squared = ((offset @ precision) * offset).sum(1)
    assert squared.min() > chi2.ppf(0.95, df=4)
    weight, bias = torch.linalg.lstsq(
        torch.cat([outputs.embedding, torch.ones(600, 1)], 1), outputs.logits
    ).solution.split([4, 1])
    torch.testing.assert_close(virtual.logits, virtual.embedding @ weight + bias, rtol=1e-4, atol=1e-4)


def test_fewer_outliers_than_classes_come_from_classes_across_the_range():
    torch.manual_seed(0)
    targets = torch.arange(2000) % 20
    embedding = torch.randn(2000, 30) + 6.0 * torch.nn.functional.one_hot(targets, 30)[:, :30].float()
    head = torch.nn.Linear(30, 20)
    with torch.no_grad():
        train = (ModelOutputs(head(embedding), embedding), targets)
    virtual = virtual_outliers(train, 10, seed=0).embedding.double()
    means = torch.stack([embedding[targets == c].double().mean(0) for c in range(20)])
    nearest = torch.cdist(virtual, means).argmin(1)
    # one outlier from each of 10 classes drawn at random, not classes 0-9
    assert len(set(nearest.tolist())) == 10
    assert nearest.max() >= 10


def test_outliers_follow_the_seed(train):
    assert torch.equal(virtual_outliers(train, 30, 1).embedding, virtual_outliers(train, 30, 1).embedding)
    assert not torch.equal(virtual_outliers(train, 30, 1).embedding, virtual_outliers(train, 30, 2).embedding)


def test_rows_carry_the_error_cost(train):
    x, target = virtual_outlier_rows([OutputStatistics()], train, 12, error_cost=2.5, seed=0)
    assert x.shape == (12, 5)
    assert torch.equal(target, torch.full((12,), 2.5))


def test_bad_tail_is_refused(train):
    with pytest.raises(ValueError, match=r"`tail` in \(0, 1\]"):
        virtual_outliers(train, 5, seed=0, tail=0.0)


def test_deup_adds_the_requested_number_of_rows(train):
    outputs, targets = train
    cal, cal_y = outputs[:100], targets[:100]
    kwargs = {"features": [OutputStatistics(), MahalanobisDistance()], "max_epochs": 3, "progress": False}
    base = DEUP(virtual_outliers=0, **kwargs).fit_outputs(cal, cal_y, outputs, targets)
    more = DEUP(virtual_outliers=0.3, **kwargs).fit_outputs(cal, cal_y, outputs, targets)
    assert len(more.errors_) - len(base.errors_) == 30


@pytest.mark.parametrize("value", [-0.1, float("nan"), "half"])
def test_deup_refuses_a_bad_virtual_outlier_rate(value):
    with pytest.raises(ValueError, match="`virtual_outliers` to be a number >= 0"):
        DEUP(virtual_outliers=value, progress=False).fit_outputs(
            ModelOutputs(torch.zeros(10, 2)), torch.zeros(10)
        )


def test_an_ensembles_outliers_carry_each_members_head_on_its_own_slice():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(
        [torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)) for _ in range(2)]
    )
    x, targets = torch.randn(300, 5), torch.arange(300) % 3
    with torch.no_grad():
        outputs = OutputCapture(ensemble.eval())(x)
    virtual = virtual_outliers((outputs, targets), 30, seed=0)
    assert virtual.members.shape == (30, 2, 3)
    with torch.no_grad():
        for m, member in enumerate(ensemble.members):
            own_slice = virtual.embedding[:, 6 * m : 6 * (m + 1)]
            torch.testing.assert_close(virtual.members[:, m], member[2](own_slice), rtol=1e-4, atol=1e-4)
    mean_prob = virtual.members.softmax(2).mean(1)
    torch.testing.assert_close(virtual.logits.exp(), mean_prob, rtol=1e-5, atol=1e-6)


def test_a_feature_reading_layer_statistics_is_refused_with_the_way_out():
    train = (
        ModelOutputs(torch.randn(60, 3), torch.randn(60, 4), layer_stats=torch.randn(60, 2)),
        torch.arange(60) % 3,
    )
    with pytest.raises(ValueError, match="set `virtual_outliers=0`"):
        virtual_outlier_rows([LayerStatistics().fit(*train)], train, 10, 1.0, seed=0)
