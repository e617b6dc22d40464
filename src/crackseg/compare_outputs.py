"""What `crackseg compare` writes: change maps (GeoJSON, GeoPackage), a table, a summary, a picture and a report.

Everything is in AFTER's frame. GeoJSON: WGS 84 longitude, latitude when AFTER is georeferenced, else AFTER's
image pixels with `"crs": null`, as `crackseg measure` writes them. GeoPackage: AFTER's CRS, else mm (px without a
pixel size) from AFTER's bottom-left corner, y up. Each crack is one feature (`part` "crack"); an extended crack's
new segments are one more feature (`part` "added") with the same attributes, so that a GIS can style them apart.
`after_measure.json` is AFTER's measure file with the stable ids: the BEFORE of the next comparison.

Nothing is written until everything is computed, each file is written whole (temporary file, then rename), and
existing outputs are replaced only with `overwrite`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.ops import substring

from crackseg.compare import (
    CHANGES,
    OUTPUT_FILES,
    RECORD_FIELDS,
    WIDTH_RULE,
    Changes,
    CompareError,
    CrackChange,
    apply_homography,
    widened,
)
from crackseg.images import atomic_write_bytes, encode_image

GPKG_LAYER = "changes"
DIGITS = {"px": 3, "lonlat": 10}
# Picture colours (RGB): as the issue asks; "gone" cracks dashed.
COLOURS = {
    "new": (235, 30, 30),
    "added": (255, 150, 0),
    "widened": (235, 0, 235),
    "unchanged": (190, 190, 190),
    "closed": (0, 210, 255),
    "out_of_view": (110, 110, 110),
    "before": (255, 220, 0),
}
LEGEND = [
    ("new", "new"),
    ("added", "extended (added part)"),
    ("widened", "widened"),
    ("unchanged", "unchanged"),
    ("closed", "closed/repaired (dashed)"),
]
PANEL_SIDE = (480, 1200)  # px: the long side of each half of the picture is brought within this


def check_output(out_dir, overwrite: bool = False) -> Path:
    """The output folder, made and checked writable; none of the outputs there already unless `overwrite`."""
    from crackseg.images import check_outputs_free, ensure_output_folder

    try:  # OutputExistsError is an OSError too: both are the folder's problems, said as a comparison's
        out = ensure_output_folder(out_dir)
        check_outputs_free(out_dir, [out / name for name in OUTPUT_FILES], overwrite, what="comparison")
    except OSError as err:
        raise CompareError(str(err)) from None
    return out


def write_changes(changes: Changes, out_dir, overwrite: bool = False) -> list[Path]:
    """Every output of a comparison into `out_dir`; returns their paths."""
    out = check_output(out_dir, overwrite)
    figure = encode_image(changes_figure(changes), ".png")
    contents = {
        "changes.geojson": json.dumps(geojson_dict(changes), ensure_ascii=False, allow_nan=False).encode(),
        "changes.csv": csv_bytes(changes),
        "summary.json": json.dumps(summary_dict(changes), indent=1, allow_nan=False).encode(),
        "changes.png": figure,
        "report.md": report_markdown(changes).encode(),
        "after_measure.json": json.dumps(after_measure_dict(changes), indent=1).encode(),
    }
    write_gpkg(out / "changes.gpkg", changes)  # first: GDAL is the writer most likely to fail
    for name, data in contents.items():
        atomic_write_bytes(out / name, data)
    return [out / name for name in OUTPUT_FILES]


# --- tables -------------------------------------------------------------------------------------------------


def features(changes: Changes) -> list[tuple[str, CrackChange, shapely.MultiLineString]]:
    """(part, crack, geometry): each crack, then the added segments of each extended one."""
    out = [("crack", c, c.line) for c in changes.cracks]
    return out + [("added", c, c.added) for c in changes.cracks if c.change == "extended"]


def csv_bytes(changes: Changes) -> bytes:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(c.record(changes.pixel_size_mm) for c in changes.cracks)
    return table.getvalue().encode()


def summary_dict(changes: Changes) -> dict:
    from crackseg.outputs import PIXEL_NOTE

    georef = changes.after.georef
    return changes.summary() | {
        "coordinates": {
            "geojson": "WGS 84 longitude, latitude (degrees)" if georef else f"AFTER's image: {PIXEL_NOTE}",
            "gpkg": f"AFTER's CRS, {georef.crs_name()}" if georef else local_note(changes),
        },
        "units": "lengths and widths in AFTER's pixels (BEFORE's scaled by the registration); mm × pixel_size_mm",
    }


def after_measure_dict(changes: Changes) -> dict:
    """AFTER's measure file, with the stable ids and what the next comparison needs to find its photo."""
    from crackseg.outputs import report_dict

    after, result = changes.after, changes.after_with_ids()
    source_from = changes.pixel_size_from if result.pixel_size_mm else None
    report = report_dict(result, after.name, after.source, after.georef, source_from)
    photo = str(Path(after.photo_path).resolve()) if after.photo_path else None
    return report | {"photo": photo, "next_crack_id": changes.next_id, "crack_ids": "stable across comparisons"}


