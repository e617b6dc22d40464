"""What a request to the web service computes, in the server's worker pool: the upload read as a photo, its
probabilities and measurements, and the images, crack maps and JSON answered from them."""

from __future__ import annotations

import base64
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from crackseg import __version__
from crackseg.inference import check_cancel, overlay
from crackseg.io.georef import GeoreferenceError, check_shape, read_tiff_header, resolve_pixel_size
from crackseg.io.images import ImageReadError, NotAnImageError, TooManyPixelsError, encode_image, read_image
from crackseg.measure import WIDTH_CLASS_PRESETS, Measurement, measure
from crackseg.measure.figure import label_positions
from crackseg.options import MeasureOptions
from crackseg.serve.store import Result

READABLE = "JPEG, PNG, TIFF, BMP or WebP"


class UploadError(Exception):
    """An upload the server cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- reading an upload --------------------------------------------------------------------------------------


def decode_upload(stream, name: str, max_pixels: int) -> np.ndarray:
    """The upload as upright H×W×3 uint8 RGB, read as every photo is (`images.read_image`: the pixel limit is
    checked on the header, before decoding); what is wrong with it as an `UploadError` for the web user."""
    try:
        return read_image(stream, max_pixels, name)
    except NotAnImageError:
        raise UploadError(415, f"{name}: not an image, or a format this server cannot read (send {READABLE})") from None
    except TooManyPixelsError as err:
        raise UploadError(413, over_the_pixel_limit(name, err)) from None
    except ImageReadError as err:
        raise UploadError(400, str(err)) from None


@dataclasses.dataclass
class Upload:
    """An upload read: the photo, and its georeference and pixel size where a GeoTIFF gives them."""

    image: np.ndarray
    georef: object = None  # io.georef.Georeference
    pixel_size_mm: float | None = None
    pixel_size_from: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def read_upload(stream, name: str, max_pixels: int, pixel_size_mm: float | None) -> Upload:
    """The upload decoded (`decode_upload`) and, for a TIFF, placed as `crackseg measure` places it: its CRS and
    transform kept for the maps, its pixel size read from them unless the request gives one. A georeference that
    gives no pixel size (degrees, non-square pixels) leaves the measurements in pixels, with a note saying why."""
    header = read_tiff_header(stream, name)
    stream.seek(0)
    image = decode_upload(stream, name, max_pixels)
    georef, grid = (header.georef, header.grid) if header else (None, None)
    try:
        check_shape(name, georef, image.shape)
    except GeoreferenceError as err:
        raise UploadError(422, str(err)) from None
    try:
        size, source = resolve_pixel_size(name, georef, pixel_size_mm, grid=grid)
    except GeoreferenceError as err:
        return Upload(image, georef, notes=[str(err).replace("give --pixel-size MM", "enter the pixel size")])
    return Upload(image, georef, size, "the request" if source == "--pixel-size" else source)


def over_the_pixel_limit(name: str, err: TooManyPixelsError) -> str:
    if err.width is None:  # refused by Pillow's decompression-bomb check, which does not say the size
        return str(err)
    pixels = err.width * err.height
    return (
        f"{name}: {err.width}×{err.height} = {pixels / 1e6:.1f} MP exceeds this server's limit of "
        f"{err.max_pixels / 1e6:.1f} MP; crop or downscale the photo"
    )


# --- measurements as JSON and crack maps --------------------------------------------------------------------


def to_jsonable(value):
    """Dataclasses, numpy scalars/arrays and tuples as plain JSON values; NaN and infinity as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def model_info(segmenter) -> dict:
    """The segmenter's model and engine, as `/api/model` describes them."""
    config = segmenter.config
    backend = segmenter.backend
    return {
        "name": getattr(config, "name", ""),
        "version": getattr(config, "version", ""),
        "config": to_jsonable(config),
        "threshold": segmenter.threshold,
        "backend": getattr(backend, "name", type(backend).__name__),
        "precision": getattr(backend, "precision", ""),
        "tile": segmenter.tile,
        "crackseg_version": __version__,
        "width_classes": {name: classes.to_dict() for name, classes in WIDTH_CLASS_PRESETS.items()},
    }


def measure_mask(mask: np.ndarray, options: MeasureOptions) -> Measurement:
    return measure(mask, options)


