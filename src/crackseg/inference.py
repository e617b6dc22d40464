"""The one inference path: image → (pad | overlapping tiles) → backend → smooth blend → probability map.

`predict`, `evaluate`, `measure`, `serve` and the Python API all call `CrackSegmenter.predict_prob`, so
nothing resizes, normalises or thresholds on its own.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from crackseg.engines.base import sigmoid
from crackseg.engines.torch_engine import TorchBackend
from crackseg.errors import InputError, InputTypeError
from crackseg.io.images import check_pixels, normalize_image, pil_to_rgb, read_image, to_rgb_uint8
from crackseg.model_config import ModelConfig
from crackseg.options import DEFAULT_MAX_PIXELS, DEFAULT_MAX_RASTER_PIXELS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


TILE_MULTIPLE = 32  # the largest stride of any encoder depth: every network pads and crops exactly at this size


def check_tile(tile: int) -> int:
    if tile < TILE_MULTIPLE or tile % TILE_MULTIPLE:
        raise InputError(f"tile {tile}: must be a multiple of {TILE_MULTIPLE} of at least {TILE_MULTIPLE}, e.g. 448")
    return tile


def check_threshold(threshold: float) -> float:
    if not 0 < threshold < 1:  # also refuses NaN
        raise InputError(f"threshold {threshold}: must lie strictly between 0 and 1, e.g. 0.5")
    return threshold


@dataclass
class Prediction:
    prob: np.ndarray  # float32 H×W crack probability
    threshold: float

    @property
    def mask(self) -> np.ndarray:
        return self.prob >= self.threshold


def blend_window(size: int) -> np.ndarray:
    """1-D Hann-like weights of a tile; a small floor keeps image borders (covered by one tile) defined."""
    return np.maximum(np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2, 1e-3).astype(np.float32)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Evenly spread tile origins covering [0, length) with at least `overlap` shared between neighbours."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


FLIP_AXES = [(), (3,), (2,), (2, 3)]  # N×C×H×W: none, horizontal, vertical, both


def is_weights_path(name_or_path: str | os.PathLike | None) -> bool:
    """Whether a model argument names trained weights on disk rather than a shipped model (a Path always does)."""
    return name_or_path is not None and (
        isinstance(name_or_path, os.PathLike)
        or Path(name_or_path).exists()
        or str(name_or_path).endswith((".safetensors", ".pth", ".pt"))
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
        model: torch.nn.Module,
        config: ModelConfig | None = None,
        backend=None,
        tile: int | None = None,
        overlap: float = 0.25,
        batch_size: int = 4,
        threshold: float | None = None,
        max_pixels: int | None = None,
        precision: str = "auto",
        device: str = "cpu",
        tta: bool = False,
    ):
        self.config = config or ModelConfig()
        self.model = model  # a network, or the ModelHandle of from_pretrained
        self.backend = backend or TorchBackend(model, precision, device)
        self._backend_lock = threading.Lock()
        self.tile = check_tile(int(tile if tile is not None else self.backend.fixed_size or self.config.train_size))
        if not 0 <= overlap < 1:
            raise InputError(f"overlap must be in [0, 1), got {overlap}")
        if int(batch_size) < 1:
            raise InputError(f"batch_size {batch_size}: must be at least 1")
        self.overlap, self.batch_size = overlap, batch_size
        # One limit when given; by default photos (held whole) and georeferenced rasters (in blocks) differ.
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        self.max_raster_pixels = DEFAULT_MAX_RASTER_PIXELS if max_pixels is None else max_pixels
        self.tta = tta
        self.threshold = check_threshold(float(self.config.threshold if threshold is None else threshold))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        backend: str = "auto",
        precision: str = "auto",
        device: str = "cpu",
        tile: int | None = None,
        calibration_data=None,
        calibration_crops: int | None = None,
        **kwargs,
    ) -> CrackSegmenter:
        """The way to get a segmenter: a shipped model by name (default: the default model) or a trained model's
        path, on the fastest accurate engine here (`backend="auto"`, as `crackseg predict`) or the one named.

        `kwargs`: overlap, batch_size, threshold, max_pixels, tta. `describe()` says which engine runs.
        """
        from crackseg.engines import ModelHandle, build_engine

        is_path = is_weights_path(name_or_path)
        handle = ModelHandle.find(name_or_path if is_path else None, None if is_path else name_or_path)
        tile = check_tile(int(tile if tile is not None else handle.config.train_size))
        engine = build_engine(handle, tile, backend, precision, device, calibration_data, calibration_crops)
        return cls(handle, handle.config, backend=engine, tile=tile, **kwargs)

    def describe(self) -> str:
        flips = ", flip TTA" if self.tta else ""
        choice = getattr(self.backend, "choice", "")
        engine = f"{self.backend.name} {self.backend.precision}" + (f" ({choice})" if choice else "")
        return f"{engine}, tile {self.tile}, overlap {self.overlap}{flips}"

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        # One engine call at a time, whichever thread calls: some engines must not be entered by two threads at
        # once, and on a CPU one call already uses every core. Threads predicting together still overlap reading,
        # tiling, blending and measuring; alone, a thread takes the free lock once per batch of tiles.
        with self._backend_lock:
            return self.backend(batch)

    def _run(self, tiles: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([normalize_image(t, self.config.mean, self.config.std) for t in tiles])
        if not self.tta:
            return sigmoid(self._logits(batch))
        # Test-time augmentation: the mean probability over the four flips of each tile (4× the work). Flips keep
        # a tile's shape, so fixed-size backends accept them too.
        total = np.zeros(batch.shape[:1] + batch.shape[2:], np.float32)
        for axes in FLIP_AXES:
            prob = sigmoid(self._logits(np.ascontiguousarray(np.flip(batch, axes))))
            total += np.flip(prob, tuple(a - 1 for a in axes))  # the probabilities have no channel axis
        return total / len(FLIP_AXES)

    def _pad_to(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        pad_h, pad_w = height - image.shape[0], width - image.shape[1]
        if pad_h == 0 and pad_w == 0:
            return image
        return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        """Crack probability (float32, the image's H×W) of an H×W×3 uint8 RGB image."""
        height, width = image.shape[:2]
        check_pixels(width, height, self.max_pixels, "image")
        tile = self.tile
        if height <= tile and width <= tile and self.backend.fixed_size is None:
            return self._run([image])[0]  # one pass; the network pads to its stride itself
        padded = self._pad_to(image, max(height, tile), max(width, tile))
        return self._tiled(padded, tile)[:height, :width]

    def _tiled(self, image: np.ndarray, tile: int) -> np.ndarray:
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
        origins = [(y, x) for y in ys for x in xs]
        weight2d = np.outer(window, window)
        for i in range(0, len(origins), self.batch_size):
            chunk = origins[i : i + self.batch_size]
            probs = self._run([image[y : y + tile, x : x + tile] for y, x in chunk])
            for (y, x), prob in zip(chunk, probs):
                prob *= weight2d  # in place: no tile-sized temporary per tile
                out[y : y + tile, x : x + tile] += prob
        out /= row_weight[:, None]
        out /= col_weight[None, :]
        return np.clip(out, 0.0, 1.0, out=out)

    def predict(self, image, threshold: float | None = None) -> Prediction:
        """Predict one image: a path, a PIL image, or a numpy array (grayscale/RGB/RGBA, uint8/uint16)."""
        threshold = self.threshold if threshold is None else check_threshold(float(threshold))
        return Prediction(self.predict_prob(as_rgb(image, self.max_pixels)), threshold)

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


# --- many files: the engine behind `crackseg predict` -------------------------------------------------------


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, root it was found under) for files, folders (recursive, images only) and glob patterns."""
    import glob

    from crackseg.io.images import is_image_file

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in sorted(path.rglob("*")) if p.is_file() and is_image_file(p)]
        elif path.is_file():
            found.append((path, path.parent))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"{item}: no such file, folder or matching pattern")
            found += [(m, m.parent) for m in matches if m.is_file()]
    unique = {p.resolve(): (p, root) for p, root in found}
    return list(unique.values())


def shard(items: list, spec: str | None) -> list:
    """The i-th of n deterministic slices ("i/n", 0-based) of a list."""
    if not spec:
        return items
    try:
        index, count = (int(v) for v in spec.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise InputError(f"--shard {spec!r}: expected i/n with 0 ≤ i < n, e.g. 0/4") from None
    return items[index::count]


PREDICT_OUTPUTS = {"mask": ".png", "prob": "_prob.png", "overlay": "_overlay.jpg"}


def check_output_folder(inputs: list[str], files: list[tuple[Path, Path]], out_dir: Path) -> None:
    """Refuse an output folder that holds input photos or lies inside a searched input folder: outputs there
    could replace photos, and a second run would read the first run's masks as photos."""
    out = out_dir.resolve()
    searched = [Path(item).resolve() for item in inputs if Path(item).is_dir()]
    folders = {path.parent.resolve() for path, _ in files}
    clash = next((f for f in searched if out == f or f in out.parents), None) or (out if out in folders else None)
    if clash is not None:
        raise InputError(
            f"-o {out_dir}: {'is' if clash == out else 'lies inside'} the input folder {clash}; outputs there would "
            f"mix with the photos (and could replace them): choose another folder, e.g. -o {clash}_cracks"
        )


