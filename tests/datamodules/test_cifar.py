import inspect
import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torchvision

from torch_deup.datamodules import CIFAR100_MEAN, CIFAR100_STD, CIFAR10DataModule, CIFAR100DataModule

from .conftest import (
    CIFAR10_CLASSES,
    svhn_digits,
    write_cifar_folders,
    write_cifar_official,
    write_svhn_folder,
    write_svhn_mat,
)


def labels_and_markers(loader):
    """Labels served, and the label marker each unaugmented image carries (CIFAR-10 statistics)."""
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[0]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[0]
    return y, ((x[:, 0, 0, 0] * std + mean) * 255).round().long()


def test_both_layouts_give_cifar10_in_official_label_order(cifar10_root, cache_dir):
    dm = CIFAR10DataModule(cifar10_root, batch_size=16, cache_dir=cache_dir, augment=False)
    assert dm.classes == CIFAR10_CLASSES
    for loader in [dm.train_dataloader(), dm.test_dataloader()]:
        y, marker = labels_and_markers(loader)
        assert torch.equal(y, marker)
        assert torch.bincount(y, minlength=10).min() > 0


def test_official_files_win_when_both_layouts_are_present(tmp_path, cache_dir):
    write_cifar_official(tmp_path, 10, per_class=5)
    write_cifar_folders(tmp_path, per_class=4)
    dm = CIFAR10DataModule(tmp_path, batch_size=64, cache_dir=cache_dir)
    assert len(dm.train_dataloader().dataset) == 50


def test_missing_cifar10_lists_every_path_looked_for(tmp_path, cache_dir):
    dm = CIFAR10DataModule(tmp_path, batch_size=8, cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found under") as info:
        dm.setup()
    message = str(info.value)
    for path in [
        *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        "cifar-10-batches-py/test_batch",
        "cifar-10-batches-py/batches.meta",
        "cifar10/train",
        "cifar10/test",
    ]:
        assert f"{tmp_path / path} (missing)" in message
    assert "download=True" in message
    assert "root/cifar10/{train,test}/<class>/" in message


def test_a_partial_official_folder_is_reported_file_by_file(tmp_path, cache_dir):
    write_cifar_official(tmp_path, 10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    dm = CIFAR10DataModule(tmp_path, batch_size=8, cache_dir=cache_dir)
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{tmp_path}/cifar-10-batches-py/data_batch_3 (missing)")
    ):
        dm.setup()


def test_eval_ood_serves_cifar10_test_then_svhn(cifar10_root, cache_dir):
    dm = CIFAR10DataModule(cifar10_root, batch_size=16, eval_ood=True, cache_dir=cache_dir)
    assert dm.ood_names == ["svhn"]
    cifar_test, svhn = dm.test_dataloader()
    assert len(cifar_test.dataset) == 20
    y, marker = labels_and_markers(svhn)
    assert len(y) == len(svhn_digits())
    assert torch.equal(y, marker)  # digit 0, stored as 10 in the .mat, is label 0
    assert 0 in y.tolist()


def test_without_eval_ood_the_test_loader_is_alone(cifar10_root, cache_dir):
    dm = CIFAR10DataModule(cifar10_root, batch_size=16, cache_dir=cache_dir)
    assert dm.ood_names == []
    assert isinstance(dm.test_dataloader(), torch.utils.data.DataLoader)


def test_eval_ood_without_svhn_fails_at_setup(tmp_path, cache_dir):
    write_cifar_folders(tmp_path)
    dm = CIFAR10DataModule(tmp_path, batch_size=8, eval_ood=True, cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="SVHN test set not found") as info:
        dm.setup()
    assert f"{tmp_path / 'test_32x32.mat'} (missing)" in str(info.value)
    assert f"{tmp_path / 'svhn/test'} (missing)" in str(info.value)
    assert "eval_ood=False" in str(info.value)


def test_wrong_number_of_class_folders_is_refused(tmp_path, cache_dir):
    write_cifar_folders(tmp_path)
    (tmp_path / "cifar10" / "train" / "truck").rename(tmp_path / "truck")
    dm = CIFAR10DataModule(tmp_path, batch_size=8, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"Expected 10 class folders .* but found 9"):
        dm.setup()


def test_numbered_class_folders_take_their_number_as_label(tmp_path, cache_dir):
    write_cifar_folders(tmp_path, classes=[str(label) for label in range(10)])
    dm = CIFAR10DataModule(tmp_path, batch_size=16, cache_dir=cache_dir, augment=False)
    y, marker = labels_and_markers(dm.train_dataloader())
    assert torch.equal(y, marker)


def test_numbered_cifar100_folders_are_read_in_numeric_order(tmp_path, cache_dir):
    # as strings, "10" sorts before "2": the labels would be permuted
    write_cifar_folders(tmp_path, num_classes=100, per_class=1, classes=[str(i) for i in range(100)])
    dm = CIFAR100DataModule(tmp_path, batch_size=256, cache_dir=cache_dir, augment=False)
    x, y = next(iter(dm.train_dataloader()))
    mean, std = CIFAR100_MEAN[0], CIFAR100_STD[0]
    assert torch.equal(((x[:, 0, 0, 0] * std + mean) * 255).round().long(), y)


def test_cifar10_folders_under_other_names_are_refused(tmp_path, cache_dir):
    write_cifar_folders(tmp_path, classes=[name.replace("automobile", "car") for name in CIFAR10_CLASSES])
    dm = CIFAR10DataModule(tmp_path, batch_size=8, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"expected the official names .* or the label numbers 0-9"):
        dm.setup()


def test_svhn_folders_named_as_the_mat_labels_are_refused(tmp_path, cache_dir):
    write_cifar_folders(tmp_path)
    write_svhn_folder(tmp_path)
    for digit in reversed(range(10)):  # 0-9 renamed 1-10, as the .mat file numbers them
        (tmp_path / "svhn" / "test" / str(digit)).rename(tmp_path / "svhn" / "test" / str(digit + 1))
    dm = CIFAR10DataModule(tmp_path, batch_size=8, eval_ood=True, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"svhn/test are \['1', .*'10'\].* label numbers 0-9"):
        dm.setup()


def fake(write, real: type):
    """A stand-in for the torchvision dataset class ``real``: checks each call against the
    installed class's signature, records it and writes files offline."""

    class FakeDataset:
        calls: ClassVar[list] = []

        def __init__(self, root, download=False, **kwargs):
            inspect.signature(real).bind(root, download=download, **kwargs)
            self.calls.append((root, download, kwargs))
            write(Path(root))

    return FakeDataset


def test_the_fake_refuses_arguments_torchvision_does_not_take():
    with pytest.raises(TypeError, match="split"):
        fake(lambda root: None, torchvision.datasets.CIFAR10)("root", download=True, split="test")


def test_download_fetches_cifar10_and_svhn_through_torchvision(tmp_path, cache_dir, monkeypatch):
    cifar = fake(lambda root: write_cifar_official(root, 10), torchvision.datasets.CIFAR10)
    svhn = fake(write_svhn_mat, torchvision.datasets.SVHN)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar)
    monkeypatch.setattr(torchvision.datasets, "SVHN", svhn)
    dm = CIFAR10DataModule(tmp_path, batch_size=8, eval_ood=True, download=True, cache_dir=cache_dir)
    dm.prepare_data()
    assert cifar.calls == [(str(tmp_path), True, {"train": True})]
    assert svhn.calls == [(str(tmp_path), True, {"split": "test"})]
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [20, 12]
    dm.prepare_data()  # the data is there now: nothing is downloaded again
    assert len(cifar.calls) == len(svhn.calls) == 1


