"""`auto`'s choice by measurement: time every engine that may run here and keep the fastest, once per machine.

Which engine is fastest depends on the CPU, the thread count, the runtimes' versions and the network, so no fixed
order holds everywhere: one measured on an AVX2 CPU put ONNX Runtime fp32 first, and on another AVX2 CPU OpenVINO
fp32 was the faster. So `auto` builds each candidate, runs a few batches of a fixed random input at the tile and
batch size it will run, and takes the fastest. The timings and the choice are kept in the engine cache folder
(``auto-*.json``), keyed by everything that can change the answer, so later runs build only the chosen engine;
deleting those files makes `auto` measure again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from crackseg.engines.base import ISA_CAP_VARIABLE, default_threads
from crackseg.engines.cache import EXPORT_FORMAT, cache_dir
from crackseg.engines.handle import ModelHandle
from crackseg.engines.int8 import int8_cache_path
from crackseg.io.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-gpu", "openvino")  # distributions whose version can change speed
MAX_TIMED_BATCHES, MIN_TIMED_BATCHES = 5, 2
FAR_SLOWER = 2  # an engine this many times slower than the best so far after its warm-up is not timed further
TIMING_SECONDS = 1.0  # per engine: enough batches for a steady median, few enough that slow engines cost little


def label(backend: str, precision: str) -> str:
    return f"{backend} {precision}"


def cpu_identity() -> dict[str, object]:
    """The CPU's model name, a hash of its feature flags and its core count (platform's names off Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)  # the last core's, as all cores match
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags") or fields.get("Features") or ""  # x86 / Arm
    identity = {"model": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16], "cores": os.cpu_count()}
    if os.environ.get(ISA_CAP_VARIABLE):  # the engines' speeds change with the cap
        identity["isa_cap"] = os.environ[ISA_CAP_VARIABLE]
    return identity


def runtime_versions() -> dict[str, str]:
    """Installed versions of the runtimes, read from package metadata (importing them would cost seconds)."""
    versions = {}
    for name in RUNTIMES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch  # only CUDA devices need it, and their engine imports it anyway

    return torch.cuda.get_device_name(torch.device(device))


def verdict_hash(handle: ModelHandle, tile: int, backend: str) -> str | None:
    """A hash of the int8 accuracy record of a model (None: none yet): a new verdict means measuring again."""
    record = Path(f"{int8_cache_path(handle, tile, backend)}.agreement.json")
    return hashlib.sha256(record.read_bytes()).hexdigest()[:16] if record.is_file() else None


def choice_key(
    handle: ModelHandle, tile: int, batch_size: int, device: str, candidates: list[tuple[str, str]]
) -> dict[str, object]:
    """Everything the measured choice depends on: model, tile, batch size, device, CPU, threads, runtimes, and
    the candidates with the int8 verdicts that decide whether an int8 model may run."""
    return {
        "model": handle.cache_key,
        "tile": tile,
        "batch_size": batch_size,
        "device": device,
        "gpu": gpu_name(device),
        "cpu": cpu_identity(),
        "threads": default_threads(),
        "runtimes": runtime_versions(),
        "export_format": EXPORT_FORMAT,
        "candidates": [label(*candidate) for candidate in candidates],
        "int8_verdicts": {label(b, p): verdict_hash(handle, tile, b) for b, p in candidates if p == "int8"},
    }


def choice_path(key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / f"auto-{digest}.json"


def read_choice(key: dict[str, object]) -> dict | None:
    """The choice measured earlier under this key, or None."""
    try:
        record = json.loads(choice_path(key).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("choice") not in record.get("speeds", {}):
        return None  # a hash collision, or a record of another shape
    return record


def write_choice(key: dict[str, object], record: dict) -> None:
    try:
        atomic_write_bytes(choice_path(key), json.dumps({"key": key, **record}, indent=1).encode())
    except OSError as err:  # an unwritable cache costs a measurement next time, not this prediction
        log.warning("auto: could not keep the measured choice in %s: %s", cache_dir(), err)


def measure_speed(engine, tile: int, batch_size: int, to_beat: float | None = None) -> float:
    """Images per second of `engine` on batches of a fixed random input: the median of a few timed batches after
    an untimed warm-up. An engine whose first timed batch shows it far slower than `to_beat` (the best so far) is
    not timed further, as a slow engine's batches are what make measuring long. The warm-up alone cannot tell: an
    engine's first call (OpenVINO compiling for bf16, say) can take several times a later one."""
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, tile, tile), dtype=np.float32)
    engine(batch)  # first calls allocate, pick kernels and compile lazily: not counted
    seconds: list[float] = []
    while len(seconds) < MAX_TIMED_BATCHES and (len(seconds) < MIN_TIMED_BATCHES or sum(seconds) < TIMING_SECONDS):
        start = time.perf_counter()
        engine(batch)
        seconds.append(time.perf_counter() - start)
        if to_beat is not None and batch_size / seconds[0] * FAR_SLOWER < to_beat:
            break
    return batch_size / statistics.median(seconds)


def describe_choice(record: dict) -> str:
    """Why `auto` took the engine it took: the speeds measured here, and why other candidates did not run."""
    speeds, choice = record["speeds"], record["choice"]
    ranked = sorted(speeds.items(), key=lambda item: -item[1])
    others = ", ".join(f"{name} {speed_text(speed)}" for name, speed in ranked if name != choice)
    why = "the fastest measured here" if others else "the only engine that runs here"
    text = f"auto: {why}, {speed_text(speeds[choice])} img/s" + (f"; {others}" if others else "")
    return text + unavailable_text(record.get("unavailable", {}))


def speed_text(speed: float) -> str:
    return f"{speed:.0f}" if speed >= 100 else f"{speed:.3g}"


def unavailable_text(unavailable: dict[str, str]) -> str:
    """Why candidates did not run, as "; unavailable: NAME, NAME (WHY), ...": one reason for those that share it."""
    if not unavailable:
        return ""
    by_reason: dict[str, list[str]] = {}
    for name, why in unavailable.items():
        by_reason.setdefault(why, []).append(name)
    return "; unavailable: " + ", ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
