"""Orthomosaics and other TIFFs of any size, block by block: read a window, segment it, write it.

A 40,000 × 40,000 RGB raster is 4.8 GB of pixels and its probability map 6.4 GB of float32, so neither is ever held
whole: each block of `block` px is read with a margin of one tile (so the tiles at its edge see the same context
as inside), segmented through the one inference path, cropped back to the block and written into tiled,
compressed GeoTIFFs that keep the input's CRS and transform. Memory is bounded by one block and its margin.

`crackseg measure` measures such a raster the same way (`measure_raster`): a photo is first segmented block by block
into a temporary mask GeoTIFF beside the outputs, and the mask is then read window by window with a halo
(`measure.measure_blocks`), so that neither the photo nor the mask is ever held whole.

Which files go this way (`in_blocks`): georeferenced TIFFs, and any TIFF too large to hold as a photo (over the
photo limit, `--max-pixels`), which would be refused otherwise: a stitched scan of a tunnel lining has no CRS, and its
outputs are TIFFs on its own pixel grid.

Pixels outside the raster's valid-data mask (its nodata value, alpha band or internal mask) are never cracks.
16-bit rasters are scaled by 1/257 and float rasters by their data range per block only where it is 0–1 or 0–255
(`images.to_rgb_uint8`); 4-band rasters (RGBA, RGB+NIR) are read as their first three bands.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crackseg.errors import InputError
from crackseg.io.atomic import default_mode
from crackseg.io.images import check_pixels, mask_from_array, to_rgb_uint8
from crackseg.options import DEFAULT_BLOCK


def blocks(height: int, width: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """(row, col, height, width) of each block covering an image of that size, in raster order (the last in each
    row and column smaller); the grid of the rasters segmented and measured block by block."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield row, col, min(block, height - row), min(block, width - col)


class RasterError(InputError):
    """A raster that cannot be segmented block by block; the message names it and says why."""


def in_blocks(header, max_pixels: float, block: int | None = None) -> bool:
    """Whether a file is processed block by block, from its `georef.read_tiff_header` (None: not a TIFF): a TIFF
    over the photo limit `max_pixels`, with or without a CRS; and a georeferenced one of more than `block`² pixels,
    or of any size without `block` (predict, which keeps its grid and CRS in GeoTIFF outputs)."""
    if header is None:
        return False
    (height, width), georef = header
    if height * width > max_pixels:
        return True
    return georef is not None and (block is None or height * width > block**2)


@contextlib.contextmanager
def open_raster(path, mode: str = "r", **profile):
    """`rasterio.open`, quiet about a TIFF without a CRS (its outputs are in image pixels; `measure` says so once)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dataset = rasterio.open(path, mode, **profile)
    with dataset:
        yield dataset


def read_rgb(src, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A window as H×W×3 uint8 RGB, and its valid-data mask (True = a real pixel)."""
    from rasterio.windows import Window

    window = Window(col, row, width, height)
    bands = [1, 2, 3] if src.count >= 3 else [1]
    valid = src.dataset_mask(window=window) > 0
    return bands_to_rgb(src.read(bands, window=window)), valid


def bands_to_rgb(data: np.ndarray) -> np.ndarray:
    """Bands × H × W as read from a raster (one band, or the first three) → H×W×3 uint8 RGB."""
    data = np.moveaxis(data, 0, -1)
    if data.dtype == np.uint16:
        data = (data.astype(np.float32) / 257.0).round().astype(np.uint8)  # fixed, not per block: no seams
    return to_rgb_uint8(data[..., 0] if data.shape[-1] == 1 else data)


def output_profile(src, dtype: str) -> dict:
    """One band of `dtype` on the input's grid, tiled and compressed (a mask compresses to almost nothing)."""
    return {
        "driver": "GTiff",
        "height": src.height,
        "width": src.width,
        "count": 1,
        "dtype": dtype,
        "crs": src.crs,
        "transform": src.transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }


def check_disk_space(folder: Path, height: int, width: int, write_prob: bool) -> None:
    """Refuse before starting when the outputs could not fit: in the worst case (nothing compresses) a byte per
    pixel for the mask and another for the probabilities."""
    need = height * width * (2 if write_prob else 1)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise RasterError(
            f"{folder}: {free / 1e9:.1f} GB free, the outputs may need up to {need / 1e9:.1f} GB; free some space "
            "or choose another -o"
        )


def segment_raster(
    segmenter,
    path: str | os.PathLike,
    mask_path: Path,
    prob_path: Path | None = None,
    block: int = DEFAULT_BLOCK,
) -> float:
    """Segment a TIFF block by block into a mask GeoTIFF (0/255) and optionally a probability GeoTIFF (×255),
    both on the input's grid and CRS (if it has one), written atomically. Returns the crack share of the valid
    pixels."""
    with open_raster(path) as src:
        check_pixels(src.width, src.height, segmenter.max_raster_pixels, str(path))
        check_disk_space(mask_path.parent, src.height, src.width, prob_path is not None)
        targets = [mask_path] + ([prob_path] if prob_path else [])
        temporary = [Path(tempfile.mkstemp(dir=t.parent, prefix=f".{t.name}.", suffix=".tmp")[1]) for t in targets]
        try:
            crack, valid_total = write_blocks(segmenter, src, temporary, block)
            for tmp, target in reversed(list(zip(temporary, targets, strict=True))):  # the mask last, as predict's
                os.chmod(tmp, default_mode())
                os.replace(tmp, target)
        finally:
            for tmp in temporary:
                tmp.unlink(missing_ok=True)
    return crack / max(valid_total, 1)


