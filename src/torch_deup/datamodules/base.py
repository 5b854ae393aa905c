"""What every image DataModule of torch-deup shares: split, normalisation, loaders, lazy setup.

Subclasses only say where the images come from (:meth:`TensorDataModule._load`) and which OOD sets
they serve (:attr:`TensorDataModule.ood_names`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from lightning import LightningDataModule
from torch.utils.data import DataLoader

from torch_deup.datamodules.splits import stratified_split
from torch_deup.datamodules.tensor_data import ImageTensors, TensorImageDataset, batch_loader, channel_stats

POSTPROCESS_SETS = ("val", "test", "train")


class TensorDataModule(LightningDataModule):
    """Base of the image DataModules: images held as uint8 tensors, served in whole batches.

    ``setup`` loads the data once; every ``*_dataloader`` method calls it when needed, so the
    DataModule works without ``trainer.fit``/``trainer.test`` having set it up first.

    Loaders: training shuffles with a generator seeded by ``seed`` and applies random crop
    (zero padding ``padding``) + horizontal flip when ``augment``; validation, test, OOD and
    post-processing loaders are neither augmented nor shuffled. The validation split is
    ``stratified_split(train targets, val_split, seed=split_seed)``; without ``val_split`` there is
    no validation loop (``val_dataloader`` returns ``[]``).

    ``test_dataloader()`` returns the in-distribution test loader alone when there is no OOD set,
    else the list ``[ID test, *OOD sets in ood_names order]``: dataloader index ``i >= 1`` is
    ``ood_names[i - 1]``.

    ``mean``/``std`` default to the subclass's ``default_mean``/``default_std``; where it has none,
    they are computed per channel over the training split (validation images excluded). The
    values used are in ``mean_`` and ``std_`` after setup.

    Image folders are decoded once and cached under ``cache_dir`` (default ``$TORCH_DEUP_CACHE`` or
    ``~/.cache/torch_deup``). A batch costs a few tensor ops, so ``num_workers=0`` is usually fastest.
    """

    default_mean: ClassVar[tuple[float, ...] | None] = None
    default_std: ClassVar[tuple[float, ...] | None] = None

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        val_split: float | None = None,
        postprocess_set: str = "val",
        split_seed: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool = True,
        padding: int = 4,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.postprocess_set = postprocess_set
        self.split_seed = split_seed
        self.seed = seed
        self.mean = mean
        self.std = std
        self.augment = augment
        self.padding = padding
        self.cache_dir = cache_dir
        self._sets: dict[str, ImageTensors] | None = None

    @property
    def ood_names(self) -> list[str]:
        """Names of the OOD sets, in the order ``test_dataloader()`` lists them after the ID set."""
        raise NotImplementedError

    def _load(self) -> tuple[ImageTensors, ImageTensors, dict[str, ImageTensors]]:
        """The whole training set, the test set and the OOD sets keyed by :attr:`ood_names`."""
        raise NotImplementedError

    def _check_args(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be a positive integer, but got {self.batch_size!r}.")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise ValueError(
                f"Expected `val_split` in (0, 1) or None, but got {self.val_split!r}; "
                "0.1 holds out 10% of each class of the training set."
            )
        if self.postprocess_set not in POSTPROCESS_SETS:
            raise ValueError(
                f"Expected `postprocess_set` in {POSTPROCESS_SETS}, but got {self.postprocess_set!r}."
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("Pass both `mean` and `std`, or neither; got only one of them.")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"Expected every `std` value to be positive, but got {tuple(self.std)}.")

    def setup(self, stage: str | None = None) -> None:
        """Load every set once (later calls do nothing), split validation off, fix normalisation."""
        if self._sets is not None:
            return
        self._check_args()
        train, test, ood = self._load()
        sets = {"train": train, "test": test, **{f"ood/{name}": data for name, data in ood.items()}}
        _check_same_shape(sets)
        if self.val_split is not None:
            train_idx, val_idx = stratified_split(train.targets, self.val_split, seed=self.split_seed)
            sets["train"], sets["val"] = train.subset(train_idx), train.subset(val_idx)
        if self.mean is not None:
            self.mean_, self.std_ = tuple(self.mean), tuple(self.std)
        elif self.default_mean is not None:
            self.mean_, self.std_ = self.default_mean, self.default_std
        else:
            self.mean_, self.std_ = channel_stats(sets["train"].images)
        if not all(math.isfinite(v) for v in (*self.mean_, *self.std_)) or min(self.std_) <= 0:
            raise ValueError(
                f"The input normalisation has mean {tuple(self.mean_)} and std {tuple(self.std_)}: every "
                "std must be positive and every value finite (a channel constant over the training "
                "images has std 0). Pass `mean` and `std` explicitly."
            )
        channels = train.images.shape[1]
        if len(self.mean_) != channels or len(self.std_) != channels:
            raise ValueError(
                f"Expected `mean` and `std` with one value per channel ({channels}), "
                f"but got {len(self.mean_)} and {len(self.std_)} values."
            )
        self._sets = sets

    def _data(self, name: str) -> ImageTensors | None:
        if self._sets is None:
            self.prepare_data()
            self.setup()
        return self._sets.get(name)

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        return self._data("train").classes

    def _loader(self, data: ImageTensors, train: bool = False) -> DataLoader:
        dataset = TensorImageDataset(
            data, self.mean_, self.std_, augment=train and self.augment, padding=self.padding, seed=self.seed
        )
        return batch_loader(
            dataset, self.batch_size, shuffle=train, seed=self.seed, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented batches of the training split."""
        return self._loader(self._data("train"), train=True)

    def train_eval_dataloader(self) -> DataLoader:
        """The training split in order, without augmentation: what fitted detectors are fitted on."""
        return self._loader(self._data("train"))

    def val_dataloader(self) -> DataLoader | list:
        """The validation split, or ``[]`` (Lightning then skips validation) without ``val_split``."""
        val = self._data("val")
        return [] if val is None else self._loader(val)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The ID test loader, or ``[ID test, *OOD loaders]`` (order of :attr:`ood_names`)."""
        test = self._loader(self._data("test"))
        if not self.ood_names:
            return test
        return [test, *(self._loader(self._data(f"ood/{name}")) for name in self.ood_names)]

    def postprocess_dataloader(self) -> DataLoader:
        """The set a post-processing method (DEUP, a fitted OOD detector) is fitted on.

        ``postprocess_set="val"`` (the default) is the held-out validation split and needs
        ``val_split``; ``"test"`` and ``"train"`` are allowed but warn why their numbers mislead.
        """
        val = self._data("val")
        if self.postprocess_set == "val":
            if val is None:
                raise ValueError(
                    "postprocess_set='val' fits post-processing on the validation split, but "
                    "`val_split` is None so there is none. Pass `val_split=0.1` (10% of the training "
                    "set held out), or postprocess_set='test' to fit on the test set (leaks test data)."
                )
            return self._loader(val)
        if self.postprocess_set == "test":
            warnings.warn(
                "postprocess_set='test' fits post-processing on the test set it is then evaluated on: "
                "test data leaks into fitting and the test metrics are optimistic. Use "
                "`val_split=0.1, postprocess_set='val'` instead.",
                UserWarning,
                stacklevel=2,
            )
            return self._loader(self._data("test"))
        warnings.warn(
            "postprocess_set='train' fits post-processing on images the model was trained on: it sees "
            "fewer, smaller errors than on unseen data, so an error predictor like DEUP's learns to "
            "underestimate them. Use `val_split=0.1, postprocess_set='val'` instead.",
            UserWarning,
            stacklevel=2,
        )
        return self._loader(self._data("train"))


def _check_same_shape(sets: dict[str, ImageTensors]) -> None:
    shapes = {name: tuple(data.images.shape[1:]) for name, data in sets.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"Expected every set to hold images of one shape (C, H, W), but got {shapes}; "
            "resize the images to one size first."
        )
