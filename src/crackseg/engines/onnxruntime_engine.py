"""ONNX Runtime on an exported fixed-tile model: fp32, or int8 (static QDQ); the CUDA provider on GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crackseg.engines.base import INPUT_NAME, BackendError, default_threads
from crackseg.engines.cache import cached_onnx

if TYPE_CHECKING:
    from crackseg.engines.handle import ModelHandle


class OnnxBackend:
    """ONNX Runtime on an exported fixed-tile model (fp32 or int8 QDQ); CUDA provider when device is cuda."""

    name = "onnx"

    def __init__(self, path: str | Path, precision: str = "fp32", device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "ONNX Runtime has no CUDA provider here; install onnxruntime-gpu or use --device cpu"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.precision, self.path = precision, Path(path)
        self.fixed_size = int(self.session.get_inputs()[0].shape[-1])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0][:, 0]


def open_int8(path: Path) -> OnnxBackend:
    return OnnxBackend(path, "int8")


def build(handle: ModelHandle, precision: str, tile: int, device: str, crops=None, **int8_options) -> OnnxBackend:
    if precision == "bf16":
        raise BackendError("the onnx backend runs fp32 or int8; for bf16 use --backend openvino or torch")
    if precision == "int8":
        from crackseg.engines.int8 import verified_int8

        if device.startswith("cuda"):
            raise BackendError("int8 runs on the CPU only; use --device cpu")
        return verified_int8(handle, tile, "onnx", crops, open_int8, **int8_options)[0]
    return OnnxBackend(cached_onnx(handle, tile), precision, device)
