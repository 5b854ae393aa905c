"""ECE/MCE against a written-out 15-bin binning, aECE against written-out equal-mass bins."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_deup.metrics import (
    AdaptiveCalibrationError,
    DegenerateMetricWarning,
    adaptive_calibration_error,
    calibration_metrics,
    expected_calibration_error,
)


def miscalibrated_case(seed: int, n: int = 600, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.4), size=n)
    # the labels follow a flattened version of probs: the predictor is overconfident
    flat = probs**0.5 / (probs**0.5).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(c, p=row) for row in flat])
    return torch.tensor(probs, dtype=torch.float32), torch.tensor(targets)


def calibrated_binary_case(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p ~ U(0, 1), y ~ Bernoulli(p): the top label is right with probability max(p, 1 - p)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=gen, dtype=torch.float64)
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < p).long()
    return torch.stack([1 - p, p], dim=1), y


def top_label_numpy(probs: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p = probs.double().numpy()
    return p.max(axis=1), (p.argmax(axis=1) == targets.numpy()).astype(float)


def written_out_binned(conf: np.ndarray, acc: np.ndarray, n_bins: int = 15) -> tuple[float, float]:
    """(ECE, MCE) with bins [k/n, (k+1)/n) (a confidence of exactly 1 in its own bin)."""
    ece, mce = 0.0, 0.0
    for k in range(n_bins + 1):
        in_bin = (conf >= k / n_bins) & (conf < (k + 1) / n_bins)
        if in_bin.any():
            gap = abs(acc[in_bin].mean() - conf[in_bin].mean())
            ece += in_bin.mean() * gap
            mce = max(mce, gap)
    return ece, mce


def written_out_adaptive(conf: np.ndarray, acc: np.ndarray, n_bins: int = 15) -> float:
    order = np.argsort(conf, kind="stable")
    bins = zip(np.array_split(conf[order], n_bins), np.array_split(acc[order], n_bins), strict=True)
    return sum(len(c) / len(conf) * abs(a.mean() - c.mean()) for c, a in bins if len(c))


def test_ece_mce_aece_match_written_out_bins_over_three_batches() -> None:
    probs, targets = miscalibrated_case(0)
    metrics = calibration_metrics(num_classes=4)
    for chunk_p, chunk_t in zip(probs.split(200), targets.split(200), strict=True):
        metrics.update(chunk_p, chunk_t)
    values = metrics.compute()
    conf, acc = top_label_numpy(probs, targets)
    ece, mce = written_out_binned(conf, acc)
    assert ece > 0.05  # the case is miscalibrated, so the comparison is not 0 == 0
    assert values["ECE"].item() == pytest.approx(ece, abs=1e-5)
    assert values["MCE"].item() == pytest.approx(mce, abs=1e-5)
    assert values["aECE"].item() == pytest.approx(written_out_adaptive(conf, acc), abs=1e-5)


@pytest.mark.parametrize("n_bins", [1, 4, 7])
def test_adaptive_matches_written_out_for_other_bin_counts(n_bins: int) -> None:
    probs, targets = miscalibrated_case(1, n=101)
    conf, acc = top_label_numpy(probs, targets)
    expected = written_out_adaptive(conf, acc, n_bins)
    assert adaptive_calibration_error(probs, targets, n_bins).item() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000))
def test_calibrated_predictor_has_ece_near_zero(seed: int) -> None:
    probs, targets = calibrated_binary_case(seed, n=20_000)
    assert expected_calibration_error(num_classes=2)(probs, targets).item() < 0.02
    assert adaptive_calibration_error(probs, targets).item() < 0.02


def test_compute_without_samples_is_nan_with_a_warning() -> None:
    metric = AdaptiveCalibrationError()
    with (
        pytest.warns(DegenerateMetricWarning, match="aECE is undefined without samples"),
        pytest.warns(UserWarning, match="was called before the ``update``"),
    ):
        assert math.isnan(metric.compute().item())


def test_bad_n_bins_raises() -> None:
    with pytest.raises(
        ValueError, match="Expected argument `n_bins` to be an integer larger than 0, but got 0"
    ):
        AdaptiveCalibrationError(n_bins=0)
