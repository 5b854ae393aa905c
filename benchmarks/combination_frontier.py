"""How two signals trade OOD AUROC for misclassification AUROC on the test split: a diagnostic.

    python benchmarks/combination_frontier.py

Reads the outputs cached by ``ood_cifar10_svhn.py`` (run it first). Fits DEUP's ``g`` without any
layer-statistics or KNN term on the validation split (``layer_gate=False``, ``layer_weight=0``,
``knn_weight=0``) and the layer-statistics distance on the training split, then prints, on
CIFAR-10 test vs SVHN, OOD AUROC / misclassification AUROC of two families that combine an error
score ``e`` (``g``, or ``1 - MSP``) with the distance ``d``:

- *gate*: ``cost * pi + (1 - pi) * e``, ``pi = 1 - exp(-relu(d - q) / (k * sd))``, ``q`` the ``1 - tail``
  quantile of the validation distances (DEUP's ``layer_gate`` form), over ``tail`` and ``k``;
- *log evidence*: ``log e + w * t(d)``, ``t = -log p`` the conformal tail evidence among the
  validation distances (DEUP's ``layer_weight`` form), over ``w``.

This reads test labels and SVHN: it shows where a family's frontier lies. It is the diagnostic
that showed the gate family far from issue 5's targets and the log-evidence family nearer them,
after which DEUP's form changed from the gate to the evidence: that choice saw test data
(``docs/choosing_the_defaults.md`` says so). The weight itself was chosen on ``select_deup.py``'s
proxy; do not pick settings from this script's figures.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch import Tensor

from ood_cifar10_svhn import CACHE_VERSION, cached_sets
from torch_deup.features.layers import LayerStatistics
from torch_deup.metrics import ood_auroc
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.ood_gate import TailEvidence


def aurocs(e_id: Tensor, e_ood: Tensor, wrong: Tensor) -> tuple[float, float]:
    """OOD AUROC (SVHN positive) and misclassification AUROC, in %."""
    is_ood = torch.cat([torch.zeros(len(e_id)), torch.ones(len(e_ood))])
    return 100 * ood_auroc(torch.cat([e_id, e_ood]), is_ood).item(), 100 * ood_auroc(e_id, wrong).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--outputs", default="results/cifar10_svhn_outputs.pt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    saved = torch.load(args.outputs, weights_only=True)
    if saved.get("version") != CACHE_VERSION:
        raise SystemExit(f"{args.outputs} was written by an older ood_cifar10_svhn.py: run it again.")
    sets = cached_sets(saved)
    (train, y_train), (val, y_val), (test, y_test), (svhn, _) = (
        sets[k] for k in ("train", "val", "test", "svhn")
    )
    wrong = (test.logits.argmax(1) != y_test).float()
    deup = DEUP(layer_gate=False, layer_weight=0.0, knn_weight=0.0, seed=args.seed, progress=False)
    deup.fit_outputs(val, y_val, train, y_train)
    layer = LayerStatistics().fit(train, y_train)
    d_val, d_test, d_svhn = (layer(o)[:, 0] for o in (val, test, svhn))
    # each error score with the cost of an OOD input on its scale (the gate's ceiling)
    errors = {
        "g": (deup.score_outputs(test), deup.score_outputs(svhn), deup.error_cost_),
        "1 - MSP": (*(1 - o.logits.softmax(1).max(1).values for o in (test, svhn)), 1.0),
    }
    mis_bar = aurocs(*errors["1 - MSP"][:2], wrong)[1] - 1
    print(f"misclassification bar (MSP - 1): {mis_bar:.2f}")
    evidence = TailEvidence().fit(d_val)
    scale = d_val.std()
    for name, (e_test, e_svhn, cost) in errors.items():
        print(f"\nerror score {name}")
        print("  log evidence: w -> OOD AUROC / mis AUROC")
        for w in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
            combined = [
                e.log() + w * evidence.evidence(d).float() for e, d in ((e_test, d_test), (e_svhn, d_svhn))
            ]
            print("    {:<5} {:6.2f} / {:6.2f}".format(w, *aurocs(*combined, wrong)))
        best = (0.0, 0.0, None)
        for tail, k in itertools.product((0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5), (0.1, 0.3, 1, 3, 10)):
            edge = torch.quantile(d_val.double(), 1 - tail).float()
            combined = []
            for e, d in ((e_test, d_test), (e_svhn, d_svhn)):
                pi = -torch.expm1(-torch.relu(d - edge) / (k * scale))
                combined.append(cost * pi + (1 - pi) * e)
            ood, mis = aurocs(*combined, wrong)
            if mis >= mis_bar and ood > best[0]:
                best = (ood, mis, (tail, k))
        print(
            f"  gate: best OOD AUROC with mis AUROC >= the bar: {best[0]:.2f} / {best[1]:.2f} "
            f"at (tail, k) = {best[2]}"
        )


if __name__ == "__main__":
    main()
