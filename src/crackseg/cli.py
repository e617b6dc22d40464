"""The `crackseg` command: argparse sub-commands that parse, call one function and print."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from crackseg import __version__
from crackseg.errors import CracksegError, InputError

MIN_BLOCK = 256  # px: `measure --block`; smaller blocks would mostly read their halo


def cmd_data(args) -> int:
    from crackseg.data import find_all_pairs, pairs_per_source, split_pairs

    pairs = find_all_pairs(args.data, args.skip_unpaired)
    train, val = split_pairs(pairs, args.val_fraction, args.split_seed)
    val_names = {p.image for p in val}
    print(f"{'source':<14}{'pairs':>7}{'val':>6}{'crack %':>9}")
    for source, entry in pairs_per_source(pairs).items():
        n_val = sum(1 for p in pairs if p.source == source and p.image in val_names)
        print(f"{source:<14}{entry['pairs']:>7}{n_val:>6}{100 * entry['crack_fraction']:>9.2f}")
    print(f"{'all':<14}{len(pairs):>7}{len(val):>6}")
    return 0


def cmd_train(args) -> int:
    from crackseg.train import train
    from crackseg.train.arguments import config_from_args

    result = train(config_from_args(args))  # the flags over --config's file over a resumed run's saved settings
    if os.environ.get("RANK", "0") == "0":
        print(f"best model: {result.best_model_dir}  (use it with --weights {result.best_model_dir})")
    return 0


def cmd_teach(args) -> int:
    from crackseg.data import find_all_pairs
    from crackseg.inference import CrackSegmenter
    from crackseg.train.distill import write_teacher_maps

    pairs = find_all_pairs(args.data, args.skip_unpaired, exclude_splits=("test",))
    segmenter = CrackSegmenter.from_pretrained(args.weights or args.model, args.backend, args.precision, tta=True)
    print(f"teacher {segmenter.config.name}; {segmenter.describe()}")
    made = write_teacher_maps(segmenter, pairs, args.out)
    print(f"{made} teacher maps written to {args.out} ({len(pairs) - made} were there already)")
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a whole number of at least 1")
    return value


def block_size(text: str) -> int:
    value = int(text)
    if value < MIN_BLOCK:
        raise argparse.ArgumentTypeError(f"{value}: a block must be at least {MIN_BLOCK} px a side")
    return value


def tile_size(text: str) -> int:
    from crackseg.inference import check_tile

    try:
        return check_tile(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def threshold_value(text: str) -> float:
    from crackseg.inference import check_threshold

    try:
        return check_threshold(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from crackseg.engines import PRECISIONS, REGISTRY
    from crackseg.options import DEFAULT_MAX_PIXELS, DEFAULT_MAX_RASTER_PIXELS

    p.add_argument("--weights", help="a trained model: model.safetensors, its folder, or a run folder")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    p.add_argument("--threshold", type=threshold_value, help="probability threshold, 0 < t < 1 (default: the model's)")
    p.add_argument(
        "--tile",
        type=tile_size,
        help="tile size for large images, a multiple of 32 (default: the model's training size)",
    )
    p.add_argument("--overlap", type=float, default=0.25, help="overlap between tiles, as a fraction")
    p.add_argument("--backend", default="auto", choices=["auto", *REGISTRY])
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *PRECISIONS],
        help="int8 runs only models that passed the accuracy rule under auto; its probabilities (--prob) may "
        "differ from fp32's by a few hundredths, its masks hardly",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=4, help="tiles per forward pass")
    p.add_argument(
        "--max-pixels",
        type=float,
        help=f"the photo limit (default: {DEFAULT_MAX_PIXELS / 1e6:.0f} MP): a larger photo is refused, a larger "
        f"TIFF is processed block by block, as georeferenced rasters are, up to "
        f"{DEFAULT_MAX_RASTER_PIXELS / 1e6:.0f} MP",
    )
    p.add_argument("--tta", action="store_true", help="average the four flips of each tile (4× slower)")


def segmenter_from_args(args):
    from pathlib import Path

    from crackseg.inference import CrackSegmenter

    return CrackSegmenter.from_pretrained(
        Path(args.weights) if args.weights else args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        threshold=args.threshold,
        max_pixels=None if args.max_pixels is None else int(args.max_pixels),
        tta=args.tta,
    )


def report(failures: list[str], summary: str) -> int:
    """A batch job's end: each failed input on stderr, the summary on stdout; exit status 1 if any failed."""
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(summary)
    return 1 if failures else 0


