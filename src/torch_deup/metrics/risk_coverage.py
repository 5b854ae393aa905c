"""Selective classification: risk-coverage curves and the numbers read off them.

A selective classifier accepts the samples whose *uncertainty score* is at most a threshold and
abstains on the rest. Every metric here takes ``(scores, failures)``:

- ``scores``: one uncertainty score per sample, **higher = rejected first** (pass ``1 - msp`` or
  ``-msp`` for the maximum softmax probability, a DEUP score as is);
- ``failures``: the loss of accepting the sample, 0/1 for "misclassified", or any loss in [0, 1].

Curve. The threshold sweeps the *distinct* scores; at each, ``n`` samples are accepted, coverage
is ``n / N``, the selective risk is (summed failures of the accepted) ``/ n`` and the generalized
risk (Traub et al., 2024) is (summed failures of the accepted) ``/ N``, i.e. the fraction of all
samples that are accepted *and* fail. Tied scores are accepted or rejected together, so no
metric depends on the order of tied samples. This is the construction of ``fd_shifts``
(``rc_stats.py``), the reference code of Traub et al.:

- ``AURC``: trapezoidal area under (coverage, selective risk), the first point's risk extended
  flat to coverage 0 (selective risk is undefined at 0);
- ``AUGRC``: trapezoidal area under (coverage, generalized risk), starting at (0, 0); linear
  interpolation across a tie is the expected curve under random tie-breaking;
- ``Cov_5Risk``: the largest coverage of a curve point whose selective risk is at most 5%; NaN
  with a :class:`DegenerateMetricWarning` when no point reaches it;
- ``Risk_80Cov``: the selective risk at the smallest curve point whose coverage is at least 80%
  (with no ties: the ``ceil(0.8 N)`` most certain samples, as in TorchUncertainty).

All return NaN with a :class:`DegenerateMetricWarning` when they have seen no sample.
Without ties, ``AURC = (r_1 + sum_k (r_k + r_{k+1}) / 2) / N`` where ``r_k`` is the risk of the ``k``
most certain samples; TorchUncertainty 0.13 uses the trapezoid without the first ``r_1 / (2N)``
strip, rescaled by ``N / (N - 1)``; the two differ by ``O(1 / N)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from torch_deup.metrics._checks import (
    cat_state,
    check_fraction,
    check_scores,
    check_unit_interval,
    nan_with_warning,
)
from torch_deup.metrics._ranking import cumulative_at_thresholds

# a computed risk equal to the level up to float rounding counts as reaching it
_TOL = 1e-12


def _risk_coverage_update(scores: Tensor, failures: Tensor) -> tuple[Tensor, Tensor]:
    check_scores(scores)
    check_unit_interval(failures, scores, "failures")
    return scores, failures.to(failures.dtype if failures.is_floating_point() else torch.float32)


def _curve(scores: Tensor, losses: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(accepted counts, coverages, selective risks, generalized risks)``, coverage ascending."""
    counts, sums = cumulative_at_thresholds(scores, losses)
    total = scores.numel()
    return counts, counts / total, sums / counts, sums / total


def _empty(name: str, scores: Tensor) -> Tensor:
    return nan_with_warning(
        f"{name} is undefined without samples; returning NaN. Call `update` with at least one "
        "sample before `compute`.",
        scores.device,
    )


def _aurc_compute(scores: Tensor, losses: Tensor) -> Tensor:
    if scores.numel() == 0:
        return _empty("AURC", scores)
    _, coverage, risk, _ = _curve(scores, losses)
    zero = coverage.new_zeros(1)
    return torch.trapezoid(torch.cat([risk[:1], risk]), torch.cat([zero, coverage])).float()


def _augrc_compute(scores: Tensor, losses: Tensor) -> Tensor:
    if scores.numel() == 0:
        return _empty("AUGRC", scores)
    _, coverage, _, generalized = _curve(scores, losses)
    zero = coverage.new_zeros(1)
    return torch.trapezoid(torch.cat([zero, generalized]), torch.cat([zero, coverage])).float()


def _coverage_at_risk_compute(scores: Tensor, losses: Tensor, risk: float) -> Tensor:
    if scores.numel() == 0:
        return _empty("Coverage at risk", scores)
    _, coverage, selective, _ = _curve(scores, losses)
    admissible = coverage[selective <= risk + _TOL]
    if admissible.numel() == 0:
        return nan_with_warning(
            f"No coverage reaches a selective risk <= {risk:g} (the lowest is "
            f"{float(selective.min()):.4g}); coverage at risk is NaN.",
            scores.device,
        )
    return admissible.max().float()


