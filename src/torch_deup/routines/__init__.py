"""Lightning routines: training and evaluation loops around a model."""

from torch_deup.routines.classification import ClassificationRoutine

__all__ = ["ClassificationRoutine"]
