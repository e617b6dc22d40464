"""The web service's endpoints, as an `APIRouter`: the JSON API (`/api/...`) and the page (`GET /`).

What the endpoints share is kept on `app.state` by `create_app` and reaches them through small dependencies: the
segmenter (one for all requests), the result store, the limits and the worker pool. Decoding, inference and
measuring run in that bounded pool, off the event loop, so the server keeps answering page loads and health
checks while photos are segmented; requests beyond the pool's queue are turned away with 503 instead of piling
up. A result is kept under a random id for `result_ttl_s` seconds: only the client that received the id can
fetch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from crackseg.inference import Cancelled, CrackSegmenter
from crackseg.io.georef import GeoreferenceError
from crackseg.measure import WIDTH_CLASS_PRESETS
from crackseg.options import DEFAULT_MIN_LENGTH, MeasureOptions
from crackseg.serve.analysis import (
    NO_GEOJSON,
    READABLE,
    UploadError,
    analyse,
    crack_map,
    inline_images,
    mask_png,
    measured,
    model_info,
    overlay_jpeg,
    photo_jpeg,
    prob_png,
)
from crackseg.serve.bundle import bundle_zip
from crackseg.serve.progress import ProgressBoard
from crackseg.serve.store import Result, ResultStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the server accepts and keeps, as `/api/health` and `/api/model` report them."""

    max_upload_mb: float
    max_pixels: int
    workers: int
    max_pending: int
    result_ttl_s: float

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def too_large(self) -> str:
        return f"upload too large: this server accepts files up to {self.max_upload_mb:g} MB"


