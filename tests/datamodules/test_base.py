"""Behaviour every DataModule inherits from TensorDataModule, exercised through CIFAR10DataModule."""

import lightning as L
import pytest
import torch
from torch import nn

from torch_deup.datamodules import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from torch_deup.datamodules.splits import stratified_split
from torch_deup.datamodules.tensor_data import load_image_folder

from .conftest import coded_images


def make(root, cache_dir, **kwargs):
    kwargs = {"batch_size": 8, **kwargs}
    return CIFAR10DataModule(root, cache_dir=cache_dir, **kwargs)


def collect(loader):
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def denormalise(x, mean, std):
    """Back to uint8 pixels: x * std + mean, in 0-255 units."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def marker_ids(x, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Index of each (unaugmented) image in the written set, read from its marker pixel."""
    return denormalise(x, mean, std)[:, 1, 0, 0].tolist()


def test_test_loader_is_float_batches_normalised_with_the_cifar10_statistics(folder_root, cache_dir):
    x, y = collect(make(folder_root, cache_dir).test_dataloader())
    assert x.shape == (20, 3, 32, 32)
    assert x.dtype == torch.float32
    assert y.dtype == torch.long
    written = coded_images([i % 10 for i in range(20)], seed=2)[marker_ids(x)]
    mean = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), (written.double() / 255 - mean) / std, atol=1e-5, rtol=0)


def test_user_mean_and_std_replace_the_defaults(folder_root, cache_dir):
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    dm = make(folder_root, cache_dir, **imagenet)
    x, _ = collect(dm.test_dataloader())
    assert dm.mean_ == imagenet["mean"]
    written = coded_images([i % 10 for i in range(20)], seed=2)[marker_ids(x, **imagenet)]
    assert torch.equal(denormalise(x, **imagenet), written)


def test_loaders_work_without_setup_and_setup_runs_once(folder_root, cache_dir):
    dm = make(folder_root, cache_dir)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)
    loaded = dm._sets
    dm.setup("test")
    assert dm._sets is loaded


def test_val_split_is_stratified_disjoint_and_deterministic(folder_root, cache_dir):
    def split_ids(split_seed):
        dm = make(folder_root, cache_dir, val_split=0.5, split_seed=split_seed, augment=False)
        val_x, val_y = collect(dm.postprocess_dataloader())
        train_x, _ = collect(dm.train_dataloader())
        return set(marker_ids(train_x)), set(marker_ids(val_x)), val_y

    train, val, val_y = split_ids(0)
    assert train.isdisjoint(val)
    assert train | val == set(range(40))
    assert torch.bincount(val_y).tolist() == [2] * 10  # half of each class's 4 images
    assert split_ids(0)[1] == val
    assert split_ids(1)[1] != val


def test_val_split_is_the_one_the_training_script_uses(folder_root, cache_dir):
    # benchmarks/train_cifar10.py holds out stratified_split(load_image_folder(train).targets, ...).
    train = load_image_folder(folder_root / "cifar10" / "train", cache_dir, progress=False)
    _, val_idx = stratified_split(train.targets, 0.5, seed=3)
    dm = make(folder_root, cache_dir, val_split=0.5, split_seed=3)
    val_x, val_y = collect(dm.val_dataloader())
    assert torch.equal(denormalise(val_x, CIFAR10_MEAN, CIFAR10_STD), train.images[val_idx])
    assert torch.equal(val_y, train.targets[val_idx])


def test_the_fitting_loader_serves_the_training_split_in_order_unaugmented_without_validation(
    folder_root, cache_dir
):
    dm = make(folder_root, cache_dir, val_split=0.5, split_seed=3)
    x, y = collect(dm.train_eval_dataloader())
    train = load_image_folder(folder_root / "cifar10" / "train", cache_dir, progress=False)
    train_idx, _ = stratified_split(train.targets, 0.5, seed=3)
    assert torch.equal(denormalise(x, CIFAR10_MEAN, CIFAR10_STD), train.images[train_idx])
    assert torch.equal(y, train.targets[train_idx])