# --- maps ---------------------------------------------------------------------------------------------------


def local_note(changes: Changes) -> str:
    return f"{'mm' if changes.pixel_size_mm else 'px'} from AFTER's bottom-left corner, y up"


def geojson_dict(changes: Changes) -> dict:
    """A FeatureCollection of MultiLineStrings: WGS 84 when AFTER is georeferenced, else AFTER's pixels."""
    from crackseg.outputs import PIXEL_NOTE

    georef = changes.after.georef
    convert, digits = (georef.to_wgs84, DIGITS["lonlat"]) if georef else (None, DIGITS["px"])
    collection = {"type": "FeatureCollection", "name": "changes"}
    collection |= {"source_crs": georef.crs_name()} if georef else {"crs": None, "note": PIXEL_NOTE}
    collection["pixel_size_mm"] = changes.pixel_size_mm
    collection["features"] = [
        {
            "type": "Feature",
            "geometry": {"type": "MultiLineString", "coordinates": line_coordinates(geometry, convert, digits)},
            "properties": {"part": part, **crack.record(changes.pixel_size_mm)},
        }
        for part, crack, geometry in features(changes)
    ]
    return collection


def line_coordinates(geometry, convert, digits: int) -> list:
    out = []
    for line in shapely.get_parts(geometry):
        xy = shapely.get_coordinates(line)
        out.append(np.round(convert(xy) if convert else xy, digits).tolist())
    return out


def write_gpkg(path: Path, changes: Changes) -> None:
    from crackseg.outputs import write_gpkg_layer

    georef, scale, height = changes.after.georef, changes.pixel_size_mm or 1.0, changes.after.shape[0]

    def local(xy):  # mm (or px) from the bottom-left corner, y up, so that a GIS shows the drawing upright
        return np.column_stack([xy[:, 0] * scale, (height - xy[:, 1]) * scale])

    rows = features(changes)
    geometry = [shapely.transform(g, georef.to_map if georef else local) for _, _, g in rows]
    records = [{"part": part, **crack.record(changes.pixel_size_mm)} for part, crack, _ in rows]
    columns = {name: column([r[name] for r in records]) for name in ["part", *RECORD_FIELDS]}
    note = f"AFTER's CRS, {georef.crs_name()}" if georef else local_note(changes)
    write_gpkg_layer(path, GPKG_LAYER, geometry, columns, georef.crs_wkt if georef else None, {"coordinates": note})


