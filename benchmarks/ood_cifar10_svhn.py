"""Every criterion of the library on one model: CIFAR-10 (ID) vs SVHN (OOD), one run.

    python benchmarks/ood_cifar10_svhn.py --data ../shared/data --checkpoint checkpoints/resnet20_cifar10.pt

With several ``--checkpoint`` files the model is their :class:`~torch_deup.models.DeepEnsemble`:
mutual information replaces ViM (an ensemble's logits are no single linear head's), max-logit and
energy are the mean of the members' scores, DEUP adds the members' disagreement to its features,
and one more row ablates that feature. Outputs, plot and JSON then go to ``*_ensemble`` files.

The model is the project's ResNet-20 (45,000 training images; the 5,000-image validation split was
held out and is where DEUP is fitted). The base model runs once over train, validation, test and
SVHN; every criterion then reads those outputs, exactly as the evaluation routine does. Fitted
detectors (Mahalanobis, KNN, GDA) are fitted on the training split, DEUP on the validation split
with the training split as its density/distance reference. Nothing is fitted on test data.

Columns: OOD AUROC / AUPR / FPR95 (SVHN positive), misclassification AUROC and AURC on CIFAR-10
test, SCOD_AUGRC (ID test + SVHN, OOD cost 0.5), Spearman correlation of the score with the
per-sample cross-entropy on CIFAR-10 test, fit time and scoring time per 1,000 images (on computed
outputs; the base model's own forward time is printed above the table). DEUP runs with three
seeds: mean and spread. Writes ``--plot`` (OOD AUROC vs misclassification AUROC) and ``--json``.

``--published`` is for a checkpoint trained on all 50,000 training images, such as the published
ResNet-20 in ``../shared/weights/akamaster``: its validation split is training data, so its errors
there are not out-of-sample. The protocol of issue 5's own table then applies: the reference split
is train + validation, DEUP calibrates on a stratified half of the CIFAR-10 test set (seed 0), and
every criterion is evaluated on the other half against SVHN. Outputs, plot and JSON go to
``*_published`` files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from torch_deup.datamodules import CIFAR10DataModule
from torch_deup.datamodules.splits import stratified_split
from torch_deup.features import EnsembleDisagreement
from torch_deup.hub import load_checkpoint
from torch_deup.metrics import augrc, aurc, fpr_at_tpr, ood_aupr, ood_auroc, scod_losses
from torch_deup.models import DeepEnsemble
from torch_deup.models.classification.resnet import resnet
from torch_deup.ood_criteria import get_criterion
from torch_deup.outputs import ModelOutputs, OutputCapture, collect_outputs, concat_outputs
from torch_deup.post_processing import DEUP
from torch_deup.post_processing.deup import spearman

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.reference_deup import fit_reference_deup

CACHED = ("logits", "embedding", "members", "layer_stats")  # the ModelOutputs fields in the cache
CACHE_VERSION = 8  # bumped when what the cache holds changes (7: chunked two-pass statistics; 8: setup)
# the input normalisation each checkpoint was trained with (akamaster's used ImageNet's statistics)
NORMALIZATION = {
    "cifar10": {},  # the data module's default, CIFAR-10's own statistics
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}
BASELINES = [
    "msp", "logit", "energy", "entropy", "mahalanobis", "knn", "gda", "layer_stats", "layer_range",
    "layer_class_range",
]  # fmt: skip


def load_model(checkpoints: list[str]) -> torch.nn.Module:
    """The ResNet-20 of one checkpoint, or the deep ensemble of several."""
    models = [load_checkpoint(resnet(arch=20, num_classes=10), c).eval() for c in checkpoints]
    return models[0] if len(models) == 1 else DeepEnsemble(models).eval()


def data_module(args: argparse.Namespace) -> CIFAR10DataModule:
    """CIFAR-10 with its 10% validation split and SVHN, normalised as ``--normalization`` says."""
    normalization = NORMALIZATION[args.normalization]
    return CIFAR10DataModule(root=args.data, batch_size=500, eval_ood=True, val_split=0.1, **normalization)


def cached_sets(saved: dict) -> dict[str, tuple[ModelOutputs, torch.Tensor]]:
    """The ``(outputs, targets)`` of each split in a cache written by :func:`collect_all`."""
    return {
        k: (ModelOutputs(**{f: v.get(f) for f in CACHED}), v["targets"]) for k, v in saved["sets"].items()
    }


def checkpoints_sha256(checkpoints: list[str]) -> str:
    """What the cache records of the model: the hash of each checkpoint file, joined."""
    return "+".join(hashlib.sha256(Path(c).read_bytes()).hexdigest() for c in checkpoints)


def collect_all(
    args: argparse.Namespace, dm: CIFAR10DataModule
) -> tuple[dict[str, tuple[ModelOutputs, torch.Tensor]], dict]:
    """Outputs of the four splits of ``dm`` (cached in ``--cache`` for this checkpoint) and the
    forward times."""
    cache = Path(args.cache) if args.cache else None
    checkpoint_sha256 = checkpoints_sha256(args.checkpoint)
    data = str(Path(args.data).resolve())
    dm.setup()  # resolves the input statistics (decoded images are cached: a few seconds)
    # what the outputs depend on besides the checkpoint: the input statistics and the split
    setup = {
        "mean": list(dm.mean_),
        "std": list(dm.std_),
        "val_split": dm.val_split,
        "split_seed": dm.split_seed,
    }
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        key = (
            saved.get("checkpoint_sha256"),
            saved.get("version"),
            saved.get("normalization"),
            saved.get("data"),
            saved.get("setup"),
        )
        if key == (checkpoint_sha256, CACHE_VERSION, args.normalization, data, setup):
            return cached_sets(saved), saved["times"]
        print(
            f"{cache} holds the outputs of another checkpoint, normalisation, split or data folder, or "
            "older fields: recomputing"
        )
    model = load_model(args.checkpoint)
    loaders = {
        "train": dm.train_eval_dataloader(),
        "val": dm.postprocess_dataloader(),
        "test": dm.test_dataloader()[0],
        "svhn": dm.test_dataloader()[1],
    }
    sets, times = {}, {}
    for name, loader in loaders.items():
        start = time.perf_counter()
        sets[name] = collect_outputs(model, loader, desc=f"forward {name}")
        times[name] = time.perf_counter() - start
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            k: {"targets": t} | {f: getattr(o, f) for f in CACHED if getattr(o, f) is not None}
            for k, (o, t) in sets.items()
        }
        saved = {
            "sets": payload,
            "times": times,
            "checkpoint_sha256": checkpoint_sha256,
            "normalization": args.normalization,
            "data": data,
            "setup": setup,
            "version": CACHE_VERSION,
        }
        torch.save(saved, cache)
    return sets, times


def published_halves(test_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The test rows a published model is evaluated on, and those it calibrates on."""
    return stratified_split(test_targets, 0.5, seed=0)


