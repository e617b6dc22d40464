"""One survey of a structure, ready to compare: its cracks with stable ids, its evidence, and what places it.

A survey comes from a photo (segmented by the segmenter its caller gives), a mask, or a NAME_measure.json from
`crackseg measure` (its centrelines, no segmentation). Each crack keeps an id; a measure file's ids are kept, so
that the `after_measure.json` a comparison writes (the AFTER survey with stable ids) can be the BEFORE of the next.

A comparison decides on evidence, so a survey keeps its crack probability map: a photo's from its segmenter, a
mask's as 0/1, none for a measure file (its decisions then rest on the centrelines alone). It also keeps where it
shows the surface: a TIFF's no-data (nodata value, alpha band or mask), and any region a caller masks out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from crackseg.compare.grid import Placement, segment_placed
from crackseg.errors import CracksegError, InputError, read_json
from crackseg.io.georef import Georeference, GeoreferenceError, check_shape, read_georeference
from crackseg.io.images import read_image, read_mask, to_rgb_uint8
from crackseg.io.rasters import read_valid
from crackseg.measure import DEFAULT_MIN_LENGTH, Measurement, WidthClasses, measure
from crackseg.measure.maps import MEASURE_FORMAT, READABLE_MEASURE_VERSIONS, crack_from_record

# A comparison's summary.json says what it is, so that it is refused as a survey with a pointer to the right file.
# Version 2: the changes' short field names (`CrackChange.record`), the evidence and the noise floor.
CHANGES_FORMAT, CHANGES_FORMAT_VERSION = "crackseg-changes", 2
MASK_THRESHOLD = 0.5  # a mask's 0/1 "probabilities" are split here


class CompareError(InputError):
    """Two surveys that cannot be compared as given; the message names the file or option and what to do."""


@dataclass
class Survey:
    """One inspection: its cracks (with stable ids), its evidence, and what places it: photo, georeference, scale."""

    name: str  # the input, for messages and the report
    measurement: Measurement
    ids: list[int]  # each crack's stable id, aligned with measurement.cracks
    photo: np.ndarray | None = field(default=None, repr=False)  # RGB uint8: what registration looks at
    georef: Georeference | None = None
    pixel_size_mm: float | None = None  # its own, from its georeference or measure file
    next_id: int = 1  # above every id this survey's history has used
    source: str = "mask"  # photo, mask or measure file
    photo_path: str | None = None
    prob: np.ndarray | None = field(default=None, repr=False)  # float32 crack probability; None: a measure file
    threshold: float = MASK_THRESHOLD  # the probability its cracks were cut at (a model's own threshold)
    valid: np.ndarray | None = field(default=None, repr=False)  # bool: where it shows the surface; None: everywhere
    place: Placement | None = None  # where its photo was tiled on a grid shared with the other survey (`grid`)

    @classmethod
    def from_arrays(
        cls,
        mask=None,
        photo=None,
        name: str = "array",
        georef: Georeference | None = None,
        pixel_size_mm: float | None = None,
        min_length: float = DEFAULT_MIN_LENGTH,
        *,
        prob=None,
        threshold: float = MASK_THRESHOLD,
        valid=None,
    ) -> Survey:
        """A survey from a crack mask, or from a probability map (`prob`, cut at `threshold`), ids 1 … n.

        `photo`: the photo it came from, for registration. `valid`: where the survey shows the surface (False: no
        data, or a region masked out); its cracks there are dropped, and the other survey's count as out of view."""
        if prob is None:
            if mask is None:
                raise CompareError(f"{name}: give a mask or a probability map")
            prob = np.asarray(mask, bool).astype(np.float32)
        prob = np.asarray(prob, np.float32)
        if valid is not None:
            valid = np.asarray(valid, bool)
            if valid.shape != prob.shape:
                raise CompareError(
                    f"{name}: its valid-data mask is {valid.shape[1]}×{valid.shape[0]} px but its map "
                    f"{prob.shape[1]}×{prob.shape[0]} px"
                )
            prob = np.where(valid, prob, np.float32(0.0))
        result = measure(prob >= threshold, pixel_size_mm=pixel_size_mm, min_length=min_length)
        rgb = None if photo is None else to_rgb_uint8(photo)
        if rgb is not None and rgb.shape[:2] != (result.height, result.width):
            raise CompareError(
                f"{name}: the photo is {rgb.shape[1]}×{rgb.shape[0]} px but its mask {result.width}×{result.height}"
            )
        ids = [c.id for c in result.cracks]
        source = "mask" if mask is not None else "photo"  # a probability map is a segmented photo's
        survey = cls(name, result, ids, rgb, georef, pixel_size_mm, len(ids) + 1, source)
        survey.prob, survey.threshold, survey.valid = prob, float(threshold), valid
        return survey

    @property
    def shape(self) -> tuple[int, int]:
        return self.measurement.height, self.measurement.width

    @property
    def evidence(self) -> str:
        """What its side of each decision rests on: a probability map, a 0/1 mask, or its centrelines alone."""
        if self.prob is None:
            return "centrelines only (a measure file keeps no probability map)"
        return "probability map" if self.source == "photo" else "mask (0/1)"

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


@dataclass
class Capture:
    """A photo to be segmented into a survey: what registration looks at (the photo, its georeference, its size,
    its pixel size) before any segmentation, so that both photos can be tiled on one grid (`grid`)."""

    name: str
    photo: np.ndarray = field(repr=False)  # RGB uint8
    georef: Georeference | None = None
    pixel_size_mm: float | None = None
    valid: np.ndarray | None = field(default=None, repr=False)  # bool: where it shows the surface; None: everywhere
    photo_path: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.photo.shape[:2]