class WorkerPool:
    """The threads photos are decoded, segmented and measured in, and the count of uploads waiting for or
    running in them: past `max_pending`, uploads are turned away instead of queueing without end."""

    def __init__(self, workers: int, max_pending: int):
        self.workers, self.max_pending, self.pending = workers, max_pending, 0
        self.executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="crackseg-infer")

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, function, *args):
        """`function(*args)` in a worker thread, awaited without holding up the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    @contextlib.contextmanager
    def admitted(self):
        """Counts one upload as pending for the duration; 503 when `max_pending` are already."""
        if self.pending >= self.max_pending:
            raise HTTPException(503, "server busy: too many photos waiting; retry shortly", {"Retry-After": "5"})
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1


# --- what the endpoints get from the app --------------------------------------------------------------------


def get_segmenter(request: Request) -> CrackSegmenter:
    return request.app.state.segmenter


def get_store(request: Request) -> ResultStore:
    return request.app.state.store


def get_limits(request: Request) -> Limits:
    return request.app.state.limits


def get_pool(request: Request) -> WorkerPool:
    return request.app.state.pool


def get_progress(request: Request) -> ProgressBoard:
    return request.app.state.progress


Segmenter = Annotated[CrackSegmenter, Depends(get_segmenter)]
Store = Annotated[ResultStore, Depends(get_store)]
ServerLimits = Annotated[Limits, Depends(get_limits)]
Pool = Annotated[WorkerPool, Depends(get_pool)]
Board = Annotated[ProgressBoard, Depends(get_progress)]


def kept_result(rid: str, store: Store, limits: ServerLimits) -> Result:
    """The result under `rid`, or 404 once it has expired or was never made (the message names no id: the page
    shows it as it is)."""
    result = store.get(rid)
    if result is None:
        raise HTTPException(
            404,
            f"this result has expired (results are kept for {limits.result_ttl_s:g} s, fewer when memory is "
            "short): upload the photo again",
        )
    return result


KeptResult = Annotated[Result, Depends(kept_result)]
Threshold = Annotated[float | None, Query(gt=0, lt=1, description="probability threshold (default: the request's)")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PixelSize = Annotated[
    Positive | Literal["none"] | None,
    Query(
        description="size of one pixel in mm, for lengths and widths in mm; none: in pixels only "
        "(default: the upload's, given or read from its georeference)"
    ),
]
WidthScheme = Literal[tuple(WIDTH_CLASS_PRESETS)]
SchemeQuery = Annotated[WidthScheme, Query(description="width classes: " + ", ".join(WIDTH_CLASS_PRESETS))]
MinLength = Annotated[float, Query(ge=0, allow_inf_nan=False, description="drop cracks shorter than this (px)")]


@dataclasses.dataclass(frozen=True)
class Asked:
    """How a request asks for a kept result to be measured: the threshold and the measuring options."""

    threshold: float
    options: MeasureOptions


def asked(
    result: KeptResult,
    threshold: Threshold = None,
    pixel_size_mm: PixelSize = None,
    classes: SchemeQuery = "concrete",
    min_length: MinLength = DEFAULT_MIN_LENGTH,
) -> Asked:
    """The threshold and pixel size asked for, or else those of the upload that made the result."""
    threshold = result.threshold if threshold is None else threshold
    size = result.pixel_size_mm if pixel_size_mm is None else None if pixel_size_mm == "none" else pixel_size_mm
    options = MeasureOptions(pixel_size_mm=size, width_classes=classes, min_length=min_length)
    return Asked(threshold, options)


Measuring = Annotated[Asked, Depends(asked)]

# --- answers ------------------------------------------------------------------------------------------------

RESULT_FILES = {
    "image": "image.jpg",
    "mask": "mask.png",
    "overlay": "overlay.jpg",
    "prob": "prob.png",
    "measurements": "measurements",
    "csv": "cracks.csv",
    "gpkg": "cracks.gpkg",
    "dxf": "cracks.dxf",
    "geojson": "cracks.geojson",  # listed for georeferenced uploads only
    "zip": "all.zip",
}
CRACK_MAP_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "gpkg": "application/geopackage+sqlite3",
    "dxf": "image/vnd.dxf",
    "geojson": "application/geo+json",
}


def no_store(content: bytes, media_type: str, filename: str | None = None) -> Response:
    headers = {"Cache-Control": "no-store"}  # results are private to whoever holds the id
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(content, media_type=media_type, headers=headers)


def download_stem(result: Result) -> str:
    # ASCII only: header values are latin-1, and a quote or slash must not reach Content-Disposition.
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in Path(result.name).stem)
    return safe[:80] or "photo"


def result_urls(request: Request, rid: str, georeferenced: bool) -> dict[str, str]:
    base = f"{request.scope.get('root_path', '')}/api/results/{rid}"
    kinds = [kind for kind in RESULT_FILES if georeferenced or kind != "geojson"]
    return {kind: f"{base}/{RESULT_FILES[kind]}" for kind in kinds}


def georeference_answer(result: Result) -> dict | None:
    if result.georef is None:
        return None
    return {"crs": result.georef.crs_name(), "transform": list(result.georef.transform[:6])}


def check_upload(file: UploadFile, name: str, limits: Limits) -> None:
    if file.size is not None and file.size > limits.max_upload_bytes:
        raise HTTPException(413, f"{name}: {limits.too_large}")
    if file.size == 0:
        raise HTTPException(400, f"{name}: the uploaded file is empty")


async def analysed(
    request: Request,
    pool: WorkerPool,
    segmenter,
    file: UploadFile,
    name: str,
    threshold,
    pixel_size_mm,
    max_pixels,
    options: MeasureOptions | None = None,
    token: str | None = None,
):
    """`analyse` in the pool, counted as pending while it waits and runs, its progress listed under `token`; its
    failures as HTTP errors. A client that leaves (or the page's Cancel) stops the work within a batch of tiles,
    waiting or running, and so does a request cancelled by the server (shutting down once the grace after Ctrl+C
    is over)."""
    cancel = threading.Event()
    watcher = asyncio.create_task(watch_disconnect(request, cancel))
    with pool.admitted(), request.app.state.progress.tracking(token) as progress:
        try:
            args = (segmenter, file.file, name, threshold, pixel_size_mm, max_pixels, cancel, options, progress)
            return await pool.run(analyse, *args)
        except Cancelled:
            log.info("%s: the client left; its photo was not finished", name)
            raise HTTPException(499, "cancelled: the client left") from None
        except asyncio.CancelledError:  # the server is stopping and its grace is over: answer, not a dropped line
            log.info("%s: the server is stopping; its photo was not finished", name)
            raise HTTPException(503, "the server is shutting down: send the photo again once it is back") from None
        except UploadError as err:
            raise HTTPException(err.status, str(err)) from None
        except MemoryError:
            message = f"{name}: not enough memory for this photo now; retry or send a smaller one"
            raise HTTPException(503, message) from None
        finally:
            watcher.cancel()
            cancel.set()  # nobody awaits the work any more: a worker still on it stops at its next batch of tiles


async def watch_disconnect(request: Request, cancel: threading.Event, every_s: float = 0.2) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every_s)
    cancel.set()


# --- the endpoints ------------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/api/health", summary="liveness and load")
async def health(store: Store, limits: ServerLimits, pool: Pool):
    return {"status": "ok", "pending": pool.pending, "results_kept": len(store), **dataclasses.asdict(limits)}


@router.get("/api/model", summary="the model's configuration and version, and the server's limits")
async def model(segmenter: Segmenter, limits: ServerLimits):
    return {**model_info(segmenter), "limits": dataclasses.asdict(limits)}


@router.post("/api/predict", summary="segment and measure the cracks in one photo")
async def predict(
    request: Request,
    file: Annotated[UploadFile, File(description=f"the photo ({READABLE}; a GeoTIFF keeps its place)")],
    segmenter: Segmenter,
    store: Store,
    limits: ServerLimits,
    pool: Pool,
    threshold: Annotated[float | None, Form(gt=0, lt=1)] = None,
    pixel_size_mm: Annotated[
        float | None, Form(gt=0, allow_inf_nan=False, description="default: a GeoTIFF's own, else none")
    ] = None,
    classes: Annotated[WidthScheme, Form(description="width classes")] = "concrete",
    min_length: Annotated[float, Form(ge=0, allow_inf_nan=False, description="drop shorter cracks (px)")] = (
        DEFAULT_MIN_LENGTH
    ),
    progress: Annotated[
        str | None, Form(description="a random token (8-64 of A-Z a-z 0-9 _ -) to follow at /api/progress/TOKEN")
    ] = None,
    inline: Annotated[bool, Query(description="return the images as base64 data URLs; keep nothing")] = False,
):
    name = Path(file.filename or "upload").name
    check_upload(file, name, limits)
    threshold = segmenter.threshold if threshold is None else threshold
    options = MeasureOptions(width_classes=classes, min_length=min_length)
    started = time.perf_counter()
    result, values, inference_s, notes = await analysed(
        request, pool, segmenter, file, name, threshold, pixel_size_mm, limits.max_pixels, options, progress
    )
    if not inline and await request.is_disconnected():
        log.info("%s: the client left (cancelled) before the answer; the result is not kept", name)
        return Response(status_code=499)  # nobody reads it; keeping the result would only hold memory
    height, width = result.prob.shape
    answer = {
        "file": name,
        "width": width,
        "height": height,
        "threshold": threshold,
        "pixel_size_mm": result.pixel_size_mm,
        "pixel_size_from": result.pixel_size_from,
        "georeference": georeference_answer(result),
        "notes": notes,
        **values,
        "model": {"name": segmenter.config.name, "version": segmenter.config.version},
        "timing_ms": {"inference": round(inference_s * 1000, 1), "total": 0.0},
    }
    if inline:
        answer.update(id=None, urls=await run_in_threadpool(inline_images, result), expires_in_s=None)
    else:
        rid = store.add(result)
        answer.update(id=rid, urls=result_urls(request, rid, result.georef is not None))
        answer["expires_in_s"] = limits.result_ttl_s
    answer["timing_ms"]["total"] = round((time.perf_counter() - started) * 1000, 1)
    return answer


@router.get("/api/progress/{token}", summary="how far the server is with the upload sent with this progress token")
async def upload_progress(token: str, board: Board):
    """The stage ("waiting", "reading", "segmenting", "measuring") and the tiles done and in all; "unknown" when no
    upload with this token is in progress (not started yet, or finished)."""
    return board.get(token) or {"stage": "unknown", "done": 0, "total": 0}


@router.get("/api/results/{rid}/image.jpg", summary="the photo, upright, as it was segmented")
async def result_image(result: KeptResult):
    return no_store(await run_in_threadpool(photo_jpeg, result.image), "image/jpeg")


@router.get("/api/results/{rid}/prob.png", summary="crack probability × 255, 8-bit grey")
async def result_prob(result: KeptResult):
    data = await run_in_threadpool(prob_png, result.prob)
    return no_store(data, "image/png", f"{download_stem(result)}_prob.png")


@router.get("/api/results/{rid}/mask.png", summary="the crack mask (255 = crack) at a threshold")
async def result_mask(result: KeptResult, threshold: Threshold = None):
    data = await run_in_threadpool(lambda: mask_png(result.mask(threshold)))
    return no_store(data, "image/png", f"{download_stem(result)}_mask.png")


@router.get("/api/results/{rid}/overlay.jpg", summary="the photo with the cracks in red, at a threshold")
async def result_overlay(result: KeptResult, threshold: Threshold = None):
    data = await run_in_threadpool(lambda: overlay_jpeg(result.image, result.mask(threshold)))
    return no_store(data, "image/jpeg", f"{download_stem(result)}_overlay.jpg")


@router.get("/api/results/{rid}/measurements", summary="re-measure at another threshold, pixel size or classes")
async def result_measurements(result: KeptResult, pool: Pool, asked: Measuring):
    values = await pool.run(measured, result, asked.threshold, asked.options)
    return {"threshold": asked.threshold, "pixel_size_mm": asked.options.pixel_size_mm, **values}


@router.get(
    "/api/results/{rid}/cracks.{kind}",
    summary="the cracks: one row per crack (csv), or centrelines (gpkg, dxf) in a GeoTIFF's CRS, else in mm (px "
    "without a pixel size) from the photo's bottom-left corner, y up; geojson (WGS 84) for a GeoTIFF only (else 422)",
)
async def result_cracks(
    result: KeptResult, pool: Pool, kind: Literal["csv", "gpkg", "dxf", "geojson"], asked: Measuring
):
    if kind == "geojson" and result.georef is None:
        raise HTTPException(422, NO_GEOJSON)
    try:
        data = await pool.run(crack_map, result, asked.threshold, asked.options, kind)
    except GeoreferenceError as err:  # a CRS with no WGS 84 place, for GeoJSON
        raise HTTPException(422, str(err)) from None
    return no_store(data, CRACK_MAP_TYPES[kind], f"{download_stem(result)}_cracks.{kind}")


@router.get(
    "/api/results/{rid}/all.zip",
    summary="everything in one ZIP: mask, overlay, crack table and maps, width figure, summary JSON and a one-page "
    "HTML report (photo and table)",
)
async def result_bundle(result: KeptResult, pool: Pool, asked: Measuring, segmenter: Segmenter):
    stem = download_stem(result)
    model = f"{segmenter.config.name} {segmenter.config.version}".strip()
    try:
        data = await pool.run(bundle_zip, result, asked.threshold, asked.options, stem, model)
    except GeoreferenceError as err:
        raise HTTPException(422, str(err)) from None
    return no_store(data, "application/zip", f"{stem}_crackseg.zip")


@router.delete("/api/results/{rid}", summary="forget a result now")
async def forget(rid: str, store: Store):
    if not store.remove(rid):
        raise HTTPException(404, "no such result: it has expired or was deleted")
    return {"deleted": rid}


# --- the page's surroundings --------------------------------------------------------------------------------


@router.get("/favicon.ico", include_in_schema=False)
async def favicon():
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")


@router.get("/docs", include_in_schema=False, response_class=HTMLResponse)
async def docs(request: Request):
    """Where the API is described: FastAPI's Swagger UI and ReDoc load their scripts from a CDN (blank offline),
    so this page lists the endpoints from the OpenAPI description and links to it."""
    from crackseg.serve.api_docs import docs_page

    root = request.scope.get("root_path", "")
    return HTMLResponse(docs_page(request.app.openapi(), f"{root}/openapi.json"), headers={"Cache-Control": "no-cache"})
