"""Choosing and building the inference backend (torch now; ONNX Runtime and OpenVINO in their own modules)."""

from __future__ import annotations

from crackseg.inference import CrackSegmenter, TorchBackend
from crackseg.models import load_model


def make_segmenter(
    weights=None,
    model=None,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "cpu",
    **kwargs,
) -> CrackSegmenter:
    """A CrackSegmenter for a weights path or shipped model name, on the requested backend and precision."""
    net, config = load_model(weights, model)
    if backend in ("auto", "torch"):
        if precision == "int8":
            raise ValueError("--precision int8 needs --backend onnx or openvino")
        engine = TorchBackend(net, precision, device)
    else:
        raise ValueError(f"backend {backend!r} is not available yet; use --backend torch")
    return CrackSegmenter(net, config, backend=engine, **kwargs)
