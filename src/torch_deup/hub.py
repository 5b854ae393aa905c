"""Load weights into a model from a local file or a Hugging Face repository.

Checkpoints come in several wrappings: a bare state dict (TorchUncertainty's hub files), a
Lightning checkpoint whose ``state_dict`` keys carry the routine's ``model.`` prefix, or a
``{'state_dict': ..., 'best_prec1': ...}`` dict saved from ``nn.DataParallel`` with ``module.``
prefixes (akamaster/pytorch_resnet_cifar10). :func:`load_checkpoint` unwraps all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

# DataParallel / DistributedDataParallel, Lightning, torch.compile
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")

M = TypeVar("M", bound=nn.Module)


def resolve_checkpoint(
    source: str | Path,
    filename: str | None = None,
    *,
    repo_type: str = "model",
    revision: str | None = None,
) -> Path:
    """Local path of a checkpoint, downloading it from the Hugging Face Hub when needed.

    ``source`` alone is a file. With ``filename``, ``source`` is a local folder holding it or,
    when no such folder exists, a Hugging Face repo id (downloaded and cached by
    ``huggingface_hub``, which the ``hub`` extra installs).

    Raises:
        FileNotFoundError: if the local file does not exist or is a folder.
        ImportError: if a download is needed and ``huggingface_hub`` is not installed.
    """
    if filename is None:
        path = Path(source)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"Checkpoint file {path.resolve()} {what}. Pass a checkpoint file as `source`, or a folder "
                "or a Hugging Face repo id as `source` and the file's name as `filename`."
            )
        return path
    if Path(source).is_dir():
        return resolve_checkpoint(Path(source) / filename)
    if _looks_local(source):
        raise FileNotFoundError(
            f"Checkpoint folder {Path(source).resolve()} does not exist. A Hugging Face repo id reads "
            "'owner/name'; a local `source` must be an existing folder."
        )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ImportError(
            f"Downloading {filename!r} from the Hugging Face repo {str(source)!r} needs huggingface_hub, "
            "which is not installed. Install it with `pip install torch-deup[hub]`, or pass a local path."
        ) from err
    return Path(
        hf_hub_download(repo_id=str(source), filename=filename, repo_type=repo_type, revision=revision)
    )


def _looks_local(source: str | Path) -> bool:
    """A path rather than a Hugging Face repo id ('owner/name', or a bare name)."""
    text = str(source)
    return isinstance(source, Path) or text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1


def unwrap_state_dict(checkpoint: Any, model_keys: Collection[str] | None = None) -> dict[str, Tensor]:
    """The state dict inside ``checkpoint``, without ``module.``/``model.``/``_orig_mod.`` prefixes.

    A prefix is removed only when every key carries it, so a model whose own first submodule is
    called ``model`` keeps its keys when they are mixed with others; with ``model_keys`` (the
    target model's state-dict keys), not at all once every key is one of them: a model that wraps
    its network as ``self.model`` loads its own state dict. Also with ``model_keys``, when the keys
    under one prefix hold every key of the model (BatchNorm's ``num_batches_tracked`` aside), those
    are kept and the rest dropped: a Lightning routine also saves its loss's weights, for instance.

    Example:
        >>> ckpt = {"state_dict": {"module.w": torch.ones(1)}, "best_prec1": 91.7}
        >>> list(unwrap_state_dict(ckpt))
        ['w']
    """
    is_dict = isinstance(checkpoint, Mapping)
    state = checkpoint.get("state_dict", checkpoint) if is_dict else checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        got = f"a dict with keys {list(checkpoint)[:8]}" if is_dict else f"a {type(checkpoint).__name__}"
        raise TypeError(
            "Expected the checkpoint to be a state dict (str -> Tensor) or a dict holding one under "
            f"'state_dict', but got {got}. Save `model.state_dict()` instead."
        )
    state = dict(state)
    stripped = True
    model_keys = None if model_keys is None else set(model_keys)
    while stripped and state and not (model_keys is not None and model_keys.issuperset(state)):
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            under = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            if len(under) == len(state) or (model_keys is not None and _covers(under, model_keys)):
                state, stripped = under, True
    return state


def _covers(state: Mapping[str, Tensor], model_keys: set[str]) -> bool:
    """Whether ``state`` holds every key of the model (checkpoints from before PyTorch 0.4.1 lack
    BatchNorm's ``num_batches_tracked``, which loading fills in)."""
    needed = {key for key in model_keys if not key.endswith("num_batches_tracked")}
    return bool(needed) and needed <= state.keys()


def _describe(keys: list[str], what: str, limit: int = 5) -> str:
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{len(keys)} {what} ({shown})"


def load_checkpoint(
    model: M,
    source: str | Path,
    filename: str | None = None,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> M:
    """Load a checkpoint into ``model`` in place and return ``model``.

    Args:
        model: the module to fill; build it with the arguments the checkpoint was trained with.
        source: a checkpoint file, or (with ``filename``) a folder or a Hugging Face repo id.
        filename: the file inside ``source``; see :func:`resolve_checkpoint`.
        repo_type: Hugging Face repository type (``"model"``, ``"dataset"``, ``"space"``).
        revision: Hugging Face branch, tag or commit; ``None`` for the default branch.
        map_location: where tensors are loaded, as in ``torch.load``.
        strict: when ``True``, missing or unexpected keys raise; when ``False``, the matching keys
            are loaded and the others are reported in a warning.

    The file is read with ``torch.load(weights_only=True)``, so no pickled code runs. As with
    ``load_state_dict``, the matching tensors are copied before a key mismatch is raised.

    Raises:
        FileNotFoundError: if a local checkpoint does not exist.
        RuntimeError: if ``strict`` and the keys of the checkpoint and the model differ, or if a
            tensor's shape differs from the model's (raised by ``load_state_dict``).

    Example:
        >>> import tempfile
        >>> from torch_deup.models import resnet
        >>> path = Path(tempfile.mkdtemp()) / "r20.pt"
        >>> torch.save({"state_dict": resnet(arch=20).state_dict(), "epoch": 3}, path)
        >>> model = load_checkpoint(resnet(arch=20), path)
        >>> # Online, TorchUncertainty's CIFAR-10 ResNet-18:
        >>> # load_checkpoint(resnet(arch=18), "torch-uncertainty/resnet18_c10", "resnet18_c10.ckpt")
    """
    path = resolve_checkpoint(source, filename, repo_type=repo_type, revision=revision)
    state = unwrap_state_dict(
        torch.load(path, map_location=map_location, weights_only=True), model.state_dict()
    )
    # Load non-strictly and judge the result: BatchNorm fills in the `num_batches_tracked` buffers
    # that pre-0.4.1 checkpoints (akamaster's) lack, which a key comparison beforehand would miss.
    result = model.load_state_dict(state, strict=False)
    keys = ((result.missing_keys, "missing keys"), (result.unexpected_keys, "unexpected keys"))
    problems = "; ".join(_describe(found, what) for found, what in keys if found)
    if problems:
        message = f"Checkpoint {path} does not match {type(model).__name__}: {problems}."
        if strict:
            raise RuntimeError(
                message + " Build the model with the arguments the checkpoint was trained with, or pass "
                "strict=False to load the matching keys only."
            )
        warnings.warn(message + " Loaded the matching keys only.", stacklevel=2)
    return model