def cmd_predict(args) -> int:
    from crackseg.inference import plan_predict, predict_files
    from crackseg.options import DEFAULT_MAX_PIXELS

    # The output folder and the files already there, before the model loads or any photo is read.
    photo_limit = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    plan = plan_predict(
        args.inputs, args.out, args.prob, args.overlay, args.shard, args.skip_existing, args.overwrite, photo_limit
    )
    if args.skip_existing and all(outputs["mask"].exists() for _, outputs, _ in plan):
        print(f"0 written: all {len(plan)} inputs were done already (--skip-existing) -> {args.out}")
        return 0  # without loading the model
    segmenter = segmenter_from_args(args)
    print(f"model {segmenter.config.name or args.weights or args.model}; {segmenter.describe()}", file=sys.stderr)
    written, failures = predict_files(
        segmenter,
        args.inputs,
        args.out,
        write_prob=args.prob,
        write_overlay=args.overlay,
        shard_spec=args.shard,
        skip_existing=args.skip_existing,
        overwrite=args.overwrite,
    )
    return report(failures, f"{written} written, {len(failures)} failed -> {args.out}")


def cmd_evaluate(args) -> int:
    from crackseg.data import DataError, find_all_pairs, split_pairs
    from crackseg.evaluate import check_report_free, evaluate

    # --split-val carves the validation split exactly as `crackseg train` does (test/ folders left out).
    pairs = find_all_pairs(args.data, args.skip_unpaired, exclude_splits=("test",) if args.split_val else ())
    if args.split_val:
        pairs = split_pairs(pairs, args.val_fraction, args.split_seed)[1]
        if not pairs:
            raise DataError("the validation split of --data is empty (too few photos); drop --split-val")
    from crackseg.io.atomic import ensure_output_folder

    ensure_output_folder(args.out)
    check_report_free(args.out, args.overwrite)  # before the model loads
    segmenter = segmenter_from_args(args)
    model_name = segmenter.config.name or args.weights or args.model
    print(f"model {model_name}; {segmenter.describe()}; {len(pairs)} images", file=sys.stderr)
    report = evaluate(
        segmenter,
        pairs,
        args.out,
        tolerance=args.tolerance,
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
        if condition in report:
            s, sweep = report[condition], report[condition]["sweep"]
            print(
                f"{condition}: {s['images']} images at threshold {report['threshold']:g}: "
                f"IoU {s['micro']['iou']:.3f} F1 {s['micro']['f1']:.3f} | ODS F1 {sweep['ods_f1']:.3f} "
                f"@ {sweep['ods_threshold']:g}, OIS F1 {sweep['ois_f1']:.3f}, AIU {sweep['aiu']:.3f}"
            )
    print(f"report -> {args.out}/report.md")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from crackseg.serve import create_app
    from crackseg.serve.security import is_loopback

    segmenter = segmenter_from_args(args)
    app = create_app(
        segmenter,
        max_upload_mb=args.max_upload_mb,
        max_pixels=int(args.max_pixels),
        workers=args.workers,
        result_ttl_s=args.result_ttl,
        host=args.host,
    )
    name = segmenter.config.name or args.weights or args.model
    print(f"model {name}; {segmenter.describe()}; {args.workers} inference worker(s)", file=sys.stderr)
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine on port {args.port} can "
            "upload photos (there is no login); use the default --host 127.0.0.1 to keep it local",
            file=sys.stderr,
        )
    url = f"http://{args.host}:{args.port}/"
    print(f"crackseg serving on {url}  (API description at {url}openapi.json; Ctrl+C stops)", file=sys.stderr)
    # Ctrl+C: in-flight photos get 10 s to finish, then the server stops even with a queue waiting.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=10)
    return 0


