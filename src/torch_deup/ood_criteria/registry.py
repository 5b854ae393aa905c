"""OOD criteria by name, as routines accept them (``ood_criterion="msp"``)."""

from __future__ import annotations

from torch_deup.ood_criteria.base import OODCriterion
from torch_deup.ood_criteria.deup import DEUPCriterion
from torch_deup.ood_criteria.embedding_based import (
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
)

CRITERIA: dict[str, type[OODCriterion]] = {
    "msp": MaxSoftmaxCriterion,
    "logit": MaxLogitCriterion,
    "energy": EnergyCriterion,
    "entropy": EntropyCriterion,
    "deup": DEUPCriterion,
    "mahalanobis": MahalanobisCriterion,
    "knn": KNNCriterion,
    "gda": GDACriterion,
    "vim": ViMCriterion,
    "layer_stats": LayerStatisticsCriterion,
    "layer_range": LayerRangeCriterion,
    "layer_class_range": LayerClassRangeCriterion,
    "mutual_information": MutualInformationCriterion,
}


def get_criterion(spec: str | OODCriterion) -> OODCriterion:
    """A fresh criterion with default arguments for a name (case-insensitive); instances pass through.

    Example:
        >>> get_criterion("MSP").name
        'MSP'
    """
    if isinstance(spec, OODCriterion):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"Expected an OOD criterion name or an OODCriterion, but got a {type(spec).__name__}."
        )
    if spec.lower() not in CRITERIA:
        raise ValueError(
            f"Unknown OOD criterion {spec!r}. Expected one of {', '.join(map(repr, CRITERIA))}, "
            "or an OODCriterion instance."
        )
    return CRITERIA[spec.lower()]()
