"""The `crackseg` command: argparse sub-commands that parse, call one function and print."""

from __future__ import annotations

import argparse
import logging
import sys

from crackseg import __version__


def cmd_data(args) -> int:
    from crackseg.data import find_all_pairs, split_pairs, summarize

    pairs = find_all_pairs(args.data, args.skip_unpaired)
    train, val = split_pairs(pairs, args.val_fraction, args.seed)
    val_names = {p.image for p in val}
    print(f"{'source':<14}{'pairs':>7}{'val':>6}{'crack %':>9}")
    for source, entry in summarize(pairs).items():
        n_val = sum(1 for p in pairs if p.source == source and p.image in val_names)
        print(f"{source:<14}{entry['pairs']:>7}{n_val:>6}{100 * entry['crack_fraction']:>9.2f}")
    print(f"{'all':<14}{len(pairs):>7}{len(val):>6}")
    return 0


def cmd_train(args) -> int:
    from crackseg.train import train

    if not args.data or not args.out:
        raise SystemExit("error: train needs --data DIR [DIR ...] and --out RUN_DIR (or both in --config)")
    out = train(args)
    print(f"best model: {out / 'best'}  (use it with --weights {out / 'best'})")
    return 0


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a trained model: model.safetensors, its folder, or a run folder")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    p.add_argument("--tile", type=int, help="tile size for large images (default: the model's training size)")
    p.add_argument("--overlap", type=float, default=0.25, help="overlap between tiles, as a fraction")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--max-pixels", type=float, default=500e6, help="refuse images with more pixels than this")


def make_segmenter(args):
    from crackseg.backends import make_segmenter as build

    return build(
        weights=args.weights,
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        threshold=args.threshold,
        max_pixels=int(args.max_pixels),
    )


def cmd_predict(args) -> int:
    from crackseg.inference import predict_files

    segmenter = make_segmenter(args)
    print(f"model {segmenter.config.name or args.weights or args.model}; {segmenter.describe()}", file=sys.stderr)
    written, failures = predict_files(
        segmenter, args.inputs, args.out, args.prob, args.overlay, args.shard, args.skip_existing
    )
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{written} written, {len(failures)} failed -> {args.out}")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crackseg", description="Crack segmentation and measurement.")
    parser.add_argument("--version", action="version", version=f"crackseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="list the pairs found under data roots, per source, with the split")
    p.add_argument("data", nargs="+")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-unpaired", action="store_true")
    p.set_defaults(func=cmd_data)

    from crackseg.train import add_arguments

    p = sub.add_parser("train", help="train a model")
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment cracks in photos of any size")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    add_model_arguments(p)
    p.add_argument("--prob", action="store_true", help="also write NAME_prob.png (probability × 255)")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.jpg")
    p.add_argument("--shard", help="process the i-th of n slices of the inputs, e.g. 0/4")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose mask is already written")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        from crackseg.train import apply_config_file

        apply_config_file(args, parser, argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
