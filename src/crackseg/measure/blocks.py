"""What one block of a mask adds to its measurement, and which blocks' components touch across a seam.

- Clean-up: holes of up to `hole_area` px inside a crack are filled (segmentation pin-holes would otherwise
  become loops in the skeleton and make one crack look like a network). Nothing is opened or eroded: that
  would erase 1-px cracks. A crack is an 8-connected component of the cleaned mask.
- Blocks: a mask too large to hold (an orthomosaic's) is measured block by block (`measure_blocks`), each block
  read with a halo of context (DEFAULT_HALO, 160 px: enough for cracks up to 64 px wide, see SEAM_WIDTH_PX). Pixels
  and skeleton nodes are owned by the block whose core holds them; components that touch across a seam are joined
  (a union-find over the blocks' labels) and their sums added up: area, bounding box, pixel moments (the axis),
  length, ∫ (2·d − 1) ds (the width shift), tips, junctions, nodes and edges (the loops). Centreline pieces end
  half-way along the skeleton step that crosses a seam, where the next block's piece begins, and are merged. Whole
  `measure` is the case of one block, so both give the same cracks; only the centrelines' simplification differs
  where a line crosses a seam (its vertices there stay within the 1-px tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.ndimage import find_objects
from skimage.measure import label
from skimage.morphology import skeletonize

from crackseg.measure.result import empty_array
from crackseg.measure.skeleton import SkeletonGraph, node_lengths, owned_lines, prune_spurs
from crackseg.options import DEFAULT_HOLE_AREA, DEFAULT_MIN_LENGTH

WIDTH_SMOOTHING = 5  # rounds of neighbour averaging along the skeleton (a spread of about ±2 px)

# A mask too large to hold (an orthomosaic's) is measured in blocks, each read with a halo of context around it.
# Each crack pixel and skeleton node is owned by the block whose core holds it, so nothing is counted twice; the
# halo only makes what the core sees as on the whole mask. It must cover, for the widest crack w measured across a
# seam: the distance transform (d ≤ w/2 + 1); the skeleton (Lee's thinning is local: a halo of w gave the whole
# mask's skeleton exactly in testing); hole filling (a hole of up to `hole_area` = 16 px reaches at most 16 px in);
# and spur pruning: a crack cut by the window's edge ends there in a false tip about w/2 inside the window, and the
# branch from that tip into the core must be longer than 2·d ≈ w + 2 not to be pruned as a spur. So 2·w plus a margin.
SEAM_WIDTH_PX = 64  # the widest crack (px) that DEFAULT_HALO measures across seams as on the whole mask
HALO_MARGIN_PX = 32  # beyond 2·width: hole filling, the five rounds of width smoothing, a thinning artefact's reach
DEFAULT_HALO = 2 * SEAM_WIDTH_PX + HALO_MARGIN_PX  # 160 px

# Columns of BlockStatistics.sums, added up per crack over the blocks it spans: the pixel moments (the pixel count,
# i.e. the area, then Σx, Σy, Σx², Σy², Σxy), then over its skeleton nodes: the length, ∫ (2·d − 1) ds, tips,
# junctions, nodes and edges.
MOMENTS = slice(0, 6)
AREA, LENGTH, COVERED, TIPS, JUNCTIONS, NODES, EDGES = 0, 6, 7, 8, 9, 10, 11
N_SUMS = 12
NO_PIXEL = np.iinfo(np.int64).max


def crop_to_cracks(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The cracks' bounding box with a pixel of background around it where the image allows; its top, left.

    Everything after works on the crop: on a sparse photo that is most of the saving.
    """
    used_rows, used_cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left = max(int(used_rows[0]) - 1, 0), max(int(used_cols[0]) - 1, 0)
    return mask[top : used_rows[-1] + 2, left : used_cols[-1] + 2], top, left


