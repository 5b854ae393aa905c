"""How unusual an input's intermediate feature maps are: the low-level view of OOD.

The penultimate embedding sees what the model has learned to tell classes apart by; an input
unlike the training images in colour, texture or noise can still land inside its range. The
statistics of earlier feature maps (each channel's mean and standard deviation, recorded by
:class:`~torch_deup.outputs.OutputCapture` in the same forward pass) see those differences and
hardly depend on whether the model is right: on the validation halves of
``benchmarks/select_deup.py`` (ResNet-20, CIFAR-10) their distance separates noise, pixel-shuffled,
low-resolution and zoomed-in images with AUROC 99.5-100 (ViM: 95.5-99.6), while its
misclassification AUROC is 52 (chance is 50).
Multi-layer Mahalanobis detectors (Lee et al., NeurIPS 2018) and feature-statistics detectors
(Sastry and Oore, ICML 2020) use the same signal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.features.density import (
    check_dimension,
    check_finite,
    cholesky_with_jitter,
    squared_mahalanobis,
)
from torch_deup.outputs import ModelOutputs, class_logits


def require_layer_stats(outputs: ModelOutputs, estimator: object) -> Tensor:
    """``outputs.layer_stats``, or a ValueError saying how to record them."""
    if outputs.layer_stats is None:
        raise ValueError(
            f"{type(estimator).__name__} reads intermediate feature-map statistics, but "
            "ModelOutputs.layer_stats is None. Collect outputs with torch_deup.outputs.OutputCapture "
            "or collect_outputs. Where `layers='auto'` finds no stages (torch_deup.outputs.auto_layers "
            "says which), name the blocks in `layers=` (of OutputCapture, collect_outputs, DEUP or "
            "ClassificationRoutine)."
        )
    return outputs.layer_stats


def training_layer_stats(outputs: ModelOutputs, estimator: object) -> Tensor:
    """The training rows' layer statistics in float64, detached, after checking there are at least
    2 and all finite."""
    stats = require_layer_stats(outputs, estimator).detach().double()
    check_finite(stats, "layer statistics")
    if len(stats) < 2:
        raise ValueError(f"{type(estimator).__name__} needs at least 2 training rows, but got {len(stats)}.")
    return stats


def query_layer_stats(outputs: ModelOutputs, estimator: object, dim: int) -> Tensor:
    """An input's layer statistics in float64, after checking their width against the fit's."""
    stats = require_layer_stats(outputs, estimator).double()
    check_dimension(stats, dim, estimator, "layer statistics")
    return stats


class LayerStatistics(FeatureExtractor):
    """Squared Mahalanobis distance of an input's layer statistics to those of the training split.

    One Gaussian for all classes (low-level statistics do not follow the classes): the mean and the
    unbiased covariance of the training rows, with the smallest diagonal jitter that lets the
    Cholesky factorisation succeed (:func:`~torch_deup.features.density.cholesky_with_jitter`).
    The column is ``(s - mu)^T Sigma^-1 (s - mu)``, larger farther from the training data.
    Computed in float64; the column is float32.

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.zeros(100, 2), layer_stats=torch.randn(100, 4))
        >>> layer = LayerStatistics().fit(train, torch.zeros(100, dtype=torch.long))
        >>> layer(ModelOutputs(torch.zeros(3, 2), layer_stats=torch.zeros(3, 4))).shape
        torch.Size([3, 1])
    """

    needs_fit = True
    needs_layer_stats = True
    ood_direction = 1

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> LayerStatistics:
        stats = training_layer_stats(outputs, self)
        self.mean_ = stats.mean(0)
        centred = stats - self.mean_
        self.cholesky_, self.jitter_ = cholesky_with_jitter(centred.T @ centred / (len(stats) - 1))
        return self

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "mean_")
        stats = query_layer_stats(outputs, self, len(self.mean_))
        return squared_mahalanobis(stats, self.mean_, self.cholesky_)[:, None].float()

    @property
    def names(self) -> list[str]:
        return ["layer_mahalanobis"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "mean_")
        return {"mean_": self.mean_, "cholesky_": self.cholesky_, "jitter_": self.jitter_}


class LayerRange(FeatureExtractor):
    """How far an input's layer statistics lie outside the training split's range: over every
    statistic, its distance beyond the ``[q, 1 - q]`` quantiles of the training rows, in training
    standard deviations, summed. ``0`` inside the range on every statistic.

    Unlike :class:`LayerStatistics`, most in-distribution inputs score exactly 0, so evidence read
    from this score leaves their ranking alone, while an input unusual on several statistics scores
    on each. With ``per_class=True`` the range is that of the training rows of the class the model
    predicts for the input (classes with fewer than 2 training rows fall back to every row's range;
    the scale stays every row's standard deviation): an image of one class whose low-level
    statistics look like no training image of that class scores, even when they look like another
    class's. As DEUP's layer evidence the class-conditional range (``q = 0``, the training rows'
    minimum and maximum per class) beat the range over all classes and the Mahalanobis distance on
    the proxy of ``benchmarks/select_deup.py`` (see :mod:`~torch_deup.post_processing.ood_gate`);
    alone it is the weaker detector.

    Args:
        quantile: ``q`` in [0, 0.5): the share of training rows below (and above) each statistic's
            range; ``0`` takes the training minimum and maximum.
        per_class: one range per class (by the training targets), read at the predicted class.

    Example:
        >>> import torch
        >>> stats = torch.arange(100.0)[:, None].repeat(1, 2)
        >>> layer = LayerRange(quantile=0.0).fit(ModelOutputs(torch.zeros(100, 2), layer_stats=stats), None)
        >>> inside, beyond = torch.tensor([[50.0, 50.0]]), torch.tensor([[50.0, 99.0 + 29.0]])  # std 29.01
        >>> layer(ModelOutputs(torch.zeros(2, 2), layer_stats=torch.cat([inside, beyond]))).flatten()
        tensor([0.0000, 0.9996])
    """

    needs_fit = True
    needs_layer_stats = True
    ood_direction = 1
    per_class = False  # what an extractor saved before the option existed was

    def __init__(self, quantile: float = 0.002, per_class: bool = False) -> None:
        if isinstance(quantile, bool) or not isinstance(quantile, int | float) or not 0.0 <= quantile < 0.5:
            raise ValueError(f"Expected `quantile` in [0, 0.5), but got {quantile!r}.")
        if not isinstance(per_class, bool):
            raise ValueError(f"Expected `per_class` to be True or False, but got {per_class!r}.")
        self.quantile = quantile
        self.per_class = per_class

    def fit(self, outputs: ModelOutputs, targets: Tensor | None) -> LayerRange:
        stats = training_layer_stats(outputs, self)
        values = stats.cpu().numpy()
        bounds = self._bounds(values)
        if self.per_class:
            num_classes = class_logits(outputs.logits[:1]).shape[1]
            labels = class_targets(targets, len(outputs), num_classes, self).cpu().numpy()
            bounds = np.stack(
                [
                    self._bounds(values[labels == c]) if (labels == c).sum() >= 2 else bounds
                    for c in range(num_classes)
                ],
                axis=1,
            )
        self.low_, self.high_ = (torch.from_numpy(bound).to(stats.device) for bound in bounds)
        # a constant statistic has no spread of its own: a floor relative to its size keeps float
        # rounding (a last-bit difference between devices) from counting as a far departure
        self.scale_ = torch.maximum(stats.std(0), 1e-6 * stats.abs().mean(0)).clamp_min(1e-12)
        return self

    def _bounds(self, stats: np.ndarray) -> np.ndarray:
        """``(2, S)``: the ``q`` and ``1 - q`` quantiles of each column (numpy's: torch.quantile
        refuses inputs of more than 2**24 values)."""
        return np.quantile(stats, [self.quantile, 1.0 - self.quantile], axis=0)

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "low_")
        stats = query_layer_stats(outputs, self, self.low_.shape[-1])
        low, high = self.low_, self.high_
        if self.per_class:
            logits = class_logits(outputs.logits)
            if logits.shape[1] != len(low):
                raise ValueError(
                    f"{type(self).__name__} was fitted on a model of {len(low)} classes, but these "
                    f"logits hold {logits.shape[1]}. Score the outputs of the model it was fitted on."
                )
            predicted = logits.argmax(1).to(low.device)
            low, high = low[predicted], high[predicted]
        beyond = torch.relu(low - stats) + torch.relu(stats - high)
        return (beyond / self.scale_).sum(1, keepdim=True).float()

    @property
    def names(self) -> list[str]:
        return ["layer_class_range" if self.per_class else "layer_range"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "low_")
        return {
            "quantile": self.quantile,
            "per_class": self.per_class,
            "low_": self.low_,
            "high_": self.high_,
            "scale_": self.scale_,
        }


def class_targets(targets: Tensor | None, num_rows: int, num_classes: int, estimator: object) -> Tensor:
    """The training rows' class indices, checked against the rows and the model's classes."""
    if targets is None:
        raise ValueError(
            f"{type(estimator).__name__} with per_class=True needs the training rows' class indices: "
            "pass `targets` to fit."
        )
    if targets.ndim != 1 or len(targets) != num_rows or targets.is_floating_point():
        raise ValueError(
            f"Expected `targets` of shape ({num_rows},) holding integer class indices, but got "
            f"{targets.dtype} of shape {tuple(targets.shape)}."
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"Expected class indices in [0, {num_classes}) (the model's classes), but `targets` "
            f"holds values in [{int(targets.min())}, {int(targets.max())}]."
        )
    return targets.long()
