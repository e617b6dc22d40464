"""The noise floor of a comparison: the smallest change in length and width this pair of surveys can tell from noise.

Two captures of a crack that did not change never measure the same, for three reasons:
- alignment: BEFORE's centrelines land up to the alignment error (RMS, AFTER px) off AFTER's;
- resolution: each survey places a centreline, a tip and an edge on its own pixel grid (a skeleton, a distance
  transform), so to about one of its pixels: one BEFORE px (× the registration's scale) and one AFTER px;
- repeatability: another capture of the same crack (exposure, JPEG, a shifted tiling) moves its tips and edges,
  which the pair shows in two ways, and the larger counts:
  - the probability fade: where a crack's probability fades slowly, a small change moves where it is cut. Each
    survey's map says how far: the distance from where its probability falls under the high threshold to where it
    falls under the low one, beyond each tip (the tip band) and across the crack (the edge band: the width at the
    low threshold less the width at the high one), each the median over its cracks. A 0/1 mask has
    none; a measure file's is unknown (counted as none, and the summary says so).
  - the cracks both surveys show: most cracks do not change between two inspections, so the median absolute
    change of length and of width (`evidence.width_growth`) over the cracks matched one to one and seen whole by
    both surveys is what this pair's captures differ by (a brighter photo lengthens every faint tip at once);
    counted ×PAIR_FACTOR, and only from MIN_PAIRS such cracks on. Where most cracks did grow, the floor rises and
    only the clearest growth is reported: the safe side for an inspection.

Floors, in AFTER px (mm × the pixel size):
  position = √(alignment² + BEFORE px² + AFTER px²)    the smallest shift both photos resolve, once aligned
  length   = position + max(√2·√(tip band BEFORE² + tip band AFTER²), PAIR_FACTOR · median |length change|)
  width    = position + max(√(edge band BEFORE² + edge band AFTER²), PAIR_FACTOR · median |width change|)
No change smaller than its floor is reported: not a new or closed crack shorter than the length floor, not an
extension whose added length or whose crack's length gain is under it, not a widening under the width floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from crackseg.compare.registration import Alignment
from crackseg.compare.survey import Survey

RAY_PX = 24.0  # how far beyond a tip or an edge a fade is followed (own px); a longer one counts as this
RAY_STEP_PX = 0.5
MAX_POINTS = 4000  # centreline points read per survey for its edge band: enough for a median
EDGE_SPACING_PX = 3.0
PAIR_FACTOR = 2.0  # a systematic change (every tip longer) sits at the median; twice it keeps clear of its spread
MIN_PAIRS = 3  # a median of fewer would be set by one crack that grew


@dataclass
class NoiseFloor:
    """What the floors are made of (AFTER px; BEFORE, AFTER pairs; None: no probability map) and the floors."""

    alignment_px: float
    pixel_px: tuple[float, float]  # one pixel of each survey, in AFTER px
    tip_band_px: tuple[float | None, float | None]
    edge_band_px: tuple[float | None, float | None]
    pairs: int = 0  # cracks matched one to one and seen whole by both surveys
    pair_length_change_px: float | None = None  # their median absolute change (None: under MIN_PAIRS of them)
    pair_width_change_px: float | None = None
    maps: str | None = None  # what the bands were read from, where not the maps as segmented (`verify`)

    @property
    def position_px(self) -> float:
        return math.hypot(self.alignment_px, *self.pixel_px)

    @property
    def length_px(self) -> float:
        fade = math.sqrt(2.0) * math.hypot(*[band or 0.0 for band in self.tip_band_px])
        return self.position_px + max(fade, PAIR_FACTOR * (self.pair_length_change_px or 0.0))

    @property
    def width_px(self) -> float:
        fade = math.hypot(*[band or 0.0 for band in self.edge_band_px])
        return self.position_px + max(fade, PAIR_FACTOR * (self.pair_width_change_px or 0.0))

    def to_dict(self, pixel_size_mm: float | None) -> dict:
        def pair(values):
            return {k: None if v is None else round(v, 3) for k, v in zip(("before", "after"), values, strict=True)}

        out = {
            "length_px": round(self.length_px, 3),
            "width_px": round(self.width_px, 3),
            "length_mm": None if pixel_size_mm is None else round(self.length_px * pixel_size_mm, 4),
            "width_mm": None if pixel_size_mm is None else round(self.width_px * pixel_size_mm, 4),
            "alignment_error_px": round(self.alignment_px, 3),
            "pixel_px": pair(self.pixel_px),
            "tip_repeatability_px": pair(self.tip_band_px),
            "edge_repeatability_px": pair(self.edge_band_px),
            "cracks_both_show_whole": self.pairs,
            "their_median_length_change_px": rounded(self.pair_length_change_px),
            "their_median_width_change_px": rounded(self.pair_width_change_px),
            "read_from": self.maps,
            "rule": f"position = √(alignment² + BEFORE px² + AFTER px²); length = position + max(√2·√(tip bands²), "
            f"{PAIR_FACTOR:g} × their median length change); width = position + max(√(edge bands²), {PAIR_FACTOR:g} × "
            f"their median width change), the medians from {MIN_PAIRS} cracks on; no smaller change is reported",
        }
        return out


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def noise_floor(
    before: Survey, after: Survey, alignment: Alignment, low_share: float, length_changes, width_changes
) -> NoiseFloor:
    """The pair's noise floor (see the module notes); BEFORE's bands are carried by the registration's scale.
    `length_changes`, `width_changes`: of the cracks matched one to one and seen whole by both surveys (AFTER px)."""
    scale = alignment.scale
    tip_b, edge_b = bands(before, low_share)
    tip_a, edge_a = bands(after, low_share)
    pairs = len(length_changes)
    return NoiseFloor(
        alignment.error_px,
        (scale, 1.0),
        (None if tip_b is None else tip_b * scale, tip_a),
        (None if edge_b is None else edge_b * scale, edge_a),
        pairs,
        median_size(length_changes),
        median_size(width_changes),
    )


def median_size(changes) -> float | None:
    """The median absolute change, from MIN_PAIRS changes on (None under)."""
    return float(np.median(np.abs(changes))) if len(changes) >= MIN_PAIRS else None


def bands(survey: Survey, low_share: float) -> tuple[float | None, float | None]:
    """A survey's tip band and edge band (own px): medians over its cracks; None without a probability map, and 0
    without cracks to read them on."""
    if survey.prob is None:
        return None, None
    if not ((survey.prob > 0) & (survey.prob < 1)).any():  # a 0/1 map (a mask) steps: it has no fade
        return 0.0, 0.0
    high = survey.threshold
    low = low_share * high
    origins, directions = tips(survey.centrelines)
    tip = fade_widths(survey.prob, origins, directions, high, low)
    points, normals = edge_points(survey.centrelines)
    edge = fade_widths(survey.prob, points, normals, high, low) + fade_widths(survey.prob, points, -normals, high, low)
    return median(tip), median(edge)


def median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else 0.0


def tips(centrelines: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Every crack's free ends (an end no other branch of the crack shares) and the outward direction there."""
    origins, directions = [np.zeros((0, 2))], [np.zeros((0, 2))]
    for lines in centrelines:
        ends = [
            (line[end], line[end] - line[inner]) for line in lines if len(line) > 1 for end, inner in ((0, 1), (-1, -2))
        ]
        keys = [tuple(np.round(point, 3)) for point, _ in ends]
        for (point, step), key in zip(ends, keys, strict=True):
            norm = math.hypot(*step)
            if keys.count(key) == 1 and norm > 0:
                origins.append(point[None])
                directions.append((step / norm)[None])
    return np.vstack(origins), np.vstack(directions)


