"""Two surveys compared crack by crack: each crack's change decided on evidence, in AFTER's frame (`compare`).

Two thresholded masks disagree wherever a crack's probability sits near the threshold, and a segmentation moves
a little with the framing, the exposure and the compression, so a mask difference is mostly noise. A change is
therefore decided on each survey's probabilities (`evidence`) and held against the pair's noise floor (`noise`):
- Matching tolerance: max(`tolerance_px`, alignment error + 2 px): the skeleton's own placement is good to about a
  pixel in each survey. Matching (`match`) says which AFTER crack continues which BEFORE crack and keeps the ids.
- Hysteresis: present means over the high threshold (the model's); absent means under the low one, `low_share` of
  it (default a quarter: on validation photos shifted, re-encoded or re-exposed, `unet-lite0` 0.2.0's probability
  along a crack it lost mostly stayed between 0.15 and 0.25, at threshold 0.45, while intact surface reads under
  0.01).
- An AFTER crack that continues none is `new` only where BEFORE's probability (the largest within the tolerance)
  stays under the low threshold along more than half of the length both surveys see, and that length is over the
  length floor; else `unchanged` (BEFORE shows it, too faint to have been cut out).
- A new crack that grows out of a BEFORE crack is that crack `extended`: one end of it lies within the length floor
  (plus half of each crack's p95 width: a centreline stops about that short of its crack's end) of a BEFORE centreline
  it does not continue, and along the straight gap between, AFTER's own probability stays over the low threshold and
  falls under the high one for no more than the length floor (hysteresis: a crack grown on from its tip that AFTER's
  segmentation cut at a junction, or where it runs faint for a few px, is one crack, not a new one; a cut no longer
  than the length floor cannot be told from noise). Only a crack already found new is relabelled so: it adds no change
  an unchanged site could show.
- A BEFORE crack no AFTER crack continues is `closed` (closed or repaired) only where AFTER's probability stays
  under the low threshold along more than half of it, over the length floor; else `unchanged`.
- A crack continued is `extended` when its added parts (farther than the tolerance from every BEFORE centreline,
  counted from BEFORE's tips, each longer than the tolerance plus half the crack's width: a tip's own uncertainty,
  and only where both surveys see the surface) show no crack in BEFORE along more than half of each (beyond where
  BEFORE's own crack fades out past its tip: `Decider.before_fade`), total more than the length floor, and the
  crack grew by more than the length floor where both see it (its parts beyond the BEFORE cracks less theirs
  beyond every AFTER crack where AFTER shows none: a shortened crack is never extended,
  while of a crack AFTER's segmentation cuts in two, the piece that grew at a tip is, less the cut); `widened` when
  its width grew by more than the width floor (the median growth of its local width along the part both see,
  `evidence.width_growth`); else `unchanged`.
- Either way, a crack less than half of which both surveys see (their images and valid data, kept clear of their
  edges: `evidence.SurveyView`) is `out_of_view`: nothing is known of it there.
- A survey without probabilities (a measure file) leaves the decisions that need them to the centrelines alone,
  as masks were compared before, still above the noise floor; the summary says so.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import shapely

from crackseg.compare.changes import Changes, CrackChange
from crackseg.compare.evidence import Reading, SeenWidths, SurveyView, line_points, seen_pieces, width_growth
from crackseg.compare.grid import shared_grid
from crackseg.compare.match import added_parts, assign_ids, carried_lines, match
from crackseg.compare.noise import NoiseFloor, noise_floor
from crackseg.compare.registration import Alignment, check_scales, local_scale, register
from crackseg.compare.survey import Capture, Survey, is_measure_file, load_survey, photo_capture, segmented
from crackseg.compare.verify import checked_changes, first_pass
from crackseg.measure import Crack
from crackseg.options import CompareOptions

log = logging.getLogger(__name__)

EXTRA_TOLERANCE_PX = 2.0  # over the alignment error: the skeletons' own placement in two segmentations
WHOLE_SHARE = 0.98  # seen whole: a crack's length and width compare between the surveys
IN_VIEW_SHARE = 0.5  # a crack with less of its centreline seen by the other survey is out of view
ABSENT_SHARE = 0.5  # of the length the other survey sees: more than this under the low threshold is absent
# Without probabilities, a widening must also pass the rule masks were compared by: a p95 width moves by about a
# pixel between two segmentations (2·d − 1), and by a share of itself on wide cracks.
WIDTH_UNCERTAINTY_PX, WIDTH_UNCERTAINTY_SHARE = 1.0, 0.2


def beyond(change: float, floor: float) -> float:
    """How far past the floor a change is, in floors: 0 at it, 1 at twice it."""
    return float(np.clip((change - floor) / floor, 0.0, 1.0)) if floor > 0 else 1.0


class Decider:
    """Decides each crack's change for one pair: both surveys' views in AFTER's frame, the tolerance, the floor."""

    def __init__(self, before: Survey, after: Survey, alignment: Alignment, tolerance: float, low_share: float):
        h = alignment.homography
        self.before, self.after, self.tolerance = before, after, tolerance
        self.noise: NoiseFloor | None = None  # set once the cracks both surveys show are known (`noise_floor`)
        self.before_view = SurveyView.of(before, np.linalg.inv(h), tolerance / alignment.scale, low_share)
        self.after_view = SurveyView.of(after, np.eye(3), tolerance, low_share)
        views = (self.before_view, self.after_view)
        self.before_widths, self.after_widths = SeenWidths.of(before, h, views), SeenWidths.of(after, np.eye(3), views)

    def widths(self, after_crack: Crack, before_cracks: list[tuple[Crack, float]]) -> tuple[float, float, float | None]:
        """BEFORE's and AFTER's p95 widths (AFTER px) where both surveys see the crack, and its width growth there
        (`evidence.width_growth`; None where too little of it is seen by both to tell). A survey without its
        skeleton (a measure file) has its whole cracks' p95 widths compared."""
        whole = max(c.width_p95_px * scale for c, scale in before_cracks), after_crack.width_p95_px
        if not (self.before_widths.kept and self.after_widths.kept):
            return *whole, whole[1] - whole[0]
        scales = {c.id: scale for c, scale in before_cracks}
        before, after = self.before_widths.p95(scales), self.after_widths.p95({after_crack.id: 1.0})
        growth = width_growth(self.after_widths, after_crack.id, self.before_widths, scales, self.tolerance)
        return (whole[0] if before is None else before), (whole[1] if after is None else after), growth

    def seen_whole(self, after_line, before_line) -> bool:
        """Whether each survey sees all of the other's crack (nothing of it cut by an image edge or no-data)."""
        return (
            Reading.of(after_line, self.after_view, self.before_view).seen_share >= WHOLE_SHARE
            and Reading.of(before_line, self.before_view, self.after_view).seen_share >= WHOLE_SHARE
        )

    def floors(self, change: CrackChange) -> None:
        change.length_floor_px, change.width_floor_px = self.noise.length_px, self.noise.width_px

    def appeared(self, change: CrackChange, before_lines, before_ids, before_widths) -> None:
        """An AFTER crack that continues no BEFORE crack: new, extended (grown out of one), unchanged or out of
        view."""
        reading = Reading.of(change.line, self.after_view, self.before_view)
        change.prob_after, change.prob_before = reading.mean("own"), reading.mean("other")
        self.one_sided(change, reading, "new")
        if change.change != "new":
            return
        grown_from = self.grown_from(change, before_lines, before_widths)
        if grown_from is not None:
            added = self.additions(change, [before_lines[grown_from]])
            if added.length > self.noise.length_px:
                change.change, change.before_ids = "extended", (before_ids[grown_from],)
                change.added, change.added_length_px = added, added.length
                change.length_change_px = self.seen_length(added, self.after_view, self.before_view)

    def grown_from(self, change: CrackChange, before_lines, before_widths) -> int | None:
        """The index of the BEFORE centreline an AFTER crack grows out of (see the module notes), or None: the
        nearest one in reach of one of its ends, across a gap AFTER's map bridges above the low threshold.
        `before_widths`: the BEFORE cracks' p95 widths (AFTER px)."""
        if self.after.prob is None:
            return None
        gaps = []
        for part in shapely.get_parts(change.line):
            for end in (shapely.Point(part.coords[0]), shapely.Point(part.coords[-1])):
                for b, before_line in enumerate(before_lines):
                    reach = self.noise.length_px + (change.width_p95_after_px + before_widths[b]) / 2
                    gap = shapely.shortest_line(end, before_line)
                    if gap is not None and gap.length <= reach and self.bridged(gap):
                        gaps.append((gap.length, b))
        return min(gaps)[1] if gaps else None

    def bridged(self, gap) -> bool:
        """Whether AFTER's own probability stays at or over the low threshold all along a gap (AFTER's frame), and
        under the high one for no more than the length floor of it: a cut in its segmentation, not surface."""
        if gap.length == 0:
            return True
        xy, length = line_points(gap)
        height, width = self.after.prob.shape
        cols = np.clip(np.floor(xy[:, 0]), 0, width - 1).astype(np.intp)
        rows = np.clip(np.floor(xy[:, 1]), 0, height - 1).astype(np.intp)
        prob = self.after.prob[rows, cols]
        cut = float(length[prob < self.after.threshold].sum())
        return bool((prob >= self.after_view.low).all()) and cut <= self.noise.length_px

    def gone(self, change: CrackChange) -> None:
        """A BEFORE crack no AFTER crack continues: closed, unchanged or out of view."""
        reading = Reading.of(change.line, self.before_view, self.after_view)
        change.prob_before, change.prob_after = reading.mean("own"), reading.mean("other")
        self.one_sided(change, reading, "closed")

    def one_sided(self, change: CrackChange, reading: Reading, absent: str) -> None:
        """A crack only one survey cut out: `absent` (new, closed) where the other shows no crack along more than
        half of it, over the length floor; else unchanged (the other shows it faintly), or out of view."""
        if reading.seen_share < IN_VIEW_SHARE:
            change.change = "out_of_view"
        elif not reading.has_evidence:  # the other survey has no map: a crack it does not have is gone or new
            change.change = absent if reading.seen_length >= self.noise.length_px else "unchanged"
        elif reading.absent_share > ABSENT_SHARE and reading.absent_length >= self.noise.length_px:
            change.change, change.confidence = absent, reading.appeared_confidence()
        else:
            change.change, change.confidence = "unchanged", reading.kept_confidence()
            change.under_floor = reading.absent_share > ABSENT_SHARE  # absent, but shorter than the floor

    def seen_length(self, geometry, own: SurveyView, other: SurveyView) -> float:
        return Reading.of(geometry, own, other).seen_length

    def lost(self, continued, pieces) -> float:
        """How long the parts of the BEFORE cracks an AFTER crack `continued` are beyond every AFTER centreline of
        their `pieces` where AFTER shows no crack (under the low threshold; anywhere, without its map)."""
        parts = added_parts(shapely.union_all(continued), pieces, self.tolerance, 0.0)
        reading = Reading.of(parts, self.before_view, self.after_view)
        return reading.absent_length if reading.has_evidence else reading.seen_length

    def growth(self, line, near, lost: float) -> float:
        """How much longer a crack is where both surveys see it: its parts beyond every BEFORE centreline `near` it,
        less what it `lost`. So a shortened crack comes out shorter, two joined ones longer by the gap they closed,
        and a crack AFTER's segmentation cuts in two, or leaves a faint branch of, shorter by the cut only (by
        nothing where AFTER still shows the crack there)."""
        gained = added_parts(line, near, self.tolerance, 0.0)
        return self.seen_length(gained, self.after_view, self.before_view) - lost

    def additions(self, change: CrackChange, near) -> shapely.MultiLineString:
        """The parts of an AFTER crack beyond every BEFORE centreline `near` it, where both surveys see the surface
        and BEFORE shows no crack along more than half of each beyond its own cracks' fade (`before_fade`; any,
        where BEFORE has no probabilities)."""
        # A centreline's tip lies at the crack's end, which moves out by half of any widening: shorter added pieces
        # than the tolerance plus half the width are a tip's uncertainty, not growth.
        min_piece = self.tolerance + change.width_p95_after_px / 2
        own_fade = self.before_fade(change, near)
        kept = []
        for piece in shapely.get_parts(added_parts(change.line, near, self.tolerance, min_piece)):
            for run in seen_pieces(piece, (self.before_view, self.after_view), min_piece):
                if not Reading.of(run, self.after_view, self.before_view).has_evidence:
                    kept.append(run)
                    continue
                reading = Reading.of(run.difference(own_fade), self.after_view, self.before_view)
                if reading.seen_length > 0 and reading.absent_share > ABSENT_SHARE:
                    kept.append(run)
        return shapely.MultiLineString(kept)

    def before_fade(self, change: CrackChange, near):
        """Where BEFORE's map fades out past the BEFORE cracks `near` a crack: within the tolerance, half their
        width and BEFORE's tip band of their centrelines. A crack shows faintly there past its own tips whether or
        not it grew, so what BEFORE shows there says nothing of an added piece, which is read beyond it."""
        reach = self.tolerance + (change.width_p95_before_px or 0.0) / 2 + (self.noise.tip_band_px[0] or 0.0)
        return shapely.union_all(near).buffer(reach)

    def continued(self, change: CrackChange, found, near, pieces) -> None:
        """An AFTER crack that continues the BEFORE cracks `found` (carried centrelines; `near`: every carried
        BEFORE centreline within the tolerance of it; `pieces`: every AFTER centreline within the tolerance of
        those, its own among them): extended, widened or unchanged."""
        added = self.additions(change, near)
        lost = self.lost(found, pieces)
        growth = change.length_change_px = self.growth(change.line, near, lost)
        floor = self.noise.length_px
        change.lost_part = lost > floor
        change.widened = self.widened(change)
        if added.length > floor and growth > floor:
            change.change, change.added, change.added_length_px = "extended", added, added.length
            reading = Reading.of(change.added, self.after_view, self.before_view)
            change.prob_after, change.prob_before = reading.mean("own"), reading.mean("other")
            size = beyond(min(change.added_length_px, growth), floor)
            evidence = reading.appeared_confidence()
            change.confidence = None if evidence is None else min(evidence, size)
            return
        reading = Reading.of(change.line, self.after_view, self.before_view)
        change.prob_after, change.prob_before = reading.mean("own"), reading.mean("other")
        if change.widened:
            change.change = "widened"
            change.confidence = beyond(change.width_growth_px, self.noise.width_px)
        else:
            change.change = "unchanged"
            change.confidence = reading.kept_confidence()

    def widened(self, change: CrackChange) -> bool:
        """Whether the width grew past the width floor (and, without probabilities, the masks' old rule)."""
        growth = change.width_growth_px
        if growth is None or growth <= self.noise.width_px:
            return False
        if self.before.prob is None or self.after.prob is None:
            rule = max(WIDTH_UNCERTAINTY_PX, WIDTH_UNCERTAINTY_SHARE * change.width_p95_before_px)
            return growth > rule
        return True


