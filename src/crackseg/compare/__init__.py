"""Inspections over time: two surveys of the same structure compared crack by crack.

`survey` loads each survey (photo, mask or NAME_measure.json, with its probability map), `registration` aligns
BEFORE onto AFTER (photos before they are segmented, so that `grid` can tile two photos a shift apart on one grid),
`match` finds which AFTER crack continues which BEFORE crack, `evidence` reads each survey's
probabilities along the other's cracks, `noise` sets the pair's noise floor, and `decide` decides each crack's
change (`compare`) into `changes`; `verify` runs the segmenter's test-time augmentation only around the changes a
first pass finds. `outputs` (maps and table), `figure` (the picture) and `report` (summary and
report) say what `runs.compare.write_changes` writes. A photo is segmented by the segmenter the caller passes;
masks and measure files need none.
"""

from crackseg.compare.changes import CHANGES, Changes, CrackChange
from crackseg.compare.decide import compare
from crackseg.compare.noise import NoiseFloor
from crackseg.compare.registration import Alignment, AlignmentError, apply_homography, register
from crackseg.compare.survey import Capture, CompareError, Survey, load_survey, needs_segmenter

__all__ = [
    "CHANGES",
    "Alignment",
    "AlignmentError",
    "Capture",
    "Changes",
    "CompareError",
    "CrackChange",
    "NoiseFloor",
    "Survey",
    "apply_homography",
    "compare",
    "load_survey",
    "needs_segmenter",
    "register",
]
