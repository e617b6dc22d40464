"""Training as plain functions, as in torchvision's references/segmentation: a `TrainConfig` holds every setting,
`train(config)` runs it, and only the command line's bridge at the bottom of this file sees argparse.

    from crackseg.train import TrainConfig, train
    result = train(TrainConfig(data=["../shared/data"], out="runs/x", epochs=2))

`train` sets up the data, model, optimiser, EMA and DDP (`set_up`), then loops `train_one_epoch` / `validate`,
records each epoch (history, best) and saves after every one: ``last.pt`` (everything needed to resume, the config
included), ``best/`` (a crackseg model: safetensors + config.json), ``history.csv`` and ``loss_curve.png``;
``run.json`` (config, versions, data) is written at the start. Under ``torchrun`` it trains with
DistributedDataParallel and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import math
import os
import platform
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from crackseg import __version__
from crackseg.data import (
    BatchBlockSampler,
    CrackDataset,
    EpochSeededDataset,
    find_all_pairs,
    source_weights,
    split_pairs,
    train_transform,
)
from crackseg.engines.torch_engine import cpu_has_bf16_matrix_engine
from crackseg.errors import CracksegError, InputError, InputTypeError
from crackseg.io.atomic import atomic_write_bytes
from crackseg.losses import ALPHA_SCHEDULES, LOSSES, alpha_at, build_loss
from crackseg.metrics import THRESHOLDS, best_threshold, scores, source_mean_f1_curve, sweep_counts
from crackseg.models import ModelConfig, build_model, save_model
from crackseg.pretrained import matching_tensors, normalization

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_iou", "val_f1", "val_ods", "val_f1_sources", "threshold", "alpha", "lr",
    "seconds",
]  # fmt: skip


class TrainingError(CracksegError, RuntimeError):
    """Training cannot go on; the message says why and where the last good checkpoint is."""


class ConfigError(InputError):
    """A training setting that cannot be used; the message starts with the setting's name."""

    def __init__(self, name: str, problem: str, value=MISSING):
        super().__init__(f"{name}{'' if value is MISSING else f' {value!r}'}: {problem}")
        self.name, self.problem, self.value = name, problem, value


# --- the config ---------------------------------------------------------------------------------------------

CHOICES = {
    "optimizer": ("adam", "adamw", "sgd"),
    "lr_schedule": ("none", "cosine", "plateau"),
    "loss": LOSSES,
    "alpha_schedule": ALPHA_SCHEDULES,
    "select": ("loss", "f1", "ods", "sources"),
    "threshold_by": ("pooled", "sources"),
    "precision": ("auto", "fp32", "bf16"),
}


