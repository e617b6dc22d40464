"""Inspections over time: two surveys of the same structure compared crack by crack.

How, and why:

- Surveys: a photo (segmented by the model), a mask (`masks=True`) or a NAME_measure.json from `crackseg measure`
  (its centrelines, no segmentation). Each crack keeps an id; a measure file's ids are kept, so that the
  `after_measure.json` a comparison writes (the AFTER survey with stable ids) can be the BEFORE of the next one.
- Registration, BEFORE image coordinates → AFTER image coordinates, as a 3×3 homography (a planar surface seen
  from two camera positions): GeoTIFFs in the same CRS by their affine transforms; plain photos by SIFT features
  matched with Lowe's ratio test and a MAGSAC++ (RANSAC family) homography on the photos, not the masks (the
  cracks are what changed; the surface around them is what stayed); `assume_aligned` for a fixed camera. The
  alignment error is the RMS distance between matched features after the homography (AFTER px). Too few
  inliers, a large error, a mirrored or wildly scaled homography, or too little overlap stop the comparison.
- Matching: BEFORE's centrelines are carried into AFTER's frame. The tolerance is max(`tolerance_px`, alignment
  error + 2 px): the skeleton's own placement is good to about a pixel in each survey. An AFTER crack continues a
  BEFORE crack when the length of its centreline within the tolerance of the BEFORE centreline is at least half of
  the shorter of the two (and 3 tolerances): a crossing crack shares only a few pixels and stays new.
- Classes, per AFTER crack: `new` (continues no BEFORE crack); `extended` (the parts of its centreline farther
  than the tolerance from every BEFORE centreline, measured from BEFORE's tips (flat buffer ends) and inside
  BEFORE's view, total more than the tolerance; pieces shorter than the tolerance plus half the crack's width are
  its tip's uncertainty; the parts are reported as their own geometry); `widened` (its p95 width grew by more
  than max(1 px, 20 %) of BEFORE's, the width's uncertainty: 2·d − 1 widths move by about a pixel between two
  segmentations); `unchanged`. Per BEFORE crack that no AFTER crack continues: `closed` (closed or repaired).
  Either way, a crack mostly outside the other survey's view is `out_of_view`, not new or closed.
- Ids: an AFTER crack keeps the id of the BEFORE crack it shares most length with (one AFTER crack per BEFORE id);
  the rest get fresh ids, above every id BEFORE's history used, so a closed crack's id is never reused.
- Lengths and widths are in AFTER pixels (BEFORE's scaled by the homography's local scale), and in mm with a pixel
  size: `pixel_size_mm` (AFTER's), else AFTER's own (GeoTIFF, measure file), else BEFORE's over the scale.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import shapely

from crackseg.errors import InputError, read_json
from crackseg.georef import Georeference, GeoreferenceError, read_georeference
from crackseg.measure import DEFAULT_MIN_LENGTH, Crack, Measurement, measure

log = logging.getLogger(__name__)

CHANGES = ("new", "extended", "widened", "unchanged", "closed", "out_of_view")
CHANGES_FORMAT, CHANGES_FORMAT_VERSION = "crackseg-changes", 1
OUTPUT_FILES = (
    "changes.geojson",
    "changes.gpkg",
    "changes.csv",
    "summary.json",
    "changes.png",
    "report.md",
    "after_measure.json",
)
# Registration
MAX_FEATURE_SIDE = 2000  # px: photos are searched for features at most this large (SIFT on 12 MP takes ~10 s)
MAX_FEATURES = 5000
RATIO_TEST = 0.75  # Lowe's: a match must be clearly better than the second best
RANSAC_THRESHOLD_PX = 3.0
MIN_INLIERS = 30  # unrelated photos give a handful of chance matches; one homography has 8 unknowns
MAX_ERROR_PX = 3.0  # RMS alignment error above which crack positions cannot be compared
SCALE_RANGE = (1 / 8, 8.0)  # a registration outside this is a wrong one, not a zoom
MIN_OVERLAP = 0.1  # share of AFTER's image that BEFORE must cover
SCALE_AGREEMENT = 0.1  # pixel sizes and the registration's scale may disagree by this share
# Matching and classes
EXTRA_TOLERANCE_PX = 2.0  # over the alignment error: the skeletons' own placement in two segmentations
MATCH_SHARE = 0.5  # of the shorter centreline, within the tolerance of the other
MATCH_MIN_TOLERANCES = 3.0  # and at least this many tolerances long: a crossing shares about two
WIDTH_UNCERTAINTY_PX, WIDTH_UNCERTAINTY_SHARE = 1.0, 0.2
IN_VIEW_SHARE = 0.5  # a crack with less of its centreline inside the other survey's view is out of view
WIDTH_RULE = "max(1 px, 20 % of BEFORE's p95 width)"


class CompareError(InputError):
    """Two surveys that cannot be compared as given; the message names the file or option and what to do."""


class AlignmentError(CompareError):
    """The two surveys could not be registered well enough to compare crack positions."""


# --- surveys ------------------------------------------------------------------------------------------------


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
        from crackseg.images import to_rgb_uint8

        result = measure(mask, pixel_size_mm, min_length)
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


def load_survey(
    path,
    which: str,
    masks: bool = False,
    photo=None,
    segment=None,
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
) -> Survey:
    """BEFORE or AFTER (`which`, for messages) from a photo, a mask (`masks`) or a NAME_measure.json.

    `photo`: the photo a mask or measure file came from, for registration. `segment`: photo → bool mask.
    `pixel_size_mm`: this survey's, overriding its georeference.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return survey_from_measure_file(path, which, photo)
    if not path.is_file():
        raise CompareError(f"{which} {path}: no such file")
    if not masks and photo is not None:
        raise CompareError(f"{which} {path} is a photo itself: --photos is for --masks and measure files")
    from crackseg.georef import check_shape
    from crackseg.images import read_image, read_mask

    georef = read_georeference(path)
    image = read_image(path) if not masks else None
    mask = read_mask(path) if masks else segment(image)
    check_shape(str(path), georef, mask.shape)
    if photo is not None:
        image = read_image(photo)
        georef = georef or read_georeference(photo)
    scale = pixel_size_mm if pixel_size_mm is not None else own_pixel_size(str(path), georef)
    survey = Survey.from_arrays(mask, image, str(path), georef, scale, min_length)
    survey.source = "mask" if masks else "photo"
    survey.photo_path = str(photo) if photo is not None else (None if masks else str(path))
    return survey


