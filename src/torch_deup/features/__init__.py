"""Feature extractors: what DEUP's error predictor and the OOD criteria read from model outputs."""

from torch_deup.features.base import FeatureExtractor, NotFittedError, check_is_fitted
from torch_deup.features.layers import LayerRange, LayerStatistics
from torch_deup.features.outputs import Embedding, OutputStatistics, RegressionOutputs
from torch_deup.features.subspace import ViMScore
from torch_deup.features.variance import DropoutVariance, EnsembleDisagreement

__all__ = [
    "DropoutVariance",
    "Embedding",
    "EnsembleDisagreement",
    "FeatureExtractor",
    "LayerRange",
    "LayerStatistics",
    "NotFittedError",
    "OutputStatistics",
    "RegressionOutputs",
    "ViMScore",
    "check_is_fitted",
]
