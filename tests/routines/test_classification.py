"""ClassificationRoutine: construction checks, training, fitting at test start, one forward pass per
batch, and metric values checked against sklearn on the synthetic blob task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn

from routines.synthetic import (
    NUM_CLASSES,
    BlobDataModule,
    CountingPostProcessing,
    make_mlp,
    trained_mlp,
)
from torch_deup import TUTrainer
from torch_deup.features import EnsembleDisagreement
from torch_deup.models import DeepEnsemble
from torch_deup.ood_criteria import (
    DEUPCriterion,
    FeatureCriterion,
    GDACriterion,
    KNNCriterion,
    MaxSoftmaxCriterion,
)
from torch_deup.outputs import collect_outputs
from torch_deup.post_processing import DEUP, PostProcessing
from torch_deup.routines import ClassificationRoutine
from torch_deup.routines.classification import CHECKPOINT_KEY


def run_test(
    routine: ClassificationRoutine, datamodule: BlobDataModule, **trainer_kwargs
) -> dict[str, float]:
    trainer = TUTrainer(
        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs
    )
    return trainer.test(routine, datamodule=datamodule, verbose=False)[0]


def staged_blob_model() -> nn.Module:
    """The blobs as 1x1 images: one convolutional stage before the last, recorded by layers="auto"."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (2, 1, 1)),
        nn.Sequential(nn.Conv2d(2, 8, 1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    ).eval()


@pytest.fixture
def counting_forward():
    """A trained MLP whose forward calls are counted."""
    model = trained_mlp()
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    return model, calls


# ----------------------------------------------------------------------------- construction
def test_num_classes_below_one_raises():
    with pytest.raises(ValueError, match=r"`num_classes` to be an integer >= 1, but got 0"):
        ClassificationRoutine(make_mlp(), num_classes=0)


def test_deup_criterion_without_post_processing_raises():
    with pytest.raises(
        ValueError, match=r"'DEUP' scores with a post-processing .* `post_processing` is None"
    ):
        ClassificationRoutine(make_mlp(), NUM_CLASSES, ood_criterion="deup")


def test_switching_to_deup_without_post_processing_raises():
    routine = ClassificationRoutine(make_mlp(), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"`post_processing` is None"):
        routine.ood_criterion = ["msp", "deup"]


def test_duplicate_criterion_names_raise():
    with pytest.raises(ValueError, match=r"distinct names, but got names \['MSP', 'MSP'\]"):
        ClassificationRoutine(make_mlp(), NUM_CLASSES, ood_criterion=["msp", MaxSoftmaxCriterion()])


def test_post_processing_gets_the_model_when_it_has_none_and_one_built_for_another_is_refused():
    model, other = make_mlp(), make_mlp(1)
    assert (
        ClassificationRoutine(model, 3, post_processing=CountingPostProcessing()).post_processing.model
        is model
    )
    kept = ClassificationRoutine(model, 3, post_processing=CountingPostProcessing(model)).post_processing
    assert kept.model is model
    # it would score this model's outputs with features fitted for the other one
    with pytest.raises(ValueError, match="holds another model than the routine's"):
        ClassificationRoutine(model, 3, post_processing=CountingPostProcessing(other))
    # the same weights in another object (a checkpoint loaded twice) are the same model
    twin = make_mlp()
    twin.load_state_dict(model.state_dict())
    post = CountingPostProcessing(model)
    assert ClassificationRoutine(twin, 3, post_processing=post).post_processing.model is model
    # a torch.compile wrapper of it, and a copy a precision plugin cast to bfloat16, are too
    compiled = torch.compile(model)
    assert ClassificationRoutine(compiled, 3, post_processing=post).post_processing.model is model
    assert ClassificationRoutine(twin.bfloat16(), 3, post_processing=post).post_processing.model is model
    with pytest.raises(ValueError, match="other weights"):
        ClassificationRoutine(other.bfloat16(), 3, post_processing=post)


def test_an_ood_cost_outside_zero_one_is_refused_before_any_fit():
    with pytest.raises(ValueError, match="`ood_cost` to be a float in"):
        ClassificationRoutine(make_mlp(), NUM_CLASSES, ood_cost=2.0)


def test_criterion_property_normalises_and_binds_post_processing():
    post = CountingPostProcessing()
    routine = ClassificationRoutine(make_mlp(), NUM_CLASSES, post_processing=post, ood_criterion="deup")
    assert routine.ood_criterion.name == "DEUP"
    assert routine.ood_criterion.post_processing is post
    routine.ood_criterion = ["energy", "msp"]
    assert [c.name for c in routine.ood_criterion] == ["Energy", "MSP"]


def test_assigning_a_post_processing_rebinds_the_criteria_that_score_with_it():
    first, second = CountingPostProcessing(), CountingPostProcessing()
    routine = ClassificationRoutine(make_mlp(), NUM_CLASSES, post_processing=first, ood_criterion="deup")
    routine.post_processing = second
    assert routine.ood_criterion.post_processing is second
    assert second.model is routine.model


def test_a_criterion_with_its_own_fitted_deup_scores_with_it_without_a_routine_post_processing():
    datamodule = BlobDataModule()
    model = trained_mlp()
    deup = DEUP(model=model, max_epochs=3, progress=False).fit(
        datamodule.postprocess_dataloader(), datamodule.train_eval_dataloader()
    )
    routine = ClassificationRoutine(model, NUM_CLASSES, eval_ood=True, ood_criterion=DEUPCriterion(deup))
    values = run_test(routine, datamodule)
    x = torch.cat([datamodule.sets["test"][0], datamodule.sets["far"][0]])
    is_ood = np.r_[np.zeros(len(datamodule.sets["test"][0])), np.ones(len(datamodule.sets["far"][0]))]
    assert values["ood/AUROC"] == pytest.approx(roc_auc_score(is_ood, deup(x).numpy()), abs=1e-6)


def test_a_criterion_with_its_own_unfitted_deup_gets_it_fitted_by_the_routine():
    datamodule = BlobDataModule()
    model = trained_mlp()
    own = DEUP(max_epochs=3, progress=False)
    routine = ClassificationRoutine(model, NUM_CLASSES, eval_ood=True, ood_criterion=DEUPCriterion(own))
    values = run_test(routine, datamodule)
    assert own.is_fitted
    assert own.model is model
    direct = DEUP(model=model, max_epochs=3, progress=False)
    direct.fit(datamodule.postprocess_dataloader(), datamodule.train_eval_dataloader())
    x = torch.cat([datamodule.sets["test"][0], datamodule.sets["far"][0]])
    is_ood = np.r_[np.zeros(len(datamodule.sets["test"][0])), np.ones(len(datamodule.sets["far"][0]))]
    assert values["ood/AUROC"] == pytest.approx(roc_auc_score(is_ood, direct(x).numpy()), abs=1e-6)


def test_the_routines_post_processing_wins_and_a_criterions_own_must_read_the_routines_layers():
    routines, criterion = CountingPostProcessing(), DEUPCriterion(DEUP())
    model = trained_mlp()
    first = ClassificationRoutine(model, NUM_CLASSES, post_processing=routines, ood_criterion=criterion)
    assert criterion.post_processing is routines
    # the same criterion in a second routine, as in a sweep over DEUP settings
    other = CountingPostProcessing()
    ClassificationRoutine(model, NUM_CLASSES, post_processing=other, ood_criterion=criterion)
    assert criterion.post_processing is other
    # testing the first routine scores with the first routine's post-processing again
    run_test(first, BlobDataModule(ood_sets=()))
    assert criterion.post_processing is routines
    assert (routines.fit_calls, other.fit_calls) == (1, 0)
    with pytest.raises(ValueError, match="Give both the same `layers`"):
        ClassificationRoutine(make_mlp(), NUM_CLASSES, layers=["0"], ood_criterion=DEUPCriterion(DEUP()))
    # a post-processing that reads no layer statistics fits any recorded layers
    ClassificationRoutine(
        make_mlp(), NUM_CLASSES, layers=None, post_processing=DEUP(layer_weight=0.0), ood_criterion="deup"
    )


@pytest.mark.parametrize(
    ("criteria", "deup_kwargs", "expected"),
    [
        (["msp", "knn"], {}, None),  # DEUP unused, no criterion reads layer statistics
        (["msp", "layer_stats"], None, "auto"),
        (["deup"], {}, "auto"),  # the default DEUP's layer evidence
        (["deup"], {"layers": ["1"]}, ["1"]),
        (["deup"], {"layer_weight": 0.0}, None),
        (["deup", "layer_stats"], {"layer_weight": 0.0}, "auto"),
    ],
)
def test_layer_statistics_are_recorded_only_when_something_reads_them(criteria, deup_kwargs, expected):
    post = None if deup_kwargs is None else DEUP(**deup_kwargs)
    routine = ClassificationRoutine(make_mlp(), NUM_CLASSES, post_processing=post, ood_criterion=criteria)
    assert routine.layers == expected


def test_a_routine_that_reads_no_layer_statistics_collects_none():
    model = staged_blob_model()
    post = CountingPostProcessing()
    routine = ClassificationRoutine(model, NUM_CLASSES, post_processing=post, ood_criterion=["deup", "knn"])
    run_test(routine, BlobDataModule())
    assert post.fitted_layer_stats is None
    routine = ClassificationRoutine(
        model, NUM_CLASSES, post_processing=post, ood_criterion=["deup", "layer_stats"]
    )
    routine.refit = True
    run_test(routine, BlobDataModule())
    assert post.fitted_layer_stats.shape == (150, 16)  # 8 channels' means and deviations


def test_repeated_ood_set_names_and_names_with_a_slash_raise():
    datamodule = BlobDataModule(ood_sets=("far", "near"))
    datamodule.ood_names = ["far", "far"]
    with pytest.raises(ValueError, match=r"`ood_names` \['far', 'far'\] repeat a name"):
        run_test(ClassificationRoutine(trained_mlp(), NUM_CLASSES, eval_ood=True), datamodule)
    datamodule.sets["svhn/test"] = datamodule.sets.pop("near")
    datamodule.ood_names = ["far", "svhn/test"]
    with pytest.raises(ValueError, match="hold a '/'"):
        run_test(ClassificationRoutine(trained_mlp(), NUM_CLASSES, eval_ood=True), datamodule)


def test_a_criterion_giving_nan_scores_is_named():
    class Broken(MaxSoftmaxCriterion):
        name = "Broken"

        def __call__(self, outputs):
            scores = super().__call__(outputs)
            scores[0] = float("nan")
            return scores

    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES, ood_criterion=["msp", Broken()])
    with pytest.raises(ValueError, match="'Broken' gave 1 NaN or inf scores"):
        run_test(routine, BlobDataModule(ood_sets=()))


