"""Inspections over time: two surveys of the same structure compared crack by crack.

`survey` loads each survey (photo, mask or NAME_measure.json), `registration` aligns BEFORE onto AFTER, `match`
finds which AFTER crack continues which BEFORE crack, and `changes` decides each crack's change (`compare`).
`write_changes` writes the maps and table (`outputs`), the picture (`figure`), the summary and the report
(`report`). A photo is segmented by the segmenter the caller passes; masks and measure files need none.
"""

from crackseg.compare.changes import CHANGES, Changes, CrackChange, compare
from crackseg.compare.registration import Alignment, AlignmentError, apply_homography, register
from crackseg.compare.survey import CompareError, Survey, load_survey, needs_segmenter
from crackseg.compare.write import OUTPUT_FILES, check_output, write_changes

__all__ = [
    "CHANGES",
    "OUTPUT_FILES",
    "Alignment",
    "AlignmentError",
    "Changes",
    "CompareError",
    "CrackChange",
    "Survey",
    "apply_homography",
    "check_output",
    "compare",
    "load_survey",
    "needs_segmenter",
    "register",
    "write_changes",
]
