"""A mask's cracks from its blocks' statistics, and the entry points `measure` and `measure_blocks`.

- Width: from the exact Euclidean distance transform d (centre of a crack pixel to the centre of the nearest
  background pixel). Across a band w pixels wide, d at the centre is (w + 1)/2 for odd w, so the local width
  is 2·d − 1 px (a 1-px crack has d = 1). On oblique cracks 2·d − 1 is off by up to about 1.5 px, mostly too
  narrow (the skeleton sits up to half a pixel off the centre line, and the nearest background pixel is
  seldom straight across), so each crack's widths get one shift that makes ∫ width ds along the skeleton
  equal to the crack's pixel area, which pixel counting gives without that bias; then each is averaged
  with a few skeleton neighbours. On generated straight bands 1–20 px wide at every angle (3° steps,
  random sub-pixel placement), the median width came within −0.25 … +0.5 px of the digitised band's width
  (its area / length) and the length within −2.4 … +1 %; on circular arcs within ±0.5 %. Even widths read
  as well as odd ones (2·d − 1 alone gives w − 1 for them).
- Resolution: a crack whose median width is under 2 px is `below_resolution`: thinner than the photo resolves,
  so its mm widths are upper bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from crackseg.errors import InputError
from crackseg.measure.blocks import (
    AREA,
    COVERED,
    DEFAULT_HALO,
    DEFAULT_MIN_LENGTH,
    EDGES,
    HALO_MARGIN_PX,
    JUNCTIONS,
    LENGTH,
    MOMENTS,
    N_SUMS,
    NO_PIXEL,
    NODES,
    TIPS,
    BlockStatistics,
    axis_angles,
    block_statistics,
    seam_pairs,
)
from crackseg.measure.classes import (
    UNKNOWN_WIDTH_CLASS,
    WIDTH_CLASS_PRESETS,
    WidthClasses,
    classify,
    crack_pattern,
    load_width_classes,
    orientation_class,
)
from crackseg.measure.result import Crack, Measurement, add_millimetres
from crackseg.measure.skeleton import blob_line
from crackseg.options import MeasureOptions

MOSTLY_CRACK = 0.5  # a mask with more crack than this is almost surely not a crack mask: warn
BELOW_RESOLUTION_PX = 2.0  # a median width under this is not resolved: its mm widths are upper bounds


def as_mask(mask) -> np.ndarray:
    """A bool H×W crack mask from a bool, integer (non-zero = crack) or probability (> 0.5) array."""
    a = np.asarray(mask)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[:, :, :3].max(axis=2)
    if a.ndim != 2:
        raise InputError(f"expected a 2-D mask, got an array of shape {a.shape}")
    if a.dtype == bool:
        return a
    return a > (0.5 if a.dtype.kind == "f" else 0)


def width_shift(area: np.ndarray, length: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Per crack, the shift of its local widths 2·d − 1 that makes ∫ width ds along its skeleton equal its pixel area.

    `covered`: ∫ (2·d − 1) ds, the sum of node length × (2·d − 1) over its skeleton nodes; `length`: its length.
    """
    return np.divide(area - covered, length, out=np.zeros(len(area)), where=length > 0)