def test_num_classes_unlike_the_models_logits_raises_a_named_error():
    with pytest.raises(
        ValueError, match=r"logits of shape \(64, 3\), but the routine was built with num_classes=5"
    ):
        run_test(ClassificationRoutine(trained_mlp(), 5), BlobDataModule(ood_sets=()))


# ----------------------------------------------------------------------------- training
def test_trains_with_loss_and_optim_recipe():
    routine = ClassificationRoutine(
        make_mlp(),
        NUM_CLASSES,
        loss=nn.CrossEntropyLoss(),
        optim_recipe=lambda model: torch.optim.Adam(model.parameters(), lr=0.05),
    )
    trainer = TUTrainer(
        accelerator="cpu", max_epochs=8, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(routine, datamodule=BlobDataModule())
    # the blobs overlap a little: the Bayes accuracy is about 0.9
    assert trainer.callback_metrics["val/Acc"] > 0.8
    assert "val/loss" in trainer.callback_metrics


def test_training_without_loss_raises():
    routine = ClassificationRoutine(
        make_mlp(), NUM_CLASSES, optim_recipe=torch.optim.SGD(make_mlp().parameters())
    )
    trainer = TUTrainer(
        accelerator="cpu", max_epochs=1, enable_progress_bar=False, enable_model_summary=False
    )
    with pytest.raises(ValueError, match=r"Training needs both `loss` and `optim_recipe`"):
        trainer.fit(routine, datamodule=BlobDataModule())


# ----------------------------------------------------------------------------- test-time checks
def test_eval_ood_without_ood_set_raises():
    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES, eval_ood=True)
    with pytest.raises(ValueError, match=r"eval_ood=True, but the test data holds no OOD set"):
        run_test(routine, BlobDataModule(ood_sets=()))


