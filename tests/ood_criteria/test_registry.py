import pytest

from torch_deup.ood_criteria import (
    DEUPCriterion,
    EnergyCriterion,
    EntropyCriterion,
    GDACriterion,
    KNNCriterion,
    LayerClassRangeCriterion,
    LayerRangeCriterion,
    LayerStatisticsCriterion,
    MahalanobisCriterion,
    MaxLogitCriterion,
    MaxSoftmaxCriterion,
    MutualInformationCriterion,
    ViMCriterion,
    get_criterion,
)

NAMES = {
    "msp": (MaxSoftmaxCriterion, "MSP"),
    "logit": (MaxLogitCriterion, "MaxLogit"),
    "energy": (EnergyCriterion, "Energy"),
    "entropy": (EntropyCriterion, "Entropy"),
    "deup": (DEUPCriterion, "DEUP"),
    "mahalanobis": (MahalanobisCriterion, "Mahalanobis"),
    "knn": (KNNCriterion, "KNN"),
    "gda": (GDACriterion, "GDA"),
    "vim": (ViMCriterion, "ViM"),
    "layer_stats": (LayerStatisticsCriterion, "LayerStats"),
    "layer_range": (LayerRangeCriterion, "LayerRange"),
    "layer_class_range": (LayerClassRangeCriterion, "LayerClassRange"),
    "mutual_information": (MutualInformationCriterion, "MutualInformation"),
}


@pytest.mark.parametrize("spec", [*NAMES, *(name.upper() for name in NAMES)])
def test_names_give_fresh_instances(spec):
    cls, display = NAMES[spec.lower()]
    first, second = get_criterion(spec), get_criterion(spec)
    assert type(first) is cls
    assert first.name == display
    assert first is not second


def test_instance_passes_through():
    criterion = KNNCriterion(k=3)
    assert get_criterion(criterion) is criterion


def test_unknown_name_lists_valid_ones():
    expected = r"Unknown OOD criterion 'odin'\. Expected one of 'msp', 'logit', .*'gda', 'vim'"
    with pytest.raises(ValueError, match=expected):
        get_criterion("odin")


def test_wrong_type_is_rejected():
    with pytest.raises(TypeError, match="criterion name or an OODCriterion, but got a int"):
        get_criterion(3)
