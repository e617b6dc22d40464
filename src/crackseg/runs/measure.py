"""`crackseg measure`: the cracks of every input of a plan measured, and their tables and maps written.

A photo (with a segmenter) or a mask is measured whole; a georeferenced raster larger than one block, or any TIFF
over the photo limit, block by block (`measure_raster`), never held whole: a photo is first segmented block by
block into a temporary mask GeoTIFF beside the outputs, which is then read window by window with a halo
(`measure.measure_blocks`). A failing input is reported and the rest go on; warnings go through tqdm's logging
redirect, so that they are not glued onto the progress bar.

Without a georeference no GeoJSON is written (GeoJSON is WGS 84 only): the summary JSON says why, and the
GeoPackage and DXF hold the cracks in the local frame (`measure.maps`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from crackseg.errors import InputError
from crackseg.io.atomic import atomic_write_bytes, remove_debris, temporary_prefix
from crackseg.io.georef import GRID_SCALE, Georeference, check_shape, is_tiff, read_tiff_header, resolve_pixel_size
from crackseg.io.images import read_image, read_mask, write_image
from crackseg.io.rasters import (
    OVERVIEW_SIDE,
    READ_CACHE_MB,
    in_blocks,
    open_raster,
    overview,
    rasterio_env,
    read_mask_window,
)
from crackseg.io.vector import csv_bytes, json_bytes, write_gpkg
from crackseg.measure import DEFAULT_HALO, Measurement, load_width_classes, measure, measure_blocks
from crackseg.measure.figure import width_figure
from crackseg.measure.maps import CSV_FIELDS, csv_row, dxf_bytes, geojson_dict, gpkg_layer, report_dict
from crackseg.options import DEFAULT_MAX_PIXELS, MeasureOptions
from crackseg.runs.plan import Item, Plan, make_plan, prepare_outputs
from crackseg.runs.predict import READ_ERRORS, failure_message, segment_raster

log = logging.getLogger(__name__)

# Output kind → what follows the input's name; "csv" is one cracks.csv for the whole run.
FORMATS = {
    "json": "_measure.json",
    "csv": None,
    "png": "_width.png",
    "geojson": "_cracks.geojson",
    "gpkg": "_cracks.gpkg",
    "dxf": "_cracks.dxf",
}
RUN_FILES = {"csv": "cracks.csv"}  # output kind → the one file a run writes for all its inputs


class FormatsError(InputError):
    """`--formats` names a format crackseg does not write."""


def parse_formats(text: str | None) -> tuple[str, ...]:
    """`--formats geojson,csv` → ("geojson", "csv"); None → every format."""
    if text is None:
        return tuple(FORMATS)
    chosen = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in FORMATS]
    if unknown or not chosen:
        what = f"unknown format {unknown[0]!r}" if unknown else "no format named"
        raise FormatsError(f"--formats {text!r}: {what}; choose from {','.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(chosen))


def plan_measure(
    inputs,
    out_dir: str | os.PathLike,
    formats: tuple[str, ...] | None = None,
    overwrite: bool = False,
    max_pixels: float = DEFAULT_MAX_PIXELS,
    block: int | None = None,
) -> Plan:
    """What `measure_plan` will write, checked before any model loads or input is read: per input, kind → path
    (FORMATS), and the run's own files (cracks.csv). Refuses an output folder among the inputs, makes it, and
    refuses to replace a file an earlier run left there unless `overwrite`."""
    formats = tuple(FORMATS) if formats is None else formats
    block = block or MeasureOptions().block
    plan = make_plan(
        inputs,
        out_dir,
        {kind: FORMATS[kind] for kind in formats if FORMATS[kind]},
        run_files={kind: name for kind, name in RUN_FILES.items() if kind in formats},
        in_blocks=lambda path: in_blocks(read_tiff_header(path), max_pixels, block),
    )
    prepare_outputs(plan, overwrite)
    remove_debris(temporary_mask_name(plan.out_dir, item.source) for item in plan.items if item.in_blocks)
    return plan


def temporary_mask_name(out_dir: Path, source: Path) -> Path:
    """The name a photo raster's temporary mask is made under (hidden, `.NAME_mask.XXXX.tmp`, as `io.atomic`'s
    temporaries), so that a later run clears what a killed one left."""
    return out_dir / f"{source.stem}_mask"


def measure_plan(
    plan: Plan,
    segmenter=None,
    options: MeasureOptions | None = None,
    marker_mm: float | None = None,
    progress: bool = True,
    client=None,
) -> tuple[int, int, list[str]]:
    """Measure each input of `plan` and write its outputs; returns (inputs measured, cracks found, failures).

    `segmenter`: a CrackSegmenter, or any function from an RGB uint8 photo to a bool mask (photos; only a
    CrackSegmenter segments rasters block by block), or None (the inputs are masks). A GeoTIFF's georeference places
    the maps and, in a projected CRS, gives the pixel size unless `options.pixel_size_mm` is given; else a printed
    ArUco marker of side `marker_mm` in a photo does. A run that measures nothing writes no cracks.csv.

    With `client` (a `distributed.Client`), the inputs are measured on its workers (`runs.cluster`), each of which
    builds its own segmenter from `segmenter` (one made by `CrackSegmenter.from_pretrained`, or a
    `runs.cluster.ModelSpec`): the same outputs, cracks.csv and failures as here.
    """
    options = options or MeasureOptions()
    if marker_mm is not None and not marker_mm > 0:
        raise InputError(f"--marker-mm must be the marker's positive side in mm, got {marker_mm}")
    options = options.replace(width_classes=load_width_classes(options.width_classes))  # read once, checked first
    if client is not None:
        from crackseg.runs.cluster import measure_on_cluster

        debris = plan.paths() + [temporary_mask_name(plan.out_dir, i.source) for i in plan.items if i.in_blocks]
        outcomes = measure_on_cluster(client, segmenter, plan, progress, debris, options=options, marker_mm=marker_mm)
    else:
        bar = tqdm(plan.items, desc="measure", unit="img", disable=not progress)
        with logging_redirect_tqdm():  # warnings on lines of their own, not glued onto the bar
            outcomes = [measure_item(item, plan.out_dir, segmenter, options, marker_mm, progress) for item in bar]
    rows, measured, failures, said_local = [], 0, [], False
    for item, outcome in zip(plan.items, outcomes, strict=True):
        if outcome.failure is not None:
            failures.append(outcome.failure)
            continue
        if outcome.local_frame and not said_local:
            say_local_frame(item.source, outcome.pixel_size_from)
            said_local = True
        for warning in outcome.warnings:
            log.warning("%s: %s", item.source, warning)
        rows += outcome.rows
        measured += 1
    if "csv" in plan.run_files and measured:  # every input failed: nothing to tabulate, nothing to replace later
        atomic_write_bytes(plan.run_files["csv"], csv_bytes(rows, CSV_FIELDS))
    return measured, len(rows), failures


def unexplained_frame(item) -> bool:
    """Whether an input without a georeference is worth a warning: a TIFF (one may expect it to be placed), or a
    GeoJSON asked for without the summary JSON that says why there is none."""
    return is_tiff(item.source) or ("geojson" in item.outputs and "json" not in item.outputs)


def say_local_frame(source: Path, pixel_size_from: str | None) -> None:
    what = "a TIFF without a CRS" if is_tiff(source) else "no georeference"
    scale = "; its pixel size is read from its geotransform as metres" if pixel_size_from == GRID_SCALE else ""
    log.warning(
        "%s: %s: no GeoJSON (WGS 84 only); its GeoPackage and DXF are in the local frame (mm or px from the image's "
        "bottom-left corner)%s (said once per run)",
        source,
        what,
        scale,
    )


@dataclass
class Measured:
    """What measuring one input gives its run: its rows of cracks.csv and what to say, or why it failed."""

    rows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    local_frame: bool = False  # no georeference where one might be expected: its maps are in the local frame
    pixel_size_from: str | None = None
    failure: str | None = None


def measure_item(
    item: Item, out_dir: Path, segmenter, options: MeasureOptions, marker_mm=None, progress: bool = False, client=None
) -> Measured:
    """Measure one input and write its outputs (`options` with its width classes loaded). With `client`, `item` is
    a raster whose blocks are segmented and measured on the client's workers."""
    try:
        result, report, georef, figure = measure_one(item, out_dir, segmenter, options, marker_mm, progress, client)
    except READ_ERRORS as err:
        return Measured(failure=failure_message(item, err))
    write_outputs(item.outputs, result, report, georef, figure)
    rows = [csv_row(str(item.source), crack) for crack in result.cracks]
    local = georef is None and unexplained_frame(item)
    return Measured(rows, list(result.warnings), local, report["pixel_size_from"])


