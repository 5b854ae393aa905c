"""Images held once as a uint8 tensor, normalised and augmented a whole batch at a time.

Decoding JPEG/PNG files image by image through PIL at every epoch is what makes CIFAR training
slow on a small CPU. Here a folder is decoded once (and cached on disk), and the DataLoader asks
the dataset for whole batches through ``__getitems__``, so a batch costs a few tensor ops.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.io import ImageReadMode, decode_image, read_file
from tqdm.auto import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")  # what torchvision.io decodes
#: image files it cannot decode: refused by name rather than skipped as if they were not images
UNSUPPORTED_SUFFIXES = (".bmp", ".tif", ".tiff")


@dataclass
class ImageTensors:
    """Decoded images ``(N, C, H, W)`` uint8, integer targets ``(N,)`` and class names."""

    images: Tensor
    targets: Tensor
    classes: list[str]

    def subset(self, index: Tensor) -> ImageTensors:
        return ImageTensors(self.images[index], self.targets[index], self.classes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TORCH_DEUP_CACHE", Path.home() / ".cache" / "torch_deup"))


def _image_files(paths: Iterable[Path]) -> list[Path]:
    """The decodable image files among ``paths``, sorted; an image torchvision cannot decode raises.
    Hidden files (``.name``, such as macOS's ``._image.jpg`` metadata) are no images."""
    files = sorted(p for p in paths if p.is_file() and not p.name.startswith("."))
    unsupported = [p for p in files if p.suffix.lower() in UNSUPPORTED_SUFFIXES]
    if unsupported:
        raise ValueError(
            f"{len(unsupported)} images cannot be decoded ({', '.join(UNSUPPORTED_SUFFIXES)}), e.g. "
            f"{unsupported[0]}. Convert them to PNG or JPEG ({', '.join(IMAGE_SUFFIXES)} are read)."
        )
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]


def class_folders(root: Path) -> list[str]:
    """The class folders of ``root``, in sorted order: numeric order when every folder is named by
    a number (``2`` before ``10``, so folders ``0..99`` are labels 0..99). Hidden folders (``.name``,
    such as ``.ipynb_checkpoints``) are no classes."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes and all(name.isdecimal() for name in classes):
        classes.sort(key=int)
    return classes


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files of a ``root/<class>/<image>`` tree, labelled by :func:`class_folders`' order."""
    classes = class_folders(root)
    loose = _image_files(root.iterdir())
    if classes and loose:
        raise ValueError(
            f"{root} holds both images ({len(loose)}, e.g. {loose[0].name}) and class folders {classes}: "
            "the images would belong to no class. Move them into class folders, or the folders out."
        )
    files, targets = [], []
    for label, name in enumerate(classes):
        images = _image_files((root / name).iterdir())
        if not images:
            # as torchvision's ImageFolder: an empty class would shift no label but could never be
            # predicted from data, and a stray folder would silently become a class
            raise FileNotFoundError(
                f"The class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)}). Add its "
                "images or remove the folder."
            )
        files += images
        targets += [label] * len(images)
    if not files:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_SUFFIXES)}) found under {root}/<class>/. "
            "Expected one sub-folder per class holding that class's images."
        )
    return files, targets, classes


def load_image_folder(
    root: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> ImageTensors:
    """Decode every image of ``root/<class>/*`` into one uint8 tensor, cached on disk.

    The cache key covers the folder's path and each file's name, size and modification time, so
    editing the folder invalidates it. All images must share one size.

    Example:
        >>> data = load_image_folder("../shared/data/cifar10/test")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        torch.Size([10000, 3, 32, 32])
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    files, targets, classes = list_image_folder(root)
    return _decode_cached(root, files, targets, classes, cache_dir, progress)


def load_flat_image_folder(
    root: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> ImageTensors:
    """Decode every image directly inside ``root`` (no class sub-folders), cached on disk.

    Meant for unlabelled sets such as OOD images: every target is ``-1`` and ``classes`` is empty.
    Caching and size rules are those of :func:`load_image_folder`.

    Example:
        >>> data = load_flat_image_folder("my_ood_images")  # doctest: +SKIP
        >>> data.targets.unique()  # doctest: +SKIP
        tensor([-1])
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    files = _image_files(root.iterdir())
    if not files:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_SUFFIXES)}) found directly inside {root}. "
            "Expected a flat folder of image files."
        )
    return _decode_cached(root, files, [-1] * len(files), [], cache_dir, progress)


