"""Both photos of a comparison tiled on one grid, where the registration moves one onto the other by a shift.

A crack's probability depends a little on where the tile grid falls on it (tile borders, and the network's 32 px
lattice), so two captures of an unchanged crack segmented each on its own grid disagree at their knife-edge pixels,
and a comparison must then check those with test-time augmentation. When BEFORE lands on AFTER by a shift alone (two
orthomosaics on one map grid, two photos from a fixed camera), both are laid on one canvas, the union of their
frames, and tiled there: the same surface falls in the same place of the same tile in both, and what is left to
disagree is what the two captures really differ by. Any other registration (a turn, a change of scale, a
perspective) keeps each photo on its own grid, as nothing lines the grids up across the whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_GRID_DRIFT_PX = 1.0  # the shift must hold this well at every corner of BEFORE, or the grids drift apart


@dataclass(frozen=True)
class Placement:
    """Where a photo lies on the canvas both photos are tiled on: its top-left corner, and the canvas size."""

    top: int
    left: int
    height: int  # the canvas's
    width: int


def shared_grid(before_shape, after_shape, homography: np.ndarray, max_pixels: float | None = None):
    """BEFORE's and AFTER's placements on one canvas when the homography (BEFORE → AFTER) is a shift to within
    MAX_GRID_DRIFT_PX everywhere on BEFORE's frame (each None where the canvas is the photo's own frame); None
    otherwise, or when the canvas would hold more than `max_pixels`."""
    shift = whole_shift(before_shape, homography)
    if shift is None:
        return None
    dy, dx = shift  # AFTER px = BEFORE px + shift
    top, left = max(0, dy), max(0, dx)  # BEFORE's corner on the canvas; AFTER's is (top - dy, left - dx)
    height = max(top + before_shape[0], top - dy + after_shape[0])
    width = max(left + before_shape[1], left - dx + after_shape[1])
    if max_pixels is not None and height * width > max_pixels:
        return None
    places = Placement(top, left, height, width), Placement(top - dy, left - dx, height, width)
    return tuple(beyond_own_frame(place, shape) for place, shape in zip(places, (before_shape, after_shape)))


def beyond_own_frame(place: Placement, shape) -> Placement | None:
    """`place`, or None where its canvas is the photo's own frame (no shift, the same sizes): the photo's own grid
    is then that canvas's, and segmenting it needs no canvas copied around it."""
    return None if (place.top, place.left, place.height, place.width) == (0, 0, *shape[:2]) else place


def whole_shift(shape, homography: np.ndarray) -> tuple[int, int] | None:
    """The whole-pixel shift (rows, columns) the homography moves every corner of a `shape` frame by, to within
    MAX_GRID_DRIFT_PX; None when it turns, scales or tilts the frame more than that."""
    corners = frame_corners(shape)
    moved = cv2.perspectiveTransform(corners[None], np.asarray(homography, np.float64))[0] - corners
    dx, dy = np.round(moved.mean(axis=0)).astype(int)
    if np.abs(moved - (dx, dy)).max() > MAX_GRID_DRIFT_PX:
        return None
    return int(dy), int(dx)


def frame_corners(shape) -> np.ndarray:
    """The four corners (x, y) of a `shape` image's frame, clockwise from the top-left."""
    height, width = shape[:2]
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)


def segment_placed(segmenter, photo: np.ndarray, place: Placement | None, where: np.ndarray | None = None):
    """The photo's probability map from `segmenter.predict_prob`, tiled on the canvas of `place` (None: on its own
    grid). The canvas beyond the photo is its mirror image, as at any photo's edge, and only the tiles that reach
    into the photo (or into `where`, within it) run."""
    if place is None:
        return segmenter.predict_prob(photo, where=where)
    height, width = photo.shape[:2]
    rows = (place.top, place.height - place.top - height)
    cols = (place.left, place.width - place.left - width)
    canvas = np.pad(photo, (rows, cols, (0, 0)), mode="symmetric")
    inside = np.zeros((place.height, place.width), bool)
    inside[place.top : place.top + height, place.left : place.left + width] = True if where is None else where
    prob = segmenter.predict_prob(canvas, where=inside)
    return np.ascontiguousarray(prob[place.top : place.top + height, place.left : place.left + width])
