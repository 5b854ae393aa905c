"""Top-label calibration: the adaptive (equal-mass) ECE, and the builders of ECE and MCE.

All calibration metrics read the top-label confidence ``max_c p_c`` and whether the argmax is the
target. ECE and MCE are torchmetrics' ``MulticlassCalibrationError`` with 15 equal-width bins
(``norm="l1"``: bin-weighted mean gap; ``norm="max"``: largest gap), as in TorchUncertainty.
torchmetrics' bins are ``[k/15, (k+1)/15)`` and a confidence of exactly 1 forms a bin of its own.

The adaptive ECE (Nixon et al., 2019) sorts the samples by confidence and cuts them into
``n_bins`` bins of equal count (sizes differ by at most one, larger bins first, as
``torch.tensor_split``), then takes the count-weighted mean of ``|accuracy - confidence|``. The
sort is stable, so equal confidences that straddle a cut are split in the order they came.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError

from torch_deup.metrics._checks import cat_state, check_probs_targets, nan_with_warning

N_BINS = 15


def expected_calibration_error(num_classes: int, n_bins: int = N_BINS) -> MulticlassCalibrationError:
    """ECE metric: torchmetrics' ``MulticlassCalibrationError(norm="l1")``; functional twin
    ``torchmetrics.functional.classification.multiclass_calibration_error``.

    Example:
        >>> metric = expected_calibration_error(num_classes=2)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        >>> metric.compute()
        tensor(0.4000)
    """
    return MulticlassCalibrationError(num_classes, n_bins=n_bins, norm="l1")


def maximum_calibration_error(num_classes: int, n_bins: int = N_BINS) -> MulticlassCalibrationError:
    """MCE metric: torchmetrics' ``MulticlassCalibrationError(norm="max")``.

    Example:
        >>> metric = maximum_calibration_error(num_classes=2)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        >>> metric.compute()
        tensor(0.7000)
    """
    return MulticlassCalibrationError(num_classes, n_bins=n_bins, norm="max")


def top_label(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(confidence, correct)``: the top probability and 1.0 where the argmax is the target.

    Example:
        >>> top_label(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        (tensor([0.9000, 0.7000]), tensor([1., 0.]))
    """
    check_probs_targets(probs, targets)
    confidence, predicted = probs.max(dim=1)
    return confidence, (predicted == targets).to(confidence.dtype)


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"Expected argument `n_bins` to be an integer larger than 0, but got {n_bins!r}.")


def _adaptive_ece_compute(confidence: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    if confidence.numel() == 0:
        return nan_with_warning(
            "aECE is undefined without samples; returning NaN. Call `update` with at least one "
            "sample before `compute`.",
            confidence.device,
        )
    order = torch.argsort(confidence, stable=True)
    gaps = [
        (conf_bin.double().sum() - acc_bin.double().sum()).abs()
        for conf_bin, acc_bin in zip(
            confidence[order].tensor_split(n_bins), correct[order].tensor_split(n_bins), strict=True
        )
    ]
    # each bin weighs |bin| / N, so sum_b |bin|/N * |mean gap| = sum_b |summed gap| / N
    return (torch.stack(gaps).sum() / confidence.numel()).float()


def adaptive_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = N_BINS) -> Tensor:
    """Equal-mass-bin ECE of the top-label confidence.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
        >>> adaptive_calibration_error(probs, torch.tensor([0, 1, 1, 0]), n_bins=2)
        tensor(0.2500)
    """
    _check_n_bins(n_bins)
    return _adaptive_ece_compute(*top_label(probs, targets), n_bins)


class TopLabelMetric(Metric):
    """Base of the calibration metrics that keep each sample's top-label confidence and
    correctness; subclasses compute from :meth:`_state`."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    confidence: list[Tensor]
    correct: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("confidence", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, targets: Tensor) -> None:
        """Add a batch: ``probs`` (N, C) softmax outputs, ``targets`` (N,) class indices."""
        confidence, correct = top_label(probs, targets)
        self.confidence.append(confidence)
        self.correct.append(correct)

    def _state(self) -> tuple[Tensor, Tensor]:
        return cat_state(self.confidence, self.device), cat_state(self.correct, self.device)


class AdaptiveCalibrationError(TopLabelMetric):
    """Adaptive (equal-mass) ECE; ``update(probs, targets)``.

    Example:
        >>> metric = AdaptiveCalibrationError(n_bins=2)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.4, 0.6], [0.3, 0.7]]), torch.tensor([1, 0]))
        >>> metric.compute()
        tensor(0.2500)
    """

    def __init__(self, n_bins: int = N_BINS, **kwargs: Any) -> None:
        _check_n_bins(n_bins)
        super().__init__(**kwargs)
        self.n_bins = n_bins

    def compute(self) -> Tensor:
        return _adaptive_ece_compute(*self._state(), self.n_bins)
