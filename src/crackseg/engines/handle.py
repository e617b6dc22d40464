"""A model on disk as the engines see it: its weights file, config and hash, and its network on first use."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from crackseg.extras import require_torch
from crackseg.models.config import ModelConfig, read_config, resolve_weights


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


@dataclass
class ModelHandle:
    """The weights file, its config and its hash; the torch network is built only when an engine needs it.

    Running a cached ONNX / OpenVINO export needs neither the network nor torch and
    segmentation-models-pytorch (slow to import), so only exporting, calibrating and the torch engine ask for `network`.
    """

    path: Path
    config: ModelConfig = field(default=None)  # read from the file when not given

    def __post_init__(self):
        self.path = Path(self.path)
        if self.config is None:
            self.config = read_config(self.path)

    @classmethod
    def find(cls, weights: str | os.PathLike | None = None, model: str | None = None) -> ModelHandle:
        """A weights path (file or model/run folder) or a shipped model name (default: the default model)."""
        return cls(resolve_weights(weights, model))

    @property
    def sha256(self) -> str:
        return weights_sha256(self.path)

    @property
    def cache_key(self) -> str:
        """The weights' hash and the network the config describes: a folder whose config.json names another
        architecture gets its own cache entry, so the export (which builds the network) refuses the mismatch."""
        fields = ("arch", "encoder", "encoder_depth", "arch_kwargs", "mean", "std")
        network = {name: getattr(self.config, name) for name in fields}
        text = self.sha256 + json.dumps(network, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @functools.cached_property
    def network(self):
        require_torch(f"{self.path.name}: exporting or loading PyTorch weights")
        from crackseg.models.networks import load_model  # here: `models` imports torch

        return load_model(self.path)[0]