def column(values: list) -> np.ndarray:
    """An attribute column: numbers as float64 (None as NULL), ids as int64, text as text."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, np.int64)
    if all(v is None or isinstance(v, float | int) for v in values):
        return np.array([np.nan if v is None else v for v in values], np.float64)
    return np.array(values, dtype=object)


# --- the picture --------------------------------------------------------------------------------------------


def changes_figure(changes: Changes) -> np.ndarray:
    """BEFORE aligned onto AFTER (left) and AFTER with each crack coloured by its change (right); RGB uint8."""
    height, width = changes.after.shape
    scale = float(np.clip(max(height, width), *PANEL_SIDE)) / max(height, width)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    zoom = np.diag([scale, scale, 1.0])
    left = backdrop(changes.before, zoom @ changes.alignment.homography, size)
    right = backdrop(changes.after, zoom, size)
    thickness = max(2, round(max(size) / 400))
    carry = zoom @ changes.alignment.homography
    for lines in changes.before.lines():
        draw(left, shapely.transform(lines, lambda xy: apply_homography(carry, xy)), COLOURS["before"], thickness)
    for crack in changes.cracks:
        draw_change(right, crack, scale, thickness)
    title = f"BEFORE {Path(changes.before.name).name}, aligned ({changes.alignment.method})"
    gap = np.full((left.shape[0] + 30, 8, 3), 255, np.uint8)
    panels = np.hstack([framed(left, title), gap, framed(right, after_title(changes))])
    return np.vstack([panels, legend(panels.shape[1])])


def after_title(changes: Changes) -> str:
    counts = changes.counts()
    said = ", ".join(f"{counts[name]} {name.replace('_', ' ')}" for name in CHANGES if counts[name])
    return f"AFTER {Path(changes.after.name).name}: {said or 'no cracks'}"


def backdrop(survey, h: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The survey's photo (else its mask) carried by `h` (image coordinates) onto a canvas of `size`, dimmed grey."""
    if survey.photo is None:  # masks without photos: a plain grey ground under the lines
        grey = np.full(survey.shape, 160, np.uint8)
    else:
        grey = cv2.cvtColor(survey.photo, cv2.COLOR_RGB2GRAY)
    # OpenCV's pixel centres are at integers, crackseg's image coordinates at +0.5.
    shift, unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]), np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    warped = cv2.warpPerspective(grey, shift @ h @ unshift, size, flags=cv2.INTER_LINEAR, borderValue=255)
    return np.repeat((warped * 0.6).astype(np.uint8)[:, :, None], 3, axis=2)


