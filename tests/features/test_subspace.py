import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance

from torch_deup.features.base import NotFittedError
from torch_deup.features.subspace import ViMScore, principal_dimension, recover_linear_head
from torch_deup.outputs import ModelOutputs


def linear_outputs(n: int, seed: int, head: torch.nn.Linear) -> ModelOutputs:
    gen = torch.Generator().manual_seed(seed)
    # a low-rank signal plus small noise, as penultimate features are
    embedding = torch.randn(n, 3, generator=gen) @ torch.randn(3, 10, generator=gen) + 0.1 * torch.randn(
        n, 10, generator=gen
    )
    with torch.no_grad():
        return ModelOutputs(head(embedding), embedding)


@pytest.fixture
def head() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(10, 4)


def vim_reference(train: ModelOutputs, test: ModelOutputs, w: np.ndarray, b: np.ndarray, dim: int):
    """ViM as its authors describe it, in numpy/sklearn, from the true head."""
    feature_train, feature_test = train.embedding.double().numpy(), test.embedding.double().numpy()
    logit_train, logit_test = train.logits.double().numpy(), test.logits.double().numpy()
    u = -np.matmul(np.linalg.pinv(w), b)
    ec = EmpiricalCovariance(assume_centered=True).fit(feature_train - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    ns = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)][dim:]).T)
    vlogit_train = np.linalg.norm(np.matmul(feature_train - u, ns), axis=-1)
    alpha = logit_train.max(axis=-1).mean() / vlogit_train.mean()
    vlogit = np.linalg.norm(np.matmul(feature_test - u, ns), axis=-1) * alpha
    return vlogit - logsumexp(logit_test, axis=-1)  # ViM's ID score negated: higher = more OOD


def test_recovers_the_true_head(head):
    outputs = linear_outputs(500, 0, head)
    weight, bias = recover_linear_head(outputs.embedding, outputs.logits)
    torch.testing.assert_close(weight.float(), head.weight.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(bias.float(), head.bias.detach(), rtol=0, atol=1e-4)


def test_matches_the_reference_implementation(head):
    train, test = linear_outputs(500, 0, head), linear_outputs(50, 1, head)
    w, b = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    expected = vim_reference(train, test, w, b, dim=5)
    scores = ViMScore(dim=5).fit(train, torch.zeros(500, dtype=torch.long))(test)[:, 0]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-3, atol=1e-3)


def test_off_subspace_embedding_scores_higher(head):
    train = linear_outputs(500, 0, head)
    vim = ViMScore(dim=3).fit(train, torch.zeros(500, dtype=torch.long))
    inside = train.embedding[:1]
    outside = inside + 5.0 * vim.residual_basis_[:, 0].float()
    with torch.no_grad():
        near, far = vim(ModelOutputs(head(torch.cat([inside, outside])), torch.cat([inside, outside])))[:, 0]
    assert far > near + 1.0


def test_a_head_that_cannot_be_recovered_is_refused_or_warned_about(head):
    for rows in (10, 11):  # 11 rows fit 11 unknowns per logit exactly, whatever the logits
        outputs = linear_outputs(rows, 0, head)
        with pytest.raises(
            ValueError, match=rf"more rows than embedding dimensions \+ 1 \(11\), but got {rows}"
        ):
            recover_linear_head(outputs.embedding, outputs.logits)
    random_logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not an affine function"):
        recover_linear_head(linear_outputs(12, 0, head).embedding, random_logits)
    outputs = linear_outputs(500, 0, head)
    dead = outputs.embedding.clone()
    dead[:, 3] = 0.0  # a ReLU unit that never fires: its weight is not in the data
    with torch.no_grad(), pytest.warns(UserWarning, match="spans 9 of its 10 dimensions"):
        recover_linear_head(dead, head(dead))


def test_logits_not_affine_in_the_embedding_are_refused(head):
    outputs = linear_outputs(200, 0, head)
    squared = ModelOutputs(outputs.logits.pow(2), outputs.embedding)
    with pytest.raises(ValueError, match="not an affine function"):
        ViMScore().fit(squared, torch.zeros(200, dtype=torch.long))


@pytest.mark.parametrize("dim", [0, 10])
def test_subspace_dimension_must_leave_a_residual(head, dim):
    with pytest.raises(ValueError, match=r"subspace dimension in \[1, 9\]"):
        ViMScore(dim=dim).fit(linear_outputs(50, 0, head), torch.zeros(50, dtype=torch.long))


def test_default_dimension_follows_vim():
    assert [principal_dimension(w) for w in (64, 512, 768, 2048)] == [32, 256, 512, 1000]


def test_unfitted_use_raises(head):
    with pytest.raises(NotFittedError, match="ViMScore instance is not fitted yet"):
        ViMScore()(linear_outputs(5, 0, head))


def test_vim_names_nan_logits_and_an_ensembles_outputs():
    head = torch.nn.Linear(10, 4)
    outputs = linear_outputs(100, 0, head)
    bad = ModelOutputs(outputs.logits.clone(), outputs.embedding)
    bad.logits[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite training logits"):
        ViMScore(dim=3).fit(bad, torch.zeros(100, dtype=torch.long))
    members = torch.stack([outputs.logits, outputs.logits], dim=1)
    ensemble = ModelOutputs(outputs.logits, outputs.embedding, members)
    with pytest.raises(ValueError, match=r"one linear head.*DeepEnsemble"):
        ViMScore(dim=3).fit(ensemble, torch.zeros(100, dtype=torch.long))
