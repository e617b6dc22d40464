"""Width classes, and the orientation class and pattern of a crack.

- Orientation: the principal axis of the crack's pixels, in degrees counter-clockwise from the image's
  horizontal axis, in [0, 180) (`blocks.axis_angles`). Class: branched when the pruned skeleton has 3 or
  more ends or a loop; otherwise longitudinal (within 22.5° of the structure's direction, `direction_deg`,
  measured the same way: 90, image up, by default), transverse (within 22.5° of its perpendicular) or diagonal.
- Pattern: a crack whose pruned skeleton closes NETWORK_CELLS or more loops is a network of cells, "network";
  with a pixel size it is rated by the side of a mean cell, sqrt(bounding-box area / loops), as the LTPP
  Distress Identification Manual tells fatigue from block cracking: "alligator" when under 300 mm (its pieces
  are "usually less than 0.3 m on the longest side"), else "block" (pieces of about 0.1 to 10 m²). The terms
  are pavement ones; on concrete an "alligator" network is map cracking. The class "branched" is any branched
  crack, one loop or a fork is enough; the pattern "network" needs NETWORK_CELLS loops.
- Width class: the crack's 95th-percentile width in mm put into bins (`WidthClasses`; presets `concrete`,
  after the 0.1–0.4 mm limits of EC2 Table 7.1N and ACI 224R, and `pavement`, low / medium / high severity by
  width), "unknown (no scale)" without a pixel size. The p95, not the median: a crack is rated by its widest
  stretch, not its typical one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackseg.errors import InputError, read_json

CLASSES = ("longitudinal", "transverse", "diagonal", "branched")
UNKNOWN_WIDTH_CLASS = "unknown (no scale)"  # the width class of every crack when the pixel size is not known
NETWORK_CELLS = 3  # loops in one crack's skeleton that make it a network (fewer: a branched crack)
ALLIGATOR_CELL_MM = 300.0  # LTPP: fatigue (alligator) pieces are usually under 0.3 m on the longest side


class ClassesError(InputError):
    """A width-class scheme (`--classes`) that cannot be used; the message says which part and what to do."""


def default_labels(bins_mm) -> tuple[str, ...]:
    """Class names for bins a < b < ... < z: "<a mm", "a-b mm", ..., ">=z mm"."""
    inner = [f"{a:g}-{b:g} mm" for a, b in zip(bins_mm[:-1], bins_mm[1:], strict=True)]
    return (f"<{bins_mm[0]:g} mm", *inner, f">={bins_mm[-1]:g} mm")


def check_bins(bins) -> tuple[float, ...]:
    """Class boundaries in mm as a tuple, or a ClassesError saying what is wrong with them."""
    numbers = isinstance(bins, list | tuple) and all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in bins
    )
    if not numbers or not bins:
        raise ClassesError(f"bins_mm must be a non-empty list of numbers (mm), got {bins!r}")
    if not (bins[0] > 0 and all(a < b for a, b in zip(bins[:-1], bins[1:], strict=True))):
        raise ClassesError(f"bins_mm must be positive and increasing, got {list(bins)}")
    return tuple(float(b) for b in bins)


@dataclass(frozen=True)
class WidthClasses:
    """Crack-width classes: a width w in mm is in class i when bins_mm[i - 1] <= w < bins_mm[i]."""

    name: str
    bins_mm: tuple[float, ...]
    labels: tuple[str, ...]

    def __post_init__(self):
        bins = check_bins(self.bins_mm)
        if len(self.labels) != len(bins) + 1 or not all(isinstance(s, str) and s for s in self.labels):
            raise ClassesError(
                f"labels must be {len(bins) + 1} names (one more than bins_mm: below the first bin, between each "
                f"two, above the last), got {list(self.labels)}"
            )
        if len(set(self.labels)) < len(self.labels) or UNKNOWN_WIDTH_CLASS in self.labels:
            raise ClassesError(f"labels must differ from each other and from {UNKNOWN_WIDTH_CLASS!r}")

    def classify(self, width_mm: float | None) -> str:
        if width_mm is None:
            return UNKNOWN_WIDTH_CLASS
        return self.labels[int(np.searchsorted(self.bins_mm, width_mm, side="right"))]

    def to_dict(self) -> dict:
        return {"name": self.name, "bins_mm": list(self.bins_mm), "labels": list(self.labels)}


WIDTH_CLASS_PRESETS = {
    # EC2 (EN 1992-1-1, Table 7.1N: w_max 0.2 / 0.3 / 0.4 mm) and ACI 224R (0.10 mm for water-retaining
    # structures up to 0.41 mm in dry air): the widths at which reinforced concrete is judged.
    "concrete": WidthClasses("concrete", (0.1, 0.2, 0.3, 0.4), default_labels((0.1, 0.2, 0.3, 0.4))),
    # Severity of longitudinal and transverse cracks by mean width in the FHWA LTPP Distress Identification Manual
    # (FHWA-HRT-13-092): low up to 6 mm, moderate up to 19 mm, high beyond. Other manuals differ (ASTM D6433 for
    # roads: 10 and 76 mm), so a JSON file (--classes FILE.json) sets an agency's own.
    "pavement": WidthClasses("pavement", (6.0, 19.0), ("low (<6 mm)", "moderate (6-19 mm)", "high (>=19 mm)")),
}


def load_width_classes(spec: str | Path | WidthClasses | None = None) -> WidthClasses:
    """A preset by name ("concrete", the default, or "pavement"), or a JSON file {"name", "bins_mm", "labels"}.

    "name" defaults to the file's name and "labels" to "<a mm", "a-b mm", ..., ">=z mm".
    """
    if isinstance(spec, WidthClasses):
        return spec
    if spec is None or str(spec) in WIDTH_CLASS_PRESETS:
        return WIDTH_CLASS_PRESETS[str(spec or "concrete")]
    path = Path(spec)
    if path.suffix.lower() != ".json":
        raise ClassesError(f"--classes {spec}: expected {' or '.join(WIDTH_CLASS_PRESETS)} or a .json file")
    data = read_json(path, f"--classes {spec}", ClassesError)
    if not isinstance(data, dict):
        raise ClassesError(f'--classes {spec}: expected a JSON object {{"name", "bins_mm", "labels"}}')
    unknown = sorted(set(data) - {"name", "bins_mm", "labels"})
    if unknown:
        raise ClassesError(f"--classes {spec}: unknown field {unknown[0]!r}; the fields are name, bins_mm, labels")
    if "bins_mm" not in data:
        raise ClassesError(
            f"--classes {spec}: the field 'bins_mm' is missing (class boundaries in mm, e.g. [0.2, 0.4])"
        )
    try:
        bins = check_bins(data["bins_mm"])
        labels = data.get("labels", default_labels(bins))
        labels = tuple(labels) if isinstance(labels, list | tuple) else ()
        return WidthClasses(str(data.get("name", path.stem)), bins, labels)
    except ClassesError as err:
        raise ClassesError(f"--classes {spec}: {err}") from None


def classify(orientation_deg: float, branched: bool, direction_deg: float = 90.0) -> str:
    """The crack class: "branched" for any branched crack, else its orientation class."""
    return "branched" if branched else orientation_class(orientation_deg, direction_deg)


def orientation_class(orientation_deg: float, direction_deg: float = 90.0) -> str:
    """Longitudinal, transverse or diagonal: the crack's axis against the structure's direction (both in degrees
    counter-clockwise from the image's horizontal axis; an axis, so 270 is 90)."""
    off_direction = abs((orientation_deg - direction_deg + 90.0) % 180.0 - 90.0)  # 0 … 90
    if 22.5 <= off_direction <= 67.5:
        return "diagonal"
    return "longitudinal" if off_direction < 22.5 else "transverse"


def crack_pattern(loops: int, box_area_px: float, pixel_size_mm: float | None) -> str:
    """Network or not and, with a pixel size, alligator or block (see the module notes)."""
    if loops < NETWORK_CELLS:
        return ""
    if not pixel_size_mm:
        return "network"
    cell_side_mm = math.sqrt(box_area_px / loops) * pixel_size_mm
    return "alligator" if cell_side_mm < ALLIGATOR_CELL_MM else "block"
