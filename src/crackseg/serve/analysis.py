"""What a request to the web service computes, in the server's worker pool: the upload read as a photo, its
probabilities and measurements, and the images, crack maps and JSON answered from them."""

from __future__ import annotations

import base64
import dataclasses
import math
import time

import numpy as np

from crackseg import __version__
from crackseg.inference import check_cancel, overlay
from crackseg.io.images import ImageReadError, NotAnImageError, TooManyPixelsError, encode_image, read_image
from crackseg.measure import measure
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
    }


def measure_mask(mask: np.ndarray, pixel_size_mm: float | None) -> dict:
    """`measure.measure` as JSON: image size, pixel size, per-image summary and one entry per crack."""
    return to_jsonable(measure(mask, pixel_size_mm=pixel_size_mm).to_dict())


def measured(result: Result, threshold: float | None, pixel_size_mm: float | None) -> dict:
    """Crack fraction and measurements of a result's mask at a threshold (default: the request's)."""
    mask = result.mask(threshold)
    return {"crack_fraction": float(mask.mean()), "measurements": measure_mask(mask, pixel_size_mm)}


# An upload is a photo, never placed on the map: its cracks have no WGS 84 place for a GeoJSON (RFC 7946).
NO_GEOJSON = (
    "an uploaded photo has no georeference, and GeoJSON is WGS 84 longitude/latitude only: download cracks.gpkg "
    "(mm, or px without a pixel size, from the photo's bottom-left corner) or cracks.dxf"
)


def crack_map(result: Result, threshold: float, pixel_size_mm: float | None, kind: str) -> bytes:
    """The cracks as `measure` writes them for a photo without a georeference (one writer, one layout): "csv",
    "gpkg" or "dxf", the maps in the local frame."""
    from crackseg.io.vector import csv_bytes, gpkg_bytes
    from crackseg.measure.maps import CSV_FIELDS, csv_row, dxf_bytes, gpkg_layer

    cracks = measure(result.mask(threshold), pixel_size_mm=pixel_size_mm)
    if kind == "csv":
        return csv_bytes([csv_row(result.name, crack) for crack in cracks.cracks], CSV_FIELDS)
    return gpkg_bytes(**gpkg_layer(cracks)) if kind == "gpkg" else dxf_bytes(cracks)


# --- one upload, start to end -------------------------------------------------------------------------------


def analyse(segmenter, stream, name: str, threshold: float, pixel_size_mm, max_pixels: int, cancel=None):
    """Decode, segment and measure one upload: (Result, `measured` dict, seconds spent in inference). `cancel`
    (a threading.Event) stops the work before decoding, within a batch of tiles, or before measuring
    (`inference.Cancelled`)."""
    check_cancel(cancel)  # an upload that waited in the queue for a client that has left
    image = decode_upload(stream, name, max_pixels)
    start = time.perf_counter()
    prob = segmenter.predict_prob(image, cancel)
    seconds = time.perf_counter() - start
    check_cancel(cancel)
    result = Result(image, prob, threshold, pixel_size_mm, name)
    return result, measured(result, None, pixel_size_mm), seconds


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
