"""int8: calibration crops, static quantization for ONNX Runtime (QDQ) and OpenVINO (NNCF), and the rule that
decides whether an int8 model may be used: users must not see the difference in the crack masks.

An int8 model is "accurate" when its crack F1 against the ground truth of labelled held-out crops is within 0.005
of fp32's and its masks agree with fp32's at F1 >= 0.98. Its probabilities may still differ by a few hundredths,
so `--prob` maps of int8 are not fp32's. The figures are measured once, when the int8 model is built, and kept
beside it in the cache (``*.agreement.json``), so `auto` decides without measuring again.

Both quantizers keep the first convolution (the stem, which sees the raw photo) and the last (the head, whose
output is thresholded) in floating point: quantizing those two cost the EfficientNet-Lite U-Net most of its mask
agreement with fp32, and they are a small share of the work. On CPUs without VNNI (AVX2 only: `vpmaddubsw` adds
pairs of u8×s8 products in 16 bits and saturates) both keep every product clear of that overflow, as the two
libraries advise: ONNX Runtime with 7-bit weights (`reduce_range`), NNCF with its overflow fix on every layer. With
VNNI there is no such overflow and the coarser weights would only cost agreement, so it is not done there; the
cache keeps the two kinds apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackseg.engines.base import INPUT_NAME, BackendError, cpu_has_vnni, sigmoid
from crackseg.engines.cache import cache_path, cached_onnx, quiet, save_openvino_model
from crackseg.engines.handle import ModelHandle
from crackseg.engines.onnxruntime_engine import OnnxBackend
from crackseg.io.atomic import atomic_write_bytes
from crackseg.io.images import normalize_image
from crackseg.models import onnx_file
from crackseg.models.config import ModelConfig

log = logging.getLogger(__name__)

CALIBRATION_CROPS = 300  # crops for int8 calibration ("a few hundred")
HELD_OUT_CROPS = 128  # at least this many labelled validation crops judge an int8 model: on 16-75, its
# mask agreement moved by about ±0.005 from one sample of crops to another, as much as its margin to the rule
MIN_MASK_F1, MAX_TASK_F1_DROP = 0.98, 0.005


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
        from crackseg.io.images import read_image, read_mask

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


def stem_and_head(convolutions: list[str]) -> list[str]:
    """The first and last of a network's convolutions, in graph order: the two left in floating point."""
    return sorted({convolutions[0], convolutions[-1]}) if convolutions else []


def quantize_onnx_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, crops: CalibrationCrops) -> Path:
    """Static post-training quantization for ONNX Runtime: QDQ, per-channel int8 weights (7-bit without VNNI),
    each activation's range the mean over the calibration batches of their min and max (a single batch's extreme
    then stretches no range: 0.980 mask agreement for the default model against 0.9795 with the extremes of all);
    the stem and head convolutions stay fp32."""
    import onnx
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
        with quiet():
            # shape inference and graph fusions, as ONNX Runtime advises; ONNX's shape inference suffices for a fixed
            # tile (the symbolic one needs sympy, which the core install leaves out)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        quantize_static(
            str(prepared),
            str(tmp_model),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not cpu_has_vnni(),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=stem_and_head([node.name for node in graph.node if node.op_type == "Conv"]),
            extra_options={"CalibMovingAverage": True},
        )
        _copy_metadata(fp32_path, tmp_model, {"int8_calibration": crops.describe()})
        atomic_write_bytes(out_path, tmp_model.read_bytes())
    return out_path


def _copy_metadata(source: Path | str, target: Path, extra: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(target))
    onnx.helper.set_model_props(model, {**onnx_file.read_metadata(source), **extra})
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
    """Static post-training quantization with NNCF (with its full bias correction: each layer's output mean is
    matched to fp32's on the calibration crops, layer by layer); writes OpenVINO IR (model.xml, model.bin) to
    `out_dir`. The stem and head convolutions stay in floating point."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    # convert_model, not read_model: it folds the exported batch norms into their convolutions first. Quantized
    # unfolded, each convolution's output is rounded to int8 again on its way into its batch norm: the default
    # model's mask agreement with fp32 fell from 0.98 to 0.96 so.
    model = ov.convert_model(str(fp32_path))
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    single = dataclasses.replace(crops, batch_size=1)  # NNCF counts samples as dataset items
    with _recursion_limit(20_000), quiet():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(single),
            subset_size=single.count,
            fast_bias_correction=False,  # NNCF's full bias correction: 0.983 mask agreement against 0.980
            ignored_scope=nncf.IgnoredScope(names=stem_and_head(convolutions)),
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=None if cpu_has_vnni() else OverflowFix.ENABLE  # None: NNCF's own default
            ),
        )
    for key, value in {**onnx_file.read_metadata(fp32_path), "int8_calibration": crops.describe()}.items():
        quantized.set_rt_info(value, ["crackseg", key])
    return save_openvino_model(quantized, Path(out_dir))


def nncf_available() -> bool:
    # Looked up, not imported: importing NNCF is slow, and only calibrating (not running) int8 needs it.
    return importlib.util.find_spec("nncf") is not None


def int8_cache_path(handle: ModelHandle, tile: int, backend: str) -> Path:
    """Where the int8 model of a weights file lives ("onnx": a QDQ .onnx; "openvino": an IR folder)."""
    kind = "int8" if cpu_has_vnni() else "int8-no-overflow"
    return cache_path(handle, tile, backend, kind, ".onnx" if backend == "onnx" else "")


def cached_int8(
    handle: ModelHandle, tile: int, backend: str, crops: CalibrationCrops | None = None, refresh: bool = False
) -> Path:
    """The int8 model of a model for `backend`, calibrated on first use."""
    path = int8_cache_path(handle, tile, backend)
    if path.exists() and not refresh:
        return path
    crops = crops or CalibrationCrops(handle.config, tile)
    fp32 = cached_onnx(handle, tile)
    log.warning("calibrating int8 for %s on %s (once; cached in %s)", backend, crops.describe(), path.parent)
    Path(f"{path}.agreement.json").unlink(missing_ok=True)  # figures of an older calibration no longer hold
    if backend == "onnx":
        return quantize_onnx_int8(fp32, path, crops)
    if refresh and path.exists():
        shutil.rmtree(path)
    return quantize_openvino_int8(fp32, path, crops)


def agreement(reference: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Crack F1 of `prob`'s mask against `reference`'s mask, and the 99.9th percentile of |Δp|."""
    ref_mask, mask = reference >= threshold, prob >= threshold
    tp = np.count_nonzero(ref_mask & mask)
    denominator = np.count_nonzero(ref_mask) + np.count_nonzero(mask)
    f1 = 1.0 if denominator == 0 else 2 * tp / denominator
    return {"f1": float(f1), "p999": float(np.percentile(np.abs(prob - reference), 99.9))}


