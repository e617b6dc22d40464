"""Crack quantification: count, length, width, area, orientation and class of each crack in a binary mask.

How the numbers are made, and why:

- Clean-up: holes of up to `hole_area` px inside a crack are filled (segmentation pin-holes would otherwise
  become loops in the skeleton and make one crack look like a network). Nothing is opened or eroded: that
  would erase 1-px cracks. A crack is an 8-connected component of the cleaned mask.
- Skeleton: `skimage.morphology.skeletonize(method="lee")`. Zhang's method (skimage's default) erased
  some 135° bands to a single pixel in testing (tests/test_quantify.py keeps that case); Lee's does not.
  The skeleton is read as a graph with m-adjacency (a diagonal step is an edge only when the two pixels
  share no 4-neighbour on the skeleton), so staircase corners are neither branch points nor counted twice.
  Terminal branches shorter than the crack is wide where they join it (2·d there) are thinning spurs (the
  fork at a blunt end, a bump on a rough edge) and are pruned first.
- Length: the corner-count chain-code estimator of Vossepoel & Smeulders (1982),
  0.980·n_straight + 1.406·n_diagonal − 0.091·n_corner. The plain n_straight + √2·n_diagonal sum
  over-estimates straight cracks by up to 8 % between the axes (+7 % at 30°); this one stays within about
  −2 … +1 % at every angle. The skeleton stops about half a width short of each tip, so each end adds its
  distance to the edge, d − 0.5: lengths are tip to tip.
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
- Orientation: the principal axis of the crack's pixels, in degrees counter-clockwise from the image's
  horizontal axis, in [0, 180). Class: branched-network when the pruned skeleton has 3 or more ends or a
  loop; otherwise longitudinal (within 22.5° of the structure's direction, `direction_deg`, measured the same
  way: 90, image up, by default), transverse (within 22.5° of its perpendicular) or diagonal.
- Pattern: a crack whose pruned skeleton closes NETWORK_CELLS or more loops is a network of cells, "network";
  with a pixel size it is rated by the side of a mean cell, sqrt(bounding-box area / loops), as the LTPP
  Distress Identification Manual tells fatigue from block cracking: "alligator" when under 300 mm (its pieces
  are "usually less than 0.3 m on the longest side"), else "block" (pieces of about 0.1 to 10 m²). The terms
  are pavement ones; on concrete an "alligator" network is map cracking.
- Units: lengths and widths in px, and in mm (× pixel size) when `pixel_size_mm` is given; areas in px²
  and mm² (× pixel size²).
- Width class: the crack's 95th-percentile width in mm put into bins (`WidthClasses`; presets `concrete`,
  after the 0.1–0.4 mm limits of EC2 Table 7.1N and ACI 224R, and `pavement`, low / medium / high severity by
  width), "unknown (no scale)" without a pixel size. The p95, not the median: a crack is rated by its widest
  stretch, not its typical one. A crack whose median width is under 2 px is `below_resolution`: thinner
  than the photo resolves, so its mm widths are upper bounds.
- Centrelines: the pruned skeleton is cut into branches (tip or junction to the next tip or junction, and
  closed loops), each ordered along its pixels, simplified with a 1-px tolerance (Douglas–Peucker, shapely)
  and, at a tip, lengthened by d − 0.5 to the crack's end, as the length is. Coordinates are image
  coordinates: x right, y down, from the top-left corner of the image, so pixel (row, col) has its centre at
  (col + 0.5, row + 0.5), as in GDAL / rasterio, whose affine transform then maps them to the map.
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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import shapely
from scipy.ndimage import find_objects
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label
from skimage.morphology import remove_small_holes, skeletonize

from crackseg.errors import InputError, read_json

DEFAULT_MIN_LENGTH = 10.0  # px: shorter components are specks; they are dropped and counted
DEFAULT_HOLE_AREA = 16  # px: holes up to this size inside a crack are filled
MOSTLY_CRACK = 0.5  # a mask with more crack than this is almost surely not a crack mask: warn

# Vossepoel & Smeulders (1982): weights of straight steps, diagonal steps and corners of a chain code.
STEP_WEIGHT, DIAGONAL_WEIGHT, CORNER_WEIGHT = 0.980, 1.406, -0.091
WIDTH_SMOOTHING = 5  # rounds of neighbour averaging along the skeleton (a spread of about ±2 px)
CLASSES = ("longitudinal", "transverse", "diagonal", "branched-network")
UNKNOWN_WIDTH_CLASS = "unknown (no scale)"  # the width class of every crack when the pixel size is not known
BELOW_RESOLUTION_PX = 2.0  # a median width under this is not resolved: its mm widths are upper bounds
SIMPLIFY_TOLERANCE_PX = 1.0  # centreline points may move this far: the skeleton's own staircase error
NETWORK_CELLS = 3  # loops in one crack's skeleton that make it a network (fewer: a branched crack)
ALLIGATOR_CELL_MM = 300.0  # LTPP: fatigue (alligator) pieces are usually under 0.3 m on the longest side


class ClassesError(InputError):
    """A width-class scheme (`--classes`) that cannot be used; the message says which part and what to do."""


def default_labels(bins_mm) -> tuple[str, ...]:
    """Class names for bins a < b < ... < z: "<a mm", "a-b mm", ..., ">=z mm"."""
    inner = [f"{a:g}-{b:g} mm" for a, b in zip(bins_mm[:-1], bins_mm[1:], strict=True)]
    return (f"<{bins_mm[0]:g} mm", *inner, f">={bins_mm[-1]:g} mm")


def check_bins(bins) -> tuple[float, ...]:
    """Class boundaries in mm as a tuple, or a ClassesError saying what is wrong with them."""
    numbers = isinstance(bins, list | tuple) and all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in bins
    )
    if not numbers or not bins:
        raise ClassesError(f"bins_mm must be a non-empty list of numbers (mm), got {bins!r}")
    if not (bins[0] > 0 and all(a < b for a, b in zip(bins[:-1], bins[1:], strict=True))):
        raise ClassesError(f"bins_mm must be positive and increasing, got {list(bins)}")
    return tuple(float(b) for b in bins)


@dataclass(frozen=True)
class WidthClasses:
    """Crack-width classes: a width w in mm is in class i when bins_mm[i - 1] <= w < bins_mm[i]."""

    name: str
    bins_mm: tuple[float, ...]
    labels: tuple[str, ...]

    def __post_init__(self):
        bins = check_bins(self.bins_mm)
        if len(self.labels) != len(bins) + 1 or not all(isinstance(s, str) and s for s in self.labels):
            raise ClassesError(
                f"labels must be {len(bins) + 1} names (one more than bins_mm: below the first bin, between each "
                f"two, above the last), got {list(self.labels)}"
            )
        if len(set(self.labels)) < len(self.labels) or UNKNOWN_WIDTH_CLASS in self.labels:
            raise ClassesError(f"labels must differ from each other and from {UNKNOWN_WIDTH_CLASS!r}")

    def classify(self, width_mm: float | None) -> str:
        if width_mm is None:
            return UNKNOWN_WIDTH_CLASS
        return self.labels[int(np.searchsorted(self.bins_mm, width_mm, side="right"))]

    def to_dict(self) -> dict:
        return {"name": self.name, "bins_mm": list(self.bins_mm), "labels": list(self.labels)}


WIDTH_CLASS_PRESETS = {
    # EC2 (EN 1992-1-1, Table 7.1N: w_max 0.2 / 0.3 / 0.4 mm) and ACI 224R (0.10 mm for water-retaining
    # structures up to 0.41 mm in dry air): the widths at which reinforced concrete is judged.
    "concrete": WidthClasses("concrete", (0.1, 0.2, 0.3, 0.4), default_labels((0.1, 0.2, 0.3, 0.4))),
    # Severity of longitudinal and transverse cracks by mean width in the FHWA LTPP Distress Identification Manual
    # (FHWA-HRT-13-092): low up to 6 mm, moderate up to 19 mm, high beyond. Other manuals differ (ASTM D6433 for
    # roads: 10 and 76 mm), so a JSON file (--classes FILE.json) sets an agency's own.
    "pavement": WidthClasses("pavement", (6.0, 19.0), ("low (<6 mm)", "moderate (6-19 mm)", "high (>=19 mm)")),
}


def load_width_classes(spec: str | Path | WidthClasses | None = None) -> WidthClasses:
    """A preset by name ("concrete", the default, or "pavement"), or a JSON file {"name", "bins_mm", "labels"}.

    "name" defaults to the file's name and "labels" to "<a mm", "a-b mm", ..., ">=z mm".
    """
    if isinstance(spec, WidthClasses):
        return spec
    if spec is None or str(spec) in WIDTH_CLASS_PRESETS:
        return WIDTH_CLASS_PRESETS[str(spec or "concrete")]
    path = Path(spec)
    if path.suffix.lower() != ".json":
        raise ClassesError(f"--classes {spec}: expected {' or '.join(WIDTH_CLASS_PRESETS)} or a .json file")
    data = read_json(path, f"--classes {spec}", ClassesError)
    if not isinstance(data, dict):
        raise ClassesError(f'--classes {spec}: expected a JSON object {{"name", "bins_mm", "labels"}}')
    unknown = sorted(set(data) - {"name", "bins_mm", "labels"})
    if unknown:
        raise ClassesError(f"--classes {spec}: unknown field {unknown[0]!r}; the fields are name, bins_mm, labels")
    if "bins_mm" not in data:
        raise ClassesError(
            f"--classes {spec}: the field 'bins_mm' is missing (class boundaries in mm, e.g. [0.2, 0.4])"
        )
    try:
        bins = check_bins(data["bins_mm"])
        labels = data.get("labels", default_labels(bins))
        labels = tuple(labels) if isinstance(labels, list | tuple) else ()
        return WidthClasses(str(data.get("name", path.stem)), bins, labels)
    except ClassesError as err:
        raise ClassesError(f"--classes {spec}: {err}") from None


@dataclass
class Crack:
    id: int
    crack_class: str
    length_px: float
    width_mean_px: float
    width_median_px: float
    width_max_px: float
    width_p95_px: float
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, width, height in pixels
    orientation_deg: float  # counter-clockwise from horizontal, [0, 180)
    branch_points: int
    endpoints: int
    orientation_class: str  # longitudinal, transverse or diagonal, branched or not
    branched: bool  # 3 or more ends, or a loop (crack_class says "branched-network" then)
    width_class: str  # from width_p95_mm; UNKNOWN_WIDTH_CLASS without a pixel size
    below_resolution: bool  # median width under 2 px: the mm widths are upper bounds
    length_mm: float | None = None
    width_mean_mm: float | None = None
    width_median_mm: float | None = None
    width_max_mm: float | None = None
    width_p95_mm: float | None = None
    area_mm2: float | None = None
    pattern: str = ""  # "", "network", or with a pixel size "alligator" / "block" (see the module notes)


def _empty(dtype):
    return field(repr=False, default_factory=lambda: np.zeros(0, dtype))


@dataclass
class Measurement:
    height: int  # of the image, px
    width: int
    pixel_size_mm: float | None
    min_length_px: float
    width_classes: WidthClasses = WIDTH_CLASS_PRESETS["concrete"]
    cracks: list[Crack] = field(default_factory=list)
    dropped: int = 0  # components shorter than min_length_px
    warnings: list[str] = field(default_factory=list)  # signs that the mask is not a crack mask
    # The kept cracks' skeleton pixels, for drawing: row, column, local width (px) and crack id.
    skeleton_rows: np.ndarray = _empty(np.int32)
    skeleton_cols: np.ndarray = _empty(np.int32)
    skeleton_width_px: np.ndarray = _empty(np.float32)
    skeleton_id: np.ndarray = _empty(np.int32)
    # Per crack (aligned with `cracks`): its centreline, one (n, 2) array of x, y image coordinates per branch.
    centrelines: list[list[np.ndarray]] = field(repr=False, default_factory=list)

    @property
    def count(self) -> int:
        return len(self.cracks)

    @property
    def total_length_px(self) -> float:
        return float(sum(c.length_px for c in self.cracks))

    @property
    def max_width_px(self) -> float:
        return max((c.width_max_px for c in self.cracks), default=0.0)

    @property
    def area_fraction(self) -> float:
        return sum(c.area_px for c in self.cracks) / float(self.height * self.width)

    def summary(self) -> dict:
        """Per-image figures, in px and (when the pixel size is known) mm."""
        out = {
            "count": self.count,
            "total_length_px": round(self.total_length_px, 2),
            "max_width_px": round(self.max_width_px, 2),
            "crack_area_px": sum(c.area_px for c in self.cracks),
            "crack_area_fraction": round(self.area_fraction, 6),
            "dropped_short": self.dropped,
            "min_length_px": self.min_length_px,
            "classes": {name: sum(c.crack_class == name for c in self.cracks) for name in CLASSES},
            "below_resolution": sum(c.below_resolution for c in self.cracks),
            "patterns": {name: sum(c.pattern == name for c in self.cracks) for name in self.pattern_labels},
            "width_class_scheme": self.width_classes.name,
            "width_classes": {name: sum(c.width_class == name for c in self.cracks) for name in self.width_labels},
            "length_by_width_class_px": self.length_by_width_class(),
        }
        if self.pixel_size_mm:
            out["total_length_mm"] = round(self.total_length_px * self.pixel_size_mm, 3)
            out["max_width_mm"] = round(self.max_width_px * self.pixel_size_mm, 4)
            out["crack_area_mm2"] = round(sum(c.area_px for c in self.cracks) * self.pixel_size_mm**2, 3)
            out["length_by_width_class_mm"] = self.length_by_width_class(self.pixel_size_mm)
        return out

    @property
    def pattern_labels(self) -> tuple[str, ...]:
        """The patterns (networks of cells) a crack of this measurement can show."""
        return ("alligator", "block") if self.pixel_size_mm else ("network",)

    @property
    def width_labels(self) -> tuple[str, ...]:
        """The width classes a crack of this measurement can be in."""
        return self.width_classes.labels if self.pixel_size_mm else (UNKNOWN_WIDTH_CLASS,)

    def length_by_width_class(self, scale: float = 1.0) -> dict[str, float]:
        """Total crack length per width class, in px (or × `scale`)."""
        return {
            name: round(sum(c.length_px for c in self.cracks if c.width_class == name) * scale, 3)
            for name in self.width_labels
        }

    def to_dict(self) -> dict:
        """JSON-ready: image size, pixel size, per-image summary and one entry per crack."""
        return {
            "image_size": {"height": self.height, "width": self.width},
            "pixel_size_mm": self.pixel_size_mm,
            "width_classes": self.width_classes.to_dict(),
            "warnings": self.warnings,
            "summary": self.summary(),
            "cracks": [asdict(c) for c in self.cracks],
        }


# --- the skeleton as a graph --------------------------------------------------------------------------------


@dataclass
class SkeletonGraph:
    """Skeleton pixels (nodes, in raster order) and their m-adjacency edges."""

    rows: np.ndarray
    cols: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    diagonal: np.ndarray  # per edge: a diagonal step (else a straight one)

    @classmethod
    def from_image(cls, skeleton: np.ndarray) -> SkeletonGraph:
        rows, cols = np.nonzero(skeleton)
        stride = skeleton.shape[1] + 2  # keys of a padded image: a step off the right edge never wraps
        key = (rows.astype(np.int64) + 1) * stride + cols + 1  # sorted, as np.nonzero is row-major

        def neighbour(dr: int, dc: int) -> tuple[np.ndarray, np.ndarray]:
            target = key + dr * stride + dc
            pos = np.minimum(np.searchsorted(key, target), max(len(key) - 1, 0))
            return (key[pos] == target if len(key) else np.zeros(0, bool)), pos

        (right, at_right), (down, at_down), (left, _) = neighbour(0, 1), neighbour(1, 0), neighbour(0, -1)
        (down_right, at_down_right), (down_left, at_down_left) = neighbour(1, 1), neighbour(1, -1)
        steps = [  # each edge once: towards the right and downwards
            (right, at_right, False),
            (down, at_down, False),
            (down_right & ~right & ~down, at_down_right, True),  # m-adjacency: no shared 4-neighbour
            (down_left & ~left & ~down, at_down_left, True),
        ]
        index = np.arange(len(key))
        return cls(
            rows,
            cols,
            np.concatenate([index[found] for found, _, _ in steps]),
            np.concatenate([at[found] for found, at, _ in steps]),
            np.concatenate([np.full(int(found.sum()), diagonal) for found, _, diagonal in steps]),
        )

    def __len__(self) -> int:
        return len(self.rows)

    def degree(self) -> np.ndarray:
        return np.bincount(np.concatenate([self.edge_a, self.edge_b]), minlength=len(self))

    def subgraph(self, keep: np.ndarray) -> SkeletonGraph:
        """The graph on the nodes where `keep` is true."""
        new_index = np.cumsum(keep) - 1
        kept = keep[self.edge_a] & keep[self.edge_b]
        return SkeletonGraph(
            self.rows[keep],
            self.cols[keep],
            new_index[self.edge_a[kept]],
            new_index[self.edge_b[kept]],
            self.diagonal[kept],
        )

    def components(self, edges: np.ndarray) -> np.ndarray:
        """Connected-component number of every node, using only the edges where `edges` is true."""
        n = len(self)
        a, b = self.edge_a[edges], self.edge_b[edges]
        return connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)[1]

    def smooth(self, values: np.ndarray, rounds: int) -> np.ndarray:
        """Average each node's value with its neighbours', `rounds` times (a short diffusion)."""
        n = len(self)
        if n == 0 or rounds == 0:
            return values
        a = np.concatenate([self.edge_a, self.edge_b, np.arange(n)])
        b = np.concatenate([self.edge_b, self.edge_a, np.arange(n)])
        average = csr_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
        count = np.asarray(average.sum(axis=1)).ravel()
        for _ in range(rounds):
            values = average @ values / count
        return values


def prune_spurs(graph: SkeletonGraph, node_d: np.ndarray, rounds: int = 3) -> SkeletonGraph:
    """Remove terminal branches shorter than the crack is wide where they join it (2·d at the junction).

    Thinning leaves such branches at blunt ends (a fork towards both corners) and at bumps on the edge;
    a real side crack is longer than the crack it leaves is wide. `node_d`: distance transform per node.
    """
    for _ in range(rounds):
        degree = graph.degree()
        junction = degree >= 3
        if not junction.any():
            break
        # Branches: the pieces left when the junction pixels are taken out.
        branch = graph.components(~junction[graph.edge_a] & ~junction[graph.edge_b])
        n_branches = int(branch.max()) + 1
        size = np.bincount(branch, minlength=n_branches)
        has_tip = np.bincount(branch, weights=degree == 1, minlength=n_branches) > 0
        link = junction[graph.edge_a] != junction[graph.edge_b]  # edges from a branch onto a junction
        a, b = graph.edge_a[link], graph.edge_b[link]
        end, joint = np.where(junction[a], b, a), np.where(junction[a], a, b)
        joins = np.zeros(n_branches, bool)
        joins[branch[end]] = True
        width_there = np.zeros(n_branches)
        np.maximum.at(width_there, branch[end], 2 * node_d[joint])
        spur = has_tip & joins & (size + 1 < width_there)  # + 1: the step onto the junction
        if not spur.any():
            break
        keep = ~spur[branch]
        graph, node_d = graph.subgraph(keep), node_d[keep]
    return graph


def node_lengths(graph: SkeletonGraph, node_d: np.ndarray) -> np.ndarray:
    """The length each skeleton pixel stands for; summed over a crack, its tip-to-tip length.

    Half of each of its steps plus its corner correction (the corner-count chain-code estimator), and at
    a tip its distance to the crack's edge, d − 0.5 (a lone pixel is both tips of a blob).
    """
    weight = np.where(graph.diagonal, DIAGONAL_WEIGHT, STEP_WEIGHT) / 2
    share = np.bincount(graph.edge_a, weights=weight, minlength=len(graph)).astype(np.float64)
    share += np.bincount(graph.edge_b, weights=weight, minlength=len(graph))
    degree = graph.degree()
    ends_of_diagonals = np.concatenate([graph.edge_a[graph.diagonal], graph.edge_b[graph.diagonal]])
    corner = (degree == 2) & (np.bincount(ends_of_diagonals, minlength=len(graph)) == 1)
    share += CORNER_WEIGHT * corner  # a straight step meets a diagonal one here
    share += np.select([degree == 1, degree == 0], [node_d - 0.5, 2 * (node_d - 0.5)], 0.0)
    return share


def width_shift(area: np.ndarray, length: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Per crack, the shift of its local widths 2·d − 1 that makes ∫ width ds along its skeleton equal its pixel area.

    `covered`: ∫ (2·d − 1) ds, the sum of node length × (2·d − 1) over its skeleton nodes; `length`: its length.
    """
    return np.divide(area - covered, length, out=np.zeros(len(area)), where=length > 0)


