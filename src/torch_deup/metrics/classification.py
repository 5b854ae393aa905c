"""Per-sample averages of a probabilistic classifier: Brier score, predictive entropy, NLL.

Each takes ``update(probs, targets)`` with ``probs`` of shape ``(N, C)`` (softmax outputs, rows
on the simplex) and ``targets`` of shape ``(N,)``, keeps a running sum and count ("sum" states)
and returns their ratio. Accuracy is torchmetrics' ``MulticlassAccuracy(average="micro")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from torch_deup.metrics._checks import check_probs_targets, nan_with_warning

PerSample = Callable[[Tensor, Tensor], Tensor]


def _brier_per_sample(probs: Tensor, targets: Tensor) -> Tensor:
    onehot = F.one_hot(targets, probs.shape[1]).to(probs.dtype)
    return (probs - onehot).square().sum(dim=1)


def _entropy_per_sample(probs: Tensor, targets: Tensor) -> Tensor:
    # entr(p) = -p log p with entr(0) = 0: a class with zero probability adds nothing
    return torch.special.entr(probs).sum(dim=1)


def _nll_per_sample(probs: Tensor, targets: Tensor) -> Tensor:
    # A float32 softmax underflows to exactly 0 once a logit gap passes ~104; clamping at the
    # smallest normal number charges such a sample -log(tiny) (87.3 in float32) instead of inf.
    # Half precision first goes to float32: its smallest normal number (6e-5) would cap the loss
    # at 9.7 nats for probabilities it still holds (down to 6e-8).
    true_class = probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    true_class = true_class.to(torch.promote_types(true_class.dtype, torch.float32))
    return -true_class.clamp(min=torch.finfo(true_class.dtype).tiny).log()


def _unused_targets(probs: Tensor) -> Tensor:
    """Valid class indices for the entropy, which does not read them."""
    return torch.zeros(probs.shape[:1], dtype=torch.long, device=probs.device)


def _sample_mean_update(per_sample: PerSample, probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    check_probs_targets(probs, targets)
    values = per_sample(probs, targets.long())  # one_hot and gather index with int64 only
    return values.sum(dtype=torch.float64), torch.tensor(values.numel(), device=probs.device)


def _sample_mean_compute(total: Tensor, count: Tensor, name: str) -> Tensor:
    if count == 0:
        return nan_with_warning(
            f"{name} is undefined without samples; returning NaN. Call `update` with at least one "
            "sample before `compute`.",
            total.device,
        )
    return (total / count).float()


def brier_score(probs: Tensor, targets: Tensor) -> Tensor:
    """Multiclass Brier score: mean over samples of ``sum_c (p_c - onehot_c)^2`` (range [0, 2]).

    Example:
        >>> brier_score(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 0]))
        tensor(0.4000)
    """
    return _sample_mean_compute(*_sample_mean_update(_brier_per_sample, probs, targets), "Brier")


def predictive_entropy(probs: Tensor, targets: Tensor | None = None) -> Tensor:
    """Mean entropy ``-sum_c p_c log p_c`` of the predictive distributions, in nats.

    ``targets`` is accepted so the metric updates like the others, and is not used.

    Example:
        >>> predictive_entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        tensor(0.3466)
    """
    update = _sample_mean_update(_entropy_per_sample, probs, _unused_targets(probs))
    return _sample_mean_compute(*update, "Entropy")


def categorical_nll(probs: Tensor, targets: Tensor) -> Tensor:
    """Mean ``-log p_target`` from probabilities, with ``p`` clamped at ``torch.finfo(dtype).tiny``.

    Example:
        >>> categorical_nll(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))
        tensor(0.4904)
    """
    return _sample_mean_compute(*_sample_mean_update(_nll_per_sample, probs, targets), "NLL")


class _SampleMean(Metric):
    """Running mean of a per-sample quantity of ``(probs, targets)``, with "sum" states.

    The states are named after the metric ("Brier_total", ...): a ``MetricCollection`` merges
    metrics whose states have the same names and values after the first batch, and the totals of
    Brier, Entropy and NLL coincide (all 0) on a batch of correct one-hot predictions.
    """

    is_differentiable = True
    higher_is_better: bool | None = False
    full_state_update = False
    _per_sample: PerSample
    _name: str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._total, self._count = f"{self._name}_total", f"{self._name}_count"
        self.add_state(self._total, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(self._count, default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, probs: Tensor, targets: Tensor) -> None:
        """Add a batch: ``probs`` (N, C) softmax outputs, ``targets`` (N,) class indices."""
        total, count = _sample_mean_update(type(self)._per_sample, probs, targets)
        setattr(self, self._total, getattr(self, self._total) + total)
        setattr(self, self._count, getattr(self, self._count) + count)

    def compute(self) -> Tensor:
        return _sample_mean_compute(getattr(self, self._total), getattr(self, self._count), self._name)


class BrierScore(_SampleMean):
    """Multiclass Brier score; ``update(probs, targets)``.

    Example:
        >>> metric = BrierScore()
        >>> metric.update(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 0]))
        >>> metric.compute()
        tensor(0.4000)
    """

    _per_sample = staticmethod(_brier_per_sample)
    _name = "Brier"


class Entropy(_SampleMean):
    """Mean predictive entropy in nats; ``update(probs, targets=None)`` (targets unused).

    Example:
        >>> metric = Entropy()
        >>> metric.update(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        >>> metric.compute()
        tensor(0.3466)
    """

    higher_is_better = None
    _per_sample = staticmethod(_entropy_per_sample)
    _name = "Entropy"

    def update(self, probs: Tensor, targets: Tensor | None = None) -> None:
        """Add a batch of ``probs`` (N, C); ``targets`` is accepted and ignored."""
        super().update(probs, _unused_targets(probs))


class CategoricalNLL(_SampleMean):
    """Mean negative log-likelihood of the targets; ``update(probs, targets)``.

    Example:
        >>> metric = CategoricalNLL()
        >>> metric.update(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))
        >>> metric.compute()
        tensor(0.4904)
    """

    _per_sample = staticmethod(_nll_per_sample)
    _name = "NLL"
