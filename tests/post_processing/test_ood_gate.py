import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.models import conv_net
from torch_deup.features import ViMScore
from torch_deup.features.base import feature_matrix
from torch_deup.features.density import GaussianDensity
from torch_deup.features.distance import KNNDistance
from torch_deup.features.layers import LayerRange, LayerStatistics
from torch_deup.features.outputs import OutputStatistics
from torch_deup.models import DeepEnsemble
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.ood_gate import OODGate, RangeGate, TailEvidence
from torch_deup.routines import ClassificationRoutine


def scores(n: int, shift: float, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) + shift


def test_evidence_is_minus_log_conformal_p_value_then_linear_beyond_the_calibration():
    cal = torch.tensor([3.0, 1.0, 2.0, 0.0])
    got = TailEvidence().fit(cal).evidence(torch.tensor([-1.0, 1.0, 2.5, 3.0, 3.0 + 2 * cal.std()]))
    # (1 + #{cal >= s}) / (n + 1): 5/5, 4/5, 2/5, 2/5, then 1/5 and two standard deviations beyond
    expected = -np.log([5 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5]) + np.array([0, 0, 0, 0, 2.0])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("prior", [0.1, 0.5])
def test_fit_is_the_weighted_logistic_regression_sklearn_finds(prior):
    cal, outliers = scores(300, 0.0, 0), scores(200, 1.5, 1)
    gate = OODGate(prior).fit(cal, outliers)
    t = torch.cat([gate.evidence(cal), gate.evidence(outliers)]).numpy()[:, None]
    labels = np.r_[np.zeros(300), np.ones(200)]
    weight = np.r_[np.full(300, (1 - prior) / 300), np.full(200, prior / 200)]
    reference = LogisticRegression(penalty=None, tol=1e-10, max_iter=10_000)
    reference.fit(t, labels, sample_weight=weight * 500)
    assert gate.slope_.item() == pytest.approx(reference.coef_[0, 0], rel=1e-3)
    assert gate.intercept_.item() == pytest.approx(reference.intercept_[0], rel=1e-3, abs=1e-4)


def test_probability_grows_with_the_score_and_with_the_prior():
    cal, outliers = scores(300, 0.0, 0), scores(200, 2.0, 1)
    query = torch.linspace(-2, 6, 50)
    low, high = (
        OODGate(0.05).fit(cal, outliers).predict(query),
        OODGate(0.5).fit(cal, outliers).predict(query),
    )
    assert (low.diff() >= 0).all()
    assert (high >= low).all()
    assert low[-1] > 0.9


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="prior"):
        OODGate(prior=1.0)
    with pytest.raises(ValueError, match="at least 2 finite calibration"):
        OODGate().fit(torch.tensor([1.0]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match=r"at least 2 finite calibration.*NaN or inf"):
        OODGate().fit(torch.tensor([1.0, float("nan")]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="at least 1 finite outlier"):
        OODGate().fit(torch.tensor([1.0, 2.0]), torch.tensor([]))
    with pytest.raises(ValueError, match=r"at least 1 finite outlier.*NaN or inf"):
        OODGate().fit(torch.tensor([1.0, 2.0]), torch.tensor([float("inf")]))


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def ensemble_model() -> nn.Module:
    return DeepEnsemble([linear_model(), nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))]).eval()


def loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 3), batch_size=32)


# the gate alone: no evidence multiplies it
FAST = {"max_epochs": 5, "progress": False, "held_out_classes": 2, "ood_prior": 0.1, "knn_weight": 0}


def test_deup_mixes_the_gate_into_g_as_cost_times_pi_plus_the_rest_times_g():
    model = linear_model()
    deup = DEUP(model=model, **FAST).fit(loader(90, 0), train_loader=loader(150, 1))
    assert deup.gate_ is not None
    x = torch.randn(40, 4) * 3
    outputs = deup.model_outputs(x)
    with torch.no_grad():
        g = deup.g_(deup.scaler_(feature_matrix(deup.features_, outputs)))
    pi = deup.gate_.predict(deup.gate_score_(outputs)[:, 0])
    torch.testing.assert_close(deup(x), deup.error_cost_ * pi + (1 - pi) * g)
    without = DEUP(model=model, **{**FAST, "ood_prior": 0}).fit(loader(90, 0), train_loader=loader(150, 1))
    assert without.gate_ is None