def setting(default=None, help: str = "", *, factory=None, cli: bool = True):
    """A TrainConfig field; `help` is its --help text, `cli=False` keeps it off the command line (Python only)."""
    metadata = {"help": help, "cli": cli}
    return field(default_factory=factory, metadata=metadata) if factory else field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, with `crackseg train`'s defaults (the original project's: PSPNet-ResNet18,
    448 crops, Adam 1e-4, batch 8, 50 epochs, BC loss γ = 0.5, linear α).

    Values are converted to each field's type and checked when the config is made (also by
    `dataclasses.replace`), so "1e-3" from a YAML file becomes 0.001; a value that cannot be used raises
    ConfigError naming the field. `from_file` and `from_run` read a YAML/JSON file and a run's saved config.
    """

    data: list[str] = setting(help="one or more data roots (test splits are left out)", factory=list)
    out: str = setting("", "run directory")
    val_data: list[str] | None = setting(None, "validation roots; default: a split carved from --data")
    arch: str = setting("pspnet", "any segmentation-models-pytorch architecture (pspnet, unet, fpn, ...)")
    encoder: str = setting("resnet18")
    encoder_depth: int | None = setting(None, "encoder stages, 1 to 5 (default: the architecture's)")
    arch_kwargs: dict = setting(
        help="extra smp arguments as JSON, e.g. '{\"decoder_channels\": [128, 64, 32, 16]}'", factory=dict
    )
    init_from: str | None = setting(None, "start from a trained crackseg model's weights (fine-tuning)")
    encoder_weights: str | None = setting(
        None,
        "none; imagenet (offline from an installed weights package for timm-tf_efficientnet_lite0/1/2, else "
        "downloaded); or the path of a state dict in the encoder's own naming",
    )
    size: int = setting(448, "training crop size")
    epochs: int = setting(50)
    batch_size: int = setting(8)
    optimizer: str = setting("adam")
    lr: float = setting(1e-4)
    weight_decay: float = setting(0.0)
    lr_schedule: str = setting("none")
    loss: str = setting("bc")
    gamma: float = setting(0.5, "weight of WCE against generalised Dice in the BC loss")
    alpha_schedule: str = setting("linear")
    alpha: float = setting(0.5, "α of the constant schedule")
    pos_weight: float | None = setting(None, "fixed crack weight of WCE (default: batch ratio)")
    val_fraction: float = setting(0.1, "share of each source's photos held out")
    split_seed: int = setting(0, "seed of the validation split (apart from --seed: a fine-tune keeps its split)")
    select: str = setting(
        "loss",
        "which validation number picks the best epoch: loss, F1 at 0.5, F1 at the best threshold (ODS), or "
        "sources: the mean over the data's sources of each source's F1 at that threshold (every surface counts "
        "the same, however many photos it has)",
    )
    threshold_by: str = setting(
        "pooled",
        "the threshold stored with the model: where the pooled validation F1 peaks (ODS), or where the mean of "
        "the per-source F1s peaks (a large source no longer decides it alone); val_f1_sources is taken there",
    )
    patience: int = setting(0, "stop after this many epochs without improvement (0: never)")
    clip_grad: float = setting(0.0, "clip the gradient norm to this (0: off)")
    ema: float = setting(
        0.0,
        "decay of an exponential moving average of the weights, updated every step, that is validated and "
        "saved instead of the raw weights (e.g. 0.998; 0: off)",
    )
    max_train_minutes: float = setting(0.0, "stop cleanly after this much wall-clock time (0: no limit)")
    precision: str = setting("auto")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads for torch (0: library default)")
    workers: int = setting(1, "data-loading worker processes")
    light_augment: bool = setting(False, "geometric augmentation only (no colour, blur, noise)")
    degrade_prob: float = setting(0.0, "probability of the paper's degradation as augmentation")
    degrade_scale: tuple[float, ...] = setting((2.0, 4.0), "down-scaling factors the degradation draws from")
    scale_range: tuple[float, float] = setting(
        (0.7, 1.3),
        "LOW,HIGH: the random scale factor of training photos (below 1: thinner cracks, as in wide frames)",
    )
    distractor_prob: float = setting(
        0.0, "share of training crops given generated non-cracks (straight dark lines, road markings, stains)"
    )
    source_balance: float = setting(
        0.0,
        "draw each source's pairs with weight 1/count^P: 0 keeps the data's mix, 0.5 gives each source a share "
        "proportional to the square root of its size, 1 gives every source the same share",
    )
    teacher_maps: str | None = setting(
        None, "folder of a teacher's probability maps (crackseg teach): also learn them as soft targets"
    )
    distill_weight: float = setting(0.5, "weight of the soft-target term (BCE to the teacher's map)")
    seed: int = setting(0)
    skip_unpaired: bool = setting(False, "go on without images that have no mask")
    resume: bool = setting(False, "continue the run in --out from its last.pt, with its saved options (given ones win)")
    overwrite: bool = setting(False, "start afresh even if --out holds a run")
    # Python only: short epochs for tests and timing, not a production option.
    max_batches: int = setting(0, "training batches per epoch at most (0: all)", cli=False)

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, convert(f.name, f.type, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        for name, what in (("data", "one or more data folders"), ("out", "the run folder")):
            if not getattr(self, name):
                raise ConfigError(name, f"required: {what}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(name, f"expected one of {', '.join(choices)}", getattr(self, name))
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
            (
                "teacher_maps",
                self.teacher_maps is None or Path(self.teacher_maps).is_dir(),
                "expected the folder `crackseg teach --out` wrote",
            ),
        ]

    def to_dict(self) -> dict:
        """Plain JSON values (tuples as lists), as saved in run.json and last.pt."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping) -> TrainConfig:
        """From setting names (dashes or underscores) to values; an unknown name is refused, naming it."""
        values = {str(key).replace("-", "_"): value for key, value in values.items()}
        check_names(values, [f.name for f in fields(cls)])
        return cls(**values)

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


