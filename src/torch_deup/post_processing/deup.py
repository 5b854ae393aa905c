"""DEUP: Direct Epistemic Uncertainty Prediction (Lahlou et al., TMLR 2023), post hoc.

The base model is trained and frozen. DEUP learns an error predictor ``g`` that maps features of
the model's outputs for an input to the loss the model incurs there. Read top to bottom:

1. :func:`per_sample_errors` - the loss of the base model on each calibration sample: cross-entropy
   (multi-class), binary cross-entropy with logits (single-logit binary model), squared error
   (regression). The calibration split is held out from training, so these errors are already
   out-of-sample: the quantity DEUP's Algorithm 2 asks ``g`` to predict.
2. Features for ``g`` come from :class:`~torch_deup.features.base.FeatureExtractor` objects that read
   the model's logits and penultimate embedding (captured in the same forward pass). Extractors that
   need the training split (densities, distances) are fitted on the training outputs.
3. When training outputs are given, the *held-out-class* protocol
   (:mod:`torch_deup.post_processing.held_out_classes`) adds rows that show ``g`` what an error looks
   like on a class the density/distance extractors have never seen: without them ``g`` only learns
   "low confidence means error" and scores confidently-wrong OOD inputs as safe. For a classifier,
   *virtual outliers* (:mod:`torch_deup.post_processing.virtual_outliers`; ``virtual_outliers``
   per calibration row, 0.5 by default) add rows sampled from the low-likelihood tails of the
   training embeddings' class Gaussians, with the linear head's logits: inputs unlike any image.
   Both kinds of rows have as target the typical cost of an error.
4. K stratified, shuffled folds: K predictors trained on K-1 folds give out-of-fold (OOF)
   predictions. They measure how well ``g`` generalises (``oof_spearman_``) and fix the number of
   epochs for the final ``g``, which is trained on all rows (nothing left out for early stopping).
5. ``g`` (:class:`ErrorPredictor`) is the softplus of an MLP on features clipped to the
   calibration rows' range plus a term, non-negative in the OOD direction, on how far the
   density/distance columns lie beyond that range: ``g(x) >= 0``, and it grows monotonically as
   inputs move away from the training data instead of flattening out. On the test-free proxy of
   ``benchmarks/select_deup.py`` this form lifted synthetic far-OOD AUROC from 62 to 71 against a
   linear term over the range of all rows, at no cost elsewhere. It is trained on
   symlog-standardised features with a loss in log space, because errors are heavy-tailed (most
   near 0, a few above 5): a squared loss on raw errors is dominated by the few largest ones and
   ranks the rest poorly.

6. With an OOD gate (:mod:`torch_deup.post_processing.ood_gate`, ``ood_prior > 0``; off by
   default: on the proxy it cost misclassification AUROC without lowering SCOD_AUGRC, next to
   step 7's range gate and next to its evidence alike), the score is
   ``cost * pi + (1 - pi) * g``, ``pi`` the probability that the input is out of distribution
   given its ViM score (its KNN distance where ViM does not apply, as for an ensemble), fitted
   on the calibration rows against the extra rows of step 3. ``g`` alone ranks inputs in the
   tail of the training data's features as it ranks in-distribution inputs there, mostly as
   safe; the gate ranks them as likely OOD.
7. With outputs that carry intermediate feature-map statistics (``ModelOutputs.layer_stats``,
   recorded for a model with ``nn.Sequential`` stages whenever this step is on, as it is by
   default; :attr:`needs_layer_stats` says so), how far those statistics lie outside the
   training rows' range for the predicted class (``layer_distance="class_range"``, their
   minimum and maximum per class; ``"range"``, the ``[0.002, 0.998]`` quantiles over all classes;
   :class:`~torch_deup.features.layers.LayerRange`; ``"mahalanobis"``,
   :class:`~torch_deup.features.layers.LayerStatistics`, their Mahalanobis distance) sees noise,
   colour or texture unlike the training images, which the penultimate embedding can miss, and
   hardly depends on whether the model is right. The range distances are exactly 0 for most
   in-distribution inputs, so their evidence leaves their ranking alone, where the Mahalanobis
   distance spreads them all over its tail. Its tail evidence among the calibration rows,
   ``t = -log p`` (:class:`~torch_deup.post_processing.ood_gate.TailEvidence`; mean 1 on them for
   a continuous distance, and 0 on a range distance's rows at 0, most of CIFAR-10's),
   multiplies the score from an onset ``t0 >= 1`` (``evidence_onset``) on:
   ``score * exp(layer_weight * max(t - t0, 0))``, capped at float32's largest value (``t``
   grows linearly beyond the calibration rows; inputs that far, such as unnormalised pixels, tie
   there). In log space that adds the evidence to ``log g``, as the evidence of independent
   signals adds: an input both unusual and uncertain ranks above one that is only one of them. The
   evidence enters smoothly: as it is about independent of the errors, a small weight changes the
   misclassification ranking only to second order while OOD inputs gain to first order, where a
   hard gate lifts a few inputs all the way. The onset keeps it off the bulk of in-distribution
   inputs, where it is noise on the ranking of the model's errors: with ``t0 = 2.5``, it reaches
   at most the share ``exp(-2.5)``, 8%, of the calibration rows with the most unusual statistics.
   The class range needs no onset of its own: on CIFAR-10, 97.6% of the calibration rows lie inside
   their class's range and carry no evidence, and any input outside it has ``t`` of at least 3.7,
   so its evidence starts there, with a step; the onset acts on the KNN evidence.
   The KNN distance of ``g``'s own column (for a classifier with training outputs) adds its
   evidence the same way, ``knn_weight * max(t_knn - t0, 0)``, with no extra computation (``g``
   reads that column anyway):
   an input of a class the model never saw has ordinary low-level statistics but lies far from
   the training embeddings, and the layer evidence alone had cost those inputs. The defaults,
   ``layer_distance="class_range", layer_weight=1.25, knn_weight=0.5, evidence_onset=2.5``, were chosen
   on the proxy of ``benchmarks/select_deup.py`` (tables and rule in
   :mod:`~torch_deup.post_processing.ood_gate`).
   ``layer_gate=True`` adds a range gate (:class:`~torch_deup.post_processing.ood_gate.RangeGate`)
   on the same distance instead or as well: it lifts inputs beyond all but a share ``layer_tail``
   of the calibration rows. The gates combine as independent evidence,
   ``pi = 1 - (1 - pi_ood) (1 - pi_layer)``.

Targets of the final ``g`` (``target=``): ``"error"`` (default) uses the observed errors; ``"oof"``
uses the OOF predictions of the fold models, as TorchUncertainty does. Observed errors are unbiased
out-of-sample targets here; OOF predictions are a smoothed copy that can only lose information the
features did not capture (``benchmarks/select_deup.py '{}' '{"target": "oof"}'`` measures both
without test data).

Tried in the tenth session on the same proxy (3 draws) and not adopted: ``g`` fitted to the 0/1
error by binary cross-entropy (``P(error) = 1 - exp(-g)``, extra rows' target 1) ranks the errors
worse alone (misclassification AUROC 90.52 against 90.94) and much worse under the default
evidence (89.26 against 90.18), for a slightly lower SCOD_AUGRC sum (44.861 against 44.873); the
geometric mean of the fold models and the final ``g`` ties the final ``g`` (90.16 against 90.18,
sum 44.890 against 44.873).
"""

