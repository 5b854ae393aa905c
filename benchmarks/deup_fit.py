"""Fit time and peak memory of ``DEUP.fit`` on 5,000 and 50,000 calibration samples, 512-d embeddings.

    python benchmarks/deup_fit.py [--threads 2]

Synthetic data: ten Gaussian classes in 512 dimensions, a linear classifier on them (so the
embedding DEUP captures is the input itself), and a training split of 50,000 samples for the
density/distance features and the held-out-class protocol. Each case runs in a fresh subprocess;
peak memory is the growth of the process's maximum resident set during ``fit``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def case(n_cal: int, with_train: bool, threads: int) -> dict:
    from torch_deup.post_processing import DEUP

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 512, generator=g)

    def data(n: int) -> TensorDataset:
        y = torch.arange(n) % 10
        return TensorDataset(means[y] + 2 * torch.randn(n, 512, generator=g), y)

    torch.manual_seed(0)
    model = nn.Linear(512, 10)
    cal = DataLoader(data(n_cal), batch_size=1000)
    train = DataLoader(data(50_000), batch_size=1000) if with_train else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    DEUP(model=model, progress=False).fit(cal, train)
    seconds = time.perf_counter() - start
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"n_cal": n_cal, "train": 50_000 if with_train else 0, "fit_s": seconds, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        n_cal, with_train = json.loads(args.case)
        print(json.dumps(case(n_cal, with_train, args.threads)))
        return
    print(f"{'calibration':>12} {'train':>7} {'fit s':>8} {'peak MiB':>9}")
    for n_cal in (5_000, 50_000):
        for with_train in (False, True):
            command = [sys.executable, __file__, "--threads", str(args.threads)]
            command += ["--case", json.dumps([n_cal, with_train])]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['n_cal']:>12,} {r['train']:>7,} {r['fit_s']:>8.1f} {r['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