def cmd_measure(args) -> int:
    from crackseg.measure import check_arguments, load_width_classes
    from crackseg.outputs import measure_files, parse_formats, plan_measure

    segment = None
    if args.masks and (args.weights or args.model):
        raise InputError("--masks measures the masks as they are: drop --weights/--model, or drop --masks")
    formats, classes = parse_formats(args.formats), load_width_classes(args.classes)  # before the model loads
    check_arguments(args.pixel_size, args.direction)
    plan_measure(args.inputs, args.out, formats, args.overwrite)  # the folder and the files already there, too
    if not args.masks:
        segmenter = segmenter_from_args(args)
        name = segmenter.config.name or args.weights or args.model
        print(f"model {name}; {segmenter.describe()}", file=sys.stderr)
        segment = segmenter  # the model itself, so that large rasters are segmented block by block

    measured, cracks, failures = measure_files(
        args.inputs,
        args.out,
        segment,
        args.pixel_size,
        args.min_length,
        formats=formats,
        width_classes=classes,
        marker_mm=args.marker_mm,
        overwrite=args.overwrite,
        block=args.block,
        direction_deg=args.direction,
        max_pixels=args.max_pixels,
    )
    return report(failures, f"{measured} measured, {cracks} cracks, {len(failures)} failed -> {args.out}")


def cmd_compare(args) -> int:
    from crackseg.compare import CompareError, check_output, compare, needs_segmenter, write_changes

    if args.masks and (args.weights or args.model):
        raise InputError("--masks compares the masks as they are: drop --weights/--model, or drop --masks")
    check_output(args.out, args.overwrite)  # before the model loads or any photo is read
    segmenter = None
    if needs_segmenter((args.before, args.after), args.masks):
        if args.photos:
            raise CompareError("--photos is for --masks and measure files: the photos are the inputs here")
        segmenter = segmenter_from_args(args)
        print(f"model {segmenter.config.name or args.weights or args.model}; {segmenter.describe()}", file=sys.stderr)
    changes = compare(
        args.before,
        args.after,
        segmenter=segmenter,
        masks=args.masks,
        photos=tuple(None if p == "-" else p for p in args.photos or ("-", "-")),
        pixel_size_mm=args.pixel_size,
        tolerance_px=args.tolerance_px,
        assume_aligned=args.assume_aligned,
        min_length=args.min_length,
    )
    write_changes(changes, args.out, args.overwrite)
    a, s = changes.alignment, changes.summary()
    quality = f"{a.inliers} inliers, {a.error_px:.2f} px RMS" if a.method == "features" else a.method
    counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in s["counts"].items() if n)
    print(f"aligned ({quality}); {counts or 'no cracks'} -> {args.out}")
    return 0


