"""Deep ensembles (Lakshminarayanan et al., 2017): independently trained models averaged.

The ensemble predicts the mean of its members' class probabilities. Its forward returns the log of
that mean, so every consumer of logits (argmax, MSP, entropy, DEUP's output statistics) reads the
ensemble's prediction unchanged. :class:`~torch_deup.outputs.OutputCapture` records each member's
logits in the same pass, for the disagreement features of
:class:`~torch_deup.features.variance.EnsembleDisagreement`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


class DeepEnsemble(nn.Module):
    """Members with the same classes; ``forward`` returns ``log(mean_m softmax(member_m(x)))``.

    Train the members separately (different seeds), then wrap them: training the wrapper end to
    end would fit the mixture, not independent members.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> ensemble = DeepEnsemble([nn.Linear(4, 3), nn.Linear(4, 3)])
        >>> ensemble(torch.zeros(2, 4)).exp().sum(1).tolist()  # mean probabilities sum to one
        [1.0, 1.0]
    """

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        if len(self.members) < 2:
            raise ValueError(
                f"A DeepEnsemble needs at least 2 members, but got {len(self.members)}. "
                "Use the single model directly."
            )

    def forward(self, x: Tensor) -> Tensor:
        logits = [member(x) for member in self.members]
        shapes = {tuple(out.shape) for out in logits}
        if len(shapes) != 1 or logits[0].ndim != 2 or logits[0].shape[1] < 2:
            raise ValueError(
                f"Every member must return (N, C) logits with C >= 2 and the same C, but got shapes "
                f"{sorted(shapes)}."
            )
        return mixture_log_probs(torch.stack(logits, dim=1))


def mixture_log_probs(member_logits: Tensor) -> Tensor:
    """``log(mean_m softmax(logits_m))`` of ``(N, M, C)`` member logits: the ensemble's ``(N, C)``."""
    return torch.logsumexp(member_logits.log_softmax(dim=2), dim=1) - math.log(member_logits.shape[1])
