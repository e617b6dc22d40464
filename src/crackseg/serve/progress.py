"""How far the server is with each photo: the page names its upload with a random token and asks for the
tiles done and in all while it waits (`GET /api/progress/{token}`).

A token is only a name for the counts of one upload in progress, held while the upload is; it gives access to
nothing else, and an unknown token reads as "not started".
"""

from __future__ import annotations

import contextlib
import re
import threading

TOKEN = re.compile(r"[A-Za-z0-9_-]{8,64}")


class ProgressBoard:
    """The stage and tile counts of the uploads in progress, by the token each was sent with."""

    def __init__(self):
        self._items: dict[str, dict] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def tracking(self, token: str | None):
        """A `Progress` for one upload, readable under `token` while the block runs (a token of None, or one
        already in use, is not listed: its progress is reported nowhere)."""
        listed = token is not None and TOKEN.fullmatch(token) is not None
        with self._lock:
            listed = listed and token not in self._items
            progress = Progress(self, token if listed else None)
            if listed:
                self._items[token] = progress.as_dict()
        try:
            yield progress
        finally:
            if listed:
                with self._lock:
                    self._items.pop(token, None)

    def get(self, token: str) -> dict | None:
        with self._lock:
            item = self._items.get(token)
            return dict(item) if item else None

    def _set(self, token: str | None, values: dict) -> None:
        if token is not None:
            with self._lock:
                if token in self._items:
                    self._items[token] = values


class Progress:
    """What one upload is doing: "waiting" for a worker, "reading", "segmenting" (tiles done of total), "measuring"."""

    def __init__(self, board: ProgressBoard, token: str | None):
        self.board, self.token = board, token
        self.stage, self.done, self.total = "waiting", 0, 0

    def as_dict(self) -> dict:
        return {"stage": self.stage, "done": self.done, "total": self.total}

    def stage_is(self, stage: str) -> None:
        self.stage = stage
        self.board._set(self.token, self.as_dict())

    def tiles(self, done: int, total: int) -> None:
        """`CrackSegmenter.predict_prob`'s progress callback."""
        self.stage, self.done, self.total = "segmenting", done, total
        self.board._set(self.token, self.as_dict())
