"""What the core install leaves out: PyTorch. Every engine runs ONNX without it; training, exporting PyTorch weights
and the torch engine need the ``train`` extra, and say so in one line."""

from __future__ import annotations

import functools
import importlib.util

from crackseg.errors import CracksegError

TRAIN_EXTRA = "pip install 'crackseg[train]'"


class MissingExtraError(CracksegError):
    """A part of crackseg that needs a package the core install does not bring."""


@functools.cache
def has_torch() -> bool:
    # Looked up, not imported: importing torch costs a second at the start of every command.
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "segmentation_models_pytorch"))


def require_torch(what: str) -> None:
    if not has_torch():
        raise MissingExtraError(f"{what} needs PyTorch, which the core install leaves out: {TRAIN_EXTRA}")