def trace_branches(graph: SkeletonGraph) -> list[list[int]]:
    """The skeleton cut into branches, each the list of its nodes in order along it.

    A branch runs from a node of degree ≠ 2 (a tip or a junction) through degree-2 nodes to the next such
    node; a lone node is a branch of one; a ring of degree-2 nodes is a closed branch (its first node again
    at the end). Every edge is in exactly one branch.
    """
    n, m = len(graph), len(graph.edge_a)
    ends = np.concatenate([graph.edge_a, graph.edge_b])  # each edge from both of its nodes
    order = np.argsort(ends, kind="stable")
    first = np.searchsorted(ends[order], np.arange(n + 1))
    slots_of = np.empty(2 * m, np.int64)
    slots_of[order] = np.arange(2 * m)
    # Python lists: the walk below goes one node at a time, where numpy scalars would be slow.
    start, degree = first.tolist(), np.diff(first).tolist()
    other = np.concatenate([graph.edge_b, graph.edge_a])[order].tolist()
    edge = (order % max(m, 1)).tolist()
    used = bytearray(m)

    def walk(node: int, slot: int) -> list[int]:  # from `node` along the edge at `slot`, to a tip or junction
        path = [node]
        while True:
            used[edge[slot]] = 1
            node = other[slot]
            path.append(node)
            if degree[node] != 2:
                return path
            slot = start[node] + used[edge[start[node]]]  # its other edge
            if used[edge[slot]]:  # round a ring, back at the start
                return path

    branches = []
    for node in np.flatnonzero(np.diff(first) != 2).tolist():
        if degree[node] == 0:
            branches.append([node])
        for slot in range(start[node], start[node + 1]):
            if not used[edge[slot]]:
                branches.append(walk(node, slot))
    for e in range(m):  # what is left are rings of degree-2 nodes
        if not used[e]:
            branches.append(walk(int(graph.edge_a[e]), int(slots_of[e])))
    return branches


