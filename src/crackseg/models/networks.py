"""Building crack models by name, and saving/loading them as safetensors + a JSON config (`model_config` reads
the config and finds the files without torch).

The network returns one channel of logits at the input's height and width; probabilities are
``sigmoid(logits)``, applied once, by the inference engine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crackseg.models.config import CONFIG_NAME, WEIGHTS_NAME, ModelConfig, ModelError, read_config, resolve_weights
from crackseg.models.pretrained import (
    INSTALLED_WEIGHTS,
    is_counter,
    load_installed_weights,
    load_local_weights,
    read_state_dict,
)

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


def drop_unused_modules(module: nn.Module, example: torch.Tensor) -> list[str]:
    """Replace the submodules that a forward pass of `example` never calls by ``nn.Identity``; return their names.

    Encoders keep stages (and, in timm's EfficientNets, a classifier's ``conv_head``) that a shallower
    ``encoder_depth`` never runs; they would only bloat files and optimizer state. Found by running the module,
    so it works for every encoder, whatever its stages are called.
    """
    called: set[nn.Module] = set()
    hooks = [m.register_forward_hook(lambda m, _i, _o: called.add(m)) for m in module.modules()]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    # A container indexed by its parent (timm's `blocks[0](x)`) is never called itself: it counts as used when
    # anything inside it ran.
    ran = [name + "." for name, m in module.named_modules() if m in called]
    dropped = []
    for name, child in list(module.named_modules()):
        if not name or any(r.startswith(name + ".") for r in ran) or any(name.startswith(d + ".") for d in dropped):
            continue
        if any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, nn.Identity())
            dropped.append(name)
    return dropped


def build_model(
    arch: str = "pspnet", encoder: str = "resnet18", encoder_weights: str | None = None, **kwargs
) -> CrackNet:
    """Any segmentation-models-pytorch architecture and encoder by name, with one output channel (logits).

    `encoder_weights` is None (random init), "imagenet" (from an installed weights package where one is known for
    the encoder, see `pretrained`; else smp's download, which needs network access) or a path to a state dict in
    the encoder's own naming (``.pth`` or ``.safetensors``, e.g. torchvision's ResNet weights).
    """
    # Imported here, not at the top: it pulls in timm, torchvision and torch._dynamo, slow to import, which commands
    # running a compiled backend from its cache never need (engines.ModelHandle).
    import segmentation_models_pytorch as smp

    local = encoder_weights if encoder_weights not in (None, "imagenet") else None
    installed = encoder_weights == "imagenet" and encoder in INSTALLED_WEIGHTS
    depth = kwargs.pop("encoder_depth", None) or ARCH_DEPTH.get(arch.lower(), 5)
    try:
        net = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None if local or installed else encoder_weights,
            encoder_depth=depth,
            in_channels=3,
            classes=1,
            **kwargs,
        )
    except (KeyError, ValueError, TypeError) as err:
        raise ModelError(f"cannot build arch={arch!r} encoder={encoder!r}: {err}") from None
    except Exception as err:  # smp's download: offline it fails with an OSError or a hub error
        if encoder_weights != "imagenet":
            raise
        raise ModelError(
            f"could not fetch ImageNet weights for {encoder} ({type(err).__name__}); offline, use an encoder whose "
            f"weights install as a package ({', '.join(INSTALLED_WEIGHTS)}) or pass a local state dict: "
            "--encoder-weights PATH"
        ) from None
    if installed:
        load_installed_weights(net.encoder, encoder)
    elif local:
        load_local_weights(net.encoder, local)
    drop_unused_modules(net.encoder, torch.zeros(1, 3, 64, 64))
    return CrackNet(net, stride=2**depth)


def model_from_config(config: ModelConfig, encoder_weights: str | None = None) -> CrackNet:
    return build_model(
        config.arch, config.encoder, encoder_weights, encoder_depth=config.encoder_depth, **config.arch_kwargs
    )


def save_model(model: CrackNet, config: ModelConfig, out_dir: str | Path, half: bool = False) -> Path:
    """Write ``model.safetensors`` (config also embedded as metadata) and ``config.json`` atomically."""
    from safetensors.torch import save as save_bytes

    from crackseg.io.atomic import atomic_write_bytes

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
    state = read_state_dict(path)
    net = model_from_config(config)
    if not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a bare smp state dict
    own = net.state_dict()
    if path.suffix == ".onnx":  # an export also holds the graph's own constants, and no batch-norm step counters
        state = {k: state.get(k, v) for k, v in own.items() if k in state or is_counter(k)}
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