def one_to_one(matches: dict[int, dict[int, float]]) -> list[tuple[int, int]]:
    """(AFTER index, BEFORE index) of the cracks matched to each other only."""
    count = Counter(b for found in matches.values() for b in found)
    return [(a, b) for a, found in matches.items() if len(found) == 1 for b in found if count[b] == 1]


def classify_changes(
    before: Survey, after: Survey, alignment: Alignment, tolerance: float, low_share: float = 0.25
) -> tuple[list[CrackChange], NoiseFloor]:
    """Every AFTER crack (new, extended, widened, unchanged, out of view) and every BEFORE crack no AFTER crack
    continues (closed, unchanged, out of view), and the pair's noise floor they were held against."""
    h = alignment.homography
    before_lines, after_lines = carried_lines(before, h), after.lines()
    scales = [local_scale(h, c.bbox[0] + c.bbox[2] / 2, c.bbox[1] + c.bbox[3] / 2) for c in before.measurement.cracks]
    matches = match(after_lines, before_lines, tolerance)
    tree, after_tree = shapely.STRtree(before_lines), shapely.STRtree(after_lines)
    first_free = max([before.next_id, *(i + 1 for i in before.ids)])
    ids = assign_ids(matches, before.ids, first_free)
    first_free = max([first_free, *(i + 1 for i in ids.values())])
    decider = Decider(before, after, alignment, tolerance, low_share)
    cracks = before.measurement.cracks
    whole = [(a, b) for a, b in one_to_one(matches) if decider.seen_whole(after_lines[a], before_lines[b])]
    after_cracks = after.measurement.cracks
    length_changes = [after_cracks[a].length_px - cracks[b].length_px * scales[b] for a, b in whole]
    width_changes = [decider.widths(after_cracks[a], [(cracks[b], scales[b])])[2] for a, b in whole]
    width_changes = [growth for growth in width_changes if growth is not None]
    decider.noise = noise_floor(before, after, alignment, low_share, length_changes, width_changes)
    out = []
    for a, crack in enumerate(after.measurement.cracks):
        found = sorted(matches.get(a, {}))
        if a not in ids:
            ids[a], first_free = first_free, first_free + 1
        change = CrackChange(ids[a], "new", after_lines[a], shapely.MultiLineString(), after_number=crack.id)
        change.length_after_px, change.width_p95_after_px = crack.length_px, crack.width_p95_px
        decider.floors(change)
        if found:
            change.before_ids = tuple(before.ids[b] for b in found)
            change.length_before_px = sum(cracks[b].length_px * scales[b] for b in found)
            before_widths = [(cracks[b], scales[b]) for b in found]
            widths = decider.widths(crack, before_widths)
            change.width_p95_before_px, change.width_p95_after_px, change.width_growth_px = widths
            near = [before_lines[b] for b in tree.query(after_lines[a], predicate="dwithin", distance=tolerance)]
            continued = [before_lines[b] for b in found]
            pieces = after_tree.query(shapely.union_all(continued), predicate="dwithin", distance=tolerance)
            decider.continued(change, continued, near, [after_lines[p] for p in pieces])
        else:
            widths = [c.width_p95_px * scale for c, scale in zip(cracks, scales, strict=True)]
            decider.appeared(change, before_lines, before.ids, widths)
        out.append(change)
    matched = {b for found in matches.values() for b in found}
    for b, crack in enumerate(cracks):
        if b not in matched:
            change = CrackChange(before.ids[b], "closed", before_lines[b], shapely.MultiLineString(), (before.ids[b],))
            change.length_before_px = crack.length_px * scales[b]
            change.width_p95_before_px = crack.width_p95_px * scales[b]
            decider.floors(change)
            decider.gone(change)
            out.append(change)
    return sorted(out, key=lambda c: c.id), decider.noise


