"""Scan DEUP's layer distance and evidence weights on the proxy of ``select_deup.py``, from one ``g``.

    python benchmarks/scan_layer_distance.py --draws 6 7 8 --save results/scan_single11.pt
    python benchmarks/scan_layer_distance.py --checkpoint checkpoints/resnet20_cifar10.pt \\
        checkpoints/resnet20_cifar10_seed1.pt --draws 3 4 5 --save results/scan_ensemble11.pt
    python benchmarks/scan_layer_distance.py --combine results/scan_single11.pt results/scan_ensemble11.pt

The eleventh session's choice of ``DEUP(layer_distance="class_range")`` and of its weights, as a
script, on draws no earlier scan had seen. The tenth session's choice of ``"range"`` is the same
commands with ``--draws 3 4 5`` and ``--draws 0 1 2``, ``--quantiles 0.0005 0.001 0.002 0.005`` and
an empty ``--class-quantiles``. Each draw fits DEUP once per proxy task
(``select_deup.proxy_tasks``); the layer distance and the evidence weights do not change ``g``, so
every cell of the grid (a layer distance: the Mahalanobis one,
:class:`~torch_deup.features.layers.LayerRange` with each ``--quantiles``, or its class-conditional
form with each ``--class-quantiles``; ``layer_weight``, ``knn_weight`` and ``evidence_onset``) is
scored from the same ``g`` and KNN column by
:func:`log_score`, the log of DEUP's score (no gates, DEUP's default). The metrics are
``select_deup.proxy_metrics``'. For each distance, the selection rule (``select_deup.margins``)
reads its cells with that distance alone among the baselines, as the library's criteria would
hold it; ``--combine`` takes, per distance, the cell eligible on every saved scan with the widest
smallest margin over them, then the distance whose cell is widest. ``select_deup.py`` with a
chosen cell's configuration reproduces its figures.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import Tensor

from select_deup import add_proxy_arguments, baseline_metrics, load_proxy, margins, proxy_metrics, proxy_tasks
from torch_deup.features.base import FeatureExtractor, feature_matrix
from torch_deup.features.layers import LayerRange, LayerStatistics
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.ood_gate import TailEvidence

ONSETS = (0.0, 1.5, 2.0, 2.5, 3.0)
LAYER_WEIGHTS = (0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
KNN_WEIGHTS = (0.25, 0.5)


def log_score(
    log_g: Tensor, t_layer: Tensor, t_knn: Tensor, layer_weight: float, knn_weight: float, onset: float
):
    """The log of DEUP's score (step 7 of ``deup.py``) from ``log g`` and the two tail evidences."""
    start = max(onset, 1.0)
    return (
        log_g
        + layer_weight * (t_layer.clamp_min(onset) - start)
        + knn_weight * (t_knn.clamp_min(onset) - start)
    )


def distances(
    quantiles: Iterable[float], class_quantiles: Iterable[float]
) -> dict[str, Callable[[], FeatureExtractor]]:
    """The layer distances scanned, by name: the Mahalanobis one, one range per quantile and one
    class-conditional range per class quantile."""
    return (
        {"mahalanobis": LayerStatistics}
        | {f"range{q:g}": partial(LayerRange, q) for q in quantiles}
        | {f"cls{q:g}": partial(LayerRange, q, per_class=True) for q in class_quantiles}
    )


def scan_draw(
    sets: dict,
    draw: int,
    far: dict[str, ModelOutputs],
    layer_distances: dict[str, Callable[[], FeatureExtractor]],
    baselines: list[str],
):
    """Every baseline's and every cell's proxy metrics on one draw."""
    _, near, full = proxy_tasks(sets, draw)
    rows = {name: baseline_metrics(name, near, full, far) for name in baselines}
    # per task: the components of each scored set of outputs, by its identity
    tables = []
    for task in (near, full):
        deup = DEUP(progress=False, seed=draw).fit_outputs(*task["fit"], *task["train"])
        layer = {n: make().fit(*task["train"]) for n, make in layer_distances.items()}
        evidence = {n: TailEvidence().fit(d(task["fit"][0])[:, 0]) for n, d in layer.items()}
        scored = [
            task["id"][0],
            *([task["ood"]] if "ood" in task else []),
            *(far.values() if task is full else []),
        ]
        table = {}
        with torch.no_grad():
            for outputs in scored:
                x = feature_matrix(deup.features_, outputs)
                log_g = torch.log(deup.g_(deup.scaler_(x)).double())
                t_knn = deup.knn_evidence_.evidence(x[:, deup.knn_column_])
                values = {n: d(outputs)[:, 0] for n, d in layer.items()}
                table[id(outputs)] = (
                    log_g,
                    t_knn,
                    values,
                    {n: evidence[n].evidence(v) for n, v in values.items()},
                )
        tables.append(table)
    for name in layer_distances:
        alone = [lambda o, t=t, name=name: t[id(o)][2][name] for t in tables]
        rows[f"{name} alone"] = proxy_metrics(*alone, near, full, far)
        for weight, knn, onset in itertools.product(LAYER_WEIGHTS, KNN_WEIGHTS, ONSETS):
            cell = [
                lambda o, t=t, name=name, w=weight, k=knn, s=onset: log_score(
                    t[id(o)][0], t[id(o)][3][name], t[id(o)][1], w, k, s
                )
                for t in tables
            ]
            rows[f"{name} {weight} {knn} {onset}"] = proxy_metrics(*cell, near, full, far)
    return rows


