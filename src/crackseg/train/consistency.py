"""Shift and scale consistency: a photo's crack map should not depend on where the tile grid falls, nor change with
a few per cent of scale, or two surveys of the same surface disagree where nothing changed.

A stride-32 encoder sees an image moved by 1–31 px as a different input, and labels alone never ask the maps of the
two to agree. Each step, `consistency_loss` shows the network a second view of the batch, resampled from it (moved
by 0 to 31 px and, half the time, scaled by 0.88–1.12), and penalises where the second view's map differs from the
first map resampled the same way, away from the second view's border (where it lacks the first's context).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCALE_RANGE = (0.88, 1.12)
BORDER = 16  # pixels of the second view left out: a tile's border is blended away in inference too


def random_view(size: int, generator: torch.Generator | None = None) -> tuple[float, float, float]:
    """(scale, top, left) of a second view of a size×size crop: the view's pixel (i, j) sits at the crop's
    (top + scale·i, left + scale·j). The view is 32 px smaller, so it can move by a whole stride and stay inside."""
    draw = torch.rand(4, generator=generator).tolist()
    scale = SCALE_RANGE[0] + draw[0] * (SCALE_RANGE[1] - SCALE_RANGE[0]) if draw[1] < 0.5 else 1.0
    room = size - 1 - scale * (view_size(size) - 1)
    top, left = (float(int(d * room)) if scale == 1.0 else d * room for d in draw[2:])
    return scale, top, left


def view_size(size: int) -> int:
    return size - 32


def view_grid(size: int, scale: float, top: float, left: float, device=None) -> torch.Tensor:
    """The 1×S×S×2 sampling grid of `F.grid_sample` (align_corners=False) that takes the view out of the crop."""
    steps = torch.arange(view_size(size), dtype=torch.float32, device=device) * scale
    ys, xs = torch.meshgrid(steps + top, steps + left, indexing="ij")

    def normalised(pixel):  # pixel centres to [-1, 1]
        return (2 * pixel + 1) / size - 1

    return torch.stack([normalised(xs), normalised(ys)], dim=-1)[None]


def disagreement(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Σ(p − q)² / (Σp² + Σq²): 0 when the maps agree, 1 when their cracks are disjoint. Measured against the crack
    the maps hold rather than every pixel, so a crack-poor batch is not let off lightly."""
    return ((first - second) ** 2).sum() / ((first**2).sum() + (second**2).sum() + 1e-6)


def consistency_loss(
    model: torch.nn.Module,
    image: torch.Tensor,
    logits: torch.Tensor,
    generator: torch.Generator | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """The disagreement between the network's map of a second view of `image` and its map `logits` of the image,
    resampled the same way; gradients flow through both maps."""
    size = image.shape[-1]
    grid = view_grid(size, *random_view(size, generator), device=image.device).expand(image.shape[0], -1, -1, -1)
    view = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", align_corners=False)
    first = F.grid_sample(torch.sigmoid(logits.float()), grid, mode="bilinear", align_corners=False)
    second = torch.sigmoid(model(view.contiguous(memory_format=memory_format)).float())
    border = min(BORDER, view_size(size) // 4)  # small crops (tests) keep their middle half
    inner = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    return disagreement(first[inner], second[inner])
