"""Choosing and building the inference backend: PyTorch, ONNX Runtime or OpenVINO, in fp32, bf16 or int8.

Every backend is a callable taking a float32 N×3×T×T normalised batch and returning N×T×T logits (numpy),
with attributes `name`, `precision` and `fixed_size` (T for exported models, None for PyTorch), so
`CrackSegmenter` tiles and blends the same way whichever runs.

`--backend auto --precision auto` takes the first entry of an ordered preference list (fastest first, as
measured by benchmarks/predict_speed.py) that loads on this machine and is accurate; see `auto_candidates`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crackseg.export import (
    INPUT_NAME,
    CalibrationCrops,
    cache_dir,
    cached_int8,
    cached_onnx,
    int8_cache_path,
    nncf_available,
)
from crackseg.images import atomic_write_bytes
from crackseg.inference import TorchBackend, cpu_has_bf16_matrix_engine, sigmoid
from crackseg.model_config import ModelConfig, ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
# An int8 model is "accurate" when users would not see the difference: its crack F1 against the ground truth of
# held-out crops is within 0.005 of fp32's, and its masks agree with fp32's at F1 >= 0.98. (Its probabilities may
# still differ by a few hundredths: `--prob` maps of int8 are not fp32's.)
MIN_MASK_F1, MAX_TASK_F1_DROP = 0.98, 0.005


HELD_OUT_CROPS = 16  # at least this many labelled validation crops judge an int8 model


class BackendError(RuntimeError):
    """A backend/precision combination is not available here; the message says what to install or pick."""


def default_threads() -> int:
    """Threads for ONNX Runtime and OpenVINO: torch's count when torch is loaded (a caller may have set it), else
    OMP_NUM_THREADS, else 0: the library's default, the physical cores, as torch's default. Not imported for this:
    torch costs ~1.3 s of start-up that a cached export never needs."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS") or 0)


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


class OpenVinoBackend:
    """OpenVINO on the CPU, reading the exported ONNX (fp32/bf16) or an NNCF-quantized IR (int8).

    bf16 inference is requested only where the CPU has bf16 matrix engines (AMX / AVX-512 BF16), unless asked
    for explicitly. Compiled models are cached by OpenVINO under the crackseg cache folder.
    """

    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir() / "openvino")})
        bf16 = precision == "bf16" or (precision == "int8" and cpu_has_bf16_matrix_engine())
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",  # one stream using all threads: tiles arrive one batch at a time
            "INFERENCE_NUM_THREADS": threads or default_threads(),
        }
        path = Path(path)
        self.compiled = core.compile_model(str(path / "model.xml" if path.is_dir() else path), "CPU", config)
        self._local = threading.local()  # an infer request serves one call at a time: one per thread
        self.precision, self.path = precision, Path(path)
        self.fixed_size = int(self.compiled.input(0).get_partial_shape()[3].get_length())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: np.ascontiguousarray(batch, np.float32)})[0]
        return out[:, 0].copy()  # the request reuses its output buffer on the next call


# --- agreement with fp32 PyTorch ----------------------------------------------------------------------------


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


def measure_agreement(engine, net: torch.nn.Module, batches, threshold: float = 0.5) -> dict[str, float]:
    """Agreement of a backend with fp32 PyTorch on normalised batches (pooled over all their pixels)."""
    reference, probs = [], []
    fp32 = TorchBackend(net, "fp32")
    for batch in batches:
        reference.append(sigmoid(fp32(batch)))
        probs.append(sigmoid(engine(batch)))
    return agreement(np.concatenate(reference), np.concatenate(probs), threshold)