def own_pixel_size(name: str, georef: Georeference | None) -> float | None:
    """The pixel size a georeference gives; None without one, or in degrees (coordinates still align them)."""
    try:
        return georef.pixel_size_mm(name) if georef else None
    except GeoreferenceError:
        return None


def read_measure_file(path: Path, which: str) -> dict:
    """A NAME_measure.json as a dict, or a CompareError saying why this crackseg cannot read it."""
    from crackseg.outputs import MEASURE_FORMAT, MEASURE_FORMAT_VERSION

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
    if data.get("format_version") != MEASURE_FORMAT_VERSION:
        raise CompareError(
            f"{which} {path}: measure-file format version {data.get('format_version')!r}, and this crackseg reads "
            f"version {MEASURE_FORMAT_VERSION}; measure the photo again with this version (or use a matching crackseg)"
        )
    return data


def survey_from_measure_file(path: Path, which: str, photo=None) -> Survey:
    """The survey a measure file records: its cracks, ids, centrelines, georeference and pixel size."""
    from crackseg.images import read_image
    from crackseg.measure import WidthClasses

    data = read_measure_file(path, which)
    try:
        size, lines = data["image_size"], {entry["id"]: entry["lines"] for entry in data["centrelines"]}
        crack_fields = {f.name for f in dataclasses.fields(Crack)}
        cracks = [Crack(**{k: v for k, v in c.items() if k in crack_fields}) for c in data["cracks"]]
        for crack in cracks:
            crack.bbox = tuple(crack.bbox)
        centrelines = [[np.asarray(line, np.float64).reshape(-1, 2) for line in lines[c.id]] for c in cracks]
        min_length = data["summary"]["min_length_px"]
        result = Measurement(size["height"], size["width"], data.get("pixel_size_mm"), min_length)
        classes = data["width_classes"]
        result.width_classes = WidthClasses(classes["name"], tuple(classes["bins_mm"]), tuple(classes["labels"]))
    except (KeyError, TypeError, ValueError):
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


# --- registration -------------------------------------------------------------------------------------------