def published_protocol(
    sets: dict[str, tuple[ModelOutputs, torch.Tensor]],
) -> dict[str, tuple[ModelOutputs, torch.Tensor]]:
    """The splits for a model trained on all training images: train + validation as the reference,
    a stratified half of the test set (seed 0) to calibrate on, the other half to evaluate."""
    (test, y_test), (train, y_train), (val, y_val) = sets["test"], sets["train"], sets["val"]
    evaluate, calibrate = published_halves(y_test)
    return {
        "train": (concat_outputs([train, val]), torch.cat([y_train, y_val])),
        "val": (test[calibrate], y_test[calibrate]),
        "test": (test[evaluate], y_test[evaluate]),
        "svhn": sets["svhn"],
    }


def forward_costs(model: torch.nn.Module, deup: DEUP, loader, rounds: int = 3, n: int = 5000) -> dict:
    """The model's plain forward, the forward with the hooks that record DEUP's inputs
    (:class:`~torch_deup.outputs.OutputCapture`, as the routine runs it), and that forward followed
    by DEUP's score, on ``n`` test images already in memory: the three run back to back on each
    batch, in a rotating order, ``rounds`` times. Returns the median over batches of each one's
    seconds per 1,000 images and of the two ratios to the plain forward (medians, because this
    machine's speed jumps)."""
    batches, kept = [], 0
    for x, _ in loader:
        batches.append(x[: n - kept])
        kept += len(batches[-1])
        if kept >= n:
            break
    capture = OutputCapture(model)
    runs = {
        "plain": model,
        "hooked": capture,
        "scored": lambda x: deup.score_outputs(capture(x)),
    }
    per_1000 = {name: [] for name in runs}
    names = list(runs)
    with torch.inference_mode():
        for r in range(rounds):
            # each round starts with another of the three: whichever runs first pays for the others'
            # allocations, which biased a fixed order by several percent
            for x in batches:
                for name in names[r % 3 :] + names[: r % 3]:
                    start = time.perf_counter()
                    runs[name](x)
                    per_1000[name].append((time.perf_counter() - start) / len(x) * 1000)
    times = {name: torch.tensor(t) for name, t in per_1000.items()}
    medians = {name: t.median().item() for name, t in times.items()}
    ratios = {
        f"{name} ratio": (times[name] / times["plain"]).median().item() for name in ("hooked", "scored")
    }
    return medians | ratios


