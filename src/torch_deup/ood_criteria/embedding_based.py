"""OOD criteria fitted on the training outputs: Mahalanobis, k-NN distance, GDA density, ViM on the
embedding; the Mahalanobis and the range distance of intermediate feature-map statistics.

Each wraps one feature extractor of :mod:`torch_deup.features`, so the math lives in one place.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.features.density import GaussianDensity
from torch_deup.features.distance import KNNDistance, MahalanobisDistance
from torch_deup.features.layers import LayerRange, LayerStatistics
from torch_deup.features.subspace import ViMScore
from torch_deup.ood_criteria.base import OODCriterion
from torch_deup.outputs import ModelOutputs


class FeatureCriterion(OODCriterion):
    """A criterion that is ``sign`` times the single column of a fitted feature extractor."""

    needs_fit = True
    #: +1 if the feature grows away from the training data, -1 if it shrinks
    sign: ClassVar[float] = 1.0

    @abstractmethod
    def make_extractor(self) -> FeatureExtractor:
        """A fresh, unfitted extractor built from the criterion's arguments."""

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> FeatureCriterion:
        """Fit the extractor on the training split's outputs (which must carry what it reads)."""
        self.extractor_ = self.make_extractor().fit(outputs.to("cpu"), targets.cpu())
        return self

    @property
    def fitted(self) -> bool:
        return getattr(self, "extractor_", None) is not None

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "extractor_")
        return {"extractor": self.extractor_.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        extractor = self.make_extractor()
        # the settings the state was fitted with (k, quantile, ...) must be this criterion's own
        differ = {
            key: (value, getattr(extractor, key))
            for key, value in state["extractor"].items()
            if not key.endswith("_") and key in vars(extractor) and not isinstance(value, Tensor)
            and value != getattr(extractor, key)
        }  # fmt: skip
        if differ:
            shown = ", ".join(f"{key}={saved!r} (this one: {own!r})" for key, (saved, own) in differ.items())
            raise ValueError(
                f"The state of {self.name} was fitted with {shown}. Build the criterion with the "
                "saved settings, or refit it."
            )
        extractor.load_state_dict(state["extractor"])
        self.extractor_ = extractor

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "extractor_")
        # the fitted state lives on the CPU: score there, answer on the caller's device
        device = outputs.logits.device
        return (self.sign * self.extractor_(outputs.to("cpu"))[:, 0]).to(device)


class MahalanobisCriterion(FeatureCriterion):
    """Squared Mahalanobis distance to the closest class mean, tied covariance (Lee et al. 2018).

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.zeros(100, 2), torch.randn(100, 4))
        >>> crit = MahalanobisCriterion().fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.zeros(3, 2), torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "Mahalanobis"

    def make_extractor(self) -> FeatureExtractor:
        return MahalanobisDistance()


class KNNCriterion(FeatureCriterion):
    """Distance to the ``k``-th nearest training embedding, cosine if ``normalize`` (Sun et al. 2022).

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.zeros(100, 2), torch.randn(100, 4))
        >>> crit = KNNCriterion(k=5).fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.zeros(3, 2), torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "KNN"

    def __init__(self, k: int = 50, normalize: bool = True) -> None:
        self.k = k
        self.normalize = normalize

    def make_extractor(self) -> FeatureExtractor:
        return KNNDistance(k=self.k, normalize=self.normalize)


class GDACriterion(FeatureCriterion):
    """Negative log density of the class-conditional Gaussian mixture on the embedding (DDU).

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.zeros(100, 2), torch.randn(100, 4))
        >>> crit = GDACriterion().fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.zeros(3, 2), torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "GDA"
    sign = -1.0

    def make_extractor(self) -> FeatureExtractor:
        return GaussianDensity()


class ViMCriterion(FeatureCriterion):
    """Virtual-logit Matching (Wang et al. 2022): residual off the principal subspace minus energy.

    Example:
        >>> import torch
        >>> z = torch.randn(100, 4)
        >>> train = ModelOutputs(z @ torch.randn(4, 2), z)
        >>> crit = ViMCriterion().fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.zeros(3, 2), torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "ViM"

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def make_extractor(self) -> FeatureExtractor:
        return ViMScore(dim=self.dim)


class LayerStatisticsCriterion(FeatureCriterion):
    """Mahalanobis distance of the intermediate feature maps' channel statistics to the training
    split's (:class:`~torch_deup.features.layers.LayerStatistics`).

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.zeros(100, 2), layer_stats=torch.randn(100, 4))
        >>> crit = LayerStatisticsCriterion().fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.zeros(3, 2), layer_stats=torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "LayerStats"
    needs_layer_stats = True

    def make_extractor(self) -> FeatureExtractor:
        return LayerStatistics()


class LayerRangeCriterion(FeatureCriterion):
    """How far the intermediate feature maps' channel statistics lie outside the training split's
    range (:class:`~torch_deup.features.layers.LayerRange`).

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.zeros(100, 2), layer_stats=torch.randn(100, 4))
        >>> crit = LayerRangeCriterion().fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.zeros(3, 2), layer_stats=torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "LayerRange"
    needs_layer_stats = True

    def make_extractor(self) -> FeatureExtractor:
        return LayerRange()


class LayerClassRangeCriterion(FeatureCriterion):
    """How far the intermediate feature maps' channel statistics lie outside the range of the
    training rows of the predicted class (``LayerRange(0.0, per_class=True)``, DEUP's layer
    distance).

    Example:
        >>> import torch
        >>> train = ModelOutputs(torch.randn(100, 2), layer_stats=torch.randn(100, 4))
        >>> crit = LayerClassRangeCriterion().fit(train, torch.arange(100) % 2)
        >>> crit(ModelOutputs(torch.randn(3, 2), layer_stats=torch.randn(3, 4))).shape
        torch.Size([3])
    """

    name = "LayerClassRange"
    needs_layer_stats = True

    def make_extractor(self) -> FeatureExtractor:
        return LayerRange(0.0, per_class=True)
