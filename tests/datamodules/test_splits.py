import pytest
import torch

from torch_deup.datamodules.splits import stratified_split


def test_a_small_class_keeps_a_sample_on_each_side_and_other_counts_round_as_before():
    targets = torch.arange(15) % 3  # 5 samples a class
    train, val = stratified_split(targets, 0.05, seed=0)  # 0.25 a class: rounds to 0, kept at 1
    assert torch.bincount(targets[val]).tolist() == [1, 1, 1]
    assert torch.bincount(targets[train]).tolist() == [4, 4, 4]
    # 2.5 a class: round() gives 2, as the splits checkpoints were trained on
    _, val = stratified_split(targets, 0.5, seed=0)
    assert torch.bincount(targets[val]).tolist() == [2, 2, 2]
    _, val = stratified_split(torch.arange(4) % 2, 0.99, seed=0)  # 1.98 of 2: one left to train
    assert len(val) == 2


def test_a_split_that_leaves_no_validation_sample_is_refused():
    with pytest.raises(ValueError, match="leaves no validation sample"):
        stratified_split(torch.arange(3), 0.3, seed=0)
