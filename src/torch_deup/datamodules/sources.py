"""A named data set that may sit under ``root`` in one of several file layouts.

Finding the data and explaining its absence live here once, for CIFAR-10, CIFAR-100 and SVHN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch_deup.datamodules.tensor_data import ImageTensors, load_image_folder


@dataclass(frozen=True)
class Layout:
    """One way of storing a data set: the paths (relative to ``root``) it needs and how to read them.

    ``read(root, cache_dir)`` returns the data set's splits in the source's order.
    """

    description: str
    required: tuple[str, ...]
    read: Callable[[Path, str | Path | None], tuple[ImageTensors, ...]]

    def present(self, root: Path) -> bool:
        return all((root / path).exists() for path in self.required)


@dataclass(frozen=True)
class DataSource:
    """A data set, the layouts it is read from (first present wins) and how to download it.

    ``download(root)`` fetches the files of the first layout into ``root``; ``how_to_get`` is the
    advice printed when no layout is present.
    """

    name: str
    layouts: tuple[Layout, ...]
    download: Callable[[Path], object]
    how_to_get: str

    def locate(self, root: str | Path) -> Layout | None:
        return next((layout for layout in self.layouts if layout.present(Path(root))), None)

    def load(self, root: str | Path, cache_dir: str | Path | None = None) -> tuple[ImageTensors, ...]:
        """Read the data from the first layout present under ``root``, or say what was looked for."""
        layout = self.locate(root)
        if layout is None:
            raise FileNotFoundError(self._missing_message(Path(root)))
        return layout.read(Path(root), cache_dir)

    def _missing_message(self, root: Path) -> str:
        lines = [f"{self.name} not found under {root.resolve()}. Looked for:"]
        for layout in self.layouts:
            lines.append(f"  {layout.description}:")
            for path in layout.required:
                state = "found" if (root / path).exists() else "missing"
                lines.append(f"    {root / path} ({state})")
        lines.append(self.how_to_get)
        return "\n".join(lines)


def image_folder_layout(
    folder: str, splits: tuple[str, ...], num_classes: int, names: Sequence[str] | None = None
) -> Layout:
    """``root/<folder>/<split>/<class>/*`` image folders, one class folder per label (sorted names,
    numeric for numbered folders). With ``names`` (the official class names in label order), the
    folders must be named by them or by the label numbers: other names could not be matched to
    the official labels."""
    numbers = [str(label) for label in range(num_classes)]

    def read(root: Path, cache_dir: str | Path | None) -> tuple[ImageTensors, ...]:
        sets = tuple(load_image_folder(root / folder / split, cache_dir) for split in splits)
        for split, data in zip(splits, sets, strict=True):
            if len(data.classes) != num_classes:
                raise ValueError(
                    f"Expected {num_classes} class folders under {root / folder / split}, but found "
                    f"{len(data.classes)}: {data.classes}."
                )
            if names is not None and data.classes not in (list(names), numbers):
                raise ValueError(
                    f"The class folders under {root / folder / split} are {data.classes}: expected the "
                    f"official names {list(names)} or the label numbers 0-{num_classes - 1}, so that "
                    "each folder's label is the official one. Rename the folders."
                )
        return sets

    return Layout(
        f"image folders ({folder}/{{{','.join(splits)}}}/<class>/<image>)",
        tuple(f"{folder}/{split}" for split in splits),
        read,
    )
