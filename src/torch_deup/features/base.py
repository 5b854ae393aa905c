"""The contract of everything that turns model outputs into features or scores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_deup.outputs import ModelOutputs


class NotFittedError(RuntimeError):
    """Raised when an estimator is used before ``fit``."""


def check_is_fitted(estimator: Any, attribute: str) -> None:
    if getattr(estimator, attribute, None) is None:
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. "
            "Call 'fit' with appropriate arguments before using this estimator."
        )


def as_columns(values: Tensor) -> Tensor:
    """``values`` as ``(N, k)``: one column for ``(N,)``, the trailing dimensions flattened otherwise
    (``flatten(1)``, not ``reshape(N, -1)``, which cannot infer the width of zero rows)."""
    return values.flatten(1) if values.ndim > 1 else values[:, None]


def feature_matrix(features: Sequence[FeatureExtractor], outputs: ModelOutputs) -> Tensor:
    """The ``(N, total width)`` float matrix of every extractor's columns, side by side."""
    return torch.cat([as_columns(f(outputs).float()) for f in features], dim=1)


class FeatureExtractor(ABC):
    """Maps :class:`ModelOutputs` to a ``(N, k)`` float feature matrix.

    Extractors that need the training split (densities, distances) implement ``fit`` on the
    outputs of the training data; ``fit`` returns ``self``, learned state ends in ``_``, and
    calling an unfitted extractor raises :class:`NotFittedError`. ``state_dict`` /
    ``load_state_dict`` carry the fitted state for saving.
    """

    #: whether ``fit`` must run on training outputs before ``__call__``
    needs_fit: bool = False
    #: whether the extractor reads ``ModelOutputs.embedding``
    needs_embedding: bool = False
    #: whether the extractor reads ``ModelOutputs.layer_stats``
    needs_layer_stats: bool = False
    #: +1 if larger values mean farther from the training data (a distance), -1 if smaller do
    #: (a density), 0 if neither; DEUP makes its error predictor monotone in such columns
    ood_direction: int = 0

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> FeatureExtractor:
        return self

    @abstractmethod
    def __call__(self, outputs: ModelOutputs) -> Tensor: ...

    @property
    def names(self) -> list[str]:
        """One name per feature: a column, or a block of columns whose width depends on the outputs
        (the logits, the embedding)."""
        return [type(self).__name__]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
