"""OpenVINO on the CPU: the exported ONNX in fp32 or bf16, or an NNCF-quantized int8 IR."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crackseg.engines.base import BackendError, cpu_has_bf16_matrix_engine, default_threads
from crackseg.engines.cache import cache_dir, cached_onnx, save_openvino_model

if TYPE_CHECKING:
    from crackseg.engines.handle import ModelHandle


class OpenVinoBackend:
    """OpenVINO on the CPU, reading the exported ONNX (fp32/bf16) or an NNCF-quantized IR (int8).

    bf16 inference is requested only where the CPU has bf16 matrix engines (AMX / AVX-512 BF16), unless asked
    for explicitly. Compiled models are cached by OpenVINO under the crackseg cache folder.
    """

    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None):
        import openvino as ov

        self._core = ov.Core()
        self._core.set_property({"CACHE_DIR": str(cache_dir() / "openvino")})
        bf16 = precision == "bf16" or (precision == "int8" and cpu_has_bf16_matrix_engine())
        self._config = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",  # one stream using all threads: tiles arrive one batch at a time
            "INFERENCE_NUM_THREADS": threads or default_threads(),
        }
        path = Path(path)
        source = path / "model.xml" if path.is_dir() else path
        self._stamp = source.stat().st_mtime_ns  # of the source as read
        self._model = self._core.read_model(str(source))
        self._compiled = {}  # batch size -> the model compiled for it
        self._asked = set()  # batch sizes asked for
        self._lock = threading.Lock()
        self._local = threading.local()  # an infer request serves one call at a time: one per thread and size
        self.precision, self.path = precision, path
        self.fixed_size = int(self._model.input(0).get_partial_shape()[3].get_length())

    def compiled(self, batch: int):
        """The model compiled for batches of `batch` tiles. With every dimension fixed, OpenVINO folds the graph's
        shape arithmetic away and picks faster kernels than for a free batch size. Each size is saved once as its
        own model beside the source (`static_path`): OpenVINO's cache finds a compiled model from a file by its
        path, while a model in memory must be hashed whole first, which took longer than the compiling saved."""
        with self._lock:
            if batch not in self._compiled:
                static = self.static_path(batch)
                if not static.is_file():
                    self._save_static(batch, static)
                self._compiled[batch] = self._core.compile_model(str(static), "CPU", self._config)
            return self._compiled[batch]

    def static_path(self, batch: int) -> Path:
        """Where the model with a fixed batch size lives: beside the source, named by the source's modification
        time as well, so a source made again (an int8 model calibrated again) never runs an older fixed copy."""
        return self.path.parent / f"{self.path.name}.batch{batch}-{self._stamp}" / "model.xml"

    def _save_static(self, batch: int, static: Path) -> None:
        model = self._model.clone()
        model.reshape([batch, 3, self.fixed_size, self.fixed_size])
        save_openvino_model(model, static.parent)
        for stale in static.parent.parent.glob(f"{self.path.name}.batch{batch}-*"):
            if stale != static.parent:  # the copy of a source made before this one: nothing runs it any more
                shutil.rmtree(stale, ignore_errors=True)

    def size_for(self, count: int) -> int:
        """The batch size `count` tiles run at. A size asked for the first time runs padded with blank tiles on the
        smallest size compiled already that holds it (a photo's last, smaller batch: compiling takes longer than the
        blank tiles); asked again, it is compiled, so a caller that keeps to one size never pays for padding."""
        with self._lock:
            if count in self._compiled or count in self._asked:
                return count
            self._asked.add(count)
            return min((size for size in self._compiled if size >= count), default=count)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        size = self.size_for(count)
        requests = self._local.__dict__.setdefault("requests", {})
        if size not in requests:
            requests[size] = self.compiled(size).create_infer_request()
        if size > count:
            batch = np.concatenate([batch, np.zeros((size - count, *batch.shape[1:]), batch.dtype)])
        out = requests[size].infer({0: np.ascontiguousarray(batch, np.float32)})[0]
        return out[:count, 0].copy()  # the request reuses its output buffer on the next call


def open_int8(path: Path) -> OpenVinoBackend:
    return OpenVinoBackend(path, "int8")


def build(handle: ModelHandle, precision: str, tile: int, device: str, crops=None, **int8_options) -> OpenVinoBackend:
    if device.startswith("cuda"):
        raise BackendError("the openvino backend runs on the CPU only; use --device cpu or --backend onnx/torch")
    if precision == "int8":
        from crackseg.engines.int8 import int8_cache_path, nncf_available, verified_int8

        # Running an int8 model needs OpenVINO only; NNCF is needed to calibrate one, which happens once per
        # machine and model (the core install runs one that the full install calibrated into the shared cache).
        if not nncf_available() and not int8_cache_path(handle, tile, "openvino").exists():
            raise BackendError(
                "openvino int8: not calibrated here yet, and calibrating needs NNCF: pip install 'crackseg[int8]' "
                "(or use --backend onnx)"
            )
        return verified_int8(handle, tile, "openvino", crops, open_int8, **int8_options)[0]
    return OpenVinoBackend(cached_onnx(handle, tile), precision)