def convert(name: str, kind: str, value):
    """`value` as the field type `kind` (its annotation, as text: this module imports annotations from __future__);
    "none" or "" is None for an optional field."""
    if kind.endswith(" | None"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        kind = kind.removesuffix(" | None")
    function, expected = CONVERTERS[kind]
    try:
        return function(value)
    except (TypeError, ValueError, KeyError, CracksegError):
        raise ConfigError(name, f"expected {expected}", value) from None


def _text(value) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(value)
    return str(value)


def _whole(value) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(value)
    return int(value)


def _number(value) -> float:
    if isinstance(value, bool):
        raise TypeError(value)
    number = float(value)  # YAML reads 1e-3 (no dot) as the text "1e-3"
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _flag(value) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    return value if isinstance(value, bool) else words[str(value).strip().lower()]


def _texts(value) -> list[str]:
    return [_text(value)] if isinstance(value, (str, os.PathLike)) else [_text(v) for v in value]


def _mapping(value) -> dict:
    value = json.loads(value) if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise TypeError(value)
    return dict(value)


def _numbers(value) -> list:
    return [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value)


def _scale_range(value) -> tuple[float, float]:
    low, high = (_number(v) for v in _numbers(value))
    if not 0 < low <= high:
        raise ValueError(value)
    return low, high


def _degrade_scales(value) -> tuple[float, ...]:
    from crackseg.degrade import parse_scale

    scales = tuple(parse_scale(v) for v in _numbers(value))  # "x4", "×4" and "4" alike, as `evaluate --degrade`
    if not scales:
        raise ValueError(value)
    return scales


CONVERTERS = {
    "str": (_text, "text"),
    "int": (_whole, "a whole number"),
    "float": (_number, "a number"),
    "bool": (_flag, "true or false"),
    "list[str]": (_texts, "a folder or a list of folders"),
    "dict": (_mapping, 'a mapping (JSON on the command line), e.g. {"decoder_channels": [128, 64, 32, 16]}'),
    "tuple[float, float]": (_scale_range, "two factors LOW,HIGH with 0 < LOW <= HIGH, e.g. 0.4,1.3"),
    "tuple[float, ...]": (_degrade_scales, "factors of at least 1, e.g. 2,4"),
}


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


OPTIONS = [f.name for f in fields(TrainConfig) if f.metadata["cli"]]


# --- set-up -------------------------------------------------------------------------------------------------


def distributed_rank() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"device {requested!r}: no CUDA device is available here; use cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}" if requested == "cuda" else requested)
    return torch.device("cpu")


def pick_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matrix_engine() else "fp32"


def memory_format(precision: str) -> torch.memory_format:
    """channels_last pays off with bf16 matrix engines; on AVX2-only CPUs it slows fp32 convolutions down."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_datasets(config: TrainConfig) -> tuple[EpochSeededDataset, CrackDataset, dict]:
    """The training set (augmented, seeded per epoch and item), the validation set (full-size) and a summary."""
    pairs = find_all_pairs(config.data, config.skip_unpaired, exclude_splits=("test",))
    if config.val_data:
        train_pairs, val_pairs = pairs, find_all_pairs(config.val_data, config.skip_unpaired)
    else:
        train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.split_seed)
    if not val_pairs:
        raise TrainingError("the validation split came out empty; add data, raise val_fraction or pass val_data")
    transform = train_transform(config.size, not config.light_augment, config.distractor_prob, config.scale_range)
    mean, std = input_normalization(config)
    extra = make_degradation(config.degrade_prob, config.degrade_scale)
    train_set = EpochSeededDataset(
        CrackDataset(train_pairs, transform, mean, std, extra=extra, soft_dir=config.teacher_maps), config.seed
    )
    val_set = CrackDataset(val_pairs, mean=mean, std=std)
    summary = {
        "train": {"pairs": len(train_pairs), "sources": _count_sources(train_pairs)},
        "val": {"pairs": len(val_pairs), "sources": _count_sources(val_pairs)},
        "val_names": [str(p.image) for p in val_pairs],
    }
    return train_set, val_set, summary


def make_degradation(prob: float, scales: tuple[float, ...]):
    """The paper's degradation as augmentation, or None (TrainConfig has checked both values)."""
    if prob <= 0:
        return None
    from crackseg.degrade import RandomDegradation

    return RandomDegradation(prob, scales)