def fill_small_holes(mask: np.ndarray, hole_area: int = DEFAULT_HOLE_AREA) -> np.ndarray:
    """Fill holes of up to `hole_area` px inside cracks (scikit-image's `remove_small_holes`: any 4-connected
    piece of background that small); nothing else changes (1-px cracks must survive). OpenCV labels a large mask's
    background several times faster than scikit-image does."""
    if hole_area <= 0:
        return mask.copy()
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).view(np.uint8), connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] <= hole_area  # label 0 is the cracks themselves: OR-ing it changes nothing
    return mask | small[labels]


def pixel_moments(rows: np.ndarray, cols: np.ndarray, pixel_label: np.ndarray, n: int) -> np.ndarray:
    """Per label 0 … n − 1: its pixel count and the sums of x, y, x², y² and x·y (x = col, y = −row: y up), (n, 6).

    Sums, so that a crack's add up over the blocks it spans; `axis_angles` gives its axis from them.
    """
    x, y = cols.astype(np.float64), -rows.astype(np.float64)  # y up, as on screen
    weights = (None, x, y, x * x, y * y, x * y)
    return np.column_stack([np.bincount(pixel_label, weights=w, minlength=n).astype(np.float64) for w in weights])


def axis_angles(moments: np.ndarray) -> np.ndarray:
    """The principal axis of each row of `pixel_moments`, counter-clockwise from horizontal, in [0, 180) degrees.

    The same second moments as skimage's regionprops orientation.
    """
    count = np.maximum(moments[:, 0], 1)
    mx, my = moments[:, 1] / count, moments[:, 2] / count
    var_x, var_y = moments[:, 3] / count - mx**2, moments[:, 4] / count - my**2
    cov_xy = moments[:, 5] / count - mx * my
    return np.degrees(0.5 * np.arctan2(2 * cov_xy, var_x - var_y)) % 180.0


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Lee's skeleton of a mask (scikit-image), thinned crack by crack, each in its own box with a pixel of
    background around it: thinning is local (whether a pixel goes depends on its 8 neighbours), so cracks apart
    thin as they would together, and a photo's few cracks leave most of a whole-mask thinning's pixels empty."""
    out = np.zeros(mask.shape, bool)
    _, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    for k, (rows, cols) in enumerate(find_objects(labels), start=1):
        box = (slice(max(rows.start - 1, 0), rows.stop + 1), slice(max(cols.start - 1, 0), cols.stop + 1))
        out[box] |= skeletonize(labels[box] == k, method="lee")
    return out


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from each crack pixel's centre to the nearest background pixel's centre.

    OpenCV's precise mode gives the values of scipy.ndimage.distance_transform_edt (checked in the tests)
    in a seventh of the time, which matters on 12-megapixel masks. Pixels beyond the image border are not
    background: a crack cut by the border keeps its width.
    """
    if mask.all():  # no background at all: measure as if the image were surrounded by it
        return distance_to_background(np.pad(mask, 1))[1:-1, 1:-1]
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


@dataclass
class BlockStatistics:
    """What one block adds to a mask's measurement: per 8-connected component of its core (labels 1 … n; row 0 unused),
    the sums over the pixels and skeleton nodes the core owns; the owned nodes; the centreline pieces in the core.
    Coordinates are the whole mask's."""

    core: tuple[int, int, int, int]  # row, col, height, width of the block's core in the mask
    crack_pixels: int = 0  # mask pixels in the core, before hole filling (the mostly-crack warning)
    dropped: int = 0  # components wholly inside the core and too short: dropped here, and counted
    widest_px: float = 0.0  # the largest 2·d − 1 on a skeleton node of the core
    sums: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((1, N_SUMS)))
    first: np.ndarray = field(repr=False, default_factory=lambda: np.full(1, NO_PIXEL))  # raster index of 1st pixel
    box: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((1, 4), np.int64))  # rows, cols [start, stop)
    node_rows: np.ndarray = empty_array(np.int32)
    node_cols: np.ndarray = empty_array(np.int32)
    node_label: np.ndarray = empty_array(np.int64)
    node_width: np.ndarray = empty_array(np.float64)  # 2·d − 1 averaged along the skeleton, before its crack's shift
    lines: list[np.ndarray] = field(repr=False, default_factory=list)  # centreline pieces, image coordinates
    line_label: np.ndarray = empty_array(np.int64)
    blobs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))  # lone nodes: x, y, d
    blob_label: np.ndarray = empty_array(np.int64)
    # Labels along the core's top row, bottom row, left and right column where a neighbouring block lies beyond
    # (zeros elsewhere), to join the components that continue there; None: no crack in the core.
    edges: tuple[np.ndarray, ...] | None = field(repr=False, default=None)


