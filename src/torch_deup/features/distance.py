"""Distances from an embedding to the training embeddings: k-th nearest neighbour and Mahalanobis."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.features.density import (
    check_dimension,
    check_finite,
    check_fit_inputs,
    cholesky_with_jitter,
    class_means,
    require_embedding,
)
from torch_deup.outputs import ModelOutputs


class KNNDistance(FeatureExtractor):
    """Distance to the ``k``-th nearest training embedding (Sun et al. 2022), found exactly.

    With ``normalize=True`` the embeddings are L2-normalised and the distance is the cosine
    distance ``1 - cos(z, z_train)`` (what ``sklearn.neighbors.NearestNeighbors(metric="cosine")``
    returns); with ``normalize=False`` it is the Euclidean distance on the raw embedding.

    ``fit`` keeps the (normalised) training embeddings as a float32 bank, ``bank_``, which is
    also what ``state_dict`` saves: ``N_train * D * 4`` bytes (9 MiB for 45,000 x 64). Queries
    are scored ``query_chunk_size`` at a time against ``bank_chunk_size`` bank rows at a time,
    keeping a running top-k, so beyond the bank and a (normalised) float32 copy of the queries
    the extra memory is about ``query_chunk_size * bank_chunk_size * 4`` bytes (64 MiB with the
    defaults) whatever the sizes of bank and query. Similarities are float32 products, so
    distances carry an absolute error around 1e-6 (cosine) or relative 1e-6 of the squared norms
    (Euclidean).

    ``bank_size`` keeps a random subset (drawn with ``seed``) of that many training embeddings:
    scoring cost is proportional to the bank, and Sun et al. report that a 10% sample with ``k``
    scaled down detects OOD about as well as the full bank.

    Example:
        >>> import torch
        >>> from torch_deup.outputs import ModelOutputs
        >>> train = ModelOutputs(torch.zeros(100, 2), torch.randn(100, 8))
        >>> knn = KNNDistance(k=5).fit(train, torch.zeros(100, dtype=torch.long))
        >>> knn(ModelOutputs(torch.zeros(3, 2), torch.randn(3, 8))).shape
        torch.Size([3, 1])
    """

    needs_fit = True
    needs_embedding = True
    ood_direction = 1

    def __init__(
        self,
        k: int = 50,
        normalize: bool = True,
        query_chunk_size: int = 1024,
        bank_chunk_size: int = 16384,
        bank_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.normalize = normalize
        self.bank_size = bank_size
        self.seed = seed
        self.query_chunk_size = query_chunk_size
        self.bank_chunk_size = bank_chunk_size

    def _check_params(self) -> None:
        names = (
            "k",
            "query_chunk_size",
            "bank_chunk_size",
            *(("bank_size",) if self.bank_size is not None else ()),
        )
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Expected argument `{name}` to be an integer of at least 1, but got {value!r}."
                )

    def _prepare(self, embedding: Tensor) -> Tensor:
        embedding = embedding.float()
        return F.normalize(embedding, dim=1) if self.normalize else embedding

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> KNNDistance:
        """Store the training embeddings; ``targets`` is unused (the distance ignores classes)."""
        self._check_params()
        embedding = require_embedding(outputs, self)
        check_finite(embedding)
        if self.bank_size is not None and self.bank_size < embedding.shape[0]:
            generator = torch.Generator().manual_seed(self.seed)
            embedding = embedding[torch.randperm(embedding.shape[0], generator=generator)[: self.bank_size]]
        if self.k > embedding.shape[0]:
            raise ValueError(
                f"Expected argument `k` to be at most the number of training embeddings in the bank "
                f"({embedding.shape[0]}), but got k={self.k}. Lower k or fit on more data."
            )
        self.bank_ = self._prepare(embedding).contiguous()
        return self

    def _kth_similarity(self, queries: Tensor) -> Tensor:
        """The k-th largest similarity of each query; negative squared distance if not normalised."""
        best = None
        for block in self.bank_.split(self.bank_chunk_size):
            scores = queries @ block.T
            if not self.normalize:
                # -|q - b|^2 = 2 q.b - |b|^2 - |q|^2, in place to keep a single (q, b) buffer
                scores.mul_(2).sub_(block.square().sum(1)).sub_(queries.square().sum(1, keepdim=True))
            top = scores.topk(min(self.k, scores.shape[1]), dim=1, sorted=False).values
            del scores  # free this block before the next one is allocated: one block alive at a time
            best = top if best is None else torch.cat([best, top], dim=1)
            best = best.topk(min(self.k, best.shape[1]), dim=1, sorted=False).values
        return best.min(dim=1).values

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "bank_")
        embedding = require_embedding(outputs, self)
        check_dimension(embedding, self.bank_.shape[1], self)
        queries = self._prepare(embedding)
        kth = torch.cat([self._kth_similarity(chunk) for chunk in queries.split(self.query_chunk_size)])
        distance = 1.0 - kth if self.normalize else (-kth).clamp_min(0.0).sqrt()
        return distance[:, None]

    @property
    def names(self) -> list[str]:
        return [f"knn{self.k}_distance"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "bank_")
        return {"bank_": self.bank_}


class MahalanobisDistance(FeatureExtractor):
    """Squared Mahalanobis distance to the closest class mean, tied covariance (Lee et al. 2018).

    ``fit`` estimates one mean per class and the shared within-class covariance
    ``Sigma = 1/N sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T`` (the maximum-likelihood estimate,
    as in Lee et al. and ``sklearn.covariance.EmpiricalCovariance``), factorised by Cholesky
    with the same escalating jitter as :class:`~torch_deup.features.density.GaussianDensity`
    (kept in ``jitter_``). The feature is ``min_c (z - mu_c)^T Sigma^{-1} (z - mu_c)``, computed
    in float64 by whitening with a triangular solve (no explicit inverse); higher means farther
    from the training data. The input pre-processing of Lee et al. is not applied: it needs
    gradients through the model, and features here read cached outputs only.

    Example:
        >>> import torch
        >>> from torch_deup.outputs import ModelOutputs
        >>> z, y = torch.randn(200, 3), torch.arange(200) % 2
        >>> maha = MahalanobisDistance().fit(ModelOutputs(torch.zeros(200, 2), z), y)
        >>> maha(ModelOutputs(torch.zeros(4, 2), torch.randn(4, 3))).shape
        torch.Size([4, 1])
    """

    needs_fit = True
    needs_embedding = True
    ood_direction = 1

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> MahalanobisDistance:
        embedding = require_embedding(outputs, self).double()
        targets = check_fit_inputs(embedding, targets)
        classes, inverse, _, means = class_means(embedding, targets)
        centred = embedding - means[inverse]
        factor, jitter = cholesky_with_jitter(centred.T @ centred / len(centred))
        self.classes_ = classes
        self.means_ = means
        self.cholesky_ = factor
        self.jitter_ = torch.tensor(jitter, dtype=torch.float64)
        return self

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        check_is_fitted(self, "means_")
        embedding = require_embedding(outputs, self).double()
        check_dimension(embedding, self.means_.shape[1], self)
        # In whitened coordinates L^{-1} z the Mahalanobis distance is the Euclidean one.
        white = torch.linalg.solve_triangular(self.cholesky_, embedding.T, upper=False).T
        white_means = torch.linalg.solve_triangular(self.cholesky_, self.means_.T, upper=False).T
        # Pairwise differences, not |a|^2 + |b|^2 - 2ab, so close points do not cancel to noise.
        distance = torch.cdist(white, white_means, compute_mode="donot_use_mm_for_euclid_dist")
        return distance.min(dim=1, keepdim=True).values.square().float()

    @property
    def names(self) -> list[str]:
        return ["mahalanobis_distance"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "means_")
        return {key: getattr(self, key) for key in ("classes_", "means_", "cholesky_", "jitter_")}
