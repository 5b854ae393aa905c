"""A DataModule for your own images: train/test class folders plus any number of OOD folders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch_deup.datamodules.base import TensorDataModule
from torch_deup.datamodules.tensor_data import (
    ImageTensors,
    class_folders,
    load_flat_image_folder,
    load_image_folder,
)

PathLike = str | Path


class ImageFolderDataModule(TensorDataModule):
    """In-distribution ``train_dir``/``test_dir`` (``<dir>/<class>/<image>``) and OOD folders.

    Every image of every set must have one size (resize beforehand); labels are the sorted class
    folder names, which must match between ``train_dir`` and ``test_dir``. Each OOD folder is read
    as class-structured when it has sub-folders, else as a flat folder of images (labels ``-1``).
    ``ood_dirs`` is a mapping ``{name: folder}`` or a sequence of folders named after their last
    path component. ``test_dataloader()`` returns ``[ID test, *OOD]`` in :attr:`ood_names` order.

    ``mean``/``std`` default to the per-channel statistics of the training split (validation
    images excluded), available as ``mean_``/``std_`` after setup. See
    :class:`~torch_deup.datamodules.base.TensorDataModule` for loaders, splits and seeds.

    Example:
        >>> dm = ImageFolderDataModule(
        ...     "data/cifar10/train", "data/cifar10/test", batch_size=128,
        ...     ood_dirs={"svhn": "data/svhn/test", "noise": "data/noise"}, val_split=0.1,
        ... )
        >>> dm.ood_names
        ['svhn', 'noise']
    """

    def __init__(
        self,
        train_dir: PathLike,
        test_dir: PathLike,
        batch_size: int,
        ood_dirs: Sequence[PathLike] | Mapping[str, PathLike] = (),
        num_workers: int = 0,
        val_split: float | None = None,
        postprocess_set: str = "val",
        split_seed: int = 0,
        seed: int = 0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: bool = True,
        padding: int = 4,
        cache_dir: PathLike | None = None,
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
        self.train_dir = train_dir
        self.test_dir = test_dir
        self.ood_dirs = ood_dirs

    def _ood_folders(self) -> dict[str, Path]:
        if isinstance(self.ood_dirs, Mapping):
            return {str(name): Path(folder) for name, folder in self.ood_dirs.items()}
        folders = [self.ood_dirs] if isinstance(self.ood_dirs, str | Path) else list(self.ood_dirs)
        named = {Path(folder).name: Path(folder) for folder in folders}
        if len(named) != len(folders):
            raise ValueError(
                f"Expected `ood_dirs` folders with distinct names, but got {[str(f) for f in folders]}; "
                "pass a mapping {name: folder} to name them."
            )
        return named

    @property
    def ood_names(self) -> list[str]:
        return list(self._ood_folders())

    @property
    def eval_ood(self) -> bool:
        """Whether ``test_dataloader()`` serves OOD sets after the ID test set."""
        return bool(self.ood_names)

    def _load(self) -> tuple[ImageTensors, ImageTensors, dict[str, ImageTensors]]:
        train = load_image_folder(self.train_dir, self.cache_dir)
        test = load_image_folder(self.test_dir, self.cache_dir)
        if test.classes != train.classes:
            raise ValueError(
                f"Expected `test_dir` to hold the class folders of `train_dir` {train.classes}, "
                f"but got {test.classes}."
            )
        ood = {name: _load_any_folder(folder, self.cache_dir) for name, folder in self._ood_folders().items()}
        return train, test, ood


def _load_any_folder(folder: Path, cache_dir: PathLike | None) -> ImageTensors:
    """A class-structured folder (``folder/<class>/*``) or a flat one (``folder/*``), never a mix,
    whose loose images would otherwise be dropped."""
    if folder.is_dir() and class_folders(folder):
        return load_image_folder(folder, cache_dir)  # which refuses loose images beside the folders
    return load_flat_image_folder(folder, cache_dir)
