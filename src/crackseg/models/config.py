"""A model's config, where the shipped models live, and finding and reading a model's files, all without torch.

Every command but `train` runs from this and `onnx_file` where torch is not installed (the core install), and
does not import torch where it is: importing it costs a second at each start. Building the network is `networks`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from crackseg import __version__
from crackseg.errors import CracksegError
from crackseg.io.images import IMAGENET_MEAN, IMAGENET_STD

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
DEFAULT_MODEL = "unet-lite0"
CONFIG_NAME, WEIGHTS_NAME, ONNX_NAME = "config.json", "model.safetensors", "model.onnx"


class ModelError(CracksegError):
    """A model file or model name cannot be used; the message says which and what to do."""


@dataclass
class ModelConfig:
    arch: str = "pspnet"
    encoder: str = "resnet18"
    encoder_depth: int | None = None
    arch_kwargs: dict = field(default_factory=dict)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    train_size: int = 448
    tile: int | None = None  # the tile inference cuts photos into by default (`inference_tile`)
    threshold: float = 0.5
    name: str = ""
    version: str = __version__
    notes: dict = field(default_factory=dict)

    @property
    def inference_tile(self) -> int:
        """The tile size a photo is cut into unless one is asked for: the model's own (the map moves with the tile,
        so a model pins the one its threshold was chosen in), else its training size."""
        return self.tile or self.train_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ModelError(f"unknown model config fields {sorted(unknown)}; is this a crackseg config.json?")
        values = dict(values)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def read_config(weights: Path) -> ModelConfig:
    """The config of a weights file. The folder's config.json wins when present (so an edited threshold counts),
    and an invalid one is an error that names it; else the config embedded in a crackseg ONNX or safetensors file;
    else (a legacy .pth from the original project) the PSPNet-ResNet18 defaults."""
    sidecar = weights.parent / CONFIG_NAME
    if sidecar.is_file():
        try:
            return ModelConfig.from_dict(json.loads(sidecar.read_text()))
        except Exception as err:
            raise ModelError(
                f"{sidecar}: invalid model config ({type(err).__name__}: {err}); fix it, or delete it to use the "
                "config stored in the weights file"
            ) from None
    if weights.suffix == ".onnx":
        from crackseg.models import onnx_file

        return onnx_file.read_config(weights)
    if weights.suffix != ".safetensors":
        return ModelConfig()
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            embedded = (f.metadata() or {}).get("crackseg_config")
        return ModelConfig.from_dict(json.loads(embedded)) if embedded else ModelConfig()
    except Exception as err:
        raise ModelError(f"{weights}: not a crackseg model file ({type(err).__name__}: {err})") from None


WEIGHTS_SUFFIXES = (".safetensors", ".onnx", ".pth", ".pt")


def model_file(folder: Path) -> Path | None:
    """A model folder's file: its PyTorch weights, or the ONNX export beside them where PyTorch is not installed
    (both hold the same network; only the ONNX file runs without torch)."""
    from crackseg.extras import has_torch

    names = (WEIGHTS_NAME, ONNX_NAME) if has_torch() else (ONNX_NAME, WEIGHTS_NAME)
    return next((folder / name for name in names if (folder / name).is_file()), None)


def resolve_weights(weights: str | Path | None = None, model: str | None = None) -> Path:
    """The model file for a path (file or run/model folder) or a shipped model name (default: the default)."""
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            found = model_file(path) or model_file(path / "best")
            if found is None:
                raise ModelError(
                    f"{path}: no {WEIGHTS_NAME} or {ONNX_NAME} in this folder (or its best/); pass a crackseg model"
                )
            return found
        if not path.is_file():
            raise ModelError(f"{path}: weights file not found")
        if path.suffix.lower() not in WEIGHTS_SUFFIXES:
            raise ModelError(
                f"{path}: not a model file; pass a model folder, its {WEIGHTS_NAME} or {ONNX_NAME}, or a .pth/.pt "
                "state dict"
            )
        return path
    name = model or DEFAULT_MODEL
    path = WEIGHTS_DIR / name / ONNX_NAME
    if not path.is_file():
        shipped = sorted(p.parent.name for p in WEIGHTS_DIR.glob(f"*/{ONNX_NAME}"))
        raise ModelError(
            f"no shipped model named {name!r} (shipped: {', '.join(shipped) or 'none yet'}); "
            "pass --weights PATH to a trained model"
        )
    return path
