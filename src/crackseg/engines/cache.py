"""ONNX export from PyTorch, and the cache of the models the engines run (fp32 at one tile size, int8).

An exported model (`models.onnx_file`) takes a float32 N×3×H×W normalised batch named ``input`` and returns
N×1×H×W logits named ``logits``; the cached runnable model fixes H = W = the tile size. The model's JSON config
travels inside the file as ONNX metadata (``crackseg_config``).

Cache entries live under ``$CRACKSEG_CACHE`` (default ``~/.cache/crackseg``), named by the sha256 of the
weights file, the tile size, the backend and the precision, and are written atomically, so concurrent
processes (``--shard``) never see half a file and a second run starts without exporting again.
"""

from __future__ import annotations

import contextlib
import io
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
from crackseg.models import onnx_file
from crackseg.models.config import ModelConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Max |logit difference| between the ONNX model and PyTorch on random input, per unit of the largest |logit| (at
# least 1): float32 rounding grows with the logits, and a well-trained model's reach 10–20, while a wrongly
# exported graph (pooling bins baked in) is off by a large share of them.
MAX_EXPORT_DIFF = 1e-4
EXPORT_FORMAT = 5  # part of every cache key: bump it when the export or quantization recipe changes


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


def save_openvino_model(model, folder: Path) -> Path:
    """An OpenVINO model written as IR (``model.xml``, ``model.bin``, weights as they are) into `folder`, atomically
    (`atomic_write_dir`)."""
    import openvino as ov

    def write(tmp: Path) -> None:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)

    return atomic_write_dir(folder, write)


# --- export -------------------------------------------------------------------------------------------------


def export_graph(net: torch.nn.Module, example: torch.Tensor, free_size: bool):
    """The network as a crackseg ONNX graph (`models.onnx_file`): the dynamo exporter's graph with constants folded
    but nothing fused, so every parameter keeps its state-dict name (the exporter's own optimiser folds batch norms
    into convolutions; ONNX Runtime and OpenVINO fuse them when they load the file). With `free_size`, heights and
    widths are any multiple of the network's stride."""
    import onnx_ir
    import onnxscript.optimizer
    import torch

    shapes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if free_size:
        stride = getattr(net, "stride", 32)
        shapes |= {2: stride * torch.export.Dim("h", max=1024), 3: stride * torch.export.Dim("w", max=1024)}
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(shapes,),
        external_data=False,
        optimize=False,
        verbose=False,
    )
    onnxscript.optimizer.fold_constants(program.model)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    return onnx_ir.serde.serialize_model(program.model)


def quiet():
    """Silence the exporters' progress lines and tracing warnings (failures still raise)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def relative_logit_difference(net: torch.nn.Module, model_bytes: bytes, tile: int, batch: int = 2) -> float:
    """Max |logit difference| between PyTorch and ONNX Runtime on a random normal batch, over PyTorch's largest
    |logit| (at least 1)."""
    import onnxruntime as ort
    import torch

    x = torch.randn(batch, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = net(x).numpy()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"exported model returns shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


def export_onnx(net: torch.nn.Module, config: ModelConfig, tile: int) -> bytes:
    """The crackseg ONNX file of `net` (`models.onnx_file`): any tile size where the network allows, else `tile`.

    Each export is checked: ONNX Runtime must reproduce PyTorch's logits within 1e-4 of their largest magnitude
    (at least 1) at `tile` and, for a free size, at a second size whose pooling bins fall differently (an export can
    bake in the example's bins). Raises ExportError when neither passes.
    """
    import torch

    net = net.eval().cpu()
    example = torch.randn(2, 3, tile, tile)  # batch 2, so the exporter keeps the batch dimension symbolic
    errors = []
    for free_size in (True, False):  # pyramid pooling's bins depend on the input size: PSPNet exports at a fixed one
        name = "at any size" if free_size else f"at {tile}"
        try:
            with quiet():
                proto = export_graph(net, example, free_size)
        except Exception as err:  # exporters raise many types; the next one may succeed
            errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0]}")
            continue
        onnx_file.shrink(proto)
        onnx_file.set_metadata(proto, {onnx_file.CONFIG_KEY: config.to_json(), "torch": torch.__version__})
        data = proto.SerializeToString()
        checked = (tile, tile + 3 * getattr(net, "stride", 32)) if free_size else (tile,)
        diffs = {size: relative_logit_difference(net, onnx_file.runnable(data, size), size) for size in checked}
        worst = max(diffs, key=diffs.get)
        if diffs[worst] < MAX_EXPORT_DIFF:
            return data
        errors.append(f"{name}: logits differ from PyTorch's by {diffs[worst]:.2e} of their largest at tile {worst}")
        log.info("ONNX export %s does not match PyTorch", name)
    raise ExportError(f"cannot export {config.arch}-{config.encoder} at tile {tile}: " + "; ".join(errors))


def cached_onnx(handle: ModelHandle, tile: int) -> Path:
    """The model as ONNX Runtime and OpenVINO run it at `tile` (`onnx_file.runnable`), made on first use: from the
    model's own ONNX file without torch, or exported from its PyTorch weights (only then is the network loaded)."""
    path = cache_path(handle, tile, "onnx", "fp32", ".onnx")
    if not path.is_file():
        if onnx_file.is_onnx(handle.path):
            source = handle.path
        else:
            log.warning("exporting %s to ONNX at tile %d (once; cached in %s)", handle.path, tile, path.parent)
            source = export_onnx(handle.network, handle.config, tile)
        atomic_write_bytes(path, onnx_file.runnable(source, tile))
    return path
