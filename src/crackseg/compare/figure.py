"""The changes picture: BEFORE aligned onto AFTER (left), and AFTER with each crack coloured by its change (right)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.ops import substring

from crackseg.compare.changes import CHANGES, Changes, CrackChange
from crackseg.compare.registration import apply_homography

# Colours (RGB); cracks that are gone are dashed.
COLOURS = {
    "new": (235, 30, 30),
    "added": (255, 150, 0),
    "widened": (235, 0, 235),
    "unchanged": (190, 190, 190),
    "closed": (0, 210, 255),
    "out_of_view": (110, 110, 110),
    "before": (255, 220, 0),
}
LEGEND = [
    ("new", "new"),
    ("added", "extended (added part)"),
    ("widened", "widened"),
    ("unchanged", "unchanged"),
    ("closed", "closed/repaired (dashed)"),
]
PANEL_SIDE = (480, 1200)  # px: the long side of each half of the picture is brought within this


def changes_figure(changes: Changes) -> np.ndarray:
    """BEFORE aligned onto AFTER (left) and AFTER with each crack coloured by its change (right); RGB uint8."""
    height, width = changes.after.shape
    scale = float(np.clip(max(height, width), *PANEL_SIDE)) / max(height, width)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    zoom = np.diag([scale, scale, 1.0])
    left = backdrop(changes.before, zoom @ changes.alignment.homography, size)
    right = backdrop(changes.after, zoom, size)
    thickness = max(2, round(max(size) / 400))
    carry = zoom @ changes.alignment.homography
    for lines in changes.before.lines():
        draw(left, shapely.transform(lines, lambda xy: apply_homography(carry, xy)), COLOURS["before"], thickness)
    for crack in changes.cracks:
        draw_change(right, crack, scale, thickness)
    title = f"BEFORE {Path(changes.before.name).name}, aligned ({changes.alignment.method})"
    gap = np.full((left.shape[0] + 30, 8, 3), 255, np.uint8)
    panels = np.hstack([framed(left, title), gap, framed(right, after_title(changes))])
    return np.vstack([panels, legend(panels.shape[1])])


def after_title(changes: Changes) -> str:
    counts = changes.counts()
    said = ", ".join(f"{counts[name]} {name.replace('_', ' ')}" for name in CHANGES if counts[name])
    return f"AFTER {Path(changes.after.name).name}: {said or 'no cracks'}"


def backdrop(survey, h: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The survey's photo (else its mask) carried by `h` (image coordinates) onto a canvas of `size`, dimmed grey."""
    if survey.photo is None:  # masks without photos: a plain grey ground under the lines
        grey = np.full(survey.shape, 160, np.uint8)
    else:
        grey = cv2.cvtColor(survey.photo, cv2.COLOR_RGB2GRAY)
    # OpenCV's pixel centres are at integers, crackseg's image coordinates at +0.5.
    shift, unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]), np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    warped = cv2.warpPerspective(grey, shift @ h @ unshift, size, flags=cv2.INTER_LINEAR, borderValue=255)
    return np.repeat((warped * 0.6).astype(np.uint8)[:, :, None], 3, axis=2)


def draw_change(canvas: np.ndarray, crack: CrackChange, scale: float, thickness: int) -> None:
    line = shapely.transform(crack.line, lambda xy: xy * scale)
    if crack.after_number is None:  # a BEFORE crack AFTER does not show: closed, out of view, or too faint to call
        draw(canvas, line, COLOURS[crack.change], thickness, dashed=True)
        return
    colour = COLOURS["new"] if crack.change == "new" else COLOURS["widened" if crack.widened else "unchanged"]
    draw(canvas, line, colour, thickness)
    if crack.change == "extended":
        draw(canvas, shapely.transform(crack.added, lambda xy: xy * scale), COLOURS["added"], thickness + 1)
    anchor = shapely.line_interpolate_point(line, 0.5, normalized=True)
    if not anchor.is_empty:
        x, y = (int(v) for v in shapely.get_coordinates(anchor)[0])
        cv2.putText(
            canvas, str(crack.id), (x + 4, y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )


def draw(canvas: np.ndarray, geometry, colour, thickness: int, dashed: bool = False) -> None:
    """Lines given in canvas coordinates (pixel centres at +0.5), anti-aliased, optionally dashed."""
    for line in shapely.get_parts(geometry):
        pieces = dashes(line, 4.0 * thickness) if dashed else [shapely.get_coordinates(line)]
        for xy in pieces:
            points = np.round((xy - 0.5) * 4).astype(np.int32)  # 2 fractional bits: cv2's `shift`
            cv2.polylines(canvas, [points], False, colour, thickness, cv2.LINE_AA, shift=2)


def dashes(line: shapely.LineString, dash: float) -> list[np.ndarray]:
    """A line cut into pieces `dash` long, every other one kept."""
    if line.length == 0:
        return []
    starts = np.arange(0.0, line.length, 2 * dash)
    return [shapely.get_coordinates(substring(line, s, min(s + dash, line.length))) for s in starts]


def framed(panel: np.ndarray, title: str) -> np.ndarray:
    """A panel with its title in a white strip above it."""
    strip = np.full((30, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title[: panel.shape[1] // 8], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def legend(width: int) -> np.ndarray:
    strip = np.full((34, width, 3), 255, np.uint8)
    x = 8
    for key, label in LEGEND:
        if key == "closed":
            for start in range(x, x + 24, 8):
                cv2.line(strip, (start, 17), (start + 4, 17), COLOURS[key], 3)
        else:
            cv2.line(strip, (x, 17), (x + 24, 17), COLOURS[key], 3)
        cv2.putText(strip, label, (x + 30, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 20
    return strip
