"""The web service: `create_app` builds the FastAPI app around one shared segmenter.

The endpoints are `serve.routes`; the app holds what they share (segmenter, results, limits, worker pool) and the
middleware that decides who may use it and how much they may send (`serve.security`). Nothing is loaded from the
network: there are no Swagger/ReDoc pages (they need a CDN); `/openapi.json` describes the API and `/docs` lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from crackseg import __version__
from crackseg.errors import InputError
from crackseg.serve.progress import ProgressBoard
from crackseg.serve.routes import MB, STATIC_DIR, Limits, WorkerPool, router
from crackseg.serve.security import BodySizeLimit, BodyTimeout, HostOriginGuard, allowed_host_names
from crackseg.serve.store import ResultStore

FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small form fields around the file


def create_app(
    segmenter,
    *,
    max_upload_mb: float = 50,
    max_pixels: int | None = None,
    workers: int = 2,
    max_pending: int | None = None,
    result_ttl_s: float = 900,
    max_result_mb: float = 1024,
    host: str = "127.0.0.1",
    body_timeout_s: float = 60,
) -> FastAPI:
    """The crackseg web app around one shared segmenter (a `CrackSegmenter` or anything with its interface).

    max_upload_mb: larger uploads get 413. max_pixels: larger images get 413 (default and ceiling: the
    segmenter's own limit). workers: photos processed at once (the network itself runs one batch at a time,
    see `CrackSegmenter`). max_pending: requests allowed to wait for or run in the pool (default 8 per worker);
    more get 503. result_ttl_s: how long results can be fetched. max_result_mb: memory for kept results; the
    oldest go first when it is full. host: the address the server listens on (`crackseg serve --host`):
    requests are answered only for it and the loopback names (`allowed_host_names`), and POSTs only from the
    page's own origin (`HostOriginGuard`). body_timeout_s: an upload that sends nothing for this long is answered
    408 and its connection closed (`BodyTimeout`).

    FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN, so they are blank offline: /docs is
    instead a plain page listing the endpoints and pointing to `/openapi.json`, which describes the API.
    """
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if not result_ttl_s > 0:
        raise InputError(f"--result-ttl must be positive, got {result_ttl_s}")
    if not 0 < body_timeout_s < math.inf:
        raise InputError(f"--body-timeout must be a positive number of seconds, got {body_timeout_s}")
    max_pixels = int(min(max_pixels or segmenter.max_pixels, segmenter.max_pixels))
    limits = Limits(max_upload_mb, max_pixels, workers, max_pending or 8 * workers, result_ttl_s)
    app = FastAPI(
        title="crackseg",
        version=__version__,
        summary="Segment and measure cracks in photos of roads, bridges, walls and tunnels.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc come from a CDN: blank offline; /openapi.json stays
        redoc_url=None,
    )
    app.state.segmenter = segmenter
    app.state.limits = limits
    app.state.store = ResultStore(result_ttl_s, int(max_result_mb * MB))
    app.state.pool = WorkerPool(workers, limits.max_pending)
    app.state.progress = ProgressBoard()
    app.add_middleware(BodyTimeout, seconds=body_timeout_s)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_upload_bytes + FORM_OVERHEAD, message=limits.too_large)
    app.add_middleware(HostOriginGuard, allowed=allowed_host_names(host))  # outermost: before any body is read
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """The worker pool runs while the app does, and so does a task that drops expired results even when no
    request comes to trigger a purge."""
    app.state.pool.start()
    purger = asyncio.create_task(purge_forever(app.state.store))
    try:
        yield
    finally:
        purger.cancel()
        app.state.pool.stop()


async def purge_forever(store: ResultStore) -> None:
    while True:
        await asyncio.sleep(min(max(store.ttl_s, 1), 30))
        store.purge()
