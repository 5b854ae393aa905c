"""What a model produced for a batch, captured in one forward pass.

Every score in the library (OOD criteria, DEUP's feature extractors) reads a :class:`ModelOutputs`,
so an evaluation loop runs the base model once per batch and every consumer shares that pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass
class ModelOutputs:
    """Logits ``(N, C)`` (or regression outputs) and the penultimate embedding ``(N, D)``.

    ``embedding`` is the input of the model's last ``nn.Linear``; ``None`` when not captured.
    """

    logits: Tensor
    embedding: Tensor | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, index: Tensor | slice) -> ModelOutputs:
        """The outputs of a subset of samples."""
        emb = None if self.embedding is None else self.embedding[index]
        return ModelOutputs(self.logits[index], emb)

    def detach(self) -> ModelOutputs:
        emb = None if self.embedding is None else self.embedding.detach()
        return ModelOutputs(self.logits.detach(), emb)

    def to(self, device: Any) -> ModelOutputs:
        emb = None if self.embedding is None else self.embedding.to(device)
        return ModelOutputs(self.logits.to(device), emb)


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model``: its input is the penultimate embedding."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so its penultimate embedding cannot be "
            "captured. Use output-statistic features only, or give the model a linear head."
        )
    return linears[-1]


class OutputCapture:
    """Runs a model and returns :class:`ModelOutputs`, the embedding taken by a forward hook.

    The hook reads the input of the last linear layer during the normal forward, so capturing the
    embedding costs no second pass.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> out = OutputCapture(model)(torch.zeros(2, 4))
        >>> out.logits.shape, out.embedding.shape
        (torch.Size([2, 3]), torch.Size([2, 8]))
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.head = last_linear(model)
        self._embedding: Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._embedding = args[0].flatten(1)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handle = self.head.register_forward_pre_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()

    def __call__(self, x: Tensor) -> ModelOutputs:
        self._embedding = None
        with self.hooked():
            logits = self.model(x)
        embedding, self._embedding = self._embedding, None
        return ModelOutputs(logits, embedding)


def class_logits(logits: Tensor) -> Tensor:
    """``(N, C)`` logits with ``C >= 2``: a single logit ``l`` becomes ``[0, l]`` (binary model)."""
    if logits.ndim != 2:
        raise ValueError(
            f"Expected logits of shape (N, C), but got shape {tuple(logits.shape)}. "
            "Reshape a 1-D binary logit to (N, 1)."
        )
    logits = logits.float()
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def class_probabilities(logits: Tensor) -> Tensor:
    """Softmax over classes; a single logit is a binary model, returned as ``[1 - p, p]``."""
    return class_logits(logits).softmax(dim=1)


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Check that a loader batch is ``(inputs, targets)`` and return it."""
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        kind = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
        raise TypeError(
            f"Expected the loader to yield (inputs, targets) pairs, but got a {kind}. "
            "Wrap your data in a TensorDataset(inputs, targets) or return a 2-tuple from the dataset."
        )
    return batch[0], batch[1]


@torch.no_grad()
def collect_outputs(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "Collecting outputs",
) -> tuple[ModelOutputs, Tensor]:
    """Run ``model`` once over ``loader``; return all outputs (on CPU) and targets.

    Raises:
        ValueError: if the loader yields no batch.
        TypeError: if a batch is not an ``(inputs, targets)`` pair.
    """
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    capture = OutputCapture(model)
    logits, embeddings, targets = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x, y = split_batch(batch)
        out = capture(x.to(device))
        logits.append(out.logits.float().cpu())
        embeddings.append(out.embedding.float().cpu())
        targets.append(y.cpu())
    if not logits:
        raise ValueError("The loader yielded no batch: it is empty. Pass a loader with at least one sample.")
    return ModelOutputs(torch.cat(logits), torch.cat(embeddings)), torch.cat(targets)
