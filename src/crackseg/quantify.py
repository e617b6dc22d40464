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
  loop; otherwise longitudinal (within 22.5° of `longitudinal_axis`), transverse (within 22.5° of the
  other axis) or diagonal.
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
"""

from __future__ import annotations

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
    # Severity by crack width, after ASTM D6433 and the FHWA LTPP distress manual: high from 19 mm as in LTPP;
    # the low/medium boundary differs between manuals and surfaces (3 mm here; LTPP asphalt 6 mm, ASTM D6433
    # 10 mm), so a JSON file (--classes FILE.json) sets an agency's own.
    "pavement": WidthClasses("pavement", (3.0, 19.0), ("low (<3 mm)", "medium (3-19 mm)", "high (>=19 mm)")),
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


def node_widths(
    graph: SkeletonGraph,
    node_d: np.ndarray,
    node_length: np.ndarray,
    node_crack: np.ndarray,
    area: np.ndarray,
) -> np.ndarray:
    """Local width in px at each skeleton pixel: 2·d − 1, shifted per crack so that ∫ width ds = its area."""
    raw = 2.0 * node_d - 1.0
    n = len(area)
    span = np.bincount(node_crack, weights=node_length, minlength=n)
    covered = np.bincount(node_crack, weights=node_length * raw, minlength=n)
    shift = np.divide(area - covered, span, out=np.zeros(n), where=span > 0)
    return np.maximum(graph.smooth(raw + shift[node_crack], WIDTH_SMOOTHING), 1.0)


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


def branch_lines(
    graph: SkeletonGraph, node_d: np.ndarray, node_angle: np.ndarray, branches: list[list[int]]
) -> list[np.ndarray]:
    """Each branch as an (n, 2) array of x, y image coordinates: pixel centres, simplified, tips extended.

    Simplified with a SIMPLIFY_TOLERANCE_PX tolerance: a digital line's staircase is noise, not shape. At a
    tip the line goes on along its last segment by d − 0.5, the stretch from the skeleton's end to the crack's
    end that the length counts too, so that a line is as long as its crack. A lone node (a blob-like crack)
    becomes a segment 2·(d − 0.5) long along the crack's axis (`node_angle`, degrees counter-clockwise).
    """
    x, y, degree = graph.cols + 0.5, graph.rows + 0.5, graph.degree()
    paths = [b for b in branches if len(b) > 1]
    simplified = iter([])
    if paths:
        nodes = np.concatenate(paths)
        index = np.repeat(np.arange(len(paths)), [len(b) for b in paths])
        lines = shapely.simplify(shapely.linestrings(x[nodes], y[nodes], indices=index), SIMPLIFY_TOLERANCE_PX)
        coords, which = shapely.get_coordinates(lines, return_index=True)
        simplified = iter(np.split(coords, np.flatnonzero(np.diff(which)) + 1))
    out = []
    for branch in branches:
        if len(branch) == 1:
            node = branch[0]
            t = np.radians(node_angle[node])
            half = (node_d[node] - 0.5) * np.array([np.cos(t), -np.sin(t)])  # y down in the image
            out.append(np.array([[x[node], y[node]] - half, [x[node], y[node]] + half]))
            continue
        line = next(simplified)
        for end, inner, node in ((0, 1, branch[0]), (-1, -2, branch[-1])):
            if degree[node] == 1:
                step = line[end] - line[inner]
                line[end] += step / np.hypot(*step) * (node_d[node] - 0.5)
        out.append(line)
    return out


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


def principal_axes(rows: np.ndarray, cols: np.ndarray, pixel_label: np.ndarray, n: int) -> np.ndarray:
    """Angle of each label's principal axis, counter-clockwise from horizontal, in [0, 180) degrees.

    The same second moments as skimage's regionprops orientation, for all labels in one pass.
    """
    count = np.maximum(np.bincount(pixel_label, minlength=n), 1)
    x, y = cols.astype(np.float64), -rows.astype(np.float64)  # y up, as on screen

    def mean(v):
        return np.bincount(pixel_label, weights=v, minlength=n) / count

    mx, my = mean(x), mean(y)
    var_x, var_y = mean(x * x) - mx**2, mean(y * y) - my**2
    cov_xy = mean(x * y) - mx * my
    return np.degrees(0.5 * np.arctan2(2 * cov_xy, var_x - var_y)) % 180.0


def classify(orientation_deg: float, branched: bool, longitudinal_axis: str = "vertical") -> str:
    return "branched-network" if branched else orientation_class(orientation_deg, longitudinal_axis)


def orientation_class(orientation_deg: float, longitudinal_axis: str = "vertical") -> str:
    from_horizontal = min(orientation_deg, 180.0 - orientation_deg)  # 0 … 90
    if 22.5 <= from_horizontal <= 67.5:
        return "diagonal"
    along_vertical = from_horizontal > 67.5
    return "longitudinal" if along_vertical == (longitudinal_axis == "vertical") else "transverse"


def crop_to_cracks(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The cracks' bounding box with a pixel of background around it where the image allows; its top, left.

    Everything after works on the crop: on a sparse photo that is most of the saving.
    """
    used_rows, used_cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left = max(int(used_rows[0]) - 1, 0), max(int(used_cols[0]) - 1, 0)
    return mask[top : used_rows[-1] + 2, left : used_cols[-1] + 2], top, left


