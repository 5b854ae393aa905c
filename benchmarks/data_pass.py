"""Time one pass of ``CIFAR10DataModule.train_dataloader()`` over the 50,000 training images.

    python benchmarks/data_pass.py --root ../shared/data --batch-size 128 [--threads 1]

The first run decodes the JPEGs once into the on-disk cache (``TORCH_DEUP_CACHE``, default
``~/.cache/torch_deup``); the figure printed is the pass itself: shuffling, random crop + flip and
normalisation of every batch, with the loading time reported apart.
"""

from __future__ import annotations

import argparse
import time

import torch

from torch_deup.datamodules import CIFAR10DataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default="../shared/data", help="folder holding cifar10/{train,test}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads; 1 avoids oversubscription when busy",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    datamodule = CIFAR10DataModule(args.root, batch_size=args.batch_size, num_workers=args.num_workers)
    datamodule.setup("fit")
    load_s = time.perf_counter() - start

    start = time.perf_counter()
    n_images = checksum = 0
    for x, _ in datamodule.train_dataloader():
        n_images += len(x)
        checksum += x[:, :, 0, 0].sum().item()  # touch the batch so nothing is left lazy
    pass_s = time.perf_counter() - start
    print(
        f"setup (load from cache) {load_s:.1f}s; one training pass over {n_images} images "
        f"(batch {args.batch_size}, augment + normalise, {torch.get_num_threads()} threads): "
        f"{pass_s:.2f}s = {n_images / pass_s:,.0f} images/s"
    )


if __name__ == "__main__":
    main()
