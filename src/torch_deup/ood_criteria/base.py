"""The contract of an out-of-distribution score computed from a model's outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from torch_deup.outputs import ModelOutputs


class OODCriterion(ABC):
    """One score per sample from :class:`~torch_deup.outputs.ModelOutputs`; higher = more likely OOD.

    A criterion never runs the model: an evaluation loop collects the outputs once and hands
    them to every criterion. What a criterion needs is declared on the class, so the loop
    dispatches on the declaration rather than on the concrete type:

    - ``needs_fit``: call ``fit`` on the training split's outputs and targets before scoring;
    - ``needs_post_processing``: set the ``post_processing`` attribute (a fitted estimator whose
      ``score_outputs`` gives the score) before scoring;
    - ``needs_layer_stats``: the outputs must carry ``layer_stats`` (recorded only when something
      reads them).
    """

    #: short display name, e.g. in metric tables
    name: ClassVar[str]
    needs_fit: ClassVar[bool] = False
    needs_post_processing: ClassVar[bool] = False
    needs_layer_stats: ClassVar[bool] = False

    def fit(self, outputs: ModelOutputs, targets: Tensor) -> OODCriterion:
        """Learn from the training split's outputs; nothing to learn unless ``needs_fit``."""
        return self

    @property
    def fitted(self) -> bool:
        """Whether the criterion can score: always, for criteria that need no fit."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """What ``fit`` learnt, in tensors and plain values (nothing, for criteria that need no fit)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, as if ``fit`` had run."""
        if state:
            raise ValueError(
                f"{type(self).__name__} learns nothing from fit, but the state to load holds "
                f"{sorted(state)}: it was saved from another criterion."
            )

    @abstractmethod
    def __call__(self, outputs: ModelOutputs) -> Tensor:
        """OOD scores, shape ``(N,)``."""
