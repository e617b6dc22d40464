"""What every engine is: the `Backend` interface, its error, and what the runtimes share."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
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


@functools.cache
def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`), empty where /proc/cpuinfo cannot be read, less those
    above the instruction set oneDNN is held to (`isa_capped_flags`)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    flags = {flag for line in lines if line.startswith(("flags", "Features")) for flag in line.split(":", 1)[1].split()}
    return flags - isa_capped_flags(os.environ.get(ISA_CAP_VARIABLE, ""))


# oneDNN, inside OpenVINO, runs only the instructions up to ONEDNN_MAX_CPU_ISA when it is set: the way to see how an
# engine behaves on an older CPU (an AMX machine held to AVX2 runs the AVX2 kernels, int8's 16-bit saturation
# included). Engine choices follow it, so that the int8 recipe is the one those kernels need.
ISA_CAP_VARIABLE = "ONEDNN_MAX_CPU_ISA"
_AMX, _BF16, _VNNI = {"amx_bf16", "amx_int8", "amx_tile"}, {"avx512_bf16"}, {"avx512_vnni", "avx_vnni"}
_ISA_CAPS = {
    **dict.fromkeys(("SSE41", "AVX", "AVX2", "AVX512_CORE"), _AMX | _BF16 | _VNNI),
    **dict.fromkeys(("AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI"), _AMX | _BF16),
    **dict.fromkeys(("AVX512_CORE_BF16", "AVX10_1_512"), _AMX),
}


def isa_capped_flags(cap: str) -> set[str]:
    """The matrix-engine, bf16 and VNNI flags that oneDNN held to `cap` does not use (none for no or unknown cap)."""
    return _ISA_CAPS.get(cap.strip().upper(), set())


def cpu_has_bf16_matrix_engine() -> bool:
    """True on CPUs with AMX or AVX-512 BF16, where bf16 matmuls are several times faster than fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_has_vnni() -> bool:
    """True on CPUs whose int8 dot products accumulate in 32 bits (AVX-512 VNNI, AVX-VNNI, AMX); without, AVX2's
    `vpmaddubsw` adds pairs of u8×s8 products in 16 bits and saturates."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())
