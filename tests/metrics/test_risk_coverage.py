"""Risk-coverage metrics against a written-out sweep over thresholds and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_deup.metrics import (
    AUGRC,
    AURC,
    CovAtRisk,
    DegenerateMetricWarning,
    RiskAtCov,
    augrc,
    aurc,
    coverage_at_risk,
    risk_at_coverage,
)


def written_out_curve(scores: np.ndarray, losses: np.ndarray) -> list[tuple[float, float, float]]:
    """(coverage, selective risk, generalized risk) for "accept iff score <= t", t = each distinct score."""
    points = []
    for t in sorted(set(scores.tolist())):
        accepted = scores <= t
        points.append((accepted.mean(), losses[accepted].mean(), losses[accepted].sum() / len(scores)))
    return points


def trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))


def written_out_aurc(scores: np.ndarray, losses: np.ndarray) -> float:
    cov, risk, _ = zip(*written_out_curve(scores, losses), strict=True)
    return trapezoid([0.0, *cov], [risk[0], *risk])


def written_out_augrc(scores: np.ndarray, losses: np.ndarray) -> float:
    cov, _, general = zip(*written_out_curve(scores, losses), strict=True)
    return trapezoid([0.0, *cov], [0.0, *general])


def random_case(seed: int, n: int = 200, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=gen)
    if ties:
        scores = (scores * 10).round() / 10
    failures = (torch.rand(n, generator=gen) < 0.2 + 0.6 * scores).float()
    return scores, failures


def test_hand_case() -> None:
    # coverages 1/4..1, selective risks 0, 0, 1/3, 1/2, generalized risks 0, 0, 1/4, 1/2
    scores, failures = torch.tensor([0.3, 0.1, 0.4, 0.2]), torch.tensor([1, 0, 1, 0])
    assert aurc(scores, failures).item() == pytest.approx(1 / 4 * (1 / 3) / 2 + 1 / 4 * (1 / 3 + 1 / 2) / 2)
    assert augrc(scores, failures).item() == pytest.approx(1 / 4 * (1 / 4) / 2 + 1 / 4 * (1 / 4 + 1 / 2) / 2)
    assert coverage_at_risk(scores, failures, risk=0.05).item() == pytest.approx(0.5)
    assert coverage_at_risk(scores, failures, risk=0.4).item() == pytest.approx(0.75)
    assert risk_at_coverage(scores, failures, coverage=0.75).item() == pytest.approx(1 / 3)
    assert risk_at_coverage(scores, failures, coverage=0.8).item() == pytest.approx(1 / 2)


def test_tied_scores_are_accepted_together() -> None:
    # one distinct threshold below the top: points (1/2, risk 1/2, general 1/4) and (1, 1/2, 1/2)
    scores, failures = torch.tensor([0.1, 0.1, 0.2, 0.2]), torch.tensor([1, 0, 0, 1])
    assert aurc(scores, failures).item() == pytest.approx(0.5)
    assert augrc(scores, failures).item() == pytest.approx(0.25)
    assert risk_at_coverage(scores, failures, coverage=0.25).item() == pytest.approx(0.5)


@pytest.mark.parametrize("ties", [False, True])
def test_matches_written_out_sweep(ties: bool) -> None:
    scores, failures = random_case(0, ties=ties)
    s, f = scores.numpy().astype(np.float64), failures.numpy().astype(np.float64)
    assert aurc(scores, failures).item() == pytest.approx(written_out_aurc(s, f), rel=1e-5)
    assert augrc(scores, failures).item() == pytest.approx(written_out_augrc(s, f), rel=1e-5)
    curve = written_out_curve(s, f)
    for level in (min(risk for _, risk, _ in curve), 0.5):
        expected = max(cov for cov, risk, _ in curve if risk <= level)
        assert coverage_at_risk(scores, failures, risk=level).item() == pytest.approx(expected)
    expected = next(risk for cov, risk, _ in curve if cov >= 0.8)
    assert risk_at_coverage(scores, failures, coverage=0.8).item() == pytest.approx(expected)


def test_real_valued_losses() -> None:
    scores, losses = torch.tensor([0.2, 0.1, 0.3]), torch.tensor([0.5, 0.25, 1.0])
    s, f = scores.double().numpy(), losses.double().numpy()
    assert aurc(scores, losses).item() == pytest.approx(written_out_aurc(s, f), rel=1e-6)
    assert augrc(scores, losses).item() == pytest.approx(written_out_augrc(s, f), rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_augrc_of_a_perfect_ranking_is_half_the_squared_error_rate(fails: list[bool]) -> None:
    # Traub et al.: the optimal AUGRC for binary failures is err^2 / 2
    failures = torch.tensor(fails, dtype=torch.float32)
    scores = failures + torch.linspace(0, 0.5, len(fails))  # every failure ranked after every success
    err = failures.mean().item()
    assert augrc(scores, failures).item() == pytest.approx(err**2 / 2, abs=1e-7)


@pytest.mark.filterwarnings("ignore::torch_deup.metrics.DegenerateMetricWarning")
@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_order_of_tied_samples_does_not_matter(seed: int) -> None:
    scores, failures = random_case(seed, n=40, ties=True)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed + 1))
    for fn in (aurc, augrc, coverage_at_risk, risk_at_coverage):
        first, second = fn(scores, failures), fn(scores[perm], failures[perm])
        assert first.isnan().item() == second.isnan().item()
        if not first.isnan():
            assert first.item() == pytest.approx(second.item(), abs=1e-7)


def test_all_tied_gives_the_overall_risk() -> None:
    scores, failures = torch.zeros(5), torch.tensor([1.0, 0, 0, 1, 0])
    assert aurc(scores, failures).item() == pytest.approx(0.4)
    assert augrc(scores, failures).item() == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("metric", "function"),
    [
        (AURC(), aurc),
        (AUGRC(), augrc),
        (CovAtRisk(0.3), lambda s, f: coverage_at_risk(s, f, risk=0.3)),
        (RiskAtCov(0.8), risk_at_coverage),
    ],
)
def test_three_updates_equal_one_shot(metric, function) -> None:
    scores, failures = random_case(3, n=300, ties=True)
    for chunk_s, chunk_f in zip(scores.split(100), failures.split(100), strict=True):
        metric.update(chunk_s, chunk_f)
    assert metric.compute().item() == pytest.approx(function(scores, failures).item(), abs=1e-7)


def test_coverage_never_reaching_the_risk_is_nan_with_a_warning() -> None:
    with pytest.warns(DegenerateMetricWarning, match=r"No coverage reaches a selective risk <= 0\.05"):
        value = coverage_at_risk(torch.tensor([0.1, 0.2]), torch.tensor([1, 0]))
    assert math.isnan(value.item())


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_compute_without_samples_is_nan_with_a_warning() -> None:
    metric = AURC()
    with pytest.warns(DegenerateMetricWarning, match="AURC is undefined without samples"):
        assert math.isnan(metric.compute().item())


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"Expected `failures` in \[0, 1\]"):
        aurc(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match=r"got 1 values outside it, 1 of them NaN"):
        aurc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"got 1 values outside it, 1 of them NaN"):
        coverage_at_risk(torch.tensor([0.1, 0.2]), torch.tensor([float("nan"), 0.0]), 0.05)
    with pytest.raises(ValueError, match="Expected `failures` to have the shape of the scores"):
        aurc(torch.tensor([0.1, 0.2]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="Expected `scores` without NaN"):
        augrc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Expected `scores` to be a 1-D real tensor"):
        augrc(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"Expected argument `coverage` to be a float in \(0, 1\]"):
        RiskAtCov(coverage=0.0)
    with pytest.raises(ValueError, match=r"Expected argument `risk` to be a float in \[0, 1\]"):
        CovAtRisk(risk=5)
