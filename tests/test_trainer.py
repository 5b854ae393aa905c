"""TUTrainer: the tutorial's tables on stdout instead of Lightning's, and results saved to disk."""

from __future__ import annotations

import csv
import json
import re

import pytest

from routines.synthetic import NUM_CLASSES, BlobDataModule, trained_mlp
from torch_deup import TUTrainer
from torch_deup.metrics import format_metric
from torch_deup.routines import ClassificationRoutine
from torch_deup.trainer import results_tables

TUTORIAL_ROWS = {
    "Classification": ["Acc", "Brier", "Entropy", "NLL"],
    "Calibration": ["ECE", "MCE", "SmECE", "aECE"],
    "OOD Detection": [
        "AUPR", "AUROC", "Entropy", "FPR95",
        "SCOD_AUGRC", "SCOD_AURC", "SCOD_Cov_5Risk", "SCOD_Risk_80Cov",
    ],
    "Selective Classification": ["AUGRC", "AURC", "Cov_5Risk", "Risk_80Cov"],
    "Complexity": ["flops", "params"],
}  # fmt: skip


def make_trainer(**kwargs) -> TUTrainer:
    return TUTrainer(accelerator="cpu", devices=1, max_epochs=1, enable_model_summary=False, **kwargs)


def printed_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """``(column headers after "Test metric", body rows)`` of each printed table, in order."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[┃│]", line)[1:-1]]
        if line.startswith("┃") and cells[0] == "Test metric":
            tables.append((cells[1:], []))
        elif line.startswith("│") and tables:
            tables[-1][1].append(cells)
    return tables


@pytest.fixture
def msp_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory lands here
    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES, eval_ood=True)
    results = make_trainer(enable_progress_bar=True).test(routine, datamodule=BlobDataModule())
    return results, capsys.readouterr().out, tmp_path


def test_prints_the_tutorial_tables_in_order(msp_run):
    results, out, _ = msp_run
    tables = printed_tables(out)
    assert [headers for headers, _ in tables] == [[title] for title in TUTORIAL_ROWS]
    for (_, rows), names in zip(tables, TUTORIAL_ROWS.values(), strict=True):
        assert [row[0] for row in rows] == names
    metrics = results[0]
    classification, _, ood, _, complexity = (dict(rows) for _, rows in tables)
    assert classification["Acc"] == format_metric("Acc", metrics["test/cls/Acc"])
    assert ood["AUROC"] == format_metric("AUROC", metrics["ood/AUROC"])
    assert complexity["flops"] == "10.24 K"  # 2 x 64 x (2*16 + 16*3)


def test_suppresses_lightnings_table_but_returns_its_results(msp_run):
    results, out, _ = msp_run
    assert "DataLoader 0" not in out
    assert len(results) == 2  # one dict per test loader, as Lightning returns them
    assert results[0]["test/cls/Acc"] == results[1]["test/cls/Acc"]


def test_writes_no_logs_or_checkpoints_by_default(msp_run):
    *_, workdir = msp_run
    assert list(workdir.iterdir()) == []


def test_several_criteria_get_one_column_each(capsys):
    routine = ClassificationRoutine(
        trained_mlp(), NUM_CLASSES, eval_ood=True, ood_criterion=["msp", "energy"]
    )
    metrics = make_trainer(enable_progress_bar=False).test(routine, datamodule=BlobDataModule())[0]
    tables = printed_tables(capsys.readouterr().out)
    headers = [headers for headers, _ in tables]
    assert headers == [
        ["Classification"],
        ["Calibration"],
        ["MSP", "Energy"],
        ["Selective Classification"],  # the model's confidence, whatever the criteria
        ["Complexity"],
    ]
    ood_rows = {row[0]: row[1:] for row in tables[2][1]}
    assert ood_rows["AUROC"] == [
        format_metric("AUROC", metrics["ood/MSP/AUROC"]),
        format_metric("AUROC", metrics["ood/Energy/AUROC"]),
    ]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_results_path_writes_readable_results(tmp_path, suffix):
    path = tmp_path / f"out/results{suffix}"
    trainer = make_trainer(enable_progress_bar=False, results_path=path)
    results = trainer.test(ClassificationRoutine(trained_mlp(), NUM_CLASSES), datamodule=BlobDataModule(()))
    if suffix == ".json":
        saved = json.loads(path.read_text())
    else:
        with path.open() as f:
            saved = {row["metric"]: float(row["value"]) for row in csv.DictReader(f)}
    assert saved == pytest.approx(results[0])


def test_results_path_with_unknown_suffix_raises(tmp_path):
    with pytest.raises(ValueError, match=r"`results_path` to end in one of \('.csv', '.json'\)"):
        make_trainer(results_path=tmp_path / "results.txt")


def test_save_results_before_test_raises(tmp_path):
    with pytest.raises(RuntimeError, match=r"No test results to save yet"):
        make_trainer().save_results(tmp_path / "results.json")


def test_tables_sort_rows_and_title_multi_column_tables():
    tables = results_tables({"test/cal/aECE": 0.1, "test/cal/SmECE": 0.2, "ood_svhn/MSP/AUROC": 0.5})
    calibration, ood = tables
    assert list(calibration.columns[0].cells) == ["SmECE", "aECE"]  # Python's sort, as in the tutorial
    assert calibration.title is None
    assert (ood.title, ood.columns[1].header) == ("OOD Detection: svhn", "MSP")


def test_ood_tables_follow_the_order_of_the_sets_not_the_alphabet():
    tables = results_tables({"ood_near/MSP/AUROC": 0.5, "ood_far/MSP/AUROC": 0.9, "test/cls/Acc": 0.8})
    assert [table.title or table.columns[1].header for table in tables] == [
        "Classification",
        "OOD Detection: near",
        "OOD Detection: far",
    ]


def test_test_takes_lightnings_positional_arguments(capsys):
    datamodule = BlobDataModule(ood_sets=())
    trainer = TUTrainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)
    routine = ClassificationRoutine(trained_mlp(), NUM_CLASSES)
    results = trainer.test(routine, datamodule.test_dataloader(), None, False)
    assert 0 <= results[0]["test/cls/Acc"] <= 1
    assert "Classification" not in capsys.readouterr().out  # verbose=False, given by position