def output_paths(files: list[tuple[Path, Path]], out_dir: Path, suffixes: dict[str, str]) -> dict[Path, dict]:
    """For each input, the path of each output kind (`suffixes`: kind → what follows the name): unique in the run.

    Names follow the input's name (OUT/NAME.png, OUT/NAME_prob.png, ...), with its folder relative to the searched
    root when two inputs share a name, and its extension (OUT/003_jpg.png) when two outputs would still coincide
    (003.jpg and 003.png; site.jpg's probabilities and the mask of an input named site_prob.png).
    """
    from collections import Counter

    names = Counter(p.stem for p, _ in files)
    roots = {r for _, r in files}
    stems = {}
    for path, root in files:
        relative = path.relative_to(root) if names[path.stem] > 1 else Path(path.name)
        if names[path.stem] > 1 and len(roots) > 1:
            relative = Path(root.name) / relative
        stems[path] = out_dir / relative.with_suffix("")

    def outputs(stem: Path) -> dict[str, Path]:
        return {kind: stem.with_name(stem.name + suffix) for kind, suffix in suffixes.items()}

    counts = Counter(q for stem in stems.values() for q in outputs(stem).values())
    for path, stem in stems.items():
        if any(counts[q] > 1 for q in outputs(stem).values()):
            stems[path] = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower()}")
    paths = {path: outputs(stem) for path, stem in stems.items()}
    everything = [q.resolve() for outs in paths.values() for q in outs.values()]
    inputs = {p.resolve() for p, _ in files}
    clash = next((q for q in everything if q in inputs), None)
    if clash is not None or len(set(everything)) < len(everything):
        raise InputError(
            f"{clash or Counter(everything).most_common(1)[0][0]}: two outputs (or an output and an input) would "
            "share this name; rename the inputs or choose another -o"
        )
    return paths


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.6) -> np.ndarray:
    """The photo with crack pixels blended towards `color`."""
    out = image.copy()
    out[mask] = (out[mask] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)
    return out