def read_capture(path, which: str, pixel_size_mm: float | None = None) -> Capture:
    """BEFORE or AFTER (`which`, for messages) as a photo to segment. `pixel_size_mm` overrides its georeference."""
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"{which} {path}: no such file")
    georef, image = read_georeference(path), read_image(path)
    check_shape(str(path), georef, image.shape[:2])
    valid = valid_data([path], image.shape[:2], which)
    scale = pixel_size_mm if pixel_size_mm is not None else own_pixel_size(str(path), georef)
    return Capture(str(path), image, georef, scale, valid, str(path))


def segmented(capture: Capture, segmenter, min_length: float = DEFAULT_MIN_LENGTH, place=None) -> Survey:
    """The survey a capture gives once `segmenter` cuts its cracks (see `probabilities`), tiled on `place`'s canvas
    (None: on its own grid); its no-data is filled first, so that the network sees no edge there."""
    prob, threshold = probabilities(segmenter, fill_no_data(capture.photo, capture.valid), place)
    survey = Survey.from_arrays(
        None,
        capture.photo,
        capture.name,
        capture.georef,
        capture.pixel_size_mm,
        min_length,
        prob=prob,
        threshold=threshold,
        valid=capture.valid,
    )
    survey.photo_path, survey.place = capture.photo_path, place
    return survey


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

    `photo`: the photo a mask or measure file came from, for registration. `segmenter`: what segments a photo (see
    `probabilities`); unused for masks and measure files.
    `pixel_size_mm`: this survey's, overriding its georeference.
    """
    path = Path(path)
    if is_measure_file(path):
        return survey_from_measure_file(path, which, photo)
    if not masks:
        return segmented(photo_capture(path, which, photo, segmenter, pixel_size_mm), segmenter, min_length)
    if not path.is_file():
        raise CompareError(f"{which} {path}: no such file")
    georef, mask = read_georeference(path), read_mask(path)
    check_shape(str(path), georef, mask.shape)
    valid = valid_data([path] if photo is None else [path, photo], mask.shape, which)
    image = None
    if photo is not None:
        image = read_image(photo)
        georef = georef or read_georeference(photo)
    scale = pixel_size_mm if pixel_size_mm is not None else own_pixel_size(str(path), georef)
    survey = Survey.from_arrays(
        None, image, str(path), georef, scale, min_length, prob=mask.astype(np.float32), valid=valid
    )
    survey.source, survey.photo_path = "mask", None if photo is None else str(photo)
    return survey


def photo_capture(path, which: str, photo=None, segmenter=None, pixel_size_mm: float | None = None) -> Capture:
    """A photo input read to be segmented, refused where no segmenter is given or `--photos` names another."""
    if photo is not None:
        raise CompareError(f"{which} {path} is a photo itself: --photos is for --masks and measure files")
    if segmenter is None:
        raise CompareError(
            f"{which} {path} is a photo and no segmenter was given: pass one (CrackSegmenter.from_pretrained()), "
            "or compare masks or measure files"
        )
    return read_capture(path, which, pixel_size_mm)


def fill_no_data(photo: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The photo with its no-data pixels in the median colour of the rest: a network would read the edge of a black
    fill as a dark line, and a flat fill as plain surface."""
    if valid is None or not valid.any():
        return photo
    return np.where(valid[:, :, None], photo, np.median(photo[valid], axis=0).astype(photo.dtype))


def probabilities(segmenter, photo: np.ndarray, place: Placement | None = None) -> tuple[np.ndarray, float]:
    """The photo's crack probability map and the threshold its cracks are cut at: from a CrackSegmenter (its
    `predict_prob` and `threshold`; tiled on `place`'s canvas), from anything whose `.predict(photo)` gives `.prob`
    and `.threshold` or only a `.mask`, or from a callable photo → mask (a mask's 0/1 is its probability)."""
    if hasattr(segmenter, "predict_prob") and hasattr(segmenter, "threshold"):
        prob, threshold = segment_placed(segmenter, photo, place), segmenter.threshold
    elif hasattr(segmenter, "predict"):
        result = segmenter.predict(photo)
        if getattr(result, "prob", None) is not None:
            prob, threshold = result.prob, result.threshold
        else:
            prob, threshold = np.asarray(result.mask, bool), MASK_THRESHOLD
    else:
        prob, threshold = np.asarray(segmenter(photo), bool), MASK_THRESHOLD
    return np.asarray(prob, np.float32), float(threshold)


def valid_data(paths, shape: tuple[int, int], which: str) -> np.ndarray | None:
    """Where every file of a survey shows the surface (their TIFF no-data marks together); None: everywhere."""
    valid = None
    for path in paths:
        mark = read_valid(path)
        if mark is None:
            continue
        if mark.shape != tuple(shape):
            raise CompareError(
                f"{which} {path}: its no-data mask is {mark.shape[1]}×{mark.shape[0]} px but the survey "
                f"{shape[1]}×{shape[0]} px"
            )
        valid = mark if valid is None else valid & mark
    return valid


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
    survey = Survey(str(path), result, ids, image, georef, result.pixel_size_mm, next_id, "measure file", photo_path)
    survey.prob, survey.valid = None, valid_data([photo] if photo else [], survey.shape, which)
    return survey


def recorded_photo(path: Path, data: dict) -> str | None:
    """The photo a measure file came from, where it is still found (as written, or beside the file)."""
    name = data.get("photo") or (data.get("input") if data.get("source") == "photo" else None)
    if not name:
        return None
    for candidate in (Path(name), path.parent / name, path.parent / Path(name).name):
        if candidate.is_file():
            return str(candidate)
    return None
