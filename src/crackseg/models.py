"""Building crack models by name, and saving/loading them as safetensors + a JSON config (`model_config` reads
the config and finds the files without torch).

The network returns one channel of logits at the input's height and width; probabilities are
``sigmoid(logits)``, applied once, by the inference engine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from crackseg.model_config import CONFIG_NAME, WEIGHTS_NAME, ModelConfig, ModelError, read_config, resolve_weights

# Encoder depth each architecture uses by default; deeper encoder stages are removed from the model.
ARCH_DEPTH = {"pspnet": 3}


class CrackNet(nn.Module):
    """An smp segmentation network that accepts any H×W: input is reflect-padded to the network's stride
    and the logits are cropped back."""

    def __init__(self, net: nn.Module, stride: int):
        super().__init__()
        self.net, self.stride = net, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return self.net(x)[..., :h, :w]


def _load_local_encoder_weights(encoder: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: encoder weights file not found")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError(f"{path}: no tensor matches the encoder; expected a torchvision-format state dict")
    encoder.load_state_dict(usable, strict=False)


def build_model(
    arch: str = "pspnet", encoder: str = "resnet18", encoder_weights: str | None = None, **kwargs
) -> CrackNet:
    """Any segmentation-models-pytorch architecture and encoder by name, with one output channel (logits).

    `encoder_weights` is None (random init), "imagenet" (downloaded by smp; needs network access) or a path to a
    torchvision-format state dict (``.pth`` or ``.safetensors``) for offline use.
    """
    # Imported here, not at the top: it pulls in timm, torchvision and torch._dynamo (about 2 s), which commands
    # running a compiled backend from its cache never need (LazyModel).
    import segmentation_models_pytorch as smp

    local = encoder_weights if encoder_weights not in (None, "imagenet") else None
    depth = kwargs.pop("encoder_depth", None) or ARCH_DEPTH.get(arch.lower(), 5)
    try:
        net = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None if local else encoder_weights,
            encoder_depth=depth,
            in_channels=3,
            classes=1,
            **kwargs,
        )
    except (KeyError, ValueError, TypeError) as err:
        raise ModelError(f"cannot build arch={arch!r} encoder={encoder!r}: {err}") from None
    except OSError as err:  # network errors from the weights download are OSErrors
        raise ModelError(
            f"could not download ImageNet weights for {encoder} ({type(err).__name__}); offline, pass a local "
            "torchvision-format state dict instead: --encoder-weights PATH/TO/resnet18.pth"
        ) from None
    except Exception as err:
        if encoder_weights == "imagenet":
            raise ModelError(
                f"could not fetch ImageNet weights for {encoder} ({type(err).__name__}: {err}); offline, pass a "
                "local torchvision-format state dict instead: --encoder-weights PATH/TO/resnet18.pth"
            ) from None
        raise
    # Stages the encoder never runs at this depth would only bloat files and optimizer state.
    for stage in range(depth, 5):
        if hasattr(net.encoder, f"layer{stage}"):
            delattr(net.encoder, f"layer{stage}")
    if local:
        _load_local_encoder_weights(net.encoder, Path(local))
    return CrackNet(net, stride=2**depth)


def model_from_config(config: ModelConfig, encoder_weights: str | None = None) -> CrackNet:
    return build_model(
        config.arch, config.encoder, encoder_weights, encoder_depth=config.encoder_depth, **config.arch_kwargs
    )


def save_model(model: CrackNet, config: ModelConfig, out_dir: str | Path, half: bool = False) -> Path:
    """Write ``model.safetensors`` (config also embedded as metadata) and ``config.json`` atomically."""
    from safetensors.torch import save as save_bytes

    from crackseg.images import atomic_write_bytes

    out_dir = Path(out_dir)
    dtype = torch.float16 if half else None
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    config_json = config.to_json()
    atomic_write_bytes(out_dir / WEIGHTS_NAME, save_bytes(state, metadata={"crackseg_config": config_json}))
    atomic_write_bytes(out_dir / CONFIG_NAME, config_json.encode())
    return out_dir


def load_model(weights: str | Path | None = None, model: str | None = None) -> tuple[CrackNet, ModelConfig]:
    """Load a model (safetensors, or a legacy .pth through ``torch.load(weights_only=True)``) in eval mode."""
    path = resolve_weights(weights, model)
    config = read_config(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state.get("state_dict", state))
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{path}: not a crackseg model file ({type(err).__name__}: {err})") from None
    net = model_from_config(config)
    if not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a bare smp state dict
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise ModelError(
            f"{path}: weights do not match the config (arch={config.arch}, encoder={config.encoder}): "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors, e.g. {first}"
        )
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval(), config


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
