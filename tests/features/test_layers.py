import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from torch_deup.features import LayerStatistics, NotFittedError
from torch_deup.ood_criteria import get_criterion
from torch_deup.outputs import ModelOutputs


def outputs(stats: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(torch.zeros(len(stats), 3), layer_stats=stats)


def correlated(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g) @ torch.randn(5, 5, generator=g) + 3.0


def test_distance_is_the_squared_mahalanobis_distance_scipy_finds():
    train, query = correlated(300, 0), correlated(20, 1) * 1.5
    layer = LayerStatistics().fit(outputs(train), torch.zeros(300, dtype=torch.long))
    inverse = np.linalg.inv(np.cov(train.numpy().astype(np.float64), rowvar=False))
    mean = train.double().mean(0).numpy()
    expected = [mahalanobis(q, mean, inverse) ** 2 for q in query.double().numpy()]
    np.testing.assert_allclose(layer(outputs(query))[:, 0].numpy(), expected, rtol=1e-4)
    assert layer.jitter_ == 0.0


def test_the_same_statistics_with_other_labels_give_the_same_distance():
    # one Gaussian for all classes: labels do not enter
    train = correlated(200, 0)
    a = LayerStatistics().fit(outputs(train), torch.zeros(200, dtype=torch.long))
    b = LayerStatistics().fit(outputs(train), torch.arange(200) % 4)
    query = outputs(correlated(10, 2))
    assert torch.equal(a(query), b(query))


def test_the_criterion_is_the_extractors_column():
    train, query = outputs(correlated(100, 0)), outputs(correlated(7, 1))
    criterion = get_criterion("layer_stats").fit(train, torch.zeros(100, dtype=torch.long))
    expected = LayerStatistics().fit(train, torch.zeros(100, dtype=torch.long))(query)[:, 0]
    assert torch.equal(criterion(query), expected)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="layer_stats is None"):
        LayerStatistics().fit(ModelOutputs(torch.zeros(4, 3)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or inf"):
        LayerStatistics().fit(
            outputs(torch.tensor([[0.0], [float("nan")]])), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="at least 2 training rows"):
        LayerStatistics().fit(outputs(torch.zeros(1, 2)), torch.zeros(1, dtype=torch.long))
    layer = LayerStatistics().fit(outputs(correlated(50, 0)), torch.zeros(50, dtype=torch.long))
    with pytest.raises(ValueError, match="fitted on 5-dimensional"):
        layer(outputs(torch.zeros(2, 4)))
    with pytest.raises(NotFittedError):
        LayerStatistics()(outputs(torch.zeros(2, 5)))
