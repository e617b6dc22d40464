"""What every command that runs a model shares: its flags (from SegmentOptions), building the segmenter, and the
end of a batch job."""

from __future__ import annotations

import argparse
import sys

from crackseg.options import SegmentOptions, add_arguments


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a whole number of at least 1")
    return value


def add_model_arguments(p: argparse.ArgumentParser, described: dict[str, str] | None = None) -> None:
    """--weights/--model and one flag per SegmentOptions field (--tile, --threshold, --backend, ...); `described`:
    field → the help of a command that gives the flag its own default."""
    p.add_argument("--weights", help="a trained model: model.safetensors, its folder, or a run folder")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    add_arguments(p, SegmentOptions, described=described)


def model_name(args) -> str | None:
    from pathlib import Path

    return Path(args.weights) if args.weights else args.model


def segmenter_from_args(args, options: SegmentOptions | None = None, **option_values):
    """The command's segmenter, through the one constructor, with the options the command built (else built from
    `args` here); says which engine runs."""
    from crackseg.inference import CrackSegmenter

    options = (options or SegmentOptions.from_args(args)).replace(**option_values)
    segmenter = CrackSegmenter.from_pretrained(model_name(args), options)
    print(f"model {segmenter.config.name or args.weights or args.model}; {segmenter.describe()}", file=sys.stderr)
    return segmenter


def add_cluster_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on Dask: local[:N] (N worker processes of one thread here; default N: the cores) or a "
        "scheduler's tcp://HOST:PORT (its workers must see the inputs and -o at the same paths)",
    )


def check_cluster_address(args) -> None:
    """Refuse a malformed --cluster before anything is made or loaded."""
    if args.cluster:
        from crackseg.runs.cluster import local_workers

        local_workers(args.cluster)


def model_on_cluster(args, client, options: SegmentOptions | None = None):
    """The model of the command for `client`'s workers, each of which builds it once; says which engine runs."""
    from crackseg.runs.cluster import ModelSpec, load_model

    model = ModelSpec.find(model_name(args), options or SegmentOptions.from_args(args))
    engine, workers = load_model(client, model), len(client.nthreads())
    name = args.weights or args.model or model.weights.parent.name
    print(f"model {name}; {engine}; on {workers} Dask workers", file=sys.stderr)
    return model


def report(failures: list[str], summary: str) -> int:
    """A batch job's end: each failed input on stderr, the summary on stdout; exit status 1 if any failed."""
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(summary)
    return 1 if failures else 0