def branch_lines(chains: list[np.ndarray], tip_d: np.ndarray) -> list[np.ndarray]:
    """Each chain of points along a branch ((n, 2) x, y image coordinates, n ≥ 2) as a line: simplified, tips extended.

    Simplified with a SIMPLIFY_TOLERANCE_PX tolerance: a digital line's staircase is noise, not shape. At an end that
    is a crack's tip (`tip_d`, (chains, 2): d at the chain's first and last point, NaN where that end is no tip) the
    line goes on along its last segment by d − 0.5, the stretch from the skeleton's end to the crack's end that the
    length counts too, so that a line is as long as its crack.
    """
    if not chains:
        return []
    points = np.concatenate(chains)
    index = np.repeat(np.arange(len(chains)), [len(chain) for chain in chains])
    lines = shapely.simplify(shapely.linestrings(points[:, 0], points[:, 1], indices=index), SIMPLIFY_TOLERANCE_PX)
    coords, which = shapely.get_coordinates(lines, return_index=True)
    out = np.split(coords, np.flatnonzero(np.diff(which)) + 1)
    for line, (d_first, d_last) in zip(out, np.asarray(tip_d).tolist(), strict=True):
        for end, inner, d in ((0, 1, d_first), (-1, -2, d_last)):
            if not np.isnan(d):
                step = line[end] - line[inner]
                line[end] += step / np.hypot(*step) * (d - 0.5)
    return out