from __future__ import annotations

import copy
import importlib
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn
from tqdm.auto import tqdm

from torch_deup.features.base import FeatureExtractor, NotFittedError, feature_matrix
from torch_deup.features.density import GaussianDensity
from torch_deup.features.distance import KNNDistance, TrustScore
from torch_deup.features.layers import LayerRange, LayerStatistics
from torch_deup.features.outputs import Embedding, OutputStatistics, RegressionOutputs
from torch_deup.features.subspace import ViMScore
from torch_deup.features.variance import DropoutVariance, EnsembleDisagreement, dropout_rate
from torch_deup.outputs import ModelOutputs, auto_layers, class_probabilities, collect_outputs
from torch_deup.post_processing.base import PostProcessing, class_path
from torch_deup.post_processing.held_out_classes import error_cost, held_out_class_rows
from torch_deup.post_processing.ood_gate import OODGate, RangeGate, TailEvidence
from torch_deup.post_processing.virtual_outliers import virtual_outlier_rows

TASKS = ("classification", "regression")
TARGETS = ("error", "oof")
LAYER_DISTANCES: dict[str, Callable[[], FeatureExtractor]] = {
    "class_range": partial(LayerRange, 0.0, per_class=True),
    "range": LayerRange,
    "mahalanobis": LayerStatistics,
}
_LOG_EPS = 1e-3  # errors below this are "no error": their log is not worth fitting
_LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)


def check_finite_outputs(logits: Tensor, where: str) -> None:
    """Raise, naming ``where``, if the model's outputs hold NaN or inf values."""
    if not torch.isfinite(logits).all():
        raise ValueError(
            f"The model produced NaN or inf outputs on {where}. Check the model and its inputs "
            "(normalisation, dtype)."
        )


def per_sample_errors(task: str, logits: Tensor, targets: Tensor) -> Tensor:
    """The base model's loss on each sample, after checking targets against the outputs.

    Example:
        >>> per_sample_errors("regression", torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0]))
        tensor([0., 4.])
    """
    check_finite_outputs(logits, "the calibration data, which DEUP cannot fit on")
    if targets.dtype.is_floating_point and not torch.isfinite(targets).all():
        raise ValueError("The calibration targets hold NaN or inf values. Drop or fix those samples.")
    if task == "regression":
        logits = logits.reshape(len(logits), -1)  # a model with one output may return (N,)
        if targets.shape != logits.shape and targets.reshape(len(targets), -1).shape != logits.shape:
            raise ValueError(
                f"Regression targets of shape {tuple(targets.shape)} do not match model outputs of "
                f"shape {tuple(logits.shape)}. Give one target per output (shape (N,) for one output)."
            )
        return (logits.float() - targets.reshape(logits.shape).float()).pow(2).sum(1)
    if logits.ndim != 2:
        raise ValueError(
            f"Expected classifier outputs of shape (N, C), but got shape {tuple(logits.shape)}. "
            "Reshape a 1-D binary logit to (N, 1)."
        )
    num_classes = max(logits.shape[1], 2)
    if targets.dtype.is_floating_point and not torch.equal(targets, targets.round()):
        raise ValueError("Classification targets must be integer class indices, but got fractional values.")
    if targets.dim() != 1 or targets.min() < 0 or targets.max() >= num_classes:
        # the likely cause: one-hot rows, or labels counted from 1
        hint = (
            "One-hot targets? Pass targets.argmax(1)."
            if targets.dim() == 2
            else "Labels counted from 1? Pass targets - 1."
            if targets.min() >= 1 and targets.max() == num_classes
            else "Give each sample the index of its class among the model's outputs."
        )
        raise ValueError(
            f"Classification targets must be class indices in [0, {num_classes}) of shape (N,), but got "
            f"shape {tuple(targets.shape)} with values in [{targets.min().item()}, {targets.max().item()}]. "
            + hint
        )
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float(), reduction="none")
    return F.cross_entropy(logits.float(), targets.long(), reduction="none")


@dataclass
class FeatureScaler:
    """Symmetric log, then standardisation with the fitting rows' statistics.

    Densities and distances are heavy-tailed (a log-density of -1e6 next to ones near 0): the
    symmetric log keeps their order but stops one extreme row from setting the scale. ``low`` and
    ``high`` record the standardised range of the calibration rows: where errors were observed.
    """

    mean: Tensor
    std: Tensor
    low: Tensor
    high: Tensor

    @staticmethod
    def symlog(x: Tensor) -> Tensor:
        return torch.sign(x) * torch.log1p(x.abs())

    @classmethod
    def fit(cls, x: Tensor, num_calibration: int | None = None) -> FeatureScaler:
        """Statistics from all rows of ``x``; the range from its first ``num_calibration`` rows."""
        t = cls.symlog(x)
        mean, std = t.mean(0), t.std(0).clamp_min(1e-6)
        z = (t[:num_calibration] - mean) / std
        return cls(mean, std, z.min(0).values, z.max(0).values)

    def __call__(self, x: Tensor) -> Tensor:
        return (self.symlog(x) - self.mean) / self.std