def rule_by_distance(means: dict, names: Iterable[str], baselines: list[str]) -> dict[str, tuple[dict, list]]:
    """Per distance: ``select_deup.margins`` of its cells and the Mahalanobis distance's, with it
    alone among the baselines (as the library's criteria hold both distances)."""
    result = {}
    for name in names:
        bases = list(dict.fromkeys([*baselines, "mahalanobis alone", f"{name} alone"]))
        cells = {
            k: v
            for k, v in means.items()
            if k.split(" ")[0] in (name, "mahalanobis") and not k.endswith("alone")
        }
        result[name] = margins({b: means[b] for b in bases} | cells, bases)
    return result


def mean_metrics(rows: list[dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    out = {}
    for name in rows[0]:
        m = torch.stack([r[name] for r in rows]).mean(0)
        out[name] = {"held": m[0], "mis": m[1], "scod": m[2:5].sum(), "kinds": m[5:]}
    return out


def print_combined(paths: list[str]) -> None:
    """Per distance, the cell eligible on every scan with the widest smallest margin over them."""
    saved = [torch.load(p, weights_only=False) for p in paths]
    # scans saved before the class-conditional distances hold none
    grids = [(s["quantiles"], s.get("class_quantiles", [])) for s in saved]
    for path, grid in zip(paths, grids, strict=True):
        if grid != grids[0]:
            raise SystemExit(
                f"{path} scanned the quantiles {grid}, {paths[0]} {grids[0]}: combine scans of the same "
                "--quantiles and --class-quantiles."
            )
    names = distances(*grids[0])
    rules = [rule_by_distance(mean_metrics(s["rows"]), names, s["baselines"]) for s in saved]
    best = {}
    for name in names:
        per_scan = [rule[name] for rule in rules]
        shared = [c for c in per_scan[0][0] if all(c in eligible for _, eligible in per_scan)]
        if not shared:
            print(f"{name:<14} no cell eligible on every scan")
            continue
        smallest = {c: min(min(result[c].values()) for result, _ in per_scan) for c in shared}
        cell = max(shared, key=smallest.get)
        best[cell] = smallest[cell]
        print(f"{name:<14} {cell:<28} smallest margin over the scans {smallest[cell]:+.2f}")
    if best:
        print(f"chosen: {max(best, key=best.get)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.001, 0.002])
    parser.add_argument("--class-quantiles", type=float, nargs="*", default=[0.0, 0.002, 0.005, 0.01])
    add_proxy_arguments(parser)
    parser.add_argument("--save", default=None, help="write the per-draw figures here, for --combine")
    parser.add_argument("--combine", nargs="+", default=None, help="files of --save: the shared choice")
    args = parser.parse_args()
    if args.combine:
        print_combined(args.combine)
        return
    ensemble = len(args.checkpoint) > 1
    torch.set_num_threads(1)
    sets, _, corrupted = load_proxy(args, args.draws)
    baselines = ["msp", "knn", "gda", "mutual_information" if ensemble else "vim"]
    names = distances(args.quantiles, args.class_quantiles)
    rows = []
    for draw, far in zip(args.draws, corrupted, strict=True):
        rows.append(scan_draw(sets, draw, far, names, baselines))
        print(f"draw {draw} scored", flush=True)
    for name, (result, eligible) in rule_by_distance(mean_metrics(rows), names, baselines).items():
        choice = max(eligible, key=lambda c: min(result[c].values()))
        print(f"{name:<14} {choice:<28} smallest margin {min(result[choice].values()):+.2f}")
    if args.save:
        torch.save(
            {
                "rows": rows,
                "quantiles": args.quantiles,
                "class_quantiles": args.class_quantiles,
                "baselines": baselines,
            },
            args.save,
        )


if __name__ == "__main__":
    main()