def input_normalization(config: TrainConfig) -> tuple[tuple, tuple]:
    """The mean/std the network's inputs are normalised with: those of the model it starts from, or of its
    encoder's pretrained weights (ImageNet's for a random start, as before)."""
    if config.init_from:
        from crackseg.model_config import read_config, resolve_weights

        saved = read_config(resolve_weights(config.init_from))
        return saved.mean, saved.std
    return normalization(config.encoder, config.encoder_weights)


def _count_sources(pairs) -> dict[str, int]:
    return dict(sorted(Counter(p.source for p in pairs).items()))


def make_loaders(train_set, val_set, config: TrainConfig, rank: int, world: int):
    """Process `rank` of `world` loads its part of every global batch, and every world-th validation image."""
    if config.batch_size % world:
        raise TrainingError(f"batch_size {config.batch_size} must be a multiple of the {world} processes")
    weights = source_weights([p.source for p in train_set.dataset.pairs], config.source_balance)
    sampler = BatchBlockSampler(len(train_set), config.batch_size, config.seed, rank, world, weights)
    common = {"num_workers": config.workers, "persistent_workers": False}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size // world, sampler=sampler, drop_last=True, **common
    )
    if len(train_loader) == 0:
        raise TrainingError(
            f"{len(train_set)} training pairs make no full batch of {config.batch_size}; lower batch_size"
        )
    val_sampler = torch.utils.data.DistributedSampler(val_set, world, rank, shuffle=False) if world > 1 else None
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=1, sampler=val_sampler, **common)
    return train_loader, val_loader


def make_model(config: TrainConfig, device: torch.device, precision: str, rank: int) -> torch.nn.Module:
    model = build_model(
        config.arch, config.encoder, config.encoder_weights, encoder_depth=config.encoder_depth, **config.arch_kwargs
    ).to(device, memory_format=memory_format(precision))
    if config.init_from and not config.resume:  # a resumed run has its own weights
        skipped = init_from(model, config.init_from)
        if skipped:
            say(rank, f"init_from {config.init_from}: {len(skipped)} tensors kept random (no match): {skipped[:4]}")
    return model


def init_from(model: torch.nn.Module, path: str) -> list[str]:
    """Copy the weights of a trained model whose names and shapes match; return the names left as they were.

    A model of another decoder width (or head) still starts from the trained encoder this way. Nothing matching
    at all is an error: it means the wrong model was named.
    """
    from crackseg.models import load_model

    matching, skipped = matching_tensors(load_model(path)[0].state_dict(), model.state_dict())
    if not matching:
        raise TrainingError(f"init_from {path}: no tensor matches this architecture; pass a model of the same family")
    model.load_state_dict(matching, strict=False)
    return skipped


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    return None


def step_scheduler(scheduler, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def make_ema(model: torch.nn.Module, decay: float):
    """An averaged copy of the model (parameters and BatchNorm statistics), as in torchvision's references."""
    if not decay:
        return None
    multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)


def distribute(model: torch.nn.Module, device: torch.device, world: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the network whose weights are saved, what the training step calls): under DDP, its wrapper."""
    if world == 1:
        return model, model
    if device.type == "cuda":  # SyncBatchNorm runs on GPUs only; on CPU each process keeps its own statistics
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, torch.nn.parallel.DistributedDataParallel(model)


@dataclass
class Run:
    """What `set_up` builds: the objects an epoch needs, and how far the run has got."""

    out: Path
    rank: int
    world: int
    device: torch.device
    precision: str
    model: torch.nn.Module  # the network whose weights are checkpointed
    trained: torch.nn.Module  # what the training step calls: `model`, or its DDP wrapper
    ema: torch.optim.swa_utils.AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: Callable
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    summary: dict
    history: list[dict] = field(default_factory=list)
    best: dict | None = None

    @property
    def epochs_done(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, and so the ones saved as the best model."""
        return self.model if self.ema is None else self.ema.module


