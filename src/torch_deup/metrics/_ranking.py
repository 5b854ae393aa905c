"""Cumulative sums at each distinct threshold: the one computation behind RC and ROC curves."""

from __future__ import annotations

import torch
from torch import Tensor


def cumulative_at_thresholds(scores: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sweep a threshold ``t`` over the distinct ``scores``, from the smallest up.

    Returns ``counts[j] = #{i: scores_i <= t_j}`` and ``sums[j] = sum of values_i over those i``
    (float64), one entry per distinct score. Tied scores are always counted together, so a curve
    built from these points never depends on the order of tied samples.

    Example:
        >>> counts, sums = cumulative_at_thresholds(torch.tensor([0.3, 0.1, 0.3]), torch.tensor([1, 0, 1]))
        >>> counts.tolist(), sums.tolist()
        ([1, 3], [0.0, 2.0])
    """
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    is_last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    ends = is_last_of_tie.nonzero().squeeze(1)
    sums = values[order].to(torch.float64).cumsum(0)[ends]
    return ends + 1, sums