def plan_predict(
    inputs: list[str],
    out_dir: str | Path,
    write_prob: bool = False,
    write_overlay: bool = False,
    shard_spec: str | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    max_pixels: float = DEFAULT_MAX_PIXELS,
) -> list[tuple[Path, dict[str, Path], bool]]:
    """What `predict_files` will write, checked before any model loads or photo is read: (input, kind → output
    path, whether it is segmented block by block: `rasters.in_blocks`) for each input of this shard.

    Refuses an output folder among the inputs, makes it, and refuses to replace a file an earlier run left there
    unless `overwrite`; with `skip_existing`, inputs whose mask is there are skipped instead, and an input without
    its mask is done again, replacing what an interrupted run left of it (its mask is written last). Names are
    made over all the inputs, not just this shard's, so that shards never write the same file.
    """
    from crackseg.io.atomic import check_outputs_free, ensure_output_folder
    from crackseg.io.georef import read_tiff_header
    from crackseg.io.rasters import in_blocks

    out_dir = Path(out_dir)
    everything = collect_inputs(inputs)
    check_output_folder(inputs, everything, out_dir)
    wanted = {"mask", "prob" if write_prob else "", "overlay" if write_overlay else ""}
    paths = output_paths(everything, out_dir, {k: v for k, v in PREDICT_OUTPUTS.items() if k in wanted})
    plan = []
    for path, _ in shard(everything, shard_spec):
        raster = in_blocks(read_tiff_header(path), max_pixels)  # GeoTIFF outputs, on the input's grid
        outputs = paths[path]
        if raster:
            outputs = {kind: q.with_suffix(".tif") for kind, q in outputs.items() if kind != "overlay"}
        plan.append((path, outputs, raster))
    ensure_output_folder(out_dir)
    if not skip_existing:
        keep = ", --skip-existing to keep the inputs done already"
        check_outputs_free(out_dir, [q for _, outs, _ in plan for q in outs.values()], overwrite, keep=keep)
    return plan


def predict_files(
    segmenter: CrackSegmenter,
    inputs: list[str],
    out_dir: str | Path,
    write_prob: bool = False,
    write_overlay: bool = False,
    shard_spec: str | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[int, list[str]]:
    """Segment every input and write masks (and optionally probabilities, overlays); returns (written, failures).

    A georeferenced TIFF (an orthomosaic), or any TIFF over the photo limit, is segmented block by block into
    GeoTIFFs on its own grid and CRS,
    NAME.tif and NAME_prob.tif (no overlay: it would be as large as the photo). A failing file is reported and
    skipped; the rest are still processed. Files already in `out_dir` are replaced only with `overwrite`
    (`OutputExistsError` before anything is read otherwise); `skip_existing` skips the inputs whose mask is there.
    """
    from tqdm import tqdm

    from crackseg.io.images import ImageReadError, write_image
    from crackseg.io.rasters import segment_raster

    plan = plan_predict(
        inputs, out_dir, write_prob, write_overlay, shard_spec, skip_existing, overwrite, segmenter.max_pixels
    )
    written, failures = 0, []
    for path, outputs, raster in tqdm(plan, desc="predict", unit="img", disable=not progress):
        if skip_existing and outputs["mask"].exists():
            continue
        try:
            if raster:
                segment_raster(segmenter, path, outputs["mask"], outputs.get("prob"))
                written += 1
                continue
            image = read_image(path, segmenter.max_pixels)
            result = segmenter.predict(image)
        except (ImageReadError, ValueError, MemoryError) as err:
            failures.append(f"{path}: {err}" if str(path) not in str(err) else str(err))
            continue
        mask = result.mask
        if write_prob:
            write_image(outputs["prob"], np.round(result.prob * 255).astype(np.uint8))
        if write_overlay:
            write_image(outputs["overlay"], overlay(image, mask))
        write_image(outputs["mask"], mask.view(np.uint8) * 255)  # last: its presence means the input is done
        written += 1
    return written, failures
