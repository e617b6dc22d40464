"""Narrowing a trained U-Net decoder to fewer channels, keeping the channels that carry the most.

A student with a slimmer decoder (`--arch-kwargs '{"decoder_channels": [...]}'`) fine-tuned from a trained model
starts closer to it from the trained decoder's strongest channels than from a random decoder. A channel's
weight is the size of its batch-norm scale (what reaches the ReLU) times the size of the weights that read it in
the next layer (what the network makes of it): network slimming's criterion, corrected for the consumer. The head
scores crack with some channels and background with others (the signs of its weights): both kinds are kept, in the
share the trained decoder has of them, or a narrow head could only say background. What the dropped channels
added to the head on average (their batch norm makes each roughly a ReLU of a normal variable) moves into its bias.
"""

from __future__ import annotations

import torch

BLOCKS = "net.decoder.blocks"
HEAD = "net.segmentation_head.0"


def narrow_unet_decoder(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`source` with each U-Net decoder tensor cut to `target`'s width where `target` is narrower.

    Tensors outside the decoder, and decoders of the same width, are returned unchanged; a source that is not a
    U-Net of the same depth is returned as it is (the caller then copies what matches by name and shape).
    """
    convs = decoder_convs(source)
    if not convs or convs != decoder_convs(target) or f"{HEAD}.weight" not in source:
        return source
    widths = [(target[f"{c}.0.weight"].shape[0], source[f"{c}.0.weight"].shape[0]) for c in convs]
    if any(wanted > there for wanted, there in widths) or all(wanted == there for wanted, there in widths):
        return source  # a wider decoder has nothing to keep channels from; one as wide keeps them all
    narrowed = dict(source)
    kept_inputs = None  # the previous conv's kept output channels: the first inputs of the next conv
    for index, prefix in enumerate(convs):
        weight = source[f"{prefix}.0.weight"]
        reader = source[f"{convs[index + 1]}.0.weight" if index + 1 < len(convs) else f"{HEAD}.weight"]
        inputs = input_channels(weight.shape[1], kept_inputs, source_width(source, convs, index))
        scale, count = source[f"{prefix}.1.weight"], target[f"{prefix}.0.weight"].shape[0]
        pick = strongest_channels if index + 1 < len(convs) else head_channels
        keep = pick(scale, reader, count)
        narrowed[f"{prefix}.0.weight"] = weight[keep][:, inputs]
        for name in ("weight", "bias", "running_mean", "running_var"):
            narrowed[f"{prefix}.1.{name}"] = source[f"{prefix}.1.{name}"][keep]
        kept_inputs = keep
    narrowed[f"{HEAD}.weight"] = source[f"{HEAD}.weight"][:, kept_inputs]
    if f"{HEAD}.bias" in source:
        narrowed[f"{HEAD}.bias"] = source[f"{HEAD}.bias"] + dropped_mean(source, convs[-1], kept_inputs)
    return narrowed


def decoder_convs(state: dict[str, torch.Tensor]) -> list[str]:
    """The decoder's convolutions in the order they run: ``BLOCKS.i.conv1`` and ``BLOCKS.i.conv2`` per block."""
    convs, block = [], 0
    while f"{BLOCKS}.{block}.conv1.0.weight" in state:
        convs += [f"{BLOCKS}.{block}.conv1", f"{BLOCKS}.{block}.conv2"]
        block += 1
    return convs


def source_width(state: dict[str, torch.Tensor], convs: list[str], index: int) -> int | None:
    """How many of conv `index`'s inputs come from the previous conv (the rest are the encoder's skip)."""
    return state[f"{convs[index - 1]}.0.weight"].shape[0] if index else None


def input_channels(count: int, kept_previous: torch.Tensor | None, previous_width: int | None) -> torch.Tensor:
    """A conv's inputs to keep: the previous conv's kept channels, then every skip channel from the encoder."""
    if kept_previous is None:
        return torch.arange(count)
    return torch.cat([kept_previous, torch.arange(previous_width, count)])


def head_channels(scale: torch.Tensor, head: torch.Tensor, count: int) -> torch.Tensor:
    """`count` channels for a one-class head: the strongest of those it reads as crack (positive weights) and of
    those it reads as background, each kind in its share of the live channels (at least one of each there is)."""
    sign = head.sum(dim=(2, 3))[0] > 0
    live = channel_importance(scale, head) > 0
    share = int(round(count * int((live & sign).sum()) / max(int(live.sum()), 1)))
    # At least one of each kind that is alive, and no more of a kind than there are.
    fewest = max(int((live & sign).any()), count - int((~sign).sum()))
    most = min(count - int((live & ~sign).any()), int(sign.sum()))
    crack = min(max(share, fewest), most)
    kinds = [(sign, crack), (~sign, count - crack)]
    picked = [torch.nonzero(kind).flatten()[strongest_channels(scale[kind], head[:, kind], n)] for kind, n in kinds]
    return torch.sort(torch.cat(picked)).values


def dropped_mean(source: dict[str, torch.Tensor], last: str, kept: torch.Tensor) -> torch.Tensor:
    """The head's mean input from the channels not kept: each channel is ReLU(γ·z + β) with z about N(0, 1) after
    its batch norm, whose mean is β·Φ(β/|γ|) + |γ|·φ(β/|γ|)."""
    gamma, beta = source[f"{last}.1.weight"].abs().clamp_min(1e-12), source[f"{last}.1.bias"]
    normal = torch.distributions.Normal(0.0, 1.0)
    mean = beta * normal.cdf(beta / gamma) + gamma * normal.log_prob(beta / gamma).exp()
    dropped = torch.ones_like(mean, dtype=torch.bool)
    dropped[kept] = False
    weight = source[f"{HEAD}.weight"].sum(dim=(2, 3))  # (classes, channels)
    return (weight[:, dropped] * mean[dropped]).sum(dim=1)


def channel_importance(scale: torch.Tensor, reader: torch.Tensor) -> torch.Tensor:
    """|scale| × the norm of the weights reading each channel."""
    reading = reader[:, : scale.numel()].transpose(0, 1).flatten(1).norm(dim=1)
    return scale.abs() * reading


def strongest_channels(scale: torch.Tensor, reader: torch.Tensor, count: int) -> torch.Tensor:
    """The indices, in order, of the `count` channels with the largest |scale| × norm of the weights reading them."""
    return torch.sort(torch.topk(channel_importance(scale, reader), count).indices).values