def new_crack(
    crack_id: int,
    total: np.ndarray,
    widths: np.ndarray,
    box: np.ndarray,
    orientation: float,
    pixel_size_mm: float | None,
    direction_deg: float,
    classes: WidthClasses,
) -> Crack:
    """A crack from its sums (a row of N_SUMS columns), its skeleton's local widths (px), its bounding box (first row,
    first col, last row + 1, last col + 1) and its axis (degrees)."""
    # A crack is no wider than its bounding box (the area-matching shift could say so on a blob-like mask).
    widths = np.minimum(widths, min(box[2] - box[0], box[3] - box[1]))
    tips, loops = total[TIPS], total[EDGES] - total[NODES] + 1  # loops: edges − nodes + 1 of a connected skeleton
    branched = bool(tips >= 3 or loops > 0)
    crack = Crack(
        id=crack_id,
        crack_class=classify(orientation, branched, direction_deg),
        length_px=round(float(total[LENGTH]), 2),
        width_mean_px=round(float(widths.mean()), 2),
        width_median_px=round(float(np.median(widths)), 2),
        width_max_px=round(float(widths.max()), 2),
        width_p95_px=round(float(np.percentile(widths, 95)), 2),
        area_px=int(total[AREA]),
        bbox=(int(box[1]), int(box[0]), int(box[3] - box[1]), int(box[2] - box[0])),
        orientation_deg=round(float(orientation), 1),
        branch_points=int(total[JUNCTIONS]),
        endpoints=int(tips),
        orientation_class=orientation_class(orientation, direction_deg),
        branched=branched,
        width_class=UNKNOWN_WIDTH_CLASS,
        below_resolution=bool(np.median(widths) < BELOW_RESOLUTION_PX),
    )
    crack.pattern = crack_pattern(int(loops), float((box[2] - box[0]) * (box[3] - box[1])), pixel_size_mm)
    if pixel_size_mm:
        add_millimetres(crack, pixel_size_mm)
        crack.width_class = classes.classify(crack.width_p95_mm)
    return crack


def aggregate(
    blocks: list[BlockStatistics],
    shape: tuple[int, int],
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
    direction_deg: float = 90.0,
    classes: WidthClasses = WIDTH_CLASS_PRESETS["concrete"],
) -> Measurement:
    """The measurement of a mask from its blocks' statistics: components that touch across seams are one crack (a
    union-find over the blocks' labels); its sums add up; then each crack is kept, measured and classed."""
    height, width = shape
    result = Measurement(height, width, pixel_size_mm, float(min_length), classes)
    crack_pixels = sum(b.crack_pixels for b in blocks)
    if crack_pixels > MOSTLY_CRACK * height * width:
        result.warnings.append(
            f"{crack_pixels / (height * width):.0%} of the mask is crack: this is unlikely to be a crack mask "
            "(inverted, or a photo?); its widths are bounded by the image, not measured"
        )
    result.dropped = sum(b.dropped for b in blocks)
    offsets = np.cumsum([0] + [len(b.sums) - 1 for b in blocks])  # block k's label l → offsets[k] + l
    sums = np.concatenate([np.zeros((1, N_SUMS))] + [b.sums[1:] for b in blocks])
    first = np.concatenate([[NO_PIXEL]] + [b.first[1:] for b in blocks])
    box = np.concatenate([np.zeros((1, 4), np.int64)] + [b.box[1:] for b in blocks])
    pairs = seam_pairs(blocks, offsets, width)
    joined = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(len(sums), len(sums)))
    n, component = connected_components(joined, directed=False)
    # Cracks numbered by their first pixel in raster order, as `label` numbers components; the background goes last.
    component_first = np.full(n, NO_PIXEL)
    np.minimum.at(component_first, component, first)
    rank = np.empty(n, np.int64)
    rank[np.argsort(component_first, kind="stable")] = np.arange(n)
    crack_of = rank[component]  # global label → crack index (n − 1: the background)
    total = np.column_stack([np.bincount(crack_of, weights=sums[:, k], minlength=n) for k in range(N_SUMS)])
    lo, hi = np.full((n, 2), NO_PIXEL), np.zeros((n, 2), np.int64)
    np.minimum.at(lo, crack_of, box[:, :2])
    np.maximum.at(hi, crack_of, box[:, 2:])
    orientation = axis_angles(total[:, MOMENTS])

    node_crack = np.concatenate(
        [np.zeros(0, np.int64)] + [crack_of[o + b.node_label] for o, b in zip(offsets[:-1], blocks, strict=True)]
    )
    shift = width_shift(total[:, AREA], total[:, LENGTH], total[:, COVERED])
    local_width = np.concatenate([np.zeros(0)] + [b.node_width for b in blocks])
    node_width = np.maximum(local_width + shift[node_crack], 1.0)
    order = np.argsort(node_crack, kind="stable")
    start = np.searchsorted(node_crack[order], np.arange(n + 1))
    crack_id = np.zeros(n, np.int32)  # crack index → kept crack id (0: dropped, and the background)
    for k in range(n - 1):
        if total[k, LENGTH] < min_length or start[k] == start[k + 1]:  # (a crack always has a skeleton pixel)
            result.dropped += 1
            continue
        widths = node_width[order[start[k] : start[k + 1]]]
        crack_box = np.concatenate([lo[k], hi[k]])
        crack = new_crack(
            result.count + 1, total[k], widths, crack_box, orientation[k], pixel_size_mm, direction_deg, classes
        )
        result.cracks.append(crack)
        crack_id[k] = crack.id

    kept = crack_id[node_crack] > 0
    result.skeleton_rows = np.concatenate([np.zeros(0, np.int32)] + [b.node_rows for b in blocks])[kept]
    result.skeleton_cols = np.concatenate([np.zeros(0, np.int32)] + [b.node_cols for b in blocks])[kept]
    result.skeleton_width_px = node_width[kept].astype(np.float32)
    result.skeleton_local_width_px = local_width[kept].astype(np.float32)
    result.skeleton_id = crack_id[node_crack[kept]]
    result.centrelines = centrelines(blocks, offsets, crack_of, crack_id, orientation, result.count)
    return result


