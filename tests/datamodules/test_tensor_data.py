import numpy as np
import pytest
import torch

from torch_deup.datamodules.tensor_data import channel_stats, load_flat_image_folder

from .conftest import coded_images, write_flat_folder


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
