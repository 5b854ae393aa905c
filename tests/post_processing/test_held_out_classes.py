import pytest
import torch
import torch.nn.functional as F

from torch_deup.features.distance import KNNDistance, TrustScore
from torch_deup.features.outputs import OutputStatistics
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.held_out_classes import class_groups, error_cost, held_out_class_rows


def clustered(n_per_class: int, num_classes: int, seed: int) -> tuple[ModelOutputs, torch.Tensor]:
    """Embeddings in tight clusters around distinct centres; logits favour the true class."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(targets), num_classes, generator=gen)
    embedding = 10.0 * F.one_hot(targets, num_classes).float() + noise
    logits = 3.0 * embedding / 10.0 + torch.randn(len(targets), num_classes, generator=gen)
    return ModelOutputs(logits, embedding), targets


def test_class_groups_partition_the_classes_and_follow_the_seed():
    classes = torch.arange(10)
    groups = class_groups(classes, 3, seed=0)
    assert sorted(torch.cat(groups).tolist()) == list(range(10))
    assert [len(g) for g in groups] == [4, 3, 3]
    assert all(torch.equal(a, b) for a, b in zip(groups, class_groups(classes, 3, seed=0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(groups, class_groups(classes, 3, seed=1), strict=True))


def test_rows_are_distances_to_the_other_classes_and_the_models_own_statistics():
    train, train_y = clustered(20, 4, seed=0)
    cal, cal_y = clustered(5, 4, seed=1)
    errors = F.cross_entropy(cal.logits, cal_y, reduction="none")
    features = [OutputStatistics(), KNNDistance(k=1, normalize=False)]
    features[1].fit(train, train_y)
    cost = error_cost(cal, cal_y, errors)
    x, targets = held_out_class_rows(features, (train, train_y), cal, cal_y, cost, num_groups=2, seed=0)

    expected = []
    for group in class_groups(torch.arange(4), 2, seed=0):
        held = torch.isin(cal_y, group)
        others = train.embedding[~torch.isin(train_y, group)]
        nearest_other = torch.cdist(cal.embedding[held], others).min(1).values
        expected.append(torch.cat([OutputStatistics()(cal[held]), nearest_other[:, None]], dim=1))
    torch.testing.assert_close(x, torch.cat(expected), rtol=1e-4, atol=1e-4)
    # held out, every sample is far: its distance exceeds the in-distribution one of the full fit
    assert x[:, -1].min() > features[1](cal).max()
    wrong = cal.logits.argmax(1) != cal_y
    assert wrong.any()
    torch.testing.assert_close(targets, torch.full((20,), errors[wrong].mean().item()))


def test_a_prediction_of_a_held_out_class_has_no_trust_support():
    train, train_y = clustered(20, 4, seed=0)
    cal, cal_y = clustered(5, 4, seed=1)
    trust = TrustScore(k=3).fit(train, train_y)
    # every class in the bank: trusted exactly where the model predicts the cluster it sits in
    assert torch.equal(trust(cal)[:, 0] > 0.5, cal.logits.argmax(1) == cal_y)
    x, _ = held_out_class_rows([trust], (train, train_y), cal, cal_y, 1.0, num_groups=2, seed=0)
    predicts_own_class = torch.cat(
        [
            cal.logits.argmax(1)[torch.isin(cal_y, g)] == cal_y[torch.isin(cal_y, g)]
            for g in class_groups(torch.arange(4), 2, 0)
        ]
    )
    # the refit bank lacks the held-out classes: a sample predicted as its own class gets 0
    assert torch.equal(x[predicts_own_class, 0], torch.zeros(int(predicts_own_class.sum())))
    assert predicts_own_class.float().mean() > 0.8


def test_rows_need_a_fitted_extractor():
    train, train_y = clustered(10, 3, seed=0)
    cal, cal_y = clustered(4, 3, seed=1)
    with pytest.raises(ValueError, match="none of the features needs fitting"):
        held_out_class_rows([OutputStatistics()], (train, train_y), cal, cal_y, 1.0, 2, seed=0)


def test_deup_skips_the_protocol_when_no_feature_is_fitted_on_training_data():
    train, train_y = clustered(10, 3, seed=0)
    cal, cal_y = clustered(20, 3, seed=1)
    kwargs = {"features": [OutputStatistics()], "max_epochs": 5, "progress": False}
    with_train = DEUP(**kwargs).fit_outputs(cal, cal_y, train, train_y)
    without = DEUP(**kwargs).fit_outputs(cal, cal_y)
    assert len(with_train.errors_) == len(cal_y)
    torch.testing.assert_close(with_train.score_outputs(cal), without.score_outputs(cal), rtol=0, atol=0)


def test_deup_adds_one_held_out_row_per_calibration_sample():
    train, train_y = clustered(10, 3, seed=0)
    cal, cal_y = clustered(20, 3, seed=1)
    features = [OutputStatistics(), KNNDistance(k=1)]
    deup = DEUP(features=features, virtual_outliers=0, ood_prior=0, max_epochs=5, progress=False)
    deup.fit_outputs(cal, cal_y, train, train_y)
    assert len(deup.errors_) == 2 * len(cal_y)


def test_error_cost_of_a_single_logit_model_reads_its_two_classes():
    logits = torch.tensor([[-2.0], [3.0], [1.0]])  # predictions 0, 1, 1
    targets = torch.tensor([0, 1, 0])
    errors = torch.tensor([0.1, 0.2, 0.9])
    assert error_cost(ModelOutputs(logits), targets, errors) == pytest.approx(0.9)
