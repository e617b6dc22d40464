"""Orthomosaics and other TIFFs of any size, block by block: read a window, segment it, write it.

A 40,000 × 40,000 RGB raster is 4.8 GB of pixels and its probability map 6.4 GB of float32, so neither is ever held
whole: each block of `block` px is read with a margin of one tile (so the tiles at its edge see the same context
as inside), segmented through the one inference path, cropped back to the block and written into tiled,
compressed GeoTIFFs that keep the input's CRS and transform. Memory is bounded by one block and its margin.

`crackseg measure` measures such a raster the same way (`measure_raster`): a photo is first segmented block by block
into a temporary mask GeoTIFF beside the outputs, and the mask is then read window by window with a halo
(`measure.measure_blocks`), so that neither the photo nor the mask is ever held whole.

Which files go this way (`in_blocks`): georeferenced TIFFs and TIFFs with a geotransform but no CRS (their outputs
are GeoTIFFs on the same grid, without a CRS), and any TIFF too large to hold as a photo (over the photo limit,
`--max-pixels`), which would be refused otherwise: a stitched scan of a tunnel lining has no CRS, and its outputs are
TIFFs on its own pixel grid.

Pixels outside the raster's valid-data mask (its nodata value, alpha band or internal mask) are never cracks.
16-bit rasters are scaled by 1/257 and float rasters by their data range per block only where it is 0–1 or 0–255
(`images.to_rgb_uint8`); 4-band rasters (RGBA, RGB+NIR) are read as their first three bands.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crackseg.errors import InputError
from crackseg.io.georef import is_tiff
from crackseg.io.images import mask_from_array, to_rgb_uint8


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
    over the photo limit `max_pixels`, with or without a CRS; and one on a grid (a georeference, or a geotransform
    without a CRS) of more than `block`² pixels, or of any size without `block` (predict, which keeps its grid in
    GeoTIFF outputs)."""
    if header is None:
        return False
    height, width = header.shape
    if height * width > max_pixels:
        return True
    return header.on_a_grid and (block is None or height * width > block**2)


@contextlib.contextmanager
def open_raster(path, mode: str = "r", **profile):
    """`rasterio.open`, quiet about a TIFF without a CRS (its maps are in the local frame; `measure` says so once)."""
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


def write_window(sink, row: int, col: int, values: np.ndarray, band: int | str = 1) -> None:
    """Write a block at (row, col) of an open output raster: into its band, or (`band="mask"`) its valid-data
    mask (255 valid, 0 no-data)."""
    from rasterio.windows import Window

    window = Window(col, row, values.shape[1], values.shape[0])
    if band == "mask":
        sink.write_mask(values, window=window)
    else:
        sink.write(values, band, window=window)


def has_no_data(src) -> bool:
    """Whether a raster marks pixels as no-data (a nodata value, an alpha band or a mask)."""
    from rasterio.enums import MaskFlags

    return any(flags != [MaskFlags.all_valid] for flags in src.mask_flag_enums)


def read_valid(path) -> np.ndarray | None:
    """A TIFF's valid-data mask, whole (True = a real pixel), from its nodata value, alpha band or mask; None where
    every pixel is data (no mark, or not a TIFF)."""
    from rasterio.errors import RasterioIOError

    if not is_tiff(path):
        return None
    try:
        with open_raster(path) as src:
            return src.dataset_mask() > 0 if has_no_data(src) else None
    except RasterioIOError:  # a TIFF only the image reader opens: it says what is wrong, or reads it whole
        return None


def rasterio_env(**options):
    import rasterio

    return rasterio.Env(**options)


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
