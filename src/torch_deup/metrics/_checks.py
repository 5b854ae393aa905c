"""Input checks and the degenerate-case warning shared by every metric of the package."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics.utilities.data import dim_zero_cat


class DegenerateMetricWarning(UserWarning):
    """A metric is undefined on the data it saw (no OOD sample, empty input, ...) and returns NaN."""


def nan_with_warning(message: str, device: torch.device | None = None) -> Tensor:
    """Warn that the metric is undefined, then return a NaN scalar: NaN is never silent here."""
    warnings.warn(message, DegenerateMetricWarning, stacklevel=3)
    return torch.tensor(float("nan"), device=device)


def check_probs_targets(probs: Tensor, targets: Tensor) -> None:
    """``probs`` is ``(N, C)`` with rows on the simplex; ``targets`` is ``(N,)`` of class indices."""
    if probs.ndim != 2 or not probs.is_floating_point():
        raise ValueError(
            f"Expected `probs` to be a float tensor of shape (N, C), but got dtype {probs.dtype} and "
            f"shape {tuple(probs.shape)}. Pass softmax probabilities, one row per sample."
        )
    if targets.shape != probs.shape[:1] or targets.is_floating_point():
        raise ValueError(
            f"Expected `targets` to be an integer tensor of shape ({probs.shape[0]},), but got dtype "
            f"{targets.dtype} and shape {tuple(targets.shape)}. Pass one class index per row of `probs`."
        )
    if probs.numel() == 0:
        return
    if targets.min() < 0 or targets.max() >= probs.shape[1]:
        raise ValueError(
            f"Expected `targets` in [0, {probs.shape[1] - 1}], but got values in "
            f"[{int(targets.min())}, {int(targets.max())}]. Check `num_classes` and the labels."
        )
    # 16-bit softmax rows sum to 1 only to about 1e-3; a looser bound still rejects logits.
    atol = 1e-2 if probs.element_size() < 4 else 1e-3
    row_sums = probs.sum(dim=1, dtype=torch.float64)
    if (
        probs.min() < 0
        or probs.max() > 1
        or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=atol)
    ):
        raise ValueError(
            "Expected `probs` to hold probabilities (values in [0, 1], rows summing to 1), but got "
            f"values in [{float(probs.min()):.4g}, {float(probs.max()):.4g}] and row sums in "
            f"[{float(row_sums.min()):.4g}, {float(row_sums.max()):.4g}]. Apply softmax to logits first."
        )


def check_scores(scores: Tensor, name: str = "scores") -> None:
    """One finite-or-infinite (never NaN) score per sample, as a 1-D tensor."""
    if scores.ndim != 1 or not (scores.is_floating_point() or scores.dtype in _INT_DTYPES):
        raise ValueError(
            f"Expected `{name}` to be a 1-D real tensor, but got dtype {scores.dtype} and shape "
            f"{tuple(scores.shape)}. Flatten it with `.reshape(-1)`."
        )
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError(
            f"Expected `{name}` without NaN, but got {int(torch.isnan(scores).sum())} NaN values. "
            "Fix the score computation (a NaN cannot be ranked)."
        )


def check_unit_interval(values: Tensor, scores: Tensor, name: str) -> None:
    """``values`` matches ``scores`` in shape and lies in [0, 1] (bool or 0/1 ints are fine)."""
    if values.shape != scores.shape:
        raise ValueError(
            f"Expected `{name}` to have the shape of the scores {tuple(scores.shape)}, but got "
            f"{tuple(values.shape)}. Pass one value per score."
        )
    outside = ~((values >= 0) & (values <= 1))  # NaN compares false both ways: it is outside too
    if outside.any():
        nan = int(values.isnan().sum()) if values.is_floating_point() else 0
        raise ValueError(
            f"Expected `{name}` in [0, 1], but got {int(outside.sum())} values outside it, {nan} of "
            "them NaN. Pass 0/1 indicators (or losses scaled to [0, 1])."
        )


def check_binary(values: Tensor, scores: Tensor, name: str) -> None:
    """``values`` is a 0/1 (or bool) indicator with one entry per score."""
    check_unit_interval(values, scores, name)
    if values.is_floating_point() and not torch.all((values == 0) | (values == 1)):
        raise ValueError(
            f"Expected `{name}` to hold only 0 and 1, but got fractional values. Pass a boolean mask."
        )


def check_fraction(value: float, name: str, *, open_left: bool = False) -> None:
    """A level such as a risk, a coverage or a TPR: a float in [0, 1] (or (0, 1])."""
    low_ok = value > 0 if open_left else value >= 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not low_ok or value > 1:
        interval = "(0, 1]" if open_left else "[0, 1]"
        raise ValueError(f"Expected argument `{name}` to be a float in {interval}, but got {value!r}.")


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def cat_state(state: list[Tensor] | Tensor, device: torch.device) -> Tensor:
    """A "cat" metric state as one tensor; an empty float tensor when nothing was added yet."""
    if isinstance(state, list) and not state:
        return torch.empty(0, device=device)
    return dim_zero_cat(state)