def measure(
    mask,
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
    longitudinal_axis: str = "vertical",
    hole_area: int = DEFAULT_HOLE_AREA,
    width_classes: str | Path | WidthClasses | None = None,
) -> Measurement:
    """Measure every crack in a binary mask (True / non-zero = crack); see the module notes for the methods.

    `pixel_size_mm`: millimetres per pixel, to report mm as well as px. `min_length`: cracks shorter than
    this (px) are dropped and counted. `longitudinal_axis`: the image axis along the structure ("vertical"
    for a road photographed in the direction of travel), which decides longitudinal vs transverse.
    `width_classes`: a preset name ("concrete", the default, or "pavement"), a JSON file or a WidthClasses.
    """
    if pixel_size_mm is not None and not pixel_size_mm > 0:
        raise InputError(f"pixel size must be a positive number of mm per pixel, got {pixel_size_mm}")
    if longitudinal_axis not in ("vertical", "horizontal"):
        raise InputError(f"longitudinal_axis must be 'vertical' or 'horizontal', got {longitudinal_axis!r}")
    mask = as_mask(mask)
    classes = load_width_classes(width_classes)
    result = Measurement(mask.shape[0], mask.shape[1], pixel_size_mm, float(min_length), classes)
    if not mask.any():
        return result
    if mask.mean() > MOSTLY_CRACK:
        result.warnings.append(
            f"{mask.mean():.0%} of the mask is crack: this is unlikely to be a crack mask (inverted, or a photo?); "
            "its widths are bounded by the image, not measured"
        )

    crop, top, left = crop_to_cracks(mask)
    crop = fill_small_holes(crop, hole_area)
    labels, n = label(crop, connectivity=2, return_num=True)
    rows, cols = np.nonzero(labels)
    pixel_label = labels[rows, cols]
    area = np.bincount(pixel_label, minlength=n + 1).astype(np.float64)
    orientation = principal_axes(rows, cols, pixel_label, n + 1)
    boxes = find_objects(labels)

    dist = distance_to_background(crop)
    graph = SkeletonGraph.from_image(skeletonize(crop, method="lee"))
    graph = prune_spurs(graph, dist[graph.rows, graph.cols].astype(np.float64))
    node_d = dist[graph.rows, graph.cols].astype(np.float64)
    node_crack = labels[graph.rows, graph.cols]
    degree = graph.degree()
    node_length = node_lengths(graph, node_d)
    node_width = node_widths(graph, node_d, node_length, node_crack, area)

    length = np.bincount(node_crack, weights=node_length, minlength=n + 1)
    tips = np.bincount(node_crack, weights=degree == 1, minlength=n + 1)
    junctions = np.bincount(node_crack, weights=degree >= 3, minlength=n + 1)
    # Loops: edges − nodes + 1 for each crack's (connected) skeleton.
    loops = np.bincount(node_crack[graph.edge_a], minlength=n + 1) - np.bincount(node_crack, minlength=n + 1) + 1

    order = np.argsort(node_crack, kind="stable")
    first = np.searchsorted(node_crack[order], np.arange(n + 2))
    crack_id = np.zeros(n + 1, np.int32)  # component label → kept crack id (0: dropped)
    for k in range(1, n + 1):
        if length[k] < min_length or first[k] == first[k + 1]:  # (a crack always has a skeleton pixel)
            result.dropped += 1
            continue
        rows_k, cols_k = boxes[k - 1]
        # A crack is no wider than its bounding box (the area-matching shift could say so on a blob-like mask).
        box_side = min(rows_k.stop - rows_k.start, cols_k.stop - cols_k.start)
        widths = np.minimum(node_width[order[first[k] : first[k + 1]]], box_side)
        branched = bool(tips[k] >= 3 or loops[k] > 0)
        crack = Crack(
            id=result.count + 1,
            crack_class=classify(orientation[k], branched, longitudinal_axis),
            length_px=round(float(length[k]), 2),
            width_mean_px=round(float(widths.mean()), 2),
            width_median_px=round(float(np.median(widths)), 2),
            width_max_px=round(float(widths.max()), 2),
            width_p95_px=round(float(np.percentile(widths, 95)), 2),
            area_px=int(area[k]),
            bbox=(
                int(cols_k.start + left),
                int(rows_k.start + top),
                cols_k.stop - cols_k.start,
                rows_k.stop - rows_k.start,
            ),
            orientation_deg=round(float(orientation[k]), 1),
            branch_points=int(junctions[k]),
            endpoints=int(tips[k]),
            orientation_class=orientation_class(orientation[k], longitudinal_axis),
            branched=branched,
            width_class=UNKNOWN_WIDTH_CLASS,
            below_resolution=bool(np.median(widths) < BELOW_RESOLUTION_PX),
        )
        if pixel_size_mm:
            add_millimetres(crack, pixel_size_mm)
            crack.width_class = classes.classify(crack.width_p95_mm)
        result.cracks.append(crack)
        crack_id[k] = crack.id

    kept = crack_id[node_crack] > 0
    result.skeleton_rows = (graph.rows[kept] + top).astype(np.int32)
    result.skeleton_cols = (graph.cols[kept] + left).astype(np.int32)
    result.skeleton_width_px = node_width[kept].astype(np.float32)
    result.skeleton_id = crack_id[node_crack[kept]]
    result.centrelines = crack_centrelines(graph, node_d, orientation[node_crack], crack_id[node_crack], result.count)
    for lines in result.centrelines:
        for line in lines:
            line += (left, top)  # crop → image coordinates
    return result


