"""ONNX export of a fixed tile size, int8 calibration, and the cache of exported and quantized models.

An exported model takes a float32 N×3×T×T normalised batch (N dynamic, T fixed) named ``input`` and returns
N×1×T×T logits named ``logits``. The spatial size is fixed because pyramid pooling's adaptive pooling bins
depend on it. The model's JSON config travels inside the file as ONNX metadata (``crackseg_config``).

Cache entries live under ``$CRACKSEG_CACHE`` (default ``~/.cache/crackseg``), named by the sha256 of the
weights file, the tile size, the backend and the precision, and are written atomically, so concurrent
processes (``--shard``) never see half a file and a second run starts without exporting again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crackseg.images import atomic_write_bytes, default_mode, normalize_image
from crackseg.model_config import ModelConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_EXPORT_DIFF = 1e-4  # max |logit difference| between the ONNX model and PyTorch on random input
CALIBRATION_CROPS = 300  # crops for int8 calibration ("a few hundred")
EXPORT_FORMAT = 1  # part of every cache key: bump it when the export or quantization recipe changes


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match PyTorch."""


# --- cache --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("CRACKSEG_CACHE") or Path.home() / ".cache" / "crackseg")


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file (memoised per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def cache_path(weights: str | os.PathLike, tile: int, backend: str, precision: str, suffix: str) -> Path:
    """Where the artefact of these weights, tile size, backend and precision lives in the cache."""
    key = f"{weights_sha256(weights)[:24]}-t{tile}-{backend}-{precision}-v{EXPORT_FORMAT}"
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


def _quiet():
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
            with _quiet():
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


# --- int8 calibration ---------------------------------------------------------------------------------------


@dataclass
class CalibrationCrops:
    """Re-iterable normalised float32 batches of `count` random `tile`² crops, for int8 calibration.

    From the `split` ("train" or "val", as `crackseg train` splits them) of crackseg data folders when
    `data` is given, else generated crack images (whose seeds differ between the splits).
    """

    config: ModelConfig
    tile: int
    count: int = CALIBRATION_CROPS
    data: list[str] = field(default_factory=list)
    batch_size: int = 8
    seed: int = 0
    split: str = "train"

    def describe(self) -> str:
        source = ", ".join(map(str, self.data)) if self.data else "synthetic cracks"
        return f"{self.count} random {self.tile}² crops of {source} ({self.split})"

    def labelled_crops(self):
        """(crop, crack mask) pairs: the crops int8 is calibrated on, or judged by (split="val")."""
        rng = np.random.default_rng(self.seed)
        if not self.data:
            from crackseg.synthetic import synthetic_crack

            first = self.seed + (0 if self.split == "train" else 1_000_000)
            for i in range(self.count):
                cracks = int(rng.integers(0, 3))
                yield synthetic_crack((self.tile, self.tile), seed=first + i, n_cracks=cracks)
            return
        from crackseg.data import find_all_pairs, split_pairs
        from crackseg.images import read_image, read_mask

        pairs = dict(zip(("train", "val"), split_pairs(find_all_pairs(self.data, skip_unpaired=True)), strict=True))
        pairs = pairs[self.split]
        picks = np.sort(rng.choice(len(pairs), self.count, replace=len(pairs) < self.count))
        both, loaded = None, -1
        for index in picks:
            if index != loaded:  # picks are sorted: each image is read once
                mask = read_mask(pairs[index].mask).astype(np.uint8)
                both, loaded = np.dstack([read_image(pairs[index].image), mask]), index
            crop = random_crop(both, self.tile, rng)  # photo and mask cropped together
            yield np.ascontiguousarray(crop[:, :, :3]), crop[:, :, 3].astype(bool)

    def crops(self):
        return (crop for crop, _ in self.labelled_crops())

    def __iter__(self):
        batch = []
        for crop in self.crops():
            batch.append(normalize_image(crop, self.config.mean, self.config.std))
            if len(batch) == self.batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)


def random_crop(image: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """A random tile² crop; smaller images are padded the way the segmenter pads them."""
    height, width = image.shape[:2]
    if height < tile or width < tile:
        pad = ((0, max(0, tile - height)), (0, max(0, tile - width)), (0, 0))
        image, (height, width) = np.pad(image, pad, mode="symmetric"), (max(height, tile), max(width, tile))
    y, x = rng.integers(0, height - tile + 1), rng.integers(0, width - tile + 1)
    return image[y : y + tile, x : x + tile]


def quantize_onnx_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, crops: CalibrationCrops) -> Path:
    """Static post-training quantization for ONNX Runtime: QDQ, per-channel int8 weights, MinMax ranges."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(crops)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".int8-") as tmp:
        prepared, tmp_model = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        with _quiet():
            quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph fusions, as ORT advises
        quantize_static(
            str(prepared),
            str(tmp_model),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        _copy_metadata(fp32_path, tmp_model, {"int8_calibration": crops.describe()})
        atomic_write_bytes(out_path, tmp_model.read_bytes())
    return out_path


def _copy_metadata(source: Path | str, target: Path, extra: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(target))
    onnx.helper.set_model_props(model, {**onnx_metadata(source), **extra})
    onnx.save(model, str(target))


@contextlib.contextmanager
def _recursion_limit(limit: int):
    # NNCF walks the graph recursively; the exported adaptive pooling is a chain of a few hundred nodes.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def quantize_openvino_int8(fp32_path: str | os.PathLike, out_dir: str | os.PathLike, crops: CalibrationCrops) -> Path:
    """Static post-training quantization with NNCF; writes OpenVINO IR (model.xml, model.bin) to `out_dir`."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_path))
    single = dataclasses.replace(crops, batch_size=1)  # NNCF counts samples as dataset items
    with _recursion_limit(20_000), _quiet():
        quantized = nncf.quantize(model, nncf.Dataset(single), subset_size=single.count)
    for key, value in {**onnx_metadata(fp32_path), "int8_calibration": crops.describe()}.items():
        quantized.set_rt_info(value, ["crackseg", key])

    def write(folder: Path) -> None:
        ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)

    return atomic_write_dir(Path(out_dir), write)