def _risk_at_coverage_compute(scores: Tensor, losses: Tensor, coverage: float) -> Tensor:
    if scores.numel() == 0:
        return _empty("Risk at coverage", scores)
    counts, _, selective, _ = _curve(scores, losses)
    needed = math.ceil(coverage * scores.numel() - 1e-9)
    point = torch.searchsorted(counts, torch.tensor([needed], device=counts.device))
    return selective[point[0]].float()


def aurc(scores: Tensor, failures: Tensor) -> Tensor:
    """Area under the selective risk-coverage curve (module docstring gives the exact rule).

    Example:
        >>> aurc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        tensor(0.1458)
    """
    return _aurc_compute(*_risk_coverage_update(scores, failures))


def augrc(scores: Tensor, failures: Tensor) -> Tensor:
    """Area under the generalized risk-coverage curve of Traub et al. (2024).

    Example:
        >>> augrc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        tensor(0.1250)
    """
    return _augrc_compute(*_risk_coverage_update(scores, failures))


def coverage_at_risk(scores: Tensor, failures: Tensor, risk: float = 0.05) -> Tensor:
    """Largest coverage whose selective risk is at most ``risk``; NaN and a warning if none.

    Example:
        >>> coverage_at_risk(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        tensor(0.5000)
    """
    check_fraction(risk, "risk")
    return _coverage_at_risk_compute(*_risk_coverage_update(scores, failures), risk)


def risk_at_coverage(scores: Tensor, failures: Tensor, coverage: float = 0.8) -> Tensor:
    """Selective risk once at least ``coverage`` of the samples are accepted.

    Example:
        >>> risk_at_coverage(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        tensor(0.5000)
    """
    check_fraction(coverage, "coverage", open_left=True)
    return _risk_at_coverage_compute(*_risk_coverage_update(scores, failures), coverage)


class _RiskCoverageMetric(Metric):
    """Stores scores and losses ("cat" states); subclasses read one number off the curve."""

    is_differentiable = False
    higher_is_better: bool | None = False
    full_state_update = False

    scores: list[Tensor]
    losses: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("losses", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, failures: Tensor) -> None:
        """Add a batch: ``scores`` (N,) uncertainty, higher = rejected first; ``failures`` (N,) in [0, 1]."""
        scores, losses = _risk_coverage_update(scores, failures)
        self.scores.append(scores)
        self.losses.append(losses)

    def _state(self) -> tuple[Tensor, Tensor]:
        return cat_state(self.scores, self.device), cat_state(self.losses, self.device)


class AURC(_RiskCoverageMetric):
    """Area under the selective risk-coverage curve; ``update(scores, failures)``.

    Example:
        >>> metric = AURC()
        >>> metric.update(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([0.3, 0.4]), torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.1458)
    """

    def compute(self) -> Tensor:
        return _aurc_compute(*self._state())


class AUGRC(_RiskCoverageMetric):
    """Area under the generalized risk-coverage curve; ``update(scores, failures)``.

    Example:
        >>> metric = AUGRC()
        >>> metric.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.1250)
    """

    def compute(self) -> Tensor:
        return _augrc_compute(*self._state())


class CovAtRisk(_RiskCoverageMetric):
    """Largest coverage with selective risk <= ``risk`` (``Cov_5Risk`` by default).

    Example:
        >>> metric = CovAtRisk(risk=0.05)
        >>> metric.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better = True

    def __init__(self, risk: float = 0.05, **kwargs: Any) -> None:
        check_fraction(risk, "risk")
        super().__init__(**kwargs)
        self.risk = risk

    def compute(self) -> Tensor:
        return _coverage_at_risk_compute(*self._state(), self.risk)


class RiskAtCov(_RiskCoverageMetric):
    """Selective risk at ``coverage`` (``Risk_80Cov`` by default).

    Example:
        >>> metric = RiskAtCov(coverage=0.8)
        >>> metric.update(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), torch.tensor([0, 0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.2500)
    """

    def __init__(self, coverage: float = 0.8, **kwargs: Any) -> None:
        check_fraction(coverage, "coverage", open_left=True)
        super().__init__(**kwargs)
        self.coverage = coverage

    def compute(self) -> Tensor:
        return _risk_at_coverage_compute(*self._state(), self.coverage)
