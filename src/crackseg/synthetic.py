"""Generated cracks of known geometry on textured backgrounds, for tests and demos.

Each crack is a random walk drawn as a polyline of known width, darker than a smoothed-noise surface.
Images come with exact masks, so tests run in seconds without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from crackseg.images import write_image


def textured_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A grey concrete/asphalt-like surface: blurred noise plus fine grain, as float32 in [0, 255]."""
    base = rng.uniform(110, 190)
    coarse = cv2.GaussianBlur(rng.normal(0, 25, (height, width)).astype(np.float32), (0, 0), 6)
    grain = rng.normal(0, 8, (height, width)).astype(np.float32)
    return np.clip(base + coarse + grain, 0, 255)


def crack_polyline(height: int, width: int, rng: np.random.Generator, steps: int = 40) -> np.ndarray:
    """Points of a meandering crack that starts at a random point and keeps a rough heading."""
    step = max(height, width) / steps * 1.2
    point = rng.uniform([0, 0], [width, height])
    heading = rng.uniform(0, 2 * np.pi)
    points = [point.copy()]
    for _ in range(steps):
        heading += rng.normal(0, 0.35)
        point = point + step * np.array([np.cos(heading), np.sin(heading)])
        points.append(point.copy())
    return np.round(np.array(points)).astype(np.int32)


def synthetic_crack(
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    n_cracks: int = 1,
    crack_width: int | None = None,
    color: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB uint8 image, bool mask) of `size` = (height, width) with `n_cracks` cracks."""
    height, width = size
    rng = np.random.default_rng(seed)
    surface = textured_background(height, width, rng)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(n_cracks):
        thickness = int(crack_width or rng.integers(2, 6))
        cv2.polylines(mask, [crack_polyline(height, width, rng)], False, 1, thickness=thickness)
    darkness = rng.uniform(60, 100)
    surface = np.where(mask > 0, surface - darkness, surface)
    gray = np.clip(surface, 0, 255).astype(np.uint8)
    if color:
        tint = rng.uniform(0.9, 1.1, size=3)
        image = np.clip(gray[:, :, None] * tint, 0, 255).astype(np.uint8)
    else:
        image = np.repeat(gray[:, :, None], 3, axis=2)
    return image, mask.astype(bool)


def write_synthetic_dataset(
    root: str | Path,
    n: int,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    prefix: str = "syn",
    mask_ext: str = ".png",
    n_empty: int = 0,
) -> Path:
    """Write `n` pairs in the `ROOT/train/{images,masks}` layout; the last `n_empty` have no crack."""
    root = Path(root)
    for i in range(n):
        image, mask = synthetic_crack(size, seed=seed + i, n_cracks=0 if i >= n - n_empty else 1)
        stem = f"{prefix}_{i:03d}"
        write_image(root / "train" / "images" / f"{stem}.jpg", image, quality=95)
        write_image(root / "train" / "masks" / f"{stem}{mask_ext}", mask.astype(np.uint8) * 255, quality=95)
    return root
