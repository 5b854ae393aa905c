import io

import pytest
import torch

from torch_deup.ood_criteria import (
    CRITERIA,
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
from torch_deup.outputs import ModelOutputs

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


@pytest.mark.parametrize("name", [name for name, cls in CRITERIA.items() if cls.needs_fit])
def test_a_fitted_criterion_loads_into_a_fresh_one_and_scores_the_same(name):
    gen = torch.Generator().manual_seed(0)
    targets = torch.arange(120) % 3
    head = torch.randn(6, 3, generator=gen)  # ViM reads the logits as a linear head's output
    embedding = torch.randn(120, 6, generator=gen) + 2.0 * torch.nn.functional.one_hot(targets, 6)
    query_embedding = torch.randn(9, 6, generator=gen) * 3
    train = ModelOutputs(embedding @ head, embedding, None, torch.randn(120, 4, generator=gen))
    query = ModelOutputs(query_embedding @ head, query_embedding, None, torch.randn(9, 4, generator=gen) * 3)
    fitted = get_criterion(name).fit(train, targets)
    fresh = get_criterion(name)
    fresh.load_state_dict(torch.load(save(fitted.state_dict()), weights_only=True))
    assert fresh.fitted
    assert torch.equal(fresh(query), fitted(query))


def save(state: dict) -> io.BytesIO:
    """``state`` through torch.save, as a checkpoint carries it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_a_criterion_without_a_fit_has_no_state_and_refuses_one():
    criterion = get_criterion("msp")
    assert criterion.state_dict() == {}
    criterion.load_state_dict({})
    with pytest.raises(ValueError, match=r"MaxSoftmaxCriterion learns nothing from fit.*'bank_'"):
        criterion.load_state_dict({"bank_": torch.zeros(2)})


def test_a_state_fitted_with_other_settings_is_refused():
    gen = torch.Generator().manual_seed(0)
    train = ModelOutputs(torch.randn(50, 3, generator=gen), torch.randn(50, 4, generator=gen))
    state = KNNCriterion(k=5).fit(train, torch.arange(50) % 3).state_dict()
    with pytest.raises(ValueError, match=r"fitted with k=5 \(this one: 7\)"):
        KNNCriterion(k=7).load_state_dict(state)
