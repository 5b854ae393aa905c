import numpy as np
import pytest
import scipy.io
import torch

from torch_deup.datamodules.official import read_cifar, read_svhn_mat

from .conftest import CIFAR10_CLASSES, coded_images, svhn_digits, write_cifar_official, write_svhn_mat


@pytest.mark.parametrize("str_keys", [False, True], ids=["python3-bytes-keys", "python2-latin1-keys"])
def test_read_cifar10_gives_the_written_pixels_labels_and_names(tmp_path, str_keys):
    train, train_labels, test, test_labels = write_cifar_official(tmp_path, 10, str_keys=str_keys)
    folder = tmp_path / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)]
    data = read_cifar(folder, files, "labels", "batches.meta", "label_names")
    assert data.images.dtype == torch.uint8
    assert torch.equal(data.images, train)
    assert data.targets.tolist() == train_labels
    assert data.classes == CIFAR10_CLASSES
    data = read_cifar(folder, ["test_batch"], "labels", "batches.meta", "label_names")
    assert torch.equal(data.images, test)
    assert data.targets.tolist() == test_labels


def test_read_cifar_rows_are_red_green_blue_planes(tmp_path):
    # The official row layout, written out: bytes 0-1023 red, 1024-2047 green, 2048-3071 blue.
    train, *_ = write_cifar_official(tmp_path, 10)
    data = read_cifar(
        tmp_path / "cifar-10-batches-py", ["data_batch_1"], "labels", "batches.meta", "label_names"
    )
    row = train[0].flatten()
    assert data.images[0, 1, 2, 3] == row[1024 + 2 * 32 + 3]
    assert data.images[0, 2, 31, 0] == row[2048 + 31 * 32]


def test_read_cifar100_uses_fine_labels(tmp_path):
    train, train_labels, _, _ = write_cifar_official(tmp_path, 100, per_class=1)
    data = read_cifar(tmp_path / "cifar-100-python", ["train"], "fine_labels", "meta", "fine_label_names")
    assert torch.equal(data.images, train)
    assert data.targets.tolist() == train_labels
    assert len(data.classes) == 100


def test_read_svhn_mat_maps_label_10_to_digit_0_and_transposes(tmp_path):
    write_svhn_mat(tmp_path)
    data = read_svhn_mat(tmp_path / "test_32x32.mat")
    raw = scipy.io.loadmat(tmp_path / "test_32x32.mat")
    assert raw["y"][0, 0] == 10  # the file stores digit 0 as 10 ...
    assert data.targets[0] == 0  # ... which reads back as 0
    assert data.targets.tolist() == svhn_digits()
    assert data.classes == [str(d) for d in range(10)]
    assert data.images.shape == (12, 3, 32, 32)
    assert data.images.dtype == torch.uint8
    # X[h, w, c, n] is image n, channel c, row h, column w.
    assert data.images[5, 2, 7, 11] == raw["X"][7, 11, 2, 5]
    assert torch.equal(data.images, coded_images(svhn_digits(), seed=3))


def test_read_svhn_mat_keeps_uint8_range(tmp_path):
    x = np.full((32, 32, 3, 2), 255, dtype=np.uint8)
    scipy.io.savemat(tmp_path / "x.mat", {"X": x, "y": np.array([[1], [10]], dtype=np.uint8)})
    data = read_svhn_mat(tmp_path / "x.mat")
    assert data.images.max() == 255
    assert data.targets.tolist() == [1, 0]
