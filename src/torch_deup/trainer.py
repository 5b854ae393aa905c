"""A Lightning ``Trainer`` that prints test metrics as one table per kind and can save them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from lightning import Trainer
from rich.console import Console
from rich.table import Column, Table

from torch_deup.metrics import format_metric
from torch_deup.routines.metric_keys import parse_key

RESULT_SUFFIXES = (".csv", ".json")


def merge_results(results: list[dict[str, float]]) -> dict[str, float]:
    """One dict from Lightning's per-dataloader result dicts (epoch-level metrics appear in each)."""
    return {key: value for result in results for key, value in result.items()}


def results_tables(metrics: dict[str, float]) -> list[Table]:
    """One rich table per metric group (and per OOD set, in the order the metrics name them), rows
    sorted by name, one column per criterion.

    Example:
        >>> tables = results_tables({"test/cls/Acc": 0.9, "ood/AUROC": 0.8})
        >>> [table.columns[1].header for table in tables]
        ['Classification', 'OOD Detection']
    """
    cells: dict[tuple[int, str], dict[str, dict[str, str]]] = {}  # table -> column -> metric -> text
    for key, value in metrics.items():
        rank, title, column, name = parse_key(key)
        cells.setdefault((rank, title), {}).setdefault(column, {})[name] = format_metric(name, value)
    tables = []
    # by group rank only: a stable sort keeps the OOD sets in their own order, not alphabetical
    for (_, title), columns in sorted(cells.items(), key=lambda item: item[0][0]):
        table = Table(
            Column("Test metric", style="cyan"),
            *(Column(name, justify="center", style="magenta") for name in columns),
            # a single column is headed by the title, as in the tutorial; several get it above them
            title=None if list(columns) == [title] else title,
        )
        for name in sorted({name for column in columns.values() for name in column}):
            table.add_row(name, *(column.get(name, "") for column in columns.values()))
        tables.append(table)
    return tables


def check_results_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in RESULT_SUFFIXES:
        raise ValueError(
            f"Expected `results_path` to end in one of {RESULT_SUFFIXES}, but got {str(path)!r}. "
            "Pick a .csv or .json file name."
        )
    return path


def save_results(metrics: dict[str, float], path: str | Path) -> Path:
    """Write ``{metric: value}`` to ``path``: JSON for ``.json``, two-column CSV for ``.csv``."""
    path = check_results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        # NaN is not JSON; null says "undefined" to every reader.
        clean = {k: None if math.isnan(v) else v for k, v in metrics.items()}
        path.write_text(json.dumps(clean, indent=2))
    else:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["metric", "value"])
            writer.writerows(metrics.items())
    return path


class TUTrainer(Trainer):
    """``lightning.Trainer`` whose ``test`` prints the tables of TorchUncertainty's tutorials.

    Lightning's flat table is replaced by one table per kind (Classification, Calibration, OOD
    Detection, Selective Classification, Complexity); ``test`` still returns Lightning's list of
    metric dicts. ``results_path`` (``.csv`` or ``.json``) saves each test's metrics. Logging and
    checkpointing default to off so evaluation writes nothing unasked.

    Example:
        >>> trainer = TUTrainer(accelerator="cpu", devices=1, max_epochs=1, enable_progress_bar=False)
        >>> trainer.logger is None
        True
    """

    def __init__(self, *args: Any, results_path: str | Path | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("logger", False)
        kwargs.setdefault("enable_checkpointing", False)
        super().__init__(*args, **kwargs)
        self.results_path = None if results_path is None else check_results_path(results_path)
        self.last_results: list[dict[str, float]] = []

    def test(
        self,
        model: Any = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: Any = None,
        **kwargs: Any,
    ) -> list[dict[str, float]]:
        """Lightning's ``test`` (same arguments), then the metric tables when ``verbose``."""
        results = super().test(
            model=model,
            dataloaders=dataloaders,
            ckpt_path=ckpt_path,
            verbose=False,
            datamodule=datamodule,
            **kwargs,
        )
        self.last_results = results
        if self.is_global_zero:
            if verbose:
                self.print_results(results)
            if self.results_path is not None:
                self.save_results(self.results_path)
        return results

    @staticmethod
    def print_results(results: list[dict[str, float]], console: Console | None = None) -> None:
        """Print the tables of Lightning's test results (to ``console``, default stdout)."""
        console = console or Console()
        for table in results_tables(merge_results(results)):
            console.print(table)

    def save_results(self, path: str | Path) -> Path:
        """Write the metrics of the last ``test`` call to ``path`` (``.csv`` or ``.json``)."""
        if not self.last_results:
            raise RuntimeError("No test results to save yet. Call `trainer.test(...)` first.")
        return save_results(merge_results(self.last_results), path)
