import numpy as np
import torch
from scipy.special import logsumexp, softmax

from torch_deup.features.outputs import OutputStatistics, RegressionOutputs
from torch_deup.outputs import ModelOutputs


def numpy_statistics(logits: np.ndarray) -> np.ndarray:
    probs = softmax(logits, axis=1)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    entropy = -(probs * np.log(probs)).sum(1) / np.log(logits.shape[1])
    return np.stack(
        [logits.max(1), top2[:, 0], entropy, logsumexp(logits, axis=1), top2[:, 0] - top2[:, 1]], 1
    )


def test_the_five_statistics_match_their_formulas():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3
    ours = OutputStatistics()(ModelOutputs(logits)).numpy()
    np.testing.assert_allclose(ours, numpy_statistics(logits.double().numpy()), rtol=1e-5, atol=1e-6)


def test_an_ensembles_max_logit_and_energy_are_its_members_means():
    members = torch.randn(30, 3, 4, generator=torch.Generator().manual_seed(1)) * 2
    # an ensemble's logits: the log of its members' mean probabilities, whose logsumexp is 0
    logits = members.softmax(2).mean(1).log()
    stats = OutputStatistics()(ModelOutputs(logits, members=members)).numpy()
    m = members.double().numpy()
    np.testing.assert_allclose(stats[:, 0], m.max(2).mean(1), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 3], logsumexp(m, axis=2).mean(1), rtol=1e-5)
    # the probability columns read the ensemble's own prediction
    np.testing.assert_allclose(stats[:, 1], np.exp(logits.double().numpy()).max(1), rtol=1e-5)


def test_a_one_output_regressor_of_shape_n_gives_one_column():
    assert torch.equal(
        RegressionOutputs()(ModelOutputs(torch.tensor([1.0, 2.0]))), torch.tensor([[1.0], [2.0]])
    )
