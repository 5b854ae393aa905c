"""Choose DEUP's settings without touching test data: validation halves and held-out classes.

    python benchmarks/select_deup.py '{}' '{"held_out_classes": 0}' ... [--draws 3]

Reads the outputs cached by ``ood_cifar10_svhn.py`` but only its train and validation splits.
Two classes (drawn with the draw's seed) play the OOD set: they are removed from the training
outputs that detectors and DEUP are fitted on. The validation split's remaining classes are halved
(stratified): DEUP is fitted on half A and scored on half B (ID) and on the validation images of
the two removed classes (proxy OOD). Prints proxy-OOD AUROC, misclassification AUROC on half B and
SCOD_AUGRC for MSP, KNN, GDA and each DEUP configuration given as JSON, averaged over ``--draws``
draws of the held-out pair (each draw also reseeds the halves and DEUP).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from torch_deup.datamodules.splits import stratified_split
from torch_deup.metrics import augrc, ood_auroc, scod_losses
from torch_deup.ood_criteria import get_criterion
from torch_deup.outputs import ModelOutputs
from torch_deup.post_processing import DEUP


def proxy_task(sets: dict, draw: int) -> tuple:
    """Fit rows, training outputs without the held-out pair, ID and proxy-OOD evaluation outputs."""
    held = torch.randperm(10, generator=torch.Generator().manual_seed(draw))[:2]
    (train_out, train_y), (val_out, val_y) = sets["train"], sets["val"]
    keep = ~torch.isin(train_y, held)
    known = torch.nonzero(~torch.isin(val_y, held)).flatten()
    a, b = stratified_split(val_y[known], 0.5, seed=draw)
    fit_set = (val_out[known[a]], val_y[known[a]])
    train = (train_out[keep], train_y[keep])
    return held, fit_set, train, (val_out[known[b]], val_y[known[b]]), val_out[torch.isin(val_y, held)]


def proxy_metrics(score, id_set: tuple, ood_out: ModelOutputs) -> torch.Tensor:
    """Proxy-OOD AUROC, misclassification AUROC and SCOD_AUGRC, in %."""
    id_out, id_y = id_set
    s_id, s_ood = score(id_out), score(ood_out)
    wrong = (id_out.logits.argmax(1) != id_y).float()
    is_ood = torch.cat([torch.zeros(len(id_y)), torch.ones(len(ood_out))])
    losses = scod_losses(torch.cat([wrong, torch.zeros(len(ood_out))]), is_ood, 0.5)
    s = torch.cat([s_id, s_ood])
    return 100 * torch.tensor([ood_auroc(s, is_ood), ood_auroc(s_id, wrong), augrc(s, losses)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("configs", nargs="*", help="DEUP keyword arguments as JSON, one per configuration")
    parser.add_argument("--draws", type=int, default=3, help="held-out pairs to average over")
    parser.add_argument("--outputs", default="results/cifar10_svhn_outputs.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    saved = torch.load(args.outputs, weights_only=True)
    sets = {k: (ModelOutputs(v["logits"], v["embedding"]), v["targets"]) for k, v in saved["sets"].items()}
    names = ["msp", "knn", "gda"] + [f"DEUP {c}" for c in args.configs]
    results = {name: [] for name in names}
    fit_times = {name: 0.0 for name in names}
    for draw in range(args.draws):
        held, fit_set, train, id_set, ood_out = proxy_task(sets, draw)
        print(f"draw {draw}: held-out classes {held.tolist()}", flush=True)
        for name in ("msp", "knn", "gda"):
            criterion = get_criterion(name)
            if criterion.needs_fit:
                criterion.fit(*train)
            results[name].append(proxy_metrics(criterion, id_set, ood_out))
        for config, name in zip(args.configs, names[3:], strict=True):
            start = time.perf_counter()
            kwargs = {"seed": draw, **json.loads(config)}
            deup = DEUP(progress=False, **kwargs).fit_outputs(*fit_set, *train)
            fit_times[name] += time.perf_counter() - start
            results[name].append(proxy_metrics(deup.score_outputs, id_set, ood_out))
    print(f"\nmean over {args.draws} draws (std across draws)")
    for name in names:
        m = torch.stack(results[name])
        mean, std = m.mean(0), m.std(0) if len(m) > 1 else torch.zeros(3)
        print(
            f"{name:<56} proxy-OOD AUROC {mean[0]:6.2f}±{std[0]:4.2f}  mis AUROC {mean[1]:6.2f}±{std[1]:4.2f}"
            f"  SCOD_AUGRC {mean[2]:6.3f}  fit {fit_times[name] / args.draws:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
