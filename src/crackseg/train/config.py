"""Every setting of a training run in one validated object, `TrainConfig`, and the errors of training.

pydantic converts each value to its field's type (the command line and YAML hand over text: "1e-3" becomes 0.001);
a value it cannot use becomes a `ConfigError` that names the setting and says what it expects. Ranges the types
alone cannot say are checked after that, in `TrainConfig.rules`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from crackseg.degrade import parse_scale
from crackseg.errors import CracksegError, InputError
from crackseg.losses import ALPHA_SCHEDULES, LOSSES


class TrainingError(CracksegError):
    """Training cannot go on; the message says why and where the last good checkpoint is."""


class ConfigError(InputError):
    """A training setting that cannot be used; the message starts with the setting's name."""

    def __init__(self, name: str, problem: str, value=MISSING):
        super().__init__(f"{name}{'' if value is MISSING else f' {value!r}'}: {problem}")
        self.name, self.problem, self.value = name, problem, value


# --- the kinds of value -------------------------------------------------------------------------------------
# Each kind ends in `expecting`, so that whatever pydantic refuses inside it (a type, a parse, a check) comes out
# as one error saying what the setting takes, which TrainConfig turns into its ConfigError.


def expecting(what: str) -> WrapValidator:
    """Whatever fails inside, the one error "expected `what`"."""

    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("expected", "{what}", {"what": what}) from None

    return WrapValidator(validate)


