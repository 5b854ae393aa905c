from pathlib import Path

import numpy as np
import pytest
import torch

from torch_deup.datamodules.uci import load_uci

SHARED_CONCRETE = Path(__file__).parents[3] / "shared" / "data" / "uci" / "concrete"


def write_uci(root: Path, rows: int = 10, test: tuple[int, ...] = (1, 4, 7)) -> np.ndarray:
    """A UCI-format set: 3 feature columns, then the target, with split 0 testing ``test``."""
    root.mkdir(parents=True)
    data = np.arange(rows * 4, dtype=float).reshape(rows, 4) / 10
    np.savetxt(root / "data.txt", data)
    np.savetxt(root / "index_features.txt", [0, 1, 2], fmt="%d")
    np.savetxt(root / "index_target.txt", [3], fmt="%d")
    train = [i for i in range(rows) if i not in test]
    np.savetxt(root / "index_train_0.txt", train, fmt="%d")
    np.savetxt(root / "index_test_0.txt", test, fmt="%d")
    return data


def test_rows_and_columns_follow_the_index_files(tmp_path):
    data = write_uci(tmp_path / "toy")
    split = load_uci(tmp_path / "toy", split=0)
    assert torch.equal(split.x_test, torch.tensor(data[[1, 4, 7], :3], dtype=torch.float32))
    assert torch.equal(split.y_test, torch.tensor(data[[1, 4, 7], 3], dtype=torch.float32))
    assert split.x_train.shape == (7, 3)
    assert torch.equal(split.y_train, torch.tensor(data[[0, 2, 3, 5, 6, 8, 9], 3], dtype=torch.float32))


def test_a_missing_split_names_the_available_ones(tmp_path):
    write_uci(tmp_path / "toy")
    with pytest.raises(ValueError, match=r"has no split 3; its splits are \[0\]"):
        load_uci(tmp_path / "toy", split=3)


def test_a_split_whose_train_and_test_overlap_is_refused(tmp_path):
    write_uci(tmp_path / "toy")
    np.savetxt(tmp_path / "toy" / "index_train_0.txt", [0, 1, 2], fmt="%d")
    with pytest.raises(ValueError, match="in both its train and test indices"):
        load_uci(tmp_path / "toy")


def test_a_folder_without_data_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is .* a UCI set's folder"):
        load_uci(tmp_path)


@pytest.mark.skipif(not SHARED_CONCRETE.is_dir(), reason="../shared/data/uci is not beside the repo")
def test_the_shared_concrete_split_has_the_papers_sizes():
    split = load_uci(SHARED_CONCRETE, split=0)
    assert (split.x_train.shape, split.x_test.shape) == ((927, 8), (103, 8))