def evaluate(
    scores_id: torch.Tensor, scores_ood: torch.Tensor, test: tuple[ModelOutputs, torch.Tensor]
) -> dict:
    outputs, targets = test
    wrong = (outputs.logits.argmax(1) != targets).float()
    loss = F.cross_entropy(outputs.logits, targets, reduction="none")
    scores = torch.cat([scores_id, scores_ood])
    is_ood = torch.cat([torch.zeros(len(scores_id)), torch.ones(len(scores_ood))])
    misclassified = torch.cat([wrong, torch.zeros(len(scores_ood))])
    return {
        "OOD AUROC": 100 * ood_auroc(scores, is_ood).item(),
        "AUPR": 100 * ood_aupr(scores, is_ood).item(),
        "FPR95": 100 * fpr_at_tpr(scores, is_ood).item(),
        "Mis AUROC": 100 * ood_auroc(scores_id, wrong).item(),
        "AURC": 100 * aurc(scores_id, wrong).item(),
        "SCOD_AUGRC": 100 * augrc(scores, scod_losses(misclassified, is_ood, 0.5)).item(),
        "Spearman": spearman(scores_id, loss),
    }


def timed(fit, score, sets) -> tuple[dict, float, float]:
    start = time.perf_counter()
    fitted = fit()
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    scores_id, scores_ood = score(fitted, sets["test"][0]), score(fitted, sets["svhn"][0])
    per_1000 = (time.perf_counter() - start) / (len(scores_id) + len(scores_ood)) * 1000
    return evaluate(scores_id, scores_ood, sets["test"]), fit_time, per_1000


def seeded_row(args: argparse.Namespace, sets: dict, name: str, fit, score) -> tuple[dict, object]:
    """A scorer fitted once per seed (``fit(seed)``): the mean and spread of every figure, and the
    last seed's fitted scorer."""
    seeds, fitted = [], []

    def fit_and_keep(seed: int):
        fitted.append(fit(seed))
        return fitted[-1]

    for seed in args.seeds:
        metrics, fit_time, per_1000 = timed(partial(fit_and_keep, seed), score, sets)
        seeds.append({**metrics, "fit s": fit_time, "score ms/1k": 1000 * per_1000})
    stacked = {k: torch.tensor([s[k] for s in seeds]) for k in seeds[0]}
    row = {
        "criterion": name,
        **{k: v.mean().item() for k, v in stacked.items()},
        "spread": {k: v.std().item() for k, v in stacked.items()},
    }
    return row, fitted[-1]


