"""Evidence for a change: each survey's crack probability read along centrelines, in AFTER's frame.

- A survey's view (`SurveyView`): its probability map with each pixel the largest value within the matching
  tolerance (so that the alignment error cannot hide a crack that is there), and where it shows the surface:
  inside its image and its valid data (no TIFF no-data, no masked region), kept clear of their edges by the
  tolerance (a crack cut by an edge ends just inside it, and beyond it nothing is known) and, for a photo, by
  MODEL_EDGE_PX more: near an edge a network sees padding instead of surface, and its cracks there come and go
  with the framing (found up to about 20 px in on validation photos shifted by less than a tile). A no-data region
  reaches farther: filled with one colour (`survey.fill_no_data`), it changes what the network sees around it, and
  its map moves from one side of the comparison's thresholds to the other up to about 65 px from the fill (over
  the validation photos with a strip a fifth of their width filled; a mirrored or a nearest-pixel fill moved it
  more often, a blurred one about as often), so a photo's no-data is kept NO_DATA_EDGE_PX clear instead.
- A line is read where both surveys see it: its own survey's edges bound its evidence as much as the other's.
- Hysteresis: a crack is present in a survey where its probability reaches the high threshold (the model's, the
  one its cracks were cut at) and absent where it stays under the low one (a share of the high one). In between,
  a crack is too faint to call either way, and no change is decided on it.
- A line is read at points about a pixel apart, each standing for its share of the line's length.
- Confidence (0-1): per point, how far the probabilities lie past the thresholds the decision needs (1 where a
  side reads 0 for absent or 1 for present, 0 at the threshold), averaged over the line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.ops import substring

from crackseg.compare.registration import apply_homography
from crackseg.compare.survey import Survey

STEP_PX = 1.0  # spacing of the points a line is read at (AFTER px)
MODEL_EDGE_PX = 32  # own px: a segmented photo's probabilities are trusted this far in from its edges
NO_DATA_EDGE_PX = 64  # own px: ... and this far from its no-data


def above(p: np.ndarray, high: float) -> np.ndarray:
    """How far past the high threshold: 0 at it, 1 at probability 1."""
    return np.clip((p - high) / (1.0 - high), 0.0, 1.0)


def below(p: np.ndarray, low: float) -> np.ndarray:
    """How far under the low threshold: 0 at it, 1 at probability 0."""
    return np.clip((low - p) / low, 0.0, 1.0)


def between(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """How far from absent towards present: 0 at the low threshold, 1 at the high one."""
    return np.clip((p - low) / (high - low), 0.0, 1.0)


@dataclass
class SurveyView:
    """One survey as AFTER's frame sees it: its max-filtered probabilities and where it shows the surface."""

    prob: np.ndarray | None  # own px; None: a survey without a probability map
    clearance: np.ndarray | None  # own px: how far past the margin from no-data (> 0: seen); None: no no-data
    to_own: np.ndarray  # 3×3: AFTER image coordinates → this survey's
    shape: tuple[int, int]
    margin: float  # own px kept clear of the image's edges
    high: float
    low: float

    @classmethod
    def of(cls, survey: Survey, to_own: np.ndarray, radius_px: float, low_share: float) -> SurveyView:
        """`radius_px`: the tolerance in this survey's pixels; `low_share`: the low threshold over the high one."""
        reach = max(1, math.ceil(radius_px))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
        prob = None if survey.prob is None else cv2.dilate(survey.prob, disc)
        segmented = survey.source == "photo"
        margin = reach + 1 + (MODEL_EDGE_PX if segmented else 0)
        clearance = None
        if survey.valid is not None:
            apart = reach + 1 + (NO_DATA_EDGE_PX if segmented else 0)
            distance = cv2.distanceTransform(survey.valid.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            clearance = distance - np.float32(apart)
        high = survey.threshold
        return cls(prob, clearance, to_own, survey.shape, float(margin), high, low_share * high)

    def read(self, xy: np.ndarray, beyond=0.0) -> tuple[np.ndarray, np.ndarray]:
        """At points of AFTER's frame: (probability, NaN without a map; whether this survey sees the point, and
        `beyond` own px (a number or one per point) past its margins around it)."""
        own = apply_homography(self.to_own, xy) if len(xy) else np.zeros((0, 2))
        height, width = self.shape
        x, y, m = own[:, 0], own[:, 1], self.margin + np.asarray(beyond)
        seen = (x >= m) & (x < width - m) & (y >= m) & (y < height - m)
        col = np.clip(np.floor(np.nan_to_num(x)), 0, width - 1).astype(np.intp)
        row = np.clip(np.floor(np.nan_to_num(y)), 0, height - 1).astype(np.intp)
        if self.clearance is not None:
            seen &= self.clearance[row, col] > beyond
        prob = np.full(len(xy), np.nan) if self.prob is None else self.prob[row, col].astype(np.float64)
        return prob, seen


def line_points(line, step: float = STEP_PX) -> tuple[np.ndarray, np.ndarray]:
    """Points along a (multi)line about `step` apart, and the length each stands for."""
    xy, lengths = [np.zeros((0, 2))], [np.zeros(0)]
    for part in shapely.get_parts(line):
        if part.length == 0:
            continue
        count = max(1, math.ceil(part.length / step))
        at = (np.arange(count) + 0.5) * part.length / count
        xy.append(shapely.get_coordinates(shapely.line_interpolate_point(part, at)))
        lengths.append(np.full(count, part.length / count))
    return np.vstack(xy), np.concatenate(lengths)


@dataclass
class Reading:
    """A line of one survey read on both: per point its length, both probabilities, and whether both surveys see
    it."""

    length: np.ndarray
    own: np.ndarray  # the survey the line belongs to (NaN: no map)
    other: np.ndarray  # the other survey (NaN: no map)
    seen: np.ndarray  # by both surveys
    own_view: SurveyView
    other_view: SurveyView

    @classmethod
    def of(cls, line, own: SurveyView, other: SurveyView) -> Reading:
        xy, length = line_points(line)
        own_prob, own_seen = own.read(xy)
        other_prob, other_seen = other.read(xy)
        return cls(length, own_prob, other_prob, own_seen & other_seen, own, other)

    @property
    def total(self) -> float:
        return float(self.length.sum())

    @property
    def seen_length(self) -> float:
        return float(self.length[self.seen].sum())

    @property
    def seen_share(self) -> float:
        return self.seen_length / self.total if self.total else 0.0

    @property
    def has_evidence(self) -> bool:
        """Whether the other survey's probabilities can decide (it has a map, and sees some of the line)."""
        return self.other_view.prob is not None and self.seen.any()

    @property
    def absent(self) -> np.ndarray:
        """Per point: seen by the other survey and under its low threshold there."""
        return self.seen & (np.nan_to_num(self.other, nan=1.0) < self.other_view.low)

    @property
    def absent_length(self) -> float:
        return float(self.length[self.absent].sum())

    @property
    def absent_share(self) -> float:
        """Of the length the other survey sees, the share where it shows no crack."""
        return self.absent_length / self.seen_length if self.seen_length else 0.0

    def mean(self, side: str) -> float | None:
        """The mean probability of `side` ("own" or "other") over the points the other survey sees."""
        values = getattr(self, side)[self.seen]
        weights = self.length[self.seen]
        if len(values) == 0 or np.isnan(values).any():
            return None
        return float(np.average(values, weights=weights))

    def weighted(self, per_point: np.ndarray) -> float:
        return float(np.average(per_point[self.seen], weights=self.length[self.seen])) if self.seen.any() else 0.0

    def appeared_confidence(self) -> float | None:
        """Present on its own side (over the high threshold), absent on the other (under the low one)."""
        if not self.has_evidence:
            return None
        own = 1.0 if np.isnan(self.own).all() else above(np.nan_to_num(self.own), self.own_view.high)
        return self.weighted(np.minimum(own, below(self.other, self.other_view.low)))

    def kept_confidence(self) -> float | None:
        """Present on both sides: from the low threshold (0) to the high one (1), the fainter side."""
        if not self.has_evidence:
            return None
        own = (
            1.0 if np.isnan(self.own).all() else between(np.nan_to_num(self.own), self.own_view.low, self.own_view.high)
        )
        return self.weighted(np.minimum(own, between(self.other, self.other_view.low, self.other_view.high)))


def seen_pieces(piece: shapely.LineString, views, min_length: float) -> list[shapely.LineString]:
    """The parts of a line (AFTER's frame) that every one of `views` sees, each at least `min_length` long."""
    count = max(1, math.ceil(piece.length / STEP_PX))
    step = piece.length / count
    xy = shapely.get_coordinates(shapely.line_interpolate_point(piece, (np.arange(count) + 0.5) * step))
    seen = np.logical_and.reduce([view.read(xy)[1] for view in views])
    edges = np.flatnonzero(np.diff(np.concatenate([[False], seen, [False]]).astype(np.int8)))
    runs = [substring(piece, start * step, end * step) for start, end in zip(edges[::2], edges[1::2], strict=True)]
    return [run for run in runs if isinstance(run, shapely.LineString) and run.length >= min_length]


MIN_SEEN_NODES = 5  # skeleton pixels both surveys must see for a crack's widths to be compared


@dataclass
class SeenWidths:
    """A survey's skeleton pixels (from its measurement): crack number, place in AFTER's frame, local width (own px; as
    measured, and before its crack's shift: `Measurement.skeleton_local_width_px`, which a change in width is read
    from) and whether both surveys see them, so that widths are compared only where both do: a local width reads the
    mask up to half of it from the centreline, so a pixel counts as seen only where both surveys see that far past
    their margins around it (else a map that an edge or a no-data fill changed would widen a wide crack read well
    inside them)."""

    number: np.ndarray
    frame: np.ndarray
    width: np.ndarray
    local: np.ndarray
    seen: np.ndarray

    @classmethod
    def of(cls, survey: Survey, to_frame: np.ndarray, views) -> SeenWidths:
        """`to_frame`: this survey's image coordinates → AFTER's; `views`: both surveys' `SurveyView`s."""
        m = survey.measurement
        xy = np.column_stack([m.skeleton_cols + 0.5, m.skeleton_rows + 0.5]).astype(np.float64)
        frame = apply_homography(to_frame, xy) if len(xy) else xy
        local = m.skeleton_local_width_px.astype(np.float64)
        seen = (
            np.logical_and.reduce([view.read(frame, local / 2)[1] for view in views]) if len(xy) else np.zeros(0, bool)
        )
        return cls(m.skeleton_id, frame, m.skeleton_width_px.astype(np.float64), local, seen)

    @property
    def kept(self) -> bool:
        """Whether its skeleton was kept (a measure file keeps none)."""
        return len(self.number) > 0

    def pick(self, numbers) -> np.ndarray:
        return self.seen & np.isin(self.number, list(numbers))

    def p95(self, scales: dict[int, float]) -> float | None:
        """The p95 local width (AFTER px) of the cracks numbered as `scales`' keys (each scaled by its value) over
        their pixels both surveys see; None where too few are seen."""
        pick = self.pick(scales)
        if pick.sum() < MIN_SEEN_NODES:
            return None
        return float(np.percentile(self.width[pick] * [scales[n] for n in self.number[pick]], 95))


def width_growth(after: SeenWidths, number: int, before: SeenWidths, scales: dict[int, float], reach: float):
    """How much wider AFTER's crack `number` is than the BEFORE cracks `scales` names (number → scale into AFTER px),
    along the part both surveys see: the median, over its skeleton pixels, of its local width less that of the
    nearest BEFORE skeleton pixel within `reach`, both before their cracks' shifts (a crack's shift moves with where
    it is cut: one an edge or a no-data region cuts in one survey alone reads wider or narrower, even on the pixels
    both see alike). A crack that opened is wider along most of its length; a median of paired widths is not moved by
    one bulge (a junction, a spall, a blob of the segmentation), as a p95 is. None where fewer than MIN_SEEN_NODES
    pairs are found."""
    ours, theirs = after.pick([number]), before.pick(scales)
    if ours.sum() < MIN_SEEN_NODES or theirs.sum() < MIN_SEEN_NODES:
        return None
    distance, nearest = cKDTree(before.frame[theirs]).query(after.frame[ours], distance_upper_bound=reach)
    paired = np.isfinite(distance)
    if paired.sum() < MIN_SEEN_NODES:
        return None
    index = nearest[paired]
    scale = np.array([scales[n] for n in before.number[theirs][index]])
    return float(np.median(after.local[ours][paired] - before.local[theirs][index] * scale))