def test_the_gate_reads_vim_where_the_head_is_linear_else_the_knn_distance_and_needs_training_data():
    assert DEUP(model=linear_model(), **FAST).fit(loader(90, 0)).gate_ is None
    fit = {"train_loader": loader(150, 1)}
    assert isinstance(DEUP(model=linear_model(), **FAST).fit(loader(90, 0), **fit).gate_score_, ViMScore)
    ensemble = ensemble_model()
    narrow = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))  # no residual space for ViM
    x = torch.randn(20, 4)
    for model in (ensemble, narrow):
        deup = DEUP(model=model.eval(), **FAST).fit(loader(90, 0), **fit)
        # the gate reads g's own KNN column: no second pass over the bank
        assert deup.gate_ is not None
        assert deup.gate_score_ is None
        outputs = deup.model_outputs(x)
        knn = next(f for f in deup.features_ if type(f) is KNNDistance)
        column = feature_matrix(deup.features_, outputs)[:, deup.gate_column_]
        torch.testing.assert_close(column, knn(outputs)[:, 0])


def test_deup_save_load_keeps_the_gate(tmp_path):
    model = linear_model()
    deup = DEUP(model=model, **FAST).fit(loader(90, 0), train_loader=loader(150, 1))
    deup.save(tmp_path / "deup.pt")
    reloaded = DEUP.load(tmp_path / "deup.pt", model=model)
    x = torch.randn(30, 4) * 3
    assert reloaded.gate_ is not None
    assert torch.equal(deup(x), reloaded(x))


def test_no_extra_rows_means_no_gate():
    deup = DEUP(
        model=linear_model(),
        held_out_classes=0,
        virtual_outliers=0,
        ood_prior=0.1,
        max_epochs=3,
        progress=False,
    )
    assert deup.fit(loader(90, 0), train_loader=loader(150, 1)).gate_ is None


def test_the_shared_knn_column_is_what_the_gate_mixes_in():
    torch.manual_seed(0)
    narrow = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3)).eval()
    deup = DEUP(model=narrow, **FAST).fit(loader(90, 0), train_loader=loader(150, 1))
    outputs = deup.model_outputs(torch.randn(40, 4) * 3)
    x = feature_matrix(deup.features_, outputs)
    with torch.no_grad():
        g = deup.g_(deup.scaler_(x))
    pi = deup.gate_.predict(x[:, deup.gate_column_])
    torch.testing.assert_close(deup.score_outputs(outputs), deup.error_cost_ * pi + (1 - pi) * g)


def test_range_gate_is_zero_up_to_the_edge_then_one_minus_exp_of_the_standard_deviations_beyond():
    cal = torch.arange(101, dtype=torch.float)  # 0, 1, ..., 100
    sd = cal.double().std().item()
    query = torch.tensor([50.0, 100.0, 100.0 + sd, 100.0 + 3 * sd])
    np.testing.assert_allclose(
        RangeGate().fit(cal).predict(query).numpy(), [0, 0, 1 - np.exp(-1), 1 - np.exp(-3)], rtol=1e-5
    )
    # tail 0.1: the edge is the 90% quantile, 90, so one in ten calibration rows is lifted
    tail = RangeGate(tail=0.1).fit(cal)
    assert tail.edge_.item() == pytest.approx(90.0)
    assert (tail.predict(cal) > 0).sum().item() == 10
    with pytest.raises(ValueError, match="tail"):
        RangeGate(tail=1.0)
    with pytest.raises(ValueError, match="at least 2 finite"):
        RangeGate().fit(torch.tensor([1.0, float("inf")]))


def image_loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 1, 5, 5, generator=g), torch.arange(n) % 3), batch_size=32)


LAYER = {"max_epochs": 3, "progress": False, "held_out_classes": 2}


