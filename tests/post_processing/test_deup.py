import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.models import conv_net
from helpers.reference_deup import fit_reference_deup
from torch_deup.features import DropoutVariance, EnsembleDisagreement, NotFittedError, OutputStatistics
from torch_deup.models import DeepEnsemble
from torch_deup.outputs import ModelOutputs, OutputCapture, collect_outputs, evaluating
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.deup import per_sample_errors, stratified_folds

FAST = {"max_epochs": 8, "progress": False}


def mlp(in_dim: int = 4, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_dim, 16), nn.ReLU(), nn.Linear(16, num_classes))


def loader(n: int = 60, in_dim: int = 4, num_classes: int = 3, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, in_dim, generator=g)
    return DataLoader(TensorDataset(x, torch.arange(n) % num_classes), batch_size=batch_size)


def flipped_region_problem(n: int, seed: int):
    """Two blobs split by x0; the truth flips the label where x1 > 1, the model ignores x1.

    The model is confident everywhere, so its errors sit in a region only the embedding shows.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) * torch.tensor([1.0, 1.5])
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 1.0)).long()
    return x, y


def region_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        model[1].bias.zero_()
    return model


def test_tutorial_call_returns_one_nonnegative_score_per_sample():
    deup = DEUP(task="classification", model=mlp(), num_folds=5, hidden_dim=32, max_epochs=30, device="cpu")
    deup.progress = False
    deup.fit(loader())
    scores = deup(torch.randn(10, 4))
    assert scores.shape == (10,)
    assert (scores >= 0).all()
    assert deup.predict_proba(torch.randn(10, 4)).shape == (10, 3)


def test_g_finds_the_region_where_a_confident_model_is_wrong_better_than_the_reference():
    model = region_model()
    x_cal, y_cal = flipped_region_problem(2000, seed=0)
    x_test, y_test = flipped_region_problem(2000, seed=1)
    deup = DEUP(model=model, max_epochs=40, progress=False).fit(DataLoader(TensorDataset(x_cal, y_cal), 256))
    with torch.no_grad():
        true_error = F.cross_entropy(model(x_test), y_test, reduction="none")
        cal_logits, test_logits = model(x_cal), model(x_test)
    reference = fit_reference_deup(cal_logits, y_cal)(test_logits)
    ours = spearmanr(deup(x_test).numpy(), true_error.numpy()).statistic
    theirs = spearmanr(reference.numpy(), true_error.numpy()).statistic
    assert ours > 0.6
    assert ours > theirs + 0.2
    # the flipped region is ranked above the rest
    region = (x_test[:, 1] > 1.0).numpy()
    assert roc_auc_score(region, deup(x_test).numpy()) > 0.9


def test_training_data_features_let_g_score_unseen_inputs_above_confident_in_distribution_ones():
    """Four blobs; OOD far away, where the tanh network is as confident as in distribution."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])

    def blobs(n):
        y = torch.arange(n) % 4
        return centers[y] + torch.randn(n, 2, generator=g) * 0.7, y

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 4))
    x_train, y_train = blobs(2000)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    x_cal, y_cal = blobs(800)
    x_id, _ = blobs(500)
    x_ood = torch.randn(500, 2, generator=g) * 0.7 + torch.tensor([12.0, -8.0])
    is_ood = torch.cat([torch.zeros(500), torch.ones(500)]).numpy()
    cal = DataLoader(TensorDataset(x_cal, y_cal), 200)
    train = DataLoader(TensorDataset(x_train, y_train), 500)

    def auroc(deup):
        return roc_auc_score(is_ood, torch.cat([deup(x_id), deup(x_ood)]).numpy())

    with_train = auroc(DEUP(model=model, max_epochs=20, progress=False, held_out_classes=2).fit(cal, train))
    without_train = auroc(DEUP(model=model, max_epochs=20, progress=False).fit(cal))
    with torch.no_grad():
        msp = roc_auc_score(is_ood, -torch.cat([model(x_id), model(x_ood)]).softmax(1).max(1).values.numpy())
    assert msp < 0.5  # the network is more confident on the OOD blob than in distribution
    assert without_train < 0.5  # output statistics alone inherit that blindness
    assert with_train > 0.75  # density and distance features flip the ranking


