"""SmECE against a direct numpy evaluation of Blasiok & Nakkiran's definition, and sanity cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_deup.metrics import DegenerateMetricWarning, SmoothCalibrationError, smooth_ece


def reference_smece_at(f: np.ndarray, y: np.ndarray, sigma: float, grid: int = 2001) -> float:
    """integral_0^1 |1/N sum_i (y_i - f_i) K(t, f_i)| dt, K the reflected Gaussian, summed directly."""
    t = np.linspace(0, 1, grid)[:, None, None]
    k = np.arange(-3, 4)[None, None, :]
    fi = f[None, :, None]

    def phi(d: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * (d / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    kernel = (phi(t - fi - 2 * k) + phi(t + fi - 2 * k)).sum(axis=2)
    h = kernel @ (y - f) / len(f)
    return float(np.trapezoid(np.abs(h), dx=1 / (grid - 1)))


def reference_smece(f: np.ndarray, y: np.ndarray) -> float:
    """smECE at the fixed point sigma = smECE_sigma, by bisection on [1e-3, 1]."""
    low, high = 1e-3, 1.0
    for _ in range(20):
        middle = (low + high) / 2
        low, high = (middle, high) if reference_smece_at(f, y, middle) > middle else (low, middle)
    return reference_smece_at(f, y, (low + high) / 2)


def binary_case(seed: int, n: int, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """p ~ U(0, 1) and y ~ Bernoulli(p ** power): calibrated for power 1."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=gen, dtype=torch.float64)
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < p**power).long()
    return torch.stack([1 - p, p], dim=1), y


def top_label_numpy(probs: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p = probs.numpy()
    return p.max(axis=1), (p.argmax(axis=1) == targets.numpy()).astype(float)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2, 0.7])
def test_fixed_bandwidth_matches_the_definition(sigma: float) -> None:
    probs, targets = binary_case(0, n=150, power=3.0)
    expected = reference_smece_at(*top_label_numpy(probs, targets), sigma)
    assert smooth_ece(probs, targets, bandwidth=sigma).item() == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(("seed", "power"), [(1, 1.0), (2, 3.0)])
def test_fixed_point_matches_the_definition(seed: int, power: float) -> None:
    probs, targets = binary_case(seed, n=150, power=power)
    expected = reference_smece(*top_label_numpy(probs, targets))
    value = smooth_ece(probs, targets).item()
    assert value == pytest.approx(expected, abs=1e-3)
    # and it is a fixed point: the smECE at bandwidth = value is value
    assert smooth_ece(probs, targets, bandwidth=value).item() == pytest.approx(value, abs=1e-4)


def test_constant_overconfidence_gives_the_gap() -> None:
    # f = 0.9 everywhere and 70% right: h(t) = -0.2 K(t, 0.9), whose integral is 0.2 for any sigma
    probs = torch.tensor([[0.9, 0.05, 0.05]]).repeat(100, 1)
    targets = torch.tensor([0] * 70 + [1] * 30)
    assert smooth_ece(probs, targets).item() == pytest.approx(0.2, abs=1e-4)


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 10_000))
def test_calibrated_is_near_zero_and_miscalibrated_is_not(seed: int) -> None:
    calibrated = smooth_ece(*binary_case(seed, n=20_000, power=1.0)).item()
    # top-label confidence ~ 0.95 on average, accuracy 50%
    gen = torch.Generator().manual_seed(seed)
    overconfident = torch.softmax(5 * torch.randn(2_000, 3, generator=gen), dim=1)
    guessed = torch.randint(0, 3, (2_000,), generator=gen)
    miscalibrated = smooth_ece(overconfident, guessed).item()
    assert calibrated < 0.02
    assert miscalibrated > 0.1


def test_three_updates_equal_one_shot() -> None:
    probs, targets = binary_case(4, n=600, power=2.0)
    metric = SmoothCalibrationError()
    for chunk_p, chunk_t in zip(probs.split(200), targets.split(200), strict=True):
        metric.update(chunk_p, chunk_t)
    assert metric.compute().item() == pytest.approx(smooth_ece(probs, targets).item(), abs=1e-7)


def test_no_sample_is_nan_with_a_warning() -> None:
    with pytest.warns(DegenerateMetricWarning, match="SmECE is undefined without samples"):
        assert math.isnan(smooth_ece(torch.empty(0, 2), torch.empty(0, dtype=torch.long)).item())


def test_bad_bandwidth_raises() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `bandwidth` to be None \(fixed point\)"):
        SmoothCalibrationError(bandwidth=0.0)
