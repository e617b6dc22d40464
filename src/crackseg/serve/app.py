"""The web service: a FastAPI app with the JSON API (`/api/...`) and a single page (`GET /`).

All requests share one segmenter. Decoding, inference and measuring run in a bounded thread pool, off the
event loop, so the server keeps answering page loads and health checks while photos are segmented; requests
beyond the pool's queue are turned away with 503 instead of piling up. A result (the upright photo and its
probability map) is kept in memory, never on disk, under a random id from `secrets.token_urlsafe` for
`result_ttl_s` seconds: only the client that received the id can fetch it. Requests are answered only under
the names the server listens on, and POSTs only from its own page (`HostOriginGuard`): another site's page
can neither post to it nor, through DNS rebinding, read its answers. Nothing is loaded from the network:
there are no Swagger/ReDoc pages (they need a CDN); `/openapi.json` describes the API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import ipaddress
import logging
import math
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from crackseg import __version__
from crackseg.errors import InputError
from crackseg.inference import overlay
from crackseg.io.images import encode_image, pil_to_rgb
from crackseg.measure import measure

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MB = 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small form fields around the file
READABLE = "JPEG, PNG, TIFF, BMP or WebP"

Threshold = Annotated[float | None, Query(gt=0, lt=1, description="probability threshold (default: the request's)")]
PixelSize = Annotated[
    float | None,
    Query(gt=0, allow_inf_nan=False, description="size of one pixel in mm, for lengths and widths in mm"),
]


class UploadError(Exception):
    """An upload the server cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- reading an upload --------------------------------------------------------------------------------------


def decode_upload(stream, name: str, max_pixels: int) -> np.ndarray:
    """The upload as upright H×W×3 uint8 RGB; the pixel limit is checked on the header, before decoding."""
    try:
        img = Image.open(stream)
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image, or a format this server cannot read (send {READABLE})") from None
    except Image.DecompressionBombError as err:
        raise UploadError(413, f"{name}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UploadError(400, f"{name}: unreadable image ({err})") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise UploadError(
                413,
                f"{name}: {width}×{height} = {width * height / 1e6:.1f} MP exceeds this server's limit of "
                f"{max_pixels / 1e6:.1f} MP; crop or downscale the photo",
            )
        try:
            img.load()  # decode now, so a truncated file fails here with a clear message
        except (OSError, SyntaxError, ValueError) as err:
            raise UploadError(400, f"{name}: the image is truncated or corrupt ({err})") from None
        return pil_to_rgb(ImageOps.exif_transpose(img))


# --- results ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    image: np.ndarray  # upright RGB uint8, as segmented
    prob: np.ndarray  # float32 crack probability, same H×W
    threshold: float
    pixel_size_mm: float | None
    name: str
    created: float = 0.0  # set by ResultStore.add

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.prob.nbytes

    def mask(self, threshold: float | None = None) -> np.ndarray:
        return self.prob >= (self.threshold if threshold is None else threshold)


class ResultStore:
    """Results by random id; each is dropped `ttl_s` after it was made, or earlier (oldest first) when the
    memory budget needs room for a new one."""

    def __init__(self, ttl_s: float, max_bytes: int):
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, result: Result) -> str:
        with self._lock:
            self._purge_expired()
            while self._items and sum(r.nbytes for r in self._items.values()) + result.nbytes > self.max_bytes:
                self._items.popitem(last=False)
            rid = secrets.token_urlsafe(16)  # 128 random bits: not guessable, not derived from the upload
            while rid in self._items:
                rid = secrets.token_urlsafe(16)
            result.created = time.monotonic()
            self._items[rid] = result
            return rid

    def get(self, rid: str) -> Result | None:
        with self._lock:
            self._purge_expired()
            return self._items.get(rid)

    def remove(self, rid: str) -> bool:
        with self._lock:
            return self._items.pop(rid, None) is not None

    def purge(self) -> None:
        with self._lock:
            self._purge_expired()

    def _purge_expired(self) -> None:
        deadline = time.monotonic() - self.ttl_s
        while self._items and next(iter(self._items.values())).created <= deadline:
            self._items.popitem(last=False)  # insertion order is creation order


