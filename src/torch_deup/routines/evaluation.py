"""The metrics of one ``trainer.test`` run: classification, calibration and selective
classification on the ID test set, and per OOD criterion, OOD detection and SCOD on every OOD set.

Selective classification ranks the ID samples by the model's own confidence (maximum softmax
probability), whatever the OOD criterion, as TorchUncertainty's tables do: swapping the criterion
changes only the OOD rows. A criterion's ranking of the model's errors with OOD inputs present is
the SCOD rows' (its ranking on ID samples alone: ``benchmarks/ood_cifar10_svhn.py``'s AURC).

Each OOD set gets its own OOD and SCOD collections (the ID samples are added to each of them),
so several OOD sets are reported separately. Keys follow :mod:`torch_deup.routines.metric_keys`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torch_deup.metrics import (
    Entropy,
    calibration_metrics,
    classification_metrics,
    ood_metrics,
    scod_metrics,
    selective_metrics,
)
from torch_deup.routines.metric_keys import (
    CALIBRATION,
    CLASSIFICATION,
    SELECTIVE,
    metric_key,
    ood_group,
)


class CriterionMetrics(nn.Module):
    """OOD and SCOD metrics per OOD set, for one criterion.

    Example:
        >>> metrics = CriterionMetrics(num_ood_sets=1, ood_cost=0.5)
        >>> metrics.update_id(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
        >>> metrics.update_ood(0, torch.tensor([0.8, 0.7]))
        >>> metrics.ood[0].compute()["AUROC"].item()  # 2 of the 4 (OOD, ID) pairs ranked right
        0.5
    """

    def __init__(self, num_ood_sets: int, ood_cost: float) -> None:
        super().__init__()
        self.ood = nn.ModuleList(ood_metrics() for _ in range(num_ood_sets))
        self.scod = nn.ModuleList(scod_metrics(ood_cost) for _ in range(num_ood_sets))

    def update_id(self, scores: Tensor, misclassified: Tensor) -> None:
        is_ood = torch.zeros_like(misclassified)
        for ood, scod in zip(self.ood, self.scod, strict=True):
            ood.update(scores, is_ood)
            scod.update(scores, misclassified, is_ood)

    def update_ood(self, set_index: int, scores: Tensor) -> None:
        is_ood = torch.ones_like(scores, dtype=torch.long)
        self.ood[set_index].update(scores, is_ood)
        # an OOD sample has no correct class: SCOD ignores `misclassified` where is_ood
        self.scod[set_index].update(scores, torch.zeros_like(is_ood), is_ood)


class EvaluationMetrics(nn.Module):
    """All test metrics of a classification routine, keyed for the trainer's tables.

    ``criteria`` are the criterion names (one column each when several), ``ood_sets`` the OOD set
    names (one column each when several; none when OOD is not evaluated).

    Example:
        >>> metrics = EvaluationMetrics(2, criteria=["MSP"], ood_sets=[], ood_cost=0.5)
        >>> metrics.update_id(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), {"MSP": torch.tensor([-0.9])})
        >>> metrics.compute()["test/cls/Acc"]
        1.0
    """

    def __init__(self, num_classes: int, criteria: list[str], ood_sets: list[str], ood_cost: float) -> None:
        super().__init__()
        self.ood_sets = list(ood_sets)
        self.classification = classification_metrics(num_classes)
        self.calibration = calibration_metrics(num_classes)
        self.selective = selective_metrics()
        self.criteria = nn.ModuleDict({name: CriterionMetrics(len(ood_sets), ood_cost) for name in criteria})
        self.ood_entropy = nn.ModuleList(Entropy() for _ in ood_sets)

    def update_id(self, probs: Tensor, targets: Tensor, scores: dict[str, Tensor]) -> None:
        self.classification.update(probs, targets)
        self.calibration.update(probs, targets)
        misclassified = (probs.argmax(dim=1) != targets).long()
        self.selective.update(-probs.max(dim=1).values, misclassified)
        for name, metrics in self.criteria.items():
            metrics.update_id(scores[name], misclassified)

    def update_ood(self, set_index: int, probs: Tensor, scores: dict[str, Tensor]) -> None:
        self.ood_entropy[set_index].update(probs)
        for name, metrics in self.criteria.items():
            metrics.update_ood(set_index, scores[name])

    def compute(self) -> dict[str, float]:
        values = {metric_key(CLASSIFICATION, k): v for k, v in self.classification.compute().items()}
        values |= {metric_key(CALIBRATION, k): v for k, v in self.calibration.compute().items()}
        values |= {metric_key(SELECTIVE, k): v for k, v in self.selective.compute().items()}
        several_sets, several_criteria = len(self.ood_sets) > 1, len(self.criteria) > 1
        for name, metrics in self.criteria.items():
            column = name if several_criteria else None
            for i, ood_set in enumerate(self.ood_sets):
                group = ood_group(ood_set if several_sets else None)
                ood_values = metrics.ood[i].compute() | metrics.scod[i].compute()
                ood_values["Entropy"] = self.ood_entropy[i].compute()
                values |= {metric_key(group, k, column): v for k, v in ood_values.items()}
        return {key: float(value) for key, value in values.items()}
