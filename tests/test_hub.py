"""Checkpoint loading: wrappings, prefixes, key mismatches, the Hugging Face path, a real checkpoint."""

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from torch_deup.datamodules.tensor_data import TensorImageDataset, batch_loader, load_image_folder
from torch_deup.hub import load_checkpoint, resolve_checkpoint, unwrap_state_dict
from torch_deup.models import resnet

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


@pytest.fixture
def source() -> nn.Module:
    net = _net(0)
    net(torch.zeros(2, 3, 5, 5))  # materialise the lazy head and move the BN statistics
    return net


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="bare"),
        pytest.param(lambda s: {"state_dict": s, "epoch": 3}, id="state_dict"),
        pytest.param(lambda s: {"state_dict": _prefixed(s, "module."), "best_prec1": 91.78}, id="akamaster"),
        pytest.param(lambda s: _prefixed(s, "module."), id="dataparallel"),
        pytest.param(
            lambda s: {"state_dict": _prefixed(s, "model."), "hyper_parameters": {"lr": 0.1}}, id="lightning"
        ),
        pytest.param(lambda s: _prefixed(s, "model.module."), id="lightning-dataparallel"),
        pytest.param(lambda s: _prefixed(s, "_orig_mod."), id="torch-compile"),
        # a routine with a weighted loss saves the loss's weight beside the model's keys
        pytest.param(
            lambda s: {"state_dict": {**_prefixed(s, "model."), "loss.weight": torch.ones(2)}},
            id="lightning-with-loss-weight",
        ),
    ],
)
def test_loads_every_wrapping(tmp_path, source, wrap):
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(source.state_dict()), path)
    target = _net(1)
    target(torch.zeros(1, 3, 5, 5))
    assert not torch.equal(target[0].weight, source[0].weight)
    assert load_checkpoint(target, path) is target
    _assert_same_state(target, source)


def test_prefix_is_kept_unless_every_key_has_it():
    state = {"model.weight": torch.ones(1), "head.weight": torch.zeros(1)}
    assert list(unwrap_state_dict(state)) == ["model.weight", "head.weight"]


def test_a_model_wrapping_its_network_as_model_loads_its_own_state_dict(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.model = nn.Linear(3, 2)

    torch.save({"state_dict": Wrapper(0).state_dict()}, tmp_path / "wrapped.pt")
    loaded = load_checkpoint(Wrapper(1), tmp_path / "wrapped.pt")
    assert torch.equal(loaded.model.weight, Wrapper(0).model.weight)
    # a plain Linear still takes the same file, stripped
    assert torch.equal(
        load_checkpoint(nn.Linear(3, 2), tmp_path / "wrapped.pt").weight, Wrapper(0).model.weight
    )


def test_missing_num_batches_tracked_is_filled_in(tmp_path, source):
    # Checkpoints saved before PyTorch 0.4.1 (akamaster's) have no `num_batches_tracked`.
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pt")
    target = load_checkpoint(_net(1), tmp_path / "old.pt")
    torch.testing.assert_close(target[1].running_mean, source[1].running_mean)
    assert target[1].num_batches_tracked.item() == 0


def test_key_mismatch_raises_when_strict_and_warns_otherwise(tmp_path, source):
    state = source.state_dict()
    state.pop("3.bias")
    state["extra.weight"] = torch.ones(1)
    torch.save(state, tmp_path / "ckpt.pt")
    match = r"1 missing keys \(3\.bias\); 1 unexpected keys \(extra\.weight\).*strict=False"
    with pytest.raises(RuntimeError, match=match):
        load_checkpoint(_net(1), tmp_path / "ckpt.pt")
    with pytest.warns(UserWarning, match=r"1 missing keys \(3\.bias\).*Loaded the matching keys only"):
        target = load_checkpoint(_net(1), tmp_path / "ckpt.pt", strict=False)
    torch.testing.assert_close(target[0].weight, source[0].weight)


def test_long_key_lists_are_shortened(tmp_path):
    torch.save({f"w{i}": torch.ones(1) for i in range(8)}, tmp_path / "ckpt.pt")
    with pytest.raises(RuntimeError, match=r"8 unexpected keys \(w0, w1, w2, w3, w4, \.\.\. \(3 more\)\)"):
        load_checkpoint(nn.Identity(), tmp_path / "ckpt.pt")


def test_shape_mismatch_raises(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "ckpt.pt")
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(7, 2))
    with pytest.raises(RuntimeError, match=r"size mismatch for 3\.weight"):
        load_checkpoint(other, tmp_path / "ckpt.pt")


