"""OOD metrics against sklearn (roc_auc_score, average_precision_score, roc_curve)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from torch_deup.metrics import AUPR, AUROC, FPR95, DegenerateMetricWarning, fpr_at_tpr, ood_aupr, ood_auroc


def sklearn_fpr_at_tpr(is_ood: np.ndarray, scores: np.ndarray, level: float = 0.95) -> float:
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= level)])


def ood_case(seed: int, n: int = 300, ties: bool = False, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    is_ood = (torch.rand(n, generator=gen) < 0.4).long()
    scores = torch.randn(n, generator=gen) + 1.2 * is_ood
    if ties:
        scores = (scores * 4).round() / 4
    return scores * scale, is_ood


@pytest.mark.parametrize(
    ("ties", "scale"),
    # scale 1000: scores far outside [0, 1], which torchmetrics would squash through a sigmoid
    [(False, 1.0), (True, 1.0), (False, 1000.0), (True, 1000.0)],
)
def test_matches_sklearn_over_three_batches(ties: bool, scale: float) -> None:
    scores, is_ood = ood_case(1, ties=ties, scale=scale)
    metrics = {"auroc": AUROC(), "aupr": AUPR(), "fpr": FPR95()}
    for chunk_s, chunk_o in zip(scores.split(100), is_ood.split(100), strict=True):
        for metric in metrics.values():
            metric.update(chunk_s, chunk_o)
    s, o = scores.double().numpy(), is_ood.numpy()
    assert metrics["auroc"].compute().item() == pytest.approx(roc_auc_score(o, s), abs=1e-6)
    assert metrics["aupr"].compute().item() == pytest.approx(average_precision_score(o, s), abs=1e-6)
    assert metrics["fpr"].compute().item() == pytest.approx(sklearn_fpr_at_tpr(o, s), abs=1e-7)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95, 1.0])
def test_fpr_at_other_levels_matches_sklearn(level: float) -> None:
    scores, is_ood = ood_case(2, n=100, ties=True)
    expected = sklearn_fpr_at_tpr(is_ood.numpy(), scores.double().numpy(), level)
    assert fpr_at_tpr(scores, is_ood, tpr=level).item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
def test_fpr_of_integer_scores_matches_sklearn(dtype) -> None:
    # negating unsigned scores wraps 0 to the top: the FPR must follow the scores' own order
    scores = torch.tensor([0, 1, 2, 3, 3, 5, 0, 7], dtype=dtype)
    is_ood = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1])
    expected = sklearn_fpr_at_tpr(is_ood.numpy(), scores.double().numpy(), 0.8)
    assert fpr_at_tpr(scores, is_ood, tpr=0.8).item() == pytest.approx(expected)


def test_fpr95_stops_at_exactly_95_percent() -> None:
    # 20 OOD: 18 above every ID sample, then one ID at 9.5, then the 19th OOD (TPR 19/20 = 0.95)
    ood_scores = torch.cat([torch.arange(18.0) + 10, torch.tensor([9.0, 0.0])])
    id_scores = torch.cat([torch.tensor([9.5]), torch.arange(9.0) - 10])
    scores = torch.cat([ood_scores, id_scores])
    is_ood = torch.cat([torch.ones(20), torch.zeros(10)]).long()
    assert fpr_at_tpr(scores, is_ood).item() == pytest.approx(1 / 10)
    assert sklearn_fpr_at_tpr(is_ood.numpy(), scores.numpy()) == pytest.approx(1 / 10)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["exp", "cube", "affine", "arctan"]))
def test_auroc_is_invariant_to_strictly_monotone_maps(seed: int, transform: str) -> None:
    scores, is_ood = ood_case(seed, n=60, ties=True)
    mapped = {
        "exp": torch.exp(scores.double()),
        "cube": scores.double() ** 3 + 7,
        "affine": 250 * scores - 3,
        "arctan": torch.atan(scores),
    }[transform]
    assert ood_auroc(mapped, is_ood).item() == pytest.approx(ood_auroc(scores, is_ood).item(), abs=1e-7)
    assert ood_aupr(mapped, is_ood).item() == pytest.approx(ood_aupr(scores, is_ood).item(), abs=1e-7)


@pytest.mark.parametrize("function", [ood_auroc, ood_aupr, fpr_at_tpr])
@pytest.mark.parametrize("label", [0, 1])
def test_a_single_class_is_nan_with_a_warning(function, label: int) -> None:
    with pytest.warns(DegenerateMetricWarning, match="needs both ID and OOD samples"):
        value = function(torch.tensor([0.1, 0.7, 0.3]), torch.full((3,), label))
    assert math.isnan(value.item())


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"Expected `is_ood` in \[0, 1\]"):
        ood_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"Expected argument `tpr` to be a float in \(0, 1\]"):
        FPR95(tpr=0.0)
