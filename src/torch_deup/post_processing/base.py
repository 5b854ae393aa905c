"""The contract of a post-hoc uncertainty estimator attached to a trained model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torch_deup.outputs import ModelOutputs, OutputCapture, evaluating, model_input, normalize_layers


def class_path(obj: object) -> str:
    """``"module:QualifiedName"`` of ``obj``'s class: how saved states name what to rebuild."""
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


class PostProcessing(ABC):
    """Fitted on held-out data after training; scores new inputs from the model's outputs.

    Subclasses implement :meth:`fit_outputs` and :meth:`score_outputs`; everything that runs the
    base model lives here, so an evaluation loop that already has the outputs never runs it again.
    """

    #: whether ``fit`` makes use of the training split's outputs (``train_loader``)
    uses_train_data: bool = False

    def __init__(self, model: nn.Module | None = None, layers: str | Sequence[str] | None = "auto") -> None:
        self.model = model
        #: the layers whose feature-map statistics the base model's outputs carry (OutputCapture)
        self.layers = layers

    @property
    def needs_layer_stats(self) -> bool:
        """Whether fitting or scoring reads ``ModelOutputs.layer_stats``: outputs carry the
        statistics of ``layers`` only then (an ImageNet ResNet's take more room than its embedding)."""
        return False

    @property
    def recorded_layers(self) -> str | list[str] | None:
        """The ``layers`` to record in the outputs this estimator reads: ``None`` when it reads none."""
        return normalize_layers(self.layers) if self.needs_layer_stats else None

    def set_model(self, model: nn.Module) -> None:
        """Attach the base model (the evaluation routine does this for you)."""
        self.model = model

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise ValueError(
                f"{type(self).__name__} has no base model. Pass `model=` at construction or call "
                "`set_model(model)` first."
            )
        return self.model

    @abstractmethod
    def fit(self, cal_loader: Iterable, train_loader: Iterable | None = None) -> PostProcessing:
        """Fit on a calibration loader of ``(inputs, targets)`` held out from training."""

    @abstractmethod
    def fit_outputs(
        self,
        cal_outputs: ModelOutputs,
        cal_targets: Tensor,
        train_outputs: ModelOutputs | None = None,
        train_targets: Tensor | None = None,
    ) -> PostProcessing:
        """Fit from model outputs that were already computed."""

    @abstractmethod
    def score_outputs(self, outputs: ModelOutputs) -> Tensor:
        """One uncertainty score per sample (higher = less trustworthy) from computed outputs."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool: ...

    def state_dict(self) -> dict[str, Any]:
        """The fitted state (not the base model), in tensors and plain values, for checkpoints.
        A post-processing that does not implement it is refitted after a checkpoint is loaded."""
        raise NotImplementedError(f"{type(self).__name__} does not implement state_dict().")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Become the fitted estimator :meth:`state_dict` describes."""
        raise NotImplementedError(f"{type(self).__name__} does not implement load_state_dict().")

    def model_outputs(self, x: Tensor) -> ModelOutputs:
        """One forward pass of the base model, logits and embedding captured together."""
        model = self._require_model()
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__} scores a batch of inputs, a Tensor, but got a {type(x).__name__}. "
                "For a DataLoader, score each batch, or collect the outputs once "
                "(torch_deup.outputs.collect_outputs) and call score_outputs."
            )
        # on the device the fit collected its outputs on, so scores see the same arithmetic
        with torch.no_grad(), evaluating(model, getattr(self, "device", None)):
            return OutputCapture(model, self.recorded_layers)(model_input(model, x))

    def __call__(self, x: Tensor) -> Tensor:
        """Uncertainty scores for raw inputs: one forward pass of the base model, then the scorer."""
        return self.score_outputs(self.model_outputs(x))
