"""A Lightning routine for classifiers: trains them, and at test time reports classification,
calibration, selective classification, OOD detection and complexity, as TorchUncertainty does.

Everything the test reads comes from one forward pass per batch: the logits and the penultimate
embedding are captured together, and every OOD criterion scores those same outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from lightning import LightningDataModule, LightningModule
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics import MeanMetric

from torch_deup.metrics import params
from torch_deup.metrics._checks import check_fraction
from torch_deup.ood_criteria import OODCriterion, get_criterion
from torch_deup.outputs import (
    ModelOutputs,
    OutputCapture,
    class_probabilities,
    collect_outputs,
    normalize_layers,
    split_batch,
)
from torch_deup.post_processing import PostProcessing
from torch_deup.post_processing.base import class_path
from torch_deup.routines.evaluation import EvaluationMetrics
from torch_deup.routines.metric_keys import COMPLEXITY, metric_key

CriterionSpec = str | OODCriterion
#: where a checkpoint of the routine keeps its fitted criteria and post-processing
CHECKPOINT_KEY = "torch_deup"
#: an optimizer, or a function of the model returning an optimizer or Lightning's optimizer dict
OptimRecipe = Optimizer | Callable[[nn.Module], Any]


class ClassificationRoutine(LightningModule):
    """Train a classifier, then evaluate it and its OOD criteria with ``trainer.test``.

    At the start of ``trainer.test`` the routine fits what still needs fitting: criteria that
    declare ``needs_fit`` on the training split (``datamodule.train_eval_dataloader()``), and the
    post-processing, when a criterion uses it, on ``datamodule.postprocess_dataloader()``. The
    training split is run through the model at most once for all of them; fitted components are
    kept for later ``test`` calls unless ``refit=True`` or training has moved the weights since,
    and ``trainer.save_checkpoint`` keeps them beside the weights: a routine built with the same
    criteria (and an unfitted post-processing of the same class) and loaded with
    ``ClassificationRoutine.load_from_checkpoint`` tests without refitting.

    Args:
        model: the classifier, returning logits ``(N, C)`` (``(N, 1)`` for a binary model).
        num_classes: number of classes ``C`` (1 for a single-logit binary model).
        loss: training loss, e.g. ``nn.CrossEntropyLoss()``; ``None`` for evaluation only.
        eval_ood: evaluate OOD detection on the test loaders after the first one.
        post_processing: a :class:`~torch_deup.post_processing.PostProcessing` (e.g. ``DEUP``) used
            by criteria that declare ``needs_post_processing`` (e.g. ``"deup"``).
        ood_criterion: a criterion name, an :class:`~torch_deup.ood_criteria.OODCriterion`, or a
            list of them (one table column each). Can be reassigned between ``test`` calls.
        optim_recipe: an optimizer, or ``model -> optimizer`` (or Lightning's optimizer dict).
        ood_cost: cost of accepting an OOD sample in the SCOD metrics.
        refit: refit the post-processing and fitted criteria at every ``test`` call.
        layers: the layers whose feature-map statistics the outputs carry, as for
            :class:`~torch_deup.outputs.OutputCapture`; ``"auto"``: the post-processing's when a
            criterion reads them through it, the model's stages when only a criterion reads them,
            none when nothing does (see :attr:`layers`).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> routine = ClassificationRoutine(model, num_classes=3, ood_criterion=["msp", "energy"])
        >>> [criterion.name for criterion in routine.ood_criterion]
        ['MSP', 'Energy']
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        loss: nn.Module | None = None,
        eval_ood: bool = False,
        post_processing: PostProcessing | None = None,
        ood_criterion: CriterionSpec | Sequence[CriterionSpec] = "msp",
        optim_recipe: OptimRecipe | None = None,
        ood_cost: float = 0.5,
        refit: bool = False,
        layers: str | Sequence[str] | None = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"Expected `num_classes` to be an integer >= 1, but got {num_classes!r}. Pass the "
                "number of classes the model predicts (1 for a single-logit binary model)."
            )
        self.model = model
        self.num_classes = num_classes
        self.loss = loss
        self.eval_ood = eval_ood
        self._layers = normalize_layers(layers)
        self._criteria: list[OODCriterion] = []
        self.post_processing = post_processing
        self.ood_criterion = ood_criterion
        self.optim_recipe = optim_recipe
        check_fraction(ood_cost, "ood_cost")  # before any fit, not after minutes of one
        self.ood_cost = ood_cost
        self.refit = refit
        self._stale_fit = False  # set when training moves the weights past what was fitted
        self._capture: OutputCapture | None = None  # built at test start, for what the criteria read
        self.val_acc = MeanMetric()
        self.test_metrics: EvaluationMetrics | None = None
        self.flops_: int | None = None

    @property
    def post_processing(self) -> PostProcessing | None:
        """The post-processing that criteria declaring ``needs_post_processing`` score with.
        Assigning one binds it to them, replacing any they held (and gives it the routine's model,
        if it has none); while it is ``None``, such a criterion scores with its own."""
        return self._post_processing

    @post_processing.setter
    def post_processing(self, post: PostProcessing | None) -> None:
        if post is not None:
            self._adopt(post)
            for criterion in self._criteria:
                if criterion.needs_post_processing:
                    criterion.post_processing = post
        self._post_processing = post

    def _adopt(self, post: PostProcessing) -> None:
        """Check that ``post`` reads the layers the routine records; give it the model if it has none."""
        post_layers = normalize_layers(post.layers)
        if self._layers != "auto" and post.needs_layer_stats and post_layers != self._layers:
            raise ValueError(
                f"The routine records the statistics of layers {self._layers!r} but the "
                f"post-processing reads {post_layers!r}. Give both the same `layers`."
            )
        if post.model is None:
            post.set_model(self.model)
        elif post.model is not self.model and not _same_weights(post.model, self.model):
            # it would score the routine's outputs with features fitted for its own model
            raise ValueError(
                "The post-processing holds another model than the routine's (other weights). Pass one "
                "built without a model (the routine gives it its own) or for this model, or call "
                "`set_model(model)` on it and refit."
            )

    @property
    def layers(self) -> str | list[str] | None:
        """The layers whose feature-map statistics the outputs carry: ``layers`` as given; under
        ``"auto"``, the post-processing's when a criterion reads them through it, ``"auto"`` when
        only a criterion reads them (``"layer_stats"``), ``None`` when nothing does."""
        if self._layers != "auto":
            return self._layers
        posts = [c.post_processing for c in self._criteria if c.needs_post_processing]
        reading = [post for post in posts if post is not None and post.needs_layer_stats]
        if reading:
            return normalize_layers(reading[0].layers)
        return "auto" if any(c.needs_layer_stats for c in self._criteria) else None

    @property
    def ood_criterion(self) -> OODCriterion | list[OODCriterion]:
        """The criterion, or the list of criteria, scored at test time."""
        return list(self._criteria) if self._several_criteria else self._criteria[0]

    @ood_criterion.setter
    def ood_criterion(self, spec: CriterionSpec | Sequence[CriterionSpec]) -> None:
        several = isinstance(spec, list | tuple)
        criteria = [get_criterion(s) for s in (spec if several else [spec])]
        names = [criterion.name for criterion in criteria]
        if not criteria or len(set(names)) < len(names):
            raise ValueError(
                f"Expected `ood_criterion` to be a criterion or a non-empty list of criteria with "
                f"distinct names, but got names {names}. Each name labels a column of the tables."
            )
        for criterion in criteria:
            if not criterion.needs_post_processing:
                continue
            if self.post_processing is not None:
                criterion.post_processing = self.post_processing
            elif getattr(criterion, "post_processing", None) is None:
                raise ValueError(
                    f"The OOD criterion {criterion.name!r} scores with a post-processing method, "
                    "but `post_processing` is None. Pass post_processing=DEUP(...) to the routine, "
                    "or choose an output-based criterion such as 'msp'."
                )
            else:  # the criterion's own
                self._adopt(criterion.post_processing)
        self._criteria, self._several_criteria = criteria, several

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        if self.loss is None or self.optim_recipe is None:
            raise ValueError(
                f"Training needs both `loss` and `optim_recipe`, but got loss={self.loss!r} and "
                f"optim_recipe={self.optim_recipe!r}. Pass e.g. loss=nn.CrossEntropyLoss(), "
                "optim_recipe=lambda model: torch.optim.SGD(model.parameters(), lr=0.1)."
            )
        if isinstance(self.optim_recipe, Optimizer):
            return self.optim_recipe
        return self.optim_recipe(self.model)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, targets = split_batch(batch)
        loss = self.loss(self.model(x), targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = split_batch(batch)
        logits = self.model(x)
        if self.loss is not None:
            self.log("val/loss", self.loss(logits, targets))
        self.val_acc.update(class_probabilities(logits).argmax(dim=1) == targets)
        self.log("val/Acc", self.val_acc, prog_bar=True)

    def on_test_start(self) -> None:
        ood_sets = self._ood_sets()
        if self.post_processing is not None:
            # a criterion instance shared with another routine may have been bound to that one's
            self.post_processing = self.post_processing
        # fitting may train (DEUP's error predictor), which Lightning's inference mode forbids
        with torch.inference_mode(False):
            self._fit_components()
        self._capture = OutputCapture(self.model, self.layers)
        names = [criterion.name for criterion in self._criteria]
        metrics = EvaluationMetrics(max(self.num_classes, 2), names, ood_sets, self.ood_cost)
        self.test_metrics = metrics.to(self.device)
        self.flops_ = None

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx > 0 and not self.eval_ood:
            return
        x, targets = split_batch(batch)
        outputs, scores = self._forward_and_score(x)
        if outputs.logits.ndim != 2 or outputs.logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The model returns logits of shape {tuple(outputs.logits.shape)}, but the routine was "
                f"built with num_classes={self.num_classes}. Pass the number of logits the model "
                "returns per sample (1 for a single-logit binary model)."
            )
        probs = class_probabilities(outputs.logits.float())
        if dataloader_idx == 0:
            self.test_metrics.update_id(probs, targets, scores)
        else:
            self.test_metrics.update_ood(dataloader_idx - 1, probs, scores)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        values[metric_key(COMPLEXITY, "flops")] = float("nan") if self.flops_ is None else float(self.flops_)
        values[metric_key(COMPLEXITY, "params")] = float(params(self.model))
        self.log_dict(values)

    # ---------------------------------------------------------------------------- checkpoints
    def on_train_start(self) -> None:
        # training changes the weights: what was fitted on the old ones is stale
        self._stale_fit = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep what the test fitted beside the weights: each fitted criterion's state and each
        criterion's fitted post-processing, so a routine loaded from the checkpoint scores without
        refitting. Nothing is kept once training has moved the weights past that fit."""
        if self._stale_fit:
            checkpoint[CHECKPOINT_KEY] = None
            return
        posts = {}
        for criterion in self._criteria:
            post = _scoring_post_processing(criterion)
            if post is not None and post.is_fitted:
                try:
                    posts[criterion.name] = {"class": class_path(post), "state": post.state_dict()}
                except NotImplementedError:
                    warnings.warn(
                        f"{type(post).__name__} does not implement state_dict(), so the checkpoint "
                        f"does not keep it: a routine loaded from it refits it at its test.",
                        stacklevel=2,
                    )
        checkpoint[CHECKPOINT_KEY] = {
            "criteria": {c.name: c.state_dict() for c in self._criteria if c.needs_fit and c.fitted},
            "post_processing": posts,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` kept into the routine's criteria of the same
        names and into the post-processing they score with, which must be of the saved one's class
        (an unfitted one: ``post_processing=DEUP()``)."""
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:  # a checkpoint of training only, or from before this was kept
            return
        # the fitted state lives on the CPU, wherever `map_location` put the weights
        saved = move_data_to_device(saved, "cpu")
        for criterion in self._criteria:
            if criterion.needs_fit and criterion.name in saved["criteria"]:
                criterion.load_state_dict(saved["criteria"][criterion.name])
            post = _scoring_post_processing(criterion)
            entry = saved["post_processing"].get(criterion.name)
            if post is None or entry is None:
                continue
            if class_path(post) != entry["class"]:
                name = entry["class"].partition(":")[2]
                raise ValueError(
                    f"The checkpoint holds a fitted {name} for the criterion {criterion.name!r}, but "
                    f"its post-processing is a {type(post).__name__}. Build the routine with "
                    f"post_processing={name}()."
                )
            post.load_state_dict(entry["state"])

    # ------------------------------------------------------------------------------- helpers
    def _forward_and_score(self, x: Tensor) -> tuple[ModelOutputs, dict[str, Tensor]]:
        """One forward pass and every criterion's scores; the model's FLOPs counted on the first batch.

        Counting during the real pass costs no extra forward. The criteria's own cost is left out,
        as the parameter count leaves out theirs: the Complexity table is the model's, the same
        whatever the criterion, as in TorchUncertainty's tables (``benchmarks/ood_cifar10_svhn.py``
        times what DEUP's score adds).
        """
        counter = FlopCounterMode(display=False) if self.flops_ is None else nullcontext()
        with counter:
            outputs = self._capture(x)
        scores = {c.name: c(outputs).to(outputs.logits.device) for c in self._criteria}
        for name, score in scores.items():
            if not torch.isfinite(score).all():
                raise ValueError(
                    f"The OOD criterion {name!r} gave {int((~torch.isfinite(score)).sum())} NaN or inf "
                    "scores on this batch. Check that criterion and the model's outputs."
                )
        if self.flops_ is None:
            self.flops_ = counter.get_total_flops()
        return outputs, scores

    def _ood_sets(self) -> list[str]:
        if not self.eval_ood:
            return []
        num_sets = len(self.trainer.num_test_batches) - 1  # one entry per test loader
        if num_sets < 1:
            raise ValueError(
                "eval_ood=True, but the test data holds no OOD set: it has a single loader. Build "
                "the datamodule with eval_ood=True (its test_dataloader() then returns [ID, OOD, ...]) "
                "or pass eval_ood=False to the routine."
            )
        names = list(getattr(self.trainer.datamodule, "ood_names", None) or [])
        if any("/" in name for name in names):
            raise ValueError(
                f"The datamodule's `ood_names` {names} hold a '/', which separates the parts of a "
                "metric's key: the set's metrics would be filed under another table. Rename the set."
            )
        if len(set(names)) < len(names):
            raise ValueError(
                f"The datamodule's `ood_names` {names} repeat a name: each names the metrics of one "
                "OOD set, so a repeated one would overwrite another's. Give each set its own name."
            )
        return names if len(names) == num_sets else [f"ood{i}" for i in range(1, num_sets + 1)]

    def _post_processings_to_fit(self, refit: bool) -> list[PostProcessing]:
        """Each distinct post-processing some criterion scores with, if unfitted or ``refit`` (set
        by ``refit=True`` or by training since the fit)."""
        posts: list[PostProcessing] = []
        for criterion in self._criteria:
            post = _scoring_post_processing(criterion)
            if post is None or any(post is p for p in posts):
                continue
            if refit or not post.is_fitted:
                posts.append(post)
        return posts

    def _fit_components(self) -> None:
        refit = self.refit or self._stale_fit
        criteria = [c for c in self._criteria if c.needs_fit and (refit or not c.fitted)]
        posts = self._post_processings_to_fit(refit)
        if not criteria and not posts:
            return
        datamodule = self._fitting_datamodule()
        train: tuple[ModelOutputs | None, Tensor | None] = (None, None)
        if criteria or any(post.uses_train_data for post in posts):
            train = self._collect(_train_eval_loader(datamodule), "Training-split outputs")
        for criterion in criteria:
            criterion.fit(*train)
        if posts:
            cal_loader = getattr(datamodule, "postprocess_dataloader", datamodule.val_dataloader)()
            cal = self._collect(cal_loader, "Post-processing outputs")
            for post in posts:
                post.fit_outputs(*cal, *train)
        self._stale_fit = False

    def _fitting_datamodule(self) -> LightningDataModule:
        if self.trainer.datamodule is None:
            raise ValueError(
                "Some OOD criterion or the post-processing is not fitted yet, and fitting needs the "
                "training and calibration splits, but trainer.test got no datamodule. Pass "
                "`datamodule=...` to trainer.test, or fit them before testing."
            )
        return self.trainer.datamodule

    def _collect(self, loader: Iterable, desc: str) -> tuple[ModelOutputs, Tensor]:
        progress = self.trainer.progress_bar_callback is not None
        # the precision of test_step (a mixed precision's autocast): the outputs the post-processing
        # and the criteria are fitted on must be computed as the test batches they will score
        plugin = self.trainer.precision_plugin
        # and the inputs test_step would get: a true half precision's model takes half inputs
        with plugin.test_step_context():
            return collect_outputs(
                self.model, _Converted(loader, plugin.convert_input), self.device, progress, desc, self.layers
            )


