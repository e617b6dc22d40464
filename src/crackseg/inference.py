"""The one inference path: image → (pad | overlapping tiles) → backend → smooth blend → probability map.

`predict`, `evaluate`, `measure`, `serve` and the Python API all call `CrackSegmenter.predict_prob`, so
nothing resizes, normalises or thresholds on its own.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from crackseg.engines.base import sigmoid
from crackseg.engines.torch_engine import TorchBackend
from crackseg.errors import CracksegError, InputError, InputTypeError
from crackseg.io.images import check_pixels, normalize_image, pil_to_rgb, read_image, to_rgb_uint8
from crackseg.models.config import WEIGHTS_SUFFIXES, ModelConfig
from crackseg.options import DEFAULT_MAX_PIXELS, SegmentOptions, check_threshold

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# A network's map is least sure within a few tens of px of a tile's edge, whatever the tile's size, so tiles overlap
# by a number of px, not by a share of themselves: larger tiles then cost less per photo.
OVERLAP_PX = 64


def resize_method(scale: float) -> int:
    """Area averaging to shrink (no aliasing of thin cracks), cubic to enlarge."""
    return cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC


class Cancelled(CracksegError):
    """The caller asked the segmenter to stop (`predict_prob`'s `cancel`)."""


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


class TileProgress:
    """Tells a callback (tiles done, tiles in all) as the batches of one `predict_prob` call finish."""

    def __init__(self, report: Callable[[int, int], None], total: int):
        self.report, self.total, self.done = report, total, 0

    def advance(self, tiles: int) -> None:
        self.done += tiles
        self.report(self.done, self.total)


def resolve_threshold(given: float | None, model_default: float) -> float:
    """The threshold given (checked by the options) or the model's own, which a hand-edited config could spoil."""
    if given is not None:
        return given
    try:
        return check_threshold(float(model_default))
    except ValueError as err:
        raise InputError(f"the model's threshold {model_default}: {err}") from None


@dataclass
class Prediction:
    prob: np.ndarray  # float32 H×W crack probability
    threshold: float
    low_threshold: float | None = None  # hysteresis: weaker pixels count where they touch strong ones

    @property
    def mask(self) -> np.ndarray:
        """The one place probabilities become a crack mask."""
        if self.low_threshold is None:
            return self.prob >= self.threshold
        from skimage.filters import apply_hysteresis_threshold

        # skimage keeps values strictly above each threshold; `>=` as the single threshold does
        below = np.nextafter(np.float32(self.low_threshold), np.float32(0))
        return apply_hysteresis_threshold(self.prob, below, np.nextafter(np.float32(self.threshold), np.float32(0)))


def blend_window(size: int) -> np.ndarray:
    """1-D Hann-like weights of a tile; a small floor keeps image borders (covered by one tile) defined."""
    return np.maximum(np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2, 1e-3).astype(np.float32)


def scaled_region(where: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """A region of an image (H×W bool) on the image resized to `size` (width, height): every pixel whose value the
    resizing back draws on, i.e. the region grown by the reach of cubic interpolation."""
    if where is None or (where.shape[1], where.shape[0]) == size:
        return where
    region = cv2.resize(where.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    return cv2.dilate(region.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def default_overlap(tile: int) -> float:
    """The overlap of tiles when none is asked for: a quarter of the tile, and OVERLAP_PX on tiles over 256 px
    (1/6 at 384)."""
    return min(0.25, OVERLAP_PX / tile)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Evenly spread tile origins covering [0, length) with at least `overlap` shared between neighbours."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def dihedral(turns: int, mirrored: bool):
    """One of the eight turns and mirror images of a square, as (forward, inverse) on arrays whose last two axes are
    rows and columns: tiles (N×C×H×W) forward, their probabilities (N×H×W) back."""

    def forward(array: np.ndarray) -> np.ndarray:
        return np.rot90(np.flip(array, -1) if mirrored else array, turns, axes=(-2, -1))

    def inverse(array: np.ndarray) -> np.ndarray:
        back = np.rot90(array, -turns, axes=(-2, -1))
        return np.flip(back, -1) if mirrored else back

    return forward, inverse


# Test-time augmentation: the four flips (none, horizontal, vertical, both = a half turn) keep a tile's shape and
# orientation class; with the quarter turns too, the eight make the dihedral group of the square, and the mean over
# them is the same for a photo turned by any multiple of 90° (the tile grid of evenly spread tiles turns with it).
FLIPS = [dihedral(0, False), dihedral(0, True), dihedral(2, True), dihedral(2, False)]
TURNS_AND_FLIPS = [dihedral(turns, mirrored) for turns in range(4) for mirrored in (False, True)]

# A stride-32 network's map of a photo depends on where the photo falls on its 32 px lattice, so a survey shifted by
# a few pixels is segmented a little differently; the turns alone meet two positions per axis. With the turns, each
# turn g sees the photo moved by g⁻¹·PHASE_SHIFT px (inside a symmetric margin of SHIFT_MARGIN px): in the network's
# frame the eight passes then meet positions a quarter stride apart along each axis (4, 12, 20, 28 px), at no extra
# work (docs/performance.md has what that gains); and the mean stays equivariant: a photo turned by 90° still gets
# the same map, turned.
PHASE_SHIFT, SHIFT_MARGIN = (4, 12), 16


def shift_under(inverse, shift: tuple[int, int]) -> tuple[int, int]:
    """g⁻¹·shift, for the turn or flip g whose `inverse` acts on arrays: where a point `shift` from the centre of
    a square lands when that square is turned back."""
    side = 2 * max(map(abs, shift)) + 1
    probe = np.zeros((side, side), np.uint8)
    probe[side // 2 + shift[0], side // 2 + shift[1]] = 1
    row, col = np.argwhere(inverse(probe))[0]
    return int(row - side // 2), int(col - side // 2)


TURNS_SHIFTED = [((forward, inverse), shift_under(inverse, PHASE_SHIFT)) for forward, inverse in TURNS_AND_FLIPS]


def is_weights_path(name_or_path: str | os.PathLike | None) -> bool:
    """Whether a model argument names trained weights on disk rather than a shipped model (a Path always does)."""
    return name_or_path is not None and (
        isinstance(name_or_path, os.PathLike)
        or Path(name_or_path).exists()
        or str(name_or_path).endswith(WEIGHTS_SUFFIXES)
    )


class CrackSegmenter:
    """Segment cracks in images of any size with a trained model.

    >>> seg = CrackSegmenter.from_pretrained()          # the shipped default model
    >>> result = seg.predict("photo.jpg")               # path, PIL image or numpy array
    >>> result.mask, result.prob, result.threshold

    One segmenter may be shared by threads: its engine runs one batch of tiles at a time.
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        config: ModelConfig | None = None,
        backend=None,
        options: SegmentOptions | None = None,
        **option_values,
    ):
        """`options` (or its fields as keywords, e.g. tile=448, threshold=0.5) say how; see SegmentOptions."""
        options = options or SegmentOptions()
        self.options = options.replace(**option_values) if option_values else options
        self.config = config or ModelConfig()
        self.model = model  # a network, or the ModelHandle of from_pretrained
        self.backend = backend or TorchBackend(model, self.options.precision, self.options.device)
        self._backend_lock = threading.Lock()
        self.tile = self.options.tile or self.backend.fixed_size or self.config.inference_tile
        self.overlap = default_overlap(self.tile) if self.options.overlap is None else self.options.overlap
        self.batch_size = self.options.batch_size
        self.tta = self.options.tta or self.options.tta_turns
        # One limit when given; by default photos (held whole) and georeferenced rasters (in blocks) differ.
        self.max_pixels, self.max_raster_pixels = self.options.photo_limit, self.options.raster_limit
        self.threshold = resolve_threshold(self.options.threshold, self.config.threshold)
        self.low_threshold = self.options.low_threshold
        if self.low_threshold is not None and self.low_threshold >= self.threshold:
            raise InputError(f"--low-threshold {self.low_threshold}: must lie under the threshold {self.threshold}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        options: SegmentOptions | None = None,
        *,
        calibration_data=None,
        calibration_crops: int | None = None,
        **option_values,
    ) -> CrackSegmenter:
        """The way to get a segmenter: a shipped model by name (default: the default model) or a trained model's
        path, on the engine measured fastest among the accurate ones here (`backend="auto"`, as `crackseg predict`;
        measured once per machine, model and tile, then cached) or the one named.

        `options` (or its fields as keywords: backend, precision, device, tile, overlap, batch_size, threshold,
        max_pixels, tta) say how. `describe()` says which engine runs.
        """
        from crackseg.engines import ModelHandle, build_engine

        options = options or SegmentOptions()
        options = options.replace(**option_values) if option_values else options
        is_path = is_weights_path(name_or_path)
        handle = ModelHandle.find(name_or_path if is_path else None, None if is_path else name_or_path)
        tile = options.tile or handle.config.inference_tile
        engine = build_engine(
            handle,
            tile,
            options.backend,
            options.precision,
            options.device,
            calibration_data,
            calibration_crops,
            batch_size=options.batch_size,
        )
        return cls(handle, handle.config, backend=engine, options=options.replace(tile=tile))

    def with_options(self, **option_values) -> CrackSegmenter:
        """This segmenter with some options changed (e.g. `tta_turns=False`), on the same engine: nothing is loaded
        again, and the two take turns on it."""
        sibling = CrackSegmenter(self.model, self.config, self.backend, self.options.replace(**option_values))
        sibling._backend_lock = self._backend_lock
        return sibling

    def describe(self) -> str:
        flips = (", shifted turn and flip TTA" if self.options.tta_turns else ", flip TTA") if self.tta else ""
        flips += f", scales {','.join(f'{s:g}' for s in self.options.scales)}" if self.options.scales != (1.0,) else ""
        flips += f", hysteresis from {self.low_threshold:g}" if self.low_threshold is not None else ""
        choice = getattr(self.backend, "choice", "")
        engine = f"{self.backend.name} {self.backend.precision}" + (f" ({choice})" if choice else "")
        return f"{engine}, tile {self.tile}, overlap {self.overlap:.3g}{flips}"

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        # One engine call at a time, whichever thread calls: some engines must not be entered by two threads at
        # once, and on a CPU one call already uses every core. Threads predicting together still overlap reading,
        # tiling, blending and measuring; alone, a thread takes the free lock once per batch of tiles.
        with self._backend_lock:
            return self.backend(batch)

    def _run(self, tiles: list[np.ndarray], transforms: list | None = None) -> np.ndarray:
        """Probabilities of a batch of tiles; with `transforms`, the mean over those turns or flips of each tile
        (test-time augmentation). Tiles are square, so fixed-size backends accept every turn."""
        batch = np.stack([normalize_image(t, self.config.mean, self.config.std) for t in tiles])
        if not transforms:
            return sigmoid(self._logits(batch))
        total = np.zeros(batch.shape[:1] + batch.shape[2:], np.float32)
        for forward, inverse in transforms:
            total += inverse(sigmoid(self._logits(np.ascontiguousarray(forward(batch)))))
        return total / len(transforms)

    def _pad_to(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        pad_h, pad_w = height - image.shape[0], width - image.shape[1]
        if pad_h == 0 and pad_w == 0:
            return image
        return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")

    def predict_prob(
        self,
        image: np.ndarray,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
        where: np.ndarray | None = None,
    ) -> np.ndarray:
        """Crack probability (float32, the image's H×W) of an H×W×3 uint8 RGB image.

        With several `scales` in the options, the mean of the maps of the image resized by each factor, brought
        back to its size. `cancel`: when set (by another thread: a client that left, a Cancel), the work stops
        within one batch of tiles with `Cancelled`. `progress(done, total)`: called before the first batch and after
        each with the tiles done and the tiles of the whole call (every scale). `where` (H×W bool): only the tiles
        that overlap it run; the map is then the whole call's inside `where`, 0 elsewhere."""
        height, width = image.shape[:2]
        check_pixels(width, height, self.max_pixels, "image")
        sizes = [(max(round(width * s), 1), max(round(height * s), 1)) for s in self.options.scales]
        wheres = [scaled_region(where, size) for size in sizes]
        counter = None
        if progress:
            tiles = sum(self._tile_count(h, w, part) for (w, h), part in zip(sizes, wheres, strict=True))
            counter = TileProgress(progress, tiles)
            counter.advance(0)  # the total, before the first batch
        if self.options.scales == (1.0,):
            total = self._predict_one_scale(image, cancel, counter, wheres[0])
        else:
            total = np.zeros((height, width), np.float32)
            for scale, size, part in zip(self.options.scales, sizes, wheres, strict=True):
                resized = image if scale == 1 else cv2.resize(image, size, interpolation=resize_method(scale))
                prob = self._predict_one_scale(resized, cancel, counter, part)
                back = resize_method(1 / scale)
                total += prob if scale == 1 else cv2.resize(prob, (width, height), interpolation=back)
            total /= len(self.options.scales)
        if where is not None:
            total[~where] = 0.0
        return total

    def _single_pass(self, height: int, width: int) -> bool:
        return height <= self.tile and width <= self.tile and self.backend.fixed_size is None

    def _tile_count(self, height: int, width: int, where: np.ndarray | None = None) -> int:
        if not self.options.tta_turns:
            return self._grid_count(height, width, where, self._single_pass(height, width))
        single = self._single_pass(height, width)
        return sum(
            self._grid_count(*self._shifted(height, width, where, shift)[1:], single) for _, shift in TURNS_SHIFTED
        )

    def _grid_count(self, height: int, width: int, where: np.ndarray | None, single: bool) -> int:
        if single:
            return 1
        return len(self._origins(max(height, self.tile), max(width, self.tile), where))

    @staticmethod
    def _shifted(height: int, width: int, where: np.ndarray | None, shift: tuple[int, int]):
        """The padding that moves a photo by `shift` inside the margin, the padded size, and `where` padded."""
        (dy, dx), margin = shift, SHIFT_MARGIN
        pads = ((margin + dy, margin - dy), (margin + dx, margin - dx))
        part = None if where is None else np.pad(where, pads)
        return pads, height + 2 * margin, width + 2 * margin, part

    def _origins(self, height: int, width: int, where: np.ndarray | None = None) -> list[tuple[int, int]]:
        """The tiles' top-left corners on an image at least a tile high and wide; with `where`, only the tiles that
        overlap it (every tile covering a pixel of `where` is one of them, so the blend there is the whole grid's)."""
        tile = self.tile
        ys, xs = tile_starts(height, tile, self.overlap), tile_starts(width, tile, self.overlap)
        if where is None:
            return [(y, x) for y in ys for x in xs]
        return [(y, x) for y in ys for x in xs if where[y : y + tile, x : x + tile].any()]

    def _predict_one_scale(
        self,
        image: np.ndarray,
        cancel: threading.Event | None,
        counter: TileProgress | None = None,
        where: np.ndarray | None = None,
    ) -> np.ndarray:
        height, width = image.shape[:2]
        single = self._single_pass(height, width)
        if not self.options.tta_turns:
            return self._one_grid(image, cancel, counter, where, FLIPS if self.tta else None, single)
        total = np.zeros((height, width), np.float32)
        # One mirrored margin wide enough for every turn's shift, each turn's photo a window of it (a mirrored
        # margin's inner rows are those of any narrower one): the photo is copied once, not once per turn.
        wide = 2 * SHIFT_MARGIN
        mirrored = np.pad(image, ((wide, wide), (wide, wide), (0, 0)), mode="symmetric")
        for transform, shift in TURNS_SHIFTED:  # each turn sees the photo moved by its own shift (PHASE_SHIFT)
            pads, moved_height, moved_width, part = self._shifted(height, width, where, shift)
            top, left = wide - pads[0][0], wide - pads[1][0]
            moved = mirrored[top : top + moved_height, left : left + moved_width]
            prob = self._one_grid(moved, cancel, counter, part, [transform], single)
            total += prob[pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width]
        return total / len(TURNS_SHIFTED)

    def _one_grid(self, image, cancel, counter, where, transforms, single: bool) -> np.ndarray:
        """The map of `image` on one grid of tiles (`single`: in one pass), each tile under `transforms`."""
        height, width = image.shape[:2]
        check_cancel(cancel)
        tile = self.tile
        if single:
            prob = self._run([image], transforms)[0]  # one pass; the network pads to its stride itself
            if counter:
                counter.advance(1)
            return prob
        padded = self._pad_to(image, max(height, tile), max(width, tile))
        if where is not None:
            where = np.pad(where, ((0, padded.shape[0] - height), (0, padded.shape[1] - width)))
        return self._tiled(padded, tile, cancel, counter, where, transforms)[:height, :width]

    def _tiled(
        self,
        image: np.ndarray,
        tile: int,
        cancel: threading.Event | None = None,
        counter: TileProgress | None = None,
        where: np.ndarray | None = None,
        transforms: list | None = None,
    ) -> np.ndarray:
        height, width = image.shape[:2]
        ys, xs = tile_starts(height, tile, self.overlap), tile_starts(width, tile, self.overlap)
        window = blend_window(tile)
        # The window is separable and the tiles form a grid, so the weight sum is an outer product of 1-D sums:
        # only the weighted probabilities need a full-size buffer.
        row_weight, col_weight = np.zeros(height, np.float32), np.zeros(width, np.float32)
        for y in ys:
            row_weight[y : y + tile] += window
        for x in xs:
            col_weight[x : x + tile] += window
        out = np.zeros((height, width), np.float32)
        origins = self._origins(height, width, where)
        weight2d = np.outer(window, window)
        for i in range(0, len(origins), self.batch_size):
            check_cancel(cancel)
            chunk = origins[i : i + self.batch_size]
            probs = self._run([image[y : y + tile, x : x + tile] for y, x in chunk], transforms)
            for (y, x), prob in zip(chunk, probs):
                prob *= weight2d  # in place: no tile-sized temporary per tile
                out[y : y + tile, x : x + tile] += prob
            if counter:
                counter.advance(len(chunk))
        if not origins:
            return out
        # Only the tiles' span holds probabilities (with `where`, often a small part of a large photo).
        rows = slice(min(y for y, _ in origins), max(y for y, _ in origins) + tile)
        cols = slice(min(x for _, x in origins), max(x for _, x in origins) + tile)
        span = out[rows, cols]
        span /= row_weight[rows, None]
        span /= col_weight[None, cols]
        np.clip(span, 0.0, 1.0, out=span)
        return out

    def predict(self, image, threshold: float | None = None) -> Prediction:
        """Predict one image: a path, a PIL image, or a numpy array (grayscale/RGB/RGBA, uint8/uint16)."""
        threshold = self.threshold if threshold is None else SegmentOptions.make(threshold=threshold).threshold
        low = self.low_threshold if self.low_threshold is not None and self.low_threshold < threshold else None
        return Prediction(self.predict_prob(as_rgb(image, self.max_pixels)), threshold, low)

    def predict_raster(self, src, block: int) -> Iterator[tuple[int, int, Prediction, np.ndarray]]:
        """Segment an open raster (rasterio) block by block: (row, col, prediction of the block, its valid-data
        mask) in raster order (`predict_block`). Memory: one block and its margin."""
        from crackseg.io.rasters import blocks

        check_pixels(src.width, src.height, self.max_raster_pixels, str(src.name))
        for row, col, height, width in blocks(src.height, src.width, block):
            yield row, col, *self.predict_block(src, row, col, height, width)

    def predict_block(self, src, row: int, col: int, height: int, width: int) -> tuple[Prediction, np.ndarray]:
        """One block of an open raster (rasterio): its prediction and its valid-data mask.

        The block is read with a margin of one tile, so the tiles at its edge see the same context as inside, and
        cropped back; pixels outside the raster's valid data get probability 0. A block depends on nothing but the
        raster, so blocks may be segmented in any order, or by other processes (`runs.cluster`).
        """
        from crackseg.io.rasters import read_rgb

        margin = self.tile
        top, left = max(0, row - margin), max(0, col - margin)
        bottom, right = min(src.height, row + height + margin), min(src.width, col + width + margin)
        image, valid = read_rgb(src, top, left, bottom - top, right - left)
        inner = (slice(row - top, row - top + height), slice(col - left, col - left + width))
        prob = np.where(valid, self.predict_prob(image), 0.0).astype(np.float32)[inner]
        return Prediction(prob, self.threshold, self.low_threshold), valid[inner]

    def predict_batch(self, images, threshold: float | None = None) -> list[Prediction]:
        return [self.predict(image, threshold) for image in images]


def as_rgb(image, max_pixels: float = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image given as a path, a PIL image or an array, as H×W×3 uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels)
    if isinstance(image, Image.Image):
        check_pixels(*image.size, max_pixels, "image")
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        return to_rgb_uint8(np.asarray(image))
    raise InputTypeError(
        f"cannot segment a {type(image).__name__}: pass a file path, a PIL image or a numpy array "
        "(H×W, H×W×3 or H×W×4; uint8, uint16 or float)"
    )


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.6) -> np.ndarray:
    """The photo with crack pixels blended towards `color`."""
    out = image.copy()
    out[mask] = (out[mask] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)
    return out
