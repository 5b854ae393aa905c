"""OOD detection as binary classification, OOD = positive class.

Every metric takes ``update(scores, is_ood)``: one score per sample, **higher = more OOD**, and a
0/1 (or bool) OOD indicator. AUROC and AUPR are torchmetrics' ``binary_auroc`` and
``binary_average_precision`` (AUPR = average precision with OOD positive, sklearn's
``average_precision_score``). They run on the dense ranks of the scores, not the scores: torchmetrics
squashes any score outside [0, 1] through a sigmoid, which would merge large scores (energies,
distances) into ties; ranks are a strictly monotone map into [0, 1] that keeps ties as ties.

FPR95: the sample is called OOD when ``score >= t``. Among the thresholds ``t`` (the distinct
scores) whose TPR on OOD samples is at least 95%, take the largest ``t`` (the fewest ID false
positives); FPR95 is the fraction of ID samples with ``score >= t`` there. Equivalently, with
sklearn: ``fpr[argmax(tpr >= 0.95)]`` from ``roc_curve(is_ood, scores, drop_intermediate=False)``.

Without OOD or without ID samples, all three return NaN with a :class:`DegenerateMetricWarning`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from torch_deup.metrics._checks import (
    cat_state,
    check_binary,
    check_fraction,
    check_scores,
    nan_with_warning,
)
from torch_deup.metrics._ranking import cumulative_at_thresholds


def _ood_update(scores: Tensor, is_ood: Tensor) -> tuple[Tensor, Tensor]:
    check_scores(scores)
    check_binary(is_ood, scores, "is_ood")
    return scores, is_ood.to(torch.long)


def _degenerate(name: str, scores: Tensor, is_ood: Tensor) -> Tensor | None:
    """NaN with a warning when one of the two classes is missing, else ``None``."""
    num_ood = int(is_ood.sum())
    if 0 < num_ood < is_ood.numel():
        return None
    return nan_with_warning(
        f"{name} needs both ID and OOD samples, but got {num_ood} OOD and "
        f"{is_ood.numel() - num_ood} ID samples; returning NaN.",
        scores.device,
    )


def _dense_ranks(scores: Tensor) -> Tensor:
    """Strictly monotone map of ``scores`` into [0, 1]; equal scores get equal ranks."""
    _, ranks = torch.unique(scores, sorted=True, return_inverse=True)
    return ranks.to(torch.float64) / max(int(ranks.max()), 1)


def _auroc_compute(scores: Tensor, is_ood: Tensor) -> Tensor:
    nan = _degenerate("AUROC", scores, is_ood)
    return nan if nan is not None else binary_auroc(_dense_ranks(scores), is_ood).float()


def _aupr_compute(scores: Tensor, is_ood: Tensor) -> Tensor:
    nan = _degenerate("AUPR", scores, is_ood)
    return nan if nan is not None else binary_average_precision(_dense_ranks(scores), is_ood).float()


def _fpr_at_tpr_compute(scores: Tensor, is_ood: Tensor, tpr: float) -> Tensor:
    nan = _degenerate("FPR at TPR", scores, is_ood)
    if nan is not None:
        return nan
    # negated ranks: sweeping up from the smallest counts the samples with score >= t (ranks, as
    # negating unsigned scores would wrap around)
    called_ood, true_pos = cumulative_at_thresholds(-_dense_ranks(scores), is_ood)
    num_ood = true_pos[-1]
    first = torch.nonzero(true_pos >= tpr * num_ood * (1 - 1e-12))[0, 0]
    false_pos = called_ood[first] - true_pos[first]
    return (false_pos / (is_ood.numel() - num_ood)).float()


def ood_auroc(scores: Tensor, is_ood: Tensor) -> Tensor:
    """Area under the ROC curve, OOD positive, higher score = more OOD.

    Example:
        >>> ood_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.7500)
    """
    return _auroc_compute(*_ood_update(scores, is_ood))


def ood_aupr(scores: Tensor, is_ood: Tensor) -> Tensor:
    """Average precision with OOD as the positive class.

    Example:
        >>> ood_aupr(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.8333)
    """
    return _aupr_compute(*_ood_update(scores, is_ood))


def fpr_at_tpr(scores: Tensor, is_ood: Tensor, tpr: float = 0.95) -> Tensor:
    """False-positive rate on ID at the first threshold reaching ``tpr`` on OOD (module docstring).

    Example:
        >>> fpr_at_tpr(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.5000)
    """
    check_fraction(tpr, "tpr", open_left=True)
    return _fpr_at_tpr_compute(*_ood_update(scores, is_ood), tpr)


class _OODMetric(Metric):
    """Stores scores and OOD labels ("cat" states); subclasses compute one number from them."""

    is_differentiable = False
    full_state_update = False

    scores: list[Tensor]
    is_ood: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("is_ood", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, is_ood: Tensor) -> None:
        """Add a batch: ``scores`` (N,), higher = more OOD; ``is_ood`` (N,) 0/1 or bool."""
        scores, is_ood = _ood_update(scores, is_ood)
        self.scores.append(scores)
        self.is_ood.append(is_ood)

    def _state(self) -> tuple[Tensor, Tensor]:
        return cat_state(self.scores, self.device), cat_state(self.is_ood, self.device)


class AUROC(_OODMetric):
    """OOD AUROC; ``update(scores, is_ood)``, higher score = more OOD.

    Example:
        >>> metric = AUROC()
        >>> metric.update(torch.tensor([0.1, 0.4]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([0.35, 0.8]), torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.7500)
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        return _auroc_compute(*self._state())


class AUPR(_OODMetric):
    """OOD average precision (OOD positive); ``update(scores, is_ood)``.

    Example:
        >>> metric = AUPR()
        >>> metric.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.8333)
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        return _aupr_compute(*self._state())


class FPR95(_OODMetric):
    """FPR on ID at ``tpr`` (0.95) TPR on OOD; ``update(scores, is_ood)``.

    Example:
        >>> metric = FPR95()
        >>> metric.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better = False

    def __init__(self, tpr: float = 0.95, **kwargs: Any) -> None:
        check_fraction(tpr, "tpr", open_left=True)
        super().__init__(**kwargs)
        self.tpr = tpr

    def compute(self) -> Tensor:
        return _fpr_at_tpr_compute(*self._state(), self.tpr)