def drawing(measurement: Measurement) -> list[dict]:
    """Per crack, what the page draws: its centreline (one list of x, y image coordinates per branch, 0.1 px) and
    where its id goes (the skeleton pixel nearest its middle, as the width figure writes it)."""
    labels = label_positions(measurement)
    return [
        {
            "id": crack.id,
            "lines": [np.round(line, 1).tolist() for line in lines],
            "label": [labels[crack.id][1] + 0.5, labels[crack.id][0] + 0.5] if crack.id in labels else None,
        }
        for crack, lines in zip(measurement.cracks, measurement.centrelines, strict=True)
    ]


def measured(result: Result, threshold: float | None, options: MeasureOptions) -> dict:
    """Crack fraction, measurements and centrelines of a result's mask at a threshold (default: the request's)."""
    mask = result.mask(threshold)
    measurement = measure_mask(mask, options)
    return {
        "crack_fraction": float(mask.mean()),
        "measurements": to_jsonable(measurement.to_dict()),
        "centrelines": drawing(measurement),
    }


# An upload without a georeference is a photo, never placed on the map: no WGS 84 place for a GeoJSON (RFC 7946).
NO_GEOJSON = (
    "this upload has no georeference, and GeoJSON is WGS 84 longitude/latitude only: download cracks.gpkg "
    "(mm, or px without a pixel size, from the photo's bottom-left corner) or cracks.dxf; a GeoTIFF keeps its place"
)


def crack_map(result: Result, threshold: float, options: MeasureOptions, kind: str) -> bytes:
    """The cracks as `crackseg measure` writes them (one writer, one layout): "csv", or the maps "gpkg", "dxf" and
    "geojson" in the upload's CRS when it is a GeoTIFF, else (no geojson) in the photo's local frame."""
    from crackseg.io.vector import csv_bytes, gpkg_bytes, json_bytes
    from crackseg.measure.maps import CSV_FIELDS, csv_row, dxf_bytes, geojson_dict, gpkg_layer

    cracks = measure_mask(result.mask(threshold), options)
    if kind == "csv":
        return csv_bytes([csv_row(result.name, crack) for crack in cracks.cracks], CSV_FIELDS)
    if kind == "geojson":
        name = f"{Path(result.name).stem}_cracks"
        return json_bytes(geojson_dict(cracks, result.georef, name))
    return gpkg_bytes(**gpkg_layer(cracks, result.georef)) if kind == "gpkg" else dxf_bytes(cracks, result.georef)


# --- one upload, start to end -------------------------------------------------------------------------------


def analyse(
    segmenter,
    stream,
    name: str,
    threshold: float,
    pixel_size_mm: float | None,
    max_pixels: int,
    cancel=None,
    options: MeasureOptions | None = None,
    progress=None,
):
    """Decode, segment and measure one upload: (Result, `measured` dict, seconds spent in inference, notes).
    `cancel` (a threading.Event) stops the segmentation within a batch of tiles (`inference.Cancelled`);
    `progress` (a `serve.progress.Progress`) is told the stage and the tiles done. `options`: how to measure
    (its pixel size is the upload's, given or read from its georeference). `cancel` also stops the work before
    decoding (an upload that waited in the queue for a client that has left) and before measuring."""
    check_cancel(cancel)
    if progress:
        progress.stage_is("reading")
    upload = read_upload(stream, name, max_pixels, pixel_size_mm)
    start = time.perf_counter()
    prob = segmenter.predict_prob(upload.image, cancel, progress=progress.tiles if progress else None)
    seconds = time.perf_counter() - start
    if progress:
        progress.stage_is("measuring")
    check_cancel(cancel)
    result = Result(upload.image, prob, threshold, upload.pixel_size_mm, name, upload.georef, upload.pixel_size_from)
    options = (options or MeasureOptions()).replace(pixel_size_mm=upload.pixel_size_mm)
    return result, measured(result, None, options), seconds, upload.notes


# --- images -------------------------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    return encode_image(array, ".png")


def prob_png(prob: np.ndarray) -> bytes:
    return png(np.round(prob * 255).astype(np.uint8))


def mask_png(mask: np.ndarray) -> bytes:
    return png(mask.astype(np.uint8) * 255)


def overlay_jpeg(image: np.ndarray, mask: np.ndarray) -> bytes:
    return encode_image(overlay(image, mask), ".jpg", quality=90)


def photo_jpeg(image: np.ndarray) -> bytes:
    return encode_image(image, ".jpg", 92)


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def inline_images(result: Result) -> dict[str, str]:
    """The mask, overlay and probabilities as data URLs, for an answer that keeps nothing."""
    mask = result.mask()
    return {
        "mask": data_url(mask_png(mask), "image/png"),
        "overlay": data_url(overlay_jpeg(result.image, mask), "image/jpeg"),
        "prob": data_url(prob_png(result.prob), "image/png"),
    }