def test_fitting_without_datamodule_raises():
    dm = BlobDataModule()
    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES, ood_criterion="gda")
    trainer = TUTrainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"trainer.test got no datamodule"):
        trainer.test(routine, dataloaders=dm.test_dataloader()[0], verbose=False)


def test_missing_train_eval_dataloader_warns_and_falls_back():
    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES, ood_criterion="gda")
    with pytest.warns(UserWarning, match=r"has no train_eval_dataloader\(\)"):
        run_test(routine, BlobDataModule(train_eval=False))
    assert routine.ood_criterion.fitted


# ----------------------------------------------------------------------------- values
def test_values_match_sklearn():
    dm = BlobDataModule()
    model = trained_mlp()
    results = run_test(ClassificationRoutine(model, NUM_CLASSES, eval_ood=True), dm)
    (x_id, y_id), (x_ood, _) = dm.sets["test"], dm.sets["far"]
    with torch.no_grad():
        p_id, p_ood = model(x_id).softmax(1), model(x_ood).softmax(1)
    assert results["test/cls/Acc"] == pytest.approx(accuracy_score(y_id, p_id.argmax(1)), abs=1e-6)
    msp = torch.cat([p_id, p_ood]).max(1).values.numpy()
    is_ood = np.r_[np.zeros(len(p_id)), np.ones(len(p_ood))]
    assert results["ood/AUROC"] == pytest.approx(roc_auc_score(is_ood, -msp), abs=1e-6)
    entropy = -(p_ood * p_ood.log()).sum(1).mean().item()  # written-out predictive entropy
    assert results["ood/Entropy"] == pytest.approx(entropy, rel=1e-5)
    # FLOPs of the first batch: 2 x batch x (2*16 + 16*3) multiply-accumulates of the two linears
    assert results["test/cplx/flops"] == 2 * 64 * (2 * 16 + 16 * 3)
    assert results["test/cplx/params"] == sum(p.numel() for p in model.parameters())


