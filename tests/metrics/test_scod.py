"""SCOD metrics = the selective metrics on ID + OOD samples with the documented per-sample costs."""

import pytest
import torch

from torch_deup.metrics import (
    SCODAUGRC,
    SCODAURC,
    SCODCovAtRisk,
    SCODRiskAtCov,
    augrc,
    aurc,
    coverage_at_risk,
    risk_at_coverage,
    scod_losses,
)


def test_costs_follow_the_table() -> None:
    misclassified = torch.tensor([0, 1, 0, 1])
    is_ood = torch.tensor([False, False, True, True])
    assert scod_losses(misclassified, is_ood, ood_cost=0.75).tolist() == [0.0, 0.25, 0.75, 0.75]
    assert scod_losses(misclassified, is_ood).tolist() == [0.0, 0.5, 0.5, 0.5]
    # ood_cost=1: only OOD samples count, as in TorchUncertainty 0.13.0's tutorial tables
    assert scod_losses(misclassified, is_ood, ood_cost=1.0).tolist() == [0.0, 0.0, 1.0, 1.0]


def scod_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    is_ood = torch.rand(300, generator=gen) < 0.4
    scores = torch.rand(300, generator=gen) + 0.5 * is_ood
    misclassified = torch.rand(300, generator=gen) < 0.2
    return scores, misclassified, is_ood


@pytest.mark.parametrize("ood_cost", [0.5, 0.8])
@pytest.mark.parametrize(
    ("metric_class", "function"),
    [
        (SCODAURC, aurc),
        (SCODAUGRC, augrc),
        (lambda **kw: SCODCovAtRisk(0.3, **kw), lambda s, f: coverage_at_risk(s, f, risk=0.3)),
        (SCODRiskAtCov, risk_at_coverage),
    ],
)
def test_scod_metric_is_the_selective_metric_on_scod_costs(metric_class, function, ood_cost: float) -> None:
    scores, misclassified, is_ood = scod_case()
    metric = metric_class(ood_cost=ood_cost)
    for chunk in zip(scores.split(100), misclassified.split(100), is_ood.split(100), strict=True):
        metric.update(*chunk)
    # the written-out cost of each sample, independent of scod_losses
    costs = torch.tensor(
        [ood_cost if o else (1 - ood_cost) * float(m) for m, o in zip(misclassified, is_ood, strict=True)]
    )
    assert metric.compute().item() == pytest.approx(function(scores, costs).item(), abs=1e-6)


def test_misclassification_of_ood_samples_is_ignored() -> None:
    scores, is_ood = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 1, 1])
    first, second = SCODAURC(), SCODAURC()
    first.update(scores, torch.tensor([0, 0, 0]), is_ood)
    second.update(scores, torch.tensor([0, 1, 1]), is_ood)
    assert first.compute().item() == pytest.approx(second.compute().item())


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `ood_cost` to be a float in \[0, 1\]"):
        SCODAUGRC(ood_cost=1.5)
    with pytest.raises(ValueError, match="Expected `is_ood` to hold only 0 and 1"):
        scod_losses(torch.tensor([0, 1]), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="Expected `misclassified` to have the shape of the scores"):
        scod_losses(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
