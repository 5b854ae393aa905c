"""Tiny data sets written in every layout the DataModules read, with a marker in each image.

Every image is random noise except two pixels that make it identifiable after loading:
``image[0, 0, 0]`` is its label and ``image[1, 0, 0]`` its index in the written set (< 256).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def coded_images(labels: list[int], seed: int, size: int = 32) -> torch.Tensor:
    """Random uint8 images ``(N, 3, size, size)`` carrying their label and index as markers."""
    images = torch.randint(
        0, 256, (len(labels), 3, size, size), generator=torch.Generator().manual_seed(seed)
    )
    images = images.to(torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(labels, dtype=torch.uint8)
    images[:, 1, 0, 0] = torch.arange(len(labels), dtype=torch.uint8)
    return images


def write_png(image: torch.Tensor, path: Path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_class_folders(folder: Path, images: torch.Tensor, labels: list[int], classes: list[str]) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / classes[label]).mkdir(parents=True, exist_ok=True)
        write_png(image, folder / classes[label] / f"{i:04d}.png")


def write_flat_folder(folder: Path, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        write_png(image, folder / f"{i:04d}.png")


def _dump(path: Path, obj: dict, str_keys: bool) -> None:
    if str_keys:  # what the official Python-2 pickles give once read with encoding="latin1"
        obj = {k.decode(): [n.decode() for n in v] if k.endswith(b"names") else v for k, v in obj.items()}
    with path.open("wb") as f:
        pickle.dump(obj, f)


def write_cifar_official(
    root: Path, num_classes: int, per_class: int = 5, str_keys: bool = False
) -> tuple[torch.Tensor, list[int], torch.Tensor, list[int]]:
    """Official python-format CIFAR files; returns (train images, labels, test images, labels).

    Train holds ``per_class`` images a class, spread over the batch files; test holds 2 a class.
    """
    if num_classes == 10:
        folder, train_files, test_file, meta = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "batches.meta",
        )
        label_key, names_key, names = b"labels", b"label_names", CIFAR10_CLASSES
    else:
        folder, train_files, test_file, meta = "cifar-100-python", ["train"], "test", "meta"
        label_key, names_key, names = (
            b"fine_labels",
            b"fine_label_names",
            [f"class{i:03d}" for i in range(num_classes)],
        )
    (root / folder).mkdir(parents=True)
    train_labels = [i % num_classes for i in range(per_class * num_classes)]
    test_labels = [i % num_classes for i in range(2 * num_classes)]
    train, test = coded_images(train_labels, seed=1), coded_images(test_labels, seed=2)
    chunks = np.array_split(np.arange(len(train_labels)), len(train_files))
    for name, (images, labels) in zip(
        [*train_files, test_file],
        [*((train[c], [train_labels[i] for i in c]) for c in chunks), (test, test_labels)],
        strict=True,
    ):
        batch = {
            b"batch_label": name.encode(),
            b"data": images.reshape(len(images), -1).numpy(),
            label_key: labels,
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
        }
        _dump(root / folder / name, batch, str_keys)
    _dump(root / folder / meta, {names_key: [n.encode() for n in names], b"num_vis": 3072}, str_keys)
    return train, train_labels, test, test_labels


def write_cifar_folders(
    root: Path, num_classes: int = 10, per_class: int = 4, classes: list[str] | None = None
) -> list[str]:
    """``root/cifar10/{train,test}/<class>/*.png`` (``cifar100`` when ``num_classes=100``);
    ``classes`` names the folder of each label (default: the official names)."""
    if classes is None:
        classes = CIFAR10_CLASSES if num_classes == 10 else [f"class{i:03d}" for i in range(num_classes)]
    folder = root / ("cifar10" if num_classes == 10 else "cifar100")
    for split, n, seed in [("train", per_class, 1), ("test", 2, 2)]:
        labels = [i % num_classes for i in range(n * num_classes)]
        write_class_folders(folder / split, coded_images(labels, seed), labels, classes)
    return classes


def svhn_digits(n: int = 12) -> list[int]:
    return [i % 10 for i in range(n)]


def write_svhn_mat(root: Path) -> None:
    """``root/test_32x32.mat``: X is (H, W, C, N), y is (N, 1) with digit 0 stored as 10."""
    digits = svhn_digits()
    images = coded_images(digits, seed=3)
    root.mkdir(parents=True, exist_ok=True)
    y = np.array([[10 if d == 0 else d] for d in digits], dtype=np.uint8)
    scipy.io.savemat(root / "test_32x32.mat", {"X": images.permute(2, 3, 1, 0).numpy(), "y": y})


def write_svhn_folder(root: Path) -> None:
    digits = svhn_digits()
    write_class_folders(
        root / "svhn" / "test", coded_images(digits, seed=3), digits, [str(d) for d in range(10)]
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(params=["official", "folders"])
def cifar10_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A root holding CIFAR-10 in one layout and SVHN in the matching one."""
    root = tmp_path / "data"
    root.mkdir()
    if request.param == "official":
        write_cifar_official(root, 10)
        write_svhn_mat(root)
    else:
        write_cifar_folders(root)
        write_svhn_folder(root)
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """CIFAR-10 and SVHN as image folders, 4 train and 2 test images a class."""
    root = tmp_path / "data"
    write_cifar_folders(root)
    write_svhn_folder(root)
    return root
