"""Eager PyTorch: any tile size, fp32 or bf16 autocast; the reference every other engine is checked against."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crackseg.engines.base import BackendError, cpu_has_bf16_matrix_engine
from crackseg.extras import require_torch

if TYPE_CHECKING:
    import torch

    from crackseg.engines.handle import ModelHandle


class TorchBackend:
    """Eager PyTorch in channels_last; bf16 autocast where the CPU has bf16 matrix engines (or on CUDA).

    channels_last also speeds up fp32 inference on an AVX2-only CPU (1.4–1.7× for U-Net and PSPNet-ResNet18 at
    448², benchmarks/predict_speed.py), unlike fp32 training there (see crackseg.train.setup.memory_format).
    """

    name = "torch"
    fixed_size = None  # accepts any tile size

    def __init__(self, model: torch.nn.Module, precision: str = "auto", device: str = "cpu"):
        import torch

        if precision == "auto":
            on_cuda = device.startswith("cuda")
            precision = "bf16" if (on_cuda or cpu_has_bf16_matrix_engine()) else "fp32"
        if precision not in ("fp32", "bf16"):
            raise BackendError(f"precision {precision!r} is not available with the torch backend (fp32, bf16)")
        self.precision, self.device = precision, torch.device(device)
        self.format = torch.channels_last
        self.model = model.eval().to(self.device, memory_format=self.format)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.format)
        bf16 = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), bf16:
            logits = self.model(x)
        return logits.float()[:, 0].cpu().numpy()


def build(handle: ModelHandle, precision: str, tile: int, device: str, crops=None, **_) -> TorchBackend:
    if precision == "int8":
        raise BackendError("--precision int8 needs --backend onnx or openvino")
    require_torch("the torch backend")
    return TorchBackend(handle.network, precision, device)
