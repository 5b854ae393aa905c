"""The reference DEUP configuration of torch-uncertainty 0.13.0, rewritten as a test baseline.

Features: logits, max probability, entropy. K folds in loader order (unshuffled); each fold's MLP
trained full-batch for 40 Adam steps on raw cross-entropy errors; the final MLP is fitted on the
out-of-fold predictions. Used only to check that torch_deup's DEUP beats it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reference_features(logits: Tensor) -> Tensor:
    probs = logits.softmax(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1, keepdim=True)
    return torch.cat([logits, probs.max(1, keepdim=True).values, entropy], 1)


def _fit_mlp(x: Tensor, y: Tensor, hidden_dim: int, steps: int) -> nn.Module:
    mlp = nn.Sequential(nn.Linear(x.shape[1], hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1), nn.Softplus())
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = F.mse_loss(mlp(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mlp


def fit_reference_deup(
    logits: Tensor, targets: Tensor, num_folds: int = 5, hidden_dim: int = 32, steps: int = 40
):
    """Return a scoring function ``logits -> scores`` fitted the reference way."""
    x = reference_features(logits)
    errors = F.cross_entropy(logits, targets, reduction="none")
    folds = torch.arange(len(x)).chunk(num_folds)
    oof = torch.empty(len(x))
    for k, held in enumerate(folds):
        train_idx = torch.cat([f for j, f in enumerate(folds) if j != k])
        mlp = _fit_mlp(x[train_idx], errors[train_idx], hidden_dim, steps)
        with torch.no_grad():
            oof[held] = mlp(x[held]).squeeze(1)
    final = _fit_mlp(x, oof, hidden_dim, steps)

    def score(test_logits: Tensor) -> Tensor:
        with torch.no_grad():
            return final(reference_features(test_logits)).squeeze(1)

    return score