@dataclass
class Alignment:
    method: str  # "georeference", "features" or "assumed"
    homography: np.ndarray  # 3×3: BEFORE image coordinates → AFTER image coordinates (pixel centres at +0.5)
    error_px: float  # RMS residual of the matched features, AFTER px (0: by coordinates, or assumed)
    inliers: int | None = None
    matches: int | None = None
    overlap: float = 1.0  # share of AFTER's image that BEFORE covers
    scale: float = 1.0  # AFTER px per BEFORE px at BEFORE's centre (a homography's scale varies across a photo)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "inliers": self.inliers,
            "matches": self.matches,
            "error_px": round(self.error_px, 3),
            "scale": round(self.scale, 4),
            "overlap": round(self.overlap, 3),
            "homography": np.round(self.homography, 9).tolist(),
        }


def local_scale(h: np.ndarray, x: float, y: float) -> float:
    """√|det J| of the homography at (x, y): how much longer a short BEFORE line is in AFTER's frame."""
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u, v = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    jacobian = np.array(
        [[h[0, 0] - h[2, 0] * u, h[0, 1] - h[2, 1] * u], [h[1, 0] - h[2, 0] * v, h[1, 1] - h[2, 1] * v]]
    )
    return float(math.sqrt(abs(np.linalg.det(jacobian / w))))


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xyw = np.column_stack([xy, np.ones(len(xy))]) @ h.T
    return xyw[:, :2] / xyw[:, 2:]


def register(before: Survey, after: Survey, assume_aligned: bool = False) -> Alignment:
    """BEFORE → AFTER: assumed, by the georeferences, or by features of the photos (see the module notes)."""
    if assume_aligned:
        alignment = assumed_alignment(before, after)
    elif before.georef is not None and after.georef is not None:
        alignment = coordinate_alignment(before, after)
    else:
        for survey, which in ((before, "BEFORE"), (after, "AFTER")):
            if survey.photo is None:
                raise AlignmentError(
                    f"{which} {survey.name} has no photo to register on and no georeference; give --photos "
                    "BEFORE_PHOTO AFTER_PHOTO, georeferenced GeoTIFFs, or --assume-aligned for a fixed camera"
                )
        alignment = feature_alignment(before, after)
    alignment.scale = local_scale(alignment.homography, before.shape[1] / 2, before.shape[0] / 2)
    if alignment.method == "features":
        check_homography(alignment, f"BEFORE {before.name} and AFTER {after.name}")
    alignment.overlap = overlap(before.shape, after.shape, alignment.homography)
    if alignment.overlap < MIN_OVERLAP:
        raise AlignmentError(
            f"BEFORE {before.name} covers only {alignment.overlap:.0%} of AFTER {after.name} once aligned; "
            "compare photos of the same place"
        )
    return alignment


def assumed_alignment(before: Survey, after: Survey) -> Alignment:
    """A fixed camera: the same pixel is the same place, so sizes (and any pixel sizes) must agree."""
    if before.shape != after.shape:
        (bh, bw), (ah, aw) = before.shape, after.shape
        raise CompareError(
            f"--assume-aligned: BEFORE is {bw}×{bh} px and AFTER {aw}×{ah} px, so the same pixel cannot be the same "
            "place; drop --assume-aligned to register them"
        )
    sizes = (before.pixel_size_mm, after.pixel_size_mm)
    if None not in sizes and abs(sizes[0] / sizes[1] - 1) > 0.01:
        raise CompareError(
            f"--assume-aligned: BEFORE's pixels are {sizes[0]:g} mm and AFTER's {sizes[1]:g} mm; drop --assume-aligned "
            "to register them"
        )
    return Alignment("assumed", np.eye(3), 0.0)


def coordinate_alignment(before: Survey, after: Survey) -> Alignment:
    """Two GeoTIFFs in one CRS: BEFORE pixel → map (its transform) → AFTER pixel (AFTER's, inverted)."""
    if not before.georef.crs.equals(after.georef.crs):
        raise CompareError(
            f"BEFORE {before.name} is in {before.georef.crs_name()} and AFTER {after.name} in "
            f"{after.georef.crs_name()}; reproject one into the other's CRS first (gdalwarp -t_srs ...)"
        )

    def affine(g: Georeference) -> np.ndarray:
        a, b, c, d, e, f = g.transform[:6]
        return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])

    return Alignment("georeference", np.linalg.inv(affine(after.georef)) @ affine(before.georef), 0.0)


