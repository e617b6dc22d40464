"""Crack maps and tables from a Measurement: GeoJSON, GeoPackage, DXF, CSV and the summary JSON.

Every format carries the same per-crack attributes (`crack_record`, one layout: the CSV's columns, the GeoJSON's
properties, the GeoPackage's fields), and the same centrelines (`Measurement.centrelines`, one line per branch),
placed as each format's users expect:

- GeoJSON (RFC 7946): WGS 84 longitude, latitude when the photo is georeferenced; otherwise image pixels
  (x right, y down, from the top-left corner), said by `"crs": null` and a `note`, as RFC 7946 has no way
  to name another system.
- GeoPackage: the raster's own CRS (no reprojection, so nothing is lost); otherwise mm (or px without a
  pixel size) from the image's bottom-left corner, y up, so that a GIS shows it upright.
- DXF: always a drawing of the photo, mm when the pixel size is known (else px), y up from the bottom-left
  corner (CAD's y points up, the image's down), one layer per width class.

Files are written whole or not at all: to a temporary file in the same folder, then renamed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from crackseg.errors import InputError
from crackseg.io.atomic import atomic_write_bytes, default_mode
from crackseg.io.georef import Georeference
from crackseg.measure import (
    DEFAULT_HALO,
    DEFAULT_MIN_LENGTH,
    UNKNOWN_WIDTH_CLASS,
    Crack,
    Measurement,
    WidthClasses,
    check_arguments,
    load_width_classes,
    measure,
)
from crackseg.measure.figure import label_positions, width_figure

log = logging.getLogger(__name__)

# Output kind → what follows the input's name; "csv" is one cracks.csv for the whole run.
FORMATS = {
    "json": "_measure.json",
    "csv": None,
    "png": "_width.png",
    "geojson": "_cracks.geojson",
    "gpkg": "_cracks.gpkg",
    "dxf": "_cracks.dxf",
}
CRACK_FIELDS = [f.name for f in fields(Crack) if f.name != "bbox"] + ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]
CSV_FIELDS = ["image", *CRACK_FIELDS]
PIXEL_NOTE = "coordinates are image pixels: x right, y down, from the image's top-left corner (pixel centres at +0.5)"
LONLAT_DIGITS = 10  # 1e-10° is about 0.01 mm: finer than any photo's pixel
PIXEL_DIGITS = 3
GPKG_LAYER = "cracks"
# AutoCAD colour index per width class, narrow to wide: green, yellow, orange, red, magenta, blue, cyan, white.
DXF_COLOURS = (3, 2, 30, 1, 6, 5, 4, 7)
DXF_UNKNOWN_COLOUR = 8  # grey
DXF_ID_LAYER = "crack id"  # each crack's number, as in the tables, beside its skeleton's middle
# NAME_measure.json says what it is, so that a reader (crackseg compare) can refuse files it would misread.
# Version 1: the first with this field, and the first with each crack's centreline ("centrelines").
MEASURE_FORMAT = "crackseg-measure"
MEASURE_FORMAT_VERSION = 1


class FormatsError(InputError):
    """`--formats` names a format crackseg does not write."""


def parse_formats(text: str | None) -> tuple[str, ...]:
    """`--formats geojson,csv` → ("geojson", "csv"); None → every format."""
    if text is None:
        return tuple(FORMATS)
    chosen = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in FORMATS]
    if unknown or not chosen:
        what = f"unknown format {unknown[0]!r}" if unknown else "no format named"
        raise FormatsError(f"--formats {text!r}: {what}; choose from {','.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(chosen))


# --- one layout for every table -----------------------------------------------------------------------------


def crack_record(crack: Crack) -> dict:
    """The crack's attributes, flat (bbox as four columns), in CRACK_FIELDS order."""
    record = asdict(crack)
    record["bbox_x"], record["bbox_y"], record["bbox_w"], record["bbox_h"] = record.pop("bbox")
    return {name: record[name] for name in CRACK_FIELDS}


def csv_row(image: str, crack: Crack) -> dict:
    return {"image": image, **crack_record(crack)}


def csv_bytes(rows: list[dict]) -> bytes:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue().encode()


# --- coordinates --------------------------------------------------------------------------------------------


def local_xy(result: Measurement, xy: np.ndarray) -> np.ndarray:
    """Image coordinates → mm (px without a pixel size) from the image's bottom-left corner, y up."""
    scale = result.pixel_size_mm or 1.0
    return np.column_stack([xy[:, 0] * scale, (result.height - xy[:, 1]) * scale])


