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

from torch import Tensor

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.features.density import (
    check_dimension,
    check_finite,
    cholesky_with_jitter,
    squared_mahalanobis,
)
from torch_deup.outputs import ModelOutputs


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
        stats = require_layer_stats(outputs, self).double()
        check_finite(stats, "layer statistics")
        if len(stats) < 2:
            raise ValueError(f"LayerStatistics needs at least 2 training rows, but got {len(stats)}.")
        self.mean_ = stats.mean(0)
        centred = stats - self.mean_
        self.cholesky_, self.jitter_ = cholesky_with_jitter(centred.T @ centred / (len(stats) - 1))
        return self

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "mean_")
        stats = require_layer_stats(outputs, self).double()
        check_dimension(stats, len(self.mean_), self, "layer statistics")
        return squared_mahalanobis(stats, self.mean_, self.cholesky_)[:, None].float()

    @property
    def names(self) -> list[str]:
        return ["layer_mahalanobis"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "mean_")
        return {"mean_": self.mean_, "cholesky_": self.cholesky_, "jitter_": self.jitter_}