def feature_image(photo: np.ndarray) -> tuple[np.ndarray, float]:
    """The photo in grey, at most MAX_FEATURE_SIDE px on its long side, and the factor it was shrunk by."""
    grey, factor = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), shrink_factor(photo)
    if factor < 1.0:
        size = (max(round(grey.shape[1] * factor), 1), max(round(grey.shape[0] * factor), 1))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey, factor


def shrink_factor(photo: np.ndarray) -> float:
    return min(1.0, MAX_FEATURE_SIDE / max(photo.shape[:2]))


def feature_points(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """SIFT keypoints in full-size image coordinates (pixel centres at +0.5) and their descriptors."""
    grey, factor = feature_image(photo)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=MAX_FEATURES).detectAndCompute(grey, None)
    # OpenCV puts pixel centres at integers; shrinking by `factor` scales corner-based coordinates exactly.
    xy = (np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2) + 0.5) / factor
    return xy, descriptors


def feature_alignment(before: Survey, after: Survey) -> Alignment:
    """SIFT features of both photos, ratio-tested matches, a MAGSAC++ homography; refused when poor."""
    xy_b, desc_b = feature_points(before.photo)
    xy_a, desc_a = feature_points(after.photo)
    pairs = []
    if desc_b is not None and desc_a is not None and len(desc_b) > 1 and len(desc_a) > 1:
        knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_b, desc_a, k=2)
        pairs = [
            (m[0].queryIdx, m[0].trainIdx) for m in knn if len(m) == 2 and m[0].distance < RATIO_TEST * m[1].distance
        ]
    h, inliers = None, np.zeros(0, bool)
    if len(pairs) >= MIN_INLIERS:
        src, dst = xy_b[[p[0] for p in pairs]], xy_a[[p[1] for p in pairs]]
        # The points are in full-size px but were found in the shrunk photos: the threshold holds there.
        threshold = RANSAC_THRESHOLD_PX / min(shrink_factor(before.photo), shrink_factor(after.photo))
        h, found = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold)
        inliers = np.zeros(len(pairs), bool) if found is None else found.ravel().astype(bool)
    where = f"BEFORE {before.name} and AFTER {after.name}"
    if h is None or inliers.sum() < MIN_INLIERS:
        raise AlignmentError(
            f"cannot align {where}: {int(inliers.sum())} of {len(pairs)} feature matches agree on one view (at least "
            f"{MIN_INLIERS} needed); they may show different places; give georeferenced GeoTIFFs or --assume-aligned"
        )
    residual = np.linalg.norm(apply_homography(h, src[inliers]) - dst[inliers], axis=1)
    return Alignment("features", h, float(np.sqrt(np.mean(residual**2))), int(inliers.sum()), len(pairs))


def check_homography(alignment: Alignment, where: str) -> None:
    """Refuse a registration that cannot be right (mirrored, absurd scale) or is too rough to compare cracks."""
    det = np.linalg.det(alignment.homography[:2, :2])
    if det <= 0 or not SCALE_RANGE[0] <= alignment.scale <= SCALE_RANGE[1]:
        raise AlignmentError(
            f"cannot align {where}: the only consistent view is mirrored or scaled ×{alignment.scale:.2f}; "
            "they may show different places"
        )
    if alignment.error_px > MAX_ERROR_PX:
        raise AlignmentError(
            f"the alignment of {where} is poor: {alignment.error_px:.1f} px RMS error ({alignment.inliers} features; "
            f"at most {MAX_ERROR_PX:g} px accepted); the surface may not be flat, or the views too different"
        )


def overlap(before_shape, after_shape, h: np.ndarray) -> float:
    """The share of AFTER's image that BEFORE's image covers once carried into AFTER's frame."""
    return footprint(before_shape, h).intersection(image_box(after_shape)).area / image_box(after_shape).area


def image_box(shape) -> shapely.Polygon:
    return shapely.box(0, 0, shape[1], shape[0])


def footprint(shape, h: np.ndarray) -> shapely.Polygon:
    """BEFORE's image outline in AFTER's frame (its corners carried over: a homography keeps lines straight)."""
    corners = np.array([[0, 0], [shape[1], 0], [shape[1], shape[0]], [0, shape[0]]], np.float64)
    return shapely.Polygon(apply_homography(h, corners)).buffer(0)