def draw_change(canvas: np.ndarray, crack: CrackChange, scale: float, thickness: int) -> None:
    line = shapely.transform(crack.line, lambda xy: xy * scale)
    if crack.change in ("closed", "out_of_view"):
        draw(canvas, line, COLOURS[crack.change], thickness, dashed=True)
        return
    colour = COLOURS["new"] if crack.change == "new" else COLOURS["widened" if widened(crack) else "unchanged"]
    draw(canvas, line, colour, thickness)
    if crack.change == "extended":
        draw(canvas, shapely.transform(crack.added, lambda xy: xy * scale), COLOURS["added"], thickness + 1)
    anchor = shapely.line_interpolate_point(line, 0.5, normalized=True)
    if not anchor.is_empty:
        x, y = (int(v) for v in shapely.get_coordinates(anchor)[0])
        cv2.putText(
            canvas, str(crack.id), (x + 4, y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )


def draw(canvas: np.ndarray, geometry, colour, thickness: int, dashed: bool = False) -> None:
    """Lines given in canvas coordinates (pixel centres at +0.5), anti-aliased, optionally dashed."""
    for line in shapely.get_parts(geometry):
        pieces = dashes(line, 4.0 * thickness) if dashed else [shapely.get_coordinates(line)]
        for xy in pieces:
            points = np.round((xy - 0.5) * 4).astype(np.int32)  # 2 fractional bits: cv2's `shift`
            cv2.polylines(canvas, [points], False, colour, thickness, cv2.LINE_AA, shift=2)


def dashes(line: shapely.LineString, dash: float) -> list[np.ndarray]:
    """A line cut into pieces `dash` long, every other one kept."""
    if line.length == 0:
        return []
    starts = np.arange(0.0, line.length, 2 * dash)
    return [shapely.get_coordinates(substring(line, s, min(s + dash, line.length))) for s in starts]


def framed(panel: np.ndarray, title: str) -> np.ndarray:
    """A panel with its title in a white strip above it."""
    strip = np.full((30, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title[: panel.shape[1] // 8], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def legend(width: int) -> np.ndarray:
    strip = np.full((34, width, 3), 255, np.uint8)
    x = 8
    for key, label in LEGEND:
        if key == "closed":
            for start in range(x, x + 24, 8):
                cv2.line(strip, (start, 17), (start + 4, 17), COLOURS[key], 3)
        else:
            cv2.line(strip, (x, 17), (x + 24, 17), COLOURS[key], 3)
        cv2.putText(strip, label, (x + 30, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 20
    return strip


# --- the report ---------------------------------------------------------------------------------------------


def report_markdown(changes: Changes) -> str:
    s, a = changes.summary(), changes.alignment
    unit, factor = ("mm", changes.pixel_size_mm) if changes.pixel_size_mm else ("px", 1.0)
    if a.method == "features":
        how = (
            f"by features of the photos (SIFT, MAGSAC++ homography): {a.inliers} of {a.matches} matches agree, "
            f"RMS error {a.error_px:.2f} px"
        )
    else:
        how = {"georeference": "by the GeoTIFFs' coordinates", "assumed": "assumed (--assume-aligned)"}[a.method]
    lines = [
        "# Crack changes",
        "",
        f"- BEFORE: `{changes.before.name}` ({changes.before.measurement.count} cracks)",
        f"- AFTER: `{changes.after.name}` ({changes.after.measurement.count} cracks)",
        f"- Alignment {how}; scale ×{a.scale:.3f}; BEFORE covers {a.overlap:.0%} of AFTER.",
        f"- Matching tolerance {changes.tolerance_px:.2f} px (at least the alignment error + 2 px); a crack counts as "
        f"widened when its p95 width grew by more than {WIDTH_RULE}.",
        f"- Lengths and widths in AFTER's {unit}"
        + (
            f" ({changes.pixel_size_mm:g} mm per pixel, from {changes.pixel_size_from})."
            if changes.pixel_size_mm
            else "."
        ),
        "",
        "| change | cracks |",
        "|---|---|",
        *(f"| {name.replace('_', ' ')} | {count} |" for name, count in s["counts"].items()),
        "",
        f"New crack length: {s['total_new_length_px'] * factor:.1f} {unit} ({s['new_crack_length_px'] * factor:.1f} in "
        f"new cracks, {s['added_length_px'] * factor:.1f} added to existing ones).",
    ]
    widest = s["largest_widening"]
    if widest:
        lines.append(
            f"Largest widening: crack {widest['id']}, p95 width {widest['width_p95_before_px'] * factor:.2f} → "
            f"{widest['width_p95_after_px'] * factor:.2f} {unit}."
        )
    lines += ["", "![BEFORE aligned onto AFTER, and the changes](changes.png)", "", *crack_table(changes, unit, factor)]
    return "\n".join(lines) + "\n"


def crack_table(changes: Changes, unit: str, factor: float) -> list[str]:
    def number(value):
        return "" if value is None else f"{value * factor:.1f}"

    rows = [
        f"| {c.id} | {c.change.replace('_', ' ')} | {', '.join(map(str, c.before_ids))} | {number(c.length_before_px)} "
        f"| {number(c.length_after_px)} | {number(c.added_length_px) if c.change == 'extended' else ''} "
        f"| {number(c.width_p95_before_px)} | {number(c.width_p95_after_px)} |"
        for c in changes.cracks
    ]
    head = (
        f"| id | change | BEFORE ids | length before ({unit}) | length after | added | p95 width before ({unit}) "
        "| p95 width after |"
    )
    return [head, "|---|---|---|---|---|---|---|---|", *rows]