# --- measurements as JSON and CSV ---------------------------------------------------------------------------


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


def measure_mask(mask: np.ndarray, pixel_size_mm: float | None) -> dict:
    """`measure.measure` as JSON: image size, pixel size, per-image summary and one entry per crack."""
    return to_jsonable(measure(mask, pixel_size_mm=pixel_size_mm).to_dict())


def crack_map(result: Result, threshold: float, pixel_size_mm: float | None, kind: str) -> bytes:
    """The cracks as `measure` writes them (one writer, one layout): "csv", "geojson" or "dxf"."""
    from crackseg.outputs import csv_bytes, csv_row, dxf_bytes, geojson_bytes

    cracks = measure(result.mask(threshold), pixel_size_mm=pixel_size_mm)
    if kind == "csv":
        return csv_bytes([csv_row(result.name, crack) for crack in cracks.cracks])
    return geojson_bytes(cracks, name=result.name) if kind == "geojson" else dxf_bytes(cracks)


# --- the work done in the pool ------------------------------------------------------------------------------


def measured(result: Result, threshold: float | None, pixel_size_mm: float | None) -> dict:
    """Crack fraction and measurements of a result's mask at a threshold (default: the request's)."""
    mask = result.mask(threshold)
    return {"crack_fraction": float(mask.mean()), "measurements": measure_mask(mask, pixel_size_mm)}


def analyse(segmenter, stream, name: str, threshold: float, pixel_size_mm, max_pixels: int):
    """Decode, segment and measure one upload: (Result, `measured` dict, seconds spent in inference)."""
    image = decode_upload(stream, name, max_pixels)
    start = time.perf_counter()
    prob = segmenter.predict_prob(image)
    seconds = time.perf_counter() - start
    result = Result(image, prob, threshold, pixel_size_mm, name)
    return result, measured(result, None, pixel_size_mm), seconds


def png(array: np.ndarray) -> bytes:
    return encode_image(array, ".png")


def prob_png(prob: np.ndarray) -> bytes:
    return png(np.round(prob * 255).astype(np.uint8))


def mask_png(mask: np.ndarray) -> bytes:
    return png(mask.astype(np.uint8) * 255)


def overlay_jpeg(image: np.ndarray, mask: np.ndarray) -> bytes:
    return encode_image(overlay(image, mask), ".jpg", quality=90)


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


# --- the app ------------------------------------------------------------------------------------------------


class BodySizeLimit:
    """Answers 413 to request bodies over `max_bytes`: at once from Content-Length, or as soon as a streamed
    body passes the limit, so an oversized upload is never read whole."""

    def __init__(self, app, max_bytes: int, message: str):
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            status, detail = (413, self.message) if length.isdigit() else (400, "invalid Content-Length header")
            return await JSONResponse({"detail": detail}, status)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message)  # FastAPI passes HTTPExceptions from body parsing on
            return message

        await self.app(scope, limited_receive, send)


# Where the page may be used from. A browser sends the name it connected to in the Host header (with the port
# when it is not the scheme's default) and, with every POST, the page's origin in the Origin header. A Host
# the server was not started for is a DNS-rebinding page (an attacker's name pointed at this machine) reading
# the answers; an Origin of another site is a page posting in the user's name: both are refused. Clients that
# are not browsers (curl, scripts) send no Origin and are not affected.

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_PORT = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?")
ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://" + HOST_PORT.pattern)


def host_name(name: str) -> str:
    """A host name or address as compared here: lower case, IPv6 without brackets, no trailing dot."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.rstrip(".") if name not in WILDCARD_HOSTS else name


def allowed_host_names(host: str) -> frozenset[str]:
    """The names a server bound to `host` (its --host) answers to: the loopback names, and `host` itself, or
    for a wildcard bind (0.0.0.0, ::) this machine's name. Requests are also accepted for the address they
    actually arrived at (see `HostOriginGuard`), which covers every interface's address on a wildcard bind."""
    host = host_name(host)
    names = set(LOOPBACK_NAMES)
    if host in WILDCARD_HOSTS:
        machine = host_name(socket.gethostname())
        names.update(filter(None, (machine, f"{machine}.local" if machine and "." not in machine else "")))
    else:
        names.add(host)
    return frozenset(names)


