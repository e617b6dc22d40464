"""Where a photo lies on the map: a GeoTIFF's affine transform and CRS, the pixel size they give, and the
conversion of image coordinates to map and to WGS84 coordinates.

Image coordinates are GDAL's: x right, y down, from the top-left corner of the image (a pixel's centre at
+0.5), so the raster's affine transform maps them to the map as they are. Only TIFFs are asked: rasterio
reads just the header here; the pixels still come through crackseg's own image reader.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from crackseg.errors import InputError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = {".tif", ".tiff"}
SQUARE_TOLERANCE = 0.01  # pixel sides that differ by more than this share are not square
GRID_SCALE = "geotransform (no CRS: its unit taken as metres)"


class GeoreferenceError(InputError):
    """A raster whose georeference cannot give what was asked (a scale in mm); the message says what to do."""


@dataclass(frozen=True)
class Georeference:
    transform: tuple[float, ...]  # rasterio / affine order: a, b, c, d, e, f (x = a·col + b·row + c, ...)
    crs_wkt: str  # the raster's CRS, as WKT
    shape: tuple[int, int] | None = None  # the raster's height and width, px, where known

    @functools.cached_property
    def crs(self):  # parsed once: pyproj reads WKT slowly
        import pyproj

        return pyproj.CRS.from_wkt(self.crs_wkt)

    def crs_name(self) -> str:
        """The CRS as "EPSG:32633" where it has an EPSG code, else by its name."""
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.name

    def to_map(self, xy: np.ndarray) -> np.ndarray:
        """Image coordinates (n, 2) → the raster's map coordinates."""
        a, b, c, d, e, f = self.transform[:6]
        return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

    def to_wgs84(self, xy: np.ndarray) -> np.ndarray:
        """Image coordinates (n, 2) → longitude, latitude in degrees (WGS 84), as GeoJSON wants them."""
        mapped = self.to_map(xy)
        lon, lat = wgs84_transformer(self.crs_wkt).transform(mapped[:, 0], mapped[:, 1])
        return np.column_stack([lon, lat])

    def check_wgs84(self, name: str) -> None:
        """Fail early, naming the file, where the raster's corners have no WGS 84 place (GeoJSON needs one)."""
        from pyproj.exceptions import ProjError

        height, width = self.shape or (1, 1)
        corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
        try:
            ok = np.isfinite(self.to_wgs84(corners)).all()
        except ProjError:
            ok = False
        if not ok:
            raise GeoreferenceError(
                f"{name}: its CRS {self.crs_name()} cannot be converted to WGS 84 longitude/latitude for GeoJSON; "
                "assign the raster its real CRS (e.g. gdal_edit.py -a_srs EPSG:...), or leave geojson out of --formats"
            )

    def pixel_size_mm(self, name: str) -> float:
        """The side of a pixel in mm, from the transform and the CRS's unit (metres, feet, ...).

        `name`: the file, for the messages. A geographic CRS (degrees) or non-square pixels give no one scale.
        """
        crs = self.crs
        if not crs.is_projected:
            kind = "geographic (degrees)" if crs.is_geographic else "not a projected CRS"
            raise GeoreferenceError(
                f"{name}: its CRS {self.crs_name()} is {kind}: no pixel size in mm can be read from it; give "
                "--pixel-size MM, or reproject the raster to a projected CRS (e.g. its UTM zone)"
            )
        a, b, _, d, e, _ = self.transform[:6]
        side_x, side_y = math.hypot(a, d), math.hypot(b, e)
        unit = crs.axis_info[0].unit_name
        if abs(side_x - side_y) > SQUARE_TOLERANCE * max(side_x, side_y):
            raise GeoreferenceError(
                f"{name}: its pixels are {side_x:g} × {side_y:g} {unit}, not square, and widths need square pixels; "
                "resample the raster to square pixels, or give --pixel-size MM to measure it anyway"
            )
        return (side_x + side_y) / 2 * crs.axis_info[0].unit_conversion_factor * 1000.0  # unit → m → mm

    def to_dict(self) -> dict:
        return {"crs": self.crs_name(), "crs_wkt": self.crs_wkt, "transform": list(self.transform[:6])}


@functools.lru_cache(maxsize=8)
def wgs84_transformer(crs_wkt: str):
    import pyproj

    return pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)


def is_tiff(path: str | Path) -> bool:
    return Path(path).suffix.lower() in TIFF_SUFFIXES


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF's header says: its size, its georeference, and the geotransform of one without a CRS."""

    shape: tuple[int, int]  # height, width
    georef: Georeference | None  # None without a CRS
    grid: tuple[float, ...] | None = None  # without a CRS: its geotransform (a, b, c, d, e, f), where not identity

    @property
    def on_a_grid(self) -> bool:
        """Whether its outputs keep its grid (GeoTIFFs on its transform and CRS, if any)."""
        return self.georef is not None or self.grid is not None


