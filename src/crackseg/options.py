"""The options of each job, validated in one place.

`SegmentOptions`, `MeasureOptions` and `CompareOptions` hold every rule (tile, threshold, pixel size, limits) once:
the Python API, the command line and the server build them and get the same checks and the same one-line errors.
The command line's flags are made from the fields (`add_arguments`), so a flag's name, default and help cannot drift
from the rule it feeds.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crackseg.errors import InputError

TILE_MULTIPLE = 32  # the largest stride of any encoder depth: every network pads and crops exactly at this size
DEFAULT_MAX_PIXELS = 500_000_000  # a photo held whole: 500 MP needs ~2 GB for the probability map
# Georeferenced rasters are read, segmented and measured block by block, so their size costs time and disk, not
# memory: their limit only stops a raster that would run for days (4,000 MP: a 63,000² orthomosaic).
DEFAULT_MAX_RASTER_PIXELS = 4_000_000_000
MIN_BLOCK = 256  # px: smaller measuring blocks would mostly read their halo
DEFAULT_BLOCK = 4096  # px per block side: ~50 MB of RGB and ~70 MB of probabilities with its margin
DEFAULT_MIN_LENGTH = 10.0  # px: shorter components are specks; they are dropped and counted
DEFAULT_HOLE_AREA = 16  # px: holes up to this size inside a crack are filled


class OptionError(InputError):
    """An option's value cannot be used; the message names the option (as a flag) and what is expected."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def named(flag_name: str) -> dict:
    """A field's command-line flag where it is not the field's own name (`--pixel-size` for pixel_size_mm)."""
    return {"json_schema_extra": {"flag": flag_name}}


class Options(BaseModel):
    """Frozen, validated options; `make` turns pydantic's report into one line naming the flag."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def make(cls, **values: Any):
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else ""
            detail = plain_message(first, cls.model_fields.get(name))
            if not name:  # a rule between fields
                raise OptionError(detail) from None
            if first["type"] == "extra_forbidden":
                raise OptionError(f"{name}: not an option of {cls.__name__} ({', '.join(cls.model_fields)})") from None
            given = values.get(name, "<missing>")
            given = int(given) if isinstance(given, float) and given.is_integer() else given
            raise OptionError(f"{cls.flag_of(name)} ({name}) {given}: {detail}") from None

    @classmethod
    def flag_of(cls, name: str) -> str:
        extra = cls.model_fields[name].json_schema_extra if name in cls.model_fields else None
        return extra["flag"] if extra else flag(name)

    def replace(self, **values: Any):
        """A copy with `values` changed, checked again."""
        return type(self).make(**{**dict(self), **values})

    @classmethod
    def of(cls, options=None, **values: Any):
        """`options` (default: the defaults) with `values` changed: what a function taking both is given."""
        if options is None:
            return cls.make(**values)
        return options.replace(**values) if values else options

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        return cls.make(**{name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)})


def plain_message(error: dict, info) -> str:
    """pydantic's report of one bad value, as the expectation a person reads."""
    kind, limit = error["type"], error.get("ctx", {})
    plain = {
        "greater_than_equal": lambda: f"must be at least {limit.get('ge')}",
        "greater_than": lambda: f"must be above {limit.get('gt')}",
        "less_than": lambda: f"must be below {limit.get('lt')}",
        "less_than_equal": lambda: f"must be at most {limit.get('le')}",
        "int_from_float": lambda: "must be a whole number",
        "int_parsing": lambda: "must be a whole number",
        "float_parsing": lambda: "must be a number",
        "string_pattern_mismatch": lambda: f"expected {info.description if info else limit.get('pattern')}",
    }
    return plain[kind]() if kind in plain else error["msg"].removeprefix("Value error, ")


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _positive(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive finite number")
    return value


def check_tile(tile: int | None) -> int | None:
    if tile is not None and (tile < TILE_MULTIPLE or tile % TILE_MULTIPLE):
        raise ValueError(f"must be a multiple of {TILE_MULTIPLE} of at least {TILE_MULTIPLE}, e.g. 448")
    return tile


def check_threshold(threshold: float | None) -> float | None:
    if threshold is not None and not 0 < threshold < 1:  # also refuses NaN
        raise ValueError("must lie strictly between 0 and 1, e.g. 0.5")
    return threshold


class SegmentOptions(Options):
    """How a photo is segmented: tiling, threshold, limits and the engine."""

    tile: int | None = Field(None, description="tile size, a multiple of 32 (default: the model's)")
    overlap: float | None = Field(
        None, ge=0, lt=1, description="overlap between tiles, as a fraction (default: 0.25; 64 px on tiles over 256 px)"
    )
    batch_size: int = Field(4, ge=1, description="tiles per forward pass")
    threshold: float | None = Field(None, description="probability threshold, 0 < t < 1 (default: the model's)")
    max_pixels: int | None = Field(
        None,
        gt=0,
        description=f"the photo limit (default: {DEFAULT_MAX_PIXELS / 1e6:.0f} MP): a larger photo is refused, a "
        f"larger TIFF is processed block by block, as georeferenced rasters are, up to "
        f"{DEFAULT_MAX_RASTER_PIXELS / 1e6:.0f} MP",
    )
    tta: bool = Field(False, description="average the four flips of each tile (4x the time)")
    tta_turns: bool = Field(
        False,
        description="average the eight quarter turns and flips of each tile (8x the time): a photo turned by 90° "
        "then gives the same cracks, turned",
    )
    scales: tuple[float, ...] = Field(
        (1.0,),
        description="average the probabilities of the photo resized by each factor, e.g. 1,2 (2: thin cracks seen "
        "twice as wide; the time grows with the sum of the squared factors)",
    )
    low_threshold: float | None = Field(
        None,
        description="hysteresis: pixels above this weaker threshold are cracks where they connect to pixels above "
        "the threshold (default: off, one threshold)",
    )
    backend: str = Field("auto", description="auto (the fastest accurate engine here), torch, onnx or openvino")
    precision: str = Field(
        "auto",
        description="auto, fp32, bf16 or int8; int8 runs only models that passed the accuracy rule; its "
        "probabilities may differ from fp32's by a few hundredths, its masks hardly",
    )
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="cpu, cuda or cuda:N")

    @field_validator("tile")
    @classmethod
    def _tile(cls, value):
        return check_tile(value)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value):
        return check_threshold(value)

    @field_validator("scales", mode="before")
    @classmethod
    def _scale_list(cls, value):
        if isinstance(value, str):  # "1,2" on the command line
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise ValueError("expected factors separated by commas, e.g. 1,2") from None
        return value

    @field_validator("scales")
    @classmethod
    def _scale_factors(cls, value):
        if not value or not all(math.isfinite(v) and 0.25 <= v <= 4 for v in value):
            raise ValueError("expected factors from 0.25 to 4, e.g. 1,2")
        return value

    @field_validator("low_threshold")
    @classmethod
    def _low_threshold(cls, value):
        return check_threshold(value)

    @model_validator(mode="after")
    def _low_under_threshold(self):
        if self.low_threshold is not None and self.threshold is not None and self.low_threshold >= self.threshold:
            raise ValueError(f"--low-threshold {self.low_threshold}: must lie under --threshold {self.threshold}")
        return self

    @field_validator("max_pixels", mode="before")
    @classmethod
    def _whole_pixels(cls, value):
        if isinstance(value, float):  # "1e9" on the command line
            if not math.isfinite(value):
                raise ValueError("must be a positive finite number of pixels, e.g. 1e9")
            return int(value)
        return value

    @property
    def photo_limit(self) -> int:
        """Pixels of a photo held whole."""
        return DEFAULT_MAX_PIXELS if self.max_pixels is None else self.max_pixels

    @property
    def raster_limit(self) -> int:
        """Pixels of a raster processed block by block (a given --max-pixels is both limits)."""
        return DEFAULT_MAX_RASTER_PIXELS if self.max_pixels is None else self.max_pixels