def deup_row(args: argparse.Namespace, sets: dict, name: str, configure) -> tuple[dict, DEUP]:
    """DEUP fitted on validation (training split as reference) once per seed."""

    def fit(seed: int) -> DEUP:
        deup = configure(DEUP(seed=seed, progress=False, **json.loads(args.deup)))
        return deup.fit_outputs(*sets["val"], *sets["train"])

    return seeded_row(args, sets, name, fit, lambda d, o: d.score_outputs(o))


def reference_row(args: argparse.Namespace, sets: dict) -> dict:
    """torch-uncertainty's DEUP configuration, once per seed. Its folds follow the calibration
    loader's order, unshuffled; that loader serves a random split, while the cached validation rows
    are sorted by class (each fold would hold out two whole classes): each seed draws the order."""
    val_logits, val_targets = sets["val"][0].logits, sets["val"][1]

    def fit(seed: int):
        order = torch.randperm(len(val_targets), generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)  # the reference initialises from the global generator
        return fit_reference_deup(val_logits[order], val_targets[order])

    name = f"DEUP (reference config, {len(args.seeds)} seeds)"
    return seeded_row(args, sets, name, fit, lambda ref, o: ref(o.logits))[0]


def run(args: argparse.Namespace) -> list[dict]:
    dm = data_module(args)  # one load of the images, for the outputs and the timed forward passes
    sets, times = collect_all(args, dm)
    n_forward = sum(len(sets[k][1]) for k in ("train", "val"))
    n_test = sum(len(sets[k][1]) for k in ("test", "svhn"))
    print(
        f"outputs collected (when the cache was written): train+val in {times['train'] + times['val']:.1f} s "
        f"({n_forward} images), {(times['test'] + times['svhn']) / n_test * 1000:.3f} s per 1,000 test images"
    )
    test_acc = (sets["test"][0].logits.argmax(1) == sets["test"][1]).float().mean().item()
    print(f"test accuracy {100 * test_acc:.2f}%")
    if args.published:
        sets = published_protocol(sets)
        n_cal = len(sets["val"][1])
        print(f"published protocol: DEUP calibrates on {n_cal} test images, evaluation on the rest")
    # the pass DEUP's fit needs: the reference and the calibration split
    n_forward = sum(len(sets[k][1]) for k in ("train", "val"))
    n_test = sum(len(sets[k][1]) for k in ("test", "svhn"))
    ensemble = sets["val"][0].members is not None
    rows = []
    for name in BASELINES + (["mutual_information"] if ensemble else ["vim"]):
        criterion = get_criterion(name)
        metrics, fit_time, per_1000 = timed(
            lambda c=criterion: c.fit(*sets["train"]) if c.needs_fit else c, lambda c, o: c(o), sets
        )
        rows.append(
            {"criterion": criterion.name, **metrics, "fit s": fit_time, "score ms/1k": 1000 * per_1000}
        )
    rows.append(reference_row(args, sets))
    if ensemble:

        def without_disagreement(deup: DEUP) -> DEUP:
            features = deup.default_features(len(sets["train"][1]), ensemble=True)
            deup.features = [f for f in features if not isinstance(f, EnsembleDisagreement)]
            return deup

        rows.append(deup_row(args, sets, "DEUP (no disagreement)", without_disagreement)[0])
    row, deup = deup_row(args, sets, f"DEUP (ours, {len(args.seeds)} seeds)", lambda deup: deup)
    rows.append(row)
    model = load_model(args.checkpoint)
    loader = dm.test_dataloader()[0]
    cost = forward_costs(model, deup, loader)
    # the fit again, right after the forward timings: this machine's speed moves within minutes
    start = time.perf_counter()
    deup.fit_outputs(*sets["val"], *sets["train"])
    cost["fit s"] = time.perf_counter() - start
    print(
        f"DEUP scoring adds {100 * (cost['scored ratio'] - 1):.1f}% to the base model's forward pass "
        f"({100 * (cost['hooked ratio'] - 1):.1f}% for the hooks recording its inputs): "
        f"{1000 * cost['plain']:.0f} ms per 1,000 images plain, {1000 * cost['scored']:.0f} ms with both "
        "(each batch through the three in rotating order, medians over batches)"
    )
    # the pass DEUP needs runs with the hooks; the target's unit is the model's plain forward over it
    cost["fit ratio"] = cost["hooked ratio"] + cost["fit s"] / (cost["plain"] * n_forward / 1000)
    print(f"DEUP fit incl. training pass: {cost['fit ratio']:.2f}x one plain forward pass over train+val")
    row["cost"] = cost
    return rows


