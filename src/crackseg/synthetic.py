"""Generated cracks of known geometry on textured backgrounds, for tests and demos, and distractors for training.

Each crack is a random walk drawn as a polyline of known width, darker than a smoothed-noise surface.
Images come with exact masks, so tests run in seconds without downloading anything.
Distractors (straight dark lines, road markings, stains) are drawn on real training crops to teach the model what
is *not* a crack: the failures seen on held-out photos were formwork lines, lane markings, holes and stains.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from crackseg.io.images import write_image


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


def _straight_band(height: int, width: int, rng: np.random.Generator, thickness: int) -> np.ndarray:
    """A float mask in [0, 1] of one straight band right across the image (a joint, a formwork line, a stripe)."""
    band = np.zeros((height, width), np.float32)
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform([0, 0], [width, height])
    reach = 2 * max(height, width)
    direction = reach * np.array([np.cos(angle), np.sin(angle)])
    start, end = np.round(centre - direction).astype(int), np.round(centre + direction).astype(int)
    cv2.line(band, tuple(int(v) for v in start), tuple(int(v) for v in end), 1.0, thickness=thickness)
    return cv2.GaussianBlur(band, (0, 0), 0.6 + 0.15 * thickness)


def _blob(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A soft elliptical stain or hole, 4–12 % of the image side across."""
    blob = np.zeros((height, width), np.float32)
    side = min(height, width)
    axes = tuple(int(v) for v in rng.uniform(0.02, 0.06, 2) * side + 2)
    centre = tuple(int(v) for v in rng.uniform([0, 0], [width, height]))
    cv2.ellipse(blob, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, thickness=-1)
    return cv2.GaussianBlur(blob, (0, 0), 1.0 + 0.3 * max(axes))


def add_distractor(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one thing that is not a crack on an RGB uint8 image: a straight dark line, a road marking or a stain.

    Dark lines and stains darken by a factor and markings lighten towards white, so a crack underneath stays
    darker than its surroundings and its mask stays true.
    """
    height, width = image.shape[:2]
    kind = rng.choice(["line", "marking", "stain"], p=[0.5, 0.25, 0.25])
    out = image.astype(np.float32)
    if kind == "marking":
        shape = _straight_band(height, width, rng, int(rng.integers(max(4, height // 16), max(6, height // 5))))
        paint = np.array([255, 255, 255] if rng.random() < 0.7 else [235, 200, 60], np.float32)
        out += (paint - out) * (rng.uniform(0.5, 0.9) * shape)[:, :, None]
    else:
        shape = (
            _straight_band(height, width, rng, int(rng.integers(1, 5))) if kind == "line" else _blob(height, width, rng)
        )
        out *= 1 - rng.uniform(0.25, 0.6) * shape[:, :, None]
    return np.clip(out, 0, 255).astype(np.uint8)
