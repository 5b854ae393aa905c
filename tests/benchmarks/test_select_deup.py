"""The selection rule of benchmarks/select_deup.py, which chose DEUP's defaults, on hand-made means."""

import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from ood_cifar10_svhn import published_protocol
from select_deup import SHIFTED, SYNTHETIC, margins, print_choice, print_shared_choice, validation_images
from torch_deup.datamodules.tensor_data import load_image_folder
from torch_deup.outputs import ModelOutputs

BASELINES = ["msp", "knn"]


def means(mis: float, held: float, scod: float, far: float, shifted: float) -> dict[str, torch.Tensor]:
    kinds = torch.tensor([far] * len(SYNTHETIC) + [shifted] * len(SHIFTED))
    return {"mis": torch.tensor(mis), "held": torch.tensor(held), "scod": torch.tensor(scod), "kinds": kinds}


def proxy() -> dict[str, dict[str, torch.Tensor]]:
    table = {
        # KNN ranks errors better than MSP here: the misclassification bar is still MSP's
        "msp": means(91.0, 50.0, 50.0, 70.0, 60.0),
        "knn": means(92.0, 97.0, 45.0, 80.0, 70.0),
        # listed first and lowest in SCOD, but a narrower margin (shifted 0.3) than A's
        "B": means(90.9, 98.0, 44.870, 95.0, 69.3),
        # the choice: misclassification margin 0.5 (against MSP's 91 - 1), shifted 0.6
        "A": means(90.5, 98.0, 44.880, 95.0, 69.6),
        # the widest margins, but 0.016 above the lowest SCOD: not eligible
        "D": means(92.0, 99.0, 44.886, 99.0, 80.0),
    }
    # one kind where MSP is best: that kind's bar is MSP's, not the best mean's
    table["msp"]["kinds"][0] = 96.0
    return table


def test_margins_read_a_bar_per_kind_and_eligibility_by_scod_sum():
    result, eligible = margins(proxy(), BASELINES)
    assert eligible == ["B", "A"]
    far_bar = (96.0 + 80.0 * (len(SYNTHETIC) - 1)) / len(SYNTHETIC) - 1  # per kind, then the mean
    assert abs(result["A"]["far"] - (95.0 - far_bar)) < 1e-5
    assert abs(result["A"]["shifted"] - (69.6 - 69.0)) < 1e-5
    assert abs(result["A"]["mis"] - (90.5 - 90.0)) < 1e-5
    assert abs(result["B"]["held"] - (98.0 - 96.0)) < 1e-5


def test_the_choice_is_the_widest_smallest_margin_among_the_eligible(capsys):
    print_choice(proxy(), BASELINES)
    # A: min(0.5, 2, far, 0.6) = 0.5; B: min(0.9, 2, far, 0.3) = 0.3; D is not eligible
    assert capsys.readouterr().out.strip().endswith("chosen: A")


def test_the_shared_choice_takes_the_widest_smallest_margin_over_every_proxy(tmp_path, capsys):
    single = proxy()
    other = proxy()
    other["A"] = means(89.0, 98.0, 44.880, 95.0, 69.6)  # on this proxy A misses MSP's bar by 1
    paths = []
    for name, table in (("single", single), ("ensemble", other)):
        record = {k: {f: v.tolist() for f, v in m.items()} for k, m in table.items()}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"baselines": BASELINES, "means": record}))
    print_shared_choice([str(p) for p in paths])
    assert capsys.readouterr().out.strip().endswith("chosen for all: B")


def test_the_published_proxy_reads_the_test_half_the_benchmark_calibrates_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_DEUP_CACHE", str(tmp_path / "cache"))  # the decoded images' cache
    # each image carries its position in the folder as a marker pixel
    labels = torch.arange(24) % 3
    images = torch.randint(0, 256, (24, 3, 4, 4), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    images[:, 0, 0, 0] = torch.arange(24, dtype=torch.uint8)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "test" / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(
            tmp_path / "test" / f"class{label}" / f"{i:04d}.png"
        )
    test = load_image_folder(tmp_path / "test", progress=False)
    marked = ModelOutputs(test.images[:, 0, 0, 0].float()[:, None])  # outputs that name their image
    other = ModelOutputs(torch.zeros(6, 1))
    sets = {"train": (other, torch.zeros(6)), "val": (other, torch.zeros(6)), "svhn": (other, torch.zeros(6))}
    calibration = published_protocol(sets | {"test": (marked, test.targets)})["val"][0]
    proxy = validation_images(str(tmp_path), {}, published=True)
    assert torch.equal(proxy.images[:, 0, 0, 0].float(), calibration.logits[:, 0])
    assert len(proxy.images) == 12