def block_statistics(
    window: np.ndarray,
    core: tuple[int, int, int, int],
    origin: tuple[int, int],
    shape: tuple[int, int],
    hole_area: int = DEFAULT_HOLE_AREA,
    min_length: float = DEFAULT_MIN_LENGTH,
) -> BlockStatistics:
    """Measure what one block owns. `window`: the block's core and its halo (bool); `core`: row, col, height, width
    of the core in the window; `origin`: the window's top-left pixel in the mask; `shape`: the mask's height, width.

    The skeleton, distances and hole filling are made on the whole window; the components, the sums and the lines
    only over the core. A component wholly inside the core is complete: when it is shorter than `min_length` (or
    has no skeleton) it is dropped here and counted, so that specks take no memory.
    """
    r0, c0, h, w = core
    origin_row, origin_col = origin
    stats = BlockStatistics((origin_row + r0, origin_col + c0, h, w))
    stats.crack_pixels = int(np.count_nonzero(window[r0 : r0 + h, c0 : c0 + w]))
    if not window.any():
        return stats
    crop, top, left = crop_to_cracks(window)
    crop = fill_small_holes(crop, hole_area)
    core_top, core_left = r0 - top, c0 - left  # the core in crop coordinates, then clipped to the crop
    a0, a1 = max(core_top, 0), min(core_top + h, crop.shape[0])
    b0, b1 = max(core_left, 0), min(core_left + w, crop.shape[1])
    if a0 >= a1 or b0 >= b1:
        return stats
    labels, n = label(crop[a0:a1, b0:b1], connectivity=2, return_num=True)
    if n == 0:
        return stats
    dy, dx = origin_row + top, origin_col + left  # crop → mask coordinates
    rows, cols = np.nonzero(labels)
    pixel_label = labels[rows, cols]
    rows, cols = rows + (a0 + dy), cols + (b0 + dx)
    sums = np.zeros((n + 1, N_SUMS))
    sums[:, MOMENTS] = pixel_moments(rows, cols, pixel_label, n + 1)
    first = np.full(n + 1, NO_PIXEL)
    _, at = np.unique(pixel_label, return_index=True)
    first[1:] = rows[at].astype(np.int64) * shape[1] + cols[at]
    box = np.zeros((n + 1, 4), np.int64)
    box[1:] = [(r.start, c.start, r.stop, c.stop) for r, c in find_objects(labels)]
    box[1:] += (a0 + dy, b0 + dx, a0 + dy, b0 + dx)

    dist = distance_to_background(crop)
    graph = SkeletonGraph.from_image(skeleton(crop))
    graph = prune_spurs(graph, dist[graph.rows, graph.cols].astype(np.float64))
    node_d = dist[graph.rows, graph.cols].astype(np.float64)
    degree = graph.degree()
    node_length = node_lengths(graph, node_d)
    raw = 2.0 * node_d - 1.0
    in_core = (graph.rows >= a0) & (graph.rows < a1) & (graph.cols >= b0) & (graph.cols < b1)
    node_label = np.zeros(len(graph), np.int64)
    node_label[in_core] = labels[graph.rows[in_core] - a0, graph.cols[in_core] - b0]
    for column, weights in (
        (LENGTH, node_length),
        (COVERED, node_length * raw),
        (TIPS, degree == 1),
        (JUNCTIONS, degree >= 3),
        (NODES, None),
    ):
        sums[:, column] = np.bincount(node_label, weights=weights, minlength=n + 1)
    sums[:, EDGES] = np.bincount(node_label[graph.edge_a], minlength=n + 1)  # each edge once: by its first node
    sums[0] = 0.0  # (the nodes outside the core)

    edges = [np.zeros(w, np.int64), np.zeros(w, np.int64), np.zeros(h, np.int64), np.zeros(h, np.int64)]
    if a0 == core_top and stats.core[0] > 0:
        edges[0][b0 - core_left : b1 - core_left] = labels[0]
    if a1 == core_top + h and stats.core[0] + h < shape[0]:
        edges[1][b0 - core_left : b1 - core_left] = labels[-1]
    if b0 == core_left and stats.core[1] > 0:
        edges[2][a0 - core_top : a1 - core_top] = labels[:, 0]
    if b1 == core_left + w and stats.core[1] + w < shape[1]:
        edges[3][a0 - core_top : a1 - core_top] = labels[:, -1]
    at_seam = np.zeros(n + 1, bool)
    at_seam[np.concatenate(edges)] = True
    keep = at_seam | ((sums[:, LENGTH] >= min_length) & (sums[:, NODES] > 0))
    keep[0] = True
    new_label = np.cumsum(keep) - 1  # kept labels → 1 … m

    owned = in_core & keep[node_label]
    stats.dropped = int(n + 1 - keep.sum())
    stats.widest_px = float(raw[in_core].max(initial=0.0))
    stats.sums, stats.first, stats.box = sums[keep], first[keep], box[keep]
    stats.node_rows = (graph.rows[owned] + dy).astype(np.int32)
    stats.node_cols = (graph.cols[owned] + dx).astype(np.int32)
    stats.node_label = new_label[node_label[owned]]
    stats.node_width = graph.smooth(raw, WIDTH_SMOOTHING)[owned]
    lines, line_label, stats.blobs, blob_label = owned_lines(graph, node_d, node_label, owned, (dy, dx))
    stats.lines, stats.line_label, stats.blob_label = lines, new_label[line_label], new_label[blob_label]
    stats.edges = tuple(new_label[e] for e in edges)
    return stats


