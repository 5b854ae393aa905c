"""Class-conditional Gaussian density of the penultimate embedding (DDU, Mukhoti et al. 2023).

The helpers here (embedding and label checks, class means, a Cholesky factor that survives
near-singular covariances) are shared with :mod:`torch_deup.features.distance`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.outputs import ModelOutputs

#: Jitters tried on a covariance's diagonal, in units of its mean variance, smallest first. The
#: first non-zero one is 1e-6, not smaller: a float64 Cholesky factor can "succeed" on a singular
#: matrix with a 1e-12 jitter, but its smallest pivots are then rounding noise and so would be the
#: densities. The last one makes any finite positive semi-definite matrix positive definite.
JITTER_STEPS = (0.0, *(10.0**e for e in range(-6, 1)))
#: The smallest squared pivot, in units of the mean variance, a factor may have: below it, the
#: pivot is rounding noise (about 1e-16 for a singular matrix in float64), far under any jitter.
MIN_PIVOT = 1e-10


def require_embedding(outputs: ModelOutputs, estimator: object) -> Tensor:
    """``outputs.embedding``, checked to be ``(N, D)``, or a ValueError saying how to get one."""
    if outputs.embedding is None:
        raise ValueError(
            f"{type(estimator).__name__} reads the penultimate embedding, but ModelOutputs.embedding "
            "is None. Collect outputs with torch_deup.outputs.OutputCapture or collect_outputs, which "
            "record the input of the model's last nn.Linear; the model needs a linear head for that."
        )
    embedding = outputs.embedding
    if embedding.ndim != 2:
        raise ValueError(
            f"Expected ModelOutputs.embedding of shape (N, D), but got shape {tuple(embedding.shape)}. "
            "Flatten the embedding to two dimensions."
        )
    return embedding


def check_dimension(embedding: Tensor, dim: int, estimator: object, what: str = "embeddings") -> None:
    """Raise if a query embedding's (or other ``what``'s) width differs from the one seen in ``fit``."""
    if embedding.shape[1] != dim:
        raise ValueError(
            f"{type(estimator).__name__} was fitted on {dim}-dimensional {what}, but got "
            f"{embedding.shape[1]}-dimensional ones. Score outputs of the model it was fitted on"
            + (", collected with the same `layers`." if what == "layer statistics" else ".")
        )


def check_finite(embedding: Tensor, what: str = "embeddings") -> None:
    """Raise if training embeddings (or ``what``) contain NaN or inf (they would poison every
    fitted statistic)."""
    if not torch.isfinite(embedding).all():
        raise ValueError(
            f"Expected finite training {what}, but they contain NaN or inf. Check the model "
            "and its inputs for overflow before fitting."
        )


def check_not_empty(embedding: Tensor) -> None:
    """A ValueError if there is no training embedding to fit on."""
    if len(embedding) == 0:
        raise ValueError("Expected at least one training embedding, but got none. Fit on the training split.")


def check_fit_inputs(embedding: Tensor, targets: Tensor) -> Tensor:
    """Validate training embeddings and labels; return the labels as int64."""
    check_finite(embedding)
    check_not_empty(embedding)
    if targets.ndim != 1 or targets.shape[0] != embedding.shape[0]:
        raise ValueError(
            f"Expected `targets` of shape ({embedding.shape[0]},), one class index per embedding, "
            f"but got shape {tuple(targets.shape)}."
        )
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(
            f"Expected integer class indices in `targets`, but got dtype {targets.dtype}. "
            "Pass targets.long() for classification labels."
        )
    return targets.long()


def class_means(embedding: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The classes present in ``targets``, each sample's class position, the class counts and means."""
    classes, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), embedding.shape[1], dtype=embedding.dtype)
    sums.index_add_(0, inverse, embedding)
    return classes, inverse, counts, sums / counts[:, None].to(embedding.dtype)


def cholesky_with_jitter(cov: Tensor) -> tuple[Tensor, float]:
    """Lower Cholesky factor of ``cov + jitter * I`` with the smallest jitter that works.

    Jitters follow :data:`JITTER_STEPS` times the mean diagonal of ``cov`` (1 if that is 0), so
    the escalation is invariant to the scale of the embedding. Returns the factor and the jitter.
    """
    scale = cov.diagonal().mean().item() or 1.0
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    for step in JITTER_STEPS:
        jitter = step * scale
        factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        # without jitter, a singular matrix can factor with pivots of rounding noise: a failure too
        if info.item() == 0 and factor.diagonal().square().min() > MIN_PIVOT * scale:
            return factor, jitter
    raise RuntimeError(f"Covariance is not positive definite even with jitter {jitter:g} on its diagonal.")