def reporting_scale(
    before: Survey, after: Survey, alignment: Alignment, pixel_size_mm: float | None
) -> tuple[float | None, str | None]:
    """AFTER's pixel size in mm and where it came from: the option, AFTER's own, or BEFORE's over the scale."""
    if pixel_size_mm is not None:
        return pixel_size_mm, "--pixel-size"
    if after.pixel_size_mm is not None:
        return after.pixel_size_mm, "AFTER"
    if before.pixel_size_mm is not None:
        return before.pixel_size_mm / alignment.scale, "BEFORE, over the registration's scale"
    return None, None


def segmented_inputs(inputs: list, alignment: Alignment, segmenter, min_length: float):
    """Each input as a survey, photos (`Capture`s) segmented: two photos that the registration moves by a shift
    alone on one grid (`grid`), any other on its own; and whether two photos shared a grid (None: the inputs were
    not two photos segmented here)."""
    photos = hasattr(segmenter, "predict_prob") and all(isinstance(item, Capture) for item in inputs)
    places = None
    if photos:
        shapes = [item.shape for item in inputs]
        places = shared_grid(*shapes, alignment.homography, getattr(segmenter, "max_pixels", None))
    surveys = [
        segmented(item, segmenter, min_length, place) if isinstance(item, Capture) else item
        for item, place in zip(inputs, places or (None, None), strict=True)
    ]
    return surveys, (places is not None if photos else None)


