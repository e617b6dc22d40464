"""`crackseg train`'s command line, the only part of training that sees argparse.

Its flags are made from TrainConfig's fields, so a new setting is a new flag without a second list to keep in step;
the CLI adds them only for `crackseg train`, since this package imports torch.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from crackseg.train.config import OPTIONS, TrainConfig, TrainingError, labelled, read_options_file, saved_options


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`crackseg train`'s flags: one per TrainConfig field (but the Python-only ones), and --config.

    Every default is SUPPRESS, so the parsed namespace holds just the flags given, as text: `config_from_args`
    lays them over the file's values and TrainConfig converts and checks both alike.
    """
    a = parser.add_argument
    a("--config", default=argparse.SUPPRESS, help="YAML or JSON file of option values (command-line flags override it)")
    for name in OPTIONS:
        setting = TrainConfig.model_fields[name]
        a("--" + name.replace("_", "-"), default=argparse.SUPPRESS, help=_help(setting), **_argument_kind(setting))
    return parser


def _argument_kind(setting: FieldInfo) -> dict:
    kind = _value_type(setting.annotation)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}  # --no-X turns off what a file or the saved run set
    if typing.get_origin(kind) is list:
        return {"nargs": "+"}
    if typing.get_origin(kind) is typing.Literal:
        return {"metavar": "{" + ",".join(typing.get_args(kind)) + "}"}
    return {}


def _value_type(annotation):
    """The type of a setting's value, without its validators and None: `list[str]` for `Folders | None`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _value_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return _value_type(next(arg for arg in typing.get_args(annotation) if arg is not type(None)))
    return annotation


def _help(setting: FieldInfo) -> str:
    default = setting.get_default(call_default_factory=True)
    text = setting.description or ""
    if default is None or default is False or default in ("", [], {}):
        return text
    shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})".lstrip()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a `crackseg train` command line: defaults, under the run's saved settings (--resume, when
    --out holds one), under the --config file, under the flags given. An error names the flag or file key."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    path = getattr(args, "config", None)
    from_file = read_options_file(path) if path else {}
    chosen = {**from_file, **flags}
    if chosen.get("resume") is True and chosen.get("out"):
        saved = saved_options(Path(chosen["out"]))
        if not saved:
            raise TrainingError(f"--resume: no run to resume in {chosen['out']} (no last.pt or run.json there)")
        chosen = {**saved, **chosen}
    labels = {name: f"--{name.replace('_', '-')}" for name in OPTIONS}
    labels.update({name: f"{path}: {name}" for name in from_file if name not in flags})
    return labelled(lambda: TrainConfig.from_dict(chosen), labels)
