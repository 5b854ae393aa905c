"""Post-hoc uncertainty estimators fitted on held-out data."""

from torch_deup.post_processing.base import PostProcessing
from torch_deup.post_processing.deup import DEUP

__all__ = ["DEUP", "PostProcessing"]
