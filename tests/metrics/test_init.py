"""The metric groups the evaluation routine consumes, and how their values print."""

import math
import pickle

import pytest
import torch

from torch_deup.metrics import (
    PERCENT_METRICS,
    SCODAURC,
    AdaptiveCalibrationError,
    BrierScore,
    SmoothCalibrationError,
    adaptive_calibration_error,
    augrc,
    aurc,
    brier_score,
    calibration_metrics,
    categorical_nll,
    classification_metrics,
    coverage_at_risk,
    format_metric,
    fpr_at_tpr,
    ood_aupr,
    ood_auroc,
    ood_metrics,
    predictive_entropy,
    risk_at_coverage,
    scod_losses,
    scod_metrics,
    selective_metrics,
    smooth_ece,
)


def case(seed: int = 0, n: int = 200, c: int = 4):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(n, c, generator=gen), dim=1)
    targets = torch.randint(0, c, (n,), generator=gen)
    is_ood = torch.rand(n, generator=gen) < 0.3
    return probs, targets, is_ood


def approx(values: dict, expected: dict) -> None:
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert values[name].item() == pytest.approx(value.item(), abs=1e-6), name


def test_classification_and_calibration_groups() -> None:
    probs, targets, _ = case()
    accuracy = (probs.argmax(1) == targets).float().mean()
    approx(
        classification_metrics(4)(probs, targets),
        {
            "Acc": accuracy,
            "Brier": brier_score(probs, targets),
            "Entropy": predictive_entropy(probs),
            "NLL": categorical_nll(probs, targets),
        },
    )
    values = calibration_metrics(4)(probs, targets)
    assert set(values) == {"ECE", "MCE", "aECE", "SmECE"}
    assert values["aECE"].item() == pytest.approx(adaptive_calibration_error(probs, targets).item())
    assert values["SmECE"].item() == pytest.approx(smooth_ece(probs, targets).item())


def test_selective_ood_and_scod_groups() -> None:
    probs, targets, is_ood = case()
    scores, failures = 1 - probs.max(1).values, (probs.argmax(1) != targets).float()
    approx(
        selective_metrics()(scores, failures),
        {
            "AURC": aurc(scores, failures),
            "AUGRC": augrc(scores, failures),
            "Cov_5Risk": coverage_at_risk(scores, failures, risk=0.05),
            "Risk_80Cov": risk_at_coverage(scores, failures, coverage=0.8),
        },
    )
    approx(
        ood_metrics()(scores, is_ood),
        {
            "AUROC": ood_auroc(scores, is_ood),
            "AUPR": ood_aupr(scores, is_ood),
            "FPR95": fpr_at_tpr(scores, is_ood),
        },
    )
    costs = scod_losses(failures, is_ood, ood_cost=0.7)
    metrics = scod_metrics(ood_cost=0.7)
    metrics.update(scores, failures, is_ood)
    values = metrics.compute()
    assert set(values) == {"SCOD_AURC", "SCOD_AUGRC", "SCOD_Cov_5Risk", "SCOD_Risk_80Cov"}
    assert values["SCOD_AURC"].item() == pytest.approx(aurc(scores, costs).item())
    assert values["SCOD_Risk_80Cov"].item() == pytest.approx(risk_at_coverage(scores, costs).item())


def test_groups_stay_right_when_the_first_batch_is_degenerate() -> None:
    # a correct one-hot batch gives Brier = Entropy = NLL = 0: equal states must not be merged
    metrics = classification_metrics(2)
    metrics.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    probs, targets = torch.tensor([[0.3, 0.7], [0.6, 0.4]]), torch.tensor([0, 0])
    metrics.update(probs, targets)
    all_probs, all_targets = (
        torch.cat([torch.tensor([[1.0, 0.0]]), probs]),
        torch.cat([torch.tensor([0]), targets]),
    )
    values = metrics.compute()
    assert values["Entropy"].item() == pytest.approx(predictive_entropy(all_probs).item())
    assert values["NLL"].item() == pytest.approx(categorical_nll(all_probs, all_targets).item())


@pytest.mark.parametrize("metric_class", [BrierScore, AdaptiveCalibrationError, SmoothCalibrationError])
def test_pickle_and_clone_keep_the_state(metric_class) -> None:
    probs, targets, _ = case(1)
    metric = metric_class()
    metric.update(probs, targets)
    expected = metric.compute().item()
    assert pickle.loads(pickle.dumps(metric)).compute().item() == pytest.approx(expected)
    assert metric.clone().compute().item() == pytest.approx(expected)


def test_scod_metric_pickles_with_its_cost() -> None:
    metric = SCODAURC(ood_cost=0.9)
    assert pickle.loads(pickle.dumps(metric)).ood_cost == 0.9


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("Acc", 0.9338, "93.380%"),
        ("AUGRC", 0.00779, "0.779%"),
        ("Brier", 0.108123, "0.10812"),
        ("SCOD_AURC", 0.582194, "0.58219"),
        ("SCOD_Cov_5Risk", math.nan, "nan"),
        ("flops", 284_376_432_640, "284.38 G"),
        ("params", 11_173_962, "11.17 M"),
        ("ECE", torch.tensor(0.03537), "3.537%"),
    ],
)
def test_format_metric_reproduces_the_tutorial(name: str, value, text: str) -> None:
    assert format_metric(name, value) == text


def test_percent_metrics_are_the_tutorial_ones() -> None:
    assert {"Acc", "ECE", "MCE", "SmECE", "aECE", "AUROC", "AUPR", "FPR95"} <= PERCENT_METRICS
    assert {"AUGRC", "AURC", "Cov_5Risk", "Risk_80Cov"} <= PERCENT_METRICS
    assert not {"Brier", "Entropy", "NLL", "SCOD_AURC", "SCOD_AUGRC", "flops", "params"} & PERCENT_METRICS
