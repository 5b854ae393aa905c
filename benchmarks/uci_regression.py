"""DEUP for regression on the UCI sets: does its score rank the test errors of an MLP?

    python benchmarks/uci_regression.py [--datasets concrete yacht] [--splits 5]

For each set and each of the first ``--splits`` standard splits (:func:`torch_deup.datamodules.uci.load_uci`):
features and target are standardised with the training rows' statistics; a random fifth of the
training rows (seeded by the split) is held out as DEUP's calibration set; an MLP (one hidden layer
of 50 ReLU units, dropout 0.05 before its head, as in the MC-dropout papers) is trained on the
rest with Adam. Every score then ranks the squared errors of the test rows:

- *DEUP*: the default regression DEUP (prediction and embedding), fitted on the calibration rows;
- *DEUP + KNN*: the same with the Euclidean distance to the 5th nearest training embedding added
  to ``g``'s features (fitted on the MLP's training rows);
- *MC dropout*: the closed-form variance of the prediction under the head's dropout
  (:class:`~torch_deup.features.variance.DropoutVariance`);
- *KNN*: the distance above, alone.

Columns: Spearman correlation of the score with the squared error, and the area under the
selective RMSE curve (RMSE of the ``c`` test rows with the lowest scores, over every ``c``) divided
by the RMSE of all of them: 1 for a random order, lower is better; the oracle (the errors ranked by
themselves) is the floor. Mean and standard deviation over splits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from torch_deup.datamodules.uci import UCI_DATASETS, load_uci
from torch_deup.features import DropoutVariance, Embedding, RegressionOutputs
from torch_deup.features.distance import KNNDistance
from torch_deup.outputs import ModelOutputs, collect_outputs
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.deup import spearman

SCORES = ("DEUP", "DEUP + KNN", "MC dropout", "KNN", "oracle")


def standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return [(t - mean) / std for t in (train, *others)]


def train_mlp(x: Tensor, y: Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 50), nn.ReLU(), nn.Dropout(0.05), nn.Linear(50, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(TensorDataset(x, y[:, None]), batch_size=32, shuffle=True)
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
    return model.eval()


def selective_rmse_area(score: Tensor, squared_error: Tensor) -> float:
    """Mean over coverages of the RMSE of the lowest-scored rows, over the RMSE of all rows."""
    ranked = squared_error[torch.argsort(score, stable=True)].double()
    rmse = (ranked.cumsum(0) / torch.arange(1, len(ranked) + 1)).sqrt()
    return float(rmse.mean() / rmse[-1])


def outputs_of(model: nn.Module, x: Tensor, y: Tensor) -> ModelOutputs:
    return collect_outputs(model, DataLoader(TensorDataset(x, y), batch_size=1024), progress=False)[0]


def run_split(root: Path, split: int, epochs: int) -> dict[str, tuple[float, float]]:
    data = load_uci(root, split)
    x_train, x_test = standardise(data.x_train, data.x_test)
    y_train, y_test = standardise(data.y_train, data.y_test)
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(split))
    cal, fit = perm[: len(perm) // 5], perm[len(perm) // 5 :]
    model = train_mlp(x_train[fit], y_train[fit], epochs, seed=split)
    train_out, cal_out, test_out = (
        outputs_of(model, x, y)
        for x, y in ((x_train[fit], y_train[fit]), (x_train[cal], y_train[cal]), (x_test, y_test))
    )
    squared_error = (test_out.logits[:, 0] - y_test).pow(2)
    knn = KNNDistance(k=5, normalize=False).fit(train_out, y_train[fit])
    common = {"task": "regression", "progress": False, "seed": split}
    deup = DEUP(**common).fit_outputs(cal_out, y_train[cal], train_out, y_train[fit])
    with_knn = DEUP(features=[RegressionOutputs(), Embedding(), KNNDistance(k=5, normalize=False)], **common)
    with_knn.fit_outputs(cal_out, y_train[cal], train_out, y_train[fit])
    scores = {
        "DEUP": deup.score_outputs(test_out),
        "DEUP + KNN": with_knn.score_outputs(test_out),
        "MC dropout": DropoutVariance.from_model(model)(test_out)[:, 0],
        "KNN": knn(test_out)[:, 0],
        "oracle": squared_error,
    }
    return {
        name: (spearman(score, squared_error), selective_rmse_area(score, squared_error))
        for name, score in scores.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", default="../shared/data/uci")
    parser.add_argument("--datasets", nargs="+", default=list(UCI_DATASETS), choices=UCI_DATASETS)
    parser.add_argument("--splits", type=int, default=5, help="the first N of the 20 standard splits")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.datasets:
        start = time.perf_counter()
        runs = [run_split(Path(args.data) / name, split, args.epochs) for split in range(args.splits)]
        print(f"\n{name}: {args.splits} splits, {time.perf_counter() - start:.0f} s")
        print(f"{'score':<12}{'Spearman':>16}{'sel. RMSE area':>18}")
        for score in SCORES:
            values = torch.tensor([run[score] for run in runs])
            mean, std = values.mean(0), values.std(0)
            print(f"{score:<12}{mean[0]:>10.3f}±{std[0]:.3f}{mean[1]:>12.3f}±{std[1]:.3f}")


if __name__ == "__main__":
    main()
