"""Distances from an embedding to the training embeddings: k-th nearest neighbour, its
class-conditional ratio (trust score) and Mahalanobis."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from torch_deup.features.base import FeatureExtractor, check_is_fitted
from torch_deup.features.density import (
    check_dimension,
    check_finite,
    check_fit_inputs,
    check_not_empty,
    cholesky_with_jitter,
    class_means,
    require_embedding,
)
from torch_deup.outputs import ModelOutputs, class_logits


def largest(scores: Tensor, k: int, overwrite: bool = False) -> Tensor:
    """The ``k`` largest values of each row of ``scores``, in no order (all of them for a row of at
    most ``k``), without autograd. On CPU by numpy's introselect: torch's ``topk`` on rows of a few
    hundred values, such as the trust score's per-class banks, took 6x longer (16.6 against 2.6 ms
    for 5,000 rows of 450). With ``overwrite``, ``scores`` (scratch) is reordered in place instead of
    copied, so no second block is allocated."""
    n = scores.shape[1]
    if k >= n:
        return scores.detach()
    if scores.device.type != "cpu":
        return scores.detach().topk(k, dim=1, sorted=False).values
    if scores.dtype == torch.bfloat16:  # numpy has none; float32 holds its values exactly
        return largest(scores.float(), k, overwrite=True).to(torch.bfloat16)
    array = scores.detach().numpy()
    if overwrite:
        array.partition(n - k, axis=1)
    else:
        array = np.partition(array, n - k, axis=1)
    # a copy of the k columns: a view would keep the whole block alive
    return torch.from_numpy(array[:, n - k :].copy())


def kth_distance(
    queries: Tensor, bank: Tensor, k: int, normalize: bool, query_chunk_size: int, bank_chunk_size: int
) -> Tensor:
    """Distance of each query to its ``k``-th nearest bank row, exactly, chunk by chunk.

    Both inputs are already normalised when ``normalize`` (cosine distance), raw otherwise
    (Euclidean). Memory beyond the inputs: one ``query_chunk_size x bank_chunk_size`` block.
    """
    kth = []
    for chunk in queries.split(query_chunk_size):
        best = None
        for block in bank.split(bank_chunk_size):
            scores = chunk @ block.T
            if not normalize:
                # -|q - b|^2 = 2 q.b - |b|^2 - |q|^2, in place to keep a single (q, b) buffer
                scores.mul_(2).sub_(block.square().sum(1)).sub_(chunk.square().sum(1, keepdim=True))
            top = largest(scores, k, overwrite=True)
            del scores  # free this block before the next one is allocated: one block alive at a time
            best = top if best is None else largest(torch.cat([best, top], dim=1), k, overwrite=True)
        kth.append(best.min(dim=1).values)
    similarity = torch.cat(kth)
    return 1.0 - similarity if normalize else (-similarity).clamp_min(0.0).sqrt()


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
    (Euclidean, of the embeddings centred at the bank's mean, ``center_``: an offset all
    embeddings share, as post-ReLU features have, would otherwise enter those norms and swamp
    the distances of near neighbours).

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
        if self.normalize:
            return F.normalize(embedding, dim=1)
        # a Euclidean distance does not change under a shift
        return embedding if self._center is None else embedding - self._center

    @property
    def _center(self) -> Tensor | None:
        """``center_``; ``None`` for a bank fitted or loaded before it was kept."""
        return getattr(self, "center_", None)

    def _fit_bank(self, embedding: Tensor) -> None:
        """``bank_`` (and ``center_`` for the Euclidean distance) from the kept training embeddings."""
        self.center_ = None if self.normalize else embedding.float().mean(0)
        self.bank_ = self._prepare(embedding).contiguous()

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> KNNDistance:
        """Store the training embeddings; ``targets`` is unused (the distance ignores classes)."""
        self._check_params()
        embedding = require_embedding(outputs, self)
        check_finite(embedding)
        check_not_empty(embedding)
        if self.bank_size is not None and self.bank_size < embedding.shape[0]:
            generator = torch.Generator().manual_seed(self.seed)
            embedding = embedding[torch.randperm(embedding.shape[0], generator=generator)[: self.bank_size]]
        if self.k > embedding.shape[0]:
            raise ValueError(
                f"Expected argument `k` to be at most the number of training embeddings in the bank "
                f"({embedding.shape[0]}), but got k={self.k}. Lower k or fit on more data."
            )
        self._fit_bank(embedding)
        return self

    def _queries(self, outputs: ModelOutputs) -> Tensor:
        """The checked, prepared embeddings of ``outputs``, ready to compare with the bank."""
        check_is_fitted(self, "bank_")
        embedding = require_embedding(outputs, self)
        check_dimension(embedding, self.bank_.shape[1], self)
        return self._prepare(embedding)

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        return kth_distance(
            self._queries(outputs),
            self.bank_,
            self.k,
            self.normalize,
            self.query_chunk_size,
            self.bank_chunk_size,
        )[:, None]

    @property
    def names(self) -> list[str]:
        return [f"knn{self.k}_distance"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "bank_")
        # the distance the bank was prepared for: loaded into other settings it would be misread
        return {"bank_": self.bank_, "center_": self._center, "k": self.k, "normalize": self.normalize}


class TrustScore(KNNDistance):
    """How much closer an embedding sits to the predicted class than to any other, in ``[0, 1]``:
    ``d_other / (d_other + d_predicted)``, a bounded form of the trust score of Jiang et al.
    (NeurIPS 2018), the ratio ``d_other / d_predicted``, with the same ranking. Below 0.5 the
    embedding is closer to another class than to the one the model predicts, a sign of an error
    the model's confidence does not show.

    The distance to a class is the :class:`KNNDistance` to the ``k``-th nearest training embedding
    of that class (``min(k, class size)`` for a class with fewer rows in the bank); Jiang et al.
    use the nearest neighbour after filtering low-density points. A predicted class with no
    training row scores 0 ("no support": the held-out-class protocol removes classes); a bank of
    the predicted class alone scores 1. Same arguments, bank and memory bound as
    :class:`KNNDistance`, except that ``bank_size`` samples each class in proportion (and keeps at
    least ``min(k, class size)`` rows of each); the bank also keeps its labels, ``bank_labels_``.

    Example:
        >>> import torch
        >>> from torch_deup.outputs import ModelOutputs
        >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> trust = TrustScore(k=1).fit(ModelOutputs(torch.zeros(4, 2), z), torch.tensor([0, 0, 1, 1]))
        >>> near_0 = torch.tensor([[1.0, 0.05], [1.0, 0.05]])  # twice the same embedding, near class 0
        >>> query = ModelOutputs(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), near_0)
        >>> trust(query)[:, 0] > 0.5  # predicted class 0 is the near one, class 1 the far one
        tensor([ True, False])
    """

    ood_direction = 0

    def __init__(
        self,
        k: int = 10,
        normalize: bool = True,
        query_chunk_size: int = 1024,
        bank_chunk_size: int = 16384,
        bank_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(k, normalize, query_chunk_size, bank_chunk_size, bank_size, seed)

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> TrustScore:
        """Store the (subsampled) training embeddings and their labels."""
        self._check_params()
        embedding = require_embedding(outputs, self)
        labels = check_fit_inputs(embedding, targets)
        if self.bank_size is not None and self.bank_size < embedding.shape[0]:
            keep = self._stratified_subset(labels)
            embedding, labels = embedding[keep], labels[keep]
        self.classes_ = torch.unique(labels)
        self._fit_bank(embedding)
        self.bank_labels_ = labels
        return self

    def _stratified_subset(self, labels: Tensor) -> Tensor:
        """A seeded random ``bank_size / N`` of each class, and never fewer than ``min(k, class
        size)`` rows: a subsample must not drop a class, whose samples would all score 0."""
        generator = torch.Generator().manual_seed(self.seed)
        fraction = self.bank_size / len(labels)
        keep = []
        for c in torch.unique(labels):
            members = torch.nonzero(labels == c).flatten()
            count = max(round(fraction * len(members)), min(self.k, len(members)))
            keep.append(members[torch.randperm(len(members), generator=generator)[:count]])
        return torch.cat(keep).sort().values

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        queries = self._queries(outputs)
        distances = torch.stack(
            [
                kth_distance(queries, self.bank_[self.bank_labels_ == c], self.k, self.normalize,
                             self.query_chunk_size, self.bank_chunk_size)
                for c in self.classes_
            ],
            dim=1,
        )  # fmt: skip
        predicted = class_logits(outputs.logits).argmax(1).to(self.classes_.device)
        is_predicted = self.classes_[None, :] == predicted[:, None]
        to_predicted = distances.masked_fill(~is_predicted, torch.inf).min(1).values
        to_other = distances.masked_fill(is_predicted, torch.inf).min(1).values
        total = to_other + to_predicted
        fraction = torch.where(total > 0, to_other / total.clamp_min(1e-12), 0.5)  # 0/0: a tie
        fraction = torch.where(torch.isinf(to_other), 1.0, fraction)
        return torch.where(torch.isinf(to_predicted), 0.0, fraction)[:, None]

    @property
    def names(self) -> list[str]:
        return [f"trust{self.k}_fraction"]

    def state_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "bank_")
        return {**super().state_dict(), "bank_labels_": self.bank_labels_, "classes_": self.classes_}


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
        # with fewer rows than classes + dimensions the covariance is singular and the jitter
        # regularises it (directions no training row varies in then count as far); with as many
        # rows as classes it is 0, and the distances would be the jitter's noise
        if len(embedding) <= len(classes):
            raise ValueError(
                f"MahalanobisDistance needs more training rows than classes to estimate the shared "
                f"covariance, but got {len(embedding)} rows of {len(classes)} classes. Fit on more data."
            )
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