def test_without_val_split_there_is_no_validation_loop(folder_root, cache_dir):
    assert make(folder_root, cache_dir).val_dataloader() == []


def test_postprocess_set_val_without_val_split_fails(folder_root, cache_dir):
    with pytest.raises(ValueError, match=r"postprocess_set='val'.*`val_split` is None.*val_split=0\.1"):
        make(folder_root, cache_dir).postprocess_dataloader()


def test_postprocess_set_test_warns_that_test_data_leaks(folder_root, cache_dir):
    dm = make(folder_root, cache_dir, postprocess_set="test")
    with pytest.warns(UserWarning, match="test data leaks into fitting"):
        x, _ = collect(dm.postprocess_dataloader())
    assert torch.equal(x, collect(dm.test_dataloader())[0])


def test_postprocess_set_train_warns_about_seen_images(folder_root, cache_dir):
    dm = make(folder_root, cache_dir, postprocess_set="train", val_split=0.5)
    with pytest.warns(UserWarning, match="images the model was trained on"):
        _, y = collect(dm.postprocess_dataloader())
    assert len(y) == 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "`batch_size` to be a positive integer, but got 0"),
        ({"val_split": 1.5}, r"`val_split` in \(0, 1\) or None, but got 1.5"),
        ({"postprocess_set": "ood"}, r"`postprocess_set` in \('val', 'test', 'train'\), but got 'ood'"),
        ({"mean": (0.5, 0.5, 0.5)}, "Pass both `mean` and `std`"),
        ({"mean": (0.5,) * 3, "std": (0.2, 0.0, 0.2)}, "every `std` value to be positive"),
        ({"mean": (0.5,), "std": (0.2,)}, r"one value per channel \(3\), but got 1 and 1"),
    ],
)
def test_invalid_arguments_fail_at_setup(folder_root, cache_dir, kwargs, match):
    dm = make(folder_root, cache_dir, **kwargs)
    with pytest.raises(ValueError, match=match):
        dm.setup()


def test_augmentation_changes_training_batches_only(folder_root, cache_dir):
    plain = make(folder_root, cache_dir, augment=False, seed=5)
    augmented = make(folder_root, cache_dir, augment=True, seed=5)
    plain_x, plain_y = collect(plain.train_dataloader())
    aug_x, aug_y = collect(augmented.train_dataloader())
    assert torch.equal(plain_y, aug_y)  # same shuffle ...
    changed = (plain_x != aug_x).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # ... but most images cropped or flipped
    for method in ["test_dataloader", "val_dataloader"]:
        kwargs = {"val_split": 0.5} if method == "val_dataloader" else {}
        a = collect(getattr(make(folder_root, cache_dir, augment=False, **kwargs), method)())
        b = collect(getattr(make(folder_root, cache_dir, augment=True, **kwargs), method)())
        assert torch.equal(a[0], b[0])
        assert torch.equal(a[1], b[1])


def test_eval_loaders_are_not_shuffled(folder_root, cache_dir):
    x, _ = collect(make(folder_root, cache_dir).test_dataloader())
    # Image folders are read class by class, files in name order; image i has label i % 10.
    assert marker_ids(x) == sorted(range(20), key=lambda i: (i % 10, i))


def test_training_order_and_augmentation_are_reproducible_under_a_seed(folder_root, cache_dir):
    first = collect(make(folder_root, cache_dir, seed=3).train_dataloader())
    again = collect(make(folder_root, cache_dir, seed=3).train_dataloader())
    other = collect(make(folder_root, cache_dir, seed=4).train_dataloader())
    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


class _TinyClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        self.tested = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.training_step(batch, batch_idx))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.tested.append((dataloader_idx, len(batch[1])))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fits_and_tests_with_the_id_and_ood_loaders(folder_root, cache_dir):
    dm = make(folder_root, cache_dir, val_split=0.5, eval_ood=True)
    model = _TinyClassifier()
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    seen = {}
    for idx, n in model.tested:
        seen[idx] = seen.get(idx, 0) + n
    assert seen == {0: 20, 1: 12}  # CIFAR-10 test, then SVHN
