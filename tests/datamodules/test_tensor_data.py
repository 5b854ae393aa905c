import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from torch_deup.datamodules.tensor_data import (
    ImageTensors,
    TensorImageDataset,
    batch_loader,
    channel_stats,
    load_flat_image_folder,
    load_image_folder,
)

from .conftest import coded_images, write_class_folders, write_flat_folder


def test_load_flat_image_folder_reads_sorted_files_without_labels(tmp_path):
    images = coded_images([0] * 5, seed=0)
    write_flat_folder(tmp_path / "ood", images)
    (tmp_path / "ood" / "notes.txt").write_text("not an image")
    data = load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(data.images, images)
    assert data.targets.tolist() == [-1] * 5
    assert data.classes == []
    assert len(list((tmp_path / "cache").glob("ood-*.pt"))) == 1
    again = load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again.images, images)


def test_two_processes_writing_the_cache_at_once_both_succeed(tmp_path, monkeypatch):
    write_flat_folder(tmp_path / "ood", coded_images([0] * 3, seed=0))
    save, inner = torch.save, []

    def load():
        return load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)

    def save_while_another_process_writes(obj, path):
        # the other process decodes, saves and renames its cache between this save and its rename
        save(obj, path)
        if not inner:
            inner.append(None)
            inner[0] = load()

    monkeypatch.setattr(torch, "save", save_while_another_process_writes)
    outer = load()
    assert torch.equal(outer.images, inner[0].images)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    # readable as the umask allows (a cache shared between users), not private as a temporary file
    assert next((tmp_path / "cache").iterdir()).stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_image_rewritten_at_the_same_size_is_decoded_again(tmp_path):
    (tmp_path / "ood").mkdir()
    path = tmp_path / "ood" / "0.png"
    first, second = coded_images([0, 1], seed=0)

    def write(image: torch.Tensor, mtime_ns: int) -> None:
        # uncompressed: the file's size depends on the image's shape only
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, compress_level=0)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    write(first, 10**18)
    size = path.stat().st_size
    load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)
    write(second, 10**18 + 10**9)
    assert path.stat().st_size == size
    again = load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again.images[0], second)


def test_images_torchvision_cannot_decode_are_refused_by_name(tmp_path):
    write_flat_folder(tmp_path / "ood", coded_images([0], seed=0))
    Image.new("RGB", (32, 32)).save(tmp_path / "ood" / "x.bmp")
    with pytest.raises(ValueError, match=r"1 images cannot be decoded .* e\.g\. .*x\.bmp\. Convert"):
        load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)


def test_gif_images_are_read_as_rgb(tmp_path):
    images = coded_images([0, 0], seed=0, size=8)
    write_flat_folder(tmp_path / "ood", images[:1])
    Image.fromarray(images[1].permute(1, 2, 0).numpy()).convert("L").save(tmp_path / "ood" / "x.gif")
    data = load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)
    assert data.images.shape == (2, 3, 8, 8)


def test_an_undecodable_image_is_named(tmp_path):
    write_flat_folder(tmp_path / "ood", coded_images([0], seed=0))
    (tmp_path / "ood" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"Could not decode the image .*broken\.jpg"):
        load_flat_image_folder(tmp_path / "ood", cache_dir=tmp_path / "cache", progress=False)


def test_load_flat_image_folder_without_images_says_so(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"No images .* found directly inside"):
        load_flat_image_folder(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_channel_stats_matches_numpy_over_several_chunks():
    images = torch.randint(0, 256, (10, 3, 4, 5), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    mean, std = channel_stats(images, chunk=3)
    reference = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, reference.std(axis=(0, 2, 3)), rtol=1e-10)


def augmented_batches(seed: int, num_workers: int, subset: bool = False) -> list[torch.Tensor]:
    """Four augmented batches of one image repeated 64 times: all differences are augmentation."""
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(1, 3, 8, 8)
    data = ImageTensors(image.expand(64, -1, -1, -1).clone(), torch.zeros(64, dtype=torch.long), ["a"])
    dataset = TensorImageDataset(data, (0.5,) * 3, (0.25,) * 3, augment=True, padding=2)
    if subset:  # a Subset forwards whole-batch fetches to the dataset, and hides its generator
        dataset = Subset(dataset, range(64))
    return [x for x, _ in batch_loader(dataset, 16, seed=seed, num_workers=num_workers)]


def test_workers_draw_their_own_augmentations_reproducibly_under_a_seed():
    batches = augmented_batches(0, num_workers=2)
    # consecutive batches go to different workers, which must not share one random stream
    assert not any(torch.equal(a, b) for a, b in itertools.pairwise(batches))
    assert all(torch.equal(a, b) for a, b in zip(batches, augmented_batches(0, 2), strict=True))
    assert not torch.equal(batches[0], augmented_batches(1, 2)[0])
    subset = augmented_batches(0, num_workers=2, subset=True)
    assert not any(torch.equal(a, b) for a, b in itertools.pairwise(subset))


def test_hidden_folders_are_no_classes_and_an_empty_class_folder_is_refused(tmp_path):
    labels = [0, 1, 0, 1]
    write_class_folders(tmp_path / "set", coded_images(labels, seed=0), labels, ["a", "b"])
    (tmp_path / "set" / ".ipynb_checkpoints").mkdir()
    data = load_image_folder(tmp_path / "set", cache_dir=tmp_path / "cache", progress=False)
    assert data.classes == ["a", "b"]
    assert data.targets.tolist() == [0, 0, 1, 1]
    (tmp_path / "set" / "c").mkdir()
    with pytest.raises(FileNotFoundError, match=r"set/c holds no images"):
        load_image_folder(tmp_path / "set", cache_dir=tmp_path / "cache", progress=False)


def test_loose_images_beside_class_folders_are_refused_and_hidden_files_are_no_images(tmp_path):
    labels = [0, 1]
    write_class_folders(tmp_path / "set", coded_images(labels, seed=0), labels, ["a", "b"])
    (tmp_path / "set" / "a" / "._0000.png").write_bytes(b"macOS metadata, not an image")
    data = load_image_folder(tmp_path / "set", cache_dir=tmp_path / "cache", progress=False)
    assert data.targets.tolist() == [0, 1]
    write_flat_folder(tmp_path / "set", coded_images([0], seed=1))  # set/0000.png beside a/ and b/
    with pytest.raises(ValueError, match=r"holds both images \(1, e.g. 0000.png\) and class folders"):
        load_image_folder(tmp_path / "set", cache_dir=tmp_path / "cache", progress=False)