def test_several_ood_sets_are_reported_separately():
    dm = BlobDataModule(ood_sets=("far", "near"))
    results = run_test(ClassificationRoutine(trained_mlp(), NUM_CLASSES, eval_ood=True), dm)
    separate = [
        run_test(ClassificationRoutine(trained_mlp(), NUM_CLASSES, eval_ood=True), BlobDataModule((s,)))
        for s in ("far", "near")
    ]
    assert results["ood_far/AUROC"] == pytest.approx(separate[0]["ood/AUROC"])
    assert results["ood_near/AUROC"] == pytest.approx(separate[1]["ood/AUROC"])
    assert results["ood_far/AUROC"] != pytest.approx(results["ood_near/AUROC"])


def test_list_of_criteria_matches_separate_runs():
    dm = BlobDataModule()
    post = CountingPostProcessing()
    specs = {"msp": "MSP", "deup": "DEUP", "gda": "GDA"}
    joint = run_test(
        ClassificationRoutine(
            trained_mlp(), NUM_CLASSES, eval_ood=True, post_processing=post, ood_criterion=list(specs)
        ),
        dm,
    )
    for spec, column in specs.items():
        routine = ClassificationRoutine(
            trained_mlp(), NUM_CLASSES, eval_ood=True, post_processing=post, ood_criterion=spec
        )
        single = run_test(routine, dm)
        for metric in ("AUROC", "FPR95", "SCOD_AURC", "Entropy"):
            assert joint[f"ood/{column}/{metric}"] == pytest.approx(single[f"ood/{metric}"])
        # in-distribution metrics do not depend on the criterion (the tutorial's "only the OOD
        # detection scores change")
        for metric in ("test/sc/AURC", "test/sc/Cov_5Risk", "test/cls/Acc", "test/cal/ECE"):
            assert joint[metric] == pytest.approx(single[metric], nan_ok=True)
    assert post.fit_calls == 1


def test_an_ensemble_is_evaluated_on_its_mean_prediction_with_mutual_information():
    dm = BlobDataModule()
    torch.manual_seed(5)
    ensemble = DeepEnsemble([trained_mlp(), make_mlp()]).eval()
    deup = DEUP(max_epochs=3, progress=False)
    routine = ClassificationRoutine(
        ensemble,
        NUM_CLASSES,
        eval_ood=True,
        post_processing=deup,
        ood_criterion=["mutual_information", "deup"],
    )
    results = {k.replace("/MutualInformation", ""): v for k, v in run_test(routine, dm).items()}
    (x_id, y_id), (x_ood, _) = dm.sets["test"], dm.sets["far"]
    with torch.no_grad():
        p_id, p_ood = (torch.stack([m(x).softmax(1) for m in ensemble.members]) for x in (x_id, x_ood))
    assert results["test/cls/Acc"] == pytest.approx(accuracy_score(y_id, p_id.mean(0).argmax(1)), abs=1e-6)
    entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    mi = torch.cat([entropy(p.mean(0)) - entropy(p).mean(0) for p in (p_id, p_ood)]).numpy()
    is_ood = np.r_[np.zeros(len(y_id)), np.ones(len(x_ood))]
    assert results["ood/AUROC"] == pytest.approx(roc_auc_score(is_ood, mi), abs=1e-6)
    # the routine hands DEUP the member logits it recorded: the disagreement is one of g's features
    assert any(isinstance(f, EnsembleDisagreement) for f in deup.features_)