def centrelines(
    blocks: list[BlockStatistics],
    offsets: np.ndarray,
    crack_of: np.ndarray,
    crack_id: np.ndarray,
    orientation: np.ndarray,
    count: int,
) -> list[list[np.ndarray]]:
    """Each kept crack's lines: its blocks' pieces, merged where they meet at a seam (a crack in one block is left as
    traced), and the segment of a crack whose skeleton is one pixel."""
    out = [[] for _ in range(count)]
    spans = np.zeros(count + 1, np.int64)  # blocks each crack has lines in
    for offset, stats in zip(offsets[:-1], blocks, strict=True):
        line_crack = crack_of[offset + stats.line_label]
        for line, i in zip(stats.lines, crack_id[line_crack].tolist(), strict=True):
            if i:
                out[i - 1].append(line)
        blob_crack = crack_of[offset + stats.blob_label]
        for (x, y, d), k, i in zip(stats.blobs.tolist(), blob_crack, crack_id[blob_crack].tolist(), strict=True):
            if i:
                out[i - 1].append(blob_line(x, y, d, orientation[k]))
        spans[np.unique(crack_id[np.concatenate([line_crack, blob_crack])])] += 1
    for i in np.flatnonzero(spans[1:] > 1).tolist():
        merged = shapely.line_merge(shapely.MultiLineString(out[i]))
        out[i] = [shapely.get_coordinates(part) for part in shapely.get_parts(merged)]
    return out


@dataclass(frozen=True)
class BlockWindow:
    """One block of a mask's grid: the window read (its core and the halo around it) and the core inside it."""

    top: int
    left: int
    height: int
    width: int
    core: tuple[int, int, int, int]  # row, col, height, width of the block in the window


def block_windows(shape: tuple[int, int], block: int | None, halo: int = DEFAULT_HALO) -> list[BlockWindow]:
    """The windows `measure_blocks` reads, in raster order: blocks of `block` px a side (None: the whole mask),
    each with `halo` px of context on every side where the mask goes on (none for a single block)."""
    from crackseg.io.rasters import blocks as block_grid

    height, width = shape
    grid = [(0, 0, height, width)] if block is None else list(block_grid(height, width, block))
    halo = 0 if len(grid) == 1 else halo
    windows = []
    for row, col, h, w in grid:
        top, left = max(row - halo, 0), max(col - halo, 0)
        bottom, right = min(row + h + halo, height), min(col + w + halo, width)
        windows.append(BlockWindow(top, left, bottom - top, right - left, (row - top, col - left, h, w)))
    return windows