def blob_line(x: float, y: float, d: float, angle_deg: float) -> np.ndarray:
    """The line of a crack whose skeleton is one pixel (a blob-like crack): a segment 2·(d − 0.5) long through the
    pixel's centre (x, y) along the crack's axis (`angle_deg`, counter-clockwise from horizontal)."""
    t = np.radians(angle_deg)
    half = (d - 0.5) * np.array([np.cos(t), -np.sin(t)])  # y down in the image
    return np.array([[x, y] - half, [x, y] + half])


def runs_of(inside: np.ndarray) -> list[tuple[int, int]]:
    """First and last index of each run of True in a bool array."""
    step = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(step == 1).tolist(), (np.flatnonzero(step == -1) - 1).tolist(), strict=True))


def owned_lines(
    graph: SkeletonGraph, node_d: np.ndarray, node_label: np.ndarray, owned: np.ndarray, offset: tuple[int, int]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """The centreline pieces of the `owned` nodes: each branch cut to its runs of owned nodes, as lines
    (`branch_lines`, in image coordinates: graph row, col + `offset`), and each piece's label (`node_label`).

    A run that stops where the branch goes on (over the edge of a block's core) ends half-way along the step out of
    it, where the neighbouring block's piece begins: the two meet exactly and are merged later. Lone owned nodes
    (a crack whose skeleton is one pixel): their x, y, d as an (n, 3) array and their labels, drawn by `blob_line`
    once the crack's axis is known.
    """
    dy, dx = offset
    degree = graph.degree()
    xy = np.column_stack([graph.cols + 0.5 + dx, graph.rows + 0.5 + dy])
    everything = bool(owned.all())
    chains, tips, labels, blobs = [], [], [], []
    for branch in trace_branches(graph):
        if len(branch) == 1:
            if owned[branch[0]]:
                blobs.append(branch[0])
            continue
        runs = [(0, len(branch) - 1)]
        if not everything:
            inside = owned[branch]
            if not inside.all():
                if not inside.any():
                    continue
                if branch[0] == branch[-1]:  # a ring: start it outside, so that no run wraps round its start
                    k = int(np.argmin(inside))
                    branch = branch[k:-1] + branch[: k + 1]
                    inside = owned[branch]
                runs = runs_of(inside)
        last = len(branch) - 1
        for i, j in runs:
            chain = xy[branch[i : j + 1]]
            if i > 0:
                chain = np.vstack([(xy[branch[i - 1]] + chain[0]) / 2, chain])
            if j < last:
                chain = np.vstack([chain, (chain[-1] + xy[branch[j + 1]]) / 2])
            chains.append(chain)
            tip_first = node_d[branch[0]] if i == 0 and degree[branch[0]] == 1 else np.nan
            tip_last = node_d[branch[last]] if j == last and degree[branch[last]] == 1 else np.nan
            tips.append((tip_first, tip_last))
            labels.append(node_label[branch[i]])
    lines = branch_lines(chains, np.array(tips, np.float64).reshape(-1, 2))
    blobs = np.array(blobs, np.int64)
    return lines, np.array(labels, np.int64), np.column_stack([xy[blobs], node_d[blobs]]), node_label[blobs]


# --- measuring ----------------------------------------------------------------------------------------------


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


def fill_small_holes(mask: np.ndarray, hole_area: int = DEFAULT_HOLE_AREA) -> np.ndarray:
    """Fill holes of up to `hole_area` px inside cracks; nothing else changes (1-px cracks must survive)."""
    if hole_area <= 0:
        return mask.copy()
    try:
        return remove_small_holes(mask, max_size=hole_area)
    except TypeError:  # scikit-image < 0.26 names the threshold by the first size kept
        return remove_small_holes(mask, area_threshold=hole_area + 1)


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from each crack pixel's centre to the nearest background pixel's centre.

    OpenCV's precise mode gives the values of scipy.ndimage.distance_transform_edt (checked in the tests)
    in a seventh of the time, which matters on 12-megapixel masks. Pixels beyond the image border are not
    background: a crack cut by the border keeps its width.
    """
    if mask.all():  # no background at all: measure as if the image were surrounded by it
        return distance_to_background(np.pad(mask, 1))[1:-1, 1:-1]
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


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


def principal_axes(rows: np.ndarray, cols: np.ndarray, pixel_label: np.ndarray, n: int) -> np.ndarray:
    """Angle of each label's principal axis (`axis_angles`), for all labels in one pass."""
    return axis_angles(pixel_moments(rows, cols, pixel_label, n))


def classify(orientation_deg: float, branched: bool, direction_deg: float = 90.0) -> str:
    return "branched-network" if branched else orientation_class(orientation_deg, direction_deg)


def orientation_class(orientation_deg: float, direction_deg: float = 90.0) -> str:
    """Longitudinal, transverse or diagonal: the crack's axis against the structure's direction (both in degrees
    counter-clockwise from the image's horizontal axis; an axis, so 270 is 90)."""
    off_direction = abs((orientation_deg - direction_deg + 90.0) % 180.0 - 90.0)  # 0 … 90
    if 22.5 <= off_direction <= 67.5:
        return "diagonal"
    return "longitudinal" if off_direction < 22.5 else "transverse"


def crack_pattern(loops: int, box_area_px: float, pixel_size_mm: float | None) -> str:
    """Network or not and, with a pixel size, alligator or block (see the module notes)."""
    if loops < NETWORK_CELLS:
        return ""
    if not pixel_size_mm:
        return "network"
    cell_side_mm = math.sqrt(box_area_px / loops) * pixel_size_mm
    return "alligator" if cell_side_mm < ALLIGATOR_CELL_MM else "block"


def crop_to_cracks(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The cracks' bounding box with a pixel of background around it where the image allows; its top, left.

    Everything after works on the crop: on a sparse photo that is most of the saving.
    """
    used_rows, used_cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left = max(int(used_rows[0]) - 1, 0), max(int(used_cols[0]) - 1, 0)
    return mask[top : used_rows[-1] + 2, left : used_cols[-1] + 2], top, left


def check_arguments(pixel_size_mm: float | None, direction_deg: float) -> None:
    if pixel_size_mm is not None and not pixel_size_mm > 0:
        raise InputError(f"--pixel-size (pixel_size_mm) must be a positive number of mm per pixel, got {pixel_size_mm}")
    if not (isinstance(direction_deg, int | float) and math.isfinite(direction_deg)):
        raise InputError(f"--direction must be an angle in degrees (90: image up), got {direction_deg!r}")


def measure(
    mask,
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
    direction_deg: float = 90.0,
    hole_area: int = DEFAULT_HOLE_AREA,
    width_classes: str | Path | WidthClasses | None = None,
) -> Measurement:
    """Measure every crack in a binary mask (True / non-zero = crack); see the module notes for the methods.

    `pixel_size_mm`: millimetres per pixel, to report mm as well as px. `min_length`: cracks shorter than
    this (px) are dropped and counted. `direction_deg`: the structure's direction in the image, in degrees
    counter-clockwise from its horizontal axis (90, the default: image up, a road photographed in the direction
    of travel, or a north-up map of a road running north), which decides longitudinal vs transverse.
    `width_classes`: a preset name ("concrete", the default, or "pavement"), a JSON file or a WidthClasses.
    The whole mask is one block of `measure_blocks`.
    """
    check_arguments(pixel_size_mm, direction_deg)
    mask = as_mask(mask)

    def window(row: int, col: int, height: int, width: int) -> np.ndarray:
        return mask[row : row + height, col : col + width]

    return measure_blocks(window, mask.shape, pixel_size_mm, min_length, direction_deg, hole_area, width_classes)


# --- measuring block by block -------------------------------------------------------------------------------

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
    node_rows: np.ndarray = _empty(np.int32)
    node_cols: np.ndarray = _empty(np.int32)
    node_label: np.ndarray = _empty(np.int64)
    node_width: np.ndarray = _empty(np.float64)  # 2·d − 1 averaged along the skeleton, before its crack's shift
    lines: list[np.ndarray] = field(repr=False, default_factory=list)  # centreline pieces, image coordinates
    line_label: np.ndarray = _empty(np.int64)
    blobs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))  # lone nodes: x, y, d
    blob_label: np.ndarray = _empty(np.int64)
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
    graph = SkeletonGraph.from_image(skeletonize(crop, method="lee"))
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
    node_width = np.concatenate([np.zeros(0)] + [b.node_width for b in blocks])
    node_width = np.maximum(node_width + shift[node_crack], 1.0)
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


def measure_blocks(
    read,
    shape: tuple[int, int],
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
    direction_deg: float = 90.0,
    hole_area: int = DEFAULT_HOLE_AREA,
    width_classes: str | Path | WidthClasses | None = None,
    block: int | None = None,
    halo: int = DEFAULT_HALO,
    progress: bool = False,
) -> Measurement:
    """Measure a mask block by block, holding one block (and its halo) at a time: the cracks `measure` finds on the
    whole mask (see the notes above SEAM_WIDTH_PX for what the halo must cover).

    `read(row, col, height, width)`: that window of the mask, as anything `as_mask` takes; `shape`: the mask's
    height and width; `block`: the side of a block in px (None: the whole mask at once); `halo`: px of context read
    on each side. Memory: one window, plus per crack its sums and skeleton pixels (its widths and place, for the
    figure) and lines. The other arguments are `measure`'s.
    """
    from tqdm import tqdm

    from crackseg.images import blocks as block_grid

    check_arguments(pixel_size_mm, direction_deg)
    classes = load_width_classes(width_classes)
    height, width = shape
    grid = [(0, 0, height, width)] if block is None else list(block_grid(height, width, block))
    halo = 0 if len(grid) == 1 else halo
    stats = []
    for row, col, h, w in tqdm(grid, desc="blocks", unit="block", disable=not progress, leave=False):
        top, left = max(row - halo, 0), max(col - halo, 0)
        bottom, right = min(row + h + halo, height), min(col + w + halo, width)
        window = as_mask(read(top, left, bottom - top, right - left))
        core = (row - top, col - left, h, w)
        stats.append(block_statistics(window, core, (top, left), shape, hole_area, min_length))
    result = aggregate(stats, shape, pixel_size_mm, min_length, direction_deg, classes)
    widest, supported = max((b.widest_px for b in stats), default=0.0), (halo - HALO_MARGIN_PX) / 2
    if len(grid) > 1 and widest > supported:
        result.warnings.append(
            f"a crack is {widest:.0f} px wide, but a halo of {halo} px measures cracks across block seams as on the "
            f"whole mask only up to {supported:.0f} px wide: where it crosses a seam its length and widths may be off"
        )
    return result


def add_millimetres(crack: Crack, pixel_size_mm: float) -> None:
    for name in ("length", "width_mean", "width_median", "width_max", "width_p95"):
        setattr(crack, f"{name}_mm", round(getattr(crack, f"{name}_px") * pixel_size_mm, 4))
    crack.area_mm2 = round(crack.area_px * pixel_size_mm**2, 4)


# --- drawing ------------------------------------------------------------------------------------------------


def width_figure(
    image,
    result: Measurement,
    max_side: int = 1600,
    min_side: int = 480,
    cmap: str = "turbo",
    overview: bool = False,
) -> np.ndarray:
    """The photo (dimmed, grey) with each skeleton coloured by local width, a colour bar and the crack ids.

    `image`: the photo or the mask (any array crackseg reads as an image), the size the mask was measured at; with
    `overview`, a reduced copy of it (of a raster too large to hold, `rasters.overview`), of the same proportions.
    Returns an RGB uint8 array. Widths are in mm when the measurement has a pixel size, else in px.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crackseg.images import to_rgb_uint8

    base = to_rgb_uint8(image)
    proportions = abs(base.shape[0] * result.width / max(result.height, 1) - base.shape[1]) <= 1
    if base.shape[:2] != (result.height, result.width) and not (overview and proportions):
        raise InputError(
            f"the image is {base.shape[1]}×{base.shape[0]} px "
            f"but the measured mask was {result.width}×{result.height} px"
        )
    longest = max(result.height, result.width)
    scale = float(np.clip(longest, min_side, max_side)) / longest  # measured px → figure px
    size = (max(round(result.width * scale), 1), max(round(result.height * scale), 1))
    grey = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)
    interpolation = cv2.INTER_AREA if size[0] * size[1] < grey.size else cv2.INTER_NEAREST
    canvas = np.repeat((cv2.resize(grey, size, interpolation=interpolation) * 0.6).astype(np.uint8)[:, :, None], 3, 2)

    unit, factor = ("mm", result.pixel_size_mm) if result.pixel_size_mm else ("px", 1.0)
    widths = result.skeleton_width_px * factor
    norm = matplotlib.colors.Normalize(0.0, max(float(widths.max(initial=0.0)), 1.0 * factor))
    colormap = matplotlib.colormaps[cmap]
    # Paint in order of width, widest last, each skeleton pixel as a dot about 3 display pixels across.
    order = np.argsort(widths)
    rows = np.round((result.skeleton_rows[order] + 0.5) * scale - 0.5).astype(int)
    cols = np.round((result.skeleton_cols[order] + 0.5) * scale - 0.5).astype(int)
    colours = (colormap(norm(widths[order]))[:, :3] * 255).astype(np.uint8)
    radius = max(1, round(scale))
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < size[1]) & (c >= 0) & (c < size[0])
            canvas[r[ok], c[ok]] = colours[ok]

    dpi, bar_px, title_px = 100, 110, 28
    fig = Figure(figsize=((size[0] + bar_px) / dpi, (size[1] + title_px) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    total_w, total_h = size[0] + bar_px, size[1] + title_px
    ax = fig.add_axes([0, 0, size[0] / total_w, size[1] / total_h])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for crack_id, (r, c) in label_positions(result).items():
        ax.text(
            c * scale,
            r * scale,
            str(crack_id),
            color="white",
            fontsize=8,
            ha="center",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "black", "ec": "none", "alpha": 0.6},
        )
    bar_ax = fig.add_axes([(size[0] + 12) / total_w, 0.08, 18 / total_w, 0.84 * size[1] / total_h])
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=colormap), cax=bar_ax, label=f"width ({unit})")
    s = result.summary()
    total = f"{s['total_length_mm']:.0f} mm" if result.pixel_size_mm else f"{s['total_length_px']:.0f} px"
    fig.text(
        0.01,
        1 - 0.5 * title_px / total_h,
        f"{result.count} cracks, total length {total}, max width {result.max_width_px * factor:.2f} {unit}",
        fontsize=9,
        va="center",
    )
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()


def label_positions(result: Measurement) -> dict[int, tuple[float, float]]:
    """For each crack, the skeleton pixel nearest its skeleton's centroid: where its id is written."""
    order = np.argsort(result.skeleton_id, kind="stable")
    ids, starts = np.unique(result.skeleton_id[order], return_index=True)
    out = {}
    if len(ids) == 0:
        return out
    for crack_id, nodes in zip(ids, np.split(order, starts[1:]), strict=True):
        r, c = result.skeleton_rows[nodes].astype(float), result.skeleton_cols[nodes].astype(float)
        i = np.argmin((r - r.mean()) ** 2 + (c - c.mean()) ** 2)
        out[int(crack_id)] = (r[i], c[i])
    return out