def measure_one(item, out_dir: Path, segmenter, options: MeasureOptions, marker_mm, progress: bool, client=None):
    """(measurement, summary dict, georeference, width figure or None) of one input."""
    path = item.source
    header = read_tiff_header(path)
    georef, grid = (header.georef, header.grid) if header else (None, None)
    if georef is not None and "geojson" in item.outputs:
        georef.check_wgs84(str(path))
    want_figure = "png" in item.outputs
    # Only a CrackSegmenter segments rasters in blocks (on a cluster, the workers' segmenters), not any function.
    if item.in_blocks and (segmenter is None or client is not None or hasattr(segmenter, "predict_raster")):
        scale, scale_from = resolve_pixel_size(str(path), georef, options.pixel_size_mm, grid=grid)
        options = options.replace(pixel_size_mm=scale)
        result, image = measure_raster(path, out_dir, segmenter, options, want_figure, progress, client)
        figure = width_figure(image, result, overview=True) if image is not None else None
        blocks = {"block_px": options.block, "halo_px": DEFAULT_HALO, "segmented_in_blocks": segmenter is not None}
        if figure is not None:
            blocks["width_figure"] = f"drawn from the raster's overview, at most {OVERVIEW_SIDE} px a side"
        log.info("%s: %d×%d px, measured in blocks of %d px", path, header.shape[1], header.shape[0], options.block)
    else:
        blocks = None
        image = read_image(path) if segmenter is not None else read_mask(path).astype(np.uint8) * 255
        check_shape(str(path), georef, image.shape)
        marker = marker_mm if segmenter is not None else None  # a marker is found in a photo, not in a mask
        scale, scale_from = resolve_pixel_size(str(path), georef, options.pixel_size_mm, image, marker, grid)
        mask = image if segmenter is None else segment(segmenter, image)
        result = measure(mask, options.replace(pixel_size_mm=scale))
        figure = width_figure(image, result) if want_figure else None
    report = report_dict(result, str(path), "photo" if segmenter is not None else "mask", georef, scale_from)
    if blocks is not None:
        report["blocks"] = blocks
    return result, report, georef, figure


