"""Brier, entropy and NLL against numpy formulas, one-shot and over several batches."""

import math

import numpy as np
import pytest
import torch

from torch_deup.metrics import (
    BrierScore,
    CategoricalNLL,
    DegenerateMetricWarning,
    Entropy,
    brier_score,
    categorical_nll,
    predictive_entropy,
)


def dirichlet_case(seed: int, n: int = 300, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.3), size=n)
    return torch.tensor(probs, dtype=torch.float64), torch.tensor(rng.integers(0, c, size=n))


def numpy_brier(p: np.ndarray, y: np.ndarray) -> float:
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def numpy_entropy(p: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return float(np.mean(terms.sum(axis=1)))


def numpy_nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(-np.log(p[np.arange(len(y)), y])))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize(
    ("function", "reference"), [(brier_score, numpy_brier), (categorical_nll, numpy_nll)]
)
def test_any_integer_dtype_of_targets_gives_the_int64_result(function, reference, dtype) -> None:
    probs, targets = dirichlet_case(3, n=50)
    expected = reference(probs.numpy(), targets.numpy())
    assert function(probs, targets.to(dtype)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("metric_class", "function", "reference"),
    [
        (BrierScore, brier_score, numpy_brier),
        (Entropy, predictive_entropy, lambda p, y: numpy_entropy(p)),
        (CategoricalNLL, categorical_nll, numpy_nll),
    ],
)
def test_matches_numpy_over_three_batches(metric_class, function, reference) -> None:
    probs, targets = dirichlet_case(0)
    expected = reference(probs.numpy(), targets.numpy())
    metric = metric_class()
    for chunk_p, chunk_t in zip(probs.split(100), targets.split(100), strict=True):
        metric.update(chunk_p, chunk_t)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)
    assert function(probs, targets).item() == pytest.approx(expected, rel=1e-6)


def test_entropy_of_a_one_hot_row_is_zero_and_uniform_is_log_c() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert predictive_entropy(probs).item() == pytest.approx(math.log(4) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nll_of_half_precision_probabilities_is_not_capped_by_their_smallest_normal(dtype) -> None:
    # 1e-6 is below float16's smallest normal (6.1e-5) but still held, as a subnormal
    probs = torch.tensor([[1e-6, 1 - 1e-6]]).to(dtype)
    expected = -math.log(probs[0, 0].float().item())
    assert expected > 13.0
    assert categorical_nll(probs, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_nll_of_a_zero_probability_is_clamped_at_the_smallest_normal() -> None:
    probs, targets = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    assert categorical_nll(probs, targets).item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))


def test_compute_without_samples_is_nan_with_a_warning() -> None:
    with pytest.warns(DegenerateMetricWarning, match="Brier is undefined without samples"):
        assert math.isnan(brier_score(torch.empty(0, 3), torch.empty(0, dtype=torch.long)).item())


def test_bad_inputs_raise() -> None:
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.1]]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="Apply softmax to logits first"):
        brier_score(logits, targets)
    with pytest.raises(ValueError, match=r"Expected `targets` in \[0, 1\]"):
        categorical_nll(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"Expected `probs` to be a float tensor of shape \(N, C\)"):
        predictive_entropy(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"Expected `targets` to be an integer tensor of shape \(1,\)"):
        brier_score(torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]))
