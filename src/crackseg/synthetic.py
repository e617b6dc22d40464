"""Generated cracks of known geometry on textured backgrounds, for tests and demos, and distractors for training.

Each crack is a random walk drawn as a polyline of known width, darker than a smoothed-noise surface.
Images come with exact masks, so tests run in seconds without downloading anything.
Distractors are drawn on real training crops to teach the model what is *not* a crack: the failures seen on
held-out photos were formwork lines, lane markings, holes and stains, then cast-shadow edges, sealed joints, tined
concrete, bolts and panel edges in tunnel linings, and the padded border of survey tiles.
A real crack can also be copied along a new path (`crack_ribbon`, `lay_ribbon`): its look straightened into a
ribbon (each pixel over the surface beside it) and laid on another surface, so a planted crack has the width,
contrast and texture of the photo's own cracks, not those of a painted line the models learnt to leave alone.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree

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


def _cast_shadow(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A float mask in [0, 1] of a cast shadow: a half-plane or a wedge with a sharp, slightly soft edge."""
    shadow = np.zeros((height, width), np.float32)
    corners = rng.uniform([0, 0], [width, height], (int(rng.integers(3, 6)), 2))
    edge = rng.integers(0, 4)  # pull the polygon onto one side, so its edge crosses the crop
    corners[: len(corners) // 2, edge % 2] = 0 if edge < 2 else (width, height)[edge % 2]
    cv2.fillPoly(shadow, [cv2.convexHull(corners.astype(np.int32))], 1.0)
    return cv2.GaussianBlur(shadow, (0, 0), rng.uniform(0.6, 3.0))


def _grooves(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A float mask in [0, 1] of parallel grooves at a regular spacing (tined or brushed concrete, grating)."""
    grooves = np.zeros((height, width), np.float32)
    spacing = rng.uniform(6, 24)
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    reach = 2 * max(height, width)
    thickness = int(rng.integers(1, 3))
    for offset in np.arange(-reach, reach, spacing):
        centre = np.array([width / 2, height / 2]) + offset * normal
        along = reach * np.array([-normal[1], normal[0]])
        start, end = np.round(centre - along).astype(int), np.round(centre + along).astype(int)
        cv2.line(grooves, tuple(int(v) for v in start), tuple(int(v) for v in end), 1.0, thickness=thickness)
    return cv2.GaussianBlur(grooves, (0, 0), 0.7)


def _fixings(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A float mask in [0, 1] of the outlines of bolts and panel edges, as on tunnel linings and cladding."""
    outline = np.zeros((height, width), np.float32)
    side = min(height, width)
    for _ in range(int(rng.integers(1, 5))):
        centre = tuple(int(v) for v in rng.uniform([0, 0], [width, height]))
        if rng.random() < 0.6:
            cv2.circle(outline, centre, int(rng.uniform(0.02, 0.08) * side + 2), 1.0, thickness=int(rng.integers(1, 3)))
        else:
            size = tuple(int(v) for v in rng.uniform(0.2, 0.9, 2) * side)
            box = ((centre[0], centre[1]), size, float(rng.uniform(0, 90)))
            cv2.drawContours(outline, [cv2.boxPoints(box).astype(np.int32)], 0, 1.0, thickness=int(rng.integers(1, 3)))
    return cv2.GaussianBlur(outline, (0, 0), 0.6)


# What each distractor looks like, and how much it darkens the surface under it (a crack there stays darker).
DARKENING = {
    "line": (0.25, 0.6),  # formwork lines, panel joints, scratches
    "sealant": (0.35, 0.75),  # a sealed joint or crack: a wide, flat, dark band
    "stain": (0.25, 0.6),
    "shadow": (0.3, 0.65),  # a cast shadow's straight edge
    "grooves": (0.12, 0.35),  # tining: many thin, regular lines
    "fixings": (0.25, 0.55),  # bolt rings and panel edges
}
CLASSIC_KINDS = ("line", "marking", "stain")
DISTRACTOR_KINDS = ("line", "marking", "stain", "sealant", "shadow", "grooves", "fixings")


def distractor_shape(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """The float mask in [0, 1] of one distractor of `kind` (one of DISTRACTOR_KINDS)."""
    if kind == "line":
        return _straight_band(height, width, rng, int(rng.integers(1, 5)))
    if kind == "sealant":
        return _straight_band(height, width, rng, int(rng.integers(5, max(7, height // 20))))
    if kind == "marking":
        return _straight_band(height, width, rng, int(rng.integers(max(4, height // 16), max(6, height // 5))))
    if kind == "stain":
        return _blob(height, width, rng)
    if kind == "shadow":
        return _cast_shadow(height, width, rng)
    if kind == "grooves":
        return _grooves(height, width, rng)
    if kind == "fixings":
        return _fixings(height, width, rng)
    raise ValueError(f"unknown distractor {kind!r}; choose one of {', '.join(DISTRACTOR_KINDS)}")


def add_distractor(image: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...] = CLASSIC_KINDS) -> np.ndarray:
    """Draw one thing that is not a crack, of one of `kinds`, on an RGB uint8 image.

    Everything but road markings darkens by a factor, and markings lighten towards white, so a crack underneath
    stays darker than its surroundings and its mask stays true. The classic kinds (dark lines, markings, stains)
    are drawn half, a quarter and a quarter of the time; the other kinds each as often as a stain.
    """
    height, width = image.shape[:2]
    weights = np.array([2.0 if k == "line" else 1.0 for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    shape = distractor_shape(kind, height, width, rng)
    out = image.astype(np.float32)
    if kind == "marking":
        paint = np.array([255, 255, 255] if rng.random() < 0.7 else [235, 200, 60], np.float32)
        out += (paint - out) * (rng.uniform(0.5, 0.9) * shape)[:, :, None]
    else:
        out *= 1 - rng.uniform(*DARKENING[kind]) * shape[:, :, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def pad_border(image: np.ndarray, side: int, width: int, fill: int) -> np.ndarray:
    """`image` with a strip `width` px wide on `side` (0 top, 1 right, 2 bottom, 3 left) set to `fill`: the
    padding of a survey tile cut at the edge of its orthomosaic. Applied to masks with fill 0."""
    out = image.copy()
    strip = [slice(None), slice(None)]
    strip[side % 2] = slice(None, width) if side in (0, 3) else slice(-width, None)
    out[strip[0], strip[1]] = fill
    return out


RIBBON_SMOOTH_PX = 2.0  # a skeleton's pixel steps smoothed away before its normals are taken
RIBBON_FADE_PX = 2.0  # a ribbon's sides fade to the surface over this many px, so that it leaves no seam


def smooth_path(points: np.ndarray, step: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A polyline (n, 2) resampled every `step` px of its length and smoothed: (points, unit tangents, arc length)."""
    points = np.asarray(points, np.float64)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
    at = np.arange(0.0, arc[-1] + 1e-9, step)
    even = np.column_stack([np.interp(at, arc, points[:, 0]), np.interp(at, arc, points[:, 1])])
    even = gaussian_filter1d(even, RIBBON_SMOOTH_PX / step, axis=0, mode="nearest")
    tangents = np.gradient(even, axis=0)
    tangents /= np.maximum(np.hypot(*tangents.T), 1e-9)[:, None]
    return even, tangents, at


def crack_ribbon(photo: np.ndarray, centreline: np.ndarray, half_width: int) -> np.ndarray:
    """A real crack's look, straightened: float32 (steps, 2·half_width + 1, channels), one row per px along its
    `centreline` (image coordinates: x right, y down, pixel centres at +0.5), one column per px across it, each the
    photo's value over the surface's beside it there (1: surface, under 1: darker). `half_width` must reach past
    the crack's edges: the outermost columns on both sides are read as the surface."""
    points, tangents, _ = smooth_path(centreline)
    normals = np.column_stack([-tangents[:, 1], tangents[:, 0]])
    across = np.arange(-half_width, half_width + 1, dtype=np.float64)
    xy = points[:, None, :] + across[None, :, None] * normals[:, None, :] - 0.5  # OpenCV puts centres at integers
    image = photo.astype(np.float32).reshape(*photo.shape[:2], -1)
    ribbon = cv2.remap(
        image,
        xy[..., 0].astype(np.float32),
        xy[..., 1].astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    ).reshape(len(points), len(across), -1)
    sides = np.concatenate([ribbon[:, :2], ribbon[:, -2:]], axis=1)
    surface = gaussian_filter1d(np.median(sides, axis=1), 3.0, axis=0, mode="nearest")
    ratio = ribbon / np.maximum(surface[:, None, :], 1.0)
    fade = np.clip((half_width - np.abs(across)) / RIBBON_FADE_PX, 0.0, 1.0)[None, :, None]
    return (1.0 + (ratio - 1.0) * fade).astype(np.float32)


def ping_pong(position: np.ndarray, count: int) -> np.ndarray:
    """Positions folded back and forth into [0, count − 1], so that a short ribbon covers a longer path unbroken."""
    if count < 2:
        return np.zeros_like(position)
    period = 2.0 * (count - 1)
    folded = np.mod(position, period)
    return np.where(folded > count - 1, period - folded, folded)


def lay_ribbon(photo: np.ndarray, path: np.ndarray, ribbon: np.ndarray, start: float = 0.0) -> np.ndarray:
    """The photo with a crack ribbon (`crack_ribbon`) laid along `path` (image coordinates), from the ribbon's row
    `start` on (folded back at its ends where the path is longer): each pixel within the ribbon's half width of the
    path, and between its ends, multiplied by the ribbon's value there. RGB uint8 in, RGB uint8 out."""
    half_width = (ribbon.shape[1] - 1) // 2
    points, tangents, arc = smooth_path(path, 0.5)
    height, width = photo.shape[:2]
    low = np.clip(np.floor(points.min(axis=0)) - half_width - 1, 0, [width, height]).astype(int)
    high = np.clip(np.ceil(points.max(axis=0)) + half_width + 2, 0, [width, height]).astype(int)
    rows, cols = np.mgrid[low[1] : high[1], low[0] : high[0]]
    centres = np.column_stack([cols.ravel() + 0.5, rows.ravel() + 0.5])
    distance, nearest = cKDTree(points).query(centres, distance_upper_bound=half_width + 1.0)
    near = np.isfinite(distance)
    centres, nearest, rows, cols = centres[near], nearest[near], rows.ravel()[near], cols.ravel()[near]
    offset = centres - points[nearest]
    along = np.einsum("ij,ij->i", offset, tangents[nearest])
    across = tangents[nearest, 0] * offset[:, 1] - tangents[nearest, 1] * offset[:, 0]
    inside = (np.abs(along) <= 0.5) & (np.abs(across) <= half_width)
    row = ping_pong(start + arc[nearest] + along, len(ribbon))[inside]
    col = across[inside] + half_width
    factor = cv2.remap(ribbon, col.astype(np.float32)[:, None], row.astype(np.float32)[:, None], cv2.INTER_LINEAR)
    out = photo.astype(np.float32)
    rows, cols = rows[inside], cols[inside]
    out[rows, cols] *= factor.reshape(out[rows, cols].shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