def set_up(config: TrainConfig, rank: int, world: int, loss_fn: Callable | None = None) -> Run:
    """Everything a run needs, restored from its last.pt when resuming. The order of the random draws (data,
    model initialisation) is that of earlier versions, so a seed gives the run it gave before."""
    out = Path(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    precision = pick_precision(config.precision, device)
    if rank == 0:
        prepare_run_dir(out, config.resume, config.overwrite)
    seed_everything(config.seed)
    train_set, val_set, summary = make_datasets(config)
    train_loader, val_loader = make_loaders(train_set, val_set, config, rank, world)
    model = make_model(config, device, precision, rank)
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.epochs)
    state = load_checkpoint(out / "last.pt") if config.resume and (out / "last.pt").exists() else None
    if state is not None:
        restore_weights(config, state, out, model, optimizer, scheduler)
    run = Run(
        out=out,
        rank=rank,
        world=world,
        device=device,
        precision=precision,
        model=model,
        trained=model,
        ema=make_ema(model, config.ema),  # after a resume without an average so far: from the resumed weights
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn or build_loss(config.loss, config.gamma, config.pos_weight),
        train_loader=train_loader,
        val_loader=val_loader,
        summary=summary,
    )
    if state is not None:
        restore_progress(run, state)
    run.model, run.trained = distribute(model, device, world)
    if rank == 0:
        write_run_info(out, config, summary, device, precision, world)
    return run


def restore_weights(config: TrainConfig, state: dict, out: Path, model, optimizer, scheduler) -> None:
    check_same_network(config, state, out)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])


def restore_progress(run: Run, state: dict) -> None:
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.history, run.best = state["history"], state["best"]
    torch.set_rng_state(state["torch_rng"])
    say(run.rank, f"resuming {run.out} after epoch {state['epoch']}")


def check_same_network(config: TrainConfig, state: dict, out: Path) -> None:
    """A resumed run must build the network it saved; otherwise loading the weights fails with torch's long error."""
    saved = state.get("config") or state.get("args", {})  # "args": checkpoints from before TrainConfig
    for name in ("arch", "encoder", "encoder_depth", "arch_kwargs"):
        if name in saved and saved[name] != getattr(config, name):
            raise TrainingError(
                f"resume: {out / 'last.pt'} was trained with {name} {saved[name]!r}, not {getattr(config, name)!r}; "
                "resume with the run's own settings (leave them out: they are restored)"
            )