def test_regression_ranks_large_errors_high():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1500, 1, generator=g) * 4 - 2
    y = x[:, 0] ** 2 + 0.05 * torch.randn(1500, generator=g)
    model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1))  # embedding = x, prediction ~ constant
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[1].weight.zero_()
        model[1].bias.fill_(1.0)
    deup = DEUP(task="regression", model=model, max_epochs=40, progress=False)
    deup.fit(DataLoader(TensorDataset(x[:1000], y[:1000]), 128))
    true_error = (y[1000:] - 1.0) ** 2
    assert spearmanr(deup(x[1000:]).numpy(), true_error.numpy()).statistic > 0.8


def test_binary_single_logit_error_is_binary_cross_entropy():
    logits = torch.tensor([[0.0], [2.0], [-1.0]])
    targets = torch.tensor([1, 0, 0])
    expected = torch.tensor([math.log(2), 2 + math.log1p(math.exp(-2)), math.log1p(math.exp(-1))])
    torch.testing.assert_close(per_sample_errors("classification", logits, targets), expected)


def test_same_seed_gives_identical_scores_and_another_seed_does_not():
    x = torch.randn(20, 4)
    a = DEUP(model=mlp(), seed=3, **FAST).fit(loader())(x)
    b = DEUP(model=mlp(), seed=3, **FAST).fit(loader())(x)
    c = DEUP(model=mlp(), seed=4, **FAST).fit(loader())(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_fit_leaves_the_global_random_stream_as_it_found_it():
    # fit_outputs: iterating a DataLoader draws its base seed from the global stream by itself
    outputs, targets = collect_outputs(mlp(), loader(), progress=False)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    DEUP(**FAST).fit_outputs(outputs, targets)
    assert torch.equal(torch.rand(3), expected)


def test_fit_leaves_the_cuda_generators_alone(monkeypatch):
    outputs, targets = collect_outputs(mlp(), loader(), progress=False)
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    DEUP(**FAST).fit_outputs(outputs, targets)
    assert calls == []


def test_fit_and_scoring_run_a_model_in_train_mode_in_eval_mode_and_leave_it_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    running_mean = model[1].running_mean.clone()
    deup = DEUP(model=model, **FAST).fit(loader())
    x = torch.randn(8, 4)
    first = deup(x)
    # eval mode: no dropout noise, batch statistics unused (a single sample scores as in a batch)
    assert torch.equal(deup(x), first)
    assert torch.allclose(deup(x[:1]), first[:1])
    assert model.training
    assert torch.equal(model[1].running_mean, running_mean)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    deup = DEUP(model=mlp(), **FAST).fit(loader())
    deup.save(tmp_path / "deup.pt")
    reloaded = DEUP.load(tmp_path / "deup.pt", model=mlp())
    x = torch.randn(30, 4)
    assert torch.equal(deup(x), reloaded(x))
    assert reloaded.hidden_dim == deup.hidden_dim


def test_a_loaded_estimator_keeps_custom_features_and_diagnostics_and_refits_as_the_original(tmp_path):
    deup = DEUP(model=mlp(), features=[OutputStatistics(include_logits=True)], **FAST).fit(loader())
    deup.save(tmp_path / "deup.pt")
    reloaded = DEUP.load(tmp_path / "deup.pt", model=mlp())
    assert torch.equal(reloaded.errors_, deup.errors_)
    assert torch.equal(reloaded.oof_predictions_, deup.oof_predictions_)
    x = torch.randn(30, 4)
    expected = DEUP(model=mlp(), features=[OutputStatistics(include_logits=True)], **FAST).fit(loader())(x)
    assert torch.equal(reloaded.fit(loader())(x), expected)
    assert [type(f) for f in reloaded.features_] == [OutputStatistics]


def test_a_state_loads_into_a_configured_estimator_whole_or_not_at_all():
    saved = DEUP(model=mlp(), held_out_classes=2, **FAST).fit(loader(), train_loader=loader(n=120))
    target = DEUP(model=mlp(), features=[OutputStatistics()], seed=5, **FAST)
    target.load_state_dict(saved.state_dict())
    # the saved estimator's parameters, its default features included, are the loaded one's
    assert target.features is None
    assert target.seed == saved.seed
    x = torch.randn(30, 4)
    assert torch.equal(target(x), saved(x))
    newer = saved.state_dict()
    newer["params"]["temperature"] = 2.0
    with pytest.raises(ValueError, match=r"\['temperature'\].*saved by a newer torch-deup"):
        target.load_state_dict(newer)
    broken = saved.state_dict()
    broken["params"]["seed"] = 123
    del broken["g"]["low"]
    fitted = DEUP(model=mlp(), **FAST).fit(loader())
    before = fitted(x)
    with pytest.raises(KeyError):
        fitted.load_state_dict(broken)
    assert fitted.seed == 0
    assert torch.equal(fitted(x), before)


def test_save_load_with_fitted_extractors_is_bit_exact(tmp_path):
    deup = DEUP(model=mlp(), held_out_classes=2, **FAST).fit(loader(), train_loader=loader(n=120))
    deup.save(tmp_path / "deup.pt")
    reloaded = DEUP.load(tmp_path / "deup.pt", model=mlp())
    x = torch.randn(30, 4)
    assert torch.equal(deup(x), reloaded(x))


def test_a_model_trained_with_dropout_adds_its_dropout_variance_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 3)).eval()
    deup = DEUP(model=model, held_out_classes=2, **FAST).fit(loader(), train_loader=loader(n=120))
    variance = [f for f in deup.features_ if isinstance(f, DropoutVariance)]
    assert len(variance) == 1
    assert variance[0].p == 0.25
    assert all(not isinstance(f, DropoutVariance) for f in DEUP(model=mlp()).default_features(120))
    deup.save(tmp_path / "deup.pt")
    x = torch.randn(30, 4)
    assert torch.equal(deup(x), DEUP.load(tmp_path / "deup.pt", model=model)(x))