def compare(
    before,
    after,
    *,
    segmenter=None,
    masks: bool = False,
    photos: tuple = (None, None),
    options: CompareOptions | None = None,
    **option_values,
) -> Changes:
    """Compare two surveys of one structure crack by crack; see the module notes.

    `before`, `after`: photos, masks (`masks=True`) or NAME_measure.json files (paths), `Survey`s, or photos read
    as `Capture`s (segmented here, like photos given by path).
    `segmenter`: what segments a photo (a CrackSegmenter, or see `survey.probabilities`); needed only where a
    survey is a photo (see `needs_segmenter`). With test-time augmentation and `tta_where="changes"` (the default),
    photos are segmented one pass per tile and augmented only around the changes found (`verify`); photo surveys
    given as `Survey`s are then taken as one pass's. `photos`: the photos masks or measure files came from, for
    registration. `options` (`CompareOptions`, or its fields as keywords): `pixel_size_mm`: AFTER's;
    `tolerance_px`: at least the alignment error + 2 px; `assume_aligned`: a fixed camera, no registration;
    `min_length`: shorter cracks are ignored; `low_share`: the low threshold over the model's.
    """
    options = CompareOptions.of(options, **option_values)
    pixel_size_mm, min_length = options.pixel_size_mm, options.min_length
    first = first_pass(segmenter) if options.tta_where == "changes" else None
    inputs = []
    for which, item, photo, scale in (("BEFORE", before, photos[0], None), ("AFTER", after, photos[1], pixel_size_mm)):
        if isinstance(item, (Survey, Capture)):
            inputs.append(item)
        elif masks or is_measure_file(item):
            inputs.append(load_survey(item, which, masks, photo, None, scale, min_length))
        else:
            inputs.append(photo_capture(item, which, photo, segmenter, scale))
    alignment = register(*inputs, options.assume_aligned)
    (before, after), one_grid = segmented_inputs(inputs, alignment, first or segmenter, min_length)
    if before.measurement.count == 0:
        log.warning(
            "BEFORE %s has no crack: every crack of AFTER is new (or out of view, or faint in BEFORE)", before.name
        )
    if after.measurement.count == 0:
        log.warning("AFTER %s has no crack: every crack of BEFORE is closed (or out of view)", after.name)
    check_scales(before, after, alignment)
    tolerance = max(options.tolerance_px or 0.0, alignment.error_px + EXTRA_TOLERANCE_PX)

    def decide(before: Survey, after: Survey):
        return classify_changes(before, after, alignment, tolerance, options.low_share)

    if first is None:
        cracks, noise = decide(before, after)
    else:
        before, after, cracks, noise = checked_changes(before, after, alignment, tolerance, segmenter, decide)
    next_id = max([before.next_id, *(c.id + 1 for c in cracks)])
    scale, scale_from = reporting_scale(before, after, alignment, pixel_size_mm)
    low_share = options.low_share
    return Changes(before, after, alignment, tolerance, cracks, next_id, scale, scale_from, noise, low_share, one_grid)
