"""`crackseg predict`: every input of a plan segmented and its mask (and probabilities, overlay) written.

A photo is segmented whole (`CrackSegmenter.predict`); a georeferenced TIFF (or one with a geotransform but no CRS),
or any TIFF over the photo limit, is segmented block by block (`CrackSegmenter.predict_raster`) into GeoTIFFs on its
own grid and CRS. A failing input is reported and the rest go on; the mask is written last, so its presence means
the input is done. Warnings go through tqdm's logging redirect, so that they are not glued onto the progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from crackseg.errors import CracksegError
from crackseg.inference import CrackSegmenter, overlay
from crackseg.io.atomic import atomic_path
from crackseg.io.georef import read_tiff_header
from crackseg.io.images import read_image, write_image
from crackseg.io.rasters import (
    blocks,
    check_disk_space,
    has_no_data,
    in_blocks,
    open_raster,
    output_profile,
    rasterio_env,
    write_window,
)
from crackseg.options import DEFAULT_BLOCK, DEFAULT_MAX_PIXELS
from crackseg.runs.plan import Item, Plan, make_plan, prepare_outputs

PREDICT_OUTPUTS = {"mask": ".png", "prob": "_prob.png", "overlay": "_overlay.jpg"}
READ_ERRORS = (CracksegError, OSError, MemoryError)  # what one input can fail with; anything else is a bug


def plan_predict(
    inputs,
    out_dir: str | os.PathLike,
    write_prob: bool = False,
    write_overlay: bool = False,
    shard_spec: str | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    max_pixels: float = DEFAULT_MAX_PIXELS,
) -> Plan:
    """What `predict_plan` will write, checked before any model loads or photo is read.

    Refuses an output folder among the inputs, makes it, and refuses to replace a file an earlier run left there
    unless `overwrite`; with `skip_existing`, inputs whose mask is there are skipped instead, and an input without
    its mask is done again, replacing what an interrupted run left of it. Rasters segmented in blocks
    (`io.rasters.in_blocks`) get GeoTIFF outputs and no overlay.
    """
    wanted = {"mask", "prob" if write_prob else "", "overlay" if write_overlay else ""}
    suffixes = {k: v for k, v in PREDICT_OUTPUTS.items() if k in wanted}
    plan = make_plan(
        inputs, out_dir, suffixes, shard_spec=shard_spec, in_blocks=lambda p: in_blocks(read_tiff_header(p), max_pixels)
    )
    plan = dataclasses.replace(plan, items=[geotiff_outputs(item) if item.in_blocks else item for item in plan.items])
    prepare_outputs(plan, overwrite, ", --skip-existing to keep the inputs done already", skip_existing)
    return plan


def geotiff_outputs(item: Item) -> Item:
    """A raster's outputs: GeoTIFFs on its grid, and no overlay (it would be as large as the photo)."""
    tifs = {kind: q.with_suffix(".tif") for kind, q in item.outputs.items() if kind != "overlay"}
    return dataclasses.replace(item, outputs=tifs)


def predict_plan(
    segmenter,
    plan: Plan,
    skip_existing: bool = False,
    progress: bool = True,
    client=None,
    block: int = DEFAULT_BLOCK,
) -> tuple[int, list[str]]:
    """Segment each input of `plan` and write its outputs; returns (written, failures). Rasters are segmented in
    blocks of `block` px a side.

    With `client` (a `distributed.Client`), the inputs are segmented on its workers (`runs.cluster`), each of which
    builds its own segmenter from `segmenter` (one made by `CrackSegmenter.from_pretrained`, or a
    `runs.cluster.ModelSpec`): the same outputs and failures as here, in the same order; a raster's blocks are the
    workers' tasks.
    """
    todo = [item for item in plan.items if not (skip_existing and item.done("mask"))]
    if client is not None:
        from crackseg.runs.cluster import predict_on_cluster

        outcomes = predict_on_cluster(client, segmenter, plan, todo, progress, block)
    else:
        skipped = len(plan.items) - len(todo)  # done already (--skip-existing): counted as done
        bar = tqdm(todo, desc="predict", total=len(plan.items), initial=skipped, unit="img", disable=not progress)
        with logging_redirect_tqdm():  # warnings on lines of their own, not glued onto the bar
            outcomes = [predict_item(segmenter, item, block) for item in bar]
    failures = [failure for failure in outcomes if failure is not None]
    return len(todo) - len(failures), failures


def predict_item(segmenter, item: Item, block: int = DEFAULT_BLOCK, client=None, progress: bool = False) -> str | None:
    """Segment one input and write its outputs; None when done, else the message saying why it failed. With
    `client`, `item` is a raster whose blocks are segmented on the client's workers."""
    try:
        if item.in_blocks:
            mask, prob = item.outputs["mask"], item.outputs.get("prob")
            segment_raster(segmenter, item.source, mask, prob, block, client=client, progress=progress)
        else:
            predict_photo(segmenter, item.source, item.outputs)
    except READ_ERRORS as err:
        return failure_message(item, err)
    return None


