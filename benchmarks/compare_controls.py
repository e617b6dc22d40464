"""Does `crackseg compare` stay quiet on an unchanged site, and find planted changes, on real photos?

    python benchmarks/compare_controls.py                       # the default model, every validation photo
    python benchmarks/compare_controls.py --limit 2 --model unet-r18
    python benchmarks/compare_controls.py --limit 20 --tta turns --agreement    # the segmentation's repeatability
    python benchmarks/compare_controls.py --limit 6 --tta none --agreement --mosaic   # ... on survey-sized photos

Each validation photo of `--data` (`split_pairs(find_all_pairs([data]), 0.1, 0)[1]`, the photos at least MIN_SIDE
px on each side, taken in turn from each source) is compared with itself captured another way, where nothing
changed (the controls):
- shifted, georeferenced: two crops (25, 40) px apart (less than a tile), placed by their GeoTIFF coordinates;
- shifted, registered: the same crops, aligned by features of the photos;
- rotated 90°; JPEG q75 (re-encoded); exposure +20 % and -20 %; a no-data strip (a fifth of AFTER's width);
- what changes between two visits without the surface changing: a cast shadow's edge across AFTER
  (`synthetic.add_distractor`'s shadow), a slight defocus (Gaussian σ 1 px), sensor noise (σ 6 grey levels), and a
  mild perspective change (one side of the photo PERSPECTIVE of its height nearer, registered by features; what
  the warp leaves empty is no-data).
Every change these report (new, extended, widened, closed) is a false one. `--masks-too` also compares the
thresholded masks as masks (0/1 probabilities), which shows what the probability evidence adds.

`--agreement` measures instead what those controls start from: how far the segmentation itself repeats. Each photo
is segmented again shifted by sub-tile offsets (the photo's map cropped against the crop's map, away from the
crop's edges by MODEL_EDGE_PX), rotated 90°, 180° and 270°, rescaled ±10 %, re-encoded JPEG q75 and re-exposed
±20 %, each map brought back to the photo's frame; printed per transform: the pooled F1 of its mask against the
photo's own (the agreement), and the mean |Δp|. `--tta flips|turns`, `--tile`, `--overlap` and `--precision` set
the segmenter.
The validation photos are small (133–640 px a side): their maps cross few tile borders. `--mosaic` measures the
agreement on photos of a survey's size instead: 3×3 validation photos of one source and size laid edge to edge
(about 1,000–1,900 px a side; `mosaics`).

Then changes are planted in a copy of the photo (the same frame, aligned by features), in the look of the photo's
own cracks (`synthetic.crack_ribbon`: a real crack straightened into a ribbon of its darkness over the surface
beside it, its tips left out, and laid along a new path), and only on surface where BEFORE shows no crack, not even
faintly (under the comparison's low threshold): one crack lengthened by GROWTH_PX in its own look from where its map
ends, a new crack (a stretch NEW_CRACK_PX long of one of the photo's cracks, its shape and look, turned and laid
elsewhere), and one crack painted over with the background (inpainted). Printed per planted change: how many were
tried, how many of those the model segments in AFTER (a planted crack it does not segment tests the model, not the
comparison), how many were found with the right class (the change running along the planted path for longest), what
the others were found as, and the median error of the length reported (added length, new crack length) against the
planted one, and for new cracks also against the length AFTER's segmentation shows along the planted path (its
centrelines there: what the model does not segment of a laid crack, no comparison can report; an extension has no
such measure, as where it starts is where the old crack's centreline ends).

Comparisons run as `crackseg compare` does (`--tta-where changes`: one pass per tile, the TTA around the changes
found); `--tta-where everywhere` runs the TTA on every tile, and `--low-share` sets compare's low threshold.

`--timing` also times each control's comparison (segmenting both photos, then comparing) with the segmenter of
`--tta` and with one pass per tile, one after the other, and prints the two totals and their ratio. `--large WxH`
times `crackseg compare` itself instead, on a large photo with sparse cracks (the first validation photo, brought
to the background's brightness and feathered in, at the centre of a `synthetic.textured_background`), compared with
a second capture of it (georeferenced GeoTIFFs; `--capture second`: shifted by SECOND_SHIFT, which is no whole
number of pixels, so resampled, and saved again as a JPEG; `--capture same`: the same pixels shifted by SHIFT): with
one pass per tile, and with `--tta`'s segmentation around the changes and everywhere, in turn `--repeat` times;
printed: the median time of each, its ratio to one pass, and the changes reported (all false: nothing changed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely

from crackseg.compare import AlignmentError, Capture, Survey, compare
from crackseg.compare.changes import REPORTED
from crackseg.compare.evidence import MODEL_EDGE_PX
from crackseg.compare.survey import fill_no_data
from crackseg.data import find_all_pairs, split_pairs
from crackseg.inference import CrackSegmenter
from crackseg.io.georef import Georeference
from crackseg.io.images import read_image, read_mask
from crackseg.options import CompareOptions
from crackseg.synthetic import add_distractor, crack_ribbon, lay_ribbon, smooth_path, textured_background

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIN_SIDE = 300  # px: the (25, 40) px shift must leave most of a photo to compare
SHIFT = (25, 40)  # rows, columns: less than any model's tile
SECOND_SHIFT, SECOND_JPEG = (25.4, 40.7), 90  # --large --capture second: the shift and JPEG quality of AFTER
PIXEL_M = 0.0005
UTM = 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32633"]]'  # noqa: E501
GROWTH_PX = 40.0
NEW_CRACK_PX = 100.0
STEP_PX = 4.0  # of a planted crack's path
EDGE_PX = MODEL_EDGE_PX + 8  # planted changes keep this far from the photo's edges
RIBBON_MARGIN_PX = 3  # a crack's ribbon reaches this far past its half p95 width: the surface beside it
TIP_PX = 4  # and leaves out this much more than its p95 width at each tip, where it fades out
MIN_LOOK_PX = 12  # a crack with a shorter body gives no look
CLEAR_PX = 3  # a planted extension keeps this far past its ribbon's half width from anything BEFORE half shows
MAX_END_PX = 40  # a crack's map reaching farther past its centreline's tip is no place to lengthen it
ALONG_PX = 4.0  # a change runs along a planted path within this distance of it
MOSAIC_SIDE, MIN_MOSAIC_PX = 3, 900  # --mosaic: photos a mosaic's side, its shortest side at least
FEATHER_PX = 16  # the large photo's inset fades into the background over this much
DEFOCUS_SIGMA, NOISE_SIGMA, PERSPECTIVE = 1.0, 6.0, 0.04  # the visit-to-visit controls
TTA_FLAGS = {"none": ["--no-tta-turns"], "flips": ["--no-tta-turns", "--tta"], "turns": []}  # compare's own: turns


def in_turn(by_source: dict[str, list], limit: int | None, keep=lambda item: True) -> list:
    """Items taken one source after another (so a few cover several sources), those `keep` accepts, at most
    `limit`; an item refused still takes its source's turn."""
    taken = []
    while any(by_source.values()) and (limit is None or len(taken) < limit):
        for source in sorted(by_source):
            if by_source[source] and (limit is None or len(taken) < limit):
                item = by_source[source].pop(0)
                if keep(item):
                    taken.append(item)
    return taken


