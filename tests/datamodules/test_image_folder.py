import numpy as np
import pytest
import torch

from torch_deup.datamodules import ImageFolderDataModule

from .conftest import coded_images, write_class_folders, write_flat_folder


@pytest.fixture
def dirs(folder_root, tmp_path):
    """ID train/test class folders, a flat OOD folder (5 images) and a class-structured one (12)."""
    write_flat_folder(tmp_path / "noise", coded_images([0] * 5, seed=7))
    return {
        "train_dir": folder_root / "cifar10" / "train",
        "test_dir": folder_root / "cifar10" / "test",
        "flat": tmp_path / "noise",
        "classes": folder_root / "svhn" / "test",
    }


def make(dirs, cache_dir, **kwargs):
    return ImageFolderDataModule(
        dirs["train_dir"], dirs["test_dir"], batch_size=8, cache_dir=cache_dir, **kwargs
    )


def sizes(loaders):
    return [len(loader.dataset) for loader in loaders]


def test_ood_folders_are_served_after_the_id_test_set_in_order(dirs, cache_dir):
    dm = make(dirs, cache_dir, ood_dirs=[dirs["classes"], dirs["flat"]])
    assert dm.ood_names == ["test", "noise"]
    assert dm.eval_ood
    id_test, svhn, noise = dm.test_dataloader()
    assert sizes([id_test, svhn, noise]) == [20, 12, 5]
    assert sorted(torch.cat([y for _, y in svhn]).tolist()) == sorted(i % 10 for i in range(12))
    assert torch.cat([y for _, y in noise]).tolist() == [-1] * 5  # a flat folder has no labels


def test_a_mapping_names_the_ood_sets(dirs, cache_dir):
    dm = make(dirs, cache_dir, ood_dirs={"noise": dirs["flat"], "svhn": dirs["classes"]})
    assert dm.ood_names == ["noise", "svhn"]
    assert sizes(dm.test_dataloader()) == [20, 5, 12]


def test_one_ood_folder_may_be_passed_alone(dirs, cache_dir):
    dm = make(dirs, cache_dir, ood_dirs=str(dirs["flat"]))
    assert dm.ood_names == ["noise"]


def test_ood_folders_with_the_same_name_need_a_mapping(dirs, cache_dir, tmp_path):
    dm = make(dirs, cache_dir, ood_dirs=[dirs["classes"], tmp_path / "other" / "test"])
    with pytest.raises(ValueError, match=r"distinct names.*pass a mapping"):
        _ = dm.ood_names


def test_without_ood_folders_the_test_loader_is_alone(dirs, cache_dir):
    dm = make(dirs, cache_dir)
    assert dm.ood_names == []
    assert not dm.eval_ood
    assert isinstance(dm.test_dataloader(), torch.utils.data.DataLoader)


def test_default_normalisation_is_the_training_split_statistics(dirs, cache_dir):
    dm = make(dirs, cache_dir, val_split=0.5, augment=False)
    x, _ = zip(*dm.train_dataloader(), strict=True)
    mean, std = torch.tensor(dm.mean_).view(1, 3, 1, 1), torch.tensor(dm.std_).view(1, 3, 1, 1)
    pixels = ((torch.cat(x) * std + mean) * 255).round().numpy() / 255  # the 20 training-split images
    np.testing.assert_allclose(dm.mean_, pixels.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(dm.std_, pixels.std(axis=(0, 2, 3)), atol=1e-6)
    written = coded_images([i % 10 for i in range(40)], seed=1).numpy() / 255  # all 40, validation included
    assert not np.allclose(dm.mean_, written.mean(axis=(0, 2, 3)), atol=1e-6)


def test_normalised_training_images_have_zero_mean_unit_std_without_val_split(dirs, cache_dir):
    dm = make(dirs, cache_dir, augment=False)
    x = torch.cat([x for x, _ in dm.train_dataloader()]).double()
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.std((0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_test_classes_must_match_train_classes(dirs, cache_dir):
    (dirs["test_dir"] / "truck").rename(dirs["test_dir"] / "lorry")
    with pytest.raises(ValueError, match=r"`test_dir` to hold the class folders of `train_dir`"):
        make(dirs, cache_dir).setup()


def test_images_of_another_size_are_refused(dirs, cache_dir, tmp_path):
    write_class_folders(tmp_path / "small", coded_images([0, 1], seed=0, size=16), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match=r"one shape \(C, H, W\).*'ood/small': \(3, 16, 16\)"):
        make(dirs, cache_dir, ood_dirs=[tmp_path / "small"]).setup()


def test_an_ood_folder_of_both_images_and_class_folders_is_refused(dirs, cache_dir):
    write_flat_folder(dirs["flat"] / "extra", coded_images([0] * 2, seed=8))
    with pytest.raises(
        ValueError, match=r"holds both images \(5, e.g. 0000.png\) and class folders \['extra'\]"
    ):
        make(dirs, cache_dir, ood_dirs=dirs["flat"]).setup()


def test_a_channel_constant_over_the_training_images_is_refused(tmp_path, cache_dir):
    labels = [0, 1, 0, 1]
    images = coded_images(labels, seed=0)
    images[:, 2] = 0  # the blue channel: std 0 would divide every image by zero
    write_class_folders(tmp_path / "train", images, labels, ["a", "b"])
    write_class_folders(tmp_path / "test", images, labels, ["a", "b"])
    dm = ImageFolderDataModule(tmp_path / "train", tmp_path / "test", batch_size=2, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="every std must be positive"):
        dm.setup()
