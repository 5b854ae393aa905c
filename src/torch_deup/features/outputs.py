"""Features read straight from the model's outputs: confidence statistics and the embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torch_deup.features.base import FeatureExtractor
from torch_deup.features.density import require_embedding
from torch_deup.outputs import ModelOutputs, class_logits, class_probabilities


class OutputStatistics(FeatureExtractor):
    """Confidence statistics of the logits: max logit, max probability, normalised entropy,
    energy (logsumexp) and top-2 probability margin; optionally the raw logits.

    The five statistics do not depend on the number of classes' order, and the entropy is
    divided by ``log C``, so a head refitted on fewer classes yields comparable columns.

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
        log_probs = probs.clamp_min(1e-12).log()
        entropy = -(probs * log_probs).sum(1) / math.log(probs.shape[1])
        binary_logits = class_logits(logits)
        columns = [
            binary_logits.max(1).values,
            top2[:, 0],
            entropy,
            torch.logsumexp(binary_logits, 1),
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
        return outputs.logits.float().flatten(1)

    @property
    def names(self) -> list[str]:
        return ["prediction"]


class Embedding(FeatureExtractor):
    """The penultimate embedding (input of the last linear layer), captured by a forward hook."""

    needs_embedding = True

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return require_embedding(outputs, self).float()
