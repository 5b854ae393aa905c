"""DEUP's predicted error as an OOD score."""

from __future__ import annotations

from torch import Tensor

from torch_deup.ood_criteria.base import OODCriterion
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing.base import PostProcessing


class DEUPCriterion(OODCriterion):
    """The score of the fitted post-processing (DEUP's error predictor ``g``) on the outputs.

    The evaluation routine sets ``post_processing`` to its own when it has one (the criterion
    declares ``needs_post_processing``); a routine without one fits and uses the criterion's, given
    at construction, as is done outside a routine.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_deup.post_processing import DEUP
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> deup = DEUP(model=model, num_folds=2, max_epochs=2, progress=False)
        >>> deup = deup.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y)))
        >>> DEUPCriterion(deup)(deup.model_outputs(x[:5])).shape
        torch.Size([5])
    """

    name = "DEUP"
    needs_post_processing = True

    def __init__(self, post_processing: PostProcessing | None = None) -> None:
        self.post_processing = post_processing

    def __call__(self, outputs: ModelOutputs) -> Tensor:
        if self.post_processing is None:
            raise ValueError(
                "DEUPCriterion scores with a fitted post-processing, but `post_processing` is None. "
                "Pass post_processing=DEUP(...) to the routine, which sets it, or set "
                "`criterion.post_processing = deup` yourself."
            )
        return self.post_processing.score_outputs(outputs)