def converted(result: Measurement, convert) -> list[list[np.ndarray]]:
    """Every centreline through `convert` ((n, 2) → (n, 2)) in one call: a pyproj call per line costs more."""
    lines = [line for crack in result.centrelines for line in crack]
    if not lines:
        return [[] for _ in result.centrelines]
    pieces = iter(np.split(convert(np.concatenate(lines)), np.cumsum([len(line) for line in lines])[:-1]))
    return [[next(pieces) for _ in crack] for crack in result.centrelines]


def coordinate_note(result: Measurement, georef: Georeference | None) -> dict:
    """What the coordinates of each map format are, for the summary JSON."""
    unit = "mm" if result.pixel_size_mm else "px"
    local = f"{unit} from the image's bottom-left corner, y up"
    return {
        "geojson": "WGS 84 longitude, latitude (degrees)" if georef else PIXEL_NOTE,
        "gpkg": f"the raster's CRS, {georef.crs_name()}" if georef else local,
        "dxf": local,
    }


# --- GeoJSON ------------------------------------------------------------------------------------------------


def geojson_dict(result: Measurement, georef: Georeference | None = None, name: str | None = None) -> dict:
    """A FeatureCollection: one MultiLineString feature per crack (one line per branch), its record as properties."""
    convert, digits = (georef.to_wgs84, LONLAT_DIGITS) if georef else ((lambda xy: xy), PIXEL_DIGITS)
    centrelines = converted(result, convert)
    features = [
        {
            "type": "Feature",
            "id": crack.id,
            "geometry": {
                "type": "MultiLineString",
                "coordinates": [np.round(line, digits).tolist() for line in lines],
            },
            "properties": crack_record(crack),
        }
        for crack, lines in zip(result.cracks, centrelines, strict=True)
    ]
    collection = {"type": "FeatureCollection", "name": name or "cracks"}
    if georef is None:  # RFC 7946 coordinates are WGS 84: say plainly that these are not
        collection |= {"crs": None, "note": PIXEL_NOTE}
    else:
        collection["source_crs"] = georef.crs_name()
    collection |= {"pixel_size_mm": result.pixel_size_mm, "width_classes": result.width_classes.name}
    return collection | {"features": features}


def geojson_bytes(result: Measurement, georef: Georeference | None = None, name: str | None = None) -> bytes:
    return json.dumps(geojson_dict(result, georef, name), ensure_ascii=False, allow_nan=False).encode()


def write_geojson(path: str | Path, result: Measurement, georef: Georeference | None = None) -> None:
    atomic_write_bytes(path, geojson_bytes(result, georef, Path(path).stem))


# --- GeoPackage ---------------------------------------------------------------------------------------------


def column(values: list, annotation: str) -> np.ndarray:
    """One attribute column with the dtype its Crack field has; a missing float (no scale) becomes NULL."""
    kind = annotation.split("|")[0].strip()
    if kind == "float":
        return np.array([np.nan if v is None else v for v in values], np.float64)
    dtype = {"int": np.int64, "bool": np.bool_, "tuple[int, int, int, int]": np.int64}.get(kind, object)
    return np.array(values, dtype)


def crack_columns(result: Measurement) -> list[np.ndarray]:
    types = {f.name: f.type for f in fields(Crack)} | dict.fromkeys(["bbox_x", "bbox_y", "bbox_w", "bbox_h"], "int")
    records = [crack_record(c) for c in result.cracks]
    return [column([r[name] for r in records], types[name]) for name in CRACK_FIELDS]


