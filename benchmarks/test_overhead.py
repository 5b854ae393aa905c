"""Test-time overhead of DEUP in the evaluation routine: ``trainer.test`` with an already-fitted
DEUP (criterion "deup") over ``trainer.test`` with MSP, no post-processing and no layer-statistics
hooks (``layers=None``). Target: <= 1.10.

    python benchmarks/test_overhead.py [--threads 1] [--accelerator cpu|gpu] [--runs 3]

Synthetic data, in one run: a small conv net (random weights: timing does not depend on them),
4,000 ID + 2,000 OOD test images of 3x32x32, batch 256; DEUP is fitted once beforehand on a
1,000-image calibration split and a 4,000-image training split, and that one-time cost is
printed apart. Both ``test`` calls run the model once per batch; the ratio is the cost of the
hooks recording DEUP's inputs and of its features and error predictor on top. The conv net has
three stages, so ``layers="auto"`` records the first two. Medians of ``--runs`` runs each,
interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from torch_deup import TUTrainer
from torch_deup.datamodules.base import TensorDataModule
from torch_deup.datamodules.tensor_data import ImageTensors
from torch_deup.post_processing import DEUP
from torch_deup.routines import ClassificationRoutine

TARGET_RATIO = 1.10


class SyntheticImages(TensorDataModule):
    """10 classes of 3x32x32 uint8 images (a class-dependent colour plus noise) and a noise OOD set."""

    def __init__(self, n_train: int = 5_000, n_test: int = 4_000, n_ood: int = 2_000, **kwargs) -> None:
        super().__init__(batch_size=256, val_split=0.2, augment=False, **kwargs)
        self.sizes = (n_train, n_test, n_ood)

    @property
    def ood_names(self) -> list[str]:
        return ["noise"]

    def _load(self) -> tuple[ImageTensors, ImageTensors, dict[str, ImageTensors]]:
        generator = torch.Generator().manual_seed(0)
        palette = torch.randint(0, 256, (10, 3, 1, 1), generator=generator).float()

        def images(n: int) -> ImageTensors:
            y = torch.arange(n) % 10
            x = palette[y] + 40 * torch.randn(n, 3, 32, 32, generator=generator)
            return ImageTensors(x.clamp(0, 255).to(torch.uint8), y, [str(c) for c in range(10)])

        n_train, n_test, n_ood = self.sizes
        ood = torch.randint(0, 256, (n_ood, 3, 32, 32), generator=generator, dtype=torch.uint8)
        return images(n_train), images(n_test), {"noise": ImageTensors(ood, torch.zeros(n_ood).long(), [])}


def small_convnet(num_classes: int = 10) -> nn.Module:
    """Three stages: ``layers="auto"`` records the first two, so DEUP's layer evidence is timed too."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


def timed_test(routine: ClassificationRoutine, datamodule: TensorDataModule, accelerator: str) -> float:
    trainer = TUTrainer(
        accelerator=accelerator, devices=1, enable_progress_bar=False, enable_model_summary=False
    )
    start = time.perf_counter()
    trainer.test(routine, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start


def measure(runs: int = 3, accelerator: str = "cpu") -> dict[str, float]:
    """Seconds of the one-time DEUP fit, medians of both ``test`` calls, and their ratio."""
    datamodule = SyntheticImages()
    model = small_convnet().eval()
    device = "cuda" if accelerator == "gpu" else "cpu"
    deup = DEUP(model=model.to(device), hidden_dim=64, max_epochs=50, progress=False)
    train_loader = getattr(datamodule, "train_eval_dataloader", datamodule.train_dataloader)()
    start = time.perf_counter()
    deup.fit(datamodule.postprocess_dataloader(), train_loader)
    fit_s = time.perf_counter() - start

    with_deup = ClassificationRoutine(model, 10, eval_ood=True, post_processing=deup, ood_criterion="deup")
    # the baseline records no layer statistics: their hooks count as DEUP's cost
    baseline = ClassificationRoutine(model, 10, eval_ood=True, layers=None)
    fitted_g = deup.g_
    for routine in (baseline, with_deup):  # warm-up: first-call allocations, lazy imports
        timed_test(routine, datamodule, accelerator)
    deup_s, msp_s = [], []
    for _ in range(runs):
        msp_s.append(timed_test(baseline, datamodule, accelerator))
        deup_s.append(timed_test(with_deup, datamodule, accelerator))
    if deup.g_ is not fitted_g:
        raise RuntimeError("DEUP was refitted during trainer.test: the ratio would include fitting.")
    deup_median, msp_median = statistics.median(deup_s), statistics.median(msp_s)
    return {"fit_s": fit_s, "deup_s": deup_median, "msp_s": msp_median, "ratio": deup_median / msp_median}


def report(result: dict[str, float], threads: int) -> None:
    print(
        f"one-time DEUP fit: {result['fit_s']:.2f}s | trainer.test with DEUP {result['deup_s']:.2f}s, "
        f"with MSP {result['msp_s']:.2f}s (medians, {threads} threads) | ratio {result['ratio']:.3f} "
        f"(target <= {TARGET_RATIO})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report(measure(args.runs, args.accelerator), torch.get_num_threads())


if __name__ == "__main__":
    main()