def print_table(rows: list[dict]) -> None:
    columns = [k for k in rows[0] if k != "criterion"]
    print(f"{'criterion':<26}" + "".join(f"{c:>12}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            spread = row.get("spread", {}).get(c)
            cells.append(f"{row[c]:>7.2f}" + (f"±{spread:<4.2f}" if spread is not None else "     "))
        print(f"{row['criterion']:<26}" + "".join(f"{cell:>12}" for cell in cells))


def plot(rows: list[dict], path: str, title: str, id_set: str = "CIFAR-10 test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    # the target region: OOD AUROC >= the best other criterion's - 1, mis. AUROC >= MSP's - 1
    others = [r for r in rows if not r["criterion"].startswith("DEUP (") or "reference" in r["criterion"]]
    ood_bar = max(r["OOD AUROC"] for r in others) - 1
    mis_bar = next(r["Mis AUROC"] for r in rows if r["criterion"] == "MSP") - 1
    ax.fill_between([mis_bar, 100], ood_bar, 100, color="C2", alpha=0.15, label="target region")
    for i, row in enumerate(rows):
        ours = row["criterion"].startswith("DEUP (ours")
        point = (row["Mis AUROC"], row["OOD AUROC"])
        ax.scatter(*point, s=80 if ours else 40, c="C3" if ours else "C0")
        # a label per line where points crowd (MSP and entropy, max-logit and energy)
        near = [abs(r["Mis AUROC"] - point[0]) < 3 and abs(r["OOD AUROC"] - point[1]) < 3 for r in rows[:i]]
        crowd = sum(near)
        offset = (4, 4 - 10 * crowd)
        ax.annotate(row["criterion"], point, fontsize=8, xytext=offset, textcoords="offset points")
    ax.set_xlabel(f"misclassification AUROC, {id_set} (%)")
    ax.set_ylabel(f"OOD AUROC, {id_set} vs SVHN (%)")
    ax.set_title(f"{title}: every criterion on the same outputs")
    ax.legend(loc="best", fontsize=8)  # where it covers the fewest points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument(
        "--checkpoint", nargs="+", default=["checkpoints/resnet20_cifar10.pt"], help="several: an ensemble"
    )
    parser.add_argument("--cache", default=None, help="outputs cache ('' to disable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--deup", default="{}", help="JSON of extra DEUP arguments")
    parser.add_argument(
        "--normalization", choices=sorted(NORMALIZATION), default="cifar10", help="the checkpoint's inputs"
    )
    parser.add_argument(
        "--published", action="store_true", help="a model trained on all training images: calibrate on test"
    )
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    suffix = ("_ensemble" if len(args.checkpoint) > 1 else "") + ("_published" if args.published else "")
    defaults = {
        "cache": f"results/cifar10_svhn{suffix}_outputs.pt",
        "plot": f"benchmarks/ood_cifar10_svhn{suffix}.png",
        "json": f"results/ood_cifar10_svhn{suffix}.json",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rows = run(args)
    print_table(rows)
    if args.plot:
        plot(
            rows,
            args.plot,
            ("ResNet-20" if len(args.checkpoint) == 1 else f"{len(args.checkpoint)} ResNet-20s")
            + (", published" if args.published else ""),
            "CIFAR-10 test, evaluation half" if args.published else "CIFAR-10 test",
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        # the record names the DEUP settings it was run with
        ours = json.loads(args.deup)
        rows = [row | {"deup": ours} if row["criterion"].startswith("DEUP (ours") else row for row in rows]
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
