"""The `crackseg` command: argparse sub-commands that parse, build options, call one function and print.

One module per group of commands (`data`, `predict`, `measure`, `serve`); the model's flags come from
`options.SegmentOptions`, so every command that runs a model takes the same ones.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crackseg import __version__
from crackseg.errors import CracksegError
from crackseg.extras import require_torch


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command; `command` (the one being run) lets `train` add its options only when
    needed: they come from crackseg.train, whose torch import would slow every other command's start."""
    from crackseg.cli import data, measure, predict, serve

    parser = argparse.ArgumentParser(prog="crackseg", description="Crack segmentation and measurement.")
    parser.add_argument("--version", action="version", version=f"crackseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_parsers(sub, command)
    predict.add_parsers(sub)
    serve.add_parsers(sub)
    measure.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        if command == "train":  # its options come from the train extra: say it is missing before parsing
            require_torch("crackseg train")
        args = build_parser(command).parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CracksegError, OSError) as err:  # the user's to fix; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