def write_gpkg(path: str | Path, result: Measurement, georef: Georeference | None = None) -> None:
    """A GeoPackage layer "cracks": MultiLineStrings in the raster's CRS, else in local mm (or px), y up."""
    import shapely

    convert = georef.to_map if georef else (lambda xy: local_xy(result, xy))
    geometry = shapely.to_wkb([shapely.MultiLineString(lines) for lines in converted(result, convert)])
    note = coordinate_note(result, georef)["gpkg"]
    path = Path(path)
    # GDAL writes to a path (and may add -journal files beside it): a private folder next to the target, then
    # one rename, so a reader never sees a half-written GeoPackage.
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp = work / "cracks.gpkg"
        with warnings.catch_warnings():  # without a georeference there is no CRS to give: that is the point
            warnings.filterwarnings("ignore", "'crs' was not provided")
            write_layer(tmp, geometry, result, georef, note)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_gpkg_layer(
    path: str | Path,
    layer: str,
    geometry: list,
    columns: dict[str, np.ndarray],
    crs_wkt: str | None,
    metadata: dict[str, str],
) -> None:
    """Any table of MultiLineStrings (shapely geometries, one per row) as a GeoPackage layer, written atomically.

    `columns`: name → one array per attribute (float NaN is NULL); `crs_wkt` None for image or local coordinates.
    """
    import pyogrio
    import shapely

    path = Path(path)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))  # as write_gpkg: one rename at the end
    try:
        tmp = work / path.name
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided")
            pyogrio.raw.write(
                tmp,
                np.asarray(shapely.to_wkb(geometry), dtype=object),
                list(columns.values()),
                list(columns),
                layer=layer,
                driver="GPKG",
                geometry_type="MultiLineString",
                crs=crs_wkt,
                layer_metadata=metadata,
            )
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_layer(path: Path, geometry: np.ndarray, result: Measurement, georef: Georeference | None, note: str) -> None:
    import pyogrio

    pyogrio.raw.write(
        path,
        np.asarray(geometry, dtype=object),
        crack_columns(result),
        CRACK_FIELDS,
        layer=GPKG_LAYER,
        driver="GPKG",
        geometry_type="MultiLineString",
        crs=georef.crs_wkt if georef else None,
        layer_metadata={"coordinates": note, "width_classes": result.width_classes.name},
    )


# --- DXF ----------------------------------------------------------------------------------------------------


def dxf_layer_name(label: str) -> str:
    """A width class as a DXF layer name: DXF forbids < > / \\ " : ; ? * | = ` in names."""
    words = label.replace(">=", "ge ").replace("<=", "le ").replace("<", "lt ").replace(">", "gt ")
    return "crack " + re.sub(r'[<>/\\":;?*|=`\x00-\x1f]', "_", words)


def write_dxf(path: str | Path, result: Measurement) -> None:
    atomic_write_bytes(path, dxf_bytes(result))


def dxf_bytes(result: Measurement) -> bytes:
    """A drawing of the cracks: one LWPOLYLINE per branch, on one layer per width class (mm, else px; y up)."""
    import ezdxf
    from ezdxf import units

    doc = ezdxf.new("R2010")
    doc.units = units.MM if result.pixel_size_mm else units.InsertUnits.Unitless
    layers = {}
    for i, label in enumerate(result.width_labels):  # every class, used or not: a CAD user toggles them
        colour = DXF_UNKNOWN_COLOUR if label == UNKNOWN_WIDTH_CLASS else DXF_COLOURS[i % len(DXF_COLOURS)]
        layers[label] = doc.layers.add(dxf_layer_name(label), color=colour)
        layers[label].description = label  # the class as the tables write it, where the name had to change
    msp = doc.modelspace()
    add_ids(doc, result)
    for crack, lines in zip(result.cracks, result.centrelines, strict=True):
        for line in lines:
            points = local_xy(result, line)
            closed = len(points) > 3 and np.array_equal(points[0], points[-1])  # a loop: a closed polyline
            msp.add_lwpolyline(
                (points[:-1] if closed else points).tolist(),
                close=closed,
                dxfattribs={"layer": layers[crack.width_class].dxf.name},
            )
    text = io.StringIO()
    doc.write(text)
    return text.getvalue().encode(doc.output_encoding)


def add_ids(doc, result: Measurement) -> None:
    """Each crack's id as TEXT on its own layer, where the width figure writes it, to find a crack's table row."""
    doc.layers.add(DXF_ID_LAYER, color=7)
    scale = result.pixel_size_mm or 1.0
    height = max(8.0, min(result.height, result.width) / 60) * scale  # readable beside the cracks at full view
    for crack_id, (row, col) in label_positions(result).items():
        place = local_xy(result, np.array([[col + 0.5, row + 0.5]]))[0]
        doc.modelspace().add_text(str(crack_id), height=height, dxfattribs={"layer": DXF_ID_LAYER}).set_placement(
            tuple(place)
        )


# --- the summary JSON ---------------------------------------------------------------------------------------


