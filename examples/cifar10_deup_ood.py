"""Part 2 of the DEUP tutorial with torch_deup: CIFAR-10 vs SVHN on CPU, with local data and weights.

    python examples/cifar10_deup_ood.py [--data ../shared/data] [--checkpoint checkpoints/resnet20_cifar10.pt]
        [--download]

``--download`` fetches CIFAR-10 and the SVHN test set into ``--data`` through torchvision when
neither the image folders nor the official files are there (needs internet).

The tutorial loads a ResNet-18 from Hugging Face; here the model is the project's ResNet-20, trained
by ``benchmarks/train_cifar10.py`` on the 45,000-image split, so the 5,000 validation images DEUP is
fitted on were never seen in training. DEUP is fitted at the start of the first ``trainer.test``;
the second, with MSP as the criterion, neither refits nor reads it, as in the tutorial (only the
OOD detection scores change).
"""

import argparse
import os
import time

from torch_deup import TUTrainer
from torch_deup.datamodules import CIFAR10DataModule
from torch_deup.hub import load_checkpoint
from torch_deup.models.classification.resnet import resnet
from torch_deup.ood_criteria import MaxSoftmaxCriterion
from torch_deup.post_processing import DEUP
from torch_deup.routines import ClassificationRoutine

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=os.environ.get("TU_DATA_DIR", "../shared/data"))
parser.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10.pt")
parser.add_argument("--download", action="store_true", help="fetch the data through torchvision if missing")
args = parser.parse_args()
start = time.perf_counter()

cifar_model = resnet(in_channels=3, num_classes=10, arch=20, style="cifar", conv_bias=False)
cifar_model = load_checkpoint(cifar_model, args.checkpoint).eval()

datamodule = CIFAR10DataModule(
    root=args.data,
    batch_size=256,
    num_workers=0,
    eval_ood=True,
    val_split=0.1,
    postprocess_set="val",
    download=args.download,
)
try:
    datamodule.setup()  # the data first: a missing folder stops here, before any model work
except FileNotFoundError as error:
    raise SystemExit(f"{error}\nWith this script: pass --data ROOT, or add --download.") from error
trainer = TUTrainer(accelerator="cpu", devices=1, max_epochs=1, enable_progress_bar=True)

deup_c10 = DEUP(task="classification", hidden_dim=64, max_epochs=50, device="cpu")
routine = ClassificationRoutine(
    model=cifar_model,
    num_classes=10,
    loss=None,
    eval_ood=True,
    post_processing=deup_c10,
    ood_criterion="deup",
)
results_deup = trainer.test(routine, datamodule=datamodule)

routine.ood_criterion = MaxSoftmaxCriterion()
results_msp = trainer.test(routine, datamodule=datamodule)
print(f"wall time {time.perf_counter() - start:.0f} s")
