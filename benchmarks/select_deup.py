"""Choose DEUP's settings without touching test data: validation halves and held-out classes.

    python benchmarks/select_deup.py '{}' '{"held_out_classes": 0}' ...

Reads the outputs cached by ``ood_cifar10_svhn.py`` but only its train and validation splits.
Two classes (chosen with the seed) play the OOD set: they are removed from the training outputs
that detectors and DEUP are fitted on. The validation split's remaining classes are halved
(stratified): DEUP is fitted on half A and scored on half B (ID) and on the validation images of
the two removed classes (proxy OOD). Prints proxy-OOD AUROC, misclassification AUROC on half B and
SCOD_AUGRC, for MSP, KNN and each DEUP configuration given as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from torch_deup.datamodules.splits import stratified_split
from torch_deup.metrics import augrc, ood_auroc, scod_losses
from torch_deup.ood_criteria import get_criterion
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing import DEUP


def main() -> None:
    torch.set_num_threads(1)
    saved = torch.load("results/cifar10_svhn_outputs.pt", weights_only=True)
    sets = {k: (ModelOutputs(v["logits"], v["embedding"]), v["targets"]) for k, v in saved["sets"].items()}
    held = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:2]
    (train_out, train_y), (val_out, val_y) = sets["train"], sets["val"]
    keep = ~torch.isin(train_y, held)
    train = (train_out[keep], train_y[keep])
    known = torch.nonzero(~torch.isin(val_y, held)).flatten()
    a, b = stratified_split(val_y[known], 0.5, seed=0)
    fit_set = (val_out[known[a]], val_y[known[a]])
    id_out, id_y = val_out[known[b]], val_y[known[b]]
    ood_out = val_out[torch.isin(val_y, held)]
    wrong = (id_out.logits.argmax(1) != id_y).float()
    is_ood = torch.cat([torch.zeros(len(id_y)), torch.ones(len(ood_out))])
    losses = scod_losses(torch.cat([wrong, torch.zeros(len(ood_out))]), is_ood, 0.5)

    def report(name: str, score, extra: str = "") -> None:
        s_id, s_ood = score(id_out), score(ood_out)
        s = torch.cat([s_id, s_ood])
        print(
            f"{name:<48} proxy-OOD AUROC {100 * ood_auroc(s, is_ood):6.2f}  mis AUROC "
            f"{100 * ood_auroc(s_id, wrong):6.2f}  SCOD_AUGRC {100 * augrc(s, losses):6.3f} {extra}",
            flush=True,
        )

    print(f"held-out classes {held.tolist()}; fit {len(a)}, ID eval {len(b)}, proxy OOD {len(ood_out)}")
    for name in ("msp", "knn", "gda"):
        criterion = get_criterion(name)
        if criterion.needs_fit:
            criterion.fit(*train)
        report(name, criterion)
    for spec in sys.argv[1:]:
        start = time.perf_counter()
        deup = DEUP(progress=False, **json.loads(spec)).fit_outputs(*fit_set, *train)
        report(f"DEUP {spec}", deup.score_outputs, f" fit {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