# --- the two stages -----------------------------------------------------------------------------------------


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; `fit` adds where the last good checkpoint is."""


def train_one_epoch(
    model: torch.nn.Module,
    loader,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    *,
    alpha: float,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    ema=None,
    clip_grad: float = 0.0,
    epoch: int = 0,
    max_batches: int = 0,
    deadline: float = math.inf,
    quiet: bool = True,
    distill_weight: float = 0.0,
) -> float:
    """One pass over `loader` (at most `max_batches` batches when above 0, or until the time.time() `deadline`);
    returns the mean training loss over every process. `alpha` weighs the boundary term of the BC loss."""
    model.train()
    device = torch.device(device)
    total, count = 0.0, 0
    interval = 0.1 if sys.stderr.isatty() else 30  # without a terminal (logs, nohup) the bar reports every 30 s
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=quiet, mininterval=interval)
    for step, batch in enumerate(bar):
        image = batch["image"].to(device).contiguous(memory_format=memory_format(precision))
        mask, sdf = batch["mask"].to(device), batch["sdf"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(image)
        loss = loss_fn(logits.float(), mask, sdf, alpha)
        if "soft" in batch:
            soft = batch["soft"].to(device)
            loss = loss + distill_weight * F.binary_cross_entropy_with_logits(logits.float(), soft)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * image.shape[0]
        count += image.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        if (max_batches and step + 1 >= max_batches) or time.time() > deadline:
            break
    return _all_reduce_mean(total, count, device)


@torch.no_grad()
def validate(
    model: torch.nn.Module, loader, loss_fn: Callable, *, alpha: float, device="cpu", precision: str = "fp32"
) -> tuple[float, dict[str, np.ndarray]]:
    """Validation loss, and per source the sweep counts over thresholds (dataset level) of full-size predictions.

    Its own forward pass rather than CrackSegmenter's: it needs the loss besides the probabilities, each DDP process
    takes its share of the images, and the network must stay on the training's device and memory format (the
    engine would switch an fp32 model to channels_last, which slows fp32 training on AVX2 CPUs). For an image no
    larger than the tile (the training size), this is the engine's own single-pass path: one forward pass of the
    whole image, padded to the stride by the network, in the same bf16 autocast. Larger images are taken whole
    here, where `crackseg evaluate` tiles them and blends the tiles, so on those its figures can differ slightly.
    """
    model.eval()
    device = torch.device(device)
    total, count = 0.0, 0
    sources = sorted({pair.source for pair in loader.dataset.pairs})
    counts = {source: np.zeros((len(THRESHOLDS), 4)) for source in sources}  # a rank may not see every source
    for batch in loader:
        image = batch["image"].to(device).contiguous(memory_format=memory_format(precision))
        mask, sdf = batch["mask"].to(device), batch["sdf"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(image)
        total += loss_fn(logits.float(), mask, sdf, alpha).item()
        count += 1
        prob = torch.sigmoid(logits.float()).cpu().numpy()
        counts[batch["source"][0]] += sweep_counts(prob, mask.cpu().numpy() > 0.5)
    loss = _all_reduce_mean(total, count, device)
    return loss, dict(zip(sources, _all_reduce_array(np.stack([counts[s] for s in sources]), device)))


def _all_reduce_mean(total: float, count: int, device) -> float:
    if dist.is_initialized():
        t = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = t.tolist()
    return total / max(count, 1)


def _all_reduce_array(values: np.ndarray, device) -> np.ndarray:
    if dist.is_initialized():
        t = torch.from_numpy(values).to(device)
        dist.all_reduce(t)
        values = t.cpu().numpy()
    return values


def validation_scores(source_counts: dict[str, np.ndarray], threshold_by: str) -> dict:
    """Dataset-level scores: IoU and F1 at 0.5, ODS F1, and the per-source mean F1 at the stored threshold."""
    counts = sum(source_counts.values())
    at_half = scores(*counts[49])  # threshold 0.50
    threshold, ods_f1 = best_threshold(counts)
    sources_curve = source_mean_f1_curve(source_counts)
    if threshold_by == "sources":
        threshold = float(THRESHOLDS[int(np.argmax(sources_curve))])
    f1_sources = float(sources_curve[int(np.argmin(np.abs(THRESHOLDS - threshold)))])
    return {
        "val_iou": round(at_half["iou"], 6),
        "val_f1": round(at_half["f1"], 6),
        "val_ods": round(ods_f1, 6),
        "val_f1_sources": round(f1_sources, 6),
        "threshold": threshold,
    }


# --- record and save ----------------------------------------------------------------------------------------


def is_better(record: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    if select in ("f1", "ods", "sources"):
        key = {"f1": "val_f1", "ods": "val_ods", "sources": "val_f1_sources"}[select]
        return record[key] > best.get(key, -1.0)  # best from an older history may lack the newer keys
    return record["val_loss"] < best["val_loss"]


def record_epoch(run: Run, record: dict, select: str) -> bool:
    """Add the epoch to the history; True when it is the new best."""
    run.history.append(record)
    improved = is_better(record, run.best, select)
    if improved:
        run.best = dict(record)
    return improved


def save_epoch(run: Run, config: TrainConfig, improved: bool) -> None:
    """The best model (when this epoch is it), last.pt, history.csv and the curves; each file atomically."""
    record = run.history[-1]
    if improved:
        notes = {
            "epoch": record["epoch"],
            "val_f1_at_0.5": record["val_f1"],
            "val_ods_f1": record["val_ods"],
            "split_seed": config.split_seed,
        }
        save_model(run.evaluated, model_config(config, record["threshold"], notes), run.out / "best")
    save_checkpoint(run.out / "last.pt", checkpoint_state(run, config))
    write_history(run.out, run.history)
    plot_curves(run.out, run.history)


def checkpoint_state(run: Run, config: TrainConfig) -> dict:
    return {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "epoch": run.history[-1]["epoch"],
        "history": run.history,
        "best": run.best,
        "torch_rng": torch.get_rng_state(),
        "config": config.to_dict(),
    }


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from; start without resume") from None


def saved_options(out: Path) -> dict:
    """The settings of the run in `out`: from its last.pt (memory-mapped: the weights stay unread), else from the
    run.json written at its start (a run stopped in its first epoch); empty when neither holds them."""
    if (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt", mmap=True)
        names = {f.name for f in fields(TrainConfig)}  # "args": a checkpoint from before TrainConfig
        return state.get("config") or {k: v for k, v in state["args"].items() if k in names}
    if (out / "run.json").is_file():
        return json.loads((out / "run.json").read_text()).get("config", {})
    return {}


def write_history(out: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, HISTORY_FIELDS, restval="")  # histories from before val_ods lack it
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "history.csv", buffer.getvalue().encode())


def plot_curves(out: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_score.plot(epochs, [h["val_iou"] for h in history], "o-", label="crack IoU @ 0.5")
    ax_score.plot(epochs, [h["val_f1"] for h in history], "o-", label="crack F1 @ 0.5")
    if all("val_ods" in h for h in history):
        ax_score.plot(epochs, [h["val_ods"] for h in history], "o-", label="crack F1 @ best threshold (ODS)")
    if all(h.get("val_f1_sources") not in (None, "") for h in history):
        ax_score.plot(epochs, [h["val_f1_sources"] for h in history], "o-", label="mean of per-source F1 @ stored t")
    ax_score.set(xlabel="epoch", ylabel="score", title="Validation (dataset level)", ylim=(0, 1))
    ax_score.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out / "loss_curve.png", buffer.getvalue())


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise TrainingError(f"{out}: run directory exists; continue it (--resume) or start afresh (--overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrainingError(f"{out}: cannot write to the run directory ({err.strerror})") from None


def model_config(config: TrainConfig, threshold: float = 0.5, notes: dict | None = None) -> ModelConfig:
    mean, std = input_normalization(config)
    return ModelConfig(
        arch=config.arch,
        encoder=config.encoder,
        encoder_depth=config.encoder_depth,
        arch_kwargs=config.arch_kwargs,
        mean=mean,
        std=std,
        train_size=config.size,
        threshold=threshold,
        name=Path(config.out).name,
        notes=notes or {},
    )


def write_run_info(out: Path, config: TrainConfig, summary: dict, device, precision: str, world: int) -> None:
    info = {
        "config": config.to_dict(),
        "crackseg_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "precision": precision,
        "processes": world,
        "data": summary,
    }
    atomic_write_bytes(out / "run.json", json.dumps(info, indent=2, default=str).encode())


def format_record(r: dict) -> str:
    return (
        f"epoch {r['epoch']:3d}  train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  IoU {r['val_iou']:.3f}  "
        f"F1 {r['val_f1']:.3f}  ODS {r['val_ods']:.3f}  "
        f"per-source F1 {r['val_f1_sources']:.3f} @ {r.get('threshold', 0):.2f}  "
        f"α {r['alpha']:.2f}  lr {r['lr']:.2e}  {r['seconds']:.0f}s"
    )


def say(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


# --- the loop -----------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What `train` returns: where the run and its best model are, its history and its best epoch's record."""

    run_dir: Path
    best_model_dir: Path
    history: list[dict]
    best: dict | None


