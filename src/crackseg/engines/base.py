"""What every engine is: the `Backend` interface, its error, and what the runtimes share."""

from __future__ import annotations

import os
import sys
from typing import Protocol

import numpy as np

from crackseg.errors import CracksegError

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # of every exported model


class BackendError(CracksegError):
    """A backend/precision combination is not available here; the message says what to install or pick."""


class Backend(Protocol):
    """An inference engine: a callable from a float32 N×3×H×W normalised batch to N×H×W logits (numpy).

    `name` is its registry name, `precision` one of fp32/bf16/int8, and `fixed_size` the tile size it was
    exported for (None: any size), so `CrackSegmenter` tiles and blends the same way whichever runs. `choice`,
    when set, says why `auto` took it.
    """

    name: str
    precision: str
    fixed_size: int | None

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1)).astype(np.float32)  # tanh form: no overflow for large |x|


def default_threads() -> int:
    """Threads for ONNX Runtime and OpenVINO: torch's count when torch is loaded (a caller may have set it), else
    OMP_NUM_THREADS, else 0: the library's default, the physical cores, as torch's default. Not imported for this:
    importing torch slows the start of a command that runs a cached export and never needs it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS") or 0)
