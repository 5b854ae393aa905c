"""OOD criteria read from the logits alone: MSP, max logit, energy and predictive entropy.

A single logit ``(N, 1)`` is read as a binary classifier ``p(y=1) = sigmoid(l)``: it becomes the
two class logits ``[0, l]``, whose softmax is exactly ``[1 - sigmoid(l), sigmoid(l)]``. So MSP
and entropy are those of the Bernoulli, energy is ``-log(1 + e^l)``, max logit is ``-max(0, l)``.

A :class:`~torch_deup.models.ensemble.DeepEnsemble`'s logits are the log of its mean probabilities,
whose log-sum-exp is 0 for every input: max logit and energy, which read the scale of the logits,
are the mean of each member's score instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_deup.features.variance import EnsembleDisagreement
from torch_deup.ood_criteria.base import OODCriterion
from torch_deup.outputs import ModelOutputs, class_logits, entropy, member_mean


class MaxSoftmaxCriterion(OODCriterion):
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017).

    Example:
        >>> MaxSoftmaxCriterion()(ModelOutputs(torch.tensor([[0.0, 0.0], [9.0, 0.0]])))
        tensor([-0.5000, -0.9999])
    """

    name = "MSP"

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return -class_logits(outputs.logits).softmax(dim=1).max(dim=1).values


class MaxLogitCriterion(OODCriterion):
    """Negative maximum logit (Hendrycks et al. 2022); for an ensemble, its members' mean.

    Example:
        >>> MaxLogitCriterion()(ModelOutputs(torch.tensor([[1.0, 3.0]])))
        tensor([-3.])
    """

    name = "MaxLogit"

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return member_mean(outputs, lambda logits: -logits.max(dim=1).values)


class EnergyCriterion(OODCriterion):
    """Free energy ``-T logsumexp(logits / T)`` (Liu et al. 2020); for an ensemble, its members'
    mean.

    Example:
        >>> EnergyCriterion()(ModelOutputs(torch.tensor([[0.0, 0.0]])))
        tensor([-0.6931])
    """

    name = "Energy"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        if not self.temperature > 0:
            raise ValueError(f"Expected argument `temperature` to be positive, but got {self.temperature!r}.")
        t = self.temperature
        return member_mean(outputs, lambda logits: -t * torch.logsumexp(logits / t, dim=1))


class EntropyCriterion(OODCriterion):
    """Entropy of the predictive distribution, in nats.

    Example:
        >>> EntropyCriterion()(ModelOutputs(torch.tensor([[0.0, 0.0]])))
        tensor([0.6931])
    """

    name = "Entropy"

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return entropy(class_logits(outputs.logits).softmax(dim=1))


class MutualInformationCriterion(OODCriterion):
    """Mutual information between the prediction and the member of a deep ensemble, in nats:
    the entropy of the mean prediction minus the members' mean entropy (needs ``outputs.members``).

    Example:
        >>> members = torch.tensor([[[9.0, -9.0], [-9.0, 9.0]]])
        >>> MutualInformationCriterion()(ModelOutputs(torch.zeros(1, 2), members=members)).round(decimals=3)
        tensor([0.6930])
    """

    name = "MutualInformation"

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return EnsembleDisagreement()(outputs)[:, 0]