# ----------------------------------------------------------------------------- fitting
def test_switching_criterion_does_not_refit():
    dm = BlobDataModule()
    post = CountingPostProcessing()
    routine = ClassificationRoutine(
        trained_mlp(), NUM_CLASSES, eval_ood=True, post_processing=post, ood_criterion="deup"
    )
    deup_results = run_test(routine, dm)
    assert post.fit_calls == 1
    assert post.saw_train_outputs  # uses_train_data: fitted with training-split outputs
    routine.ood_criterion = MaxSoftmaxCriterion()
    msp_results = run_test(routine, dm)
    routine.ood_criterion = "deup"
    again = run_test(routine, dm)
    assert post.fit_calls == 1
    assert again["ood/AUROC"] == deup_results["ood/AUROC"] != msp_results["ood/AUROC"]
    assert msp_results["test/cls/Acc"] == deup_results["test/cls/Acc"]


def test_refit_fits_at_every_test():
    post = CountingPostProcessing()
    routine = ClassificationRoutine(trained_mlp(), 3, post_processing=post, ood_criterion="deup", refit=True)
    for _ in range(2):
        run_test(routine, BlobDataModule())
    assert post.fit_calls == 2


def test_unused_post_processing_is_not_fitted():
    post = CountingPostProcessing()
    run_test(ClassificationRoutine(trained_mlp(), NUM_CLASSES, post_processing=post), BlobDataModule())
    assert post.fit_calls == 0


def test_one_forward_pass_per_batch_and_one_training_pass(counting_forward):
    model, calls = counting_forward
    dm = BlobDataModule()
    post = CountingPostProcessing()
    gda = GDACriterion()
    routine = ClassificationRoutine(
        model, NUM_CLASSES, eval_ood=True, post_processing=post, ood_criterion=["deup", gda, "msp"]
    )
    test_batches = dm.num_batches("test") + dm.num_batches("far")
    fit_batches = dm.num_batches("train") + dm.num_batches("val")
    run_test(routine, dm)
    # the training split is run once for both GDA and the post-processing
    assert len(calls) == fit_batches + test_batches
    assert gda.fitted
    run_test(routine, dm)
    assert len(calls) == fit_batches + 2 * test_batches


def test_flops_are_the_model_s_whatever_the_criterion():
    # the tutorial's DEUP and MSP runs print the same Complexity table, as params counts the model only
    post = CountingPostProcessing()
    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES, post_processing=post, ood_criterion="deup")
    results = run_test(routine, BlobDataModule())
    assert results["test/cplx/flops"] == 2 * 64 * (2 * 16 + 16 * 3)  # not + the scorer's (64, 16) @ (16, 1)


def test_fitting_outputs_are_computed_at_the_precision_of_the_test_steps():
    post = CountingPostProcessing()
    routine = ClassificationRoutine(
        trained_mlp(), NUM_CLASSES, eval_ood=True, post_processing=post, ood_criterion="deup"
    )
    datamodule = BlobDataModule()
    run_test(routine, datamodule, precision="bf16-mixed")
    train = datamodule.train_eval_dataloader()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = collect_outputs(routine.model, train, progress=False)[0].embedding.mean(0)
    full = collect_outputs(routine.model, train, progress=False)[0].embedding.mean(0)
    assert not torch.allclose(low, full, rtol=0, atol=1e-4)  # bf16 does change the embedding
    torch.testing.assert_close(post.center_, low)


def test_vim_and_a_default_deup_fit_on_bf16_outputs():
    # bf16 rounds the head's output: the recovered linear head must still pass the affine check
    deup = DEUP(max_epochs=3, progress=False)
    routine = ClassificationRoutine(
        trained_mlp(), NUM_CLASSES, eval_ood=True, post_processing=deup, ood_criterion=["vim", "deup"]
    )
    values = run_test(routine, BlobDataModule(), precision="bf16-mixed")
    # the far blobs are far: both detect them
    assert values["ood/ViM/AUROC"] > 0.9
    assert values["ood/DEUP/AUROC"] > 0.9


