"""What a model produced for a batch, captured in one forward pass.

Every score in the library (OOD criteria, DEUP's feature extractors) reads a :class:`ModelOutputs`,
so an evaluation loop runs the base model once per batch and every consumer shares that pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass
class ModelOutputs:
    """Logits ``(N, C)`` (or regression outputs), the penultimate embedding ``(N, D)``, for a
    :class:`~torch_deup.models.ensemble.DeepEnsemble` each member's logits ``(N, M, C)``, and the
    statistics of intermediate feature maps ``(N, S)``.

    ``embedding`` is the input of the model's last ``nn.Linear`` (an ensemble's members' inputs,
    concatenated); ``None`` when not captured. ``members`` is ``None`` for a single model.
    ``layer_stats`` holds, for each captured layer (see :class:`OutputCapture`), the mean and the
    standard deviation of each channel of its output over the other dimensions (space, tokens);
    ``None`` when no layer was captured.
    """

    logits: Tensor
    embedding: Tensor | None = None
    members: Tensor | None = None
    layer_stats: Tensor | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> ModelOutputs:
        optional = (self.embedding, self.members, self.layer_stats)
        return ModelOutputs(fn(self.logits), *(None if t is None else fn(t) for t in optional))

    def __getitem__(self, index: Tensor | slice) -> ModelOutputs:
        """The outputs of a subset of samples."""
        return self._map(lambda t: t[index])

    def detach(self) -> ModelOutputs:
        return self._map(Tensor.detach)

    def to(self, device: Any) -> ModelOutputs:
        return self._map(lambda t: t.to(device))


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model``: its input is the penultimate embedding."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so its penultimate embedding cannot be "
            "captured. Use output-statistic features only, or give the model a linear head."
        )
    return linears[-1]


def ensemble_members(model: nn.Module) -> list[nn.Module]:
    """The members of the :class:`~torch_deup.models.ensemble.DeepEnsemble` in ``model``, or ``[]``."""
    from torch_deup.models.ensemble import DeepEnsemble  # the models package imports this module

    ensemble = next((m for m in model.modules() if isinstance(m, DeepEnsemble)), None)
    return list(ensemble.members) if ensemble is not None else []


def auto_layers(model: nn.Module) -> list[list[nn.Module]]:
    """The candidate layers of ``layers="auto"`` in :class:`OutputCapture`, one list per model.

    A model's stages are taken as its direct ``nn.Sequential`` children (each member's, for a
    :class:`~torch_deup.models.ensemble.DeepEnsemble`). In a forward, those whose output is an
    image feature map ``(N, C, H, W)`` are recorded, all but the last: the penultimate embedding
    already summarises the last one. For a CIFAR ResNet that is ``layer1`` and ``layer2``. (The
    output of every block of those stages, 288 floats instead of 96 for a ResNet-20, was tried on
    the proxy of ``benchmarks/select_deup.py``: the layer-statistics detector alone gained, 94.6
    against 93.1 mean synthetic AUROC, but DEUP did not: SCOD_AUGRC sums 18.899 against 18.872,
    18.488 against 18.471 for an ensemble of two.) A model
    whose feature maps come from a single ``nn.Sequential`` (VGG, MobileNet) or none (DenseNet,
    transformers, MLPs) gets no layer statistics this way: name its blocks in ``layers=``.
    """
    return [
        [child for child in root.children() if isinstance(child, nn.Sequential)]
        for root in ensemble_members(model) or [model]
    ]


def normalize_layers(layers: str | Sequence[str] | None) -> str | list[str] | None:
    """``"auto"``, ``None``, or the list of layer names (one name given as a string is one name)."""
    if layers is None or layers == "auto":
        return layers
    return [layers] if isinstance(layers, str) else list(layers)


def channel_statistics(feature_map: Tensor) -> Tensor:
    """``(N, 2C)``: each channel's mean, then each channel's standard deviation (population), over
    every dimension after the channel one of an ``(N, C, ...)`` feature map (channels first, as
    PyTorch's convolutions lay them out)."""
    flat = feature_map.flatten(2)
    # a few samples at a time: temporaries of about 2 MB stay in cache, where whole-batch ones
    # (33 MB for a ResNet-20's first stage at batch 500) made this several times slower
    chunk = max(1, 2**19 // max(1, flat.shape[1] * flat.shape[2]))
    return (
        torch.cat([_moments(part.float()) for part in flat.split(chunk)])
        if len(flat)
        else flat.new_zeros(0, 2 * flat.shape[1], dtype=torch.float32)
    )


def _moments(flat: Tensor) -> Tensor:
    """:func:`channel_statistics` of an ``(n, C, L)`` block, in two passes (mean, then mean squared
    deviation): as accurate as ``torch.var_mean`` (2e-7 relative) and, on CPU, about 10x faster."""
    mean = flat.mean(2, keepdim=True)
    var = (flat - mean).square().mean(2)
    return torch.cat([mean[:, :, 0], var.sqrt()], dim=1)


class OutputCapture:
    """Runs a model and returns :class:`ModelOutputs`, the embedding taken by a forward hook.

    The hook reads the input of the last linear layer during the normal forward, so capturing the
    embedding costs no second pass. For a :class:`~torch_deup.models.ensemble.DeepEnsemble`, hooks
    on every member record its logits and its head's input, in the ensemble's own forward.

    Args:
        model: the model to run.
        layers: whose output feature maps to summarise in ``ModelOutputs.layer_stats``
            (:func:`channel_statistics`): ``"auto"`` (:func:`auto_layers`), the name or names of
            submodules (``model.get_submodule``) whose outputs are ``(N, C, ...)`` tensors, in that
            order, or ``None``.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> out = OutputCapture(model)(torch.zeros(2, 4))
        >>> out.logits.shape, out.embedding.shape
        (torch.Size([2, 3]), torch.Size([2, 8]))
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str] | None = "auto") -> None:
        self.model = model
        self.members = ensemble_members(model)
        self.heads = [last_linear(m) for m in self.members] if self.members else [last_linear(model)]
        if not (_distinct(self.members) and _distinct(self.heads)):
            raise ValueError(
                "The ensemble's members share modules (the same member twice, or one head for several "
                "members), so their outputs cannot be told apart. Give each member its own modules."
            )
        layers = normalize_layers(layers)
        self.auto = layers == "auto"
        # groups of candidate layers: one per model (member) under "auto", one for named layers
        self.groups = auto_layers(model) if self.auto else [[_submodule(model, n) for n in layers or ()]]
        self.layers = [layer for group in self.groups for layer in group]
        self._embeddings: dict[int, Tensor] = {}
        self._member_logits: dict[int, Tensor] = {}
        self._layer_stats: dict[int, Tensor] = {}

    def _embedding_hook(self, index: int, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        # a head called twice in one forward keeps its last input, the one its output came from
        self._embeddings[index] = args[0].flatten(1)

    def _member_hook(self, index: int, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        self._member_logits[index] = output

    def _layer_hook(self, index: int, module: nn.Module, args: tuple[Tensor, ...], output: Any) -> None:
        # "auto" keeps image feature maps only: a 3-D output may hold tokens, not channels, second
        if isinstance(output, Tensor) and (output.ndim == 4 if self.auto else output.ndim >= 3):
            self._layer_stats[index] = channel_statistics(output)
        elif not self.auto:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"Layer {type(module).__name__} returned {shape}, but layer statistics need an "
                "(N, C, ...) feature map. Pass `layers` naming convolutional blocks, or `layers=None`."
            )

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handles = [
            head.register_forward_pre_hook(partial(self._embedding_hook, i))
            for i, head in enumerate(self.heads)
        ]
        handles += [
            member.register_forward_hook(partial(self._member_hook, i))
            for i, member in enumerate(self.members)
        ]
        handles += [
            layer.register_forward_hook(partial(self._layer_hook, i)) for i, layer in enumerate(self.layers)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, x: Tensor) -> ModelOutputs:
        self._embeddings, self._member_logits, self._layer_stats = {}, {}, {}
        with self.hooked():
            logits = self.model(x)
        embeddings = [self._embeddings[i] for i in range(len(self.heads)) if i in self._embeddings]
        embedding = torch.cat(embeddings, dim=1) if len(embeddings) == len(self.heads) else None
        if len(self._member_logits) < len(self.members):
            raise ValueError(
                f"Only {len(self._member_logits)} of the {len(self.members)} members of the DeepEnsemble "
                "inside this model ran in its forward. Capture outputs of the ensemble itself, or of a "
                "model that runs it."
            )
        if embedding is None:
            names = {id(module): name for name, module in self.model.named_modules()}
            idle = [repr(names[id(h)]) for i, h in enumerate(self.heads) if i not in self._embeddings]
            warnings.warn(
                f"The last nn.Linear registered in the model ({', '.join(idle)}) did not run in its "
                "forward, so no embedding was recorded and features that read it will fail. Register the "
                "head last, or pass outputs with an embedding.",
                stacklevel=2,
            )
        members = (
            torch.stack([self._member_logits[i] for i in range(len(self.members))], dim=1)
            if self.members
            else None
        )
        if not self.auto and len(self._layer_stats) < len(self.layers):
            raise ValueError(
                f"Only {len(self._layer_stats)} of the {len(self.layers)} layers given in `layers` ran in "
                "the model's forward. Name layers the forward runs."
            )
        layer_stats = self._gather_layer_stats()
        self._embeddings, self._member_logits, self._layer_stats = {}, {}, {}
        return ModelOutputs(logits, embedding, members, layer_stats)

    def _gather_layer_stats(self) -> Tensor | None:
        """The recorded statistics in layer order, under "auto" without each model's last feature
        map; ``None`` if a model has nothing left (statistics of some members only would not match
        what a detector was fitted on)."""
        stats, start = [], 0
        for group in self.groups:
            recorded = [
                self._layer_stats[i] for i in range(start, start + len(group)) if i in self._layer_stats
            ]
            start += len(group)
            kept = recorded[:-1] if self.auto else recorded
            if not kept:
                return None
            stats += kept
        return torch.cat(stats, dim=1)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(
            f"The model has no submodule {name!r} to capture layer statistics from. Its submodules "
            f"include {names[:12]}."
        ) from None


def _distinct(modules: list[nn.Module]) -> bool:
    return len({id(m) for m in modules}) == len(modules)


def class_logits(logits: Tensor) -> Tensor:
    """``(N, C)`` logits with ``C >= 2``: a single logit ``l`` becomes ``[0, l]`` (binary model)."""
    if logits.ndim != 2:
        raise ValueError(
            f"Expected logits of shape (N, C), but got shape {tuple(logits.shape)}. "
            "Reshape a 1-D binary logit to (N, 1)."
        )
    logits = logits.float()
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def member_mean(outputs: ModelOutputs, score: Callable[[Tensor], Tensor]) -> Tensor:
    """``score`` of the class logits (:func:`class_logits`); for an ensemble (``outputs.members``),
    the mean of its members' scores, since the ensemble's logits, the log of the mean
    probabilities, have no scale of their own."""
    if outputs.members is None:
        return score(class_logits(outputs.logits))
    n, m, c = outputs.members.shape
    return score(class_logits(outputs.members.reshape(n * m, c))).view(n, m).mean(dim=1)


def entropy(probs: Tensor) -> Tensor:
    """Entropy in nats of the probabilities along the last dimension (``0 log 0 = 0``)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


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


def model_input(model: nn.Module, x: Tensor, device: torch.device | str | None = None) -> Tensor:
    """``x`` on ``device`` (default: the model's) and, if floating point, in the dtype of the
    model's floating parameters: a model converted to half precision takes half inputs.

    Example:
        >>> model_input(nn.Linear(2, 1).to(torch.bfloat16), torch.zeros(1, 2)).dtype
        torch.bfloat16
    """
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if device is None:
        device = x.device if param is None else param.device
    dtype = param.dtype if param is not None and x.is_floating_point() else x.dtype
    return x.to(device=device, dtype=dtype)


@contextmanager
def evaluating(model: nn.Module, device: torch.device | str | None = None) -> Iterator[nn.Module]:
    """``model`` in eval mode, and on ``device`` if given, inside the block; its mode and device
    are restored after it, so collecting outputs leaves a model mid-training as it was (dropout and
    batch-norm statistics in train mode would make scores random and change the model)."""
    # each module's own mode: a user may keep some (a frozen batch norm) in eval mode on purpose
    modes = [(module, module.training) for module in model.modules()]
    # the device itself: moving between devices updates the parameter objects in place
    home = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    try:
        # inside the try: a move that fails part way (out of memory) is undone too
        if device is not None:
            model.to(device)
        model.eval()
        yield model
    finally:
        for module, training in modes:
            module.training = training
        if device is not None and home is not None:
            model.to(home)


@torch.no_grad()
def collect_outputs(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "Collecting outputs",
    layers: str | Sequence[str] | None = "auto",
) -> tuple[ModelOutputs, Tensor]:
    """Run ``model`` once over ``loader`` without gradients, in eval mode (and on ``device`` if
    given; both restored after, see :func:`evaluating`); return all outputs (on CPU) and
    targets. ``layers``: as for :class:`OutputCapture` (its default records 96 floats per sample
    for a CIFAR ResNet-20, thousands for an ImageNet ResNet; pass ``None`` where nothing reads
    them).

    Raises:
        ValueError: if the loader yields no batch.
        TypeError: if a batch is not an ``(inputs, targets)`` pair.
    """
    capture = OutputCapture(model, layers)
    outputs, targets = [], []
    with evaluating(model, device):
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x, y = split_batch(batch)
            outputs.append(capture(model_input(model, x)).detach()._map(lambda t: t.float().cpu()))
            targets.append(y.cpu())
    if not outputs:
        raise ValueError("The loader yielded no batch: it is empty. Pass a loader with at least one sample.")
    return concat_outputs(outputs), torch.cat(targets)


def concat_outputs(outputs: Sequence[ModelOutputs]) -> ModelOutputs:
    """Concatenate batches of outputs along the sample dimension."""
    if not outputs:
        raise ValueError("No batches of outputs to concatenate: the loader yielded none.")

    def cat(field: str) -> Tensor | None:
        present = [getattr(o, field) is not None for o in outputs]
        if any(present) and not all(present):
            raise ValueError(
                f"Some batches of outputs carry `{field}` and others do not. Collect every batch with the "
                "same OutputCapture (the same model and `layers`)."
            )
        return torch.cat([getattr(o, field) for o in outputs]) if present[0] else None

    return ModelOutputs(*(cat(field) for field in ("logits", "embedding", "members", "layer_stats")))
