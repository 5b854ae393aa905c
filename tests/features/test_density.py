import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from torch_deup.features.base import NotFittedError
from torch_deup.features.density import GaussianDensity, cholesky_with_jitter
from torch_deup.outputs import ModelOutputs


def outputs_of(embedding: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(torch.zeros(len(embedding), 3), embedding)


@pytest.fixture
def train() -> tuple[ModelOutputs, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    # unbalanced classes with distinct means, so the class priors matter
    targets = torch.tensor([0] * 40 + [1] * 25 + [2] * 15)
    embedding = torch.randn(80, 4, generator=gen) + 3.0 * targets[:, None]
    return outputs_of(embedding), targets


def scipy_log_density(gda: GaussianDensity, z_train, y_train, z) -> np.ndarray:
    """Mixture log density from scipy, with the covariances (plus jitter) estimated by numpy."""
    z_train, y_train = z_train.double().numpy(), y_train.numpy()
    terms = []
    for label, jitter in zip(np.unique(y_train), gda.jitter_.numpy(), strict=True):
        members = z_train[y_train == label]
        cov = np.cov(members, rowvar=False) + jitter * np.eye(z_train.shape[1])
        log_prior = np.log(len(members) / len(z_train))
        terms.append(multivariate_normal(members.mean(0), cov).logpdf(z.double().numpy()) + log_prior)
    return logsumexp(np.stack(terms, axis=1), axis=1)


def test_log_density_matches_scipy(train):
    outputs, targets = train
    gda = GaussianDensity().fit(outputs, targets)
    queries = torch.randn(30, 4, generator=torch.Generator().manual_seed(1)) * 4
    features = gda(outputs_of(queries))
    assert features.shape == (30, 1)
    assert features.dtype == torch.float32
    assert torch.equal(gda.jitter_, torch.zeros(3, dtype=torch.float64))
    expected = scipy_log_density(gda, outputs.embedding, targets, queries)
    np.testing.assert_allclose(features[:, 0].numpy(), expected, rtol=1e-5)


def test_singular_covariance_gets_jitter_and_matches_scipy():
    gen = torch.Generator().manual_seed(2)
    # class 1 has 3 samples in 6 dimensions: its covariance has rank 2
    targets = torch.tensor([0] * 30 + [1] * 3)
    embedding = torch.randn(33, 6, generator=gen)
    gda = GaussianDensity().fit(outputs_of(embedding), targets)
    assert gda.jitter_[0] == 0
    # the first non-zero step: 1e-6 of the class's mean variance
    mean_variance = np.cov(embedding[30:].double().numpy(), rowvar=False).diagonal().mean()
    np.testing.assert_allclose(gda.jitter_[1].item(), 1e-6 * mean_variance, rtol=1e-12)
    queries = torch.randn(10, 6, generator=gen)
    features = gda(outputs_of(queries))
    expected = scipy_log_density(gda, embedding, targets, queries)
    np.testing.assert_allclose(features[:, 0].numpy(), expected, rtol=1e-5)


def test_far_embedding_has_lower_density(train):
    outputs, targets = train
    gda = GaussianDensity().fit(outputs, targets)
    near, far = gda(outputs_of(torch.tensor([[3.0] * 4, [50.0] * 4])))[:, 0]
    assert near > far


def test_state_dict_round_trip_is_bit_exact(train, tmp_path):
    outputs, targets = train
    gda = GaussianDensity().fit(outputs, targets)
    torch.save(gda.state_dict(), tmp_path / "gda.pt")
    restored = GaussianDensity()
    restored.load_state_dict(torch.load(tmp_path / "gda.pt"))
    queries = outputs_of(torch.randn(20, 4))
    assert torch.equal(restored(queries), gda(queries))


def test_class_with_one_sample_is_named(train):
    outputs, _ = train
    targets = torch.tensor([0] * 40 + [1] * 39 + [7])
    with pytest.raises(ValueError, match=r"class\(es\) \[7\] have 1"):
        GaussianDensity().fit(outputs, targets)


def test_missing_embedding_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"embedding is None.*OutputCapture"):
        GaussianDensity().fit(ModelOutputs(torch.zeros(5, 2)), torch.zeros(5, dtype=torch.long))


def test_float_targets_are_rejected(train):
    outputs, targets = train
    with pytest.raises(ValueError, match=r"integer class indices.*targets.long\(\)"):
        GaussianDensity().fit(outputs, targets.float())


def test_targets_of_wrong_length_are_rejected(train):
    outputs, targets = train
    with pytest.raises(ValueError, match=r"Expected `targets` of shape \(80,\)"):
        GaussianDensity().fit(outputs, targets[:-1])


def test_non_finite_embedding_is_rejected(train):
    outputs, targets = train
    outputs.embedding[3, 1] = float("nan")
    with pytest.raises(ValueError, match="contain NaN or inf"):
        GaussianDensity().fit(outputs, targets)


def test_query_of_other_width_is_rejected(train):
    outputs, targets = train
    gda = GaussianDensity().fit(outputs, targets)
    with pytest.raises(ValueError, match="fitted on 4-dimensional embeddings, but got 5"):
        gda(outputs_of(torch.zeros(2, 5)))


def test_unfitted_use_raises():
    with pytest.raises(NotFittedError, match="GaussianDensity instance is not fitted yet"):
        GaussianDensity()(outputs_of(torch.zeros(2, 4)))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GaussianDensity().state_dict()


@pytest.mark.parametrize("dim", [6, 64])
def test_a_singular_covariance_gets_a_jitter_not_a_factor_of_rounding_noise(dim):
    # D rows in D dimensions: a rank D - 1 covariance, which Cholesky can "factor" with noise pivots
    for seed in range(30):
        rows = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        centred = rows - rows.mean(0)
        cov = centred.T @ centred / (dim - 1)
        factor, jitter = cholesky_with_jitter(cov)
        assert jitter > 0
        # the squared pivots are at least the jitter: nothing near rounding noise
        assert factor.diagonal().square().min() >= 0.5 * jitter