class _Converted:
    """``loader``'s batches passed through ``convert``, with the loader's length for progress bars."""

    def __init__(self, loader: Iterable, convert: Callable[[Any], Any]) -> None:
        self.loader, self.convert = loader, convert

    def __iter__(self) -> Iterator[Any]:
        return map(self.convert, self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _scoring_post_processing(criterion: OODCriterion) -> PostProcessing | None:
    """The post-processing ``criterion`` scores with, if it scores with one."""
    return criterion.post_processing if criterion.needs_post_processing else None


def _train_eval_loader(datamodule: LightningDataModule) -> Iterable:
    """The training split unshuffled and without augmentation, as fitted criteria expect it."""
    if hasattr(datamodule, "train_eval_dataloader"):
        return datamodule.train_eval_dataloader()
    warnings.warn(
        f"{type(datamodule).__name__} has no train_eval_dataloader(), so criteria and post-processing "
        "are fitted on train_dataloader(), whose batches may be shuffled and augmented. Add a "
        "train_eval_dataloader() serving the training split without augmentation.",
        UserWarning,
        stacklevel=2,
    )
    return datamodule.train_dataloader()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same parameters and buffers: one checkpoint loaded twice, a
    ``torch.compile`` wrapper of the other, or a copy a precision plugin cast to fewer bits."""
    a, b = (getattr(model, "_orig_mod", model) for model in (a, b))
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(_same_values(sa[key], sb[key]) for key in sa)


def _same_values(x: Tensor, y: Tensor) -> bool:
    if x.shape != y.shape:
        return False
    if x.dtype != y.dtype and x.is_floating_point() and y.is_floating_point():
        # compared at the lower precision, which the cast copy has
        low = min((x.dtype, y.dtype), key=lambda dtype: torch.finfo(dtype).bits)
        x, y = x.to(low), y.to(low)
    return torch.equal(x.detach().cpu(), y.detach().cpu())