def failure_message(item: Item, err: BaseException) -> str:
    """An input's failure as reported: the error's message, led by the input's path unless it names it."""
    return str(err) if str(item.source) in str(err) else f"{item.source}: {err}"


def predict_files(
    segmenter: CrackSegmenter,
    inputs,
    out_dir: str | os.PathLike,
    progress: bool = True,
    client=None,
    block: int = DEFAULT_BLOCK,
    **plan_options,
) -> tuple[int, list[str]]:
    """Segment every input (a path, folder or pattern, or a list of them) and write masks to `out_dir`; returns
    (written, failures). `plan_options` are `plan_predict`'s: write_prob, write_overlay, shard_spec, skip_existing,
    overwrite (see there for what is refused); see `predict_plan` for `client` (a run on a Dask cluster) and
    `block`."""
    plan = plan_predict(inputs, out_dir, max_pixels=segmenter.max_pixels, **plan_options)
    return predict_plan(segmenter, plan, plan_options.get("skip_existing", False), progress, client, block)


def predict_photo(segmenter: CrackSegmenter, path: Path, outputs: dict[str, Path]) -> None:
    image = read_image(path, segmenter.max_pixels)
    result = segmenter.predict(image)
    if "prob" in outputs:
        write_image(outputs["prob"], np.round(result.prob * 255).astype(np.uint8))
    if "overlay" in outputs:
        write_image(outputs["overlay"], overlay(image, result.mask))
    write_image(outputs["mask"], result.mask.view(np.uint8) * 255)  # last: its presence means the input is done


@dataclass(frozen=True)
class RasterBlock:
    """What one block adds to a raster's outputs: its mask (0/255), its probabilities (×255) when they are written,
    and its valid-data mask (0/255) when the raster marks no-data."""

    row: int
    col: int
    mask: np.ndarray
    prob: np.ndarray | None = None
    valid: np.ndarray | None = None


def raster_block(row: int, col: int, prediction, valid: np.ndarray, with_prob: bool, masked: bool) -> RasterBlock:
    """A block's outputs from its `CrackSegmenter.predict_block`, as written (here, or on a Dask worker)."""
    return RasterBlock(
        row,
        col,
        prediction.mask.view(np.uint8) * 255,
        np.round(prediction.prob * 255).astype(np.uint8) if with_prob else None,
        valid.view(np.uint8) * 255 if masked else None,
    )


def segment_raster(
    segmenter,
    path: str | os.PathLike,
    mask_path: Path,
    prob_path: Path | None = None,
    block: int = DEFAULT_BLOCK,
    client=None,
    progress: bool = False,
) -> None:
    """Segment a TIFF block by block into a mask GeoTIFF (0/255) and optionally a probability GeoTIFF (×255),
    both on the input's grid and CRS (if it has one), each written atomically, the mask last. Where the input has
    no-data (a nodata value, alpha band or mask), the outputs carry it as their own mask, so a GIS shows no-data
    there rather than "no crack".

    With `client` (a `distributed.Client` whose workers hold the segmenter, `runs.cluster`), the blocks are
    segmented on its workers, each reading its own window; here they are written in raster order all the same, so
    the files are the same bytes.
    """
    with open_raster(path) as src, contextlib.ExitStack() as stack:
        stack.enter_context(rasterio_env(GDAL_TIFF_INTERNAL_MASK=True))
        masked, with_prob = has_no_data(src), prob_path is not None
        check_disk_space(mask_path.parent, src.height, src.width, with_prob)
        # Contexts close in reverse: the rasters are flushed, then renamed into place, the mask last (as a photo's).
        targets = [mask_path] + ([prob_path] if prob_path else [])
        temporary = [stack.enter_context(atomic_path(t)) for t in targets]
        sinks = [stack.enter_context(open_raster(t, "w", **output_profile(src, "uint8"))) for t in temporary]
        if client is None:
            parts = (raster_block(*part, with_prob, masked) for part in segmenter.predict_raster(src, block))
        else:
            from crackseg.runs.cluster import segment_blocks

            parts = segment_blocks(client, segmenter, src, block, with_prob, masked, temporary[0].parent)
        total = len(list(blocks(src.height, src.width, block)))
        for part in tqdm(parts, desc="blocks", total=total, unit="block", leave=False, disable=not progress):
            write_window(sinks[0], part.row, part.col, part.mask)
            if with_prob:
                write_window(sinks[1], part.row, part.col, part.prob)
            if masked:
                for sink in sinks:
                    write_window(sink, part.row, part.col, part.valid, band="mask")
