"""How logged test metrics are named, ``<group>/<column>/<metric>``, and which table each belongs to.

The routine writes these keys and the trainer reads them back into tables, so the naming lives in
one place. ``<column>`` is left out for a single column and holds the criterion name when several
criteria are evaluated. With several OOD sets each set has its own group, ``ood_<set>``, printed
as its own table.
"""

from __future__ import annotations

from typing import NamedTuple

CLASSIFICATION = "test/cls"
CALIBRATION = "test/cal"
OOD = "ood"
SELECTIVE = "test/sc"
COMPLEXITY = "test/cplx"

#: printed table title of each group, in printing order
TABLE_TITLES = {
    CLASSIFICATION: "Classification",
    CALIBRATION: "Calibration",
    OOD: "OOD Detection",
    SELECTIVE: "Selective Classification",
    COMPLEXITY: "Complexity",
}
OTHER_TITLE = "Other"


def ood_group(ood_set: str | None) -> str:
    """The group of one OOD set's metrics: ``"ood"``, or ``"ood_<set>"`` when there are several.

    Example:
        >>> ood_group("svhn")
        'ood_svhn'
    """
    return OOD if ood_set is None else f"{OOD}_{ood_set}"


def metric_key(group: str, metric: str, column: str | None = None) -> str:
    """``group/column/metric``, or ``group/metric`` without a column.

    Example:
        >>> metric_key(OOD, "AUROC", "MSP")
        'ood/MSP/AUROC'
    """
    return "/".join([group, *([column] if column else []), metric])


class ParsedKey(NamedTuple):
    rank: int  # position of the table in printing order
    title: str
    column: str
    metric: str


def _rank_and_title(group: str) -> tuple[int, str] | None:
    if group in TABLE_TITLES:
        return list(TABLE_TITLES).index(group), TABLE_TITLES[group]
    if group.startswith(OOD + "_") and "/" not in group:
        return list(TABLE_TITLES).index(OOD), f"{TABLE_TITLES[OOD]}: {group[len(OOD) + 1 :]}"
    return None


def parse_key(key: str) -> ParsedKey:
    """Table, column and metric of a logged key; unknown keys land in a last "Other" table.

    Example:
        >>> parse_key("ood_svhn/MSP/AUROC")
        ParsedKey(rank=2, title='OOD Detection: svhn', column='MSP', metric='AUROC')
        >>> parse_key("test/cls/Acc")
        ParsedKey(rank=0, title='Classification', column='Classification', metric='Acc')
    """
    head, _, metric = key.rpartition("/")
    for group, column in ((head, ""), head.rpartition("/")[::2]):
        found = _rank_and_title(group)
        if found is not None:
            rank, title = found
            return ParsedKey(rank, title, column or title, metric)
    return ParsedKey(len(TABLE_TITLES), OTHER_TITLE, OTHER_TITLE, key)