def task_accuracy(engine, net: torch.nn.Module, crops: CalibrationCrops, threshold: float) -> dict[str, float]:
    """Dataset-level crack F1 of `engine` and of fp32 PyTorch against the masks of labelled crops, and the
    agreement of their masks (F1) and probabilities (p99.9 |Δp|)."""
    from crackseg.images import normalize_image
    from crackseg.metrics import confusion

    fp32 = TorchBackend(net, "fp32")
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
    weights: Path,
    net,
    config: ModelConfig,
    tile: int,
    backend: str,
    crops: CalibrationCrops,
    require_accurate: bool = False,
    calibrate: bool = True,
):
    """The int8 engine and its accuracy (`task_accuracy`) on labelled validation crops (never calibration crops).

    The model and its figures are cached, so `auto` decides without calibrating or measuring again, and an
    int8 model already known to be inaccurate is not even loaded when `require_accurate` is set. With
    `calibrate=False` only an int8 model made earlier is used.
    """
    if not calibrate and not int8_cache_path(weights, tile, backend).exists():
        raise BackendError("not calibrated yet (crackseg export --precision int8 --calibration-data DIR)")
    path = cached_int8(weights, net, config, tile, backend, crops)
    record = Path(f"{path}.agreement.json")
    figures = json.loads(record.read_text()) if record.is_file() else None
    if figures is not None and "mask_f1" not in figures:
        figures = None  # judged by the probability rule of older versions: judge it again by the task
    if figures is None or is_accurate(figures) or not require_accurate:
        engine = OnnxBackend(path, "int8") if backend == "onnx" else OpenVinoBackend(path, "int8")
    if figures is None:
        count = max(HELD_OUT_CROPS, crops.count // 4)
        held_out = CalibrationCrops(config, tile, count=count, data=crops.data, seed=crops.seed, split="val")
        figures = task_accuracy(engine, net, held_out, config.threshold) | {"held_out": held_out.describe()}
        atomic_write_bytes(record, json.dumps(figures).encode())
    if require_accurate and not is_accurate(figures):
        raise BackendError(
            f"int8 crack F1 {figures['f1']:.3f} against fp32's {figures['f1_fp32']:.3f}, mask agreement F1 "
            f"{figures['mask_f1']:.3f} (needs a drop <= {MAX_TASK_F1_DROP} and agreement >= {MIN_MASK_F1})"
        )
    return engine, figures


# --- choosing -----------------------------------------------------------------------------------------------


def auto_candidates(device: str = "cpu") -> list[tuple[str, str]]:
    """(backend, precision) pairs in the order `auto` tries them: fastest first on this kind of CPU.

    Order from benchmarks/predict_speed.py (448², 2 threads): on CPUs with bf16 matrix engines (AMX, PSPNet-
    ResNet18) OpenVINO bf16 ≈ OpenVINO int8 > PyTorch bf16 > fp32, so bf16 goes first (no calibration, closer
    to fp32); on an AVX2-only EPYC (U-Net-ResNet18) OpenVINO int8 > ONNX Runtime int8 > ONNX Runtime fp32 >
    OpenVINO fp32 > PyTorch fp32. An int8 entry is taken only if an int8 model of these weights was calibrated earlier
    (`crackseg export --precision int8`, or an explicit `--precision int8` run) and passed the agreement check.
    """
    if device.startswith("cuda"):
        return [("torch", "bf16"), ("torch", "fp32")]
    if cpu_has_bf16_matrix_engine():
        order = [("openvino", "bf16"), ("openvino", "int8"), ("torch", "bf16")]
    else:
        order = [("openvino", "int8"), ("onnx", "int8"), ("onnx", "fp32"), ("openvino", "fp32")]
    if not nncf_available():
        order = [c for c in order if c != ("openvino", "int8")]
    return order + [("torch", "fp32")]


def build_backend(
    backend: str,
    precision: str,
    weights: Path,
    net: torch.nn.Module,
    config: ModelConfig,
    tile: int,
    device: str = "cpu",
    crops: CalibrationCrops | None = None,
    require_accurate: bool = False,
    calibrate: bool = True,
):
    """One backend engine; raises BackendError (or the library's error) when it cannot be built here."""
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if backend == "torch":
        if precision == "int8":
            raise BackendError("--precision int8 needs --backend onnx or openvino")
        return TorchBackend(net, precision, device)
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r}: expected auto or one of {', '.join(BACKENDS)}")
    if device.startswith("cuda") and backend == "openvino":
        raise BackendError("the openvino backend runs on the CPU only; use --device cpu or --backend onnx/torch")
    if precision == "int8":
        if backend == "openvino" and not nncf_available():
            raise BackendError("openvino int8 needs NNCF: pip install nncf (or use --backend onnx)")
        if backend == "onnx" and device.startswith("cuda"):
            raise BackendError("int8 runs on the CPU only; use --device cpu")
        crops = crops or CalibrationCrops(config, tile)
        return verified_int8(weights, net, config, tile, backend, crops, require_accurate, calibrate)[0]
    onnx_path = cached_onnx(weights, net, config, tile)
    if backend == "onnx":
        if precision == "bf16":
            raise BackendError("the onnx backend runs fp32 or int8; for bf16 use --backend openvino or torch")
        return OnnxBackend(onnx_path, precision, device)
    return OpenVinoBackend(onnx_path, precision)


def choose_backend(backend, precision, weights, net, config, tile, device="cpu", crops=None):
    """Resolve auto backend/precision to the first candidate that builds (and, for int8, was calibrated
    earlier and agrees with fp32: auto never spends minutes calibrating on its own)."""
    candidates = [(b, p) for b, p in auto_candidates(device) if backend in ("auto", b) and precision in ("auto", p)]
    if not candidates:  # e.g. --backend onnx --precision auto on a bf16 CPU: its fp32 path
        candidates = [(backend if backend != "auto" else "torch", precision if precision != "auto" else "fp32")]
    problems = []
    for name, prec in candidates:
        try:
            engine = build_backend(
                name, prec, weights, net, config, tile, device, crops, require_accurate=True, calibrate=False
            )
        except ModelError:  # a broken weights file is no backend's fault: say so, not "no backend could be built"
            raise
        except Exception as err:  # a failing backend must not stop prediction: try the next one
            problems.append(f"{name} {prec} ({err})")
            log.info("auto: %s %s unavailable: %s", name, prec, err)
            continue
        skipped = "; not chosen: " + ", ".join(problems) if problems else ""
        engine.choice = f"auto: the fastest accurate choice here{skipped}"
        log.info("backend %s %s (%s)", engine.name, engine.precision, engine.choice)
        return engine
    raise BackendError("no backend could be built: " + "; ".join(problems))


def build_engine(
    weights: Path,
    net,
    config: ModelConfig,
    tile: int,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "cpu",
    calibration_data=None,
    calibration_crops: int | None = None,
):
    """The engine `CrackSegmenter.from_pretrained` runs: the requested backend and precision, or `auto`'s choice.

    `calibration_data`: crackseg data folder(s) whose training crops calibrate int8 (default: generated).
    """
    data = [calibration_data] if isinstance(calibration_data, (str, Path)) else list(calibration_data or [])
    crops = CalibrationCrops(config, tile, count=calibration_crops or CalibrationCrops.count, data=data)
    if "auto" in (backend, precision):
        return choose_backend(backend, precision, weights, net, config, tile, device, crops)
    return build_backend(backend, precision, weights, net, config, tile, device, crops)
