"""Choose DEUP's settings without touching test data: validation halves and held-out classes.

    python benchmarks/select_deup.py '{}' '{"held_out_classes": 0}' ... [--draws 3]

Reads the outputs cached by ``ood_cifar10_svhn.py`` but only its train and validation splits.
Two classes (drawn with the draw's seed) play the OOD set: they are removed from the training
outputs that detectors and DEUP are fitted on. The validation split's remaining classes are halved
(stratified): DEUP is fitted on half A and scored on half B (ID) and on the validation images of
the two removed classes (proxy OOD). Held-out classes are near OOD; for far OOD, synthetic inputs
made from nothing but the validation images (uniform noise, and validation images with their pixel
positions shuffled) are scored too. Prints proxy-OOD AUROC, synthetic-OOD AUROC, misclassification
AUROC on half B and SCOD_AUGRC (with the held-out classes) for MSP, KNN, GDA, ViM and each DEUP
configuration given as JSON, averaged over ``--draws`` draws of the held-out pair (each draw also
reseeds the halves and DEUP).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from torch_deup.datamodules.splits import stratified_split
from torch_deup.datamodules.tensor_data import TensorImageDataset, batch_loader, load_image_folder
from torch_deup.hub import load_checkpoint
from torch_deup.metrics import augrc, ood_auroc, scod_losses
from torch_deup.models.classification.resnet import resnet
from torch_deup.ood_criteria import get_criterion
from torch_deup.outputs import ModelOutputs, collect_outputs
from torch_deup.post_processing import DEUP

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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


def synthetic_outputs(data: str, checkpoint: str, split_seed: int = 0, n: int = 1000) -> ModelOutputs:
    """The model's outputs on ``n`` uniform-noise images and ``n`` pixel-shuffled validation images."""
    train = load_image_folder(f"{data}/train", progress=False)
    _, val_idx = stratified_split(train.targets, 0.1, seed=split_seed)
    gen = torch.Generator().manual_seed(0)
    val = train.images[val_idx[:n]]
    flat = val.flatten(2)
    perm = torch.argsort(torch.rand(len(val), flat.shape[2], generator=gen), dim=1)
    shuffled = flat.gather(2, perm[:, None].expand(-1, flat.shape[1], -1)).view_as(val)
    noise = torch.randint(0, 256, val.shape, generator=gen, dtype=torch.uint8)
    images = torch.cat([noise, shuffled])
    dataset = TensorImageDataset(
        type(train)(images, torch.zeros(len(images), dtype=torch.long), train.classes), CIFAR_MEAN, CIFAR_STD
    )
    model = load_checkpoint(resnet(arch=20, num_classes=10), checkpoint).eval()
    return collect_outputs(model, batch_loader(dataset, 500), progress=False)[0]


def proxy_metrics(score, id_set: tuple, ood_out: ModelOutputs, far_out: ModelOutputs) -> torch.Tensor:
    """Proxy-OOD AUROC, synthetic-OOD AUROC, misclassification AUROC and SCOD_AUGRC, in %."""
    id_out, id_y = id_set
    s_id, s_ood, s_far = score(id_out), score(ood_out), score(far_out)
    wrong = (id_out.logits.argmax(1) != id_y).float()
    is_ood = torch.cat([torch.zeros(len(id_y)), torch.ones(len(ood_out))])
    is_far = torch.cat([torch.zeros(len(id_y)), torch.ones(len(far_out))])
    losses = scod_losses(torch.cat([wrong, torch.zeros(len(ood_out))]), is_ood, 0.5)
    s = torch.cat([s_id, s_ood])
    return 100 * torch.tensor(
        [
            ood_auroc(s, is_ood),
            ood_auroc(torch.cat([s_id, s_far]), is_far),
            ood_auroc(s_id, wrong),
            augrc(s, losses),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("configs", nargs="*", help="DEUP keyword arguments as JSON, one per configuration")
    parser.add_argument("--draws", type=int, default=3, help="held-out pairs to average over")
    parser.add_argument("--outputs", default="results/cifar10_svhn_outputs.pt")
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    saved = torch.load(args.outputs, weights_only=True)
    sets = {k: (ModelOutputs(v["logits"], v["embedding"]), v["targets"]) for k, v in saved["sets"].items()}
    far_out = synthetic_outputs(args.data, args.checkpoint)
    baselines = ["msp", "knn", "gda", "vim"]
    names = baselines + [f"DEUP {c}" for c in args.configs]
    results = {name: [] for name in names}
    fit_times = {name: 0.0 for name in names}
    for draw in range(args.draws):
        held, fit_set, train, id_set, ood_out = proxy_task(sets, draw)
        print(f"draw {draw}: held-out classes {held.tolist()}", flush=True)
        for name in baselines:
            criterion = get_criterion(name)
            if criterion.needs_fit:
                criterion.fit(*train)
            results[name].append(proxy_metrics(criterion, id_set, ood_out, far_out))
        for config, name in zip(args.configs, names[len(baselines) :], strict=True):
            start = time.perf_counter()
            kwargs = {"seed": draw, **json.loads(config)}
            deup = DEUP(progress=False, **kwargs).fit_outputs(*fit_set, *train)
            fit_times[name] += time.perf_counter() - start
            results[name].append(proxy_metrics(deup.score_outputs, id_set, ood_out, far_out))
    print(f"\nmean over {args.draws} draws (std across draws)")
    for name in names:
        m = torch.stack(results[name])
        mean, std = m.mean(0), m.std(0) if len(m) > 1 else torch.zeros(4)
        print(
            f"{name:<48} proxy-OOD AUROC {mean[0]:6.2f}±{std[0]:4.2f}  synthetic {mean[1]:6.2f}"
            f"  mis AUROC {mean[2]:6.2f}±{std[2]:4.2f}  SCOD_AUGRC {mean[3]:6.3f}"
            f"  fit {fit_times[name] / args.draws:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