def conformal_evidence(cal: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """t = -log((1 + #{cal >= v}) / (n + 1)), plus the standard deviations beyond the largest."""
    cal, values = cal.double(), values.double()
    at_least = (cal[None, :] >= values[:, None]).sum(1)
    return -torch.log((1.0 + at_least) / (len(cal) + 1)) + torch.relu(values - cal.max()) / cal.std()


def log_evidence(t: torch.Tensor, weight: float, onset: float) -> torch.Tensor:
    """DEUP's log-evidence: from the onset on, relative to the larger of the onset and 1."""
    return weight * (t.clamp_min(onset) - max(onset, 1.0))


@pytest.mark.parametrize(
    ("ood_prior", "layer_gate", "layer_weight", "knn_weight", "onset", "distance"),
    [
        (0.0, True, 0.0, 0.0, 2.0, "mahalanobis"),
        (0.1, True, 0.0, 0.0, 2.0, "range"),
        (0.0, True, 0.5, 0.0, 0.0, "mahalanobis"),
        (0.1, True, 0.7, 0.0, 0.5, "range"),
        (0.0, False, 0.5, 0.0, 2.0, "mahalanobis"),
        (0.0, False, 0.625, 0.25, 0.0, "mahalanobis"),
        (0.0, False, 1.0, 0.25, 2.0, "range"),
        (0.0, False, 1.0, 0.5, 1.5, "range"),
        (0.0, False, 1.25, 0.5, 2.5, "class_range"),
        (0.1, True, 0.5, 0.25, 0.0, "class_range"),
        (0.1, True, 0.0, 0.4, 1.5, "mahalanobis"),
    ],
)
def test_deup_mixes_the_gates_as_independent_evidence_then_multiplies_by_the_layer_and_knn_evidence(
    ood_prior, layer_gate, layer_weight, knn_weight, onset, distance
):
    model = conv_net()
    weights = {"layer_weight": layer_weight, "knn_weight": knn_weight, "evidence_onset": onset}
    deup = DEUP(
        model=model, ood_prior=ood_prior, layer_gate=layer_gate, layer_distance=distance, **weights, **LAYER
    )
    deup.fit(image_loader(90, 0), image_loader(150, 1))
    assert isinstance(deup.layer_, {"mahalanobis": LayerStatistics}.get(distance, LayerRange))
    assert getattr(deup.layer_, "per_class", False) == (distance == "class_range")
    assert (deup.gate_ is not None) == (ood_prior > 0)
    assert (deup.layer_gate_ is not None) == layer_gate
    assert (deup.layer_evidence_ is not None) == (layer_weight > 0)
    assert (deup.knn_evidence_ is not None) == (knn_weight > 0)
    x = torch.randn(40, 1, 5, 5) * torch.linspace(0.5, 4, 40)[:, None, None, None]
    outputs = deup.model_outputs(x)
    with torch.no_grad():
        g = deup.g_(deup.scaler_(feature_matrix(deup.features_, outputs)))
    distance = deup.layer_(outputs)[:, 0].double()
    cal_outputs = deup.model_outputs(torch.cat([b[0] for b in image_loader(90, 0)]))
    cal = deup.layer_(cal_outputs)[:, 0].double()
    sd = cal.std()
    keep = torch.ones(len(x), dtype=torch.float64)
    if layer_gate:
        # the edge is the 99% quantile of the calibration rows' distance
        edge = torch.quantile(cal, 0.99)
        assert deup.layer_gate_.edge_.item() == pytest.approx(edge.item(), rel=1e-5)
        keep = torch.exp(-torch.relu(distance - edge) / sd)
        # the inputs exercise both sides of the edge
        assert (keep < 1).any()
        assert (keep == 1).any()
    if deup.gate_ is not None:
        keep = keep * (1 - deup.gate_.predict(deup.gate_score_(outputs)[:, 0]))
    expected = deup.error_cost_ * (1 - keep) + keep * g if deup.gate_ or layer_gate else g.double()
    t_layer = conformal_evidence(cal, distance)
    # the KNN evidence reads g's own KNN column, among the calibration rows'
    knn = next(f for f in deup.features_ if type(f) is KNNDistance)
    t_knn = conformal_evidence(knn(cal_outputs)[:, 0], knn(outputs)[:, 0])
    # the evidence starts at the onset; below an onset of 1 or more, an input keeps its g
    if onset > 0:
        assert (t_layer < onset).any()
        assert (t_layer > onset).any()
    evidence = log_evidence(t_layer, layer_weight, onset) + log_evidence(t_knn, knn_weight, onset)
    # the log score is the same score, uncapped
    torch.testing.assert_close(
        deup.log_score(x), torch.log(expected.double()) + evidence, rtol=1e-5, atol=1e-5
    )
    # capped where float32 ends
    expected = (expected * torch.exp(evidence)).clamp(max=torch.finfo(torch.float32).max)
    torch.testing.assert_close(deup(x), expected.float(), rtol=1e-5, atol=1e-6)


def test_the_log_score_ranks_the_inputs_that_tie_at_the_scores_cap():
    model = conv_net()
    deup = DEUP(model=model, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    x = torch.randn(20, 1, 5, 5)
    far = x * torch.logspace(4, 6, 20)[:, None, None, None]  # ever farther: t grows with the scale
    capped = deup(far)
    assert (capped == torch.finfo(torch.float32).max).sum() >= 10
    log_scores = deup.log_score(far)
    assert log_scores.dtype == torch.float64
    assert not log_scores.requires_grad
    assert not capped.requires_grad
    assert len(torch.unique(log_scores)) == 20
    # below the cap, exactly the log of the score
    typical = torch.randn(20, 1, 5, 5)
    torch.testing.assert_close(deup.log_score(typical).exp().float(), deup(typical), rtol=1e-6, atol=0)


def test_the_layer_evidence_keeps_far_inputs_finite_and_ranked_above_typical_ones(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    x = torch.randn(20, 1, 5, 5)
    typical, far = deup(x), deup(x * 1e4)  # unnormalised inputs: t in the millions
    assert torch.isfinite(far).all()
    assert far.min() > typical.max()
    assert far.max() == torch.finfo(torch.float32).max  # capped, not inf
    # the weights are the ones fitted with: a later edit changes nothing until a refit, saved or not
    deup.layer_weight, deup.knn_weight, deup.evidence_onset = 2.0, 3.0, 0.0
    assert torch.equal(deup(x), typical)
    deup.save(tmp_path / "deup.pt")
    assert torch.equal(DEUP.load(tmp_path / "deup.pt", model=model)(x), typical)


def test_no_layer_terms_when_switched_off_without_stages_or_without_training_data():
    def layer_terms(deup: DEUP) -> tuple:
        return deup.layer_, deup.layer_gate_, deup.layer_evidence_

    off = DEUP(model=conv_net(), layer_gate=False, layer_weight=0, **LAYER)
    assert layer_terms(off.fit(image_loader(90, 0), image_loader(150, 1))) == (None, None, None)
    # by default: the evidence without the gate
    default = DEUP(model=conv_net(), **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    assert default.layer_gate_ is None
    assert default.layer_evidence_ is not None
    assert layer_terms(DEUP(model=conv_net(), **LAYER).fit(image_loader(90, 0))) == (None, None, None)
    mlp = DEUP(model=linear_model(), layer_gate=True, **LAYER).fit(loader(90, 0), loader(150, 1))
    assert layer_terms(mlp) == (None, None, None)


@pytest.mark.parametrize("layer_gate", [False, True])
def test_layer_terms_save_load_is_bit_exact_and_mismatched_outputs_are_refused(tmp_path, layer_gate):
    model = conv_net()
    deup = DEUP(model=model, layer_gate=layer_gate, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    deup.save(tmp_path / "deup.pt")
    reloaded = DEUP.load(tmp_path / "deup.pt", model=model)
    assert isinstance(reloaded.layer_, LayerRange)
    assert reloaded.layer_.per_class
    assert reloaded.layer_distance == "class_range"
    x = torch.randn(30, 1, 5, 5) * 3
    assert torch.equal(deup(x), reloaded(x))
    outputs = deup.model_outputs(x)
    with pytest.raises(ValueError, match="layer_stats is None"):
        deup.score_outputs(ModelOutputs(outputs.logits, outputs.embedding))
    cal = deup.model_outputs(torch.randn(30, 1, 5, 5))
    train = deup.model_outputs(torch.randn(60, 1, 5, 5))
    with pytest.raises(ValueError, match="training outputs do not"):
        DEUP(**LAYER).fit_outputs(
            cal, torch.arange(30) % 3, ModelOutputs(train.logits, train.embedding), torch.arange(60) % 3
        )
    with pytest.raises(ValueError, match="layer_tail"):
        DEUP(layer_tail=1.0).fit_outputs(cal, torch.arange(30) % 3)
    with pytest.raises(ValueError, match=r"`layer_distance` in \('class_range', 'range', 'mahalanobis'\)"):
        DEUP(layer_distance="gram").fit_outputs(cal, torch.arange(30) % 3)
    with pytest.raises(ValueError, match="`layer_distance`"):
        DEUP(layer_distance=["range"]).fit_outputs(cal, torch.arange(30) % 3)
    for weight in (-0.5, float("nan"), float("inf"), True, "0.5"):
        for name in ("layer_weight", "knn_weight", "evidence_onset"):
            with pytest.raises(ValueError, match=name):
                DEUP(**{name: weight}).fit_outputs(cal, torch.arange(30) % 3)


def test_named_layers_reach_the_gate_and_a_routine_must_record_the_same():
    model = conv_net()
    deup = DEUP(model=model, layers=["1"], **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    assert deup.layer_.low_.shape == (3, 12)  # 3 classes; the second stage: 6 means, 6 deviations
    assert deup(torch.randn(5, 1, 5, 5)).shape == (5,)
    with pytest.raises(ValueError, match="Give both the same `layers`"):
        ClassificationRoutine(model, 3, post_processing=DEUP(layers=["1"]), layers=["0"])
    post = DEUP(layers=["1"])
    assert ClassificationRoutine(model, 3, post_processing=post, ood_criterion="deup").layers == ["1"]
    # no criterion scores with DEUP: nothing reads the statistics, none are recorded
    assert ClassificationRoutine(model, 3, post_processing=post, ood_criterion="msp").layers is None
    with pytest.raises(ValueError, match="`layers`"):
        DEUP(layers=[1]).fit_outputs(ModelOutputs(torch.randn(10, 3)), torch.arange(10) % 3)


def test_deup_records_layer_statistics_only_when_it_reads_them():
    model = conv_net()
    assert DEUP(task="regression").recorded_layers is None
    assert DEUP(layer_weight=0.0).recorded_layers is None
    assert DEUP(layer_weight=0.0, layer_gate=True, layers="1").recorded_layers == ["1"]
    reading = DEUP(model=model, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    assert reading.layer_ is not None
    assert reading.recorded_layers == "auto"
    # fitted without training outputs, there is no evidence, but the parameters still ask for it:
    # a refit with them must record the statistics again
    alone = DEUP(model=model, **LAYER).fit(image_loader(90, 0))
    assert alone.layer_ is None
    assert alone.fit(image_loader(90, 0), image_loader(150, 1)).layer_ is not None
    # a loaded estimator fitted with the evidence reads them whatever its parameters say
    reading.layer_weight = 0.0
    assert reading.recorded_layers == "auto"
    assert DEUP(model=model, layer_weight=0.0).model_outputs(torch.randn(4, 1, 5, 5)).layer_stats is None


def load_older_save(
    deup: DEUP, model: nn.Module, tmp_path, params: tuple[str, ...], state_keys: tuple
) -> DEUP:
    """``deup`` saved, then loaded from what an older version wrote: its file without the parameters
    ``params`` and the state entries ``state_keys`` (a key, or a path of keys into nested entries)."""
    deup.save(tmp_path / "deup.pt")
    state = torch.load(tmp_path / "deup.pt", weights_only=True)
    for key in params:
        del state["params"][key]
    for path in state_keys:
        *parents, last = (path,) if isinstance(path, str) else path
        entry = state
        for parent in parents:
            entry = entry[parent]
        del entry[last]
    torch.save(state, tmp_path / "old.pt")
    return DEUP.load(tmp_path / "old.pt", model=model)


def test_a_save_from_before_the_layer_gate_loads_without_one_and_refits_without_one(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    # what the version before the layer gate wrote: no layer terms, their parameters absent, no
    # top-level cost
    params = ("layer_gate", "layer_tail", "layer_weight", "layers")
    old = load_older_save(deup, model, tmp_path, params, ("layer_gate", "error_cost"))
    assert (old.layer_, old.layer_gate_, old.layer_evidence_) == (None, None, None)
    assert (old.layer_gate, old.layer_weight) == (False, 0.0)
    old.fit(image_loader(90, 0), image_loader(150, 1))
    assert (old.layer_, old.layer_gate_, old.layer_evidence_) == (None, None, None)  # nor after a refit
    assert deup.layer_evidence_ is not None


def test_a_save_from_before_the_layer_evidence_loads_with_its_gate_alone(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, layer_gate=True, layer_weight=0, **LAYER)
    deup.fit(image_loader(90, 0), image_loader(150, 1))
    # what the version with the gate but before the evidence wrote
    old = load_older_save(deup, model, tmp_path, ("layer_weight",), (("layer_gate", "evidence"),))
    assert old.layer_weight == 0.0
    assert old.layer_evidence_ is None
    x = torch.randn(30, 1, 5, 5) * 3
    assert torch.equal(old(x), deup(x))


def test_a_deup_without_gates_survives_save_load_save(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, **LAYER).fit(image_loader(90, 0))  # no training data: no gate
    deup.save(tmp_path / "a.pt")
    DEUP.load(tmp_path / "a.pt", model=model).save(tmp_path / "b.pt")
    x = torch.randn(10, 1, 5, 5)
    assert torch.equal(DEUP.load(tmp_path / "b.pt", model=model)(x), deup(x))


def test_the_knn_evidence_needs_a_classifier_with_training_data_and_a_knn_feature():
    def knn_terms(deup: DEUP) -> tuple:
        return deup.knn_evidence_, deup.knn_column_

    fast = {"max_epochs": 3, "progress": False}
    default = DEUP(model=linear_model(), **fast).fit(loader(90, 0), train_loader=loader(150, 1))
    knn = next(f for f in default.features_ if type(f) is KNNDistance)
    outputs = default.model_outputs(torch.randn(10, 4))
    column = feature_matrix(default.features_, outputs)[:, default.knn_column_]
    torch.testing.assert_close(column, knn(outputs)[:, 0])
    assert default.knn_evidence_.calibration_.shape == (90,)  # the calibration rows, not the extra rows
    off = DEUP(model=linear_model(), knn_weight=0, **fast).fit(loader(90, 0), train_loader=loader(150, 1))
    assert knn_terms(off) == (None, None)
    no_knn = DEUP(model=linear_model(), features=[OutputStatistics(), GaussianDensity()], **fast)
    assert knn_terms(no_knn.fit(loader(90, 0), train_loader=loader(150, 1))) == (None, None)
    regression = DEUP("regression", nn.Linear(4, 1), features=[KNNDistance(k=3)], **fast)
    data = TensorDataset(torch.randn(60, 4), torch.randn(60))
    fitted = regression.fit(DataLoader(data, batch_size=32), train_loader=DataLoader(data, batch_size=32))
    assert knn_terms(fitted) == (None, None)


def test_a_save_from_before_the_evidence_onset_scores_as_before_with_w_times_t_minus_one(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, evidence_onset=0.0, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    old = load_older_save(deup, model, tmp_path, ("evidence_onset",), ("evidence_onset",))
    x = torch.randn(30, 1, 5, 5) * 2
    assert old.evidence_onset == 0.0
    assert torch.equal(old(x), deup(x))
    # the default onset lifts only the inputs in the calibration rows' tail: the others keep g
    onset = DEUP(model=model, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    assert not torch.equal(onset(x), deup(x))


def test_a_save_from_before_the_knn_evidence_loads_and_refits_without_it(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, knn_weight=0, **LAYER).fit(image_loader(90, 0), image_loader(150, 1))
    # what the version before the KNN evidence wrote
    old = load_older_save(deup, model, tmp_path, ("knn_weight",), ("knn_evidence",))
    assert (old.knn_weight, old.knn_evidence_) == (0.0, None)
    assert old.fit(image_loader(90, 0), image_loader(150, 1)).knn_evidence_ is None


@pytest.mark.parametrize(
    ("make_model", "features", "ood_prior"),
    [(ensemble_model, None, 0.1), (linear_model, [KNNDistance(k=3), OutputStatistics()], 0.0)],
    ids=["ensemble, the gate sharing the column", "KNN first among custom features"],
)
def test_the_knn_evidence_reads_g_s_knn_column_wherever_it_lies(make_model, features, ood_prior):
    model = make_model()
    fast = {"max_epochs": 3, "progress": False, "held_out_classes": 2}
    fast |= {"knn_weight": 0.4, "evidence_onset": 2.5}
    deup = DEUP(model=model, features=features, ood_prior=ood_prior, **fast)
    deup.fit(loader(90, 0), train_loader=loader(150, 1))
    knn = next(f for f in deup.features_ if type(f) is KNNDistance)
    if features is not None:
        assert deup.knn_column_ == 0
    if ood_prior > 0:
        assert deup.gate_column_ == deup.knn_column_  # the gate reads the same column
    outputs = deup.model_outputs(torch.randn(40, 4) * 3)
    cal_outputs = deup.model_outputs(torch.cat([b[0] for b in loader(90, 0)]))
    x = feature_matrix(deup.features_, outputs)
    with torch.no_grad():
        expected = deup.g_(deup.scaler_(x)).double()
    if deup.gate_ is not None:
        pi = deup.gate_.predict(x[:, deup.gate_column_]).double()
        expected = deup.error_cost_ * pi + (1 - pi) * expected
    t = conformal_evidence(knn(cal_outputs)[:, 0], knn(outputs)[:, 0])
    torch.testing.assert_close(
        deup.score_outputs(outputs), (expected * torch.exp(log_evidence(t, 0.4, 2.5))).float()
    )


def test_a_save_loads_with_the_gates_it_was_fitted_with_after_their_settings_are_edited(tmp_path):
    model = linear_model()
    deup = DEUP(model=model, **FAST).fit(loader(90, 0), train_loader=loader(150, 1))
    x = torch.randn(20, 4) * 3
    before = deup(x)
    deup.ood_prior = 0.0  # valid for DEUP (no gate on the next fit), not for the fitted gate
    deup.save(tmp_path / "deup.pt")
    loaded = DEUP.load(tmp_path / "deup.pt", model=model)
    assert loaded.gate_.prior == 0.1
    assert torch.equal(loaded(x), before)
    # files saved before the gate kept its prior load with the saved parameter
    deup.ood_prior = 0.1
    old = load_older_save(deup, model, tmp_path, (), (("gate", "state", "prior"),))
    assert old.gate_.prior == 0.1
    assert torch.equal(old(x), before)


def test_a_save_from_before_the_range_distance_refits_with_the_mahalanobis_one(tmp_path):
    model = conv_net()
    deup = DEUP(model=model, layer_distance="mahalanobis", **LAYER)
    deup.fit(image_loader(90, 0), image_loader(150, 1))
    deup.save(tmp_path / "deup.pt")
    state = torch.load(tmp_path / "deup.pt", weights_only=True)
    del state["params"]["layer_distance"]  # as files saved before the parameter existed
    torch.save(state, tmp_path / "old.pt")
    old = DEUP.load(tmp_path / "old.pt", model=model)
    assert old.layer_distance == "mahalanobis"
    assert isinstance(old.layer_, LayerStatistics)
    x = torch.randn(10, 1, 5, 5)
    assert torch.equal(old(x), deup(x))
    assert DEUP.load(tmp_path / "deup.pt", model=model).layer_distance == "mahalanobis"
    assert DEUP(model=model, **LAYER).layer_distance == "class_range"
