"""Deterministic, stratified train/validation splits."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_split(targets: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split sample indices into (train, val), each class split in the same proportion.

    Example:
        >>> train, val = stratified_split(torch.arange(10) % 2, 0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"Expected `val_split` in (0, 1), but got {val_fraction}.")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in torch.unique(targets):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        # round() as always (splits that trained checkpoints stay as they were); a class of two or
        # more keeps a sample on each side, where it had given one side all of them
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    val_idx = torch.cat(val).sort().values
    if len(val_idx) == 0:
        raise ValueError(
            f"`val_split`={val_fraction} leaves no validation sample: every class has a single sample. "
            "Give more data per class."
        )
    return torch.cat(train).sort().values, val_idx