def _blank_is_none(value):
    """An optional setting's "none" or "" (as the command line and YAML can only say it) is None."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value


def _not_a_flag(value):
    if isinstance(value, bool):  # pydantic would read `epochs: true` as 1
        raise ValueError("a flag is not a number")
    return value


def _path_as_text(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value  # run.json keeps paths as text


def _one_or_many(value):
    return [value] if isinstance(value, (str, os.PathLike)) else value


def _json_text(value):
    return json.loads(value) if isinstance(value, str) else value


def _comma_separated(value):
    return [part.strip() for part in value.split(",")] if isinstance(value, str) else value


def _rising(pair: tuple[float, float]) -> tuple[float, float]:
    if not 0 < pair[0] <= pair[1]:
        raise ValueError("expected 0 < LOW <= HIGH")
    return pair


def one_of(*choices: str):
    """A setting that takes one of `choices` (also the metavar of its flag)."""
    return Annotated[Literal[choices], expecting(f"one of {', '.join(choices)}")]


def optional(kind):
    """`kind` or None."""
    return Annotated[kind | None, BeforeValidator(_blank_is_none)]


Text = Annotated[str, BeforeValidator(_path_as_text), expecting("text")]
Folders = Annotated[list[Text], BeforeValidator(_one_or_many), expecting("a folder or a list of folders")]
Whole = Annotated[int, BeforeValidator(_not_a_flag), expecting("a whole number")]
Number = Annotated[float, BeforeValidator(_not_a_flag), expecting("a number")]
Flag = Annotated[bool, expecting("true or false")]
ArchKwargs = Annotated[
    dict,
    BeforeValidator(_json_text),
    expecting('a mapping (JSON on the command line), e.g. {"decoder_channels": [128, 64, 32, 16]}'),
]
ScaleRange = Annotated[
    tuple[float, float],
    BeforeValidator(_comma_separated),
    AfterValidator(_rising),
    expecting("two factors LOW,HIGH with 0 < LOW <= HIGH, e.g. 0.4,1.3"),
]


def _degrade_scale(value) -> float:
    """ "x4", "×4" and "4" alike, as `evaluate --degrade` spells them (a ValueError, which pydantic reports)."""
    try:
        return parse_scale(value)
    except InputError as err:
        raise ValueError(str(err)) from None


DegradeScales = Annotated[
    tuple[Annotated[float, BeforeValidator(_degrade_scale)], ...],
    BeforeValidator(_comma_separated),
    Field(min_length=1),
    expecting("factors of at least 1, e.g. 2,4"),
]

# Python only: on no command line, nor in an options file.
PYTHON_ONLY = ("max_batches",)


class TrainConfig(BaseModel):
    """Every setting of a training run, with `crackseg train`'s defaults (the original project's: PSPNet-ResNet18,
    448 crops, Adam 1e-4, batch 8, 50 epochs, BC loss γ = 0.5, linear α).

    Values are converted to each field's type and checked when the config is made, so "1e-3" from a YAML file
    becomes 0.001; a value that cannot be used raises ConfigError naming the field. `replace` makes a changed
    copy, checked alike; `from_file` and `from_run` read a YAML/JSON file and a run's saved config.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    data: Folders = Field(default_factory=list, description="one or more data roots (test splits are left out)")
    out: Text = Field("", description="run directory")
    val_data: optional(Folders) = Field(None, description="validation roots; default: a split carved from --data")
    arch: Text = Field("pspnet", description="any segmentation-models-pytorch architecture (pspnet, unet, fpn, ...)")
    encoder: Text = Field("resnet18")
    encoder_depth: optional(Whole) = Field(None, description="encoder stages, 1 to 5 (default: the architecture's)")
    arch_kwargs: ArchKwargs = Field(
        default_factory=dict,
        description="extra smp arguments as JSON, e.g. '{\"decoder_channels\": [128, 64, 32, 16]}'",
    )
    init_from: optional(Text) = Field(None, description="start from a trained crackseg model's weights (fine-tuning)")
    encoder_weights: optional(Text) = Field(
        None,
        description="none; imagenet (offline from an installed weights package for timm-tf_efficientnet_lite0/1/2, "
        "else downloaded); or the path of a state dict in the encoder's own naming",
    )
    size: Whole = Field(448, description="training crop size")
    epochs: Whole = Field(50)
    batch_size: Whole = Field(8)
    optimizer: one_of("adam", "adamw", "sgd") = Field("adam")
    lr: Number = Field(1e-4)
    weight_decay: Number = Field(0.0)
    lr_schedule: one_of("none", "cosine", "plateau") = Field("none")
    loss: one_of(*LOSSES) = Field("bc")
    gamma: Number = Field(0.5, description="weight of WCE against generalised Dice in the BC loss")
    alpha_schedule: one_of(*ALPHA_SCHEDULES) = Field("linear")
    alpha: Number = Field(0.5, description="α of the constant schedule")
    pos_weight: optional(Number) = Field(None, description="fixed crack weight of WCE (default: batch ratio)")
    val_fraction: Number = Field(0.1, description="share of each source's photos held out")
    split_seed: Whole = Field(
        0, description="seed of the validation split (apart from --seed: a fine-tune keeps its split)"
    )
    select: one_of("loss", "f1", "ods", "sources") = Field(
        "loss",
        description="which validation number picks the best epoch: loss, F1 at 0.5, F1 at the best threshold "
        "(ODS), or sources: the mean over the data's sources of each source's F1 at that threshold (every surface "
        "counts the same, however many photos it has)",
    )
    threshold_by: one_of("pooled", "sources") = Field(
        "pooled",
        description="the threshold stored with the model: where the pooled validation F1 peaks (ODS), or where the "
        "mean of the per-source F1s peaks (a large source no longer decides it alone); val_f1_sources is taken there",
    )
    patience: Whole = Field(0, description="stop after this many epochs without improvement (0: never)")
    clip_grad: Number = Field(0.0, description="clip the gradient norm to this (0: off)")
    ema: Number = Field(
        0.0,
        description="decay of an exponential moving average of the weights, updated every step, that is validated "
        "and saved instead of the raw weights (e.g. 0.998; 0: off)",
    )
    max_train_minutes: Number = Field(0.0, description="stop cleanly after this much wall-clock time (0: no limit)")
    precision: one_of("auto", "fp32", "bf16") = Field("auto")
    device: Text = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: Whole = Field(0, description="CPU threads for torch (0: library default)")
    workers: Whole = Field(1, description="data-loading worker processes")
    light_augment: Flag = Field(False, description="geometric augmentation only (no colour, blur, noise)")
    degrade_prob: Number = Field(0.0, description="probability of the paper's degradation as augmentation")
    degrade_scale: DegradeScales = Field((2.0, 4.0), description="down-scaling factors the degradation draws from")
    scale_range: ScaleRange = Field(
        (0.7, 1.3),
        description="LOW,HIGH: the random scale factor of training photos (below 1: thinner cracks, as in wide frames)",
    )
    distractor_prob: Number = Field(
        0.0,
        description="share of training crops given generated non-cracks (straight dark lines, road markings, stains)",
    )
    distractors: one_of("classic", "all") = Field(
        "classic",
        description="which non-cracks: classic (dark lines, road markings, stains) or all (also sealed joints, "
        "cast-shadow edges, tined grooves, bolts and panel edges, and a padded black border)",
    )
    source_balance: Number = Field(
        0.0,
        description="draw each source's pairs with weight 1/count^P: 0 keeps the data's mix, 0.5 gives each source a "
        "share proportional to the square root of its size, 1 gives every source the same share",
    )
    teacher_maps: optional(Text) = Field(
        None, description="folder of a teacher's probability maps (crackseg teach): also learn them as soft targets"
    )
    distill_weight: Number = Field(0.5, description="weight of the soft-target term (BCE to the teacher's map)")
    consistency_weight: Number = Field(
        0.0,
        description="weight of the disagreement between the maps of each crop and of a second view of it, moved by "
        "up to 31 px and scaled by 0.88-1.12 (0: off): steadier maps where the tile grid or the scale differs",
    )
    seed: Whole = Field(0)
    skip_unpaired: Flag = Field(False, description="go on without images that have no mask")
    resume: Flag = Field(
        False, description="continue the run in --out from its last.pt, with its saved options (given ones win)"
    )
    overwrite: Flag = Field(False, description="start afresh even if --out holds a run")
    # Python only (PYTHON_ONLY): short epochs for tests and timing, not a production option.
    max_batches: Whole = Field(0, description="training batches per epoch at most (0: all)")

    def __init__(self, **values):
        check_names(values, list(type(self).model_fields))
        try:
            super().__init__(**values)
        except ValidationError as err:
            first = err.errors()[0]  # fields are validated in order, so this is the first bad one
            name = first["loc"][0]
            raise ConfigError(name, f"expected {first['msg']}", values[name]) from None
        self.check()

    def check(self) -> None:
        for name, what in (("data", "one or more data folders"), ("out", "the run folder")):
            if not getattr(self, name):
                raise ConfigError(name, f"required: {what}")
        for name, ok, expected in self.rules():
            if not ok:
                raise ConfigError(name, expected, getattr(self, name))

    def rules(self) -> list[tuple[str, bool, str]]:
        """(field, whether its value is usable, what is expected); ranges the types alone cannot say."""
        share = "expected a probability between 0 and 1"
        return [
            ("encoder_depth", self.encoder_depth is None or 1 <= self.encoder_depth <= 5, "expected 1 to 5"),
            ("size", self.size >= 32 and self.size % 32 == 0, "expected a multiple of 32 pixels, e.g. 448"),
            ("epochs", self.epochs >= 1, "expected at least 1"),
            ("batch_size", self.batch_size >= 1, "expected at least 1"),
            ("lr", self.lr > 0, "expected a learning rate above 0, e.g. 1e-4"),
            ("weight_decay", self.weight_decay >= 0, "expected 0 or more"),
            ("gamma", 0 <= self.gamma <= 1, "expected a weight between 0 and 1"),
            ("alpha", 0 <= self.alpha <= 1, "expected a weight between 0 and 1"),
            ("pos_weight", self.pos_weight is None or self.pos_weight > 0, "expected a weight above 0"),
            ("val_fraction", 0 <= self.val_fraction < 1, "expected a share from 0 up to (not including) 1"),
            ("patience", self.patience >= 0, "expected 0 (never stop early) or more"),
            ("clip_grad", self.clip_grad >= 0, "expected 0 (off) or a norm above 0"),
            ("ema", 0 <= self.ema < 1, "expected a decay from 0 (off) up to (not including) 1, e.g. 0.998"),
            ("max_train_minutes", self.max_train_minutes >= 0, "expected 0 (no limit) or more"),
            (
                "device",
                re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
                "expected auto, cpu or cuda[:N]",
            ),
            ("threads", self.threads >= 0, "expected 0 (library default) or more"),
            ("workers", self.workers >= 0, "expected 0 (load in the training process) or more"),
            ("degrade_prob", 0 <= self.degrade_prob <= 1, share),
            ("distractor_prob", 0 <= self.distractor_prob <= 1, share),
            ("source_balance", 0 <= self.source_balance <= 1, "expected a power between 0 and 1, e.g. 0.5"),
            ("max_batches", self.max_batches >= 0, "expected 0 (all) or more"),
            ("distill_weight", self.distill_weight >= 0, "expected 0 (labels only) or more"),
            ("consistency_weight", self.consistency_weight >= 0, "expected 0 (off) or more"),
            (
                "teacher_maps",
                self.teacher_maps is None or Path(self.teacher_maps).is_dir(),
                "expected the folder `crackseg teach --out` wrote",
            ),
        ]

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes`, converted and checked as when the config is made (pydantic's `model_copy`
        would skip both)."""
        return type(self)(**{**dict(self), **changes})

    def to_dict(self) -> dict:
        """Plain JSON values (tuples as lists), as saved in run.json and last.pt."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: Mapping) -> TrainConfig:
        """From setting names (dashes or underscores) to values; an unknown name is refused, naming it."""
        return cls(**{str(key).replace("-", "_"): value for key, value in values.items()})

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """From a YAML or JSON file of `crackseg train`'s options, `overrides` on top."""
        values = read_options_file(path)
        return labelled(lambda: cls.from_dict({**values, **overrides}), {name: f"{path}: {name}" for name in values})

    @classmethod
    def from_run(cls, out: str | os.PathLike, **overrides) -> TrainConfig:
        """The config of the run in `out` (from its last.pt) set to resume it, `overrides` on top."""
        saved = saved_options(Path(out))
        if not saved:
            raise TrainingError(f"{out}: no run to resume (neither last.pt nor run.json holds its settings)")
        return cls.from_dict({**saved, "out": str(out), **overrides, "resume": True})


OPTIONS = [name for name in TrainConfig.model_fields if name not in PYTHON_ONLY]


def check_names(values: Mapping, known: list[str]) -> None:
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(name, "unknown option" + (f" (did you mean {close[0]!r}?)" if close else ""))


def labelled(make: Callable, labels: Mapping[str, str]):
    """make(), with a ConfigError's setting renamed as its user wrote it (--batch-size, or FILE: batch_size)."""
    try:
        return make()
    except ConfigError as err:
        if err.name not in labels:
            raise
        raise ConfigError(labels[err.name], err.problem, err.value) from None


def read_options_file(path: str | os.PathLike) -> dict:
    """The options in a YAML or JSON file (JSON is YAML), named as on the command line, dashes or underscores."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the config file ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected option names with values, e.g. 'lr: 1e-3', one per line")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    labelled(lambda: check_names(values, OPTIONS), {name: f"{path}: {name}" for name in values})
    return values


def saved_options(out: Path) -> dict:
    """The settings of the run in `out`: from its last.pt (memory-mapped: the weights stay unread), else from the
    run.json written at its start (a run stopped in its first epoch); empty when neither holds them."""
    if (out / "last.pt").is_file():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True, mmap=True)
        # "args": a checkpoint from before TrainConfig, which also saved argparse's own entries
        return state.get("config") or {k: v for k, v in state["args"].items() if k in TrainConfig.model_fields}
    if (out / "run.json").is_file():
        return json.loads((out / "run.json").read_text()).get("config", {})
    return {}
