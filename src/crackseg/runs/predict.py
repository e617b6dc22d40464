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
    segmenter, plan: Plan, skip_existing: bool = False, progress: bool = True, client=None
) -> tuple[int, list[str]]:
    """Segment each input of `plan` and write its outputs; returns (written, failures).

    With `client` (a `distributed.Client`), the inputs are segmented on its workers (`runs.cluster`), each of which
    builds its own segmenter from `segmenter` (one made by `CrackSegmenter.from_pretrained`, or a
    `runs.cluster.ModelSpec`): the same outputs and failures as here, in the same order.
    """
    todo = [item for item in plan.items if not (skip_existing and item.done("mask"))]
    if client is not None:
        from crackseg.runs.cluster import predict_on_cluster

        outcomes = predict_on_cluster(client, segmenter, plan, todo, progress)
    else:
        skipped = len(plan.items) - len(todo)  # done already (--skip-existing): counted as done
        bar = tqdm(todo, desc="predict", total=len(plan.items), initial=skipped, unit="img", disable=not progress)
        with logging_redirect_tqdm():  # warnings on lines of their own, not glued onto the bar
            outcomes = [predict_item(segmenter, item) for item in bar]
    failures = [failure for failure in outcomes if failure is not None]
    return len(todo) - len(failures), failures


def predict_item(segmenter: CrackSegmenter, item: Item) -> str | None:
    """Segment one input and write its outputs; None when done, else the message saying why it failed."""
    try:
        if item.in_blocks:
            segment_raster(segmenter, item.source, item.outputs["mask"], item.outputs.get("prob"))
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
    **plan_options,
) -> tuple[int, list[str]]:
    """Segment every input (a path, folder or pattern, or a list of them) and write masks to `out_dir`; returns
    (written, failures). `plan_options` are `plan_predict`'s: write_prob, write_overlay, shard_spec, skip_existing,
    overwrite (see there for what is refused); see `predict_plan` for `client` (a run on a Dask cluster)."""
    plan = plan_predict(inputs, out_dir, max_pixels=segmenter.max_pixels, **plan_options)
    return predict_plan(segmenter, plan, plan_options.get("skip_existing", False), progress, client)


def predict_photo(segmenter: CrackSegmenter, path: Path, outputs: dict[str, Path]) -> None:
    image = read_image(path, segmenter.max_pixels)
    result = segmenter.predict(image)
    if "prob" in outputs:
        write_image(outputs["prob"], np.round(result.prob * 255).astype(np.uint8))
    if "overlay" in outputs:
        write_image(outputs["overlay"], overlay(image, result.mask))
    write_image(outputs["mask"], result.mask.view(np.uint8) * 255)  # last: its presence means the input is done


def segment_raster(
    segmenter: CrackSegmenter,
    path: str | os.PathLike,
    mask_path: Path,
    prob_path: Path | None = None,
    block: int = DEFAULT_BLOCK,
) -> None:
    """Segment a TIFF block by block into a mask GeoTIFF (0/255) and optionally a probability GeoTIFF (×255),
    both on the input's grid and CRS (if it has one), each written atomically, the mask last. Where the input has
    no-data (a nodata value, alpha band or mask), the outputs carry it as their own mask, so a GIS shows no-data
    there rather than "no crack"."""
    with open_raster(path) as src, contextlib.ExitStack() as stack:
        stack.enter_context(rasterio_env(GDAL_TIFF_INTERNAL_MASK=True))
        masked = has_no_data(src)
        check_disk_space(mask_path.parent, src.height, src.width, prob_path is not None)
        # Contexts close in reverse: the rasters are flushed, then renamed into place, the mask last (as a photo's).
        targets = [mask_path] + ([prob_path] if prob_path else [])
        temporary = [stack.enter_context(atomic_path(t)) for t in targets]
        sinks = [stack.enter_context(open_raster(t, "w", **output_profile(src, "uint8"))) for t in temporary]
        for row, col, prediction, valid in segmenter.predict_raster(src, block):
            write_window(sinks[0], row, col, prediction.mask.view(np.uint8) * 255)
            if prob_path:
                write_window(sinks[1], row, col, np.round(prediction.prob * 255).astype(np.uint8))
            if masked:
                for sink in sinks:
                    write_window(sink, row, col, valid.view(np.uint8) * 255, band="mask")