def test_download_is_skipped_when_an_image_folder_layout_is_present(folder_root, cache_dir, monkeypatch):
    cifar = fake(lambda root: None, torchvision.datasets.CIFAR10)
    svhn = fake(lambda root: None, torchvision.datasets.SVHN)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar)
    monkeypatch.setattr(torchvision.datasets, "SVHN", svhn)
    dm = CIFAR10DataModule(folder_root, batch_size=8, eval_ood=True, download=True, cache_dir=cache_dir)
    dm.test_dataloader()  # lazy setup runs prepare_data first
    assert cifar.calls == svhn.calls == []


def test_without_download_nothing_is_fetched(tmp_path, cache_dir, monkeypatch):
    cifar = fake(lambda root: write_cifar_official(root, 10), torchvision.datasets.CIFAR10)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar)
    dm = CIFAR10DataModule(tmp_path, batch_size=8, cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="pass download=True"):
        dm.train_dataloader()
    assert cifar.calls == []


def test_cifar100_download_and_fine_labels(tmp_path, cache_dir, monkeypatch):
    cifar = fake(lambda root: write_cifar_official(root, 100, per_class=1), torchvision.datasets.CIFAR100)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", cifar)
    dm = CIFAR100DataModule(tmp_path, batch_size=64, download=True, cache_dir=cache_dir)
    dm.prepare_data()
    assert cifar.calls == [(str(tmp_path), True, {"train": True})]
    assert dm.classes == [f"class{i:03d}" for i in range(100)]
    _, y = next(iter(dm.test_dataloader()))
    assert dm.mean_ == CIFAR100_MEAN
    assert y[:64].tolist() == [i % 100 for i in range(64)]


def test_cifar100_image_folders(tmp_path, cache_dir):
    write_cifar_folders(tmp_path, num_classes=100, per_class=1)
    write_svhn_folder(tmp_path)
    dm = CIFAR100DataModule(tmp_path, batch_size=256, eval_ood=True, cache_dir=cache_dir)
    _, svhn = dm.test_dataloader()
    _, y = next(iter(dm.train_dataloader()))
    assert sorted(y.tolist()) == list(range(100))
    assert len(svhn.dataset) == 12