def test_true_half_precision_fits_on_half_inputs():
    # bf16-true converts the model's weights: the routine's own passes must convert inputs as
    # test_step does, or the first layer meets float32 inputs
    deup = DEUP(max_epochs=3, progress=False)
    routine = ClassificationRoutine(
        trained_mlp(), NUM_CLASSES, eval_ood=True, post_processing=deup, ood_criterion=["vim", "deup"]
    )
    values = run_test(routine, BlobDataModule(), precision="bf16-true")
    assert next(routine.model.parameters()).dtype == torch.bfloat16
    assert values["ood/ViM/AUROC"] > 0.9
    assert values["ood/DEUP/AUROC"] > 0.9


def test_equal_layer_settings_in_other_spellings_are_accepted():
    model = trained_mlp()
    assert ClassificationRoutine(
        model, NUM_CLASSES, post_processing=DEUP(layers=("0",)), layers=["0"]
    ).layers == ["0"]
    assert ClassificationRoutine(
        model, NUM_CLASSES, post_processing=DEUP(layers="0"), layers=["0"]
    ).layers == ["0"]


def test_a_default_deup_scores_with_the_layer_evidence_of_the_routines_single_pass():
    model = staged_blob_model()
    datamodule = BlobDataModule()
    routine = ClassificationRoutine(
        model,
        NUM_CLASSES,
        eval_ood=True,
        post_processing=DEUP(max_epochs=3, progress=False),
        ood_criterion="deup",
    )
    values = run_test(routine, datamodule)
    assert routine.post_processing.layer_evidence_ is not None
    # the same DEUP fitted and scored outside the routine
    direct = DEUP(model=model, max_epochs=3, progress=False)
    direct.fit(datamodule.postprocess_dataloader(), datamodule.train_eval_dataloader())
    x = torch.cat([datamodule.sets["test"][0], datamodule.sets["far"][0]])
    is_ood = np.r_[np.zeros(len(datamodule.sets["test"][0])), np.ones(len(datamodule.sets["far"][0]))]
    assert values["ood/AUROC"] == pytest.approx(roc_auc_score(is_ood, direct(x).numpy()), abs=1e-6)


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_CRITERIA = ["deup", "knn", "layer_class_range", "msp"]


def saved_routine(tmp_path, post_processing) -> tuple[dict[str, float], str]:
    """A routine fitted by its first test, its metrics and the path of its checkpoint."""
    routine = ClassificationRoutine(
        staged_blob_model(),
        NUM_CLASSES,
        eval_ood=True,
        post_processing=post_processing,
        ood_criterion=CHECKPOINT_CRITERIA,
    )
    trainer = TUTrainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)
    values = trainer.test(routine, datamodule=BlobDataModule(), verbose=False)[0]
    path = str(tmp_path / "routine.ckpt")
    trainer.save_checkpoint(path)
    return values, path


def assert_same_metrics(got: dict[str, float], expected: dict[str, float]) -> None:
    """Every metric equal (NaN where the other is NaN), every criterion's among them."""
    assert got.keys() == expected.keys()
    assert {key.split("/")[1] for key in got if key.startswith("ood/")} >= {"DEUP", "KNN", "LayerClassRange"}
    np.testing.assert_array_equal([got[k] for k in expected], list(expected.values()))


def test_a_checkpoint_keeps_the_fitted_criteria_and_deup_and_its_routine_scores_without_refitting(
    tmp_path, monkeypatch
):
    values, path = saved_routine(tmp_path, DEUP(max_epochs=3, progress=False))
    fresh = staged_blob_model()
    with torch.no_grad():  # the weights too come from the checkpoint
        for parameter in fresh.parameters():
            parameter.add_(1.0)
    loaded = ClassificationRoutine.load_from_checkpoint(
        path,
        model=fresh,
        num_classes=NUM_CLASSES,
        eval_ood=True,
        post_processing=DEUP(progress=False),
        ood_criterion=CHECKPOINT_CRITERIA,
        weights_only=True,  # the kept state is tensors and plain values
    )
    assert isinstance(loaded.post_processing, DEUP)
    assert loaded.post_processing.model is fresh
    assert all(criterion.fitted for criterion in loaded.ood_criterion)

    def no_fit(*args, **kwargs):
        raise AssertionError("a loaded routine must not refit")

    monkeypatch.setattr(DEUP, "fit_outputs", no_fit)
    monkeypatch.setattr(FeatureCriterion, "fit", no_fit)
    assert_same_metrics(run_test(loaded, BlobDataModule()), values)


