"""What a model produced for a batch, and the contract of everything that turns it into features.

Every score in the library (OOD criteria, DEUP's feature extractors) reads a :class:`ModelOutputs`,
so an evaluation loop runs the base model once per batch and every consumer shares that pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


class NotFittedError(RuntimeError):
    """Raised when an estimator is used before ``fit``."""


def check_is_fitted(estimator: Any, attribute: str) -> None:
    if getattr(estimator, attribute, None) is None:
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. "
            "Call 'fit' with appropriate arguments before using this estimator."
        )


@dataclass
class ModelOutputs:
    """Logits ``(N, C)`` (or regression outputs) and the penultimate embedding ``(N, D)``.

    ``embedding`` is the input of the model's last ``nn.Linear``; ``None`` when not captured.
    """

    logits: Tensor
    embedding: Tensor | None = None

    def detach(self) -> ModelOutputs:
        emb = None if self.embedding is None else self.embedding.detach()
        return ModelOutputs(self.logits.detach(), emb)

    def to(self, device: Any) -> ModelOutputs:
        emb = None if self.embedding is None else self.embedding.to(device)
        return ModelOutputs(self.logits.to(device), emb)


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model``: its input is the penultimate embedding."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so its penultimate embedding cannot be "
            "captured. Use output-statistic features only, or give the model a linear head."
        )
    return linears[-1]


class OutputCapture:
    """Runs a model and returns :class:`ModelOutputs`, the embedding taken by a forward hook.

    The hook reads the input of the last linear layer during the normal forward, so capturing the
    embedding costs no second pass.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> out = OutputCapture(model)(torch.zeros(2, 4))
        >>> out.logits.shape, out.embedding.shape
        (torch.Size([2, 3]), torch.Size([2, 8]))
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.head = last_linear(model)
        self._embedding: Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._embedding = args[0].flatten(1)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handle = self.head.register_forward_pre_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()

    def __call__(self, x: Tensor) -> ModelOutputs:
        self._embedding = None
        with self.hooked():
            logits = self.model(x)
        embedding, self._embedding = self._embedding, None
        return ModelOutputs(logits, embedding)


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

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> FeatureExtractor:
        return self

    @abstractmethod
    def __call__(self, outputs: ModelOutputs) -> Tensor: ...

    @property
    def names(self) -> list[str]:
        """One name per feature column."""
        return [type(self).__name__]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