@pytest.mark.parametrize(
    ("content", "got"),
    [([torch.ones(1)], "a list"), ({"epoch": 3, "lr": 0.1}, r"a dict with keys \['epoch', 'lr'\]")],
)
def test_non_state_dict_raises(tmp_path, content, got):
    torch.save(content, tmp_path / "ckpt.pt")
    with pytest.raises(TypeError, match=rf"Expected the checkpoint to be a state dict .* but got {got}"):
        load_checkpoint(nn.Identity(), tmp_path / "ckpt.pt")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"Checkpoint file {re.escape(str(tmp_path))}/nope\.pt does not exist"
    ):
        load_checkpoint(nn.Identity(), tmp_path / "nope.pt")


def test_folder_and_filename(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "ckpt.pt")
    assert resolve_checkpoint(tmp_path, "ckpt.pt") == tmp_path / "ckpt.pt"
    with pytest.raises(FileNotFoundError, match=r"other\.pt does not exist"):
        resolve_checkpoint(tmp_path, "other.pt")
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(tmp_path))} is a folder\. .* as `filename`"
    ):
        resolve_checkpoint(tmp_path)


def test_hugging_face_repo_is_downloaded(tmp_path, monkeypatch, source):
    torch.save(source.state_dict(), tmp_path / "resnet18_c10.ckpt")
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / kwargs["filename"])

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download))
    target = load_checkpoint(_net(1), "torch-uncertainty/resnet18_c10", "resnet18_c10.ckpt", revision="v1")
    assert calls == [
        {
            "repo_id": "torch-uncertainty/resnet18_c10",
            "filename": "resnet18_c10.ckpt",
            "repo_type": "model",
            "revision": "v1",
        }
    ]
    _assert_same_state(target, source)


@pytest.mark.parametrize("folder", ["./missing", "/no/such/folder", "runs/a/b"])
def test_a_mistyped_local_folder_is_not_sent_to_the_hub(monkeypatch, folder):
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=None))
    with pytest.raises(FileNotFoundError, match=r"Checkpoint folder .* does not exist"):
        resolve_checkpoint(folder, "ckpt.pt")


def test_hugging_face_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"needs huggingface_hub.*pip install torch-deup\[hub\]"):
        load_checkpoint(nn.Identity(), "torch-uncertainty/resnet18_c10", "resnet18_c10.ckpt")


def test_akamaster_resnet20_accuracy_on_jpeg_cifar10():
    weights = SHARED / "weights" / "akamaster" / "resnet20-12fca82f.th"
    test_dir = SHARED / "data" / "cifar10" / "test"
    if not (weights.is_file() and test_dir.is_dir()):
        pytest.skip(f"shared weights or data absent under {SHARED} (../shared beside the repo)")
    model = load_checkpoint(resnet(arch=20), weights).eval()
    data = load_image_folder(test_dir, progress=False)
    # Every second image (500 a class) keeps the test under 15 s; the full set scores 81.03%.
    half = data.subset(torch.arange(0, len(data.targets), 2))
    dataset = TensorImageDataset(half, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    correct = 0
    with torch.inference_mode():
        for x, y in batch_loader(dataset, batch_size=500):
            correct += (model(x).argmax(1) == y).sum().item()
    # 91.78% on the official PNG test set; JPEG re-encoding costs about 11 points (data README).
    assert correct / len(dataset) == pytest.approx(0.81, abs=0.01)
