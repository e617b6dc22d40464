"""A crack mask's skeleton as a graph, the length each skeleton pixel stands for, and the centrelines.

- Skeleton: `skimage.morphology.skeletonize(method="lee")`. Zhang's method (skimage's default) erased
  some 135° bands to a single pixel in testing (tests/test_measure.py keeps that case); Lee's does not.
  The skeleton is read as a graph with m-adjacency (a diagonal step is an edge only when the two pixels
  share no 4-neighbour on the skeleton), so staircase corners are neither branch points nor counted twice.
  Terminal branches shorter than the crack is wide where they join it (2·d there) are thinning spurs (the
  fork at a blunt end, a bump on a rough edge) and are pruned first.
- Length: the corner-count chain-code estimator of Vossepoel & Smeulders (1982),
  0.980·n_straight + 1.406·n_diagonal − 0.091·n_corner. The plain n_straight + √2·n_diagonal sum
  over-estimates straight cracks by up to 8 % between the axes (+7 % at 30°); this one stays within about
  −2 … +1 % at every angle. The skeleton stops about half a width short of each tip, so each end adds its
  distance to the edge, d − 0.5: lengths are tip to tip.
- Centrelines: the pruned skeleton is cut into branches (tip or junction to the next tip or junction, and
  closed loops), each ordered along its pixels, simplified with a 1-px tolerance (Douglas–Peucker, shapely)
  and, at a tip, lengthened by d − 0.5 to the crack's end, as the length is. Coordinates are image
  coordinates: x right, y down, from the top-left corner of the image, so pixel (row, col) has its centre at
  (col + 0.5, row + 0.5), as in GDAL / rasterio, whose affine transform then maps them to the map.

d is the distance from a skeleton pixel's centre to the nearest background pixel's (`blocks.distance_to_background`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

# Vossepoel & Smeulders (1982): weights of straight steps, diagonal steps and corners of a chain code.
STEP_WEIGHT, DIAGONAL_WEIGHT, CORNER_WEIGHT = 0.980, 1.406, -0.091
SIMPLIFY_TOLERANCE_PX = 1.0  # centreline points may move this far: the skeleton's own staircase error


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
