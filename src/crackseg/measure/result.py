"""What a measurement returns: one `Crack` per crack and the `Measurement` of a mask.

Units: lengths and widths in px, and in mm (× pixel size) when the pixel size is known; areas in px² and mm²
(× pixel size²). Every table and map names a crack's fields by `FIELD_NAMES`: at most 10 characters each, so that
a shapefile (whose dBase table cuts names at 10) keeps them whole and distinct.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from crackseg.measure.classes import CLASSES, UNKNOWN_WIDTH_CLASS, WIDTH_CLASS_PRESETS, WidthClasses


@dataclass
class Crack:
    id: int
    crack_class: str
    length_px: float
    width_mean_px: float
    width_median_px: float
    width_max_px: float
    width_p95_px: float
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, width, height in pixels
    orientation_deg: float  # counter-clockwise from horizontal, [0, 180)
    branch_points: int
    endpoints: int
    orientation_class: str  # longitudinal, transverse or diagonal, branched or not
    branched: bool  # 3 or more ends, or a loop (crack_class says "branched" then)
    width_class: str  # from width_p95_mm; UNKNOWN_WIDTH_CLASS without a pixel size
    below_resolution: bool  # median width under 2 px: the mm widths are upper bounds
    length_mm: float | None = None
    width_mean_mm: float | None = None
    width_median_mm: float | None = None
    width_max_mm: float | None = None
    width_p95_mm: float | None = None
    area_mm2: float | None = None
    pattern: str = ""  # "", "network", or with a pixel size "alligator" / "block" (see `classes`)


# Crack's fields as the tables and maps name them (CSV columns, GeoJSON properties, GeoPackage fields, JSON keys).
FIELD_NAMES = {
    "id": "id",
    "crack_class": "crack_cls",
    "length_px": "len_px",
    "width_mean_px": "w_mean_px",
    "width_median_px": "w_med_px",
    "width_max_px": "w_max_px",
    "width_p95_px": "w_p95_px",
    "area_px": "area_px",
    "bbox": "bbox",
    "orientation_deg": "orient_deg",
    "branch_points": "branch_pts",
    "endpoints": "endpoints",
    "orientation_class": "orient_cls",
    "branched": "branched",
    "width_class": "width_cls",
    "below_resolution": "below_res",
    "length_mm": "len_mm",
    "width_mean_mm": "w_mean_mm",
    "width_median_mm": "w_med_mm",
    "width_max_mm": "w_max_mm",
    "width_p95_mm": "w_p95_mm",
    "area_mm2": "area_mm2",
    "pattern": "pattern",
}


def crack_dict(crack: Crack) -> dict:
    """The crack as the tables name its fields (`FIELD_NAMES`), bbox as a list [x, y, width, height]."""
    return {FIELD_NAMES[name]: value for name, value in asdict(crack).items()}


def empty_array(dtype):
    """A dataclass field that starts as an empty array of `dtype`, left out of the repr."""
    return field(repr=False, default_factory=lambda: np.zeros(0, dtype))


@dataclass
class Measurement:
    height: int  # of the image, px
    width: int
    pixel_size_mm: float | None
    min_length_px: float
    width_classes: WidthClasses = WIDTH_CLASS_PRESETS["concrete"]
    cracks: list[Crack] = field(default_factory=list)
    dropped: int = 0  # components shorter than min_length_px
    warnings: list[str] = field(default_factory=list)  # signs that the mask is not a crack mask
    # The kept cracks' skeleton pixels, for drawing: row, column, local width (px) and crack id.
    skeleton_rows: np.ndarray = empty_array(np.int32)
    skeleton_cols: np.ndarray = empty_array(np.int32)
    skeleton_width_px: np.ndarray = empty_array(np.float32)
    skeleton_id: np.ndarray = empty_array(np.int32)
    # ... and the local width before its crack's area-matching shift: what the mask around the pixel alone says.
    # A crack's shift depends on all of it, so on where an edge or a no-data region cuts it; comparing two surveys'
    # widths at a place needs what depends on that place only.
    skeleton_local_width_px: np.ndarray = empty_array(np.float32)
    # Per crack (aligned with `cracks`): its centreline, one (n, 2) array of x, y image coordinates per branch.
    centrelines: list[list[np.ndarray]] = field(repr=False, default_factory=list)

    @property
    def count(self) -> int:
        return len(self.cracks)

    @property
    def total_length_px(self) -> float:
        return float(sum(c.length_px for c in self.cracks))

    @property
    def max_width_px(self) -> float:
        return max((c.width_max_px for c in self.cracks), default=0.0)

    @property
    def area_fraction(self) -> float:
        return sum(c.area_px for c in self.cracks) / float(self.height * self.width)

    def summary(self) -> dict:
        """Per-image figures, in px and (when the pixel size is known) mm."""
        out = {
            "count": self.count,
            "total_length_px": round(self.total_length_px, 2),
            "max_width_px": round(self.max_width_px, 2),
            "crack_area_px": sum(c.area_px for c in self.cracks),
            "crack_area_fraction": round(self.area_fraction, 6),
            "dropped_short": self.dropped,
            "min_length_px": self.min_length_px,
            "classes": {name: sum(c.crack_class == name for c in self.cracks) for name in CLASSES},
            "below_resolution": sum(c.below_resolution for c in self.cracks),
            "patterns": {name: sum(c.pattern == name for c in self.cracks) for name in self.pattern_labels},
            "width_class_scheme": self.width_classes.name,
            "width_classes": {name: sum(c.width_class == name for c in self.cracks) for name in self.width_labels},
            "length_by_width_class_px": self.length_by_width_class(),
        }
        if self.pixel_size_mm:
            out["total_length_mm"] = round(self.total_length_px * self.pixel_size_mm, 3)
            out["max_width_mm"] = round(self.max_width_px * self.pixel_size_mm, 4)
            out["crack_area_mm2"] = round(sum(c.area_px for c in self.cracks) * self.pixel_size_mm**2, 3)
            out["length_by_width_class_mm"] = self.length_by_width_class(self.pixel_size_mm)
        return out

    @property
    def pattern_labels(self) -> tuple[str, ...]:
        """The patterns (networks of cells) a crack of this measurement can show."""
        return ("alligator", "block") if self.pixel_size_mm else ("network",)

    @property
    def width_labels(self) -> tuple[str, ...]:
        """The width classes a crack of this measurement can be in."""
        return self.width_classes.labels if self.pixel_size_mm else (UNKNOWN_WIDTH_CLASS,)

    def length_by_width_class(self, scale: float = 1.0) -> dict[str, float]:
        """Total crack length per width class, in px (or × `scale`)."""
        return {
            name: round(sum(c.length_px for c in self.cracks if c.width_class == name) * scale, 3)
            for name in self.width_labels
        }

    def to_dict(self) -> dict:
        """JSON-ready: image size, pixel size, per-image summary and one entry per crack."""
        return {
            "image_size": {"height": self.height, "width": self.width},
            "pixel_size_mm": self.pixel_size_mm,
            "width_classes": self.width_classes.to_dict(),
            "warnings": self.warnings,
            "summary": self.summary(),
            "cracks": [crack_dict(c) for c in self.cracks],
        }


def add_millimetres(crack: Crack, pixel_size_mm: float) -> None:
    """Fill in the crack's mm lengths, widths and area from its px ones."""
    for name in ("length", "width_mean", "width_median", "width_max", "width_p95"):
        setattr(crack, f"{name}_mm", round(getattr(crack, f"{name}_px") * pixel_size_mm, 4))
    crack.area_mm2 = round(crack.area_px * pixel_size_mm**2, 4)
