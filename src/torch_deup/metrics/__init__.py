"""Evaluation metrics: torchmetrics ``Metric`` classes, their functional twins, and the groups the
evaluation routine logs, keyed and formatted as in TorchUncertainty's tables.

Groups and their ``update`` signatures:

- :func:`classification_metrics` "Acc", "Brier", "Entropy", "NLL": ``(probs (N, C), targets (N,))``
- :func:`calibration_metrics` "ECE", "MCE", "aECE", "SmECE": ``(probs, targets)``
- :func:`selective_metrics` "AURC", "AUGRC", "Cov_5Risk", "Risk_80Cov":
  ``(uncertainty_scores (N,), failures (N,))``, higher score = rejected first
- :func:`ood_metrics` "AUROC", "AUPR", "FPR95": ``(ood_scores (N,), is_ood (N,))``, higher = more OOD
- :func:`scod_metrics` "SCOD_AURC", "SCOD_AUGRC", "SCOD_Cov_5Risk", "SCOD_Risk_80Cov":
  ``(uncertainty_scores (N,), misclassified (N,), is_ood (N,))`` on ID and OOD samples together

Call ``update`` per batch and ``compute`` once: the score-list metrics are undefined on a batch
with, say, no OOD sample, and ``forward`` would warn about each such batch.
"""

from __future__ import annotations

import math

from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from torch_deup.metrics._checks import DegenerateMetricWarning
from torch_deup.metrics.calibration import (
    N_BINS,
    AdaptiveCalibrationError,
    adaptive_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    top_label,
)
from torch_deup.metrics.classification import (
    BrierScore,
    CategoricalNLL,
    Entropy,
    brier_score,
    categorical_nll,
    predictive_entropy,
)
from torch_deup.metrics.complexity import flops, params
from torch_deup.metrics.ood import AUPR, AUROC, FPR95, fpr_at_tpr, ood_aupr, ood_auroc
from torch_deup.metrics.risk_coverage import (
    AUGRC,
    AURC,
    CovAtRisk,
    RiskAtCov,
    augrc,
    aurc,
    coverage_at_risk,
    risk_at_coverage,
)
from torch_deup.metrics.scod import SCODAUGRC, SCODAURC, SCODCovAtRisk, SCODRiskAtCov, scod_losses
from torch_deup.metrics.smooth_calibration import SmoothCalibrationError, smooth_ece

__all__ = [
    "AUGRC",
    "AUPR",
    "AURC",
    "AUROC",
    "FPR95",
    "N_BINS",
    "PERCENT_METRICS",
    "SCODAUGRC",
    "SCODAURC",
    "AdaptiveCalibrationError",
    "BrierScore",
    "CategoricalNLL",
    "CovAtRisk",
    "DegenerateMetricWarning",
    "Entropy",
    "RiskAtCov",
    "SCODCovAtRisk",
    "SCODRiskAtCov",
    "SmoothCalibrationError",
    "adaptive_calibration_error",
    "augrc",
    "aurc",
    "brier_score",
    "calibration_metrics",
    "categorical_nll",
    "classification_metrics",
    "coverage_at_risk",
    "expected_calibration_error",
    "flops",
    "format_metric",
    "fpr_at_tpr",
    "maximum_calibration_error",
    "ood_aupr",
    "ood_auroc",
    "ood_metrics",
    "params",
    "predictive_entropy",
    "risk_at_coverage",
    "scod_losses",
    "scod_metrics",
    "selective_metrics",
    "smooth_ece",
    "top_label",
]

#: metrics printed as percentages ("93.380%"); the others print as plain floats ("0.10812"),
#: except "flops" and "params", which print with an SI prefix ("284.38 G", "11.17 M")
PERCENT_METRICS: frozenset[str] = frozenset(
    {
        "Acc",
        "ECE",
        "MCE",
        "SmECE",
        "aECE",
        "AUROC",
        "AUPR",
        "FPR95",
        "AUGRC",
        "AURC",
        "Cov_5Risk",
        "Risk_80Cov",
    }
)
_COUNT_METRICS = frozenset({"flops", "params"})
_SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def classification_metrics(num_classes: int) -> MetricCollection:
    """ "Acc", "Brier", "Entropy", "NLL"; ``update(probs (N, C), targets (N,))``.

    Example:
        >>> import torch
        >>> metrics = classification_metrics(num_classes=2)
        >>> metrics.update(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 0]))
        >>> {name: round(value.item(), 4) for name, value in metrics.compute().items()}
        {'Acc': 0.5, 'Brier': 0.4, 'Entropy': 0.5867, 'NLL': 0.5697}
    """
    return MetricCollection(
        {
            "Acc": MulticlassAccuracy(num_classes, average="micro"),
            "Brier": BrierScore(),
            "Entropy": Entropy(),
            "NLL": CategoricalNLL(),
        }
    )


