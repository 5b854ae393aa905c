"""The held-out-class protocol: training rows that show DEUP what an error on the unknown looks like.

Lahlou et al. obtain out-of-distribution training rows for the error predictor by retraining the
base model with some classes held out. Post hoc, the backbone is frozen, but its cheap parts can be
refitted: for each group of classes G (classes shuffled with the seed, dealt into ``num_groups``
groups), a linear head and every fitted feature extractor (densities, distances) are refitted on
the training embeddings of the other classes. The calibration samples of G, seen through those
refitted parts, look like inputs of a class the model never learned: their density is low, their
distance high, and the head is confidently wrong on some of them. Their target is the mean loss of
the base model on its own misclassified calibration samples (the typical cost of an error), since
the refitted head's cross-entropy on a class it lacks is infinite.

Every calibration sample is held out in exactly one group, so this adds one row per calibration
sample, at the cost of ``num_groups`` refits of the head and the extractors.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_deup.features.base import FeatureExtractor
from torch_deup.outputs import ModelOutputs


def fit_linear_head(
    embedding: Tensor, targets: Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 100
) -> nn.Linear:
    """Multinomial logistic regression on embeddings, by L-BFGS (deterministic)."""
    head = nn.Linear(embedding.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(embedding), targets) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()


def class_groups(classes: Tensor, num_groups: int, seed: int) -> list[Tensor]:
    """Shuffle ``classes`` with ``seed`` and deal them into ``num_groups`` groups."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = classes[torch.randperm(len(classes), generator=generator)]
    return [shuffled[k::num_groups] for k in range(num_groups)]


def held_out_class_rows(
    features: Sequence[FeatureExtractor],
    train: tuple[ModelOutputs, Tensor],
    cal_outputs: ModelOutputs,
    cal_targets: Tensor,
    errors: Tensor,
    num_groups: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Feature rows and error targets of every calibration sample with its class held out."""
    train_outputs, train_targets = train
    if train_outputs.embedding is None or cal_outputs.embedding is None:
        raise ValueError(
            "The held-out-class protocol refits a linear head on the penultimate embedding, but the "
            "outputs carry none. Set `held_out_classes=0` or give the model a final nn.Linear."
        )
    classes = torch.unique(train_targets)
    num_groups = min(num_groups, len(classes) - 1)
    if num_groups < 1:
        raise ValueError("The held-out-class protocol needs at least 2 classes in the training data.")
    wrong = cal_outputs.logits.argmax(1) != cal_targets
    error_cost = errors[wrong].mean() if wrong.any() else errors.max()
    rows = []
    for group in class_groups(classes, num_groups, seed):
        keep = ~torch.isin(train_targets, group)
        held = torch.isin(cal_targets, group)
        if not held.any():
            continue
        kept_classes = classes[~torch.isin(classes, group)]
        relabel = torch.searchsorted(kept_classes, train_targets[keep])
        with torch.enable_grad():
            head = fit_linear_head(train_outputs.embedding[keep], relabel, len(kept_classes))
        refitted = [
            copy.deepcopy(f).fit(train_outputs[keep], relabel) if f.needs_fit else f for f in features
        ]
        emb = cal_outputs.embedding[held]
        with torch.no_grad():
            outputs = ModelOutputs(head(emb), emb)
        rows.append(torch.cat([f(outputs).float().reshape(len(emb), -1) for f in refitted], dim=1))
    x = torch.cat(rows)
    return x, torch.full((len(x),), float(error_cost))