def test_an_ensemble_adds_its_disagreement_and_round_trips(tmp_path):
    torch.manual_seed(0)
    ensemble = DeepEnsemble([mlp(), nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))]).eval()
    deup = DEUP(model=ensemble, held_out_classes=2, **FAST).fit(loader(), train_loader=loader(n=120))
    assert sum(isinstance(f, EnsembleDisagreement) for f in deup.features_) == 1
    # calibration rows, one held-out-class row each and half as many virtual outliers
    assert len(deup.errors_) == 60 + 60 + 30
    deup.save(tmp_path / "deup.pt")
    x = torch.randn(30, 4)
    assert torch.equal(deup(x), DEUP.load(tmp_path / "deup.pt", model=ensemble)(x))


def test_g_learns_that_disagreeing_members_mean_errors():
    def outputs(n: int, seed: int) -> tuple[ModelOutputs, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (n,), generator=g)
        agree = torch.arange(n) % 2 == 0
        # agreeing members are confident in the true class; disagreeing ones each pick a random class
        picks = torch.where(agree[:, None], y[:, None], torch.randint(0, 3, (n, 4), generator=g))
        members = 6.0 * F.one_hot(picks, 3).float()
        logits = members.softmax(2).mean(1).log()
        targets = torch.where(agree, y, torch.randint(0, 3, (n,), generator=g))
        return ModelOutputs(logits, members=members), targets

    deup = DEUP(features=[EnsembleDisagreement()], **FAST).fit_outputs(*outputs(400, 0))
    test, _ = outputs(200, 1)
    disagree = (torch.arange(200) % 2 == 1).float()
    assert roc_auc_score(disagree.numpy(), deup.score_outputs(test).numpy()) > 0.95


def test_an_ensemble_of_dropout_members_fits_without_one_heads_dropout_variance():
    torch.manual_seed(0)
    drop = [nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)) for _ in range(2)]
    deup = DEUP(model=DeepEnsemble(drop).eval(), held_out_classes=2, **FAST)
    deup.fit(loader(), train_loader=loader(n=120))
    assert not any(isinstance(f, DropoutVariance) for f in deup.features_)


@pytest.mark.parametrize("num_logits", [1, 2])
def test_binary_models_fit_with_training_data(num_logits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, num_logits)).eval()
    deup = DEUP(model=model, **FAST).fit(loader(num_classes=2), train_loader=loader(n=120, num_classes=2))
    scores = deup(torch.randn(10, 4))
    assert scores.shape == (10,)
    assert torch.isfinite(scores).all()


def test_a_failed_refit_leaves_the_estimator_unfitted():
    deup = DEUP(model=mlp(), **FAST).fit(loader())
    with pytest.raises(ValueError, match="class indices"):
        deup.fit(DataLoader(TensorDataset(torch.randn(20, 4), torch.full((20,), 7)), batch_size=8))
    with pytest.raises(NotFittedError):
        deup(torch.randn(2, 4))