def nncf_available() -> bool:
    # Looked up, not imported: importing NNCF costs ~0.4 s, and only calibrating (not running) int8 needs it.
    return importlib.util.find_spec("nncf") is not None


# --- cached artefacts ---------------------------------------------------------------------------------------


def cached_onnx(weights: str | os.PathLike, net: torch.nn.Module, config: ModelConfig, tile: int) -> Path:
    """The fp32 ONNX export of a weights file at `tile`, exported on first use."""
    path = cache_path(weights, tile, "onnx", "fp32", ".onnx")
    if not path.is_file():
        log.warning("exporting %s to ONNX at tile %d (once; cached in %s)", weights, tile, path.parent)
        export_onnx(net, config, path, tile)
    return path


def int8_cache_path(weights: str | os.PathLike, tile: int, backend: str) -> Path:
    """Where the int8 model of a weights file lives ("onnx": a QDQ .onnx; "openvino": an IR folder)."""
    return cache_path(weights, tile, backend, "int8", ".onnx" if backend == "onnx" else "")


def cached_int8(
    weights: str | os.PathLike,
    net: torch.nn.Module,
    config: ModelConfig,
    tile: int,
    backend: str,
    crops: CalibrationCrops | None = None,
    refresh: bool = False,
) -> Path:
    """The int8 model of a weights file for `backend`, calibrated on first use."""
    path = int8_cache_path(weights, tile, backend)
    if path.exists() and not refresh:
        return path
    crops = crops or CalibrationCrops(config, tile)
    fp32 = cached_onnx(weights, net, config, tile)
    log.warning("calibrating int8 for %s on %s (once; cached in %s)", backend, crops.describe(), path.parent)
    Path(f"{path}.agreement.json").unlink(missing_ok=True)  # figures of an older calibration no longer hold
    if backend == "onnx":
        return quantize_onnx_int8(fp32, path, crops)
    if refresh and path.exists():
        shutil.rmtree(path)
    return quantize_openvino_int8(fp32, path, crops)


def export_model(
    weights=None,
    model=None,
    out: str | os.PathLike = "model.onnx",
    tile: int | None = None,
    precision: str = "fp32",
    calibration_data=None,
    calibration_crops: int = CALIBRATION_CROPS,
) -> tuple[Path, str]:
    """`crackseg export`: write the checked ONNX model (fp32, or int8 QDQ for ONNX Runtime) to `out`.

    The cache gets the same file, so `predict` does not export again. int8 also prepares OpenVINO's int8
    model in the cache (when NNCF is installed) and measures both against fp32 PyTorch: `auto` uses an
    int8 model only when it was made this way (or by an explicit --precision int8 run) and agrees. With
    calibration data, cached int8 models calibrated otherwise are replaced. Returns (path, a summary).
    """
    from crackseg.model_config import LazyModel, read_config, resolve_weights

    weights_path = resolve_weights(weights, model)
    net, config = LazyModel(weights_path), read_config(weights_path)  # the network loads only if not cached
    tile = int(tile or config.train_size)
    if precision == "fp32":
        source = cached_onnx(weights_path, net, config, tile)
        summary = f"fp32, tile {tile}, max |Δlogit| vs PyTorch < {MAX_EXPORT_DIFF:g}"
    elif precision == "int8":
        from crackseg.backends import is_accurate, verified_int8

        data = [calibration_data] if isinstance(calibration_data, (str, Path)) else calibration_data
        crops = CalibrationCrops(config, tile, count=calibration_crops, data=list(data or []))
        summary = f"int8 QDQ, tile {tile}, calibrated on {crops.describe()}; on held-out crops"
        for backend in ("onnx", "openvino") if nncf_available() else ("onnx",):
            if crops.data:  # replaces a cached int8 model calibrated on other crops
                cached_int8(weights_path, net, config, tile, backend, crops, refresh=True)
            _, figures = verified_int8(weights_path, net, config, tile, backend, crops)
            verdict = "passes" if is_accurate(figures) else "fails"
            summary += (
                f"; {backend}: crack F1 {figures['f1']:.4f} (fp32 {figures['f1_fp32']:.4f}), mask agreement F1 "
                f"{figures['mask_f1']:.4f}, p99.9 |Δp| {figures['p999']:.4f}: {verdict}"
            )
        source = int8_cache_path(weights_path, tile, "onnx")
    else:
        raise ValueError(f"--precision {precision!r}: export writes fp32 or int8 ONNX")
    atomic_write_bytes(out, Path(source).read_bytes())
    return Path(out), summary
