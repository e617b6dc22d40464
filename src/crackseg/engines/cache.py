"""ONNX export of a fixed tile size, and the cache of exported and quantized models.

An exported model takes a float32 N×3×T×T normalised batch (N dynamic, T fixed) named ``input`` and returns
N×1×T×T logits named ``logits``. The spatial size is fixed because pyramid pooling's adaptive pooling bins
depend on it. The model's JSON config travels inside the file as ONNX metadata (``crackseg_config``).

Cache entries live under ``$CRACKSEG_CACHE`` (default ``~/.cache/crackseg``), named by the sha256 of the
weights file, the tile size, the backend and the precision, and are written atomically, so concurrent
processes (``--shard``) never see half a file and a second run starts without exporting again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crackseg.engines.base import INPUT_NAME, OUTPUT_NAME
from crackseg.engines.handle import ModelHandle
from crackseg.errors import CracksegError
from crackseg.io.atomic import atomic_write_bytes, default_mode
from crackseg.models.config import ModelConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_EXPORT_DIFF = 1e-4  # max |logit difference| between the ONNX model and PyTorch on random input
EXPORT_FORMAT = 2  # part of every cache key: bump it when the export or quantization recipe changes


class ExportError(CracksegError):
    """The model could not be exported, or the export does not match PyTorch."""


# --- cache --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("CRACKSEG_CACHE") or Path.home() / ".cache" / "crackseg")


def cache_path(handle: ModelHandle, tile: int, backend: str, precision: str, suffix: str) -> Path:
    """Where the artefact of this model (weights and network), tile size, backend and precision lives in the cache."""
    key = f"{handle.cache_key}-t{tile}-{backend}-{precision}-v{EXPORT_FORMAT}"
    return cache_dir() / f"{key}{suffix}"


def atomic_write_dir(final: Path, write) -> Path:
    """Call `write(tmp_dir)`, then rename the folder into place; if another process won the race, keep its."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, default_mode(folder=True))
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- export -------------------------------------------------------------------------------------------------


def _export_dynamo(net: torch.nn.Module, example: torch.Tensor):
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )
    return program.model_proto


def _export_torchscript(net: torch.nn.Module, example: torch.Tensor):
    import onnx
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (example,),
        buffer,
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
    )
    return onnx.load_from_string(buffer.getvalue())


def quiet():
    """Silence the exporters' progress lines and tracing warnings (failures still raise)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def max_logit_difference(net: torch.nn.Module, model_bytes: bytes, tile: int, batch: int = 2) -> float:
    """Max |logit difference| between PyTorch and ONNX Runtime on a random normal batch."""
    import onnxruntime as ort
    import torch

    x = torch.randn(batch, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = net(x).numpy()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"exported model returns shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def export_onnx(net: torch.nn.Module, config: ModelConfig, path: str | os.PathLike, tile: int) -> Path:
    """Export `net` for tiles of `tile`×`tile` (any batch size) to `path`, with `config` embedded as metadata.

    Uses the dynamo exporter (it handles pyramid pooling's bins at any fixed size) and falls back to the
    TorchScript exporter. Raises ExportError unless ONNX Runtime reproduces PyTorch's logits within 1e-4.
    """
    import onnx
    import torch

    net = net.eval().cpu()
    example = torch.randn(2, 3, tile, tile)  # batch 2, so the exporter keeps the batch dimension symbolic
    errors = []
    for exporter in (_export_dynamo, _export_torchscript):
        try:
            with quiet():
                proto = exporter(net, example)
            break
        except Exception as err:  # exporters raise many types; the next one may succeed
            errors.append(f"{exporter.__name__.strip('_')}: {type(err).__name__}: {str(err).splitlines()[0]}")
            log.info("ONNX export with %s failed, trying the next exporter", exporter.__name__)
    else:
        raise ExportError(f"cannot export {config.arch}-{config.encoder} at tile {tile}: " + "; ".join(errors))
    metadata = {"crackseg_config": config.to_json(), "tile": str(tile), "torch": torch.__version__}
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    diff = max_logit_difference(net, data, tile)
    if not diff < MAX_EXPORT_DIFF:
        raise ExportError(f"exported model differs from PyTorch by {diff:.2e} in logits (limit {MAX_EXPORT_DIFF})")
    atomic_write_bytes(path, data)
    return Path(path)


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def config_from_onnx(path: str | os.PathLike) -> ModelConfig:
    return ModelConfig.from_dict(json.loads(onnx_metadata(path)["crackseg_config"]))


def cached_onnx(handle: ModelHandle, tile: int) -> Path:
    """The fp32 ONNX export of a model at `tile`, exported on first use (only then is the network loaded)."""
    path = cache_path(handle, tile, "onnx", "fp32", ".onnx")
    if not path.is_file():
        log.warning("exporting %s to ONNX at tile %d (once; cached in %s)", handle.path, tile, path.parent)
        export_onnx(handle.network, handle.config, path, tile)
    return path