def test_a_checkpoint_restores_another_post_processing_and_refuses_one_of_another_class(tmp_path):
    values, path = saved_routine(tmp_path, CountingPostProcessing())
    post = CountingPostProcessing()
    loaded = ClassificationRoutine.load_from_checkpoint(
        path,
        model=staged_blob_model(),
        num_classes=NUM_CLASSES,
        eval_ood=True,
        post_processing=post,
        ood_criterion=CHECKPOINT_CRITERIA,
    )
    assert post.is_fitted
    assert_same_metrics(run_test(loaded, BlobDataModule()), values)
    assert post.fit_calls == 0
    with pytest.raises(ValueError, match=r"holds a fitted CountingPostProcessing.*post_processing=Counting"):
        ClassificationRoutine.load_from_checkpoint(
            path,
            model=staged_blob_model(),
            num_classes=NUM_CLASSES,
            post_processing=DEUP(),
            ood_criterion=CHECKPOINT_CRITERIA,
        )


def test_a_checkpoint_saved_before_any_test_loads_and_the_routine_fits_at_its_test(tmp_path):
    routine = ClassificationRoutine(staged_blob_model(), NUM_CLASSES, ood_criterion=["knn"])
    trainer = TUTrainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(routine)
    trainer.save_checkpoint(tmp_path / "untested.ckpt")
    loaded = ClassificationRoutine.load_from_checkpoint(
        tmp_path / "untested.ckpt", model=staged_blob_model(), num_classes=NUM_CLASSES, ood_criterion=["knn"]
    )
    assert not loaded.ood_criterion[0].fitted
    run_test(loaded, BlobDataModule())
    assert loaded.ood_criterion[0].fitted


def test_training_after_a_test_makes_its_fit_stale_for_checkpoints_and_for_the_next_test(tmp_path):
    post, knn = CountingPostProcessing(), KNNCriterion(k=5)
    routine = ClassificationRoutine(
        make_mlp(),
        NUM_CLASSES,
        eval_ood=True,
        loss=nn.CrossEntropyLoss(),
        optim_recipe=lambda model: torch.optim.Adam(model.parameters(), lr=0.05),
        post_processing=post,
        ood_criterion=["deup", knn],
    )
    dm = BlobDataModule()
    run_test(routine, dm)
    bank = knn.extractor_.bank_
    trainer = TUTrainer(
        accelerator="cpu", max_epochs=2, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(routine, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    assert torch.load(tmp_path / "trained.ckpt", weights_only=True)[CHECKPOINT_KEY] is None
    run_test(routine, dm)  # refits on the trained weights
    assert post.fit_calls == 2
    assert not torch.equal(knn.extractor_.bank_, bank)
    run_test(routine, dm)
    assert post.fit_calls == 2


def test_a_criterions_own_post_processing_is_kept_and_one_without_state_dict_is_refitted(tmp_path):
    class Unsaved(CountingPostProcessing):
        state_dict = PostProcessing.state_dict

    for own, kept in ((CountingPostProcessing(), True), (Unsaved(), False)):
        routine = ClassificationRoutine(staged_blob_model(), NUM_CLASSES, ood_criterion=DEUPCriterion(own))
        trainer = TUTrainer(
            accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False
        )
        trainer.test(routine, datamodule=BlobDataModule(), verbose=False)
        if kept:
            trainer.save_checkpoint(tmp_path / "own.ckpt")
        else:
            with pytest.warns(UserWarning, match="Unsaved does not implement state_dict"):
                trainer.save_checkpoint(tmp_path / "own.ckpt")
        fresh = type(own)()
        loaded = ClassificationRoutine.load_from_checkpoint(
            tmp_path / "own.ckpt",
            model=staged_blob_model(),
            num_classes=NUM_CLASSES,
            ood_criterion=DEUPCriterion(fresh),
        )
        assert fresh.is_fitted == kept
        run_test(loaded, BlobDataModule())
        assert fresh.fit_calls == (0 if kept else 1)
