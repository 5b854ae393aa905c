"""The SVHN test set, the usual OOD set of CIFAR models, from the official ``.mat`` or image folders."""

from __future__ import annotations

from pathlib import Path

import torchvision

from torch_deup.datamodules.official import read_svhn_mat
from torch_deup.datamodules.sources import DataSource, Layout, image_folder_layout
from torch_deup.datamodules.tensor_data import ImageTensors


def _read_mat(root: Path, cache_dir: str | Path | None) -> tuple[ImageTensors]:
    return (read_svhn_mat(root / "test_32x32.mat"),)


def _download(root: Path) -> None:
    # torchvision checks the file's MD5 and skips the download when a verified copy is there.
    torchvision.datasets.SVHN(str(root), split="test", download=True)


SVHN_TEST = DataSource(
    name="SVHN test set",
    layouts=(
        Layout("official torchvision file", ("test_32x32.mat",), _read_mat),
        # named 0-9: folders named as the .mat file's labels (1-10) would shift every label
        image_folder_layout("svhn", ("test",), num_classes=10, names=[str(d) for d in range(10)]),
    ),
    download=_download,
    how_to_get=(
        "Fix: pass download=True (needs internet) to fetch test_32x32.mat into root, or put the images "
        "in root/svhn/test/<digit>/ with one folder per digit 0-9, or pass eval_ood=False."
    ),
)