def check_scales(before: Survey, after: Survey, alignment: Alignment) -> None:
    """Two pixel sizes must agree with the registration's scale, or one of them is wrong."""
    if alignment.method != "features" or before.pixel_size_mm is None or after.pixel_size_mm is None:
        return
    expected = before.pixel_size_mm / after.pixel_size_mm
    if abs(alignment.scale / expected - 1) > SCALE_AGREEMENT:
        raise CompareError(
            f"BEFORE's pixels are {before.pixel_size_mm:g} mm and AFTER's {after.pixel_size_mm:g} mm "
            f"(×{expected:.2f}), but the photos align at ×{alignment.scale:.2f}; correct --pixel-size (AFTER's) "
            "or the georeference"
        )


# --- matching -----------------------------------------------------------------------------------------------


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
        """The flat row of the CSV and the GeoJSON / GeoPackage attributes: px, and mm where the scale is known."""
        px = {
            "length_before": self.length_before_px,
            "length_after": self.length_after_px,
            "added_length": self.added_length_px,
            "width_p95_before": self.width_p95_before_px,
            "width_p95_after": self.width_p95_after_px,
            "width_growth": self.width_growth_px,
        }
        row = {"id": self.id, "change": self.change, "before_ids": ";".join(map(str, self.before_ids))}
        row |= {f"{k}_px": None if v is None else round(v, 2) for k, v in px.items()}
        scale = pixel_size_mm
        row |= {f"{k}_mm": None if v is None or scale is None else round(v * scale, 4) for k, v in px.items()}
        return row


RECORD_FIELDS = list(CrackChange(0, "new", shapely.MultiLineString(), shapely.MultiLineString()).record(None))


def carried_lines(before: Survey, h: np.ndarray) -> list[shapely.MultiLineString]:
    """BEFORE's centrelines in AFTER's frame."""
    return [shapely.transform(lines, lambda xy: apply_homography(h, xy)) for lines in before.lines()]


def shared_lengths(after_lines, before_lines, tolerance: float) -> dict[tuple[int, int], float]:
    """(AFTER index, BEFORE index) → length of the AFTER centreline within `tolerance` of the BEFORE one."""
    zones = shapely.buffer(np.asarray(before_lines, dtype=object), tolerance)
    tree = shapely.STRtree(zones)
    a_idx, b_idx = tree.query(np.asarray(after_lines, dtype=object), predicate="intersects")
    if len(a_idx) == 0:
        return {}
    inside = shapely.length(shapely.intersection(np.asarray(after_lines, dtype=object)[a_idx], zones[b_idx]))
    return {(int(a), int(b)): float(s) for a, b, s in zip(a_idx, b_idx, inside, strict=True)}


def significant(shared: float, length_a: float, length_b: float, tolerance: float) -> bool:
    """Whether an AFTER crack continues a BEFORE crack: see the module notes."""
    return shared >= max(MATCH_MIN_TOLERANCES * tolerance, MATCH_SHARE * min(length_a, length_b))


def match(after_lines, before_lines, tolerance: float) -> dict[int, dict[int, float]]:
    """AFTER index → {BEFORE index: shared length} of the BEFORE cracks it continues."""
    length_a, length_b = shapely.length(after_lines), shapely.length(before_lines)
    matches: dict[int, dict[int, float]] = {}
    for (a, b), shared in shared_lengths(after_lines, before_lines, tolerance).items():
        if significant(shared, length_a[a], length_b[b], tolerance):
            matches.setdefault(a, {})[b] = shared
    return matches


def added_parts(after_line, before_lines, view, tolerance: float, min_piece: float) -> shapely.MultiLineString:
    """The parts of an AFTER centreline farther than `tolerance` from every BEFORE centreline and inside BEFORE's
    `view` (a crack that runs out of BEFORE's photo did not grow there), each at least `min_piece` long.
    Flat buffer ends, so that an extension counts from the old tip."""
    near = shapely.union_all(shapely.buffer(np.asarray(before_lines, dtype=object), tolerance, cap_style="flat"))
    seen = shapely.buffer(view, -tolerance)  # a crack cut by BEFORE's border ends just inside it
    rest = shapely.line_merge(shapely.intersection(shapely.difference(after_line, near), seen))
    pieces = [p for p in shapely.get_parts(rest) if isinstance(p, shapely.LineString) and p.length >= min_piece]
    return shapely.MultiLineString(pieces)


