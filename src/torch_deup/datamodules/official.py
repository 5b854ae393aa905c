"""Readers for the official CIFAR and SVHN files, decoded into :class:`ImageTensors`.

These are the files torchvision downloads (``CIFAR10(root, download=True)`` and friends); they are
read here with pickle / scipy directly so that every layout ends up as the same uint8 tensors.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from torch_deup.datamodules.tensor_data import ImageTensors


def _unpickle(path: Path) -> dict[str, Any]:
    # The official files were pickled by Python 2: "latin1" reads them, and files pickled by
    # Python 3 come back with bytes keys, so keys are normalised to str either way.
    with path.open("rb") as f:
        raw = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_cifar(
    folder: str | Path, files: Sequence[str], label_key: str, meta_file: str, names_key: str
) -> ImageTensors:
    """Concatenate official CIFAR python batches into ``(N, 3, 32, 32)`` uint8 images.

    Args:
        folder: ``cifar-10-batches-py`` or ``cifar-100-python``.
        files: batch files in order, e.g. ``["data_batch_1", ..., "data_batch_5"]``.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).
        meta_file: ``"batches.meta"`` or ``"meta"``, which holds the class names.
        names_key: ``"label_names"`` or ``"fine_label_names"``.

    Example:
        >>> data = read_cifar("data/cifar-10-batches-py", ["test_batch"], "labels",
        ...                   "batches.meta", "label_names")  # doctest: +SKIP
        >>> data.images.shape, data.classes[0]  # doctest: +SKIP
        (torch.Size([10000, 3, 32, 32]), 'airplane')
    """
    folder = Path(folder)
    batches = [_unpickle(folder / name) for name in files]
    # Each row holds the red, green then blue 32x32 planes, row-major: a plain reshape gives CHW.
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
    targets = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    names = _unpickle(folder / meta_file)[names_key]
    classes = [n.decode() if isinstance(n, bytes) else n for n in names]
    return ImageTensors(torch.from_numpy(images), torch.from_numpy(targets), classes)


def read_svhn_mat(path: str | Path) -> ImageTensors:
    """Read an official SVHN ``*_32x32.mat`` file; digit 0, stored as label 10, becomes 0.

    Example:
        >>> data = read_svhn_mat("data/test_32x32.mat")  # doctest: +SKIP
        >>> data.images.shape, data.classes[:3]  # doctest: +SKIP
        (torch.Size([26032, 3, 32, 32]), ['0', '1', '2'])
    """
    mat = scipy.io.loadmat(str(path))
    # X is stored (H, W, C, N); the rest of the library wants (N, C, H, W).
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1), dtype=np.uint8))
    targets = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)
    return ImageTensors(images, targets, [str(d) for d in range(10)])
