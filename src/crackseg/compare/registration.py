"""Registration: BEFORE image coordinates → AFTER image coordinates, as a 3×3 homography.

A planar surface seen from two camera positions. GeoTIFFs in the same CRS align by their affine transforms; plain
photos by SIFT features matched with Lowe's ratio test and a MAGSAC++ (RANSAC family) homography on the photos, not
the masks (the cracks are what changed; the surface around them is what stayed); `assume_aligned` for a fixed
camera. The alignment error is the RMS distance between matched features after the homography (AFTER px). Too few
inliers, a large error, a mirrored or wildly scaled homography, or too little overlap stop the comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely

from crackseg.compare.grid import frame_corners
from crackseg.compare.survey import CompareError, Survey
from crackseg.io.georef import Georeference

MAX_FEATURE_SIDE = 2000  # px: photos are searched for features at most this large (SIFT slows with the pixel count)
MAX_FEATURES = 5000
RATIO_TEST = 0.75  # Lowe's: a match must be clearly better than the second best
RANSAC_THRESHOLD_PX = 3.0
MIN_INLIERS = 30  # unrelated photos give a handful of chance matches; one homography has 8 unknowns
MAX_ERROR_PX = 3.0  # RMS alignment error above which crack positions cannot be compared
SCALE_RANGE = (1 / 8, 8.0)  # a registration outside this is a wrong one, not a zoom
MIN_OVERLAP = 0.1  # share of AFTER's image that BEFORE must cover
SCALE_AGREEMENT = 0.1  # pixel sizes and the registration's scale may disagree by this share


class AlignmentError(CompareError):
    """The two surveys could not be registered well enough to compare crack positions."""


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
    return shapely.Polygon(apply_homography(h, frame_corners(shape))).buffer(0)


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