def test_a_save_from_before_the_shared_gate_column_still_loads(tmp_path):
    model = mlp()
    deup = DEUP(model=model, held_out_classes=2, ood_prior=0.1, **FAST).fit(
        loader(), train_loader=loader(n=120)
    )
    deup.save(tmp_path / "deup.pt")
    state = torch.load(tmp_path / "deup.pt", weights_only=True)
    del state["gate"]["column"]  # what the previous version wrote: its gate always had its own score
    torch.save(state, tmp_path / "old.pt")
    x = torch.randn(10, 4)
    assert torch.equal(DEUP.load(tmp_path / "old.pt", model=model)(x), deup(x))


def test_fit_inside_inference_mode_and_score_outputs_match_call():
    deup = DEUP(model=mlp(), **FAST)
    with torch.inference_mode():
        deup.fit(loader())
    x = torch.randn(8, 4)
    assert torch.equal(deup.score_outputs(OutputCapture(deup.model)(x)), deup(x))


def test_model_attached_later_with_set_model():
    deup = DEUP(**FAST)
    with pytest.raises(ValueError, match="set_model"):
        deup.fit(loader())
    deup.set_model(mlp())
    assert deup.fit(loader()).is_fitted


def test_too_few_rows_for_the_folds_to_train_on_are_refused():
    outputs = ModelOutputs(torch.randn(3, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"a fold model keeps no row to train on.* lower `num_folds`"):
        DEUP(num_folds=2, progress=False, max_epochs=2).fit_outputs(outputs, torch.tensor([0, 1, 2]))


def test_a_regressor_with_features_fitted_on_nothing_does_not_run_the_training_split():
    model, calls = nn.Linear(4, 1), []
    model.register_forward_hook(lambda module, args, output: calls.append(len(output)))
    cal = DataLoader(TensorDataset(torch.randn(40, 4), torch.randn(40)), batch_size=20)
    train = DataLoader(TensorDataset(torch.randn(60, 4), torch.randn(60)))
    DEUP(task="regression", model=model, progress=False, max_epochs=2).fit(cal, train)
    assert sum(calls) == 40  # the calibration rows only


def test_folds_are_shuffled_stratified_and_cover_everything():
    strata = torch.arange(100) % 4
    folds = stratified_folds(strata, 5, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(folds).sort().values, torch.arange(100))
    for fold in folds:
        assert torch.bincount(strata[fold], minlength=4).tolist() == [5, 5, 5, 5]
    # shuffled: another seed puts other rows together (unshuffled, every seed would give the same)
    other = stratified_folds(strata, 5, torch.Generator().manual_seed(1))
    assert not all(torch.equal(a.sort().values, b.sort().values) for a, b in zip(folds, other, strict=True))


class TripleDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(4), 0, 0


@pytest.mark.parametrize(
    ("kwargs", "fit_loader", "error", "match"),
    [
        ({"task": "segmentation"}, None, ValueError, "Expected `task`"),
        ({"num_folds": 1}, None, ValueError, "`num_folds` to be an integer >= 2"),
        ({"held_out_classes": 1}, None, ValueError, "0 \\(off\\) or an integer >= 2"),
        ({"ood_prior": 1.0}, None, ValueError, "`ood_prior` in"),
        ({"held_out_weight": -5.0}, None, ValueError, "`held_out_weight` to be a finite number >= 0"),
        ({"held_out_weight": math.nan}, None, ValueError, "`held_out_weight` to be a finite number >= 0"),
        (
            {"num_folds": 10},
            DataLoader(TensorDataset(torch.randn(6, 4), torch.arange(6) % 3)),
            ValueError,
            "at least `num_folds` = 10",
        ),
        (
            {},
            DataLoader(TensorDataset(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))),
            ValueError,
            "empty",
        ),
        ({}, DataLoader(TensorDataset(torch.randn(10, 4), torch.arange(10))), ValueError, r"in \[0, 3\)"),
        ({}, DataLoader(TripleDataset(), batch_size=2), TypeError, r"\(inputs, targets\) pairs"),
    ],
)
def test_bad_input_raises_a_named_error(kwargs, fit_loader, error, match):
    deup = DEUP(model=mlp(), **{**FAST, **kwargs})
    with pytest.raises(error, match=match):
        deup.fit(fit_loader if fit_loader is not None else loader())


