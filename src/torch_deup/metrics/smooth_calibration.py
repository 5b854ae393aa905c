"""Smooth ECE of Blasiok & Nakkiran (2023), "Smooth ECE: Principled Reliability Diagrams via
Kernel Smoothing", on the top-label confidence ``f`` and correctness ``y`` of each sample.

For a bandwidth ``sigma``, with ``K_sigma`` the Gaussian kernel reflected at 0 and 1,

    K_sigma(t, f) = sum_k phi_sigma(t - f - 2k) + phi_sigma(t + f - 2k),

which is the density at ``t`` of ``f + N(0, sigma^2)`` folded back into [0, 1] (so it integrates
to 1 over [0, 1]), the smoothed residual is ``h(t) = 1/N sum_i (y_i - f_i) K_sigma(t, f_i)`` and

    smECE_sigma = integral_0^1 |h(t)| dt.

SmECE is ``smECE_sigma*`` at the fixed point ``smECE_sigma* = sigma*``; ``smECE_sigma`` does not
increase with ``sigma`` (the paper's Lemma), so bisection finds ``sigma*`` in [1e-3, 1]. Like the
authors' ``relplot``, bandwidths below 1e-3 are not resolved: if ``smECE_0.001 <= 0.001`` the
result is ``smECE_0.001``.

Computation: residuals are spread onto a uniform grid of spacing at most ``sigma / 20`` by linear
interpolation, mirrored into one period of length 2, and convolved with the 2-periodic Gaussian
by FFT, which is exactly the reflected kernel; the integral is a trapezoid on the same grid.

TorchUncertainty 0.13.0 defaults to a Gaussian kernel in logit space instead, so its SmECE is
not this number (its DEUP tutorial reports SmECE 10.1% next to ECE 3.5%).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torch_deup.metrics._checks import nan_with_warning
from torch_deup.metrics.calibration import TopLabelMetric, top_label

MIN_BANDWIDTH = 1e-3
_NODES_PER_SIGMA = 20
_MIN_NODES = 200
_BISECTION_STEPS = 20


def _smece_at(confidence: Tensor, residual: Tensor, sigma: float) -> float:
    """``smECE_sigma`` of the samples ``(f_i, y_i - f_i)``."""
    m = max(_MIN_NODES, math.ceil(_NODES_PER_SIGMA / sigma))  # grid intervals on [0, 1]
    position = confidence * m
    left = position.floor().clamp(max=m - 1)
    right_weight = position - left
    left = left.long()
    nodes = residual.new_zeros(m + 1)
    nodes.index_add_(0, left, residual * (1 - right_weight))
    nodes.index_add_(0, left + 1, residual * right_weight)
    nodes /= residual.numel()
    # one period [0, 2) of 2m nodes: a mass at g also sits at its mirror image -g = 2 - g (mod 2)
    period = residual.new_zeros(2 * m)
    period[: m + 1] += nodes
    period.index_add_(0, (2 * m - torch.arange(m + 1, device=nodes.device)) % (2 * m), nodes)
    # the Gaussian wrapped with period 2: every copy within 10 sigma of [0, 2) is summed
    shifts = torch.arange(-(math.ceil(5 * sigma) + 1), math.ceil(5 * sigma) + 2, device=nodes.device)
    offsets = torch.arange(2 * m, device=nodes.device, dtype=nodes.dtype) / m
    distances = offsets[None, :] - 2 * shifts[:, None]
    kernel = torch.exp(-0.5 * (distances / sigma) ** 2).sum(0) / (sigma * math.sqrt(2 * math.pi))
    smoothed = torch.fft.irfft(torch.fft.rfft(period) * torch.fft.rfft(kernel), n=2 * m)[: m + 1]
    return float(torch.trapezoid(smoothed.abs(), dx=1 / m))


def _fixed_point_bandwidth(confidence: Tensor, residual: Tensor) -> float:
    low, high = MIN_BANDWIDTH, 1.0
    if _smece_at(confidence, residual, low) <= low:
        return low
    if _smece_at(confidence, residual, high) >= high:
        return high
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if _smece_at(confidence, residual, middle) > middle:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _smece_compute(confidence: Tensor, correct: Tensor, bandwidth: float | None) -> Tensor:
    if confidence.numel() == 0:
        return nan_with_warning(
            "SmECE is undefined without samples; returning NaN. Call `update` with at least one "
            "sample before `compute`.",
            confidence.device,
        )
    confidence = confidence.to(torch.float64)
    residual = correct.to(torch.float64) - confidence
    sigma = _fixed_point_bandwidth(confidence, residual) if bandwidth is None else bandwidth
    return torch.tensor(_smece_at(confidence, residual, sigma), device=confidence.device).float()


def _check_bandwidth(bandwidth: float | None) -> None:
    is_number = isinstance(bandwidth, int | float) and not isinstance(bandwidth, bool)
    if bandwidth is not None and not (is_number and MIN_BANDWIDTH <= bandwidth <= 1):
        raise ValueError(
            f"Expected argument `bandwidth` to be None (fixed point) or a float in "
            f"[{MIN_BANDWIDTH}, 1], but got {bandwidth!r}."
        )


def smooth_ece(probs: Tensor, targets: Tensor, bandwidth: float | None = None) -> Tensor:
    """Smooth ECE of the top-label confidence; ``bandwidth=None`` uses the fixed point.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1]]).repeat(10, 1)
        >>> targets = torch.tensor([0] * 7 + [1] * 3)  # 90% confident, 70% right
        >>> smooth_ece(probs, targets)
        tensor(0.2000)
    """
    _check_bandwidth(bandwidth)
    return _smece_compute(*top_label(probs, targets), bandwidth)


class SmoothCalibrationError(TopLabelMetric):
    """Smooth ECE (fixed-point bandwidth by default); ``update(probs, targets)``.

    Example:
        >>> metric = SmoothCalibrationError()
        >>> metric.update(torch.tensor([[0.9, 0.1]]).repeat(10, 1), torch.tensor([0] * 7 + [1] * 3))
        >>> metric.compute()
        tensor(0.2000)
    """

    def __init__(self, bandwidth: float | None = None, **kwargs: Any) -> None:
        _check_bandwidth(bandwidth)
        super().__init__(**kwargs)
        self.bandwidth = bandwidth

    def compute(self) -> Tensor:
        return _smece_compute(*self._state(), self.bandwidth)
