"""Everything about one result in one download: a ZIP of the files `crackseg measure` writes (mask, overlay,
crack table and maps, width figure, summary JSON) and a one-page HTML report an inspector can print or send:
the photo with the cracks and their ids, and the crack table.

The files come from the writers the command uses (`measure.maps`, `io.vector`, `measure.figure`), so a ZIP holds
what `crackseg measure` would write for the same photo, threshold and options. The report is one self-contained
HTML file (its picture inline, no script, nothing fetched), readable offline and printable on one page.
"""

from __future__ import annotations

import datetime
import html
import io
import zipfile

from crackseg.inference import overlay
from crackseg.io.images import encode_image
from crackseg.io.vector import csv_bytes, gpkg_bytes, json_bytes
from crackseg.measure import Measurement, measure
from crackseg.measure.figure import width_figure
from crackseg.measure.maps import CSV_FIELDS, csv_row, dxf_bytes, geojson_dict, gpkg_layer, report_dict
from crackseg.options import MeasureOptions
from crackseg.serve.analysis import data_url, mask_png
from crackseg.serve.store import Result

STORED = (".png", ".jpg")  # compressed already: deflating them again only costs time


def bundle_zip(result: Result, threshold: float, options: MeasureOptions, stem: str, model: str) -> bytes:
    """The ZIP of one result at a threshold, measured with `options`: STEM_mask.png, STEM_overlay.jpg,
    STEM_cracks.csv / .gpkg / .dxf (and .geojson for a GeoTIFF), STEM_width.png, STEM_measure.json and
    STEM_report.html. `model`: the model's name and version, for the report."""
    mask = result.mask(threshold)
    cracks = measure(mask, options)
    figure = encode_image(width_figure(result.image, cracks), ".png")
    summary = report_dict(cracks, result.name, "photo", result.georef, result.pixel_size_from)
    summary["threshold"] = threshold
    files = {
        "mask.png": mask_png(mask),
        "overlay.jpg": encode_image(overlay(result.image, mask), ".jpg", quality=90),
        "cracks.csv": csv_bytes([csv_row(result.name, crack) for crack in cracks.cracks], CSV_FIELDS),
        "cracks.gpkg": gpkg_bytes(**gpkg_layer(cracks, result.georef)),
        "cracks.dxf": dxf_bytes(cracks, result.georef),
        "width.png": figure,
        "measure.json": json_bytes(summary, indent=1, ascii=True),
        "report.html": report_html(result, cracks, threshold, figure, model).encode(),
    }
    if result.georef is not None:
        files["cracks.geojson"] = json_bytes(geojson_dict(cracks, result.georef, f"{stem}_cracks"))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for suffix, data in files.items():
            method = zipfile.ZIP_STORED if suffix.endswith(STORED) else zipfile.ZIP_DEFLATED
            zipped.writestr(f"{stem}_{suffix}", data, compress_type=method)
    return archive.getvalue()


# --- the one-page report ------------------------------------------------------------------------------------

REPORT_STYLE = """
body { font: 11pt system-ui, sans-serif; margin: 1.5em; color: #1d2126; }
h1 { font-size: 1.3em; margin: 0 0 0.3em; }
dl { display: flex; flex-wrap: wrap; gap: 0.2em 1.5em; margin: 0.5em 0; }
dt { color: #5f6670; font-size: 0.85em; } dd { margin: 0; font-weight: 600; }
img { max-width: 100%; max-height: 55vh; display: block; margin: 0.5em 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.9em; }
th, td { padding: 0.15em 0.5em; border-bottom: 1px solid #d0d4d9; text-align: right; }
th:nth-last-child(-n+3), td:nth-last-child(-n+3) { text-align: left; }
p.note { color: #5f6670; font-size: 0.85em; }
@page { size: A4; margin: 12mm; }
@media print { body { margin: 0; } img { max-height: 120mm; } }
"""


def fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def crack_rows(cracks: Measurement) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: the page's columns, in mm where the pixel size is known."""
    unit = "mm" if cracks.pixel_size_mm else "px"
    header = ["#", f"length ({unit})", f"mean width ({unit})", f"max width ({unit})", "angle (°)"]
    header += ["width class", "class", "below resolution"]
    rows = []
    for c in cracks.cracks:
        if unit == "mm":
            sizes = [fmt(c.length_mm, 1), fmt(c.width_mean_mm, 2), fmt(c.width_max_mm, 2)]
        else:
            sizes = [fmt(c.length_px, 1), fmt(c.width_mean_px, 2), fmt(c.width_max_px, 2)]
        flag = "yes" if c.below_resolution else ""
        rows.append([str(c.id), *sizes, fmt(c.orientation_deg, 0), c.width_class, c.crack_class, flag])
    return header, rows


def report_html(result: Result, cracks: Measurement, threshold: float, figure_png: bytes, model: str) -> str:
    """The one-page report: what was measured and how, the width figure (cracks coloured by width, with their
    ids), and one table row per crack."""
    e = html.escape
    summary = cracks.summary()
    unit = "mm" if cracks.pixel_size_mm else "px"
    total = summary.get("total_length_mm", summary["total_length_px"])
    scale = f"{cracks.pixel_size_mm:g} mm/px" if cracks.pixel_size_mm else "not given (pixels)"
    if cracks.pixel_size_mm and result.pixel_size_from:
        scale += f", from {result.pixel_size_from}"
    facts = {
        "photo": f"{result.name} ({cracks.width} × {cracks.height} px)",
        "cracks": str(cracks.count),
        "total length": f"{total:.1f} {unit}",
        "threshold": f"{threshold:.2f}",
        "pixel size": scale,
        "width classes": cracks.width_classes.name,
        "model": model,
    }
    if result.georef is not None:
        facts["placed in"] = result.georef.crs_name()
    header, rows = crack_rows(cracks)
    made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Cracks in {e(result.name)}</title><style>{REPORT_STYLE}</style></head><body>",
        f"<h1>Cracks in {e(result.name)}</h1>",
        "<dl>" + "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in facts.items()) + "</dl>",
        f'<img src="{data_url(figure_png, "image/png")}" alt="the photo with each crack coloured by its width '
        'and labelled with its number">',
        "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>",
        *("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in rows),
        "</tbody></table>",
        "<p class=\"note\">angle: the crack's direction in degrees counter-clockwise from the photo's horizontal "
        "(0 horizontal, 90 vertical). below resolution: the crack is under 2 px wide, so its widths are upper "
        f"bounds. {cracks.dropped} shorter marks were left out (under {cracks.min_length_px:g} px). "
        f"Made by crackseg on {e(made)}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