def window_statistics(read, window: BlockWindow, shape: tuple[int, int], options: MeasureOptions) -> BlockStatistics:
    """What one block adds to the mask's measurement (`blocks.block_statistics`), its window read by
    `read(row, col, height, width)`. A block depends on nothing but the mask, so blocks may be measured in any
    order, or by other processes (`runs.cluster`)."""
    mask = as_mask(read(window.top, window.left, window.height, window.width))
    origin = (window.top, window.left)
    return block_statistics(mask, window.core, origin, shape, options.hole_area, options.min_length)


def join_blocks(stats: list[BlockStatistics], shape: tuple[int, int], options: MeasureOptions, halo: int):
    """The mask's measurement from its blocks' statistics, in the order of `block_windows`; says when a crack is
    wider than the halo measures across seams."""
    classes = load_width_classes(options.width_classes)
    result = aggregate(stats, shape, options.pixel_size_mm, options.min_length, options.direction_deg, classes)
    widest, supported = max((b.widest_px for b in stats), default=0.0), (halo - HALO_MARGIN_PX) / 2
    if len(stats) > 1 and widest > supported:
        result.warnings.append(
            f"a crack is {widest:.0f} px wide, but a halo of {halo} px measures cracks across block seams as on the "
            f"whole mask only up to {supported:.0f} px wide: where it crosses a seam its length and widths may be off"
        )
    return result


def measure_blocks(
    read,
    shape: tuple[int, int],
    options: MeasureOptions | None = None,
    block: int | None = None,
    halo: int = DEFAULT_HALO,
    progress: bool = False,
    **option_values,
) -> Measurement:
    """Measure a mask block by block, holding one block (and its halo) at a time: the cracks `measure` finds on the
    whole mask (see the notes above blocks.SEAM_WIDTH_PX for what the halo must cover).

    `read(row, col, height, width)`: that window of the mask, as anything `as_mask` takes; `shape`: the mask's
    height and width; `block`: the side of a block in px (None: the whole mask at once); `halo`: px of context read
    on each side. Memory: one window, plus per crack its sums and skeleton pixels (its widths and place, for the
    figure) and lines. `options` (or its fields as keywords) are `measure`'s.
    """
    from tqdm import tqdm

    options = MeasureOptions.of(options, **option_values)
    options = options.replace(width_classes=load_width_classes(options.width_classes))  # checked before any work
    windows = block_windows(shape, block, halo)
    bar = tqdm(windows, desc="blocks", unit="block", disable=not progress, leave=False)
    return join_blocks([window_statistics(read, w, shape, options) for w in bar], shape, options, halo)


def measure(mask, options: MeasureOptions | None = None, **option_values) -> Measurement:
    """Measure every crack in a binary mask (True / non-zero = crack); see the modules' notes for the methods.

    `options` (`MeasureOptions`, or its fields as keywords): `pixel_size_mm`: millimetres per pixel, to report mm
    as well as px. `min_length`: cracks shorter than
    this (px) are dropped and counted. `direction_deg`: the structure's direction in the image, in degrees
    counter-clockwise from its horizontal axis (90, the default: image up, a road photographed in the direction
    of travel, or a north-up map of a road running north), which decides longitudinal vs transverse.
    `width_classes`: a preset name ("concrete", the default, or "pavement"), a JSON file or a WidthClasses.
    The whole mask is one block of `measure_blocks`.
    """
    options = MeasureOptions.of(options, **option_values)
    mask = as_mask(mask)

    def window(row: int, col: int, height: int, width: int) -> np.ndarray:
        return mask[row : row + height, col : col + width]

    return measure_blocks(window, mask.shape, options)