def cmd_export(args) -> int:
    from crackseg.engines import export_model

    data, crops = args.calibration_data, args.calibration_crops
    path, summary = export_model(args.weights, args.model, args.out, args.tile, args.precision, data, crops)
    print(f"wrote {path}: {summary}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command. Given the `command` being run, `train`'s options are added only for
    `train`: they come from crackseg.train, which imports torch, too slow to load for every command."""
    from crackseg.data import add_split_arguments

    parser = argparse.ArgumentParser(prog="crackseg", description="Crack segmentation and measurement.")
    parser.add_argument("--version", action="version", version=f"crackseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="list the pairs found under data roots, per source, with the split")
    p.add_argument("data", nargs="+")
    add_split_arguments(p)
    p.add_argument("--skip-unpaired", action="store_true")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model")
    if command in (None, "train"):
        from crackseg.train.arguments import add_arguments

        add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("teach", help="a teacher model's probability maps of training photos, for distillation")
    p.add_argument("--data", nargs="+", required=True, help="data roots, as for train")
    p.add_argument("--out", required=True, help="folder of the maps (train --teacher-maps FOLDER)")
    p.add_argument("--weights", help="the teacher's model folder (default: --model)")
    p.add_argument("--model", default="unet-lite0", help="a shipped teacher model by name")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--skip-unpaired", action="store_true")
    p.set_defaults(func=cmd_teach)

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
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score a model on labelled images and write a report with figures")
    p.add_argument("--data", nargs="+", required=True, help="labelled data folders (images + masks)")
    p.add_argument("-o", "--out", required=True, help="report folder")
    add_model_arguments(p)
    p.add_argument("--tolerance", type=float, help="also report tolerance F1 within R pixels, e.g. 2")
    p.add_argument("--degrade", help="also evaluate degraded copies (blur, bicubic down and up), e.g. x4")
    p.add_argument("--degrade-seed", type=int, default=0, help="seed of the per-image degradations")
    p.add_argument("--samples", type=int, default=6, help="images per sample figure (0: no sample figures)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample figure")
    p.add_argument("--split-val", action="store_true", help="only the validation split `crackseg train` uses")
    add_split_arguments(p)  # with --split-val: the train run's values
    p.add_argument("--skip-unpaired", action="store_true", help="go on without images that have no mask")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's report in -o")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="web page and HTTP API: upload a photo, see and download its cracks")
    add_model_arguments(p)
    p.set_defaults(max_pixels=100e6)  # per-request memory: a web server refuses huge photos sooner
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=50, help="refuse larger uploads (413)")
    p.add_argument("--workers", type=int, default=2, help="photos segmented at once (one shared model)")
    p.add_argument("--result-ttl", type=float, default=900, help="seconds a result can be fetched")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("measure", help="length, width, area and class of each crack, in px and mm")
    p.add_argument("inputs", nargs="+", help="photos (masks with --masks): files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--masks", action="store_true", help="the inputs are crack masks: measure them, no model")
    p.add_argument(
        "--pixel-size",
        type=float,
        metavar="MM",
        help="millimetres per pixel: also report mm, mm² (default: from a GeoTIFF's georeference, if projected)",
    )
    p.add_argument("--min-length", type=float, default=10.0, metavar="PX", help="drop (and count) shorter cracks")
    p.add_argument(
        "--direction",
        type=float,
        default=90.0,
        metavar="DEG",
        help="the structure's direction in the image, degrees counter-clockwise from the image's x axis (default 90: "
        "image up; north on a north-up map): cracks along it are longitudinal, across it transverse",
    )
    p.add_argument(
        "--marker-mm",
        type=float,
        metavar="MM",
        help="side of a printed ArUco marker in the photos: their scale when neither --pixel-size nor a "
        "georeference gives it",
    )
    p.add_argument(
        "--formats",
        metavar="LIST",
        help="outputs to write, comma-separated, from json,csv,png,geojson,gpkg,dxf (default: all)",
    )
    p.add_argument(
        "--classes",
        default="concrete",
        metavar="SCHEME",
        help='width classes: concrete (0.1-0.4 mm bins), pavement (3 / 19 mm) or FILE.json {"bins_mm", "labels"}',
    )
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in -o")
    p.add_argument(
        "--block",
        type=block_size,
        metavar="PX",
        help="georeferenced rasters of more than PX×PX pixels are segmented and measured PX×PX at a time, never "
        "held whole (default 4096; a smaller PX needs less memory)",
    )
    add_model_arguments(p)
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("compare", help="compare two surveys crack by crack: new, extended, widened, unchanged, closed")
    p.add_argument("before", help="the earlier survey: a photo, a mask (--masks) or a NAME_measure.json")
    p.add_argument("after", help="the later survey, the same kinds; results are in its frame")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--masks", action="store_true", help="the inputs are crack masks: compare them, no model")
    p.add_argument(
        "--photos",
        nargs=2,
        metavar=("BEFORE_PHOTO", "AFTER_PHOTO"),
        help="the photos the masks or measure files came from, to register them on ('-': the one a measure file "
        "records)",
    )
    p.add_argument("--pixel-size", type=float, metavar="MM", help="AFTER's millimetres per pixel (default: its own)")
    p.add_argument(
        "--tolerance-px",
        type=float,
        metavar="N",
        help="matching tolerance in px (default and minimum: the alignment error + 2)",
    )
    p.add_argument("--assume-aligned", action="store_true", help="no registration: a fixed camera, same size")
    p.add_argument("--min-length", type=float, default=10.0, metavar="PX", help="ignore shorter cracks")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier comparison in -o")
    add_model_arguments(p)
    p.set_defaults(func=cmd_compare)

    from crackseg.engines.int8 import CALIBRATION_CROPS

    p = sub.add_parser("export", help="export a model to ONNX at a fixed tile size (checked against PyTorch)")
    p.add_argument("--weights", help="a trained model: model.safetensors, its folder, or a run folder")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    p.add_argument("-o", "--out", required=True, help="output .onnx file")
    p.add_argument("--tile", type=tile_size, help="the model's fixed tile size (default: its training size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="int8: static QDQ model")
    p.add_argument("--calibration-data", nargs="+", help="int8: data folders whose training crops calibrate")
    p.add_argument(
        "--calibration-crops", type=positive_int, default=CALIBRATION_CROPS, help="int8: number of calibration crops"
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command=next((a for a in argv if not a.startswith("-")), ""))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CracksegError, OSError) as err:  # the user's to fix; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
