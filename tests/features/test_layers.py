import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from torch_deup.features import LayerRange, LayerStatistics, NotFittedError
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


def range_reference(train: np.ndarray, query: np.ndarray, q: float) -> np.ndarray:
    """Written out per statistic: the distance beyond the [q, 1 - q] quantiles, in training stds."""
    low, high, std = np.quantile(train, q, axis=0), np.quantile(train, 1 - q, axis=0), train.std(0, ddof=1)
    return (np.maximum(low - query, 0) / std + np.maximum(query - high, 0) / std).sum(1)


@pytest.mark.parametrize("quantile", [0.0, 0.001, 0.05])
def test_range_distance_is_the_distance_beyond_the_training_quantiles(quantile):
    train, query = correlated(300, 0), correlated(40, 1) * 1.5
    layer = LayerRange(quantile).fit(outputs(train), torch.zeros(300, dtype=torch.long))
    expected = range_reference(train.double().numpy(), query.double().numpy(), quantile)
    np.testing.assert_allclose(layer(outputs(query))[:, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    # the query has rows inside and outside the range
    assert (expected > 0).any()
    assert (expected == 0).any()


def test_range_distance_is_zero_on_every_training_row_inside_the_range():
    train = correlated(500, 0)
    distances = LayerRange(0.0).fit(outputs(train), None)(outputs(train))[:, 0]
    assert torch.equal(distances, torch.zeros(500))
    # with q = 0.01 each statistic leaves about 2% of the rows outside: 5 statistics, at most 10%
    outside = LayerRange(0.01).fit(outputs(train), None)(outputs(train))[:, 0] > 0
    assert 0.02 < outside.float().mean() <= 0.1


def test_range_distance_saves_and_loads_and_its_criterion_is_its_column():
    train, query = outputs(correlated(100, 0)), outputs(correlated(7, 1) * 2)
    layer = LayerRange(0.01).fit(train, None)
    copy = LayerRange()
    copy.load_state_dict(layer.state_dict())
    assert copy.quantile == 0.01
    assert torch.equal(copy(query), layer(query))
    criterion = get_criterion("layer_range").fit(train, torch.zeros(100, dtype=torch.long))
    assert torch.equal(criterion(query), LayerRange().fit(train, None)(query)[:, 0])


def test_range_distance_bad_input_is_named():
    with pytest.raises(ValueError, match=r"`quantile` in \[0, 0.5\)"):
        LayerRange(0.5)
    with pytest.raises(ValueError, match="layer_stats is None"):
        LayerRange().fit(ModelOutputs(torch.zeros(4, 3)), None)
    with pytest.raises(ValueError, match="NaN or inf"):
        LayerRange().fit(outputs(torch.tensor([[0.0], [float("nan")]])), None)
    with pytest.raises(ValueError, match="at least 2 training rows"):
        LayerRange().fit(outputs(torch.zeros(1, 2)), None)
    with pytest.raises(ValueError, match="fitted on 5-dimensional"):
        LayerRange().fit(outputs(correlated(50, 0)), None)(outputs(torch.zeros(2, 4)))
    with pytest.raises(NotFittedError):
        LayerRange()(outputs(torch.zeros(2, 5)))


def test_range_distance_fits_on_outputs_with_a_graph_and_a_constant_statistic_ignores_rounding():
    train = correlated(200, 0).requires_grad_()  # outputs captured outside no_grad
    layer = LayerRange().fit(outputs(train), None)
    assert not layer.low_.requires_grad
    constant = torch.cat([correlated(200, 0), torch.full((200, 1), 0.1)], 1)
    layer = LayerRange(0.0).fit(outputs(constant), None)
    inside = constant[:1].clone()
    rounding, departure = inside.clone(), inside.clone()
    rounding[0, -1] = torch.nextafter(torch.tensor(0.1), torch.tensor(1.0))  # one float32 step
    departure[0, -1] = 0.2
    distances = layer(outputs(torch.cat([inside, rounding, departure])))[:, 0]
    assert distances[0] == 0
    assert distances[1] < 0.1  # 1e-6 of the statistic's size is the floor of its scale
    assert distances[2] > 1e3  # a real departure from a constant still counts as far
    with pytest.raises(ValueError, match="`quantile`"):
        LayerRange(False)


def labelled(stats: torch.Tensor, labels: torch.Tensor, num_classes: int = 3) -> ModelOutputs:
    """Outputs whose predicted class is ``labels`` (a one-hot logit)."""
    return ModelOutputs(torch.nn.functional.one_hot(labels, num_classes).float(), layer_stats=stats)


def class_range_reference(train, labels, query, predicted, q):
    """Written out per row: the distance beyond its predicted class's quantiles, in every row's stds."""
    std = train.std(0, ddof=1)
    rows = []
    for x, c in zip(query, predicted, strict=True):
        own = train[labels == c]
        low, high = np.quantile(own, q, axis=0), np.quantile(own, 1 - q, axis=0)
        rows.append((np.maximum(low - x, 0) / std + np.maximum(x - high, 0) / std).sum())
    return np.array(rows)


@pytest.mark.parametrize("quantile", [0.0, 0.05])
def test_class_range_reads_the_range_of_the_predicted_class(quantile):
    # the classes' statistics sit apart, so a row of one class is far outside another's range
    labels = torch.arange(300) % 3
    train = correlated(300, 0) + 4.0 * labels[:, None]
    query, predicted = correlated(30, 1) * 1.5 + 4.0, torch.arange(30) % 3
    layer = LayerRange(quantile, per_class=True).fit(labelled(train, labels), labels)
    expected = class_range_reference(
        train.double().numpy(), labels.numpy(), query.double().numpy(), predicted.numpy(), quantile
    )
    got = layer(labelled(query, predicted))[:, 0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # the same rows read against the range of all classes score otherwise
    everyone = LayerRange(quantile).fit(labelled(train, labels), None)(labelled(query, predicted))[:, 0]
    assert not np.allclose(everyone.numpy(), expected)
    assert (expected > 0).any()
    assert (expected == 0).any()


def test_class_range_is_zero_on_training_rows_predicted_as_their_class_and_falls_back_without_rows():
    labels = torch.cat([torch.arange(298) % 2, torch.tensor([2, 2])])  # class 2: two rows
    train = correlated(300, 0) + 4.0 * labels[:, None]
    layer = LayerRange(0.0, per_class=True).fit(labelled(train, labels), labels)
    assert torch.equal(layer(labelled(train, labels))[:, 0], torch.zeros(300))
    # a class with fewer than 2 training rows reads every row's range
    one = torch.cat([torch.arange(299) % 2, torch.tensor([2])])
    fallback = LayerRange(0.0, per_class=True).fit(labelled(train, one), one)
    assert torch.equal(fallback.low_[2], train.double().min(0).values)
    assert torch.equal(fallback.high_[2], train.double().max(0).values)


def test_class_range_of_a_single_logit_model_reads_the_sign_of_its_logit():
    labels = torch.arange(100) % 2
    train = correlated(100, 0) + 100.0 * labels[:, None]
    logit = (2.0 * labels - 1.0)[:, None]
    layer = LayerRange(0.0, per_class=True).fit(ModelOutputs(logit, layer_stats=train), labels)
    assert layer.low_.shape == (2, 5)
    row = train[labels == 1][:1]  # inside class 1's range, outside class 0's
    scores = layer(ModelOutputs(torch.tensor([[1.0], [-1.0]]), layer_stats=row.repeat(2, 1)))[:, 0]
    assert scores[0] == 0
    assert scores[1] > 0


def test_class_range_saves_loads_reads_old_saves_and_its_criterion_is_its_column():
    labels = torch.arange(200) % 3
    train, query = labelled(correlated(200, 0), labels), labelled(correlated(9, 1) * 2, torch.arange(9) % 3)
    layer = LayerRange(0.0, per_class=True).fit(train, labels)
    copy = LayerRange()
    copy.load_state_dict(layer.state_dict())
    assert copy.per_class
    assert torch.equal(copy(query), layer(query))
    criterion = get_criterion("layer_class_range").fit(train, labels)
    assert torch.equal(criterion(query), layer(query)[:, 0])
    # an extractor saved before `per_class` existed has none: it is the range over all classes
    old = LayerRange(0.01).fit(train, None)
    state = dict(vars(old))
    del state["per_class"]
    rebuilt = LayerRange.__new__(LayerRange)
    rebuilt.__dict__.update(state)
    assert torch.equal(rebuilt(query), old(query))


def test_class_range_bad_input_is_named():
    train = labelled(correlated(30, 0), torch.arange(30) % 3)
    with pytest.raises(ValueError, match="`per_class` to be True or False"):
        LayerRange(per_class=1)
    with pytest.raises(ValueError, match="pass `targets` to fit"):
        LayerRange(per_class=True).fit(train, None)
    with pytest.raises(ValueError, match="integer class indices"):
        LayerRange(per_class=True).fit(train, torch.zeros(30))
    with pytest.raises(ValueError, match=r"shape \(30,\)"):
        LayerRange(per_class=True).fit(train, torch.zeros(29, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 3\).*\[0, 3\]"):
        LayerRange(per_class=True).fit(train, torch.arange(30) % 4)


def test_class_range_refuses_logits_of_another_number_of_classes():
    labels = torch.arange(30) % 3
    layer = LayerRange(0.0, per_class=True).fit(labelled(correlated(30, 0), labels), labels)
    for num_classes in (2, 4):
        with pytest.raises(
            ValueError, match=f"fitted on a model of 3 classes, but these logits hold {num_classes}"
        ):
            layer(labelled(correlated(5, 1), torch.arange(5) % 2, num_classes))
