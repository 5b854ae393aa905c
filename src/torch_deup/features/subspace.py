"""ViM, Virtual-logit Matching (Wang et al., CVPR 2022): the embedding's residual off its principal
subspace, matched in scale to the logits.

ViM needs the linear head (``W``, ``b``): its origin is ``u = -pinv(W) b``, the point the head maps
to zero logits. Features here read cached outputs, never the model, so the head is recovered from
the training outputs themselves: logits are an affine function of the embedding the hook records,
and a least-squares fit on thousands of rows returns ``W`` and ``b`` to rounding error.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.features.density import check_dimension, check_finite, require_embedding
from torch_deup.outputs import ModelOutputs, class_logits

#: relative residual above which logits are not an affine function of the embedding; bf16 autocast
#: rounds the head's output to about 2e-3 (measured 1.6e-3), a squared or log-softmaxed head is far
#: above
AFFINE_TOLERANCE = 1e-2


def recover_linear_head(embedding: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(W, b)`` with ``logits = embedding @ W.T + b``, by least squares in float64.

    Example:
        >>> e = torch.randn(50, 3, dtype=torch.float64)
        >>> w, b = recover_linear_head(e, e @ torch.ones(3, 2, dtype=torch.float64) + 1.0)
        >>> w.round(decimals=6).tolist(), b.round(decimals=6).tolist()
        ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [1.0, 1.0])
    """
    design = torch.cat([embedding.double(), torch.ones(len(embedding), 1, dtype=torch.float64)], dim=1)
    if len(design) <= design.shape[1]:  # D + 1 rows fit any logits exactly: nothing would be checked
        raise ValueError(
            f"Recovering the linear head needs more rows than embedding dimensions + 1 "
            f"({design.shape[1]}), but got {len(design)}. Fit on more of the training split."
        )
    target = logits.double()
    fit = torch.linalg.lstsq(design, target, driver="gelsd")
    if fit.rank < design.shape[1]:
        warnings.warn(
            f"The recorded embedding spans {int(fit.rank) - 1} of its {design.shape[1] - 1} dimensions on "
            "these rows (constant ones, such as ReLU units that never fire): the head's weights on the "
            "others cannot be recovered, and the minimum-norm head is used. It gives the same logits on "
            "these rows; only inputs that move the constant units (ViM's residual, DEUP's virtual "
            "outliers) read a head that ignores them. Nothing needs doing unless such units matter.",
            stacklevel=2,
        )
    solution = fit.solution
    residual = (design @ solution - target).norm() / target.norm().clamp_min(1e-12)
    if residual > AFFINE_TOLERANCE:
        raise ValueError(
            f"The logits are not an affine function of the recorded embedding (relative residual "
            f"{residual:.2g}), so the linear head cannot be recovered. ViM and DEUP's virtual outliers "
            "need the embedding to be the input of the model's last nn.Linear and the logits its "
            "output, as OutputCapture records; otherwise use another criterion, or "
            "DEUP(virtual_outliers=0, ood_prior=0)."
        )
    return solution[:-1].T, solution[-1]


def principal_dimension(width: int) -> int:
    """ViM's subspace dimension: 1000 for features of width >= 2048, 512 for >= 768, else half."""
    return 1000 if width >= 2048 else 512 if width >= 768 else width // 2


class ViMScore(FeatureExtractor):
    """ViM's OOD score: ``alpha * ||residual|| - logsumexp(logits)``; higher means more OOD.

    ``fit`` recovers the head, centres the training embeddings at ``u = -pinv(W) b``, takes the
    eigenvectors of their (uncentred) second-moment matrix beyond the first ``dim`` as the residual
    space, and sets ``alpha = mean(max logit) / mean(||residual||)`` on the training split.

    Args:
        dim: principal subspace dimension; ``None`` follows ViM (:func:`principal_dimension`).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> head = torch.nn.Linear(8, 3)
        >>> z = torch.randn(200, 8)
        >>> vim = ViMScore().fit(ModelOutputs(head(z).detach(), z), torch.arange(200) % 3)
        >>> vim(ModelOutputs(head(z[:4]).detach(), z[:4])).shape
        torch.Size([4, 1])
    """

    needs_fit = True
    needs_embedding = True
    ood_direction = 1

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> ViMScore:
        embedding = require_embedding(outputs, self).double()
        check_finite(embedding)
        check_finite(outputs.logits, "logits")
        if outputs.members is not None:
            raise ValueError(
                "ViM needs one linear head, but these are a DeepEnsemble's outputs (the log of its "
                "members' mean probabilities). Use ViM on one member, or another criterion, such as "
                "mutual information."
            )
        dim = principal_dimension(embedding.shape[1]) if self.dim is None else self.dim
        if not 0 < dim < embedding.shape[1]:
            raise ValueError(
                f"Expected the ViM subspace dimension in [1, {embedding.shape[1] - 1}] for "
                f"{embedding.shape[1]}-dimensional embeddings, but got {dim}."
            )
        weight, bias = recover_linear_head(embedding, outputs.logits)
        origin = -torch.linalg.pinv(weight) @ bias
        centred = embedding - origin
        _, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(centred))
        # eigh sorts ascending: the residual space is spanned by the smallest width - dim
        self.origin_ = origin
        self.residual_basis_ = eigenvectors[:, : embedding.shape[1] - dim]
        residual = (centred @ self.residual_basis_).norm(dim=1)
        self.alpha_ = class_logits(outputs.logits).double().max(1).values.mean() / residual.mean()
        return self

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "origin_")
        embedding = require_embedding(outputs, self).double()
        check_dimension(embedding, len(self.origin_), self)
        virtual_logit = self.alpha_ * ((embedding - self.origin_) @ self.residual_basis_).norm(dim=1)
        energy = torch.logsumexp(class_logits(outputs.logits).double(), dim=1)
        return (virtual_logit - energy)[:, None].float()

    @property
    def names(self) -> list[str]:
        return ["vim_score"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "origin_")
        return {key: getattr(self, key) for key in ("origin_", "residual_basis_", "alpha_")}