def is_accurate(figures: dict[str, float]) -> bool:
    """Whether an int8 model's figures (from `task_accuracy`) pass the rule above."""
    needed = {"f1", "f1_fp32", "mask_f1"}
    return needed <= set(figures) and (
        figures["mask_f1"] >= MIN_MASK_F1 and figures["f1_fp32"] - figures["f1"] <= MAX_TASK_F1_DROP
    )


def measure_agreement(engine, fp32, batches, threshold: float = 0.5) -> dict[str, float]:
    """Agreement of an engine with an fp32 engine on normalised batches (pooled over all their pixels)."""
    reference, probs = [], []
    for batch in batches:
        reference.append(sigmoid(fp32(batch)))
        probs.append(sigmoid(engine(batch)))
    return agreement(np.concatenate(reference), np.concatenate(probs), threshold)


def task_accuracy(engine, fp32, crops: CalibrationCrops, threshold: float) -> dict[str, float]:
    """Dataset-level crack F1 of `engine` and of an fp32 engine against the masks of labelled crops, and the
    agreement of their masks (F1) and probabilities (p99.9 |Δp|)."""
    from crackseg.metrics import confusion

    counts = np.zeros((2, 3), np.int64)  # engine, fp32: tp, fp, fn
    reference, probs = [], []
    for crop, truth in crops.labelled_crops():
        batch = normalize_image(crop, crops.config.mean, crops.config.std)[None]
        pair = sigmoid(engine(batch))[0], sigmoid(fp32(batch))[0]
        for row, prob in enumerate(pair):
            c = confusion(prob >= threshold, truth)
            counts[row] += (c["tp"], c["fp"], c["fn"])
        probs.append(pair[0])
        reference.append(pair[1])
    f1 = [1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts]
    agree = agreement(np.stack(reference), np.stack(probs), threshold)
    return {"f1": float(f1[0]), "f1_fp32": float(f1[1]), "mask_f1": agree["f1"], "p999": agree["p999"]}


def verified_int8(
    handle: ModelHandle,
    tile: int,
    backend: str,
    crops: CalibrationCrops | None,
    open_engine: Callable[[Path], object],
    require_accurate: bool = False,
    calibrate: bool = True,
):
    """The int8 engine (`open_engine(path)`) and its accuracy (`task_accuracy`) on labelled validation crops
    (never calibration crops).

    The model and its figures are cached, so `auto` decides without calibrating or measuring again, and an
    int8 model already known to be inaccurate is not even loaded when `require_accurate` is set. With
    `calibrate=False` only an int8 model made earlier is used.
    """
    config = handle.config
    crops = crops or CalibrationCrops(config, tile)
    if not calibrate and not int8_cache_path(handle, tile, backend).exists():
        raise BackendError("not calibrated yet (crackseg export --precision int8 --calibration-data DIR -o FILE.onnx)")
    path = cached_int8(handle, tile, backend, crops)
    record = Path(f"{path}.agreement.json")
    figures = json.loads(record.read_text()) if record.is_file() else None
    if figures is not None and ("mask_f1" not in figures or figures.get("held_out_crops", 0) < HELD_OUT_CROPS):
        figures = None  # judged by an older rule or on fewer crops: judge it again
    if figures is None or is_accurate(figures) or not require_accurate:
        engine = open_engine(path)
    if figures is None:
        count = max(HELD_OUT_CROPS, crops.count // 4)
        held_out = CalibrationCrops(config, tile, count=count, data=crops.data, seed=crops.seed, split="val")
        fp32 = OnnxBackend(cached_onnx(handle, tile))  # PyTorch's logits to 1e-4 of their size; no torch
        figures = task_accuracy(engine, fp32, held_out, config.threshold)
        figures["held_out"], figures["held_out_crops"] = held_out.describe(), held_out.count
        atomic_write_bytes(record, json.dumps(figures).encode())
    if require_accurate and not is_accurate(figures):
        raise BackendError(
            f"int8 crack F1 {figures['f1']:.3f} against fp32's {figures['f1_fp32']:.3f}, mask agreement F1 "
            f"{figures['mask_f1']:.3f} (needs a drop <= {MAX_TASK_F1_DROP} and agreement >= {MIN_MASK_F1})"
        )
    return engine, figures
