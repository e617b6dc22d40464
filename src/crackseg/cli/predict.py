"""`crackseg predict`, `crackseg evaluate` and `crackseg export`."""

from __future__ import annotations

import argparse
import sys

from crackseg.cli.common import (
    add_cluster_argument,
    add_model_arguments,
    check_cluster_address,
    model_on_cluster,
    positive_int,
    report,
    segmenter_from_args,
)
from crackseg.options import DEFAULT_BLOCK, MIN_BLOCK


def cmd_predict(args) -> int:
    from crackseg.options import SegmentOptions
    from crackseg.runs.predict import plan_predict, predict_plan

    # The plan (output folder, names, files already there) before the model loads or any photo is read.
    check_cluster_address(args)
    options = SegmentOptions.from_args(args)
    plan = plan_predict(
        args.inputs, args.out, args.prob, args.overlay, args.shard, args.skip_existing, args.overwrite,
        options.photo_limit,
    )  # fmt: skip
    if args.skip_existing and all(item.done("mask") for item in plan.items):
        print(f"0 written: all {len(plan.items)} inputs were done already (--skip-existing) -> {args.out}")
        return 0  # without loading the model
    if args.cluster:
        from crackseg.runs.cluster import cluster_client

        with cluster_client(args.cluster) as client:
            model = model_on_cluster(args, client, options)
            written, failures = predict_plan(model, plan, args.skip_existing, client=client, block=args.block)
    else:
        segmenter = segmenter_from_args(args, options)
        written, failures = predict_plan(segmenter, plan, args.skip_existing, block=args.block)
    return report(failures, f"{written} written, {len(failures)} failed -> {args.out}")


def cmd_evaluate(args) -> int:
    from crackseg.data import DataError, find_all_pairs, split_pairs
    from crackseg.io.atomic import ensure_output_folder
    from crackseg.runs.evaluate import check_report_free, evaluate

    # --split-val carves the validation split exactly as `crackseg train` does (test/ folders left out).
    pairs = find_all_pairs(args.data, args.skip_unpaired, exclude_splits=("test",) if args.split_val else ())
    if args.split_val:
        pairs = split_pairs(pairs, args.val_fraction, args.split_seed)[1]
        if not pairs:
            raise DataError("the validation split of --data is empty (too few photos); drop --split-val")
    ensure_output_folder(args.out)
    check_report_free(args.out, args.overwrite)  # before the model loads
    segmenter = segmenter_from_args(args)
    print(f"{len(pairs)} images", file=sys.stderr)
    result = evaluate(
        segmenter,
        pairs,
        args.out,
        tolerance=args.tolerance,
        cliou=args.cliou,
        protocol=args.protocol,
        n_samples=args.samples,
        seed=args.seed,
        degrade=args.degrade,
        degrade_seed=args.degrade_seed,
        weights=args.weights or args.model,
        data=args.data,
        split="val" if args.split_val else "all",
        overwrite=args.overwrite,
    )
    for condition in ("clean", "degraded"):
        if condition in result:
            s, sweep = result[condition], result[condition]["sweep"]
            cliou = f" | clIoU {s['cliou']['radius']:g} px {s['cliou']['micro']:.3f}" if "cliou" in s else ""
            print(
                f"{condition}: {s['images']} images at threshold {result['threshold']:g}: "
                f"IoU {s['micro']['iou']:.3f} F1 {s['micro']['f1']:.3f} | ODS F1 {sweep['ods_f1']:.3f} "
                f"@ {sweep['ods_threshold']:g}, OIS F1 {sweep['ois_f1']:.3f}, AIU {sweep['aiu']:.3f}{cliou}"
            )
            if "paper" in s:
                paper = s["paper"]
                print(
                    f"{condition}, paper protocol (512×512): ODS F1 {paper['ods_f1']:.3f} @ "
                    f"{paper['ods_threshold']:g}, OIS F1 {paper['ois_f1']:.3f}, mIoU {paper['miou']:.3f}"
                )
    print(f"report -> {args.out}/report.md")
    return 0


def cmd_export(args) -> int:
    from crackseg.engines import export_model

    data, crops = args.calibration_data, args.calibration_crops
    path, summary = export_model(
        args.weights, args.model, args.out, args.tile, args.precision, data, crops, overwrite=args.overwrite
    )
    print(f"wrote {path}: {summary}")
    return 0


def block_side(text: str) -> int:
    value = positive_int(text)
    if value < MIN_BLOCK:
        raise argparse.ArgumentTypeError(f"{value}: blocks of at least {MIN_BLOCK} px a side")
    return value


def add_parsers(sub) -> None:
    from crackseg.data import add_split_arguments
    from crackseg.engines.int8 import CALIBRATION_CROPS

    p = sub.add_parser("predict", help="segment cracks in photos of any size")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    add_model_arguments(p)
    p.add_argument("--prob", action="store_true", help="also write NAME_prob.png (probability × 255)")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.jpg")
    p.add_argument("--shard", help="process the i-th of n slices of the inputs, e.g. 0/4")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose mask is already written (an input without its mask is done again, replacing what "
        "an interrupted run left of it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in -o")
    p.add_argument(
        "--block",
        type=block_side,
        default=DEFAULT_BLOCK,
        metavar="PX",
        help=f"px per block side for rasters segmented in blocks (default {DEFAULT_BLOCK}); with --cluster, each "
        "block is a task",
    )
    add_cluster_argument(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score a model on labelled images and write a report with figures")
    p.add_argument("--data", nargs="+", required=True, help="labelled data folders (images + masks)")
    p.add_argument("-o", "--out", required=True, help="report folder")
    add_model_arguments(p)
    p.add_argument("--tolerance", type=float, help="also report tolerance F1 within R pixels, e.g. 2")
    p.add_argument(
        "--cliou", type=float, metavar="R", help="also report centreline IoU within R pixels (OmniCrack30k: 4)"
    )
    p.add_argument(
        "--protocol",
        default="strict",
        choices=["strict", "paper"],
        help="paper: also score as the crack-segmentation papers do (512×512, ODS/OIS/mIoU of SCSegamba's script), "
        "in its own section beside the strict numbers",
    )
    p.add_argument("--degrade", help="also evaluate degraded copies (blur, bicubic down and up), e.g. x4")
    p.add_argument("--degrade-seed", type=int, default=0, help="seed of the per-image degradations")
    p.add_argument(
        "--samples", type=int, default=6, choices=range(0, 101), metavar="N", help="images per sample figure (0-100)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample figure")
    p.add_argument("--split-val", action="store_true", help="only the validation split `crackseg train` uses")
    add_split_arguments(p)  # with --split-val: the train run's values
    p.add_argument("--skip-unpaired", action="store_true", help="go on without images that have no mask")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's report in -o")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a model to ONNX at a fixed tile size (checked against PyTorch)")
    p.add_argument("--weights", help="a trained model: model.safetensors, its folder, or a run folder")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    p.add_argument("-o", "--out", required=True, help="output .onnx file (not an existing one without --overwrite)")
    p.add_argument("--tile", type=int, help="the model's fixed tile size (default: its training size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="int8: static QDQ model")
    p.add_argument("--calibration-data", nargs="+", help="int8: data folders whose training crops calibrate")
    p.add_argument(
        "--calibration-crops", type=positive_int, default=CALIBRATION_CROPS, help="int8: number of calibration crops"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    p.set_defaults(func=cmd_export)