def edge_points(centrelines: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Points along every centreline a few pixels apart, and the unit normal there (at most MAX_POINTS, evenly)."""
    points, normals = [np.zeros((0, 2))], [np.zeros((0, 2))]
    for lines in centrelines:
        for line in lines:
            for start, end in zip(line[:-1], line[1:], strict=True):
                step = end - start
                length = math.hypot(*step)
                if length == 0:
                    continue
                count = max(1, int(length // EDGE_SPACING_PX))
                at = (np.arange(count) + 0.5)[:, None] / count
                points.append(start + at * step)
                normals.append(np.repeat([[-step[1] / length, step[0] / length]], count, axis=0))
    points, normals = np.vstack(points), np.vstack(normals)
    keep = np.linspace(0, len(points) - 1, min(len(points), MAX_POINTS)).astype(int) if len(points) else []
    return points[keep], normals[keep]


def fade_widths(prob: np.ndarray, origins, directions, high: float, low: float) -> np.ndarray:
    """Along rays from `origins` (image coordinates) in `directions`: the distance from where the probability first
    falls under `high` to where it first falls under `low` (at most RAY_PX)."""
    if len(origins) == 0:
        return np.zeros(0)
    at = np.arange(0.0, RAY_PX + RAY_STEP_PX, RAY_STEP_PX)
    xy = origins[:, None, :] + at[None, :, None] * directions[:, None, :]
    # Image coordinates put pixel centres at +0.5, OpenCV at integers; bilinear, the edge pixels repeated.
    values = cv2.remap(
        prob,
        (xy[..., 0] - 0.5).astype(np.float32),
        (xy[..., 1] - 0.5).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return first_under(values, low, at) - first_under(values, high, at)


def first_under(values: np.ndarray, threshold: float, at: np.ndarray) -> np.ndarray:
    """Per row, the first distance where the value is under `threshold` (the last distance where it never is)."""
    under = values < threshold
    index = np.where(under.any(axis=1), under.argmax(axis=1), len(at) - 1)
    return at[index]