def touching(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """(n, 2) label pairs that touch across a seam (8-connectivity) between two aligned rows (or columns) of labels."""
    out = []
    for shift in (-1, 0, 1):
        a = above[max(0, -shift) : len(above) - max(0, shift)]
        b = below[max(0, shift) : len(below) - max(0, -shift)]
        both = (a > 0) & (b > 0)
        out.append(np.column_stack([a[both], b[both]]))
    return np.concatenate(out)


def seam_pairs(blocks: list[BlockStatistics], offsets: np.ndarray, width: int) -> np.ndarray:
    """(n, 2) global labels (block k's label l is offsets[k] + l) of components that touch across a block seam.

    Along each seam row the labels of the blocks above and below are laid end to end over the mask's width, so that
    the diagonal step across a corner where four blocks meet is found too; seam columns are compared per block row.
    """
    above, below, left_of, right_of = {}, {}, {}, {}
    for k, stats in enumerate(blocks):
        if stats.edges is None:
            continue
        row, col, h, w = stats.core
        top, bottom, left, right = (np.where(e > 0, e + offsets[k], 0) for e in stats.edges)
        below.setdefault(row, np.zeros(width, np.int64))[col : col + w] = top
        above.setdefault(row + h, np.zeros(width, np.int64))[col : col + w] = bottom
        right_of[(row, col)] = left
        left_of[(row, col + w)] = right
    pairs = [touching(above[r], below[r]) for r in above.keys() & below.keys()]
    pairs += [touching(left_of[key], right_of[key]) for key in left_of.keys() & right_of.keys()]
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
