"""Choose DEUP's settings without the evaluation data: validation halves and held-out classes.

    python benchmarks/select_deup.py '{}' '{"held_out_classes": 0}' ... [--draws 3]

Reads the outputs cached by ``ood_cifar10_svhn.py`` but only its train and validation splits (with
``--published``, for a model trained on all training images, the half of the test split the
benchmark calibrates on, in place of the validation split: never the half it evaluates on). Each
draw fits every detector and DEUP configuration twice, once per task:

- *near*: two classes (drawn with the draw's seed) play the OOD set. They are removed from the
  training outputs; the validation split's remaining classes are halved (stratified), DEUP is
  fitted on half A and scored on half B (ID) and on the validation images of the two removed
  classes (proxy OOD): held-out-class AUROC and SCOD_AUGRC ("near").
- *full*: the deployed setting, nothing removed. DEUP is fitted on half A of the whole validation
  split and scored on half B: misclassification AUROC. For far OOD, synthetic inputs made from
  half B's images alone (:func:`corrupt`: uniform noise; pixels or patches shuffled;
  an eighth of the resolution; a zoomed-in crop; a mosaic of four) are scored too, and for
  covariate shift seven *shifted* kinds of the same images (blurred, low contrast, channels
  swapped, inverted, grey, dark): SCOD_AUGRC with all far kinds as the OOD set ("far"), with all
  shifted kinds ("shifted"), and the AUROC on each kind.

Misclassification AUROC is read on the full task because on the near one it is biased toward the
class-conditional features: a sample predicted as a removed class has no training rows of its
class, which marks it as an error for the trust score and the densities but never happens in use.

Prints the averages over ``--draws`` draws for MSP, KNN, GDA, ViM and each DEUP configuration given
as JSON (each draw also reseeds the halves and DEUP). With several ``--checkpoint`` files, the same
for their deep ensemble (mutual information replaces ViM), from the outputs ``ood_cifar10_svhn.py``
cached for it. Then the selection rule's margins and choice among the configurations
(:func:`print_choice`). ``--save FILE`` writes the means; ``--combine FILE ...`` then prints the
choice of one default for several proxies, such as a single model's and an ensemble's
(:func:`print_shared_choice`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from ood_cifar10_svhn import (
    CACHE_VERSION,
    cached_sets,
    checkpoints_sha256,
    load_model,
    published_halves,
    published_protocol,
)
from torch_deup.datamodules.splits import stratified_split
from torch_deup.datamodules.tensor_data import (
    ImageTensors,
    TensorImageDataset,
    batch_loader,
    load_image_folder,
)
from torch_deup.metrics import augrc, ood_auroc, scod_losses
from torch_deup.ood_criteria import get_criterion
from torch_deup.outputs import ModelOutputs, collect_outputs
from torch_deup.post_processing import DEUP

SYNTHETIC = ("noise", "pixels", "patches", "lowres", "zoom", "mosaic")
SHIFTED = ("blur1", "blur1.5", "contrast", "channels", "invert", "gray", "dark")
# where each group of kinds sits in the per-kind AUROCs (``proxy_metrics`` lists far, then shifted)
KIND_GROUPS = {"far": slice(0, len(SYNTHETIC)), "shifted": slice(len(SYNTHETIC), None)}


def proxy_tasks(sets: dict, draw: int) -> tuple[Tensor, dict, dict]:
    """The held-out pair, then each task's fit rows, training outputs and ID evaluation outputs
    (and their validation rows, ``"id_rows"``); the near task also holds the held-out classes'
    validation outputs under ``"ood"``."""
    held = torch.randperm(10, generator=torch.Generator().manual_seed(draw))[:2]
    (train_out, train_y), (val_out, val_y) = sets["train"], sets["val"]

    def task(val_rows: Tensor, train_rows: Tensor) -> dict:
        a, b = stratified_split(val_y[val_rows], 0.5, seed=draw)
        return {
            "fit": (val_out[val_rows[a]], val_y[val_rows[a]]),
            "train": (train_out[train_rows], train_y[train_rows]),
            "id": (val_out[val_rows[b]], val_y[val_rows[b]]),
            "id_rows": val_rows[b],
        }

    near = task(torch.nonzero(~torch.isin(val_y, held)).flatten(), ~torch.isin(train_y, held))
    near["ood"] = val_out[torch.isin(val_y, held)]
    full = task(torch.arange(len(val_y)), torch.ones(len(train_y), dtype=torch.bool))
    return held, near, full


def corrupt(images: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Far-OOD (:data:`SYNTHETIC`) or shifted (:data:`SHIFTED`) images made from ID ``images``
    (uint8, N x C x H x W) alone.

    ``noise``: uniform pixels. ``pixels``: each image's pixel positions shuffled. ``patches``: each
    image cut into a 4 x 4 grid of patches, shuffled (local image statistics kept, objects broken).
    ``lowres``: downsampled 8x and upsampled back (colours and layout kept, no texture or edges).
    ``zoom``: a random 8 x 8 crop of each image, upsampled 4x (a texture with the image's colours,
    no object). ``mosaic``: a 2 x 2 grid of four images at half resolution (natural statistics,
    objects too small). The last two keep natural low-level statistics, as real OOD images do:
    the first four are easy for any detector of unusual pixel statistics.

    The shifted kinds keep each image's objects and change its rendering, as a new camera or
    domain does: ``blur1`` and ``blur1.5``, Gaussian blur of standard deviation 1 and 1.5 pixels;
    ``contrast``, halved around mid-grey; ``channels``, RGB read as BRG; ``invert``, ``255 - x``;
    ``gray``, the channels' mean; ``dark``, halved. Where they meet the model's classes, they sit
    between the held-out classes and the far kinds.
    """
    n, c, h, w = images.shape
    if kind == "noise":
        return torch.randint(0, 256, images.shape, generator=generator, dtype=torch.uint8)
    if kind == "pixels":
        flat = images.flatten(2)
        perm = torch.argsort(torch.rand(n, h * w, generator=generator), dim=1)
        return flat.gather(2, perm[:, None].expand(-1, c, -1)).view_as(images)
    if kind == "patches":
        grid = images.unfold(2, h // 4, h // 4).unfold(3, w // 4, w // 4)  # n c 4 4 ph pw
        tiles = grid.reshape(n, c, 16, h // 4, w // 4)
        perm = torch.argsort(torch.rand(n, 16, generator=generator), dim=1)
        tiles = tiles.gather(2, perm[:, None, :, None, None].expand_as(tiles))
        return tiles.view(n, c, 4, 4, h // 4, w // 4).permute(0, 1, 2, 4, 3, 5).reshape(images.shape)
    if kind == "lowres":
        small = F.avg_pool2d(images.float(), 8)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).round().to(torch.uint8)
    if kind == "zoom":
        corners = torch.randint(0, h - h // 4 + 1, (n, 2), generator=generator).tolist()  # top, left
        crop = torch.stack(
            [
                im[:, top : top + h // 4, left : left + w // 4]
                for im, (top, left) in zip(images, corners, strict=True)
            ]
        ).float()
        return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).round().to(torch.uint8)
    shifted = {
        "blur1": lambda: gaussian_blur(images, [7, 7], [1.0, 1.0]),
        "blur1.5": lambda: gaussian_blur(images, [7, 7], [1.5, 1.5]),
        "contrast": lambda: ((images.float() - 128) * 0.5 + 128).round().to(torch.uint8),
        "channels": lambda: images[:, [2, 0, 1]],
        "invert": lambda: 255 - images,
        "gray": lambda: images.float().mean(1, keepdim=True).expand_as(images).round().to(torch.uint8),
        "dark": lambda: (images.float() * 0.5).round().to(torch.uint8),
    }
    if kind in shifted:
        return shifted[kind]()
    if kind == "mosaic":
        small = F.avg_pool2d(images.float(), 2).round().to(torch.uint8)
        quarters = [small[torch.randperm(n, generator=generator)] for _ in range(4)]
        return torch.cat([torch.cat(quarters[:2], 3), torch.cat(quarters[2:], 3)], 2)
    raise ValueError(f"Unknown corruption {kind!r}; expected one of {SYNTHETIC + SHIFTED}.")


def validation_images(data: str, setup: dict, published: bool) -> ImageTensors:
    """The images of the proxy's validation rows, in the order of the cached outputs: the
    validation split of the training images, or for ``published`` (a model trained on all of them)
    the test half the benchmark calibrates on (``ood_cifar10_svhn.published_protocol``)."""
    if published:
        test = load_image_folder(f"{data}/test", progress=False)
        return test.subset(published_halves(test.targets)[1])
    train = load_image_folder(f"{data}/train", progress=False)
    return train.subset(stratified_split(train.targets, setup["val_split"], seed=setup["split_seed"])[1])


def synthetic_outputs(
    data: str,
    checkpoints: list[str],
    cached_val: ModelOutputs,
    halves: list[Tensor],
    setup: dict,
    published: bool = False,
) -> list[dict[str, ModelOutputs]]:
    """For each draw, the model's outputs on each :func:`corrupt` kind, far and shifted, of the
    validation rows ``halves[draw]`` (the draw's ID half; in the order of the cached validation
    outputs ``cached_val``, checked on a batch): a draw never scores corruptions of the rows DEUP
    is fitted on, and its mosaics mix images of its ID half only. ``setup`` is the cache's record of
    the input statistics and the validation split (``mean``, ``std``, ``val_split``, ``split_seed``);
    ``published``: see :func:`validation_images`."""
    source = validation_images(data, setup, published)
    val = source.images
    generator = torch.Generator().manual_seed(0)
    model = load_model(checkpoints)

    def outputs_of(images: Tensor) -> ModelOutputs:
        tensors = ImageTensors(images, torch.zeros(len(images), dtype=torch.long), source.classes)
        dataset = TensorImageDataset(tensors, tuple(setup["mean"]), tuple(setup["std"]))
        return collect_outputs(model, batch_loader(dataset, 500), progress=False)[0]

    # every tenth row: the rows come sorted by class, and the first 500 would check one class only
    check = torch.arange(0, len(val), 10)[:500]
    if not torch.allclose(outputs_of(val[check]).logits, cached_val.logits[check], atol=1e-3):
        rows = (
            "calibration half of the test images"
            if published
            else f"validation split (seed {setup['split_seed']})"
        )
        raise SystemExit(
            f"The {rows} under {data} are not the images of the cached outputs: pass the --data the "
            "cache was written from, and --published exactly when the cache is the published protocol's."
        )
    # the mosaic is the last kind that draws random numbers: the others keep their images
    per_image = {
        kind: outputs_of(corrupt(val, kind, generator)) for kind in SYNTHETIC + SHIFTED if kind != "mosaic"
    }
    draws = []
    for rows in halves:
        mosaic = outputs_of(corrupt(val[rows], "mosaic", torch.Generator().manual_seed(0)))
        draws.append(
            {kind: mosaic if kind == "mosaic" else per_image[kind][rows] for kind in SYNTHETIC + SHIFTED}
        )
    return draws


def load_cache(path: str | None, checkpoints: list[str], published: bool = False) -> dict:
    """The outputs ``ood_cifar10_svhn.py`` cached for ``checkpoints`` (at ``path``, or where it
    writes them, with ``--published`` or not), after checking its version and checkpoints."""
    ensemble = len(checkpoints) > 1
    suffix = ("_ensemble" if ensemble else "") + ("_published" if published else "")
    path = path or f"results/cifar10_svhn{suffix}_outputs.pt"
    saved = torch.load(path, weights_only=True)
    if saved.get("version") != CACHE_VERSION:
        raise SystemExit(f"{path} was written by an older ood_cifar10_svhn.py: run it again to refresh it.")
    if saved.get("checkpoint_sha256") != checkpoints_sha256(checkpoints):
        raise SystemExit(
            f"{path} holds the outputs of other checkpoints than {checkpoints}: run "
            "ood_cifar10_svhn.py with these checkpoints, or pass the --outputs it wrote for them."
        )
    return saved


def load_proxy(args: argparse.Namespace, draws: list[int]) -> tuple[dict, list[tuple], list[dict]]:
    """The proxy's splits, ``"train"`` and ``"val"`` only (the published protocol's for
    ``args.published``: the evaluation half of the test split and SVHN are left out), each draw's
    :func:`proxy_tasks`, and per draw the model's outputs on the corrupted images of its ID half
    (:func:`synthetic_outputs`)."""
    saved = load_cache(args.outputs, args.checkpoint, args.published)
    sets = cached_sets(saved)
    if args.published:
        sets = published_protocol(sets)
    sets = {split: sets[split] for split in ("train", "val")}
    tasks = [proxy_tasks(sets, draw) for draw in draws]
    halves = [full["id_rows"] for _, _, full in tasks]
    corrupted = synthetic_outputs(
        args.data, args.checkpoint, sets["val"][0], halves, saved["setup"], args.published
    )
    return sets, tasks, corrupted


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and data options ``select_deup.py`` and ``scan_layer_distance.py`` share."""
    parser.add_argument("--outputs", default=None, help="the outputs cached by ood_cifar10_svhn.py")
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument(
        "--checkpoint", nargs="+", default=["checkpoints/resnet20_cifar10.pt"], help="several: an ensemble"
    )
    parser.add_argument(
        "--published",
        action="store_true",
        help="a model trained on all training images: its proxy is the test half it calibrates on",
    )


def baseline_metrics(name: str, near: dict, full: dict, far: dict[str, ModelOutputs]) -> Tensor:
    """:func:`proxy_metrics` of the criterion ``name``, fitted on each task's training outputs."""
    fitted = []
    for task in (near, full):
        criterion = get_criterion(name)
        if criterion.needs_fit:
            criterion.fit(*task["train"])
        fitted.append(criterion)
    return proxy_metrics(*fitted, near, full, far)


def scod(s_id: Tensor, wrong: Tensor, s_ood: Tensor) -> tuple[float, float]:
    """OOD AUROC and SCOD_AUGRC of ID scores (with their errors) against OOD scores."""
    is_ood = torch.cat([torch.zeros(len(s_id)), torch.ones(len(s_ood))])
    s = torch.cat([s_id, s_ood])
    losses = scod_losses(torch.cat([wrong, torch.zeros(len(s_ood))]), is_ood, 0.5)
    return ood_auroc(s, is_ood), augrc(s, losses)


def proxy_metrics(near_score, full_score, near: dict, full: dict, far: dict[str, ModelOutputs]) -> Tensor:
    """Held-out-class AUROC, misclassification AUROC, SCOD_AUGRC with the held-out classes, with
    all far kinds and with all shifted kinds as the OOD set, then one AUROC per kind (far, then
    shifted), in %."""

    def id_scores(score, task: dict) -> tuple[Tensor, Tensor]:
        outputs, targets = task["id"]
        return score(outputs), (outputs.logits.argmax(1) != targets).float()

    near_auroc, near_scod = scod(*id_scores(near_score, near), near_score(near["ood"]))
    s_id, wrong = id_scores(full_score, full)
    s_kind = {kind: full_score(outputs) for kind, outputs in far.items()}
    far_scod, shift_scod = (
        scod(s_id, wrong, torch.cat([s_kind[kind] for kind in kinds]))[1] for kinds in (SYNTHETIC, SHIFTED)
    )
    aurocs = [scod(s_id, wrong, s_kind[kind])[0] for kind in SYNTHETIC + SHIFTED]
    return 100 * torch.tensor([near_auroc, ood_auroc(s_id, wrong), near_scod, far_scod, shift_scod, *aurocs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("configs", nargs="*", help="DEUP keyword arguments as JSON, one per configuration")
    parser.add_argument("--draws", type=int, default=3, help="held-out pairs to average over")
    add_proxy_arguments(parser)
    parser.add_argument("--save", default=None, help="write the means to this JSON file, for --combine")
    parser.add_argument(
        "--combine", nargs="+", default=None, help="JSON files of --save: print the rule's shared choice"
    )
    args = parser.parse_args()
    if args.combine:
        print_shared_choice(args.combine)
        return
    ensemble = len(args.checkpoint) > 1
    torch.set_num_threads(1)
    # the synthetic images go through the model as its cached outputs did
    _, tasks, corrupted = load_proxy(args, list(range(args.draws)))
    # ViM needs one linear head; an ensemble has mutual information instead
    baselines = ["msp", "knn", "gda", "layer_stats", "layer_range", "layer_class_range"]
    baselines.append("mutual_information" if ensemble else "vim")
    names = baselines + [f"DEUP {c}" for c in args.configs]
    results = {name: [] for name in names}
    fit_times = {name: 0.0 for name in names}
    for draw in range(args.draws):
        held, near, full = tasks[draw]
        far = corrupted[draw]
        print(f"draw {draw}: held-out classes {held.tolist()}", flush=True)
        for name in baselines:
            results[name].append(baseline_metrics(name, near, full, far))
        for config, name in zip(args.configs, names[len(baselines) :], strict=True):
            start = time.perf_counter()
            kwargs = {"seed": draw, **json.loads(config)}
            fitted = [
                DEUP(progress=False, **kwargs).fit_outputs(*task["fit"], *task["train"]).score_outputs
                for task in (near, full)
            ]
            fit_times[name] += (time.perf_counter() - start) / 2
            results[name].append(proxy_metrics(*fitted, near, full, far))
    print(
        f"\nmean over {args.draws} draws (std across draws); far = mean AUROC of {', '.join(SYNTHETIC)}; "
        f"shifted = mean AUROC of {', '.join(SHIFTED)}; SCOD_AUGRC sum = near + far + shifted"
    )
    means = {}
    for name in names:
        m = torch.stack(results[name])
        mean, std = m.mean(0), m.std(0) if len(m) > 1 else torch.zeros(m.shape[1])
        means[name] = {"held": mean[0], "mis": mean[1], "scod": mean[2:5].sum(), "kinds": mean[5:]}
        far_kinds, shift_kinds = (mean[5:][rows] for rows in KIND_GROUPS.values())
        print(
            f"{name:<40} held-out AUROC {mean[0]:6.2f}±{std[0]:4.2f}  mis AUROC {mean[1]:6.2f}±{std[1]:4.2f}"
            f"  SCOD_AUGRC near {mean[2]:6.3f} far {mean[3]:6.3f} shifted {mean[4]:6.3f}"
            f" sum {mean[2:5].sum():6.3f}"
            f"  far {far_kinds.mean():6.2f} ({' '.join(f'{v:5.1f}' for v in far_kinds)})"
            f"  shifted {shift_kinds.mean():6.2f} ({' '.join(f'{v:5.1f}' for v in shift_kinds)})"
            f"  fit {fit_times[name] / args.draws:.1f}s",
            flush=True,
        )
    print_choice(means, baselines)
    if args.save:
        record = {name: {key: value.tolist() for key, value in m.items()} for name, m in means.items()}
        Path(args.save).write_text(json.dumps({"baselines": baselines, "means": record}, indent=1))


def margins(means: dict[str, dict[str, Tensor]], baselines: list[str]) -> tuple[dict, list[str]]:
    """The selection rule's margins of each DEUP configuration and the eligible configurations.

    Margins to the issue's two AUROC targets, read on the proxy: misclassification AUROC at least
    MSP's minus 1, and OOD AUROC at least the best baseline's minus 1 on each OOD set, as the test's
    bar is set on its one OOD set. The margin of the far and of the shifted group is the mean of
    its kinds' margins; the held-out classes are one set. Eligible: a SCOD_AUGRC sum within 0.015
    (the noise of three draws) of the lowest."""
    configs = [name for name in means if name not in baselines]
    kind_bars = torch.stack([means[b]["kinds"] for b in baselines]).amax(0) - 1
    result = {}
    for name in configs:
        result[name] = {
            "mis": float(means[name]["mis"] - (means["msp"]["mis"] - 1)),
            "held": float(means[name]["held"] - (max(means[b]["held"] for b in baselines) - 1)),
        } | {g: float((means[name]["kinds"] - kind_bars)[rows].mean()) for g, rows in KIND_GROUPS.items()}
    lowest = min((means[name]["scod"] for name in configs), default=0.0)
    return result, [name for name in configs if means[name]["scod"] <= lowest + 0.015]


def print_choice(means: dict[str, dict[str, Tensor]], baselines: list[str]) -> None:
    """The selection rule on one proxy: among the eligible configurations (:func:`margins`), the one
    with the widest smallest margin."""
    result, eligible = margins(means, baselines)
    if not result:
        return
    print("\nmargins to the targets (per OOD kind: the best baseline's AUROC minus 1):")
    for name, margin in result.items():
        shown = "  ".join(f"{key} {value:5.2f}" for key, value in margin.items())
        smallest = min(margin.values())
        print(f"{name:<40} {shown}  smallest {smallest:5.2f}  SCOD within 0.015: {name in eligible}")
    print(f"chosen: {max(eligible, key=lambda name: min(result[name].values()))}")


def print_shared_choice(paths: list[str]) -> None:
    """The rule for one default over several proxies (a single model's and an ensemble's, each
    saved by ``--save``): among the configurations eligible on every proxy, the one whose smallest
    margin over all of them is widest."""
    results = []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        means = {name: {k: torch.tensor(v) for k, v in m.items()} for name, m in saved["means"].items()}
        results.append(margins(means, saved["baselines"]))
    shared = [name for name in results[0][0] if all(name in eligible for _, eligible in results)]
    if not shared:
        raise SystemExit(f"No configuration is eligible on every proxy of {paths}.")
    smallest = {name: min(min(result[name].values()) for result, _ in results) for name in shared}
    for name, value in smallest.items():
        print(f"{name:<40} smallest margin over the proxies {value:5.2f}")
    print(f"chosen for all: {max(shared, key=smallest.get)}")


if __name__ == "__main__":
    main()
