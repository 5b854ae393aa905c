"""A tiny synthetic task for the routine and trainer tests: three 2-D Gaussian blobs (ID), blobs
far away (OOD), a small MLP, and a post-processing stand-in that counts its fits."""

from __future__ import annotations

from functools import cache

import torch
from lightning import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from torch_deup.outputs import ModelOutputs, collect_outputs
from torch_deup.post_processing import PostProcessing

CENTERS = torch.tensor([[0.0, 2.0], [-1.7, -1.0], [1.7, -1.0]])
OOD_CENTERS = {"far": torch.tensor([[9.0, 9.0]]), "near": torch.tensor([[0.0, -4.0]])}
NUM_CLASSES = 3
BATCH_SIZE = 64


def blobs(n: int, centers: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points around ``centers`` (std 1), labelled by their center."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(centers)
    return centers[y] + torch.randn(n, 2, generator=generator), y


class BlobDataModule(LightningDataModule):
    """ID train/val/test blobs; ``ood_sets`` OOD blobs appended to the test loaders."""

    def __init__(self, ood_sets: tuple[str, ...] = ("far",), train_eval: bool = True, n_test: int = 300):
        super().__init__()
        self.ood_names = list(ood_sets)
        self.eval_ood = bool(ood_sets)
        self.sets = {
            "train": blobs(600, CENTERS, seed=1),
            "val": blobs(150, CENTERS, seed=2),
            "test": blobs(n_test, CENTERS, seed=3),
            **{name: blobs(200, OOD_CENTERS[name], seed=4 + len(name)) for name in ood_sets},
        }
        if train_eval:
            self.train_eval_dataloader = lambda: self._loader("train")

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(TensorDataset(*self.sets[name]), batch_size=BATCH_SIZE, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def postprocess_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.ood_names:
            return self._loader("test")
        return [self._loader("test"), *(self._loader(name) for name in self.ood_names)]

    def num_batches(self, name: str) -> int:
        return len(self._loader(name))


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))


@cache
def _trained_state() -> dict[str, Tensor]:
    model = make_mlp()
    x, y = blobs(600, CENTERS, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    threads = torch.get_num_threads()
    # tiny ops: a second intra-op thread only waits for a busy core (about 60 ms a step instead of 0.3 ms)
    torch.set_num_threads(1)
    try:
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_mlp() -> nn.Sequential:
    """A fresh copy of an MLP trained full-batch on the training blobs (same weights each call)."""
    model = make_mlp()
    model.load_state_dict(_trained_state())
    return model.eval()


class CountingPostProcessing(PostProcessing):
    """Scores the distance of the embedding to the mean training (else calibration) embedding.

    The squared distance is summed by a matrix product, so scoring costs a known 2 x N x D FLOPs.
    """

    uses_train_data = True

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__(model)
        self.fit_calls = 0
        self.center_: Tensor | None = None

    def fit(self, cal_loader, train_loader=None) -> CountingPostProcessing:
        train = collect_outputs(self.model, train_loader, progress=False) if train_loader else (None, None)
        return self.fit_outputs(*collect_outputs(self.model, cal_loader, progress=False), *train)

    def fit_outputs(self, cal_outputs, cal_targets, train_outputs=None, train_targets=None):
        self.fit_calls += 1
        self.saw_train_outputs = train_outputs is not None
        self.fitted_layer_stats = cal_outputs.layer_stats
        reference = train_outputs if train_outputs is not None else cal_outputs
        self.center_ = reference.embedding.mean(0)
        return self

    def score_outputs(self, outputs: ModelOutputs) -> Tensor:
        squares = (outputs.embedding - self.center_).square()
        return (squares @ torch.ones(squares.shape[1], 1)).squeeze(1).sqrt()

    @property
    def is_fitted(self) -> bool:
        return self.center_ is not None

    def state_dict(self) -> dict:
        return {"center_": self.center_}

    def load_state_dict(self, state: dict) -> None:
        self.center_ = state["center_"]
