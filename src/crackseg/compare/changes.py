"""What a comparison found: each crack's change in AFTER's frame, its evidence, and the pair's summary.

`decide` says how each change is decided; this module holds the results and what the tables and the summary say
of them. Lengths and widths are in AFTER pixels (BEFORE's scaled by the homography's local scale), and in mm with
a pixel size: `pixel_size_mm` (AFTER's), else AFTER's own (GeoTIFF, measure file), else BEFORE's over the scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import shapely

from crackseg.compare.noise import NoiseFloor
from crackseg.compare.registration import Alignment
from crackseg.compare.survey import CHANGES_FORMAT, CHANGES_FORMAT_VERSION, Survey
from crackseg.measure import Measurement

CHANGES = ("new", "extended", "widened", "unchanged", "closed", "out_of_view")
REPORTED = ("new", "extended", "widened", "closed")  # the classes that say something changed
EVIDENCE_RULE = (
    "new: AFTER's crack over the high threshold and BEFORE's probability within the tolerance under the low one along "
    "most of it; closed: the reverse on BEFORE's crack; extended: added parts where BEFORE shows no crack (under the "
    "low threshold), and the crack grown by more than the length floor, or a new crack grown out of a BEFORE "
    "crack's end across a gap AFTER's map bridges over the low threshold; widened: its local width grown by more than "
    "the width floor (median along the part both surveys see); out of view: less than half of the crack where both "
    "surveys show the surface, away from their edges"
)
FALLBACK_RULE = (
    "{which} has no probability map (a measure file): decisions that need its probabilities rest on the centrelines "
    "alone (any crack of the other survey not matched is new or closed, any added part counts, a widening must "
    "also pass max(1 px, 20 % of BEFORE's p95 width)), still above the noise floor"
)


@dataclass
class CrackChange:
    """One crack's change, in AFTER's frame (image coordinates: x right, y down, pixel centres at +0.5)."""

    id: int  # stable across surveys
    change: str  # one of CHANGES
    line: shapely.MultiLineString  # AFTER's centreline (BEFORE's, carried over, for cracks AFTER does not show)
    added: shapely.MultiLineString  # the new parts of an extended crack (else empty)
    before_ids: tuple[int, ...] = ()  # the BEFORE cracks it continues
    after_number: int | None = None  # its number in AFTER's own measurement (1 … n)
    length_before_px: float | None = None
    length_after_px: float | None = None
    added_length_px: float = 0.0
    width_p95_before_px: float | None = None
    width_p95_after_px: float | None = None
    # The evidence: how sure (0-1; None where no probability map decides), each survey's mean probability along
    # the part the decision rests on (the added parts of an extension, else the crack where both surveys see it),
    # and the pair's floors the length and width changes were held against.
    confidence: float | None = None
    prob_before: float | None = None
    prob_after: float | None = None
    length_floor_px: float | None = None
    width_floor_px: float | None = None
    widened: bool = False  # its width grew past the floor (an extended crack may have widened too)
    # A continued crack's growth where both surveys see it: in length, its parts beyond the BEFORE cracks less
    # theirs beyond it; in width, the median growth of its local width (`evidence.width_growth`).
    length_change_px: float | None = None
    width_growth_px: float | None = None
    # Unchanged, but only one survey shows it and the other shows no crack along more than half of it: it is only
    # shorter than the length floor. One pass per tile may cut a longer crack into such pieces, so a comparison
    # that checks its changes with test-time augmentation (`verify`) checks these too.
    under_floor: bool = False
    # Continued, but a part of the BEFORE crack longer than the length floor is gone: AFTER shows no crack along it.
    # One pass may have cut a closed crack out of BEFORE joined to a neighbour that AFTER still shows, so these are
    # checked too, on both sides: averaged, the closed crack comes out on its own.
    lost_part: bool = False

    def record(self, pixel_size_mm: float | None) -> dict:
        """The flat row of the CSV and the GeoJSON / GeoPackage attributes: px, and mm where the scale is known.

        Names of at most 10 characters, so that a shapefile keeps them: len_bef / len_aft the length before and
        after, len_chg its growth where both surveys see it, added the length an extension added, len_flr the
        pair's length floor, w95_bef / w95_aft the p95 width before and after, w_inc the median growth of the local
        width, w_flr the width floor; each with _px and _mm; p_before / p_after the mean probabilities."""
        px = {
            "len_bef": self.length_before_px,
            "len_aft": self.length_after_px,
            "len_chg": self.length_change_px,
            "added": self.added_length_px,
            "len_flr": self.length_floor_px,
            "w95_bef": self.width_p95_before_px,
            "w95_aft": self.width_p95_after_px,
            "w_inc": self.width_growth_px,
            "w_flr": self.width_floor_px,
        }
        row = {
            "id": self.id,
            "change": self.change,
            "confidence": rounded(self.confidence, 3),
            "before_ids": ";".join(map(str, self.before_ids)),
            "p_before": rounded(self.prob_before, 3),
            "p_after": rounded(self.prob_after, 3),
        }
        row |= {f"{k}_px": rounded(v, 2) for k, v in px.items()}
        scale = pixel_size_mm
        row |= {f"{k}_mm": None if v is None or scale is None else round(v * scale, 4) for k, v in px.items()}
        return row


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


RECORD_FIELDS = list(CrackChange(0, "new", shapely.MultiLineString(), shapely.MultiLineString()).record(None))


@dataclass
class Changes:
    """Two surveys compared: every crack's change, in AFTER's frame, how the surveys were aligned, the evidence
    the changes rest on and the pair's noise floor."""

    before: Survey
    after: Survey
    alignment: Alignment
    tolerance_px: float
    cracks: list[CrackChange]
    next_id: int  # the first id the next comparison may give a new crack
    pixel_size_mm: float | None = None  # of AFTER's frame
    pixel_size_from: str | None = None
    noise: NoiseFloor | None = None
    low_share: float = 0.25  # the low threshold over the high one
    one_grid: bool | None = None  # two photos tiled on one grid (`grid`); None: not two photos segmented here

    def counts(self) -> dict[str, int]:
        return {name: sum(c.change == name for c in self.cracks) for name in CHANGES}

    def of(self, change: str) -> list[CrackChange]:
        return [c for c in self.cracks if c.change == change]

    def evidence(self) -> dict:
        """What the changes rest on: each survey's evidence and thresholds, the rule, and any fallback."""
        sides = {"before": self.before, "after": self.after}
        missing = [name.upper() for name, survey in sides.items() if survey.prob is None]
        return {
            name: {
                "from": survey.evidence,
                "high_threshold": None if survey.prob is None else round(survey.threshold, 4),
                "low_threshold": None if survey.prob is None else round(self.low_share * survey.threshold, 4),
            }
            for name, survey in sides.items()
        } | {
            "rule": EVIDENCE_RULE,
            "fallback": FALLBACK_RULE.format(which=" and ".join(missing)) if missing else None,
        }

    def summary(self) -> dict:
        """Counts per class, new length (new cracks and extensions), the largest widening, alignment quality,
        the evidence and the noise floor."""
        new_length = sum(c.length_after_px for c in self.of("new"))
        added = sum(c.added_length_px for c in self.cracks)
        widest = max(
            (c for c in self.cracks if c.widened),
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
            "one_tile_grid": self.one_grid,
            "evidence": self.evidence(),
            "noise_floor": None if self.noise is None else self.noise.to_dict(self.pixel_size_mm),
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
        "no_data": None if survey.valid is None else round(1.0 - float(survey.valid.mean()), 4),
    }


def widening_dict(crack: CrackChange, pixel_size_mm: float | None) -> dict:
    record = crack.record(pixel_size_mm)
    keys = ["id", "change", "confidence", "w95_bef_px", "w95_aft_px", "w_inc_px", "w_flr_px"]
    if pixel_size_mm:
        keys += ["w95_bef_mm", "w95_aft_mm", "w_inc_mm", "w_flr_mm"]
    return {k: record[k] for k in keys}