def test_nan_model_outputs_are_refused():
    model = mlp()
    with torch.no_grad():
        model[2].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        DEUP(model=model, **FAST).fit(loader())


def test_regression_target_shape_mismatch_is_refused():
    model = mlp(num_classes=2)
    bad = DataLoader(TensorDataset(torch.randn(10, 4), torch.randn(10, 3)), batch_size=5)
    with pytest.raises(ValueError, match="do not match model outputs"):
        DEUP(task="regression", model=model, **FAST).fit(bad)


def test_scoring_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        DEUP(model=mlp())(torch.randn(2, 4))


def test_fit_leaves_the_extractors_passed_as_parameters_unfitted():
    from torch_deup.features.distance import KNNDistance

    knn = KNNDistance(k=5)
    deup = DEUP(model=mlp(), features=[knn], held_out_classes=0, **FAST).fit(
        loader(), train_loader=loader(n=120)
    )
    assert not hasattr(knn, "bank_")
    assert deup.features_[0].bank_.shape == (120, 16)


def test_error_predictor_is_flat_inside_the_calibration_range_and_grows_beyond_it():
    from torch_deup.post_processing.deup import ErrorPredictor

    low, high = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.0, 1.0])
    g = ErrorPredictor(3, 4, low, high, directions=torch.tensor([0.0, 1.0, -1.0]))
    with torch.no_grad():
        g.mlp[-1].weight.zero_()  # the MLP part is a constant: only the monotone term moves
    inside = torch.tensor([[0.0, -0.5, 0.5], [0.9, 0.9, -0.9]])
    distance_out = torch.tensor([[0.0, 2.0, 0.0], [0.0, 4.0, 0.0]])
    density_out = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, -4.0]])
    wrong_way = torch.tensor([[0.0, -5.0, 5.0]])  # far in the in-distribution direction
    with torch.no_grad():
        base = g(inside)
        assert torch.equal(base[0], base[1])
        assert torch.equal(g(wrong_way)[0], base[0])
        for out in (distance_out, density_out):
            scores = g(out)
            assert base[0] < scores[0] < scores[1]


def test_a_half_precision_model_gets_its_inputs_in_half_precision():
    model = conv_net().to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(240, 1, 5, 5, generator=g)  # float32, as a data loader serves them
    cal = DataLoader(TensorDataset(images[:90], torch.arange(90) % 3), batch_size=32)
    train = DataLoader(TensorDataset(images[90:], torch.arange(150) % 3), batch_size=32)
    deup = DEUP(model=model, max_epochs=3, progress=False, held_out_classes=2).fit(cal, train)
    scores = deup(images[:7])
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    # the same as scoring the outputs of half inputs
    torch.testing.assert_close(scores, deup.score_outputs(OutputCapture(model)(images[:7].bfloat16())))