class ErrorPredictor(nn.Module):
    """``g``: softplus of an MLP on range-clipped features plus a monotone term beyond the range.

    The MLP sees features clipped to the range of the calibration rows, so it never extrapolates
    wildly. Columns with an ``ood_direction`` (densities, distances) also enter a term that is
    zero inside that range and grows linearly, with a non-negative weight, as a column leaves it
    in its OOD direction: the farther an input lies beyond anything calibrated, the larger ``g``,
    however far that is and whatever the other columns say. ``g >= 0`` by the softplus.
    """

    def __init__(self, in_dim: int, hidden_dim: int, low: Tensor, high: Tensor, directions: Tensor) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, 1),
        )
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())
        self.register_buffer("directions", directions.float().clone())
        self.monotone_weight = nn.Parameter(torch.zeros(in_dim))

    def forward(self, z: Tensor) -> Tensor:
        clipped = torch.minimum(torch.maximum(z, self.low), self.high)
        edge = torch.where(self.directions > 0, self.high, -self.low)
        beyond = torch.relu(self.directions * z - edge) * self.directions.abs()
        monotone = (F.softplus(self.monotone_weight) * beyond).sum(1)
        return F.softplus(self.mlp(clipped).squeeze(1) + monotone)


def _log_target(errors: Tensor) -> Tensor:
    return torch.log(errors + _LOG_EPS)


def _weighted(weight: Tensor | None, n: int) -> Tensor:
    return torch.ones(n) if weight is None else weight