def _decode(path: Path) -> Tensor:
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise ValueError(
            f"Could not decode the image {path}: {error}. Re-save it as JPEG or PNG, or remove it."
        ) from error


def _decode_cached(
    root: Path,
    files: list[Path],
    targets: list[int],
    classes: list[str],
    cache_dir: str | Path | None,
    progress: bool,
) -> ImageTensors:
    """Decode ``files`` into one uint8 tensor, or read it back from the cache keyed on the listing."""
    key = hashlib.sha1(str(root).encode())
    key.update(f"classes:{'/'.join(classes)};".encode())  # the labels depend on them
    for path in files:
        stat = path.stat()
        key.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"{root.name}-{key.hexdigest()[:16]}.pt"
    if cache_file.exists():
        images, cached_targets, cached_classes = torch.load(cache_file, weights_only=True).values()
        return ImageTensors(images, cached_targets, list(cached_classes))
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for torchcodec's; they are still the fastest
        # decoder a torchvision install is sure to have, and run once per folder (then cached).
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        decoded = [_decode(path) for path in tqdm(files, desc=f"Decoding {root.name}", disable=not progress)]
    shapes = {tuple(img.shape) for img in decoded}
    if len(shapes) != 1:
        raise ValueError(f"Images under {root} have different sizes {sorted(shapes)}; resize them first.")
    data = ImageTensors(torch.stack(decoded), torch.tensor(targets, dtype=torch.long), classes)
    cache.mkdir(parents=True, exist_ok=True)
    # a temporary file of its own: processes that decode the same folder at once (the ranks of a
    # distributed run) each write theirs and replace the cache atomically, never each other's
    handle, name = tempfile.mkstemp(dir=cache, prefix=f"{cache_file.stem}-", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        torch.save({"images": data.images, "targets": data.targets, "classes": classes}, tmp)
        # mkstemp makes the file private (0600); a cache shared between users keeps the umask's mode
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, cache_file)
    finally:
        tmp.unlink(missing_ok=True)
    return data


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding plus random horizontal flip, independently per image."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), generator=generator)
    rows = dy + torch.arange(h).view(1, 1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    chans = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    out = padded[batch, chans, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


class TensorImageDataset(Dataset):
    """uint8 images served as normalised float batches, optionally augmented.

    ``__getitems__`` lets a DataLoader fetch a whole batch in one call (see :func:`batch_loader`).
    """

    def __init__(
        self,
        data: ImageTensors,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        padding: int = 4,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.augment = augment
        self.padding = padding
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.data.targets)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.data.images[index]
        if self.augment:
            images = random_crop_flip(images, self.padding, self.generator)
        return (images.float() - self.mean) / self.std, self.data.targets[index]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _already_batched(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


def _seed_worker_augmentation(worker_id: int) -> None:
    # each worker holds a copy of the dataset's generator in the same state: without a seed of its
    # own, every worker would draw the same crops and flips for its batches
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    generator = getattr(dataset, "generator", None)  # any dataset may come through batch_loader
    if isinstance(generator, torch.Generator):
        generator.manual_seed(info.seed)


def batch_loader(
    dataset: TensorImageDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader that fetches whole batches from a :class:`TensorImageDataset`. The order (with
    ``shuffle``) and the workers' augmentation seeds follow ``seed``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=_already_batched,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker_augmentation,
    )


def channel_stats(images: Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``(N, C, H, W)`` images, in [0, 1] units.

    Runs over chunks so that 50,000 CIFAR images never exist as one float tensor.

    Example:
        >>> images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
        >>> channel_stats(images)
        ((0.5,), (0.5,))
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64) / 255
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
