import pytest
import torch

from torch_deup.ood_criteria import DEUPCriterion
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing.base import PostProcessing


class RowNorm(PostProcessing):
    """A stand-in post-processing whose score is the embedding's norm."""

    def fit(self, cal_loader, train_loader=None):
        return self

    def fit_outputs(self, cal_outputs, cal_targets, train_outputs=None, train_targets=None):
        return self

    def score_outputs(self, outputs):
        return outputs.embedding.norm(dim=1)

    @property
    def is_fitted(self):
        return True


def test_scores_come_from_the_post_processing():
    outputs = ModelOutputs(torch.zeros(2, 3), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    criterion = DEUPCriterion()
    assert criterion.needs_post_processing
    assert not criterion.needs_fit
    criterion.post_processing = RowNorm()
    torch.testing.assert_close(criterion(outputs), torch.tensor([5.0, 1.0]))


def test_missing_post_processing_raises():
    with pytest.raises(ValueError, match="`post_processing` is None"):
        DEUPCriterion()(ModelOutputs(torch.zeros(2, 3)))