def calibration_metrics(num_classes: int) -> MetricCollection:
    """ "ECE", "MCE" (15 equal-width bins), "aECE" (15 equal-mass bins), "SmECE";
    ``update(probs (N, C), targets (N,))``.

    Example:
        >>> import torch
        >>> metrics = calibration_metrics(num_classes=2)
        >>> metrics.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        >>> round(metrics.compute()["ECE"].item(), 4)
        0.4
    """
    return MetricCollection(
        {
            "ECE": expected_calibration_error(num_classes),
            "MCE": maximum_calibration_error(num_classes),
            "aECE": AdaptiveCalibrationError(),
            "SmECE": SmoothCalibrationError(),
        }
    )


def selective_metrics() -> MetricCollection:
    """ "AURC", "AUGRC", "Cov_5Risk", "Risk_80Cov"; ``update(uncertainty_scores (N,), failures (N,))``.

    Scores: higher = rejected first (pass ``1 - msp`` for the maximum softmax probability);
    failures: 1 where the prediction is wrong (or a loss in [0, 1]).

    Example:
        >>> import torch
        >>> metrics = selective_metrics()
        >>> metrics.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1]))
        >>> {name: round(value.item(), 4) for name, value in metrics.compute().items()}
        {'AUGRC': 0.125, 'AURC': 0.1458, 'Cov_5Risk': 0.5, 'Risk_80Cov': 0.5}
    """
    return MetricCollection(
        {"AURC": AURC(), "AUGRC": AUGRC(), "Cov_5Risk": CovAtRisk(0.05), "Risk_80Cov": RiskAtCov(0.8)}
    )


def ood_metrics() -> MetricCollection:
    """ "AUROC", "AUPR", "FPR95"; ``update(ood_scores (N,), is_ood (N,))``, higher score = more OOD.

    Example:
        >>> import torch
        >>> metrics = ood_metrics()
        >>> metrics.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> {name: round(value.item(), 4) for name, value in metrics.compute().items()}
        {'AUPR': 0.8333, 'AUROC': 0.75, 'FPR95': 0.5}
    """
    return MetricCollection({"AUROC": AUROC(), "AUPR": AUPR(), "FPR95": FPR95()})


def scod_metrics(ood_cost: float = 0.5) -> MetricCollection:
    """ "SCOD_AURC", "SCOD_AUGRC", "SCOD_Cov_5Risk", "SCOD_Risk_80Cov" on ID + OOD samples;
    ``update(uncertainty_scores (N,), misclassified (N,), is_ood (N,))``.

    An accepted OOD sample costs ``ood_cost``, an accepted misclassified ID sample
    ``1 - ood_cost`` (``misclassified`` is ignored where ``is_ood``); see
    :mod:`torch_deup.metrics.scod`. ``ood_cost=1.0`` is the definition behind TorchUncertainty
    0.13.0's tutorial tables.

    Example:
        >>> import torch
        >>> metrics = scod_metrics(ood_cost=0.5)
        >>> scores = torch.tensor([0.1, 0.2, 0.9])
        >>> metrics.update(scores, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> round(metrics.compute()["SCOD_Risk_80Cov"].item(), 4)
        0.3333
    """
    return MetricCollection(
        {
            "SCOD_AURC": SCODAURC(ood_cost=ood_cost),
            "SCOD_AUGRC": SCODAUGRC(ood_cost=ood_cost),
            "SCOD_Cov_5Risk": SCODCovAtRisk(0.05, ood_cost=ood_cost),
            "SCOD_Risk_80Cov": SCODRiskAtCov(0.8, ood_cost=ood_cost),
        }
    )


def format_metric(name: str, value: float | Tensor) -> str:
    """Text of a metric value as TorchUncertainty prints it; NaN prints as "nan".

    Example:
        >>> [format_metric("Acc", 0.9338), format_metric("Brier", 0.108123), format_metric("flops", 284.38e9)]
        ['93.380%', '0.10812', '284.38 G']
        >>> format_metric("params", 11_173_962)
        '11.17 M'
    """
    value = float(value)
    if math.isnan(value):
        return "nan"
    if name in PERCENT_METRICS:
        return f"{100 * value:.3f}%"
    if name in _COUNT_METRICS:
        for scale, prefix in _SI_PREFIXES:
            if abs(value) >= scale:
                return f"{value / scale:.2f} {prefix}"
        return f"{value:.0f}"
    return f"{value:.5f}"
