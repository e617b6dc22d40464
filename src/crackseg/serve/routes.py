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
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from crackseg.inference import Cancelled, CrackSegmenter
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


Segmenter = Annotated[CrackSegmenter, Depends(get_segmenter)]
Store = Annotated[ResultStore, Depends(get_store)]
ServerLimits = Annotated[Limits, Depends(get_limits)]
Pool = Annotated[WorkerPool, Depends(get_pool)]


def kept_result(rid: str, store: Store, limits: ServerLimits) -> Result:
    """The result under `rid`, or 404 once it has expired or was never made."""
    result = store.get(rid)
    if result is None:
        raise HTTPException(
            404,
            f"result {rid!r} not found: results are kept for {limits.result_ttl_s:g} s; upload the photo again",
        )
    return result


KeptResult = Annotated[Result, Depends(kept_result)]
Threshold = Annotated[float | None, Query(gt=0, lt=1, description="probability threshold (default: the request's)")]
PixelSize = Annotated[
    float | None,
    Query(gt=0, allow_inf_nan=False, description="size of one pixel in mm, for lengths and widths in mm"),
]

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
}
CRACK_MAP_TYPES = {"csv": "text/csv; charset=utf-8", "gpkg": "application/geopackage+sqlite3", "dxf": "image/vnd.dxf"}


def no_store(content: bytes, media_type: str, filename: str | None = None) -> Response:
    headers = {"Cache-Control": "no-store"}  # results are private to whoever holds the id
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(content, media_type=media_type, headers=headers)


def download_stem(result: Result) -> str:
    # ASCII only: header values are latin-1, and a quote or slash must not reach Content-Disposition.
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in Path(result.name).stem)
    return safe[:80] or "photo"


def result_urls(request: Request, rid: str) -> dict[str, str]:
    base = f"{request.scope.get('root_path', '')}/api/results/{rid}"
    return {kind: f"{base}/{file}" for kind, file in RESULT_FILES.items()}


def or_the_requests(result: Result, threshold: float | None, pixel_size_mm: float | None) -> tuple:
    """The threshold and pixel size asked for, or else those of the upload that made the result."""
    threshold = result.threshold if threshold is None else threshold
    return threshold, result.pixel_size_mm if pixel_size_mm is None else pixel_size_mm


def check_upload(file: UploadFile, name: str, limits: Limits) -> None:
    if file.size is not None and file.size > limits.max_upload_bytes:
        raise HTTPException(413, f"{name}: {limits.too_large}")
    if file.size == 0:
        raise HTTPException(400, f"{name}: the uploaded file is empty")


async def analysed(
    request: Request, pool: WorkerPool, segmenter, file: UploadFile, name: str, threshold, pixel_size_mm, max_pixels
):
    """`analyse` in the pool, counted as pending while it waits and runs; its failures as HTTP errors. A client
    that leaves (or the page's Cancel) stops the work within a batch of tiles, waiting or running, and so does a
    request cancelled by the server (shutting down once the grace after Ctrl+C is over)."""
    cancel = threading.Event()
    watcher = asyncio.create_task(watch_disconnect(request, cancel))
    with pool.admitted():
        try:
            args = (segmenter, file.file, name, threshold, pixel_size_mm, max_pixels, cancel)
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
    file: Annotated[UploadFile, File(description=f"the photo ({READABLE})")],
    segmenter: Segmenter,
    store: Store,
    limits: ServerLimits,
    pool: Pool,
    threshold: Annotated[float | None, Form(gt=0, lt=1)] = None,
    pixel_size_mm: Annotated[float | None, Form(gt=0, allow_inf_nan=False)] = None,
    inline: Annotated[bool, Query(description="return the images as base64 data URLs; keep nothing")] = False,
):
    name = Path(file.filename or "upload").name
    check_upload(file, name, limits)
    threshold = segmenter.threshold if threshold is None else threshold
    started = time.perf_counter()
    result, values, inference_s = await analysed(
        request, pool, segmenter, file, name, threshold, pixel_size_mm, limits.max_pixels
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
        "pixel_size_mm": pixel_size_mm,
        **values,
        "model": {"name": segmenter.config.name, "version": segmenter.config.version},
        "timing_ms": {"inference": round(inference_s * 1000, 1), "total": 0.0},
    }
    if inline:
        answer.update(id=None, urls=await run_in_threadpool(inline_images, result), expires_in_s=None)
    else:
        rid = store.add(result)
        answer.update(id=rid, urls=result_urls(request, rid), expires_in_s=limits.result_ttl_s)
    answer["timing_ms"]["total"] = round((time.perf_counter() - started) * 1000, 1)
    return answer


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


@router.get("/api/results/{rid}/measurements", summary="re-measure at another threshold or pixel size")
async def result_measurements(
    result: KeptResult, pool: Pool, threshold: Threshold = None, pixel_size_mm: PixelSize = None
):
    threshold, pixel_size_mm = or_the_requests(result, threshold, pixel_size_mm)
    values = await pool.run(measured, result, threshold, pixel_size_mm)
    return {"threshold": threshold, "pixel_size_mm": pixel_size_mm, **values}


@router.get(
    "/api/results/{rid}/cracks.{kind}",
    summary="the cracks: one row per crack (csv), or centrelines in mm (px without a pixel size) from the photo's "
    "bottom-left corner, y up (gpkg, dxf); geojson is refused (422): a photo has no WGS 84 place",
)
async def result_cracks(
    result: KeptResult,
    pool: Pool,
    kind: Literal["csv", "gpkg", "dxf", "geojson"],
    threshold: Threshold = None,
    pixel_size_mm: PixelSize = None,
):
    if kind == "geojson":
        raise HTTPException(422, NO_GEOJSON)
    threshold, pixel_size_mm = or_the_requests(result, threshold, pixel_size_mm)
    data = await pool.run(crack_map, result, threshold, pixel_size_mm, kind)
    return no_store(data, CRACK_MAP_TYPES[kind], f"{download_stem(result)}_cracks.{kind}")


@router.delete("/api/results/{rid}", summary="forget a result now")
async def forget(rid: str, store: Store):
    if not store.remove(rid):
        raise HTTPException(404, f"result {rid!r} not found")
    return {"deleted": rid}
