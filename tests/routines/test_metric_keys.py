"""Logged metric keys are read back into the table, column and metric they were written for."""

from __future__ import annotations

import pytest

from torch_deup.routines.metric_keys import (
    CALIBRATION,
    COMPLEXITY,
    OOD,
    SELECTIVE,
    TABLE_TITLES,
    metric_key,
    ood_group,
    parse_key,
)


@pytest.mark.parametrize("group", [CALIBRATION, OOD, SELECTIVE, COMPLEXITY, ood_group("svhn")])
@pytest.mark.parametrize("column", [None, "MSP", "Mahalanobis"])
def test_parse_key_inverts_metric_key(group, column):
    title, parsed_column, metric = parse_key(metric_key(group, "SCOD_Cov_5Risk", column))[1:]
    expected_title = TABLE_TITLES.get(group, "OOD Detection: svhn")
    assert (title, parsed_column, metric) == (expected_title, column or expected_title, "SCOD_Cov_5Risk")


def test_tables_rank_in_tutorial_order_and_unknown_keys_go_last():
    keys = ["test/cplx/flops", "test/cls/Acc", "test/sc/AURC", "ood/AUROC", "test/cal/ECE"]
    titles = [parse_key(key).title for key in sorted(keys, key=lambda key: parse_key(key).rank)]
    tutorial = ["Classification", "Calibration", "OOD Detection", "Selective Classification", "Complexity"]
    assert titles == tutorial
    ranks = [parse_key(key).rank for key in keys]
    assert parse_key("ood_far/AUROC").rank == parse_key("ood/AUROC").rank
    assert parse_key("val/Acc")[1:] == ("Other", "Other", "val/Acc")
    assert parse_key("val/Acc").rank > max(ranks)
