"""Features read straight from the model's outputs: confidence statistics and the embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torch_deup.features.base import FeatureExtractor, as_columns
from torch_deup.features.density import require_embedding
from torch_deup.outputs import ModelOutputs, class_probabilities, entropy, member_mean


class OutputStatistics(FeatureExtractor):
    """Confidence statistics of the logits: max logit, max probability, normalised entropy,
    energy (logsumexp) and top-2 probability margin; optionally the raw logits.

    The five statistics do not depend on the order of the classes, and the entropy is divided by
    ``log C``. For a :class:`~torch_deup.models.ensemble.DeepEnsemble`, whose logits are the log of
    the mean probabilities (their logsumexp is 0, their max is the log of the max probability),
    max logit and energy are the members' means, as for the criteria of those names.

    Example:
        >>> out = ModelOutputs(torch.tensor([[2.0, 0.0, 0.0]]))
        >>> OutputStatistics()(out).shape
        torch.Size([1, 5])
    """

    def __init__(self, include_logits: bool = False) -> None:
        self.include_logits = include_logits

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        logits = outputs.logits.float()
        probs = class_probabilities(logits)
        top2 = probs.topk(2, dim=1).values
        normalised_entropy = entropy(probs) / math.log(probs.shape[1])
        columns = [
            member_mean(outputs, lambda member_logits: member_logits.max(1).values),
            top2[:, 0],
            normalised_entropy,
            member_mean(outputs, lambda member_logits: torch.logsumexp(member_logits, 1)),
            top2[:, 0] - top2[:, 1],
        ]
        stats = torch.stack(columns, dim=1)
        return torch.cat([stats, logits], dim=1) if self.include_logits else stats

    @property
    def names(self) -> list[str]:
        base = ["max_logit", "max_prob", "entropy", "energy", "margin"]
        return [*base, "logits"] if self.include_logits else base


class RegressionOutputs(FeatureExtractor):
    """The regression model's predictions, as they are."""

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return as_columns(outputs.logits.float())  # (N,) from a one-output model: one column

    @property
    def names(self) -> list[str]:
        return ["prediction"]


class Embedding(FeatureExtractor):
    """The penultimate embedding (input of the last linear layer), captured by a forward hook."""

    needs_embedding = True

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return require_embedding(outputs, self).float()
