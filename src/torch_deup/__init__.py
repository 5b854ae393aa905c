"""torch-deup: post-hoc epistemic uncertainty (DEUP), OOD criteria and their evaluation.

Importing the package stays light: ``TUTrainer`` (which imports Lightning) loads on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["TUTrainer"]


def __getattr__(name: str) -> Any:
    if name == "TUTrainer":
        from torch_deup.trainer import TUTrainer

        return TUTrainer
    raise AttributeError(f"module 'torch_deup' has no attribute {name!r}")
