import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from torch_deup.features.base import NotFittedError
from torch_deup.features.distance import KNNDistance, MahalanobisDistance, TrustScore, largest
from torch_deup.outputs import ModelOutputs


def outputs_of(embedding: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(torch.zeros(len(embedding), 3), embedding)


@pytest.fixture
def train() -> tuple[ModelOutputs, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    targets = torch.arange(60) % 3
    embedding = torch.randn(60, 5, generator=gen) + 2.0 * targets[:, None]
    return outputs_of(embedding), targets


@pytest.fixture
def queries() -> torch.Tensor:
    return torch.randn(23, 5, generator=torch.Generator().manual_seed(1)) * 3


# (query_chunk_size, bank_chunk_size): defaults, then chunks smaller than the data and than k
CHUNKS = [(1024, 16384), (7, 11), (1, 2)]


@pytest.mark.parametrize(("query_chunk_size", "bank_chunk_size"), CHUNKS)
@pytest.mark.parametrize(("normalize", "metric"), [(True, "cosine"), (False, "euclidean")])
def test_knn_matches_sklearn(train, queries, query_chunk_size, bank_chunk_size, normalize, metric):
    outputs, targets = train
    knn = KNNDistance(4, normalize, query_chunk_size, bank_chunk_size).fit(outputs, targets)
    features = knn(outputs_of(queries))
    assert features.shape == (23, 1)
    assert features.dtype == torch.float32
    reference = NearestNeighbors(n_neighbors=4, metric=metric).fit(outputs.embedding.numpy())
    expected = reference.kneighbors(queries.numpy())[0][:, -1]
    np.testing.assert_allclose(features[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_euclidean_distances_keep_their_precision_under_an_offset_all_embeddings_share():
    # post-ReLU features share a positive offset: their squared norms dwarf near-neighbour distances
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(2000, 64, generator=gen) + 20.0
    queries = bank[:50] + 1e-3 * torch.randn(50, 64, generator=gen)
    targets = torch.zeros(2000, dtype=torch.long)
    got = KNNDistance(k=1, normalize=False).fit(outputs_of(bank), targets)(outputs_of(queries))[:, 0]
    expected = torch.cdist(queries.double(), bank.double()).min(1).values.float()
    assert expected.median() < 0.01
    # float32 error at the scale of the spread (about 0.004 here), not of the offset (0.1); the
    # trust score prepares its bank the same way (KNNDistance._fit_bank)
    assert (got - expected).abs().max() < 0.01


def test_knn_state_dict_keeps_the_distance_it_was_fitted_for(train, queries):
    outputs, targets = train
    knn = KNNDistance(k=3, normalize=False).fit(outputs, targets)
    restored = KNNDistance(k=5)  # built with other settings: the state says which distance
    restored.load_state_dict(knn.state_dict())
    assert (restored.k, restored.normalize) == (3, False)
    assert torch.equal(restored(outputs_of(queries)), knn(outputs_of(queries)))


@pytest.mark.parametrize("cls", [KNNDistance, TrustScore, MahalanobisDistance])
def test_fitting_on_no_rows_says_so(cls):
    empty = ModelOutputs(torch.zeros(0, 3), torch.zeros(0, 5))
    with pytest.raises(ValueError, match="at least one training embedding, but got none"):
        cls().fit(empty, torch.zeros(0, dtype=torch.long))


def test_knn_far_embedding_scores_higher(train):
    outputs, targets = train
    knn = KNNDistance(k=5, normalize=False).fit(outputs, targets)
    near, far = knn(outputs_of(torch.tensor([[2.0] * 5, [40.0] * 5])))[:, 0]
    assert far > near


def test_knn_state_dict_round_trip_is_bit_exact(train, queries, tmp_path):
    outputs, targets = train
    knn = KNNDistance(k=3).fit(outputs, targets)
    torch.save(knn.state_dict(), tmp_path / "knn.pt")
    restored = KNNDistance(k=3)
    restored.load_state_dict(torch.load(tmp_path / "knn.pt"))
    assert torch.equal(restored(outputs_of(queries)), knn(outputs_of(queries)))


def test_knn_k_larger_than_bank_is_rejected(train):
    outputs, targets = train
    with pytest.raises(ValueError, match=r"embeddings in the bank \(60\), but got k=61"):
        KNNDistance(k=61).fit(outputs, targets)


def test_knn_bank_size_keeps_a_seeded_subset_of_the_training_embeddings(train):
    outputs, targets = train
    a = KNNDistance(k=3, bank_size=20, seed=1).fit(outputs, targets)
    b = KNNDistance(k=3, bank_size=20, seed=1).fit(outputs, targets)
    assert a.bank_.shape[0] == 20
    assert torch.equal(a.bank_, b.bank_)
    full = KNNDistance(k=3).fit(outputs, targets).bank_
    # every kept row is a training row
    exact = torch.cdist(a.bank_, full, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(dim=1).values.max() < 1e-6
    with pytest.raises(ValueError, match=r"in the bank \(20\), but got k=21"):
        KNNDistance(k=21, bank_size=20).fit(outputs, targets)


@pytest.mark.parametrize("name", ["k", "query_chunk_size", "bank_chunk_size", "bank_size"])
def test_knn_non_positive_sizes_are_rejected(train, name):
    outputs, targets = train
    with pytest.raises(ValueError, match=f"`{name}` to be an integer of at least 1, but got 0"):
        KNNDistance(**{name: 0}).fit(outputs, targets)


def test_knn_missing_embedding_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"KNNDistance reads the penultimate embedding.*linear head"):
        KNNDistance(k=1).fit(ModelOutputs(torch.zeros(5, 2)), torch.zeros(5, dtype=torch.long))


def test_knn_unfitted_use_raises():
    with pytest.raises(NotFittedError, match="KNNDistance instance is not fitted yet"):
        KNNDistance()(outputs_of(torch.zeros(2, 5)))


def numpy_mahalanobis(z_train, y_train, z) -> np.ndarray:
    """min_c (z - mu_c)^T S^{-1} (z - mu_c), with S the pooled covariance from sklearn."""
    z_train, y_train, z = z_train.double().numpy(), y_train.numpy(), z.double().numpy()
    means = np.stack([z_train[y_train == c].mean(0) for c in np.unique(y_train)])
    residuals = z_train - means[np.searchsorted(np.unique(y_train), y_train)]
    precision = np.linalg.inv(EmpiricalCovariance(assume_centered=True).fit(residuals).covariance_)
    diffs = z[:, None, :] - means[None]
    return np.einsum("ncd,de,nce->nc", diffs, precision, diffs).min(1)


def trust_reference(bank, labels, queries, predicted, k, metric):
    """d_other / (d_other + d_predicted), each the k-th neighbour distance within a class, by sklearn."""
    per_class = {}
    for c in np.unique(labels):
        rows = bank[labels == c]
        nn = NearestNeighbors(n_neighbors=min(k, len(rows)), metric=metric).fit(rows)
        per_class[c] = nn.kneighbors(queries)[0][:, -1]
    out = []
    for i, p in enumerate(predicted):
        others = [d[i] for c, d in per_class.items() if c != p]
        d_pred, d_other = per_class[p][i], min(others)
        out.append(d_other / (d_other + d_pred))
    return np.array(out)


@pytest.mark.parametrize(("query_chunk_size", "bank_chunk_size"), CHUNKS)
@pytest.mark.parametrize(("normalize", "metric"), [(True, "cosine"), (False, "euclidean")])
def test_trust_score_matches_sklearn(train, queries, query_chunk_size, bank_chunk_size, normalize, metric):
    outputs, targets = train
    trust = TrustScore(4, normalize, query_chunk_size, bank_chunk_size).fit(outputs, targets)
    logits = torch.randn(23, 3, generator=torch.Generator().manual_seed(2))
    got = trust(ModelOutputs(logits, queries))[:, 0].numpy()
    expected = trust_reference(
        outputs.embedding.numpy(), targets.numpy(), queries.numpy(), logits.argmax(1).numpy(), 4, metric
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_trust_score_without_the_predicted_class_is_zero_and_alone_is_one(train, queries):
    outputs, targets = train
    logits = torch.zeros(23, 3)
    logits[:, 2] = 1.0  # every query predicted as class 2
    without_2 = TrustScore(4).fit(outputs[targets != 2], targets[targets != 2])
    only_2 = TrustScore(4).fit(outputs[targets == 2], targets[targets == 2])
    assert torch.equal(without_2(ModelOutputs(logits, queries)), torch.zeros(23, 1))
    assert torch.equal(only_2(ModelOutputs(logits, queries)), torch.ones(23, 1))


def test_trust_score_bank_samples_each_class_keeps_labels_with_rows_and_round_trips(train, queries, tmp_path):
    outputs, targets = train
    trust = TrustScore(3, bank_size=30, seed=5).fit(outputs, targets)
    assert torch.bincount(trust.bank_labels_).tolist() == [10, 10, 10]  # half of each class
    normalized = torch.nn.functional.normalize(outputs.embedding, dim=1)
    rows = (trust.bank_ @ normalized.T).argmax(1)  # each bank row is a training row
    assert torch.equal(targets[rows], trust.bank_labels_)
    torch.save(trust.state_dict(), tmp_path / "trust.pt")
    fresh = TrustScore(3, bank_size=30, seed=5)
    fresh.load_state_dict(torch.load(tmp_path / "trust.pt", weights_only=True))
    query = ModelOutputs(torch.randn(23, 3), queries)
    assert torch.equal(fresh(query), trust(query))


def test_trust_score_subsample_keeps_a_rare_class():
    embedding = torch.randn(102, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    trust = TrustScore(k=5, bank_size=10).fit(ModelOutputs(torch.zeros(102, 2), embedding), targets)
    assert torch.bincount(trust.bank_labels_).tolist() == [10, 2]
    rare = ModelOutputs(torch.tensor([[0.0, 1.0]]), embedding[100:101])
    assert trust(rare).item() > 0  # predicted as the rare class, which the bank still holds


def test_mahalanobis_matches_numpy(train, queries):
    outputs, targets = train
    maha = MahalanobisDistance().fit(outputs, targets)
    features = maha(outputs_of(queries))
    assert features.shape == (23, 1)
    assert features.dtype == torch.float32
    assert maha.jitter_ == 0
    expected = numpy_mahalanobis(outputs.embedding, targets, queries)
    np.testing.assert_allclose(features[:, 0].numpy(), expected, rtol=1e-5)


def test_mahalanobis_with_non_contiguous_labels_matches_numpy(train, queries):
    outputs, targets = train
    labels = torch.tensor([3, 8, 9])[targets]
    features = MahalanobisDistance().fit(outputs, labels)(outputs_of(queries))
    expected = numpy_mahalanobis(outputs.embedding, labels, queries)
    np.testing.assert_allclose(features[:, 0].numpy(), expected, rtol=1e-5)


def test_mahalanobis_dead_dimension_gets_jitter(train):
    outputs, targets = train
    outputs.embedding[:, 2] = 0.0  # a ReLU unit that never fires: zero variance
    maha = MahalanobisDistance().fit(outputs, targets)
    assert maha.jitter_ > 0
    assert torch.isfinite(maha(outputs_of(torch.randn(4, 5)))).all()


def test_mahalanobis_far_embedding_scores_higher(train):
    outputs, targets = train
    maha = MahalanobisDistance().fit(outputs, targets)
    near, far = maha(outputs_of(torch.tensor([[2.0] * 5, [40.0] * 5])))[:, 0]
    assert far > near


def test_mahalanobis_state_dict_round_trip_is_bit_exact(train, queries, tmp_path):
    outputs, targets = train
    maha = MahalanobisDistance().fit(outputs, targets)
    torch.save(maha.state_dict(), tmp_path / "maha.pt")
    restored = MahalanobisDistance()
    restored.load_state_dict(torch.load(tmp_path / "maha.pt"))
    assert torch.equal(restored(outputs_of(queries)), maha(outputs_of(queries)))


def test_mahalanobis_errors(train):
    outputs, targets = train
    with pytest.raises(ValueError, match="MahalanobisDistance reads the penultimate embedding"):
        MahalanobisDistance().fit(ModelOutputs(outputs.logits), targets)
    with pytest.raises(ValueError, match="integer class indices"):
        MahalanobisDistance().fit(outputs, targets.float())
    with pytest.raises(NotFittedError, match="MahalanobisDistance instance is not fitted yet"):
        MahalanobisDistance()(outputs)
    maha = MahalanobisDistance().fit(outputs, targets)
    with pytest.raises(ValueError, match="fitted on 5-dimensional embeddings, but got 2"):
        maha(outputs_of(torch.zeros(1, 2)))
    # one row per class: every row is its mean, the covariance 0
    with pytest.raises(ValueError, match=r"more training rows than classes .* 3 rows of 3 classes"):
        MahalanobisDistance().fit(outputs_of(outputs.embedding[:3]), targets[:3])


@pytest.mark.parametrize("k", [1, 3, 7, 9])
def test_largest_returns_each_rows_k_largest_values_as_topk_does(k):
    scores = torch.randn(50, 7, generator=torch.Generator().manual_seed(k)).round(decimals=1)  # ties
    expected = scores.topk(min(k, 7), dim=1).values
    assert torch.equal(largest(scores, k).sort(dim=1, descending=True).values, expected)
    assert torch.equal(largest(scores.T.contiguous().T, k).sort(dim=1, descending=True).values, expected)
    kept = scores.clone()
    largest(scores, k)
    assert torch.equal(scores, kept)  # not overwritten unless asked
    result = largest(scores.clone(), k, overwrite=True)
    assert torch.equal(result.sort(dim=1, descending=True).values, expected)
    if k < 7:  # k columns of their own: not a view keeping the whole block alive
        assert result.untyped_storage().nbytes() == 50 * k * 4
    half = scores.bfloat16()  # numpy has no bfloat16
    expected = half.topk(min(k, 7), dim=1).values
    assert torch.equal(largest(half, k).sort(dim=1, descending=True).values, expected)
