"""Inference engines: PyTorch, ONNX Runtime and OpenVINO, in fp32, bf16 or int8, and `auto`'s choice among them.

Every engine follows the `Backend` interface (`engines.base`): a callable from a float32 N×3×T×T normalised batch
to N×T×T logits, with `name`, `precision` and `fixed_size`. `CrackSegmenter.from_pretrained` is the one caller
that builds them (through `build_engine`), so the CLI, the server and the Python API run the same engine.

Adding a backend: one module with a `build(handle, precision, tile, device, crops, **int8_options)` function,
one entry in `REGISTRY` (the CLI's `--backend` choices are read from it), a place in `auto_candidates` if `auto`
should measure it, and its tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

from crackseg.engines import auto, onnxruntime_engine, openvino_engine, torch_engine
from crackseg.engines.base import Backend, BackendError, cpu_has_bf16_matrix_engine
from crackseg.engines.cache import MAX_EXPORT_DIFF, export_onnx
from crackseg.engines.handle import ModelHandle
from crackseg.engines.int8 import CALIBRATION_CROPS, CalibrationCrops, int8_cache_path, nncf_available
from crackseg.errors import InputError, OutputExistsError
from crackseg.extras import has_torch
from crackseg.io.atomic import atomic_write_bytes
from crackseg.models import onnx_file
from crackseg.models.config import ModelError

log = logging.getLogger(__name__)

REGISTRY = {"torch": torch_engine.build, "onnx": onnxruntime_engine.build, "openvino": openvino_engine.build}
PRECISIONS = ("fp32", "bf16", "int8")
INT8_OPENERS = {"onnx": onnxruntime_engine.open_int8, "openvino": openvino_engine.open_int8}

__all__ = ["REGISTRY", "PRECISIONS", "Backend", "BackendError", "ModelHandle", "build_engine", "export_model"]


def auto_candidates(device: str = "cpu") -> list[tuple[str, str]]:
    """(backend, precision) pairs `auto` measures here (`engines.auto`), in the order it falls back to when timing
    fails.

    fp32 engines always qualify; bf16 where it is accurate and fast (CUDA, CPUs with bf16 matrix engines: AMX,
    AVX-512 BF16); int8 only if an int8 model of these weights was calibrated earlier (`crackseg export
    --precision int8`, or an explicit `--precision int8` run, in any install sharing the engine cache) and passed
    the task-accuracy rule (`engines.int8`).
    The fallback order is that of benchmarks/predict_speed.py (448², 2 threads) on each kind of CPU.
    """
    if device.startswith("cuda"):
        return [("torch", "bf16"), ("torch", "fp32")]
    if cpu_has_bf16_matrix_engine():
        order = [("openvino", "int8"), ("openvino", "bf16"), ("torch", "bf16"), ("onnx", "int8")]
        order += [("openvino", "fp32"), ("onnx", "fp32")]
    else:
        order = [("openvino", "int8"), ("onnx", "int8"), ("onnx", "fp32"), ("openvino", "fp32")]
    if not has_torch():
        return [c for c in order if c[0] != "torch"]
    return order + [("torch", "fp32")]


def build_backend(
    backend: str,
    precision: str,
    handle: ModelHandle,
    tile: int,
    device: str = "cpu",
    crops: CalibrationCrops | None = None,
    require_accurate: bool = False,
    calibrate: bool = True,
):
    """One engine; raises BackendError (or the library's error) when it cannot be built here."""
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if backend not in REGISTRY:
        raise BackendError(f"backend {backend!r}: expected auto or one of {', '.join(REGISTRY)}")
    int8_options = {"require_accurate": require_accurate, "calibrate": calibrate}
    return REGISTRY[backend](handle, precision, tile, device, crops, **int8_options)


def build_candidate(name: str, precision: str, handle: ModelHandle, tile: int, device: str, crops):
    """(engine, None), or (None, why it cannot run here). int8 runs only a model calibrated earlier that passed
    the accuracy rule: `auto` never spends minutes calibrating on its own."""
    try:
        engine = build_backend(name, precision, handle, tile, device, crops, require_accurate=True, calibrate=False)
    except ModelError:  # a broken weights file is no backend's fault: say so, not "no backend could be built"
        raise
    except Exception as err:  # a failing backend must not stop prediction: another one runs
        log.info("auto: %s %s unavailable: %s", name, precision, err)
        return None, str(err)
    return engine, None


def choose_backend(
    backend: str, precision: str, handle: ModelHandle, tile: int, device="cpu", crops=None, batch_size: int = 4
):
    """Resolve auto backend/precision to the candidate measured fastest here, measured on first use and then read
    from the cache (`engines.auto`)."""
    candidates = [(b, p) for b, p in auto_candidates(device) if backend in ("auto", b) and precision in ("auto", p)]
    if not candidates:  # e.g. --backend onnx --precision auto on a bf16 CPU: its fp32 path
        candidates = [(backend if backend != "auto" else "torch", precision if precision != "auto" else "fp32")]
    if len(candidates) == 1:
        engine, problem = build_candidate(*candidates[0], handle, tile, device, crops)
        if engine is None:
            raise BackendError(f"no backend could be built: {auto.label(*candidates[0])} ({problem})")
        engine.choice = "auto: the only candidate here"
        return engine
    key = auto.choice_key(handle, tile, batch_size, device, candidates)
    record = auto.read_choice(key)
    if record is not None:
        engine, problem = build_candidate(*record["choice"].split(" "), handle, tile, device, crops)
        if engine is not None:
            engine.choice = auto.describe_choice(record)
            return engine
        log.info(
            "auto: the engine measured fastest earlier, %s, fails now (%s): measuring again", record["choice"], problem
        )
    return measure_candidates(candidates, key, handle, tile, device, crops, batch_size)


def measure_candidates(candidates, key, handle: ModelHandle, tile: int, device: str, crops, batch_size: int):
    """Build and time each candidate, keep the fastest (only it stays loaded) and record the choice under `key`.
    When no timing succeeds, the first candidate that builds runs, and says so."""
    speeds, unavailable, timing_errors = {}, {}, {}
    best = fallback = None
    for name, precision in candidates:
        label = auto.label(name, precision)
        engine, problem = build_candidate(name, precision, handle, tile, device, crops)
        if engine is None:
            unavailable[label] = problem
            continue
        try:
            speeds[label] = auto.measure_speed(engine, tile, batch_size, speeds[best] if best else None)
        except Exception as err:  # an engine that cannot be timed is not ranked; prediction goes on without it
            log.info("auto: timing %s failed: %s", label, err)
            timing_errors[label], fallback = str(err), fallback or engine
            continue
        if best is None or speeds[label] > speeds[best]:
            best, chosen = label, engine
    if best is not None:
        unavailable |= {label: f"timing failed: {err}" for label, err in timing_errors.items()}
        record = {"choice": best, "speeds": speeds, "unavailable": unavailable}
        auto.write_choice(key, record)
        chosen.choice = auto.describe_choice(record)
        return chosen
    if fallback is not None:  # not recorded: the next run measures again
        errors = "; ".join(f"{label}: {err}" for label, err in timing_errors.items())
        fallback.choice = f"auto: timing failed ({errors}), so the first that builds in the fixed order"
        fallback.choice += auto.unavailable_text(unavailable)
        return fallback
    raise BackendError("no backend could be built: " + "; ".join(f"{n} ({why})" for n, why in unavailable.items()))


def build_engine(
    handle: ModelHandle,
    tile: int,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "cpu",
    calibration_data=None,
    calibration_crops: int | None = None,
    batch_size: int = 4,
):
    """The engine `CrackSegmenter.from_pretrained` runs: the requested backend and precision, or `auto`'s choice.

    `calibration_data`: crackseg data folder(s) whose training crops calibrate int8 (default: generated).
    `batch_size`: tiles per call, the batch `auto` times the candidates at.
    """
    data = [calibration_data] if isinstance(calibration_data, (str, Path)) else list(calibration_data or [])
    crops = CalibrationCrops(handle.config, tile, count=calibration_crops or CALIBRATION_CROPS, data=data)
    if "auto" in (backend, precision):
        return choose_backend(backend, precision, handle, tile, device, crops, batch_size)
    return build_backend(backend, precision, handle, tile, device, crops)


def export_model(
    weights=None,
    model=None,
    out: str | Path = "model.onnx",
    tile: int | None = None,
    precision: str = "fp32",
    calibration_data=None,
    calibration_crops: int = CALIBRATION_CROPS,
    overwrite: bool = False,
) -> tuple[Path, str]:
    """`crackseg export`: write the model as ONNX to `out`, a `.onnx` file that is not there yet (or replaced with
    `overwrite`) and never the model's own file.

    fp32 writes the crackseg ONNX file (`models.onnx_file`): it runs on every engine, without torch, at any tile size
    where the network allows (else at `tile`), and PyTorch can load it back. int8 writes ONNX Runtime's int8 QDQ
    model at `tile`, also prepares OpenVINO's int8 model in the cache (when NNCF is installed) and judges both by the
    task-accuracy rule: `auto` uses an int8 model only when it was made this way (or by an explicit --precision int8
    run) and passed. With calibration data, cached int8 models calibrated otherwise are replaced. Returns (path, a
    summary).
    """
    from crackseg.engines.int8 import cached_int8, is_accurate, verified_int8

    handle = ModelHandle.find(weights, model)
    check_export_target(Path(out), overwrite, handle.path)
    tile = int(tile or handle.config.inference_tile)
    if precision == "fp32":
        data = portable_model(handle, tile)
        fixed = onnx_file.input_size(onnx_file.load(data))
        sizes = f"tiles of {fixed} px only" if fixed else "any tile that is a multiple of 32"
        summary = f"fp32, {sizes}, max |Δlogit| vs PyTorch < {MAX_EXPORT_DIFF:g} × the largest |logit|"
    elif precision == "int8":
        data = [calibration_data] if isinstance(calibration_data, (str, Path)) else calibration_data
        crops = CalibrationCrops(handle.config, tile, count=calibration_crops, data=list(data or []))
        summary = f"int8 QDQ, tile {tile}, calibrated on {crops.describe()}; on held-out crops"
        for backend in ("onnx", "openvino") if nncf_available() else ("onnx",):
            if crops.data:  # replaces a cached int8 model calibrated on other crops
                cached_int8(handle, tile, backend, crops, refresh=True)
            _, figures = verified_int8(handle, tile, backend, crops, INT8_OPENERS[backend])
            verdict = "passes" if is_accurate(figures) else "fails"
            summary += (
                f"; {backend}: crack F1 {figures['f1']:.4f} (fp32 {figures['f1_fp32']:.4f}), mask agreement F1 "
                f"{figures['mask_f1']:.4f}, p99.9 |Δp| {figures['p999']:.4f}: {verdict}"
            )
        data = int8_cache_path(handle, tile, "onnx").read_bytes()
    else:
        raise InputError(f"--precision {precision!r}: export writes fp32 or int8 ONNX")
    atomic_write_bytes(out, data)
    return Path(out), summary


def portable_model(handle: ModelHandle, tile: int) -> bytes:
    """The crackseg ONNX file of a model: its own when it is one, else exported from its PyTorch weights; either way
    with the config its folder gives (threshold, tile), so the file alone runs as the model did."""
    if not onnx_file.is_onnx(handle.path):
        return export_onnx(handle.network, handle.config, tile)
    model = onnx_file.load(handle.path)
    onnx_file.set_metadata(model, {onnx_file.CONFIG_KEY: handle.config.to_json()})
    return model.SerializeToString()


def check_export_target(out: Path, overwrite: bool, model_path: Path) -> None:
    """Refuse, before any work, an -o that would replace a photo or the model's own files (only a .onnx name is
    written) or an earlier export unasked."""
    if out.resolve() == model_path.resolve():
        raise InputError(f"-o {out}: is the model being exported; choose another name")
    if out.is_dir():
        raise InputError(f"-o {out}: is a folder; name the ONNX file to write, e.g. -o {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise InputError(
            f"-o {out}: export writes an ONNX model; name a .onnx file, e.g. -o {out.with_suffix('.onnx')}"
        )
    if out.exists() and not overwrite:
        raise OutputExistsError(f"-o {out}: is there already; add --overwrite to replace it, or choose another name")