def assign_ids(matches: dict[int, dict[int, float]], before_ids: list[int], first_free: int) -> dict[int, int]:
    """AFTER index → stable id: the id of the BEFORE crack it shares most with, one AFTER crack per BEFORE id."""
    pairs = sorted(((-s, a, b) for a, found in matches.items() for b, s in found.items()))
    ids, taken = {}, set()
    for _, a, b in pairs:  # the largest shared length first
        if a not in ids and b not in taken:
            ids[a] = before_ids[b]
            taken.add(b)
    for a in sorted(matches):  # pieces of a split crack beyond the first
        if a not in ids:
            ids[a], first_free = first_free, first_free + 1
    return ids


def widened(crack: CrackChange) -> bool:
    """Whether the p95 width grew by more than its uncertainty (whatever else changed)."""
    growth = crack.width_growth_px
    return growth is not None and growth > width_uncertainty(crack.width_p95_before_px)


def width_uncertainty(width_p95_before_px: float | None) -> float:
    """How much a p95 width may grow between two segmentations without the crack having widened."""
    return max(WIDTH_UNCERTAINTY_PX, WIDTH_UNCERTAINTY_SHARE * (width_p95_before_px or 0.0))


def in_view(line, view: shapely.Polygon) -> bool:
    return line.length == 0 or shapely.intersection(line, view).length >= IN_VIEW_SHARE * line.length


# --- the comparison -----------------------------------------------------------------------------------------


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
    keys = ["id", "change", "width_p95_before_px", "width_p95_after_px", "width_growth_px"]
    if pixel_size_mm:
        keys += ["width_p95_before_mm", "width_p95_after_mm", "width_growth_mm"]
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
    pixel_size_mm: float | None = None,
    tolerance_px: float | None = None,
    assume_aligned: bool = False,
    min_length: float = DEFAULT_MIN_LENGTH,
) -> Changes:
    """Compare two surveys of one structure crack by crack; see the module notes.

    `before`, `after`: photos, masks (`masks=True`) or NAME_measure.json files (paths), or `Survey`s.
    `segmenter`: anything with `.predict(photo).mask` (default: the shipped default model, loaded when a photo
    needs it). `photos`: the photos masks or measure files came from, for registration. `pixel_size_mm`: AFTER's.
    `tolerance_px`: at least the alignment error + 2 px. `assume_aligned`: a fixed camera, no registration.
    """
    for value, option in ((pixel_size_mm, "--pixel-size"), (tolerance_px, "--tolerance-px")):
        if value is not None and not value > 0:
            raise CompareError(f"{option} must be a positive number, got {value}")
    segment = lazy_segment(segmenter)
    surveys = []
    for which, item, photo, scale in (("BEFORE", before, photos[0], None), ("AFTER", after, photos[1], pixel_size_mm)):
        surveys.append(
            item if isinstance(item, Survey) else load_survey(item, which, masks, photo, segment, scale, min_length)
        )
    before, after = surveys
    if before.measurement.count == 0:
        log.warning("BEFORE %s has no crack: every crack of AFTER is new (or out of view)", before.name)
    if after.measurement.count == 0:
        log.warning("AFTER %s has no crack: every crack of BEFORE is closed (or out of view)", after.name)
    alignment = register(before, after, assume_aligned)
    check_scales(before, after, alignment)
    tolerance = max(tolerance_px or 0.0, alignment.error_px + EXTRA_TOLERANCE_PX)
    cracks = classify_changes(before, after, alignment, tolerance)
    next_id = max([before.next_id, *(c.id + 1 for c in cracks)])
    scale, scale_from = reporting_scale(before, after, alignment, pixel_size_mm)
    return Changes(before, after, alignment, tolerance, cracks, next_id, scale, scale_from)


def lazy_segment(segmenter):
    """photo → bool mask through `segmenter`, or the default model, built on the first photo that needs it."""
    held = [segmenter]

    def segment(photo: np.ndarray) -> np.ndarray:
        if held[0] is None:
            from crackseg.inference import CrackSegmenter

            held[0] = CrackSegmenter.from_pretrained()
        return np.asarray(held[0].predict(photo).mask, bool)

    return segment
