"""Matching: BEFORE's centrelines carried into AFTER's frame, and which AFTER crack continues which BEFORE crack.

An AFTER crack continues a BEFORE crack when the length of its centreline within the tolerance of the BEFORE
centreline is at least half of the shorter of the two (and 3 tolerances): a crossing crack shares only a few pixels
and stays new. An AFTER crack keeps the id of the BEFORE crack it shares most length with (one AFTER crack per
BEFORE id); the rest get fresh ids, above every id BEFORE's history used, so a closed crack's id is never reused.
"""

from __future__ import annotations

import numpy as np
import shapely

from crackseg.compare.registration import apply_homography
from crackseg.compare.survey import Survey

MATCH_SHARE = 0.5  # of the shorter centreline, within the tolerance of the other
MATCH_MIN_TOLERANCES = 3.0  # and at least this many tolerances long: a crossing shares about two


def carried_lines(before: Survey, h: np.ndarray) -> list[shapely.MultiLineString]:
    """BEFORE's centrelines in AFTER's frame."""
    return [shapely.transform(lines, lambda xy: apply_homography(h, xy)) for lines in before.lines()]


def shared_lengths(after_lines, before_lines, tolerance: float) -> dict[tuple[int, int], float]:
    """(AFTER index, BEFORE index) → length of the AFTER centreline within `tolerance` of the BEFORE one."""
    zones = shapely.buffer(np.asarray(before_lines, dtype=object), tolerance)
    tree = shapely.STRtree(zones)
    a_idx, b_idx = tree.query(np.asarray(after_lines, dtype=object), predicate="intersects")
    if len(a_idx) == 0:
        return {}
    inside = shapely.length(shapely.intersection(np.asarray(after_lines, dtype=object)[a_idx], zones[b_idx]))
    return {(int(a), int(b)): float(s) for a, b, s in zip(a_idx, b_idx, inside, strict=True)}


def significant(shared: float, length_a: float, length_b: float, tolerance: float) -> bool:
    """Whether an AFTER crack continues a BEFORE crack: see the module notes."""
    return shared >= max(MATCH_MIN_TOLERANCES * tolerance, MATCH_SHARE * min(length_a, length_b))


def match(after_lines, before_lines, tolerance: float) -> dict[int, dict[int, float]]:
    """AFTER index → {BEFORE index: shared length} of the BEFORE cracks it continues."""
    length_a, length_b = shapely.length(after_lines), shapely.length(before_lines)
    matches: dict[int, dict[int, float]] = {}
    for (a, b), shared in shared_lengths(after_lines, before_lines, tolerance).items():
        if significant(shared, length_a[a], length_b[b], tolerance):
            matches.setdefault(a, {})[b] = shared
    return matches


def added_parts(after_line, before_lines, tolerance: float, min_piece: float) -> shapely.MultiLineString:
    """The parts of an AFTER centreline farther than `tolerance` from every BEFORE centreline, each at least
    `min_piece` long. Flat buffer ends, so that an extension counts from the old tip."""
    near = shapely.union_all(shapely.buffer(np.asarray(before_lines, dtype=object), tolerance, cap_style="flat"))
    rest = shapely.line_merge(shapely.difference(after_line, near))
    pieces = [p for p in shapely.get_parts(rest) if isinstance(p, shapely.LineString) and p.length >= min_piece]
    return shapely.MultiLineString(pieces)


def assign_ids(matches: dict[int, dict[int, float]], before_ids: list[int], first_free: int) -> dict[int, int]:
    """AFTER index → stable id: the id of the BEFORE crack it shares most with, one AFTER crack per BEFORE id."""
    pairs = sorted(((-s, a, b) for a, found in matches.items() for b, s in found.items()))
    ids, taken = {}, set()
    for _, a, b in pairs:  # the largest shared length first
        if a not in ids and b not in taken:
            ids[a] = before_ids[b]
            taken.add(b)
    for a in sorted(matches):  # pieces of a split crack beyond the first
        if a not in ids:
            ids[a], first_free = first_free, first_free + 1
    return ids