def report_dict(
    result: Measurement,
    source_path: str,
    source: str,
    georef: Georeference | None = None,
    pixel_size_from: str | None = None,
) -> dict:
    """NAME_measure.json: the input, its georeference, the units, the summary, every crack and its centreline."""
    return {
        "format": MEASURE_FORMAT,
        "format_version": MEASURE_FORMAT_VERSION,
        "input": source_path,
        "source": source,
        **result.to_dict(),
        "pixel_size_from": pixel_size_from,
        "georeference": georef.to_dict() if georef else None,
        "units": {
            "px": "pixels of the image (lengths, widths; px2: areas)",
            "mm": "millimetres: px × pixel_size_mm (mm2: areas)" if result.pixel_size_mm else "no pixel size given",
            "coordinates": coordinate_note(result, georef),
        },
        "centrelines": centreline_records(result),
    }


def centreline_records(result: Measurement) -> list[dict]:
    """Each crack's centreline in image pixels, one point list per branch: what `crackseg compare` matches."""
    return [
        {"id": crack.id, "lines": [np.round(line, PIXEL_DIGITS).tolist() for line in lines]}
        for crack, lines in zip(result.cracks, result.centrelines, strict=True)
    ]


def write_outputs(
    paths: dict[str, Path],
    result: Measurement,
    report: dict,
    georef: Georeference | None = None,
    figure: np.ndarray | None = None,
) -> None:
    """Write each per-input output named in `paths` (kind → path; see FORMATS)."""
    from crackseg.io.images import write_image

    if "json" in paths:
        atomic_write_bytes(paths["json"], json.dumps(report, indent=1).encode())
    if "png" in paths and figure is not None:
        write_image(paths["png"], figure)
    if "geojson" in paths:
        write_geojson(paths["geojson"], result, georef)
    if "gpkg" in paths:
        write_gpkg(paths["gpkg"], result, georef)
    if "dxf" in paths:
        write_dxf(paths["dxf"], result)


# --- many files: the engine behind `crackseg measure` -------------------------------------------------------


RUN_FILES = {"csv": "cracks.csv"}  # output kind → the one file a run writes for all its inputs


def plan_measure(
    inputs: list[str], out_dir: str | Path, formats: tuple[str, ...] | None = None, overwrite: bool = False
) -> tuple[dict[Path, dict[str, Path]], dict[str, Path]]:
    """What `measure_files` will write, checked before any model loads or input is read: per input, kind → path
    (FORMATS), and the run's own files (cracks.csv). Refuses an output folder among the inputs, makes it, and
    refuses to replace a file an earlier run left there unless `overwrite`."""
    from crackseg.inference import check_output_folder, collect_inputs, output_paths
    from crackseg.io.atomic import check_outputs_free, ensure_output_folder

    formats = tuple(FORMATS) if formats is None else formats
    out_dir = Path(out_dir)
    files = collect_inputs(inputs)
    check_output_folder(inputs, files, out_dir)
    paths = output_paths(files, out_dir, {kind: FORMATS[kind] for kind in formats if FORMATS[kind]})
    run_files = {kind: out_dir / name for kind, name in RUN_FILES.items() if kind in formats}
    ensure_output_folder(out_dir)
    everything = [q for outs in paths.values() for q in outs.values()] + list(run_files.values())
    check_outputs_free(out_dir, everything, overwrite)
    return paths, run_files