class MeasureOptions(Options):
    """How cracks are measured in a mask."""

    pixel_size_mm: float | None = Field(
        None, description="millimetres per pixel (default: the GeoTIFF's own)", **named("--pixel-size")
    )
    min_length: float = Field(DEFAULT_MIN_LENGTH, ge=0, description="drop (and count) cracks shorter than this (px)")
    hole_area: int = Field(DEFAULT_HOLE_AREA, ge=0, description="fill holes up to this many px inside a crack")
    direction_deg: float = Field(
        90.0,
        description="the structure's direction in the image, degrees counter-clockwise from x (90: up)",
        **named("--direction"),
    )
    width_classes: Any = Field(
        None,
        description="width classes: concrete (default), pavement, a JSON file, or a measure.WidthClasses",
        **named("--classes"),
    )
    block: int = Field(DEFAULT_BLOCK, ge=MIN_BLOCK, description="px per block side for rasters measured in blocks")

    @field_validator("pixel_size_mm")
    @classmethod
    def _pixel(cls, value):
        return _positive(value)

    @field_validator("min_length", "direction_deg")
    @classmethod
    def _finite_numbers(cls, value):
        return _finite(value)


class CompareOptions(Options):
    """How two surveys are compared."""

    pixel_size_mm: float | None = Field(
        None, description="AFTER's millimetres per pixel (default: its own)", **named("--pixel-size")
    )
    tolerance_px: float | None = Field(None, description="match tolerance in px (default: from the alignment error)")
    min_length: float = Field(DEFAULT_MIN_LENGTH, ge=0, description="ignore shorter cracks (px)")
    assume_aligned: bool = Field(False, description="no registration: a fixed camera, same size")
    low_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="the low threshold as a share of the model's: a crack counts as absent from a survey only where "
        "its probability stays under it",
    )
    tta_where: Literal["changes", "everywhere"] = Field(
        "changes",
        description="where the model's test-time augmentation runs: 'changes': one pass per tile first, then "
        "augmented on the tiles around each change found, decided again until every change stands on augmented "
        "maps; 'everywhere': on every tile (slower; the cracks away from changes are then cut from augmented maps "
        "too)",
    )

    @field_validator("pixel_size_mm", "tolerance_px")
    @classmethod
    def _positive_numbers(cls, value):
        return _positive(value)

    @field_validator("min_length")
    @classmethod
    def _finite_length(cls, value):
        return _finite(value)


def add_arguments(
    parser: argparse.ArgumentParser,
    options: type[Options],
    skip: tuple[str, ...] = (),
    described: dict[str, str] | None = None,
) -> None:
    """One flag per field of `options` (`--batch-size` for batch_size), with its default and description (or the one
    `described` gives it: a command that sets its own default, such as the server's photo limit, says so)."""
    for name, info in options.model_fields.items():
        if name in skip:
            continue
        annotation = info.annotation
        kinds = getattr(annotation, "__args__", (annotation,))
        help_text = (described or {}).get(name) or info.description or ""
        if bool in kinds:
            parser.add_argument(options.flag_of(name), dest=name, action="store_true", help=help_text)
            continue
        # Numbers are read as floats ("1e9" pixels too); the options then refuse what is not a whole number.
        kind = float if (int in kinds or float in kinds) and annotation is not tuple[float, ...] else str
        default = info.default
        if default is not None:
            help_text += f" (default: {default})"
        choices = kinds if get_origin(annotation) is Literal else None
        parser.add_argument(
            options.flag_of(name), dest=name, type=kind, default=default, choices=choices, help=help_text
        )