def validation_photos(data: Path, limit: int | None) -> list[Path]:
    """The validation photos at least MIN_SIDE px a side, one source after another."""
    by_source = defaultdict(list)
    for pair in split_pairs(find_all_pairs([data]), 0.1, 0)[1]:
        by_source[pair.source].append(pair.image)
    return in_turn(by_source, limit, keep=lambda path: min(read_image(path).shape[:2]) >= MIN_SIDE)


def georef(row: int, col: int, shape) -> Georeference:
    return Georeference((PIXEL_M, 0.0, 500_000 + col * PIXEL_M, 0.0, -PIXEL_M, 5_000_000 - row * PIXEL_M), UTM, shape)


def survey(segmenter, photo, name: str, where=None, valid=None, as_mask: bool = False) -> Survey:
    """A photo survey (its probability map from the segmenter), or with `as_mask` its thresholded mask as a mask."""
    prob = segmenter.predict_prob(fill_no_data(photo, valid))
    if valid is not None:
        prob = np.where(valid, prob, 0.0).astype(np.float32)
    place = None if where is None else georef(*where, photo.shape[:2])
    if as_mask:
        result = Survey.from_arrays(prob >= segmenter.threshold, photo, name, place, valid=valid)
    else:
        result = Survey.from_arrays(None, photo, name, place, prob=prob, threshold=segmenter.threshold, valid=valid)
    return result