def train(config: TrainConfig, *, loss_fn: Callable | None = None) -> RunResult:
    """Train as `config` says, from Python or `crackseg train` alike (also under torchrun).

    `loss_fn(logits, mask, sdf, alpha) -> scalar tensor`, when given, replaces the loss `config.loss` names.
    """
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"train() takes a TrainConfig, not {type(config).__name__}; see TrainConfig.from_dict")
    rank, world = distributed_rank()
    try:
        run = set_up(config, rank, world, loss_fn)
        say(
            rank,
            f"training {config.arch}-{config.encoder} on {run.summary['train']['pairs']} pairs, validating on "
            f"{run.summary['val']['pairs']}; {run.device} {run.precision}, {world} process(es)",
        )
        fit(run, config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return RunResult(run.out, run.out / "best", run.history, run.best)


def fit(run: Run, config: TrainConfig) -> None:
    """The epochs from where the run is to `config.epochs`, or until patience or the time limit stops them."""
    deadline = time.time() + config.max_train_minutes * 60 if config.max_train_minutes else math.inf
    stale = run.history[-1]["epoch"] - run.best["epoch"] if run.best else 0  # epochs since the best, when resuming
    try:
        for epoch in range(run.epochs_done, config.epochs):
            record = run_epoch(run, config, epoch, deadline)
            improved = record_epoch(run, record, config.select)
            stale = 0 if improved else stale + 1
            if run.rank == 0:
                save_epoch(run, config, improved)
            say(run.rank, format_record(record) + ("  *best" if improved else ""))
            if config.patience and stale >= config.patience:
                say(run.rank, f"no improvement for {config.patience} epochs: stopping early")
                break
            if time.time() + record["seconds"] > deadline:
                say(run.rank, f"the time limit of {config.max_train_minutes:g} min is reached after epoch {epoch + 1}")
                break
    except NonFiniteLoss as err:
        raise TrainingError(
            f"{err}; stopped. The last good checkpoint is kept in {run.out}; try a lower lr or clip_grad"
        ) from None
    except KeyboardInterrupt:
        say(run.rank, f"interrupted; {run.out / 'last.pt'} holds the last finished epoch: continue with resume")
        raise


def run_epoch(run: Run, config: TrainConfig, epoch: int, deadline: float) -> dict:
    """Train one epoch, validate the weights that would be saved, step the schedule; the epoch's record."""
    started = time.time()
    run.train_loader.dataset.epoch = epoch
    run.train_loader.sampler.set_epoch(epoch)
    alpha = alpha_at(config.alpha_schedule, epoch, config.epochs, config.alpha)
    common = {"alpha": alpha, "device": run.device, "precision": run.precision}
    train_loss = train_one_epoch(
        run.trained, run.train_loader, run.loss_fn, run.optimizer, **common, ema=run.ema, clip_grad=config.clip_grad,
        epoch=epoch, max_batches=config.max_batches, deadline=deadline, quiet=run.rank != 0,
        distill_weight=config.distill_weight,
    )  # fmt: skip
    val_loss, source_counts = validate(run.evaluated, run.val_loader, run.loss_fn, **common)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
    step_scheduler(run.scheduler, val_loss)
    return {
        "epoch": epoch + 1,
        "train_loss": round(train_loss, 6),
        "val_loss": round(val_loss, 6),
        **validation_scores(source_counts, config.threshold_by),
        "alpha": round(alpha, 4),
        "lr": lr,
        "seconds": round(time.time() - started, 1),
    }


# --- the command line: the only part that sees argparse -----------------------------------------------------
# Here rather than in cli.py: the flags are generated from TrainConfig's fields, so a new setting is a new flag
# without a second list to keep in step, and cli.py adds them only for `crackseg train` (this module imports torch).


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`crackseg train`'s flags: one per TrainConfig field (but the Python-only ones), and --config.

    Every default is SUPPRESS, so the parsed namespace holds just the flags given, as text: `config_from_args`
    lays them over the file's values and TrainConfig converts and checks both alike.
    """
    a = parser.add_argument
    a("--config", default=argparse.SUPPRESS, help="YAML or JSON file of option values (command-line flags override it)")
    for f in fields(TrainConfig):
        if f.metadata["cli"]:
            a("--" + f.name.replace("_", "-"), default=argparse.SUPPRESS, help=_help(f), **_argument_kind(f))
    return parser


def _argument_kind(f) -> dict:
    if f.type == "bool":
        return {"action": argparse.BooleanOptionalAction}  # --no-X turns off what a file or the saved run set
    if f.type.startswith("list["):
        return {"nargs": "+"}
    return {"metavar": "{" + ",".join(CHOICES[f.name]) + "}"} if f.name in CHOICES else {}


def _help(f) -> str:
    default = f.default if f.default_factory is MISSING else f.default_factory()
    if default is None or default is False or default in ("", [], {}):
        return f.metadata["help"]
    shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
    return f"{f.metadata['help']} (default: {shown})".lstrip()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a `crackseg train` command line: defaults, under the run's saved settings (--resume, when
    --out holds one), under the --config file, under the flags given. An error names the flag or file key."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    path = getattr(args, "config", None)
    from_file = read_options_file(path) if path else {}
    chosen = {**from_file, **flags}
    if chosen.get("resume") is True and chosen.get("out"):
        chosen = {**saved_options(Path(chosen["out"])), **chosen}
    labels = {name: f"--{name.replace('_', '-')}" for name in OPTIONS}
    labels.update({name: f"{path}: {name}" for name in from_file if name not in flags})
    return labelled(lambda: TrainConfig.from_dict(chosen), labels)
