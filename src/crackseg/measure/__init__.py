"""Crack measurement: count, length, width, area, orientation and class of each crack in a binary mask.

A mask is measured block by block (`blocks`: clean-up, skeleton, sums per component, seams), its blocks' sums are
joined into cracks (`aggregate`: widths, `measure`, `measure_blocks`), classed (`classes`) and returned as a
`Measurement` (`result`); `figure` draws one. Each module's notes say how its numbers are made and why: the
skeleton, lengths and centrelines in `skeleton`, widths in `aggregate`.
"""

from crackseg.measure.aggregate import measure, measure_blocks
from crackseg.measure.blocks import DEFAULT_HALO
from crackseg.measure.classes import (
    UNKNOWN_WIDTH_CLASS,
    WIDTH_CLASS_PRESETS,
    ClassesError,
    WidthClasses,
    load_width_classes,
)
from crackseg.measure.result import Crack, Measurement
from crackseg.options import DEFAULT_MIN_LENGTH

__all__ = [
    "DEFAULT_HALO",
    "DEFAULT_MIN_LENGTH",
    "UNKNOWN_WIDTH_CLASS",
    "WIDTH_CLASS_PRESETS",
    "ClassesError",
    "Crack",
    "Measurement",
    "WidthClasses",
    "load_width_classes",
    "measure",
    "measure_blocks",
]
