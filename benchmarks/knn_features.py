"""Time and peak memory of ``KNNDistance.fit`` + ``__call__`` on synthetic Gaussian embeddings.

Each case runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own; the
reported memory is the growth of that peak over the fit and the scoring, after the bank and the
queries were created (torch allocations are invisible to tracemalloc).

Run from the repository root::

    nice .venv/bin/python benchmarks/knn_features.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

# (bank size, embedding width, queries): ResNet-20 on 90% of CIFAR-10, and a ResNet-18-sized one
CASES = [(45_000, 64, 10_000), (50_000, 512, 10_000)]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(n_bank: int, dim: int, n_query: int, k: int) -> dict[str, float]:
    import torch

    from torch_deup.features.distance import KNNDistance
    from torch_deup.outputs import ModelOutputs

    gen = torch.Generator().manual_seed(0)
    bank = ModelOutputs(torch.zeros(n_bank, 1), torch.randn(n_bank, dim, generator=gen))
    queries = ModelOutputs(torch.zeros(n_query, 1), torch.randn(n_query, dim, generator=gen))
    targets = torch.zeros(n_bank, dtype=torch.long)
    before = peak_mib()
    start = time.perf_counter()
    knn = KNNDistance(k=k).fit(bank, targets)
    fitted = time.perf_counter()
    distances = knn(queries)
    done = time.perf_counter()
    assert distances.shape == (n_query, 1)
    assert torch.isfinite(distances).all()
    return {
        "fit_s": fitted - start,
        "score_s": done - fitted,
        "peak_growth_mib": peak_mib() - before,
        "bank_mib": knn.bank_.numel() * knn.bank_.element_size() / 2**20,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--case", type=int, nargs=3, help=argparse.SUPPRESS)  # N_BANK DIM N_QUERY
    args = parser.parse_args()
    if args.case:  # child process: one case, JSON on stdout
        print(json.dumps(run_case(*args.case, k=args.k)))
        return
    print(f"KNNDistance(k={args.k}), default chunks (1024 queries x 16384 bank rows)")
    header = ("bank", 8), ("dim", 4), ("queries", 8), ("fit s", 7), ("score s", 8), ("peak +MiB", 10)
    print(" ".join(f"{title:>{width}}" for title, width in header), f"{'bank MiB':>9}")
    for n_bank, dim, n_query in CASES:
        case = [str(n_bank), str(dim), str(n_query)]
        command = [sys.executable, __file__, "--k", str(args.k), "--case", *case]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(
            f"{n_bank:>8} {dim:>4} {n_query:>8} {result['fit_s']:>7.2f} {result['score_s']:>8.2f} "
            f"{result['peak_growth_mib']:>10.0f} {result['bank_mib']:>9.0f}   ({result['threads']} threads)"
        )


if __name__ == "__main__":
    main()