def read_tiff_header(path: str | Path | BinaryIO, name: str | None = None) -> TiffHeader | None:
    """A TIFF's size, georeference (None without a CRS: its maps are in the local frame) and, without a CRS, its
    geotransform; None for other files and for TIFFs rasterio cannot open (the image reader then says what is
    wrong with them). `path`: a file, or an open binary file (an upload) called `name`; it is read whole, so
    seek it back to read the pixels."""
    if not is_tiff(name or path):
        return None
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF: we say so once, ourselves
            with rasterio.open(path) as src:
                shape = (src.height, src.width)
                if src.crs is not None:
                    return TiffHeader(shape, Georeference(tuple(src.transform)[:6], src.crs.to_wkt(), shape))
                return TiffHeader(shape, None, None if src.transform.is_identity else tuple(src.transform)[:6])
    except RasterioIOError:
        return None


def read_georeference(path: str | Path) -> Georeference | None:
    """The georeference of a GeoTIFF; None for other files, and for TIFFs without a CRS."""
    header = read_tiff_header(path)
    return header.georef if header else None


def grid_pixel_size_mm(name: str, grid: tuple[float, ...]) -> float | None:
    """The pixel size of a TIFF with a geotransform but no CRS, its unit taken as metres (such a geotransform names
    no unit; `--pixel-size` overrides it); None, with a warning, where its pixels are not square."""
    a, b, _, d, e, _ = grid[:6]
    side_x, side_y = math.hypot(a, d), math.hypot(b, e)
    if abs(side_x - side_y) > SQUARE_TOLERANCE * max(side_x, side_y):
        log.warning("%s: its geotransform's pixels are %g × %g, not square: measured in pixels", name, side_x, side_y)
        return None
    return (side_x + side_y) / 2 * 1000.0


def check_shape(name: str, georef: Georeference | None, shape: tuple[int, ...]) -> None:
    """The mask must be the raster the transform describes: a rotated or resized read would misplace every crack."""
    if georef is not None and georef.shape is not None and tuple(shape[:2]) != tuple(georef.shape):
        raise GeoreferenceError(
            f"{name}: read as {shape[1]}×{shape[0]} px but its georeference describes {georef.shape[1]}×"
            f"{georef.shape[0]} px (an EXIF orientation tag?); remove the tag or write the raster upright"
        )


def resolve_pixel_size(
    name: str,
    georef: Georeference | None,
    given_mm: float | None,
    image: np.ndarray | None = None,
    marker_mm: float | None = None,
    grid: tuple[float, ...] | None = None,
) -> tuple[float | None, str | None]:
    """The pixel size in mm and where it came from, in this order: `--pixel-size`, the georeference, the geotransform
    of a TIFF without a CRS (`grid`, in metres), a printed ArUco marker of `marker_mm` in the photo (a warning, and
    pixels, when none is found), else None (pixels)."""
    if given_mm is not None:
        return given_mm, "--pixel-size"
    if georef is not None:
        return georef.pixel_size_mm(name), "georeference"
    if grid is not None:
        size = grid_pixel_size_mm(name, grid)
        if size is not None:
            return size, GRID_SCALE
    if marker_mm is not None and image is not None:
        found = marker_pixel_size(image, marker_mm)
        if found is not None:
            return found, f"ArUco marker of {marker_mm:g} mm"
        log.warning("%s: no ArUco marker found (--marker-mm %g): measured in pixels", name, marker_mm)
    return None, None


# --- a printed marker of known size -------------------------------------------------------------------------

# The dictionaries a printed marker is looked for in, most common first (OpenCV's generator defaults to 4×4).
ARUCO_DICTIONARIES = ("DICT_4X4_50", "DICT_5X5_100", "DICT_6X6_250", "DICT_ARUCO_ORIGINAL")


def marker_pixel_size(image: np.ndarray, marker_mm: float) -> float | None:
    """mm per pixel from a printed ArUco marker of side `marker_mm` in the photo (the mean of its four sides,
    so a slightly oblique view averages out); None when no marker is found."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    for name in ARUCO_DICTIONARIES:
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))
        corners, ids, _ = cv2.aruco.ArucoDetector(dictionary, cv2.aruco.DetectorParameters()).detectMarkers(grey)
        if ids is not None and len(ids):
            quad = corners[0].reshape(4, 2)
            side_px = float(np.mean(np.linalg.norm(quad - np.roll(quad, 1, axis=0), axis=1)))
            return marker_mm / side_px
    return None
