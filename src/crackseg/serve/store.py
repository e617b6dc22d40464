"""Results of the web service, kept in memory (never on disk) under random ids until they expire."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import OrderedDict

import numpy as np

from crackseg.io.georef import Georeference


@dataclasses.dataclass
class Result:
    """One segmented upload, as kept: the photo and its probabilities, the threshold asked for, and the pixel size
    asked for or read from the upload's georeference."""

    image: np.ndarray  # upright RGB uint8, as segmented
    prob: np.ndarray  # float32 crack probability, same H×W
    threshold: float
    pixel_size_mm: float | None
    name: str
    georef: Georeference | None = None  # a GeoTIFF's: its maps are placed in its CRS
    pixel_size_from: str | None = None  # "the request", "georeference", ... (`georef.resolve_pixel_size`)
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
