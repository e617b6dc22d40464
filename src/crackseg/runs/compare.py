"""`crackseg compare`: every file of a comparison, into one folder.

Nothing is written until everything is computed, each file is written whole (temporary file, then rename), and
existing outputs are replaced only with `overwrite`. `after_measure.json` is AFTER's measure file with the stable
ids: the BEFORE of the next comparison. Without AFTER's georeference there is no changes.geojson (GeoJSON is WGS 84
only; summary.json says so), and one an earlier comparison left is removed with `overwrite`.
"""

from __future__ import annotations

from pathlib import Path

from crackseg.compare.changes import Changes
from crackseg.compare.figure import changes_figure
from crackseg.compare.outputs import changes_csv, changes_geojson, gpkg_layer
from crackseg.compare.report import after_measure_dict, report_markdown, summary_dict
from crackseg.compare.survey import CompareError
from crackseg.errors import OutputExistsError
from crackseg.io.atomic import atomic_write_bytes, check_outputs_free, ensure_output_folder
from crackseg.io.images import encode_image
from crackseg.io.vector import json_bytes, write_gpkg

OUTPUT_FILES = (
    "changes.geojson",
    "changes.gpkg",
    "changes.csv",
    "summary.json",
    "changes.png",
    "report.md",
    "after_measure.json",
)


def check_output(out_dir, overwrite: bool = False) -> Path:
    """The output folder, made and checked writable; none of the outputs there already unless `overwrite`."""
    try:  # both are the folder's problems, said as a comparison's
        out = ensure_output_folder(out_dir)
        check_outputs_free(out_dir, [out / name for name in OUTPUT_FILES], overwrite, what="comparison")
    except (OSError, OutputExistsError) as err:
        raise CompareError(str(err)) from None
    return out


def write_changes(changes: Changes, out_dir, overwrite: bool = False) -> list[Path]:
    """Every output of a comparison into `out_dir`; returns the paths written."""
    out = check_output(out_dir, overwrite)
    figure = encode_image(changes_figure(changes), ".png")
    geojson = changes_geojson(changes)
    contents = {
        "changes.geojson": None if geojson is None else json_bytes(geojson),
        "changes.csv": changes_csv(changes),
        "summary.json": json_bytes(summary_dict(changes), indent=1, ascii=True),
        "changes.png": figure,
        "report.md": report_markdown(changes).encode(),
        "after_measure.json": json_bytes(after_measure_dict(changes), indent=1, ascii=True),
    }
    write_gpkg(out / "changes.gpkg", **gpkg_layer(changes))  # first: GDAL is the writer most likely to fail
    for name, data in contents.items():
        if data is None:
            (out / name).unlink(missing_ok=True)
        else:
            atomic_write_bytes(out / name, data)
    written = {"changes.gpkg", *(name for name, data in contents.items() if data is not None)}
    return [out / name for name in OUTPUT_FILES if name in written]