def write_blocks(segmenter, src, outputs: list[Path], block: int) -> tuple[int, int]:
    """The loop of `segment_raster`: each block with a one-tile margin, cropped back and written."""
    from rasterio.windows import Window

    margin = segmenter.tile
    crack = valid_total = 0
    with contextlib.ExitStack() as stack:
        sinks = [stack.enter_context(open_raster(p, "w", **output_profile(src, "uint8"))) for p in outputs]
        for row, col, height, width in blocks(src.height, src.width, block):
            top, left = max(0, row - margin), max(0, col - margin)
            bottom, right = min(src.height, row + height + margin), min(src.width, col + width + margin)
            image, valid = read_rgb(src, top, left, bottom - top, right - left)
            inner = (slice(row - top, row - top + height), slice(col - left, col - left + width))
            prob = np.where(valid, segmenter.predict_prob(image), 0.0)[inner]
            mask = prob >= segmenter.threshold
            crack, valid_total = crack + int(mask.sum()), valid_total + int(valid[inner].sum())
            window = Window(col, row, width, height)
            sinks[0].write(mask.astype(np.uint8) * 255, 1, window=window)
            if len(sinks) > 1:
                sinks[1].write(np.round(prob * 255).astype(np.uint8), 1, window=window)
    return crack, valid_total


# --- measuring ----------------------------------------------------------------------------------------------

READ_CACHE_MB = 256  # GDAL's block cache while measuring: by default 5 % of the RAM, which would count as ours
OVERVIEW_SIDE = 1600  # px: the width figure is drawn at most this large, so a copy this size is all it needs


def read_mask_window(src, row: int, col: int, height: int, width: int) -> np.ndarray:
    """A window of a mask raster as bool (crack = True), binarised as `images.read_mask` does a whole mask;
    pixels outside the raster's valid data are never cracks."""
    from rasterio.windows import Window

    window = Window(col, row, width, height)
    bands = list(range(1, min(src.count, 3) + 1))
    values = np.moveaxis(src.read(bands, window=window), 0, -1)
    return mask_from_array(values, name=src.name) & (src.dataset_mask(window=window) > 0)


def measure_mask(
    path: str | os.PathLike,
    pixel_size_mm: float | None = None,
    min_length: float | None = None,
    width_classes=None,
    block: int = DEFAULT_BLOCK,
    halo: int | None = None,
    progress: bool = False,
    direction_deg: float = 90.0,
):
    """Measure a mask raster read window by window (`measure.measure_blocks`): the cracks `measure.measure` finds
    on the whole mask, holding one block and its halo at a time."""
    import rasterio

    from crackseg.measure import DEFAULT_HALO, DEFAULT_MIN_LENGTH, measure_blocks

    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB), open_raster(path) as src:
        return measure_blocks(
            lambda row, col, height, width: read_mask_window(src, row, col, height, width),
            (src.height, src.width),
            pixel_size_mm,
            DEFAULT_MIN_LENGTH if min_length is None else min_length,
            direction_deg,
            width_classes=width_classes,
            block=block,
            halo=DEFAULT_HALO if halo is None else halo,
            progress=progress,
        )


def overview(path: str | os.PathLike, max_side: int = OVERVIEW_SIDE) -> np.ndarray:
    """The raster reduced to at most `max_side` px a side (pixels averaged, or its own overviews where it has them),
    as H×W×3 uint8 RGB: the background of a width figure, read without holding the raster."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB), open_raster(path) as src:
        scale = min(1.0, max_side / max(src.height, src.width))
        shape = (max(round(src.height * scale), 1), max(round(src.width * scale), 1))
        bands = [1, 2, 3] if src.count >= 3 else [1]
        return bands_to_rgb(src.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.average))


def measure_raster(
    path: str | os.PathLike,
    work_dir: Path,
    segmenter=None,
    pixel_size_mm: float | None = None,
    min_length: float | None = None,
    width_classes=None,
    block: int = DEFAULT_BLOCK,
    with_overview: bool = False,
    progress: bool = False,
    direction_deg: float = 90.0,
):
    """Measure a raster block by block: a mask, or with `segmenter` a photo, segmented first (block by
    block, `segment_raster`) into a temporary mask GeoTIFF in `work_dir` that is removed afterwards. Returns the
    Measurement and, with `with_overview`, the raster's `overview` for the width figure (else None)."""
    mask_path = Path(path)
    if segmenter is not None:
        handle, name = tempfile.mkstemp(dir=work_dir, prefix=f".{mask_path.stem}_mask.", suffix=".tif")
        os.close(handle)
        mask_path = Path(name)
    try:
        if segmenter is not None:
            segment_raster(segmenter, path, mask_path, block=block)
        result = measure_mask(
            mask_path, pixel_size_mm, min_length, width_classes, block, progress=progress, direction_deg=direction_deg
        )
    finally:
        if segmenter is not None:
            mask_path.unlink(missing_ok=True)
    return result, overview(path) if with_overview else None
