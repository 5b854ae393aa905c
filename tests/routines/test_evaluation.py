"""EvaluationMetrics: the ID samples enter every OOD set's metrics, each OOD set stays separate,
and values match sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from torch_deup.metrics import aurc
from torch_deup.ood_criteria import MaxSoftmaxCriterion
from torch_deup.outputs import ModelOutputs
from torch_deup.routines.evaluation import EvaluationMetrics


def test_ood_sets_and_criteria_are_separate_and_match_sklearn():
    generator = torch.Generator().manual_seed(0)
    probs_id = torch.softmax(torch.randn(40, 3, generator=generator), 1)
    targets = torch.randint(0, 3, (40,), generator=generator)
    scores_id = {"A": torch.randn(40, generator=generator), "B": torch.randn(40, generator=generator)}
    oods = [
        {"A": torch.randn(25, generator=generator) + 1, "B": torch.randn(25, generator=generator)}
        for _ in "xy"
    ]
    metrics = EvaluationMetrics(3, criteria=["A", "B"], ood_sets=["x", "y"], ood_cost=0.5)
    for half in (slice(0, 20), slice(20, 40)):  # two batches
        metrics.update_id(probs_id[half], targets[half], {k: v[half] for k, v in scores_id.items()})
    probs_ood = torch.softmax(torch.randn(25, 3, generator=generator), 1)
    for i, scores in enumerate(oods):
        metrics.update_ood(i, probs_ood, scores)
    values = metrics.compute()
    is_ood = np.r_[np.zeros(40), np.ones(25)]
    for i, ood_set in enumerate("xy"):
        for criterion in "AB":
            scores = torch.cat([scores_id[criterion], oods[i][criterion]]).numpy()
            expected = roc_auc_score(is_ood, scores)
            assert values[f"ood_{ood_set}/{criterion}/AUROC"] == pytest.approx(expected, abs=1e-6)
    accuracy = (probs_id.argmax(1) == targets).float().mean().item()
    assert values["test/cls/Acc"] == pytest.approx(accuracy)
    # selective classification ranks by the model's confidence, whatever the criteria
    assert not any(key.startswith(("test/sc/A/", "test/sc/B/")) for key in values)
    msp = MaxSoftmaxCriterion()(ModelOutputs(probs_id.log()))
    wrong = (probs_id.argmax(1) != targets).long()
    assert values["test/sc/AURC"] == pytest.approx(float(aurc(msp, wrong)), abs=1e-6)