def jpeg(photo: np.ndarray, quality: int) -> np.ndarray:
    _, data = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def controls(photo: np.ndarray, rng: np.random.Generator):
    """(name, BEFORE photo, AFTER photo, BEFORE place, AFTER place, AFTER's valid data) of each control; `rng`
    draws the shadow and the noise."""
    height, width = photo.shape[:2]
    dy, dx = SHIFT
    before, after = photo[: height - dy, : width - dx], photo[dy:, dx:]
    yield "shifted, georeferenced", before, after, (0, 0), (dy, dx), None
    yield "shifted, registered", before, after, None, None, None
    yield "rotated 90°", photo, np.ascontiguousarray(np.rot90(photo)), None, None, None
    yield "JPEG q75", photo, jpeg(photo, 75), None, None, None
    for factor in (0.9, 1.1):  # the camera a little farther or nearer: registered by features, scale and all
        size = (round(width * factor), round(height * factor))
        resized = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
        yield f"scale {factor - 1:+.0%}", photo, resized, None, None, None
    for gain in (1.2, 0.8):
        brighter = np.clip(photo.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        yield f"exposure {gain - 1:+.0%}", photo, brighter, None, None, None
    valid = np.ones((height, width), bool)
    valid[:, int(width * 0.4) : int(width * 0.6)] = False
    yield "no-data strip", photo, np.where(valid[:, :, None], photo, 0).astype(np.uint8), (0, 0), (0, 0), valid
    yield "cast shadow", photo, add_distractor(photo, rng, ("shadow",)), None, None, None
    yield "defocus", photo, cv2.GaussianBlur(photo, (0, 0), DEFOCUS_SIGMA), None, None, None
    noisy = np.clip(photo + rng.normal(0.0, NOISE_SIGMA, photo.shape), 0, 255).astype(np.uint8)
    yield "sensor noise", photo, noisy, None, None, None
    warped, seen = perspective(photo)
    yield "perspective", photo, warped, None, None, seen


def perspective(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo seen with its right side nearer (a trapezoid PERSPECTIVE of its height narrower on the left), and
    where the warped photo has data (away from the empty corners by the cubic kernel's reach)."""
    height, width = photo.shape[:2]
    inset = PERSPECTIVE * height
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    moved = np.float32([[0, inset], [width, 0], [width, height], [0, height - inset]])
    warp = cv2.getPerspectiveTransform(corners, moved)
    inside = cv2.warpPerspective(np.ones((height, width), np.uint8), warp, (width, height), flags=cv2.INTER_NEAREST)
    valid = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
    warped = cv2.warpPerspective(photo, warp, (width, height), flags=cv2.INTER_CUBIC)
    return np.where(valid[:, :, None], warped, 0).astype(np.uint8), valid


def agreement_transforms(photo: np.ndarray, tile: int):
    """(name, transformed photo, back(prob, threshold) → (the photo's region, the map there, the mask there)) of
    each transform the segmentation should repeat under. A rescaled photo's mask comes back as the mask's own
    coverage of each of the photo's pixels, cut at a half: a map resampled and then cut near its top would lose the
    edges of even a perfect map's cracks (labels resized and back agree at about 0.85 so, against 0.996)."""
    height, width = photo.shape[:2]
    edge = MODEL_EDGE_PX
    for dy, dx in (SHIFT, (tile // 2 + 7, tile // 3 + 11)):
        region = (slice(dy + edge, height - edge), slice(dx + edge, width - edge))
        yield f"shift {dy}, {dx} px", photo[dy:, dx:], cut(lambda p: p[edge:-edge, edge:-edge], region)
    whole = (slice(None), slice(None))
    for turns in (1, 2, 3):
        rotated = np.ascontiguousarray(np.rot90(photo, turns))
        yield f"rotated {90 * turns}°", rotated, cut(lambda p, k=turns: np.rot90(p, -k), whole)
    for factor in (0.9, 1.1):
        size = (round(width * factor), round(height * factor))
        method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        resized = cv2.resize(photo, size, interpolation=method)
        yield f"scale {factor - 1:+.0%}", resized, lambda p, t, f=factor: rescaled_back(p, t, (width, height), f)
    yield "JPEG q75", jpeg(photo, 75), cut(lambda p: p, whole)
    for gain in (1.2, 0.8):
        brighter = np.clip(photo.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        yield f"exposure {gain - 1:+.0%}", brighter, cut(lambda p: p, whole)


def cut(place, region):
    """A transform's way back for maps on the photo's own pixels: `place` the map, its mask cut where it is."""

    def back(prob, threshold):
        placed = place(prob)
        return region, placed, placed >= threshold

    return back


def rescaled_back(prob: np.ndarray, threshold: float, size: tuple[int, int], factor: float):
    """A map of the photo rescaled by `factor` brought back to `size` (width, height), and its mask by coverage."""
    method = cv2.INTER_LINEAR if factor < 1 else cv2.INTER_AREA  # back up: bilinear; back down: by area
    coverage = cv2.resize((prob >= threshold).astype(np.float32), size, interpolation=method)
    return (slice(None), slice(None)), cv2.resize(prob, size), coverage >= 0.5


def mosaics(data: Path, limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation photos of one source and size laid MOSAIC_SIDE × MOSAIC_SIDE edge to edge, with their crack masks
    laid alike, those at least MIN_MOSAIC_PX a side, one source after another: photos of a survey's size, whose maps
    cross many tile borders where a validation photo's cross a few."""
    groups = defaultdict(list)
    for pair in split_pairs(find_all_pairs([data]), 0.1, 0)[1]:
        photo = read_image(pair.image)
        groups[pair.source, photo.shape].append((photo, read_mask(pair.mask).astype(bool)))
    by_source, cells = defaultdict(list), MOSAIC_SIDE**2
    for (source, shape), pairs in sorted(groups.items()):
        if min(shape[:2]) * MOSAIC_SIDE < MIN_MOSAIC_PX:
            continue
        for start in range(0, len(pairs) - cells + 1, cells):
            group = pairs[start : start + cells]
            by_source[source].append(tuple(lay_out([pair[k] for pair in group]) for k in (0, 1)))
    return in_turn(by_source, limit)


def lay_out(cells: list[np.ndarray]) -> np.ndarray:
    """MOSAIC_SIDE² equal arrays laid edge to edge, row by row."""
    rows = [np.concatenate(cells[r * MOSAIC_SIDE : (r + 1) * MOSAIC_SIDE], axis=1) for r in range(MOSAIC_SIDE)]
    return np.concatenate(rows, axis=0)


def agreement(segmenter, photos) -> None:
    """Pooled mask agreement F1 and mean |Δp| of each transform against the photo's own map (`photos`: arrays)."""
    counts, deltas = defaultdict(Counter), defaultdict(list)
    for photo in photos:
        base = segmenter.predict_prob(photo)
        for name, changed, back in agreement_transforms(photo, segmenter.tile):
            region, prob, theirs = back(segmenter.predict_prob(changed), segmenter.threshold)
            ours = base[region] >= segmenter.threshold
            counts[name].update(both=int((ours & theirs).sum()), either=int(ours.sum() + theirs.sum()))
            deltas[name].append(float(np.abs(base[region] - prob).mean()))
    print(f"{'transform':<20} {'mask agreement F1':>18} {'mean |Δp|':>10}")
    for name, count in counts.items():
        f1 = 2 * count["both"] / count["either"] if count["either"] else 1.0
        print(f"{name:<20} {f1:>18.4f} {np.mean(deltas[name]):>10.4f}")


def clear_of(busy: np.ndarray, points, margin) -> bool:
    """Whether every point lies `margin` px (one for all, or one per point) from every `busy` pixel (any crack the
    model half sees) and EDGE_PX from the photo's edges (where the comparison does not trust a network's
    probabilities)."""
    height, width = busy.shape
    distance = cv2.distanceTransform((~busy).astype(np.uint8), cv2.DIST_L2, 5)
    margins = np.broadcast_to(np.asarray(margin, np.float64), (len(points),))
    for (x, y), clearance in zip(points, margins, strict=True):
        if not (EDGE_PX <= x < width - EDGE_PX and EDGE_PX <= y < height - EDGE_PX):
            return False
        if distance[int(y), int(x)] < clearance:
            return False
    return True


def meander(start, heading: float, length: float, rng: np.random.Generator, step: float = STEP_PX) -> np.ndarray:
    """A crack-like path `length` px long from `start`: steps whose heading wanders a little (a straight dark line
    is what the models are trained to leave alone). A wide crack takes steps as long as it is wide: it wanders at
    its own scale, not folding over itself."""
    points, point = [np.asarray(start, np.float64)], np.asarray(start, np.float64)
    step = min(step, length)
    for _ in range(round(length / step)):
        heading += rng.normal(0, 0.15)
        point = point + step * np.array([math.cos(heading), math.sin(heading)])
        points.append(point)
    return np.array(points)


@dataclass
class Planted:
    kind: str  # the change it should be found as: extended, new or closed
    length: float  # px: the added length, the new crack's, the painted-over crack's
    path: np.ndarray  # (n, 2) image coordinates: the added part, the new crack, the painted-over crack
    half_width: float = 0.0  # px: a wide crack's centreline may run this far off its path


@dataclass
class Look:
    """A real crack of the photo, straightened into a ribbon (`synthetic.crack_ribbon`) without its tips."""

    crack: object  # its `measure.Crack`
    body: np.ndarray  # (n, 2): its longest centreline without its tips, smoothed, a point per px (a ribbon's row)
    ribbon: np.ndarray

    @property
    def half_width(self) -> int:
        return (self.ribbon.shape[1] - 1) // 2


def looks(photo: np.ndarray, base: Survey) -> dict[int, Look]:
    """Crack number → its look, for each crack with at least MIN_LOOK_PX of body between its tips (a tip, where
    the crack fades out and the segmentation stops, is no crack's typical look)."""
    out = {}
    for crack, lines in zip(base.measurement.cracks, base.centrelines, strict=True):
        line = max(lines, key=len)
        if len(line) < 2:
            continue
        ribbon = crack_ribbon(photo, line, math.ceil(crack.width_p95_px / 2) + RIBBON_MARGIN_PX)
        trim = math.ceil(crack.width_p95_px) + TIP_PX
        if len(ribbon) - 2 * trim >= MIN_LOOK_PX:
            out[crack.id] = Look(crack, smooth_path(line)[0][trim:-trim], ribbon[trim:-trim])
    return out


def crack_end(busy: np.ndarray, tip: np.ndarray, heading: np.ndarray) -> np.ndarray | None:
    """Where a crack ends in BEFORE's map, from its centreline's tip on along its heading: the first point its map
    shows no crack (a skeleton stops short of a wide crack's end); None beyond the photo or past MAX_END_PX."""
    direction = heading / max(float(np.hypot(*heading)), 1e-9)
    for run in range(MAX_END_PX):
        x, y = tip + run * direction
        if not (0 <= x < busy.shape[1] and 0 <= y < busy.shape[0]):
            return None
        if not busy[int(y), int(x)]:
            return tip + run * direction
    return None


def grow(photo, base: Survey, busy, found_looks, rng: np.random.Generator):
    """The longest crack (at most half GROWTH_PX wide) with a tip that can run GROWTH_PX on into clear surface,
    lengthened so in its own look (its ribbon laid on from a random place along it): (photo, its number,
    Planted), or None."""
    cracks = sorted(zip(base.measurement.cracks, base.centrelines, strict=True), key=lambda c: -c[0].length_px)
    for crack, lines in cracks:
        look = found_looks.get(crack.id)
        if crack.width_p95_px > GROWTH_PX / 2:  # lengthened by less than twice its width, its end changes shape more
            continue
        for line in (line for line in lines if len(line) > 1 and look is not None):
            margin = look.half_width + CLEAR_PX
            for end, inner in ((0, min(len(line) - 1, margin)), (-1, max(-len(line), -1 - margin))):
                step = line[end] - line[inner]  # the crack's heading over its last few px, not its last pixel's
                tip = crack_end(busy, line[end], step)
                if tip is None:
                    continue
                stride = max(STEP_PX, crack.width_median_px)
                path = meander(tip, math.atan2(step[1], step[0]), GROWTH_PX, rng, stride)
                # Clear of every crack BEFORE half shows by the margin, except near the tip, whose own fade
                # reaches out: there, the clearance grows with the distance from it.
                run = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
                if clear_of(busy, path[1:], np.clip(run[1:] - margin, 0, margin)):
                    start = rng.uniform(0, len(look.ribbon))
                    return (
                        lay_ribbon(photo, path, look.ribbon, start),
                        crack.id,
                        Planted("extended", GROWTH_PX, path, look.half_width),
                    )
    return None


def draw_new(photo, busy, found_looks, rng: np.random.Generator):
    """A new crack: a stretch NEW_CRACK_PX long (or its whole body, from half that on) of one of the photo's cracks
    (drawn at random, by length), its shape and its look, turned and laid where there is none: (photo, Planted), or
    None."""
    height, width = busy.shape
    chosen = [look for look in found_looks.values() if len(look.body) > NEW_CRACK_PX / 2]
    if not chosen:
        return None
    weights = np.array([len(look.body) for look in chosen], np.float64)
    look = chosen[rng.choice(len(chosen), p=weights / weights.sum())]
    length = min(int(NEW_CRACK_PX), len(look.body) - 1)
    for _ in range(200):
        first = int(rng.integers(0, len(look.body) - length))
        piece = look.body[first : first + length + 1]
        angle = rng.uniform(0, 2 * math.pi)
        turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        start = rng.uniform([EDGE_PX, EDGE_PX], [width - EDGE_PX, height - EDGE_PX])
        path = (piece - piece[0]) @ turn.T + start
        if clear_of(busy, path, 25):
            planted = Planted("new", float(np.hypot(*np.diff(path, axis=0).T).sum()), path, look.half_width)
            return lay_ribbon(photo, path, look.ribbon, first), planted
    return None


def crack_ink(base: Survey, crack) -> np.ndarray:
    """The pixels painting a crack over covers (uint8 0/1): its skeleton grown past its widest width."""
    on = base.measurement.skeleton_id == crack.id
    ink = np.zeros(base.shape, np.uint8)
    ink[base.measurement.skeleton_rows[on], base.measurement.skeleton_cols[on]] = 1
    return cv2.dilate(ink, np.ones((3, 3), np.uint8), iterations=int(crack.width_max_px) + 3)


def paint_over(photo, base: Survey, keep: int | None, planted: list[Planted]):
    """A crack of fair length (not `keep`), away from the edges, inpainted with the surface around it: (photo,
    Planted), or None. Its paint keeps CLEAR_PX past the crack `keep` and the changes `planted` already (painting
    over a crack that meets the lengthened one at a junction would also erase the tip it was lengthened from)."""
    anywhere = np.zeros(base.shape, bool)
    grown = next((crack for crack in base.measurement.cracks if crack.id == keep), None)
    kept = np.zeros(base.shape, np.uint8) if grown is None else crack_ink(base, grown)
    for change in planted:
        cv2.polylines(kept, [np.round(change.path).astype(np.int32)], False, 1, 2 * math.ceil(change.half_width) + 1)
    kept = cv2.dilate(kept, np.ones((3, 3), np.uint8), iterations=CLEAR_PX)
    for crack, lines in zip(base.measurement.cracks, base.centrelines, strict=True):
        longest = max(lines, key=len)
        if crack.id == keep or not 40 <= crack.length_px <= 400 or not clear_of(anywhere, longest, 0):
            continue
        ink = crack_ink(base, crack)
        if (ink & kept).any():
            continue
        return cv2.inpaint(photo, ink, 5, cv2.INPAINT_TELEA), Planted(
            "closed", crack.length_px, longest, crack.width_p95_px / 2
        )
    return None


def plant(
    photo: np.ndarray, base: Survey, rng: np.random.Generator, low_share: float
) -> tuple[np.ndarray, list[Planted]]:
    """The photo with up to three planted changes, and what was planted. Planted cracks take the look of the
    photo's own cracks, and only surface where BEFORE shows no crack, not even faintly (under the comparison's
    low threshold): there, a planted crack is a change the comparison must find."""
    busy = base.prob >= low_share * base.threshold
    found_looks = looks(photo, base)
    planted, grown = [], None
    if grew := grow(photo, base, busy, found_looks, rng):
        photo, grown, change = grew
        planted.append(change)
    if drawn := draw_new(photo, busy, found_looks, rng):
        photo, change = drawn
        planted.append(change)
    if painted := paint_over(photo, base, grown, planted):
        photo, change = painted
        planted.append(change)
    return photo, planted


def path_pixels(shape, path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of a path's points (x, y image coordinates), kept inside an image of `shape`."""
    return np.clip(path[:, 1].astype(int), 0, shape[0] - 1), np.clip(path[:, 0].astype(int), 0, shape[1] - 1)


def segmented(survey: Survey, path: np.ndarray) -> float:
    """The share of a path that a survey's own segmentation shows as crack (within 3 px)."""
    mask = survey.prob >= survey.threshold
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    return float(np.mean(distance[path_pixels(mask.shape, path)] <= 3))


def probability_along(survey: Survey, path: np.ndarray) -> float:
    """The median of a survey's probability along a path: how near its threshold a crack it does not cut out is."""
    return float(np.median(survey.prob[path_pixels(survey.prob.shape, path)]))


def along(planted: Planted, cap_style: str = "round"):
    """The planted path grown by ALONG_PX, or its half width: where a change runs along it."""
    return shapely.LineString(planted.path).buffer(max(ALONG_PX, planted.half_width), cap_style=cap_style)


def found(changes, planted: Planted) -> tuple[str, float | None]:
    """What a planted change was found as, and the length reported for it. It is the change whose centreline (an
    extension's: its added parts) runs along the planted path (within ALONG_PX, or its half width) for the
    longest, at least a third of the path's length; none: "missed". A change the model itself does not show in
    AFTER (a laid crack it does not segment, a painted-over one it still does) is "not segmented": the model's
    miss, not the comparison's."""
    shown = segmented(changes.after, planted.path)
    if (planted.kind == "closed" and shown > 0.4) or (planted.kind != "closed" and shown < 0.6):
        return "not segmented", None
    near = along(planted)

    def share(change) -> float:
        line = change.added if change.change == "extended" else change.line
        return shapely.intersection(line, near).length

    best = max(changes.cracks, key=share, default=None)
    if best is None or share(best) < planted.length / 3:
        return "missed", None
    length = {"extended": best.added_length_px, "new": best.length_after_px, "closed": best.length_before_px}
    return best.change, length[planted.kind] if best.change == planted.kind else None


def shown_length(changes, planted: Planted) -> float:
    """The length of AFTER's centrelines along a laid crack's path: what AFTER's own segmentation shows of it, and
    so what a comparison can report of it. Flat ends: a laid crack ends where its path does, as its planted length
    does."""
    lengthwise = along(planted, cap_style="flat")
    return sum(shapely.intersection(c.line, lengthwise).length for c in changes.cracks if c.change != "closed")


class Stopwatch:
    """Total wall-clock and CPU seconds (this process's, every thread) spent under each name. On a shared machine
    the CPU seconds are the steadier measure of the work done."""

    def __init__(self):
        self.wall, self.cpu = Counter(), Counter()

    def time(self, name: str, work, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return work(*args, **kwargs)
        finally:
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu

    def ratio(self, name: str, to: str) -> str:
        return (
            f"{name} {self.wall[name]:.1f} s ({self.cpu[name]:.1f} s CPU), {to} {self.wall[to]:.1f} s "
            f"({self.cpu[to]:.1f} s CPU): ratio {self.wall[name] / self.wall[to]:.2f} "
            f"({self.cpu[name] / self.cpu[to]:.2f} CPU)"
        )


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare_control(segmenter, before, after, place_b, place_a, valid, as_mask: bool = False, **options):
    """Two photos compared as `crackseg compare` does (`options`: `CompareOptions` fields): with
    `tta_where="changes"` (the default) segmented one pass per tile (on one grid where a shift alone aligns them),
    the segmenter's TTA then only around the changes found; `as_mask`: their thresholded masks compared as masks."""
    options = CompareOptions.of(None, **options)
    if as_mask:
        before_mask = survey(segmenter, before, "before", place_b, as_mask=True)
        return compare(before_mask, survey(segmenter, after, "after", place_a, valid, as_mask=True), options=options)
    pair = capture(before, "before", place_b), capture(after, "after", place_a, valid)
    return compare(*pair, segmenter=segmenter, options=options)


def capture(photo: np.ndarray, name: str, where=None, valid=None) -> Capture:
    """A photo to compare, placed by a georeference at (row, col) `where` (None: none)."""
    return Capture(name, photo, None if where is None else georef(*where, photo.shape[:2]), valid=valid)


def large_sparse_photo(photo: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """`photo` at the centre of a generated surface `width`×`height` px, brought to its brightness and feathered
    in, so that its cracks are the only ones and its border is none."""
    background = textured_background(height, width, rng)
    inset_height, inset_width = photo.shape[:2]
    top, left = (height - inset_height) // 2, (width - inset_width) // 2
    inside = np.zeros((height, width), np.float32)
    inside[top + FEATHER_PX : top + inset_height - FEATHER_PX, left + FEATHER_PX : left + inset_width - FEATHER_PX] = 1
    inside = cv2.blur(inside, (2 * FEATHER_PX + 1, 2 * FEATHER_PX + 1))[:, :, None]
    placed = np.repeat(background[:, :, None], 3, axis=2)
    region = (slice(top, top + inset_height), slice(left, left + inset_width))
    placed[region] = photo.astype(np.float32) - photo.mean() + background[region].mean()
    surface = np.repeat(background[:, :, None], 3, axis=2)
    return np.clip(inside * placed + (1 - inside) * surface, 0, 255).astype(np.uint8)


def second_capture(photo: np.ndarray, shift: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """`photo` as a second capture from about the same place shows it: moved by `shift` (rows, columns; not whole
    pixels: resampled, bicubic), `size` px (rows, columns), and saved again as a JPEG at quality SECOND_JPEG."""
    dy, dx = shift
    moved = cv2.warpAffine(
        photo, np.float32([[1, 0, dx], [0, 1, dy]]), size[::-1], flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    )
    return jpeg(moved, SECOND_JPEG)


def write_geotiff(path: Path, photo: np.ndarray, where: tuple[int, int]) -> None:
    """`photo` as an RGB GeoTIFF placed as `georef` places it."""
    import rasterio
    from rasterio.transform import Affine

    place = georef(*where, photo.shape[:2])
    height, width = photo.shape[:2]
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile, crs=place.crs_wkt, transform=Affine(*place.transform)) as out:
        out.write(photo.transpose(2, 0, 1))


def large_size(text: str) -> tuple[int, int]:
    """--large's WIDTHxHEIGHT."""
    try:
        width, height = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT in px, e.g. 3000x2000") from None
    return width, height


def time_large(args, photo: np.ndarray) -> None:
    """`crackseg compare` on a large photo with sparse cracks and its shifted copy: `--tta` against one pass."""
    width, height = args.large
    if width < photo.shape[1] + 2 * FEATHER_PX or height < photo.shape[0] + 2 * FEATHER_PX:
        raise SystemExit(
            f"--large {width}x{height}: smaller than the photo it holds ({photo.shape[1]}×{photo.shape[0]})"
        )
    big = large_sparse_photo(photo, width, height, np.random.default_rng(args.seed))
    dy, dx = SHIFT if args.capture == "same" else SECOND_SHIFT
    rows, cols = height - math.ceil(dy), width - math.ceil(dx)
    after_photo = big[dy:, dx:] if args.capture == "same" else second_capture(big, (dy, dx), (rows, cols))
    model = ["--model", args.model] if args.model else []
    chosen = [
        flag
        for name in ("tile", "overlap", "precision", "low_share")
        for flag in (
            (f"--{name.replace('_', '-')}", str(getattr(args, name))) if getattr(args, name) is not None else ()
        )
    ]
    copy = "its copy" if args.capture == "same" else f"a second capture of it (resampled, JPEG q{SECOND_JPEG})"
    print(f"a {width}×{height} photo with the cracks of one validation photo, against {copy} shifted {dy}, {dx} px")
    seconds, cpu, changes = defaultdict(list), defaultdict(list), {}
    with tempfile.TemporaryDirectory() as folder:
        before, after = Path(folder) / "before.tif", Path(folder) / "after.tif"
        write_geotiff(before, big[:rows, :cols], (0, 0))
        write_geotiff(after, after_photo, (dy, dx))
        runs = {"one pass": TTA_FLAGS["none"]}
        if args.tta != "none":
            for where in ("changes", "everywhere"):
                runs[f"{args.tta} at {where}"] = TTA_FLAGS[args.tta] + ["--tta-where", where]
        for repeat in range(args.repeat):
            for name, flags in runs.items():
                out = Path(folder) / f"{name}-{repeat}"
                command = [sys.executable, "-m", "crackseg", "compare", str(before), str(after), "-o", str(out)]
                start, start_cpu = time.perf_counter(), children_cpu()
                done = subprocess.run(command + model + chosen + flags, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{' '.join(done.args)} failed:\n{done.stderr}")
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(children_cpu() - start_cpu)
                counts = json.loads((out / "summary.json").read_text())["counts"]
                changes[name] = {kind: counts.get(kind, 0) for kind in REPORTED}
    for name in runs:
        each = ", ".join(f"{t:.1f}" for t in seconds[name])
        wall, work = (np.median(times[name]) / np.median(times["one pass"]) for times in (seconds, cpu))
        print(
            f"  {name:<20} {np.median(seconds[name]):>6.1f} s ({np.median(cpu[name]):.1f} s CPU; runs: {each}); "
            f"{wall:.2f}× one pass ({work:.2f}× CPU); changes: {changes[name]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--model", default=None, help="a shipped model's name or trained weights (default: the default)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many photos (default: all)")
    parser.add_argument("--masks-too", action="store_true", help="also compare the thresholded masks as masks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agreement", action="store_true", help="the segmentation's own repeatability instead")
    parser.add_argument(
        "--mosaic",
        action="store_true",
        help="--agreement on survey-sized mosaics of validation photos (--limit: of them)",
    )
    parser.add_argument(
        "--tta", choices=("none", "flips", "turns"), default="turns", help="the segmenter's TTA (compare's: turns)"
    )
    parser.add_argument(
        "--tta-where",
        choices=("changes", "everywhere"),
        default="changes",
        help="where the TTA runs: around the changes a first pass finds, or on every tile (compare's --tta-where)",
    )
    parser.add_argument("--low-share", type=float, help="compare's --low-share (default: compare's)")
    parser.add_argument("--precision", default=None, help="the engine's precision (default: auto)")
    parser.add_argument("--tile", type=int, default=None, help="the tile size (default: the model's)")
    parser.add_argument("--overlap", type=float, default=None, help="the tiles' overlap (default: the segmenter's)")
    parser.add_argument(
        "--timing", action="store_true", help="also time each control's comparison against one pass per tile"
    )
    parser.add_argument(
        "--large",
        metavar="WxH",
        type=large_size,
        help="time `crackseg compare` on a photo this large with sparse cracks instead",
    )
    parser.add_argument("--repeat", type=int, default=2, help="--large: runs of each segmentation, in turn")
    parser.add_argument(
        "--capture",
        choices=("second", "same"),
        default="second",
        help="--large: AFTER is a second capture (shifted by SECOND_SHIFT, resampled, JPEG), or the same pixels "
        "shifted by SHIFT",
    )
    args = parser.parse_args()
    chosen = {"tile": args.tile, "overlap": args.overlap, "precision": args.precision}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    segmenter = CrackSegmenter.from_pretrained(
        args.model, tta=args.tta == "flips", tta_turns=args.tta == "turns", **chosen
    )
    print(f"model: {segmenter.config.name} ({segmenter.describe()}), threshold {segmenter.threshold}")
    photos = validation_photos(args.data, args.limit)
    print(f"{len(photos)} validation photos of at least {MIN_SIDE} px a side\n")
    if args.large:
        return time_large(args, read_image(photos[0]))
    if args.agreement and args.mosaic:
        made = mosaics(args.data, args.limit)
        print(
            f"{len(made)} mosaics of {MOSAIC_SIDE}×{MOSAIC_SIDE} validation photos instead, "
            f"{MIN_MOSAIC_PX}+ px a side\n"
        )
        return agreement(segmenter, [photo for photo, _ in made])
    if args.agreement:
        return agreement(segmenter, (read_image(path) for path in photos))
    modes = [False, True] if args.masks_too else [False]
    tally = defaultdict(Counter)
    floors = defaultdict(list)
    planted_tally, errors, shown_errors, unseen = defaultdict(Counter), defaultdict(list), defaultdict(list), []
    rng, scene_rng = np.random.default_rng(args.seed), np.random.default_rng([args.seed, 1])
    one_pass = CrackSegmenter.from_pretrained(args.model, **chosen) if args.timing else None
    chosen_compare = {"tta_where": args.tta_where} | ({"low_share": args.low_share} if args.low_share else {})
    low_share = CompareOptions.of(None, **chosen_compare).low_share  # planted changes keep under it in BEFORE
    stopwatch = Stopwatch()
    for path in photos:
        photo = read_image(path)
        for name, *pair in controls(photo, scene_rng):
            if one_pass is not None:  # the same comparison with one pass per tile, only timed
                with contextlib.suppress(AlignmentError):
                    stopwatch.time("one pass", compare_control, one_pass, *pair)
            for as_mask in modes:
                key = f"{name}{' (masks)' if as_mask else ''}"
                try:
                    timed = "masks" if as_mask else args.tta
                    changes = stopwatch.time(
                        timed, compare_control, segmenter, *pair, as_mask=as_mask, **chosen_compare
                    )
                except AlignmentError:
                    tally[key]["not aligned"] += 1
                    continue
                counts = changes.counts()
                tally[key].update({k: counts[k] for k in REPORTED} | {"photos": 1})
                tally[key]["with a change"] += any(counts[k] for k in REPORTED)
                floors[key].append((changes.noise.length_px, changes.noise.width_px))
        base = survey(segmenter, photo, "before")
        changed, planted = plant(photo, base, rng, low_share)
        try:
            changes = compare_control(segmenter, photo, changed, None, None, None, **chosen_compare)
        except AlignmentError:
            continue
        for change in planted:
            what, length = found(changes, change)
            planted_tally[change.kind][what] += 1
            if length is not None:
                errors[change.kind].append(abs(length / change.length - 1))
            shown = shown_length(changes, change) if length is not None and change.kind == "new" else 0.0
            if shown > 0:  # new cracks only: an extension starts where the old crack's line ends
                shown_errors[change.kind].append(abs(length / shown - 1))
            if what == "not segmented" and change.kind != "closed":
                unseen.append(probability_along(changes.after, change.path))
    print_controls(tally, floors)
    print_planted(planted_tally, errors, shown_errors)
    if unseen:
        print(
            f"laid cracks not segmented: AFTER's probability along them, median {np.median(unseen):.2f} "
            f"(quartiles {np.percentile(unseen, 25):.2f}–{np.percentile(unseen, 75):.2f}), "
            f"against the threshold {segmenter.threshold:g}"
        )
    if one_pass is not None:
        print(
            "\ncomparing the controls (segmenting both photos, then comparing):", stopwatch.ratio(args.tta, "one pass")
        )


def print_controls(tally, floors) -> None:
    print(f"{'control':<30} {'photos':>6} {'new':>5} {'ext':>5} {'wide':>5} {'closed':>6} {'any':>5} {'floor px':>14}")
    for key, counts in tally.items():
        floor = np.median(floors[key], axis=0) if floors[key] else (math.nan, math.nan)
        unaligned = f"  ({counts['not aligned']} not aligned)" if counts["not aligned"] else ""
        print(
            f"{key:<30} {counts['photos']:>6} {counts['new']:>5} {counts['extended']:>5} {counts['widened']:>5} "
            f"{counts['closed']:>6} {counts['with a change']:>5} {floor[0]:>6.1f} / {floor[1]:>5.1f}{unaligned}"
        )
    print("(ext: extended, wide: widened, any: photos with any change; floor: median length / width floor)\n")


def print_planted(planted_tally, errors, shown_errors) -> None:
    print(
        f"{'planted':<10} {'tried':>5} {'segmented':>9} {'found':>5}  {'found as':<36} "
        f"{'median length error: planted':>28} {'shown':>6}"
    )
    for kind in ("extended", "new", "closed"):
        counts = planted_tally[kind]
        tried = sum(counts.values())
        shown = tried - counts["not segmented"]
        others = ", ".join(f"{n} {what}" for what, n in counts.items() if what != kind) or "-"
        error, against_shown = (f"{np.median(e[kind]):.1%}" if e[kind] else "-" for e in (errors, shown_errors))
        print(f"{kind:<10} {tried:>5} {shown:>9} {counts[kind]:>5}  {others:<36} {error:>28} {against_shown:>6}")
    print(
        "(segmented: the planted change shows in AFTER's own segmentation; found: with the right class; length error "
        "against the planted length, and (new cracks) against the length of AFTER's centrelines along the planted "
        "path, which leaves out what the model does not segment of a laid crack)"
    )


if __name__ == "__main__":
    main()