def squared_mahalanobis(x: Tensor, mean: Tensor, cholesky: Tensor) -> Tensor:
    """``(z - mean)^T (L L^T)^-1 (z - mean)`` for each row z of ``x``, by one triangular solve."""
    return torch.linalg.solve_triangular(cholesky, (x - mean).T, upper=False).square().sum(0)


def gaussian_log_pdf(embedding: Tensor, mean: Tensor, cholesky: Tensor) -> Tensor:
    """log N(z; mean, L L^T) for each row z of ``embedding``."""
    log_det = 2.0 * cholesky.diagonal().log().sum()
    distance = squared_mahalanobis(embedding, mean, cholesky)
    return -0.5 * (distance + log_det + embedding.shape[1] * math.log(2.0 * math.pi))


class GaussianDensity(FeatureExtractor):
    """Log density of the embedding under a class-conditional Gaussian mixture (GDA, as in DDU).

    ``fit`` estimates, on the training embeddings, one mean and one full covariance per class
    (unbiased, divided by ``n_c - 1``) and the empirical class priors ``pi_c = n_c / N``. The
    feature is ``log p(z) = logsumexp_c(log N(z; mu_c, Sigma_c) + log pi_c)``: higher means more
    in-distribution. (DDU sums the class densities with uniform weights; on balanced classes the
    two differ by the constant ``log C`` and rank samples identically.) A covariance that is not
    numerically positive definite (e.g. fewer samples than dimensions) gets the smallest jitter
    ``t * mean(diag(Sigma_c))``, ``t`` in ``0, 1e-6, 1e-5, ..., 1``, on its diagonal that lets
    its Cholesky factorisation succeed; the jitter used is kept in ``jitter_``. Computed in
    float64; the column is float32.

    Example:
        >>> import torch
        >>> from torch_deup.outputs import ModelOutputs
        >>> z, y = torch.randn(200, 3), torch.arange(200) % 2
        >>> gda = GaussianDensity().fit(ModelOutputs(torch.zeros(200, 2), z), y)
        >>> gda(ModelOutputs(torch.zeros(4, 2), torch.randn(4, 3))).shape
        torch.Size([4, 1])
    """

    needs_fit = True
    needs_embedding = True
    ood_direction = -1

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> GaussianDensity:
        embedding = require_embedding(outputs, self).double()
        targets = check_fit_inputs(embedding, targets)
        classes, inverse, counts, means = class_means(embedding, targets)
        if (counts < 2).any():
            lonely = classes[counts < 2].tolist()
            raise ValueError(
                f"GaussianDensity needs at least 2 training embeddings per class to estimate a "
                f"covariance, but class(es) {lonely} have 1. Fit on a larger training split or "
                "drop those classes."
            )
        factors, jitters = [], []
        for position, mean in enumerate(means):
            centred = embedding[inverse == position] - mean
            factor, jitter = cholesky_with_jitter(centred.T @ centred / (len(centred) - 1))
            factors.append(factor)
            jitters.append(jitter)
        self.classes_ = classes
        self.means_ = means
        self.cholesky_ = torch.stack(factors)
        self.jitter_ = torch.tensor(jitters, dtype=torch.float64)
        self.log_priors_ = (counts.double() / len(targets)).log()
        return self

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "means_")
        embedding = require_embedding(outputs, self).double()
        check_dimension(embedding, self.means_.shape[1], self)
        joint = torch.stack(
            [
                gaussian_log_pdf(embedding, mean, factor) + log_prior
                for mean, factor, log_prior in zip(self.means_, self.cholesky_, self.log_priors_, strict=True)
            ],
            dim=1,
        )
        return torch.logsumexp(joint, dim=1, keepdim=True).float()

    @property
    def names(self) -> list[str]:
        return ["gaussian_log_density"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "means_")
        keys = ("classes_", "means_", "cholesky_", "jitter_", "log_priors_")
        return {key: getattr(self, key) for key in keys}
