"""Selective classification with OOD inputs (SCOD): the selective metrics on ID + OOD samples.

The SCOD metrics *are* the metrics of :mod:`torch_deup.metrics.risk_coverage`, applied to the
concatenated ID and OOD test sets with one cost per sample (Xia & Bouganis, ACCV 2022; Narasimhan
et al., 2023), as TorchUncertainty defines them since its ``ood_cost`` argument:

=====================  ==================
sample                 cost if accepted
=====================  ==================
ID, correct            0
ID, misclassified      ``1 - ood_cost``
OOD                    ``ood_cost``
=====================  ==================

``update(scores, misclassified, is_ood)`` takes one uncertainty score per sample (higher =
rejected first), the 0/1 misclassification of each sample (ignored for OOD samples: an OOD
sample has no correct class) and the 0/1 OOD indicator. The functional twin of ``SCOD<X>`` is
``<x>(scores, scod_losses(misclassified, is_ood, ood_cost))``.

``ood_cost=1.0`` charges OOD samples only, which is the definition behind the SCOD rows of
TorchUncertainty 0.13.0's DEUP tutorial tables (risks of 0.5 and above cannot come from
``ood_cost=0.5``, whose costs never exceed 0.5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_deup.metrics._checks import check_binary, check_fraction
from torch_deup.metrics.risk_coverage import AUGRC, AURC, CovAtRisk, RiskAtCov


def scod_losses(misclassified: Tensor, is_ood: Tensor, ood_cost: float = 0.5) -> Tensor:
    """Per-sample SCOD cost: ``ood_cost`` for OOD, ``1 - ood_cost`` for a misclassified ID sample.

    Example:
        >>> scod_losses(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), ood_cost=0.75)
        tensor([0.0000, 0.2500, 0.7500])
    """
    check_fraction(ood_cost, "ood_cost")
    check_binary(is_ood, is_ood.reshape(-1), "is_ood")
    check_binary(misclassified, is_ood, "misclassified")
    id_cost = misclassified.to(torch.float32) * (1 - ood_cost)
    return torch.where(is_ood.bool(), torch.full_like(id_cost, ood_cost), id_cost)


class _SCODMixin:
    """Turns ``update(scores, misclassified, is_ood)`` into the parent's ``update(scores, losses)``."""

    def __init__(self, *args: Any, ood_cost: float = 0.5, **kwargs: Any) -> None:
        check_fraction(ood_cost, "ood_cost")
        super().__init__(*args, **kwargs)
        self.ood_cost = ood_cost

    def update(self, scores: Tensor, misclassified: Tensor, is_ood: Tensor) -> None:
        """Add a batch: ``scores`` (N,), higher = rejected first; ``misclassified``, ``is_ood`` (N,) 0/1."""
        super().update(scores, scod_losses(misclassified, is_ood, self.ood_cost))  # type: ignore[misc]


class SCODAURC(_SCODMixin, AURC):
    """AURC over ID + OOD samples with SCOD costs; ``update(scores, misclassified, is_ood)``.

    Example:
        >>> metric = SCODAURC(ood_cost=1.0)
        >>> metric.update(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> metric.compute()
        tensor(0.0556)
    """


class SCODAUGRC(_SCODMixin, AUGRC):
    """AUGRC over ID + OOD samples with SCOD costs; ``update(scores, misclassified, is_ood)``.

    Example:
        >>> metric = SCODAUGRC(ood_cost=1.0)
        >>> metric.update(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> metric.compute()
        tensor(0.0556)
    """


class SCODCovAtRisk(_SCODMixin, CovAtRisk):
    """Largest coverage with SCOD risk <= ``risk``; ``SCODCovAtRisk(risk=0.05, ood_cost=0.5)``.

    Example:
        >>> metric = SCODCovAtRisk(risk=0.05, ood_cost=1.0)
        >>> metric.update(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> metric.compute()
        tensor(0.6667)
    """


class SCODRiskAtCov(_SCODMixin, RiskAtCov):
    """SCOD risk at ``coverage``; ``SCODRiskAtCov(coverage=0.8, ood_cost=0.5)``.

    Example:
        >>> metric = SCODRiskAtCov(coverage=0.8, ood_cost=1.0)
        >>> metric.update(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> metric.compute()
        tensor(0.3333)
    """