def split_host_port(value: str, pattern: re.Pattern = HOST_PORT) -> tuple[str, ...] | None:
    """The parts of a Host header (name, port) or an Origin (scheme, name, port), port "" when absent;
    None when malformed (userinfo, a path, spaces, an unbracketed IPv6 address, a port past 65535)."""
    match = pattern.fullmatch(value.strip().lower())
    if match is None:
        return None
    *scheme, name, port = match.groups()
    if port and int(port) > 65535:
        return None
    return (*scheme, host_name(name), port or "")


class HostOriginGuard:
    """Answers 400 to a request whose Host header names neither one of `allowed` nor the address the
    connection arrived at (an IP address, which a DNS-rebinding page cannot make a browser send), and 403 to a
    POST/PUT/PATCH/DELETE whose Origin header is present but is not `http://<such a name>:<the port in Host>`.
    The port is the one the browser connected to, which is the listening port unless a proxy or a container's
    port mapping is in between."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        allowed = self.allowed
        server = scope.get("server")
        if server and server[0]:
            allowed = allowed | {host_name(str(server[0]))}  # an IP address when served by uvicorn
        scheme = scope.get("scheme", "http")
        host = split_host_port(headers.get("host", ""))
        if host is None or host[0] not in allowed:
            shown = headers.get("host", "")[:100]
            detail = (
                f"host {shown!r} not allowed: this server answers to {', '.join(sorted(self.allowed))} "
                "(start it with --host NAME to be reached under another name)"
            )
            return await JSONResponse({"detail": detail}, 400)(scope, receive, send)
        port = int(host[1] or DEFAULT_PORTS.get(scheme, 0))
        origin = headers.get("origin")
        if origin is not None and scope.get("method") in UNSAFE_METHODS:
            parts = split_host_port(origin, ORIGIN)
            same_site = (
                parts is not None
                and parts[0] == scheme
                and parts[1] in allowed
                and int(parts[2] or DEFAULT_PORTS.get(parts[0], 0)) == port
            )
            if not same_site:
                detail = f"cross-origin request from {origin[:100]!r} refused: use the page this server serves"
                return await JSONResponse({"detail": detail}, 403)(scope, receive, send)
        await self.app(scope, receive, send)


class SerialBackend:
    """Lets one network call run at a time. Some engines must not be entered from two threads at once (an
    OpenVINO infer request), and on a CPU one call already uses every core; the workers still overlap
    decoding, tiling, blending, measuring and encoding."""

    def __init__(self, backend):
        self.inner, self.lock = backend, threading.Lock()
        self.name, self.precision, self.fixed_size = backend.name, backend.precision, backend.fixed_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.inner(batch)


def model_info(segmenter) -> dict:
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
) -> FastAPI:
    """The crackseg web app around one shared segmenter (a `CrackSegmenter` or anything with its interface).

    max_upload_mb: larger uploads get 413. max_pixels: larger images get 413 (default and ceiling: the
    segmenter's own limit). workers: photos processed at once (the network itself runs one batch at a time,
    see `SerialBackend`). max_pending: requests allowed to wait
    for or run in the pool (default 8 per worker); more get 503. result_ttl_s: how long results can be
    fetched. max_result_mb: memory for kept results; the oldest go first when it is full. host: the address
    the server listens on (`crackseg serve --host`): requests are answered only for it and the loopback names
    (`allowed_host_names`), and POSTs only from the page's own origin (`HostOriginGuard`).

    There are no /docs or /redoc pages: FastAPI's load Swagger UI and ReDoc from a CDN, so they are blank
    offline. `/openapi.json` describes the API.
    """
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if not result_ttl_s > 0:
        raise InputError(f"--result-ttl must be positive, got {result_ttl_s}")
    segmenter = copy.copy(segmenter)  # the caller's segmenter keeps its own backend
    segmenter.backend = SerialBackend(segmenter.backend)
    max_upload_bytes = int(max_upload_mb * MB)
    max_pixels = int(min(max_pixels or segmenter.max_pixels, segmenter.max_pixels))
    max_pending = max_pending or 8 * workers
    store = ResultStore(result_ttl_s, int(max_result_mb * MB))
    limits = {
        "max_upload_mb": max_upload_mb,
        "max_pixels": max_pixels,
        "workers": workers,
        "max_pending": max_pending,
        "result_ttl_s": result_ttl_s,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crackseg-infer")

        async def purge_forever():
            while True:  # expired results leave memory even when no request comes to trigger a purge
                await asyncio.sleep(min(max(result_ttl_s, 1), 30))
                store.purge()

        purger = asyncio.create_task(purge_forever())
        try:
            yield
        finally:
            purger.cancel()
            app.state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="crackseg",
        version=__version__,
        summary="Segment and measure cracks in photos of roads, bridges, walls and tunnels.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc come from a CDN: blank offline; /openapi.json stays
        redoc_url=None,
    )
    app.state.pending = 0
    app.state.store = store
    too_large = f"upload too large: this server accepts files up to {max_upload_mb:g} MB"
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD, message=too_large)
    app.add_middleware(HostOriginGuard, allowed=allowed_host_names(host))  # outermost: before any body is read
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def result_or_404(rid: str) -> Result:
        result = store.get(rid)
        if result is None:
            raise HTTPException(
                404,
                f"result {rid!r} not found: results are kept for {result_ttl_s:g} s; upload the photo again",
            )
        return result

    def no_store(content: bytes, media_type: str, filename: str | None = None) -> Response:
        headers = {"Cache-Control": "no-store"}  # results are private to whoever holds the id
        if filename:
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(content, media_type=media_type, headers=headers)

    def stem(result: Result) -> str:
        # ASCII only: header values are latin-1, and a quote or slash must not reach Content-Disposition.
        safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in Path(result.name).stem)
        return safe[:80] or "photo"

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/health", summary="liveness and load")
    async def health():
        return {"status": "ok", "pending": app.state.pending, "results_kept": len(store), **limits}

    @app.get("/api/model", summary="the model's configuration and version, and the server's limits")
    async def model():
        return {**model_info(segmenter), "limits": limits}

    @app.post("/api/predict", summary="segment and measure the cracks in one photo")
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description=f"the photo ({READABLE})")],
        threshold: Annotated[float | None, Form(gt=0, lt=1)] = None,
        pixel_size_mm: Annotated[float | None, Form(gt=0, allow_inf_nan=False)] = None,
        inline: Annotated[bool, Query(description="return the images as base64 data URLs; keep nothing")] = False,
    ):
        name = Path(file.filename or "upload").name
        if file.size is not None and file.size > max_upload_bytes:
            raise HTTPException(413, f"{name}: {too_large}")
        if file.size == 0:
            raise HTTPException(400, f"{name}: the uploaded file is empty")
        if app.state.pending >= max_pending:
            raise HTTPException(503, "server busy: too many photos waiting; retry shortly", {"Retry-After": "5"})
        threshold = segmenter.threshold if threshold is None else threshold
        app.state.pending += 1
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            result, values, inference_s = await loop.run_in_executor(
                app.state.pool, analyse, segmenter, file.file, name, threshold, pixel_size_mm, max_pixels
            )
        except UploadError as err:
            raise HTTPException(err.status, str(err)) from None
        except MemoryError:
            message = f"{name}: not enough memory for this photo now; retry or send a smaller one"
            raise HTTPException(503, message) from None
        finally:
            app.state.pending -= 1
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
            mask = result.mask()
            files = await run_in_threadpool(
                lambda: {
                    "mask": data_url(mask_png(mask), "image/png"),
                    "overlay": data_url(overlay_jpeg(result.image, mask), "image/jpeg"),
                    "prob": data_url(prob_png(result.prob), "image/png"),
                }
            )
            answer.update(id=None, urls=files, expires_in_s=None)
        else:
            rid = store.add(result)
            base = f"{request.scope.get('root_path', '')}/api/results/{rid}"
            answer.update(
                id=rid,
                urls={
                    "image": f"{base}/image.jpg",
                    "mask": f"{base}/mask.png",
                    "overlay": f"{base}/overlay.jpg",
                    "prob": f"{base}/prob.png",
                    "measurements": f"{base}/measurements",
                    "csv": f"{base}/cracks.csv",
                    "geojson": f"{base}/cracks.geojson",
                    "dxf": f"{base}/cracks.dxf",
                },
                expires_in_s=result_ttl_s,
            )
        answer["timing_ms"]["total"] = round((time.perf_counter() - started) * 1000, 1)
        return answer

    @app.get("/api/results/{rid}/image.jpg", summary="the photo, upright, as it was segmented")
    async def result_image(rid: str):
        result = result_or_404(rid)
        data = await run_in_threadpool(encode_image, result.image, ".jpg", 92)
        return no_store(data, "image/jpeg")

    @app.get("/api/results/{rid}/prob.png", summary="crack probability × 255, 8-bit grey")
    async def result_prob(rid: str):
        result = result_or_404(rid)
        return no_store(await run_in_threadpool(prob_png, result.prob), "image/png", f"{stem(result)}_prob.png")

    @app.get("/api/results/{rid}/mask.png", summary="the crack mask (255 = crack) at a threshold")
    async def result_mask(rid: str, threshold: Threshold = None):
        result = result_or_404(rid)
        data = await run_in_threadpool(lambda: mask_png(result.mask(threshold)))
        return no_store(data, "image/png", f"{stem(result)}_mask.png")

    @app.get("/api/results/{rid}/overlay.jpg", summary="the photo with the cracks in red, at a threshold")
    async def result_overlay(rid: str, threshold: Threshold = None):
        result = result_or_404(rid)
        data = await run_in_threadpool(lambda: overlay_jpeg(result.image, result.mask(threshold)))
        return no_store(data, "image/jpeg", f"{stem(result)}_overlay.jpg")

    async def remeasured(result: Result, threshold, pixel_size_mm) -> dict:
        """`measured` in the pool, with the request's threshold and pixel size unless others are given."""
        threshold = result.threshold if threshold is None else threshold
        pixel_size_mm = result.pixel_size_mm if pixel_size_mm is None else pixel_size_mm
        loop = asyncio.get_running_loop()
        values = await loop.run_in_executor(app.state.pool, measured, result, threshold, pixel_size_mm)
        return {"threshold": threshold, "pixel_size_mm": pixel_size_mm, **values}

    @app.get("/api/results/{rid}/measurements", summary="re-measure at another threshold or pixel size")
    async def result_measurements(rid: str, threshold: Threshold = None, pixel_size_mm: PixelSize = None):
        return await remeasured(result_or_404(rid), threshold, pixel_size_mm)

    media_types = {"csv": "text/csv; charset=utf-8", "geojson": "application/geo+json", "dxf": "image/vnd.dxf"}

    @app.get(
        "/api/results/{rid}/cracks.{kind}",
        summary="the cracks: one row per crack (csv), centrelines in image pixels (geojson), or a drawing (dxf)",
    )
    async def result_cracks(
        rid: str, kind: Literal["csv", "geojson", "dxf"], threshold: Threshold = None, pixel_size_mm: PixelSize = None
    ):
        result = result_or_404(rid)
        threshold = result.threshold if threshold is None else threshold
        pixel_size_mm = result.pixel_size_mm if pixel_size_mm is None else pixel_size_mm
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(app.state.pool, crack_map, result, threshold, pixel_size_mm, kind)
        return no_store(data, media_types[kind], f"{stem(result)}_cracks.{kind}")

    @app.delete("/api/results/{rid}", summary="forget a result now")
    async def forget(rid: str):
        if not store.remove(rid):
            raise HTTPException(404, f"result {rid!r} not found")
        return {"deleted": rid}

    return app


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address
