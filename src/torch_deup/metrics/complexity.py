"""Model size: parameters, and FLOPs of one forward pass counted as TorchUncertainty counts them.

FLOPs are those of ``torch.utils.flop_counter.FlopCounterMode``: matrix products and
convolutions only, two FLOPs per multiply-accumulate (normalisations, activations and pooling
are not counted). This reproduces TorchUncertainty's "284.38 G" for its CIFAR ResNet-18 on a
batch of 256 images of 3x32x32: 0.5554 G multiply-accumulates per image, x 2 x 256.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from torch_deup.outputs import evaluating


def flops(model: nn.Module, example_input: Tensor, *, on_meta: bool = True) -> int:
    """FLOPs of ``model(example_input)``; the count scales with the batch size of the input.

    With ``on_meta`` (the default) a copy of the model runs on PyTorch's "meta" device: shapes
    only, no arithmetic, so counting a large model costs nothing. Models whose ``forward`` builds
    tensors on a fixed device fail there; pass ``on_meta=False`` to run the real forward pass
    (in eval mode, without gradients) instead. ``model`` itself is never modified.

    Example:
        >>> flops(nn.Linear(10, 5), torch.zeros(4, 10))  # 4 x 10 x 5 multiply-accumulates, x 2
        400
    """
    if on_meta:
        model, example_input = copy.deepcopy(model).to("meta"), example_input.to("meta")
    # each submodule's own mode restored after: a frozen batch norm stays frozen
    with evaluating(model), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example_input)
    return counter.get_total_flops()


def params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all of them, or those with ``requires_grad``).

    Example:
        >>> params(nn.Linear(10, 5))
        55
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