def crack_centrelines(
    graph: SkeletonGraph, node_d: np.ndarray, node_angle: np.ndarray, node_id: np.ndarray, count: int
) -> list[list[np.ndarray]]:
    """The branches of each kept crack (`node_id`: its id at each node, 0 when dropped), ids 1 … `count`."""
    branches = [b for b in trace_branches(graph) if node_id[b[0]] > 0]
    out = [[] for _ in range(count)]
    for branch, line in zip(branches, branch_lines(graph, node_d, node_angle, branches), strict=True):
        out[node_id[branch[0]] - 1].append(line)
    return out


def add_millimetres(crack: Crack, pixel_size_mm: float) -> None:
    for name in ("length", "width_mean", "width_median", "width_max", "width_p95"):
        setattr(crack, f"{name}_mm", round(getattr(crack, f"{name}_px") * pixel_size_mm, 4))
    crack.area_mm2 = round(crack.area_px * pixel_size_mm**2, 4)


# --- drawing ------------------------------------------------------------------------------------------------


def width_figure(
    image, result: Measurement, max_side: int = 1600, min_side: int = 480, cmap: str = "turbo"
) -> np.ndarray:
    """The photo (dimmed, grey) with each skeleton coloured by local width, a colour bar and the crack ids.

    `image`: the photo or the mask (any array crackseg reads as an image), the size the mask was measured at.
    Returns an RGB uint8 array. Widths are in mm when the measurement has a pixel size, else in px.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crackseg.images import to_rgb_uint8

    base = to_rgb_uint8(image)
    if base.shape[:2] != (result.height, result.width):
        raise InputError(
            f"the image is {base.shape[1]}×{base.shape[0]} px "
            f"but the measured mask was {result.width}×{result.height} px"
        )
    scale = float(np.clip(max(base.shape[:2]), min_side, max_side)) / max(base.shape[:2])
    size = (max(round(base.shape[1] * scale), 1), max(round(base.shape[0] * scale), 1))
    grey = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
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
