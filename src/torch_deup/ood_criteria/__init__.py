"""Out-of-distribution scores read from model outputs; higher = more likely OOD."""

from torch_deup.ood_criteria.base import OODCriterion
from torch_deup.ood_criteria.deup import DEUPCriterion
from torch_deup.ood_criteria.embedding_based import (
    FeatureCriterion,
    GDACriterion,
    KNNCriterion,
    LayerClassRangeCriterion,
    LayerRangeCriterion,
    LayerStatisticsCriterion,
    MahalanobisCriterion,
    ViMCriterion,
)
from torch_deup.ood_criteria.output_based import (
    EnergyCriterion,
    EntropyCriterion,
    MaxLogitCriterion,
    MaxSoftmaxCriterion,
    MutualInformationCriterion,
    class_logits,
)
from torch_deup.ood_criteria.registry import CRITERIA, get_criterion

__all__ = [
    "CRITERIA",
    "DEUPCriterion",
    "EnergyCriterion",
    "EntropyCriterion",
    "FeatureCriterion",
    "GDACriterion",
    "KNNCriterion",
    "LayerClassRangeCriterion",
    "LayerRangeCriterion",
    "LayerStatisticsCriterion",
    "MahalanobisCriterion",
    "MaxLogitCriterion",
    "MaxSoftmaxCriterion",
    "MutualInformationCriterion",
    "OODCriterion",
    "ViMCriterion",
    "class_logits",
    "get_criterion",
]
