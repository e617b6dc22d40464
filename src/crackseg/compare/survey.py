"""One survey of a structure, ready to compare: its cracks with stable ids, and what places it.

A survey comes from a photo (segmented by the segmenter its caller gives), a mask, or a NAME_measure.json from
`crackseg measure` (its centrelines, no segmentation). Each crack keeps an id; a measure file's ids are kept, so
that the `after_measure.json` a comparison writes (the AFTER survey with stable ids) can be the BEFORE of the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from crackseg.errors import CracksegError, InputError, read_json
from crackseg.io.georef import Georeference, GeoreferenceError, check_shape, read_georeference
from crackseg.io.images import read_image, read_mask, to_rgb_uint8
from crackseg.measure import DEFAULT_MIN_LENGTH, Measurement, WidthClasses, measure
from crackseg.measure.maps import MEASURE_FORMAT, READABLE_MEASURE_VERSIONS, crack_from_record

# A comparison's summary.json says what it is, so that it is refused as a survey with a pointer to the right file.
# Version 2: the changes' short field names (`CrackChange.record`) in largest_widening.
CHANGES_FORMAT, CHANGES_FORMAT_VERSION = "crackseg-changes", 2


class CompareError(InputError):
    """Two surveys that cannot be compared as given; the message names the file or option and what to do."""


@dataclass
class Survey:
    """One inspection: its cracks (with stable ids), and what places it: photo, georeference, pixel size."""

    name: str  # the input, for messages and the report
    measurement: Measurement
    ids: list[int]  # each crack's stable id, aligned with measurement.cracks
    photo: np.ndarray | None = field(default=None, repr=False)  # RGB uint8: what registration looks at
    georef: Georeference | None = None
    pixel_size_mm: float | None = None  # its own, from its georeference or measure file
    next_id: int = 1  # above every id this survey's history has used
    source: str = "mask"  # photo, mask or measure file
    photo_path: str | None = None

    @classmethod
    def from_arrays(
        cls,
        mask,
        photo=None,
        name: str = "array",
        georef: Georeference | None = None,
        pixel_size_mm: float | None = None,
        min_length: float = DEFAULT_MIN_LENGTH,
    ) -> Survey:
        """A survey from a crack mask (and the photo it came from, for registration), ids 1 … n."""
        result = measure(mask, pixel_size_mm=pixel_size_mm, min_length=min_length)
        rgb = None if photo is None else to_rgb_uint8(photo)
        if rgb is not None and rgb.shape[:2] != (result.height, result.width):
            raise CompareError(
                f"{name}: the photo is {rgb.shape[1]}×{rgb.shape[0]} px but its mask {result.width}×{result.height}"
            )
        ids = [c.id for c in result.cracks]
        return cls(name, result, ids, rgb, georef, pixel_size_mm, len(ids) + 1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.measurement.height, self.measurement.width

    def lines(self) -> list[shapely.MultiLineString]:
        """Each crack's centreline (all its branches) in its own image coordinates."""
        return [shapely.MultiLineString([line for line in lines if len(line) > 1]) for lines in self.centrelines]

    @property
    def centrelines(self) -> list[list[np.ndarray]]:
        return self.measurement.centrelines


def is_measure_file(path) -> bool:
    """Whether an input is a NAME_measure.json (read as it is) rather than a photo or a mask."""
    return Path(path).suffix.lower() == ".json"


def needs_segmenter(inputs, masks: bool) -> bool:
    """Whether comparing these inputs segments a photo: a model is loaded only then."""
    return not masks and not all(is_measure_file(path) for path in inputs)


def load_survey(
    path,
    which: str,
    masks: bool = False,
    photo=None,
    segmenter=None,
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
) -> Survey:
    """BEFORE or AFTER (`which`, for messages) from a photo, a mask (`masks`) or a NAME_measure.json.

    `photo`: the photo a mask or measure file came from, for registration. `segmenter`: what segments a photo,
    anything with `.predict(photo).mask` or a callable photo → mask; unused for masks and measure files.
    `pixel_size_mm`: this survey's, overriding its georeference.
    """
    path = Path(path)
    if is_measure_file(path):
        return survey_from_measure_file(path, which, photo)
    if not path.is_file():
        raise CompareError(f"{which} {path}: no such file")
    if not masks and photo is not None:
        raise CompareError(f"{which} {path} is a photo itself: --photos is for --masks and measure files")
    if not masks and segmenter is None:
        raise CompareError(
            f"{which} {path} is a photo and no segmenter was given: pass one (CrackSegmenter.from_pretrained()), "
            "or compare masks or measure files"
        )
    georef = read_georeference(path)
    image = read_image(path) if not masks else None
    mask = read_mask(path) if masks else segment(segmenter, image)
    check_shape(str(path), georef, mask.shape)
    if photo is not None:
        image = read_image(photo)
        georef = georef or read_georeference(photo)
    scale = pixel_size_mm if pixel_size_mm is not None else own_pixel_size(str(path), georef)
    survey = Survey.from_arrays(mask, image, str(path), georef, scale, min_length)
    survey.source = "mask" if masks else "photo"
    survey.photo_path = str(photo) if photo is not None else (None if masks else str(path))
    return survey