def measure_files(
    inputs: list[str],
    out_dir: str | Path,
    segment=None,
    pixel_size_mm: float | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
    progress: bool = True,
    formats: tuple[str, ...] | None = None,
    width_classes: str | Path | WidthClasses | None = None,
    marker_mm: float | None = None,
    overwrite: bool = False,
    block: int | None = None,
    direction_deg: float = 90.0,
    max_pixels: float | None = None,
) -> tuple[int, int, list[str]]:
    """Measure the cracks in photos or masks; returns (inputs measured, cracks found, failures).

    `segment`: the model (a CrackSegmenter) or any function from an RGB uint8 photo to a bool mask; None when the
    inputs are masks already. Writes, per input, the `formats` of FORMATS (default: all): OUT/NAME_measure.json,
    NAME_width.png, NAME_cracks.geojson / .gpkg / .dxf, and OUT/cracks.csv (one row per crack across all
    inputs). A GeoTIFF's georeference places the maps and, in a projected CRS, gives the pixel size, unless
    `pixel_size_mm` is given; else a printed ArUco marker of side `marker_mm` in a photo does. A failing input is
    reported in `failures` and skipped; a run that measures nothing writes no cracks.csv. Files already in `out_dir`
    are replaced only with `overwrite` (`OutputExistsError` before anything is read otherwise). `direction_deg`: the
    structure's direction in the images (`measure.measure`; 90: image up, north on a north-up raster).

    A georeferenced raster of more than `block`² pixels (default `rasters.DEFAULT_BLOCK`, 4096), and any TIFF over
    the photo limit `max_pixels` (default: the segmenter's, else `images.DEFAULT_MAX_PIXELS`), is measured block by
    block (`rasters.measure_raster`), never held whole: a photo (with a CrackSegmenter as `segment`) is segmented
    block by block into a temporary mask GeoTIFF in `out_dir`, removed afterwards; the width figure is drawn from
    the raster's overview (at most 1600 px, the size the figure has anyway). The summary JSON says so ("blocks").
    """
    from tqdm import tqdm

    from crackseg.io.atomic import atomic_write_bytes
    from crackseg.io.georef import check_shape, is_tiff, read_tiff_header, resolve_pixel_size
    from crackseg.io.images import ImageReadError, read_image, read_mask
    from crackseg.io.rasters import DEFAULT_BLOCK, OVERVIEW_SIDE, in_blocks, measure_raster
    from crackseg.options import DEFAULT_MAX_PIXELS

    check_arguments(pixel_size_mm, direction_deg)
    if marker_mm is not None and not marker_mm > 0:
        raise InputError(f"--marker-mm must be the marker's positive side in mm, got {marker_mm}")
    formats = tuple(FORMATS) if formats is None else formats
    classes = load_width_classes(width_classes)  # a bad --classes fails here, before any input is read
    paths, run_files = plan_measure(inputs, out_dir, formats, overwrite)
    block = block or DEFAULT_BLOCK
    segmenter = segment if hasattr(segment, "predict_prob") else None  # the model itself: rasters block by block
    if max_pixels is None:
        max_pixels = segmenter.max_pixels if segmenter is not None else DEFAULT_MAX_PIXELS
    if segmenter is not None:

        def segment(image):
            return segmenter.predict(image).mask

    rows, measured, failures, said_no_crs = [], 0, [], False
    for path in tqdm(paths, desc="measure", unit="img", disable=not progress):
        try:
            header = read_tiff_header(path)
            georef = header[1] if header else None
            if georef is not None and "geojson" in formats:
                georef.check_wgs84(str(path))
            blocks = None
            if in_blocks(header, max_pixels, block) and (segment is None or segmenter is not None):
                blocks = {"block_px": block, "halo_px": DEFAULT_HALO, "segmented_in_blocks": segment is not None}
                scale, scale_from = resolve_pixel_size(str(path), georef, pixel_size_mm)
                result, image = measure_raster(
                    path, Path(out_dir), segmenter, scale, min_length, classes, block, "png" in formats, progress,
                    direction_deg,
                )  # fmt: skip
                figure = width_figure(image, result, overview=True) if image is not None else None
                if figure is not None:
                    blocks["width_figure"] = f"drawn from the raster's overview, at most {OVERVIEW_SIDE} px a side"
                log.info("%s: %d×%d px, measured in blocks of %d px", path, header[0][1], header[0][0], block)
            else:
                image = read_image(path) if segment is not None else read_mask(path).astype(np.uint8) * 255
                check_shape(str(path), georef, image.shape)
                marker = marker_mm if segment is not None else None  # a marker is found in a photo, not in a mask
                scale, scale_from = resolve_pixel_size(str(path), georef, pixel_size_mm, image, marker)
                mask = segment(image) if segment else image
                result = measure(mask, scale, min_length, direction_deg, width_classes=classes)
                figure = width_figure(image, result) if "png" in formats else None
        except (ImageReadError, ValueError, MemoryError) as err:
            failures.append(str(err) if str(path) in str(err) else f"{path}: {err}")
            continue
        if is_tiff(path) and georef is None and not said_no_crs:
            log.warning("%s: a TIFF without a CRS: its crack maps are in image pixels (said once per run)", path)
            said_no_crs = True
        for warning in result.warnings:
            log.warning("%s: %s", path, warning)
        source = "mask" if segment is None else "photo"
        report = report_dict(result, str(path), source, georef, scale_from)
        if blocks is not None:
            report["blocks"] = blocks
        write_outputs(paths[path], result, report, georef, figure)
        rows += [csv_row(str(path), crack) for crack in result.cracks]
        measured += 1
    if "csv" in run_files and measured:  # every input failed: nothing to tabulate, and nothing to replace next time
        atomic_write_bytes(run_files["csv"], csv_bytes(rows))
    return measured, len(rows), failures
