"""Model variance: under dropout (for models trained with dropout before their linear head), and
across the members of a deep ensemble.

MC dropout (Gal & Ghahramani, 2016) samples dropout masks at test time and reads the spread of the
predictions. Sampling costs one forward pass per mask. On the last layer it needs none: the head
computes ``z = W (e * m / q) + b`` with ``m ~ Bernoulli(q)``, ``q = 1 - p``, so the logits have mean
``W e + b`` and covariance ``(p / q) W diag(e**2) W^T`` in closed form, from the embedding that
:class:`~torch_deup.outputs.OutputCapture` already records. This is exact MC dropout for a model
whose only dropout sits before the head, and its last-layer part for one with dropout inside too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torch_deup.features.base import FeatureExtractor
from torch_deup.features.density import check_dimension, require_embedding
from torch_deup.outputs import ModelOutputs, class_probabilities, entropy, last_linear


def dropout_rate(model: nn.Module) -> float:
    """The rate of the last ``nn.Dropout`` registered in ``model`` (0 when there is none)."""
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    return rates[-1] if rates else 0.0


class DropoutVariance(FeatureExtractor):
    """Closed-form last-layer MC-dropout variance: two columns per sample.

    ``logit_variance``, the trace of the logits' covariance; ``prob_std``, the delta-method
    standard deviation of the top class probability, ``sqrt(grad^T Cov grad)`` with
    ``grad = p_top * (onehot_top - p)`` the gradient of the top probability in the logits.

    Args:
        head_weight: the ``(C, D)`` weight of the model's linear head.
        p: the dropout rate applied to the head's input, in ``(0, 1)``.

    Example:
        >>> head = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> out = ModelOutputs(torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]))
        >>> DropoutVariance(head.weight, p=0.5)(out)  # (p/q) * (1 + 1), and 0.5 * 0.5 * sqrt(2)
        tensor([[2.0000, 0.3536]])
    """

    needs_embedding = True

    def __init__(self, head_weight: Tensor, p: float) -> None:
        if not 0.0 < p < 1.0:
            raise ValueError(f"Expected the dropout rate `p` in (0, 1), but got {p}.")
        if head_weight.ndim != 2:
            raise ValueError(f"Expected a (C, D) head weight, but got shape {tuple(head_weight.shape)}.")
        weight = head_weight.detach().float().cpu().clone()
        # a single logit l is the binary model [0, l] (see class_logits)
        self.weight = torch.cat([torch.zeros_like(weight), weight]) if len(weight) == 1 else weight
        self.p = float(p)

    @classmethod
    def from_model(cls, model: nn.Module, p: float | None = None) -> DropoutVariance:
        """Read the head and, unless ``p`` is given, the model's own dropout rate."""
        rate = dropout_rate(model) if p is None else p
        if rate == 0.0:
            raise ValueError(
                f"{type(model).__name__} has no nn.Dropout with p > 0, so it has no dropout variance. "
                "Pass `p=` to perturb its head anyway, or leave DropoutVariance out."
            )
        return cls(last_linear(model).weight, rate)

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        embedding = require_embedding(outputs, self)
        check_dimension(embedding, self.weight.shape[1], self)
        weight = self.weight.to(embedding.device)
        scale = self.p / (1.0 - self.p)
        squared = embedding.float().pow(2)
        logit_variance = scale * squared @ weight.pow(2).sum(0)
        probs = class_probabilities(outputs.logits.float())
        top_prob, top = probs.max(1)
        grad = -top_prob[:, None] * probs
        grad[torch.arange(len(top)), top] += top_prob
        prob_variance = scale * ((grad @ weight).pow(2) * squared).sum(1)
        return torch.stack([logit_variance, prob_variance.sqrt()], dim=1)

    @property
    def names(self) -> list[str]:
        return ["logit_variance", "prob_std"]


class EnsembleDisagreement(FeatureExtractor):
    """How much the members of a :class:`~torch_deup.models.ensemble.DeepEnsemble` disagree: two
    columns per sample, read from ``ModelOutputs.members`` (recorded in the ensemble's forward).

    ``mutual_information``, the entropy of the mean prediction minus the mean of the members'
    entropies (the epistemic part of the predictive entropy, Depeweg et al. 2018); ``member_std``,
    the standard deviation across members of the probability of the ensemble's predicted class.

    Example:
        >>> members = torch.tensor([[[9.0, -9.0], [-9.0, 9.0]]])  # two confident members disagree
        >>> EnsembleDisagreement()(ModelOutputs(torch.zeros(1, 2), members=members)).round(decimals=3)
        tensor([[0.6930, 0.7070]])
    """

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        if outputs.members is None:
            raise ValueError(
                "EnsembleDisagreement reads each member's logits, but ModelOutputs.members is None. "
                "Wrap the members in torch_deup.models.DeepEnsemble and collect outputs with "
                "OutputCapture or collect_outputs, which record them."
            )
        if outputs.members.ndim != 3 or outputs.members.shape[1] < 2 or outputs.members.shape[2] < 2:
            raise ValueError(
                "Expected member logits of shape (N, M, C) with M >= 2 and C >= 2, but got "
                f"{tuple(outputs.members.shape)}."
            )
        probs = outputs.members.float().softmax(dim=2)
        mean = probs.mean(1)
        mutual_information = entropy(mean) - entropy(probs).mean(1)
        top = mean.argmax(1)
        top_probs = probs.gather(2, top[:, None, None].expand(-1, probs.shape[1], 1)).squeeze(2)
        return torch.stack([mutual_information.clamp_min(0.0), top_probs.std(1)], dim=1)

    @property
    def names(self) -> list[str]:
        return ["mutual_information", "member_std"]
