"""The score of benchmarks/scan_layer_distance.py, which chose DEUP's layer distance, is DEUP's own."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.models import conv_net
from torch_deup.features.base import feature_matrix
from torch_deup.features.layers import LayerStatistics
from torch_deup.post_processing import DEUP

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from scan_layer_distance import distances, log_score


@pytest.mark.parametrize(
    ("distance", "weight", "knn", "onset"),
    [("class_range", 1.25, 0.5, 2.5), ("range", 1.25, 0.5, 2.0), ("mahalanobis", 0.75, 0.25, 0.0)],
)
def test_the_scans_score_is_the_log_of_deups(distance, weight, knn, onset):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(240, 1, 5, 5, generator=g)
    cal = DataLoader(TensorDataset(images[:90], torch.arange(90) % 3), batch_size=32)
    train = DataLoader(TensorDataset(images[90:], torch.arange(150) % 3), batch_size=32)
    deup = DEUP(
        model=conv_net(), max_epochs=3, progress=False, held_out_classes=2, layer_distance=distance,
        layer_weight=weight, knn_weight=knn, evidence_onset=onset,
    ).fit(cal, train)  # fmt: skip
    # inputs from ordinary to far, so that both evidences pass their onset on some
    outputs = deup.model_outputs(
        torch.randn(40, 1, 5, 5, generator=g) * torch.linspace(0.5, 2, 40)[:, None, None, None]
    )
    x = feature_matrix(deup.features_, outputs)
    with torch.no_grad():
        log_g = torch.log(deup.g_(deup.scaler_(x)).double())
    t_layer = deup.layer_evidence_.evidence(deup.layer_(outputs)[:, 0])
    t_knn = deup.knn_evidence_.evidence(x[:, deup.knn_column_])
    assert (t_layer > max(onset, 1.0)).any()
    expected = torch.log(deup.score_outputs(outputs).double())
    scan = log_score(log_g, t_layer, t_knn, weight, knn, onset)
    # DEUP caps its score where float32 ends; the scan ranks those inputs on, above the cap
    cap = torch.log(torch.tensor(torch.finfo(torch.float32).max, dtype=torch.float64))
    below = expected < cap - 1e-3
    assert below.sum() >= 10
    torch.testing.assert_close(scan[below], expected[below], rtol=1e-5, atol=1e-5)
    assert (scan[~below] >= cap - 1e-3).all()


def test_the_scans_distances_are_the_layer_ranges_they_name():
    made = {name: make() for name, make in distances([0.002], [0.0, 0.01]).items()}
    assert type(made.pop("mahalanobis")) is LayerStatistics
    assert {name: (d.quantile, d.per_class) for name, d in made.items()} == {
        "range0.002": (0.002, False),
        "cls0": (0.0, True),
        "cls0.01": (0.01, True),
    }
