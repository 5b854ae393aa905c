"""CIFAR-10 and CIFAR-100 DataModules, with the SVHN test set as OOD set.

Both read, under ``root``, the first layout present:

1. the official torchvision files, ``cifar-10-batches-py/`` or ``cifar-100-python/``;
2. image folders, ``cifar10/{train,test}/<class>/<image>`` or ``cifar100/...``, class folders in
   the official label order once sorted by name (as in ``../shared/data``).

and SVHN (``eval_ood=True``) from ``root/test_32x32.mat`` or ``root/svhn/test/<digit>/<image>``.
``root`` is the folder that *contains* those entries. ``download=True`` fetches the missing official
files (MD5-verified by torchvision) in ``prepare_data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torchvision

from torch_deup.datamodules.base import TensorDataModule
from torch_deup.datamodules.official import read_cifar
from torch_deup.datamodules.sources import DataSource, Layout, image_folder_layout
from torch_deup.datamodules.svhn import SVHN_TEST
from torch_deup.datamodules.tensor_data import ImageTensors

# Per-channel statistics of the training images, in [0, 1] units (population std over all pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _official_layout(
    folder: str, train_files: tuple[str, ...], test_file: str, label_key: str, meta_file: str, names_key: str
) -> Layout:
    def read(root: Path, cache_dir: str | Path | None) -> tuple[ImageTensors, ImageTensors]:
        train = read_cifar(root / folder, train_files, label_key, meta_file, names_key)
        test = read_cifar(root / folder, (test_file,), label_key, meta_file, names_key)
        return train, test

    required = tuple(f"{folder}/{name}" for name in (*train_files, test_file, meta_file))
    return Layout(f"official torchvision files ({folder}/)", required, read)


def _how_to_get(folder: str) -> str:
    return (
        "Fix: pass download=True (needs internet) to fetch the official files into root, or put the "
        f"images in root/{folder}/{{train,test}}/<class>/ (root is the folder that contains {folder}/)."
    )


def _download_cifar10(root: Path) -> None:
    # One archive holds train and test; torchvision verifies its MD5 and skips a verified copy.
    torchvision.datasets.CIFAR10(str(root), train=True, download=True)


def _download_cifar100(root: Path) -> None:
    torchvision.datasets.CIFAR100(str(root), train=True, download=True)


#: the official label order (alphabetical, as CIFAR-100's fine labels are)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR10_SOURCE = DataSource(
    name="CIFAR-10",
    layouts=(
        _official_layout(
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test_batch",
            "labels",
            "batches.meta",
            "label_names",
        ),
        image_folder_layout("cifar10", ("train", "test"), num_classes=10, names=CIFAR10_CLASSES),
    ),
    download=_download_cifar10,
    how_to_get=_how_to_get("cifar10"),
)

CIFAR100_SOURCE = DataSource(
    name="CIFAR-100",
    layouts=(
        _official_layout("cifar-100-python", ("train",), "test", "fine_labels", "meta", "fine_label_names"),
        image_folder_layout("cifar100", ("train", "test"), num_classes=100),
    ),
    download=_download_cifar100,
    how_to_get=_how_to_get("cifar100"),
)


class _CIFARDataModule(TensorDataModule):
    """CIFAR machinery shared by :class:`CIFAR10DataModule` and :class:`CIFAR100DataModule`."""

    source: ClassVar[DataSource]

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        num_workers: int = 0,
        eval_ood: bool = False,
        val_split: float | None = None,
        postprocess_set: str = "val",
        split_seed: int = 0,
        seed: int = 0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: bool = True,
        padding: int = 4,
        cache_dir: str | Path | None = None,
        download: bool = False,
    ) -> None:
        super().__init__(
            batch_size,
            num_workers,
            val_split,
            postprocess_set,
            split_seed,
            seed,
            mean,
            std,
            augment,
            padding,
            cache_dir,
        )
        self.root = root
        self.eval_ood = eval_ood
        self.download = download

    @property
    def ood_names(self) -> list[str]:
        return ["svhn"] if self.eval_ood else []

    def _sources(self) -> list[DataSource]:
        return [self.source, SVHN_TEST] if self.eval_ood else [self.source]

    def prepare_data(self) -> None:
        """With ``download=True``, fetch each needed data set that no layout under ``root`` holds."""
        if not self.download:
            return
        root = Path(self.root).expanduser()
        for source in self._sources():
            if source.locate(root) is None:
                source.download(root)

    def _load(self) -> tuple[ImageTensors, ImageTensors, dict[str, ImageTensors]]:
        root = Path(self.root).expanduser()
        train, test = self.source.load(root, self.cache_dir)
        ood = {"svhn": SVHN_TEST.load(root, self.cache_dir)[0]} if self.eval_ood else {}
        return train, test, ood


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (labels 0-9: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).

    ``mean``/``std`` default to :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD`, the statistics the
    project's checkpoint was trained with; pass ImageNet's for the akamaster ResNet-20, and
    ``std=(0.2023, 0.1994, 0.2010)`` (the mean is the same) for TorchUncertainty's checkpoints
    (``resnet18_c10``), which were trained with that standard deviation. With
    ``eval_ood=True``, ``test_dataloader()`` returns ``[CIFAR-10 test, SVHN test]``. See
    :class:`~torch_deup.datamodules.base.TensorDataModule` for loaders, splits and seeds, and this
    module's docstring for the file layouts read under ``root``.

    Example:
        >>> dm = CIFAR10DataModule(root="../shared/data", batch_size=256, eval_ood=True, val_split=0.1)
        >>> dm.ood_names
        ['svhn']
        >>> x, y = next(iter(dm.postprocess_dataloader()))  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
        torch.Size([256, 3, 32, 32])
    """

    source = CIFAR10_SOURCE
    default_mean = CIFAR10_MEAN
    default_std = CIFAR10_STD


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 with its 100 fine labels (class names in alphabetical order, as officially).

    ``mean``/``std`` default to :data:`CIFAR100_MEAN`/:data:`CIFAR100_STD`; everything else is as
    in :class:`CIFAR10DataModule`.

    Example:
        >>> dm = CIFAR100DataModule(root="data", batch_size=128, val_split=0.1)
        >>> dm.ood_names
        []
    """

    source = CIFAR100_SOURCE
    default_mean = CIFAR100_MEAN
    default_std = CIFAR100_STD