def segment(segmenter, image: np.ndarray) -> np.ndarray:
    return segmenter.predict(image).mask if hasattr(segmenter, "predict") else segmenter(image)


def measure_files(
    inputs,
    out_dir: str | os.PathLike,
    segmenter=None,
    options: MeasureOptions | None = None,
    formats: tuple[str, ...] | None = None,
    marker_mm: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: float | None = None,
    client=None,
    **option_values,
) -> tuple[int, int, list[str]]:
    """Measure the cracks in photos (with `segmenter`) or masks; returns (inputs measured, cracks found, failures).

    Writes, per input, the `formats` of FORMATS (default: all): OUT/NAME_measure.json, NAME_width.png,
    NAME_cracks.geojson (georeferenced inputs only) / .gpkg / .dxf, and OUT/cracks.csv (one row per crack across all
    inputs). Files already in `out_dir` are replaced only with `overwrite`. `options` (or its fields as keywords) say
    how cracks are measured. `client`: measure on a Dask cluster (see `measure_plan`).
    """
    options = MeasureOptions.of(options, **option_values)
    if max_pixels is None:
        max_pixels = getattr(segmenter, "max_pixels", DEFAULT_MAX_PIXELS)
    plan = plan_measure(inputs, out_dir, formats, overwrite, max_pixels, options.block)
    return measure_plan(plan, segmenter, options, marker_mm, progress, client)


def write_outputs(
    paths: dict[str, Path],
    result: Measurement,
    report: dict,
    georef: Georeference | None = None,
    figure: np.ndarray | None = None,
) -> None:
    """Write each per-input output named in `paths` (kind → path; see FORMATS). Without a georeference there is no
    GeoJSON: one an earlier run left (replaced only with --overwrite, checked by the plan) is removed."""
    if "json" in paths:
        atomic_write_bytes(paths["json"], json_bytes(report, indent=1, ascii=True))
    if "png" in paths and figure is not None:
        write_image(paths["png"], figure)
    if "geojson" in paths and georef is not None:
        atomic_write_bytes(paths["geojson"], json_bytes(geojson_dict(result, georef, paths["geojson"].stem)))
    elif "geojson" in paths:
        paths["geojson"].unlink(missing_ok=True)
    if "gpkg" in paths:
        write_gpkg(paths["gpkg"], **gpkg_layer(result, georef))
    if "dxf" in paths:
        atomic_write_bytes(paths["dxf"], dxf_bytes(result, georef))


def measure_mask(path: str | os.PathLike, options: MeasureOptions, progress: bool = False, client=None) -> Measurement:
    """Measure a mask raster read window by window (`measure.measure_blocks`): the cracks `measure.measure` finds
    on the whole mask, holding one block and its halo at a time. With `client`, the blocks are measured on its
    workers, each reading its own window."""
    if client is not None:
        from crackseg.runs.cluster import measure_mask_on_cluster

        return measure_mask_on_cluster(client, Path(path), options, progress)
    with rasterio_env(GDAL_CACHEMAX=READ_CACHE_MB), open_raster(path) as src:
        return measure_blocks(
            lambda row, col, height, width: read_mask_window(src, row, col, height, width),
            (src.height, src.width),
            options,
            block=options.block,
            progress=progress,
        )


def measure_raster(
    path: str | os.PathLike,
    work_dir: Path,
    segmenter=None,
    options: MeasureOptions | None = None,
    with_overview: bool = False,
    progress: bool = False,
    client=None,
):
    """Measure a raster block by block: a mask, or with `segmenter` a photo, segmented first (block by block,
    `runs.predict.segment_raster`) into a temporary mask GeoTIFF in `work_dir`, removed afterwards. Returns the
    Measurement and, with `with_overview`, the raster's `overview` for the width figure (else None). With
    `client`, the blocks are segmented and measured on its workers (which see `work_dir`)."""
    options = options or MeasureOptions()
    with contextlib.ExitStack() as stack:
        mask_path = Path(path)
        if segmenter is not None:
            name = temporary_mask_name(work_dir, mask_path)
            work = tempfile.TemporaryDirectory(dir=work_dir, prefix=temporary_prefix(name), suffix=".tmp")
            mask_path = Path(stack.enter_context(work)) / f"{name.name}.tif"
            segment_raster(segmenter, path, mask_path, block=options.block, client=client, progress=progress)
        result = measure_mask(mask_path, options, progress, client)
    return result, overview(path) if with_overview else None