def segment(segmenter, photo: np.ndarray) -> np.ndarray:
    """The photo's crack mask (bool) from a segmenter object (`.predict(photo).mask`) or a plain callable."""
    mask = segmenter.predict(photo).mask if hasattr(segmenter, "predict") else segmenter(photo)
    return np.asarray(mask, bool)


def own_pixel_size(name: str, georef: Georeference | None) -> float | None:
    """The pixel size a georeference gives; None without one, or in degrees (coordinates still align them)."""
    try:
        return georef.pixel_size_mm(name) if georef else None
    except GeoreferenceError:
        return None


def read_measure_file(path: Path, which: str) -> dict:
    """A NAME_measure.json as a dict, or a CompareError saying why this crackseg cannot read it."""
    data = read_json(path, f"{which} {path}", CompareError)
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == CHANGES_FORMAT:
        raise CompareError(
            f"{which} {path}: a comparison's summary; compare with the after_measure.json beside it (AFTER's cracks)"
        )
    if kind is None and isinstance(data, dict) and "cracks" in data:
        raise CompareError(
            f"{which} {path}: written by an older crackseg (no format_version, no centrelines); "
            "run `crackseg measure` on its photo again with this version"
        )
    if kind != MEASURE_FORMAT:
        raise CompareError(f"{which} {path}: not a NAME_measure.json written by `crackseg measure`")
    if data.get("format_version") not in READABLE_MEASURE_VERSIONS:
        versions = " and ".join(map(str, READABLE_MEASURE_VERSIONS))
        raise CompareError(
            f"{which} {path}: measure-file format version {data.get('format_version')!r}, and this crackseg reads "
            f"versions {versions}; measure the photo again with this version (or use a matching crackseg)"
        )
    return data


def survey_from_measure_file(path: Path, which: str, photo=None) -> Survey:
    """The survey a measure file records: its cracks, ids, centrelines, georeference and pixel size."""
    data = read_measure_file(path, which)
    try:
        size, lines = data["image_size"], {entry["id"]: entry["lines"] for entry in data["centrelines"]}
        cracks = [crack_from_record(c, data["format_version"]) for c in data["cracks"]]
        centrelines = [[np.asarray(line, np.float64).reshape(-1, 2) for line in lines[c.id]] for c in cracks]
        min_length = data["summary"]["min_length_px"]
        result = Measurement(size["height"], size["width"], data.get("pixel_size_mm"), min_length)
        classes = data["width_classes"]
        result.width_classes = WidthClasses(classes["name"], tuple(classes["bins_mm"]), tuple(classes["labels"]))
    except (KeyError, TypeError, ValueError, CracksegError):
        raise CompareError(
            f"{which} {path}: a damaged measure file (fields missing); measure the photo again"
        ) from None
    result.cracks, result.centrelines = cracks, centrelines
    georef = None
    if data.get("georeference"):
        geo = data["georeference"]
        georef = Georeference(tuple(geo["transform"]), geo["crs_wkt"], (size["height"], size["width"]))
    photo = photo or recorded_photo(path, data)
    image = read_image(photo) if photo else None
    if image is not None and image.shape[:2] != (result.height, result.width):
        raise CompareError(
            f"{which} {path}: its photo {photo} is not the {result.width}×{result.height} px it measured"
        )
    ids = [c.id for c in cracks]
    next_id = max(int(data.get("next_crack_id", 1)), max(ids, default=0) + 1)
    photo_path = str(photo) if photo else None
    return Survey(str(path), result, ids, image, georef, result.pixel_size_mm, next_id, "measure file", photo_path)


def recorded_photo(path: Path, data: dict) -> str | None:
    """The photo a measure file came from, where it is still found (as written, or beside the file)."""
    name = data.get("photo") or (data.get("input") if data.get("source") == "photo" else None)
    if not name:
        return None
    for candidate in (Path(name), path.parent / name, path.parent / Path(name).name):
        if candidate.is_file():
            return str(candidate)
    return None
