"""Train the project's ResNet-20 on the JPEG CIFAR-10 of ../shared/data, 5,000 images held out.

    python benchmarks/train_cifar10.py --data ../shared/data/cifar10 --epochs 30 --seed 0

The split is ``stratified_split(train targets, 0.1, seed=split_seed)``, the same one that
``CIFAR10DataModule(val_split=0.1, split_seed=...)`` builds, so DEUP and the fitted detectors are
calibrated on images the network never saw. Writes the state dict and a JSON record (command, seed,
split, accuracy, time) next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torch_deup.datamodules import CIFAR10_MEAN, CIFAR10_STD
from torch_deup.datamodules.splits import stratified_split
from torch_deup.datamodules.tensor_data import TensorImageDataset, batch_loader, load_image_folder
from torch_deup.models.classification.cifar_resnet import CifarResNet


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on AVX512-BF16 CPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="checkpoints/resnet20_cifar10.pt")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    train_all = load_image_folder(Path(args.data) / "train")
    test = load_image_folder(Path(args.data) / "test")
    train_idx, val_idx = stratified_split(train_all.targets, 0.1, seed=args.split_seed)
    train_set = TensorImageDataset(
        train_all.subset(train_idx), CIFAR10_MEAN, CIFAR10_STD, augment=True, seed=args.seed
    )
    train_loader = batch_loader(train_set, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    val_loader = batch_loader(TensorImageDataset(train_all.subset(val_idx), CIFAR10_MEAN, CIFAR10_STD), 1000)
    test_loader = batch_loader(TensorImageDataset(test, CIFAR10_MEAN, CIFAR10_STD), 1000)

    model = CifarResNet(depth=20, num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(train_loader), pct_start=0.15
    )
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_acc = accuracy(model, val_loader)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} val_acc {val_acc:.4f} "
            f"elapsed {time.time() - start:.0f}s",
            flush=True,
        )
    train_time = time.time() - start
    test_acc = accuracy(model, test_loader)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    record = {
        "command": "python " + " ".join(sys.argv),
        "arch": "resnet20 (CifarResNet depth=20, option-A shortcuts)",
        "seed": args.seed,
        "split": f"stratified_split(cifar10/train targets, 0.1, seed={args.split_seed}): "
        "45,000 train / 5,000 val",
        "normalisation": {"mean": CIFAR10_MEAN, "std": CIFAR10_STD},
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "train_time_s": round(train_time),
        "torch": torch.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