def stratified_folds(strata: Tensor, num_folds: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffle each stratum and deal its members round-robin into ``num_folds`` folds."""
    assignment = torch.empty(len(strata), dtype=torch.long)
    offset = 0
    for value in torch.unique(strata):
        members = torch.nonzero(strata == value).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = (torch.arange(len(members)) + offset) % num_folds
        offset += len(members)
    return [torch.nonzero(assignment == k).flatten() for k in range(num_folds)]


def train_error_predictor(
    make_g: Callable[[], ErrorPredictor],
    x: Tensor,
    log_target: Tensor,
    epochs: int,
    generator: torch.Generator,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    x_val: Tensor | None = None,
    log_target_val: Tensor | None = None,
    patience: int = 10,
    weight: Tensor | None = None,
    weight_val: Tensor | None = None,
) -> tuple[ErrorPredictor, int]:
    """Fit ``g`` by mini-batch Adam on the log-space squared error.

    With validation rows, stops after ``patience`` epochs without improvement and returns the best
    weights and their epoch count; without, trains exactly ``epochs`` epochs.
    """
    # g's initialisation draws from the global generator: seed a fork of it, so fitting is
    # deterministic without resetting the random stream of the user's program
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would reseed every CUDA generator too
        torch.default_generator.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        g = make_g()
    optimizer = torch.optim.AdamW(g.parameters(), lr=lr, weight_decay=weight_decay)
    weight = _weighted(weight, len(x))
    best = (math.inf, 0, None)
    for epoch in range(1, epochs + 1):
        g.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = (weight[idx] * (_log_target(g(x[idx])) - log_target[idx]).pow(2)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if x_val is None:
            continue
        g.eval()
        with torch.no_grad():
            val_loss = (
                _weighted(weight_val, len(x_val)) * (_log_target(g(x_val)) - log_target_val).pow(2)
            ).mean()
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.clone() for k, v in g.state_dict().items()})
        elif epoch - best[1] >= patience:
            break
    if x_val is None:
        return g.eval(), epochs
    if best[2] is None:
        raise ValueError(
            "The error predictor's validation loss was never finite. Check the features for NaN or "
            "inf values and the row weights."
        )
    g.load_state_dict(best[2])
    return g.eval(), best[1]


class DEUP(PostProcessing):
    """Direct Epistemic Uncertainty Prediction as a post-hoc error predictor.

    Args:
        task: ``"classification"`` or ``"regression"``.
        model: the trained base model (or ``None`` and :meth:`set_model` later).
        num_folds: K of the K-fold cross-fitting (>= 2).
        hidden_dim: width of ``g``'s hidden layers.
        max_epochs: maximum epochs (full passes over the rows) for each predictor.
        device: where the base model runs while collecting outputs; ``None`` follows the model.
        features: feature extractors for ``g``; ``None`` picks a default at ``fit`` time
            (see :meth:`default_features`).
        target: ``"error"`` or ``"oof"`` (see the module docstring).
        held_out_classes: number of class groups of the held-out-class protocol, used for a
            classifier when training outputs are given and a feature is fitted on them (``0``
            disables it; a regression task has no classes to hold out).
        held_out_weight: loss weight of each held-out-class or virtual-outlier row relative to a
            calibration row.
        virtual_outliers: virtual outliers (:mod:`torch_deup.post_processing.virtual_outliers`)
            per calibration sample, used under the same conditions, classifiers only (``0``
            disables them).
        ood_prior: weight share of the extra rows when fitting the OOD gate
            (:mod:`torch_deup.post_processing.ood_gate`); there is a gate when there are extra rows
            (so for a classifier only) and this is above 0 (the default, 0, disables it).
        layer_gate: fit the layer-statistics range gate (step 7 of the module docstring) when the
            calibration and training outputs of a classifier carry ``layer_stats``.
        layer_tail: share of the calibration rows the layer-statistics gate lifts
            (:class:`~torch_deup.post_processing.ood_gate.RangeGate`); ``0``: only inputs beyond
            every calibration row.
        layer_weight: exponent ``w`` of the layer-statistics evidence (step 7): the score is
            multiplied by ``exp(w * (max(t, t0) - max(t0, 1)))``, ``t0`` the ``evidence_onset``;
            ``0`` disables it. Needs the same outputs as ``layer_gate``.
        knn_weight: exponent of the same evidence of ``g``'s KNN-distance column (step 7), for a
            classifier with training outputs and a :class:`~torch_deup.features.distance.KNNDistance`
            among the features; ``0`` disables it.
        layer_distance: the layer statistics' distance that the layer evidence and gate read
            (step 7): ``"class_range"``, how far they lie outside the range of the training rows
            of the predicted class (``LayerRange(0.0, per_class=True)``), ``"range"``, outside
            that of all training rows (:class:`~torch_deup.features.layers.LayerRange`), or
            ``"mahalanobis"`` (:class:`~torch_deup.features.layers.LayerStatistics`).
        evidence_onset: the tail evidence ``t0`` from which both evidences count (step 7): an input
            with ``t`` below it keeps its ``g`` (for ``t0 >= 1``); ``0`` gives ``w * (t - 1)``, the
            form before the onset existed.
        batch_size, lr, weight_decay, patience: optimisation of ``g``.
        progress: show progress bars.
        seed: seed of folds, initialisation and mini-batch order.
        layers: the layers whose feature-map statistics the layer evidence and gate read, as for
            :class:`~torch_deup.outputs.OutputCapture` (``"auto"``: a model's stages but the last,
            its direct ``nn.Sequential`` children with image feature maps; a model without them,
            such as an MLP, gets no layer evidence: ``layer_`` is ``None`` after fitting).
            Give a :class:`~torch_deup.routines.ClassificationRoutine` the same.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
        >>> data = TensorDataset(torch.randn(100, 8), torch.randint(0, 5, (100,)))
        >>> deup = DEUP(model=model, max_epochs=5, progress=False).fit(DataLoader(data, batch_size=32))
        >>> deup(torch.randn(3, 8)).shape
        torch.Size([3])
    """

    uses_train_data = True

    def __init__(
        self,
        task: str = "classification",
        model: nn.Module | None = None,
        num_folds: int = 5,
        hidden_dim: int = 32,
        max_epochs: int = 30,
        device: torch.device | str | None = None,
        features: Sequence[FeatureExtractor] | None = None,
        target: str = "error",
        held_out_classes: int = 5,
        held_out_weight: float = 0.5,
        virtual_outliers: float = 0.5,
        ood_prior: float = 0.0,
        layer_gate: bool = False,
        layer_tail: float = 0.01,
        layer_weight: float = 1.25,
        knn_weight: float = 0.5,
        layer_distance: str = "class_range",
        evidence_onset: float = 2.5,
        batch_size: int = 256,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        patience: int = 10,
        progress: bool = True,
        seed: int = 0,
        layers: str | Sequence[str] | None = "auto",
    ) -> None:
        super().__init__(model, layers)
        self.task = task
        self.num_folds = num_folds
        self.hidden_dim = hidden_dim
        self.max_epochs = max_epochs
        self.device = device
        self.features = features
        self.target = target
        self.held_out_classes = held_out_classes
        self.held_out_weight = held_out_weight
        self.virtual_outliers = virtual_outliers
        self.ood_prior = ood_prior
        self.layer_gate = layer_gate
        self.layer_tail = layer_tail
        self.layer_weight = layer_weight
        self.knn_weight = knn_weight
        self.layer_distance = layer_distance
        self.evidence_onset = evidence_onset
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.progress = progress
        self.seed = seed
        self.g_: ErrorPredictor | None = None

    # ----------------------------------------------------------------------------- checks
    def _check_params(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Expected `task` in {TASKS}, but got {self.task!r}.")
        if self.target not in TARGETS:
            raise ValueError(f"Expected `target` in {TARGETS}, but got {self.target!r}.")
        if not isinstance(self.layer_distance, str) or self.layer_distance not in LAYER_DISTANCES:
            raise ValueError(
                f"Expected `layer_distance` in {tuple(LAYER_DISTANCES)}, but got {self.layer_distance!r}."
            )
        for name in ("num_folds", "hidden_dim", "max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            low = 2 if name == "num_folds" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"Expected `{name}` to be an integer >= {low}, but got {value!r}.")
        if not isinstance(self.virtual_outliers, int | float) or not self.virtual_outliers >= 0:
            raise ValueError(
                f"Expected `virtual_outliers` to be a number >= 0, but got {self.virtual_outliers!r}."
            )
        if not isinstance(self.ood_prior, int | float) or not 0 <= self.ood_prior < 1:
            raise ValueError(f"Expected `ood_prior` in [0, 1), but got {self.ood_prior!r}.")
        if not isinstance(self.layer_tail, int | float) or not 0 <= self.layer_tail < 1:
            raise ValueError(f"Expected `layer_tail` in [0, 1), but got {self.layer_tail!r}.")
        for name in ("held_out_weight", "layer_weight", "knn_weight", "evidence_onset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"Expected `{name}` to be a finite number >= 0, but got {value!r}.")
        if not (
            self.layers is None
            or isinstance(self.layers, str)
            or (isinstance(self.layers, list | tuple) and all(isinstance(n, str) for n in self.layers))
        ):
            raise ValueError(
                f"Expected `layers` to be 'auto', None or module names, but got {self.layers!r}."
            )
        if not isinstance(self.layer_gate, bool):
            raise ValueError(f"Expected `layer_gate` to be True or False, but got {self.layer_gate!r}.")
        if (
            not isinstance(self.held_out_classes, int)
            or self.held_out_classes < 0
            or self.held_out_classes == 1
        ):
            # one group would hold out every class and leave nothing to refit on
            raise ValueError(
                "Expected `held_out_classes` to be 0 (off) or an integer >= 2, but got "
                f"{self.held_out_classes!r}."
            )

    @property
    def is_fitted(self) -> bool:
        return self.g_ is not None

    @property
    def needs_layer_stats(self) -> bool:
        """Whether its parameters ask for the statistics (the next fit reads them), or the fitted
        state does (scoring reads them: the layer evidence or gate, or a feature)."""
        fitted = self.g_ is not None and (
            self.layer_ is not None or any(f.needs_layer_stats for f in self.features_)
        )
        return self._asks_layer_distance or fitted or any(f.needs_layer_stats for f in self.features or [])

    @property
    def _asks_layer_distance(self) -> bool:
        """Whether the parameters ask for the layer statistics' distance: a classifier's layer gate
        or layer evidence (step 7)."""
        return self.task == "classification" and (self.layer_gate or self.layer_weight > 0)

    def _check_fitted(self) -> None:
        if self.g_ is None:
            raise NotFittedError(
                "This DEUP instance is not fitted yet. Call 'fit' with appropriate arguments before "
                "using this estimator."
            )

    # ----------------------------------------------------------------------------- fitting
    def default_features(self, num_train: int, ensemble: bool = False) -> list[FeatureExtractor]:
        """A regressor's: its prediction and its embedding. A classifier's: output statistics plus,
        with ``num_train`` training outputs, the Gaussian density of the training embeddings, the
        KNN distance to a random tenth of them (at least 1,000) and the trust score on a bank of
        the same size; without them, the logits and the embedding itself. A classifier trained
        with dropout adds its closed-form last-layer MC-dropout variance
        (:class:`~torch_deup.features.variance.DropoutVariance`); an ``ensemble`` (outputs with
        member logits) adds the members' disagreement
        (:class:`~torch_deup.features.variance.EnsembleDisagreement`)."""
        if self.task == "regression":
            return [RegressionOutputs(), Embedding()]
        if num_train == 0:
            features = [OutputStatistics(include_logits=True), Embedding()]
        else:
            # a 10% bank (k scaled to 10) costs a tenth of the full one to score. On the proxy of
            # benchmarks/select_deup.py a 20% bank lost 0.2 held-out-class AUROC points against the
            # full one, and 10% then tied 20% (SCOD_AUGRC near + far 18.844 against 18.849) at half
            # the cost of DEUP's two neighbour features, the bulk of its scoring time
            k, bank = _knn_bank(num_train)
            knn = KNNDistance(k=k, bank_size=bank, seed=self.seed)
            # the trust score, on the proxy (no gate): misclassification AUROC 90.44 -> 90.93,
            # held-out-class AUROC 96.74 -> 97.74, for one more pass over a bank of the same size
            features = [
                OutputStatistics(),
                GaussianDensity(),
                knn,
                TrustScore(k=k, bank_size=bank, seed=self.seed),
            ]
        # an ensemble's embedding joins its members': one head's dropout variance does not apply
        if self.model is not None and dropout_rate(self.model) > 0 and not ensemble:
            features.append(DropoutVariance.from_model(self.model))
        if ensemble:
            features.append(EnsembleDisagreement())
        return features

    def _gate_score(
        self, features: Sequence[FeatureExtractor], train: tuple[ModelOutputs, Tensor], linear_head: bool
    ) -> FeatureExtractor:
        """The OOD gate's score, fitted: ViM, the best far-OOD detector on the proxy, where it
        applies (a linear head on an embedding at least 2 wide); else the KNN distance, second
        by far-OOD SCOD_AUGRC on the proxy (13.54 against GDA's 13.69), shared with ``g``'s
        features when they hold one."""
        if linear_head and train[0].embedding.shape[1] >= 2:
            return ViMScore().fit(*train)
        knn = _knn_feature(features)
        if knn is None:
            k, bank = _knn_bank(len(train[1]))
            knn = KNNDistance(k=k, bank_size=bank, seed=self.seed).fit(*train)
        return knn

    def _collect(self, loader: Iterable, desc: str) -> tuple[ModelOutputs, Tensor]:
        return collect_outputs(
            self._require_model(), loader, self.device, self.progress, desc, self.recorded_layers
        )

    def fit(self, cal_loader: Iterable, train_loader: Iterable | None = None) -> DEUP:
        """Run the base model once over ``cal_loader`` (and ``train_loader``), then fit ``g``.

        Works inside ``torch.no_grad()`` / ``torch.inference_mode()``.
        """
        self._check_params()
        cal_outputs, cal_targets = self._collect(cal_loader, "DEUP: calibration outputs")
        # a regressor's features fitted on nothing (its defaults) never read the training outputs
        reads_train = self.task == "classification" or any(f.needs_fit for f in self.features or [])
        train = (
            self._collect(train_loader, "DEUP: training outputs")
            if train_loader is not None and reads_train
            else None
        )
        return self.fit_outputs(cal_outputs, cal_targets, *(train or (None, None)))

    def fit_outputs(
        self,
        cal_outputs: ModelOutputs,
        cal_targets: Tensor,
        train_outputs: ModelOutputs | None = None,
        train_targets: Tensor | None = None,
    ) -> DEUP:
        """Fit ``g`` from already computed outputs (an evaluation loop that ran the model)."""
        self._check_params()
        # Lightning's test loop runs hooks under inference mode; g needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            cal_outputs = _plain(cal_outputs)
            cal_targets = cal_targets.clone().cpu()
            train = None if train_outputs is None else (_plain(train_outputs), train_targets.clone().cpu())
            self._fit(cal_outputs, cal_targets, train)
        return self

    def _fit(
        self, cal_outputs: ModelOutputs, cal_targets: Tensor, train: tuple[ModelOutputs, Tensor] | None
    ) -> None:
        if len(cal_targets) < self.num_folds:
            raise ValueError(
                f"DEUP needs at least `num_folds` = {self.num_folds} calibration samples, but got "
                f"{len(cal_targets)}. Give more calibration data or lower `num_folds`."
            )
        # a fit that fails half way leaves the estimator unfitted, never half updated
        self.g_ = None
        errors = per_sample_errors(self.task, cal_outputs.logits, cal_targets)
        # copies: fitting must not change the extractors the user passed as a parameter
        features = (
            [copy.deepcopy(f) for f in self.features]
            if self.features is not None
            else self.default_features(0 if train is None else len(train[1]), cal_outputs.members is not None)
        )
        for extractor in features:
            if extractor.needs_fit:
                if train is None:
                    raise ValueError(
                        f"The feature extractor {type(extractor).__name__} is fitted on the training "
                        "split: pass `train_loader` to fit (or its outputs to fit_outputs)."
                    )
                extractor.fit(*train)
        x = feature_matrix(features, cal_outputs)
        widths = _widths(features, cal_outputs)
        strata = cal_targets if self.task == "classification" else torch.zeros(len(x), dtype=torch.long)
        weight = torch.ones(len(x))
        extra, gate, gate_score, gate_column = [], None, None, None
        cost = (
            None
            if train is None or self.task != "classification"
            else error_cost(cal_outputs, cal_targets, errors)
        )
        if cost is not None and any(f.needs_fit for f in features):
            extra, gate, gate_score, gate_column = self._extra_rows_and_gate(
                features, widths, x, cal_outputs, cal_targets, cost, train
            )
        layer, layer_gate, layer_evidence = None, None, None
        if cost is not None and self._asks_layer_distance:
            if cal_outputs.layer_stats is None:
                self._warn_no_layer_evidence()
            else:
                layer = LAYER_DISTANCES[self.layer_distance]()
                layer, distances = _fit_layer_distance(layer, cal_outputs, train)
                layer_gate = RangeGate(self.layer_tail).fit(distances) if self.layer_gate else None
                layer_evidence = TailEvidence().fit(distances) if self.layer_weight > 0 else None
        knn_column, knn_evidence = None, None
        if cost is not None and self.knn_weight > 0:
            knn_column = _column_of(features, widths, _knn_feature(features))
            knn_evidence = None if knn_column is None else TailEvidence().fit(x[:, knn_column])
        for extra_x, extra_errors in extra:
            # their own stratum, so every fold holds its share of these rows
            strata = torch.cat([strata, torch.full((len(extra_x),), -1, dtype=strata.dtype)])
            x, errors = torch.cat([x, extra_x]), torch.cat([errors, extra_errors])
            weight = torch.cat([weight, torch.full((len(extra_x),), float(self.held_out_weight))])
        self.features_ = features
        self.scaler_ = FeatureScaler.fit(x, num_calibration=len(cal_targets))
        self.errors_ = errors
        self.gate_, self.gate_score_, self.gate_column_ = gate, gate_score, gate_column
        self.layer_, self.layer_gate_, self.layer_evidence_ = layer, layer_gate, layer_evidence
        self.knn_evidence_, self.knn_column_ = knn_evidence, knn_column
        # scoring reads the weights fitted with, as for every other setting, not a later edit
        self.layer_weight_, self.knn_weight_ = self.layer_weight, self.knn_weight
        self.evidence_onset_ = self.evidence_onset
        self.error_cost_ = cost
        directions = torch.cat(
            [torch.full((width,), f.ood_direction) for f, width in zip(features, widths, strict=True)]
        )
        make_g = partial(
            ErrorPredictor, x.shape[1], self.hidden_dim, self.scaler_.low, self.scaler_.high, directions
        )
        with _single_thread():
            self.g_ = self._cross_fit(make_g, self.scaler_(x), _log_target(errors), strata, weight)

    def _warn_no_layer_evidence(self) -> None:
        """Warn when a convolutional model fits without step 7's layer evidence: its calibration
        outputs carry no feature-map statistics, so its OOD score loses the low-level view. An MLP
        and a vision transformer (whose only convolution cuts the image into patches) have no
        feature maps to read and fit silently."""
        if self.model is None or self.layers is None:  # no model to tell by, or asked for none
            return
        if not any(_slides(m) for m in self.model.modules()):
            return
        found_none = self.layers == "auto" and not any(auto_layers(self.model))
        cause = (
            "`layers='auto'` records a model's direct nn.Sequential children with image feature "
            "maps, and this model has none. Name the blocks to record in `layers=` (of DEUP or "
            "ClassificationRoutine; see torch_deup.outputs.auto_layers)"
            if found_none
            else "the calibration outputs were collected without them. Collect them with the "
            "same `layers` as DEUP's (collect_outputs(..., layers=...), OutputCapture)"
        )
        warnings.warn(
            "DEUP fits without its layer evidence: the model has convolutions, but its calibration "
            f"outputs carry no feature-map statistics: {cause}, or pass `layers=None` to fit "
            "without them and silence this warning.",
            stacklevel=_caller_stacklevel(),
        )

    def _extra_rows_and_gate(
        self,
        features: Sequence[FeatureExtractor],
        widths: Sequence[int],
        x: Tensor,
        cal_outputs: ModelOutputs,
        cal_targets: Tensor,
        cost: float,
        train: tuple[ModelOutputs, Tensor],
    ) -> tuple[list[tuple[Tensor, Tensor]], OODGate | None, FeatureExtractor | None, int | None]:
        """Step 3's extra rows (held-out classes, virtual outliers), with target ``cost``, and step
        6's gate fitted on them.

        Returns the rows with their targets, the gate, the gate's own score extractor (``None`` when
        it reads ``g``'s column ``gate_column``) and that column.
        """
        # an ensemble's logits are no single linear head's, which ViM needs
        linear_head = cal_outputs.members is None
        num_virtual = round(self.virtual_outliers * len(cal_targets))
        gate_score, gate_column = None, None
        # the gate is fitted against the extra rows: without any, there is no gate
        if self.ood_prior > 0 and (self.held_out_classes > 0 or num_virtual > 0):
            gate_score = self._gate_score(features, train, linear_head)
            # the gate's score is one of g's columns, or rides along as a last one, then leaves
            gate_column = _column_of(features, widths, gate_score)
        own_column = gate_score is not None and gate_column is None
        row_features = [*features, gate_score] if own_column else features
        extra = []
        if self.held_out_classes > 0:
            extra.append(
                held_out_class_rows(
                    row_features, train, cal_outputs, cal_targets, cost, self.held_out_classes, self.seed
                )
            )
        if num_virtual > 0:
            extra.append(virtual_outlier_rows(row_features, train, num_virtual, cost, self.seed))
        if gate_score is None:
            return extra, None, None, None
        column = -1 if own_column else gate_column
        outlier_scores = torch.cat([extra_x[:, column] for extra_x, _ in extra])
        if own_column:
            extra = [(extra_x[:, :-1], extra_errors) for extra_x, extra_errors in extra]
        cal_scores = gate_score(cal_outputs)[:, 0] if own_column else x[:, column]
        gate = OODGate(self.ood_prior).fit(cal_scores, outlier_scores)
        return extra, gate, gate_score if own_column else None, gate_column

    def _cross_fit(
        self,
        make_g: Callable[[], ErrorPredictor],
        x: Tensor,
        log_target: Tensor,
        strata: Tensor,
        weight: Tensor,
    ) -> ErrorPredictor:
        generator = torch.Generator().manual_seed(self.seed)
        folds = stratified_folds(strata, self.num_folds, generator)
        oof = torch.empty(len(x))
        best_epochs = []
        kwargs = {"batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay}
        bar = tqdm(total=self.num_folds + 1, desc="DEUP: fitting g", disable=not self.progress, leave=False)
        for k, held in enumerate(folds):
            train_idx = torch.cat([f for j, f in enumerate(folds) if j != k])
            # early stopping on one more fold's worth of the training folds, never on `held`
            n_stop = max(1, len(train_idx) // self.num_folds)
            perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
            stop_idx, fit_idx = perm[:n_stop], perm[n_stop:]
            if len(fit_idx) == 0:
                raise ValueError(
                    f"With {len(strata)} rows and num_folds={self.num_folds}, a fold model keeps no row "
                    "to train on after its held-out fold and its early-stopping rows. Give more "
                    "calibration data or lower `num_folds`."
                )
            g, epoch = train_error_predictor(
                make_g, x[fit_idx], log_target[fit_idx], self.max_epochs, generator, weight=weight[fit_idx],
                x_val=x[stop_idx], log_target_val=log_target[stop_idx], weight_val=weight[stop_idx],
                patience=self.patience, **kwargs,
            )  # fmt: skip
            with torch.no_grad():
                oof[held] = g(x[held])
            best_epochs.append(epoch)
            bar.update()
        self.oof_predictions_ = oof
        calibration_rows = strata >= 0  # the extra rows (stratum -1) have constant targets
        self.oof_spearman_ = spearman(oof[calibration_rows], log_target[calibration_rows])
        # the median, the lower of the two middle values for an even number of folds
        self.final_epochs_ = max(1, int(torch.tensor(best_epochs).median()))
        final_target = log_target if self.target == "error" else _log_target(oof)
        g, _ = train_error_predictor(
            make_g, x, final_target, self.final_epochs_, generator, weight=weight, **kwargs
        )
        bar.update()
        bar.close()
        return g

    # ----------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score_outputs(self, outputs: ModelOutputs) -> Tensor:
        """DEUP's score on already computed outputs: one non-negative score per sample, ``g``
        mixed with the probability that the input is OOD from the gates DEUP has (steps 6, 7), then
        multiplied by the layer-statistics and KNN evidence (step 7). The evidence can carry an
        input far off past float32's largest value, where such inputs tie:
        :meth:`log_score_outputs` ranks them."""
        scores, log_evidence = self._score_parts(outputs)
        if log_evidence is not None:
            # capped where float32 ends: t grows linearly beyond the calibration rows, and an input
            # far off (unnormalised pixels) would otherwise score inf
            log_scores = torch.log(scores.double()) + log_evidence
            scores = torch.exp(log_scores.clamp(max=_LOG_FLOAT32_MAX)).float()
        return scores.to(outputs.logits.device)

    def log_score_outputs(self, outputs: ModelOutputs) -> Tensor:
        """The natural log of :meth:`score_outputs`, in float64 and not capped: inputs that tie at
        the score's cap still rank here."""
        scores, log_evidence = self._score_parts(outputs)
        log_scores = torch.log(scores.double()) + (0.0 if log_evidence is None else log_evidence)
        return log_scores.to(outputs.logits.device)

    def log_score(self, x: Tensor) -> Tensor:
        """:meth:`log_score_outputs` for raw inputs (one forward pass of the base model)."""
        self._check_fitted()
        return self.log_score_outputs(self.model_outputs(x))

    @torch.no_grad()  # scores are read, not trained through: no graph kept with them
    def _score_parts(self, outputs: ModelOutputs) -> tuple[Tensor, Tensor | None]:
        """On the CPU: ``g`` mixed by the gates (float32), and the summed log evidence (float64),
        ``None`` without evidence."""
        self._check_fitted()
        check_finite_outputs(outputs.logits, "these inputs, which DEUP cannot score")
        outputs = outputs.to("cpu")
        x = feature_matrix(self.features_, outputs)
        scores = self.g_(self.scaler_(x))
        in_distribution = torch.ones(len(scores))
        if self.gate_ is not None:
            gate_scores = (
                x[:, self.gate_column_] if self.gate_score_ is None else self.gate_score_(outputs)[:, 0]
            )
            in_distribution *= 1 - self.gate_.predict(gate_scores)
        distances = None if self.layer_ is None else self.layer_(outputs)[:, 0]
        if self.layer_gate_ is not None:
            in_distribution *= 1 - self.layer_gate_.predict(distances)
        if self.gate_ is not None or self.layer_gate_ is not None:
            scores = self.error_cost_ * (1 - in_distribution) + in_distribution * scores
        log_evidence = []
        if self.layer_evidence_ is not None:
            log_evidence.append(self._log_evidence(self.layer_evidence_, distances, self.layer_weight_))
        if self.knn_evidence_ is not None:
            knn = x[:, self.knn_column_]
            log_evidence.append(self._log_evidence(self.knn_evidence_, knn, self.knn_weight_))
        return scores, (sum(log_evidence) if log_evidence else None)

    def _log_evidence(self, evidence: TailEvidence, scores: Tensor, weight: float) -> Tensor:
        """``weight * (max(t, onset) - max(onset, 1))``: with an onset of at least 1, an input whose
        tail evidence ``t`` is below the onset keeps its ``g``; with 0, ``weight * (t - 1)``."""
        onset = self.evidence_onset_
        return weight * (evidence.evidence(scores).clamp_min(onset) - max(onset, 1.0))

    def __call__(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return super().__call__(x)

    def predict_proba(self, x: Tensor) -> Tensor:
        """The base model's class probabilities ``(N, C)`` (``[1 - p, p]`` for a single logit)."""
        if self.task != "classification":
            raise ValueError("predict_proba is defined for task='classification' only.")
        return class_probabilities(self.model_outputs(x).logits)

    # ----------------------------------------------------------------------------- persistence
    _PARAMS = (
        "task", "num_folds", "hidden_dim", "max_epochs", "target", "held_out_classes", "held_out_weight",
        "virtual_outliers", "ood_prior", "layer_gate", "layer_tail", "layer_weight", "knn_weight",
        "layer_distance", "evidence_onset", "batch_size", "lr", "weight_decay", "patience", "progress",
        "seed", "layers",
    )  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Save :meth:`state_dict` to ``path`` (not the base model)."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None, device: Any = None) -> DEUP:
        """Rebuild a fitted DEUP saved by :meth:`save`; scores are identical to the last bit."""
        deup = cls(model=model, device=device)
        deup.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return deup

    def state_dict(self) -> dict[str, Any]:
        """``g``, the feature extractors' fitted state, the training rows' errors and OOF
        predictions and the config, custom ``features`` included: everything but the base model,
        in tensors and plain Python values (``torch.load(..., weights_only=True)`` reads it)."""
        self._check_fitted()
        return {
            "params": {name: getattr(self, name) for name in self._PARAMS},
            "features": [_entry(f) for f in self.features_],
            # a refit of the loaded estimator must use the same extractors, not the default ones
            "custom_features": self.features is not None,
            "errors": self.errors_,
            "oof_predictions": self.oof_predictions_,
            "g": self.g_.state_dict(),
            "scaler": vars(self.scaler_),
            "final_epochs": self.final_epochs_,
            "oof_spearman": self.oof_spearman_,
            "gate": None
            if self.gate_ is None
            else {
                "state": self.gate_.state_dict(),
                "score": None if self.gate_score_ is None else _entry(self.gate_score_),
                "column": self.gate_column_,
            },
            "layer_gate": None
            if self.layer_ is None
            else {
                "layer": _entry(self.layer_),
                "state": None if self.layer_gate_ is None else self.layer_gate_.state_dict(),
                "evidence": None if self.layer_evidence_ is None else self.layer_evidence_.state_dict(),
                "weight": self.layer_weight_,
            },
            "knn_evidence": None
            if self.knn_evidence_ is None
            else {
                "state": self.knn_evidence_.state_dict(),
                "column": self.knn_column_,
                "weight": self.knn_weight_,
            },
            "evidence_onset": self.evidence_onset_,
            "error_cost": self.error_cost_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make this DEUP the fitted one of :meth:`state_dict` (its parameters included); the base
        model and the device stay this one's. A state that fails to load leaves it as it was."""
        restored = type(self)(model=self.model, device=self.device)
        restored._restore(state)
        vars(self).update(vars(restored))

    def _restore(self, state: dict[str, Any]) -> None:
        """:meth:`load_state_dict` on a fresh DEUP."""
        # a file saved before the layer gate or an evidence was fitted without them: refitting it
        # must not add them
        # the evidence of files saved before its onset started at 0: w * (t - 1); their layer
        # distance was the Mahalanobis one
        params = {
            "layer_gate": False, "layer_weight": 0.0, "knn_weight": 0.0, "evidence_onset": 0.0,
            "layer_distance": "mahalanobis", **state["params"],
        }  # fmt: skip
        unknown = set(params) - set(self._PARAMS)
        if unknown:
            raise ValueError(
                f"The saved DEUP holds parameters {sorted(unknown)} this version does not know: it was "
                "saved by a newer torch-deup. Load it with that version."
            )
        for name, value in params.items():
            setattr(self, name, value)
        self.features_ = [_rebuild(entry) for entry in state["features"]]
        # files saved before it was kept refit with the defaults
        self.features = [_rebuild(e) for e in state["features"]] if state.get("custom_features") else None
        self.errors_, self.oof_predictions_ = state.get("errors"), state.get("oof_predictions")
        self.scaler_ = FeatureScaler(**state["scaler"])
        g_state = state["g"]
        self.g_ = ErrorPredictor(
            len(g_state["low"]), self.hidden_dim, g_state["low"], g_state["high"], g_state["directions"]
        )
        self.g_.load_state_dict(g_state)
        self.g_.eval()
        self.final_epochs_, self.oof_spearman_ = state["final_epochs"], state["oof_spearman"]
        self.gate_ = self.gate_score_ = self.layer_gate_ = None
        # saved before the layer gate, the cost lived with the OOD gate
        self.error_cost_ = state.get("error_cost", (state.get("gate") or {}).get("error_cost"))
        if state.get("gate") is not None:  # files saved before the gate existed have none
            # the prior fitted with (files saved before it was kept: the saved parameter)
            self.gate_ = OODGate(state["gate"]["state"].get("prior", self.ood_prior))
            self.gate_.load_state_dict(state["gate"]["state"])
            score = state["gate"]["score"]
            self.gate_score_ = None if score is None else _rebuild(score)
            self.gate_column_ = state["gate"].get("column")  # saved before the shared KNN column: None
        self.layer_ = self.layer_evidence_ = None
        layer = state.get("layer_gate")
        if layer is not None:  # files saved before the layer gate have none
            self.layer_ = _rebuild(layer["layer"])
            if layer["state"] is not None:
                self.layer_gate_ = RangeGate(layer["state"]["tail"])
                self.layer_gate_.load_state_dict(layer["state"])
            if layer.get("evidence") is not None:  # saved before the layer evidence: none
                self.layer_evidence_ = TailEvidence()
                self.layer_evidence_.load_state_dict(layer["evidence"])
        # the weight fitted with; files saved before it was kept apart hold only the parameter
        self.layer_weight_ = (layer or {}).get("weight", self.layer_weight)
        self.evidence_onset_ = state.get("evidence_onset", self.evidence_onset)
        knn = state.get("knn_evidence")  # files saved before the KNN evidence have none
        self.knn_evidence_, self.knn_column_, self.knn_weight_ = None, None, self.knn_weight
        if knn is not None:
            self.knn_evidence_ = TailEvidence()
            self.knn_evidence_.load_state_dict(knn["state"])
            self.knn_column_, self.knn_weight_ = knn["column"], knn["weight"]


@contextmanager
def _single_thread() -> Iterator[None]:
    """``g`` is tiny: intra-op threads only add synchronisation, and on a busy CPU they made its
    training 40x slower (367 s instead of 9 s for the CIFAR-10 fit, measured on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _plain(outputs: ModelOutputs) -> ModelOutputs:
    """A CPU copy usable by autograd (inference-mode tensors are not)."""
    return outputs.detach()._map(lambda t: t.float().cpu().clone())


def _widths(features: Sequence[FeatureExtractor], outputs: ModelOutputs) -> list[int]:
    """The number of columns each extractor adds to the feature matrix."""
    return [f(outputs[:1]).reshape(1, -1).shape[1] for f in features]


def _column_of(
    features: Sequence[FeatureExtractor], widths: Sequence[int], extractor: FeatureExtractor | None
) -> int | None:
    """The index of ``extractor``'s (first) column in the feature matrix, ``None`` if not a feature
    (or ``None``)."""
    starts = torch.tensor([0, *widths]).cumsum(0).tolist()
    return next((start for f, start in zip(features, starts, strict=False) if f is extractor), None)


def _slides(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution that slides over overlapping windows, so that its
    output is a feature map: a patch embedding (stride equal to its kernel) is not counted."""
    if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return False
    return tuple(module.stride) != tuple(module.kernel_size) or set(module.kernel_size) == {1}


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _knn_feature(features: Sequence[FeatureExtractor]) -> KNNDistance | None:
    """The first :class:`~torch_deup.features.distance.KNNDistance` among ``features``, if any."""
    return next((f for f in features if type(f) is KNNDistance), None)


def _fit_layer_distance(
    layer: FeatureExtractor, cal_outputs: ModelOutputs, train: tuple[ModelOutputs, Tensor]
) -> tuple[FeatureExtractor, Tensor]:
    """Step 7: the layer statistics' distance ``layer``, fitted on the training split, and its
    values on the calibration rows, on which the gate and the evidence are fitted."""
    if train[0].layer_stats is None:
        raise ValueError(
            "The calibration outputs carry layer statistics but the training outputs do not. Collect "
            "both with the same `layers`, or set `layer_weight=0` and `layer_gate=False`."
        )
    layer.fit(*train)
    return layer, layer(cal_outputs)[:, 0]


def _knn_bank(num_train: int) -> tuple[int, int]:
    """``k`` and bank size of DEUP's KNN-based features: a random tenth of the training rows
    (at least 1,000) and ``k`` scaled to it (at most 10)."""
    bank = min(num_train, max(1000, num_train // 10))
    return max(1, min(10, bank // 10)), bank


def _entry(extractor: FeatureExtractor) -> dict[str, Any]:
    """What :meth:`DEUP.save` keeps of an extractor: its class path and its attributes."""
    return {"class": class_path(extractor), "state": dict(vars(extractor))}


def _rebuild(entry: dict[str, Any]) -> FeatureExtractor:
    module, _, name = entry["class"].partition(":")
    cls = getattr(importlib.import_module(module), name)
    obj = cls.__new__(cls)
    obj.__dict__.update(entry["state"])
    return obj


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return float(spearmanr(a.detach().cpu().numpy(), b.detach().cpu().numpy()).statistic)