def test_a_conv_net_without_stages_is_warned_about_missing_layer_evidence_and_an_mlp_is_not():
    flat_conv = nn.Sequential(  # convolutions, but no nn.Sequential stage for layers="auto"
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    patches = nn.Sequential(  # a patch embedding, as a vision transformer's: no feature maps
        nn.Conv2d(1, 4, 5, stride=5), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(240, 1, 5, 5, generator=g)
    cal = DataLoader(TensorDataset(images[:90], torch.arange(90) % 3), batch_size=32)
    train = DataLoader(TensorDataset(images[90:], torch.arange(150) % 3), batch_size=32)
    kwargs = {"max_epochs": 2, "progress": False, "held_out_classes": 0}
    with pytest.warns(UserWarning, match=r"without its layer evidence.*has none\. Name the blocks") as caught:
        assert DEUP(model=flat_conv, **kwargs).fit(cal, train).layer_ is None
    assert caught[0].filename == __file__  # pointed at the caller's line, not the library's
    # a model with stages, fitted on outputs collected without their statistics
    staged = conv_net()
    cal_out, cal_y = collect_outputs(staged, cal, progress=False, layers=None)
    train_out, train_y = collect_outputs(staged, train, progress=False, layers=None)
    with pytest.warns(UserWarning, match="collected without them. Collect them with the same `layers`"):
        DEUP(model=staged, **kwargs).fit_outputs(cal_out, cal_y, train_out, train_y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DEUP(model=flat_conv, layers=["1"], **kwargs).fit(cal, train).layer_ is not None
        assert DEUP(model=flat_conv, layers=None, **kwargs).fit(cal, train).layer_ is None
        assert DEUP(model=patches, **kwargs).fit(cal, train).layer_ is None
        DEUP(model=mlp(), **FAST).fit(loader(), loader())


def test_a_regressor_with_one_output_of_shape_n_fits_and_scores_as_one_of_shape_n_by_1():
    class Squeezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).squeeze(-1)

    torch.manual_seed(0)
    squeezed = Squeezed()
    cal = DataLoader(TensorDataset(torch.randn(60, 4), torch.randn(60)), batch_size=20)
    x = torch.randn(10, 4)
    flat = DEUP(task="regression", model=squeezed, **FAST).fit(cal)
    column = DEUP(task="regression", model=squeezed.net, **FAST).fit(cal)
    assert torch.equal(flat.errors_, column.errors_)
    torch.testing.assert_close(flat(x), column(x))


def test_one_dimensional_classifier_outputs_and_nan_targets_are_refused_by_name():
    with pytest.raises(ValueError, match=r"shape \(N, C\).*Reshape a 1-D binary logit to \(N, 1\)"):
        per_sample_errors("classification", torch.tensor([0.5, -0.5]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="targets hold NaN or inf"):
        per_sample_errors("regression", torch.zeros(2, 1), torch.tensor([1.0, float("nan")]))


def test_an_empty_batch_scores_to_no_scores_and_scores_carry_no_graph():
    deup = DEUP(model=mlp(), **FAST).fit(loader())
    assert deup(torch.randn(0, 4)).shape == (0,)
    outputs = OutputCapture(deup.model)(torch.randn(5, 4))  # outside no_grad: the logits have a graph
    assert outputs.logits.requires_grad
    assert not deup.score_outputs(outputs).requires_grad


def test_each_fold_model_predicts_its_fold_without_having_seen_it():
    # the first fold's model is trained first, before any draw that depends on targets: changing
    # the targets of its own rows must leave its predictions for them unchanged, and nothing else
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 4, generator=g), torch.randn(200, generator=g)
    model = nn.Linear(4, 1)
    deup = DEUP(task="regression", model=model, num_folds=4, seed=3, **FAST)
    first = stratified_folds(torch.zeros(200, dtype=torch.long), 4, torch.Generator().manual_seed(3))[0]
    outputs = ModelOutputs(model(x).detach(), x)
    base = deup.fit_outputs(outputs, y).oof_predictions_.clone()
    changed = y.clone()
    changed[first] += 5.0
    after = deup.fit_outputs(outputs, changed).oof_predictions_
    assert torch.equal(after[first], base[first])
    rest = torch.ones(200, dtype=torch.bool)
    rest[first] = False
    assert not torch.equal(after[rest], base[rest])


def test_scoring_runs_the_model_on_the_fitting_device_and_refuses_nan_outputs(monkeypatch):
    import torch_deup.post_processing.base as base

    deup = DEUP(model=mlp(), device="cpu", **FAST).fit(loader())
    devices = []

    def spy(model, device=None):
        devices.append(device)
        return evaluating(model, device)

    monkeypatch.setattr(base, "evaluating", spy)
    deup(torch.randn(3, 4))
    assert devices == ["cpu"]
    with pytest.raises(ValueError, match="NaN or inf outputs on these inputs"):
        deup(torch.full((2, 4), float("nan")))


@pytest.mark.parametrize(
    ("targets", "hint"),
    [
        (torch.nn.functional.one_hot(torch.arange(20) % 3, 3), r"One-hot targets\? Pass targets.argmax\(1\)"),
        (torch.arange(20) % 3 + 1, r"Labels counted from 1\? Pass targets - 1"),
        (torch.full((20,), 7), "the index of its class among the model's outputs"),
    ],
)
def test_targets_outside_the_classes_name_the_likely_cause(targets, hint):
    with pytest.raises(ValueError, match=hint):
        DEUP(model=mlp(), **FAST).fit(DataLoader(TensorDataset(torch.randn(20, 4), targets), batch_size=8))


def test_scoring_a_loader_instead_of_a_batch_is_named():
    deup = DEUP(model=mlp(), **FAST).fit(loader())
    with pytest.raises(TypeError, match="scores a batch of inputs, a Tensor, but got a DataLoader"):
        deup(loader())
