"""Two surveys compared crack by crack: each crack's change, in AFTER's frame.

- Matching tolerance: max(`tolerance_px`, alignment error + 2 px): the skeleton's own placement is good to about a
  pixel in each survey.
- Classes, per AFTER crack: `new` (continues no BEFORE crack); `extended` (the parts of its centreline farther
  than the tolerance from every BEFORE centreline, measured from BEFORE's tips (flat buffer ends) and inside
  BEFORE's view, total more than the tolerance; pieces shorter than the tolerance plus half the crack's width are
  its tip's uncertainty; the parts are reported as their own geometry); `widened` (its p95 width grew by more
  than max(1 px, 20 %) of BEFORE's, the width's uncertainty: 2·d − 1 widths move by about a pixel between two
  segmentations); `unchanged`. Per BEFORE crack that no AFTER crack continues: `closed` (closed or repaired).
  Either way, a crack mostly outside the other survey's view is `out_of_view`, not new or closed.
- Lengths and widths are in AFTER pixels (BEFORE's scaled by the homography's local scale), and in mm with a pixel
  size: `pixel_size_mm` (AFTER's), else AFTER's own (GeoTIFF, measure file), else BEFORE's over the scale.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import shapely

from crackseg.compare.match import added_parts, assign_ids, carried_lines, match
from crackseg.compare.registration import Alignment, check_scales, footprint, image_box, local_scale, register
from crackseg.compare.survey import CHANGES_FORMAT, CHANGES_FORMAT_VERSION, Survey, load_survey
from crackseg.measure import Measurement
from crackseg.options import CompareOptions

log = logging.getLogger(__name__)

CHANGES = ("new", "extended", "widened", "unchanged", "closed", "out_of_view")
EXTRA_TOLERANCE_PX = 2.0  # over the alignment error: the skeletons' own placement in two segmentations
WIDTH_UNCERTAINTY_PX, WIDTH_UNCERTAINTY_SHARE = 1.0, 0.2
IN_VIEW_SHARE = 0.5  # a crack with less of its centreline inside the other survey's view is out of view
WIDTH_RULE = "max(1 px, 20 % of BEFORE's p95 width)"


@dataclass
class CrackChange:
    """One crack's change, in AFTER's frame (image coordinates: x right, y down, pixel centres at +0.5)."""

    id: int  # stable across surveys
    change: str  # one of CHANGES
    line: shapely.MultiLineString  # AFTER's centreline (BEFORE's, carried over, for closed and out-of-view ones)
    added: shapely.MultiLineString  # the new parts of an extended crack (else empty)
    before_ids: tuple[int, ...] = ()  # the BEFORE cracks it continues
    after_number: int | None = None  # its number in AFTER's own measurement (1 … n)
    length_before_px: float | None = None
    length_after_px: float | None = None
    added_length_px: float = 0.0
    width_p95_before_px: float | None = None
    width_p95_after_px: float | None = None

    @property
    def width_growth_px(self) -> float | None:
        if self.width_p95_before_px is None or self.width_p95_after_px is None:
            return None
        return self.width_p95_after_px - self.width_p95_before_px

    def record(self, pixel_size_mm: float | None) -> dict:
        """The flat row of the CSV and the GeoJSON / GeoPackage attributes: px, and mm where the scale is known.

        Names of at most 10 characters, so that a shapefile keeps them: len_bef / len_aft the length before and
        after, added the length an extension added, w95_bef / w95_aft the p95 width before and after, w95_inc its
        growth; each with _px and _mm."""
        px = {
            "len_bef": self.length_before_px,
            "len_aft": self.length_after_px,
            "added": self.added_length_px,
            "w95_bef": self.width_p95_before_px,
            "w95_aft": self.width_p95_after_px,
            "w95_inc": self.width_growth_px,
        }
        row = {"id": self.id, "change": self.change, "before_ids": ";".join(map(str, self.before_ids))}
        row |= {f"{k}_px": None if v is None else round(v, 2) for k, v in px.items()}
        scale = pixel_size_mm
        row |= {f"{k}_mm": None if v is None or scale is None else round(v * scale, 4) for k, v in px.items()}
        return row


RECORD_FIELDS = list(CrackChange(0, "new", shapely.MultiLineString(), shapely.MultiLineString()).record(None))


def widened(crack: CrackChange) -> bool:
    """Whether the p95 width grew by more than its uncertainty (whatever else changed)."""
    growth = crack.width_growth_px
    return growth is not None and growth > width_uncertainty(crack.width_p95_before_px)


def width_uncertainty(width_p95_before_px: float | None) -> float:
    """How much a p95 width may grow between two segmentations without the crack having widened."""
    return max(WIDTH_UNCERTAINTY_PX, WIDTH_UNCERTAINTY_SHARE * (width_p95_before_px or 0.0))


def in_view(line, view: shapely.Polygon) -> bool:
    return line.length == 0 or shapely.intersection(line, view).length >= IN_VIEW_SHARE * line.length


@dataclass
class Changes:
    """Two surveys compared: every crack's change, in AFTER's frame, and how the surveys were aligned."""

    before: Survey
    after: Survey
    alignment: Alignment
    tolerance_px: float
    cracks: list[CrackChange]
    next_id: int  # the first id the next comparison may give a new crack
    pixel_size_mm: float | None = None  # of AFTER's frame
    pixel_size_from: str | None = None

    def counts(self) -> dict[str, int]:
        return {name: sum(c.change == name for c in self.cracks) for name in CHANGES}

    def of(self, change: str) -> list[CrackChange]:
        return [c for c in self.cracks if c.change == change]

    def summary(self) -> dict:
        """Counts per class, new length (new cracks and extensions), the largest widening, alignment quality."""
        new_length = sum(c.length_after_px for c in self.of("new"))
        added = sum(c.added_length_px for c in self.cracks)
        widest = max(
            (c for c in self.cracks if c.before_ids and c.after_number is not None and widened(c)),
            key=lambda c: c.width_growth_px,
            default=None,
        )
        out = {
            "format": CHANGES_FORMAT,
            "format_version": CHANGES_FORMAT_VERSION,
            "before": survey_dict(self.before),
            "after": survey_dict(self.after),
            "alignment": self.alignment.to_dict(),
            "tolerance_px": round(self.tolerance_px, 3),
            "width_uncertainty": WIDTH_RULE,
            "pixel_size_mm": self.pixel_size_mm,
            "pixel_size_from": self.pixel_size_from,
            "counts": self.counts(),
            "new_crack_length_px": round(new_length, 2),
            "added_length_px": round(added, 2),
            "total_new_length_px": round(new_length + added, 2),
            "largest_widening": None if widest is None else widening_dict(widest, self.pixel_size_mm),
            "next_crack_id": self.next_id,
        }
        if self.pixel_size_mm:
            for name in ("new_crack_length", "added_length", "total_new_length"):
                out[f"{name}_mm"] = round(out[f"{name}_px"] * self.pixel_size_mm, 3)
        return out

    def after_with_ids(self) -> Measurement:
        """AFTER's measurement with each crack's stable id: the BEFORE of the next comparison."""
        ids = {c.after_number: c.id for c in self.cracks if c.after_number is not None}
        result = dataclasses.replace(self.after.measurement)
        result.cracks = [dataclasses.replace(c, id=ids[c.id]) for c in self.after.measurement.cracks]
        return result


def survey_dict(survey: Survey) -> dict:
    return {
        "input": survey.name,
        "source": survey.source,
        "photo": survey.photo_path,
        "image_size": {"height": survey.shape[0], "width": survey.shape[1]},
        "cracks": survey.measurement.count,
        "pixel_size_mm": survey.pixel_size_mm,
        "georeference": survey.georef.crs_name() if survey.georef else None,
    }


def widening_dict(crack: CrackChange, pixel_size_mm: float | None) -> dict:
    record = crack.record(pixel_size_mm)
    keys = ["id", "change", "w95_bef_px", "w95_aft_px", "w95_inc_px"]
    if pixel_size_mm:
        keys += ["w95_bef_mm", "w95_aft_mm", "w95_inc_mm"]
    return {k: record[k] for k in keys}


def classify_changes(before: Survey, after: Survey, alignment: Alignment, tolerance: float) -> list[CrackChange]:
    """Every AFTER crack (new, extended, widened, unchanged) and every BEFORE crack no AFTER crack continues."""
    h = alignment.homography
    before_lines, after_lines = carried_lines(before, h), after.lines()
    scales = [local_scale(h, c.bbox[0] + c.bbox[2] / 2, c.bbox[1] + c.bbox[3] / 2) for c in before.measurement.cracks]
    matches = match(after_lines, before_lines, tolerance)
    tree = shapely.STRtree(before_lines)
    first_free = max([before.next_id, *(i + 1 for i in before.ids)])
    ids = assign_ids(matches, before.ids, first_free)
    first_free = max([first_free, *(i + 1 for i in ids.values())])
    before_view, after_view = footprint(before.shape, h), image_box(after.shape)
    out = []
    for a, crack in enumerate(after.measurement.cracks):
        found = matches.get(a, {})
        if a not in ids:
            ids[a], first_free = first_free, first_free + 1
        change = CrackChange(ids[a], "new", after_lines[a], shapely.MultiLineString(), after_number=crack.id)
        change.length_after_px, change.width_p95_after_px = crack.length_px, crack.width_p95_px
        if found:
            near = [before_lines[b] for b in tree.query(after_lines[a], predicate="dwithin", distance=tolerance)]
            continued(change, sorted(found), before, near, before_view, scales, tolerance)
        elif not in_view(after_lines[a], before_view):
            change.change = "out_of_view"
        out.append(change)
    matched = {b for found in matches.values() for b in found}
    for b, crack in enumerate(before.measurement.cracks):
        if b not in matched:
            gone = "closed" if in_view(before_lines[b], after_view) else "out_of_view"
            change = CrackChange(before.ids[b], gone, before_lines[b], shapely.MultiLineString(), (before.ids[b],))
            change.length_before_px = crack.length_px * scales[b]
            change.width_p95_before_px = crack.width_p95_px * scales[b]
            out.append(change)
    return sorted(out, key=lambda c: c.id)


def continued(change: CrackChange, found: list[int], before: Survey, near, view, scales, tolerance: float) -> None:
    """Fill in an AFTER crack that continues the BEFORE cracks `found` (indices; `near`: every carried BEFORE
    centreline within the tolerance of it; `view`: BEFORE's image outline): extended, widened or unchanged."""
    cracks = before.measurement.cracks
    change.before_ids = tuple(before.ids[b] for b in found)
    change.length_before_px = sum(cracks[b].length_px * scales[b] for b in found)
    change.width_p95_before_px = max(cracks[b].width_p95_px * scales[b] for b in found)
    # A centreline's tip lies at the crack's end, which moves out by half of any widening: shorter added pieces
    # than the tolerance plus half the width are a tip's uncertainty, not growth.
    change.added = added_parts(change.line, near, view, tolerance, tolerance + change.width_p95_after_px / 2)
    change.added_length_px = change.added.length
    if change.added_length_px > tolerance:
        change.change = "extended"
    elif widened(change):
        change.change = "widened"
    else:
        change.change = "unchanged"


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

    `before`, `after`: photos, masks (`masks=True`) or NAME_measure.json files (paths), or `Survey`s.
    `segmenter`: what segments a photo, anything with `.predict(photo).mask` or a callable photo → mask; needed
    only where a survey is a photo (see `needs_segmenter`). `photos`: the photos masks or measure files came from,
    for registration. `options` (`CompareOptions`, or its fields as keywords): `pixel_size_mm`: AFTER's;
    `tolerance_px`: at least the alignment error + 2 px; `assume_aligned`: a fixed camera, no registration;
    `min_length`: shorter cracks are ignored.
    """
    options = CompareOptions.of(options, **option_values)
    pixel_size_mm, min_length = options.pixel_size_mm, options.min_length
    surveys = []
    for which, item, photo, scale in (("BEFORE", before, photos[0], None), ("AFTER", after, photos[1], pixel_size_mm)):
        surveys.append(
            item if isinstance(item, Survey) else load_survey(item, which, masks, photo, segmenter, scale, min_length)
        )
    before, after = surveys
    if before.measurement.count == 0:
        log.warning("BEFORE %s has no crack: every crack of AFTER is new (or out of view)", before.name)
    if after.measurement.count == 0:
        log.warning("AFTER %s has no crack: every crack of BEFORE is closed (or out of view)", after.name)
    alignment = register(before, after, options.assume_aligned)
    check_scales(before, after, alignment)
    tolerance = max(options.tolerance_px or 0.0, alignment.error_px + EXTRA_TOLERANCE_PX)
    cracks = classify_changes(before, after, alignment, tolerance)
    next_id = max([before.next_id, *(c.id + 1 for c in cracks)])
    scale, scale_from = reporting_scale(before, after, alignment, pixel_size_mm)
    return Changes(before, after, alignment, tolerance, cracks, next_id, scale, scale_from)
