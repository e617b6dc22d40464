"""Changes checked where they are found: test-time augmentation on the tiles around each change, not everywhere.

A comparison segments each photo with the eight turns and flips of every tile by default, because one pass per tile
is not repeatable enough: on an unchanged site its knife-edge pixels become changes. That costs eight passes per
tile, while most of a survey shows no change. So both photos are segmented one pass per tile first, the changes are
decided, and then the segmenter's augmentation runs only on the tiles that overlap a reported change (its crack,
grown by the tolerance and a margin, carried into BEFORE through the homography: first in the survey that alone cut
out a new or a closed crack, then, if the change stands, in the other); the cracks are cut again, the changes
decided again, and so on until every change stands on augmented maps on both sides.
Where changes remain, the augmentation then runs around every other crack too (the noise floor the changes are held
against is read from them), and the changes are decided again the same way. An unchanged site costs one pass per
tile and the decision, and a change one pass calls that the augmentation takes back, the tiles around it.

The map at a pixel is the blend of the tiles covering it, so where every such tile ran augmented it is exactly the
map of an augmented run over the whole photo (`CrackSegmenter.predict_prob`'s `where`): a change is reported on the
evidence augmentation everywhere would give it. What one pass decides alone: that nothing changed, and where a
crack is that neither survey's first pass cuts out at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import cv2
import numpy as np
import shapely

from crackseg.compare.changes import REPORTED, CrackChange
from crackseg.compare.grid import segment_placed
from crackseg.compare.noise import NoiseFloor
from crackseg.compare.registration import Alignment, apply_homography
from crackseg.compare.survey import Survey, fill_no_data

MARGIN_PX = 8  # past the tolerance: a crack's half width and its tips, where the evidence is read
AVERAGED = "the averaged maps around every crack"
ONE_PASS = (
    "one pass per tile, as no change stood to average around; averaged maps fade more slowly at tips, and give "
    "a higher floor: compare with --tta-where everywhere to read a site's floor"
)


def first_pass(segmenter):
    """The one-pass-per-tile sibling of a segmenter with test-time augmentation, or None when there is nothing to
    spare (no augmentation, or a segmenter that cannot run part of a photo)."""
    if not getattr(segmenter, "tta", False) or not hasattr(segmenter, "with_options"):
        return None
    return segmenter.with_options(tta=False, tta_turns=False)


Decision = Callable[[Survey, Survey], tuple[list[CrackChange], NoiseFloor]]


def checked_changes(
    before: Survey, after: Survey, alignment: Alignment, tolerance: float, segmenter, decide: Decision
) -> tuple[Survey, Survey, list[CrackChange], NoiseFloor]:
    """The changes `decide` finds between two surveys whose photos were segmented one pass per tile, decided
    again on `segmenter`'s augmented maps around every reported change until none is left unchecked, then (where
    changes remain) around every crack; both surveys as finally cut."""
    surveys = [before, after]
    checked = [np.zeros(s.shape, bool) if is_segmented_photo(s) else None for s in surveys]
    cracks, noise = decide(before, after)
    every_crack = False
    while True:
        regions = changed_regions(cracks, alignment, before.shape, after.shape, tolerance, every_crack, checked)
        todo = [None if done is None else region & ~done for region, done in zip(regions, checked, strict=True)]
        if not any(part is not None and part.any() for part in todo):
            if every_crack or not any(is_reported(c) for c in cracks):
                noise.maps = AVERAGED if every_crack else ONE_PASS
                return *surveys, cracks, noise
            every_crack = True  # the changes stand: now the floor they are held against, from averaged maps too
            continue
        for i, part in enumerate(todo):
            if part is not None and part.any():
                surveys[i] = resegmented(surveys[i], segmenter, part)
                checked[i] |= part
        cracks, noise = decide(*surveys)


def is_segmented_photo(survey: Survey) -> bool:
    return survey.source == "photo" and survey.prob is not None and survey.photo is not None


def changed_regions(
    cracks: list[CrackChange],
    alignment: Alignment,
    before_shape,
    after_shape,
    tolerance: float,
    every_crack: bool,
    checked: list[np.ndarray | None],
) -> tuple[np.ndarray, np.ndarray]:
    """Where to average next, in BEFORE's and in AFTER's pixels: around each crack `worth_checking` (its line in
    AFTER's frame, carried into BEFORE's, grown by the tolerance and MARGIN_PX). A crack only one survey cut out (a
    new one: AFTER; a closed one: BEFORE) is averaged on that side first, where `checked` (each survey's pixels
    averaged already; None: a survey that cannot be) says it is not yet: averaged there, a false change most often
    goes, and the other side is averaged only if it stands."""
    inverse = np.linalg.inv(alignment.homography)
    reach = tolerance + MARGIN_PX
    regions = (np.zeros(before_shape, bool), np.zeros(after_shape, bool))
    for change in cracks:
        if not worth_checking(change, every_crack):
            continue
        xy = [np.asarray(line.coords) for line in shapely.get_parts(change.line) if len(line.coords)]
        near = (
            around(before_shape, [apply_homography(inverse, part) for part in xy], reach / alignment.scale),
            around(after_shape, xy, reach),
        )
        for i in sides_to_average(change, near, checked, every_crack):
            window, mark = near[i]
            regions[i][window] |= mark
    return regions


def sides_to_average(change: CrackChange, near, checked, every_crack: bool) -> tuple[int, ...]:
    """The surveys (0: BEFORE, 1: AFTER) to average around a change next: both, but for a crack only one survey cut
    out, that one alone until it is averaged there (and for a crack `under_floor`, that one alone at all)."""
    own = None if every_crack else own_side(change)
    if own is None:
        return (0, 1)
    if checked[own] is None:  # that survey cannot be averaged (not a segmented photo)
        return () if change.under_floor else (0, 1)
    window, mark = near[own]
    if change.under_floor or (mark & ~checked[own][window]).any():
        return (own,)
    return (0, 1)


def own_side(change: CrackChange) -> int | None:
    """The survey that alone cut out a crack (0: BEFORE, 1: AFTER): a closed or a new one, or one `under_floor`
    (BEFORE's where AFTER has no crack along it); None for any other."""
    if change.change == "closed" or (change.under_floor and change.length_after_px is None):
        return 0
    if change.change == "new" or change.under_floor:
        return 1
    return None


def around(shape, lines: list[np.ndarray], reach: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixels within `reach` of the polylines (x, y image coordinates), as a window of a `shape` image and the
    marks inside it."""
    if not lines:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    xy = np.concatenate(lines)
    low = np.clip(np.floor(xy.min(axis=0) - reach - 1).astype(int), 0, None)
    high = np.minimum(np.ceil(xy.max(axis=0) + reach + 2).astype(int), (shape[1], shape[0]))
    high = np.maximum(high, low)
    marks = np.zeros((high[1] - low[1], high[0] - low[0]), np.uint8)
    for line in lines:
        draw(marks, line - low, reach)
    return (slice(low[1], high[1]), slice(low[0], high[0])), marks > 0


def worth_checking(change: CrackChange, every_crack: bool) -> bool:
    """A reported change, a crack only one survey shows that is under the floor by its length alone (one pass
    may have cut a longer crack into such pieces), or a continued crack that lost a part longer than the floor (one
    pass may have joined a closed crack to a neighbour that stays); and, once changes stand on averaged maps, every
    crack both surveys show too: the noise floor the changes are held against is read from those, and must be read
    from the maps the changes are decided on (averaged maps fade more slowly at a crack's tips than one pass's, so
    their floor is higher)."""
    return (
        is_reported(change) or change.under_floor or change.lost_part or (every_crack and change.change == "unchanged")
    )


def is_reported(change: CrackChange) -> bool:
    return change.change in REPORTED or change.widened


def draw(region: np.ndarray, xy: np.ndarray, reach: float) -> None:
    """Marks every pixel within `reach` of a polyline (x, y image coordinates, pixel centres at +0.5); OpenCV
    draws a thick line with round ends."""
    points = np.round((xy - 0.5) * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits
    cv2.polylines(region, [points], False, 1, 2 * int(np.ceil(reach)) + 1, cv2.LINE_8, shift=4)


def resegmented(survey: Survey, segmenter, where: np.ndarray) -> Survey:
    """A photo survey with its map replaced by `segmenter`'s inside `where`, and its cracks cut again where that
    moved its mask (measuring a large photo again takes a while, and its cracks depend on the mask alone)."""
    prob = survey.prob.copy()
    prob[where] = segment_placed(segmenter, fill_no_data(survey.photo, survey.valid), survey.place, where)[where]
    if survey.valid is not None:
        prob[~survey.valid] = 0.0  # as `Survey.from_arrays` keeps it
    if np.array_equal(prob[where] >= survey.threshold, survey.prob[where] >= survey.threshold):
        return dataclasses.replace(survey, prob=prob)
    result = survey.measurement
    again = Survey.from_arrays(
        None,
        survey.photo,
        survey.name,
        survey.georef,
        survey.pixel_size_mm,
        result.min_length_px,
        prob=prob,
        threshold=survey.threshold,
        valid=survey.valid,
    )
    again.measurement.width_classes = result.width_classes
    again.source, again.photo_path, again.place = survey.source, survey.photo_path, survey.place
    return again
