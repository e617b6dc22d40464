"""`crackseg measure` and `crackseg compare`: cracks measured and mapped, and two surveys compared."""

from __future__ import annotations

from crackseg.cli.common import (
    add_cluster_argument,
    add_model_arguments,
    check_cluster_address,
    model_on_cluster,
    report,
    segmenter_from_args,
)
from crackseg.errors import InputError
from crackseg.options import CompareOptions, MeasureOptions, SegmentOptions, add_arguments


def cmd_measure(args) -> int:
    from crackseg.measure import load_width_classes
    from crackseg.runs.measure import measure_plan, parse_formats, plan_measure

    if args.masks and (args.weights or args.model):
        raise InputError("--masks measures the masks as they are: drop --weights/--model, or drop --masks")
    # Options, formats, classes, the output folder and the files already there: all before the model loads.
    check_cluster_address(args)
    options = MeasureOptions.from_args(args)
    options = options.replace(width_classes=load_width_classes(options.width_classes))
    formats = parse_formats(args.formats)
    segment_options = SegmentOptions.from_args(args)
    plan = plan_measure(args.inputs, args.out, formats, args.overwrite, segment_options.photo_limit, options.block)
    if args.cluster:
        from crackseg.runs.cluster import cluster_client

        with cluster_client(args.cluster) as client:
            model = None if args.masks else model_on_cluster(args, client, segment_options)
            measured, cracks, failures = measure_plan(plan, model, options, args.marker_mm, client=client)
    else:
        segmenter = None if args.masks else segmenter_from_args(args, segment_options)
        measured, cracks, failures = measure_plan(plan, segmenter, options, args.marker_mm)
    return report(failures, f"{measured} measured, {cracks} cracks, {len(failures)} failed -> {args.out}")


def cmd_compare(args) -> int:
    from crackseg.compare import CompareError, compare, needs_segmenter
    from crackseg.runs.compare import check_output, write_changes

    if args.masks and (args.weights or args.model):
        raise InputError("--masks compares the masks as they are: drop --weights/--model, or drop --masks")
    options = CompareOptions.from_args(args)
    check_output(args.out, args.overwrite)  # before the model loads or any photo is read
    segmenter = None
    if needs_segmenter((args.before, args.after), args.masks):
        if args.photos:
            raise CompareError("--photos is for --masks and measure files: the photos are the inputs here")
        segmenter = segmenter_from_args(args)
    photos = tuple(None if p == "-" else p for p in args.photos or ("-", "-"))
    changes = compare(args.before, args.after, segmenter=segmenter, masks=args.masks, photos=photos, options=options)
    write_changes(changes, args.out, args.overwrite)
    a, s = changes.alignment, changes.summary()
    quality = f"{a.inliers} inliers, {a.error_px:.2f} px RMS" if a.method == "features" else a.method
    counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in s["counts"].items() if n)
    floor = s["noise_floor"]
    unit = "mm" if floor["length_mm"] is not None else "px"
    said = f"noise floor {floor[f'length_{unit}']:g} {unit} in length, {floor[f'width_{unit}']:g} {unit} in width"
    print(f"aligned ({quality}); {counts or 'no cracks'}; {said} -> {args.out}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("measure", help="length, width, area and class of each crack, in px and mm")
    p.add_argument("inputs", nargs="+", help="photos (masks with --masks): files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--masks", action="store_true", help="the inputs are crack masks: measure them, no model")
    add_arguments(p, MeasureOptions)
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
        help="outputs to write, comma-separated, from json,csv,png,geojson,gpkg,dxf (default: all; geojson only for "
        "georeferenced inputs: it is WGS 84 only)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in -o")
    add_cluster_argument(p)
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
    add_arguments(p, CompareOptions)
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier comparison in -o")
    # A change must not be the segmentation's own noise: compare averages the eight turns and flips by default,
    # on the tiles around the changes a first pass finds (--tta-where).
    add_model_arguments(
        p,
        described={
            "tta_turns": "average the eight quarter turns and flips of each tile (compare's default; where: "
            "--tta-where)"
        },
    )
    p.add_argument(
        "--no-tta-turns",
        dest="tta_turns",
        action="store_false",
        help="one pass per tile and nothing more; changes then rest on maps that depend on the photos' orientation "
        "and framing, and unchanged cracks can be reported as changes",
    )
    p.set_defaults(func=cmd_compare, tta_turns=True)
